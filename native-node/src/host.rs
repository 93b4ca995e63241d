//! The native host: a [`Replica`] over a [`Store`]. It moves the node's
//! outputs to disk (and, in `net`, to sockets) and nothing more.

use std::collections::BTreeMap;
use std::time::Instant;

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use mycel_core::crypto::{DocKey, Rng};
use mycel_core::doc::{Replica, ReplicaError};
use mycel_core::id::{DocId, PinLink, RoomId, ShareLink};
use mycel_core::node::{DocAccess, Event, Input, NodeConfig, Output};
use mycel_core::time::Timestamp;

use crate::compact::{self, SnapshotError};
use crate::store::{DocEntry, RecordLog, Store, StoreError};

/// Errors a command reports to the person who ran it.
#[derive(Debug)]
#[non_exhaustive]
pub enum HostError {
    Store(StoreError),
    Replica(ReplicaError),
    /// The document is not in this node's store.
    UnknownDoc(DocId),
    /// A blind pin cannot be read or changed.
    Blind(DocId),
    /// The link's key does not match the key stored for the document.
    KeyMismatch(DocId),
    Json(String),
    Io(String),
    Snapshot(SnapshotError),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Store(e) => write!(f, "{e}"),
            HostError::Replica(e) => write!(f, "{e}"),
            HostError::UnknownDoc(d) => write!(f, "document {d} is not on this node"),
            HostError::Blind(d) => write!(
                f,
                "document {d} is pinned without its key: it can be served, not read or changed"
            ),
            HostError::KeyMismatch(d) => write!(
                f,
                "the link's key for document {d} differs from the one this node holds: the link's key is wrong"
            ),
            HostError::Json(e) => write!(f, "{e}"),
            HostError::Io(e) => write!(f, "{e}"),
            HostError::Snapshot(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for HostError {}

impl From<StoreError> for HostError {
    fn from(e: StoreError) -> Self {
        HostError::Store(e)
    }
}
impl From<SnapshotError> for HostError {
    fn from(e: SnapshotError) -> Self {
        HostError::Snapshot(e)
    }
}
impl From<ReplicaError> for HostError {
    fn from(e: ReplicaError) -> Self {
        HostError::Replica(e)
    }
}
impl From<mycel_core::node::NodeError> for HostError {
    fn from(e: mycel_core::node::NodeError) -> Self {
        HostError::Replica(ReplicaError::Node(e))
    }
}
impl From<automerge::AutomergeError> for HostError {
    fn from(e: automerge::AutomergeError) -> Self {
        HostError::Replica(ReplicaError::Automerge(e))
    }
}

/// Fresh randomness from the operating system.
pub fn os_seed() -> Result<[u8; 32], HostError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| HostError::Io(format!("no OS randomness: {e}")))?;
    Ok(seed)
}

/// A node with its store, its open documents and their logs.
pub struct Host {
    pub store: Store,
    pub replica: Replica,
    logs: BTreeMap<DocId, RecordLog>,
    rooms: BTreeMap<RoomId, DocId>,
    started: Instant,
    /// Events for the command to report (durability, peers, rejections).
    pub events: Vec<Event>,
    /// Outputs of calls that return none (`set`, imports, opening): the
    /// next [`Host::drain`] returns them, so a change made while a network
    /// loop runs is sent at once.
    unsent: Vec<Output>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("dir", &self.store.dir())
            .field("open", &self.logs.len())
            .finish()
    }
}

impl Host {
    /// Opens the store and the identity. `pinning` makes this node count
    /// for `stored-remotely` (a serving daemon).
    pub fn open(store: Store, pinning: bool) -> Result<Host, HostError> {
        let config = NodeConfig {
            pinning,
            ..NodeConfig::default()
        };
        Host::open_with(store, config)
    }

    /// [`Host::open`] with a node configuration of one's own.
    pub fn open_with(store: Store, config: NodeConfig) -> Result<Host, HostError> {
        let identity = store.identity()?;
        Ok(Host {
            replica: Replica::new(identity, config, os_seed()?),
            store,
            logs: BTreeMap::new(),
            rooms: BTreeMap::new(),
            started: Instant::now(),
            events: Vec::new(),
            unsent: Vec::new(),
        })
    }

    pub fn now(&self) -> Timestamp {
        Timestamp(self.started.elapsed().as_millis() as u64)
    }

    /// Fresh randomness (document ids and keys).
    pub fn rng(&mut self) -> &mut Rng {
        self.replica.node_mut().rng()
    }

    /// Creates a new document; returns its share link.
    pub fn create(&mut self, base: &str) -> Result<ShareLink, HostError> {
        let doc = DocId(self.rng().array());
        let key = DocKey::generate(self.rng());
        self.store.add_doc(DocEntry::Full {
            doc,
            key: key.clone(),
        })?;
        Ok(ShareLink {
            base: base.to_owned(),
            doc,
            key,
        })
    }

