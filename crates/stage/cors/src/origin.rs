//! Origins: the configured patterns and the `Origin` a request carries, parsed by one strict
//! parser so that both sides normalise the same way (lowercase scheme and host, default port
//! made explicit).
//!
//! Nothing here allocates when a request's origin is parsed or matched: the request side
//! borrows from the header value and compares case-insensitively.

use std::fmt;
use std::net::Ipv6Addr;

/// The schemes an origin may have. Anything else (`file:`, `chrome-extension:` …) is refused:
/// such pages send `null` or an origin a gateway has no business trusting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WebScheme {
    Http,
    Https,
}

impl WebScheme {
    pub(crate) const fn default_port(self) -> u16 {
        match self {
            WebScheme::Http => 80,
            WebScheme::Https => 443,
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            WebScheme::Http => "http",
            WebScheme::Https => "https",
        }
    }
}

/// The host part of a configured origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// A name or IPv4 address, lowercase.
    Name(Box<str>),
    /// `*.example.com`, kept as `.example.com`: matches one or more labels in front of it.
    Subdomains(Box<str>),
    /// `[2001:db8::1]`, compared as an address so every spelling of it matches.
    V6(Ipv6Addr),
}

/// One entry of `allowed_origins` (other than `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OriginPattern {
    /// The opaque origin browsers send from sandboxed frames, `file:` and `data:` documents and
    /// after cross-origin redirects.
    Null,
    Tuple {
        scheme: WebScheme,
        host: HostPattern,
        /// The effective port: the scheme's default when none is written.
        port: u16,
    },
}

/// The host of a request's `Origin`, borrowed from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestHost<'a> {
    /// Validated labels, in whatever case the client sent.
    Name(&'a str),
    V6(Ipv6Addr),
}

/// A request's `Origin`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestOrigin<'a> {
    Null,
    Tuple {
        scheme: WebScheme,
        host: RequestHost<'a>,
        port: u16,
    },
}

const FORMAT: &str = "not an origin: write scheme://host[:port] (e.g. https://app.example.com)";
const SCHEME: &str = "the scheme must be http or https";
const USERINFO: &str = "an origin has no user name or password (no \"@\")";
const TRAILING_SLASH: &str = "an origin has no path: remove the trailing \"/\"";
const PATH: &str = "an origin has no path";
const QUERY: &str = "an origin has no query (\"?\")";
const FRAGMENT: &str = "an origin has no fragment (\"#\")";
const HOST_MISSING: &str = "the host is missing";
const PORT: &str = "the port must be a number from 1 to 65535";
const IPV6: &str = "not a valid IPv6 address between [ ]";
const HOST_CHARS: &str = "the host must be dot-separated labels of ASCII letters, digits, \
                          '-' or '_' (write international names in their xn-- form)";
const HOST_LONG: &str = "the host is longer than 253 characters";
const WILDCARD_PLACE: &str =
    "a wildcard is allowed only as the whole leftmost label of the host (https://*.example.com)";
const WILDCARD_BROAD: &str = "a wildcard needs a domain of at least two labels after it \
                              (https://*.example.com, not https://*.com)";
const WILDCARD_PUBLIC: &str = "a wildcard over a public suffix (https://*.co.uk, \
                               https://*.github.io) would trust every site registered under it: \
                               list the origins, or put the wildcard under your own domain";

/// Whether `domain` is itself a suffix of Mozilla's Public Suffix List (ICANN or private
/// section: `co.uk`, `github.io`), under which anyone may register a name.
fn public_suffix(domain: &str) -> bool {
    let lower = domain.to_ascii_lowercase();
    let is_suffix = |d: &str| {
        psl::suffix(d.as_bytes()).is_some_and(|s| s.is_known() && s.as_bytes() == d.as_bytes())
    };
    // A wildcard rule right under it (`*.compute-1.amazonaws.com`, `*.nom.br`) makes every
    // name there a public suffix too: probe one.
    is_suffix(&lower) || is_suffix(&format!("x.{lower}"))
}

/// The host as written, before it is checked.
enum RawHost<'a> {
    Name(&'a str),
    V6(Ipv6Addr),
}

