//! WebRTC data channels: the node's direct links in the browser
//! (docs/protocol.md §5.3, DESIGN §7).
//!
//! One `RTCPeerConnection` per peer, whatever documents the two share (the
//! node multiplexes them by room), carrying one data channel labelled
//! `mycel`. The side with the smaller peer id creates the connection, the
//! channel and the offer; the other answers the offer when it arrives, so
//! two attempts never collide. Offer, answer and trickled ICE candidates
//! are the browser's own `toJSON()` forms, sent as the node's signals
//! through the relay (sealed and signed by the core).
//!
//! This module drives each connection through web-sys: it makes it, its
//! channel, the offer and the answer (`setLocalDescription({})`, which
//! makes whichever the connection's state calls for), applies the peer's
//! description and candidates, and sends on the channel. Listening is left
//! to a few lines of the package's JS (`rtcGlue` in index.js), which hand
//! each event to [`crate::Engine::rtc_event`] as a number and the one value
//! it needs: closures and event types read in Rust cost the browser's
//! `.wasm` several KB, over its size budget (docs/design-decisions.md). A
//! closed repo gets no more events (the JS checks), so no handler can run
//! into freed memory.

use js_sys::{JSON, Object, Promise, Uint8Array};
use mycel_core::channel::{Reassembler, chunks};
use mycel_core::id::{DocId, PeerId};
use mycel_core::node::{Input, LinkId, LinkKind, PeerTraffic};
use mycel_core::wire::MAX_FRAME;
use wasm_bindgen::prelude::*;
use web_sys::{RtcDataChannel, RtcPeerConnection};

use crate::{Inner, obj};

/// Unsent channel data beyond this means a slow peer: the channel is
/// closed rather than buffered without bound, and the relay takes over.
const MAX_BUFFERED: u32 = 8 << 20;
/// The peer's candidates kept while its description is not applied yet.
const MAX_QUEUED: usize = 64;

/// What the JS glue reports ([`crate::Engine::rtc_event`]'s `kind`).
pub(crate) mod ev {
    /// A local ICE candidate: its JSON.
    pub const CANDIDATE: u32 = 0;
    /// The signaling state changed: the local description's JSON, or null.
    pub const SIGNALING: u32 = 1;
    /// The peer's `mycel` channel arrived (answering side), already wired.
    pub const CHANNEL: u32 = 2;
    pub const OPEN: u32 = 3;
    /// A channel message: its bytes.
    pub const MESSAGE: u32 = 4;
    /// The channel closed or failed, or the connection did.
    pub const CLOSED: u32 = 5;
    /// Not open 20 s after it was made, or a negotiation step the browser
    /// refused.
    pub const FAILED: u32 = 6;
}

/// What the engine asks of the JS glue (`glue(link, what, x)`).
const WIRE_PC: u32 = 0;
const WIRE_DC: u32 = 1;
const WATCH: u32 = 2;

/// The direct link to one peer, from the first negotiation step until it
/// closes.
pub(crate) struct Conn {
    peer: PeerId,
    /// The document whose relay room carries this connection's signals.
    doc: DocId,
    link: LinkId,
    initiator: bool,
    pc: RtcPeerConnection,
    dc: Option<RtcDataChannel>,
    /// The channel is open and the node was told (`LinkUp`).
    up: bool,
    /// Our offer or answer went out.
    described: bool,
    /// The peer's candidates that came before its description.
    queued: Vec<JsValue>,
    rx: Reassembler,
}

impl Inner {
    /// Hands `x` to the JS glue: a connection or channel to listen to, or
    /// a promise whose rejection fails the connection.
    fn glue(&self, link: LinkId, what: u32, x: &JsValue) {
        if let Some((_, glue)) = &self.rtc {
            let _ = glue.call3(&JsValue::NULL, &(link.0 as f64).into(), &what.into(), x);
        }
    }

    /// A direct link to `peer` is wanted (the core's gossip put it in a
    /// document's active view). Only the initiator starts one; the other
    /// side waits for its offer.
    pub(crate) fn link_wanted(&mut self, doc: DocId, peer: PeerId, initiator: bool) {
        if initiator && !self.conns.iter().any(|c| c.peer == peer) {
            self.connect_to(doc, peer, true);
        }
    }

    /// No document wants the link to `peer` any more.
    pub(crate) fn link_unwanted(&mut self, peer: PeerId) {
        if let Some(at) = self.conns.iter().position(|c| c.peer == peer) {
            self.drop_conn(at, false);
        }
    }

