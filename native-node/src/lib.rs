//! mycel-node: the native host of mycel.
//!
//! A command-line tool and daemon that keeps documents on disk in a
//! crash-safe [store], syncs them through relays, and pins documents blindly
//! (storing and serving their envelopes without the key). It drives the
//! same sans-IO [`mycel_core::node::Node`] as the browser; this crate only
//! moves bytes, keeps time, and talks to the disk.
//!
//! ```
//! use mycel_node::store::RecordLog;
//! let dir = std::env::temp_dir().join(format!("mycel-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let (mut log, records, _) = RecordLog::open(&dir.join("example.log")).unwrap();
//! log.append([b"an envelope".as_slice()]).unwrap(); // durable when Ok
//! # let _ = records;
//! ```
#![forbid(unsafe_code)]

pub mod compact;
pub mod host;
pub mod net;
pub mod rtc;
pub mod store;
