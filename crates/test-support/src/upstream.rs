//! Upstream servers for tests, each on `127.0.0.1:0`.
//!
//! - [`TestUpstream`]: HTTP/1.1 and h2c (prior knowledge) on one port, or TLS with ALPN `h2` and
//!   `http/1.1`. It records every request ([`Recorded`]) and answers 200 with a JSON echo of
//!   the request, plus special paths: `/status/{code}`, `/delay/{ms}`, `/healthz` (503 after
//!   [`TestUpstream::set_healthy`]`(false)`), `/stream/{n}` (n chunks of 1 KiB, 10 ms apart)
//!   and `/headers/{name}/{value}` (adds that response header). Every answer carries
//!   `x-upstream: <label>`.
//! - [`GrpcUpstream`]: h2c only; echoes a gRPC request body and ends with trailers.
//! - [`WsUpstream`]: a WebSocket echo server.
//! - [`dead_addr`]: a loopback address where nothing listens.
//!
//! Servers stop accepting and close every open connection on `stop()` and on drop. They must
//! be started inside a Tokio runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::pki::CertFiles;

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as received.
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
}

impl Recorded {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    /// The first value of a header, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Serves HTTP/1.1 on `listener`, each request answered by `handler`, for as long as the
/// runtime runs: the small servers a test writes itself (an IdP's key set, an introspection
/// endpoint that holds its answers).
pub fn serve_http1<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// An accept loop and its connections; all of them end on [`Server::stop`] or drop.
struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    async fn bind<F, Fut>(serve: F) -> Server
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, mut stop) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.changed() => return,
                    a = listener.accept() => a,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of descriptors and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let mut conn_stop = stop.clone();
                let conn = serve(stream);
                tokio::spawn(async move {
                    if *conn_stop.borrow_and_update() {
                        return;
                    }
                    tokio::select! {
                        _ = conn_stop.changed() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        Server {
            addr,
            shutdown,
            task,
        }
    }

    fn stop(&self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    unhealthy: AtomicBool,
    /// Connections accepted.
    conns: AtomicUsize,
}

/// An HTTP/1.1 + h2c (or TLS with ALPN) echo server with special paths; see the
/// [module documentation](self).
pub struct TestUpstream {
    label: String,
    tls: bool,
    state: Arc<State>,
    server: Server,
}

fn headers_json(h: &HeaderMap) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for name in h.keys() {
        let vals: Vec<serde_json::Value> = h
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
            .collect();
        let v = if vals.len() == 1 {
            vals[0].clone()
        } else {
            vals.into()
        };
        m.insert(name.as_str().to_string(), v);
    }
    m.into()
}

/// What `/doc` answers: an order with customer data, line items and internal fields.
pub fn sample_document() -> serde_json::Value {
    serde_json::json!({
        "id": "o-7",
        "status": "shipped",
        "owner": "alice",
        "internal_margin": 0.31,
        "customer": {
            "name": "Alice",
            "email": "alice@example.com",
            "address": {"city": "Berlin", "street": "Unter den Linden 1"}
        },
        "items": [
            {"sku": "A-1", "qty": 2, "price": 10.5, "cost": 6.1},
            {"sku": "B-2", "qty": 1, "price": 99.0, "cost": 70.2}
        ]
    })
}

async fn answer(
    label: Arc<str>,
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    state.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        uri: uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let mut status = StatusCode::OK;
    let mut extra: Vec<(String, String)> = Vec::new();
    match segs.as_slice() {
        ["healthz"] if state.unhealthy.load(Ordering::Acquire) => {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
        ["status", code] => {
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK)
        }
        ["delay", ms] => tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await,
        ["headers", name, value] => extra.push((name.to_string(), value.to_string())),
        // A fixed business document with nested objects and arrays (for field masks).
        ["doc", ..] => {
            let mut resp = Response::new(full(serde_json::to_vec(&sample_document()).unwrap()));
            let h = resp.headers_mut();
            h.insert(
                "content-type",
                "application/json; charset=utf-8".parse().unwrap(),
            );
            h.insert("etag", "\"v1\"".parse().unwrap());
            // What a backend that does not know of the gateway's masks says of its documents.
            h.insert("cache-control", "public, max-age=60".parse().unwrap());
            h.insert("x-upstream", label.parse().unwrap());
            return Ok(resp);
        }
        // A failing backend that tells too much: a stack trace with a connection string.
        ["crash", ..] => {
            let mut resp = Response::new(full(
                "Traceback (most recent call last):\n  File \"/srv/app/db.py\", line 12\n    \
                 connect(\"postgres://app:hunter2@10.0.0.5/orders\")\nOperationalError: \
                 password=hunter2 rejected for alice@example.com\n"
                    .as_bytes()
                    .to_vec(),
            ));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            let h = resp.headers_mut();
            h.insert("content-type", "text/plain".parse().unwrap());
            h.insert(
                "x-exception",
                "OperationalError at db.py:12".parse().unwrap(),
            );
            h.insert("retry-after", "7".parse().unwrap());
            h.insert("server", "gunicorn/19.9.0".parse().unwrap());
            return Ok(resp);
        }
        // The same document mislabelled as text.
        ["plain", ..] => {
            let mut resp = Response::new(full(serde_json::to_vec(&sample_document()).unwrap()));
            resp.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            return Ok(resp);
        }
        ["stream", n] => {
            let n: usize = n.parse().unwrap_or(1);
            let chunks = futures_util::stream::unfold(0usize, move |i| async move {
                if i >= n {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 1024]))),
                    i + 1,
                ))
            });
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
            resp.headers_mut()
                .insert("x-upstream", label.parse().unwrap());
            return Ok(resp);
        }
        _ => {}
    }
    let doc = serde_json::json!({
        "upstream": &*label,
        "method": parts.method.as_str(),
        "uri": uri,
        "version": format!("{:?}", parts.version),
        "headers": headers_json(&parts.headers),
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = Response::new(full(serde_json::to_vec(&doc).unwrap()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("x-upstream", label.parse().unwrap());
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), v.parse()) {
            h.append(k, v);
        }
    }
    Ok(resp)
}

