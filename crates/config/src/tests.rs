use super::*;

fn errs(yaml: &str) -> Vec<String> {
    match load_str(yaml, Path::new(".")) {
        Ok(_) => vec![],
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn empty_file_is_a_valid_config_that_serves_nothing() {
    let c = load_str("", Path::new(".")).unwrap();
    assert!(c.routes.is_empty());
    assert!(c.listeners.is_empty());
    assert_eq!(c.admin.address.to_string(), "127.0.0.1:9901");
}

#[test]
fn unknown_keys_are_all_reported_with_paths() {
    let e = errs(
        r#"
listeners:
  - name: a
    address: 127.0.0.1:0
    colour: red
routes:
  - name: r
    match: { prefix: /, hostz: [a] }
    upstream: x
bogus: 1
"#,
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("listeners[0]") && m.contains("colour")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("routes[0].match") && m.contains("hostz")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.contains("bogus")), "{e:?}");
}

#[test]
fn semantic_errors_are_all_reported_at_once() {
    let e = errs(
        r#"
listeners:
  - { name: a, address: "not-an-address" }
upstreams:
  svc: { targets: ["ftp://x"] }
  demo: { kind: echo }
routes:
  - name: one
    match: { path: "/orders/{id}", methods: [GET, "B@D"] }
    upstream: billing
  - name: one
    match: { prefix: /x }
    upstream: demo
    ip_filter: { deny: ["10.0.0.0/99"] }
    max_body_bytes: lots
    timeout: soon
"#,
    );
    let want = [
        "listeners[0].address",
        "upstreams.svc.targets[0]",
        "routes[0].match.methods[1]",
        "routes[0].upstream: unknown upstream \"billing\"",
        "routes[1].name: duplicate route name",
        "routes[1].ip_filter.deny[0]",
        "routes[1].max_body_bytes",
        "routes[1].timeout",
    ];
    for w in want {
        assert!(e.iter().any(|m| m.starts_with(w)), "missing {w} in {e:#?}");
    }
}

#[test]
fn admin_beyond_localhost_needs_a_token() {
    let e = errs("admin: { address: 0.0.0.0:9901 }");
    assert!(e.iter().any(|m| m.starts_with("admin.address")), "{e:?}");
    unsafe_free_env_token();
}

fn unsafe_free_env_token() {
    let e = errs("admin: { address: 0.0.0.0:9901, token: { env: PORTCULLIS_TEST_SURELY_UNSET } }");
    assert!(e.iter().any(|m| m.starts_with("admin.token.env")), "{e:?}");
    let ok = errs("admin: { address: 0.0.0.0:9901, token: { value: s3cret } }");
    assert!(ok.is_empty(), "{ok:?}");
}

/// A secret written in the wrong shape is refused without being quoted: configuration
/// errors are logged, printed by `portcullis check` and returned by the admin API's reload.
#[test]
fn errors_never_quote_the_offending_value() {
    for yaml in [
        "admin: { token: hunter2-secret }",
        "admin: { token: { valu: hunter2-secret } }",
        "auth: { introspection: { i: { endpoint: \"https://a.example/i\", client_id: gw, client_secret: hunter2-secret } } }",
        "upstreams: { u: { targets: [\"ftp://u:hunter2@h\"] } }",
        "upstreams: { u: { targets: [\"ftp://u:hunter2/x@h:80\"] } }",
    ] {
        let e = errs(yaml);
        assert!(!e.is_empty(), "{yaml}");
        assert!(e.iter().all(|m| !m.contains("hunter2")), "{yaml}: {e:?}");
    }
    assert_eq!(
        crate::hide_quoted_values(r#"invalid type: string "hunter2", expected a map"#),
        "invalid type: string (value not shown), expected a map"
    );
    assert_eq!(
        crate::hide_quoted_values(r#"invalid value: string "a", expected x; string "b""#),
        "invalid value: string (value not shown), expected x; string (value not shown)"
    );
    assert_eq!(
        crate::hide_quoted_values("no values here"),
        "no values here"
    );
}

#[test]
fn a_read_only_admin_token_needs_the_token_and_differs_from_it() {
    let e = errs("admin: { read_token: { value: r } }");
    assert!(
        e.iter()
            .any(|m| m.starts_with("admin.read_token: a read-only token needs admin.token")),
        "{e:?}"
    );
    let e = errs("admin: { token: { value: same }, read_token: { value: same } }");
    assert!(
        e.iter()
            .any(|m| m == "admin.read_token: must differ from admin.token"),
        "{e:?}"
    );
    let c = load_str(
        "admin: { token: { value: w }, read_token: { value: r } }",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(c.admin.read_token.as_ref().map(|t| t.expose()), Some("r"));
    let shown = serde_json::to_string(&c.raw).unwrap();
    assert!(!shown.contains("\"r\""), "{shown}");
}

#[test]
fn inline_secrets_are_redacted_when_serialised() {
    let c = load_str("admin: { token: { value: s3cret } }", Path::new(".")).unwrap();
    let shown = serde_json::to_string(&c.raw).unwrap();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("<redacted>"));
    assert_eq!(c.admin.token.as_ref().map(|t| t.expose()), Some("s3cret"));
}

#[test]
fn templates_and_rewrites() {
    let c = load_str(
        r#"
upstreams: { demo: { kind: echo } }
routes:
  - name: t
    match: { path: "/orders/{id}/items/{item}", hosts: ["*.Example.com", api.example.com] }
    upstream: demo
    rewrite: { template: "/v2/o/{id}?i={item}" }
"#,
        Path::new("."),
    )
    .unwrap();
    let r = &c.routes[0];
    assert_eq!(
        r.hosts,
        vec![
            HostMatch::Suffix(".example.com".into()),
            HostMatch::Exact("api.example.com".into())
        ]
    );
    assert!(matches!(&r.path, PathMatch::Template(s) if s.len() == 4));
    assert!(matches!(&r.rewrite, Some(Rewrite::Template(p)) if p.len() == 4));

    let e = errs(
        r#"
upstreams: { demo: { kind: echo } }
routes:
  - name: t
    match: { path: "/orders/{id}" }
    upstream: demo
    rewrite: { template: "/v2/{nope}" }
  - name: u
    match: { path: "/a/../b" }
    upstream: demo
    request_headers: { set: { content-length: "1" } }
"#,
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("routes[0].rewrite.template")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with("routes[1].match.path")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("routes[1].request_headers.set.content-length")),
        "{e:?}"
    );
}

#[test]
fn header_ops_apply_in_order() {
    let mut e = ConfigErrors::new();
    let raw = raw::RawHeaderOps {
        set: [(
            "x-set".to_string(),
            portcullis_core::RawSecretOrString::Plain("1".into()),
        )]
        .into(),
        add: [(
            "x-add".to_string(),
            portcullis_core::RawSecretOrString::Plain("2".into()),
        )]
        .into(),
        remove: vec!["x-gone".into()],
        rename: [("x-old".to_string(), "x-new".to_string())].into(),
    };
    let yaml = serde_yaml_ng::to_string(&raw).unwrap();
    assert!(yaml.contains("x-old"));
    let ops = {
        let cfg = format!(
            "upstreams: {{ d: {{ kind: echo }} }}\nroutes:\n  - name: r\n    match: {{ prefix: / }}\n    upstream: d\n    request_headers:\n{}",
            yaml.lines()
                .map(|l| format!("      {l}\n"))
                .collect::<String>()
        );
        let c = load_str(&cfg, Path::new(".")).unwrap_or_else(|err| {
            e.extend(err);
            panic!("{e}")
        });
        c.routes[0].request_headers.clone()
    };
    let mut h = http::HeaderMap::new();
    h.insert("x-gone", "v".parse().unwrap());
    h.insert("x-old", "o".parse().unwrap());
    h.insert("x-add", "1".parse().unwrap());
    ops.apply(&mut h);
    assert!(h.get("x-gone").is_none());
    assert_eq!(h.get("x-new").unwrap(), "o");
    assert!(h.get("x-old").is_none());
    assert_eq!(h.get("x-set").unwrap(), "1");
    assert_eq!(h.get_all("x-add").iter().count(), 2);
}

#[test]
fn pointer_paths() {
    assert_eq!(
        pointer_to_path("/routes/3/match/path"),
        "routes[3].match.path"
    );
    assert_eq!(pointer_to_path(""), "");
    assert_eq!(pointer_to_path("/upstreams/a~1b"), "upstreams.a/b");
}

#[test]
fn schema_is_generated() {
    let s = schema();
    assert!(s["properties"]["routes"].is_object(), "{s}");
}

/// The complete example of docs/config.md stays valid: structurally, and semantically except for
/// the files and environment it names, which do not exist here.
#[test]
fn the_documented_example_is_valid() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/config.md"))
        .unwrap();
    let start = doc.rfind("```yaml\n").unwrap() + 8;
    let end = start + doc[start..].find("```").unwrap();
    let yaml = &doc[start..end];
    parse_raw(yaml).unwrap_or_else(|e| panic!("{e}"));
    let errs = match load_str(yaml, Path::new("/nonexistent")) {
        Ok(_) => panic!("the files cannot exist here"),
        Err(e) => e,
    };
    for e in errs.iter() {
        let external = e.message.contains("cannot load")
            || e.message.contains("cannot be read")
            || e.message.contains("is not set")
            || e.path.ends_with("ca_file");
        assert!(external, "unexpected error in the documented example: {e}");
    }
}

#[test]
fn authorization_errors_are_all_reported_with_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ok.rego"),
        "package gw\nimport rego.v1\nallow if input.x == 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("broken.rego"),
        "package gw2\nimport rego.v1\nallow if {\n",
    )
    .unwrap();
    let yaml = r#"
