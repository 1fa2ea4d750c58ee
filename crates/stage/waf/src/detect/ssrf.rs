//! Server-side request forgery and remote file inclusion (rules 1500–1599).
//!
//! Every URL in a value (canonical view: decoded, NFKC-folded, lowercase) has its host parsed the
//! way permissive URL parsers do (user-info dropped, IPv4 in decimal, hex, octal, short and mixed
//! forms, IPv6 with embedded IPv4) and classified: cloud metadata endpoints, loopback, private
//! ranges. Plus dangerous schemes (`gopher:`, `dict:`, `file:` …) and the remote-include shape
//! (`http://host/shell.txt?`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::shared::{Bank, Literals, push_once};
use crate::model::{Class, Finding, Location, Rule, Severity, Target};
use crate::transform::{View, Views};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::Ssrf,
        severity,
        paranoia,
        description,
    }
}

pub static RULES: &[Rule] = &[
    rule(
        1500,
        Severity::Critical,
        1,
        "cloud metadata endpoint (address, name or path)",
    ),
    rule(
        1501,
        Severity::Critical,
        1,
        "URL host is an IP address in obfuscated notation",
    ),
    rule(
        1502,
        Severity::Error,
        1,
        "URL host is a loopback or unspecified address",
    ),
    rule(
        1503,
        Severity::Warning,
        2,
        "URL host is in a private or link-local range",
    ),
    rule(
        1504,
        Severity::Critical,
        1,
        "URL scheme used for SSRF or local file access (gopher, dict, tftp, netdoc, jar; file: where a URL is read: opening the value, after = or (, or quoted after :)",
    ),
    rule(1505, Severity::Error, 1, "LDAP URL in a value"),
    rule(
        1506,
        Severity::Error,
        1,
        "URL ending in a query-truncating question mark (remote include)",
    ),
    rule(
        1507,
        Severity::Critical,
        1,
        "remote file include shape (script or text file URL ending in ? or NUL)",
    ),
    rule(
        1508,
        Severity::Error,
        2,
        "URL host is a wildcard-DNS name resolving to an embedded or internal address",
    ),
    rule(
        1509,
        Severity::Warning,
        2,
        "script or text file fetched from an IP-address host",
    ),
    rule(
        1510,
        Severity::Critical,
        2,
        "file: URL inside text (prose, a comment, a code span), where no fetcher reads a URL",
    ),
];

const METADATA_V4: [Ipv4Addr; 5] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(192, 0, 0, 192),
    Ipv4Addr::new(168, 63, 129, 16),
];

const METADATA_NAMES: [&str; 8] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
];

const REBIND_SUFFIXES: [&str; 14] = [
    "nip.io",
    "sslip.io",
    "xip.io",
    "nip.me",
    "traefik.me",
    "localtest.me",
    "lvh.me",
    "vcap.me",
    "lacolhost.com",
    "localho.st",
    "1u.ms",
    "rbndr.us",
    "rebind.it",
    "rebind.network",
];

static PRIVATE: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    let v4 = [
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
        (Ipv4Addr::new(100, 64, 0, 0), 10),
        (Ipv4Addr::new(169, 254, 0, 0), 16),
        (Ipv4Addr::new(198, 18, 0, 0), 15),
    ];
    let v6 = [
        (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    ];
    let mut nets = Vec::new();
    for (a, p) in v4 {
        if let Ok(n) = Ipv4Net::new(a, p) {
            nets.push(IpNet::V4(n));
        }
    }
    for (a, p) in v6 {
        if let Ok(n) = Ipv6Net::new(a, p) {
            nets.push(IpNet::V6(n));
        }
    }
    nets
});

