//! Keys, key derivation, and sealing/opening of envelopes and transport frames.
//!
//! - An envelope body is AES-256-GCM under a per-(author, epoch) subkey,
//!   `HKDF-SHA256(ikm = DocKey, info = "mycel envelope key v1" || epoch || author)`,
//!   with the encoded header as associated data, and a 96-bit random nonce.
//! - Every envelope has a *leaf digest* `BLAKE3-derive-key("mycel envelope
//!   leaf v1", body || header || len(header))`. An envelope sealed
//!   alone carries the author's Ed25519 signature over its leaf digest. A
//!   batch ([`DocKeys::seal_batch`]) is signed once: over the root of a
//!   Merkle tree of its leaf digests (inner nodes `BLAKE3-derive-key("mycel
//!   envelope node v1", left || right)`), and each envelope carries the root's
//!   signature and its own path to the root, so each one still verifies on
//!   its own. Hashing first keeps the signature cost flat for large bodies
//!   and lets a blind node verify without the key; the [`Verifier`] checks
//!   a batch's signature once and then only recomputes roots.
//! - An envelope's id is `BLAKE3-derive-key("mycel envelope id v1", leaf ||
//!   signature || proof)`: the one pass over the body that the leaf digest
//!   needs also names the envelope.
//! - Sync frames between peers are sealed with a transport key derived from
//!   the document id and room id: the relay (which knows only the room id)
//!   cannot read them, while a blind pinning node (which has the pin link)
//!   can exchange version vectors without the document key.
//!
//! Randomness comes from the caller through [`Rng`].

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::aead::GcmKey;
use crate::id::{DocId, EnvelopeId, PeerId, RoomId};
use crate::wire::{
    Envelope, EnvelopeHeader, EnvelopeKind, SealedParts, WIRE_VERSION, cbor_head_len,
    push_bytes_head,
};

/// Errors of signing, verifying, sealing and opening.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The stated author's public key is not a valid Ed25519 point.
    InvalidAuthorKey,
    /// The signature does not match the stated author: forged or damaged.
    BadSignature,
    /// The envelope belongs to another room than this document's.
    WrongRoom,
    /// Authenticated decryption failed: the document key is wrong, or the
    /// ciphertext was damaged after signing.
    WrongKey,
    /// No key is held for this key epoch.
    UnknownEpoch(u32),
    /// The plaintext is larger than an envelope may carry.
    TooLarge { len: usize, max: usize },
    /// A sealed transport frame could not be opened.
    TransportOpen,
    /// More changes than one batch may seal.
    BatchTooLarge { len: usize, max: usize },
    /// The batch's seqs would pass the largest seq.
    SeqOverflow,
    /// A rebuilt envelope does not decode (its trailer is not one).
    Malformed,
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::InvalidAuthorKey => f.write_str("the author's public key is invalid"),
            CryptoError::Malformed => {
                f.write_str("the rebuilt envelope is malformed (a damaged trailer)")
            }
            CryptoError::BadSignature => {
                f.write_str("the signature does not match the author: forged or damaged data")
            }
            CryptoError::WrongRoom => f.write_str("the envelope belongs to another document"),
            CryptoError::WrongKey => f.write_str(
                "the document key does not decrypt this document: the link's key is wrong",
            ),
            CryptoError::UnknownEpoch(e) => write!(f, "no document key is held for epoch {e}"),
            CryptoError::TooLarge { len, max } => {
                write!(
                    f,
                    "a change of {len} bytes is larger than the maximum of {max}"
                )
            }
            CryptoError::TransportOpen => {
                f.write_str("a sync frame could not be opened: wrong document or damaged frame")
            }
            CryptoError::BatchTooLarge { len, max } => {
                write!(
                    f,
                    "a batch of {len} changes is larger than the maximum of {max}"
                )
            }
            CryptoError::SeqOverflow => f.write_str("the batch's seqs overflow"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for CryptoError {}

/// A document's 32-byte symmetric key. Its `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct DocKey([u8; 32]);

impl DocKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DocKey(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// A fresh key from the caller's randomness.
    pub fn generate(rng: &mut Rng) -> Self {
        DocKey(rng.array())
    }
}

impl fmt::Debug for DocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DocKey(..)")
    }
}

/// The room a document's peers meet in: `BLAKE3-derive-key("mycel room v1", key || doc)`.
pub fn room_id(key: &DocKey, doc: &DocId) -> RoomId {
    let mut h = blake3::Hasher::new_derive_key("mycel room v1");
    h.update(&key.0);
    h.update(&doc.0);
    RoomId(*h.finalize().as_bytes())
}

