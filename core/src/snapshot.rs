//! Encrypted snapshots: compaction of a document's stored envelopes
//! (DESIGN §5; feature `automerge`). One implementation for every host:
//! the native node rewrites a room log with it, the browser its IndexedDB
//! object stores.
//!
//! A document's stored envelopes can be replaced by an encrypted Automerge
//! snapshot plus the envelopes the snapshot does not cover. The snapshot is
//! one or more envelopes of kind `snapshot` (its *parts*), sealed under the
//! document key and signed by the compacting replica like any change; it
//! never leaves the device.
//!
//! Peers must still get every envelope from a compacted replica, byte for
//! byte (a re-sealed change with another nonce would be a different
//! envelope at the same (author, seq): an equivocation). So the snapshot
//! keeps, per envelope it replaces, the parts that cannot be recomputed:
//! the header's nonce and epoch, and the encoded bytes after the body (the
//! signature, and whatever a later wire version appends there): the
//! *residue*, about 100 bytes. The change bytes come back from the
//! Automerge snapshot (its columnar format is where the space is saved),
//! and AES-GCM is deterministic for a given key, nonce, header and
//! plaintext, so the original envelope is rebuilt exactly
//! ([`DocKeys::rebuild`]). An envelope is covered only if that rebuild was
//! checked to give its original bytes when the snapshot was made; any
//! other (an envelope another encoder wrote, a change Automerge holds back
//! for a missing dependency, an older key epoch) stays as it was.
//!
//! Loading ([`load`]) = the snapshot's envelopes + the others, in the order
//! given: deterministic, and the replica gets back every envelope it held.
//!
//! The code is written for the browser's download size: it instantiates no
//! collection type the rest of the core does not (each new one costs the
//! gzipped .wasm about 1 KB), hence the lookups by a change's hash in a
//! `BTreeMap<PeerId, u64>` (the version vector's type, keyed by the 32
//! hash bytes) and the residues written in the order Automerge lists the
//! snapshot's changes, so that rebuilding walks both lists together.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use automerge::{Automerge, Change};

use crate::crypto::{CryptoError, DocKey, DocKeys, Identity, MAX_PLAINTEXT, Rng};
use crate::id::{DocId, PeerId};
use crate::log::DocLog;
use crate::wire::{Envelope, EnvelopeHeader, EnvelopeKind, VersionVector, WIRE_VERSION, WireError};

/// What went wrong with a snapshot.
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A stored record is not an envelope.
    Envelope(WireError),
    /// A snapshot envelope fails its signature or does not decrypt.
    Crypto(CryptoError),
    /// The snapshot's contents are inconsistent (damage, or a bug).
    Malformed(&'static str),
    /// A blind pin's records hold a snapshot it cannot open.
    Blind,
    /// A freshly made snapshot did not give back every envelope it
    /// replaces; nothing may be changed on disk.
    Verification(String),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Envelope(e) => write!(f, "a stored envelope is unreadable: {e}"),
            SnapshotError::Crypto(e) => write!(f, "a stored snapshot does not open: {e}"),
            SnapshotError::Malformed(what) => write!(f, "a stored snapshot is damaged: {what}"),
            SnapshotError::Blind => f.write_str(
                "the log of a blind pin holds a snapshot, which only a key holder can read",
            ),
            SnapshotError::Verification(what) => write!(
                f,
                "compaction stopped before changing anything: the new snapshot would not give back every envelope ({what})"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SnapshotError {}

impl From<WireError> for SnapshotError {
    fn from(e: WireError) -> Self {
        SnapshotError::Envelope(e)
    }
}
impl From<CryptoError> for SnapshotError {
    fn from(e: CryptoError) -> Self {
        SnapshotError::Crypto(e)
    }
}

/// Marks the plaintext of a snapshot part (format version 1).
const MAGIC: &[u8; 8] = b"mycsnap1";
/// Part header: magic, snapshot id, part index, part count.
const PART_HEADER: usize = 8 + 16 + 4 + 4;
const CHUNK: usize = MAX_PLAINTEXT - PART_HEADER;
/// Residue flag: the change is named by its hash (its Automerge actor and
/// seq differ from the envelope's author and seq, as for imported changes).
const BY_HASH: u8 = 1;

/// The parts of an envelope a snapshot cannot recompute.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Residue {
    /// Index into [`Snapshot::authors`].
    author: u32,
    seq: u64,
    epoch: u32,
    nonce: [u8; 12],
    /// The envelope's first byte (its CBOR array head).
    head: u8,
    /// The encoded bytes after the body: the signature's byte string, and
    /// any element after it.
    tail: Vec<u8>,
    hash: Option<[u8; 32]>,
}

/// A snapshot's plaintext.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Snapshot {
    /// Highest contiguous seq per author among the covered envelopes.
    vector: VersionVector,
    automerge: Vec<u8>,
    authors: Vec<PeerId>,
    residues: Vec<Residue>,
}

