//! Checks on the relay link's addresses. The socket itself lives in
//! [`crate::Engine`]: the node decides everything, the host moves frames;
//! which relay to use and when to retry is
//! [`mycel_core::relay_link::RelayRotation`], as in the native node.

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
    fn relay_urls_are_checked() {
        assert!(check_relay_url("ws://127.0.0.1:8080/ws").is_ok());
        assert!(check_relay_url("WSS://relay.example/ws").is_ok());
        assert!(check_relay_url("http://127.0.0.1:8080/").is_err());
    }
}
