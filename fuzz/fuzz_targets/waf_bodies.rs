//! Body and head extraction of arbitrary bytes under every content type: no panic, limits
//! respected; then every view of every target.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_waf::extract::{BodyKind, ExtractLimits, body_kind, body_targets, head_targets};
use portcullis_waf::transform::{View, Views};

const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("application/problem+json"),
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=B"),
    Some("multipart/form-data; boundary=\"--x y\""),
    Some("multipart/form-data"),
    Some("multipart/mixed; boundary=B"),
    Some("application/x-www-form-urlencoded, x"),
    Some("application/x-www-form-urlencoded; v=/json"),
    Some("application/xml"),
    Some("application/soap+xml; charset=utf-16"),
    Some("application/graphql"),
    Some("text/plain"),
    Some("image/png"),
    Some("application/x-unknown"),
    None,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    let limits = ExtractLimits {
        max_depth: 1 + usize::from(selector % 32),
        max_targets: 64 + usize::from(selector),
    };
    let _ = body_kind(content_type);

    let mut out = Vec::new();
    let mut findings = Vec::new();
    // The body bytes double as a query string and a cookie header when they fit.
    let query: String = body
        .iter()
        .take(2048)
        .map(|&b| {
            if b.is_ascii_graphic() && b != b'#' {
                b as char
            } else {
                '&'
            }
        })
        .collect();
    if let Ok(req) = http::Request::builder()
        .uri(format!("/f?{query}"))
        .header("cookie", query.replace('&', ";"))
        .body(())
    {
        let (head, ()) = req.into_parts();
        let mut head_out = Vec::new();
        head_targets(&head, "/f", &limits, &mut head_out, &mut findings);
        assert!(head_out.len() <= limits.max_targets);
        assert!(findings.len() <= 1);
    }
    findings.clear();

    let facts = body_targets(content_type, body, &limits, &mut out, &mut findings);
    assert!(out.len() <= limits.max_targets);
    assert!(findings.iter().filter(|f| f.rule == 1003).count() <= 1);
    if facts.kind == BodyKind::Binary {
        assert!(out.is_empty());
    }

    let mut views = Views::new();
    for t in &out {
        views.load(&t.value);
        for v in View::ALL {
            let _ = views.get(v);
        }
        let _ = t.address();
    }
});