/// Patterns over the canonical view (lowercase).
static CANON: LazyLock<Bank> = LazyLock::new(|| {
    Bank::new(
        "ssrf",
        &[
            (
                0,
                r"\b169\.254\.169\.254\b|\b169\.254\.170\.2\b|\bmetadata\.google\.internal\b|\b100\.100\.100\.200\b|\bfd00:ec2::254\b",
            ),
            (
                0,
                r"/latest/(?:meta-data|user-data|dynamic/instance-identity|api/token)\b|/computemetadata/v1\b|/metadata/instance\?api-version|/metadata/identity/oauth2/token|/openstack/latest/(?:meta_data|user_data|password)|/metadata/v1/(?:user-data|interfaces)|/opc/v[12]/instance|\biam/security-credentials\b",
            ),
            (
                4,
                r"(?:^|[^a-z0-9+.-])(?:gopher|dict|tftp|netdoc)://|(?:^|[^a-z0-9+.-])jar:(?:file|https?|ftp):|(?:^|[^a-z0-9+.-])netdoc:",
            ),
            // A file URL where something reads a URL: the value itself or any of its lines
            // (after blanks, quotes, brackets, a list's `-`), an attribute, setting or call
            // argument (`src=`, `url(`, `new URL('`), a list element (`a,file:…`), a JSON or
            // YAML value (`"url": "file:…"`, `url: file:…`), an `@import`. Inside text (prose,
            // a `//` comment, a Markdown code span) it is rule 1510, at paranoia 2.
            (
                4,
                r"(?m:^[\s\x22'`(<\[{-]*|[=(,]\s*[\x22'`]?\s*|[a-z0-9_\x22']:\s*[\x22']?\s*|@import\s+[\x22']?)file:(?:/|\\|[a-z]:)",
            ),
            (10, r"(?:^|[^a-z0-9+.-])file:(?:/|\\|[a-z]:)"),
            (5, r"(?:^|[^a-z0-9+.-])ldap[si]?://"),
            (
                6,
                r"^[\s\x22']*(?:https?|ftps?)://[^\s?#]+/[^\s?#]*\?+[\s\x22']*$",
            ),
            (
                7,
                r"(?:https?|ftps?)://[^\s?#]+\.(?:txt|php[0-9]?|phtml|inc|asp|aspx|jsp|pl|cgi|sh|py|dat|log)(?:\?+[\s\x22']*$|\?{2,}|\?&|%00|\x00)",
            ),
        ],
    )
});

/// Patterns over the raw value: what decoding erases (a NUL ending a remote include).
static RAW: LazyLock<Bank> = LazyLock::new(|| {
    Bank::new(
        "ssrf",
        &[(
            7,
            r"(?i)(?:https?|ftps?)://[^\s?#]+\.(?:txt|php[0-9]?|phtml|inc|asp|aspx|jsp|pl|cgi|sh|py|dat|log)(?:%(?:25)*00|\x00)",
        )],
    )
});

/// Fragments a URL, a metadata address or a metadata path carries.
static LITS: LazyLock<Literals> = LazyLock::new(|| {
    Literals::new(
        "ssrf",
        &[
            ":/",
            ":\\",
            "//",
            "\\\\",
            "169.254",
            "100.100.100.200",
            "metadata",
            "fd00:ec2",
            "/latest/",
            "/opc/",
            "/openstack/",
            "credentials",
            "jar:",
            "netdoc:",
            "file:",
        ],
    )
});

/// A host, written into a fixed buffer (no allocation): lowercase, `。` and friends as dots,
/// trailing dots removed.
struct HostBuf {
    buf: [u8; 80],
    len: usize,
}

