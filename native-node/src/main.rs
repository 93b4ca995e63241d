//! mycel-node: the native host of mycel.
//!
//! A command-line tool and daemon that keeps documents on disk in a
//! crash-safe store, syncs them through relays, and pins documents blindly
//! (storing and serving their envelopes without the key). It drives the
//! same sans-IO [`mycel_core::node::Node`] as the browser; this binary only
//! moves bytes, keeps time, and talks to the disk.
//!
//! Its commands (`init`, `new`, `set`, `get`, `sync`, `pin`, `serve`, …) are
//! being built; until then it says so rather than pretending.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let version = env!("CARGO_PKG_VERSION");
    match std::env::args().nth(1).as_deref() {
        Some("--version") | Some("-V") => {
            println!("mycel-node {version}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "mycel-node {version}: the node's commands are not built yet; \
                 mycel-core (the engine they drive) is ready. See the README."
            );
            ExitCode::from(2)
        }
    }
}
