//! Which relay a host connects to next, and when: the reconnect and
//! failover policy shared by every host (the native node, the browser).
//!
//! A host is given one or more relay URLs (the relays of one deployment
//! share rooms through their backplane). It stays on the relay it reached;
//! when that link drops it moves to the next relay at once, and when a
//! connection attempt fails it tries the next, backing off (doubling from
//! 200 ms to 10 s, ±50 % jitter so that the clients of a restarted relay do
//! not all return in the same instant) only after every relay failed in a
//! row. Sessions resume by vector exchange on each new link, so a failover
//! loses nothing.
//!
//! ```
//! use core::time::Duration;
//! use mycel_core::relay_link::{RelayRotation, Retry};
//!
//! let mut r = RelayRotation::new(vec!["ws://a/ws".into(), "ws://b/ws".into()]).unwrap();
//! assert_eq!(r.current(), "ws://a/ws");
//! r.connected();
//! assert_eq!(r.lost(7), Retry::Now); // fail over at once
//! assert_eq!(r.current(), "ws://b/ws");
//! assert_eq!(r.connect_failed(7), Retry::Now); // a is still left to try
//! assert!(matches!(r.connect_failed(7), Retry::After(d) if d <= Duration::from_millis(300)));
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

/// What to do after a link ended or an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Connect to [`RelayRotation::current`] now.
    Now,
    /// Connect to [`RelayRotation::current`] after this delay.
    After(Duration),
}

/// The relays given was an empty list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRelay;

impl core::fmt::Display for NoRelay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("no relay given")
    }
}

/// The relays of a host, the one to use next, and the backoff.
#[derive(Debug, Clone)]
pub struct RelayRotation {
    relays: Vec<String>,
    next: usize,
    /// Attempts that failed in a row since the last backoff.
    failed: usize,
    backoff: Duration,
}

impl RelayRotation {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(10);

    /// Relays in order of preference; at least one.
    pub fn new(relays: Vec<String>) -> Result<Self, NoRelay> {
        if relays.is_empty() {
            return Err(NoRelay);
        }
        Ok(RelayRotation {
            relays,
            next: 0,
            failed: 0,
            backoff: Self::FIRST,
        })
    }

    /// Every relay, in order.
    pub fn relays(&self) -> &[String] {
        &self.relays
    }

    /// The relay to connect to (or connected to).
    pub fn current(&self) -> &str {
        &self.relays[self.next % self.relays.len()]
    }

    /// The link to [`Self::current`] is up: the backoff starts over.
    pub fn connected(&mut self) {
        self.failed = 0;
        self.backoff = Self::FIRST;
    }

    /// An attempt to reach [`Self::current`] failed. `random` is any random
    /// number (for the jitter).
    pub fn connect_failed(&mut self, random: u64) -> Retry {
        self.next = (self.next + 1) % self.relays.len();
        self.failed += 1;
        if self.failed < self.relays.len() {
            return Retry::Now;
        }
        self.failed = 0;
        Retry::After(self.delay(random))
    }

    /// An established link to [`Self::current`] dropped.
    pub fn lost(&mut self, random: u64) -> Retry {
        if self.relays.len() > 1 {
            self.next = (self.next + 1) % self.relays.len();
            return Retry::Now;
        }
        Retry::After(self.delay(random))
    }

    fn delay(&mut self, random: u64) -> Duration {
        let base = self.backoff;
        self.backoff = (self.backoff * 2).min(Self::MAX);
        let jitter = (random % 1000) as f64 / 1000.0; // 0..1
        base.mul_f64(0.5 + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn delay(r: Retry) -> Duration {
        match r {
            Retry::After(d) => d,
            Retry::Now => Duration::ZERO,
        }
    }

    #[test]
    fn one_relay_backs_off_doubling_to_a_cap_with_jitter() {
        let mut r = RelayRotation::new(vec!["ws://a/ws".into()]).unwrap();
        let first = delay(r.connect_failed(500));
        assert_eq!(first, Duration::from_millis(200));
        let mut last = first;
        for _ in 0..10 {
            last = delay(r.connect_failed(500));
        }
        assert_eq!(last, Duration::from_secs(10));
        assert!(delay(r.connect_failed(0)) >= Duration::from_secs(5));
        assert!(delay(r.connect_failed(999)) < Duration::from_secs(15));
        r.connected();
        assert_eq!(delay(r.lost(500)), Duration::from_millis(200));
        assert_eq!(r.current(), "ws://a/ws");
    }

    #[test]
    fn several_relays_fail_over_at_once_and_back_off_only_when_all_failed() {
        let relays = vec!["ws://a/ws".into(), "ws://b/ws".into(), "ws://c/ws".into()];
        let mut r = RelayRotation::new(relays).unwrap();
        r.connected();
        assert_eq!(r.lost(1), Retry::Now);
        assert_eq!(r.current(), "ws://b/ws");
        assert_eq!(r.connect_failed(1), Retry::Now);
        assert_eq!(r.current(), "ws://c/ws");
        assert_eq!(r.connect_failed(1), Retry::Now);
        assert_eq!(r.current(), "ws://a/ws");
        assert!(matches!(r.connect_failed(1), Retry::After(_)));
        assert_eq!(r.current(), "ws://b/ws");
        // Reached b: a later drop moves on to c at once.
        r.connected();
        assert_eq!(r.lost(1), Retry::Now);
        assert_eq!(r.current(), "ws://c/ws");
    }

    #[test]
    fn no_relay_is_an_error() {
        assert_eq!(RelayRotation::new(Vec::new()).unwrap_err(), NoRelay);
    }
}
