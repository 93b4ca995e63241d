//! Gossip (`mycel_core::gossip`): the sealed codec against forged,
//! damaged, replayed, misdirected and oversized frames; property tests of
//! the state machine (no double delivery, TTL, expiry at exactly 2 h, view
//! bounds, partitions that heal); and the simulator at 1,000 peers.

use std::collections::{BTreeMap, VecDeque};

use mycel_core::crypto::{DocKey, Identity, Rng, room_id, seal_transport, transport_cipher};
use mycel_core::gossip::codec::{Outer, signature_digest};
use mycel_core::gossip::{
    Codec, Frame, Gossip, GossipConfig, GossipError, Have, Input, Kind, Message, MsgId, Output,
    Payload, PeerInfo, SealedGossip, SealedOutput,
};
use mycel_core::id::{DocId, PeerId, RoomId};
use mycel_core::time::Timestamp;
use mycel_core::wire::{MAX_FRAME, SyncMessage, decode_frame, encode_frame};
use mycel_tests::gossip_sim::{GossipSim, GossipSimConfig, run};
use proptest::prelude::*;

// ---- fixtures -----------------------------------------------------------

struct Swarm {
    doc: DocId,
    room: RoomId,
}

fn swarm() -> Swarm {
    let key = DocKey::from_bytes([0x01; 32]);
    let doc = DocId([0x02; 16]);
    Swarm {
        doc,
        room: room_id(&key, &doc),
    }
}

fn sealed(s: &Swarm, secret: u8, seed: u8) -> (Identity, SealedGossip) {
    let id = Identity::from_secret([secret; 32]);
    let g = SealedGossip::new(&id, &s.doc, &s.room, GossipConfig::default(), [seed; 32]);
    (id, g)
}

/// Moves sealed frames between two peers until quiet; returns every frame
/// `a` sent to `b` (for replays).
fn pump_pair(a: &mut SealedGossip, b: &mut SealedGossip, now: Timestamp) -> Vec<Vec<u8>> {
    let (pa, pb) = (a.gossip().peer_id(), b.gossip().peer_id());
    let mut a_to_b = Vec::new();
    loop {
        let mut moved = false;
        while let Some(out) = a.poll() {
            if let SealedOutput::Send { to, bytes, .. } = out {
                assert_eq!(to, pb);
                moved = true;
                a_to_b.push(bytes.clone());
                b.receive(now, &bytes).expect("a valid frame is accepted");
            }
        }
        while let Some(out) = b.poll() {
            if let SealedOutput::Send { to, bytes, .. } = out {
                assert_eq!(to, pa);
                moved = true;
                a.receive(now, &bytes).expect("a valid frame is accepted");
            }
        }
        if !moved {
            return a_to_b;
        }
    }
}