    /// Registers the document of a share link (if new) and opens it.
    pub fn open_link(&mut self, link: &ShareLink) -> Result<DocId, HostError> {
        match self.store.doc(link.doc) {
            Some(DocEntry::Full { key, .. }) if *key != link.key => {
                return Err(HostError::KeyMismatch(link.doc));
            }
            Some(DocEntry::Full { .. }) => {}
            // A pin upgraded to a full copy: the key is now known.
            Some(DocEntry::Pin { .. }) | None => self.store.add_doc(DocEntry::Full {
                doc: link.doc,
                key: link.key.clone(),
            })?,
        }
        self.open_doc(link.doc)?;
        Ok(link.doc)
    }

    /// Registers a blind pin (if new) and opens it.
    pub fn open_pin(&mut self, link: &PinLink) -> Result<DocId, HostError> {
        if self.store.doc(link.doc).is_none() {
            self.store.add_doc(DocEntry::Pin {
                doc: link.doc,
                room: link.room,
            })?;
        }
        self.open_doc(link.doc)?;
        Ok(link.doc)
    }

    /// Opens a stored document: replays its log into the node.
    pub fn open_doc(&mut self, doc: DocId) -> Result<(), HostError> {
        if self.logs.contains_key(&doc) {
            return Ok(());
        }
        let entry = self
            .store
            .doc(doc)
            .cloned()
            .ok_or(HostError::UnknownDoc(doc))?;
        let room = entry.room();
        let (log, records) = self.store.open_room(&room)?;
        let access = match entry {
            DocEntry::Full { key, .. } => DocAccess::Full(key),
            DocEntry::Pin { room, .. } => DocAccess::Blind(room),
        };
        let key = match &access {
            DocAccess::Full(key) => Some(key),
            DocAccess::Blind(_) => None,
        };
        // The newest snapshot gives back the envelopes it replaced, so the
        // node holds (and serves) everything it held before compaction.
        let loaded = compact::load(doc, key, records)?;
        let now = self.now();
        self.replica
            .open(now, doc, access, loaded.envelopes.iter().map(Vec::as_slice))?;
        self.logs.insert(doc, log);
        self.rooms.insert(room, doc);
        self.keep_unsent()
    }

    /// Opens every document in the store.
    pub fn open_all(&mut self) -> Result<(), HostError> {
        let docs: Vec<DocId> = self.store.docs().iter().map(DocEntry::doc).collect();
        for d in docs {
            self.open_doc(d)?;
        }
        Ok(())
    }

    pub fn automerge(&self, doc: DocId) -> Result<&automerge::Automerge, HostError> {
        match self.replica.doc(doc) {
            Some(d) => Ok(d.automerge()),
            None if self.logs.contains_key(&doc) => Err(HostError::Blind(doc)),
            None => Err(HostError::UnknownDoc(doc)),
        }
    }

    /// Sets top-level `key` to a JSON value; returns once the change is
    /// durable on disk (`saved-locally`).
    pub fn set(
        &mut self,
        doc: DocId,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<(), HostError> {
        if self.replica.doc(doc).is_none() {
            return Err(HostError::Blind(doc));
        }
        let now = self.now();
        self.replica
            .change(now, doc, |tx| put_json(tx, &ROOT, Prop::Key(key), value))?;
        self.keep_unsent()
    }

    /// Imports every change of an Automerge document into `doc`.
    pub fn import_changes(
        &mut self,
        doc: DocId,
        source: &automerge::Automerge,
    ) -> Result<(), HostError> {
        let changes: Vec<Vec<u8>> = source
            .get_changes(&[])
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let now = self.now();
        self.replica.import(now, doc, changes)?;
        self.keep_unsent()
    }

    /// Feeds an input and drains the outputs.
    pub fn handle(&mut self, input: Input) -> Result<Vec<Output>, HostError> {
        let now = self.now();
        self.replica.handle(now, input)?;
        self.drain()
    }

    /// Writes `Persist` outputs to disk and acknowledges them; returns
    /// what a network host must act on (sends, timers).
    pub fn drain(&mut self) -> Result<Vec<Output>, HostError> {
        let mut rest = std::mem::take(&mut self.unsent);
        while let Some(out) = self.replica.poll() {
            match out {
                Output::Persist {
                    doc,
                    batch,
                    records,
                } => {
                    let log = self.logs.get_mut(&doc).ok_or(HostError::UnknownDoc(doc))?;
                    log.append(records.iter().map(|e| e.bytes()))?;
                    let now = self.now();
                    self.replica.handle(now, Input::Persisted { doc, batch })?;
                }
                Output::Event(e) => self.events.push(e),
                Output::Apply { .. } => {}
                other => rest.push(other),
            }
        }
        Ok(rest)
    }
}

impl Host {
    /// Drains, keeping the outputs for the next [`Host::drain`].
    fn keep_unsent(&mut self) -> Result<(), HostError> {
        let outs = self.drain()?;
        self.unsent = outs;
        Ok(())
    }
}

/// What compacting one document did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    pub doc: DocId,
    /// Bytes of the room log before and after.
    pub before: u64,
    pub after: u64,
    /// Envelopes the snapshot now stands for.
    pub covered: usize,
    /// Envelopes kept whole (the snapshot cannot rebuild them exactly).
    pub kept: usize,
    /// False when there was nothing to gain and the log was left alone.
    pub rewritten: bool,
}