/// A replica's signing identity. `Debug` shows only the public part.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    peer: PeerId,
}

impl Identity {
    /// From a 32-byte Ed25519 secret (as stored on disk).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&secret);
        let peer = PeerId(signing.verifying_key().to_bytes());
        Identity { signing, peer }
    }
    pub fn generate(rng: &mut Rng) -> Self {
        Self::from_secret(rng.array())
    }
    pub fn secret(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }
    pub(crate) fn sign(&self, digest: &[u8; 32]) -> [u8; 64] {
        self.signing.sign(digest).to_bytes()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({:?})", self.peer)
    }
}

/// Cryptographically strong randomness from a host-provided seed (BLAKE3 in
/// XOF mode). Hosts seed it from the OS; tests seed it from their seed. A
/// seed must never be reused across runs of one identity: nonces come from it.
pub struct Rng(blake3::OutputReader);

impl Rng {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Rng(blake3::Hasher::new_keyed(&seed).finalize_xof())
    }
    pub fn fill(&mut self, out: &mut [u8]) {
        self.0.fill(out);
    }
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        self.fill(&mut out);
        out
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

impl fmt::Debug for Rng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Rng(..)")
    }
}

/// The largest plaintext one envelope carries (an Automerge change). It
/// leaves room for the header, tag and signature inside the default 1 MiB
/// frame limit.
pub const MAX_PLAINTEXT: usize = 768 * 1024;

/// Most envelopes [`DocKeys::seal_batch`] signs at once (a proof of at
/// most 12 levels).
pub const MAX_SEAL_BATCH: usize = 4096;

/// An envelope's leaf digest: `BLAKE3-derive-key("mycel envelope leaf v1",
/// body || header || len(header) as u32 LE)`. An envelope sealed alone is
/// signed over it directly. The body comes first so that it starts on a
/// BLAKE3 chunk boundary: hashed after the header it costs twice as much.
pub fn leaf_digest(header: &[u8], body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("mycel envelope leaf v1");
    h.update(body);
    h.update(header);
    h.update(&(header.len() as u32).to_le_bytes());
    *h.finalize().as_bytes()
}

/// An inner node of a batch's Merkle tree: `BLAKE3-derive-key("mycel
/// envelope node v1", left || right)`. Its own context keeps a node from
/// passing for a leaf (or a leaf's signature for a root's).
pub fn node_digest(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("mycel envelope node v1");
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// An envelope's id: `BLAKE3-derive-key("mycel envelope id v1", leaf ||
/// signature || proof)`, `proof` empty for an envelope sealed alone. With
/// the envelope's encoding held to one form, one id is one byte string.
pub fn envelope_id(leaf: &[u8; 32], signature: &[u8; 64], proof: &[u8]) -> EnvelopeId {
    let mut h = blake3::Hasher::new_derive_key("mycel envelope id v1");
    h.update(leaf);
    h.update(signature);
    h.update(proof);
    EnvelopeId(*h.finalize().as_bytes())
}

/// Checks the author's signature. Needs no document key: blind nodes call it.
pub fn verify_envelope(env: &Envelope) -> Result<(), CryptoError> {
    let key = VerifyingKey::from_bytes(env.header().author.as_bytes())
        .map_err(|_| CryptoError::InvalidAuthorKey)?;
    verify_with(&key, env)
}

fn verify_with(key: &VerifyingKey, env: &Envelope) -> Result<(), CryptoError> {
    let sig = Signature::from_bytes(env.signature());
    key.verify_strict(env.signed_digest(), &sig)
        .map_err(|_| CryptoError::BadSignature)
}

/// Verifies envelopes, keeping authors' decompressed public keys (point
/// decompression is a tenth of a verification, and a document has few
/// authors) and the batch roots it has verified: the other envelopes of a
/// batch then cost a few node hashes, not a signature check. A root is
/// remembered only after its signature verified, with that signature: an
/// envelope passes on the cache only with the same author, the same root
/// (recomputed from its own leaf and proof) and the same signature bytes.
/// Both caches are bounded: a flood of made-up authors or batches only
/// evicts.
#[derive(Default)]
pub struct Verifier {
    keys: BTreeMap<PeerId, VerifyingKey>,
    roots: BTreeMap<(PeerId, [u8; 32]), [u8; 64]>,
    roots_order: VecDeque<(PeerId, [u8; 32])>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Verifier({} keys, {} batch roots)",
            self.keys.len(),
            self.roots.len()
        )
    }
}

