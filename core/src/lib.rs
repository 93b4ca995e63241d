//! mycel-core: the sans-IO heart of mycel, a local-first sync engine.
//!
//! Documents are Automerge CRDTs whose changes travel as signed,
//! AES-256-GCM-encrypted [envelopes](wire::Envelope). A [`Node`](node::Node)
//! is a state machine: the host feeds it inputs with the current time and
//! drains outputs (frames to send, records to persist, changes to apply).
//! It never reads a clock, opens a socket or draws randomness of its own, so
//! the same code runs in the browser (WebAssembly), in the native node, and
//! in a deterministic simulator.
//!
//! The crate is `#![no_std]` + `alloc`; the `std` feature adds faster
//! hashing and `std::error::Error`, the `automerge` feature the
//! [`doc`] module that turns Automerge documents into envelopes.
//!
//! Two nodes linked directly, syncing one change:
//!
//! ```
//! use mycel_core::crypto::{DocKey, Identity, Rng};
//! use mycel_core::id::DocId;
//! use mycel_core::node::{DocAccess, Input, LinkId, LinkKind, Node, NodeConfig, Output};
//! use mycel_core::time::Timestamp;
//!
//! let mut rng = Rng::from_seed([7; 32]);
//! let (doc, key) = (DocId(rng.array()), DocKey::generate(&mut rng));
//! let mut a = Node::new(Identity::generate(&mut rng), NodeConfig::default(), rng.array());
//! let mut b = Node::new(Identity::generate(&mut rng), NodeConfig::default(), rng.array());
//! let now = Timestamp(0);
//! for n in [&mut a, &mut b] {
//!     n.open_doc(now, doc, DocAccess::Full(key.clone()), []).unwrap();
//!     n.handle(now, Input::LinkUp { link: LinkId(1), kind: LinkKind::Direct }).unwrap();
//! }
//! a.handle(now, Input::LocalChange { doc, change: b"an automerge change".to_vec() }).unwrap();
//!
//! // Run both until quiet: the host's job is to move bytes and ack storage.
//! fn drain(from: &mut Node, to: &mut Node, applied: &mut Vec<Vec<u8>>) -> bool {
//!     let now = Timestamp(0);
//!     let mut moved = false;
//!     while let Some(out) = from.poll() {
//!         moved = true;
//!         match out {
//!             Output::Send { bytes, .. } => {
//!                 to.handle(now, Input::Received { link: LinkId(1), bytes }).unwrap()
//!             }
//!             Output::Persist { doc, batch, .. } => {
//!                 from.handle(now, Input::Persisted { doc, batch }).unwrap()
//!             }
//!             Output::Apply { changes, .. } => applied.extend(changes),
//!             _ => {}
//!         }
//!     }
//!     moved
//! }
//! let mut applied = Vec::new();
//! while drain(&mut a, &mut b, &mut applied) | drain(&mut b, &mut a, &mut applied) {}
//! assert_eq!(applied, [b"an automerge change".to_vec()]);
//! ```
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod aead;
pub mod channel;
pub mod crypto;
#[cfg(feature = "automerge")]
pub mod doc;
pub mod gossip;
pub mod id;
pub mod log;
pub mod node;
pub mod relay_link;
#[cfg(feature = "automerge")]
pub mod snapshot;
pub mod sync;
pub mod time;
pub mod wire;
