//! Running the `mycel-node` binary from integration tests.
#![allow(dead_code)] // each test file uses its own subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mycel-node")
}

/// A fresh, empty data directory under the system temp dir.
pub fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mycel-test-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn node(data: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("MYCEL_DATA", data)
        .output()
        .expect("run mycel-node")
}

/// Runs a command that must succeed; returns its trimmed stdout.
pub fn ok(data: &Path, args: &[&str]) -> String {
    let out = node(data, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn spawn(data: &Path, args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .env("MYCEL_DATA", data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mycel-node")
}

pub fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed: {err}");
    err
}

/// A relay on 127.0.0.1 in a background thread, until the process ends.
pub fn start_relay() -> SocketAddr {
    let (addr, stop, _) = start_stoppable_relay("127.0.0.1:0".parse().unwrap());
    // Never stopped: dropping the sender would stop it.
    std::mem::forget(stop);
    addr
}

/// A relay that stops (closing every connection) when the sender is
/// dropped or sent to; returns its address and a handle to wait for it.
pub fn start_stoppable_relay(
    at: SocketAddr,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    start_stoppable_relay_with(at, mycel_relay::Config::default())
}

/// [`start_stoppable_relay`] with a configuration of one's own.
pub fn start_stoppable_relay_with(
    at: SocketAddr,
    config: mycel_relay::Config,
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
            let _ = mycel_relay::serve(config, listener, async {
                let _ = stopped.await;
            })
            .await;
        });
    });
    (rx.recv().unwrap(), stop, handle)
}

pub fn ws(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

/// A Debian `nats-server` on 127.0.0.1 (for relays sharing rooms), killed
/// when dropped. `cargo xtask test` installs it.
pub struct Nats {
    pub port: u16,
    child: std::process::Child,
}

impl Nats {
    pub fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}): `cargo xtask test` installs it")
            });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Nats { port, child }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
