//! Idempotent installs of what the tasks need: each checks first and
//! installs only what is missing, so a fresh machine and a warm one run the
//! same commands.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use crate::Ctx;
use crate::sh::{Error, Result};

/// rustfmt and clippy, added through rustup only when `cargo fmt --version`
/// or `cargo clippy --version` fails.
pub fn ensure_fmt_and_clippy(ctx: &Ctx) -> Result {
    let fmt = ctx.cargo().args(["fmt", "--version"]).read_quietly();
    let clippy = ctx.cargo().args(["clippy", "--version"]).read_quietly();
    if let (Some(fmt), Some(clippy)) = (&fmt, &clippy) {
        println!("--> {} and {}: present", fmt.trim(), clippy.trim());
        return Ok(());
    }
    ctx.cmd("rustup")
        .args(["component", "add", "rustfmt", "clippy"])
        .run()
}

/// A Rust compilation target (`rustup target add` unless listed by
/// `rustup target list --installed`).
pub fn ensure_rust_target(ctx: &Ctx, target: &str) -> Result {
    let installed = ctx
        .cmd("rustup")
        .args(["target", "list", "--installed"])
        .read()
        .map_err(|e| Error(format!("cannot list the installed Rust targets: {e}")))?;
    if installed.lines().any(|l| l.trim() == target) {
        println!("--> Rust target {target}: present");
        return Ok(());
    }
    ctx.cmd("rustup").args(["target", "add", target]).run()
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
}

/// Finds `bin` (on PATH, else in `$CARGO_HOME/bin`) whose `bin
/// version_arg` prints `expected`.
fn find_tool(ctx: &Ctx, bin: &str, version_arg: &str, expected: &str) -> Option<(PathBuf, String)> {
    let mut candidates = vec![PathBuf::from(bin)];
    if let Some(home) = cargo_home() {
        candidates.push(home.join("bin").join(bin));
    }
    candidates.into_iter().find_map(|c| {
        let out = ctx.cmd(&c).arg(version_arg).read_quietly()?;
        out.contains(expected)
            .then(|| (c, out.lines().next().unwrap_or("").trim().to_owned()))
    })
}

/// A binary installed with `cargo install`: kept when `bin version_arg`
/// prints `expected`, else installed with `cargo install INSTALL_ARGS`. If
/// that fails and the arguments hold `--locked`, it is retried without
/// (some crates' lockfiles name versions the registry no longer serves).
/// Returns how to call the binary (its bare name when on PATH).
pub fn ensure_cargo_tool(
    ctx: &Ctx,
    bin: &str,
    version_arg: &str,
    expected: &str,
    install_args: &[&str],
) -> Result<PathBuf> {
    if let Some((path, version)) = find_tool(ctx, bin, version_arg, expected) {
        println!("--> {version}: present");
        return Ok(path);
    }
    println!("--> {bin} {expected} is missing: installing it (this takes minutes)");
    let install = ctx.cargo().arg("install").args(install_args);
    if let Err(e) = install.run() {
        if !install_args.contains(&"--locked") {
            return Err(e);
        }
        println!("--> {e}; retrying without --locked");
        ctx.cargo()
            .arg("install")
            .args(install_args.iter().filter(|a| **a != "--locked"))
            .run()?;
    }
    match find_tool(ctx, bin, version_arg, expected) {
        Some((path, version)) => {
            println!("--> {version}: installed");
            Ok(path)
        }
        None => Err(Error(format!(
            "`cargo install` succeeded but `{bin} {version_arg}` does not report {expected}: \
             is $CARGO_HOME/bin on PATH?"
        ))),
    }
}

fn dpkg_installed(ctx: &Ctx, package: &str) -> bool {
    ctx.cmd("dpkg")
        .args(["-s", package])
        .read_quietly()
        .is_some_and(|s| {
            s.lines()
                .any(|l| l.trim() == "Status: install ok installed")
        })
}

pub fn is_root(ctx: &Ctx) -> bool {
    ctx.cmd("id")
        .arg("-u")
        .read_quietly()
        .is_some_and(|s| s.trim() == "0")
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Debian packages: those `dpkg -s` does not show installed are installed
/// with `apt-get install -y`, after one `apt-get update` per run (through
/// sudo when not root).
pub fn ensure_apt(ctx: &Ctx, packages: &[&str]) -> Result {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(ctx, p))
        .collect();
    if missing.is_empty() {
        println!("--> Debian packages {}: present", packages.join(" "));
        return Ok(());
    }
    let apt = |args: &[&str]| {
        let cmd = if is_root(ctx) {
            ctx.cmd("apt-get")
        } else {
            ctx.cmd("sudo").arg("apt-get")
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args)
    };
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        apt(&["update"]).run()?;
    }
    apt(&["install", "-y"]).args(&missing).run()
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `npm ci` in `dir` when it has a package-lock.json and its node_modules
/// is missing or older than the lock.
pub fn ensure_npm(ctx: &Ctx, dir: &Path) -> Result {
    let lock = dir.join("package-lock.json");
    let Some(locked_at) = modified(&lock) else {
        println!(
            "--> {}: no package-lock.json, nothing to install",
            dir.display()
        );
        return Ok(());
    };
    let node_modules = dir.join("node_modules");
    // npm ci writes node_modules/.package-lock.json last.
    let installed_at =
        modified(&node_modules.join(".package-lock.json")).or_else(|| modified(&node_modules));
    if installed_at.is_some_and(|t| t >= locked_at) {
        println!("--> {}: up to date", node_modules.display());
        return Ok(());
    }
    ctx.cmd("npm")
        .cwd(dir)
        .args(["ci", "--no-audit", "--no-fund"])
        .run()
}

/// binaryen's `wasm-opt` from npm (wasm/tools/package-lock.json pins
/// binaryen 132; Debian's binaryen 108 breaks wasm-bindgen's output),
/// installed by `npm ci` when missing. Returns its path.
pub fn ensure_wasm_opt(ctx: &Ctx, expected: &str) -> Result<PathBuf> {
    let dir = ctx.root.join("wasm/tools");
    ensure_npm(ctx, &dir)?;
    let bin = dir.join("node_modules/.bin/wasm-opt");
    match ctx.cmd(&bin).arg("--version").read_quietly() {
        Some(v) if v.contains(expected) => {
            println!("--> {}: present", v.trim());
            Ok(bin)
        }
        other => Err(Error(format!(
            "{} should be wasm-opt {expected} (wasm/tools/package-lock.json), but `--version` says {:?}",
            bin.display(),
            other.as_deref().map(str::trim)
        ))),
    }
}
