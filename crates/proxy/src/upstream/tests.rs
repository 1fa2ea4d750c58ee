//! Upstream pool tests: real hyper servers on 127.0.0.1 ephemeral ports, no mocks.

use super::balance::Tried;
use super::*;

use std::convert::Infallible;

use bytes::Bytes;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::header::{CONNECTION, CONTENT_LENGTH, UPGRADE};
use http::{HeaderMap, Method, Version};
use http_body::Frame;
use http_body_util::{Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------
// helpers

fn pool(yaml: &str) -> Arc<UpstreamPool> {
    let c = portcullis_config::load_str(yaml, Path::new(".")).unwrap();
    UpstreamPool::new(&c.upstreams[0], None).unwrap()
}

/// An upstream section with these targets (YAML flow items) and extra settings.
fn pool_of(targets: &[String], extra: &str) -> Arc<UpstreamPool> {
    let targets = targets.join(", ");
    let sep = if extra.is_empty() { "" } else { ", " };
    pool(&format!(
        "upstreams: {{ u: {{ targets: [ {targets} ]{sep}{extra} }} }}"
    ))
}

fn full(s: &'static str) -> BoxBody {
    Full::new(Bytes::from_static(s.as_bytes()))
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync()
}

fn text(status: u16, s: &'static str) -> Response<BoxBody> {
    Response::builder().status(status).body(full(s)).unwrap()
}

fn get(path: &str) -> Request<BoxBody> {
    Request::builder()
        .uri(path)
        .header(HOST, "example.com")
        .body(empty_body())
        .unwrap()
}

const RETRYABLE: ForwardOpts = ForwardOpts {
    timeout: Duration::from_secs(5),
    retryable: true,
    timer: None,
    extra: &[],
    answer_room: ANSWER_ROOM,
    request_body: None,
};

const NOT_RETRYABLE: ForwardOpts = ForwardOpts {
    timeout: Duration::from_secs(5),
    retryable: false,
    timer: None,
    extra: &[],
    answer_room: ANSWER_ROOM,
    request_body: None,
};

async fn body_text(r: Response<BoxBody>) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

/// A tiny upstream: hyper-util's auto server (HTTP/1.1 and h2c prior knowledge, upgrades),
/// counting the requests it receives and the connections it accepts. Dropping it stops
/// accepting.
struct TestServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
    /// Tells the open connections to end ([`Closing`]).
    close: tokio::sync::watch::Sender<Closing>,
    accept: tokio::task::JoinHandle<()>,
}

/// How [`TestServer`] ends its open connections.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    Not,
    /// The socket closed without a word.
    Drop,
    /// HTTP/2 `GOAWAY` (HTTP/1.1: `Connection: close`), then the close.
    GoAway,
}

impl TestServer {
    fn authority(&self) -> String {
        self.addr.to_string()
    }
    /// The target as a YAML flow item.
    fn target(&self) -> String {
        format!("\"http://{}\"", self.addr)
    }
    fn weighted(&self, weight: u32) -> String {
        format!("{{ url: \"http://{}\", weight: {weight} }}", self.addr)
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    /// Connections accepted so far.
    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
    /// Ends every connection open now, the way `how` says; later ones are served as usual.
    fn close_connections(&self, how: Closing) {
        self.close.send_replace(how);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve<F, Fut>(handler: F) -> TestServer
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody>> + Send + 'static,
{
    serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
}

fn serve_on<F, Fut>(listener: TcpListener, handler: F) -> TestServer
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let conns = Arc::new(AtomicUsize::new(0));
    let (close, closing) = tokio::sync::watch::channel(Closing::Not);
    let handler = Arc::new(handler);
    let counter = hits.clone();
    let accepted = conns.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let counter = counter.clone();
            let mut closing = closing.clone();
            // Only a close asked for from now on ends this connection.
            closing.borrow_and_update();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = closing.changed() => {}
                }
                if *closing.borrow() == Closing::GoAway {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            });
        }
    });
    TestServer {
        addr,
        hits,
        conns,
        close,
        accept,
    }
}

/// An address nothing listens on (connections are refused) for as long as the test process
/// runs: the port stays bound by a socket that never listens, so no listener of a test
/// running beside this one can be given it.
fn dead_addr() -> SocketAddr {
    static HELD: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    HELD.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    addr
}

/// Polls `f` for up to ~5 s.
async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    f()
}

fn in_flight_total(p: &UpstreamPool) -> usize {
    p.health_snapshot().iter().map(|t| t.in_flight).sum()
}

fn sel(p: &UpstreamPool, tried: &[usize]) -> Option<usize> {
    let mut t = Tried::default();
    for &i in tried {
        t.insert(i);
    }
    p.select(&t)
}

// ---------------------------------------------------------------------------------------------
// selection (no traffic)

#[test]
fn the_schedule_is_smooth_exact_and_bounded() {
    assert_eq!(weighted_schedule(&[1, 1]), vec![0, 1]);
    assert_eq!(weighted_schedule(&[2, 2]), vec![0, 1]);
    assert_eq!(weighted_schedule(&[1, 2]), vec![1, 0, 1]);
    assert_eq!(weighted_schedule(&[1, 1, 1]), vec![0, 1, 2]);
    let s = weighted_schedule(&[5, 1, 2]);
    assert_eq!(s.len(), 8);
    assert_eq!(s.iter().filter(|&&i| i == 0).count(), 5);
    // Spread out: the heavy target never runs three times in a row around the cycle.
    let twice: Vec<u32> = s.iter().chain(s.iter()).copied().collect();
    assert!(
        twice
            .windows(3)
            .all(|w| !(w[0] == 0 && w[1] == 0 && w[2] == 0))
    );
    // An outlandish weight is scaled, and the light target keeps a turn.
    let big = weighted_schedule(&[u32::MAX, 1]);
    assert!(big.len() <= 4097, "{}", big.len());
    assert!(big.contains(&1));
}

#[test]
fn weighted_round_robin_follows_the_schedule() {
    let p = pool(
        "upstreams: { u: { targets: [ \"http://127.0.0.1:1\", { url: \"http://127.0.0.1:2\", weight: 2 } ] } }",
    );
    let picks: Vec<usize> = (0..6).map(|_| sel(&p, &[]).unwrap()).collect();
    assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 2);
    assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 4);
}

/// A target out of rotation leaves its turns to the others in proportion to their weights, not
/// to the target after it in the schedule (which took two thirds of three equal targets' turns
/// with the middle one out). Round robin is deterministic: the shares are exact.
#[test]
fn an_ejected_target_s_share_goes_to_the_others_by_weight() {
    let eject = |p: &UpstreamPool, i: usize| {
        p.targets[i]
            .ejected_until
            .store(p.now_ms() + 60_000, Ordering::Relaxed);
    };
    let count = |p: &UpstreamPool, picks: usize| {
        let mut n = vec![0; p.targets.len()];
        for _ in 0..picks {
            n[sel(p, &[]).unwrap()] += 1;
        }
        n
    };
    let three = "\"http://127.0.0.1:1\", \"http://127.0.0.1:2\", \"http://127.0.0.1:3\"";
    let p = pool(&format!("upstreams: {{ u: {{ targets: [ {three} ] }} }}"));
    eject(&p, 1);
    assert_eq!(count(&p, 300), [150, 0, 150]);
    // Weights 1, 2, 3 with the heaviest out: 1 to 2.
    let p = pool(
        "upstreams: { u: { targets: [ { url: \"http://127.0.0.1:1\", weight: 1 }, { url: \"http://127.0.0.1:2\", weight: 2 }, { url: \"http://127.0.0.1:3\", weight: 3 } ] } }",
    );
    eject(&p, 2);
    assert_eq!(count(&p, 300), [100, 200, 0]);
    // Least requests draws at random: with the loads equal, the first candidate wins, and it
    // is as often one of the two targets left as the other (it was the target after the
    // ejected one twice as often).
    let p = pool(&format!(
        "upstreams: {{ u: {{ balance: least_requests, targets: [ {three} ] }} }}"
    ));
    eject(&p, 1);
    let n = count(&p, 6000);
    assert_eq!(n[1], 0);
    assert!(
        (2700..3300).contains(&n[0]) && (2700..3300).contains(&n[2]),
        "{n:?}"
    );
}

#[test]
fn a_retry_prefers_an_untried_target() {
    for balance in ["round_robin", "least_requests"] {
        let p = pool(&format!(
            "upstreams: {{ u: {{ balance: {balance}, targets: [ \"http://127.0.0.1:1\", \"http://127.0.0.1:2\", \"http://127.0.0.1:3\" ] }} }}"
        ));
        for _ in 0..20 {
            let first = sel(&p, &[]).unwrap();
            let second = sel(&p, &[first]).unwrap();
            assert_ne!(second, first);
            let third = sel(&p, &[first, second]).unwrap();
            assert!(third != first && third != second);
            // Everything tried: any eligible target will do.
            assert!(sel(&p, &[0, 1, 2]).is_some());
        }
    }
}

#[test]
fn passive_ejection_removes_and_restores_a_target() {
    let p = pool(
        "upstreams: { u: { targets: [ \"http://127.0.0.1:1\", \"http://127.0.0.1:2\" ], passive_health: { consecutive_failures: 2, ejection_time: 50ms } } }",
    );
    p.record_failure(0);
    assert!(p.health_snapshot().iter().all(|t| !t.ejected));
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 1);
    p.record_failure(0);
    let snap = p.health_snapshot();
    assert!(snap[0].ejected && !snap[1].ejected);
    for _ in 0..10 {
        assert_eq!(sel(&p, &[]), Some(1));
    }
    // The other one is the last eligible target: it is not ejected, its count starts over.
    p.record_failure(1);
    p.record_failure(1);
    let snap = p.health_snapshot();
    assert!(
        !snap[1].ejected && snap[1].consecutive_failures == 0,
        "{snap:?}"
    );
    assert_eq!(sel(&p, &[]), Some(1));
    std::thread::sleep(Duration::from_millis(80));
    assert!(p.health_snapshot().iter().all(|t| !t.ejected));
}

/// Passive ejection takes at most `max_ejection_percent` (default 50) of the targets out at once
/// (rounded down, at least one), and never the last eligible one: targets down by their active
/// checks count as out.
#[test]
fn passive_ejection_is_capped_and_spares_the_last_eligible_target() {
    let targets: Vec<String> = (1..=5)
        .map(|port| format!("\"http://127.0.0.1:{port}\""))
        .collect();
    let p = pool_of(&targets, "passive_health: { consecutive_failures: 1 }");
    for i in 0..5 {
        p.record_failure(i);
    }
    let out: Vec<bool> = p.health_snapshot().iter().map(|t| t.ejected).collect();
    assert_eq!(out, [true, true, false, false, false]);
    // `max_ejection_percent`: 100 leaves the last eligible target, 0 still allows one.
    for (pct, want) in [
        (100, [true, true, true, true, false]),
        (0, [true, false, false, false, false]),
    ] {
        let p = pool_of(
            &targets,
            &format!("passive_health: {{ consecutive_failures: 1, max_ejection_percent: {pct} }}"),
        );
        for i in 0..5 {
            p.record_failure(i);
        }
        let out: Vec<bool> = p.health_snapshot().iter().map(|t| t.ejected).collect();
        assert_eq!(out, want, "{pct}");
    }
    // Two targets down by their checks, two ejected: the fifth stays whatever it does.
    let p = pool_of(&targets, "passive_health: { consecutive_failures: 1 }");
    p.targets[3].healthy.store(false, Ordering::Relaxed);
    p.targets[4].healthy.store(false, Ordering::Relaxed);
    for _ in 0..3 {
        for i in 0..3 {
            p.record_failure(i);
        }
    }
    let out: Vec<bool> = p.health_snapshot().iter().map(|t| t.ejected).collect();
    assert_eq!(out, [true, true, false, false, false]);
    assert_eq!(sel(&p, &[]), Some(2));
    // Active checks alone can take every target out.
    p.targets[2].healthy.store(false, Ordering::Relaxed);
    assert!(!p.has_eligible_target());
    assert_eq!(sel(&p, &[]), None);
}

