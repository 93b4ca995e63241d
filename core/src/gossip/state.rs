//! The gossip state machine: HyParView membership, Plumtree dissemination,
//! a scored peer table and session/replay checks, on decoded frames.

use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::config::GossipConfig;
use super::map::VecMap;
use super::message::{Frame, Have, Kind, Message, MsgId, Payload, PeerInfo};
#[cfg(feature = "broadcast")]
use super::message::{MAX_IDS, MAX_PAYLOAD, Tree};
use super::table::{Admit, PeerEntry};
use crate::crypto::Rng;
use crate::id::PeerId;
use crate::time::Timestamp;
use crate::wire::WireError;

/// What the host tells the state machine.
#[derive(Debug, Clone)]
pub enum Input {
    /// A peer of this swarm was met outside gossip (in the relay room, from
    /// a sync `Have`, from a stored list): a bootstrap candidate.
    PeerMet { peer: PeerId },
    /// A frame from the network, opened and verified by the codec.
    Received { frame: Frame },
    /// The application broadcasts a payload to the swarm.
    Broadcast { payload: Payload },
    /// The host lost its direct link to a peer (WebRTC closed, relay gone).
    LinkFailed { peer: PeerId },
    /// This peer's own record changed: opt in or out of being reachable.
    SetReachable {
        reachable: bool,
        addresses: Vec<String>,
    },
    /// Leave the swarm for good: tell active peers, stop.
    Leave,
    /// A timer asked for with [`Output::WakeAt`] is due (or any time).
    Tick,
}

/// What the state machine asks the host to do.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send a frame to a peer (through the codec: sealed and signed).
    Send { to: PeerId, frame: Frame },
    /// A broadcast arrived for the first time: hand it to the application.
    /// `from` is the neighbour that relayed it, not its origin.
    Deliver {
        id: MsgId,
        payload: Payload,
        from: PeerId,
        hops: u8,
    },
    /// The active view changed: the peers to keep direct links with.
    ViewChanged { active: Vec<PeerId> },
    /// Call `handle(now, Input::Tick)` at this time.
    WakeAt(Timestamp),
}

/// Why input was refused. Bad input from the network is an error value
/// (counted in the stats), never a panic, and is never acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GossipError {
    /// The sealed frame is larger than the limit.
    Oversized { len: usize, max: usize },
    /// The seal does not open: another swarm, or damaged.
    Unsealed,
    /// Not a gossip frame of this version, or over a count limit.
    Malformed(WireError),
    /// The signature does not match the stated sender (or its key is
    /// invalid, or there is none).
    Forged,
    /// Addressed to another peer.
    Misdirected,
    /// Claims to come from this peer.
    OwnFrame,
    /// Does not echo this peer's current session: older than this
    /// incarnation (a replay, or a sender that has not heard of the
    /// restart). Answered with a `Hello`.
    Stale,
    /// Seen before.
    Replayed,
    /// A broadcast copy at more hops than the TTL, or at 0.
    TtlExceeded { hops: u8 },
    /// A broadcast larger than [`MAX_PAYLOAD`].
    PayloadTooLarge { len: usize, max: usize },
    /// A record about another peer where the sender's own was expected.
    Impersonation,
    /// The instance has left the swarm.
    Left,
    /// A broadcast asked of a build without the `broadcast` feature
    /// (membership only).
    Unsupported { kind: Kind },
}

impl fmt::Display for GossipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GossipError::Oversized { len, max } => {
                write!(f, "gossip frame of {len} bytes exceeds the limit of {max}")
            }
            GossipError::Unsealed => {
                f.write_str("gossip frame does not open: another swarm or damaged")
            }
            GossipError::Malformed(e) => write!(f, "malformed gossip frame: {e}"),
            GossipError::Forged => f.write_str("gossip frame signature does not match its sender"),
            GossipError::Misdirected => f.write_str("gossip frame addressed to another peer"),
            GossipError::OwnFrame => f.write_str("gossip frame claims to come from this peer"),
            GossipError::Stale => f.write_str("gossip frame from before this peer's session"),
            GossipError::Replayed => f.write_str("gossip frame replayed"),
            GossipError::TtlExceeded { hops } => {
                write!(f, "broadcast copy at {hops} hops is beyond the TTL")
            }
            GossipError::PayloadTooLarge { len, max } => {
                write!(f, "broadcast of {len} bytes exceeds the limit of {max}")
            }
            GossipError::Impersonation => {
                f.write_str("peer record about another peer where the sender's own was expected")
            }
            GossipError::Left => f.write_str("this peer has left the swarm"),
            GossipError::Unsupported { kind } => {
                write!(f, "gossip {} is not supported by this build", kind.name())
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for GossipError {}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Frames sent / accepted, by [`Kind`] (index `kind as usize`).
    pub sent: [u64; Kind::COUNT],
    pub received: [u64; Kind::COUNT],
    /// Broadcasts handed to the application.
    pub delivered: u64,
    /// Broadcast copies that arrived again.
    pub duplicates: u64,
    /// Frames refused because they did not echo this session.
    pub stale: u64,
    pub replayed: u64,
    pub misdirected: u64,
    pub ttl_exceeded: u64,
    /// Other refused frames (own frames, impersonation, bad session).
    pub invalid: u64,
    /// Active peers declared failed (missed heartbeats or link failure).
    pub failed_peers: u64,
    /// Peers forgotten after `peer_expiry_ms` of silence.
    pub expired_peers: u64,
}

impl GossipStats {
    /// Frames sent of one kind.
    pub fn sent_of(&self, kind: Kind) -> u64 {
        self.sent[kind as usize]
    }
    /// Every frame refused by the state machine.
    pub fn dropped(&self) -> u64 {
        self.stale + self.replayed + self.misdirected + self.ttl_exceeded + self.invalid
    }
}

#[derive(Debug, Clone)]
struct ActivePeer {
    peer: PeerId,
    /// Nonce of the unanswered heartbeat (0: none) and when it was sent.
    ping: u64,
    ping_at: Timestamp,
    /// A fresh frame arrived since the last heartbeat tick.
    heard: bool,
    missed: u8,
}

#[derive(Debug, Clone)]
struct Probe {
    peer: PeerId,
    next_at: Timestamp,
    backoff: u64,
}

#[cfg(feature = "broadcast")]
#[derive(Debug, Clone)]
struct Seen {
    hops: u8,
    from: Option<PeerId>,
    tree: Tree,
    at: Timestamp,
}

/// The lazy links of one spanning tree (Plumtree): active peers not in
/// `lazy` are eager, so a new link starts eager on every tree.
#[cfg(feature = "broadcast")]
#[derive(Debug, Clone, Default)]
struct TreeLinks {
    lazy: Vec<PeerId>,
    /// Use counter for least-recently-used eviction of origin trees.
    used: u64,
}

