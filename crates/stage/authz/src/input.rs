//! The input document of Rego and OPA policies:
//!
//! ```json
//! {
//!   "request": {"method": "GET", "path": "/orders/7", "host": "api.example", "scheme": "https",
//!               "route": "orders", "params": {"id": "7"}, "query": {"expand": ["items"]},
//!               "query_folded": {"expand": ["items"]},
//!               "headers": {"accept": "application/json"}, "client_ip": "203.0.113.9",
//!               "action": "read"},
//!   "principal": {"subject": "alice", "issuer": "…", "client_id": "…", "method": "jwt",
//!                 "authority": "main", "scopes": ["read:orders", …], "roles": […],
//!                 "tenant": "t1", "claims": {…}, "mtls": {"subject": "…", "spiffe_id": "…"}},
//!   "risk": {"score": 20, "signals": ["new_device"]},
//!   "time": 1767225600,
//!   "request_id": "…"
//! }
//! ```
//!
//! `host` is the host the router matched: the URI authority (HTTP/2 `:authority`,
//! absolute-form) or the `Host` header, without port, lower case, without a trailing dot, an
//! IPv6 address in brackets (`[::1]`) — [`portcullis_core::normalized_host`].
//!
//! `query` holds each name as sent; `query_folded` every value under the name upstream
//! frameworks may read it as ([`crate::constraints::fold_name`]: `Amount`, `amount[]` and
//! `amount.` are `amount`), pairs split at `;` as well as `&`.
//!
//! `scopes` are expanded through the scope hierarchy. Secret-bearing headers are left out: any
//! whose name contains one of `SECRET_WORDS` (credentials and their forwarded copies,
//! identity-proxy assertions, cookies, anything named like a key, token, secret, password or
//! session); repeated headers are joined with `, `.

use http::request::Parts;
use portcullis_core::{Principal, RequestCtx};
use serde_json::{Map, Value};

use crate::risk::Assessment;

/// Words that mark a header as carrying a credential or a session, wherever they appear in
/// its (lower-case) name: `authorization` also catches `proxy-authorization` and the copies
/// proxies forward (`x-forwarded-authorization`, `x-original-authorization`); `assertion`
/// the identity-aware proxies' signed assertions (`x-goog-iap-jwt-assertion`,
/// `cf-access-jwt-assertion`); `oidc` the AWS load balancer's `x-amzn-oidc-*`; `key` any API
/// key header (the authorization step is not told `auth.api_keys.header`, so an API key
/// header is only left out if its name holds one of these words).
const SECRET_WORDS: &[&str] = &[
    "authorization",
    "assertion",
    "token",
    "secret",
    "key",
    "cookie",
    "session",
    "password",
    "credential",
    "oidc",
    "jwt",
];

fn secret_header(name: &str) -> bool {
    SECRET_WORDS.iter().any(|w| name.contains(w))
}

fn headers(head: &Parts) -> Value {
    let mut out = Map::new();
    for name in head.headers.keys() {
        let n = name.as_str();
        if secret_header(n) {
            continue;
        }
        let joined = head
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        out.insert(n.to_string(), Value::String(joined));
    }
    Value::Object(out)
}

/// Each query parameter as sent: its values in order under its decoded name.
fn query(head: &Parts) -> Value {
    query_map(head, &['&'], |name| name)
}

/// Every value of every query parameter under its folded name, pairs split at `;` too.
pub(crate) fn query_folded(head: &Parts) -> Value {
    query_map(head, &['&', ';'], |name| {
        crate::constraints::fold_name(&name)
    })
}

/// The query's pairs, split at `separators`, names and values percent-decoded (`+` a space,
/// invalid UTF-8 replaced), values gathered in order under `key(name)`.
fn query_map(head: &Parts, separators: &[char], key: impl Fn(String) -> String) -> Value {
    let mut out = Map::new();
    let Some(q) = head.uri.query() else {
        return Value::Object(out);
    };
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    for part in q.split(separators).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let entry = out
            .entry(key(dec(k)))
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = entry {
            a.push(Value::String(dec(v)));
        }
    }
    Value::Object(out)
}

fn opt(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::String(s.to_string()))
}