#[test]
fn a_success_resets_the_failure_count() {
    let p = pool(
        "upstreams: { u: { targets: [ \"http://127.0.0.1:1\" ], passive_health: { consecutive_failures: 2 } } }",
    );
    p.record_failure(0);
    p.record_success(0);
    p.record_failure(0);
    assert!(p.has_eligible_target());
}

#[test]
fn zero_consecutive_failures_disables_ejection() {
    let p = pool(
        "upstreams: { u: { targets: [ \"http://127.0.0.1:1\" ], passive_health: { consecutive_failures: 0 } } }",
    );
    for _ in 0..100 {
        p.record_failure(0);
    }
    assert!(p.has_eligible_target());
}

#[test]
fn least_requests_compares_two_distinct_targets() {
    let p = pool(
        "upstreams: { u: { balance: least_requests, targets: [ \"http://127.0.0.1:1\", \"http://127.0.0.1:2\" ] } }",
    );
    p.targets[0].in_flight.count.store(10, Ordering::Relaxed);
    // With two targets both are always drawn: the idle one always wins.
    assert!((0..200).all(|_| sel(&p, &[]) == Some(1)));
}

#[test]
fn errors_map_to_reasons_and_targets() {
    let t: Arc<str> = Arc::from("h:1");
    let cases = [
        (
            UpstreamError::NoEligibleTarget,
            RejectReason::NoHealthyUpstream,
            None,
        ),
        (
            UpstreamError::Timeout { target: t.clone() },
            RejectReason::UpstreamTimeout,
            Some("h:1"),
        ),
        (
            UpstreamError::Connect {
                target: t.clone(),
                source: "x".into(),
            },
            RejectReason::UpstreamError,
            Some("h:1"),
        ),
        (
            UpstreamError::Protocol {
                target: t.clone(),
                source: "x".into(),
            },
            RejectReason::UpstreamError,
            Some("h:1"),
        ),
    ];
    for (e, reason, target) in cases {
        assert_eq!(e.reason(), reason);
        assert_eq!(e.target(), target);
    }
}

#[test]
fn an_https_target_with_an_unusable_ca_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("portcullis-upstream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A PEM file holding no certificate: compilation or the pool must refuse it.
    std::fs::write(dir.join("empty.pem"), "").unwrap();
    let yaml =
        "upstreams: { u: { targets: [ \"https://127.0.0.1:1\" ], tls: { ca_file: empty.pem } } }";
    let refused = match portcullis_config::load_str(yaml, &dir) {
        Err(_) => true,
        Ok(c) => UpstreamPool::new(&c.upstreams[0], None).is_err(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(refused);
}

// ---------------------------------------------------------------------------------------------
// forwarding over real sockets

#[tokio::test]
async fn round_robin_alternates_exactly_between_two_targets() {
    let a = serve(|_| async { text(200, "a") }).await;
    let b = serve(|_| async { text(200, "b") }).await;
    let p = pool_of(&[a.target(), b.target()], "");
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = p.forward(get("/"), RETRYABLE).await.unwrap();
        assert_eq!(r.attempts, 1);
        let name = body_text(r.response).await;
        let expected = if name == "a" {
            a.authority()
        } else {
            b.authority()
        };
        assert_eq!(&*r.target, expected);
        seen.push(name);
    }
    assert_eq!(seen, ["a", "b", "a", "b", "a", "b"]);
    assert_eq!((a.hits(), b.hits()), (3, 3));
    assert_eq!(in_flight_total(&p), 0);
}

#[tokio::test]
async fn weighted_round_robin_splits_traffic_by_weight() {
    let a = serve(|_| async { text(200, "a") }).await;
    let b = serve(|_| async { text(200, "b") }).await;
    let p = pool_of(&[a.weighted(1), b.weighted(3)], "");
    for _ in 0..8 {
        let r = p.forward(get("/"), RETRYABLE).await.unwrap();
        body_text(r.response).await;
    }
    assert_eq!((a.hits(), b.hits()), (2, 6));
}

#[tokio::test]
async fn least_requests_prefers_the_idle_target() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = |gate: Arc<tokio::sync::Semaphore>| {
        move |req: Request<Incoming>| {
            let gate = gate.clone();
            async move {
                if req.uri().path() == "/hold" {
                    let _permit = gate.acquire().await;
                }
                text(200, "ok")
            }
        }
    };
    let a = serve(handler(gate.clone())).await;
    let b = serve(handler(gate.clone())).await;
    let p = pool_of(&[a.target(), b.target()], "balance: least_requests");

    let held = tokio::spawn({
        let p = p.clone();
        async move { p.forward(get("/hold"), RETRYABLE).await }
    });
    assert!(eventually(|| a.hits() + b.hits() == 1).await);
    let busy = if a.hits() == 1 { 0 } else { 1 };
    assert_eq!(p.health_snapshot()[busy].in_flight, 1);
    let idle_authority = p.health_snapshot()[1 - busy].authority.clone();
    for _ in 0..10 {
        let r = p.forward(get("/quick"), RETRYABLE).await.unwrap();
        assert_eq!(r.target, idle_authority);
        body_text(r.response).await;
    }
    gate.add_permits(1);
    let r = held.await.unwrap().unwrap();
    body_text(r.response).await;
    assert_eq!(in_flight_total(&p), 0);
}

#[tokio::test]
async fn a_dead_target_is_ejected_then_recovers_after_ejection_time() {
    let live = serve(|_| async { text(200, "live") }).await;
    // Revived below on the same address. The port stays this test's meanwhile: bound by a
    // socket that does not listen yet (connections to it are refused), not freed for another
    // test to take.
    let dead_socket = tokio::net::TcpSocket::new_v4().unwrap();
    dead_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = dead_socket.local_addr().unwrap();
    // An ejection that outlasts the requests below on a loaded machine; `eventually` waits
    // past it.
    let p = pool_of(
        &[format!("\"http://{dead}\""), live.target()],
        "retries: { attempts: 0 }, passive_health: { consecutive_failures: 1, ejection_time: 2s }",
    );
    // Round robin starts at the first target: refused, and ejected at once.
    let e = p.forward(get("/"), RETRYABLE).await.err().unwrap();
    assert!(matches!(e, UpstreamError::Connect { .. }), "{e}");
    assert_eq!(e.target(), Some(dead.to_string().as_str()));
    assert!(p.health_snapshot()[0].ejected);
    assert!(p.has_eligible_target());
    // Meanwhile everything goes to the live target.
    for _ in 0..10 {
        let r = p.forward(get("/"), RETRYABLE).await.unwrap();
        assert_eq!(&*r.target, live.authority());
        body_text(r.response).await;
    }
    assert_eq!(live.hits(), 10);
    // The dead target comes back to life on the same address; after the ejection time it gets
    // traffic again.
    let revived = serve_on(dead_socket.listen(64).unwrap(), |_| async {
        text(200, "revived")
    });
    assert!(eventually(|| !p.health_snapshot()[0].ejected).await);
    let mut reached = false;
    for _ in 0..4 {
        let r = p.forward(get("/"), RETRYABLE).await.unwrap();
        reached |= *r.target == dead.to_string();
        body_text(r.response).await;
    }
    assert!(reached);
    assert!(revived.hits() >= 1);
}

/// The last eligible target is never ejected: a single target answering 503 keeps getting the
/// requests (and its answers are passed on), where ejecting it would have made the gateway
/// answer every request 503 `no_healthy_upstream` itself for the whole ejection time.
#[tokio::test]
async fn the_last_eligible_target_is_never_ejected() {
    let s = serve(|_| async { text(503, "down") }).await;
    let p = pool_of(
        &[s.target()],
        "retries: { attempts: 0 }, passive_health: { consecutive_failures: 1, ejection_time: 60s }",
    );
    for hits in 1..=3 {
        // A 503 is the target's answer (returned as is) and a passive failure.
        let r = p.forward(get("/"), RETRYABLE).await.unwrap();
        assert_eq!(r.response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body_text(r.response).await, "down");
        assert!(p.has_eligible_target());
        assert!(!p.health_snapshot()[0].ejected);
        assert_eq!(s.hits(), hits);
    }
    assert_eq!(in_flight_total(&p), 0);
}

/// One path that makes every backend answer 503 cannot empty the pool: each request counts
/// against one target only (its retries failing the same way are taken for the request's
/// doing), at most half the targets are ejected, and never the last eligible one.
#[tokio::test]
async fn a_client_cannot_eject_every_target() {
    let boom = |req: Request<Incoming>| async move {
        if req.uri().path() == "/boom" {
            text(503, "boom")
        } else {
            text(200, "fine")
        }
    };
    let (a, b, c) = (serve(boom).await, serve(boom).await, serve(boom).await);
    // The defaults: one retry on 502/503, five failures in a row eject for 30 s.
    let p = pool_of(&[a.target(), b.target(), c.target()], "");
    for _ in 0..8 {
        let r = p.forward(get("/boom"), RETRYABLE).await.unwrap();
        assert_eq!(r.response.status(), StatusCode::SERVICE_UNAVAILABLE);
        body_text(r.response).await;
    }
    assert!(p.has_eligible_target());
    let failures: u32 = p
        .health_snapshot()
        .iter()
        .map(|t| t.consecutive_failures)
        .sum();
    assert_eq!(failures, 8, "one count per request");
    // However long it goes on.
    for _ in 0..100 {
        let r = p.forward(get("/boom"), RETRYABLE).await.unwrap();
        body_text(r.response).await;
    }
    let ejected = p.health_snapshot().iter().filter(|t| t.ejected).count();
    assert_eq!(ejected, 1, "{:?}", p.health_snapshot());
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(body_text(r.response).await, "fine");
}

