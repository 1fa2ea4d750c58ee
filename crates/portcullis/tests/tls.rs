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
