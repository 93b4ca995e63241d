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
    DirectFrame, Envelope, EnvelopeKind, MAX_FRAME, RelayEvent, RelayRequest, SyncMessage,
    decode_frame, encode_frame,
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
    let mut h = blake3::Hasher::new_derive_key("mycel envelope signature v1");
    h.update(&(header_bytes.len() as u32).to_le_bytes());
    h.update(&header_bytes);
    h.update(&body);
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
