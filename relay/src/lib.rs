//! `mycel-relay`: the dumb relay of mycel (DESIGN §8).
//!
//! Peers of a document meet in a room named by an opaque 32-byte
//! [`RoomId`](mycel_core::id::RoomId). The relay forwards their frames —
//! ciphertext it cannot read — to the other members of the room and keeps no
//! state but live membership: no disk, no documents, no keys.
//!
//! One WebSocket binary message is one frame of the shared wire format
//! ([`mycel_core::wire`]): clients send `RelayRequest`s (`Join`, `Leave`,
//! `Publish`, `Send`, `Ping`), the relay answers with `RelayEvent`s
//! (`Joined`, `PeerJoined`, `PeerLeft`, `Message`, `Error`, `Pong`). A
//! connection may be in many rooms; its tag in each room is random, so tags
//! link nothing across rooms.
//!
//! It is built to be hard to abuse: frame size, send-queue, rate, room and
//! connection limits, handshake and idle timeouts, an optional operator
//! token (see `docs/operations.md` for every setting and its default).
//!
//! ```no_run
//! use mycel_relay::{Config, serve};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = mycel_relay::bind("127.0.0.1:0".parse()?)?;
//! let config = Config {
//!     max_conns_per_ip: 1000,
//!     ..Config::default()
//! };
//! // Runs until Ctrl-C, then closes every WebSocket with 1001 (going away).
//! serve(config, listener, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod backplane;
pub mod config;
mod conn;
pub mod metrics;
mod registry;
mod server;
mod ws;

use std::fmt;

pub use config::{ByteSize, Config, ConfigError, Dur, LogFormat};
pub use server::serve;

/// WebSocket close codes the relay sends (also in `docs/operations.md`).
pub mod close_code {
    /// The relay is shutting down; reconnect (to it or another) with backoff.
    pub const GOING_AWAY: u16 = 1001;
    /// The WebSocket framing was invalid.
    pub const PROTOCOL: u16 = 1002;
    /// A message was larger than `--max-frame`.
    pub const TOO_LARGE: u16 = 1009;
    /// The connection's send queue overflowed: it did not read fast enough.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// Nothing was received (not even a pong) for `--idle-timeout`.
    pub const IDLE_TIMEOUT: u16 = 4001;
    /// The client kept sending past its rate limit.
    pub const RATE_LIMITED: u16 = 4002;
}

/// Why the relay could not run.
#[derive(Debug)]
#[non_exhaustive]
pub enum RelayError {
    /// The configuration is inconsistent.
    Config(ConfigError),
    /// A socket operation failed.
    Io(std::io::Error),
}

impl fmt::Display for RelayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayError::Config(e) => e.fmt(f),
            RelayError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for RelayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RelayError::Config(e) => Some(e),
            RelayError::Io(e) => Some(e),
        }
    }
}

impl From<ConfigError> for RelayError {
    fn from(e: ConfigError) -> Self {
        RelayError::Config(e)
    }
}

/// Listen backlog: after a restart every client reconnects at once, and a
/// small backlog (std and mio use 128) drops SYNs, which costs each dropped
/// client a one-second retransmission. The kernel caps it at somaxconn.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener for [`serve`] with [`LISTEN_BACKLOG`] and SO_REUSEADDR
/// (so a restarted relay can rebind while old connections sit in TIME_WAIT).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Installs the global `tracing` subscriber: plain text or one JSON object
/// per line, filtered by `filter` (EnvFilter syntax).
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), ConfigError> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| ConfigError(format!("--log filter '{filter}': {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    res.map_err(|e| ConfigError(format!("logging: {e}")))
}