    /// Makes the connection; the initiator also its channel and offer.
    fn connect_to(&mut self, doc: DocId, peer: PeerId, initiator: bool) -> Option<usize> {
        if self.closed {
            return None;
        }
        let (config, _) = self.rtc.as_ref()?;
        let Ok(pc) = RtcPeerConnection::new_with_configuration(config.unchecked_ref()) else {
            self.warn(
                None,
                "no direct link: the browser refused to make a connection (check iceServers)",
            );
            return None;
        };
        self.next_link += 1;
        let link = LinkId(self.next_link);
        self.glue(link, WIRE_PC, &pc);
        let mut dc = None;
        if initiator {
            // Ordered and reliable: the defaults.
            let ch = pc.create_data_channel("mycel");
            self.glue(link, WIRE_DC, &ch);
            dc = Some(ch);
            self.describe(link, &pc);
        }
        self.conns.push(Conn {
            peer,
            doc,
            link,
            initiator,
            pc,
            dc,
            up: false,
            described: false,
            queued: Vec::new(),
            rx: Reassembler::new(MAX_FRAME),
        });
        Some(self.conns.len() - 1)
    }

    /// `setLocalDescription({})`: the browser makes the offer or the
    /// answer that the connection's state calls for.
    fn describe(&self, link: LinkId, pc: &RtcPeerConnection) {
        self.watch(
            link,
            pc.set_local_description(Object::new().unchecked_ref()),
        );
    }

    /// A negotiation step the browser refuses fails the connection.
    fn watch(&self, link: LinkId, p: Promise) {
        self.glue(link, WATCH, &p);
    }

    /// A signal from `peer`: its offer, answer or one ICE candidate.
    /// Anything else, or a step out of turn, is ignored.
    pub(crate) fn on_signal(&mut self, doc: DocId, peer: PeerId, payload: &[u8]) {
        if self.rtc.is_none() {
            return;
        }
        let Some(msg) = std::str::from_utf8(payload)
            .ok()
            .and_then(|t| JSON::parse(t).ok())
            .filter(JsValue::is_object)
        else {
            return;
        };
        let field = |k: &str| js_sys::Reflect::get(&msg, &k.into()).unwrap_or(JsValue::UNDEFINED);
        let kind = field("type").as_string();
        let is_candidate = field("candidate").is_string();
        let at = self.conns.iter().position(|c| c.peer == peer);
        match kind.as_deref() {
            Some("offer") => {
                // Only the smaller peer id offers; an offer from the other
                // side would be glare, which the rule excludes.
                // And only a peer this side wants (protocol.md §5.3): its
                // gossip `Neighbor` came first on the same relay link, so
                // a wanted peer is known by now; others' attempts time out.
                let node = self.replica.node();
                if node.peer_id() < peer || !node.wants_link(&peer) {
                    return;
                }
                // A new offer from a peer already known: it restarted, so
                // its old connection is dead.
                if let Some(old) = at {
                    self.drop_conn(old, false);
                }
                if let Some(at) = self.connect_to(doc, peer, false) {
                    let c = &self.conns[at];
                    self.watch(c.link, c.pc.set_remote_description(msg.unchecked_ref()));
                    // Chained after the offer: the browser makes the answer.
                    self.describe(c.link, &c.pc);
                }
            }
            Some("answer") => {
                if let Some(c) = at.map(|a| &self.conns[a])
                    && c.initiator
                    && c.pc.remote_description().is_none()
                {
                    self.watch(c.link, c.pc.set_remote_description(msg.unchecked_ref()));
                }
            }
            _ if is_candidate => {
                let Some(c) = at.map(|a| &mut self.conns[a]) else {
                    return;
                };
                if c.pc.remote_description().is_some() {
                    let p = add_candidate(&c.pc, &msg);
                    let link = c.link;
                    self.watch(link, p);
                } else if c.queued.len() < MAX_QUEUED {
                    c.queued.push(msg);
                }
            }
            _ => {}
        }
    }

