//! One WebSocket connection, driven by one task, over the raw TCP stream
//! (after the HTTP upgrade; framing in [`crate::ws`]).
//!
//! The task multiplexes three things in a single `poll_fn`: writing the
//! connection's outbox to the socket (up to 64 frames per `writev`, so a
//! burst costs one syscall, not one per frame), reading and handling the
//! client's frames, and a keepalive timer. Handling a frame never waits:
//! room operations only lock a registry shard and push into outboxes, and
//! replies to the client go through its own outbox like everything else,
//! so ordering is preserved and a client that does not read its replies
//! overflows like any other slow consumer.
//!
//! Memory: an idle connection holds no read or write buffer. Reads go to a
//! stack buffer and are parsed in place; only an incomplete frame is
//! copied aside (and freed when complete). The task itself is a
//! hand-written future, [`ConnTask`]: an `async fn` keeps its arguments
//! and every local live across an await side by side, which made each
//! idle connection's task 896 bytes (tokio rounds a task up to 128-byte
//! alignment); the closing steps are boxed and allocated only at close.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mycel_core::id::RoomId;
use mycel_core::wire::{self, PeerTag, RelayEvent, RelayRequest, WireError, relay_error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::close_code;
use crate::metrics::Reject;
use crate::registry::{Kick, Outbox, RoomError};
use crate::server::{Shared, TcpSlot};
use crate::ws::{self, Out};

/// Most frames in one `writev` (two slices each).
const MAX_INFLIGHT: usize = 64;

/// Bytes read per `read` call, into a buffer on the stack (not in the
/// task: a buffer in the task would cost every idle connection).
const READ_CHUNK: usize = 16 * 1024;

/// Reads (and writes) per poll before yielding to other tasks.
const ROUNDS: usize = 4;

/// Consecutive rate-limited frames after which the connection is closed:
/// a client that keeps sending past its limit is not listening to errors.
const MAX_STRIKES: u32 = 64;

/// Time allowed to send a close frame and see the client's reply.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client is gone (EOF or a socket error): nothing more to send.
    Gone,
    /// The client sent a close frame: answer it with this code.
    Answer(u16),
    /// Send this close frame, then give the client a moment to answer.
    Close(u16, &'static str),
}

/// The rate limiter's verdict on one frame.
enum Admit {
    Pass,
    /// Dropped, and the client told so.
    Refused,
    /// Refused too often in a row: close.
    Close(End),
}

/// A token bucket's level; its rate and size are the relay's config
/// (kept there, not per connection).
#[derive(Debug)]
struct Bucket {
    tokens: f64,
}

impl Bucket {
    fn refill(&mut self, secs: f64, rate: f64, burst: f64) {
        self.tokens = (self.tokens + secs * rate).min(burst);
    }
}

/// A fragmented message being assembled: its opcode and payload so far.
type Fragments = Box<(u8, Vec<u8>)>;

struct Conn {
    stream: TcpStream,
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    id: u64,
    /// The TCP connection's place in the per-IP and total counts,
    /// released when this is dropped.
    slot: Arc<TcpSlot>,
    /// Rooms joined, with this connection's tag in each. A Vec: few rooms
    /// per connection, and it costs nothing until the first join.
    rooms: Vec<(RoomId, PeerTag)>,
    /// An incomplete frame (empty and unallocated between frames).
    rbuf: Vec<u8>,
    /// A fragmented message being assembled (boxed: rare, and the box
    /// keeps every connection 24 bytes smaller).
    frag: Option<Fragments>,
    /// Frames being written; `woff` bytes of the first are already out.
    writer: VecDeque<Out>,
    woff: usize,
    /// Bytes of an oversized frame not yet received, skipped while closing.
    discard: u64,
    frames: Bucket,
    bytes: Bucket,
    refilled: Instant,
    strikes: u32,
    last_rx: Instant,
    pinged: bool,
}

pin_project_lite::pin_project! {
    /// One upgraded WebSocket's task: live until the connection ends,
    /// then its closing steps. Made by [`run`].
    pub(crate) struct ConnTask {
        // `None` once the connection has ended and moved into `closing`.
        conn: Option<Conn>,
        // The keepalive timer (ping, then idle timeout).
        #[pin]
        timer: Sleep,
        closing: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    }
}

/// Starts driving one upgraded WebSocket; the returned task runs until it
/// ends. `pre` holds bytes the HTTP layer read past the handshake. `slot`
/// is the TCP connection's place in the per-IP and total counts, released
/// when the task ends.
pub(crate) fn run(
    stream: TcpStream,
    pre: Bytes,
    shared: Arc<Shared>,
    slot: Arc<TcpSlot>,
) -> ConnTask {
    let id = shared.register_conn();
    let outbox = shared.conn_outbox(id);
    let metrics = &shared.metrics;
    metrics.connections.fetch_add(1, Relaxed);
    metrics.connections_total.fetch_add(1, Relaxed);
    tracing::debug!(conn = id, peer = %slot.addr, "websocket open");

    let cfg = &shared.config;
    let now = Instant::now();
    let timer = tokio::time::sleep(cfg.ping_interval.0);
    let mut conn = Conn {
        stream,
        frames: Bucket {
            tokens: f64::from(cfg.burst_frames),
        },
        bytes: Bucket {
            tokens: cfg.burst_bytes.0 as f64,
        },
        refilled: now,
        strikes: 0,
        last_rx: now,
        pinged: false,
        rooms: Vec::new(),
        rbuf: Vec::new(),
        frag: None,
        writer: VecDeque::new(),
        woff: 0,
        discard: 0,
        outbox,
        id,
        slot,
        shared: shared.clone(),
    };
    // `pre` may share hyper's whole read buffer (8 KiB or more): copy the
    // few bytes out and release it now, not when the connection ends.
    let mut early = pre.to_vec();
    drop(pre);
    match conn.ingest(&mut early) {
        Ok(()) => ConnTask {
            conn: Some(conn),
            timer,
            closing: None,
        },
        Err(end) => ConnTask {
            conn: None,
            timer,
            closing: Some(Box::pin(conn.close(end))),
        },
    }
}

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Some(conn) = this.conn.as_mut() {
            let Poll::Ready(end) = conn.poll(this.timer.as_mut(), cx) else {
                return Poll::Pending;
            };
            if let Some(conn) = this.conn.take() {
                *this.closing = Some(Box::pin(conn.close(end)));
            }
        }
        match this.closing.as_mut() {
            Some(closing) => closing.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Conn {
    fn poll(&mut self, mut timer: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<End> {
        // Register before looking at the outbox so a push racing with this
        // poll wakes us again.
        self.outbox.register(cx.waker());
        // A kick must be seen even while the socket is blocked.
        if let Some(k) = self.outbox.kicked() {
            return Poll::Ready(kicked(k));
        }
        for round in 0..ROUNDS {
            if let Err(end) = self.poll_write(cx) {
                return Poll::Ready(end);
            }
            match self.poll_read(cx) {
                Err(end) => return Poll::Ready(end),
                // Nothing more to read: done until woken.
                Ok(false) => break,
                // Read something: loop to write its replies and read again,
                // but yield to other connections after a few rounds.
                Ok(true) => {
                    if round + 1 == ROUNDS {
                        cx.waker().wake_by_ref();
                    }
                }
            }
        }
        if timer.as_mut().poll(cx).is_ready() {
            if let Some(end) = self.on_tick(timer.as_mut()) {
                return Poll::Ready(end);
            }
            // Poll again soon: registers the re-armed timer and writes a
            // ping if one was queued.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Moves queued frames to the socket. `Ok` also when the socket is full.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), End> {
        for _ in 0..ROUNDS {
            while self.writer.len() < MAX_INFLIGHT {
                match self.outbox.pop() {
                    Err(k) => return Err(kicked(k)),
                    Ok(None) => break,
                    Ok(Some(frame)) => self.writer.push_back(Out::binary(frame)),
                }
            }
            if self.writer.is_empty() {
                // Idle connections keep no write queue allocated.
                self.writer = VecDeque::new();
                return Ok(());
            }
            match self.stream.poll_write_ready(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Err(_)) => return Err(End::Gone),
                Poll::Ready(Ok(())) => {}
            }
            match self.write_some() {
                Ok(()) => {}
                // Readiness was stale; the next poll_write_ready registers us.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(End::Gone),
            }
        }
        // Still more to write: come back after others had a turn.
        cx.waker().wake_by_ref();
        Ok(())
    }

    /// One `writev` of the frames in `writer`.
    fn write_some(&mut self) -> io::Result<()> {
        let mut iov = [IoSlice::new(&[]); 2 * MAX_INFLIGHT];
        let mut k = 0;
        let mut skip = self.woff;
        for out in &self.writer {
            if k + 2 > iov.len() {
                break;
            }
            for part in [out.head(), &out.body[..]] {
                if skip >= part.len() {
                    skip -= part.len();
                } else {
                    iov[k] = IoSlice::new(&part[skip..]);
                    k += 1;
                    skip = 0;
                }
            }
        }
        let n = self.stream.try_write_vectored(&iov[..k])?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut n = n + self.woff;
        while let Some(front) = self.writer.front() {
            if n < front.len() {
                break;
            }
            n -= front.len();
            self.writer.pop_front();
        }
        self.woff = n;
        Ok(())
    }

    /// Writes everything in `writer` (not the outbox): for closing.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.writer.is_empty() {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            match self.write_some() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads and handles what the socket has; `Ok(true)` if it read any.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut any = false;
        for _ in 0..ROUNDS {
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => return Ok(any),
                Poll::Ready(Err(_)) => return Err(End::Gone),
                Poll::Ready(Ok(())) => {}
            }
            match self.stream.try_read(&mut chunk) {
                Ok(0) => return Err(End::Gone),
                Ok(n) => {
                    any = true;
                    self.ingest(&mut chunk[..n])?;
                }
                // Stale readiness: the next poll_read_ready registers us.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(End::Gone),
            }
        }
        Ok(any)
    }

    /// Handles newly read bytes: complete frames in place, the tail of an
    /// incomplete one kept in `rbuf`.
    fn ingest(&mut self, data: &mut [u8]) -> Result<(), End> {
        if data.is_empty() {
            return Ok(());
        }
        if self.rbuf.is_empty() {
            let used = self.frames_in(data)?;
            if used < data.len() {
                self.rbuf.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.extend_from_slice(data);
            let used = self.frames_in(&mut buf)?;
            if used < buf.len() {
                buf.drain(..used);
                self.rbuf = buf;
            }
            // else: dropped, so an idle connection holds no buffer.
        }
        Ok(())
    }

    /// Handles every complete frame at the start of `data`; returns the
    /// bytes consumed.
    fn frames_in(&mut self, data: &mut [u8]) -> Result<usize, End> {
        let max = self.shared.config.max_frame.0 as u64;
        let mut pos = 0;
        loop {
            let head = match ws::parse_head(&data[pos..]) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(pos),
                Err(e) => {
                    tracing::debug!(error = e.0, "websocket protocol error");
                    return Err(End::Close(close_code::PROTOCOL, e.0));
                }
            };
            // Limits apply from the header, before any payload is kept.
            let assembled = self.frag.as_ref().map_or(0, |f| f.1.len() as u64);
            if !head.is_control() && head.len + assembled > max {
                self.shared.metrics.reject(Reject::TooLarge);
                let have = (data.len() - pos - head.size) as u64;
                self.discard = head.len.saturating_sub(have);
                return Err(End::Close(close_code::TOO_LARGE, "frame too large"));
            }
            let start = pos + head.size;
            let Some(end) = usize::try_from(head.len)
                .ok()
                .and_then(|l| start.checked_add(l))
                .filter(|e| *e <= data.len())
            else {
                return Ok(pos);
            };
            let payload = &mut data[start..end];
            ws::unmask(payload, head.mask, 0);
            self.on_ws_frame(head, payload)?;
            pos = end;
        }
    }

    fn on_ws_frame(&mut self, head: ws::Head, payload: &[u8]) -> Result<(), End> {
        match head.opcode {
            ws::OP_CLOSE => {
                // Echo a valid status code; 1000 if there was none.
                let code = match payload {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => 1000,
                };
                let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                Err(End::Answer(if valid { code } else { close_code::PROTOCOL }))
            }
            ws::OP_PONG => {
                self.heard();
                Ok(())
            }
            ws::OP_PING => {
                self.heard();
                match self.admit(0) {
                    // Pongs bypass the outbox; bound them the same way.
                    Admit::Pass if self.writer.len() >= 2 * MAX_INFLIGHT => {
                        Err(kicked(Kick::SlowConsumer))
                    }
                    Admit::Pass => {
                        self.writer
                            .push_back(Out::new(ws::OP_PONG, Bytes::copy_from_slice(payload)));
                        Ok(())
                    }
                    Admit::Refused => Ok(()),
                    Admit::Close(end) => Err(end),
                }
            }
            ws::OP_TEXT | ws::OP_BINARY => {
                if self.frag.is_some() {
                    return Err(End::Close(
                        close_code::PROTOCOL,
                        "new message inside a fragmented one",
                    ));
                }
                if head.fin {
                    self.on_message(head.opcode, payload)
                } else {
                    self.frag = Some(Box::new((head.opcode, payload.to_vec())));
                    Ok(())
                }
            }
            _ => {
                // OP_CONT (parse_head admits no other opcode).
                let Some(mut frag) = self.frag.take() else {
                    return Err(End::Close(
                        close_code::PROTOCOL,
                        "continuation without a message",
                    ));
                };
                frag.1.extend_from_slice(payload);
                if head.fin {
                    self.on_message(frag.0, &frag.1)
                } else {
                    self.frag = Some(frag);
                    Ok(())
                }
            }
        }
    }

    fn heard(&mut self) {
        self.last_rx = Instant::now();
        self.pinged = false;
    }

    /// Counts one incoming frame of `len` bytes and applies the rate limit.
    fn admit(&mut self, len: usize) -> Admit {
        let m = &self.shared.metrics;
        m.frames_in.fetch_add(1, Relaxed);
        m.bytes_in.fetch_add(len as u64, Relaxed);
        let cfg = &self.shared.config;
        let now = self.last_rx;
        let secs = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.frames.refill(
            secs,
            f64::from(cfg.rate_frames),
            f64::from(cfg.burst_frames),
        );
        self.bytes
            .refill(secs, cfg.rate_bytes.0 as f64, cfg.burst_bytes.0 as f64);
        if self.frames.tokens < 1.0 || self.bytes.tokens < len as f64 {
            m.reject(Reject::RateLimited);
            self.strikes += 1;
            if self.strikes >= MAX_STRIKES {
                return Admit::Close(End::Close(close_code::RATE_LIMITED, "rate limit exceeded"));
            }
            // Tell the client; the frame is dropped (a ping gets no pong).
            self.error(
                relay_error::RATE_LIMITED,
                "rate limit exceeded: frame dropped",
            );
            return Admit::Refused;
        }
        self.strikes = 0;
        self.frames.tokens -= 1.0;
        self.bytes.tokens -= len as f64;
        Admit::Pass
    }

    /// Handles one complete text or binary message.
    fn on_message(&mut self, opcode: u8, payload: &[u8]) -> Result<(), End> {
        self.heard();
        match self.admit(payload.len()) {
            Admit::Pass => {}
            Admit::Refused => return Ok(()),
            Admit::Close(end) => return Err(end),
        }
        if opcode == ws::OP_TEXT {
            self.shared.metrics.reject(Reject::Text);
            self.error(
                relay_error::BAD_FRAME,
                "text messages are not part of the protocol",
            );
            return Ok(());
        }
        match self.on_frame(payload) {
            Some(end) => Err(end),
            None => Ok(()),
        }
    }

    fn on_tick(&mut self, timer: Pin<&mut Sleep>) -> Option<End> {
        let cfg = &self.shared.config;
        let now = Instant::now();
        let silent = now.saturating_duration_since(self.last_rx);
        if silent >= cfg.idle_timeout.0 {
            self.shared.metrics.idle_timeouts.fetch_add(1, Relaxed);
            return Some(End::Close(close_code::IDLE_TIMEOUT, "idle timeout"));
        }
        if silent >= cfg.ping_interval.0 && !self.pinged {
            // A WebSocket ping: browsers answer it without app code.
            self.writer.push_back(Out::new(ws::OP_PING, Bytes::new()));
            self.pinged = true;
        }
        // Re-armed from the last activity rather than reset on every
        // frame: a busy connection touches the timer wheel once per
        // interval.
        let next = if self.pinged {
            self.last_rx + cfg.idle_timeout.0
        } else {
            self.last_rx + cfg.ping_interval.0
        };
        timer.reset(tokio::time::Instant::from_std(
            next.max(now + Duration::from_millis(1)),
        ));
        None
    }

    /// Handles one relay request frame.
    fn on_frame(&mut self, bytes: &[u8]) -> Option<End> {
        let m = self.shared.metrics.clone();
        let req = match wire::decode_frame::<RelayRequest>(bytes, self.shared.config.max_frame.0) {
            Ok(req) => req,
            Err(WireError::UnsupportedVersion(v)) => {
                m.reject(Reject::UnsupportedVersion);
                return self.error(
                    relay_error::UNSUPPORTED_VERSION,
                    &format!(
                        "wire version {v} is not supported (this relay speaks {})",
                        wire::WIRE_VERSION
                    ),
                );
            }
            Err(WireError::TooLarge { .. }) => {
                // The WebSocket limit normally catches this first.
                m.reject(Reject::TooLarge);
                return self.error(relay_error::FRAME_TOO_LARGE, "frame too large");
            }
            Err(e) => {
                m.reject(Reject::BadFrame);
                return self.error(relay_error::BAD_FRAME, &e.to_string());
            }
        };
        match req {
            RelayRequest::Join { room } => self.join(room),
            RelayRequest::Leave { room } => {
                let Some(i) = self.rooms.iter().position(|(r, _)| *r == room) else {
                    return self.not_joined(&room);
                };
                let (_, tag) = self.rooms.swap_remove(i);
                self.shared.registry.leave(room, tag);
                None
            }
            RelayRequest::Publish { room, payload } => {
                let Some(from) = self.tag(&room) else {
                    return self.not_joined(&room);
                };
                // Encoded once; every recipient shares these bytes.
                let frame = match self.message(RelayEvent::Message {
                    room,
                    from,
                    payload,
                }) {
                    Ok(f) => f,
                    Err(end) => return end,
                };
                self.shared.registry.publish(&room, from, &frame);
                None
            }
            RelayRequest::Send { room, to, payload } => {
                let Some(from) = self.tag(&room) else {
                    return self.not_joined(&room);
                };
                let frame = match self.message(RelayEvent::Message {
                    room,
                    from,
                    payload,
                }) {
                    Ok(f) => f,
                    Err(end) => return end,
                };
                match self.shared.registry.send(&room, to, frame) {
                    Ok(_) => None,
                    Err(RoomError::UnknownPeer) => {
                        m.reject(Reject::UnknownPeer);
                        self.error(
                            relay_error::UNKNOWN_PEER,
                            &format!("no peer {} in room {room}", to.0),
                        )
                    }
                }
            }
            RelayRequest::Ping { nonce } => {
                self.reply(&RelayEvent::Pong { nonce });
                None
            }
        }
    }

    /// Encodes the `Message` a publish or send becomes. The relay never
    /// emits a frame above `--max-frame`: a `Message` is a few bytes larger
    /// than the `Publish` it came from (it carries the sender's tag), so a
    /// request right at the limit is refused rather than relayed as a frame
    /// the recipients would have to refuse.
    fn message(&mut self, ev: RelayEvent) -> Result<Bytes, Option<End>> {
        let frame = Bytes::from(wire::encode_frame(&ev));
        let max = self.shared.config.max_frame.0;
        if frame.len() > max {
            self.shared.metrics.reject(Reject::TooLarge);
            return Err(self.error(
                relay_error::FRAME_TOO_LARGE,
                &format!(
                    "the relayed message would be {} bytes, above the limit of {max}",
                    frame.len()
                ),
            ));
        }
        Ok(frame)
    }

    fn join(&mut self, room: RoomId) -> Option<End> {
        if let Some(you) = self.tag(&room) {
            // Idempotent: the same tag, the current others.
            let peers = self.shared.registry.peers(&room, you);
            self.reply(&RelayEvent::Joined { room, you, peers });
            return None;
        }
        if self.rooms.len() >= self.shared.config.max_rooms_per_conn {
            self.shared.metrics.reject(Reject::TooManyRooms);
            return self.error(
                relay_error::TOO_MANY_ROOMS,
                &format!(
                    "this connection is in {} rooms, the most allowed",
                    self.rooms.len()
                ),
            );
        }
        let (tag, _) = self.shared.registry.join(room, &self.outbox);
        self.rooms.push((room, tag));
        None
    }

    fn tag(&self, room: &RoomId) -> Option<PeerTag> {
        self.rooms.iter().find(|(r, _)| r == room).map(|(_, t)| *t)
    }

    fn not_joined(&mut self, room: &RoomId) -> Option<End> {
        self.shared.metrics.reject(Reject::NotJoined);
        self.error(
            relay_error::NOT_JOINED,
            &format!("not joined to room {room}"),
        )
    }

    fn error(&mut self, code: u16, message: &str) -> Option<End> {
        self.reply(&RelayEvent::Error {
            code,
            message: message.into(),
        });
        None
    }

    /// Queues a frame to this connection. Overflow here kicks it like any
    /// other slow consumer; the next poll sees that.
    fn reply(&mut self, ev: &RelayEvent) {
        let frame = Bytes::from(wire::encode_frame(ev));
        let len = frame.len();
        if self.outbox.push(frame) == crate::registry::Pushed::Queued {
            self.shared.metrics.sent(1, len);
        }
    }

    /// Ends the connection: leaves its rooms, then [`Conn::finish`].
    async fn close(mut self, end: End) {
        let shared = self.shared.clone();
        if let End::Close(close_code::SLOW_CONSUMER, _) = end {
            shared.metrics.slow_consumers.fetch_add(1, Relaxed);
        }
        // Leave every room first, so the others learn at once and not
        // after the close handshake.
        for (room, tag) in std::mem::take(&mut self.rooms) {
            shared.registry.leave(room, tag);
        }
        shared.unregister_conn(self.id);
        shared.metrics.connections.fetch_sub(1, Relaxed);
        let (id, peer) = (self.id, self.slot.addr);
        // Consumes `self`: the TCP slot is released when this returns.
        self.finish(end).await;
        tracing::debug!(conn = id, %peer, ?end, "websocket closed");
    }

    /// Sends the close frame (if any), waits (bounded) for the client's,
    /// then closes the TCP connection cleanly (FIN, not RST).
    async fn finish(mut self, end: End) {
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        let (frame, await_reply) = match end {
            End::Gone => return,
            End::Answer(code) => (Out::close(code, ""), false),
            End::Close(code, reason) => (Out::close(code, reason), true),
        };
        if matches!(end, End::Close(close_code::SLOW_CONSUMER, _)) {
            // It cannot keep up: only finish a partly written frame (else
            // the stream is corrupt) before the close frame.
            self.writer.truncate(usize::from(self.woff > 0));
        } else {
            // A graceful close delivers what was already accepted for it.
            let queued = self.outbox.take_all();
            self.writer.extend(queued.into_iter().map(Out::binary));
        }
        self.writer.push_back(frame);
        let flushed = tokio::time::timeout_at(deadline, poll_fn(|cx| self.poll_flush(cx))).await;
        if !matches!(flushed, Ok(Ok(()))) {
            return;
        }
        if await_reply {
            let _ = tokio::time::timeout_at(deadline, self.await_close()).await;
        }
        let _ = self.stream.shutdown().await;
        // Read what is still in flight so closing does not reset the
        // connection (a reset can destroy our close frame in transit).
        let mut sink = vec![0u8; 4096];
        let _ = tokio::time::timeout_at(deadline, async {
            while let Ok(n) = self.stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// Reads until the client's close frame (or EOF), skipping everything
    /// else, including the rest of an oversized frame.
    async fn await_close(&mut self) {
        let mut chunk = vec![0u8; 16 * 1024];
        let mut pending = std::mem::take(&mut self.rbuf);
        pending.clear();
        loop {
            let Ok(n) = self.stream.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            let mut data = &chunk[..n];
            let skip = usize::try_from(self.discard)
                .unwrap_or(usize::MAX)
                .min(data.len());
            self.discard -= skip as u64;
            data = &data[skip..];
            pending.extend_from_slice(data);
            loop {
                match ws::parse_head(&pending) {
                    Ok(Some(h)) if h.opcode == ws::OP_CLOSE => return,
                    Ok(Some(h)) => {
                        let total = h.size as u64 + h.len;
                        if (pending.len() as u64) >= total {
                            pending.drain(..total as usize);
                        } else {
                            self.discard = total - pending.len() as u64;
                            pending.clear();
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }
}

fn kicked(k: Kick) -> End {
    match k {
        Kick::SlowConsumer => End::Close(
            close_code::SLOW_CONSUMER,
            "slow consumer: send queue overflowed",
        ),
        Kick::Shutdown => End::Close(close_code::GOING_AWAY, "relay shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task of an idle connection is this future plus tokio's header
    /// and trailer (80 bytes), rounded up to 128: keep it within four
    /// such lines, it is paid per connection.
    #[tokio::test]
    async fn connection_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let shared = Arc::new(Shared::for_tests());
        let slot = shared.test_slot();
        let fut = run(a, Bytes::new(), shared, slot);
        let size = std::mem::size_of_val(&fut);
        println!("connection future: {size} bytes");
        assert!(size <= 400, "connection future is {size} bytes");
    }
}
