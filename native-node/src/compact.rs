//! Compaction with encrypted snapshots (DESIGN §5).
//!
//! A room log of a document this node holds the key for can be rewritten
//! as an encrypted Automerge snapshot followed by the envelopes the
//! snapshot does not cover. The snapshot is one or more envelopes of kind
//! `snapshot`, sealed under the document key and signed by this node like
//! any change; it never leaves the device.
//!
//! Peers must still get every envelope from a compacted node, byte for byte
//! (a re-sealed change with another nonce would be a different envelope at
//! the same (author, seq): an equivocation). So the snapshot keeps, per
//! envelope it replaces, the parts that cannot be recomputed: the header's
//! nonce and epoch, and the encoded bytes after the body (the signature,
//! and whatever a later wire version appends there): the *residue*, about
//! 100 bytes. The change bytes come
//! back from the Automerge snapshot (its columnar format is where the space
//! is saved), and AES-GCM is deterministic for a given key, nonce, header
//! and plaintext, so the original envelope is rebuilt exactly. An envelope
//! is covered only if that rebuild was checked to give its original bytes
//! when the snapshot was made; any other (an envelope another encoder
//! wrote, a change Automerge holds back for a missing dependency, an older
//! key epoch) stays in the log as it was.
//!
//! Loading = the snapshot + the envelopes after it, in log order:
//! deterministic, and the node gets back every envelope it held.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::{Automerge, Change};
use mycel_core::crypto::{CryptoError, DocKey, DocKeys, Identity, MAX_PLAINTEXT, Rng};
use mycel_core::id::{DocId, PeerId};
use mycel_core::wire::{
    Envelope, EnvelopeHeader, EnvelopeKind, VersionVector, WIRE_VERSION, WireError,
};

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
    /// A blind pin's log holds a snapshot it cannot open.
    Blind,
    /// A freshly written snapshot did not give back every envelope it
    /// replaces; nothing was changed on disk.
    Verification(String),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Envelope(e) => write!(f, "a stored envelope is unreadable: {e}"),
            SnapshotError::Crypto(e) => write!(f, "a stored snapshot does not open: {e}"),
            SnapshotError::Malformed(what) => write!(f, "a stored snapshot is damaged: {what}"),
            SnapshotError::Blind => write!(
                f,
                "the log of a blind pin holds a snapshot, which only a key holder can read"
            ),
            SnapshotError::Verification(what) => write!(
                f,
                "compaction stopped before changing anything: the new snapshot would not give back every envelope ({what})"
            ),
        }
    }
}

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

/// Bounds-checked reading of untrusted bytes (a damaged file never panics).
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

/// Rebuilds envelopes from residues with the core's
/// [`DocKeys::rebuild`] (the stored nonce, header fields and trailer).
/// Only epoch 0 is stored with a document; later epochs stay whole.
struct Resealer {
    keys: DocKeys,
}

impl Resealer {
    fn new(doc: DocId, key: &DocKey) -> Self {
        Resealer {
            keys: DocKeys::new(doc, key.clone()),
        }
    }

