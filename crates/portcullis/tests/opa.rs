//! Authorization by an external OPA server through the real gateway: decisions, the input
//! document OPA receives, decision caching, and both failure directions (closed by default,
//! open when configured). The OPA here is a real policy engine (regorus, the same as the
//! gateway's in-process Rego) behind OPA's Data API (`POST /v1/data/<path>`): the OPA binary
//! cannot be installed in this environment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_authz::rego::RegoPolicies;
use portcullis_jose::{Alg, Signer};
use serde_json::{Value, json};

const ISS: &str = "https://issuer.test";

/// What a 403 of the authorization step tells the client, whichever rule refused.
const NOT_ALLOWED: &str = "the request is not allowed";

const POLICY: &str = r#"
package httpapi.authz

import rego.v1

default allow := false

allow if {
	"read:orders" in input.principal.scopes
	input.request.method == "GET"
}

decision := {"allow": allow, "reasons": reasons, "headers": {"x-opa": "checked"}}

reasons := ["GET with read:orders only"] if not allow

reasons := [] if allow

# A header the configuration does not list in authz.policy_headers.
sneaky := {"allow": true, "headers": {"x-sneaky": "1"}}
"#;

struct Opa {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    inputs: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

async fn start_opa() -> Opa {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.rego"), POLICY).unwrap();
    let policies = Arc::new(
        RegoPolicies::load(
            &[("opa".into(), dir.path().join("p.rego"))],
            None,
            Duration::from_secs(1),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let inputs: Arc<Mutex<Vec<Value>>> = Arc::default();
    let down = Arc::new(AtomicBool::new(false));
    let (c, i, d) = (calls.clone(), inputs.clone(), down.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (policies, c, i, d) = (policies.clone(), c.clone(), i.clone(), d.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let (policies, c, i, d) = (policies.clone(), c.clone(), i.clone(), d.clone());
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        if d.load(Ordering::SeqCst) {
                            let r = http::Response::builder()
                                .status(500)
                                .body(Full::new(Bytes::from_static(
                                    b"{\"code\":\"internal_error\"}",
                                )))
                                .unwrap();
                            return Ok::<_, Infallible>(r);
                        }
                        let doc: Value = serde_json::from_slice(&body).unwrap();
                        let input = doc["input"].clone();
                        i.lock().unwrap().push(input.clone());
                        let rule = path.trim_start_matches("/v1/data/").replace('/', ".");
                        let d = policies.evaluate(&format!("data.{rule}"), &input).unwrap();
                        let headers: serde_json::Map<String, Value> = d
                            .headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
                            .collect();
                        let result =
                            json!({"allow": d.allow, "reasons": d.reasons, "headers": headers});
                        let body = json!({ "result": result }).to_string();
                        Ok(http::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Opa {
        addr,
        calls,
        inputs,
        down,
        _dir: dir,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opa_decides_caches_and_fails_in_the_configured_direction() {
    let opa = start_opa().await;
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let key = Signer::generate(Alg::EdDSA, "k1".into()).unwrap();
    std::fs::write(
        dir.path().join("keys.json"),
        json!({"keys": [key.public_jwk()]}).to_string(),
    )
    .unwrap();
    let dead = dead_addr();
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt:
    main: {{ issuer: "{ISS}", jwks_file: keys.json, algorithms: [EdDSA], audiences: [api] }}
authz:
  policy_headers: [x-opa]
  opa:
    main: {{ url: "http://{opa}", cache_ttl: 30s }}
    nocache: {{ url: "http://{opa}", cache_ttl: 0s }}
    gone: {{ url: "http://{dead}", timeout: 500ms }}
    lenient: {{ url: "http://{dead}", timeout: 500ms, on_error: open }}
    lenient_live: {{ url: "http://{opa}", cache_ttl: 0s, on_error: open }}
routes:
  - {{ name: orders, match: {{ path: "/orders/{{id}}" }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ opa: {{ server: main, path: httpapi/authz/decision }} }} }}
  - {{ name: sneaky-open, match: {{ prefix: /sneaky-open }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ opa: {{ server: lenient_live, path: httpapi/authz/sneaky }} }} }}
  - {{ name: sneaky, match: {{ prefix: /sneaky }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ opa: {{ server: nocache, path: httpapi/authz/sneaky }} }} }}
  - {{ name: live, match: {{ prefix: /live }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ opa: {{ server: nocache, path: httpapi/authz/decision }} }} }}
  - {{ name: closed, match: {{ prefix: /closed }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ opa: {{ server: gone, path: httpapi/authz/decision }} }} }}
  - {{ name: open, match: {{ prefix: /open }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ opa: {{ server: lenient, path: httpapi/authz/decision }} }} }}
"#,
        up = up.url(),
        opa = opa.addr,
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let token = |scope: &str| {
        let c = json!({"iss": ISS, "sub": "alice", "aud": "api", "iat": now(), "exp": now() + 600, "scope": scope});
        key.sign("at+jwt", c.as_object().unwrap()).unwrap()
    };
    let reader = token("read:orders");
    let call = |method: &'static str, path: &'static str, t: String| {
        send(req(
            method,
            &format!("{}{path}", gw.url("public")),
            &[
                ("authorization", &format!("Bearer {t}")),
                ("cookie", "sid=secret"),
                ("x-forwarded-authorization", "Bearer forwarded-credential"),
                ("x-goog-iap-jwt-assertion", "iap-assertion"),
                ("x-amzn-oidc-accesstoken", "alb-oidc-credential"),
                // A client's copies of a policy header, in both spellings.
                ("x-opa", "forged"),
                ("x_opa", "forged"),
            ],
            "",
        ))
    };

    // Allowed; OPA's header reaches the upstream, the client's copies do not; OPA saw the
    // input document without secrets.
    let r = call("GET", "/orders/7", reader.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().unwrap();
    assert_eq!(
        seen.headers.get_all("x-opa").iter().collect::<Vec<_>>(),
        ["checked"]
    );
    assert_eq!(seen.header("x_opa"), None);
    let input = opa.inputs.lock().unwrap()[0].clone();
    assert_eq!(input["request"]["params"]["id"], "7");
    assert_eq!(input["principal"]["subject"], "alice");
    assert!(
        input["request"]["headers"].get("authorization").is_none(),
        "{input}"
    );
    assert!(
        input["request"]["headers"].get("cookie").is_none(),
        "{input}"
    );
    assert!(!input.to_string().contains(&reader));
    // Nor the copies proxies forward, nor identity-aware proxies' assertions.
    for leaked in [
        "forwarded-credential",
        "iap-assertion",
        "alb-oidc-credential",
    ] {
        assert!(!input.to_string().contains(leaked), "{leaked}: {input}");
    }
    assert_eq!(opa.calls.load(Ordering::SeqCst), 1);

    // The same input again (a new request id and time): answered from the cache.
    assert_eq!(call("GET", "/orders/7", reader.clone()).await.status, 200);
    assert_eq!(opa.calls.load(Ordering::SeqCst), 1);
    // Without a cache every request asks.
    call("GET", "/live", reader.clone()).await;
    call("GET", "/live", reader.clone()).await;
    assert_eq!(opa.calls.load(Ordering::SeqCst), 3);

    // Denied, with OPA's reason in the audit event.
    let before = up.hits();
    // A decision setting a header the configuration does not list: refused (503), as a
    // malformed answer is.
    let r = call("GET", "/sneaky", reader.clone()).await;
    let v = assert_problem(&r, 503, "authz_unavailable");
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert!(
        ev["authz"]["reason"]
            .as_str()
            .unwrap()
            .contains("header \"x-sneaky\" is not listed in authz.policy_headers"),
        "{ev}"
    );
    // So it is with `on_error: open`: a configuration fault, not a server that is down.
    let r = call("GET", "/sneaky-open", reader.clone()).await;
    assert_problem(&r, 503, "authz_unavailable");
    let r = call("DELETE", "/orders/7", reader.clone()).await;
    let v = assert_problem(&r, 403, "forbidden");
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(
        ev["authz"]["rule"], "opa:main/httpapi/authz/decision",
        "{ev}"
    );
    assert_eq!(ev["authz"]["reason"], "GET with read:orders only", "{ev}");
    // OPA's reasons are the audit event's; the client is told only that it may not.
    assert_eq!(v["detail"], NOT_ALLOWED, "{v}");
    assert!(!r.text().contains("GET with read:orders"), "{}", r.text());

    // OPA failing: 503 (fail closed), never cached.
    opa.down.store(true, Ordering::SeqCst);
    let r = call("GET", "/live", reader.clone()).await;
    let v = assert_problem(&r, 503, "authz_unavailable");
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert!(
        ev["authz"]["reason"]
            .as_str()
            .unwrap()
            .contains("policy server error"),
        "{ev}"
    );
    // Unreachable: 503 within the timeout; …
    let r = call("GET", "/closed", reader.clone()).await;
    assert_problem(&r, 503, "authz_unavailable");
    assert_eq!(up.hits(), before, "nothing reached the upstream");
    // … unless the operator chose to fail open: allowed, and the audit says why.
    let r = call("GET", "/open", reader.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = audit_of(&gw, r.header("x-request-id").unwrap());
    assert_eq!(ev["authz"]["allowed"], true);
    assert!(
        ev["authz"]["reason"]
            .as_str()
            .unwrap()
            .contains("opa:lenient"),
        "{ev}"
    );

    // The metric counts decisions by rule.
    let m = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        m.contains(r#"portcullis_authz_decisions_total{rule="opa:main/httpapi/authz/decision",decision="deny"} 1"#),
        "{m}"
    );
}

/// An OPA stand-in that answers every decision with `body` (status 200), counting calls.
async fn fixed_opa(body: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let c = c.clone();
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, calls)
}

/// `on_error: open` governs an OPA that cannot decide, not one that decided to deny: an
/// answer with `allow: false` is a 403 whatever else in it is malformed (the malformed part
/// is named in the audit event). Only a missing or invalid `allow` fails open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_deny_with_a_malformed_answer_is_not_failed_open() {
    let (deny, deny_calls) =
        fixed_opa(r#"{"result":{"allow":false,"reasons":[{"code":7}]}}"#).await;
    let (deny_headers, _) =
        fixed_opa(r#"{"result":{"allow":false,"headers":{"Content-Length":"0"}}}"#).await;
    let (no_allow, _) = fixed_opa(r#"{"result":{"allow":"false","reasons":["x"]}}"#).await;
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let key = Signer::generate(Alg::EdDSA, "k1".into()).unwrap();
    std::fs::write(
        dir.path().join("keys.json"),
        json!({"keys": [key.public_jwk()]}).to_string(),
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
  opa:
    deny: {{ url: "http://{deny}", on_error: open, cache_ttl: 0s }}
    deny_closed: {{ url: "http://{deny}", cache_ttl: 0s }}
    deny_headers: {{ url: "http://{deny_headers}", on_error: open, cache_ttl: 0s }}
    no_allow: {{ url: "http://{no_allow}", on_error: open, cache_ttl: 0s }}
routes:
  - {{ name: open, match: {{ prefix: /open }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ opa: {{ server: deny, path: httpapi/authz/decision }} }} }}
  - {{ name: closed, match: {{ prefix: /closed }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ opa: {{ server: deny_closed, path: httpapi/authz/decision }} }} }}
  - {{ name: headers, match: {{ prefix: /headers }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ opa: {{ server: deny_headers, path: httpapi/authz/decision }} }} }}
  - {{ name: undecided, match: {{ prefix: /undecided }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ opa: {{ server: no_allow, path: httpapi/authz/decision }} }} }}
"#,
        up = up.url(),
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let c = json!({"iss": ISS, "sub": "alice", "aud": "api", "iat": now(), "exp": now() + 600, "scope": "read:orders"});
    let token = key.sign("at+jwt", c.as_object().unwrap()).unwrap();
    let auth = format!("Bearer {token}");
    let call = |path: &'static str| {
        send(req(
            "GET",
            &format!("{}{path}", gw.url("public")),
            &[("authorization", &auth)],
            "",
        ))
    };

    for (path, rule, malformed) in [
        ("/open/x", "opa:deny/httpapi/authz/decision", "reasons"),
        (
            "/closed/x",
            "opa:deny_closed/httpapi/authz/decision",
            "reasons",
        ),
        (
            "/headers/x",
            "opa:deny_headers/httpapi/authz/decision",
            "Content-Length",
        ),
    ] {
        let r = call(path).await;
        let v = assert_problem(&r, 403, "forbidden");
        let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
        assert_eq!(ev["stage"], "authz", "{ev}");
        assert_eq!(ev["reason"], "forbidden", "{ev}");
        assert_eq!(ev["authz"]["allowed"], false, "{ev}");
        assert_eq!(ev["authz"]["rule"], rule, "{ev}");
        let reason = ev["authz"]["reason"].as_str().unwrap();
        assert!(
            reason.contains("malformed") && reason.contains(malformed),
            "{ev}"
        );
        assert_eq!(v["detail"], NOT_ALLOWED, "{v}");
        assert!(!r.text().contains(malformed), "{}", r.text());
        assert_eq!(up.hits(), 0, "{path}: nothing may reach the upstream");
    }
    assert_eq!(deny_calls.load(Ordering::SeqCst), 2);

    // No valid `allow`: the server could not decide, and this one is set to fail open.
    let r = call("/undecided/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = audit_of(&gw, r.header("x-request-id").unwrap());
    assert!(
        ev["authz"]["reason"]
            .as_str()
            .unwrap()
            .contains("opa:no_allow"),
        "{ev}"
    );
    assert_eq!(up.hits(), 1);
}
