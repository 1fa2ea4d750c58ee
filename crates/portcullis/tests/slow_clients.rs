//! Slow clients and connection exhaustion (slowloris and kin): the gateway keeps serving
//! everyone else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APP: &str = "upstreams: { d: { kind: echo } }\nroutes:\n  - { name: all, match: { prefix: / }, upstream: d }\n";

async fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{src}:0").parse().unwrap()).unwrap();
    s.connect(addr).await.unwrap()
}

/// A gateway with `server` settings and one catch-all route to the upstream at `target`.
fn proxied(server: &str, target: &str) -> Gateway {
    gateway(&format!(
        "server: {server}\nupstreams:\n  svc: {{ targets: [\"{target}\"] }}\n\
         routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n"
    ))
}

/// Reads until close or `within`; true if the peer closed.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    read_until_closed(s, within).await.0
}

/// Reads until the peer closes or `within` passes: whether it closed, and what it sent.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
    let mut out = Vec::new();
    let closed = matches!(
        tokio::time::timeout(within, s.read_to_end(&mut out)).await,
        Ok(Ok(_)) | Ok(Err(_))
    );
    (closed, out)
}

/// Sends a request on a kept-alive connection; its answer must be a 200.
async fn served_on(s: &mut TcpStream) {
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let out = String::from_utf8_lossy(&buf[..n]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// The gateway's metrics once they contain `line`, or as they are after 10 s of looking.
async fn metrics_showing(gw: &Gateway, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
        if metrics.contains(line) || Instant::now() > deadline {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn normal_request(src: &str, addr: SocketAddr) -> String {
    let out = fetch(src, addr, "/ok", Duration::from_secs(5)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A `GET path` with `Connection: close` from `src`: all the connection carried back, read
/// to its end within `within`.
async fn fetch(src: &str, addr: SocketAddr, path: &str, within: Duration) -> Vec<u8> {
    let mut s = connect_from(src, addr).await;
    let head = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .expect("the answer ends")
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_stop_the_gateway_serving_others() {
    let gw = gateway(&format!(
        "server: {{ header_read_timeout: 2s, max_connections_per_ip: 20 }}\n{APP}"
    ));
    let addr = gw.listener("public");
    // 100 connections from one address, each trickling an unfinished head.
    let mut attackers = Vec::new();
    for _ in 0..100 {
        let mut s = connect_from("127.0.0.1", addr).await;
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await;
        attackers.push(s);
    }
    // Another client is served at once.
    let out = normal_request("127.0.0.2", addr).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Connections beyond the per-address cap were closed straight away; the rest are closed
    // by the header timeout although they keep trickling.
    let mut refused = 0;
    for s in attackers.iter_mut().skip(20) {
        if closed_within(s, Duration::from_millis(500)).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 80);
    for s in attackers.iter_mut().take(20) {
        let _ = s.write_all(b"X-Trickle: 1\r\n").await;
    }
    for s in attackers.iter_mut().take(20) {
        assert!(
            closed_within(s, Duration::from_secs(6)).await,
            "a slow head must be cut off"
        );
    }
    // The attacking address itself is welcome again once it behaves.
    let out = normal_request("127.0.0.1", addr).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// A trusted proxy carries many clients over its connections: it is held to the global cap,
/// not the per-address one, which still holds for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_held_to_the_global_cap_only() {
    let gw = gateway(&format!(
        "server: {{ max_connections: 6, max_connections_per_ip: 2, trusted_proxies: [127.0.0.3] }}\n{APP}"
    ));
    let addr = gw.listener("public");
    let mut kept = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from("127.0.0.3", addr).await;
        served_on(&mut s).await;
        kept.push(s);
    }
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.1", addr).await;
        served_on(&mut s).await;
        kept.push(s);
    }
    // An untrusted address over its cap, and the trusted one over the global cap.
    for src in ["127.0.0.1", "127.0.0.3"] {
        let mut s = connect_from(src, addr).await;
        let _ = s.write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        assert!(out.is_empty(), "{src}: {}", String::from_utf8_lossy(&out));
    }
    // Places are given back as connections close (once the gateway has seen them close).
    kept.truncate(3);
    for src in ["127.0.0.3", "127.0.0.1"] {
        let mut out = String::new();
        for _ in 0..50 {
            // A refused connection may be reset: read what there is.
            let mut s = connect_from(src, addr).await;
            let _ = s
                .write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .await;
            let mut wire = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut wire)).await;
            out = String::from_utf8_lossy(&wire).into_owned();
            if !out.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(out.starts_with("HTTP/1.1 200"), "{src}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed() {
    let gw = gateway(&format!(
        "server: {{ header_read_timeout: 1s, idle_timeout: 2s }}\n{APP}"
    ));
    let addr = gw.listener("public");
    // Connect and say nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
    // Keep-alive after a request, then nothing.
    let mut ka = TcpStream::connect(addr).await.unwrap();
    ka.write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut ka, Duration::from_secs(6)).await);
    // An idle HTTP/2 connection too.
    let mut h2 = TcpStream::connect(addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(closed_within(&mut h2, Duration::from_secs(8)).await);
    assert!(
        normal_request("127.0.0.1", addr)
            .await
            .starts_with("HTTP/1.1 200")
    );
}

/// A trickled head after a first request on a keep-alive connection is cut off by the header
/// timeout too (the head is held back from the parser while incomplete, and the watchdog times
/// it from its first byte), well before the idle timeout: answered 408, then closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_second_head_is_cut_off_by_the_header_timeout() {
    let gw = gateway(&format!(
        "server: {{ header_read_timeout: 1s, idle_timeout: 30s }}\n{APP}"
    ));
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    served_on(&mut s).await;
    let mut buf = [0u8; 4096];
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if s.write_all(b"X-Trickle: 1\r\n").await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) if started.elapsed() > Duration::from_secs(10) => break false,
            Err(_) => {}
        }
    };
    assert!(closed, "a trickled head must be cut off");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"header_timeout\""), "{answer}");
    assert!(
        normal_request("127.0.0.1", gw.listener("public"))
            .await
            .starts_with("HTTP/1.1 200")
    );
}

