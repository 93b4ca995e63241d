//! End to end: real relay, real node processes, 127.0.0.1 only.

mod support;
use support::{bin, data_dir, node, ok};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn spawn(data: &Path, args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .env("MYCEL_DATA", data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mycel-node")
}

fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed: {err}");
    err
}

/// A relay on 127.0.0.1 in a background thread, until the process ends.
fn start_relay() -> SocketAddr {
    let (addr, stop, _) = start_stoppable_relay("127.0.0.1:0".parse().unwrap());
    // Never stopped: dropping the sender would stop it.
    std::mem::forget(stop);
    addr
}

/// A relay that stops (closing every connection) when the sender is
/// dropped or sent to; returns its address and a handle to wait for it.
fn start_stoppable_relay(
    at: SocketAddr,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = mycel_relay::bind(at).unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let _ = mycel_relay::serve(mycel_relay::Config::default(), listener, async {
                let _ = stopped.await;
            })
            .await;
        });
    });
    (rx.recv().unwrap(), stop, handle)
}

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

fn ws(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
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
