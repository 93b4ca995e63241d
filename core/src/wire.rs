//! The versioned binary wire format (normative text: `docs/protocol.md`).
//!
//! Everything is CBOR (RFC 8949) through `minicbor`: structs are maps or
//! arrays keyed by small integer indices, so a newer minor version can add
//! fields and variants that older decoders skip. A frame on a link is the
//! two-element array `[major version, message]`; a different major version
//! is refused. Decoders check the frame size before parsing and every count
//! after, and never panic on any input.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use minicbor::bytes::ByteVec;
use minicbor::{Decode, Decoder, Encode, Encoder};

use crate::id::{EnvelopeId, PeerId, RoomId};

/// Major version of the wire format. Minor additions keep it.
pub const WIRE_VERSION: u8 = 1;

/// Default largest frame on any link, in bytes (relay default too).
pub const MAX_FRAME: usize = 1024 * 1024;

/// Largest encoded envelope (see [`crate::crypto::MAX_PLAINTEXT`]).
pub const MAX_ENVELOPE: usize = 800 * 1024;

/// Most entries in one version vector (authors of a document).
pub const MAX_VECTOR_ENTRIES: usize = 100_000;

/// Most envelopes in one `Envelopes` message.
pub const MAX_BATCH_ENVELOPES: usize = 4096;

/// Most peer tags in one `Joined`.
pub const MAX_JOINED_PEERS: usize = 100_000;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The frame is larger than the limit.
    TooLarge { len: usize, max: usize },
    /// The frame is of another major version.
    UnsupportedVersion(u64),
    /// A count exceeds its limit.
    TooMany { what: &'static str, max: usize },
    /// Not valid CBOR of the expected shape, or trailing bytes.
    Malformed(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            WireError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "wire version {v} is not supported (this build speaks {WIRE_VERSION})"
                )
            }
            WireError::TooMany { what, max } => write!(f, "more than {max} {what} in one frame"),
            WireError::Malformed(m) => write!(f, "malformed frame: {m}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for WireError {}

impl From<minicbor::decode::Error> for WireError {
    fn from(e: minicbor::decode::Error) -> Self {
        WireError::Malformed(alloc::format!("{e}"))
    }
}

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(index_only)]
pub enum EnvelopeKind {
    /// One Automerge change.
    #[n(0)]
    Change,
    /// An Automerge snapshot (compaction).
    #[n(1)]
    Snapshot,
}

/// The cleartext header of an envelope: what anyone may check without the
/// key. Its encoded bytes are the AEAD associated data.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct EnvelopeHeader {
    #[n(0)]
    pub version: u8,
    #[n(1)]
    pub kind: EnvelopeKind,
    #[n(2)]
    pub room: RoomId,
    #[n(3)]
    pub author: PeerId,
    /// Per-author position, contiguous from 1.
    #[n(4)]
    pub seq: u64,
    #[n(5)]
    pub epoch: u32,
    #[n(6)]
    #[cbor(with = "minicbor::bytes")]
    pub nonce: [u8; 12],
}

impl EnvelopeHeader {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Encoding into a Vec cannot fail.
        minicbor::to_vec(self).unwrap_or_default()
    }
}

/// A sealed, signed change: `[header bytes, ciphertext, signature]` as a
/// CBOR array of three byte strings. It is immutable; its bytes are kept as
/// received so that forwarding and hashing never depend on re-encoding.
#[derive(Clone)]
pub struct Envelope {
    bytes: Arc<[u8]>,
    header: EnvelopeHeader,
    header_at: Range<usize>,
    body_at: Range<usize>,
    signature: [u8; 64],
    id: EnvelopeId,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Envelope({:?} #{} {}B)",
            self.header.author,
            self.header.seq,
            self.bytes.len()
        )
    }
}

impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Envelope {}

