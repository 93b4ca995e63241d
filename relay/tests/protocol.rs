//! The relay protocol over real sockets on 127.0.0.1: membership,
//! presence, publish/send routing, errors, and the HTTP endpoints.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mycel_core::wire::{PeerTag, RelayEvent, RelayRequest, relay_error};
use mycel_relay::Config;
use support::{Client, Relay, WAIT, metric, room};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

fn publish(room: mycel_core::id::RoomId, payload: &[u8]) -> RelayRequest {
    RelayRequest::Publish {
        room,
        payload: payload.to_vec().into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_publish_and_send() {
    let relay = Relay::start(Config::default()).await;
    let url = relay.ws_url();
    let (r, s) = (room(1), room(2));
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    let mut c = Client::connect(&url).await;
    let mut d = Client::connect(&url).await;

    let (ta, peers) = a.join(r).await;
    assert!(peers.is_empty());
    let (tb, peers) = b.join(r).await;
    assert_eq!(peers, vec![ta]);
    assert_eq!(a.recv().await, RelayEvent::PeerJoined { room: r, peer: tb });
    let (tc, peers) = c.join(r).await;
    assert_eq!(
        peers.iter().copied().collect::<HashSet<_>>(),
        HashSet::from([ta, tb])
    );
    for x in [&mut a, &mut b] {
        assert_eq!(x.recv().await, RelayEvent::PeerJoined { room: r, peer: tc });
    }
    // Many rooms per socket; a's tag in s differs from its tag in r.
    let (ta_s, _) = a.join(s).await;
    assert_ne!(ta_s, ta);
    let (td, peers) = d.join(s).await;
    assert_eq!(peers, vec![ta_s]);
    assert_eq!(a.recv().await, RelayEvent::PeerJoined { room: s, peer: td });

    // Joining again: same tag, the current others.
    let (again, peers) = b.join(r).await;
    assert_eq!(again, tb);
    assert_eq!(
        peers.iter().copied().collect::<HashSet<_>>(),
        HashSet::from([ta, tc])
    );

    // Publish reaches every other member of r, never the sender, never s.
    a.send(&publish(r, b"hello r")).await;
    for x in [&mut b, &mut c] {
        assert_eq!(
            x.recv().await,
            RelayEvent::Message {
                room: r,
                from: ta,
                payload: b"hello r".to_vec().into()
            }
        );
    }
    assert_eq!(a.try_recv(Duration::from_millis(100)).await, None);
    assert_eq!(d.try_recv(Duration::from_millis(1)).await, None);

    // Send reaches only its target.
    b.send(&RelayRequest::Send {
        room: r,
        to: tc,
        payload: b"psst".to_vec().into(),
    })
    .await;
    assert_eq!(
        c.recv().await,
        RelayEvent::Message {
            room: r,
            from: tb,
            payload: b"psst".to_vec().into()
        }
    );
    assert_eq!(a.try_recv(Duration::from_millis(100)).await, None);
    assert_eq!(b.try_recv(Duration::from_millis(1)).await, None);

    // Send to a tag not in the room (d's tag is in s, not r).
    b.send(&RelayRequest::Send {
        room: r,
        to: td,
        payload: b"?".to_vec().into(),
    })
    .await;
    match b.recv().await {
        RelayEvent::Error { code, .. } => assert_eq!(code, relay_error::UNKNOWN_PEER),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.try_recv(Duration::from_millis(100)).await, None);

    // Frames for a room not joined.
    d.send(&publish(r, b"x")).await;
    d.send(&RelayRequest::Leave { room: r }).await;
    for _ in 0..2 {
        match d.recv().await {
            RelayEvent::Error { code, .. } => assert_eq!(code, relay_error::NOT_JOINED),
            other => panic!("{other:?}"),
        }
    }

    // Ping → Pong with the same nonce.
    d.send(&RelayRequest::Ping { nonce: 0xDEAD_BEEF }).await;
    assert_eq!(d.recv().await, RelayEvent::Pong { nonce: 0xDEAD_BEEF });

    // Leave: the others hear PeerLeft; the leaver gets no more of the room.
    c.send(&RelayRequest::Leave { room: r }).await;
    for x in [&mut a, &mut b] {
        assert_eq!(x.recv().await, RelayEvent::PeerLeft { room: r, peer: tc });
    }
    a.send(&publish(r, b"after")).await;
    assert!(matches!(b.recv().await, RelayEvent::Message { .. }));
    assert_eq!(c.try_recv(Duration::from_millis(100)).await, None);

    // Abrupt disconnect (no close frame): the others still hear PeerLeft,
    // in every room the connection was in.
    drop(a);
    assert_eq!(b.recv().await, RelayEvent::PeerLeft { room: r, peer: ta });
    assert_eq!(
        d.recv().await,
        RelayEvent::PeerLeft {
            room: s,
            peer: ta_s
        }
    );

    // Graceful close: same.
    d.ws.close(None).await.unwrap();
    let m = relay.metrics().await;
    assert!(
        metric(
            &m,
            "mycel_relay_rejected_frames_total{reason=\"not_joined\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            &m,
            "mycel_relay_rejected_frames_total{reason=\"unknown_peer\"}"
        ) >= 1.0
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_publishes_across_rooms_never_cross() {
    const CLIENTS: usize = 100;
    const ROOMS: u64 = 25;
    const PER_ROOM: usize = 50;
    let relay = Relay::start(Config {
        send_queue_frames: 4096,
        ..Config::default()
    })
    .await;
    let url = relay.ws_url();

    // Each client joins two rooms; membership decides expected deliveries.
    let mut clients = Vec::new();
    let mut members: HashMap<u64, Vec<usize>> = HashMap::new();
    for i in 0..CLIENTS {
        let mut c = Client::connect(&url).await;
        let rooms: Vec<u64> = [(i as u64) % ROOMS, (i as u64 / 4 + 13) % ROOMS]
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for &r in &rooms {
            c.send(&RelayRequest::Join { room: room(r) }).await;
            members.entry(r).or_default().push(i);
        }
        clients.push((c, rooms));
    }
    let mut publishes = 0usize;
    let mut expected = vec![0usize; CLIENTS];
    for (i, (_, rooms)) in clients.iter().enumerate() {
        for r in rooms {
            publishes += PER_ROOM;
            for &j in &members[r] {
                if j != i {
                    expected[j] += PER_ROOM;
                }
            }
        }
    }
    assert!(publishes >= 9_000, "{publishes} publishes");

    let t0 = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, (mut c, rooms)) in clients.into_iter().enumerate() {
        let want = expected[i];
        tasks.push(tokio::spawn(async move {
            let joined: HashSet<_> = rooms.iter().map(|r| room(*r)).collect();
            // Wait for our own Joined answers before sending, so every
            // member is present before the first publish.
            let mut got_joined = 0;
            let mut early = Vec::new();
            while got_joined < rooms.len() {
                match c.recv().await {
                    RelayEvent::Joined { .. } => got_joined += 1,
                    other => early.push(other),
                }
            }
            (c, rooms, joined, early, want, i)
        }));
    }
    let mut ready = Vec::new();
    for t in tasks {
        ready.push(t.await.unwrap());
    }
    let mut tasks = Vec::new();
    for (mut c, rooms, joined, early, want, i) in ready {
        tasks.push(tokio::spawn(async move {
            for seq in 0..PER_ROOM {
                for r in &rooms {
                    // The payload names its room: a cross-room delivery
                    // would show as a mismatch.
                    let mut p = r.to_le_bytes().to_vec();
                    p.extend_from_slice(&(i as u32).to_le_bytes());
                    p.extend_from_slice(&(seq as u32).to_le_bytes());
                    c.feed(&publish(room(*r), &p)).await;
                }
            }
            c.flush().await;
            let mut got = 0usize;
            let mut cross = 0usize;
            let mut per_sender: HashMap<(u64, PeerTag), u32> = HashMap::new();
            let check = |ev: RelayEvent,
                         got: &mut usize,
                         cross: &mut usize,
                         per: &mut HashMap<(u64, PeerTag), u32>| {
                if let RelayEvent::Message {
                    room: rr,
                    from,
                    payload,
                } = ev
                {
                    let named = u64::from_le_bytes(payload[..8].try_into().unwrap());
                    if !joined.contains(&rr) || rr != room(named) {
                        *cross += 1;
                    }
                    // Per-sender order is preserved.
                    let seq = u32::from_le_bytes(payload[12..16].try_into().unwrap());
                    let e = per.entry((named, from)).or_insert(0);
                    assert_eq!(*e, seq, "in order per sender");
                    *e += 1;
                    *got += 1;
                }
            };
            for ev in early {
                check(ev, &mut got, &mut cross, &mut per_sender);
            }
            while got < want {
                let ev = c.recv().await;
                check(ev, &mut got, &mut cross, &mut per_sender);
            }
            // Nothing extra arrives.
            if let Some(RelayEvent::Message { .. }) = c.try_recv(Duration::from_millis(200)).await {
                got += 1;
            }
            (got, want, cross)
        }));
    }
    let mut total = 0;
    for t in tasks {
        let (got, want, cross) = timeout(Duration::from_secs(30), t).await.unwrap().unwrap();
        assert_eq!(cross, 0, "cross-room deliveries");
        assert_eq!(got, want);
        total += got;
    }
    println!(
        "{publishes} publishes, {total} deliveries in {:?}",
        t0.elapsed()
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_errors_and_the_connection_survives() {
    let relay = Relay::start(Config::default()).await;
    let mut c = Client::connect(&relay.ws_url()).await;
    c.ws.send(Message::Binary(vec![0xff, 0x00, 0x13].into()))
        .await
        .unwrap();
    // [2, ping]: another major version.
    let mut v2 = mycel_core::wire::encode_frame(&RelayRequest::Ping { nonce: 1 });
    v2[1] = 2;
    c.ws.send(Message::Binary(v2.into())).await.unwrap();
    c.ws.send(Message::Text("hello".into())).await.unwrap();
    let codes: Vec<u16> = [c.recv().await, c.recv().await, c.recv().await]
        .into_iter()
        .map(|e| match e {
            RelayEvent::Error { code, .. } => code,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            relay_error::BAD_FRAME,
            relay_error::UNSUPPORTED_VERSION,
            relay_error::BAD_FRAME
        ]
    );
    c.send(&RelayRequest::Ping { nonce: 7 }).await;
    assert_eq!(c.recv().await, RelayEvent::Pong { nonce: 7 });
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_static_files() {
    let dir = std::env::temp_dir().join(format!("mycel-relay-www-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    for (name, body) in [
        ("index.html", "<!doctype html><title>mycel</title>"),
        ("sw.js", "self.addEventListener('fetch', () => {});"),
        ("app.webmanifest", "{}"),
        ("mycel_bg.wasm", "\0asm"),
        ("assets/index-BXcW2a1c.js", "export {};"),
    ] {
        std::fs::write(dir.join(name), body).unwrap();
    }
    let relay = Relay::start(Config {
        www: Some(dir.clone()),
        ..Config::default()
    })
    .await;

    let (head, body) = relay.get("/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok\n");

    let (head, body) = relay.get("/metrics").await;
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let text = String::from_utf8(body).unwrap();
    for name in [
        "mycel_relay_connections",
        "mycel_relay_rooms",
        "mycel_relay_frames_in_total",
        "mycel_relay_bytes_in_total",
        "mycel_relay_frames_out_total",
        "mycel_relay_bytes_out_total",
        "mycel_relay_slow_consumers_dropped_total",
        "mycel_relay_rejected_frames_total{reason=\"too_large\"}",
        "mycel_relay_rejected_frames_total{reason=\"rate_limited\"}",
    ] {
        metric(&text, name);
    }

    let cases = [
        ("/", "text/html", "no-cache"),
        ("/index.html", "text/html", "no-cache"),
        ("/sw.js", "javascript", "no-cache"),
        ("/app.webmanifest", "application/manifest+json", "no-cache"),
        ("/mycel_bg.wasm", "application/wasm", "no-cache"),
        (
            "/assets/index-BXcW2a1c.js",
            "javascript",
            "public, max-age=31536000, immutable",
        ),
    ];
    for (path, ctype, cache) in cases {
        let (head, _) = relay.get(path).await;
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        let ct = lower
            .lines()
            .find(|l| l.starts_with("content-type:"))
            .unwrap_or_default();
        assert!(ct.contains(ctype), "{path}: {head}");
        assert!(
            lower.contains("x-content-type-options: nosniff"),
            "{path}: {head}"
        );
        assert!(
            lower.contains(&format!("cache-control: {cache}")),
            "{path}: {head}"
        );
    }
    let (head, _) = relay.get("/nope.js").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (head, _) = relay.get("/../../etc/passwd").await;
    assert!(!head.starts_with("HTTP/1.1 200"), "{head}");

    // Without --www there are no static files.
    let bare = Relay::start(Config::default()).await;
    let (head, _) = bare.get("/index.html").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    bare.stop().await;
    relay.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_token() {
    let relay = Relay::start(Config {
        token: Some("s3cret".into()),
        ..Config::default()
    })
    .await;
    let url = relay.ws_url();
    match Client::try_connect(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401)
        }
        Err(e) => panic!("expected 401, got {e}"),
        Ok(_) => panic!("connected without the token"),
    }
    assert!(
        Client::try_connect(&format!("{url}?token=wrong"))
            .await
            .is_err()
    );
    let mut c = Client::connect(&format!("{url}?token=s3cret")).await;
    c.send(&RelayRequest::Ping { nonce: 1 }).await;
    assert_eq!(c.recv().await, RelayEvent::Pong { nonce: 1 });

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let (ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    drop(ws);
    assert_eq!(
        metric(
            &relay.metrics().await,
            "mycel_relay_refused_connections_total{reason=\"unauthorized\"}"
        ),
        2.0
    );
    // Static files and health stay open without a token.
    assert!(relay.get("/healthz").await.0.starts_with("HTTP/1.1 200"));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_sends_going_away() {
    let relay = Relay::start(Config::default()).await;
    let url = relay.ws_url();
    let addr = relay.addr;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = Client::connect(&url).await;
        c.join(room(i % 3)).await;
        clients.push(c);
    }
    let waits = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.closed(WAIT).await }))
        .collect::<Vec<_>>();
    let took = relay.stop().await;
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    for w in waits {
        let frame = w.await.unwrap().expect("a close frame");
        assert_eq!(u16::from(frame.code), mycel_relay::close_code::GOING_AWAY);
    }
    // Not accepting any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_stream_of_a_closed_client_ends_cleanly() {
    // A client that closes right after the handshake must not leave a
    // connection counted.
    let relay = Relay::start(Config::default()).await;
    for _ in 0..50 {
        let mut c = Client::connect(&relay.ws_url()).await;
        c.ws.close(None).await.unwrap();
        while let Some(Ok(_)) = c.ws.next().await {}
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = relay.metrics().await;
        if metric(&m, "mycel_relay_connections") == 0.0 {
            assert_eq!(metric(&m, "mycel_relay_connections_total"), 50.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop().await;
}
