//! Upstream pools: where a routed request goes.
//!
//! * **Takes**: a compiled `portcullis_config::Upstream` (kind `proxy`) and, per request, an
//!   origin-form request whose headers are final.
//! * **Produces**: the response of one target — chosen by weighted round robin or by
//!   least requests (power of two random choices) among the *eligible* targets — with a body
//!   that keeps the target's in-flight count until it ends.
//! * **Rejects**: `NoEligibleTarget` when every target is unhealthy or ejected (nothing is
//!   sent); `Connect`, `Timeout`, `Protocol` errors otherwise, which the engine maps to
//!   502/503/504 problems.
//!
//! Invariants:
//! * Eligible = healthy by active checks (targets start healthy) and not passively ejected.
//! * Only idempotent requests with an empty body are retried, on connection failures (the
//!   request never left) and configured statuses; a retry prefers a target not yet tried.
//! * Every wait is bounded: connect timeout in the connector, response-head timeout per attempt.
//! * The hot path takes no lock: selection, counters and ejection are atomics.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_config::{
    Balance, HealthCheck, HostHeader, PassiveHealth, Retries, Upstream, UpstreamProtocol,
};
use portcullis_core::{BoxBody, BoxError, RejectReason};

#[cfg(test)]
mod tests;

type HttpClient = Client<HttpsConnector<HttpConnector>, BoxBody>;

/// Options of one forward.
#[derive(Clone, Copy, Debug)]
pub struct ForwardOpts {
    /// Bound on the wait for the response head, per attempt.
    pub timeout: Duration,
    /// The caller allows retries (idempotent method, no upgrade).
    pub retryable: bool,
}

/// A target's answer.
pub struct UpstreamResponse {
    pub response: Response<BoxBody>,
    /// `host:port` of the target that answered.
    pub target: Arc<str>,
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
    pub fn reason(&self) -> RejectReason {
        match self {
            UpstreamError::NoEligibleTarget => RejectReason::NoHealthyUpstream,
            UpstreamError::Timeout { .. } => RejectReason::UpstreamTimeout,
            _ => RejectReason::UpstreamError,
        }
    }

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
    pub healthy: bool,
    pub ejected: bool,
    pub in_flight: usize,
    pub consecutive_failures: u32,
}

struct Target {
    authority: Arc<str>,
    scheme: http::uri::Scheme,
    host_value: Option<HeaderValue>,
    healthy: AtomicBool,
    /// Milliseconds since the pool's epoch until which the target is ejected (0: not ejected).
    ejected_until: AtomicU64,
    failures: AtomicU32,
    in_flight: Arc<AtomicUsize>,
    check_ok: AtomicU32,
    check_fail: AtomicU32,
}

pub struct UpstreamPool {
    name: Arc<str>,
    client: HttpClient,
    targets: Vec<Target>,
    /// Weighted round-robin schedule: target indexes, each repeated by its weight.
    schedule: Vec<usize>,
    cursor: AtomicUsize,
    balance: Balance,
    retries: Retries,
    passive: PassiveHealth,
    health: Option<HealthCheck>,
    host_header: HostHeader,
    epoch: Instant,
}

