//! Upstream pools: where a routed request goes.
//!
//! * **Takes**: a compiled `portcullis_config::Upstream` (kind `proxy`) and, per request, an
//!   origin-form request (path and query only) whose headers are final.
//! * **Produces**: the response of one target — chosen by smooth weighted round robin or by
//!   least requests (power of two random choices) among the *eligible* targets — with a body
//!   that holds the target's in-flight count until it ends or is dropped, and with the
//!   response's extensions intact (so `hyper::upgrade::on` works on a 101).
//! * **Rejects**: [`UpstreamError::NoEligibleTarget`] when every target is unhealthy or ejected
//!   (nothing is sent); `Connect`, `Timeout`, `Protocol` errors otherwise, which the engine maps
//!   to 503/504/502 problems through [`UpstreamError::reason`].
//!
//! Invariants:
//! * Eligible = healthy by active checks (targets start healthy) and not passively ejected.
//! * Only requests the caller marks retryable (idempotent methods) *and* whose body is known
//!   to be empty are retried — a streamed body cannot be replayed. Retries happen on connect
//!   errors (the request never left), on a fresh connection the target closed before any byte
//!   of an answer (direct client) or before it took the request (shared HTTP/2 connection),
//!   and on the configured statuses, never on a timeout or a failure once an answer began. A
//!   retry goes only to a target this request has not tried (none left: the last answer or
//!   error stands), never after an answer with `Retry-After`, and only while the retries under
//!   way are within the budget (`budget_percent` of the requests under way, at least
//!   `min_concurrent`).
//! * Passive health counts against a target what says something of it: connect errors,
//!   timeouts (unless the request body was still being sent), exchanges it broke off or botched
//!   before its answer's head (unless the request's own body failed, or a pooled connection of
//!   the direct client failed before any byte of an answer: the keep-alive race), 502/503/504.
//!   The same race on a target's shared HTTP/2 connection (closed, or `GOAWAY`, before it
//!   took the request, which hyper then hands back unsent) is not counted either: the request
//!   goes on a new connection.
//!   A request counts against one target for each kind of failure: a retry failing the same
//!   way is taken for the request's doing. Ejection is bounded (`health.rs`): at most half the
//!   targets at once, never the last eligible one.
//! * Every answer's trailer section is held to `portcullis_core::trailer_allowed` in its body
//!   (`body.rs`), whichever client read it.
//! * Every wait is bounded: connect timeout in the connector (for a shared HTTP/2 connection,
//!   TCP, TLS and the HTTP/2 preface together), response-head timeout per attempt,
//!   health-check timeout per probe.
//! * Selection, counters and ejection are atomics; the locks on the request path are a
//!   target's idle list of the direct client, held for a push or a pop, and a target's shared
//!   HTTP/2 connection, held to take a handle on it. The request head is borrowed by the
//!   direct client and moved to hyper's, not copied, unless a retry may need it again.
//! * Requests without an upgrade whose body is empty or of known length go to cleartext
//!   HTTP/1.1 targets through the direct client (`h1.rs`, ADR 0008). To a target whose
//!   connections may speak HTTP/2 (`protocol: http2`, or `auto` to an `https://` target) the
//!   rest go over its one shared HTTP/2 connection (`h2.rs`, ADR 0015), each with its host as
//!   `:authority` — under `auto`, upgrades and every request to a target that chose HTTP/1.1
//!   by ALPN go through an HTTP/1.1 client instead —, the others through hyper-util's client.
//!   All share selection, retries, ejection and error mapping.
//! * How many connections the gateway opens to a target never depends on the host a request
//!   names: hyper-util's clients get URIs naming the target (one pool per target), and the
//!   host reaches the target in `Host` or as the shared connection's `:authority`.
//! * TLS to targets is TLS 1.2+ with certificate verification always on; there is no insecure
//!   mode.

/// A retry counted as under way until it is dropped (its attempt ended, or the next retry
/// of the same request took its place).
struct RetryPermit<'a>(&'a AtomicUsize);

impl Drop for RetryPermit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

mod balance;
mod body;
mod h1;
mod h2;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use h1::differential as h1_differential;
mod health;
#[cfg(test)]
mod tests;

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::header::{HOST, HeaderValue, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_config::{
    Balance, HealthCheck, HostHeader, PassiveHealth, Retries, Upstream, UpstreamProtocol,
};
use portcullis_core::{BoxBody, BoxError, RejectReason};
use portcullis_telemetry::Metrics;

use self::balance::{Tried, weighted_schedule};
use self::body::{GuardedBody, InFlight, Load};
use self::h1::{Direct, IdleConns, RequestHead, SendError};
use self::h2::{Mux, MuxError, Parked, Sent};
pub use self::health::HealthChecks;
use crate::problem::empty_body;

type Connector = HttpsConnector<HttpConnector>;
/// A connection as the connector makes it (TCP, or TLS over TCP).
type Stream = <Connector as tower_service::Service<Uri>>::Response;
type HttpClient = Client<FixedTarget, BoxBody>;

/// The connector of one target's hyper-util client: it dials the target — its address, and its
/// name for TLS (SNI, certificate) — whatever authority a request's URI names. Every URI sent
/// through that client names the target (hyper-util keeps its connections by the URI's
/// authority: one pool per target); this keeps the connections on the target even so, should
/// a URI ever name something else.
#[derive(Clone)]
struct FixedTarget {
    inner: Connector,
    /// `scheme://host:port` of the target.
    dst: Uri,
    /// Under `auto` to an `https://` target: a connection the shared HTTP/2 path made and
    /// found HTTP/1.1 by ALPN, taken before dialling a new one.
    parked: Option<Parked>,
}

impl tower_service::Service<Uri> for FixedTarget {
    type Response = <Connector as tower_service::Service<Uri>>::Response;
    type Error = <Connector as tower_service::Service<Uri>>::Error;
    type Future = <Connector as tower_service::Service<Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, _named: Uri) -> Self::Future {
        if let Some(s) = self.parked.as_ref().and_then(Parked::take) {
            return Box::pin(std::future::ready(Ok(s)));
        }
        self.inner.call(self.dst.clone())
    }
}

