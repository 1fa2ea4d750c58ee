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
//!   request without `Host`; an absolute-form target whose authority disagrees with `Host`,
//!   or, without `Host` (HTTP/1.0), is not a host name or address with a port (userinfo is not);
//!   HTTP/2 requests carrying connection-specific fields; a method spelled with anything but
//!   capital letters, `-` and `_` (as nginx: `delete` or `Get` would pass rules written for
//!   `DELETE` or `GET`, and reach upstreams that fold the case); unless the operator lets them
//!   pass (`server.method_override: pass`), a method or URL override — the fields
//!   `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`, `X-Original-URL`,
//!   `X-Rewrite-URL` (in any case, `-` or `_`), or a query parameter `_method` — with which a
//!   backend would run another method, or serve another path, than the request line's: the
//!   one the gateway routed and authorized.
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

pub struct HygieneStage {
    /// Whether method and URL overrides are refused (`server.method_override: refuse`).
    refuse_overrides: bool,
}

impl HygieneStage {
    pub const ID: StageId = StageId("protocol");

    /// The step; `refuse_overrides` unless the operator's backends need method overrides
    /// (`server.method_override: pass`).
    pub fn new(refuse_overrides: bool) -> Self {
        HygieneStage { refuse_overrides }
    }
}

/// The first problem found in a request head, if any, method and URL overrides included.
pub fn check(head: &http::request::Parts) -> Result<(), &'static str> {
    check_with(head, true)
}

/// The first problem found in a request head, if any; method and URL overrides only when
/// `refuse_overrides`.
pub fn check_with(head: &http::request::Parts, refuse_overrides: bool) -> Result<(), &'static str> {
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
    // The first method or URL override field, by what its refusal says.
    let mut overridden: Option<&'static str> = None;
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
        } else {
            if refuse_overrides && overridden.is_none() {
                overridden = override_field(name.as_str().as_bytes());
            }
            if h2 {
                // HTTP/2 allows `TE` with the value `trailers` only, in every field line.
                connection_specific |= *name == CONNECTION
                    || *name == UPGRADE
                    || name.as_str() == "keep-alive"
                    || name.as_str() == "proxy-connection"
                    || (*name == TE && value.as_bytes() != b"trailers");
            }
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
    // Without `Host`, the target's authority names the host: HTTP/2's `:authority`, or an
    // absolute-form target of HTTP/1.0 (which need not send `Host`). Routes match its host and
    // the upstream is sent it as `Host`: `http://admin.example:443@www.example/` would be
    // routed by one name and read by upstreams as another.
    let named_host = first_host
        .map(|h| h.as_bytes())
        .or_else(|| head.uri.authority().map(|a| a.as_str().as_bytes()));
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
    if let Some(detail) = overridden {
        return Err(detail);
    }
    if refuse_overrides && head.uri.query().is_some_and(has_method_param) {
        return Err(METHOD_PARAM);
    }
    Ok(())
}

/// The fields with which a backend runs another method, or serves another URL, than the
/// request line's (Rack::MethodOverride, Symfony and Laravel, Express `method-override`; IIS
/// URL Rewrite and Symfony read the URL ones), lowercase with `-`, and what their refusal says.
const OVERRIDES: [(&[u8], &str); 5] = [
    (
        b"x-http-method-override",
        "X-HTTP-Method-Override is not accepted (in any spelling): a backend that honours it \
         runs another method than the request line's, the one the gateway authorized",
    ),
    (
        b"x-http-method",
        "X-HTTP-Method is not accepted (in any spelling): a backend that honours it runs \
         another method than the request line's, the one the gateway authorized",
    ),
    (
        b"x-method-override",
        "X-Method-Override is not accepted (in any spelling): a backend that honours it runs \
         another method than the request line's, the one the gateway authorized",
    ),
    (
        b"x-original-url",
        "X-Original-URL is not accepted (in any spelling): a backend that honours it serves \
         another URL than the request line's, the one the gateway routed and authorized",
    ),
    (
        b"x-rewrite-url",
        "X-Rewrite-URL is not accepted (in any spelling): a backend that honours it serves \
         another URL than the request line's, the one the gateway routed and authorized",
    ),
];

const METHOD_PARAM: &str = "the query parameter _method is not accepted: a backend that \
     honours it runs another method than the request line's, the one the gateway authorized";

/// What the refusal of `name` says, when it is a method or URL override: in any case, and
/// with `_` for `-` (CGI, WSGI, Rack and PHP read `X_HTTP_METHOD_OVERRIDE` as the variable of
/// `X-HTTP-Method-Override`). Asked of every field of every request, so by length first: most
/// names go no further than that.
fn override_field(name: &[u8]) -> Option<&'static str> {
    if !matches!(name.len(), 13 | 14 | 17 | 22) {
        return None;
    }
    OVERRIDES
        .iter()
        .find(|(canonical, _)| same_field(name, canonical))
        .map(|(_, detail)| *detail)
}

