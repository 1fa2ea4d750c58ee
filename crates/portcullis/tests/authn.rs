//! Authentication end to end: JWTs from static and remote key sets, every refusal the gateway
//! owes (each checked for its status, challenge, problem body, audit reason, and that nothing
//! reached the upstream), the key set lifecycle against a live key server, API keys and
//! revocation, mTLS identities, and what the upstream sees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use portcullis_jose::{Alg, Signer};
use serde_json::{Map, Value, json};

const ISS: &str = "https://issuer.test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(extra: Value) -> Map<String, Value> {
    let mut c = json!({
        "iss": ISS, "sub": "alice", "aud": "orders-api", "scope": "read:orders write:orders",
        "client_id": "web", "iat": now(), "exp": now() + 600, "jti": format!("j-{}", now_nanos()),
    })
    .as_object()
    .unwrap()
    .clone();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.remove(k);
        } else {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn jwks_of(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.public_jwk()).collect::<Vec<_>>()}).to_string()
}

/// A token with a hand-made header, signed by `signer`'s algorithm over what we give.
fn forge(header: Value, claims: &Map<String, Value>, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let h = B64.encode(header.to_string());
    let p = B64.encode(Value::Object(claims.clone()).to_string());
    let input = format!("{h}.{p}");
    let sig = sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

/// Signs a hand-made header with the Ed25519 key of `signer` by minting through it and
/// swapping the header: not possible, so tests that need a custom header use this key pair.
struct RawEd {
    pair: ring::signature::Ed25519KeyPair,
    kid: String,
}

impl RawEd {
    fn new(kid: &str) -> (RawEd, Value) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        use ring::signature::KeyPair;
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(pair.public_key().as_ref()), "kid": kid, "alg": "EdDSA", "use": "sig"});
        (
            RawEd {
                pair,
                kid: kid.into(),
            },
            jwk,
        )
    }

    fn token(&self, mut header: Value, claims: &Map<String, Value>) -> String {
        let h = header.as_object_mut().unwrap();
        h.entry("alg").or_insert(json!("EdDSA"));
        h.entry("kid").or_insert(json!(self.kid));
        forge(header, claims, |m| self.pair.sign(m).as_ref().to_vec())
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn call(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(req(
        "GET",
        &format!("{}{path}", gw.url("public")),
        headers,
        "",
    ))
    .await
}

fn assert_401(r: &Resp, presented: bool) -> String {
    let v = assert_problem(r, 401, "unauthenticated");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"portcullis\""),
        "{challenge}"
    );
    assert_eq!(
        challenge.contains("error=\"invalid_token\""),
        presented,
        "{challenge}"
    );
    v["request_id"].as_str().unwrap().to_string()
}

/// Static keys: an EdDSA issuer (a JWKS file holding a Signer's key and a raw key for hand-made
/// headers) and an ES256 issuer (a JWKS file).
struct Static {
    _dir: tempfile::TempDir,
    gw: Gateway,
    up: TestUpstream,
    ed: Signer,
    raw: RawEd,
    es: Signer,
}

async fn static_setup() -> Static {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ed = Signer::generate(Alg::EdDSA, "ed-1".into()).unwrap();
    let (raw, raw_jwk) = RawEd::new("raw-1");
    let es = Signer::generate(Alg::ES256, "es-1".into()).unwrap();
    let mut set: Value = serde_json::from_str(&jwks_of(&[&ed])).unwrap();
    set["keys"].as_array_mut().unwrap().push(raw_jwk);
    write(dir.path(), "ed.jwks.json", &set.to_string());
    write(dir.path(), "es.jwks.json", &jwks_of(&[&es]));
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt:
    ed: {{ issuer: "{ISS}", jwks_file: ed.jwks.json, algorithms: [EdDSA], audiences: [orders-api], required_claims: [sub], leeway: 0s }}
    es: {{ issuer: "https://es.test", jwks_file: es.jwks.json, algorithms: [ES256], audiences: [orders-api], leeway: 0s }}
routes:
  - {{ name: orders, match: {{ prefix: /orders }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ allow: any-authenticated }} }}
  - {{ name: keep, match: {{ prefix: /keep }}, upstream: app, auth: {{ methods: ["jwt:ed"], authorization: keep, identity_headers: false }}, authz: {{ allow: any-authenticated }} }}
  - {{ name: open, match: {{ prefix: /open }}, upstream: app, auth: {{ anonymous: true }} }}
