//! mycel-wasm: mycel in the browser.
//!
//! This crate is the browser host of [`mycel_core`]: compiled to
//! WebAssembly it becomes the npm package `mycel` (`cargo xtask dist`
//! writes it to `wasm/pkg/`). It moves the core's outputs to IndexedDB
//! ([`store`]) and to a WebSocket to the relay, feeds back what comes in,
//! and does nothing a host should not: every protocol decision stays in the
//! core's `Node`.
//!
//! The wasm-bindgen class [`Engine`] is the low-level API; the package's
//! `index.js` wraps it into the documented one (`Repo`, document handles,
//! typed errors; `index.d.ts` has the types):
//!
//! ```js
//! import { Repo } from "mycel";
//! const repo = await Repo.open({ relay: "ws://127.0.0.1:8080/ws" });
//! const doc = await repo.create();
//! doc.on("saved-locally", () => console.log("on disk"));
//! doc.change(d => { d.title = "groceries"; d.items = ["milk"]; });
//! console.log(doc.value(), doc.shareLink());
//! ```
//!
//! Pieces that need no browser are plain Rust, for example the check of
//! a relay address:
//!
//! ```
//! use mycel_wasm::link::check_relay_url;
//! assert!(check_relay_url("ws://127.0.0.1:8080/ws").is_ok());
//! assert!(check_relay_url("http://127.0.0.1:8080/").is_err());
//! ```
#![forbid(unsafe_code)]

mod compact;
pub mod error;
pub mod link;
mod rtc;
pub mod store;
pub mod value;

pub use mycel_core as core;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};

use automerge::{AutomergeError, ChangeHash, ObjType, ROOT};
use js_sys::{Function, Object, Promise, Reflect, Uint8Array};
use mycel_core::crypto::{DocKey, Identity, room_id};
use mycel_core::doc::{Replica, ReplicaError};
use mycel_core::id::{DocId, ShareLink};
use mycel_core::node::{DocAccess, Event, Input, LinkId, LinkKind, NodeConfig, Output};
use mycel_core::time::Timestamp;
use mycel_core::wire::Envelope;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use web_sys::{BinaryType, MessageEvent, WebSocket};

use crate::error::HostError;
use crate::link::check_relay_url;
use crate::store::Store;
use mycel_core::relay_link::{RelayRotation, Retry};

#[wasm_bindgen]
extern "C" {
    // The global timer functions exist in windows and in workers alike.
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(f: &Function, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
}

/// Fresh randomness from the browser (`crypto.getRandomValues`).
fn random32() -> Result<[u8; 32], HostError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| HostError::Engine(format!("the browser gave no randomness: {e}")))?;
    Ok(seed)
}

fn obj(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in pairs {
        // Setting a property of a fresh plain object cannot fail.
        let _ = Reflect::set(&o, &(*k).into(), v);
    }
    o.into()
}

fn parse_doc(doc: &str) -> Result<DocId, HostError> {
    doc.parse::<DocId>().map_err(HostError::Link)
}

/// The relay socket of one connection attempt.
struct Socket {
    ws: WebSocket,
    link: LinkId,
    up: bool,
    _handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl Socket {
    /// Stops every handler, so that a socket being dropped never calls into
    /// a dropped closure.
    fn detach(&self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
    }
}

/// The tab link: a BroadcastChannel shared by every tab of one repo. Each
/// other tab (known by its author slot, unique among live tabs thanks to
/// Web Locks) is a direct link of the node, so tabs sync with each other at
/// once, also offline. Messages: `{ from, to, kind, bytes }` with `to` -1
/// for everyone and `kind` one of hello, welcome, frame, bye.
struct Tabs {
    channel: web_sys::BroadcastChannel,
    slot: u32,
    links: BTreeMap<u32, LinkId>,
    _handler: Closure<dyn FnMut(JsValue)>,
}

impl Tabs {
    fn post(&self, to: Option<u32>, kind: &str, bytes: Option<&[u8]>) {
        let msg = obj(&[
            ("from", self.slot.into()),
            ("to", to.map_or(JsValue::from(-1), JsValue::from)),
            ("kind", kind.into()),
            (
                "bytes",
                bytes.map_or(JsValue::UNDEFINED, |b| Uint8Array::from(b).into()),
            ),
        ]);
        // Posting fails only on a closed channel: the tab is going away.
        let _ = self.channel.post_message(&msg);
    }

