//! Tampering, forgery, replay, wrong keys and hostile bytes.

use automerge::ROOT;
use automerge::transaction::Transactable;
use ed25519_dalek::{Signer as _, SigningKey};
use minicbor::Encoder;
use mycel_core::crypto::{CryptoError, DocKey, DocKeys, Identity, Rng, seal_transport};
use mycel_core::doc::Replica;
use mycel_core::id::DocId;
use mycel_core::node::{
    DocAccess, Event, Input, LinkId, LinkKind, Node, NodeConfig, NodeError, Output,
};
use mycel_core::time::Timestamp;
use mycel_core::wire::{
    DirectFrame, Envelope, EnvelopeHeader, EnvelopeKind, MAX_FRAME, RelayEvent, RelayRequest,
    SyncMessage, decode_frame, encode_frame,
};
use proptest::prelude::*;

struct Fixture {
    doc: DocId,
    key: DocKey,
    keys: DocKeys,
    author: Identity,
    rng: Rng,
}

fn fixture() -> Fixture {
    let mut rng = Rng::from_seed([5; 32]);
    let doc = DocId(rng.array());
    let key = DocKey::generate(&mut rng);
    Fixture {
        keys: DocKeys::new(doc, key.clone()),
        doc,
        key,
        author: Identity::generate(&mut rng),
        rng,
    }
}

/// A real Automerge change, sealed.
fn sealed_change(f: &mut Fixture) -> Envelope {
    let mut d = mycel_core::doc::Document::new(f.author.peer_id());
    let (_, change) = d.change(|tx| tx.put(ROOT, "title", "canary")).unwrap();
    f.keys
        .seal(
            &f.author,
            EnvelopeKind::Change,
            1,
            &change.unwrap(),
            &mut f.rng,
        )
        .unwrap()
}

/// A receiving replica with a direct link, and the frame that carries
/// `bytes` as one envelope to it.
fn receiver(f: &mut Fixture) -> Replica {
    let mut r = Replica::new(
        Identity::generate(&mut f.rng),
        NodeConfig::default(),
        f.rng.array(),
    );
    r.open(Timestamp(0), f.doc, DocAccess::Full(f.key.clone()), [])
        .unwrap();
    r.handle(
        Timestamp(0),
        Input::LinkUp {
            link: LinkId(1),
            kind: LinkKind::Direct,
        },
    )
    .unwrap();
    while r.poll().is_some() {}
    r
}

fn frame_with(f: &mut Fixture, envelope_bytes: Vec<u8>) -> Vec<u8> {
    let room = f.keys.room();
    let msg = encode_frame(&SyncMessage::Envelopes {
        batch: 0,
        envelopes: vec![envelope_bytes.into()],
    });
    encode_frame(&DirectFrame {
        room,
        sealed: seal_transport(f.keys.transport(), &room, &msg, &mut f.rng).into(),
    })
}

/// Feeds one frame; returns (batches of changes applied, other events).
fn deliver(r: &mut Replica, bytes: Vec<u8>) -> (usize, Vec<Event>) {
    let _ = r.handle(
        Timestamp(0),
        Input::Received {
            link: LinkId(1),
            bytes,
        },
    );
    let (mut applied, mut events) = (0, Vec::new());
    while let Some(out) = r.poll() {
        match out {
            Output::Event(Event::Changed { .. }) => applied += 1,
            Output::Event(e) => events.push(e),
            _ => {}
        }
    }
    (applied, events)
}

#[test]
fn flipping_any_single_byte_of_an_envelope_is_rejected() {
    let mut f = fixture();
    let env = sealed_change(&mut f);
    let bytes = env.bytes().to_vec();
    let mut checked = 0;
    for i in 0..bytes.len() {
        for flip in 1..=255u8 {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            // Either it no longer parses, or it no longer verifies/opens.
            let refused = match Envelope::decode(&bad) {
                Err(_) => true,
                Ok(e) => f.keys.open(&e).is_err(),
            };
            assert!(refused, "flip {flip:#04x} at byte {i} was accepted");
            checked += 1;
        }
    }
    assert_eq!(checked, bytes.len() * 255);
}