/// A first head that began but is not complete within the header timeout is answered 408
/// `header_timeout` — a problem document with a request id, `Connection: close` — audited
/// (with its own method and path), and
/// the connection closed; nothing of it reaches the upstream. A connection that sent nothing
/// gets no answer, only the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_head_gets_408_and_a_silent_connection_nothing() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server: {{ header_read_timeout: 1s, idle_timeout: 30s }}\n\
         upstreams: {{ u: {{ targets: [\"{}\"] }} }}\n\
         routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: u }}\n",
        up.url()
    ));
    let addr = gw.listener("public");
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut late = TcpStream::connect(addr).await.unwrap();
    late.write_all(b"GET /orders HTTP/1.1\r\nHost: a\r\nX-Half: 1\r\n")
        .await
        .unwrap();

    let (closed, out) = read_until_closed(&mut late, Duration::from_secs(8)).await;
    assert!(closed, "a late head must be cut off");
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out.split_once("\r\n\r\n").expect("an answer");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 408"), "{out}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{out}"
    );
    assert!(head.contains("connection: close"), "{out}");
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(doc["code"], "header_timeout", "{doc}");
    assert_eq!(doc["status"], 408, "{doc}");
    let id = doc["request_id"].as_str().unwrap().to_string();
    assert!(
        head.contains(&format!("x-request-id: {}", id.to_ascii_lowercase())),
        "{out}"
    );
    let ev = gw
        .wait_for_audit(|e| e["request_id"] == id, Duration::from_secs(5))
        .expect("the refusal is audited");
    assert_eq!(ev["status"], 408, "{ev}");
    assert_eq!(ev["stage"], "protocol", "{ev}");
    assert_eq!(ev["reason"], "header_timeout", "{ev}");
    // What the late head asked for, as far as it came (not the stand-in's request).
    assert_eq!(ev["method"], "GET", "{ev}");
    assert_eq!(ev["path"], "/orders", "{ev}");

    let (closed, out) = read_until_closed(&mut silent, Duration::from_secs(8)).await;
    assert!(closed, "a silent connection is closed");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));

    assert_eq!(up.hits(), 0, "{:?}", up.requests());
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains(
            "portcullis_rejections_total{stage=\"protocol\",reason=\"header_timeout\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        normal_request("127.0.0.1", addr)
            .await
            .starts_with("HTTP/1.1 200")
    );
}

/// Late heads count against their client: a ban rule on `header_timeout` shuts out an
/// address that keeps starting heads it never finishes, while others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_sending_late_heads_is_banned() {
    let gw = gateway(&format!(
        "server: {{ header_read_timeout: 1s, idle_timeout: 30s }}\n\
         bans:\n  rules:\n    - {{ name: slow, on: [header_timeout], count: 2, within: 1m, ban_for: 1m }}\n{APP}"
    ));
    let addr = gw.listener("public");
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.1", addr).await;
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let (closed, out) = read_until_closed(&mut s, Duration::from_secs(8)).await;
        assert!(closed);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    }
    let out = normal_request("127.0.0.1", addr).await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("ip_banned"), "{out}");
    let out = normal_request("127.0.0.2", addr).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// The same on a connection hyper serves (handed over by a chunked request): the late head
/// after its answer gets the 408, through the same reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_head_on_a_connection_hyper_serves_gets_408_too() {
    let gw = gateway(&format!(
        "server: {{ header_read_timeout: 1s, idle_timeout: 30s }}\n{APP}"
    ));
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    s.write_all(
        b"POST /ok HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /next HTTP/1.1\r\nHost: a\r\n",
    )
    .await
    .unwrap();
    let (closed, out) = read_until_closed(&mut s, Duration::from_secs(8)).await;
    assert!(closed, "a late head must be cut off");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let second = out
        .find("HTTP/1.1 408")
        .expect("a 408 after the first answer");
    assert!(
        out[second..].contains("\"code\":\"header_timeout\""),
        "{out}"
    );
}

