//! Operators' view: admin API, metrics, audit trail, reload, and stopping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const APP: &str = "upstreams: { demo: { kind: echo } }\nroutes:\n  - { name: hello, match: { path: /hello }, upstream: demo }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_config() {
    // Written whole: `gateway` adds an `admin` of its own, and a key written twice is refused.
    let gw = Gateway::start(
        bin(),
        &format!(
            "listeners:\n  - {{ name: public, address: \"127.0.0.1:0\" }}\n\
             admin: {{ address: \"127.0.0.1:0\", token: {{ value: not-for-your-eyes }} }}\n\
             rate_limits: {{ store: redis, redis: {{ url: \"redis://gw:not-for-your-eyes@127.0.0.1:1\" }} }}\n{}",
            APP.replace(
                "upstream: demo }",
                "upstream: demo, request_headers: { set: { authorization: not-for-your-eyes } } }"
            )
        ),
    )
    .unwrap();
    let admin = gw.admin_url();
    assert_eq!(get(&format!("{admin}/healthz")).await.status, 200);
    let r = get(&format!("{admin}/readyz")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ready");

    // Protected endpoints want the token.
    let r = get(&format!("{admin}/metrics")).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let auth = [("authorization", "Bearer not-for-your-eyes")];

    get(&format!("{}/hello", gw.url("public"))).await;
    get(&format!("{}/nope", gw.url("public"))).await;
    let m = send(req("GET", &format!("{admin}/metrics"), &auth, ""))
        .await
        .text();
    for want in [
        "portcullis_requests_total{route=\"hello\",status=\"200\"} 1",
        "portcullis_requests_total{route=\"\",status=\"404\"} 1",
        "portcullis_rejections_total{stage=\"route\",reason=\"route_not_found\"} 1",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_active_connections",
    ] {
        assert!(m.contains(want), "missing {want} in\n{m}");
    }

    let c = send(req("GET", &format!("{admin}/config"), &auth, "")).await;
    assert_eq!(c.status, 200);
    let text = c.text();
    // The token, a URL's password and a credential header's value are hidden.
    assert!(!text.contains("not-for-your-eyes"), "{text}");
    let shown = c.json();
    assert_eq!(shown["admin"]["token"]["value"], "<redacted>");
    assert_eq!(
        shown["rate_limits"]["redis"]["url"],
        "redis://gw:<redacted>@127.0.0.1:1"
    );
    assert_eq!(
        shown["routes"][0]["request_headers"]["set"]["authorization"],
        "<redacted>"
    );
    assert_eq!(c.json()["routes"][0]["name"], "hello");
    assert!(!gw.stderr_text().contains("not-for-your-eyes"));
}

