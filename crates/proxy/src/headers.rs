//! Headers between client and upstream: hop-by-hop removal, forwarding headers built only from
//! trusted-proxy rules, and W3C trace context.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use portcullis_core::{RequestCtx, Scheme, hex_lower};

/// Hop-by-hop fields (RFC 9110 §7.6.1) plus the de-facto ones.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// True for an HTTP/1.1 WebSocket upgrade request.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    upgrade && connection
}

/// Removes hop-by-hop fields, including those the `Connection` header names. `te: trailers`
/// survives (gRPC needs it end to end); with `keep_upgrade` the WebSocket handshake fields are
/// put back.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut named: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for t in s.split(',') {
                if let Ok(n) = HeaderName::from_bytes(t.trim().as_bytes()) {
                    named.push(n);
                }
            }
        }
    }
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for n in named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

fn forwarded_token_or_quoted(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'*+^`|".contains(&b))
    {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace(['"', '\\'], ""))
    }
}

/// Settings for [`set_forwarding`].
pub struct Forwarding<'a> {
    pub x_forwarded: bool,
    pub forwarded: bool,
    pub peer_trusted: bool,
    /// The Host the client asked for (a value of the request's own header: reusing it copies
    /// nothing).
    pub host: Option<&'a HeaderValue>,
}

/// Builds `X-Forwarded-*` and `Forwarded`. From an untrusted peer, whatever it sent is
/// replaced; from a trusted proxy, its chain is extended. Disabled headers are removed, so a
/// client can never smuggle its own copy to the upstream.
pub fn set_forwarding(headers: &mut HeaderMap, ctx: &RequestCtx, f: &Forwarding<'_>) {
    let peer = ctx.peer.ip();
    let proto = ctx.scheme.as_str();
    // Only a Host made of visible ASCII is repeated (it always is, past the hygiene step).
    let host = f.host.filter(|h| h.to_str().is_ok());
    if f.x_forwarded {
        match (f.peer_trusted, joined(headers, &X_FORWARDED_FOR)) {
            (true, Some(prev)) => put(headers, X_FORWARDED_FOR, &format!("{prev}, {peer}")),
            _ => {
                // The common case, without a heap-allocated string: an address is at most
                // 45 bytes.
                use std::io::Write as _;
                let mut buf = [0u8; 48];
                let mut w = &mut buf[..];
                let _ = write!(w, "{peer}");
                let left = w.len();
                let text = &buf[..buf.len() - left];
                match HeaderValue::from_bytes(text) {
                    Ok(v) => {
                        headers.insert(X_FORWARDED_FOR, v);
                    }
                    Err(_) => {
                        headers.remove(X_FORWARDED_FOR);
                    }
                }
            }
        }
        if !(f.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            headers.insert(
                X_FORWARDED_PROTO,
                HeaderValue::from_static(scheme_str(ctx.scheme)),
            );
        }
        if !(f.peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            match host {
                Some(h) => {
                    headers.insert(X_FORWARDED_HOST, h.clone());
                }
                None => {
                    headers.remove(&X_FORWARDED_HOST);
                }
            }
        }
    } else {
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
    }
    if f.forwarded {
        let mut elem = format!("for={};proto={proto}", forwarded_node(peer));
        if let Some(h) = host.and_then(|h| h.to_str().ok()) {
            elem.push_str(";host=");
            elem.push_str(&forwarded_token_or_quoted(h));
        }
        let value = match (f.peer_trusted, joined(headers, &header::FORWARDED)) {
            (true, Some(prev)) => format!("{prev}, {elem}"),
            _ => elem,
        };
        put(headers, header::FORWARDED, &value);
    } else {
        headers.remove(header::FORWARDED);
    }
}

fn scheme_str(s: Scheme) -> &'static str {
    s.as_str()
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out = String::new();
    for v in headers.get_all(name) {
        let s = v.to_str().ok()?;
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(s);
    }
    (!out.is_empty()).then_some(out)
}

