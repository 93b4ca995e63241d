//! The automerge-paper editing trace (`shared/data/traces`).

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// One keystroke: at `pos` (Unicode code points), delete `del`, insert `ins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub pos: usize,
    pub del: usize,
    pub ins: String,
}

/// A whole trace: its patches in order and the text they produce.
#[derive(Debug, Clone)]
pub struct Trace {
    pub patches: Vec<Patch>,
    pub end_content: String,
}

/// Where the trace is: `$MYCEL_TRACE`, else `shared/` beside the repository.
pub fn default_path() -> PathBuf {
    if let Ok(p) = std::env::var("MYCEL_TRACE") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/traces/automerge-paper.json.gz")
}

/// Loads a gzipped trace in the editing-traces JSON format.
pub fn load(path: &Path) -> Result<Trace, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot open trace {}: {e}", path.display()))?;
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .map_err(|e| format!("cannot gunzip trace {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| format!("trace is not JSON: {e}"))?;
    let end_content = v["endContent"]
        .as_str()
        .ok_or("trace lacks endContent")?
        .to_owned();
    let mut patches = Vec::new();
    for txn in v["txns"].as_array().ok_or("trace lacks txns")? {
        for p in txn["patches"].as_array().ok_or("txn lacks patches")? {
            let bad = || format!("malformed patch {p}");
            patches.push(Patch {
                pos: p[0].as_u64().ok_or_else(bad)? as usize,
                del: p[1].as_u64().ok_or_else(bad)? as usize,
                ins: p[2].as_str().ok_or_else(bad)?.to_owned(),
            });
        }
    }
    Ok(Trace {
        patches,
        end_content,
    })
}