    fn slot_of(&self, link: LinkId) -> Option<u32> {
        self.links
            .iter()
            .find(|(_, l)| **l == link)
            .map(|(s, _)| *s)
    }
}

struct Inner {
    me: Weak<RefCell<Inner>>,
    replica: Replica,
    store: Option<Rc<Store>>,
    keys: BTreeMap<DocId, DocKey>,
    /// Heads last reported to subscribers, per document.
    heads: BTreeMap<DocId, Vec<ChangeHash>>,
    epoch_ms: f64,
    emit: Function,
    /// The relays (none: offline only) and which one is in use.
    relays: Option<RelayRotation>,
    socket: Option<Socket>,
    /// Other tabs of this repo (same origin and database).
    tabs: Option<Tabs>,
    /// Direct links (WebRTC): the `RTCConfiguration` to make connections
    /// with and the JS glue that listens to them (none: direct links off),
    /// and the connections.
    rtc: Option<(JsValue, Function)>,
    conns: Vec<rtc::Conn>,
    /// Sockets that closed; dropped only from another callback (a closure
    /// cannot be dropped while it runs).
    graveyard: Vec<Socket>,
    next_link: u64,
    timer: Option<JsValue>,
    reconnect_timer: Option<JsValue>,
    tick_cb: Option<Closure<dyn FnMut()>>,
    reconnect_cb: Option<Closure<dyn FnMut()>>,
    writes_in_flight: u32,
    idle_waiters: Vec<Function>,
    /// After a failed write nothing more is accepted: a change may never be
    /// reported saved on top of a write that did not happen.
    write_failed: Option<String>,
    closed: bool,
    /// Signs snapshot parts (the node keeps its own copy).
    #[cfg_attr(not(feature = "snapshots"), allow(dead_code))]
    identity: Identity,
    /// Per document: whole envelopes to store before the next compaction.
    #[cfg_attr(not(feature = "snapshots"), allow(dead_code))]
    compact_left: BTreeMap<DocId, u64>,
    /// An automatic compaction is scheduled or running.
    #[cfg_attr(not(feature = "snapshots"), allow(dead_code))]
    compacting: bool,
}

/// Runs `f` on the engine behind `me`, if it still exists.
fn with(me: &Weak<RefCell<Inner>>, f: impl FnOnce(&mut Inner)) {
    if let Some(rc) = me.upgrade() {
        // Callbacks come from the event loop, never from inside another
        // call, so the engine is free; a busy one is reported, not a panic.
        match rc.try_borrow_mut() {
            Ok(mut inner) => f(&mut inner),
            Err(_) => web_sys_console_warn("mycel: an event arrived while the engine was busy"),
        }
    }
}

fn web_sys_console_warn(msg: &str) {
    if let Ok(console) = Reflect::get(&js_sys::global(), &"console".into())
        && let Ok(warn) = Reflect::get(&console, &"warn".into())
        && let Some(warn) = warn.dyn_ref::<Function>()
    {
        let _ = warn.call1(&console, &msg.into());
    }
}

impl Inner {
    fn now(&self) -> Timestamp {
        Timestamp((js_sys::Date::now() - self.epoch_ms).max(0.0) as u64)
    }

    fn emit(&self, kind: &str, payload: JsValue) {
        // The wrapper queues events and dispatches them in a microtask, so
        // listeners never run while the engine is borrowed.
        let _ = self.emit.call2(&JsValue::NULL, &kind.into(), &payload);
    }

    fn check_open(&self) -> Result<Rc<Store>, HostError> {
        if self.closed {
            return Err(HostError::Closed);
        }
        if let Some(e) = &self.write_failed {
            return Err(HostError::Storage(format!(
                "an earlier write failed, so nothing more is accepted: {e}"
            )));
        }
        self.store.clone().ok_or(HostError::Closed)
    }

    /// Opens a document in the node with what the store holds of it.
    /// `records`: its stored snapshot parts (the first `parts`) and envelopes.
    fn open_doc(
        &mut self,
        doc: DocId,
        key: DocKey,
        records: Vec<Vec<u8>>,
        parts: usize,
    ) -> Result<(), HostError> {
        let whole = (records.len() - parts) as u64;
        let (stored, covered) = compact::envelopes(doc, &key, records, parts)?;
        let now = self.now();
        self.replica.open(
            now,
            doc,
            DocAccess::Full(key.clone()),
            stored.iter().map(Vec::as_slice),
        )?;
        self.keys.insert(doc, key);
        self.drain();
        // Loading is not a change anyone subscribed to: start reporting from
        // here. Each change then logs its own patches as it is made or
        // applied, at a cost that follows the change, not the document.
        self.replica.record_patches(doc)?;
        let heads = self.replica.doc(doc).map(|d| d.heads()).unwrap_or_default();
        self.heads.insert(doc, heads);
        self.count_stored(doc, whole, Some(covered));
        Ok(())
    }

