//! Limits shared through a real Redis (and a real three-node Redis Cluster) by several real
//! gateway instances: accuracy under concurrency, and Redis failing mid-load in both
//! configured directions, with automatic recovery. Bans shared the same way (`bans.redis`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// `timeout`: how long a Redis check may take before the gateway decides without it (fails
/// closed, or counts locally at its share). Short where Redis going away is the point; long
/// where the counts must be exact, since a check slower than it (a storm of requests on three
/// debug builds and Redis sharing two cores) is counted locally, at a third of the limit.
fn config(up: &str, redis: &[String], cluster: bool, timeout: &str) -> String {
    let (first, rest) = (&redis[0], &redis[1..]);
    let nodes = rest
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
rate_limits:
  store: redis
  redis: {{ url: "{first}", cluster: {cluster}, cluster_nodes: [{nodes}], timeout: {timeout}, instances: 3 }}
  limits:
    exact-gcra: {{ key: [global], rate: 60/hour, burst: 60 }}
    exact-fixed: {{ key: [header:x-tenant], algorithm: fixed_window, rate: 40/hour }}
    smooth: {{ key: [global], algorithm: sliding_window, rate: 100/hour }}
    open: {{ key: [client_ip], rate: 6/minute, burst: 6 }}
    closed: {{ key: [client_ip], rate: 1000/minute, on_store_error: fail_closed }}
routes:
  - {{ name: g, match: {{ prefix: /g }}, upstream: app, rate_limits: [exact-gcra] }}
  - {{ name: f, match: {{ prefix: /f }}, upstream: app, rate_limits: [exact-fixed] }}
  - {{ name: s, match: {{ prefix: /s }}, upstream: app, rate_limits: [smooth] }}
  - {{ name: o, match: {{ prefix: /o }}, upstream: app, rate_limits: [open] }}
  - {{ name: c, match: {{ prefix: /c }}, upstream: app, rate_limits: [closed] }}
"#
    )
}

/// What a gateway logs (once in a while) when it counts locally because Redis did not answer.
const COUNTED_LOCALLY: &str = "rate-limit store unavailable: counting locally";

