//! Rooms spanning relays through NATS (`--backplane`): two and three
//! relays on 127.0.0.1 sharing one Debian `nats-server` that the test
//! starts (`cargo xtask test` installs it).

mod support;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mycel_core::id::RoomId;
use mycel_core::wire::{PeerTag, RelayEvent, RelayRequest};
use mycel_relay::Config;
use support::{Client, Relay, WAIT, metric, room};
use tokio::time::{Instant, sleep};

/// A `nats-server` on 127.0.0.1, killed when dropped.
struct Nats {
    port: u16,
    child: Option<Child>,
}

impl Nats {
    fn start() -> Nats {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = Nats { port, child: None };
        n.restart();
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        self.kill();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}): `cargo xtask test` installs it, \
                     or `apt-get install nats-server`"
                )
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn relay_on(nats: &Nats) -> Relay {
    Relay::start(Config {
        backplane: Some(nats.url()),
        ..Config::default()
    })
    .await
}

/// Waits until the relay reports its backplane connected.
async fn until_up(r: &Relay) {
    let deadline = Instant::now() + WAIT;
    while metric(&r.metrics().await, "mycel_relay_backplane_up") != 1.0 {
        assert!(Instant::now() < deadline, "backplane did not come up");
        sleep(Duration::from_millis(20)).await;
    }
}

/// Reads presence events until every tag of `want` has joined `room`.
/// Anything else arriving meanwhile is a failure.
async fn until_joined(c: &mut Client, room: RoomId, want: &[PeerTag]) {
    let mut missing: HashSet<PeerTag> = want.iter().copied().collect();
    let deadline = Instant::now() + WAIT * 2;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.try_recv(left).await {
            Some(RelayEvent::PeerJoined { room: r, peer }) if r == room => {
                missing.remove(&peer);
            }
            Some(other) => panic!("expected PeerJoined, got {other:?}"),
            None => panic!("peers {missing:?} never joined"),
        }
    }
}

/// Reads presence events until every tag of `gone` has left `room`
/// within `within`.
async fn until_left(c: &mut Client, room: RoomId, gone: &[PeerTag], within: Duration) {
    let mut missing: HashSet<PeerTag> = gone.iter().copied().collect();
    let deadline = Instant::now() + within;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.try_recv(left).await {
            Some(RelayEvent::PeerLeft { room: r, peer }) if r == room => {
                missing.remove(&peer);
            }
            Some(other) => panic!("expected PeerLeft of {missing:?}, got {other:?}"),
            None => panic!("{missing:?} did not leave within {within:?}"),
        }
    }
}

async fn publish(c: &mut Client, room: RoomId, payload: &[u8]) {
    c.send(&RelayRequest::Publish {
        room,
        payload: payload.to_vec().into(),
    })
    .await;
}

