//! The HTTP side: our own accept loop (so limits apply before any HTTP is
//! parsed), hyper connections with a header-read timeout, and the axum
//! router for `/ws`, `/healthz`, `/metrics` and static files.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;
use tower_http::services::ServeDir;

use crate::backplane::{self, Backplane, Outgoing};
use crate::config::Config;
use crate::metrics::{Metrics, Refuse};
use crate::registry::{Kick, Outbox, Registry};
use crate::{RelayError, conn};

/// Open WebSockets of one shard, by id.
type ConnMap = HashMap<u64, Arc<Outbox>>;

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: Config,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Open WebSockets by id, so shutdown can reach each of them.
    conns: Box<[Mutex<ConnMap>]>,
    next_id: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    shutting_down: AtomicBool,
    /// Signalled when the last TCP connection closes during shutdown.
    drained: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below is a single map operation: a panic
    // elsewhere cannot leave these maps half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn new(config: Config, backplane: Option<Backplane>) -> Shared {
        let metrics = Arc::new(Metrics::default());
        Shared {
            registry: Registry::with_backplane(metrics.clone(), backplane),
            metrics,
            conns: (0..16).map(|_| Mutex::default()).collect(),
            next_id: AtomicU64::new(1),
            per_ip: Mutex::default(),
            shutting_down: AtomicBool::new(false),
            drained: Notify::new(),
            config,
        }
    }

    #[cfg(test)]
    pub fn for_tests() -> Shared {
        Shared::new(Config::default(), None)
    }

    #[cfg(test)]
    pub fn test_slot(self: &Arc<Self>) -> Arc<TcpSlot> {
        self.admit(([127, 0, 0, 1], 1).into()).unwrap()
    }

    fn conn_shard(&self, id: u64) -> MutexGuard<'_, ConnMap> {
        lock(&self.conns[(id % self.conns.len() as u64) as usize])
    }

    /// Adds a WebSocket with a fresh outbox; returns its id.
    pub fn register_conn(&self) -> u64 {
        let id = self.next_id.fetch_add(1, Relaxed);
        let outbox = Arc::new(Outbox::new(
            self.config.send_queue_frames,
            self.config.send_queue_bytes.0,
        ));
        self.conn_shard(id).insert(id, outbox.clone());
        // Checked after inserting, under the same lock discipline as
        // `begin_shutdown`, so a connection racing with shutdown is kicked
        // by one side or the other.
        if self.shutting_down.load(SeqCst) {
            outbox.kick(Kick::Shutdown);
        }
        id
    }

    pub fn conn_outbox(&self, id: u64) -> Arc<Outbox> {
        self.conn_shard(id)
            .get(&id)
            .cloned()
            // Unreachable (just inserted), but a spare outbox is harmless.
            .unwrap_or_else(|| Arc::new(Outbox::new(1, 1)))
    }

    pub fn unregister_conn(&self, id: u64) {
        self.conn_shard(id).remove(&id);
    }

    fn begin_shutdown(&self) {
        self.shutting_down.store(true, SeqCst);
        for shard in self.conns.iter() {
            for outbox in lock(shard).values() {
                outbox.kick(Kick::Shutdown);
            }
        }
    }

    /// Takes a place for a new TCP connection, or says why not.
    fn admit(self: &Arc<Self>, addr: SocketAddr) -> Result<Arc<TcpSlot>, Refuse> {
        let ip = addr.ip();
        {
            let mut per_ip = lock(&self.per_ip);
            if self.metrics.tcp_connections.load(Relaxed) >= self.config.max_connections as i64 {
                return Err(Refuse::MaxConnections);
            }
            let n = per_ip.entry(ip).or_insert(0);
            if self.config.max_conns_per_ip != 0 && *n >= self.config.max_conns_per_ip {
                return Err(Refuse::PerIp);
            }
            *n += 1;
            // Under the same lock as the check above, so the total cannot
            // overshoot.
            self.metrics.tcp_connections.fetch_add(1, Relaxed);
        }
        Ok(Arc::new(TcpSlot {
            shared: self.clone(),
            addr,
        }))
    }
}

/// One TCP connection's place in the counts, released on drop. It lives in
/// the hyper connection task and, after an upgrade, in the WebSocket task.
#[derive(Debug)]
pub(crate) struct TcpSlot {
    shared: Arc<Shared>,
    pub addr: SocketAddr,
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let s = &self.shared;
        {
            let mut per_ip = lock(&s.per_ip);
            if let Some(n) = per_ip.get_mut(&self.addr.ip()) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&self.addr.ip());
                }
            }
        }
        let left = s.metrics.tcp_connections.fetch_sub(1, Relaxed) - 1;
        if left == 0 && s.shutting_down.load(SeqCst) {
            s.drained.notify_waiters();
        }
    }
}

