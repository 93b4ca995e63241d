//! The peer table: what this peer knows about others, their scores, and
//! the per-sender replay windows.

use alloc::string::String;
use alloc::vec::Vec;

use super::message::Message;
use crate::time::Timestamp;

/// Frames remembered per sender session to refuse replays (a frame
/// reordered behind this many later ones is dropped as too old).
const WINDOW: usize = 16;
/// Sender sessions remembered per peer (a peer that restarts more often
/// than this while this peer runs could have its oldest frames replayed).
const SESSIONS: usize = 4;

/// Anti-replay state for one sender session: every seq at or below
/// `floor` is refused, and so is any seq in `seen`.
#[derive(Debug, Clone)]
pub(crate) struct ReplayWindow {
    pub(crate) session: u64,
    floor: u64,
    seen: [u64; WINDOW],
    len: u8,
}

impl ReplayWindow {
    fn new(session: u64) -> Self {
        ReplayWindow {
            session,
            floor: 0,
            seen: [0; WINDOW],
            len: 0,
        }
    }

    /// Accepts `seq` once; refuses it again and below the floor.
    fn accept(&mut self, seq: u64) -> bool {
        let len = usize::from(self.len);
        if seq <= self.floor || self.seen[..len].contains(&seq) {
            return false;
        }
        if len < WINDOW {
            self.seen[len] = seq;
            self.len += 1;
        } else {
            // Forget the oldest (smallest) seq: it becomes the floor.
            let (i, min) = self
                .seen
                .iter()
                .copied()
                .enumerate()
                .min_by_key(|(_, s)| *s)
                .unwrap_or((0, 0));
            if seq < min {
                self.floor = seq;
            } else {
                self.floor = min;
                self.seen[i] = seq;
            }
        }
        true
    }
}

/// One known peer.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub(crate) reachable: bool,
    pub(crate) addresses: Vec<String>,
    /// The record came from the peer itself (not passed on by others).
    pub(crate) first_hand: bool,
    pub(crate) last_seen: Timestamp,
    pub(crate) expected: u32,
    pub(crate) answered: u32,
    pub(crate) rtt_ms: Option<u32>,
    /// The peer's current session as last verified (0: unknown).
    pub(crate) session: u64,
    pub(crate) windows: Vec<ReplayWindow>,
    /// Messages waiting for the session handshake.
    pub(crate) outbox: Vec<Message>,
    pub(crate) last_hello: Option<Timestamp>,
    pub(crate) rejected_at: Option<Timestamp>,
    pub(crate) failures: u32,
    /// (session, seq) of an unverified `Hello` from a session not yet
    /// verified: counted as seen when the session is.
    pub(crate) hello_seq: Option<(u64, u64)>,
}

/// What a fresh frame's session and seq mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Refused: seen before (or too old).
    Replay,
    /// Accepted, from a session already known.
    Known,
    /// Accepted, from a session never seen before: the peer (re)started.
    NewSession,
}

impl PeerEntry {
    pub(crate) fn new(last_seen: Timestamp) -> Self {
        PeerEntry {
            reachable: false,
            addresses: Vec::new(),
            first_hand: false,
            last_seen,
            expected: 0,
            answered: 0,
            rtt_ms: None,
            session: 0,
            windows: Vec::new(),
            outbox: Vec::new(),
            last_hello: None,
            rejected_at: None,
            failures: 0,
            hello_seq: None,
        }
    }