#[cfg(feature = "broadcast")]
#[derive(Debug, Clone, Default)]
struct Missing {
    announcers: Vec<(PeerId, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Timer {
    Heartbeat,
    Shuffle,
    #[cfg(feature = "broadcast")]
    Graft(MsgId),
    Pending(PeerId),
    Expiry,
}

/// A timer in the queue: the earliest (time, then order of scheduling)
/// comes out first.
#[derive(Debug)]
struct Scheduled {
    at: Timestamp,
    seq: u64,
    timer: Timer,
}

impl Scheduled {
    fn key(&self) -> (Timestamp, u64) {
        (self.at, self.seq)
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: `BinaryHeap` is a max-heap.
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        other.key().cmp(&self.key())
    }
}

/// Failed active peers re-tried (partitions that heal, restarts).
const MAX_PROBES: usize = 8;
/// Longest probe backoff, in heartbeat periods.
const MAX_PROBE_BACKOFF: u64 = 4;
/// Announcers remembered per missing message.
#[cfg(feature = "broadcast")]
const MAX_ANNOUNCERS: usize = 8;
/// Missing messages tracked at once.
#[cfg(feature = "broadcast")]
const MAX_MISSING: usize = 4096;

/// The gossip state machine of one swarm. See the [module docs](super).
pub struct Gossip {
    me: PeerId,
    config: GossipConfig,
    rng: Rng,
    now: Timestamp,
    session: u64,
    next_seq: u64,
    started: bool,
    left: bool,
    /// Has ever had an active peer (a newcomer joins; others repair).
    joined: bool,
    table: VecMap<PeerId, PeerEntry>,
    /// Replay floors of peers evicted from the table: (session, highest seq).
    graveyard: VecMap<PeerId, Vec<(u64, u64)>>,
    graveyard_order: VecDeque<PeerId>,
    active: Vec<ActivePeer>,
    passive: Vec<PeerId>,
    /// Unanswered `Join`s and `Neighbor`s: their deadlines (a `Timestamp`'s
    /// milliseconds: the map type the node already has, no new code).
    pending: BTreeMap<PeerId, u64>,
    probes: Vec<Probe>,
    #[cfg(feature = "broadcast")]
    seen: BTreeMap<MsgId, Seen>,
    #[cfg(feature = "broadcast")]
    seen_order: VecDeque<MsgId>,
    #[cfg(feature = "broadcast")]
    cache: BTreeMap<MsgId, Payload>,
    #[cfg(feature = "broadcast")]
    cache_order: VecDeque<(MsgId, Timestamp)>,
    #[cfg(feature = "broadcast")]
    cache_bytes: usize,
    #[cfg(feature = "broadcast")]
    missing: BTreeMap<MsgId, Missing>,
    /// Spanning trees: the shared one (`None`, always kept) and origins'
    /// own, bounded by `origin_trees`.
    #[cfg(feature = "broadcast")]
    trees: BTreeMap<Tree, TreeLinks>,
    #[cfg(feature = "broadcast")]
    tree_clock: u64,
    /// When this peer's recent broadcasts were made (own-tree decision).
    #[cfg(feature = "broadcast")]
    own_broadcasts: VecDeque<Timestamp>,
    timers: BinaryHeap<Scheduled>,
    timer_seq: u64,
    expiry_at: Option<Timestamp>,
    wake_at: Option<Timestamp>,
    last_view: Vec<PeerId>,
    outputs: VecDeque<Output>,
    stats: GossipStats,
}

impl fmt::Debug for Gossip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gossip")
            .field("me", &self.me)
            .field("active", &self.active.len())
            .field("passive", &self.passive.len())
            .field("table", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl Gossip {
    /// A state machine for peer `me`. `seed` must be fresh randomness from
    /// the host at every start (the session id is drawn from it).
    pub fn new(me: PeerId, mut config: GossipConfig, seed: [u8; 32]) -> Gossip {
        let mut rng = Rng::from_seed(seed);
        let session = loop {
            let s = rng.u64();
            if s != 0 {
                break s;
            }
        };
        config.active_view = config.active_view.max(1);
        config.max_peers = config
            .max_peers
            .max(config.active_view + config.passive_view + 8);
        config.heartbeat_ms = config.heartbeat_ms.max(1);
        config.shuffle_ms = config.shuffle_ms.max(1);
        config.max_missed_heartbeats = config.max_missed_heartbeats.max(1);
        config.ttl = config.ttl.max(1);
        Gossip {
            me,
            config,
            rng,
            now: Timestamp(0),
            session,
            next_seq: 0,
            started: false,
            left: false,
            joined: false,
            table: VecMap::new(),
            graveyard: VecMap::new(),
            graveyard_order: VecDeque::new(),
            active: Vec::new(),
            passive: Vec::new(),
            pending: BTreeMap::new(),
            probes: Vec::new(),
            #[cfg(feature = "broadcast")]
            seen: BTreeMap::new(),
            #[cfg(feature = "broadcast")]
            seen_order: VecDeque::new(),
            #[cfg(feature = "broadcast")]
            cache: BTreeMap::new(),
            #[cfg(feature = "broadcast")]
            cache_order: VecDeque::new(),
            #[cfg(feature = "broadcast")]
            cache_bytes: 0,
            #[cfg(feature = "broadcast")]
            missing: BTreeMap::new(),
            #[cfg(feature = "broadcast")]
            trees: BTreeMap::new(),
            #[cfg(feature = "broadcast")]
            tree_clock: 0,
            #[cfg(feature = "broadcast")]
            own_broadcasts: VecDeque::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            expiry_at: None,
            wake_at: None,
            last_view: Vec::new(),
            outputs: VecDeque::new(),
            stats: GossipStats::default(),
        }
    }

    // ---- accessors ---------------------------------------------------

    pub fn peer_id(&self) -> PeerId {
        self.me
    }
    /// This incarnation's session id.
    pub fn session(&self) -> u64 {
        self.session
    }
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }
    pub fn stats(&self) -> &GossipStats {
        &self.stats
    }
    /// The active view: peers to keep direct links with.
    pub fn active_view(&self) -> Vec<PeerId> {
        self.active.iter().map(|a| a.peer).collect()
    }
    pub fn active_len(&self) -> usize {
        self.active.len()
    }
    /// The passive view: repair candidates.
    pub fn passive_view(&self) -> &[PeerId] {
        &self.passive
    }
    /// Active peers that messages on `tree` are pushed to eagerly.
    #[cfg(feature = "broadcast")]
    pub fn eager_peers(&self, tree: &Tree) -> Vec<PeerId> {
        self.active
            .iter()
            .filter(|a| self.is_eager(tree, &a.peer))
            .map(|a| a.peer)
            .collect()
    }
    /// Origin trees this peer keeps links for (the shared tree aside).
    #[cfg(feature = "broadcast")]
    pub fn origin_trees(&self) -> usize {
        self.trees.keys().filter(|t| t.is_some()).count()
    }
    pub fn is_active(&self, peer: &PeerId) -> bool {
        self.active.iter().any(|a| a.peer == *peer)
    }
    /// What this peer knows about `peer`.
    pub fn peer(&self, peer: &PeerId) -> Option<&PeerEntry> {
        self.table.get(peer)
    }
    /// The peer table.
    pub fn peers(&self) -> impl Iterator<Item = (&PeerId, &PeerEntry)> {
        self.table.iter()
    }
    pub fn table_len(&self) -> usize {
        self.table.len()
    }
    /// A broadcast was received or sent (within the dedup cache).
    #[cfg(feature = "broadcast")]
    pub fn has_seen(&self, id: &MsgId) -> bool {
        self.seen.contains_key(id)
    }
    /// The record of `peer` this peer would pass on: addresses only if the
    /// peer opted in to being reachable.
    pub fn peer_info(&self, peer: &PeerId) -> Option<PeerInfo> {
        if *peer == self.me {
            return Some(self.my_info());
        }
        self.table.get(peer).map(|e| self.info_of(peer, e))
    }
    /// The next time the state machine wants a tick.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.timers.peek().map(|s| s.at)
    }

    // ---- driving -----------------------------------------------------

    /// Feeds one input.
    pub fn handle(&mut self, now: Timestamp, input: Input) -> Result<(), GossipError> {
        if self.left {
            return Err(GossipError::Left);
        }
        self.now = self.now.max(now);
        if !self.started {
            self.start();
        }
        self.run_timers();
        let result = match input {
            Input::PeerMet { peer } => {
                self.on_peer_met(peer);
                Ok(())
            }
            Input::Received { frame } => self.on_frame(frame),
            #[cfg(feature = "broadcast")]
            Input::Broadcast { payload } => self.broadcast_inner(payload).map(|_| ()),
            #[cfg(not(feature = "broadcast"))]
            Input::Broadcast { .. } => Err(GossipError::Unsupported { kind: Kind::Gossip }),
            Input::LinkFailed { peer } => {
                self.fail(peer);
                Ok(())
            }
            Input::SetReachable {
                reachable,
                addresses,
            } => {
                self.config.reachable = reachable;
                self.config.addresses = addresses;
                let info = self.my_info();
                for p in self.active_view() {
                    self.send(p, Message::PeerUpdate { info: info.clone() });
                }
                Ok(())
            }
            Input::Leave => {
                for p in self.active_view() {
                    self.send(p, Message::Disconnect { alive: false });
                }
                self.active.clear();
                self.passive.clear();
                self.pending.clear();
                self.timers.clear();
                self.left = true;
                Ok(())
            }
            Input::Tick => Ok(()),
        };
        self.finish();
        result
    }

    /// Broadcasts a payload; returns its id.
    #[cfg(feature = "broadcast")]
    pub fn broadcast(&mut self, now: Timestamp, payload: Payload) -> Result<MsgId, GossipError> {
        if self.left {
            return Err(GossipError::Left);
        }
        self.now = self.now.max(now);
        if !self.started {
            self.start();
        }
        self.run_timers();
        let r = self.broadcast_inner(payload);
        self.finish();
        r
    }

    /// Drains one output.
    pub fn poll(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn start(&mut self) {
        self.started = true;
        let hb = self.now.plus(self.below(self.config.heartbeat_ms));
        self.schedule(hb, Timer::Heartbeat);
        let sh = self
            .now
            .plus(self.config.shuffle_ms / 2 + self.below(self.config.shuffle_ms));
        self.schedule(sh, Timer::Shuffle);
    }

    fn finish(&mut self) {
        let mut view = self.active_view();
        view.sort_unstable();
        if view != self.last_view {
            self.last_view = view.clone();
            self.outputs.push_back(Output::ViewChanged { active: view });
        }
        let next = self.next_wake();
        if next != self.wake_at {
            self.wake_at = next;
            if let Some(t) = next {
                self.outputs.push_back(Output::WakeAt(t));
            }
        }
    }

    // ---- randomness and timers ----------------------------------------

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rng.u64() % n }
    }

