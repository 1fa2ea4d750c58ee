use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use portcullis_core::{ConfigErrors, RouteId, RouteMatch, Scheme};

use super::*;

const VARY_ALL: &str = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

fn cors(yaml: &str) -> Arc<Cors> {
    let raw: RawCors = serde_yaml_ng::from_str(yaml).unwrap();
    let mut e = ConfigErrors::new();
    let c = compile(&raw, "routes[0].cors", &mut e);
    assert!(e.is_empty(), "{e}");
    Arc::new(c.unwrap())
}

/// A route with this CORS block (and no WebSockets).
fn stage(yaml: &str) -> CorsStage {
    CorsStage::new(vec![with_cors(yaml)])
}

fn with_cors(yaml: &str) -> RouteOrigins {
    RouteOrigins {
        cors: Some(cors(yaml)),
        websocket: None,
    }
}

fn websocket(yaml: &str) -> Option<Arc<WebSocket>> {
    let raw: RawWebSocket = serde_yaml_ng::from_str(yaml).unwrap();
    let mut e = ConfigErrors::new();
    let w = compile_websocket(&raw, "routes[0].websocket", &mut e);
    assert!(e.is_empty(), "{e}");
    w.map(Arc::new)
}

/// Runs the step on route 0; returns the verdict and the context.
fn run(
    stage: &CorsStage,
    method: &str,
    headers: &[(&str, &str)],
    preflight: bool,
) -> (Verdict, RequestCtx) {
    run_with(stage, method, headers, preflight, |_| {})
}

/// [`run`], with `setup` applied to the context first.
fn run_with(
    stage: &CorsStage,
    method: &str,
    headers: &[(&str, &str)],
    preflight: bool,
    setup: impl FnOnce(&mut RequestCtx),
) -> (Verdict, RequestCtx) {
    let mut b = http::Request::builder().method(method).uri("/items");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (head, ()) = b.body(()).unwrap().into_parts();
    let body = Empty::new()
        .map_err(|e| -> portcullis_core::BoxError { match e {} })
        .boxed_unsync();
    let mut req = GatewayRequest::new(head, body);
    let mut ctx = RequestCtx::new(
        "127.0.0.1:5000".parse().unwrap(),
        Scheme::Https,
        Arc::from("l"),
    );
    ctx.route = Some(RouteMatch {
        id: RouteId(0),
        name: Arc::from("items"),
        params: Vec::new(),
    });
    ctx.preflight = preflight;
    setup(&mut ctx);
    let verdict = match stage.on_request(&mut req, &mut ctx) {
        Step::Done(v) => v,
        Step::Async(_) => panic!("the CORS step is synchronous"),
    };
    (verdict, ctx)
}

fn route_match(id: usize) -> RouteMatch {
    RouteMatch {
        id: RouteId(id),
        name: Arc::from("items"),
        params: Vec::new(),
    }
}

fn preflight(stage: &CorsStage, headers: &[(&str, &str)]) -> Verdict {
    let (v, ctx) = run(stage, "OPTIONS", headers, true);
    assert!(
        ctx.response_headers.is_empty(),
        "a preflight answers itself"
    );
    v
}

fn actual(stage: &CorsStage, headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let (v, ctx) = run(stage, "GET", headers, false);
    assert!(matches!(v, Verdict::Continue), "{v:?}");
    pairs(&ctx.response_headers)
}

fn pairs(h: &[(HeaderName, HeaderValue)]) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect()
}

