//! Test support: an in-process relay on 127.0.0.1:0, a wire-level client
//! over tokio-tungstenite, and a reconnecting client with backoff + jitter.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mycel_core::id::RoomId;
use mycel_core::wire::{MAX_FRAME, PeerTag, RelayEvent, RelayRequest, decode_frame, encode_frame};
use mycel_relay::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(5);

/// A relay running in this process.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), mycel_relay::RelayError>>>,
}

impl Relay {
    pub async fn start(config: Config) -> Relay {
        let listener = mycel_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Self::start_on(config, listener).await
    }

    pub async fn start_on(config: Config, listener: TcpListener) -> Relay {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(mycel_relay::serve(config, listener, async move {
            let _ = rx.await;
        }));
        Relay {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Triggers graceful shutdown and waits (bounded) for `serve` to return.
    pub async fn stop(mut self) -> Duration {
        let t0 = std::time::Instant::now();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            timeout(Duration::from_secs(20), task)
                .await
                .expect("serve returns within its shutdown bound")
                .unwrap()
                .unwrap();
        }
        t0.elapsed()
    }

    /// A plain HTTP GET; returns (status line + headers, body).
    pub async fn get(&self, path: &str) -> (String, Vec<u8>) {
        http_get(self.addr, path).await
    }

    pub async fn metrics(&self) -> String {
        String::from_utf8(self.get("/metrics").await.1).unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads one metric's value (first line starting with `name `).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} missing"))
        .trim()
        .parse()
        .unwrap()
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    (head, buf[split + 4..].to_vec())
}

pub fn room(n: u64) -> RoomId {
    let mut r = [0u8; 32];
    r[..8].copy_from_slice(&n.to_le_bytes());
    r[31] = 0xAB;
    RoomId(r)
}

/// A wire-level relay client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Self::try_connect(url).await.expect("connect")
    }

    pub async fn try_connect(url: &str) -> Result<Client, tungstenite::Error> {
        // Small read buffers: some tests hold thousands of clients.
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        match timeout(WAIT, connect).await {
            Ok(r) => r.map(|(ws, _)| Client { ws }),
            Err(_) => Err(tungstenite::Error::Io(std::io::ErrorKind::TimedOut.into())),
        }
    }

    pub async fn send(&mut self, req: &RelayRequest) {
        self.ws
            .send(Message::Binary(encode_frame(req).into()))
            .await
            .unwrap();
    }

    /// Queues without flushing (for bursts); call `flush`.
    pub async fn feed(&mut self, req: &RelayRequest) {
        self.ws
            .feed(Message::Binary(encode_frame(req).into()))
            .await
            .unwrap();
    }

    pub async fn flush(&mut self) {
        self.ws.flush().await.unwrap();
    }

    /// The next relay event; panics on timeout, close or a non-binary message.
    pub async fn recv(&mut self) -> RelayEvent {
        self.try_recv(WAIT).await.expect("an event in time")
    }

    /// The next relay event within `d`, or `None`.
    pub async fn try_recv(&mut self, d: Duration) -> Option<RelayEvent> {
        loop {
            match timeout(d, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Binary(b)))) => {
                    return Some(decode_frame::<RelayEvent>(&b, MAX_FRAME).expect("valid frame"));
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    pub async fn join(&mut self, room: RoomId) -> (PeerTag, Vec<PeerTag>) {
        self.send(&RelayRequest::Join { room }).await;
        match self.recv().await {
            RelayEvent::Joined {
                room: r,
                you,
                peers,
            } if r == room => (you, peers),
            other => panic!("expected Joined, got {other:?}"),
        }
    }

    /// Reads until the relay closes; returns its close frame.
    pub async fn closed(&mut self, d: Duration) -> Option<CloseFrame> {
        let end = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(end, self.ws.next()).await {
                Err(_) => panic!("no close within {d:?}"),
                Ok(Some(Ok(Message::Close(f)))) => return f,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return None,
            }
        }
    }
}

/// Raises this process's soft file-descriptor limit to `want` (bounded by
/// the hard limit) and returns the new soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    let target = want.min(hard);
    if soft < target {
        rlimit::Resource::NOFILE.set(target, hard).unwrap();
    }
    rlimit::Resource::NOFILE.get().unwrap().0
}

/// A client that keeps a relay connection up: on loss it reconnects with
/// exponential backoff and full jitter, then rejoins its rooms. It counts
/// attempts so tests can check the backoff is bounded.
pub struct Reconnecting {
    url: String,
    rooms: Vec<RoomId>,
    pub client: Option<Client>,
    pub attempts: u32,
    pub reconnects: u32,
    base: Duration,
    cap: Duration,
    rng: u64,
}

impl Reconnecting {
    pub fn new(url: String, rooms: Vec<RoomId>, seed: u64) -> Reconnecting {
        Reconnecting {
            url,
            rooms,
            client: None,
            attempts: 0,
            reconnects: 0,
            base: Duration::from_millis(20),
            cap: Duration::from_millis(500),
            rng: seed | 1,
        }
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        // xorshift64: deterministic per seed, no shared RNG in tests.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let ms = max.as_millis().max(1) as u64;
        Duration::from_millis(self.rng % (ms + 1))
    }

    /// Connects (retrying until `deadline`) and joins every room.
    pub async fn ensure(&mut self, deadline: tokio::time::Instant) -> Result<(), String> {
        if self.client.is_some() {
            return Ok(());
        }
        let mut failures = 0u32;
        loop {
            self.attempts += 1;
            if let Ok(mut c) = Client::try_connect(&self.url).await {
                let mut ok = true;
                for r in self.rooms.clone() {
                    c.send(&RelayRequest::Join { room: r }).await;
                    match c.try_recv(WAIT).await {
                        Some(RelayEvent::Joined { .. }) => {}
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                }
                if ok {
                    self.client = Some(c);
                    return Ok(());
                }
            }
            failures += 1;
            // Full jitter: uniform in [0, min(cap, base * 2^failures)].
            let exp = self
                .base
                .saturating_mul(1u32 << failures.min(10))
                .min(self.cap);
            let wait = self.jitter(exp);
            if tokio::time::Instant::now() + wait > deadline {
                return Err(format!("gave up after {} attempts", self.attempts));
            }
            tokio::time::sleep(wait).await;
        }
    }

    pub fn rooms_contain(&self, r: &RoomId) -> bool {
        self.rooms.contains(r)
    }

    /// Marks the connection lost (the caller saw it close).
    pub fn lost(&mut self) {
        if self.client.take().is_some() {
            self.reconnects += 1;
        }
    }
}
