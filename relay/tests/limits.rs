//! Abuse limits over real sockets on 127.0.0.1: every limit closes or
//! refuses with a clear code, quickly, and leaves other clients unharmed.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mycel_core::wire::{RelayEvent, RelayRequest, relay_error};
use mycel_relay::{ByteSize, Config, Dur, close_code};
use support::{Client, Relay, WAIT, metric, room};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009_within_a_second() {
    // The default limit (1 MiB); a 2 MiB message.
    let relay = Relay::start(Config::default()).await;
    let c = Client::connect(&relay.ws_url()).await;
    let (mut tx, mut rx) = c.ws.split();
    let big = vec![7u8; 2 * 1024 * 1024];
    let t0 = Instant::now();
    // Sent from its own task: the relay stops reading it, so the send may
    // never finish.
    let sender = tokio::spawn(async move {
        let _ = tx.send(Message::Binary(big.into())).await;
        tx
    });
    let frame = match timeout(WAIT, rx.next()).await.expect("closed in time") {
        Some(Ok(Message::Close(f))) => f.expect("a close frame with a code"),
        Some(Ok(other)) => panic!("unexpected {other:?}"),
        Some(Err(e)) => panic!("no close frame, error {e}"),
        None => panic!("no close frame"),
    };
    let took = t0.elapsed();
    assert_eq!(u16::from(frame.code), close_code::TOO_LARGE);
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    sender.abort();
    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "mycel_relay_rejected_frames_total{reason=\"too_large\"}"
        ),
        1.0
    );
    // A frame exactly at the limit still passes (as a well-formed publish).
    let mut c = Client::connect(&relay.ws_url()).await;
    let mut d = Client::connect(&relay.ws_url()).await;
    let (tc, _) = c.join(room(1)).await;
    d.join(room(1)).await;
    let _ = c.recv().await; // PeerJoined
    let overhead = mycel_core::wire::encode_frame(&RelayRequest::Publish {
        room: room(1),
        payload: vec![0; 1000].into(),
    })
    .len()
        - 1000;
    // Right at the limit: the relayed Message (which adds the sender's
    // tag) would exceed it, so the relay refuses with FRAME_TOO_LARGE and
    // keeps the connection.
    let at_limit = RelayRequest::Publish {
        room: room(1),
        payload: vec![1u8; 1024 * 1024 - overhead - 2].into(),
    };
    assert!(mycel_core::wire::encode_frame(&at_limit).len() <= 1024 * 1024);
    c.send(&at_limit).await;
    match c.recv().await {
        RelayEvent::Error { code, .. } => assert_eq!(code, relay_error::FRAME_TOO_LARGE),
        other => panic!("{other:?}"),
    }
    // 64 bytes under the limit passes, and recipients can decode it with
    // the same limit.
    let payload = vec![1u8; 1024 * 1024 - overhead - 64];
    c.send(&RelayRequest::Publish {
        room: room(1),
        payload: payload.clone().into(),
    })
    .await;
    match d.recv().await {
        RelayEvent::Message {
            from, payload: p, ..
        } => {
            assert_eq!(from, tc);
            assert_eq!(p.len(), payload.len());
        }
        other => panic!("{other:?}"),
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_http_is_answered_and_closed() {
    let relay = Relay::start(Config::default()).await;
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n"[..],
        &b"HELLO THERE\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n"[..],
    ] {
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut buf = Vec::new();
        timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .expect("closed in time")
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 400"), "answer: {text:?}");
    }
    // Binary noise on /ws after a valid handshake: a protocol close.
    let mut c = Client::connect(&relay.ws_url()).await;
    let stream = c.ws.get_mut();
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = stream else {
        panic!("plain tcp expected")
    };
    // An unmasked client frame with a reserved opcode.
    tcp.write_all(&[0x8b, 0x00]).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = timeout(WAIT, tcp.read(&mut buf)).await.unwrap().unwrap();
    // The relay's close frame: 0x88, len, code 1002.
    assert!(n >= 4 && buf[0] == 0x88, "{:?}", &buf[..n]);
    assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), close_code::PROTOCOL);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_connection_is_closed() {
    let relay = Relay::start(Config {
        handshake_timeout: Dur(Duration::from_millis(400)),
        ..Config::default()
    })
    .await;
    let t0 = Instant::now();
    let mut silent = TcpStream::connect(relay.addr).await.unwrap();
    // Half a request line, then nothing (slowloris).
    let mut slow = TcpStream::connect(relay.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
    for s in [&mut silent, &mut slow] {
        let mut buf = Vec::new();
        timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or_default();
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "closed after {took:?}"
    );
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "mycel_relay_tcp_connections"),
        1.0,
        "only the metrics request"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_dropped_and_others_keep_receiving() {
    let relay = Relay::start(Config {
        send_queue_frames: 64,
        send_queue_bytes: ByteSize(1024 * 1024),
        rate_bytes: ByteSize(1 << 30),
        burst_bytes: ByteSize(1 << 30),
        rate_frames: 100_000,
        burst_frames: 100_000,
        ..Config::default()
    })
    .await;
    let url = relay.ws_url();
    let mut publisher = Client::connect(&url).await;
    let mut reader = Client::connect(&url).await;
    let mut stalled = Client::connect(&url).await;
    let r = room(9);
    publisher.join(r).await;
    reader.join(r).await;
    let (t_stalled, _) = stalled.join(r).await;
    let _ = publisher.recv().await;
    let _ = publisher.recv().await;
    let _ = reader.recv().await;
    // `stalled` now reads nothing. 64 KiB payloads fill loopback buffers
    // (a few MiB) and then its 1 MiB queue.
    const N: usize = 400;
    let payload = vec![5u8; 64 * 1024];
    let t0 = Instant::now();
    let reading = tokio::spawn(async move {
        let mut got = 0;
        let mut left = false;
        while got < N || !left {
            match reader.recv().await {
                RelayEvent::Message { .. } => got += 1,
                RelayEvent::PeerLeft { peer, .. } => {
                    assert_eq!(peer, t_stalled);
                    left = true;
                }
                other => panic!("{other:?}"),
            }
        }
        got
    });
    for i in 0..N {
        publisher
            .send(&RelayRequest::Publish {
                room: r,
                payload: payload.clone().into(),
            })
            .await;
        // Paced (~50 MB/s) so that the reading member keeps up; only the
        // stalled one falls behind.
        if i % 4 == 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let got = timeout(Duration::from_secs(20), reading)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, N, "the reading member got everything");
    println!("{N} x 64 KiB past a stalled member in {:?}", t0.elapsed());
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "mycel_relay_slow_consumers_dropped_total"), 1.0);
    // The stalled client, once it reads, finds the relay's close (4000)
    // after what its socket buffers held, or a reset.
    let end = tokio::time::Instant::now() + WAIT;
    let mut code = None;
    while tokio::time::Instant::now() < end {
        match timeout(WAIT, stalled.ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    if let Some(code) = code {
        assert_eq!(code, close_code::SLOW_CONSUMER);
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_rejects_then_closes() {
    let relay = Relay::start(Config {
        rate_frames: 10,
        burst_frames: 10,
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(&relay.ws_url()).await;
    for i in 0..100 {
        c.feed(&RelayRequest::Ping { nonce: i }).await;
    }
    c.flush().await;
    let (mut pongs, mut limited) = (0, 0);
    let code = loop {
        match timeout(WAIT, c.ws.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => {
                match mycel_core::wire::decode_frame::<RelayEvent>(&b, 1 << 20).unwrap() {
                    RelayEvent::Pong { .. } => pongs += 1,
                    RelayEvent::Error { code, .. } => {
                        assert_eq!(code, relay_error::RATE_LIMITED);
                        limited += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            other => panic!("{other:?}"),
        }
    };
    assert!((10..=12).contains(&pongs), "{pongs} pongs");
    assert_eq!(limited, 63);
    assert_eq!(code, Some(close_code::RATE_LIMITED));

    // A client within its rate is never limited.
    let mut ok = Client::connect(&relay.ws_url()).await;
    for i in 0..5 {
        ok.send(&RelayRequest::Ping { nonce: i }).await;
        assert_eq!(ok.recv().await, RelayEvent::Pong { nonce: i });
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_per_connection_and_connections_per_ip() {
    let relay = Relay::start(Config {
        max_rooms_per_conn: 2,
        max_conns_per_ip: 3,
        ..Config::default()
    })
    .await;
    let url = relay.ws_url();
    let mut a = Client::connect(&url).await;
    a.join(room(1)).await;
    a.join(room(2)).await;
    a.send(&RelayRequest::Join { room: room(3) }).await;
    match a.recv().await {
        RelayEvent::Error { code, .. } => assert_eq!(code, relay_error::TOO_MANY_ROOMS),
        other => panic!("{other:?}"),
    }
    // Leaving frees a place.
    a.send(&RelayRequest::Leave { room: room(1) }).await;
    a.join(room(3)).await;

    let b = Client::connect(&url).await;
    let c = Client::connect(&url).await;
    // A fourth TCP connection from 127.0.0.1 is refused with 503.
    match Client::try_connect(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503)
        }
        Err(_) => {} // refused before the response was read
        Ok(_) => panic!("a fourth connection was accepted"),
    }
    drop(b);
    drop(c);
    // Places come back when connections close (from another address: the
    // metrics request would otherwise need a place too).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(mut d) = Client::try_connect(&url).await {
            d.send(&RelayRequest::Ping { nonce: 3 }).await;
            assert_eq!(d.recv().await, RelayEvent::Pong { nonce: 3 });
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(a);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_pinged_then_closed() {
    let relay = Relay::start(Config {
        ping_interval: Dur(Duration::from_millis(200)),
        idle_timeout: Dur(Duration::from_millis(600)),
        ..Config::default()
    })
    .await;
    // A client that reads (tungstenite answers pings) stays up.
    let mut live = Client::connect(&relay.ws_url()).await;
    // A client that never reads never answers a ping.
    let mut mute = Client::connect(&relay.ws_url()).await;
    let t0 = Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_millis(1500) {
        if let Ok(Some(Ok(Message::Ping(_)))) =
            timeout(Duration::from_millis(100), live.ws.next()).await
        {
            pings += 1;
        }
    }
    assert!(pings >= 2, "{pings} pings");
    live.send(&RelayRequest::Ping { nonce: 1 }).await;
    assert_eq!(live.recv().await, RelayEvent::Pong { nonce: 1 });
    let frame = mute.closed(WAIT).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), close_code::IDLE_TIMEOUT);
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "mycel_relay_idle_timeouts_total"), 1.0);
    relay.stop().await;
}

/// A hand-rolled client: the handshake and masked frames written by hand,
/// to reach framing cases a WebSocket library never produces.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Handshake; `extra` is sent in the same write (pipelined frames).
    async fn connect(addr: std::net::SocketAddr, extra: &[u8]) -> Raw {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut req = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
        req.extend_from_slice(extra);
        tcp.write_all(&req).await.unwrap();
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(p) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            raw.fill().await;
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) {
        let mut b = [0u8; 4096];
        let n = timeout(WAIT, self.tcp.read(&mut b)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&b[..n]);
    }

    /// The next server frame: (opcode, payload).
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                let len = (self.buf[1] & 0x7f) as usize;
                let (len, at) = match len {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0f;
                    let p = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return (op, p);
                }
            }
            self.fill().await;
        }
    }

    async fn event(&mut self) -> RelayEvent {
        loop {
            let (op, p) = self.frame().await;
            if op == 2 {
                return mycel_core::wire::decode_frame(&p, 1 << 20).unwrap();
            }
        }
    }
}

/// A masked client frame.
fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_framing_edge_cases() {
    let relay = Relay::start(Config::default()).await;
    let join = mycel_core::wire::encode_frame(&RelayRequest::Join { room: room(4) });
    // A frame pipelined with the handshake (the relay gets it from the
    // HTTP layer's buffer), split across two writes.
    let first = masked(true, 2, &join);
    let mut c = Raw::connect(relay.addr, &first[..3]).await;
    c.tcp.write_all(&first[3..]).await.unwrap();
    assert!(matches!(c.event().await, RelayEvent::Joined { .. }));

    // A fragmented message with a ping between its fragments.
    let ping = mycel_core::wire::encode_frame(&RelayRequest::Ping { nonce: 77 });
    let mut bytes = masked(false, 2, &ping[..2]);
    bytes.extend(masked(true, 9, b"hi"));
    bytes.extend(masked(false, 0, &ping[2..4]));
    bytes.extend(masked(true, 0, &ping[4..]));
    // Written one byte at a time: every parse state sees a partial frame.
    for b in bytes {
        c.tcp.write_all(&[b]).await.unwrap();
    }
    assert_eq!(
        c.frame().await,
        (0xA, b"hi".to_vec()),
        "pong echoes the ping"
    );
    assert_eq!(c.event().await, RelayEvent::Pong { nonce: 77 });

    // A 300-byte payload (16-bit length) to a room not joined: NOT_JOINED.
    let big = mycel_core::wire::encode_frame(&RelayRequest::Publish {
        room: room(5),
        payload: vec![9; 300].into(),
    });
    c.tcp.write_all(&masked(true, 2, &big)).await.unwrap();
    match c.event().await {
        RelayEvent::Error { code, .. } => assert_eq!(code, relay_error::NOT_JOINED),
        other => panic!("{other:?}"),
    }

    // Client close: the relay echoes the code and closes the TCP stream.
    c.tcp
        .write_all(&masked(true, 8, &4321u16.to_be_bytes()))
        .await
        .unwrap();
    let (op, p) = c.frame().await;
    assert_eq!((op, &p[..2]), (8, &4321u16.to_be_bytes()[..]));
    let mut rest = Vec::new();
    timeout(WAIT, c.tcp.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();

    // Framing errors close with 1002: unmasked, continuation first.
    for bad in [vec![0x82, 0x00], masked(true, 0, b"x")] {
        let mut c = Raw::connect(relay.addr, &[]).await;
        c.tcp.write_all(&bad).await.unwrap();
        let (op, p) = c.frame().await;
        assert_eq!(op, 8);
        assert_eq!(u16::from_be_bytes([p[0], p[1]]), close_code::PROTOCOL);
    }

    // Not a WebSocket handshake on /ws.
    let (head, _) = relay.get("/ws").await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    relay.stop().await;
}
