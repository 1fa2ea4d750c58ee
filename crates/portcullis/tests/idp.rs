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
