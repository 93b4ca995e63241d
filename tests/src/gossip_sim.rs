//! A deterministic simulator of one gossip swarm (`mycel_core::gossip`):
//! thousands of peers joining through the relay room, lossy links with
//! random latency, crashes and newcomers (churn), partitions, and a
//! replaying relay.
//!
//! Two modes:
//! - **plain** (default): peers exchange decoded [`Frame`]s, so the cost
//!   per message is the state machine's alone (10,000 peers in seconds);
//! - **sealed**: every frame is signed and sealed by the sender's
//!   [`SealedGossip`] and opened and verified by the receiver's, exactly
//!   as on the network (for small swarms and property tests). Only in this
//!   mode can the simulated relay replay captured frames.
//!
//! Everything random comes from one ChaCha stream seeded by the run's
//! seed; events are ordered by (time, sequence number).
//!
//! [`run`] plays the scenario of `gossip-sim`: peers join, the overlay
//! settles, warm-up broadcasts shape the tree, then (with churn) peers
//! crash and newcomers join around one measured broadcast.
//!
//! ```
//! use mycel_tests::gossip_sim::{run, GossipSimConfig};
//! let r = run(&GossipSimConfig { peers: 50, ..GossipSimConfig::default() });
//! assert_eq!(r.broadcast.coverage, 1.0);
//! ```

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

use mycel_core::crypto::{DocKey, Identity, Rng as CoreRng, room_id};
use mycel_core::gossip::{
    Frame, Gossip, GossipConfig, GossipError, Input, Kind, Message, MsgId, Output, Payload,
    SealedGossip, SealedOutput,
};
use mycel_core::id::{DocId, PeerId, RoomId};
use mycel_core::time::Timestamp;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// One run's settings.
#[derive(Debug, Clone)]
pub struct GossipSimConfig {
    pub peers: usize,
    pub seed: u64,
    /// Probability that any one message is lost.
    pub loss: f64,
    /// Fraction of the swarm that crashes, and (as many) newcomers that
    /// join, around the measured broadcast.
    pub churn: f64,
    /// One-way latency range (ms): a range reorders.
    pub latency_ms: (u64, u64),
    /// Peers join over this window, each bootstrapping from `bootstrap`
    /// random peers already in the relay room.
    pub join_window_ms: u64,
    pub bootstrap: usize,
    /// Time after the last join for the overlay to settle.
    pub settle_ms: u64,
    /// Broadcasts before the measured one (they shape the tree).
    pub warmups: usize,
    /// How long the measured broadcast may take (default: two heartbeat
    /// periods).
    pub measure_ms: u64,
    /// Churn happens over this window, the measured broadcast in its middle.
    pub churn_window_ms: u64,
    /// Run frames through the real codec (sign, seal, open, verify).
    pub sealed: bool,
    /// Sealed mode: probability that the relay replays a delivered frame
    /// later (half to the same peer, half to another one).
    pub replay: f64,
    /// Also measure plain push gossip at fan-out `gossip.fanout`.
    pub baseline: bool,
    /// The simulated relay reports a crashed peer's departure to the peers
    /// linked to it after a delay in this range (ms); None: only
    /// heartbeats detect failures.
    pub relay_notice_ms: Option<(u64, u64)>,
    /// Print diagnostics (tree shape, deliveries by time and hops, missed
    /// peers) to stderr.
    pub verbose: bool,
    pub gossip: GossipConfig,
}

impl Default for GossipSimConfig {
    fn default() -> Self {
        let gossip = GossipConfig::default();
        GossipSimConfig {
            peers: 1000,
            seed: 1,
            loss: 0.0,
            churn: 0.0,
            latency_ms: (20, 120),
            join_window_ms: 60_000,
            bootstrap: 3,
            settle_ms: 150_000,
            warmups: 2,
            measure_ms: 2 * gossip.heartbeat_ms,
            churn_window_ms: 120_000,
            sealed: false,
            replay: 0.0,
            baseline: false,
            verbose: false,
            relay_notice_ms: Some((5_000, 30_000)),
            gossip,
        }
    }
}

/// Figures of one broadcast.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BroadcastReport {
    /// Peers live from the broadcast to the deadline.
    pub live_peers: usize,
    /// Of those, how many got it by the deadline.
    pub delivered: usize,
    pub coverage: f64,
    /// Most hops from the origin to a live peer.
    pub rounds: u8,
    /// Dissemination frames (Gossip, IHave, Graft, Prune) sent from the
    /// broadcast until full coverage (or the deadline), per live peer.
    pub msgs_per_peer: f64,
    /// Of those, frames carrying the payload.
    pub payload_msgs_per_peer: f64,
    /// Every frame of every kind (heartbeats, membership) in that time.
    pub all_msgs_per_peer: f64,
    /// Simulated ms to full coverage (None: not reached by the deadline).
    pub time_to_full_ms: Option<u64>,
    /// Coverage after one heartbeat period.
    pub coverage_one_period: f64,
}

