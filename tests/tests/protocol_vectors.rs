//! docs/protocol.md's test vectors, recomputed from the code.
//!
//! Every `<!-- vector NAME -->` in the document is followed by a fenced
//! block of hex; this test recomputes each and compares. After an
//! intentional wire change, `cargo test -p mycel-tests --test
//! protocol_vectors -- --nocapture` prints the new values.

use std::collections::BTreeMap;

use mycel_core::crypto::{DocKey, DocKeys, Identity, Rng, room_id, seal_transport};
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
