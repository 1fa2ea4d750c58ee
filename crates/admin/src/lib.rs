//! # portcullis-admin
//!
//! The operators' HTTP API: liveness, readiness, metrics and the running configuration.
//!
//! * **Takes**: a bound [`TcpListener`], an [`AdminSource`] that answers for the running
//!   gateway (and gives its current bearer token, if any), and a shutdown future.
//! * **Produces**: `GET`/`HEAD` `/healthz` (`{"status":"ok"}`), `/readyz` (`{"status":"ready"}`
//!   or 503 `{"status":"not_ready","reason":…}`), `/metrics` (Prometheus text) and `/config`
//!   (pretty JSON, secrets already redacted by the source), over HTTP/1.1 or h2c.
//! * **Rejects**, always as RFC 9457 `application/problem+json` with
//!   `type = urn:portcullis:problem:<code>`: a missing or wrong bearer token (401
//!   `admin_unauthorized`, with `WWW-Authenticate`), an unknown path (404 `admin_not_found`),
//!   any method but `GET`/`HEAD` (405 `admin_method_not_allowed`, with `Allow: GET, HEAD`).
//!
//! Invariants:
//! * With a token configured, everything except `/healthz` and `/readyz` requires
//!   `Authorization: Bearer <token>` — including unknown paths, so an unauthenticated caller
//!   cannot map the API. Probes stay open because orchestrators cannot hold secrets easily and
//!   the answers reveal nothing. An empty configured token matches nothing (fail closed).
//! * The token is compared in constant time and never logged; it is the running
//!   configuration's, asked on every request (a reload that changes it applies at once).
//! * Without a token (loopback only), a request addressed to a name that is not a loopback one
//!   or carrying a foreign `Origin` — a web page, by DNS rebinding or a cross-site `POST` — is
//!   refused (403 `admin_forbidden`), probes and `/jwks` excepted.
//! * Every response carries `Cache-Control: no-store`: metrics and config must not be cached
//!   by intermediaries.
//! * After `shutdown` resolves no new connection is accepted; open ones are asked to finish
//!   and given [`DRAIN_TIMEOUT`] before being dropped.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue,
    WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// How long open connections may take to finish after shutdown is requested.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Most admin connections served at once; further clients wait in the accept backlog. The API
/// is for a handful of operators and scrapers, not for the public.
const MAX_CONNECTIONS: usize = 256;

/// A slow client may not hold a connection open by trickling its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const PROBLEM_JSON: &str = "application/problem+json";
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin API reports on. Implemented by the gateway over its running state.
pub trait AdminSource: Send + Sync + 'static {
    /// The bearer token the running configuration requires (`admin.token`), asked on every
    /// request so that a reload that changes it takes effect at once; `None`: no token (the
    /// API is then on loopback only, and answers only requests addressed to a loopback name
    /// and not sent by a web page).
    fn token(&self) -> Option<Vec<u8>>;
    /// Ok when the gateway is ready to serve (config loaded, upstream hosts resolved);
    /// Err(reason) otherwise.
    fn ready(&self) -> Result<(), String>;
    /// The running configuration with secrets redacted.
    fn config(&self) -> serde_json::Value;
    /// Prometheus text.
    fn metrics(&self) -> String;
    /// Re-reads and applies the configuration file (`POST /reload`). `Err` carries every
    /// error (`path: message`); the running configuration then stays.
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
    /// `{"api_key_hash": "sha256:…"}`.
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
    let state = Arc::new(State { source });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(32)
        .max_header_list_size(64 * 1024);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        let mut stop_rx = stop_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let state = Arc::clone(&state);
                async move {
                    let token = state.source.token();
                    if token.is_none() && from_a_web_page(&req) {
                        return Ok::<_, Infallible>(browser_refused());
                    }
                    if req.method() == Method::POST && authorized(token.as_deref(), &req) {
                        match req.uri().path() {
                            "/auth/revocations" => {
                                return Ok::<_, Infallible>(revoke(&state, req).await);
                            }
                            "/bans" => return Ok::<_, Infallible>(ban(&state, req).await),
                            _ => {}
                        }
                    }
                    Ok::<_, Infallible>(handle(&state, token.as_deref(), req).await)
                }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let res = tokio::select! {
                res = conn.as_mut() => res,
                // The guard returned by wait_for is not Send; drop it inside the branch future.
                () = async { let _ = stop_rx.wait_for(|stop| *stop).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
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

struct State {
    source: Arc<dyn AdminSource>,
}

type Resp = Response<Full<Bytes>>;

async fn handle(state: &State, token: Option<&[u8]>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    let public = is_public(path);
    let mut resp = if !public && !authorized(token, &req) {
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
    } else {
        let known = matches!(
            path,
            "/healthz" | "/readyz" | "/metrics" | "/config" | "/auth" | "/jwks" | "/ratelimit"
        );
        let method = req.method();
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
            if method == Method::POST {
                reload(state).await
            } else {
                let mut r = problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "admin_method_not_allowed",
                    "Method not allowed",
                    "Reload with POST.",
                );
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("POST"));
                r
            }
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
            endpoint(state, path)
        }
    };
    tracing::debug!(
        method = %req.method(),
        path = %req.uri().path(),
        status = resp.status().as_u16(),
        "admin request"
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if req.method() == Method::HEAD {
        // Same headers as GET, no body; Content-Length still tells the size GET would send.
        let len = hyper::body::Body::size_hint(resp.body())
            .exact()
            .unwrap_or(0);
        resp.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
        *resp.body_mut() = Full::new(Bytes::new());
    }
    resp
}

