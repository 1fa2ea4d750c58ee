//! Hitless reload: traffic keeps flowing — HTTP/1.1 keep-alive, h2, an open WebSocket, a TLS
//! connection — while routes, upstreams and certificates change many times.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn config(pki_cert: &CertFiles, a: &str, b: &str, ws: &str, generation: usize) -> String {
    // Every generation: a new route, the stable route pointing at a different pool order, and
    // the certificate given by the caller.
    let targets = if generation.is_multiple_of(2) {
        format!("\"{a}\", \"{b}\"")
    } else {
        format!("\"{b}\"")
    };
    format!(
        r#"listeners:
  - {{ name: public, address: "127.0.0.1:0" }}
  - name: secure
    address: "127.0.0.1:0"
    tls: {{ certificates: [ {{ cert_file: "{}", key_file: "{}" }} ] }}
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  pool: {{ targets: [{targets}] }}
  ws: {{ targets: ["{ws}"] }}
routes:
  - {{ name: stable, match: {{ prefix: /stable }}, upstream: pool }}
  - {{ name: chat, match: {{ path: /chat }}, upstream: ws, websocket: true }}
  - {{ name: gen{generation}, match: {{ path: /gen{generation} }}, upstream: pool }}
"#,
        pki_cert.cert_path.display(),
        pki_cert.key_path.display()
    )
}