/// `scheme://host[:port]`, split and checked except for the host's labels.
fn split(s: &str) -> Result<(WebScheme, RawHost<'_>, u16), &'static str> {
    let (scheme, rest) = s.split_once("://").ok_or(FORMAT)?;
    let scheme = if scheme.eq_ignore_ascii_case("https") {
        WebScheme::Https
    } else if scheme.eq_ignore_ascii_case("http") {
        WebScheme::Http
    } else {
        return Err(SCHEME);
    };
    // Userinfo first: `https://a.com@evil.com` must be reported as what it is.
    if rest.contains('@') {
        return Err(USERINFO);
    }
    if let Some(i) = rest.find(['/', '?', '#']) {
        return Err(match rest.as_bytes().get(i) {
            Some(b'/') if i + 1 == rest.len() => TRAILING_SLASH,
            Some(b'/') => PATH,
            Some(b'?') => QUERY,
            _ => FRAGMENT,
        });
    }
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or(IPV6)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| IPV6)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(PORT)?),
        };
        (RawHost::V6(addr), port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (RawHost::Name(h), Some(p)),
            None => (RawHost::Name(rest), None),
        }
    };
    if matches!(host, RawHost::Name("")) {
        return Err(HOST_MISSING);
    }
    let port = match port {
        None => scheme.default_port(),
        Some(p) => parse_port(p).ok_or(PORT)?,
    };
    Ok((scheme, host, port))
}

pub(crate) fn parse_port(p: &str) -> Option<u16> {
    // Digits only: `u16::from_str` would also take a leading `+`.
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

/// Checks dot-separated labels; returns how many there are.
fn check_labels(host: &str) -> Result<usize, &'static str> {
    if host.len() > 253 {
        return Err(HOST_LONG);
    }
    let mut n = 0;
    for label in host.split('.') {
        if label.is_empty()
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(HOST_CHARS);
        }
        n += 1;
    }
    Ok(n)
}

/// Parses a configured origin list (`p`: where it sits, for errors): the patterns, each once,
/// and where the first `*` is, if any (its rules differ between the lists that take one).
/// Every malformed entry is recorded under `p[i]`.
pub(crate) fn parse_list(
    list: &[String],
    p: &str,
    errors: &mut portcullis_core::ConfigErrors,
) -> (Vec<OriginPattern>, Option<usize>) {
    let mut star = None;
    let mut patterns: Vec<OriginPattern> = Vec::new();
    for (i, s) in list.iter().enumerate() {
        if s == "*" {
            star.get_or_insert(i);
            continue;
        }
        match parse_pattern(s) {
            Ok(o) if !patterns.contains(&o) => patterns.push(o),
            Ok(_) => {}
            Err(e) => errors.push(format!("{p}[{i}]"), format!("\"{s}\": {e}")),
        }
    }
    (patterns, star)
}

/// Parses one configured origin (other than `*`).
pub(crate) fn parse_pattern(s: &str) -> Result<OriginPattern, &'static str> {
    if s.eq_ignore_ascii_case("null") {
        return Ok(OriginPattern::Null);
    }
    let (scheme, host, port) = split(s)?;
    let host = match host {
        RawHost::V6(a) => HostPattern::V6(a),
        RawHost::Name(h) => {
            if let Some(domain) = h.strip_prefix("*.") {
                if domain.contains('*') {
                    return Err(WILDCARD_PLACE);
                }
                let labels = check_labels(domain)?;
                // An all-digit last label means an IPv4 address, where "subdomains" make no
                // sense; one label (`*.com`) would trust a whole top-level domain.
                let last_numeric = domain
                    .rsplit('.')
                    .next()
                    .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
                if labels < 2 || last_numeric {
                    return Err(WILDCARD_BROAD);
                }
                if public_suffix(domain) {
                    return Err(WILDCARD_PUBLIC);
                }
                let mut suffix = String::with_capacity(domain.len() + 1);
                suffix.push('.');
                suffix.push_str(&domain.to_ascii_lowercase());
                HostPattern::Subdomains(suffix.into_boxed_str())
            } else if h.contains('*') {
                return Err(WILDCARD_PLACE);
            } else {
                check_labels(h)?;
                HostPattern::Name(h.to_ascii_lowercase().into_boxed_str())
            }
        }
    };
    Ok(OriginPattern::Tuple { scheme, host, port })
}

