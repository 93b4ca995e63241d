//! Scale-out: rooms that span several relays through a NATS server
//! (`--backplane nats://HOST:PORT`). Without it, none of this runs and a
//! relay is whole on its own.
//!
//! Each relay subscribes to the subject of every room it has local members
//! in (`mycel.room.<room id in hex>`) and unsubscribes when the last one
//! leaves. What a local member publishes or sends is delivered locally by
//! the registry and published once on the room's subject; the other
//! relays deliver it to their own members. The NATS connection is opened
//! with `no_echo`, so a relay never hears its own messages back: every
//! member gets a publish exactly once, and the sender never.
//!
//! Presence: a relay publishes its room's *roster* (the tags of its local
//! members) whenever it changes, and asks the others for theirs when it
//! subscribes or reconnects. Relays announce themselves on `mycel.relays`
//! every [`ALIVE_EVERY`]; a relay not heard from for [`EXPIRE_AFTER`] is
//! taken for dead and its members leave every room (`PeerLeft`).
//!
//! If NATS goes away, rooms keep working locally, `/healthz` says
//! `degraded`, `mycel_relay_backplane_up` drops to 0, and messages for
//! other relays are dropped (and counted), never queued without bound.
//! When NATS returns, the client resubscribes and the relays exchange
//! rosters again. Payloads stay opaque and nothing is persisted.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use minicbor::bytes::ByteVec;
use minicbor::{Decode, Encode};
use mycel_core::id::RoomId;
use mycel_core::wire::{PeerTag, RelayEvent, decode_frame};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::server::Shared;

/// How often a relay announces that it is alive.
pub const ALIVE_EVERY: Duration = Duration::from_secs(1);
/// A relay not heard from for this long is dead: its members leave.
pub const EXPIRE_AFTER: Duration = Duration::from_secs(4);
/// Subject of relay announcements.
const RELAYS_SUBJECT: &str = "mycel.relays";
/// Most messages buffered in the NATS client while it reconnects; past
/// that, publishing waits, so the backplane drops instead (see `up`).
const CLIENT_CAPACITY: usize = 65_536;

/// Between relays, on NATS. Not part of the client protocol: relays of one
/// deployment run the same version.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
enum RelayMsg {
    /// On `mycel.relays`, every [`ALIVE_EVERY`].
    #[n(0)]
    Alive {
        #[n(0)]
        relay: u64,
    },
    /// On `mycel.relays`, when a relay shuts down.
    #[n(1)]
    Bye {
        #[n(0)]
        relay: u64,
    },
    /// On a room's subject: the relay's local members of the room (all of
    /// them: the receiver reconciles). `reply`: send yours back.
    #[n(2)]
    Roster {
        #[n(0)]
        relay: u64,
        #[n(1)]
        tags: Vec<u64>,
        #[n(2)]
        reply: bool,
    },
    /// On a room's subject: a `Message` frame for every member.
    #[n(3)]
    Publish {
        #[n(0)]
        relay: u64,
        #[n(1)]
        frame: ByteVec,
    },
    /// On a room's subject: a `Message` frame for the member `to`.
    #[n(4)]
    Send {
        #[n(0)]
        relay: u64,
        #[n(1)]
        to: u64,
        #[n(2)]
        frame: ByteVec,
    },
}

/// What the registry hands the backplane task, in order.
#[derive(Debug)]
pub enum Outgoing {
    Subscribe(RoomId),
    Unsubscribe(RoomId),
    /// The local members of a room changed: publish its roster. (Read
    /// when it is published, not when queued: an older roster must never
    /// overtake a newer one.)
    Roster(RoomId),
    Publish(RoomId, Bytes),
    Send(RoomId, PeerTag, Bytes),
    /// Say `Bye` and stop.
    Shutdown,
}

/// The registry's side: a queue to the backplane task and its health.
#[derive(Debug, Clone)]
pub struct Backplane {
    tx: mpsc::UnboundedSender<Outgoing>,
    pub state: Arc<BackplaneState>,
}

#[derive(Debug)]
pub struct BackplaneState {
    /// This relay's id on the backplane, random per start.
    pub relay: u64,
    /// Connected to NATS.
    pub up: AtomicBool,
    /// Set when the connection comes (back) up: rosters are re-sent.
    resync: Notify,
}

impl Backplane {
    /// A backplane handle and the receiving end for [`run`].
    pub fn new() -> (Backplane, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(BackplaneState {
            relay: rand::random(),
            up: AtomicBool::new(false),
            resync: Notify::new(),
        });
        (Backplane { tx, state }, rx)
    }

