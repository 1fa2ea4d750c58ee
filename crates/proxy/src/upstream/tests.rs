use super::*;
use std::path::Path;

fn pool(yaml: &str) -> Arc<UpstreamPool> {
    let c = portcullis_config::load_str(yaml, Path::new(".")).unwrap();
    UpstreamPool::new(&c.upstreams[0]).unwrap()
}

#[test]
fn weighted_round_robin_follows_the_schedule() {
    let p = pool(
        "upstreams: { u: { targets: [ \"http://127.0.0.1:1\", { url: \"http://127.0.0.1:2\", weight: 2 } ] } }",
    );
    let picks: Vec<usize> = (0..6).map(|_| p.select(&[]).unwrap()).collect();
    assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 2);
    assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 4);
}

#[test]
fn a_retry_prefers_an_untried_target() {
    let p =
        pool("upstreams: { u: { targets: [ \"http://127.0.0.1:1\", \"http://127.0.0.1:2\" ] } }");
    for _ in 0..10 {
        let first = p.select(&[]).unwrap();
        assert_ne!(p.select(&[first]).unwrap(), first);
    }
}

#[test]
fn passive_ejection_removes_and_restores_a_target() {
    let p = pool(
        "upstreams: { u: { targets: [ \"http://127.0.0.1:1\", \"http://127.0.0.1:2\" ], passive_health: { consecutive_failures: 2, ejection_time: 50ms } } }",
    );
    p.record_failure(0);
    assert!(p.health_snapshot().iter().all(|t| !t.ejected));
    p.record_failure(0);
    let snap = p.health_snapshot();
    assert!(snap[0].ejected && !snap[1].ejected);
    for _ in 0..10 {
        assert_eq!(p.select(&[]), Some(1));
    }
    p.record_failure(1);
    p.record_failure(1);
    assert!(!p.has_eligible_target());
    assert_eq!(p.select(&[]), None);
    std::thread::sleep(Duration::from_millis(80));
    assert!(p.has_eligible_target());
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
fn least_requests_prefers_the_idle_target() {
    let p = pool(
        "upstreams: { u: { balance: least_requests, targets: [ \"http://127.0.0.1:1\", \"http://127.0.0.1:2\" ] } }",
    );
    p.targets[0].in_flight.store(10, Ordering::Relaxed);
    // Two random choices: whenever both are drawn the idle one wins, so it is picked far more often.
    let idle = (0..200).filter(|_| p.select(&[]) == Some(1)).count();
    assert!(idle > 120, "idle target picked {idle} of 200 times");
}

#[tokio::test]
async fn every_target_ejected_sends_nothing() {
    let p = pool(
        "upstreams: { u: { targets: [ \"http://127.0.0.1:1\" ], passive_health: { consecutive_failures: 1 } } }",
    );
    p.record_failure(0);
    let req = Request::new(
        Empty::<Bytes>::new()
            .map_err(|e| -> BoxError { match e {} })
            .boxed_unsync(),
    );
    let r = p
        .forward(
            req,
            ForwardOpts {
                timeout: Duration::from_secs(1),
                retryable: true,
            },
        )
        .await;
    assert!(matches!(r, Err(UpstreamError::NoEligibleTarget)));
}