/// Builds the new configuration on a blocking thread: compiling it (WAF rules, Rego, OpenAPI
/// documents) takes tens to hundreds of milliseconds, which on a runtime worker would hold up
/// every request queued there — all of them with `--threads 1`.
async fn reload(state: &State) -> Resp {
    let source = Arc::clone(&state.source);
    let result = tokio::task::spawn_blocking(move || source.reload())
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

fn endpoint(state: &State, path: &str) -> Resp {
    match path {
        "/healthz" => json(StatusCode::OK, &serde_json::json!({"status": "ok"}), false),
        "/readyz" => match state.source.ready() {
            Ok(()) => json(
                StatusCode::OK,
                &serde_json::json!({"status": "ready"}),
                false,
            ),
            Err(reason) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not_ready", "reason": reason}),
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
    match read_json(req).await {
        Ok(value) => created(state.source.revoke(value).await),
        Err(r) => r,
    }
}

/// `POST /bans`: `{"address": …, "for": "1h"}`.
async fn ban(state: &State, req: Request<Incoming>) -> Resp {
    match read_json(req).await {
        Ok(value) => created(state.source.ban(value)),
        Err(r) => r,
    }
}

/// A small JSON body (at most 4 KiB), or the 400 that says why not.
async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, Resp> {
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "admin_bad_request",
                "Bad request",
                "The body could not be read (at most 4 KiB).",
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
    let mut r = match result {
        Ok(v) => json(StatusCode::CREATED, &v, false),
        Err(m) => problem(
            StatusCode::BAD_REQUEST,
            "admin_bad_request",
            "Bad request",
            &m,
        ),
    };
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
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
/// public keys stay open.
fn from_a_web_page<B>(req: &Request<B>) -> bool {
    if is_public(req.uri().path()) {
        return false;
    }
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
    let mut r = problem(
        StatusCode::FORBIDDEN,
        "admin_forbidden",
        "Forbidden",
        "Without a token the admin API answers only requests addressed to a loopback name \
         (localhost, 127.0.0.1, [::1]) and not sent by a web page.",
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn authorized(token: Option<&[u8]>, req: &Request<Incoming>) -> bool {
    let Some(expected) = token else {
        return true;
    };
    if expected.is_empty() {
        return false;
    }
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return false;
    };
    match bearer_token(value.as_bytes()) {
        Some(given) => constant_time_eq(given, expected),
        None => false,
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
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    struct Fake {
        ready: AtomicBool,
        token: std::sync::Mutex<Option<String>>,
    }

    impl AdminSource for Fake {
        fn token(&self) -> Option<Vec<u8>> {
            self.token.lock().unwrap().clone().map(String::into_bytes)
        }
        fn ready(&self) -> Result<(), String> {
            if self.ready.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("upstream hosts not resolved".into())
            }
        }
        fn config(&self) -> serde_json::Value {
            serde_json::json!({"admin": {"token": "<redacted>"}, "routes": []})
        }
        fn metrics(&self) -> String {
            "portcullis_requests_total{route=\"a\",status=\"200\"} 1\n# EOF\n".into()
        }
    }

    struct Server {
        addr: SocketAddr,
        fake: Arc<Fake>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    async fn start(token: Option<&str>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Arc::new(Fake {
            ready: AtomicBool::new(true),
            token: std::sync::Mutex::new(token.map(str::to_owned)),
        });
        let (tx, rx) = oneshot::channel::<()>();
        let source: Arc<dyn AdminSource> = fake.clone();
        let task = tokio::spawn(serve(listener, source, async move {
            let _ = rx.await;
        }));
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
        assert_eq!(v["status"], status);
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
        assert_eq!(v["reason"], "upstream hosts not resolved");
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
}