/// Whether the field name `name` is `canonical` (lowercase, with `-`) in any case and with
/// `_` for any `-`.
fn same_field(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name
            .iter()
            .zip(canonical)
            .all(|(n, c)| n.to_ascii_lowercase() == *c || (*c == b'-' && *n == b'_'))
}

/// Whether a query (the raw text after `?`) holds a parameter named `_method`, as backends
/// would read its name: percent-decoded once (`+` a space), in any case, split at `&` or `;`
/// (older Rack splits at both), with PHP's mangling of names — leading spaces dropped, ` `
/// and `.` read as `_` (`.method` is `_method` to Laravel and Symfony), the name ending at a
/// NUL or at an array index (`_method[]`) — and Rack 2's and qs's brackets (`[_method]`,
/// `]_method`, `_method]`): see [`portcullis_core::query::is_method_name`]. No allocation:
/// most queries are read once, name by name, and left at the first byte that differs.
fn has_method_param(query: &str) -> bool {
    query
        .as_bytes()
        .split(|b| *b == b'&' || *b == b';')
        .any(|pair| {
            let name = pair.split(|b| *b == b'=').next().unwrap_or_default();
            portcullis_core::query::is_method_name(name)
        })
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
        match check_with(&req.head, self.refuse_overrides)
            .and_then(|()| consume_connection_options(&mut req.head.headers))
        {
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

    /// Every spelling of each override field is refused, whatever the version, with a
    /// detail that names it; the look-alikes are not, nor are the overrides where the
    /// operator lets them pass.
    #[test]
    fn method_and_url_override_fields_are_refused() {
        let cases = [
            ("X-HTTP-Method-Override", "X-HTTP-Method-Override"),
            ("x-http-method-override", "X-HTTP-Method-Override"),
            ("X_HTTP_METHOD_OVERRIDE", "X-HTTP-Method-Override"),
            ("x_http-method_override", "X-HTTP-Method-Override"),
            ("X-HTTP-Method", "X-HTTP-Method"),
            ("x_http_method", "X-HTTP-Method"),
            ("X-Method-Override", "X-Method-Override"),
            ("x_method_override", "X-Method-Override"),
            ("X-Original-URL", "X-Original-URL"),
            ("X_ORIGINAL_URL", "X-Original-URL"),
            ("X-Rewrite-URL", "X-Rewrite-URL"),
            ("x_rewrite_url", "X-Rewrite-URL"),
        ];
        for version in [Version::HTTP_10, H1, Version::HTTP_2] {
            let uri = if version == Version::HTTP_2 {
                "http://a/orders/7"
            } else {
                "/orders/7"
            };
            for (field, named) in cases {
                let h = head(
                    version,
                    uri,
                    &[("host", "a"), ("accept", "*/*"), (field, "DELETE")],
                );
                let detail = check(&h).expect_err(field);
                assert!(
                    detail.starts_with(&format!("{named} is not accepted")),
                    "{field}: {detail}"
                );
                assert!(detail.contains("gateway"), "{detail}");
                assert_eq!(check_with(&h, false), Ok(()), "{field} passes when allowed");
            }
        }
        // Names arrive in lowercase from hyper and h2; the comparison folds the case anyway.
        assert!(override_field(b"X-HTTP-METHOD-OVERRIDE").is_some());
        assert!(override_field(b"X_Rewrite_Url").is_some());
        for lookalike in [
            "x-http-method-overrides",
            "x-http-method-override-x",
            "x-http-methods",
            "http-method-override",
            "x-method",
            "method",
            "x-original-uri",
            "x-original-url2",
            "x-rewrite-uri",
            "x-http-method_",
            "x--http-method",
            "x-forwarded-method",
        ] {
            let h = head(H1, "/", &[("host", "a"), (lookalike, "DELETE")]);
            assert_eq!(check(&h), Ok(()), "{lookalike}");
        }
        // A framing problem is told first.
        let h = head(
            H1,
            "/",
            &[
                ("host", "a"),
                ("x-http-method-override", "DELETE"),
                ("content-length", "1"),
                ("transfer-encoding", "chunked"),
            ],
        );
        assert_eq!(
            check(&h),
            Err("Content-Length and Transfer-Encoding together are not accepted")
        );
    }

    /// A query parameter the backend reads as `_method` is refused, however its name is
    /// encoded or cased and whatever mangling PHP gives it; other names, and `_method` as a
    /// value, are not.
    #[test]
    fn a_method_query_parameter_is_refused() {
        let at = |target: &str, refuse: bool| {
            let h = head(H1, target, &[("host", "a")]);
            check_with(&h, refuse)
        };
        for refused in [
            "/orders/7?_method=DELETE",
            "/orders/7?a=1&_method=DELETE",
            "/orders/7?a=1&_method=DELETE&b=2",
            "/orders/7?_method",
            "/orders/7?_method=",
            "/orders/7?_METHOD=delete",
            "/orders/7?_Method=DELETE",
            "/orders/7?%5Fmethod=DELETE",
            "/orders/7?%5fMETHOD=DELETE",
            "/orders/7?_%6Dethod=DELETE",
            "/orders/7?%5F%6D%65%74%68%6F%64=DELETE",
            "/orders/7?_meth%6Fd=DELETE",
            // PHP reads these names as `_method`: leading spaces dropped, ` ` and `.` turned
            // into `_`, the name cut at a NUL or an array index.
            "/orders/7?.method=DELETE",
            "/orders/7?%2Emethod=DELETE",
            "/orders/7?+_method=DELETE",
            "/orders/7?%20%20_method=DELETE",
            "/orders/7?%20method=DELETE&x=1&+method=1&_method=DELETE",
            "/orders/7?_method[]=DELETE",
            "/orders/7?_method[x]=DELETE",
            "/orders/7?_method%00junk=DELETE",
            // Rack 2 drops a leading run of `[` and `]` and ignores a trailing run of `]`; qs
            // (Express) unwraps `[_method]`.
            "/orders/7?[_method]=DELETE",
            "/orders/7?%5B_method%5D=DELETE",
            "/orders/7?]_method=DELETE",
            "/orders/7?_method]=DELETE",
            "/orders/7?[[_method]]=DELETE",
            // Older Rack splits at `;` too.
            "/orders/7?a=1;_method=DELETE",
            "/orders/7?&&_method=DELETE",
        ] {
            assert_eq!(at(refused, true), Err(METHOD_PARAM), "{refused}");
            assert_eq!(at(refused, false), Ok(()), "{refused} passes when allowed");
        }
        for ok in [
            "/orders/7",
            "/orders/7?",
            "/orders/7?method=DELETE",
            "/orders/7?x_method=DELETE",
            "/orders/7?_methods=DELETE",
            "/orders/7?_method_=DELETE",
            "/orders/7?_method.x=DELETE",
            "/orders/7?_metho=DELETE",
            "/orders/7?q=_method",
            "/orders/7?q=_method%3DDELETE",
            "/orders/7?q=a%26_method%3DDELETE",
            "/orders/7?%255Fmethod=DELETE",
            "/orders/7?%5method=DELETE",
            "/orders/7?%_method=DELETE",
            "/orders/7?+method=DELETE",
            // PHP drops a name that starts with `[`; Rack 2 reads this one as `method`.
            "/orders/7?[method=DELETE",
            // Rack 2 reads `_method` as an object here (`{"x" => …}`): no method.
            "/orders/7?_method]x=DELETE",
            "/orders/7?a=1&b=2&c",
            "/_method",
            "/orders/7?%",
            "/orders/7?%F",
            "/orders/7?_metho%",
        ] {
            assert_eq!(at(ok, true), Ok(()), "{ok}");
        }
        let h2 = head(Version::HTTP_2, "http://a/orders/7?%5Fmethod=PUT", &[]);
        assert_eq!(check(&h2), Err(METHOD_PARAM));
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
        let named = match h.get(HOST) {
            Some(v) => Some(v.as_bytes()),
            None => head.uri.authority().map(|a| a.as_str().as_bytes()),
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
        // The override the request carries first, of every spelling looked up.
        let first_override = h
            .keys()
            .filter_map(|k| {
                OVERRIDES.iter().find(|(c, _)| {
                    let underscored = String::from_utf8(c.to_vec()).unwrap().replace('-', "_");
                    k.as_str().as_bytes() == *c || k.as_str() == underscored
                })
            })
            .next();
        if let Some((_, detail)) = first_override {
            return Err(detail);
        }
        if head
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some("_method")))
        {
            return Err(METHOD_PARAM);
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
            "x-http-method-override",
            "x_original_url",
        ];
        let values = [
            "a", "A", "b", "5", "5, 5", "", "chunked", "gzip", "trailers", "x",
        ];
        let versions = [Version::HTTP_10, H1, Version::HTTP_2, Version::HTTP_3];
        let uris = ["/", "http://a/x", "http://b/x", "/?a=1&_method=PUT"];
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