impl HostBuf {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

fn host_buf(host: &str) -> Option<HostBuf> {
    let mut hb = HostBuf {
        buf: [0; 80],
        len: 0,
    };
    for c in host.chars() {
        let c = match c {
            '\u{3002}' | '\u{FF0E}' | '\u{FF61}' => '.',
            c => c.to_ascii_lowercase(),
        };
        let mut tmp = [0u8; 4];
        let s = c.encode_utf8(&mut tmp);
        if hb.len + s.len() > hb.buf.len() {
            return None;
        }
        hb.buf[hb.len..hb.len + s.len()].copy_from_slice(s.as_bytes());
        hb.len += s.len();
    }
    while hb.len > 0 && hb.buf[hb.len - 1] == b'.' {
        hb.len -= 1;
    }
    Some(hb)
}

/// An IPv4 address the way `inet_aton` reads it: one to four parts, each decimal, octal
/// (leading 0) or hex (0x); the last part fills the remaining bytes. Returns the address and
/// whether it was written canonically (four decimal parts without leading zeros).
pub(crate) fn parse_ipv4_lenient(s: &str) -> Option<(Ipv4Addr, bool)> {
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let mut parts = [0u64; 4];
    let mut n = 0usize;
    let mut canonical = true;
    for part in s.split('.') {
        if n == 4 || part.is_empty() {
            return None;
        }
        let (digits, radix) = if let Some(h) = part.strip_prefix("0x") {
            canonical = false;
            (h, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            canonical = false;
            (&part[1..], 8)
        } else {
            (part, 10)
        };
        let v = if digits.is_empty() {
            0
        } else {
            if digits.len() > 12 {
                return None;
            }
            u64::from_str_radix(digits, radix).ok()?
        };
        parts[n] = v;
        n += 1;
    }
    if n != 4 {
        canonical = false;
    }
    let last_max: u64 = match n {
        1 => 0xffff_ffff,
        2 => 0xff_ffff,
        3 => 0xffff,
        _ => 0xff,
    };
    if parts[..n - 1].iter().any(|&p| p > 0xff) || parts[n - 1] > last_max {
        return None;
    }
    let v = match n {
        1 => parts[0],
        2 => (parts[0] << 24) | parts[1],
        3 => (parts[0] << 24) | (parts[1] << 16) | parts[2],
        _ => (parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3],
    };
    Some((Ipv4Addr::from(v as u32), canonical))
}

/// The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4).
fn embedded_v4(a: &Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = a.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = a.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0; 6] && (s[6] != 0) {
        return Some(tail); // ::a.b.c.d (compatible)
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(tail); // NAT64
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostClass {
    Metadata,
    Loopback,
    Private,
    Public,
}

fn classify_ip(ip: IpAddr) -> HostClass {
    match ip {
        IpAddr::V4(v4) => {
            if METADATA_V4.contains(&v4) {
                HostClass::Metadata
            } else if v4.is_loopback() || v4.octets()[0] == 0 {
                HostClass::Loopback
            } else if PRIVATE.iter().any(|n| n.contains(&IpAddr::V4(v4))) {
                HostClass::Private
            } else {
                HostClass::Public
            }
        }
        IpAddr::V6(v6) => {
            if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                HostClass::Metadata
            } else if v6.is_loopback() || v6.is_unspecified() {
                HostClass::Loopback
            } else if let Some(v4) = embedded_v4(&v6) {
                classify_ip(IpAddr::V4(v4))
            } else if PRIVATE.iter().any(|n| n.contains(&IpAddr::V6(v6))) {
                HostClass::Private
            } else {
                HostClass::Public
            }
        }
    }
}

/// What a URL host turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostVerdict {
    class: HostClass,
    /// An IP literal written in a notation no honest URL uses.
    obfuscated: bool,
    /// An IP literal at all.
    is_ip: bool,
    /// A wildcard-DNS rebinding name.
    rebinding: bool,
}

fn classify_host(host: &str) -> Option<HostVerdict> {
    let hb = host_buf(host)?;
    let h = hb.as_str();
    if h.is_empty() {
        return None;
    }
    let v = |class, obfuscated, is_ip, rebinding| HostVerdict {
        class,
        obfuscated,
        is_ip,
        rebinding,
    };
    if let Some(inner) = h.strip_prefix('[') {
        let inner = inner.strip_suffix(']').unwrap_or(inner);
        let inner = inner.split('%').next().unwrap_or(inner);
        let a: Ipv6Addr = inner.parse().ok()?;
        let obf = embedded_v4(&a).is_some();
        return Some(v(classify_ip(IpAddr::V6(a)), obf, true, false));
    }
    if h.bytes()
        .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'x')
        && h.as_bytes()[0].is_ascii_digit()
        && let Some((a, canonical)) = parse_ipv4_lenient(h)
    {
        return Some(v(classify_ip(IpAddr::V4(a)), !canonical, true, false));
    }
    if h == "localhost"
        || h.ends_with(".localhost")
        || h == "localhost.localdomain"
        || h == "ip6-localhost"
        || h == "ip6-loopback"
    {
        return Some(v(HostClass::Loopback, false, false, false));
    }
    if METADATA_NAMES.contains(&h) {
        return Some(v(HostClass::Metadata, false, false, false));
    }
    for suf in REBIND_SUFFIXES {
        if h == suf || h.strip_suffix(suf).is_some_and(|p| p.ends_with('.')) {
            // The address these names embed: the last dotted or dashed quad before the suffix.
            let prefix = h.strip_suffix(suf).unwrap_or("").trim_end_matches('.');
            let class =
                embedded_quad(prefix).map_or(HostClass::Public, |a| classify_ip(IpAddr::V4(a)));
            return Some(v(class, false, false, true));
        }
    }
    Some(v(HostClass::Public, false, false, false))
}