/// Serves until `shutdown` completes, then closes every WebSocket with
/// 1001 (going away) and returns once all connections are gone or
/// `--shutdown-timeout` has passed.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RelayError> {
    config.validate()?;
    let (backplane, backplane_rx) = match config.backplane.is_some() {
        true => {
            let (b, rx) = Backplane::new();
            (Some(b), Some(rx))
        }
        false => (None, None),
    };
    let shared = Arc::new(Shared::new(config, backplane));
    let backplane_task = match (shared.config.backplane.clone(), backplane_rx) {
        (Some(url), Some(rx)) => {
            tracing::info!(%url, "rooms span relays through the NATS backplane");
            Some(tokio::spawn(backplane::run(url, shared.clone(), rx)))
        }
        _ => None,
    };
    let router = router(shared.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let addr = listener.local_addr().map_err(RelayError::Io)?;
    tracing::info!(%addr, "relay listening");

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => accept(stream, peer, &shared, &router, &stop_rx),
                Err(e) => {
                    // Typically EMFILE/ENFILE: back off instead of spinning;
                    // existing connections keep working.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }

    tracing::info!("shutting down: closing connections");
    drop(listener);
    shared.begin_shutdown();
    let _ = stop_tx.send(true);
    let drained = async {
        loop {
            let notified = shared.drained.notified();
            if shared.metrics.tcp_connections.load(Relaxed) <= 0 {
                return;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(shared.config.shutdown_timeout.0, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            left = shared.metrics.tcp_connections.load(Relaxed),
            "shutdown timeout: abandoning connections"
        );
    }
    if let Some(mut task) = backplane_task {
        // Tells the other relays this one's members are gone (`Bye`), so
        // they need not wait for the expiry.
        if let Some(bp) = shared.registry.backplane() {
            bp.push(Outgoing::Shutdown);
        }
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    tracing::info!("relay stopped");
    Ok(())
}

fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    router: &Router,
    stop: &watch::Receiver<bool>,
) {
    let slot = match shared.admit(peer) {
        Ok(slot) => slot,
        Err(why) => {
            shared.metrics.refuse(why);
            tracing::debug!(%peer, reason = why.label(), "connection refused");
            // A best-effort answer without reading the request: the send
            // buffer of a new socket is empty, so this does not block; then
            // the socket is dropped (closed).
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n\r\ntoo many connections...\n",
            );
            return;
        }
    };
    // Small frames should leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let router = router.clone();
    let mut stop = stop.clone();
    let header_timeout = shared.config.handshake_timeout.0;
    let grace = shared.config.shutdown_timeout.0;
    tokio::spawn(async move {
        let svc_slot = slot.clone();
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            // Handlers find the slot here; the WebSocket task keeps it.
            req.extensions_mut().insert(svc_slot.clone());
            router.clone().oneshot(req.map(Body::new))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // Also bounds a silent new connection: the timer starts when
            // hyper starts waiting for the request head.
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
            }
            () = async { let _ = stop.wait_for(|s| *s).await; } => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(grace, conn).await;
            }
        }
        drop(slot);
    });
}

fn router(shared: Arc<Shared>) -> Router {
    let mut r = Router::new()
        .route("/ws", get(ws_handler))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    if let Some(dir) = shared.config.www.clone() {
        r = r.fallback_service(static_files(&dir));
    }
    r.with_state(shared)
        .layer(middleware::from_fn(common_headers))
}

fn static_files(dir: &Path) -> Router {
    Router::new()
        .fallback_service(ServeDir::new(dir).append_index_html_on_directories(true))
        .layer(middleware::from_fn(cache_headers))
}

async fn common_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    res.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// Caching for a PWA: the entry points (HTML, service worker, manifest)
/// must always be revalidated so an update is seen on the next load;
/// content-hashed assets never change and may be cached for a year;
/// anything else is revalidated (cheap: ServeDir answers 304).
async fn cache_headers(req: Request, next: Next) -> Response {
    let policy = cache_policy(req.uri().path());
    let mut res = next.run(req).await;
    if res.status().is_success() || res.status() == StatusCode::NOT_MODIFIED {
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static(policy));
    }
    res
}

/// The `Cache-Control` value for a static path.
pub(crate) fn cache_policy(path: &str) -> &'static str {
    const NO_CACHE: &str = "no-cache";
    const IMMUTABLE: &str = "public, max-age=31536000, immutable";
    let name = path.rsplit('/').next().unwrap_or("");
    if name.is_empty()
        || name.ends_with(".html")
        || name == "sw.js"
        || name == "service-worker.js"
        || name.ends_with(".webmanifest")
    {
        return NO_CACHE;
    }
    if is_hashed(name) { IMMUTABLE } else { NO_CACHE }
}