/// Builds the input document.
pub fn build(
    head: &Parts,
    ctx: &RequestCtx,
    p: &Principal,
    scopes: &[String],
    action: Option<&str>,
    risk: Option<&Assessment>,
    now: u64,
) -> Value {
    let mut req = Map::new();
    req.insert("method".into(), Value::String(head.method.as_str().into()));
    req.insert("path".into(), Value::String(head.uri.path().into()));
    // The host the router matched, normalised the same way (one function for both).
    let host = portcullis_core::normalized_host(head);
    req.insert("host".into(), opt(host.as_deref()));
    req.insert("scheme".into(), Value::String(ctx.scheme.as_str().into()));
    let (route, params) = match &ctx.route {
        Some(r) => (
            Value::String(r.name.to_string()),
            Value::Object(
                r.params
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
                    .collect(),
            ),
        ),
        None => (Value::Null, Value::Object(Map::new())),
    };
    req.insert("route".into(), route);
    req.insert("params".into(), params);
    req.insert("query".into(), query(head));
    req.insert("query_folded".into(), query_folded(head));
    req.insert("headers".into(), headers(head));
    req.insert("client_ip".into(), Value::String(ctx.client_ip.to_string()));
    req.insert("action".into(), opt(action));

    let mut pr = Map::new();
    pr.insert("subject".into(), opt(p.subject.as_deref()));
    pr.insert("issuer".into(), opt(p.issuer.as_deref()));
    pr.insert("client_id".into(), opt(p.client_id.as_deref()));
    pr.insert("method".into(), Value::String(p.method.as_str().into()));
    pr.insert("authority".into(), Value::String(p.authority.to_string()));
    pr.insert(
        "scopes".into(),
        Value::Array(scopes.iter().cloned().map(Value::String).collect()),
    );
    pr.insert(
        "roles".into(),
        Value::Array(p.roles.iter().cloned().map(Value::String).collect()),
    );
    pr.insert("tenant".into(), opt(p.tenant.as_deref()));
    pr.insert("tier".into(), opt(p.tier.as_deref()));
    pr.insert("claims".into(), Value::Object((*p.claims).clone()));
    let mtls = ctx
        .tls
        .as_ref()
        .and_then(|t| t.peer_certificate.as_ref())
        .map_or(Value::Null, |c| {
            let mut m = Map::new();
            m.insert("subject".into(), Value::String(c.subject.clone()));
            m.insert(
                "spiffe_id".into(),
                c.spiffe
                    .as_ref()
                    .map_or(Value::Null, |s| Value::String(s.to_string())),
            );
            m.insert(
                "fingerprint_sha256".into(),
                Value::String(c.fingerprint_sha256.clone()),
            );
            Value::Object(m)
        });
    pr.insert("mtls".into(), mtls);

    let mut doc = Map::new();
    doc.insert("request".into(), Value::Object(req));
    doc.insert("principal".into(), Value::Object(pr));
    if let Some(a) = risk {
        let mut r = Map::new();
        r.insert("score".into(), Value::from(a.score));
        r.insert(
            "signals".into(),
            Value::Array(
                a.signals
                    .iter()
                    .map(|s| Value::String((*s).into()))
                    .collect(),
            ),
        );
        doc.insert("risk".into(), Value::Object(r));
    }
    doc.insert("time".into(), Value::from(now));
    doc.insert(
        "request_id".into(),
        Value::String(ctx.request_id.as_str().into()),
    );
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::{AuthMethod, RouteId, RouteMatch, Scheme};
    use std::sync::Arc;

    #[test]
    fn input_shape_and_no_secrets() {
        let (head, _) = http::Request::builder()
            .method("POST")
            .uri("/orders/7?expand=items&expand=customer&q=a+b&Amount=9;amount%5B%5D=8&amount.x=7")
            .header("host", "API.example:8443")
            .header("authorization", "Bearer secret")
            .header("cookie", "sid=1")
            .header("x-api-key", "k")
            .header("x-session-token", "t")
            .header("accept", "application/json")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .body(())
            .unwrap()
            .into_parts();
        let mut ctx = RequestCtx::new(
            "203.0.113.9:5555".parse().unwrap(),
            Scheme::Https,
            Arc::from("public"),
        );
        ctx.route = Some(RouteMatch {
            id: RouteId(0),
            name: Arc::from("orders"),
            params: vec![(Arc::from("id"), "7".into())],
        });
        let mut p = Principal::new(AuthMethod::Jwt, Arc::from("main"));
        p.subject = Some("alice".into());
        p.roles = vec!["clerk".into()];
        let v = build(
            &head,
            &ctx,
            &p,
            &["read:orders".into(), "write:orders".into()],
            Some("write"),
            Some(&Assessment {
                score: 20,
                signals: vec!["new_device"],
                country: None,
            }),
            1000,
        );
        assert_eq!(v["request"]["method"], "POST");
        assert_eq!(v["request"]["path"], "/orders/7");
        assert_eq!(v["request"]["host"], "api.example");
        assert_eq!(v["request"]["scheme"], "https");
        assert_eq!(v["request"]["route"], "orders");
        assert_eq!(v["request"]["params"]["id"], "7");
        assert_eq!(
            v["request"]["query"]["expand"],
            serde_json::json!(["items", "customer"])
        );
        assert_eq!(v["request"]["query"]["q"], serde_json::json!(["a b"]));
        // Names as sent: `Amount=9;amount[]=8` is one pair here.
        assert_eq!(
            v["request"]["query"]["Amount"],
            serde_json::json!(["9;amount[]=8"])
        );
        // Folded as frameworks read them, split at `;` too.
        assert_eq!(
            v["request"]["query_folded"],
            serde_json::json!({"expand": ["items", "customer"], "q": ["a b"], "amount": ["9", "8"],
                "amount_x": ["7"]})
        );
        assert_eq!(v["request"]["client_ip"], "203.0.113.9");
        assert_eq!(v["request"]["action"], "write");
        assert_eq!(v["request"]["headers"]["accept"], "application/json");
        assert_eq!(v["request"]["headers"]["x-multi"], "a, b");
        for secret in ["authorization", "cookie", "x-api-key", "x-session-token"] {
            assert!(v["request"]["headers"].get(secret).is_none(), "{secret}");
        }
        assert_eq!(v["principal"]["subject"], "alice");
        assert_eq!(v["principal"]["scopes"][1], "write:orders");
        assert_eq!(v["principal"]["roles"][0], "clerk");
        assert_eq!(v["principal"]["mtls"], Value::Null);
        assert_eq!(v["risk"]["score"], 20);
        assert_eq!(v["time"], 1000);
        assert!(!v.to_string().contains("secret"));
    }

    /// The policy compares the host the router matched: a `Host` with a trailing dot, in
    /// upper case, with a port, an IPv6 address, an HTTP/2 `:authority` or an absolute-form
    /// target all read as the router reads them.
    #[test]
    fn the_host_is_the_one_the_router_matched() {
        let host_of = |uri: &str, host: Option<&str>| {
            let mut b = http::Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            let (head, _) = b.body(()).unwrap().into_parts();
            let ctx = RequestCtx::new(
                "203.0.113.9:5555".parse().unwrap(),
                Scheme::Https,
                Arc::from("public"),
            );
            let p = Principal::new(AuthMethod::Jwt, Arc::from("main"));
            build(&head, &ctx, &p, &[], None, None, 0)["request"]["host"].clone()
        };
        for (uri, host, want) in [
            ("/", Some("admin.example.com."), "admin.example.com"),
            ("/", Some("Admin.Example.COM"), "admin.example.com"),
            ("/", Some("ADMIN.EXAMPLE.COM.:8443"), "admin.example.com"),
            ("/", Some("[::1]:80"), "[::1]"),
            ("/", Some("[FE80::1]"), "[fe80::1]"),
            ("/", Some("127.0.0.1:8080"), "127.0.0.1"),
            // HTTP/2 `:authority` and absolute-form targets: the URI's authority.
            ("http://Admin.Example.COM./x", None, "admin.example.com"),
            (
                "https://ADMIN.example.com:8443/x",
                Some("other"),
                "admin.example.com",
            ),
            ("http://[::1]:80/x", None, "[::1]"),
        ] {
            assert_eq!(host_of(uri, host), want, "{uri} {host:?}");
        }
        assert_eq!(host_of("/", None), Value::Null);
    }

    #[test]
    fn credential_headers_are_left_out() {
        let secret = [
            "authorization",
            "proxy-authorization",
            "x-forwarded-authorization",
            "x-original-authorization",
            "x-goog-iap-jwt-assertion",
            "cf-access-jwt-assertion",
            "x-amzn-oidc-data",
            "x-amzn-oidc-accesstoken",
            "x-amzn-oidc-identity",
            "cookie",
            "x-cookie-copy",
            "x-api-key",
            "apikey",
            "x-client-key",
            "x-auth-token",
            "x-csrf-token",
            "x-session-id",
            "x-client-secret",
            "x-password",
            "x-credentials",
            "x-ms-token-aad-id-token",
            "x-jwt",
        ];
        let kept = [
            "accept",
            "user-agent",
            "content-type",
            "x-forwarded-for",
            "x-tenant",
            "x-country",
            "x-device-id",
        ];
        let mut b = http::Request::builder().uri("/");
        for name in secret.iter().chain(&kept) {
            b = b.header(*name, "value-of-it");
        }
        let (head, _) = b.body(()).unwrap().into_parts();
        let v = headers(&head);
        for name in secret {
            assert!(v.get(name).is_none(), "{name} went into the input");
        }
        for name in kept {
            assert_eq!(v[name], "value-of-it", "{name}");
        }
    }
}
