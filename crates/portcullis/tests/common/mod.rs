//! Shared helpers of the end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
pub use portcullis_test_support::*;

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portcullis"))
}

/// Starts the gateway with one cleartext listener `public` on an ephemeral port, the admin
/// listener on another, and the given sections appended.
pub fn gateway(sections: &str) -> Gateway {
    let yaml = format!(
        "listeners:\n  - {{ name: public, address: \"127.0.0.1:0\" }}\nadmin: {{ address: \"127.0.0.1:0\" }}\n{sections}"
    );
    Gateway::start(bin(), &yaml).unwrap()
}

pub fn req(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// A bodiless request to `path` on the gateway's `public` listener.
pub async fn call_public(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(req(
        method,
        &format!("{}{path}", gw.url("public")),
        headers,
        "",
    ))
    .await
}

pub async fn get(url: &str) -> Resp {
    send(req("GET", url, &[], "")).await
}

/// Asserts an RFC 9457 problem response with its stable code and the request id.
pub fn assert_problem(r: &Resp, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{:?}",
        r.headers
    );
    let v = r.json();
    assert_eq!(v["type"], format!("urn:portcullis:problem:{code}"), "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    assert!(v["detail"].as_str().is_some(), "{v}");
    let id = v["request_id"].as_str().unwrap();
    assert_eq!(
        r.header("x-request-id"),
        Some(id),
        "request id in header and body"
    );
    v
}

/// The audit event of a request id (waits a little: audit is written asynchronously).
pub fn audit_of(gw: &Gateway, id: &str) -> serde_json::Value {
    gw.wait_for_audit(|e| e["request_id"] == id, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no audit event for {id}: {:#?}", gw.audit_events()))
}

/// Reads a request head (up to its empty line) and ignores it; false if the connection ended
/// first. For the tests' hand-written upstreams.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// An upstream that answers every request head with `answer` (raw bytes) and closes.
pub async fn raw_upstream(answer: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut s).await {
                    return;
                }
                let _ = s.write_all(answer).await;
            });
        }
    });
    addr
}

/// An upstream that reads request heads and never answers. It reports, in order, each head's
/// request line, and `"closed"` when the gateway closes a connection to it.
pub async fn silent_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = tx.send("closed".into());
                            return;
                        }
                        Ok(n) => {
                            got.extend_from_slice(&buf[..n]);
                            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&got[..end]);
                                let _ = tx.send(head.lines().next().unwrap_or("").to_string());
                                got.drain(..end + 4);
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// The next report of a [`silent_upstream`] (bounded wait).
pub async fn next_report(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a report from the silent upstream")
        .unwrap()
}

/// Lowercase hex of the SHA-256 of `s` (how API keys are stored: `sha256:<this>`).
pub fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