fn expect(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn answered(v: Verdict) -> Vec<(String, String)> {
    match v {
        Verdict::Answer(a) => {
            assert_eq!(a.status, StatusCode::NO_CONTENT);
            pairs(&a.headers)
        }
        v => panic!("expected an answer, got {v:?}"),
    }
}

/// The refusal's detail, after checking its status, reason and headers.
fn refused(v: Verdict) -> String {
    match v {
        Verdict::Reject(r) => {
            assert_eq!(r.reason, RejectReason::CorsRejected);
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            assert_eq!(pairs(&r.headers), expect(&[("vary", VARY_ALL)]));
            r.detail.into_owned()
        }
        v => panic!("expected a rejection, got {v:?}"),
    }
}

const APP: &str = "allowed_origins: [\"https://app.example.com\", \"https://*.example.com\"]\n\
                   allowed_methods: [GET, POST]\n\
                   allowed_headers: [content-type, authorization, x-request-id]\n\
                   exposed_headers: [x-request-id, retry-after]\n\
                   allow_credentials: true\n\
                   max_age: 10m\n";

fn ask(origin: &str, method: &str, headers: Option<&str>) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("origin", origin.to_string()),
        ("access-control-request-method", method.to_string()),
    ];
    if let Some(h) = headers {
        v.push(("access-control-request-headers", h.to_string()));
    }
    v
}

fn refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn route_without_cors_is_untouched() {
    let s = CorsStage::new(vec![RouteOrigins::default(), with_cors(APP)]);
    let (v, ctx) = run(&s, "GET", &[("origin", "https://app.example.com")], false);
    assert!(matches!(v, Verdict::Continue));
    assert!(ctx.response_headers.is_empty());
    let (v, ctx) = run(
        &s,
        "OPTIONS",
        &refs(&ask("https://app.example.com", "POST", None)),
        true,
    );
    assert!(matches!(v, Verdict::Continue));
    assert!(ctx.response_headers.is_empty());
    // A route id beyond the table (or none) is a route without CORS too.
    let s = CorsStage::new(Vec::new());
    let (v, _) = run(&s, "GET", &[("origin", "https://app.example.com")], false);
    assert!(matches!(v, Verdict::Continue));
}

#[test]
fn allowed_preflight_is_answered_with_every_header() {
    let s = stage(APP);
    let h = ask(
        "https://app.example.com",
        "POST",
        Some("Content-Type, X-Request-Id"),
    );
    assert_eq!(
        answered(preflight(&s, &refs(&h))),
        expect(&[
            ("access-control-allow-origin", "https://app.example.com"),
            ("access-control-allow-methods", "GET, POST"),
            (
                "access-control-allow-headers",
                "content-type, authorization, x-request-id"
            ),
            ("access-control-max-age", "600"),
            ("access-control-allow-credentials", "true"),
            ("vary", VARY_ALL),
        ])
    );
}

#[test]
fn preflight_origin_is_echoed_as_sent() {
    let s = stage(APP);
    let h = ask("HTTPS://App.Example.com:443", "GET", None);
    let got = answered(preflight(&s, &refs(&h)));
    assert_eq!(
        got[0],
        (
            "access-control-allow-origin".into(),
            "HTTPS://App.Example.com:443".into()
        )
    );
}

#[test]
fn preflight_refused_by_origin() {
    let s = stage(APP);
    let h = ask("https://evil.com", "POST", None);
    assert_eq!(
        refused(preflight(&s, &refs(&h))),
        "origin https://evil.com not allowed"
    );
    let h = ask("null", "POST", None);
    assert_eq!(refused(preflight(&s, &refs(&h))), "origin null not allowed");
}

#[test]
fn refused_origin_is_capped_in_the_detail() {
    let s = stage(APP);
    let long = format!("https://{}.com", "a".repeat(200));
    let h = ask(&long, "POST", None);
    assert_eq!(
        refused(preflight(&s, &refs(&h))),
        format!("origin {}… not allowed", &long[..100])
    );
}