/// True for names like `index-BXcW2a1c.js` or `app.3f9a2b1c.wasm`: a
/// segment of 8+ letters/digits with at least one digit right before the
/// extension, which bundlers derive from the content.
fn is_hashed(name: &str) -> bool {
    let Some((stem, _ext)) = name.rsplit_once('.') else {
        return false;
    };
    let Some(seg) = stem.rsplit(['.', '-']).next() else {
        return false;
    };
    seg.len() != stem.len()
        && (8..=64).contains(&seg.len())
        && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && seg.bytes().any(|b| b.is_ascii_digit())
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let status = if shared.shutting_down.load(Relaxed) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    // Degraded is still 200: the relay serves its own members, and taking
    // it out of a load balancer would only move them to another relay
    // that cannot reach NATS either.
    let degraded = shared
        .registry
        .backplane()
        .is_some_and(|b| !b.state.up.load(Relaxed));
    let body = if status != StatusCode::OK {
        "shutting down\n"
    } else if degraded {
        "degraded: the backplane (NATS) is unreachable; rooms span only this relay\n"
    } else {
        "ok\n"
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        shared.metrics.render(),
    )
        .into_response()
}

/// The WebSocket handshake (RFC 6455 §4.2). After the 101 response, the
/// raw TCP stream is taken back from hyper and driven by [`conn::run`].
async fn ws_handler(
    State(shared): State<Arc<Shared>>,
    axum::Extension(slot): axum::Extension<Arc<TcpSlot>>,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    if !has_token(header::UPGRADE, "websocket")
        || !has_token(header::CONNECTION, "upgrade")
        || !version_ok
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [
                (header::UPGRADE, "websocket"),
                (header::SEC_WEBSOCKET_VERSION, "13"),
            ],
            "this endpoint speaks WebSocket (version 13)\n",
        )
            .into_response();
    }
    let key_ok = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(k.as_bytes())
                .ok()
        })
        .is_some_and(|k| k.len() == 16);
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| key_ok)
        .map(|k| k.as_bytes().to_vec())
    else {
        return (StatusCode::BAD_REQUEST, "invalid Sec-WebSocket-Key\n").into_response();
    };
    if shared.shutting_down.load(Relaxed) {
        shared.metrics.refuse(Refuse::ShuttingDown);
        return (StatusCode::SERVICE_UNAVAILABLE, "relay shutting down\n").into_response();
    }
    if let Some(expected) = &shared.config.token
        && !token_ok(expected, headers, req.uri().query())
    {
        shared.metrics.refuse(Refuse::Unauthorized);
        tracing::debug!(peer = %slot.addr, "websocket refused: bad or missing token");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid relay token is required (?token= or Authorization: Bearer)\n",
        )
            .into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        // We serve hyper a `TokioIo<TcpStream>`, so this is what comes
        // back; the stream itself is what the connection task drives.
        // (`parts` is dropped before the await: only the task is kept.)
        let task = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => conn::run(parts.io.into_inner(), parts.read_buf, shared, slot),
            Err(_) => {
                tracing::error!("upgraded connection is not a TCP stream");
                return;
            }
        };
        task.await;
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, "websocket".to_string()),
            (header::CONNECTION, "upgrade".to_string()),
            (header::SEC_WEBSOCKET_ACCEPT, crate::ws::accept_key(&key)),
        ],
    )
        .into_response()
}

/// Compares the operator token from `?token=` or `Authorization: Bearer`.
fn token_ok(expected: &str, headers: &HeaderMap, query: Option<&str>) -> bool {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let from_query = query.and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .and_then(|(_, v)| percent_decode(v))
    });
    [from_header, from_query]
        .into_iter()
        .flatten()
        .any(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Equality whose time does not depend on where the inputs differ, so the
/// token cannot be guessed byte by byte from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_policies() {
        assert_eq!(cache_policy("/"), "no-cache");
        assert_eq!(cache_policy("/index.html"), "no-cache");
        assert_eq!(cache_policy("/sw.js"), "no-cache");
        assert_eq!(cache_policy("/app.webmanifest"), "no-cache");
        assert_eq!(
            cache_policy("/assets/index-BXcW2a1c.js"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            cache_policy("/pkg/mycel_bg.3f9a2b1c.wasm"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(cache_policy("/pkg/mycel_bg.wasm"), "no-cache");
        assert_eq!(cache_policy("/icons/icon-192.png"), "no-cache");
    }

    #[test]
    fn tokens() {
        let mut h = HeaderMap::new();
        assert!(!token_ok("s3cret", &h, None));
        assert!(token_ok("s3cret", &h, Some("a=1&token=s3cret")));
        assert!(token_ok("a b/c", &h, Some("token=a%20b%2Fc")));
        assert!(!token_ok("s3cret", &h, Some("token=s3cre")));
        assert!(!token_ok("s3cret", &h, Some("token=%zz")));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(token_ok("s3cret", &h, None));
    }
}
