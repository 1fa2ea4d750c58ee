//! # portcullis-admin
//!
//! The operators' HTTP API: liveness, readiness, metrics and the running configuration.
//!
//! * **Takes**: a bound [`TcpListener`], an [`AdminSource`] that answers for the running
//!   gateway (and gives its current bearer token, if any), and a shutdown future.
//! * **Produces**: `GET`/`HEAD` `/healthz` (`{"status":"ok"}`), `/readyz` (`{"status":"ready"}`
//!   or 503 `{"status":"not_ready","reason":…}`, the reason only to an authorized caller),
//!   `/metrics` (Prometheus text) and `/config` (pretty JSON, secrets already redacted by the
//!   source), over HTTP/1.1 or h2c.
//! * **Rejects**, as RFC 9457 `application/problem+json` with
//!   `type = urn:portcullis:problem:<code>`, `code` and the answer's `request_id` (every answer
//!   carries it as `X-Request-ID`, and so does its log line): a missing or wrong bearer token (401
//!   `admin_unauthorized`, with `WWW-Authenticate`), an unknown path (404 `admin_not_found`),
//!   any method but `GET`/`HEAD` (405 `admin_method_not_allowed`, with `Allow: GET, HEAD`),
//!   a `POST /reload` while another runs (409 `admin_reload_in_progress`, `Retry-After: 1`), a
//!   malformed `POST` body (400 `admin_bad_request`) or one that does not arrive in time (408
//!   `admin_request_timeout`). A request head the gateway's strict HTTP/1.1 framing reader
//!   refuses (`portcullis_proxy::sniff`, run on the raw bytes before hyper parses them) gets
//!   a problem document too, with `Connection: close`: a head that does not parse or frames
//!   its body ambiguously (400 `admin_bad_request`), a head larger than the 64 KiB read
//!   buffer (431 `admin_headers_too_large`), more than 100 fields (431
//!   `admin_too_many_headers`) — where hyper would answer a bare status line. A request
//!   asking for an upgrade or a tunnel (which this API never makes) ends its connection, since
//!   the reader follows no head after one.
//!
//! Invariants:
//! * With a token configured, everything except `/healthz` and `/readyz` requires
//!   `Authorization: Bearer <token>` — including unknown paths, so an unauthenticated caller
//!   cannot map the API. Probes stay open because orchestrators cannot hold secrets easily;
//!   their answers then carry only the status (a `/readyz` reason names upstream hosts, IdP
//!   URLs and error texts, shown to a caller with the token). An empty configured token
//!   matches nothing (fail closed).
//! * A read-only token (`admin.read_token`, only beside a token) reaches what `GET` and `HEAD`
//!   reach; any other method with it is refused (403 `admin_read_only`) before its body is
//!   read: scrapers and dashboards hold a token that cannot reload, ban or revoke.
//! * Tokens are compared in constant time and never logged; they are the running
//!   configuration's, asked on every request (a reload that changes one applies at once).
//! * Without a token (loopback only), a request addressed to a name that is not a loopback one
//!   or carrying a foreign `Origin` — a web page, by DNS rebinding or a cross-site `POST` — is
//!   refused (403 `admin_forbidden`), probes and `/jwks` excepted.
//! * Every response carries `Cache-Control: no-store`: metrics and config must not be cached
//!   by intermediaries.
//! * Every request is logged once, with the peer address, method, path and status (never a
//!   header value or the body): at `info`, or at `warn` when it was refused for want of a valid
//!   token (401) or as coming from a web page (403).
//! * Connections cannot hold the API's 256 slots for long: a connection must bring its first
//!   request head within 10 s of being accepted, whatever the protocol (hyper's own header
//!   timeout starts only after the h2-or-HTTP/1 preface, and only for HTTP/1), and one with no
//!   request in progress for 30 s is closed (HTTP/1 keep-alive and h2 alike); a `POST` body
//!   must arrive within 10 s. One client address (an IPv6 one by its /64) holds at most 64
//!   connections; a further one from it is closed as soon as accepted. So silent connections
//!   cannot lock the probes out.
//! * At most one reload runs at a time: a `POST /reload` while one runs is refused (409).
//! * After `shutdown` resolves no new connection is accepted; open ones are asked to finish
//!   and given [`DRAIN_TIMEOUT`] before being dropped.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue,
    RETRY_AFTER, UPGRADE, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use portcullis_proxy::sniff;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The largest request head read (hyper's read buffer; the framing reader refuses a longer
/// one with 431 before hyper would).
const MAX_HEAD: usize = 64 * 1024;
/// Most fields in a request head (hyper's; the framing reader refuses more with 431).
const MAX_FIELDS: usize = 100;

/// How long open connections may take to finish after shutdown is requested.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Most admin connections served at once; further clients wait in the accept backlog. The API
/// is for a handful of operators and scrapers, not for the public.
const MAX_CONNECTIONS: usize = 256;

/// Most admin connections one client address holds at once (an IPv6 address counted by its
/// /64, which one host usually has whole), so that no single address takes every slot.
const MAX_CONNECTIONS_PER_ADDRESS: usize = MAX_CONNECTIONS / 4;

/// A slow client may not hold a connection open by trickling its request head; a connection
/// must also bring its first request head within this time of being accepted.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection on which no request has begun or ended for this long, and none is in
/// progress, is closed: an idle HTTP/1 keep-alive connection or h2 connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A `POST` body must have arrived whole within this time of its request head.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle connection asked to close may take to do so (h2: `GOAWAY`, then a `PING`
/// round trip) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The longest `token_id` `POST /auth/revocations` accepts, in bytes.
const MAX_TOKEN_ID_LEN: usize = 256;

const PROBLEM_JSON: &str = "application/problem+json";
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin API reports on. Implemented by the gateway over its running state.
pub trait AdminSource: Send + Sync + 'static {
    /// The bearer token the running configuration requires (`admin.token`), asked on every
    /// request so that a reload that changes it takes effect at once; `None`: no token (the
    /// API is then on loopback only, and answers only requests addressed to a loopback name
    /// and not sent by a web page).
    fn token(&self) -> Option<Vec<u8>>;
    /// A token that may only read (`admin.read_token`); never `Some` without [`token`].
    ///
    /// [`token`]: AdminSource::token
    fn read_token(&self) -> Option<Vec<u8>> {
        None
    }
    /// Ok when the gateway is ready to serve (config loaded, upstream hosts resolved);
    /// Err(reason) otherwise. The reason is shown only to callers allowed to see the
    /// protected endpoints.
    fn ready(&self) -> Result<(), String>;
    /// The running configuration with secrets redacted.
    fn config(&self) -> serde_json::Value;
    /// Prometheus text.
    fn metrics(&self) -> String;
    /// Re-reads and applies the configuration file (`POST /reload`). `Err` carries every
    /// error (`path: message`); the running configuration then stays. Never called again
    /// while a call runs.
    fn reload(&self) -> Result<(), Vec<String>> {
        Err(vec!["reload is not supported here".into()])
    }
    /// Authentication state: key sets per issuer, revocations, failure counts (`GET /auth`).
    fn auth(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    /// Rate limiting: the store in use and its health, keys held, the adaptive controller's
    /// level, factor and signals (`GET /ratelimit`).
    fn ratelimit(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    /// The public keys of gateway-signed internal tokens (`GET /jwks`, open like the probes:
    /// services verify with it).
    fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": []})
    }
    /// `POST /auth/revocations` with `{"token_id": …}`, `{"api_key": …}` or
    /// `{"api_key_hash": "sha256:…"}`. A `token_id`, when present, has already been checked
    /// to be a string of at most 256 printable ASCII characters without spaces (it may be
    /// empty), so it can be written into a log line as it is.
    fn revoke(&self, _request: serde_json::Value) -> RevokeFuture<'_> {
        Box::pin(async { Err("revocation is not supported here".to_string()) })
    }
    /// The client addresses banned now (`GET /bans`).
    fn bans(&self) -> serde_json::Value {
        serde_json::json!({"bans": []})
    }
    /// `POST /bans` with `{"address": …, "for": "<duration>"}`: bans an address by hand.
    /// `Err` is a client error (400) message.
    fn ban(&self, _request: serde_json::Value) -> Result<serde_json::Value, String> {
        Err("bans are not supported here".to_string())
    }
    /// Lifts the ban of `address` (`DELETE /bans/<address>`): `Ok(true)` when there was
    /// one, `Err` for an address that does not parse (400).
    fn lift_ban(&self, _address: &str) -> Result<bool, String> {
        Ok(false)
    }
}