    /// Moves every output of the node to where it goes.
    fn drain(&mut self) {
        let mut writes: Vec<(DocId, u64, Vec<Envelope>)> = Vec::new();
        while let Some(out) = self.replica.poll() {
            match out {
                Output::Persist {
                    doc,
                    batch,
                    records,
                } => writes.push((doc, batch, records)),
                Output::Send { link, bytes } => {
                    match self
                        .tabs
                        .as_ref()
                        .and_then(|t| t.slot_of(link).map(|s| (t, s)))
                    {
                        Some((tabs, slot)) => tabs.post(Some(slot), "frame", Some(&bytes)),
                        None => {
                            if !self.rtc_send(link, &bytes) {
                                self.send(link, &bytes);
                            }
                        }
                    }
                }
                Output::Event(e) => self.on_event(e),
                Output::WakeAt(t) => self.wake_at(t),
                Output::Apply { .. } => {}
            }
        }
        if !writes.is_empty() {
            self.persist(writes);
        }
    }

    /// Writes envelopes in one strict transaction; acknowledges them to the
    /// node only when it has completed (then `saved-locally` comes out and
    /// the changes may leave the device).
    fn persist(&mut self, writes: Vec<(DocId, u64, Vec<Envelope>)>) {
        if self.write_failed.is_some() {
            return;
        }
        let Some(store) = self.store.clone() else {
            return;
        };
        for (doc, _, records) in &writes {
            self.count_stored(*doc, records.len() as u64, None);
        }
        let mut acks: BTreeMap<DocId, u64> = BTreeMap::new();
        let started = store.write().and_then(|w| {
            for (doc, batch, records) in &writes {
                let room = self
                    .replica
                    .node()
                    .room(*doc)
                    .ok_or(HostError::UnknownDoc(*doc))?;
                for env in records {
                    w.envelope(&room, env)?;
                }
                let a = acks.entry(*doc).or_insert(0);
                *a = (*a).max(*batch);
            }
            Ok(w)
        });
        let w = match started {
            Ok(w) => w,
            Err(e) => return self.write_failed(e),
        };
        self.writes_in_flight += 1;
        let me = self.me.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let result = w.done().await;
            with(&me, |i| {
                i.writes_in_flight = i.writes_in_flight.saturating_sub(1);
                match result {
                    Ok(()) => {
                        let now = i.now();
                        for (doc, batch) in acks {
                            if let Err(e) = i.replica.handle(now, Input::Persisted { doc, batch }) {
                                i.warn(Some(doc), &e.to_string());
                            }
                        }
                        i.drain();
                    }
                    Err(e) => i.write_failed(e),
                }
                if i.writes_in_flight == 0 {
                    for w in i.idle_waiters.drain(..) {
                        let _ = w.call0(&JsValue::NULL);
                    }
                }
            });
        });
    }

    fn write_failed(&mut self, e: HostError) {
        let message = e.to_string();
        self.write_failed = Some(message.clone());
        self.emit(
            "error",
            obj(&[("name", "StorageError".into()), ("message", message.into())]),
        );
    }

    fn warn(&self, doc: Option<DocId>, message: &str) {
        self.emit(
            "warning",
            obj(&[
                (
                    "doc",
                    doc.map_or(JsValue::UNDEFINED, |d| d.to_string().into()),
                ),
                ("message", message.into()),
            ]),
        );
    }

    fn on_event(&mut self, e: Event) {
        let n = |x: u64| JsValue::from(x as f64);
        match e {
            Event::SavedLocally { doc, upto } => self.emit(
                "saved-locally",
                obj(&[("doc", doc.to_string().into()), ("upto", n(upto))]),
            ),
            Event::Sent { doc, upto } => self.emit(
                "sent",
                obj(&[("doc", doc.to_string().into()), ("upto", n(upto))]),
            ),
            Event::StoredRemotely { doc, upto, copies } => self.emit(
                "stored-remotely",
                obj(&[
                    ("doc", doc.to_string().into()),
                    ("upto", n(upto)),
                    ("copies", n(copies as u64)),
                ]),
            ),
            Event::PeerSeen { doc, peer, pinning } => {
                self.emit(
                    "peer",
                    obj(&[
                        ("doc", doc.to_string().into()),
                        ("peer", peer.to_string().into()),
                        ("pinning", pinning.into()),
                    ]),
                );
            }
            Event::LinkWanted {
                doc,
                peer,
                initiator,
            } => self.link_wanted(doc, peer, initiator),
            Event::LinkUnwanted { peer } => self.link_unwanted(peer),
            Event::Signal { doc, peer, payload } => self.on_signal(doc, peer, &payload),
            Event::Presence { doc, peer, state } => self.emit(
                "presence",
                obj(&[
                    ("doc", doc.to_string().into()),
                    ("peer", peer.to_string().into()),
                    ("state", String::from_utf8_lossy(&state).into_owned().into()),
                ]),
            ),
            Event::Changed { doc } => self.notify_change(doc, false),
            Event::Rejected { doc, reason } => {
                self.warn(Some(doc), &format!("refused data from a peer: {reason}"));
                // A refused batch may still have changed the document in part.
                self.notify_change(doc, false);
            }
            Event::Equivocation { doc, author, seq } => self.warn(
                Some(doc),
                &format!("peer {author} signed two different changes #{seq}; the first is kept"),
            ),
            Event::RelayError { code, message, .. } => {
                self.warn(None, &format!("relay error {code}: {message}"))
            }
            _ => {}
        }
    }

    /// Tells subscribers what changed since they last heard.
    fn notify_change(&mut self, doc: DocId, local: bool) {
        let Some(d) = self.replica.doc(doc) else {
            return;
        };
        let now = d.heads();
        let Some(before) = self.heads.get(&doc) else {
            return;
        };
        if *before == now {
            return;
        }
        self.heads.insert(doc, now);
        // No patches: they could not be recorded (see `take_patches`), so
        // the page reads the whole value again (`reset`).
        let recorded = self.replica.take_patches(doc);
        let reset = recorded.is_none();
        let patches = value::patches(recorded.unwrap_or_default());
        self.emit(
            "change",
            obj(&[
                ("doc", doc.to_string().into()),
                ("patches", patches.into()),
                ("local", local.into()),
                ("reset", reset.into()),
            ]),
        );
    }

    fn wake_at(&mut self, t: Timestamp) {
        if let Some(id) = self.timer.take() {
            clear_timeout(&id);
        }
        let ms = t.as_millis().saturating_sub(self.now().as_millis());
        if let Some(cb) = &self.tick_cb {
            self.timer = Some(set_timeout(cb.as_ref().unchecked_ref(), ms as f64));
        }
    }

    fn tick(&mut self) {
        self.timer = None;
        if self.closed {
            return;
        }
        let now = self.now();
        if let Err(e) = self.replica.handle(now, Input::Tick) {
            self.warn(None, &e.to_string());
        }
        self.drain();
    }

    // ---- the relay link -------------------------------------------------

    fn send(&mut self, link: LinkId, bytes: &[u8]) {
        if let Some(s) = &self.socket
            && s.link == link
            && s.up
        {
            // A failed send is followed by a close event, which reconnects.
            let _ = s.ws.send_with_u8_array(bytes);
        }
    }

    fn connect(&mut self) {
        self.graveyard.clear();
        let Some(url) = self.relays.as_ref().map(|r| r.current().to_string()) else {
            return;
        };
        if self.closed || self.socket.is_some() {
            return;
        }
        let ws = match WebSocket::new(&url) {
            Ok(ws) => ws,
            Err(_) => return self.schedule_reconnect(false),
        };
        ws.set_binary_type(BinaryType::Arraybuffer);
        self.next_link += 1;
        let link = LinkId(self.next_link);
        let (a, b, c) = (self.me.clone(), self.me.clone(), self.me.clone());
        let on_open = Closure::<dyn FnMut(JsValue)>::new(move |_| with(&a, |i| i.on_open(link)));
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            if let Some(e) = e.dyn_ref::<MessageEvent>() {
                let data = e.data();
                with(&b, |i| i.on_message(link, &data));
            }
        });
        let on_close = Closure::<dyn FnMut(JsValue)>::new(move |_| with(&c, |i| i.on_close(link)));
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        self.socket = Some(Socket {
            ws,
            link,
            up: false,
            _handlers: vec![on_open, on_message, on_close],
        });
    }

    fn on_open(&mut self, link: LinkId) {
        let Some(s) = self.socket.as_mut().filter(|s| s.link == link) else {
            return;
        };
        s.up = true;
        if let Some(r) = self.relays.as_mut() {
            r.connected();
        }
        let now = self.now();
        if let Err(e) = self.replica.handle(
            now,
            Input::LinkUp {
                link,
                kind: LinkKind::Relay,
            },
        ) {
            self.warn(None, &e.to_string());
        }
        self.emit("status", obj(&[("online", true.into())]));
        self.drain();
    }

    fn on_message(&mut self, link: LinkId, data: &JsValue) {
        if !self.socket.as_ref().is_some_and(|s| s.link == link && s.up) {
            return;
        }
        let bytes = Uint8Array::new(data).to_vec();
        let now = self.now();
        // A bad frame is the sender's problem: report it and go on.
        if let Err(e) = self.replica.handle(now, Input::Received { link, bytes }) {
            self.warn(None, &format!("ignored a frame from the relay: {e}"));
        }
        self.drain();
    }

    fn on_close(&mut self, link: LinkId) {
        if self.socket.as_ref().is_none_or(|s| s.link != link) {
            return;
        }
        let Some(s) = self.socket.take() else {
            return;
        };
        let was_up = s.up;
        self.graveyard.push(s);
        if was_up {
            let now = self.now();
            if let Err(e) = self.replica.handle(now, Input::LinkDown { link }) {
                self.warn(None, &e.to_string());
            }
            self.emit("status", obj(&[("online", false.into())]));
            self.drain();
        }
        if !self.closed {
            self.schedule_reconnect(was_up);
        }
    }

    /// After a link that was up dropped (`was_up`), or an attempt failed:
    /// the next relay at once, or the same after a backoff.
    fn schedule_reconnect(&mut self, was_up: bool) {
        let random = self.replica.node_mut().rng().u64();
        let Some(relays) = self.relays.as_mut() else {
            return;
        };
        let retry = if was_up {
            relays.lost(random)
        } else {
            relays.connect_failed(random)
        };
        let delay = match retry {
            Retry::Now => 0.0,
            Retry::After(d) => d.as_secs_f64() * 1000.0,
        };
        // Through a timer even when at once: this runs inside the old
        // socket's callback, which must return before the next connects.
        if let Some(cb) = &self.reconnect_cb {
            self.reconnect_timer = Some(set_timeout(cb.as_ref().unchecked_ref(), delay));
        }
    }

    fn status(&self) -> JsValue {
        let docs = Object::new();
        for doc in self.keys.keys() {
            let peers = self.replica.node().sync_status(*doc);
            let _ = Reflect::set(
                &docs,
                &doc.to_string().into(),
                &obj(&[
                    ("peers", (peers.len() as f64).into()),
                    ("synced", peers.iter().all(|p| p.synced()).into()),
                    (
                        "pinningPeers",
                        (peers.iter().filter(|p| p.pinning).count() as f64).into(),
                    ),
                ]),
            );
        }
        let online = self.socket.as_ref().is_some_and(|s| s.up);
        let stats = self.replica.node().stats();
        obj(&[
            ("peers", self.rtc_status()),
            ("bytesDirect", (stats.bytes_out_direct as f64).into()),
            ("bytesRelay", (stats.bytes_out_relay as f64).into()),
            ("online", online.into()),
            (
                "relay",
                self.relays
                    .as_ref()
                    .map_or(JsValue::NULL, |r| JsValue::from(r.current())),
            ),
            ("peerId", self.replica.node().peer_id().to_string().into()),
            ("docs", docs.into()),
        ])
    }

    // ---- other tabs ----------------------------------------------------

    fn open_tabs(&mut self, name: &str, slot: u32) {
        let Ok(channel) = web_sys::BroadcastChannel::new(&format!("mycel:{name}")) else {
            // No BroadcastChannel (an old browser): tabs meet through the relay.
            return;
        };
        let me = self.me.clone();
        let handler = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            if let Some(e) = e.dyn_ref::<MessageEvent>() {
                let data = e.data();
                with(&me, |i| i.on_tab_message(&data));
            }
        });
        channel.set_onmessage(Some(handler.as_ref().unchecked_ref()));
        let tabs = Tabs {
            channel,
            slot,
            links: BTreeMap::new(),
            _handler: handler,
        };
        tabs.post(None, "hello", None);
        self.tabs = Some(tabs);
    }

    /// The link to the tab in `slot`, made (and announced to the node) if new.
    fn tab_link(&mut self, slot: u32, fresh: bool) -> Option<LinkId> {
        let tabs = self.tabs.as_mut()?;
        let old = tabs.links.get(&slot).copied();
        if let Some(link) = old
            && !fresh
        {
            return Some(link);
        }
        self.next_link += 1;
        let link = LinkId(self.next_link);
        tabs.links.insert(slot, link);
        let now = self.now();
        if let Some(old) = old {
            // The slot's previous tab is gone (it said hello again after a reload).
            let _ = self.replica.handle(now, Input::LinkDown { link: old });
        }
        if let Err(e) = self.replica.handle(
            now,
            Input::LinkUp {
                link,
                kind: LinkKind::Direct,
            },
        ) {
            self.warn(None, &e.to_string());
        }
        Some(link)
    }

    fn on_tab_message(&mut self, data: &JsValue) {
        if self.closed {
            return;
        }
        let field = |k: &str| Reflect::get(data, &k.into()).unwrap_or(JsValue::UNDEFINED);
        let (Some(from), Some(to), Some(kind)) = (
            field("from").as_f64(),
            field("to").as_f64(),
            field("kind").as_string(),
        ) else {
            return;
        };
        let Some(mine) = self.tabs.as_ref().map(|t| t.slot) else {
            return;
        };
        let from = from as u32;
        if from == mine || (to >= 0.0 && to as u32 != mine) {
            return;
        }
        match kind.as_str() {
            "hello" => {
                self.tab_link(from, true);
                if let Some(t) = &self.tabs {
                    t.post(Some(from), "welcome", None);
                }
            }
            "welcome" => {
                self.tab_link(from, false);
            }
            "frame" => {
                let bytes = field("bytes");
                if let (Some(link), Some(bytes)) =
                    (self.tab_link(from, false), bytes.dyn_ref::<Uint8Array>())
                {
                    let now = self.now();
                    let input = Input::Received {
                        link,
                        bytes: bytes.to_vec(),
                    };
                    if let Err(e) = self.replica.handle(now, input) {
                        self.warn(None, &format!("ignored a frame from another tab: {e}"));
                    }
                }
            }
            "bye" => {
                if let Some(link) = self.tabs.as_mut().and_then(|t| t.links.remove(&from)) {
                    let now = self.now();
                    let _ = self.replica.handle(now, Input::LinkDown { link });
                }
            }
            _ => {}
        }
        self.drain();
    }

    fn close(&mut self) {
        self.closed = true;
        self.close_conns();
        if let Some(tabs) = self.tabs.take() {
            tabs.post(None, "bye", None);
            tabs.channel.set_onmessage(None);
            tabs.channel.close();
        }
        for t in [self.timer.take(), self.reconnect_timer.take()]
            .into_iter()
            .flatten()
        {
            clear_timeout(&t);
        }
        if let Some(s) = self.socket.take() {
            s.detach();
            let _ = s.ws.close();
            self.graveyard.push(s);
        }
        if let Some(store) = self.store.take() {
            match Rc::try_unwrap(store) {
                Ok(store) => store.close(),
                Err(shared) => shared.close_writes(),
            }
        }
    }
}

