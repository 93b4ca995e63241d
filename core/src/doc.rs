//! Automerge documents on top of envelopes (feature `automerge`).
//!
//! [`Document`] wraps an Automerge document whose actor id is the replica's
//! [`PeerId`], so Automerge's (actor, seq) and mycel's (author, seq) name
//! the same thing. [`Replica`] pairs a [`Node`] with its documents: local
//! changes become envelopes, and changes the node verified and decrypted
//! are applied before the output reaches the host.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};

use alloc::vec::Vec;
use core::fmt;

use automerge::transaction::Transaction;
use automerge::{
    ActorId, Automerge, AutomergeError, Change, ChangeHash, Patch, PatchLog, ReadDoc, TextEncoding,
};

use crate::crypto::Identity;
use crate::id::{DocId, PeerId};
use crate::node::{DocAccess, Event, Input, Node, NodeConfig, NodeError, Output};
use crate::time::Timestamp;

/// An Automerge document held by one replica.
pub struct Document {
    am: Automerge,
    /// While recording ([`Document::record_patches`]): the patches of every
    /// change made or applied since they were last taken.
    patches: Option<Vec<Patch>>,
    /// A batch Automerge refused may have applied in part, unrecorded.
    patches_lost: bool,
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("heads", &self.am.get_heads().len())
            .finish()
    }
}

impl Document {
    /// An empty document written by `author`. Text positions count Unicode
    /// code points.
    pub fn new(author: PeerId) -> Self {
        Document {
            am: Automerge::new_with_encoding(TextEncoding::UnicodeCodePoint)
                .with_actor(ActorId::from(author.as_bytes().as_slice())),
            patches: None,
            patches_lost: false,
        }
    }

    /// From now on, keeps the patches of every change made or applied (for
    /// [`Document::take_patches`]). Each change logs its own patches as it
    /// is made, so their cost follows the change, not the document (which
    /// `Automerge::diff` between two heads does not).
    pub fn record_patches(&mut self) {
        if self.patches.is_none() {
            self.patches = Some(Vec::new());
        }
    }

    /// The patches recorded since the last call, in order; `None` when they
    /// cannot describe what changed (not recording, or a batch of remote
    /// changes was refused after applying in part): read the document again.
    pub fn take_patches(&mut self) -> Option<Vec<Patch>> {
        let patches = self.patches.as_mut().map(core::mem::take);
        if core::mem::take(&mut self.patches_lost) {
            return None;
        }
        patches
    }

