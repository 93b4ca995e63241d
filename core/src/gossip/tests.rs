//! Gossip tests that must hold in every build, with and without the
//! `broadcast` feature (`cargo xtask test` also runs them without it).

use alloc::vec::Vec;

use minicbor::Encoder;

use super::codec::{Codec, Outer};
use super::{
    Frame, Gossip, GossipConfig, GossipError, Have, Input, Kind, Message, MsgId, Output, Payload,
};
use crate::crypto::Identity;
use crate::id::{DocId, PeerId, RoomId};
use crate::time::Timestamp;
use crate::wire::encode_frame;

fn id(i: usize) -> PeerId {
    PeerId([i as u8 + 1; 32])
}

/// `n` peers that each met peer 0, run for `secs` seconds of simulated time
/// with every frame delivered at once.
fn swarm(n: usize, secs: u64) -> Vec<Gossip> {
    let mut peers: Vec<Gossip> = (0..n)
        .map(|i| Gossip::new(id(i), GossipConfig::default(), [i as u8 + 100; 32]))
        .collect();
    for (i, g) in peers.iter_mut().enumerate().skip(1) {
        let _ = g.handle(Timestamp(i as u64), Input::PeerMet { peer: id(0) });
    }
    for s in 1..=secs {
        let now = Timestamp(s * 1000);
        for g in &mut peers {
            let _ = g.handle(now, Input::Tick);
        }
        loop {
            let mut frames = Vec::new();
            for g in &mut peers {
                while let Some(out) = g.poll() {
                    if let Output::Send { to, frame } = out {
                        frames.push((to, frame));
                    }
                }
            }
            if frames.is_empty() {
                break;
            }
            for (to, frame) in frames {
                let j = usize::from(to.0[0]) - 1;
                let _ = peers[j].handle(now, Input::Received { frame });
            }
        }
    }
    peers
}

#[test]
fn membership_forms_connected_bounded_active_views() {
    let n = 24;
    let peers = swarm(n, 600);
    let max = GossipConfig::default().active_view;
    for g in &peers {
        let view = g.active_view();
        assert!(
            (2..=max).contains(&view.len()),
            "{:?}: {} active",
            g.peer_id(),
            view.len()
        );
        // Symmetric: each active peer has this one in its view too.
        for p in &view {
            let other = &peers[usize::from(p.0[0]) - 1];
            assert!(
                other.is_active(&g.peer_id()),
                "{p:?} does not keep the link"
            );
        }
    }
    // One overlay: every peer reachable over active links.
    let mut reached = alloc::vec![false; n];
    let mut stack = alloc::vec![0];
    reached[0] = true;
    while let Some(i) = stack.pop() {
        for p in peers[i].active_view() {
            let j = usize::from(p.0[0]) - 1;
            if !reached[j] {
                reached[j] = true;
                stack.push(j);
            }
        }
    }
    assert!(
        reached.iter().all(|r| *r),
        "the overlay is split: {reached:?}"
    );
}

/// A fresh, valid frame of `msg` from `from` to `to` (both running).
fn frame(from: &Gossip, to: &Gossip, seq: u64, msg: Message) -> Frame {
    Frame {
        from: from.peer_id(),
        to: to.peer_id(),
        session: from.session(),
        seq,
        echo: to.session(),
        msg,
    }
}

/// A membership-only build (no `broadcast` feature) has no dissemination
/// messages: its codec refuses them as malformed (counted), a broadcast is
/// refused, and announcements riding on heartbeats are ignored while the
/// link stays up. A full build takes them.
#[test]
fn dissemination_is_handled_or_refused_by_the_build() {
    let mut peers = swarm(4, 120);
    let (a, rest) = peers.split_first_mut().expect("four peers");
    let b = rest
        .iter()
        .find(|g| a.is_active(&g.peer_id()))
        .expect("an active peer");
    let now = Timestamp(121_000);
    let have = alloc::vec![Have {
        id: MsgId::of(b"x"),
        hops: 1,
    }];
    let beat = Message::Heartbeat {
        ping: 0,
        pong: 0,
        have,
    };
    let r = a.handle(
        now,
        Input::Received {
            frame: frame(b, a, 1_000_000, beat),
        },
    );
    assert_eq!(r, Ok(()));
    assert!(a.is_active(&b.peer_id()));
    let r = a.handle(
        now,
        Input::Broadcast {
            payload: Payload::new(b"hello"),
        },
    );
    if cfg!(feature = "broadcast") {
        assert_eq!(r, Ok(()));
    } else {
        assert_eq!(r, Err(GossipError::Unsupported { kind: Kind::Gossip }));
    }
    // A sealed frame carrying `Gossip` (variant 10), signed by nobody:
    // a full build decodes it and finds the signature forged; a
    // membership-only one does not know the message.
    let (me, other) = (
        Identity::from_secret([5; 32]),
        Identity::from_secret([3; 32]),
    );
    let (doc, room) = (DocId([2; 16]), RoomId([4; 32]));
    let mut codec = Codec::new(&me, &doc, &room);
    let mut e = Encoder::new(Vec::new());
    e.array(6).unwrap();
    e.encode(other.peer_id())
        .unwrap()
        .encode(me.peer_id())
        .unwrap();
    e.u64(1).unwrap().u64(1).unwrap().u64(0).unwrap();
    e.array(2).unwrap().u8(10).unwrap();
    e.array(2).unwrap().u8(1).unwrap().bytes(b"hello").unwrap();
    let plain = encode_frame(&Outer::Signed {
        signed: e.into_writer().into(),
        signature: [0; 64],
    });
    let r = codec.verify(&plain);
    if cfg!(feature = "broadcast") {
        assert_eq!(r, Err(GossipError::Forged));
        assert_eq!(codec.stats().forged, 1);
    } else {
        assert!(matches!(r, Err(GossipError::Malformed(_))), "{r:?}");
        assert_eq!(codec.stats().malformed, 1);
    }
}