    fn pick(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    fn schedule(&mut self, at: Timestamp, timer: Timer) {
        self.timer_seq += 1;
        self.timers.push(Scheduled {
            at,
            seq: self.timer_seq,
            timer,
        });
    }

    fn run_timers(&mut self) {
        while self.timers.peek().is_some_and(|s| s.at <= self.now) {
            let Some(Scheduled { timer, .. }) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::Heartbeat => self.on_heartbeat_tick(),
                Timer::Shuffle => self.on_shuffle_tick(),
                #[cfg(feature = "broadcast")]
                Timer::Graft(id) => self.on_graft_timer(id),
                Timer::Pending(peer) => self.on_pending_timeout(peer),
                Timer::Expiry => self.expire(),
            }
        }
    }

    // ---- the peer table ------------------------------------------------

    /// Makes sure `peer` has an entry (new ones last seen at `seen_at`),
    /// evicting the lowest-scored evictable entry when full.
    fn ensure(&mut self, peer: PeerId, seen_at: Timestamp) -> bool {
        if peer == self.me {
            return false;
        }
        if self.table.contains_key(&peer) {
            return true;
        }
        if self.table.len() >= self.config.max_peers {
            let victim = self
                .table
                .iter()
                .filter(|(p, _)| {
                    !self.active.iter().any(|a| a.peer == **p) && !self.pending.contains_key(*p)
                })
                .min_by_key(|(_, e)| e.score())
                .map(|(p, _)| *p);
            match victim {
                Some(v) => self.forget(v),
                None => return false,
            }
        }
        let mut entry = PeerEntry::new(seen_at);
        if let Some(floors) = self.graveyard.remove(&peer) {
            for (session, floor) in floors {
                entry.restore_window(session, floor);
            }
            entry.session = entry.windows.last().map_or(0, |w| w.session);
        }
        self.table.insert(peer, entry);
        self.note_last_seen(seen_at);
        true
    }

    /// Removes a peer from the table (and every view), keeping its replay
    /// floors.
    fn forget(&mut self, peer: PeerId) {
        self.remove_active(peer);
        self.passive.retain(|p| *p != peer);
        self.pending.remove(&peer);
        self.probes.retain(|p| p.peer != peer);
        if let Some(e) = self.table.remove(&peer) {
            let floors = e.floors();
            if !floors.is_empty() {
                if self.graveyard.insert(peer, floors).is_none() {
                    self.graveyard_order.push_back(peer);
                }
                while self.graveyard_order.len() > 2 * self.config.max_peers {
                    if let Some(old) = self.graveyard_order.pop_front() {
                        self.graveyard.remove(&old);
                    }
                }
            }
        }
    }

    fn note_last_seen(&mut self, seen: Timestamp) {
        let at = seen.plus(self.config.peer_expiry_ms);
        if self.expiry_at.is_none_or(|e| at < e) {
            self.expiry_at = Some(at);
            self.schedule(at, Timer::Expiry);
        }
    }

    fn expire(&mut self) {
        let now = self.now;
        let ttl = self.config.peer_expiry_ms;
        let dead: Vec<PeerId> = self
            .table
            .iter()
            .filter(|(_, e)| now.since(e.last_seen) >= ttl)
            .map(|(p, _)| *p)
            .collect();
        for p in &dead {
            if self.is_active(p) {
                self.stats.failed_peers += 1;
            }
            self.forget(*p);
            self.stats.expired_peers += 1;
        }
        let next = self.table.values().map(|e| e.last_seen.plus(ttl)).min();
        self.expiry_at = next;
        if let Some(t) = next {
            let scheduled = self
                .timers
                .iter()
                .any(|s| s.at == t && s.timer == Timer::Expiry);
            if !scheduled {
                self.schedule(t, Timer::Expiry);
            }
        }
        if !dead.is_empty() {
            self.repair();
        }
    }