/// Health-check tasks of a pool; dropping this stops them.
pub struct HealthChecks {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn tls_config(cfg: &Upstream) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if cfg.targets.iter().any(|t| t.tls) {
        match &cfg.tls_roots {
            Some(certs) => {
                for c in certs {
                    roots
                        .add(c.clone())
                        .map_err(|e| format!("tls.ca_file: unusable CA certificate: {e}"))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for c in native.certs {
                    let _ = roots.add(c);
                }
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
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

impl UpstreamPool {
    pub fn new(cfg: &Upstream) -> Result<Arc<UpstreamPool>, String> {
        if cfg.targets.is_empty() {
            return Err("no targets".into());
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(cfg)?)
            .https_or_http();
        let connector = match cfg.protocol {
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::Http2 => builder.enable_http2().wrap_connector(http),
            UpstreamProtocol::Auto => builder.enable_http1().enable_http2().wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.idle_timeout)
            .pool_max_idle_per_host(cfg.max_idle_per_target)
            .http2_only(cfg.protocol == UpstreamProtocol::Http2)
            .build(connector);
        let mut targets = Vec::with_capacity(cfg.targets.len());
        let mut schedule = Vec::new();
        for (i, t) in cfg.targets.iter().enumerate() {
            let scheme = if t.tls {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            };
            targets.push(Target {
                authority: Arc::from(t.authority.as_str()),
                scheme,
                host_value: HeaderValue::from_str(&t.authority).ok(),
                healthy: AtomicBool::new(true),
                ejected_until: AtomicU64::new(0),
                failures: AtomicU32::new(0),
                in_flight: Arc::new(AtomicUsize::new(0)),
                check_ok: AtomicU32::new(0),
                check_fail: AtomicU32::new(0),
            });
            // Interleave weights would be smoother; repetition keeps the schedule exact.
            for _ in 0..t.weight.min(1000) {
                schedule.push(i);
            }
        }
        Ok(Arc::new(UpstreamPool {
            name: cfg.name.clone(),
            client,
            targets,
            schedule,
            cursor: AtomicUsize::new(0),
            balance: cfg.balance,
            retries: cfg.retries.clone(),
            passive: cfg.passive_health.clone(),
            health: cfg.health_check.clone(),
            host_header: cfg.host_header,
            epoch: Instant::now(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn eligible(&self, i: usize, now: u64) -> bool {
        let t = &self.targets[i];
        t.healthy.load(Ordering::Acquire) && t.ejected_until.load(Ordering::Acquire) <= now
    }

    pub fn has_eligible_target(&self) -> bool {
        let now = self.now_ms();
        (0..self.targets.len()).any(|i| self.eligible(i, now))
    }

    /// Chooses a target not in `tried` if there is one, else any eligible one.
    fn select(&self, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        self.pick(now, |i| !tried.contains(&i))
            .or_else(|| self.pick(now, |_| true))
    }

    fn pick(&self, now: u64, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let ok = |i: usize| allowed(i) && self.eligible(i, now);
        match self.balance {
            Balance::RoundRobin => {
                let n = self.schedule.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| self.schedule[(start + k) % n])
                    .find(|&i| ok(i))
            }
            Balance::LeastRequests => {
                let n = self.targets.len();
                // Two random starting points, each probing forward to an eligible target.
                let probe = |start: usize| (0..n).map(|k| (start + k) % n).find(|&i| ok(i));
                let a = probe(fastrand::usize(..n))?;
                let b = probe(fastrand::usize(..n)).unwrap_or(a);
                let load = |i: usize| self.targets[i].in_flight.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    fn record_success(&self, i: usize) {
        self.targets[i].failures.store(0, Ordering::Release);
    }

    fn record_failure(&self, i: usize) {
        let threshold = self.passive.consecutive_failures;
        if threshold == 0 {
            return;
        }
        let t = &self.targets[i];
        let n = t.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= threshold {
            t.failures.store(0, Ordering::Release);
            let until = self.now_ms()
                + u64::try_from(self.passive.ejection_time.as_millis()).unwrap_or(u64::MAX / 2);
            t.ejected_until.store(until, Ordering::Release);
            tracing::warn!(upstream = %self.name, target = %t.authority, failures = n, ejection = ?self.passive.ejection_time, "target ejected after consecutive failures");
        }
    }

    fn target_uri(&self, i: usize, pq: Option<&http::uri::PathAndQuery>) -> Result<Uri, BoxError> {
        let t = &self.targets[i];
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(t.scheme.clone());
        parts.authority = Some(t.authority.parse()?);
        parts.path_and_query = Some(
            pq.cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        Ok(Uri::from_parts(parts)?)
    }

    /// Forwards one request; see the module header for the rules.
    pub fn forward(
        &self,
        req: Request<BoxBody>,
        opts: ForwardOpts,
    ) -> Pin<
        Box<dyn std::future::Future<Output = Result<UpstreamResponse, UpstreamError>> + Send + '_>,
    > {
        Box::pin(self.forward_inner(req, opts))
    }

    async fn forward_inner(
        &self,
        req: Request<BoxBody>,
        opts: ForwardOpts,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let body_empty = req.body().is_end_stream() || req.body().size_hint().exact() == Some(0);
        let can_retry = opts.retryable && body_empty && self.retries.attempts > 0;
        let (mut parts, body) = req.into_parts();
        let mut body = Some(body);
        let mut tried: Vec<usize> = Vec::new();
        let mut last_err = UpstreamError::NoEligibleTarget;
        let max_attempts = if can_retry {
            self.retries.attempts + 1
        } else {
            1
        };
        for attempt in 1..=max_attempts {
            let Some(i) = self.select(&tried) else {
                return Err(last_err);
            };
            tried.push(i);
            let target = self.targets[i].authority.clone();
            let uri = self
                .target_uri(i, parts.uri.path_and_query())
                .map_err(|source| UpstreamError::Protocol {
                    target: target.clone(),
                    source,
                })?;
            let mut b = Request::builder()
                .method(parts.method.clone())
                .uri(uri)
                .version(parts.version);
            let last = attempt == max_attempts;
            if let Some(h) = b.headers_mut() {
                // The last attempt takes the headers; only an attempt that may be followed by
                // a retry pays for a copy.
                *h = if last {
                    std::mem::take(&mut parts.headers)
                } else {
                    parts.headers.clone()
                };
                if self.host_header == HostHeader::Target
                    && let Some(v) = &self.targets[i].host_value
                {
                    h.insert(HOST, v.clone());
                }
            }
            let this_body = match body.take() {
                Some(b) if !can_retry => b,
                _ => Empty::<Bytes>::new()
                    .map_err(|e| -> BoxError { match e {} })
                    .boxed_unsync(),
            };
            let mut upstream_req = match b.body(this_body) {
                Ok(r) => r,
                Err(e) => {
                    return Err(UpstreamError::Protocol {
                        target,
                        source: Box::new(e),
                    });
                }
            };
            if !can_retry {
                // Carry the extensions (e.g. hyper's upgrade handle) of the original request.
                *upstream_req.extensions_mut() = std::mem::take(&mut parts.extensions);
            }
            let guard = InFlight::new(self.targets[i].in_flight.clone());
            match tokio::time::timeout(opts.timeout, self.client.request(upstream_req)).await {
                Err(_) => {
                    self.record_failure(i);
                    return Err(UpstreamError::Timeout { target });
                }
                Ok(Err(e)) => {
                    self.record_failure(i);
                    if e.is_connect() {
                        last_err = UpstreamError::Connect {
                            target,
                            source: Box::new(e),
                        };
                        if !last {
                            tracing::debug!(upstream = %self.name, attempt, "connect failed; retrying");
                            continue;
                        }
                        return Err(last_err);
                    }
                    return Err(UpstreamError::Protocol {
                        target,
                        source: Box::new(e),
                    });
                }
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    if matches!(
                        status,
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    ) {
                        self.record_failure(i);
                    } else {
                        self.record_success(i);
                    }
                    if !last && can_retry && self.retries.on_status.contains(&status) {
                        tracing::debug!(upstream = %self.name, attempt, %status, "retrying on status");
                        continue;
                    }
                    let response = resp.map(|inner| {
                        GuardedBody {
                            inner,
                            guard: Some(guard),
                        }
                        .map_err(|e| -> BoxError { Box::new(e) })
                        .boxed_unsync()
                    });
                    return Ok(UpstreamResponse {
                        response,
                        target,
                        attempts: attempt,
                    });
                }
            }
        }
        Err(last_err)
    }

    pub fn health_snapshot(&self) -> Vec<TargetHealth> {
        let now = self.now_ms();
        self.targets
            .iter()
            .map(|t| TargetHealth {
                authority: t.authority.clone(),
                healthy: t.healthy.load(Ordering::Acquire),
                ejected: t.ejected_until.load(Ordering::Acquire) > now,
                in_flight: t.in_flight.load(Ordering::Relaxed),
                consecutive_failures: t.failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Starts active health checks (if configured). The task holds only a weak reference, so a
    /// replaced snapshot's pool is freed and its checks stop.
    pub fn start_health_checks(self: &Arc<Self>) -> HealthChecks {
        let Some(hc) = self.health.clone() else {
            return HealthChecks { task: None };
        };
        let weak: Weak<UpstreamPool> = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(hc.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                let checks = (0..pool.targets.len()).map(|i| pool.check(i, &hc));
                futures_util::future::join_all(checks).await;
            }
        });
        HealthChecks { task: Some(task) }
    }

    async fn check(&self, i: usize, hc: &HealthCheck) {
        let t = &self.targets[i];
        let ok = match self.target_uri(i, hc.path.parse().ok().as_ref()) {
            Ok(uri) => {
                let mut req = Request::new(
                    Empty::<Bytes>::new()
                        .map_err(|e| -> BoxError { match e {} })
                        .boxed_unsync(),
                );
                *req.uri_mut() = uri;
                if let Some(v) = &t.host_value {
                    req.headers_mut().insert(HOST, v.clone());
                }
                req.headers_mut().insert(
                    http::header::USER_AGENT,
                    HeaderValue::from_static("portcullis-health-check"),
                );
                matches!(
                    tokio::time::timeout(hc.timeout, self.client.request(req)).await,
                    Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection()
                )
            }
            Err(_) => false,
        };
        if ok {
            t.check_fail.store(0, Ordering::Release);
            let n = t.check_ok.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= hc.healthy_threshold && !t.healthy.swap(true, Ordering::AcqRel) {
                tracing::info!(upstream = %self.name, target = %t.authority, "target healthy again");
            }
        } else {
            t.check_ok.store(0, Ordering::Release);
            let n = t.check_fail.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= hc.unhealthy_threshold && t.healthy.swap(false, Ordering::AcqRel) {
                tracing::warn!(upstream = %self.name, target = %t.authority, "target failed its health checks");
            }
        }
    }
}

/// Counts a request against its target until the response body ends or is dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(c: Arc<AtomicUsize>) -> Self {
        c.fetch_add(1, Ordering::AcqRel);
        InFlight(c)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    struct GuardedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
    }
}

impl<B: Body<Data = Bytes>> Body for GuardedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
