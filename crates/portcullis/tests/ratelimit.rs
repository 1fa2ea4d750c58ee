//! Rate limiting end to end through the real binary, with the in-memory store: 429s with their
//! problem body, `Retry-After` and rate-limit headers; one budget per key across routes;
//! tiers from API keys; quotas with warnings; concurrency limits; pre-authentication limits
//! that stop credential stuffing before any verification. Every refusal is checked to reach no
//! upstream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const FREE_KEY: &str = "pk_free_0123456789abcdef0123456789abcdef";
const PRO_KEY: &str = "pk_pro_0123456789abcdef0123456789abcdef01";

async fn setup() -> (Gateway, TestUpstream) {
    let up = TestUpstream::start("app").await;
    (gateway_yaml(&config(&up.url(), &up.url())), up)
}

/// The limits and routes of most tests: every route to `up`, but `/delay` (the one with a
/// concurrency limit) to `slow`.
fn config(up: &str, slow: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }}, slow: {{ targets: ["{slow}"] }} }}
auth:
  api_keys:
    keys:
      - {{ hash: "sha256:{free}", client_id: free-client, tier: free }}
      - {{ hash: "sha256:{pro}", client_id: pro-client, tier: pro }}
rate_limits:
  tiers: [free, pro]
  # Fixed windows per hour: they are aligned to the clock, and a test's requests crossing a
  # window's edge (every minute, with per-minute windows) would find the budget whole again.
  limits:
    login-ip: {{ key: [client_ip, route], algorithm: fixed_window, rate: 3/hour }}
    shared-ip: {{ key: [client_ip], algorithm: fixed_window, rate: 3/hour }}
    per-route-ip: {{ key: [client_ip, route], algorithm: fixed_window, rate: 2/hour }}
    per-client: {{ key: [client_id], rate: 1/minute, tiers: {{ free: 2/minute, pro: 5/minute }} }}
    daily: {{ key: [client_id], quota: 5/day, warn_at: [60] }}
    inflight: {{ key: [global], concurrency: 1 }}
routes:
  - {{ name: login, match: {{ path: /login }}, upstream: app, auth: {{ anonymous: true }}, rate_limits: [login-ip] }}
  - {{ name: a, match: {{ prefix: /a }}, upstream: app, auth: {{ anonymous: true }}, rate_limits: [shared-ip] }}
  - {{ name: b, match: {{ prefix: /b }}, upstream: app, auth: {{ anonymous: true }}, rate_limits: [shared-ip] }}
  - {{ name: c, match: {{ prefix: /c }}, upstream: app, auth: {{ anonymous: true }}, rate_limits: [per-route-ip] }}
  - {{ name: d, match: {{ prefix: /d }}, upstream: app, auth: {{ anonymous: true }}, rate_limits: [per-route-ip] }}
  - {{ name: api, match: {{ prefix: /api }}, upstream: app, auth: {{ methods: [api_key] }}, authz: {{ allow: any-authenticated }}, rate_limits: [per-client] }}
  - {{ name: quota, match: {{ prefix: /quota }}, upstream: app, auth: {{ methods: [api_key] }}, authz: {{ allow: any-authenticated }}, rate_limits: [daily] }}
  - {{ name: slow, match: {{ prefix: /delay }}, upstream: slow, auth: {{ anonymous: true }}, rate_limits: [inflight] }}
"#,
        free = sha256_hex(FREE_KEY),
        pro = sha256_hex(PRO_KEY),
    )
}

fn gateway_yaml(yaml: &str) -> Gateway {
    Gateway::start(bin(), yaml).unwrap()
}

