//! Live membership: which connections are in which room, and each
//! connection's bounded outbox. This is all the state the relay keeps.
//!
//! Rooms live in a sharded map so that publishes to different rooms rarely
//! contend on one lock. A publish encodes its frame once and pushes the same
//! `Bytes` (a reference count, no copy) into every recipient's outbox.
//! Pushing never waits: an outbox that is full marks its connection as a
//! slow consumer, and that connection's task closes it. So one stalled
//! reader can never hold up the others or grow the relay's memory.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use mycel_core::id::RoomId;
use mycel_core::wire::{PeerTag, RelayEvent, encode_frame};

use crate::backplane::{Backplane, Outgoing};
use crate::metrics::Metrics;

/// Why a connection is being closed by someone other than itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// Its outbox overflowed.
    SlowConsumer,
    /// The relay is shutting down.
    Shutdown,
}

/// Frames waiting to be written to one connection, bounded in count and
/// bytes. Shared between the connection's task (the only reader) and the
/// room registry (writers).
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<OutboxInner>,
    /// Wakes the connection task when a frame arrives or it is kicked.
    waker: AtomicWaker,
    max_frames: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct OutboxInner {
    // A VecDeque allocates only on first push: an idle connection's outbox
    // costs no heap beyond the Arc itself.
    queue: VecDeque<Bytes>,
    bytes: usize,
    kicked: Option<Kick>,
}

/// Result of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// This push overflowed the outbox: the connection is now kicked.
    Overflowed,
    /// The connection was already kicked; the frame was dropped.
    Dropped,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox {
            inner: Mutex::new(OutboxInner::default()),
            waker: AtomicWaker::new(),
            max_frames,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxInner> {
        // A panic while holding this lock cannot leave the queue
        // inconsistent (every mutation is a single push/pop/clear), so a
        // poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without ever waiting.
    pub fn push(&self, frame: Bytes) -> Pushed {
        let result = {
            let mut q = self.lock();
            if q.kicked.is_some() {
                return Pushed::Dropped;
            }
            if q.queue.len() >= self.max_frames || q.bytes + frame.len() > self.max_bytes {
                // Free what it holds now rather than when its task runs.
                q.queue = VecDeque::new();
                q.bytes = 0;
                q.kicked = Some(Kick::SlowConsumer);
                Pushed::Overflowed
            } else {
                q.bytes += frame.len();
                q.queue.push_back(frame);
                Pushed::Queued
            }
        };
        self.waker.wake();
        result
    }

    /// Marks the connection to be closed (first reason wins).
    pub fn kick(&self, why: Kick) {
        {
            let mut q = self.lock();
            if q.kicked.is_none() {
                q.kicked = Some(why);
            }
        }
        self.waker.wake();
    }

    /// Registers the connection task's waker; call before [`Outbox::pop`]
    /// so that a push between the two is not missed.
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// The reason the connection was kicked, if it was.
    pub fn kicked(&self) -> Option<Kick> {
        self.lock().kicked
    }

    /// Takes every queued frame, kicked or not (to flush before a close).
    pub fn take_all(&self) -> VecDeque<Bytes> {
        let mut q = self.lock();
        q.bytes = 0;
        std::mem::take(&mut q.queue)
    }

    /// Takes the oldest queued frame, or returns why the connection was
    /// kicked.
    pub fn pop(&self) -> Result<Option<Bytes>, Kick> {
        let mut q = self.lock();
        if let Some(k) = q.kicked {
            return Err(k);
        }
        let f = q.queue.pop_front();
        if let Some(f) = &f {
            q.bytes -= f.len();
        } else if q.queue.capacity() > 0 {
            // After a burst, give the memory back: idle connections should
            // stay small (a few slots are kept for steady traffic).
            q.queue = VecDeque::new();
        }
        Ok(f)
    }
}

/// One member of a room.
#[derive(Debug)]
struct Member {
    tag: PeerTag,
    outbox: Arc<Outbox>,
}

#[derive(Debug, Default)]
struct Room {
    // A Vec, not a map: a publish walks every member, which a Vec does
    // fastest, and rooms are small next to that cost.
    members: Vec<Member>,
    /// Members on other relays (backplane): tag and relay id. A room
    /// exists here only while it has local members.
    remote: Vec<(PeerTag, u64)>,
}

impl Room {
    fn has_tag(&self, tag: PeerTag) -> bool {
        self.members.iter().any(|m| m.tag == tag) || self.remote.iter().any(|(t, _)| *t == tag)
    }

    fn local_tags(&self) -> Vec<PeerTag> {
        self.members.iter().map(|m| m.tag).collect()
    }

    /// Queues a presence event to every local member.
    fn tell(&self, ev: &RelayEvent, d: &mut Delivery, metrics: &Metrics) {
        let note = Bytes::from(encode_frame(ev));
        let before = d.queued;
        for m in &self.members {
            count(d, m.outbox.push(note.clone()));
        }
        metrics.sent(d.queued - before, note.len());
    }
}

/// Why a room operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomError {
    /// `Send` to a tag that is not in the room.
    UnknownPeer,
}

