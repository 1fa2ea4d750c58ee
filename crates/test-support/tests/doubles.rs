//! The test doubles answer as documented, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use portcullis_test_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn req(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// ALPN protocols a client offers.
type Offer<'a> = &'a [&'a [u8]];

/// Sends over HTTP/1.1 or h2c.
async fn over(h2: bool, r: Request<Full<Bytes>>) -> Resp {
    if h2 { send_h2c(r).await } else { send(r).await }
}

#[tokio::test]
async fn echo_over_h1_and_h2c() {
    let up = TestUpstream::start("alpha").await;
    assert_eq!(up.url(), format!("http://127.0.0.1:{}", up.addr().port()));
    assert_eq!(up.label(), "alpha");
    for (i, h2) in [false, true].into_iter().enumerate() {
        let r = over(
            h2,
            req(
                "POST",
                &format!("{}/echo/path?q=1&r=two", up.url()),
                &[("x-one", "1"), ("x-many", "a"), ("x-many", "b")],
                "hello body",
            ),
        )
        .await;
        let version = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.version, version);
        assert_eq!(r.header("x-upstream"), Some("alpha"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["upstream"], "alpha");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["uri"], "/echo/path?q=1&r=two");
        assert_eq!(v["version"], format!("{version:?}"));
        assert_eq!(v["headers"]["x-one"], "1");
        assert_eq!(v["headers"]["x-many"], serde_json::json!(["a", "b"]));
        assert_eq!(v["body"], "hello body");

        let recs = up.requests();
        assert_eq!(recs.len(), i + 1);
        let rec = &recs[i];
        assert_eq!(rec.method, "POST");
        assert_eq!(rec.uri, "/echo/path?q=1&r=two");
        assert_eq!(rec.path(), "/echo/path");
        assert_eq!(rec.version, version);
        assert_eq!(rec.header("x-one"), Some("1"));
        assert_eq!(rec.headers.get_all("x-many").iter().count(), 2);
        assert_eq!(rec.body.as_ref(), b"hello body");
    }
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn special_paths_over_h1_and_h2c() {
    let up = TestUpstream::start("special").await;
    let base = up.url();
    for h2 in [false, true] {
        let r = over(h2, req("GET", &format!("{base}/status/418"), &[], "")).await;
        assert_eq!(r.status.as_u16(), 418);
        assert_eq!(r.header("x-upstream"), Some("special"));
        assert_eq!(r.json()["uri"], "/status/418");

        let r = over(h2, req("GET", &format!("{base}/status/503"), &[], "")).await;
        assert_eq!(r.status.as_u16(), 503);

        let t = Instant::now();
        let r = over(h2, req("GET", &format!("{base}/delay/200"), &[], "")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );

        let r = over(
            h2,
            req("GET", &format!("{base}/headers/x-secret/s3cr3t"), &[], ""),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-secret"), Some("s3cr3t"));
        assert_eq!(r.header("x-upstream"), Some("special"));

        let t = Instant::now();
        let r = over(h2, req("GET", &format!("{base}/stream/5"), &[], "")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.len(), 5 * 1024);
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(r.header("x-upstream"), Some("special"));
    }
}

#[tokio::test]
async fn health_can_be_switched_and_excluded_from_hits() {
    let up = TestUpstream::start("h").await;
    let health = format!("{}/healthz", up.url());
    for h2 in [false, true] {
        up.set_healthy(true);
        let r = over(h2, req("GET", &health, &[], "")).await;
        assert_eq!(r.status, StatusCode::OK);
        up.set_healthy(false);
        let r = over(h2, req("GET", &health, &[], "")).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.header("x-upstream"), Some("h"));
    }
    send(req("GET", &format!("{}/real", up.url()), &[], "")).await;
    assert_eq!(up.hits(), 5);
    assert_eq!(up.hits_excluding("/healthz"), 1);
}

#[tokio::test]
async fn stop_closes_listener_and_open_connections() {
    let up = TestUpstream::start("s").await;
    let addr = up.addr();
    // A kept-alive connection with one exchange done.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    up.stop();
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "open connection not closed by stop()");
    let deadline = Instant::now() + Duration::from_secs(2);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after stop()");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn drop_stops_too() {
    let up = TestUpstream::start("d").await;
    let addr = up.addr();
    drop(up);
    let deadline = Instant::now() + Duration::from_secs(2);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn dead_addr_refuses() {
    let dead = dead_addr();
    assert!(dead.ip().is_loopback());
    assert!(tokio::net::TcpStream::connect(dead).await.is_err());
}

#[tokio::test]
async fn raw_http_reads_until_close() {
    let up = TestUpstream::start("raw").await;
    let out = raw_http(
        up.addr(),
        b"GET /raw HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("x-upstream: raw"), "{out}");
    assert!(out.ends_with('}'), "{out}");
    let (out, closed) = raw_exchange(up.addr(), b"NOT HTTP\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(closed);
}

#[tokio::test]
async fn tls_upstream_speaks_h2_and_http11_by_alpn() {
    let pki = TestPki::new();
    let cert = pki.issue_server(&["localhost", "127.0.0.1", "a.test"]);
    let up = TestUpstream::start_tls("secure", &cert).await;
    assert_eq!(up.url(), format!("https://localhost:{}", up.addr().port()));
    let ca = pki.ca_pem();
    let cases: [(Offer, &[u8], Version); 3] = [
        (&[b"h2", b"http/1.1"], b"h2", Version::HTTP_2),
        (&[b"http/1.1"], b"http/1.1", Version::HTTP_11),
        (&[b"h2"], b"h2", Version::HTTP_2),
    ];
    for (offer, chosen, version) in cases {
        let (r, seen) = send_tls(
            up.addr(),
            "localhost",
            &ca,
            offer,
            req("GET", "/tls?x=1", &[("host", "localhost")], ""),
        )
        .await
        .unwrap();
        assert_eq!(seen.alpn.as_deref(), Some(chosen));
        assert_eq!(seen.version, "Some(TLSv1_3)");
        assert_eq!(seen.peer_cert_der, cert.cert_der);
        assert_eq!(seen.peer_cert_sans, ["localhost", "a.test"]);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.version, version);
        assert_eq!(r.json()["uri"], "/tls?x=1");
        assert_eq!(r.json()["upstream"], "secure");
    }
    // The IP address SAN.
    let (r, _) = send_tls(
        up.addr(),
        "127.0.0.1",
        &ca,
        &[],
        req("GET", "/ip", &[("host", "127.0.0.1")], ""),
    )
    .await
    .unwrap();
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(up.hits(), 4);
    assert_eq!(up.requests()[0].version, Version::HTTP_2);

    // Names the certificate does not carry, and another CA, are refused.
    let err = send_tls(
        up.addr(),
        "b.test",
        &ca,
        &[],
        req("GET", "/", &[("host", "b.test")], ""),
    )
    .await
    .unwrap_err();
    assert!(err.contains("not valid for name \"b.test\""), "{err}");
    let err = send_tls(
        up.addr(),
        "localhost",
        &TestPki::new().ca_pem(),
        &[],
        req("GET", "/", &[("host", "localhost")], ""),
    )
    .await
    .unwrap_err();
    // Both test CAs share a subject name, so webpki reports the signature.
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn client_certificate_passes_mtls_with_spiffe_id() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let pki = TestPki::new();
    let server = pki.issue_server(&["localhost"]);
    let client = pki.issue_client("orders", Some("spiffe://example.org/ns/prod/sa/orders"));
    assert!(client.cert_path.exists() && client.key_path.exists());
    assert_ne!(client.cert_path, server.cert_path);
    assert!(client.cert_path.starts_with(pki.dir()));
    assert_eq!(
        std::fs::read_to_string(pki.ca_path()).unwrap(),
        pki.ca_pem()
    );

    let der = CertificateDer::from(client.cert_der.clone());
    let ee = webpki::EndEntityCert::try_from(&der).unwrap();
    assert_eq!(
        ee.valid_uri_names().collect::<Vec<_>>(),
        ["spiffe://example.org/ns/prod/sa/orders"]
    );

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server.cert_der.clone())],
            PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![der.clone()],
            PrivateKeyDer::from_pem_file(&client.key_path).unwrap(),
        )
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg))
            .accept(tcp)
            .await
            .unwrap();
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        tls.write_all(b"ok").await.unwrap();
        tls.shutdown().await.unwrap();
        presented
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut got = Vec::new();
    tls.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ok");
    assert_eq!(accept.await.unwrap(), client.cert_der);
}

