//! `relay-bench`: load, latency and memory figures for the relay, measured
//! in the same run against the y-websocket server (`@y/websocket-server`
//! 0.1.1 with `yjs` 13), on loopback only.
//!
//! ```text
//! cargo run --release -p mycel-relay --bin relay-bench [-- --quick] [-- --no-y] [-- --idle-only]
//! ```
//!
//! Load: rooms of 100 clients, 10 of them senders, 64-byte payloads, at a
//! fixed offered rate (50,000 deliveries/s by default) and at a high one
//! (to find the ceiling). Each payload carries its send time, so receivers
//! measure send → receive latency through the server. Server CPU comes
//! from `/proc/<pid>/stat` (utime + stime) of the server process; idle
//! memory from its `VmRSS` before and after opening 10,000 connections
//! (100 per room) in a fresh server process. Everything is bounded in
//! count and time; the last line printed is one JSON object.
//!
//! `--scale-out` (what `cargo xtask bench scale-out` runs) measures instead
//! the same load on one relay and on two relays sharing every room through
//! NATS (Debian's `nats-server` on 127.0.0.1, `$NATS_SERVER` to override):
//! each room's clients alternate between the two relays, so most deliveries
//! cross relays; it prints deliveries/s, relay CPU per delivery and
//! p50/p99 latency, cross-relay latency on its own, and the ratios.
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, stream};
use mycel_core::id::RoomId;
use mycel_core::wire::{MAX_FRAME, RelayEvent, RelayRequest, decode_frame, encode_frame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const ROOM_SIZE: usize = 100;
const SENDERS: usize = 10;
const PAYLOAD: usize = 64;
/// y-websocket content length: its update message is then about as long as
/// a 64-byte relay payload.
const Y_CONTENT: usize = 48;
const Y_PORT: u16 = 4400;
const Y_SERVER_VERSION: &str = "0.1.1";
const YJS_VERSION: &str = "13.6.33";
const WS_VERSION: &str = "6.2.7";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mycel,
    Y,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Mycel => "mycel-relay",
            Kind::Y => "y-websocket",
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    with_y: bool,
    rooms: usize,
    rate: f64,
    max_rate: f64,
    secs: f64,
    idle: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__serve-relay") {
        serve_child(
            args.get(2).and_then(|p| p.parse().ok()).unwrap_or(0),
            args.get(3).cloned(),
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let scale_out = args.iter().any(|a| a == "--scale-out");
    let opts = Opts {
        quick,
        with_y: !args.iter().any(|a| a == "--no-y"),
        rooms: 5,
        rate: 50_000.0,
        max_rate: 400_000.0,
        secs: if quick { 1.5 } else { 4.0 },
        idle: if quick { 2_000 } else { 10_000 },
    };
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let report = if args.iter().any(|a| a == "--idle-only") {
        rt.block_on(idle_only(opts))
    } else if scale_out {
        rt.block_on(scale_out::run(opts))
    } else {
        rt.block_on(run(opts))
    };
    println!("total bench time {:.1}s", started.elapsed().as_secs_f64());
    println!("{report}");
}

/// The relay as a child process (same binary, so `cargo run --bin
/// relay-bench` needs no other build step), with a NATS backplane if
/// given. It stops when its stdin closes.
fn serve_child(port: u16, backplane: Option<String>) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let config = mycel_relay::Config {
        listen: ([127, 0, 0, 1], port).into(),
        max_conns_per_ip: 0,
        max_connections: 100_000,
        // The bench clients share two cores with the relay: let them lag
        // behind a burst without being dropped as slow consumers.
        send_queue_frames: 65_536,
        send_queue_bytes: mycel_relay::ByteSize(64 << 20),
        rate_frames: 1_000_000,
        burst_frames: 1_000_000,
        rate_bytes: mycel_relay::ByteSize(1 << 30),
        burst_bytes: mycel_relay::ByteSize(1 << 30),
        backplane,
        ..mycel_relay::Config::default()
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("MYCEL_BENCH_RELAY_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let listener = mycel_relay::bind(config.listen).expect("bind");
        let stop = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = [0u8; 64];
                while let Ok(n) = std::io::stdin().read(&mut sink) {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        };
        let _ = mycel_relay::serve(config, listener, stop).await;
    });
    rt.shutdown_timeout(Duration::from_millis(100));
}

/// A server process under test.
struct Server {
    kind: Kind,
    child: Child,
    port: u16,
}

impl Server {
    async fn start(kind: Kind, ydir: &Path) -> Result<Server, String> {
        Server::start_with(kind, ydir, None).await
    }

