//! # portcullis-hygiene
//!
//! The first step: refuse requests whose framing or target two HTTP parsers could read
//! differently — the root of request smuggling.
//!
//! * **Takes**: the request head as hyper parsed it (hyper itself already refuses header names
//!   with spaces or control characters, obs-fold, bare CR, NUL, `Transfer-Encoding` in
//!   HTTP/1.0, and malformed chunk sizes, with a 400 and a closed connection).
//! * **Rejects** with `400 bad_request` (and `Connection: close`): `Content-Length` together
//!   with `Transfer-Encoding`; more than one `Content-Length` (even equal); a
//!   `Transfer-Encoding` that is not exactly `chunked`; more than one `Host`; an HTTP/1.1
//!   request without `Host`; an absolute-form target whose authority disagrees with `Host`;
//!   HTTP/2 requests carrying connection-specific fields; a method spelled with anything but
//!   capital letters, `-` and `_` (as nginx: `delete` or `Get` would pass rules written for
//!   `DELETE` or `GET`, and reach upstreams that fold the case).
//! * **Consumes** the connection options of HTTP/1 requests: the fields `Connection` names are
//!   removed on arrival (before any step adds fields of its own), `Connection` keeps only
//!   `close`, `keep-alive`, `upgrade` and `te`; naming `Host`, `Content-Length` or
//!   `Transfer-Encoding` there is refused.
//! * **Invariant**: whatever passes is re-framed by the engine towards the upstream (hop-by-hop
//!   fields are dropped and the body is sent with framing the engine chose), so the upstream
//!   never sees the client's framing headers at all.

#![forbid(unsafe_code)]

use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Version};
use portcullis_core::{
    GatewayRequest, RejectReason, Rejection, RequestCtx, Stage, StageId, Step, has_header,
    remove_header,
};

pub struct HygieneStage;

impl HygieneStage {
    pub const ID: StageId = StageId("protocol");
}

/// The first problem found in a request head, if any.
pub fn check(head: &http::request::Parts) -> Result<(), &'static str> {
    if !head
        .method
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Err("the method must be written in capital letters");
    }
    // One pass over the fields, keeping what the rules below need: cheaper than hashing a name
    // for each rule, for the handful of fields a request carries.
    let (mut te, mut cl, mut hosts) = (0usize, 0usize, 0usize);
    let (mut first_te, mut first_cl, mut first_host) = (None, None, None);
    // Looked for only where it matters: HTTP/1 carries these fields legitimately.
    let h2 = matches!(head.version, Version::HTTP_2 | Version::HTTP_3);
    let mut connection_specific = false;
    for (name, value) in &head.headers {
        if *name == TRANSFER_ENCODING {
            te += 1;
            first_te.get_or_insert(value);
            connection_specific = true;
        } else if *name == CONTENT_LENGTH {
            cl += 1;
            first_cl.get_or_insert(value);
        } else if *name == HOST {
            hosts += 1;
            first_host.get_or_insert(value);
        } else if h2 {
            // HTTP/2 allows `TE` with the value `trailers` only, in every field line.
            connection_specific |= *name == CONNECTION
                || *name == UPGRADE
                || name.as_str() == "keep-alive"
                || name.as_str() == "proxy-connection"
                || (*name == TE && value.as_bytes() != b"trailers");
        }
    }
    if te > 0 && cl > 0 {
        return Err("Content-Length and Transfer-Encoding together are not accepted");
    }
    if cl > 1 || first_cl.is_some_and(|v| v.as_bytes().contains(&b',')) {
        return Err("more than one Content-Length is not accepted");
    }
    if let Some(v) = first_cl
        && (v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return Err("Content-Length must be a decimal number");
    }
    if te > 1 || first_te.is_some_and(|v| v.as_bytes() != b"chunked") {
        return Err("Transfer-Encoding must be exactly \"chunked\"");
    }
    if hosts > 1 {
        return Err("more than one Host is not accepted");
    }
    let named_host = first_host.map(|h| h.as_bytes()).or_else(|| {
        h2.then(|| head.uri.authority().map(|a| a.as_str().as_bytes()))
            .flatten()
    });
    if named_host.is_some_and(|h| !is_host(h)) {
        return Err("the Host is not a host name or address (with a port)");
    }
    match head.version {
        Version::HTTP_11 if hosts == 0 => return Err("an HTTP/1.1 request needs a Host"),
        Version::HTTP_2 | Version::HTTP_3 if connection_specific => {
            return Err("connection-specific header fields are not allowed in HTTP/2");
        }
        _ => {}
    }
    // Over HTTP/2 the authority is `:authority`, which must name what `Host` names where
    // both are sent (RFC 9113 §8.3.1): routes match the one, upstreams read the other.
    if let (Some(authority), Some(host)) = (head.uri.authority(), first_host)
        && !authority
            .as_str()
            .eq_ignore_ascii_case(host.to_str().unwrap_or(""))
    {
        return Err(if h2 {
            "the :authority disagrees with Host"
        } else {
            "the absolute-form target disagrees with Host"
        });
    }
    Ok(())
}