impl Snapshot {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.automerge.len() + self.residues.len() * 100 + 64);
        out.extend_from_slice(&(self.vector.len() as u32).to_le_bytes());
        for (a, s) in self.vector.iter() {
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend_from_slice(&(self.automerge.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.automerge);
        out.extend_from_slice(&(self.authors.len() as u32).to_le_bytes());
        for a in &self.authors {
            out.extend_from_slice(a.as_bytes());
        }
        out.extend_from_slice(&(self.residues.len() as u32).to_le_bytes());
        for r in &self.residues {
            out.push(if r.hash.is_some() { BY_HASH } else { 0 });
            out.extend_from_slice(&r.author.to_le_bytes());
            out.extend_from_slice(&r.seq.to_le_bytes());
            out.extend_from_slice(&r.epoch.to_le_bytes());
            out.extend_from_slice(&r.nonce);
            out.push(r.head);
            out.extend_from_slice(&(r.tail.len() as u32).to_le_bytes());
            out.extend_from_slice(&r.tail);
            if let Some(h) = &r.hash {
                out.extend_from_slice(h);
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let mut r = Reader(bytes);
        let mut snap = Snapshot::default();
        let n = r.count(40)?;
        for _ in 0..n {
            let author = PeerId(r.array()?);
            let seq = r.u64()?;
            snap.vector.set(author, seq);
        }
        let len = r.u64()?;
        let len = usize::try_from(len).map_err(|_| SnapshotError::Malformed("length"))?;
        snap.automerge = r.take(len)?.to_vec();
        let n = r.count(32)?;
        for _ in 0..n {
            snap.authors.push(PeerId(r.array()?));
        }
        let n = r.count(34)?;
        for _ in 0..n {
            let flags = r.array::<1>()?[0];
            let author = r.u32()?;
            if author as usize >= snap.authors.len() {
                return Err(SnapshotError::Malformed("author index"));
            }
            let (seq, epoch, nonce, head) = (r.u64()?, r.u32()?, r.array()?, r.array::<1>()?[0]);
            let tail_len = r.u32()? as usize;
            snap.residues.push(Residue {
                author,
                seq,
                epoch,
                nonce,
                head,
                tail: r.take(tail_len)?.to_vec(),
                hash: if flags & BY_HASH != 0 {
                    Some(r.array()?)
                } else {
                    None
                },
            });
        }
        if !r.0.is_empty() {
            return Err(SnapshotError::Malformed("trailing bytes"));
        }
        Ok(snap)
    }
}

/// Bounds-checked reading of untrusted bytes (a damaged store never panics).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if n > self.0.len() {
            return Err(SnapshotError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        self.take(N)?
            .try_into()
            .map_err(|_| SnapshotError::Malformed("truncated"))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A count of items of at least `min` bytes each: refused if the rest
    /// cannot hold them, so a bad count never drives a huge allocation.
    fn count(&mut self, min: usize) -> Result<usize, SnapshotError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err(SnapshotError::Malformed("count exceeds the data"));
        }
        Ok(n)
    }
}

/// Rebuilds a change envelope from its residue with the core's
/// [`DocKeys::rebuild`] (the stored nonce, header fields and trailer).
/// Only epoch 0 is covered; later epochs stay whole.
fn reseal(
    keys: &mut DocKeys,
    (author, seq, epoch, nonce): (PeerId, u64, u32, [u8; 12]),
    (head, tail): (u8, &[u8]),
    change: &[u8],
) -> Option<Envelope> {
    if epoch != 0 {
        return None;
    }
    let header = EnvelopeHeader {
        version: WIRE_VERSION,
        kind: EnvelopeKind::Change,
        room: keys.room(),
        author,
        seq,
        epoch,
        nonce,
    };
    let env = keys.rebuild(&header, change, tail).ok()?;
    // The stored array head must be the one the trailer implies.
    (env.bytes().first() == Some(&head)).then_some(env)
}