/// The configuration allows at most 5 retries; the attempt bookkeeping ([`Tried`]) is sized
/// for this many attempts and never allocates.
const MAX_ATTEMPTS: u32 = 6;

/// Options of one forward.
#[derive(Clone, Copy, Debug)]
pub struct ForwardOpts<'a> {
    /// Bound on the wait for the response head, per attempt.
    pub timeout: Duration,
    /// The caller allows retries (idempotent method, no upgrade).
    pub retryable: bool,
    /// Where the client connection keeps its response timer between requests.
    pub timer: Option<&'a TimerSlot>,
    /// The gateway's own fields as HTTP/1.1 field lines (`name: value` CRLF each;
    /// [`FieldSink::Wire`](crate::headers::FieldSink::Wire)), sent after the request's (the
    /// map has none of these names): copied into the head by the direct client, appended to
    /// the map for hyper's.
    pub extra: &'a [u8],
    /// Fields the caller may still add to the answer's map: room kept in it when it is made,
    /// so that it does not grow (reallocated and rehashed) on the way back. A server that
    /// writes the gateway's own fields itself, after the map's, needs little.
    pub answer_room: usize,
    /// The request body's watcher, when it has one: a deadline that passes while the client
    /// is still sending the body says nothing of the target (a slow upload must not eject a
    /// healthy one), so such a timeout is not counted against it.
    pub request_body: Option<&'a crate::body::Tripped>,
}

/// Room for the fields the gateway adds to an answer's map when the server does not write
/// them itself: the security headers, the request id, CORS or rate-limit fields.
pub const ANSWER_ROOM: usize = 12;

/// A response timer that a client connection keeps for its next request. Reset to a later
/// deadline, a timer still registered is only marked (tokio moves no timer-wheel entry), where
/// a fresh one per request was registered and removed again. Requests running at once on one
/// connection (HTTP/2) find the slot empty and use a timer of their own.
#[derive(Debug, Default)]
pub struct TimerSlot(std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>);

/// The timer lent to one forwarding, given back to its slot when the forwarding ends.
struct LentTimer<'a> {
    slot: Option<&'a TimerSlot>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<'a> LentTimer<'a> {
    fn new(slot: Option<&'a TimerSlot>) -> Self {
        let timer = slot.and_then(|s| s.0.lock().ok().and_then(|mut t| t.take()));
        LentTimer { slot, timer }
    }

    /// The timer, set to go off at `deadline`.
    fn at(&mut self, deadline: tokio::time::Instant) -> Pin<&mut tokio::time::Sleep> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().reset(deadline);
        timer.as_mut()
    }
}

impl Drop for LentTimer<'_> {
    fn drop(&mut self) {
        if let (Some(slot), Some(timer)) = (self.slot, self.timer.take())
            && let Ok(mut t) = slot.0.lock()
        {
            *t = Some(timer);
        }
    }
}

/// A target's answer.
pub struct UpstreamResponse {
    /// The target's response. Its body keeps the target's in-flight count until it ends or is
    /// dropped; its extensions are the ones hyper set (the upgrade handle of a 101).
    pub response: Response<BoxBody>,
    /// `host:port` of the target that answered.
    pub target: Arc<str>,
    /// How many attempts it took (1 = no retry).
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no eligible target")]
    NoEligibleTarget,
    #[error("cannot connect to {target}: {source}")]
    Connect { target: Arc<str>, source: BoxError },
    #[error("{target} did not answer in time")]
    Timeout { target: Arc<str> },
    #[error("exchange with {target} failed: {source}")]
    Protocol { target: Arc<str>, source: BoxError },
}

impl UpstreamError {
    /// The rejection the engine answers with: 503, 504 or 502.
    pub fn reason(&self) -> RejectReason {
        match self {
            UpstreamError::NoEligibleTarget => RejectReason::NoHealthyUpstream,
            UpstreamError::Timeout { .. } => RejectReason::UpstreamTimeout,
            UpstreamError::Connect { .. } | UpstreamError::Protocol { .. } => {
                RejectReason::UpstreamError
            }
        }
    }

    /// The target involved, if a request was attempted.
    pub fn target(&self) -> Option<&str> {
        match self {
            UpstreamError::NoEligibleTarget => None,
            UpstreamError::Connect { target, .. }
            | UpstreamError::Timeout { target }
            | UpstreamError::Protocol { target, .. } => Some(target),
        }
    }
}

/// A target's state as the admin API and metrics show it.
#[derive(Debug, Clone)]
pub struct TargetHealth {
    pub authority: Arc<str>,
    /// Healthy by active checks (always true without them).
    pub healthy: bool,
    /// Passively ejected right now.
    pub ejected: bool,
    /// Requests whose response head or body is still outstanding.
    pub in_flight: usize,
    /// Consecutive passive failures since the last success or ejection.
    pub consecutive_failures: u32,
}

