//! In-process pipeline tests: no sockets.

use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use portcullis_core::{BoxError, RejectReason, Scheme};
use std::path::Path;

#[test]
fn the_built_order_is_the_written_order() {
    let cfg = portcullis_config::load_str("", Path::new(".")).unwrap();
    let p = Pipeline::build(&cfg, &Shared::new()).unwrap();
    assert_eq!(p.ids(), ORDER);
    // Pin the order itself: a change here is a security decision, made on purpose.
    let names: Vec<&str> = ORDER.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "client_address",
            "protocol",
            "normalize",
            "request_limits",
            "ip_filter",
            "route",
            "route_ip_filter",
            "cors",
            "body_limit",
            "ratelimit_pre",
            "waf",
            "authn",
            "ratelimit",
            "authz",
            "contract",
            "identity"
        ]
    );
}

const CFG: &str = r#"
server:
  trusted_proxies: [10.0.0.0/8]
  ip_filter: { deny: [192.0.2.66] }
  limits: { max_uri_bytes: 64 }
upstreams: { d: { kind: echo } }
routes:
  - name: admin
    match: { prefix: /admin }
    upstream: d
    ip_filter: { allow: [127.0.0.0/8] }
  - name: public
    match: { prefix: /public, methods: [GET] }
    upstream: d
    max_body_bytes: 10
  - name: cafe
    match: { prefix: "/caf%C3%A9" }
    upstream: d
  - name: purge
    match: { path: "/v1/items:purge", methods: [POST] }
    upstream: d
    ip_filter: { allow: [127.0.0.0/8] }
  - name: v1
    match: { prefix: /v1 }
    upstream: d
  - name: brace
    match: { path: "/q/a%7Bb" }
    upstream: d
  - name: v1-item
    match: { path: "/v1/things/{id}" }
    upstream: d
"#;