async fn reload(admin: &str) -> Resp {
    send(req("POST", &format!("{admin}/reload"), &[], "")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_load_lose_nothing() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let ws = WsUpstream::start().await;
    let pki = TestPki::new();
    let cert0 = pki.issue_server(&["localhost"]);
    let gw = Gateway::start(bin(), &config(&cert0, &a.url(), &b.url(), &ws.url(), 0)).unwrap();
    let base = gw.url("public");
    let admin = gw.admin_url();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));

    // HTTP/1.1 keep-alive and h2c clients, each reusing its connections.
    let mut tasks = Vec::new();
    for h2 in [false, true] {
        let (stop, errors, done, base) = (stop.clone(), errors.clone(), done.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new())
                .http2_only(h2)
                .build_http::<Full<Bytes>>();
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .request(req("GET", &format!("{base}/stable/x"), &[], ""))
                    .await;
                match r {
                    Ok(resp) if resp.status() == 200 => {
                        let _ = resp.into_body().collect().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!(
                            "request failed during reload: {:?}",
                            other.map(|r| r.status())
                        );
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // An open WebSocket.
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.listener("public")))
            .await
            .unwrap();
    // A TLS connection opened before any rotation.
    let ca = pki.ca_pem();
    let secure = gw.listener("secure");
    let (_, first_seen) = send_tls(
        secure,
        "localhost",
        &ca,
        &[b"http/1.1"],
        req("GET", "/stable/tls", &[("host", "localhost")], ""),
    )
    .await
    .unwrap();
    assert_eq!(first_seen.peer_cert_der, cert0.cert_der);

    let mut last_cert = cert0.clone();
    for generation in 1..=12 {
        last_cert = pki.issue_server(&["localhost"]);
        std::fs::write(
            gw.config_path(),
            config(&last_cert, &a.url(), &b.url(), &ws.url(), generation),
        )
        .unwrap();
        let r = reload(&admin).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // The new route serves at once; the previous generation's is gone.
        assert_eq!(get(&format!("{base}/gen{generation}")).await.status, 200);
        assert_eq!(
            get(&format!("{base}/gen{}", generation - 1)).await.status,
            404
        );
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(format!(
                "gen {generation}"
            )))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            echoed.into_text().unwrap().as_str(),
            format!("gen {generation}")
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(
        done.load(Ordering::Relaxed) > 20,
        "traffic flowed: {}",
        done.load(Ordering::Relaxed)
    );
    // New TLS connections see the rotated certificate.
    let (r, seen) = send_tls(
        secure,
        "localhost",
        &ca,
        &[b"h2"],
        req("GET", "https://localhost/stable/x", &[], ""),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(seen.peer_cert_der, last_cert.cert_der);
    // Upstream change took effect: the odd generations route only to b.
    assert!(b.hits() > 0 && a.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_survives_certificate_rotation() {
    let pki = TestPki::new();
    let a = TestUpstream::start("a").await;
    let ws = WsUpstream::start().await;
    let cert0 = pki.issue_server(&["localhost"]);
    let gw = Gateway::start(bin(), &config(&cert0, &a.url(), &a.url(), &ws.url(), 0)).unwrap();
    // One h2 connection held open across the rotation.
    let ca = pki.ca_pem();
    let tcp = tokio::net::TcpStream::connect(gw.listener("secure"))
        .await
        .unwrap();
    let cfg = portcullis_test_support::client::client_config(
        &ca,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &[b"h2"],
    );
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let one = |sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>| {
        sender.send_request(req("GET", "https://localhost/stable/held", &[], ""))
    };
    assert_eq!(one(&mut sender).await.unwrap().status(), 200);

    let cert1 = pki.issue_server(&["localhost"]);
    std::fs::write(
        gw.config_path(),
        config(&cert1, &a.url(), &a.url(), &ws.url(), 1),
    )
    .unwrap();
    assert_eq!(reload(&gw.admin_url()).await.status, 200);
    // The held connection goes on, under the new routes.
    assert_eq!(one(&mut sender).await.unwrap().status(), 200);
    let r = sender
        .send_request(req("GET", "https://localhost/gen1", &[], ""))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_reports_a_refused_reload() {
    let gw = gateway(
        "upstreams: { d: { kind: echo } }\nroutes:\n  - { name: r, match: { path: /r }, upstream: d }\n",
    );
    let good = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        good.replace("upstream: d", "upstream: ghost"),
    )
    .unwrap();
    let r = reload(&gw.admin_url()).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let v = r.json();
    assert_eq!(v["code"], "admin_reload_failed", "{v}");
    assert!(
        v["request_id"].as_str().is_some_and(|id| id.len() == 32)
            && r.header("x-request-id") == v["request_id"].as_str(),
        "{v}"
    );
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("routes[0].upstream"),
        "{v}"
    );
    assert_eq!(get(&format!("{}/r", gw.url("public"))).await.status, 200);
    // Keys that need a restart are refused, not taken silently.
    std::fs::write(
        gw.config_path(),
        format!("{good}logging: {{ level: debug }}\naudit: {{ output: stderr }}\n"),
    )
    .unwrap();
    let r = reload(&gw.admin_url()).await;
    assert_eq!(r.status, 422);
    let errors = r.json()["errors"].to_string();
    assert!(
        errors.contains("logging: changing the log format or level needs a restart")
            && errors.contains("audit: changing where audit events go needs a restart"),
        "{errors}"
    );
    // And with them, every other error the new file has: here an introspection CA bundle
    // that holds no certificate, found only when its client is made. Before, the restart
    // errors came alone.
    let dir = gw.config_path().parent().unwrap().to_path_buf();
    std::fs::write(dir.join("empty-ca.pem"), "not a certificate\n").unwrap();
    std::fs::write(
        gw.config_path(),
        format!(
            "{}logging: {{ level: debug }}\nauth:\n  introspection:\n    idp: {{ endpoint: \"https://idp.example/introspect\", client_id: gw, client_secret: {{ value: s }}, ca_file: empty-ca.pem }}\n",
            good.replace("upstream: d }", "upstream: d, auth: { anonymous: true } }")
        ),
    )
    .unwrap();
    let r = reload(&gw.admin_url()).await;
    assert_eq!(r.status, 422);
    let v = r.json();
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("logging: changing the log format or level needs a restart")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("auth.introspection.idp: CA bundle holds no certificate")),
        "{errors:?}"
    );
    assert_eq!(get(&format!("{}/r", gw.url("public"))).await.status, 200);
    let r = get(&format!("{}/reload", gw.admin_url())).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
}