/// Parses a request's `Origin`. `None` when malformed: a malformed origin is never allowed.
pub(crate) fn parse_request(s: &str) -> Option<RequestOrigin<'_>> {
    // Browsers serialise the opaque origin exactly so.
    if s == "null" {
        return Some(RequestOrigin::Null);
    }
    let (scheme, host, port) = split(s).ok()?;
    let host = match host {
        RawHost::V6(a) => RequestHost::V6(a),
        RawHost::Name(h) => {
            check_labels(h).ok()?;
            RequestHost::Name(h)
        }
    };
    Some(RequestOrigin::Tuple { scheme, host, port })
}

impl OriginPattern {
    pub(crate) fn matches(&self, origin: &RequestOrigin<'_>) -> bool {
        match (self, origin) {
            (OriginPattern::Null, RequestOrigin::Null) => true,
            (
                OriginPattern::Tuple { scheme, host, port },
                RequestOrigin::Tuple {
                    scheme: rs,
                    host: rh,
                    port: rp,
                },
            ) => {
                scheme == rs
                    && port == rp
                    && match (host, rh) {
                        (HostPattern::Name(n), RequestHost::Name(h)) => n.eq_ignore_ascii_case(h),
                        (HostPattern::Subdomains(suffix), RequestHost::Name(h)) => {
                            // The request's labels are all non-empty, so whatever precedes the
                            // suffix's leading dot is at least one whole label: `evilexample.com`
                            // and `example.com` do not end with `.example.com`.
                            let (h, suffix) = (h.as_bytes(), suffix.as_bytes());
                            h.len() > suffix.len()
                                && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                        }
                        (HostPattern::V6(a), RequestHost::V6(b)) => a == b,
                        _ => false,
                    }
            }
            _ => false,
        }
    }
}

