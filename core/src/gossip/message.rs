//! The gossip messages and the frame that carries them (normative text:
//! `docs/gossip.md`).
//!
//! A [`Frame`] is what the state machine sends and receives: a header that
//! names sender, recipient, the sender's incarnation (`session`), a
//! per-sender counter (`seq`) and the recipient's incarnation as the
//! sender knows it (`echo`), then one [`Message`]. On the network a frame
//! is signed by its sender and sealed with the swarm key
//! ([`super::codec`]).

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Deref;

use minicbor::{Decode, Decoder, Encode, Encoder};

use crate::id::PeerId;
use crate::wire::WireError;

/// Largest payload one broadcast carries. It leaves room for the frame
/// header, signature, seal and a relay `Send` inside the 1 MiB frame limit;
/// the largest envelope (800 KiB) fits.
pub const MAX_PAYLOAD: usize = 960 * 1024;
/// Most peer records in one `PeerRequest` / `PeerListResponse`.
pub const MAX_SAMPLE: usize = 64;
/// Most message ids in one `IHave`, `Heartbeat` or `Graft`.
pub const MAX_IDS: usize = 1024;
/// Most trees named in one `Graft`.
pub const MAX_TREES: usize = 64;
/// Most addresses one peer advertises.
pub const MAX_ADDRESSES: usize = 8;
/// Longest address, in bytes.
pub const MAX_ADDRESS_LEN: usize = 256;

/// The id of a broadcast message: `BLAKE3-derive-key("mycel gossip message
/// id v1", payload)`. Content-addressed, so receivers recompute it and a
/// peer cannot attach a payload to another message's id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId(pub [u8; 32]);