auth:
  api_keys: { keys: [] }
authz:
  scope_hierarchy: { a: [b], b: [c], c: [a] }
  actions: { "B@D": read }
  policies:
    - { name: p, resources: ["orders"], actions: [fly], scopes: {} }
    - { name: p, resources: ["/x/**"] }
  rego: { files: [ok.rego, broken.rego, missing.rego], timeout: soon }
  opa: { main: { url: "ftp://opa" } }
  risk: { reputation_list: [not-a-cidr, 203.0.113.9/24], risky_countries: [Germany], weights: { country: 101 } }
upstreams: { d: { kind: echo } }
routes:
  - name: anon
    match: { prefix: /a }
    upstream: d
    auth: { anonymous: true }
    authz: { allow: any-authenticated }
  - name: r
    match: { path: "/users/{id}" }
    upstream: d
    auth: { methods: [api_key] }
    authz:
      allow: any-authenticated
      scopes: { any_of: [x] }
      owner: { param: user_id }
      tenant: { param: id, header: x-tenant }
      rego: { query: data.gw.nope }
      opa: { server: other, path: "a b" }
      risk: { step_up: 80, deny: 50 }
      require: {}
      field_masks: { by_scope: { s: ["a..b"] } }
"#;
    std::fs::write(dir.path().join("c.yaml"), yaml).unwrap();
    let e = match load_file(&dir.path().join("c.yaml")) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
    };
    for (path, words) in [
        ("authz.scope_hierarchy", "cycle"),
        ("authz.actions.B@D", "not an HTTP method"),
        ("authz.policies[0].resources[0]", "must start with '/'"),
        ("authz.policies[0].actions[0]", "unknown action \"fly\""),
        ("authz.policies[0].scopes", "at least one scope"),
        ("authz.policies[1].name", "duplicate policy name"),
        ("authz.policies[1]", "needs scopes or roles"),
        ("authz.rego.timeout", ""),
        ("authz.rego.files[1]", "broken.rego"),
        ("authz.rego.files[2]", "missing.rego"),
        ("authz.opa.main.url", "not an http(s) URL"),
        ("authz.risk.reputation_list[0]", "not an IP address or CIDR"),
        (
            "authz.risk.reputation_list[1]",
            "bits set past its /24 prefix",
        ),
        ("authz.risk.risky_countries[0]", "two-letter"),
        ("authz.risk.weights.country", "above 100"),
        ("routes[0].authz", "anonymous route"),
        ("routes[1].authz.allow", "exclude each other"),
        ("routes[1].authz.owner.param", "{user_id}"),
        ("routes[1].authz.tenant", "exactly one"),
        ("routes[1].authz.opa.server", "unknown OPA server"),
        ("routes[1].authz.opa.path", "decision path"),
        ("routes[1].authz.risk", "step_up above deny"),
        ("routes[1].authz.require", "acr or max_age"),
        ("routes[1].authz.field_masks.by_scope.s", ""),
    ] {
        assert!(
            e.iter()
                .any(|m| m.starts_with(&format!("{path}:")) && m.contains(words)),
            "no error at {path} containing {words:?} in {e:#?}"
        );
    }
}

#[test]
fn a_rego_rule_the_modules_do_not_define_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.rego"),
        "package gw\nimport rego.v1\nallow if input.x == 1\n",
    )
    .unwrap();
    let yaml = r#"
auth: { api_keys: { keys: [] } }
authz: { rego: { files: [p.rego] } }
upstreams: { d: { kind: echo } }
routes:
  - { name: a, match: { prefix: /a }, upstream: d, auth: { methods: [api_key] }, authz: { rego: { query: data.gw.allow } } }
  - { name: b, match: { prefix: /b }, upstream: d, auth: { methods: [api_key] }, authz: { rego: { query: data.gw.allw } } }
"#;
    std::fs::write(dir.path().join("c.yaml"), yaml).unwrap();
    let e: Vec<String> = match load_file(&dir.path().join("c.yaml")) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    };
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].starts_with("routes[1].authz.rego.query:"), "{e:#?}");
}

