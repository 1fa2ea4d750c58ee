//! The cost of a local rate-limit check (`LocalStore::check_all`) on hot keys: one limit and
//! three limits, on one thread and on two threads hitting the same keys.
//!
//! `cargo bench -p portcullis-ratelimit --bench local`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_ratelimit::clock::SystemClock;
use portcullis_ratelimit::local::LocalStore;
use portcullis_ratelimit::{Algorithm, Check, LimitSpec, Period};

/// Limits generous enough that every check is admitted (the common case on the hot path).
fn limits() -> [LimitSpec; 3] {
    let per_second = |algorithm| LimitSpec {
        algorithm,
        limit: 1_000_000_000,
        period: Period::Fixed(Duration::from_secs(1)),
        burst: 1_000_000_000,
    };
    [
        per_second(Algorithm::Gcra),
        per_second(Algorithm::SlidingWindow),
        LimitSpec {
            algorithm: Algorithm::FixedWindow,
            limit: u64::MAX,
            period: Period::CalendarMonth,
            burst: 1,
        },
    ]
}

/// Times `iters` calls on each of `threads` threads; returns the wall time of the slowest.
fn run(store: &LocalStore, checks: &[Check<'_>], threads: usize, iters: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..iters {
                    black_box(store.check_all(black_box(checks), 1));
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let store = LocalStore::new(100_000, Arc::new(SystemClock));
    let [gcra, sliding, quota] = limits();
    let one = [Check {
        key: "route:orders|ip:203.0.113.7",
        spec: &gcra,
    }];
    let three = [
        Check {
            key: "route:orders|ip:203.0.113.7",
            spec: &gcra,
        },
        Check {
            key: "route:orders|client:acme",
            spec: &sliding,
        },
        Check {
            key: "quota:tenant:acme",
            spec: &quota,
        },
    ];
    let mut g = c.benchmark_group("local_check_all");
    for threads in [1, 2] {
        g.bench_function(format!("one_limit_{threads}_threads"), |b| {
            b.iter_custom(|iters| run(&store, &one, threads, iters))
        });
        g.bench_function(format!("three_limits_{threads}_threads"), |b| {
            b.iter_custom(|iters| run(&store, &three, threads, iters))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