/// Waiting for the next request on a keep-alive connection is idleness, not a slow head: the
/// connection lives on past the header timeout, up to the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_waits_for_its_next_request_until_the_idle_timeout() {
    let gw = gateway(&format!(
        "server: {{ header_read_timeout: 1s, idle_timeout: 30s }}\n{APP}"
    ));
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    served_on(&mut s).await;
    // Well past the header timeout (and its watchdog's ticks).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    served_on(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408() {
    let gw = gateway(&format!("server: {{ body_read_timeout: 1s }}\n{APP}"));
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    s.write_all(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("urn:portcullis:problem:body_timeout"), "{out}");
    assert!(
        normal_request("127.0.0.1", gw.listener("public"))
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_connection_cap_holds() {
    let gw = gateway(&format!("server: {{ max_connections: 5 }}\n{APP}"));
    let addr = gw.listener("public");
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        served_on(&mut s).await;
        held.push(s);
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
    drop(held);
    // Once the gateway has seen them closed, their places under the cap are free again.
    let gone = "portcullis_active_connections{listener=\"public\"} 0\n";
    let m = metrics_showing(&gw, gone).await;
    assert!(m.contains(gone), "{m}");
    assert!(
        normal_request("127.0.0.1", addr)
            .await
            .starts_with("HTTP/1.1 200")
    );
    let m = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        m.contains("portcullis_rejections_total{stage=\"accept\",reason=\"connection_limit\"} 1"),
        "{m}"
    );
}

/// A slow reader (the "slow read" attack): a client that asks for a large answer and then
/// stops reading it. Once the socket buffers are full nothing moves on the connection, so the
/// idle timeout closes it — the answer in progress is given up, its upstream connection
/// closed under the upstream (which does not finish writing), and the exchange audited —
/// while other clients are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answer_is_cut_off_by_the_idle_timeout() {
    const SIZE: usize = 256 * 1024 * 1024;
    let (up, mut written) = bulk_upstream(SIZE).await;
    let gw = gateway(&format!(
        "server: {{ idle_timeout: 1s }}\n\
         upstreams:\n  bulk: {{ targets: [\"http://{up}\"] }}\n  d: {{ kind: echo }}\n\
         routes:\n  - {{ name: ok, match: {{ prefix: /ok }}, upstream: d }}\n  \
         - {{ name: all, match: {{ prefix: / }}, upstream: bulk }}\n"
    ));
    let addr = gw.listener("public");
    // A small receive window, and no reading after the first bytes of the answer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    // Before the request: the connection's last move (the kernel's buffers filling up) may
    // come before this reads the answer's first bytes.
    let started = Instant::now();
    slow.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let n = slow.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);
    // Others are served meanwhile.
    assert!(
        normal_request("127.0.0.1", addr)
            .await
            .starts_with("HTTP/1.1 200")
    );

    // The upstream is cut off well before it could write it all.
    let sent = tokio::time::timeout(Duration::from_secs(20), written.recv())
        .await
        .expect("the upstream's connection is closed under it")
        .unwrap();
    assert!(sent < SIZE, "the upstream wrote the whole answer");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the idle timeout"
    );

    // The client's connection is reset: what the kernel still held for it is dropped rather
    // than kept to be sent after the close.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest))
        .await
        .expect("the slow reader's connection is closed");
    assert_eq!(
        end.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "the slow reader's connection is reset"
    );

    // The exchange is audited, with the status the client was sent, as an answer cut off:
    // some of its body went out, not all of it.
    let event = gw
        .wait_for_audit(|e| e["path"] == "/big", Duration::from_secs(5))
        .expect("the cut-off answer is audited");
    assert_eq!(event["status"], 200, "{event}");
    assert_eq!(event["route"], "all", "{event}");
    assert_eq!(event["response_complete"], false, "{event}");
    let bytes = event["response_bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes < SIZE as u64, "{event}");
    assert!(
        event["duration_ms"].as_f64().unwrap() >= 900.0,
        "the answer lasted until the connection was closed: {event}"
    );
    assert!(
        event["latency_ms"].as_f64().unwrap() < event["duration_ms"].as_f64().unwrap(),
        "{event}"
    );
    // The other client's answer went out whole.
    let other = gw
        .wait_for_audit(|e| e["path"] == "/ok", Duration::from_secs(5))
        .expect("the other request is audited");
    assert_eq!(other["response_complete"], true, "{other}");
    assert!(other["response_bytes"].as_u64().unwrap() > 0, "{other}");
}

