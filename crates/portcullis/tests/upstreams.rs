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
    let healthy_line = || async {
        let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
        metrics
            .lines()
            .find(|l| {
                l.starts_with("portcullis_upstream_target_healthy") && l.contains(&dead.to_string())
            })
            .unwrap_or_else(|| panic!("{metrics}"))
            .to_string()
    };
    let line = healthy_line().await;
    assert!(line.ends_with(" 0"), "{line}");
    // A POST is never retried: with the dead target ejected it still lands on the live one.
    let r = send(req("POST", &format!("{base}/x"), &[], "data")).await;
    assert_eq!(r.status, 200);
    // A reload (a new route) keeps the ejection: the dead target does not come back in, so
    // a POST (never retried) still lands on the live one, every time.
    let yaml = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        format!("{yaml}  - {{ name: extra, match: {{ prefix: /extra }}, upstream: pool }}\n"),
    )
    .unwrap();
    let r = send(req("POST", &format!("{}/reload", gw.admin_url()), &[], "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..6 {
        let r = send(req("POST", &format!("{base}/x"), &[], "data")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let line = healthy_line().await;
    assert!(
        line.ends_with(" 0"),
        "still ejected after the reload: {line}"
    );
}

/// A client that uploads slowly keeps its request's deadline from being met; that says
/// nothing of the target, which stays in: slow uploads are no way to eject healthy targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_timing_out_do_not_eject_the_target() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Two targets: the last eligible target is never ejected, so one alone would prove nothing.
    let live = TestUpstream::start("live").await;
    let other = TestUpstream::start("other").await;
    let gw = gateway(&format!(
        "upstreams:\n  pool: {{ targets: [\"{}\", \"{}\"], request_timeout: 1s, passive_health: {{ consecutive_failures: 2, ejection_time: 1m }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: pool, waf: {{ mode: off }} }}\n",
        live.url(),
        other.url()
    ));
    let addr = gw.listener("public");
    // Four uploads at once (two per target), each sending 10 of its 1000 bytes and then
    // waiting.
    let mut uploads = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789")
            .await
            .unwrap();
        uploads.push(s);
    }
    for s in &mut uploads {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer at the deadline")
            .unwrap();
        let out = String::from_utf8_lossy(&buf[..n]);
        assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    }
    // Both targets are still in.
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_upstream_target_healthy"))
        .collect();
    assert_eq!(lines.len(), 2, "{metrics}");
    assert!(lines.iter().all(|l| l.ends_with(" 1")), "{lines:?}");
    let r = get(&format!("{}/x", gw.url("public"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A path on which every backend answers 503 does not let a client take the pool out: each
/// request counts against one target (its retry failing the same way is the request's doing),
/// at most half the targets are ejected, never the last eligible one — other paths are still
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_eject_every_target() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    // Default retries and passive health.
    let gw = gateway(&format!(
        "upstreams:\n  pool: {{ targets: [\"{}\", \"{}\", \"{}\"] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: pool }}\n",
        a.url(),
        b.url(),
        c.url()
    ));
    let base = gw.url("public");
    for _ in 0..40 {
        let r = get(&format!("{base}/status/503")).await;
        assert_eq!(r.status, 503);
    }
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    let in_rotation = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_upstream_target_healthy") && l.ends_with(" 1"))
        .count();
    assert_eq!(in_rotation, 2, "{metrics}");
    for _ in 0..4 {
        let r = get(&format!("{base}/x")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
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

/// An answer with both framings, through hyper's client (a chunked request body goes that way):
/// read by its `Transfer-Encoding`, and passed on without the `Content-Length` it also
/// carried — which would otherwise frame it for the client (three bytes of six, looking
/// whole), over HTTP/1.1 and HTTP/2 alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_beside_a_transfer_coding_is_not_passed_on_by_the_general_client() {
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n",
    )
    .await;
    let gw = gateway(&format!(
        "upstreams:\n  pool: {{ targets: [\"http://{up}\"], retries: {{ attempts: 0 }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: pool, waf: {{ mode: off }} }}\n"
    ));
    // (The WAF off: it would buffer the body, which then goes by the direct client.)
    let out = raw_http(
        gw.listener("public"),
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(!lower.contains("content-length: 3\r\n"), "{out}");
    assert!(out.contains("abcdef"), "the whole body: {out}");
}

/// An upstream that answers every request with a head promising 10 bytes, sends 5, then
/// nothing more while it holds the connection open; it reports each connection the gateway
/// closes under it.
async fn stalling_upstream() -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<Instant>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let addr = scripted_upstream(move |mut s| {
        let tx = tx.clone();
        async move {
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
            if s.write_all(answer).await.is_err() {
                return;
            }
            // Silent from here; the gateway's close is the end of this stream.
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(Instant::now()).await;
        }
    })
    .await;
    (addr, rx)
}

/// An upstream that goes silent in the middle of its answer holds the exchange only for its
/// `read_timeout`: then the answer is cut off — over HTTP/1.1 the client's connection is closed
/// after the bytes that came (its length promised more), over HTTP/2 the stream is reset while
/// the connection serves on — the upstream's connection is closed, and the audit event says
/// the answer was not delivered whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_silent_mid_answer_is_cut_off_by_its_read_timeout() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, mut closed) = stalling_upstream().await;
    let gw = gateway(&format!(
        "upstreams:\n  stall: {{ targets: [\"http://{up}\"], read_timeout: 1s, retries: {{ attempts: 0 }} }}\n  d: {{ kind: echo }}\n\
         routes:\n  - {{ name: ok, match: {{ prefix: /ok }}, upstream: d }}\n  \
         - {{ name: stall, match: {{ prefix: / }}, upstream: stall }}\n"
    ));

    // HTTP/1.1: the head and the 5 bytes, then the close.
    let mut s = tokio::net::TcpStream::connect(gw.listener("public"))
        .await
        .unwrap();
    let started = Instant::now();
    s.write_all(b"GET /h1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut wire = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut wire))
        .await
        .expect("the client's connection is closed")
        .unwrap();
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&wire);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\r\ncontent-length: 10\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    assert!(
        waited >= Duration::from_millis(900),
        "cut off after {waited:?}, before the read timeout"
    );
    let at = tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the upstream's connection is closed")
        .unwrap();
    assert!(at.duration_since(started) >= Duration::from_millis(900));
    let event = gw
        .wait_for_audit(|e| e["path"] == "/h1", Duration::from_secs(5))
        .expect("audited");
    assert_eq!(event["status"], 200, "{event}");
    assert_eq!(event["response_bytes"], 5, "{event}");
    assert_eq!(event["response_complete"], false, "{event}");
    // And logged, naming the upstream and the target.
    let log = gw.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("read_timeout: answer cut off"))
        .unwrap_or_else(|| panic!("not logged: {log}"));
    assert!(
        line.contains("stall") && line.contains(&up.to_string()),
        "{line}"
    );
    // And counted, per upstream and target.
    let counted =
        format!("portcullis_upstream_read_timeouts_total{{upstream=\"stall\",target=\"{up}\"}}");
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(metrics.contains(&format!("{counted} 1\n")), "{metrics}");

    // HTTP/2: the head, then the body fails; the connection goes on serving.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let started = Instant::now();
    let resp = client
        .request(req("GET", &format!("{}/h2", gw.url("public")), &[], ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the stream ends");
    assert!(body.is_err(), "a cut-off answer is not a whole one");
    assert!(started.elapsed() >= Duration::from_millis(900));
    tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the upstream's connection is closed")
        .unwrap();
    let r = client
        .request(req("GET", &format!("{}/ok", gw.url("public")), &[], ""))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let event = gw
        .wait_for_audit(|e| e["path"] == "/h2", Duration::from_secs(5))
        .expect("audited");
    assert_eq!(event["http_version"], "HTTP/2", "{event}");
    assert_eq!(event["response_complete"], false, "{event}");
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(metrics.contains(&format!("{counted} 2\n")), "{metrics}");
    // The gateway is healthy.
    assert_eq!(get(&format!("{}/ok", gw.url("public"))).await.status, 200);
}

/// A target a reload removed is gone from the metrics: its gauges would otherwise say, for as
/// long as the process runs, that an absent target is down or busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_target_leaves_the_metrics() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let sections = |targets: &str| {
        format!(
            "listeners:\n  - {{ name: public, address: \"127.0.0.1:0\" }}\nadmin: {{ address: \"127.0.0.1:0\" }}\n\
             upstreams:\n  pool: {{ targets: [{targets}] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: pool }}\n"
        )
    };
    let both = format!("\"{}\", \"{}\"", a.url(), b.url());
    let gw = Gateway::start(bin(), &sections(&both)).unwrap();
    let healthy = |metrics: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| l.starts_with("portcullis_upstream_target_healthy"))
            .map(str::to_string)
            .collect()
    };
    let metrics_url = format!("{}/metrics", gw.admin_url());
    let before = healthy(&get(&metrics_url).await.text());
    assert_eq!(before.len(), 2, "{before:?}");
    std::fs::write(gw.config_path(), sections(&format!("\"{}\"", a.url()))).unwrap();
    let r = send(req("POST", &format!("{}/reload", gw.admin_url()), &[], "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let after = healthy(&get(&metrics_url).await.text());
    let b_authority = b.url().trim_start_matches("http://").to_string();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(!after[0].contains(&b_authority), "{after:?}");
    assert!(after[0].ends_with(" 1"), "{after:?}");
}

/// A HEAD answer that announces a body (`content-length: 44`) and sends none — many
/// hand-written servers then send the body anyway, in a later write. Its connection is not
/// reused: those bytes never become the next request's answer (another client's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bodiless_answer_announcing_a_body_does_not_poison_the_next_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    let up = scripted_upstream(move |mut s| {
        let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            if first {
                if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 44\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                // The HEAD's 44 bytes, late, when the next request has come on this
                // connection: a whole answer of their own. Then that request's answer.
                if !read_head(&mut s).await {
                    return;
                }
                let fake = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON";
                assert_eq!(fake.len(), 44);
                if s.write_all(fake).await.is_err() || s.write_all(ok).await.is_err() {
                    return;
                }
                while read_head(&mut s).await {}
                return;
            }
            while s.write_all(ok).await.is_ok() && read_head(&mut s).await {}
        }
    })
    .await;
    let gw = gateway(&format!(
        "upstreams:\n  pool: {{ targets: [\"http://{up}\"], retries: {{ attempts: 0 }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: pool }}\n"
    ));
    let r = send(req("HEAD", &format!("{}/a", gw.url("public")), &[], "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("44"));
    let r = get(&format!("{}/b", gw.url("public"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "the HEAD's connection was not reused"
    );
}

/// A target's trailers reach an HTTP/2 client without the fields that may not be trailers: a
/// hop-by-hop one would make the HTTP/2 side refuse the whole section and break an answer whose
/// body had come whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_trailers_reach_http2_clients_without_forbidden_fields() {
    use http_body_util::BodyExt;
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nkeep-alive: 1\r\nx-t: 1\r\n\r\n",
    )
    .await;
    let gw = gateway(&format!(
        "upstreams:\n  pool: {{ targets: [\"http://{up}\"], retries: {{ attempts: 0 }} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: pool }}\n"
    ));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let resp = client
        .request(req("GET", &format!("{}/x", gw.url("public")), &[], ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the answer ends")
        .expect("the answer is whole");
    let trailers = body.trailers().cloned().expect("trailers");
    assert_eq!(trailers.get("x-t").map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert!(trailers.get("keep-alive").is_none(), "{trailers:?}");
    assert_eq!(&body.to_bytes()[..], b"ok");
}