/// Every decision of `gws` came from Redis: none logged that it counted locally.
fn assert_all_counted_in_redis(gws: &[Gateway], what: &str) {
    for (i, gw) in gws.iter().enumerate() {
        let log = gw.stderr_text();
        assert!(
            !log.contains(COUNTED_LOCALLY),
            "{what}: gateway {i} counted locally, Redis was too slow for its timeout:\n{log}"
        );
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Fires `n` requests at `path`, spread over the gateways, `n` at once; returns the admitted
/// responses' window end (now + X-RateLimit-Reset) and the count of 429s.
async fn storm(
    gws: &[Gateway],
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> (Vec<u64>, usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = format!("{}{path}", gws[i % gws.len()].url("public"));
        let h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tasks.push(tokio::spawn(async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            send(req("GET", &url, &h, "")).await
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => {
                let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
                admitted.push(now_secs() + reset);
            }
            429 => refused += 1,
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    (admitted, refused)
}

async fn accuracy(redis_urls: &[String], cluster: bool) {
    let up = TestUpstream::start("app").await;
    let gws: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(bin(), &config(&up.url(), redis_urls, cluster, "5s")).unwrap())
        .collect();

    // GCRA, 60/hour with a burst of 60: in the few seconds of the storm at most 60 (+1 for
    // the refill of one emission interval, a minute) get through, across three instances.
    let started = Instant::now();
    let (admitted, refused) = storm(&gws, "/g", &[], 300).await;
    let refill = started.elapsed().as_secs() / 60 + 1;
    assert_all_counted_in_redis(&gws, "gcra");
    assert!(
        admitted.len() as u64 <= 60 + refill,
        "gcra admitted {} > 60",
        admitted.len()
    );
    assert!(
        admitted.len() >= 55,
        "gcra admitted only {}",
        admitted.len()
    );
    assert_eq!(admitted.len() + refused, 300);

    // Fixed window, 40/hour: per window (identified by its end), never more than 40.
    let (admitted, _) = storm(&gws, "/f", &[("x-tenant", "acme")], 200).await;
    assert_all_counted_in_redis(&gws, "fixed window");
    let mut per_window: HashMap<u64, usize> = HashMap::new();
    for end in admitted {
        // Round to the hour the window ends at (the reset is in whole seconds).
        *per_window.entry((end + 1800) / 3600).or_default() += 1;
    }
    for (w, n) in &per_window {
        assert!(*n <= 40, "fixed window {w}: {n} > 40");
    }
    assert!(per_window.values().sum::<usize>() >= 40);
    // Another tenant: another budget.
    let (admitted, _) = storm(&gws, "/f", &[("x-tenant", "other")], 50).await;
    assert_all_counted_in_redis(&gws, "fixed window, another tenant");
    assert_eq!(admitted.len(), 40);

    // Sliding window, 100/hour: within 1%.
    let (admitted, _) = storm(&gws, "/s", &[], 300).await;
    assert_all_counted_in_redis(&gws, "sliding window");
    assert!(
        (99..=101).contains(&admitted.len()),
        "sliding window admitted {}",
        admitted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_exact_budgets_through_one_redis() {
    let redis = RedisServer::start();
    accuracy(&[redis.url()], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_exact_budgets_through_a_redis_cluster() {
    let cluster = portcullis_test_support::redis_cluster::RedisCluster::start();
    accuracy(&cluster.urls(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_mid_load_fails_open_or_closed_as_configured_and_recovers() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let gw = Gateway::start(bin(), &config(&up.url(), &[redis.url()], false, "300ms")).unwrap();
    let call = |p: &'static str| send(req("GET", &format!("{}{p}", gw.url("public")), &[], ""));
    assert_eq!(call("/o").await.status, 200);
    assert_eq!(call("/c").await.status, 200);

    redis.stop();
    // fail_closed: 503 within the Redis timeout (plus slack), never a hang.
    let started = Instant::now();
    let before = up.hits();
    let r = call("/c").await;
    let v = assert_problem(&r, 503, "rate_limit_unavailable");
    assert_eq!(up.hits(), before, "nothing reached the upstream");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(r.header("retry-after").is_some());
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["rate_limit"], "closed", "{ev}");
    // fail_open: counted locally at this instance's share (6 / 3 instances = 2 per minute).
    let mut ok = 0;
    for _ in 0..5 {
        let r = call("/o").await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {}
            s => panic!("{s}: {}", r.text()),
        }
    }
    assert_eq!(ok, 2, "the local share of a fail-open limit");
    let m = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(m.contains("portcullis_rate_limit_store_up 0"), "{m}");

    // Redis back: the same store reconnects by itself.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if call("/c").await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(m.contains("portcullis_rate_limit_store_up 1"), "{m}");

    // Once more, under load: while Redis goes away and comes back every answer is a decision
    // (200, 429, or 503 from the fail-closed limit), none takes long, none hangs.
    let stop_load = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..8 {
        let url = format!(
            "{}{}",
            gw.url("public"),
            if i % 2 == 0 { "/o" } else { "/c" }
        );
        let stop = stop_load.clone();
        load.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let r =
                    tokio::time::timeout(Duration::from_secs(5), send(req("GET", &url, &[], "")))
                        .await
                        .expect("a request hung while Redis was failing");
                assert!(started.elapsed() < Duration::from_secs(3));
                seen.push(r.status.as_u16());
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_load.store(true, Ordering::SeqCst);
    let mut statuses = Vec::new();
    for t in load {
        statuses.extend(t.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| [200, 429, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200));
}

fn bans_config(up: &str, redis: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
server: {{ trusted_proxies: [127.0.0.1] }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
bans:
  rules:
    - {{ name: scanner, on: [route_not_found], count: 3, within: 1m, ban_for: 1h }}
  redis: {{ url: "{redis}", sync_interval: 200ms }}
routes:
  - {{ name: orders, match: {{ path: /orders, methods: [GET] }}, upstream: app }}
"#
    )
}

/// Waits (at most 15 s) until a GET of /orders from `ip` through `gw` gets `status`; every
/// other answer on the way must be the other one of 200 / 403 `ip_banned`.
async fn until_status(gw: &Gateway, ip: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = send(req(
            "GET",
            &format!("{}/orders", gw.url("public")),
            &[("x-forwarded-for", ip)],
            "",
        ))
        .await;
        if r.status.as_u16() == status {
            if status == 403 {
                assert_problem(&r, 403, "ip_banned");
            }
            return;
        }
        assert!(
            matches!(r.status.as_u16(), 200 | 403),
            "{}: {}",
            r.status,
            r.text()
        );
        assert!(Instant::now() < deadline, "{ip} never got {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_are_shared_by_every_instance_through_redis_and_survive_it_going_away() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let a = Gateway::start(bin(), &bans_config(&up.url(), &redis.url())).unwrap();
    // B starts on its own and joins by a reload.
    let alone = bans_config(&up.url(), &redis.url()).replace("  redis: ", "  # redis: ");
    let b = Gateway::start(bin(), &alone).unwrap();
    let list = get(&format!("{}/bans", b.admin_url())).await.json();
    assert!(list.get("shared").is_none(), "{list}");
    std::fs::write(b.config_path(), bans_config(&up.url(), &redis.url())).unwrap();
    let r = send(req("POST", &format!("{}/reload", b.admin_url()), &[], "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let from = |gw: &Gateway, ip: &str, path: &str| {
        send(req(
            "GET",
            &format!("{}{path}", gw.url("public")),
            &[("x-forwarded-for", ip)],
            "",
        ))
    };
    let admin = |gw: &Gateway, method: &str, path: &str, body: &str| {
        send(req(method, &format!("{}{path}", gw.admin_url()), &[], body))
    };

    // Banned by refusals on A: refused by B too, without ever being refused there before.
    let scanner = "198.51.100.7";
    assert_eq!(from(&b, scanner, "/orders").await.status, 200);
    for _ in 0..3 {
        assert_problem(
            &from(&a, scanner, "/wp-admin").await,
            404,
            "route_not_found",
        );
    }
    assert_problem(&from(&a, scanner, "/orders").await, 403, "ip_banned");
    until_status(&b, scanner, 403).await;
    let hits = up.hits();
    let r = from(&b, scanner, "/orders").await;
    assert_problem(&r, 403, "ip_banned");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (3500..=3600).contains(&retry),
        "the ban's end is shared: {retry}"
    );
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    let list = get(&format!("{}/bans", b.admin_url())).await.json();
    assert_eq!(list["bans"][0]["address"], scanner, "{list}");
    assert_eq!(list["bans"][0]["rule"], "scanner", "{list}");
    assert_eq!(list["shared"]["error"], serde_json::Value::Null, "{list}");
    assert!(
        list["shared"]["store"]
            .as_str()
            .unwrap()
            .starts_with("redis://"),
        "{list}"
    );
    assert_eq!(from(&b, "198.51.100.8", "/orders").await.status, 200);
    let metrics = get(&format!("{}/metrics", b.admin_url())).await.text();
    assert!(metrics.contains("portcullis_bans_in_force 1"), "{metrics}");
    assert!(metrics.contains("portcullis_bans_store_up 1"), "{metrics}");
    let stored = redis.cmd(&["ZRANGE", "portcullis:bans", "0", "-1"]);
    assert!(stored.contains("198.51.100.7|scanner"), "{stored}");

    // Banned by hand on B: refused by A.
    let by_hand = "198.51.100.9";
    let r = admin(
        &b,
        "POST",
        "/bans",
        &format!(r#"{{"address":"{by_hand}","for":"10m"}}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    until_status(&a, by_hand, 403).await;

    // Lifted by hand on A: served by both again, and it stays lifted.
    assert_eq!(
        admin(&a, "DELETE", &format!("/bans/{scanner}"), "")
            .await
            .status,
        200
    );
    assert_eq!(from(&a, scanner, "/orders").await.status, 200);
    until_status(&b, scanner, 200).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(from(&a, scanner, "/orders").await.status, 200);
    assert_eq!(from(&b, scanner, "/orders").await.status, 200);
    let stored = redis.cmd(&["ZRANGE", "portcullis:bans", "0", "-1"]);
    assert!(!stored.contains(scanner), "{stored}");

    // Redis gone: each instance still bans on its own and says that sharing failed.
    redis.stop();
    let second = "198.51.100.10";
    for _ in 0..3 {
        assert_problem(&from(&a, second, "/nope").await, 404, "route_not_found");
    }
    assert_problem(&from(&a, second, "/orders").await, 403, "ip_banned");
    assert_problem(&from(&b, by_hand, "/orders").await, 403, "ip_banned");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list = get(&format!("{}/bans", a.admin_url())).await.json();
        if list["shared"]["error"].is_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no sharing error reported: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = get(&format!("{}/metrics", a.admin_url())).await.text();
    assert!(metrics.contains("portcullis_bans_store_up 0"), "{metrics}");
    assert_eq!(from(&b, second, "/orders").await.status, 200);

    // Redis back, empty: what A banned meanwhile reaches B, and the bans both held are
    // written again.
    redis.restart();
    until_status(&b, second, 403).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stored = redis.cmd(&["ZRANGE", "portcullis:bans", "0", "-1"]);
        if stored.contains(by_hand) && stored.contains(second) {
            break;
        }
        assert!(Instant::now() < deadline, "not written again: {stored}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = get(&format!("{}/bans", a.admin_url())).await.json();
    assert_eq!(list["shared"]["error"], serde_json::Value::Null, "{list}");
}

/// A ban of an IPv6 /64 read from the store refuses the prefix's addresses on the other
/// instance but not an exempt one among them (bans are by prefix, exemption by address).
/// Before, the exempt address was refused there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_ban_of_a_prefix_does_not_refuse_its_exempt_address() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let yaml = bans_config(&up.url(), &redis.url())
        .replace("bans:\n", "bans:\n  exempt: [\"2001:db8:1:2::10\"]\n");
    let a = Gateway::start(bin(), &yaml).unwrap();
    let b = Gateway::start(bin(), &yaml).unwrap();
    let from = |gw: &Gateway, ip: &str, path: &str| {
        send(req(
            "GET",
            &format!("{}{path}", gw.url("public")),
            &[("x-forwarded-for", ip)],
            "",
        ))
    };
    for _ in 0..3 {
        assert_problem(
            &from(&a, "2001:db8:1:2::99", "/wp-admin").await,
            404,
            "route_not_found",
        );
    }
    until_status(&b, "2001:db8:1:2::5", 403).await;
    let hits = up.hits();
    let r = from(&b, "2001:db8:1:2::5", "/orders").await;
    assert_problem(&r, 403, "ip_banned");
    assert!(r.header("retry-after").is_some());
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    let list = get(&format!("{}/bans", b.admin_url())).await.json();
    assert_eq!(list["bans"][0]["address"], "2001:db8:1:2::", "{list}");
    assert_eq!(from(&b, "2001:db8:1:2::10", "/orders").await.status, 200);
    assert_eq!(from(&a, "2001:db8:1:2::10", "/orders").await.status, 200);
    assert_eq!(up.hits(), hits + 2);
}

/// The shared store of API keys, revocations and bans on a Redis Cluster (as rate limits can
/// be): keys read from their slot's node, a revocation and a ban made on one instance reach
/// the other, a lift too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_revocations_and_bans_are_shared_through_a_redis_cluster() {
    let cluster = portcullis_test_support::redis_cluster::RedisCluster::start();
    let up = TestUpstream::start("app").await;
    for (key, client) in [("pk_alpha", "alpha"), ("pk_beta", "beta")] {
        let k = format!("pc:apikey:{}", sha256_hex(key));
        cluster.cmd(cluster.node_of(&k), &["HSET", &k, "client_id", client]);
    }
    let urls = cluster.urls();
    // One seed in `url`, the others in `cluster_nodes`.
    let store = format!(
        r#"url: "{}", cluster: true, cluster_nodes: ["{}", "{}"]"#,
        urls[0], urls[1], urls[2]
    );
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
server: {{ trusted_proxies: [127.0.0.1] }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  redis: {{ {store}, timeout: 300ms, key_prefix: "pc:" }}
  api_keys: {{ redis: true, cache_ttl: 30s }}
  revocation: {{ sync_interval: 200ms }}
bans:
  rules:
    - {{ name: scanner, on: [route_not_found], count: 3, within: 1m, ban_for: 1h }}
  redis: {{ {store}, sync_interval: 200ms }}
routes:
  - {{ name: orders, match: {{ path: /orders, methods: [GET] }}, upstream: app, auth: {{ methods: [api_key] }}, authz: {{ allow: any-authenticated }} }}
"#,
        up = up.url()
    );
    let a = Gateway::start(bin(), &yaml).unwrap();
    let b = Gateway::start(bin(), &yaml).unwrap();
    let from = |gw: &Gateway, ip: &str, path: &str, key: &str| {
        let mut headers = vec![("x-forwarded-for", ip.to_string())];
        if !key.is_empty() {
            headers.push(("x-api-key", key.to_string()));
        }
        let url = format!("{}{path}", gw.url("public"));
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(req("GET", &url, &h, "")).await
        }
    };
    let client = "198.51.100.20";

    // API keys read from the cluster, by both.
    assert_eq!(from(&a, client, "/orders", "pk_alpha").await.status, 200);
    assert_eq!(from(&b, client, "/orders", "pk_beta").await.status, 200);
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.header("x-client-id"), Some("beta"));

    // Revoked on A: refused by B.
    let r = send(req(
        "POST",
        &format!("{}/auth/revocations", a.admin_url()),
        &[],
        r#"{"api_key": "pk_alpha"}"#,
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["shared"], true, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = from(&b, client, "/orders", "pk_alpha").await;
        if r.status == 401 {
            let id = assert_problem(&r, 401, "unauthenticated")["request_id"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(audit_of(&b, &id)["auth_failure"], "revoked");
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(Instant::now() < deadline, "the revocation never reached B");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(from(&b, client, "/orders", "pk_beta").await.status, 200);

    // Banned by refusals on A: refused by B, whatever its key.
    let scanner = "198.51.100.21";
    for _ in 0..3 {
        assert_problem(
            &from(&a, scanner, "/wp-admin", "").await,
            404,
            "route_not_found",
        );
    }
    assert_problem(
        &from(&a, scanner, "/orders", "pk_beta").await,
        403,
        "ip_banned",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = from(&b, scanner, "/orders", "pk_beta").await;
        if r.status == 403 {
            assert_problem(&r, 403, "ip_banned");
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(Instant::now() < deadline, "the ban never reached B");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits_before_ban = up.hits();
    assert_problem(
        &from(&b, scanner, "/orders", "pk_beta").await,
        403,
        "ip_banned",
    );
    assert_eq!(up.hits(), hits_before_ban, "nothing reached the upstream");
    let stored = cluster.cmd(
        cluster.node_of("portcullis:bans"),
        &["ZRANGE", "portcullis:bans", "0", "-1"],
    );
    assert!(stored.contains(&format!("{scanner}|scanner")), "{stored}");
    let list = get(&format!("{}/bans", b.admin_url())).await.json();
    assert_eq!(list["shared"]["error"], serde_json::Value::Null, "{list}");

    // Lifted on B: served by A again.
    let r = send(req(
        "DELETE",
        &format!("{}/bans/{scanner}", b.admin_url()),
        &[],
        "",
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    while from(&a, scanner, "/orders", "pk_beta").await.status != 200 {
        assert!(Instant::now() < deadline, "the lift never reached A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Refusals spread over instances add up: an address refused twice by one instance and twice
/// by another, under a rule of four, is banned by both — while three refusals in all ban it
/// nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_spread_over_instances_add_up_to_one_ban() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    // A day's window (aligned on unix days), so that the test does not straddle two.
    let yaml = bans_config(&up.url(), &redis.url())
        .replace("count: 3, within: 1m", "count: 4, within: 1d");
    let a = Gateway::start(bin(), &yaml).unwrap();
    let b = Gateway::start(bin(), &yaml).unwrap();
    let refuse = |gw: &Gateway| {
        let url = format!("{}/wp-login.php", gw.url("public"));
        async move {
            let r = send(req(
                "GET",
                &url,
                &[("x-forwarded-for", "198.51.100.30")],
                "",
            ))
            .await;
            assert_problem(&r, 404, "route_not_found");
        }
    };
    let orders = |gw: &Gateway| {
        let url = format!("{}/orders", gw.url("public"));
        async move {
            send(req(
                "GET",
                &url,
                &[("x-forwarded-for", "198.51.100.30")],
                "",
            ))
            .await
            .status
        }
    };
    refuse(&a).await;
    refuse(&b).await;
    refuse(&a).await;
    // Three in all, counted by both in the store after a few syncs: no ban anywhere.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(orders(&a).await, 200);
    assert_eq!(orders(&b).await, 200);
    refuse(&b).await;
    until_status(&a, "198.51.100.30", 403).await;
    until_status(&b, "198.51.100.30", 403).await;
    let hits = up.hits();
    assert_eq!(orders(&a).await, 403);
    assert_eq!(orders(&b).await, 403);
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    // One ban, brought by one of them (the store decides and clears the count at once).
    let bans_total = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("portcullis_bans_total{rule=\"scanner\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let ma = get(&format!("{}/metrics", a.admin_url())).await.text();
    let mb = get(&format!("{}/metrics", b.admin_url())).await.text();
    assert_eq!(bans_total(&ma) + bans_total(&mb), 1, "{ma}\n{mb}");
    let keys = redis.cmd(&["KEYS", "portcullis:bans:count:*"]);
    for key in keys.lines().filter(|k| !k.is_empty()) {
        let count = redis.cmd(&["HGET", key, "198.51.100.30"]);
        assert!(count.is_empty(), "{key}: {count}");
    }
}