    /// A server; for mycel-relay, with `backplane` (a NATS URL) if given.
    async fn start_with(
        kind: Kind,
        ydir: &Path,
        backplane: Option<&str>,
    ) -> Result<Server, String> {
        let (child, port) = match kind {
            Kind::Mycel => {
                let port = free_port()?;
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let child = Command::new(exe)
                    .args(["__serve-relay", &port.to_string()])
                    .args(backplane)
                    .env("MYCEL_RELAY_LOG", "warn")
                    .stdin(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("spawn relay: {e}"))?;
                (child, port)
            }
            Kind::Y => {
                if std::net::TcpStream::connect(("127.0.0.1", Y_PORT)).is_ok() {
                    return Err(format!("port {Y_PORT} is already in use"));
                }
                let child = Command::new("node")
                    .arg("node_modules/@y/websocket-server/src/server.js")
                    .current_dir(ydir)
                    .env("HOST", "127.0.0.1")
                    .env("PORT", Y_PORT.to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("spawn node: {e}"))?;
                (child, Y_PORT)
            }
        };
        let mut s = Server { kind, child, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(s);
            }
            if Instant::now() > deadline {
                s.stop();
                return Err(format!("{} did not start", kind.name()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (user, system) CPU seconds of the whole process, all threads.
    fn cpu_split(&self) -> (f64, f64) {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) / clk_tck(), ticks(12) / clk_tck())
    }

    fn rss_kib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    fn stop(&mut self) {
        // Closing stdin stops the relay child gracefully; node is killed.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            if self.kind == Kind::Y {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn clk_tck() -> f64 {
    static T: OnceLock<f64> = OnceLock::new();
    *T.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn base() -> Instant {
    static B: OnceLock<Instant> = OnceLock::new();
    *B.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

fn room_id(room: usize) -> RoomId {
    let mut r = [0x5A; 32];
    r[..8].copy_from_slice(&(room as u64).to_le_bytes());
    RoomId(r)
}

async fn connect(kind: Kind, port: u16, room: usize) -> Result<Ws, String> {
    let url = match kind {
        Kind::Mycel => format!("ws://127.0.0.1:{port}/ws"),
        Kind::Y => format!("ws://127.0.0.1:{port}/bench-room-{room}"),
    };
    let cfg = WebSocketConfig::default().read_buffer_size(8192);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(url, Some(cfg), true),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    if kind == Kind::Mycel {
        let join = encode_frame(&RelayRequest::Join {
            room: room_id(room),
        });
        ws.send(Message::Binary(join.into()))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    if let Ok(RelayEvent::Joined { .. }) = decode_frame::<RelayEvent>(&b, MAX_FRAME)
                    {
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => return Err("no Joined".into()),
            }
        }
    }
    Ok(ws)
}

/// Connects `n` clients, `ROOM_SIZE` per room, a few hundred at a time;
/// client `i` to server `i % ports.len()`.
async fn connect_many(kind: Kind, ports: &[u16], n: usize) -> Result<Vec<(usize, Ws)>, String> {
    let results: Vec<Result<(usize, Ws), String>> = stream::iter(0..n)
        .map(|i| async move {
            let room = i / ROOM_SIZE;
            connect(kind, ports[i % ports.len()], room)
                .await
                .map(|ws| (i, ws))
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let mut out = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}

/// The frame a sender publishes, with its send time inside.
struct Publisher {
    kind: Kind,
    room: usize,
    sender: u32,
    /// Yjs clock of this sender's next item.
    clock: u64,
}

impl Publisher {
    fn frame(&mut self) -> Vec<u8> {
        let ts = now_ns();
        match self.kind {
            Kind::Mycel => {
                let mut p = Vec::with_capacity(PAYLOAD);
                p.extend_from_slice(&ts.to_le_bytes());
                p.extend_from_slice(&self.sender.to_le_bytes());
                p.resize(PAYLOAD, 0xEE);
                encode_frame(&RelayRequest::Publish {
                    room: room_id(self.room),
                    payload: p.into(),
                })
            }
            Kind::Y => {
                let mut content = format!("~T{ts:016x}S{:08x}", self.sender);
                while content.len() < Y_CONTENT {
                    content.push('x');
                }
                let update = y_insert_update(self.sender, self.clock, &content);
                self.clock += content.len() as u64;
                // messageSync (0), messageYjsUpdate (2), varUint8Array.
                let mut m = vec![0u8, 2u8];
                write_var_uint(&mut m, update.len() as u64);
                m.extend_from_slice(&update);
                m
            }
        }
    }
}

/// A Yjs v1 update: client `client` inserts `text` at the end of root
/// text "t" at `clock` (after its own previous insert, if any).
fn y_insert_update(client: u32, clock: u64, text: &str) -> Vec<u8> {
    let mut u = Vec::with_capacity(16 + text.len());
    write_var_uint(&mut u, 1); // clients with structs
    write_var_uint(&mut u, 1); // structs of this client
    write_var_uint(&mut u, u64::from(client));
    write_var_uint(&mut u, clock);
    const CONTENT_STRING: u8 = 4;
    if clock == 0 {
        u.push(CONTENT_STRING); // no origins: parent follows
        write_var_uint(&mut u, 1); // parent is a root type key
        write_var_string(&mut u, "t");
    } else {
        u.push(CONTENT_STRING | 0x80); // left origin
        write_var_uint(&mut u, u64::from(client));
        write_var_uint(&mut u, clock - 1);
    }
    write_var_string(&mut u, text);
    write_var_uint(&mut u, 0); // empty delete set
    u
}

fn write_var_uint(out: &mut Vec<u8>, mut n: u64) {
    while n > 0x7f {
        out.push(0x80 | (n & 0x7f) as u8);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_var_string(out: &mut Vec<u8>, s: &str) {
    write_var_uint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// (send time, sender) of a delivered message, if it is one of ours.
fn parse_delivery(kind: Kind, bytes: &[u8]) -> Option<(u64, u32)> {
    match kind {
        Kind::Mycel => match decode_frame::<RelayEvent>(bytes, MAX_FRAME) {
            Ok(RelayEvent::Message { payload, .. }) if payload.len() >= 12 => Some((
                u64::from_le_bytes(payload[..8].try_into().ok()?),
                u32::from_le_bytes(payload[8..12].try_into().ok()?),
            )),
            _ => None,
        },
        Kind::Y => {
            let at = bytes.windows(2).position(|w| w == b"~T")?;
            let t = std::str::from_utf8(bytes.get(at + 2..at + 18)?).ok()?;
            let s = std::str::from_utf8(bytes.get(at + 19..at + 27)?).ok()?;
            Some((
                u64::from_str_radix(t, 16).ok()?,
                u32::from_str_radix(s, 16).ok()?,
            ))
        }
    }
}

#[derive(Debug, Default, Clone)]
struct LoadResult {
    offered: f64,
    expected: u64,
    delivered: u64,
    secs: f64,
    per_sec: f64,
    cpu_secs: f64,
    cpu_us_per_delivery: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// Deliveries whose sender was on another server, and their latency.
    cross_deliveries: u64,
    cross_p50_us: f64,
    cross_p99_us: f64,
    /// Share of the server's CPU time spent in the kernel.
    sys_share: f64,
}

/// Runs one load phase: `rooms` rooms of `ROOM_SIZE`, `SENDERS` senders
/// each, at `rate` deliveries/s for `secs`; client `i` on server
/// `i % servers.len()`, CPU summed over the servers.
async fn load(
    kind: Kind,
    servers: &[&Server],
    rooms: usize,
    rate: f64,
    secs: f64,
) -> Result<LoadResult, String> {
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let n_servers = servers.len();
    let cpu_split = || {
        servers.iter().fold((0.0, 0.0), |(u, k), s| {
            let (u1, k1) = s.cpu_split();
            (u + u1, k + k1)
        })
    };
    let conns = connect_many(kind, &ports, rooms * ROOM_SIZE).await?;
    let per_publish = (ROOM_SIZE - 1) as f64;
    let senders_total = (rooms * SENDERS) as f64;
    let per_sender_rate = rate / per_publish / senders_total;
    let n_per_sender = (per_sender_rate * secs).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / per_sender_rate);
    // Let the servers settle after the connection burst (y-websocket sends
    // its sync messages), then start every sender at a staggered offset.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let deadline = start + Duration::from_secs_f64(secs) + Duration::from_secs(5);
    let cpu0 = cpu_split();

    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (i, ws) in conns {
        let room = i / ROOM_SIZE;
        let slot = i % ROOM_SIZE;
        let sender_id = (room * SENDERS + slot) as u32 + 1;
        let is_sender = slot < SENDERS;
        let expect = if is_sender {
            (SENDERS as u64 - 1) * n_per_sender
        } else {
            SENDERS as u64 * n_per_sender
        };
        let (mut tx, mut rx) = ws.split();
        readers.push(tokio::spawn(async move {
            let mut got = 0u64;
            let mut lat: Vec<u32> = Vec::with_capacity(expect as usize);
            let mut cross: Vec<u32> = Vec::new();
            let mut last = start;
            while got < expect {
                let next = tokio::time::timeout_at(deadline, rx.next()).await;
                let Ok(Some(Ok(Message::Binary(b)))) = next else {
                    match next {
                        Ok(Some(Ok(_))) => continue,
                        _ => break,
                    }
                };
                let now = now_ns();
                if let Some((ts, from)) = parse_delivery(kind, &b) {
                    if is_sender && from == sender_id {
                        continue; // y-websocket echoes to the sender
                    }
                    got += 1;
                    let us = (now.saturating_sub(ts) / 1000).min(u64::from(u32::MAX)) as u32;
                    lat.push(us);
                    if n_servers > 1 && sender_conn(from) % n_servers != i % n_servers {
                        cross.push(us);
                    }
                    last = tokio::time::Instant::now();
                }
            }
            (got, lat, cross, last, rx)
        }));
        if is_sender {
            let mut p = Publisher {
                kind,
                room,
                sender: sender_id,
                clock: 0,
            };
            let offset = period.mul_f64(f64::from(sender_id) / senders_total);
            writers.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(start + offset, period);
                for _ in 0..n_per_sender {
                    tick.tick().await;
                    if tx.send(Message::Binary(p.frame().into())).await.is_err() {
                        break;
                    }
                }
                tx
            }));
        } else {
            writers.push(tokio::spawn(async move { tx }));
        }
    }
    let mut delivered = 0u64;
    let mut lat = Vec::new();
    let mut cross = Vec::new();
    let mut last = start;
    let mut halves = Vec::new();
    for r in readers {
        let (got, l, c, t, rx) = r.await.map_err(|e| e.to_string())?;
        delivered += got;
        lat.extend(l);
        cross.extend(c);
        last = last.max(t);
        halves.push(rx);
    }
    let cpu1 = cpu_split();
    for w in writers {
        let _ = w.await;
    }
    drop(halves);
    lat.sort_unstable();
    cross.sort_unstable();
    let pct = |q: f64| percentile(&lat, q);
    let secs_taken = (last - start).as_secs_f64().max(1e-9);
    let expected = (rooms as u64) * (SENDERS as u64) * n_per_sender * (ROOM_SIZE as u64 - 1);
    let cpu = (cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1);
    let sys_share = (cpu1.1 - cpu0.1) / cpu.max(1e-9);
    Ok(LoadResult {
        offered: rate,
        expected,
        delivered,
        secs: secs_taken,
        per_sec: delivered as f64 / secs_taken,
        cpu_secs: cpu,
        cpu_us_per_delivery: cpu * 1e6 / delivered.max(1) as f64,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        cross_deliveries: cross.len() as u64,
        cross_p50_us: percentile(&cross, 0.50),
        cross_p99_us: percentile(&cross, 0.99),
        sys_share,
    })
}

/// The `q` quantile of sorted `v` (NaN if empty).
fn percentile(v: &[u32], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    f64::from(v[((v.len() - 1) as f64 * q) as usize])
}

/// The client index of the sender with id `sender` (as [`load`] numbers
/// them: room-major, the first `SENDERS` slots of each room send).
fn sender_conn(sender: u32) -> usize {
    let s = sender.saturating_sub(1) as usize;
    (s / SENDERS) * ROOM_SIZE + s % SENDERS
}

/// Idle memory: RSS growth of a fresh server per connection, `n` clients
/// in rooms of `ROOM_SIZE`, each draining what it is sent.
async fn idle(kind: Kind, server: &Server, n: usize) -> Result<(f64, f64, f64), String> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = server.rss_kib();
    let conns = connect_many(kind, &[server.port], n).await?;
    let drains: Vec<_> = conns
        .into_iter()
        .map(|(_, mut ws)| tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} }))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = server.rss_kib();
    for d in drains {
        d.abort();
    }
    Ok((rss0, rss1, (rss1 - rss0) * 1024.0 / n as f64))
}

/// Installs the y-websocket server into a directory the bench owns.
fn install_y() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("MYCEL_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent()?.parent().map(Path::to_path_buf))
            .unwrap_or_else(std::env::temp_dir)
            .join("relay-bench"),
    }
    .join("y-websocket");
    let marker = dir.join("node_modules/@y/websocket-server/src/server.js");
    let pinned = dir.join(".pinned");
    let want = format!("{Y_SERVER_VERSION} {YJS_VERSION} {WS_VERSION} with-optional");
    if marker.exists() && std::fs::read_to_string(&pinned).ok().as_deref() == Some(want.as_str()) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("package.json"), "{\"private\": true}\n").map_err(|e| e.to_string())?;
    println!(
        "installing @y/websocket-server@{Y_SERVER_VERSION} yjs@{YJS_VERSION} into {}",
        dir.display()
    );
    let status = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            // y-leveldb (an optional dependency the server imports) loads
            // leveldown's shipped prebuilt binary: no install script needed.
            "--ignore-scripts",
            &format!("@y/websocket-server@{Y_SERVER_VERSION}"),
            &format!("yjs@{YJS_VERSION}"),
            &format!("ws@{WS_VERSION}"),
        ])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("npm: {e}"))?;
    if !status.success() || !marker.exists() {
        return Err(format!("npm install failed ({status})"));
    }
    std::fs::write(&pinned, want).map_err(|e| e.to_string())?;
    Ok(dir)
}