/// The push-only baseline: every peer forwards a new message to `fanout`
/// peers drawn uniformly from the whole swarm (full membership, so a
/// generous baseline), same loss, same TTL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BaselineReport {
    pub fanout: usize,
    pub coverage: f64,
    pub rounds: u8,
    pub msgs_per_peer: f64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct GossipSimReport {
    pub peers: usize,
    pub seed: u64,
    pub loss: f64,
    pub churn: f64,
    pub sealed: bool,
    pub broadcast: BroadcastReport,
    /// Largest active view ever, and views at the measured broadcast.
    pub max_active_view: usize,
    pub mean_active_view: f64,
    pub max_passive_view: usize,
    pub max_table: usize,
    /// Connected components of the active-view graph of live peers at the
    /// measured broadcast (1: one overlay).
    pub overlay_components: usize,
    pub crashed: usize,
    pub joined_late: usize,
    pub sim_ms: u64,
    pub events: u64,
    pub frames: u64,
    pub frames_lost: u64,
    pub violations: Violations,
    /// Dissemination frames per live peer in the 5 s after each warm-up
    /// broadcast (the one that sets up the origin's own tree floods).
    pub warmup_msgs_per_peer: Vec<f64>,
    pub baseline: Option<BaselineReport>,
}

/// Things that must never happen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations {
    /// A view or the table above its bound.
    pub bounds: u64,
    /// A broadcast copy sent or delivered beyond the TTL.
    pub ttl: u64,
    /// A broadcast delivered twice to one peer's application.
    pub duplicate_deliveries: u64,
    /// A replayed or misdirected frame (other than an unverifiable
    /// `Hello`) accepted.
    pub replays_accepted: u64,
}

