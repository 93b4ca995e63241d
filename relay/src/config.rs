//! Configuration: every setting is a flag and an environment variable
//! (`MYCEL_RELAY_*`), with the defaults documented in `docs/operations.md`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Default address: loopback only, so a relay started by hand is not
/// exposed until the operator says so (the container sets 0.0.0.0).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The relay's settings. Parsed from flags and `MYCEL_RELAY_*` variables by
/// `main`; tests build it with struct-update syntax over
/// [`Config::default`], which equals the command-line defaults.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mycel-relay",
    version,
    about = "The mycel relay: forwards end-to-end encrypted frames between opaque room ids.",
    long_about = "The mycel relay: forwards end-to-end encrypted frames between opaque room ids.\n\n\
        It stores nothing, never parses payloads and keeps no state but live room membership.\n\
        Endpoints: /ws (WebSocket), /healthz, /metrics (Prometheus), and static files from --www.\n\
        Every flag can also be set by the environment variable shown. Sizes accept B, KiB, MiB, GiB\n\
        (e.g. 1MiB); durations accept ms, s, m, h (e.g. 500ms, 30s); a bare number is bytes / seconds."
)]
pub struct Config {
    /// Address and port to listen on (use 0.0.0.0:PORT to accept from other hosts).
    #[arg(long, env = "MYCEL_RELAY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Directory of static files to serve (the built PWA); none by default.
    #[arg(long, env = "MYCEL_RELAY_WWW")]
    pub www: Option<PathBuf>,

    /// Operator token required on /ws (`?token=` or `Authorization: Bearer`); none by default.
    #[arg(long, env = "MYCEL_RELAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Log output format.
    #[arg(long, env = "MYCEL_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter (tracing-subscriber EnvFilter syntax, e.g. "info" or "mycel_relay=debug").
    #[arg(long, env = "MYCEL_RELAY_LOG", default_value = "info")]
    pub log: String,

    /// Largest WebSocket message (= one frame of the wire format); larger closes with 1009.
    #[arg(long, env = "MYCEL_RELAY_MAX_FRAME", default_value_t = ByteSize(1024 * 1024))]
    pub max_frame: ByteSize,

    /// Most frames queued for one connection; a consumer that falls further behind is dropped.
    #[arg(long, env = "MYCEL_RELAY_SEND_QUEUE_FRAMES", default_value_t = 512)]
    pub send_queue_frames: usize,

    /// Most bytes queued for one connection; a consumer that falls further behind is dropped.
    #[arg(long, env = "MYCEL_RELAY_SEND_QUEUE_BYTES", default_value_t = ByteSize(4 * 1024 * 1024))]
    pub send_queue_bytes: ByteSize,

    /// Sustained frames per second one connection may send.
    #[arg(long, env = "MYCEL_RELAY_RATE_FRAMES", default_value_t = 200)]
    pub rate_frames: u32,

    /// Burst of frames one connection may send above the sustained rate.
    #[arg(long, env = "MYCEL_RELAY_BURST_FRAMES", default_value_t = 400)]
    pub burst_frames: u32,

    /// Sustained bytes per second one connection may send.
    #[arg(long, env = "MYCEL_RELAY_RATE_BYTES", default_value_t = ByteSize(2 * 1024 * 1024))]
    pub rate_bytes: ByteSize,

    /// Burst of bytes one connection may send above the sustained rate (at least --max-frame).
    #[arg(long, env = "MYCEL_RELAY_BURST_BYTES", default_value_t = ByteSize(8 * 1024 * 1024))]
    pub burst_bytes: ByteSize,

    /// Most rooms one connection may be joined to at once.
    #[arg(long, env = "MYCEL_RELAY_MAX_ROOMS_PER_CONN", default_value_t = 256)]
    pub max_rooms_per_conn: usize,

    /// Most simultaneous TCP connections from one IP address (0 = unlimited).
    #[arg(long, env = "MYCEL_RELAY_MAX_CONNS_PER_IP", default_value_t = 128)]
    pub max_conns_per_ip: usize,

    /// Most simultaneous TCP connections in all.
    #[arg(long, env = "MYCEL_RELAY_MAX_CONNECTIONS", default_value_t = 65_536)]
    pub max_connections: usize,

    /// Time a new (or idle keep-alive) HTTP connection has to send its request headers.
    #[arg(long, env = "MYCEL_RELAY_HANDSHAKE_TIMEOUT", default_value_t = Dur(Duration::from_secs(10)))]
    pub handshake_timeout: Dur,

    /// A WebSocket silent for this long is sent a ping.
    #[arg(long, env = "MYCEL_RELAY_PING_INTERVAL", default_value_t = Dur(Duration::from_secs(25)))]
    pub ping_interval: Dur,

    /// A WebSocket silent for this long (no frame, no pong) is closed.
    #[arg(long, env = "MYCEL_RELAY_IDLE_TIMEOUT", default_value_t = Dur(Duration::from_secs(60)))]
    pub idle_timeout: Dur,

    /// On SIGTERM/SIGINT, time allowed for clients to finish the close handshake.
    #[arg(long, env = "MYCEL_RELAY_SHUTDOWN_TIMEOUT", default_value_t = Dur(Duration::from_secs(5)))]
    pub shutdown_timeout: Dur,

