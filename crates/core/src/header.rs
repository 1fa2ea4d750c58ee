//! Header-map edits for the request path that skip the hash lookup when a name is absent, the
//! token-character table of RFC 9110 (field names, methods, CORS tokens), and the fields that
//! may not be trailers.
//!
//! `HeaderMap::remove` and `get` hash the name even when it is absent, which is what most
//! removals on the request path meet (a client rarely sends the fields a gateway strips). A
//! message carries a handful of names, so comparing against each of them (a byte comparison
//! for a standard name, a length check for most others) costs less than the hash.

use http::header::{HeaderMap, HeaderName};

use crate::Scheme;

/// Whether `headers` holds a field called `name`, found by comparing names rather than by
/// hashing.
pub fn has_header<T>(headers: &HeaderMap<T>, name: &HeaderName) -> bool {
    headers.keys().any(|k| k == name)
}

/// `headers.get(name)` — the first value of `name` — found by comparing names rather than by
/// hashing.
pub fn header_value<'a, T>(headers: &'a HeaderMap<T>, name: &HeaderName) -> Option<&'a T> {
    headers.iter().find_map(|(k, v)| (k == name).then_some(v))
}

/// `headers.remove(name)`, without the hash lookup when the name is absent. Every value of the
/// name goes; what is left, and its order, is exactly what `HeaderMap::remove` leaves.
pub fn remove_header<T>(headers: &mut HeaderMap<T>, name: &HeaderName) {
    if has_header(headers, name) {
        headers.remove(name);
    }
}

