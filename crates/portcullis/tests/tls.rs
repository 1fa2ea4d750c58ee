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

/// Random `Host` values on a route without `match.hosts` — a client's way to make the gateway
/// open (and keep) an upstream connection, a TLS handshake each, per name it sends — share one
/// upstream HTTP/2 connection: each reaches the upstream as its own host, and the gateway
/// serves on afterwards.
#[tokio::test]
async fn random_host_values_do_not_multiply_upstream_tls_connections() {
    let pki = TestPki::new();
    let cert = pki.issue_server(&["localhost"]);
    let up = TestUpstream::start_tls("secure-up", &cert).await;
    let gw = gateway(&format!(
        "upstreams:\n  up: {{ targets: [\"{}\"], tls: {{ ca_file: \"{}\" }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: up }}\n",
        up.url(),
        pki.ca_path().display()
    ));
    for i in 0..40 {
        let host = format!("h{i}.example");
        let r = call_public(&gw, "GET", "/x", &[("host", &host)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 40);
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r.version, http::Version::HTTP_2);
        assert_eq!(r.header("host"), Some(format!("h{i}.example").as_str()));
    }
    assert_eq!(up.connections(), 1, "one upstream connection for 40 hosts");
    let r = get(&format!("{}/x", gw.url("public"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.connections(), 1);
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

// ---- Client-certificate rules changed by a reload while connections stay open ----

/// A TLS listener `secure` (server certificate from `server`) asking for client certificates
/// (`mode`) from the CAs of `ca_file`; `/mtls` takes mTLS identities only, `/open` anyone;
/// `extra`: more routes (YAML list items).
fn client_auth_config(
    server: &CertFiles,
    mode: &str,
    ca_file: &std::path::Path,
    up: &TestUpstream,
    extra: &str,
) -> String {
    format!(
        r#"listeners:
  - name: secure
    address: "127.0.0.1:0"
    tls:
      certificates: [{{ cert_file: "{c}", key_file: "{k}" }}]
      client_auth: {{ mode: {mode}, ca_file: "{ca}" }}
admin: {{ address: "127.0.0.1:0" }}
server: {{ idle_timeout: 300s }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
routes:
  - {{ name: mtls, match: {{ prefix: /mtls }}, upstream: app, auth: {{ methods: [mtls] }}, authz: {{ allow: any-authenticated }} }}
  - {{ name: open, match: {{ prefix: /open }}, upstream: app, auth: {{ anonymous: true }} }}
{extra}"#,
        c = server.cert_path.display(),
        k = server.key_path.display(),
        ca = ca_file.display(),
        up = up.url()
    )
}

/// Writes `yaml` as the gateway's configuration and has it reloaded.
async fn reload_with(gw: &Gateway, yaml: &str) {
    std::fs::write(gw.config_path(), yaml).unwrap();
    let r = send(req("POST", &format!("{}/reload", gw.admin_url()), &[], "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A client configuration trusting `pki`'s CA, presenting `cert` when given, offering `h2`
/// alone or `http/1.1` alone.
fn client_cfg(pki: &TestPki, cert: Option<&CertFiles>, h2: bool) -> Arc<rustls::ClientConfig> {
    let ca = pki.ca_pem();
    let mut cfg = match cert {
        Some(c) => (*portcullis_test_support::client::client_config_with_cert(&ca, c)).clone(),
        None => (*client_config(pki, &[&rustls::version::TLS13], &[b"http/1.1"])).clone(),
    };
    cfg.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Arc::new(cfg)
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>),
}

/// One TLS connection to the gateway, kept open for several requests; `closed` ends when the
/// gateway has closed it (HTTP/1.1: an answer said `connection: close` and the gateway's side
/// then ended; HTTP/2: the gateway's `GOAWAY` ended the connection).
struct OpenConn {
    sender: Sender,
    closed: tokio::task::JoinHandle<()>,
}

impl OpenConn {
    async fn open(
        addr: std::net::SocketAddr,
        cfg: Arc<rustls::ClientConfig>,
    ) -> Result<OpenConn, String> {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use tokio::io::AsyncReadExt;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            let closed = tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(OpenConn {
                sender: Sender::H2(sender),
                closed,
            })
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            let closed = tokio::spawn(async move {
                // The client stops at an answer that says `connection: close`; the gateway's
                // side must then end too.
                if let Ok(parts) = conn.without_shutdown().await {
                    let mut io = parts.io.into_inner();
                    let mut buf = [0u8; 256];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
            });
            Ok(OpenConn {
                sender: Sender::H1(sender),
                closed,
            })
        }
    }

    async fn get(&mut self, path: &str) -> Result<Resp, String> {
        use http_body_util::BodyExt;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req("GET", path, &[("host", "localhost")], ""))
                    .await
                    .map_err(|e| e.to_string())?
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req("GET", &format!("https://localhost{path}"), &[], ""))
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
            trailers: None,
        })
    }

    /// Waits for the gateway to close the connection (bounded, so that a connection left open
    /// fails the test instead of hanging it).
    async fn closed_by_the_gateway(self) {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.closed)
            .await
            .expect("the gateway closed the connection")
            .unwrap();
    }
}

/// A CA removed from `ca_file` by a reload no longer vouches for the connections its
/// certificates opened: the next request on such a connection goes on without the
/// certificate's identity (mTLS refuses it as it refuses a missing certificate), nothing
/// reaches the upstream, and the connection ends with the answer; a new connection with the
/// certificate fails its handshake.
async fn a_removed_ca_vouches_for_no_open_connection(h2: bool) {
    let up = TestUpstream::start("app").await;
    let ca1 = TestPki::new();
    let ca2 = TestPki::new();
    let server = ca1.issue_server(&["localhost"]);
    let gw = Gateway::start(
        bin(),
        &client_auth_config(&server, "optional", &ca1.ca_path(), &up, ""),
    )
    .unwrap();
    let addr = gw.listener("secure");
    let cert = ca1.issue_client("orders", None);
    let mut conn = OpenConn::open(addr, client_cfg(&ca1, Some(&cert), h2))
        .await
        .unwrap();
    let r = conn.get("/mtls/a").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.requests().pop().unwrap().header("x-client-id"),
        Some("orders")
    );

    // CA-1 is removed: only CA-2 is trusted.
    reload_with(
        &gw,
        &client_auth_config(&server, "optional", &ca2.ca_path(), &up, ""),
    )
    .await;
    let hits = up.hits();
    let r = conn.get("/mtls/b").await.unwrap();
    let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    if !h2 {
        assert_eq!(r.header("connection"), Some("close"));
    }
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    let ev = audit_of(&gw, &id);
    assert_eq!(ev["status"], 401, "{ev}");
    assert!(ev["auth"].is_null(), "{ev}");
    conn.closed_by_the_gateway().await;

    // A new connection with the CA-1 certificate fails the handshake.
    let fresh = tls_request(
        addr,
        "localhost",
        client_cfg(&ca1, Some(&cert), h2),
        if h2 {
            req("GET", "https://localhost/mtls/c", &[], "")
        } else {
            req("GET", "/mtls/c", &[("host", "localhost")], "")
        },
    )
    .await;
    assert!(fresh.is_err(), "{:?}", fresh.map(|(r, _)| r.status));
    assert_eq!(up.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_removed_by_a_reload_vouches_for_no_open_http1_connection() {
    a_removed_ca_vouches_for_no_open_connection(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_removed_by_a_reload_vouches_for_no_open_http2_connection() {
    a_removed_ca_vouches_for_no_open_connection(true).await;
}

/// `optional` made `required` by a reload: a connection opened without a certificate before it
/// has its next request refused (421 `client_auth_changed`, before any step: nothing reaches
/// the upstream) and is closed; a new connection must present a certificate.
async fn required_now_refuses_open_connections_without_a_certificate(h2: bool) {
    let up = TestUpstream::start("app").await;
    let pki = TestPki::new();
    let server = pki.issue_server(&["localhost"]);
    let gw = Gateway::start(
        bin(),
        &client_auth_config(&server, "optional", &pki.ca_path(), &up, ""),
    )
    .unwrap();
    let addr = gw.listener("secure");
    let mut conn = OpenConn::open(addr, client_cfg(&pki, None, h2))
        .await
        .unwrap();
    let r = conn.get("/open/a").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    reload_with(
        &gw,
        &client_auth_config(&server, "required", &pki.ca_path(), &up, ""),
    )
    .await;
    let hits = up.hits();
    let r = conn.get("/open/b").await.unwrap();
    let v = assert_problem(&r, 421, "client_auth_changed");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("open a new connection"),
        "{v}"
    );
    if !h2 {
        assert_eq!(r.header("connection"), Some("close"));
    }
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["status"], 421, "{ev}");
    assert_eq!(ev["stage"], "accept", "{ev}");
    assert_eq!(ev["reason"], "client_auth_changed", "{ev}");
    assert_eq!(ev["outcome"], "rejected", "{ev}");
    conn.closed_by_the_gateway().await;
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains(
            "portcullis_rejections_total{stage=\"accept\",reason=\"client_auth_changed\"} 1"
        ),
        "{metrics}"
    );

    // New connections: none without a certificate, one with.
    // (Under TLS 1.3 the client learns of the refusal after its side of the handshake.)
    if let Ok(mut without) = OpenConn::open(addr, client_cfg(&pki, None, h2)).await {
        assert!(without.get("/open/c").await.is_err());
    }
    let cert = pki.issue_client("web", None);
    let mut with = OpenConn::open(addr, client_cfg(&pki, Some(&cert), h2))
        .await
        .unwrap();
    let r = with.get("/mtls/d").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_made_required_refuses_an_open_http1_connection_without_a_certificate() {
    required_now_refuses_open_connections_without_a_certificate(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_made_required_refuses_an_open_http2_connection_without_a_certificate() {
    required_now_refuses_open_connections_without_a_certificate(true).await;
}

/// A reload that changes nothing about client certificates — a route added, the server
/// certificate rotated — leaves open mTLS connections alone: HTTP/1.1 and HTTP/2 alike keep
/// their identity and stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_leaves_client_auth_alone_keeps_open_connections_and_identities() {
    let up = TestUpstream::start("app").await;
    let pki = TestPki::new();
    let server = pki.issue_server(&["localhost"]);
    let gw = Gateway::start(
        bin(),
        &client_auth_config(&server, "optional", &pki.ca_path(), &up, ""),
    )
    .unwrap();
    let addr = gw.listener("secure");
    let cert = pki.issue_client("orders", None);
    let mut conns = Vec::new();
    for h2 in [false, true] {
        let mut c = OpenConn::open(addr, client_cfg(&pki, Some(&cert), h2))
            .await
            .unwrap();
        let r = c.get("/mtls/a").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        conns.push(c);
    }

    let rotated = pki.issue_server(&["localhost"]);
    reload_with(
        &gw,
        &client_auth_config(
            &rotated,
            "optional",
            &pki.ca_path(),
            &up,
            "  - { name: more, match: { prefix: /more }, upstream: app, auth: { methods: [mtls] }, authz: { allow: any-authenticated } }\n",
        ),
    )
    .await;
    for c in &mut conns {
        for path in ["/mtls/b", "/more/c", "/mtls/d"] {
            let r = c.get(path).await.unwrap();
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_eq!(r.header("connection"), None, "{path}");
            assert_eq!(
                up.requests().pop().unwrap().header("x-client-id"),
                Some("orders"),
                "{path}"
            );
        }
        assert!(!c.closed.is_finished());
    }
    // The rotation took: new connections see the new server certificate.
    let (r, seen) = tls_request(
        addr,
        "localhost",
        client_cfg(&pki, Some(&cert), false),
        req("GET", "/more/e", &[("host", "localhost")], ""),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(seen.peer_cert_der, rotated.cert_der);
}

/// A keep-alive answer over TLS reaches the client whole when the client reads slower than the
/// gateway writes: what the TLS layer kept of it while the socket was full (its writes take
/// the plaintext and send the records later) is flushed after the answer. Before, the tail
/// waited in the TLS layer for a next write that a client waiting for the tail never caused,
/// until the idle timeout closed the connection with the body short of its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_answer_over_tls_arrives_whole_to_a_slower_client() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 2 * 1024 * 1024;
    let pki = TestPki::new();
    let (bulk, _written) = bulk_upstream(SIZE).await;
    let (gw, _, _) = tls_gateway(
        &pki,
        "1.2",
        &format!(
            "server: {{ idle_timeout: 3s }}\nupstreams: {{ up: {{ targets: [\"http://{bulk}\"] }} }}"
        ),
    );
    let connector = tokio_rustls::TlsConnector::from(client_config(
        &pki,
        &[&rustls::version::TLS13],
        &[b"http/1.1"],
    ));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(gw.listener("secure")).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    // The client reads slower than the gateway writes (16 KiB every 10 ms), so the socket is
    // full whenever the gateway writes, the last write too.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let body_at = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("the answer's head comes")
            .unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..body_at]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "kept alive: {head}");
    while got.len() - body_at < SIZE {
        tokio::time::sleep(Duration::from_millis(10)).await;
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    assert_eq!(
        got.len() - body_at,
        SIZE,
        "the whole body, before the idle timeout"
    );
    // And the connection carries the next request.
    tls.write_all(b"GET /again HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest)).await;
    assert!(
        rest.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&rest[..rest.len().min(200)])
    );
}

/// The TLS gateway (TLS 1.2 and up) with one route to `up`.
fn gateway_to(pki: &TestPki, up: &TestUpstream) -> Gateway {
    let upstream = format!("upstreams: {{ up: {{ targets: [\"{}\"] }} }}", up.url());
    tls_gateway(pki, "1.2", &upstream).0
}

/// Opens a TLS connection offering `alpn`, writes `writes` (each flushed, a pause after each),
/// and checks that the gateway refused the connection's opening: 400 as an HTTP/1.1 problem
/// document with its request id in `x-request-id`, `connection: close`, audited as step
/// `protocol` and `bad_request`, the connection closed. Returns the problem document and the
/// audit event.
async fn refused_opening(
    gw: &Gateway,
    pki: &TestPki,
    alpn: &[&[u8]],
    writes: &[&[u8]],
) -> (serde_json::Value, serde_json::Value) {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = client_config(pki, &[&rustls::version::TLS13], alpn);
    let tcp = tokio::net::TcpStream::connect(gw.listener("secure"))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), alpn.first().copied());
    for w in writes {
        tls.write_all(w).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = Vec::new();
    // The gateway closes the connection (whether with TLS's close_notify or not).
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400 "), "{alpn:?}: {out}");
    let lower = out.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{out}"
    );
    assert!(lower.contains("connection: close"), "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(doc["status"], 400, "{doc}");
    let id = doc["request_id"].as_str().unwrap().to_string();
    assert!(lower.contains(&format!("x-request-id: {id}")), "{out}");
    let ev = gw
        .wait_for_audit(|e| e["request_id"] == id, Duration::from_secs(5))
        .unwrap();
    assert_eq!(ev["stage"], "protocol", "{ev}");
    assert_eq!(ev["reason"], "bad_request", "{ev}");
    assert_eq!(ev["status"], 400, "{ev}");
    (doc, ev)
}

/// HTTP/2 over TLS is what ALPN chose (RFC 9113 §3.2): a client that settled on `http/1.1`, or
/// offered no protocol, and then opens with the HTTP/2 preface is refused as any malformed
/// request is (400, a problem document with its request id, audited, the connection closed),
/// not served HTTP/2; nothing reaches the upstream, and the same gateway still serves HTTP/2 to
/// a client that offered `h2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_preface_needs_alpn_to_have_chosen_h2() {
    let pki = TestPki::new();
    let up = TestUpstream::start("a").await;
    let gw = gateway_to(&pki, &up);
    let addr = gw.listener("secure");
    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let offers: [&[&[u8]]; 2] = [&[b"http/1.1"], &[]];
    for alpn in offers {
        let (_, ev) = refused_opening(&gw, &pki, alpn, &[preface]).await;
        assert_eq!(ev["method"], "PRI", "{ev}");
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream");
    // Offered `h2`: HTTP/2, to the upstream.
    let (r, seen) = send_tls(
        addr,
        "a.test",
        &pki.ca_pem(),
        &[b"h2"],
        req("GET", "https://a.test/x", &[], ""),
    )
    .await
    .unwrap();
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(up.hits(), 1);
}

/// The other way round: a connection whose ALPN chose `h2` must open with the HTTP/2 preface
/// (RFC 9113 §3.4). An HTTP/1.1 head there is refused, not served as HTTP/1.1: 400 with a
/// problem document, audited, the connection closed, nothing upstream.
#[tokio::test]
async fn an_h2_connection_must_open_with_the_preface() {
    let pki = TestPki::new();
    let up = TestUpstream::start("a").await;
    let gw = gateway_to(&pki, &up);
    let addr = gw.listener("secure");
    // Whole, and in two writes whose first is the preface's start (held back, then refused).
    let openings: [&[&[u8]]; 2] = [
        &[b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"],
        &[b"PRI * HTTP/", b"1.1\r\nHost: a.test\r\n\r\n"],
    ];
    for (writes, method) in openings.into_iter().zip(["GET", "PRI"]) {
        let (doc, ev) = refused_opening(&gw, &pki, &[b"h2"], writes).await;
        assert!(doc["detail"].as_str().unwrap().contains("ALPN h2"), "{doc}");
        assert_eq!(ev["method"], method, "{ev}");
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream");
    // HTTP/2 on the same listener still works, and HTTP/1.1 where ALPN chose it.
    for (alpn, version, request) in [
        (
            &b"h2"[..],
            http::Version::HTTP_2,
            req("GET", "https://a.test/x", &[], ""),
        ),
        (
            &b"http/1.1"[..],
            http::Version::HTTP_11,
            req("GET", "/x", &[("host", "a.test")], ""),
        ),
    ] {
        let (r, seen) = send_tls(addr, "a.test", &pki.ca_pem(), &[alpn], request)
            .await
            .unwrap();
        assert_eq!(seen.alpn.as_deref(), Some(alpn));
        assert_eq!(r.status, 200, "{alpn:?}: {:?}", r.body);
        assert_eq!(r.version, version);
    }
    assert_eq!(up.hits(), 2);
}