#[test]
fn a_tampered_envelope_is_never_applied_by_a_node() {
    let mut f = fixture();
    let env = sealed_change(&mut f);
    let bytes = env.bytes().to_vec();
    // One node, every position, one flip each: nothing is ever applied.
    let mut r = receiver(&mut f);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        let frame = frame_with(&mut f, bad);
        let (applied, events) = deliver(&mut r, frame);
        assert_eq!(applied, 0, "tampered byte {i} was applied");
        assert!(
            events.iter().all(|e| matches!(e, Event::Rejected { .. })),
            "{events:?}"
        );
    }
    assert_eq!(r.node().vector(f.doc).unwrap().len(), 0);
    // The genuine one still goes through afterwards.
    let frame = frame_with(&mut f, bytes);
    assert_eq!(deliver(&mut r, frame).0, 1);
}

#[test]
fn a_replayed_envelope_is_idempotent() {
    let mut f = fixture();
    let env = sealed_change(&mut f);
    let mut r = receiver(&mut f);
    let frame = frame_with(&mut f, env.bytes().to_vec());
    assert_eq!(deliver(&mut r, frame.clone()).0, 1);
    let heads = r.doc(f.doc).unwrap().heads();
    for _ in 0..3 {
        let (applied, events) = deliver(&mut r, frame.clone());
        assert_eq!(applied, 0);
        assert!(events.is_empty(), "{events:?}");
    }
    assert_eq!(r.doc(f.doc).unwrap().heads(), heads);
    assert_eq!(r.node().stats().envelopes_duplicate, 3);
}

/// Builds an envelope claiming `claimed` as author but signed by `signer`,
/// following docs/protocol.md's signature formula exactly.
fn forged(f: &mut Fixture, claimed: &Identity, signer: &SigningKey) -> Vec<u8> {
    let genuine = f
        .keys
        .seal(claimed, EnvelopeKind::Change, 1, b"x", &mut f.rng)
        .unwrap();
    let header_bytes = genuine.header_bytes().to_vec();
    let body = genuine.body().to_vec();
    let mut h = blake3::Hasher::new_derive_key("mycel envelope leaf v1");
    h.update(&body);
    h.update(&header_bytes);
    h.update(&(header_bytes.len() as u32).to_le_bytes());
    let sig = signer.sign(h.finalize().as_bytes()).to_bytes();
    let mut e = Encoder::new(Vec::new());
    e.array(3)
        .unwrap()
        .bytes(&header_bytes)
        .unwrap()
        .bytes(&body)
        .unwrap()
        .bytes(&sig)
        .unwrap();
    e.into_writer()
}

#[test]
fn an_envelope_signed_by_another_key_than_its_author_is_rejected() {
    let mut f = fixture();
    let claimed = Identity::generate(&mut f.rng);
    let signer = SigningKey::from_bytes(&f.rng.array());
    let bytes = forged(&mut f, &claimed, &signer);
    let env = Envelope::decode(&bytes).unwrap();
    assert_eq!(env.author(), claimed.peer_id());
    assert_eq!(
        mycel_core::crypto::verify_envelope(&env),
        Err(CryptoError::BadSignature)
    );
    let mut r = receiver(&mut f);
    let frame = frame_with(&mut f, bytes);
    let (applied, events) = deliver(&mut r, frame);
    assert_eq!(applied, 0);
    assert_eq!(
        events,
        vec![Event::Rejected {
            doc: f.doc,
            reason: NodeError::Crypto(CryptoError::BadSignature)
        }]
    );
    // The same formula with the right key verifies: the test forges for real.
    let honest = SigningKey::from_bytes(&claimed.secret());
    let good = Envelope::decode(&forged(&mut f, &claimed, &honest)).unwrap();
    assert_eq!(mycel_core::crypto::verify_envelope(&good), Ok(()));
}

