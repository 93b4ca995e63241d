//! The browser store: IndexedDB (DESIGN §5).
//!
//! Object stores: `envelopes` keyed by `[room, author, seq]` (ids in their
//! base64url text form), `snapshots` keyed by `[room, part envelope id]`
//! (the parts of a document's encrypted snapshots, see
//! [`mycel_core::snapshot`]), `identities` keyed by author slot, `docs`
//! keyed by document id (the document key as text).
//!
//! Plain web-sys, two connections: one for the reads, one for the writes.
//! Writes ask for transactions with `durability: "strict"`, and a change
//! may be reported `saved-locally` only after such a transaction completed:
//! Chromium's default durability (`relaxed`) acknowledges before the data
//! reaches the disk. (rexie, used before, cannot ask for it, and with the
//! crates under it cost 10 KB of the gzipped .wasm; see
//! docs/design-decisions.md.)

use js_sys::{Array, Object, Promise, Reflect, Uint8Array};
use mycel_core::crypto::DocKey;
use mycel_core::id::{DocId, RoomId, ShareLink};
use mycel_core::wire::Envelope;
#[cfg(feature = "snapshots")]
use mycel_core::wire::EnvelopeKind;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{IdbDatabase, IdbFactory, IdbKeyRange, IdbObjectStore, IdbRequest, IdbTransaction};

#[wasm_bindgen]
extern "C" {
    // `IDBDatabase.transaction(stores, mode, { durability })`: web-sys has
    // it only behind `--cfg web_sys_unstable_apis`, so it is bound here.
    /// An `IDBDatabase`, seen through this one method.
    type DurableDb;
    #[wasm_bindgen(method, catch, js_name = transaction)]
    fn transaction_with_options(
        this: &DurableDb,
        stores: &JsValue,
        mode: &str,
        options: &JsValue,
    ) -> Result<IdbTransaction, JsValue>;
}

use crate::error::HostError;

const ENVELOPES: &str = "envelopes";
const SNAPSHOTS: &str = "snapshots";
const IDENTITIES: &str = "identities";
const DOCS: &str = "docs";
const STORES: [&str; 4] = [ENVELOPES, SNAPSHOTS, IDENTITIES, DOCS];
const VERSION: u32 = 1;

/// An open IndexedDB database of one repo.
#[derive(Debug)]
pub struct Store {
    reads: IdbDatabase,
    raw: IdbDatabase,
}

/// Resolves when `target` fires its success or complete event, rejects on
/// error or abort. `set` installs the two handlers.
async fn settle(set: impl FnOnce(&js_sys::Function, &js_sys::Function)) -> Result<(), JsValue> {
    let mut set = Some(set);
    let promise = Promise::new(&mut |resolve, reject| {
        if let Some(set) = set.take() {
            set(&resolve, &reject);
        }
    });
    JsFuture::from(promise).await.map(|_| ())
}

/// The result of a request, once it succeeded.
async fn result(request: Result<IdbRequest, JsValue>, what: &str) -> Result<JsValue, HostError> {
    let request = request.map_err(|e| HostError::storage(what, e))?;
    settle(|ok, fail| {
        request.set_onsuccess(Some(ok));
        request.set_onerror(Some(fail));
    })
    .await
    .map_err(|e| HostError::storage(what, e))?;
    request.result().map_err(|e| HostError::storage(what, e))
}

/// Opens version [`VERSION`] of the database `name`, creating the object
/// stores it lacks on an upgrade (the first open).
async fn open_db(factory: &IdbFactory, name: &str) -> Result<IdbDatabase, HostError> {
    const WHAT: &str = "cannot open the database";
    let request = factory
        .open_with_u32(name, VERSION)
        .map_err(|e| HostError::storage(WHAT, e))?;
    let upgrading = request.clone();
    let upgrade = Closure::<dyn FnMut()>::new(move || {
        // A store that cannot be made shows up as an error of the first
        // transaction that names it.
        if let Ok(db) = upgrading.result().and_then(|r| r.dyn_into::<IdbDatabase>()) {
            let present = db.object_store_names();
            for store in STORES {
                if !present.contains(store) {
                    let _ = db.create_object_store(store);
                }
            }
        }
    });
    request.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
    let db = result(Ok(request.clone().into()), WHAT).await;
    request.set_onupgradeneeded(None);
    db?.dyn_into().map_err(|e| HostError::storage(WHAT, e))
}