struct Figures {
    kind: Kind,
    load: LoadResult,
    max: LoadResult,
    idle_bytes_per_conn: f64,
}

async fn measure(kind: Kind, opts: &Opts, ydir: &Path) -> Result<Figures, String> {
    println!("== {}", kind.name());
    let server = Server::start(kind, ydir).await?;
    let load = load(kind, &[&server], opts.rooms, opts.rate, opts.secs).await?;
    print_load("fixed load", &load);
    let max = load_max(kind, &[&server], opts).await?;
    print_load("high load", &max);
    drop(server);
    let server = Server::start(kind, ydir).await?;
    let (rss0, rss1, per) = idle(kind, &server, opts.idle).await?;
    println!(
        "  idle: {} connections in rooms of {ROOM_SIZE}: RSS {:.1} MiB -> {:.1} MiB, {:.0} bytes per connection",
        opts.idle,
        rss0 / 1024.0,
        rss1 / 1024.0,
        per
    );
    drop(server);
    Ok(Figures {
        kind,
        load,
        max,
        idle_bytes_per_conn: per,
    })
}

async fn load_max(kind: Kind, servers: &[&Server], opts: &Opts) -> Result<LoadResult, String> {
    // Let the previous phase's connections close first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    load(kind, servers, opts.rooms, opts.max_rate, opts.secs).await
}