    /// Queues `out` for the backplane. Messages are dropped while NATS is
    /// down (they could not be delivered in time anyway); subscriptions
    /// and rosters never are, so the relay's view is rebuilt on return.
    /// Returns false if it was dropped.
    pub fn push(&self, out: Outgoing) -> bool {
        let data = matches!(out, Outgoing::Publish(..) | Outgoing::Send(..));
        if data && !self.state.up.load(Relaxed) {
            return false;
        }
        self.tx.send(out).is_ok()
    }
}

fn room_subject(room: &RoomId) -> String {
    let mut s = String::with_capacity(11 + 64);
    s.push_str("mycel.room.");
    for b in room.0 {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A task that is aborted when its handle is dropped (a room's
/// subscription ends with it).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When each other relay was last heard from.
type Liveness = Arc<Mutex<HashMap<u64, Instant>>>;

fn heard(live: &Liveness, relay: u64) {
    live.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(relay, Instant::now());
}

/// Runs the backplane until `Outgoing::Shutdown` (or until aborted).
pub async fn run(url: String, shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let Some(bp) = shared.registry.backplane().cloned() else {
        return;
    };
    let state = bp.state.clone();
    let metrics = shared.metrics.clone();
    let events_state = state.clone();
    let events_metrics = metrics.clone();
    let options = async_nats::ConnectOptions::new()
        .no_echo()
        .retry_on_initial_connect()
        .client_capacity(CLIENT_CAPACITY)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            // 100 ms doubling to 2 s: quick to come back after a NATS restart.
            Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5)).min(2_000))
        })
        .event_callback(move |event| {
            let state = events_state.clone();
            let metrics = events_metrics.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("backplane connected");
                        state.up.store(true, Relaxed);
                        metrics.backplane_up.store(1, Relaxed);
                        state.resync.notify_one();
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("backplane disconnected: rooms work on this relay only");
                        state.up.store(false, Relaxed);
                        metrics.backplane_up.store(0, Relaxed);
                        metrics.backplane_disconnects.fetch_add(1, Relaxed);
                    }
                    other => tracing::debug!(event = %other, "backplane event"),
                }
            }
        });
    let client = match options.connect(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            // Only a malformed address gets here (connecting is retried).
            tracing::error!(error = %e, %url, "backplane unusable: rooms work on this relay only");
            return;
        }
    };
    let live: Liveness = Arc::default();
    let _relays = match client.subscribe(RELAYS_SUBJECT).await {
        Ok(mut sub) => {
            let (shared, live) = (shared.clone(), live.clone());
            let me = state.relay;
            Some(AbortOnDrop(tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    match minicbor::decode::<RelayMsg>(&msg.payload) {
                        Ok(RelayMsg::Alive { relay }) if relay != me => heard(&live, relay),
                        Ok(RelayMsg::Bye { relay }) if relay != me => {
                            live.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&relay);
                            shared.registry.relay_gone(relay);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            shared.metrics.backplane_bad.fetch_add(1, Relaxed);
                        }
                    }
                }
            })))
        }
        Err(e) => {
            tracing::error!(error = %e, "backplane: cannot subscribe to relay announcements");
            None
        }
    };
    let mut rooms: HashMap<RoomId, AbortOnDrop> = HashMap::new();
    let mut tick = tokio::time::interval(ALIVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let me = state.relay;
    let publish = |subject: String, msg: RelayMsg| {
        let client = client.clone();
        let metrics = metrics.clone();
        let state = state.clone();
        async move {
            if !state.up.load(Relaxed) {
                metrics.backplane_dropped.fetch_add(1, Relaxed);
                return;
            }
            let bytes = Bytes::from(minicbor::to_vec(&msg).unwrap_or_default());
            match client.publish(subject, bytes).await {
                Ok(()) => {
                    metrics.backplane_out.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    metrics.backplane_dropped.fetch_add(1, Relaxed);
                }
            }
        }
    };
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                None | Some(Outgoing::Shutdown) => {
                    publish(RELAYS_SUBJECT.into(), RelayMsg::Bye { relay: me }).await;
                    let _ = tokio::time::timeout(Duration::from_millis(500), client.flush()).await;
                    return;
                }
                Some(Outgoing::Subscribe(room)) => {
                    match client.subscribe(room_subject(&room)).await {
                        Ok(sub) => {
                            let task = tokio::spawn(room_task(room, sub, shared.clone(), live.clone()));
                            rooms.insert(room, AbortOnDrop(task));
                            let tags = shared.registry.local_tags(&room).into_iter().map(|t| t.0).collect();
                            publish(room_subject(&room), RelayMsg::Roster { relay: me, tags, reply: true }).await;
                        }
                        Err(e) => tracing::warn!(error = %e, %room, "backplane: subscribe failed"),
                    }
                }
                Some(Outgoing::Unsubscribe(room)) => {
                    rooms.remove(&room);
                    publish(room_subject(&room), RelayMsg::Roster { relay: me, tags: Vec::new(), reply: false }).await;
                }
                Some(Outgoing::Roster(room)) => {
                    let tags = shared.registry.local_tags(&room).into_iter().map(|t| t.0).collect();
                    publish(room_subject(&room), RelayMsg::Roster { relay: me, tags, reply: false }).await;
                }
                Some(Outgoing::Publish(room, frame)) => {
                    let frame = ByteVec::from(frame.to_vec());
                    publish(room_subject(&room), RelayMsg::Publish { relay: me, frame }).await;
                }
                Some(Outgoing::Send(room, to, frame)) => {
                    let frame = ByteVec::from(frame.to_vec());
                    publish(room_subject(&room), RelayMsg::Send { relay: me, to: to.0, frame }).await;
                }
            },
            _ = tick.tick() => {
                publish(RELAYS_SUBJECT.into(), RelayMsg::Alive { relay: me }).await;
                let dead: Vec<u64> = {
                    let mut l = live.lock().unwrap_or_else(|p| p.into_inner());
                    let now = Instant::now();
                    let dead: Vec<u64> = l
                        .iter()
                        .filter(|(_, at)| now.duration_since(**at) > EXPIRE_AFTER)
                        .map(|(r, _)| *r)
                        .collect();
                    for r in &dead {
                        l.remove(r);
                    }
                    dead
                };
                for relay in dead {
                    tracing::info!(relay, "backplane: relay silent, its members leave");
                    shared.registry.relay_gone(relay);
                }
            }
            () = state.resync.notified() => {
                for (room, tags) in shared.registry.local_rosters() {
                    let tags = tags.into_iter().map(|t| t.0).collect();
                    publish(room_subject(&room), RelayMsg::Roster { relay: me, tags, reply: true }).await;
                }
            }
        }
    }
}

