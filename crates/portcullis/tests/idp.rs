//! Authentication against real parts: a certified OpenID provider (`oidc-provider`) for
//! discovery, JWKS, client-credentials JWTs, introspection of opaque tokens, key rotation and
//! outages; and a real Redis server for shared API keys and revocations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use portcullis_test_support::idp::JWT_AUDIENCE;

fn idp_gateway(up: &TestUpstream, idp: &OidcProvider, extra_routes: &str) -> Gateway {
    gateway(&format!(
        r#"upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  jwt:
    idp:
      issuer: "{iss}"
      discovery: true
      algorithms: [RS256, ES256]
      audiences: ["{aud}"]
      typ: at+jwt
      jwks_cache: {{ fetch_timeout: 2s }}
  introspection:
    idp:
      endpoint: "{iss}/token/introspection"
      client_id: gateway
      client_secret: {{ value: gateway-secret }}
      issuer: "{iss}"
      cache_inactive: 1s
routes:
  - {{ name: orders, match: {{ prefix: /orders }}, upstream: app, auth: {{ methods: [jwt, introspection] }}, authz: {{ allow: any-authenticated }} }}
{extra_routes}"#,
        up = up.url(),
        iss = idp.issuer(),
        aud = JWT_AUDIENCE,
    ))
}