/// The engine of one repo: a replica, its IndexedDB store and its relay
/// link. The package's `index.js` wraps it; use that API.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<RefCell<Inner>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.inner.try_borrow() {
            Ok(i) => f
                .debug_struct("Engine")
                .field("replica", &i.replica)
                .field("online", &i.socket.as_ref().is_some_and(|s| s.up))
                .finish_non_exhaustive(),
            Err(_) => f.write_str("Engine(busy)"),
        }
    }
}

impl Engine {
    fn inner(&self) -> Result<std::cell::RefMut<'_, Inner>, HostError> {
        self.inner.try_borrow_mut().map_err(|_| {
            HostError::Engine("the repo was called from inside one of its own callbacks".into())
        })
    }

    /// Registers a document (durably) and opens it; resolves to its id.
    fn add_doc(&self, doc: DocId, key: DocKey) -> Result<Promise, HostError> {
        let store = self.inner()?.check_open()?;
        let weak = Rc::downgrade(&self.inner);
        Ok(future_to_promise(async move {
            // Envelopes another tab may already hold for the room.
            let (stored, parts) = store.records(&room_id(&key, &doc)).await?;
            let w = store.write()?;
            w.doc(&doc, &key)?;
            // The entry commits before any envelope of the document (write
            // transactions complete in the order they were begun).
            let mut opened = Ok(());
            with(&weak, |i| {
                if !i.keys.contains_key(&doc) {
                    opened = i.open_doc(doc, key, stored, parts);
                    // Other tabs dropped the vectors they sent for this
                    // document while it was not open here: a hello makes
                    // them start afresh, so live pushes flow at once
                    // instead of after the next anti-entropy round.
                    if let Some(t) = &i.tabs {
                        t.post(None, "hello", None);
                    }
                }
            });
            opened?;
            w.done().await?;
            Ok(JsValue::from(doc.to_string()))
        }))
    }
}