/// Whether `h` — a `Host` value or an HTTP/2 `:authority` — is a host name (letters, digits,
/// `-`, `.`, `_`), an IPv4 address or a bracketed IPv6 address, with an optional port of up
/// to five digits; empty is allowed (RFC 9112 §3.2). Nothing else: a `Host` such as
/// `evil.com/.example.com` would match a route's `*.example.com` and reach the upstream, which
/// builds its links from it; userinfo has no place there either.
fn is_host(h: &[u8]) -> bool {
    // Asked of every request: the common case (a name or IPv4 address, then a port) is one
    // pass over the bytes by table.
    let name_len = h.iter().take_while(|&&b| HOST_BYTE[usize::from(b)]).count();
    let (name_ok, rest) = if name_len > 0 {
        (true, h.get(name_len..).unwrap_or_default())
    } else if let Some(inner) = h.strip_prefix(b"[") {
        let Some(end) = inner.iter().position(|b| *b == b']') else {
            return false;
        };
        let (addr, rest) = inner.split_at(end);
        let ok = !addr.is_empty()
            && addr
                .iter()
                .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.');
        (ok, rest.get(1..).unwrap_or_default())
    } else {
        return h.is_empty();
    };
    name_ok
        && match rest.split_first() {
            None => true,
            Some((b':', port)) => {
                (1..=5).contains(&port.len()) && port.iter().all(u8::is_ascii_digit)
            }
            Some(_) => false,
        }
}

/// The bytes of a host name or IPv4 address: letters, digits, `-`, `.`, `_`.
static HOST_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_';
        b += 1;
    }
    t
};

/// The connection options `Connection` may carry besides field names.
const OPTIONS: [&str; 4] = ["close", "keep-alive", "upgrade", "te"];

/// Consumes the connection options of an HTTP/1 request on arrival: the fields its
/// `Connection` names are for this hop only, so they go now, before any step reads the
/// request or adds fields of its own — a field the gateway adds later (verified identity, the
/// tenant, a gateway token in `Authorization`) is never taken out because the client named
/// it. `Connection` keeps only the options (`close`, `keep-alive`, `upgrade`, `te`). A
/// `Connection` naming `Host`, `Content-Length` or `Transfer-Encoding` — fields the request's
/// reading rests on — is refused.
pub fn consume_connection_options(headers: &mut HeaderMap) -> Result<(), &'static str> {
    if !has_header(headers, &CONNECTION) {
        return Ok(());
    }
    let mut named: Vec<HeaderName> = Vec::new();
    let mut kept: Vec<&'static str> = Vec::new();
    // Whether `Connection` holds more than options (names, or tokens that are no names).
    let mut rewrite = false;
    for v in headers.get_all(CONNECTION) {
        for t in v.as_bytes().split(|b| *b == b',') {
            let t = t.trim_ascii();
            if t.is_empty() {
                continue;
            }
            if let Some(o) = OPTIONS
                .iter()
                .find(|o| t.eq_ignore_ascii_case(o.as_bytes()))
            {
                if !kept.contains(o) {
                    kept.push(o);
                }
                continue;
            }
            rewrite = true;
            if let Ok(n) = HeaderName::from_bytes(&t.to_ascii_lowercase()) {
                if n == HOST || n == CONTENT_LENGTH || n == TRANSFER_ENCODING {
                    return Err(
                        "Connection may not name Host, Content-Length or Transfer-Encoding",
                    );
                }
                named.push(n);
            }
        }
    }
    if !rewrite {
        return Ok(());
    }
    for n in &named {
        remove_header(headers, n);
    }
    headers.remove(CONNECTION);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join(", "))
    {
        headers.insert(CONNECTION, v);
    }
    Ok(())
}