"#,
        up = up.url()
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    Static {
        _dir: dir,
        gw,
        up,
        ed,
        raw,
        es,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_passes_with_verified_identity_and_forged_headers_replaced() {
    let s = static_setup().await;
    let token = s.ed.sign("at+jwt", &claims(json!({}))).unwrap();
    let r = call(
        &s.gw,
        "/orders/1",
        &[
            ("authorization", &bearer(&token)),
            ("x-user-id", "admin"),
            ("x-scopes", "admin:all"),
            ("x-roles", "root"),
            ("x-authenticated", "yes"),
            ("x-authenticated-by", "es"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.up.requests().pop().unwrap();
    assert_eq!(seen.header("x-user-id"), Some("alice"));
    assert_eq!(seen.header("x-client-id"), Some("web"));
    assert_eq!(seen.header("x-scopes"), Some("read:orders write:orders"));
    assert_eq!(seen.header("x-authenticated"), Some("jwt"));
    assert_eq!(
        seen.header("x-authenticated-by"),
        Some("ed"),
        "the issuer that vouched for the identity, not the client's"
    );
    assert_eq!(seen.header("x-roles"), None, "forged roles header removed");
    assert_eq!(seen.header("authorization"), None, "credential stripped");
    let audit = audit_of(&s.gw, r.header("x-request-id").unwrap());
    assert_eq!(audit["auth"]["method"], "jwt");
    assert_eq!(audit["auth"]["subject"], "alice");
    assert_eq!(audit["auth"]["authority"], "ed");

    // A client that names the identity headers in `Connection` (hop-by-hop: to be removed
    // before forwarding) takes out its own copies, never the gateway's.
    let r = call(
        &s.gw,
        "/orders/1",
        &[
            ("authorization", &bearer(&token)),
            ("connection", "x-user-id, x-client-id, X-Authenticated"),
            ("x-user-id", "admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.up.requests().pop().unwrap();
    assert_eq!(seen.header("x-user-id"), Some("alice"));
    assert_eq!(seen.header("x-client-id"), Some("web"));
    assert_eq!(seen.header("x-authenticated"), Some("jwt"));
    assert!(
        !seen
            .header("connection")
            .is_some_and(|c| c.contains("x-user"))
    );

    // The ES256 issuer is chosen by `iss`; the same route accepts both, and the upstream
    // tells their users apart by the authority (`sub` is `alice` for both).
    let t2 =
        s.es.sign("JWT", &claims(json!({"iss": "https://es.test"})))
            .unwrap();
    let r = call(
        &s.gw,
        "/orders/2",
        &[
            ("authorization", &bearer(&t2)),
            ("x-authenticated-by", "ed"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.up.requests().pop().unwrap();
    assert_eq!(seen.header("x-user-id"), Some("alice"));
    assert_eq!(seen.header("x-authenticated-by"), Some("es"));

    // keep: the credential travels, identity headers are not added (and forged ones still go).
    let r = call(
        &s.gw,
        "/keep",
        &[("authorization", &bearer(&token)), ("x-user-id", "admin")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = s.up.requests().pop().unwrap();
    assert_eq!(seen.header("authorization"), Some(bearer(&token).as_str()));
    assert_eq!(seen.header("x-user-id"), None);
    assert_eq!(seen.header("x-authenticated-by"), None);

    // Anonymous routes: forged identity headers removed too.
    let r = call(
        &s.gw,
        "/open",
        &[("x-user-id", "admin"), ("x-authenticated-by", "ed")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = s.up.requests().pop().unwrap();
    assert_eq!(seen.header("x-user-id"), None);
    assert_eq!(seen.header("x-authenticated-by"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_and_nothing_reaches_the_upstream() {
    let s = static_setup().await;
    let good = claims(json!({}));
    let ed_jwks = jwks_of(&[&s.ed]);
    let hs = |secret: &[u8], alg: &str| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        forge(json!({"alg": alg, "typ": "JWT"}), &good, |m| {
            ring::hmac::sign(&key, m).as_ref().to_vec()
        })
    };
    let valid = s.raw.token(json!({}), &good);
    let (h, p, _) = {
        let mut it = valid.split('.');
        (
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
        )
    };
    let es_zero = forge(
        json!({"alg": "ES256", "kid": "es-1"}),
        &claims(json!({"iss": "https://es.test"})),
        |_| vec![0u8; 64],
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!("{}.{p}.sig", B64.encode(r#"{"alg":"none"}"#)),
            "alg_none",
        ),
        (
            "alg None",
            format!("{}.{p}.sig", B64.encode(r#"{"alg":"None"}"#)),
            "alg_none",
        ),
        (
            "alg NONE",
            format!("{}.{p}.sig", B64.encode(r#"{"alg":"NONE"}"#)),
            "alg_none",
        ),
        (
            "HS256 with the public key set as secret (key confusion)",
            hs(ed_jwks.as_bytes(), "HS256"),
            "alg_not_allowed",
        ),
        (
            "jku header",
            s.raw.token(json!({"jku": "https://evil.test/jwks"}), &good),
            "key_source_header",
        ),
        (
            "x5u header",
            s.raw.token(json!({"x5u": "https://evil.test/cert"}), &good),
            "key_source_header",
        ),
        (
            "jwk header",
            s.raw.token(json!({"jwk": {"kty": "OKP"}}), &good),
            "key_source_header",
        ),
        (
            "x5c header",
            s.raw.token(json!({"x5c": ["MIIB"]}), &good),
            "key_source_header",
        ),
        (
            "crit header",
            s.raw.token(json!({"crit": ["exp"]}), &good),
            "crit_unsupported",
        ),
        (
            "unknown kid",
            s.raw.token(json!({"kid": "nobody"}), &good),
            "unknown_kid",
        ),
        ("ECDSA r = s = 0", es_zero, "bad_signature"),
        ("unsigned", format!("{h}.{p}."), "malformed"),
        (
            "truncated signature",
            {
                let sig = B64.decode(valid.rsplit('.').next().unwrap()).unwrap();
                format!("{h}.{p}.{}", B64.encode(&sig[..sig.len() - 6]))
            },
            "bad_signature",
        ),
        (
            "signature with a non-canonical base64 ending",
            // 64 bytes in 86 characters leave 4 spare bits, which must be zero: 'B' sets one.
            format!("{}B", &valid[..valid.len() - 1]),
            "malformed",
        ),
        ("two parts", format!("{h}.{p}"), "malformed"),
        (
            "exp as a string",
            s.raw.token(json!({}), &claims(json!({"exp": "tomorrow"}))),
            "claim_type",
        ),
        (
            "sub as a number",
            s.raw.token(json!({}), &claims(json!({"sub": 42}))),
            "claim_type",
        ),
        (
            "expired",
            s.raw.token(json!({}), &claims(json!({"exp": now() - 5}))),
            "expired",
        ),
        (
            "not yet valid",
            s.raw.token(json!({}), &claims(json!({"nbf": now() + 300}))),
            "not_yet_valid",
        ),
        (
            "untrusted issuer",
            s.raw
                .token(json!({}), &claims(json!({"iss": "https://evil.test"}))),
            "untrusted_issuer",
        ),
        (
            "wrong audience",
            s.raw.token(json!({}), &claims(json!({"aud": ["other"]}))),
            "wrong_audience",
        ),
        (
            "required claim missing",
            s.raw.token(json!({}), &claims(json!({"sub": null}))),
            "missing_claim",
        ),
        (
            "signature from another key",
            {
                let other = Signer::generate(Alg::EdDSA, "raw-1".into()).unwrap();
                other.sign("JWT", &good).unwrap()
            },
            "bad_signature",
        ),
    ];
    for (name, token, code) in &cases {
        let r = call(&s.gw, "/orders/1", &[("authorization", &bearer(token))]).await;
        let id = assert_401(&r, true);
        let audit = audit_of(&s.gw, &id);
        assert_eq!(audit["auth_failure"], *code, "{name}: {audit}");
        assert_eq!(audit["reason"], "unauthenticated", "{name}");
        assert_eq!(audit["stage"], "authn", "{name}");
        assert!(
            !r.text().contains(code) || code.len() < 4,
            "{name}: the precise reason leaked to the client: {}",
            r.text()
        );
    }
    // No credentials at all: a bare challenge.
    let r = call(&s.gw, "/orders/1", &[]).await;
    let id = assert_401(&r, false);
    assert_eq!(audit_of(&s.gw, &id)["auth_failure"], "missing_credentials");
    // Another scheme is no bearer credential.
    let r = call(&s.gw, "/orders/1", &[("authorization", "Basic YTpi")]).await;
    assert_401(&r, false);
    // Two Authorization headers: ambiguous, 400 invalid_request.
    let t = s.ed.sign("JWT", &good).unwrap();
    let mut rq = req("GET", &format!("{}/orders/1", s.gw.url("public")), &[], "");
    rq.headers_mut()
        .append("authorization", bearer(&t).parse().unwrap());
    rq.headers_mut()
        .append("authorization", bearer(&t).parse().unwrap());
    let r = send(rq).await;
    assert_problem(&r, 400, "bad_request");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_request\"")
    );
    assert_eq!(s.up.hits(), 0, "a refused request reached the upstream");
    // And the gateway is healthy.
    let r = call(&s.gw, "/orders/1", &[("authorization", &bearer(&t))]).await;
    assert_eq!(r.status, 200);
    assert_eq!(s.up.hits(), 1);
    // Failures were counted per client address.
    let auth = get(&format!("{}/auth", s.gw.admin_url())).await.json();
    assert!(
        auth["failures"]["by_client_ip"][0]["failures"]
            .as_u64()
            .unwrap()
            >= cases.len() as u64,
        "{auth}"
    );
    let metrics = get(&format!("{}/metrics", s.gw.admin_url())).await.text();
    assert!(
        metrics.contains("portcullis_auth_failures_total{reason=\"alg_none\"} 3"),
        "{metrics}"
    );
}

/// A key server on loopback whose JWKS the test changes, counting fetches, able to fail. It
/// is its own OpenID provider too (issuer `http://<addr>`): its discovery document names the
/// key set at `jwks_path`, which the test may move.
struct KeyServer {
    addr: SocketAddr,
    jwks: Arc<Mutex<String>>,
    jwks_path: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl KeyServer {
    async fn start(jwks: String) -> KeyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let jwks = Arc::new(Mutex::new(jwks));
        let jwks_path = Arc::new(Mutex::new("/jwks".to_string()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (j, p, f, d) = (
            jwks.clone(),
            jwks_path.clone(),
            fetches.clone(),
            down.clone(),
        );
        serve_http1(
            listener,
            move |req: http::Request<hyper::body::Incoming>| {
                let (j, p, f, d) = (j.clone(), p.clone(), f.clone(), d.clone());
                async move {
                    let mut b = http::Response::builder();
                    let path = p.lock().unwrap().clone();
                    let body = if d.load(Ordering::SeqCst) {
                        b = b.status(503);
                        String::new()
                    } else if req.uri().path() == "/.well-known/openid-configuration" {
                        json!({
                            "issuer": format!("http://{addr}"),
                            "jwks_uri": format!("http://{addr}{path}"),
                        })
                        .to_string()
                    } else if req.uri().path() == path {
                        f.fetch_add(1, Ordering::SeqCst);
                        b = b.header("cache-control", "max-age=3600");
                        j.lock().unwrap().clone()
                    } else {
                        b = b.status(404);
                        String::new()
                    };
                    b.body(Full::new(Bytes::from(body))).unwrap()
                }
            },
        );
        KeyServer {
            addr,
            jwks,
            jwks_path,
            fetches,
            down,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }
}

fn remote_gateway(up: &TestUpstream, jwks_url: &str, cooldown: &str) -> Gateway {
    gateway(&format!(
        r#"upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt:
    remote: {{ issuer: "{ISS}", jwks_url: "{jwks_url}", algorithms: [EdDSA, ES256], audiences: [orders-api], jwks_cache: {{ unknown_kid_cooldown: {cooldown}, fetch_timeout: 1s }} }}
routes:
  - {{ name: orders, match: {{ prefix: /orders }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_until_remote_keys_are_loaded_once() {
    let up = TestUpstream::start("app").await;
    let k1 = Signer::generate(Alg::EdDSA, "k1".into()).unwrap();
    let ks = KeyServer::start(jwks_of(&[&k1])).await;
    ks.down.store(true, Ordering::SeqCst);
    let gw = remote_gateway(&up, &ks.url(), "1s");
    let readyz = format!("{}/readyz", gw.admin_url());
    // The key server answers 503: not ready, and the reason names the issuer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&readyz).await;
        assert_eq!(r.status, 503, "{}", r.text());
        let reason = r.json()["reason"].as_str().unwrap().to_string();
        assert!(reason.contains("auth.jwt.remote"), "{reason}");
        if reason.contains("503") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{reason}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The keys arrive (at the next retry): ready.
    ks.down.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while get(&readyz).await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            get(&readyz).await.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Down again later: the loaded keys keep serving, and the gateway stays ready.
    ks.down.store(true, Ordering::SeqCst);
    let t = k1.sign("JWT", &claims(json!({}))).unwrap();
    let r = call(&gw, "/orders", &[("authorization", &bearer(&t))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&readyz).await.status, 200);
}

/// A provider found by discovery that moves its key set (the old URL gone) while rotating: the
/// first token with the new key finds the new URL; so does the background refresh when the old
/// URL fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_moved_by_its_provider_is_found_again() {
    let up = TestUpstream::start("app").await;
    let k1 = Signer::generate(Alg::EdDSA, "k1".into()).unwrap();
    let ks = KeyServer::start(jwks_of(&[&k1])).await;
    let iss = format!("http://{}", ks.addr);
    let gw = gateway(&format!(
        r#"upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt:
    remote: {{ issuer: "{iss}", discovery: true, algorithms: [EdDSA, ES256], audiences: [orders-api], jwks_cache: {{ unknown_kid_cooldown: 1s, fetch_timeout: 1s, min_ttl: 1s, max_ttl: 1s }} }}
routes:
  - {{ name: orders, match: {{ prefix: /orders }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url()
    ));
    let t1 = k1.sign("JWT", &claims(json!({ "iss": iss }))).unwrap();
    let r = call(&gw, "/orders", &[("authorization", &bearer(&t1))]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The provider moves its key set and adds k2; the old URL answers 404.
    let k2 = Signer::generate(Alg::ES256, "k2".into()).unwrap();
    *ks.jwks.lock().unwrap() = jwks_of(&[&k2, &k1]);
    *ks.jwks_path.lock().unwrap() = "/keys/v2".into();
    let t2 = k2.sign("JWT", &claims(json!({ "iss": iss }))).unwrap();
    let r = call(&gw, "/orders", &[("authorization", &bearer(&t2))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let status = get(&format!("{}/auth", gw.admin_url())).await.json();
    let issuer = &status["issuers"][0];
    assert_eq!(issuer["keys_loaded"], 2, "{status}");
    assert_eq!(
        issuer["status"]["jwks_uri"],
        format!("{iss}/keys/v2"),
        "{status}"
    );

    // Moved again without a new key: the background refresh (every ¾ s here) fails at the
    // old URL, asks again and follows.
    *ks.jwks_path.lock().unwrap() = "/keys/v3".into();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = get(&format!("{}/auth", gw.admin_url())).await.json();
        let s = &status["issuers"][0]["status"];
        if s["jwks_uri"] == format!("{iss}/keys/v3") && s["last_error"].is_null() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = call(&gw, "/orders", &[("authorization", &bearer(&t1))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_refetch_once_per_cooldown_and_rotation_is_picked_up() {
    let up = TestUpstream::start("app").await;
    let k1 = Signer::generate(Alg::EdDSA, "k1".into()).unwrap();
    let ks = KeyServer::start(jwks_of(&[&k1])).await;
    let gw = remote_gateway(&up, &ks.url(), "60s");
    let t1 = k1.sign("JWT", &claims(json!({}))).unwrap();
    let r = call(&gw, "/orders", &[("authorization", &bearer(&t1))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let base = ks.fetches.load(Ordering::SeqCst);
    assert!(base >= 1);

    // Rotation: the server now publishes k2 as well; the first k2 token refetches once.
    let k2 = Signer::generate(Alg::ES256, "k2".into()).unwrap();
    *ks.jwks.lock().unwrap() = jwks_of(&[&k2, &k1]);
    let t2 = k2.sign("JWT", &claims(json!({}))).unwrap();
    let r = call(&gw, "/orders", &[("authorization", &bearer(&t2))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ks.fetches.load(Ordering::SeqCst), base + 1);

    // A flood of forged kids within the cooldown: refused, and the IdP is not asked again.
    let (raw, _) = RawEd::new("x");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = format!("{}/orders", gw.url("public"));
        let t = raw.token(json!({"kid": format!("forged-{i}")}), &claims(json!({})));
        tasks.push(tokio::spawn(async move {
            send(req("GET", &url, &[("authorization", &bearer(&t))], ""))
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert_eq!(
        ks.fetches.load(Ordering::SeqCst),
        base + 1,
        "forged kids made the gateway refetch"
    );
    let status = get(&format!("{}/auth", gw.admin_url())).await.json();
    let issuer = &status["issuers"][0];
    assert_eq!(issuer["keys_loaded"], 2, "{status}");
    assert!(
        issuer["status"]["unknown_kid_throttled"].as_u64().unwrap() >= 39,
        "{status}"
    );

    // The IdP goes down: the last good keys keep serving.
    ks.down.store(true, Ordering::SeqCst);
    let r = call(
        &gw,
        "/orders",
        &[(
            "authorization",
            &bearer(&k1.sign("JWT", &claims(json!({}))).unwrap()),
        )],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 3);
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains("portcullis_jwks_keys{issuer=\"remote\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_whose_keys_never_loaded_answers_503_not_401() {
    let up = TestUpstream::start("app").await;
    let k1 = Signer::generate(Alg::EdDSA, "k1".into()).unwrap();
    let ks = KeyServer::start(String::new()).await;
    ks.down.store(true, Ordering::SeqCst);
    let gw = remote_gateway(&up, &ks.url(), "1s");
    let t = k1.sign("JWT", &claims(json!({}))).unwrap();
    let r = call(&gw, "/orders", &[("authorization", &bearer(&t))]).await;
    let v = assert_problem(&r, 503, "auth_unavailable");
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        audit_of(&gw, v["request_id"].as_str().unwrap())["auth_failure"],
        "no_keys"
    );
    assert_eq!(up.hits(), 0);
    // An IdP that cannot answer is not the client's failure: nothing counted against it (the
    // authorization risk signal reads these counts).
    let auth = get(&format!("{}/auth", gw.admin_url())).await.json();
    assert_eq!(auth["failures"]["by_client_ip"], json!([]), "{auth}");
    // Once the IdP is back, the same token passes (fetched on demand — or, should the
    // request find the background retry under way, answered 503 at once and passing next).
    *ks.jwks.lock().unwrap() = jwks_of(&[&k1]);
    ks.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(&gw, "/orders", &[("authorization", &bearer(&t))]).await;
        if r.status == 200 {
            break;
        }
        assert_problem(&r, 503, "auth_unavailable");
        assert!(Instant::now() < deadline, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_hashed_flags_query_opt_in_and_revocation() {
    let up = TestUpstream::start("app").await;
    let out = run_cli(bin(), &["apikey"]);
    assert_eq!(out.status, 0, "{}", out.stderr);
    let key = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("key:")
        .trim()
        .to_string();
    let hash = out
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("hash:")
        .trim()
        .to_string();
    assert_eq!(hash, format!("sha256:{}", sha256_hex(&key)));
    let gw = gateway(&format!(
        r#"upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  api_keys:
    keys:
      - {{ hash: "{hash}", client_id: reports, owner: bob, scopes: [read:orders], tier: pro, tenant: t1 }}
      - {{ hash: "sha256:{off}", client_id: old, active: false }}
      - {{ hash: "sha256:{exp}", client_id: gone, expires: "2020-01-01T00:00:00Z" }}
routes:
  - {{ name: h, match: {{ prefix: /h }}, upstream: app, auth: {{ methods: [api_key] }}, authz: {{ allow: any-authenticated }} }}
  - {{ name: q, match: {{ prefix: /q }}, upstream: app, auth: {{ methods: [api_key], api_key_query: api_key }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url(),
        off = sha256_hex("pk_inactive"),
        exp = sha256_hex("pk_expired"),
    ));
    // A second key spelled with `_`, which CGI-style backends read as `x-api-key`.
    let r = call(&gw, "/h", &[("x-api-key", &key), ("x_api_key", "pk_other")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x_api_key"), None, "no key is forwarded");
    assert_eq!(seen.header("x-client-id"), Some("reports"));
    assert_eq!(seen.header("x-user-id"), Some("bob"));
    assert_eq!(seen.header("x-tenant-id"), Some("t1"));
    assert_eq!(seen.header("x-authenticated"), Some("api_key"));
    assert_eq!(seen.header("x-authenticated-by"), Some("api_keys"));
    assert_eq!(seen.header("x-api-key"), None, "the key is not forwarded");

    let refused = [
        ("/h", vec![("x-api-key", "pk_wrong")], "api_key_unknown"),
        ("/h", vec![("x-api-key", "pk_inactive")], "api_key_inactive"),
        ("/h", vec![("x-api-key", "pk_expired")], "api_key_expired"),
    ];
    let hits = up.hits();
    for (path, headers, code) in &refused {
        let r = call(&gw, path, headers).await;
        let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(audit_of(&gw, &id)["auth_failure"], *code);
    }
    // Never from the query string unless the route opts in.
    let r = call(&gw, &format!("/h?api_key={key}"), &[]).await;
    assert_problem(&r, 401, "unauthenticated");
    assert_eq!(up.hits(), hits);
    let r = call(&gw, &format!("/q?a=1&api_key={key}&b=2"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.requests().pop().unwrap().uri, "/q?a=1&b=2");
    // Key in header and query: ambiguous.
    let r = call(&gw, &format!("/q?api_key={key}"), &[("x-api-key", &key)]).await;
    assert_problem(&r, 400, "bad_request");
    // Spellings a framework reads as the same parameter: a second one is a second key (PHP
    // makes `api.key` into `api_key`), and the key is taken and removed under any of them.
    let hits = up.hits();
    // (The same name in another case, or in PHP's spellings of it, is parameter pollution to
    // the WAF already, which runs first.)
    for (second, status, code) in [
        ("api_key[]=x", 400, "bad_request"),
        ("api.key=x", 403, "waf_blocked"),
        ("api%20key=x", 403, "waf_blocked"),
        ("API_KEY=x", 403, "waf_blocked"),
    ] {
        let r = call(&gw, &format!("/q?api_key={key}&{second}"), &[]).await;
        let v = assert_problem(&r, status, code);
        if status == 400 {
            assert_eq!(v["detail"], "more than one API key", "{second}");
        }
    }
    assert_eq!(up.hits(), hits);
    let r = call(&gw, &format!("/q?a=1&Api.Key={key}"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.requests().pop().unwrap().uri, "/q?a=1");

    // Revoked through the admin API: refused from then on.
    let r = send(req(
        "POST",
        &format!("{}/auth/revocations", gw.admin_url()),
        &[("content-type", "application/json")],
        &json!({"api_key": key}).to_string(),
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = call(&gw, "/h", &[("x-api-key", &key)]).await;
    let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(audit_of(&gw, &id)["auth_failure"], "revoked");
    let list = get(&format!("{}/auth/revocations", gw.admin_url()))
        .await
        .json();
    assert_eq!(list["api_keys"][0], hash.as_str(), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_ids_are_refused_even_when_cached() {
    let s = static_setup().await;
    let c = claims(json!({"jti": "to-revoke"}));
    let t = s.ed.sign("JWT", &c).unwrap();
    assert_eq!(
        call(&s.gw, "/orders", &[("authorization", &bearer(&t))])
            .await
            .status,
        200
    );
    let r = send(req(
        "POST",
        &format!("{}/auth/revocations", s.gw.admin_url()),
        &[],
        r#"{"token_id": "to-revoke"}"#,
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = call(&s.gw, "/orders", &[("authorization", &bearer(&t))]).await;
    let id = assert_401(&r, true);
    assert_eq!(audit_of(&s.gw, &id)["auth_failure"], "revoked");
    let r = send(req(
        "POST",
        &format!("{}/auth/revocations", s.gw.admin_url()),
        &[],
        r#"{"nothing": 1}"#,
    ))
    .await;
    assert_eq!(r.status, 400);
}

/// A token id revoked `until` a time (its token's expiry) is refused until then and then
/// forgotten: the list does not keep it. `until` must be a time to come, and is for token ids
/// only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_until_a_time_ends_then() {
    let s = static_setup().await;
    let revoke = |body: String| {
        send(req(
            "POST",
            &format!("{}/auth/revocations", s.gw.admin_url()),
            &[],
            &body,
        ))
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (body, want) in [
        (
            r#"{"token_id": "x", "until": 5}"#.to_string(),
            "the time has passed",
        ),
        (
            r#"{"token_id": "x", "until": "soon"}"#.to_string(),
            "RFC 3339",
        ),
        (
            format!(r#"{{"api_key": "pk_x", "until": {}}}"#, now + 60),
            "until applies to token ids",
        ),
    ] {
        let r = revoke(body).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(want), "{}", r.text());
    }
    let t = s.ed.sign("JWT", &claims(json!({"jti": "brief"}))).unwrap();
    let unix_now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    // More than 5 s ahead: room for the steps below on a loaded machine before it ends.
    let until = unix_now() + 6;
    let r = revoke(format!(r#"{{"token_id": "brief", "until": {until}}}"#)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["revoked"], format!("token_id brief until {until}"));
    let list = get(&format!("{}/auth/revocations", s.gw.admin_url()))
        .await
        .json();
    assert_eq!(list["token_ids_until"]["brief"], until, "{list}");
    let r = call(&s.gw, "/orders", &[("authorization", &bearer(&t))]).await;
    let id = assert_401(&r, true);
    assert_eq!(audit_of(&s.gw, &id)["auth_failure"], "revoked");
    // Refused until `until`; once it has passed, the token (still valid itself) is taken
    // again (a revocation holds the issuers' longest `leeway` past it: none here).
    loop {
        let r = call(&s.gw, "/orders", &[("authorization", &bearer(&t))]).await;
        if r.status == 200 {
            assert!(unix_now() >= until, "taken again before {until}");
            break;
        }
        assert_401(&r, true);
        assert!(unix_now() < until + 10, "still refused 10 s past {until}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = get(&format!("{}/auth/revocations", s.gw.admin_url()))
        .await
        .json();
    assert!(list["token_ids_until"].get("brief").is_none(), "{list}");
    assert!(
        list["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t != "brief"),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_token_is_signed_by_the_gateway_and_verifiable_with_its_jwks() {
    let up = TestUpstream::start("svc").await;
    let dir = tempfile::tempdir().unwrap();
    let ed = Signer::generate(Alg::EdDSA, "ed-1".into()).unwrap();
    write(dir.path(), "ed.jwks.json", &jwks_of(&[&ed]));
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt: {{ ed: {{ issuer: "{ISS}", jwks_file: ed.jwks.json, algorithms: [EdDSA], audiences: [orders-api] }} }}
  internal_token: {{ issuer: gw.test, ttl: 30s }}
routes:
  - {{ name: r, match: {{ prefix: / }}, upstream: app, auth: {{ methods: [jwt], internal_token: {{ audience: orders-svc }} }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url()
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let t = ed.sign("JWT", &claims(json!({}))).unwrap();
    let r = call(&gw, "/x", &[("authorization", &bearer(&t))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().unwrap();
    let internal = seen
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    assert_ne!(internal, t);
    let jwks = get(&format!("{}/jwks", gw.admin_url())).await;
    assert_eq!(jwks.status, 200);
    let (set, _) = portcullis_jose::JwkSet::from_json(jwks.text().as_bytes()).unwrap();
    let tok = portcullis_jose::decode(&internal, 8192).unwrap();
    let key = set
        .candidates(tok.header.kid.as_deref(), tok.header.alg)
        .next()
        .unwrap();
    tok.verify(&key.key).unwrap();
    assert_eq!(tok.claims["aud"], "orders-svc");
    assert_eq!(tok.claims["iss"], "gw.test");
    assert_eq!(tok.claims["sub"], "alice");
    assert_eq!(tok.claims["orig_iss"], ISS);
    assert_eq!(tok.claims["authority"], "ed");
    assert_eq!(tok.claims["auth_method"], "jwt");
    assert_eq!(tok.claims["request_id"], r.header("x-request-id").unwrap());
    let lifetime = tok.claims["exp"].as_u64().unwrap() - tok.claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 30);
}

/// A sender-constrained token is good only from its holder: one bound to a client certificate
/// (`cnf.x5t#S256`, RFC 8705) only on a connection that presented that certificate; one bound
/// to a key whose proofs the gateway does not check (DPoP's `cnf.jkt`) not at all. Nothing of a
/// refused request reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_constrained_tokens_are_good_only_from_their_holder() {
    let up = TestUpstream::start("app").await;
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let ed = Signer::generate(Alg::EdDSA, "ed-1".into()).unwrap();
    write(dir.path(), "ed.jwks.json", &jwks_of(&[&ed]));
    let gw = mtls_gateway(
        &pki,
        &up,
        &format!(
            "auth:\n  jwt: {{ ed: {{ issuer: \"{ISS}\", jwks_file: \"{}\", algorithms: [EdDSA], audiences: [orders-api] }} }}\n",
            dir.path().join("ed.jwks.json").display()
        ),
        "  - { name: r, match: { prefix: / }, upstream: app, auth: { methods: [jwt] }, authz: { allow: any-authenticated } }\n",
    );
    let addr = gw.listener("public");
    let holder = pki.issue_client("bff", None);
    let other = pki.issue_client("other", None);
    let thumbprint = B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        &holder.cert_der,
    ));
    let bound = ed
        .sign("JWT", &claims(json!({ "cnf": { "x5t#S256": thumbprint } })))
        .unwrap();
    let dpop = ed
        .sign(
            "JWT",
            &claims(json!({ "cnf": { "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" } })),
        )
        .unwrap();
    let go = |cert: Option<&CertFiles>, token: &str| {
        let ca = pki.ca_pem();
        let cfg = match cert {
            Some(c) => client::client_config_with_cert(&ca, c),
            None => client::client_config(&ca, &[&rustls::version::TLS13], &[b"http/1.1"]),
        };
        let rq = req(
            "GET",
            "/orders",
            &[("host", "localhost"), ("authorization", &bearer(token))],
            "",
        );
        async move { tls_request(addr, "localhost", cfg, rq).await.unwrap().0 }
    };
    assert_eq!(go(Some(&holder), &bound).await.status, 200);
    assert_eq!(up.hits(), 1);
    for (cert, token, reason) in [
        (Some(&other), &bound, "certificate_binding"),
        (None, &bound, "certificate_binding"),
        (Some(&holder), &dpop, "unsupported_binding"),
    ] {
        let r = go(cert, token).await;
        let v = assert_problem(&r, 401, "unauthenticated");
        let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
        assert_eq!(ev["auth_failure"], reason, "{ev}");
    }
    assert_eq!(up.hits(), 1);
    // The certificate revoked: the token bound to it goes with it, as on an `mtls` route.
    let fingerprint: String = ring::digest::digest(&ring::digest::SHA256, &holder.cert_der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let r = send(req(
        "POST",
        &format!("{}/auth/revocations", gw.admin_url()),
        &[("content-type", "application/json")],
        &json!({ "certificate_sha256": format!("sha256:{fingerprint}") }).to_string(),
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = go(Some(&holder), &bound).await;
    let v = assert_problem(&r, 401, "unauthenticated");
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["auth_failure"], "revoked", "{ev}");
    assert_eq!(up.hits(), 1);
}

/// A gateway with one TLS listener (a `localhost` certificate from `pki`) asking for client
/// certificates from `pki`'s CA, the upstream `app` at `up`, these top-level `sections` and
/// these routes (YAML list items).
fn mtls_gateway(pki: &TestPki, up: &TestUpstream, sections: &str, routes: &str) -> Gateway {
    let server = pki.issue_server(&["localhost"]);
    let yaml = format!(
        r#"listeners:
  - name: public
    address: "127.0.0.1:0"
    tls:
      certificates: [{{ cert_file: "{c}", key_file: "{k}" }}]
      client_auth: {{ mode: optional, ca_file: "{ca}" }}
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
{sections}
routes:
{routes}"#,
        c = server.cert_path.display(),
        k = server.key_path.display(),
        ca = pki.ca_path().display(),
        up = up.url()
    );
    Gateway::start(bin(), &yaml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_identities_with_spiffe_rules() {
    let up = TestUpstream::start("app").await;
    let pki = TestPki::new();
    let gw = mtls_gateway(
        &pki,
        &up,
        "",
        r#"  - { name: svc, match: { prefix: /svc }, upstream: app, auth: { methods: [mtls], mtls: { trust_domains: [prod.test], spiffe_paths: ["/ns/*/sa/orders"] } }, authz: { allow: any-authenticated } }
  - { name: any, match: { prefix: /any }, upstream: app, auth: { methods: [mtls] }, authz: { allow: any-authenticated } }
"#,
    );
    let addr = gw.listener("public");
    let go = |cert: Option<CertFiles>, path: &'static str| {
        let ca = pki.ca_pem();
        async move {
            let cfg = match &cert {
                Some(c) => client::client_config_with_cert(&ca, c),
                None => client::client_config(&ca, &[&rustls::version::TLS13], &[b"http/1.1"]),
            };
            let rq = req("GET", path, &[("host", "localhost")], "");
            tls_request(addr, "localhost", cfg, rq)
                .await
                .map(|(r, _)| r)
        }
    };
    let good = pki.issue_client("orders", Some("spiffe://prod.test/ns/shop/sa/orders"));
    let r = go(Some(good.clone()), "/svc").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().unwrap();
    assert_eq!(
        seen.header("x-user-id"),
        Some("spiffe://prod.test/ns/shop/sa/orders")
    );
    assert_eq!(seen.header("x-authenticated"), Some("mtls"));
    assert_eq!(
        seen.header("x-authenticated-by"),
        Some("public"),
        "mTLS: the listener that verified the certificate"
    );

    let hits = up.hits();
    for (cert, code) in [
        (
            pki.issue_client("web", Some("spiffe://dev.test/ns/shop/sa/orders")),
            "mtls_trust_domain",
        ),
        (
            pki.issue_client("web", Some("spiffe://prod.test/ns/shop/sa/web")),
            "mtls_spiffe_path",
        ),
        (pki.issue_client("plain", None), "mtls_no_spiffe_id"),
    ] {
        let r = go(Some(cert), "/svc").await.unwrap();
        let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(audit_of(&gw, &id)["auth_failure"], code);
    }
    // No certificate: the optional listener lets the handshake through, the route refuses.
    let r = go(None, "/svc").await.unwrap();
    assert_problem(&r, 401, "unauthenticated");
    assert_eq!(up.hits(), hits);
    // Any verified certificate will do on /any; its subject becomes the identity.
    let r = go(Some(pki.issue_client("plain", None)), "/any")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        up.requests().pop().unwrap().header("x-client-id"),
        Some("plain")
    );
    // A certificate from another CA fails the handshake itself.
    let other = TestPki::new().issue_client("x", Some("spiffe://prod.test/ns/shop/sa/orders"));
    assert!(go(Some(other), "/svc").await.is_err());
}

/// With `spiffe_bundles`, a SPIFFE id counts only when the certificate chains to its own trust
/// domain's CAs: a federated partner's CA, trusted at the handshake, cannot issue ids of ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spiffe_id_counts_only_under_its_own_trust_domains_bundle() {
    let up = TestUpstream::start("app").await;
    let (ours, partner) = (TestPki::new(), TestPki::new());
    let server = ours.issue_server(&["localhost"]);
    let both = ours.dir().join("both-cas.pem");
    std::fs::write(&both, format!("{}{}", ours.ca_pem(), partner.ca_pem())).unwrap();
    let yaml = format!(
        r#"listeners:
  - name: public
    address: "127.0.0.1:0"
    tls:
      certificates: [{{ cert_file: "{c}", key_file: "{k}" }}]
      client_auth: {{ mode: optional, ca_file: "{both}", spiffe_bundles: {{ prod.test: "{ours}", partner.test: "{partner}" }} }}
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
routes:
  - {{ name: svc, match: {{ prefix: /svc }}, upstream: app, auth: {{ methods: [mtls], mtls: {{ trust_domains: [prod.test, partner.test] }} }}, authz: {{ allow: any-authenticated }} }}
  - {{ name: any, match: {{ prefix: /any }}, upstream: app, auth: {{ methods: [mtls] }}, authz: {{ allow: any-authenticated }} }}
"#,
        c = server.cert_path.display(),
        k = server.key_path.display(),
        both = both.display(),
        ours = ours.ca_path().display(),
        partner = partner.ca_path().display(),
        up = up.url()
    );
    let gw = Gateway::start(bin(), &yaml).unwrap();
    let addr = gw.listener("public");
    let go = |cert: CertFiles, path: &'static str| {
        let ca = ours.ca_pem();
        async move {
            let cfg = client::client_config_with_cert(&ca, &cert);
            let rq = req("GET", path, &[("host", "localhost")], "");
            tls_request(addr, "localhost", cfg, rq)
                .await
                .map(|(r, _)| r)
                .unwrap()
        }
    };
    // Each CA for its own domain.
    for (pki, id) in [
        (&ours, "spiffe://prod.test/ns/shop/sa/orders"),
        (&partner, "spiffe://partner.test/sa/billing"),
    ] {
        let r = go(pki.issue_client("svc", Some(id)), "/svc").await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(up.requests().pop().unwrap().header("x-user-id"), Some(id));
    }
    // The partner's CA naming one of ours: the handshake passes (its CA is trusted), the id
    // does not count, and the route that needs one refuses; nothing reaches the upstream.
    let hits = up.hits();
    let forged = partner.issue_client("orders", Some("spiffe://prod.test/ns/shop/sa/orders"));
    let r = go(forged.clone(), "/svc").await;
    let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(audit_of(&gw, &id)["auth_failure"], "mtls_no_spiffe_id");
    assert_eq!(up.hits(), hits);
    // On a route that takes any verified certificate it is known by its subject alone.
    let r = go(forged, "/any").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-client-id"), Some("orders"));
    assert_ne!(
        seen.header("x-user-id"),
        Some("spiffe://prod.test/ns/shop/sa/orders")
    );
    // Nor does a common name that spells one of our ids pass for it as a client id: the
    // certificate has a subject and no client id.
    for cn in [
        "spiffe://prod.test/ns/shop/sa/orders",
        " SPIFFE://prod.test/ns/shop/sa/orders",
    ] {
        for san in [None, Some("spiffe://prod.test/ns/shop/sa/orders")] {
            let r = go(partner.issue_client(cn, san), "/any").await;
            assert_eq!(r.status, 200, "{}", r.text());
            let seen = up.requests().pop().unwrap();
            assert_eq!(seen.header("x-client-id"), None, "{cn:?} {san:?}");
            assert!(
                seen.header("x-user-id").unwrap().starts_with("CN="),
                "{cn:?} {san:?}"
            );
        }
    }
    // A domain without a bundle has no ids at all, whichever CA issued them.
    let r = go(
        ours.issue_client("dev", Some("spiffe://dev.test/sa/x")),
        "/svc",
    )
    .await;
    let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(audit_of(&gw, &id)["auth_failure"], "mtls_no_spiffe_id");
    assert_eq!(up.hits(), hits + 5);
}

/// A client certificate is verified at the handshake, but a connection may outlive it: on
/// every request its validity is checked again, and once it has expired the route refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_that_expires_on_an_open_connection_is_refused() {
    let up = TestUpstream::start("app").await;
    let pki = TestPki::new();
    let gw = mtls_gateway(
        &pki,
        &up,
        "",
        r#"  - { name: any, match: { prefix: /any }, upstream: app, auth: { methods: [mtls] }, authz: { allow: any-authenticated } }
"#,
    );
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let until = now() + 4;
    let cert = pki.issue_client_until("short", None, Some(until));
    let cfg = client::client_config_with_cert(&pki.ca_pem(), &cert);
    let mut conn = client::tls_connect(gw.listener("public"), "localhost", cfg)
        .await
        .unwrap();
    let ask = || req("GET", "/any", &[("host", "localhost")], "");
    let r = conn.send(ask()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let hits = up.hits();
    while now() <= until + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = conn.send(ask()).await.unwrap();
    let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        audit_of(&gw, &id)["auth_failure"],
        "mtls_certificate_expired"
    );
    assert_eq!(up.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_mtls_refuses_the_handshake_without_a_certificate() {
    let pki = TestPki::new();
    let server = pki.issue_server(&["localhost"]);
    let yaml = format!(
        r#"listeners:
  - name: public
    address: "127.0.0.1:0"
    tls:
      certificates: [{{ cert_file: "{c}", key_file: "{k}" }}]
      client_auth: {{ mode: required, ca_file: "{ca}" }}
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ demo: {{ kind: echo }} }}
routes:
  - {{ name: any, match: {{ prefix: / }}, upstream: demo, auth: {{ methods: [mtls] }}, authz: {{ allow: any-authenticated }} }}
"#,
        c = server.cert_path.display(),
        k = server.key_path.display(),
        ca = pki.ca_path().display(),
    );
    let gw = Gateway::start(bin(), &yaml).unwrap();
    let addr = gw.listener("public");
    let ca = pki.ca_pem();
    let cfg = client::client_config(&ca, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let rq = req("GET", "/", &[("host", "localhost")], "");
    assert!(tls_request(addr, "localhost", cfg, rq).await.is_err());
    let cfg = client::client_config_with_cert(&ca, &pki.issue_client("c", None));
    let rq = req("GET", "/", &[("host", "localhost")], "");
    let (r, _) = tls_request(addr, "localhost", cfg, rq).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["headers"]["x-authenticated"],
        "mtls",
        "{}",
        r.text()
    );
}

#[test]
fn auth_configuration_errors_are_reported_with_paths() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        r#"upstreams: { demo: { kind: echo } }
auth:
  jwt:
    a: { issuer: "https://a", jwks_url: "http://idp.example/jwks", algorithms: [HS256, none] }
    b: { issuer: "https://b", algorithms: [RS256] }
    c: { issuer: "https://c", jwks_url: "https://u:hunter2@idp.example/jwks", algorithms: [EdDSA], audiences: [api] }
    d: { issuer: "https://d", hmac_secret: { value: "0123456789abcdef0123456789abcdef" }, algorithms: [HS256], audiences: [""], any_audience: true }
  introspection:
    i: { endpoint: "https://gw:hunter2@idp.example/introspect", client_id: gw, client_secret: { value: s } }
  api_keys: { keys: [ { hash: "md5:abc", client_id: x } ] }
routes:
  - { name: r1, match: { prefix: /a }, upstream: demo }
  - { name: r2, match: { prefix: /b }, upstream: demo, auth: { methods: ["jwt:zzz", api_key], anonymous: true } }
  - { name: r3, match: { prefix: /c }, upstream: demo, auth: { methods: [mtls] } }
"#,
    )
    .unwrap();
    let out = run_cli(bin(), &["check", f.to_str().unwrap()]);
    assert_eq!(out.status, 1);
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
    for needle in [
        "auth.jwt.a.jwks_url",
        "auth.jwt.a.algorithms[0]: HS256 needs hmac_secret",
        "auth.jwt.a.algorithms[1]",
        "auth.jwt.b: exactly one key source",
        "auth.jwt.c.jwks_url: \"https://u:<redacted>@idp.example/jwks\": credentials in the URL",
        // The audience is checked unless the configuration says not to, and not both.
        "auth.jwt.a.audiences: list the audiences that name this gateway",
        "auth.jwt.d.any_audience: any_audience accepts every `aud`",
        "auth.jwt.d.audiences[0]: must not be empty",
        "auth.introspection.i.endpoint: \"https://gw:<redacted>@idp.example/introspect\": credentials",
        "auth.api_keys.keys[0].hash",
        "routes[0].auth: required once auth is configured",
        "routes[1].auth: anonymous: true and methods exclude each other",
        "routes[2].auth.methods: mtls needs a TLS listener with client_auth",
    ] {
        assert!(
            out.stderr.contains(needle),
            "missing {needle:?} in:\n{}",
            out.stderr
        );
    }
}

/// An RFC 7662 endpoint on loopback that answers slowly (or never), counting calls and
/// checking the gateway's client credentials.
struct SlowIntrospection {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    hang: Arc<AtomicBool>,
}

impl SlowIntrospection {
    async fn start() -> SlowIntrospection {
        Self::answering("good-opaque-token", "svc-7").await
    }

    /// An endpoint that finds `active` (and only it) active, for subject `sub`.
    async fn answering(active: &'static str, sub: &'static str) -> SlowIntrospection {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let hang = Arc::new(AtomicBool::new(false));
        let (c, h) = (calls.clone(), hang.clone());
        serve_http1(
            listener,
            move |req: http::Request<hyper::body::Incoming>| {
                let (c, h) = (c.clone(), h.clone());
                async move {
                    use http_body_util::BodyExt;
                    c.fetch_add(1, Ordering::SeqCst);
                    let basic = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let body = String::from_utf8_lossy(&body).to_string();
                    if h.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let ok_client = basic
                        == format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode("gw:s3cret")
                        );
                    let answer = if ok_client && body.contains(&format!("token={active}&")) {
                        json!({"active": true, "sub": sub, "client_id": "batch", "scope": "read:a", "exp": now() + 60})
                    } else {
                        json!({"active": false})
                    };
                    http::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(answer.to_string())))
                        .unwrap()
                }
            },
        );
        SlowIntrospection { addr, calls, hang }
    }
}

/// An introspection server answers `active` for every kind of token it issued: one it marks
/// as a refresh, ID or logout token (Keycloak's `typ`, Cognito's `token_use`, `token_type`) is
/// no credential for an API: 401 `not_an_access_token`, nothing reaches the upstream.
#[tokio::test]
async fn introspected_tokens_that_are_not_access_tokens_are_refused() {
    let up = TestUpstream::start("app").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_http1(
        listener,
        |req: http::Request<hyper::body::Incoming>| async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).to_string();
            let kind = match body.split('&').find_map(|p| p.strip_prefix("token=")) {
                Some("keycloak-refresh") => json!({"typ": "Refresh"}),
                Some("keycloak-id") => json!({"typ": "ID"}),
                Some("keycloak-logout") => json!({"typ": "Logout"}),
                Some("cognito-id") => json!({"token_use": "id"}),
                Some("typed-id") => json!({"token_type": "id_token"}),
                _ => json!({"typ": "Bearer"}),
            };
            let mut answer = json!({"active": true, "sub": "u-1", "exp": now() + 60});
            answer
                .as_object_mut()
                .unwrap()
                .extend(kind.as_object().unwrap().clone());
            http::Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(answer.to_string())))
                .unwrap()
        },
    );
    let gw = gateway(&format!(
        r#"upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  introspection:
    as: {{ endpoint: "http://{addr}/introspect", client_id: gw, client_secret: {{ value: s3cret }} }}
routes:
  - {{ name: r, match: {{ prefix: / }}, upstream: app, auth: {{ methods: [introspection] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url(),
    ));
    let url = format!("{}/x", gw.url("public"));
    for token in [
        "keycloak-refresh",
        "keycloak-id",
        "keycloak-logout",
        "cognito-id",
        "typed-id",
    ] {
        let auth = format!("Bearer {token}");
        let r = send(req("GET", &url, &[("authorization", &auth)], "")).await;
        let id = assert_401(&r, true);
        assert_eq!(
            audit_of(&gw, &id)["auth_failure"],
            "not_an_access_token",
            "{token}"
        );
    }
    assert_eq!(up.hits(), 0, "no such token reached the upstream");
    let r = send(req(
        "GET",
        &url,
        &[("authorization", "Bearer keycloak-access")],
        "",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_is_single_flight_cached_and_bounded_in_time() {
    let up = TestUpstream::start("app").await;
    let is = SlowIntrospection::start().await;
    let gw = gateway(&format!(
        r#"upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  introspection:
    as: {{ endpoint: "http://{addr}/introspect", client_id: gw, client_secret: {{ value: s3cret }}, timeout: 3s, cache_inactive: 30s }}
routes:
  - {{ name: r, match: {{ prefix: / }}, upstream: app, auth: {{ methods: [introspection] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url(),
        addr = is.addr
    ));
    let url = format!("{}/x", gw.url("public"));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            send(req(
                "GET",
                &url,
                &[("authorization", "Bearer good-opaque-token")],
                "",
            ))
            .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        is.calls.load(Ordering::SeqCst),
        1,
        "20 concurrent requests, one call"
    );
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-user-id"), Some("svc-7"));
    assert_eq!(seen.header("x-client-id"), Some("batch"));
    // Cached: no further call.
    let r = send(req(
        "GET",
        &url,
        &[("authorization", "Bearer good-opaque-token")],
        "",
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(is.calls.load(Ordering::SeqCst), 1);
    // Inactive answers are cached too (for cache_inactive).
    for _ in 0..3 {
        let r = send(req(
            "GET",
            &url,
            &[("authorization", "Bearer revoked-token")],
            "",
        ))
        .await;
        assert_problem(&r, 401, "unauthenticated");
    }
    assert_eq!(is.calls.load(Ordering::SeqCst), 2);
    // An endpoint that does not answer: 503 once the timeout passes (3 s, far above the 300 ms
    // answers above on a loaded machine), never a hang (it would answer after 30 s).
    is.hang.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let r = send(req(
        "GET",
        &url,
        &[("authorization", "Bearer another-token")],
        "",
    ))
    .await;
    let v = assert_problem(&r, 503, "auth_unavailable");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        audit_of(&gw, v["request_id"].as_str().unwrap())["auth_failure"],
        "introspection_unavailable"
    );
    assert_eq!(up.hits(), 21);
}

/// One method, several endpoints (`methods: [introspection]`): when no endpoint finds the
/// token active, one that could not answer makes it a 503 (try again), not a 401 (drop the
/// token) — the token may be the silent endpoint's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_cannot_answer_outweighs_one_that_does_not_know_the_token() {
    let up = TestUpstream::start("app").await;
    let silent = SlowIntrospection::answering("token-of-a", "svc-a").await;
    silent.hang.store(true, Ordering::SeqCst);
    let other = SlowIntrospection::answering("token-of-b", "svc-b").await;
    // B answers in 300 ms, well within its timeout however loaded the machine; A never does
    // within its own.
    let gw = gateway(&format!(
        r#"upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  introspection:
    a: {{ endpoint: "http://{a}/introspect", client_id: gw, client_secret: {{ value: s3cret }}, timeout: 1s }}
    b: {{ endpoint: "http://{b}/introspect", client_id: gw, client_secret: {{ value: s3cret }}, timeout: 5s }}
routes:
  - {{ name: r, match: {{ prefix: / }}, upstream: app, auth: {{ methods: [introspection] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url(),
        a = silent.addr,
        b = other.addr
    ));
    let r = call(&gw, "/x", &[("authorization", &bearer("token-of-a"))]).await;
    let v = assert_problem(&r, 503, "auth_unavailable");
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        audit_of(&gw, v["request_id"].as_str().unwrap())["auth_failure"],
        "introspection_unavailable"
    );
    assert_eq!(silent.calls.load(Ordering::SeqCst), 1);
    assert_eq!(other.calls.load(Ordering::SeqCst), 1);
    assert_eq!(up.hits(), 0);
    // B's own tokens still pass.
    let r = call(&gw, "/x", &[("authorization", &bearer("token-of-b"))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The verified-token cache keeps each verifier's verdicts apart. A route that accepts tokens
/// of two authorization servers gets each server's tokens through even when the other server
/// (asked first) says they are not active; and a JWT verified by an issuer is not taken as
/// verified by an introspection endpoint of the same name (nor the other way round), whose
/// server has its own say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verifier_s_verdicts_are_its_own() {
    let up = TestUpstream::start("app").await;
    let a = SlowIntrospection::answering("token-of-a", "svc-a").await;
    let b = SlowIntrospection::answering("token-of-b", "svc-b").await;
    let dir = tempfile::tempdir().unwrap();
    let key = Signer::generate(Alg::EdDSA, "k1".into()).unwrap();
    write(dir.path(), "keys.json", &jwks_of(&[&key]));
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt:
    idp: {{ issuer: "{ISS}", jwks_file: keys.json, algorithms: [EdDSA], audiences: [orders-api] }}
  introspection:
    idp: {{ endpoint: "http://{a}/introspect", client_id: gw, client_secret: {{ value: s3cret }}, cache_inactive: 60s }}
    other: {{ endpoint: "http://{b}/introspect", client_id: gw, client_secret: {{ value: s3cret }}, cache_inactive: 60s }}
routes:
  - {{ name: both, match: {{ prefix: /both }}, upstream: app, auth: {{ methods: ["introspection:idp", "introspection:other"] }}, authz: {{ allow: any-authenticated }} }}
  - {{ name: j, match: {{ prefix: /j }}, upstream: app, auth: {{ methods: ["jwt:idp"] }}, authz: {{ allow: any-authenticated }} }}
  - {{ name: i, match: {{ prefix: /i }}, upstream: app, auth: {{ methods: ["introspection:idp"] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url(),
        a = a.addr,
        b = b.addr
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();

    // B's token: A (asked first) says inactive, B active — twice, the second from the cache.
    for round in 0..2 {
        let r = call(&gw, "/both/x", &[("authorization", &bearer("token-of-b"))]).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert_eq!(
            up.requests().pop().unwrap().header("x-user-id"),
            Some("svc-b")
        );
    }
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        1,
        "A asked once, then cached"
    );
    assert_eq!(
        b.calls.load(Ordering::SeqCst),
        1,
        "B asked once, then cached"
    );
    // A's token: A says active at once.
    let r = call(&gw, "/both/x", &[("authorization", &bearer("token-of-a"))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(b.calls.load(Ordering::SeqCst), 1);

    // A JWT verified by the issuer `idp`...
    let jwt = key.sign("at+jwt", &claims(json!({}))).unwrap();
    let r = call(&gw, "/j/x", &[("authorization", &bearer(&jwt))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let hits = up.hits();
    // ...is not thereby active for the introspection endpoint `idp`: its server is asked,
    // says inactive, and the request is refused.
    let calls = a.calls.load(Ordering::SeqCst);
    let r = call(&gw, "/i/x", &[("authorization", &bearer(&jwt))]).await;
    let id = assert_401(&r, true);
    assert_eq!(audit_of(&gw, &id)["auth_failure"], "token_inactive");
    assert_eq!(
        a.calls.load(Ordering::SeqCst),
        calls + 1,
        "the server was asked"
    );
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    // And the other way round: a token the endpoint `idp` found active is no verified JWT.
    let r = call(&gw, "/i/x", &[("authorization", &bearer("token-of-a"))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&gw, "/j/x", &[("authorization", &bearer("token-of-a"))]).await;
    assert_401(&r, true);
    assert_eq!(up.hits(), hits + 1);
}

/// RFC 7638 thumbprint of a public JWK, computed here independently of the gateway.
fn thumbprint(jwk: &Value) -> String {
    let m = |k: &str| jwk[k].as_str().unwrap().to_string();
    let canonical = match jwk["kty"].as_str().unwrap() {
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, m("crv"), m("x")),
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            m("crv"),
            m("x"),
            m("y")
        ),
        other => panic!("{other}"),
    };
    B64.encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
}

/// Two instances given the same `internal_token.key_file` (or one instance restarted) sign
/// with the same `kid` — the key's RFC 7638 thumbprint — and publish the same `/jwks`: a
/// token one minted verifies with the key set the other publishes. A reload that keeps the
/// key (the file rewritten) keeps it listed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_an_internal_token_key_share_its_kid() {
    let up = TestUpstream::start("svc").await;
    let keys = tempfile::tempdir().unwrap();
    let ed = Signer::generate(Alg::EdDSA, "ed-1".into()).unwrap();
    write(keys.path(), "ed.jwks.json", &jwks_of(&[&ed]));
    let internal = Signer::generate(Alg::ES256, "chosen-by-no-one".into()).unwrap();
    write(keys.path(), "internal.pem", &internal.to_pkcs8_pem());
    let want_kid = thumbprint(&internal.public_jwk());
    let yaml = format!(
        r#"upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt: {{ ed: {{ issuer: "{ISS}", jwks_file: "{dir}/ed.jwks.json", algorithms: [EdDSA], audiences: [orders-api] }} }}
  internal_token: {{ issuer: gw.test, algorithm: ES256, key_file: "{dir}/internal.pem" }}
routes:
  - {{ name: r, match: {{ prefix: / }}, upstream: app, auth: {{ methods: [jwt], internal_token: {{ audience: orders-svc }} }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url(),
        dir = keys.path().display()
    );
    let one = gateway(&yaml);
    let other = gateway(&yaml);
    let jwks = |gw: &Gateway| {
        let url = format!("{}/jwks", gw.admin_url());
        async move { get(&url).await.json() }
    };
    let (a, b) = (jwks(&one).await, jwks(&other).await);
    assert_eq!(a, b, "two instances, one key, one key set");
    assert_eq!(a["keys"].as_array().unwrap().len(), 1, "{a}");
    assert_eq!(a["keys"][0]["kid"], want_kid.as_str(), "{a}");

    // A token minted by one instance verifies against the other's published keys.
    let t = ed.sign("JWT", &claims(json!({}))).unwrap();
    let r = call(&one, "/x", &[("authorization", &bearer(&t))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let minted = up.requests().pop().unwrap();
    let minted = minted
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    let tok = portcullis_jose::decode(minted, 8192).unwrap();
    assert_eq!(tok.header.kid.as_deref(), Some(want_kid.as_str()));
    let (set, _) = portcullis_jose::JwkSet::from_json(b.to_string().as_bytes()).unwrap();
    let key = set
        .candidates(tok.header.kid.as_deref(), tok.header.alg)
        .next()
        .expect("the other instance publishes the signing key");
    tok.verify(&key.key).unwrap();

    // The key file rewritten with the same key, and reloaded: the kid is listed once.
    write(
        keys.path(),
        "internal.pem",
        &format!("# the same key\n{}", internal.to_pkcs8_pem()),
    );
    let r = send(req("POST", &format!("{}/reload", one.admin_url()), &[], "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(jwks(&one).await, a);
}

/// CGI, WSGI, Rack and PHP read `x_user_id` as `HTTP_X_USER_ID`, as they read `x-user-id`:
/// identity and strip-list headers spelled with underscores are removed too, on anonymous
/// and authenticated routes alike, while other names with underscores pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_spelled_with_underscores_are_removed_too() {
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ed = Signer::generate(Alg::EdDSA, "ed-1".into()).unwrap();
    write(dir.path(), "ed.jwks.json", &jwks_of(&[&ed]));
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt: {{ ed: {{ issuer: "{ISS}", jwks_file: ed.jwks.json, algorithms: [EdDSA], audiences: [orders-api] }} }}
  identity_headers: {{ strip: [x-debug-user, x_legacy_role] }}
  internal_token: {{ header: x-internal-token }}
routes:
  - {{ name: orders, match: {{ prefix: /orders }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ allow: any-authenticated }} }}
  - {{ name: open, match: {{ prefix: /open }}, upstream: app, auth: {{ anonymous: true }} }}
"#,
        up = up.url()
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let forged: &[(&str, &str)] = &[
        ("x_user_id", "admin"),
        ("x-user_id", "admin"),
        ("x_roles", "admin"),
        ("x_scopes", "admin:all"),
        ("x_client_id", "root"),
        ("x_tenant_id", "other"),
        ("x_authenticated", "jwt"),
        ("x_authenticated_by", "ed"),
        ("X_Authenticated-By", "ed"),
        ("x_internal_token", "Bearer forged"),
        ("x_debug_user", "admin"),
        ("x-legacy-role", "admin"),
        ("x_legacy_role", "admin"),
    ];
    let gone = |seen: &portcullis_test_support::Recorded| {
        for (name, _) in forged {
            assert_eq!(seen.header(name), None, "{name} reached the upstream");
        }
        assert_eq!(
            seen.header("x_trace_id"),
            Some("t-1"),
            "not an identity header"
        );
    };

    let mut headers = forged.to_vec();
    headers.push(("x_trace_id", "t-1"));
    let r = call(&gw, "/open", &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().unwrap();
    gone(&seen);
    assert_eq!(seen.header("x-user-id"), None);
    assert_eq!(seen.header("x-authenticated-by"), None);

    let t = ed.sign("JWT", &claims(json!({}))).unwrap();
    let auth = bearer(&t);
    headers.push(("authorization", &auth));
    let r = call(&gw, "/orders/1", &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().unwrap();
    gone(&seen);
    assert_eq!(seen.header("x-user-id"), Some("alice"));
    assert_eq!(seen.header("x-authenticated"), Some("jwt"));
    assert_eq!(seen.header("x-authenticated-by"), Some("ed"));
    assert_eq!(up.hits(), 2);
}

/// Keys configured without ids (`public_key_files`, `hmac_secret`) verify tokens whatever
/// `kid` they carry (most IdPs set one): the `kid` selects only among a key set's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_keys_verify_tokens_whatever_kid_they_name() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef-hs";
    let up = TestUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ed = Signer::generate(Alg::EdDSA, "idp-key-7".into()).unwrap();
    // SPKI of an Ed25519 key (RFC 8410): the fixed prefix, then the 32-byte public key.
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend(B64.decode(ed.public_jwk()["x"].as_str().unwrap()).unwrap());
    write(
        dir.path(),
        "ed.pub.pem",
        &portcullis_jose::pem_encode(&spki, "PUBLIC KEY"),
    );
    write(dir.path(), "ed.jwks.json", &jwks_of(&[&ed]));
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt:
    hs: {{ issuer: "https://hs.test", hmac_secret: {{ value: "{SECRET}" }}, algorithms: [HS256], any_audience: true }}
    pem: {{ issuer: "https://pem.test", public_key_files: [ed.pub.pem], algorithms: [EdDSA], audiences: [orders-api] }}
    set: {{ issuer: "https://set.test", jwks_file: ed.jwks.json, algorithms: [EdDSA], audiences: [orders-api] }}
routes:
  - {{ name: orders, match: {{ prefix: /orders }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url()
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let hs = |secret: &str, kid: Option<&str>| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mut header = json!({"alg": "HS256", "typ": "JWT"});
        if let Some(k) = kid {
            header["kid"] = k.into();
        }
        forge(header, &claims(json!({"iss": "https://hs.test"})), |m| {
            ring::hmac::sign(&key, m).as_ref().to_vec()
        })
    };

    for t in [
        hs(SECRET, Some("2024-09")),
        hs(SECRET, None),
        ed.sign("JWT", &claims(json!({"iss": "https://pem.test"})))
            .unwrap(),
    ] {
        let r = call(&gw, "/orders", &[("authorization", &bearer(&t))]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.hits(), 3);

    // The kid does not open the door: a wrong secret is still a bad signature.
    let r = call(
        &gw,
        "/orders",
        &[(
            "authorization",
            &bearer(&hs(&format!("{SECRET}!"), Some("x"))),
        )],
    )
    .await;
    let id = assert_401(&r, true);
    assert_eq!(audit_of(&gw, &id)["auth_failure"], "bad_signature");
    // A key set keeps selecting by kid: the same key under a kid the set lacks is refused.
    let other = portcullis_jose::Signer::from_pkcs8_pem(&ed.to_pkcs8_pem(), "unknown".into())
        .unwrap()
        .sign("JWT", &claims(json!({"iss": "https://set.test"})))
        .unwrap();
    let r = call(&gw, "/orders", &[("authorization", &bearer(&other))]).await;
    let id = assert_401(&r, true);
    assert_eq!(audit_of(&gw, &id)["auth_failure"], "unknown_kid");
    assert_eq!(up.hits(), 3, "nothing refused reached the upstream");

    // `any_audience: true` (hs) takes a token minted for another API, or for none; an issuer
    // that lists its audiences (pem) refuses it.
    let elsewhere = |aud: Value| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        forge(
            json!({"alg": "HS256", "typ": "JWT"}),
            &claims(json!({"iss": "https://hs.test", "aud": aud})),
            |m| ring::hmac::sign(&key, m).as_ref().to_vec(),
        )
    };
    for t in [elsewhere(json!("billing-api")), elsewhere(Value::Null)] {
        let r = call(&gw, "/orders", &[("authorization", &bearer(&t))]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.hits(), 5);
    let t = ed
        .sign(
            "JWT",
            &claims(json!({"iss": "https://pem.test", "aud": "billing-api"})),
        )
        .unwrap();
    let r = call(&gw, "/orders", &[("authorization", &bearer(&t))]).await;
    let id = assert_401(&r, true);
    assert_eq!(audit_of(&gw, &id)["auth_failure"], "wrong_audience");
    assert_eq!(
        up.hits(),
        5,
        "the token for another API did not reach the upstream"
    );
}

/// A key source that accepts connections and never answers: each connection counted, held
/// open, and marked closed when the gateway gives up on it.
struct SilentKeySource {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<Mutex<Vec<bool>>>,
}

impl SilentKeySource {
    async fn start() -> SilentKeySource {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let i = {
                    let mut c = c.lock().unwrap();
                    c.push(false);
                    c.len() - 1
                };
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                    c.lock().unwrap()[i] = true;
                });
            }
        });
        SilentKeySource {
            addr,
            accepted,
            closed,
        }
    }
}

/// Keys never loaded, from a source that hangs: requests get 503 `auth_unavailable` at once,
/// none waiting on the fetch under way (up to `fetch_timeout`) nor starting one of its own.
/// Shown by the source's connections — the first is still open when every request has been
/// answered, and it is the only one — not by timing; timeouts only bound the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_source_that_never_answers_keeps_no_request_waiting() {
    let up = TestUpstream::start("app").await;
    let idp = SilentKeySource::start().await;
    let gw = gateway(&format!(
        r#"upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt:
    remote: {{ issuer: "{ISS}", jwks_url: "http://{addr}/jwks", algorithms: [EdDSA], audiences: [orders-api], jwks_cache: {{ unknown_kid_cooldown: 1s, fetch_timeout: 20s }} }}
routes:
  - {{ name: orders, match: {{ prefix: /orders }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url(),
        addr = idp.addr
    ));
    // The background fetch is under way, and hangs.
    let deadline = Instant::now() + Duration::from_secs(15);
    while idp.accepted.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the gateway never fetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let k = Signer::generate(Alg::EdDSA, "k1".into()).unwrap();
    let t = k.sign("JWT", &claims(json!({}))).unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            call(&gw, "/orders", &[("authorization", &bearer(&t))]),
        )
        .await
        .expect("the request was never answered");
        let v = assert_problem(&r, 503, "auth_unavailable");
        assert_eq!(r.header("retry-after"), Some("5"));
        ids.push(v["request_id"].as_str().unwrap().to_string());
    }
    assert!(
        !idp.closed.lock().unwrap()[0],
        "a request waited for the fetch under way"
    );
    assert_eq!(
        idp.accepted.load(Ordering::SeqCst),
        1,
        "a request started a fetch while one was under way"
    );
    for id in ids {
        assert_eq!(audit_of(&gw, &id)["auth_failure"], "no_keys");
    }
    assert_eq!(up.hits(), 0);
}

/// A key the IdP withdraws from its key set takes the verdicts it vouched for with it: a
/// token verified (and cached) with the key is verified anew once a fetched set lacks it, and
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_withdrawn_from_the_key_set_voids_the_verdicts_cached_with_it() {
    let up = TestUpstream::start("app").await;
    let k1 = Signer::generate(Alg::EdDSA, "k1".into()).unwrap();
    let ks = KeyServer::start(jwks_of(&[&k1])).await;
    // A long cooldown: the one unknown-`kid` refetch below is the only one.
    let gw = remote_gateway(&up, &ks.url(), "60s");
    let t1 = k1.sign("JWT", &claims(json!({}))).unwrap();
    for _ in 0..2 {
        let r = call(&gw, "/orders", &[("authorization", &bearer(&t1))]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // The IdP rotates k1 out: its set holds k2 alone. The first k2 token has the gateway
    // fetch it (unknown kid).
    let k2 = Signer::generate(Alg::ES256, "k2".into()).unwrap();
    *ks.jwks.lock().unwrap() = jwks_of(&[&k2]);
    let t2 = k2.sign("JWT", &claims(json!({}))).unwrap();
    let r = call(&gw, "/orders", &[("authorization", &bearer(&t2))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let status = get(&format!("{}/auth", gw.admin_url())).await.json();
    assert_eq!(
        status["issuers"][0]["status"]["kids"],
        json!(["k2"]),
        "{status}"
    );

    // The k1 token's cached verdict went with k1: verified anew, its key is unknown now.
    let hits = up.hits();
    let r = call(&gw, "/orders", &[("authorization", &bearer(&t1))]).await;
    let id = assert_401(&r, true);
    assert_eq!(audit_of(&gw, &id)["auth_failure"], "unknown_kid");
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    // The k2 token, verified after the withdrawal, is still served.
    let r = call(&gw, "/orders", &[("authorization", &bearer(&t2))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// An RFC 7662 endpoint on loopback that holds every answer until the test releases them
/// (then: inactive), counting calls.
struct HeldIntrospection {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl HeldIntrospection {
    async fn start() -> HeldIntrospection {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let c = calls.clone();
        serve_http1(
            listener,
            move |req: http::Request<hyper::body::Incoming>| {
                let (c, mut released) = (c.clone(), released.clone());
                async move {
                    use http_body_util::BodyExt;
                    let _ = req.into_body().collect().await;
                    c.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    http::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(json!({"active": false}).to_string())))
                        .unwrap()
                }
            },
        );
        HeldIntrospection {
            addr,
            calls,
            release,
        }
    }

    /// Waits until the endpoint has been called `n` times (bounded: the test fails past it).
    async fn wait_calls(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.calls.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the endpoint was never called {n} times"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Introspection calls in flight are bounded per endpoint (`max_in_flight`): made-up opaque
/// tokens, each a call of its own, cannot pile up on a slow endpoint. Past the bound a token is
/// not sent — 503 at once, like an endpoint that cannot answer — and yet counted against the
/// client, so a flood from one address goes on feeding its failure count while the endpoint is
/// slow. Deterministic: the endpoint holds its answers until the test releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_calls_in_flight_are_bounded_and_a_flood_past_the_bound_is_counted() {
    let up = TestUpstream::start("app").await;
    let is = HeldIntrospection::start().await;
    let gw = gateway(&format!(
        r#"upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  introspection:
    as: {{ endpoint: "http://{addr}/introspect", client_id: gw, client_secret: {{ value: s3cret }}, timeout: 60s, max_in_flight: 2 }}
routes:
  - {{ name: r, match: {{ prefix: / }}, upstream: app, auth: {{ methods: [introspection] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url(),
        addr = is.addr
    ));
    let url = format!("{}/x", gw.url("public"));
    let ask = |token: String| {
        let url = url.clone();
        async move {
            send(req(
                "GET",
                &url,
                &[("authorization", &format!("Bearer {token}"))],
                "",
            ))
            .await
        }
    };
    // Two made-up tokens take the two slots; the endpoint holds both calls.
    let held: Vec<_> = (1..=2)
        .map(|i| tokio::spawn(ask(format!("made-up-{i}"))))
        .collect();
    is.wait_calls(2).await;

    // Every further token is answered at once, without a call.
    let mut ids = Vec::new();
    for i in 3..=7 {
        let r = tokio::select! {
            r = ask(format!("made-up-{i}")) => r,
            () = is.wait_calls(3) => panic!("token {i} reached the endpoint past max_in_flight"),
        };
        let v = assert_problem(&r, 503, "auth_unavailable");
        assert_eq!(r.header("retry-after"), Some("5"));
        ids.push(v["request_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        assert_eq!(audit_of(&gw, id)["auth_failure"], "introspection_saturated");
    }
    assert_eq!(is.calls.load(Ordering::SeqCst), 2);
    assert_eq!(up.hits(), 0, "nothing reached the upstream");
    // Each counted against the client, though the endpoint never said a word.
    let auth = get(&format!("{}/auth", gw.admin_url())).await.json();
    let by_ip = &auth["failures"]["by_client_ip"];
    assert_eq!(by_ip.as_array().unwrap().len(), 1, "{auth}");
    assert_eq!(by_ip[0]["key"], "127.0.0.1", "{auth}");
    assert_eq!(by_ip[0]["failures"], 5, "{auth}");

    // The endpoint answers (inactive): both held requests are refused, and the slots are free.
    is.release.send(true).unwrap();
    for h in held {
        let r = h.await.unwrap();
        let id = assert_401(&r, true);
        assert_eq!(audit_of(&gw, &id)["auth_failure"], "token_inactive");
    }
    let r = ask("made-up-8".into()).await;
    let id = assert_401(&r, true);
    assert_eq!(audit_of(&gw, &id)["auth_failure"], "token_inactive");
    assert_eq!(is.calls.load(Ordering::SeqCst), 3);
    assert_eq!(up.hits(), 0);
}

/// A client certificate is revoked by the SHA-256 of its DER (its `credential_id`), written
/// as OpenSSL prints it or as `sha256:<hex>`: refused from then on, on any route, while other
/// certificates pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_can_be_revoked_by_its_fingerprint() {
    let up = TestUpstream::start("app").await;
    let pki = TestPki::new();
    let revoked = pki.issue_client("lost-laptop", None);
    let kept = pki.issue_client("desk", None);
    let stolen = pki.issue_client("tablet", None);
    let stolen_again = pki.issue_client("tablet", None);
    let fp = sha256_bytes_hex(&revoked.cert_der);
    let stolen_fp = sha256_bytes_hex(&stolen.cert_der);
    // `AB:CD:…`, as `openssl x509 -fingerprint -sha256` prints it.
    let openssl_style = fp
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let gw = mtls_gateway(
        &pki,
        &up,
        &format!("auth:\n  revocation: {{ certificates: [\"{openssl_style}\"] }}"),
        "  - { name: any, match: { prefix: /any }, upstream: app, auth: { methods: [mtls] }, authz: { allow: any-authenticated } }\n",
    );
    let addr = gw.listener("public");
    let go = |cert: CertFiles| {
        let cfg = client::client_config_with_cert(&pki.ca_pem(), &cert);
        async move {
            let rq = req("GET", "/any", &[("host", "localhost")], "");
            tls_request(addr, "localhost", cfg, rq)
                .await
                .map(|(r, _)| r)
                .unwrap()
        }
    };
    let r = go(kept).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let hits = up.hits();
    let r = go(revoked).await;
    let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let audit = audit_of(&gw, &id);
    assert_eq!(audit["auth_failure"], "revoked");
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    let list = get(&format!("{}/auth/revocations", gw.admin_url()))
        .await
        .json();
    assert_eq!(
        list["certificates"],
        json!([format!("sha256:{fp}")]),
        "{list}"
    );
    // Revoked through the admin API: refused from then on (a new certificate for the same
    // name is another credential and passes).
    let r = go(stolen.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(req(
        "POST",
        &format!("{}/auth/revocations", gw.admin_url()),
        &[("content-type", "application/json")],
        &json!({"certificate_sha256": format!("sha256:{stolen_fp}")}).to_string(),
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["revoked"],
        format!("certificate sha256:{stolen_fp}")
    );
    let hits = up.hits();
    let r = go(stolen).await;
    let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(audit_of(&gw, &id)["auth_failure"], "revoked");
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    assert_eq!(go(stolen_again).await.status, 200);
    // A fingerprint that is none is refused, saying what to write.
    let r = send(req(
        "POST",
        &format!("{}/auth/revocations", gw.admin_url()),
        &[("content-type", "application/json")],
        &json!({"certificate_sha256": "sha256:xyz"}).to_string(),
    ))
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
}
