//! Compaction with encrypted snapshots (DESIGN §5), the native store's side.
//!
//! The snapshot format (building, checking, rebuilding the envelopes it
//! replaces) is the core's [`mycel_core::snapshot`], shared with the
//! browser. What is native is how a compacted log is stored: a room log is
//! rewritten as the snapshot's parts followed by the envelopes it does not
//! cover, through a new file renamed over the old one while this process
//! holds the store alone ([`crate::store`], [`crate::host::compact_doc`]).
//! Loading = the snapshot's envelopes + the envelopes after it, in log
//! order: the node gets back every envelope it held and serves them to
//! peers byte for byte.

pub use mycel_core::snapshot::{Loaded, Plan, SnapshotError, load, plan};