impl MsgId {
    /// The id of `payload`.
    pub fn of(payload: &[u8]) -> MsgId {
        let mut h = blake3::Hasher::new_derive_key("mycel gossip message id v1");
        h.update(payload);
        MsgId(*h.finalize().as_bytes())
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgId(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl<C> Encode<C> for MsgId {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.bytes(&self.0)?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for MsgId {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, minicbor::decode::Error> {
        <[u8; 32]>::try_from(d.bytes()?)
            .map(MsgId)
            .map_err(|_| minicbor::decode::Error::message("message id has the wrong length"))
    }
}

/// The spanning tree a broadcast travels (Plumtree): `Some(origin)` for
/// the origin's own tree, which frequent broadcasters use because a tree
/// rooted at its origin is shallow; `None` for the swarm's shared tree,
/// which costs nothing to set up but is deep from most origins.
pub type Tree = Option<PeerId>;

/// A broadcast payload: shared, so forwarding to several peers and
/// caching for grafts never copies it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Payload(Arc<[u8]>);

impl Payload {
    pub fn new(bytes: &[u8]) -> Payload {
        Payload(bytes.into())
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload(v.into())
    }
}

impl From<&[u8]> for Payload {
    fn from(v: &[u8]) -> Self {
        Payload(v.into())
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({}B)", self.0.len())
    }
}

impl<C> Encode<C> for Payload {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.bytes(&self.0)?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for Payload {
    fn decode(d: &mut Decoder<'b>, _: &mut C) -> Result<Self, minicbor::decode::Error> {
        Ok(Payload(d.bytes()?.into()))
    }
}

/// What one peer tells another about a peer (itself or one it knows).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PeerInfo {
    #[n(0)]
    pub id: PeerId,
    /// The peer opted in to being reachable: only then are its addresses
    /// passed on.
    #[n(1)]
    pub reachable: bool,
    /// Where it can be reached directly (empty unless `reachable`).
    #[n(2)]
    pub addresses: Vec<String>,
    /// Seconds since the sender last heard from the peer (0 for itself),
    /// rounded up, so ages only grow as records are passed on.
    #[n(3)]
    pub age_s: u32,
}

/// "I have message `id`, received `hops` hops from its origin" (lazy push).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Have {
    #[n(0)]
    pub id: MsgId,
    #[n(1)]
    pub hops: u8,
}

/// The gossip messages. Membership follows HyParView, dissemination
/// Plumtree; the names of the Flashback design are kept where they fit.
/// Variants 10–13 (dissemination) exist only with the `broadcast` feature:
/// a membership-only build refuses them as unknown variants.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Message {
    /// Introduction and session handshake: the only message accepted from
    /// a peer that does not yet know the receiver's session.
    #[n(0)]
    Hello {
        #[n(0)]
        info: PeerInfo,
    },
    /// A newcomer announced along a random walk (HyParView ForwardJoin).
    #[n(1)]
    PeerAnnouncement {
        #[n(0)]
        peer: PeerInfo,
        #[n(1)]
        ttl: u8,
    },
    /// A random walk asking for peers, carrying a sample of the origin's
    /// (HyParView Shuffle).
    #[n(2)]
    PeerRequest {
        #[n(0)]
        origin: PeerInfo,
        #[n(1)]
        sample: Vec<PeerInfo>,
        #[n(2)]
        ttl: u8,
    },
    /// The answer to a `PeerRequest`, sent to its origin (ShuffleReply).
    #[n(3)]
    PeerListResponse {
        #[n(0)]
        sample: Vec<PeerInfo>,
    },
    /// Liveness and round-trip time on an active link, carrying lazy
    /// announcements of recent messages. `ping` 0: no answer wanted;
    /// `pong` 0: answers nothing.
    #[n(4)]
    Heartbeat {
        #[n(0)]
        ping: u64,
        #[n(1)]
        pong: u64,
        #[n(2)]
        have: Vec<Have>,
    },
    /// The sender's own record changed (reachability, addresses).
    #[n(5)]
    PeerUpdate {
        #[n(0)]
        info: PeerInfo,
    },
    /// A newcomer asks its contact to take it into its active view.
    #[n(6)]
    Join {
        #[n(0)]
        info: PeerInfo,
    },
    /// Asks for an active link; `high` when the sender has none (must be
    /// accepted).
    #[n(7)]
    Neighbor {
        #[n(0)]
        high: bool,
    },
    /// The answer to `Join` or `Neighbor`.
    #[n(8)]
    NeighborReply {
        #[n(0)]
        accepted: bool,
    },
    /// The sender dropped the link; `alive` false: it is leaving the swarm.
    #[n(9)]
    Disconnect {
        #[n(0)]
        alive: bool,
    },
    #[cfg(feature = "broadcast")]
    /// Eager push of a broadcast, `hops` hops from its origin (1 = sent by
    /// the origin).
    #[n(10)]
    Gossip {
        #[n(0)]
        hops: u8,
        #[n(1)]
        payload: Payload,
        /// The spanning tree it travels: its origin's own tree, or (null)
        /// the swarm's shared one.
        #[n(2)]
        tree: Tree,
    },
    #[cfg(feature = "broadcast")]
    /// Lazy push: ids of messages the sender has (when they do not fit in
    /// a heartbeat).
    #[n(11)]
    IHave {
        #[n(0)]
        have: Vec<Have>,
    },
    #[cfg(feature = "broadcast")]
    /// "Send me these, and push to me eagerly from now on on their trees
    /// and on `trees`".
    #[n(12)]
    Graft {
        #[n(0)]
        ids: Vec<MsgId>,
        #[n(1)]
        trees: Vec<Tree>,
    },
    #[cfg(feature = "broadcast")]
    /// "I got `id` from you when I had it already: push to me lazily on
    /// `tree` from now on".
    #[n(13)]
    Prune {
        #[n(0)]
        id: MsgId,
        #[n(1)]
        tree: Tree,
    },
}

/// A message's kind, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Kind {
    Hello,
    PeerAnnouncement,
    PeerRequest,
    PeerListResponse,
    Heartbeat,
    PeerUpdate,
    Join,
    Neighbor,
    NeighborReply,
    Disconnect,
    Gossip,
    IHave,
    Graft,
    Prune,
}

impl Kind {
    /// Number of kinds.
    pub const COUNT: usize = 14;
    pub const ALL: [Kind; Kind::COUNT] = [
        Kind::Hello,
        Kind::PeerAnnouncement,
        Kind::PeerRequest,
        Kind::PeerListResponse,
        Kind::Heartbeat,
        Kind::PeerUpdate,
        Kind::Join,
        Kind::Neighbor,
        Kind::NeighborReply,
        Kind::Disconnect,
        Kind::Gossip,
        Kind::IHave,
        Kind::Graft,
        Kind::Prune,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::PeerAnnouncement => "peer_announcement",
            Kind::PeerRequest => "peer_request",
            Kind::PeerListResponse => "peer_list_response",
            Kind::Heartbeat => "heartbeat",
            Kind::PeerUpdate => "peer_update",
            Kind::Join => "join",
            Kind::Neighbor => "neighbor",
            Kind::NeighborReply => "neighbor_reply",
            Kind::Disconnect => "disconnect",
            Kind::Gossip => "gossip",
            Kind::IHave => "ihave",
            Kind::Graft => "graft",
            Kind::Prune => "prune",
        }
    }
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello { .. } => Kind::Hello,
            Message::PeerAnnouncement { .. } => Kind::PeerAnnouncement,
            Message::PeerRequest { .. } => Kind::PeerRequest,
            Message::PeerListResponse { .. } => Kind::PeerListResponse,
            Message::Heartbeat { .. } => Kind::Heartbeat,
            Message::PeerUpdate { .. } => Kind::PeerUpdate,
            Message::Join { .. } => Kind::Join,
            Message::Neighbor { .. } => Kind::Neighbor,
            Message::NeighborReply { .. } => Kind::NeighborReply,
            Message::Disconnect { .. } => Kind::Disconnect,
            #[cfg(feature = "broadcast")]
            Message::Gossip { .. } => Kind::Gossip,
            #[cfg(feature = "broadcast")]
            Message::IHave { .. } => Kind::IHave,
            #[cfg(feature = "broadcast")]
            Message::Graft { .. } => Kind::Graft,
            #[cfg(feature = "broadcast")]
            Message::Prune { .. } => Kind::Prune,
        }
    }

    /// Checks every count and size against the limits of `docs/gossip.md`.
    pub fn check_limits(&self) -> Result<(), WireError> {
        fn many(what: &'static str, n: usize, max: usize) -> Result<(), WireError> {
            if n > max {
                Err(WireError::TooMany { what, max })
            } else {
                Ok(())
            }
        }
        fn info(i: &PeerInfo) -> Result<(), WireError> {
            many("addresses", i.addresses.len(), MAX_ADDRESSES)?;
            if i.addresses.iter().any(|a| a.len() > MAX_ADDRESS_LEN) {
                return Err(WireError::TooLarge {
                    len: i.addresses.iter().map(String::len).max().unwrap_or(0),
                    max: MAX_ADDRESS_LEN,
                });
            }
            Ok(())
        }
        match self {
            Message::Hello { info: i }
            | Message::PeerUpdate { info: i }
            | Message::Join { info: i }
            | Message::PeerAnnouncement { peer: i, .. } => info(i),
            Message::PeerRequest { origin, sample, .. } => {
                info(origin)?;
                many("peer records", sample.len(), MAX_SAMPLE)?;
                sample.iter().try_for_each(info)
            }
            Message::PeerListResponse { sample } => {
                many("peer records", sample.len(), MAX_SAMPLE)?;
                sample.iter().try_for_each(info)
            }
            Message::Heartbeat { have, .. } => many("message ids", have.len(), MAX_IDS),
            #[cfg(feature = "broadcast")]
            Message::IHave { have } => many("message ids", have.len(), MAX_IDS),
            #[cfg(feature = "broadcast")]
            Message::Graft { ids, trees } => {
                many("message ids", ids.len(), MAX_IDS)?;
                many("trees", trees.len(), MAX_TREES)
            }
            #[cfg(feature = "broadcast")]
            Message::Gossip { payload, .. } if payload.len() > MAX_PAYLOAD => {
                Err(WireError::TooLarge {
                    len: payload.len(),
                    max: MAX_PAYLOAD,
                })
            }
            _ => Ok(()),
        }
    }
}

/// One gossip message with its header, as the state machine sees it (the
/// codec has checked the seal and the sender's signature).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Frame {
    /// The sender (its signature key).
    #[n(0)]
    pub from: PeerId,
    /// The recipient: a frame is never valid for anyone else.
    #[n(1)]
    pub to: PeerId,
    /// The sender's incarnation: random, drawn at every start.
    #[n(2)]
    pub session: u64,
    /// The sender's frame counter in this session, from 1.
    #[n(3)]
    pub seq: u64,
    /// The recipient's session as the sender knows it (0: unknown). Only
    /// `Hello` is accepted when it is not the recipient's current one.
    #[n(4)]
    pub echo: u64,
    #[n(5)]
    pub msg: Message,
}

impl Frame {
    /// Encoded bytes (what the sender signs).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Encoding into a Vec cannot fail.
        minicbor::to_vec(self).unwrap_or_default()
    }

    /// Decodes signed bytes: the whole input must be one frame, within limits.
    pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
        let mut d = Decoder::new(bytes);
        let frame: Frame = d.decode()?;
        if d.position() != bytes.len() {
            return Err(WireError::Malformed(
                "trailing bytes after gossip frame".into(),
            ));
        }
        frame.msg.check_limits()?;
        Ok(frame)
    }
}