    fn my_info(&self) -> PeerInfo {
        PeerInfo {
            id: self.me,
            reachable: self.config.reachable,
            addresses: if self.config.reachable {
                self.config.addresses.clone()
            } else {
                Vec::new()
            },
            age_s: 0,
        }
    }

    fn info_of(&self, peer: &PeerId, e: &PeerEntry) -> PeerInfo {
        PeerInfo {
            id: *peer,
            reachable: e.reachable,
            // Passed on only with the peer's own opt-in.
            addresses: if e.reachable {
                e.addresses.clone()
            } else {
                Vec::new()
            },
            age_s: self
                .now
                .since(e.last_seen)
                .div_ceil(1000)
                .min(u64::from(u32::MAX)) as u32,
        }
    }

    fn info(&self, peer: &PeerId) -> Option<PeerInfo> {
        self.table.get(peer).map(|e| self.info_of(peer, e))
    }

    /// Applies a peer's record: its own (`first_hand`) always; one passed
    /// on by others only while nothing first-hand is known.
    fn apply_info(&mut self, info: &PeerInfo, first_hand: bool) {
        if let Some(e) = self.table.get_mut(&info.id)
            && (first_hand || !e.first_hand)
        {
            e.reachable = info.reachable;
            e.addresses = if info.reachable {
                info.addresses.clone()
            } else {
                Vec::new()
            };
            e.first_hand |= first_hand;
        }
    }

    /// Learns a record passed on by another peer. False if it is about
    /// this peer, already expired, or there is no room.
    fn learn(&mut self, info: &PeerInfo) -> bool {
        if info.id == self.me {
            return false;
        }
        let age = u64::from(info.age_s) * 1000;
        if age >= self.config.peer_expiry_ms {
            return false;
        }
        let seen_at = Timestamp(self.now.0.saturating_sub(age));
        if !self.ensure(info.id, seen_at) {
            return false;
        }
        if let Some(e) = self.table.get_mut(&info.id)
            && seen_at > e.last_seen
        {
            e.last_seen = seen_at;
        }
        self.apply_info(info, false);
        true
    }

    fn touch(&mut self, peer: &PeerId) {
        let now = self.now;
        if let Some(e) = self.table.get_mut(peer) {
            e.last_seen = e.last_seen.max(now);
        }
    }

    // ---- sending -------------------------------------------------------

    /// Sends a message, after a session handshake if the peer's session is
    /// not known yet.
    fn send(&mut self, to: PeerId, msg: Message) {
        if to == self.me {
            return;
        }
        if !self.ensure(to, self.now) {
            return;
        }
        let cap = self.config.outbox_capacity.max(1);
        let Some(e) = self.table.get_mut(&to) else {
            return;
        };
        if e.session == 0 {
            if e.outbox.len() >= cap {
                e.outbox.remove(0);
            }
            e.outbox.push(msg);
            self.send_hello(to, 0);
            return;
        }
        let echo = e.session;
        self.emit(to, msg, echo);
    }

    fn emit(&mut self, to: PeerId, msg: Message, echo: u64) {
        self.next_seq += 1;
        self.stats.sent[msg.kind() as usize] += 1;
        self.outputs.push_back(Output::Send {
            to,
            frame: Frame {
                from: self.me,
                to,
                session: self.session,
                seq: self.next_seq,
                echo,
                msg,
            },
        });
    }

    /// Tells `to` this peer's session (at most once per `hello_interval_ms`).
    fn send_hello(&mut self, to: PeerId, echo: u64) {
        let now = self.now;
        let interval = self.config.hello_interval_ms;
        let Some(e) = self.table.get_mut(&to) else {
            return;
        };
        if e.last_hello.is_some_and(|t| now.since(t) < interval) {
            return;
        }
        e.last_hello = Some(now);
        let info = self.my_info();
        self.emit(to, Message::Hello { info }, echo);
    }

    fn flush_outbox(&mut self, peer: PeerId) {
        let Some(e) = self.table.get_mut(&peer) else {
            return;
        };
        if e.session == 0 || e.outbox.is_empty() {
            return;
        }
        let echo = e.session;
        let msgs = core::mem::take(&mut e.outbox);
        for m in msgs {
            self.emit(peer, m, echo);
        }
    }

    // ---- receiving -----------------------------------------------------

    fn on_frame(&mut self, f: Frame) -> Result<(), GossipError> {
        if f.to != self.me {
            self.stats.misdirected += 1;
            return Err(GossipError::Misdirected);
        }
        if f.from == self.me || f.session == 0 {
            self.stats.invalid += 1;
            return Err(GossipError::OwnFrame);
        }
        let from = f.from;
        let kind = f.msg.kind();
        if f.echo != self.session {
            if let Message::Hello { info } = f.msg {
                // Freshness unknown: learn where to reach the peer, answer
                // with this session, nothing more.
                if !self.ensure(from, self.now) {
                    return Ok(());
                }
                if let Some(e) = self.table.get_mut(&from)
                    && !e.admit_hello(f.session, f.seq)
                {
                    self.stats.replayed += 1;
                    return Err(GossipError::Replayed);
                }
                self.stats.received[kind as usize] += 1;
                return self.on_hello(from, f.session, &info, false);
            }
            self.stats.stale += 1;
            if self.ensure(from, self.now) {
                self.send_hello(from, f.session);
            }
            return Err(GossipError::Stale);
        }
        if !self.ensure(from, self.now) {
            self.stats.invalid += 1;
            return Err(GossipError::OwnFrame);
        }
        let mut restarted = false;
        if let Some(e) = self.table.get_mut(&from) {
            match e.admit(f.session, f.seq) {
                Admit::Replay => {
                    self.stats.replayed += 1;
                    return Err(GossipError::Replayed);
                }
                Admit::Known => {}
                Admit::NewSession => {
                    restarted = e.session != 0 && e.session != f.session;
                    e.session = f.session;
                }
            }
        }
        self.touch(&from);
        if restarted && self.remove_active(from) {
            // It restarted: its views are empty, the link is gone.
            self.add_passive(from);
            self.repair();
        }
        self.flush_outbox(from);
        if let Some(a) = self.active.iter_mut().find(|a| a.peer == from) {
            a.heard = true;
        }
        self.stats.received[kind as usize] += 1;
        match f.msg {
            Message::Hello { info } => self.on_hello(from, f.session, &info, true),
            Message::PeerAnnouncement { peer, ttl } => {
                self.on_announcement(from, peer, ttl);
                Ok(())
            }
            Message::PeerRequest {
                origin,
                sample,
                ttl,
            } => {
                self.on_peer_request(from, origin, sample, ttl);
                Ok(())
            }
            Message::PeerListResponse { sample } => {
                self.integrate(&sample);
                Ok(())
            }
            Message::Heartbeat { ping, pong, have } => {
                self.on_heartbeat(from, ping, pong, &have);
                Ok(())
            }
            Message::PeerUpdate { info } => {
                if info.id != from {
                    self.stats.invalid += 1;
                    return Err(GossipError::Impersonation);
                }
                self.apply_info(&info, true);
                Ok(())
            }
            Message::Join { info } => {
                if info.id != from {
                    self.stats.invalid += 1;
                    return Err(GossipError::Impersonation);
                }
                self.on_join(from, &info);
                Ok(())
            }
            Message::Neighbor { high } => {
                self.on_neighbor(from, high);
                Ok(())
            }
            Message::NeighborReply { accepted } => {
                self.on_neighbor_reply(from, accepted);
                Ok(())
            }
            Message::Disconnect { alive } => {
                self.on_disconnect(from, alive);
                Ok(())
            }
            #[cfg(feature = "broadcast")]
            Message::Gossip {
                hops,
                payload,
                tree,
            } => self.on_gossip(from, hops, tree, payload),
            #[cfg(feature = "broadcast")]
            Message::IHave { have } => {
                if self.is_active(&from) {
                    self.on_ihave(from, &have);
                }
                Ok(())
            }
            #[cfg(feature = "broadcast")]
            Message::Graft { ids, trees } => {
                self.on_graft(from, &ids, &trees);
                Ok(())
            }
            #[cfg(feature = "broadcast")]
            Message::Prune { id, tree } => {
                self.on_prune(from, id, tree);
                Ok(())
            }
        }
    }

