//! Clients for tests.

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
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

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

/// Sends over HTTP/1.1 (absolute URI required).
pub async fn send(req: Request<Full<Bytes>>) -> Resp {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    read(client.request(req).await.unwrap()).await
}

/// Sends over HTTP/2 with prior knowledge (h2c).
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
    pub alpn: Option<Vec<u8>>,
    pub version: String,
    pub peer_cert_der: Vec<u8>,
}

/// Connects with TLS (given SNI and trusted CA), then sends one request with h2 or HTTP/1.1
/// as ALPN decided.
pub async fn send_tls(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
    req: Request<Full<Bytes>>,
) -> Result<(Resp, TlsSeen), String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tls_request(addr, server_name, Arc::new(cfg), req).await
}

/// Same with a caller-made client configuration (to test versions and suites).
pub async fn tls_request(
    addr: SocketAddr,
    server_name: &str,
    cfg: Arc<rustls::ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<(Resp, TlsSeen), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let seen = TlsSeen {
        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
        version: format!("{:?}", session.protocol_version()),
        peer_cert_der: session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default(),
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

/// Writes raw bytes and reads until the server closes or is idle for 2 s.
pub async fn raw_http(addr: SocketAddr, bytes: &[u8]) -> String {
    raw_exchange(addr, bytes).await.0
}

/// Like [`raw_http`], also telling whether the server closed the connection.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
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
