//! Keys, key derivation, and sealing/opening of envelopes and transport frames.
//!
//! - An envelope body is AES-256-GCM under a per-(author, epoch) subkey,
//!   `HKDF-SHA256(ikm = DocKey, info = "mycel envelope key v1" || epoch || author)`,
//!   with the encoded header as associated data, and a 96-bit random nonce.
//! - The author signs `BLAKE3-derive-key("mycel envelope signature v1",
//!   len(header) || header || body)` with Ed25519. Hashing first keeps the
//!   signature cost flat for large bodies and lets a blind node verify
//!   without the key.
//! - Sync frames between peers are sealed with a transport key derived from
//!   the document id and room id: the relay (which knows only the room id)
//!   cannot read them, while a blind pinning node (which has the pin link)
//!   can exchange version vectors without the document key.
//!
//! Randomness comes from the caller through [`Rng`].

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::id::{DocId, PeerId, RoomId};
use crate::wire::{Envelope, EnvelopeHeader, EnvelopeKind, WIRE_VERSION};

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
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::InvalidAuthorKey => f.write_str("the author's public key is invalid"),
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

fn signature_digest(header: &[u8], body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("mycel envelope signature v1");
    h.update(&(header.len() as u32).to_le_bytes());
    h.update(header);
    h.update(body);
    *h.finalize().as_bytes()
}

/// Checks the author's signature. Needs no document key: blind nodes call it.
pub fn verify_envelope(env: &Envelope) -> Result<(), CryptoError> {
    let key = VerifyingKey::from_bytes(env.header().author.as_bytes())
        .map_err(|_| CryptoError::InvalidAuthorKey)?;
    verify_with(&key, env)
}

fn verify_with(key: &VerifyingKey, env: &Envelope) -> Result<(), CryptoError> {
    let digest = signature_digest(env.header_bytes(), env.body());
    let sig = Signature::from_bytes(env.signature());
    key.verify_strict(&digest, &sig)
        .map_err(|_| CryptoError::BadSignature)
}

/// Verifies envelopes, keeping authors' decompressed public keys: point
/// decompression is a tenth of a verification, and a document has few
/// authors. Bounded: a flood of made-up authors only resets the cache.
#[derive(Default)]
pub struct Verifier {
    keys: BTreeMap<PeerId, VerifyingKey>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verifier({} keys)", self.keys.len())
    }
}

impl Verifier {
    const MAX_KEYS: usize = 4096;

    pub fn verify(&mut self, env: &Envelope) -> Result<(), CryptoError> {
        let author = env.header().author;
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
        verify_with(&key, env)
    }
}

/// The keys of one document: its key per epoch, and the AES-GCM ciphers
/// derived from them, cached per (author, epoch) because key expansion
/// costs more than sealing a keystroke.
pub struct DocKeys {
    doc: DocId,
    room: RoomId,
    keys: BTreeMap<u32, DocKey>,
    ciphers: BTreeMap<(PeerId, u32), Aes256Gcm>,
    transport: Aes256Gcm,
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
        let mut keys = BTreeMap::new();
        keys.insert(0, key);
        DocKeys {
            doc,
            room,
            keys,
            ciphers: BTreeMap::new(),
            transport: transport_cipher(&doc, &room),
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

    fn cipher(&mut self, author: PeerId, epoch: u32) -> Result<&Aes256Gcm, CryptoError> {
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
            let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(subkey));
            self.ciphers.insert((author, epoch), cipher);
        }
        Ok(&self.ciphers[&(author, epoch)])
    }

    /// Encrypts and signs one change (or snapshot) as the next envelope of
    /// `identity` at `seq`.
    pub fn seal(
        &mut self,
        identity: &Identity,
        kind: EnvelopeKind,
        seq: u64,
        plaintext: &[u8],
        rng: &mut Rng,
    ) -> Result<Envelope, CryptoError> {
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
        let nonce = Nonce::from(header.nonce);
        let body = self
            .cipher(identity.peer_id(), epoch)?
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &header_bytes,
                },
            )
            .map_err(|_| CryptoError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            })?;
        let signature = identity.sign(&signature_digest(&header_bytes, &body));
        Ok(Envelope::assemble(header, &header_bytes, &body, &signature))
    }

    /// Verifies and decrypts an envelope of this document.
    pub fn open(&mut self, env: &Envelope) -> Result<Vec<u8>, CryptoError> {
        if env.header().room != self.room {
            return Err(CryptoError::WrongRoom);
        }
        verify_envelope(env)?;
        self.decrypt_verified(env)
    }

    /// Decrypts an envelope whose signature was already checked (on receipt,
    /// or because it comes from this replica's own store).
    pub fn decrypt_verified(&mut self, env: &Envelope) -> Result<Vec<u8>, CryptoError> {
        let h = env.header();
        let nonce = Nonce::from(h.nonce);
        let aad = env.header_bytes();
        self.cipher(h.author, h.epoch)?
            .decrypt(
                &nonce,
                Payload {
                    msg: env.body(),
                    aad,
                },
            )
            .map_err(|_| CryptoError::WrongKey)
    }

    /// The transport sealer of this document (also held by blind nodes).
    pub fn transport(&self) -> &Aes256Gcm {
        &self.transport
    }
}

/// The cipher that seals sync frames of one document between peers.
pub fn transport_cipher(doc: &DocId, room: &RoomId) -> Aes256Gcm {
    let mut h = blake3::Hasher::new_derive_key("mycel transport v1");
    h.update(&doc.0);
    h.update(&room.0);
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*h.finalize().as_bytes()))
}

/// Seals a sync frame: `nonce(12) || AES-256-GCM(plaintext, aad = room)`.
pub fn seal_transport(
    cipher: &Aes256Gcm,
    room: &RoomId,
    plaintext: &[u8],
    rng: &mut Rng,
) -> Vec<u8> {
    let nonce: [u8; 12] = rng.array();
    let mut out = Vec::with_capacity(12 + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    // Encryption fails only beyond 64 GiB; frames are bounded far below.
    let ct = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: room.as_bytes(),
            },
        )
        .unwrap_or_default();
    out.extend_from_slice(&ct);
    out
}

/// Opens a frame sealed by [`seal_transport`].
pub fn open_transport(
    cipher: &Aes256Gcm,
    room: &RoomId,
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < 12 + 16 {
        return Err(CryptoError::TransportOpen);
    }
    let (nonce, ct) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| CryptoError::TransportOpen)?;
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ct,
                aad: room.as_bytes(),
            },
        )
        .map_err(|_| CryptoError::TransportOpen)
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
    fn oversized_plaintext_is_refused() {
        let (mut keys, id, mut rng) = setup();
        let big = alloc::vec![0u8; MAX_PLAINTEXT + 1];
        assert!(matches!(
            keys.seal(&id, EnvelopeKind::Change, 1, &big, &mut rng),
            Err(CryptoError::TooLarge { .. })
        ));
    }
}