    fn on_hello(
        &mut self,
        from: PeerId,
        session: u64,
        info: &PeerInfo,
        fresh: bool,
    ) -> Result<(), GossipError> {
        if info.id != from {
            self.stats.invalid += 1;
            return Err(GossipError::Impersonation);
        }
        if !self.ensure(from, self.now) {
            return Ok(());
        }
        let first_hand_known = self.table.get(&from).is_some_and(|e| e.first_hand);
        if fresh || !first_hand_known {
            self.apply_info(info, true);
        }
        if !fresh {
            if let Some(e) = self.table.get_mut(&from)
                && e.session == 0
            {
                e.session = session;
            }
            // It does not know this session yet: tell it.
            self.send_hello(from, session);
        }
        self.flush_outbox(from);
        Ok(())
    }

    fn on_peer_met(&mut self, peer: PeerId) {
        if !self.ensure(peer, self.now) {
            return;
        }
        self.touch(&peer);
        self.add_passive(peer);
        self.repair();
    }

    // ---- membership (HyParView) ---------------------------------------

    fn add_active(&mut self, peer: PeerId) {
        if peer == self.me || self.is_active(&peer) || !self.ensure(peer, self.now) {
            return;
        }
        self.pending.remove(&peer);
        while self.active.len() >= self.config.active_view {
            let i = self.pick(self.active.len());
            let victim = self.active[i].peer;
            self.remove_active(victim);
            self.send(victim, Message::Disconnect { alive: true });
            self.add_passive(victim);
        }
        self.passive.retain(|p| *p != peer);
        self.probes.retain(|p| p.peer != peer);
        if let Some(e) = self.table.get_mut(&peer) {
            e.rejected_at = None;
        }
        self.active.push(ActivePeer {
            peer,
            ping: 0,
            ping_at: self.now,
            heard: true,
            missed: 0,
        });
        self.joined = true;
    }

    fn remove_active(&mut self, peer: PeerId) -> bool {
        let Some(i) = self.active.iter().position(|a| a.peer == peer) else {
            return false;
        };
        self.active.remove(i);
        #[cfg(feature = "broadcast")]
        {
            for t in self.trees.values_mut() {
                t.lazy.retain(|p| *p != peer);
            }
            for m in self.missing.values_mut() {
                m.announcers.retain(|(p, _)| *p != peer);
            }
        }
        true
    }

    fn add_passive(&mut self, peer: PeerId) {
        if peer == self.me
            || self.is_active(&peer)
            || self.passive.contains(&peer)
            || !self.ensure(peer, self.now)
        {
            return;
        }
        if self.passive.len() >= self.config.passive_view {
            let i = self.pick(self.passive.len());
            self.passive.swap_remove(i);
        }
        self.passive.push(peer);
    }

    fn random_active_except(&mut self, except: &[PeerId]) -> Option<PeerId> {
        let candidates: Vec<PeerId> = self
            .active
            .iter()
            .map(|a| a.peer)
            .filter(|p| !except.contains(p))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let i = self.pick(candidates.len());
        Some(candidates[i])
    }

    fn request(&mut self, peer: PeerId, msg: Message) {
        if peer == self.me || self.is_active(&peer) || self.pending.contains_key(&peer) {
            return;
        }
        let deadline = self.now.plus(self.config.neighbor_timeout_ms.max(1));
        self.pending.insert(peer, deadline.0);
        self.schedule(deadline, Timer::Pending(peer));
        self.send(peer, msg);
    }

    fn join(&mut self, peer: PeerId) {
        let info = self.my_info();
        self.request(peer, Message::Join { info });
    }

    fn request_neighbor(&mut self, peer: PeerId, high: bool) {
        self.request(peer, Message::Neighbor { high });
    }

    /// Fills the active view from the passive view; joins when isolated.
    fn repair(&mut self) {
        if self.left {
            return;
        }
        let now = self.now;
        let quiet = self.config.heartbeat_ms;
        let usable = |g: &Gossip, p: &PeerId| {
            !g.pending.contains_key(p)
                && !g.is_active(p)
                && g.table
                    .get(p)
                    .is_some_and(|e| e.rejected_at.is_none_or(|t| now.since(t) >= quiet))
        };
        if !self.joined {
            if !self.pending.is_empty() {
                return;
            }
            let mut candidates: Vec<PeerId> = self
                .passive
                .iter()
                .filter(|p| usable(self, p))
                .copied()
                .collect();
            if candidates.is_empty() {
                candidates = self
                    .table
                    .keys()
                    .filter(|p| usable(self, p))
                    .copied()
                    .collect();
            }
            if let Some(p) = self.choose(&candidates) {
                self.join(p);
            }
            return;
        }
        let mut want = self
            .config
            .active_view
            .saturating_sub(self.active.len() + self.pending.len());
        while want > 0 {
            let candidates: Vec<PeerId> = self
                .passive
                .iter()
                .filter(|p| usable(self, p))
                .copied()
                .collect();
            let Some(p) = self.choose(&candidates) else {
                break;
            };
            // At most half a view (an island of newcomers, or most links
            // lost): ask with high priority, which full peers must accept.
            let high = self.active.len() * 2 <= self.config.active_view;
            self.request_neighbor(p, high);
            want -= 1;
        }
        if self.active.is_empty() && self.pending.is_empty() {
            let candidates: Vec<PeerId> = self
                .table
                .keys()
                .filter(|p| usable(self, p))
                .copied()
                .collect();
            if let Some(p) = self.choose(&candidates) {
                self.join(p);
            }
        }
    }

    /// Two random candidates, the better-scored one wins.
    fn choose(&mut self, candidates: &[PeerId]) -> Option<PeerId> {
        if candidates.is_empty() {
            return None;
        }
        let a = candidates[self.pick(candidates.len())];
        let b = candidates[self.pick(candidates.len())];
        let score = |p: &PeerId| self.table.get(p).map(PeerEntry::score);
        Some(if score(&b) > score(&a) { b } else { a })
    }