impl GossipSimReport {
    /// The JSON line `gossip-sim` prints.
    pub fn to_json(&self) -> Value {
        let b = &self.broadcast;
        let mut v = json!({
            "peers": self.peers,
            "coverage": b.coverage,
            "rounds": b.rounds,
            "msgs_per_peer": round3(b.msgs_per_peer),
            "max_active_view": self.max_active_view,
            "warmup_msgs_per_peer": self.warmup_msgs_per_peer,
            "seed": self.seed,
            "loss": self.loss,
            "churn": self.churn,
            "sealed": self.sealed,
            "live_peers": b.live_peers,
            "delivered": b.delivered,
            "time_to_full_ms": b.time_to_full_ms,
            "coverage_one_period": b.coverage_one_period,
            "payload_msgs_per_peer": round3(b.payload_msgs_per_peer),
            "all_msgs_per_peer": round3(b.all_msgs_per_peer),
            "mean_active_view": round3(self.mean_active_view),
            "max_passive_view": self.max_passive_view,
            "max_table": self.max_table,
            "overlay_components": self.overlay_components,
            "crashed": self.crashed,
            "joined_late": self.joined_late,
            "frames": self.frames,
            "frames_lost": self.frames_lost,
            "sim_ms": self.sim_ms,
            "violations": {
                "bounds": self.violations.bounds,
                "ttl": self.violations.ttl,
                "duplicate_deliveries": self.violations.duplicate_deliveries,
                "replays_accepted": self.violations.replays_accepted,
            },
        });
        if let Some(base) = &self.baseline {
            v["baseline"] = json!({
                "kind": "push",
                "fanout": base.fanout,
                "coverage": round3(base.coverage),
                "rounds": base.rounds,
                "msgs_per_peer": round3(base.msgs_per_peer),
            });
        }
        v
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A frame on the simulated network.
#[derive(Debug, Clone)]
enum Wire {
    Frame(Frame),
    Bytes(Vec<u8>),
}

enum Peer {
    Plain(Box<Gossip>),
    Sealed(Box<SealedGossip>),
}

impl Peer {
    fn gossip(&self) -> &Gossip {
        match self {
            Peer::Plain(g) => g,
            Peer::Sealed(s) => s.gossip(),
        }
    }
    fn handle(&mut self, now: Timestamp, input: Input) -> Result<(), GossipError> {
        match self {
            Peer::Plain(g) => g.handle(now, input),
            Peer::Sealed(s) => s.handle(now, input),
        }
    }
    fn receive(&mut self, now: Timestamp, wire: Wire) -> Result<(), GossipError> {
        match (self, wire) {
            (Peer::Plain(g), Wire::Frame(frame)) => g.handle(now, Input::Received { frame }),
            (Peer::Sealed(s), Wire::Bytes(b)) => s.receive(now, &b),
            _ => Err(GossipError::Unsealed),
        }
    }
    fn poll(&mut self) -> Option<SimOut> {
        match self {
            Peer::Plain(g) => g.poll().map(|o| match o {
                Output::Send { to, frame } => SimOut::Send {
                    to,
                    kind: frame.msg.kind(),
                    wire: Wire::Frame(frame),
                },
                other => SimOut::Other(other),
            }),
            Peer::Sealed(s) => s.poll().map(|o| match o {
                SealedOutput::Send { to, kind, bytes } => SimOut::Send {
                    to,
                    kind,
                    wire: Wire::Bytes(bytes),
                },
                SealedOutput::Other(o) => SimOut::Other(o),
            }),
        }
    }
}

enum SimOut {
    Send { to: PeerId, kind: Kind, wire: Wire },
    Other(Output),
}

struct Node {
    id: PeerId,
    secret: [u8; 32],
    peer: Option<Peer>,
    inc: u32,
    /// Partition side.
    side: bool,
    joined_at: u64,
    /// When the host last re-introduced an isolated peer to the room.
    roster_at: u64,
}

#[derive(Debug)]
enum EvKind {
    Msg {
        to: u32,
        inc: u32,
        wire: Wire,
        kind: Kind,
        replay: bool,
    },
    Wake {
        node: u32,
        inc: u32,
    },
    Spawn,
    Crash,
    /// The relay reported that `peer` left the room (its connection
    /// dropped): the host tells its gossip the link failed.
    LinkDown {
        node: u32,
        inc: u32,
        peer: PeerId,
    },
}

#[derive(Debug)]
struct Ev {
    t: u64,
    seq: u64,
    kind: EvKind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Self) -> Ordering {
        // BinaryHeap is a max-heap: earliest first.
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

/// The simulator engine; [`run`] is the standard scenario, tests drive
/// their own with these methods.
pub struct GossipSim {
    cfg: GossipSimConfig,
    now: u64,
    seq: u64,
    rng: ChaCha8Rng,
    events: BinaryHeap<Ev>,
    nodes: Vec<Node>,
    index: HashMap<PeerId, u32>,
    alive: Vec<u32>,
    alive_pos: Vec<Option<usize>>,
    doc: DocId,
    room: RoomId,
    partition: bool,
    /// Per broadcast: node -> (time, hops) of first delivery.
    deliveries: HashMap<MsgId, HashMap<u32, (u64, u8)>>,
    /// Sends since `measure_from`: (ms after it, kind).
    log: Vec<(u32, Kind)>,
    measure_from: Option<u64>,
    /// A peer churn never crashes (the measured broadcaster).
    pub protected: Option<u32>,
    pub violations: Violations,
    pub max_active_view: usize,
    pub events_run: u64,
    pub frames: u64,
    pub frames_lost: u64,
    pub errors: HashMap<String, u64>,
}

impl std::fmt::Debug for GossipSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipSim")
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .field("alive", &self.alive.len())
            .finish_non_exhaustive()
    }
}

impl GossipSim {
    pub fn new(cfg: GossipSimConfig) -> GossipSim {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let mut core = CoreRng::from_seed(seed_bytes(&mut rng));
        let doc = DocId(core.array());
        let key = DocKey::generate(&mut core);
        let room = room_id(&key, &doc);
        GossipSim {
            cfg,
            now: 0,
            seq: 0,
            rng,
            events: BinaryHeap::new(),
            nodes: Vec::new(),
            index: HashMap::new(),
            alive: Vec::new(),
            alive_pos: Vec::new(),
            doc,
            room,
            partition: false,
            deliveries: HashMap::new(),
            log: Vec::new(),
            measure_from: None,
            protected: None,
            violations: Violations::default(),
            max_active_view: 0,
            events_run: 0,
            frames: 0,
            frames_lost: 0,
            errors: HashMap::new(),
        }
    }

    pub fn now(&self) -> u64 {
        self.now
    }
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    /// Live nodes.
    pub fn alive(&self) -> &[u32] {
        &self.alive
    }
    pub fn is_alive(&self, i: u32) -> bool {
        self.nodes[i as usize].peer.is_some()
    }
    pub fn gossip(&self, i: u32) -> Option<&Gossip> {
        self.nodes[i as usize].peer.as_ref().map(Peer::gossip)
    }
    pub fn peer_id(&self, i: u32) -> PeerId {
        self.nodes[i as usize].id
    }
    pub fn index_of(&self, p: &PeerId) -> Option<u32> {
        self.index.get(p).copied()
    }
    /// First deliveries of a broadcast: node -> (time, hops).
    pub fn deliveries(&self, id: &MsgId) -> Option<&HashMap<u32, (u64, u8)>> {
        self.deliveries.get(id)
    }

