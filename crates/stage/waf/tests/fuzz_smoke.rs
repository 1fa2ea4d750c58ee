//! A stable-Rust randomized smoke test of the normalisation and extraction code: random bytes
//! and structured adversarial inputs (deep nesting, many parameters, broken escapes, mutated
//! JSON/XML/multipart/form bodies) must never panic, and the outputs must respect the limits.
//! The seed is fixed (reproducible); set `WAF_FUZZ_SEED` to explore others. The coverage-guided
//! fuzzer lives in `/fuzz` (nightly).

use portcullis_waf::extract::{BodyKind, ExtractLimits, body_kind, body_targets, head_targets};
use portcullis_waf::model::{Location, Target};
use portcullis_waf::transform::{View, Views};

fn rng() -> fastrand::Rng {
    let seed = std::env::var("WAF_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0fc0_ffee);
    fastrand::Rng::with_seed(seed)
}

/// Pieces that exercise the decoders' edge cases.
const TOKENS: &[&str] = &[
    "%",
    "%2",
    "%25",
    "%27",
    "%2527",
    "%u",
    "%u00",
    "%u0027",
    "%uD83D",
    "%uDE00",
    "%c0",
    "%af",
    "%c0%ae",
    "%e0%80",
    "%ff",
    "%00",
    "%0a",
    "+",
    "&",
    "&#",
    "&#x",
    "&#0000106",
    "&#x3c",
    "&lt",
    "&lt;",
    "&Tab;",
    "&colon",
    "&amp;",
    "&#99999999999;",
    ";",
    "/*",
    "*/",
    "/*!",
    "/*!50000",
    "--",
    "-- ",
    "#",
    "\n",
    "\r\n",
    "\t",
    "\u{b}",
    "'",
    "\"",
    "\\",
    "`",
    "$",
    "$IFS",
    "${IFS",
    "${IFS%??}",
    "$@",
    "$(",
    ")",
    "{",
    ",",
    "}",
    "..",
    "/",
    "./",
    "..;/",
    "//",
    "\u{0}",
    "\u{1}",
    "\u{7f}",
    "\u{85}",
    "\u{9b}",
    "é",
    "＜",
    "ｓｃｒｉｐｔ",
    "\u{200b}",
    "\u{2019}",
    "\u{fdfa}",
    "\u{130}",
    "ﬁ",
    "<script>",
    "UNION SELECT",
    "A",
    " ",
    "  ",
    "=",
    "[",
    "]",
    "\u{fffd}",
];

fn token_string(r: &mut fastrand::Rng, max: usize) -> String {
    let n = r.usize(0..max);
    let mut s = String::new();
    for _ in 0..n {
        if r.u8(..) < 40 {
            s.push(r.char(..));
        } else {
            s.push_str(TOKENS[r.usize(..TOKENS.len())]);
        }
    }
    s
}

fn random_bytes(r: &mut fastrand::Rng, max: usize) -> Vec<u8> {
    let mut v = vec![0u8; r.usize(0..max)];
    r.fill(&mut v);
    v
}

/// Random edits: flip, insert, delete, duplicate a slice, truncate.
fn mutate(r: &mut fastrand::Rng, mut v: Vec<u8>) -> Vec<u8> {
    for _ in 0..r.usize(0..6) {
        if v.is_empty() {
            v.push(r.u8(..));
            continue;
        }
        let i = r.usize(..v.len());
        match r.u8(0..6) {
            0 => v[i] = r.u8(..),
            1 => v.insert(
                i,
                *b"{}[]<>\"'\\&;=%-\r\n/:,!?"
                    .get(r.usize(..21))
                    .unwrap_or(&b'x'),
            ),
            2 => {
                v.remove(i);
            }
            3 => {
                let j = r.usize(i..v.len());
                let piece = v[i..j].to_vec();
                v.splice(i..i, piece);
            }
            4 => v.truncate(i),
            _ => {
                let t = TOKENS[r.usize(..TOKENS.len())].as_bytes();
                v.splice(i..i, t.iter().copied());
            }
        }
    }
    v
}

fn check_views(views: &mut Views, fresh: &mut Views, value: &str) {
    views.load(value);
    let mut got = Vec::new();
    for v in View::ALL {
        got.push(views.get(v).to_string());
    }
    let raw_len = value.len();
    assert_eq!(got[0], value);
    let decoded = &got[1];
    assert!(decoded.len() <= raw_len * 3 + 3, "{value:?}");
    assert!(
        !decoded
            .chars()
            .any(|c| c.is_control() && !c.is_whitespace()),
        "control left in Decoded of {value:?}: {decoded:?}"
    );
    for (i, view) in [(2, View::Canonical), (3, View::Sql), (4, View::Shell)] {
        let s = &got[i];
        assert!(
            s.len() <= raw_len * 60 + 8,
            "{view:?} of {value:?} too long"
        );
        assert!(
            !s.starts_with(' ') && !s.ends_with(' ') && !s.contains("  "),
            "{view:?} of {value:?}: {s:?}"
        );
        assert!(
            !s.chars().any(|c| c.is_whitespace() && c != ' '),
            "{view:?} of {value:?}: {s:?}"
        );
        assert!(
            !s.bytes().any(|b| b.is_ascii_uppercase()),
            "{view:?} of {value:?}: {s:?}"
        );
    }
    let path = &got[5];
    assert!(
        !path.contains('\\') && !path.contains("//"),
        "Path of {value:?}: {path:?}"
    );
    assert!(
        !path.bytes().any(|b| b.is_ascii_uppercase()),
        "Path of {value:?}: {path:?}"
    );
    // The cache of the previous value never leaks into the next one.
    fresh.load(value);
    for (k, v) in View::ALL.into_iter().enumerate().rev() {
        assert_eq!(
            fresh.get(v),
            got[k],
            "{v:?} of {value:?} depends on history"
        );
    }
    *fresh = Views::new();
}

#[test]
fn views_survive_random_input() {
    let mut r = rng();
    let mut views = Views::new();
    let mut fresh = Views::new();
    for _ in 0..4000 {
        let value = match r.u8(0..3) {
            0 => String::from_utf8_lossy(&random_bytes(&mut r, 64)).into_owned(),
            1 => token_string(&mut r, 24),
            _ => {
                let seed = token_string(&mut r, 12).into_bytes();
                let v = mutate(&mut r, seed);
                String::from_utf8_lossy(&v).into_owned()
            }
        };
        check_views(&mut views, &mut fresh, &value);
    }
}

#[test]
fn views_survive_long_adversarial_values() {
    let mut views = Views::new();
    let mut fresh = Views::new();
    let long = [
        "%".repeat(20_000),
        "%25".repeat(10_000),
        "%u".repeat(10_000),
        "&".repeat(20_000),
        "&#".repeat(10_000),
        format!("&#{}", "0".repeat(50_000)),
        "&lt".repeat(10_000),
        "/*".repeat(10_000),
        "/*!".repeat(10_000),
        "-- ".repeat(10_000),
        "'".repeat(20_000),
        "\\".repeat(20_000),
        "${IFS".repeat(5_000),
        "{".repeat(20_000),
        "{a,".repeat(10_000),
        "../".repeat(10_000),
        ";".repeat(20_000),
        "\u{fdfa}".repeat(5_000),
        "%c0".repeat(10_000),
        "\u{0}".repeat(20_000),
    ];
    for v in &long {
        check_views(&mut views, &mut fresh, v);
    }
}

fn limits(r: &mut fastrand::Rng) -> ExtractLimits {
    ExtractLimits {
        max_depth: r.usize(0..70),
        max_targets: r.usize(0..300),
    }
}

/// Runs one body through the extractor and checks the invariants.
fn check_body(content_type: Option<&str>, body: &[u8], limits: &ExtractLimits) {
    let _ = body_kind(content_type);
    // The look at a body labelled binary: any prefix, cut or whole.
    let _ = portcullis_waf::sniff::is_grpc(content_type);
    for whole in [false, true] {
        let _ = portcullis_waf::sniff::textual_prefix(body, whole);
        let cut = body.get(..body.len() / 2).unwrap_or_default();
        let _ = portcullis_waf::sniff::textual_prefix(cut, whole);
    }
    let mut out: Vec<Target<'_>> = Vec::new();
    let mut findings = Vec::new();
    let facts = body_targets(content_type, body, limits, &mut out, &mut findings);
    assert!(
        out.len() <= limits.max_targets,
        "{} targets over {}",
        out.len(),
        limits.max_targets
    );
    assert!(findings.iter().filter(|f| f.rule == 1003).count() <= 1);
    assert!(findings.len() <= 3, "{findings:?}");
    if matches!(facts.kind, BodyKind::Json | BodyKind::Xml) {
        for t in &out {
            assert!(t.name.len() <= 1024, "name of {} bytes", t.name.len());
        }
    }
    if facts.kind == BodyKind::Binary {
        assert!(out.is_empty());
    }
    for t in &out {
        assert_eq!(t.location, Location::Body);
        let _ = t.address();
    }
}

const JSON: &[u8] = br#"{"user":{"name":"bob \u0027x","tags":["a",1,2.5e3,true,null],"we ird":{"k":[[]]}},"n":-0.0}"#;
const XML: &[u8] = br#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///x">]><r a="1 &amp; 2"><i id="x">t &e; &#60;</i><![CDATA[<c>]]><?pi x?></r>"#;
const FORM: &[u8] = b"a=1&b=%27+or+1%3D1&c[]=x&%zz=&&d";
const MULTIPART: &[u8] = b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.php\"\r\nContent-Type: text/plain\r\n\r\n<?php\r\n--B--\r\n";

const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=B"),
    Some("multipart/form-data"),
    Some("multipart/form-data; boundary=\"B\""),
    Some("application/xml"),
    Some("application/soap+xml"),
    Some("application/graphql"),
    Some("text/plain"),
    Some("image/png"),
    Some("application/x-unknown"),
    Some(";;;=\"\\"),
    Some(""),
    None,
];

