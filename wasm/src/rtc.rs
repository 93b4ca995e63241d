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
//! Written for a small `.wasm` (the package has a gzipped size budget):
//! one closure per connection receives every event of the connection and
//! its channel, the connect timer and any failed negotiation step; the
//! event's `type` says which it is. Negotiation needs no promise results:
//! `setLocalDescription({})` makes the offer or answer itself, and the
//! `signalingstatechange` that follows each step is where the next one is
//! taken (send the local description, add queued candidates).

use js_sys::{Function, JSON, Object, Promise, Reflect, Uint8Array};
use mycel_core::channel::{Reassembler, chunks};
use mycel_core::id::{DocId, PeerId};
use mycel_core::node::{Input, LinkId, LinkKind};
use mycel_core::wire::MAX_FRAME;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::*;
use web_sys::{
    Event, EventTarget, MessageEvent, RtcDataChannel, RtcDataChannelType, RtcPeerConnection,
};

use crate::{Inner, clear_timeout, obj, set_timeout, with};

/// A connection whose channel is not open by then has failed (§5.3).
const CONNECT_MS: f64 = 20_000.0;
/// Unsent channel data beyond this means a slow peer: the channel is
/// closed rather than buffered without bound, and the relay takes over.
const MAX_BUFFERED: u32 = 8 << 20;
const LABEL: &str = "mycel";

const PC_EVENTS: [&str; 4] = [
    "icecandidate",
    "signalingstatechange",
    "connectionstatechange",
    "datachannel",
];
const DC_EVENTS: [&str; 4] = ["open", "message", "close", "error"];

/// The direct link to one peer, from the first negotiation step until it
/// closes.
pub(crate) struct Conn {
    pub(crate) peer: PeerId,
    /// The document whose relay room carries this connection's signals.
    doc: DocId,
    pub(crate) link: LinkId,
    initiator: bool,
    pc: RtcPeerConnection,
    dc: Option<RtcDataChannel>,
    /// The channel is open and the node was told (`LinkUp`).
    pub(crate) up: bool,
    /// Our offer or answer went out.
    described: bool,
    /// The peer's candidates that came before its description.
    queued: Vec<JsValue>,
    rx: Reassembler,
    timer: JsValue,
    handler: Closure<dyn FnMut(JsValue)>,
}

impl Conn {
    fn handler(&self) -> &Function {
        self.handler.as_ref().unchecked_ref()
    }

    /// Stops the connection; no event of it reaches the engine afterwards
    /// (a closed connection fires none, and its timer is cleared).
    fn shut(&self) {
        clear_timeout(&self.timer);
        if let Some(dc) = &self.dc {
            dc.close();
        }
        self.pc.close();
    }
}

fn listen(target: &EventTarget, events: &[&str], f: &Function) {
    for e in events {
        // Fails only for a non-callable listener, which `f` is not.
        let _ = target.add_event_listener_with_callback(e, f);
    }
}

fn field(v: &JsValue, k: &str) -> JsValue {
    Reflect::get(v, &k.into()).unwrap_or(JsValue::UNDEFINED)
}

/// `setLocalDescription({})`: the browser makes the offer or the answer
/// that the connection's state calls for.
fn describe(pc: &RtcPeerConnection, f: &Closure<dyn FnMut(JsValue)>) {
    let _ = pc.set_local_description(Object::new().unchecked_ref()).catch(f);
}

impl Inner {
    /// A direct link to `peer` is wanted (the core's `LinkWanted`; until
    /// the core reports it: every peer met, see `peer_met`). Only the
    /// initiator starts one; the other side waits for its offer.
    pub(crate) fn link_wanted(&mut self, doc: DocId, peer: PeerId, initiator: bool) {
        if initiator && !self.conns.iter().any(|c| c.peer == peer) {
            self.connect_to(doc, peer, true);
        }
    }

    /// Until the core's gossip picks the peers to link with: every peer
    /// met in a document's room, the smaller peer id initiating.
    pub(crate) fn peer_met(&mut self, doc: DocId, peer: PeerId) {
        let me = self.replica.node().peer_id();
        self.link_wanted(doc, peer, me < peer);
    }