async fn run(
    method: &str,
    uri: &str,
    peer: &str,
    headers: &[(&str, &str)],
) -> (RequestCtx, Result<Flow, Rejection>, String) {
    let cfg = Arc::new(portcullis_config::load_str(CFG, Path::new(".")).unwrap());
    let snap = Snapshot::new(cfg, &Shared::new()).unwrap();
    let mut b = http::Request::builder().method(method).uri(uri);
    if !headers.iter().any(|(k, _)| *k == "host") {
        b = b.header("host", "gateway.test");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (head, ()) = b.body(()).unwrap().into_parts();
    let body = Full::new(Bytes::new())
        .map_err(|e| -> BoxError { match e {} })
        .boxed_unsync();
    let mut req = GatewayRequest::new(head, body);
    let mut ctx = RequestCtx::new(peer.parse().unwrap(), Scheme::Http, Arc::from("test"));
    let r = snap.pipeline.run(&mut req, &mut ctx).await;
    let path = req.head.uri.to_string();
    (ctx, r, path)
}

fn reason(r: &Result<Flow, Rejection>) -> Option<RejectReason> {
    r.as_ref().err().map(|r| r.reason)
}

/// A path a template takes whose capture is not UTF-8 once decoded is a 400 with its detail,
/// not left to the `/v1` prefix route.
#[tokio::test]
async fn an_undecodable_capture_is_a_bad_request() {
    let (ctx, r, _) = run("GET", "/v1/things/%FF", "127.0.0.1:1", &[]).await;
    let Err(rej) = r else {
        panic!("routed to {:?}", ctx.route.map(|m| m.name));
    };
    assert_eq!(rej.reason, RejectReason::BadRequest);
    assert_eq!(
        rej.detail,
        "a path segment a route captures is not UTF-8 once percent-decoded"
    );
    assert!(ctx.route.is_none());
    let (ctx, r, _) = run("GET", "/v1/things/%C3%A9", "127.0.0.1:1", &[]).await;
    assert!(r.is_ok());
    assert_eq!(ctx.route.as_ref().map(|m| &*m.name), Some("v1-item"));
}

/// A route written with escapes (in normal form) takes every spelling of its path, and the
/// upstream gets the normal one.
#[tokio::test]
async fn a_route_written_with_escapes_takes_every_spelling_of_its_path() {
    for uri in [
        "/caf%C3%A9/menu",
        "/caf%c3%a9/menu",
        "/x/../caf%C3%A9//menu",
    ] {
        let (ctx, r, path) = run("GET", uri, "127.0.0.1:1", &[]).await;
        assert!(r.is_ok(), "{uri}: {:?}", reason(&r));
        assert_eq!(ctx.route.as_ref().map(|m| &*m.name), Some("cafe"), "{uri}");
        assert_eq!(path, "/caf%C3%A9/menu", "{uri}");
    }
    let (ctx, r, _) = run("GET", "/cafe/menu", "127.0.0.1:1", &[]).await;
    assert_eq!(reason(&r), Some(RejectReason::RouteNotFound));
    assert!(ctx.route.is_none());
}

/// Route confusion: `POST /v1/items%3Apurge` went to the `/v1` prefix route and its rules,
/// while the upstream decodes it and runs `/v1/items:purge`. Every spelling now takes the
/// exact route (and its rules: here an address list that refuses 192.0.2.1), and the upstream
/// gets the one the gateway judged.
#[tokio::test]
async fn escaped_pchars_take_the_route_of_their_decoded_spelling() {
    for uri in [
        "/v1/items:purge",
        "/v1/items%3Apurge",
        "/v1/items%3apurge",
        "/v1/%69tems%3Apurge",
    ] {
        let (ctx, r, path) = run("POST", uri, "127.0.0.1:1", &[]).await;
        assert!(r.is_ok(), "{uri}: {:?}", reason(&r));
        assert_eq!(ctx.route.as_ref().map(|m| &*m.name), Some("purge"), "{uri}");
        assert_eq!(path, "/v1/items:purge", "{uri}");
        let (ctx, r, _) = run("POST", uri, "192.0.2.1:1", &[]).await;
        assert_eq!(reason(&r), Some(RejectReason::IpDenied), "{uri}");
        assert_eq!(ctx.route.as_ref().map(|m| &*m.name), Some("purge"), "{uri}");
    }
    // A raw character a path may not hold, which the `http` crate lets through, and its
    // escape: one spelling, one route.
    for uri in ["/q/a{b", "/q/a%7Bb", "/q/a%7bb"] {
        let (ctx, r, path) = run("GET", uri, "127.0.0.1:1", &[]).await;
        assert!(r.is_ok(), "{uri}: {:?}", reason(&r));
        assert_eq!(ctx.route.as_ref().map(|m| &*m.name), Some("brace"), "{uri}");
        assert_eq!(path, "/q/a%7Bb", "{uri}");
    }
}

#[tokio::test]
async fn dot_segments_are_judged_by_the_route_they_resolve_to() {
    let (ctx, r, path) = run("GET", "/public/../admin/x", "192.0.2.1:1", &[]).await;
    assert_eq!(reason(&r), Some(RejectReason::IpDenied));
    assert_eq!(ctx.route.as_ref().map(|m| &*m.name), Some("admin"));
    assert_eq!(path, "/admin/x");
    assert_eq!(
        ctx.rejected_by.map(|(s, _)| s.as_str()),
        Some("route_ip_filter")
    );
    let (ctx, r, _) = run("GET", "/public/../admin/x", "127.0.0.1:1", &[]).await;
    assert!(r.is_ok());
    assert_eq!(ctx.original_path.as_deref(), Some("/public/../admin/x"));
}

#[tokio::test]
async fn rejections_name_their_step() {
    let cases = [
        (
            "GET",
            "/nope",
            "192.0.2.1:1",
            vec![],
            RejectReason::RouteNotFound,
            "route",
        ),
        (
            "POST",
            "/public/x",
            "192.0.2.1:1",
            vec![],
            RejectReason::MethodNotAllowed,
            "route",
        ),
        (
            "GET",
            "/public/x",
            "192.0.2.66:1",
            vec![],
            RejectReason::IpDenied,
            "ip_filter",
        ),
        (
            "GET",
            "/public/a%2fb",
            "192.0.2.1:1",
            vec![],
            RejectReason::BadRequest,
            "normalize",
        ),
        (
            "GET",
            "/public/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            "192.0.2.1:1",
            vec![],
            RejectReason::UriTooLong,
            "request_limits",
        ),
        (
            "GET",
            "/public/x",
            "192.0.2.1:1",
            vec![("content-length", "11")],
            RejectReason::BodyTooLarge,
            "body_limit",
        ),
        (
            "POST",
            "/public/x",
            "192.0.2.1:1",
            vec![("content-length", "1"), ("transfer-encoding", "chunked")],
            RejectReason::BadRequest,
            "protocol",
        ),
        // A denied client hiding behind a trusted proxy is still denied.
        (
            "GET",
            "/public/x",
            "10.0.0.1:1",
            vec![("x-forwarded-for", "192.0.2.66")],
            RejectReason::IpDenied,
            "ip_filter",
        ),
        // Garbage the client wrote left of its own address does not make the proxy the
        // client (which the deny list would not hold).
        (
            "GET",
            "/public/x",
            "10.0.0.1:1",
            vec![("x-forwarded-for", "junk, 192.0.2.66")],
            RejectReason::IpDenied,
            "ip_filter",
        ),
    ];
    for (m, uri, peer, headers, want, stage) in cases {
        let (ctx, r, _) = run(m, uri, peer, &headers).await;
        assert_eq!(reason(&r), Some(want), "{m} {uri}");
        assert_eq!(
            ctx.rejected_by.map(|(s, _)| s.as_str()),
            Some(stage),
            "{m} {uri}"
        );
    }
}

#[tokio::test]
async fn an_allowed_request_carries_route_limit_and_client() {
    let (ctx, r, _) = run(
        "GET",
        "/public/x",
        "10.0.0.1:1",
        &[("x-forwarded-for", "198.51.100.4")],
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(ctx.client_ip.to_string(), "198.51.100.4");
    assert_eq!(ctx.body_limit, Some(10));
    assert!(ctx.rejected_by.is_none());
}

#[test]
fn a_build_failure_is_reported_at_the_path_its_message_names() {
    let mut e = ConfigErrors::new();
    push_at(
        &mut e,
        "auth",
        "auth.introspection.idp: CA bundle holds no certificate".into(),
    );
    push_at(&mut e, "auth", "auth[0]: no key".into());
    // Not a path of the section, or not a path at all: the section, the message whole.
    push_at(&mut e, "auth", "authz.x: y".into());
    push_at(&mut e, "rate_limits", "the redis store: refused".into());
    push_at(&mut e, "auth", "no issuer".into());
    let got: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "auth.introspection.idp: CA bundle holds no certificate",
            "auth[0]: no key",
            "auth: authz.x: y",
            "rate_limits: the redis store: refused",
            "auth: no issuer",
        ]
    );
}

