//! Project tasks of mycel: `cargo xtask <command>` (see [`USAGE`]).
//!
//! std only, no dependencies, so that `cargo xtask` builds in seconds on a
//! fresh clone. Every command runs its children in the repository root,
//! announces each step with `==> step`, streams the children's output, and
//! stops at the first failure with a message naming the step.

mod bench;
mod bench_wasm;
mod dist;
mod ensure;
mod fuzz;
mod sh;
mod test;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sh::{Cmd, Error, Result};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  test                   what CI runs: rustfmt, clippy, the workspace tests and the
                         wasm32 build of mycel-core, installing missing tools first
  run                    build the relay and the web app, then serve both on
                         $MYCEL_RELAY_LISTEN (default 127.0.0.1:8080)
  dist                   release build of the relay, the npm package (wasm/pkg)
                         and the web app (www/dist)
  bench [NAME] [-- ARGS] run a benchmark: `core` (the default) replays $MYCEL_TRACE or
                         ../shared/data/traces/automerge-paper.json.gz; `relay` loads the
                         relay beside y-websocket; `node` times `mycel-node set`;
                         `gossip` runs the gossip simulator at 1,000 and 10,000 peers;
                         `wasm` replays the trace in headless Chromium through
                         @automerge/automerge and through the npm package (wasm/pkg)
  container [IMAGE]      build the relay's FROM-scratch container image with podman
  fuzz [--seconds N] [TARGET...]
                         run each fuzz target of fuzz/fuzz_targets for N seconds
                         (default 30), installing cargo-fuzz if missing
  help                   this text
";

/// Where the tasks run: the repository root.
#[derive(Debug)]
pub struct Ctx {
    pub root: PathBuf,
}

impl Ctx {
    fn new() -> Ctx {
        // Set by `cargo run` at run time; the compile-time value is the
        // fallback when the binary is started by hand.
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let root = manifest_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or(manifest_dir);
        Ctx { root }
    }

    /// A command run in the repository root.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Cmd {
        Cmd::new(program, &self.root)
    }

    /// Cargo: the one that runs xtask (`$CARGO`), so the toolchain matches.
    pub fn cargo(&self) -> Cmd {
        self.cmd(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
    }
}

fn no_args(command: &str, args: &[String]) -> Result {
    match args.first() {
        None => Ok(()),
        Some(a) => Err(Error(format!(
            "`cargo xtask {command}` takes no arguments (got `{a}`)"
        ))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ctx = Ctx::new();
    let (command, rest) = match args.split_first() {
        Some((c, rest)) => (c.as_str(), rest),
        None => ("help", &args[..]),
    };
    let result = match command {
        "test" => no_args(command, rest).and_then(|()| test::run(&ctx)),
        "run" => no_args(command, rest).and_then(|()| dist::run(&ctx)),
        "dist" => no_args(command, rest).and_then(|()| dist::dist(&ctx)),
        "bench" => bench::run(&ctx, rest),
        "fuzz" => fuzz::run(&ctx, rest),
        "container" => ctx
            .cmd("bash")
            .arg("relay/container/build.sh")
            .args(rest)
            .run(),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("error: unknown command `{other}`\n");
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
