//! Gossip tests that must hold in every build, with and without the
//! `broadcast` feature (`cargo xtask test` also runs them without it).

use alloc::vec::Vec;

use super::{Frame, Gossip, GossipConfig, GossipError, Input, Kind, Message, Output, Payload};
use crate::id::PeerId;
use crate::time::Timestamp;

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

#[test]
fn dissemination_messages_are_handled_or_refused_by_the_build() {
    let mut peers = swarm(4, 120);
    let (a, rest) = peers.split_first_mut().expect("four peers");
    let b = rest
        .iter()
        .find(|g| a.is_active(&g.peer_id()))
        .expect("an active peer");
    let now = Timestamp(121_000);
    let payload = Payload::new(b"hello");
    let msgs = [
        Message::Gossip {
            hops: 1,
            payload: payload.clone(),
            tree: None,
        },
        Message::IHave { have: Vec::new() },
        Message::Graft {
            ids: Vec::new(),
            trees: Vec::new(),
        },
        Message::Prune {
            id: super::MsgId::of(b"x"),
            tree: None,
        },
    ];
    for (i, msg) in msgs.into_iter().enumerate() {
        let kind = msg.kind();
        let f = frame(b, a, 1_000_000 + i as u64, msg);
        let r = a.handle(now, Input::Received { frame: f });
        if cfg!(feature = "broadcast") {
            assert_eq!(r, Ok(()), "{kind:?}");
        } else {
            assert_eq!(r, Err(GossipError::Unsupported { kind }));
        }
    }
    let r = a.handle(now, Input::Broadcast { payload });
    if cfg!(feature = "broadcast") {
        assert_eq!(r, Ok(()));
        assert_eq!(a.stats().unsupported, 0);
        assert_eq!(a.stats().received[Kind::Gossip as usize], 1);
    } else {
        assert_eq!(r, Err(GossipError::Unsupported { kind: Kind::Gossip }));
        assert_eq!(a.stats().unsupported, 4);
        assert_eq!(a.stats().received[Kind::Gossip as usize], 0);
        // Membership goes on: the link to b stays up.
        assert!(a.is_active(&b.peer_id()));
    }
}