/// A gRPC call streams on uninspected only to an upstream all of whose targets may speak
/// HTTP/2: under `protocol: auto` that is every target over TLS (a cleartext one speaks
/// HTTP/1.1).
#[test]
fn grpc_streams_only_to_upstreams_that_all_speak_http2() {
    let cfg = portcullis_config::load_str(
        r#"
upstreams:
  tls: { targets: ["https://127.0.0.1:1", "https://127.0.0.1:2"] }
  mixed: { targets: ["http://127.0.0.1:1", "https://127.0.0.1:2"] }
  clear: { targets: ["http://127.0.0.1:1"] }
  h2c: { targets: ["http://127.0.0.1:1"], protocol: http2 }
  h1: { targets: ["https://127.0.0.1:1"], protocol: http1 }
  d: { kind: echo }
"#,
        Path::new("."),
    )
    .unwrap();
    let streams: Vec<(&str, bool)> = cfg
        .upstreams
        .iter()
        .map(|u| (&*u.name, speaks_h2(u)))
        .collect();
    let mut streams = streams;
    streams.sort_unstable();
    assert_eq!(
        streams,
        [
            ("clear", false),
            ("d", false),
            ("h1", false),
            ("h2c", true),
            ("mixed", false),
            ("tls", true),
        ]
    );
}