/// `127.0.0.1` or `127-0-0-1` (possibly after a label) at the end of a name prefix.
fn embedded_quad(prefix: &str) -> Option<Ipv4Addr> {
    let tail = prefix
        .rsplit(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .next()?;
    let mut out = [0u8; 4];
    let mut n = 0;
    for p in tail
        .split(['.', '-'])
        .filter(|p| !p.is_empty())
        .rev()
        .take(4)
    {
        out[3 - n] = p.parse().ok()?;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(out))
}

/// The host candidates of the URL whose authority starts at `rest` (after `scheme:` and its
/// slashes): before the first `/ \ ? #`, after the last `@`; and, when a `#` or `?` hides an
/// `@` before the first slash, the host after that `@` too.
fn url_hosts(rest: &str) -> [Option<&str>; 2] {
    let stop = |c: char| {
        matches!(c, '/' | '\\' | '?' | '#')
            || c.is_whitespace()
            || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')' | ',' | ';')
    };
    let auth_end = rest.find(stop).unwrap_or(rest.len());
    let auth = &rest[..auth_end];
    let first = strip_port(auth.rsplit('@').next().unwrap_or(auth));
    let wide_end = rest
        .find(|c: char| matches!(c, '/' | '\\') || c.is_whitespace())
        .unwrap_or(rest.len());
    let wide = &rest[..wide_end];
    let second = if wide.len() > auth.len() && wide[auth.len()..].contains('@') {
        wide.rsplit('@').next().map(strip_port)
    } else {
        None
    };
    [Some(first), second]
}