impl Verifier {
    const MAX_KEYS: usize = 4096;
    /// Batch roots remembered (oldest evicted first). A stream batch of
    /// 64 KiB holds envelopes of a few batches at most.
    pub const MAX_ROOTS: usize = 1024;

    pub fn verify(&mut self, env: &Envelope) -> Result<(), CryptoError> {
        let author = env.header().author;
        let root = *env.signed_digest();
        if env.is_batched() && self.roots.get(&(author, root)) == Some(env.signature()) {
            return Ok(());
        }
        let key = match self.keys.get(&author) {
            Some(k) => *k,
            None => {
                let k = VerifyingKey::from_bytes(author.as_bytes())
                    .map_err(|_| CryptoError::InvalidAuthorKey)?;
                if self.keys.len() >= Self::MAX_KEYS {
                    self.keys.clear();
                }
                self.keys.insert(author, k);
                k
            }
        };
        verify_with(&key, env)?;
        if env.is_batched() {
            if self.roots.len() >= Self::MAX_ROOTS
                && let Some(old) = self.roots_order.pop_front()
            {
                self.roots.remove(&old);
            }
            if self
                .roots
                .insert((author, root), *env.signature())
                .is_none()
            {
                self.roots_order.push_back((author, root));
            }
        }
        Ok(())
    }

    /// Batch roots currently remembered.
    pub fn cached_roots(&self) -> usize {
        self.roots.len()
    }
}

/// One envelope written up to its body, waiting for its signature.
struct Pending {
    bytes: Vec<u8>,
    header: EnvelopeHeader,
    header_at: core::ops::Range<usize>,
    body_at: core::ops::Range<usize>,
    leaf: [u8; 32],
}

impl Pending {
    fn finish(mut self, signature: [u8; 64], root: [u8; 32], proof: &[u8]) -> Envelope {
        push_bytes_head(&mut self.bytes, 64);
        self.bytes.extend_from_slice(&signature);
        let proof_at = if proof.is_empty() {
            self.bytes.len()..self.bytes.len()
        } else {
            push_bytes_head(&mut self.bytes, proof.len());
            let at = self.bytes.len();
            self.bytes.extend_from_slice(proof);
            at..self.bytes.len()
        };
        Envelope::from_sealed(SealedParts {
            bytes: self.bytes,
            header: self.header,
            header_at: self.header_at,
            body_at: self.body_at,
            proof_at,
            signature,
            leaf: self.leaf,
            root,
        })
    }
}

/// An envelope written up to its body: its bytes and where its header and
/// body are in them.
type Written = (Vec<u8>, core::ops::Range<usize>, core::ops::Range<usize>);

/// The levels of a batch's Merkle tree, leaves first, root last. An odd
/// node at the end of a level moves up unhashed.
fn merkle_levels(leaves: Vec<[u8; 32]>) -> Vec<Vec<[u8; 32]>> {
    let mut levels = alloc::vec![leaves];
    while let Some(last) = levels.last()
        && last.len() > 1
    {
        let next = last
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node_digest(l, r),
                [one] => *one,
                _ => [0; 32],
            })
            .collect();
        levels.push(next);
    }
    levels
}

/// Leaf `index`'s proof: direction bits (u16 LE; bit k set = the k-th
/// sibling is on the left) then the siblings, bottom up.
fn merkle_proof(levels: &[Vec<[u8; 32]>], index: usize) -> Vec<u8> {
    let mut dirs = 0u16;
    let mut siblings = Vec::new();
    let mut pos = index;
    for level in levels.iter().take(levels.len().saturating_sub(1)) {
        let other = pos ^ 1;
        if let Some(sibling) = level.get(other) {
            if pos & 1 == 1 {
                dirs |= 1 << (siblings.len() / 32);
            }
            siblings.extend_from_slice(sibling);
        }
        pos >>= 1;
    }
    let mut proof = Vec::with_capacity(2 + siblings.len());
    proof.extend_from_slice(&dirs.to_le_bytes());
    proof.extend_from_slice(&siblings);
    proof
}

/// The keys of one document: its key per epoch, and the AES-GCM ciphers
/// derived from them, cached per (author, epoch) because key expansion
/// costs more than sealing a keystroke; and a [`Verifier`] for
/// [`DocKeys::open`].
pub struct DocKeys {
    doc: DocId,
    room: RoomId,
    keys: BTreeMap<u32, DocKey>,
    ciphers: BTreeMap<(PeerId, u32), GcmKey>,
    transport: GcmKey,
    presence: GcmKey,
    verifier: Verifier,
}