/// A client that reads its answer, but slower than `server.send_min_bytes_per_second`, keeps
/// something moving on its connection, so the idle timeout never closes it; the minimum send
/// rate does, once the client has fallen behind it by more than the kernel may hold for it —
/// the answer is given up, its upstream connection closed under the upstream, the
/// close counted and logged, the exchange audited as cut off. A client that reads as fast as
/// it can, at the same time, gets its whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_slower_than_the_minimum_send_rate_is_cut_off() {
    const SIZE: usize = 64 * 1024 * 1024;
    let (up, mut written) = bulk_upstream(SIZE).await;
    // A minimum far above the default, so that the test does not wait many minutes for the
    // slow reader to fall behind it by what the kernel may hold (a little over 256 KiB once
    // the socket's unsent bytes are bounded); ticks of 0.5 s.
    let gw = gateway(&format!(
        "server: {{ header_read_timeout: 2s, send_min_bytes_per_second: 200000 }}\n\
         upstreams:\n  bulk: {{ targets: [\"http://{up}\"] }}\n  d: {{ kind: echo }}\n\
         routes:\n  - {{ name: ok, match: {{ prefix: /ok }}, upstream: d }}\n  \
         - {{ name: all, match: {{ prefix: / }}, upstream: bulk }}\n"
    ));
    let addr = gw.listener("public");

    // The slow reader: a small receive window, 16 KiB taken every 500 ms (about 33 kB/s).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let reader = read_slowly(slow, SIZE);

    // The fast reader, meanwhile: the whole answer.
    let whole = fetch("127.0.0.1", addr, "/fast", Duration::from_secs(60)).await;
    assert_whole_answer(&whole, SIZE);

    assert_reset_by_send_rate(&gw, reader, &mut written, SIZE).await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "closed by the minimum rate, not the idle timeout"
    );
    assert!(
        gw.stderr_text()
            .contains("slower than server.send_min_bytes_per_second: connection reset"),
        "not logged"
    );
    let event = gw
        .wait_for_audit(|e| e["path"] == "/slow", Duration::from_secs(5))
        .expect("the cut-off answer is audited");
    assert_eq!(event["status"], 200, "{event}");
    assert_eq!(event["response_complete"], false, "{event}");
    let event = gw
        .wait_for_audit(|e| e["path"] == "/fast", Duration::from_secs(5))
        .expect("the whole answer is audited");
    assert_eq!(event["response_complete"], true, "{event}");
    // The gateway is healthy.
    assert!(
        normal_request("127.0.0.1", addr)
            .await
            .starts_with("HTTP/1.1 200")
    );
}

/// An upstream that switches protocols on any request, then echoes what comes until its
/// connection is closed, and reports when it was.
async fn tunnel_upstream() -> (SocketAddr, tokio::sync::mpsc::Receiver<Instant>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let addr = scripted_upstream(move |mut s| {
        let tx = tx.clone();
        async move {
            let switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n";
            if s.write_all(switch).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = tx.send(Instant::now()).await;
        }
    })
    .await;
    (addr, rx)
}

