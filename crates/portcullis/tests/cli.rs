//! The command line: `check` reports every error with its path and fails; every example passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_example_passes_check() {
    let dir = repo_root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "examples missing: {files:?}");
    for f in files {
        let (code, out, err) = run(&["check", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {out}{err}", f.display());
        assert!(out.contains(": ok"), "{out}");
        // Each example documents how to exercise it.
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("curl "), "{} shows no curl line", f.display());
    }
}

#[test]
fn check_lists_every_error_with_its_path_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        r#"
listeners:
  - { name: public, address: "127.0.0.1:99999" }
upstreams:
  shop: { targets: ["ftp://nowhere"] }
  demo: { kind: echo, targets: ["http://127.0.0.1:1"] }
routes:
  - name: a
    match: { prefix: /a }
    upstream: billing
  - name: a
    match: { path: "/b/{id}", methods: [GET] }
    upstream: demo
    rewrite: { template: "/c/{nope}" }
    timeout: forever
    ip_filter: { allow: [300.1.1.1] }
"#,
    )
    .unwrap();
    let (code, out, err) = run(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    for want in [
        "listeners[0].address",
        "upstreams.shop.targets[0]",
        "upstreams.demo.targets",
        "routes[0].upstream: unknown upstream \"billing\"",
        "routes[1].name: duplicate route name",
        "routes[1].rewrite.template",
        "routes[1].timeout",
        "routes[1].ip_filter.allow[0]",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("8 error(s)"), "{err}");
}

/// What the gateway can only partly enforce is said by `check` (and at start), without
/// failing it.
#[test]
fn check_prints_the_load_warnings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("forms.yaml"),
        r#"openapi: 3.1.0
info: { title: t, version: "1" }
paths:
  /login:
    post:
      requestBody:
        required: true
        content:
          multipart/form-data:
            schema: { type: object, properties: { user: { type: string } } }
      responses: { "204": { description: ok } }
  /profile:
    post:
      requestBody:
        content:
          application/x-www-form-urlencoded:
            schema: { type: object, properties: { address: { type: object } } }
      responses: { "204": { description: ok } }
"#,
    )
    .unwrap();
    let file = dir.path().join("gw.yaml");
    std::fs::write(
        &file,
        r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
upstreams: { demo: { kind: echo } }
routes:
  - { name: api, match: { prefix: /api }, upstream: demo, openapi: { spec: forms.yaml } }
"#,
    )
    .unwrap();
    let (code, out, err) = run(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(err.contains("WARN"), "{err}");
    assert!(
        err.contains("cannot be checked against their schema"),
        "{err}"
    );
    assert!(err.contains("multipart/form-data"), "{err}");
    // A form field the form reader cannot take as the document has it.
    assert!(err.contains("without style: deepObject"), "{err}");
    assert!(err.contains("address"), "{err}");
}

#[test]
fn check_reports_unknown_keys_and_wrong_types_all_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typos.yaml");
    std::fs::write(
        &file,
        "listners: []\nserver: { limits: { max_header_count: many } }\nroutes:\n  - { name: r, match: { prefix: / }, upstream: x, upstrem: y }\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("listners"), "{err}");
    assert!(err.contains("server.limits.max_header_count"), "{err}");
    assert!(
        err.contains("routes[0]") && err.contains("upstrem"),
        "{err}"
    );
}

#[test]
fn check_refuses_missing_tls_files_and_unreadable_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tls.yaml");
    std::fs::write(
        &file,
        "listeners:\n  - name: s\n    address: 127.0.0.1:0\n    tls: { certificates: [ { cert_file: nope.pem, key_file: nope.key } ], min_version: \"1.1\" }\n",
    )
    .unwrap();
    let (code, _, err) = run(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("listeners[0].tls.certificates[0].cert_file"),
        "{err}"
    );
    assert!(
        err.contains("listeners[0].tls.certificates[0].key_file"),
        "{err}"
    );
    assert!(err.contains("listeners[0].tls.min_version"), "{err}");

    let (code, _, err) = run(&["check", "/definitely/not/here.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn run_refuses_a_broken_config_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "routes: [ { name: r, match: { prefix: / }, upstream: ghost } ]\n",
    )
    .unwrap();
    let (code, out, err) = run(&["run", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(!out.contains("portcullis: ready"), "{out}");
    assert!(err.contains("routes[0].upstream"), "{err}");
}

#[test]
fn schema_is_json_schema_of_the_config() {
    let (code, out, _) = run(&["schema"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["$schema"]
            .as_str()
            .unwrap_or("")
            .contains("json-schema.org"),
        "{v}"
    );
    for key in [
        "listeners",
        "admin",
        "server",
        "upstreams",
        "routes",
        "audit",
        "logging",
    ] {
        assert!(v["properties"][key].is_object(), "no {key} in schema");
    }
    assert_eq!(v["additionalProperties"], false);
}
