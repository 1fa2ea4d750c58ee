//! TLS termination and upstream TLS, with certificates generated at test time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use portcullis_test_support::client::tls_request;

fn tls_gateway(pki: &TestPki, min: &str, upstream: &str) -> (Gateway, CertFiles, CertFiles) {
    let a = pki.issue_server(&["a.test", "localhost", "127.0.0.1"]);
    let b = pki.issue_server(&["b.test", "*.b.test"]);
    let yaml = format!(
        r#"listeners:
  - name: secure
    address: "127.0.0.1:0"
    tls:
      min_version: "{min}"
      certificates:
        - {{ cert_file: "{}", key_file: "{}" }}
        - {{ cert_file: "{}", key_file: "{}" }}
admin: {{ address: "127.0.0.1:0" }}
{upstream}
routes:
  - {{ name: all, match: {{ prefix: / }}, upstream: up }}
"#,
        a.cert_path.display(),
        a.key_path.display(),
        b.cert_path.display(),
        b.key_path.display()
    );
    (Gateway::start(bin(), &yaml).unwrap(), a, b)
}

fn client_config(
    pki: &TestPki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    portcullis_test_support::client::client_config(&pki.ca_pem(), versions, alpn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_alpn_the_protocol() {
    let pki = TestPki::new();
    let (gw, a, b) = tls_gateway(&pki, "1.2", "upstreams: { up: { kind: echo } }");
    let addr = gw.listener("secure");
    assert!(gw.url("secure").starts_with("https://"));
    let ca = pki.ca_pem();

    let (r, seen) = send_tls(
        addr,
        "a.test",
        &ca,
        &[b"h2", b"http/1.1"],
        req("GET", "https://a.test/x", &[], ""),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // HSTS is sent on TLS listeners (and only there: see tests/response.rs).
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(seen.peer_cert_der, a.cert_der);
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen.version, "Some(TLSv1_3)");
    assert_eq!(r.version, http::Version::HTTP_2);

    let (r, seen) = send_tls(
        addr,
        "b.test",
        &ca,
        &[b"http/1.1"],
        req("GET", "/x", &[("host", "b.test")], ""),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(seen.peer_cert_der, b.cert_der);
    assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let echoed = r.json();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");

    // A wildcard name, and an unknown name falling back to the first certificate.
    let (_, seen) = send_tls(
        addr,
        "api.b.test",
        &ca,
        &[b"h2"],
        req("GET", "https://api.b.test/", &[], ""),
    )
    .await
    .unwrap();
    assert_eq!(seen.peer_cert_der, b.cert_der);
    let (_, seen) = send_tls(
        addr,
        "localhost",
        &ca,
        &[b"h2"],
        req("GET", "https://localhost/", &[], ""),
    )
    .await
    .unwrap();
    assert_eq!(seen.peer_cert_der, a.cert_der);

    let ev = gw
        .wait_for_audit(|e| e["tls"] == true, std::time::Duration::from_secs(5))
        .unwrap();
    assert_eq!(ev["listener"], "secure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_is_the_floor_and_1_3_only_can_be_required() {
    let pki = TestPki::new();
    let (gw, _, _) = tls_gateway(&pki, "1.2", "upstreams: { up: { kind: echo } }");
    let v12 = client_config(&pki, &[&rustls::version::TLS12], &[b"http/1.1"]);
    let (r, seen) = tls_request(
        gw.listener("secure"),
        "a.test",
        v12.clone(),
        req("GET", "/", &[("host", "a.test")], ""),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(seen.version, "Some(TLSv1_2)");

    let (gw13, _, _) = tls_gateway(&pki, "1.3", "upstreams: { up: { kind: echo } }");
    let err = tls_request(
        gw13.listener("secure"),
        "a.test",
        v12,
        req("GET", "/", &[("host", "a.test")], ""),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_lowercase().contains("version") || err.contains("alert"),
        "{err}"
    );
    // The listener still serves TLS 1.3 clients.
    let v13 = client_config(&pki, &[&rustls::version::TLS13], &[b"h2"]);
    let (r, _) = tls_request(
        gw13.listener("secure"),
        "a.test",
        v13,
        req("GET", "https://a.test/", &[], ""),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_tls_listener_gets_nothing() {
    let pki = TestPki::new();
    let (gw, _, _) = tls_gateway(&pki, "1.2", "upstreams: { up: { kind: echo } }");
    let out = raw_http(gw.listener("secure"), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    // The failed handshake is counted.
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains(
            "portcullis_rejections_total{stage=\"accept\",reason=\"tls_handshake_failed\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_is_verified_against_the_configured_ca() {
    let pki = TestPki::new();
    let cert = pki.issue_server(&["localhost"]);
    let up = TestUpstream::start_tls("secure-up", &cert).await;
    let ok = format!(
        "upstreams:\n  up: {{ targets: [\"{}\"], tls: {{ ca_file: \"{}\" }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: up }}\n",
        up.url(),
        pki.ca_path().display()
    );
    let gw = gateway(&ok);
    let r = get(&format!("{}/x", gw.url("public"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream"), Some("secure-up"));
    // `protocol: auto` over TLS negotiates HTTP/2 by ALPN.
    assert_eq!(up.requests()[0].version, http::Version::HTTP_2);

    // Another CA: the upstream's certificate is not trusted, and nothing is served.
    let other = TestPki::new();
    let bad = ok.replace(
        &pki.ca_path().display().to_string(),
        &other.ca_path().display().to_string(),
    );
    let gw = gateway(&bad);
    let hits = up.hits();
    assert_problem(
        &get(&format!("{}/x", gw.url("public"))).await,
        502,
        "upstream_error",
    );
    assert_eq!(up.hits(), hits);
}

/// A slowloris against a TLS listener: connections that say nothing, that trickle a hello
/// and stop, or that take their time over the handshake. The handshake is part of the time to
/// the first head (`server.header_read_timeout`, from the accept): each is closed once it is
/// past, counted (`tls_handshake_timeout`), and others are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_slowloris_is_closed_by_the_header_timeout_counted_from_the_accept() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = TestPki::new();
    let (gw, _, _) = tls_gateway(
        &pki,
        "1.2",
        "server: { header_read_timeout: 1s }\nupstreams: { up: { kind: echo } }",
    );
    let addr = gw.listener("secure");
    let ca = pki.ca_pem();
    let started = Instant::now();
    // 20 that say nothing, 20 that send the start of a hello (a record header promising
    // 512 bytes, then 4 of them) and stop.
    let mut slow = Vec::new();
    for i in 0..40 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
                .await
                .unwrap();
        }
        slow.push(s);
    }
    // Served meanwhile.
    let (r, _) = send_tls(
        addr,
        "a.test",
        &ca,
        &[b"h2", b"http/1.1"],
        req("GET", "https://a.test/x", &[], ""),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    for (i, s) in slow.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        let end = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("connection {i} is still open"));
        assert!(matches!(end, Ok(0) | Err(_)), "{i}: {end:?}");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );

    // A client that waits past the timeout before its hello finds the connection closed: the
    // handshake is not given a deadline of its own.
    let mut late = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(Duration::from_secs(5), late.read(&mut buf))
        .await
        .expect("closed");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    // Each counted, none as a failed handshake.
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains(
            "portcullis_rejections_total{stage=\"accept\",reason=\"tls_handshake_timeout\"} 41"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("tls_handshake_failed"), "{metrics}");

    // A handshake that took a while leaves the first head only what is left of the timeout
    // (here 3 s): the hello 2 s after the accept, then a head 4.5 s after it finds the
    // connection closed (it was, some 3 s after the accept, since no head had come).
    let (gw, _, _) = tls_gateway(
        &pki,
        "1.2",
        "server: { header_read_timeout: 3s }\nupstreams: { up: { kind: echo } }",
    );
    let addr = gw.listener("secure");
    let ca = pki.ca_pem();
    let connector = tokio_rustls::TlsConnector::from(client_config(
        &pki,
        &[&rustls::version::TLS13],
        &[b"http/1.1"],
    ));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("the handshake is within the timeout");
    tokio::time::sleep_until((opened + Duration::from_millis(4500)).into()).await;
    let _ = tls
        .write_all(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("HTTP/1.1 200"),
        "served a head that came past the timeout: {}",
        String::from_utf8_lossy(&got)
    );
    // And one whose handshake and head are in time is served.
    let (r, _) = send_tls(
        addr,
        "a.test",
        &ca,
        &[b"http/1.1"],
        req("GET", "/x", &[("host", "a.test")], ""),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
}

/// The minimum send rate over TLS: the gateway's writes go to the TLS layer, which may hold
/// records of its own besides what the kernel holds, and the judgement asks the TCP socket
/// under it. A client that reads its answer over TLS slower than
/// `server.send_min_bytes_per_second` is reset, its upstream exchange closed, the close
/// counted and audited; a client reading as fast as it can on the same listener at the same
/// time gets its whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_reading_slower_than_the_minimum_send_rate_is_reset() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 32 * 1024 * 1024;
    let (up, mut written) = bulk_upstream(SIZE).await;
    let pki = TestPki::new();
    let (gw, _, _) = tls_gateway(
        &pki,
        "1.2",
        &format!(
            "server: {{ send_min_bytes_per_second: 200000 }}\n\
             upstreams: {{ up: {{ targets: [\"http://{up}\"] }} }}"
        ),
    );
    let addr = gw.listener("secure");
    let connector = tokio_rustls::TlsConnector::from(client_config(
        &pki,
        &[&rustls::version::TLS13],
        &[b"http/1.1"],
    ));
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();

    // The slow reader: a small receive window, 16 KiB taken every 500 ms (about 33 kB/s).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let mut slow = connector.connect(name.clone(), tcp).await.unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let reader = read_slowly(slow, SIZE);

    // The fast reader, meanwhile, over TLS too: the whole answer.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut fast = connector.connect(name, tcp).await.unwrap();
    fast.write_all(b"GET /fast HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut whole = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), fast.read_to_end(&mut whole))
        .await
        .expect("the fast reader's answer ends")
        .unwrap();
    assert_whole_answer(&whole, SIZE);

    assert_reset_by_send_rate(&gw, reader, &mut written, SIZE).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "closed by the minimum rate, not the idle timeout"
    );
    let event = gw
        .wait_for_audit(|e| e["path"] == "/slow", Duration::from_secs(5))
        .expect("the cut-off answer is audited");
    assert_eq!(event["status"], 200, "{event}");
    assert_eq!(event["tls"], true, "{event}");
    assert_eq!(event["response_complete"], false, "{event}");
    // The gateway is healthy: a new TLS connection is served (its head read only — reading
    // the whole 32 MiB answer on a busy machine could itself fall under the minimum rate).
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut head))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}