#[test]
fn a_wrong_doc_key_fails_with_a_clear_error() {
    let mut f = fixture();
    let env = sealed_change(&mut f);
    let mut wrong = DocKeys::new(f.doc, DocKey::from_bytes([0xee; 32]));
    // The room differs (it is derived from the key)…
    assert_eq!(wrong.open(&env), Err(CryptoError::WrongRoom));
    // …and the body does not open.
    let err = wrong.decrypt_verified(&env).unwrap_err();
    assert_eq!(err, CryptoError::WrongKey);
    assert_eq!(
        err.to_string(),
        "the document key does not decrypt this document: the link's key is wrong"
    );
    // A node holding the wrong key cannot open the sync frames at all.
    let mut node = Node::new(
        Identity::generate(&mut f.rng),
        NodeConfig::default(),
        [3; 32],
    );
    node.open_doc(
        Timestamp(0),
        f.doc,
        DocAccess::Full(DocKey::from_bytes([0xee; 32])),
        [],
    )
    .unwrap();
    node.handle(
        Timestamp(0),
        Input::LinkUp {
            link: LinkId(1),
            kind: LinkKind::Direct,
        },
    )
    .unwrap();
    let frame = frame_with(&mut f, env.bytes().to_vec());
    // Frames of the right room are ignored (the wrong key is another room)…
    assert_eq!(
        node.handle(
            Timestamp(0),
            Input::Received {
                link: LinkId(1),
                bytes: frame
            }
        ),
        Ok(())
    );
    // …and a frame in its own room sealed with another key is an error.
    let wrong_room = DocKeys::new(f.doc, DocKey::from_bytes([0xee; 32])).room();
    let bogus = encode_frame(&DirectFrame {
        room: wrong_room,
        sealed: seal_transport(f.keys.transport(), &wrong_room, b"x", &mut f.rng).into(),
    });
    let err = node
        .handle(
            Timestamp(0),
            Input::Received {
                link: LinkId(1),
                bytes: bogus,
            },
        )
        .unwrap_err();
    assert_eq!(err, NodeError::Crypto(CryptoError::TransportOpen));
    assert!(err.to_string().contains("could not be opened"));
}

#[test]
fn every_truncation_of_valid_frames_is_an_error_not_a_panic() {
    let mut f = fixture();
    let env = sealed_change(&mut f);
    let frames = [
        env.bytes().to_vec(),
        encode_frame(&RelayRequest::Publish {
            room: f.keys.room(),
            payload: vec![1; 40].into(),
        }),
        encode_frame(&RelayEvent::Joined {
            room: f.keys.room(),
            you: mycel_core::wire::PeerTag(1),
            peers: vec![mycel_core::wire::PeerTag(2)],
        }),
        frame_with(&mut f, env.bytes().to_vec()),
    ];
    for frame in frames {
        for cut in 0..frame.len() {
            let part = &frame[..cut];
            assert!(Envelope::decode(part).is_err());
            assert!(decode_frame::<RelayRequest>(part, MAX_FRAME).is_err());
            assert!(decode_frame::<RelayEvent>(part, MAX_FRAME).is_err());
            assert!(decode_frame::<DirectFrame>(part, MAX_FRAME).is_err());
            assert!(decode_frame::<SyncMessage>(part, MAX_FRAME).is_err());
        }
    }
}

// ---- batches signed once over a Merkle root ---------------------------

/// A batch of `n` small changes by the fixture's author from `first_seq`.
fn sealed_batch(f: &mut Fixture, first_seq: u64, n: usize, tag: u8) -> Vec<Envelope> {
    let plains: Vec<Vec<u8>> = (0..n).map(|i| vec![tag, i as u8, 0x5a]).collect();
    f.keys
        .seal_batch(
            &f.author,
            EnvelopeKind::Change,
            first_seq,
            &plains,
            &mut f.rng,
        )
        .unwrap()
}