fn server_tls(cert: &CertFiles) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

impl TestUpstream {
    /// Cleartext HTTP/1.1 and h2c (prior knowledge) on `127.0.0.1:0`.
    pub async fn start(label: &str) -> TestUpstream {
        Self::start_inner(label, None).await
    }

    /// The same over TLS with `cert` (ALPN `h2` and `http/1.1`). [`url`](Self::url) then
    /// names `localhost`, so `cert` should be issued for it.
    pub async fn start_tls(label: &str, cert: &CertFiles) -> TestUpstream {
        Self::start_inner(label, Some(server_tls(cert))).await
    }

    async fn start_inner(label: &str, tls: Option<Arc<rustls::ServerConfig>>) -> TestUpstream {
        let state = Arc::new(State::default());
        let st = state.clone();
        let lbl: Arc<str> = Arc::from(label);
        let is_tls = tls.is_some();
        let server = Server::bind(move |stream| {
            st.conns.fetch_add(1, Ordering::SeqCst);
            let st = st.clone();
            let lbl = lbl.clone();
            let tls = tls.clone();
            async move {
                let svc = service_fn(move |req| answer(lbl.clone(), st.clone(), req));
                let builder = auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(cfg) => {
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            }
        })
        .await;
        TestUpstream {
            label: label.to_string(),
            tls: is_tls,
            state,
            server,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` for a TLS upstream.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr().port())
        } else {
            format!("http://{}", self.addr())
        }
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.conns.load(Ordering::SeqCst)
    }

    pub fn hits(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Requests whose path does not start with `prefix` (to ignore health checks).
    pub fn hits_excluding(&self, prefix: &str) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.uri.starts_with(prefix))
            .count()
    }

    /// `false`: `/healthz` answers 503 until set back to `true`.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.unhealthy.store(!healthy, Ordering::Release);
    }

    /// Stops accepting and closes every open connection (also done on drop). The listening
    /// socket is released once the runtime next runs the accept task.
    pub fn stop(&self) {
        self.server.stop();
    }
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.method() == http::Method::POST
        && req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"))
}

async fn grpc_echo(
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    seen.lock().unwrap().push(req.headers().clone());
    if !is_grpc(&req) {
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return Ok(resp);
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("grpc-message", "echoed".parse().unwrap());
    let frames = futures_util::stream::iter(vec![
        Ok::<_, Infallible>(Frame::data(body)),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    resp.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    Ok(resp)
}

/// A gRPC-style server, h2c (prior knowledge) only: a POST with content type
/// `application/grpc*` is answered 200 `application/grpc` with the request body echoed, then
/// trailers `grpc-status: 0` and `grpc-message: echoed`. Anything else gets 415. The headers
/// of every request are recorded (to see that `te: trailers` arrived).
pub struct GrpcUpstream {
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    server: Server,
}

impl GrpcUpstream {
    pub async fn start() -> GrpcUpstream {
        let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let s2 = seen.clone();
        let server = Server::bind(move |stream| {
            let seen = s2.clone();
            async move {
                let svc = service_fn(move |req| grpc_echo(seen.clone(), req));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        })
        .await;
        GrpcUpstream { seen, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `http://127.0.0.1:PORT` (use it with `protocol: http2` upstreams).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The headers of every request received, in arrival order.
    pub fn request_headers(&self) -> Vec<HeaderMap> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops accepting and closes every open connection (also done on drop).
    pub fn stop(&self) {
        self.server.stop();
    }
}

/// A WebSocket upgrade request as [`WsUpstream`] received it.
#[derive(Debug, Clone)]
pub struct WsUpgrade {
    /// Path and query of the upgrade request.
    pub uri: String,
    pub headers: HeaderMap,
}

/// A WebSocket echo server: text and binary messages are sent back as they came.
pub struct WsUpstream {
    upgrades: Arc<Mutex<Vec<WsUpgrade>>>,
    received: Arc<Mutex<Vec<tokio_tungstenite::tungstenite::Message>>>,
    server: Server,
}

impl WsUpstream {
    pub async fn start() -> WsUpstream {
        let upgrades: Arc<Mutex<Vec<WsUpgrade>>> = Arc::default();
        let received: Arc<Mutex<Vec<tokio_tungstenite::tungstenite::Message>>> = Arc::default();
        let (u2, r2) = (upgrades.clone(), received.clone());
        let server = Server::bind(move |stream| {
            let upgrades = u2.clone();
            let received = r2.clone();
            async move {
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    upgrades.lock().unwrap().push(WsUpgrade {
                        uri: req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_else(|| req.uri().to_string()),
                        headers: req.headers().clone(),
                    });
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    received.lock().unwrap().push(msg.clone());
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        // tungstenite has queued the close reply; flush it.
                        let _ = ws.flush().await;
                        return;
                    }
                }
            }
        })
        .await;
        WsUpstream {
            upgrades,
            received,
            server,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// `http://127.0.0.1:PORT` (what a gateway upstream target is written as).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// `ws://127.0.0.1:PORT` (to connect to it directly).
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.server.addr)
    }

    /// The paths (with query) of the upgrade requests received.
    pub fn paths(&self) -> Vec<String> {
        self.upgrades
            .lock()
            .unwrap()
            .iter()
            .map(|u| u.uri.clone())
            .collect()
    }

    /// Every message (pings and Close frames included) received, on any connection.
    pub fn received(&self) -> Vec<tokio_tungstenite::tungstenite::Message> {
        self.received.lock().unwrap().clone()
    }

    /// The upgrade requests received, with their headers.
    pub fn upgrades(&self) -> Vec<WsUpgrade> {
        self.upgrades.lock().unwrap().clone()
    }

    /// Stops accepting and closes every open connection (also done on drop).
    pub fn stop(&self) {
        self.server.stop();
    }
}

/// A loopback address with nothing listening, for as long as the test process runs: the port
/// stays bound by a socket that never listens, so connections to it are refused and it is
/// never handed to a listener of a test running beside this one (a port released at once
/// could be, and a "dead" target would then answer).
pub fn dead_addr() -> SocketAddr {
    static HELD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    HELD.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    addr
}