/// A reload refused while building (here: an introspection CA bundle without a certificate,
/// found only when its client is made) leaves the process-wide authentication state as it
/// was: the internal-token key `/jwks` publishes (the refused file asked for another
/// algorithm), and the snapshot the admin API reports. Before, both had changed already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_changes_no_authentication_state() {
    let gw = gateway(
        "auth:\n  internal_token: { algorithm: EdDSA }\n  api_keys: { keys: [] }\nupstreams: { d: { kind: echo } }\nroutes:\n  - { name: r, match: { path: /r }, upstream: d, auth: { anonymous: true } }\n",
    );
    let jwks_url = format!("{}/jwks", gw.admin_url());
    let jwks = || get(&jwks_url);
    let before = jwks().await.json();
    assert_eq!(before["keys"][0]["crv"], "Ed25519", "{before}");
    let auth_before = get(&format!("{}/auth", gw.admin_url())).await.json();
    let good = std::fs::read_to_string(gw.config_path()).unwrap();
    let dir = gw.config_path().parent().unwrap().to_path_buf();
    std::fs::write(dir.join("empty-ca.pem"), "not a certificate\n").unwrap();
    std::fs::write(
        gw.config_path(),
        good.replace(
            "  internal_token: { algorithm: EdDSA }\n",
            "  internal_token: { algorithm: ES256 }\n  introspection:\n    idp: { endpoint: \"https://idp.example/introspect\", client_id: gw, client_secret: { value: s }, ca_file: empty-ca.pem }\n",
        ),
    )
    .unwrap();
    let r = reload(&gw.admin_url()).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("auth.introspection.idp"), "{}", r.text());
    assert_eq!(
        jwks().await.json(),
        before,
        "the refused key is not published"
    );
    let auth_after = get(&format!("{}/auth", gw.admin_url())).await.json();
    assert_eq!(auth_after["issuers"], auth_before["issuers"]);
    assert_eq!(get(&format!("{}/r", gw.url("public"))).await.status, 200);
    // A reload that does change the key: the new one is published, and the old one too
    // while tokens it signed may live (its ttl and a grace minute).
    std::fs::write(
        gw.config_path(),
        good.replace("algorithm: EdDSA", "algorithm: ES256"),
    )
    .unwrap();
    assert_eq!(reload(&gw.admin_url()).await.status, 200);
    let after = jwks().await.json();
    let keys = after["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{after}");
    assert_eq!(keys[0]["crv"], "P-256", "{after}");
    assert_eq!(keys[1], before["keys"][0], "{after}");
    assert_ne!(keys[0]["kid"], keys[1]["kid"]);
    // Changed again at once: every key that may still have live tokens stays published.
    std::fs::write(gw.config_path(), &good).unwrap();
    assert_eq!(reload(&gw.admin_url()).await.status, 200);
    let again = jwks().await.json();
    let keys = again["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3, "{again}");
    assert_eq!(keys[0]["crv"], "Ed25519", "{again}");
    assert_eq!(keys[1], after["keys"][0], "{again}");
    assert_eq!(keys[2], before["keys"][0], "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_by_itself() {
    let gw = gateway(
        "upstreams: { d: { kind: echo } }\nroutes:\n  - { name: r, match: { path: /r }, upstream: d }\n",
    );
    let good = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(gw.config_path(), good.replace("path: /r", "path: /watched")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(&format!("{}/watched", gw.url("public"))).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw.stderr_text().contains("file change"));
}

/// A reload refused because of a Rego module the new file names for the first time (broken):
/// that module is watched from then on, so saving it fixed reloads by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_new_policy_file_is_watched_until_fixed() {
    let gw = gateway(
        "upstreams: { d: { kind: echo } }\nroutes:\n  - { name: r, match: { path: /r }, upstream: d }\n",
    );
    let dir = gw.config_path().parent().unwrap().to_path_buf();
    std::fs::write(dir.join("p.rego"), "package gw\nthis is not rego\n").unwrap();
    let good = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        format!(
            "{}authz: {{ rego: {{ files: [p.rego] }} }}\n",
            good.replace("path: /r", "path: /watched")
        ),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw.stderr_text().contains("reload refused") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&format!("{}/watched", gw.url("public"))).await.status,
        404
    );
    std::fs::write(
        dir.join("p.rego"),
        "package gw\nimport rego.v1\nallow if true\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(&format!("{}/watched", gw.url("public"))).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new OpenAPI document that references a file not written yet makes the reload fail; the
/// file it names is watched from then on, and writing it reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_a_new_document_references_is_watched_until_it_exists() {
    let gw = gateway(
        "upstreams: { d: { kind: echo } }\nroutes:\n  - { name: r, match: { path: /r }, upstream: d }\n",
    );
    let dir = gw.config_path().parent().unwrap().to_path_buf();
    std::fs::write(
        dir.join("api.yaml"),
        "openapi: 3.0.3\ninfo: { title: t, version: '1' }\npaths:\n  /things:\n    get:\n      responses:\n        '200': { $ref: 'parts/ok.yaml' }\n",
    )
    .unwrap();
    let good = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        format!(
            "{good}  - {{ name: api, match: {{ prefix: /api }}, upstream: d, openapi: {{ spec: api.yaml }} }}\n"
        ),
    )
    .unwrap();
    // Refused, and settled: no reload of its own comes after (the watcher looks every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let refusals = || gw.stderr_text().matches("reload refused").count();
    let (mut seen, mut since) = (0, std::time::Instant::now());
    while seen == 0 || since.elapsed() < Duration::from_millis(3500) {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        if refusals() != seen {
            (seen, since) = (refusals(), std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&format!("{}/api/things", gw.url("public")))
            .await
            .status,
        404
    );
    std::fs::create_dir(dir.join("parts")).unwrap();
    std::fs::write(dir.join("parts/ok.yaml"), "description: ok\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(&format!("{}/api/things", gw.url("public")))
        .await
        .status
        != 200
    {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A listener's certificate and key rotated on disk (cert-manager, a Kubernetes Secret) reach
/// new handshakes without a signal; a rotation caught half done — the certificate new, the key
/// not yet — is refused, and applied once the key follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_on_disk_are_picked_up() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = pki.issue_server(&["localhost"]);
    std::fs::copy(&first.cert_path, &cert).unwrap();
    std::fs::copy(&first.key_path, &key).unwrap();
    let gw = Gateway::start_in(
        bin(),
        dir.path(),
        "listeners:\n  - name: secure\n    address: \"127.0.0.1:0\"\n    tls: { certificates: [ { cert_file: tls.crt, key_file: tls.key } ] }\n\
         admin: { address: \"127.0.0.1:0\" }\nupstreams: { d: { kind: echo } }\nroutes:\n  - { name: r, match: { prefix: / }, upstream: d }\n",
    )
    .unwrap();
    let ca = pki.ca_pem();
    let presented = || async {
        let (r, seen) = send_tls(
            gw.listener("secure"),
            "localhost",
            &ca,
            &[b"http/1.1"],
            req("GET", "/x", &[("host", "localhost")], ""),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        seen.peer_cert_der
    };
    assert_eq!(presented().await, first.cert_der);

    let second = pki.issue_server(&["localhost"]);
    std::fs::copy(&second.cert_path, &cert).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw.stderr_text().contains("reload refused") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        presented().await,
        first.cert_der,
        "the running certificate stays"
    );
    std::fs::copy(&second.key_path, &key).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while presented().await != second.cert_der {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the public listener refuses connections (the test fails past 10 s).
async fn public_listener_closed(gw: &Gateway) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(gw.listener("public"))
        .await
        .is_ok()
    {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_then_stops() {
    let mut up = HeldUpstream::start().await;
    let mut gw = gateway(&format!(
        "upstreams: {{ s: {{ targets: [\"{}\"] }} }}\nroutes:\n  - {{ name: s, match: {{ prefix: /held }}, upstream: s }}\n",
        up.url()
    ));
    let url = format!("{}/held", gw.url("public"));
    let pending = tokio::spawn(async move { get(&url).await });
    assert_eq!(up.next_arrival().await, "/held");
    gw.signal("TERM");
    // New connections are no longer accepted once the listener closes …
    public_listener_closed(&gw).await;
    // … while the request in flight (its upstream holds it until now) completes.
    up.release();
    assert_eq!(pending.await.unwrap().status, 200);
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
}

/// A stop does not cut an open WebSocket off: the drain waits for it, and both sides are
/// sent a Close frame (1001, "going away") — the client's and the upstream's — before the
/// gateway exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_open_websockets_with_going_away() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let ws = WsUpstream::start().await;
    let mut gw = gateway(&format!(
        "server: {{ drain_timeout: 10s }}
upstreams: {{ ws: {{ targets: [\"{}\"] }} }}
routes:\n  - {{ name: chat, match: {{ path: /chat }}, upstream: ws, websocket: true }}\n",
        ws.url()
    ));
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.listener("public")))
            .await
            .unwrap();
    socket.send(Message::text("hello")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello");

    gw.signal("TERM");
    let closing = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("a Close frame before the drain's end")
        .unwrap()
        .unwrap();
    let Message::Close(Some(frame)) = closing else {
        panic!("{closing:?}");
    };
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason.as_str(), "the gateway is stopping");
    // The upstream was told as well.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let told = ws
            .received()
            .iter()
            .any(|m| matches!(m, Message::Close(Some(f)) if f.code == CloseCode::Away));
        if told {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", ws.received());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client answers the Close; the tunnel ends and the gateway with it, long before the
    // drain's deadline would cut it off.
    let _ = socket.close(None).await;
    assert_eq!(gw.wait_exit(Duration::from_secs(8)), Some(0));
}

/// A GET sent from a task of its own (over HTTP/2 with prior knowledge when `h2`), for a
/// request that is to be held while the test goes on.
fn spawn_get(
    url: String,
    h2: bool,
) -> tokio::task::JoinHandle<
    Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
> {
    tokio::spawn(async move {
        Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build_http::<Full<Bytes>>()
            .request(req("GET", &url, &[], ""))
            .await
    })
}

/// The gateway with `server.drain_timeout: drain` and a route `/slow` to a silent upstream
/// (which the gateway waits on for longer than any test runs); the upstream's address and
/// reports.
async fn draining_before_silent(
    drain: &str,
) -> (
    Gateway,
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (silent, reports) = silent_upstream().await;
    let gw = gateway(&format!(
        "server: {{ drain_timeout: {drain} }}\n\
         upstreams: {{ silent: {{ targets: [\"http://{silent}\"], request_timeout: 300s }} }}\n\
         routes:\n  - {{ name: slow, match: {{ prefix: /slow }}, upstream: silent }}\n"
    ));
    (gw, silent, reports)
}

/// Past `server.drain_timeout`, a stop does not wait for requests any longer: their
/// connections are closed without an answer, the upstream exchanges are given up, and each
/// request is still audited (outcome `interrupted`, status 444) — over the HTTP/1.1 front and
/// over HTTP/2 (hyper's streams run as tasks of their own) alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_drain_deadline_cuts_requests_off_and_audits_them() {
    let (mut gw, silent_addr, mut events) = draining_before_silent("300ms").await;
    let base = gw.url("public");
    let h1 = spawn_get(format!("{base}/slow/h1"), false);
    let h2 = spawn_get(format!("{base}/slow/h2"), true);
    let mut heads = vec![
        next_report(&mut events).await,
        next_report(&mut events).await,
    ];
    heads.sort();
    assert_eq!(heads, ["GET /slow/h1 HTTP/1.1", "GET /slow/h2 HTTP/1.1"]);

    let stopped = std::time::Instant::now();
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    // Well before the upstream's 300 s request timeout: the deadline cut the requests off.
    assert!(stopped.elapsed() < Duration::from_secs(15));
    // Neither client got an answer; both upstream exchanges were given up.
    assert!(h1.await.unwrap().is_err(), "no answer over HTTP/1.1");
    assert!(h2.await.unwrap().is_err(), "no answer over HTTP/2");
    for _ in 0..2 {
        assert_eq!(next_report(&mut events).await, "closed");
    }
    for path in ["/slow/h1", "/slow/h2"] {
        let event = gw
            .audit_events()
            .into_iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path} is audited: {:#?}", gw.audit_events()));
        assert_eq!(event["outcome"], "interrupted", "{event}");
        assert_eq!(event["status"], 444, "{event}");
        assert_eq!(event["route"], "slow", "{event}");
        assert_eq!(event["upstream"], "silent", "{event}");
        // Where the request went, although no answer came back.
        assert_eq!(event["target"], silent_addr.to_string(), "{event}");
    }
    let logs = gw.stderr_text();
    assert!(
        logs.contains("connections still open after the drain timeout"),
        "{logs}"
    );
    assert!(logs.contains("portcullis stopped"), "{logs}");
}

/// A second stop signal during the drain stops at once: the request still in flight is cut
/// off (and audited as interrupted) without waiting out a long `server.drain_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_cuts_the_drain_short() {
    let (mut gw, _, mut reports) = draining_before_silent("120s").await;
    let pending = spawn_get(format!("{}/slow/held", gw.url("public")), false);
    assert_eq!(next_report(&mut reports).await, "GET /slow/held HTTP/1.1");
    gw.signal("TERM");
    // The first signal is taken once the listener is closed; the request is still held.
    public_listener_closed(&gw).await;
    assert_eq!(gw.wait_exit(Duration::from_millis(300)), None, "draining");
    gw.signal("INT");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(pending.await.unwrap().is_err(), "no answer");
    assert_eq!(next_report(&mut reports).await, "closed");
    let event = gw
        .audit_events()
        .into_iter()
        .find(|e| e["path"] == "/slow/held")
        .unwrap_or_else(|| panic!("audited: {:#?}", gw.audit_events()));
    assert_eq!(event["outcome"], "interrupted", "{event}");
    assert_eq!(event["status"], 444, "{event}");
    assert!(gw.stderr_text().contains("stopping at once"));
}

/// With `server.stop_delay`, a stop first only makes the gateway not ready (`/readyz` 503,
/// reason `stopping`) while it goes on accepting and serving, so that a load balancer can take
/// it out before its listeners close; a second signal starts the drain at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_delay_keeps_serving_while_not_ready() {
    let mut gw = gateway(
        "server: { stop_delay: 120s }\n\
         upstreams: { d: { kind: echo } }\n\
         routes:\n  - { name: all, match: { prefix: / }, upstream: d }\n",
    );
    let readyz = format!("{}/readyz", gw.admin_url());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(&readyz).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.signal("TERM");
    loop {
        let r = get(&readyz).await;
        if r.status == 503 {
            assert_eq!(r.json()["reason"], "stopping", "{}", r.text());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still accepting and serving, on new connections too.
    for _ in 0..3 {
        assert_eq!(call_public(&gw, "GET", "/still", &[]).await.status, 200);
    }
    assert_eq!(gw.wait_exit(Duration::from_millis(200)), None);
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        gw.stderr_text().contains("stop delay"),
        "{}",
        gw.stderr_text()
    );
}

/// A reload is built on a blocking thread, never on a thread that serves requests: with
/// `--threads 1` a reload held up while it builds (here by a Rego module that is a FIFO with
/// a writer that has not written yet) must not hold up requests — asked by SIGHUP, then by the
/// admin API.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_served_while_a_reload_is_built() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;

    let dir = tempfile::tempdir().unwrap();
    let base = "listeners:\n  - { name: public, address: \"127.0.0.1:0\" }\nadmin: { address: \"127.0.0.1:0\" }\nupstreams: { d: { kind: echo } }\nroutes:\n  - { name: r, match: { path: /r }, upstream: d }\n";
    let gw =
        Gateway::start_in_with(bin(), dir.path(), base, &["--threads", "1", "--no-watch"]).unwrap();
    let fifo = dir.path().join("p.rego");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let url = gw.url("public");
    for (i, trigger) in ["SIGHUP", "admin API"].into_iter().enumerate() {
        std::fs::write(
            gw.config_path(),
            format!(
                "{base}  - {{ name: new, match: {{ path: /new{i} }}, upstream: d }}\nauthz: {{ rego: {{ files: [p.rego] }} }}\n"
            ),
        )
        .unwrap();
        let asked = if i == 0 {
            gw.signal("HUP");
            None
        } else {
            let admin = gw.admin_url();
            Some(tokio::spawn(async move { reload(&admin).await }))
        };
        // A non-blocking open for writing succeeds once the reload has the FIFO open for
        // reading; holding it open without writing keeps the reload waiting in its read.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut writer = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(O_NONBLOCK)
                .open(&fifo)
            {
                Ok(f) => break f,
                Err(_) => {
                    assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let served = tokio::time::timeout(Duration::from_secs(10), get(&format!("{url}/r"))).await;
        assert_eq!(
            served.map(|r| r.status.as_u16()).ok(),
            Some(200),
            "a request waited for the reload asked by {trigger}"
        );
        writer
            .write_all(b"package gw\nimport rego.v1\nallow if true\n")
            .unwrap();
        drop(writer);
        if let Some(asked) = asked {
            assert_eq!(asked.await.unwrap().status, 200);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while get(&format!("{url}/new{i}")).await.status != 200 {
            assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