#[test]
fn wildcard_subdomains_edge_cases() {
    let s = stage(APP);
    for (origin, allowed) in [
        ("https://a.example.com", true),
        ("https://a.b.example.com", true),
        ("https://A.EXAMPLE.COM", true),
        ("https://a.example.com:443", true),
        ("https://example.com", false),
        ("https://evilexample.com", false),
        ("https://example.com.evil.com", false),
        ("http://a.example.com", false),
        ("https://a.example.com:8443", false),
        ("http://app.example.com", false),
        ("https://app.example.com:444", false),
    ] {
        let h = ask(origin, "GET", None);
        match preflight(&s, &refs(&h)) {
            Verdict::Answer(_) => assert!(allowed, "{origin} must be refused"),
            v => {
                assert!(!allowed, "{origin} must be allowed");
                assert_eq!(refused(v), format!("origin {origin} not allowed"));
            }
        }
    }
}

#[test]
fn malformed_missing_or_repeated_origin_is_refused() {
    let s = stage("allowed_origins: [\"*\"]\n");
    for origin in ["https://a.com/", "app.example.com", "https://u@a.com", "*"] {
        let h = ask(origin, "GET", None);
        assert_eq!(
            refused(preflight(&s, &refs(&h))),
            "origin malformed",
            "{origin}"
        );
    }
    let h = [("access-control-request-method", "GET")];
    assert_eq!(refused(preflight(&s, &h)), "origin missing");
    let h = [
        ("origin", "https://a.com"),
        ("origin", "https://b.com"),
        ("access-control-request-method", "GET"),
    ];
    assert_eq!(refused(preflight(&s, &h)), "origin malformed");
}

#[test]
fn preflight_refused_by_method() {
    let s = stage(APP);
    let h = ask("https://app.example.com", "PUT", None);
    assert_eq!(refused(preflight(&s, &refs(&h))), "method PUT not allowed");
    // Method tokens are case-sensitive.
    let h = ask("https://app.example.com", "post", None);
    assert_eq!(refused(preflight(&s, &refs(&h))), "method post not allowed");
    // Simple methods are not implied.
    let s = stage("allowed_origins: [\"https://a.com\"]\nallowed_methods: [PUT]\n");
    let h = ask("https://a.com", "GET", None);
    assert_eq!(refused(preflight(&s, &refs(&h))), "method GET not allowed");
    let h = ask("https://a.com", "P UT", None);
    assert_eq!(
        refused(preflight(&s, &refs(&h))),
        "access-control-request-method malformed"
    );
    let h = [("origin", "https://a.com")];
    assert_eq!(
        refused(preflight(&s, &h)),
        "access-control-request-method missing or repeated"
    );
}

#[test]
fn preflight_refused_by_header() {
    let s = stage(APP);
    let h = ask(
        "https://app.example.com",
        "POST",
        Some("content-type, X-Foo"),
    );
    assert_eq!(
        refused(preflight(&s, &refs(&h))),
        "header x-foo not allowed"
    );
    let h = ask(
        "https://app.example.com",
        "POST",
        Some("content-type, x foo"),
    );
    assert_eq!(
        refused(preflight(&s, &refs(&h))),
        "access-control-request-headers malformed"
    );
}

#[test]
fn requested_headers_list_syntax() {
    let s = stage(APP);
    // Empty elements, tabs, several field lines.
    let h = [
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", ",content-type,\t,"),
        ("access-control-request-headers", "AUTHORIZATION"),
    ];
    assert!(matches!(preflight(&s, &h), Verdict::Answer(_)));
}

#[test]
fn too_many_requested_headers() {
    let s = stage("allowed_origins: [\"*\"]\nallowed_headers: [\"*\"]\n");
    let names: Vec<String> = (0..64).map(|i| format!("x-h{i}")).collect();
    let h = ask("https://a.com", "GET", Some(&names.join(",")));
    let got = answered(preflight(&s, &refs(&h)));
    assert_eq!(got[2].1, names.join(", "));
    let names: Vec<String> = (0..65).map(|i| format!("x-h{i}")).collect();
    let h = ask("https://a.com", "GET", Some(&names.join(",")));
    assert_eq!(
        refused(preflight(&s, &refs(&h))),
        "more than 64 headers requested"
    );
}