/// Whether two lowercase field names are one with `_` read as `-`. CGI, WSGI, Rack and PHP
/// hand headers to applications as `HTTP_*` variables with `-` and `_` both written `_`:
/// `x_user_id` reaches them as `HTTP_X_USER_ID`, exactly as `x-user-id` would.
pub fn same_name_folded(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

/// Removes every field called one of `names` or spelled like one with `_` for `-`
/// ([`same_name_folded`]): a field the gateway alone may set must not reach an application
/// under its other spelling either. Nothing is hashed or allocated when none is there.
pub fn remove_headers_folded<T>(headers: &mut HeaderMap<T>, names: &[HeaderName]) {
    if names.is_empty() {
        return;
    }
    let mut doomed: Vec<HeaderName> = Vec::new();
    for k in headers.keys() {
        let kb = k.as_str().as_bytes();
        if names
            .iter()
            .any(|n| n == k || same_name_folded(kb, n.as_str().as_bytes()))
        {
            doomed.push(k.clone());
        }
    }
    for k in &doomed {
        headers.remove(k);
    }
}

/// Whether a field may travel as a trailer: not one that frames, routes, authenticates or
/// controls the message or its connection (RFC 9110 §6.5.1; the hop-by-hop fields, which an
/// HTTP/2 peer refuses in any field section, RFC 9113 §8.2.2). hyper's HTTP/1.1 server refuses
/// fewer; every trailer section the gateway passes on is held to this.
pub fn trailer_allowed(name: &HeaderName) -> bool {
    use http::header;
    !matches!(
        *name,
        header::CONTENT_LENGTH
            | header::TRANSFER_ENCODING
            | header::CONTENT_TYPE
            | header::CONTENT_ENCODING
            | header::CONTENT_RANGE
            | header::HOST
            | header::TE
            | header::TRAILER
            | header::CONNECTION
            | header::UPGRADE
            | header::AUTHORIZATION
            | header::PROXY_AUTHENTICATE
            | header::PROXY_AUTHORIZATION
            | header::WWW_AUTHENTICATE
            | header::SET_COOKIE
            | header::CACHE_CONTROL
            | header::EXPIRES
            | header::AGE
            | header::DATE
            | header::LOCATION
            | header::RETRY_AFTER
            | header::VARY
            | header::EXPECT
            | header::MAX_FORWARDS
            | header::PRAGMA
            | header::RANGE
    ) && !matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Removes from a trailer section every field [`trailer_allowed`] refuses. Nothing is hashed or
/// allocated when there is none.
pub fn remove_disallowed_trailers<T>(trailers: &mut HeaderMap<T>) {
    while let Some(name) = trailers.keys().find(|n| !trailer_allowed(n)).cloned() {
        trailers.remove(&name);
    }
}

/// RFC 9110 §5.6.2 token characters, as a table: one load per byte of a field name.
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b: u8 = 0;
    loop {
        t[b as usize] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        if b == u8::MAX {
            break t;
        }
        b += 1;
    }
};

/// Whether `b` is an RFC 9110 §5.6.2 token character (field names, methods, CORS tokens).
pub fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// The scheme a trusted proxy says its client used: the last `X-Forwarded-Proto` element (the
/// one the trusted proxy nearest the gateway wrote: one that appends rather than replaces
/// leaves its client's own claim before it), else the `proto=` of `Forwarded`'s last element;
/// `http` or `https` only (any case), anything else is not taken. Only a trusted peer's word
/// counts: see [`crate::RequestCtx::client_scheme`].
pub fn forwarded_scheme(headers: &HeaderMap) -> Option<Scheme> {
    let pick = |v: &str| match v.trim().trim_matches('"') {
        p if p.eq_ignore_ascii_case("https") => Some(Scheme::Https),
        p if p.eq_ignore_ascii_case("http") => Some(Scheme::Http),
        _ => None,
    };
    if let Some(v) = headers
        .get_all(HeaderName::from_static("x-forwarded-proto"))
        .iter()
        .next_back()
    {
        return v.to_str().ok()?.rsplit(',').next().and_then(pick);
    }
    let last = headers
        .get_all(http::header::FORWARDED)
        .iter()
        .next_back()?;
    let element = last.to_str().ok()?.rsplit(',').next()?;
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("proto") {
            pick(v)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{self, HeaderValue};

    #[test]
    fn names_are_compared_with_underscores_read_as_dashes() {
        assert!(same_name_folded(b"x_user_id", b"x-user-id"));
        assert!(same_name_folded(b"x-user_id", b"x-user-id"));
        assert!(same_name_folded(b"x-user-id", b"x_user-id"));
        assert!(!same_name_folded(b"x_user_ids", b"x-user-id"));
        assert!(!same_name_folded(b"x_user.id", b"x-user-id"));
    }

    #[test]
    fn folded_removal_takes_every_spelling_and_nothing_else() {
        let mut m = map(&[
            ("x-plan", "gold"),
            ("x_plan", "gold"),
            ("x-plan", "again"),
            ("x_plan_b", "keep"),
            ("accept", "*/*"),
        ]);
        remove_headers_folded(&mut m, &[HeaderName::from_static("x-plan")]);
        let mut left: Vec<&str> = m.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x_plan_b"]);
        let before = m.clone();
        remove_headers_folded(&mut m, &[]);
        assert_eq!(m, before);
    }

    #[test]
    fn trailers_lose_the_fields_that_may_not_be_trailers_and_keep_the_others() {
        let mut m = map(&[
            ("grpc-status", "0"),
            ("content-length", "9"),
            ("keep-alive", "1"),
            ("x-sum", "a"),
            ("proxy-connection", "close"),
            ("set-cookie", "a=1"),
            ("connection", "x-sum"),
            ("x-sum", "b"),
            ("te", "trailers"),
            ("authorization", "Basic eA=="),
        ]);
        remove_disallowed_trailers(&mut m);
        assert_eq!(
            listed(&m),
            [("grpc-status", "0"), ("x-sum", "a"), ("x-sum", "b")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(trailer_allowed(&HeaderName::from_static("x-checksum")));
        assert!(!trailer_allowed(&header::TRANSFER_ENCODING));
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    fn listed(m: &HeaderMap) -> Vec<(String, String)> {
        m.iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn token_characters_are_those_of_rfc_9110() {
        let listed = b"!#$%&'*+-.^_`|~";
        for b in 0..=u8::MAX {
            let want = b.is_ascii_alphanumeric() || listed.contains(&b);
            assert_eq!(is_tchar(b), want, "{b:#04x}");
        }
    }

    #[test]
    fn present_and_absent_names_standard_and_custom() {
        let m = map(&[("server", "x"), ("x-powered-by", "y")]);
        assert!(has_header(&m, &header::SERVER));
        assert!(has_header(&m, &HeaderName::from_static("x-powered-by")));
        assert!(!has_header(&m, &header::TE));
        // Same length as a present custom name, different bytes.
        assert!(!has_header(&m, &HeaderName::from_static("x-powered-bz")));
        assert!(!has_header(&HeaderMap::new(), &header::SERVER));
    }

    #[test]
    fn the_value_found_is_what_get_finds() {
        let m = map(&[
            ("a", "1"),
            ("server", "s1"),
            ("b", "2"),
            ("server", "s2"),
            ("host", "h"),
        ]);
        for n in [
            header::SERVER,
            header::HOST,
            header::TE,
            HeaderName::from_static("a"),
            HeaderName::from_static("b"),
            HeaderName::from_static("c"),
        ] {
            assert_eq!(header_value(&m, &n), m.get(&n), "{n}");
        }
        assert_eq!(header_value(&m, &header::SERVER).unwrap(), "s1");
        assert_eq!(
            header_value(&HeaderMap::<HeaderValue>::new(), &header::HOST),
            None
        );
    }

    #[test]
    fn removal_leaves_what_header_map_remove_leaves() {
        let pairs = [
            ("a", "1"),
            ("server", "s1"),
            ("b", "2"),
            ("x-runtime", "r"),
            ("server", "s2"),
            ("c", "3"),
            ("d", "4"),
        ];
        let names = [
            HeaderName::from_static("x-absent"),
            header::SERVER,
            HeaderName::from_static("x-runtime"),
            header::TE,
            header::SERVER,
        ];
        let mut ours = map(&pairs);
        let mut theirs = map(&pairs);
        for n in &names {
            remove_header(&mut ours, n);
            theirs.remove(n);
        }
        assert_eq!(listed(&ours), listed(&theirs));
        assert_eq!(ours.len(), 4);
    }
}
