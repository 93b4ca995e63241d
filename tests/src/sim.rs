//! A deterministic simulator: N replicas of one document driven from one
//! seed over a network that drops, duplicates, reorders and delays
//! messages, partitions and heals, and crashes replicas (which restart from
//! what their host had persisted).
//!
//! Everything random comes from one ChaCha stream seeded by the run's seed,
//! and events are ordered by (time, sequence number), so a seed names one
//! exact run: [`SimReport::trace`] hashes every delivered message.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use mycel_core::crypto::{DocKey, Identity, Rng as CoreRng};
use mycel_core::doc::Replica;
use mycel_core::id::{DocId, RoomId};
use mycel_core::node::{DocAccess, Event, Input, LinkId, LinkKind, NodeConfig, Output};
use mycel_core::time::Timestamp;
use mycel_core::wire::{MAX_FRAME, PeerTag, RelayEvent, RelayRequest, decode_frame, encode_frame};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dump::dump;

/// How replicas reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// A direct link between every pair.
    Mesh,
    /// Everyone through one (simulated, in-memory) relay.
    Relay,
    /// The relay, plus direct links that gossip asks for
    /// ([`Event::LinkWanted`]), set up by signaling through the relay
    /// (an offer and an answer, then the link is up: WebRTC without its
    /// details) and closed when no longer wanted.
    Gossip,
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub topology: Topology,
    /// Local edits, spread over `edit_window_ms`.
    pub edits: usize,
    pub edit_window_ms: u64,
    /// Probability a message is lost / delivered twice.
    pub loss: f64,
    pub duplicate: f64,
    /// One-way delay range; a range wider than zero reorders.
    pub delay_ms: (u64, u64),
    /// How long the host takes to persist (acknowledge) a batch.
    pub persist_ms: (u64, u64),
    /// Crashes during the edit window (each restarts after `down_ms`).
    pub crashes: usize,
    pub down_ms: (u64, u64),
    /// Partitions during the edit window (each heals after `partition_ms`).
    pub partitions: usize,
    pub partition_ms: (u64, u64),
    /// After the faults stop: how long convergence may take.
    pub settle_limit_ms: u64,
    pub sync: mycel_core::sync::SyncConfig,
    /// [`Topology::Gossip`]: bytes are split into direct and relay from
    /// this time on (after the links have had time to open).
    pub measure_from_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 5,
            topology: Topology::Mesh,
            edits: 60,
            edit_window_ms: 30_000,
            loss: 0.05,
            duplicate: 0.05,
            delay_ms: (1, 200),
            persist_ms: (0, 20),
            crashes: 2,
            down_ms: (500, 5_000),
            partitions: 1,
            partition_ms: (1_000, 10_000),
            settle_limit_ms: 120_000,
            sync: mycel_core::sync::SyncConfig::default(),
            measure_from_ms: 0,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub converged: bool,
    /// Simulated ms from the end of the faults to convergence.
    pub settle_ms: u64,
    /// Heads and content of every replica at the end.
    pub heads: Vec<Vec<automerge::ChangeHash>>,
    pub contents: Vec<String>,
    pub messages: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub crashes: u64,
    pub edits_made: u64,
    pub equivocations: u64,
    pub rejected: u64,
    /// Why inputs or envelopes were refused (first few, for diagnosis).
    pub reject_reasons: Vec<String>,
    /// Per replica: its version vector, as text (for diagnosis).
    pub vectors: Vec<String>,
    /// BLAKE3 over every delivery (time, receiver, bytes): the run's fingerprint.
    pub trace: [u8; 32],
    /// Bytes nodes sent on direct links / to the relay since
    /// `measure_from_ms`.
    pub bytes_direct: u64,
    pub bytes_relay: u64,
    /// Direct links opened, and the most any node had open at once.
    pub links_opened: u64,
    pub max_degree: usize,
    /// When the first direct link opened (simulated ms).
    pub first_link_ms: Option<u64>,
}

