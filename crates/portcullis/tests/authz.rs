//! Authorization end to end through the real binary: default deny, scopes with a hierarchy,
//! per-method rules and roles, resource policies, ownership (with the usual bypass attempts),
//! tenant isolation, field masks on nested JSON, Rego allow/deny/shadow/headers, step-up and
//! risk. Every refusal is checked for its status, problem body, challenge header, audit
//! decision, and that nothing reached the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use portcullis_jose::{Alg, Signer};
use serde_json::{Map, Value, json};

const ISS: &str = "https://issuer.test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const POLICY: &str = r#"
package gw

import rego.v1

default allow := false

allow if {
	"read:orders" in input.principal.scopes
	input.request.method == "GET"
	input.request.params.region != "blocked"
}

reasons contains "read:orders is required" if not "read:orders" in input.principal.scopes

reasons contains "only GET" if input.request.method != "GET"

reasons contains "region blocked" if input.request.params.region == "blocked"

decision := {
	"allow": allow,
	"reasons": [r | some r in reasons],
	"headers": {"x-policy-checked": input.principal.subject},
}

deny_everything := false

bad_deny := {"allow": false, "reasons": [7]}

# Identity headers a client sent (in any spelling) never reach a policy.
identity_guard := {
	"allow": count({n | some n, _ in input.request.headers; n in {"x-user-id", "x_user_id", "x-roles", "x-authenticated", "x-tenant-id"}}) == 0,
	"reasons": ["a client-sent identity header reached the policy"],
}

# The admin host is not served here; what the policy saw goes upstream.
host_guard := {
	"allow": input.request.host != "admin.example.com",
	"reasons": [sprintf("host %v", [input.request.host])],
	"headers": {"x-policy-checked": input.request.host},
}
"#;

/// A signing key for the test issuer, its public half written to `keys.json` in `dir`.
fn issuer_key(dir: &std::path::Path) -> Signer {
    let key = Signer::generate(Alg::EdDSA, "k1".into()).unwrap();
    std::fs::write(
        dir.join("keys.json"),
        json!({"keys": [key.public_jwk()]}).to_string(),
    )
    .unwrap();
    key
}

struct Env {
    _dir: tempfile::TempDir,
    gw: Gateway,
    up: TestUpstream,
    key: Signer,
}

async fn setup() -> Env {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let key = issuer_key(dir.path());
    std::fs::write(dir.path().join("policy.rego"), POLICY).unwrap();
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
server: {{ trusted_proxies: [127.0.0.1/32] }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
# Authorization is under test: the WAF records but does not refuse (its parameter-pollution
# rule would refuse `?id=alice&id=bob` before the ownership rule sees it).
waf: {{ mode: detect }}
auth:
  jwt:
    main:
      issuer: "{ISS}"
      jwks_file: keys.json
      algorithms: [EdDSA]
      audiences: [api]
      claims: {{ roles: [realm_access.roles], tenant: org }}
authz:
  scope_hierarchy:
    admin:orders: [write:orders]
    write:orders: [read:orders]
  policies:
    - {{ name: reports-read, resources: ["/reports/**"], actions: [read], scopes: {{ any_of: [read:reports] }} }}
    - {{ name: reports-audit, resources: ["/reports/**"], roles: {{ any_of: [auditor] }}, mode: shadow }}
    - {{ name: mfa-reports-read, resources: ["/mfa-reports/**"], actions: [read], scopes: {{ any_of: [read:reports] }} }}
  rego: {{ files: [policy.rego], timeout: 5s }}
  policy_headers: [x-policy-checked]
  risk:
    country_header: x-country
    risky_countries: [KP]
    device_header: x-device-id
    strong_acr: [urn:mfa]
routes:
  - name: orders
    match: {{ path: "/orders/{{id}}", methods: [GET, PUT, DELETE] }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz:
      scopes: {{ any_of: [read:orders] }}
      methods:
        PUT: {{ scopes: {{ all_of: [write:orders] }} }}
        DELETE: {{ roles: {{ any_of: [admin] }} }}
  - {{ name: bare, match: {{ prefix: /bare }}, upstream: app, auth: {{ methods: [jwt] }} }}
  - {{ name: any, match: {{ prefix: /any }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ allow: any-authenticated }} }}
  - {{ name: reports, match: {{ prefix: /reports }}, upstream: app, auth: {{ methods: [jwt] }} }}
  - {{ name: mfa-reports, match: {{ prefix: /mfa-reports }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ require: {{ acr: [urn:mfa] }} }} }}
  - name: log
    match: {{ prefix: /log }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz:
      scopes: {{ any_of: [read:orders] }}
      methods:
        GET: {{ scopes: {{ all_of: [admin:orders] }} }}
  - name: users
    match: {{ path: "/users/{{id}}" }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ owner: {{ param: id, override_scopes: [admin:users] }} }}
  - name: tenant-orders
    match: {{ path: "/tenants/{{tenant}}/orders" }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ tenant: {{ param: tenant }} }}
  - name: tenant-header
    match: {{ prefix: /th }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ tenant: {{ header: x-tenant, upstream_header: x-verified-tenant }} }}
  - name: tenant-identity-header
    match: {{ prefix: /tid }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ tenant: {{ header: x-tenant-id, upstream_header: x-verified-tenant }} }}
  - name: doc
    match: {{ prefix: /doc }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz:
      scopes: {{ any_of: [read:orders] }}
      field_masks:
        by_scope:
          read:orders: [id, status, customer.name, items.sku, items.qty]
          billing: [items.price, customer.address.city]
          admin:orders: ["*"]
  - name: plain
    match: {{ prefix: /plain }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ scopes: {{ any_of: [read:orders] }}, field_masks: {{ by_scope: {{ read:orders: [id] }} }} }}
  - name: rego
    match: {{ path: "/rego/{{region}}" }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ rego: {{ query: data.gw.decision }} }}
  - name: rego-shadow
    match: {{ prefix: /shadow }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ allow: any-authenticated, scopes: {{ any_of: [admin:orders] }}, mode: shadow, rego: {{ query: data.gw.deny_everything, mode: shadow }} }}
  - name: step-up
    match: {{ prefix: /transfer }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ allow: any-authenticated, require: {{ acr: [urn:mfa], max_age: 5m }} }}
  - name: risky
    match: {{ prefix: /risky }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ allow: any-authenticated, risk: {{ step_up: 40, deny: 70, acr_values: [urn:mfa], max_age: 10m }} }}
  - name: lenient-risk
    match: {{ prefix: /lenient-risk }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ allow: any-authenticated, risk: {{ step_up: 90, deny: 100, acr_values: [urn:pwd], max_age: 10m }} }}
  - name: rego-bad
    match: {{ prefix: /rego-bad }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ allow: any-authenticated, rego: {{ query: data.gw.bad_deny }} }}
  - name: wild
    match: {{ prefix: /wild }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ scopes: {{ any_of: [read:orders] }}, field_masks: {{ by_scope: {{ read:orders: ["*.id", "uri.id"] }} }} }}
  - {{ name: open, match: {{ prefix: /open }}, upstream: app, auth: {{ anonymous: true }} }}
  - name: identity-guard
    match: {{ prefix: /identityguard }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ rego: {{ query: data.gw.identity_guard }} }}
  - name: host-guard
    match: {{ prefix: /hostguard }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ rego: {{ query: data.gw.host_guard }} }}