impl Stage for HygieneStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, _ctx: &'a mut RequestCtx) -> Step<'a> {
        match check(&req.head).and_then(|()| consume_connection_options(&mut req.head.headers)) {
            Ok(()) => Step::CONTINUE,
            Err(detail) => Step::reject(Rejection::new(RejectReason::BadRequest, detail)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: Version, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const H1: Version = Version::HTTP_11;

    #[test]
    fn framing() {
        assert!(check(&head(H1, "/", &[("host", "a"), ("content-length", "5")])).is_ok());
        assert!(
            check(&head(
                H1,
                "/",
                &[("host", "a"), ("transfer-encoding", "chunked")]
            ))
            .is_ok()
        );
        for bad in [
            vec![("content-length", "5"), ("transfer-encoding", "chunked")],
            vec![("content-length", "5"), ("content-length", "5")],
            vec![("content-length", "5, 5")],
            vec![("content-length", "+5")],
            vec![("transfer-encoding", "xchunked")],
            vec![("transfer-encoding", "chunked, identity")],
            vec![("transfer-encoding", "identity, chunked")],
            vec![("transfer-encoding", "Chunked")],
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
        ] {
            let mut hs = vec![("host", "a")];
            hs.extend(bad.iter().copied());
            assert!(check(&head(H1, "/", &hs)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connection_options_are_consumed_on_arrival() {
        let consume = |pairs: &[(&str, &str)]| {
            let mut h = head(H1, "/", pairs).headers;
            consume_connection_options(&mut h).map(|()| h)
        };
        // Named fields go; the options stay, once each, in one field.
        let h = consume(&[
            ("host", "a"),
            ("connection", "X-User-Id, keep-alive"),
            ("connection", "x-tenant,  Upgrade ,keep-alive"),
            ("x-user-id", "admin"),
            ("x-tenant", "t2"),
            ("upgrade", "websocket"),
            ("x-other", "1"),
        ])
        .unwrap();
        assert_eq!(h.get("x-user-id"), None);
        assert_eq!(h.get("x-tenant"), None);
        assert_eq!(h.get("x-other").unwrap(), "1");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get_all("connection").iter().count(), 1);
        assert_eq!(h.get("connection").unwrap(), "keep-alive, upgrade");
        // Options alone, or names of absent fields with nothing else: options kept as sent.
        let h = consume(&[("host", "a"), ("connection", "close")]).unwrap();
        assert_eq!(h.get("connection").unwrap(), "close");
        let h = consume(&[("host", "a"), ("connection", "x-absent, b@d")]).unwrap();
        assert_eq!(h.get("connection"), None);
        assert_eq!(h.get("host").unwrap(), "a");
        // Fields the reading of the request rests on may not be named.
        for name in ["host", "Content-Length", "transfer-encoding"] {
            let r = consume(&[("host", "a"), ("content-length", "0"), ("connection", name)]);
            assert!(r.is_err(), "{name}");
        }
    }

    #[test]
    fn methods_in_capitals_only() {
        let with = |m: &str| {
            let mut h = head(H1, "/", &[("host", "a")]);
            h.method = http::Method::from_bytes(m.as_bytes()).unwrap();
            check(&h)
        };
        for ok in [
            "GET",
            "DELETE",
            "PATCH",
            "PURGE",
            "MKCALENDAR",
            "VERSION-CONTROL",
            "X_Y",
        ] {
            assert!(with(ok).is_ok(), "{ok}");
        }
        for bad in [
            "get", "Get", "delete", "DELETe", "purge", "GET1", "G.T", "G!T",
        ] {
            assert_eq!(
                with(bad),
                Err("the method must be written in capital letters"),
                "{bad}"
            );
        }
    }

    #[test]
    fn host() {
        assert!(check(&head(H1, "/", &[])).is_err());
        assert!(check(&head(Version::HTTP_10, "/", &[])).is_ok());
        assert!(check(&head(H1, "/", &[("host", "a"), ("host", "b")])).is_err());
        assert!(check(&head(H1, "http://evil/x", &[("host", "a")])).is_err());
        assert!(check(&head(H1, "http://a/x", &[("host", "A")])).is_ok());
        assert!(check(&head(Version::HTTP_2, "http://a/x", &[])).is_ok());
    }

    #[test]
    fn hosts_are_names_or_addresses_with_a_port() {
        for ok in [
            "",
            "a",
            "api.example.com",
            "api.example.com.",
            "a-b_c.example",
            "a:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "[::ffff:1.2.3.4]",
        ] {
            assert!(is_host(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "evil.com/.example.com",
            "evil.com?.example.com",
            "evil.com:x.example.com",
            "evil.com#.example.com",
            "user@example.com",
            "evil.com;.example.com",
            "a:",
            "a:123456",
            ":80",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:",
            "[fe80::1%eth0]",
            "a b",
            "a\tb",
            "exa%6dple.com",
            "a:80:80",
        ] {
            assert!(!is_host(bad.as_bytes()), "{bad:?}");
        }
        let h = head(H1, "/", &[("host", "evil.com/.example.com")]);
        assert_eq!(
            check(&h),
            Err("the Host is not a host name or address (with a port)")
        );
    }

    #[test]
    fn h2_authority_and_host_must_agree() {
        let h2 = |host: &str| check(&head(Version::HTTP_2, "http://a.test/x", &[("host", host)]));
        assert!(h2("a.test").is_ok());
        assert!(h2("A.Test").is_ok());
        assert_eq!(
            h2("admin.internal"),
            Err("the :authority disagrees with Host")
        );
        assert!(h2("a.test:8443").is_err());
        assert!(check(&head(Version::HTTP_2, "http://a.test/x", &[])).is_ok());
    }

    #[test]
    fn h2_connection_specific_fields() {
        for (k, v) in [
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "1"),
            ("te", "gzip"),
            ("upgrade", "x"),
        ] {
            assert!(
                check(&head(Version::HTTP_2, "http://a/", &[(k, v)])).is_err(),
                "{k}"
            );
        }
        assert!(check(&head(Version::HTTP_2, "http://a/", &[("te", "trailers")])).is_ok());
        // Every `TE` field line counts, not only the first.
        assert!(
            check(&head(
                Version::HTTP_2,
                "http://a/",
                &[("te", "trailers"), ("te", "gzip")]
            ))
            .is_err()
        );
        for name in ["proxy-connection", "keep-alive", "upgrade", "connection"] {
            assert!(
                check(&head(Version::HTTP_11, "/", &[("host", "a"), (name, "x")])).is_ok(),
                "{name} is fine in HTTP/1.1"
            );
        }
    }

    /// The rules as first written (a lookup per rule), with every `TE` field line read: the
    /// one-pass check must give the same verdict on any head.
    fn by_lookups(head: &http::request::Parts) -> Result<(), &'static str> {
        let h = &head.headers;
        let te = h.get_all(TRANSFER_ENCODING).iter().count();
        let cl: Vec<_> = h.get_all(CONTENT_LENGTH).iter().collect();
        if te > 0 && !cl.is_empty() {
            return Err("Content-Length and Transfer-Encoding together are not accepted");
        }
        if cl.len() > 1 || cl.first().is_some_and(|v| v.as_bytes().contains(&b',')) {
            return Err("more than one Content-Length is not accepted");
        }
        if let Some(v) = cl.first()
            && (v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit))
        {
            return Err("Content-Length must be a decimal number");
        }
        if te > 1
            || h.get(TRANSFER_ENCODING)
                .is_some_and(|v| v.as_bytes() != b"chunked")
        {
            return Err("Transfer-Encoding must be exactly \"chunked\"");
        }
        let hosts = h.get_all(HOST).iter().count();
        if hosts > 1 {
            return Err("more than one Host is not accepted");
        }
        let h2 = matches!(head.version, Version::HTTP_2 | Version::HTTP_3);
        let named = match h.get(HOST) {
            Some(v) => Some(v.as_bytes()),
            None if h2 => head.uri.authority().map(|a| a.as_str().as_bytes()),
            None => None,
        };
        if named.is_some_and(|n| !is_host(n)) {
            return Err("the Host is not a host name or address (with a port)");
        }
        let specific = h.contains_key(CONNECTION)
            || h.contains_key(TRANSFER_ENCODING)
            || h.contains_key("keep-alive")
            || h.contains_key("proxy-connection")
            || h.contains_key(UPGRADE)
            || h.get_all(TE).iter().any(|v| v.as_bytes() != b"trailers");
        match head.version {
            Version::HTTP_11 if hosts == 0 => return Err("an HTTP/1.1 request needs a Host"),
            Version::HTTP_2 | Version::HTTP_3 if specific => {
                return Err("connection-specific header fields are not allowed in HTTP/2");
            }
            _ => {}
        }
        if let (Some(authority), Some(host)) = (head.uri.authority(), h.get(HOST))
            && !authority
                .as_str()
                .eq_ignore_ascii_case(host.to_str().unwrap_or(""))
        {
            return Err(
                if matches!(head.version, Version::HTTP_2 | Version::HTTP_3) {
                    "the :authority disagrees with Host"
                } else {
                    "the absolute-form target disagrees with Host"
                },
            );
        }
        Ok(())
    }

    #[test]
    fn one_pass_agrees_with_a_lookup_per_rule() {
        let names = [
            "host",
            "content-length",
            "transfer-encoding",
            "te",
            "connection",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "accept",
            "x-other",
        ];
        let values = [
            "a", "A", "b", "5", "5, 5", "", "chunked", "gzip", "trailers", "x",
        ];
        let versions = [Version::HTTP_10, H1, Version::HTTP_2, Version::HTTP_3];
        let uris = ["/", "http://a/x", "http://b/x"];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut refused = 0;
        for _ in 0..20_000 {
            let fields: Vec<(&str, &str)> = (0..rng.usize(0..6))
                .map(|_| {
                    (
                        names[rng.usize(..names.len())],
                        values[rng.usize(..values.len())],
                    )
                })
                .collect();
            let h = head(
                versions[rng.usize(..versions.len())],
                uris[rng.usize(..uris.len())],
                &fields,
            );
            let verdict = check(&h);
            refused += usize::from(verdict.is_err());
            assert_eq!(verdict, by_lookups(&h), "{h:?}");
        }
        // Both ways were exercised.
        assert!((2_000..18_000).contains(&refused), "{refused} refused");
    }
}