    fn fail(&mut self, peer: PeerId) {
        let now = self.now;
        if self.remove_active(peer) {
            self.stats.failed_peers += 1;
            if let Some(e) = self.table.get_mut(&peer) {
                e.failures += 1;
            }
            if self.probes.len() >= MAX_PROBES {
                self.probes.remove(0);
            }
            self.probes.push(Probe {
                peer,
                next_at: now.plus(self.config.heartbeat_ms),
                backoff: 1,
            });
        }
        self.pending.remove(&peer);
        self.passive.retain(|p| *p != peer);
        self.repair();
    }

    fn on_pending_timeout(&mut self, peer: PeerId) {
        let now = self.now;
        if self
            .pending
            .get(&peer)
            .is_some_and(|d| Timestamp(*d) <= now)
        {
            self.pending.remove(&peer);
            if let Some(e) = self.table.get_mut(&peer) {
                e.rejected_at = Some(now);
                e.failures += 1;
            }
            self.passive.retain(|p| *p != peer);
            self.repair();
        }
    }

    fn on_join(&mut self, from: PeerId, info: &PeerInfo) {
        self.apply_info(info, true);
        self.add_active(from);
        self.send(from, Message::NeighborReply { accepted: true });
        let mut others: Vec<PeerId> = self
            .active
            .iter()
            .map(|a| a.peer)
            .filter(|p| *p != from)
            .collect();
        let announce = PeerInfo {
            age_s: 0,
            ..info.clone()
        };
        for _ in 0..self.config.fanout.min(others.len()) {
            let i = self.pick(others.len());
            let p = others.swap_remove(i);
            self.send(
                p,
                Message::PeerAnnouncement {
                    peer: announce.clone(),
                    ttl: self.config.active_walk,
                },
            );
        }
    }

    fn on_announcement(&mut self, from: PeerId, info: PeerInfo, ttl: u8) {
        let n = info.id;
        if n == self.me || self.is_active(&n) || !self.learn(&info) {
            return;
        }
        if ttl == 0 || self.active.len() <= 1 {
            self.request_neighbor(n, true);
            return;
        }
        if ttl == self.config.passive_walk {
            self.add_passive(n);
        }
        match self.random_active_except(&[from, n]) {
            Some(next) => self.send(
                next,
                Message::PeerAnnouncement {
                    peer: info,
                    ttl: ttl - 1,
                },
            ),
            None => self.request_neighbor(n, true),
        }
    }

    fn on_neighbor(&mut self, from: PeerId, high: bool) {
        if self.is_active(&from) {
            self.send(from, Message::NeighborReply { accepted: true });
        } else if high || self.active.len() < self.config.active_view {
            self.add_active(from);
            self.send(from, Message::NeighborReply { accepted: true });
        } else {
            self.send(from, Message::NeighborReply { accepted: false });
            self.add_passive(from);
        }
    }

    fn on_neighbor_reply(&mut self, from: PeerId, accepted: bool) {
        let was_pending = self.pending.remove(&from).is_some();
        if accepted {
            if self.is_active(&from) {
                return;
            }
            if was_pending || self.active.len() < self.config.active_view {
                self.add_active(from);
            } else {
                self.send(from, Message::Disconnect { alive: true });
                self.add_passive(from);
            }
        } else {
            if let Some(e) = self.table.get_mut(&from) {
                e.rejected_at = Some(self.now);
            }
            self.add_passive(from);
            // Try the next candidate at once only when isolated; otherwise
            // at the next heartbeat (peers with full views say no).
            if was_pending && self.active.is_empty() {
                self.repair();
            }
        }
    }

    fn on_disconnect(&mut self, from: PeerId, alive: bool) {
        self.pending.remove(&from);
        let was_active = self.remove_active(from);
        if alive {
            if was_active {
                self.add_passive(from);
            }
        } else {
            self.passive.retain(|p| *p != from);
            self.probes.retain(|p| p.peer != from);
        }
        self.repair();
    }

    fn on_heartbeat(&mut self, from: PeerId, ping: u64, pong: u64, have: &[Have]) {
        if !self.is_active(&from) {
            if !self.pending.contains_key(&from) {
                // It believes in a link this peer does not have.
                self.send(from, Message::Disconnect { alive: true });
            }
            return;
        }
        let now = self.now;
        if pong != 0
            && let Some(a) = self.active.iter_mut().find(|a| a.peer == from)
            && a.ping == pong
        {
            a.ping = 0;
            a.missed = 0;
            let rtt = now.since(a.ping_at);
            if let Some(e) = self.table.get_mut(&from) {
                e.answered += 1;
                e.note_rtt(rtt);
            }
        }
        if ping != 0 {
            let have = self.recent_for(&from);
            self.send(
                from,
                Message::Heartbeat {
                    ping: 0,
                    pong: ping,
                    have,
                },
            );
        }
        // A membership-only build has nothing to graft: it ignores them.
        #[cfg(feature = "broadcast")]
        if !have.is_empty() {
            self.on_ihave(from, have);
        }
        #[cfg(not(feature = "broadcast"))]
        let _ = have;
    }

    fn on_heartbeat_tick(&mut self) {
        let now = self.now;
        self.schedule(now.plus(self.config.heartbeat_ms), Timer::Heartbeat);
        let max_missed = self.config.max_missed_heartbeats;
        let mut failed = Vec::new();
        for a in &mut self.active {
            if a.ping != 0 && !a.heard {
                a.missed += 1;
                if a.missed >= max_missed {
                    failed.push(a.peer);
                }
            } else if a.heard {
                a.missed = 0;
            }
            a.heard = false;
        }
        for p in failed {
            self.fail(p);
        }
        for p in self.active_view() {
            let nonce = loop {
                let n = self.rng.u64();
                if n != 0 {
                    break n;
                }
            };
            if let Some(a) = self.active.iter_mut().find(|a| a.peer == p) {
                a.ping = nonce;
                a.ping_at = now;
            }
            if let Some(e) = self.table.get_mut(&p) {
                e.expected += 1;
            }
            let have = self.recent_for(&p);
            self.send(
                p,
                Message::Heartbeat {
                    ping: nonce,
                    pong: 0,
                    have,
                },
            );
        }
        #[cfg(feature = "broadcast")]
        self.trim_cache();
        self.probe();
        self.repair();
    }

    /// Re-tries one failed active peer per heartbeat, with backoff: links
    /// cut by a partition come back when it heals (high priority, so two
    /// overlays that grew apart merge).
    fn probe(&mut self) {
        if !self.joined {
            return;
        }
        let now = self.now;
        let table = &self.table;
        let active = &self.active;
        self.probes
            .retain(|p| table.contains_key(&p.peer) && !active.iter().any(|a| a.peer == p.peer));
        let Some(i) = self.probes.iter().position(|p| p.next_at <= now) else {
            return;
        };
        let hb = self.config.heartbeat_ms;
        let p = &mut self.probes[i];
        p.backoff = (p.backoff * 2).min(MAX_PROBE_BACKOFF);
        p.next_at = now.plus(hb * p.backoff);
        let peer = p.peer;
        self.request_neighbor(peer, true);
    }