/// The answer of [`AdminSource::revoke`]: `Err` is a client error (400) message.
pub type RevokeFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send + 'a>>;

/// Serves the admin API on `listener` until `shutdown` resolves.
///
/// `token`: when `Some`, every endpoint except `/healthz` and `/readyz` requires
/// `Authorization: Bearer <token>`.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_with(listener, source, shutdown, Limits::default()).await;
}

/// The connection and request limits; the constants above, shortened by tests.
#[derive(Clone, Copy, Debug)]
struct Limits {
    connections: usize,
    per_address: usize,
    first_request: Duration,
    idle: Duration,
    body_read: Duration,
    close_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: MAX_CONNECTIONS,
            per_address: MAX_CONNECTIONS_PER_ADDRESS,
            first_request: HEADER_READ_TIMEOUT,
            idle: IDLE_TIMEOUT,
            body_read: BODY_READ_TIMEOUT,
            close_grace: CLOSE_GRACE,
        }
    }
}

async fn serve_with(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) {
    let state = Arc::new(State {
        source,
        limits,
        reloading: Arc::new(AtomicBool::new(false)),
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_FIELDS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(32)
        .max_header_list_size(64 * 1024);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.connections));
    let addresses = Arc::new(Addresses::default());
    // Connections watch this to start a graceful shutdown.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                // The semaphore is never closed; treat it as shutdown if it ever is.
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        // Reap finished connection tasks so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually EMFILE/ENFILE: back off instead of spinning on the error.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(held) = addresses.hold(peer.ip(), limits.per_address) else {
            // Dropping the stream closes it and gives the slot back at once.
            tracing::debug!(%peer, "admin connection closed: its address holds the most connections allowed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        // hyper never sees a head the framing reader refuses: it gets a stand-in request,
        // which is answered from the flag.
        let framing = Arc::new(sniff::Flag::default());
        let stream = sniff::Sniffed::new(
            stream,
            Arc::clone(&framing),
            Arc::new(sniff::Activity::default()),
            MAX_HEAD,
        )
        .with_max_fields(MAX_FIELDS);
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        let mut stop_rx = stop_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            let _held = held;
            let activity = Arc::new(Activity::new());
            let service = {
                let activity = Arc::clone(&activity);
                service_fn(move |req: Request<Incoming>| {
                    let state = Arc::clone(&state);
                    // Counted from the moment hyper hands the request over until its answer
                    // is made (or the request is abandoned).
                    let busy = activity.begin();
                    let refused = framing.get();
                    async move {
                        let _busy = busy;
                        Ok::<_, Infallible>(answer(&state, peer, req, refused).await)
                    }
                })
            };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let res = tokio::select! {
                res = conn.as_mut() => res,
                // The guard returned by wait_for is not Send; drop it inside the branch future.
                () = async { let _ = stop_rx.wait_for(|stop| *stop).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                served = activity.lapsed(&limits) => {
                    if !served {
                        // Not one request: nothing to finish, no reason to wait for the peer.
                        tracing::debug!(%peer, "admin connection closed: no request in time");
                        return;
                    }
                    tracing::debug!(%peer, "admin connection closed: idle");
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(limits.close_grace, conn.as_mut()).await {
                        Ok(res) => res,
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }

    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            remaining = conns.len(),
            "admin connections did not finish in time; closing them"
        );
        conns.abort_all();
    }
}

/// What one connection is doing, for its deadlines.
struct Activity {
    accepted: Instant,
    progress: Mutex<Progress>,
    /// Told of every beginning and end of a request.
    changed: Notify,
}

#[derive(Default)]
struct Progress {
    /// Requests handed to the service and not answered yet.
    in_progress: usize,
    /// When a request last began or was answered; `None` before the first.
    last: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            accepted: Instant::now(),
            progress: Mutex::new(Progress::default()),
            changed: Notify::new(),
        }
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        // The counters stay meaningful even if a holder panicked.
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request begins; it ends when the returned guard is dropped.
    fn begin(self: &Arc<Self>) -> Busy {
        {
            let mut p = self.progress();
            p.in_progress += 1;
            p.last = Some(Instant::now());
        }
        self.changed.notify_one();
        Busy(Arc::clone(self))
    }

    /// Resolves once the connection has been quiet past its limit: `limits.first_request`
    /// from its accept while it never had a request (then `false`), `limits.idle` from the
    /// last request's beginning or end with none in progress (then `true`).
    async fn lapsed(&self, limits: &Limits) -> bool {
        loop {
            let (deadline, served) = {
                let p = self.progress();
                match p.last {
                    _ if p.in_progress > 0 => (None, true),
                    None => (Some(self.accepted + limits.first_request), false),
                    Some(last) => (Some(last + limits.idle), true),
                }
            };
            // A change met while not waiting is kept (one permit): none is missed.
            match deadline {
                Some(d) if Instant::now() >= d => return served,
                Some(d) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(d) => {}
                        () = self.changed.notified() => {}
                    }
                }
                // Busy: no deadline until the request ends.
                None => self.changed.notified().await,
            }
        }
    }
}

/// A request in progress on its connection's [`Activity`].
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        {
            let mut p = self.0.progress();
            p.in_progress = p.in_progress.saturating_sub(1);
            p.last = Some(Instant::now());
        }
        self.0.changed.notify_one();
    }
}

/// Open connections per client address.
#[derive(Default)]
struct Addresses(Mutex<HashMap<IpAddr, usize>>);

impl Addresses {
    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One more connection from `ip`, unless its address already holds `most`.
    fn hold(self: &Arc<Self>, ip: IpAddr, most: usize) -> Option<AddressHeld> {
        let key = counted_address(ip);
        let mut counts = self.counts();
        let held = counts.get(&key).copied().unwrap_or(0);
        if held >= most {
            return None;
        }
        counts.insert(key, held + 1);
        Some(AddressHeld {
            addresses: Arc::clone(self),
            key,
        })
    }
}

/// One connection counted against its address until dropped.
struct AddressHeld {
    addresses: Arc<Addresses>,
    key: IpAddr,
}