/// An envelope's first byte and the bytes after its body.
fn head_and_tail(env: &Envelope) -> Option<(u8, &[u8])> {
    let bytes = env.bytes();
    // The body is a slice of the envelope's bytes: its end is an offset.
    let body_end = (env.body().as_ptr() as usize)
        .checked_sub(bytes.as_ptr() as usize)?
        .checked_add(env.body().len())?;
    Some((*bytes.first()?, bytes.get(body_end..)?))
}

/// Does `change` carry this `(author, seq)`, its Automerge actor being the
/// author's peer id (as for every change made by a mycel replica)?
fn is_own(change: &Change, author: &PeerId, seq: u64) -> bool {
    change.seq() == seq && change.actor_id().to_bytes() == author.as_bytes()
}

/// A snapshot's envelopes, as decoded from the stored records.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every envelope, as bytes: those the snapshots cover, then the other
    /// records in the order given.
    pub envelopes: Vec<Vec<u8>>,
    /// How many envelopes were rebuilt from snapshots.
    pub from_snapshot: usize,
}

/// One part of a snapshot: its id, index, count and bytes.
type Part = ([u8; 16], u32, u32, Vec<u8>);

/// Turns a document's stored records (snapshot parts and envelopes, any
/// order) into the envelopes they stand for. `key` is None for a blind pin
/// (whose records never hold a snapshot).
pub fn load(
    doc: DocId,
    key: Option<&DocKey>,
    records: Vec<Vec<u8>>,
) -> Result<Loaded, SnapshotError> {
    let mut envelopes = Vec::with_capacity(records.len());
    let mut parts: Vec<Part> = Vec::new();
    let mut keys = key.map(|k| DocKeys::new(doc, k.clone()));
    for bytes in records {
        // A snapshot part is told by its header; a change passes through
        // unparsed beyond that (the node checks it on open).
        let env = Envelope::decode(&bytes)?;
        if env.header().kind != EnvelopeKind::Snapshot {
            envelopes.push(bytes);
            continue;
        }
        let keys = keys.as_mut().ok_or(SnapshotError::Blind)?;
        let plain = keys.open(&env)?;
        let mut r = Reader(&plain);
        if r.take(8)? != MAGIC {
            return Err(SnapshotError::Malformed("not a snapshot part"));
        }
        let id: [u8; 16] = r.array()?;
        let (index, count) = (r.u32()?, r.u32()?);
        if count == 0 || index >= count {
            return Err(SnapshotError::Malformed("part numbering"));
        }
        parts.push((id, index, count, r.0.to_vec()));
    }
    // Compaction replaces every snapshot it read, so there is normally one;
    // should there be more (two compactions at once), each is rebuilt, in
    // the order their first parts came, rather than any ignored.
    let mut all = Vec::new();
    let mut done: Vec<[u8; 16]> = Vec::new();
    for (id, _, count, _) in &parts {
        if done.contains(id) {
            continue;
        }
        done.push(*id);
        let mut plain = Vec::new();
        for i in 0..*count {
            let mut same = parts.iter().filter(|p| p.0 == *id && p.1 == i);
            let part = same
                .next()
                .ok_or(SnapshotError::Malformed("a part is missing"))?;
            if part.2 != *count || same.any(|p| p.3 != part.3) {
                return Err(SnapshotError::Malformed("part numbering"));
            }
            plain.extend_from_slice(&part.3);
        }
        let snap = Snapshot::decode(&plain)?;
        let keys = keys.as_mut().ok_or(SnapshotError::Blind)?;
        for env in rebuild(keys, &snap)? {
            all.push(env.bytes().to_vec());
        }
    }
    let from_snapshot = all.len();
    all.extend(envelopes);
    Ok(Loaded {
        envelopes: all,
        from_snapshot,
    })
}