/// An upgraded connection (a WebSocket tunnel) is watched like any other: one that goes
/// silent is closed after the idle timeout, on both sides — before, its tunnel outlived the
/// HTTP connection's watchdog and held the upstream's connection for ever — while one that
/// keeps talking stays open past it. An idle timeout of 2 s against a talker that speaks every
/// 300 ms: a loaded machine may be late with a word by well over a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upgraded_connection_is_closed_by_the_idle_timeout() {
    let (up, mut closed) = tunnel_upstream().await;
    let gw = gateway(&format!(
        "server: {{ idle_timeout: 2s }}\n\
         upstreams:\n  ws: {{ targets: [\"http://{up}\"] }}\n  d: {{ kind: echo }}\n\
         routes:\n  - {{ name: ok, match: {{ prefix: /ok }}, upstream: d }}\n  \
         - {{ name: ws, match: {{ path: /chat, methods: [GET] }}, upstream: ws, websocket: true }}\n"
    ));
    let addr = gw.listener("public");
    let upgrade = b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let open = |addr| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(upgrade).await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).await.unwrap(), 1, "the upgrade's answer");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        s
    };
    // Before the silent tunnel's first byte: its idle clock cannot have started earlier.
    let started = Instant::now();
    let mut silent = open(addr).await;
    let mut talking = open(addr).await;
    // Both count as open connections (against the connection caps too) while they are.
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains("portcullis_active_connections{listener=\"public\"} 2\n"),
        "{metrics}"
    );
    // A masked binary frame (the gateway follows the client's frames), which this upstream
    // echoes as it came.
    let frame = |payload: &[u8; 4]| {
        let mut f = vec![0x82, 0x84, 1, 2, 3, 4];
        f.extend(payload.iter().zip([1, 2, 3, 4]).map(|(b, k)| b ^ k));
        f
    };
    // The talking one: a few bytes every 300 ms, echoed, for 5 s — two and a half idle
    // timeouts. It ends on an exchange, not on a pause.
    let talk = tokio::spawn(async move {
        let mut b = [0u8; 10];
        loop {
            talking.write_all(&frame(b"ping")).await.unwrap();
            talking.read_exact(&mut b).await.unwrap();
            assert_eq!(b[..], frame(b"ping"));
            if started.elapsed() >= Duration::from_secs(5) {
                break talking;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    // The silent one is closed, on the client's side and the upstream's.
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "the silent tunnel is closed"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "closed after {waited:?}"
    );
    let at = tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the silent tunnel's upstream connection is closed")
        .unwrap();
    assert!(
        at.duration_since(started) < Duration::from_secs(5),
        "{:?}",
        at.duration_since(started)
    );
    // The talking one is still open, and still carries bytes both ways (at once: its last
    // exchange just ended) …
    let mut talking = talk.await.unwrap();
    talking.write_all(&frame(b"more")).await.unwrap();
    let mut b = [0u8; 10];
    talking.read_exact(&mut b).await.unwrap();
    assert_eq!(b[..], frame(b"more"));
    // … and counts as the one open connection.
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains("portcullis_active_connections{listener=\"public\"} 1\n"),
        "{metrics}"
    );
    // Once it goes silent, it is closed too.
    assert!(closed_within(&mut talking, Duration::from_secs(10)).await);
    assert!(
        normal_request("127.0.0.1", addr)
            .await
            .starts_with("HTTP/1.1 200")
    );
}

/// An upstream that answers every request with a chunked body in two pieces, `gap` apart.
async fn gappy_upstream(gap: Duration) -> SocketAddr {
    scripted_upstream(move |mut s| async move {
        let first = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
        if s.write_all(first).await.is_err() {
            return;
        }
        tokio::time::sleep(gap).await;
        let _ = s.write_all(b"4\r\nlast\r\n0\r\n\r\n").await;
    })
    .await
}

/// The slow read of HTTP/2: a client that opens no flow-control window (`SETTINGS` initial
/// window 0) gets its answer's head and no byte of its body, and keeps the connection busy
/// with pings, so the idle timeout never sees it idle. Its answer has waited on it for
/// `server.send_timeout` with nothing moving: the connection is closed, the upstream
/// exchange given up (the upstream does not finish writing), the closing counted. An answer
/// that waits on its upstream instead, longer than the send timeout (and shorter than the
/// idle timeout), is not cut off, and others are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_holds_its_answer_up_is_cut_off_by_the_send_timeout() {
    const SIZE: usize = 256 * 1024 * 1024;
    let (bulk, mut written) = bulk_upstream(SIZE).await;
    let gappy = gappy_upstream(Duration::from_millis(2000)).await;
    let gw = gateway(&format!(
        "server: {{ idle_timeout: 3s, send_timeout: 1s }}\n\
         upstreams:\n  bulk: {{ targets: [\"http://{bulk}\"] }}\n  \
         gappy: {{ targets: [\"http://{gappy}\"] }}\n  d: {{ kind: echo }}\n\
         routes:\n  - {{ name: ok, match: {{ prefix: /ok }}, upstream: d }}\n  \
         - {{ name: gappy, match: {{ prefix: /gappy }}, upstream: gappy }}\n  \
         - {{ name: all, match: {{ prefix: / }}, upstream: bulk }}\n"
    ));
    let addr = gw.listener("public");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0.
    hello.extend(h2_frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    // HEADERS on stream 1, ending it: GET http://a/big.
    hello.extend(h2_get(1, "/big"));
    s.write_all(&hello).await.unwrap();
    let started = Instant::now();

    // Served meanwhile: another client, and an answer that waits on its upstream.
    let others = async {
        let r = send_h2c(req("GET", &format!("{}/ok", gw.url("public")), &[], "")).await;
        assert_eq!(r.status, 200);
        let r = send_h2c(req("GET", &format!("{}/gappy", gw.url("public")), &[], "")).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body, "firstlast",
            "an answer waiting on its upstream is not cut off"
        );
    };
    // The stalled client pings every 300 ms and reads what it is sent, until the gateway
    // closes the connection (or 20 s pass).
    let stalled = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let ping = h2_frame(6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut next_ping = Instant::now();
        let closed = loop {
            if Instant::now() >= next_ping {
                if s.write_all(&ping).await.is_err() {
                    break true;
                }
                next_ping = Instant::now() + Duration::from_millis(300);
            }
            if started.elapsed() > Duration::from_secs(20) {
                break false;
            }
            let wait = next_ping.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        };
        (closed, got)
    };
    let ((closed, got), ()) = tokio::join!(stalled, others);
    assert!(closed, "the stalled connection is closed");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "closed after {waited:?}");
    // It got its answer's head and no byte of the body.
    let kinds: Vec<(u8, u32)> = h2_frames(&got)
        .into_iter()
        .map(|(k, s, _)| (k, s))
        .collect();
    assert!(kinds.contains(&(1, 1)), "the answer's head: {kinds:?}");
    assert!(
        !kinds.iter().any(|&(k, _)| k == 0),
        "no DATA frame: {kinds:?}"
    );
    assert!(
        kinds.iter().filter(|&&(k, _)| k == 6).count() >= 3,
        "pings answered: {kinds:?}"
    );

    // The upstream's connection was closed under it.
    let sent = tokio::time::timeout(Duration::from_secs(10), written.recv())
        .await
        .expect("the upstream's connection is closed under it")
        .unwrap();
    assert!(sent < SIZE, "the upstream wrote the whole answer");
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains("portcullis_rejections_total{stage=\"accept\",reason=\"send_timeout\"} 1"),
        "{metrics}"
    );
    // Audited as an answer that began (its status) and was cut off: the client got no body
    // byte, and what the connection took from the body (hyper's HTTP/2 layer holds a piece
    // while it waits for window) is a sliver of it. The answer that waited on its upstream
    // went out whole.
    let event = gw
        .wait_for_audit(|e| e["path"] == "/big", Duration::from_secs(5))
        .expect("the held-up answer is audited");
    assert_eq!(event["status"], 200, "{event}");
    assert_eq!(event["http_version"], "HTTP/2", "{event}");
    assert_eq!(event["response_complete"], false, "{event}");
    assert!(
        event["response_bytes"].as_u64().unwrap() <= 64 * 1024,
        "{event}"
    );
    let gappy = gw
        .wait_for_audit(|e| e["path"] == "/gappy", Duration::from_secs(5))
        .expect("the gappy answer is audited");
    assert_eq!(gappy["response_complete"], true, "{gappy}");
    assert_eq!(gappy["response_bytes"], 9, "{gappy}");
    assert!(
        gappy["duration_ms"].as_f64().unwrap() >= 1900.0,
        "its body took the upstream's gap: {gappy}"
    );
}

