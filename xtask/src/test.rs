//! `cargo xtask test`: what CI runs (`.ci/run`).

use std::path::Path;
use std::time::Instant;

use crate::Ctx;
use crate::ensure::{ensure_apt, ensure_fmt_and_clippy, ensure_npm, ensure_rust_target};
use crate::sh::{Result, Stream, fmt_duration, with_summary};

/// Later suites (browser tests, end-to-end tests of relay + nodes +
/// browsers) plug in here: a step name and the function that runs it, in
/// order, after the wasm build. Each installs what it needs with the
/// helpers of `ensure` (ensure_apt, ensure_npm, ensure_cargo_tool).
const SUITES: &[(&str, Suite)] = &[(
    "browser tests (npm package in headless Chromium, wasm/tests/browser)",
    browser_tests,
)];

/// Where the browser tests find Chromium (Debian's package; Playwright
/// never downloads a browser here).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver for wasm-bindgen-test-runner.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Debian's Chromium, installed when [`CHROMIUM`] is missing.
pub fn ensure_chromium(ctx: &Ctx) -> Result {
    if Path::new(CHROMIUM).is_file() {
        println!("--> {CHROMIUM}: present");
        Ok(())
    } else {
        ensure_apt(ctx, &["chromium"])
    }
}

/// Runs `f`, printing how long it took (install steps are measured).
fn timed<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let out = f()?;
    println!("--> {what}: {}", fmt_duration(started.elapsed()));
    Ok(out)
}

/// The npm package `mycel` in real headless Chromium through
/// playwright-core (IndexedDB round trip and reload, two pages syncing
/// through a real relay, offline edits converging, a wrong key, two tabs,
/// the engine in a Worker, the TypeScript declarations), after the Rust
/// side's wasm-bindgen-test run in the same browser; direct links (two
/// browsers over a WebRTC data channel, rtc.mjs); then the web app
/// (www/dist, served by the relay) end to end (app.mjs).
fn browser_tests(ctx: &Ctx) -> Result {
    let dir = ctx.root.join("wasm/tests/browser");
    timed("Chromium", || ensure_chromium(ctx))?;
    timed("npm ci (playwright-core)", || ensure_npm(ctx, &dir))?;
    // Installs wasm-bindgen-cli when missing, builds wasm-release, writes wasm/pkg.
    timed("npm package (cargo xtask dist's wasm/pkg)", || {
        crate::dist::npm_package(ctx)
    })?;
    // The Rust side in the browser: wasm-bindgen-test through chromedriver
    // (flags in wasm/webdriver.json).
    timed("chromedriver", || {
        if Path::new(CHROMEDRIVER).is_file() {
            println!("--> {CHROMEDRIVER}: present");
            Ok(())
        } else {
            ensure_apt(ctx, &["chromium-driver"])
        }
    })?;
    let runner = crate::ensure::ensure_cargo_tool(
        ctx,
        "wasm-bindgen-test-runner",
        "--version",
        crate::dist::WASM_BINDGEN_VERSION,
        &[
            "wasm-bindgen-cli",
            "--version",
            crate::dist::WASM_BINDGEN_VERSION,
            "--no-default-features",
        ],
    )?;
    timed(
        "wasm-bindgen-test in Chromium (wasm/tests/browser_store.rs)",
        || {
            ctx.cargo()
                .args([
                    "test",
                    "-p",
                    "mycel-wasm",
                    "--target",
                    "wasm32-unknown-unknown",
                ])
                .args(["--test", "browser_store", "--locked"])
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", &runner)
                .env("CHROMEDRIVER", CHROMEDRIVER)
                .run()
        },
    )?;
    timed("debug build of mycel-relay", || {
        ctx.cargo()
            .args(["build", "-p", "mycel-relay", "--locked"])
            .run()
    })?;
    let relay = crate::dist::target_dir(ctx)
        .join("debug")
        .join(format!("mycel-relay{}", std::env::consts::EXE_SUFFIX));
    timed("browser tests", || {
        ctx.cmd("node")
            .cwd(&dir)
            .arg("run.mjs")
            .env("MYCEL_RELAY_BIN", &relay)
            .env("CHROMIUM", CHROMIUM)
            .run()
    })?;
    // Direct links (WebRTC data channels between two browser profiles) in
    // a network namespace of their own with loopback as its only
    // interface (TOOLCHAIN.md): ICE finds 127.0.0.1 and nothing else, and
    // no packet leaves the machine.
    timed("iproute2 (ip, for the namespace's loopback)", || {
        ensure_apt(ctx, &["iproute2"])
    })?;
    timed("direct-link tests (WebRTC, in a network namespace)", || {
        // Root makes the namespace directly; anyone else in a user
        // namespace of their own (-r).
        let flags = if crate::ensure::is_root(ctx) {
            "-n"
        } else {
            "-rn"
        };
        ctx.cmd("unshare")
            .cwd(&dir)
            .args([flags, "sh", "-c", "ip link set lo up && exec node rtc.mjs"])
            .env("MYCEL_RELAY_BIN", &relay)
            .env("CHROMIUM", CHROMIUM)
            .run()
    })?;
    // The web app as `cargo xtask dist` writes it, served by the relay.
    timed("web app (www/dist)", || crate::dist::www(ctx))?;
    timed("web app tests (www/dist served by the relay)", || {
        ctx.cmd("node")
            .cwd(&dir)
            .arg("app.mjs")
            .env("MYCEL_RELAY_BIN", &relay)
            .env("MYCEL_WWW_DIST", ctx.root.join("www/dist"))
            .env("CHROMIUM", CHROMIUM)
            .run()
    })
}

