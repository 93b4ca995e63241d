//! Tunables of gossip, with the defaults of DESIGN §6.

use alloc::string::String;
use alloc::vec::Vec;

/// Configuration of one [`super::Gossip`] instance (one swarm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipConfig {
    /// Fan-out: how many random walks announce a newcomer
    /// (`PeerAnnouncement`), and how many active peers a shuffle sample
    /// takes. (The eager fan-out of dissemination is the spanning tree's
    /// degree; plain push gossip at this fan-out is the simulator's
    /// baseline.)
    pub fanout: usize,
    /// Most hops a broadcast travels: a copy at `ttl` hops is not forwarded.
    pub ttl: u8,
    /// Heartbeat period on active links; lazy announcements ride on it.
    pub heartbeat_ms: u64,
    /// An active peer that leaves this many heartbeats in a row unanswered
    /// has failed.
    pub max_missed_heartbeats: u8,
    /// A peer not heard from for this long is forgotten.
    pub peer_expiry_ms: u64,
    /// Most peers in the peer table (active + passive + other known).
    pub max_peers: usize,
    /// Active view: the peers to keep direct links with.
    pub active_view: usize,
    /// Passive view: candidates to replace failed active peers.
    pub passive_view: usize,
    /// HyParView active random walk length (newcomer announcements, shuffles).
    pub active_walk: u8,
    /// HyParView passive random walk length: the announcement step at which
    /// the newcomer is added to passive views.
    pub passive_walk: u8,
    /// How often a peer exchanges a sample of its peers with a random one.
    pub shuffle_ms: u64,
    /// Passive peers in a shuffle sample (active ones: `fanout`).
    pub shuffle_passive: usize,
    /// A `Join` or `Neighbor` unanswered this long has failed.
    pub neighbor_timeout_ms: u64,
    /// Time from a lazy announcement of a missing message to the `Graft`.
    pub graft_timeout_ms: u64,
    /// Time between grafts for the same message to different announcers.
    pub graft_retry_ms: u64,
    /// Plumtree tree optimisation: a lazy announcement this many hops
    /// shorter than the eager path makes its sender the new parent. 0: off
    /// (the default: announcements ride on heartbeats, so they arrive late,
    /// and in the simulator the switches cost more than they save).
    pub optimization_threshold: u8,
    /// A peer that broadcasts this many messages within
    /// `own_tree_window_ms` sends them on its own spanning tree (0: never;
    /// 1: always). Its first message on it floods the overlay once.
    pub own_tree_broadcasts: usize,
    pub own_tree_window_ms: u64,
    /// Origins' own trees a peer keeps links for (least recently used out).
    pub origin_trees: usize,
    /// Message ids remembered to suppress duplicates (bounded, oldest out).
    pub dedup_capacity: usize,
    /// Payloads kept to answer grafts: count, bytes and age bounds.
    pub cache_capacity: usize,
    pub cache_bytes: usize,
    pub cache_retention_ms: u64,
    /// Frames queued per peer while its session handshake runs.
    pub outbox_capacity: usize,
    /// Least time between two `Hello`s to one peer.
    pub hello_interval_ms: u64,
    /// This peer opts in to being reachable: only then are its addresses
    /// sent (by itself and by others).
    pub reachable: bool,
    /// This peer's addresses (sent only when `reachable`).
    pub addresses: Vec<String>,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            fanout: 3,
            ttl: 32,
            heartbeat_ms: 30_000,
            max_missed_heartbeats: 2,
            peer_expiry_ms: 2 * 60 * 60 * 1000,
            max_peers: 64,
            active_view: 5,
            passive_view: 30,
            active_walk: 6,
            passive_walk: 3,
            shuffle_ms: 60_000,
            shuffle_passive: 4,
            neighbor_timeout_ms: 5_000,
            graft_timeout_ms: 1_000,
            graft_retry_ms: 500,
            optimization_threshold: 0,
            own_tree_broadcasts: 2,
            own_tree_window_ms: 60_000,
            origin_trees: 128,
            dedup_capacity: 16_384,
            cache_capacity: 1024,
            cache_bytes: 32 * 1024 * 1024,
            cache_retention_ms: 120_000,
            outbox_capacity: 16,
            hello_interval_ms: 1_000,
            reachable: false,
            addresses: Vec::new(),
        }
    }
}