    /// Runs `f` in a transaction and commits it. Returns `f`'s value and the
    /// encoded change (None when `f` changed nothing).
    pub fn change<T>(
        &mut self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<(T, Option<Vec<u8>>), AutomergeError> {
        let recording = self.patches.is_some();
        let mut tx = if recording {
            // A fresh log cannot belong to another document.
            let Ok(tx) = self.am.transaction_log_patches(PatchLog::active()) else {
                return Err(AutomergeError::Fail);
            };
            tx
        } else {
            self.am.transaction()
        };
        let value = match f(&mut tx) {
            Ok(v) => v,
            Err(e) => {
                tx.rollback();
                return Err(e);
            }
        };
        let (hash, mut log) = tx.commit();
        if let Some(out) = &mut self.patches {
            out.extend(self.am.make_patches(&mut log));
        }
        let bytes = hash
            .and_then(|h| self.am.get_change_by_hash(&h))
            .map(|c| c.raw_bytes().to_vec());
        Ok((value, bytes))
    }

    /// Applies encoded changes (any order: Automerge queues a change until
    /// its dependencies arrive; duplicates are ignored).
    pub fn apply(&mut self, changes: Vec<Vec<u8>>) -> Result<(), ReplicaError> {
        let mut decoded = Vec::with_capacity(changes.len());
        for c in changes {
            decoded
                .push(Change::from_bytes(c).map_err(|e| ReplicaError::BadChange(e.to_string()))?);
        }
        Ok(self.apply_decoded(decoded)?)
    }

    /// Applies decoded changes, recording their patches when asked to.
    fn apply_decoded(&mut self, changes: Vec<Change>) -> Result<(), AutomergeError> {
        let Some(out) = &mut self.patches else {
            return self.am.apply_changes(changes);
        };
        let mut log = PatchLog::active();
        let result = self.am.apply_changes_log_patches(changes, &mut log);
        match result {
            Ok(()) => out.extend(self.am.make_patches(&mut log)),
            // Rare (a change signed by its author that Automerge refuses):
            // the reader reads the whole document again instead.
            Err(_) => self.patches_lost = true,
        }
        result
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        self.am.get_heads()
    }

    /// The Automerge document, for reading.
    pub fn automerge(&self) -> &Automerge {
        &self.am
    }

    /// Plain `.automerge` bytes (interop with other Automerge tools).
    pub fn save(&self) -> Vec<u8> {
        self.am.save()
    }
}

/// When a host applies pending remote changes ([`Replica::flush`]): at most
/// once per frame, and, because Automerge's apply time grows with the
/// document, never more than `1 / (1 + idle_factor)` of the time. An editor
/// under a flood of remote keystrokes then applies them in fewer, larger
/// batches instead of falling behind.
#[derive(Debug, Clone)]
pub struct ApplyPacer {
    frame_us: u64,
    idle_factor: u64,
    next_at_us: u64,
}

impl Default for ApplyPacer {
    /// 16 ms frames; apply at most a third of the time.
    fn default() -> Self {
        ApplyPacer {
            frame_us: 16_000,
            idle_factor: 2,
            next_at_us: 0,
        }
    }
}

impl ApplyPacer {
    /// Is a flush due at `now_us` (microseconds, host clock)?
    pub fn due(&self, now_us: u64) -> bool {
        now_us >= self.next_at_us
    }

    /// Records a flush that ended at `now_us` after taking `took_us`.
    pub fn flushed(&mut self, now_us: u64, took_us: u64) {
        self.next_at_us = now_us + self.frame_us.max(took_us * self.idle_factor);
    }
}

/// Errors of [`Replica`] calls.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplicaError {
    Node(NodeError),
    Automerge(AutomergeError),
    /// Bytes that are not an Automerge change.
    BadChange(String),
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaError::Node(e) => write!(f, "{e}"),
            ReplicaError::Automerge(e) => write!(f, "automerge: {e}"),
            ReplicaError::BadChange(e) => write!(f, "not an Automerge change: {e}"),
        }
    }
}

impl std::error::Error for ReplicaError {}

impl From<NodeError> for ReplicaError {
    fn from(e: NodeError) -> Self {
        ReplicaError::Node(e)
    }
}
impl From<AutomergeError> for ReplicaError {
    fn from(e: AutomergeError) -> Self {
        ReplicaError::Automerge(e)
    }
}

/// A [`Node`] with the Automerge documents it holds keys for.
///
/// Remote changes are applied in batches: Automerge 0.12 applies one
/// change in time proportional to the document, so one call per change
/// makes a large document crawl (measured: 20,000 keystroke changes of the
/// automerge-paper trace take 53 s one by one and 0.27 s as one batch). By
/// default the changes gathered while the host drains [`Replica::poll`] are
/// applied when it returns `None`; with [`Replica::set_deferred_apply`] the
/// host applies them with [`Replica::flush`], e.g. once per animation frame.
pub struct Replica {
    node: Node,
    docs: BTreeMap<DocId, Document>,
    pending: BTreeMap<DocId, Vec<Vec<u8>>>,
    ready: alloc::collections::VecDeque<Output>,
    deferred: bool,
}

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("node", &self.node)
            .field("docs", &self.docs.len())
            .finish()
    }
}

impl Replica {
    pub fn new(identity: Identity, config: NodeConfig, seed: [u8; 32]) -> Self {
        Replica {
            node: Node::new(identity, config, seed),
            docs: BTreeMap::new(),
            pending: BTreeMap::new(),
            ready: alloc::collections::VecDeque::new(),
            deferred: false,
        }
    }