type Suite = fn(&Ctx) -> Result;

/// Set to 1 to run only the [`SUITES`] (for working on one of them: the
/// workspace steps before them take minutes). CI never sets it.
const ONLY_SUITES_VAR: &str = "MYCEL_XTASK_ONLY_SUITES";

pub fn run(ctx: &Ctx) -> Result {
    if std::env::var(ONLY_SUITES_VAR).is_ok_and(|v| v == "1") {
        return with_summary("cargo xtask test (suites only)", |s| {
            for (name, suite) in SUITES {
                s.step(name, || suite(ctx))?;
            }
            Ok(())
        });
    }
    let mut tally = Tally::default();
    let result = with_summary("cargo xtask test", |s| {
        s.step(
            "ensure tools (rustfmt, clippy, wasm32 target, nats-server)",
            || {
                ensure_fmt_and_clippy(ctx)?;
                ensure_rust_target(ctx, "wasm32-unknown-unknown")?;
                // The relay's and node's backplane tests start Debian's
                // nats-server on 127.0.0.1.
                ensure_apt(ctx, &["nats-server"])
            },
        )?;
        s.step("format (cargo fmt --check)", || {
            ctx.cargo().args(["fmt", "--all", "--check"]).run()?;
            // The fuzz crate is a workspace of its own: check its targets too.
            let targets = crate::fuzz::targets(ctx)?;
            if targets.is_empty() {
                return Ok(());
            }
            ctx.cmd("rustfmt")
                .args(["--check", "--edition", "2024"])
                .args(targets.iter().map(|t| t.path.as_os_str()))
                .run()
        })?;
        s.step("lint (cargo clippy)", || {
            ctx.cargo()
                .args(["clippy", "--workspace", "--all-targets", "--locked"])
                .args(["--", "-D", "warnings"])
                .run()
        })?;
        let tests = s.step("tests (cargo test)", || {
            // The output passes through as it comes; the `test result:`
            // lines are also added up for the closing line.
            let (status, lines) = ctx
                .cargo()
                .args(["test", "--workspace", "--locked"])
                .run_scanning(Stream::Stdout, |l| l.starts_with("test result:"))?;
            tally = Tally::of(&lines);
            if status.success() {
                Ok(())
            } else {
                Err(format!("`cargo test --workspace --locked` failed ({status})").into())
            }
        });
        s.note(tally.to_string());
        tests?;
        // `cargo test --workspace` unifies features (the tests crate turns
        // `broadcast` on): the membership-only gossip of the browser build
        // is tested on its own.
        s.step(
            "membership-only gossip (mycel-core without broadcast)",
            || {
                let (status, lines) = ctx
                    .cargo()
                    .args(["test", "-p", "mycel-core", "--lib", "--locked"])
                    .args(["--no-default-features", "--features", "std,automerge,ring"])
                    .args(["--", "gossip::"])
                    .run_scanning(Stream::Stdout, |l| l.starts_with("test result:"))?;
                tally.add(&Tally::of(&lines));
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("the membership-only gossip tests failed ({status})").into())
                }
            },
        )?;
        // Separate from `cargo test --workspace`: it builds the static
        // relay and its image with podman (installing them when missing),
        // which must not hold up or contend with the other tests.
        let container = s.step("container image test (podman)", || {
            let (status, lines) = ctx
                .cargo()
                .args([
                    "test",
                    "-p",
                    "mycel-relay",
                    "--test",
                    "container",
                    "--locked",
                ])
                .args(["--", "--ignored"])
                .run_scanning(Stream::Stdout, |l| l.starts_with("test result:"))?;
            tally.add(&Tally::of(&lines));
            if status.success() {
                Ok(())
            } else {
                Err(format!("the container image test failed ({status})").into())
            }
        });
        s.note(tally.to_string());
        container?;
        s.step("wasm build of mycel-core", || {
            ctx.cargo()
                .args([
                    "build",
                    "-p",
                    "mycel-core",
                    "--target",
                    "wasm32-unknown-unknown",
                ])
                .args(["--no-default-features", "--locked"])
                .run()
        })?;
        for (name, suite) in SUITES {
            s.step(name, || suite(ctx))?;
        }
        Ok(())
    });
    if tally.runs > 0 {
        // The plain closing line CI reads: `N passed, N failed, N skipped`.
        println!(
            "tests: {} passed, {} failed, {} skipped",
            tally.passed, tally.failed, tally.ignored
        );
    }
    result
}

/// The sum of libtest's `test result:` lines.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    runs: u64,
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.runs += other.runs;
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }

    fn of(lines: &[String]) -> Tally {
        let mut t = Tally::default();
        for line in lines {
            let Some(rest) = line.strip_prefix("test result:") else {
                continue;
            };
            t.runs += 1;
            // `test result: ok. 8 passed; 0 failed; 1 ignored; 0 measured; ...`
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => t.passed += n,
                    "failed" => t.failed += n,
                    "ignored" => t.ignored += n,
                    _ => {}
                }
            }
        }
        t
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.runs == 0 {
            return f.write_str("no test results seen");
        }
        write!(
            f,
            "{} passed, {} failed, {} ignored in {} test binaries",
            self.passed, self.failed, self.ignored, self.runs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_results_are_added_up() {
        let lines: Vec<String> = [
            "test result: ok. 8 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.50s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            Tally::of(&lines),
            Tally {
                runs: 2,
                passed: 10,
                failed: 3,
                ignored: 1
            }
        );
    }
}