#[tokio::test]
async fn grpc_double_echoes_with_trailers() {
    let grpc = GrpcUpstream::start().await;
    assert_eq!(grpc.url(), format!("http://{}", grpc.addr()));
    let frame = "\0\0\0\0\x05hello";
    let r = send_h2c(req(
        "POST",
        &format!("{}/pkg.Echo/Say", grpc.url()),
        &[("content-type", "application/grpc"), ("te", "trailers")],
        frame,
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.body.as_ref(), frame.as_bytes());
    let t = r.trailers.expect("trailers");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["grpc-message"], "echoed");
    assert_eq!(grpc.request_headers()[0]["te"], "trailers");

    // Not gRPC: 415, still recorded.
    let r = send_h2c(req("GET", &format!("{}/x", grpc.url()), &[], "")).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(grpc.request_headers().len(), 2);
}

#[tokio::test]
async fn websocket_echo_round_trips() {
    let ws = WsUpstream::start().await;
    assert_eq!(ws.url(), format!("http://{}", ws.addr()));
    let (mut client, resp) = ws_connect(&format!("{}/chat?room=1", ws.ws_url())).await;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let msgs = [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("world"),
    ];
    for msg in msgs {
        client.send(msg.clone()).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, msg);
    }
    client.close(None).await.unwrap();
    // The server answers the close.
    let end = tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .unwrap();
    assert!(matches!(end, None | Some(Ok(Message::Close(_)))), "{end:?}");
    assert_eq!(ws.paths(), ["/chat?room=1"]);
    let up = &ws.upgrades()[0];
    assert_eq!(up.uri, "/chat?room=1");
    assert_eq!(up.headers["upgrade"], "websocket");
    assert!(up.headers.contains_key("sec-websocket-key"));

    // Where nothing listens, the fallible variant reports the failure.
    assert!(
        try_ws_connect(&format!("ws://{}/x", dead_addr()))
            .await
            .is_err()
    );
}
