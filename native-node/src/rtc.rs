//! Direct links: WebRTC data channels to peers, with str0m (protocol.md
//! §5.3).
//!
//! [`Links`] is sans-IO like the core and str0m under it: the host feeds
//! it what the node wants (`LinkWanted`, signals, frames to send), UDP
//! datagrams and the time, and drains [`Action`]s: datagrams to transmit
//! and inputs for the node (`LinkUp`, `Received`, `LinkDown`, signals to
//! send). [`Sockets`] is the small tokio part: the UDP sockets whose
//! addresses are the host candidates.
//!
//! One `Rtc` per peer; every connection shares the sockets (a datagram goes
//! to the connection that [`Rtc::accepts`] it). The initiator (smaller
//! PeerId) adds the `mycel` data channel and sends the offer, with its
//! host candidates in the SDP; the other side answers. Candidates trickled
//! by a browser are added as they come.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mycel_core::channel::{Reassembler, chunks};
use mycel_core::id::{DocId, PeerId};
use mycel_core::node::{Input, LinkId, LinkKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Output, Rtc};

/// The data channel's label (§5.3).
pub const LABEL: &str = "mycel";
/// A link that is not up this long after it was started has failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Unsent channel data beyond this closes the channel: a slow peer is not
/// buffered without bound (§5.3).
pub const MAX_UNSENT: usize = 8 << 20;
/// An open link silent this long is down: ICE sends a consent check about
/// every 3 s, so a peer that stopped answering is gone (str0m does not
/// report a peer that dropped its connection without a close).
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// At most this many connections at once (offers beyond it are ignored):
/// each holds an `Rtc`, so a flood of offers cannot grow memory unbounded.
pub const MAX_CONNS: usize = 64;
/// The largest frame accepted from a channel (the node's frame limit).
const MAX_FRAME: usize = mycel_core::wire::MAX_FRAME;
/// What str0m may hold of a channel's written data (sent or not, until
/// acknowledged). Its default (128 KiB) caps a channel at 128 KiB per
/// round trip; the sync stream keeps up to 512 KiB in flight.
const SCTP_BUFFER: usize = 1 << 20;
/// Direct link ids start here, far from the relay links' (counted from 1).
const FIRST_LINK: u64 = 1 << 32;

/// What the host must do for [`Links`].
#[derive(Debug)]
pub enum Action {
    /// Send a datagram from the socket bound to `from`.
    Transmit {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Feed this to the node: `LinkUp`, `Received`, `LinkDown`, or a
    /// `Signal` (offer, answer) to carry to the peer through the relay.
    Node(Input),
    /// The link to `peer` never came up (the node learns it as
    /// `DirectFailed`).
    Failed { peer: PeerId, reason: CloseReason },
    /// A link that was up went down (already reported as `LinkDown`);
    /// for the logs.
    Closed { peer: PeerId, reason: CloseReason },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Not up within [`CONNECT_TIMEOUT`].
    Timeout,
    /// The peer closed the channel, or ICE lost the peer.
    Closed,
    /// The node no longer wants the link.
    Unwanted,
    /// More than [`MAX_UNSENT`] bytes waited to be sent.
    SlowPeer,
    /// The peer sent a bad channel message (empty, unknown flag, too large).
    BadMessage(String),
    /// The peer's offer or answer could not be used.
    BadSignal(String),
    /// The peer sent a new offer: the old connection is replaced.
    Replaced,
    /// str0m reported an error.
    Rtc(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Timeout => write!(f, "not connected within {CONNECT_TIMEOUT:?}"),
            CloseReason::Closed => write!(f, "closed by the peer or the network"),
            CloseReason::Unwanted => write!(f, "no longer wanted"),
            CloseReason::SlowPeer => write!(f, "more than {MAX_UNSENT} bytes unsent"),
            CloseReason::BadMessage(e) => write!(f, "bad data channel message: {e}"),
            CloseReason::BadSignal(e) => write!(f, "bad signaling: {e}"),
            CloseReason::Replaced => write!(f, "replaced by a new offer"),
            CloseReason::Rtc(e) => write!(f, "WebRTC error: {e}"),
        }
    }
}