/// The envelopes a snapshot covers, rebuilt.
fn rebuild(keys: &mut DocKeys, snap: &Snapshot) -> Result<Vec<Envelope>, SnapshotError> {
    let am = Automerge::load(&snap.automerge)
        .map_err(|_| SnapshotError::Malformed("the Automerge document does not load"))?;
    let changes = am.get_changes(&[]);
    let mut out = Vec::with_capacity(snap.residues.len());
    // Residues were written in the order Automerge lists the changes, so
    // the next change is looked at first: one pass over both lists. Should
    // another Automerge version list them otherwise, the search still
    // finds each one, only more slowly.
    let mut cursor = 0;
    let mut log = DocLog::new(keys.room());
    for r in &snap.residues {
        let author = snap.authors[r.author as usize];
        let wanted = |c: &Change| match &r.hash {
            Some(h) => c.hash().0 == *h,
            // An Automerge document holds one change per (actor, seq).
            None => is_own(c, &author, r.seq),
        };
        let at = (cursor..changes.len())
            .chain(0..cursor)
            .find(|i| wanted(&changes[*i]))
            .ok_or(SnapshotError::Malformed("a covered change is missing"))?;
        cursor = at + 1;
        let env = reseal(
            keys,
            (author, r.seq, r.epoch, r.nonce),
            (r.head, &r.tail),
            changes[at].raw_bytes(),
        )
        .ok_or(SnapshotError::Malformed(
            "a covered envelope cannot be rebuilt",
        ))?;
        log.insert(env.clone());
        out.push(env);
    }
    // The vector the snapshot claims to cover must be all there.
    if snap
        .vector
        .iter()
        .any(|(a, upto)| log.contiguous(a) < *upto)
    {
        return Err(SnapshotError::Malformed(
            "the snapshot does not hold its vector",
        ));
    }
    Ok(out)
}

/// What compacting one document would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The document's new records (snapshot parts, then envelopes kept
    /// whole), or None when there is nothing to gain.
    pub records: Option<Vec<Vec<u8>>>,
    /// Envelopes the snapshot covers.
    pub covered: usize,
    /// Envelopes kept whole.
    pub kept: usize,
    /// Snapshot parts (envelopes of kind snapshot): the first `parts` of
    /// `records`.
    pub parts: usize,
}