/// The admin API reads request heads with the gateway's strict framing reader: a head hyper
/// would answer with a bare status line, or one whose body two readers could frame
/// differently, gets the API's problem document with a request id, and the connection
/// closes; nothing of it is acted on (a smuggled `POST /reload` reloads nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_admin_requests_get_problem_documents() {
    let gw = gateway(APP);
    let admin = gw.admin();
    let large = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nA: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let fields: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
    for (raw, status, code) in [
        (
            "GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_string(),
            400,
            "admin_bad_request",
        ),
        (
            "POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_string(),
            400,
            "admin_bad_request",
        ),
        (
            "GET /healthz HTTP/1.1\nHost: x\n\n".to_string(),
            400,
            "admin_bad_request",
        ),
        (large, 431, "admin_headers_too_large"),
        (many, 431, "admin_too_many_headers"),
    ] {
        let (out, closed) = raw_exchange(admin, raw.as_bytes()).await;
        assert!(closed, "{code}: {out}");
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")),
            "{code}: {out}"
        );
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("content-type: application/problem+json"),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("no request id: {head}"));
        let doc: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(doc["code"], code, "{doc}");
        assert_eq!(doc["status"], status, "{doc}");
        assert_eq!(
            doc["type"],
            format!("urn:portcullis:problem:{code}"),
            "{doc}"
        );
        assert_eq!(doc["request_id"], id, "{doc}");
    }
    // The reader follows no head after one asking for an upgrade: the connection ends with
    // its answer, and the smuggled head behind it is never read.
    let (out, closed) = raw_exchange(
        admin,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n\
          POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(closed, "{out}");
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    let admin_url = gw.admin_url();
    let m = get(&format!("{admin_url}/metrics")).await.text();
    assert!(!m.contains("portcullis_config_reloads_total"), "{m}");
    assert_eq!(get(&format!("{admin_url}/healthz")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_upstream_hosts_to_resolve() {
    let gw = gateway(
        "upstreams: { far: { targets: [\"http://no-such-host.invalid:80\"] } }\nroutes:\n  - { name: far, match: { prefix: / }, upstream: far }\n",
    );
    // Not ready from the start; once the lookup has failed (which may take
    // the resolver's own timeout on a machine without DNS), the reason names
    // the host. It never turns ready.
    let mut named = false;
    for _ in 0..200 {
        let r = get(&format!("{}/readyz", gw.admin_url())).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.json()["status"], "not_ready");
        if r.json()["reason"]
            .as_str()
            .unwrap()
            .contains("no-such-host.invalid")
        {
            named = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        named,
        "the readiness reason never named the unresolvable host"
    );
    assert_eq!(
        get(&format!("{}/healthz", gw.admin_url())).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_audited_without_credentials() {
    let gw = gateway(APP);
    let base = gw.url("public");
    let secret_headers = [
        ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.secret-token"),
        ("cookie", "session=very-secret-cookie"),
        ("user-agent", "audit-test/1.0"),
    ];
    let ok = send(req(
        "GET",
        &format!("{base}/hello?api_key=query-secret"),
        &secret_headers,
        "",
    ))
    .await;
    let denied = send(req(
        "GET",
        &format!("{base}/elsewhere"),
        &secret_headers,
        "",
    ))
    .await;
    let ok_id = ok.header("x-request-id").unwrap();
    let denied_id = denied.header("x-request-id").unwrap();
    let a = audit_of(&gw, ok_id);
    assert_eq!(a["outcome"], "allowed");
    assert_eq!(a["route"], "hello");
    assert_eq!(a["status"], 200);
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/hello");
    assert_eq!(a["client_ip"], "127.0.0.1");
    assert_eq!(a["user_agent"], "audit-test/1.0");
    assert!(a["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(a["duration_ms"].as_f64().unwrap() >= a["latency_ms"].as_f64().unwrap());
    assert!(a["time"].as_str().unwrap().ends_with('Z'));
    // The whole answer went out: its body's bytes (the head not counted).
    assert_eq!(a["response_bytes"], ok.body.len() as u64, "{a}");
    assert!(!ok.body.is_empty());
    assert_eq!(a["response_complete"], true, "{a}");
    let d = audit_of(&gw, denied_id);
    assert_eq!(d["outcome"], "rejected");
    assert_eq!(d["reason"], "route_not_found");
    assert_eq!(d["status"], 404);
    // The problem document, whole.
    assert_eq!(d["response_bytes"], denied.body.len() as u64, "{d}");
    assert_eq!(d["response_complete"], true, "{d}");
    // A HEAD answer sends no body, and is whole.
    let head = send(req("HEAD", &format!("{base}/hello"), &[], "")).await;
    assert_eq!(head.status, 200);
    let h = audit_of(&gw, head.header("x-request-id").unwrap());
    assert_eq!(h["method"], "HEAD");
    assert_eq!(h["response_bytes"], 0, "{h}");
    assert_eq!(h["response_complete"], true, "{h}");
    let all = gw.stdout_lines().join("\n");
    for secret in ["secret-token", "very-secret-cookie", "query-secret"] {
        assert!(
            !all.contains(secret),
            "{secret} leaked into the audit trail"
        );
    }
    assert_eq!(gw.audit_events().len(), 3, "one event per request");
}

/// A User-Agent longer than the audit keeps is recorded cut to 256 bytes and marked as cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_user_agent_is_audited_cut_and_marked() {
    let gw = gateway(APP);
    let ua = format!("long-agent/{}", "u".repeat(289));
    assert_eq!(ua.len(), 300);
    let r = send(req(
        "GET",
        &format!("{}/hello", gw.url("public")),
        &[("user-agent", ua.as_str())],
        "",
    ))
    .await;
    assert_eq!(r.status, 200);
    let a = audit_of(&gw, r.header("x-request-id").unwrap());
    let got = a["user_agent"].as_str().unwrap();
    let marker = "…[truncated]";
    assert!(got.ends_with(marker), "{got}");
    assert_eq!(got.len(), 256, "{got}");
    assert!(ua.starts_with(got.strip_suffix(marker).unwrap()), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_broken_file_keeps_the_running_config() {
    let gw = gateway(APP);
    let base = gw.url("public");
    assert_problem(&get(&format!("{base}/new")).await, 404, "route_not_found");
    let listeners = "listeners:\n  - { name: public, address: \"127.0.0.1:0\" }\nadmin: { address: \"127.0.0.1:0\" }\n";
    std::fs::write(
        gw.config_path(),
        format!("{listeners}upstreams: {{ demo: {{ kind: echo }} }}\nroutes:\n  - {{ name: new, match: {{ path: /new }}, upstream: demo }}\n"),
    )
    .unwrap();
    gw.signal("HUP");
    wait_status(&format!("{base}/new"), 200).await;
    assert_problem(&get(&format!("{base}/hello")).await, 404, "route_not_found");

    // A broken file: refused, logged with its path, and the running config stays.
    std::fs::write(
        gw.config_path(),
        format!("{listeners}routes:\n  - {{ name: x, match: {{ prefix: / }}, upstream: ghost }}\n"),
    )
    .unwrap();
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gw.stderr_text().contains("reload refused") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.stderr_text().contains("routes[0].upstream"));
    assert_eq!(get(&format!("{base}/new")).await.status, 200);

    // A listener change needs a restart and is refused, not silently ignored.
    std::fs::write(
        gw.config_path(),
        "listeners:\n  - { name: renamed, address: \"127.0.0.1:0\" }\nadmin: { address: \"127.0.0.1:0\" }\nupstreams: { demo: { kind: echo } }\nroutes: []\n",
    )
    .unwrap();
    gw.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gw.stderr_text().contains("needs a restart") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.stderr_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&format!("{base}/new")).await.status, 200);
    let m = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        m.contains("portcullis_config_reloads_total{result=\"error\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
}

/// `admin.token` is hot: a reload that changes it applies at once — the old token refused, the
/// new one taken — so a leaked token is rotated without a restart. So is `admin.read_token`,
/// which reads and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_admin_token() {
    let with_token = |t: &str| {
        format!(
            "listeners:\n  - {{ name: public, address: \"127.0.0.1:0\" }}\nadmin: {{ address: \"127.0.0.1:0\", token: {{ value: {t} }}, read_token: {{ value: reader-{t} }} }}\n{APP}"
        )
    };
    let gw = Gateway::start(bin(), &with_token("old-token")).unwrap();
    let config = format!("{}/config", gw.admin_url());
    let as_ = |t: &'static str| [("authorization", t)];
    let r = send(req("GET", &config, &as_("Bearer old-token"), "")).await;
    assert_eq!(r.status, 200);
    let r = send(req("GET", &config, &as_("Bearer reader-old-token"), "")).await;
    assert_eq!(r.status, 200);
    let r = send(req(
        "POST",
        &format!("{}/reload", gw.admin_url()),
        &as_("Bearer reader-old-token"),
        "",
    ))
    .await;
    assert_problem(&r, 403, "admin_read_only");
    std::fs::write(gw.config_path(), with_token("new-token")).unwrap();
    let r = send(req(
        "POST",
        &format!("{}/reload", gw.admin_url()),
        &as_("Bearer old-token"),
        "",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(req("GET", &config, &as_("Bearer old-token"), "")).await;
    assert_eq!(r.status, 401, "the old token is refused after the reload");
    let r = send(req("GET", &config, &as_("Bearer reader-old-token"), "")).await;
    assert_eq!(r.status, 401);
    let r = send(req("GET", &config, &as_("Bearer reader-new-token"), "")).await;
    assert_eq!(r.status, 200);
    let r = send(req("GET", &config, &as_("Bearer new-token"), "")).await;
    assert_eq!(r.status, 200);
    assert!(
        !r.text().contains("new-token"),
        "the token is shown redacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_the_moment_ready_is_said_reloads_rather_than_kills() {
    // The handlers are installed before "ready" is printed: a signal sent as soon as the
    // gateway says it is ready must not meet the default action (SIGHUP's ends the process).
    for _ in 0..3 {
        let gw = gateway(APP);
        gw.signal("HUP");
        let metrics = format!("{}/metrics", gw.admin_url());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = get(&metrics).await.text();
            if m.contains("portcullis_config_reloads_total{result=\"ok\"} 1") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no reload: {m}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            get(&format!("{}/hello", gw.url("public"))).await.status,
            200
        );
    }
}

async fn wait_status(url: &str, status: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if get(url).await.status == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly() {
    let mut gw = gateway(APP);
    let r = get(&format!("{}/hello", gw.url("public"))).await;
    assert_eq!(r.status, 200);
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0));
    // The last request's audit line was written before the process ended (the reader of its
    // output, a thread of this test, may take a moment to store it).
    let id = r.header("x-request-id").unwrap();
    assert!(
        gw.wait_for_audit(|e| e["request_id"] == id, Duration::from_secs(5))
            .is_some(),
        "{:?}",
        gw.stdout_lines()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_starts_and_becomes_ready() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let certs = dir.join("certs").canonicalize().unwrap();
    let keys = dir.join("keys").canonicalize().unwrap();
    let policies = dir.join("policies").canonicalize().unwrap();
    let openapi = dir.join("openapi").canonicalize().unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Fixed demo ports become ephemeral ones; relative certificate, key and policy paths
        // absolute.
        let mut yaml = String::new();
        for line in text.lines() {
            let l = match line.find("127.0.0.1:") {
                Some(i) if line.trim_start().starts_with("address:") => {
                    format!("{}127.0.0.1:0", &line[..i])
                }
                _ => line.to_string(),
            };
            yaml.push_str(
                &l.replace("certs/", &format!("{}/", certs.display()))
                    .replace("keys/", &format!("{}/", keys.display()))
                    .replace("policies/", &format!("{}/", policies.display()))
                    .replace("openapi/", &format!("{}/", openapi.display())),
            );
            yaml.push('\n');
        }
        let gw = Gateway::start(bin(), &yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Readiness is decided by a task started with the gateway (upstream names resolved):
        // on a loaded machine it may lag the first request a little.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = get(&format!("{}/readyz", gw.admin_url())).await;
            if r.status == 200 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {}",
                path.display(),
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_go_to_stderr() {
    let gw = gateway(&format!("logging: {{ format: json, level: info }}\n{APP}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let err = gw.stderr_text();
        let started = err
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == "portcullis started");
        if let Some(v) = started {
            assert_eq!(v["level"], "INFO");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{err}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Logs never mix into stdout, which carries only start-up lines and audit events.
    assert!(
        gw.stdout_lines()
            .iter()
            .all(|l| l.starts_with("portcullis: ") || l.starts_with('{'))
    );
}
