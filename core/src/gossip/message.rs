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
use crate::wire::{DecodeResult, WireError, array_fields, enum_start, required, unknown_variant};

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
#[derive(Debug, Clone, PartialEq, Eq, Encode)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode)]
pub struct Have {
    #[n(0)]
    pub id: MsgId,
    #[n(1)]
    pub hops: u8,
}

/// The gossip messages. Membership follows HyParView, dissemination
/// Plumtree; the names of the Flashback design are kept where they fit.
/// (Decoded by hand below, as the derive would, in less code.)
#[derive(Debug, Clone, PartialEq, Eq, Encode)]
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
    /// Lazy push: ids of messages the sender has (when they do not fit in
    /// a heartbeat).
    #[n(11)]
    IHave {
        #[n(0)]
        have: Vec<Have>,
    },
    /// "Send me these, and push to me eagerly from now on on their trees
    /// and on `trees`".
    #[n(12)]
    Graft {
        #[n(0)]
        ids: Vec<MsgId>,
        #[n(1)]
        trees: Vec<Tree>,
    },
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
            Message::Gossip { .. } => Kind::Gossip,
            Message::IHave { .. } => Kind::IHave,
            Message::Graft { .. } => Kind::Graft,
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
            Message::Heartbeat { have, .. } | Message::IHave { have } => {
                many("message ids", have.len(), MAX_IDS)
            }
            Message::Graft { ids, trees } => {
                many("message ids", ids.len(), MAX_IDS)?;
                many("trees", trees.len(), MAX_TREES)
            }
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
#[derive(Debug, Clone, PartialEq, Eq, Encode)]
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

// ---- hand-written decoders -------------------------------------------
//
// As for `RelayEvent` and `SyncMessage` (see `crate::wire`): exactly what
// minicbor's derive accepted (fields by position, definite or indefinite
// arrays, unknown trailing fields skipped, a missing `Tree` read as the
// shared tree), with the same errors, in one shared field loop instead of
// the derive's two per variant.

/// A struct as minicbor derives it: `[fields…]`; returns its position.
fn struct_fields<'b>(
    d: &mut Decoder<'b>,
    field: &mut dyn FnMut(&mut Decoder<'b>, u64) -> DecodeResult<()>,
) -> DecodeResult<usize> {
    let at = d.position();
    array_fields(d, field)?;
    Ok(at)
}

impl<'b, C> Decode<'b, C> for PeerInfo {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> DecodeResult<Self> {
        let (mut id, mut reachable, mut addresses, mut age_s) = (None, None, None, None);
        let at = struct_fields(d, &mut |d, i| {
            match i {
                0 => id = Some(PeerId::decode(d, ctx)?),
                1 => reachable = Some(bool::decode(d, ctx)?),
                2 => addresses = Some(Vec::<String>::decode(d, ctx)?),
                3 => age_s = Some(u32::decode(d, ctx)?),
                _ => d.skip()?,
            }
            Ok(())
        })?;
        Ok(PeerInfo {
            id: required(id, 0, "PeerInfo::id", at)?,
            reachable: required(reachable, 1, "PeerInfo::reachable", at)?,
            addresses: required(addresses, 2, "PeerInfo::addresses", at)?,
            age_s: required(age_s, 3, "PeerInfo::age_s", at)?,
        })
    }
}

impl<'b, C> Decode<'b, C> for Have {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> DecodeResult<Self> {
        let (mut id, mut hops) = (None, None);
        let at = struct_fields(d, &mut |d, i| {
            match i {
                0 => id = Some(MsgId::decode(d, ctx)?),
                1 => hops = Some(u8::decode(d, ctx)?),
                _ => d.skip()?,
            }
            Ok(())
        })?;
        Ok(Have {
            id: required(id, 0, "Have::id", at)?,
            hops: required(hops, 1, "Have::hops", at)?,
        })
    }
}