    /// An event of the connection behind `link`, from the JS glue (see
    /// [`ev`]).
    pub(crate) fn on_rtc(&mut self, link: LinkId, kind: u32, v: JsValue) {
        let Some(at) = self.conns.iter().position(|c| c.link == link) else {
            return;
        };
        let c = &mut self.conns[at];
        match kind {
            ev::CANDIDATE => {
                if let Some(text) = v.as_string() {
                    let (doc, peer) = (c.doc, c.peer);
                    self.signal(doc, peer, text.into_bytes());
                }
            }
            ev::SIGNALING => {
                // The peer's description is in: its queued candidates can
                // follow it.
                let mut added = Vec::new();
                if c.pc.remote_description().is_some() {
                    for cand in std::mem::take(&mut c.queued) {
                        added.push(add_candidate(&c.pc, &cand));
                    }
                }
                // Our offer or answer is made: send it, once.
                let text = v.as_string().filter(|_| !c.described);
                c.described |= text.is_some();
                let (doc, peer) = (c.doc, c.peer);
                for p in added {
                    self.watch(link, p);
                }
                if let Some(text) = text {
                    self.signal(doc, peer, text.into_bytes());
                }
            }
            ev::CHANNEL if c.dc.is_none() && !c.initiator => c.dc = Some(v.unchecked_into()),
            ev::OPEN if !c.up => {
                c.up = true;
                self.feed(Input::LinkUp {
                    link,
                    kind: LinkKind::Direct,
                });
            }
            ev::MESSAGE => {
                let msg = Uint8Array::new(&v).to_vec();
                match c.rx.push(&msg) {
                    Ok(None) => {}
                    Ok(Some(bytes)) => self.feed(Input::Received { link, bytes }),
                    Err(e) => {
                        self.warn(None, &e.to_string());
                        self.drop_conn(at, true);
                    }
                }
            }
            // A connection that opened has no connect timer left to fail.
            ev::FAILED if c.up => {}
            ev::CLOSED | ev::FAILED => self.drop_conn(at, true),
            _ => {}
        }
        self.drain();
    }

    /// Sends an offer, answer or candidate (JSON) to `peer`.
    fn signal(&mut self, doc: DocId, peer: PeerId, payload: Vec<u8>) {
        self.feed(Input::Signal { doc, peer, payload });
    }

    /// Feeds the node; an error (bad input from the network, no route for
    /// a signal) is reported as a warning, the link goes on. One call site
    /// for the node's input, which keeps the `.wasm` smaller.
    #[inline(never)]
    fn feed(&mut self, input: Input) {
        let now = self.now();
        if let Err(e) = self.replica.handle(now, input) {
            self.warn(None, &e.to_string());
        }
    }

    /// Sends a frame on a direct link; false when `link` is not one.
    pub(crate) fn rtc_send(&mut self, link: LinkId, bytes: &[u8]) -> bool {
        let Some(at) = self.conns.iter().position(|c| c.link == link) else {
            return false;
        };
        let c = &self.conns[at];
        let Some(dc) = c.dc.as_ref().filter(|_| c.up) else {
            return true;
        };
        let sent = chunks(bytes).all(|m| dc.send_with_u8_array(&m).is_ok());
        // A channel that refuses a message is closed (possibly from
        // outside, which fires no event); one that cannot keep up is
        // closed too. Either way the relay takes over.
        if !sent || dc.buffered_amount() > MAX_BUFFERED {
            self.drop_conn(at, true);
        }
        true
    }

    /// Ends the connection at `at` and tells the node: `LinkDown` for an
    /// open link; for one that never came up (`failed`), that the peer is
    /// not reachable directly.
    pub(crate) fn drop_conn(&mut self, at: usize, failed: bool) {
        let c = self.conns.swap_remove(at);
        // Closing the connection closes its channel.
        c.pc.close();
        if c.up {
            self.feed(Input::LinkDown { link: c.link });
        } else if failed {
            // Gossip picks another peer.
            self.feed(Input::DirectFailed { peer: c.peer });
        }
    }

    /// `{ [peer]: { direct, bytesDirect, bytesRelay } }` for every peer
    /// met, the bytes summed over the documents shared with it.
    pub(crate) fn rtc_status(&self) -> JsValue {
        let mut all: Vec<PeerTraffic> = Vec::new();
        for doc in self.keys.keys() {
            for t in self
                .replica
                .node()
                .traffic(*doc)
                .map(|t| t.peers)
                .unwrap_or_default()
            {
                match all.iter_mut().find(|a| a.peer == t.peer) {
                    Some(a) => {
                        a.bytes_direct += t.bytes_direct;
                        a.bytes_relay += t.bytes_relay;
                    }
                    None => all.push(t),
                }
            }
        }
        let peers = Object::new();
        for t in all {
            let _ = js_sys::Reflect::set(
                &peers,
                &t.peer.to_string().into(),
                &obj(&[
                    (
                        "direct",
                        self.conns.iter().any(|c| c.peer == t.peer && c.up).into(),
                    ),
                    ("bytesDirect", (t.bytes_direct as f64).into()),
                    ("bytesRelay", (t.bytes_relay as f64).into()),
                ]),
            );
        }
        peers.into()
    }

    pub(crate) fn close_conns(&mut self) {
        while !self.conns.is_empty() {
            self.drop_conn(0, false);
        }
    }
}

fn add_candidate(pc: &RtcPeerConnection, cand: &JsValue) -> Promise {
    pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(cand.unchecked_ref()))
}
