//! The relay link: one WebSocket to a relay carries every room. The node
//! decides everything; this loop moves frames, fires timers, and reconnects
//! with exponential backoff and jitter when the socket drops.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mycel_core::crypto::Rng;
use mycel_core::id::{DocId, PeerId};
use mycel_core::node::{Event, Input, LinkId, LinkKind, Output};
use mycel_core::relay_link::{RelayRotation, Retry};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::host::{Host, HostError};
use crate::rtc::{self, Action, Links, Sockets};

/// What the loop is for.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Until `wait_peers` peers of `doc` were met and each side holds
    /// everything the other holds (a pinning peer: on its disk); fails at
    /// `timeout`.
    Sync {
        doc: DocId,
        wait_peers: usize,
        timeout: Duration,
    },
    /// Until shutdown, keeping every open document in sync.
    Serve,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Synced { peers: usize },
    Stopped,
}

fn report(host: &mut Host) {
    for e in host.events.drain(..) {
        match e {
            Event::PeerSeen { peer, pinning, .. } => {
                eprintln!(
                    "peer {peer} joined{}",
                    if pinning { " (pinning node)" } else { "" }
                );
            }
            Event::StoredRemotely { upto, copies, .. } => {
                eprintln!("stored-remotely({copies}): changes up to #{upto}");
            }
            Event::Rejected { reason, .. } => eprintln!("refused data from a peer: {reason}"),
            Event::Equivocation { author, seq, .. } => {
                eprintln!("peer {author} signed two different changes #{seq}; kept the first")
            }
            Event::RelayError { code, message, .. } => {
                eprintln!("relay error {code}: {message}")
            }
            _ => {}
        }
    }
}

fn done(host: &Host, mode: &Mode) -> Option<usize> {
    let Mode::Sync {
        doc, wait_peers, ..
    } = mode
    else {
        return None;
    };
    let node = host.replica.node();
    let status = node.sync_status(*doc);
    // A pinning peer's `Have` advertises only what it has synced to disk:
    // waiting until it covers everything here makes exit 0 mean "durable
    // there" (stored-remotely), not merely "received" (stream acks come
    // before the peer's disk write).
    let mine = node.vector(*doc).unwrap_or_default();
    let stored = node
        .peers(*doc)
        .iter()
        .filter(|(_, _, pinning)| *pinning)
        .all(|(_, vector, _)| vector.covers(&mine));
    (status.len() >= *wait_peers && status.iter().all(|p| p.synced()) && stored)
        .then_some(status.len())
}

/// Extra parts of a run: direct links, a control channel, reports.
#[derive(Default)]
pub struct Options {
    /// Direct links (WebRTC data channels) on these host candidates.
    pub direct: Option<DirectOptions>,
    /// Work to run inside the loop, with the host and the direct links
    /// (tests change documents and kill links this way).
    pub control: Option<tokio::sync::mpsc::UnboundedReceiver<Control>>,
    /// Log each peer's bytes (direct and through the relay) this often
    /// (and always at the end of a run with direct links on).
    pub traffic_every: Option<Duration>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("direct", &self.direct)
            .field("control", &self.control.is_some())
            .field("traffic_every", &self.traffic_every)
            .finish()
    }
}

/// Where direct links listen.
#[derive(Debug, Clone, Default)]
pub struct DirectOptions {
    /// Addresses of the host candidates; empty: every interface's.
    pub ips: Vec<IpAddr>,
    /// UDP port of every candidate (0: a free one each).
    pub port: u16,
}

/// Work run inside the host loop (see [`Options::control`]).
pub type Control = Box<dyn FnOnce(&mut Host, Option<&mut Links>) + Send>;

/// What the relay task tells the host loop.
#[derive(Debug)]
enum FromRelay {
    Up(LinkId),
    Frame(LinkId, Vec<u8>),
    Down(LinkId),
}

