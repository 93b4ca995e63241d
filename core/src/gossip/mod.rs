//! Gossip: peer discovery, membership and dissemination for one swarm (a
//! document room or a realm), DESIGN §6. Normative wire text:
//! `docs/gossip.md`.
//!
//! Sans-IO like the rest of the core: the host feeds [`Input`]s with the
//! current time and drains [`Output`]s; randomness comes from a seed.
//!
//! - **Membership** is HyParView: a small *active view* (the peers to keep
//!   direct links with, [`Output::ViewChanged`]) and a larger *passive
//!   view* of repair candidates, both bounded. A newcomer `Join`s a peer
//!   met in the relay room ([`Input::PeerMet`]); its contact announces it
//!   along random walks (`PeerAnnouncement`). Peers exchange samples of
//!   their views periodically (`PeerRequest` / `PeerListResponse`). An
//!   active peer that misses heartbeats, or whose link fails, is replaced
//!   from the passive view; failed peers are re-tried with backoff, which
//!   re-merges overlays after a partition heals.
//! - **Peer table**: every known peer with an availability score
//!   (heartbeats answered / expected) and a performance score (moving
//!   average of heartbeat round trips); the lowest-scored peer is evicted
//!   when it is full; a peer silent for `peer_expiry_ms` (2 h) is
//!   forgotten. A peer's addresses are passed on only if it opted in.
//! - **Dissemination** is Plumtree: a broadcast is pushed eagerly along a
//!   spanning tree that forms itself (a duplicate prunes a link to lazy),
//!   and announced lazily (`IHave`, riding on heartbeats) on the other
//!   links; a peer that learns of a message it lacks grafts it. So a
//!   broadcast reaches every live peer even when pushes are lost, at
//!   close to one message per peer. A frequent broadcaster's messages
//!   follow a tree of its own, rooted at it and so shallow; occasional
//!   ones share one tree that costs nothing to set up.
//!   Only with the `broadcast` feature (default on): without it gossip is
//!   membership only, as the node uses it, and the browser builds it.
//! - **Sessions and replay**: each frame carries the sender's random
//!   session, a counter, and the recipient's session as the sender knows
//!   it (`echo`). Only `Hello` is accepted without the right echo; it
//!   performs the handshake. Seen (session, seq) pairs are refused.
//!
//! The state machine works on decoded, verified [`Frame`]s. The
//! [`codec`] signs (Ed25519) and seals (AES-256-GCM, the document's
//! transport key) them; [`SealedGossip`] wires both together for hosts.
//! The simulator drives [`Gossip`] directly so that 10,000 peers run in
//! seconds, and small swarms through the codec.
//!
//! ```
//! use mycel_core::gossip::{Gossip, GossipConfig, Input, Output};
//! use mycel_core::id::PeerId;
//! use mycel_core::time::Timestamp;
//!
//! let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
//! let mut ga = Gossip::new(a, GossipConfig::default(), [1; 32]);
//! let mut gb = Gossip::new(b, GossipConfig::default(), [2; 32]);
//! let now = Timestamp(0);
//! ga.handle(now, Input::PeerMet { peer: b }).unwrap();
//! // Move frames until both are quiet.
//! fn pump(from: &mut Gossip, to: &mut Gossip) -> bool {
//!     let mut moved = false;
//!     while let Some(out) = from.poll() {
//!         if let Output::Send { frame, .. } = out {
//!             moved = true;
//!             let _ = to.handle(Timestamp(0), Input::Received { frame });
//!         }
//!     }
//!     moved
//! }
//! while pump(&mut ga, &mut gb) | pump(&mut gb, &mut ga) {}
//! assert_eq!(ga.active_view(), vec![b]);
//! assert_eq!(gb.active_view(), vec![a]);
//! ```

pub mod codec;
mod config;
mod map;
pub mod message;
mod state;
mod table;
#[cfg(test)]
mod tests;

pub use codec::{Codec, CodecStats, SealedGossip, SealedOutput};
pub use config::GossipConfig;
pub use message::{Frame, Have, Kind, Message, MsgId, Payload, PeerInfo, Tree};
pub use state::{Gossip, GossipError, GossipStats, Input, Output};
pub use table::PeerEntry;
