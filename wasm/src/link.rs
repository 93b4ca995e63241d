//! The relay link's reconnect policy. The socket itself lives in
//! [`crate::Engine`]: the node decides everything, the host moves frames.

/// Reconnect delays in milliseconds: doubling from 200 ms to 10 s, each
/// with ±50% jitter so that the clients of a restarted relay do not all
/// return in the same instant (the same policy as the native node).
#[derive(Debug, Clone)]
pub struct Backoff {
    next_ms: f64,
}

impl Backoff {
    const FIRST_MS: f64 = 200.0;
    const MAX_MS: f64 = 10_000.0;

    pub fn new() -> Self {
        Backoff {
            next_ms: Self::FIRST_MS,
        }
    }

    /// After a connection was established.
    pub fn reset(&mut self) {
        self.next_ms = Self::FIRST_MS;
    }

    /// The delay before the next attempt; `random` is any random number.
    pub fn delay_ms(&mut self, random: u64) -> f64 {
        let base = self.next_ms;
        self.next_ms = (self.next_ms * 2.0).min(Self::MAX_MS);
        let jitter = (random % 1000) as f64 / 1000.0;
        base * (0.5 + jitter)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks a relay address before a socket is made, so a typo is an error
/// at `Repo.open` rather than an endless reconnect loop.
pub fn check_relay_url(url: &str) -> Result<(), String> {
    let lower = url.trim().to_ascii_lowercase();
    if !(lower.starts_with("ws://") || lower.starts_with("wss://")) {
        return Err(format!(
            "the relay address {url:?} is not a WebSocket URL (ws://host:port/ws or wss://…)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        let mut b = Backoff::new();
        let d: Vec<f64> = (0..10).map(|i| b.delay_ms(i * 137)).collect();
        assert!((100.0..=300.0).contains(&d[0]), "{d:?}");
        assert!((5_000.0..=15_000.0).contains(&d[9]), "{d:?}");
        b.reset();
        assert!(b.delay_ms(999) <= 300.0);
    }

    #[test]
    fn relay_urls_are_checked() {
        assert!(check_relay_url("ws://127.0.0.1:8080/ws").is_ok());
        assert!(check_relay_url("WSS://relay.example/ws").is_ok());
        assert!(check_relay_url("http://127.0.0.1:8080/").is_err());
    }
}
