//! The cost of inspecting a typical API request: a few query parameters, ordinary browser-ish
//! headers and a 2 KiB JSON body, with every detector on at paranoia 1 — and the same request
//! carrying an attack (the path that builds findings).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_waf::RouteWaf;
use portcullis_waf::detect::{VALUE_DETECTORS, sqli, xss};
use portcullis_waf::engine::{BodyState, Inspection, inspect};
use portcullis_waf::model::{InspectFn, Location, Part, Target};
use portcullis_waf::transform::Views;

fn head(uri: &str) -> http::request::Parts {
    let (parts, ()) = http::Request::builder()
        .method("POST")
        .uri(uri)
        .header("host", "api.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("accept", "application/json")
        .header("accept-language", "en-GB,en;q=0.7")
        .header("content-type", "application/json")
        .header("cookie", "session=3f9a1c2e7b; theme=dark; consent=yes")
        .header("referer", "https://shop.example.com/cart?step=2")
        .body(())
        .unwrap()
        .into_parts();
    parts
}

/// About 2 KiB of ordinary order JSON.
fn body() -> String {
    let mut items = Vec::new();
    for i in 0..12 {
        items.push(format!(
            r#"{{"sku":"SKU-{i:04}","name":"Walking boots, size {i}","qty":{q},"price":{p}.99,"note":"Gift wrap, please; it's for Anne's birthday"}}"#,
            q = i % 3 + 1,
            p = 20 + i
        ));
    }
    format!(
        r#"{{"customer":{{"name":"Dr. Ann O'Neil","email":"ann@example.org","address":"12, rue de l'Église, 75004 Paris"}},"items":[{}],"coupon":"WINTER-10","comment":"Leave at the door -- ring twice."}}"#,
        items.join(",")
    )
}

fn bench(c: &mut Criterion) {
    let route = RouteWaf::default();
    let benign_head = head("/api/orders?page=2&sort=price&q=blue+walking+boots&currency=EUR");
    let b = body();
    assert!(b.len() > 1500, "{}", b.len());
    let ip = "198.51.100.7".parse().unwrap();
    c.bench_function("waf/benign: 4 params, 6 headers, 2 KiB JSON", |bn| {
        bn.iter(|| {
            let out = inspect(
                black_box(&route),
                &Inspection {
                    head: &benign_head,
                    path: "/api/orders",
                    client_ip: ip,
                    body: BodyState::Buffered(b.as_bytes()),
                },
            );
            assert!(!out.blocked);
            out
        })
    });
    let attack_head =
        head("/api/orders?page=2&sort=price&q=1%27%20union%20select%20password%20from%20users--");
    c.bench_function("waf/attack: SQLi in a parameter, 2 KiB JSON", |bn| {
        bn.iter(|| {
            let out = inspect(
                black_box(&route),
                &Inspection {
                    head: &attack_head,
                    path: "/api/orders",
                    client_ip: ip,
                    body: BodyState::Buffered(b.as_bytes()),
                },
            );
            assert!(out.blocked);
            out
        })
    });
    c.bench_function("waf/head only: 4 params, 6 headers", |bn| {
        bn.iter(|| {
            inspect(
                black_box(&route),
                &Inspection {
                    head: &benign_head,
                    path: "/api/orders",
                    client_ip: ip,
                    body: BodyState::None,
                },
            )
        })
    });
}

/// Values of the typical request that reach the detectors (prose with apostrophes, semicolons
/// and parentheses), one detector at a time: where the per-value cost goes.
const VALUES: &[(&str, &str)] = &[
    ("note", "Gift wrap, please; it's for Anne's birthday"),
    ("name", "Dr. Ann O'Neil"),
    ("address", "12, rue de l'Église, 75004 Paris"),
    ("item", "Walking boots, size 7"),
    ("comment", "Leave at the door -- ring twice."),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    ),
    ("referer", "https://shop.example.com/cart?step=2"),
    ("sqli", "1' union select password from users--"),
];

fn per_value(c: &mut Criterion) {
    let all: Vec<InspectFn> = VALUE_DETECTORS.iter().map(|(_, f)| *f).collect();
    let detectors: [(&str, &[InspectFn]); 3] = [
        ("sqli", &[sqli::inspect]),
        ("xss", &[xss::inspect]),
        ("all", &all),
    ];
    let mut views = Views::new();
    let mut out = Vec::new();
    for (what, value) in VALUES {
        let t = Target::new(Location::Header, "x", Part::Value, *value);
        for (name, fns) in &detectors {
            c.bench_function(&format!("value/{name}/{what}"), |bn| {
                bn.iter(|| {
                    out.clear();
                    views.load(black_box(value));
                    for f in *fns {
                        f(&t, &mut views, 1, &mut out);
                    }
                    out.len()
                })
            });
        }
    }
}

criterion_group!(benches, bench, per_value);
criterion_main!(benches);
