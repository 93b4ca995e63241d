//! The per-link, per-document sync session: exchange version vectors, then
//! stream what the other side lacks, oldest first per author, in batches
//! bounded in bytes, with a window of unacknowledged bytes.
//!
//! A session is pure state; [`crate::node::Node`] owns the sessions and
//! turns what they decide into frames.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::id::PeerId;
use crate::log::DocLog;
use crate::time::Timestamp;
use crate::wire::{Envelope, MAX_BATCH_ENVELOPES, VersionVector};

/// Tunables of sync; the defaults suit both a browser and a native node.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Target size of one `Envelopes` batch (one envelope may exceed it).
    pub batch_bytes: usize,
    /// Unacknowledged stream bytes allowed in flight per session.
    pub window_bytes: usize,
    /// How often vectors are re-exchanged to repair lost pushes.
    pub anti_entropy_ms: u64,
    /// A stream batch unacknowledged this long is presumed lost: the
    /// session rewinds to the peer's last known vector.
    pub ack_timeout_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch_bytes: 64 * 1024,
            window_bytes: 512 * 1024,
            anti_entropy_ms: 15_000,
            ack_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone)]
struct InFlight {
    batch: u64,
    bytes: usize,
    sent_at: Timestamp,
}

/// One peer's view of one document over one link.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who the peer says it is (from its first `Have`).
    pub remote_peer: Option<PeerId>,
    /// The peer's vector from its latest `Have`.
    pub remote_vector: VersionVector,
    /// The peer is a pinning node.
    pub remote_pinning: bool,
    /// The peer's latest `Have` said it is in the mesh of direct links.
    pub remote_meshed: bool,
    /// Sealed payload bytes sent in this session.
    pub bytes_out: u64,
    /// What the peer holds or has been sent: the stream resumes from here.
    cursor: VersionVector,
    have_received: bool,
    next_batch: u64,
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: usize,
    last_have_sent: Option<Timestamp>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    pub fn new() -> Self {
        Session {
            remote_peer: None,
            remote_vector: VersionVector::default(),
            remote_pinning: false,
            remote_meshed: false,
            bytes_out: 0,
            cursor: VersionVector::default(),
            have_received: false,
            next_batch: 1,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            last_have_sent: None,
        }
    }

    /// The peer told us what it holds.
    pub fn on_have(&mut self, from: PeerId, vector: VersionVector, pinning: bool) {
        self.remote_peer = Some(from);
        self.remote_pinning = pinning;
        if self.in_flight.is_empty() {
            // Nothing outstanding: the peer's word is exact.
            self.cursor = vector.clone();
        } else {
            // A stream is under way; its batches may not have arrived when
            // the peer wrote this. Keep going; the ack timeout rewinds.
            for (a, s) in vector.iter() {
                if *s > self.cursor.get(a) {
                    self.cursor.set(*a, *s);
                }
            }
        }
        self.remote_vector = vector;
        self.have_received = true;
    }

    pub fn have_received(&self) -> bool {
        self.have_received
    }

    /// The peer acknowledged every stream batch up to `batch`.
    pub fn on_ack(&mut self, batch: u64) {
        while let Some(f) = self.in_flight.front() {
            if f.batch > batch {
                break;
            }
            self.in_flight_bytes -= f.bytes;
            self.in_flight.pop_front();
        }
    }

    /// Next stream batch to send, if the window allows and anything is due.
    /// Returns the batch number and its envelopes.
    pub fn next_batch(
        &mut self,
        log: &DocLog,
        config: &SyncConfig,
        now: Timestamp,
    ) -> Option<(u64, Vec<Envelope>)> {
        if !self.have_received || self.in_flight_bytes >= config.window_bytes {
            return None;
        }
        let room_left = config.window_bytes - self.in_flight_bytes;
        let envs = log.next_batch(
            &mut self.cursor,
            config.batch_bytes.min(room_left),
            MAX_BATCH_ENVELOPES,
        );
        if envs.is_empty() {
            return None;
        }
        let bytes = envs.iter().map(Envelope::len).sum();
        let batch = self.next_batch;
        self.next_batch += 1;
        self.in_flight.push_back(InFlight {
            batch,
            bytes,
            sent_at: now,
        });
        self.in_flight_bytes += bytes;
        Some((batch, envs))
    }

    /// Records that the peer received `author`'s envelopes up to `seq` by
    /// another path (a live push to the whole room), so the stream skips them.
    pub fn pushed(&mut self, author: PeerId, seq: u64) {
        if self.cursor.get(&author) + 1 == seq {
            self.cursor.set(author, seq);
        }
    }

    pub fn note_have_sent(&mut self, now: Timestamp) {
        self.last_have_sent = Some(now);
    }

    /// Is a periodic `Have` due?
    pub fn have_due(&self, now: Timestamp, config: &SyncConfig) -> bool {
        match self.last_have_sent {
            None => true,
            Some(t) => now.since(t) >= config.anti_entropy_ms,
        }
    }

    /// Rewinds a stream whose oldest batch went unacknowledged too long.
    /// Returns true when it rewound.
    pub fn check_ack_timeout(&mut self, now: Timestamp, config: &SyncConfig) -> bool {
        match self.in_flight.front() {
            Some(f) if now.since(f.sent_at) >= config.ack_timeout_ms => {
                self.in_flight.clear();
                self.in_flight_bytes = 0;
                self.cursor = self.remote_vector.clone();
                true
            }
            _ => false,
        }
    }

    /// When this session next needs a tick.
    pub fn next_deadline(&self, config: &SyncConfig) -> Option<Timestamp> {
        let have = self.last_have_sent.map(|t| t.plus(config.anti_entropy_ms));
        let ack = self
            .in_flight
            .front()
            .map(|f| f.sent_at.plus(config.ack_timeout_ms));
        match (have, ack) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Everything `log` holds has reached the peer: it told us so (its
    /// `Have`) or acknowledged the stream batches that carried it.
    pub fn delivered(&self, log: &DocLog) -> bool {
        self.have_received && self.in_flight.is_empty() && !log.is_ahead_of(&self.cursor)
    }

    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }
}