/// The normalised form (`https://*.example.com:8443`, `null`), for messages and tests.
impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginPattern::Null => f.write_str("null"),
            OriginPattern::Tuple { scheme, host, port } => {
                write!(f, "{}://", scheme.as_str())?;
                match host {
                    HostPattern::Name(n) => f.write_str(n)?,
                    HostPattern::Subdomains(s) => write!(f, "*{s}")?,
                    HostPattern::V6(a) => write!(f, "[{a}]")?,
                }
                if *port != scheme.default_port() {
                    write!(f, ":{port}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        parse_pattern(s).unwrap().to_string()
    }

    fn matches(pattern: &str, origin: &str) -> bool {
        let p = parse_pattern(pattern).unwrap();
        parse_request(origin).is_some_and(|o| p.matches(&o))
    }

    #[test]
    fn patterns_normalise() {
        assert_eq!(norm("HTTPS://App.Example.COM"), "https://app.example.com");
        assert_eq!(norm("https://a.com:443"), "https://a.com");
        assert_eq!(norm("http://a.com:80"), "http://a.com");
        assert_eq!(norm("http://a.com:443"), "http://a.com:443");
        assert_eq!(norm("https://a.com:0443"), "https://a.com");
        assert_eq!(
            norm("https://*.Example.com:8443"),
            "https://*.example.com:8443"
        );
        assert_eq!(norm("http://[0:0::1]:8080"), "http://[::1]:8080");
        assert_eq!(norm("http://127.0.0.1:3000"), "http://127.0.0.1:3000");
        assert_eq!(norm("NULL"), "null");
    }

    #[test]
    fn bad_patterns_say_why() {
        let cases = [
            ("app.example.com", FORMAT),
            ("ftp://a.com", SCHEME),
            ("https://user@a.com", USERINFO),
            ("https://a.com@evil.com", USERINFO),
            ("https://a.com/", TRAILING_SLASH),
            ("https://a.com/app", PATH),
            ("https://a.com?x=1", QUERY),
            ("https://a.com#top", FRAGMENT),
            ("https://", HOST_MISSING),
            ("https://:8443", HOST_MISSING),
            ("https://a.com:", PORT),
            ("https://a.com:0", PORT),
            ("https://a.com:65536", PORT),
            ("https://a.com:+443", PORT),
            ("https://a.com:1:2", PORT),
            ("https://[::1", IPV6),
            ("https://[nope]", IPV6),
            ("https://[::1]x", PORT),
            ("https://a..com", HOST_CHARS),
            ("https://a.com.", HOST_CHARS),
            ("https://bücher.de", HOST_CHARS),
            ("https://a b.com", HOST_CHARS),
            ("https://a*.example.com", WILDCARD_PLACE),
            ("https://a.*.example.com", WILDCARD_PLACE),
            ("https://*.*.example.com", WILDCARD_PLACE),
            ("https://*example.com", WILDCARD_PLACE),
            ("https://*", WILDCARD_PLACE),
            ("https://*.com", WILDCARD_BROAD),
            ("https://*.0.0.1", WILDCARD_BROAD),
            ("https://*.co.uk", WILDCARD_PUBLIC),
            ("https://*.CO.UK", WILDCARD_PUBLIC),
            ("https://*.github.io", WILDCARD_PUBLIC),
            ("https://*.herokuapp.com:8443", WILDCARD_PUBLIC),
            ("https://*.compute-1.amazonaws.com", WILDCARD_PUBLIC),
            ("https://*.nom.br", WILDCARD_PUBLIC),
        ];
        for (s, want) in cases {
            assert_eq!(parse_pattern(s), Err(want), "{s}");
        }
        let long = format!("https://{}.com", "a".repeat(250));
        assert_eq!(parse_pattern(&long), Err(HOST_LONG));
    }

    #[test]
    fn request_origins_normalise_like_patterns() {
        assert!(matches("https://a.com", "https://a.com"));
        assert!(matches("https://a.com", "HTTPS://A.COM"));
        assert!(matches("https://a.com", "https://a.com:443"));
        assert!(matches("https://a.com:443", "https://a.com"));
        assert!(!matches("https://a.com", "http://a.com"));
        assert!(!matches("https://a.com", "https://a.com:8443"));
        assert!(matches(
            "http://[::1]:8080",
            "http://[0:0:0:0:0:0:0:1]:8080"
        ));
        assert!(matches("null", "null"));
        assert!(!matches("null", "NULL"));
        assert!(!matches("https://a.com", "null"));
        assert!(!matches("null", "https://a.com"));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        // Under a registrable domain, of a public suffix or an unknown one: accepted.
        for p in [
            "https://*.example.co.uk",
            "https://*.me.github.io",
            "https://*.corp.internal",
        ] {
            assert!(parse_pattern(p).is_ok(), "{p}");
        }
        let p = "https://*.example.com";
        assert!(matches(p, "https://a.example.com"));
        assert!(matches(p, "https://a.b.example.com"));
        assert!(matches(p, "https://A.Example.COM"));
        assert!(matches(p, "https://a.example.com:443"));
        assert!(!matches(p, "https://example.com"));
        assert!(!matches(p, "https://evilexample.com"));
        assert!(!matches(p, "https://.example.com"));
        assert!(!matches(p, "https://a.example.com.evil.com"));
        assert!(!matches(p, "http://a.example.com"));
        assert!(!matches(p, "https://a.example.com:8443"));
        assert!(matches(
            "https://*.example.com:8443",
            "https://a.example.com:8443"
        ));
        assert!(!matches(
            "https://*.example.com:8443",
            "https://a.example.com"
        ));
    }

    #[test]
    fn malformed_request_origins_are_none() {
        for s in [
            "",
            "*",
            "https://*.example.com",
            "https://a.com/",
            "https://a.com/path",
            "https://u:p@a.com",
            "https://a.com:99999",
            "file:///etc/passwd",
            "chrome-extension://abc",
            "https://a..com",
            "Null",
        ] {
            assert_eq!(parse_request(s), None, "{s}");
        }
    }
}