    fn reseal(
        &mut self,
        author: PeerId,
        seq: u64,
        epoch: u32,
        nonce: [u8; 12],
        (head, tail): (u8, &[u8]),
        change: &[u8],
    ) -> Option<Vec<u8>> {
        if epoch != 0 {
            return None;
        }
        let header = EnvelopeHeader {
            version: WIRE_VERSION,
            kind: EnvelopeKind::Change,
            room: self.keys.room(),
            author,
            seq,
            epoch,
            nonce,
        };
        let env = self.keys.rebuild(&header, change, tail).ok()?;
        // The stored array head must be the one the trailer implies.
        (env.bytes().first() == Some(&head)).then(|| env.bytes().to_vec())
    }
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

/// Change bytes of a loaded Automerge document, by hash and by (actor, seq).
struct ChangeIndex {
    changes: Vec<Change>,
    by_hash: HashMap<[u8; 32], usize>,
    /// `None` when two changes share an (actor, seq): then only hashes name them.
    by_actor_seq: HashMap<(Vec<u8>, u64), Option<usize>>,
}

impl ChangeIndex {
    fn new(am: &Automerge) -> Self {
        let changes = am.get_changes(&[]);
        let mut by_hash = HashMap::with_capacity(changes.len());
        let mut by_actor_seq = HashMap::with_capacity(changes.len());
        for (i, c) in changes.iter().enumerate() {
            by_hash.insert(c.hash().0, i);
            by_actor_seq
                .entry((c.actor_id().to_bytes().to_vec(), c.seq()))
                .and_modify(|e| *e = None)
                .or_insert(Some(i));
        }
        ChangeIndex {
            changes,
            by_hash,
            by_actor_seq,
        }
    }

    fn by_hash(&self, hash: &[u8; 32]) -> Option<&Change> {
        self.by_hash.get(hash).map(|i| &self.changes[*i])
    }

    fn by_actor_seq(&self, actor: &PeerId, seq: u64) -> Option<&Change> {
        let i = (*self.by_actor_seq.get(&(actor.as_bytes().to_vec(), seq))?)?;
        Some(&self.changes[i])
    }
}

/// A room log opened for a key holder.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every envelope, as bytes: those the snapshot covers, then the rest
    /// in log order.
    pub envelopes: Vec<Vec<u8>>,
    /// Envelopes rebuilt from the snapshot.
    pub from_snapshot: usize,
}

/// The parts of one snapshot found in a log.
struct Parts {
    id: [u8; 16],
    chunks: BTreeMap<u32, Vec<u8>>,
    count: u32,
}

/// Turns a room's records into the envelopes they stand for.
/// `key` is None for a blind pin (whose log never holds a snapshot).
pub fn load(
    doc: DocId,
    key: Option<&DocKey>,
    records: Vec<Vec<u8>>,
) -> Result<Loaded, SnapshotError> {
    let mut envelopes = Vec::with_capacity(records.len());
    // Snapshot parts by id, in the order the ids first appear.
    let mut parts: Vec<Parts> = Vec::new();
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
        let chunk = r.0.to_vec();
        match parts.iter_mut().find(|p| p.id == id) {
            Some(p) if p.count == count => {
                p.chunks.insert(index, chunk);
            }
            Some(_) => return Err(SnapshotError::Malformed("part numbering")),
            None => parts.push(Parts {
                id,
                chunks: BTreeMap::from([(index, chunk)]),
                count,
            }),
        }
    }
    // Compaction rewrites the whole log, so it holds one snapshot; should
    // there be more, each is rebuilt (in log order) rather than any ignored.
    let mut all = Vec::new();
    for p in parts {
        if p.chunks.len() != p.count as usize {
            return Err(SnapshotError::Malformed("a part is missing"));
        }
        let plain: Vec<u8> = p.chunks.into_values().flatten().collect();
        let snap = Snapshot::decode(&plain)?;
        let key = key.ok_or(SnapshotError::Blind)?;
        all.extend(rebuild(doc, key, &snap)?);
    }
    let from_snapshot = all.len();
    all.extend(envelopes);
    Ok(Loaded {
        envelopes: all,
        from_snapshot,
    })
}