#[tokio::test]
async fn active_health_checks_follow_the_health_endpoint() {
    let a_up = Arc::new(AtomicBool::new(true));
    let a_checks = Arc::new(AtomicUsize::new(0));
    let a_check_host = Arc::new(Mutex::new(None::<String>));
    let a = serve({
        let (up, checks, host) = (a_up.clone(), a_checks.clone(), a_check_host.clone());
        move |req: Request<Incoming>| {
            let healthz = req.uri().path() == "/healthz";
            if healthz {
                checks.fetch_add(1, Ordering::SeqCst);
                *host.lock().unwrap() = req
                    .headers()
                    .get(HOST)
                    .map(|v| v.to_str().unwrap().to_string());
            }
            let status = if healthz && !up.load(Ordering::SeqCst) {
                503
            } else {
                200
            };
            async move { text(status, "a") }
        }
    })
    .await;
    let b = serve(|_| async { text(200, "b") }).await;
    let p = pool_of(
        &[a.target(), b.target()],
        "passive_health: { consecutive_failures: 0 }, health_check: { path: /healthz, interval: 50ms, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 2 }",
    );
    let checks = p.start_health_checks();
    assert_eq!(checks.len(), 2);
    assert!(eventually(|| a_checks.load(Ordering::SeqCst) >= 2).await);
    assert!(p.health_snapshot().iter().all(|t| t.healthy));
    assert_eq!(
        a_check_host.lock().unwrap().as_deref(),
        Some(a.authority().as_str())
    );

    a_up.store(false, Ordering::SeqCst);
    assert!(eventually(|| !p.health_snapshot()[0].healthy).await);
    assert!(p.has_eligible_target());
    for _ in 0..6 {
        let r = p.forward(get("/"), RETRYABLE).await.unwrap();
        assert_eq!(&*r.target, b.authority());
        body_text(r.response).await;
    }

    a_up.store(true, Ordering::SeqCst);
    assert!(eventually(|| p.health_snapshot()[0].healthy).await);
    let mut to_a = 0;
    for _ in 0..4 {
        let r = p.forward(get("/"), RETRYABLE).await.unwrap();
        to_a += usize::from(*r.target == a.authority());
        body_text(r.response).await;
    }
    assert_eq!(to_a, 2);

    // Dropping the guard stops the checks.
    drop(checks);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = a_checks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a_checks.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn without_health_check_no_task_runs() {
    let p = pool("upstreams: { u: { targets: [ \"http://127.0.0.1:1\" ] } }");
    assert!(p.start_health_checks().is_empty());
}

#[tokio::test]
async fn a_get_is_retried_on_connect_error_on_the_other_target() {
    let live = serve(|_| async { text(200, "live") }).await;
    let dead = dead_addr();
    let p = pool_of(
        &[format!("\"http://{dead}\""), live.target()],
        "retries: { attempts: 1 }, passive_health: { consecutive_failures: 0 }",
    );
    for _ in 0..3 {
        let r = p.forward(get("/"), RETRYABLE).await.unwrap();
        assert_eq!(&*r.target, live.authority());
        assert_eq!(r.response.status(), StatusCode::OK);
        // Every request starts at the dead target (the cursor moves twice per request).
        assert_eq!(r.attempts, 2);
        body_text(r.response).await;
    }
    assert_eq!(live.hits(), 3);
    assert_eq!(in_flight_total(&p), 0);
}

#[tokio::test]
async fn a_retryable_status_is_retried_elsewhere_and_the_last_answer_kept() {
    let bad = serve(|_| async { text(503, "busy") }).await;
    let good = serve(|_| async { text(200, "fine") }).await;
    let p = pool_of(&[bad.target(), good.target()], "retries: { attempts: 1 }");
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!((r.attempts, r.response.status()), (2, StatusCode::OK));
    assert_eq!(&*r.target, good.authority());
    body_text(r.response).await;
    assert_eq!((bad.hits(), good.hits()), (1, 1));

    // A single target answering 503: nowhere else to go, its answer returned as it is (a
    // retry to the target that just failed would only double its load).
    let only = pool_of(&[bad.target()], "retries: { attempts: 2 }");
    let r = only.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(
        (r.attempts, r.response.status()),
        (1, StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(body_text(r.response).await, "busy");
    assert_eq!(bad.hits(), 2);
    assert_eq!(in_flight_total(&only), 0);

    // Two targets failing alike, five retries allowed: each tried once.
    let bad2 = serve(|_| async { text(503, "busy too") }).await;
    let both = pool_of(&[bad.target(), bad2.target()], "retries: { attempts: 5 }");
    let r = both.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(
        (r.attempts, r.response.status()),
        (2, StatusCode::SERVICE_UNAVAILABLE)
    );
    body_text(r.response).await;
    assert_eq!((bad.hits(), bad2.hits()), (3, 1));
}

/// An answer with `Retry-After` is the upstream asking for less traffic: not retried.
#[tokio::test]
async fn an_answer_with_retry_after_is_not_retried() {
    let busy = serve(|_| async {
        Response::builder()
            .status(503)
            .header("retry-after", "5")
            .body(full("later"))
            .unwrap()
    })
    .await;
    let good = serve(|_| async { text(200, "fine") }).await;
    let p = pool_of(&[busy.target(), good.target()], "retries: { attempts: 1 }");
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(
        (r.attempts, r.response.status()),
        (1, StatusCode::SERVICE_UNAVAILABLE)
    );
    body_text(r.response).await;
    assert_eq!((busy.hits(), good.hits()), (1, 0));
}

/// The retry budget: retries under way at once are at most `budget_percent` of the requests
/// under way, or `min_concurrent`. With neither, nothing is retried; a permit taken and
/// dropped is given back.
#[tokio::test]
async fn retries_are_held_to_the_budget() {
    let bad = serve(|_| async { text(503, "busy") }).await;
    let good = serve(|_| async { text(200, "fine") }).await;
    let none = pool_of(
        &[bad.target(), good.target()],
        "retries: { attempts: 1, budget_percent: 0, min_concurrent: 0 }",
    );
    let r = none.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(
        (r.attempts, r.response.status()),
        (1, StatusCode::SERVICE_UNAVAILABLE)
    );
    body_text(r.response).await;
    assert_eq!(good.hits(), 0);

    let one = pool_of(
        &[bad.target(), good.target()],
        "retries: { attempts: 1, budget_percent: 0, min_concurrent: 1 }",
    );
    {
        let held = one.retry_permit().expect("the first permit");
        assert!(one.retry_permit().is_none(), "one at a time");
        drop(held);
    }
    let r = one.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!((r.attempts, r.response.status()), (2, StatusCode::OK));
    body_text(r.response).await;
    assert_eq!(
        one.retrying.load(Ordering::Relaxed),
        0,
        "the permit was given back"
    );

    // A request's second retry is not held back by its own first one.
    let bad2 = serve(|_| async { text(503, "busy too") }).await;
    let three = pool_of(
        &[bad.target(), bad2.target(), good.target()],
        "retries: { attempts: 2, budget_percent: 0, min_concurrent: 1 }",
    );
    let r = three.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!((r.attempts, r.response.status()), (3, StatusCode::OK));
    body_text(r.response).await;
    assert_eq!(three.retrying.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_post_is_not_retried() {
    let live = serve(|_| async { text(200, "live") }).await;
    let dead = dead_addr();
    let p = pool_of(
        &[format!("\"http://{dead}\""), live.target()],
        "retries: { attempts: 3 }, passive_health: { consecutive_failures: 0 }",
    );
    let mut req = get("/");
    *req.method_mut() = Method::POST;
    // The engine marks only idempotent methods retryable.
    let e = p.forward(req, NOT_RETRYABLE).await.err().unwrap();
    assert!(matches!(e, UpstreamError::Connect { .. }), "{e}");
    assert_eq!(e.target(), Some(dead.to_string().as_str()));
    assert_eq!(live.hits(), 0);
}

#[tokio::test]
async fn a_request_with_a_body_is_not_retried() {
    let live = serve(|_| async { text(200, "live") }).await;
    let dead = dead_addr();
    let p = pool_of(
        &[format!("\"http://{dead}\""), live.target()],
        "retries: { attempts: 3 }, passive_health: { consecutive_failures: 0 }",
    );
    // A buffered body.
    let mut req = get("/");
    *req.body_mut() = full("payload");
    let e = p.forward(req, RETRYABLE).await.err().unwrap();
    assert!(matches!(e, UpstreamError::Connect { .. }), "{e}");
    // A streamed body of unknown length: the cursor is back on the dead target.
    let _ = sel(&p, &[]);
    let stream = futures_util::stream::iter(vec![Ok::<_, BoxError>(Frame::data(
        Bytes::from_static(b"chunk"),
    ))]);
    let mut req = get("/");
    *req.body_mut() = StreamBody::new(stream).boxed_unsync();
    let e = p.forward(req, RETRYABLE).await.err().unwrap();
    assert!(matches!(e, UpstreamError::Connect { .. }), "{e}");
    assert_eq!(live.hits(), 0);
    assert_eq!(in_flight_total(&p), 0);
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let slow = serve(|_| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        text(200, "late")
    })
    .await;
    let p = pool_of(&[slow.target()], "retries: { attempts: 2 }");
    let opts = ForwardOpts {
        timeout: Duration::from_millis(100),
        retryable: true,
        timer: None,
        extra: &[],
        answer_room: ANSWER_ROOM,
        request_body: None,
    };
    let e = p.forward(get("/"), opts).await.err().unwrap();
    assert!(matches!(e, UpstreamError::Timeout { .. }), "{e}");
    assert_eq!(e.reason(), RejectReason::UpstreamTimeout);
    assert_eq!(e.target(), Some(slow.authority().as_str()));
    // Timeouts are not retried: the upstream may be acting on the request.
    assert_eq!(slow.hits(), 1);
    assert_eq!(in_flight_total(&p), 0);
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 1);
}

/// A connection's kept response timer times each request afresh: answers within the timeout
/// pass however long the connection lived, a slow one times out, and the timer that went off
/// is set again for the next request. Real sockets and real time: each answer takes a quarter
/// of the timeout, leaving 750 ms for a loaded machine to be late with it.
#[tokio::test]
async fn a_kept_response_timer_times_each_request_afresh() {
    let up = serve(|req: Request<Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(10)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        text(200, "ok")
    })
    .await;
    let p = pool_of(&[up.target()], "");
    let slot = TimerSlot::default();
    let opts = ForwardOpts {
        timeout: Duration::from_secs(1),
        retryable: true,
        timer: Some(&slot),
        extra: &[],
        answer_room: ANSWER_ROOM,
        request_body: None,
    };
    // Together well past one timeout (1.5 s): each is timed from its own start.
    for _ in 0..6 {
        let r = p.forward(get("/"), opts).await.unwrap();
        assert_eq!(body_text(r.response).await, "ok");
    }
    let e = p.forward(get("/slow"), opts).await.err().unwrap();
    assert!(matches!(e, UpstreamError::Timeout { .. }), "{e}");
    for _ in 0..2 {
        let r = p.forward(get("/"), opts).await.unwrap();
        assert_eq!(body_text(r.response).await, "ok");
    }
    assert!(slot.0.lock().unwrap().is_some(), "the timer is kept");
}

/// Answers with the protocol version it saw, "hello" and trailers echoing the request's
/// `x-echo` trailer (gRPC style).
async fn grpc_like(req: Request<Incoming>) -> Response<BoxBody> {
    let version = format!("{:?}", req.version());
    let collected = req.into_body().collect().await.unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    if let Some(v) = collected.trailers().and_then(|t| t.get("x-echo")) {
        trailers.insert("x-echoed", v.clone());
    }
    let frames = vec![
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers(trailers)),
    ];
    Response::builder()
        .header("x-version", version)
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync())
        .unwrap()
}

#[tokio::test]
async fn http2_prior_knowledge_carries_trailers_both_ways() {
    let s = serve(grpc_like).await;
    let p = pool_of(&[s.target()], "protocol: http2");
    let mut req_trailers = HeaderMap::new();
    req_trailers.insert("x-echo", HeaderValue::from_static("ping"));
    let frames = vec![
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"request"))),
        Ok(Frame::trailers(req_trailers)),
    ];
    let mut req = get("/svc/Method");
    *req.method_mut() = Method::POST;
    *req.body_mut() = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    let r = p.forward(req, NOT_RETRYABLE).await.unwrap();
    assert_eq!(r.response.version(), Version::HTTP_2);
    assert_eq!(r.response.headers()["x-version"], "HTTP/2.0");
    let collected = r.response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-echoed"], "ping");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"));
    assert_eq!(in_flight_total(&p), 0);

    // `auto` in cleartext speaks HTTP/1.1 to the same server.
    let p = pool_of(&[s.target()], "protocol: auto");
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(r.response.headers()["x-version"], "HTTP/1.1");
    body_text(r.response).await;
}

#[tokio::test]
async fn in_flight_lasts_until_the_body_is_consumed_or_dropped() {
    let s = serve(|_| async { text(200, "some body") }).await;
    let p = pool_of(&[s.target()], "");
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    // The head has arrived; the body has not been read.
    assert_eq!(p.health_snapshot()[0].in_flight, 1);
    assert_eq!(body_text(r.response).await, "some body");
    assert_eq!(p.health_snapshot()[0].in_flight, 0);

    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(p.health_snapshot()[0].in_flight, 1);
    drop(r);
    assert_eq!(p.health_snapshot()[0].in_flight, 0);
}

#[tokio::test]
async fn the_host_header_is_preserved_or_set_to_the_target() {
    let s = serve(|req: Request<Incoming>| {
        let host = req
            .headers()
            .get(HOST)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        async move {
            Response::builder()
                .header("x-host", host)
                .body(empty_body())
                .unwrap()
        }
    })
    .await;
    let preserve = pool_of(&[s.target()], "");
    let r = preserve.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(r.response.headers()["x-host"], "example.com");
    let target = pool_of(&[s.target()], "host_header: target");
    let r = target.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(r.response.headers()["x-host"], s.authority().as_str());
}

/// What an upstream saw of a request's host: its `:authority` (the URI's authority; none over
/// HTTP/1.1), every `Host` field, its version and, over TLS, the server name it was asked for.
async fn host_echo(req: Request<Incoming>, sni: Option<String>) -> Response<BoxBody> {
    let authority = req.uri().authority().map(|a| a.to_string());
    let hosts: Vec<&str> = req
        .headers()
        .get_all(HOST)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    Response::builder()
        .header("x-authority", authority.unwrap_or_default())
        .header("x-hosts", hosts.join(","))
        .header("x-version", format!("{:?}", req.version()))
        .header("x-sni", sni.unwrap_or_default())
        .body(empty_body())
        .unwrap()
}