/// One target and its live state. Everything mutable is an atomic: the request path reads and
/// updates it without a lock.
struct Target {
    /// `host:port`, shared with responses, errors and metrics without copying.
    authority: Arc<str>,
    scheme: Scheme,
    /// The same authority, parsed once for building request URIs (cloning it is a refcount).
    uri_authority: Authority,
    /// The same authority as a `Host` value (for `host_header: target` and health checks).
    host_value: HeaderValue,
    /// How requests reach it through hyper (those the direct client does not take).
    conns: Conns,
    /// Active health: true until the checks say otherwise.
    healthy: AtomicBool,
    /// Milliseconds since the pool's epoch until which the target is ejected (0: not ejected).
    ejected_until: AtomicU64,
    /// Consecutive passive failures.
    failures: AtomicU32,
    /// Shared with the response body guard, which outlives the borrow of the pool.
    in_flight: Arc<Load>,
    /// Consecutive active-check results, for the healthy/unhealthy thresholds.
    check_ok: AtomicU32,
    check_fail: AtomicU32,
    /// Idle connections of the direct HTTP/1.1 client (cleartext targets).
    idle: Arc<IdleConns>,
}

/// The connections of one target through hyper. None of them depends on the host a request
/// names: a client sending many `Host` values opens no more upstream connections than one
/// sending a single one.
enum Conns {
    /// A target whose connections never speak HTTP/2 (cleartext under `auto`, or `http1`):
    /// hyper-util's client, every URI naming the target (see [`FixedTarget`]). HTTP/1.1 writes
    /// the origin form and takes the host from `Host`.
    Http1(HttpClient),
    /// A target whose connections may speak HTTP/2 (`protocol: http2`, or `auto` to an
    /// `https://` target): its one shared connection, every request's `:authority` the host
    /// the target is to see (`h2.rs`). Under `auto` (ALPN decides) also a hyper-util client
    /// that offers only http/1.1, every URI naming the target, for the requests that go over
    /// HTTP/1.1: upgrades, and all of them once the target chose HTTP/1.1 by ALPN.
    Shared {
        mux: Arc<Mux>,
        /// The health checks' own shared connection: a probe must not wait for a stream behind
        /// the requests that fill the target's `SETTINGS_MAX_CONCURRENT_STREAMS` (long polls,
        /// event streams), which would make a busy target look dead.
        probe: Arc<Mux>,
        http1: Option<HttpClient>,
    },
}

/// The way one request goes through hyper.
#[derive(Clone, Copy)]
enum Via<'a> {
    /// The shared HTTP/2 connection; under `auto`, the client to fall back on should the
    /// connection turn out HTTP/1.1.
    Mux(&'a Arc<Mux>, Option<&'a HttpClient>),
    /// hyper-util's client, the URI naming the target.
    Client(&'a HttpClient),
}

impl Target {
    /// How a request goes to this target through hyper. An upgrade (WebSocket) is HTTP/1.1
    /// only: under `auto` it goes through the HTTP/1.1 client even to a target that speaks
    /// HTTP/2 (under `http2` there is nothing else; hyper's HTTP/2 client leaves its upgrade
    /// fields out).
    fn via(&self, upgrade: bool) -> Via<'_> {
        match &self.conns {
            Conns::Http1(c) => Via::Client(c),
            Conns::Shared {
                mux,
                http1: Some(c),
                ..
            } if upgrade || mux.speaks_http1() => Via::Client(c),
            Conns::Shared { mux, http1, .. } => Via::Mux(mux, http1.as_ref()),
        }
    }

    /// How a health check goes to this target: as a request without an upgrade, but on the
    /// checks' own connection where requests share one.
    fn via_probe(&self) -> Via<'_> {
        match &self.conns {
            Conns::Http1(c) => Via::Client(c),
            Conns::Shared {
                mux,
                probe,
                http1: Some(c),
            } if mux.speaks_http1() || probe.speaks_http1() => Via::Client(c),
            Conns::Shared { probe, http1, .. } => Via::Mux(probe, http1.as_ref()),
        }
    }
}

/// How an exchange through hyper failed (the pool maps it to a [`Failure`]).
enum HyperFailure {
    /// Nothing was sent. `counted`: a failure of the target to count (not for a request that
    /// only waited for another's connect to the same target, which counts once).
    Connect { error: BoxError, counted: bool },
    /// A connection made for the request closed before taking it.
    Unanswered(BoxError),
    /// The request could not be built for the way it goes.
    Request(BoxError),
    /// The exchange failed after the request was handed over. `body_failed`: hyper blames the
    /// request's own body (a user error).
    Exchange { error: BoxError, body_failed: bool },
}

/// Sends `req` to `t` the way `via` says. Its URI names the host the target is to see when
/// `via` is the shared HTTP/2 connection, the target otherwise.
async fn send_via(
    t: &Target,
    via: Via<'_>,
    req: Request<BoxBody>,
) -> Result<Response<Incoming>, HyperFailure> {
    let (mux, fallback) = match via {
        Via::Client(c) => return send_general(c, req).await,
        Via::Mux(mux, fallback) => (mux, fallback),
    };
    // Boxed: the shared connection's future (its checkout, the watch on a connect under
    // way, a head kept for a resend) is kilobytes, and every request's future would carry
    // that room — moved with it at each step — although most go through the direct client.
    match Box::pin(mux.send(req)).await {
        Ok(Sent::Answer(resp)) => Ok(resp),
        Ok(Sent::Http1(mut req)) => {
            let Some(c) = fallback else {
                return Err(HyperFailure::Connect {
                    error: "the target did not start HTTP/2".into(),
                    counted: true,
                });
            };
            // Not sent yet: it goes over HTTP/1.1 with the target in its URI (one pool per
            // target), its host in `Host` as ever.
            let mut uri = std::mem::take(req.uri_mut()).into_parts();
            uri.authority = Some(t.uri_authority.clone());
            *req.uri_mut() =
                Uri::from_parts(uri).map_err(|e| HyperFailure::Request(Box::new(e)))?;
            send_general(c, req).await
        }
        Err(MuxError::Connect { error, counted }) => Err(HyperFailure::Connect { error, counted }),
        Err(MuxError::Unanswered(e)) => Err(HyperFailure::Unanswered(e)),
        // Not processed, and not to be sent again (it has a body): not the target's failure.
        Err(MuxError::Refused(e)) => Err(HyperFailure::Exchange {
            body_failed: true,
            error: Box::new(e),
        }),
        Err(MuxError::Exchange(e)) => Err(HyperFailure::Exchange {
            body_failed: e.is_user(),
            error: Box::new(e),
        }),
    }
}

