//! docs/protocol.md's test vectors, recomputed from the code.
//!
//! Every `<!-- vector NAME -->` in the document is followed by a fenced
//! block of hex; this test recomputes each and compares. After an
//! intentional wire change, `cargo test -p mycel-tests --test
//! protocol_vectors -- --nocapture` prints the new values.

use std::collections::BTreeMap;

use mycel_core::crypto::{
    DocKey, DocKeys, Identity, Rng, leaf_digest, room_id, seal_transport, sign_digest,
    signal_digest, verify_envelope,
};
use mycel_core::id::{DocId, PeerId};
use mycel_core::wire::{
    DirectFrame, EnvelopeKind, PeerTag, RelayEvent, RelayRequest, SyncMessage, VersionVector,
    encode_frame, relay_error,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn vectors() -> BTreeMap<&'static str, Vec<u8>> {
    let key = DocKey::from_bytes([0x01; 32]);
    let doc = DocId([0x02; 16]);
    let room = room_id(&key, &doc);
    let author = Identity::from_secret([0x03; 32]);
    let mut keys = DocKeys::new(doc, key.clone());
    let mut rng = Rng::from_seed([0x04; 32]);
    let env = keys
        .seal(&author, EnvelopeKind::Change, 1, b"hello", &mut rng)
        .unwrap();
    let mut vector = VersionVector::default();
    vector.set(author.peer_id(), 7);
    let mut v = BTreeMap::new();
    v.insert("room-id", room.0.to_vec());
    v.insert("author-peer-id", author.peer_id().0.to_vec());
    v.insert("envelope-header", env.header_bytes().to_vec());
    v.insert("envelope", env.bytes().to_vec());
    v.insert("envelope-id", env.id().0.to_vec());
    v.insert(
        "envelope-leaf",
        leaf_digest(env.header_bytes(), env.body()).to_vec(),
    );
    // A batch of three (`a`, `b`, `c` as seqs 2-4, nonces from
    // Rng::from_seed(32 × 07)), signed once over its Merkle root.
    let mut rng = Rng::from_seed([0x07; 32]);
    let batch = keys
        .seal_batch(
            &author,
            EnvelopeKind::Change,
            2,
            &[b"a", b"b", b"c"],
            &mut rng,
        )
        .unwrap();
    v.insert("batch-root", batch[0].signed_digest().to_vec());
    v.insert("batch-envelope-0", batch[0].bytes().to_vec());
    v.insert("batch-envelope-0-id", batch[0].id().0.to_vec());
    v.insert("batch-envelope-2", batch[2].bytes().to_vec());
    v.insert("batch-envelope-2-id", batch[2].id().0.to_vec());
    v.insert("relay-join", encode_frame(&RelayRequest::Join { room }));
    v.insert(
        "relay-publish",
        encode_frame(&RelayRequest::Publish {
            room,
            payload: vec![0xaa, 0xbb].into(),
        }),
    );
    v.insert(
        "relay-send",
        encode_frame(&RelayRequest::Send {
            room,
            to: PeerTag(5),
            payload: vec![0xaa].into(),
        }),
    );
    v.insert("relay-ping", encode_frame(&RelayRequest::Ping { nonce: 7 }));
    v.insert(
        "relay-joined",
        encode_frame(&RelayEvent::Joined {
            room,
            you: PeerTag(1),
            peers: vec![PeerTag(2), PeerTag(3)],
        }),
    );
    v.insert(
        "relay-message",
        encode_frame(&RelayEvent::Message {
            room,
            from: PeerTag(2),
            payload: vec![0xaa].into(),
        }),
    );
    v.insert(
        "relay-error",
        encode_frame(&RelayEvent::Error {
            code: relay_error::FRAME_TOO_LARGE,
            message: "frame too large".into(),
        }),
    );
    v.insert(
        "sync-have",
        encode_frame(&SyncMessage::Have {
            from: PeerId([0x05; 32]),
            vector,
            pinning: false,
            meshed: false,
        }),
    );
    v.insert(
        "sync-envelopes",
        encode_frame(&SyncMessage::Envelopes {
            batch: 1,
            envelopes: vec![env.bytes().to_vec().into()],
        }),
    );
    v.insert("sync-ack", encode_frame(&SyncMessage::Ack { batch: 1 }));
    // A signal from the author to peer 05…05: incarnation 7, first message.
    let (to, seq) = (PeerId([0x05; 32]), (7u64 << 32) | 1);
    let digest = signal_digest(&room, &author.peer_id(), &to, seq, b"offer");
    v.insert("signal-digest", digest.to_vec());
    v.insert(
        "sync-signal",
        encode_frame(&SyncMessage::Signal {
            from: author.peer_id(),
            to,
            seq,
            payload: b"offer".to_vec().into(),
            signature: sign_digest(&author, &digest).to_vec().into(),
        }),
    );
    let mut rng = Rng::from_seed([0x06; 32]);
    let sealed = seal_transport(
        keys.transport(),
        &room,
        &encode_frame(&SyncMessage::Ack { batch: 1 }),
        &mut rng,
    );
    v.insert("transport-sealed-ack", sealed.clone());
    v.insert(
        "direct-frame",
        encode_frame(&DirectFrame {
            room,
            sealed: sealed.into(),
        }),
    );
    v
}