impl Envelope {
    pub(crate) fn assemble(
        header: EnvelopeHeader,
        header_bytes: &[u8],
        body: &[u8],
        signature: &[u8; 64],
    ) -> Envelope {
        let mut e = Encoder::new(Vec::with_capacity(header_bytes.len() + body.len() + 80));
        // Writing to a Vec cannot fail.
        let _ = e
            .array(3)
            .and_then(|e| e.bytes(header_bytes))
            .and_then(|e| e.bytes(body))
            .and_then(|e| e.bytes(signature));
        let bytes = e.into_writer();
        // Offsets: recompute by decoding what we just wrote, one code path.
        Envelope::decode_parts(bytes.into(), header).expect("envelope we encoded decodes")
    }

    /// Parses an envelope's structure (not its signature: see
    /// [`crate::crypto::verify_envelope`]).
    pub fn decode(bytes: &[u8]) -> Result<Envelope, WireError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(WireError::TooLarge {
                len: bytes.len(),
                max: MAX_ENVELOPE,
            });
        }
        let mut d = Decoder::new(bytes);
        let n = d.array()?;
        if n != Some(3) {
            return Err(WireError::Malformed("an envelope is an array of 3".into()));
        }
        let header_bytes = d.bytes()?;
        let mut hd = Decoder::new(header_bytes);
        let header: EnvelopeHeader = hd.decode()?;
        if hd.position() != header_bytes.len() {
            // One header, one encoding: no bytes may hide behind it.
            return Err(WireError::Malformed(
                "trailing bytes in envelope header".into(),
            ));
        }
        if header.version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(header.version.into()));
        }
        if header.seq == 0 {
            return Err(WireError::Malformed("envelope seq starts at 1".into()));
        }
        Envelope::decode_parts(bytes.into(), header)
    }

    fn decode_parts(bytes: Arc<[u8]>, header: EnvelopeHeader) -> Result<Envelope, WireError> {
        let mut d = Decoder::new(&bytes);
        d.array()?;
        let header_at = byte_range(&mut d)?;
        let body_at = byte_range(&mut d)?;
        let sig = d.bytes()?;
        let signature: [u8; 64] = sig
            .try_into()
            .map_err(|_| WireError::Malformed("signature must be 64 bytes".into()))?;
        if d.position() != bytes.len() {
            return Err(WireError::Malformed("trailing bytes after envelope".into()));
        }
        let id = EnvelopeId(*blake3::hash(&bytes).as_bytes());
        Ok(Envelope {
            bytes,
            header,
            header_at,
            body_at,
            signature,
            id,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Shares the encoded bytes without copying.
    pub fn shared_bytes(&self) -> Arc<[u8]> {
        self.bytes.clone()
    }
    pub fn header(&self) -> &EnvelopeHeader {
        &self.header
    }
    pub fn header_bytes(&self) -> &[u8] {
        &self.bytes[self.header_at.clone()]
    }
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body_at.clone()]
    }
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
    pub fn id(&self) -> EnvelopeId {
        self.id
    }
    pub fn author(&self) -> PeerId {
        self.header.author
    }
    pub fn seq(&self) -> u64 {
        self.header.seq
    }
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn byte_range(d: &mut Decoder<'_>) -> Result<Range<usize>, WireError> {
    let b = d.bytes()?;
    let end = d.position();
    Ok(end - b.len()..end)
}

/// Author → highest contiguous seq held. Encoded as a CBOR map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionVector(pub BTreeMap<PeerId, u64>);

impl VersionVector {
    pub fn get(&self, author: &PeerId) -> u64 {
        self.0.get(author).copied().unwrap_or(0)
    }
    pub fn set(&mut self, author: PeerId, seq: u64) {
        if seq == 0 {
            self.0.remove(&author);
        } else {
            self.0.insert(author, seq);
        }
    }
    /// True when every entry of `other` is covered by `self`.
    pub fn covers(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(a, s)| self.get(a) >= *s)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &u64)> {
        self.0.iter()
    }
}