    fn at(&mut self, t: u64, kind: EvKind) {
        self.seq += 1;
        self.events.push(Ev {
            t,
            seq: self.seq,
            kind,
        });
    }

    fn latency(&mut self) -> u64 {
        let (lo, hi) = self.cfg.latency_ms;
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..=hi)
        }
    }

    fn make_peer(&mut self, secret: [u8; 32]) -> Peer {
        let seed = seed_bytes(&mut self.rng);
        let identity = Identity::from_secret(secret);
        if self.cfg.sealed {
            Peer::Sealed(Box::new(SealedGossip::new(
                &identity,
                &self.doc,
                &self.room,
                self.cfg.gossip.clone(),
                seed,
            )))
        } else {
            Peer::Plain(Box::new(Gossip::new(
                identity.peer_id(),
                self.cfg.gossip.clone(),
                seed,
            )))
        }
    }

    /// A new peer joins now, bootstrapping from `bootstrap` random live
    /// peers (as met in the relay room). Returns its index.
    pub fn spawn(&mut self) -> u32 {
        let secret = seed_bytes(&mut self.rng);
        let id = Identity::from_secret(secret).peer_id();
        let i = self.nodes.len() as u32;
        let mut met = Vec::new();
        for _ in 0..self.cfg.bootstrap.min(self.alive.len()) {
            let j = self.alive[self.rng.random_range(0..self.alive.len())];
            if !met.contains(&j) {
                met.push(j);
            }
        }
        let peer = self.make_peer(secret);
        self.nodes.push(Node {
            id,
            secret,
            peer: Some(peer),
            inc: 0,
            side: false,
            joined_at: self.now,
            roster_at: self.now,
        });
        self.index.insert(id, i);
        self.alive_pos.push(Some(self.alive.len()));
        self.alive.push(i);
        for j in met {
            let peer = self.nodes[j as usize].id;
            self.input(i, Input::PeerMet { peer });
        }
        if self.nodes[i as usize]
            .peer
            .as_ref()
            .is_some_and(|p| p.gossip().next_wake().is_none())
        {
            self.input(i, Input::Tick);
        }
        i
    }

    /// What a host does when its gossip has no active peer: introduce it
    /// again to a few members of the relay room (at most every 10 s).
    fn refresh_roster(&mut self, i: u32) {
        let isolated = self
            .gossip(i)
            .is_some_and(|g| g.active_len() == 0 && g.stats().sent_of(Kind::Join) > 0);
        let n = &self.nodes[i as usize];
        if !isolated || self.now < n.roster_at + 10_000 || self.alive.len() < 2 {
            return;
        }
        self.nodes[i as usize].roster_at = self.now;
        for _ in 0..self.cfg.bootstrap {
            let j = self.alive[self.rng.random_range(0..self.alive.len())];
            if j != i {
                self.meet(i, j);
            }
        }
    }

    /// Tells `i` it met `j` in the relay room.
    pub fn meet(&mut self, i: u32, j: u32) {
        let peer = self.nodes[j as usize].id;
        self.input(i, Input::PeerMet { peer });
    }

    /// Stops a peer silently (no goodbye): its links just go quiet.
    pub fn crash(&mut self, i: u32) {
        let Some(gone) = self.nodes[i as usize].peer.take() else {
            return;
        };
        // The relay sees the connection drop and tells the room (PeerLeft);
        // hosts turn that into LinkFailed for gossip.
        if let Some((lo, hi)) = self.cfg.relay_notice_ms {
            let id = self.nodes[i as usize].id;
            for p in gone.gossip().active_view() {
                if let Some(j) = self.index_of(&p) {
                    let t = self.now
                        + if hi > lo {
                            self.rng.random_range(lo..=hi)
                        } else {
                            lo
                        };
                    let inc = self.nodes[j as usize].inc;
                    self.at(
                        t,
                        EvKind::LinkDown {
                            node: j,
                            inc,
                            peer: id,
                        },
                    );
                }
            }
        }
        self.nodes[i as usize].inc += 1;
        if let Some(pos) = self.alive_pos[i as usize].take() {
            self.alive.swap_remove(pos);
            if let Some(&moved) = self.alive.get(pos) {
                self.alive_pos[moved as usize] = Some(pos);
            }
        }
    }

    /// Restarts a crashed peer with the same identity (new session).
    pub fn restart(&mut self, i: u32, bootstrap: &[u32]) {
        if self.nodes[i as usize].peer.is_some() {
            return;
        }
        let peer = self.make_peer(self.nodes[i as usize].secret);
        let n = &mut self.nodes[i as usize];
        n.peer = Some(peer);
        n.inc += 1;
        self.alive_pos[i as usize] = Some(self.alive.len());
        self.alive.push(i);
        for &j in bootstrap {
            self.meet(i, j);
        }
        self.input(i, Input::Tick);
    }

    /// Cuts the network in two (nodes with `side` true vs the rest), or
    /// heals it (None).
    pub fn set_partition(&mut self, sides: Option<&[bool]>) {
        self.partition = sides.is_some();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.side = sides.is_some_and(|s| s.get(i).copied().unwrap_or(false));
        }
    }

    /// Broadcasts a fresh random payload from `i`; returns its id.
    pub fn broadcast(&mut self, i: u32) -> MsgId {
        let mut bytes = vec![0u8; 64];
        self.rng.fill_bytes(&mut bytes);
        let payload = Payload::from(bytes);
        let id = MsgId::of(&payload);
        self.deliveries
            .entry(id)
            .or_default()
            .insert(i, (self.now, 0));
        self.input(i, Input::Broadcast { payload });
        id
    }

    /// Counts sends from now on (see [`Self::sent_between`]).
    pub fn start_measuring(&mut self) {
        self.measure_from = Some(self.now);
        self.log.clear();
    }

    /// Frames sent between `from_ms` and `to_ms` after measuring started
    /// whose kind passes `filter`.
    pub fn sent_between(&self, from_ms: u64, to_ms: u64, filter: impl Fn(Kind) -> bool) -> u64 {
        self.log
            .iter()
            .filter(|(t, k)| u64::from(*t) >= from_ms && u64::from(*t) <= to_ms && filter(*k))
            .count() as u64
    }

    /// Runs every event up to `t`.
    pub fn run_until(&mut self, t: u64) {
        while let Some(ev) = self.events.peek() {
            if ev.t > t {
                break;
            }
            let Some(ev) = self.events.pop() else { break };
            self.now = self.now.max(ev.t);
            self.events_run += 1;
            self.dispatch(ev.kind);
        }
        self.now = self.now.max(t);
    }

    fn dispatch(&mut self, kind: EvKind) {
        match kind {
            EvKind::Msg {
                to,
                inc,
                wire,
                kind,
                replay,
            } => {
                let n = &self.nodes[to as usize];
                if n.inc != inc || n.peer.is_none() {
                    return;
                }
                let copy = if self.cfg.sealed && !replay && self.cfg.replay > 0.0 {
                    Some(wire.clone())
                } else {
                    None
                };
                let now = Timestamp(self.now);
                let r = self.nodes[to as usize]
                    .peer
                    .as_mut()
                    .map_or(Ok(()), |p| p.receive(now, wire));
                match &r {
                    Ok(()) => {
                        if replay && kind != Kind::Hello {
                            self.violations.replays_accepted += 1;
                        }
                    }
                    Err(e) => *self.errors.entry(error_name(e)).or_default() += 1,
                }
                self.drain(to);
                if let Some(copy) = copy
                    && self.rng.random_bool(self.cfg.replay)
                {
                    let target = if self.rng.random_bool(0.5) || self.alive.len() < 2 {
                        to
                    } else {
                        self.alive[self.rng.random_range(0..self.alive.len())]
                    };
                    let delay = self.rng.random_range(1..30_000);
                    let inc = self.nodes[target as usize].inc;
                    self.at(
                        self.now + delay,
                        EvKind::Msg {
                            to: target,
                            inc,
                            wire: copy,
                            kind,
                            replay: true,
                        },
                    );
                }
            }
            EvKind::Wake { node, inc } => {
                if self.nodes[node as usize].inc == inc {
                    self.input(node, Input::Tick);
                    self.refresh_roster(node);
                }
            }
            EvKind::LinkDown { node, inc, peer } => {
                if self.nodes[node as usize].inc == inc {
                    self.input(node, Input::LinkFailed { peer });
                    self.refresh_roster(node);
                }
            }
            EvKind::Spawn => {
                self.spawn();
            }
            EvKind::Crash => {
                let victims: Vec<u32> = self
                    .alive
                    .iter()
                    .copied()
                    .filter(|i| Some(*i) != self.protected)
                    .collect();
                if !victims.is_empty() {
                    let i = victims[self.rng.random_range(0..victims.len())];
                    self.crash(i);
                }
            }
        }
    }

    /// Feeds one input to node `i` and moves its outputs.
    pub fn input(&mut self, i: u32, input: Input) {
        let now = Timestamp(self.now);
        let r = match self.nodes[i as usize].peer.as_mut() {
            Some(p) => p.handle(now, input),
            None => return,
        };
        if let Err(e) = r {
            *self.errors.entry(error_name(&e)).or_default() += 1;
        }
        self.drain(i);
    }

    fn drain(&mut self, i: u32) {
        let ttl = self.cfg.gossip.ttl;
        while let Some(out) = self.nodes[i as usize].peer.as_mut().and_then(Peer::poll) {
            let out = match out {
                SimOut::Send { to, kind, wire } => {
                    if let Wire::Frame(f) = &wire
                        && let Message::Gossip { hops, .. } = &f.msg
                        && (*hops == 0 || *hops > ttl)
                    {
                        self.violations.ttl += 1;
                    }
                    self.transmit(i, to, wire, kind);
                    continue;
                }
                SimOut::Other(o) => o,
            };
            match out {
                Output::Deliver { id, hops, .. } => {
                    if hops == 0 || hops > ttl {
                        self.violations.ttl += 1;
                    }
                    let d = self.deliveries.entry(id).or_default();
                    match d.entry(i) {
                        std::collections::hash_map::Entry::Occupied(_) => {
                            self.violations.duplicate_deliveries += 1;
                        }
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert((self.now, hops));
                        }
                    }
                }
                Output::ViewChanged { active } => {
                    self.max_active_view = self.max_active_view.max(active.len());
                }
                Output::WakeAt(t) => {
                    let inc = self.nodes[i as usize].inc;
                    self.at(t.0.max(self.now), EvKind::Wake { node: i, inc });
                }
                Output::Send { .. } => {}
            }
        }
        if let Some(g) = self.gossip(i) {
            let c = g.config();
            if g.active_len() > c.active_view
                || g.passive_view().len() > c.passive_view
                || g.table_len() > c.max_peers
                || g.origin_trees() > c.origin_trees
            {
                self.violations.bounds += 1;
            }
        }
    }

    fn transmit(&mut self, from: u32, to: PeerId, wire: Wire, kind: Kind) {
        self.frames += 1;
        if let Some(start) = self.measure_from {
            let dt = (self.now - start).min(u64::from(u32::MAX)) as u32;
            self.log.push((dt, kind));
        }
        let Some(to) = self.index.get(&to).copied() else {
            return;
        };
        if self.partition && self.nodes[from as usize].side != self.nodes[to as usize].side {
            self.frames_lost += 1;
            return;
        }
        if self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss) {
            self.frames_lost += 1;
            return;
        }
        let t = self.now + self.latency();
        let inc = self.nodes[to as usize].inc;
        self.at(
            t,
            EvKind::Msg {
                to,
                inc,
                wire,
                kind,
                replay: false,
            },
        );
    }

    /// Undirected active-view graph of live peers: number of connected
    /// components.
    pub fn components(&self) -> usize {
        let n = self.nodes.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(p: &mut [usize], mut x: usize) -> usize {
            while p[x] != x {
                p[x] = p[p[x]];
                x = p[x];
            }
            x
        }
        for &i in &self.alive {
            if let Some(g) = self.gossip(i) {
                for peer in g.active_view() {
                    if let Some(j) = self.index_of(&peer)
                        && self.is_alive(j)
                    {
                        let (a, b) = (find(&mut parent, i as usize), find(&mut parent, j as usize));
                        parent[a] = b;
                    }
                }
            }
        }
        let mut roots = HashSet::new();
        for &i in &self.alive {
            roots.insert(find(&mut parent, i as usize));
        }
        roots.len()
    }
}