#[test]
fn token_exchange_upstreams_and_routes() {
    let e = errs(
        r#"
upstreams:
  tx: { kind: token_exchange, targets: ["http://127.0.0.1:1"], health_check: {} }
routes:
  - { name: t, match: { path: /token }, upstream: tx }
"#,
    );
    for w in [
        "upstreams.tx.targets: a token_exchange upstream answers in process",
        "upstreams.tx.health_check",
        "routes[0].upstream: a token_exchange upstream needs the token_exchange section",
    ] {
        assert!(e.iter().any(|m| m.starts_with(w)), "missing {w} in {e:#?}");
    }
    let c = load_str(
        r#"
upstreams: { tx: { kind: token_exchange } }
auth:
  jwt: { a: { issuer: https://a.test, hmac_secret: { value: "0123456789abcdef0123456789abcdef" }, algorithms: [HS256], audiences: [https://gw.test] } }
token_exchange:
  jwt_issuers: [a]
  audiences: { orders: {}, billing: { ttl: 30s } }
  clients:
    bff:
      secret_hash: "sha256:0fefc1b27100e636d38ff6bc989040691f4a48220d8bc2183b6bbcfd001524c7"
      audiences: { billing: [read] }
routes:
  - { name: t, match: { path: /token, methods: [POST] }, upstream: tx, auth: { anonymous: true } }
"#,
        Path::new("."),
    )
    .unwrap();
    let t = c.token_exchange.as_ref().unwrap();
    assert_eq!(t.jwt_issuers, [0]);
    assert_eq!(t.audiences[0].name, "billing");
    assert_eq!(t.audiences[0].ttl.as_secs(), 30);
    assert_eq!(t.audiences[1].ttl.as_secs(), 300, "the section's default");
    assert_eq!(t.clients[0].allowed(0), Some(&["read".to_string()][..]));
    assert_eq!(t.clients[0].allowed(1), None);
    assert_eq!(c.upstreams[0].kind, UpstreamKind::TokenExchange);

    // A route's internal token may not share an audience with the token endpoint: a service
    // could not tell the two kinds of token apart. Other audiences are fine.
    let with_route = |audience: &str| {
        format!(
            r#"
upstreams: {{ tx: {{ kind: token_exchange }}, d: {{ kind: echo }} }}
auth:
  jwt: {{ a: {{ issuer: https://a.test, hmac_secret: {{ value: "0123456789abcdef0123456789abcdef" }}, algorithms: [HS256], audiences: [https://gw.test] }} }}
token_exchange:
  jwt_issuers: [a]
  audiences: {{ orders: {{}}, billing: {{}} }}
  clients:
    bff:
      secret_hash: "sha256:0fefc1b27100e636d38ff6bc989040691f4a48220d8bc2183b6bbcfd001524c7"
      audiences: {{ billing: [read] }}
routes:
  - {{ name: t, match: {{ path: /token, methods: [POST] }}, upstream: tx, auth: {{ anonymous: true }} }}
  - {{ name: o, match: {{ prefix: /orders }}, upstream: d, auth: {{ methods: [jwt], internal_token: {{ audience: {audience} }} }} }}
"#
        )
    };
    let e = errs(&with_route("orders"));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with(
            "routes[1].auth.internal_token.audience: \"orders\" is also a token_exchange audience"
        ),
        "{e:#?}"
    );
    load_str(&with_route("orders-internal"), Path::new(".")).unwrap();
}

const SHOP: &str = r#"openapi: 3.1.0
info: { title: t, version: "1" }
paths:
  /items:
    get: { operationId: list, responses: { "200": { description: ok } } }
  /items/{id}:
    parameters: [{ name: id, in: path, required: true, schema: { type: integer } }]
    get: { operationId: one, responses: { "200": { description: ok } } }
    delete: { operationId: drop, responses: { "204": { description: ok } } }
"#;

#[test]
fn an_openapi_group_becomes_one_route_per_operation_under_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.yaml"), SHOP).unwrap();
    let c = load_str(
        r#"
upstreams: { d: { kind: echo } }
routes:
  - name: shop
    match: { prefix: /api/v1/ }
    upstream: d
    rewrite: { replace_prefix: /v1 }
    openapi: { spec: shop.yaml }
  - { name: rest, match: { prefix: / }, upstream: d }
"#,
        dir.path(),
    )
    .unwrap();
    let shop: Vec<&Route> = c.routes.iter().filter(|r| &*r.name == "shop").collect();
    assert_eq!(shop.len(), 3);
    let ops: Vec<(String, String)> = shop
        .iter()
        .map(|r| {
            (
                r.contract.as_ref().unwrap().id.to_string(),
                r.methods.as_ref().unwrap()[0].to_string(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        vec![
            ("list".to_string(), "GET".to_string()),
            ("one".to_string(), "GET".to_string()),
            ("drop".to_string(), "DELETE".to_string())
        ]
    );
    assert_eq!(
        shop[0].path,
        PathMatch::Exact("/api/v1/items".into()),
        "{:?}",
        shop[0].path
    );
    assert_eq!(
        shop[1].path,
        PathMatch::Template(vec![
            Segment::Literal("api".into()),
            Segment::Literal("v1".into()),
            Segment::Literal("items".into()),
            Segment::Param("id".into()),
        ])
    );
    assert_eq!(
        shop[1].rewrite,
        Some(Rewrite::Template(vec![
            TemplatePart::Literal("/v1/items/".into()),
            TemplatePart::Param("id".into()),
        ]))
    );
    assert_eq!(
        shop[0].rewrite,
        Some(Rewrite::Template(vec![TemplatePart::Literal(
            "/v1/items".into()
        )]))
    );
    assert!(
        c.routes
            .iter()
            .any(|r| &*r.name == "rest" && r.contract.is_none())
    );
}

/// An operation whose calls need `;` in the path (a matrix-style parameter) could never be
/// called where semicolons are refused: `check` says so, and accepts it where they are kept.
#[test]
fn matrix_parameters_need_semicolons_kept() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.yaml"),
        r#"openapi: 3.1.0
info: { title: t, version: "1" }
paths:
  /cars/{color}:
    parameters: [{ name: color, in: path, required: true, style: matrix, schema: { type: string } }]
    get: { operationId: cars, responses: { "200": { description: ok } } }
"#,
    )
    .unwrap();
    let yaml = |server: &str| {
        format!(
            "{server}upstreams: {{ d: {{ kind: echo }} }}\nroutes:\n  - {{ name: m, match: {{ prefix: /api }}, upstream: d, openapi: {{ spec: m.yaml }} }}\n"
        )
    };
    let e = load_str(&yaml(""), dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("routes[0].openapi.spec")
            && e.contains("GET /cars/{color}: path parameter color in matrix style")
            && e.contains("server.path_semicolons: keep"),
        "{e}"
    );
    load_str(&yaml("server: { path_semicolons: keep }\n"), dir.path()).unwrap();
}

/// An operation's path was matched as written, never checked: one not in normal form never
/// matched, and its requests fell to a broader route (here `rest`), under that route's rules.
/// It is a `check` error naming the operation and giving the normal form.
#[test]
fn openapi_operation_paths_must_be_in_normal_form() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("o.yaml"),
        r#"openapi: 3.1.0
info: { title: t, version: "1" }
paths:
  /items%3Apurge:
    post: { operationId: purge, responses: { "204": { description: ok } } }
  /größe/{id}:
    parameters: [{ name: id, in: path, required: true, schema: { type: string } }]
    get: { operationId: size, responses: { "200": { description: ok } } }
  /a//b/{id}:
    parameters: [{ name: id, in: path, required: true, schema: { type: string } }]
    get: { operationId: ab, responses: { "200": { description: ok } } }
  /x/%7bid%7d:
    get: { operationId: lower, responses: { "200": { description: ok } } }
  /fine/{id}/$batch:
    parameters: [{ name: id, in: path, required: true, schema: { type: string } }]
    get: { operationId: fine, responses: { "200": { description: ok } } }
"#,
    )
    .unwrap();
    let e = match load_str(
        r#"
upstreams: { d: { kind: echo } }
routes:
  - { name: api, match: { prefix: /api }, upstream: d, openapi: { spec: o.yaml } }
  - { name: rest, match: { prefix: / }, upstream: d }
"#,
        dir.path(),
    ) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
    };
    let want = [
        (
            "routes[0].openapi.spec: o.yaml#/paths/~1items%3Apurge/post: ",
            "write \"/items:purge\"",
        ),
        (
            "routes[0].openapi.spec: o.yaml#/paths/~1größe~1{id}/get: ",
            "write \"/gr%C3%B6%C3%9Fe/{id}\"",
        ),
        (
            "routes[0].openapi.spec: o.yaml#/paths/~1a~1~1b~1{id}/get: ",
            "write \"/a/b/{id}\"",
        ),
        (
            "routes[0].openapi.spec: o.yaml#/paths/~1x~1%7bid%7d/get: ",
            "write \"/x/%7Bid%7D\"",
        ),
    ];
    assert_eq!(e.len(), want.len(), "{e:?}");
    for (m, (at, says)) in e.iter().zip(want) {
        assert!(m.starts_with(at) && m.contains(says), "{m}");
    }
}

#[test]
fn an_openapi_group_takes_paths_and_methods_from_its_document() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.yaml"), SHOP).unwrap();
    let e = match load_str(
        r#"
upstreams: { d: { kind: echo } }
routes:
  - name: a
    match: { path: /x, methods: [GET] }
    upstream: d
    openapi: { spec: shop.yaml, max_violations: 0, limits: { max_depth: 200 } }
  - name: b
    match: { prefix: /b }
    upstream: d
    openapi: { spec: missing.yaml }
"#,
        dir.path(),
    ) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
    };
    for want in [
        "routes[0].match.path: a route with openapi takes its paths from the document",
        "routes[0].match.methods: a route with openapi takes its methods from the document",
        "routes[0].openapi.max_violations: must be 1..=100",
        "routes[0].openapi.limits.max_depth: must be 1..=127",
        "routes[1].openapi.spec: ",
    ] {
        assert!(e.iter().any(|m| m.starts_with(want)), "{want}: {e:?}");
    }
}

const SECURED: &str = r##"openapi: 3.1.0
info: { title: t, version: "1" }
components:
  securitySchemes:
    oauth: { type: oauth2, flows: {} }
    key: { $ref: "#/components/securitySchemes/key2" }
    key2: { type: apiKey, in: header, name: k }
    basic: { type: http, scheme: basic }
    cert: { type: mutualTLS }
security: [ { oauth: [read] } ]
paths:
  /a:
    get: { operationId: a, responses: { "200": { description: ok } } }
    put: { operationId: b, security: [ { key: [admin] }, { oauth: [w], key: [] } ], responses: { "200": { description: ok } } }
    post: { operationId: c, security: [ { basic: [] } ], responses: { "200": { description: ok } } }
  /open:
    get: { operationId: d, security: [ {}, { oauth: [] } ], responses: { "200": { description: ok } } }
    put: { operationId: e, security: [], responses: { "200": { description: ok } } }
    post: { operationId: f, security: [ { cert: [] } ], responses: { "200": { description: ok } } }
"##;