/// The envelopes a snapshot covers, rebuilt.
fn rebuild(doc: DocId, key: &DocKey, snap: &Snapshot) -> Result<Vec<Vec<u8>>, SnapshotError> {
    let am = Automerge::load(&snap.automerge)
        .map_err(|_| SnapshotError::Malformed("the Automerge document does not load"))?;
    let index = ChangeIndex::new(&am);
    let mut resealer = Resealer::new(doc, key);
    let mut out = Vec::with_capacity(snap.residues.len());
    let mut seqs: BTreeMap<PeerId, BTreeSet<u64>> = BTreeMap::new();
    for r in &snap.residues {
        let author = snap.authors[r.author as usize];
        let change = match &r.hash {
            Some(h) => index.by_hash(h),
            None => index.by_actor_seq(&author, r.seq),
        }
        .ok_or(SnapshotError::Malformed("a covered change is missing"))?;
        let env = resealer
            .reseal(
                author,
                r.seq,
                r.epoch,
                r.nonce,
                (r.head, &r.tail),
                change.raw_bytes(),
            )
            .ok_or(SnapshotError::Malformed(
                "a covered envelope cannot be rebuilt",
            ))?;
        seqs.entry(author).or_default().insert(r.seq);
        out.push(env);
    }
    // The vector the snapshot claims to cover must be all there.
    for (author, upto) in snap.vector.iter() {
        let held = seqs.get(author);
        if !(1..=*upto).all(|s| held.is_some_and(|h| h.contains(&s))) {
            return Err(SnapshotError::Malformed(
                "the snapshot does not hold its vector",
            ));
        }
    }
    Ok(out)
}

/// What compacting one document did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The log's new records (snapshot parts, then envelopes kept whole),
    /// or None when there is nothing to gain.
    pub records: Option<Vec<Vec<u8>>>,
    /// Envelopes the snapshot covers.
    pub covered: usize,
    /// Envelopes kept whole.
    pub kept: usize,
    /// Snapshot parts (envelopes of kind snapshot).
    pub parts: usize,
}

