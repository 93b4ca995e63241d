//! Many connections and restarts, over real sockets on 127.0.0.1.

mod support;

use std::time::{Duration, Instant};

use mycel_core::wire::{RelayEvent, RelayRequest};
use mycel_relay::Config;
use support::{Client, Reconnecting, Relay, WAIT, metric, raise_nofile, room};
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections() {
    const N: usize = 5_000;
    // Both ends live in this process: two descriptors per connection.
    let limit = raise_nofile(2 * N as u64 + 500);
    assert!(
        limit >= 2 * N as u64 + 200,
        "RLIMIT_NOFILE {limit} is too low"
    );
    let relay = Relay::start(Config {
        max_conns_per_ip: 0,
        ..Config::default()
    })
    .await;
    let url = relay.ws_url();
    let t0 = Instant::now();
    let mut clients = Vec::with_capacity(N);
    // Connect in concurrent batches, each joining its own room.
    for batch in 0..N / 250 {
        let mut tasks = Vec::new();
        for i in 0..250 {
            let url = url.clone();
            let n = (batch * 250 + i) as u64;
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(&url).await;
                c.join(room(100_000 + n)).await;
                c
            }));
        }
        for t in tasks {
            clients.push(timeout(WAIT, t).await.unwrap().unwrap());
        }
    }
    let connected = t0.elapsed();
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "mycel_relay_connections"), N as f64);
    assert_eq!(metric(&m, "mycel_relay_rooms"), N as f64);

    // Still responsive while holding them: a fresh pair exchanges a message.
    let mut a = Client::connect(&url).await;
    let mut b = Client::connect(&url).await;
    let (ta, _) = a.join(room(1)).await;
    b.join(room(1)).await;
    a.send(&RelayRequest::Publish {
        room: room(1),
        payload: b"still here".to_vec().into(),
    })
    .await;
    let t1 = Instant::now();
    match b.recv().await {
        RelayEvent::Message { from, .. } => assert_eq!(from, ta),
        other => panic!("{other:?}"),
    }
    let rtt = t1.elapsed();
    // And the held ones still answer.
    for c in clients.iter_mut().step_by(500) {
        c.send(&RelayRequest::Ping { nonce: 5 }).await;
        assert_eq!(c.recv().await, RelayEvent::Pong { nonce: 5 });
    }
    drop(clients);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = relay.metrics().await;
        if metric(&m, "mycel_relay_connections") == 2.0 && metric(&m, "mycel_relay_rooms") == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections not released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{N} connections joined in {connected:?}; a publish meanwhile took {rtt:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_after_a_relay_restart() {
    const CLIENTS: usize = 20;
    let listener = mycel_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let relay = Relay::start_on(Config::default(), listener).await;
    let url = relay.ws_url();
    let rooms = [room(1), room(2)];
    let mut clients: Vec<Reconnecting> = (0..CLIENTS)
        .map(|i| Reconnecting::new(url.clone(), vec![rooms[i % 2]], 0x9E37_79B9 + i as u64))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for c in &mut clients {
        c.ensure(deadline).await.unwrap();
    }
    exchange(&mut clients, rooms[0]).await;

    // Restart: the relay goes away (1001), stays down a while, comes back
    // on the same address; clients back off with jitter and rejoin.
    let stopping = relay.stop();
    let mut closes = Vec::new();
    let waits: Vec<_> = clients
        .iter_mut()
        .map(|c| {
            let mut cl = c.client.take().unwrap();
            tokio::spawn(async move { cl.closed(WAIT).await.map(|f| u16::from(f.code)) })
        })
        .collect();
    stopping.await;
    for w in waits {
        closes.push(w.await.unwrap());
    }
    assert!(
        closes
            .iter()
            .all(|c| *c == Some(mycel_relay::close_code::GOING_AWAY))
    );
    for c in &mut clients {
        c.client = None;
        c.reconnects += 1;
    }
    let down = Duration::from_millis(300);
    let restart = tokio::spawn(async move {
        tokio::time::sleep(down).await;
        let listener = mycel_relay::bind(addr).unwrap();
        Relay::start_on(Config::default(), listener).await
    });
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                c.ensure(deadline).await.unwrap();
                c
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let back = t0.elapsed();
    let relay = restart.await.unwrap();
    assert!(back >= down, "reconnected before the relay was back?");
    assert!(back < Duration::from_secs(3), "reconnect took {back:?}");
    let attempts: u32 = clients.iter().map(|c| c.attempts).sum();
    assert!(
        attempts > 2 * CLIENTS as u32,
        "clients retried ({attempts} attempts)"
    );
    exchange(&mut clients, rooms[1]).await;
    println!("{CLIENTS} clients back {back:?} after restart, {attempts} connect attempts in all");
    relay.stop().await;
}

/// One member of `room` publishes; every other member receives it.
async fn exchange(clients: &mut [Reconnecting], r: mycel_core::id::RoomId) {
    let mut members: Vec<&mut Client> = clients
        .iter_mut()
        .filter(|c| c.rooms_contain(&r))
        .map(|c| c.client.as_mut().unwrap())
        .collect();
    // Drain presence noise from the (re)joins.
    for m in members.iter_mut() {
        while m.try_recv(Duration::from_millis(50)).await.is_some() {}
    }
    let (first, rest) = members.split_first_mut().unwrap();
    first
        .send(&RelayRequest::Publish {
            room: r,
            payload: b"after restart".to_vec().into(),
        })
        .await;
    for m in rest {
        loop {
            match m.recv().await {
                RelayEvent::Message {
                    room: rr, payload, ..
                } => {
                    assert_eq!(rr, r);
                    assert_eq!(&payload[..], b"after restart");
                    break;
                }
                RelayEvent::PeerJoined { .. } | RelayEvent::PeerLeft { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }
}