impl<'b, C> Decode<'b, C> for Message {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> DecodeResult<Self> {
        let (variant, at, variant_at) = enum_start(d)?;
        if !(0..=13).contains(&variant) {
            return unknown_variant(variant, variant_at);
        }
        // Fields by slot: a PeerInfo (0, 1, 2, 5, 6), a u8 (ttl, hops), a
        // sample, ping and pong, haves, a bool (7, 8, 9), a payload, a
        // tree (absent: the shared one), message ids, trees, a message id.
        let (mut info, mut small, mut sample, mut have) = (None, None, None, None);
        let (mut ping, mut pong, mut flag, mut payload) = (None, None, None, None);
        let (mut tree, mut ids, mut trees, mut id) = (Some(None), None, None, None);
        array_fields(d, &mut |d, i| {
            match (variant, i) {
                (0..=2 | 5 | 6, 0) => info = Some(PeerInfo::decode(d, ctx)?),
                (1, 1) | (2, 2) | (10, 0) => small = Some(u8::decode(d, ctx)?),
                (2, 1) | (3, 0) => sample = Some(Vec::<PeerInfo>::decode(d, ctx)?),
                (4, 0) => ping = Some(u64::decode(d, ctx)?),
                (4, 1) => pong = Some(u64::decode(d, ctx)?),
                (4, 2) | (11, 0) => have = Some(Vec::<Have>::decode(d, ctx)?),
                (7..=9, 0) => flag = Some(bool::decode(d, ctx)?),
                (10, 1) => payload = Some(Payload::decode(d, ctx)?),
                (10, 2) | (13, 1) => tree = Some(Tree::decode(d, ctx)?),
                (12, 0) => ids = Some(Vec::<MsgId>::decode(d, ctx)?),
                (12, 1) => trees = Some(Vec::<Tree>::decode(d, ctx)?),
                (13, 0) => id = Some(MsgId::decode(d, ctx)?),
                _ => d.skip()?,
            }
            Ok(())
        })?;
        Ok(match variant {
            0 => Message::Hello {
                info: required(info, 0, "Message::Hello::info", at)?,
            },
            1 => Message::PeerAnnouncement {
                peer: required(info, 0, "Message::PeerAnnouncement::peer", at)?,
                ttl: required(small, 1, "Message::PeerAnnouncement::ttl", at)?,
            },
            2 => Message::PeerRequest {
                origin: required(info, 0, "Message::PeerRequest::origin", at)?,
                sample: required(sample, 1, "Message::PeerRequest::sample", at)?,
                ttl: required(small, 2, "Message::PeerRequest::ttl", at)?,
            },
            3 => Message::PeerListResponse {
                sample: required(sample, 0, "Message::PeerListResponse::sample", at)?,
            },
            4 => Message::Heartbeat {
                ping: required(ping, 0, "Message::Heartbeat::ping", at)?,
                pong: required(pong, 1, "Message::Heartbeat::pong", at)?,
                have: required(have, 2, "Message::Heartbeat::have", at)?,
            },
            5 => Message::PeerUpdate {
                info: required(info, 0, "Message::PeerUpdate::info", at)?,
            },
            6 => Message::Join {
                info: required(info, 0, "Message::Join::info", at)?,
            },
            7 => Message::Neighbor {
                high: required(flag, 0, "Message::Neighbor::high", at)?,
            },
            8 => Message::NeighborReply {
                accepted: required(flag, 0, "Message::NeighborReply::accepted", at)?,
            },
            9 => Message::Disconnect {
                alive: required(flag, 0, "Message::Disconnect::alive", at)?,
            },
            10 => Message::Gossip {
                hops: required(small, 0, "Message::Gossip::hops", at)?,
                payload: required(payload, 1, "Message::Gossip::payload", at)?,
                tree: required(tree, 2, "Message::Gossip::tree", at)?,
            },
            11 => Message::IHave {
                have: required(have, 0, "Message::IHave::have", at)?,
            },
            12 => Message::Graft {
                ids: required(ids, 0, "Message::Graft::ids", at)?,
                trees: required(trees, 1, "Message::Graft::trees", at)?,
            },
            _ => Message::Prune {
                id: required(id, 0, "Message::Prune::id", at)?,
                tree: required(tree, 1, "Message::Prune::tree", at)?,
            },
        })
    }
}