async fn call(gw: &Gateway, token: &str) -> Resp {
    send(req(
        "GET",
        &format!("{}/orders", gw.url("public")),
        &[("authorization", &format!("Bearer {token}"))],
        "",
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_jwt_and_introspection_with_a_real_provider() {
    let idp = OidcProvider::start("RS256");
    let up = TestUpstream::start("app").await;
    let gw = idp_gateway(&up, &idp, "");

    let jwt = idp.jwt_token("read:orders write:orders").await;
    let r = call(&gw, &jwt).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-client-id"), Some("gw-client"));
    assert_eq!(seen.header("x-user-id"), Some("gw-client"));
    assert_eq!(seen.header("x-scopes"), Some("read:orders write:orders"));
    assert_eq!(seen.header("x-authenticated"), Some("jwt"));
    assert_eq!(seen.header("authorization"), None);
    let status = get(&format!("{}/auth", gw.admin_url())).await.json();
    assert_eq!(
        status["issuers"][0]["status"]["jwks_uri"],
        idp.jwks_uri(),
        "{status}"
    );

    // An opaque token is introspected; the answer is cached.
    let opaque = idp.opaque_token("read:orders").await;
    let r = call(&gw, &opaque).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-authenticated"), Some("introspection"));
    assert_eq!(seen.header("x-client-id"), Some("gw-client"));
    assert_eq!(seen.header("x-scopes"), Some("read:orders"));
    let audit = audit_of(&gw, r.header("x-request-id").unwrap());
    assert_eq!(audit["auth"]["method"], "introspection");

    // An opaque token the provider never issued: inactive, 401.
    let hits = up.hits();
    let r = call(&gw, "Zm9yZ2VkLW9wYXF1ZS10b2tlbi0xMjM0NTY3ODkw").await;
    let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(audit_of(&gw, &id)["auth_failure"], "token_inactive");
    assert_eq!(up.hits(), hits);

    // The provider goes down: the verified opaque token is served from the cache, JWTs with
    // the loaded keys still verify, a new opaque token cannot be checked: 503, fail closed.
    let unseen_opaque = idp.opaque_token("read:orders").await;
    let fresh_jwt = idp.jwt_token("read:orders").await;
    let mut idp = idp;
    idp.stop();
    assert_eq!(call(&gw, &opaque).await.status, 200);
    assert_eq!(call(&gw, &fresh_jwt).await.status, 200);
    let r = call(&gw, &unseen_opaque).await;
    let id = assert_problem(&r, 503, "auth_unavailable")["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        audit_of(&gw, &id)["auth_failure"],
        "introspection_unavailable"
    );

    // A gateway started while the provider is down has no keys at all: 503, not 401.
    let gw2 = idp_gateway(&up, &idp, "");
    let hits = up.hits();
    let r = call(&gw2, &fresh_jwt).await;
    let id = assert_problem(&r, 503, "auth_unavailable")["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(audit_of(&gw2, &id)["auth_failure"], "no_keys");
    assert_eq!(up.hits(), hits);
    // Back up: the same gateway fetches and serves.
    idp.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(&gw2, &fresh_jwt).await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_at_the_provider_while_traffic_flows_fails_no_request() {
    // ES256 here, RS256 in the other tests: both key types against the real provider.
    let mut idp = OidcProvider::start("ES256");
    let up = TestUpstream::start("app").await;
    let gw = idp_gateway(&up, &idp, "");
    let old_token = idp.jwt_token("read:orders").await;
    assert_eq!(call(&gw, &old_token).await.status, 200);

    // Traffic with the current token, continuously, through the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let url = format!("{}/orders", gw.url("public"));
    let token = Arc::new(Mutex::new(old_token.clone()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed, url, token) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            url.clone(),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let t = token.lock().unwrap().clone();
                let r = send(req(
                    "GET",
                    &url,
                    &[("authorization", &format!("Bearer {t}"))],
                    "",
                ))
                .await;
                sent.fetch_add(1, Ordering::SeqCst);
                if r.status != 200 {
                    failed.lock().unwrap().push(r.text());
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old_kid = idp.kids()[0].clone();
    let new_kid = tokio::task::block_in_place(|| idp.rotate_key());
    assert_ne!(old_kid, new_kid);
    let new_token = idp.jwt_token("read:orders").await;
    assert!(
        header_kid(&new_token) == new_kid,
        "the provider signs with the new key"
    );
    *token.lock().unwrap() = new_token.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The old token is still valid: its key is still published.
    *token.lock().unwrap() = old_token.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        sent.load(Ordering::SeqCst),
        &failed[..failed.len().min(3)]
    );
    assert!(sent.load(Ordering::SeqCst) > 20);
    let status = get(&format!("{}/auth", gw.admin_url())).await.json();
    let kids = &status["issuers"][0]["status"]["kids"];
    assert!(
        kids.as_array().unwrap().len() == 2,
        "both keys loaded: {status}"
    );
    assert_eq!(
        status["issuers"][0]["status"]["unknown_kid_refetches"], 1,
        "{status}"
    );
}

fn header_kid(token: &str) -> String {
    use base64::Engine;
    let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&h).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string()
}

fn redis_gateway(up: &TestUpstream, redis: &RedisServer) -> Gateway {
    gateway(&format!(
        r#"upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  redis: {{ url: "{url}", timeout: 300ms, key_prefix: "pc:" }}
  api_keys: {{ redis: true, cache_ttl: 30s }}
  revocation: {{ sync_interval: 200ms }}
routes:
  - {{ name: r, match: {{ prefix: / }}, upstream: app, auth: {{ methods: [api_key] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url(),
        url = redis.url()
    ))
}

/// Waits until the gateway is ready (its shared revocation list read once, among others).
async fn wait_ready(gw: &Gateway) {
    let readyz = format!("{}/readyz", gw.admin_url());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(&readyz).await;
        if r.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn with_key(gw: &Gateway, key: &str) -> Resp {
    send(req(
        "GET",
        &format!("{}/x", gw.url("public")),
        &[("x-api-key", key)],
        "",
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_revocations_are_shared_through_redis_and_fail_closed() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    for (key, fields) in [
        (
            "pk_alpha",
            vec![
                "client_id",
                "alpha",
                "owner",
                "ann",
                "scopes",
                "read:a write:a",
                "tier",
                "pro",
            ],
        ),
        ("pk_beta", vec!["client_id", "beta"]),
        ("pk_off", vec!["client_id", "off", "active", "false"]),
        ("pk_old", vec!["client_id", "old", "expires", "1600000000"]),
    ] {
        let k = format!("pc:apikey:{}", sha256_hex(key));
        let mut args = vec!["HSET", k.as_str()];
        args.extend(fields);
        redis.cmd(&args);
    }
    let a = redis_gateway(&up, &redis);
    let b = redis_gateway(&up, &redis);
    wait_ready(&a).await;
    wait_ready(&b).await;

    let r = with_key(&a, "pk_alpha").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-client-id"), Some("alpha"));
    assert_eq!(seen.header("x-user-id"), Some("ann"));
    assert_eq!(seen.header("x-scopes"), Some("read:a write:a"));
    assert_eq!(with_key(&b, "pk_alpha").await.status, 200);
    assert_eq!(with_key(&b, "pk_beta").await.status, 200);
    let hits = up.hits();
    for (key, code) in [
        ("pk_unknown", "api_key_unknown"),
        ("pk_off", "api_key_inactive"),
        ("pk_old", "api_key_expired"),
    ] {
        let r = with_key(&a, key).await;
        let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(audit_of(&a, &id)["auth_failure"], code);
    }
    assert_eq!(up.hits(), hits);

    // Revoked on instance a: instance b refuses it within the sync interval.
    let r = send(req(
        "POST",
        &format!("{}/auth/revocations", a.admin_url()),
        &[],
        r#"{"api_key": "pk_beta"}"#,
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["shared"], true, "{}", r.text());
    assert_eq!(
        redis.cmd(&[
            "SISMEMBER",
            "pc:revoked:apikey",
            &format!("sha256:{}", sha256_hex("pk_beta"))
        ]),
        "1"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = with_key(&b, "pk_beta").await;
        if r.status == 401 {
            let id = r.json()["request_id"].as_str().unwrap().to_string();
            assert_eq!(audit_of(&b, &id)["auth_failure"], "revoked");
            break;
        }
        assert!(Instant::now() < deadline, "b never saw the revocation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A token id revoked until a time goes to a sorted set scored by it; b takes it (and
    // forgets, here and in Redis, those whose time has passed).
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    redis.cmd(&["ZADD", "pc:revoked:jti:until", "1000", "long-gone"]);
    let r = send(req(
        "POST",
        &format!("{}/auth/revocations", a.admin_url()),
        &[],
        &format!(r#"{{"token_id": "t-until", "until": {until}}}"#),
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["shared"], true, "{}", r.text());
    assert_eq!(
        redis.cmd(&["ZSCORE", "pc:revoked:jti:until", "t-until"]),
        until.to_string()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = get(&format!("{}/auth/revocations", b.admin_url()))
            .await
            .json();
        if list["token_ids_until"]["t-until"] == until {
            assert!(
                list["token_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|t| t != "long-gone"),
                "{list}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "b never saw it: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        redis.cmd(&["ZRANGE", "pc:revoked:jti:until", "0", "-1"]),
        "t-until",
        "the ended entry is gone from Redis too"
    );

    // Redis goes away: a key read before is still trusted for its cache time; a key never
    // seen cannot be checked — 503, fail closed, within the configured timeout.
    let fresh_key = "pk_gamma";
    redis.cmd(&[
        "HSET",
        &format!("pc:apikey:{}", sha256_hex(fresh_key)),
        "client_id",
        "gamma",
    ]);
    redis.stop();
    assert_eq!(with_key(&a, "pk_alpha").await.status, 200);
    let started = Instant::now();
    let r = with_key(&a, fresh_key).await;
    let id = assert_problem(&r, 503, "auth_unavailable")["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        audit_of(&a, &id)["auth_failure"],
        "api_key_store_unavailable"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a request waited {:?} for a dead Redis",
        started.elapsed()
    );
    let status = get(&format!("{}/auth", b.admin_url())).await.json();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = status;
    while status["revocations"]["last_sync_error"].is_null() {
        assert!(
            Instant::now() < deadline,
            "sync errors not reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = get(&format!("{}/auth", b.admin_url())).await.json();
    }
    // The revocation stays in force on b while Redis is down.
    assert_eq!(with_key(&b, "pk_beta").await.status, 401);

    // Redis back (empty, persistence is off): the gateway reconnects by itself.
    redis.restart();
    redis.cmd(&[
        "HSET",
        &format!("pc:apikey:{}", sha256_hex("pk_delta")),
        "client_id",
        "delta",
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = with_key(&a, "pk_delta").await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never reconnected: {}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `active` in a Redis API key record fails closed: `false`, `0`, `no` and `off` disable the
/// key in any case; `true`, `1`, `yes` (any case) or no field leave it active; any other value
/// makes the record unreadable and the key is refused — never taken as active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_key_record_s_active_field_fails_closed() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let cases: Vec<(&str, Option<&str>)> = vec![
        ("pk_none", None),
        ("pk_true", Some("true")),
        ("pk_TRUE", Some("TRUE")),
        ("pk_1", Some("1")),
        ("pk_Yes", Some("Yes")),
        ("pk_false", Some("false")),
        ("pk_False", Some("False")),
        ("pk_FALSE", Some("FALSE")),
        ("pk_0", Some("0")),
        ("pk_No", Some("No")),
        ("pk_off", Some("off")),
        ("pk_OFF", Some("OFF")),
        ("pk_disabled", Some("disabled")),
        ("pk_empty", Some("")),
        ("pk_on", Some("on")),
        ("pk_2", Some("2")),
    ];
    for (key, active) in &cases {
        let k = format!("pc:apikey:{}", sha256_hex(key));
        let mut args = vec!["HSET", k.as_str(), "client_id", key];
        if let Some(a) = active {
            args.extend(["active", a]);
        }
        redis.cmd(&args);
    }
    let gw = redis_gateway(&up, &redis);
    wait_ready(&gw).await;
    for (key, active) in &cases {
        let want = match active.map(|a| a.to_ascii_lowercase()).as_deref() {
            None | Some("true" | "1" | "yes") => None,
            Some("false" | "0" | "no" | "off") => Some("api_key_inactive"),
            Some(_) => Some("api_key_record_invalid"),
        };
        let hits = up.hits();
        // Twice: the second answer comes from the cache.
        for round in 0..2 {
            let r = with_key(&gw, key).await;
            match want {
                None => {
                    assert_eq!(r.status, 200, "{key} round {round}: {}", r.text());
                    assert_eq!(
                        up.requests().pop().unwrap().header("x-client-id"),
                        Some(*key)
                    );
                }
                Some(code) => {
                    let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    assert_eq!(
                        audit_of(&gw, &id)["auth_failure"],
                        code,
                        "{key} round {round}"
                    );
                    assert_eq!(up.hits(), hits, "{key} reached the upstream");
                }
            }
        }
    }
    // The refused record is logged by the key's public id, never with the key.
    let log = gw.stderr_text();
    assert!(log.contains("active is neither"), "{log}");
    assert!(!log.contains("pk_disabled"), "{log}");
}

/// A TCP relay to a Redis server that refuses every connection while `down` (closing it at
/// once) and relays it otherwise: Redis unreachable for the gateway, with its data in place.
struct Relay {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(true));
        let d = down.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Relay { addr, down }
    }
}

/// A freshly started instance has not read the shared revocation list while Redis cannot be
/// reached: it is not ready (`revocations_not_loaded`), and a credential that could be revoked
/// (an API key, a token with a `jti`) gets 503 — as the other Redis-backed checks fail — rather
/// than pass while it may be revoked in Redis alone. Credentials invalid anyway are still 401,
/// a token without a `jti` (which nothing can revoke) still passes. Once Redis answers, the
/// instance is ready and refuses what was revoked there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_not_yet_read_from_redis_keep_the_instance_unready_and_fail_closed() {
    use portcullis_jose::{Alg, Signer};
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    // Revoked through another instance: in Redis only.
    redis.cmd(&[
        "SADD",
        "pc:revoked:apikey",
        &format!("sha256:{}", sha256_hex("pk_gone")),
    ]);
    redis.cmd(&["SADD", "pc:revoked:jti", "j-gone"]);
    let relay = Relay::start(redis.port()).await;

    let dir = tempfile::tempdir().unwrap();
    let ed = Signer::generate(Alg::EdDSA, "ed-1".into()).unwrap();
    std::fs::write(
        dir.path().join("ed.jwks.json"),
        serde_json::json!({ "keys": [ed.public_jwk()] }).to_string(),
    )
    .unwrap();
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  redis: {{ url: "redis://{relay}/", timeout: 300ms, key_prefix: "pc:" }}
  jwt: {{ ed: {{ issuer: "https://issuer.test", jwks_file: ed.jwks.json, algorithms: [EdDSA], any_audience: true }} }}
  api_keys:
    keys:
      - {{ hash: "sha256:{live}", client_id: live }}
      - {{ hash: "sha256:{gone}", client_id: gone }}
  revocation: {{ sync_interval: 200ms }}
routes:
  - {{ name: k, match: {{ prefix: /k }}, upstream: app, auth: {{ methods: [api_key] }}, authz: {{ allow: any-authenticated }} }}
  - {{ name: t, match: {{ prefix: /t }}, upstream: app, auth: {{ methods: [jwt] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url(),
        relay = relay.addr,
        live = sha256_hex("pk_live"),
        gone = sha256_hex("pk_gone"),
    );
    let gw = Gateway::start_in(common::bin(), dir.path(), &yaml).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |jti: Option<&str>| {
        let mut c =
            serde_json::json!({"iss": "https://issuer.test", "sub": "alice", "exp": now + 600});
        if let Some(j) = jti {
            c["jti"] = j.into();
        }
        ed.sign("JWT", c.as_object().unwrap()).unwrap()
    };
    let with_token = |t: String| {
        let url = format!("{}/t", gw.url("public"));
        async move {
            send(req(
                "GET",
                &url,
                &[("authorization", &format!("Bearer {t}"))],
                "",
            ))
            .await
        }
    };
    let with_key = |k: &'static str| {
        let url = format!("{}/k", gw.url("public"));
        async move { send(req("GET", &url, &[("x-api-key", k)], "")).await }
    };

    let r = get(&format!("{}/readyz", gw.admin_url())).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let reason = r.json()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("revocations_not_loaded"), "{reason}");

    let hits = up.hits();
    for r in [
        with_key("pk_gone").await,
        with_key("pk_live").await,
        with_token(token(Some("j-gone"))).await,
        with_token(token(Some("j-live"))).await,
    ] {
        let v = assert_problem(&r, 503, "auth_unavailable");
        assert_eq!(r.header("retry-after"), Some("5"));
        assert_eq!(
            audit_of(&gw, v["request_id"].as_str().unwrap())["auth_failure"],
            "revocations_not_loaded"
        );
    }
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    // Invalid whatever the list says: 401 as ever.
    let r = with_key("pk_wrong").await;
    let v = assert_problem(&r, 401, "unauthenticated");
    assert_eq!(
        audit_of(&gw, v["request_id"].as_str().unwrap())["auth_failure"],
        "api_key_unknown"
    );
    assert_eq!(up.hits(), hits);
    // Nothing can revoke a token without a jti.
    let r = with_token(token(None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The 503s are not counted against the client; the unknown key is.
    let auth = get(&format!("{}/auth", gw.admin_url())).await.json();
    assert_eq!(auth["revocations"]["loaded"], false, "{auth}");
    assert_eq!(auth["failures"]["by_client_ip"][0]["failures"], 1, "{auth}");

    // Redis reachable: the list is read, the instance ready, the revoked credentials refused.
    relay.down.store(false, Ordering::SeqCst);
    wait_ready(&gw).await;
    let hits = up.hits();
    for r in [
        with_key("pk_gone").await,
        with_token(token(Some("j-gone"))).await,
    ] {
        let v = assert_problem(&r, 401, "unauthenticated");
        assert_eq!(
            audit_of(&gw, v["request_id"].as_str().unwrap())["auth_failure"],
            "revoked"
        );
    }
    assert_eq!(up.hits(), hits);
    assert_eq!(with_key("pk_live").await.status, 200);
    assert_eq!(with_token(token(Some("j-live"))).await.status, 200);
}