#[test]
fn bodies_survive_mutation() {
    let mut r = rng();
    let seeds: [&[u8]; 4] = [JSON, XML, FORM, MULTIPART];
    for _ in 0..6000 {
        let base = seeds[r.usize(..seeds.len())];
        let body = match r.u8(0..4) {
            0 => random_bytes(&mut r, 512),
            1 => base.to_vec(),
            _ => mutate(&mut r, base.to_vec()),
        };
        let ct = CONTENT_TYPES[r.usize(..CONTENT_TYPES.len())];
        let l = limits(&mut r);
        check_body(ct, &body, &l);
    }
}

#[test]
fn bodies_survive_random_content_types() {
    let mut r = rng();
    for _ in 0..2000 {
        let ct = String::from_utf8_lossy(&mutate(
            &mut r,
            b"multipart/form-data; boundary=B; charset=utf-8".to_vec(),
        ))
        .into_owned();
        check_body(Some(&ct), MULTIPART, &ExtractLimits::default());
        let ct = token_string(&mut r, 8);
        check_body(Some(&ct), JSON, &ExtractLimits::default());
    }
}

#[test]
fn bodies_survive_adversarial_shapes() {
    let l = ExtractLimits::default();
    let mut many_parts = Vec::new();
    for i in 0..100_000 {
        many_parts.extend_from_slice(
            format!("--B\r\nContent-Disposition: form-data; name=p{i}\r\n\r\nv\r\n").as_bytes(),
        );
    }
    many_parts.extend_from_slice(b"--B--");
    let many_params: String = (0..100_000).map(|i| format!("p{i}=%2{i}&")).collect();
    let cases: Vec<(Option<&str>, Vec<u8>)> = vec![
        (Some("application/json"), b"[".repeat(1 << 20)),
        (Some("application/json"), b"{\"a\":".repeat(200_000)),
        (
            Some("application/json"),
            format!("[{}]", "1,".repeat(100_000) + "1").into_bytes(),
        ),
        (Some("application/json"), b"[1e999999]".to_vec()),
        (
            Some("application/json"),
            format!("[{}]", "7".repeat(10_000)).into_bytes(),
        ),
        (
            Some("application/json"),
            format!("[-{}e-99999]", "7".repeat(10_000)).into_bytes(),
        ),
        (
            Some("application/json"),
            format!("{{\"{}\":1}}", "k".repeat(1 << 20)).into_bytes(),
        ),
        (Some("text/plain"), b"[".repeat(1 << 20)),
        (Some("application/xml"), b"<a>".repeat(100_000)),
        (
            Some("application/xml"),
            format!("<{}/>", "n".repeat(1 << 20)).into_bytes(),
        ),
        (
            Some("application/xml"),
            format!("<a>{}</a>", "&x;".repeat(100_000)).into_bytes(),
        ),
        (
            Some("application/xml"),
            format!("<a b='{}'/>", "&".repeat(100_000)).into_bytes(),
        ),
        (Some("multipart/form-data; boundary=B"), many_parts),
        (
            Some("multipart/form-data; boundary=B"),
            b"\n--B".repeat(100_000),
        ),
        (
            Some("multipart/form-data; boundary=aaaa"),
            b"\n--aaa".repeat(100_000),
        ),
        (
            Some("multipart/form-data; boundary=B"),
            [&b"--B\r\n"[..], &b"X".repeat(1 << 20)].concat(),
        ),
        (
            Some("application/x-www-form-urlencoded"),
            many_params.into_bytes(),
        ),
        (
            Some("application/x-www-form-urlencoded"),
            b"&".repeat(1 << 20),
        ),
        (None, b"\0".repeat(1 << 20)),
    ];
    for (ct, body) in &cases {
        check_body(*ct, body, &l);
    }
}

