//! Counters and gauges, rendered in the Prometheus text format (0.0.4).
//!
//! Hand-written rather than a metrics crate: a dozen atomics are all the
//! relay needs, and the hot path (one publish) touches at most three.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Why an incoming frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Reject {
    /// Larger than `--max-frame` (the connection is closed with 1009).
    TooLarge,
    /// Not a decodable `RelayRequest` frame.
    BadFrame,
    /// Of another major wire version.
    UnsupportedVersion,
    /// A text message (the protocol is binary only).
    Text,
    /// Over the connection's rate limit.
    RateLimited,
    /// A room frame for a room this connection has not joined.
    NotJoined,
    /// `Send` to a tag not in the room.
    UnknownPeer,
    /// `Join` beyond `--max-rooms-per-conn`.
    TooManyRooms,
}

impl Reject {
    const ALL: [Reject; 8] = [
        Reject::TooLarge,
        Reject::BadFrame,
        Reject::UnsupportedVersion,
        Reject::Text,
        Reject::RateLimited,
        Reject::NotJoined,
        Reject::UnknownPeer,
        Reject::TooManyRooms,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::BadFrame => "bad_frame",
            Reject::UnsupportedVersion => "unsupported_version",
            Reject::Text => "text",
            Reject::RateLimited => "rate_limited",
            Reject::NotJoined => "not_joined",
            Reject::UnknownPeer => "unknown_peer",
            Reject::TooManyRooms => "too_many_rooms",
        }
    }
}

/// Why a TCP connection or WebSocket upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Refuse {
    /// `--max-conns-per-ip` reached.
    PerIp,
    /// `--max-connections` reached.
    MaxConnections,
    /// Missing or wrong operator token.
    Unauthorized,
    /// The relay is shutting down.
    ShuttingDown,
}

impl Refuse {
    const ALL: [Refuse; 4] = [
        Refuse::PerIp,
        Refuse::MaxConnections,
        Refuse::Unauthorized,
        Refuse::ShuttingDown,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Refuse::PerIp => "per_ip",
            Refuse::MaxConnections => "max_connections",
            Refuse::Unauthorized => "unauthorized",
            Refuse::ShuttingDown => "shutting_down",
        }
    }
}

/// Every metric the relay exports. All updates are `Relaxed`: these are
/// statistics, nothing synchronises through them.
#[derive(Debug, Default)]
pub struct Metrics {
    pub tcp_connections: AtomicI64,
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub rooms: AtomicI64,
    pub memberships: AtomicI64,
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub idle_timeouts: AtomicU64,
    /// 1 while connected to the NATS backplane (0 without one).
    pub backplane_up: AtomicI64,
    pub backplane_disconnects: AtomicU64,
    pub backplane_in: AtomicU64,
    pub backplane_out: AtomicU64,
    pub backplane_dropped: AtomicU64,
    pub backplane_bad: AtomicU64,
    rejected: [AtomicU64; Reject::ALL.len()],
    refused: [AtomicU64; Refuse::ALL.len()],
}

