//! mycel-tests: the cross-crate test bed.
//!
//! - [`sim`]: a deterministic simulator of many replicas over a faulty
//!   network (drops, duplicates, reordering, delays, partitions, crashes),
//!   reproducible from one seed.
//! - [`trace`]: the automerge-paper editing trace, for benchmarks.
//! - `src/bin/core-bench.rs`: the core benchmark (`cargo xtask bench`).
//!
//! ```
//! use mycel_tests::sim::{run, SimConfig};
//! let report = run(SimConfig { nodes: 3, edits: 10, ..SimConfig::default() }, 42);
//! assert!(report.converged);
//! assert!(report.contents.windows(2).all(|w| w[0] == w[1]));
//! ```

pub mod dump;
pub mod gossip_sim;
pub mod sim;
pub mod trace;