#[test]
fn any_origin_without_credentials() {
    let s = stage("allowed_origins: [\"*\"]\n");
    let h = ask("https://anyone.test", "HEAD", Some(""));
    assert_eq!(
        answered(preflight(&s, &refs(&h))),
        expect(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", "GET, HEAD, POST"),
            ("access-control-max-age", "300"),
            ("vary", VARY_ALL),
        ])
    );
    // `*` covers the opaque origin too.
    let h = ask("null", "GET", None);
    assert!(matches!(preflight(&s, &refs(&h)), Verdict::Answer(_)));
    assert_eq!(
        actual(&s, &[("origin", "https://anyone.test")]),
        expect(&[("vary", "Origin"), ("access-control-allow-origin", "*")])
    );
}

#[test]
fn wildcard_headers_and_methods_echo_what_was_asked() {
    let s = stage(
        "allowed_origins: [\"https://a.com\"]\n\
         allowed_methods: [\"*\"]\n\
         allowed_headers: [\"*\"]\n\
         max_age: 0s\n",
    );
    let h = ask("https://a.com", "PURGE", Some("X-Foo, Content-Type"));
    assert_eq!(
        answered(preflight(&s, &refs(&h))),
        expect(&[
            ("access-control-allow-origin", "https://a.com"),
            ("access-control-allow-methods", "PURGE"),
            ("access-control-allow-headers", "x-foo, content-type"),
            ("vary", VARY_ALL),
        ])
    );
    // `*` does not cover Authorization, as in browsers.
    let h = ask("https://a.com", "GET", Some("x-foo, authorization"));
    assert_eq!(
        refused(preflight(&s, &refs(&h))),
        "header authorization not allowed"
    );
    let s =
        stage("allowed_origins: [\"https://a.com\"]\nallowed_headers: [\"*\", Authorization]\n");
    let h = ask("https://a.com", "GET", Some("x-foo, authorization"));
    let got = answered(preflight(&s, &refs(&h)));
    assert_eq!(
        got[2],
        (
            "access-control-allow-headers".into(),
            "x-foo, authorization".into()
        )
    );
    // Nothing asked, nothing to list.
    let h = ask("https://a.com", "GET", None);
    let got = answered(preflight(&s, &refs(&h)));
    assert!(
        got.iter().all(|(k, _)| k != "access-control-allow-headers"),
        "{got:?}"
    );
}

#[test]
fn max_age_zero_is_omitted() {
    let s = stage("allowed_origins: [\"https://a.com\"]\nmax_age: 0s\n");
    let h = ask("https://a.com", "GET", None);
    assert_eq!(
        answered(preflight(&s, &refs(&h))),
        expect(&[
            ("access-control-allow-origin", "https://a.com"),
            ("access-control-allow-methods", "GET, HEAD, POST"),
            ("vary", VARY_ALL),
        ])
    );
}

#[test]
fn null_origin_when_listed() {
    let s = stage("allowed_origins: [\"null\"]\n");
    let h = ask("null", "GET", None);
    assert_eq!(
        answered(preflight(&s, &refs(&h)))[0],
        ("access-control-allow-origin".into(), "null".into())
    );
}

#[test]
fn actual_request_from_allowed_origin() {
    let s = stage(APP);
    assert_eq!(
        actual(&s, &[("origin", "https://a.b.example.com")]),
        expect(&[
            ("vary", "Origin"),
            ("access-control-allow-origin", "https://a.b.example.com"),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-request-id, retry-after"),
        ])
    );
    let s = stage("allowed_origins: [\"https://a.com\"]\n");
    assert_eq!(
        actual(&s, &[("origin", "https://a.com")]),
        expect(&[
            ("vary", "Origin"),
            ("access-control-allow-origin", "https://a.com"),
        ])
    );
}