/// Runs the relay link until the mode's goal, a timeout, or `shutdown`.
///
/// Multi-homing: `relays` are tried in turn, by the policy of
/// [`RelayRotation`] (stay on the relay reached, fail over at once, back
/// off only after every relay failed in a row). On each new link the
/// sessions resume by vector exchange, so nothing is lost in a failover.
pub async fn run(
    host: &mut Host,
    relays: &[String],
    mode: Mode,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, HostError> {
    run_with(host, relays, mode, shutdown, Options::default()).await
}

/// [`run`] with direct links and the other [`Options`].
///
/// The relay link lives in a task of its own (connect, back off, fail
/// over); this loop owns the node and the direct links, so a direct link
/// keeps syncing while the relay is away.
pub async fn run_with(
    host: &mut Host,
    relays: &[String],
    mode: Mode,
    shutdown: impl Future<Output = ()>,
    options: Options,
) -> Result<Outcome, HostError> {
    let rotation = RelayRotation::new(relays.to_vec()).map_err(|e| HostError::Io(e.to_string()))?;
    tokio::pin!(shutdown);
    let deadline = match &mode {
        Mode::Sync { timeout, .. } => Some(Instant::now() + *timeout),
        Mode::Serve => None,
    };
    let me = host.replica.node().peer_id();
    let (sockets, mut links, mut datagrams) = match &options.direct {
        Some(d) => {
            let ips = rtc::candidate_ips(&d.ips);
            let sockets = Sockets::bind(&ips, d.port).await.map_err(|e| {
                HostError::Io(format!(
                    "cannot bind the direct-link sockets on {ips:?}: {e}"
                ))
            })?;
            let local = sockets.local_addrs();
            eprintln!(
                "direct links on {}",
                local
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let rx = sockets.spawn_readers();
            (Some(sockets), Some(Links::new(me, local)), Some(rx))
        }
        None => (None, None, None),
    };
    let mut control = options.control;
    let mut traffic_tick = options
        .traffic_every
        .map(|every| tokio::time::interval_at(Instant::now() + every, every));

    let (to_relay, relay_rx) = tokio::sync::mpsc::channel::<(LinkId, Vec<u8>)>(256);
    let (relay_tx, mut from_relay) = tokio::sync::mpsc::channel::<FromRelay>(256);
    let seed = host.rng().array();
    let relay_task = tokio::spawn(relay_loop(rotation, seed, relay_tx, relay_rx));

    let mut relay_link: Option<LinkId> = None;
    let mut wake: Option<Instant> = None;
    let mut outs: Vec<Output> = host.drain()?;
    let outcome = loop {
        // Until nothing moves: node outputs, node events, link actions.
        loop {
            let mut moved = false;
            for out in std::mem::take(&mut outs) {
                moved = true;
                match out {
                    Output::Send { link, bytes } => {
                        let direct = links
                            .as_mut()
                            .is_some_and(|l| l.send(std::time::Instant::now(), link, &bytes));
                        if !direct && Some(link) == relay_link {
                            // The task gone means the run is ending.
                            let _ = to_relay.send((link, bytes)).await;
                        }
                    }
                    Output::WakeAt(t) => {
                        let wait = t.as_millis().saturating_sub(host.now().as_millis());
                        wake = Some(Instant::now() + Duration::from_millis(wait));
                    }
                    _ => {}
                }
            }
            if let Some(l) = links.as_mut() {
                let now = std::time::Instant::now();
                for e in &host.events {
                    match e {
                        Event::LinkWanted {
                            doc,
                            peer,
                            initiator,
                        } => l.want(now, *doc, *peer, *initiator),
                        Event::LinkUnwanted { peer } => l.unwant(now, *peer),
                        Event::Signal { doc, peer, payload } => {
                            if let Err(why) = l.signal(now, *doc, *peer, payload) {
                                eprintln!("ignored a signal from peer {peer}: {why}");
                            }
                        }
                        _ => {}
                    }
                }
            }
            report(host);
            while let Some(action) = links.as_mut().and_then(Links::poll) {
                moved = true;
                match action {
                    Action::Transmit { from, to, bytes } => {
                        if let Some(s) = &sockets {
                            s.transmit(from, to, &bytes);
                        }
                    }
                    Action::Node(input) => {
                        let up = match &input {
                            Input::LinkUp { link, .. } => {
                                links.as_ref().and_then(|l| l.peer_of(*link))
                            }
                            _ => None,
                        };
                        if let Some(peer) = up {
                            eprintln!("direct link to peer {peer} is up");
                        }
                        match host.handle(input) {
                            Ok(o) => outs.extend(o),
                            Err(HostError::Replica(e)) => eprintln!("direct link: {e}"),
                            Err(e) => return Err(e),
                        }
                    }
                    Action::Failed { peer, reason } => {
                        eprintln!("direct link to peer {peer} failed: {reason}");
                        outs.extend(host.handle(Input::DirectFailed { peer })?);
                    }
                    Action::Closed { peer, reason } => {
                        eprintln!("direct link to peer {peer} went down: {reason}");
                    }
                }
            }
            if !moved {
                break;
            }
        }
        if let Some(peers) = done(host, &mode) {
            break Outcome::Synced { peers };
        }
        let link_wake = links
            .as_ref()
            .and_then(Links::next_wake)
            .map(Instant::from_std);
        tokio::select! {
            ev = from_relay.recv() => match ev {
                Some(FromRelay::Up(link)) => {
                    relay_link = Some(link);
                    outs = host.handle(Input::LinkUp { link, kind: LinkKind::Relay })?;
                }
                Some(FromRelay::Frame(link, bytes)) if Some(link) == relay_link => {
                    match host.handle(Input::Received { link, bytes }) {
                        Ok(o) => outs = o,
                        // A bad frame is the sender's problem: report, go on.
                        Err(HostError::Replica(e)) => eprintln!("ignored a frame: {e}"),
                        Err(e) => return Err(e),
                    }
                }
                Some(FromRelay::Frame(..)) => {}
                Some(FromRelay::Down(link)) => {
                    if relay_link == Some(link) {
                        relay_link = None;
                        outs = host.handle(Input::LinkDown { link })?;
                    }
                }
                None => return Err(HostError::Io("the relay link ended".into())),
            },
            Some(d) = recv_opt(&mut datagrams) => {
                if let Some(l) = links.as_mut() {
                    l.receive(std::time::Instant::now(), d.from, d.to, &d.bytes);
                }
            }
            () = sleep_until_opt(link_wake) => {
                if let Some(l) = links.as_mut() {
                    l.tick(std::time::Instant::now());
                }
            }
            () = sleep_until_opt(wake) => {
                wake = None;
                outs = host.handle(Input::Tick)?;
            }
            Some(work) = recv_unbounded_opt(&mut control) => {
                work(host, links.as_mut());
                outs = host.drain()?;
            }
            _ = tick_opt(&mut traffic_tick) => {
                for line in traffic_report(host, links.as_ref()) {
                    eprintln!("{line}");
                }
            }
            () = &mut shutdown => break Outcome::Stopped,
            () = sleep_until_opt(deadline) => {
                drop(to_relay);
                let _ = tokio::time::timeout(Duration::from_secs(1), relay_task).await;
                return Err(HostError::Io(format!(
                    "timed out before the sync completed (relay {})",
                    relays.join(", ")
                )));
            }
        }
    };
    // Tell direct peers and the relay goodbye (close frames), briefly.
    if let Some(l) = links.as_mut() {
        l.close_all(std::time::Instant::now());
        while let Some(action) = l.poll() {
            if let (Action::Transmit { from, to, bytes }, Some(s)) = (action, &sockets) {
                s.transmit(from, to, &bytes);
            }
        }
        for line in traffic_report(host, Some(l)) {
            eprintln!("{line}");
        }
    }
    drop(to_relay);
    let _ = tokio::time::timeout(Duration::from_secs(1), relay_task).await;
    if let Some(link) = relay_link {
        host.handle(Input::LinkDown { link })?;
    }
    Ok(outcome)
}

/// Per peer: sealed bytes sent directly and through the relay (the
/// node's count, over every document), and bytes received directly.
pub fn traffic_report(host: &Host, links: Option<&Links>) -> Vec<String> {
    let node = host.replica.node();
    // peer -> (sent directly, sent through the relay)
    let mut sent: BTreeMap<PeerId, (u64, u64)> = BTreeMap::new();
    let mut published = 0;
    for entry in host.store.docs() {
        let Some(t) = node.traffic(entry.doc()) else {
            continue;
        };
        published += t.published;
        for p in t.peers {
            let e = sent.entry(p.peer).or_default();
            e.0 += p.bytes_direct;
            e.1 += p.bytes_relay;
        }
    }
    let received = |peer: &PeerId| {
        links
            .and_then(|l| l.traffic().get(peer))
            .map_or(0, |t| t.received)
    };
    let mut lines: Vec<String> = sent
        .iter()
        .map(|(peer, (direct, relay))| {
            format!(
                "traffic with peer {peer}: {direct} bytes sent directly, {relay} through the relay; {} received directly",
                received(peer)
            )
        })
        .collect();
    lines.push(format!(
        "traffic to whole rooms through the relay: {published} bytes"
    ));
    lines
}

/// The relay side: one WebSocket at a time, reconnecting with backoff and
/// failing over between relays, until the host loop drops its sender.
async fn relay_loop(
    mut rotation: RelayRotation,
    seed: [u8; 32],
    events: tokio::sync::mpsc::Sender<FromRelay>,
    mut frames: tokio::sync::mpsc::Receiver<(LinkId, Vec<u8>)>,
) {
    let mut rng = Rng::from_seed(seed);
    let mut link_no = 0u64;
    let relays = rotation.relays().len();
    loop {
        let relay = rotation.current().to_string();
        let connect = tokio_tungstenite::connect_async(relay.as_str());
        let ws = tokio::select! {
            r = connect => r,
            () = events.closed() => return,
        };
        let mut ws = match ws {
            Ok((ws, _)) => ws,
            Err(e) => {
                let Retry::After(delay) = rotation.connect_failed(rng.u64()) else {
                    eprintln!("cannot reach relay {relay}: {e}; trying the next one");
                    continue;
                };
                eprintln!("cannot reach relay {relay}: {e}; retrying in {delay:?}");
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue,
                    () = events.closed() => return,
                }
            }
        };
        rotation.connected();
        if relays > 1 {
            eprintln!("connected to relay {relay}");
        }
        link_no += 1;
        let link = LinkId(link_no);
        if events.send(FromRelay::Up(link)).await.is_err() {
            return;
        }
        let ended = loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Binary(bytes))) => {
                        if events.send(FromRelay::Frame(link, bytes.to_vec())).await.is_err() {
                            let _ = ws.close(None).await;
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break false,
                    Some(Ok(_)) => {}
                },
                frame = frames.recv() => match frame {
                    Some((l, bytes)) if l == link => {
                        if ws.send(Message::Binary(bytes.into())).await.is_err() {
                            break false;
                        }
                    }
                    Some(_) => {} // for a link gone before it was sent
                    None => break true,
                },
            }
        };
        if ended {
            let _ = ws.close(None).await;
            return;
        }
        if events.send(FromRelay::Down(link)).await.is_err() {
            return;
        }
        let Retry::After(delay) = rotation.lost(rng.u64()) else {
            eprintln!("lost the relay {relay}; failing over to the next one");
            continue;
        };
        eprintln!("lost the relay {relay}; reconnecting in {delay:?}");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = events.closed() => return,
        }
    }
}

async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_unbounded_opt<T>(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>,
) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn tick_opt(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