/// Over HTTP/2 the host the upstream is to see is the `:authority` — the client's `Host` with
/// `host_header: preserve`, the target's with `target` — and no `Host` field says otherwise
/// (RFC 9113 §8.3.1; the gateway refuses clients that do it). The connection still goes to the
/// target.
#[tokio::test]
async fn over_http2_the_authority_is_the_host_the_upstream_sees() {
    let s = serve(|req| host_echo(req, None)).await;
    let seen = |r: &UpstreamResponse| {
        let h = r.response.headers();
        let hosts = h["x-hosts"].to_str().unwrap().to_string();
        (h["x-authority"].to_str().unwrap().to_string(), hosts)
    };
    let p = pool_of(&[s.target()], "protocol: http2");
    for host in ["example.com", "api.example.com:8443", "example.com"] {
        let mut req = get("/");
        req.headers_mut()
            .insert(HOST, HeaderValue::from_static(host));
        let r = p.forward(req, RETRYABLE).await.unwrap();
        assert_eq!(r.response.headers()["x-version"], "HTTP/2.0");
        let (authority, hosts) = seen(&r);
        assert_eq!(authority, host);
        assert!(hosts.is_empty(), "{hosts}");
    }
    let p = pool_of(&[s.target()], "protocol: http2, host_header: target");
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(seen(&r), (s.authority(), String::new()));
    // Over HTTP/1.1 nothing changes: the client's Host, no authority.
    let p = pool_of(&[s.target()], "protocol: http1");
    let mut req = get("/");
    let chunks =
        futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x")))]);
    *req.method_mut() = Method::PUT;
    *req.body_mut() = StreamBody::new(chunks).boxed_unsync();
    let r = p.forward(req, NOT_RETRYABLE).await.unwrap();
    assert_eq!(seen(&r), (String::new(), "example.com".to_string()));
    assert_eq!(s.hits(), 5);
}

/// A TLS acceptor with a fresh self-signed certificate for `localhost` offering `alpn`, and a
/// directory holding that certificate as `ca.pem` (for the pool's `tls.ca_file`).
fn self_signed_acceptor(
    label: &str,
    alpn: &[&[u8]],
) -> (tokio_rustls::TlsAcceptor, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "portcullis-upstream-{label}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), cert.cert.pem()).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
        )
        .unwrap();
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (tokio_rustls::TlsAcceptor::from(Arc::new(server)), dir)
}