fn envelope_key(room: &RoomId, env: &Envelope) -> JsValue {
    Array::of3(
        &room.to_string().into(),
        &env.author().to_string().into(),
        &JsValue::from(env.seq() as f64),
    )
    .into()
}

#[cfg(feature = "snapshots")]
/// A part's envelope id names it: parts of two snapshots never collide, so
/// two tabs compacting at once each keep a snapshot that covers what it
/// deleted (loading rebuilds both).
fn part_key(room: &RoomId, part: &Envelope) -> JsValue {
    Array::of2(&room.to_string().into(), &part.id().to_string().into()).into()
}

fn room_bounds(room: &RoomId) -> Result<IdbKeyRange, HostError> {
    let text = JsValue::from(room.to_string());
    // Array keys compare element by element and an array sorts above every
    // string, so [room] .. [room, []] spans every [room, author, seq].
    let lower = Array::of1(&text);
    let upper = Array::of2(&text, &Array::new());
    IdbKeyRange::bound(&lower, &upper).map_err(|e| HostError::storage("bad key range", e))
}

impl Store {
    /// Opens (creating on first use) the database `name`.
    pub async fn open(name: &str) -> Result<Store, HostError> {
        let factory: IdbFactory = Reflect::get(&js_sys::global(), &"indexedDB".into())
            .ok()
            .and_then(|f| f.dyn_into().ok())
            .ok_or_else(|| HostError::Storage("this browser has no IndexedDB".into()))?;
        let reads = open_db(&factory, name).await?;
        let raw = open_db(&factory, name).await?;
        Ok(Store { reads, raw })
    }

    /// Object store `store` in a new read-only transaction.
    fn read(&self, store: &str) -> Result<IdbObjectStore, HostError> {
        self.reads
            .transaction_with_str(store)
            .and_then(|tx| tx.object_store(store))
            .map_err(|e| HostError::storage("cannot start a read", e))
    }

    /// The secret key of author slot `slot`, if one was stored.
    pub async fn identity(&self, slot: u32) -> Result<Option<[u8; 32]>, HostError> {
        let value = result(
            self.read(IDENTITIES)?.get(&JsValue::from(slot)),
            "cannot read an identity",
        )
        .await?;
        Ok(value
            .dyn_into::<Uint8Array>()
            .ok()
            .and_then(|a| <[u8; 32]>::try_from(a.to_vec().as_slice()).ok()))
    }

    /// Every document of the repo with its key. Entries that do not parse
    /// (written by a newer version) are skipped.
    pub async fn docs(&self) -> Result<Vec<(DocId, DocKey)>, HostError> {
        let values = result(self.read(DOCS)?.get_all(), "cannot read the documents").await?;
        Ok(Array::from(&values)
            .iter()
            .filter_map(|v| {
                // The fragment of a share link: `#d=<doc>&k=<key>`.
                let link = Reflect::get(&v, &"link".into()).ok()?.as_string()?;
                let link = link.parse::<ShareLink>().ok()?;
                Some((link.doc, link.key))
            })
            .collect())
    }

    /// The stored records of a room: its snapshot parts, then its
    /// envelopes (see [`mycel_core::snapshot::load`]), and how many parts.
    pub async fn records(&self, room: &RoomId) -> Result<(Vec<Vec<u8>>, usize), HostError> {
        let mut records = self.room_records(SNAPSHOTS, room).await?;
        let parts = records.len();
        records.extend(self.room_records(ENVELOPES, room).await?);
        Ok((records, parts))
    }

    async fn room_records(&self, store: &str, room: &RoomId) -> Result<Vec<Vec<u8>>, HostError> {
        let values = result(
            self.read(store)?
                .get_all_with_key(&room_bounds(room)?.into()),
            "cannot read the envelopes",
        )
        .await?;
        Ok(Array::from(&values)
            .iter()
            .filter_map(|v| v.dyn_ref::<Uint8Array>().map(Uint8Array::to_vec))
            .collect())
    }