impl Drop for AddressHeld {
    fn drop(&mut self) {
        let mut counts = self.addresses.counts();
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The address a connection is counted against: an IPv4-mapped IPv6 address as its IPv4 one,
/// any other IPv6 address by its /64 (as the gateway counts clients for its own limits).
fn counted_address(ip: IpAddr) -> IpAddr {
    portcullis_core::addr::counted(ip, 64)
}

struct State {
    source: Arc<dyn AdminSource>,
    limits: Limits,
    /// Set while a `POST /reload` runs; see [`reload`].
    reloading: Arc<AtomicBool>,
}

type Resp = Response<Full<Bytes>>;

/// The path as the log line shows it: ASCII, other bytes percent-encoded as a browser sends
/// them. hyper takes UTF-8 in a path, and a bidirectional override (U+202E) or a line
/// separator (U+2028) from an unauthenticated caller would reorder or break the line on an
/// operator's terminal.
fn logged_path(path: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::utf8_percent_encode(path, percent_encoding::CONTROLS).into()
}

/// Answers one request and logs it, once.
async fn answer(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    refused: Option<sniff::Ambiguity>,
) -> Resp {
    let method = req.method().clone();
    // The path only: no query, no header value, no body reaches the log. hyper has checked
    // it is a URI path, so it holds no control characters or spaces. (A refused head's is
    // the stand-in's.)
    let path = req.uri().path().to_owned();
    let id = request_id();
    // The framing reader stops following a connection at a head that asks for an upgrade or
    // a tunnel (what would follow is not HTTP/1.1): this API makes none, so such a connection
    // ends with its answer, and no later head reaches hyper unchecked.
    let unfollowed = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11)
        && (method == Method::CONNECT || req.headers().contains_key(UPGRADE));
    let resp = match refused {
        // The connection's bytes were refused by the framing reader: whatever request hyper
        // hands over now (the stand-in, or one read before it in the same bytes), the
        // connection ends with this answer, as the gateway's own does.
        Some(a) => {
            let reason = a.reason();
            let mut resp = problem(
                reason.status(),
                &format!("admin_{}", reason.code()),
                reason.title(),
                a.detail(),
            );
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        None => route(state, req, &method, &path).await,
    };
    let mut resp = with_request_id(resp, &id).await;
    if unfollowed {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if method == Method::HEAD {
        // Same headers as GET, no body; Content-Length still tells the size GET would send.
        let len = hyper::body::Body::size_hint(resp.body())
            .exact()
            .unwrap_or(0);
        resp.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
        *resp.body_mut() = Full::new(Bytes::new());
    }
    let status = resp.status().as_u16();
    let path = logged_path(&path);
    if let Some(a) = refused {
        // The path is the stand-in's: the reason says what was wrong with the head.
        tracing::info!(%peer, status, request_id = %id, reason = a.reason().code(), "admin request refused: its head could not be read safely");
        return resp;
    }
    match resp.status() {
        StatusCode::UNAUTHORIZED => tracing::warn!(
            %peer, %method, %path, status, request_id = %id,
            "admin request refused: no valid bearer token"
        ),
        StatusCode::FORBIDDEN => tracing::warn!(
            %peer, %method, %path, status, request_id = %id,
            "admin request refused: it may come from a web page, or a read-only token asked for a change"
        ),
        // Probes and scrapes come every few seconds: answered, they are logged at `debug`.
        s if s.is_success() && is_public_read(&method, &path) => {
            tracing::debug!(%peer, %method, %path, status, request_id = %id, "admin request")
        }
        _ => tracing::info!(%peer, %method, %path, status, request_id = %id, "admin request"),
    }
    resp
}

/// A request id for the admin API's answers and log lines: 32 hex digits, this process's
/// start time and a counter — unique within a process and across restarts, and not a secret
/// (the gateway's own ids are random; these only correlate an answer with its log line).
fn request_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let boot = *BOOT.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    format!("{boot:016x}{:016x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// `X-Request-ID` on every answer, and `request_id` in a problem document's body.
async fn with_request_id(mut resp: Resp, id: &str) -> Resp {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let is_problem = resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if is_problem {
        let (mut parts, body) = resp.into_parts();
        let bytes = match http_body_util::BodyExt::collect(body).await {
            Ok(c) => c.to_bytes(),
            Err(never) => match never {},
        };
        let out = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(mut o)) => {
                o.insert(
                    "request_id".into(),
                    serde_json::Value::String(id.to_owned()),
                );
                let mut t = serde_json::Value::Object(o).to_string();
                t.push('\n');
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(t.len()));
                Bytes::from(t)
            }
            _ => bytes,
        };
        return Response::from_parts(parts, Full::new(out));
    }
    resp
}

/// A read of the probes, the metrics or the public key set.
fn is_public_read(method: &Method, path: &str) -> bool {
    (*method == Method::GET || *method == Method::HEAD)
        && matches!(path, "/healthz" | "/readyz" | "/metrics" | "/jwks")
}

async fn route(state: &State, req: Request<Incoming>, method: &Method, path: &str) -> Resp {
    let token = state.source.token();
    // Without a token, a web page gets the open endpoints as anyone would (status only: no
    // readiness reason), and nothing else.
    let web = token.is_none() && from_a_web_page(&req);
    if web && !is_public(path) {
        return browser_refused();
    }
    let access = if web {
        Access::None
    } else {
        access(token.as_deref(), &req, || state.source.read_token())
    };
    let authorized = access != Access::None;
    if !authorized && !is_public(path) {
        return unauthorized();
    }
    if access == Access::Read && method != Method::GET && method != Method::HEAD {
        return problem(
            StatusCode::FORBIDDEN,
            "admin_read_only",
            "Forbidden",
            "This token may only read (GET, HEAD); changes need admin.token.",
        );
    }
    if method == Method::POST {
        match path {
            "/auth/revocations" => return revoke(state, req).await,
            "/bans" => return ban(state, req).await,
            "/reload" => return reload(state).await,
            _ => {}
        }
    }
    handle(state, authorized, method, path)
}

fn unauthorized() -> Resp {
    let mut r = problem(
        StatusCode::UNAUTHORIZED,
        "admin_unauthorized",
        "Unauthorized",
        "This endpoint requires a valid bearer token.",
    );
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
    );
    r
}

/// Everything but the `POST`s: `authorized` is whether the caller may see protected
/// endpoints (it may reach a public one without).
fn handle(state: &State, authorized: bool, method: &Method, path: &str) -> Resp {
    let known = matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/config" | "/auth" | "/jwks" | "/ratelimit"
    );
    if path == "/auth/revocations" {
        if method == Method::GET || method == Method::HEAD {
            json(StatusCode::OK, &state.source.auth()["revocations"], true)
        } else {
            let mut r = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "admin_method_not_allowed",
                "Method not allowed",
                "List with GET, add with POST.",
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
            r
        }
    } else if path == "/bans" || path.starts_with("/bans/") {
        bans(state, path, method)
    } else if path == "/reload" {
        let mut r = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin_method_not_allowed",
            "Method not allowed",
            "Reload with POST.",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        r
    } else if !known {
        problem(
            StatusCode::NOT_FOUND,
            "admin_not_found",
            "Not found",
            "No admin endpoint at this path.",
        )
    } else if method != Method::GET && method != Method::HEAD {
        let mut r = problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin_method_not_allowed",
            "Method not allowed",
            "Admin endpoints accept GET and HEAD only.",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    } else {
        endpoint(state, path, authorized)
    }
}

/// Marks a reload as running until dropped.
struct Reloading(Arc<AtomicBool>);

impl Reloading {
    fn take(flag: &Arc<AtomicBool>) -> Option<Self> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Reloading(Arc::clone(flag)))
    }
}

