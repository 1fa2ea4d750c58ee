//! The HTTP/1.1 front: plain requests answered by the connection's own task, everything else
//! handed to hyper mid-connection — seen from raw bytes on the wire.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-cased names, in wire order.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits `wire` into answers; `heads[i]` says whether answer `i` is to a HEAD request (no
/// body whatever its length says). Stops at the first answer not all there. Returns the
/// answers and what is left over.
fn answers(wire: &[u8], heads: &[bool]) -> (Vec<Answer>, Vec<u8>) {
    let mut out = Vec::new();
    let mut at = 0;
    for &head_request in heads {
        match one_answer(&wire[at..], head_request) {
            Some((a, used)) => {
                out.push(a);
                at += used;
            }
            None => break,
        }
    }
    (out, wire[at..].to_vec())
}

/// The answer at the start of `wire` and its length on the wire, if it is all there.
fn one_answer(wire: &[u8], head_request: bool) -> Option<(Answer, usize)> {
    let end = find(wire, b"\r\n\r\n")?;
    let text = std::str::from_utf8(&wire[..end]).unwrap();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let fields: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    let mut at = end + 4;
    let mut body = Vec::new();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    if head_request || status == 204 || status == 304 {
    } else if let Some(n) = field("content-length") {
        let n: usize = n.parse().unwrap();
        body.extend_from_slice(wire.get(at..at + n)?);
        at += n;
    } else if field("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let line_end = at + find(&wire[at..], b"\r\n")?;
            let size = std::str::from_utf8(&wire[at..line_end]).unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            at = line_end + 2;
            if size == 0 {
                // No trailers are expected here: the empty line ends the body.
                assert_eq!(wire.get(at..at + 2)?, b"\r\n");
                at += 2;
                break;
            }
            body.extend_from_slice(wire.get(at..at + size)?);
            assert_eq!(wire.get(at + size..at + size + 2)?, b"\r\n");
            at += size + 2;
        }
    }
    Some((
        Answer {
            status,
            fields,
            body,
        },
        at,
    ))
}

/// Writes `bytes` in one write and reads until the gateway closes (at most 10 s).
async fn exchange_to_close(s: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the gateway closed the connection")
        .unwrap();
    out
}

/// Reads until `n` answers (to non-HEAD requests) are complete.
async fn read_answers(s: &mut TcpStream, n: usize) -> Vec<Answer> {
    let mut wire = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let (got, rest) = answers(&wire, &vec![false; n]);
        if got.len() == n {
            assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
            return got;
        }
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answers within 10 s")
            .unwrap();
        assert!(r > 0, "closed early: {}", String::from_utf8_lossy(&wire));
        wire.extend_from_slice(&buf[..r]);
    }
}

