//! Body checks on order-like JSON bodies of about 2 and 4 KiB: parsing under limits, the
//! field walk, JSON Schema validation, and all three as the contract step runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_contract::fields::{Direction, FieldTree, Unknown};
use portcullis_contract::json::{self, JsonLimits};
use portcullis_contract::messages;
use serde_json::{Value, json};

fn document() -> Value {
    json!({"components": {"schemas": {
        "Order": {
            "type": "object",
            "required": ["customer", "items"],
            "properties": {
                "id": {"type": "integer", "readOnly": true},
                "customer": {"$ref": "#/components/schemas/Customer"},
                "items": {"type": "array", "maxItems": 100, "items": {"$ref": "#/components/schemas/Item"}},
                "shipping": {"allOf": [
                    {"$ref": "#/components/schemas/Address"},
                    {"properties": {"instructions": {"type": "string", "maxLength": 500}}}
                ]},
                "coupon": {"type": ["string", "null"], "pattern": "^[A-Z0-9]{4,12}$"},
                "notes": {"type": "string", "maxLength": 2000}
            }
        },
        "Customer": {
            "type": "object",
            "required": ["name", "email"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "email": {"type": "string", "format": "email"},
                "phone": {"type": "string", "pattern": "^\\+?[0-9 ]{6,20}$"}
            }
        },
        "Item": {
            "type": "object",
            "required": ["sku", "qty"],
            "properties": {
                "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                "qty": {"type": "integer", "minimum": 1, "maximum": 1000},
                "price": {"type": "number", "minimum": 0},
                "options": {"type": "object", "additionalProperties": {"type": "string"}}
            }
        },
        "Address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"}, "city": {"type": "string"},
                "zip": {"type": "string"}, "country": {"type": "string", "enum": ["DE", "FR", "NL", "US"]}
            }
        }
    }}})
}

/// An order with `n` items, serialised.
fn body(n: usize) -> Vec<u8> {
    let items: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "sku": format!("ABC-{:04}", i),
                "qty": i % 7 + 1,
                "price": 12.5 + i as f64,
                "options": {"colour": "blue", "size": "XL"}
            })
        })
        .collect();
    let order = json!({
        "customer": {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000"},
        "items": items,
        "shipping": {"street": "1 Analytical Way", "city": "London", "zip": "N1 9GU", "country": "NL",
                     "instructions": "Leave at the door"},
        "coupon": "SPRING2025",
        "notes": "Please gift wrap."
    });
    serde_json::to_vec(&order).unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let doc = document();
    let ptr = "/components/schemas/Order";
    let tree = FieldTree::compile(&doc, ptr, Direction::Request).unwrap();
    // The validator gets the schema with its `$ref`s resolvable: the whole document, entered
    // through a `$ref`.
    let mut schema = doc.clone();
    if let Value::Object(m) = &mut schema {
        m.insert("$ref".into(), json!(format!("#{ptr}")));
    }
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let limits = JsonLimits::default();

    for (name, items) in [("2KiB", 22), ("4KiB", 48)] {
        let raw = body(items);
        let mut g = c.benchmark_group(format!("body_{name}"));
        eprintln!("{name}: {} bytes", raw.len());
        let parsed = json::parse(&raw, &limits).unwrap();
        let mut out = Vec::new();
        messages::collect("body", &validator, &parsed, &mut out, 10);
        assert!(out.is_empty(), "{out:?}");

        g.bench_function("parse", |b| {
            b.iter(|| json::parse(black_box(&raw), &limits))
        });
        g.bench_function("serde_json_from_slice", |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&raw)))
        });
        g.bench_function("fields", |b| {
            let mut v = parsed.clone();
            b.iter(|| {
                let mut out = Vec::new();
                tree.apply(black_box(&mut v), Unknown::Reject, "body", &mut out, 10)
            })
        });
        g.bench_function("validate", |b| {
            b.iter(|| {
                let mut out = Vec::new();
                messages::collect("body", &validator, black_box(&parsed), &mut out, 10);
                out
            })
        });
        g.bench_function("all", |b| {
            b.iter(|| {
                let mut out = Vec::new();
                let mut v = json::parse(black_box(&raw), &limits).unwrap_or_default();
                tree.apply(&mut v, Unknown::Strip, "body", &mut out, 10);
                messages::collect("body", &validator, &v, &mut out, 10);
                out
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