"#,
        up = up.url()
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    Env {
        _dir: dir,
        gw,
        up,
        key,
    }
}

impl Env {
    fn token(&self, extra: Value) -> String {
        let mut c: Map<String, Value> = json!({
            "iss": ISS, "sub": "alice", "aud": "api", "iat": now(), "exp": now() + 600,
            "org": "t1",
        })
        .as_object()
        .unwrap()
        .clone();
        for (k, v) in extra.as_object().unwrap() {
            c.insert(k.clone(), v.clone());
        }
        self.key.sign("at+jwt", &c).unwrap()
    }

    async fn call(&self, method: &str, path: &str, token: &str, headers: &[(&str, &str)]) -> Resp {
        let auth = format!("Bearer {token}");
        let mut h: Vec<(&str, &str)> = vec![("authorization", &auth)];
        h.extend_from_slice(headers);
        send(req(
            method,
            &format!("{}{path}", self.gw.url("public")),
            &h,
            "",
        ))
        .await
    }

    /// A refusal: its problem, its audit decision, and that the upstream saw nothing. The
    /// rule's reason is in the audit event only: a 403 tells the client nothing more than
    /// that the request is not allowed (ADR 0005 §3).
    fn refused(&self, r: &Resp, status: u16, code: &str, rule: &str) -> Value {
        let v = assert_problem(r, status, code);
        let id = v["request_id"].as_str().unwrap();
        let ev = audit_of(&self.gw, id);
        assert_eq!(ev["stage"], "authz", "{ev}");
        assert_eq!(ev["reason"], code, "{ev}");
        assert_eq!(ev["authz"]["allowed"], false, "{ev}");
        assert_eq!(ev["authz"]["rule"], rule, "{ev}");
        assert_eq!(self.up.hits(), 0, "nothing may reach the upstream");
        if status == 403 {
            assert_generic(r, &ev);
        }
        ev
    }
}

/// What a 403 of the authorization step tells the client, whichever rule refused.
const NOT_ALLOWED: &str = "the request is not allowed";

/// A 403 whose problem detail (and challenge) is the generic one, the rule's reason in the
/// audit event `ev` and nowhere in the answer.
fn assert_generic(r: &Resp, ev: &Value) {
    assert_eq!(r.json()["detail"], NOT_ALLOWED, "{}", r.text());
    let reason = ev["authz"]["reason"].as_str().unwrap();
    assert!(!reason.is_empty() && reason != NOT_ALLOWED, "{ev}");
    assert!(!r.text().contains(reason), "{reason:?} in {}", r.text());
    if let Some(ch) = r.header("www-authenticate") {
        assert!(!ch.contains(reason), "{reason:?} in {ch}");
    }
}

/// The RFC 6750 challenge of a refusal for want of a scope, naming the one needed; its
/// description is as generic as the problem's detail.
fn asks_for_scope(r: &Resp, needed: &str) {
    let ch = r.header("www-authenticate").unwrap();
    assert!(
        ch.starts_with("Bearer error=\"insufficient_scope\""),
        "{ch}"
    );
    assert!(ch.contains(&format!("scope=\"{needed}\"")), "{ch}");
    assert!(
        ch.contains(&format!("error_description=\"{NOT_ALLOWED}\"")),
        "{ch}"
    );
}

fn scope(s: &str) -> Value {
    json!({ "scope": s })
}

/// An answer read whole.
async fn whole(resp: http::Response<hyper::body::Incoming>) -> Resp {
    use http_body_util::BodyExt;
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
        version: parts.version,
        trailers: None,
    }
}

