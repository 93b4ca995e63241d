//! Running the `mycel-node` binary from integration tests.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mycel-node")
}

/// A fresh, empty data directory under the system temp dir.
pub fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mycel-test-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn node(data: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("MYCEL_DATA", data)
        .output()
        .expect("run mycel-node")
}

/// Runs a command that must succeed; returns its trimmed stdout.
pub fn ok(data: &Path, args: &[&str]) -> String {
    let out = node(data, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
