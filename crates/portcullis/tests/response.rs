//! Response security end to end through the real binary, in front of a real upstream: CORS
//! preflights answered by the gateway (allowed, refused by origin, method and header) and CORS
//! headers on actual requests; security headers on every response (forwarded, refused,
//! unrouted) with revealing upstream headers removed and per-route overrides; upstream error
//! bodies replaced by a generic problem with the masked original in the audit event; JSON
//! fields removed by name and path, and bodies that cannot be filtered withheld or passed as
//! configured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

async fn setup() -> (Gateway, TestUpstream) {
    let up = TestUpstream::start("app").await;
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
waf: {{ mode: off }}
security_headers:
  remove: [x-debug-token]
routes:
  - name: cors
    match: {{ prefix: /cors }}
    upstream: app
    rewrite: {{ replace_prefix: "" }}
    cors:
      allowed_origins: ["https://app.example.com", "https://*.example.org"]
      allowed_methods: [GET, PUT]
      allowed_headers: [content-type, x-trace]
      exposed_headers: [x-request-id]
      allow_credentials: true
      max_age: 2m
    waf: {{ mode: block }}
  - name: framed
    match: {{ prefix: /framed }}
    upstream: app
    rewrite: {{ replace_prefix: "" }}
    security_headers:
      frame_options: SAMEORIGIN
      content_security_policy: false
  - name: errors4xx
    match: {{ prefix: /e4 }}
    upstream: app
    rewrite: {{ replace_prefix: "" }}
    errors: {{ replace_4xx: true, keep: [409] }}
  - name: filtered
    match: {{ prefix: /filtered }}
    upstream: app
    rewrite: {{ replace_prefix: "" }}
    response_filter:
      remove: [email, "$.items[*].cost", "$.internal_margin"]
  - name: passing
    match: {{ prefix: /passing }}
    upstream: app
    rewrite: {{ replace_prefix: "" }}
    response_filter: {{ remove: [cost], on_unfilterable: pass, max_bytes: 64 }}
  - {{ name: plain, match: {{ prefix: / }}, upstream: app }}
"#,
        up = up.url(),
    );
    (Gateway::start(bin(), &yaml).unwrap(), up)
}

fn cors_headers(r: &Resp) -> Vec<String> {
    r.headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .map(|k| k.to_string())
        .collect()
}