/// Over TLS (`protocol: auto`, ALPN picks h2) the connection still goes to the target, its
/// name the server name (SNI) and the name the certificate is checked for, while the
/// `:authority` is the client's host — and the `Host` kept for HTTP/1.1 is the same.
#[tokio::test]
async fn over_tls_the_target_is_dialled_and_named_whatever_the_authority() {
    let (acceptor, dir) = self_signed_acceptor("sni", &[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_string);
                let svc = hyper::service::service_fn(move |req| {
                    let sni = sni.clone();
                    async move { Ok::<_, Infallible>(host_echo(req, sni).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let yaml = format!(
        "upstreams: {{ u: {{ targets: [ \"https://localhost:{port}\" ], tls: {{ ca_file: ca.pem }} }} }}"
    );
    let c = portcullis_config::load_str(&yaml, &dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let p = UpstreamPool::new(&c.upstreams[0], None).unwrap();
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    accept.abort();
    let h = r.response.headers();
    assert_eq!(h["x-version"], "HTTP/2.0");
    assert_eq!(h["x-sni"], "localhost");
    assert_eq!(h["x-authority"], "example.com");
    assert_eq!(h["x-hosts"], "example.com");
}

/// `health_check.host` is the checks' `Host` (over HTTP/2 their `:authority`, without a `Host`
/// field), for targets that route by virtual host; without it, the target's `host:port`.
#[tokio::test]
async fn health_checks_send_the_configured_host() {
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let s = serve({
        let seen = seen.clone();
        move |req: Request<Incoming>| {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let host = req
                .headers()
                .get(HOST)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            // A virtual host: the checks pass only for the right name.
            let right = host == "internal.example" || authority == "internal.example";
            seen.lock().unwrap().push((authority, host));
            async move { text(if right { 200 } else { 421 }, "") }
        }
    })
    .await;
    let checks = "health_check: { interval: 50ms, host: internal.example, unhealthy_threshold: 1 }";
    for protocol in ["http1", "http2"] {
        seen.lock().unwrap().clear();
        let p = pool_of(&[s.target()], &format!("protocol: {protocol}, {checks}"));
        let _checks = p.start_health_checks();
        assert!(eventually(|| seen.lock().unwrap().len() >= 3).await);
        assert!(p.health_snapshot()[0].healthy, "{protocol}");
        let want = if protocol == "http1" {
            (String::new(), "internal.example".to_string())
        } else {
            ("internal.example".to_string(), String::new())
        };
        assert!(
            seen.lock().unwrap().iter().all(|s| *s == want),
            "{protocol}: {:?}",
            seen.lock().unwrap()
        );
    }
    // Without it: the target's `host:port`, which this virtual host does not serve.
    let p = pool_of(
        &[s.target()],
        "health_check: { interval: 50ms, unhealthy_threshold: 1 }",
    );
    let _checks = p.start_health_checks();
    assert!(eventually(|| !p.health_snapshot()[0].healthy).await);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|(_, host)| *host == s.authority())
    );
}

#[tokio::test]
async fn path_and_query_reach_the_target() {
    let s = serve(|req: Request<Incoming>| {
        let pq = req.uri().path_and_query().unwrap().to_string();
        async move {
            Response::new(
                Full::new(Bytes::from(pq))
                    .map_err(|n| match n {})
                    .boxed_unsync(),
            )
        }
    })
    .await;
    let p = pool_of(&[s.target()], "");
    let r = p.forward(get("/a/b?c=d&e"), RETRYABLE).await.unwrap();
    assert_eq!(body_text(r.response).await, "/a/b?c=d&e");
}

#[tokio::test]
async fn a_101_keeps_its_upgrade_handle() {
    let s = serve(|mut req: Request<Incoming>| {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let _ = io.write_all(b"hi").await;
                let _ = io.shutdown().await;
            }
        });
        async {
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(CONNECTION, "upgrade")
                .header(UPGRADE, "test")
                .body(empty_body())
                .unwrap()
        }
    })
    .await;
    let p = pool_of(&[s.target()], "");
    assert_eq!(upgraded(&p, get("/")).await, b"hi");
}

/// Sends `req` asking for an upgrade (`Upgrade: test`), expects the switch, and reads what the
/// tunnel brings until it ends.
async fn upgraded(p: &UpstreamPool, mut req: Request<BoxBody>) -> Vec<u8> {
    req.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    req.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static("test"));
    let mut r = p.forward(req, NOT_RETRYABLE).await.unwrap();
    assert_eq!(r.response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let up = hyper::upgrade::on(&mut r.response).await.unwrap();
    let mut io = TokioIo::new(up);
    let mut got = Vec::new();
    io.read_to_end(&mut got).await.unwrap();
    got
}

// ---------------------------------------------------------------------------------------------
// the direct HTTP/1.1 client (bodiless requests to cleartext targets), against a raw upstream
// that answers with scripted bytes

/// What the raw upstream does with one request.
#[derive(Clone, Copy)]
enum Answer {
    /// Writes these bytes and keeps the connection.
    Reply(&'static str),
    /// Writes these bytes and closes.
    ReplyClose(&'static str),
    /// Closes without a word.
    Close,
    /// Writes these bytes as soon as the head is in, reads nothing of the body, and holds the
    /// connection open.
    ReplyUnread(&'static str),
    /// Writes `100 Continue` as soon as the head is in, then reads the body and answers `200 ok`.
    Continue,
    /// Writes these pieces one by one, flushed, with a pause before each, and keeps the
    /// connection.
    Pieces(&'static [&'static str]),
    /// Closes as soon as the head is in, without reading the body or answering.
    CloseAtHead,
}

/// An upstream that reads request heads and answers each with the next scripted answer (then
/// `200 ok` with a length once the script is done), counting connections and keeping heads.
struct RawServer {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl RawServer {
    async fn start(script: &[Answer]) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(
            script
                .iter()
                .copied()
                .collect::<std::collections::VecDeque<_>>(),
        ));
        let (c, h) = (conns.clone(), heads.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (heads, script) = (h.clone(), script.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head: Vec<u8> = buf.drain(..end).collect();
                        let head = String::from_utf8(head).unwrap();
                        let answer = script.lock().unwrap().pop_front();
                        if let Some(Answer::CloseAtHead) = answer {
                            heads.lock().unwrap().push(head);
                            return;
                        }
                        if let Some(Answer::ReplyUnread(s)) = answer {
                            heads.lock().unwrap().push(head);
                            let _ = stream.write_all(s.as_bytes()).await;
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            return;
                        }
                        if let Some(Answer::Continue) = answer
                            && stream
                                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                                .await
                                .is_err()
                        {
                            return;
                        }
                        // A body (by Content-Length) is kept after its head.
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (n, v) = l.split_once(':')?;
                                n.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        while buf.len() < len {
                            let mut chunk = [0u8; 65536];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<u8> = buf.drain(..len).collect();
                        heads
                            .lock()
                            .unwrap()
                            .push(head + &String::from_utf8_lossy(&body));
                        match answer.unwrap_or(Answer::Reply(
                            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        )) {
                            Answer::Reply(s) => {
                                if stream.write_all(s.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            Answer::ReplyClose(s) => {
                                let _ = stream.write_all(s.as_bytes()).await;
                                return;
                            }
                            Answer::Close => return,
                            Answer::Pieces(pieces) => {
                                for piece in pieces {
                                    tokio::time::sleep(Duration::from_millis(30)).await;
                                    if stream.write_all(piece.as_bytes()).await.is_err()
                                        || stream.flush().await.is_err()
                                    {
                                        return;
                                    }
                                }
                            }
                            Answer::ReplyUnread(_) | Answer::CloseAtHead => unreachable!(),
                            Answer::Continue => {
                                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if stream.write_all(ok).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        RawServer {
            addr,
            conns,
            heads,
            accept,
        }
    }

    fn pool(&self) -> Arc<UpstreamPool> {
        pool_of(&[format!("\"http://{}\"", self.addr)], "")
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn idle_of(p: &UpstreamPool) -> usize {
    p.targets[0].idle.len()
}

fn request(method: Method, path: &str) -> Request<BoxBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "example.com")
        .body(empty_body())
        .unwrap()
}

/// Data and trailers of a body, or its error.
async fn collect(r: Response<BoxBody>) -> Result<(String, Option<HeaderMap>), String> {
    let c = r.into_body().collect().await.map_err(|e| e.to_string())?;
    let trailers = c.trailers().cloned();
    Ok((String::from_utf8(c.to_bytes().to_vec()).unwrap(), trailers))
}

#[tokio::test]
async fn direct_a_length_delimited_answer_keeps_the_connection() {
    let s = RawServer::start(&[Answer::Reply(
        "HTTP/1.1 200 OK\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\nhello",
    )])
    .await;
    let p = s.pool();
    for i in 0..3 {
        let r = p.forward(get("/x?y=1"), RETRYABLE).await.unwrap();
        assert_eq!(r.response.status(), StatusCode::OK);
        if i == 0 {
            let values: Vec<_> = r.response.headers().get_all("x-a").iter().collect();
            assert_eq!(values, ["1", "2"]);
        }
        let want = if i == 0 { "hello" } else { "ok" };
        assert_eq!(collect(r.response).await.unwrap().0, want);
        assert_eq!(idle_of(&p), 1);
    }
    assert_eq!(s.conns(), 1, "one connection carried every request");
    let heads = s.heads();
    assert_eq!(heads.len(), 3);
    assert!(
        heads[0].starts_with("GET /x?y=1 HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(heads[0].contains("host: example.com\r\n"), "{}", heads[0]);
}

#[tokio::test]
async fn direct_an_answer_in_pieces_is_read_whole() {
    // Each read takes what has arrived and the next waits for more: a head cut mid-line and
    // mid-terminator, a body in three parts, then a chunked answer in pieces on the same
    // connection.
    const LENGTH: &[&str] = &[
        "HTTP/1.1 200 OK\r\ncont",
        "ent-length: 11\r\nx-a: 1\r",
        "\n\r\nhel",
        "lo wo",
        "rld",
    ];
    const CHUNKED: &[&str] = &[
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r",
        "\nabc\r\n",
        "2\r\nde\r\n0\r\n",
        "\r\n",
    ];
    let s = RawServer::start(&[Answer::Pieces(LENGTH), Answer::Pieces(CHUNKED)]).await;
    let p = s.pool();
    let r = p.forward(get("/a"), RETRYABLE).await.unwrap();
    assert_eq!(r.response.headers()["x-a"], "1");
    assert_eq!(collect(r.response).await.unwrap().0, "hello world");
    let r = p.forward(get("/b"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "abcde");
    let r = p.forward(get("/c"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    assert_eq!(s.conns(), 1, "one connection carried every answer");
}

#[tokio::test]
async fn direct_the_request_head_is_written_as_given() {
    let s = RawServer::start(&[]).await;
    // host_header: target replaces the client's Host; a body-carrying method says its length.
    let p = pool_of(&[format!("\"http://{}\"", s.addr)], "host_header: target");
    let mut req = request(Method::POST, "/p");
    req.headers_mut()
        .insert("x-b", HeaderValue::from_static("v"));
    let r = p.forward(req, NOT_RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    let r = p
        .forward(request(Method::DELETE, "/d"), NOT_RETRYABLE)
        .await
        .unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    let heads = s.heads();
    let want = format!(
        "POST /p HTTP/1.1\r\nhost: {}\r\nx-b: v\r\ncontent-length: 0\r\n\r\n",
        s.addr
    );
    assert_eq!(heads[0], want);
    assert_eq!(
        heads[1],
        format!("DELETE /d HTTP/1.1\r\nhost: {}\r\n\r\n", s.addr)
    );
}

/// The gateway's own fields (`ForwardOpts::extra`) reach the target after the request's, from
/// either client.
#[tokio::test]
async fn the_gateway_fields_reach_the_target_through_either_client() {
    let own = b"x-forwarded-for: 192.0.2.7\r\n\
        traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
    let opts = ForwardOpts {
        extra: own,
        answer_room: ANSWER_ROOM,
        ..NOT_RETRYABLE
    };
    // The direct client writes them into the head.
    let s = RawServer::start(&[]).await;
    let p = pool_of(&[format!("\"http://{}\"", s.addr)], "");
    let mut req = request(Method::GET, "/g");
    req.headers_mut()
        .insert("x-b", HeaderValue::from_static("v"));
    let r = p.forward(req, opts).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    assert_eq!(
        s.heads()[0],
        "GET /g HTTP/1.1\r\nhost: example.com\r\nx-b: v\r\nx-forwarded-for: 192.0.2.7\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"
    );
    // hyper's client (a body of unknown length) gets them in the map.
    let srv = serve(|req: Request<Incoming>| {
        let got = ["x-b", "x-forwarded-for", "traceparent"]
            .map(|n| {
                req.headers()
                    .get_all(n)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_string())
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .join(";");
        async move {
            Response::new(
                Full::new(Bytes::from(got))
                    .map_err(|n| match n {})
                    .boxed_unsync(),
            )
        }
    })
    .await;
    let p = pool_of(&[srv.target()], "");
    let mut req = request(Method::POST, "/p");
    req.headers_mut()
        .insert("x-b", HeaderValue::from_static("v"));
    let chunks =
        futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x")))]);
    *req.body_mut() = StreamBody::new(chunks).boxed_unsync();
    let r = p.forward(req, opts).await.unwrap();
    assert_eq!(
        body_text(r.response).await,
        "v;192.0.2.7;00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
}

#[tokio::test]
async fn direct_a_chunked_answer_with_extensions_and_trailers() {
    let s = RawServer::start(&[Answer::Reply(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
         5;ext=1\r\nhello\r\n1 \r\n,\r\nA\r\n world and\r\n0\r\nx-checksum: abc\r\n\r\n",
    )])
    .await;
    let p = s.pool();
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    let (body, trailers) = collect(r.response).await.unwrap();
    assert_eq!(body, "hello, world and");
    assert_eq!(trailers.unwrap()["x-checksum"], "abc");
    assert_eq!(
        idle_of(&p),
        1,
        "a chunked answer read to its end keeps the connection"
    );
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    assert_eq!(s.conns(), 1);
}

#[tokio::test]
async fn direct_transfer_encoding_overrides_content_length_and_ends_the_connection() {
    let s = RawServer::start(&[Answer::Reply(
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    )])
    .await;
    let p = s.pool();
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert!(r.response.headers().get(CONTENT_LENGTH).is_none());
    assert_eq!(collect(r.response).await.unwrap().0, "ab");
    assert_eq!(
        idle_of(&p),
        0,
        "an answer with both framings is not trusted with another request"
    );
}

#[tokio::test]
async fn direct_conflicting_lengths_are_a_protocol_error() {
    let s = RawServer::start(&[Answer::Reply(
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
    )])
    .await;
    let p = s.pool();
    let err = p.forward(get("/"), RETRYABLE).await.err().unwrap();
    assert!(matches!(err, UpstreamError::Protocol { .. }), "{err}");
    assert!(
        err.to_string().contains("conflicting Content-Length"),
        "{err}"
    );
    assert_eq!(err.reason(), RejectReason::UpstreamError);
    assert_eq!(idle_of(&p), 0);
    // Repeated equal values (also as a list) are one length.
    let s = RawServer::start(&[Answer::Reply(
        "HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\nabc",
    )])
    .await;
    let r = s.pool().forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "abc");
}

#[tokio::test]
async fn direct_an_answer_without_length_is_read_to_the_close() {
    let s = RawServer::start(&[Answer::ReplyClose("HTTP/1.1 200 OK\r\n\r\nall of it")]).await;
    let p = s.pool();
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "all of it");
    assert_eq!(idle_of(&p), 0);
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    assert_eq!(s.conns(), 2);
}

/// Informational answers without end are a protocol error (a few are skipped).
#[tokio::test]
async fn direct_informational_answers_are_bounded() {
    let storm: &'static str = Box::leak(
        format!(
            "{}HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 100 Continue\r\n\r\n".repeat(17)
        )
        .into_boxed_str(),
    );
    let few: &'static str = Box::leak(
        format!(
            "{}HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n".repeat(16)
        )
        .into_boxed_str(),
    );
    let s = RawServer::start(&[Answer::Reply(storm)]).await;
    let err = s.pool().forward(get("/"), RETRYABLE).await.err().unwrap();
    assert!(err.to_string().contains("informational"), "{err}");
    assert_eq!(err.reason(), RejectReason::UpstreamError);
    let s = RawServer::start(&[Answer::Reply(few)]).await;
    let r = s.pool().forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
}

#[tokio::test]
async fn direct_bodiless_answers_keep_the_connection() {
    let s = RawServer::start(&[
        Answer::Reply("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        Answer::Reply("HTTP/1.1 204 No Content\r\n\r\n"),
        Answer::Reply("HTTP/1.1 304 Not Modified\r\netag: \"a\"\r\n\r\n"),
        Answer::Reply("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\n!"),
    ])
    .await;
    let p = s.pool();
    let r = p
        .forward(request(Method::HEAD, "/"), RETRYABLE)
        .await
        .unwrap();
    assert_eq!(r.response.headers()[CONTENT_LENGTH], "0");
    assert!(r.response.body().is_end_stream());
    assert_eq!(collect(r.response).await.unwrap().0, "");
    for status in [204, 304] {
        let r = p.forward(get("/"), RETRYABLE).await.unwrap();
        assert_eq!(r.response.status().as_u16(), status);
        assert_eq!(collect(r.response).await.unwrap().0, "");
    }
    // Informational answers are skipped; the final one is returned.
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(r.response.status(), StatusCode::CREATED);
    assert!(r.response.headers().get("link").is_none());
    assert_eq!(collect(r.response).await.unwrap().0, "!");
    assert_eq!(s.conns(), 1);
    assert_eq!(idle_of(&p), 1);
}

/// An answer without a body (to a HEAD, a 204, a 304) that announces one is passed on as it
/// came, but its connection is closed: a server that sends the body anyway, later, would have
/// it read as the next request's answer (another client's).
#[tokio::test]
async fn direct_bodiless_answers_that_announce_a_body_end_the_connection() {
    let s = RawServer::start(&[
        Answer::Reply("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"),
        Answer::Reply("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
        Answer::Reply("HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n"),
        Answer::Reply("HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n"),
    ])
    .await;
    let p = s.pool();
    for (method, status) in [
        (Method::HEAD, 200),
        (Method::HEAD, 200),
        (Method::GET, 304),
        (Method::GET, 204),
    ] {
        let r = p.forward(request(method, "/"), RETRYABLE).await.unwrap();
        assert_eq!(r.response.status().as_u16(), status);
        assert!(r.response.body().is_end_stream());
        assert_eq!(collect(r.response).await.unwrap().0, "");
        assert_eq!(idle_of(&p), 0, "{status}");
    }
    assert_eq!(s.conns(), 4);
    // The announced length is passed on (a HEAD's is the GET's).
    let s = RawServer::start(&[Answer::Reply(
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
    )])
    .await;
    let r = s
        .pool()
        .forward(request(Method::HEAD, "/"), RETRYABLE)
        .await
        .unwrap();
    assert_eq!(r.response.headers()[CONTENT_LENGTH], "100");
}

/// A `Connection` value with bytes outside ASCII is read by its elements all the same: `close`
/// ends the connection, a field it names does not reach the client.
#[tokio::test]
async fn direct_a_connection_value_with_bytes_outside_ascii_is_still_read() {
    let s = RawServer::start(&[
        Answer::Reply("HTTP/1.1 200 OK\r\nconnection: close, \u{e9}\r\ncontent-length: 1\r\n\r\na"),
        Answer::Reply(
            "HTTP/1.1 200 OK\r\nconnection: x-secret, \u{e9}\r\nx-secret: 1\r\nx-kept: 2\r\ncontent-length: 1\r\n\r\nb",
        ),
    ])
    .await;
    let p = s.pool();
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "a");
    assert_eq!(idle_of(&p), 0, "the target said close");
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert!(r.response.headers().get("x-secret").is_none());
    assert_eq!(r.response.headers()["x-kept"], "2");
    assert_eq!(collect(r.response).await.unwrap().0, "b");
    assert_eq!(idle_of(&p), 1);
    assert_eq!(s.conns(), 2);
}

#[tokio::test]
async fn direct_close_and_http10_answers_end_the_connection() {
    let s = RawServer::start(&[
        Answer::Reply("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na"),
        Answer::Reply("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nb"),
    ])
    .await;
    let p = s.pool();
    for want in ["a", "b"] {
        let r = p.forward(get("/"), RETRYABLE).await.unwrap();
        assert_eq!(collect(r.response).await.unwrap().0, want);
        assert_eq!(idle_of(&p), 0);
    }
    assert_eq!(s.conns(), 2);
}

#[tokio::test]
async fn direct_a_body_dropped_early_closes_its_connection() {
    let s = RawServer::start(&[Answer::Reply(
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
    )])
    .await;
    let p = s.pool();
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    drop(r);
    assert_eq!(idle_of(&p), 0);
    assert_eq!(in_flight_total(&p), 0);
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    assert_eq!(s.conns(), 2);
}

#[tokio::test]
async fn direct_broken_answers_are_protocol_errors() {
    let cases: [(&str, &str); 8] = [
        ("SSH-2.0-OpenSSH\r\n\r\n", "malformed"),
        (
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "Transfer-Encoding in an HTTP/1.0 answer",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: ,\r\n\r\n0\r\n\r\n",
            "invalid Transfer-Encoding",
        ),
        ("HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n", "malformed"),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "invalid Content-Length",
        ),
        (
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            "switched protocols unasked",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n",
            "before answering",
        ),
        ("", "before answering"),
    ];
    for (answer, why) in cases {
        let s = RawServer::start(&[Answer::ReplyClose(answer)]).await;
        let p = s.pool();
        let err = p.forward(get("/"), NOT_RETRYABLE).await.err().unwrap();
        assert!(
            matches!(err, UpstreamError::Protocol { .. }),
            "{answer:?}: {err}"
        );
        assert!(err.to_string().contains(why), "{answer:?}: {err}");
        assert_eq!(idle_of(&p), 0);
        assert_eq!(in_flight_total(&p), 0);
        // The target's doing: counted against it.
        assert_eq!(p.health_snapshot()[0].consecutive_failures, 1, "{answer:?}");
    }
}

#[tokio::test]
async fn direct_broken_bodies_fail_the_body() {
    let cases: [(&str, &str); 9] = [
        (
            // A bare LF ends a trailer line, then an empty one the section: found by the
            // `upstream_response` fuzz target (hyper refuses it).
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-a: 1\r\nx-b: 2\n\nrest\r\nx-c: 3\r\n\r\n",
            "bare CR or LF in the trailer section",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-a: 1\rx-b: 2\r\n\r\n",
            "bare CR or LF in the trailer section",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            "middle of the body",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\r\nab\r\n0\r\n\r\n",
            "invalid chunk size",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\rb\r\nab\r\n0\r\n\r\n",
            "bare CR or LF",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "missing chunk size",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2x\r\nab\r\n",
            "invalid chunk size",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXX",
            "missing CRLF",
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n",
            "middle of the body",
        ),
    ];
    for (answer, why) in cases {
        let s = RawServer::start(&[Answer::ReplyClose(answer)]).await;
        let p = s.pool();
        let r = p.forward(get("/"), NOT_RETRYABLE).await.unwrap();
        let err = collect(r.response).await.err().unwrap();
        assert!(err.contains(why), "{answer:?}: {err}");
        assert_eq!(idle_of(&p), 0);
        assert_eq!(in_flight_total(&p), 0);
    }
}

/// A chunk-size line over its limit, or a trailer section over hyper's 16 KiB, is refused
/// whether it came in one read or in several: the limits are held against where the line or
/// the section ends, not against what one read happened to hold.
#[tokio::test]
async fn direct_chunk_line_and_trailer_limits_do_not_depend_on_the_reads() {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let long_line = leak(format!("{chunked}1;{}\r\nz\r\n0\r\n\r\n", "e".repeat(5000)));
    let big_trailer = leak(format!(
        "{chunked}1\r\nz\r\n0\r\nx-big: {}\r\n\r\n",
        "t".repeat(20_000)
    ));
    for (answer, why) in [
        (long_line, "chunk size line too long"),
        (big_trailer, "trailer section too large"),
    ] {
        // Whole, then cut in two inside the line or the section.
        let cut = answer.len() - 2500;
        let pieces: &'static [&'static str] =
            Box::leak(vec![&answer[..cut], &answer[cut..]].into_boxed_slice());
        for script in [Answer::ReplyClose(answer), Answer::Pieces(pieces)] {
            let s = RawServer::start(&[script]).await;
            let p = s.pool();
            let r = p.forward(get("/"), NOT_RETRYABLE).await.unwrap();
            let err = collect(r.response).await.err().unwrap();
            assert!(err.contains(why), "{err}");
            assert_eq!(idle_of(&p), 0);
        }
    }
}

/// A request target that is a query alone (`http://example.com?x=1`: no path) reaches the
/// target as `/?x=1`, from the direct client and from hyper's HTTP/2 client alike; `*` (an
/// `OPTIONS` of the whole server) is written as it is.
#[tokio::test]
async fn a_query_alone_is_sent_with_a_leading_slash() {
    let req = get("http://example.com?x=1");
    assert_eq!(req.uri().path_and_query().unwrap().as_str(), "?x=1");
    let s = RawServer::start(&[]).await;
    let p = s.pool();
    let r = p.forward(req, RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    let r = p
        .forward(request(Method::OPTIONS, "*"), RETRYABLE)
        .await
        .unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    let heads = s.heads();
    assert!(
        heads[0].starts_with("GET /?x=1 HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].starts_with("OPTIONS * HTTP/1.1\r\n"),
        "{}",
        heads[1]
    );

    // `as_str`: the `Display` of a path-and-query writes a `/` in front of a query alone.
    let echo = serve(|req: Request<Incoming>| {
        let pq = req.uri().path_and_query().map(|p| p.as_str().to_string());
        async move {
            Response::new(
                Full::new(Bytes::from(pq.unwrap_or_default()))
                    .map_err(|n| match n {})
                    .boxed_unsync(),
            )
        }
    })
    .await;
    for protocol in ["http2", "http1"] {
        let p = pool_of(&[echo.target()], &format!("protocol: {protocol}"));
        let mut req = get("http://example.com?x=1");
        // A body of unknown length: hyper's client, whatever the protocol.
        let chunks =
            futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x")))]);
        *req.method_mut() = Method::PUT;
        *req.body_mut() = StreamBody::new(chunks).boxed_unsync();
        let r = p.forward(req, NOT_RETRYABLE).await;
        let r = r.unwrap_or_else(|e| panic!("{protocol}: {e}"));
        assert_eq!(body_text(r.response).await, "/?x=1", "{protocol}");
    }
}

#[tokio::test]
async fn direct_an_oversized_head_is_refused() {
    let big: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
            "a".repeat(300 * 1024)
        )
        .into_boxed_str(),
    );
    let s = RawServer::start(&[Answer::ReplyClose(big)]).await;
    let err = s
        .pool()
        .forward(get("/"), NOT_RETRYABLE)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("exceeds"), "{err}");
}

#[tokio::test]
async fn direct_a_connection_the_target_dropped_while_idle_is_not_used() {
    // First answer closes the connection after a keep-alive answer (no `Connection: close`):
    // the client notices the close while the connection is idle.
    let s = RawServer::start(&[Answer::ReplyClose(
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
    )])
    .await;
    let p = s.pool();
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "a");
    assert_eq!(idle_of(&p), 1);
    // Give the close time to arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = p
        .forward(request(Method::POST, "/"), NOT_RETRYABLE)
        .await
        .unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    assert_eq!(s.conns(), 2);
    assert_eq!(s.heads().len(), 2, "the POST was sent once");
}

#[tokio::test]
async fn direct_a_stale_connection_is_retried_for_idempotent_methods_only() {
    // The target takes the second request on a kept connection and closes without a word.
    let s = RawServer::start(&[
        Answer::Reply("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"),
        Answer::Close,
    ])
    .await;
    let p = s.pool();
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "a");
    let r = p.forward(get("/again"), NOT_RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    assert_eq!(s.conns(), 2, "sent again on a fresh connection");
    assert_eq!(s.heads().len(), 3);

    let s = RawServer::start(&[
        Answer::Reply("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"),
        Answer::Close,
    ])
    .await;
    let p = s.pool();
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "a");
    let err = p
        .forward(request(Method::POST, "/"), NOT_RETRYABLE)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("before answering"), "{err}");
    assert_eq!(s.heads().len(), 2, "a POST is never sent twice");
}

/// A target that takes a fresh connection and closes it before any byte of an answer dropped
/// the request: that counts against it (with `consecutive_failures: 1` it is ejected — a second
/// target keeps one eligible), and a GET is sent to the other target, as after a connect
/// error. A POST is not sent twice: its 502 is counted all the same.
#[tokio::test]
async fn direct_a_request_closed_unanswered_counts_and_is_retried_elsewhere() {
    let dropping = RawServer::start(&[Answer::Close]).await;
    let fine = RawServer::start(&[]).await;
    let targets = [
        format!("\"http://{}\"", dropping.addr),
        format!("\"http://{}\"", fine.addr),
    ];
    let p = pool_of(&targets, "passive_health: { consecutive_failures: 1 }");
    // Round robin starts at the first target.
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(r.attempts, 2);
    assert_eq!(*r.target, fine.addr.to_string());
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    let h = p.health_snapshot();
    assert!(h[0].ejected && !h[1].ejected, "{h:?}");
    assert_eq!((dropping.heads().len(), fine.heads().len()), (1, 1));

    let dropping = RawServer::start(&[Answer::Close]).await;
    let targets = [
        format!("\"http://{}\"", dropping.addr),
        format!("\"http://{}\"", fine.addr),
    ];
    let p = pool_of(&targets, "");
    let err = p
        .forward(request(Method::POST, "/"), NOT_RETRYABLE)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, UpstreamError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("before answering"), "{err}");
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 1);
    assert_eq!((dropping.heads().len(), fine.heads().len()), (1, 1));
}

/// Through hyper's client too (a body of unknown length): an exchange the target broke off
/// counts against it, one whose request body failed does not.
#[tokio::test]
async fn hyper_exchange_failures_count_unless_the_request_body_failed() {
    let streamed = |frames: Vec<Result<Frame<Bytes>, BoxError>>| {
        let mut req = request(Method::PUT, "/");
        *req.body_mut() = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        req
    };
    let dropping = RawServer::start(&[Answer::Close]).await;
    let p = dropping.pool();
    let err = p
        .forward(
            streamed(vec![Ok(Frame::data(Bytes::from_static(b"x")))]),
            NOT_RETRYABLE,
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(err, UpstreamError::Protocol { .. }), "{err}");
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 1);

    // A target that reads and never answers; the body fails at once.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let p = pool_of(&[format!("\"http://{addr}\"")], "");
    let err = p
        .forward(
            streamed(vec![Err("the client went away".into())]),
            NOT_RETRYABLE,
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(err, UpstreamError::Protocol { .. }), "{err}");
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 0);
}

#[tokio::test]
async fn direct_idle_connections_are_bounded_and_expire() {
    let s = RawServer::start(&[]).await;
    let p = pool_of(
        &[format!("\"http://{}\"", s.addr)],
        "max_idle_per_target: 2, idle_timeout: 200ms",
    );
    // Four bodies held at once need four connections; two are kept afterwards.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(p.forward(get("/"), RETRYABLE).await.unwrap());
    }
    assert_eq!(s.conns(), 4);
    for r in held {
        assert_eq!(collect(r.response).await.unwrap().0, "ok");
    }
    assert_eq!(idle_of(&p), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    assert_eq!(s.conns(), 5, "expired idle connections are not reused");
    assert_eq!(idle_of(&p), 1);

    // The sweep closes idle connections of a target that gets no more requests.
    let swept = pool_of(&[format!("\"http://{}\"", s.addr)], "idle_timeout: 200ms");
    let _sweep = swept.start_health_checks();
    let r = swept.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    assert_eq!(idle_of(&swept), 1);
    assert!(eventually(|| idle_of(&swept) == 0).await);

    let none = pool_of(
        &[format!("\"http://{}\"", s.addr)],
        "max_idle_per_target: 0",
    );
    let r = none.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    assert_eq!(idle_of(&none), 0);
}

#[tokio::test]
async fn direct_a_refused_connection_is_a_connect_error_and_retried() {
    let s = RawServer::start(&[]).await;
    let p = pool_of(
        &[
            format!("\"http://{}\"", dead_addr()),
            format!("\"http://{}\"", s.addr),
        ],
        "retries: { attempts: 1 }",
    );
    // Round robin starts with the dead target.
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(r.attempts, 2);
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    let dead = pool_of(&[format!("\"http://{}\"", dead_addr())], "");
    let err = dead.forward(get("/"), RETRYABLE).await.err().unwrap();
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn direct_a_silent_target_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let p = pool_of(&[format!("\"http://{addr}\"")], "");
    let opts = ForwardOpts {
        timeout: Duration::from_millis(200),
        retryable: true,
        timer: None,
        extra: &[],
        answer_room: ANSWER_ROOM,
        request_body: None,
    };
    let err = p.forward(get("/"), opts).await.err().unwrap();
    assert!(matches!(err, UpstreamError::Timeout { .. }), "{err}");
    assert_eq!(in_flight_total(&p), 0);
}

#[test]
fn direct_chunk_sizes() {
    use super::h1::chunk_size;
    assert_eq!(chunk_size(b"0").unwrap(), 0);
    assert_eq!(chunk_size(b"fF").unwrap(), 255);
    assert_eq!(chunk_size(b"10 ; name=value").unwrap(), 16);
    assert_eq!(chunk_size(b"ffffffffffffffff").unwrap(), u64::MAX);
    for bad in [
        &b""[..],
        b"x",
        b"-1",
        b"1 2",
        b"11111111111111111",
        b"0x10",
        b" 1",
    ] {
        assert!(chunk_size(bad).is_err(), "{bad:?}");
    }
}

/// A request body fed through a channel, with an exact length announced up front (like a
/// client's body with `Content-Length`).
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>,
    len: u64,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

fn channel_request(
    method: Method,
    len: u64,
    content_length: bool,
) -> (
    Request<BoxBody>,
    tokio::sync::mpsc::Sender<Result<Bytes, BoxError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut req = Request::builder()
        .method(method)
        .uri("/up")
        .header(HOST, "example.com");
    if content_length {
        req = req.header(CONTENT_LENGTH, len);
    }
    (
        req.body(ChannelBody { rx, len }.boxed_unsync()).unwrap(),
        tx,
    )
}

#[tokio::test]
async fn direct_a_body_of_known_length_is_sent_and_the_connection_kept() {
    let s = RawServer::start(&[]).await;
    let p = s.pool();
    // Buffered, with its Content-Length.
    let mut req = request(Method::POST, "/a");
    *req.body_mut() = full("hello world");
    req.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("11"));
    let r = p.forward(req, NOT_RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    // Streamed in three chunks, without a Content-Length field: the client writes one.
    let (req, tx) = channel_request(Method::PUT, 9, false);
    let feed = tokio::spawn(async move {
        for part in ["abc", "def", "ghi"] {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(Ok(Bytes::from_static(part.as_bytes())))
                .await
                .unwrap();
        }
    });
    let r = p.forward(req, NOT_RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    feed.await.unwrap();
    let heads = s.heads();
    assert_eq!(
        heads[0],
        "POST /a HTTP/1.1\r\nhost: example.com\r\ncontent-length: 11\r\n\r\nhello world"
    );
    assert_eq!(
        heads[1],
        "PUT /up HTTP/1.1\r\nhost: example.com\r\ncontent-length: 9\r\n\r\nabcdefghi"
    );
    assert_eq!(s.conns(), 1);
    assert_eq!(idle_of(&p), 1);
}

#[tokio::test]
async fn direct_an_early_answer_stops_the_body() {
    // The target refuses after the head and reads nothing; the body never completes.
    let s = RawServer::start(&[Answer::ReplyUnread(
        "HTTP/1.1 413 Content Too Large\r\ncontent-length: 3\r\n\r\nbig",
    )])
    .await;
    let p = s.pool();
    let (req, tx) = channel_request(Method::POST, 1 << 30, true);
    tx.send(Ok(Bytes::from(vec![b'x'; 1024]))).await.unwrap();
    let r = p.forward(req, NOT_RETRYABLE).await.unwrap();
    assert_eq!(r.response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(collect(r.response).await.unwrap().0, "big");
    assert_eq!(
        idle_of(&p),
        0,
        "a connection with half a request on it is not reused"
    );
    drop(tx);

    // Also while a large write is blocked on a target that does not read.
    let s = RawServer::start(&[Answer::ReplyUnread(
        "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
    )])
    .await;
    let p = s.pool();
    let big = Bytes::from(vec![b'y'; 64 << 20]);
    let mut req = request(Method::POST, "/");
    req.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(big.len()));
    *req.body_mut() = Full::new(big)
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync();
    let r = p.forward(req, NOT_RETRYABLE).await.unwrap();
    assert_eq!(r.response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(idle_of(&p), 0);
}

#[tokio::test]
async fn direct_an_interim_answer_does_not_stop_the_body() {
    // `Expect: 100-continue` forwarded: the target says 100 before it reads the body.
    let s = RawServer::start(&[Answer::Continue]).await;
    let p = s.pool();
    let (mut req, tx) = channel_request(Method::POST, 6, true);
    req.headers_mut().insert(
        http::header::EXPECT,
        HeaderValue::from_static("100-continue"),
    );
    let feed = tokio::spawn(async move {
        tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        // The rest comes after the 100 has arrived.
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(Ok(Bytes::from_static(b"def"))).await.unwrap();
    });
    let r = p.forward(req, NOT_RETRYABLE).await.unwrap();
    assert_eq!(r.response.status(), StatusCode::OK);
    assert_eq!(collect(r.response).await.unwrap().0, "ok");
    feed.await.unwrap();
    assert!(s.heads()[0].ends_with("\r\n\r\nabcdef"), "{:?}", s.heads());
    assert_eq!(
        idle_of(&p),
        1,
        "the whole request went out: the connection is kept"
    );
}

/// Interim answers while the body is sent count towards the same bound as those after it:
/// a target sending `100 Continue` without end is refused (a 502, counted against it), not
/// read until the deadline. 16 are skipped.
#[tokio::test]
async fn direct_interim_answers_during_an_upload_are_bounded() {
    let storm: &'static str =
        Box::leak("HTTP/1.1 100 Continue\r\n\r\n".repeat(17).into_boxed_str());
    let s = RawServer::start(&[Answer::ReplyUnread(storm)]).await;
    let p = s.pool();
    // The body never ends: only the answers can end the exchange.
    let (req, tx) = channel_request(Method::POST, 1 << 20, true);
    tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
    let err = p.forward(req, NOT_RETRYABLE).await.err().unwrap();
    assert!(matches!(err, UpstreamError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("informational"), "{err}");
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 1);
    drop(tx);

    // 16 while the body is sent, then an early answer: read.
    let few: &'static str = Box::leak(
        format!(
            "{}HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\n".repeat(16)
        )
        .into_boxed_str(),
    );
    let s = RawServer::start(&[Answer::ReplyUnread(few)]).await;
    let (req, tx) = channel_request(Method::POST, 1 << 20, true);
    tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
    let r = s.pool().forward(req, NOT_RETRYABLE).await.unwrap();
    assert_eq!(r.response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    drop(tx);
}

/// The keep-alive race on an upload: a reused connection the target closes before any byte of
/// an answer, while the body is still going out, fails the request (it is not sent again) but
/// is not counted against the target. On a fresh connection the same close is the target's
/// doing, and counted.
#[tokio::test]
async fn direct_an_upload_meeting_a_closed_pooled_connection_is_not_counted() {
    let s = RawServer::start(&[
        Answer::Reply("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"),
        Answer::CloseAtHead,
    ])
    .await;
    let p = s.pool();
    let r = p.forward(get("/"), RETRYABLE).await.unwrap();
    assert_eq!(collect(r.response).await.unwrap().0, "a");
    assert_eq!(idle_of(&p), 1);
    // The first part goes out with the head; the rest never comes, so the close is met while
    // the body is being sent.
    let (req, tx) = channel_request(Method::PUT, 10, true);
    tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
    let err = p.forward(req, NOT_RETRYABLE).await.err().unwrap();
    assert!(matches!(err, UpstreamError::Protocol { .. }), "{err}");
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 0, "{err}");
    assert_eq!(s.conns(), 1, "not sent again");
    assert_eq!(s.heads().len(), 2);
    drop(tx);

    // A fresh connection closed so: counted.
    let s = RawServer::start(&[Answer::CloseAtHead]).await;
    let p = s.pool();
    let (req, tx) = channel_request(Method::PUT, 10, true);
    tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
    let err = p.forward(req, NOT_RETRYABLE).await.err().unwrap();
    assert!(matches!(err, UpstreamError::Protocol { .. }), "{err}");
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 1, "{err}");
    drop(tx);
}

#[tokio::test]
async fn direct_a_failing_or_mismeasured_body_fails_the_exchange() {
    // The body fails (as the gateway's size and rate limits make it fail).
    let s = RawServer::start(&[]).await;
    let p = s.pool();
    let (req, tx) = channel_request(Method::POST, 10, true);
    tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
    tx.send(Err("too slow".into())).await.unwrap();
    let err = p.forward(req, NOT_RETRYABLE).await.err().unwrap();
    assert!(matches!(err, UpstreamError::Protocol { .. }), "{err}");
    assert!(err.to_string().contains("too slow"), "{err}");
    assert_eq!(idle_of(&p), 0);
    assert_eq!(in_flight_total(&p), 0);
    // It ends before its length.
    let (req, tx) = channel_request(Method::POST, 10, true);
    tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
    drop(tx);
    let err = p.forward(req, NOT_RETRYABLE).await.err().unwrap();
    assert!(
        err.to_string().contains("ended before its Content-Length"),
        "{err}"
    );
    // It runs past its length.
    let (req, tx) = channel_request(Method::POST, 2, true);
    tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
    let err = p.forward(req, NOT_RETRYABLE).await.err().unwrap();
    assert!(
        err.to_string().contains("longer than its Content-Length"),
        "{err}"
    );
    // None of them reached the target as a whole request, and none is counted against it.
    assert!(s.heads().is_empty(), "{:?}", s.heads());
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 0);
}

#[test]
fn direct_only_a_single_agreeing_content_length_is_taken() {
    // Anything else (5 announced by the field, 9 by the body; the field twice) is left to the
    // general client.
    let mut h = HeaderMap::new();
    assert!(length_agrees(&h, 9));
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
    assert!(!length_agrees(&h, 9));
    assert!(length_agrees(&h, 5));
    h.append(CONTENT_LENGTH, HeaderValue::from_static("5"));
    assert!(!length_agrees(&h, 5));
}

/// A reload keeps what is known of the same targets: ejections always, what active checks
/// found only while there still are checks (nothing would set a target healthy again
/// otherwise), nothing for a target whose scheme changed.
#[test]
fn a_reload_inherits_health_where_it_still_means_something() {
    let targets = [
        "\"http://127.0.0.1:9\"".to_string(),
        "\"http://127.0.0.1:10\"".to_string(),
        "\"http://127.0.0.1:11\"".to_string(),
    ];
    let checks = "health_check: { path: /healthz, interval: 1s }";
    let old = pool_of(&targets, checks);
    old.targets[0].healthy.store(false, Ordering::Relaxed);
    old.targets[1]
        .ejected_until
        .store(old.now_ms() + 60_000, Ordering::Relaxed);
    let still_checked = pool_of(&targets, checks);
    still_checked.inherit_health(&old);
    let h = still_checked.health_snapshot();
    assert!(!h[0].healthy && h[1].ejected, "{h:?}");
    // Checks switched off: the target found down is back in; the ejection stays.
    let unchecked = pool_of(&targets, "");
    unchecked.inherit_health(&old);
    let h = unchecked.health_snapshot();
    assert!(h[0].healthy && h[1].ejected, "{h:?}");
    // The same address over TLS is another target.
    let tls = pool_of(
        &[
            "\"https://127.0.0.1:9\"".to_string(),
            "\"https://127.0.0.1:10\"".to_string(),
        ],
        checks,
    );
    tls.inherit_health(&old);
    let h = tls.health_snapshot();
    assert!(h[0].healthy && !h[1].ejected, "{h:?}");
    // Within the new set's bounds: without the third target, the ejected one is the last
    // eligible target (the first is down) and comes back.
    let fewer = pool_of(&targets[..2], checks);
    fewer.inherit_health(&old);
    let h = fewer.health_snapshot();
    assert!(!h[0].healthy && !h[1].ejected, "{h:?}");
}

// ---------------------------------------------------------------------------------------------
// how many connections a target gets: never one per `Host` (an attacker's random `Host` values
// must not open, and keep, an upstream connection each)

/// An upstream over TLS with a certificate for `localhost` made here, offering `alpn`,
/// answering with [`host_echo`] (an upgrade with 101 and `hi` through the tunnel) and counting
/// the connections it accepts.
struct TlsServer {
    port: u16,
    conns: Arc<AtomicUsize>,
    dir: std::path::PathBuf,
    accept: tokio::task::JoinHandle<()>,
}

impl TlsServer {
    async fn start(alpn: &[&[u8]]) -> TlsServer {
        let (acceptor, dir) = self_signed_acceptor("conns", alpn);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let accepted = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                        let sni = sni.clone();
                        async move {
                            if !req.headers().contains_key(UPGRADE) {
                                return Ok::<_, Infallible>(host_echo(req, sni).await);
                            }
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(up) = on.await {
                                    let mut io = TokioIo::new(up);
                                    let _ = io.write_all(b"hi").await;
                                    let _ = io.shutdown().await;
                                }
                            });
                            Ok(Response::builder()
                                .status(StatusCode::SWITCHING_PROTOCOLS)
                                .header(CONNECTION, "upgrade")
                                .header(UPGRADE, "test")
                                .body(empty_body())
                                .unwrap())
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsServer {
            port,
            conns,
            dir,
            accept,
        }
    }

    /// A pool with this server as its one target, trusting its certificate.
    fn pool(&self, extra: &str) -> Arc<UpstreamPool> {
        let yaml = format!(
            "upstreams: {{ u: {{ targets: [ \"https://localhost:{}\" ], tls: {{ ca_file: ca.pem }}{}{extra} }} }}",
            self.port,
            if extra.is_empty() { "" } else { ", " },
        );
        let c = portcullis_config::load_str(&yaml, &self.dir).unwrap();
        UpstreamPool::new(&c.upstreams[0], None).unwrap()
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A request for `/` naming `host`.
fn get_for(host: &str) -> Request<BoxBody> {
    let mut req = get("/");
    req.headers_mut()
        .insert(HOST, HeaderValue::from_str(host).unwrap());
    req
}

/// What [`host_echo`] answered: the `:authority`, the `Host` fields and the version it saw.
async fn seen(r: UpstreamResponse) -> (String, String, String) {
    let h = r.response.headers();
    let got = (
        h["x-authority"].to_str().unwrap().to_string(),
        h["x-hosts"].to_str().unwrap().to_string(),
        h["x-version"].to_str().unwrap().to_string(),
    );
    body_text(r.response).await;
    got
}

/// Whether the pool's first target keeps a shared HTTP/2 connection open now.
fn shared_connection_open(p: &UpstreamPool) -> bool {
    match &p.targets[0].conns {
        Conns::Shared { mux, .. } => mux.is_connected(),
        Conns::Http1(_) => false,
    }
}

/// 40 requests, each with a `Host` of its own, to a target that speaks HTTP/2 — over TLS by
/// ALPN (`protocol: auto`), and in cleartext by prior knowledge (`protocol: http2`): the target
/// sees each request's host as its `:authority`, and one connection carries them all.
#[tokio::test]
async fn random_host_values_share_one_http2_connection_per_target() {
    let tls = TlsServer::start(&[b"h2", b"http/1.1"]).await;
    let p = tls.pool("");
    for i in 0..40 {
        let host = format!("h{i}.example");
        let (authority, hosts, version) =
            seen(p.forward(get_for(&host), RETRYABLE).await.unwrap()).await;
        assert_eq!(version, "HTTP/2.0");
        assert_eq!(authority, host);
        // `auto` keeps the `Host` field, the same value (RFC 9113 §8.3.1).
        assert_eq!(hosts, host);
    }
    assert_eq!(tls.conns(), 1, "one connection for 40 hosts");
    assert_eq!(in_flight_total(&p), 0);

    let s = serve(|req| host_echo(req, None)).await;
    let p = pool_of(&[s.target()], "protocol: http2");
    for i in 0..40 {
        let host = format!("h{i}.example:8443");
        let (authority, hosts, version) =
            seen(p.forward(get_for(&host), RETRYABLE).await.unwrap()).await;
        assert_eq!(version, "HTTP/2.0");
        assert_eq!(authority, host);
        assert!(hosts.is_empty(), "{hosts}");
    }
    assert_eq!(s.conns(), 1, "one connection for 40 hosts");
    assert_eq!(s.hits(), 40);
    assert_eq!(in_flight_total(&p), 0);
}

/// A TLS target that offers only http/1.1 by ALPN, under `protocol: auto`: requests with a
/// `Host` each go one after another over one connection, reused, each with its own `Host`.
#[tokio::test]
async fn an_http1_tls_target_keeps_one_connection_whatever_the_host() {
    let tls = TlsServer::start(&[b"http/1.1"]).await;
    let p = tls.pool("");
    for i in 0..40 {
        let host = format!("h{i}.example");
        let (authority, hosts, version) =
            seen(p.forward(get_for(&host), RETRYABLE).await.unwrap()).await;
        assert_eq!(version, "HTTP/1.1");
        assert_eq!(authority, "", "origin form over HTTP/1.1");
        assert_eq!(hosts, host);
    }
    assert_eq!(
        tls.conns(),
        1,
        "the connection that found HTTP/1.1 is the one reused for every host"
    );
    assert_eq!(in_flight_total(&p), 0);
}

/// 20 requests at once to a target not connected yet, each with its own `Host`: one connect,
/// which all of them wait for, and one connection.
#[tokio::test]
async fn concurrent_first_requests_wait_for_one_connection() {
    async fn burst(p: &UpstreamPool) {
        let answers = futures_util::future::join_all((0..20).map(|i| async move {
            let host = format!("c{i}.example");
            let r = p.forward(get_for(&host), RETRYABLE).await.unwrap();
            (host, seen(r).await)
        }))
        .await;
        for (host, (authority, _, version)) in answers {
            assert_eq!(version, "HTTP/2.0");
            assert_eq!(authority, host);
        }
    }
    let tls = TlsServer::start(&[b"h2", b"http/1.1"]).await;
    let p = tls.pool("");
    burst(&p).await;
    assert_eq!(tls.conns(), 1);

    let s = serve(|req| host_echo(req, None)).await;
    let p = pool_of(&[s.target()], "protocol: http2");
    burst(&p).await;
    assert_eq!(s.conns(), 1);
    assert_eq!(s.hits(), 20);
}

/// The target closes the shared connection between requests — dropping it, or with `GOAWAY` —:
/// the next request gets a new connection and its answer; nothing is counted against the
/// target, and the new connection is again shared by every host.
#[tokio::test]
async fn a_shared_connection_the_target_closed_is_replaced() {
    let s = serve(|req| host_echo(req, None)).await;
    let p = pool_of(&[s.target()], "protocol: http2");
    let mut n = 0;
    let mut two_hosts = async |p: &UpstreamPool| {
        for _ in 0..2 {
            n += 1;
            let host = format!("r{n}.example");
            let (authority, _, _) =
                seen(p.forward(get_for(&host), NOT_RETRYABLE).await.unwrap()).await;
            assert_eq!(authority, host);
        }
    };
    two_hosts(&p).await;
    assert_eq!(s.conns(), 1);
    for (how, conns) in [(Closing::Drop, 2), (Closing::GoAway, 3)] {
        s.close_connections(how);
        assert!(eventually(|| !shared_connection_open(&p)).await);
        two_hosts(&p).await;
        assert_eq!(s.conns(), conns);
    }
    assert_eq!(s.hits(), 6);
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 0);
    assert_eq!(in_flight_total(&p), 0);
}

/// An upgrade is HTTP/1.1 only: to an `https://` target under `protocol: auto` that speaks
/// HTTP/2, it goes over an HTTP/1.1 connection of its own (hyper's HTTP/2 client would leave
/// its upgrade fields out), while the other requests keep the shared HTTP/2 connection.
#[tokio::test]
async fn an_upgrade_to_an_http2_tls_target_goes_over_http1() {
    let tls = TlsServer::start(&[b"h2", b"http/1.1"]).await;
    let p = tls.pool("");
    let (_, _, version) = seen(p.forward(get_for("a.example"), RETRYABLE).await.unwrap()).await;
    assert_eq!(version, "HTTP/2.0");
    assert_eq!(upgraded(&p, get_for("b.example")).await, b"hi");
    let (authority, _, version) =
        seen(p.forward(get_for("c.example"), RETRYABLE).await.unwrap()).await;
    assert_eq!(
        (authority.as_str(), version.as_str()),
        ("c.example", "HTTP/2.0")
    );
    assert_eq!(
        tls.conns(),
        2,
        "the shared connection, and the upgraded one"
    );
}

/// An HTTP/2 upstream (prior knowledge) that resets the first `refuse` streams it receives
/// with `REFUSED_STREAM` — "not processed, send it again" (RFC 9113 §8.7) — and answers the
/// rest `200 ok`. Returns its address and how many streams it received.
async fn refusing_h2(refuse: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let seen = streams.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = ::h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if seen.fetch_add(1, Ordering::SeqCst) < refuse {
                        respond.send_reset(::h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let Ok(mut body) = respond.send_response(http::Response::new(()), false) else {
                        continue;
                    };
                    let _ = body.send_data(Bytes::from_static(b"ok"), true);
                }
            });
        }
    });
    (addr, streams)
}

