//! End to end: real relay, real node processes, 127.0.0.1 only.

mod support;
use support::{
    Nats, data_dir, finish, node, ok, spawn, start_relay, start_stoppable_relay,
    start_stoppable_relay_with, ws,
};

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mycel_core::id::ShareLink;
use mycel_node::host::Host;
use mycel_node::store::Store;

/// A TCP tap in front of `upstream`: records every byte the relay sends.
fn start_tap(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let tap = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut s_write);
            });
            let (mut s_read, mut c_write) = (server, client);
            let tap = tap.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = s_read.read(&mut buf) {
                    if n == 0 || c_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    tap.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, seen)
}

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            files_contain(&p, needle)
        } else {
            std::fs::read(&p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

#[test]
fn two_nodes_edit_offline_then_sync_to_identical_json() {
    let relay = ws(start_relay());
    let (a, b) = (data_dir("a"), data_dir("b"));
    ok(&a, &["init"]);
    ok(&b, &["init"]);
    let link = ok(&a, &["new"]);
    // Both edit while offline (b opens the link, so it knows the key).
    ok(&a, &["set", &link, "from_a", "\"written by a\""]);
    ok(&a, &["set", &link, "shared", "1"]);
    ok(&b, &["set", &link, "from_b", "[1,2,3]"]);
    ok(&b, &["set", &link, "shared", "2"]);
    let sa = spawn(&a, &["sync", &link, "--relay", &relay, "--timeout", "20"]);
    let sb = spawn(&b, &["sync", &link, "--relay", &relay, "--timeout", "20"]);
    finish(sa, "sync a");
    finish(sb, "sync b");
    let ja = ok(&a, &["get", &link]);
    let jb = ok(&b, &["get", &link]);
    assert_eq!(ja, jb);
    let v: serde_json::Value = serde_json::from_str(&ja).unwrap();
    assert_eq!(v["from_a"], "written by a");
    assert_eq!(v["from_b"], serde_json::json!([1, 2, 3]));
}

#[test]
fn a_blind_pin_node_serves_a_change_to_a_later_node_and_never_sees_plaintext() {
    let (relay_addr, forwarded) = start_tap(start_relay());
    let relay = ws(relay_addr);
    let (a, pin, b) = (data_dir("writer"), data_dir("pin"), data_dir("reader"));
    for d in [&a, &pin, &b] {
        ok(d, &["init"]);
    }
    let link = ok(&a, &["new"]);
    let canary = "canary-7f3a9c1e-plaintext";
    ok(&a, &["set", &link, "secret", &format!("\"{canary}\"")]);
    let pin_link = ok(&a, &["pin-link", &link]);
    ok(&pin, &["pin", &pin_link]);
    let server = spawn(&pin, &["serve", "--relay", &relay]);
    // The writer syncs to the pin node and reports stored-remotely(1).
    let err = finish(
        spawn(&a, &["sync", &link, "--relay", &relay, "--timeout", "20"]),
        "writer sync",
    );
    assert!(err.contains("pinning node"), "{err}");
    // The writer is gone; a new node gets the change from the pin node alone.
    let err = finish(
        spawn(&b, &["sync", &link, "--relay", &relay, "--timeout", "20"]),
        "reader sync",
    );
    assert!(err.contains("synced with 1 peer"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&ok(&b, &["get", &link])).unwrap();
    assert_eq!(v["secret"], canary);
    // SIGTERM stops the daemon cleanly.
    let pid = server.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = server.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "serve: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No plaintext on the pin node's disk or in anything the relay sent.
    assert!(
        !files_contain(&pin, canary.as_bytes()),
        "canary on the pin node's disk"
    );
    let seen = forwarded.lock().unwrap();
    assert!(seen.len() > 1000, "the tap saw the traffic");
    assert!(
        !seen.windows(canary.len()).any(|w| w == canary.as_bytes()),
        "canary in relay traffic"
    );
}

#[test]
fn sync_times_out_with_a_clear_error_when_no_peer_comes() {
    let relay = ws(start_relay());
    let a = data_dir("alone");
    ok(&a, &["init"]);
    let link = ok(&a, &["new"]);
    let out = node(&a, &["sync", &link, "--relay", &relay, "--timeout", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
    // An unreachable relay is reported, retried, then times out.
    let out = node(
        &a,
        &[
            "sync",
            &link,
            "--relay",
            "ws://127.0.0.1:9/ws",
            "--timeout",
            "1",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach relay"), "{err}");
}

#[test]
fn a_relay_restarted_mid_sync_heals_to_convergence() {
    let (addr, stop, handle) = start_stoppable_relay("127.0.0.1:0".parse().unwrap());
    let relay = ws(addr);
    let (a, b) = (data_dir("restart-a"), data_dir("restart-b"));
    ok(&a, &["init"]);
    ok(&b, &["init"]);
    let link = ok(&a, &["new"]);
    for i in 0..20 {
        ok(&a, &["set", &link, &format!("a{i}"), &i.to_string()]);
    }
    ok(&b, &["set", &link, "b", "true"]);
    // b serves (reconnecting daemon); the relay goes away and comes back.
    let server = spawn(&b, &["serve", "--relay", &relay]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = stop.send(());
    handle.join().unwrap();
    let sync = spawn(&a, &["sync", &link, "--relay", &relay, "--timeout", "30"]);
    std::thread::sleep(Duration::from_millis(700));
    let (_addr, _stop2, _h2) = start_stoppable_relay(addr);
    let err = finish(sync, "sync across a relay restart");
    assert!(err.contains("synced"), "{err}");
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let out = server.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("reconnecting"),
        "the daemon saw the relay go: {log}"
    );
    assert_eq!(ok(&a, &["get", &link]), ok(&b, &["get", &link]));
}

/// Kills `serve` with SIGKILL at random moments while it receives changes
/// from another node through a relay. A change is acknowledged once the
/// writer reported it `stored-remotely` (the daemon, a pinning node,
/// advertises only what it has synced to disk): every acknowledged change
/// must be in the daemon's store afterwards, and the store always opens.
/// A child's stderr, line by line, on a channel (closed when it exits).
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits (at most 30 s) for a line containing `needle`; returns the lines
/// seen up to it.
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line with {needle:?} in {seen:?}"));
        let found = line.contains(needle);
        seen.push(line);
        if found {
            return seen;
        }
    }
    panic!("no line with {needle:?} in {seen:?}");
}

fn serve_crash_trials(trials: usize) {
    let relay = ws(start_relay());
    let (a, b) = (
        data_dir("serve-crash-writer"),
        data_dir("serve-crash-daemon"),
    );
    let writer = ok(&a, &["init"]);
    ok(&b, &["init"]);
    let link = ok(&a, &["new"]);
    ok(&b, &["get", &link]); // the daemon holds the document (and its key)
    let share: ShareLink = link.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(400);
    const BATCH: u64 = 100;
    let (mut acked, mut written) = (0u64, 0u64);
    // Kills that found the daemon with none / part / all of a trial's batch.
    let (mut none, mut part, mut all) = (0usize, 0usize, 0usize);
    for trial in 0..trials {
        assert!(
            Instant::now() < deadline,
            "serve crash trials took too long"
        );
        // A batch of changes for the daemon to take in.
        {
            let mut host = Host::open(Store::open(&a).unwrap(), false).unwrap();
            let doc = host.open_link(&share).unwrap();
            for _ in 0..BATCH {
                written += 1;
                host.set(doc, &format!("k{written}"), &serde_json::json!(written))
                    .unwrap();
            }
        }
        // The daemon starts (replaying its growing log) and says when it
        // serves; the writer says when it met the daemon; the kill lands
        // at a random moment after that, while the batch streams and is
        // written (or just after).
        let mut server = spawn(&b, &["serve", "--relay", &relay]);
        let served = stderr_lines(&mut server);
        wait_for_line(&served, "serving");
        let mut sync = spawn(&a, &["sync", &link, "--relay", &relay, "--timeout", "20"]);
        let synced = stderr_lines(&mut sync);
        let mut log = wait_for_line(&synced, "joined");
        std::thread::sleep(Duration::from_micros(rand::random::<u64>() % 60_000));
        let _ = server.kill();
        let _ = server.wait();
        Command::new("kill")
            .args(["-TERM", &sync.id().to_string()])
            .status()
            .unwrap();
        let status = sync.wait().unwrap();
        // The rest of the writer's log (the pipe closes when it exits).
        while let Ok(line) = synced.recv_timeout(Duration::from_secs(10)) {
            log.push(line);
        }
        let upto = log
            .iter()
            .filter_map(|l| l.strip_prefix("stored-remotely(1): changes up to #"))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        // `sync` exits 0 only once the pinning daemon has stored it all.
        assert!(
            !status.success() || upto == written,
            "trial {trial}: {log:?}"
        );
        acked = acked.max(upto);
        match upto {
            u if u == written => all += 1,
            u if u > written - BATCH => part += 1,
            _ => none += 1,
        }
        // The store opens, and holds every acknowledged change.
        let doc: serde_json::Value = serde_json::from_str(&ok(&b, &["get", &link])).unwrap();
        for i in 1..=acked {
            assert_eq!(
                doc[format!("k{i}")],
                i,
                "trial {trial}: acknowledged change #{i} of {writer} lost"
            );
        }
    }
    eprintln!(
        "{trials} serve crash trials: {written} changes written, {acked} acknowledged; \
         the kill found the daemon with none of the new batch stored {none} times, \
         part of it {part} times, all of it {all} times; none lost"
    );
}

#[test]
fn acknowledged_changes_survive_kill_9_of_serve_in_20_trials() {
    serve_crash_trials(20);
}

#[test]
#[ignore = "long: 100 trials; run with --ignored"]
fn acknowledged_changes_survive_kill_9_of_serve_in_100_trials() {
    serve_crash_trials(100);
}

/// A TCP proxy on 127.0.0.1 that a test can cut: it then drops every
/// connection and refuses new ones (accepts and closes them) until restored.
struct CutProxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    /// Bytes forwarded either way.
    forwarded: Arc<AtomicUsize>,
}

impl CutProxy {
    fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = CutProxy {
            addr: listener.local_addr().unwrap(),
            open: Arc::new(AtomicBool::new(true)),
            conns: Arc::new(Mutex::new(Vec::new())),
            accepted: Arc::new(AtomicUsize::new(0)),
            refused: Arc::new(AtomicUsize::new(0)),
            forwarded: Arc::new(AtomicUsize::new(0)),
        };
        let forwarded = proxy.forwarded.clone();
        let (open, conns) = (proxy.open.clone(), proxy.conns.clone());
        let (accepted, refused) = (proxy.accepted.clone(), proxy.refused.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !open.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                {
                    let mut c = conns.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let forwarded = forwarded.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            forwarded.fetch_add(n, Ordering::SeqCst);
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        proxy
    }

    /// Drops every connection and refuses new ones.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_network_cut_between_nodes_and_relay_heals_to_convergence() {
    let proxy = CutProxy::start(start_relay());
    let relay = ws(proxy.addr);
    let (a, b) = (data_dir("cut-a"), data_dir("cut-b"));
    ok(&a, &["init"]);
    ok(&b, &["init"]);
    let link = ok(&a, &["new"]);
    for i in 0..10 {
        ok(&a, &["set", &link, &format!("a{i}"), &i.to_string()]);
    }
    ok(&b, &["set", &link, "b", "\"offline edit\""]);
    // The daemon connects through the proxy (bounded wait)...
    let server = spawn(&b, &["serve", "--relay", &relay]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.accepted.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the daemon never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...then the network is cut: its socket drops, and while the cut
    // lasts neither it nor the writer can reach the relay.
    proxy.cut();
    let sync = spawn(&a, &["sync", &link, "--relay", &relay, "--timeout", "40"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.refused.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "nobody tried to reconnect");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    proxy.restore();
    let err = finish(sync, "sync across a network cut");
    assert!(err.contains("synced with 1 peer"), "{err}");
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let out = server.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "serve: {log}");
    // Cut before or after its WebSocket handshake completed.
    assert!(
        log.contains("reconnecting") || log.contains("cannot reach relay"),
        "the daemon saw the cut: {log}"
    );
    let (ja, jb) = (ok(&a, &["get", &link]), ok(&b, &["get", &link]));
    assert_eq!(ja, jb);
    let v: serde_json::Value = serde_json::from_str(&ja).unwrap();
    assert_eq!(v["b"], "offline edit");
    assert_eq!(v["a9"], 9);
}

#[test]
fn a_network_cut_in_the_middle_of_a_stream_heals_to_convergence() {
    let proxy = CutProxy::start(start_relay());
    let relay = ws(proxy.addr);
    let (a, b) = (data_dir("cut-stream-a"), data_dir("cut-stream-b"));
    ok(&a, &["init"]);
    ok(&b, &["init"]);
    let link = ok(&a, &["new"]);
    ok(&b, &["get", &link]);
    // About 1 MB of envelopes: many stream batches, several windows.
    {
        let share: ShareLink = link.parse().unwrap();
        let mut host = Host::open(Store::open(&a).unwrap(), false).unwrap();
        let doc = host.open_link(&share).unwrap();
        let filler = "x".repeat(200);
        for i in 0..2000 {
            host.set(doc, &format!("k{i}"), &serde_json::json!(filler))
                .unwrap();
        }
    }
    let server = spawn(&b, &["serve", "--relay", &relay]);
    let sync = spawn(&a, &["sync", &link, "--relay", &relay, "--timeout", "60"]);
    // Cut once a tenth of it went through (bounded wait), for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.forwarded.load(Ordering::SeqCst) < 100_000 {
        assert!(Instant::now() < deadline, "the stream never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    proxy.cut();
    let at_cut = proxy.forwarded.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(700));
    proxy.restore();
    let err = finish(sync, "sync across a cut mid-stream");
    assert!(err.contains("synced with 1 peer"), "{err}");
    let total = proxy.forwarded.load(Ordering::SeqCst);
    eprintln!("cut after {at_cut} of {total} bytes forwarded");
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success());
    let (ja, jb) = (ok(&a, &["get", &link]), ok(&b, &["get", &link]));
    assert_eq!(ja, jb);
    let v: serde_json::Value = serde_json::from_str(&ja).unwrap();
    assert_eq!(v["k1999"].as_str().map(str::len), Some(200));
}

/// Multi-homing: a daemon given two relays (sharing rooms through NATS)
/// stays on the first; when it dies, the daemon fails over to the second
/// and a writer on that one still reaches it.
#[test]
fn a_daemon_fails_over_to_another_relay_without_losing_sync() {
    let nats = Nats::start();
    let config = || mycel_relay::Config {
        backplane: Some(nats.url()),
        ..mycel_relay::Config::default()
    };
    let any = "127.0.0.1:0".parse().unwrap();
    let (r1, stop1, thread1) = start_stoppable_relay_with(any, config());
    let (r2, _stop2, _thread2) = start_stoppable_relay_with(any, config());
    let (w, d) = (data_dir("failover-writer"), data_dir("failover-daemon"));
    ok(&w, &["init"]);
    ok(&d, &["init"]);
    let link = ok(&w, &["new"]);
    ok(&w, &["set", &link, "before", "1"]);
    ok(&d, &["get", &link]);
    let relays = format!("{},{}", ws(r1), ws(r2));
    let daemon = spawn(&d, &["serve", "--relay", &relays]);
    // Written through relay 2, received by the daemon on relay 1.
    let err = finish(
        spawn(&w, &["sync", &link, "--relay", &ws(r2), "--timeout", "30"]),
        "sync through relay 2",
    );
    assert!(err.contains("synced with 1 peer"), "{err}");
    // Relay 1 goes away; the daemon moves to relay 2.
    let _ = stop1.send(());
    thread1.join().unwrap();
    ok(&w, &["set", &link, "after", "2"]);
    let err = finish(
        spawn(&w, &["sync", &link, "--relay", &ws(r2), "--timeout", "30"]),
        "sync through relay 2",
    );
    assert!(err.contains("synced with 1 peer"), "{err}");
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    let out = daemon.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "serve: {log}");
    assert!(log.contains("failing over"), "{log}");
    let v: serde_json::Value = serde_json::from_str(&ok(&d, &["get", &link])).unwrap();
    assert_eq!(
        (v["before"].as_i64(), v["after"].as_i64()),
        (Some(1), Some(2))
    );
}