    fn on_shuffle_tick(&mut self) {
        self.schedule(self.now.plus(self.config.shuffle_ms), Timer::Shuffle);
        let Some(target) = self.random_active_except(&[]) else {
            return;
        };
        let mut sample = Vec::new();
        let mut actives: Vec<PeerId> = self
            .active
            .iter()
            .map(|a| a.peer)
            .filter(|p| *p != target)
            .collect();
        for _ in 0..self.config.fanout.min(actives.len()) {
            let i = self.pick(actives.len());
            let p = actives.swap_remove(i);
            sample.extend(self.info(&p));
        }
        let mut passive: Vec<PeerId> = self
            .passive
            .iter()
            .copied()
            .filter(|p| *p != target)
            .collect();
        for _ in 0..self.config.shuffle_passive.min(passive.len()) {
            let i = self.pick(passive.len());
            let p = passive.swap_remove(i);
            sample.extend(self.info(&p));
        }
        sample.truncate(super::message::MAX_SAMPLE);
        let origin = self.my_info();
        self.send(
            target,
            Message::PeerRequest {
                origin,
                sample,
                ttl: self.config.active_walk,
            },
        );
    }

    fn on_peer_request(&mut self, from: PeerId, origin: PeerInfo, sample: Vec<PeerInfo>, ttl: u8) {
        if origin.id == self.me {
            return;
        }
        if ttl > 0
            && self.active.len() > 1
            && let Some(next) = self.random_active_except(&[from, origin.id])
        {
            self.send(
                next,
                Message::PeerRequest {
                    origin,
                    sample,
                    ttl: ttl - 1,
                },
            );
            return;
        }
        let mut passive: Vec<PeerId> = self
            .passive
            .iter()
            .copied()
            .filter(|p| *p != origin.id)
            .collect();
        let mut reply = Vec::new();
        for _ in 0..(sample.len() + 1).min(passive.len()) {
            let i = self.pick(passive.len());
            let p = passive.swap_remove(i);
            reply.extend(self.info(&p));
        }
        reply.truncate(super::message::MAX_SAMPLE);
        let origin_id = origin.id;
        self.integrate(core::slice::from_ref(&origin));
        self.integrate(&sample);
        self.send(origin_id, Message::PeerListResponse { sample: reply });
    }

    /// Adds peers from a sample to the passive view.
    fn integrate(&mut self, sample: &[PeerInfo]) {
        for info in sample {
            if info.id != self.me && !self.is_active(&info.id) && self.learn(info) {
                self.add_passive(info.id);
            }
        }
    }
}

// ---- dissemination (Plumtree) -------------------------------------------
//
// Compiled out without the `broadcast` feature (the browser's node uses
// gossip for membership only): such a build has no Gossip, IHave, Graft or
// Prune messages (its codec refuses them as malformed, counted in
// `CodecStats::malformed`), sends no lazy announcements and ignores the
// ones that ride on heartbeats.

/// Without dissemination there is nothing to announce.
#[cfg(not(feature = "broadcast"))]
impl Gossip {
    fn recent_for(&self, _peer: &PeerId) -> Vec<Have> {
        Vec::new()
    }
}

#[cfg(feature = "broadcast")]
impl Gossip {
    fn broadcast_inner(&mut self, payload: Payload) -> Result<MsgId, GossipError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(GossipError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        let id = MsgId::of(&payload);
        if self.seen.contains_key(&id) {
            return Ok(id);
        }
        let tree = self.tree_for_own_broadcast();
        self.remember(id, 0, None, tree);
        self.cache_put(id, payload.clone());
        // No tree yet (or none left): push to every active peer.
        if !self.active.iter().any(|a| self.is_eager(&tree, &a.peer)) {
            self.trees.remove(&tree);
        }
        self.push_eager(1, tree, &payload, None);
        Ok(id)
    }

    /// A frequent broadcaster sends on its own tree: the first message on
    /// it floods (about one copy per link), later ones follow a tree
    /// rooted here, far shallower than the shared tree seen from most
    /// origins. An occasional broadcast takes the shared tree.
    fn tree_for_own_broadcast(&mut self) -> Tree {
        let window = self.config.own_tree_window_ms;
        while let Some(at) = self.own_broadcasts.front()
            && at.0.saturating_add(window) < self.now.0
        {
            self.own_broadcasts.pop_front();
        }
        self.own_broadcasts.push_back(self.now);
        let need = self.config.own_tree_broadcasts;
        while self.own_broadcasts.len() > need.max(1) {
            self.own_broadcasts.pop_front();
        }
        if need > 0 && self.own_broadcasts.len() >= need {
            Some(self.me)
        } else {
            None
        }
    }

    fn is_eager(&self, tree: &Tree, peer: &PeerId) -> bool {
        self.trees.get(tree).is_none_or(|t| !t.lazy.contains(peer))
    }

    /// Marks the link to `peer` eager or lazy on `tree`. Origin trees
    /// beyond `origin_trees` evict the least recently used one, whose next
    /// message then floods once more.
    fn set_eager(&mut self, tree: Tree, peer: PeerId, eager: bool) {
        self.tree_clock += 1;
        let clock = self.tree_clock;
        if let Some(t) = self.trees.get_mut(&tree) {
            t.used = clock;
            if eager {
                t.lazy.retain(|p| *p != peer);
            } else if !t.lazy.contains(&peer) {
                t.lazy.push(peer);
            }
            return;
        }
        if eager {
            return;
        }
        if tree.is_some() && self.origin_trees() >= self.config.origin_trees {
            if self.config.origin_trees == 0 {
                return;
            }
            let oldest = self
                .trees
                .iter()
                .filter(|(k, _)| k.is_some())
                .min_by_key(|(_, t)| t.used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.trees.remove(&k);
            }
        }
        self.trees.insert(
            tree,
            TreeLinks {
                lazy: alloc::vec![peer],
                used: clock,
            },
        );
    }

    /// Pushes a copy at `hops` to the eager peers of `tree`.
    fn push_eager(&mut self, hops: u8, tree: Tree, payload: &Payload, except: Option<PeerId>) {
        if let Some(t) = self.trees.get_mut(&tree) {
            self.tree_clock += 1;
            t.used = self.tree_clock;
        }
        let targets: Vec<PeerId> = self
            .active
            .iter()
            .filter(|a| Some(a.peer) != except && self.is_eager(&tree, &a.peer))
            .map(|a| a.peer)
            .collect();
        for t in targets {
            self.send(
                t,
                Message::Gossip {
                    hops,
                    payload: payload.clone(),
                    tree,
                },
            );
        }
    }