impl fmt::Debug for DocKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocKeys")
            .field("doc", &self.doc)
            .field("epochs", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DocKeys {
    /// Keys for a document whose epoch-0 key is `key`.
    pub fn new(doc: DocId, key: DocKey) -> Self {
        let room = room_id(&key, &doc);
        let presence = presence_cipher(&key, &doc);
        let mut keys = BTreeMap::new();
        keys.insert(0, key);
        DocKeys {
            doc,
            room,
            keys,
            ciphers: BTreeMap::new(),
            transport: transport_cipher(&doc, &room),
            presence,
            verifier: Verifier::default(),
        }
    }

    pub fn room(&self) -> RoomId {
        self.room
    }

    /// Adds the key of a later epoch (handed over by a member).
    pub fn add_epoch(&mut self, epoch: u32, key: DocKey) {
        self.keys.insert(epoch, key);
    }

    /// The newest epoch this replica holds a key for.
    pub fn current_epoch(&self) -> u32 {
        self.keys.keys().next_back().copied().unwrap_or(0)
    }

    fn cipher(&mut self, author: PeerId, epoch: u32) -> Result<&GcmKey, CryptoError> {
        if !self.ciphers.contains_key(&(author, epoch)) {
            let key = self
                .keys
                .get(&epoch)
                .ok_or(CryptoError::UnknownEpoch(epoch))?;
            let mut info = [0u8; 21 + 4 + 32];
            info[..21].copy_from_slice(b"mycel envelope key v1");
            info[21..25].copy_from_slice(&epoch.to_be_bytes());
            info[25..].copy_from_slice(author.as_bytes());
            let mut subkey = [0u8; 32];
            Hkdf::<Sha256>::new(None, key.as_bytes())
                .expand(&info, &mut subkey)
                .map_err(|_| CryptoError::UnknownEpoch(epoch))?;
            let cipher = GcmKey::new(&subkey);
            self.ciphers.insert((author, epoch), cipher);
        }
        Ok(&self.ciphers[&(author, epoch)])
    }

    /// Encrypts and signs one change (or snapshot) as the next envelope of
    /// `identity` at `seq`: one signature over its leaf digest.
    pub fn seal(
        &mut self,
        identity: &Identity,
        kind: EnvelopeKind,
        seq: u64,
        plaintext: &[u8],
        rng: &mut Rng,
    ) -> Result<Envelope, CryptoError> {
        let pending = self.encrypt(identity, kind, seq, plaintext, 0, rng)?;
        let leaf = pending.leaf;
        Ok(pending.finish(identity.sign(&leaf), leaf, &[]))
    }

    /// Encrypts `plaintexts` as the envelopes of `identity` at `first_seq`,
    /// `first_seq + 1`, … and signs them once: over the root of a Merkle
    /// tree of their leaf digests. Each envelope carries that signature and
    /// its path to the root, so each verifies on its own (a batch of one is
    /// exactly [`DocKeys::seal`]). At most [`MAX_SEAL_BATCH`] at once.
    pub fn seal_batch<P: AsRef<[u8]>>(
        &mut self,
        identity: &Identity,
        kind: EnvelopeKind,
        first_seq: u64,
        plaintexts: &[P],
        rng: &mut Rng,
    ) -> Result<Vec<Envelope>, CryptoError> {
        let n = plaintexts.len();
        match n {
            0 => return Ok(Vec::new()),
            1 => {
                return Ok(alloc::vec![self.seal(
                    identity,
                    kind,
                    first_seq,
                    plaintexts[0].as_ref(),
                    rng
                )?]);
            }
            _ if n > MAX_SEAL_BATCH => {
                return Err(CryptoError::BatchTooLarge {
                    len: n,
                    max: MAX_SEAL_BATCH,
                });
            }
            _ => {}
        }
        first_seq
            .checked_add(n as u64 - 1)
            .ok_or(CryptoError::SeqOverflow)?;
        // Room for the proof: 2 bytes of directions and one sibling per level.
        let depth = (usize::BITS - (n - 1).leading_zeros()) as usize;
        let proof_room = 3 + 2 + 32 * depth;
        let mut pending = Vec::with_capacity(n);
        for (seq, p) in (first_seq..).zip(plaintexts) {
            pending.push(self.encrypt(identity, kind, seq, p.as_ref(), proof_room, rng)?);
        }
        let levels = merkle_levels(pending.iter().map(|p| p.leaf).collect());
        let root = levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_default();
        let signature = identity.sign(&root);
        Ok(pending
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.finish(signature, root, &merkle_proof(&levels, i)))
            .collect())
    }

    /// Writes one envelope up to its body: the array head, the header, the
    /// body encrypted in place, and its leaf digest.
    fn encrypt(
        &mut self,
        identity: &Identity,
        kind: EnvelopeKind,
        seq: u64,
        plaintext: &[u8],
        proof_room: usize,
        rng: &mut Rng,
    ) -> Result<Pending, CryptoError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(CryptoError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let epoch = self.current_epoch();
        let header = EnvelopeHeader {
            version: WIRE_VERSION,
            kind,
            room: self.room,
            author: identity.peer_id(),
            seq,
            epoch,
            nonce: rng.array(),
        };
        let header_bytes = header.to_bytes();
        // A CBOR array of 3 (alone) or 4 (with a batch proof).
        let array_head = if proof_room == 0 { 0x83 } else { 0x84 };
        let (bytes, header_at, body_at) = self.write_body(
            &header,
            &header_bytes,
            plaintext,
            array_head,
            2 + 64 + proof_room,
        )?;
        let leaf = leaf_digest(&header_bytes, &bytes[body_at.clone()]);
        Ok(Pending {
            bytes,
            header,
            header_at,
            body_at,
            leaf,
        })
    }

    /// Writes the array head, the header and the body encrypted in place,
    /// with room for `extra` more bytes; returns the bytes and where the
    /// header and body are.
    fn write_body(
        &mut self,
        header: &EnvelopeHeader,
        header_bytes: &[u8],
        plaintext: &[u8],
        array_head: u8,
        extra: usize,
    ) -> Result<Written, CryptoError> {
        let body_len = plaintext.len() + 16;
        let mut bytes = Vec::with_capacity(
            1 + cbor_head_len(header_bytes.len())
                + header_bytes.len()
                + cbor_head_len(body_len)
                + body_len
                + extra,
        );
        bytes.push(array_head);
        push_bytes_head(&mut bytes, header_bytes.len());
        let header_at = bytes.len()..bytes.len() + header_bytes.len();
        bytes.extend_from_slice(header_bytes);
        push_bytes_head(&mut bytes, body_len);
        let body_start = bytes.len();
        bytes.extend_from_slice(plaintext);
        let tag = self
            .cipher(header.author, header.epoch)?
            .seal_in_place(&header.nonce, header_bytes, &mut bytes[body_start..])
            .map_err(|_| CryptoError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            })?;
        bytes.extend_from_slice(&tag);
        let body_at = body_start..bytes.len();
        Ok((bytes, header_at, body_at))
    }

    /// Re-creates an envelope of this document from its header, its
    /// plaintext and the bytes that followed its body (signature and batch
    /// proof). AES-GCM under one key, nonce and header gives the same body,
    /// so the same envelope comes back byte for byte: a node can keep a
    /// compact snapshot (the plaintexts in one Automerge document, ~100
    /// bytes per envelope besides) and still serve every envelope. The
    /// result is decoded, not verified: compare it with what is expected,
    /// or `open` it.
    pub fn rebuild(
        &mut self,
        header: &EnvelopeHeader,
        plaintext: &[u8],
        trailer: &[u8],
    ) -> Result<Envelope, CryptoError> {
        if header.room != self.room {
            return Err(CryptoError::WrongRoom);
        }
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(CryptoError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let header_bytes = header.to_bytes();
        // A signature alone (byte-string head 0x58 0x40 + 64 bytes) ends an
        // array of 3; with a proof after it, of 4.
        let array_head = if trailer.len() == 66 { 0x83 } else { 0x84 };
        let (mut bytes, _, _) =
            self.write_body(header, &header_bytes, plaintext, array_head, trailer.len())?;
        bytes.extend_from_slice(trailer);
        Envelope::decode(&bytes).map_err(|_| CryptoError::Malformed)
    }

    /// Verifies and decrypts an envelope of this document. A batch's
    /// signature is checked once; its other envelopes cost their AES-GCM
    /// and their leaf digest.
    pub fn open(&mut self, env: &Envelope) -> Result<Vec<u8>, CryptoError> {
        if env.header().room != self.room {
            return Err(CryptoError::WrongRoom);
        }
        self.verifier.verify(env)?;
        self.decrypt_verified(env)
    }

    /// Decrypts an envelope whose signature was already checked (on receipt,
    /// or because it comes from this replica's own store).
    pub fn decrypt_verified(&mut self, env: &Envelope) -> Result<Vec<u8>, CryptoError> {
        let h = env.header();
        let aad = env.header_bytes();
        let Some((ciphertext, tag)) = env.body().split_last_chunk::<16>() else {
            return Err(CryptoError::WrongKey);
        };
        let mut plain = ciphertext.to_vec();
        self.cipher(h.author, h.epoch)?
            .open_in_place(&h.nonce, aad, &mut plain, tag)
            .map_err(|_| CryptoError::WrongKey)?;
        Ok(plain)
    }

    /// The transport sealer of this document (also held by blind nodes).
    pub fn transport(&self) -> &GcmKey {
        &self.transport
    }

    /// The cipher of presence states (only holders of the key have it).
    pub fn presence(&self) -> &GcmKey {
        &self.presence
    }
}

