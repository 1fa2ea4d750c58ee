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

#[test]
fn inline_secrets_are_redacted_when_serialised() {
    let c = load_str("admin: { token: { value: s3cret } }", Path::new(".")).unwrap();
    let shown = serde_json::to_string(&c.raw).unwrap();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("<redacted>"));
    assert_eq!(c.admin.token.as_deref(), Some("s3cret"));
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
        set: [("x-set".to_string(), "1".to_string())].into(),
        add: [("x-add".to_string(), "2".to_string())].into(),
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
            || e.message.contains("is not set")
            || e.path.ends_with("ca_file");
        assert!(external, "unexpected error in the documented example: {e}");
    }
}
