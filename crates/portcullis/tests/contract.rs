//! The API contract end to end through the real binary: an OpenAPI document (two files, `$ref`
//! across them) defines a route group in front of a real upstream. Undocumented operations,
//! bad parameters, bad bodies, undeclared media types and parse-limit breaches are refused
//! with the right status and a problem body listing each violation — and reach no upstream;
//! `strip` removes unknown fields before forwarding; `detect` only records; responses keep only
//! declared fields and their breaches are audited; a bad document fails `portcullis check`
//! with the file and JSON pointer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

const SPEC: &str = r##"openapi: 3.0.3
info: { title: orders, version: "1" }
paths:
  /orders:
    get:
      operationId: listOrders
      parameters:
        - { name: limit, in: query, schema: { type: integer, minimum: 1, maximum: 50 } }
        - { name: status, in: query, schema: { type: array, items: { type: string, enum: [new, paid] } }, style: form, explode: false }
        - { name: x-tenant, in: header, required: true, schema: { type: string, pattern: "^[a-z]+$" } }
        - { name: ids, in: query, schema: { type: array, items: { type: integer } } }
      responses:
        "200": { description: ok }
    post:
      operationId: createOrder
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "common.yaml#/components/schemas/Order" }
      responses:
        "201": { description: created }
  /orders/{id}:
    parameters:
      - { name: id, in: path, required: true, schema: { type: integer, format: int32, minimum: 1 } }
    get:
      operationId: getOrder
      parameters:
        - { name: theme, in: cookie, schema: { type: string, enum: [dark, light] } }
      responses:
        "200": { description: ok }
    delete:
      operationId: deleteOrder
      responses:
        "204": { description: gone }
  /search:
    get:
      operationId: search
      parameters:
        - name: filter
          in: query
          style: deepObject
          schema:
            type: object
            properties:
              color: { type: string }
              owner: { type: string, readOnly: true }
        - name: where
          in: query
          content:
            application/json:
              schema: { type: object, properties: { name: { type: string } } }
      responses:
        "200": { description: ok }
  /plain/{id}:
    get:
      operationId: getPlain
      parameters:
        - { name: id, in: path, required: true, schema: { type: string } }
      responses:
        "200":
          description: the order document, as JSON
          content:
            application/json:
              schema: { type: object, properties: { id: { type: string } } }
  /doc/{id}:
    get:
      operationId: getDoc
      parameters:
        - { name: id, in: path, required: true, schema: { type: string } }
      responses:
        "200":
          description: the order document
          content:
            application/json:
              schema:
                type: object
                properties:
                  id: { type: string }
                  status: { type: string, enum: [new, paid] }
                  items:
                    type: array
                    items:
                      type: object
                      properties:
                        sku: { type: string }
                        qty: { type: integer }
"##;

const COMMON: &str = r##"components:
  schemas:
    Order:
      type: object
      required: [email, items]
      properties:
        id: { type: string, readOnly: true }
        email: { type: string, format: email }
        note: { type: string, nullable: true, maxLength: 20 }
        items:
          type: array
          minItems: 1
          items: { $ref: "#/components/schemas/Line" }
    Line:
      type: object
      additionalProperties: false
      required: [sku, qty]
      properties:
        sku: { type: string }
        qty: { type: integer, minimum: 1 }
"##;

struct Setup {
    gw: Gateway,
    up: TestUpstream,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let up = TestUpstream::start("orders").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("orders.yaml"), SPEC).unwrap();
    std::fs::write(dir.path().join("common.yaml"), COMMON).unwrap();
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
waf: {{ mode: off }}
routes:
  - name: api
    match: {{ prefix: /api }}
    upstream: app
    rewrite: {{ replace_prefix: "" }}
    openapi:
      spec: orders.yaml
      limits: {{ max_depth: 6, max_array_items: 20 }}
      max_violations: 5
      responses: {{ declared_only: true, validate: detect }}
  - name: strip
    match: {{ prefix: /strip }}
    upstream: app
    max_body_bytes: 1KiB
    openapi: {{ spec: orders.yaml, unknown_fields: strip, unknown_query: allow }}
  - name: detect
    match: {{ prefix: /detect }}
    upstream: app
    openapi: {{ spec: orders.yaml, mode: detect }}
  - name: guarded
    match: {{ prefix: /guarded }}
    upstream: app
    waf: {{ mode: block }}
    openapi: {{ spec: orders.yaml }}
"#,
        up = up.url(),
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    Setup { gw, up, _dir: dir }
}

async fn call(s: &Setup, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    send(req(
        method,
        &format!("{}{path}", s.gw.url("public")),
        headers,
        body,
    ))
    .await
}

