//! Compaction in the browser: a document's envelopes in IndexedDB are
//! replaced by an encrypted snapshot (the core's [`mycel_core::snapshot`],
//! the format the native node uses).
//!
//! One compaction reads the room's records (snapshot parts and whole
//! envelopes), has the core plan the new ones (which checks that they give
//! back every envelope byte for byte before anything is written), then in
//! ONE strict-durability write transaction deletes exactly the records it
//! read and writes the new snapshot parts and the envelopes kept whole. If
//! anything fails, the transaction aborts and the old records stay. A
//! record written meanwhile (by this tab or another) is not among those
//! read, so it is never deleted; two compactions at once (two tabs) each
//! write a snapshot covering all they deleted, under keys of their own
//! (a part's envelope id), and loading rebuilds both.
//!
//! Built only with the crate feature `snapshots`, off by default: reading
//! and writing Automerge's document format (`Automerge::load`, `save`) is
//! code the browser build has nowhere else, and it costs the gzipped .wasm
//! about 79 KB (54 KB to load a snapshot, 25 KB more to make one), against
//! a budget of 450 KiB with less than 1 KB to spare (see
//! docs/design-decisions.md). Without it, `doc.compact()` rejects with a
//! `StorageError` saying so, nothing compacts on its own, and a store
//! compacted by a build with the feature is refused rather than read in
//! part.
//!
//! When: after as many new whole envelopes as the last snapshot covers
//! (at least [`AUTO_MIN`]), a few seconds after the threshold is crossed,
//! so the work per envelope stays constant however long the document
//! grows (each compaction reads everything); and whenever the app calls
//! `doc.compact()`.

use mycel_core::crypto::DocKey;
use mycel_core::id::DocId;
use mycel_core::snapshot::SnapshotError;
#[cfg(feature = "snapshots")]
use {
    crate::{Inner, obj, set_timeout, store::Store, with},
    js_sys::Promise,
    mycel_core::{crypto::room_id, snapshot, wire::Envelope},
    std::{cell::RefCell, rc::Weak},
    wasm_bindgen::JsValue,
    wasm_bindgen_futures::JsFuture,
};

#[cfg(not(feature = "snapshots"))]
use crate::Inner;
use crate::error::HostError;

/// New whole envelopes of a document that start a compaction, at least.
#[cfg(feature = "snapshots")]
pub const AUTO_MIN: u64 = 500;
/// How long after the threshold is crossed (a burst of edits goes on).
#[cfg(feature = "snapshots")]
const DELAY_MS: f64 = 3000.0;

impl From<SnapshotError> for HostError {
    fn from(e: SnapshotError) -> Self {
        HostError::Storage(e.to_string())
    }
}

/// A document's stored records as envelopes: the snapshot's rebuilt, then
/// the whole ones. `parts`: how many of `records` are snapshot parts.
pub fn envelopes(
    doc: DocId,
    key: &DocKey,
    records: Vec<Vec<u8>>,
    parts: usize,
) -> Result<(Vec<Vec<u8>>, u64), HostError> {
    if parts == 0 {
        return Ok((records, 0));
    }
    #[cfg(not(feature = "snapshots"))]
    {
        let _ = (doc, key);
        Err(HostError::Storage(UNSUPPORTED.into()))
    }
    #[cfg(feature = "snapshots")]
    let loaded = snapshot::load(doc, Some(key), records)?;
    #[cfg(feature = "snapshots")]
    Ok((loaded.envelopes, loaded.from_snapshot as u64))
}

#[cfg(not(feature = "snapshots"))]
const UNSUPPORTED: &str = "the stored document is compacted into an encrypted snapshot, which this build of mycel cannot read (built without the `snapshots` feature of mycel-wasm)";

impl Inner {
    #[cfg(not(feature = "snapshots"))]
    pub(crate) fn count_stored(&mut self, _: DocId, _: u64, _: Option<u64>) {}

    /// Counts `n` envelopes stored for `doc` (or, with `covered`, sets the
    /// threshold from a fresh snapshot); schedules a compaction once due.
    #[cfg(feature = "snapshots")]
    pub(crate) fn count_stored(&mut self, doc: DocId, n: u64, covered: Option<u64>) {
        let left = self.compact_left.entry(doc).or_insert(AUTO_MIN);
        if let Some(c) = covered {
            *left = c.max(AUTO_MIN);
        }
        *left = left.saturating_sub(n);
        if *left > 0 || self.compacting {
            return;
        }
        self.compacting = true;
        let me = self.me.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let delay = Promise::new(&mut |resolve, _| {
                set_timeout(&resolve, DELAY_MS);
            });
            let _ = JsFuture::from(delay).await;
            if let Err(e) = run(me.clone(), doc).await {
                with(&me, |i| {
                    i.warn(Some(doc), &format!("the document was not compacted: {e}"))
                });
            }
            with(&me, |i| i.compacting = false);
        });
    }
}

/// Compacts `doc`'s records; resolves to `{ covered, kept }`.
#[cfg(feature = "snapshots")]
pub(crate) async fn run(me: Weak<RefCell<Inner>>, doc: DocId) -> Result<JsValue, HostError> {
    let mut open: Result<(std::rc::Rc<Store>, Option<DocKey>), HostError> = Err(HostError::Closed);
    with(&me, |i| {
        open = i.check_open().map(|s| (s, i.keys.get(&doc).cloned()));
    });
    let (store, key) = open?;
    let key = key.ok_or(HostError::UnknownDoc(doc))?;
    let room = room_id(&key, &doc);
    let (records, _) = store.records(&room).await?;
    let mut old = Vec::with_capacity(records.len());
    for r in &records {
        old.push(Envelope::decode(r).map_err(SnapshotError::from)?);
    }
    let mut planned = Err(HostError::Closed);
    with(&me, |i| {
        let identity = i.identity.clone();
        let rng = i.replica.node_mut().rng();
        planned = snapshot::plan(doc, &key, &identity, rng, records).map_err(HostError::from);
    });
    let plan = planned?;
    if let Some(new) = &plan.records {
        let w = store.write()?;
        for env in &old {
            w.delete(&room, env)?;
        }
        for (n, bytes) in new.iter().enumerate() {
            let env = Envelope::decode(bytes).map_err(SnapshotError::from)?;
            if n < plan.parts {
                w.snapshot_part(&room, &env)?;
            } else {
                w.envelope(&room, &env)?;
            }
        }
        w.done().await?;
    }
    // The next one is due after as many new envelopes as this one covers.
    with(&me, |i| i.count_stored(doc, 0, Some(plan.covered as u64)));
    Ok(obj(&[
        ("covered", (plan.covered as f64).into()),
        ("kept", (plan.kept as f64).into()),
    ]))
}
