//! Request smuggling regressions (HTTP/1.1 desync, CWE-444), sent as raw bytes so no client
//! library can tidy them up. Each must be refused with 400 and a closed connection, reach no
//! upstream, and leave the gateway healthy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use portcullis_test_support::client::{raw_exchange, raw_exchange_in_pieces};

const CASES: &[(&str, &[u8])] = &[
    ("cl_te_both", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("duplicate_cl_equal", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
    ("duplicate_cl_different", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("cl_list", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello"),
    ("te_xchunked", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ("te_chunked_identity", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
    ("te_identity_chunked", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n"),
    ("te_line_folded", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
    ("te_in_http10", b"POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("invalid_chunk_size", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ("header_name_with_space", b"GET /x HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"),
    ("header_name_control_char", b"GET /x HTTP/1.1\r\nHost: a\r\nBad\x01Name: x\r\n\r\n"),
    ("obs_fold", b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: x\r\n  folded\r\n\r\n"),
    ("bare_cr", b"GET /x HTTP/1.1\rHost: a\r\n\r\n"),
    ("bare_cr_before_the_last_line_end", b"GET /x HTTP/1.1\r\nHost: a\r\r\n\r\n"),
    ("nul_in_head", b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n"),
    ("absolute_form_disagrees_with_host", b"GET http://internal.example/x HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("two_hosts", b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("http11_without_host", b"GET /x HTTP/1.1\r\n\r\n"),
    ("te_trailing_space", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n0\r\n\r\n"),
    ("te_tab", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n"),
    ("bare_lf", b"GET /x HTTP/1.1\nHost: a\n\n"),
    ("bare_lf_after_clean_request", b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\nHost: a\n\n"),
    ("chunk_missing_crlf", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"),
    // Chunk lines parsers read differently ("funky chunks", 2025): a line feed alone ending a
    // chunk-size line, a chunk extension or a chunk's data, a chunk size with a sign, a prefix,
    // a space before it or more digits than 64 bits hold, a bare line feed in the trailer.
    ("chunk_size_bare_lf", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
    ("chunk_ext_bare_lf", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nxx\r\nhello\r\n0\r\n\r\n"),
    ("chunk_data_bare_lf", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n"),
    ("chunk_size_signed", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n"),
    ("chunk_size_0x", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"),
    ("chunk_size_leading_space", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n"),
    ("chunk_size_overflow", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n"),
    ("trailer_bare_lf", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\n\r\n"),
    ("cl_signed", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"),
    // A method in the wrong case passes rules written for its capitals (a route's methods,
    // authorization per method) and reaches upstreams that fold it.
    ("method_lowercase", b"delete /x HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("method_mixed_case", b"Get /x HTTP/1.1\r\nHost: a\r\n\r\n"),
    // Fields the request's reading rests on, named hop-by-hop: the upstream would read the
    // request without them.
    ("connection_names_content_length", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\nhello"),
    // A Host that is not a host: `*.example.com` routes would take it, upstreams build links
    // from it.
    ("host_not_a_host_name", b"GET /x HTTP/1.1\r\nHost: evil.com/.example.com\r\n\r\n"),
    ("host_with_userinfo", b"GET /x HTTP/1.1\r\nHost: user@a\r\n\r\n"),
    ("connection_names_host", b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Host\r\n\r\n"),
    // Request lines hyper would refuse with a bare answer of its own (no problem document,
    // request id or audit event): the framing reader refuses them first.
    ("target_not_utf8", b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("target_with_space", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("target_with_angle_brackets", b"GET /<x> HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("version_http12", b"GET /x HTTP/1.2\r\nHost: a\r\n\r\n"),
    ("two_spaces_in_request_line", b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("method_not_a_token", b"GE(T /x HTTP/1.1\r\nHost: a\r\n\r\n"),
    // An upgrade's or CONNECT's head gets the Transfer-Encoding checks too (the reader leaves
    // what follows such a head alone, not the head).
    ("upgrade_te_identity", b"POST /x HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\nTransfer-Encoding: identity\r\n\r\n"),
    ("upgrade_te_in_http10", b"POST /x HTTP/1.0\r\nHost: a\r\nUpgrade: foo\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    // Only the whole HTTP/2 preface, first on the connection, is HTTP/2; another head that
    // reads `PRI * HTTP/2.0` is refused.
    ("pri_without_the_rest_of_the_preface", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
    ("preface_after_an_empty_line", b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("many_empty_lines_first", b"\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n"),
];

/// A gateway with one route, for every path, to a recording upstream.
async fn proxy_to_upstream() -> (TestUpstream, Gateway) {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "upstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        up.url()
    ));
    (up, gw)
}

/// The gateway's own refusal, never a bare parser error: one 400 answer, a problem document
/// with the request id in the body and the header, and the connection closed.
fn assert_refused(name: &str, out: &str, closed: bool) {
    assert_refused_with("400", name, out, closed);
}

fn assert_refused_with(status: &str, name: &str, out: &str, closed: bool) {
    assert!(
        out.starts_with(&format!("HTTP/1.1 {status} ")),
        "{name}: {}",
        &out[..out.len().min(300)]
    );
    let lower = out.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{name}: {out}"
    );
    assert!(lower.contains("\r\nx-request-id: "), "{name}: {out}");
    assert!(out.contains("\"request_id\""), "{name}: {out}");
    assert!(
        closed,
        "{name}: the connection must be closed after a framing error"
    );
    assert!(
        !out.contains("\r\nHTTP/1.1 2"),
        "{name}: exactly one response: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_are_refused_and_close_the_connection() {
    let (up, gw) = proxy_to_upstream().await;
    let addr = gw.listener("public");
    for (name, bytes) in CASES {
        let (out, closed) = raw_exchange(addr, bytes).await;
        assert_refused(name, &out, closed);
        // Still healthy.
        let ok = raw_http(
            addr,
            b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            ok.starts_with("HTTP/1.1 200"),
            "{name}: unhealthy afterwards: {ok}"
        );
    }
    assert_eq!(up.hits_excluding("/health"), 0, "{:?}", up.requests());
}

/// HTTP/1.0 needs no `Host`: an absolute-form target's authority then names the host. Routes
/// match its host (after any `@`) and the upstream is sent it as `Host`, so one with user
/// information (`admin.example:443@www.example`) would be routed by one name and read by
/// upstreams as another: refused, like a `Host` that is no host. One that is a host is routed
/// by it and sent upstream as `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_absolute_form_target_without_host_must_name_a_host() {
    let (up, gw) = proxy_to_upstream().await;
    let addr = gw.listener("public");
    for bytes in [
        &b"GET http://admin.example:443@www.example/users HTTP/1.0\r\n\r\n"[..],
        &b"GET http://a!b.example/users HTTP/1.0\r\n\r\n"[..],
    ] {
        let (out, closed) = raw_exchange(addr, bytes).await;
        let name = String::from_utf8_lossy(bytes);
        assert!(out.starts_with("HTTP/1.0 400 "), "{name}: {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{name}: {out}"
        );
        assert!(
            out.contains("\"detail\":\"the Host is not a host name or address (with a port)\""),
            "{name}: {out}"
        );
        assert!(closed, "{name}: the connection stayed open");
    }
    assert_eq!(up.hits_excluding("/health"), 0, "{:?}", up.requests());
    let out = raw_http(addr, b"GET http://www.example:8080/users HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.0 200 "), "{out}");
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].uri, "/users");
    assert_eq!(seen[0].headers["host"], "www.example:8080");
}

/// A target longer than hyper reads, and more field lines than it reads: the gateway's own
/// 414 and 431 (problem documents, audited), never hyper's bare ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_and_field_counts_past_what_hyper_reads_are_the_gateways_refusals() {
    let (up, gw) = proxy_to_upstream().await;
    let addr = gw.listener("public");
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(65_600));
    let (out, closed) = raw_exchange(addr, long.as_bytes()).await;
    assert_refused_with("414", "target_too_long", &out, closed);
    let mut many = String::from("GET /x HTTP/1.1\r\nHost: a\r\n");
    for i in 0..201 {
        many.push_str(&format!("x-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    let (out, closed) = raw_exchange(addr, many.as_bytes()).await;
    assert_refused_with("431", "too_many_fields", &out, closed);
    let id = raw_request_id(&out);
    let ev = audit_of(&gw, &id);
    assert_eq!(ev["stage"], "protocol", "{ev}");
    assert_eq!(ev["reason"], "too_many_headers", "{ev}");
    assert_eq!(up.hits(), 0);
}

/// The same attempts trickled in three pieces, cut inside the first head: the gateway holds
/// an incomplete head back from the HTTP parser until its end arrives, so a head cut into
/// reads gets the same refusal as a whole one (never the parser's bare 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_cut_into_pieces_get_the_same_refusal() {
    let (up, gw) = proxy_to_upstream().await;
    let addr = gw.listener("public");
    let pause = std::time::Duration::from_millis(40);
    for (name, bytes) in CASES {
        let head_end = [&b"\r\n\r\n"[..], b"\n\n"]
            .iter()
            .filter_map(|end| bytes.windows(end.len()).position(|w| w == *end))
            .min()
            .unwrap_or(bytes.len());
        let (a, b) = (head_end / 3, head_end * 2 / 3);
        let pieces = [&bytes[..a], &bytes[a..b], &bytes[b..]];
        let (out, closed) = raw_exchange_in_pieces(addr, &pieces, pause).await;
        assert_refused(name, &out, closed);
    }
    // A clean request cut the same way is served.
    let clean: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let (out, _) =
        raw_exchange_in_pieces(addr, &[&clean[..9], &clean[9..30], &clean[30..]], pause).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(up.hits_excluding("/health"), 1, "{:?}", up.requests());
}

/// A head longer than the gateway reads (twice the head limits, 80 KiB by default) gets the
/// same answer whether it came in one read or in many: 431 as a problem document, the
/// connection closed, and nothing sent after it in the same bytes is read as a request. (In
/// one read, such a head used to be answered and the connection kept; in pieces, hyper
/// answered a bare 431.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_too_large_to_read_is_refused_the_same_way_however_it_arrives() {
    let (up, gw) = proxy_to_upstream().await;
    let addr = gw.listener("public");
    let mut big = b"GET /big HTTP/1.1\r\nHost: a\r\nX-Filler: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 90 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    // Then a smuggling attempt and a plain request, in the same bytes.
    big.extend_from_slice(CASES[0].1);
    big.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n");
    let pause = std::time::Duration::from_millis(40);
    for (name, pieces) in [
        ("whole", vec![&big[..]]),
        ("in pieces", vec![&big[..85 * 1024], &big[85 * 1024..]]),
        (
            "byte by byte past the limit",
            big.chunks(40 * 1024).collect(),
        ),
    ] {
        let (out, closed) = raw_exchange_in_pieces(addr, &pieces, pause).await;
        assert_refused_with("431", name, &out, closed);
        assert!(
            out.contains("urn:portcullis:problem:headers_too_large"),
            "{name}: {out}"
        );
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{name}: {out}");
    }
    let ok = raw_http(
        addr,
        b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "unhealthy afterwards: {ok}");
    assert_eq!(up.hits_excluding("/health"), 0, "{:?}", up.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_from_the_gateway_is_a_problem_document() {
    let gw = gateway(
        "upstreams: { d: { kind: echo } }\nroutes:\n  - { name: all, match: { prefix: / }, upstream: d }\n",
    );
    let (out, closed) = raw_exchange(gw.listener("public"), CASES[0].1).await;
    assert!(closed);
    assert!(out.contains("application/problem+json"), "{out}");
    assert!(
        out.contains("Content-Length and Transfer-Encoding"),
        "{out}"
    );
    let ev = gw
        .wait_for_audit(
            |e| e["reason"] == "bad_request",
            std::time::Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(ev["stage"], "protocol");

    // A head hyper could not even parse gets the same: a problem document with its request
    // id, and an audit event with the method and path of its own request line (not those of
    // the stand-in hyper was handed).
    let bad = CASES
        .iter()
        .find(|(n, _)| *n == "header_name_with_space")
        .unwrap()
        .1;
    let (out, closed) = raw_exchange(gw.listener("public"), bad).await;
    assert!(closed);
    assert!(out.contains("application/problem+json"), "{out}");
    assert!(out.contains("not valid HTTP/1.1"), "{out}");
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    let id = doc["request_id"].as_str().unwrap().to_string();
    let ev = gw
        .wait_for_audit(|e| e["request_id"] == id, std::time::Duration::from_secs(5))
        .unwrap();
    assert_eq!(ev["stage"], "protocol");
    assert_eq!(ev["reason"], "bad_request");
    assert_eq!(ev["method"], "GET", "{ev}");
    assert_eq!(ev["path"], "/x", "{ev}");
    assert_eq!(ev["host"], serde_json::Value::Null, "{ev}");
}

/// The audit event of a head the framing reader refused tells what the client asked for, as
/// far as its request line reads: the method (empty when it is not a token), the target's path
/// (never its query), HTTP/1.0 when it said so, at most 256 bytes of it — on the connection's
/// first head or after a clean one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_heads_audit_event_names_its_request_line() {
    let (up, gw) = proxy_to_upstream().await;
    let addr = gw.listener("public");
    let long = format!("/{}", "a".repeat(400));
    let long_head = format!("GET {long} HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n");
    // (what is sent, in pieces read apart; the event's method, path, version)
    let cases: &[(&[&[u8]], &str, &str, &str)] = &[
        (
            &[b"DELETE /admin/users?token=s3cr3t HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"],
            "DELETE",
            "/admin/users",
            "HTTP/1.1",
        ),
        (
            &[b"POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
            "POST",
            "/x",
            "HTTP/1.0",
        ),
        (
            &[b"G\x01T /odd HTTP/1.1\r\nHost: a\r\n\r\n"],
            "",
            "/odd",
            "HTTP/1.1",
        ),
        (
            &[
                b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n",
                b"PUT /second HTTP/1.1\nHost: a\n\n",
            ],
            "PUT",
            "/second",
            "HTTP/1.1",
        ),
        (&[long_head.as_bytes()], "GET", &long[..252], "HTTP/1.1"),
        // An absolute-form target: its path only, never the credentials of its authority.
        (
            &[b"GET http://user:hunter2@a/in?x=1 HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"],
            "GET",
            "/in",
            "HTTP/1.1",
        ),
        (
            &[b"GET http://user:hunter2@a HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"],
            "GET",
            "/",
            "HTTP/1.1",
        ),
        // Read together: the clean head is refused with the other (one answer, one event),
        // and the event names the head that was refused.
        (
            &[b"GET /together HTTP/1.1\r\nHost: a\r\n\r\nPATCH /smuggled HTTP/1.1\nHost: a\n\n"],
            "PATCH",
            "/smuggled",
            "HTTP/1.1",
        ),
    ];
    for (pieces, method, path, version) in cases {
        let (out, closed) =
            raw_exchange_in_pieces(addr, pieces, std::time::Duration::from_millis(300)).await;
        // The last answer is the refusal (after the clean first request's, in one case).
        let refusal = &out[out.rfind("HTTP/1.1 400 ").unwrap()..];
        assert_refused(path, refusal, closed);
        let body = &refusal[refusal.find("\r\n\r\n").unwrap() + 4..];
        let doc: serde_json::Value = serde_json::from_str(body).unwrap();
        let id = doc["request_id"].as_str().unwrap().to_string();
        let ev = gw
            .wait_for_audit(|e| e["request_id"] == id, std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(ev["stage"], "protocol", "{ev}");
        assert_eq!(ev["reason"], "bad_request", "{ev}");
        assert_eq!(ev["method"], *method, "{ev}");
        assert_eq!(ev["path"], *path, "{ev}");
        assert_eq!(ev["http_version"], *version, "{ev}");
        assert_eq!(ev["host"], serde_json::Value::Null, "{ev}");
        assert_eq!(ev["user_agent"], serde_json::Value::Null, "{ev}");
        assert!(!ev.to_string().contains("s3cr3t"), "{ev}");
        assert!(!ev.to_string().contains("unreadable"), "{ev}");
    }
    // Only the clean first request went upstream.
    let uris: Vec<String> = up.requests().iter().map(|r| r.uri.clone()).collect();
    assert_eq!(uris, ["/first"]);
    let ok = raw_http(
        addr,
        b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_the_gateways_framing_not_the_clients() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "upstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc, waf: {{ mode: detect }} }}\n",
        up.url()
    ));
    // A well-formed chunked request whose chunk holds what looks like a second request. (The
    // route's WAF is in detect mode: its CRLF rules would refuse the body; what is under test
    // is the framing the upstream sees after the WAF has buffered the body.)
    let smuggled = "GET /admin HTTP/1.1\r\nHost: a\r\n\r\n";
    let raw = format!(
        "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let out = raw_http(gw.listener("public"), raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1, "one request upstream, never two: {reqs:?}");
    assert_eq!(reqs[0].body, smuggled.as_bytes());
    assert!(reqs.iter().all(|r| r.uri != "/admin"));
}

/// A client that sends a malformed head and at once closes its sending side (as `nc` and some
/// scanners do) still gets the refusal: the gateway does not take the half-close for a reason
/// to drop the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closing_client_still_gets_the_refusal() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = gateway(
        "upstreams: { d: { kind: echo } }\nroutes:\n  - { name: all, match: { prefix: / }, upstream: d }\n",
    );
    for (name, bytes) in CASES {
        for _ in 0..3 {
            let mut s = tokio::net::TcpStream::connect(gw.listener("public"))
                .await
                .unwrap();
            s.write_all(bytes).await.unwrap();
            s.shutdown().await.unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out))
                .await
                .unwrap_or_else(|_| panic!("{name}: no answer, connection left open"))
                .unwrap();
            let out = String::from_utf8_lossy(&out);
            assert!(out.starts_with("HTTP/1.1 400"), "{name}: {out:?}");
            assert!(out.contains("application/problem+json"), "{name}: {out}");
        }
    }
}

/// A clean head whose malformed body comes in a later read: the request has started by then,
/// so the refusal is the body's (400 `body_read_failed`, a problem document with its request
/// id) and the connection is closed; the upstream never gets a complete request. That holds
/// for framing hyper alone would read on (a bare LF in the trailers): the framing reader fails
/// the read rather than pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_after_its_head_is_refused() {
    let (up, gw) = proxy_to_upstream().await;
    let addr = gw.listener("public");
    let pause = std::time::Duration::from_millis(100);
    for name in [
        "invalid_chunk_size",
        "chunk_missing_crlf",
        "chunk_size_bare_lf",
        "chunk_ext_bare_lf",
        "chunk_data_bare_lf",
        "chunk_size_signed",
        "chunk_size_0x",
        "chunk_size_leading_space",
        "chunk_size_overflow",
        "trailer_bare_lf",
    ] {
        let bytes = CASES.iter().find(|(n, _)| *n == name).unwrap().1;
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let (out, closed) =
            raw_exchange_in_pieces(addr, &[&bytes[..end], &bytes[end..]], pause).await;
        assert_refused(name, &out, closed);
        assert!(
            out.contains("urn:portcullis:problem:body_read_failed"),
            "{name}: {out}"
        );
    }
    assert_eq!(up.hits_excluding("/health"), 0, "{:?}", up.requests());
}

/// The framing reader stops following a connection at a head that asks for an upgrade or a
/// tunnel (what follows a 101 is not HTTP/1.1). When none is made, the connection is closed
/// after the answer, so a head sent after it (here one with bare line feeds, which the
/// reader refuses) never reaches the HTTP parser unchecked, nor the upstream.
#[tokio::test]
async fn an_upgrade_not_made_closes_the_connection() {
    let (up, gw) = proxy_to_upstream().await;
    let addr = gw.listener("public");
    let firsts = [
        (
            "upgrade",
            "GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n",
        ),
        (
            "h2c",
            "GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
        ),
        ("connect", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
    ];
    for (name, first) in firsts {
        let bytes = format!("{first}GET /after HTTP/1.1\nHost: a\n\n");
        let (out, closed) = raw_exchange(addr, bytes.as_bytes()).await;
        assert!(closed, "{name}: {out}");
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{name}: {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{name}: {out}"
        );
    }
    let paths: Vec<String> = up.requests().into_iter().map(|r| r.uri).collect();
    assert!(!paths.iter().any(|p| p.starts_with("/after")), "{paths:?}");
    assert!(paths.iter().any(|p| p == "/x"), "{paths:?}");
    // A plain request on a kept-alive connection is not affected: both answers, no close.
    let (out, _) = raw_exchange(
        addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
}

/// A method or URL override — a field a backend reads as the method to run (Rack, Symfony,
/// Laravel, Express `method-override`) or the URL to serve (IIS, Symfony), in any case or
/// `_` spelling, or a `_method` query parameter — would make the backend run what the gateway
/// never authorized: refused by the protocol step (400 `bad_request` problem document with its
/// request id, audited, the connection closed), nothing upstream. Look-alikes are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_and_url_overrides_are_refused() {
    let (up, gw) = proxy_to_upstream().await;
    let addr = gw.listener("public");
    let cases: &[(&str, &str)] = &[
        (
            "POST /orders/7 HTTP/1.1\r\nHost: a\r\nX-HTTP-Method-Override: DELETE\r\n",
            "X-HTTP-Method-Override",
        ),
        (
            "POST /orders/7 HTTP/1.1\r\nHost: a\r\nx_http_method_override: DELETE\r\n",
            "X-HTTP-Method-Override",
        ),
        (
            "POST /orders/7 HTTP/1.1\r\nHost: a\r\nX-Http-Method: PUT\r\n",
            "X-HTTP-Method",
        ),
        (
            "POST /orders/7 HTTP/1.1\r\nHost: a\r\nX_METHOD_OVERRIDE: PATCH\r\n",
            "X-Method-Override",
        ),
        (
            "GET /public HTTP/1.1\r\nHost: a\r\nX-Original-URL: /admin\r\n",
            "X-Original-URL",
        ),
        (
            "GET /public HTTP/1.1\r\nHost: a\r\nx-rewrite-url: /admin\r\n",
            "X-Rewrite-URL",
        ),
        (
            "POST /orders/7?_method=DELETE HTTP/1.1\r\nHost: a\r\n",
            "_method",
        ),
        (
            "POST /orders/7?a=1&%5FMethod=DELETE HTTP/1.1\r\nHost: a\r\n",
            "_method",
        ),
        (
            "POST /orders/7?.method=DELETE HTTP/1.1\r\nHost: a\r\n",
            "_method",
        ),
    ];
    for (head, named) in cases {
        let bytes = format!("{head}Content-Length: 0\r\n\r\n");
        let (out, closed) = raw_exchange(addr, bytes.as_bytes()).await;
        assert_refused(head, &out, closed);
        let header_id = raw_request_id(&out);
        let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
        let doc: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(doc["code"], "bad_request", "{head}: {doc}");
        assert_eq!(doc["request_id"], header_id.as_str(), "{head}: {doc}");
        let detail = doc["detail"].as_str().unwrap();
        assert!(detail.contains(named), "{head}: {detail}");
        assert!(detail.contains("authorized"), "{head}: {detail}");
        let ev = audit_of(&gw, &header_id);
        assert_eq!(ev["stage"], "protocol", "{ev}");
        assert_eq!(ev["reason"], "bad_request", "{ev}");
    }
    assert_eq!(up.hits(), 0, "{:?}", up.requests());
    // Look-alikes are ordinary fields and parameters.
    let ok = raw_http(
        addr,
        b"POST /orders/7?method=DELETE&x_method=1 HTTP/1.1\r\nHost: a\r\nX-HTTP-Method-Overrides: DELETE\r\nMethod: DELETE\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].uri, "/orders/7?method=DELETE&x_method=1");
}

/// Override refusals count towards bans as the step's other refusals do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_overrides_count_towards_bans() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "bans:\n  rules:\n    - {{ name: junk, on: [bad_request], count: 2, within: 1m, ban_for: 1m }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        up.url()
    ));
    let addr = gw.listener("public");
    for bytes in [
        &b"POST /orders/7 HTTP/1.1\r\nHost: a\r\nX-HTTP-Method-Override: DELETE\r\nContent-Length: 0\r\n\r\n"[..],
        b"POST /orders/7?_method=DELETE HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    ] {
        let (out, closed) = raw_exchange(addr, bytes).await;
        assert_refused("override", &out, closed);
    }
    let (out, _) = raw_exchange(
        addr,
        b"GET /orders/7 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403 "), "{out}");
    assert!(out.contains("ip_banned"), "{out}");
    assert_eq!(up.hits(), 0, "{:?}", up.requests());
}

/// With `server.method_override: pass` (backends that need overrides), the fields and the
/// `_method` parameter go upstream as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_overrides_pass_when_the_operator_allows_them() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server: {{ method_override: pass }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        up.url()
    ));
    let out = raw_http(
        gw.listener("public"),
        b"POST /orders/7?_method=DELETE HTTP/1.1\r\nHost: a\r\nX-HTTP-Method-Override: DELETE\r\nX-Original-URL: /admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].uri, "/orders/7?_method=DELETE");
    assert_eq!(reqs[0].header("x-http-method-override"), Some("DELETE"));
    assert_eq!(reqs[0].header("x-original-url"), Some("/admin"));
    // And a body's `_method` (the WAF's rule 2401, off with `pass`).
    let out = raw_http(
        gw.listener("public"),
        b"POST /orders/7 HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 14\r\nConnection: close\r\n\r\n_method=DELETE",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(up.requests().len(), 2);
}

/// The `X-Request-ID` of a raw answer's head.
fn raw_request_id(answer: &str) -> String {
    answer
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-request-id: ")
                .map(|id| id.trim().to_string())
        })
        .unwrap()
}