/// Bytes moved over a peer's direct links (whole frames, before chunking).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectTraffic {
    pub sent: u64,
    pub received: u64,
}

/// One signaling payload (§5.3): the browser's `toJSON()` forms.
#[derive(Debug)]
enum Signal {
    Offer(SdpOffer),
    Answer(SdpAnswer),
    /// A trickled candidate; `None` for the end-of-candidates marker.
    Candidate(Option<Candidate>),
}

/// Reads a signaling payload; `Err` says why it is not one.
fn parse_signal(payload: &[u8]) -> Result<Signal, String> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("type").and_then(|t| t.as_str()) {
        Some("offer") => {
            return serde_json::from_value(value)
                .map(Signal::Offer)
                .map_err(|e| format!("bad offer: {e}"));
        }
        Some("answer") => {
            return serde_json::from_value(value)
                .map(Signal::Answer)
                .map_err(|e| format!("bad answer: {e}"));
        }
        _ => {}
    }
    match value.get("candidate").and_then(|c| c.as_str()) {
        Some("") => Ok(Signal::Candidate(None)),
        Some(line) => {
            let line = line.strip_prefix("a=").unwrap_or(line);
            Candidate::from_sdp_string(line)
                .map(|c| Signal::Candidate(Some(c)))
                .map_err(|e| format!("bad candidate {line:?}: {e}"))
        }
        None => Err("neither a description nor a candidate".into()),
    }
}

struct Conn {
    rtc: Rtc,
    /// The initiator's offer, until the answer comes.
    pending: Option<SdpPendingOffer>,
    channel: Option<ChannelId>,
    link: Option<LinkId>,
    rx: Reassembler,
    /// Channel messages str0m did not take yet, and their size.
    unsent: VecDeque<Vec<u8>>,
    unsent_bytes: usize,
    /// Until the channel opens: when the attempt fails.
    deadline: Option<Instant>,
    /// str0m's next timeout.
    wake: Instant,
    /// The last datagram from the peer.
    heard: Instant,
}

/// Every direct connection of a node (sans-IO).
pub struct Links {
    me: PeerId,
    /// Host candidates: the addresses of the sockets.
    local: Vec<SocketAddr>,
    conns: BTreeMap<PeerId, Conn>,
    /// The peers the node wants links with (`LinkWanted`), and the
    /// document whose room carries the signaling.
    wanted: BTreeMap<PeerId, DocId>,
    by_link: BTreeMap<LinkId, PeerId>,
    next_link: u64,
    actions: VecDeque<Action>,
    traffic: BTreeMap<PeerId, DirectTraffic>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("local", &self.local)
            .field("conns", &self.conns.len())
            .field("up", &self.by_link.len())
            .finish()
    }
}