    /// Makes the connection; the initiator also its channel and offer.
    fn connect_to(&mut self, doc: DocId, peer: PeerId, initiator: bool) -> Option<usize> {
        if self.closed {
            return None;
        }
        let config = self.rtc.as_ref()?;
        let pc = match RtcPeerConnection::new_with_configuration(config.unchecked_ref()) {
            Ok(pc) => pc,
            Err(e) => {
                let why = field(&e, "message").as_string().unwrap_or_default();
                self.warn(None, &format!("no direct link: {why}"));
                return None;
            }
        };
        self.next_link += 1;
        let link = LinkId(self.next_link);
        let me = self.me.clone();
        let handler = Closure::<dyn FnMut(JsValue)>::new(move |e| with(&me, |i| i.on_rtc(link, e)));
        let f: &Function = handler.as_ref().unchecked_ref();
        listen(&pc, &PC_EVENTS, f);
        let dc = initiator.then(|| {
            let dc = pc.create_data_channel(LABEL);
            open_channel(&dc, f);
            describe(&pc, &handler);
            dc
        });
        let timer = set_timeout(f, CONNECT_MS);
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
            timer,
            handler,
        });
        Some(self.conns.len() - 1)
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
        let mut at = self.conns.iter().position(|c| c.peer == peer);
        let kind = field(&msg, "type").as_string();
        let promise: Option<Promise> = match kind.as_deref() {
            Some("offer") => {
                // Only the smaller peer id offers; an offer from the other
                // side would be glare, which the rule excludes.
                if self.replica.node().peer_id() < peer {
                    return;
                }
                // A new offer from a peer already known: it restarted, so
                // its old connection is dead.
                if let Some(old) = at {
                    self.drop_conn(old, false);
                }
                at = self.connect_to(doc, peer, false);
                let Some(c) = at.map(|a| &self.conns[a]) else {
                    return;
                };
                let p = c.pc.set_remote_description(msg.unchecked_ref());
                // Chained after the offer: the browser makes the answer.
                describe(&c.pc, &c.handler);
                Some(p)
            }
            Some("answer") => at
                .map(|a| &self.conns[a])
                .filter(|c| c.initiator && c.pc.remote_description().is_none())
                .map(|c| c.pc.set_remote_description(msg.unchecked_ref())),
            _ if field(&msg, "candidate").is_string() => {
                let Some(c) = at.map(|a| &mut self.conns[a]) else {
                    return;
                };
                if c.pc.remote_description().is_none() {
                    // Bounded: a peer cannot grow this without limit.
                    if c.queued.len() < 64 {
                        c.queued.push(msg);
                    }
                    None
                } else {
                    Some(
                        c.pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(
                            msg.unchecked_ref(),
                        )),
                    )
                }
            }
            _ => None,
        };
        // A step the browser refuses fails the connection (see `on_rtc`).
        if let (Some(p), Some(c)) = (promise, at.and_then(|a| self.conns.get(a))) {
            let _ = p.catch(&c.handler);
        }
    }

    /// Every event of the connection behind `link`; also its connect timer
    /// and refused negotiation steps, which come without an `Event`.
    fn on_rtc(&mut self, link: LinkId, e: JsValue) {
        let Some(at) = self.conns.iter().position(|c| c.link == link) else {
            return;
        };
        let kind = e.dyn_ref::<Event>().map(Event::type_);
        let c = &mut self.conns[at];
        match kind.as_deref() {
            Some("icecandidate") => {
                let cand = field(&e, "candidate");
                // `null`: gathering finished, nothing to send.
                if cand.is_object() {
                    let (doc, peer) = (c.doc, c.peer);
                    self.signal(doc, peer, &cand);
                }
            }
            Some("signalingstatechange") => {
                if c.pc.remote_description().is_some() {
                    for cand in std::mem::take(&mut c.queued) {
                        let p = c.pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(
                            cand.unchecked_ref(),
                        ));
                        let _ = p.catch(&c.handler);
                    }
                }
                if !c.described
                    && let Some(d) = c.pc.local_description()
                {
                    c.described = true;
                    let (doc, peer) = (c.doc, c.peer);
                    self.signal(doc, peer, &d);
                }
            }
            Some("datachannel") => {
                let ch = field(&e, "channel");
                if let Some(dc) = ch.dyn_ref::<RtcDataChannel>()
                    && c.dc.is_none()
                    && !c.initiator
                    && dc.label() == LABEL
                {
                    open_channel(dc, c.handler());
                    c.dc = Some(dc.clone());
                }
            }
            Some("open") => {
                c.up = true;
                clear_timeout(&c.timer);
                let (peer, now) = (c.peer, self.now());
                let up = Input::LinkUp {
                    link,
                    kind: LinkKind::Direct,
                };
                if let Err(e) = self.replica.handle(now, up) {
                    self.warn(None, &e.to_string());
                }
                self.emit_link(peer, true);
            }
            Some("message") => {
                let data = e.unchecked_ref::<MessageEvent>().data();
                // Text (not ours) reads as an empty message, which is refused.
                let msg = Uint8Array::new(&data).to_vec();
                match c.rx.push(&msg) {
                    Ok(None) => {}
                    Ok(Some(bytes)) => {
                        let now = self.now();
                        if let Err(e) = self.replica.handle(now, Input::Received { link, bytes }) {
                            self.warn(None, &format!("ignored a frame from a direct link: {e}"));
                        }
                    }
                    Err(e) => {
                        self.warn(None, &format!("closed a direct link that sent {e}"));
                        self.drop_conn(at, true);
                    }
                }
            }
            Some("connectionstatechange") => {
                let state = field(&c.pc, "connectionState").as_string();
                if matches!(state.as_deref(), Some("failed" | "closed")) {
                    self.drop_conn(at, true);
                }
            }
            Some(_) => self.drop_conn(at, true),
            // The connect timer, or a negotiation step the browser refused.
            None => {
                if !c.up {
                    self.drop_conn(at, true);
                }
            }
        }
        self.drain();
    }

    /// Sends one of the browser's descriptions or candidates to `peer`, in
    /// its `toJSON()` form.
    fn signal(&mut self, doc: DocId, peer: PeerId, v: &JsValue) {
        let Some(text) = JSON::stringify(v).ok().and_then(|s| s.as_string()) else {
            return;
        };
        let now = self.now();
        let input = Input::Signal {
            doc,
            peer,
            payload: text.into_bytes(),
        };
        if let Err(e) = self.replica.handle(now, input) {
            self.warn(Some(doc), &format!("could not signal a direct link: {e}"));
        }
    }

    /// Sends a frame on a direct link; false when `link` is not one.
    pub(crate) fn rtc_send(&mut self, link: LinkId, bytes: &[u8]) -> bool {
        let Some(at) = self.conns.iter().position(|c| c.link == link) else {
            return false;
        };
        let Some(dc) = self.conns[at].dc.as_ref().filter(|_| self.conns[at].up) else {
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
    /// open link, the peer unreachable directly for one that never came
    /// up (`failed`).
    pub(crate) fn drop_conn(&mut self, at: usize, failed: bool) {
        let c = self.conns.swap_remove(at);
        c.shut();
        let (link, peer, up) = (c.link, c.peer, c.up);
        // Its handler may be the closure running now: dropped later.
        self.rtc_graveyard.push(c);
        let now = self.now();
        if up {
            let _ = self.replica.handle(now, Input::LinkDown { link });
            self.emit_link(peer, false);
        } else if failed {
            // The core learns of a link that never came up once it has
            // `Input::DirectFailed`; until then there is nothing to undo.
        }
    }

    fn emit_link(&self, peer: PeerId, direct: bool) {
        self.emit(
            "link",
            obj(&[
                ("peer", peer.to_string().into()),
                ("direct", direct.into()),
            ]),
        );
    }

    /// Whether the link to `peer` is a direct one now.
    pub(crate) fn linked(&self, peer: &PeerId) -> bool {
        self.conns.iter().any(|c| c.peer == *peer && c.up)
    }

    pub(crate) fn close_conns(&mut self) {
        while !self.conns.is_empty() {
            self.drop_conn(0, false);
        }
    }
}

/// The channel as this side uses it: whole messages as ArrayBuffers, every
/// event to the connection's handler.
fn open_channel(dc: &RtcDataChannel, f: &Function) {
    dc.set_binary_type(RtcDataChannelType::Arraybuffer);
    listen(dc, &DC_EVENTS, f);
}