/// The idle timeout is for connections with nothing to do: a request waiting on a slow
/// upstream for its answer (here 2.5 s against an idle timeout of 1 s) is answered, over
/// HTTP/1.1 and HTTP/2 — its own `request_timeout` bounds that wait — and the kept-alive
/// connection is closed once it has been idle for the timeout after its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_on_its_upstream_is_not_idleness() {
    let up = TestUpstream::start("slow").await;
    let gw = proxied("{ idle_timeout: 1s }", &up.url());
    let addr = gw.listener("public");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /delay/2500 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let out = String::from_utf8_lossy(&buf[..n]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Then idle: closed, not at once. The idle clock starts when the gateway writes the
    // answer, before this reads it (by however late a loaded machine is): the bound is below
    // the timeout, and still far above a close right after the answer.
    let since = Instant::now();
    let (closed, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "the idle connection is closed");
    let after = since.elapsed();
    assert!(
        after >= Duration::from_millis(500),
        "closed {after:?} after its answer"
    );

    let r = send_h2c(req(
        "GET",
        &format!("{}/delay/2500", gw.url("public")),
        &[],
        "",
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 2, "{:?}", up.requests());
}

/// HEADERS ending the stream: `GET http://a{path}`.
fn h2_get(stream: u32, path: &str) -> Vec<u8> {
    h2_frame(1, 5, stream, &h2_block("GET", path, &[]))
}

/// One stream held up while another moves: the client opens no window for stream 1 and
/// trickles window to stream 3, so the connection is never idle nor all stalled. The held-up
/// answer alone is cut off once it has waited `server.send_timeout`: its upstream exchange is
/// closed (it no longer holds a connection to the upstream), the stream is reset as soon as
/// the client lets the server speak on it, the cut is counted and audited — and the
/// connection and its moving stream go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_answer_held_up_while_others_move_is_cut_off_alone() {
    const SIZE: usize = 256 * 1024 * 1024;
    let (bulk, mut written) = bulk_upstream(SIZE).await;
    let gw = proxied(
        "{ idle_timeout: 10s, send_timeout: 1s }",
        &format!("http://{bulk}"),
    );
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0; the connection's own window opened wide.
    hello.extend(h2_frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    hello.extend(h2_frame(8, 0, 0, &0x4000_0000u32.to_be_bytes()));
    hello.extend(h2_get(1, "/held"));
    hello.extend(h2_get(3, "/moving"));
    s.write_all(&hello).await.unwrap();
    let started = Instant::now();

    // Stream 3 gets 16 KiB of window every 200 ms, with a ping; stream 1 none.
    let mut wire = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut cut_at = None;
    let mut next = Instant::now();
    let mut opened_held = false;
    while started.elapsed() < Duration::from_secs(6) {
        if Instant::now() >= next {
            let mut out = h2_frame(8, 0, 3, &16384u32.to_be_bytes());
            out.extend(h2_frame(6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]));
            // Once the held answer's upstream is gone, stream 1 is given window too: the
            // server then speaks on it, and what it says is a reset.
            if cut_at.is_some() && !opened_held {
                out.extend(h2_frame(8, 0, 1, &65535u32.to_be_bytes()));
                opened_held = true;
            }
            s.write_all(&out).await.unwrap();
            next = Instant::now() + Duration::from_millis(200);
        }
        if cut_at.is_none()
            && let Ok(sent) = written.try_recv()
        {
            assert!(sent < SIZE);
            cut_at = Some(started.elapsed());
        }
        let wait = next.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!("the connection was closed"),
            Ok(Ok(n)) => wire.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let cut_at = cut_at.expect("the held answer's upstream exchange is closed");
    assert!(cut_at >= Duration::from_millis(900), "cut after {cut_at:?}");

    // What the client got: frames by stream, in order (type, stream, payload length).
    let frames: Vec<(u8, u32, usize)> = h2_frames(&wire)
        .into_iter()
        .map(|(k, s, p)| (k, s, p.len()))
        .collect();
    let data = |stream: u32| -> usize {
        frames
            .iter()
            .filter(|&&(k, s, _)| k == 0 && s == stream)
            .map(|&(_, _, l)| l)
            .sum()
    };
    assert!(
        frames.contains(&(3, 1, 4)),
        "stream 1 is reset once it may be spoken on: {frames:?}"
    );
    assert!(
        !frames.iter().any(|&(k, _, _)| k == 7),
        "no GOAWAY: {frames:?}"
    );
    assert!(
        !frames.iter().any(|&(k, s, _)| k == 3 && s == 3),
        "the moving stream is not reset"
    );
    // The moving stream got (about) the window it was given, all along.
    let given = 16384 * (started.elapsed().as_millis() as usize / 200);
    assert!(data(3) >= given / 2, "{} of {given}", data(3));
    assert!(data(1) <= 65535, "{}", data(1));
    // Only the held answer's exchange was closed: the moving one still runs.
    assert!(written.try_recv().is_err());

    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains("portcullis_rejections_total{stage=\"accept\",reason=\"send_timeout\"} 1"),
        "{metrics}"
    );
    let event = gw
        .wait_for_audit(|e| e["path"] == "/held", Duration::from_secs(5))
        .expect("the held answer is audited");
    assert_eq!(event["response_complete"], false, "{event}");
    assert!(
        gw.audit_events().iter().all(|e| e["path"] != "/moving"),
        "the moving answer is still going"
    );
}