fn print_load(what: &str, r: &LoadResult) {
    println!(
        "  {what}: offered {:.0}/s, delivered {}/{} in {:.2}s = {:.0} deliveries/s; server CPU {:.3}s ({:.0}% kernel) = {:.3} us/delivery; latency p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
        r.offered,
        r.delivered,
        r.expected,
        r.secs,
        r.per_sec,
        r.cpu_secs,
        r.sys_share * 100.0,
        r.cpu_us_per_delivery,
        r.p50_us,
        r.p99_us,
        r.p999_us
    );
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

/// `--idle-only`: just mycel-relay's idle memory per connection (what
/// the full run reports last), for quick before/after comparisons.
async fn idle_only(opts: Opts) -> String {
    let result = async {
        let server = Server::start(Kind::Mycel, Path::new("")).await?;
        idle(Kind::Mycel, &server, opts.idle).await
    };
    match result.await {
        Ok((rss0, rss1, per)) => {
            println!(
                "idle: {} connections in rooms of {ROOM_SIZE}: RSS {:.1} MiB -> {:.1} MiB, {per:.0} bytes per connection",
                opts.idle,
                rss0 / 1024.0,
                rss1 / 1024.0
            );
            format!(
                "{{\"bench\":\"relay-idle\",\"idle_connections\":{},\"idle_bytes_per_conn\":{}}}",
                opts.idle,
                num(per)
            )
        }
        Err(e) => format!(
            "{{\"bench\":\"relay-idle\",\"error\":\"{}\"}}",
            e.replace('"', "'")
        ),
    }
}

async fn run(opts: Opts) -> String {
    println!(
        "relay-bench: rooms of {ROOM_SIZE} clients, {SENDERS} senders per room, {PAYLOAD}-byte payloads, {} rooms, {:.1}s per phase{}",
        opts.rooms,
        opts.secs,
        if opts.quick { " (quick)" } else { "" }
    );
    let mut notes: Vec<String> = Vec::new();
    let ydir = if opts.with_y {
        match install_y() {
            Ok(d) => Some(d),
            Err(e) => {
                notes.push(format!("y-websocket skipped: {e}"));
                None
            }
        }
    } else {
        None
    };
    let none = PathBuf::new();
    let mycel = match measure(Kind::Mycel, &opts, &none).await {
        Ok(f) => Some(f),
        Err(e) => {
            notes.push(format!("mycel-relay failed: {e}"));
            None
        }
    };
    let y = match &ydir {
        Some(d) => match measure(Kind::Y, &opts, d).await {
            Ok(f) => Some(f),
            Err(e) => {
                notes.push(format!("y-websocket failed: {e}"));
                None
            }
        },
        None => None,
    };
    for n in &notes {
        println!("note: {n}");
    }
    let floor = tokio::task::spawn_blocking(write_floor)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match &floor {
        Ok(f) => println!(
            "== floor\n  one write(2) of a {}-byte delivery frame to a loopback TCP socket: {:.3} us CPU \
             (kernel send and the loopback receive path, both charged to the writer)",
            f.frame_bytes, f.us_per_write
        ),
        Err(e) => println!("note: write floor not measured: {e}"),
    }

    let mut json = String::from("{\"bench\":\"relay\"");
    json.push_str(&format!(
        ",\"room_size\":{ROOM_SIZE},\"senders_per_room\":{SENDERS},\"payload_bytes\":{PAYLOAD},\"rooms\":{},\"idle_connections\":{}",
        opts.rooms, opts.idle
    ));
    for f in [&mycel, &y].into_iter().flatten() {
        let key = match f.kind {
            Kind::Mycel => "mycel",
            Kind::Y => "y_websocket",
        };
        json.push_str(&format!(
            ",\"{key}\":{{\"deliveries_per_s_at_fixed\":{},\"cpu_us_per_delivery\":{},\"p50_us\":{},\"p99_us\":{},\"max_deliveries_per_s\":{},\"cpu_us_per_delivery_at_max\":{},\"idle_bytes_per_conn\":{},\"lost_at_fixed\":{}}}",
            num(f.load.per_sec),
            num(f.load.cpu_us_per_delivery),
            num(f.load.p50_us),
            num(f.load.p99_us),
            num(f.max.per_sec),
            num(f.max.cpu_us_per_delivery),
            num(f.idle_bytes_per_conn),
            f.load.expected - f.load.delivered.min(f.load.expected),
        ));
    }
    if let Some(m) = &mycel {
        let goal_cpu = y
            .as_ref()
            .map(|y| m.load.cpu_us_per_delivery <= y.load.cpu_us_per_delivery / 25.0);
        if let Some(y) = &y {
            let cpu_ratio = y.load.cpu_us_per_delivery / m.load.cpu_us_per_delivery;
            let max_cpu_ratio = y.max.cpu_us_per_delivery / m.max.cpu_us_per_delivery;
            let mem_ratio = y.idle_bytes_per_conn / m.idle_bytes_per_conn;
            let tput_ratio = m.max.per_sec / y.max.per_sec;
            println!("== ratios (y-websocket / mycel-relay)");
            println!(
                "  CPU per delivery at {:.0}/s: {cpu_ratio:.1}x less for mycel-relay (goal >= 25x)",
                opts.rate
            );
            println!("  CPU per delivery at high load: {max_cpu_ratio:.1}x");
            println!("  idle memory per connection: {mem_ratio:.1}x less for mycel-relay");
            println!("  deliveries/s at high load: {tput_ratio:.1}x more for mycel-relay");
            json.push_str(&format!(
                ",\"ratio_cpu_per_delivery\":{},\"ratio_cpu_per_delivery_at_max\":{},\"ratio_idle_memory\":{},\"ratio_max_throughput\":{}",
                num(cpu_ratio),
                num(max_cpu_ratio),
                num(mem_ratio),
                num(tput_ratio)
            ));
        }
        if let Ok(f) = &floor {
            println!(
                "  mycel-relay CPU per delivery at {:.0}/s: {:.1}x the bare-write floor",
                opts.rate,
                m.load.cpu_us_per_delivery / f.us_per_write
            );
            if let Some(y) = &y {
                println!(
                    "  1/25 of y-websocket's CPU per delivery = {:.3} us = {:.2}x the floor of one write per delivery",
                    y.load.cpu_us_per_delivery / 25.0,
                    y.load.cpu_us_per_delivery / 25.0 / f.us_per_write
                );
            }
            json.push_str(&format!(
                ",\"floor_write_us\":{},\"floor_frame_bytes\":{}",
                num(f.us_per_write),
                f.frame_bytes
            ));
        }
        let goal_mem = m.idle_bytes_per_conn <= 2048.0;
        let goal_lat = m.load.p99_us < 1000.0 && m.load.per_sec >= 0.95 * opts.rate;
        println!("== goals");
        println!(
            "  CPU/delivery <= 1/25 of y-websocket: {}",
            match goal_cpu {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            }
        );
        println!(
            "  idle memory <= 2 KiB/connection: {} ({:.0} B)",
            if goal_mem { "met" } else { "NOT met" },
            m.idle_bytes_per_conn
        );
        println!(
            "  p99 latency < 1 ms at {:.0} deliveries/s: {} (p99 {:.0} us)",
            opts.rate,
            if goal_lat { "met" } else { "NOT met" },
            m.load.p99_us
        );
        json.push_str(&format!(
            ",\"goal_cpu\":{},\"goal_memory\":{goal_mem},\"goal_latency\":{goal_lat}",
            goal_cpu.map_or("null".to_string(), |g| g.to_string())
        ));
    }
    if !notes.is_empty() {
        let joined = notes.join("; ").replace('\\', "\\\\").replace('"', "'");
        json.push_str(&format!(",\"notes\":\"{joined}\""));
    }
    json.push('}');
    json
}

/// What one delivery costs at least when it is one write: the CPU time of
/// a bare `write(2)` of a delivery-sized WebSocket frame to a loopback TCP
/// socket, measured on this thread (utime + stime from /proc).
struct Floor {
    frame_bytes: usize,
    us_per_write: f64,
}

fn write_floor() -> Result<Floor, String> {
    use std::io::{Read, Write};
    const SOCKETS: usize = 100;
    const WRITES: usize = 100_000;
    let event = RelayEvent::Message {
        room: RoomId([7; 32]),
        from: mycel_core::wire::PeerTag(9),
        payload: vec![0u8; PAYLOAD].into(),
    };
    // A server-to-client WebSocket frame: 2-byte header (payload < 126).
    let mut frame = vec![0x82, 0];
    let body = encode_frame(&event);
    frame[1] = u8::try_from(body.len()).map_err(|_| "frame too long".to_string())?;
    frame.extend_from_slice(&body);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for _ in 0..SOCKETS {
        let c = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let (s, _) = listener.accept().map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        c.set_nonblocking(true).map_err(|e| e.to_string())?;
        writers.push(s);
        readers.push(c);
    }
    let total = WRITES * frame.len();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let (mut got, deadline) = (0, Instant::now() + Duration::from_secs(60));
        while got < total && Instant::now() < deadline {
            for r in &mut readers {
                if let Ok(n) = r.read(&mut buf) {
                    got += n;
                }
            }
        }
    });
    let cpu0 = thread_cpu_secs()?;
    for i in 0..WRITES {
        writers[i % SOCKETS]
            .write_all(&frame)
            .map_err(|e| e.to_string())?;
    }
    let cpu1 = thread_cpu_secs()?;
    let _ = reader.join();
    Ok(Floor {
        frame_bytes: frame.len(),
        us_per_write: (cpu1 - cpu0) * 1e6 / WRITES as f64,
    })
}