/// The outcome of a delivery: how many frames were queued and how many
/// recipients were dropped as slow consumers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    pub queued: usize,
    pub overflowed: usize,
}

/// Every room with at least one member.
#[derive(Debug)]
pub struct Registry {
    shards: Box<[Mutex<HashMap<RoomId, Room, RandomState>>]>,
    /// Keyed hash for shard choice: room ids come from clients, so an
    /// unkeyed hash would let one pile rooms into one shard.
    hasher: RandomState,
    metrics: Arc<Metrics>,
    backplane: Option<Backplane>,
}

impl Registry {
    #[cfg(test)]
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry::with_backplane(metrics, None)
    }

    /// A registry whose rooms span relays through `backplane`.
    pub fn with_backplane(metrics: Arc<Metrics>, backplane: Option<Backplane>) -> Registry {
        let shards = (0..64)
            .map(|_| Mutex::new(HashMap::default()))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Registry {
            shards,
            hasher: RandomState::new(),
            metrics,
            backplane,
        }
    }

    pub fn backplane(&self) -> Option<&Backplane> {
        self.backplane.as_ref()
    }

    /// Hands `out` to the backplane, if any, counting what it drops.
    fn to_backplane(&self, out: Outgoing) {
        if let Some(bp) = &self.backplane
            && !bp.push(out)
        {
            self.metrics.backplane_dropped.fetch_add(1, Relaxed);
        }
    }

    fn shard(&self, room: &RoomId) -> MutexGuard<'_, HashMap<RoomId, Room, RandomState>> {
        let i = (self.hasher.hash_one(room) as usize) % self.shards.len();
        // As for the outbox: each mutation below leaves the map consistent
        // at every step, so poisoning is harmless.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection to a room with a fresh random tag. Its `Joined`
    /// is queued before anyone else can queue to it, and the others'
    /// `PeerJoined` before the newcomer can publish, so every member sees
    /// presence before messages.
    pub fn join(&self, room: RoomId, outbox: &Arc<Outbox>) -> (PeerTag, Delivery) {
        let mut shard = self.shard(&room);
        let r = shard.entry(room).or_insert_with(|| {
            self.metrics.rooms.fetch_add(1, Relaxed);
            // Under the shard lock, so subscribe and unsubscribe of one
            // room reach the backplane in the order they happened.
            self.to_backplane(Outgoing::Subscribe(room));
            Room::default()
        });
        // Random per (connection, room): a tag links nothing across rooms.
        // Collisions are astronomically rare but cheap to rule out (across
        // relays they are left to the 64 random bits).
        let tag = loop {
            let t = PeerTag(rand::random());
            if !r.has_tag(t) {
                break t;
            }
        };
        let peers: Vec<PeerTag> = r
            .members
            .iter()
            .map(|m| m.tag)
            .chain(r.remote.iter().map(|(t, _)| *t))
            .collect();
        let joined = Bytes::from(encode_frame(&RelayEvent::Joined {
            room,
            you: tag,
            peers,
        }));
        let mut d = Delivery::default();
        count(&mut d, outbox.push(joined.clone()));
        self.metrics.sent(1, joined.len());
        let note = Bytes::from(encode_frame(&RelayEvent::PeerJoined { room, peer: tag }));
        let before = d.queued;
        for m in &r.members {
            count(&mut d, m.outbox.push(note.clone()));
        }
        self.metrics.sent(d.queued - before, note.len());
        r.members.push(Member {
            tag,
            outbox: outbox.clone(),
        });
        self.metrics.memberships.fetch_add(1, Relaxed);
        if self.backplane.is_some() {
            self.to_backplane(Outgoing::Roster(room));
        }
        (tag, d)
    }

    /// The tags of the members of `room` other than `me` (the answer to a
    /// repeated `Join`).
    pub fn peers(&self, room: &RoomId, me: PeerTag) -> Vec<PeerTag> {
        let shard = self.shard(room);
        shard
            .get(room)
            .map(|r| {
                r.members
                    .iter()
                    .map(|m| m.tag)
                    .chain(r.remote.iter().map(|(t, _)| *t))
                    .filter(|t| *t != me)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes a member and tells the others. Returns the `PeerLeft`
    /// deliveries.
    pub fn leave(&self, room: RoomId, tag: PeerTag) -> Delivery {
        let mut d = Delivery::default();
        let mut shard = self.shard(&room);
        let Some(r) = shard.get_mut(&room) else {
            return d;
        };
        let Some(i) = r.members.iter().position(|m| m.tag == tag) else {
            return d;
        };
        r.members.swap_remove(i);
        self.metrics.memberships.fetch_sub(1, Relaxed);
        if r.members.is_empty() {
            shard.remove(&room);
            self.metrics.rooms.fetch_sub(1, Relaxed);
            self.to_backplane(Outgoing::Unsubscribe(room));
            return d;
        }
        if self.backplane.is_some() {
            self.to_backplane(Outgoing::Roster(room));
        }
        let note = Bytes::from(encode_frame(&RelayEvent::PeerLeft { room, peer: tag }));
        for m in &r.members {
            count(&mut d, m.outbox.push(note.clone()));
        }
        self.metrics.sent(d.queued, note.len());
        d
    }

    /// Queues `frame` to every member of `room` except `from`.
    pub fn publish(&self, room: &RoomId, from: PeerTag, frame: &Bytes) -> Delivery {
        let mut d = Delivery::default();
        let shard = self.shard(room);
        if let Some(r) = shard.get(room) {
            for m in r.members.iter().filter(|m| m.tag != from) {
                count(&mut d, m.outbox.push(frame.clone()));
            }
            if !r.remote.is_empty() {
                self.to_backplane(Outgoing::Publish(*room, frame.clone()));
            }
        }
        drop(shard);
        self.metrics.sent(d.queued, frame.len());
        d
    }

    /// Queues `frame` to the member `to` of `room`.
    pub fn send(&self, room: &RoomId, to: PeerTag, frame: Bytes) -> Result<Delivery, RoomError> {
        let mut d = Delivery::default();
        let len = frame.len();
        {
            let shard = self.shard(room);
            let r = shard.get(room).ok_or(RoomError::UnknownPeer)?;
            match r.members.iter().find(|m| m.tag == to) {
                Some(m) => count(&mut d, m.outbox.push(frame)),
                None if r.remote.iter().any(|(t, _)| *t == to) => {
                    self.to_backplane(Outgoing::Send(*room, to, frame));
                    return Ok(d);
                }
                None => return Err(RoomError::UnknownPeer),
            }
        }
        self.metrics.sent(d.queued, len);
        Ok(d)
    }

    // ---- the backplane's side ------------------------------------------

    /// The tags of the local members of `room`.
    pub fn local_tags(&self, room: &RoomId) -> Vec<PeerTag> {
        self.shard(room)
            .get(room)
            .map(Room::local_tags)
            .unwrap_or_default()
    }

    /// Every room with local members, with their tags.
    pub fn local_rosters(&self) -> Vec<(RoomId, Vec<PeerTag>)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(shard.iter().map(|(id, r)| (*id, r.local_tags())));
        }
        out
    }

    /// A `Message` frame published on another relay: to every local member.
    pub fn remote_publish(&self, room: &RoomId, frame: &Bytes) -> Delivery {
        let mut d = Delivery::default();
        if let Some(r) = self.shard(room).get(room) {
            for m in &r.members {
                count(&mut d, m.outbox.push(frame.clone()));
            }
        }
        self.metrics.sent(d.queued, frame.len());
        d
    }

    /// A `Message` frame sent on another relay to `to`, if `to` is here.
    pub fn remote_send(&self, room: &RoomId, to: PeerTag, frame: Bytes) -> Delivery {
        let mut d = Delivery::default();
        let len = frame.len();
        if let Some(m) = self
            .shard(room)
            .get(room)
            .and_then(|r| r.members.iter().find(|m| m.tag == to))
        {
            count(&mut d, m.outbox.push(frame));
        }
        self.metrics.sent(d.queued, len);
        d
    }

    /// Relay `relay`'s local members of `room` are now `tags`: those new
    /// join, those gone leave (presence events to the local members).
    pub fn remote_roster(&self, room: &RoomId, relay: u64, tags: &[PeerTag]) -> Delivery {
        let mut d = Delivery::default();
        let mut shard = self.shard(room);
        let Some(r) = shard.get_mut(room) else {
            return d;
        };
        let mut left = Vec::new();
        r.remote.retain(|(t, from)| {
            let keep = *from != relay || tags.contains(t);
            if !keep {
                left.push(*t);
            }
            keep
        });
        for peer in left {
            r.tell(
                &RelayEvent::PeerLeft { room: *room, peer },
                &mut d,
                &self.metrics,
            );
        }
        for &peer in tags {
            if !r.has_tag(peer) {
                r.remote.push((peer, relay));
                r.tell(
                    &RelayEvent::PeerJoined { room: *room, peer },
                    &mut d,
                    &self.metrics,
                );
            }
        }
        d
    }

    /// Relay `relay` is gone: its members leave every room.
    pub fn relay_gone(&self, relay: u64) -> Delivery {
        let mut d = Delivery::default();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (room, r) in shard.iter_mut() {
                let gone: Vec<PeerTag> = r
                    .remote
                    .iter()
                    .filter(|(_, from)| *from == relay)
                    .map(|(t, _)| *t)
                    .collect();
                if gone.is_empty() {
                    continue;
                }
                r.remote.retain(|(_, from)| *from != relay);
                for peer in gone {
                    r.tell(
                        &RelayEvent::PeerLeft { room: *room, peer },
                        &mut d,
                        &self.metrics,
                    );
                }
            }
        }
        d
    }
}