/// The cipher that seals presence states of one document:
/// `BLAKE3-derive-key("mycel presence v1", DocKey ‖ DocId)` (epoch 0's key).
/// Unlike the transport key, a blind pinning node cannot derive it.
pub fn presence_cipher(key: &DocKey, doc: &DocId) -> GcmKey {
    let mut h = blake3::Hasher::new_derive_key("mycel presence v1");
    h.update(&key.0);
    h.update(&doc.0);
    GcmKey::new(h.finalize().as_bytes())
}

/// What the author of a presence message signs:
/// `BLAKE3-derive-key("mycel presence sig v1", RoomId ‖ from ‖ seq (u64 LE) ‖ sealed)`.
pub fn presence_digest(room: &RoomId, from: &PeerId, seq: u64, sealed: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("mycel presence sig v1");
    h.update(room.as_bytes());
    h.update(from.as_bytes());
    h.update(&seq.to_le_bytes());
    h.update(sealed);
    *h.finalize().as_bytes()
}

/// What the sender of a `Signal` message signs: the room, both ends, the
/// seq and the payload, so it cannot be replayed to another peer, room or
/// position, nor altered.
pub fn signal_digest(
    room: &RoomId,
    from: &PeerId,
    to: &PeerId,
    seq: u64,
    payload: &[u8],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("mycel signal sig v1");
    h.update(room.as_bytes());
    h.update(from.as_bytes());
    h.update(to.as_bytes());
    h.update(&seq.to_le_bytes());
    h.update(payload);
    *h.finalize().as_bytes()
}