#[wasm_bindgen]
impl Engine {
    /// Opens the repo stored in the IndexedDB database `name`, as author
    /// slot `slot`; `relays` are WebSocket URLs, in order of preference
    /// (the relays of one deployment; empty: offline only);
    /// `emit(kind, payload)` receives events and must not call the engine
    /// synchronously; `rtc` is the `RTCConfiguration` of direct links
    /// (WebRTC data channels to peers) and `glue(link, what, x)` the JS
    /// that listens to them (see the `rtc` module), or both null to use
    /// the relay alone.
    pub async fn open(
        name: String,
        slot: u32,
        relays: Vec<String>,
        emit: Function,
        rtc: JsValue,
        glue: Option<Function>,
    ) -> Result<Engine, JsValue> {
        for url in &relays {
            check_relay_url(url).map_err(HostError::Relay)?;
        }
        let relays = RelayRotation::new(relays).ok();
        let store = Store::open(&name).await?;
        let secret = match store.identity(slot).await? {
            Some(s) => s,
            None => {
                let s = random32()?;
                let w = store.write()?;
                w.identity(slot, &s)?;
                w.done().await?;
                s
            }
        };
        let mut docs = Vec::new();
        for (doc, key) in store.docs().await? {
            let (stored, parts) = store.records(&room_id(&key, &doc)).await?;
            docs.push((doc, key, stored, parts));
        }
        // Direct links on: each document's gossip swarm picks the peers
        // to link with (`LinkWanted`).
        let config = NodeConfig {
            mesh: rtc
                .is_object()
                .then(mycel_core::gossip::GossipConfig::default),
            ..NodeConfig::default()
        };
        let identity = Identity::from_secret(secret);
        let replica = Replica::new(identity.clone(), config, random32()?);
        let inner = Rc::new_cyclic(|me: &Weak<RefCell<Inner>>| {
            let (a, b) = (me.clone(), me.clone());
            RefCell::new(Inner {
                me: me.clone(),
                replica,
                store: Some(Rc::new(store)),
                keys: BTreeMap::new(),
                heads: BTreeMap::new(),
                epoch_ms: js_sys::Date::now(),
                emit,
                relays,
                socket: None,
                graveyard: Vec::new(),
                next_link: 0,
                timer: None,
                reconnect_timer: None,
                tick_cb: Some(Closure::new(move || with(&a, Inner::tick))),
                reconnect_cb: Some(Closure::new(move || {
                    with(&b, |i| {
                        i.reconnect_timer = None;
                        i.connect();
                    })
                })),
                writes_in_flight: 0,
                idle_waiters: Vec::new(),
                write_failed: None,
                closed: false,
                tabs: None,
                rtc: glue.filter(|_| rtc.is_object()).map(|g| (rtc, g)),
                conns: Vec::new(),
                identity,
                compact_left: BTreeMap::new(),
                compacting: false,
            })
        });
        {
            let mut i = inner.borrow_mut();
            for (doc, key, stored, parts) in docs {
                i.open_doc(doc, key, stored, parts)?;
            }
            i.open_tabs(&name, slot);
            i.connect();
        }
        Ok(Engine { inner })
    }