impl<C> Encode<C> for VersionVector {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(self.0.len() as u64)?;
        for (k, v) in &self.0 {
            k.encode(e, ctx)?;
            e.u64(*v)?;
        }
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for VersionVector {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        let n = d
            .map()?
            .ok_or_else(|| minicbor::decode::Error::message("version vector must be definite"))?;
        if n > MAX_VECTOR_ENTRIES as u64 {
            return Err(minicbor::decode::Error::message(
                "version vector has too many entries",
            ));
        }
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let k = PeerId::decode(d, ctx)?;
            let v = d.u64()?;
            if v > 0 {
                out.insert(k, v);
            }
        }
        Ok(VersionVector(out))
    }
}

/// Opaque tag the relay gives a member of a room: random per (connection, room).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
#[cbor(transparent)]
pub struct PeerTag(#[n(0)] pub u64);

/// Error codes the relay sends (documented in docs/operations.md).
pub mod relay_error {
    pub const BAD_FRAME: u16 = 1;
    pub const FRAME_TOO_LARGE: u16 = 2;
    pub const RATE_LIMITED: u16 = 3;
    pub const TOO_MANY_ROOMS: u16 = 4;
    pub const NOT_JOINED: u16 = 5;
    pub const UNKNOWN_PEER: u16 = 6;
    pub const UNAUTHORIZED: u16 = 7;
    pub const UNSUPPORTED_VERSION: u16 = 8;
}

/// Client → relay.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum RelayRequest {
    #[n(0)]
    Join {
        #[n(0)]
        room: RoomId,
    },
    #[n(1)]
    Leave {
        #[n(0)]
        room: RoomId,
    },
    /// To every other member of the room.
    #[n(2)]
    Publish {
        #[n(0)]
        room: RoomId,
        #[n(1)]
        payload: ByteVec,
    },
    /// To one member of the room.
    #[n(3)]
    Send {
        #[n(0)]
        room: RoomId,
        #[n(1)]
        to: PeerTag,
        #[n(2)]
        payload: ByteVec,
    },
    #[n(4)]
    Ping {
        #[n(0)]
        nonce: u64,
    },
}

/// Relay → client.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum RelayEvent {
    /// Answer to `Join`: this connection's tag in the room and the others present.
    #[n(0)]
    Joined {
        #[n(0)]
        room: RoomId,
        #[n(1)]
        you: PeerTag,
        #[n(2)]
        peers: Vec<PeerTag>,
    },
    #[n(1)]
    PeerJoined {
        #[n(0)]
        room: RoomId,
        #[n(1)]
        peer: PeerTag,
    },
    #[n(2)]
    PeerLeft {
        #[n(0)]
        room: RoomId,
        #[n(1)]
        peer: PeerTag,
    },
    #[n(3)]
    Message {
        #[n(0)]
        room: RoomId,
        #[n(1)]
        from: PeerTag,
        #[n(2)]
        payload: ByteVec,
    },
    #[n(4)]
    Error {
        #[n(0)]
        code: u16,
        #[n(1)]
        message: String,
    },
    #[n(5)]
    Pong {
        #[n(0)]
        nonce: u64,
    },
}

/// A frame on a direct (peer-to-peer) link: a sealed sync message of a room.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DirectFrame {
    #[n(0)]
    pub room: RoomId,
    #[n(1)]
    pub sealed: ByteVec,
}

/// The sync messages peers exchange about one document. They travel
/// sealed with the document's transport key (see [`crate::crypto`]).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum SyncMessage {
    /// "This is what I hold" (durably, for a pinning node).
    #[n(0)]
    Have {
        #[n(0)]
        from: PeerId,
        #[n(1)]
        vector: VersionVector,
        /// The sender is a pinning node: its vector counts for `stored-remotely`.
        #[n(2)]
        pinning: bool,
    },
    /// Envelopes, oldest first per author. `batch` 0 is a live push, which
    /// is not acknowledged; a stream batch n > 0 is acknowledged with `Ack`.
    #[n(1)]
    Envelopes {
        #[n(0)]
        batch: u64,
        #[n(1)]
        envelopes: Vec<ByteVec>,
    },
    /// Flow control: every stream batch up to and including `batch` arrived.
    #[n(2)]
    Ack {
        #[n(0)]
        batch: u64,
    },
}