/// A stream the target refused unprocessed (`REFUSED_STREAM`, as a `GOAWAY` without error
/// refuses the streams above its last one) is the keep-alive race of a shared HTTP/2
/// connection, never the target's failure: a request without a body is sent again (on a new
/// connection: the refusing one may be going away), one with a body gets an error, and
/// neither counts against the target — though it is the only one, so nothing else would take
/// the request.
#[tokio::test]
async fn a_stream_the_target_refused_unprocessed_is_sent_again_and_not_counted() {
    let (addr, streams) = refusing_h2(1).await;
    let p = pool_of(&[format!("\"http://{addr}\"")], "protocol: http2");
    let r = p.forward(get("/"), NOT_RETRYABLE).await.unwrap();
    assert_eq!(r.response.status(), 200);
    assert_eq!(body_text(r.response).await, "ok");
    assert_eq!(streams.load(Ordering::SeqCst), 2);
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 0);

    let (addr, streams) = refusing_h2(1).await;
    let p = pool_of(&[format!("\"http://{addr}\"")], "protocol: http2");
    let mut post = get("/");
    *post.method_mut() = Method::POST;
    *post.body_mut() = full("a body");
    assert!(p.forward(post, NOT_RETRYABLE).await.is_err());
    assert_eq!(streams.load(Ordering::SeqCst), 1);
    assert_eq!(p.health_snapshot()[0].consecutive_failures, 0);
    // The target is fine for what comes next.
    let r = p.forward(get("/"), NOT_RETRYABLE).await.unwrap();
    assert_eq!(r.response.status(), 200);
}