#[test]
fn actual_request_from_other_origins_continues_with_vary_only() {
    let s = stage(APP);
    for headers in [
        &[("origin", "https://evilexample.com")][..],
        &[("origin", "https://example.com")][..],
        &[("origin", "not an origin")][..],
        &[("origin", "https://app.example.com/")][..],
        &[
            ("origin", "https://app.example.com"),
            ("origin", "https://app.example.com"),
        ][..],
        &[][..],
    ] {
        assert_eq!(
            actual(&s, headers),
            expect(&[("vary", "Origin")]),
            "{headers:?}"
        );
    }
}

/// Browsers apply no CORS to WebSockets: a page of any origin opens one with the user's
/// cookies. On a CORS route that serves WebSockets, a handshake must come from the route's own
/// origin or one of `websocket.origins` — the CORS origins do not count, `*` least of all (it
/// lets any page read answers without credentials; a WebSocket carries them). One without
/// `Origin` (not a browser) goes on.
#[test]
fn websocket_origins_on_cors_routes_are_the_websockets_own() {
    for cors_origins in [APP, "allowed_origins: [\"*\"]\n"] {
        let s = CorsStage::new(vec![RouteOrigins {
            cors: Some(cors(cors_origins)),
            websocket: websocket("{ origins: [\"https://chat.example.com\"] }"),
        }]);
        let ws = |origin: Option<&str>, upgrade: &str| {
            let mut h = vec![
                ("upgrade", upgrade),
                ("connection", "upgrade"),
                ("host", "api.example.com"),
            ];
            if let Some(o) = origin {
                h.push(("origin", o));
            }
            run(&s, "GET", &h, false).0
        };
        let d = refused(ws(Some("https://evil.net"), "websocket"));
        assert!(d.contains("WebSocket from origin https://evil.net"), "{d}");
        refused(ws(Some("https://evil.net"), "WebSocket"));
        refused(ws(Some("https://evil.net"), "foo, websocket"));
        refused(ws(Some("not an origin"), "websocket"));
        // Allowed by CORS, not by the route's WebSocket origins.
        refused(ws(Some("https://app.example.com"), "websocket"));
        for origin in [
            Some("https://chat.example.com"),
            Some("https://api.example.com"),
            None,
        ] {
            assert!(
                matches!(ws(origin, "websocket"), Verdict::Continue),
                "{cors_origins} {origin:?}"
            );
        }
        // An ordinary request from that origin only lacks the CORS headers, as before.
        assert!(matches!(
            run(&s, "GET", &[("origin", "https://evil.net")], false).0,
            Verdict::Continue
        ));
    }
}

/// After the upstream's 101 the connection is a tunnel no step reads: a handshake goes on only
/// where the route serves WebSockets, on CORS routes and others alike.
#[test]
fn websockets_only_where_the_route_serves_them() {
    let handshake: &[(&str, &str)] = &[("upgrade", "websocket"), ("connection", "upgrade")];
    let plain = CorsStage::new(vec![
        RouteOrigins::default(),
        RouteOrigins {
            cors: Some(cors(APP)),
            websocket: None,
        },
        RouteOrigins {
            cors: None,
            websocket: websocket("false"),
        },
    ]);
    for route in 0..3 {
        let (v, ctx) = run_with(&plain, "GET", handshake, false, |ctx| {
            ctx.route = Some(route_match(route))
        });
        match v {
            Verdict::Reject(r) => {
                assert_eq!(r.reason, RejectReason::Forbidden, "route {route}");
                assert_eq!(r.status(), StatusCode::FORBIDDEN);
                assert_eq!(r.detail, "WebSocket upgrades are not enabled on this route");
            }
            v => panic!("route {route}: expected a refusal, got {v:?}"),
        }
        assert!(ctx.response_headers.is_empty());
        // Any spelling of the token, in a list too.
        let (v, _) = run_with(
            &plain,
            "GET",
            &[("upgrade", "foo, WebSocket"), ("connection", "upgrade")],
            false,
            |ctx| ctx.route = Some(route_match(route)),
        );
        assert!(matches!(v, Verdict::Reject(_)), "route {route}");
        // Other requests on those routes are not this step's concern, nor other upgrades.
        for headers in [
            &[][..],
            &[("upgrade", "h2c"), ("connection", "upgrade")][..],
        ] {
            let (v, _) = run_with(&plain, "GET", headers, false, |ctx| {
                ctx.route = Some(route_match(route))
            });
            assert!(matches!(v, Verdict::Continue), "route {route} {headers:?}");
        }
    }
}

