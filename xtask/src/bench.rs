//! `cargo xtask bench [NAME] [-- ARGS]`.

use std::path::PathBuf;

use crate::Ctx;
use crate::sh::{Error, Result, Steps};

/// The benchmarks this command knows, the first being the default.
const BENCHES: &[&str] = &["core", "relay", "scale-out", "node", "gossip", "wasm"];

pub fn run(ctx: &Ctx, args: &[String]) -> Result {
    let (name, rest) = match args.split_first() {
        Some((first, rest)) if first != "--" => (first.as_str(), rest),
        _ => (BENCHES[0], args),
    };
    let extra = match rest.split_first() {
        None => rest,
        Some((dashes, tail)) if dashes == "--" => tail,
        Some((other, _)) => {
            return Err(Error(format!(
                "unexpected argument `{other}`: arguments for the benchmark go after `--`"
            )));
        }
    };
    match name {
        "core" => core(ctx, extra),
        "relay" => Steps::new().step("relay benchmark (mycel-relay relay-bench)", || {
            ctx.cargo()
                .args(["run", "--release", "--locked", "-p", "mycel-relay"])
                .args(["--bin", "relay-bench", "--"])
                .args(extra)
                .run()
        }),
        "scale-out" => {
            let mut steps = Steps::new();
            steps.step("ensure nats-server (the relays' backplane)", || {
                crate::ensure::ensure_apt(ctx, &["nats-server"])
            })?;
            steps.step("scale-out benchmark (relay-bench --scale-out)", || {
                ctx.cargo()
                    .args(["run", "--release", "--locked", "-p", "mycel-relay"])
                    .args(["--bin", "relay-bench", "--", "--scale-out"])
                    .args(extra)
                    .run()
            })
        }
        "node" => {
            let mut steps = Steps::new();
            steps.step("build mycel-node (release)", || {
                ctx.cargo()
                    .args(["build", "--release", "--locked", "-p", "mycel-node"])
                    .run()
            })?;
            steps.step("node benchmark (set-bench)", || {
                ctx.cargo()
                    .args(["run", "--release", "--locked", "-p", "mycel-node"])
                    .args(["--bin", "set-bench", "--"])
                    .args(extra)
                    .run()
            })
        }
        "gossip" => gossip(ctx, extra),
        "wasm" => crate::bench_wasm::run(ctx, &trace_path(ctx)?, extra),
        other => Err(Error(format!(
            "unknown benchmark `{other}`; known benchmarks: {}",
            BENCHES.join(", ")
        ))),
    }
}

/// The editing trace: `$MYCEL_TRACE`, else the shared automerge-paper trace
/// beside the repository.
pub fn trace_path(ctx: &Ctx) -> Result<PathBuf> {
    let (path, origin) = match std::env::var_os("MYCEL_TRACE").filter(|p| !p.is_empty()) {
        Some(p) => {
            let cwd = std::env::current_dir()
                .map_err(|e| Error(format!("cannot read the current directory: {e}")))?;
            (cwd.join(p), "MYCEL_TRACE")
        }
        None => (
            ctx.root
                .join("../shared/data/traces/automerge-paper.json.gz"),
            "the default path",
        ),
    };
    if !path.is_file() {
        return Err(Error(format!(
            "the benchmark trace is missing: {} ({origin}) is not a file; set MYCEL_TRACE to the \
             automerge-paper trace (automerge-paper.json.gz), or put shared/ beside the repository",
            path.display()
        )));
    }
    path.canonicalize()
        .map_err(|e| Error(format!("cannot resolve {}: {e}", path.display())))
}

fn core(ctx: &Ctx, extra: &[String]) -> Result {
    let trace = trace_path(ctx)?;
    Steps::new().step("core benchmark (mycel-tests core-bench)", || {
        ctx.cargo()
            .args(["run", "--release", "--locked", "-p", "mycel-tests"])
            .args(["--bin", "core-bench", "--", "--trace"])
            .arg(&trace)
            .args(extra)
            .run()
    })
}

/// The gossip simulator: with arguments, one run of them; without, the
/// issue's four scenarios (1,000 and 10,000 peers, without and with 5%
/// loss and 10% churn), each beside the push-only baseline.
fn gossip(ctx: &Ctx, extra: &[String]) -> Result {
    let mut steps = Steps::new();
    steps.step("build gossip-sim (release)", || {
        ctx.cargo()
            .args(["build", "--release", "--locked", "-p", "mycel-tests"])
            .args(["--bin", "gossip-sim"])
            .run()
    })?;
    let default_runs: Vec<Vec<String>> = ["1000", "10000"]
        .iter()
        .flat_map(|peers| {
            let plain = vec!["--peers".to_string(), peers.to_string()];
            let mut faulty = plain.clone();
            faulty.extend(["--loss", "0.05", "--churn", "0.1"].map(String::from));
            [plain, faulty]
        })
        .map(|mut a| {
            a.push("--baseline".into());
            a
        })
        .collect();
    let runs = if extra.is_empty() {
        default_runs
    } else {
        vec![extra.to_vec()]
    };
    for args in runs {
        steps.step(&format!("gossip-sim {}", args.join(" ")), || {
            ctx.cargo()
                .args(["run", "--release", "--locked", "-q", "-p", "mycel-tests"])
                .args(["--bin", "gossip-sim", "--"])
                .args(&args)
                .run()
        })?;
    }
    Ok(())
}