impl GossipSim {
    /// Prints (stderr) distances from `origin` in the overlay and along
    /// the eager tree, and how symmetric the tree is.
    pub fn describe_overlay(&self, origin: u32, alive: &[u32]) {
        let tree = Some(self.peer_id(origin));
        for (name, eager) in [("overlay", false), ("origin's eager tree", true)] {
            let mut dist: HashMap<u32, u64> = HashMap::new();
            dist.insert(origin, 0);
            let mut q = std::collections::VecDeque::from([origin]);
            while let Some(x) = q.pop_front() {
                let dx = dist[&x];
                let Some(g) = self.gossip(x) else { continue };
                let next = if eager {
                    g.eager_peers(&tree)
                } else {
                    g.active_view()
                };
                for p in next {
                    if let Some(j) = self.index_of(&p)
                        && self.is_alive(j)
                        && !dist.contains_key(&j)
                    {
                        dist.insert(j, dx + 1);
                        q.push_back(j);
                    }
                }
            }
            let h = histogram(dist.values().copied());
            eprintln!(
                "{name} distances from the origin ({} reached): {h:?}",
                dist.len()
            );
        }
        let (mut ends, mut asymmetric) = (0, 0);
        for &i in alive {
            let Some(g) = self.gossip(i) else { continue };
            for p in g.eager_peers(&tree) {
                ends += 1;
                let back = self
                    .index_of(&p)
                    .and_then(|j| self.gossip(j))
                    .is_some_and(|h| h.eager_peers(&tree).contains(&self.peer_id(i)));
                if !back {
                    asymmetric += 1;
                }
            }
        }
        eprintln!("eager link ends {ends}, one-sided {asymmetric}");
    }