fn errors_of(yaml: &str, dir: &Path) -> Vec<String> {
    match load_str(yaml, dir) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

/// An operation's `security` becomes an authorization rule of its route: alternatives whose
/// credentials the route accepts (an API key scheme's list as roles, OAuth's as scopes; a
/// requirement naming two kinds of credential at once cannot be met); none where the document
/// asks for nothing. A route that cannot meet an operation's requirements is refused — an
/// anonymous one, or one whose methods meet none (`http basic`, an mTLS-only requirement on
/// a route without mtls) — unless `security: ignore`.
#[test]
fn an_openapi_documents_security_becomes_its_routes_rule() {
    use portcullis_core::AuthMethod;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.yaml"), SECURED).unwrap();
    let auth = "auth: { api_keys: { keys: [ { hash: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\", client_id: x } ] }, jwt: { i: { issuer: \"https://i\", jwks_url: \"https://i/jwks\", audiences: [a], algorithms: [ES256] } } }";
    let ops = "\nupstreams: { d: { kind: echo } }\n";
    // Every operation the route can meet; c and f cannot be.
    let errs = errors_of(
        &format!(
            "{auth}{ops}routes:\n  - {{ name: g, match: {{ prefix: / }}, upstream: d, auth: {{ methods: [jwt, api_key] }}, authz: {{ allow: any-authenticated }}, openapi: {{ spec: s.yaml }} }}\n"
        ),
        dir.path(),
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("routes[0].openapi.spec: s.yaml#/paths/~1a/post: no security requirement of the operation can be met on this route (basic: http basic is not a credential the gateway verifies)"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with(
            "routes[0].openapi.spec: s.yaml#/paths/~1open/post: no security requirement"
        ) && errs[1].contains("cert: needs a credential the route's auth.methods do not accept"),
        "{errs:?}"
    );
    // An anonymous route: one error naming the operations that require credentials.
    let errs = errors_of(
        &format!(
            "{auth}{ops}routes:\n  - {{ name: g, match: {{ prefix: / }}, upstream: d, auth: {{ anonymous: true }}, openapi: {{ spec: s.yaml }} }}\n"
        ),
        dir.path(),
    );
    assert_eq!(
        errs,
        [
            "routes[0].auth: the document's operations a, b, c, f require credentials (their security), but the route is anonymous: give it auth.methods, or set openapi.security: ignore"
        ]
    );
    // `ignore`: no rule, nothing refused.
    let c = load_str(
        &format!(
            "{auth}{ops}routes:\n  - {{ name: g, match: {{ prefix: / }}, upstream: d, auth: {{ anonymous: true }}, openapi: {{ spec: s.yaml, security: ignore }} }}\n"
        ),
        dir.path(),
    )
    .unwrap();
    assert!(c.routes.iter().all(|r| r.authz.openapi.is_none()));
    // Without c and f, every operation can be met; the rules as compiled.
    let dir2 = tempfile::tempdir().unwrap();
    let meetable: String = SECURED
        .lines()
        .filter(|l| !l.contains("operationId: c,") && !l.contains("operationId: f,"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir2.path().join("s.yaml"), meetable).unwrap();
    let c = load_str(
        &format!(
            "{auth}{ops}routes:\n  - {{ name: g, match: {{ prefix: / }}, upstream: d, auth: {{ methods: [jwt, api_key] }}, authz: {{ allow: any-authenticated }}, openapi: {{ spec: s.yaml }} }}\n"
        ),
        dir2.path(),
    )
    .unwrap();
    let rule = |id: &str| {
        c.routes
            .iter()
            .find(|r| r.contract.as_ref().is_some_and(|o| &*o.id == id))
            .unwrap()
            .authz
            .openapi
            .clone()
    };
    let a = rule("a").unwrap();
    assert_eq!(a.alternatives.len(), 1);
    assert_eq!(a.alternatives[0].schemes, "oauth");
    assert_eq!(a.alternatives[0].methods, [AuthMethod::Jwt]);
    assert_eq!(
        a.alternatives[0]
            .requirement
            .scopes
            .as_ref()
            .unwrap()
            .all_of,
        ["read"]
    );
    let b = rule("b").unwrap();
    assert_eq!(b.alternatives.len(), 1, "oauth + key at once cannot be met");
    assert_eq!(b.alternatives[0].methods, [AuthMethod::ApiKey]);
    assert_eq!(
        b.alternatives[0].requirement.roles.as_ref().unwrap().all_of,
        ["admin"]
    );
    assert!(
        rule("d").is_none(),
        "{{}} among the alternatives: nothing required"
    );
    assert!(rule("e").is_none(), "security: []");
}

#[test]
fn static_upstreams_answer_from_their_list() {
    let c = load_str(
        r#"
upstreams:
  s:
    kind: static
    responses:
      - { match: "GET /items/{id}", json: { id: 1 } }
      - { match: "* /down", status: 503, headers: { retry-after: "5" }, body: "later" }
"#,
        Path::new("."),
    )
    .unwrap();
    let r = &c.upstreams[0].static_responses;
    assert!(r[0].takes(&http::Method::GET, "/items/7"));
    assert!(!r[0].takes(&http::Method::POST, "/items/7"));
    assert!(!r[0].takes(&http::Method::GET, "/items/7/x"));
    assert!(!r[0].takes(&http::Method::GET, "/items/"));
    assert_eq!(r[0].headers["content-type"], "application/json");
    assert_eq!(&r[0].body[..], br#"{"id":1}"#);
    assert!(r[1].takes(&http::Method::DELETE, "/down"));
    assert_eq!(r[1].status, 503);
    let e = errs(
        r#"
upstreams:
  s:
    kind: static
    targets: ["http://127.0.0.1:1"]
    responses:
      - { match: "/nomethod" }
      - { match: "get /x", status: 99 }
      - { match: "GET /y", body: a, json: 1 }
  p: { targets: ["http://127.0.0.1:1"], responses: [{ match: "GET /" }] }
"#,
    );
    for want in [
        "upstreams.s.targets: a static upstream answers in process and takes no targets",
        "upstreams.s.responses[0].match: write `METHOD /path`",
        "upstreams.s.responses[1].match: \"get\" is not a method",
        "upstreams.s.responses[1].status: 99 is not a final status",
        "upstreams.s.responses[2]: give body or json, not both",
        "upstreams.p.responses: only a static upstream has canned responses",
    ] {
        assert!(e.iter().any(|m| m.starts_with(want)), "{want}: {e:?}");
    }
}

#[test]
fn durations_longer_than_a_century_are_refused_with_their_paths() {
    let e = errs(
        r#"
server: { body_read_timeout: 18446744073709551615s, idle_timeout: 36501d }
upstreams: { u: { targets: ["http://127.0.0.1:1"], request_timeout: 999999999999d, read_timeout: 36501d } }
"#,
    );
    for path in [
        "server.body_read_timeout",
        "server.idle_timeout",
        "upstreams.u.request_timeout",
        "upstreams.u.read_timeout",
    ] {
        assert!(
            e.iter()
                .any(|m| m.starts_with(path) && m.contains("longest duration accepted")),
            "{path}: {e:?}"
        );
    }
    // The longest accepted is taken.
    assert!(errs("server: { body_read_timeout: 36500d }").is_empty());
}

#[test]
fn the_send_timeout_must_be_a_positive_duration() {
    for bad in ["0s", "soon", "-1s"] {
        let e = errs(&format!("server: {{ send_timeout: {bad} }}"));
        assert!(
            e.iter().any(|m| m.starts_with("server.send_timeout")),
            "{bad}: {e:?}"
        );
    }
    assert!(errs("server: { send_timeout: 5s }").is_empty());
}

#[test]
fn the_minimum_send_rate_is_256_bytes_a_second_by_default_and_can_be_off() {
    let rate = |yaml: &str| {
        load_str(yaml, Path::new("."))
            .unwrap()
            .server
            .send_min_bytes_per_second
    };
    assert_eq!(rate(""), 256);
    assert_eq!(rate("server: { send_min_bytes_per_second: 4096 }"), 4096);
    assert_eq!(rate("server: { send_min_bytes_per_second: 0 }"), 0);
    let e = errs("server: { send_min_bytes_per_second: -1 }");
    assert!(
        e.iter()
            .any(|m| m.contains("server") && m.contains("send_min_bytes_per_second")),
        "{e:?}"
    );
}

#[test]
fn an_upstreams_read_timeout_is_a_positive_duration_of_60s_by_default() {
    use std::time::Duration;
    let up = |extra: &str| {
        format!(
            "upstreams: {{ u: {{ targets: [\"http://127.0.0.1:1\"]{extra} }} }}\n\
             routes: [ {{ name: r, match: {{ prefix: / }}, upstream: u }} ]"
        )
    };
    let c = load_str(&up(""), Path::new(".")).unwrap();
    assert_eq!(c.upstreams[0].read_timeout, Duration::from_secs(60));
    let c = load_str(&up(", read_timeout: 5m"), Path::new(".")).unwrap();
    assert_eq!(c.upstreams[0].read_timeout, Duration::from_secs(300));
    for bad in ["0s", "soon", "-1s"] {
        let e = errs(&up(&format!(", read_timeout: {bad}")));
        assert!(
            e.iter().any(|m| m.starts_with("upstreams.u.read_timeout")),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn stop_settings_have_their_defaults_and_are_checked() {
    use std::time::Duration;
    let c = load_str("", Path::new(".")).unwrap();
    assert_eq!(c.server.drain_timeout, Duration::from_secs(15));
    assert_eq!(c.server.stop_delay, Duration::ZERO);
    assert!(!c.server.abort_on_client_close);
    let c = load_str("server: { drain_timeout: 0s }", Path::new(".")).unwrap();
    assert_eq!(c.server.drain_timeout, Duration::ZERO);
    let c = load_str("server: { drain_timeout: 250ms }", Path::new(".")).unwrap();
    assert_eq!(c.server.drain_timeout, Duration::from_millis(250));
    let e = errs("server: { drain_timeout: soon }");
    assert!(
        e.iter().any(|m| m.starts_with("server.drain_timeout")),
        "{e:?}"
    );
    let c = load_str(
        "server: { stop_delay: 5s, abort_on_client_close: true }",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(c.server.stop_delay, Duration::from_secs(5));
    assert!(c.server.abort_on_client_close);
    let e = errs("server: { stop_delay: later }");
    assert!(
        e.iter().any(|m| m.starts_with("server.stop_delay")),
        "{e:?}"
    );
    let e = errs("server: { drain_timeout: 36501d }");
    assert!(
        e.iter()
            .any(|m| m.starts_with("server.drain_timeout")
                && m.contains("longest duration accepted")),
        "{e:?}"
    );
}

#[test]
fn http2_reset_limit_has_its_default_and_is_checked() {
    let c = load_str("", Path::new(".")).unwrap();
    assert_eq!(c.server.http2_max_resets_per_second, 100);
    let c = load_str("server: { http2_max_resets_per_second: 0 }", Path::new(".")).unwrap();
    assert_eq!(c.server.http2_max_resets_per_second, 0, "0: no limit");
    for bad in ["-1", "many", "5000000000"] {
        let e = errs(&format!("server: {{ http2_max_resets_per_second: {bad} }}"));
        assert!(
            e.iter()
                .any(|m| m.starts_with("server.http2_max_resets_per_second")),
            "{bad}: {e:?}"
        );
    }
    // Too large for a 32-bit field: refused by the schema at its path (before, only
    // deserialising failed, with no path). Beyond 64 bits the YAML reader refuses the number.
    for (key, value) in [
        ("http2_max_resets_per_second", "4294967296"),
        ("http2_max_concurrent_streams", "5000000000"),
    ] {
        let e = errs(&format!("server: {{ {key}: {value} }}"));
        assert!(
            e.iter()
                .any(|m| m.starts_with(&format!("server.{key}")) && m.contains("maximum")),
            "{key}: {e:?}"
        );
    }
}

#[test]
fn secrets_are_hidden_from_the_admin_view_and_from_debug() {
    const MARK: &str = "MARKmarkMARKmarkMARKmarkMARKmark";
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/keys/demo.private.pem");
    let pem = std::fs::read_to_string(&key).unwrap();
    let key_body = pem.lines().nth(1).unwrap().to_string();
    let yaml = format!(
        r#"
admin: {{ token: {{ value: {MARK} }} }}
upstreams: {{ demo: {{ kind: echo }} }}
auth:
  jwt:
    a: {{ issuer: https://a.test, hmac_secret: {{ value: {MARK} }}, algorithms: [HS256], audiences: [api] }}
  introspection:
    idp: {{ endpoint: "https://idp.test/introspect", client_id: gw, client_secret: {{ value: {MARK} }} }}
  internal_token: {{ issuer: gw.test, key_file: "{key}" }}
  redis: {{ url: "redis://:{MARK}@127.0.0.1:7000", cluster: true, cluster_nodes: ["redis://:{MARK}@127.0.0.1:7001"] }}
authz:
  opa:
    main: {{ url: "http://127.0.0.1:8181", token: {{ value: {MARK} }} }}
bans:
  rules: [{{ name: scanner, on: [route_not_found], count: 3, within: 1m, ban_for: 1h }}]
  redis: {{ url: "redis://u:{MARK}@127.0.0.1:6379", cluster: false }}
rate_limits:
  store: redis
  redis: {{ url: "rediss://:{MARK}@127.0.0.1:7000", cluster: true, cluster_nodes: ["rediss://:{MARK}@127.0.0.1:7002"] }}
routes:
  - name: r
    match: {{ prefix: / }}
    upstream: demo
    auth: {{ anonymous: true }}
    request_headers:
      set: {{ authorization: "Bearer {MARK}", x-tenant: acme }}
      add: {{ X-Api-Key: {MARK} }}
    response_headers:
      set: {{ set-cookie: "s={MARK}" }}
"#,
        key = key.display()
    );
    let c = match load_str(&yaml, Path::new(".")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let shown = crate::shown(&c.raw).to_string();
    assert!(!shown.contains(MARK), "{shown}");
    // What is not secret is still there, and the URLs keep their user and host.
    for want in [
        r#""x-tenant":"acme""#,
        r#""authorization":"<redacted>""#,
        r#""X-Api-Key":"<redacted>""#,
        "redis://u:<redacted>@127.0.0.1:6379",
        "redis://:<redacted>@127.0.0.1:7001",
        "rediss://:<redacted>@127.0.0.1:7002",
        "https://idp.test/introspect",
    ] {
        assert!(shown.contains(want), "{want} in {shown}");
    }
    let debug = format!("{c:?}");
    assert!(!debug.contains(MARK), "{debug}");
    assert!(!debug.contains(&key_body) && !debug.contains("PRIVATE KEY"));
    // The values themselves are what the gateway uses.
    assert_eq!(c.admin.token.as_ref().unwrap().expose(), MARK);
    assert!(
        c.rate_limits
            .redis
            .as_ref()
            .unwrap()
            .url
            .as_str()
            .contains(MARK)
    );
}

#[test]
fn errors_quoting_a_url_hide_its_password() {
    let e = errs(
        r#"
authz: { opa: { main: { url: "http://gw:hunter2@127.0.0.1:8181" } } }
upstreams: { app: { targets: ["http://u:hunter2@127.0.0.1:9"] } }
"#,
    );
    assert_eq!(e.len(), 2, "{e:?}");
    for m in &e {
        assert!(
            !m.contains("hunter2") && m.contains(":<redacted>@127.0.0.1"),
            "{m}"
        );
    }
}

#[test]
fn route_paths_must_be_in_normalised_form() {
    let e = errs(
        r#"
upstreams: { demo: { kind: echo } }
routes:
  - { name: a, match: { prefix: "/café" }, upstream: demo }
  - { name: b, match: { path: "/x//y" }, upstream: demo }
  - { name: c, match: { path: "/x/%41" }, upstream: demo }
  - { name: d, match: { prefix: "/cafe" }, upstream: demo }
  - { name: e, match: { path: "/caf%c3%a9" }, upstream: demo }
  - { name: f, match: { prefix: "/a%2Fb" }, upstream: demo }
  - { name: g, match: { path: "/x/../../y" }, upstream: demo }
  - { name: h, match: { prefix: "/x%zz" }, upstream: demo }
  - { name: i, match: { prefix: "/x?y=1" }, upstream: demo }
"#,
    );
    assert_eq!(e.len(), 8, "{e:?}");
    // Each names its route, says why, and how to write it when it has a normal form.
    let want = [
        ("routes[0].match.prefix", "write \"/caf%C3%A9\""),
        ("routes[1].match.path", "write \"/x/y\""),
        ("routes[2].match.path", "write \"/x/A\""),
        ("routes[4].match.path", "write \"/caf%C3%A9\""),
        ("routes[5].match.prefix", "can never match: encoded slashes"),
        (
            "routes[6].match.path",
            "can never match: the path climbs above the root",
        ),
        (
            "routes[7].match.prefix",
            "can never match: the path holds a malformed",
        ),
        ("routes[8].match.prefix", "a route matches the path only"),
    ];
    for (m, (route, says)) in e.iter().zip(want) {
        assert!(m.starts_with(route) && m.contains(says), "{m}");
    }
    assert!(e[0].contains("outside ASCII"), "{}", e[0]);
}

/// Route confusion: `/v1/items%3Apurge` was accepted as a route path, and `%3A` spellings
/// decoded by every backend reached it while `:` ones fell to a broader route (now a request's
/// `%3A` is decoded, so such a route could never match). Written with an escape it needs not,
/// or a raw character that needs one, a route path is a `check` error that gives the normal
/// form, template parameters left as written.
#[test]
fn route_paths_with_needless_or_missing_escapes_are_refused_with_their_normal_form() {
    let e = errs(
        r#"
upstreams: { demo: { kind: echo } }
routes:
  - { name: a, match: { path: "/v1/items%3Apurge" }, upstream: demo }
  - { name: b, match: { prefix: "/%24batch" }, upstream: demo }
  - { name: c, match: { path: "/users/%40me/{id}/x%2a" }, upstream: demo }
  - { name: d, match: { prefix: "/a{b" }, upstream: demo }
  - { name: e, match: { path: "/q/{id}/a|b" }, upstream: demo }
  - { name: f, match: { path: "/{id}//x%3d" }, upstream: demo }
"#,
    );
    let want = [
        ("routes[0].match.path", "write \"/v1/items:purge\""),
        ("routes[1].match.prefix", "write \"/$batch\""),
        ("routes[2].match.path", "write \"/users/@me/{id}/x*\""),
        ("routes[3].match.prefix", "write \"/a%7Bb\""),
        ("routes[4].match.path", "write \"/q/{id}/a%7Cb\""),
        ("routes[5].match.path", "write \"/{id}/x=\""),
    ];
    assert_eq!(e.len(), want.len(), "{e:?}");
    for (m, (route, says)) in e.iter().zip(want) {
        assert!(m.starts_with(route) && m.contains(says), "{m}");
    }
    // Written in normal form, they are accepted; a parameter is no brace to escape.
    let cfg = load_str(
        r#"
upstreams: { demo: { kind: echo } }
routes:
  - { name: a, match: { path: "/v1/items:purge" }, upstream: demo }
  - { name: b, match: { prefix: "/$batch" }, upstream: demo }
  - { name: c, match: { path: "/users/@me/{id}/x*" }, upstream: demo }
  - { name: d, match: { prefix: "/a%7Bb" }, upstream: demo }
  - { name: e, match: { path: "/q/{id}/a%7Cb/a+b/%2B" }, upstream: demo }
"#,
        Path::new("."),
    )
    .unwrap();
    assert_eq!(cfg.routes.len(), 5);
    // A malformed template is told as such, once.
    let e = errs(
        r#"
upstreams: { demo: { kind: echo } }
routes:
  - { name: a, match: { path: "/files/{name}.json" }, upstream: demo }
  - { name: b, match: { prefix: "/files/{name}" }, upstream: demo }
"#,
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains("a parameter must be a whole segment"),
        "{}",
        e[0]
    );
    assert!(e[1].contains("a prefix cannot hold parameters"), "{}", e[1]);
}

/// A path with escapes is matched in its normal form: written so, it is accepted (an escaped
/// character outside ASCII, an escaped `%`, a path parameter where semicolons are kept).
#[test]
fn route_paths_in_normal_form_with_escapes_are_accepted() {
    let cfg = load_str(
        r#"
server: { path_semicolons: keep }
upstreams: { demo: { kind: echo } }
routes:
  - { name: a, match: { prefix: "/caf%C3%A9" }, upstream: demo }
  - { name: b, match: { path: "/100%25" }, upstream: demo }
  - { name: c, match: { path: "/a;v=1/b" }, upstream: demo }
  - { name: d, match: { path: "/orders/{id}/caf%C3%A9" }, upstream: demo }
"#,
        Path::new("."),
    )
    .unwrap();
    assert_eq!(cfg.routes.len(), 4);
    // Where they are refused (the default), a route with one could never match.
    let e = load_str(
        r#"
upstreams: { demo: { kind: echo } }
routes:
  - { name: c, match: { path: "/a;v=1/b" }, upstream: demo }
"#,
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("routes[0].match.path") && e.contains("semicolons"),
        "{e}"
    );
}

/// A value a route sets or adds may be a secret (`{ file: … }`, `{ env: … }`, `{ value: … }`)
/// whatever the field's name: it is read at load, marked sensitive, and shown in `/config` as
/// where it comes from (an inline one hidden).
#[test]
fn route_header_values_may_be_secrets() {
    const MARK: &str = "hdr-secret-5f1c";
    let file = std::env::temp_dir().join(format!("portcullis-hdr-secret-{}", std::process::id()));
    std::fs::write(&file, format!("{MARK}-file\n")).unwrap();
    let yaml = format!(
        r#"
upstreams: {{ demo: {{ kind: echo }} }}
routes:
  - name: r
    match: {{ prefix: / }}
    upstream: demo
    request_headers:
      set: {{ x-upstream-sig: {{ file: "{}" }}, x-inline: {{ value: {MARK}-inline }}, x-plain: visible }}
"#,
        file.display()
    );
    let c = load_str(&yaml, Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_file(&file);
    let set: Vec<(String, String, bool)> = c.routes[0]
        .request_headers
        .set
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                v.to_str().unwrap().to_string(),
                v.is_sensitive(),
            )
        })
        .collect();
    assert_eq!(
        set,
        [
            ("x-inline".to_string(), format!("{MARK}-inline"), true),
            ("x-plain".to_string(), "visible".to_string(), false),
            ("x-upstream-sig".to_string(), format!("{MARK}-file"), true),
        ]
    );
    let shown = crate::shown(&c.raw).to_string();
    assert!(!shown.contains(MARK), "{shown}");
    for want in [
        format!(r#""x-upstream-sig":{{"file":"{}"}}"#, file.display()),
        r#""x-inline":{"value":"<redacted>"}"#.to_string(),
        r#""x-plain":"visible""#.to_string(),
    ] {
        assert!(shown.contains(&want), "{want} in {shown}");
    }
    assert!(!format!("{c:?}").contains(MARK));

    // A secret that cannot be read is an error at its path; so is a missing file.
    let e = errs(
        r#"
upstreams: { demo: { kind: echo } }
routes:
  - name: r
    match: { prefix: / }
    upstream: demo
    request_headers: { add: { x-key: { env: PORTCULLIS_TEST_NEVER_SET_9F2 } } }
    response_headers: { set: { x-a: { file: /nonexistent/portcullis/secret } } }
"#,
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("routes[0].request_headers.add.x-key.env")
            && e[0].contains("PORTCULLIS_TEST_NEVER_SET_9F2 is not set"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("routes[0].response_headers.set.x-a.file") && e[1].contains("cannot read"),
        "{}",
        e[1]
    );
}

/// A zero header read timeout would close every connection at its accept (a TLS handshake's
/// deadline is its start): refused, as other timeouts of zero are.
#[test]
fn a_zero_header_read_timeout_is_refused() {
    let e = load_str(
        "server: { header_read_timeout: 0s, idle_timeout: 0s }\nupstreams: { d: { kind: echo } }\nroutes: [{ name: r, match: { prefix: / }, upstream: d }]\n",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("server.header_read_timeout: must be greater than 0")
            && e.contains("server.idle_timeout: must be greater than 0"),
        "{e}"
    );
}

#[test]
fn health_check_host_and_max_ejection_percent() {
    let c = load_str(
        "upstreams: { u: { targets: [\"http://127.0.0.1:1\"], health_check: { host: internal.example:8080 }, passive_health: { max_ejection_percent: 100 } } }",
        Path::new("."),
    )
    .unwrap();
    let u = &c.upstreams[0];
    assert_eq!(
        u.health_check.as_ref().unwrap().host.as_deref(),
        Some("internal.example:8080")
    );
    assert_eq!(u.passive_health.max_ejection_percent, 100);
    let c = load_str(
        "upstreams: { u: { targets: [\"http://127.0.0.1:1\"], health_check: {} } }",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(c.upstreams[0].health_check.as_ref().unwrap().host, None);
    assert_eq!(c.upstreams[0].passive_health.max_ejection_percent, 50);
    let e = errs(
        "upstreams: { u: { targets: [\"http://127.0.0.1:1\"], health_check: { host: \"user@internal.example\" }, passive_health: { max_ejection_percent: 101 } } }",
    );
    for w in [
        "upstreams.u.health_check.host",
        "upstreams.u.passive_health.max_ejection_percent",
    ] {
        assert!(e.iter().any(|m| m.starts_with(w)), "missing {w} in {e:#?}");
    }
    let e = errs(
        "upstreams: { u: { targets: [\"http://127.0.0.1:1\"], health_check: { host: \"a b\" } } }",
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("upstreams.u.health_check.host")),
        "{e:#?}"
    );
}

#[test]
fn a_client_tier_is_bound_only_to_an_authority_that_exists() {
    let yaml = |authority: &str| {
        format!(
            r#"
listeners: [ {{ name: edge, address: "127.0.0.1:0" }} ]
auth:
  jwt:
    corp: {{ issuer: https://corp.test, hmac_secret: {{ value: "0123456789abcdef0123456789abcdef" }}, algorithms: [HS256], audiences: [api] }}
rate_limits:
  tiers: [free, pro]
  clients:
    partner: {{ tier: pro, authority: {authority} }}
    web: free
"#
        )
    };
    for known in ["corp", "edge"] {
        assert!(
            errs(&yaml(known)).is_empty(),
            "{known}: {:?}",
            errs(&yaml(known))
        );
    }
    // `api_keys` is an authority only when API keys are configured.
    for unknown in ["crop", "api_keys"] {
        let e = errs(&yaml(unknown));
        assert_eq!(e.len(), 1, "{unknown}: {e:?}");
        assert!(
            e[0].starts_with("rate_limits.clients.partner.authority:")
                && e[0].contains("names no issuer"),
            "{e:?}"
        );
    }
    // Neither a tier nor an object with both fields: a schema error at the entry.
    let e = errs(&yaml("corp").replace("tier: pro, authority: corp", "tier: pro"));
    assert!(
        e.iter()
            .any(|m| m.starts_with("rate_limits.clients.partner")),
        "{e:?}"
    );
}

/// A key written twice in one mapping is refused, every such key by its path, wherever it
/// is: the last would silently replace the first (a whole `admin:` section, say).
#[test]
fn repeated_keys_are_refused_with_their_paths() {
    let e = errs(
        r#"
admin: { token: { value: "0123456789abcdef" } }
upstreams:
  demo: { kind: echo }
routes:
  - { name: a, match: { prefix: /a, prefix: /b }, upstream: demo }
  - name: b
    match: { prefix: /c }
    upstream: demo
    upstream: demo
admin: { address: "127.0.0.1:9901" }
waf: { 1: x, '1': y }
"#,
    );
    assert_eq!(
        e,
        vec![
            "routes[0].match.prefix: written more than once in the same mapping (only the last would be used): merge them",
            "routes[1].upstream: written more than once in the same mapping (only the last would be used): merge them",
            "admin: written more than once in the same mapping (only the last would be used): merge them",
            "waf.1: written more than once in the same mapping (only the last would be used): merge them",
        ]
    );
    // Keys compare as the text the JSON value keeps: `16` and `0x10`, `true` and `True`,
    // `1` and `+1` are two keys there, so no repeat (whatever else is said of them).
    for pair in ["16: a, 0x10: b", "true: a, True: b", "1: a, +1: b"] {
        let e = errs(&format!("waf: {{ {pair} }}\n"));
        assert!(
            !e.iter().any(|m| m.contains("more than once")),
            "{pair}: {e:?}"
        );
    }
    // The same keys in different mappings are not repeats; YAML merge keys (`<<`) and aliases
    // still work.
    assert!(
        errs(
            r#"
upstreams:
  demo: &u { kind: echo }
  other: *u
routes:
  - { name: a, match: { prefix: /a }, upstream: demo }
  - { name: b, match: { prefix: /b }, upstream: other }
"#
        )
        .is_empty()
    );
}

/// `/config` hides the password of every URL in a value, not only a first one; a list of
/// URLs in one rate-limit `redis.url` is refused (seed nodes go in `cluster_nodes`).
#[test]
fn every_url_password_in_a_value_is_hidden_and_url_lists_refused() {
    let raw =
        parse_raw("bans: { redis: { url: \"redis://:pw1@a:6379/0,redis://:pw2@b:6379/0\" } }\n")
            .unwrap();
    let shown = crate::shown(&raw).to_string();
    assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
    assert!(shown.contains("redis://:<redacted>@b:6379/0"), "{shown}");
    let e = errs(
        "rate_limits:\n  store: redis\n  redis: { url: \"redis://:pw1@a:6379/0,redis://:pw2@b:6379/0\", cluster: true, cluster_nodes: [\"redis://c:1 redis://d:1\", \"http://e\"] }\n",
    );
    assert_eq!(
        e,
        vec![
            "rate_limits.redis.url: one URL, without commas or blanks (more seed nodes go in redis.cluster_nodes)",
            "rate_limits.redis.cluster_nodes[0]: one URL, without commas or blanks (more seed nodes go in redis.cluster_nodes)",
            "rate_limits.redis.cluster_nodes[1]: a redis:// or rediss:// URL",
        ],
    );
}

#[test]
fn method_overrides_are_refused_by_default_and_can_be_passed() {
    let c = load_str("", Path::new(".")).unwrap();
    assert_eq!(c.server.method_override, MethodOverride::Refuse);
    let c = load_str("server: { method_override: refuse }", Path::new(".")).unwrap();
    assert_eq!(c.server.method_override, MethodOverride::Refuse);
    let c = load_str("server: { method_override: pass }", Path::new(".")).unwrap();
    assert_eq!(c.server.method_override, MethodOverride::Pass);
    for bad in ["allow", "true", "Pass"] {
        let e = errs(&format!("server: {{ method_override: {bad} }}"));
        assert!(
            e.iter().any(|m| m.starts_with("server.method_override")),
            "{bad}: {e:?}"
        );
    }
}

/// `spiffe_bundles` keys are trust domains as SPIFFE ids spell them, and each file holds
/// certificates; every error at its own path.
#[test]
fn spiffe_bundles_name_trust_domains_and_hold_certificates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "no certificate\n").unwrap();
    let errs = errors_of(
        r#"listeners:
  - name: public
    address: "127.0.0.1:0"
    tls:
      certificates: [{ cert_file: c.pem, key_file: k.pem }]
      client_auth: { ca_file: missing.pem, spiffe_bundles: { "Prod.Test": empty.pem, "prod.test": empty.pem, "a/b": x.pem } }
upstreams: { d: { kind: echo } }
routes: [ { name: r, match: { prefix: / }, upstream: d, auth: { anonymous: true } } ]
"#,
        dir.path(),
    );
    let at = |path: &str, says: &str| {
        assert!(
            errs.iter().any(|e| e.starts_with(&format!(
                "listeners[0].tls.client_auth.spiffe_bundles.{path}: "
            )) && e.contains(says)),
            "{path}: {errs:#?}"
        );
    };
    at("Prod.Test", "not a SPIFFE trust domain");
    at("a/b", "not a SPIFFE trust domain");
    at("prod.test", "holds no certificate");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("listeners[0].tls.client_auth.ca_file: ")),
        "{errs:#?}"
    );
}

/// `websocket:` on a route: off by default; `true` or a map turns it on (beside `cors:` too); a
/// wrong value, an unknown key, an origin that is none and `*` with others are each reported
/// at their path.
#[test]
fn route_websocket_settings() {
    let c = load_str(
        r#"
upstreams: { d: { kind: echo } }
routes:
  - { name: off, match: { path: /off }, upstream: d }
  - { name: no, match: { path: /no }, upstream: d, websocket: false }
  - { name: yes, match: { path: /yes }, upstream: d, websocket: true }
  - { name: listed, match: { path: /listed }, upstream: d, websocket: { origins: ["https://app.example.com"] } }
  - { name: cors, match: { path: /cors }, upstream: d, websocket: {}, cors: { allowed_origins: ["https://a.com"] } }
  - { name: sized, match: { path: /sized }, upstream: d, websocket: { max_message_bytes: 64KiB } }
"#,
        Path::new("."),
    )
    .unwrap();
    let on: Vec<bool> = c.routes.iter().map(|r| r.websocket.is_some()).collect();
    assert_eq!(on, [false, false, true, true, true, true]);
    // Unset, the route's body limit stands (the proxy reads `None` so).
    let max: Vec<Option<u64>> = c.routes[2..]
        .iter()
        .map(|r| r.websocket.as_ref().and_then(|w| w.max_message_bytes()))
        .collect();
    assert_eq!(max, [None, None, None, Some(64 << 10)]);

    let e = errs(
        r#"
upstreams: { d: { kind: echo } }
routes:
  - { name: a, match: { path: /a }, upstream: d, websocket: maybe }
  - { name: b, match: { path: /b }, upstream: d, websocket: { origin: [x] } }
"#,
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("routes[0].websocket:"), "{e:?}");
    assert!(
        e[1].starts_with("routes[1].websocket:") && e[1].contains("origin"),
        "{e:?}"
    );
    let e = errs(
        r#"
upstreams: { d: { kind: echo } }
routes:
  - { name: c, match: { path: /c }, upstream: d, websocket: { origins: ["https://a.com"] }, cors: { allowed_origins: ["https://a.com"] } }
  - { name: e, match: { path: /e }, upstream: d, websocket: { origins: ["https://a.com/x", "*"] } }
"#,
    );
    assert_eq!(
        e,
        [
            "routes[1].websocket.origins[0]: \"https://a.com/x\": an origin has no path",
            "routes[1].websocket.origins[1]: \"*\" cannot be combined with other origins",
        ]
    );
    let e = errs(
        r#"
upstreams: { d: { kind: echo } }
routes:
  - { name: z, match: { path: /z }, upstream: d, websocket: { max_message_bytes: 0 } }
  - { name: l, match: { path: /l }, upstream: d, websocket: { max_message_bytes: lots, origins: [x] } }
  - { name: n, match: { path: /n }, upstream: d, max_body_bytes: 0, websocket: true }
  - { name: s, match: { path: /s }, upstream: d, max_body_bytes: 0, websocket: { max_message_bytes: 1 } }
"#,
    );
    assert_eq!(e.len(), 4, "{e:?}");
    assert_eq!(
        e[3],
        "routes[2].websocket: a client's messages are limited to the route's max_body_bytes, which is 0: set websocket.max_message_bytes"
    );
    assert_eq!(
        e[0],
        "routes[0].websocket.max_message_bytes: must be at least 1 byte"
    );
    assert!(
        e[1].starts_with("routes[1].websocket.max_message_bytes: \"lots\""),
        "{e:?}"
    );
    assert!(e[2].starts_with("routes[1].websocket.origins[0]:"), "{e:?}");
}

/// A route's SPIFFE rules are written as the IDs they compare with: a trust domain other than
/// lower-case (or with a scheme or path) and a path pattern whose segments no SPIFFE ID holds
/// could never match, and are errors at their paths — never a crash on a pattern that does not
/// start with `/`.
#[test]
fn route_spiffe_rules_could_match_an_id() {
    let e = errs(
        r#"
upstreams: { d: { kind: echo } }
routes:
  - name: r
    match: { prefix: / }
    upstream: d
    auth:
      methods: [mtls]
      mtls:
        trust_domains: [Prod.Example, "spiffe://prod.example", prod.example]
        spiffe_paths: ["é/x", "/ns//sa", "/ns/**/x", "/ns/*/sa/api", "/a/", "/ns/prod/**"]
"#,
    );
    let at = |p: &str| {
        e.iter()
            .filter(|m| m.starts_with(&format!("routes[0].auth.mtls.{p}: ")))
            .count()
    };
    assert_eq!(at("trust_domains[0]"), 1, "{e:#?}");
    assert_eq!(at("trust_domains[1]"), 1, "{e:#?}");
    assert_eq!(at("trust_domains[2]"), 0, "{e:#?}");
    for (i, bad) in [
        (0, true),
        (1, true),
        (2, true),
        (3, false),
        (4, true),
        (5, false),
    ] {
        assert_eq!(
            at(&format!("spiffe_paths[{i}]")),
            usize::from(bad),
            "{i}: {e:#?}"
        );
    }
    // (Beside the listener the route's `mtls` needs, which this file has none of.)
    assert_eq!(e.len(), 7, "{e:#?}");
}

/// Two JWT issuers with the same `iss` on one route: a token goes to the first alone, so the
/// second could never verify one there — an error at the route's methods; on two routes apart
/// (one IdP, an audience per API) they are fine. A key-set cooldown under a second or a fetch
/// timeout under 100 ms is refused: the first would let forged `kid`s make a fetch each.
#[test]
fn jwt_issuers_sharing_an_iss_and_key_set_floors() {
    let issuers = r#"auth:
  jwt:
    a: { issuer: "https://i", jwks_url: "https://i/jwks", audiences: [orders], algorithms: [ES256] }
    b: { issuer: "https://i", jwks_url: "https://i/jwks", audiences: [billing], algorithms: [ES256] }
upstreams: { d: { kind: echo } }
"#;
    let e = errs(&format!(
        "{issuers}routes:\n  - {{ name: both, match: {{ prefix: / }}, upstream: d, auth: {{ methods: [jwt] }} }}\n"
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with(
            "routes[0].auth.methods: jwt issuers \"a\" and \"b\" have the same issuer"
        ),
        "{e:#?}"
    );
    let e = errs(&format!(
        "{issuers}routes:\n  - {{ name: o, match: {{ prefix: /o }}, upstream: d, auth: {{ methods: [\"jwt:a\"] }} }}\n  - {{ name: b, match: {{ prefix: /b }}, upstream: d, auth: {{ methods: [\"jwt:b\"] }} }}\n"
    ));
    assert!(e.is_empty(), "{e:#?}");

    let e = errs(
        r#"auth:
  jwt:
    a: { issuer: "https://i", jwks_url: "https://i/jwks", algorithms: [ES256], audiences: [api], jwks_cache: { unknown_kid_cooldown: 0s, fetch_timeout: 10ms } }
"#,
    );
    assert_eq!(
        e,
        [
            "auth.jwt.a.jwks_cache.unknown_kid_cooldown: at least 1s: it bounds the fetches that tokens with unknown kids can cause",
            "auth.jwt.a.jwks_cache.fetch_timeout: at least 100ms",
        ]
    );
}

/// HEAD asks for what GET answers: unless mapped itself, it takes GET's action, also when
/// `authz.actions` remaps GET (a policy on the new action then governs HEAD too).
#[test]
fn head_follows_gets_action_unless_mapped() {
    let action_of = |yaml: &str, m: http::Method| -> String {
        let c = load_str(yaml, Path::new(".")).unwrap();
        let found: Vec<&str> = c
            .authz
            .actions
            .iter()
            .filter(|(k, _)| *k == m)
            .map(|(_, a)| &**a)
            .collect();
        assert_eq!(found.len(), 1, "{m}: {:?}", c.authz.actions);
        found[0].to_string()
    };
    assert_eq!(action_of("authz: {}\n", http::Method::HEAD), "read");
    let remapped = "authz: { actions: { GET: list } }\n";
    assert_eq!(action_of(remapped, http::Method::GET), "list");
    assert_eq!(action_of(remapped, http::Method::HEAD), "list");
    let both = "authz: { actions: { GET: list, HEAD: peek } }\n";
    assert_eq!(action_of(both, http::Method::HEAD), "peek");
    let head_first = "authz: { actions: { HEAD: peek, GET: list } }\n";
    assert_eq!(action_of(head_first, http::Method::HEAD), "peek");
}

/// A route naming an issuer twice over (`jwt` and `jwt:a`) has one issuer, not two sharing an
/// `iss`; the API key's query parameter must be written as frameworks read it (it is read
/// under every spelling that folds to it).
#[test]
fn route_auth_names_issuers_and_the_api_key_parameter_plainly() {
    let base = r#"auth:
  api_keys: { keys: [ { hash: "sha256:0000000000000000000000000000000000000000000000000000000000000000", client_id: x } ] }
  jwt:
    a: { issuer: "https://a", jwks_url: "https://a/jwks", algorithms: [ES256], audiences: [api] }
    b: { issuer: "https://b", jwks_url: "https://b/jwks", algorithms: [ES256], audiences: [api] }
upstreams: { d: { kind: echo } }
routes:
"#;
    let e = errs(&format!(
        "{base}  - {{ name: r, match: {{ prefix: / }}, upstream: d, auth: {{ methods: [jwt, \"jwt:a\"] }} }}\n"
    ));
    assert!(e.is_empty(), "{e:#?}");
    for (name, ok) in [
        ("api_key", true),
        ("auth[key]", false),
        ("API_KEY", false),
        ("api.key", false),
        ("", false),
    ] {
        let e = errs(&format!(
            "{base}  - {{ name: r, match: {{ prefix: / }}, upstream: d, auth: {{ methods: [api_key], api_key_query: \"{name}\" }} }}\n"
        ));
        assert_eq!(e.is_empty(), ok, "{name}: {e:#?}");
        if !ok {
            assert!(e[0].starts_with("routes[0].auth.api_key_query: "), "{e:#?}");
        }
    }
}

#[test]
fn trusted_proxies_are_networks_of_proxies() {
    let e = errs(
        r#"
server: { trusted_proxies: [0.0.0.0/0, "::/0", 10.0.0.0/7, 10.0.0.0/8, "fc00::/7", 192.0.2.1/24, "2000::/7", "2001:db8::/32"] }
"#,
    );
    assert_eq!(e.len(), 5, "{e:#?}");
    for (i, want) in [
        (0, "0.0.0.0/0 is wider than any network of proxies"),
        (1, "::/0 is wider"),
        (2, "10.0.0.0/7 is wider"),
        (5, "\"192.0.2.1/24\" has bits set past its /24 prefix"),
        (6, "2000::/7 is wider"),
    ] {
        let path = format!("server.trusted_proxies[{i}]: ");
        assert!(
            e.iter()
                .any(|m| m.strip_prefix(&path).is_some_and(|m| m.starts_with(want))),
            "{path}{want}: {e:#?}"
        );
    }
}

/// A route's `rename` makes its target what came under its source, and nothing else; a rename
/// into a header the gateway vouches for is refused.
#[test]
fn header_renames_never_pass_on_a_senders_own_target() {
    let c = load_str(
        r#"
upstreams: { d: { kind: echo } }
routes:
  - name: r
    match: { prefix: / }
    upstream: d
    request_headers: { rename: { x-legacy-user: x-remote-user } }
"#,
        Path::new("."),
    )
    .unwrap();
    let ops = &c.routes[0].request_headers;
    let mut h = http::HeaderMap::new();
    h.insert("x-remote-user", http::HeaderValue::from_static("admin"));
    ops.apply(&mut h);
    assert!(h.get("x-remote-user").is_none(), "{h:?}");
    h.insert("x-legacy-user", http::HeaderValue::from_static("ann"));
    h.insert("x-remote-user", http::HeaderValue::from_static("admin"));
    ops.apply(&mut h);
    assert_eq!(
        h.get_all("x-remote-user").iter().collect::<Vec<_>>(),
        ["ann"]
    );
    assert!(h.get("x-legacy-user").is_none());

    let e = errs(
        r#"
auth: { identity_headers: { tenant: x-org, strip: [x-internal-role] } }
upstreams: { d: { kind: echo } }
routes:
  - name: r
    match: { prefix: / }
    upstream: d
    request_headers: { rename: { x-legacy: x-user-id, x-org-hint: x-org, x-role: X-Internal-Role, x-user-id: x-remote-user, x-app-user: x_user_id } }
"#,
    );
    for from in ["x-legacy", "x-org-hint", "x-role", "x-app-user"] {
        let want = format!("routes[0].request_headers.rename.{from}: ");
        assert!(e.iter().any(|m| m.starts_with(&want)), "{want}: {e:#?}");
    }
    assert_eq!(e.len(), 4, "{e:#?}");
    // The route's verified tenant and its gateway-signed token too.
    let e = errs(
        r#"
upstreams: { d: { kind: echo } }
auth:
  jwt: { a: { issuer: https://a.test, hmac_secret: { value: "0123456789abcdef0123456789abcdef" }, algorithms: [HS256], audiences: [api] } }
routes:
  - name: r
    match: { prefix: / }
    upstream: d
    auth: { methods: [jwt], internal_token: { audience: svc } }
    authz: { allow: any-authenticated, tenant: { claim: org, header: x-tenant } }
    request_headers: { rename: { x-client-tenant: X-Portcullis-Tenant, x-legacy-auth: authorization } }
"#,
    );
    for from in ["x-client-tenant", "x-legacy-auth"] {
        let want = format!("routes[0].request_headers.rename.{from}: ");
        assert!(e.iter().any(|m| m.starts_with(&want)), "{want}: {e:#?}");
    }
    assert_eq!(e.len(), 2, "{e:#?}");
    // Another route's verified tenant and a policy decision's header, which the gateway
    // removes from every request and sets on some.
    let e = errs(
        r#"
upstreams: { d: { kind: echo } }
authz: { policy_headers: [x-allowed-accounts] }
auth:
  jwt: { a: { issuer: https://a.test, hmac_secret: { value: "0123456789abcdef0123456789abcdef" }, algorithms: [HS256], audiences: [api] } }
routes:
  - name: t
    match: { prefix: /t }
    upstream: d
    auth: { methods: [jwt] }
    authz: { allow: any-authenticated, tenant: { claim: org, header: x-tenant, upstream_header: x-verified-tenant } }
  - name: r
    match: { prefix: /r }
    upstream: d
    auth: { anonymous: true }
    request_headers: { rename: { x-t: x_verified_tenant, x-acc: x-allowed-accounts } }
"#,
    );
    for from in ["x-t", "x-acc"] {
        let want = format!("routes[1].request_headers.rename.{from}: ");
        assert!(e.iter().any(|m| m.starts_with(&want)), "{want}: {e:#?}");
    }
    assert_eq!(e.len(), 2, "{e:#?}");
}

/// The token endpoint takes client secrets and tokens: no listener may carry it in cleartext
/// but one on loopback, or one behind a TLS terminator the gateway trusts (RFC 6749 §3.2).
#[test]
fn the_token_endpoint_is_not_served_in_cleartext() {
    let yaml = |listener: &str, server: &str| {
        format!(
            r#"
listeners: [{{ name: edge, address: "{listener}" }}]
{server}
upstreams: {{ tx: {{ kind: token_exchange }} }}
auth:
  jwt: {{ a: {{ issuer: https://a.test, hmac_secret: {{ value: "0123456789abcdef0123456789abcdef" }}, algorithms: [HS256], audiences: [https://gw.test] }} }}
token_exchange:
  jwt_issuers: [a]
  audiences: {{ orders: {{}} }}
  clients:
    bff: {{ secret_hash: "sha256:0fefc1b27100e636d38ff6bc989040691f4a48220d8bc2183b6bbcfd001524c7", audiences: {{ orders: [read] }} }}
routes:
  - {{ name: t, match: {{ path: /token, methods: [POST] }}, upstream: tx, auth: {{ anonymous: true }} }}
"#
        )
    };
    let e = errs(&yaml("0.0.0.0:8080", ""));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("routes[0].upstream: the token endpoint would take client secrets and tokens in cleartext on listener edge (0.0.0.0:8080)"),
        "{e:#?}"
    );
    assert!(errs(&yaml("127.0.0.1:8080", "")).is_empty());
    assert!(errs(&yaml("[::1]:8080", "")).is_empty());
    assert!(
        errs(&yaml(
            "0.0.0.0:8080",
            "server: { trusted_proxies: [10.0.0.0/8] }"
        ))
        .is_empty()
    );
}