impl Drop for Reloading {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// `POST /reload`, one at a time.
///
/// A `POST /reload` while another runs is refused with 409 `admin_reload_in_progress` and
/// `Retry-After: 1`, rather than starting a second reload: each would compile a whole
/// configuration on a blocking thread only to wait for the gateway's reload lock, so a burst
/// of requests would cost as many compiles and threads. Coalescing the callers that arrive
/// meanwhile into one follow-up reload was the alternative; it needs the follow-up's result
/// shared among waiters that may have gone, and keeps them all waiting a reload and a half.
/// A refusal is simpler and says plainly that the caller's reload did not happen (the file
/// may have been read before the caller's edit): it retries. SIGHUP and the file watcher
/// reload outside this API and are not refused here.
///
/// The running reload keeps its mark until the reload itself ends, even if its caller went
/// away, since the blocking thread cannot be stopped.
///
/// The configuration is built on a blocking thread: compiling it (WAF rules, Rego, OpenAPI
/// documents) takes tens to hundreds of milliseconds, which on a runtime worker would hold up
/// every request queued there — all of them with `--threads 1`.
async fn reload(state: &State) -> Resp {
    let Some(running) = Reloading::take(&state.reloading) else {
        let mut r = problem(
            StatusCode::CONFLICT,
            "admin_reload_in_progress",
            "Reload in progress",
            "Another reload is running; retry once it has finished.",
        );
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let source = Arc::clone(&state.source);
    let result = tokio::task::spawn_blocking(move || {
        let _running = running;
        source.reload()
    })
    .await
    .unwrap_or_else(|e| Err(vec![format!("the reload failed: {e}")]));
    match result {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({"status": "reloaded"}),
            false,
        ),
        Err(errors) => {
            let body = serde_json::json!({
                "type": "urn:portcullis:problem:admin_reload_failed",
                "code": "admin_reload_failed",
                "title": "Reload refused",
                "status": 422,
                "detail": "The configuration has errors; the running configuration stays.",
                "errors": errors,
            });
            let mut r = json(StatusCode::UNPROCESSABLE_ENTITY, &body, true);
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
            r
        }
    }
}

fn endpoint(state: &State, path: &str, authorized: bool) -> Resp {
    match path {
        "/healthz" => json(StatusCode::OK, &serde_json::json!({"status": "ok"}), false),
        "/readyz" => match state.source.ready() {
            Ok(()) => json(
                StatusCode::OK,
                &serde_json::json!({"status": "ready"}),
                false,
            ),
            // The reason names upstream hosts, IdP URLs and error texts: only for a caller
            // who may see the protected endpoints too.
            Err(reason) if authorized => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not_ready", "reason": reason}),
                false,
            ),
            Err(_) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not_ready"}),
                false,
            ),
        },
        "/metrics" => respond(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            Bytes::from(state.source.metrics()),
        ),
        "/auth" => json(StatusCode::OK, &state.source.auth(), true),
        "/jwks" => json(StatusCode::OK, &state.source.jwks(), true),
        "/ratelimit" => json(StatusCode::OK, &state.source.ratelimit(), true),
        _ => json(StatusCode::OK, &state.source.config(), true),
    }
}

/// `GET /bans` lists; `DELETE /bans/<address>` lifts one ban.
fn bans(state: &State, path: &str, method: &Method) -> Resp {
    match (path.strip_prefix("/bans/"), method) {
        (None, &Method::GET | &Method::HEAD) => json(StatusCode::OK, &state.source.bans(), true),
        (Some(address), &Method::DELETE) => {
            // IPv6 colons may come percent-encoded.
            let address = address.replace("%3A", ":").replace("%3a", ":");
            match state.source.lift_ban(&address) {
                Ok(true) => json(
                    StatusCode::OK,
                    &serde_json::json!({"lifted": address}),
                    false,
                ),
                Ok(false) => problem(
                    StatusCode::NOT_FOUND,
                    "admin_not_found",
                    "Not found",
                    "That address is not banned.",
                ),
                Err(m) => problem(
                    StatusCode::BAD_REQUEST,
                    "admin_bad_request",
                    "Bad request",
                    &m,
                ),
            }
        }
        (prefix, _) => {
            let (allow, detail) = match prefix {
                None => ("GET, HEAD, POST", "List bans with GET, ban with POST."),
                Some(_) => ("DELETE", "Lift a ban with DELETE /bans/<address>."),
            };
            let mut r = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "admin_method_not_allowed",
                "Method not allowed",
                detail,
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
            r
        }
    }
}

/// `POST /auth/revocations`: a small JSON body naming what to revoke.
async fn revoke(state: &State, req: Request<Incoming>) -> Resp {
    let value = match read_json(req, state.limits.body_read).await {
        Ok(value) => value,
        Err(r) => return r,
    };
    if let Err(m) = check_token_id(&value) {
        return problem(
            StatusCode::BAD_REQUEST,
            "admin_bad_request",
            "Bad request",
            &m,
        );
    }
    created(state.source.revoke(value).await)
}

/// A `token_id` to revoke is written into log lines and stored as it is: it must be a string
/// of at most [`MAX_TOKEN_ID_LEN`] bytes of printable ASCII without spaces, so that it cannot
/// break a log line (CR, LF) or forge fields in one. Absent or `null` is left to the source.
fn check_token_id(request: &serde_json::Value) -> Result<(), String> {
    match request.get("token_id") {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::String(id))
            if id.len() <= MAX_TOKEN_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(())
        }
        // The value itself is not repeated: it may be what the check is there to keep out.
        Some(_) => Err(format!(
            "token_id: a string of at most {MAX_TOKEN_ID_LEN} printable ASCII characters, \
             without spaces"
        )),
    }
}

/// `POST /bans`: `{"address": …, "for": "1h"}`.
async fn ban(state: &State, req: Request<Incoming>) -> Resp {
    match read_json(req, state.limits.body_read).await {
        Ok(value) => created(state.source.ban(value)),
        Err(r) => r,
    }
}

/// A small JSON body (at most 4 KiB) arrived `within` the given time, or the 400 (408) that
/// says why not.
async fn read_json(req: Request<Incoming>, within: Duration) -> Result<serde_json::Value, Resp> {
    use http_body_util::BodyExt;
    let collected = tokio::time::timeout(
        within,
        http_body_util::Limited::new(req.into_body(), 4096).collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "admin_bad_request",
                "Bad request",
                "The body could not be read (at most 4 KiB).",
            ));
        }
        Err(_) => {
            return Err(problem(
                StatusCode::REQUEST_TIMEOUT,
                "admin_request_timeout",
                "Request timeout",
                "The body did not arrive in time.",
            ));
        }
    };
    serde_json::from_slice::<serde_json::Value>(&body).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            "admin_bad_request",
            "Bad request",
            "The body is not JSON.",
        )
    })
}

/// 201 with the answer, or 400 with the message.
fn created(result: Result<serde_json::Value, String>) -> Resp {
    match result {
        Ok(v) => json(StatusCode::CREATED, &v, false),
        Err(m) => problem(
            StatusCode::BAD_REQUEST,
            "admin_bad_request",
            "Bad request",
            &m,
        ),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, value: &serde_json::Value, pretty: bool) -> Resp {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    match text {
        Ok(mut t) => {
            t.push('\n');
            respond(status, "application/json", Bytes::from(t))
        }
        // A serde_json::Value always serialises; keep a valid answer if that ever changes.
        Err(_) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "admin_internal_error",
            "Internal error",
            "The response could not be encoded.",
        ),
    }
}

/// An RFC 9457 problem response.
fn problem(status: StatusCode, code: &str, title: &str, detail: &str) -> Resp {
    let body = serde_json::json!({
        "type": format!("urn:portcullis:problem:{code}"),
        "code": code,
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut text = body.to_string();
    text.push('\n');
    respond(status, PROBLEM_JSON, Bytes::from(text))
}

/// Whether the request may see protected endpoints.
/// Endpoints open to anyone who reaches the API: probes and the public keys.
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/jwks")
}

/// Whether a request to a token-less admin API may have come from a web page: addressed to a
/// name that is not a loopback one (a DNS-rebinding page: its own name, resolved to
/// 127.0.0.1), or carrying an `Origin` other than the API's own (a page posting across sites
/// without a preflight: `text/plain` bodies are enough for `POST /bans`). The probes and the
/// public keys stay open to it, as to any caller without the token.
fn from_a_web_page<B>(req: &Request<B>) -> bool {
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|v| v.as_bytes())
        .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
    let Some(host) = host else {
        // No name at all (HTTP/1.0 tools): no browser sends such a request.
        return req.headers().contains_key(http::header::ORIGIN);
    };
    if !is_loopback_host(host) {
        return true;
    }
    req.headers()
        .get_all(http::header::ORIGIN)
        .iter()
        .any(|o| o.as_bytes().strip_prefix(b"http://") != Some(host))
}

/// `localhost`, a 127.0.0.0/8 address or `[::1]`, with or without a port.
fn is_loopback_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip,
            _ => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// 403 to a request [`from_a_web_page`].