impl Links {
    /// `local`: the addresses of the host's UDP sockets (its candidates).
    pub fn new(me: PeerId, local: Vec<SocketAddr>) -> Links {
        Links {
            me,
            local,
            conns: BTreeMap::new(),
            wanted: BTreeMap::new(),
            by_link: BTreeMap::new(),
            next_link: FIRST_LINK,
            actions: VecDeque::new(),
            traffic: BTreeMap::new(),
        }
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Links::tick`] must be called next.
    pub fn next_wake(&self) -> Option<Instant> {
        self.conns
            .values()
            .map(|c| {
                let end = c.deadline.unwrap_or(c.heard + SILENCE_TIMEOUT);
                end.min(c.wake)
            })
            .min()
    }

    /// Per peer: bytes moved over direct links.
    pub fn traffic(&self) -> &BTreeMap<PeerId, DirectTraffic> {
        &self.traffic
    }

    /// The peer at the other end of a direct link.
    pub fn peer_of(&self, link: LinkId) -> Option<PeerId> {
        self.by_link.get(&link).copied()
    }

    /// Whether a direct link to `peer` is up.
    pub fn is_up(&self, peer: &PeerId) -> bool {
        self.conns.get(peer).is_some_and(|c| c.link.is_some())
    }

    /// The node wants a link to `peer` (`LinkWanted`, for `doc`). The
    /// initiator starts one; the other side waits for the offer.
    pub fn want(&mut self, now: Instant, doc: DocId, peer: PeerId, initiator: bool) {
        if peer == self.me {
            return;
        }
        self.wanted.insert(peer, doc);
        if !initiator || self.conns.contains_key(&peer) {
            return;
        }
        if self.conns.len() >= MAX_CONNS || self.local.is_empty() {
            return;
        }
        let mut conn = self.new_conn(now);
        let mut api = conn.rtc.sdp_api();
        api.add_channel(LABEL.into());
        let Some((offer, pending)) = api.apply() else {
            // Cannot happen: the change above always makes an offer.
            return;
        };
        conn.pending = Some(pending);
        self.conns.insert(peer, conn);
        self.signal_out(doc, peer, serde_json::to_vec(&offer));
        self.drive(now, peer);
    }

    /// The node no longer wants a link to `peer` (`LinkUnwanted`): close
    /// it, open or not (§5.3).
    pub fn unwant(&mut self, now: Instant, peer: PeerId) {
        self.wanted.remove(&peer);
        self.close(now, peer, CloseReason::Unwanted);
    }

    /// Closes the link to `peer` (an operator's or a test's request).
    pub fn kill(&mut self, now: Instant, peer: PeerId) {
        self.close(now, peer, CloseReason::Closed);
    }

    /// A signaling payload from `peer` (the node's `Event::Signal`).
    /// Payloads of other shapes are ignored (§5.3); the reason is returned
    /// for the logs.
    pub fn signal(
        &mut self,
        now: Instant,
        doc: DocId,
        peer: PeerId,
        payload: &[u8],
    ) -> Result<(), String> {
        if peer == self.me {
            return Err("a signal from this node's own id".into());
        }
        match parse_signal(payload)? {
            Signal::Offer(offer) => {
                // Only the smaller PeerId offers (§5.3); an offer the other
                // way round is a confused or hostile peer.
                if peer > self.me {
                    return Err("an offer from the peer that should answer".into());
                }
                // Only from a wanted peer (§5.3: the gossip handshake
                // comes first, through the same relay): links stay within
                // the active view, and strangers cannot make us connect.
                if !self.wanted.contains_key(&peer) {
                    return Err("an offer from a peer not wanted for a direct link".into());
                }
                if self.conns.contains_key(&peer) {
                    // The initiator started over (it restarted, or its
                    // attempt failed on its side first).
                    self.close(now, peer, CloseReason::Replaced);
                }
                if self.conns.len() >= MAX_CONNS || self.local.is_empty() {
                    return Err("too many direct connections".into());
                }
                let mut conn = self.new_conn(now);
                let answer = match conn.rtc.sdp_api().accept_offer(offer) {
                    Ok(a) => a,
                    Err(e) => return Err(format!("offer refused: {e}")),
                };
                self.conns.insert(peer, conn);
                self.signal_out(doc, peer, serde_json::to_vec(&answer));
                self.drive(now, peer);
            }
            Signal::Answer(answer) => {
                let Some(conn) = self.conns.get_mut(&peer) else {
                    return Err("an answer with no offer out".into());
                };
                let Some(pending) = conn.pending.take() else {
                    return Err("an answer with no offer out".into());
                };
                if let Err(e) = conn.rtc.sdp_api().accept_answer(pending, answer) {
                    self.close(now, peer, CloseReason::BadSignal(e.to_string()));
                    return Ok(());
                }
                self.drive(now, peer);
            }
            Signal::Candidate(None) => {}
            Signal::Candidate(Some(c)) => {
                let Some(conn) = self.conns.get_mut(&peer) else {
                    return Err("a candidate for no connection".into());
                };
                conn.rtc.add_remote_candidate(c);
                self.drive(now, peer);
            }
        }
        Ok(())
    }

    /// A datagram arrived on the socket bound to `to`.
    pub fn receive(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let Ok(contents) = bytes.try_into() else {
            return; // not STUN, DTLS or RTP: not for us
        };
        let input = str0m::Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: to,
                contents,
            },
        );
        let Some(peer) = self
            .conns
            .iter()
            .find(|(_, c)| c.rtc.accepts(&input))
            .map(|(p, _)| *p)
        else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&peer) else {
            return;
        };
        conn.heard = now;
        if let Err(e) = conn.rtc.handle_input(input) {
            self.close(now, peer, CloseReason::Rtc(e.to_string()));
            return;
        }
        self.drive(now, peer);
    }

    /// Sends a frame on a direct link; false if `link` is not one of ours.
    pub fn send(&mut self, now: Instant, link: LinkId, frame: &[u8]) -> bool {
        let Some(peer) = self.by_link.get(&link).copied() else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(&peer) else {
            return true;
        };
        self.traffic.entry(peer).or_default().sent += frame.len() as u64;
        for msg in chunks(frame) {
            conn.unsent_bytes += msg.len();
            conn.unsent.push_back(msg);
        }
        if conn.unsent_bytes > MAX_UNSENT {
            self.close(now, peer, CloseReason::SlowPeer);
            return true;
        }
        self.drive(now, peer);
        true
    }

    /// Fires due timers: str0m's, and the connect deadline.
    pub fn tick(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let end = c.deadline.unwrap_or(c.heard + SILENCE_TIMEOUT);
                c.wake <= now || end <= now
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            let Some(conn) = self.conns.get_mut(&peer) else {
                continue;
            };
            if conn.deadline.is_some_and(|d| d <= now) {
                self.close(now, peer, CloseReason::Timeout);
                continue;
            }
            if conn.deadline.is_none() && conn.heard + SILENCE_TIMEOUT <= now {
                self.close(now, peer, CloseReason::Closed);
                continue;
            }
            if let Err(e) = conn.rtc.handle_input(str0m::Input::Timeout(now)) {
                self.close(now, peer, CloseReason::Rtc(e.to_string()));
                continue;
            }
            self.drive(now, peer);
        }
    }

    /// Closes every link (shutdown).
    pub fn close_all(&mut self, now: Instant) {
        let peers: Vec<PeerId> = self.conns.keys().copied().collect();
        for peer in peers {
            self.close(now, peer, CloseReason::Unwanted);
        }
    }

    fn new_conn(&self, now: Instant) -> Conn {
        let mut rtc = Rtc::builder()
            .set_sctp_max_buffered_amount(SCTP_BUFFER)
            .build(now);
        for addr in &self.local {
            if let Ok(c) = Candidate::host(*addr, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        Conn {
            rtc,
            pending: None,
            channel: None,
            link: None,
            rx: Reassembler::new(MAX_FRAME),
            unsent: VecDeque::new(),
            unsent_bytes: 0,
            deadline: Some(now + CONNECT_TIMEOUT),
            wake: now,
            heard: now,
        }
    }

    /// Sends a description (its JSON) to the peer through the node.
    fn signal_out(&mut self, doc: DocId, peer: PeerId, json: serde_json::Result<Vec<u8>>) {
        // Serializing a description cannot fail (two strings).
        let Ok(payload) = json else {
            return;
        };
        self.actions
            .push_back(Action::Node(Input::Signal { doc, peer, payload }));
    }

    /// Drains str0m's outputs for `peer` (after every mutation, as str0m
    /// requires) and writes what waits to be sent while the channel takes
    /// it.
    fn drive(&mut self, now: Instant, peer: PeerId) {
        loop {
            let Some(conn) = self.conns.get_mut(&peer) else {
                return;
            };
            match drain(conn, &mut self.actions, &mut self.traffic, peer) {
                Ok(Drained::Idle) => {}
                Ok(Drained::Opened(id)) => {
                    conn.channel = Some(id);
                    conn.deadline = None;
                    let link = LinkId(self.next_link);
                    self.next_link += 1;
                    conn.link = Some(link);
                    self.by_link.insert(link, peer);
                    self.actions.push_back(Action::Node(Input::LinkUp {
                        link,
                        kind: LinkKind::Direct,
                    }));
                    continue;
                }
                Err(reason) => {
                    self.close(now, peer, reason);
                    return;
                }
            }
            // Write one waiting message, then drain again.
            let Some(id) = conn.channel else { return };
            let Some(msg) = conn.unsent.front() else {
                return;
            };
            let Some(mut channel) = conn.rtc.channel(id) else {
                return;
            };
            match channel.write(true, msg) {
                Ok(true) => {
                    conn.unsent_bytes -= msg.len();
                    conn.unsent.pop_front();
                }
                // Full: str0m says so with ChannelBufferedAmountLow… but we
                // simply try again after the next input.
                Ok(false) => return,
                Err(e) => {
                    self.close(now, peer, CloseReason::Rtc(e.to_string()));
                    return;
                }
            }
        }
    }

    fn close(&mut self, now: Instant, peer: PeerId, reason: CloseReason) {
        let Some(mut conn) = self.conns.remove(&peer) else {
            return;
        };
        // Best effort: tell the peer (SCTP abort, DTLS close_notify).
        if conn.rtc.close().is_ok() {
            for _ in 0..16 {
                match conn.rtc.poll_output() {
                    Ok(Output::Transmit(t)) => self.actions.push_back(Action::Transmit {
                        from: t.source,
                        to: t.destination,
                        bytes: t.contents.to_vec(),
                    }),
                    Ok(Output::Event(_)) => {}
                    Ok(Output::Timeout(_)) | Err(_) => break,
                }
            }
        }
        let _ = now;
        match conn.link {
            Some(link) => {
                self.by_link.remove(&link);
                self.actions
                    .push_back(Action::Node(Input::LinkDown { link }));
                self.actions.push_back(Action::Closed { peer, reason });
            }
            None => self.actions.push_back(Action::Failed { peer, reason }),
        }
    }
}

enum Drained {
    Idle,
    /// The `mycel` channel opened (the caller numbers the link).
    Opened(ChannelId),
}

/// Polls one `Rtc` until its next timeout.
fn drain(
    conn: &mut Conn,
    actions: &mut VecDeque<Action>,
    traffic: &mut BTreeMap<PeerId, DirectTraffic>,
    peer: PeerId,
) -> Result<Drained, CloseReason> {
    loop {
        let out = conn
            .rtc
            .poll_output()
            .map_err(|e| CloseReason::Rtc(e.to_string()))?;
        match out {
            Output::Timeout(t) => {
                conn.wake = t;
                return Ok(Drained::Idle);
            }
            Output::Transmit(t) => actions.push_back(Action::Transmit {
                from: t.source,
                to: t.destination,
                bytes: t.contents.to_vec(),
            }),
            Output::Event(Event::ChannelOpen(id, label)) => {
                if label == LABEL && conn.channel.is_none() {
                    return Ok(Drained::Opened(id));
                }
                // Another channel: not ours to use (§5.3: one channel).
                conn.rtc.direct_api().close_data_channel(id);
            }
            Output::Event(Event::ChannelData(data)) => {
                if Some(data.id) != conn.channel {
                    continue;
                }
                match conn.rx.push(&data.data) {
                    Ok(None) => {}
                    Ok(Some(frame)) => {
                        traffic.entry(peer).or_default().received += frame.len() as u64;
                        if let Some(link) = conn.link {
                            actions.push_back(Action::Node(Input::Received { link, bytes: frame }));
                        }
                    }
                    Err(e) => return Err(CloseReason::BadMessage(e.to_string())),
                }
            }
            Output::Event(Event::ChannelClose(id)) => {
                if Some(id) == conn.channel {
                    return Err(CloseReason::Closed);
                }
            }
            Output::Event(Event::IceConnectionStateChange(IceConnectionState::Disconnected)) => {
                return Err(CloseReason::Closed);
            }
            Output::Event(_) => {}
        }
    }
}

/// The host candidates' addresses: `configured` as given, or else every
/// interface's address (loopback only if there is nothing else).
pub fn candidate_ips(configured: &[IpAddr]) -> Vec<IpAddr> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return vec![IpAddr::from([127, 0, 0, 1])];
    };
    let usable = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_link_local(),
        // Link-local v6 needs a scope id, which candidates do not carry.
        IpAddr::V6(v6) => !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    };
    let mut ips: Vec<IpAddr> = ifaces
        .iter()
        .map(|i| i.ip())
        .filter(|ip| usable(ip) && !ip.is_loopback())
        .collect();
    if ips.is_empty() {
        ips.push(IpAddr::from([127, 0, 0, 1]));
    }
    ips.sort();
    ips.dedup();
    ips
}

/// The UDP sockets of the host candidates (one per address).
#[derive(Debug, Clone)]
pub struct Sockets {
    sockets: Vec<Arc<tokio::net::UdpSocket>>,
}

/// One datagram read from a socket.
#[derive(Debug)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

impl Sockets {
    /// Binds one UDP socket per address (`port` 0: any free port).
    pub async fn bind(ips: &[IpAddr], port: u16) -> std::io::Result<Sockets> {
        let mut sockets = Vec::new();
        for ip in ips {
            let socket = tokio::net::UdpSocket::bind(SocketAddr::new(*ip, port)).await?;
            sockets.push(Arc::new(socket));
        }
        Ok(Sockets { sockets })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Starts one reader task per socket; datagrams arrive on the channel.
    pub fn spawn_readers(&self) -> tokio::sync::mpsc::Receiver<Datagram> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        for socket in &self.sockets {
            let (socket, tx) = (socket.clone(), tx.clone());
            let Ok(to) = socket.local_addr() else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                        // An ICMP error surfaced on the socket: keep reading.
                        continue;
                    };
                    let d = Datagram {
                        from,
                        to,
                        bytes: buf[..n].to_vec(),
                    };
                    if tx.send(d).await.is_err() {
                        return; // the host loop ended
                    }
                }
            });
        }
        rx
    }

    /// Sends a datagram without waiting: a full socket buffer drops it,
    /// as the network could (SCTP and ICE retransmit).
    pub fn transmit(&self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        if let Some(s) = self
            .sockets
            .iter()
            .find(|s| s.local_addr().is_ok_and(|a| a == from))
        {
            let _ = s.try_send_to(bytes, to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_in_the_browser_forms() {
        assert!(matches!(
            parse_signal(br#"{"candidate":"","sdpMid":"0","sdpMLineIndex":0}"#),
            Ok(Signal::Candidate(None))
        ));
        let c = br#"{"candidate":"candidate:1 1 udp 2113937151 127.0.0.1 50000 typ host","sdpMid":"0","sdpMLineIndex":0}"#;
        assert!(matches!(parse_signal(c), Ok(Signal::Candidate(Some(_)))));
        assert!(parse_signal(b"not json").is_err());
        assert!(parse_signal(br#"{"type":"offer","sdp":"garbage"}"#).is_err());
        assert!(parse_signal(br#"{"type":"rollback"}"#).is_err());
    }
}
