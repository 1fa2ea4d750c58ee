//! Cost of one in-process Rego decision, as the authorization step pays it per request: a
//! realistic policy (scopes, method, path, params, a set of reasons), the input converted from
//! JSON, the result read into a decision.
//!
//! `cargo bench -p portcullis-authz --bench rego`

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_authz::rego::RegoPolicies;
use serde_json::json;

const POLICY: &str = r#"
package orders

default allow := false

reasons contains "scope read:orders is missing" if not "read:orders" in input.principal.scopes

reasons contains "only GET and HEAD are allowed" if not input.request.method in {"GET", "HEAD"}

reasons contains "not under /orders/" if not startswith(input.request.path, "/orders/")

reasons contains "another tenant's order" if input.request.params.tenant != input.principal.tenant

allow if count(reasons) == 0

decision := {"allow": allow, "reasons": reasons, "headers": {"x-tenant": input.principal.tenant}}

# The floor: one membership test, so the fixed cost of an evaluation shows.
has_scope if "read:orders" in input.principal.scopes
"#;

fn input(scope: &str) -> serde_json::Value {
    json!({
        "principal": {
            "sub": "alice",
            "tenant": "acme",
            "scopes": ["profile", scope, "write:cart"],
            "roles": ["customer"],
        },
        "request": {
            "method": "GET",
            "path": "/orders/42",
            "params": {"id": "42", "tenant": "acme"},
            "headers": {"user-agent": "curl/8.5", "accept": "application/json"},
        },
        "client": {"ip": "203.0.113.7"},
        "time": 1_767_225_600_000_000_000u64,
        "request_id": "01J9Z3V6M8Q2K4T7W1X5Y0B3C6",
    })
}

fn load() -> RegoPolicies {
    let dir = std::env::temp_dir().join(format!("portcullis-rego-bench-{}", std::process::id()));
    let loaded = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("orders.rego"), POLICY))
        .map_err(|e| vec![("bench".to_owned(), e.to_string())])
        .and_then(|()| {
            let files: Vec<(String, PathBuf)> = vec![("bench".to_owned(), dir.join("orders.rego"))];
            RegoPolicies::load(&files, None, Duration::from_millis(100))
        });
    let _ = std::fs::remove_dir_all(&dir);
    match loaded {
        Ok(p) => p,
        Err(e) => fail(&format!("the benchmark policy does not load: {e:?}")),
    }
}

/// Stops the benchmark: its setup is wrong, so any figure would be meaningless.
fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1)
}

fn bench(c: &mut Criterion) {
    let policies = Arc::new(load());
    let allowed = input("read:orders");
    let denied = input("read:profile");
    match policies.evaluate("data.orders.decision", &allowed) {
        Ok(d) if d.allow => {}
        other => fail(&format!("expected an allow: {other:?}")),
    }
    match policies.evaluate("data.orders.decision", &denied) {
        Ok(d) if !d.allow && d.reasons.len() == 1 => {}
        other => fail(&format!("expected a deny with one reason: {other:?}")),
    }

    let mut group = c.benchmark_group("rego");
    group.bench_function("evaluate object decision (allow)", |b| {
        b.iter(|| policies.evaluate("data.orders.decision", black_box(&allowed)))
    });
    group.bench_function("evaluate object decision (deny)", |b| {
        b.iter(|| policies.evaluate("data.orders.decision", black_box(&denied)))
    });
    group.bench_function("evaluate boolean rule", |b| {
        b.iter(|| policies.evaluate("data.orders.allow", black_box(&allowed)))
    });
    group.bench_function("evaluate one-membership rule (fixed cost)", |b| {
        b.iter(|| policies.evaluate("data.orders.has_scope", black_box(&allowed)))
    });
    // The same evaluation from several threads at once, reported as the time one evaluation
    // takes in its thread: it should stay close to the single-thread figure (no lock every
    // request queues on).
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8) as u64;
    let name = format!("evaluate object decision, {threads} threads (latency per evaluation)");
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(threads);
            let started = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    let policies = &policies;
                    let allowed = &allowed;
                    s.spawn(move || {
                        for _ in 0..per_thread {
                            let _ = black_box(
                                policies.evaluate("data.orders.decision", black_box(allowed)),
                            );
                        }
                    });
                }
            });
            started.elapsed() * u32::try_from(threads).unwrap_or(1)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
