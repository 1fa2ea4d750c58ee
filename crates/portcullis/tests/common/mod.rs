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

/// A hand-written upstream on an ephemeral port: each connection's first request head is
/// read, then the connection is handed to `answer`, which writes what the test needs.
pub async fn scripted_upstream<F, Fut>(answer: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                if read_head(&mut s).await {
                    answer(s).await;
                }
            });
        }
    });
    addr
}

/// An upstream that answers every request with `size` bytes, written as fast as the gateway
/// takes them. The returned count is what it managed to write before its connection was
/// closed under it, or `size` if it finished.
pub async fn bulk_upstream(
    size: usize,
) -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<usize>) {
    use tokio::io::AsyncWriteExt;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let addr = scripted_upstream(move |mut s| {
        let tx = tx.clone();
        async move {
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            let block = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < size {
                let n = block.len().min(size - sent);
                if s.write_all(&block[..n]).await.is_err() {
                    break;
                }
                sent += n;
            }
            let _ = tx.send(sent).await;
        }
    })
    .await;
    (addr, rx)
}

/// How a slow reader's connection ended: `None` still open when it stopped reading (it took
/// more than it asked for), `Some(None)` a clean end, `Some(Some(kind))` an error.
pub type SlowEnd = Option<Option<std::io::ErrorKind>>;

/// Reads `s` slowly — 16 KiB every 500 ms, about 33 kB/s — until it ends or more than
/// `limit` bytes came: what it took, and how it ended.
pub fn read_slowly<S>(mut s: S, limit: usize) -> tokio::task::JoinHandle<(usize, SlowEnd)>
where
    S: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    use tokio::io::AsyncReadExt;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut taken = 0usize;
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return (taken, Some(None)),
                Err(e) => return (taken, Some(Some(e.kind()))),
                Ok(n) => taken += n,
            }
            if taken > limit {
                return (taken, None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
}

/// Asserts that `whole` (an HTTP/1.1 answer read to its end) is a 200 with `size` body bytes.
pub fn assert_whole_answer(whole: &[u8], size: usize) {
    assert!(whole.starts_with(b"HTTP/1.1 200"));
    let head_end = whole.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(whole.len() - head_end, size, "the whole answer came");
}

/// The next `n` counts a [`bulk_upstream`] reports (each within 10 s), smallest first.
pub async fn bulk_counts(rx: &mut tokio::sync::mpsc::Receiver<usize>, n: usize) -> Vec<usize> {
    let mut counts = Vec::new();
    for _ in 0..n {
        counts.push(
            tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                .await
                .expect("the upstream exchange ends")
                .unwrap(),
        );
    }
    counts.sort_unstable();
    counts
}

/// Asserts what the minimum send rate does to a slow reader of a [`bulk_upstream`]'s `size`
/// bytes, while a fast reader got the whole of another: the slow reader's connection reset
/// (not closed after what the kernel still held for it) after it read some of its answer, its
/// upstream exchange closed under the upstream while the fast one's ran to its end, and the
/// close counted.
pub async fn assert_reset_by_send_rate(
    gw: &Gateway,
    reader: tokio::task::JoinHandle<(usize, SlowEnd)>,
    written: &mut tokio::sync::mpsc::Receiver<usize>,
    size: usize,
) {
    let (taken, closed) = tokio::time::timeout(std::time::Duration::from_secs(40), reader)
        .await
        .expect("the slow reader's connection is closed")
        .unwrap();
    assert_eq!(
        closed,
        Some(Some(std::io::ErrorKind::ConnectionReset)),
        "the slow reader's connection is reset"
    );
    assert!(
        taken > 16 * 1024 && taken < size,
        "it read on until the close: {taken}"
    );
    let counts = bulk_counts(written, 2).await;
    assert!(
        counts[0] < size,
        "the slow reader's upstream was cut off: {counts:?}"
    );
    assert_eq!(counts[1], size, "{counts:?}");
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains("portcullis_rejections_total{stage=\"accept\",reason=\"send_rate\"} 1\n"),
        "{metrics}"
    );
}

/// An upstream that answers every request head with `answer` (raw bytes) and closes.
pub async fn raw_upstream(answer: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    scripted_upstream(move |mut s| async move {
        let _ = s.write_all(answer).await;
    })
    .await
}

/// An HTTP/2 frame: length, type, flags, stream, payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: literal field without indexing, new name, no Huffman (lengths < 127).
pub fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

/// An HTTP/2 request header block: GET or POST, http, the path, authority `a`, extra fields.
pub fn h2_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.push(if method == "GET" { 0x82 } else { 0x83 }); // :method from the static table
    b.push(0x86); // :scheme http
    b.push(0x04); // :path, literal value with indexed name
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    b.push(0x01); // :authority
    b.push(1);
    b.push(b'a');
    for (k, v) in extra {
        b.extend(hpack_literal(k, v));
    }
    b
}

/// The whole HTTP/2 frames in `wire` (a server's bytes after the preface): (type, stream,
/// payload); a frame cut off at the end is left out.
pub fn h2_frames(wire: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 9 <= wire.len() {
        let len = (usize::from(wire[i]) << 16)
            | (usize::from(wire[i + 1]) << 8)
            | usize::from(wire[i + 2]);
        if i + 9 + len > wire.len() {
            break;
        }
        let stream =
            u32::from_be_bytes([wire[i + 5] & 0x7f, wire[i + 6], wire[i + 7], wire[i + 8]]);
        out.push((wire[i + 3], stream, wire[i + 9..i + 9 + len].to_vec()));
        i += 9 + len;
    }
    out
}

/// An HTTP/1.1 upstream whose answers to paths with a `/held` segment (`/held`, `/delay/held`)
/// wait until the test releases them (for a request that must still be in flight when the test
/// acts, however slow the machine); any other path is answered at once. Every answer is a 200
/// `ok`, given once the request's body has been read.
pub struct HeldUpstream {
    pub addr: std::net::SocketAddr,
    arrived: tokio::sync::mpsc::UnboundedReceiver<String>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl HeldUpstream {
    pub async fn start() -> HeldUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (arrival, arrived) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (release, released) = tokio::sync::watch::channel(false);
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        serve_http1(
            listener,
            move |req: http::Request<hyper::body::Incoming>| {
                let (arrival, mut released) = (arrival.clone(), released.clone());
                let counted = counted.clone();
                async move {
                    let path = req.uri().path().to_string();
                    let held = path.split('/').any(|segment| segment == "held");
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = arrival.send(path);
                    if held {
                        let _ = released.wait_for(|r| *r).await;
                    }
                    http::Response::new(Full::new(Bytes::from_static(b"ok")))
                }
            },
        );
        HeldUpstream {
            addr,
            arrived,
            calls,
            release,
        }
    }

    /// How many requests have reached it.
    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` requests have reached it (the test fails past 10 s).
    pub async fn wait_calls(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.calls() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} requests never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The path of the next request to arrive (bounded wait).
    pub async fn next_arrival(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(10), self.arrived.recv())
            .await
            .expect("a request reaches the upstream")
            .unwrap()
    }

    /// Lets the held requests be answered, and any to come.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
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

/// SHA-256 of `b` in lowercase hex (a certificate's fingerprint, as revocations take it).
pub fn sha256_bytes_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