async fn expect_message(c: &mut Client, room: RoomId, from: PeerTag, payload: &[u8]) {
    match c.recv().await {
        RelayEvent::Message {
            room: r,
            from: f,
            payload: p,
        } => {
            assert_eq!((r, f), (room, from));
            assert_eq!(&p[..], payload);
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn quiet(c: &mut Client) {
    if let Some(ev) = c.try_recv(Duration::from_millis(300)).await {
        panic!("unexpected {ev:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_share_rooms_exactly_once_and_never_across_rooms() {
    let nats = Nats::start();
    let relays = [
        relay_on(&nats).await,
        relay_on(&nats).await,
        relay_on(&nats).await,
    ];
    for r in &relays {
        until_up(r).await;
    }
    let (x, y) = (room(1), room(2));
    // a, b, c in room x on relays 0, 1, 2; d in room y on relay 1.
    let mut a = Client::connect(&relays[0].ws_url()).await;
    let mut b = Client::connect(&relays[1].ws_url()).await;
    let mut c = Client::connect(&relays[2].ws_url()).await;
    let mut d = Client::connect(&relays[1].ws_url()).await;
    let (ta, _) = a.join(x).await;
    let (tb, _) = b.join(x).await;
    let (tc, _) = c.join(x).await;
    let (td, _) = d.join(y).await;
    until_joined(&mut a, x, &[tb, tc]).await;
    until_joined(&mut b, x, &[ta, tc]).await;
    until_joined(&mut c, x, &[ta, tb]).await;
    // A later joiner is told about members on other relays at once.
    let mut e = Client::connect(&relays[2].ws_url()).await;
    let (te, peers) = e.join(x).await;
    let peers: HashSet<PeerTag> = peers.into_iter().collect();
    assert_eq!(peers, HashSet::from([ta, tb, tc]));
    for cl in [&mut a, &mut b, &mut c] {
        until_joined(cl, x, &[te]).await;
    }

    // A publish reaches every other member once, on every relay.
    publish(&mut a, x, b"from a").await;
    for cl in [&mut b, &mut c, &mut e] {
        expect_message(cl, x, ta, b"from a").await;
    }
    // A directed send crosses relays to its target only.
    b.send(&RelayRequest::Send {
        room: x,
        to: tc,
        payload: b"b to c".to_vec().into(),
    })
    .await;
    expect_message(&mut c, x, tb, b"b to c").await;
    for cl in [&mut a, &mut b, &mut d, &mut e] {
        quiet(cl).await;
    }

    // Many publishes from every relay: each member gets each message of
    // its own room exactly once; d (room y) none of them.
    const EACH: usize = 200;
    for i in 0..EACH {
        for (cl, name) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
            cl.feed(&RelayRequest::Publish {
                room: x,
                payload: format!("{name}{i}").into_bytes().into(),
            })
            .await;
        }
        d.feed(&RelayRequest::Publish {
            room: y,
            payload: format!("d{i}").into_bytes().into(),
        })
        .await;
    }
    for cl in [&mut a, &mut b, &mut c, &mut d] {
        cl.flush().await;
    }
    let senders = HashMap::from([(ta, "a"), (tb, "b"), (tc, "c")]);
    for (cl, me, others) in [
        (&mut a, ta, 2 * EACH),
        (&mut b, tb, 2 * EACH),
        (&mut c, tc, 2 * EACH),
        (&mut e, te, 3 * EACH),
    ] {
        let mut seen = HashSet::new();
        for _ in 0..others {
            match cl.recv().await {
                RelayEvent::Message {
                    room: r,
                    from,
                    payload,
                } => {
                    assert_eq!(r, x, "a message of another room");
                    assert_ne!(from, me, "a member got its own message back");
                    let text = String::from_utf8(payload.to_vec()).unwrap();
                    assert!(text.starts_with(senders[&from]), "{text} from {from:?}");
                    assert!(seen.insert(text.clone()), "{text} delivered twice");
                }
                other => panic!("expected a message, got {other:?}"),
            }
        }
        quiet(cl).await;
    }
    // d is alone in room y: it hears nothing at all.
    quiet(&mut d).await;
    let _ = td;

    // Presence spans relays: an abrupt disconnect on relay 2 is seen on 0.
    drop(c);
    until_left(&mut a, x, &[tc], WAIT).await;
    until_left(&mut b, x, &[tc], WAIT).await;
    for r in relays {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_going_away_degrades_and_its_return_resumes() {
    let mut nats = Nats::start();
    let (r1, r2) = (relay_on(&nats).await, relay_on(&nats).await);
    until_up(&r1).await;
    until_up(&r2).await;
    let x = room(3);
    let mut a = Client::connect(&r1.ws_url()).await;
    let mut a2 = Client::connect(&r1.ws_url()).await;
    let mut b = Client::connect(&r2.ws_url()).await;
    let (ta, _) = a.join(x).await;
    let (ta2, _) = a2.join(x).await;
    let (tb, _) = b.join(x).await;
    until_joined(&mut a, x, &[ta2, tb]).await;
    until_joined(&mut a2, x, &[tb]).await;
    until_joined(&mut b, x, &[ta, ta2]).await;
    let (head, body) = r1.get("/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"));
    assert_eq!(body, b"ok\n");

    nats.kill();
    let deadline = Instant::now() + WAIT;
    loop {
        let (head, body) = r1.get("/healthz").await;
        if body.starts_with(b"degraded") {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            break;
        }
        assert!(Instant::now() < deadline, "health never said degraded");
        sleep(Duration::from_millis(50)).await;
    }
    let m = r1.metrics().await;
    assert_eq!(metric(&m, "mycel_relay_backplane_up"), 0.0);
    assert!(metric(&m, "mycel_relay_backplane_disconnects_total") >= 1.0);
    // The other relay's member expires; the room works on this relay.
    until_left(&mut a, x, &[tb], Duration::from_secs(10)).await;
    until_left(&mut a2, x, &[tb], Duration::from_secs(10)).await;
    until_left(&mut b, x, &[ta, ta2], Duration::from_secs(10)).await;
    publish(&mut a, x, b"local only").await;
    expect_message(&mut a2, x, ta, b"local only").await;

    nats.restart();
    until_up(&r1).await;
    until_up(&r2).await;
    assert_eq!(r1.get("/healthz").await.1, b"ok\n");
    // Rosters are exchanged again: presence and delivery resume.
    until_joined(&mut a, x, &[tb]).await;
    until_joined(&mut a2, x, &[tb]).await;
    until_joined(&mut b, x, &[ta, ta2]).await;
    publish(&mut b, x, b"back").await;
    expect_message(&mut a, x, tb, b"back").await;
    expect_message(&mut a2, x, tb, b"back").await;
    quiet(&mut b).await;
    r1.stop().await;
    r2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_expires_and_its_clients_fail_over() {
    let nats = Nats::start();
    let r1 = relay_on(&nats).await;
    let r3 = relay_on(&nats).await;
    until_up(&r1).await;
    until_up(&r3).await;
    // Relay 2 is a process of its own, so that it can die by SIGKILL.
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut r2 = Command::new(env!("CARGO_BIN_EXE_mycel-relay"))
        .env("MYCEL_RELAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("MYCEL_RELAY_BACKPLANE", nats.url())
        .env("MYCEL_RELAY_LOG", "warn")
        .spawn()
        .expect("start mycel-relay");
    let r2_url = format!("ws://127.0.0.1:{port}/ws");
    let deadline = Instant::now() + WAIT;
    let mut b = loop {
        match Client::try_connect(&r2_url).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("relay 2 did not start: {e}"),
        }
    };
    let x = room(4);
    let mut a = Client::connect(&r1.ws_url()).await;
    let (ta, _) = a.join(x).await;
    // Relay 2's backplane connects in the background: join until the
    // member on relay 1 is seen.
    let (tb, _) = b.join(x).await;
    until_joined(&mut a, x, &[tb]).await;
    until_joined(&mut b, x, &[ta]).await;

    r2.kill().expect("kill relay 2");
    let _ = r2.wait();
    let killed = Instant::now();
    until_left(&mut a, x, &[tb], Duration::from_secs(10)).await;
    eprintln!(
        "relay 2's member expired {:?} after the kill",
        killed.elapsed()
    );

    // b fails over to relay 3, joins again, and talks to a.
    drop(b);
    let mut b = Client::connect(&r3.ws_url()).await;
    let (tb2, peers) = b.join(x).await;
    if !peers.contains(&ta) {
        until_joined(&mut b, x, &[ta]).await;
    }
    until_joined(&mut a, x, &[tb2]).await;
    publish(&mut b, x, b"failed over").await;
    expect_message(&mut a, x, tb2, b"failed over").await;
    r1.stop().await;
    r3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_backplane_url_is_refused_with_a_clear_error() {
    let listener = mycel_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let err = mycel_relay::serve(
        Config {
            backplane: Some("http://127.0.0.1:1".into()),
            ..Config::default()
        },
        listener,
        async {},
    )
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("nats://"), "{err}");
}