/// `[header, body, signature, proof]` from parts, as the core frames it.
fn framed(parts: &[&[u8]]) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.array(parts.len() as u64).unwrap();
    for p in parts {
        e.bytes(p).unwrap();
    }
    e.into_writer()
}

fn parts(e: &Envelope) -> [&[u8]; 4] {
    [e.header_bytes(), e.body(), e.signature(), e.proof()]
}

/// Refused: does not decode, or does not verify and open.
fn refused(keys: &mut DocKeys, bytes: &[u8]) -> bool {
    match Envelope::decode(bytes) {
        Err(_) => true,
        Ok(e) => keys.open(&e).is_err(),
    }
}

#[test]
fn flipping_any_byte_of_a_batch_envelope_is_rejected_even_with_its_root_cached() {
    let mut f = fixture();
    // 5 leaves: leaf 4 is promoted past a level, so its proof is shorter.
    let batch = sealed_batch(&mut f, 1, 5, 1);
    let mut opener = DocKeys::new(f.doc, f.key.clone());
    for e in &batch {
        opener.open(e).unwrap();
    }
    let mut checked = 0;
    for e in [&batch[1], &batch[4]] {
        let bytes = e.bytes().to_vec();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    refused(&mut opener, &bad),
                    "bit {bit} of byte {i} of seq {} was accepted",
                    e.seq()
                );
                checked += 1;
            }
        }
        // The genuine one still opens from the cache.
        assert!(!refused(&mut opener, &bytes));
    }
    assert_eq!(checked, (batch[1].len() + batch[4].len()) * 8);
}

#[test]
fn a_proof_from_another_position_or_batch_is_rejected() {
    let mut f = fixture();
    let a = sealed_batch(&mut f, 1, 4, 1);
    let b = sealed_batch(&mut f, 5, 4, 2);
    let mut opener = DocKeys::new(f.doc, f.key.clone());
    // Both batches' roots verified and cached first: the cache must not
    // vouch for a root the envelope's own leaf and proof do not lead to.
    for e in a.iter().chain(&b) {
        opener.open(e).unwrap();
    }
    let [ah, ab, asig, ap] = parts(&a[1]);
    let [_, _, bsig, bp] = parts(&b[1]);
    let [_, _, _, a2p] = parts(&a[2]);
    let grafts: Vec<(&str, Vec<u8>)> = vec![
        ("another batch's proof", framed(&[ah, ab, asig, bp])),
        (
            "another batch's proof and signature",
            framed(&[ah, ab, bsig, bp]),
        ),
        ("another batch's signature", framed(&[ah, ab, bsig, ap])),
        ("another leaf's proof", framed(&[ah, ab, asig, a2p])),
        ("no proof (as if sealed alone)", framed(&[ah, ab, asig])),
    ];
    for (what, bytes) in grafts {
        assert!(refused(&mut opener, &bytes), "{what} was accepted");
        if let Ok(e) = Envelope::decode(&bytes) {
            assert_eq!(
                mycel_core::crypto::verify_envelope(&e),
                Err(CryptoError::BadSignature),
                "{what}"
            );
        }
    }
    // Flipped direction bits: the same siblings on the other sides.
    let mut flipped = ap.to_vec();
    flipped[0] ^= 0b11;
    assert!(refused(&mut opener, &framed(&[ah, ab, asig, &flipped])));
}

#[test]
fn swapped_headers_within_a_batch_are_rejected() {
    let mut f = fixture();
    let a = sealed_batch(&mut f, 1, 4, 1);
    let mut opener = DocKeys::new(f.doc, f.key.clone());
    for e in &a {
        opener.open(e).unwrap();
    }
    for (i, j) in [(0, 1), (1, 0), (2, 3), (0, 3)] {
        let [_, bi, si, pi] = parts(&a[i]);
        let [hj, _, _, pj] = parts(&a[j]);
        assert!(refused(&mut opener, &framed(&[hj, bi, si, pi])));
        assert!(refused(&mut opener, &framed(&[hj, bi, si, pj])));
    }
}