const ORIGIN: (&str, &str) = ("origin", "https://app.example.com");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_by_the_gateway() {
    let (gw, up) = setup().await;
    let r = call_public(
        &gw,
        "OPTIONS",
        "/cors/items/1",
        &[
            ORIGIN,
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "Content-Type, X-Trace"),
        ],
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type, x-trace")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("120"));
    assert!(r.header("vary").unwrap().contains("Origin"));
    assert!(r.text().is_empty());
    // A wildcard subdomain origin.
    let r = call_public(
        &gw,
        "OPTIONS",
        "/cors/x",
        &[
            ("origin", "https://a.b.example.org"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.b.example.org")
    );
    assert_eq!(up.hits(), 0, "a preflight reached the upstream");
    let id = r.header("x-request-id").unwrap().to_string();
    let ev = audit_of(&gw, &id);
    assert_eq!(ev["status"], 204);
    assert_eq!(ev["outcome"], "allowed");
    assert_eq!(ev["route"], "cors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallowed_preflights_get_403_without_cors_headers() {
    let (gw, up) = setup().await;
    for (origin, method, headers, detail) in [
        ("https://evil.example.com", "GET", None, "origin"),
        ("https://example.org", "GET", None, "origin"),
        ("https://evilexample.org", "GET", None, "origin"),
        ("http://app.example.com", "GET", None, "origin"),
        ("https://app.example.com", "DELETE", None, "method DELETE"),
        (
            "https://app.example.com",
            "GET",
            Some("x-trace, x-admin"),
            "header x-admin",
        ),
    ] {
        let mut h = vec![
            ("origin", origin),
            ("access-control-request-method", method),
        ];
        if let Some(x) = headers {
            h.push(("access-control-request-headers", x));
        }
        let r = call_public(&gw, "OPTIONS", "/cors/items", &h).await;
        let v = assert_problem(&r, 403, "cors_rejected");
        assert!(v["detail"].as_str().unwrap().contains(detail), "{v}");
        assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actual_requests_carry_cors_headers_only_for_allowed_origins() {
    let (gw, up) = setup().await;
    // The upstream tries to speak CORS itself: the gateway alone does on this route.
    let r = call_public(
        &gw,
        "GET",
        "/cors/headers/access-control-allow-origin/*",
        &[ORIGIN],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = call_public(
        &gw,
        "GET",
        "/cors/headers/access-control-allow-origin/*",
        &[("origin", "https://evil.example.com")],
    )
    .await;
    assert_eq!(
        r.status, 200,
        "CORS is enforced by browsers, not by refusing"
    );
    assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
    assert_eq!(r.header("vary"), Some("Origin"));
    // An upstream Vary is kept, the gateway's added.
    let r = call_public(&gw, "GET", "/cors/headers/vary/Accept-Encoding", &[ORIGIN]).await;
    let vary: Vec<&str> = r
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(vary, vec!["Accept-Encoding", "Origin"]);
    // A refusal by a later step still carries them, so the page can read the error.
    let r = call_public(
        &gw,
        "GET",
        "/cors/x?q=%3Cscript%3Ealert(1)%3C/script%3E",
        &[ORIGIN],
    )
    .await;
    assert_problem(&r, 403, "waf_blocked");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(up.hits(), 3);
    // Not a CORS route: an OPTIONS request is an ordinary request.
    let r = call_public(
        &gw,
        "OPTIONS",
        "/plain/x",
        &[ORIGIN, ("access-control-request-method", "GET")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(cors_headers(&r).is_empty());
    assert_eq!(up.hits(), 4);
}

/// HSTS goes where the client's connection is TLS: the gateway's own listener, or a trusted
/// proxy that terminated TLS and says so (`X-Forwarded-Proto: https`) — never on a client's
/// own word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_follows_a_trusted_proxys_tls() {
    let routes = "upstreams: { d: { kind: echo } }\nroutes: [ { name: r, match: { prefix: / }, upstream: d, auth: { anonymous: true } } ]\n";
    let behind = gateway(&format!(
        "server: {{ trusted_proxies: [127.0.0.1/32] }}\n{routes}"
    ));
    let hsts = |r: &Resp| r.header("strict-transport-security").map(str::to_string);
    let r = call_public(&behind, "GET", "/x", &[("x-forwarded-proto", "https")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        hsts(&r).as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    let r = call_public(
        &behind,
        "GET",
        "/x",
        &[("forwarded", "for=192.0.2.1;proto=https")],
    )
    .await;
    assert!(hsts(&r).is_some());
    let r = call_public(&behind, "GET", "/x", &[("x-forwarded-proto", "http")]).await;
    assert_eq!(hsts(&r), None);
    let r = call_public(&behind, "GET", "/x", &[]).await;
    assert_eq!(hsts(&r), None);
    // A problem document too.
    let r = call_public(&behind, "GET", "/%2F", &[("x-forwarded-proto", "https")]).await;
    assert_eq!(r.status, 400);
    assert!(hsts(&r).is_some());

    let direct = gateway(routes);
    let r = call_public(&direct, "GET", "/x", &[("x-forwarded-proto", "https")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(hsts(&r), None, "a client's own word");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_are_on_every_response_and_internals_are_removed() {
    let (gw, _up) = setup().await;
    let expect_defaults = |r: &Resp| {
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(
            r.header("content-security-policy"),
            Some("default-src 'none'; frame-ancestors 'none'")
        );
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(
            r.header("cross-origin-resource-policy"),
            Some("same-origin")
        );
        assert!(r.header("permissions-policy").is_some());
        assert_eq!(
            r.header("strict-transport-security"),
            None,
            "HSTS only on TLS"
        );
    };
    // Forwarded, with revealing headers from the upstream.
    for (name, value) in [
        ("server", "Apache"),
        ("x-powered-by", "PHP"),
        ("x-aspnet-version", "4.0"),
        ("x-debug-token", "abc"),
    ] {
        let r = call_public(&gw, "GET", &format!("/headers/{name}/{value}"), &[]).await;
        assert_eq!(r.status, 200);
        expect_defaults(&r);
        assert_eq!(r.header(name), None, "{name} leaked");
    }
    // The upstream's own CSP is replaced by the gateway's.
    let r = call_public(
        &gw,
        "GET",
        "/headers/content-security-policy/default-src%20*",
        &[],
    )
    .await;
    expect_defaults(&r);
    // Refused by the gateway, and unrouted.
    let r = call_public(&gw, "GET", "/../x", &[]).await;
    assert_eq!(r.status, 400);
    expect_defaults(&r);
    // A route's overrides: its own frame options, CSP off (the upstream's passes).
    let r = call_public(
        &gw,
        "GET",
        "/framed/headers/content-security-policy/default-src%20'self'",
        &[],
    )
    .await;
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src%20'self'")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_are_replaced_and_the_original_is_audited_masked() {
    let (gw, _up) = setup().await;
    let r = call_public(&gw, "GET", "/crash", &[]).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("x-exception"), None);
    assert_eq!(r.header("server"), None);
    let v = r.json();
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(v["request_id"], id.as_str());
    assert_eq!(v["status"], 500);
    assert_eq!(v["title"], "Internal Server Error");
    assert_eq!(v["type"], "about:blank");
    let text = r.text();
    for leak in ["Traceback", "hunter2", "db.py", "10.0.0.5"] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
    let ev = audit_of(&gw, &id);
    let original = ev["upstream_error"]["body"].as_str().unwrap();
    assert_eq!(ev["upstream_error"]["status"], 500);
    assert!(original.starts_with("Traceback"), "{original}");
    assert!(
        original.contains("postgres://app:****@10.0.0.5"),
        "{original}"
    );
    assert!(original.contains("password=****"), "{original}");
    assert!(original.contains("a***@example.com"), "{original}");
    assert!(!original.contains("hunter2"), "{original}");
    // A 5xx the upstream sends with a JSON body is replaced just the same.
    let r = call_public(&gw, "GET", "/status/503", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["title"], "Service Unavailable");
    // 4xx pass by default…
    let r = call_public(&gw, "GET", "/status/404", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["upstream"], "app");
    // … and are replaced where the route says so, except the kept ones.
    let r = call_public(&gw, "GET", "/e4/status/404", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["title"], "Not Found");
    assert!(r.json().get("upstream").is_none());
    let r = call_public(&gw, "GET", "/e4/status/409", &[]).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["upstream"], "app");
}

/// Credentials an upstream error page writes without `key: value` — in XML elements, HTML
/// table cells and form fields, PHP and Ruby dumps, under `pass` or `signature`, an OAuth
/// `code` in a logged URL — are masked in the audit excerpt like any other; the error code an
/// operator needs stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_markup_and_dumps_of_an_upstream_error_are_masked_in_audit() {
    let gw = gateway(
        r#"waf: { mode: off }
upstreams:
  broken:
    kind: static
    responses:
      - match: "GET /login"
        status: 500
        headers: { content-type: text/html }
        body: |
          <h1>Error E42</h1><pre>{"code":"E42","user":"bob","pass":"hunter2-a"}</pre>
          <form><input name="password" value="hunter2-b"></form>
          <table><tr><td>password</td><td>hunter2-c</td></tr></table>
          <soap><password>hunter2-d</password><apiKey>AKIA1234567890</apiKey></soap>
          Array ( [user] => bob [password] => hunter2-e )
          $config = array('password' => 'hunter2-f',);
          {"email"=>"bob@example.io", "password"=>"hunter2-g"}
          {"signature":"c2lnbmF0dXJlLXNlY3JldA"}
          GET /cb?code=SplxlOBeZQQYbYS6WxSbIA&state=xyz
routes:
  - { name: broken, match: { prefix: / }, upstream: broken }
"#,
    );
    let r = call_public(&gw, "GET", "/login", &[]).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let id = r.header("x-request-id").unwrap().to_string();
    let ev = audit_of(&gw, &id);
    let original = ev["upstream_error"]["body"].as_str().unwrap();
    for leak in [
        "hunter2",
        "AKIA1234567890",
        "c2lnbmF0dXJl",
        "SplxlOBeZQQYbYS6WxSbIA",
        "bob@",
    ] {
        assert!(!original.contains(leak), "{leak}: {original}");
    }
    for kept in [
        r#""code":"E42""#,
        r#""pass":"****""#,
        r#"<input name="password" value="****">"#,
        "<td>password</td><td>****</td>",
        "<password>****</password>",
        "<apiKey>****</apiKey>",
        "[password] => ****",
        "'password' => '****'",
        r#""password"=>"****""#,
        r#""signature":"****""#,
        "?code=****&state=xyz",
    ] {
        assert!(original.contains(kept), "{kept}: {original}");
    }
    // Still healthy afterwards.
    assert_eq!(call_public(&gw, "GET", "/nothing", &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_fields_are_removed_by_name_and_path() {
    let (gw, _up) = setup().await;
    let r = call_public(&gw, "GET", "/filtered/doc", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v,
        serde_json::json!({
            "id": "o-7",
            "status": "shipped",
            "owner": "alice",
            "customer": {"name": "Alice", "address": {"city": "Berlin", "street": "Unter den Linden 1"}},
            "items": [
                {"sku": "A-1", "qty": 2, "price": 10.5},
                {"sku": "B-2", "qty": 1, "price": 99.0}
            ]
        })
    );
    assert_eq!(
        r.header("etag"),
        None,
        "the ETag described the unfiltered body"
    );
    assert_eq!(
        r.header("content-length").unwrap(),
        r.text().len().to_string()
    );
    // HEAD: the GET's body would be filtered, so the upstream's length and tag are not told
    // (they would give away the size of what the filter hides).
    let r = call_public(&gw, "HEAD", "/filtered/doc", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag"), None);
    assert_eq!(r.header("content-length"), None);
    assert!(r.text().is_empty());
    // The upstream was not invited to compress what must be filtered, nor to compare the
    // client's validators with its whole body's tag (a 304 to a guessed tag would tell what
    // the filter hides).
    let validators = [
        ("accept-encoding", "gzip, br"),
        ("if-none-match", "W/\"1b-guess\""),
        ("if-match", "\"guess\""),
        ("if-range", "\"guess\""),
        ("range", "bytes=0-"),
    ];
    let r = call_public(&gw, "GET", "/filtered/echo", &validators).await;
    assert_eq!(r.status, 200);
    for (name, _) in validators {
        assert!(
            r.json()["headers"].get(name).is_none(),
            "{name}: {}",
            r.text()
        );
    }
    // A write keeps its preconditions (If-Match guards against lost updates).
    let r = call_public(
        &gw,
        "PUT",
        "/filtered/echo",
        &[("if-match", "\"v2\""), ("if-none-match", "*")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["if-match"], "\"v2\"", "{}", r.text());
    assert_eq!(r.json()["headers"]["if-none-match"], "*", "{}", r.text());
    // Where nothing rewrites the body, they go on: caches and conditional requests work.
    let r = call_public(&gw, "GET", "/echo", &validators).await;
    assert_eq!(r.status, 200);
    for (name, value) in validators {
        assert_eq!(r.json()["headers"][name], value, "{name}: {}", r.text());
    }
    // Not JSON: withheld (default policy), a refusal of the response step.
    let r = call_public(&gw, "GET", "/filtered/plain", &[]).await;
    let v = assert_problem(&r, 502, "response_filter_failed");
    assert!(!r.text().contains("alice@example.com"));
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["stage"], "response");
    assert_eq!(ev["reason"], "response_filter_failed");
    // With on_unfilterable: pass, unfilterable bodies go through unchanged…
    let r = call_public(&gw, "GET", "/passing/plain", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("alice@example.com"));
    // … including one larger than max_bytes (64), whole.
    let r = call_public(&gw, "GET", "/passing/doc", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        portcullis_test_support::upstream::sample_document()
    );
}

/// A `static` upstream answers HEAD with the headers GET gets, its `Content-Length` included,
/// and no body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_answers_to_head_tell_the_length_of_get() {
    let gw = gateway(
        "upstreams:\n  s:\n    kind: static\n    responses:\n      - { match: \"GET /items/{id}\", json: { id: 1, name: box } }\nroutes:\n  - { name: items, match: { prefix: /items }, upstream: s }\n",
    );
    let got = call_public(&gw, "GET", "/items/1", &[]).await;
    assert_eq!(got.status, 200);
    let len = got.text().len();
    assert!(len > 0);
    assert_eq!(got.header("content-length"), Some(len.to_string().as_str()));
    let head = call_public(&gw, "HEAD", "/items/1", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(head.header("content-type"), got.header("content-type"));
    assert!(head.text().is_empty());
}