/// Encodes `[WIRE_VERSION, msg]`.
pub fn encode_frame<T: Encode<()>>(msg: &T) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = e
        .array(2)
        .and_then(|e| e.u8(WIRE_VERSION))
        .and_then(|e| e.encode(msg));
    e.into_writer()
}

/// Decodes a frame of at most `max` bytes written by [`encode_frame`].
pub fn decode_frame<'b, T: Decode<'b, ()> + FrameLimits>(
    bytes: &'b [u8],
    max: usize,
) -> Result<T, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let mut d = Decoder::new(bytes);
    if d.array()? != Some(2) {
        return Err(WireError::Malformed("a frame is [version, message]".into()));
    }
    let version = d.u64()?;
    if version != u64::from(WIRE_VERSION) {
        return Err(WireError::UnsupportedVersion(version));
    }
    let msg: T = d.decode()?;
    if d.position() != bytes.len() {
        return Err(WireError::Malformed("trailing bytes after frame".into()));
    }
    msg.check_limits()?;
    Ok(msg)
}

/// Counts a decoded message must respect.
pub trait FrameLimits {
    fn check_limits(&self) -> Result<(), WireError> {
        Ok(())
    }
}

impl FrameLimits for RelayRequest {}
impl FrameLimits for DirectFrame {}
impl FrameLimits for RelayEvent {
    fn check_limits(&self) -> Result<(), WireError> {
        match self {
            RelayEvent::Joined { peers, .. } if peers.len() > MAX_JOINED_PEERS => {
                Err(WireError::TooMany {
                    what: "peers",
                    max: MAX_JOINED_PEERS,
                })
            }
            _ => Ok(()),
        }
    }
}
impl FrameLimits for SyncMessage {
    fn check_limits(&self) -> Result<(), WireError> {
        match self {
            SyncMessage::Envelopes { envelopes, .. } if envelopes.len() > MAX_BATCH_ENVELOPES => {
                Err(WireError::TooMany {
                    what: "envelopes",
                    max: MAX_BATCH_ENVELOPES,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let msgs = [
            RelayRequest::Join {
                room: RoomId([1; 32]),
            },
            RelayRequest::Send {
                room: RoomId([1; 32]),
                to: PeerTag(7),
                payload: alloc::vec![1, 2, 3].into(),
            },
            RelayRequest::Ping { nonce: 9 },
        ];
        for m in msgs {
            let bytes = encode_frame(&m);
            assert_eq!(decode_frame::<RelayRequest>(&bytes, MAX_FRAME).unwrap(), m);
        }
    }

    #[test]
    fn other_major_version_is_refused() {
        let mut bytes = encode_frame(&RelayRequest::Ping { nonce: 1 });
        bytes[1] = 2; // [2, ...]
        assert_eq!(
            decode_frame::<RelayRequest>(&bytes, MAX_FRAME),
            Err(WireError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn oversized_frame_is_refused_before_parsing() {
        let bytes = alloc::vec![0u8; 100];
        assert!(matches!(
            decode_frame::<RelayRequest>(&bytes, 99),
            Err(WireError::TooLarge { len: 100, max: 99 })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode_frame(&RelayRequest::Ping { nonce: 1 });
        bytes.push(0);
        assert!(matches!(
            decode_frame::<RelayRequest>(&bytes, MAX_FRAME),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_fields_of_a_newer_minor_version_are_skipped() {
        // Have with an extra field 3 (a future addition) still decodes.
        let mut e = Encoder::new(Vec::new());
        e.array(2).unwrap().u8(WIRE_VERSION).unwrap();
        e.array(2).unwrap().u32(0).unwrap(); // variant Have
        e.array(4).unwrap();
        e.bytes(&[5; 32]).unwrap();
        e.map(0).unwrap();
        e.bool(true).unwrap();
        e.str("future").unwrap();
        let bytes = e.into_writer();
        let msg: SyncMessage = decode_frame(&bytes, MAX_FRAME).unwrap();
        assert_eq!(
            msg,
            SyncMessage::Have {
                from: PeerId([5; 32]),
                vector: VersionVector::default(),
                pinning: true
            }
        );
    }
}