impl<'b, C> Decode<'b, C> for Frame {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> DecodeResult<Self> {
        let (mut from, mut to, mut msg) = (None, None, None);
        let (mut session, mut seq, mut echo) = (None, None, None);
        let at = struct_fields(d, &mut |d, i| {
            match i {
                0 => from = Some(PeerId::decode(d, ctx)?),
                1 => to = Some(PeerId::decode(d, ctx)?),
                2 => session = Some(u64::decode(d, ctx)?),
                3 => seq = Some(u64::decode(d, ctx)?),
                4 => echo = Some(u64::decode(d, ctx)?),
                5 => msg = Some(Message::decode(d, ctx)?),
                _ => d.skip()?,
            }
            Ok(())
        })?;
        Ok(Frame {
            from: required(from, 0, "Frame::from", at)?,
            to: required(to, 1, "Frame::to", at)?,
            session: required(session, 2, "Frame::session", at)?,
            seq: required(seq, 3, "Frame::seq", at)?,
            echo: required(echo, 4, "Frame::echo", at)?,
            msg: required(msg, 5, "Frame::msg", at)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::codec::Outer;
    use alloc::format;
    use minicbor::bytes::ByteVec;

    /// minicbor's derived decoders of the same types (the reference the
    /// hand-written ones must match).
    mod derived {
        use super::super::{MsgId, Payload, Tree};
        use crate::id::PeerId;
        use alloc::string::String;
        use alloc::vec::Vec;
        use minicbor::bytes::ByteVec;
        use minicbor::{Decode, Encode};

        #[derive(Encode, Decode)]
        pub struct PeerInfo {
            #[n(0)]
            id: PeerId,
            #[n(1)]
            reachable: bool,
            #[n(2)]
            addresses: Vec<String>,
            #[n(3)]
            age_s: u32,
        }
        #[derive(Encode, Decode)]
        pub struct Have {
            #[n(0)]
            id: MsgId,
            #[n(1)]
            hops: u8,
        }
        #[derive(Encode, Decode)]
        pub enum Message {
            #[n(0)]
            Hello {
                #[n(0)]
                info: PeerInfo,
            },
            #[n(1)]
            PeerAnnouncement {
                #[n(0)]
                peer: PeerInfo,
                #[n(1)]
                ttl: u8,
            },
            #[n(2)]
            PeerRequest {
                #[n(0)]
                origin: PeerInfo,
                #[n(1)]
                sample: Vec<PeerInfo>,
                #[n(2)]
                ttl: u8,
            },
            #[n(3)]
            PeerListResponse {
                #[n(0)]
                sample: Vec<PeerInfo>,
            },
            #[n(4)]
            Heartbeat {
                #[n(0)]
                ping: u64,
                #[n(1)]
                pong: u64,
                #[n(2)]
                have: Vec<Have>,
            },
            #[n(5)]
            PeerUpdate {
                #[n(0)]
                info: PeerInfo,
            },
            #[n(6)]
            Join {
                #[n(0)]
                info: PeerInfo,
            },
            #[n(7)]
            Neighbor {
                #[n(0)]
                high: bool,
            },
            #[n(8)]
            NeighborReply {
                #[n(0)]
                accepted: bool,
            },
            #[n(9)]
            Disconnect {
                #[n(0)]
                alive: bool,
            },
            #[n(10)]
            Gossip {
                #[n(0)]
                hops: u8,
                #[n(1)]
                payload: Payload,
                #[n(2)]
                tree: Tree,
            },
            #[n(11)]
            IHave {
                #[n(0)]
                have: Vec<Have>,
            },
            #[n(12)]
            Graft {
                #[n(0)]
                ids: Vec<MsgId>,
                #[n(1)]
                trees: Vec<Tree>,
            },
            #[n(13)]
            Prune {
                #[n(0)]
                id: MsgId,
                #[n(1)]
                tree: Tree,
            },
        }
        #[derive(Encode, Decode)]
        pub struct Frame {
            #[n(0)]
            from: PeerId,
            #[n(1)]
            to: PeerId,
            #[n(2)]
            session: u64,
            #[n(3)]
            seq: u64,
            #[n(4)]
            echo: u64,
            #[n(5)]
            msg: Message,
        }
        #[derive(Encode, Decode)]
        pub enum Outer {
            #[n(16)]
            Signed {
                #[n(0)]
                signed: ByteVec,
                #[n(1)]
                #[cbor(with = "minicbor::bytes")]
                signature: [u8; 64],
            },
        }
    }

    fn info(n: u8, addresses: &[&str]) -> PeerInfo {
        PeerInfo {
            id: PeerId([n; 32]),
            reachable: !addresses.is_empty(),
            addresses: addresses.iter().map(|a| String::from(*a)).collect(),
            age_s: u32::from(n) * 1000,
        }
    }

    /// Every variant, with its optional tree absent and present.
    fn every_message() -> Vec<Message> {
        let have = Have {
            id: MsgId::of(b"x"),
            hops: 3,
        };
        alloc::vec![
            Message::Hello {
                info: info(1, &["wss://a.example", "10.0.0.1:4000"]),
            },
            Message::PeerAnnouncement {
                peer: info(2, &[]),
                ttl: 6,
            },
            Message::PeerRequest {
                origin: info(3, &[]),
                sample: alloc::vec![info(4, &["x"]), info(5, &[])],
                ttl: 0,
            },
            Message::PeerListResponse { sample: Vec::new() },
            Message::PeerListResponse {
                sample: alloc::vec![info(6, &[])],
            },
            Message::Heartbeat {
                ping: u64::MAX,
                pong: 0,
                have: alloc::vec![have, have],
            },
            Message::PeerUpdate {
                info: info(7, &["y"]),
            },
            Message::Join { info: info(8, &[]) },
            Message::Neighbor { high: true },
            Message::NeighborReply { accepted: false },
            Message::Disconnect { alive: true },
            Message::Gossip {
                hops: 1,
                payload: Payload::new(b"payload"),
                tree: None,
            },
            Message::Gossip {
                hops: 255,
                payload: Payload::new(&[]),
                tree: Some(PeerId([9; 32])),
            },
            Message::IHave {
                have: alloc::vec![have],
            },
            Message::Graft {
                ids: alloc::vec![MsgId::of(b"a"), MsgId::of(b"b")],
                trees: alloc::vec![None, Some(PeerId([10; 32]))],
            },
            Message::Prune {
                id: MsgId::of(b"c"),
                tree: None,
            },
            Message::Prune {
                id: MsgId::of(b"d"),
                tree: Some(PeerId([11; 32])),
            },
        ]
    }

    /// What a decoder made of some bytes, comparable across the two: the
    /// re-encoded value and where decoding stopped, or the error's text.
    fn outcome<'b, T: Decode<'b, ()> + Encode<()>>(bytes: &'b [u8]) -> String {
        let mut d = Decoder::new(bytes);
        match d.decode::<T>() {
            Ok(v) => format!("ok {:?} at {}", minicbor::to_vec(&v).unwrap(), d.position()),
            Err(e) => format!("error {e}"),
        }
    }

    /// Both decoders on `bytes` and on every truncation and one-byte change
    /// of it.
    fn same<A, B>(bytes: &[u8])
    where
        A: for<'a> Decode<'a, ()> + Encode<()>,
        B: for<'a> Decode<'a, ()> + Encode<()>,
    {
        let check = |b: &[u8]| {
            assert_eq!(outcome::<A>(b), outcome::<B>(b), "on {b:02x?}");
        };
        check(bytes);
        for n in 0..bytes.len() {
            check(&bytes[..n]);
            for x in [
                0x00, 0x01, 0x0e, 0x10, 0x18, 0x20, 0x40, 0x60, 0x80, 0x9f, 0xf6, 0xff,
            ] {
                let mut b = bytes.to_vec();
                b[n] = x;
                check(&b);
            }
        }
    }

    /// The same array made indefinite (`0x9f … 0xff`) and, when `extra`,
    /// with one more field a later version added.
    fn indefinite(plain: &[u8], extra: bool) -> Vec<u8> {
        let head = plain[0];
        assert!((0x80..0x98).contains(&head), "short array head");
        let mut out = alloc::vec![0x9f];
        out.extend_from_slice(&plain[1..]);
        if extra {
            out.extend_from_slice(&[0x63, b'n', b'e', b'w']);
        }
        out.push(0xff);
        out
    }

    /// The hand-written decoders of the gossip messages accept exactly
    /// what minicbor's derived ones did, with the same errors: every
    /// variant, definite and indefinite arrays, unknown trailing fields,
    /// absent trees, and every truncation and one-byte change.
    #[test]
    fn hand_written_decoders_match_the_derived_ones() {
        for msg in every_message() {
            let plain = minicbor::to_vec(&msg).unwrap();
            assert_eq!(minicbor::decode::<Message>(&plain).unwrap(), msg);
            same::<Message, derived::Message>(&plain);
            // The field array (after `0x82`, the variant) indefinite, with
            // and without an extra field.
            for extra in [false, true] {
                let mut open = plain[..2].to_vec();
                open.extend(indefinite(&plain[2..], extra));
                // An absent tree is left out, so a later field would sit
                // at its place (an encoder adding one writes the tree):
                // both decoders refuse that alike.
                let tree_left_out = matches!(
                    msg,
                    Message::Gossip { tree: None, .. } | Message::Prune { tree: None, .. }
                );
                if !(extra && tree_left_out) {
                    assert_eq!(minicbor::decode::<Message>(&open).unwrap(), msg);
                }
                same::<Message, derived::Message>(&open);
            }
            let frame = Frame {
                from: PeerId([1; 32]),
                to: PeerId([2; 32]),
                session: 3,
                seq: 4,
                echo: 0,
                msg,
            };
            let plain = frame.to_bytes();
            assert_eq!(Frame::decode(&plain).unwrap(), frame);
            same::<Frame, derived::Frame>(&plain);
            for extra in [false, true] {
                same::<Frame, derived::Frame>(&indefinite(&plain, extra));
            }
        }
        // A tree written as null, and left out.
        let id = MsgId::of(b"e");
        let mut e = Encoder::new(Vec::new());
        e.array(2).unwrap().u8(13).unwrap().array(2).unwrap();
        e.encode(id).unwrap().null().unwrap();
        let null = e.into_writer();
        assert_eq!(
            minicbor::decode::<Message>(&null).unwrap(),
            Message::Prune { id, tree: None }
        );
        same::<Message, derived::Message>(&null);
        let mut e = Encoder::new(Vec::new());
        e.array(2)
            .unwrap()
            .u8(10)
            .unwrap()
            .array(1)
            .unwrap()
            .u8(2)
            .unwrap();
        same::<Message, derived::Message>(&e.into_writer());
        // Unknown variants, empty field arrays, other shapes.
        for bytes in [
            &[0x82, 0x0e, 0x80][..],
            &[0x82, 0x20, 0x80],
            &[0x82, 0x00, 0x80],
            &[0x82, 0x0d, 0x80],
            &[0x82, 0x04, 0x9f, 0xff],
            &[0x81, 0x00],
            &[0x80],
            &[0xa0],
        ] {
            same::<Message, derived::Message>(bytes);
            same::<Frame, derived::Frame>(bytes);
            same::<PeerInfo, derived::PeerInfo>(bytes);
            same::<Have, derived::Have>(bytes);
            same::<Outer, derived::Outer>(bytes);
        }
        // The outer envelope.
        let outer = Outer::Signed {
            signed: ByteVec::from(alloc::vec![1, 2, 3]),
            signature: [7; 64],
        };
        let plain = minicbor::to_vec(&outer).unwrap();
        assert_eq!(minicbor::decode::<Outer>(&plain).unwrap(), outer);
        same::<Outer, derived::Outer>(&plain);
        for extra in [false, true] {
            let mut open = plain[..2].to_vec(); // 0x82, 0x10 (16)
            open.extend(indefinite(&plain[2..], extra));
            assert_eq!(minicbor::decode::<Outer>(&open).unwrap(), outer);
            same::<Outer, derived::Outer>(&open);
        }
    }
}