    /// Prints (stderr) when and at how many hops a broadcast arrived, the
    /// frames sent by kind, refusals, and the state of peers it missed.
    pub fn describe_broadcast(&self, id: &MsgId, t_b: u64, live: &[u32]) {
        let empty = HashMap::new();
        let d = self.deliveries(id).unwrap_or(&empty);
        let secs = histogram(
            live.iter()
                .filter_map(|i| d.get(i))
                .map(|(t, _)| (t - t_b) / 1000),
        );
        let hops = histogram(
            live.iter()
                .filter_map(|i| d.get(i))
                .map(|(_, h)| u64::from(*h)),
        );
        eprintln!("delivered by second: {secs:?}\ndelivered by hops: {hops:?}");
        let kinds: Vec<(&str, u64)> = Kind::ALL
            .iter()
            .map(|k| (k.name(), self.sent_between(0, u64::MAX, |x| x == *k)))
            .collect();
        eprintln!(
            "frames sent since the broadcast: {kinds:?}\nrefused: {:?}",
            self.errors
        );
        for i in live.iter().filter(|i| !d.contains_key(i)) {
            let Some(g) = self.gossip(*i) else { continue };
            let me = self.peer_id(*i);
            let active: Vec<String> = g
                .active_view()
                .iter()
                .map(|p| {
                    let j = self.index_of(p).unwrap_or(u32::MAX);
                    format!(
                        "{j}(alive {}, has it {:?}, links back {})",
                        j != u32::MAX && self.is_alive(j),
                        d.get(&j).map(|(t, h)| (t - t_b, *h)),
                        self.gossip(j).is_some_and(|h| h.is_active(&me))
                    )
                })
                .collect();
            eprintln!(
                "missed {i} (joined at {} ms): active {active:?}, passive {}",
                self.nodes[*i as usize].joined_at,
                g.passive_view().len()
            );
        }
    }
}