fn assert_429(gw: &Gateway, r: &Resp, limit: &str, stage: &str) {
    let v = assert_problem(r, 429, "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // At most the window for the fixed windows (an hour), the next UTC midnight for the daily
    // quota, a minute for the others (per-minute GCRA, the concurrency limit's second).
    let max = match limit {
        "daily" => 86_400,
        "login-ip" | "shared-ip" | "per-route-ip" => 3_600,
        _ => 60,
    };
    assert!((1..=max).contains(&retry), "retry-after {retry}");
    assert!(v["detail"].as_str().unwrap().contains(limit), "{v}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(
        r.header("ratelimit").unwrap().contains(";r=0;"),
        "{:?}",
        r.headers
    );
    let ev = audit_of(gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["rate_limit"], limit, "{ev}");
    assert_eq!(ev["stage"], stage, "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_auth_limit_answers_429_with_headers_and_stops_before_the_upstream() {
    let (gw, up) = setup().await;
    for i in 0..3u64 {
        let r = call_public(&gw, "POST", "/login", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"login-ip\";q=3;w=3600"),
            "{:?}",
            r.headers
        );
        let rl = r.header("ratelimit").unwrap();
        assert!(
            rl.starts_with(&format!("\"login-ip\";r={};t=", 2 - i)),
            "{rl}"
        );
    }
    let r = call_public(&gw, "POST", "/login", &[]).await;
    assert_429(&gw, &r, "login-ip", "ratelimit_pre");
    assert_eq!(up.hits(), 3);
    let m = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        m.contains(r#"portcullis_rate_limited_total{limit="login-ip"} 1"#),
        "{m}"
    );
    // Budgets held, none dropped for room.
    assert!(m.contains("portcullis_rate_limit_evictions 0"), "{m}");
    assert!(!m.contains("portcullis_rate_limit_keys 0\n"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_is_one_budget_across_routes_unless_the_route_is_in_the_key() {
    let (gw, up) = setup().await;
    // shared-ip on /a and /b: one budget of 3.
    assert_eq!(call_public(&gw, "GET", "/a", &[]).await.status, 200);
    assert_eq!(call_public(&gw, "GET", "/b", &[]).await.status, 200);
    assert_eq!(call_public(&gw, "GET", "/a", &[]).await.status, 200);
    assert_429(
        &gw,
        &call_public(&gw, "GET", "/b", &[]).await,
        "shared-ip",
        "ratelimit_pre",
    );
    assert_429(
        &gw,
        &call_public(&gw, "GET", "/a", &[]).await,
        "shared-ip",
        "ratelimit_pre",
    );
    // per-route-ip has the route in its key: /c and /d have 2 each.
    for p in ["/c", "/c", "/d", "/d"] {
        assert_eq!(call_public(&gw, "GET", p, &[]).await.status, 200, "{p}");
    }
    assert_429(
        &gw,
        &call_public(&gw, "GET", "/c", &[]).await,
        "per-route-ip",
        "ratelimit_pre",
    );
    assert_429(
        &gw,
        &call_public(&gw, "GET", "/d", &[]).await,
        "per-route-ip",
        "ratelimit_pre",
    );
    assert_eq!(up.hits(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_from_api_keys_choose_the_limit() {
    let (gw, up) = setup().await;
    let free = [("x-api-key", FREE_KEY)];
    let pro = [("x-api-key", PRO_KEY)];
    for _ in 0..2 {
        assert_eq!(call_public(&gw, "GET", "/api/x", &free).await.status, 200);
    }
    assert_429(
        &gw,
        &call_public(&gw, "GET", "/api/x", &free).await,
        "per-client",
        "ratelimit",
    );
    for _ in 0..5 {
        let r = call_public(&gw, "GET", "/api/x", &pro).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
    }
    assert_429(
        &gw,
        &call_public(&gw, "GET", "/api/x", &pro).await,
        "per-client",
        "ratelimit",
    );
    assert_eq!(up.hits(), 7);
    // Unauthenticated requests are refused by authentication, never counted against a client.
    let r = call_public(&gw, "GET", "/api/x", &[]).await;
    assert_problem(&r, 401, "unauthenticated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_warn_then_refuse() {
    let (gw, up) = setup().await;
    let k = [("x-api-key", FREE_KEY)];
    for i in 1..=5u64 {
        let r = call_public(&gw, "GET", "/quota", &k).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let warning = r.header("x-quota-warning");
        if i * 100 / 5 >= 60 {
            let w = warning.unwrap();
            assert!(
                w.starts_with("daily;") && w.contains(&format!("used={i}")),
                "{w}"
            );
            assert!(w.contains("threshold=60%"), "{w}");
        } else {
            assert_eq!(warning, None, "request {i}");
        }
    }
    let r = call_public(&gw, "GET", "/quota", &k).await;
    assert_429(&gw, &r, "daily", "ratelimit");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("quota exhausted"),
        "{}",
        r.text()
    );
    // Reset at the next UTC midnight: never more than a day away.
    let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset > 0 && reset <= 86_400, "{reset}");
    assert_eq!(up.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_counts_requests_in_flight() {
    let up = TestUpstream::start("app").await;
    let held = HeldUpstream::start().await;
    let gw = gateway_yaml(&config(&up.url(), &held.url()));
    let url = format!("{}/delay/held", gw.url("public"));
    let slow = tokio::spawn(async move { send(req("GET", &url, &[], "")).await });
    // The first request is at the upstream, held there until released.
    held.wait_calls(1).await;
    let r = call_public(&gw, "GET", "/delay/0", &[]).await;
    assert_429(&gw, &r, "inflight", "ratelimit_pre");
    assert_eq!(held.calls(), 1, "the refused request reached no upstream");
    held.release();
    assert_eq!(slow.await.unwrap().status, 200);
    // The slot is free again once the first answered.
    assert_eq!(call_public(&gw, "GET", "/delay/0", &[]).await.status, 200);
    assert_eq!(held.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_upstream_sheds_the_lowest_priority_first_and_recovers() {
    let up = TestUpstream::start("app").await;
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"] }} }}
auth:
  api_keys:
    keys:
      - {{ hash: "sha256:{free}", client_id: free-client, tier: free }}
      - {{ hash: "sha256:{pro}", client_id: pro-client, tier: pro }}
rate_limits:
  tiers: [free, pro]
  adaptive: {{ latency_slo: 20ms, window: 2s, recover_after: 2s, cpu_high: 1.0 }}
routes:
  - {{ name: open, match: {{ prefix: /open }}, upstream: app, auth: {{ anonymous: true }}, rewrite: {{ replace_prefix: "" }} }}
  - {{ name: api, match: {{ prefix: /api }}, upstream: app, auth: {{ methods: [api_key] }}, authz: {{ allow: any-authenticated }}, rewrite: {{ replace_prefix: "" }} }}
"#,
        up = up.url(),
        free = sha256_hex(FREE_KEY),
        pro = sha256_hex(PRO_KEY),
    );
    let gw = Gateway::start(bin(), &yaml).unwrap();
    let key = [("x-api-key", PRO_KEY)];
    assert_eq!(call_public(&gw, "GET", "/open/x", &[]).await.status, 200);

    // The upstream turns slow: p99 of 150 ms against an objective of 20 ms.
    let mut slow = Vec::new();
    for _ in 0..30 {
        let url = format!("{}/api/delay/150", gw.url("public"));
        slow.push(tokio::spawn(async move {
            send(req("GET", &url, &[("x-api-key", FREE_KEY)], "")).await
        }));
    }
    for t in slow {
        assert_eq!(t.await.unwrap().status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let shed = loop {
        let before = up.hits();
        let r = call_public(&gw, "GET", "/open/x", &[]).await;
        if r.status == 503 {
            assert_eq!(up.hits(), before, "a shed request reached the upstream");
            break r;
        }
        assert!(Instant::now() < deadline, "never shed: {}", r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let v = assert_problem(&shed, 503, "overloaded");
    assert!(shed.header("retry-after").is_some());
    let ev = audit_of(&gw, v["request_id"].as_str().unwrap());
    assert_eq!(ev["stage"], "ratelimit", "{ev}");
    // Anonymous callers go first; the highest tier is never shed.
    let r = call_public(&gw, "GET", "/api/x", &key).await;
    let status = get(&format!("{}/ratelimit", gw.admin_url())).await.json();
    assert_eq!(r.status, 200, "{} {status}", r.text());
    let status = get(&format!("{}/ratelimit", gw.admin_url())).await.json();
    assert_eq!(status["adaptive"]["level"], "severe", "{status}");
    let m = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(m.contains("portcullis_adaptive_level 2"), "{m}");

    // Healthy again: after the window and the recovery delay, anonymous callers are back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = call_public(&gw, "GET", "/open/x", &[]).await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_at_its_adaptive_concurrency_limit_is_not_handed_more() {
    let up = HeldUpstream::start().await;
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ app: {{ targets: ["{up}"], adaptive_concurrency: {{ min: 1, max: 1, initial: 1 }} }} }}
routes:
  - {{ name: r, match: {{ prefix: / }}, upstream: app }}
"#,
        up = up.url()
    );
    let gw = Gateway::start(bin(), &yaml).unwrap();
    let url = format!("{}/held", gw.url("public"));
    let first = tokio::spawn(async move { send(req("GET", &url, &[], "")).await });
    // At the upstream, held there until released.
    up.wait_calls(1).await;
    let r = call_public(&gw, "GET", "/x", &[]).await;
    assert_problem(&r, 503, "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(up.calls(), 1);
    up.release();
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(call_public(&gw, "GET", "/x", &[]).await.status, 200);
    assert_eq!(up.calls(), 2);
}

/// `examples/ratelimit.yaml` as shipped (addresses made ephemeral): its curl lines give what
/// they promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ratelimit_example_does_what_its_comments_say() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let yaml = std::fs::read_to_string(root.join("examples/ratelimit.yaml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0");
    let gw = Gateway::start(bin(), &yaml).unwrap();
    const FREE: &str = "pk_demo_free_000000000000000000000000000000";
    const PRO: &str = "pk_demo_pro_0000000000000000000000000000000";
    // Five logins a minute per address, then a 429 with its headers. The window is aligned to
    // the clock's minutes, and six logins across a minute's edge would find it whole again:
    // within 10 s of an edge, wait for it (and then have 50 s).
    let into_minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 60_000;
    if into_minute >= 50_000 {
        let to_edge = (60_000 - into_minute) as u64;
        tokio::time::sleep(Duration::from_millis(to_edge + 50)).await;
    }
    for _ in 0..5 {
        assert_eq!(call_public(&gw, "POST", "/login", &[]).await.status, 200);
    }
    let r = call_public(&gw, "POST", "/login", &[]).await;
    assert_problem(&r, 429, "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header("ratelimit-policy"), Some("\"login\";q=5;w=60"));
    assert!(
        r.header("ratelimit")
            .unwrap()
            .starts_with("\"login\";r=0;t=")
    );
    // Tiers: the per-client limit is the one shown (the per-IP one is far from refusing).
    let r = call_public(&gw, "GET", "/api/orders", &[("x-api-key", FREE)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit"), Some("10"));
    let r = call_public(&gw, "GET", "/api/orders", &[("x-api-key", PRO)]).await;
    assert_eq!(r.header("x-ratelimit-limit"), Some("100"));
    // The daily export quota warns from 80%.
    for _ in 0..17 {
        let r = call_public(&gw, "GET", "/api/export", &[("x-api-key", FREE)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = call_public(&gw, "GET", "/api/export", &[("x-api-key", FREE)]).await;
    assert_eq!(
        r.header("x-quota-warning"),
        Some("export-daily; used=18; limit=20; threshold=80%")
    );
    let m = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        m.contains(r#"portcullis_rate_limited_total{limit="login"} 1"#),
        "{m}"
    );
}