    /// This replica's peer id (its author key).
    #[wasm_bindgen(js_name = peerId)]
    pub fn peer_id(&self) -> Result<String, JsValue> {
        Ok(self.inner()?.replica.node().peer_id().to_string())
    }

    /// Ids of every document in the repo.
    pub fn docs(&self) -> Result<Vec<String>, JsValue> {
        Ok(self.inner()?.keys.keys().map(ToString::to_string).collect())
    }

    /// Creates a document; resolves to its id once it is registered on disk.
    pub fn create(&self) -> Result<Promise, JsValue> {
        let (doc, key) = {
            let mut i = self.inner()?;
            i.check_open()?;
            let rng = i.replica.node_mut().rng();
            (DocId(rng.array()), DocKey::generate(rng))
        };
        Ok(self.add_doc(doc, key)?)
    }

    /// Opens the document of a share link; resolves to its id. A link
    /// whose key differs from the one held for the document is refused.
    pub fn find(&self, link: &str) -> Result<Promise, JsValue> {
        let link: ShareLink = link.parse().map_err(HostError::Link)?;
        {
            let i = self.inner()?;
            i.check_open()?;
            if let Some(key) = i.keys.get(&link.doc) {
                if *key != link.key {
                    return Err(HostError::KeyMismatch(link.doc).into());
                }
                let id = JsValue::from(link.doc.to_string());
                return Ok(future_to_promise(async move { Ok(id) }));
            }
        }
        Ok(self.add_doc(link.doc, link.key)?)
    }