/// Requests that wait for one connect to a target's shared connection share its outcome: a
/// failed connect is one failure of the target, not one per request that waited (which would
/// eject it at once under load).
#[tokio::test]
async fn a_failed_shared_connect_counts_once_however_many_waited() {
    let p = pool_of(
        &[format!("\"http://{}\"", dead_addr())],
        "protocol: http2, passive_health: { consecutive_failures: 3, ejection_time: 1m }",
    );
    let results =
        futures_util::future::join_all((0..8).map(|_| p.forward(get("/"), NOT_RETRYABLE))).await;
    assert!(results.iter().all(Result::is_err));
    let snap = &p.health_snapshot()[0];
    assert_eq!(snap.consecutive_failures, 1, "{snap:?}");
    assert!(!snap.ejected);
}

/// The health checks have their own connection to a target whose requests share one HTTP/2
/// connection: a target whose `SETTINGS_MAX_CONCURRENT_STREAMS` the requests fill (long polls,
/// event streams) is not found dead because a probe waited for a stream behind them.
#[tokio::test]
async fn health_checks_do_not_wait_behind_the_requests_streams() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let probes = Arc::new(AtomicUsize::new(0));
    let seen = probes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        if req.uri().path() == "/poll" {
                            // A long poll: answers much later than the checks' timeout.
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        } else {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok::<_, Infallible>(text(200, "ok"))
                    }
                });
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                b.max_concurrent_streams(1);
                let _ = b.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    let p = pool_of(
        &[format!("\"http://{addr}\"")],
        "protocol: http2, health_check: { path: /healthz, interval: 50ms, timeout: 300ms, unhealthy_threshold: 2 }",
    );
    // The one stream the target allows is taken by a long poll.
    let poll = {
        let p = p.clone();
        tokio::spawn(async move {
            let opts = ForwardOpts {
                timeout: Duration::from_secs(60),
                ..NOT_RETRYABLE
            };
            p.forward(get("/poll"), opts).await.map(|_| ())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _checks = p.start_health_checks();
    assert!(eventually(|| probes.load(Ordering::SeqCst) >= 5).await);
    assert!(p.health_snapshot()[0].healthy);
    poll.abort();
}