fn put(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Continues the caller's W3C trace (same trace id, the gateway as a new parent span) or starts
/// one. A malformed `traceparent` is replaced, never passed on.
pub fn propagate_traceparent(headers: &mut HeaderMap) {
    let incoming = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let mut it = v.trim().split('-');
            let (ver, trace, _parent, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
            let ok = is_hex(ver, 2)
                && ver != "ff"
                && is_hex(trace, 32)
                && trace.bytes().any(|b| b != b'0')
                && is_hex(flags, 2)
                && (ver != "00" || it.next().is_none());
            ok.then_some((trace, flags))
        });
    let span = loop {
        let s = fastrand::u64(..);
        if s != 0 {
            break s;
        }
    };
    // "00-" trace(32) "-" span(16) "-" flags(2): written in place, no formatting machinery.
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
    match incoming {
        Some((trace, flags)) => {
            value[3..35].copy_from_slice(trace.as_bytes());
            value[53..55].copy_from_slice(flags.as_bytes());
        }
        None => {
            headers.remove("tracestate");
            let trace = loop {
                let t = fastrand::u128(..);
                if t != 0 {
                    break t;
                }
            };
            let mut hex = [0u8; 32];
            value[3..35].copy_from_slice(hex_lower(trace, &mut hex).as_bytes());
        }
    }
    let mut hex = [0u8; 16];
    value[36..52].copy_from_slice(hex_lower(u128::from(span), &mut hex).as_bytes());
    match HeaderValue::from_bytes(&value) {
        Ok(v) => {
            headers.insert(TRACEPARENT, v);
        }
        Err(_) => {
            headers.remove(TRACEPARENT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_go() {
        let mut m = h(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "trailers, deflate"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-keep", "yes"),
            ("proxy-authorization", "Basic x"),
        ]);
        strip_hop_by_hop(&mut m, false);
        let names: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-keep", "te"]);
        assert_eq!(m["te"], "trailers");
    }

    #[test]
    fn websocket_handshake_survives_when_asked() {
        let mut m = h(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_websocket_upgrade(&m));
        strip_hop_by_hop(&mut m, true);
        assert_eq!(m["upgrade"], "websocket");
        assert_eq!(m["connection"], "upgrade");
    }

    fn ctx(peer: &str) -> RequestCtx {
        RequestCtx::new(peer.parse().unwrap(), Scheme::Https, Arc::from("l"))
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut m = h(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let f = Forwarding {
            x_forwarded: true,
            forwarded: true,
            peer_trusted: false,
            host: Some(&HeaderValue::from_static("api.example")),
        };
        set_forwarding(&mut m, &ctx("192.0.2.1:5"), &f);
        assert_eq!(m["x-forwarded-for"], "192.0.2.1");
        assert_eq!(m["x-forwarded-proto"], "https");
        assert_eq!(m["x-forwarded-host"], "api.example");
        assert_eq!(m["forwarded"], "for=192.0.2.1;proto=https;host=api.example");
    }

    #[test]
    fn trusted_chains_are_extended_and_disabled_headers_removed() {
        let mut m = h(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        let f = Forwarding {
            x_forwarded: true,
            forwarded: false,
            peer_trusted: true,
            host: None,
        };
        set_forwarding(&mut m, &ctx("[::1]:5"), &f);
        assert_eq!(m["x-forwarded-for"], "203.0.113.9, ::1");
        assert_eq!(m["x-forwarded-proto"], "http");
        assert!(m.get("forwarded").is_none());
        let mut m = h(&[]);
        let f = Forwarding {
            x_forwarded: false,
            forwarded: true,
            peer_trusted: false,
            host: Some(&HeaderValue::from_static("a b")),
        };
        set_forwarding(&mut m, &ctx("[::1]:5"), &f);
        assert_eq!(m["forwarded"], "for=\"[::1]\";proto=https;host=\"a b\"");
        assert!(m.get("x-forwarded-for").is_none());
    }

    #[test]
    fn traceparent_is_continued_or_started() {
        let mut m = h(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "k=v"),
        ]);
        propagate_traceparent(&mut m);
        let v = m["traceparent"].to_str().unwrap().to_string();
        assert!(v.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!v.contains("00f067aa0ba902b7"));
        assert!(v.ends_with("-01"));
        assert_eq!(m["tracestate"], "k=v");

        for bad in [
            "junk",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut m = h(&[("traceparent", bad), ("tracestate", "k=v")]);
            propagate_traceparent(&mut m);
            let v = m["traceparent"].to_str().unwrap();
            let parts: Vec<&str> = v.split('-').collect();
            assert_eq!(parts.len(), 4, "{v}");
            assert!(is_hex(parts[1], 32) && is_hex(parts[2], 16), "{v}");
            assert!(m.get("tracestate").is_none());
        }
    }
}