    /// The share link of a document (`base#d=…&k=…`).
    #[wasm_bindgen(js_name = shareLink)]
    pub fn share_link(&self, doc: &str, base: &str) -> Result<String, JsValue> {
        let doc = parse_doc(doc)?;
        let i = self.inner()?;
        let key = i.keys.get(&doc).ok_or(HostError::UnknownDoc(doc))?;
        Ok(ShareLink {
            base: base.to_owned(),
            doc,
            key: key.clone(),
        }
        .to_string())
    }

    /// The pin link of a document (`base#d=…&r=…`: no key).
    #[wasm_bindgen(js_name = pinLink)]
    pub fn pin_link(&self, doc: &str, base: &str) -> Result<String, JsValue> {
        let link = self.share_link(doc, base)?;
        let link: ShareLink = link.parse().map_err(HostError::Link)?;
        Ok(link.pin_link().to_string())
    }

    /// The document as a plain JS object.
    pub fn value(&self, doc: &str) -> Result<JsValue, JsValue> {
        let doc = parse_doc(doc)?;
        let i = self.inner()?;
        let d = i.replica.doc(doc).ok_or(HostError::UnknownDoc(doc))?;
        Ok(value::to_js(d.automerge(), &ROOT, ObjType::Map))
    }

    /// Applies recorded operations (see [`value`]) as one change.
    pub fn change(&self, doc: &str, ops: JsValue) -> Result<(), JsValue> {
        let doc = parse_doc(doc)?;
        let ops = value::ops(&ops).map_err(HostError::Change)?;
        let mut i = self.inner()?;
        i.check_open()?;
        let now = i.now();
        let mut failure = None;
        let result = i.replica.change(now, doc, |tx| {
            value::apply(tx, &ops).map_err(|e| {
                failure = Some(e);
                AutomergeError::Fail
            })
        });
        match (result, failure) {
            (Ok(()), _) => {}
            (Err(ReplicaError::Automerge(_)), Some(why)) => {
                return Err(HostError::Change(why).into());
            }
            (Err(e), _) => return Err(HostError::from(e).into()),
        }
        i.notify_change(doc, true);
        i.drain();
        Ok(())
    }