fn browser_refused() -> Resp {
    problem(
        StatusCode::FORBIDDEN,
        "admin_forbidden",
        "Forbidden",
        "Without a token the admin API answers only requests addressed to a loopback name \
         (localhost, 127.0.0.1, [::1]) and not sent by a web page.",
    )
}

/// What a request's credentials let it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Everything: the token, or no token configured (loopback only).
    Full,
    /// `GET` and `HEAD`: the read-only token.
    Read,
    None,
}

/// The caller's access: no token configured → full; else by its bearer token, compared with
/// both tokens in constant time (an empty configured token matches nothing).
fn access(
    token: Option<&[u8]>,
    req: &Request<Incoming>,
    read_token: impl FnOnce() -> Option<Vec<u8>>,
) -> Access {
    let Some(expected) = token else {
        return Access::Full;
    };
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()))
    else {
        return Access::None;
    };
    let full = !expected.is_empty() && constant_time_eq(given, expected);
    let read = read_token().is_some_and(|r| !r.is_empty() && constant_time_eq(given, &r));
    if full {
        Access::Full
    } else if read {
        Access::Read
    } else {
        Access::None
    }
}

/// The credentials of a `Bearer` Authorization value. The scheme is case-insensitive
/// (RFC 9110 §11.1); surrounding spaces are tolerated.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares `given` with `expected` in time that depends only on `expected.len()`, so a
/// caller cannot learn a token prefix by timing. A length mismatch is folded into the result
/// instead of returning early.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff: u8 = 0;
    for (i, &e) in expected.iter().enumerate() {
        // Past the end of `given`, compare against a value that cannot make diff zero alone;
        // the length check below fails anyway.
        let g = given.get(i).copied().unwrap_or(!e);
        diff |= g ^ e;
    }
    let len_diff = (given.len() ^ expected.len()) as u64;
    std::hint::black_box(diff) == 0 && std::hint::black_box(len_diff) == 0
}