/// CPU seconds (user + system) of the calling thread.
fn thread_cpu_secs() -> Result<f64, String> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").map_err(|e| e.to_string())?;
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or("unexpected /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| "unexpected /proc stat".to_string())
    };
    // Fields after the name: state is 0, utime 11, stime 12 (clock ticks).
    Ok((ticks(11)? + ticks(12)?) / clk_tck())
}

/// `--scale-out`: one relay against two sharing rooms through NATS.
mod scale_out {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::{Kind, LoadResult, Opts, Server, free_port, load, load_max, num, print_load};

    /// `nats-server` on 127.0.0.1, killed on drop.
    struct Nats {
        child: Child,
        port: u16,
    }

    impl Nats {
        async fn start() -> Result<Nats, String> {
            let port = free_port()?;
            let bin = std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
            let child = Command::new(&bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!(
                        "cannot start {bin} ({e}); install Debian's nats-server or set NATS_SERVER"
                    )
                })?;
            let nats = Nats { child, port };
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                if Instant::now() > deadline {
                    return Err("nats-server did not listen within 10 s".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(nats)
        }

        fn url(&self) -> String {
            format!("nats://127.0.0.1:{}", self.port)
        }

        /// CPU seconds of the NATS process so far.
        fn cpu_secs(&self) -> f64 {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .unwrap_or_default();
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (ticks(11) + ticks(12)) / super::clk_tck()
        }
    }