fn histogram(values: impl Iterator<Item = u64>) -> std::collections::BTreeMap<u64, usize> {
    let mut h = std::collections::BTreeMap::new();
    for v in values {
        *h.entry(v).or_default() += 1;
    }
    h
}

fn error_name(e: &GossipError) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("").to_string()
}

fn seed_bytes(rng: &mut ChaCha8Rng) -> [u8; 32] {
    let mut s = [0; 32];
    rng.fill_bytes(&mut s);
    s
}

/// Plain push gossip at `fanout` over `peers`, from `origin`, losing each
/// message with probability `loss`; synchronous rounds.
pub fn push_baseline(
    peers: &[u32],
    origin: u32,
    fanout: usize,
    ttl: u8,
    loss: f64,
    rng: &mut ChaCha8Rng,
) -> BaselineReport {
    let pos: HashMap<u32, usize> = peers.iter().enumerate().map(|(i, p)| (*p, i)).collect();
    let n = peers.len();
    let mut got = vec![false; n];
    let Some(&o) = pos.get(&origin) else {
        return BaselineReport::default();
    };
    got[o] = true;
    let mut frontier = vec![o];
    let mut rounds = 0u8;
    let mut sent = 0u64;
    let mut hops = 0u8;
    while !frontier.is_empty() && hops < ttl {
        hops += 1;
        let mut next = Vec::new();
        for &x in &frontier {
            for _ in 0..fanout {
                let mut y = rng.random_range(0..n);
                if n > 1 {
                    while y == x {
                        y = rng.random_range(0..n);
                    }
                }
                sent += 1;
                if loss > 0.0 && rng.random_bool(loss) {
                    continue;
                }
                if !got[y] {
                    got[y] = true;
                    rounds = hops;
                    next.push(y);
                }
            }
        }
        frontier = next;
    }
    let reached = got.iter().filter(|g| **g).count();
    BaselineReport {
        fanout,
        coverage: reached as f64 / n as f64,
        rounds,
        msgs_per_peer: sent as f64 / n as f64,
    }
}

