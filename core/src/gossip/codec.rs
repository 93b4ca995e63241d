//! The sealed, signed codec around the gossip state machine.
//!
//! On the network a [`Frame`] travels as
//!
//! ```text
//! sealed    = nonce(12) ‖ AES-256-GCM(transport key, encode_frame(outer), aad = RoomId)
//! outer     = [16, [signed: bstr, signature: bstr .size 64]]
//! signed    = the encoded Frame [from, to, session, seq, echo, message]
//! signature = Ed25519(from, BLAKE3-derive-key("mycel gossip frame v1", RoomId ‖ signed))
//! ```
//!
//! The transport key is the document's (`crypto::transport_cipher`), as
//! for sync messages: the relay reads nothing, a blind pinning node can
//! take part. Variant 16 keeps gossip apart from `SyncMessage` (variants
//! 0-2) under the same key. The signature binds the frame to its sender
//! and to the swarm; `to`, `echo` and `seq` (checked by the state machine)
//! make a captured frame useless to replay.
//!
//! [`Codec`] is kept apart from the state machine so that the simulator
//! can run thousands of peers on decoded frames; [`SealedGossip`] glues
//! the two together for hosts.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use crate::aead::GcmKey;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use minicbor::bytes::ByteVec;
use minicbor::{Decode, Encode};

use super::message::Frame;
use super::{Gossip, GossipConfig, GossipError, Input, Output};
use crate::crypto::{Identity, Rng, open_transport, seal_transport, transport_cipher};
use crate::id::{DocId, PeerId, RoomId};
use crate::time::Timestamp;
use crate::wire::{FrameLimits, MAX_FRAME, WireError, decode_frame, encode_frame};

/// The plaintext of a sealed gossip frame: variant 16, so it never parses
/// as a `SyncMessage` sealed under the same key (and vice versa).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
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

impl FrameLimits for Outer {}

/// The digest a sender signs.
pub fn signature_digest(room: &RoomId, signed: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("mycel gossip frame v1");
    h.update(room.as_bytes());
    h.update(signed);
    *h.finalize().as_bytes()
}

/// Why the codec refused bytes (counted in [`CodecStats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodecStats {
    pub sealed: u64,
    pub opened: u64,
    pub oversized: u64,
    pub unsealed: u64,
    pub malformed: u64,
    pub forged: u64,
    pub misdirected: u64,
}

/// Seals and signs outgoing frames; opens and verifies incoming ones.
pub struct Codec {
    signing: SigningKey,
    me: PeerId,
    room: RoomId,
    cipher: GcmKey,
    max_frame: usize,
    keys: BTreeMap<PeerId, VerifyingKey>,
    stats: CodecStats,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("me", &self.me)
            .field("room", &self.room)
            .finish_non_exhaustive()
    }
}

impl Codec {
    /// Most verifying keys kept decompressed (a flood of made-up senders
    /// only resets the cache).
    const MAX_KEYS: usize = 4096;

    /// A codec for the swarm of `doc` (room `room`), signing as `identity`.
    pub fn new(identity: &Identity, doc: &DocId, room: &RoomId) -> Codec {
        Codec {
            signing: SigningKey::from_bytes(&identity.secret()),
            me: identity.peer_id(),
            room: *room,
            cipher: transport_cipher(doc, room),
            max_frame: MAX_FRAME,
            keys: BTreeMap::new(),
            stats: CodecStats::default(),
        }
    }

    /// Largest sealed frame accepted (default: the 1 MiB frame limit).
    pub fn set_max_frame(&mut self, max: usize) {
        self.max_frame = max;
    }

    pub fn stats(&self) -> &CodecStats {
        &self.stats
    }

    /// Signs and seals one frame.
    pub fn seal(&mut self, frame: &Frame, rng: &mut Rng) -> Vec<u8> {
        let signed = frame.to_bytes();
        let signature = self
            .signing
            .sign(&signature_digest(&self.room, &signed))
            .to_bytes();
        let plain = encode_frame(&Outer::Signed {
            signed: ByteVec::from(signed),
            signature,
        });
        self.stats.sealed += 1;
        seal_transport(&self.cipher, &self.room, &plain, rng)
    }