    impl Drop for Nats {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Waits (bounded) until the relay's `/healthz` says "ok": connected to
    /// its backplane, so rooms span both relays from the first publish.
    async fn until_healthy(port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
                let req = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
                let mut body = String::new();
                if s.write_all(req.as_bytes()).await.is_ok()
                    && s.read_to_string(&mut body).await.is_ok()
                    && body.ends_with("\r\n\r\nok\n")
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("relay on port {port} not healthy within 15 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    struct Phase {
        fixed: LoadResult,
        max: LoadResult,
        nats_cpu_secs: f64,
    }

    async fn phase(servers: &[&Server], nats: &Nats, opts: &Opts) -> Result<Phase, String> {
        let nats0 = nats.cpu_secs();
        let fixed = load(Kind::Mycel, servers, opts.rooms, opts.rate, opts.secs).await?;
        print_load("fixed load", &fixed);
        let max = load_max(Kind::Mycel, servers, opts).await?;
        print_load("high load", &max);
        if servers.len() > 1 {
            for (what, r) in [("fixed load", &fixed), ("high load", &max)] {
                println!(
                    "  {what}, deliveries across relays: {} of {}, latency p50 {:.0} us, p99 {:.0} us",
                    r.cross_deliveries, r.delivered, r.cross_p50_us, r.cross_p99_us
                );
            }
        }
        Ok(Phase {
            fixed,
            max,
            nats_cpu_secs: nats.cpu_secs() - nats0,
        })
    }

    pub async fn run(opts: Opts) -> String {
        match measure(&opts).await {
            Ok(json) => json,
            Err(e) => {
                println!("scale-out bench failed: {e}");
                format!(
                    "{{\"bench\":\"scale-out\",\"error\":\"{}\"}}",
                    e.replace('"', "'")
                )
            }
        }
    }

    async fn measure(opts: &Opts) -> Result<String, String> {
        println!(
            "scale-out bench: rooms of {} clients, {} senders per room, {}-byte payloads, {} rooms, {:.1}s per phase",
            super::ROOM_SIZE,
            super::SENDERS,
            super::PAYLOAD,
            opts.rooms,
            opts.secs
        );
        let nats = Nats::start().await?;
        let none = std::path::PathBuf::new();

        println!("== one relay");
        let one = Server::start_with(Kind::Mycel, &none, None).await?;
        let single = phase(&[&one], &nats, opts).await?;
        drop(one);

        println!(
            "== two relays sharing rooms through NATS (each room's clients alternate between them)"
        );
        let a = Server::start_with(Kind::Mycel, &none, Some(&nats.url())).await?;
        let b = Server::start_with(Kind::Mycel, &none, Some(&nats.url())).await?;
        until_healthy(a.port).await?;
        until_healthy(b.port).await?;
        let pair = phase(&[&a, &b], &nats, opts).await?;
        println!(
            "  NATS CPU over both phases: {:.3}s = {:.3} us per delivery",
            pair.nats_cpu_secs,
            pair.nats_cpu_secs * 1e6 / (pair.fixed.delivered + pair.max.delivered).max(1) as f64
        );
        drop((a, b));

        let tput = pair.max.per_sec / single.max.per_sec;
        // Capacity when each relay has a core of its own (a real deployment;
        // here two relays, NATS and the load generator share two cores):
        // deliveries per second of relay CPU, two relays against one.
        let capacity = 2.0 * single.max.cpu_us_per_delivery / pair.max.cpu_us_per_delivery;
        let lat_ok = pair.fixed.cross_p99_us < 2000.0;
        println!("== ratios (two relays / one)");
        println!(
            "  deliveries/s at high load: {:.0} vs {:.0} = {tput:.2}x (goal >= 1.6x; measured with everything on this machine's cores)",
            pair.max.per_sec, single.max.per_sec
        );
        println!(
            "  relay CPU per delivery at high load: {:.3} vs {:.3} us; capacity with a core per relay = 2 x {:.3} / {:.3} = {capacity:.2}x",
            pair.max.cpu_us_per_delivery,
            single.max.cpu_us_per_delivery,
            single.max.cpu_us_per_delivery,
            pair.max.cpu_us_per_delivery
        );
        println!(
            "  cross-relay p99 at {:.0} deliveries/s: {:.0} us (goal < 2 ms: {})",
            opts.rate,
            pair.fixed.cross_p99_us,
            if lat_ok { "met" } else { "NOT met" }
        );
        let fig = |r: &LoadResult| {
            format!(
                "{{\"deliveries_per_s\":{},\"cpu_us_per_delivery\":{},\"p50_us\":{},\"p99_us\":{},\"cross_p50_us\":{},\"cross_p99_us\":{},\"lost\":{}}}",
                num(r.per_sec),
                num(r.cpu_us_per_delivery),
                num(r.p50_us),
                num(r.p99_us),
                num(r.cross_p50_us),
                num(r.cross_p99_us),
                r.expected - r.delivered.min(r.expected)
            )
        };
        Ok(format!(
            "{{\"bench\":\"scale-out\",\"rooms\":{},\"one_relay\":{{\"fixed\":{},\"max\":{}}},\"two_relays\":{{\"fixed\":{},\"max\":{},\"nats_cpu_s\":{}}},\"ratio_max_deliveries\":{},\"ratio_capacity_per_relay_core\":{},\"goal_cross_p99\":{lat_ok}}}",
            opts.rooms,
            fig(&single.fixed),
            fig(&single.max),
            fig(&pair.fixed),
            fig(&pair.max),
            num(pair.nats_cpu_secs),
            num(tput),
            num(capacity)
        ))
    }
}