/// Plans the compaction of a document's stored records (snapshot parts
/// and envelopes): builds the snapshot and checks that it gives back every
/// envelope before anything may be written. `identity` signs the parts.
pub fn plan(
    doc: DocId,
    key: &DocKey,
    identity: &Identity,
    rng: &mut Rng,
    records: Vec<Vec<u8>>,
) -> Result<Plan, SnapshotError> {
    let loaded = load(doc, Some(key), records)?;
    let previous = loaded.from_snapshot;
    let mut keys = DocKeys::new(doc, key.clone());
    // Each distinct envelope once, with its change if it decrypts; `ids`
    // finds one by its id (the 32 bytes keyed as a PeerId: see the module).
    let mut envs: Vec<(Envelope, Option<Change>)> = Vec::with_capacity(loaded.envelopes.len());
    let mut ids: BTreeMap<PeerId, u64> = BTreeMap::new();
    // The envelope carrying each change, by the change's hash.
    let mut carriers: BTreeMap<PeerId, u64> = BTreeMap::new();
    for bytes in &loaded.envelopes {
        let env = Envelope::decode(bytes)?;
        let at = envs.len() as u64;
        let id = PeerId(env.id().0);
        if ids.contains_key(&id) {
            continue;
        }
        ids.insert(id, at);
        let change = keys
            .decrypt_verified(&env)
            .ok()
            .and_then(|c| Change::from_bytes(c).ok());
        if let Some(c) = &change {
            // A change carried twice: the first envelope may be covered.
            carriers.entry(PeerId(c.hash().0)).or_insert(at);
        }
        envs.push((env, change));
    }
    // The document the snapshot holds: every change that decrypts. Those
    // Automerge queues for a missing dependency are not saved and so are
    // not covered below.
    let mut am = Automerge::new();
    let decoded: Vec<Change> = envs.iter().filter_map(|(_, c)| c.clone()).collect();
    if am.apply_changes(decoded.clone()).is_err() {
        // One bad change spoils a batch; apply one by one, skipping it.
        am = Automerge::new();
        for c in decoded {
            let _ = am.apply_changes([c]);
        }
    }
    let saved = am.save();
    drop(am);
    // Cover what a reader of the snapshot will see, not what we applied,
    // in the order it will see it.
    let reloaded = Automerge::load(&saved)
        .map_err(|_| SnapshotError::Verification("the snapshot does not load".into()))?;
    let mut snap = Snapshot {
        automerge: saved,
        ..Snapshot::default()
    };
    let mut covered = alloc::vec![false; envs.len()];
    for stored in reloaded.get_changes(&[]) {
        let Some(&at) = carriers.get(&PeerId(stored.hash().0)) else {
            continue;
        };
        let (env, change) = &envs[at as usize];
        let h = env.header();
        let ok = h.kind == EnvelopeKind::Change
            && change.as_ref().map(Change::raw_bytes) == Some(stored.raw_bytes());
        let Some((head, tail)) = head_and_tail(env).filter(|_| ok) else {
            continue;
        };
        let rebuilt = reseal(
            &mut keys,
            (h.author, h.seq, h.epoch, h.nonce),
            (head, tail),
            stored.raw_bytes(),
        );
        if rebuilt.is_none_or(|e| e.bytes() != env.bytes()) {
            continue;
        }
        let author = match snap.authors.iter().position(|a| *a == h.author) {
            Some(i) => i as u32,
            None => {
                snap.authors.push(h.author);
                snap.authors.len() as u32 - 1
            }
        };
        snap.residues.push(Residue {
            author,
            seq: h.seq,
            epoch: h.epoch,
            nonce: h.nonce,
            head,
            tail: tail.to_vec(),
            hash: (!is_own(&stored, &h.author, h.seq)).then_some(stored.hash().0),
        });
        covered[at as usize] = true;
    }
    // The vector: per author, the seqs 1..=n all covered (the log counts
    // them, whatever order they came in).
    let mut log = DocLog::new(keys.room());
    for (at, (env, _)) in envs.iter().enumerate() {
        if covered[at] {
            log.insert(env.clone());
        }
    }
    snap.vector = log.vector();
    let covered_count = snap.residues.len();
    let kept: Vec<Vec<u8>> = envs
        .iter()
        .zip(&covered)
        .filter(|(_, c)| !**c)
        .map(|((e, _), _)| e.bytes().to_vec())
        .collect();
    // Nothing newly covered: rewriting would gain nothing.
    if covered_count == 0 || covered_count == previous {
        return Ok(Plan {
            records: None,
            covered: covered_count,
            kept: kept.len(),
            parts: 0,
        });
    }
    let plain = snap.encode();
    let id: [u8; 16] = rng.array();
    let count = plain.len().div_ceil(CHUNK) as u32;
    let mut out = Vec::with_capacity(count as usize + kept.len());
    for (i, chunk) in plain.chunks(CHUNK).enumerate() {
        let mut part = Vec::with_capacity(PART_HEADER + chunk.len());
        part.extend_from_slice(MAGIC);
        part.extend_from_slice(&id);
        part.extend_from_slice(&(i as u32).to_le_bytes());
        part.extend_from_slice(&count.to_le_bytes());
        part.extend_from_slice(chunk);
        // A part's seq numbers it within the snapshot; snapshot envelopes
        // never enter the (author, seq) order of changes or the network.
        let env = keys.seal(identity, EnvelopeKind::Snapshot, i as u64 + 1, &part, rng)?;
        out.push(env.bytes().to_vec());
    }
    let parts = out.len();
    let kept_count = kept.len();
    out.extend(kept);
    // Read the new records back as a later open will: they must give
    // exactly the envelopes we started from.
    let again = load(doc, Some(key), out.clone())
        .map_err(|e| SnapshotError::Verification(format!("{e}")))?;
    let mut found = 0;
    for bytes in &again.envelopes {
        let same = Envelope::decode(bytes)
            .ok()
            .and_then(|e| ids.get(&PeerId(e.id().0)))
            .is_some_and(|at| envs[*at as usize].0.bytes() == bytes.as_slice());
        if !same {
            return Err(SnapshotError::Verification(
                "an envelope came back different".into(),
            ));
        }
        found += 1;
    }
    if found != envs.len() {
        return Err(SnapshotError::Verification(format!(
            "{} envelopes before, {found} after",
            envs.len()
        )));
    }
    Ok(Plan {
        records: Some(out),
        covered: covered_count,
        kept: kept_count,
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use automerge::transaction::Transactable;
    use automerge::{ActorId, ROOT, ReadDoc};

    fn change(am: &mut Automerge, key: &str) -> Vec<u8> {
        let mut tx = am.transaction();
        tx.put(ROOT, key, 1i64).unwrap();
        let (hash, _) = tx.commit();
        am.get_change_by_hash(&hash.unwrap())
            .unwrap()
            .raw_bytes()
            .to_vec()
    }

    fn setup() -> (Rng, Identity, DocId, DocKey, DocKeys) {
        let mut rng = Rng::from_seed([1; 32]);
        let me = Identity::generate(&mut rng);
        let doc = DocId([2; 16]);
        let key = DocKey::from_bytes([3; 32]);
        let keys = DocKeys::new(doc, key.clone());
        (rng, me, doc, key, keys)
    }

    fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        v.sort();
        v
    }

    #[test]
    fn many_changes_round_trip_byte_for_byte() {
        let (mut rng, me, doc, key, mut keys) = setup();
        let mut am = Automerge::new().with_actor(ActorId::from(me.peer_id().as_bytes().as_slice()));
        let mut records = Vec::new();
        let changes: Vec<Vec<u8>> = (0..50).map(|i| change(&mut am, &format!("k{i}"))).collect();
        // Single seals and a batch (Merkle proofs in the trailer) alike.
        for (i, c) in changes[..20].iter().enumerate() {
            let env = keys
                .seal(&me, EnvelopeKind::Change, i as u64 + 1, c, &mut rng)
                .unwrap();
            records.push(env.bytes().to_vec());
        }
        let batch: Vec<&[u8]> = changes[20..].iter().map(Vec::as_slice).collect();
        for env in keys
            .seal_batch(&me, EnvelopeKind::Change, 21, &batch, &mut rng)
            .unwrap()
        {
            records.push(env.bytes().to_vec());
        }
        // An exact duplicate is stored once.
        records.push(records[3].clone());
        let plan = plan(doc, &key, &me, &mut rng, records.clone()).unwrap();
        assert_eq!((plan.covered, plan.kept, plan.parts), (50, 0, 1));
        let compacted = plan.records.unwrap();
        let size: usize = compacted.iter().map(Vec::len).sum();
        let before: usize = records.iter().map(Vec::len).sum();
        assert!(size < before, "{size} < {before}");
        let loaded = load(doc, Some(&key), compacted.clone()).unwrap();
        assert_eq!(loaded.from_snapshot, 50);
        records.pop();
        assert_eq!(sorted(loaded.envelopes), sorted(records.clone()));
        // More envelopes after the snapshot: compacted again, all of them.
        let next = change(&mut am, "late");
        let env = keys
            .seal(&me, EnvelopeKind::Change, 51, &next, &mut rng)
            .unwrap();
        let mut grown = compacted;
        grown.push(env.bytes().to_vec());
        records.push(env.bytes().to_vec());
        let again = super::plan(doc, &key, &me, &mut rng, grown).unwrap();
        assert_eq!((again.covered, again.kept), (51, 0));
        let loaded = load(doc, Some(&key), again.records.unwrap()).unwrap();
        assert_eq!(sorted(loaded.envelopes), sorted(records));
    }

    #[test]
    fn what_cannot_be_rebuilt_stays_whole_and_everything_comes_back() {
        let (mut rng, me, doc, key, mut keys) = setup();
        let mut am = Automerge::new().with_actor(ActorId::from(me.peer_id().as_bytes().as_slice()));
        let _lost = change(&mut am, "a"); // never stored: the next depends on it
        let orphan = change(&mut am, "b");
        let mut other = Automerge::new();
        let fine = change(&mut other, "c"); // another actor: named by its hash
        let records: Vec<Vec<u8>> = [(1, &orphan), (2, &fine)]
            .into_iter()
            .map(|(seq, c)| {
                keys.seal(&me, EnvelopeKind::Change, seq, c, &mut rng)
                    .unwrap()
                    .bytes()
                    .to_vec()
            })
            .collect();
        let plan = plan(doc, &key, &me, &mut rng, records.clone()).unwrap();
        assert_eq!((plan.covered, plan.kept, plan.parts), (1, 1, 1));
        let compacted = plan.records.unwrap();
        let loaded = load(doc, Some(&key), compacted.clone()).unwrap();
        assert_eq!(sorted(loaded.envelopes), sorted(records));
        // Nothing new to cover: left alone.
        let again = super::plan(doc, &key, &me, &mut rng, compacted.clone()).unwrap();
        assert!(again.records.is_none());
        // A blind pin cannot open it.
        assert!(matches!(
            load(doc, None, compacted.clone()),
            Err(SnapshotError::Blind)
        ));
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_not_a_panic() {
        let (mut rng, me, doc, key, mut keys) = setup();
        let mut am = Automerge::new().with_actor(ActorId::from(me.peer_id().as_bytes().as_slice()));
        let records: Vec<Vec<u8>> = (1..=5)
            .map(|seq| {
                let c = change(&mut am, &format!("k{seq}"));
                keys.seal(&me, EnvelopeKind::Change, seq, &c, &mut rng)
                    .unwrap()
                    .bytes()
                    .to_vec()
            })
            .collect();
        let compacted = plan(doc, &key, &me, &mut rng, records)
            .unwrap()
            .records
            .unwrap();
        // Every flipped bit of the part (header, ciphertext, signature).
        let part = &compacted[0];
        for at in (0..part.len()).step_by(7) {
            let mut damaged = compacted.clone();
            damaged[0][at] ^= 0x10;
            assert!(load(doc, Some(&key), damaged).is_err(), "flip at {at}");
        }
        // Truncated, or missing.
        let mut cut = compacted.clone();
        cut[0].truncate(part.len() / 2);
        assert!(load(doc, Some(&key), cut).is_err());
        // A part sealed under another key does not open.
        let other = DocKey::from_bytes([4; 32]);
        assert!(matches!(
            load(doc, Some(&other), compacted.clone()),
            Err(SnapshotError::Crypto(_))
        ));
        // A well-sealed part (only a bug could write one) whose contents
        // do not fit: the rebuild refuses it.
        let mut snap = Snapshot::decode(&part_plain(&mut keys, part)).unwrap();
        snap.residues[2].hash = Some([0; 32]);
        let lying = seal_parts(&mut keys, &me, &mut rng, &snap);
        assert!(matches!(
            load(doc, Some(&key), lying),
            Err(SnapshotError::Malformed(_))
        ));
        let mut snap = Snapshot::decode(&part_plain(&mut keys, part)).unwrap();
        snap.residues.pop();
        let short = seal_parts(&mut keys, &me, &mut rng, &snap);
        assert!(matches!(
            load(doc, Some(&key), short),
            Err(SnapshotError::Malformed(_))
        ));
    }

    fn part_plain(keys: &mut DocKeys, part: &[u8]) -> Vec<u8> {
        let plain = keys.open(&Envelope::decode(part).unwrap()).unwrap();
        plain[PART_HEADER..].to_vec()
    }

    fn seal_parts(
        keys: &mut DocKeys,
        me: &Identity,
        rng: &mut Rng,
        snap: &Snapshot,
    ) -> Vec<Vec<u8>> {
        let mut part = MAGIC.to_vec();
        part.extend_from_slice(&[9; 16]);
        part.extend_from_slice(&0u32.to_le_bytes());
        part.extend_from_slice(&1u32.to_le_bytes());
        part.extend_from_slice(&snap.encode());
        vec![
            keys.seal(me, EnvelopeKind::Snapshot, 1, &part, rng)
                .unwrap()
                .bytes()
                .to_vec(),
        ]
    }

    #[test]
    fn snapshot_plaintext_round_trips_and_damage_is_an_error() {
        let mut vector = VersionVector::default();
        vector.set(PeerId([1; 32]), 2);
        let snap = Snapshot {
            vector,
            automerge: vec![9; 50],
            authors: vec![PeerId([1; 32])],
            residues: vec![
                Residue {
                    author: 0,
                    seq: 1,
                    epoch: 0,
                    nonce: [3; 12],
                    head: 0x83,
                    tail: vec![4; 66],
                    hash: None,
                },
                Residue {
                    author: 0,
                    seq: 2,
                    epoch: 0,
                    nonce: [5; 12],
                    head: 0x84,
                    tail: vec![6; 100],
                    hash: Some([7; 32]),
                },
            ],
        };
        let bytes = snap.encode();
        assert_eq!(Snapshot::decode(&bytes).unwrap(), snap);
        for cut in 0..bytes.len() {
            assert!(Snapshot::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Snapshot::decode(&huge).is_err());
        let mut bad_author = snap.clone();
        bad_author.residues[0].author = 5;
        assert!(Snapshot::decode(&bad_author.encode()).is_err());
        // Not an Automerge document: an error when rebuilt.
        let (_, _, doc, key, mut keys) = setup();
        let _ = (doc, key);
        assert!(matches!(
            rebuild(&mut keys, &snap),
            Err(SnapshotError::Malformed(_))
        ));
    }
}
