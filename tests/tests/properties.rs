//! Property tests: convergence under random faults, reproducibility from a
//! seed, and order-independence of delivery.

use automerge::ROOT;
use automerge::transaction::Transactable;
use mycel_core::crypto::{DocKey, DocKeys, Identity, Rng, seal_transport};
use mycel_core::doc::Replica;
use mycel_core::id::DocId;
use mycel_core::node::{DocAccess, Input, LinkId, LinkKind, NodeConfig, Output};
use mycel_core::time::Timestamp;
use mycel_core::wire::{DirectFrame, Envelope, SyncMessage, encode_frame};
use mycel_tests::dump::dump;
use mycel_tests::sim::{SimConfig, Topology, run};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every run converges to identical heads and contents, whatever the
    /// faults.
    #[test]
    fn every_run_converges(
        seed in any::<u64>(),
        relay in any::<bool>(),
        nodes in 2usize..7,
        loss in 0.0f64..0.3,
        duplicate in 0.0f64..0.2,
        max_delay in 0u64..2_000,
        crashes in 0usize..4,
        partitions in 0usize..3,
    ) {
        let cfg = SimConfig {
            nodes,
            topology: if relay { Topology::Relay } else { Topology::Mesh },
            edits: 40,
            loss,
            duplicate,
            delay_ms: (0, max_delay),
            crashes,
            partitions,
            ..SimConfig::default()
        };
        let r = run(cfg, seed);
        prop_assert!(r.converged, "no convergence: {:?}", r.vectors);
        prop_assert!(r.heads.windows(2).all(|w| w[0] == w[1]));
        prop_assert!(r.contents.windows(2).all(|w| w[0] == w[1]), "{:?}", r.contents);
        prop_assert_eq!(r.equivocations, 0);
    }
}

#[test]
fn a_run_is_reproducible_from_its_seed() {
    let cfg = SimConfig {
        topology: Topology::Relay,
        ..SimConfig::default()
    };
    let a = run(cfg.clone(), 77);
    let b = run(cfg.clone(), 77);
    let c = run(cfg, 78);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.contents, b.contents);
    assert_eq!(a.messages, b.messages);
    assert_ne!(a.trace, c.trace, "another seed is another run");
}

/// The frame a peer sends on a direct link to deliver one envelope.
fn direct_frame(doc: DocId, key: &DocKey, env: &Envelope, rng: &mut Rng) -> Vec<u8> {
    let keys = DocKeys::new(doc, key.clone());
    let room = keys.room();
    let msg = encode_frame(&SyncMessage::Envelopes {
        batch: 0,
        envelopes: vec![env.bytes().to_vec().into()],
    });
    encode_frame(&DirectFrame {
        room,
        sealed: seal_transport(keys.transport(), &room, &msg, rng).into(),
    })
}

/// Eight envelopes from three authors, with causal dependencies between
/// authors.
fn eight_envelopes() -> (DocId, DocKey, Vec<Envelope>) {
    let mut rng = Rng::from_seed([42; 32]);
    let doc = DocId(rng.array());
    let key = DocKey::generate(&mut rng);
    let link = LinkId(1);
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| {
            let mut r = Replica::new(
                Identity::generate(&mut rng),
                NodeConfig::default(),
                rng.array(),
            );
            r.open(Timestamp(0), doc, DocAccess::Full(key.clone()), [])
                .unwrap();
            r.handle(
                Timestamp(0),
                Input::LinkUp {
                    link,
                    kind: LinkKind::Direct,
                },
            )
            .unwrap();
            r
        })
        .collect();
    let mut envelopes: Vec<Envelope> = Vec::new();
    // (author, whether it first receives everything sent so far, which
    // makes its change depend on other authors' changes)
    let plan = [
        (0, false),
        (1, false),
        (0, false),
        (2, true),
        (1, true),
        (2, false),
        (0, true),
        (1, false),
    ];
    for (step, (author, catch_up)) in plan.into_iter().enumerate() {
        let r = &mut replicas[author];
        let me = r.node().peer_id();
        if catch_up {
            for e in envelopes.iter().filter(|e| e.author() != me) {
                let bytes = direct_frame(doc, &key, e, &mut rng);
                r.handle(Timestamp(0), Input::Received { link, bytes })
                    .unwrap();
            }
        }
        r.change(Timestamp(0), doc, |tx| {
            tx.put(ROOT, format!("k{}", step % 3), step as i64)?;
            tx.put(ROOT, format!("by{author}"), step as i64)?;
            Ok(())
        })
        .unwrap();
        while let Some(out) = r.poll() {
            if let Output::Persist { records, .. } = out {
                envelopes.extend(records.into_iter().filter(|e| e.author() == me));
            }
        }
    }
    assert_eq!(envelopes.len(), 8);
    (doc, key, envelopes)
}

#[test]
fn all_40320_delivery_orders_of_8_changes_from_3_authors_converge() {
    let (doc, key, envelopes) = eight_envelopes();
    let mut rng = Rng::from_seed([9; 32]);
    let frames: Vec<Vec<u8>> = envelopes
        .iter()
        .map(|e| direct_frame(doc, &key, e, &mut rng))
        .collect();
    let receiver_secret: [u8; 32] = rng.array();
    let deliver = |order: &[usize]| -> (Vec<automerge::ChangeHash>, String) {
        let mut r = Replica::new(
            Identity::from_secret(receiver_secret),
            NodeConfig::default(),
            [1; 32],
        );
        r.open(Timestamp(0), doc, DocAccess::Full(key.clone()), [])
            .unwrap();
        let link = LinkId(1);
        r.handle(
            Timestamp(0),
            Input::LinkUp {
                link,
                kind: LinkKind::Direct,
            },
        )
        .unwrap();
        for &i in order {
            r.handle(
                Timestamp(0),
                Input::Received {
                    link,
                    bytes: frames[i].clone(),
                },
            )
            .unwrap();
            while r.poll().is_some() {}
        }
        let d = r.doc(doc).unwrap();
        (d.heads(), dump(d.automerge()))
    };
    let reference = deliver(&[0, 1, 2, 3, 4, 5, 6, 7]);
    let orders = permutations(8);
    assert_eq!(orders.len(), 40_320);
    let (first, second) = orders.split_at(orders.len() / 2);
    std::thread::scope(|s| {
        for half in [first, second] {
            let deliver = &deliver;
            let reference = &reference;
            s.spawn(move || {
                for order in half {
                    assert_eq!(&deliver(order), reference, "order {order:?}");
                }
            });
        }
    });
    // The state holds every author's last write.
    assert!(reference.1.contains("\"by0\""), "{}", reference.1);
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut p: Vec<usize> = (0..n).collect();
    loop {
        out.push(p.clone());
        // Next lexicographic permutation.
        let Some(i) = (0..n - 1).rev().find(|&i| p[i] < p[i + 1]) else {
            return out;
        };
        let j = (i + 1..n).rev().find(|&j| p[j] > p[i]).unwrap_or(i + 1);
        p.swap(i, j);
        p[i + 1..].reverse();
    }
}