/// Signs a message digest ([`presence_digest`], [`signal_digest`]) as
/// `identity`.
pub fn sign_digest(identity: &Identity, digest: &[u8; 32]) -> [u8; 64] {
    identity.sign(digest)
}

/// Checks a signature by `from` over a message digest (strict Ed25519).
pub fn verify_digest(
    from: &PeerId,
    digest: &[u8; 32],
    signature: &[u8],
) -> Result<(), CryptoError> {
    let key =
        VerifyingKey::from_bytes(from.as_bytes()).map_err(|_| CryptoError::InvalidAuthorKey)?;
    let sig = Signature::from_slice(signature).map_err(|_| CryptoError::BadSignature)?;
    key.verify_strict(digest, &sig)
        .map_err(|_| CryptoError::BadSignature)
}

/// The cipher that seals sync frames of one document between peers.
pub fn transport_cipher(doc: &DocId, room: &RoomId) -> GcmKey {
    let mut h = blake3::Hasher::new_derive_key("mycel transport v1");
    h.update(&doc.0);
    h.update(&room.0);
    GcmKey::new(h.finalize().as_bytes())
}

/// Seals a sync frame: `nonce(12) || AES-256-GCM(plaintext, aad = room)`.
pub fn seal_transport(cipher: &GcmKey, room: &RoomId, plaintext: &[u8], rng: &mut Rng) -> Vec<u8> {
    let nonce: [u8; 12] = rng.array();
    let mut out = Vec::with_capacity(12 + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    // Encryption fails only beyond 64 GiB; frames are bounded far below.
    let tag = cipher
        .seal_in_place(&nonce, room.as_bytes(), &mut out[12..])
        .unwrap_or_default();
    out.extend_from_slice(&tag);
    out
}

/// Opens a frame sealed by [`seal_transport`].
pub fn open_transport(
    cipher: &GcmKey,
    room: &RoomId,
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < 12 + 16 {
        return Err(CryptoError::TransportOpen);
    }
    let (nonce, rest) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| CryptoError::TransportOpen)?;
    let Some((ct, tag)) = rest.split_last_chunk::<16>() else {
        return Err(CryptoError::TransportOpen);
    };
    let mut plain = ct.to_vec();
    cipher
        .open_in_place(&nonce, room.as_bytes(), &mut plain, tag)
        .map_err(|_| CryptoError::TransportOpen)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (DocKeys, Identity, Rng) {
        let mut rng = Rng::from_seed([1; 32]);
        let id = Identity::generate(&mut rng);
        let keys = DocKeys::new(DocId([2; 16]), DocKey::from_bytes([3; 32]));
        (keys, id, rng)
    }

    #[test]
    fn seal_then_open_round_trips() {
        let (mut keys, id, mut rng) = setup();
        let env = keys
            .seal(&id, EnvelopeKind::Change, 1, b"hello", &mut rng)
            .unwrap();
        assert_eq!(env.header().author, id.peer_id());
        assert_eq!(keys.open(&env).unwrap(), b"hello");
        // Re-decoding the bytes gives the same envelope and id.
        let again = Envelope::decode(env.bytes()).unwrap();
        assert_eq!(again.id(), env.id());
        assert_eq!(keys.open(&again).unwrap(), b"hello");
    }

    /// What follows an envelope's body: its signature and batch proof.
    fn trailer(env: &Envelope) -> &[u8] {
        let (bytes, body) = (env.bytes(), env.body());
        let end = body.as_ptr() as usize - bytes.as_ptr() as usize + body.len();
        &bytes[end..]
    }

    #[test]
    fn rebuild_gives_back_the_same_envelope_alone_and_in_a_batch() {
        let (mut keys, id, mut rng) = setup();
        let single = keys
            .seal(&id, EnvelopeKind::Change, 1, b"alone", &mut rng)
            .unwrap();
        let plains: Vec<Vec<u8>> = (0..5).map(|i| alloc::vec![i as u8; 100 * i]).collect();
        let batch = keys
            .seal_batch(&id, EnvelopeKind::Change, 2, &plains, &mut rng)
            .unwrap();
        let cases = core::iter::once((&single, b"alone".as_slice()))
            .chain(batch.iter().zip(plains.iter().map(Vec::as_slice)));
        for (env, plain) in cases {
            let again = keys.rebuild(env.header(), plain, trailer(env)).unwrap();
            assert_eq!(again.bytes(), env.bytes());
            assert_eq!(again.id(), env.id());
            assert_eq!(keys.open(&again).unwrap(), plain);
            // Another plaintext is another envelope, which does not verify.
            let other = keys.rebuild(env.header(), b"other", trailer(env)).unwrap();
            assert_ne!(other.id(), env.id());
            assert!(keys.open(&other).is_err());
        }
        // A damaged trailer is an error, not a panic.
        let t = trailer(&single);
        assert_eq!(
            keys.rebuild(single.header(), b"alone", &t[..10]).err(),
            Some(CryptoError::Malformed)
        );
        let mut foreign = single.header().clone();
        foreign.room = RoomId([9; 32]);
        assert_eq!(
            keys.rebuild(&foreign, b"alone", t).err(),
            Some(CryptoError::WrongRoom)
        );
    }

    #[test]
    fn wrong_key_is_a_clear_error() {
        let (mut keys, id, mut rng) = setup();
        let env = keys
            .seal(&id, EnvelopeKind::Change, 1, b"secret", &mut rng)
            .unwrap();
        let mut other = DocKeys::new(DocId([2; 16]), DocKey::from_bytes([4; 32]));
        assert_eq!(other.open(&env), Err(CryptoError::WrongRoom));
        assert_eq!(other.decrypt_verified(&env), Err(CryptoError::WrongKey));
        assert!(
            alloc::string::ToString::to_string(&CryptoError::WrongKey).contains("key is wrong")
        );
    }

    #[test]
    fn transport_frames_round_trip_and_reject_other_rooms() {
        let (keys, _, mut rng) = setup();
        let room = keys.room();
        let sealed = seal_transport(keys.transport(), &room, b"frame", &mut rng);
        assert_eq!(
            open_transport(keys.transport(), &room, &sealed).unwrap(),
            b"frame"
        );
        assert_eq!(
            open_transport(keys.transport(), &RoomId([0; 32]), &sealed),
            Err(CryptoError::TransportOpen)
        );
        assert_eq!(
            open_transport(keys.transport(), &room, &sealed[..10]),
            Err(CryptoError::TransportOpen)
        );
    }

    #[test]
    fn every_envelope_of_a_batch_verifies_on_its_own() {
        let (mut keys, id, mut rng) = setup();
        for n in [2usize, 3, 5, 8, 13, 32, 33] {
            let plains: Vec<Vec<u8>> = (0..n).map(|i| alloc::vec![i as u8; i * 7]).collect();
            let envs = keys
                .seal_batch(&id, EnvelopeKind::Change, 10, &plains, &mut rng)
                .unwrap();
            assert_eq!(envs.len(), n);
            let root = *envs[0].signed_digest();
            for (i, env) in envs.iter().enumerate() {
                assert!(env.is_batched());
                assert_eq!(env.seq(), 10 + i as u64);
                assert_eq!(env.signed_digest(), &root);
                assert_eq!(env.signature(), envs[0].signature());
                // No cache: the signature itself verifies for each one.
                assert_eq!(verify_envelope(env), Ok(()));
                let again = Envelope::decode(env.bytes()).unwrap();
                assert_eq!(again.id(), env.id());
                assert_eq!(again.signed_digest(), &root);
                let mut fresh = DocKeys::new(DocId([2; 16]), DocKey::from_bytes([3; 32]));
                assert_eq!(fresh.open(&again).unwrap(), plains[i]);
            }
            // Opened in one go, the batch costs one signature check.
            let mut fresh = DocKeys::new(DocId([2; 16]), DocKey::from_bytes([3; 32]));
            for (env, plain) in envs.iter().zip(&plains) {
                assert_eq!(&fresh.open(env).unwrap(), plain);
            }
            assert_eq!(fresh.verifier.cached_roots(), 1);
        }
    }

    #[test]
    fn a_batch_of_one_is_a_single_seal() {
        let (mut keys, id, _) = setup();
        let mut r1 = Rng::from_seed([9; 32]);
        let mut r2 = Rng::from_seed([9; 32]);
        let single = keys
            .seal(&id, EnvelopeKind::Change, 1, b"x", &mut r1)
            .unwrap();
        let batch = keys
            .seal_batch(&id, EnvelopeKind::Change, 1, &[b"x"], &mut r2)
            .unwrap();
        assert_eq!(batch[0].bytes(), single.bytes());
        assert!(!single.is_batched());
        assert_eq!(single.bytes()[0], 0x83);
        assert!(
            keys.seal_batch::<&[u8]>(&id, EnvelopeKind::Change, 1, &[], &mut r1)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            keys.seal_batch(&id, EnvelopeKind::Change, u64::MAX, &[b"a", b"b"], &mut r1)
                .unwrap_err(),
            CryptoError::SeqOverflow
        );
        let many = alloc::vec![[0u8; 0]; MAX_SEAL_BATCH + 1];
        assert!(matches!(
            keys.seal_batch(&id, EnvelopeKind::Change, 1, &many, &mut r1),
            Err(CryptoError::BatchTooLarge { .. })
        ));
    }

    #[test]
    fn the_root_cache_needs_the_same_signature() {
        let (mut keys, id, mut rng) = setup();
        let envs = keys
            .seal_batch(&id, EnvelopeKind::Change, 1, &[b"a", b"b", b"c"], &mut rng)
            .unwrap();
        let mut v = Verifier::default();
        // A bad signature first: refused, and nothing is remembered.
        let mut bad = envs[0].bytes().to_vec();
        let sig_at = bad.len() - envs[0].proof().len() - 2 - 64;
        bad[sig_at] ^= 1;
        let bad = Envelope::decode(&bad).unwrap();
        assert_eq!(v.verify(&bad), Err(CryptoError::BadSignature));
        assert_eq!(v.cached_roots(), 0);
        assert_eq!(v.verify(&envs[0]), Ok(()));
        assert_eq!(v.cached_roots(), 1);
        // The root is known now, but a damaged signature is still refused.
        assert_eq!(v.verify(&bad), Err(CryptoError::BadSignature));
        assert_eq!(v.verify(&envs[1]), Ok(()));
        assert_eq!(v.verify(&envs[2]), Ok(()));
        assert_eq!(v.cached_roots(), 1);
    }

    #[test]
    fn the_root_cache_is_bounded() {
        let (mut keys, id, mut rng) = setup();
        let mut v = Verifier::default();
        for i in 0..Verifier::MAX_ROOTS as u64 + 5 {
            let envs = keys
                .seal_batch(
                    &id,
                    EnvelopeKind::Change,
                    2 * i + 1,
                    &[b"a", b"b"],
                    &mut rng,
                )
                .unwrap();
            v.verify(&envs[0]).unwrap();
        }
        assert_eq!(v.cached_roots(), Verifier::MAX_ROOTS);
    }

    #[test]
    fn oversized_plaintext_is_refused() {
        let (mut keys, id, mut rng) = setup();
        let big = alloc::vec![0u8; MAX_PLAINTEXT + 1];
        assert!(matches!(
            keys.seal(&id, EnvelopeKind::Change, 1, &big, &mut rng),
            Err(CryptoError::TooLarge { .. })
        ));
    }
}
