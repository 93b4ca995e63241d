//! `cargo xtask fuzz [--seconds N] [TARGET...]`: every target of the
//! cargo-fuzz crate in `fuzz/`, for N seconds each.

use std::fs;
use std::path::PathBuf;

use crate::Ctx;
use crate::ensure::ensure_cargo_tool;
use crate::sh::{Error, Result, Stream, io_err, with_summary};

/// A cargo-fuzz release on crates.io that builds with this toolchain.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
const DEFAULT_SECONDS: u64 = 30;

#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub path: PathBuf,
}

/// The fuzz targets: `fuzz/fuzz_targets/*.rs`, by name.
pub fn targets(ctx: &Ctx) -> Result<Vec<Target>> {
    let dir = ctx.root.join("fuzz/fuzz_targets");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("cannot read", &dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io_err("cannot read", &dir, e))?.path();
        if path.extension().is_some_and(|x| x == "rs")
            && let Some(name) = path.file_stem().and_then(|s| s.to_str())
        {
            out.push(Target {
                name: name.to_owned(),
                path: path.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[derive(Debug, PartialEq)]
struct Args {
    seconds: u64,
    only: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut out = Args {
        seconds: DEFAULT_SECONDS,
        only: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = if a == "--seconds" {
            Some(it.next().ok_or("--seconds needs a number")?.as_str())
        } else {
            a.strip_prefix("--seconds=")
        };
        match value {
            Some(v) => {
                out.seconds = v.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    Error(format!("--seconds needs a positive number, not `{v}`"))
                })?;
            }
            None if a.starts_with('-') => return Err(Error(format!("unknown option `{a}`"))),
            None => out.only.push(a.clone()),
        }
    }
    Ok(out)
}

/// Executions reported by libFuzzer's closing lines.
fn executions(lines: &[String]) -> Option<u64> {
    lines.iter().rev().find_map(|l| {
        if let Some(n) = l.strip_prefix("stat::number_of_executed_units:") {
            return n.trim().parse().ok();
        }
        l.strip_prefix("Done ")?.split(' ').next()?.parse().ok()
    })
}

fn interesting(line: &str) -> bool {
    line.starts_with("stat::number_of_executed_units:")
        || line.starts_with("Done ")
        || line.contains("Test unit written to")
        || line.contains("panicked at")
        || line.starts_with("SUMMARY:")
}

pub fn run(ctx: &Ctx, args: &[String]) -> Result {
    let args = parse_args(args)?;
    let all = targets(ctx)?;
    if all.is_empty() {
        return Err("no fuzz targets in fuzz/fuzz_targets/".into());
    }
    let known: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
    if let Some(unknown) = args.only.iter().find(|o| !known.contains(&o.as_str())) {
        return Err(Error(format!(
            "unknown fuzz target `{unknown}`; targets: {}",
            known.join(", ")
        )));
    }
    let chosen: Vec<&Target> = all
        .iter()
        .filter(|t| args.only.is_empty() || args.only.contains(&t.name))
        .collect();
    let fuzz_dir = ctx.root.join("fuzz");
    with_summary("cargo xtask fuzz", |s| {
        s.step("ensure cargo-fuzz", || {
            ensure_cargo_tool(
                ctx,
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                &["cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked"],
            )
            .map(drop)
        })?;
        let mut failed = Vec::new();
        for t in chosen {
            let mut runs = None;
            let mut found = Vec::new();
            let step = format!("fuzz {} for {}s", t.name, args.seconds);
            let r = s.step(&step, || {
                // No nightly toolchain here: RUSTC_BOOTSTRAP=1 lets the
                // stable compiler take cargo-fuzz's -Z sanitizer flags.
                let (status, lines) = ctx
                    .cargo()
                    .cwd(&fuzz_dir)
                    .env("RUSTC_BOOTSTRAP", "1")
                    .args(["fuzz", "run", &t.name, "--"])
                    .arg(format!("-max_total_time={}", args.seconds))
                    .args(["-rss_limit_mb=2048", "-print_final_stats=1"])
                    .run_scanning(Stream::Stderr, interesting)?;
                runs = executions(&lines);
                found = lines
                    .into_iter()
                    .filter(|l| !l.starts_with("stat::") && !l.starts_with("Done "))
                    .collect();
                if status.success() {
                    Ok(())
                } else {
                    Err(Error(format!(
                        "cargo fuzz run {} failed ({status})",
                        t.name
                    )))
                }
            });
            let runs = runs.map_or("no executions reported".to_owned(), |n| {
                format!("{n} executions")
            });
            match r {
                Ok(()) => s.note(runs),
                Err(e) => {
                    println!("--> {e}");
                    for l in &found {
                        println!("    {l}");
                    }
                    s.note(format!("{runs}; {}", found.join("; ")));
                    failed.push(t.name.clone());
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error(format!(
                "fuzz targets failed: {} (inputs that crash are kept in fuzz/artifacts/<target>/; \
                 replay one with `cargo fuzz run <target> <file>` in fuzz/)",
                failed.join(", ")
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&[]).unwrap(),
            Args {
                seconds: 30,
                only: vec![]
            }
        );
        assert_eq!(
            parse_args(&strings(&["--seconds", "60", "wire_frames"])).unwrap(),
            Args {
                seconds: 60,
                only: strings(&["wire_frames"])
            }
        );
        assert_eq!(parse_args(&strings(&["--seconds=5"])).unwrap().seconds, 5);
        assert!(parse_args(&strings(&["--seconds"])).is_err());
        assert!(parse_args(&strings(&["--seconds", "x"])).is_err());
        assert!(parse_args(&strings(&["--minutes", "1"])).is_err());
    }

    #[test]
    fn executions_come_from_the_final_stats() {
        let lines = strings(&["Done 1234 runs in 20 second(s)"]);
        assert_eq!(executions(&lines), Some(1234));
        let lines = strings(&[
            "Done 1234 runs in 20 second(s)",
            "stat::number_of_executed_units: 1235",
        ]);
        assert_eq!(executions(&lines), Some(1235));
        assert_eq!(executions(&[]), None);
    }
}