/// Delivers what other relays send on one room's subject.
async fn room_task(
    room: RoomId,
    mut sub: async_nats::Subscriber,
    shared: Arc<Shared>,
    live: Liveness,
) {
    let me = shared
        .registry
        .backplane()
        .map(|b| b.state.relay)
        .unwrap_or(0);
    let max_frame = shared.config.max_frame.0;
    // A frame from another relay is checked like one from a client: it
    // must be one `Message` for this room within the size limit.
    let valid = |frame: &[u8]| {
        frame.len() <= max_frame
            && matches!(
                decode_frame::<RelayEvent>(frame, max_frame),
                Ok(RelayEvent::Message { room: r, .. }) if r == room
            )
    };
    while let Some(msg) = sub.next().await {
        let m = &shared.metrics;
        m.backplane_in.fetch_add(1, Relaxed);
        match minicbor::decode::<RelayMsg>(&msg.payload) {
            Ok(RelayMsg::Roster { relay, tags, reply }) if relay != me => {
                heard(&live, relay);
                let tags: Vec<PeerTag> = tags.into_iter().map(PeerTag).collect();
                shared.registry.remote_roster(&room, relay, &tags);
                if reply && let Some(bp) = shared.registry.backplane() {
                    bp.push(Outgoing::Roster(room));
                }
            }
            Ok(RelayMsg::Publish { relay, frame }) if relay != me => {
                heard(&live, relay);
                if valid(&frame) {
                    shared
                        .registry
                        .remote_publish(&room, &Bytes::from(Vec::from(frame)));
                } else {
                    m.backplane_bad.fetch_add(1, Relaxed);
                }
            }
            Ok(RelayMsg::Send { relay, to, frame }) if relay != me => {
                heard(&live, relay);
                if valid(&frame) {
                    shared
                        .registry
                        .remote_send(&room, PeerTag(to), Bytes::from(Vec::from(frame)));
                } else {
                    m.backplane_bad.fetch_add(1, Relaxed);
                }
            }
            Ok(_) => {}
            Err(_) => {
                m.backplane_bad.fetch_add(1, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_the_room_id_in_hex() {
        let s = room_subject(&RoomId([0xab; 32]));
        assert_eq!(s.len(), 11 + 64);
        assert!(s.starts_with("mycel.room.abab"));
    }

    #[test]
    fn relay_messages_round_trip() {
        let m = RelayMsg::Send {
            relay: 7,
            to: 9,
            frame: ByteVec::from(vec![1, 2, 3]),
        };
        let bytes = minicbor::to_vec(&m).unwrap();
        assert_eq!(minicbor::decode::<RelayMsg>(&bytes).unwrap(), m);
        assert!(minicbor::decode::<RelayMsg>(&[0xff, 0x00]).is_err());
    }
}