/// Sends `req` (its URI's authority is the `:authority`, as written) over HTTP/2 with prior
/// knowledge, on a fresh connection to `addr`.
async fn send_h2_to(
    addr: std::net::SocketAddr,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Resp {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    whole(sender.send_request(req).await.unwrap()).await
}

/// Sends `req` over HTTP/1.1 on a fresh connection to `addr`, field names written in title
/// case (`X-Tenant`, `X_tenant`) rather than in lower case.
async fn send_title_case(
    addr: std::net::SocketAddr,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Resp {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    whole(sender.send_request(req).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_deny_and_any_authenticated() {
    let e = setup().await;
    let t = e.token(scope("read:orders"));
    // An authenticated route without a rule refuses everyone.
    let r = e.call("GET", "/bare/x", &t, &[]).await;
    let ev = e.refused(&r, 403, "forbidden", "default");
    assert!(
        ev["authz"]["reason"]
            .as_str()
            .unwrap()
            .contains("no authorization rule")
    );
    // allow: any-authenticated lets every verified caller through …
    let r = e.call("GET", "/any/x", &t, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("x-request-id").unwrap().to_string();
    let ev = audit_of(&e.gw, &id);
    assert_eq!(ev["authz"]["allowed"], true);
    assert_eq!(ev["authz"]["rule"], "allow");
    assert_eq!(ev["authz"]["reason"], "route:any");
    // … but not an unverified one (authentication refuses first).
    let r = send(req(
        "GET",
        &format!("{}/any/x", e.gw.url("public")),
        &[],
        "",
    ))
    .await;
    assert_problem(&r, 401, "unauthenticated");
    // Anonymous routes are not authorized at all.
    let r = send(req("GET", &format!("{}/open", e.gw.url("public")), &[], "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(e.up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_hierarchy_methods_and_roles() {
    let e = setup().await;
    // Missing scope: 403 with the RFC 6750 challenge naming what is needed.
    let t = e.token(scope("profile"));
    let r = e.call("GET", "/orders/1", &t, &[]).await;
    e.refused(&r, 403, "forbidden", "route:orders");
    asks_for_scope(&r, "read:orders");

    // read:orders reads, cannot write.
    let reader = e.token(scope("read:orders"));
    let r = e.call("PUT", "/orders/1", &reader, &[]).await;
    e.refused(&r, 403, "forbidden", "route:orders");
    asks_for_scope(&r, "write:orders");

    // admin:orders implies write:orders implies read:orders.
    let admin = e.token(scope("admin:orders"));
    assert_eq!(e.call("GET", "/orders/1", &admin, &[]).await.status, 200);
    assert_eq!(e.call("PUT", "/orders/1", &admin, &[]).await.status, 200);
    assert_eq!(e.call("GET", "/orders/2", &reader, &[]).await.status, 200);
    assert_eq!(e.up.hits(), 3);

    // DELETE wants a role from realm_access.roles; scopes do not stand in for it.
    // The roles wanted are named in the audit event, not to the client.
    let r = e.call("DELETE", "/orders/1", &admin, &[]).await;
    let v = assert_problem(&r, 403, "forbidden");
    let ev = audit_of(&e.gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["authz"]["rule"], "route:orders", "{ev}");
    let reason = ev["authz"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("missing role") && reason.contains("admin"),
        "{ev}"
    );
    assert_generic(&r, &ev);
    assert!(r.header("www-authenticate").is_none());
    assert_eq!(e.up.hits(), 3, "nothing more reached the upstream");
    let with_role = e.token(json!({"scope": "read:orders", "realm_access": {"roles": ["admin"]}}));
    assert_eq!(
        e.call("DELETE", "/orders/1", &with_role, &[]).await.status,
        200
    );
    assert_eq!(e.up.hits(), 4);
}

/// A HEAD is answered as its GET would be, so it is held to GET's rule where GET has one of
/// its own (here stricter than the route's rule for the other methods).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_is_held_to_the_rule_of_its_get() {
    let e = setup().await;
    let reader = e.token(scope("read:orders"));
    for method in ["GET", "HEAD"] {
        let r = e.call(method, "/log/today", &reader, &[]).await;
        assert_eq!(r.status, 403, "{method}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let ev = audit_of(&e.gw, r.header("x-request-id").unwrap());
        assert_eq!(ev["authz"]["rule"], "route:log", "{method}: {ev}");
        assert_eq!(ev["reason"], "forbidden", "{method}: {ev}");
        asks_for_scope(&r, "admin:orders");
    }
    assert_eq!(e.up.hits(), 0, "nothing may reach the upstream");
    // The route's rule governs the other methods; GET's holder may HEAD.
    assert_eq!(e.call("POST", "/log/today", &reader, &[]).await.status, 200);
    let admin = e.token(scope("admin:orders"));
    assert_eq!(e.call("HEAD", "/log/today", &admin, &[]).await.status, 200);
    assert_eq!(e.up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_policies_cover_routes_and_shadow_policies_only_record() {
    let e = setup().await;
    let r = e
        .call(
            "GET",
            "/reports/2026/q3",
            &e.token(scope("read:orders")),
            &[],
        )
        .await;
    let ev = e.refused(&r, 403, "forbidden", "policy:reports-read");
    asks_for_scope(&r, "read:reports");
    // The first enforced denial ends the evaluation: the shadow policy after it did not run.
    assert!(ev["authz"].get("shadow").is_none(), "{ev}");

    let ok = e
        .call(
            "GET",
            "/reports/2026/q3",
            &e.token(scope("read:reports")),
            &[],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let ev = audit_of(&e.gw, ok.header("x-request-id").unwrap());
    assert_eq!(ev["authz"]["reason"], "policy:reports-read");
    // The shadow policy ran and would have denied (the caller lacks the auditor role).
    assert_eq!(
        ev["authz"]["shadow"][0]["rule"], "policy:reports-audit",
        "{ev}"
    );
    assert_eq!(ev["authz"]["shadow"][0]["allowed"], false, "{ev}");
    // The policy governs reads only: a write on the route has no rule left → default deny.
    let w = e
        .call("POST", "/reports/new", &e.token(scope("read:reports")), &[])
        .await;
    assert_problem(&w, 403, "forbidden");
    assert_eq!(e.up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_and_bypass_attempts() {
    let e = setup().await;
    let alice = e.token(json!({}));
    assert_eq!(e.call("GET", "/users/alice", &alice, &[]).await.status, 200);
    // Percent-encoded, the same id: still hers.
    assert_eq!(
        e.call("GET", "/users/al%69ce", &alice, &[]).await.status,
        200
    );
    assert_eq!(e.up.hits(), 2);
    for attempt in [
        "/users/bob",
        "/users/b%6Fb",
        "/users/alice?id=bob",
        "/users/alice?id=b%6Fb",
        "/users/Alice",
        "/users/alice%20",
        "/users/alice?id=alice&id=bob",
        // Names an upstream framework reads as `id` (PHP folds `.` and space to `_`, makes
        // `id[]` an array; some ignore case; some split on `;` too).
        "/users/alice?ID=bob",
        "/users/alice?id[]=bob",
        "/users/alice?id%5B0%5D=bob",
        "/users/alice?Id=alice&iD=bob",
        "/users/alice?x=1;id=bob",
    ] {
        let r = e.call("GET", attempt, &alice, &[]).await;
        let v = assert_problem(&r, 403, "forbidden");
        let ev = audit_of(&e.gw, v["request_id"].as_str().unwrap());
        assert_eq!(ev["authz"]["rule"], "owner", "{attempt}: {ev}");
    }
    assert_eq!(e.up.hits(), 2, "no bypass reached the upstream");
    // The override scope reads anyone's.
    let support = e.token(json!({"sub": "support-1", "scope": "admin:users"}));
    assert_eq!(e.call("GET", "/users/bob", &support, &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_and_the_verified_tenant_goes_upstream() {
    let e = setup().await;
    let t1 = e.token(json!({}));
    let r = e.call("GET", "/tenants/t2/orders", &t1, &[]).await;
    e.refused(&r, 403, "forbidden", "tenant");
    // The path names t1, a query parameter of the same name another tenant: an upstream that
    // reads the query would serve t2.
    for attempt in [
        "/tenants/t1/orders?tenant=t2",
        "/tenants/t1/orders?tenant=%74%32",
        "/tenants/t1/orders?tenant=t1&tenant=t2",
        "/tenants/t1/orders?TENANT=t2",
        "/tenants/t1/orders?tenant[]=t2",
        "/tenants/t1/orders?a=b;tenant=t2",
    ] {
        let r = e.call("GET", attempt, &t1, &[]).await;
        e.refused(&r, 403, "forbidden", "tenant");
    }
    let r = e.call("GET", "/th/x", &t1, &[("x-tenant", "t2")]).await;
    e.refused(&r, 403, "forbidden", "tenant");
    let r = e.call("GET", "/th/x", &t1, &[]).await;
    e.refused(&r, 403, "forbidden", "tenant");
    let no_tenant = e.token(json!({"org": null}));
    let r = e
        .call("GET", "/th/x", &no_tenant, &[("x-tenant", "t1")])
        .await;
    // Why (the caller has no tenant) is the audit event's, not the client's.
    let ev = e.refused(&r, 403, "forbidden", "tenant");
    assert_eq!(ev["authz"]["reason"], "the caller has no tenant", "{ev}");

    let r = e
        .call(
            "GET",
            "/th/x",
            &t1,
            &[("x-tenant", "t1"), ("x-verified-tenant", "forged")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = e.up.requests().pop().unwrap();
    assert_eq!(seen.header("x-verified-tenant"), Some("t1"));
    // A forged copy is removed on every route, not just where a tenant rule runs.
    e.call("GET", "/any/x", &t1, &[("x-verified-tenant", "forged")])
        .await;
    assert_eq!(
        e.up.requests().pop().unwrap().header("x-verified-tenant"),
        None
    );
    assert_eq!(
        e.call("GET", "/tenants/t1/orders", &t1, &[]).await.status,
        200
    );
}

/// A verified tenant with a space at an end is refused, even where the request names the same
/// text: header readers upstream would trim it into another tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_readers_would_trim_is_refused() {
    let e = setup().await;
    let spaced = e.token(json!({"org": "t1 "}));
    let r = e.call("GET", "/tenants/t1%20/orders", &spaced, &[]).await;
    let ev = e.refused(&r, 403, "forbidden", "tenant");
    assert_eq!(
        ev["authz"]["reason"], "the caller's tenant has spaces at its ends or control characters",
        "{ev}"
    );
}

/// A route may name its tenant in the header the gateway sends the verified tenant in
/// (`x-tenant-id`, an identity header): the authorization step reads the client's copy, and
/// the identity step replaces it as the request leaves. Anywhere else the client's copy is
/// still removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_named_in_the_identity_tenant_header_is_read_then_replaced() {
    let e = setup().await;
    let t1 = e.token(json!({}));
    let r = e.call("GET", "/tid/x", &t1, &[("x-tenant-id", "t2")]).await;
    e.refused(&r, 403, "forbidden", "tenant");
    // Another spelling of it is no tenant, and goes nowhere.
    let r = e.call("GET", "/tid/x", &t1, &[("x_tenant_id", "t1")]).await;
    e.refused(&r, 403, "forbidden", "tenant");
    let r = e.call("GET", "/tid/x", &t1, &[("x-tenant-id", "t1")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = e.up.requests().pop().unwrap();
    assert_eq!(seen.header("x-verified-tenant"), Some("t1"));
    assert_eq!(seen.header("x-tenant-id"), Some("t1"));
    let hits = e.up.hits();
    e.call("GET", "/any/x", &t1, &[("x_tenant_id", "forged")])
        .await;
    assert_eq!(e.up.hits(), hits + 1);
    let seen = e.up.requests().pop().unwrap();
    assert_eq!(seen.header("x_tenant_id"), None);
    assert_eq!(seen.header("x-tenant-id"), Some("t1"));
}

/// A tenant header is one value under every spelling a backend reads as its name: CGI, WSGI,
/// Rack and PHP read `X_Tenant` as `X-Tenant` (both `HTTP_X_TENANT`, often the last one
/// winning), so a copy so spelt, or in another case, is a repeat and refused, whatever it says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_header_under_another_spelling_is_a_repeat() {
    let e = setup().await;
    let t1 = e.token(json!({}));
    for (headers, reason) in [
        (
            &[("x-tenant", "t1"), ("x_tenant", "t2")][..],
            "more than one x-tenant header",
        ),
        (&[("x_tenant", "t2"), ("x-tenant", "t1")], "more than one"),
        (&[("x-tenant", "t1"), ("x_tenant", "t1")], "more than one"),
        (&[("X-Tenant", "t1"), ("X_TENANT", "t2")], "more than one"),
        (&[("x-tenant", "t1"), ("X-TENANT", "t2")], "more than one"),
        // Alone, the other spelling names no tenant: only the name itself does.
        (&[("x_tenant", "t1")], "another spelling"),
    ] {
        let r = e.call("GET", "/th/x", &t1, headers).await;
        let ev = e.refused(&r, 403, "forbidden", "tenant");
        let got = ev["authz"]["reason"].as_str().unwrap();
        assert!(got.contains(reason), "{headers:?}: {ev}");
    }
    // Names sent in title case on the wire (`X-Tenant`, `X_tenant`): the same repeat.
    let auth = format!("Bearer {t1}");
    let r = send_title_case(
        e.gw.listener("public"),
        req(
            "GET",
            "/th/x",
            &[
                ("host", "api.example"),
                ("authorization", &auth),
                ("x-tenant", "t1"),
                ("x_tenant", "t2"),
            ],
            "",
        ),
    )
    .await;
    let ev = e.refused(&r, 403, "forbidden", "tenant");
    assert!(
        ev["authz"]["reason"]
            .as_str()
            .unwrap()
            .contains("more than one"),
        "{ev}"
    );
    // Names that only look alike are other headers: the caller's tenant, once, is served,
    // and the verified one goes upstream.
    let r = e
        .call(
            "GET",
            "/th/x",
            &t1,
            &[("x-tenant", "t1"), ("x-tenants", "t2"), ("x__tenant", "t2")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = e.up.requests().pop().unwrap();
    assert_eq!(seen.header("x-verified-tenant"), Some("t1"));
    assert_eq!(e.up.hits(), 1);
}

/// A Rego policy compares the host the router matched: lower case, without port or trailing
/// dot, an IPv6 address in brackets, from `Host` or from HTTP/2's `:authority` alike. A policy
/// refusing `admin.example.com` is not bypassed by `admin.example.com.` or `ADMIN.Example.COM`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_sees_the_host_the_router_matched() {
    let e = setup().await;
    let t = e.token(json!({}));
    for host in [
        "admin.example.com",
        "admin.example.com.",
        "ADMIN.Example.COM",
        "Admin.Example.Com.:8443",
    ] {
        let r = e.call("GET", "/hostguard/x", &t, &[("host", host)]).await;
        let ev = e.refused(&r, 403, "forbidden", "rego:data.gw.host_guard");
        assert_eq!(
            ev["authz"]["reason"], "host admin.example.com",
            "{host}: {ev}"
        );
    }
    // HTTP/2: the host is the `:authority`, as written by the client.
    let port = e.gw.listener("public").port();
    let r = send_h2_to(
        e.gw.listener("public"),
        req(
            "GET",
            &format!("http://Admin.Example.COM.:{port}/hostguard/x"),
            &[("authorization", &format!("Bearer {t}"))],
            "",
        ),
    )
    .await;
    assert_eq!(r.version, http::Version::HTTP_2);
    let ev = e.refused(&r, 403, "forbidden", "rego:data.gw.host_guard");
    assert_eq!(ev["authz"]["reason"], "host admin.example.com", "{ev}");

    // Other hosts are served; the policy saw each as the router did.
    for (host, seen) in [
        ("api.example.com", "api.example.com"),
        ("API.Example.com.:8080", "api.example.com"),
        ("[::1]:80", "[::1]"),
        ("[::1]", "[::1]"),
    ] {
        let r = e.call("GET", "/hostguard/x", &t, &[("host", host)]).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        let up = e.up.requests().pop().unwrap();
        assert_eq!(up.header("x-policy-checked"), Some(seen), "{host}");
    }
    let r = send_h2_to(
        e.gw.listener("public"),
        req(
            "GET",
            &format!("http://API.Example.com.:{port}/hostguard/x"),
            &[("authorization", &format!("Bearer {t}"))],
            "",
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let up = e.up.requests().pop().unwrap();
    assert_eq!(up.header("x-policy-checked"), Some("api.example.com"));
    assert_eq!(e.up.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_masks_on_nested_json() {
    let e = setup().await;
    let r = e
        .call(
            "GET",
            "/doc/o-7",
            &e.token(scope("read:orders")),
            &[("accept-encoding", "gzip")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({
            "id": "o-7", "status": "shipped", "customer": {"name": "Alice"},
            "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}]
        })
    );
    assert_eq!(
        r.header("content-length")
            .map(|l| l.parse::<usize>().unwrap()),
        Some(r.body.len())
    );
    assert!(r.header("etag").is_none());
    // A view for this caller only: no shared cache may serve it to another.
    assert_eq!(r.header("cache-control"), Some("private, max-age=60"));
    assert_eq!(r.header("vary"), Some("authorization"));
    // The upstream was asked for an uncompressed body it can be filtered from.
    assert_eq!(
        e.up.requests().pop().unwrap().header("accept-encoding"),
        None
    );

    // Two scopes: the union.
    let r = e
        .call(
            "GET",
            "/doc/o-7",
            &e.token(scope("read:orders billing")),
            &[],
        )
        .await;
    let v = r.json();
    assert_eq!(
        v["items"][0],
        json!({"sku": "A-1", "qty": 2, "price": 10.5})
    );
    assert_eq!(
        v["customer"],
        json!({"name": "Alice", "address": {"city": "Berlin"}})
    );
    assert!(v.get("internal_margin").is_none());

    // admin:orders sees everything, untouched.
    let r = e
        .call("GET", "/doc/o-7", &e.token(scope("admin:orders")), &[])
        .await;
    assert_eq!(
        r.json(),
        portcullis_test_support::upstream::sample_document()
    );
    assert_eq!(r.header("etag"), Some("\"v1\""));
    // Whole, but still for this caller only: a shared cache that kept it would serve it to a
    // caller with a narrower mask.
    assert_eq!(r.header("cache-control"), Some("private, max-age=60"));
    assert_eq!(r.header("vary"), Some("authorization"));

    // A body the mask cannot read is withheld, not leaked.
    let r = e
        .call("GET", "/plain/o-7", &e.token(scope("read:orders")), &[])
        .await;
    let v = assert_problem(&r, 502, "response_filter_failed");
    assert!(!r.text().contains("internal_margin"));
    let ev = audit_of(&e.gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["reason"], "response_filter_failed", "{ev}");
    assert_eq!(ev["stage"], "authz", "{ev}");
    assert_eq!(ev["outcome"], "rejected", "{ev}");
}

/// A field mask shows a value only where one of its paths ends: where a path merely passes
/// through (every key for `*.id`, `uri` for `uri.id`), a string or number is not shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_mask_shows_no_scalar_where_its_paths_only_pass() {
    let e = setup().await;
    let r = e
        .call(
            "GET",
            "/wild/x?card=4111111111111111",
            &e.token(scope("read:orders")),
            &[("id", "7")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The echo upstream answered method, uri, version and body as strings beside the
    // headers object: only the `id` inside that object is named.
    assert_eq!(r.json(), json!({"headers": {"id": "7"}}));
    assert!(!r.text().contains("4111"), "{}", r.text());
    assert_eq!(e.up.hits(), 1);
}

/// A method no action is mapped to (WebDAV's, TRACE, QUERY, PURGE …) is held to every resource
/// policy on its path, whatever actions they list, and such a policy permits nothing by
/// itself; a method mapped in `authz.actions` is governed by its action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_without_an_action_is_held_to_every_policy_on_its_path() {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let key = issuer_key(dir.path());
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt:
    main:
      issuer: "{ISS}"
      jwks_file: keys.json
      algorithms: [EdDSA]
      audiences: [api]
      claims: {{ roles: [realm_access.roles] }}
authz:
  actions: {{ PROPFIND: read }}
  policies:
    - {{ name: orders-admin, resources: ["/orders/**"], actions: [write, delete], roles: {{ any_of: [admin] }} }}
    - {{ name: reports-read, resources: ["/reports/**"], actions: [read], scopes: {{ any_of: [read:reports] }} }}
routes:
  - {{ name: orders, match: {{ prefix: /orders }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ scopes: {{ any_of: [read:orders] }} }} }}
  - {{ name: reports, match: {{ prefix: /reports }}, upstream: app, auth: {{ methods: [jwt] }} }}
"#,
        up = up.url()
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let e = Env {
        _dir: dir,
        gw,
        up,
        key,
    };
    let reader = e.token(scope("read:orders read:reports"));
    for method in [
        "MOVE",
        "COPY",
        "PROPPATCH",
        "LOCK",
        "UNLOCK",
        "MKCOL",
        "QUERY",
        "PURGE",
        "TRACE",
        "SEARCH",
    ] {
        let r = e.call(method, "/orders/7", &reader, &[]).await;
        let ev = e.refused(&r, 403, "forbidden", "policy:orders-admin");
        assert!(
            ev["authz"]["reason"].as_str().unwrap().contains("role"),
            "{method}: {ev}"
        );
        assert!(r.header("www-authenticate").is_none(), "{method}");
    }
    // A read-only policy on a path does not let such a method through by itself: with no
    // rule of the route's own, nothing permits it.
    let r = e.call("MOVE", "/reports/q3", &reader, &[]).await;
    let ev = e.refused(&r, 403, "forbidden", "default");
    assert!(
        ev["authz"]["reason"]
            .as_str()
            .unwrap()
            .contains("no authorization rule permits"),
        "{ev}"
    );

    // Mapped methods are governed by their action: reads pass the write policy by.
    assert_eq!(e.call("GET", "/orders/7", &reader, &[]).await.status, 200);
    assert_eq!(
        e.call("PROPFIND", "/orders/7", &reader, &[]).await.status,
        200
    );
    assert_eq!(e.call("GET", "/reports/q3", &reader, &[]).await.status, 200);
    assert_eq!(e.up.hits(), 3);
    // The policy's role met: the route's rule permits the unmapped method.
    let admin = e.token(json!({"scope": "read:orders", "realm_access": {"roles": ["admin"]}}));
    let r = e.call("MOVE", "/orders/7", &admin, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = audit_of(&e.gw, r.header("x-request-id").unwrap());
    assert_eq!(
        ev["authz"]["reason"], "route:orders, policy:orders-admin",
        "{ev}"
    );
    assert_eq!(e.up.requests().pop().unwrap().method, "MOVE");
}

/// A client's copies of the identity headers are gone before authorization builds the
/// policy's input: a rule that reads `x-user-id` or `x-roles` from the request's headers sees
/// none the client sent. Before, they were removed only as the request left for the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_never_see_client_sent_identity_headers() {
    let e = setup().await;
    let reader = e.token(scope("read:orders"));
    let r = e.call("GET", "/identityguard", &reader, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for forged in [
        ("x-user-id", "admin"),
        ("x_user_id", "admin"),
        ("X-Roles", "admin"),
        ("x-authenticated", "mtls"),
        // The tenant header another route (`/tid`) reads as its input: not this one's, so
        // stripped here first thing like any other.
        ("x-tenant-id", "t9"),
    ] {
        let r = e.call("GET", "/identityguard", &reader, &[forged]).await;
        assert_eq!(r.status, 200, "{forged:?}: {}", r.text());
        let seen = e.up.requests().pop().unwrap();
        assert_eq!(seen.header("x-user-id"), Some("alice"), "{forged:?}");
        assert_eq!(seen.header("x-roles"), None, "{forged:?}");
        assert_eq!(seen.header("x_user_id"), None, "{forged:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rego_allows_denies_and_adds_headers_and_shadow_only_records() {
    let e = setup().await;
    let reader = e.token(scope("read:orders"));
    let r = e
        .call(
            "GET",
            "/rego/eu",
            &reader,
            &[("x-policy-checked", "forged")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = e.up.requests().pop().unwrap();
    assert_eq!(seen.header("x-policy-checked"), Some("alice"));
    let ev = audit_of(&e.gw, r.header("x-request-id").unwrap());
    assert_eq!(ev["authz"]["reason"], "rego:data.gw.decision");

    let before = e.up.hits();
    let r = e.call("GET", "/rego/blocked", &reader, &[]).await;
    let v = assert_problem(&r, 403, "forbidden");
    let ev = audit_of(&e.gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["authz"]["rule"], "rego:data.gw.decision");
    assert_eq!(ev["authz"]["reason"], "region blocked");
    assert_generic(&r, &ev);
    let r = e
        .call("GET", "/rego/eu", &e.token(scope("profile")), &[])
        .await;
    let v = assert_problem(&r, 403, "forbidden");
    let ev = audit_of(&e.gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["authz"]["reason"], "read:orders is required");
    assert_generic(&r, &ev);
    assert_eq!(e.up.hits(), before);

    // Shadow: the policy (and the scope rule) would deny; the request passes, the audit says so.
    let r = e.call("GET", "/shadow", &reader, &[]).await;
    assert_eq!(r.status, 200);
    let ev = audit_of(&e.gw, r.header("x-request-id").unwrap());
    let shadow = ev["authz"]["shadow"].as_array().unwrap();
    let rules: Vec<&str> = shadow.iter().map(|s| s["rule"].as_str().unwrap()).collect();
    assert_eq!(
        rules,
        ["route:rego-shadow", "rego:data.gw.deny_everything"],
        "{ev}"
    );
    assert!(shadow.iter().all(|s| s["allowed"] == false));

    // A policy that says `allow: false` denies even when another part of its answer is
    // malformed (a 403, not a 503 for a policy that could not be evaluated).
    let before = e.up.hits();
    let r = e.call("GET", "/rego-bad/x", &reader, &[]).await;
    let v = assert_problem(&r, 403, "forbidden");
    let ev = audit_of(&e.gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["authz"]["rule"], "rego:data.gw.bad_deny", "{ev}");
    assert_eq!(ev["authz"]["allowed"], false, "{ev}");
    assert!(
        ev["authz"]["reason"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{ev}"
    );
    assert_eq!(e.up.hits(), before, "nothing may reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_up_when_authentication_is_weak_or_old() {
    let e = setup().await;
    let weak = e.token(json!({"acr": "urn:pwd", "auth_time": now() - 10}));
    let r = e.call("POST", "/transfer", &weak, &[]).await;
    e.refused(&r, 401, "step_up_required", "require");
    let ch = r.header("www-authenticate").unwrap();
    assert!(
        ch.contains("error=\"insufficient_user_authentication\""),
        "{ch}"
    );
    assert!(ch.contains("acr_values=\"urn:mfa\""), "{ch}");
    assert!(ch.contains("max_age=\"300\""), "{ch}");

    let old = e.token(json!({"acr": "urn:mfa", "auth_time": now() - 3600}));
    let r = e.call("POST", "/transfer", &old, &[]).await;
    e.refused(&r, 401, "step_up_required", "require");
    let no_time = e.token(json!({"acr": "urn:mfa"}));
    let r = e.call("POST", "/transfer", &no_time, &[]).await;
    e.refused(&r, 401, "step_up_required", "require");

    let fresh = e.token(json!({"acr": "urn:mfa", "auth_time": now() - 10}));
    assert_eq!(e.call("POST", "/transfer", &fresh, &[]).await.status, 200);
    assert_eq!(e.up.hits(), 1);
}

/// `require` is a demand, not a grant: met, it permits nothing by itself. On a route whose
/// only rule is `require`, what a policy permits passes (with the strong login), and what
/// nothing permits is refused by default — a strong login is not a licence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_met_require_permits_nothing_by_itself() {
    let e = setup().await;
    let strong = |s: &str| e.token(json!({"acr": "urn:mfa", "scope": s}));
    // The policy governs reads only: a write has no rule that permits it.
    let r = e
        .call("POST", "/mfa-reports/new", &strong("read:reports"), &[])
        .await;
    let ev = e.refused(&r, 403, "forbidden", "default");
    assert!(
        ev["authz"]["reason"]
            .as_str()
            .unwrap()
            .contains("no authorization rule permits"),
        "{ev}"
    );
    // A read without the policy's scope: the policy refuses.
    let r = e
        .call("GET", "/mfa-reports/q3", &strong("profile"), &[])
        .await;
    e.refused(&r, 403, "forbidden", "policy:mfa-reports-read");
    // The policy's scope with a weak login: the demand refuses.
    let weak = e.token(json!({"acr": "urn:pwd", "scope": "read:reports"}));
    let r = e.call("GET", "/mfa-reports/q3", &weak, &[]).await;
    e.refused(&r, 401, "step_up_required", "require");
    // Both: served.
    let r = e
        .call("GET", "/mfa-reports/q3", &strong("read:reports"), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = audit_of(&e.gw, r.header("x-request-id").unwrap());
    assert_eq!(ev["authz"]["rule"], "allow", "{ev}");
    assert_eq!(
        ev["authz"]["reason"], "require, policy:mfa-reports-read",
        "{ev}"
    );
    assert_eq!(e.up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_steps_up_then_denies_and_a_step_up_clears_it() {
    let e = setup().await;
    // Stale password login on an unknown device: auth_age 20 + weak 20 + new device 20 = 60.
    let weak = e.token(json!({"acr": "urn:pwd", "auth_time": now() - 86_400}));
    let r = e
        .call("GET", "/risky", &weak, &[("x-device-id", "laptop-1")])
        .await;
    let ev = e.refused(&r, 401, "step_up_required", "risk");
    assert_eq!(ev["authz"]["risk"], 60, "{ev}");
    let ch = r.header("www-authenticate").unwrap();
    assert!(
        ch.contains("acr_values=\"urn:mfa\"") && ch.contains("max_age=\"600\""),
        "{ch}"
    );

    // The same from a risky country (header from a trusted proxy): 90 → 403.
    let r = e
        .call(
            "GET",
            "/risky",
            &weak,
            &[("x-device-id", "laptop-1"), ("x-country", "KP")],
        )
        .await;
    let ev = e.refused(&r, 403, "forbidden", "risk");
    assert_eq!(ev["authz"]["risk"], 90, "{ev}");
    let signals = ev["authz"]["risk_signals"].as_array().unwrap();
    assert!(signals.iter().any(|s| s == "country"), "{ev}");
    // A trusted proxy that appends puts its value after the client's own: the last is
    // believed, so a client claiming a harmless country first does not hide the risky one.
    let r = e
        .call(
            "GET",
            "/risky",
            &weak,
            &[
                ("x-device-id", "laptop-1"),
                ("x-country", "DE"),
                ("x-country", "KP"),
            ],
        )
        .await;
    let ev = e.refused(&r, 403, "forbidden", "risk");
    assert_eq!(ev["authz"]["risk"], 90, "{ev}");

    // The weak login's audit event on the risky route, from a device.
    let on_risky = |device: &'static str| {
        let (e, weak) = (&e, &weak);
        async move {
            let r = e
                .call("GET", "/risky", weak, &[("x-device-id", device)])
                .await;
            let v = assert_problem(&r, 401, "step_up_required");
            audit_of(&e.gw, v["request_id"].as_str().unwrap())
        }
    };
    let is_new = |ev: &serde_json::Value| {
        ev["authz"]["risk_signals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "new_device")
    };
    // A strong, fresh token on a route without a risk rule remembers no device: the client
    // names it, and that route asked for nothing. On the risky route it is still new.
    let strong = e.token(json!({"acr": "urn:mfa", "auth_time": now() - 5, "scope": "read:orders"}));
    let r = e
        .call("GET", "/any", &strong, &[("x-device-id", "tablet-9")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = on_risky("tablet-9").await;
    assert_eq!(ev["authz"]["risk"], 60, "{ev}");
    assert!(is_new(&ev), "{ev}");

    // Nor does a route whose risk rule asks for less (a password login) than the gateway-wide
    // strong list: that login stepped up there, but the device stays new elsewhere.
    let fresh_pwd = e.token(json!({"acr": "urn:pwd", "auth_time": now() - 5}));
    let r = e
        .call(
            "GET",
            "/lenient-risk",
            &fresh_pwd,
            &[("x-device-id", "tablet-9")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = on_risky("tablet-9").await;
    assert!(is_new(&ev), "{ev}");

    // After a step-up (strong and fresh) on the risky route the device is remembered …
    let r = e
        .call("GET", "/risky", &strong, &[("x-device-id", "laptop-1")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // … so a later, merely fresh-enough password session on it scores lower: auth_age and
    // weak authentication only (40) — still a step-up, but no new-device signal.
    let ev = on_risky("laptop-1").await;
    assert_eq!(ev["authz"]["risk"], 40, "{ev}");
    assert!(!is_new(&ev), "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn country_from_a_geoip_database_and_recent_auth_failures_raise_the_risk() {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let key = issuer_key(dir.path());
    // A real MaxMind DB, written now: loopback "is" in Germany, which is not expected here.
    portcullis_test_support::mmdb::write_country_db(
        &dir.path().join("geo.mmdb"),
        &[("127.0.0.0/8".parse().unwrap(), "DE")],
    )
    .unwrap();
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt:
    main: {{ issuer: "{ISS}", jwks_file: keys.json, algorithms: [EdDSA], audiences: [api] }}
authz:
  risk:
    geoip_database: geo.mmdb
    expected_countries: [FR]
    strong_acr: [urn:mfa]
    auth_failures_threshold: 2
routes:
  - name: r
    match: {{ prefix: / }}
    upstream: app
    auth: {{ methods: [jwt] }}
    authz: {{ allow: any-authenticated, risk: {{ step_up: 30, deny: 60 }} }}
"#,
        up = up.url()
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let url = format!("{}/x", gw.url("public"));
    let strong = {
        let mut c: Map<String, Value> = json!({"iss": ISS, "sub": "alice", "aud": "api",
            "iat": now(), "exp": now() + 600, "acr": "urn:mfa", "auth_time": now()})
        .as_object()
        .unwrap()
        .clone();
        c.insert("jti".into(), json!("j1"));
        key.sign("at+jwt", &c).unwrap()
    };
    let call = |t: String| {
        send(req(
            "GET",
            &url,
            &[("authorization", &format!("Bearer {t}"))],
            "",
        ))
    };
    // Strong and fresh, but from an unexpected country: 30 → step-up.
    let r = call(strong.clone()).await;
    let v = assert_problem(&r, 401, "step_up_required");
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["authz"]["risk"], 30, "{ev}");
    assert_eq!(ev["authz"]["risk_signals"], json!(["country"]), "{ev}");
    // Two refused credentials from this address: +30 → 60 → 403.
    for _ in 0..2 {
        assert_problem(&call("not-a-token".into()).await, 401, "unauthenticated");
    }
    let r = call(strong).await;
    let v = assert_problem(&r, 403, "forbidden");
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(
        ev["authz"]["risk_signals"],
        json!(["country", "auth_failures"]),
        "{ev}"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_file_is_reloaded_and_a_broken_one_refused() {
    let e = setup().await;
    let reader = e.token(scope("read:orders"));
    assert_eq!(e.call("GET", "/rego/eu", &reader, &[]).await.status, 200);
    // The policy now blocks "eu" too: picked up without touching the configuration file.
    let policy = e._dir.path().join("policy.rego");
    std::fs::write(
        &policy,
        POLICY.replace(
            r#"input.request.params.region != "blocked""#,
            r#"not input.request.params.region in {"blocked", "eu"}"#,
        ),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let r = e.call("GET", "/rego/eu", &reader, &[]).await;
        if r.status == 403 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "policy change not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A policy that does not compile is refused with its line; the last good one stays.
    std::fs::write(&policy, "package gw\nimport rego.v1\nallow if {\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !e.gw.stderr_text().contains("reload refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            e.gw.stderr_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_problem(
        &e.call("GET", "/rego/eu", &reader, &[]).await,
        403,
        "forbidden",
    );
    assert_eq!(e.call("GET", "/rego/us", &reader, &[]).await.status, 200);
}

const SECURED_SHOP: &str = r#"openapi: 3.1.0
info: { title: shop, version: "1" }
components:
  securitySchemes:
    oauth:
      type: oauth2
      flows: { clientCredentials: { tokenUrl: "https://issuer.test/token", scopes: { "read:orders": r, "write:orders": w } } }
    key: { type: apiKey, in: header, name: x-api-key }
security: [ { oauth: [read:orders] } ]
paths:
  /items:
    get: { operationId: list, responses: { "200": { description: ok } } }
    post:
      operationId: create
      security: [ { oauth: [write:orders] }, { key: [] } ]
      responses: { "200": { description: ok } }
  /health:
    get: { operationId: health, security: [], responses: { "200": { description: ok } } }
"#;

/// The OpenAPI document's `security` on a route group: each operation's requirements (its
/// own, else the document's) are checked by the authorization step, scopes through the
/// hierarchy, on top of the route's own rule; a credential of a kind no requirement names is
/// refused; an operation with `security: []` asks nothing more than the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openapi_documents_security_requirements_are_enforced() {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let key = issuer_key(dir.path());
    std::fs::write(dir.path().join("shop.yaml"), SECURED_SHOP).unwrap();
    let api_key = "pk_test_0123456789abcdef";
    let hash = sha256_hex(api_key);
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt:
    main: {{ issuer: "{ISS}", jwks_file: keys.json, algorithms: [EdDSA], audiences: [api] }}
  api_keys: {{ keys: [ {{ hash: "sha256:{hash}", client_id: batch }} ] }}
authz:
  scope_hierarchy: {{ admin:orders: [write:orders], write:orders: [read:orders] }}
routes:
  - name: shop
    match: {{ prefix: /shop }}
    upstream: app
    auth: {{ methods: [jwt, api_key] }}
    authz: {{ allow: any-authenticated }}
    openapi: {{ spec: shop.yaml }}
"#,
        up = up.url()
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let e = Env {
        _dir: dir,
        gw,
        up,
        key,
    };
    let with_key = |method: &str, path: &str| {
        send(req(
            method,
            &format!("{}{path}", e.gw.url("public")),
            &[("x-api-key", api_key)],
            "",
        ))
    };

    // The document's requirement: read:orders.
    let r = e
        .call("GET", "/shop/items", &e.token(scope("profile")), &[])
        .await;
    e.refused(&r, 403, "forbidden", "openapi:list");
    asks_for_scope(&r, "read:orders");
    // An API key is no OAuth token.
    let r = with_key("GET", "/shop/items").await;
    let ev = e.refused(&r, 403, "forbidden", "openapi:list");
    assert!(
        ev["authz"]["reason"]
            .as_str()
            .unwrap()
            .contains("requires oauth credentials, not api_key"),
        "{ev}"
    );
    assert!(r.header("www-authenticate").is_none());
    // The operation's own: write:orders, or an API key; read:orders is not enough.
    let r = e
        .call("POST", "/shop/items", &e.token(scope("read:orders")), &[])
        .await;
    e.refused(&r, 403, "forbidden", "openapi:create");
    asks_for_scope(&r, "write:orders");

    // Met: through the hierarchy, by the other alternative, and where nothing is required.
    let admin = e.token(scope("admin:orders"));
    let r = e.call("GET", "/shop/items", &admin, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = audit_of(&e.gw, r.header("x-request-id").unwrap());
    assert_eq!(ev["authz"]["allowed"], true, "{ev}");
    assert_eq!(e.call("POST", "/shop/items", &admin, &[]).await.status, 200);
    assert_eq!(with_key("POST", "/shop/items").await.status, 200);
    assert_eq!(with_key("GET", "/shop/health").await.status, 200);
    assert_eq!(e.up.hits(), 4);
    // Authentication still comes first.
    let r = send(req(
        "GET",
        &format!("{}/shop/health", e.gw.url("public")),
        &[],
        "",
    ))
    .await;
    assert_problem(&r, 401, "unauthenticated");
    assert_eq!(e.up.hits(), 4);
}

/// `examples/authz.yaml` as shipped (addresses made ephemeral, its files beside it): the
/// catalog's curl lines give what they promise — the document's security on top of the
/// route's rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authz_examples_catalog_does_what_its_comments_say() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["keys", "openapi", "policies"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    for f in [
        "keys/demo.jwks.json",
        "openapi/catalog.yaml",
        "policies/orders.rego",
    ] {
        std::fs::copy(root.join("examples").join(f), dir.path().join(f)).unwrap();
    }
    let yaml = std::fs::read_to_string(root.join("examples/authz.yaml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0");
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let pem = std::fs::read_to_string(root.join("examples/keys/demo.private.pem")).unwrap();
    let jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/keys/demo.jwks.json")).unwrap(),
    )
    .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let key = Signer::from_pkcs8_pem(&pem, kid).unwrap();
    let tok = |extra: Value| {
        let mut c: Map<String, Value> = json!({
            "iss": "https://demo.portcullis.dev", "aud": "orders-api", "sub": "alice",
            "iat": now(), "exp": now() + 600,
        })
        .as_object()
        .unwrap()
        .clone();
        for (k, v) in extra.as_object().unwrap() {
            c.insert(k.clone(), v.clone());
        }
        format!("Bearer {}", key.sign("JWT", &c).unwrap())
    };
    let reader = tok(json!({"scope": "read:orders", "tenant": "acme"}));
    let admin = tok(json!({"sub": "root", "scope": "admin:orders", "tenant": "acme"}));
    let noscope = tok(json!({"sub": "dave"}));
    let url = |p: &str| format!("{}{p}", gw.url("public"));
    let body = r#"{"name":"pen"}"#;
    let json_ct = ("content-type", "application/json");

    let r = send(req(
        "GET",
        &url("/catalog/items"),
        &[("authorization", &reader)],
        "",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(req(
        "POST",
        &url("/catalog/items"),
        &[("authorization", &reader), json_ct],
        body,
    ))
    .await;
    assert_problem(&r, 403, "forbidden");
    asks_for_scope(&r, "write:orders");
    let r = send(req(
        "POST",
        &url("/catalog/items"),
        &[("authorization", &admin), json_ct],
        body,
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(req(
        "GET",
        &url("/catalog/items"),
        &[("authorization", &noscope)],
        "",
    ))
    .await;
    assert_problem(&r, 403, "forbidden");
    let r = send(req(
        "GET",
        &url("/catalog/health"),
        &[("authorization", &noscope)],
        "",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The policy's header, forged by a client on a route whose policy never sets it.
    let r = send(req(
        "GET",
        &url("/catalog/items"),
        &[
            ("authorization", &reader),
            ("x-refund-approved-by", "me"),
            ("x_refund_approved_by", "me"),
            ("x-kept", "yes"),
        ],
        "",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-kept"], "yes", "{seen}");
    for forged in ["x-refund-approved-by", "x_refund_approved_by"] {
        assert!(seen.get(forged).is_none(), "{forged}: {seen}");
    }
}