    /// Sets this tab's presence in a document (the app's text, e.g. JSON
    /// with a name and a colour; empty to leave): sealed under the
    /// document key, signed, sent to its peers, never stored.
    #[wasm_bindgen(js_name = setPresence)]
    pub fn set_presence(&self, doc: &str, state: &str) -> Result<(), JsValue> {
        let doc = parse_doc(doc)?;
        let mut i = self.inner()?;
        i.check_open()?;
        let now = i.now();
        let input = Input::SetPresence {
            doc,
            state: state.as_bytes().to_vec(),
        };
        i.replica.handle(now, input).map_err(HostError::from)?;
        i.drain();
        Ok(())
    }

    /// The presence of the peers of a document heard from in the last
    /// 30 s: `[{ peer, state }]`.
    pub fn presence(&self, doc: &str) -> Result<JsValue, JsValue> {
        let doc = parse_doc(doc)?;
        let i = self.inner()?;
        let list = js_sys::Array::new();
        for (peer, state) in i.replica.node().presence(doc) {
            list.push(&obj(&[
                ("peer", peer.to_string().into()),
                ("state", String::from_utf8_lossy(&state).into_owned().into()),
            ]));
        }
        Ok(list.into())
    }

    /// Online state, relay, and per document the peers met and whether
    /// each side holds everything the other holds.
    pub fn status(&self) -> Result<JsValue, JsValue> {
        Ok(self.inner()?.status())
    }

    /// Compacts a document's storage into an encrypted snapshot (see
    /// `compact.rs`); resolves to `{ covered, kept }` (envelopes now held
    /// by the snapshot, envelopes stored whole). Only in builds with the
    /// `snapshots` feature (the package's `compact()` says so otherwise).
    #[cfg(feature = "snapshots")]
    pub fn compact(&self, doc: &str) -> Result<Promise, JsValue> {
        let doc = parse_doc(doc)?;
        self.inner()?.check_open()?;
        let me = Rc::downgrade(&self.inner);
        Ok(future_to_promise(async move {
            Ok(compact::run(me, doc).await?)
        }))
    }

    /// Resolves when every write begun so far has completed.
    pub fn flushed(&self) -> Result<Promise, JsValue> {
        let mut i = self.inner()?;
        if i.writes_in_flight == 0 {
            return Ok(future_to_promise(async { Ok(JsValue::UNDEFINED) }));
        }
        let mut waiter = None;
        let p = Promise::new(&mut |resolve, _| waiter = Some(resolve));
        i.idle_waiters.extend(waiter);
        Ok(p)
    }

    /// An event of a direct link, from the JS glue: `kind` says which
    /// (see the `rtc` module), `value` carries what it needs.
    #[wasm_bindgen(js_name = rtcEvent)]
    pub fn rtc_event(&self, link: f64, kind: u32, value: JsValue) -> Result<(), JsValue> {
        self.inner()?.on_rtc(LinkId(link as u64), kind, value);
        Ok(())
    }

    /// Closes the relay link and the database. Later calls throw `ClosedError`.
    pub fn close(&self) -> Result<(), JsValue> {
        self.inner()?.close();
        Ok(())
    }
}