const RELAY_LINK: LinkId = LinkId(u64::MAX);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Bytes arriving at node `to` on its link `link` (sent by incarnation
    /// `from_inc` of the sender, so frames of a crashed sender's old
    /// connection are not delivered on the new one).
    ToNode {
        to: usize,
        link: LinkId,
        inc: u64,
        conn: u64,
        bytes: Vec<u8>,
    },
    /// Bytes from node `from` to the relay, on relay connection `conn`.
    ToRelay {
        from: usize,
        conn: u64,
        bytes: Vec<u8>,
    },
    Wake {
        node: usize,
        inc: u64,
    },
    PersistAck {
        node: usize,
        inc: u64,
        batch: u64,
    },
    Edit {
        node: usize,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Partition {
        side_b: Vec<bool>,
    },
    Heal,
    /// A wanted direct link that is not up by now has failed.
    ConnectTimeout {
        node: usize,
        inc: u64,
        peer: usize,
    },
}

/// A host gives up on a direct link that does not come up in this time.
const CONNECT_TIMEOUT_MS: u64 = 20_000;

struct SimNode {
    identity: [u8; 32],
    replica: Option<Replica>,
    /// Bumped at every restart: events of an older incarnation are void.
    inc: u64,
    /// Bumped at every relay disconnection: frames of an older connection are void.
    conn: u64,
    /// Durable store: envelopes acknowledged to the node.
    store: Vec<Vec<u8>>,
    /// Handed to the host, not yet durable: (batch, envelopes).
    pending: Vec<(u64, Vec<Vec<u8>>)>,
}

/// The in-memory relay of [`Topology::Relay`]: the protocol of DESIGN §8.
#[derive(Default)]
struct SimRelay {
    rooms: BTreeMap<RoomId, BTreeMap<PeerTag, usize>>,
    next_tag: u64,
}

/// One simulation in progress; see [`Sim::run`].
pub struct Sim {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    rng: ChaCha8Rng,
    events: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<SimNode>,
    relay: SimRelay,
    /// Partition: nodes with `true` cannot reach nodes with `false`.
    side_b: Vec<bool>,
    doc: DocId,
    key: DocKey,
    faults_on: bool,
    trace: blake3::Hasher,
    report: SimReport,
    /// Each node's PeerId.
    peer_ids: Vec<mycel_core::id::PeerId>,
    /// Open direct links (smaller index first).
    links: std::collections::BTreeSet<(usize, usize)>,
    /// (node, peer): the node's core wants a link to the peer.
    wanted: std::collections::BTreeSet<(usize, usize)>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .field("events", &self.events.len())
            .finish()
    }
}

impl Sim {
    pub fn new(cfg: SimConfig, seed: u64) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut core_rng = CoreRng::from_seed(seed_bytes(&mut rng));
        let doc = DocId(core_rng.array());
        let key = DocKey::generate(&mut core_rng);
        let nodes: Vec<SimNode> = (0..cfg.nodes)
            .map(|_| SimNode {
                identity: core_rng.array(),
                replica: None,
                inc: 0,
                conn: 0,
                store: Vec::new(),
                pending: Vec::new(),
            })
            .collect();
        let n = cfg.nodes;
        let peer_ids = nodes
            .iter()
            .map(|n: &SimNode| Identity::from_secret(n.identity).peer_id())
            .collect();
        Sim {
            cfg,
            now: 0,
            seq: 0,
            rng,
            events: BTreeMap::new(),
            nodes,
            relay: SimRelay::default(),
            side_b: vec![false; n],
            doc,
            key,
            faults_on: true,
            trace: blake3::Hasher::new(),
            report: SimReport {
                converged: false,
                settle_ms: 0,
                heads: Vec::new(),
                contents: Vec::new(),
                messages: 0,
                bytes: 0,
                dropped: 0,
                duplicated: 0,
                crashes: 0,
                edits_made: 0,
                equivocations: 0,
                rejected: 0,
                reject_reasons: Vec::new(),
                vectors: Vec::new(),
                trace: [0; 32],
                bytes_direct: 0,
                bytes_relay: 0,
                links_opened: 0,
                max_degree: 0,
                first_link_ms: None,
            },
            peer_ids,
            links: std::collections::BTreeSet::new(),
            wanted: std::collections::BTreeSet::new(),
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.insert((t, self.seq), ev);
    }

    fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..=hi)
        }
    }

    /// Runs the whole scenario and reports.
    pub fn run(mut self) -> SimReport {
        self.genesis();
        for i in 0..self.cfg.nodes {
            self.start(i);
        }
        let window = self.cfg.edit_window_ms;
        for _ in 0..self.cfg.edits {
            let t = self.rng.random_range(0..window.max(1));
            let node = self.rng.random_range(0..self.cfg.nodes);
            self.at(t, Ev::Edit { node });
        }
        for _ in 0..self.cfg.crashes {
            let t = self.rng.random_range(0..window.max(1));
            let node = self.rng.random_range(0..self.cfg.nodes);
            self.at(t, Ev::Crash { node });
        }
        for _ in 0..self.cfg.partitions {
            let t = self.rng.random_range(0..window.max(1));
            let side_b: Vec<bool> = (0..self.cfg.nodes)
                .map(|_| self.rng.random_bool(0.5))
                .collect();
            let heal = t + self.range(self.cfg.partition_ms);
            self.at(t, Ev::Partition { side_b });
            self.at(heal.min(window), Ev::Heal);
        }
        // Phase 1: edits and faults.
        self.run_until(window);
        // Phase 2: faults stop; crashed nodes come back; wait for convergence.
        self.faults_on = false;
        self.side_b.iter_mut().for_each(|b| *b = false);
        for i in 0..self.cfg.nodes {
            if self.nodes[i].replica.is_none() {
                self.start(i);
            }
        }
        let deadline = window + self.cfg.settle_limit_ms;
        let mut t = window;
        while t < deadline {
            t += 500;
            self.run_until(t);
            if self.converged() {
                self.report.converged = true;
                break;
            }
        }
        self.report.settle_ms = t - window;
        for n in &self.nodes {
            let d = n
                .replica
                .as_ref()
                .and_then(|r| r.doc(self.doc))
                .expect("all replicas restarted in phase 2");
            self.report.heads.push(d.heads());
            self.report.contents.push(dump(d.automerge()));
            let v = n.replica.as_ref().and_then(|r| r.node().vector(self.doc));
            self.report.vectors.push(format!("{v:?}"));
        }
        self.report.trace = *self.trace.finalize().as_bytes();
        self.report
    }

    fn converged(&self) -> bool {
        let mut heads = self.nodes.iter().map(|n| {
            n.replica
                .as_ref()
                .and_then(|r| r.doc(self.doc))
                .map(|d| d.heads())
        });
        let first = heads.next().flatten();
        first.is_some() && heads.all(|h| h == first)
    }

    fn run_until(&mut self, t: u64) {
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > t {
                break;
            }
            let ((when, _), ev) = entry.remove_entry();
            self.now = when;
            self.dispatch(ev);
        }
        self.now = t;
    }

    /// Node 0 creates the document's structure; every store starts with it,
    /// as if all replicas had met once before the run.
    fn genesis(&mut self) {
        let mut r = Replica::new(
            Identity::from_secret(self.nodes[0].identity),
            NodeConfig::default(),
            seed_bytes(&mut self.rng),
        );
        r.open(
            Timestamp(0),
            self.doc,
            DocAccess::Full(self.key.clone()),
            [],
        )
        .expect("open");
        r.change(Timestamp(0), self.doc, |tx| {
            tx.put_object(ROOT, "items", ObjType::List)?;
            tx.put_object(ROOT, "body", ObjType::Text)?;
            Ok(())
        })
        .expect("genesis change");
        let mut genesis = None;
        while let Some(out) = r.poll() {
            if let Output::Persist { records, .. } = out {
                genesis = records.first().map(|e| e.bytes().to_vec());
            }
        }
        let genesis = genesis.expect("genesis envelope");
        for n in &mut self.nodes {
            n.store.push(genesis.clone());
        }
    }

    fn start(&mut self, i: usize) {
        let seed = seed_bytes(&mut self.rng);
        let node = &mut self.nodes[i];
        node.inc += 1;
        node.pending.clear();
        let config = NodeConfig {
            sync: self.cfg.sync.clone(),
            mesh: (self.cfg.topology == Topology::Gossip)
                .then(mycel_core::gossip::GossipConfig::default),
            ..NodeConfig::default()
        };
        let mut r = Replica::new(Identity::from_secret(node.identity), config, seed);
        let stored: Vec<&[u8]> = node.store.iter().map(Vec::as_slice).collect();
        r.open(
            Timestamp(self.now),
            self.doc,
            DocAccess::Full(self.key.clone()),
            stored,
        )
        .expect("a replica reopens from its own store");
        node.replica = Some(r);
        // A host drains the replica after opening (its stored changes are
        // applied then), even with no link up yet.
        self.drain(i);
        match self.cfg.topology {
            Topology::Relay | Topology::Gossip => self.input(
                i,
                Input::LinkUp {
                    link: RELAY_LINK,
                    kind: LinkKind::Relay,
                },
            ),
            Topology::Mesh => {
                for j in 0..self.cfg.nodes {
                    if j == i || self.nodes[j].replica.is_none() {
                        continue;
                    }
                    self.input(
                        i,
                        Input::LinkUp {
                            link: LinkId(j as u64),
                            kind: LinkKind::Direct,
                        },
                    );
                    self.input(
                        j,
                        Input::LinkUp {
                            link: LinkId(i as u64),
                            kind: LinkKind::Direct,
                        },
                    );
                }
            }
        }
    }

    fn crash(&mut self, i: usize) {
        if self.nodes[i].replica.take().is_none() {
            return;
        }
        self.report.crashes += 1;
        self.nodes[i].pending.clear();
        self.wanted.retain(|(a, _)| *a != i);
        match self.cfg.topology {
            Topology::Relay => self.relay_disconnect(i),
            Topology::Gossip => {
                self.relay_disconnect(i);
                let gone: Vec<(usize, usize)> = self
                    .links
                    .iter()
                    .filter(|(a, b)| *a == i || *b == i)
                    .copied()
                    .collect();
                for (a, b) in gone {
                    self.links.remove(&(a, b));
                    let other = if a == i { b } else { a };
                    self.input(
                        other,
                        Input::LinkDown {
                            link: LinkId(i as u64),
                        },
                    );
                }
            }
            Topology::Mesh => {
                for j in 0..self.cfg.nodes {
                    if j != i && self.nodes[j].replica.is_some() {
                        self.input(
                            j,
                            Input::LinkDown {
                                link: LinkId(i as u64),
                            },
                        );
                    }
                }
            }
        }
        let down = self.range(self.cfg.down_ms);
        self.at(self.now + down, Ev::Restart { node: i });
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::ToNode {
                to,
                link,
                inc,
                conn,
                bytes,
            } => {
                let n = &self.nodes[to];
                let mut live = n.inc == inc && n.replica.is_some();
                if self.cfg.topology == Topology::Gossip && link != RELAY_LINK {
                    // A frame in flight when its link closed is lost.
                    live &= self.links.contains(&pair(to, link.0 as usize));
                }
                if live && (link != RELAY_LINK || n.conn == conn) {
                    self.trace.update(&self.now.to_le_bytes());
                    self.trace.update(&(to as u64).to_le_bytes());
                    self.trace.update(&bytes);
                    self.input(to, Input::Received { link, bytes });
                }
            }
            Ev::ToRelay { from, conn, bytes } => {
                if self.nodes[from].conn == conn && self.nodes[from].replica.is_some() {
                    self.relay_frame(from, &bytes);
                }
            }
            Ev::Wake { node, inc } => {
                if self.nodes[node].inc == inc {
                    self.input(node, Input::Tick);
                }
            }
            Ev::PersistAck { node, inc, batch } => {
                if self.nodes[node].inc != inc || self.nodes[node].replica.is_none() {
                    return;
                }
                let n = &mut self.nodes[node];
                let (done, rest): (Vec<_>, Vec<_>) =
                    n.pending.drain(..).partition(|(b, _)| *b <= batch);
                n.pending = rest;
                if done.is_empty() {
                    return;
                }
                for (_, records) in done {
                    n.store.extend(records);
                }
                let doc = self.doc;
                self.input(node, Input::Persisted { doc, batch });
            }
            Ev::Edit { node } => {
                if self.nodes[node].replica.is_some() {
                    self.edit(node);
                }
            }
            Ev::Crash { node } => {
                if self.faults_on {
                    self.crash(node);
                }
            }
            Ev::Restart { node } => {
                if self.nodes[node].replica.is_none() {
                    self.start(node);
                }
            }
            Ev::Partition { side_b } => {
                if self.faults_on {
                    self.set_partition(side_b);
                }
            }
            Ev::Heal => {
                let none = vec![false; self.cfg.nodes];
                self.set_partition(none);
            }
            Ev::ConnectTimeout { node, inc, peer } => {
                if self.nodes[node].inc == inc && !self.links.contains(&pair(node, peer)) {
                    let peer = self.peer_ids[peer];
                    self.input(node, Input::DirectFailed { peer });
                }
            }
        }
    }

    /// The host's part of direct links (a WebRTC host does the same with
    /// real offers, answers and data channels).
    fn on_link_event(&mut self, i: usize, event: Event) {
        let index = |sim: &Sim, p| sim.peer_ids.iter().position(|q| *q == p);
        match event {
            Event::LinkWanted {
                doc,
                peer,
                initiator,
            } => {
                let Some(j) = index(self, peer) else { return };
                self.wanted.insert((i, j));
                let inc = self.nodes[i].inc;
                let t = self.now + CONNECT_TIMEOUT_MS;
                self.at(
                    t,
                    Ev::ConnectTimeout {
                        node: i,
                        inc,
                        peer: j,
                    },
                );
                if initiator && !self.links.contains(&pair(i, j)) {
                    let payload = b"offer".to_vec();
                    self.input(i, Input::Signal { doc, peer, payload });
                }
            }
            Event::Signal { doc, peer, payload } => {
                let Some(j) = index(self, peer) else { return };
                // An offer is answered only from a peer this side wants
                // (protocol.md §5.3), which bounds a node's links by its
                // active view.
                if payload == b"offer" && self.wanted.contains(&(i, j)) {
                    let payload = b"answer".to_vec();
                    self.input(i, Input::Signal { doc, peer, payload });
                } else if payload == b"answer"
                    && self.wanted.contains(&(i, j))
                    // (An answerer that stopped wanting the link closed
                    // its side: the connection does not come up.)
                    && self.wanted.contains(&(j, i))
                    && self.links.insert(pair(i, j))
                {
                    self.report.links_opened += 1;
                    self.report.first_link_ms.get_or_insert(self.now);
                    let degree =
                        |sim: &Sim, n| sim.links.iter().filter(|(a, b)| *a == n || *b == n).count();
                    self.report.max_degree = self
                        .report
                        .max_degree
                        .max(degree(self, i))
                        .max(degree(self, j));
                    for (a, b) in [(i, j), (j, i)] {
                        let link = LinkId(b as u64);
                        let kind = LinkKind::Direct;
                        self.input(a, Input::LinkUp { link, kind });
                    }
                }
            }
            Event::LinkUnwanted { peer } => {
                let Some(j) = index(self, peer) else { return };
                self.wanted.remove(&(i, j));
                if self.links.remove(&pair(i, j)) {
                    for (a, b) in [(i, j), (j, i)] {
                        let link = LinkId(b as u64);
                        self.input(a, Input::LinkDown { link });
                    }
                }
            }
            _ => {}
        }
    }

    fn set_partition(&mut self, side_b: Vec<bool>) {
        let old = std::mem::replace(&mut self.side_b, side_b);
        // Through a relay a partition is a lost connection: the side cut
        // off (side b) disconnects, and reconnects when it heals.
        if matches!(self.cfg.topology, Topology::Relay | Topology::Gossip) {
            for (i, was_b) in old.iter().enumerate() {
                if self.nodes[i].replica.is_none() || *was_b == self.side_b[i] {
                    continue;
                }
                if self.side_b[i] {
                    self.relay_disconnect(i);
                    self.input(i, Input::LinkDown { link: RELAY_LINK });
                } else {
                    self.input(
                        i,
                        Input::LinkUp {
                            link: RELAY_LINK,
                            kind: LinkKind::Relay,
                        },
                    );
                }
            }
        }
    }

    fn edit(&mut self, i: usize) {
        let op = self.rng.random_range(0..4u8);
        let a = self.rng.random_range(0..1000u64);
        let b = self.rng.random_range(0..1000u64);
        let now = Timestamp(self.now);
        let doc = self.doc;
        let r = self.nodes[i].replica.as_mut().expect("live");
        let result = r.change(now, doc, |tx| {
            match op {
                0 => tx.put(ROOT, format!("k{}", a % 8), b as i64)?,
                1 => {
                    let (_, items) = tx.get(ROOT, "items")?.expect("genesis list");
                    let len = tx.length(&items);
                    tx.insert(&items, a as usize % (len + 1), format!("item{b}"))?;
                }
                2 => {
                    let (_, body) = tx.get(ROOT, "body")?.expect("genesis text");
                    let len = tx.length(&body);
                    let c = char::from(b'a' + (b % 26) as u8).to_string();
                    tx.splice_text(&body, a as usize % (len + 1), 0, &c)?;
                }
                _ => {
                    let (_, body) = tx.get(ROOT, "body")?.expect("genesis text");
                    let len = tx.length(&body);
                    if len > 0 {
                        tx.splice_text(&body, a as usize % len, 1, "")?;
                    } else {
                        tx.put(ROOT, "empty", true)?;
                    }
                }
            }
            Ok(())
        });
        result.expect("local edit");
        self.report.edits_made += 1;
        self.drain(i);
    }

    fn reject(&mut self, reason: String) {
        self.report.rejected += 1;
        if self.report.reject_reasons.len() < 8 {
            self.report.reject_reasons.push(reason);
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let now = Timestamp(self.now);
        if let Some(r) = self.nodes[i].replica.as_mut() {
            // Bad network input is an error value the host logs; the
            // simulator's inputs are all well-formed, so count it.
            if let Err(e) = r.handle(now, input) {
                self.reject(e.to_string());
            }
        }
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].replica.as_mut().and_then(|r| r.poll()) else {
                return;
            };
            match out {
                Output::Send { link, bytes } => self.transmit(i, link, bytes),
                Output::Persist { batch, records, .. } => {
                    let inc = self.nodes[i].inc;
                    self.nodes[i]
                        .pending
                        .push((batch, records.iter().map(|e| e.bytes().to_vec()).collect()));
                    let t = self.now + self.range(self.cfg.persist_ms);
                    self.at(
                        t,
                        Ev::PersistAck {
                            node: i,
                            inc,
                            batch,
                        },
                    );
                }
                Output::Apply { .. } => {}
                Output::Event(Event::Equivocation { .. }) => self.report.equivocations += 1,
                Output::Event(Event::Rejected { reason, .. }) => self.reject(reason.to_string()),
                Output::Event(
                    e @ (Event::LinkWanted { .. }
                    | Event::LinkUnwanted { .. }
                    | Event::Signal { .. }),
                ) => self.on_link_event(i, e),
                Output::Event(_) => {}
                Output::WakeAt(t) => {
                    let inc = self.nodes[i].inc;
                    self.at(t.0.max(self.now), Ev::Wake { node: i, inc });
                }
            }
        }
    }

    /// Puts bytes on the network with the configured faults.
    fn transmit(&mut self, from: usize, link: LinkId, bytes: Vec<u8>) {
        let (to_relay, to) = if link == RELAY_LINK {
            (true, from)
        } else {
            (false, link.0 as usize)
        };
        if !to_relay && self.side_b[from] != self.side_b[to] {
            self.report.dropped += 1;
            return;
        }
        if self.cfg.topology == Topology::Gossip
            && !to_relay
            && !self.links.contains(&pair(from, to))
        {
            // Sent on a link the other end has closed.
            return;
        }
        if self.now >= self.cfg.measure_from_ms {
            if to_relay {
                self.report.bytes_relay += bytes.len() as u64;
            } else {
                self.report.bytes_direct += bytes.len() as u64;
            }
        }
        let copies = if self.faults_on && self.rng.random_bool(self.cfg.loss) {
            self.report.dropped += 1;
            0
        } else if self.faults_on && self.rng.random_bool(self.cfg.duplicate) {
            self.report.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.report.messages += 1;
            self.report.bytes += bytes.len() as u64;
            let t = self.now + self.range(self.cfg.delay_ms);
            let ev = if to_relay {
                Ev::ToRelay {
                    from,
                    conn: self.nodes[from].conn,
                    bytes: bytes.clone(),
                }
            } else {
                Ev::ToNode {
                    to,
                    link: LinkId(from as u64),
                    inc: self.nodes[to].inc,
                    conn: 0,
                    bytes: bytes.clone(),
                }
            };
            self.at(t, ev);
        }
    }

    fn relay_send(&mut self, to: usize, event: &RelayEvent) {
        let bytes = encode_frame(event);
        let t = self.now + self.range(self.cfg.delay_ms);
        let (inc, conn) = (self.nodes[to].inc, self.nodes[to].conn);
        self.report.messages += 1;
        self.report.bytes += bytes.len() as u64;
        if self.faults_on && self.rng.random_bool(self.cfg.loss) {
            self.report.dropped += 1;
            return;
        }
        self.at(
            t,
            Ev::ToNode {
                to,
                link: RELAY_LINK,
                inc,
                conn,
                bytes,
            },
        );
    }

    fn relay_frame(&mut self, from: usize, bytes: &[u8]) {
        let Ok(req) = decode_frame::<RelayRequest>(bytes, MAX_FRAME) else {
            self.report.rejected += 1;
            return;
        };
        let tag_of = |relay: &SimRelay, room: &RoomId, node: usize| {
            relay
                .rooms
                .get(room)
                .and_then(|m| m.iter().find(|(_, n)| **n == node).map(|(t, _)| *t))
        };
        match req {
            RelayRequest::Join { room } => {
                let you = match tag_of(&self.relay, &room, from) {
                    Some(t) => t,
                    None => {
                        self.relay.next_tag += 1;
                        let t = PeerTag(self.relay.next_tag);
                        self.relay.rooms.entry(room).or_default().insert(t, from);
                        let others: Vec<usize> = self.relay.rooms[&room]
                            .iter()
                            .filter(|(_, n)| **n != from)
                            .map(|(_, n)| *n)
                            .collect();
                        for o in others {
                            self.relay_send(o, &RelayEvent::PeerJoined { room, peer: t });
                        }
                        t
                    }
                };
                let peers = self.relay.rooms[&room]
                    .keys()
                    .copied()
                    .filter(|t| *t != you)
                    .collect();
                self.relay_send(from, &RelayEvent::Joined { room, you, peers });
            }
            RelayRequest::Leave { room } => self.relay_leave(from, room),
            RelayRequest::Publish { room, payload } => {
                let Some(me) = tag_of(&self.relay, &room, from) else {
                    return;
                };
                let others: Vec<usize> = self.relay.rooms[&room]
                    .values()
                    .copied()
                    .filter(|n| *n != from)
                    .collect();
                for o in others {
                    self.relay_send(
                        o,
                        &RelayEvent::Message {
                            room,
                            from: me,
                            payload: payload.clone(),
                        },
                    );
                }
            }
            RelayRequest::Send { room, to, payload } => {
                let Some(me) = tag_of(&self.relay, &room, from) else {
                    return;
                };
                if let Some(&target) = self.relay.rooms.get(&room).and_then(|m| m.get(&to)) {
                    self.relay_send(
                        target,
                        &RelayEvent::Message {
                            room,
                            from: me,
                            payload,
                        },
                    );
                }
            }
            RelayRequest::Ping { nonce } => self.relay_send(from, &RelayEvent::Pong { nonce }),
        }
    }

    fn relay_leave(&mut self, node: usize, room: RoomId) {
        let Some(members) = self.relay.rooms.get_mut(&room) else {
            return;
        };
        let Some(tag) = members.iter().find(|(_, n)| **n == node).map(|(t, _)| *t) else {
            return;
        };
        members.remove(&tag);
        let others: Vec<usize> = members.values().copied().collect();
        for o in others {
            self.relay_send(o, &RelayEvent::PeerLeft { room, peer: tag });
        }
    }

    fn relay_disconnect(&mut self, node: usize) {
        self.nodes[node].conn += 1;
        let rooms: Vec<RoomId> = self.relay.rooms.keys().copied().collect();
        for room in rooms {
            self.relay_leave(node, room);
        }
    }
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

fn seed_bytes(rng: &mut ChaCha8Rng) -> [u8; 32] {
    let mut s = [0; 32];
    rng.fill_bytes(&mut s);
    s
}

/// Runs one scenario.
pub fn run(cfg: SimConfig, seed: u64) -> SimReport {
    Sim::new(cfg, seed).run()
}