/// One exchange through hyper-util's client.
async fn send_general(
    c: &HttpClient,
    req: Request<BoxBody>,
) -> Result<Response<Incoming>, HyperFailure> {
    match c.request(req).await {
        Ok(resp) => Ok(resp),
        Err(e) if e.is_connect() => Err(HyperFailure::Connect {
            error: Box::new(e),
            counted: true,
        }),
        Err(e) => Err(HyperFailure::Exchange {
            body_failed: request_body_failed(&e),
            error: Box::new(e),
        }),
    }
}

/// The targets of one upstream and the client that talks to them.
pub struct UpstreamPool {
    name: Arc<str>,
    /// `protocol`: over HTTP/2 only (`http2`), requests carry their host as `:authority`
    /// alone, without a `Host` field.
    protocol: UpstreamProtocol,
    /// The direct HTTP/1.1 client, for requests to cleartext targets without an upgrade and
    /// with a body of known length or none (`None` when the upstream speaks HTTP/2).
    direct: Option<Direct>,
    targets: Vec<Target>,
    /// Weighted round-robin schedule (target indexes, interleaved), walked by `cursor`.
    schedule: Vec<u32>,
    cursor: AtomicUsize,
    balance: Balance,
    retries: Retries,
    /// Retries under way now (see [`UpstreamPool::retry_permit`]).
    retrying: AtomicUsize,
    passive: PassiveHealth,
    /// At most this share of the targets (percent; rounded down, at least one) is passively
    /// ejected at once.
    max_ejection_percent: u32,
    /// `health_check.host` as the checks' URI authority and `Host` value; `None`: the target's.
    health_host: Option<(Authority, HeaderValue)>,
    /// Held while an ejection is decided (see `eject`), never on the request path otherwise.
    ejecting: std::sync::Mutex<()>,
    health: Option<HealthCheck>,
    host_header: HostHeader,
    /// Longest wait for the next piece of an answer's body ([`GuardedBody`]).
    read_timeout: Duration,
    /// How long an idle connection is kept (direct client, shared HTTP/2 connections).
    idle_timeout: Duration,
    /// Time base of `ejected_until`: an `Instant` does not fit in an atomic, milliseconds do.
    epoch: Instant,
}

fn tls_config(cfg: &Upstream) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    // Roots matter only for https targets; a cleartext-only pool must not fail on a host
    // without a system trust store.
    if cfg.targets.iter().any(|t| t.tls) {
        match &cfg.tls_roots {
            Some(certs) => {
                for c in certs {
                    roots
                        .add(c.clone())
                        .map_err(|e| format!("tls.ca_file: unusable CA certificate: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("tls.ca_file holds no certificate".into());
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for e in &native.errors {
                    tracing::debug!(upstream = %cfg.name, error = %e, "system root certificates: partial load");
                }
                let (added, ignored) = roots.add_parsable_certificates(native.certs);
                tracing::debug!(upstream = %cfg.name, added, ignored, "system root certificates loaded");
                if roots.is_empty() {
                    return Err(
                        "no system root certificates could be loaded; set tls.ca_file".into(),
                    );
                }
            }
        }
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS client configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The connectors of a pool: the one its connections are made with, and — under `auto` with
/// `https://` targets — the one of their HTTP/1.1 client, which offers only http/1.1 by ALPN:
/// a connection of that client can never turn out HTTP/2, where hyper's client would send the
/// URI's authority (the target's there) as `:authority` instead of the request's host.
fn build_connectors(cfg: &Upstream) -> Result<(Connector, Option<Connector>), String> {
    let tls = tls_config(cfg)?;
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    // The TLS connector above it decides by scheme; the TCP connector must accept https URIs.
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http();
    // The enabled protocols set the ALPN list offered over TLS.
    let connector = match cfg.protocol {
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http.clone()),
        UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http.clone()),
        // ALPN h2 + http/1.1 over TLS; in cleartext the gateway speaks HTTP/1.1 (no h2c
        // upgrade), which is what `auto` promises.
        UpstreamProtocol::Auto => builder
            .enable_http1()
            .enable_http2()
            .wrap_connector(http.clone()),
    };
    let http1_only = (cfg.protocol == UpstreamProtocol::Auto && cfg.targets.iter().any(|t| t.tls))
        .then(|| {
            // The builder offers no ALPN at all for HTTP/1.1 alone; saying http/1.1 is
            // kinder to servers that insist on ALPN, and the effect is the same.
            let mut tls = tls;
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            HttpsConnector::from((http, Arc::new(tls)))
        });
    Ok((connector, http1_only))
}

/// hyper-util's client for one target. It keeps idle connections by the scheme and authority
/// of the request URI, which for every request through it names the target: one pool per
/// target. Its connections speak HTTP/1.1 only (cleartext, `http1`, or a connector that offers
/// only http/1.1 by ALPN): HTTP/2 goes over the target's shared connection.
fn build_client(
    cfg: &Upstream,
    connector: &Connector,
    dst: Uri,
    parked: Option<Parked>,
) -> HttpClient {
    let connector = FixedTarget {
        inner: connector.clone(),
        dst,
        parked,
    };
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.idle_timeout)
        .pool_max_idle_per_host(cfg.max_idle_per_target)
        .build(connector)
}

/// True if the request's `Content-Length` (if any) is `n`: the direct client writes the body
/// under that length, and leaves anything odd to the general client.
fn length_agrees(headers: &http::HeaderMap, n: u64) -> bool {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (None, _) => true,
        (Some(v), None) => v.to_str().ok().and_then(|s| s.parse::<u64>().ok()) == Some(n),
        _ => false,
    }
}