    /// When this peer was last heard from (directly, or as others reported).
    pub fn last_seen(&self) -> Timestamp {
        self.last_seen
    }
    /// The peer opted in to being reachable.
    pub fn reachable(&self) -> bool {
        self.reachable
    }
    /// Its addresses (empty unless it opted in).
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }
    /// Availability score in permille: heartbeats answered / expected,
    /// with a prior of one of two (500 for a peer never asked).
    pub fn availability_permille(&self) -> u32 {
        let a = u64::from(self.answered) + 1;
        let e = u64::from(self.expected) + 2;
        (a * 1000 / e).min(1000) as u32
    }
    /// Performance score: moving average of heartbeat round trips.
    pub fn rtt_ms(&self) -> Option<u32> {
        self.rtt_ms
    }
    /// Heartbeats sent to it / answered by it.
    pub fn heartbeats(&self) -> (u32, u32) {
        (self.expected, self.answered)
    }

    /// Ordering key for eviction and choice: higher is better.
    pub(crate) fn score(&self) -> (u32, i64, Timestamp) {
        let rtt = i64::from(self.rtt_ms.unwrap_or(1_000));
        (
            self.availability_permille()
                .saturating_sub(100 * self.failures.min(10)),
            -rtt,
            self.last_seen,
        )
    }

    pub(crate) fn note_rtt(&mut self, sample_ms: u64) {
        let s = sample_ms.min(u64::from(u32::MAX)) as u32;
        self.rtt_ms = Some(match self.rtt_ms {
            // Exponentially weighted, alpha 1/8 (as TCP's SRTT).
            Some(avg) => ((u64::from(avg) * 7 + u64::from(s)) / 8) as u32,
            None => s,
        });
    }

    /// Runs a fresh frame's (session, seq) through the replay windows.
    pub(crate) fn admit(&mut self, session: u64, seq: u64) -> Admit {
        if let Some(i) = self.windows.iter().position(|w| w.session == session) {
            let w = &mut self.windows[i];
            if !w.accept(seq) {
                return Admit::Replay;
            }
            // Most recently used last.
            let w = self.windows.remove(i);
            self.windows.push(w);
            return Admit::Known;
        }
        if self.windows.len() >= SESSIONS {
            self.windows.remove(0);
        }
        let mut w = ReplayWindow::new(session);
        w.accept(seq);
        if let Some((s, q)) = self.hello_seq.take()
            && s == session
        {
            w.accept(q);
        }
        self.windows.push(w);
        Admit::NewSession
    }

    /// An unverified `Hello`: refused if its session is verified and the
    /// seq was seen; else remembered for when the session is verified.
    pub(crate) fn admit_hello(&mut self, session: u64, seq: u64) -> bool {
        if let Some(w) = self.windows.iter_mut().find(|w| w.session == session) {
            return w.accept(seq);
        }
        if self.hello_seq == Some((session, seq)) {
            return false;
        }
        self.hello_seq = Some((session, seq));
        true
    }

    /// (session, highest seq accepted) of every window: kept when the
    /// entry is evicted, so old frames stay refused if it comes back.
    pub(crate) fn floors(&self) -> Vec<(u64, u64)> {
        self.windows
            .iter()
            .map(|w| {
                let top = w.seen[..usize::from(w.len)].iter().copied().max();
                (w.session, top.unwrap_or(0).max(w.floor))
            })
            .collect()
    }

    /// Restores a window from [`Self::floors`]: everything up to `floor` is refused.
    pub(crate) fn restore_window(&mut self, session: u64, floor: u64) {
        let mut w = ReplayWindow::new(session);
        w.floor = floor;
        self.windows.push(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_accepts_each_seq_once_and_tolerates_reordering() {
        let mut w = ReplayWindow::new(1);
        for s in [3, 1, 2, 5, 4] {
            assert!(w.accept(s));
        }
        for s in [1, 2, 3, 4, 5] {
            assert!(!w.accept(s));
        }
        for s in 6..100 {
            assert!(w.accept(s));
        }
        // Far behind the window: refused as too old.
        assert!(!w.accept(50));
        assert!(!w.accept(99));
        assert!(w.accept(100));
    }

    #[test]
    fn sessions_are_tracked_separately() {
        let mut e = PeerEntry::new(Timestamp(0));
        assert_eq!(e.admit(7, 1), Admit::NewSession);
        assert_eq!(e.admit(7, 1), Admit::Replay);
        assert_eq!(e.admit(7, 2), Admit::Known);
        assert_eq!(e.admit(8, 1), Admit::NewSession);
        assert_eq!(e.admit(7, 3), Admit::Known);
        assert_eq!(e.admit(7, 2), Admit::Replay);
    }
}
