//! The relay link: one WebSocket to a relay carries every room. The node
//! decides everything; this loop moves frames, fires timers, and reconnects
//! with exponential backoff and jitter when the socket drops.

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mycel_core::id::DocId;
use mycel_core::node::{Event, Input, LinkId, LinkKind, Output};
use mycel_core::relay_link::{RelayRotation, Retry};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::host::{Host, HostError};

/// What the loop is for.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Until `wait_peers` peers of `doc` were met and each side holds
    /// everything the other holds (a pinning peer: on its disk); fails at
    /// `timeout`.
    Sync {
        doc: DocId,
        wait_peers: usize,
        timeout: Duration,
    },
    /// Until shutdown, keeping every open document in sync.
    Serve,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Synced { peers: usize },
    Stopped,
}

fn report(host: &mut Host) {
    for e in host.events.drain(..) {
        match e {
            Event::PeerSeen { peer, pinning, .. } => {
                eprintln!(
                    "peer {peer} joined{}",
                    if pinning { " (pinning node)" } else { "" }
                );
            }
            Event::StoredRemotely { upto, copies, .. } => {
                eprintln!("stored-remotely({copies}): changes up to #{upto}");
            }
            Event::Rejected { reason, .. } => eprintln!("refused data from a peer: {reason}"),
            Event::Equivocation { author, seq, .. } => {
                eprintln!("peer {author} signed two different changes #{seq}; kept the first")
            }
            Event::RelayError { code, message, .. } => {
                eprintln!("relay error {code}: {message}")
            }
            _ => {}
        }
    }
}

fn done(host: &Host, mode: &Mode) -> Option<usize> {
    let Mode::Sync {
        doc, wait_peers, ..
    } = mode
    else {
        return None;
    };
    let node = host.replica.node();
    let status = node.sync_status(*doc);
    // A pinning peer's `Have` advertises only what it has synced to disk:
    // waiting until it covers everything here makes exit 0 mean "durable
    // there" (stored-remotely), not merely "received" (stream acks come
    // before the peer's disk write).
    let mine = node.vector(*doc).unwrap_or_default();
    let stored = node
        .peers(*doc)
        .iter()
        .filter(|(_, _, pinning)| *pinning)
        .all(|(_, vector, _)| vector.covers(&mine));
    (status.len() >= *wait_peers && status.iter().all(|p| p.synced()) && stored)
        .then_some(status.len())
}

/// Runs the relay link until the mode's goal, a timeout, or `shutdown`.
///
/// Multi-homing: `relays` are tried in turn, by the policy of
/// [`RelayRotation`] (stay on the relay reached, fail over at once, back
/// off only after every relay failed in a row). On each new link the
/// sessions resume by vector exchange, so nothing is lost in a failover.
pub async fn run(
    host: &mut Host,
    relays: &[String],
    mode: Mode,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, HostError> {
    let mut rotation =
        RelayRotation::new(relays.to_vec()).map_err(|e| HostError::Io(e.to_string()))?;
    tokio::pin!(shutdown);
    let deadline = match &mode {
        Mode::Sync { timeout, .. } => Some(Instant::now() + *timeout),
        Mode::Serve => None,
    };
    let timed_out = || {
        HostError::Io(format!(
            "timed out before the sync completed (relay {})",
            relays.join(", ")
        ))
    };
    let mut link_no = 0u64;
    loop {
        let relay = rotation.current().to_string();
        let connect = tokio_tungstenite::connect_async(relay.as_str());
        let ws = tokio::select! {
            r = connect => r,
            () = &mut shutdown => return Ok(Outcome::Stopped),
            () = sleep_until_opt(deadline) => return Err(timed_out()),
        };
        let mut ws = match ws {
            Ok((ws, _)) => ws,
            Err(e) => {
                let Retry::After(delay) = rotation.connect_failed(host.rng().u64()) else {
                    eprintln!("cannot reach relay {relay}: {e}; trying the next one");
                    continue;
                };
                eprintln!("cannot reach relay {relay}: {e}; retrying in {delay:?}");
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue,
                    () = &mut shutdown => return Ok(Outcome::Stopped),
                    () = sleep_until_opt(deadline) => return Err(timed_out()),
                }
            }
        };
        rotation.connected();
        if relays.len() > 1 {
            eprintln!("connected to relay {relay}");
        }
        link_no += 1;
        let link = LinkId(link_no);
        let mut wake: Option<Instant> = None;
        let mut outs = host.handle(Input::LinkUp {
            link,
            kind: LinkKind::Relay,
        })?;
        let ended = 'connected: loop {
            for out in outs.drain(..) {
                match out {
                    Output::Send { link: l, bytes } if l == link => {
                        let sent = ws.send(Message::Binary(bytes.into())).await;
                        if sent.is_err() {
                            break 'connected None;
                        }
                    }
                    Output::WakeAt(t) => {
                        let wait = t.as_millis().saturating_sub(host.now().as_millis());
                        wake = Some(Instant::now() + Duration::from_millis(wait));
                    }
                    _ => {}
                }
            }
            report(host);
            if let Some(peers) = done(host, &mode) {
                let _ = ws.close(None).await;
                break 'connected Some(Outcome::Synced { peers });
            }
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Binary(bytes))) => {
                        match host.handle(Input::Received { link, bytes: bytes.to_vec() }) {
                            Ok(o) => outs = o,
                            // A bad frame is the sender's problem: report, go on.
                            Err(HostError::Replica(e)) => eprintln!("ignored a frame: {e}"),
                            Err(e) => return Err(e),
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break 'connected None,
                    Some(Ok(_)) => {}
                },
                () = sleep_until_opt(wake) => {
                    wake = None;
                    outs = host.handle(Input::Tick)?;
                }
                () = &mut shutdown => {
                    let _ = ws.close(None).await;
                    break 'connected Some(Outcome::Stopped);
                }
                () = sleep_until_opt(deadline) => return Err(timed_out()),
            }
        };
        host.handle(Input::LinkDown { link })?;
        if let Some(outcome) = ended {
            return Ok(outcome);
        }
        let Retry::After(delay) = rotation.lost(host.rng().u64()) else {
            eprintln!("lost the relay {relay}; failing over to the next one");
            continue;
        };
        eprintln!("lost the relay {relay}; reconnecting in {delay:?}");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut shutdown => return Ok(Outcome::Stopped),
            () = sleep_until_opt(deadline) => return Err(timed_out()),
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
