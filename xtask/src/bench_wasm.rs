//! `cargo xtask bench wasm`: the automerge-paper trace in headless Chromium,
//! through `@automerge/automerge` from npm (the baseline) and through the
//! npm package `mycel` built into wasm/pkg, in the same browser and run
//! (wasm/bench/run.mjs and bench.js do the work).

use std::path::Path;

use crate::Ctx;
use crate::ensure::ensure_npm;
use crate::sh::{Result, Steps};
use crate::test::{CHROMIUM, ensure_chromium};

pub fn run(ctx: &Ctx, trace: &Path, extra: &[String]) -> Result {
    let dir = ctx.root.join("wasm/bench");
    let mut steps = Steps::new();
    steps.step("Chromium", || ensure_chromium(ctx))?;
    // playwright-core and @automerge/automerge, pinned in wasm/bench/package-lock.json.
    steps.step("npm ci (wasm/bench)", || ensure_npm(ctx, &dir))?;
    steps.step("npm package (wasm/pkg)", || crate::dist::npm_package(ctx))?;
    steps.step("wasm benchmark (wasm/bench/run.mjs)", || {
        ctx.cmd("node")
            .cwd(&dir)
            .arg("run.mjs")
            .arg("--trace")
            .arg(trace)
            .args(extra)
            .env("CHROMIUM", CHROMIUM)
            .run()
    })
}
