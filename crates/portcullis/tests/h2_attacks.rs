//! HTTP/2 abuse, sent as raw frames: rapid reset (CVE-2023-44487) and its variant where the
//! server is made to reset (CVE-2025-8671), CONTINUATION floods, HPACK bombs, ping, settings and
//! empty-frame floods, malformed headers and lying content-length. The gateway refuses,
//! forwards nothing broken, and stays healthy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

async fn open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&h2_frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// Frames the server sent until it closed, sent GOAWAY, or `within` passed: (type, stream,
/// payload). A connection the server closes mid-write ends the list.
async fn frames(s: &mut TcpStream, within: Duration) -> Vec<(u8, u32, Vec<u8>)> {
    frames_until(s, within, |_, _| false).await
}

/// [`frames`], also ending after the first frame `stop` takes (type, stream).
async fn frames_until(
    s: &mut TcpStream,
    within: Duration,
    mut stop: impl FnMut(u8, u32) -> bool,
) -> Vec<(u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let deadline = Instant::now() + within;
    let mut chunk = [0u8; 16384];
    loop {
        while buf.len() >= 9 {
            let len = ((buf[0] as usize) << 16) | ((buf[1] as usize) << 8) | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            let stream = u32::from_be_bytes([buf[5] & 0x7f, buf[6], buf[7], buf[8]]);
            out.push((kind, stream, buf[9..9 + len].to_vec()));
            buf.drain(..9 + len);
            if kind == GOAWAY || stop(kind, stream) {
                return out;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn goaway_code(fs: &[(u8, u32, Vec<u8>)]) -> Option<u32> {
    fs.iter()
        .find(|(k, _, _)| *k == GOAWAY)
        .map(|(_, _, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
}

fn reset_of(fs: &[(u8, u32, Vec<u8>)], stream: u32) -> bool {
    fs.iter().any(|(k, s, _)| *k == RST_STREAM && *s == stream)
}

fn answered(fs: &[(u8, u32, Vec<u8>)], stream: u32) -> bool {
    fs.iter().any(|(k, s, _)| *k == HEADERS && *s == stream)
}

/// A GET of `path` on `stream`, its one HEADERS frame ending the stream.
async fn request(s: &mut TcpStream, stream: u32, path: &str) {
    s.write_all(&h2_frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &h2_block("GET", path, &[]),
    ))
    .await
    .unwrap();
}

async fn healthy(gw: &Gateway) {
    let r = send_h2c(req("GET", &format!("{}/ok", gw.url("public")), &[], "")).await;
    assert_eq!(r.status, 200);
}

async fn setup() -> (TestUpstream, Gateway) {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "upstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        up.url()
    ));
    (up, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_raw_request_is_answered() {
    // The frame writer itself is right: a clean request gets a response.
    let (up, gw) = setup().await;
    let mut s = open(gw.listener("public")).await;
    request(&mut s, 1, "/fine").await;
    let fs = frames(&mut s, Duration::from_secs(2)).await;
    assert!(answered(&fs, 1), "{fs:?}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cve_2023_44487_rapid_reset_gets_goaway() {
    let (up, gw) = setup().await;
    let mut s = open(gw.listener("public")).await;
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        burst.extend(h2_frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &h2_block("GET", "/delay/1000", &[]),
        ));
        burst.extend(h2_frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let _ = s.write_all(&burst).await;
    let fs = frames(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        goaway_code(&fs),
        Some(0xb),
        "expected GOAWAY ENHANCE_YOUR_CALM: {:?}",
        fs.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    assert!(
        up.hits() < 2000,
        "the burst must not all reach the upstream"
    );
    healthy(&gw).await;
}

/// Sends a GET on `stream`, waits until the upstream has it (the stream was accepted and went
/// through every step), then resets it. False when the request never reached the upstream
/// within 3 s or a write failed: the connection is gone.
async fn forwarded_then_reset(s: &mut TcpStream, up: &TestUpstream, stream: u32) -> bool {
    let before = up.hits();
    if !get_on(s, stream, "/delay/3000").await {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while up.hits() == before {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cancel(s, stream).await
}

/// A GET of `path` on `stream`; false when the write failed.
async fn get_on(s: &mut TcpStream, stream: u32, path: &str) -> bool {
    let head = h2_frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &h2_block("GET", path, &[]),
    );
    s.write_all(&head).await.is_ok()
}

/// `RST_STREAM` (CANCEL) on `stream`; false when the write failed.
async fn cancel(s: &mut TcpStream, stream: u32) -> bool {
    s.write_all(&h2_frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()))
        .await
        .is_ok()
}

/// The metric counts one connection closed for its resets, and the gateway still serves.
async fn closed_once_for_resets(gw: &Gateway) {
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics
            .contains("portcullis_rejections_total{stage=\"accept\",reason=\"h2_reset_flood\"} 1"),
        "{metrics}"
    );
    healthy(gw).await;
}

/// A gateway allowing 5 client resets per second and connection, in front of a test upstream.
async fn resets_limited_to_five() -> (TestUpstream, Gateway) {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server:\n  http2_max_resets_per_second: 5\n\
         upstreams:\n  svc: {{ targets: [\"{}\"] }}\n\
         routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        up.url()
    ));
    (up, gw)
}

/// The rapid reset of CVE-2023-44487, paced: each stream is reset only once its request has
/// reached the upstream. The h2 layer's bound on streams reset before they are accepted does
/// not see these, and `max_concurrent_streams` does not slow them down (a reset frees the
/// slot). A client that resets more than `server.http2_max_resets_per_second` of them in a
/// second loses the connection; one under it may cancel and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_forwarded_streams_past_the_rate_closes_the_connection() {
    let (up, gw) = resets_limited_to_five().await;
    let mut s = open(gw.listener("public")).await;
    // Under the limit: three requests cancelled once forwarded, then one answered.
    for stream in [1, 3, 5] {
        assert!(forwarded_then_reset(&mut s, &up, stream).await);
    }
    request(&mut s, 7, "/fine").await;
    let fs = frames(&mut s, Duration::from_secs(2)).await;
    assert!(answered(&fs, 7), "{fs:?}");
    assert_eq!(goaway_code(&fs), None);

    // Past it: the connection is closed, so requests stop reaching the upstream.
    let mut resets = 0u32;
    while resets < 100 && forwarded_then_reset(&mut s, &up, 9 + 2 * resets).await {
        resets += 1;
    }
    assert!(resets < 100, "the connection was never closed");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the gateway closed the connection");
    let hits = up.hits();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up.hits(), hits, "nothing more reaches the upstream");
    closed_once_for_resets(&gw).await;
}

/// Sends a GET of a long streamed answer on `stream`, waits for its answer's head, then
/// resets the stream. False when no head came within 3 s or a write failed.
async fn answered_then_reset(s: &mut TcpStream, stream: u32) -> bool {
    if !get_on(s, stream, "/stream/1000").await {
        return false;
    }
    let fs = frames_until(s, Duration::from_secs(3), |k, id| {
        k == HEADERS && id == stream
    })
    .await;
    answered(&fs, stream) && goaway_code(&fs).is_none() && cancel(s, stream).await
}

/// The same paced rapid reset, each stream reset once its answer's head came (a download
/// cancelled, over and over): the answer's body being dropped unfinished counts as the reset
/// it is, so such a client loses the connection past the rate too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_answered_streams_past_the_rate_closes_the_connection() {
    let (_up, gw) = resets_limited_to_five().await;
    let mut s = open(gw.listener("public")).await;
    let mut resets = 0u32;
    while resets < 100 && answered_then_reset(&mut s, 1 + 2 * resets).await {
        resets += 1;
    }
    assert!((5..100).contains(&resets), "closed after {resets} resets");
    closed_once_for_resets(&gw).await;
}

/// "MadeYouReset" (CVE-2025-8671): the client does not reset its streams itself, it makes the
/// server reset them with a frame that is a stream error (RFC 9113 §5.4.2) — here, once each
/// request has reached the upstream, a `WINDOW_UPDATE` that takes the stream's send window past
/// 2^31-1 (`FLOW_CONTROL_ERROR`, RFC 9113 §6.9.1). Each such reset frees the stream's slot while
/// the request it carried is still at work, as a client reset would, but the client sent no
/// `RST_STREAM`. The gateway allows 128 streams reset for a client's errors per connection
/// (h2's default is 1024), then sends `GOAWAY` with `ENHANCE_YOUR_CALM`. The vector's other
/// forms — a `WINDOW_UPDATE` of 0, `DATA` on a stream the client already ended — end the
/// connection at the first one: the h2 layer treats them as connection errors
/// (`PROTOCOL_ERROR`), stricter than the RFC's stream error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cve_2025_8671_streams_the_server_must_reset_get_goaway() {
    let (up, gw) = setup().await;
    let mut s = open(gw.listener("public")).await;
    let mut forwarded = 0u32;
    while forwarded < 400 {
        let id = 1 + 2 * forwarded;
        let before = up.hits();
        let head = h2_frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &h2_block("GET", "/delay/3000", &[]),
        );
        if s.write_all(&head).await.is_err() {
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while up.hits() == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if up.hits() == before {
            break;
        }
        forwarded += 1;
        let overflow = h2_frame(WINDOW_UPDATE, 0, id, &0x7fff_ffffu32.to_be_bytes());
        if s.write_all(&overflow).await.is_err() {
            break;
        }
    }
    let fs = frames(&mut s, Duration::from_secs(5)).await;
    let kinds = |fs: &[(u8, u32, Vec<u8>)]| fs.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>();
    // The streams were reset by the server (this client sent no RST_STREAM).
    let reason = |stream: u32| {
        fs.iter()
            .find(|(k, s, _)| *k == RST_STREAM && *s == stream)
            .map(|(_, _, p)| u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
    };
    assert_eq!(reason(1), Some(0x3), "{:?}", kinds(&fs)); // FLOW_CONTROL_ERROR
    assert_eq!(reason(3), Some(0x3), "{:?}", kinds(&fs));
    assert_eq!(
        goaway_code(&fs),
        Some(0xb),
        "expected GOAWAY ENHANCE_YOUR_CALM: {:?}",
        kinds(&fs)
    );
    // Cut off at the bound, not at max_concurrent_streams (100) nor at 400.
    assert!(
        (128..=130).contains(&forwarded),
        "{forwarded} requests forwarded"
    );
    let hits = up.hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.hits(), hits, "nothing more reaches the upstream");
    healthy(&gw).await;

    // The other forms: the first one ends the connection.
    let data_after_end = h2_frame(DATA, 0, 1, b"late");
    let window_of_zero = h2_frame(WINDOW_UPDATE, 0, 1, &0u32.to_be_bytes());
    for second in [data_after_end, window_of_zero] {
        let mut s = open(gw.listener("public")).await;
        let mut two = h2_frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &h2_block("GET", "/x", &[]),
        );
        two.extend(second);
        s.write_all(&two).await.unwrap();
        let fs = frames(&mut s, Duration::from_secs(5)).await;
        assert_eq!(goaway_code(&fs), Some(0x1), "{:?}", kinds(&fs)); // PROTOCOL_ERROR
    }
    healthy(&gw).await;
}

/// The 2019 family of HTTP/2 floods (CVE-2019-9512 pings, -9515 settings, -9518 empty
/// frames), each sent by a client that reads nothing back: the gateway's answers to them
/// (pongs, settings acknowledgements) cannot pile up without bound, others are served while
/// the flood goes on, and nothing reaches the upstream but the one request the empty frames
/// ride on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_floods_do_not_stop_the_gateway() {
    const PING: u8 = 6;
    let (up, gw) = setup().await;
    let floods: Vec<(&str, Vec<u8>)> = vec![
        ("ping", h2_frame(PING, 0, 0, &[7; 8])),
        ("settings", h2_frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])),
        ("empty data", h2_frame(DATA, 0, 1, &[])),
    ];
    for (name, unit) in floods {
        let mut s = open(gw.listener("public")).await;
        if name == "empty data" {
            s.write_all(&h2_frame(
                HEADERS,
                END_HEADERS,
                1,
                &h2_block("POST", "/upload", &[]),
            ))
            .await
            .unwrap();
        }
        let burst: Vec<u8> = unit
            .iter()
            .copied()
            .cycle()
            .take(unit.len() * 10_000)
            .collect();
        // About 64 MiB, more than every socket buffer on the way can hold.
        let bursts = (64 << 20) / burst.len();
        let mut sent = 0usize;
        let flood = async {
            for _ in 0..bursts {
                match tokio::time::timeout(Duration::from_secs(2), s.write_all(&burst)).await {
                    Ok(Ok(())) => sent += burst.len(),
                    // Refused (the connection closed) or held back (the gateway stopped
                    // reading a client that does not read): either way, bounded.
                    _ => break,
                }
            }
        };
        let others = async {
            let r = send_h2c(req("GET", &format!("{}/ok", gw.url("public")), &[], "")).await;
            assert_eq!(r.status, 200, "{name}: others are served meanwhile");
        };
        tokio::join!(flood, others);
        // A client that reads nothing back is no longer read either, once what it is owed
        // fills the buffers: it cannot make the gateway take frames (and queue answers) for
        // ever.
        assert!(
            sent < bursts * burst.len(),
            "{name}: all {sent} bytes taken"
        );
        healthy(&gw).await;
    }
    assert!(
        up.requests().iter().all(|r| r.uri == "/ok"),
        "{:?}",
        up.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off() {
    let (up, gw) = setup().await;
    let mut s = open(gw.listener("public")).await;
    let _ = s
        .write_all(&h2_frame(HEADERS, 0, 1, &h2_block("GET", "/x", &[])))
        .await;
    let junk = hpack_literal("x-flood", &"v".repeat(100));
    let mut sent = 0usize;
    for _ in 0..20_000 {
        if s.write_all(&h2_frame(CONTINUATION, 0, 1, &junk))
            .await
            .is_err()
        {
            break;
        }
        sent += junk.len();
        if sent > 8 * 1024 * 1024 {
            break;
        }
    }
    let fs = frames(&mut s, Duration::from_secs(5)).await;
    assert!(
        !answered(&fs, 1),
        "a flooded header block is never answered"
    );
    assert_eq!(up.hits(), 0);
    healthy(&gw).await;
}

/// HPACK: an integer with a 7-bit prefix (RFC 7541 §5.1), the prefix byte's high bit `flag`.
fn int7(flag: u8, n: usize) -> Vec<u8> {
    if n < 127 {
        return vec![flag | n as u8];
    }
    let mut out = vec![flag | 127];
    let mut rest = n - 127;
    while rest >= 128 {
        out.push(0x80 | (rest % 128) as u8);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// A header block whose fields are a `size`-byte value, added to the HPACK dynamic table
/// once and then named by its one-byte index `times` times: an HPACK bomb (CVE-2016-6581)
/// when `size * times` is far larger than the block.
fn bomb(size: usize, times: usize) -> Vec<u8> {
    let mut b = h2_block("GET", "/x", &[]);
    b.push(0x40); // literal with incremental indexing, new name
    b.extend(int7(0, 6));
    b.extend_from_slice(b"x-bomb");
    b.extend(int7(0, size));
    b.extend(std::iter::repeat_n(b'v', size));
    // The entry just added is the first of the dynamic table: index 62.
    b.extend(std::iter::repeat_n(0x80 | 62, times));
    b
}

/// The HPACK bomb: a few kilobytes on the wire that decode to megabytes of fields. The header
/// list's decoded size is bounded in the h2 layer (twice `limits.max_header_bytes`): far past
/// it the connection gets `GOAWAY` `ENHANCE_YOUR_CALM`; under that bound but over
/// `max_header_bytes`, the limits step refuses it with 431 — both count fields as decoded, not
/// as sent. Nothing reaches the upstream either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpack_bomb_is_refused_by_its_decoded_size() {
    let (up, gw) = setup().await;
    // 4 MB decoded from about 5 KB.
    let b = bomb(4000, 1000);
    assert!(b.len() < 6000);
    let mut s = open(gw.listener("public")).await;
    s.write_all(&h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &b))
        .await
        .unwrap();
    let fs = frames(&mut s, Duration::from_secs(2)).await;
    // Far past the bound, the h2 layer ends the connection: GOAWAY ENHANCE_YOUR_CALM.
    assert!(!answered(&fs, 1));
    assert_eq!(
        goaway_code(&fs),
        Some(0xb),
        "{:?}",
        fs.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>()
    );
    assert_eq!(up.hits(), 0, "{:?}", up.requests());
    healthy(&gw).await;

    // About 36 KB decoded (past the default 32 KiB, under the h2 layer's 64 KiB) from 2.3 KB:
    // the limits step's 431, as its problem document.
    let b = bomb(2200, 16);
    assert!(b.len() < 2400);
    let mut s = open(gw.listener("public")).await;
    s.write_all(&h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &b))
        .await
        .unwrap();
    let fs = frames(&mut s, Duration::from_secs(2)).await;
    assert!(
        answered(&fs, 1),
        "{:?}",
        fs.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>()
    );
    let body: Vec<u8> = fs
        .iter()
        .filter(|(k, st, _)| *k == DATA && *st == 1)
        .flat_map(|(_, _, p)| p.clone())
        .collect();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 431, "{problem}");
    assert_eq!(problem["code"], "headers_too_large", "{problem}");
    let id = problem["request_id"].as_str().unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(up.hits(), 1, "only the health check: {:?}", up.requests());
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("portcullis_rejections_total{") && l.contains("headers_too_large"));
    assert_eq!(refused.map(|l| l.ends_with(" 1")), Some(true), "{metrics}");
    healthy(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_h2_requests_are_reset_and_not_forwarded() {
    let (up, gw) = setup().await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "uppercase header name",
            h2_block("GET", "/x", &[("X-Upper", "1")]),
        ),
        (
            "connection header",
            h2_block("GET", "/x", &[("connection", "close")]),
        ),
        (
            "transfer-encoding header",
            h2_block("GET", "/x", &[("transfer-encoding", "chunked")]),
        ),
        (
            "keep-alive header",
            h2_block("GET", "/x", &[("keep-alive", "1")]),
        ),
        // `TE` may only say `trailers` in HTTP/2 (RFC 9113 §8.2.2), in every field line. The
        // h2 layer resets these streams itself; the hygiene step's own check (every `TE`
        // line) stays as the second line of defence.
        (
            "te other than trailers",
            h2_block("GET", "/x", &[("te", "gzip")]),
        ),
        (
            "te listing more than trailers",
            h2_block("GET", "/x", &[("te", "trailers, gzip")]),
        ),
        (
            "a second te line other than trailers",
            h2_block("GET", "/x", &[("te", "trailers"), ("te", "gzip")]),
        ),
        // `:authority` (routed on) and `Host` (read by the upstream) naming two hosts.
        (
            "host other than the authority",
            h2_block("GET", "/x", &[("host", "admin.internal")]),
        ),
        // A method in the wrong case (the protocol step refuses it, as over HTTP/1.1).
        ("lowercase method", {
            let mut b = hpack_literal(":method", "delete");
            b.extend_from_slice(&h2_block("GET", "/x", &[])[1..]); // all but its `:method`
            b
        }),
    ];
    for (name, b) in cases {
        let mut s = open(gw.listener("public")).await;
        s.write_all(&h2_frame(HEADERS, END_HEADERS | END_STREAM, 1, &b))
            .await
            .unwrap();
        let fs = frames(&mut s, Duration::from_secs(2)).await;
        let refused = reset_of(&fs, 1)
            || goaway_code(&fs).is_some()
            || fs
                .iter()
                .any(|(k, st, p)| *k == HEADERS && *st == 1 && p.contains(&0x8c)); // 0x8c: :status 400
        assert!(refused, "{name}: {fs:?}");
    }
    assert_eq!(up.hits(), 0, "{:?}", up.requests());
    healthy(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_the_data_frames_contradict_is_refused() {
    let gw = gateway(
        "upstreams: { d: { kind: echo } }\nroutes:\n  - { name: all, match: { prefix: / }, upstream: d }\n",
    );
    let mut s = open(gw.listener("public")).await;
    s.write_all(&h2_frame(
        HEADERS,
        END_HEADERS,
        1,
        &h2_block("POST", "/x", &[("content-length", "10")]),
    ))
    .await
    .unwrap();
    s.write_all(&h2_frame(DATA, END_STREAM, 1, b"12345"))
        .await
        .unwrap();
    let fs = frames(&mut s, Duration::from_secs(2)).await;
    let ok_answer = fs
        .iter()
        .any(|(k, st, p)| *k == HEADERS && *st == 1 && p.contains(&0x88)); // :status 200
    assert!(!ok_answer, "a lying body must not be served: {fs:?}");
    assert!(
        reset_of(&fs, 1) || answered(&fs, 1),
        "the stream is refused: {fs:?}"
    );
    let r = send_h2c(req("GET", &format!("{}/ok", gw.url("public")), &[], "")).await;
    assert_eq!(r.status, 200);
}

/// A request forwarded upstream, then reset by the client before the answer: the gateway gives
/// up the upstream exchange (closes that connection) and still audits the request, as
/// abandoned with status 499 — a client cannot make requests reach the upstream unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reset_before_its_answer_is_audited_and_its_upstream_exchange_dropped() {
    let up = TestUpstream::start("a").await;
    // An upstream that reads requests and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = gateway(&format!(
        "upstreams:\n  svc: {{ targets: [\"{}\"] }}\n  silent: {{ targets: [\"http://{}\"] }}\n\
         routes:\n  - {{ name: slow, match: {{ prefix: /slow }}, upstream: silent }}\n\
         \x20 - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        up.url(),
        silent.local_addr().unwrap()
    ));
    let mut s = open(gw.listener("public")).await;
    request(&mut s, 1, "/slow/order").await;
    let (mut upstream, _) = tokio::time::timeout(Duration::from_secs(5), silent.accept())
        .await
        .expect("forwarded")
        .unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = upstream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the gateway closed before sending the head");
        head.extend_from_slice(&chunk[..n]);
    }
    assert!(head.starts_with(b"GET /slow/order HTTP/1.1\r\n"));

    // CANCEL (0x8) the stream while the upstream holds it.
    s.write_all(&h2_frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), upstream.read(&mut chunk)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the upstream exchange was given up: {closed:?}"
    );
    let event = gw
        .wait_for_audit(|e| e["path"] == "/slow/order", Duration::from_secs(5))
        .expect("the abandoned request is audited");
    assert_eq!(event["status"], 499, "{event}");
    assert_eq!(event["outcome"], "abandoned", "{event}");
    assert_eq!(event["route"], "slow", "{event}");
    assert_eq!(event["upstream"], "silent", "{event}");
    assert_eq!(
        event["target"],
        silent.local_addr().unwrap().to_string(),
        "{event}"
    );
    assert!(
        event["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{event}"
    );
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("portcullis_requests_total{")
                && l.contains("route=\"slow\"")
                && l.contains("status=\"499\"")),
        "{metrics}"
    );

    // The connection and the gateway go on.
    request(&mut s, 3, "/fine").await;
    let fs = frames(&mut s, Duration::from_secs(2)).await;
    assert!(answered(&fs, 3), "{fs:?}");
    healthy(&gw).await;
}

/// A request the client resets while it waits on its upstream stops holding the connection
/// open: waiting for an answer's head is not idleness, but a given-up request no longer waits,
/// so the connection, now idle, is closed after the idle timeout (long before the upstream
/// would have answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_request_no_longer_keeps_its_connection_from_idling() {
    let up = TestUpstream::start("a").await;
    let gw = gateway(&format!(
        "server: {{ idle_timeout: 1s }}\n\
         upstreams:\n  svc: {{ targets: [\"{}\"] }}\n\
         routes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: svc }}\n",
        up.url()
    ));
    let mut s = open(gw.listener("public")).await;
    let head = h2_frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &h2_block("GET", "/delay/20000", &[]),
    );
    s.write_all(&head).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while up.hits() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(up.hits(), 1, "the request reached the upstream");
    s.write_all(&h2_frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()))
        .await
        .unwrap();
    let reset_at = Instant::now();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the idle connection was closed");
    let after = reset_at.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed {after:?} after the reset"
    );
    healthy(&gw).await;
}