fn strip_port(hostport: &str) -> &str {
    if hostport.starts_with('[') {
        return match hostport.find(']') {
            Some(i) => &hostport[..=i],
            None => hostport,
        };
    }
    match hostport.rfind(':') {
        Some(i) if hostport[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &hostport[..i],
        Some(i) if hostport[..i].contains(':') => hostport, // bare IPv6, left to fail parsing
        Some(i) => &hostport[..i],
        None => hostport,
    }
}

/// Calls `f(host)` for the host of every URL in `s` (at most 16 URLs).
fn for_each_url_host<'s>(s: &'s str, mut f: impl FnMut(&'s str)) {
    let b = s.as_bytes();
    let mut from = 0;
    let mut seen = 0;
    while let Some(off) = s[from..].find(':') {
        let i = from + off;
        from = i + 1;
        // The scheme: letters right before the colon.
        let mut j = i;
        while j > 0 && (b[j - 1].is_ascii_alphanumeric() || matches!(b[j - 1], b'+' | b'.' | b'-'))
        {
            j -= 1;
        }
        if j == i || !b[j].is_ascii_alphabetic() {
            continue;
        }
        let scheme = &s[j..i];
        if matches!(
            scheme,
            "file" | "mailto" | "javascript" | "data" | "urn" | "tel" | "news"
        ) {
            continue;
        }
        let mut k = i + 1;
        let mut slashes = 0;
        while k < b.len() && matches!(b[k], b'/' | b'\\') && slashes < 4 {
            k += 1;
            slashes += 1;
        }
        if slashes == 0 {
            continue;
        }
        for h in url_hosts(&s[k..]).into_iter().flatten() {
            f(h);
        }
        seen += 1;
        if seen >= 16 {
            break;
        }
    }
    // A scheme-relative URL (`//host/…`) at the start.
    if let Some(rest) = s.trim_start().strip_prefix("//")
        && !rest.starts_with('/')
    {
        for h in url_hosts(rest).into_iter().flatten() {
            f(h);
        }
    }
}

/// Headers that routinely carry the client's own (often local) URLs.
fn is_origin_header(t: &Target<'_>) -> bool {
    t.location == Location::Header
}

pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let raw = views.get(View::Raw);
    if !raw.contains(['%', '&']) && raw.is_ascii() && !LITS.any(raw) {
        return;
    }
    let mut seen = 0u64;
    if raw.contains("://") {
        RAW.scan(raw, |r, m| {
            push_once(RULES, r, &mut seen, paranoia, t, View::Raw, m, out)
        });
    }
    let canon = views.get(View::Canonical);
    if !LITS.any(canon) {
        return;
    }
    CANON.scan(canon, |r, m| {
        push_once(RULES, r, &mut seen, paranoia, t, View::Canonical, m, out)
    });
    let header = is_origin_header(t);
    let mut hits: [Option<&str>; 6] = [None; 6];
    for_each_url_host(canon, |host| {
        let Some(v) = classify_host(host) else { return };
        let mut hit = |slot: usize| {
            if hits[slot].is_none() {
                hits[slot] = Some(host);
            }
        };
        match v.class {
            HostClass::Metadata => hit(0),
            HostClass::Loopback if !header => hit(2),
            HostClass::Private if !header => hit(3),
            _ => {}
        }
        if v.obfuscated {
            hit(1);
        }
        if v.rebinding && v.class != HostClass::Public {
            hit(4);
        }
        if v.is_ip && v.class == HostClass::Public {
            hit(5);
        }
    });
    for (slot, idx) in [(0usize, 0usize), (1, 1), (2, 2), (3, 3), (4, 8)] {
        if let Some(h) = hits[slot] {
            push_once(RULES, idx, &mut seen, paranoia, t, View::Canonical, h, out);
        }
    }
    if let Some(h) = hits[5] {
        // A public IP host serving a script or text file: rule 1509.
        if canon.contains(".txt") || canon.contains(".php") || canon.contains(".sh") {
            push_once(RULES, 9, &mut seen, paranoia, t, View::Canonical, h, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &str, pl: u8) -> Vec<u32> {
        crate::detect::testing::ids(inspect, v, pl)
    }

    fn score(v: &str) -> u32 {
        crate::detect::testing::score(inspect, v)
    }

    #[test]
    fn patterns_compile() {
        assert_eq!(CANON.failed, 0);
        assert_eq!(RAW.failed, 0);
        assert!(LITS.built());
    }

    #[test]
    fn rule_ids_are_in_block_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!((1500..1600).contains(&r.id));
            assert!(seen.insert(r.id));
        }
    }

    #[test]
    fn lenient_ipv4() {
        let p = |s| parse_ipv4_lenient(s).map(|(a, c)| (a.to_string(), c));
        assert_eq!(p("169.254.169.254"), Some(("169.254.169.254".into(), true)));
        assert_eq!(p("2852039166"), Some(("169.254.169.254".into(), false)));
        assert_eq!(p("0xa9fea9fe"), Some(("169.254.169.254".into(), false)));
        assert_eq!(
            p("0251.0376.0251.0376"),
            Some(("169.254.169.254".into(), false))
        );
        assert_eq!(
            p("0xa9.0xfe.0xa9.0xfe"),
            Some(("169.254.169.254".into(), false))
        );
        assert_eq!(p("169.254.43518"), Some(("169.254.169.254".into(), false)));
        assert_eq!(p("127.1"), Some(("127.0.0.1".into(), false)));
        assert_eq!(p("0"), Some(("0.0.0.0".into(), false)));
        assert_eq!(p("256.1.1.1"), None);
        assert_eq!(p("1.2.3.4.5"), None);
    }

    #[test]
    fn metadata_in_all_encodings() {
        for v in [
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://0251.0376.0251.0376/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://100.100.100.200/latest/meta-data/",
            "http://good.example@169.254.169.254/",
            "http://169.254.169.254:80#@good.example/",
            "http%3A%2F%2F169.254.169.254%2Flatest%2F",
            "http://\u{2460}\u{2465}\u{2468}.\u{2461}\u{2464}\u{2463}.\u{2460}\u{2465}\u{2468}.\u{2461}\u{2464}\u{2463}/",
            "HTTP://169.254.169.254/",
        ] {
            assert!(ids(v, 1).contains(&1500), "{v} -> {:?}", ids(v, 1));
            assert!(score(v) >= 5);
        }
    }

    #[test]
    fn loopback_and_private() {
        for v in [
            "http://127.0.0.1/admin",
            "http://localhost:8080/",
            "http://[::1]/",
            "http://0.0.0.0/",
        ] {
            assert!(ids(v, 1).contains(&1502), "{v} -> {:?}", ids(v, 1));
        }
        for v in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://017700000001/",
            "http://0/",
        ] {
            assert!(score(v) >= 5, "{v} -> {:?}", ids(v, 1));
        }
        assert!(ids("http://10.0.0.5/", 2).contains(&1503));
        assert!(ids("http://192.168.1.1/", 1).is_empty());
        assert!(ids("http://127.0.0.1.nip.io/", 2).contains(&1508));
    }

    #[test]
    fn schemes_and_rfi() {
        for v in [
            "gopher://127.0.0.1:6379/_FLUSHALL",
            "dict://localhost:11211/stat",
            "file:///etc/passwd",
            "jar:http://evil.example/x.jar!/",
            "http://evil.example/shell.txt?",
            "http://evil.example/shell.txt%00",
        ] {
            assert!(score(v) >= 5, "{v} -> {:?}", ids(v, 1));
        }
    }

    /// A file URL where a URL is read (the value, an attribute, a setting, a call argument, a
    /// quoted JSON value) is rule 1504; inside text (prose, a comment, a code span) rule
    /// 1510, at paranoia 2.
    #[test]
    fn file_urls_where_they_are_read() {
        for v in [
            "file:///srv/app/config",
            "  file:///srv/app/config",
            "'file:///srv/app/config'",
            "\"file:///c:/app/config\"",
            "[file:///srv/app/config]",
            "url=file:///srv/app/config",
            "<iframe src=\"file:///srv/app/config\">",
            "background: url(file:///srv/app/config)",
            "fetch('file:///srv/app/config')",
            "{\"url\": \"file:///srv/app/config\"}",
            "url: 'file://c:/app/config'",
            "FILE:///srv/app/config",
            "file:\\\\server\\share",
            // Lines, lists, unquoted YAML, an import.
            "source:\n  url: file:///etc/passwd",
            "urls=https://a.example,file:///etc/passwd",
            "- file:///etc/passwd",
            "@import \"file:///etc/passwd\";",
        ] {
            assert!(ids(v, 1).contains(&1504), "{v} -> {:?}", ids(v, 1));
            assert!(score(v) >= 5, "{v} -> {:?}", ids(v, 1));
        }
        for v in [
            "The policy at `file:///C:/app/policy.json` applies.",
            "// file:///srv/app/index.mjs",
            "Paths such as file:///tmp/x are URLs too.",
            "4. `\"file:///\"`",
        ] {
            assert!(score(v) < 5, "{v} -> {:?}", ids(v, 1));
            assert!(ids(v, 2).contains(&1510), "{v} -> {:?}", ids(v, 2));
            assert!(!ids(v, 2).contains(&1504), "{v} -> {:?}", ids(v, 2));
        }
    }

    #[test]
    fn benign() {
        for v in [
            "https://example.com/a?b=c",
            "https://www.google.com/search?q=rust",
            "http://192.0.2.10/",
            "time 10:30",
            "mailto:bob@example.com",
            "data:image/png;base64,AAAA",
            "http://example.com/page?",
            "note: file: report.pdf",
        ] {
            assert!(score(v) < 5, "{v} -> {:?}", ids(v, 1));
        }
    }
}