fn linked_pair() -> (Swarm, SealedGossip, SealedGossip, Vec<Vec<u8>>) {
    let s = swarm();
    let (_, mut a) = sealed(&s, 3, 1);
    let (_, mut b) = sealed(&s, 5, 2);
    let now = Timestamp(1_000);
    let pb = b.gossip().peer_id();
    a.handle(now, Input::PeerMet { peer: pb }).unwrap();
    let frames = pump_pair(&mut a, &mut b, now);
    (s, a, b, frames)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- the codec ----------------------------------------------------------

#[test]
fn two_sealed_peers_handshake_and_link() {
    let (_, a, b, frames) = linked_pair();
    assert_eq!(a.gossip().active_view(), vec![b.gossip().peer_id()]);
    assert_eq!(b.gossip().active_view(), vec![a.gossip().peer_id()]);
    // Hello, (Hello back), then Join: the handshake costs one round trip.
    assert!(frames.len() >= 2, "{}", frames.len());
    assert_eq!(b.codec().stats().opened, frames.len() as u64);
    assert_eq!(b.gossip().stats().dropped(), 0);
}

#[test]
fn a_broadcast_crosses_the_sealed_link_once() {
    let (_, mut a, mut b, _) = linked_pair();
    let now = Timestamp(2_000);
    a.handle(
        now,
        Input::Broadcast {
            payload: Payload::from(&b"presence"[..]),
        },
    )
    .unwrap();
    let mut delivered = Vec::new();
    loop {
        let mut moved = false;
        while let Some(out) = a.poll() {
            if let SealedOutput::Send { bytes, .. } = out {
                moved = true;
                b.receive(now, &bytes).unwrap();
            }
        }
        while let Some(out) = b.poll() {
            match out {
                SealedOutput::Send { bytes, .. } => {
                    moved = true;
                    a.receive(now, &bytes).unwrap();
                }
                SealedOutput::Other(Output::Deliver { payload, from, .. }) => {
                    assert_eq!(from, a.gossip().peer_id());
                    delivered.push(payload.as_bytes().to_vec());
                }
                SealedOutput::Other(_) => {}
            }
        }
        if !moved {
            break;
        }
    }
    assert_eq!(delivered, vec![b"presence".to_vec()]);
}

#[test]
fn damaged_forged_unsigned_foreign_misdirected_and_oversized_frames_are_dropped_and_counted() {
    let s = swarm();
    let (id_a, mut a) = sealed(&s, 3, 1);
    let (_, mut b) = sealed(&s, 5, 2);
    let (id_c, _) = sealed(&s, 7, 3);
    let pb = b.gossip().peer_id();
    let now = Timestamp(0);
    a.handle(now, Input::PeerMet { peer: pb }).unwrap();
    let Some(SealedOutput::Send { bytes: hello, .. }) = a.poll() else {
        panic!("a greets b first");
    };
    let mut rng = Rng::from_seed([9; 32]);
    let frame = Frame {
        from: id_a.peer_id(),
        to: pb,
        session: 1,
        seq: 1,
        echo: 0,
        msg: Message::Hello {
            info: PeerInfo {
                id: id_a.peer_id(),
                reachable: false,
                addresses: vec![],
                age_s: 0,
            },
        },
    };
    let mut refused = 0;
    let mut expect = |b: &mut SealedGossip, bytes: &[u8], want: fn(&GossipError) -> bool| {
        let r = b.receive(now, bytes);
        assert!(r.as_ref().is_err_and(want), "got {r:?}");
        refused += 1;
    };

    // Any one flipped byte: the seal does not open.
    for i in 0..hello.len() {
        let mut bad = hello.clone();
        bad[i] ^= 0x40;
        expect(&mut b, &bad, |e| *e == GossipError::Unsealed);
    }
    // Truncated.
    expect(&mut b, &hello[..hello.len() - 1], |e| {
        *e == GossipError::Unsealed
    });
    // Another swarm's key.
    let other = DocId([0x09; 16]);
    let other_room = room_id(&DocKey::from_bytes([0x08; 32]), &other);
    let mut foreign = Codec::new(&id_a, &other, &other_room);
    expect(&mut b, &foreign.seal(&frame, &mut rng), |e| {
        *e == GossipError::Unsealed
    });
    // Forged: c signs a frame claiming to be from a.
    let mut c_codec = Codec::new(&id_c, &s.doc, &s.room);
    expect(&mut b, &c_codec.seal(&frame, &mut rng), |e| {
        *e == GossipError::Forged
    });
    // Unsigned (an all-zero signature) and a signature over other bytes.
    let cipher = transport_cipher(&s.doc, &s.room);
    let signed = frame.to_bytes();
    for signature in [[0u8; 64], {
        use ed25519_dalek::Signer as _;
        ed25519_dalek::SigningKey::from_bytes(&id_a.secret())
            .sign(&signature_digest(&s.room, b"other bytes"))
            .to_bytes()
    }] {
        let plain = encode_frame(&Outer::Signed {
            signed: signed.clone().into(),
            signature,
        });
        let bytes = seal_transport(&cipher, &s.room, &plain, &mut rng);
        expect(&mut b, &bytes, |e| *e == GossipError::Forged);
    }
    // Well sealed, but not a gossip frame: a sync message under the same key.
    let sync = encode_frame(&SyncMessage::Ack { batch: 1 });
    expect(
        &mut b,
        &seal_transport(&cipher, &s.room, &sync, &mut rng),
        |e| matches!(e, GossipError::Malformed(_)),
    );
    // And a gossip frame never parses as a sync message.
    assert!(
        decode_frame::<SyncMessage>(
            &encode_frame(&Outer::Signed {
                signed: signed.clone().into(),
                signature: [0; 64]
            }),
            MAX_FRAME
        )
        .is_err()
    );
    // Misdirected: a's valid frame to c, replayed to b.
    let mut a_codec = Codec::new(&id_a, &s.doc, &s.room);
    let to_c = Frame {
        to: id_c.peer_id(),
        ..frame.clone()
    };
    expect(&mut b, &a_codec.seal(&to_c, &mut rng), |e| {
        *e == GossipError::Misdirected
    });
    // Oversized: refused before anything is parsed.
    expect(&mut b, &vec![0u8; MAX_FRAME + 1], |e| {
        matches!(e, GossipError::Oversized { .. })
    });
    // A payload over the limit, validly signed: malformed.
    let big = Frame {
        msg: Message::Gossip {
            hops: 1,
            payload: Payload::from(vec![0u8; mycel_core::gossip::message::MAX_PAYLOAD + 1]),
            tree: None,
        },
        ..frame.clone()
    };
    expect(&mut b, &a_codec.seal(&big, &mut rng), |e| {
        matches!(e, GossipError::Malformed(_))
    });
    // Too many ids in one message.
    let many = Frame {
        msg: Message::Graft {
            ids: vec![MsgId([1; 32]); mycel_core::gossip::message::MAX_IDS + 1],
            trees: Vec::new(),
        },
        ..frame.clone()
    };
    expect(&mut b, &a_codec.seal(&many, &mut rng), |e| {
        matches!(e, GossipError::Malformed(_))
    });

    let st = b.codec().stats();
    assert_eq!(
        st.unsealed + st.forged + st.malformed + st.misdirected + st.oversized,
        refused
    );
    // Nothing was acted on: b knows nobody, sent nothing.
    assert_eq!(b.gossip().table_len(), 0);
    assert!(b.poll().is_none());
    // The genuine frame still works.
    b.receive(now, &hello).unwrap();
    assert_eq!(b.gossip().table_len(), 1);
}

#[test]
fn replayed_frames_are_refused_counted_and_change_nothing() {
    let (_, _a, mut b, frames) = linked_pair();
    while b.poll().is_some() {}
    let view = b.gossip().active_view();
    let before = b.gossip().stats().replayed;
    for f in &frames {
        assert_eq!(b.receive(Timestamp(5_000), f), Err(GossipError::Replayed));
    }
    assert_eq!(
        b.gossip().stats().replayed - before,
        frames.len() as u64,
        "every replay is counted"
    );
    assert_eq!(b.gossip().active_view(), view);
    let mut out = Vec::new();
    while let Some(o) = b.poll() {
        out.push(o);
    }
    assert!(out.is_empty(), "a replay caused {out:?}");
}

#[test]
fn frames_from_before_a_restart_are_stale() {
    let (s, _a, b, frames) = linked_pair();
    let pa = _a.gossip().peer_id();
    drop(b);
    // b restarts: same identity, new session.
    let (_, mut b2) = sealed(&s, 5, 42);
    for f in &frames {
        match b2.receive(Timestamp(9_000), f) {
            // Only an unverifiable Hello is taken (it teaches a session,
            // and is answered with this one); everything else is stale.
            Ok(()) => {}
            Err(e) => assert_eq!(e, GossipError::Stale),
        }
    }
    assert!(b2.gossip().stats().stale >= 1);
    assert!(b2.gossip().active_view().is_empty());
    let mut kinds = Vec::new();
    while let Some(o) = b2.poll() {
        match o {
            SealedOutput::Send { to, kind, .. } => {
                assert_eq!(to, pa);
                kinds.push(kind);
            }
            SealedOutput::Other(Output::Deliver { .. }) => panic!("a stale frame was delivered"),
            SealedOutput::Other(_) => {}
        }
    }
    // The answer to stale frames is a (rate-limited) Hello, nothing else.
    assert!(kinds.iter().all(|k| *k == Kind::Hello), "{kinds:?}");
    assert!(kinds.len() <= 1, "{kinds:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// No input of any shape panics the codec or the state machine.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let s = swarm();
        let (_, mut b) = sealed(&s, 5, 2);
        prop_assert!(b.receive(Timestamp(0), &bytes).is_err());
        // Random bytes sealed under the right key get past the seal only.
        let plain = seal_transport(&transport_cipher(&s.doc, &s.room), &s.room, &bytes, &mut Rng::from_seed([1; 32]));
        prop_assert!(b.receive(Timestamp(0), &plain).is_err());
    }
}

// ---- the wire vectors of docs/gossip.md ---------------------------------

fn vectors() -> BTreeMap<&'static str, Vec<u8>> {
    let s = swarm();
    let sender = Identity::from_secret([0x03; 32]);
    let receiver = Identity::from_secret([0x05; 32]);
    let frame = Frame {
        from: sender.peer_id(),
        to: receiver.peer_id(),
        session: 1,
        seq: 2,
        echo: 3,
        msg: Message::Heartbeat {
            ping: 7,
            pong: 0,
            have: vec![Have {
                id: MsgId::of(b"hello"),
                hops: 1,
            }],
        },
    };
    let mut codec = Codec::new(&sender, &s.doc, &s.room);
    let sealed = codec.seal(&frame, &mut Rng::from_seed([0x06; 32]));
    let mut v = BTreeMap::new();
    v.insert("gossip-message-id", MsgId::of(b"hello").0.to_vec());
    v.insert("gossip-frame", frame.to_bytes());
    v.insert("gossip-sealed", sealed);
    v
}