#[cfg(test)]
// Tests may panic on unexpected values; the workspace lint is meant for library code.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    /// What the fake says when not ready: the kind of detail a caller without the token must
    /// not see.
    const NOT_READY: &str = "upstream billing.internal:443 not resolved";

    #[derive(Default)]
    struct Fake {
        ready: AtomicBool,
        token: Mutex<Option<String>>,
        read_token: Option<String>,
        reloads: AtomicUsize,
        /// When set, each reload tells it has begun, then waits to be released.
        reload_gate: Option<ReloadGate>,
        /// What `revoke` was given.
        revoked: Mutex<Vec<serde_json::Value>>,
    }

    struct ReloadGate {
        began: tokio::sync::mpsc::UnboundedSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Fake {
        fn new(token: Option<&str>) -> Self {
            Fake {
                ready: AtomicBool::new(true),
                token: Mutex::new(token.map(str::to_owned)),
                ..Fake::default()
            }
        }
    }

    impl AdminSource for Fake {
        fn token(&self) -> Option<Vec<u8>> {
            self.token.lock().unwrap().clone().map(String::into_bytes)
        }
        fn read_token(&self) -> Option<Vec<u8>> {
            self.read_token.clone().map(String::into_bytes)
        }
        fn ready(&self) -> Result<(), String> {
            if self.ready.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(NOT_READY.into())
            }
        }
        fn config(&self) -> serde_json::Value {
            serde_json::json!({"admin": {"token": "<redacted>"}, "routes": []})
        }
        fn metrics(&self) -> String {
            "portcullis_requests_total{route=\"a\",status=\"200\"} 1\n# EOF\n".into()
        }
        fn reload(&self) -> Result<(), Vec<String>> {
            self.reloads.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.reload_gate {
                let _ = gate.began.send(());
                let _ = gate.release.lock().unwrap().recv();
            }
            Ok(())
        }
        fn revoke(&self, request: serde_json::Value) -> RevokeFuture<'_> {
            self.revoked.lock().unwrap().push(request);
            Box::pin(async { Ok(serde_json::json!({"revoked": "ok"})) })
        }
        fn ban(&self, request: serde_json::Value) -> Result<serde_json::Value, String> {
            Ok(serde_json::json!({"banned": request["address"]}))
        }
    }

    struct Server {
        addr: SocketAddr,
        fake: Arc<Fake>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    async fn start(token: Option<&str>) -> Server {
        start_with(Fake::new(token), Limits::default()).await
    }

    async fn start_with(fake: Fake, limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(fake);
        let (tx, rx) = oneshot::channel::<()>();
        let source: Arc<dyn AdminSource> = fake.clone();
        let shutdown = async move {
            let _ = rx.await;
        };
        let task = tokio::spawn(serve_with(listener, source, shutdown, limits));
        Server {
            addr,
            fake,
            stop: Some(tx),
            task,
        }
    }

    type TestClient = Client<HttpConnector, Empty<Bytes>>;

    fn h1() -> TestClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    fn h2c() -> TestClient {
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http()
    }

    struct Got {
        status: StatusCode,
        headers: http::HeaderMap,
        body: String,
        version: http::Version,
    }

    async fn call(
        client: &TestClient,
        addr: SocketAddr,
        method: Method,
        path: &str,
        auth: Option<&str>,
    ) -> Got {
        let fields: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        call_with(client, addr, method, path, &fields).await
    }

    fn header<'a>(g: &'a Got, name: &str) -> &'a str {
        g.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    fn assert_problem(g: &Got, status: u16, code: &str) {
        assert_eq!(g.status.as_u16(), status, "{}", g.body);
        assert_eq!(header(g, "content-type"), PROBLEM_JSON);
        assert_eq!(header(g, "cache-control"), "no-store");
        let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
        assert_eq!(v["type"], format!("urn:portcullis:problem:{code}"));
        assert_eq!(v["code"], code);
        assert_eq!(v["status"], status);
        let id = v["request_id"].as_str().unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(header(g, "x-request-id"), id);
        assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
    }

    #[tokio::test]
    async fn endpoints_without_token() {
        let s = start(None).await;
        let c = h1();

        let g = call(&c, s.addr, Method::GET, "/healthz", None).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(header(&g, "content-type"), "application/json");
        assert_eq!(header(&g, "cache-control"), "no-store");
        assert_eq!(g.body.trim(), r#"{"status":"ok"}"#);

        let g = call(&c, s.addr, Method::GET, "/readyz", None).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.body.trim(), r#"{"status":"ready"}"#);

        s.fake.ready.store(false, Ordering::SeqCst);
        let g = call(&c, s.addr, Method::GET, "/readyz", None).await;
        assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&g, "cache-control"), "no-store");
        let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
        assert_eq!(v["status"], "not_ready");
        assert_eq!(v["reason"], NOT_READY);
        s.fake.ready.store(true, Ordering::SeqCst);

        let g = call(&c, s.addr, Method::GET, "/metrics", None).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(header(&g, "content-type"), METRICS_CONTENT_TYPE);
        assert!(g.body.contains("portcullis_requests_total"), "{}", g.body);

        let g = call(&c, s.addr, Method::GET, "/config", None).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(header(&g, "content-type"), "application/json");
        assert!(g.body.contains("\n  \"admin\""), "pretty: {}", g.body);
        let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
        assert_eq!(v["admin"]["token"], "<redacted>");

        let g = call(&c, s.addr, Method::HEAD, "/metrics", None).await;
        assert_eq!(g.status, StatusCode::OK);
        assert!(g.body.is_empty());
        assert_eq!(
            header(&g, "content-length"),
            s.fake.metrics().len().to_string()
        );

        let g = call(&c, s.addr, Method::GET, "/nope", None).await;
        assert_problem(&g, 404, "admin_not_found");

        let g = call(&c, s.addr, Method::POST, "/config", None).await;
        assert_problem(&g, 405, "admin_method_not_allowed");
        assert_eq!(header(&g, "allow"), "GET, HEAD");
        let g = call(&c, s.addr, Method::DELETE, "/healthz", None).await;
        assert_problem(&g, 405, "admin_method_not_allowed");
    }

    #[tokio::test]
    async fn token_protects_all_but_probes() {
        let s = start(Some("s3cret-token")).await;
        let c = h1();

        for path in ["/healthz", "/readyz"] {
            let g = call(&c, s.addr, Method::GET, path, None).await;
            assert_eq!(g.status, StatusCode::OK, "{path}");
        }
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cret-toke"),
            Some("Bearer s3cret-token2"),
            Some("Basic s3cret-token"),
            Some("Bearers3cret-token"),
            Some("Bearer "),
        ] {
            for path in ["/metrics", "/config", "/nope"] {
                let g = call(&c, s.addr, Method::GET, path, auth).await;
                assert_problem(&g, 401, "admin_unauthorized");
                assert_eq!(
                    header(&g, "www-authenticate"),
                    "Bearer realm=\"portcullis-admin\""
                );
                assert!(!g.body.contains("s3cret"), "{}", g.body);
            }
        }
        for auth in ["Bearer s3cret-token", "bearer s3cret-token"] {
            let g = call(&c, s.addr, Method::GET, "/metrics", Some(auth)).await;
            assert_eq!(g.status, StatusCode::OK, "{auth}");
            let g = call(&c, s.addr, Method::GET, "/config", Some(auth)).await;
            assert_eq!(g.status, StatusCode::OK, "{auth}");
        }
        let ok = Some("Bearer s3cret-token");
        let g = call(&c, s.addr, Method::GET, "/nope", ok).await;
        assert_problem(&g, 404, "admin_not_found");
        let g = call(&c, s.addr, Method::PUT, "/metrics", ok).await;
        assert_problem(&g, 405, "admin_method_not_allowed");
    }

    /// The read-only token reads everything the token reads, and changes nothing: every other
    /// method is refused before its body is read, and nothing reaches the source.
    #[tokio::test]
    async fn a_read_only_token_reads_and_changes_nothing() {
        let fake = Fake {
            read_token: Some("reader".into()),
            ..Fake::new(Some("writer"))
        };
        let s = start_with(fake, Limits::default()).await;
        let c = h1();
        let read = Some("Bearer reader");
        for path in ["/metrics", "/config", "/auth", "/auth/revocations", "/bans"] {
            let g = call(&c, s.addr, Method::GET, path, read).await;
            assert_eq!(g.status, StatusCode::OK, "{path}: {}", g.body);
        }
        s.fake.ready.store(false, Ordering::SeqCst);
        let g = call(&c, s.addr, Method::GET, "/readyz", read).await;
        assert!(g.body.contains(NOT_READY), "{}", g.body);
        s.fake.ready.store(true, Ordering::SeqCst);
        let auth = [
            ("authorization", "Bearer reader"),
            ("content-type", "application/json"),
        ];
        for (path, body) in [
            ("/reload", ""),
            ("/bans", r#"{"address": "192.0.2.1", "for": "1m"}"#),
            ("/auth/revocations", r#"{"token_id": "t1"}"#),
        ] {
            let g = post(s.addr, path, &auth, body).await;
            assert_problem(&g, 403, "admin_read_only");
        }
        let g = call(&c, s.addr, Method::DELETE, "/bans/192.0.2.1", read).await;
        assert_problem(&g, 403, "admin_read_only");
        assert_eq!(s.fake.reloads.load(Ordering::SeqCst), 0);
        assert!(s.fake.revoked.lock().unwrap().is_empty());
        // The full token still changes things; a wrong one, or the reader's with a suffix,
        // reaches nothing.
        let write = [("authorization", "Bearer writer")];
        assert_eq!(
            post(s.addr, "/reload", &write, "").await.status,
            StatusCode::OK
        );
        assert_eq!(s.fake.reloads.load(Ordering::SeqCst), 1);
        for wrong in ["Bearer readerx", "Bearer reade", "Bearer writer reader"] {
            let g = call(&c, s.addr, Method::GET, "/metrics", Some(wrong)).await;
            assert_problem(&g, 401, "admin_unauthorized");
        }
    }

    #[tokio::test]
    async fn empty_token_denies_everything_protected() {
        let s = start(Some("")).await;
        let c = h1();
        let g = call(&c, s.addr, Method::GET, "/metrics", Some("Bearer ")).await;
        assert_problem(&g, 401, "admin_unauthorized");
        let g = call(&c, s.addr, Method::GET, "/healthz", None).await;
        assert_eq!(g.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn serves_h2c() {
        let s = start(Some("t")).await;
        let c = h2c();
        let g = call(&c, s.addr, Method::GET, "/healthz", None).await;
        assert_eq!(g.version, http::Version::HTTP_2);
        assert_eq!(g.status, StatusCode::OK);
        let g = call(&c, s.addr, Method::GET, "/metrics", Some("Bearer t")).await;
        assert_eq!(g.version, http::Version::HTTP_2);
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(header(&g, "cache-control"), "no-store");
        let g = call(&c, s.addr, Method::GET, "/config", None).await;
        assert_problem(&g, 401, "admin_unauthorized");
    }

    #[tokio::test]
    async fn shutdown_ends_the_server() {
        let mut s = start(None).await;
        let c = h1();
        // Leave a keep-alive connection open: shutdown must still finish promptly.
        let g = call(&c, s.addr, Method::GET, "/healthz", None).await;
        assert_eq!(g.status, StatusCode::OK);
        let _ = s.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(3), &mut s.task)
            .await
            .expect("server did not stop")
            .unwrap();
        // The listener is closed: new connections are refused.
        assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
    }

    /// A request with the given extra header fields (a `Host` among them replaces the URI's).
    async fn call_with(
        client: &TestClient,
        addr: SocketAddr,
        method: Method,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Got {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in fields {
            req = req.header(*k, *v);
        }
        let resp = client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        got(resp).await
    }

    /// A `POST` with a body and the given header fields.
    async fn post(addr: SocketAddr, path: &str, fields: &[(&str, &str)], body: &str) -> Got {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in fields {
            req = req.header(*k, *v);
        }
        let resp = client
            .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
            .await
            .unwrap();
        got(resp).await
    }

    async fn got(resp: Response<Incoming>) -> Got {
        let status = resp.status();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Got {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
            version,
        }
    }
    /// A changed token applies at once: the old one is refused, the new one taken.
    #[tokio::test]
    async fn the_token_is_the_running_configurations() {
        let s = start(Some("old-token")).await;
        let c = h1();
        let g = call(&c, s.addr, Method::GET, "/config", Some("Bearer old-token")).await;
        assert_eq!(g.status, StatusCode::OK);
        *s.fake.token.lock().unwrap() = Some("new-token".into());
        let g = call(&c, s.addr, Method::GET, "/config", Some("Bearer old-token")).await;
        assert_problem(&g, 401, "admin_unauthorized");
        let g = call(&c, s.addr, Method::GET, "/config", Some("Bearer new-token")).await;
        assert_eq!(g.status, StatusCode::OK);
        // A token added to an API that had none is required from then on.
        let s = start(None).await;
        assert_eq!(
            call(&c, s.addr, Method::GET, "/config", None).await.status,
            StatusCode::OK
        );
        *s.fake.token.lock().unwrap() = Some("added".into());
        let g = call(&c, s.addr, Method::GET, "/config", None).await;
        assert_problem(&g, 401, "admin_unauthorized");
    }

    /// Without a token, what a web page can send is refused: a request addressed to its own
    /// name (DNS rebinding) or carrying its `Origin` (a cross-site POST needs no preflight with
    /// a `text/plain` body). Loopback names and the API's own origin are served; probes and
    /// `/jwks` stay open; with a token the name is the operator's business.
    #[tokio::test]
    async fn without_a_token_requests_from_web_pages_are_refused() {
        let s = start(None).await;
        let port = s.addr.port();
        let evil_host = format!("rebound.example:{port}");
        for (method, path, fields) in [
            (Method::GET, "/config", vec![("host", evil_host.as_str())]),
            (
                Method::POST,
                "/reload",
                vec![("origin", "https://evil.example")],
            ),
            (Method::POST, "/bans", vec![("origin", "null")]),
            (
                Method::GET,
                "/metrics",
                vec![("origin", "http://127.0.0.1:1")],
            ),
            (
                Method::GET,
                "/nope",
                vec![("host", "127.0.0.1.evil.example")],
            ),
        ] {
            let g = call_with(&h1(), s.addr, method.clone(), path, &fields).await;
            assert_problem(&g, 403, "admin_forbidden");
        }
        // Loopback names, with or without the API's own origin.
        let own = format!("http://127.0.0.1:{port}");
        let localhost = format!("localhost:{port}");
        let v6 = format!("[::1]:{port}");
        for fields in [
            vec![],
            vec![("origin", own.as_str())],
            vec![("host", localhost.as_str())],
            vec![("host", v6.as_str())],
        ] {
            let g = call_with(&h1(), s.addr, Method::GET, "/config", &fields).await;
            assert_eq!(g.status, StatusCode::OK, "{fields:?}: {}", g.body);
        }
        // The probes answer whoever asks.
        let g = call_with(
            &h1(),
            s.addr,
            Method::GET,
            "/healthz",
            &[("host", &evil_host)],
        )
        .await;
        assert_eq!(g.status, StatusCode::OK);
        // With a token, a name the operator uses is fine (a page cannot send the token).
        let s = start(Some("t0k")).await;
        let g = call_with(
            &h1(),
            s.addr,
            Method::GET,
            "/config",
            &[
                ("host", "admin.internal:9901"),
                ("authorization", "Bearer t0k"),
            ],
        )
        .await;
        assert_eq!(g.status, StatusCode::OK);
    }

    #[test]
    fn logged_paths_are_ascii() {
        assert_eq!(logged_path("/config"), "/config");
        assert_eq!(
            logged_path("/a\u{202e}b\u{2028}c/é"),
            "/a%E2%80%AEb%E2%80%A8c/%C3%A9"
        );
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "LOCALHOST:9901",
            "127.0.0.1",
            "127.9.9.9:1",
            "[::1]",
            "[::1]:9901",
        ] {
            assert!(is_loopback_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "example.com",
            "127.0.0.1.nip.io",
            "10.0.0.1",
            "[::2]",
            "[::1]x",
            "",
            "localhost.evil",
        ] {
            assert!(!is_loopback_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
    }

    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// The preface and an empty SETTINGS frame: an h2 connection that opens no stream.
    const H2_PREFACE_AND_SETTINGS: &[u8] =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

    /// Reads a response head (up to its blank line) off a raw connection.
    async fn response_head(c: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = c.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed without an answer");
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Every slot taken by a connection that sends nothing (or only the h2 preface, or an h2
    /// connection with no stream, or half an HTTP/1 head): the probes are served again once
    /// those connections have had their time to bring a first request.
    #[tokio::test]
    async fn silent_connections_do_not_lock_out_the_probes() {
        let limits = Limits {
            // Every connection from 127.0.0.1: the per-address cap is another test's.
            per_address: MAX_CONNECTIONS,
            first_request: Duration::from_millis(300),
            ..Limits::default()
        };
        let s = start_with(Fake::new(Some("t")), limits).await;
        let mut silent = Vec::new();
        for i in 0..MAX_CONNECTIONS {
            let mut c = TcpStream::connect(s.addr).await.unwrap();
            let opening: &[u8] = match i % 4 {
                0 => b"",
                1 => H2_PREFACE,
                2 => H2_PREFACE_AND_SETTINGS,
                _ => b"GET /healthz HTTP/1.1\r\n",
            };
            // The server may already have closed an early one.
            let _ = c.write_all(opening).await;
            silent.push(c);
        }
        for client in [h1(), h2c()] {
            let g = timeout(
                Duration::from_secs(5),
                call(&client, s.addr, Method::GET, "/healthz", None),
            )
            .await
            .expect("silent connections locked the probe out");
            assert_eq!(g.status, StatusCode::OK);
        }
        drop(silent);
    }

    /// One address's connections beyond its share are closed at once; another address is
    /// still served while they sit silent. (Linux: all of 127.0.0.0/8 is local there.)
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn one_address_cannot_take_every_slot() {
        let limits = Limits {
            connections: 4,
            per_address: 2,
            ..Limits::default()
        };
        let s = start_with(Fake::new(None), limits).await;
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(TcpStream::connect(s.addr).await.unwrap());
        }
        for c in &mut silent[2..] {
            let read = timeout(Duration::from_secs(3), c.read(&mut [0u8; 1]))
                .await
                .expect("a connection beyond the address's share was kept");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let stream = socket.connect(s.addr).await.unwrap();
        let status = timeout(Duration::from_secs(3), async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = Request::get("/healthz")
                .header("host", "127.0.0.1")
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender.send_request(req).await.unwrap().status()
        })
        .await
        .expect("another address was locked out");
        assert_eq!(status, StatusCode::OK);
        drop(silent);
    }

    #[test]
    fn connections_are_counted_by_address() {
        let counted = |s: &str| counted_address(s.parse().unwrap()).to_string();
        assert_eq!(counted("192.0.2.1"), "192.0.2.1");
        assert_eq!(counted("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(
            counted("2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
            "2001:db8:1:2::"
        );
        assert_eq!(counted("::1"), "::");
    }

    /// A connection that has been answered and then says nothing is closed after the idle
    /// limit: an HTTP/1.1 keep-alive one and an h2 one.
    #[tokio::test]
    async fn idle_connections_are_closed() {
        let limits = Limits {
            idle: Duration::from_millis(200),
            ..Limits::default()
        };
        let s = start_with(Fake::new(None), limits).await;

        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let head = response_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut rest = Vec::new();
        timeout(Duration::from_secs(3), c.read_to_end(&mut rest))
            .await
            .expect("the idle HTTP/1.1 connection stayed open")
            .unwrap();

        let stream = TcpStream::connect(s.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let req = Request::get(format!("http://{}/healthz", s.addr))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // The sender stays: the client would not close the connection on its own.
        timeout(Duration::from_secs(3), conn)
            .await
            .expect("the idle h2 connection stayed open")
            .unwrap()
            .unwrap();
        drop(sender);
    }

    /// A `POST` body that stops coming does not keep its connection (and slot) busy forever.
    #[tokio::test]
    async fn a_body_that_stops_coming_times_out() {
        let limits = Limits {
            body_read: Duration::from_millis(200),
            ..Limits::default()
        };
        let s = start_with(Fake::new(None), limits).await;
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(
            b"POST /bans HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"addr",
        )
        .await
        .unwrap();
        let head = timeout(Duration::from_secs(3), response_head(&mut c))
            .await
            .expect("no answer to a body that stopped coming");
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        assert!(head.contains(PROBLEM_JSON), "{head}");
    }

    /// `/readyz` tells why it is not ready only to a caller with the token, or to anyone when
    /// no token is configured (loopback only).
    #[tokio::test]
    async fn readiness_reason_only_for_authorized_callers() {
        let s = start(Some("t0ken")).await;
        s.fake.ready.store(false, Ordering::SeqCst);
        for client in [h1(), h2c()] {
            for auth in [None, Some("Bearer wrong"), Some("Basic t0ken")] {
                let g = call(&client, s.addr, Method::GET, "/readyz", auth).await;
                assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(g.body.trim(), r#"{"status":"not_ready"}"#, "{auth:?}");
            }
            let g = call(
                &client,
                s.addr,
                Method::GET,
                "/readyz",
                Some("Bearer t0ken"),
            )
            .await;
            assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
            let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
            assert_eq!(v["reason"], NOT_READY);
        }
        // An empty token matches nothing: no reason either.
        let s = start(Some("")).await;
        s.fake.ready.store(false, Ordering::SeqCst);
        let g = call(&h1(), s.addr, Method::GET, "/readyz", Some("Bearer ")).await;
        assert_eq!(g.body.trim(), r#"{"status":"not_ready"}"#);
        // Without a token, whoever reaches the loopback API sees the reason.
        let s = start(None).await;
        s.fake.ready.store(false, Ordering::SeqCst);
        let g = call(&h1(), s.addr, Method::GET, "/readyz", None).await;
        let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
        assert_eq!(v["reason"], NOT_READY);
        // ... but not a web page that reached it (DNS rebinding, or its script's `Origin`):
        // the status only, as to an unauthorized caller.
        let port = s.addr.port();
        let evil_host = format!("rebound.example:{port}");
        for fields in [
            vec![("host", evil_host.as_str())],
            vec![("origin", "https://evil.example")],
        ] {
            let g = call_with(&h1(), s.addr, Method::GET, "/readyz", &fields).await;
            assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(g.body.trim(), r#"{"status":"not_ready"}"#, "{fields:?}");
        }
    }

    /// While a reload runs, another `POST /reload` is refused with 409 instead of starting a
    /// second; once it has finished, the next one runs. A connection waiting for its reload
    /// is busy, not idle, however long the reload takes.
    #[tokio::test]
    async fn one_reload_at_a_time() {
        let (began_tx, mut began) = tokio::sync::mpsc::unbounded_channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let fake = Fake {
            reload_gate: Some(ReloadGate {
                began: began_tx,
                release: Mutex::new(release_rx),
            }),
            ..Fake::new(None)
        };
        let limits = Limits {
            idle: Duration::from_millis(100),
            close_grace: Duration::from_millis(50),
            ..Limits::default()
        };
        let s = start_with(fake, limits).await;
        let addr = s.addr;
        let reload = move || {
            tokio::spawn(async move { call(&h1(), addr, Method::POST, "/reload", None).await })
        };
        let wait = Duration::from_secs(3);

        let first = reload();
        timeout(wait, began.recv()).await.unwrap().unwrap();
        for client in [h1(), h2c()] {
            let g = timeout(wait, call(&client, addr, Method::POST, "/reload", None))
                .await
                .expect("a second reload was started instead of refused");
            assert_problem(&g, 409, "admin_reload_in_progress");
            assert_eq!(header(&g, "retry-after"), "1");
        }
        // Longer than the idle limit and its grace.
        tokio::time::sleep(Duration::from_millis(400)).await;
        release.send(()).unwrap();
        let g = timeout(wait, first).await.unwrap().unwrap();
        assert_eq!(g.status, StatusCode::OK, "{}", g.body);

        let next = reload();
        timeout(wait, began.recv()).await.unwrap().unwrap();
        release.send(()).unwrap();
        let g = timeout(wait, next).await.unwrap().unwrap();
        assert_eq!(g.status, StatusCode::OK, "{}", g.body);
        assert_eq!(s.fake.reloads.load(Ordering::SeqCst), 2);
    }

    /// A token id goes into log lines: one that could break a line, or is not a short
    /// printable string, is refused before it reaches the source.
    #[tokio::test]
    async fn token_ids_that_could_break_a_log_line_are_refused() {
        let s = start(None).await;
        let long = "x".repeat(MAX_TOKEN_ID_LEN + 1);
        for bad in [
            serde_json::json!({"token_id": "jti-1\r\nINFO forged line"}),
            serde_json::json!({"token_id": "jti-1\nforged"}),
            serde_json::json!({"token_id": "two words"}),
            serde_json::json!({"token_id": "tab\there"}),
            serde_json::json!({"token_id": "del\u{7f}"}),
            serde_json::json!({"token_id": "jtí"}),
            serde_json::json!({"token_id": long}),
            serde_json::json!({"token_id": 42}),
            serde_json::json!({"token_id": ["a"]}),
            serde_json::json!({"token_id": "a b", "api_key": "k"}),
        ] {
            let g = post(s.addr, "/auth/revocations", &[], &bad.to_string()).await;
            assert_problem(&g, 400, "admin_bad_request");
            assert!(!g.body.contains("forged"), "{}", g.body);
        }
        assert!(
            s.fake.revoked.lock().unwrap().is_empty(),
            "an invalid token id reached the source"
        );
        for good in [
            serde_json::json!({"token_id": "x".repeat(MAX_TOKEN_ID_LEN)}),
            serde_json::json!({"token_id": "jti-1.2_3~!\"#$%&'()*+,/:;<=>?@[\\]^`{|}"}),
            serde_json::json!({"token_id": ""}),
            serde_json::json!({"token_id": null, "api_key": "any key"}),
            serde_json::json!({"api_key": "any key"}),
        ] {
            let g = post(s.addr, "/auth/revocations", &[], &good.to_string()).await;
            assert_eq!(g.status, StatusCode::CREATED, "{good}: {}", g.body);
        }
        assert_eq!(s.fake.revoked.lock().unwrap().len(), 5);
    }

    /// Captured log output.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
        type Writer = Logs;
        fn make_writer(&'a self) -> Logs {
            self.clone()
        }
    }

    /// Every request is logged once at the default level, with peer, method, path and
    /// status: refused ones (401) at warn; the `POST`s that answer early too. Neither the
    /// token nor a body shows.
    #[tokio::test]
    async fn every_request_is_logged_once() {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .without_time()
            .finish();
        // The runtime of this test is single-threaded: the server's tasks run on this thread.
        let _guard = tracing::subscriber::set_default(subscriber);
        let s = start(Some("s3cret-token")).await;
        let ok = [("authorization", "Bearer s3cret-token")];
        let c = h1();

        let g = call(&c, s.addr, Method::GET, "/healthz", None).await;
        assert_eq!(g.status, StatusCode::OK);
        let g = call(
            &c,
            s.addr,
            Method::GET,
            "/auth",
            Some("Bearer s3cret-token"),
        )
        .await;
        assert_eq!(g.status, StatusCode::OK);
        let g = call(
            &c,
            s.addr,
            Method::GET,
            "/config",
            Some("Bearer s3cret-wrong"),
        )
        .await;
        assert_eq!(g.status, StatusCode::UNAUTHORIZED);
        let g = post(
            s.addr,
            "/bans",
            &ok,
            r#"{"address": "192.0.2.7", "for": "1h"}"#,
        )
        .await;
        assert_eq!(g.status, StatusCode::CREATED, "{}", g.body);
        let g = post(
            s.addr,
            "/auth/revocations",
            &ok,
            r#"{"token_id": "jti-77"}"#,
        )
        .await;
        assert_eq!(g.status, StatusCode::CREATED, "{}", g.body);
        let g = post(s.addr, "/reload", &[], "").await;
        assert_eq!(g.status, StatusCode::UNAUTHORIZED);

        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        // An answered probe is logged at `debug` only (probes come every few seconds).
        assert!(!text.contains("path=/healthz"), "{text}");
        for (method, path, status, level) in [
            ("GET", "/auth", 200, "INFO"),
            ("GET", "/config", 401, "WARN"),
            ("POST", "/bans", 201, "INFO"),
            ("POST", "/auth/revocations", 201, "INFO"),
            ("POST", "/reload", 401, "WARN"),
        ] {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(&format!("path={path} ")))
                .collect();
            assert_eq!(lines.len(), 1, "{path}:\n{text}");
            let line = lines[0];
            assert!(line.trim_start().starts_with(level), "{line}");
            for field in [
                "peer=127.0.0.1:".to_string(),
                format!("method={method} "),
                format!("status={status}"),
            ] {
                assert!(line.contains(&field), "{field} in {line}");
            }
        }
        for secret in ["s3cret", "192.0.2.7", "jti-77", "authorization"] {
            assert!(!text.contains(secret), "{secret}:\n{text}");
        }
    }
}