    /// Starts a strict-durability write transaction. Its requests are
    /// queued at once, so transactions begun in order commit in order
    /// (IndexedDB runs overlapping read-write transactions in creation order).
    pub fn write(&self) -> Result<Write, HostError> {
        let options = Object::new();
        let _ = Reflect::set(&options, &"durability".into(), &"strict".into());
        // Snapshots are written only by builds that make them.
        #[cfg(not(feature = "snapshots"))]
        let stores = Array::of3(&ENVELOPES.into(), &IDENTITIES.into(), &DOCS.into());
        #[cfg(feature = "snapshots")]
        let stores = Array::of4(
            &ENVELOPES.into(),
            &SNAPSHOTS.into(),
            &IDENTITIES.into(),
            &DOCS.into(),
        );
        let tx = self
            .raw
            .unchecked_ref::<DurableDb>()
            .transaction_with_options(&stores, "readwrite", &options)
            .map_err(|e| HostError::storage("cannot start a write", e))?;
        Ok(Write { tx })
    }

    /// Closes both connections.
    pub fn close(self) {
        self.raw.close();
        self.reads.close();
    }

    /// Closes the write connection (when reads may still hold the store).
    pub fn close_writes(&self) {
        self.raw.close();
    }
}

/// One strict write transaction.
#[derive(Debug)]
pub struct Write {
    tx: IdbTransaction,
}

impl Write {
    fn put(&self, store: &str, key: &JsValue, value: &JsValue) -> Result<(), HostError> {
        self.tx
            .object_store(store)
            .and_then(|s| s.put_with_key(value, key))
            .map(|_| ())
            .map_err(|e| HostError::storage("cannot write", e))
    }

    pub fn envelope(&self, room: &RoomId, env: &Envelope) -> Result<(), HostError> {
        self.put(
            ENVELOPES,
            &envelope_key(room, env),
            &Uint8Array::from(env.bytes()).into(),
        )
    }

    /// Stores a snapshot part (an envelope of kind snapshot).
    #[cfg(feature = "snapshots")]
    pub fn snapshot_part(&self, room: &RoomId, part: &Envelope) -> Result<(), HostError> {
        self.put(
            SNAPSHOTS,
            &part_key(room, part),
            &Uint8Array::from(part.bytes()).into(),
        )
    }

    /// Deletes a stored record (an envelope or a snapshot part) of `room`.
    #[cfg(feature = "snapshots")]
    pub fn delete(&self, room: &RoomId, record: &Envelope) -> Result<(), HostError> {
        let (store, key) = if record.header().kind == EnvelopeKind::Snapshot {
            (SNAPSHOTS, part_key(room, record))
        } else {
            (ENVELOPES, envelope_key(room, record))
        };
        self.tx
            .object_store(store)
            .and_then(|s| s.delete(&key))
            .map(|_| ())
            .map_err(|e| HostError::storage("cannot write", e))
    }

    pub fn identity(&self, slot: u32, secret: &[u8; 32]) -> Result<(), HostError> {
        self.put(
            IDENTITIES,
            &JsValue::from(slot),
            &Uint8Array::from(&secret[..]).into(),
        )
    }

    pub fn doc(&self, doc: &DocId, key: &DocKey) -> Result<(), HostError> {
        let entry = Object::new();
        let link = ShareLink {
            base: String::new(),
            doc: *doc,
            key: key.clone(),
        };
        let _ = Reflect::set(&entry, &"link".into(), &link.to_string().into());
        self.put(DOCS, &doc.to_string().into(), &entry.into())
    }

    /// Resolves once the transaction has committed durably.
    pub async fn done(self) -> Result<(), HostError> {
        let tx = self.tx;
        settle(|ok, fail| {
            tx.set_oncomplete(Some(ok));
            tx.set_onerror(Some(fail));
            tx.set_onabort(Some(fail));
        })
        .await
        .map_err(|e| HostError::storage("a write did not complete", e))
    }
}