#[test]
fn docs_gossip_md_vectors_match_the_code() {
    let computed = vectors();
    for (name, bytes) in &computed {
        println!("<!-- vector {name} -->\n{}", hex(bytes));
    }
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/gossip.md"))
        .expect("docs/gossip.md");
    let mut found = 0;
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("<!-- vector ")
            .and_then(|l| l.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(lines.next(), Some("```"), "vector {name}: fence");
        let mut text = String::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            text.push_str(l.trim());
        }
        let want = computed
            .get(name)
            .unwrap_or_else(|| panic!("unknown vector {name}"));
        assert_eq!(text, hex(want), "vector {name} differs from the code");
        found += 1;
    }
    assert_eq!(found, computed.len(), "every vector is in docs/gossip.md");
    // The sealed vector opens, verifies and decodes back.
    let s = swarm();
    let receiver = Identity::from_secret([0x05; 32]);
    let mut codec = Codec::new(&receiver, &s.doc, &s.room);
    let frame = codec.open(&computed["gossip-sealed"]).unwrap();
    assert_eq!(frame.to_bytes(), computed["gossip-frame"]);
}

// ---- the state machine on a tiny instant network ------------------------

/// Plain state machines, frames delivered at once, timers honoured.
struct Net {
    nodes: Vec<Gossip>,
    index: BTreeMap<PeerId, usize>,
    wake: Vec<Option<Timestamp>>,
    sent: Vec<Frame>,
    now: Timestamp,
}

