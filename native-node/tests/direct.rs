//! Direct links (WebRTC data channels, protocol.md §5.3) between two
//! in-process nodes and a real relay, all on 127.0.0.1.
//!
//! Each node runs `net::run_with` in a thread of its own; the test reaches
//! into a running node through its control channel (closures run inside
//! the node's loop), so it can change documents, read them, and kill a
//! link while everything runs.

mod support;
use support::{data_dir, start_stoppable_relay, ws};

use std::net::IpAddr;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use mycel_core::gossip::GossipConfig;
use mycel_core::id::{DocId, PeerId, ShareLink};
use mycel_core::node::NodeConfig;
use mycel_node::host::{Host, os_seed, to_json};
use mycel_node::net::{self, Control, DirectOptions, Mode, Options};
use mycel_node::rtc::Links;
use mycel_node::store::Store;
use tokio::sync::{mpsc, oneshot};

/// A node running in its own thread.
struct Running {
    peer: PeerId,
    control: mpsc::UnboundedSender<Control>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Host>>,
}

impl Running {
    /// Runs `f` inside the node's loop and returns its result.
    fn ask<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Host, Option<&mut Links>) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std_mpsc::channel();
        let work: Control = Box::new(move |h, l| {
            let _ = tx.send(f(h, l));
        });
        self.control.send(work).expect("node loop gone");
        rx.recv_timeout(Duration::from_secs(20))
            .expect("node loop did not answer")
    }

    fn stop(mut self) -> Host {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().expect("node thread")
    }
}

fn new_host(name: &str) -> Host {
    let dir = data_dir(name);
    let store = Store::open(&dir).unwrap();
    store.init_identity(os_seed().unwrap()).unwrap();
    let config = NodeConfig {
        mesh: Some(GossipConfig::default()),
        ..NodeConfig::default()
    };
    Host::open_with(store, config).unwrap()
}