/// How an attempt failed, whichever client made it.
enum Failure {
    /// Nothing was sent.
    Connect(BoxError),
    /// Nothing was sent: the connect this request waited for, started by another request to
    /// the same target's shared HTTP/2 connection, failed. Retried like a connect error, but
    /// not counted again: that request counted it.
    ConnectWaited(BoxError),
    /// The target took a fresh connection and closed it before any byte of an answer (direct
    /// client), or before the connection took the request (shared HTTP/2 connection): it
    /// dropped the request. Counted against it, and retried like a connect error
    /// (only requests with an empty body of an idempotent method have retries).
    Unanswered(BoxError),
    /// The exchange failed after the request (or part of it) left. `counted`: whether it says
    /// something of the target — not when the request's own body failed (too large, too
    /// slow, the client gone, not its announced length), nor for the keep-alive race of a
    /// pooled connection the target had just closed, nor when the request could not even be
    /// built.
    Exchange { error: BoxError, counted: bool },
}

/// True if an error of hyper's client is the request body's own (hyper calls it a user error):
/// the body failed, not the target.
fn request_body_failed(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return h.is_user();
        }
        source = s.source();
    }
    false
}

/// Statuses that count as a passive failure: the target (or something in front of it) says it
/// cannot serve.
fn is_failure_status(s: StatusCode) -> bool {
    matches!(
        s,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

impl UpstreamPool {
    /// Builds the pool and its client. Fails on a pool without targets, a target authority
    /// that is not a valid URI authority, or unusable TLS roots. `metrics`: where its answers
    /// cut off by the read timeout are counted.
    pub fn new(
        cfg: &Upstream,
        metrics: Option<&Arc<Metrics>>,
    ) -> Result<Arc<UpstreamPool>, String> {
        if cfg.targets.is_empty() {
            return Err("no targets".into());
        }
        if u32::try_from(cfg.targets.len()).is_err() {
            return Err("too many targets".into());
        }
        let (connector, http1_only) = build_connectors(cfg)?;
        let mut targets = Vec::with_capacity(cfg.targets.len());
        for t in &cfg.targets {
            let uri_authority: Authority = t
                .authority
                .parse()
                .map_err(|e| format!("target {}: {e}", t.authority))?;
            let host_value = HeaderValue::from_str(&t.authority)
                .map_err(|e| format!("target {}: {e}", t.authority))?;
            let authority: Arc<str> = Arc::from(t.authority.as_str());
            // `max_idle_per_target: 0` keeps no connection, the shared one included.
            let keep = cfg.max_idle_per_target > 0;
            let mux = |parked: Option<Parked>| {
                Mux::new(
                    connector.clone(),
                    t.base.clone(),
                    cfg.connect_timeout,
                    keep,
                    parked,
                )
            };
            let conns = match (cfg.protocol, &http1_only) {
                (UpstreamProtocol::Http2, _) => Conns::Shared {
                    mux: mux(None),
                    probe: mux(None),
                    http1: None,
                },
                (UpstreamProtocol::Auto, Some(http1)) if t.tls => {
                    let parked = Parked::default();
                    Conns::Shared {
                        mux: mux(Some(parked.clone())),
                        probe: mux(Some(parked.clone())),
                        http1: Some(build_client(cfg, http1, t.base.clone(), Some(parked))),
                    }
                }
                _ => Conns::Http1(build_client(cfg, &connector, t.base.clone(), None)),
            };
            targets.push(Target {
                conns,
                in_flight: Load::new(cfg.name.clone(), authority.clone(), metrics.cloned()),
                authority,
                scheme: if t.tls { Scheme::HTTPS } else { Scheme::HTTP },
                uri_authority,
                host_value,
                healthy: AtomicBool::new(true),
                ejected_until: AtomicU64::new(0),
                failures: AtomicU32::new(0),
                check_ok: AtomicU32::new(0),
                check_fail: AtomicU32::new(0),
                idle: Arc::default(),
            });
        }
        let weights: Vec<u32> = cfg.targets.iter().map(|t| t.weight).collect();
        let health_host = match cfg.health_check.as_ref().and_then(|h| h.host.as_deref()) {
            Some(h) => Some((
                h.parse::<Authority>()
                    .map_err(|e| format!("health_check.host {h}: {e}"))?,
                HeaderValue::from_str(h).map_err(|e| format!("health_check.host {h}: {e}"))?,
            )),
            None => None,
        };
        Ok(Arc::new(UpstreamPool {
            name: cfg.name.clone(),
            protocol: cfg.protocol,
            direct: (cfg.protocol != UpstreamProtocol::Http2).then_some(Direct {
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.idle_timeout,
                max_idle: cfg.max_idle_per_target,
            }),
            targets,
            schedule: weighted_schedule(&weights),
            cursor: AtomicUsize::new(0),
            balance: cfg.balance,
            retries: cfg.retries.clone(),
            retrying: AtomicUsize::new(0),
            passive: cfg.passive_health.clone(),
            max_ejection_percent: cfg.passive_health.max_ejection_percent,
            health_host,
            ejecting: std::sync::Mutex::new(()),
            health: cfg.health_check.clone(),
            host_header: cfg.host_header,
            read_timeout: cfg.read_timeout,
            idle_timeout: cfg.idle_timeout,
            epoch: Instant::now(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes over what `old` (the same upstream in the configuration a reload replaces) knows
    /// of its targets' health, target by target (by authority): a target found down, or
    /// ejected for failures, stays so — a reload must not send traffic back to it until its
    /// health checks or its ejection time say so.
    /// What the active checks found is kept only while there still are checks (without them
    /// nothing would ever set a target healthy again), and only for the same target: the
    /// same address and scheme.
    pub fn inherit_health(&self, old: &UpstreamPool) {
        let (now, old_now) = (self.now_ms(), old.now_ms());
        let checked = self.health.is_some() && old.health.is_some();
        let same = |t: &Target| {
            old.targets
                .iter()
                .find(|o| o.authority == t.authority && o.scheme == t.scheme)
        };
        for t in &self.targets {
            let Some(o) = same(t) else { continue };
            if checked {
                t.healthy
                    .store(o.healthy.load(Ordering::Relaxed), Ordering::Relaxed);
                t.check_ok
                    .store(o.check_ok.load(Ordering::Relaxed), Ordering::Relaxed);
                t.check_fail
                    .store(o.check_fail.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            t.failures
                .store(o.failures.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        // Ejections once every target's active health is known, and within this pool's bounds
        // (other targets may allow fewer ejections at once, or leave none eligible).
        for (i, t) in self.targets.iter().enumerate() {
            let left = same(t).map_or(0, |o| {
                o.ejected_until
                    .load(Ordering::Relaxed)
                    .saturating_sub(old_now)
            });
            if left > 0 {
                self.eject(i, now.saturating_add(left), now);
            }
        }
    }

    /// Milliseconds since the epoch, at least 1 so that 0 can mean "not ejected".
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// True if at least one target is eligible (healthy and not ejected).
    pub fn has_eligible_target(&self) -> bool {
        let now = self.now_ms();
        (0..self.targets.len()).any(|i| self.eligible(i, now))
    }

    /// Every target's state, in configuration order.
    pub fn health_snapshot(&self) -> Vec<TargetHealth> {
        let now = self.now_ms();
        self.targets
            .iter()
            .map(|t| TargetHealth {
                authority: t.authority.clone(),
                healthy: t.healthy.load(Ordering::Relaxed),
                ejected: t.ejected_until.load(Ordering::Relaxed) > now,
                in_flight: t.in_flight.count.load(Ordering::Relaxed),
                consecutive_failures: t.failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The authority a request to target `t` names in its URI: the host the target is to see
    /// when it goes over the shared HTTP/2 connection (`over_h2`: its `:authority`, the
    /// request's `Host` with `host_header: preserve`, else the target), the target otherwise
    /// (hyper-util's client keeps its connections by it). A `Host` that is no authority (the
    /// gateway refuses such requests before) or carries user information is refused rather
    /// than sent with an `:authority` that disagrees with it.
    fn uri_authority(
        &self,
        t: &Target,
        headers: &http::HeaderMap,
        over_h2: bool,
    ) -> Result<Authority, BoxError> {
        if !over_h2 || self.host_header == HostHeader::Target {
            return Ok(t.uri_authority.clone());
        }
        match portcullis_core::header_value(headers, &HOST) {
            None => Ok(t.uri_authority.clone()),
            Some(v) if v.as_bytes().contains(&b'@') => {
                Err("the request's Host is not a host and port".into())
            }
            Some(v) => Ok(Authority::try_from(v.as_bytes())?),
        }
    }

    /// The request for one attempt (`over_h2`: see [`uri_authority`](Self::uri_authority)).
    /// The last attempt moves the head's parts; earlier ones copy them, since a retry needs
    /// them again (only retryable requests have earlier ones).
    fn upstream_request(
        &self,
        t: &Target,
        parts: &mut http::request::Parts,
        body: BoxBody,
        last: bool,
        over_h2: bool,
    ) -> Result<Request<BoxBody>, BoxError> {
        // Written with a leading `/` when it lacks one (a query alone), as the direct client
        // writes it: hyper's HTTP/1.1 client would, but its HTTP/2 one sends the `:path` as
        // given, and `?x=1` is no valid `:path` (RFC 9113 §8.3.1).
        let pq = match parts.uri.path_and_query() {
            Some(p) if p.as_str().starts_with('/') || p.as_str() == "*" => p.clone(),
            Some(p) => PathAndQuery::try_from(format!("/{}", p.as_str()))?,
            None => PathAndQuery::from_static("/"),
        };
        let uri = Uri::builder()
            .scheme(t.scheme.clone())
            .authority(self.uri_authority(t, &parts.headers, over_h2)?)
            .path_and_query(pq)
            .build()?;
        // The version is left at its default (HTTP/1.1): hyper's HTTP/2 client takes it as it
        // is, hyper-util's refuses an HTTP/2-versioned request on an HTTP/1 connection.
        let mut req = Request::new(body);
        *req.uri_mut() = uri;
        if last {
            *req.method_mut() = std::mem::take(&mut parts.method);
            *req.headers_mut() = std::mem::take(&mut parts.headers);
            *req.extensions_mut() = std::mem::take(&mut parts.extensions);
        } else {
            *req.method_mut() = parts.method.clone();
            *req.headers_mut() = parts.headers.clone();
            *req.extensions_mut() = parts.extensions.clone();
        }
        if self.protocol == UpstreamProtocol::Http2 {
            // The `:authority` carries the host (RFC 9113 §8.3.1: a `Host` beside it must not
            // disagree; none is simplest).
            req.headers_mut().remove(HOST);
        } else if self.host_header == HostHeader::Target {
            req.headers_mut().insert(HOST, t.host_value.clone());
        }
        Ok(req)
    }

    /// Where a retry goes: a target this request has not tried yet (a retry to a target that
    /// just failed it only doubles its load), when the retries under way stay within the
    /// budget; `held` becomes its permit. The request's previous retry, over now, gives its
    /// permit back first: it does not count against its own next one. `None`: no retry.
    fn retry_to<'a>(&'a self, tried: &Tried, held: &mut Option<RetryPermit<'a>>) -> Option<usize> {
        let next = self.pick(self.now_ms(), |i| !tried.contains(i))?;
        *held = None;
        *held = Some(self.retry_permit()?);
        Some(next)
    }

    /// A retry may start while the retries under way are fewer than `budget_percent` % of the
    /// requests under way to the upstream, or than `min_concurrent`, whichever is more: when
    /// a whole upstream fails, retries cannot multiply its load. Read only when a retry is
    /// considered.
    fn retry_permit(&self) -> Option<RetryPermit<'_>> {
        let under_way: usize = self
            .targets
            .iter()
            .map(|t| t.in_flight.count.load(Ordering::Relaxed))
            .sum();
        let budget = (under_way.saturating_mul(self.retries.budget_percent as usize) / 100)
            .max(self.retries.min_concurrent as usize);
        // Relaxed: a count compared with an estimate; it guards no other memory.
        if self.retrying.fetch_add(1, Ordering::Relaxed) >= budget {
            self.retrying.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(upstream = %self.name, under_way, budget, "retry budget spent: not retried");
            return None;
        }
        Some(RetryPermit(&self.retrying))
    }

    /// Forwards `req` to one eligible target; see the module header for the retry rules.
    pub async fn forward(
        &self,
        req: Request<BoxBody>,
        opts: ForwardOpts<'_>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        self.forward_head(&mut parts, body, opts, &mut None).await
    }

    /// [`forward`](Self::forward) for a request whose head the caller keeps: the head is
    /// borrowed, not moved into this future (the last attempt may still take its header map
    /// and extensions, see `upstream_request`). `target` is set to each attempt's target as
    /// it is picked, so a caller whose future is dropped mid-exchange still knows where the
    /// request went (its audit event says so).
    pub async fn forward_head(
        &self,
        parts: &mut http::request::Parts,
        mut body: BoxBody,
        opts: ForwardOpts<'_>,
        target: &mut Option<Arc<str>>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        // Only a body known to be empty can be sent again: a streamed one is consumed by the
        // first attempt.
        let body_empty = body.is_end_stream() || body.size_hint().exact() == Some(0);
        let max_attempts = if opts.retryable && body_empty {
            1 + self.retries.attempts.min(MAX_ATTEMPTS - 1)
        } else {
            1
        };
        // Requests without an upgrade whose body is empty or of known length go through the
        // direct client when the target is cleartext HTTP/1.1; the rest through the general
        // one.
        let direct_len = if body_empty {
            Some(0)
        } else {
            body.size_hint()
                .exact()
                .filter(|n| length_agrees(&parts.headers, *n))
        };
        let upgrade = parts.method == Method::CONNECT
            || portcullis_core::has_header(&parts.headers, &UPGRADE);
        let direct = self.direct.filter(|_| !upgrade).zip(direct_len);
        let mut tried = Tried::default();
        let mut pick = self.select(&tried);
        let mut attempt = 0;
        // Whether an attempt of this request already counted a failure status or an unanswered
        // request against a target. A request that makes one target fail so is the likely
        // cause when the next fails the same way (a path that makes every backend answer 503
        // or crash): the retry's failure is not counted as well, so that one request cannot
        // count against 1 + attempts targets. Connect errors always count (the request never
        // reached the target).
        let (mut status_counted, mut unanswered_counted) = (false, false);
        let mut timer = LentTimer::new(opts.timer);
        // This request's retry under way, if any (one at a time: the next replaces it).
        let mut retrying: Option<RetryPermit<'_>> = None;
        loop {
            attempt += 1;
            let Some(i) = pick else {
                return Err(UpstreamError::NoEligibleTarget);
            };
            tried.insert(i);
            let t = &self.targets[i];
            *target = Some(t.authority.clone());
            let last = attempt >= max_attempts;
            // Counted from before the connect: a target busy connecting is busy.
            let guard = InFlight::new(&t.in_flight);
            let deadline = tokio::time::Instant::now() + opts.timeout;
            let outcome = {
                let mut expiry = timer.at(deadline);
                // Built in place: a future made first and pinned after is copied whole.
                let mut exchange = std::pin::pin!(async {
                    match direct.filter(|_| t.scheme == Scheme::HTTP) {
                        Some((d, body_len)) => {
                            let head = RequestHead {
                                method: &parts.method,
                                path_and_query: parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/", |p| p.as_str()),
                                headers: &parts.headers,
                                host: (self.host_header == HostHeader::Target)
                                    .then_some(&t.host_value),
                                body_len,
                                extra: opts.extra,
                                answer_room: opts.answer_room,
                            };
                            // A request with a body has one attempt (see `max_attempts`).
                            match d.send(&t.idle, &t.authority, &head, &mut body).await {
                                Ok(resp) => Ok(resp.map(Either::Right)),
                                Err(SendError::Connect(e)) => Err(Failure::Connect(e)),
                                Err(SendError::Unanswered(e)) => Err(Failure::Unanswered(e)),
                                Err(SendError::Request(error) | SendError::Stale(error)) => {
                                    Err(Failure::Exchange {
                                        error,
                                        counted: false,
                                    })
                                }
                                Err(SendError::Other(error)) => Err(Failure::Exchange {
                                    error,
                                    counted: true,
                                }),
                            }
                        }
                        None => {
                            let this_body = if last {
                                std::mem::replace(&mut body, empty_body())
                            } else {
                                empty_body()
                            };
                            let via = t.via(upgrade);
                            let over_h2 = matches!(via, Via::Mux(..));
                            let mut req = self
                                .upstream_request(t, parts, this_body, last, over_h2)
                                .map_err(|error| Failure::Exchange {
                                    error,
                                    counted: false,
                                })?;
                            for (name, value) in crate::headers::wire_fields(opts.extra) {
                                req.headers_mut().append(name, value);
                            }
                            match send_via(t, via, req).await {
                                Ok(resp) => Ok(resp.map(Either::Left)),
                                Err(HyperFailure::Connect {
                                    error,
                                    counted: true,
                                }) => Err(Failure::Connect(error)),
                                Err(HyperFailure::Connect {
                                    error,
                                    counted: false,
                                }) => Err(Failure::ConnectWaited(error)),
                                Err(HyperFailure::Unanswered(e)) => Err(Failure::Unanswered(e)),
                                Err(HyperFailure::Request(error)) => Err(Failure::Exchange {
                                    error,
                                    counted: false,
                                }),
                                Err(HyperFailure::Exchange { error, body_failed }) => {
                                    // The body's failure reaches hyper's HTTP/2 client as a
                                    // stream error, not a user error: a body that did not go
                                    // out whole is taken for the cause.
                                    let counted = !body_failed
                                        && (body_empty
                                            || opts.request_body.is_none_or(|b| b.ended()));
                                    Err(Failure::Exchange { error, counted })
                                }
                            }
                        }
                    }
                });
                std::future::poll_fn(|cx| {
                    // The exchange first: an answer that is there is taken even at the deadline.
                    if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
                        return Poll::Ready(Ok(r));
                    }
                    expiry.as_mut().poll(cx).map(Err)
                })
                .await
            };
            match outcome {
                Err(()) => {
                    if body_empty || opts.request_body.is_none_or(|b| b.ended()) {
                        self.record_failure(i);
                    }
                    return Err(UpstreamError::Timeout {
                        target: t.authority.clone(),
                    });
                }
                Ok(Err(failure @ (Failure::Connect(_) | Failure::ConnectWaited(_)))) => {
                    let source = match failure {
                        Failure::Connect(source) => {
                            self.record_failure(i);
                            source
                        }
                        Failure::ConnectWaited(source)
                        | Failure::Unanswered(source)
                        | Failure::Exchange { error: source, .. } => source,
                    };
                    let err = UpstreamError::Connect {
                        target: t.authority.clone(),
                        source,
                    };
                    // The request never left: safe to send elsewhere.
                    if !last && let Some(next) = self.retry_to(&tried, &mut retrying) {
                        tracing::debug!(upstream = %self.name, target = %t.authority, attempt, error = %err, "connect failed; retrying");
                        pick = Some(next);
                        continue;
                    }
                    return Err(err);
                }
                Ok(Err(Failure::Unanswered(source))) => {
                    if !unanswered_counted {
                        self.record_failure(i);
                        unanswered_counted = true;
                    }
                    let err = UpstreamError::Protocol {
                        target: t.authority.clone(),
                        source,
                    };
                    // Nothing of an answer came: a request that may be repeated (idempotent,
                    // no body) goes elsewhere.
                    if !last && let Some(next) = self.retry_to(&tried, &mut retrying) {
                        tracing::debug!(upstream = %self.name, target = %t.authority, attempt, error = %err, "closed before answering; retrying");
                        pick = Some(next);
                        continue;
                    }
                    return Err(err);
                }
                Ok(Err(Failure::Exchange { error, counted })) => {
                    // A request body that fails (client too slow, too large) surfaces here too;
                    // it is not counted, and must not eject a healthy target.
                    if counted {
                        self.record_failure(i);
                    }
                    return Err(UpstreamError::Protocol {
                        target: t.authority.clone(),
                        source: error,
                    });
                }
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    if !is_failure_status(status) {
                        self.record_success(i);
                    } else if !status_counted {
                        self.record_failure(i);
                        status_counted = true;
                    }
                    // A retry is only worth it if there is somewhere else to send it (and
                    // room in the budget); otherwise the target's own answer is better than a
                    // made-up error. An answer that says when to come back (`Retry-After`)
                    // is the upstream asking for less traffic, not more.
                    if !last
                        && self.retries.on_status.contains(&status)
                        && !resp.headers().contains_key(http::header::RETRY_AFTER)
                        && let Some(next) = self.retry_to(&tried, &mut retrying)
                    {
                        tracing::debug!(upstream = %self.name, target = %t.authority, attempt, %status, "retrying on status");
                        // `resp` (and its body) and `guard` are dropped here.
                        pick = Some(next);
                        continue;
                    }
                    // `map` keeps the head's extensions (hyper's upgrade handle).
                    let response = resp.map(|inner| {
                        GuardedBody::new(inner, guard, self.read_timeout).boxed_unsync()
                    });
                    return Ok(UpstreamResponse {
                        response,
                        target: t.authority.clone(),
                        attempts: attempt,
                    });
                }
            }
        }
    }
}
