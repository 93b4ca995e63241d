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
        WireError::Malformed(decode_error_text(&e))
    }
}

/// minicbor's own message (type, position, and the decoder's note).
#[cfg(not(target_arch = "wasm32"))]
fn decode_error_text(e: &minicbor::decode::Error) -> String {
    alloc::format!("{e}")
}

/// In the browser build, a message made from the error's kind and position
/// without minicbor's `Display` (which formats every kind of error and
/// costs the .wasm about 3 KB; see docs/design-decisions.md).
#[cfg(target_arch = "wasm32")]
fn decode_error_text(e: &minicbor::decode::Error) -> String {
    let what = if e.is_end_of_input() {
        "the bytes end too early"
    } else if e.is_type_mismatch() {
        "a value of an unexpected type"
    } else if e.is_unknown_variant() {
        "an unknown kind of message or field value"
    } else if e.is_missing_value() {
        "a required field is missing"
    } else {
        "not the expected CBOR"
    };
    match e.position() {
        Some(at) => alloc::format!("{what} (at byte {at})"),
        None => what.into(),
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

/// Most levels in a batch envelope's Merkle proof: batches of up to
/// 65,536 envelopes (the sealer makes at most
/// [`crate::crypto::MAX_SEAL_BATCH`]).
pub const MAX_PROOF_DEPTH: usize = 16;

/// A sealed, signed change: `[header bytes, ciphertext, signature]`, or
/// `[header bytes, ciphertext, signature, proof]` for one envelope of a
/// batch signed once over a Merkle root (see [`crate::crypto`]), as a CBOR
/// array of byte strings in their shortest form. It is immutable; its bytes
/// are kept as received so that forwarding never depends on re-encoding.
#[derive(Clone)]
pub struct Envelope {
    // A Vec behind the Arc, not an Arc<[u8]>: the sealer's buffer moves in
    // without a copy (16 KiB of memcpy and a fresh allocation per large
    // envelope).
    bytes: Arc<Vec<u8>>,
    header: EnvelopeHeader,
    header_at: Range<usize>,
    body_at: Range<usize>,
    proof_at: Range<usize>,
    signature: [u8; 64],
    /// What the signature covers: the leaf digest, or the batch root.
    signed: [u8; 32],
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

/// Bytes of the shortest CBOR head for a length of `n`.
pub(crate) fn cbor_head_len(n: usize) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Appends the shortest CBOR head of a byte string of `n` bytes.
pub(crate) fn push_bytes_head(out: &mut Vec<u8>, n: usize) {
    const BSTR: u8 = 0x40;
    match n {
        0..=23 => out.push(BSTR | n as u8),
        24..=0xff => out.extend_from_slice(&[BSTR | 24, n as u8]),
        0x100..=0xffff => {
            out.push(BSTR | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(BSTR | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(BSTR | 27);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}

/// The parts of an envelope the sealer has just written (see
/// [`crate::crypto::DocKeys::seal_batch`]).
pub(crate) struct SealedParts {
    pub bytes: Vec<u8>,
    pub header: EnvelopeHeader,
    pub header_at: Range<usize>,
    pub body_at: Range<usize>,
    pub proof_at: Range<usize>,
    pub signature: [u8; 64],
    pub leaf: [u8; 32],
    pub root: [u8; 32],
}

impl Envelope {
    /// An envelope the sealer wrote: no parsing, no second pass over the body.
    pub(crate) fn from_sealed(p: SealedParts) -> Envelope {
        let proof = &p.bytes[p.proof_at.clone()];
        let id = crate::crypto::envelope_id(&p.leaf, &p.signature, proof);
        Envelope {
            bytes: Arc::new(p.bytes),
            header: p.header,
            header_at: p.header_at,
            body_at: p.body_at,
            proof_at: p.proof_at,
            signature: p.signature,
            signed: p.root,
            id,
        }
    }

    /// Parses an envelope's structure and computes its id and the digest its
    /// signature must cover (the signature itself is checked by
    /// [`crate::crypto::verify_envelope`] or a [`crate::crypto::Verifier`]).
    pub fn decode(bytes: &[u8]) -> Result<Envelope, WireError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(WireError::TooLarge {
                len: bytes.len(),
                max: MAX_ENVELOPE,
            });
        }
        let mut d = Decoder::new(bytes);
        let batched = match d.array()? {
            Some(3) => false,
            Some(4) => true,
            _ => {
                return Err(WireError::Malformed(
                    "an envelope is an array of 3 or 4".into(),
                ));
            }
        };
        let header_at = byte_range(&mut d)?;
        let header_bytes = &bytes[header_at.clone()];
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
        let body_at = byte_range(&mut d)?;
        let signature: [u8; 64] = d
            .bytes()?
            .try_into()
            .map_err(|_| WireError::Malformed("signature must be 64 bytes".into()))?;
        let proof_at = if batched {
            byte_range(&mut d)?
        } else {
            d.position()..d.position()
        };
        if d.position() != bytes.len() {
            return Err(WireError::Malformed("trailing bytes after envelope".into()));
        }
        // One envelope, one encoding: every length in its shortest form
        // (otherwise a re-framed copy would pass for a second envelope).
        let canonical = 1
            + cbor_head_len(header_at.len())
            + header_at.len()
            + cbor_head_len(body_at.len())
            + body_at.len()
            + cbor_head_len(64)
            + 64
            + if batched {
                cbor_head_len(proof_at.len()) + proof_at.len()
            } else {
                0
            };
        if canonical != bytes.len() {
            return Err(WireError::Malformed(
                "envelope lengths are not in their shortest form".into(),
            ));
        }
        let leaf = crate::crypto::leaf_digest(header_bytes, &bytes[body_at.clone()]);
        let proof = &bytes[proof_at.clone()];
        let signed = if batched {
            proof_root(&leaf, proof)?
        } else {
            leaf
        };
        let id = crate::crypto::envelope_id(&leaf, &signature, proof);
        Ok(Envelope {
            bytes: Arc::new(bytes.to_vec()),
            header,
            header_at,
            body_at,
            proof_at,
            signature,
            signed,
            id,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Shares the encoded bytes without copying.
    pub fn shared_bytes(&self) -> Arc<Vec<u8>> {
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
    /// The Merkle proof of a batch envelope (empty for one signed alone):
    /// direction bits (u16 little-endian) then 32-byte sibling digests.
    pub fn proof(&self) -> &[u8] {
        &self.bytes[self.proof_at.clone()]
    }
    /// True for one envelope of a batch signed once over a Merkle root.
    pub fn is_batched(&self) -> bool {
        !self.proof_at.is_empty()
    }
    /// The 32-byte digest the author's signature covers: the envelope's
    /// leaf digest, or the root its proof leads to.
    pub fn signed_digest(&self) -> &[u8; 32] {
        &self.signed
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

/// The root a batch proof leads to from `leaf`. The proof is canonical:
/// 1 to [`MAX_PROOF_DEPTH`] siblings and no direction bit beyond them.
fn proof_root(leaf: &[u8; 32], proof: &[u8]) -> Result<[u8; 32], WireError> {
    let bad = |m: &str| Err(WireError::Malformed(m.into()));
    let Some((dirs, siblings)) = proof.split_first_chunk::<2>() else {
        return bad("batch proof too short");
    };
    if siblings.is_empty() || siblings.len() % 32 != 0 {
        return bad("batch proof must hold 1 or more 32-byte siblings");
    }
    let depth = siblings.len() / 32;
    if depth > MAX_PROOF_DEPTH {
        return bad("batch proof too deep");
    }
    let dirs = u16::from_le_bytes(*dirs);
    if depth < 16 && dirs >> depth != 0 {
        return bad("batch proof has direction bits beyond its depth");
    }
    let mut node = *leaf;
    for (k, sibling) in siblings.chunks_exact(32).enumerate() {
        let sibling: &[u8; 32] = sibling
            .try_into()
            .map_err(|_| WireError::Malformed("batch proof sibling".into()))?;
        node = if dirs >> k & 1 == 1 {
            crate::crypto::node_digest(sibling, &node)
        } else {
            crate::crypto::node_digest(&node, sibling)
        };
    }
    Ok(node)
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

/// Relay → client. (Decoded by hand below, as the derive would, but in
/// less code: see [`array_fields`].)
#[derive(Debug, Clone, PartialEq, Eq, Encode)]
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
#[derive(Debug, Clone, PartialEq, Eq, Encode)]
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
        /// The sender has a direct link for this document and gets live
        /// changes through the mesh of direct links (protocol.md §5.3).
        /// Left out when false, so older peers' frames are unchanged.
        #[n(3)]
        #[cbor(skip_if = "is_false")]
        meshed: bool,
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
    /// Who is here: the sender's presence state (app bytes, e.g. a name
    /// and a colour) sealed under the document's presence key, signed by
    /// `from`; never stored. `seq` grows with every message of the sender
    /// (older ones are dropped); an empty state means "gone".
    #[n(3)]
    Presence {
        #[n(0)]
        from: PeerId,
        #[n(1)]
        seq: u64,
        /// `nonce ‖ AES-256-GCM(presence key, state, aad = RoomId)`.
        #[n(2)]
        sealed: ByteVec,
        /// Ed25519 by `from` over `crypto::presence_digest`.
        #[n(3)]
        signature: ByteVec,
    },
    /// Signaling for a direct link (WebRTC offer, answer or ICE candidate:
    /// host-defined bytes) from `from` to `to`, sent as a directed relay
    /// `Send`; never stored. `seq` as in `Presence` (an incarnation in the
    /// high 32 bits, a counter below).
    #[n(4)]
    Signal {
        #[n(0)]
        from: PeerId,
        #[n(1)]
        to: PeerId,
        #[n(2)]
        seq: u64,
        #[n(3)]
        payload: ByteVec,
        /// Ed25519 by `from` over `crypto::signal_digest`.
        #[n(4)]
        signature: ByteVec,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The largest signaling payload (an SDP offer with its candidates is a
/// few KiB).
pub const MAX_SIGNAL: usize = 16 * 1024;

// ---- hand-written decoders -------------------------------------------
//
// minicbor's derived decoder of an enum repeats every field's decoding
// twice (for definite and indefinite arrays) in every variant; for the two
// largest enums that was 14 KB of the browser's .wasm (8 KB now). These
// decode exactly what the derived code accepted (`[variant, [fields…]]`,
// fields by position, definite or indefinite arrays, unknown trailing
// fields skipped) with the same errors, through one shared loop. `Encode`
// stays derived. (Doing the same for the smaller `EnvelopeHeader` and
// `DirectFrame` made the gzipped .wasm 200 bytes larger.)

type DecodeResult<T> = Result<T, minicbor::decode::Error>;

/// `[variant, …]`: the start of an enum as minicbor derives it. Returns the
/// variant and the positions the derived code reports errors at.
fn enum_start(d: &mut Decoder<'_>) -> DecodeResult<(i64, usize, usize)> {
    let at = d.position();
    if Some(2) != d.array()? {
        return Err(minicbor::decode::Error::message("expected enum (2-element array)").at(at));
    }
    let variant_at = d.position();
    Ok((d.i64()?, at, variant_at))
}

/// Calls `field(d, i)` for element `i` of a CBOR array of fields, definite
/// or indefinite; `field` decodes the ones it knows and skips the others.
fn array_fields<'b>(
    d: &mut Decoder<'b>,
    field: &mut dyn FnMut(&mut Decoder<'b>, u64) -> DecodeResult<()>,
) -> DecodeResult<()> {
    match d.array()? {
        Some(len) => {
            for i in 0..len {
                field(d, i)?;
            }
        }
        None => {
            let mut i = 0;
            while d.datatype()? != minicbor::data::Type::Break {
                field(d, i)?;
                i += 1;
            }
            d.skip()?;
        }
    }
    Ok(())
}

/// A field that must be present (`what`: `Enum::Variant::field`).
fn required<T>(v: Option<T>, index: i64, what: &'static str, at: usize) -> DecodeResult<T> {
    v.ok_or_else(|| {
        minicbor::decode::Error::missing_value(index)
            .with_message(what)
            .at(at)
    })
}

fn unknown_variant<T>(n: i64, at: usize) -> DecodeResult<T> {
    Err(minicbor::decode::Error::unknown_variant(n).at(at))
}

impl<'b, C> Decode<'b, C> for RelayEvent {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> DecodeResult<Self> {
        let (variant, at, variant_at) = enum_start(d)?;
        if !(0..=5).contains(&variant) {
            return unknown_variant(variant, variant_at);
        }
        // Joined { room, you, peers } · PeerJoined / PeerLeft { room, peer }
        // · Message { room, from, payload } · Error { code, message }
        // · Pong { nonce }
        let (mut room, mut peer, mut peers, mut payload) = (None, None, None, None);
        let (mut code, mut message, mut nonce) = (None, None, None);
        array_fields(d, &mut |d, i| {
            match (variant, i) {
                (0..=3, 0) => room = Some(RoomId::decode(d, ctx)?),
                (0..=3, 1) => peer = Some(PeerTag::decode(d, ctx)?),
                (0, 2) => peers = Some(Vec::<PeerTag>::decode(d, ctx)?),
                (3, 2) => payload = Some(ByteVec::decode(d, ctx)?),
                (4, 0) => code = Some(u16::decode(d, ctx)?),
                (4, 1) => message = Some(String::decode(d, ctx)?),
                (5, 0) => nonce = Some(u64::decode(d, ctx)?),
                _ => d.skip()?,
            }
            Ok(())
        })?;
        Ok(match variant {
            0 => RelayEvent::Joined {
                room: required(room, 0, "RelayEvent::Joined::room", at)?,
                you: required(peer, 1, "RelayEvent::Joined::you", at)?,
                peers: required(peers, 2, "RelayEvent::Joined::peers", at)?,
            },
            1 => RelayEvent::PeerJoined {
                room: required(room, 0, "RelayEvent::PeerJoined::room", at)?,
                peer: required(peer, 1, "RelayEvent::PeerJoined::peer", at)?,
            },
            2 => RelayEvent::PeerLeft {
                room: required(room, 0, "RelayEvent::PeerLeft::room", at)?,
                peer: required(peer, 1, "RelayEvent::PeerLeft::peer", at)?,
            },
            3 => RelayEvent::Message {
                room: required(room, 0, "RelayEvent::Message::room", at)?,
                from: required(peer, 1, "RelayEvent::Message::from", at)?,
                payload: required(payload, 2, "RelayEvent::Message::payload", at)?,
            },
            4 => RelayEvent::Error {
                code: required(code, 0, "RelayEvent::Error::code", at)?,
                message: required(message, 1, "RelayEvent::Error::message", at)?,
            },
            _ => RelayEvent::Pong {
                nonce: required(nonce, 0, "RelayEvent::Pong::nonce", at)?,
            },
        })
    }
}

impl<'b, C> Decode<'b, C> for SyncMessage {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> DecodeResult<Self> {
        let (variant, at, variant_at) = enum_start(d)?;
        if !(0..=4).contains(&variant) {
            return unknown_variant(variant, variant_at);
        }
        // Have { from, vector, pinning } · Envelopes { batch, envelopes }
        // · Ack { batch } · Presence { from, seq, sealed, signature }
        // · Signal { from, to, seq, payload, signature }
        let (mut from, mut vector, mut pinning, mut to) = (None, None, None, None);
        let mut meshed = false;
        let (mut number, mut envelopes, mut sealed, mut signature) = (None, None, None, None);
        array_fields(d, &mut |d, i| {
            match (variant, i) {
                (0 | 3 | 4, 0) => from = Some(PeerId::decode(d, ctx)?),
                (0, 1) => vector = Some(VersionVector::decode(d, ctx)?),
                (0, 2) => pinning = Some(bool::decode(d, ctx)?),
                (0, 3) => meshed = bool::decode(d, ctx)?,
                (4, 1) => to = Some(PeerId::decode(d, ctx)?),
                (1 | 2, 0) | (3, 1) | (4, 2) => number = Some(u64::decode(d, ctx)?),
                (1, 1) => envelopes = Some(Vec::<ByteVec>::decode(d, ctx)?),
                (3, 2) | (4, 3) => sealed = Some(ByteVec::decode(d, ctx)?),
                (3, 3) | (4, 4) => signature = Some(ByteVec::decode(d, ctx)?),
                _ => d.skip()?,
            }
            Ok(())
        })?;
        Ok(match variant {
            0 => SyncMessage::Have {
                from: required(from, 0, "SyncMessage::Have::from", at)?,
                vector: required(vector, 1, "SyncMessage::Have::vector", at)?,
                pinning: required(pinning, 2, "SyncMessage::Have::pinning", at)?,
                meshed,
            },
            1 => SyncMessage::Envelopes {
                batch: required(number, 0, "SyncMessage::Envelopes::batch", at)?,
                envelopes: required(envelopes, 1, "SyncMessage::Envelopes::envelopes", at)?,
            },
            2 => SyncMessage::Ack {
                batch: required(number, 0, "SyncMessage::Ack::batch", at)?,
            },
            3 => SyncMessage::Presence {
                from: required(from, 0, "SyncMessage::Presence::from", at)?,
                seq: required(number, 1, "SyncMessage::Presence::seq", at)?,
                sealed: required(sealed, 2, "SyncMessage::Presence::sealed", at)?,
                signature: required(signature, 3, "SyncMessage::Presence::signature", at)?,
            },
            _ => SyncMessage::Signal {
                from: required(from, 0, "SyncMessage::Signal::from", at)?,
                to: required(to, 1, "SyncMessage::Signal::to", at)?,
                seq: required(number, 2, "SyncMessage::Signal::seq", at)?,
                payload: required(sealed, 3, "SyncMessage::Signal::payload", at)?,
                signature: required(signature, 4, "SyncMessage::Signal::signature", at)?,
            },
        })
    }
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
            SyncMessage::Signal { payload, .. } if payload.len() > MAX_SIGNAL => {
                Err(WireError::TooLarge {
                    len: payload.len(),
                    max: MAX_SIGNAL,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_batch() -> Vec<Envelope> {
        use crate::crypto::{DocKey, DocKeys, Identity, Rng};
        let mut rng = Rng::from_seed([1; 32]);
        let id = Identity::generate(&mut rng);
        let mut keys = DocKeys::new(crate::id::DocId([2; 16]), DocKey::from_bytes([3; 32]));
        keys.seal_batch(&id, EnvelopeKind::Change, 1, &[b"a", b"b", b"c"], &mut rng)
            .unwrap()
    }

    /// Rebuilds an envelope from parts with the given array length and
    /// (possibly longer than needed) byte-string heads.
    fn reframe(parts: &[&[u8]], long_heads: bool) -> Vec<u8> {
        let mut out = alloc::vec![0x80 | parts.len() as u8];
        for p in parts {
            if long_heads {
                out.push(0x59);
                out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            } else {
                push_bytes_head(&mut out, p.len());
            }
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn envelope_encodings_are_canonical() {
        let envs = sample_batch();
        let e = &envs[2];
        let parts = [e.header_bytes(), e.body(), e.signature(), e.proof()];
        assert_eq!(reframe(&parts, false), e.bytes());
        assert_eq!(
            Envelope::decode(&reframe(&parts, false)).unwrap().id(),
            e.id()
        );
        // Longer length heads: the same parts, another byte string: refused.
        assert!(matches!(
            Envelope::decode(&reframe(&parts, true)),
            Err(WireError::Malformed(_))
        ));
        // A batch envelope without its proof no longer verifies as a single;
        // an empty proof is not a form of a single one.
        let no_proof = Envelope::decode(&reframe(&parts[..3], false)).unwrap();
        assert_ne!(no_proof.signed_digest(), e.signed_digest());
        assert!(Envelope::decode(&reframe(&[parts[0], parts[1], parts[2], &[]], false)).is_err());
        // Direction bits beyond the proof's depth, ragged or too deep proofs.
        let mut high = e.proof().to_vec();
        high[1] |= 0x80;
        let mut ragged = e.proof().to_vec();
        ragged.push(0);
        let deep = alloc::vec![0u8; 2 + 32 * (MAX_PROOF_DEPTH + 1)];
        for proof in [&high[..], &ragged, &deep, &e.proof()[..2], &[1][..]] {
            let bytes = reframe(&[parts[0], parts[1], parts[2], proof], false);
            assert!(
                matches!(Envelope::decode(&bytes), Err(WireError::Malformed(_))),
                "{proof:?}"
            );
        }
    }

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
        // Have with an extra field 4 (a future addition) still decodes.
        let mut e = Encoder::new(Vec::new());
        e.array(2).unwrap().u8(WIRE_VERSION).unwrap();
        e.array(2).unwrap().u32(0).unwrap(); // variant Have
        e.array(5).unwrap();
        e.bytes(&[5; 32]).unwrap();
        e.map(0).unwrap();
        e.bool(true).unwrap();
        e.bool(true).unwrap();
        e.str("future").unwrap();
        let bytes = e.into_writer();
        let msg: SyncMessage = decode_frame(&bytes, MAX_FRAME).unwrap();
        assert_eq!(
            msg,
            SyncMessage::Have {
                from: PeerId([5; 32]),
                vector: VersionVector::default(),
                pinning: true,
                meshed: true,
            }
        );
    }

    fn every_event_and_sync_message() -> (Vec<RelayEvent>, Vec<SyncMessage>) {
        let mut vector = VersionVector::default();
        vector.0.insert(PeerId([4; 32]), 9);
        let events = alloc::vec![
            RelayEvent::Joined {
                room: RoomId([1; 32]),
                you: PeerTag(3),
                peers: alloc::vec![PeerTag(4), PeerTag(5)],
            },
            RelayEvent::PeerJoined {
                room: RoomId([1; 32]),
                peer: PeerTag(6),
            },
            RelayEvent::PeerLeft {
                room: RoomId([2; 32]),
                peer: PeerTag(7),
            },
            RelayEvent::Message {
                room: RoomId([1; 32]),
                from: PeerTag(8),
                payload: alloc::vec![1, 2, 3].into(),
            },
            RelayEvent::Error {
                code: 429,
                message: "slow down".into(),
            },
            RelayEvent::Pong { nonce: u64::MAX },
        ];
        let messages = alloc::vec![
            SyncMessage::Have {
                from: PeerId([5; 32]),
                vector: vector.clone(),
                pinning: false,
                meshed: false,
            },
            SyncMessage::Have {
                from: PeerId([5; 32]),
                vector,
                pinning: true,
                meshed: true,
            },
            SyncMessage::Envelopes {
                batch: 2,
                envelopes: alloc::vec![alloc::vec![9; 3].into(), Vec::new().into()],
            },
            SyncMessage::Ack { batch: 7 },
            SyncMessage::Presence {
                from: PeerId([6; 32]),
                seq: 3,
                sealed: alloc::vec![1; 40].into(),
                signature: alloc::vec![2; 64].into(),
            },
            SyncMessage::Signal {
                from: PeerId([6; 32]),
                to: PeerId([7; 32]),
                seq: 4,
                payload: alloc::vec![3; 30].into(),
                signature: alloc::vec![2; 64].into(),
            },
        ];
        (events, messages)
    }

    /// The same message with its field array made indefinite (`0x9f …
    /// 0xff`) and, when `extra`, one more field a later version added.
    fn indefinite<T: Encode<()>>(msg: &T, extra: bool) -> Vec<u8> {
        let plain = minicbor::to_vec(msg).unwrap();
        // [variant, [fields…]]: 0x82, one-byte variant, then the array head.
        assert_eq!(plain[0], 0x82);
        let head = plain[2];
        assert!((0x80..0x98).contains(&head), "short array head");
        let mut out = plain[..2].to_vec();
        out.push(0x9f);
        out.extend_from_slice(&plain[3..]);
        if extra {
            out.extend_from_slice(&[0x63, b'n', b'e', b'w']);
        }
        out.push(0xff);
        out
    }

    /// The hand-written decoders accept what the derived ones did: every
    /// variant, definite or indefinite field arrays, unknown trailing
    /// fields; and refuse missing fields and unknown variants.
    #[test]
    fn hand_written_decoders_match_the_derived_format() {
        let (events, messages) = every_event_and_sync_message();
        for e in &events {
            let bytes = encode_frame(e);
            assert_eq!(&decode_frame::<RelayEvent>(&bytes, MAX_FRAME).unwrap(), e);
            for extra in [false, true] {
                let bytes = indefinite(e, extra);
                assert_eq!(&minicbor::decode::<RelayEvent>(&bytes).unwrap(), e);
            }
        }
        for m in &messages {
            let bytes = encode_frame(m);
            assert_eq!(&decode_frame::<SyncMessage>(&bytes, MAX_FRAME).unwrap(), m);
            for extra in [false, true] {
                // `meshed: false` is left out, so a later field would sit
                // at its place: an encoder adding one writes `meshed`.
                if extra && matches!(m, SyncMessage::Have { meshed: false, .. }) {
                    continue;
                }
                let bytes = indefinite(m, extra);
                assert_eq!(&minicbor::decode::<SyncMessage>(&bytes).unwrap(), m);
            }
        }
        // The header (a map) and a direct frame (derived decoders),
        // definite and indefinite.
        let header = sample_batch()[0].header().clone();
        let plain = minicbor::to_vec(&header).unwrap();
        assert_eq!(minicbor::decode::<EnvelopeHeader>(&plain).unwrap(), header);
        assert_eq!(plain[0], 0xa7, "a map of 7 fields");
        let mut open = alloc::vec![0xbf];
        open.extend_from_slice(&plain[1..]);
        open.extend_from_slice(&[0x18, 0x63, 0x60, 0xff]); // key 99: "" (skipped)
        assert_eq!(minicbor::decode::<EnvelopeHeader>(&open).unwrap(), header);
        let mut short = alloc::vec![0xa6];
        short.extend_from_slice(&plain[1..plain.len() - 14]); // no nonce (key 6)
        let err = minicbor::decode::<EnvelopeHeader>(&short).unwrap_err();
        assert!(err.is_missing_value(), "{err}");
        let frame = DirectFrame {
            room: RoomId([3; 32]),
            sealed: alloc::vec![4; 5].into(),
        };
        let plain = minicbor::to_vec(&frame).unwrap();
        assert_eq!(minicbor::decode::<DirectFrame>(&plain).unwrap(), frame);
        let mut open = alloc::vec![0x9f];
        open.extend_from_slice(&plain[1..]);
        open.push(0xff);
        assert_eq!(minicbor::decode::<DirectFrame>(&open).unwrap(), frame);
        // A field missing: Message without its payload.
        let mut e = Encoder::new(Vec::new());
        e.array(2).unwrap().u32(3).unwrap();
        e.array(2).unwrap().bytes(&[1; 32]).unwrap().u64(8).unwrap();
        let err = minicbor::decode::<RelayEvent>(&e.into_writer()).unwrap_err();
        assert!(err.is_missing_value(), "{err}");
        // Unknown variants of either enum.
        let err = minicbor::decode::<RelayEvent>(&[0x82, 0x06, 0x80]).unwrap_err();
        assert!(err.is_unknown_variant(), "{err}");
        let err = minicbor::decode::<SyncMessage>(&[0x82, 0x05, 0x80]).unwrap_err();
        assert!(err.is_unknown_variant(), "{err}");
        // Not a two-element array.
        assert!(minicbor::decode::<SyncMessage>(&[0x81, 0x00]).is_err());
        // A field of the wrong type.
        let err = minicbor::decode::<SyncMessage>(&[0x82, 0x02, 0x81, 0x60]).unwrap_err();
        assert!(err.is_type_mismatch(), "{err}");
    }
}