impl Net {
    fn new(configs: Vec<GossipConfig>) -> Net {
        let mut nodes = Vec::new();
        let mut index = BTreeMap::new();
        for (i, c) in configs.into_iter().enumerate() {
            let id = Identity::from_secret([i as u8 + 1; 32]).peer_id();
            index.insert(id, i);
            nodes.push(Gossip::new(id, c, [i as u8 + 100; 32]));
        }
        let n = nodes.len();
        Net {
            nodes,
            index,
            wake: vec![None; n],
            sent: Vec::new(),
            now: Timestamp(0),
        }
    }
    fn id(&self, i: usize) -> PeerId {
        self.nodes[i].peer_id()
    }
    fn input(&mut self, i: usize, input: Input) {
        let mut queue = VecDeque::from([(i, input)]);
        while let Some((i, input)) = queue.pop_front() {
            let _ = self.nodes[i].handle(self.now, input);
            while let Some(out) = self.nodes[i].poll() {
                match out {
                    Output::Send { to, frame } => {
                        self.sent.push(frame.clone());
                        if let Some(&j) = self.index.get(&to) {
                            queue.push_back((j, Input::Received { frame }));
                        }
                    }
                    Output::WakeAt(t) => self.wake[i] = Some(t),
                    _ => {}
                }
            }
        }
    }
    /// Runs timers up to `until`.
    fn run_until(&mut self, until: u64) {
        loop {
            let next = self
                .wake
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.map(|t| (t, i)))
                .min();
            match next {
                Some((t, i)) if t.0 <= until => {
                    self.now = self.now.max(t);
                    self.wake[i] = None;
                    self.input(i, Input::Tick);
                }
                _ => break,
            }
        }
        self.now = self.now.max(Timestamp(until));
    }
}