/// On a route without CORS that serves WebSockets, a browser's handshake must come from the
/// route's own origin (the `Host`'s name and port) or one the route lists.
#[test]
fn websocket_origins_without_cors() {
    let s = CorsStage::new(vec![RouteOrigins {
        cors: None,
        websocket: websocket("{ origins: [\"https://app.example.com\"] }"),
    }]);
    let ws = |origin: Option<&str>| {
        let mut h = vec![
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("host", "api.example.com:8443"),
        ];
        if let Some(o) = origin {
            h.push(("origin", o));
        }
        run(&s, "GET", &h, false)
    };
    for origin in [
        None,
        Some("https://api.example.com:8443"),
        Some("https://API.example.com:8443"),
        Some("https://app.example.com"),
    ] {
        let (v, ctx) = ws(origin);
        assert!(matches!(v, Verdict::Continue), "{origin:?}");
        // No CORS headers on a route without CORS.
        assert!(ctx.response_headers.is_empty(), "{origin:?}");
    }
    let d = refused(ws(Some("https://evil.net")).0);
    assert_eq!(d, "WebSocket from origin https://evil.net not allowed");
    // The same host on another port is another origin.
    refused(ws(Some("https://api.example.com")).0);
    refused(ws(Some("null")).0);
    assert_eq!(
        refused(ws(Some("https://api.example.com:8443/")).0),
        "WebSocket with an unreadable Origin"
    );
    // This listener is TLS: a page of the same host served in cleartext is another origin.
    assert_eq!(
        refused(ws(Some("http://api.example.com:8443")).0),
        "WebSocket from origin http://api.example.com:8443 not allowed"
    );
}

/// The own origin's scheme is the one the client used: over a cleartext listener either is
/// taken (a TLS terminator the gateway does not trust may be in front); a trusted proxy that
/// says its client used `https` makes it `https` only; an untrusted peer's word is not taken.
#[test]
fn websocket_own_origin_scheme_is_the_clients() {
    let s = CorsStage::new(vec![RouteOrigins {
        cors: None,
        websocket: websocket("true"),
    }]);
    let ws = |origin: &str, forwarded: Option<(&'static str, &'static str)>, trusted: bool| {
        let mut h = vec![
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("host", "api.example.com"),
            ("origin", origin),
        ];
        h.extend(forwarded);
        run_with(&s, "GET", &h, false, |ctx| {
            ctx.scheme = Scheme::Http;
            ctx.peer_trusted = trusted;
        })
        .0
    };
    for origin in ["http://api.example.com", "https://api.example.com"] {
        assert!(
            matches!(ws(origin, None, false), Verdict::Continue),
            "{origin}"
        );
        assert!(
            matches!(ws(origin, None, true), Verdict::Continue),
            "{origin}"
        );
        // An untrusted peer's claim changes nothing.
        for f in [("x-forwarded-proto", "https"), ("forwarded", "proto=https")] {
            assert!(
                matches!(ws(origin, Some(f), false), Verdict::Continue),
                "{origin} {f:?}"
            );
        }
    }
    for f in [
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=1.2.3.4;proto=https"),
    ] {
        assert!(
            matches!(
                ws("https://api.example.com", Some(f), true),
                Verdict::Continue
            ),
            "{f:?}"
        );
        assert_eq!(
            refused(ws("http://api.example.com", Some(f), true)),
            "WebSocket from origin http://api.example.com not allowed",
            "{f:?}"
        );
    }
    // A trusted proxy that says `http` leaves both.
    assert!(matches!(
        ws(
            "https://api.example.com",
            Some(("x-forwarded-proto", "http")),
            true
        ),
        Verdict::Continue
    ));
}