#[test]
fn a_batch_envelope_under_another_doc_or_author_is_rejected() {
    let mut f = fixture();
    let a = sealed_batch(&mut f, 1, 4, 1);
    // Another document (another room): refused before any signature check.
    let mut other_doc = DocKeys::new(DocId([9; 16]), f.key.clone());
    assert_eq!(other_doc.open(&a[0]), Err(CryptoError::WrongRoom));
    let mut opener = DocKeys::new(f.doc, f.key.clone());
    for e in &a {
        opener.open(e).unwrap();
    }
    // Another author: a key holder re-encrypts the change under a header
    // naming someone else and keeps the batch's signature and proof.
    let other = Identity::generate(&mut f.rng);
    let plain = opener.open(&a[2]).unwrap();
    let mut header = a[2].header().clone();
    header.author = other.peer_id();
    let mut helper = DocKeys::new(f.doc, f.key.clone());
    let resealed = helper
        .seal(&other, EnvelopeKind::Change, a[2].seq(), &plain, &mut f.rng)
        .unwrap();
    let header_bytes: Vec<u8> = EnvelopeHeader {
        nonce: resealed.header().nonce,
        ..header
    }
    .to_bytes();
    assert_eq!(header_bytes, resealed.header_bytes());
    let [_, _, sig, proof] = parts(&a[2]);
    let relabeled = framed(&[&header_bytes, resealed.body(), sig, proof]);
    // It decrypts (the body is genuine for that header)…
    let e = Envelope::decode(&relabeled).unwrap();
    assert_eq!(opener.decrypt_verified(&e).unwrap(), plain);
    // …but no signature of the named author covers it.
    assert_eq!(opener.open(&e), Err(CryptoError::BadSignature));
    // Replayed in a node of another document: never applied.
    let mut f2 = fixture();
    f2.doc = DocId([9; 16]);
    f2.keys = DocKeys::new(f2.doc, f2.key.clone());
    let mut r = receiver(&mut f2);
    let frame = frame_with(&mut f2, a[0].bytes().to_vec());
    assert_eq!(deliver(&mut r, frame).0, 0);
}

/// A node with the fixture's document open and one direct link; returns
/// it and the node's outputs of interest after each delivery.
fn bare_node(f: &mut Fixture) -> Node {
    let mut node = Node::new(
        Identity::generate(&mut f.rng),
        NodeConfig::default(),
        f.rng.array(),
    );
    node.open_doc(Timestamp(0), f.doc, DocAccess::Full(f.key.clone()), [])
        .unwrap();
    node.handle(
        Timestamp(0),
        Input::LinkUp {
            link: LinkId(1),
            kind: LinkKind::Direct,
        },
    )
    .unwrap();
    while node.poll().is_some() {}
    node
}

/// Delivers envelopes in one frame; returns (changes applied, events).
fn deliver_node(f: &mut Fixture, node: &mut Node, envs: &[Vec<u8>]) -> (usize, Vec<Event>) {
    let room = f.keys.room();
    let msg = encode_frame(&SyncMessage::Envelopes {
        batch: 0,
        envelopes: envs.iter().map(|e| e.clone().into()).collect(),
    });
    let frame = encode_frame(&DirectFrame {
        room,
        sealed: seal_transport(f.keys.transport(), &room, &msg, &mut f.rng).into(),
    });
    let _ = node.handle(
        Timestamp(0),
        Input::Received {
            link: LinkId(1),
            bytes: frame,
        },
    );
    let (mut applied, mut events) = (0, Vec::new());
    while let Some(out) = node.poll() {
        match out {
            Output::Apply { changes, .. } => applied += changes.len(),
            Output::Persist { doc, batch, .. } => {
                node.handle(Timestamp(0), Input::Persisted { doc, batch })
                    .unwrap();
            }
            Output::Event(e) => events.push(e),
            _ => {}
        }
    }
    (applied, events)
}

