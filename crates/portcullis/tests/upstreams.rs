//! Load balancing, health checking and ejection across real upstream servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_evenly() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = gateway(&format!(
        "upstreams:\n  pool: {{ targets: [\"{}\", \"{}\"] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: pool }}\n",
        a.url(),
        b.url()
    ));
    let mut labels = Vec::new();
    for _ in 0..10 {
        let r = get(&format!("{}/x", gw.url("public"))).await;
        labels.push(r.header("x-upstream").unwrap().to_string());
    }
    assert_eq!(a.hits(), 5);
    assert_eq!(b.hits(), 5);
    assert!(
        labels.windows(2).all(|w| w[0] != w[1]),
        "alternates: {labels:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_avoids_the_busy_target() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = gateway(&format!(
        "upstreams:\n  pool: {{ balance: least_requests, targets: [\"{}\", \"{}\"] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: pool }}\n",
        a.url(),
        b.url()
    ));
    let base = gw.url("public");
    // Hold several slow requests open, then send quick ones: they go where nothing is pending.
    let slow: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get_owned(format!("{base}/delay/1500"))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.hits() + b.hits() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (busy_a, busy_b) = (a.hits(), b.hits());
    for _ in 0..10 {
        get(&format!("{base}/quick")).await;
    }
    let quick_a = a.hits_excluding("/delay");
    let quick_b = b.hits_excluding("/delay");
    // The less loaded target takes at least as many of the quick requests.
    if busy_a > busy_b {
        assert!(
            quick_b >= quick_a,
            "busy a={busy_a} b={busy_b}; quick a={quick_a} b={quick_b}"
        );
    } else if busy_b > busy_a {
        assert!(
            quick_a >= quick_b,
            "busy a={busy_a} b={busy_b}; quick a={quick_a} b={quick_b}"
        );
    }
    assert_eq!(quick_a + quick_b, 10);
    for s in slow {
        assert_eq!(s.await.unwrap().status, 200);
    }
}

async fn get_owned(url: String) -> Resp {
    get(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_is_retried_around_then_ejected() {
    let live = TestUpstream::start("live").await;
    let dead = dead_addr();
    let gw = gateway(&format!(
        "upstreams:\n  pool: {{ targets: [\"{}\", \"http://{dead}\"], retries: {{ attempts: 1 }}, passive_health: {{ consecutive_failures: 2, ejection_time: 1m }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: pool }}\n",
        live.url()
    ));
    let base = gw.url("public");
    for _ in 0..10 {
        let r = get(&format!("{base}/x")).await;
        assert_eq!(r.status, 200, "GETs are retried on the live target");
        assert_eq!(r.header("x-upstream"), Some("live"));
    }
    assert_eq!(live.hits(), 10);
    let live_addr = live.addr().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.audit_events().len() < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = gw.audit_events();
    assert_eq!(events.len(), 10);
    assert!(
        events
            .iter()
            .all(|e| e["target"] == live_addr.as_str() && e["status"] == 200),
        "{events:#?}"
    );
    // The dead target is ejected: the metrics say so.
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("portcullis_upstream_target_healthy") && l.contains(&dead.to_string())
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(line.ends_with(" 0"), "{line}");
    // A POST is never retried: with the dead target ejected it still lands on the live one.
    let r = send(req("POST", &format!("{base}/x"), &[], "data")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried() {
    let dead = dead_addr();
    let live = TestUpstream::start("live").await;
    let gw = gateway(&format!(
        "upstreams:\n  pool: {{ targets: [\"http://{dead}\", \"{}\"], retries: {{ attempts: 3 }}, passive_health: {{ consecutive_failures: 0 }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: pool }}\n",
        live.url()
    ));
    // Round robin starts on the dead target for the first request.
    let r = send(req("POST", &format!("{}/x", gw.url("public")), &[], "once")).await;
    assert_problem(&r, 502, "upstream_error");
    assert_eq!(live.hits(), 0);
    let r = get(&format!("{}/x", gw.url("public"))).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_failing_target_out_and_back() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = gateway(&format!(
        "upstreams:\n  pool: {{ targets: [\"{}\", \"{}\"], health_check: {{ path: /healthz, interval: 50ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: /app }}, upstream: pool }}\n",
        a.url(),
        b.url()
    ));
    let base = gw.url("public");
    b.set_healthy(false);
    wait_until(|| healthy_line(&gw, &b, " 0")).await;
    let before = b.hits_excluding("/healthz");
    for _ in 0..6 {
        assert_eq!(
            get(&format!("{base}/app")).await.header("x-upstream"),
            Some("a")
        );
    }
    assert_eq!(b.hits_excluding("/healthz"), before);
    b.set_healthy(true);
    wait_until(|| healthy_line(&gw, &b, " 1")).await;
    let mut seen_b = false;
    for _ in 0..6 {
        seen_b |= get(&format!("{base}/app")).await.header("x-upstream") == Some("b");
    }
    assert!(seen_b);
    let rec = b
        .requests()
        .into_iter()
        .find(|r| r.uri == "/healthz")
        .unwrap();
    assert_eq!(rec.headers["user-agent"], "portcullis-health-check");
}

fn healthy_line(gw: &Gateway, up: &TestUpstream, want: &str) -> bool {
    let url = format!("{}/metrics", gw.admin_url());
    let text = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(get(&url))
                .text()
        })
        .join()
        .unwrap()
    });
    text.lines().any(|l| {
        l.starts_with("portcullis_upstream_target_healthy")
            && l.contains(&up.addr().to_string())
            && l.ends_with(want)
    })
}

async fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "condition not reached in 10s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upstream_answer_is_a_502_problem() {
    // Each refused by the direct HTTP/1.1 client (a GET without body and a POST with one).
    let answers: [&'static [u8]; 6] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
        // Framings hyper's client would read otherwise (ADR 0008): refused, not guessed at.
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n",
    ];
    for answer in answers {
        let up = raw_upstream(answer).await;
        let gw = gateway(&format!(
            "upstreams:\n  pool: {{ targets: [\"http://{up}\"], retries: {{ attempts: 0 }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: pool }}\n"
        ));
        let r = get(&format!("{}/x", gw.url("public"))).await;
        assert_problem(&r, 502, "upstream_error");
        let r = send(req(
            "POST",
            &format!("{}/x", gw.url("public")),
            &[],
            "a body",
        ))
        .await;
        assert_problem(&r, 502, "upstream_error");
    }
}