    /// Opens, decodes and verifies one sealed frame addressed to this peer.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Frame, GossipError> {
        let r = self.open_inner(sealed);
        match &r {
            Ok(_) => self.stats.opened += 1,
            Err(GossipError::Oversized { .. }) => self.stats.oversized += 1,
            Err(GossipError::Unsealed) => self.stats.unsealed += 1,
            Err(GossipError::Malformed(_)) => self.stats.malformed += 1,
            Err(GossipError::Misdirected) => self.stats.misdirected += 1,
            Err(_) => self.stats.forged += 1,
        }
        r
    }

    fn open_inner(&mut self, sealed: &[u8]) -> Result<Frame, GossipError> {
        if sealed.len() > self.max_frame {
            return Err(GossipError::Oversized {
                len: sealed.len(),
                max: self.max_frame,
            });
        }
        let plain =
            open_transport(&self.cipher, &self.room, sealed).map_err(|_| GossipError::Unsealed)?;
        self.verify_inner(&plain)
    }

    /// Decodes and verifies a frame whose transport seal the host already
    /// opened (a node opens every sealed payload once, then dispatches:
    /// see [`is_gossip`]).
    pub fn verify(&mut self, plain: &[u8]) -> Result<Frame, GossipError> {
        let r = self.verify_inner(plain);
        match &r {
            Ok(_) => self.stats.opened += 1,
            Err(GossipError::Malformed(_)) => self.stats.malformed += 1,
            Err(GossipError::Misdirected) => self.stats.misdirected += 1,
            Err(_) => self.stats.forged += 1,
        }
        r
    }

    fn verify_inner(&mut self, plain: &[u8]) -> Result<Frame, GossipError> {
        let Outer::Signed { signed, signature } =
            decode_frame::<Outer>(plain, self.max_frame).map_err(GossipError::Malformed)?;
        let frame = Frame::decode(&signed).map_err(GossipError::Malformed)?;
        if frame.to != self.me {
            return Err(GossipError::Misdirected);
        }
        if frame.from == self.me {
            return Err(GossipError::OwnFrame);
        }
        let key = self.key(&frame.from)?;
        key.verify_strict(
            &signature_digest(&self.room, &signed),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| GossipError::Forged)?;
        Ok(frame)
    }

    fn key(&mut self, peer: &PeerId) -> Result<VerifyingKey, GossipError> {
        if let Some(k) = self.keys.get(peer) {
            return Ok(*k);
        }
        let k = VerifyingKey::from_bytes(peer.as_bytes()).map_err(|_| GossipError::Forged)?;
        if self.keys.len() >= Self::MAX_KEYS {
            self.keys.clear();
        }
        self.keys.insert(*peer, k);
        Ok(k)
    }
}

/// Whether an opened transport plaintext is a gossip frame (`[1, [16,
/// …]]`) rather than a sync message: both travel under the same key.
pub fn is_gossip(plain: &[u8]) -> bool {
    let mut d = minicbor::Decoder::new(plain);
    d.array().is_ok() && d.u64().is_ok() && d.array().is_ok() && d.u64().is_ok_and(|v| v == 16)
}

/// What [`SealedGossip`] asks the host to do: like [`Output`], with frames
/// as sealed bytes.
#[derive(Debug, Clone)]
pub enum SealedOutput {
    /// Send these bytes to `to` (relay `Send` to its tag, or its direct link).
    Send {
        to: PeerId,
        kind: super::Kind,
        bytes: Vec<u8>,
    },
    /// Everything else, as the state machine said it.
    Other(Output),
}

/// The gossip state machine behind its sealed, signed codec: what a host
/// drives. Bytes in, bytes out.
#[derive(Debug)]
pub struct SealedGossip {
    gossip: Gossip,
    codec: Codec,
    rng: Rng,
}

impl SealedGossip {
    /// `seed` must be fresh randomness from the host at every start.
    pub fn new(
        identity: &Identity,
        doc: &DocId,
        room: &RoomId,
        config: GossipConfig,
        seed: [u8; 32],
    ) -> SealedGossip {
        let mut rng = Rng::from_seed(seed);
        let gossip_seed = rng.array();
        SealedGossip {
            gossip: Gossip::new(identity.peer_id(), config, gossip_seed),
            codec: Codec::new(identity, doc, room),
            rng,
        }
    }

    pub fn gossip(&self) -> &Gossip {
        &self.gossip
    }
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Bytes from the network (any sender). Refused bytes are counted and
    /// returned as an error; nothing else happens.
    pub fn receive(&mut self, now: Timestamp, bytes: &[u8]) -> Result<(), GossipError> {
        let frame = self.codec.open(bytes)?;
        self.gossip.handle(now, Input::Received { frame })
    }

    /// A frame whose transport seal the host already opened.
    pub fn receive_opened(&mut self, now: Timestamp, plain: &[u8]) -> Result<(), GossipError> {
        let frame = self.codec.verify(plain)?;
        self.gossip.handle(now, Input::Received { frame })
    }

    /// Any other input.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Result<(), GossipError> {
        if let Input::Received { frame } = input {
            // A host hands frames over as bytes: re-seal nothing, refuse.
            let _ = frame;
            return Err(GossipError::Malformed(WireError::Malformed(
                "SealedGossip takes received frames as bytes (receive)".into(),
            )));
        }
        self.gossip.handle(now, input)
    }

    pub fn poll(&mut self) -> Option<SealedOutput> {
        Some(match self.gossip.poll()? {
            Output::Send { to, frame } => SealedOutput::Send {
                to,
                kind: frame.msg.kind(),
                bytes: self.codec.seal(&frame, &mut self.rng),
            },
            other => SealedOutput::Other(other),
        })
    }
}