/// Compacts one document's room log into an encrypted snapshot plus the
/// envelopes it does not cover. The caller holds the store exclusively
/// ([`Store::lock_exclusive`]). A blind pin cannot be compacted: it has no
/// key, and it keeps every envelope for its peers.
pub fn compact_doc(store: &Store, doc: DocId, rng: &mut Rng) -> Result<Compaction, HostError> {
    let (key, room) = match store.doc(doc) {
        Some(e @ DocEntry::Full { key, .. }) => (key.clone(), e.room()),
        Some(DocEntry::Pin { .. }) => return Err(HostError::Blind(doc)),
        None => return Err(HostError::UnknownDoc(doc)),
    };
    let identity = store.identity()?;
    let before = store.room_size(&room)?;
    let (log, records) = store.open_room(&room)?;
    drop(log);
    let plan = compact::plan(doc, &key, &identity, rng, records)?;
    let rewritten = match &plan.records {
        Some(records) => {
            store.replace_room(&room, records)?;
            true
        }
        None => false,
    };
    Ok(Compaction {
        doc,
        before,
        after: store.room_size(&room)?,
        covered: plan.covered,
        kept: plan.kept,
        rewritten,
    })
}

enum Prop<'a> {
    Key(&'a str),
    Index(usize),
}

fn put_json(
    tx: &mut impl Transactable,
    obj: &ObjId,
    prop: Prop<'_>,
    value: &serde_json::Value,
) -> Result<(), automerge::AutomergeError> {
    use serde_json::Value as J;
    let scalar = |v: &J| -> Option<ScalarValue> {
        Some(match v {
            J::Null => ScalarValue::Null,
            J::Bool(b) => ScalarValue::Boolean(*b),
            J::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => ScalarValue::Int(i),
                (None, Some(u)) => ScalarValue::Uint(u),
                _ => ScalarValue::F64(n.as_f64().unwrap_or(0.0)),
            },
            J::String(s) => ScalarValue::Str(s.as_str().into()),
            J::Array(_) | J::Object(_) => return None,
        })
    };
    if let Some(s) = scalar(value) {
        return match prop {
            Prop::Key(k) => tx.put(obj, k, s),
            Prop::Index(i) => tx.insert(obj, i, s),
        };
    }
    let kind = if value.is_array() {
        ObjType::List
    } else {
        ObjType::Map
    };
    let child = match prop {
        Prop::Key(k) => tx.put_object(obj, k, kind)?,
        Prop::Index(i) => tx.insert_object(obj, i, kind)?,
    };
    match value {
        J::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                put_json(tx, &child, Prop::Index(i), item)?;
            }
        }
        J::Object(map) => {
            for (k, v) in map {
                put_json(tx, &child, Prop::Key(k), v)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The document (or one top-level key) as JSON.
pub fn to_json(doc: &automerge::Automerge, key: Option<&str>) -> Option<serde_json::Value> {
    match key {
        None => Some(obj_json(doc, &ROOT, ObjType::Map)),
        Some(k) => {
            let (v, id) = doc.get(ROOT, k).ok()??;
            Some(value_json(doc, v, &id))
        }
    }
}

fn obj_json(doc: &automerge::Automerge, obj: &ObjId, kind: ObjType) -> serde_json::Value {
    use serde_json::Value as J;
    match kind {
        ObjType::Map | ObjType::Table => J::Object(
            doc.keys(obj)
                .filter_map(|k| {
                    let (v, id) = doc.get(obj, k.as_str()).ok()??;
                    Some((k, value_json(doc, v, &id)))
                })
                .collect(),
        ),
        ObjType::List => J::Array(
            (0..doc.length(obj))
                .filter_map(|i| {
                    let (v, id) = doc.get(obj, i).ok()??;
                    Some(value_json(doc, v, &id))
                })
                .collect(),
        ),
        ObjType::Text => J::String(doc.text(obj).unwrap_or_default()),
    }
}

fn value_json(doc: &automerge::Automerge, v: Value<'_>, id: &ObjId) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Object(kind) => obj_json(doc, id, kind),
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Null => J::Null,
            ScalarValue::Boolean(b) => J::Bool(*b),
            ScalarValue::Int(i) => J::from(*i),
            ScalarValue::Uint(u) => J::from(*u),
            ScalarValue::F64(f) => J::from(*f),
            ScalarValue::Counter(c) => J::from(i64::from(c)),
            ScalarValue::Timestamp(t) => J::from(*t),
            ScalarValue::Str(s) => J::String(s.to_string()),
            ScalarValue::Bytes(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
            other => J::String(other.to_string()),
        },
    }
}
