//! End to end through the real binary: protocols, routing, rewriting, headers, rejections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};

fn upstream_section(url: &str) -> String {
    format!("upstreams:\n  svc: {{ targets: [\"{url}\"] }}\n  demo: {{ kind: echo }}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_reach_the_upstream_with_verified_forwarding_headers() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "{}routes:\n  - {{ name: api, match: {{ prefix: /api }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let base = gw.url("public");
    let spoof = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=6.6.6.6"),
        ("x-request-id", "spoofed-id"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        // Other spellings, read by CGI-style backends as the gateway's fields, and the other
        // address fields backends trust.
        ("x_forwarded_for", "6.6.6.6"),
        ("x_forwarded_proto", "https"),
        ("x-forwarded_host", "evil.example"),
        ("x_request_id", "spoofed-id"),
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-port", "443"),
    ];
    let r1 = send(req("GET", &format!("{base}/api/x?q=1"), &spoof, "")).await;
    let r2 = send_h2c(req("GET", &format!("{base}/api/y"), &spoof, "")).await;
    assert_eq!(r1.status, 200);
    assert_eq!(r2.status, 200);
    assert_eq!(r2.version, http::Version::HTTP_2);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    for (rec, resp) in seen.iter().zip([&r1, &r2]) {
        let h = &rec.headers;
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        for gone in [
            "x_forwarded_for",
            "x_forwarded_proto",
            "x-forwarded_host",
            "x_request_id",
            "x-real-ip",
            "true-client-ip",
            "x-forwarded-prefix",
            "x-forwarded-port",
        ] {
            assert!(h.get(gone).is_none(), "{gone} reached the upstream");
        }
        assert!(
            h["x-forwarded-host"]
                .to_str()
                .unwrap()
                .starts_with("127.0.0.1:")
        );
        assert!(
            h["forwarded"]
                .to_str()
                .unwrap()
                .starts_with("for=127.0.0.1;proto=http;host=")
        );
        let id = h["x-request-id"].to_str().unwrap();
        assert_ne!(
            id, "spoofed-id",
            "an untrusted client's request id is not kept"
        );
        assert_eq!(resp.header("x-request-id"), Some(id));
        let tp = h["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(
            !tp.contains("00f067aa0ba902b7"),
            "the gateway is a new parent span"
        );
        assert!(
            h.get("host").is_some(),
            "HTTP/2 :authority becomes Host upstream"
        );
    }
    assert_eq!(seen[0].uri, "/api/x?q=1");
    assert_eq!(seen[1].uri, "/api/y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_and_trace_context_can_be_left_out() {
    // A gateway that adds only what a plain reverse proxy does: no request id upstream or on
    // forwarded answers, the client's trace context passed on untouched.
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server:\n  request_id: {{ upstream: false, response: false }}\n  trace_context: pass\n\
         {}routes:\n  - {{ name: api, match: {{ prefix: /api }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let base = gw.url("public");
    // A well-formed parent (`continue` would make the gateway a new span) and a state that
    // is not a W3C list (`continue` would drop it).
    let sent = [
        ("x-request-id", "client-chosen"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "not a list"),
    ];
    let r1 = send(req("GET", &format!("{base}/api/x"), &sent, "")).await;
    let r2 = send_h2c(req("GET", &format!("{base}/api/y"), &sent, "")).await;
    for r in [&r1, &r2] {
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-request-id"),
            None,
            "a forwarded answer carries no id: {:?}",
            r.headers
        );
    }
    assert_eq!(r2.version, http::Version::HTTP_2);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    for rec in &seen {
        let h = &rec.headers;
        assert!(
            h.get("x-request-id").is_none(),
            "neither the gateway's id nor the client's goes upstream: {h:?}"
        );
        assert_eq!(h["traceparent"], sent[1].1);
        assert_eq!(h["tracestate"], sent[2].1);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "the rest is unchanged");
    }
    // A malformed `traceparent` is still not passed on (the WAF takes the field on trust).
    let r = send(req(
        "GET",
        &format!("{base}/api/z"),
        &[(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )],
        "",
    ))
    .await;
    assert_eq!(r.status, 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 3);
    assert!(
        seen[2].headers.get("traceparent").is_none(),
        "{:?}",
        seen[2].headers
    );
    // The gateway still has an id of its own for each request (audit, logs) ...
    for path in ["/api/x", "/api/y"] {
        let ev = gw
            .wait_for_audit(|e| e["path"] == path, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no audit event for {path}: {:#?}", gw.audit_events()));
        let id = ev["request_id"].as_str().unwrap();
        assert_eq!(id.len(), 32, "{ev}");
        assert_ne!(id, "client-chosen");
    }
    // ... and its refusals carry it, in the header and the problem document, over both
    // protocols; nothing reached the upstream.
    let r = send(req("GET", &format!("{base}/nowhere"), &sent, "")).await;
    let v = assert_problem(&r, 404, "route_not_found");
    assert_ne!(v["request_id"], "client-chosen");
    let r = send_h2c(req("GET", &format!("{base}/nowhere"), &sent, "")).await;
    assert_problem(&r, 404, "route_not_found");
    assert_eq!(up.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_extend_the_chain_and_name_the_client() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server: {{ trusted_proxies: [127.0.0.1/32] }}\n{}routes:\n  - {{ name: api, match: {{ prefix: / }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let r = send(req(
        "GET",
        &format!("{}/x", gw.url("public")),
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "edge-123"),
            ("x-real-ip", "203.0.113.7"),
            ("x_forwarded_for", "6.6.6.6"),
        ],
        "",
    ))
    .await;
    assert_eq!(r.status, 200);
    let h = &up.requests()[0].headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    // A trusted proxy's own address field is kept; another spelling of the gateway's is not.
    assert_eq!(h["x-real-ip"], "203.0.113.7");
    assert!(h.get("x_forwarded_for").is_none());
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-request-id"], "edge-123");
    assert_eq!(r.header("x-request-id"), Some("edge-123"));
    let ev = audit_of(&gw, "edge-123");
    assert_eq!(ev["client_ip"], "203.0.113.7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_are_removed_both_ways() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "{}routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let r = send(req(
        "GET",
        &format!("{}/headers/proxy-authenticate/secret", gw.url("public")),
        &[
            ("connection", "x-internal"),
            ("x-internal", "1"),
            ("proxy-authorization", "Basic Zm9v"),
            ("te", "trailers"),
            ("x-keep", "yes"),
        ],
        "",
    ))
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers.get("proxy-authenticate").is_none(),
        "{:?}",
        r.headers
    );
    let h = &up.requests()[0].headers;
    assert!(
        h.get("x-internal").is_none(),
        "a field named by Connection is hop-by-hop"
    );
    assert!(h.get("proxy-authorization").is_none());
    assert_eq!(h["x-keep"], "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_host_path_method_and_rewrite() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        r#"{}routes:
  - name: order
    match: {{ path: "/orders/{{id}}", methods: [GET] }}
    upstream: svc
    rewrite: {{ template: "/internal/v2/orders/{{id}}" }}
    # The rewrite's escaping is under test, not the WAF (which refuses some captures by itself).
    waf: {{ mode: off }}
    request_headers:
      set: {{ x-set: "1" }}
      add: {{ x-add: "2" }}
      remove: [x-drop]
      rename: {{ x-old: x-new }}
    response_headers:
      set: {{ x-frame-options: DENY }}
      remove: [x-upstream]
  - name: strip
    match: {{ prefix: /legacy }}
    upstream: svc
    rewrite: {{ replace_prefix: "" }}
  - name: tenant
    match: {{ path: "/t/{{id}}", methods: [GET] }}
    upstream: svc
    rewrite: {{ template: "/internal/{{id}}?tenant=acme" }}
    waf: {{ mode: off }}
  - name: wild
    match: {{ hosts: ["*.example.test"], prefix: /w }}
    upstream: demo
  - name: exact-host
    match: {{ hosts: [api.example.test], prefix: /w }}
    upstream: svc
"#,
        upstream_section(&up.url())
    ));
    let base = gw.url("public");
    let r = send(req(
        "GET",
        &format!("{base}/orders/a%20b?x=1"),
        &[("x-drop", "1"), ("x-old", "o"), ("x-add", "1")],
        "",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r.headers.get("x-upstream").is_none());
    let rec = &up.requests()[0];
    assert_eq!(rec.uri, "/internal/v2/orders/a%20b?x=1");
    assert_eq!(rec.headers["x-set"], "1");
    assert_eq!(rec.headers.get_all("x-add").iter().count(), 2);
    assert!(rec.headers.get("x-drop").is_none());
    assert!(rec.headers.get("x-old").is_none());
    assert_eq!(rec.headers["x-new"], "o");

    let r = get(&format!("{base}/legacy/a/b")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.requests()[1].uri, "/a/b");

    // A captured parameter goes back escaped but for unreserved characters: delimiters it
    // held escaped cannot become a query, a path parameter or a segment upstream.
    for (path, want) in [
        (
            "/orders/x%26admin%3Dtrue",
            "/internal/v2/orders/x%26admin%3Dtrue",
        ),
        ("/orders/a%2C..%21", "/internal/v2/orders/a%2C..%21"),
        ("/orders/a%3Fb%23c", "/internal/v2/orders/a%3Fb%23c"),
        ("/orders/a+b:c@d", "/internal/v2/orders/a%2Bb%3Ac%40d"),
        ("/orders/Az09-._~", "/internal/v2/orders/Az09-._~"),
    ] {
        let r = get(&format!("{base}{path}")).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(up.requests().last().unwrap().uri, want, "{path}");
    }

    // Bytes outside ASCII in a raw request line reach the upstream percent-encoded, one
    // spelling with or without other normalisation (they were once mangled: `/cafÃ©/x`).
    for (raw, want) in [
        (
            &b"GET /legacy/caf\xc3\xa9//x HTTP/1.1\r\n"[..],
            "/caf%C3%A9/x",
        ),
        (b"GET /legacy/caf\xc3\xa9/y HTTP/1.1\r\n", "/caf%C3%A9/y"),
    ] {
        let out = raw_http(
            gw.listener("public"),
            &[raw, b"Host: a\r\nConnection: close\r\n\r\n"].concat(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert_eq!(up.requests().last().unwrap().uri, want);
    }

    // Host matching: the exact host beats the wildcard; other hosts get nothing.
    let r = send(req(
        "GET",
        &format!("{base}/w"),
        &[("host", "shop.example.test")],
        "",
    ))
    .await;
    assert_eq!(r.json()["upstream"], "echo");
    let r = send(req(
        "GET",
        &format!("{base}/w"),
        &[("host", "api.example.test")],
        "",
    ))
    .await;
    assert_eq!(r.json()["upstream"], "a");
    let hits = up.hits();
    let r = send(req(
        "GET",
        &format!("{base}/w"),
        &[("host", "example.test")],
        "",
    ))
    .await;
    assert_problem(&r, 404, "route_not_found");
    assert_eq!(up.hits(), hits);

    // The template's query parameters are the route's: the client's of the same name, in any
    // spelling a backend reads as it, never follow them; the others keep their separators.
    let r = get(&format!(
        "{base}/t/7?tenant=other&x=1&TENANT=o2;y=2&tenant%5B%5D=o3&%74enant=o4;z=3"
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tenant = up.requests().pop().unwrap();
    assert_eq!(tenant.uri, "/internal/7?tenant=acme&x=1;y=2;z=3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_a_problem_and_nothing_reaches_the_upstream() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        r#"server:
  limits: {{ max_uri_bytes: 100, max_header_count: 20, max_header_bytes: 2000, max_header_field_bytes: 1000, max_body_bytes: 64 }}
{}routes:
  - {{ name: orders, match: {{ path: "/orders/{{id}}", methods: [GET, DELETE] }}, upstream: svc }}
  - {{ name: private, match: {{ prefix: /private }}, upstream: svc, ip_filter: {{ allow: [10.0.0.0/8] }} }}
  - {{ name: upload, match: {{ prefix: /upload }}, upstream: svc, max_body_bytes: 10 }}
"#,
        upstream_section(&up.url())
    ));
    let base = gw.url("public");
    let long = format!("{base}/orders/{}", "x".repeat(120));
    let many: Vec<(String, String)> = (0..25)
        .map(|i| (format!("x-h{i}"), "v".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let big = "v".repeat(1500);
    let mid = "v".repeat(900);
    let cases: Vec<(Resp, u16, &str, &str)> = vec![
        (
            get(&format!("{base}/nowhere")).await,
            404,
            "route_not_found",
            "route",
        ),
        (
            send(req("POST", &format!("{base}/orders/1"), &[], "")).await,
            405,
            "method_not_allowed",
            "route",
        ),
        (
            get(&format!("{base}/private/x")).await,
            403,
            "ip_denied",
            "route_ip_filter",
        ),
        (get(&long).await, 414, "uri_too_long", "request_limits"),
        (
            send(req("GET", &format!("{base}/orders/1"), &many, "")).await,
            431,
            "too_many_headers",
            "request_limits",
        ),
        (
            send(req(
                "GET",
                &format!("{base}/orders/1"),
                &[("x-big", &big)],
                "",
            ))
            .await,
            431,
            "headers_too_large",
            "request_limits",
        ),
        (
            send(req(
                "GET",
                &format!("{base}/orders/1"),
                &[("x-a", &mid), ("x-b", &mid), ("x-c", &mid)],
                "",
            ))
            .await,
            431,
            "headers_too_large",
            "request_limits",
        ),
        (
            send(req(
                "POST",
                &format!("{base}/upload"),
                &[],
                "more than ten bytes",
            ))
            .await,
            413,
            "body_too_large",
            "body_limit",
        ),
        (
            get(&format!("{base}/orders/a%2Fb")).await,
            400,
            "bad_request",
            "normalize",
        ),
        (
            get(&format!("{base}/orders/..%2F..%2Fetc")).await,
            400,
            "bad_request",
            "normalize",
        ),
        (
            get(&format!("{base}/orders/..;/private/x")).await,
            400,
            "bad_request",
            "normalize",
        ),
    ];
    for (r, status, code, stage) in cases {
        let v = assert_problem(&r, status, code);
        let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
        assert_eq!(ev["outcome"], "rejected", "{ev}");
        assert_eq!(ev["stage"], stage, "{ev}");
        assert_eq!(ev["reason"], code, "{ev}");
        assert_eq!(ev["status"], status, "{ev}");
    }
    let r = send(req("POST", &format!("{base}/orders/1"), &[], "")).await;
    assert_eq!(r.header("allow"), Some("GET, DELETE"));
    assert_eq!(
        up.hits(),
        0,
        "no rejected request reached the upstream: {:?}",
        up.requests()
    );
    // Still healthy afterwards.
    assert_eq!(get(&format!("{base}/orders/1")).await.status, 200);
}

/// Card numbers and e-mail addresses in a path are masked in the audit event however the path
/// writes them: glued to a word by `_`, grouped by `.` or `+`, at an internationalised domain
/// (percent-escaped, as the normalised path writes it). The upstream gets the path as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_numbers_and_addresses_in_a_path_are_masked_in_audit() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "{}routes:\n  - {{ name: any, match: {{ prefix: / }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let base = gw.url("public");
    for (path, recorded) in [
        ("/cards/card_4111111111111111", "/cards/card_****1111"),
        (
            "/statements/4111111111111111_2024.pdf",
            "/statements/****1111_2024.pdf",
        ),
        ("/cards/4111.1111.1111.1111", "/cards/****1111"),
        ("/cards/4111+1111+1111+1111", "/cards/****1111"),
        ("/u/john.doe@ex%C3%A4mple.com", "/u/j***@ex%C3%A4mple.com"),
        ("/v/1.2.3/2024.01.15", "/v/1.2.3/2024.01.15"),
    ] {
        let r = get(&format!("{base}{path}")).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let id = r.header("x-request-id").unwrap().to_string();
        let ev = audit_of(&gw, &id);
        assert_eq!(ev["path"], recorded, "{ev}");
    }
    let seen: Vec<String> = up.requests().iter().map(|r| r.uri.to_string()).collect();
    assert!(
        seen.iter().any(|u| u == "/cards/card_4111111111111111"),
        "{seen:?}"
    );
}

/// `server.encoded_slash: keep`: a `%2F` inside a segment is passed on encoded (one segment to
/// the router, its parameter decoded, the upstream getting the escape as sent upper-cased),
/// while one that would make a dot segment or an empty one for an upstream that decodes it is
/// refused before routing, like `%5C`; nothing refused reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_can_be_kept_inside_their_segment() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server: {{ encoded_slash: keep }}
{}routes:
           - {{ name: issues, match: {{ path: \"/projects/{{id}}/issues\" }}, upstream: svc,               rewrite: {{ template: \"/v2/projects/{{id}}/issues\" }} }}
           - {{ name: public, match: {{ prefix: /public }}, upstream: svc }}
",
        upstream_section(&up.url())
    ));
    let base = gw.url("public");
    let r = get(&format!("{base}/projects/group%2fname/issues?page=2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    // The captured `id` is `group/name`: re-encoded into the rewritten path.
    assert_eq!(seen[0].uri, "/v2/projects/group%2Fname/issues?page=2");
    let ev = gw
        .wait_for_audit(|e| e["route"] == "issues", Duration::from_secs(5))
        .unwrap();
    assert_eq!(ev["path"], "/projects/group%2Fname/issues", "{ev}");

    for path in [
        "/public/..%2Fprojects/x/issues",
        "/public/%2E%2E%2Fadmin",
        "/public/a%2F%2Fb",
        "/public/%2Fetc",
        "/public/a%5Cb",
    ] {
        let r = get(&format!("{base}{path}")).await;
        let v = assert_problem(&r, 400, "bad_request");
        let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
        assert_eq!(ev["stage"], "normalize", "{path}: {ev}");
    }
    assert_eq!(up.hits(), 1, "{:?}", up.requests());
}

/// By default (`encoded_slash: reject`) any `%2F` is refused, before routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_are_refused_by_default() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "{}routes:\n  - {{ name: issues, match: {{ path: \"/projects/{{id}}/issues\" }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let r = get(&format!(
        "{}/projects/group%2Fname/issues",
        gw.url("public")
    ))
    .await;
    let v = assert_problem(&r, 400, "bad_request");
    assert_eq!(
        v["detail"], "encoded slashes (%2F, %5C) are not accepted in paths",
        "{v}"
    );
    assert_eq!(
        audit_of(&gw, v["request_id"].as_str().unwrap())["stage"],
        "normalize"
    );
    assert_eq!(up.hits(), 0);
}

/// A `;` in a path is refused by default: a server that strips path parameters (Tomcat,
/// Spring) serves `/admin;x/users` as `/admin/users`, which the gateway would have routed as a
/// segment `admin;x` (here onto the public route, past the admin route's rules). With
/// `path_semicolons: keep` it is text of its segment, but never in a dot segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semicolons_in_paths_are_refused_unless_kept() {
    let up = TestUpstream::start("a").await;
    let routes = "routes:
  - { name: admin, match: { prefix: /admin }, upstream: svc }
  - { name: public, match: { prefix: / }, upstream: svc }
";
    let gw = gateway(&format!("{}{routes}", upstream_section(&up.url())));
    let base = gw.url("public");
    for path in [
        "/admin;x/users",
        "/a;jsessionid=1",
        "/admin%3bx/users",
        "/x/..;/admin",
    ] {
        let r = get(&format!("{base}{path}")).await;
        let v = assert_problem(&r, 400, "bad_request");
        assert_eq!(
            v["detail"], "semicolons (path parameters) are not accepted in paths",
            "{path}: {v}"
        );
        let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
        assert_eq!(ev["stage"], "normalize", "{path}: {ev}");
    }
    assert_eq!(up.hits(), 0);

    let gw = gateway(&format!(
        "server: {{ path_semicolons: keep }}\n{}{routes}",
        upstream_section(&up.url())
    ));
    let base = gw.url("public");
    let r = get(&format!("{base}/a;jsessionid=1?q=1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.requests()[0].uri, "/a;jsessionid=1?q=1");
    for path in ["/x/..;/admin", "/x/.%3By/admin"] {
        let r = get(&format!("{base}{path}")).await;
        let v = assert_problem(&r, 400, "bad_request");
        assert!(v["detail"].as_str().unwrap().contains("dot segment"), "{v}");
    }
    assert_eq!(up.hits(), 1);
}

/// Route confusion by escaped reserved characters: `POST /v1/items%3Apurge` was routed as a
/// path of its own, onto the `/v1` prefix route and its rules, while the upstream (as Go,
/// Spring, Flask, Django or Express do) decoded it and ran `/v1/items:purge`. Likewise `/a{b`
/// and `/a%7Bb` were two paths to the gateway. Every spelling now takes the route of the one
/// spelling the gateway keeps, and the upstream receives that spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_spelling_of_a_path_takes_one_route_and_reaches_the_upstream_as_one_path() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        r#"{}routes:
  - name: purge
    match: {{ path: "/v1/items:purge", methods: [POST] }}
    upstream: svc
    request_headers: {{ set: {{ x-route: purge }} }}
  - name: v1
    match: {{ prefix: /v1 }}
    upstream: svc
    request_headers: {{ set: {{ x-route: v1 }} }}
  - name: brace
    match: {{ path: "/a%7Bb" }}
    upstream: svc
    request_headers: {{ set: {{ x-route: brace }} }}
"#,
        upstream_section(&up.url())
    ));
    let base = gw.url("public");
    for path in ["/v1/items%3Apurge", "/v1/items%3apurge", "/v1/items:purge"] {
        let r = send(req("POST", &format!("{base}{path}"), &[], "")).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let seen = up.requests().pop().unwrap();
        assert_eq!(
            (seen.method.as_str(), seen.uri.as_str()),
            ("POST", "/v1/items:purge"),
            "{path}"
        );
        assert_eq!(seen.headers["x-route"], "purge", "{path}");
        let ev = audit_of(&gw, r.header("x-request-id").unwrap());
        assert_eq!(ev["route"], "purge", "{path}: {ev}");
    }
    // The `http` crate takes a raw `{` in a request line (sent here byte for byte); it is
    // encoded, as its escape is written, whatever the case of its hex digits; in an
    // absolute-form target too.
    for raw in [
        &b"GET /a{b HTTP/1.1\r\n"[..],
        b"GET /a%7Bb HTTP/1.1\r\n",
        b"GET /a%7bb HTTP/1.1\r\n",
        b"GET http://a/a{b HTTP/1.1\r\n",
    ] {
        let out = raw_http(
            gw.listener("public"),
            &[raw, b"Host: a\r\nConnection: close\r\n\r\n"].concat(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let seen = up.requests().pop().unwrap();
        assert_eq!(seen.uri, "/a%7Bb", "{out}");
        assert_eq!(seen.headers["x-route"], "brace", "{out}");
    }
    assert_eq!(up.hits(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_wide_deny_list_refuses_before_routing() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server: {{ ip_filter: {{ deny: [\"127.0.0.0/8\", \"::1\"] }} }}\n{}routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    for path in ["/x", "/not-a-route"] {
        let r = get(&format!("{}{path}", gw.url("public"))).await;
        let v = assert_problem(&r, 403, "ip_denied");
        assert_eq!(
            audit_of(&gw, v["request_id"].as_str().unwrap())["stage"],
            "ip_filter"
        );
    }
    assert_eq!(up.hits(), 0);
}

/// `match.listeners`: a route reserved for some listeners (an internal one, one that demands
/// client certificates) is not there for requests that came in on another — whatever their
/// Host says; a listener-less route serves every listener; an unknown name is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_can_be_reserved_for_listeners() {
    let up = TestUpstream::start("a").await;
    let gw = Gateway::start(
        bin(),
        &format!(
            "listeners:\n  - {{ name: public, address: \"127.0.0.1:0\" }}\n  - {{ name: internal, address: \"127.0.0.1:0\" }}\nadmin: {{ address: \"127.0.0.1:0\" }}\n{}routes:\n  - {{ name: admin, match: {{ prefix: /admin, listeners: [internal] }}, upstream: svc }}\n  - {{ name: api, match: {{ prefix: /api }}, upstream: svc }}\n",
            upstream_section(&up.url())
        ),
    )
    .unwrap();
    let (public, internal) = (gw.url("public"), gw.url("internal"));
    let r = get(&format!("{public}/admin/users")).await;
    let v = assert_problem(&r, 404, "route_not_found");
    assert_eq!(
        audit_of(&gw, v["request_id"].as_str().unwrap())["listener"],
        "public"
    );
    assert_eq!(up.hits(), 0);
    assert_eq!(get(&format!("{internal}/admin/users")).await.status, 200);
    assert_eq!(get(&format!("{public}/api/x")).await.status, 200);
    assert_eq!(get(&format!("{internal}/api/x")).await.status, 200);
    assert_eq!(up.hits(), 3);

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listeners: [{ name: public, address: \"127.0.0.1:0\" }]\nupstreams: { d: { kind: echo } }\nroutes:\n  - { name: r, match: { prefix: /, listeners: [intrenal] }, upstream: d }\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("routes[0].match.listeners[0]")
            && text.contains("unknown listener \"intrenal\" (known: public)"),
        "{text}"
    );
}

/// A path a template route takes whose captured segment is not UTF-8 once decoded (`%FF`) is
/// refused with a problem document — not matched lossily, nor left to the catch-all — and
/// nothing reaches the upstream; a segment that decodes is routed as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_template_capture_is_a_bad_request() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "{}routes:\n  - {{ name: item, match: {{ path: \"/items/{{id}}\" }}, upstream: svc }}\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let base = gw.url("public");
    let r = get(&format!("{base}/items/%FF")).await;
    let v = assert_problem(&r, 400, "bad_request");
    assert_eq!(
        v["detail"],
        "a path segment a route captures is not UTF-8 once percent-decoded"
    );
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["stage"], "route", "{ev}");
    assert_eq!(up.hits(), 0);
    assert_eq!(get(&format!("{base}/items/caf%C3%A9")).await.status, 200);
    assert_eq!(up.requests().pop().unwrap().uri, "/items/caf%C3%A9");
}

/// Behind a trusted proxy, a request refused by the first checks (a malformed one, a path
/// that cannot be normalised) is the client's: in its audit event and for bans. Before, such
/// refusals were the balancer's — its own requests banned, the attacker never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_behind_a_proxy_count_against_the_client() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server: {{ trusted_proxies: [127.0.0.1, \"::1\"] }}\nbans:\n  rules:\n    - {{ name: junk, on: [bad_request], count: 2, within: 1m, ban_for: 1m }}\n{}routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let from = |ip: &'static str, path: &'static str| through_proxy(&gw, ip, "GET", path);
    let attacker = "198.51.100.66";
    let r = from(attacker, "/a%2Fb").await;
    let v = assert_problem(&r, 400, "bad_request");
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["client_ip"], attacker, "{ev}");
    assert_eq!(ev["stage"], "normalize", "{ev}");
    assert_problem(&from(attacker, "/x/..;/y").await, 400, "bad_request");
    // Banned: the attacker, not the balancer its requests came through.
    assert_problem(&from(attacker, "/ok").await, 403, "ip_banned");
    assert_eq!(from("198.51.100.67", "/ok").await.status, 200);
    assert_eq!(get(&format!("{}/ok", gw.url("public"))).await.status, 200);
    let list = get(&format!("{}/bans", gw.admin_url())).await.json();
    assert_eq!(list["bans"][0]["address"], attacker, "{list}");
    assert_eq!(list["bans"].as_array().unwrap().len(), 1, "{list}");

    // A head the framing reader refuses is answered before the client address is read from
    // it: the client is unknown, and the refusal is counted against no one — not against the
    // proxy it came through.
    let other = "198.51.100.77";
    for _ in 0..3 {
        let answer = raw_http(
            gw.listener("public"),
            format!(
                "GET /ok HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {other}\r\n\
                 Content-Length: 1\r\nContent-Length: 1\r\n\r\nx"
            )
            .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_eq!(get(&format!("{}/ok", gw.url("public"))).await.status, 200);
    assert_eq!(from(other, "/ok").await.status, 200);
    let list = get(&format!("{}/bans", gw.admin_url())).await.json();
    assert_eq!(list["bans"].as_array().unwrap().len(), 1, "{list}");
}

/// Bans: an address that collects `count` refusals of the kinds a rule counts within its
/// window is refused before routing (403 `ip_banned`, `Retry-After`) until the ban runs out or
/// is lifted through the admin API; the address is the client's as the trusted-proxy step
/// resolves it; other addresses and exempt ones are served. The ban that is lifted lasts 10 s,
/// past all that comes before the lift however loaded the machine; the one left to run out,
/// counted by another rule, lasts 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refusals_ban_the_client_address_for_a_while() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server: {{ trusted_proxies: [127.0.0.1, \"::1\"] }}\nbans:\n  exempt: [198.51.100.200]\n  rules:\n    - {{ name: scanner, on: [route_not_found, method_not_allowed], count: 3, within: 1m, ban_for: 10s }}\n    - {{ name: junk, on: [bad_request], count: 3, within: 1m, ban_for: 3s }}\n{}routes:\n  - {{ name: orders, match: {{ path: /orders, methods: [GET] }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let from = |ip: &'static str, method: &'static str, path: &'static str| {
        through_proxy(&gw, ip, method, path)
    };
    let scanner = "198.51.100.7";
    // Two refusals: not yet banned.
    assert_problem(
        &from(scanner, "GET", "/wp-admin").await,
        404,
        "route_not_found",
    );
    assert_problem(
        &from(scanner, "POST", "/orders").await,
        405,
        "method_not_allowed",
    );
    assert_eq!(from(scanner, "GET", "/orders").await.status, 200);
    // The third bans: even a request to a real route is refused, before routing.
    assert_problem(&from(scanner, "GET", "/.env").await, 404, "route_not_found");
    let hits = up.hits();
    let r = from(scanner, "GET", "/orders").await;
    let v = assert_problem(&r, 403, "ip_banned");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["stage"], "ip_filter", "{ev}");
    assert_eq!(ev["reason"], "ip_banned", "{ev}");
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    // Another address is served; an exempt one is never banned.
    assert_eq!(from("198.51.100.8", "GET", "/orders").await.status, 200);
    for _ in 0..5 {
        from("198.51.100.200", "GET", "/nope").await;
    }
    assert_eq!(from("198.51.100.200", "GET", "/orders").await.status, 200);
    // The admin API lists the ban and lifts it; the metric counts it.
    let list = get(&format!("{}/bans", gw.admin_url())).await.json();
    assert_eq!(list["bans"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["bans"][0]["address"], scanner, "{list}");
    assert_eq!(list["bans"][0]["rule"], "scanner", "{list}");
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains("portcullis_bans_total{rule=\"scanner\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_bans_in_force 1"), "{metrics}");
    assert!(
        metrics.contains("portcullis_bans_store_up 1"),
        "not shared: {metrics}"
    );
    let lift = |ip: &str| {
        send(req(
            "DELETE",
            &format!("{}/bans/{ip}", gw.admin_url()),
            &[],
            "",
        ))
    };
    assert_eq!(lift(scanner).await.status, 200);
    assert_eq!(lift(scanner).await.status, 404);
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(metrics.contains("portcullis_bans_in_force 0"), "{metrics}");
    assert_eq!(lift("not-an-address").await.status, 400);
    assert_eq!(from(scanner, "GET", "/orders").await.status, 200);
    // Banned again, by the other rule; this time the ban runs out by itself.
    for _ in 0..3 {
        assert_problem(&from(scanner, "GET", "/a%2Fb").await, 400, "bad_request");
    }
    assert_problem(&from(scanner, "GET", "/orders").await, 403, "ip_banned");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = from(scanner, "GET", "/orders").await;
        if r.status == 200 {
            break;
        }
        assert_problem(&r, 403, "ip_banned");
        assert!(
            std::time::Instant::now() < deadline,
            "the ban never ran out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_the_limit_is_cut_off_with_413() {
    let gw = gateway(
        "upstreams: { demo: { kind: echo } }\nroutes:\n  - { name: up, match: { prefix: /up }, upstream: demo, max_body_bytes: 1KiB, waf: { mode: off } }\n",
    );
    let addr = gw.listener("public");
    // Chunked, so no Content-Length announces the size.
    let chunk = "x".repeat(600);
    let raw = format!(
        "POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let out = raw_http(addr, raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(
        out.contains("urn:portcullis:problem:body_too_large"),
        "{out}"
    );
    // The client's fault, caught on the body's way upstream: a refusal of the body-limit step,
    // as when a Content-Length announces it, never an upstream failure.
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no request id: {out}"));
    let ev = audit_of(&gw, id);
    assert_eq!(ev["outcome"], "rejected", "{ev}");
    assert_eq!(ev["stage"], "body_limit", "{ev}");
    assert_eq!(ev["reason"], "body_too_large", "{ev}");
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains(
            "portcullis_rejections_total{stage=\"body_limit\",reason=\"body_too_large\"} 1"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("stage=\"upstream\""), "{metrics}");
    // Within the limit it passes, streamed.
    let small = format!(
        "POST /up HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let out = raw_http(addr, small.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        // Streaming is under test: a body the WAF inspects is buffered (up to 1MiB by default).
        "{}routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc, max_body_bytes: 8MiB, waf: {{ mode: off }} }}\n",
        upstream_section(&up.url())
    ));
    let body = "b".repeat(3 * 1024 * 1024);
    let r = send(req(
        "POST",
        &format!("{}/upload", gw.url("public")),
        &[],
        &body,
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.requests()[0].body.len(), body.len());
    let r = get(&format!("{}/stream/40", gw.url("public"))).await;
    assert_eq!(r.body.len(), 40 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2_keeps_trailers() {
    let grpc = GrpcUpstream::start().await;
    let gw = gateway(&format!(
        "upstreams:\n  grpc: {{ targets: [\"{}\"], protocol: http2 }}\nroutes:\n  - {{ name: grpc, match: {{ prefix: /pkg.Echo, methods: [POST] }}, upstream: grpc }}\n",
        grpc.url()
    ));
    let frame = "\0\0\0\0\x05hello";
    let r = send_h2c(req(
        "POST",
        &format!("{}/pkg.Echo/Say", gw.url("public")),
        &[("content-type", "application/grpc"), ("te", "trailers")],
        frame,
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.body.as_ref(), frame.as_bytes());
    let t = r.trailers.expect("trailers");
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["grpc-message"], "echoed");
    assert_eq!(grpc.request_headers()[0]["te"], "trailers");
}

/// A redirect (or a 201) whose absolute `Location` names the target the answer came from —
/// as an upstream reached by its own address writes it — reaches the client with the client's
/// scheme and `Host` instead: a link it can follow, and the internal address kept inside.
/// Links elsewhere are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_to_the_target_are_rewritten_to_the_clients_host() {
    use tokio::io::AsyncWriteExt;
    let me: std::sync::Arc<std::sync::OnceLock<String>> = std::sync::Arc::default();
    let m = me.clone();
    let addr = scripted_upstream(move |mut s| {
        let m = m.clone();
        async move {
            let a = format!(
                "HTTP/1.1 302 Found\r\nlocation: http://{}/next?x=1\r\ncontent-location: https://elsewhere.example/x\r\ncontent-length: 0\r\n\r\n",
                m.get().unwrap()
            );
            let _ = s.write_all(a.as_bytes()).await;
        }
    })
    .await;
    me.set(addr.to_string()).unwrap();
    let gw = gateway(&format!(
        "upstreams: {{ svc: {{ targets: [\"http://{addr}\"], host_header: target }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n"
    ));
    let r = send(req(
        "GET",
        &format!("{}/go", gw.url("public")),
        &[("host", "api.example.com")],
        "",
    ))
    .await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://api.example.com/next?x=1")
    );
    assert_eq!(
        r.header("content-location"),
        Some("https://elsewhere.example/x")
    );
    // Over HTTP/2 the client's name is its `:authority`.
    let r = send_h2c(req("GET", &format!("{}/go", gw.url("public")), &[], "")).await;
    assert_eq!(r.status, 302);
    let want = format!("http://{}/next?x=1", gw.listener("public"));
    assert_eq!(r.header("location"), Some(want.as_str()));
    // An untrusted client's word on its scheme is not taken.
    let r = send(req(
        "GET",
        &format!("{}/go", gw.url("public")),
        &[("host", "api.example.com"), ("x-forwarded-proto", "https")],
        "",
    ))
    .await;
    assert_eq!(
        r.header("location"),
        Some("http://api.example.com/next?x=1")
    );

    // Behind a trusted TLS terminator, the scheme its client used (the host stays the
    // request's own).
    let gw = gateway(&format!(
        "server: {{ trusted_proxies: [127.0.0.1/32] }}\nupstreams: {{ svc: {{ targets: [\"http://{addr}\"], host_header: target }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n"
    ));
    for (sent, want) in [
        (
            vec![
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
            ],
            "https://api.example.com/next?x=1",
        ),
        (
            vec![("forwarded", "for=192.0.2.1;proto=https")],
            "https://api.example.com/next?x=1",
        ),
        (
            vec![("x-forwarded-proto", "gopher")],
            "http://api.example.com/next?x=1",
        ),
        // A proxy that appends: its own element, the last, is the one taken.
        (
            vec![("x-forwarded-proto", "https, http")],
            "http://api.example.com/next?x=1",
        ),
        (
            vec![(
                "forwarded",
                "for=6.6.6.6;proto=http, for=192.0.2.1;proto=https",
            )],
            "https://api.example.com/next?x=1",
        ),
    ] {
        let mut h = vec![("host", "api.example.com")];
        h.extend(sent.iter().copied());
        let r = send(req("GET", &format!("{}/go", gw.url("public")), &h, "")).await;
        assert_eq!(r.status, 302);
        assert_eq!(r.header("location"), Some(want), "{sent:?}");
    }
}

/// Trailers are held to the route's header removals like the head: a field removed from
/// heads (here a configured one, `grpc-message`, which may carry an exception) does not come
/// after the body instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_lose_the_fields_heads_lose() {
    let grpc = GrpcUpstream::start().await;
    let gw = gateway(&format!(
        "upstreams:\n  grpc: {{ targets: [\"{}\"], protocol: http2 }}\nroutes:\n  - {{ name: grpc, match: {{ prefix: /pkg.Echo, methods: [POST] }}, upstream: grpc, security_headers: {{ remove: [grpc-message] }} }}\n",
        grpc.url()
    ));
    let r = send_h2c(req(
        "POST",
        &format!("{}/pkg.Echo/Say", gw.url("public")),
        &[("content-type", "application/grpc"), ("te", "trailers")],
        "\0\0\0\0\x05hello",
    ))
    .await;
    assert_eq!(r.status, 200);
    let t = r.trailers.expect("trailers");
    assert_eq!(t["grpc-status"], "0");
    assert!(t.get("grpc-message").is_none(), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through() {
    let ws = WsUpstream::start().await;
    let gw = gateway(&format!(
        "upstreams:\n  ws: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: ws, match: {{ path: /chat, methods: [GET] }}, upstream: ws, websocket: true }}\n",
        ws.url()
    ));
    let url = format!("ws://{}/chat", gw.listener("public"));
    let (mut client, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("x-request-id").is_some());
    for msg in ["hello", "world"] {
        client
            .send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), msg);
    }
    client.close(None).await.unwrap();
    assert_eq!(ws.paths(), ["/chat"]);
}

/// A client WebSocket frame: FIN, `opcode`, masked (unless `mask` is `None`), `payload`.
fn ws_frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![u8::from(fin) << 7 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => f.push(m | n as u8),
        n @ 126..=0xFFFF => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A raw WebSocket handshake on `path` through the gateway; the connection after its 101.
async fn ws_raw(gw: &Gateway, path: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(gw.listener("public"))
        .await
        .unwrap();
    c.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Byte by byte, so that nothing after the head is taken with it.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = tokio::time::timeout(Duration::from_secs(10), c.read_u8())
            .await
            .unwrap()
            .unwrap();
        head.push(b);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c
}

/// Everything the gateway sends until it closes the connection.
async fn ws_rest(c: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

/// After the 101 the gateway follows the frames the client sends (never their payloads): a
/// message over the route's `websocket.max_message_bytes` — by default its `max_body_bytes` —
/// in one frame or in fragments, ends the tunnel with a Close frame 1009 to both sides, and
/// the frame that passed the limit never reaches the upstream; a frame no conforming client
/// sends (unmasked, a reserved bit) ends it with 1002. Messages within the limit, fragmented or
/// not, go through as they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_over_the_limit_or_out_of_protocol_end_the_tunnel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let ws = WsUpstream::start().await;
    let gw = gateway(&format!(
        "upstreams:\n  ws: {{ targets: [\"{}\"] }}\nroutes:\n\
         \x20 - {{ name: small, match: {{ path: /small }}, upstream: ws, websocket: {{ max_message_bytes: 1KiB }} }}\n\
         \x20 - {{ name: body, match: {{ path: /body }}, upstream: ws, max_body_bytes: 2KiB, websocket: true }}\n",
        ws.url()
    ));

    // A real client: a message at the limit is echoed, one byte more closes the socket.
    let url = format!("ws://{}/small", gw.listener("public"));
    let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let at_limit = "a".repeat(1024);
    client.send(Message::text(at_limit.clone())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), at_limit);
    client.send(Message::text("b".repeat(1025))).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Close(Some(frame)) = closed else {
        panic!("{closed:?}")
    };
    assert_eq!(frame.code, CloseCode::Size);
    assert_eq!(
        frame.reason.as_str(),
        "message over the gateway's size limit"
    );
    // The upstream got the first message and the gateway's Close, not the large message.
    let ws = &ws;
    let wait_for = |n: usize| async move {
        for _ in 0..100 {
            if ws.received().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_for(2).await;
    let got = ws.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0], Message::text(at_limit));
    let Message::Close(Some(up)) = &got[1] else {
        panic!("{got:?}")
    };
    assert_eq!(up.code, CloseCode::Size);

    // Fragments: "hel" + "lo" go through and are echoed as one message; then a message over
    // the route's body limit in two fragments — the first goes, the second is held.
    let key = Some([0x37, 0xfa, 0x21, 0x3d]);
    let mut c = ws_raw(&gw, "/body").await;
    let mut frames = ws_frame(false, 1, key, b"hel");
    frames.extend(ws_frame(true, 0, key, b"lo"));
    c.write_all(&frames).await.unwrap();
    let mut echo = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"\x81\x05hello");
    let mut over = ws_frame(false, 2, key, &[7u8; 1500]);
    over.extend(ws_frame(true, 0, key, &[8u8; 600]));
    c.write_all(&over).await.unwrap();
    let mut close = vec![0x88, 39, 0x03, 0xF1];
    close.extend_from_slice(b"message over the gateway's size limit");
    assert_eq!(ws_rest(&mut c).await, close);
    wait_for(4).await;
    let got = ws.received();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[2], Message::text("hello"));
    // The upstream saw the first fragment, then the gateway's Close: never the message whole.
    assert!(
        matches!(&got[3], Message::Close(Some(f)) if f.code == CloseCode::Size),
        "{got:?}"
    );

    // Out of protocol: an unmasked frame, and RSV1 where no extension was agreed.
    let mut rsv1 = ws_frame(true, 1, key, b"x");
    rsv1[0] |= 0x40;
    for (frame, reason) in [
        (ws_frame(true, 1, None, b"x"), "client frame not masked"),
        (
            rsv1,
            "reserved bits set that no extension agreed gives a meaning",
        ),
    ] {
        let mut c = ws_raw(&gw, "/small").await;
        c.write_all(&frame).await.unwrap();
        let mut close = vec![0x88, 2 + reason.len() as u8, 0x03, 0xEA];
        close.extend_from_slice(reason.as_bytes());
        assert_eq!(ws_rest(&mut c).await, close, "{reason}");
    }
    wait_for(6).await;
    let got = ws.received();
    assert_eq!(got.len(), 6, "{got:?}");
    for m in &got[4..] {
        assert!(
            matches!(m, Message::Close(Some(f)) if f.code == CloseCode::Protocol),
            "{got:?}"
        );
    }

    // Each tunnel the gateway closed is audited beside its handshake: the handshake's event
    // (allowed, 101) and one of its own, with the same request id.
    let closed_by_gateway = |e: &serde_json::Value| e["stage"] == "websocket";
    for _ in 0..100 {
        if gw
            .audit_events()
            .iter()
            .filter(|e| closed_by_gateway(e))
            .count()
            >= 4
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = gw.audit_events();
    let closed: Vec<&serde_json::Value> = events.iter().filter(|e| closed_by_gateway(e)).collect();
    assert_eq!(closed.len(), 4, "{events:#?}");
    let mut reasons: Vec<&str> = closed
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        [
            "websocket_message_too_big",
            "websocket_message_too_big",
            "websocket_protocol_error",
            "websocket_protocol_error"
        ]
    );
    for e in closed {
        assert_eq!(e["outcome"], "rejected", "{e}");
        assert_eq!(e["status"], 101, "{e}");
        assert_eq!(e["response_complete"], false, "{e}");
        let handshake: Vec<&serde_json::Value> = events
            .iter()
            .filter(|h| h["request_id"] == e["request_id"] && !closed_by_gateway(h))
            .collect();
        assert_eq!(handshake.len(), 1, "{e}");
        assert_eq!(handshake[0]["outcome"], "allowed", "{}", handshake[0]);
        assert_eq!(handshake[0]["status"], 101, "{}", handshake[0]);
        assert_eq!(handshake[0]["route"], e["route"], "{e}");
    }
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    for (reason, n) in [
        ("websocket_message_too_big", 2),
        ("websocket_protocol_error", 2),
    ] {
        let line =
            format!("portcullis_rejections_total{{stage=\"websocket\",reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    // The gateway is still serving WebSockets.
    let url = format!("ws://{}/small", gw.listener("public"));
    let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    client.send(Message::text("again")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "again");
}

/// A message refused at its frame's header while the client is still sending its payload: the
/// refusal comes at the header (the 4 MiB are never awaited), the client gets the Close frame
/// and a clean end, and nothing of the message reaches the upstream. (The gateway then reads
/// and drops what keeps coming for a moment before it closes, so that a reset does not take
/// the Close away; Linux keeps what a client received through a reset, so this test cannot
/// show that part.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_a_refused_message_gets_the_close_frame() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = WsUpstream::start().await;
    let gw = gateway(&format!(
        "upstreams:\n  ws: {{ targets: [\"{}\"] }}\nroutes:\n\
         \x20 - {{ name: small, match: {{ path: /small }}, upstream: ws, websocket: {{ max_message_bytes: 1KiB }} }}\n",
        ws.url()
    ));
    let c = ws_raw(&gw, "/small").await;
    let (mut r, mut w) = c.into_split();
    // A binary frame announcing 4 MiB, its payload streamed behind it.
    let sender = tokio::spawn(async move {
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&(4u64 << 20).to_be_bytes());
        head.extend_from_slice(&[9, 9, 9, 9]);
        if w.write_all(&head).await.is_err() {
            return;
        }
        let piece = [0x5au8; 64 * 1024];
        for _ in 0..64 {
            if w.write_all(&piece).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf))
            .await
            .unwrap()
        {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let mut close = vec![0x88, 39, 0x03, 0xF1];
    close.extend_from_slice(b"message over the gateway's size limit");
    assert_eq!(got, close);
    let _ = sender.await;
    // Nothing of the message reached the upstream: only the gateway's Close did.
    for _ in 0..100 {
        if !ws.received().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = ws.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].is_close(), "{got:?}");
}

/// Where the 101 agreed on `permessage-deflate`, RSV1 marks a compressed message: on a
/// message's first frame it goes through; RSV2, which that extension does not use, ends the
/// tunnel with 1002 (the gateway follows the client's frames, and this one is out of protocol).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_websocket_takes_rsv1_on_first_frames_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    s.read_exact(&mut b).await.unwrap();
                    head.push(b[0]);
                }
                s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
              sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              sec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n\r\n",
        )
        .await
        .unwrap();
                // Reports the bytes that come after the handshake, as they come.
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || seen_tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let gw = gateway(&format!(
        "upstreams:\n  ws: {{ targets: [\"http://{up}\"] }}\nroutes:\n\
         \x20 - {{ name: ws, match: {{ path: /chat }}, upstream: ws, websocket: true }}\n\
         \x20 - {{ name: plain, match: {{ path: /plain }}, upstream: ws, websocket: true, response_headers: {{ remove: [sec-websocket-extensions] }} }}\n"
    ));
    let mut c = ws_raw(&gw, "/chat").await;
    let key = Some([1, 2, 3, 4]);
    let mut compressed = ws_frame(true, 1, key, b"\xf2\x48\x05\x00");
    compressed[0] |= 0x40;
    c.write_all(&compressed).await.unwrap();
    let mut forwarded = Vec::new();
    while forwarded.len() < compressed.len() {
        let piece = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap()
            .unwrap();
        forwarded.extend(piece);
    }
    assert_eq!(forwarded, compressed);
    let mut rsv2 = ws_frame(true, 1, key, b"x");
    rsv2[0] |= 0x20;
    c.write_all(&rsv2).await.unwrap();
    let reason = "reserved bits set that no extension agreed gives a meaning";
    let mut close = vec![0x88, 2 + reason.len() as u8, 0x03, 0xEA];
    close.extend_from_slice(reason.as_bytes());
    assert_eq!(ws_rest(&mut c).await, close);
    // The upstream got a masked Close frame, never the RSV2 frame.
    let mut after: Vec<u8> = Vec::new();
    while after.len() < 2 || after.len() < usize::from(after[1] & 0x7f) + 6 {
        let piece = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap()
            .unwrap();
        after.extend(piece);
    }
    assert_eq!(after[0], 0x88, "{after:?}");
    assert_eq!(usize::from(after[1] & 0x7f) + 6, after.len(), "{after:?}");
    assert!(after[1] & 0x80 != 0, "masked: {after:?}");
    let code: Vec<u8> = after[6..8]
        .iter()
        .zip(&after[2..4])
        .map(|(b, k)| b ^ k)
        .collect();
    assert_eq!(code, [0x03, 0xEA]);

    // Where the route's header rules take the extension out of the 101, the client was told
    // none was agreed: the frames are held to that (RSV1 refused).
    let mut c = ws_raw(&gw, "/plain").await;
    c.write_all(&compressed).await.unwrap();
    let mut close = vec![0x88, 2 + reason.len() as u8, 0x03, 0xEA];
    close.extend_from_slice(reason.as_bytes());
    assert_eq!(ws_rest(&mut c).await, close);
}

/// After a 101 the connection is a tunnel no step reads: a handshake is refused on a route that
/// does not say it serves WebSockets, before anything reaches the upstream, with the problem
/// document and the audit event of any refusal. Where a route serves them without CORS, a
/// browser's handshake must come from the route's own origin (or one it lists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_only_on_routes_that_serve_them_and_from_their_own_origin() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws = WsUpstream::start().await;
    let gw = gateway(&format!(
        "upstreams:\n  ws: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: off, match: {{ path: /off }}, upstream: ws }}\n  - {{ name: listed, match: {{ path: /listed }}, upstream: ws, websocket: {{ origins: [\"https://app.example.com\"] }} }}\n  - {{ name: own, match: {{ path: /own }}, upstream: ws, websocket: true }}\n",
        ws.url()
    ));
    let public = gw.listener("public");
    let request = |path: &str, origin: Option<&str>| {
        let mut r = format!("ws://{public}{path}")
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            r.headers_mut().insert("origin", o.parse().unwrap());
        }
        r
    };
    let refused = |result: Result<_, tokio_tungstenite::tungstenite::Error>, code: &str| {
        let resp = match result {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp,
            Ok((_, resp)) => panic!("{code}: the handshake was made: {resp:?}"),
            Err(e) => panic!("{code}: {e}"),
        };
        assert_eq!(resp.status(), 403, "{code}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{code}"
        );
        let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["type"],
            format!("urn:portcullis:problem:{code}"),
            "{body}"
        );
        assert_eq!(
            v["request_id"].as_str(),
            resp.headers()["x-request-id"].to_str().ok(),
            "{body}"
        );
        v
    };

    // Off (the default): refused, with or without an origin, and audited as the step's refusal.
    let v = refused(
        tokio_tungstenite::connect_async(request("/off", None)).await,
        "forbidden",
    );
    assert_eq!(
        v["detail"], "WebSocket upgrades are not enabled on this route",
        "{v}"
    );
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["outcome"], "rejected", "{ev}");
    assert_eq!(ev["stage"], "cors", "{ev}");
    assert_eq!(ev["route"], "off", "{ev}");
    refused(
        tokio_tungstenite::connect_async(request("/off", Some(&format!("http://{public}")))).await,
        "forbidden",
    );
    // Another page's handshake, on routes that serve WebSockets.
    for path in ["/own", "/listed"] {
        let v = refused(
            tokio_tungstenite::connect_async(request(path, Some("https://evil.example.net"))).await,
            "cors_rejected",
        );
        assert_eq!(
            v["detail"], "WebSocket from origin https://evil.example.net not allowed",
            "{v}"
        );
        // The same host on another port is another origin.
        refused(
            tokio_tungstenite::connect_async(request(path, Some("http://127.0.0.1:1"))).await,
            "cors_rejected",
        );
    }
    // RFC 6455: the handshake is a GET.
    let out = raw_http(
        public,
        format!(
            "POST /own HTTP/1.1\r\nHost: {public}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(
        out.contains("\"code\":\"bad_request\"")
            && out.contains("\"detail\":\"a WebSocket handshake is a GET\""),
        "{out}"
    );
    assert!(
        ws.paths().is_empty(),
        "a refused handshake reached the upstream: {:?}",
        ws.paths()
    );

    // The route's own origin (the Host the client sent), a listed one, and clients that send
    // no Origin at all.
    for (path, origin) in [
        ("/own", Some(format!("http://{public}"))),
        ("/own", None),
        ("/listed", Some(format!("https://{public}"))),
        ("/listed", Some("https://app.example.com".to_string())),
    ] {
        let (mut c, resp) = tokio_tungstenite::connect_async(request(path, origin.as_deref()))
            .await
            .unwrap_or_else(|e| panic!("{path} {origin:?}: {e}"));
        assert_eq!(resp.status(), 101);
        c.close(None).await.unwrap();
    }
    assert_eq!(ws.paths(), ["/own", "/own", "/listed", "/listed"]);
}

/// A 101's hop-by-hop fields stay on the upstream's side of the tunnel: the client gets the
/// handshake's `Upgrade` and `Connection: upgrade`, not the upstream's `Keep-Alive`,
/// `Proxy-Authenticate`, nor a field its `Connection` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switching_answer_loses_the_upstreams_hop_by_hop_fields() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade, x-internal\r\n\
              x-internal: secret\r\nkeep-alive: timeout=5\r\nproxy-authenticate: Basic\r\n\
              sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .await
        .unwrap();
        // The tunnel stays open until the client goes.
        let _ = s.read(&mut buf).await;
    });
    let gw = gateway(&format!(
        "upstreams:\n  ws: {{ targets: [\"http://{up}\"] }}\nroutes:\n  - {{ name: ws, match: {{ path: /chat, methods: [GET] }}, upstream: ws, websocket: true }}\n"
    ));
    let mut c = tokio::net::TcpStream::connect(gw.listener("public"))
        .await
        .unwrap();
    c.write_all(
        b"GET /chat HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("sec-websocket-accept:"), "{head}");
    for gone in ["x-internal", "keep-alive", "proxy-authenticate"] {
        assert!(!head.contains(gone), "{gone}: {head}");
    }
}

/// Cross-site WebSocket hijacking: on a CORS route, a handshake from an origin the route's
/// WebSocket settings do not allow is refused (browsers apply no CORS to WebSockets) and never
/// reaches the upstream — also when CORS lets that origin (or any, `*`) read answers; a listed
/// origin's, or a non-browser client's without `Origin`, is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_from_origins_a_cors_route_does_not_allow_are_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws = WsUpstream::start().await;
    let gw = gateway(&format!(
        "upstreams:\n  ws: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: ws, match: {{ path: /chat, methods: [GET] }}, upstream: ws, websocket: {{ origins: [\"https://app.example.com\"] }}, cors: {{ allowed_origins: [\"*\"] }} }}\n",
        ws.url()
    ));
    let url = format!("ws://{}/chat", gw.listener("public"));
    let with_origin = |origin: &str| {
        let mut r = url.as_str().into_client_request().unwrap();
        r.headers_mut().insert("origin", origin.parse().unwrap());
        r
    };
    match tokio_tungstenite::connect_async(with_origin("https://evil.example.net")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
            assert!(
                body.contains("cors_rejected") && body.contains("request_id"),
                "{body}"
            );
        }
        other => panic!("{:?}", other.map(|(_, r)| r.status())),
    }
    assert!(
        ws.paths().is_empty(),
        "the refused handshake reached the upstream"
    );
    let (mut c, resp) = tokio_tungstenite::connect_async(with_origin("https://app.example.com"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    c.close(None).await.unwrap();
    let (mut c, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    c.close(None).await.unwrap();
    assert_eq!(ws.paths(), ["/chat", "/chat"]);
}

/// What follows a 101 is no HTTP answer, so nothing in it can be filtered: on a route whose
/// answers are filtered (`response_filter`; field masks and a contract's response checks
/// alike) an upgrade is refused before the upstream hears of it — it would carry answers past
/// the filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_refused_where_answers_are_filtered() {
    let ws = WsUpstream::start().await;
    let gw = gateway(&format!(
        "upstreams:\n  ws: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: filtered, match: {{ path: /filtered }}, upstream: ws, websocket: true, response_filter: {{ remove: [secret] }} }}\n  - {{ name: plain, match: {{ path: /plain }}, upstream: ws, websocket: true }}\n",
        ws.url()
    ));
    let base = format!("ws://{}", gw.listener("public"));
    match client::try_ws_connect(&format!("{base}/filtered")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["type"], "urn:portcullis:problem:forbidden", "{body}");
            assert!(v["request_id"].is_string(), "{body}");
            // Refused by the route's rules, not failed by the upstream.
            let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
            assert_eq!(ev["outcome"], "rejected", "{ev}");
            assert_eq!(ev["stage"], "route", "{ev}");
        }
        other => panic!("{:?}", other.map(|(_, r)| r.status())),
    }
    assert!(
        ws.paths().is_empty(),
        "the refused handshake reached the upstream"
    );
    let (mut c, resp) = client::ws_connect(&format!("{base}/plain")).await;
    assert_eq!(resp.status(), 101);
    c.close(None).await.unwrap();
    assert_eq!(ws.paths(), ["/plain"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_become_502_503_504_problems() {
    let up = TestUpstream::start("slow").await;
    let dead = dead_addr();
    let gw = gateway(&format!(
        r#"upstreams:
  dead: {{ targets: ["http://{dead}"], retries: {{ attempts: 0 }}, passive_health: {{ consecutive_failures: 2, ejection_time: 1m }} }}
  down: {{ targets: ["http://{dead}"], health_check: {{ interval: 100ms, unhealthy_threshold: 1 }} }}
  slow: {{ targets: ["{}"] }}
routes:
  - {{ name: dead, match: {{ prefix: /dead }}, upstream: dead }}
  - {{ name: down, match: {{ prefix: /down }}, upstream: down }}
  - {{ name: slow, match: {{ prefix: /delay }}, upstream: slow, timeout: 300ms }}
"#,
        up.url()
    ));
    let base = gw.url("public");
    for _ in 0..2 {
        let v = assert_problem(&get(&format!("{base}/dead")).await, 502, "upstream_error");
        let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
        assert_eq!(ev["outcome"], "failed");
        assert_eq!(ev["stage"], "upstream");
        assert_eq!(ev["target"], dead.to_string());
    }
    // Passive ejection never takes out the last eligible target (clients could otherwise
    // take an upstream down): it is still tried.
    assert_problem(&get(&format!("{base}/dead")).await, 502, "upstream_error");
    // Active checks can: once they find the only target down, nothing is tried any more.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&format!("{base}/down")).await;
        if r.status == 503 {
            assert_problem(&r, 503, "no_healthy_upstream");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = assert_problem(
        &get(&format!("{base}/delay/3000")).await,
        504,
        "upstream_timeout",
    );
    assert!(
        !v["detail"].as_str().unwrap().contains("127.0.0.1"),
        "no internals leak: {v}"
    );
    // Healthy afterwards.
    assert_eq!(get(&format!("{base}/delay/0")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_serves_its_tour() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/quickstart.yaml"
    ))
    .unwrap();
    let yaml = text
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0");
    let gw = Gateway::start(bin(), &yaml).unwrap();
    let base = gw.url("public");
    let r = get(&format!("{base}/hello")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/hello");
    assert_eq!(r.header("x-portcullis-demo"), Some("hello"));
    let r = get(&format!("{base}/api/orders/42")).await;
    assert_eq!(r.json()["uri"], "/v1/orders/42");
    assert_problem(&get(&format!("{base}/admin")).await, 404, "route_not_found");
    assert_problem(
        &send(req("POST", &format!("{base}/api/orders/42"), &[], "")).await,
        405,
        "method_not_allowed",
    );
    let out = raw_http(
        gw.listener("public"),
        b"GET /hello/../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    // The spoofed X-Forwarded-For is replaced; a body over 1 MiB is refused.
    let r = send(req(
        "GET",
        &format!("{base}/hello"),
        &[("x-forwarded-for", "1.2.3.4")],
        "",
    ))
    .await;
    assert_eq!(
        r.json()["headers"]["x-forwarded-for"],
        "127.0.0.1",
        "{}",
        r.text()
    );
    let big = "\0".repeat(2_000_000);
    let r = send(req("POST", &format!("{base}/hello"), &[], &big)).await;
    assert_problem(&r, 413, "body_too_large");
}

/// An address banned by hand through the admin API is refused, with no ban rule configured;
/// malformed requests to ban get a 400 problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_banned_by_hand_is_refused() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server: {{ trusted_proxies: [127.0.0.1, \"::1\"] }}\nbans: {{ exempt: [192.0.2.0/24] }}\n{}routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let post =
        |body: &'static str| send(req("POST", &format!("{}/bans", gw.admin_url()), &[], body));
    for (body, want) in [
        (r#"{"for": "1h"}"#, "address"),
        (
            r#"{"address": "nope", "for": "1h"}"#,
            "is not an IP address",
        ),
        (r#"{"address": "203.0.113.9", "for": "soon"}"#, "a duration"),
        (
            r#"{"address": "203.0.113.9", "for": "0s"}"#,
            "longer than 0s",
        ),
        (r#"{"address": "192.0.2.1", "for": "1h"}"#, "exempt"),
        ("not json", "not JSON"),
    ] {
        let r = post(body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let v = r.json();
        assert_eq!(v["type"], "urn:portcullis:problem:admin_bad_request", "{v}");
        assert!(v["detail"].as_str().unwrap().contains(want), "{body}: {v}");
    }
    let r = post(r#"{"address": "203.0.113.9", "for": "1h"}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["banned"], "203.0.113.9");
    let from = |ip: &'static str| through_proxy(&gw, ip, "GET", "/x");
    let r = from("203.0.113.9").await;
    assert_problem(&r, 403, "ip_banned");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&retry), "{retry}");
    assert_eq!(up.hits(), 0);
    assert_eq!(from("203.0.113.10").await.status, 200);
    let list = get(&format!("{}/bans", gw.admin_url())).await.json();
    assert_eq!(list["bans"][0]["rule"], "admin", "{list}");
}

/// Bans are by IPv6 prefix (/64), exemption by address: an exempt address is served while its
/// /64 is banned — by a neighbour's refusals, or by hand for a nearby address — and its
/// neighbours are refused, nothing of theirs reaching the upstream. Before, the exempt
/// address was refused with the rest of its /64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exempt_address_is_served_while_its_prefix_is_banned() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server: {{ trusted_proxies: [127.0.0.1, \"::1\"] }}\nbans:\n  exempt: [\"2001:db8:1:2::10\", \"2001:db8:1:3::10\"]\n  rules:\n    - {{ name: scanner, on: [route_not_found], count: 3, within: 1m, ban_for: 1h }}\n{}routes:\n  - {{ name: orders, match: {{ path: /orders, methods: [GET] }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let from = |ip: &'static str, path: &'static str| through_proxy(&gw, ip, "GET", path);
    let neighbour = "2001:db8:1:2::99";
    for _ in 0..3 {
        assert_problem(&from(neighbour, "/nope").await, 404, "route_not_found");
    }
    let hits = up.hits();
    let r = from(neighbour, "/orders").await;
    let v = assert_problem(&r, 403, "ip_banned");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&retry), "{retry}");
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["stage"], "ip_filter", "{ev}");
    assert_eq!(ev["client_ip"], neighbour, "{ev}");
    assert_problem(
        &from("2001:db8:1:2::abcd", "/orders").await,
        403,
        "ip_banned",
    );
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    // The exempt address of that /64 is served.
    assert_eq!(from("2001:db8:1:2::10", "/orders").await.status, 200);
    assert_eq!(up.hits(), hits + 1);
    let list = get(&format!("{}/bans", gw.admin_url())).await.json();
    assert_eq!(list["bans"][0]["address"], "2001:db8:1:2::", "{list}");

    // By hand, a nearby address of another exempt one: its /64 is banned, the exempt address
    // served; the exempt address itself cannot be banned.
    let post =
        |body: &'static str| send(req("POST", &format!("{}/bans", gw.admin_url()), &[], body));
    let r = post(r#"{"address": "2001:db8:1:3::99", "for": "1h"}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["banned"], "2001:db8:1:3::");
    let hits = up.hits();
    assert_problem(&from("2001:db8:1:3::5", "/orders").await, 403, "ip_banned");
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    assert_eq!(from("2001:db8:1:3::10", "/orders").await.status, 200);
    assert_eq!(up.hits(), hits + 1);
    let r = post(r#"{"address": "2001:db8:1:3::10", "for": "1h"}"#).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["detail"].as_str().unwrap().contains("exempt"));
}

/// The same at accept (`bans.refuse_connections`): an exempt address's connections are not
/// closed while its /64 is banned. Before, they were closed without an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exempt_address_is_not_refused_at_accept_by_a_ban_of_its_prefix() {
    let up = TestUpstream::start("a").await;
    let gw = Gateway::start(
        bin(),
        &format!(
            "listeners:\n  - {{ name: public, address: \"[::1]:0\" }}\nadmin: {{ address: \"127.0.0.1:0\" }}\nbans: {{ refuse_connections: true, exempt: [\"::1\"] }}\n{}routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
            upstream_section(&up.url())
        ),
    )
    .unwrap();
    let addr = gw.listener("public");
    assert!(addr.is_ipv6(), "{addr}");
    let plain_get = b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    // `::1` is counted by `::/64`: a ban of `::2` bans it.
    let r = send(req(
        "POST",
        &format!("{}/bans", gw.admin_url()),
        &[],
        r#"{"address": "::2", "for": "1h"}"#,
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["banned"], "::");
    let (text, _) = raw_exchange(addr, plain_get).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(up.hits(), 1);
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(metrics.contains("portcullis_bans_in_force 1"), "{metrics}");
    assert!(
        !metrics.contains("reason=\"ip_banned\""),
        "nothing refused: {metrics}"
    );
}

/// `bans.refuse_connections`: a banned address's new connections are closed at accept, before
/// a byte is read (a TLS handshake included); a connection opened before the ban gets the 403
/// per request; a trusted proxy's connections are never refused at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_address_can_be_refused_at_accept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "bans: {{ refuse_connections: true }}\n{}routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let addr = gw.listener("public");
    let plain_get = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut before = tokio::net::TcpStream::connect(addr).await.unwrap();
    async fn read_answer(s: &mut tokio::net::TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
    before.write_all(plain_get).await.unwrap();
    assert!(read_answer(&mut before).await.starts_with("HTTP/1.1 200"));
    let admin = |method: &str, path: &str, body: &str| {
        send(req(method, &format!("{}{path}", gw.admin_url()), &[], body))
    };
    let r = admin("POST", "/bans", r#"{"address": "127.0.0.1", "for": "1h"}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let hits = up.hits();
    // The connection opened before: refused per request, with the problem document.
    before.write_all(plain_get).await.unwrap();
    let answer = read_answer(&mut before).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("ip_banned"), "{answer}");
    // A new one: closed without an answer.
    let (text, closed) = raw_exchange(addr, plain_get).await;
    assert_eq!((text.as_str(), closed), ("", true));
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains("portcullis_rejections_total{stage=\"accept\",reason=\"ip_banned\"} 1"),
        "{metrics}"
    );
    // Lifted: served again.
    assert_eq!(admin("DELETE", "/bans/127.0.0.1", "").await.status, 200);
    let (text, _) = raw_exchange(addr, plain_get).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // Behind a trusted proxy the connection is the proxy's: accepted, and the ban applies to
    // the client address of each request.
    let gw = gateway(&format!(
        "server: {{ trusted_proxies: [127.0.0.1] }}\nbans: {{ refuse_connections: true }}\n{}routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        upstream_section(&up.url())
    ));
    let r = send(req(
        "POST",
        &format!("{}/bans", gw.admin_url()),
        &[],
        r#"{"address": "127.0.0.1", "for": "1h"}"#,
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let (text, _) = raw_exchange(gw.listener("public"), plain_get).await;
    assert!(
        text.starts_with("HTTP/1.1 403") && text.contains("ip_banned"),
        "{text}"
    );
    let (text, _) = raw_exchange(
        gw.listener("public"),
        b"GET /x HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 198.51.100.4\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// `examples/bans.yaml` as shipped (addresses made ephemeral): its curl lines give what they
/// promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bans_example_does_what_its_comments_say() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let yaml = std::fs::read_to_string(root.join("examples/bans.yaml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0");
    let gw = Gateway::start(bin(), &yaml).unwrap();
    let url = |p: &str| format!("{}{p}", gw.url("public"));
    assert_eq!(get(&url("/api/orders/1")).await.status, 200);
    assert_problem(&get(&url("/wp-admin")).await, 404, "route_not_found");
    assert_problem(&get(&url("/.env")).await, 404, "route_not_found");
    let r = send(req("DELETE", &url("/api/orders/1"), &[], "")).await;
    assert_problem(&r, 405, "method_not_allowed");
    let r = get(&url("/api/orders/1")).await;
    assert_problem(&r, 403, "ip_banned");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry), "{retry}");
    let list = get(&format!("{}/bans", gw.admin_url())).await.json();
    assert_eq!(list["bans"][0]["address"], "127.0.0.1", "{list}");
    assert_eq!(list["bans"][0]["rule"], "scanners", "{list}");
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains("portcullis_bans_total{rule=\"scanners\"} 1"),
        "{metrics}"
    );
    let r = send(req(
        "DELETE",
        &format!("{}/bans/127.0.0.1", gw.admin_url()),
        &[],
        "",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&url("/api/orders/1")).await.status, 200);
}

/// A bodiless request on the `public` listener as a trusted proxy sends it for client `ip`.
async fn through_proxy(gw: &Gateway, ip: &str, method: &str, path: &str) -> Resp {
    call_public(gw, method, path, &[("x-forwarded-for", ip)]).await
}