fn count(d: &mut Delivery, p: Pushed) {
    match p {
        Pushed::Queued => d.queued += 1,
        Pushed::Overflowed => d.overflowed += 1,
        Pushed::Dropped => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mycel_core::wire::{MAX_FRAME, decode_frame};

    fn events(o: &Outbox) -> Vec<RelayEvent> {
        let mut v = Vec::new();
        while let Some(b) = o.pop().unwrap() {
            v.push(decode_frame::<RelayEvent>(&b, MAX_FRAME).unwrap());
        }
        v
    }

    #[test]
    fn join_publish_leave() {
        let reg = Registry::new(Arc::default());
        let room = RoomId([1; 32]);
        let a = Arc::new(Outbox::new(16, 1 << 20));
        let b = Arc::new(Outbox::new(16, 1 << 20));
        let (ta, _) = reg.join(room, &a);
        let (tb, _) = reg.join(room, &b);
        assert_eq!(
            events(&a),
            vec![
                RelayEvent::Joined {
                    room,
                    you: ta,
                    peers: vec![]
                },
                RelayEvent::PeerJoined { room, peer: tb }
            ]
        );
        assert_eq!(
            events(&b),
            vec![RelayEvent::Joined {
                room,
                you: tb,
                peers: vec![ta]
            }]
        );
        let d = reg.publish(&room, ta, &Bytes::from_static(b"x"));
        assert_eq!(d.queued, 1);
        assert!(events(&a).is_empty());
        assert_eq!(
            reg.send(&room, PeerTag(ta.0 ^ 1), Bytes::new()),
            Err(RoomError::UnknownPeer)
        );
        reg.leave(room, tb);
        assert_eq!(events(&a), vec![RelayEvent::PeerLeft { room, peer: tb }]);
        reg.leave(room, ta);
        assert_eq!(reg.metrics.rooms.load(Relaxed), 0);
        assert_eq!(reg.metrics.memberships.load(Relaxed), 0);
    }

    #[test]
    fn overflow_kicks_and_frees() {
        let o = Outbox::new(2, 100);
        assert_eq!(o.push(Bytes::from_static(b"1")), Pushed::Queued);
        assert_eq!(o.push(Bytes::from_static(b"2")), Pushed::Queued);
        assert_eq!(o.push(Bytes::from_static(b"3")), Pushed::Overflowed);
        assert_eq!(o.push(Bytes::from_static(b"4")), Pushed::Dropped);
        assert_eq!(o.pop(), Err(Kick::SlowConsumer));
        let o = Outbox::new(100, 10);
        assert_eq!(o.push(Bytes::from(vec![0; 11])), Pushed::Overflowed);
    }
}