#[test]
fn addresses_are_passed_on_only_with_the_peers_opt_in() {
    let mut configs = vec![GossipConfig::default(); 8];
    configs[0].reachable = true;
    configs[0].addresses = vec!["wss://open.example/1".into()];
    // Peer 1 has addresses but did not opt in: they must never leave it.
    configs[1].reachable = false;
    configs[1].addresses = vec!["10.0.0.1:9".into()];
    let mut net = Net::new(configs);
    for i in 1..8 {
        let p = net.id(i - 1);
        net.input(i, Input::PeerMet { peer: p });
    }
    net.run_until(20 * 60_000);
    let (open, closed) = (net.id(0), net.id(1));
    let mut seen_open = false;
    for f in &net.sent {
        let infos: Vec<&PeerInfo> = match &f.msg {
            Message::Hello { info }
            | Message::Join { info }
            | Message::PeerUpdate { info }
            | Message::PeerAnnouncement { peer: info, .. } => vec![info],
            Message::PeerRequest { origin, sample, .. } => {
                std::iter::once(origin).chain(sample).collect()
            }
            Message::PeerListResponse { sample } => sample.iter().collect(),
            _ => vec![],
        };
        for info in infos {
            assert!(
                info.reachable || info.addresses.is_empty(),
                "addresses without opt-in: {info:?}"
            );
            if info.id == closed {
                assert!(info.addresses.is_empty(), "peer 1's addresses leaked");
            }
            if info.id == open && f.from != open {
                seen_open |= info.addresses == ["wss://open.example/1"];
            }
        }
    }
    assert!(seen_open, "the opted-in peer's addresses were passed on");
    // Every other peer learned peer 0's record with its address.
    let knows = (2..8)
        .filter(|i| {
            net.nodes[*i]
                .peer(&open)
                .is_some_and(|e| e.addresses() == ["wss://open.example/1"])
        })
        .count();
    assert!(knows > 0);
    // Opting out later is passed on too.
    net.input(
        0,
        Input::SetReachable {
            reachable: false,
            addresses: vec![],
        },
    );
    let neighbours = net.nodes[0].active_view();
    for p in neighbours {
        let j = net.index[&p];
        assert!(net.nodes[j].peer(&open).unwrap().addresses().is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A peer not heard from is forgotten at exactly `peer_expiry_ms` (2 h)
    /// after it was last seen: present a millisecond before, gone at, and
    /// the host is asked to wake by then.
    #[test]
    fn a_silent_peer_expires_at_exactly_two_hours(
        t0 in 0u64..36_000_000,
        later in 1u64..7_199_000,
        seed in any::<u8>(),
    ) {
        let expiry = GossipConfig::default().peer_expiry_ms;
        prop_assert_eq!(expiry, 2 * 60 * 60 * 1000);
        let me = Identity::from_secret([1; 32]).peer_id();
        let (p, q) = (PeerId([0xaa; 32]), PeerId([0xbb; 32]));
        let mut g = Gossip::new(me, GossipConfig::default(), [seed; 32]);
        let mut wakes = Vec::new();
        let drive = |g: &mut Gossip, t: u64, input: Input, wakes: &mut Vec<u64>| {
            let _ = g.handle(Timestamp(t), input);
            while let Some(o) = g.poll() {
                if let Output::WakeAt(w) = o {
                    wakes.push(w.0);
                }
            }
        };
        drive(&mut g, t0, Input::PeerMet { peer: p }, &mut wakes);
        drive(&mut g, t0 + later, Input::PeerMet { peer: q }, &mut wakes);
        // The host follows its timers (p never answers: it is offline).
        let deadline = t0 + expiry;
        let mut now = t0 + later;
        while let Some(w) = g.next_wake() {
            if w.0 >= deadline {
                break;
            }
            now = w.0.max(now);
            drive(&mut g, now, Input::Tick, &mut wakes);
        }
        drive(&mut g, deadline - 1, Input::Tick, &mut wakes);
        prop_assert!(g.peer(&p).is_some(), "gone before 2 h");
        prop_assert!(g.next_wake().is_some_and(|w| w.0 <= deadline), "no wake by the expiry");
        drive(&mut g, deadline, Input::Tick, &mut wakes);
        prop_assert!(g.peer(&p).is_none(), "still there at 2 h");
        prop_assert!(g.passive_view().iter().all(|x| *x != p));
        prop_assert!(g.peer(&q).is_some(), "a peer met later expired with it");
        prop_assert_eq!(g.stats().expired_peers, 1);
        prop_assert!(wakes.contains(&deadline));
    }

    /// Over random swarms, faults and (in sealed mode) a replaying relay:
    /// no broadcast is delivered twice, no copy exceeds the TTL, no view
    /// or table exceeds its bound, no replayed or misdirected frame is
    /// accepted.
    #[test]
    fn invariants_hold_under_random_faults(
        seed in any::<u64>(),
        peers in 4usize..40,
        loss in 0.0f64..0.2,
        churn in 0.0f64..0.3,
        ttl in 2u8..33,
        active in 2usize..7,
        passive in 2usize..12,
        sealed in any::<bool>(),
        replay in 0.0f64..0.3,
        max_latency in 1u64..400,
        own_tree_broadcasts in 0usize..3,
        origin_trees in 0usize..4,
    ) {
        let gossip = GossipConfig {
            ttl,
            own_tree_broadcasts,
            origin_trees,
            active_view: active,
            passive_view: passive,
            max_peers: active + passive + 8,
            ..GossipConfig::default()
        };
        let cfg = GossipSimConfig {
            peers,
            seed,
            loss,
            churn,
            sealed,
            replay: if sealed { replay } else { 0.0 },
            latency_ms: (1, max_latency),
            join_window_ms: 10_000,
            settle_ms: 60_000,
            warmups: 2,
            gossip,
            ..GossipSimConfig::default()
        };
        let r = run(&cfg);
        prop_assert_eq!(&r.violations, &Default::default(), "{:?}", r);
        prop_assert!(r.max_active_view <= active);
        prop_assert!(r.max_passive_view <= passive);
        prop_assert!(r.broadcast.rounds <= ttl);
        if loss == 0.0 && churn == 0.0 && ttl == 32 {
            prop_assert_eq!(r.broadcast.coverage, 1.0);
        }
    }
}

/// Two halves cut apart long enough for every cross link to fail form two
/// overlays; once the network heals, failed links are re-tried and the
/// overlays merge again: one component, and a broadcast reaches everyone.
#[test]
fn a_partition_that_heals_re_merges_the_overlay() {
    for seed in [1, 2, 3] {
        let mut sim = GossipSim::new(GossipSimConfig {
            seed,
            ..GossipSimConfig::default()
        });
        for _ in 0..60 {
            sim.spawn();
            let t = sim.now() + 500;
            sim.run_until(t);
        }
        sim.run_until(120_000);
        assert_eq!(sim.components(), 1, "seed {seed}: formed overlay");
        let sides: Vec<bool> = (0..60).map(|i| i % 2 == 1).collect();
        sim.set_partition(Some(&sides));
        sim.run_until(120_000 + 600_000);
        assert!(
            sim.components() >= 2,
            "seed {seed}: ten minutes of partition leave no cross link"
        );
        sim.set_partition(None);
        sim.run_until(720_000 + 600_000);
        assert_eq!(sim.components(), 1, "seed {seed}: overlays merged");
        let origin = sim.alive()[0];
        let id = sim.broadcast(origin);
        sim.run_until(sim.now() + 60_000);
        assert_eq!(
            sim.deliveries(&id).map_or(0, |d| d.len()),
            60,
            "seed {seed}: broadcast after the merge"
        );
        assert_eq!(sim.violations, Default::default());
    }
}

/// More frequent broadcasters than a peer keeps trees for: each origin's
/// tree is set up by its first messages, evicted trees are set up again,
/// and every message still reaches every peer exactly once; once set up,
/// an origin's messages cost about one payload frame per peer.
#[test]
fn more_origins_than_the_tree_cache_still_reach_everyone_once() {
    let mut sim = GossipSim::new(GossipSimConfig {
        seed: 21,
        gossip: GossipConfig {
            origin_trees: 3,
            ..GossipConfig::default()
        },
        ..GossipSimConfig::default()
    });
    let n = 120;
    for _ in 0..n {
        sim.spawn();
        let t = sim.now() + 200;
        sim.run_until(t);
    }
    sim.run_until(sim.now() + 120_000);
    assert_eq!(sim.components(), 1);
    let editors: Vec<u32> = sim.alive()[..8].to_vec();
    let mut ids = Vec::new();
    for round in 0..4 {
        for &e in &editors {
            ids.push((round, sim.broadcast(e)));
            let t = sim.now() + 2_000;
            sim.run_until(t);
        }
    }
    sim.run_until(sim.now() + 60_000);
    for (round, id) in &ids {
        assert_eq!(
            sim.deliveries(id).map_or(0, |d| d.len()),
            n,
            "round {round}: every peer got it"
        );
    }
    assert_eq!(sim.violations, Default::default());
    for &i in sim.alive() {
        let g = sim.gossip(i).expect("alive");
        assert!(g.origin_trees() <= 3);
    }
    // One editor alone (after a minute of quiet its first message takes
    // the shared tree, the second sets up its own): about one payload
    // frame a peer from the third on.
    let e = editors[0];
    for _ in 0..2 {
        sim.broadcast(e);
        sim.run_until(sim.now() + 2_000);
    }
    sim.start_measuring();
    let id = sim.broadcast(e);
    sim.run_until(sim.now() + 5_000);
    assert_eq!(sim.deliveries(&id).map_or(0, |d| d.len()), n);
    let gossip_frames = sim.sent_between(0, 5_000, |k| k == Kind::Gossip);
    assert!(
        gossip_frames <= (n as u64) * 5 / 4,
        "{gossip_frames} payload frames for {n} peers"
    );
}

#[test]
fn a_run_is_reproducible_from_its_seed() {
    let cfg = GossipSimConfig {
        peers: 80,
        loss: 0.05,
        churn: 0.1,
        ..GossipSimConfig::default()
    };
    let (a, b) = (run(&cfg), run(&cfg));
    assert_eq!(a.to_json(), b.to_json());
    let c = run(&GossipSimConfig { seed: 2, ..cfg });
    assert_ne!(a.frames, c.frames);
}

// ---- the simulator at 1,000 peers ---------------------------------------

#[test]
fn simulator_1000_peers_every_peer_once_along_a_tree() {
    let r = run(&GossipSimConfig {
        peers: 1000,
        seed: 11,
        baseline: true,
        ..GossipSimConfig::default()
    });
    eprintln!("{}", r.to_json());
    let b = &r.broadcast;
    assert_eq!(b.coverage, 1.0);
    assert!(b.msgs_per_peer <= 1.5, "{}", b.msgs_per_peer);
    // The measured broadcaster's own tree is rooted at it: about as deep
    // as the overlay's diameter, not the TTL.
    assert!(b.rounds <= 16, "{}", b.rounds);
    assert!(b.time_to_full_ms.is_some_and(|t| t < 10_000));
    assert_eq!(r.overlay_components, 1);
    assert!(r.max_active_view <= 5 && r.max_passive_view <= 30 && r.max_table <= 64);
    assert_eq!(r.violations, Default::default());
    let base = r.baseline.expect("baseline");
    assert!(base.coverage < 1.0 && base.msgs_per_peer > b.msgs_per_peer);
}

#[test]
fn simulator_1000_peers_loss_and_churn_reach_every_live_peer_within_two_heartbeats() {
    let r = run(&GossipSimConfig {
        peers: 1000,
        seed: 12,
        loss: 0.05,
        churn: 0.1,
        ..GossipSimConfig::default()
    });
    eprintln!("{}", r.to_json());
    let b = &r.broadcast;
    assert_eq!(b.coverage, 1.0, "{}", r.to_json());
    assert!(b.time_to_full_ms.is_some_and(|t| t <= 60_000));
    assert!(r.crashed == 100 && r.frames_lost > 0);
    assert_eq!(r.violations, Default::default());
}
