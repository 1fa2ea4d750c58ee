//! Clients for tests: whole-response HTTP/1.1 and h2c requests, TLS requests that report
//! what the handshake negotiated, raw bytes over TCP, and WebSocket connections.
//!
//! Every function panics on transport failures except [`send_tls`] / [`tls_request`] and
//! [`try_ws_connect`], which return them (handshake refusals are what TLS tests look at).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: Version,
    /// Trailers, when the body ended with some (gRPC).
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of a header, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn read(resp: http::Response<hyper::body::Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        version: parts.version,
        trailers,
    }
}

/// Sends over HTTP/1.1 on a fresh connection (absolute `http://` URI required).
pub async fn send(req: Request<Full<Bytes>>) -> Resp {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    read(client.request(req).await.unwrap()).await
}

/// Sends over HTTP/2 with prior knowledge (h2c) on a fresh connection (absolute URI).
pub async fn send_h2c(req: Request<Full<Bytes>>) -> Resp {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    read(client.request(req).await.unwrap()).await
}

/// A GET over HTTP/1.1.
pub async fn get(url: &str) -> Resp {
    send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

/// What the TLS handshake showed.
#[derive(Debug, Clone)]
pub struct TlsSeen {
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The negotiated version as rustls debug-prints `Option<ProtocolVersion>`:
    /// `"Some(TLSv1_3)"` or `"Some(TLSv1_2)"`.
    pub version: String,
    /// DER of the leaf certificate the server presented (compare with
    /// [`CertFiles::cert_der`](crate::pki::CertFiles::cert_der)).
    pub peer_cert_der: Vec<u8>,
    /// DNS subject alternative names of that leaf.
    pub peer_cert_sans: Vec<String>,
}

fn dns_sans(der: &[u8]) -> Vec<String> {
    let der = rustls_pki_types::CertificateDer::from(der);
    match webpki::EndEntityCert::try_from(&der) {
        Ok(cert) => cert.valid_dns_names().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// Connects with TLS (SNI `server_name`, trusting only `ca_pem`, offering `alpn`), then sends
/// one request with h2 or HTTP/1.1 as ALPN decided. `req` should carry an origin-form URI
/// (`/path`) and a `host` header. Connection and handshake failures come back as `Err` text.
pub async fn send_tls(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
    req: Request<Full<Bytes>>,
) -> Result<(Resp, TlsSeen), String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    tls_request(
        addr,
        server_name,
        client_config(ca_pem, versions, alpn),
        req,
    )
    .await
}

/// A TLS client configuration trusting only `ca_pem`, with these versions and ALPN offers.
pub fn client_config(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS client configuration trusting only `ca_pem` that presents `cert` (mTLS).
pub fn client_config_with_cert(ca_pem: &str, cert: &crate::CertFiles) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = vec![rustls_pki_types::CertificateDer::from(
        cert.cert_der.clone(),
    )];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A TLS session with `server_name` at `addr`.
async fn tls_dial(
    addr: SocketAddr,
    server_name: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// Same with a caller-made client configuration (to test versions and suites).
pub async fn tls_request(
    addr: SocketAddr,
    server_name: &str,
    cfg: Arc<rustls::ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<(Resp, TlsSeen), String> {
    let tls = tls_dial(addr, server_name, cfg).await?;
    let (_, session) = tls.get_ref();
    let peer_cert_der = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let seen = TlsSeen {
        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
        version: format!("{:?}", session.protocol_version()),
        peer_cert_sans: dns_sans(&peer_cert_der),
        peer_cert_der,
    };
    let io = TokioIo::new(tls);
    let resp = if seen.alpn.as_deref() == Some(b"h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    Ok((read(resp).await, seen))
}

/// An HTTP/1.1 connection over TLS kept open between requests ([`tls_connect`]).
pub struct TlsConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl TlsConnection {
    /// Sends `req` on this connection and reads its answer whole.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Resp, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        Ok(read(resp).await)
    }
}

/// Opens a TLS connection (ALPN as `cfg` offers, HTTP/1.1 spoken) for several requests in a row.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<TlsConnection, String> {
    let tls = tls_dial(addr, server_name, cfg).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(TlsConnection { sender })
}

/// Writes raw bytes over TCP and reads until the server closes or is idle for 2 s (for
/// request smuggling and framing tests).
pub async fn raw_http(addr: SocketAddr, bytes: &[u8]) -> String {
    raw_exchange(addr, bytes).await.0
}

/// Like [`raw_http`], also telling whether the server closed the connection.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    raw_exchange_in_pieces(addr, &[bytes], Duration::ZERO).await
}

/// The same, the bytes sent in these pieces (each its own segment, `pause` before each but
/// the first), so that the server reads them apart.
pub async fn raw_exchange_in_pieces(
    addr: SocketAddr,
    pieces: &[&[u8]],
    pause: Duration,
) -> (String, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        // The server may refuse and close before the last piece: what it answered is read.
        if s.write_all(piece).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Err(_) => break false,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// A WebSocket client connection.
pub type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The handshake response a WebSocket client got (status 101 and headers).
pub type WsResponse = tokio_tungstenite::tungstenite::handshake::client::Response;

/// Opens a WebSocket (`ws://host:port/path`); panics when the handshake fails or takes more
/// than 10 s.
pub async fn ws_connect(url: &str) -> (WsClient, WsResponse) {
    try_ws_connect(url)
        .await
        .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"))
}

/// Same, returning the failure (a refused upgrade comes back as
/// `tungstenite::Error::Http(response)`).
pub async fn try_ws_connect(
    url: &str,
) -> Result<(WsClient, WsResponse), tokio_tungstenite::tungstenite::Error> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(tokio_tungstenite::tungstenite::Error::Io(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "WebSocket handshake timed out",
            ),
        )),
    }
}