    fn on_gossip(
        &mut self,
        from: PeerId,
        hops: u8,
        tree: Tree,
        payload: Payload,
    ) -> Result<(), GossipError> {
        if hops == 0 || hops > self.config.ttl {
            self.stats.ttl_exceeded += 1;
            return Err(GossipError::TtlExceeded { hops });
        }
        let id = MsgId::of(&payload);
        let from_active = self.is_active(&from);
        if let Some(s) = self.seen.get_mut(&id) {
            self.stats.duplicates += 1;
            // A cycle in the tree. A copy over fewer hops: keep that link
            // eager and prune the first one instead, so the tree tends to
            // shortest paths; else prune this one (Plumtree).
            let parent = s.from;
            let tree = s.tree;
            let shorter = hops < s.hops && parent.is_some_and(|p| p != from) && from_active;
            if shorter {
                s.hops = hops;
                s.from = Some(from);
                if let Some(p) = parent
                    && self.is_active(&p)
                    && self.is_eager(&tree, &p)
                {
                    self.set_eager(tree, p, false);
                    self.send(p, Message::Prune { id, tree });
                }
                self.set_eager(tree, from, true);
                // It may have pruned this peer already (its copy and this
                // peer's crossed): make sure it pushes here.
                self.send(
                    from,
                    Message::Graft {
                        ids: Vec::new(),
                        trees: alloc::vec![tree],
                    },
                );
            } else if from_active {
                // Also when already lazy here: an earlier Prune was lost,
                // and the sender still pushes.
                self.set_eager(tree, from, false);
                self.send(from, Message::Prune { id, tree });
            }
            return Ok(());
        }
        self.remember(id, hops, Some(from), tree);
        self.cache_put(id, payload.clone());
        self.missing.remove(&id);
        if from_active {
            self.set_eager(tree, from, true);
        }
        self.stats.delivered += 1;
        self.outputs.push_back(Output::Deliver {
            id,
            payload: payload.clone(),
            from,
            hops,
        });
        if hops < self.config.ttl {
            self.push_eager(hops + 1, tree, &payload, Some(from));
        }
        Ok(())
    }

    /// Lazy announcements for `peer`: messages received within the last
    /// two heartbeat periods (so a link that came up since still hears of
    /// them), not from `peer`, that can still travel a hop.
    fn recent_for(&self, peer: &PeerId) -> Vec<Have> {
        let cutoff = self.now.0.saturating_sub(2 * self.config.heartbeat_ms);
        let mut out = Vec::new();
        for id in self.seen_order.iter().rev() {
            let Some(s) = self.seen.get(id) else {
                continue;
            };
            if s.at.0 < cutoff {
                break;
            }
            if s.from == Some(*peer) || s.hops >= self.config.ttl || !self.cache.contains_key(id) {
                continue;
            }
            out.push(Have {
                id: *id,
                hops: s.hops,
            });
            if out.len() >= MAX_IDS {
                break;
            }
        }
        out
    }

    fn on_ihave(&mut self, from: PeerId, have: &[Have]) {
        let threshold = self.config.optimization_threshold;
        for h in have {
            if let Some(s) = self.seen.get_mut(&h.id) {
                // Plumtree optimisation: the announcer is `threshold` or
                // more hops closer to the origin than this peer's parent:
                // take it as parent, prune the old one. Keeps the tree
                // shallow as churn and repairs deepen it.
                let parent = s.from;
                let tree = s.tree;
                if threshold > 0
                    && parent.is_some_and(|p| p != from)
                    && u16::from(h.hops) + 1 + u16::from(threshold) <= u16::from(s.hops)
                {
                    s.from = Some(from);
                    s.hops = h.hops + 1;
                    let id = h.id;
                    self.set_eager(tree, from, true);
                    self.send(
                        from,
                        Message::Graft {
                            ids: Vec::new(),
                            trees: alloc::vec![tree],
                        },
                    );
                    if let Some(p) = parent
                        && self.is_active(&p)
                        && self.is_eager(&tree, &p)
                    {
                        self.set_eager(tree, p, false);
                        self.send(p, Message::Prune { id, tree });
                    }
                }
                continue;
            }
            if h.hops >= self.config.ttl {
                continue;
            }
            let new = !self.missing.contains_key(&h.id);
            if new && self.missing.len() >= MAX_MISSING {
                continue;
            }
            let m = self.missing.entry(h.id).or_default();
            if m.announcers.len() < MAX_ANNOUNCERS && !m.announcers.iter().any(|(p, _)| *p == from)
            {
                m.announcers.push((from, h.hops));
            }
            if new {
                let at = self.now.plus(self.config.graft_timeout_ms.max(1));
                self.schedule(at, Timer::Graft(h.id));
            }
        }
    }

    fn on_graft_timer(&mut self, id: MsgId) {
        if self.seen.contains_key(&id) {
            self.missing.remove(&id);
            return;
        }
        let Some(m) = self.missing.get_mut(&id) else {
            return;
        };
        // The announcer closest to the origin first.
        let Some(i) = m
            .announcers
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, hops))| *hops)
            .map(|(i, _)| i)
        else {
            self.missing.remove(&id);
            return;
        };
        // The copy that answers names its tree, and arriving first makes
        // this link eager on it.
        let (peer, _) = m.announcers.remove(i);
        self.send(
            peer,
            Message::Graft {
                ids: alloc::vec![id],
                trees: Vec::new(),
            },
        );
        let at = self.now.plus(self.config.graft_retry_ms.max(1));
        self.schedule(at, Timer::Graft(id));
    }

    fn on_prune(&mut self, from: PeerId, id: MsgId, tree: Tree) {
        if !self.is_active(&from) {
            return;
        }
        if self.seen.get(&id).is_some_and(|s| s.from == Some(from)) {
            // The pruner is this peer's parent for that message: the copy
            // it got from here crossed this peer's switch to it. Keep the
            // link and tell it so.
            self.send(
                from,
                Message::Graft {
                    ids: Vec::new(),
                    trees: alloc::vec![tree],
                },
            );
            return;
        }
        self.set_eager(tree, from, false);
    }

    fn on_graft(&mut self, from: PeerId, ids: &[MsgId], trees: &[Tree]) {
        // A graft from a peer outside the active view is still answered
        // (views can be briefly asymmetric), but shapes no tree.
        let active = self.is_active(&from);
        if active {
            for tree in trees {
                self.set_eager(*tree, from, true);
            }
        }
        for id in ids {
            let (Some(payload), Some(s)) = (self.cache.get(id), self.seen.get(id)) else {
                continue;
            };
            let (hops, tree, payload) = (s.hops, s.tree, payload.clone());
            if active {
                self.set_eager(tree, from, true);
            }
            if hops < self.config.ttl {
                let msg = Message::Gossip {
                    hops: hops + 1,
                    payload,
                    tree,
                };
                self.send(from, msg);
            }
        }
    }

    fn remember(&mut self, id: MsgId, hops: u8, from: Option<PeerId>, tree: Tree) {
        self.seen.insert(
            id,
            Seen {
                hops,
                from,
                tree,
                at: self.now,
            },
        );
        self.seen_order.push_back(id);
        while self.seen_order.len() > self.config.dedup_capacity.max(1) {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    fn cache_put(&mut self, id: MsgId, payload: Payload) {
        self.cache_bytes += payload.len();
        if self.cache.insert(id, payload).is_none() {
            self.cache_order.push_back((id, self.now));
        }
        self.trim_cache();
    }

    fn trim_cache(&mut self) {
        let now = self.now;
        while let Some((id, at)) = self.cache_order.front().copied() {
            let over = self.cache_order.len() > self.config.cache_capacity
                || self.cache_bytes > self.config.cache_bytes
                || now.since(at) >= self.config.cache_retention_ms;
            if !over {
                break;
            }
            self.cache_order.pop_front();
            if let Some(p) = self.cache.remove(&id) {
                self.cache_bytes -= p.len();
            }
        }
    }
}