/// RFC 6455: the handshake is a GET. Another method with `Upgrade: websocket` is refused
/// where WebSockets are served (a server might still switch, with a body nothing read).
#[test]
fn a_websocket_handshake_is_a_get() {
    let s = CorsStage::new(vec![RouteOrigins {
        cors: None,
        websocket: websocket("true"),
    }]);
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let (v, _) = run(
            &s,
            method,
            &[("upgrade", "websocket"), ("connection", "upgrade")],
            false,
        );
        match v {
            Verdict::Reject(r) => {
                assert_eq!(r.reason, RejectReason::BadRequest, "{method}");
                assert_eq!(r.detail, "a WebSocket handshake is a GET");
            }
            v => panic!("{method}: expected a refusal, got {v:?}"),
        }
    }
    let (v, _) = run(
        &s,
        "GET",
        &[("upgrade", "websocket"), ("connection", "upgrade")],
        false,
    );
    assert!(matches!(v, Verdict::Continue));
}

#[test]
fn actual_request_keeps_headers_of_earlier_steps() {
    let s = stage("allowed_origins: [\"https://a.com\"]\n");
    let (v, ctx) = run_with(&s, "POST", &[("origin", "https://a.com")], false, |ctx| {
        ctx.response_headers.push((
            HeaderName::from_static("ratelimit-remaining"),
            HeaderValue::from_static("9"),
        ));
    });
    assert!(matches!(v, Verdict::Continue));
    assert_eq!(
        pairs(&ctx.response_headers),
        expect(&[
            ("ratelimit-remaining", "9"),
            ("vary", "Origin"),
            ("access-control-allow-origin", "https://a.com"),
        ])
    );
}

#[test]
fn preflight_method_detection() {
    fn head(method: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }
    let o = ("origin", "https://a.com");
    let m = |v| ("access-control-request-method", v);
    assert_eq!(
        preflight_method(&head("OPTIONS", &[o, m("PUT")])),
        Some(Method::PUT)
    );
    let patch = preflight_method(&head("OPTIONS", &[o, m("patch")])).unwrap();
    assert_eq!(patch.as_str(), "patch");
    assert_ne!(patch, Method::PATCH);
    assert_eq!(preflight_method(&head("OPTIONS", &[m("PUT")])), None);
    assert_eq!(preflight_method(&head("OPTIONS", &[o])), None);
    assert_eq!(preflight_method(&head("GET", &[o, m("PUT")])), None);
    assert_eq!(preflight_method(&head("OPTIONS", &[o, m("P UT")])), None);
    assert_eq!(preflight_method(&head("OPTIONS", &[o, m("")])), None);
    assert_eq!(
        preflight_method(&head("OPTIONS", &[o, m("PUT"), m("GET")])),
        None
    );
}

#[test]
fn response_headers_the_engine_strips() {
    let names: Vec<&str> = CORS_RESPONSE_HEADERS.iter().map(|h| h.as_str()).collect();
    assert_eq!(
        names,
        [
            "access-control-allow-origin",
            "access-control-allow-credentials",
            "access-control-allow-methods",
            "access-control-allow-headers",
            "access-control-expose-headers",
            "access-control-max-age",
            "access-control-allow-private-network",
        ]
    );
}

#[test]
fn allows_origin_is_public() {
    let c = cors(APP);
    assert!(c.allows_origin("https://app.example.com"));
    assert!(c.allows_origin("https://x.example.com"));
    assert!(!c.allows_origin("https://example.com"));
    assert!(!c.allows_origin("garbage"));
}

#[test]
fn stage_id() {
    assert_eq!(stage(APP).id(), StageId("cors"));
}