/// A 400 contract violation listing exactly these (location, message) pairs; nothing reached
/// the upstream.
fn assert_violations(s: &Setup, r: &Resp, want: &[(&str, &str)]) {
    let v = assert_problem(r, 400, "contract_violation");
    let got: Vec<(String, String)> = v["violations"]
        .as_array()
        .unwrap_or_else(|| panic!("no violations: {v}"))
        .iter()
        .map(|x| {
            (
                x["location"].as_str().unwrap().to_string(),
                x["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(l, m)| (l.to_string(), m.to_string()))
        .collect();
    assert_eq!(got, want, "{v}");
    assert_eq!(s.up.hits(), 0, "a refused request reached the upstream");
}

const JSON: (&str, &str) = ("content-type", "application/json");
const TENANT: (&str, &str) = ("x-tenant", "acme");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undocumented_operations_are_refused() {
    let s = setup().await;
    let r = call(&s, "GET", "/api/invoices", &[], "").await;
    assert_problem(&r, 404, "route_not_found");
    let r = call(&s, "GET", "/api/orders/1/items", &[], "").await;
    assert_problem(&r, 404, "route_not_found");
    let r = call(&s, "PUT", "/api/orders/1", &[], "").await;
    assert_problem(&r, 405, "method_not_allowed");
    let allow = r.header("allow").unwrap();
    assert!(allow.contains("GET") && allow.contains("DELETE"), "{allow}");
    let r = call(&s, "PATCH", "/api/orders", &[JSON], "{}").await;
    assert_problem(&r, 405, "method_not_allowed");
    assert_eq!(s.up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_requests_reach_the_upstream_unchanged() {
    let s = setup().await;
    let r = call(
        &s,
        "GET",
        "/api/orders?limit=5&status=new,paid",
        &[TENANT],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r#"{"email":"a@example.com","note":null,"items":[{"sku":"A-1","qty":2}]}"#;
    let r = call(&s, "POST", "/api/orders", &[JSON], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&s, "DELETE", "/api/orders/7", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.up.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].uri, "/orders?limit=5&status=new,paid");
    assert_eq!(seen[1].uri, "/orders");
    assert_eq!(seen[1].body, body.as_bytes());
    assert_eq!(seen[2].method, "DELETE");
    assert_eq!(seen[2].uri, "/orders/7");
    let id = r.header("x-request-id").unwrap().to_string();
    let ev = audit_of(&s.gw, &id);
    assert_eq!(ev["contract"]["operation"], "deleteOrder");
    assert_eq!(ev["contract"]["mode"], "block");
    assert!(ev["contract"].get("request_violations").is_none(), "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_checked_by_type_range_enum_pattern_and_presence() {
    let s = setup().await;
    let r = call(&s, "GET", "/api/orders?limit=0", &[TENANT], "").await;
    assert_violations(&s, &r, &[("query:limit", "must be >= 1")]);
    let r = call(&s, "GET", "/api/orders?limit=ten", &[TENANT], "").await;
    assert_violations(&s, &r, &[("query:limit", "must be an integer")]);
    let r = call(&s, "GET", "/api/orders?status=new,lost", &[TENANT], "").await;
    assert_violations(&s, &r, &[("query:status/1", "must be one of: new, paid")]);
    let r = call(&s, "GET", "/api/orders", &[], "").await;
    assert_violations(&s, &r, &[("header:x-tenant", "is required")]);
    let r = call(&s, "GET", "/api/orders", &[("x-tenant", "ACME")], "").await;
    assert_violations(
        &s,
        &r,
        &[("header:x-tenant", "must match the pattern ^[a-z]+$")],
    );
    let r = call(&s, "GET", "/api/orders?limit=5&limit=6", &[TENANT], "").await;
    assert_violations(&s, &r, &[("query:limit", "must not be repeated")]);
    let r = call(&s, "GET", "/api/orders?debug=1", &[TENANT], "").await;
    assert_violations(
        &s,
        &r,
        &[("query:debug", "is not a parameter of this operation")],
    );
    let r = call(&s, "GET", "/api/orders/0", &[], "").await;
    assert_violations(&s, &r, &[("path:id", "must be >= 1")]);
    let r = call(&s, "GET", "/api/orders/abc", &[], "").await;
    assert_violations(&s, &r, &[("path:id", "must be an integer")]);
    let r = call(
        &s,
        "GET",
        "/api/orders/7",
        &[("cookie", "a=1; theme=blue")],
        "",
    )
    .await;
    assert_violations(&s, &r, &[("cookie:theme", "must be one of: dark, light")]);
    // An exploded array (repeated key) is one parameter, not several.
    let r = call(&s, "GET", "/api/orders?ids=1&ids=x", &[TENANT], "").await;
    assert_violations(&s, &r, &[("query:ids/1", "must be an integer")]);
    // int32 bounds from the format.
    let r = call(&s, "GET", "/api/orders/3000000000", &[], "").await;
    assert_violations(&s, &r, &[("path:id", "must be <= 2147483647")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_checked_against_their_schema_across_files() {
    let s = setup().await;
    let r = call(
        &s,
        "POST",
        "/api/orders",
        &[JSON],
        r#"{"id":"o-1","email":"nope","items":[{"sku":"A","qty":0},{"qty":1}],"colour":"crimson"}"#,
    )
    .await;
    assert_violations(
        &s,
        &r,
        &[
            ("body:/colour", "unknown field"),
            ("body:/id", "read-only field"),
            ("body:/email", "must be a valid email"),
            ("body:/items/0/qty", "must be >= 1"),
            ("body:/items/1/sku", "is required"),
        ],
    );
    // The 400 never echoes the input.
    assert!(!r.text().contains("nope") && !r.text().contains("crimson"));
    // Capped at max_violations (5).
    let many: String = (0..8)
        .map(|i| format!(r#""x{i}":1"#))
        .collect::<Vec<_>>()
        .join(",");
    let r = call(
        &s,
        "POST",
        "/api/orders",
        &[JSON],
        &format!(r#"{{"email":"a@example.com","items":[{{"sku":"A","qty":1}}],{many}}}"#),
    )
    .await;
    let v = assert_problem(&r, 400, "contract_violation");
    assert_eq!(v["violations"].as_array().unwrap().len(), 5, "{v}");
    // `additionalProperties: false` and the field walk both see an unknown field: one
    // violation.
    let r = call(
        &s,
        "POST",
        "/api/orders",
        &[JSON],
        r#"{"email":"a@example.com","items":[{"sku":"A","qty":1,"price":2}]}"#,
    )
    .await;
    assert_violations(&s, &r, &[("body:/items/0/price", "unknown field")]);
    // nullable with maxLength.
    let r = call(
        &s,
        "POST",
        "/api/orders",
        &[JSON],
        r#"{"email":"a@example.com","note":"this note is far too long","items":[{"sku":"A","qty":1}]}"#,
    )
    .await;
    assert_violations(&s, &r, &[("body:/note", "must be at most 20 characters")]);
    // A required body that is missing.
    let r = call(&s, "POST", "/api/orders", &[JSON], "").await;
    assert_violations(&s, &r, &[("body", "is required")]);
    // A body where the operation takes none.
    let r = call(&s, "DELETE", "/api/orders/7", &[JSON], "{}").await;
    assert_violations(&s, &r, &[("body", "is not expected")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_limits_and_duplicate_keys_are_refused_before_validation() {
    let s = setup().await;
    let r = call(
        &s,
        "POST",
        "/api/orders",
        &[JSON],
        r#"{"email":"a@example.com","email":"b@example.com","items":[{"sku":"A","qty":1}]}"#,
    )
    .await;
    assert_violations(&s, &r, &[("body:/email", "duplicate key")]);
    let deep = format!("{}{}", "[".repeat(50), "]".repeat(50));
    let r = call(
        &s,
        "POST",
        "/api/orders",
        &[JSON],
        &format!(r#"{{"email":"a@example.com","items":{deep}}}"#),
    )
    .await;
    let v = assert_problem(&r, 400, "contract_violation");
    assert!(
        v["violations"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nesting deeper than 6"),
        "{v}"
    );
    let items: String = (0..21)
        .map(|_| r#"{"sku":"A","qty":1}"#)
        .collect::<Vec<_>>()
        .join(",");
    let r = call(
        &s,
        "POST",
        "/api/orders",
        &[JSON],
        &format!(r#"{{"email":"a@example.com","items":[{items}]}}"#),
    )
    .await;
    let v = assert_problem(&r, 400, "contract_violation");
    assert_eq!(v["violations"][0]["location"], "body:/items", "{v}");
    let r = call(&s, "POST", "/api/orders", &[JSON], r#"{"email":"#).await;
    let v = assert_problem(&r, 400, "contract_violation");
    assert_eq!(v["violations"][0]["location"], "body", "{v}");
    let r = call(
        &s,
        "POST",
        "/api/orders",
        &[JSON],
        r#"{"email":"a@example.com","items":[{"sku":"A","qty":9007199254740993}]}"#,
    )
    .await;
    let v = assert_problem(&r, 400, "contract_violation");
    assert_eq!(v["violations"][0]["location"], "body:/items/0/qty", "{v}");
    assert_eq!(s.up.hits(), 0);
}

/// A chunked body (no declared length) over the route's limit is refused while the contract
/// buffers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_body_over_the_limit_gets_413() {
    let s = setup().await;
    let note = "x".repeat(2048);
    let body = format!(r#"{{"email":"a@example.com","note":"{note}","items":[]}}"#);
    let raw = format!(
        "POST /strip/orders HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let (text, _) = raw_exchange(s.gw.listener("public"), raw.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.contains("urn:portcullis:problem:body_too_large"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("x-request-id:"),
        "{text}"
    );
    assert_eq!(s.up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_media_types_get_415() {
    let s = setup().await;
    for ct in [
        Some("text/plain"),
        Some("application/xml"),
        Some("application/jsonx"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let r = call(&s, "POST", "/api/orders", &headers, r#"{"a":1}"#).await;
        assert_problem(&r, 415, "unsupported_media_type");
    }
    // Parameters on the media type are fine.
    let r = call(
        &s,
        "POST",
        "/api/orders",
        &[("content-type", "Application/JSON; charset=utf-8")],
        r#"{"email":"a@example.com","items":[{"sku":"A","qty":1}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_mode_forwards_the_body_without_unknown_fields() {
    let s = setup().await;
    let r = call(
        &s,
        "POST",
        "/strip/orders?utm=x",
        &[JSON],
        r#"{"email":"a@example.com","is_admin":true,"items":[{"sku":"A","qty":1,"price":0}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/strip/orders?utm=x");
    let forwarded: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        forwarded,
        serde_json::json!({"email":"a@example.com","items":[{"sku":"A","qty":1}]})
    );
    assert_eq!(
        seen[0].header("content-length"),
        Some(seen[0].body.len().to_string().as_str())
    );
    // Read-only fields are refused even in strip mode.
    let r = call(
        &s,
        "POST",
        "/strip/orders",
        &[JSON],
        r#"{"id":"x","email":"a@example.com","items":[{"sku":"A","qty":1}]}"#,
    )
    .await;
    let v = assert_problem(&r, 400, "contract_violation");
    assert_eq!(v["violations"][0]["location"], "body:/id");
    assert_eq!(s.up.hits(), 1);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A compressed body is checked inflated: its fields against the schema, its inflated size
/// against the route's body limit; it goes upstream inflated (no Content-Encoding), stripped
/// or not. A coding the gateway cannot read is 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_are_checked_inflated() {
    let s = setup().await;
    let coded = |path: &str, coding: &str, body: Vec<u8>| {
        send(
            http::Request::builder()
                .method("POST")
                .uri(format!("{}{path}", s.gw.url("public")))
                .header("content-type", "application/json")
                .header("content-encoding", coding)
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap(),
        )
    };
    // A violation inside a compressed body is found.
    let bad = gzip(br#"{"email":"nope","items":[{"sku":"A","qty":1}]}"#);
    let r = coded("/api/orders", "gzip", bad).await;
    assert_violations(&s, &r, &[("body:/email", "must be a valid email")]);
    // A body that does not inflate, or in a coding not read: 415, naming the coding.
    for (coding, body) in [("gzip", b"{}".to_vec()), ("br", gzip(b"{}"))] {
        let r = coded("/api/orders", coding, body).await;
        let v = assert_problem(&r, 415, "unsupported_media_type");
        assert_eq!(v["violations"][0]["location"], "content-encoding", "{v}");
    }
    // Inflating past the route's body limit (1 KiB): 413.
    let note = "x".repeat(4096);
    let big = format!(r#"{{"email":"a@example.com","note":"{note}","items":[]}}"#);
    let r = coded("/strip/orders", "gzip", gzip(big.as_bytes())).await;
    let v = assert_problem(&r, 413, "body_too_large");
    assert!(v["detail"].as_str().unwrap().contains("inflates"), "{v}");
    assert_eq!(s.up.hits(), 0, "nothing refused reached the upstream");
    // A valid compressed body goes inflated …
    let ok = br#"{"email":"a@example.com","items":[{"sku":"A","qty":1}]}"#;
    let r = coded("/api/orders", "gzip", gzip(ok)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.up.requests().pop().unwrap();
    assert_eq!(seen.body.as_ref(), ok.as_slice());
    assert_eq!(seen.header("content-encoding"), None);
    assert_eq!(
        seen.header("content-length"),
        Some(ok.len().to_string().as_str())
    );
    // … and so does one with fields stripped.
    let extra = gzip(br#"{"email":"a@example.com","is_admin":true,"items":[{"sku":"A","qty":1}]}"#);
    let r = coded("/strip/orders", "gzip", extra).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.up.requests().pop().unwrap();
    let forwarded: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        forwarded,
        serde_json::json!({"email":"a@example.com","items":[{"sku":"A","qty":1}]})
    );
    assert_eq!(seen.header("content-encoding"), None);
    assert_eq!(s.up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waf_takes_declared_arrays_for_arrays_not_pollution() {
    let s = setup().await;
    let r = call(&s, "GET", "/guarded/orders?ids=1&ids=2", &[TENANT], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // An undeclared repeated parameter is still parameter pollution to the WAF.
    let r = call(&s, "GET", "/guarded/orders?limit=1&limit=2", &[TENANT], "").await;
    assert_problem(&r, 403, "waf_blocked");
    assert_eq!(s.up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_mode_records_and_forwards() {
    let s = setup().await;
    let r = call(&s, "GET", "/detect/orders?limit=0", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.up.hits(), 1);
    let id = r.header("x-request-id").unwrap().to_string();
    let ev = audit_of(&s.gw, &id);
    assert_eq!(ev["outcome"], "allowed");
    assert_eq!(ev["contract"]["mode"], "detect");
    let got: Vec<&str> = ev["contract"]["request_violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        vec!["header:x-tenant: is required", "query:limit: must be >= 1"]
    );
    let metrics = get(&format!("{}/metrics", s.gw.admin_url())).await.text();
    assert!(
        metrics.contains(
            r#"portcullis_contract_violations_total{route="detect",operation="listOrders",direction="request",mode="detect"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_keep_declared_fields_and_breaches_are_audited() {
    let s = setup().await;
    let r = call(&s, "GET", "/api/doc/7", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // sample_document: id, status "shipped" (not in the enum), owner, internal_margin,
    // customer{…}, items[{sku, qty, price, cost}]
    assert_eq!(
        r.json(),
        serde_json::json!({
            "id": "o-7",
            "status": "shipped",
            "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}]
        })
    );
    let id = r.header("x-request-id").unwrap().to_string();
    let ev = audit_of(&s.gw, &id);
    let got: Vec<&str> = ev["contract"]["response_violations"]
        .as_array()
        .unwrap_or_else(|| panic!("{ev}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        got.contains(&"body:/status: must be one of: new, paid"),
        "{got:?}"
    );
    assert!(
        got.contains(&"body:/internal_margin: unknown field"),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_parameters_are_closed_and_raw_semicolons_refused() {
    let s = setup().await;
    // Operator injection through a qs-style parser, a read-only property, the bare name, a
    // JSON parameter with an extra key and one with a duplicate key, a raw `;`.
    let cases: [(&str, (&str, &str)); 6] = [
        (
            "filter[color]=red&filter[$where]=sleep(5000)",
            ("query:filter/$where", "unknown field"),
        ),
        (
            "filter[owner]=me",
            ("query:filter/owner", "read-only field"),
        ),
        (
            "filter=anything",
            (
                "query:filter",
                "must be in deepObject style (name[property]=value)",
            ),
        ),
        (
            "where=%7B%22name%22%3A%22a%22%2C%22%24ne%22%3A1%7D",
            ("query:where/$ne", "unknown field"),
        ),
        (
            "where=%7B%22name%22%3A%22a%22%2C%22name%22%3A%22b%22%7D",
            ("query:where/name", "duplicate key"),
        ),
        (
            "filter[color]=red;admin=1",
            (
                "query",
                "must not contain a raw `;` (some frameworks split the query on it): encode it \
                 as %3B",
            ),
        ),
    ];
    for (query, want) in cases {
        let r = call(&s, "GET", &format!("/api/search?{query}"), &[], "").await;
        assert_violations(&s, &r, &[want]);
    }
    // What follows a `]` is dropped by qs and PHP; a name that does not decode cannot be judged.
    // (Under `unknown_query: reject` neither is a declared name either.)
    let r = call(
        &s,
        "GET",
        "/api/search?filter[$where]x=sleep(5000)",
        &[],
        "",
    )
    .await;
    assert_violations(
        &s,
        &r,
        &[
            (
                "query:filter",
                "must be in deepObject style (name[property]=value)",
            ),
            (
                "query:filter[$where]x",
                "is not a parameter of this operation",
            ),
        ],
    );
    let r = call(&s, "GET", "/api/search?filter%5B%24where%FF%5D=1", &[], "").await;
    let v = assert_problem(&r, 400, "contract_violation");
    assert!(
        v["violations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["location"] == "query"
                && x["message"] == "parameter names must be UTF-8 text once percent-decoded"),
        "{v}"
    );
    assert_eq!(s.up.hits(), 0);
    // A declared header under its `_` spelling, which CGI-style frameworks read as it.
    let r = call(
        &s,
        "GET",
        "/api/orders",
        &[TENANT, ("x_tenant", "other")],
        "",
    )
    .await;
    assert_violations(
        &s,
        &r,
        &[(
            "header:x-tenant",
            "must be sent as x-tenant: a name with `_` for `-` is the same header to some \
             frameworks",
        )],
    );
    let r = call(
        &s,
        "GET",
        "/api/search?filter[color]=red&where=%7B%7D",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.up.hits(), 1);
    // `strip`: the undeclared pairs are left out of what goes upstream.
    let r = call(
        &s,
        "GET",
        "/strip/search?filter[color]=red&filter%5B%24where%5D=1&x=1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["uri"], "/strip/search?filter[color]=red&x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_only_withholds_json_mislabelled_as_text() {
    let s = setup().await;
    // The upstream answers with its whole document as `text/plain`: the operation declares
    // only JSON, so nothing of it may pass unread.
    let r = call(&s, "GET", "/api/plain/7", &[], "").await;
    let v = assert_problem(&r, 502, "response_filter_failed");
    assert!(!r.text().contains("internal_margin"), "{v}");
    assert_eq!(s.up.hits(), 1);
}

/// A Swashbuckle-style document (.NET lists `application/json`, `text/json` and
/// `application/*+json` with one schema, and `text/plain` among response types), with
/// springdoc's `*/*`, a form body and a binary download.
const DOTNET: &str = r##"openapi: 3.0.1
info: { title: users, version: "1" }
paths:
  /users:
    post:
      operationId: createUser
      requestBody:
        content:
          application/json: { schema: { $ref: "#/components/schemas/UserDto" } }
          text/json: { schema: { $ref: "#/components/schemas/UserDto" } }
          application/*+json: { schema: { $ref: "#/components/schemas/UserDto" } }
      responses: { "200": { description: ok } }
  /forms:
    post:
      operationId: postForm
      requestBody:
        content:
          application/x-www-form-urlencoded: { schema: { $ref: "#/components/schemas/UserDto" } }
          multipart/form-data: { schema: { $ref: "#/components/schemas/UserDto" } }
          text/plain: { schema: { type: string } }
      responses: { "200": { description: ok } }
  /users/{id}:
    get:
      operationId: getUser
      parameters: [{ name: id, in: path, required: true, schema: { type: string } }]
      responses:
        "200":
          description: ok
          content:
            text/plain: { schema: { $ref: "#/components/schemas/UserDto" } }
            application/json: { schema: { $ref: "#/components/schemas/UserDto" } }
            text/json: { schema: { $ref: "#/components/schemas/UserDto" } }
  /spring/{id}:
    get:
      operationId: getSpring
      parameters: [{ name: id, in: path, required: true, schema: { type: string } }]
      responses:
        "200":
          description: ok
          content:
            "*/*": { schema: { $ref: "#/components/schemas/UserDto" } }
  /files/{id}:
    get:
      operationId: getFile
      parameters: [{ name: id, in: path, required: true, schema: { type: string } }]
      responses:
        "200":
          description: ok
          content:
            image/png: { schema: { type: string, format: binary } }
components:
  schemas:
    UserDto:
      type: object
      properties:
        name: { type: string }
        isAdmin: { type: boolean, readOnly: true }
"##;

const USER_JSON: &str = r#"{"name":"x","isAdmin":false,"passwordHash":"$2b$12$secret"}"#;
const USER_XML: &str =
    "<UserDto><name>x</name><passwordHash>$2b$12$secret</passwordHash></UserDto>";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot-really";

/// An upstream that answers by the last path segment: `text-json` and `text-plain` the user
/// with its password hash under that type, `xml` the same as XML, `png` an image.
async fn typed_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or("");
                let (ct, body): (&str, &[u8]) = match path.rsplit('/').next() {
                    Some("text-json") => ("text/json; charset=utf-8", USER_JSON.as_bytes()),
                    Some("text-plain") => ("text/plain; charset=utf-8", USER_JSON.as_bytes()),
                    Some("xml") => ("application/xml", USER_XML.as_bytes()),
                    _ => ("image/png", PNG),
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.write_all(body).await;
            });
        }
    });
    addr
}

/// `/net`: the DOTNET document in front of the recording upstream; `/resp`: the same document,
/// `declared_only`, in front of [`typed_upstream`].
async fn dotnet_setup() -> Setup {
    let up = TestUpstream::start("users").await;
    let typed = typed_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.yaml"), DOTNET).unwrap();
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }}, typed: {{ targets: ["http://{typed}"] }} }}
waf: {{ mode: off }}
routes:
  - name: net
    match: {{ prefix: /net }}
    upstream: app
    rewrite: {{ replace_prefix: "" }}
    openapi: {{ spec: users.yaml }}
  - name: resp
    match: {{ prefix: /resp }}
    upstream: typed
    rewrite: {{ replace_prefix: "" }}
    openapi: {{ spec: users.yaml, responses: {{ declared_only: true }} }}
  - name: pass
    match: {{ prefix: /pass }}
    upstream: app
    rewrite: {{ replace_prefix: "" }}
    openapi: {{ spec: users.yaml, unchecked_bodies: pass }}
"#,
        up = up.url(),
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    Setup { gw, up, _dir: dir }
}

/// A 415 whose one violation is the `content-type` with this message.
fn assert_415(r: &Resp, message: &str) {
    let v = assert_problem(r, 415, "unsupported_media_type");
    assert_eq!(
        v["violations"],
        serde_json::json!([{"location": "content-type", "message": message}]),
        "{v}"
    );
}

/// JSON sent as `text/json` (read as JSON by ASP.NET Core) is checked as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_like_request_types_are_validated_as_json() {
    let s = dotnet_setup().await;
    let body = r#"{"name":"x","isAdmin":true,"junk":1}"#;
    for ct in [
        "text/json",
        "Text/JSON; charset=utf-8",
        "application/json",
        "application/vnd.users+json",
    ] {
        let r = call(&s, "POST", "/net/users", &[("content-type", ct)], body).await;
        assert_violations(
            &s,
            &r,
            &[
                ("body:/isAdmin", "read-only field"),
                ("body:/junk", "unknown field"),
            ],
        );
    }
    let r = call(
        &s,
        "POST",
        "/net/users",
        &[("content-type", "text/json")],
        r#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.up.hits(), 1);
}

const MULTIPART_UPLOAD: &str =
    "--b\r\ncontent-disposition: form-data; name=\"isAdmin\"\r\n\r\ntrue\r\n--b--\r\n";

/// A body the gateway cannot read under a schema with fields (a multipart upload) is refused,
/// not passed unchecked; a string schema makes a type opaque.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_cannot_be_checked_against_their_schema_get_415() {
    let s = dotnet_setup().await;
    let multipart = ("content-type", "multipart/form-data; boundary=b");
    let r = call(&s, "POST", "/net/forms", &[multipart], MULTIPART_UPLOAD).await;
    assert_415(
        &r,
        "a body matching multipart/form-data cannot be checked against its schema: only JSON \
         and form (application/x-www-form-urlencoded) bodies are",
    );
    // `application/*+json` matches this malformed type, which is not read as JSON.
    let odd = ("content-type", "application/x y+json");
    let r = call(&s, "POST", "/net/users", &[odd], r#"{"isAdmin":true}"#).await;
    assert_415(
        &r,
        "a body matching application/*+json cannot be checked against its schema: only JSON \
         and form (application/x-www-form-urlencoded) bodies are",
    );
    assert_eq!(s.up.hits(), 0, "a refused request reached the upstream");
    let r = call(
        &s,
        "POST",
        "/net/forms",
        &[("content-type", "text/plain")],
        "hello",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.up.hits(), 1);
    // The load said so (`portcullis check` prints it too).
    assert!(
        s.gw.stderr_text()
            .contains("cannot be checked against their schema"),
        "{}",
        s.gw.stderr_text()
    );
    // A route that takes such bodies unchecked, said in so many words.
    let r = call(&s, "POST", "/pass/forms", &[multipart], MULTIPART_UPLOAD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.up.hits(), 2);
    // Not a body only a JSON-like (or wildcard) range takes: backends parse it as JSON.
    let r = call(&s, "POST", "/pass/users", &[odd], r#"{"isAdmin":true}"#).await;
    assert_415(
        &r,
        "a body matching application/*+json cannot be checked against its schema: only JSON \
         and form (application/x-www-form-urlencoded) bodies are",
    );
    // Not a form: forms are read whatever `unchecked_bodies` says.
    let form = ("content-type", "application/x-www-form-urlencoded");
    let r = call(&s, "POST", "/pass/forms", &[form], "name=x&isAdmin=true").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(s.up.hits(), 2, "a refused request reached the upstream");
}

/// A form is read as the WHATWG parser reads it and checked against its schema as a JSON body
/// is: a read-only field, another spelling of one (ASP.NET binds `IsAdmin` to `isAdmin`), a
/// value of the wrong type are refused with nothing upstream; a valid form goes on as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_are_checked_against_their_schema() {
    let s = dotnet_setup().await;
    let form = ("content-type", "application/x-www-form-urlencoded");
    for (body, location, message) in [
        ("name=x&isAdmin=true", "body:/isAdmin", "read-only field"),
        (
            "name=x&IsAdmin=true",
            "body:/IsAdmin",
            "is another spelling of the field isAdmin",
        ),
        ("name=x&role=admin", "body:/role", "unknown field"),
        ("name=x&name=y", "body:/name", "must not be repeated"),
        ("name=%FF", "body:/name", "must be valid UTF-8 text"),
    ] {
        let r = call(&s, "POST", "/net/forms", &[form], body).await;
        assert_violations(&s, &r, &[(location, message)]);
    }
    let latin1 = (
        "content-type",
        "application/x-www-form-urlencoded; charset=iso-8859-1",
    );
    let r = call(&s, "POST", "/net/forms", &[latin1], "name=x").await;
    assert_415(
        &r,
        "a form request body must be UTF-8 (charset utf-8 or none)",
    );
    assert_eq!(s.up.hits(), 0, "a refused request reached the upstream");
    let good = "name=Ann+O%27Neil%20%E2%9C%93&&";
    let r = call(&s, "POST", "/net/forms", &[form], good).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/forms");
    assert_eq!(seen[0].body, good.as_bytes());
    assert_eq!(
        seen[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

/// A JSON body in another charset is refused: UTF-7 would hide `","role":"admin` from a check
/// that reads the bytes as UTF-8 (Express decodes them by the charset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_in_another_charset_get_415() {
    let s = dotnet_setup().await;
    let body = r#"{"name":"x+ACIALAAi-isAdmin+ACIAOgAi-true"}"#;
    for ct in [
        "application/json; charset=utf-7",
        "application/json; charset=\"UTF-7\"",
        "text/json; charset=utf-16",
        "application/json; charset=utf-8; charset=utf-7",
        "application/vnd.users+json;charset=iso-8859-1",
    ] {
        let r = call(&s, "POST", "/net/users", &[("content-type", ct)], body).await;
        assert_415(
            &r,
            "a JSON request body must be UTF-8 (charset utf-8 or none)",
        );
    }
    assert_eq!(s.up.hits(), 0, "a refused request reached the upstream");
    for ct in [
        "application/json; charset=\"UTF-8\"",
        "text/json; charset=utf8",
    ] {
        let r = call(&s, "POST", "/net/users", &[("content-type", ct)], body).await;
        assert_eq!(r.status, 200, "{ct}: {}", r.text());
    }
    assert_eq!(s.up.hits(), 2);
}

/// `declared_only`: a `text/json` answer is filtered as JSON; a body the gateway cannot read
/// under a schema with fields (`text/plain` listed with the DTO, XML under `*/*`) is withheld;
/// a declared binary type passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_only_filters_json_like_and_withholds_unreadable_bodies() {
    let s = dotnet_setup().await;
    let r = call(
        &s,
        "GET",
        "/resp/users/text-json",
        &[("accept", "text/json")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"name": "x", "isAdmin": false}));
    for path in ["/resp/users/text-plain", "/resp/spring/xml"] {
        let r = call(&s, "GET", path, &[], "").await;
        assert_problem(&r, 502, "response_filter_failed");
        assert!(!r.text().contains("passwordHash"), "{path}: {}", r.text());
    }
    let r = call(&s, "GET", "/resp/files/png", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(&r.body[..], PNG);
}

/// Runs `portcullis check` on a gateway config whose one route group uses `spec`; returns
/// what it printed (it must fail).
fn check_spec(spec: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), spec).unwrap();
    let cfg = dir.path().join("gw.yaml");
    std::fs::write(
        &cfg,
        "upstreams: { d: { kind: echo } }\nroutes:\n  - { name: g, match: { prefix: /g }, upstream: d, openapi: { spec: bad.yaml } }\n",
    )
    .unwrap();
    let out = run_cli(bin(), &["check", cfg.to_str().unwrap()]);
    assert_ne!(out.status, 0, "{}", out.stdout);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("routes[0].openapi.spec"), "{text}");
    text
}

#[test]
fn a_bad_document_fails_check_with_file_and_pointer() {
    let text = check_spec(
        r#"openapi: 3.1.0
info: { title: bad, version: "1" }
paths:
  /a/{id}:
    get:
      responses: { "200": { description: ok } }
  /c:
    get:
      parameters:
        - { name: q, in: query, schema: { type: string, pattern: "([a-z" } }
      responses: { "200": { description: ok } }
"#,
    );
    assert!(text.contains("bad.yaml#/paths/~1a~1{id}"), "{text}");
    assert!(
        text.contains("bad.yaml#/paths/~1c/get/parameters/0/schema/pattern"),
        "{text}"
    );
    let text = check_spec(
        r#"openapi: 3.0.3
info: { title: bad, version: "1" }
paths:
  /b:
    post:
      requestBody:
        content:
          application/json:
            schema: { $ref: "missing.yaml#/X" }
      responses: { "200": { description: ok } }
"#,
    );
    assert!(
        text.contains("bad.yaml#/paths/~1b/post/requestBody/content/application~1json/schema"),
        "{text}"
    );
    assert!(text.contains("missing.yaml"), "{text}");
    let text = check_spec("openapi: 2.0\ninfo: { title: x, version: \"1\" }\npaths: {}\n");
    assert!(text.contains("bad.yaml#/openapi"), "{text}");
}

/// `examples/openapi.yaml` as shipped (only its addresses made ephemeral): its comment's curl
/// lines give what they promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_example_does_what_its_comments_say() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("openapi")).unwrap();
    std::fs::copy(
        root.join("examples/openapi/shop.yaml"),
        dir.path().join("openapi/shop.yaml"),
    )
    .unwrap();
    let yaml = std::fs::read_to_string(root.join("examples/openapi.yaml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0");
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let url = |p: &str| format!("{}{p}", gw.url("public"));
    let json = ("content-type", "application/json");

    assert_problem(&get(&url("/api/admin")).await, 404, "route_not_found");
    let r = send(req("DELETE", &url("/api/products/7"), &[], "")).await;
    assert_problem(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    let v = assert_problem(
        &get(&url("/api/products?limit=500&category=toys")).await,
        400,
        "contract_violation",
    );
    assert_eq!(v["violations"][0]["location"], "query:limit");
    assert_eq!(v["violations"][1]["location"], "query:category");
    let v = assert_problem(
        &get(&url("/api/products/abc")).await,
        400,
        "contract_violation",
    );
    assert_eq!(v["violations"][0]["location"], "path:id");
    let r = send(req(
        "POST",
        &url("/api/orders"),
        &[json],
        r#"{"email":"not-an-email","items":[{"product_id":1,"qty":0}],"status":"paid"}"#,
    ))
    .await;
    let v = assert_problem(&r, 400, "contract_violation");
    let locs: Vec<&str> = v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["location"].as_str().unwrap())
        .collect();
    assert_eq!(
        locs,
        vec!["body:/status", "body:/email", "body:/items/0/qty"]
    );
    let r = send(req(
        "POST",
        &url("/api/orders"),
        &[("content-type", "text/plain")],
        "hi",
    ))
    .await;
    assert_problem(&r, 415, "unsupported_media_type");
    let r = send(req(
        "POST",
        &url("/api/orders"),
        &[json],
        r#"{"email":"a@example.com","items":[{"product_id":1,"qty":2}]}"#,
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        r.json().get("fraud_score").is_none(),
        "undeclared field leaked"
    );

    let r = get(&url("/api/products")).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    for leak in ["cost_price", "internal_id", "supplier", "Apache", "PHP"] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
    assert_eq!(r.header("server"), None);
    assert_eq!(r.json()["items"][0]["price"]["amount"], 3999);
    let r = get(&url("/api/users/1")).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"id": 1, "name": "Alice", "avatar": "https://cdn.example.com/a.png"})
    );
    let r = get(&url("/api/reports/daily")).await;
    assert_eq!(r.status, 500);
    assert!(!r.text().contains("S3cr3t"), "{}", r.text());

    let r = send(req(
        "OPTIONS",
        &url("/api/orders"),
        &[
            ("origin", "https://shop.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        "",
    ))
    .await;
    assert_eq!(r.status, 204);
    let r = send(req(
        "OPTIONS",
        &url("/api/orders"),
        &[
            ("origin", "https://evil.example.net"),
            ("access-control-request-method", "POST"),
        ],
        "",
    ))
    .await;
    assert_problem(&r, 403, "cors_rejected");
    let r = send(req(
        "GET",
        &url("/api/products"),
        &[("origin", "https://m.shop.example.com")],
        "",
    ))
    .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://m.shop.example.com")
    );
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'none'")
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
}

/// Editing a file the document references (not the configuration itself) reloads the contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_document_file_is_reloaded() {
    let s = setup().await;
    let body = r#"{"email":"a@example.com","items":[{"sku":"A","qty":2}]}"#;
    let r = call(&s, "POST", "/api/orders", &[JSON], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let common = s.gw.config_path().parent().unwrap().join("common.yaml");
    std::fs::write(
        &common,
        COMMON.replace(
            "qty: { type: integer, minimum: 1 }",
            "qty: { type: integer, maximum: 1 }",
        ),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let r = call(&s, "POST", "/api/orders", &[JSON], body).await;
        if r.status == 400 {
            let v = assert_problem(&r, 400, "contract_violation");
            assert_eq!(v["violations"][0]["location"], "body:/items/0/qty", "{v}");
            assert_eq!(v["violations"][0]["message"], "must be <= 1", "{v}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not reloaded: {}",
            r.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Under `unknown_query: allow`, undeclared names pass, but not another spelling of a declared
/// one: `limit[]=1000` would reach a PHP or Express backend as `limit`, past its maximum of 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_spelling_of_a_declared_parameter_is_refused_where_unknown_names_pass() {
    let s = setup().await;
    let tenant = ("x-tenant", "acme");
    let r = call(&s, "GET", "/strip/orders?limit=5&utm=x", &[tenant], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.up.hits(), 1);
    for (query, name) in [("limit=5&limit[]=1000", "limit[]"), ("LIMIT=1000", "LIMIT")] {
        let r = call(&s, "GET", &format!("/strip/orders?{query}"), &[tenant], "").await;
        let v = assert_problem(&r, 400, "contract_violation");
        assert_eq!(
            v["violations"][0]["location"],
            format!("query:{name}"),
            "{v}"
        );
        assert_eq!(
            v["violations"][0]["message"], "is another spelling of the parameter limit",
            "{v}"
        );
    }
    assert_eq!(s.up.hits(), 1, "a refused request reached the upstream");
}