#[test]
fn heads_survive_random_requests() {
    let mut r = rng();
    let l = ExtractLimits::default();
    for _ in 0..3000 {
        let query = mutate(&mut r, FORM.to_vec());
        let query: String = query
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() && b != b'#' {
                    b as char
                } else {
                    '%'
                }
            })
            .collect();
        let Ok(uri) = http::Uri::try_from(format!("/p?{query}")) else {
            continue;
        };
        let mut req = http::Request::builder().uri(uri);
        for _ in 0..r.usize(0..4) {
            let mut v = mutate(&mut r, b"sid=1; a%20b=%ff; we$ird; ;=".to_vec());
            v.retain(|&b| b != b'\r' && b != b'\n' && b != 0 && b != 0x7f);
            if let Ok(v) = http::HeaderValue::from_bytes(&v) {
                req = req.header(if r.bool() { "cookie" } else { "x-test" }, v);
            }
        }
        let Ok(req) = req.body(()) else { continue };
        let (head, ()) = req.into_parts();
        let limits = if r.bool() { l } else { limits(&mut r) };
        let mut out = Vec::new();
        let mut findings = Vec::new();
        head_targets(&head, "/p", &limits, &mut out, &mut findings);
        assert!(out.len() <= limits.max_targets);
        assert!(findings.iter().all(|f| f.rule == 1003) && findings.len() <= 1);
    }
}