fn start(host: Host, relay: String) -> Running {
    let peer = host.replica.node().peer_id();
    let (control, rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let mut host = host;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let options = Options {
            direct: Some(DirectOptions {
                ips: vec![IpAddr::from([127, 0, 0, 1])],
                port: 0,
            }),
            control: Some(rx),
            traffic_every: None,
        };
        rt.block_on(net::run_with(
            &mut host,
            &[relay],
            Mode::Serve,
            async {
                let _ = stopped.await;
            },
            options,
        ))
        .unwrap();
        host
    });
    Running {
        peer,
        control,
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// Polls `check` (bounded in time and count) until it holds.
fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    for _ in 0..100_000 {
        if check() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("gave up waiting for {what}");
}

fn value(node: &Running, doc: DocId, key: &'static str) -> Option<serde_json::Value> {
    node.ask(move |h, _| to_json(h.automerge(doc).ok()?, Some(key)))
}

/// Bytes `node` received directly from `peer`, if a link to it is open.
fn direct_in(node: &Running, peer: PeerId) -> Option<u64> {
    node.ask(move |_, l| {
        let l = l?;
        l.is_up(&peer)
            .then(|| l.traffic().get(&peer).map_or(0, |t| t.received))
    })
}

/// Two nodes sharing a fresh document; b holds the key but no changes.
fn pair(relay: &str) -> (Running, Running, DocId) {
    let mut a = new_host("direct-a");
    let mut b = new_host("direct-b");
    let link: ShareLink = a.create("http://127.0.0.1/").unwrap();
    let doc = a.open_link(&link).unwrap();
    b.open_link(&link).unwrap();
    (start(a, relay.into()), start(b, relay.into()), doc)
}

#[test]
fn a_direct_link_syncs_and_outlives_the_relay() {
    let (relay_addr, stop_relay, relay_thread) =
        start_stoppable_relay("127.0.0.1:0".parse().unwrap());
    let (a, b, doc) = pair(&ws(relay_addr));
    let a_peer = a.peer;

    // The link comes up (the smaller peer id offers, through the relay).
    wait_for("the direct link", Duration::from_secs(20), || {
        direct_in(&b, a_peer).is_some()
    });

    // A change syncs over it.
    a.ask(move |h, _| h.set(doc, "title", &serde_json::json!("over the channel")))
        .unwrap();
    wait_for("the first change", Duration::from_secs(10), || {
        value(&b, doc, "title") == Some(serde_json::json!("over the channel"))
    });
    assert!(direct_in(&b, a_peer).unwrap() > 0, "nothing came directly");

    // The relay goes away; the channel carries on.
    drop(stop_relay);
    relay_thread.join().unwrap();
    a.ask(move |h, _| h.set(doc, "after", &serde_json::json!("relay gone")))
        .unwrap();
    b.ask(move |h, _| h.set(doc, "reply", &serde_json::json!(42)))
        .unwrap();
    wait_for("changes without the relay", Duration::from_secs(10), || {
        value(&b, doc, "after") == Some(serde_json::json!("relay gone"))
            && value(&a, doc, "reply") == Some(serde_json::json!(42))
    });
    assert!(direct_in(&b, a_peer).is_some(), "the link went down");

    let (a, b) = (a.stop(), b.stop());
    let (ja, jb) = (
        to_json(a.automerge(doc).unwrap(), None),
        to_json(b.automerge(doc).unwrap(), None),
    );
    assert_eq!(ja, jb);
}

#[test]
fn a_channel_killed_mid_sync_falls_back_to_the_relay_without_loss() {
    let (relay_addr, _stop_relay, _relay_thread) =
        start_stoppable_relay("127.0.0.1:0".parse().unwrap());
    let (a, b, doc) = pair(&ws(relay_addr));
    let a_peer = a.peer;
    wait_for("the direct link", Duration::from_secs(20), || {
        direct_in(&b, a_peer).is_some()
    });

    // Many changes at once on a: a stream of several MiB to b.
    const CHANGES: usize = 600;
    let before = direct_in(&b, a_peer).unwrap();
    a.ask(move |h, _| {
        let mut source = automerge::Automerge::new();
        for i in 0..CHANGES {
            let mut tx = source.transaction();
            let text: String = (0..8_000)
                .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
                .collect();
            tx.put(automerge::ROOT, format!("k{i:04}"), text).unwrap();
            tx.commit();
        }
        h.import_changes(doc, &source)
    })
    .unwrap();

    // Kill the channel once part of the stream came through it.
    let mut killed_at = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    for _ in 0..100_000 {
        assert!(
            Instant::now() < deadline,
            "the stream never started: {} bytes came directly",
            direct_in(&b, a_peer).unwrap_or(0)
        );
        let got = b.ask(move |_, l| {
            let l = l.unwrap();
            let got = l.traffic().get(&a_peer).map_or(0, |t| t.received);
            if got >= before + (512 << 10) {
                l.kill(std::time::Instant::now(), a_peer);
                return Some(got);
            }
            None
        });
        if let Some(got) = got {
            killed_at = Some(got);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed_at = killed_at.unwrap();
    let keys_then = b.ask(move |h, _| {
        h.automerge(doc)
            .map(|d| automerge::ReadDoc::keys(d, automerge::ROOT).count())
            .unwrap_or(0)
    });
    assert!(
        keys_then < CHANGES,
        "b had everything ({keys_then} keys, {killed_at} bytes) before the kill: not mid-sync"
    );

    // The relay takes over; nothing is lost.
    wait_for(
        "every change through the relay",
        Duration::from_secs(60),
        || {
            b.ask(move |h, _| {
                h.automerge(doc)
                    .map(|d| automerge::ReadDoc::keys(d, automerge::ROOT).count())
                    .unwrap_or(0)
            }) == CHANGES
        },
    );
    let (a, b) = (a.stop(), b.stop());
    assert_eq!(
        to_json(a.automerge(doc).unwrap(), None),
        to_json(b.automerge(doc).unwrap(), None)
    );
}