const APP: &str = "upstreams: { d: { kind: echo } }\nroutes:\n  - { name: all, match: { prefix: / }, upstream: d }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_plain_requests_are_answered_in_order() {
    let gw = gateway(APP);
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    let wire = exchange_to_close(
        &mut s,
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-One: 1\r\n\r\n\
          HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /c?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
          GET /never HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let (got, rest) = answers(&wire, &[false, true, false]);
    assert_eq!(got.len(), 3, "{}", String::from_utf8_lossy(&wire));
    // Nothing after the answer to the request that asked to close.
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let a = &got[0];
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["uri"], "/a");
    assert_eq!(a.json()["headers"]["x-one"], "1");
    assert_eq!(
        a.field("content-length").unwrap().parse::<usize>().unwrap(),
        a.body.len()
    );
    assert!(a.field("date").unwrap().ends_with(" GMT"), "{a:?}");
    assert!(a.field("x-request-id").is_some(), "{a:?}");
    assert_eq!(a.field("connection"), None);
    // HEAD: the length of what a GET would carry, no body (the next answer follows at once).
    let b = &got[1];
    assert_eq!(b.status, 200);
    assert!(b.field("content-length").unwrap().parse::<usize>().unwrap() > 0);
    assert!(b.body.is_empty());
    let c = &got[2];
    assert_eq!(c.json()["uri"], "/c?q=1");
    assert_eq!(c.field("connection"), Some("close"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_front_does_not_take_goes_to_hyper_with_the_rest_of_the_connection() {
    let gw = gateway(APP);
    // A plain GET, then a chunked POST (hyper's from there on), then plain GETs again.
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    let wire = exchange_to_close(
        &mut s,
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          GET /3 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (got, rest) = answers(&wire, &[false; 4]);
    assert!(rest.is_empty());
    let uris: Vec<_> = got.iter().map(|a| a.json()["uri"].clone()).collect();
    assert_eq!(uris, ["/1", "/2", "/3", "/4"]);
    assert_eq!(got[1].json()["body"], "hello");
    assert_eq!(got[1].json()["method"], "POST");

    // Each of these is hyper's from its first byte, and served as before.
    let many: String = (0..80).map(|i| format!("X-F{i}: {i}\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("HTTP/1.0", b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n".to_vec()),
        (
            "more fields than the front reads",
            format!("GET /many HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n")
                .into_bytes(),
        ),
        (
            "Expect",
            b"GET /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
        let wire = exchange_to_close(&mut s, &bytes).await;
        let text = String::from_utf8_lossy(&wire);
        assert!(
            text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
            "{what}: {text}"
        );
        if what.starts_with("more") {
            let (got, _) = answers(&wire, &[false]);
            assert_eq!(got[0].json()["headers"]["x-f79"], "79", "{what}: {text}");
        }
    }
    // HTTP/2 with prior knowledge: the preface is no HTTP/1.1 head.
    let r = send_h2c(req("GET", &format!("{}/h2", gw.url("public")), &[], "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/h2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_framed_by_what_their_body_says() {
    let up = TestUpstream::start("u").await;
    let gw = proxied(&up, "");
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    // A streamed answer of unknown length is chunked, and the connection goes on.
    s.write_all(b"GET /stream/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_answers(&mut s, 1).await;
    assert_eq!(got[0].status, 200);
    assert_eq!(got[0].field("transfer-encoding"), Some("chunked"));
    assert_eq!(got[0].field("content-length"), None);
    assert_eq!(got[0].body, vec![b'x'; 3 * 1024]);
    // 204 and 304 carry neither a length nor a body; an error status its reason.
    let wire = exchange_to_close(
        &mut s,
        b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /status/503 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (got, rest) = answers(&wire, &[false; 3]);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert_eq!(got[0].status, 204);
    assert_eq!(got[0].field("content-length"), None);
    assert_eq!(got[1].status, 304);
    assert_eq!(got[1].field("content-length"), None);
    assert_eq!(got[2].status, 503);
    assert!(
        String::from_utf8_lossy(&wire).contains("HTTP/1.1 503 Service Unavailable\r\n"),
        "{}",
        String::from_utf8_lossy(&wire)
    );
}

/// Bodies of a known length: the front reads them — what came with the head at once, the
/// rest as it arrives and as the upstream takes it — forwards exactly those bytes with their
/// length, and serves the next request on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_known_length_are_forwarded_whole_and_the_connection_goes_on() {
    let up = TestUpstream::start("u").await;
    let gw = proxied(&up, "");
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    // A body that looks like a request is a body; a GET after it is the next request.
    let inner = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = format!(
        "POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        inner.len()
    )
    .into_bytes();
    first.extend_from_slice(inner);
    first.extend_from_slice(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
    // A large body arriving in pieces, with pauses between them.
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    first.extend_from_slice(
        format!(
            "PUT /3 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    first.extend_from_slice(&big[..1000]);
    s.write_all(&first).await.unwrap();
    for piece in big[1000..].chunks(100_000) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(piece).await.unwrap();
    }
    // Then the next request, right behind the body's last byte.
    let wire = exchange_to_close(
        &mut s,
        b"DELETE /4 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (got, rest) = answers(&wire, &[false; 4]);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert_eq!(got.len(), 4, "{}", String::from_utf8_lossy(&wire));
    for a in &got[..3] {
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.field("connection"), None, "{a:?}");
    }
    assert_eq!(got[3].field("connection"), Some("close"));
    let seen = up.requests();
    let paths: Vec<_> = seen.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(paths, ["/1", "/2", "/3", "/4"]);
    assert_eq!(&seen[0].body[..], inner);
    assert_eq!(
        seen[0].headers["content-length"],
        inner.len().to_string().as_str()
    );
    assert!(seen[1].body.is_empty());
    assert_eq!(seen[2].body.len(), big.len());
    assert!(seen[2].body == big, "the large body arrived as sent");
    assert_eq!(seen[2].headers["content-length"], "300000");
    assert!(!seen[2].headers.contains_key("transfer-encoding"));
}

/// Sends `bytes` — a head and the start of a body the route (max_body_bytes: 64) refuses —
/// and, after the answer, more of the body: the answer must be a whole 413 problem with
/// `connection: close` (the gateway reads and drops what follows before closing, rather than
/// resetting the connection under the answer), nothing reached the upstream, and the gateway
/// serves the next connection.
async fn refused_unread(bytes: &[u8]) {
    let up = TestUpstream::start("u").await;
    let gw = proxied(&up, ", max_body_bytes: 64");
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    let mut bytes = bytes.to_vec();
    // Far more than the gateway reads before it answers: most of it waits unread in the
    // gateway's receive buffer when the answer goes out.
    bytes.extend_from_slice(&vec![b'x'; 200_000]);
    let wire = exchange_to_close(&mut s, &bytes).await;
    // The gateway has closed its side; it still takes (and drops) what the client sends on,
    // for a while: a closed socket would answer these writes with a reset.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(&[b'x'; 50_000])
            .await
            .expect("the rest of the body is taken after the answer");
    }
    drop(s);
    let (got, rest) = answers(&wire, &[false]);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let a = &got[0];
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.field("connection"), Some("close"));
    assert_eq!(a.field("content-type"), Some("application/problem+json"));
    let doc = a.json();
    assert_eq!(
        doc["type"], "urn:portcullis:problem:body_too_large",
        "{doc}"
    );
    assert_eq!(doc["request_id"].as_str(), a.field("x-request-id"), "{doc}");
    assert_eq!(up.hits(), 0);
    // Healthy.
    let wire = exchange_to_close(
        &mut TcpStream::connect(gw.listener("public")).await.unwrap(),
        b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(wire.starts_with(b"HTTP/1.1 200 "));
}

/// A declared length over the limit: the front refuses it before reading the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_refused_unread_ends_the_connection_after_a_whole_answer() {
    refused_unread(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n").await;
}

/// The same over hyper's path (a chunked body is not the front's): the body goes over the
/// route's limit while it streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_refused_midway_ends_the_connection_after_a_whole_answer() {
    refused_unread(b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7a120\r\n")
        .await;
}

/// A client that stops sending inside its body: the body fails (it is never passed on as
/// complete), the client is answered and the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_by_the_client_is_never_forwarded_as_complete() {
    let up = TestUpstream::start("u").await;
    let gw = proxied(&up, "");
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    s.write_all(b"POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly ten b")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut wire = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut wire))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(
        text.contains("urn:portcullis:problem:body_read_failed"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        up.requests().iter().all(|r| r.path() != "/cut"),
        "the upstream handled a request whose body never arrived whole"
    );
}

/// The gateway with one route to `up` for every path; `route`: more of the route's settings.
fn proxied(up: &TestUpstream, route: &str) -> Gateway {
    gateway(&format!(
        "upstreams: {{ u: {{ targets: [\"{}\"] }} }}\nroutes:\n  - {{ name: u, match: {{ prefix: / }}, upstream: u{route} }}\n",
        up.url()
    ))
}

fn via(up: std::net::SocketAddr) -> String {
    format!(
        "upstreams:\n  u: {{ targets: [\"http://{up}\"], retries: {{ attempts: 0 }} }}\nroutes:\n  - {{ name: u, match: {{ prefix: / }}, upstream: u }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_ends_the_connection() {
    // The target promises 10 bytes, sends 5 and closes: once the head is out, closing is the
    // only honest signal left (a client must not take 5 bytes for the whole answer, nor
    // wait for the rest on a connection that is then reused).
    let up = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello").await;
    let gw = gateway(&via(up));
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    let wire = exchange_to_close(&mut s, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\ncontent-length: 10\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    // Audited with the status the client was sent, as an answer cut off after 5 bytes.
    let event = gw
        .wait_for_audit(|e| e["path"] == "/x", Duration::from_secs(5))
        .expect("the cut-short answer is audited");
    assert_eq!(event["status"], 200, "{event}");
    assert_eq!(event["response_bytes"], 5, "{event}");
    assert_eq!(event["response_complete"], false, "{event}");
    // The gateway is healthy.
    let wire = exchange_to_close(
        &mut TcpStream::connect(gw.listener("public")).await.unwrap(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!wire.is_empty());

    // A close-delimited answer (no length, no chunking) reaches the client chunked, on a
    // connection that goes on.
    let up = raw_upstream(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end").await;
    let gw = gateway(&via(up));
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_answers(&mut s, 1).await;
    assert_eq!(got[0].field("transfer-encoding"), Some("chunked"));
    assert_eq!(got[0].body, b"until the end");
    assert_eq!(got[0].field("connection"), None);
    s.write_all(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_answers(&mut s, 1).await;
    assert_eq!(got[0].body, b"until the end");
    // Both went out whole.
    for path in ["/x", "/y"] {
        let event = gw
            .wait_for_audit(|e| e["path"] == path, Duration::from_secs(5))
            .expect("audited");
        assert_eq!(event["response_bytes"], 13, "{event}");
        assert_eq!(event["response_complete"], true, "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_closes_idle_connections_and_finishes_answers_with_close() {
    let mut up = HeldUpstream::start().await;
    let mut gw = gateway(&format!(
        "upstreams: {{ s: {{ targets: [\"{}\"] }} }}\nroutes:\n  - {{ name: s, match: {{ prefix: / }}, upstream: s }}\n",
        up.url()
    ));
    let addr = gw.listener("public");
    // A kept-alive connection, idle after one answer.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_answers(&mut idle, 1).await;
    assert_eq!(up.next_arrival().await, "/a");
    // A request in flight on another, which its upstream holds until the stop is under way.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(up.next_arrival().await, "/held");
    gw.signal("TERM");
    // The idle connection is closed (the drain does not wait for it) …
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .expect("idle connection closed at stop")
        .unwrap();
    assert!(rest.is_empty());
    // … the answer in flight completes, saying the connection ends with it.
    up.release();
    let mut wire = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut wire))
        .await
        .unwrap()
        .unwrap();
    let (got, _) = answers(&wire, &[false]);
    assert_eq!(got[0].status, 200, "{}", String::from_utf8_lossy(&wire));
    assert_eq!(got[0].field("connection"), Some("close"));
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
}

/// With `server.abort_on_client_close`, a client that ends its stream or resets the connection
/// while its request waits for the upstream abandons it — on the front's connections (a plain
/// GET) and on hyper's (a chunked POST) alike: the upstream exchange is given up, the client's
/// connection closed, and the request audited as abandoned (499) with the target it reached.
/// The gateway goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_abort_on_client_close_a_client_gone_mid_request_abandons_it() {
    let (silent, mut reports) = silent_upstream().await;
    let up = TestUpstream::start("app").await;
    let gw = gateway(&format!(
        "server: {{ abort_on_client_close: true }}\n\
         upstreams:\n  silent: {{ targets: [\"http://{silent}\"] }}\n  app: {{ targets: [\"{}\"] }}\n\
         routes:\n  - {{ name: slow, match: {{ prefix: /slow }}, upstream: silent }}\n\
         \x20 - {{ name: app, match: {{ prefix: / }}, upstream: app }}\n",
        up.url()
    ));
    let cases: [(&str, &[u8], bool); 3] = [
        (
            "/slow/fin",
            b"GET /slow/fin HTTP/1.1\r\nHost: x\r\n\r\n",
            false,
        ),
        (
            "/slow/rst",
            b"GET /slow/rst HTTP/1.1\r\nHost: x\r\n\r\n",
            true,
        ),
        (
            "/slow/chunked",
            b"POST /slow/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
    ];
    for (path, bytes, reset) in cases {
        let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let method = if path.ends_with("chunked") {
            "POST"
        } else {
            "GET"
        };
        assert_eq!(
            next_report(&mut reports).await,
            format!("{method} {path} HTTP/1.1")
        );
        if reset {
            // Closed with SO_LINGER 0: a reset, not an end of stream.
            s.set_zero_linger().unwrap();
            drop(s);
        } else {
            s.shutdown().await.unwrap();
            let mut out = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
                .await
                .expect("the gateway closes the connection");
            assert!(
                read.is_err() || out.is_empty(),
                "{path}: no answer: {out:?}"
            );
        }
        assert_eq!(
            next_report(&mut reports).await,
            "closed",
            "{path}: the upstream exchange is given up"
        );
        let event = gw
            .wait_for_audit(|e| e["path"] == path, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{path} is audited: {:#?}", gw.audit_events()));
        assert_eq!(event["outcome"], "abandoned", "{event}");
        assert_eq!(event["status"], 499, "{event}");
        assert_eq!(event["route"], "slow", "{event}");
        assert_eq!(event["target"], silent.to_string(), "{event}");
    }
    assert_eq!(call_public(&gw, "GET", "/ok", &[]).await.status, 200);
}

/// By default the end of a client's stream is a half-close: a request already on its way is
/// carried through and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_half_closing_client_still_gets_its_forwarded_answer() {
    let up = TestUpstream::start("app").await;
    let gw = proxied(&up, "");
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    s.write_all(b"GET /delay/300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    while up.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.shutdown().await.unwrap();
    let wire = exchange_to_close(&mut s, b"").await;
    let (got, _) = answers(&wire, &[false]);
    assert_eq!(got.len(), 1, "{}", String::from_utf8_lossy(&wire));
    assert_eq!(got[0].status, 200);
}