/// Pings every 300 ms (reading what comes, and acknowledging the server's pings, as a client
/// does) until the gateway closes the connection or `within` passes: whether it closed, when,
/// and what it sent.
async fn ping_until_closed(s: &mut TcpStream, within: Duration) -> (bool, Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let ours = [1, 2, 3, 4, 5, 6, 7, 8];
    let ping = h2_frame(6, 0, 0, &ours);
    let mut next_ping = Instant::now();
    let mut seen = 0;
    loop {
        let frames = h2_frames(&got);
        for (_, _, payload) in frames[seen..]
            .iter()
            .filter(|(k, _, p)| *k == 6 && p[..] != ours)
        {
            if s.write_all(&h2_frame(6, 1, 0, payload)).await.is_err() {
                return (true, started.elapsed(), got);
            }
        }
        seen = frames.len();
        if Instant::now() >= next_ping {
            if s.write_all(&ping).await.is_err() {
                return (true, started.elapsed(), got);
            }
            next_ping = Instant::now() + Duration::from_millis(300);
        }
        if started.elapsed() > within {
            return (false, started.elapsed(), got);
        }
        let wait = next_ping.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, started.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
}

/// Small answers held up by a one-byte window: the client opens one byte of window to each
/// of many streams and pings. Each answer's body is a single piece, which the HTTP/2 layer
/// buffers whole whatever the window; the answer stays watched until the client's window
/// took it (its end of stream is told only then), so the connection whose answers all stand
/// still is closed after `server.send_timeout` — before, such answers were done with as soon
/// as they were buffered and the client could hold them, and their memory, for as long as it
/// pinged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_answers_buffered_behind_a_one_byte_window_stay_under_the_send_timeout() {
    let gw = gateway(&format!(
        "server: {{ idle_timeout: 3s, send_timeout: 1s }}\n{APP}"
    ));
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 1.
    hello.extend(h2_frame(4, 0, 0, &[0, 4, 0, 0, 0, 1]));
    for i in 0..20u32 {
        hello.extend(h2_get(2 * i + 1, &format!("/held/{i}")));
    }
    s.write_all(&hello).await.unwrap();
    let (closed, after, got) = ping_until_closed(&mut s, Duration::from_secs(15)).await;
    assert!(closed, "the connection holding its answers up is closed");
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    let frames = h2_frames(&got);
    // Each stream got its answer's head and one byte of its body, no end of stream.
    let heads = frames.iter().filter(|(k, _, _)| *k == 1).count();
    assert_eq!(heads, 20, "{frames:?}");
    for (k, stream, payload) in &frames {
        if *k == 0 {
            assert_eq!(
                payload.len(),
                1,
                "stream {stream}: one byte of window, one byte"
            );
        }
    }
    // Counted as the connection closes: looked for until it is.
    let counted = "portcullis_rejections_total{stage=\"accept\",reason=\"send_timeout\"} 1";
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
        if metrics.contains(counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.contains(counted), "{metrics}");
    // Audited as answers the client did not get whole (it got one byte of each).
    for i in [0, 7, 19] {
        let path = format!("/held/{i}");
        let event = gw
            .wait_for_audit(|e| e["path"] == path.as_str(), Duration::from_secs(5))
            .expect("the held answer is audited");
        assert_eq!(event["response_complete"], false, "{event}");
    }
    // The gateway is healthy.
    let r = send_h2c(req("GET", &format!("{}/ok", gw.url("public")), &[], "")).await;
    assert_eq!(r.status, 200);
}

/// An HTTP/2 connection is idle when it has no stream, whatever pings and settings move: one
/// that never makes a request is closed once `server.header_read_timeout` has passed since the
/// accept, and one whose requests are all answered once `server.idle_timeout` has — before,
/// every byte counted, so a client that pinged kept a connection open for ever without a
/// request to audit, limit or ban. The two timeouts far apart, so that a loaded machine's
/// lateness does not make one close look like the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_streams_is_idle_whatever_it_pings() {
    let gw = gateway(&format!(
        "server: {{ header_read_timeout: 1s, idle_timeout: 4s }}\n{APP}"
    ));
    let preface = || {
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(h2_frame(4, 0, 0, &[]));
        hello
    };
    // No request at all.
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    s.write_all(&preface()).await.unwrap();
    let (closed, after, got) = ping_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "a connection that makes no request is closed");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(3500),
        "by header_read_timeout, not idle_timeout: {after:?}"
    );
    // Told first: a GOAWAY whose last one names the last stream taken (none), then the close.
    let goaway = |got: &[u8]| {
        h2_frames(got)
            .into_iter()
            .rev()
            .find(|(k, _, _)| *k == 7)
            .map(|(_, _, payload)| payload)
    };
    let g = goaway(&got).expect("a GOAWAY before the close");
    assert_eq!(&g[..4], &[0, 0, 0, 0], "last stream id 0: {g:?}");

    // A request answered, then pings only.
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    let mut hello = preface();
    hello.extend(h2_get(1, "/once"));
    s.write_all(&hello).await.unwrap();
    let (closed, after, got) = ping_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "a connection whose streams are all done is closed");
    assert!(
        after >= Duration::from_millis(3900),
        "after idle_timeout: {after:?}"
    );
    let frames = h2_frames(&got);
    assert!(
        frames.iter().any(|(k, stream, _)| *k == 1 && *stream == 1),
        "the request was answered: {frames:?}"
    );
    let g = goaway(&got).expect("a GOAWAY before the close");
    assert_eq!(
        &g[..8],
        &[0, 0, 0, 1, 0, 0, 0, 0],
        "stream 1 taken, no error: {g:?}"
    );
    // Neither counted as a refusal of anything: idleness.
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(!metrics.contains("reason=\"send_timeout\""), "{metrics}");
}