/// Plans the compaction of a document's log: builds the snapshot and
/// checks that it gives back every envelope before anything is written.
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
    let mut seen = BTreeSet::new();
    let mut envs = Vec::with_capacity(loaded.envelopes.len());
    for bytes in &loaded.envelopes {
        let env = Envelope::decode(bytes)?;
        if seen.insert(env.id()) {
            let change = keys.decrypt_verified(&env).ok();
            envs.push((env, change));
        }
    }
    // The document the snapshot holds: every change that decrypts. Those
    // Automerge queues for a missing dependency are not saved and so are
    // not covered below.
    let mut am = Automerge::new();
    let decoded: Vec<Change> = envs
        .iter()
        .filter_map(|(_, c)| Change::from_bytes(c.clone()?).ok())
        .collect();
    if am.apply_changes(decoded.clone()).is_err() {
        // One bad change spoils a batch; apply one by one, skipping it.
        am = Automerge::new();
        for c in decoded {
            let _ = am.apply_changes([c]);
        }
    }
    let saved = am.save();
    // Index what a reader of the snapshot will see, not what we applied.
    let reloaded = Automerge::load(&saved)
        .map_err(|_| SnapshotError::Verification("the snapshot does not load".into()))?;
    let index = ChangeIndex::new(&reloaded);
    let mut resealer = Resealer::new(doc, key);
    let mut snap = Snapshot {
        automerge: saved,
        ..Snapshot::default()
    };
    let mut author_index: BTreeMap<PeerId, u32> = BTreeMap::new();
    let mut covered_seqs: BTreeMap<PeerId, BTreeSet<u64>> = BTreeMap::new();
    let mut kept = Vec::new();
    for (env, change) in &envs {
        let residue = change.as_ref().and_then(|c| {
            let hash = Change::from_bytes(c.clone()).ok()?.hash().0;
            let stored = index.by_hash(&hash)?;
            let h = env.header();
            if h.kind != EnvelopeKind::Change || stored.raw_bytes() != c.as_slice() {
                return None;
            }
            let (head, tail) = head_and_tail(env)?;
            let rebuilt = resealer.reseal(
                h.author,
                h.seq,
                h.epoch,
                h.nonce,
                (head, tail),
                stored.raw_bytes(),
            )?;
            if rebuilt != env.bytes() {
                return None;
            }
            let implied = index
                .by_actor_seq(&h.author, h.seq)
                .is_some_and(|c| c.hash().0 == hash);
            let next = author_index.len() as u32;
            let author = *author_index.entry(h.author).or_insert_with(|| {
                snap.authors.push(h.author);
                next
            });
            Some(Residue {
                author,
                seq: h.seq,
                epoch: h.epoch,
                nonce: h.nonce,
                head,
                tail: tail.to_vec(),
                hash: (!implied).then_some(hash),
            })
        });
        match residue {
            Some(r) => {
                covered_seqs.entry(env.author()).or_default().insert(r.seq);
                snap.residues.push(r);
            }
            None => kept.push(env.bytes().to_vec()),
        }
    }
    for (author, seqs) in &covered_seqs {
        let contiguous = seqs
            .iter()
            .zip(1u64..)
            .take_while(|(s, n)| **s == *n)
            .count();
        snap.vector.set(*author, contiguous as u64);
    }
    let covered = snap.residues.len();
    // Nothing newly covered: rewriting would gain nothing.
    if covered == 0 || covered == previous {
        return Ok(Plan {
            records: None,
            covered,
            kept: kept.len(),
            parts: 0,
        });
    }
    let plain = snap.encode();
    let id: [u8; 16] = rng.array();
    let chunks: Vec<&[u8]> = plain.chunks(CHUNK).collect();
    let count = chunks.len() as u32;
    let mut out = Vec::with_capacity(chunks.len() + kept.len());
    for (i, chunk) in chunks.iter().enumerate() {
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
    // Read the new log back as a later open will: it must give exactly the
    // envelopes we started from.
    let again = load(doc, Some(key), out.clone())
        .map_err(|e| SnapshotError::Verification(e.to_string()))?;
    let before: BTreeSet<Vec<u8>> = envs.iter().map(|(e, _)| e.bytes().to_vec()).collect();
    let after: BTreeSet<Vec<u8>> = again.envelopes.into_iter().collect();
    if before != after {
        return Err(SnapshotError::Verification(format!(
            "{} envelopes before, {} after",
            before.len(),
            after.len()
        )));
    }
    Ok(Plan {
        records: Some(out),
        covered,
        kept: kept_count,
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ROOT, ReadDoc};

    fn change(am: &mut Automerge, key: &str) -> Vec<u8> {
        let mut tx = am.transaction();
        tx.put(ROOT, key, 1i64).unwrap();
        let (hash, _) = tx.commit();
        am.get_change_by_hash(&hash.unwrap())
            .unwrap()
            .raw_bytes()
            .to_vec()
    }

    #[test]
    fn what_cannot_be_rebuilt_stays_whole_and_everything_comes_back() {
        let mut rng = Rng::from_seed([1; 32]);
        let me = Identity::generate(&mut rng);
        let doc = DocId([2; 16]);
        let key = DocKey::from_bytes([3; 32]);
        let mut keys = DocKeys::new(doc, key.clone());
        let mut am = Automerge::new()
            .with_actor(automerge::ActorId::from(me.peer_id().as_bytes().as_slice()));
        let _lost = change(&mut am, "a"); // never stored: the next depends on it
        let orphan = change(&mut am, "b");
        let mut other = Automerge::new();
        let fine = change(&mut other, "c");
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
        let mut got = loaded.envelopes;
        got.sort();
        let mut want = records;
        want.sort();
        assert_eq!(got, want, "the same envelopes, byte for byte");
        // Nothing new to cover: left alone.
        let again = super::plan(doc, &key, &me, &mut rng, compacted.clone()).unwrap();
        assert!(again.records.is_none());
        // A blind pin cannot open it; a damaged snapshot is an error.
        assert!(matches!(
            load(doc, None, compacted.clone()),
            Err(SnapshotError::Blind)
        ));
        let mut damaged = compacted;
        let last = damaged[0].len() - 70;
        damaged[0][last] ^= 1;
        assert!(load(doc, Some(&key), damaged).is_err());
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
    }
}