#[test]
fn a_node_applies_batches_and_still_detects_equivocation() {
    let mut f = fixture();
    let mut node = bare_node(&mut f);
    let first = sealed_batch(&mut f, 1, 6, 1);
    // A damaged signature before the genuine batch: refused, not remembered.
    let mut bad = first[0].bytes().to_vec();
    let at = bad.len() - first[0].proof().len() - 2 - 64;
    bad[at] ^= 1;
    let (applied, events) = deliver_node(&mut f, &mut node, std::slice::from_ref(&bad));
    assert_eq!(applied, 0);
    assert_eq!(
        events,
        vec![Event::Rejected {
            doc: f.doc,
            reason: NodeError::Crypto(CryptoError::BadSignature)
        }]
    );
    let bytes: Vec<Vec<u8>> = first.iter().map(|e| e.bytes().to_vec()).collect();
    let (applied, events) = deliver_node(&mut f, &mut node, &bytes);
    assert_eq!(applied, 6);
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(node.vector(f.doc).unwrap().get(&f.author.peer_id()), 6);
    // The damaged copy again, with the root now cached: still refused.
    let (applied, events) = deliver_node(&mut f, &mut node, &[bad]);
    assert_eq!(applied, 0);
    assert!(matches!(events[..], [Event::Rejected { .. }]), "{events:?}");
    // Replayed: idempotent.
    let (applied, events) = deliver_node(&mut f, &mut node, &bytes);
    assert_eq!((applied, events.len()), (0, 0));
    // The author signs other content for seqs 3..=5, in a batch and alone:
    // each is an equivocation; the first envelopes are kept.
    let mut again = sealed_batch(&mut f, 3, 2, 2);
    again.push(
        f.keys
            .seal(&f.author, EnvelopeKind::Change, 5, b"other", &mut f.rng)
            .unwrap(),
    );
    let bytes2: Vec<Vec<u8>> = again.iter().map(|e| e.bytes().to_vec()).collect();
    let (applied, events) = deliver_node(&mut f, &mut node, &bytes2);
    assert_eq!(applied, 0);
    let author = f.author.peer_id();
    assert_eq!(
        events,
        (3..=5)
            .map(|seq| Event::Equivocation {
                doc: f.doc,
                author,
                seq
            })
            .collect::<Vec<_>>()
    );
    let held: Vec<_> = node.log(f.doc).unwrap().iter().map(|e| e.id()).collect();
    assert_eq!(held, first.iter().map(|e| e.id()).collect::<Vec<_>>());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random bytes never panic a decoder or a node.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
        let _ = decode_frame::<RelayRequest>(&bytes, MAX_FRAME);
        let _ = decode_frame::<RelayEvent>(&bytes, MAX_FRAME);
        let _ = decode_frame::<DirectFrame>(&bytes, MAX_FRAME);
        let _ = decode_frame::<SyncMessage>(&bytes, MAX_FRAME);
        let mut node = Node::new(Identity::from_secret([1; 32]), NodeConfig::default(), [2; 32]);
        node.open_doc(Timestamp(0), DocId([1; 16]), DocAccess::Full(DocKey::from_bytes([2; 32])), []).unwrap();
        for (link, kind) in [(LinkId(1), LinkKind::Relay), (LinkId(2), LinkKind::Direct)] {
            node.handle(Timestamp(0), Input::LinkUp { link, kind }).unwrap();
            let _ = node.handle(Timestamp(0), Input::Received { link, bytes: bytes.clone() });
        }
        // Valid CBOR shape with random contents: a random relay message
        // wrapping random bytes in a real room.
        let room = DocKeys::new(DocId([1; 16]), DocKey::from_bytes([2; 32])).room();
        let msg = encode_frame(&RelayEvent::Message { room, from: mycel_core::wire::PeerTag(9), payload: bytes.clone().into() });
        let _ = node.handle(Timestamp(0), Input::Received { link: LinkId(1), bytes: msg });
        while node.poll().is_some() {}
    }
}