    /// NATS server through which rooms span several relays (e.g. nats://127.0.0.1:4222); none: this relay alone.
    #[arg(long, env = "MYCEL_RELAY_BACKPLANE")]
    pub backplane: Option<String>,

    /// Instead of serving, GET /healthz on --listen and exit 0 if healthy (for container health checks).
    #[arg(long)]
    pub health_check: bool,
}

impl Default for Config {
    fn default() -> Self {
        // The same values as the clap defaults above, without reading the
        // environment: tests and embedders get a predictable baseline.
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
            www: None,
            token: None,
            log_format: LogFormat::Plain,
            log: "info".into(),
            max_frame: ByteSize(1024 * 1024),
            send_queue_frames: 512,
            send_queue_bytes: ByteSize(4 * 1024 * 1024),
            rate_frames: 200,
            burst_frames: 400,
            rate_bytes: ByteSize(2 * 1024 * 1024),
            burst_bytes: ByteSize(8 * 1024 * 1024),
            max_rooms_per_conn: 256,
            max_conns_per_ip: 128,
            max_connections: 65_536,
            handshake_timeout: Dur(Duration::from_secs(10)),
            ping_interval: Dur(Duration::from_secs(25)),
            idle_timeout: Dur(Duration::from_secs(60)),
            shutdown_timeout: Dur(Duration::from_secs(5)),
            backplane: None,
            health_check: false,
        }
    }
}

impl Config {
    /// Checks settings that only make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError(what.to_string()));
        if self.max_frame.0 < 64 {
            return bad("--max-frame must be at least 64 bytes");
        }
        if self.send_queue_frames == 0 {
            return bad("--send-queue-frames must be at least 1");
        }
        if self.send_queue_bytes.0 < self.max_frame.0 {
            return bad("--send-queue-bytes must be at least --max-frame");
        }
        if self.rate_frames == 0 || self.burst_frames == 0 || self.rate_bytes.0 == 0 {
            return bad("rate limits must be positive");
        }
        if self.burst_bytes.0 < self.max_frame.0 {
            return bad(
                "--burst-bytes must be at least --max-frame (else a largest frame never passes)",
            );
        }
        if let Some(url) = &self.backplane
            && !["nats://", "tls://"].iter().any(|s| url.starts_with(s))
        {
            return bad("--backplane must be a nats:// (or tls://) URL");
        }
        if self.max_connections == 0 {
            return bad("--max-connections must be at least 1");
        }
        for (name, d) in [
            ("--handshake-timeout", self.handshake_timeout),
            ("--ping-interval", self.ping_interval),
            ("--idle-timeout", self.idle_timeout),
        ] {
            if d.0.is_zero() {
                return Err(ConfigError(format!("{name} must be positive")));
            }
        }
        if self.idle_timeout.0 <= self.ping_interval.0 {
            return bad("--idle-timeout must be longer than --ping-interval");
        }
        Ok(())
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// A size in bytes, written `1048576`, `1024KiB`, `1MiB`, `1 GiB` or `10kB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub usize);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: usize = num
            .parse()
            .map_err(|_| format!("'{s}' is not a size (e.g. 1048576 or 1MiB)"))?;
        let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "kb" => 1000,
            "m" | "mib" => 1 << 20,
            "mb" => 1_000_000,
            "g" | "gib" => 1 << 30,
            "gb" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit '{other}' (use B, KiB, MiB, GiB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size '{s}' is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", n >> 30)
        } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}B")
        }
    }
}

/// A duration, written `500ms`, `30s`, `2m`, `1h` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a duration (e.g. 30s or 500ms)"))?;
        let secs = match unit.trim() {
            "" | "s" => n,
            "ms" => n / 1000.0,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            other => return Err(format!("unknown duration unit '{other}' (use ms, s, m, h)")),
        };
        Duration::try_from_secs_f64(secs)
            .map(Dur)
            .map_err(|_| format!("duration '{s}' is out of range"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_command_line() {
        let parsed = Config::try_parse_from(["mycel-relay"]).unwrap();
        let d = Config::default();
        // Compare through Debug: every field, no hand-kept list. The
        // environment could override parsed values; CI does not set them.
        if std::env::vars().all(|(k, _)| !k.starts_with("MYCEL_RELAY_")) {
            assert_eq!(format!("{parsed:?}"), format!("{d:?}"));
        }
        d.validate().unwrap();
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!("1MiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
        assert_eq!("4 KiB".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert_eq!("123".parse::<ByteSize>().unwrap(), ByteSize(123));
        assert!("1XB".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert_eq!(
            "500ms".parse::<Dur>().unwrap(),
            Dur(Duration::from_millis(500))
        );
        assert_eq!("2m".parse::<Dur>().unwrap(), Dur(Duration::from_secs(120)));
        assert_eq!(
            "1.5".parse::<Dur>().unwrap(),
            Dur(Duration::from_millis(1500))
        );
        assert!("-1s".parse::<Dur>().is_err());
        assert!("1e400".parse::<Dur>().is_err());
        assert_eq!(Dur(Duration::from_millis(1500)).to_string(), "1500ms");
    }
}