fn documented() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let text = std::fs::read_to_string(path).expect("docs/protocol.md");
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- vector ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(lines.next().map(str::trim), Some("```"), "vector {name}");
        let mut hex = String::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            hex.extend(l.chars().filter(|c| c.is_ascii_hexdigit()));
        }
        out.insert(name.to_owned(), hex);
    }
    out
}

/// Wraps hex into lines of 64 characters for the document.
fn wrapped(hex: &str) -> String {
    hex.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

fn derive(context: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(p);
    }
    *h.finalize().as_bytes()
}

/// The formulas of docs/protocol.md §3, written out with BLAKE3 and
/// Ed25519 directly, agree with what the core seals.
#[test]
fn envelope_digests_follow_the_documented_formulas() {
    let key = DocKey::from_bytes([0x01; 32]);
    let doc = DocId([0x02; 16]);
    let author = Identity::from_secret([0x03; 32]);
    let mut keys = DocKeys::new(doc, key);
    let mut rng = Rng::from_seed([0x07; 32]);
    let batch = keys
        .seal_batch(
            &author,
            EnvelopeKind::Change,
            2,
            &[b"a", b"b", b"c"],
            &mut rng,
        )
        .unwrap();
    let leaf = |e: &mycel_core::wire::Envelope| {
        let h = e.header_bytes();
        derive(
            "mycel envelope leaf v1",
            &[e.body(), h, &(h.len() as u32).to_le_bytes()],
        )
    };
    let node = |l: &[u8; 32], r: &[u8; 32]| derive("mycel envelope node v1", &[l, r]);
    let (l0, l1, l2) = (leaf(&batch[0]), leaf(&batch[1]), leaf(&batch[2]));
    let n01 = node(&l0, &l1);
    let root = node(&n01, &l2);
    assert_eq!(batch[0].signed_digest(), &root);
    // Leaf 0: siblings l1 (right), l2 (right). Leaf 2 moves up one level
    // unhashed, then has n01 on its left.
    assert_eq!(batch[0].proof(), [&[0, 0][..], &l1, &l2].concat());
    assert_eq!(batch[1].proof(), [&[1, 0][..], &l0, &l2].concat());
    assert_eq!(batch[2].proof(), [&[1, 0][..], &n01].concat());
    let vk = ed25519_dalek::VerifyingKey::from_bytes(author.peer_id().as_bytes()).unwrap();
    for e in &batch {
        assert_eq!(e.signature(), batch[0].signature());
        let sig = ed25519_dalek::Signature::from_bytes(e.signature());
        vk.verify_strict(&root, &sig).unwrap();
        assert_eq!(verify_envelope(e), Ok(()));
        let id = derive(
            "mycel envelope id v1",
            &[&leaf(e), e.signature(), e.proof()],
        );
        assert_eq!(e.id().0, id);
        // [header, body, signature, proof], shortest heads.
        assert_eq!(e.bytes()[0], 0x84);
    }
    // Sealed alone: signed over its leaf, no proof, an array of 3.
    let single = keys
        .seal(&author, EnvelopeKind::Change, 5, b"d", &mut rng)
        .unwrap();
    let sig = ed25519_dalek::Signature::from_bytes(single.signature());
    vk.verify_strict(&leaf(&single), &sig).unwrap();
    assert_eq!(
        single.id().0,
        derive(
            "mycel envelope id v1",
            &[&leaf(&single), single.signature()]
        )
    );
    assert_eq!(single.bytes()[0], 0x83);
}

#[test]
fn docs_protocol_md_test_vectors_match_the_code() {
    let computed = vectors();
    let documented = documented();
    let mut wrong = Vec::new();
    for (name, bytes) in &computed {
        let h = hex(bytes);
        if documented.get(*name) != Some(&h) {
            println!("<!-- vector {name} -->\n```\n{}\n```\n", wrapped(&h));
            wrong.push(*name);
        }
    }
    for name in documented.keys() {
        assert!(
            computed.contains_key(name.as_str()),
            "docs/protocol.md has vector {name} that no code computes"
        );
    }
    assert!(
        wrong.is_empty(),
        "vectors differ from docs/protocol.md: {wrong:?}"
    );
}

/// The signal digest of docs/protocol.md §5.2, written out with BLAKE3.
#[test]
fn signal_digest_follows_the_documented_formula() {
    let room = room_id(&DocKey::from_bytes([0x01; 32]), &DocId([0x02; 16]));
    let (from, to) = (PeerId([0x03; 32]), PeerId([0x05; 32]));
    let seq: u64 = (7 << 32) | 1;
    assert_eq!(
        signal_digest(&room, &from, &to, seq, b"offer"),
        derive(
            "mycel signal sig v1",
            &[&room.0, &from.0, &to.0, &seq.to_le_bytes(), b"offer"],
        )
    );
}