/// A slow but steady HTTP/2 reader of a long answer gets all of it: with a wide window the
/// server hands the whole body to the HTTP/2 layer at once and lets the answer go, and the
/// layer sends it as the socket drains. Those writes, waiting on a client that keeps taking
/// them, keep the connection from being idle (before, once the answer was let go only a new
/// stream counted, and the idle timeout reset the connection mid-answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_http2_reader_gets_the_whole_answer() {
    const SIZE: usize = 512 * 1024;
    let (bulk, _written) = bulk_upstream(SIZE).await;
    let gw = proxied("{ idle_timeout: 2s }", &format!("http://{bulk}"));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut s = socket.connect(gw.listener("public")).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 8 MiB, and the connection's window opened as wide.
    hello.extend(h2_frame(4, 0, 0, &[0, 4, 0, 0x80, 0, 0]));
    hello.extend(h2_frame(8, 0, 0, &(8u32 << 20).to_be_bytes()));
    hello.extend(h2_get(1, "/big"));
    s.write_all(&hello).await.unwrap();
    // 8 KiB every 100 ms: about 80 KB/s, far above the minimum send rate, for some 6 s —
    // three idle timeouts.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8 * 1024];
    let started = Instant::now();
    let data = |got: &[u8]| -> (usize, bool) {
        let frames = h2_frames(got);
        let n = frames
            .iter()
            .filter(|(k, st, _)| *k == 0 && *st == 1)
            .map(|(_, _, p)| p.len())
            .sum();
        (n, frames.iter().any(|(k, _, _)| *k == 3 || *k == 7))
    };
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if data(&got).0 >= SIZE || started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    let (n, reset) = data(&got);
    assert_eq!(n, SIZE, "the whole answer, at {:?}", started.elapsed());
    assert!(!reset, "no reset or GOAWAY on the way");
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "slower than the idle timeout"
    );
}

/// A stream the client starts just as its idle HTTP/2 connection is told `GOAWAY` (before the
/// client has seen it) is taken — hyper takes streams until its PING after the `GOAWAY` is
/// answered — and is then served whole, however long it takes, the connection ending after
/// it; before, the connection was dropped a second after the `GOAWAY`, with the request it had
/// taken (and sent upstream) in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_taken_as_an_idle_http2_connection_ends_is_served() {
    let up = TestUpstream::start("slow").await;
    let gw = proxied("{ idle_timeout: 1s }", &up.url());
    let mut s = TcpStream::connect(gw.listener("public")).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(4, 0, 0, &[]));
    hello.extend(h2_get(1, "/first"));
    s.write_all(&hello).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let started = Instant::now();
    let mut late_sent = false;
    let mut acked = 0;
    let closed = loop {
        if started.elapsed() > Duration::from_secs(15) {
            break false;
        }
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
        let frames = h2_frames(&got);
        // At the first GOAWAY, a request on stream 3 that takes 1.5 s upstream; then the
        // server's pings are answered.
        if !late_sent && frames.iter().any(|(k, _, _)| *k == 7) {
            s.write_all(&h2_get(3, "/delay/1500")).await.unwrap();
            late_sent = true;
        }
        if late_sent {
            let pings: Vec<_> = frames.iter().filter(|(k, _, _)| *k == 6).collect();
            for (_, _, payload) in pings.iter().skip(acked) {
                let _ = s.write_all(&h2_frame(6, 1, 0, payload)).await;
            }
            acked = pings.len();
        }
    };
    assert!(closed, "the connection ends");
    assert!(late_sent, "a GOAWAY came");
    let frames = h2_frames(&got);
    assert!(
        frames.iter().any(|(k, st, _)| *k == 1 && *st == 3),
        "the stream taken during the GOAWAY was answered: {:?}",
        frames
            .iter()
            .map(|(k, st, p)| (*k, *st, p.len()))
            .collect::<Vec<_>>()
    );
    let ev = gw
        .wait_for_audit(|e| e["path"] == "/delay/1500", Duration::from_secs(5))
        .expect("audited");
    assert_eq!(ev["status"], 200, "{ev}");
    assert_eq!(ev["response_complete"], true, "{ev}");
}