/// The `gossip-sim` scenario: `peers` join over the join window, the
/// overlay settles, warm-up broadcasts shape the tree, then one broadcast
/// is measured (with churn spread over a window centred on it).
pub fn run(cfg: &GossipSimConfig) -> GossipSimReport {
    let mut sim = GossipSim::new(cfg.clone());
    let n = cfg.peers.max(1);
    for k in 0..n {
        let t = cfg.join_window_ms * k as u64 / n as u64;
        sim.at(t, EvKind::Spawn);
    }
    sim.run_until(cfg.join_window_ms + cfg.settle_ms);
    // One peer (an editor) broadcasts the warm-ups and the measured
    // message, so steady state means its own tree, set up by a warm-up.
    let origin = sim.alive[sim.rng.random_range(0..sim.alive.len())];
    sim.protected = Some(origin);
    let mut warmup_msgs_per_peer = Vec::new();
    for _ in 0..cfg.warmups {
        sim.start_measuring();
        let w = sim.broadcast(origin);
        let t = sim.now + 5_000;
        sim.run_until(t);
        let per = sim.alive.len().max(1) as f64;
        warmup_msgs_per_peer.push(round3(
            sim.sent_between(0, 5_000, |k| {
                matches!(k, Kind::Gossip | Kind::IHave | Kind::Graft | Kind::Prune)
            }) as f64
                / per,
        ));
        if cfg.verbose {
            let d = &sim.deliveries[&w];
            let hops = histogram(d.values().map(|(_, h)| u64::from(*h)));
            eprintln!("warm-up: {} delivered, by hops {hops:?}", d.len());
        }
    }
    let churn_start = sim.now;
    let churners = (cfg.churn * n as f64).round() as usize;
    for _ in 0..churners {
        let t = churn_start + sim.rng.random_range(0..cfg.churn_window_ms.max(1));
        sim.at(t, EvKind::Crash);
        let t = churn_start + sim.rng.random_range(0..cfg.churn_window_ms.max(1));
        sim.at(t, EvKind::Spawn);
    }
    let t_b = if churners > 0 {
        churn_start + cfg.churn_window_ms / 2
    } else {
        churn_start
    };
    sim.run_until(t_b);
    let alive_at_b: Vec<u32> = sim.alive.clone();
    let mean_active = alive_at_b
        .iter()
        .filter_map(|i| sim.gossip(*i))
        .map(|g| g.active_len() as f64)
        .sum::<f64>()
        / alive_at_b.len().max(1) as f64;
    let max_passive = alive_at_b
        .iter()
        .filter_map(|i| sim.gossip(*i))
        .map(|g| g.passive_view().len())
        .max()
        .unwrap_or(0);
    let max_table = alive_at_b
        .iter()
        .filter_map(|i| sim.gossip(*i))
        .map(|g| g.table_len())
        .max()
        .unwrap_or(0);
    let components = sim.components();
    if cfg.verbose {
        sim.describe_overlay(origin, &alive_at_b);
    }
    sim.start_measuring();
    let id = sim.broadcast(origin);
    let deadline = t_b + cfg.measure_ms;
    sim.run_until(deadline);

    let live: Vec<u32> = alive_at_b
        .iter()
        .copied()
        .filter(|i| sim.is_alive(*i))
        .collect();
    let d = sim.deliveries(&id).cloned().unwrap_or_default();
    let mut delivered = 0;
    let mut rounds = 0u8;
    let mut last = 0u64;
    let mut within_period = 0;
    for i in &live {
        if let Some((t, hops)) = d.get(i) {
            delivered += 1;
            rounds = rounds.max(*hops);
            last = last.max(t - t_b);
            if t - t_b <= cfg.gossip.heartbeat_ms {
                within_period += 1;
            }
        }
    }
    if cfg.verbose {
        sim.describe_broadcast(&id, t_b, &live);
    }
    let full = delivered == live.len();
    let window = if full { last } else { cfg.measure_ms };
    let per = live.len().max(1) as f64;
    let dissemination =
        |k: Kind| matches!(k, Kind::Gossip | Kind::IHave | Kind::Graft | Kind::Prune);
    let broadcast = BroadcastReport {
        live_peers: live.len(),
        delivered,
        coverage: delivered as f64 / per,
        rounds,
        msgs_per_peer: sim.sent_between(0, window, dissemination) as f64 / per,
        payload_msgs_per_peer: sim.sent_between(0, window, |k| k == Kind::Gossip) as f64 / per,
        all_msgs_per_peer: sim.sent_between(0, window, |_| true) as f64 / per,
        time_to_full_ms: full.then_some(last),
        coverage_one_period: within_period as f64 / per,
    };
    let baseline = cfg.baseline.then(|| {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_ba5e);
        push_baseline(
            &alive_at_b,
            origin,
            cfg.gossip.fanout,
            cfg.gossip.ttl,
            cfg.loss,
            &mut rng,
        )
    });
    GossipSimReport {
        peers: cfg.peers,
        seed: cfg.seed,
        loss: cfg.loss,
        churn: cfg.churn,
        sealed: cfg.sealed,
        broadcast,
        max_active_view: sim.max_active_view,
        mean_active_view: mean_active,
        max_passive_view: max_passive,
        max_table,
        overlay_components: components,
        crashed: churners,
        joined_late: sim
            .nodes
            .iter()
            .filter(|n| n.joined_at > churn_start)
            .count(),
        sim_ms: sim.now,
        events: sim.events_run,
        frames: sim.frames,
        frames_lost: sim.frames_lost,
        violations: sim.violations.clone(),
        warmup_msgs_per_peer,
        baseline,
    }
}