    pub fn node(&self) -> &Node {
        &self.node
    }
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// Opens a document from its stored envelopes. With the key, the
    /// Automerge document is rebuilt from them.
    pub fn open<'a>(
        &mut self,
        now: Timestamp,
        doc: DocId,
        access: DocAccess,
        stored: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), ReplicaError> {
        let full = matches!(access, DocAccess::Full(_));
        self.node.open_doc(now, doc, access, stored)?;
        if full {
            self.docs.insert(doc, Document::new(self.node.peer_id()));
        }
        Ok(())
    }

    pub fn doc(&self, doc: DocId) -> Option<&Document> {
        self.docs.get(&doc)
    }

    /// Starts recording the patches of `doc`'s local and remote changes
    /// (see [`Document::record_patches`]); a host that shows the document
    /// calls it once the stored state is loaded.
    pub fn record_patches(&mut self, doc: DocId) -> Result<(), NodeError> {
        self.docs
            .get_mut(&doc)
            .ok_or(NodeError::UnknownDoc(doc))?
            .record_patches();
        Ok(())
    }

    /// The patches recorded for `doc` since the last call (changes applied
    /// so far: call it after [`Replica::poll`] gave `Event::Changed` or
    /// `Event::Rejected`, or after [`Replica::change`]); `None`: read the
    /// document again (see [`Document::take_patches`]).
    pub fn take_patches(&mut self, doc: DocId) -> Option<Vec<Patch>> {
        self.docs.get_mut(&doc).and_then(Document::take_patches)
    }

    /// Makes a local change: runs `f` on the document and hands the change
    /// to the node (sealed, persisted, then sent). Changes the node has
    /// accepted but not yet applied (the host has not drained it since
    /// `open`, or apply is deferred) are applied first, so a local change
    /// never builds on a stale document (e.g. an empty one right after
    /// `open`, which would then conflict with the stored structure).
    pub fn change<T>(
        &mut self,
        now: Timestamp,
        doc: DocId,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, AutomergeError>,
    ) -> Result<T, ReplicaError> {
        self.catch_up(doc);
        let d = self.docs.get_mut(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        let (value, change) = d.change(f)?;
        if let Some(change) = change {
            self.node.handle(now, Input::LocalChange { doc, change })?;
        }
        Ok(value)
    }

    /// Brings changes made elsewhere (an `.automerge` file, another
    /// Automerge tool) into a document: they are applied here and sealed as
    /// this replica's envelopes, so peers receive them like local edits.
    pub fn import(
        &mut self,
        now: Timestamp,
        doc: DocId,
        changes: Vec<Vec<u8>>,
    ) -> Result<(), ReplicaError> {
        self.catch_up(doc);
        let d = self.docs.get_mut(&doc).ok_or(NodeError::UnknownDoc(doc))?;
        d.apply(changes.clone())?;
        // One batch: sealed with one signature per (up to 4,096) changes.
        self.node
            .handle(now, Input::LocalChanges { doc, changes })?;
        Ok(())
    }

    pub fn handle(&mut self, now: Timestamp, input: Input) -> Result<(), NodeError> {
        self.node.handle(now, input)
    }

    /// With `true`, remote changes wait for [`Replica::flush`] instead of
    /// being applied whenever [`Replica::poll`] runs dry.
    pub fn set_deferred_apply(&mut self, deferred: bool) {
        self.deferred = deferred;
    }

    /// The next output for the host. `Apply` outputs are taken in here: their
    /// changes are applied to the documents in one batch per document, after
    /// which an [`Event::Changed`] comes out (or [`Event::Rejected`] for a
    /// change Automerge refuses).
    pub fn poll(&mut self) -> Option<Output> {
        loop {
            if let Some(out) = self.ready.pop_front() {
                return Some(out);
            }
            match self.node.poll() {
                Some(Output::Apply { doc, changes }) => {
                    self.pending.entry(doc).or_default().extend(changes);
                }
                Some(out) => return Some(out),
                None => {
                    if self.deferred || self.pending.is_empty() {
                        return None;
                    }
                    self.flush();
                    if self.ready.is_empty() {
                        return None;
                    }
                }
            }
        }
    }

    /// Takes the node's queued outputs in (keeping their order for
    /// [`Replica::poll`]) and applies what is pending for `doc`.
    fn catch_up(&mut self, doc: DocId) {
        while let Some(out) = self.node.poll() {
            match out {
                Output::Apply { doc, changes } => {
                    self.pending.entry(doc).or_default().extend(changes);
                }
                other => self.ready.push_back(other),
            }
        }
        if self.pending.contains_key(&doc) {
            self.flush();
        }
    }

    /// Applies every pending remote change now; their events come out of
    /// [`Replica::poll`].
    pub fn flush(&mut self) {
        for (doc, changes) in core::mem::take(&mut self.pending) {
            let Some(d) = self.docs.get_mut(&doc) else {
                continue;
            };
            let mut decoded = Vec::with_capacity(changes.len());
            for c in changes {
                match Change::from_bytes(c) {
                    Ok(c) => decoded.push(c),
                    Err(e) => self.ready.push_back(Output::Event(Event::Rejected {
                        doc,
                        reason: NodeError::BadChange(e.to_string()),
                    })),
                }
            }
            let event = match d.apply_decoded(decoded) {
                Ok(()) => Event::Changed { doc },
                Err(e) => Event::Rejected {
                    doc,
                    reason: NodeError::BadChange(e.to_string()),
                },
            };
            self.ready.push_back(Output::Event(event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica with the identity of secret `[secret; 32]` and seed `[seed; 32]`.
    fn replica(secret: u8, seed: u8) -> Replica {
        Replica::new(
            Identity::from_secret([secret; 32]),
            NodeConfig::default(),
            [seed; 32],
        )
    }
    use alloc::vec;
    use automerge::ROOT;
    use automerge::transaction::Transactable;

    #[test]
    fn changes_round_trip_between_documents() {
        let mut a = Document::new(PeerId([1; 32]));
        let mut b = Document::new(PeerId([2; 32]));
        let (_, c1) = a.change(|tx| tx.put(ROOT, "title", "hello")).unwrap();
        let (_, c2) = a.change(|tx| tx.put(ROOT, "n", 3i64)).unwrap();
        // Out of order: Automerge waits for the dependency.
        b.apply(vec![c2.unwrap()]).unwrap();
        b.apply(vec![c1.unwrap()]).unwrap();
        assert_eq!(a.heads(), b.heads());
        let (v, _) = b.automerge().get(ROOT, "title").unwrap().unwrap();
        assert_eq!(v.into_string().ok().as_deref(), Some("hello"));
    }

    #[test]
    fn an_import_is_sealed_as_one_batch_and_reaches_a_peer() {
        use crate::crypto::DocKey;
        use crate::node::{LinkId, LinkKind};
        let now = Timestamp(0);
        let doc = DocId([7; 16]);
        let key = DocKey::from_bytes([8; 32]);
        let mut a = replica(1, 2);
        let mut b = replica(3, 4);
        for r in [&mut a, &mut b] {
            r.open(now, doc, DocAccess::Full(key.clone()), []).unwrap();
            r.handle(
                now,
                Input::LinkUp {
                    link: LinkId(1),
                    kind: LinkKind::Direct,
                },
            )
            .unwrap();
        }
        let mut elsewhere = Document::new(PeerId([9; 32]));
        let changes: Vec<Vec<u8>> = (0..40i64)
            .filter_map(|i| elsewhere.change(|tx| tx.put(ROOT, "n", i)).unwrap().1)
            .collect();
        a.import(now, doc, changes).unwrap();
        let mut persisted = 0;
        for _ in 0..20 {
            let mut moved = false;
            while let Some(out) = a.poll() {
                moved = true;
                match out {
                    Output::Persist {
                        doc,
                        batch,
                        records,
                    } => {
                        if records.len() == 40 {
                            persisted += 1;
                            assert!(records.iter().all(|e| e.is_batched()));
                            assert!(
                                records
                                    .iter()
                                    .all(|e| e.signature() == records[0].signature())
                            );
                            let seqs: Vec<u64> = records.iter().map(|e| e.seq()).collect();
                            assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
                        }
                        a.handle(now, Input::Persisted { doc, batch }).unwrap();
                    }
                    Output::Send { link, bytes } => {
                        b.handle(now, Input::Received { link, bytes }).unwrap();
                    }
                    _ => {}
                }
            }
            while let Some(out) = b.poll() {
                moved = true;
                match out {
                    Output::Persist { doc, batch, .. } => {
                        b.handle(now, Input::Persisted { doc, batch }).unwrap();
                    }
                    Output::Send { link, bytes } => {
                        a.handle(now, Input::Received { link, bytes }).unwrap();
                    }
                    _ => {}
                }
            }
            if !moved {
                break;
            }
        }
        assert_eq!(persisted, 1);
        assert_eq!(a.doc(doc).unwrap().heads(), elsewhere.heads());
        assert_eq!(b.doc(doc).unwrap().heads(), elsewhere.heads());
        assert_eq!(b.node().vector(doc).unwrap().get(&a.node().peer_id()), 40);
    }

    /// A change made right after `open`, before the host drained the
    /// replica, builds on the stored document, not on an empty one.
    #[test]
    fn a_change_right_after_open_builds_on_the_stored_document() {
        let now = Timestamp(0);
        use crate::crypto::DocKey;
        use automerge::ReadDoc;
        let doc = DocId([2; 16]);
        let key = DocKey::from_bytes([1; 32]);
        let identity = || Identity::from_secret([5; 32]);
        let mut first = Replica::new(identity(), NodeConfig::default(), [6; 32]);
        first
            .open(now, doc, DocAccess::Full(key.clone()), [])
            .unwrap();
        first
            .change(now, doc, |tx| {
                tx.put_object(ROOT, "items", automerge::ObjType::List)
            })
            .unwrap();
        let mut stored = Vec::new();
        while let Some(out) = first.poll() {
            if let Output::Persist { records, .. } = out {
                stored.extend(records.iter().map(|e| e.bytes().to_vec()));
            }
        }
        assert_eq!(stored.len(), 1);
        let mut again = Replica::new(identity(), NodeConfig::default(), [7; 32]);
        again
            .open(
                now,
                doc,
                DocAccess::Full(key),
                stored.iter().map(Vec::as_slice),
            )
            .unwrap();
        // No poll in between.
        let found = again
            .change(
                now,
                doc,
                |tx| Ok(ReadDoc::get(tx, ROOT, "items")?.is_some()),
            )
            .unwrap();
        assert!(found, "the stored list is there");
        // The outputs queued before the change still come out, in order.
        let mut changed = false;
        while let Some(out) = again.poll() {
            changed |= matches!(out, Output::Event(Event::Changed { .. }));
        }
        assert!(changed);
    }

    /// A peer that opens the document after our first `Have` reached it
    /// (and was dropped, the document unknown there) learns our vector
    /// from our answer to its own first `Have`, not 15 s later.
    #[test]
    fn a_late_opener_learns_the_peers_vector_at_once() {
        use crate::crypto::DocKey;
        use crate::node::{LinkId, LinkKind};
        let now = Timestamp(0);
        let doc = DocId([3; 16]);
        let key = DocKey::from_bytes([4; 32]);
        let mut a = replica(1, 2);
        let mut b = replica(3, 4);
        let up = Input::LinkUp {
            link: LinkId(1),
            kind: LinkKind::Direct,
        };
        a.handle(now, up.clone()).unwrap();
        b.handle(now, up).unwrap();
        b.open(now, doc, DocAccess::Full(key.clone()), []).unwrap();
        let pump = |from: &mut Replica, to: &mut Replica| {
            let mut moved = false;
            while let Some(out) = from.poll() {
                if let Output::Send { link, bytes } = out {
                    moved = true;
                    // Frames for a document not open there are refused.
                    let _ = to.handle(now, Input::Received { link, bytes });
                }
            }
            moved
        };
        while pump(&mut b, &mut a) | pump(&mut a, &mut b) {}
        a.open(now, doc, DocAccess::Full(key), []).unwrap();
        while pump(&mut a, &mut b) | pump(&mut b, &mut a) {}
        let seen: Vec<PeerId> = a.node().sync_status(doc).iter().map(|p| p.peer).collect();
        assert_eq!(seen, vec![b.node().peer_id()]);
    }

    /// The text and counter a list of patches leads to from `(body, n)`.
    fn play(mut body: Vec<char>, mut n: i64, patches: &[Patch]) -> (String, i64) {
        use automerge::{PatchAction, Prop};
        for p in patches {
            match &p.action {
                PatchAction::SpliceText { index, value, .. } => {
                    let at = *index;
                    body.splice(at..at, value.make_string().chars());
                }
                PatchAction::DeleteSeq { index, length } => {
                    body.drain(*index..*index + *length);
                }
                PatchAction::PutMap { key, value, .. } if key == "n" => {
                    n = value.0.as_i64().unwrap();
                }
                other => panic!("unexpected patch {other:?} at {:?}", p.path),
            }
            if let PatchAction::SpliceText { .. } | PatchAction::DeleteSeq { .. } = &p.action {
                assert_eq!(
                    p.path.last().map(|(_, k)| k),
                    Some(&Prop::Map("body".into()))
                );
            }
        }
        (body.into_iter().collect(), n)
    }

    fn state(d: &Document) -> (String, i64) {
        let am = d.automerge();
        let body = am.get(ROOT, "body").unwrap().unwrap().1;
        let n = am
            .get(ROOT, "n")
            .unwrap()
            .map_or(0, |(v, _)| v.as_i64().unwrap());
        (am.text(&body).unwrap(), n)
    }

    /// Recorded patches take a view of the document from its state before
    /// a change (local, or applied in a batch) to its state after.
    #[test]
    fn recorded_patches_lead_from_the_old_state_to_the_new() {
        use automerge::ObjType;
        let mut a = Document::new(PeerId([1; 32]));
        let mut b = Document::new(PeerId([2; 32]));
        let (_, c0) = a
            .change(|tx| tx.put_object(ROOT, "body", ObjType::Text))
            .unwrap();
        b.apply(vec![c0.unwrap()]).unwrap();
        a.record_patches();
        b.record_patches();
        let mut changes = Vec::new();
        let steps: [(usize, isize, &str); 5] = [
            (0, 0, "hello"),
            (5, 0, " wörld 🦀"),
            (0, 1, "J"),
            (3, 2, ""),
            (8, 0, "!"),
        ];
        for (i, (at, del, text)) in steps.into_iter().enumerate() {
            let (body, n) = state(&a);
            let (_, c) = a
                .change(|tx| {
                    let body = tx.get(ROOT, "body")?.unwrap().1;
                    tx.splice_text(&body, at, del, text)?;
                    tx.put(ROOT, "n", i as i64 + 1)
                })
                .unwrap();
            let local = a.take_patches().unwrap();
            assert_eq!(
                play(body.chars().collect(), n, &local),
                state(&a),
                "step {i}"
            );
            changes.push(c.unwrap());
        }
        assert_eq!(a.take_patches(), Some(Vec::new()), "taken once");
        // Applied in one batch, as `Replica::flush` does.
        let (body, n) = state(&b);
        b.apply(changes).unwrap();
        assert_eq!(b.heads(), a.heads());
        let remote = b.take_patches().unwrap();
        assert_eq!(play(body.chars().collect(), n, &remote), state(&a));
        // A change that fails is rolled back and records nothing.
        assert!(a.change(|_| Err::<(), _>(AutomergeError::Fail)).is_err());
        assert_eq!(a.take_patches(), Some(Vec::new()));
    }

    #[test]
    fn garbage_change_is_an_error() {
        let mut a = Document::new(PeerId([1; 32]));
        assert!(a.apply(vec![vec![1, 2, 3]]).is_err());
    }
}