impl Metrics {
    pub fn reject(&self, why: Reject) {
        self.rejected[why as usize].fetch_add(1, Relaxed);
    }
    pub fn refuse(&self, why: Refuse) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }
    pub fn rejected(&self, why: Reject) -> u64 {
        self.rejected[why as usize].load(Relaxed)
    }
    pub fn refused(&self, why: Refuse) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }
    /// Counts frames queued to recipients (`n` copies of `len` bytes).
    pub fn sent(&self, n: usize, len: usize) {
        if n > 0 {
            self.frames_out.fetch_add(n as u64, Relaxed);
            self.bytes_out.fetch_add((n * len) as u64, Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        let g = |a: &AtomicI64| a.load(Relaxed).to_string();
        let c = |a: &AtomicU64| a.load(Relaxed).to_string();
        one(
            "mycel_relay_tcp_connections",
            "gauge",
            "Open TCP connections (HTTP and WebSocket).",
            g(&self.tcp_connections),
        );
        one(
            "mycel_relay_connections",
            "gauge",
            "Open WebSocket connections.",
            g(&self.connections),
        );
        one(
            "mycel_relay_connections_total",
            "counter",
            "WebSocket connections accepted since start.",
            c(&self.connections_total),
        );
        one(
            "mycel_relay_rooms",
            "gauge",
            "Rooms with at least one member.",
            g(&self.rooms),
        );
        one(
            "mycel_relay_room_members",
            "gauge",
            "Memberships (connection, room) in all rooms.",
            g(&self.memberships),
        );
        one(
            "mycel_relay_frames_in_total",
            "counter",
            "WebSocket messages received.",
            c(&self.frames_in),
        );
        one(
            "mycel_relay_bytes_in_total",
            "counter",
            "Bytes of WebSocket messages received.",
            c(&self.bytes_in),
        );
        one(
            "mycel_relay_frames_out_total",
            "counter",
            "Frames queued for delivery (one per recipient).",
            c(&self.frames_out),
        );
        one(
            "mycel_relay_bytes_out_total",
            "counter",
            "Bytes of frames queued for delivery.",
            c(&self.bytes_out),
        );
        one(
            "mycel_relay_slow_consumers_dropped_total",
            "counter",
            "Connections dropped because their send queue overflowed.",
            c(&self.slow_consumers),
        );
        one(
            "mycel_relay_idle_timeouts_total",
            "counter",
            "Connections closed for silence past --idle-timeout.",
            c(&self.idle_timeouts),
        );
        one(
            "mycel_relay_backplane_up",
            "gauge",
            "1 while connected to the NATS backplane; 0 when disconnected or without one.",
            g(&self.backplane_up),
        );
        one(
            "mycel_relay_backplane_disconnects_total",
            "counter",
            "Times the NATS backplane connection was lost (the relay ran degraded).",
            c(&self.backplane_disconnects),
        );
        one(
            "mycel_relay_backplane_messages_in_total",
            "counter",
            "Messages received from other relays on room subjects.",
            c(&self.backplane_in),
        );
        one(
            "mycel_relay_backplane_messages_out_total",
            "counter",
            "Messages published to other relays.",
            c(&self.backplane_out),
        );
        one(
            "mycel_relay_backplane_dropped_total",
            "counter",
            "Messages for other relays dropped while the backplane was down.",
            c(&self.backplane_dropped),
        );
        one(
            "mycel_relay_backplane_invalid_total",
            "counter",
            "Messages from the backplane refused as malformed.",
            c(&self.backplane_bad),
        );
        let _ = writeln!(
            out,
            "# HELP mycel_relay_rejected_frames_total Incoming frames refused, by reason."
        );
        let _ = writeln!(out, "# TYPE mycel_relay_rejected_frames_total counter");
        for r in Reject::ALL {
            let _ = writeln!(
                out,
                "mycel_relay_rejected_frames_total{{reason=\"{}\"}} {}",
                r.label(),
                self.rejected(r)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mycel_relay_refused_connections_total Connections or upgrades refused, by reason."
        );
        let _ = writeln!(out, "# TYPE mycel_relay_refused_connections_total counter");
        for r in Refuse::ALL {
            let _ = writeln!(
                out,
                "mycel_relay_refused_connections_total{{reason=\"{}\"}} {}",
                r.label(),
                self.refused(r)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mycel_relay_build_info The relay's version.\n# TYPE mycel_relay_build_info gauge\nmycel_relay_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_reason() {
        let m = Metrics::default();
        m.reject(Reject::RateLimited);
        m.sent(3, 10);
        let text = m.render();
        assert!(text.contains("mycel_relay_rejected_frames_total{reason=\"rate_limited\"} 1"));
        assert!(text.contains("mycel_relay_frames_out_total 3"));
        assert!(text.contains("mycel_relay_bytes_out_total 30"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("mycel_relay_"), "{line}");
        }
    }
}
