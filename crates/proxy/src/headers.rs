//! Headers between client and upstream: hop-by-hop removal, forwarding headers built only from
//! trusted-proxy rules, and W3C trace context.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use portcullis_core::{RequestCtx, Scheme, has_header, remove_header, write_hex_lower};

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
/// Positions in [`HOP_BY_HOP`] of the fields [`strip_hop_by_hop`] reads before removing them.
pub(crate) const HOP_CONNECTION: usize = 0;
pub(crate) const HOP_TE: usize = 3;
pub(crate) const HOP_TRANSFER_ENCODING: usize = 5;
pub(crate) const HOP_UPGRADE: usize = 6;

/// The field names of a connection's last message, by position. A peer sends the same names
/// in the same order message after message (a target its answers, a client its requests): a
/// name is then known by comparing its bytes with the one at its place last time, instead of
/// being parsed again.
#[derive(Default)]
pub(crate) struct NameCache(Vec<(Box<[u8]>, HeaderName)>);

impl NameCache {
    /// Positions remembered.
    const SLOTS: usize = 32;

    /// The name of field `i`, whose bytes are `raw`; `None` when they are not a field name.
    pub(crate) fn name(&mut self, i: usize, raw: &[u8]) -> Option<HeaderName> {
        if let Some((seen, name)) = self.0.get(i)
            && **seen == *raw
        {
            return Some(name.clone());
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        if i < Self::SLOTS {
            let slot = (Box::from(raw), name.clone());
            if let Some(s) = self.0.get_mut(i) {
                *s = slot;
            } else if i == self.0.len() {
                self.0.push(slot);
            }
        }
        Some(name)
    }
}

/// `n` in decimal, written into `buf`.
pub(crate) fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// True for an HTTP/1.1 WebSocket upgrade request.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    // Asked of every request; almost none carries `Upgrade`, found without hashing.
    if !has_header(headers, &header::UPGRADE) {
        return false;
    }
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| lists(v, "upgrade"));
    upgrade && connection
}

/// Whether a list-valued field's value names `token` (ASCII case ignored).
pub(crate) fn lists(value: &HeaderValue, token: &str) -> bool {
    raw_lists(value.as_bytes(), token)
}

/// [`lists`] on a value's bytes.
pub(crate) fn raw_lists(raw: &[u8], token: &str) -> bool {
    raw.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The position of `name` in [`HOP_BY_HOP`]: one match on the name's text (mostly its length
/// decides), cheaper than comparing it with the nine names in turn.
pub(crate) fn hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => 5,
        "upgrade" => 6,
        "proxy-authenticate" => 7,
        "proxy-authorization" => 8,
        _ => return None,
    })
}

/// Removes hop-by-hop fields, including those the `Connection` header names, and a
/// `Content-Length` beside a `Transfer-Encoding`. `te: trailers` survives (gRPC needs it end
/// to end); with `keep_upgrade` the WebSocket handshake fields are put back.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names says which hop-by-hop fields are there (bit i: `HOP_BY_HOP[i]`).
    // Most requests carry none: nothing to do, and no name is hashed. Otherwise only names
    // present are removed, in the order a remove of every name would take (the order decides
    // where the remaining fields end up), so the result is the same.
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = hop_index(k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let has = |i: usize| present & (1 << i) != 0;
    // The names `Connection` lists that are present. A listed token is a
    // field's name when it equals it ignoring ASCII case (what parsing it as a name and
    // comparing would find: names are lowercase token characters).
    let mut named: Vec<HeaderName> = Vec::new();
    if has(HOP_CONNECTION) {
        // By bytes: a value with bytes outside ASCII still names the fields it lists.
        for v in headers.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|&b| b == b',') {
                let t = t.trim_ascii();
                if let Some(k) = headers
                    .keys()
                    .find(|k| k.as_str().as_bytes().eq_ignore_ascii_case(t))
                {
                    named.push(k.clone());
                }
            }
        }
    }
    // Repeated fields are one list (RFC 9110 §5.3): `trailers` in any of them counts.
    let te_trailers = has(HOP_TE)
        && headers
            .get_all(header::TE)
            .iter()
            .any(|v| lists(v, "trailers"));
    let upgrade = if keep_upgrade && has(HOP_UPGRADE) {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for n in named {
        headers.remove(n);
    }
    // A message with both framings was read by `Transfer-Encoding`: the `Content-Length` it
    // also carries is wrong and goes with it (RFC 9112 §6.3) — hyper's client leaves it in
    // the map, where it would frame the body on its way on.
    if has(HOP_TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if has(i) {
            headers.remove(n);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Longest address text [`ip_text`] writes: an IPv6 address is at most 45 bytes, quoted and
/// bracketed 49.
const IP_TEXT_MAX: usize = 52;

/// `ip` in dotted decimal, byte for byte what `Display` writes, without the formatting
/// machinery (this runs for every request). Returns the length written.
fn ipv4_text(ip: std::net::Ipv4Addr, buf: &mut [u8; 15]) -> usize {
    let mut n = 0;
    for (i, o) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if o >= 100 {
            buf[n] = b'0' + o / 100;
            n += 1;
        }
        if o >= 10 {
            buf[n] = b'0' + o / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + o % 10;
        n += 1;
    }
    n
}

/// The peer's address as text: as `Display` writes it, or for `Forwarded` (`node`) with an
/// IPv6 address quoted and bracketed (`"[::1]"`). IPv4, the common case, is written by hand.
fn ip_text(ip: IpAddr, node: bool, buf: &mut [u8; IP_TEXT_MAX]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => match buf.split_first_chunk_mut::<15>() {
            Some((b, _)) => {
                let n = ipv4_text(v4, b);
                &buf[..n]
            }
            None => &[],
        },
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut w = &mut buf[..];
            let _ = if node {
                write!(w, "\"[{v6}]\"")
            } else {
                write!(w, "{v6}")
            };
            let left = w.len();
            &buf[..IP_TEXT_MAX - left]
        }
    }
}

/// Whether `s` is a `token` (else it is sent as a quoted string).
fn is_forwarded_token(s: &str) -> bool {
    s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'^'
                    | b'`'
                    | b'|'
            )
    })
}

/// Appends `s` as a token, or as a quoted string with every `"` and backslash left out.
fn push_token_or_quoted(out: &mut Vec<u8>, s: &str, token: bool) {
    if token {
        out.extend_from_slice(s.as_bytes());
    } else {
        out.push(b'"');
        out.extend(s.bytes().filter(|b| !matches!(b, b'"' | b'\\')));
        out.push(b'"');
    }
}

/// Length of what [`push_token_or_quoted`] appends.
fn token_or_quoted_len(s: &str, token: bool) -> usize {
    if token {
        s.len()
    } else {
        2 + s.bytes().filter(|b| !matches!(b, b'"' | b'\\')).count()
    }
}

/// Where the gateway's own request fields (forwarding, trace context, request id) go: set
/// into the request's map, or written as HTTP/1.1 field lines (`name: value` CRLF) for the
/// upstream client to send after the map's fields (the direct HTTP/1.1 client copies them into
/// the request head as they are; hyper's client gets them appended to the map: [`wire_fields`]).
/// Writing a field removes any field of that name from the map, so both give the target the
/// same fields.
pub enum FieldSink<'a> {
    Map,
    Wire(&'a mut Vec<u8>),
}

impl FieldSink<'_> {
    /// Sets `name` to `value` (replacing the map's).
    pub fn set(&mut self, headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
        match self {
            FieldSink::Map => {
                headers.insert(name, value);
            }
            FieldSink::Wire(out) => {
                remove_header(headers, &name);
                push_line(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
    }

    /// Sets `name` to a value the gateway made (`value`'s bytes) that holds text from the
    /// request (a `Host`, a trusted proxy's chain, already validated as field values), or
    /// removes the field when the bytes are not a valid field value. Written as a line, the
    /// value is only searched for the bytes that would end or cut the line ([`cuts_line`]);
    /// into the map it goes through `HeaderValue`'s check. The tests compare both sinks on
    /// every forwarding combination, so a value the map would refuse shows there.
    fn set_made(&mut self, headers: &mut HeaderMap, name: HeaderName, value: &[u8]) {
        self.set_bytes(headers, name, value, false);
    }

    /// [`FieldSink::set_made`] for a value made only of the gateway's own bytes (an address
    /// written by [`ip_text`], hex digits and dashes): as a line it is not searched.
    fn set_own(&mut self, headers: &mut HeaderMap, name: HeaderName, value: &[u8]) {
        self.set_bytes(headers, name, value, true);
    }

    fn set_bytes(&mut self, headers: &mut HeaderMap, name: HeaderName, value: &[u8], own: bool) {
        match self {
            FieldSink::Map => match HeaderValue::from_bytes(value) {
                Ok(v) => {
                    headers.insert(name, v);
                }
                Err(_) => {
                    headers.remove(name);
                }
            },
            FieldSink::Wire(out) => {
                debug_assert!(!own || HeaderValue::from_bytes(value).is_ok(), "{value:?}");
                remove_header(headers, &name);
                if own || !cuts_line(value) {
                    push_line(out, name.as_str().as_bytes(), value);
                }
            }
        }
    }
}

/// Whether `value` holds a byte that would end or cut a field line (CR, LF, NUL).
fn cuts_line(value: &[u8]) -> bool {
    memchr::memchr3(b'\r', b'\n', 0, value).is_some()
}

/// `name: value` CRLF.
/// Appends a field read from a head to its map. One function for both head readers (the
/// front's and the direct client's): called from each, the map's generic insertion code was
/// compiled into each one's codegen unit — two copies of the same hot code on every request.
#[inline(never)]
pub(crate) fn append_field(map: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    map.append(name, value);
}

pub(crate) fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The fields of lines a [`FieldSink::Wire`] wrote, for a client that takes a map.
pub fn wire_fields(wire: &[u8]) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
    wire.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r")?;
        let colon = line.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(line.get(colon + 2..)?).ok()?;
        Some((name, value))
    })
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

/// Whether a field called `name` (lowercase, `_` read as `-`) is one upstreams read as what a
/// proxy in front of them vouches for, besides the fields the gateway sets: the client's
/// address (`X-Real-IP`, `True-Client-IP`, `X-Client-IP`, `Client-IP`, `X-Cluster-Client-IP`,
/// `Fastly-Client-IP`, `CF-Connecting-IP`, `X-Envoy-External-Address`), port, scheme or path
/// prefix (`X-Forwarded-Port`, `-Prefix`, `-Ssl`, `-Scheme`, `X-Url-Scheme`), or its verified
/// client certificate (`X-Forwarded-Client-Cert`, `X-Client-Cert`, `SSL-Client-Cert`,
/// `X-SSL-Client-Cert`, `X-Client-Verify`, `SSL-Client-Verify`, `X-SSL-Client-Verify`,
/// `X-SSL-Client-S-DN`, `X-Client-DN`). By length first: most names go no further.
fn address_claim(name: &[u8]) -> bool {
    let candidates: &[&[u8]] = match name.len() {
        9 => &[b"x-real-ip", b"client-ip"],
        11 => &[b"x-client-ip", b"x-client-dn"],
        12 => &[b"x-url-scheme"],
        13 => &[b"x-client-cert"],
        14 => &[b"true-client-ip"],
        15 => &[b"x-forwarded-ssl", b"ssl-client-cert", b"x-client-verify"],
        16 => &[
            b"fastly-client-ip",
            b"cf-connecting-ip",
            b"x-forwarded-port",
        ],
        17 => &[
            b"x-ssl-client-cert",
            b"ssl-client-verify",
            b"x-ssl-client-s-dn",
        ],
        18 => &[b"x-forwarded-prefix", b"x-forwarded-scheme"],
        19 => &[b"x-cluster-client-ip", b"x-ssl-client-verify"],
        23 => &[b"x-forwarded-client-cert"],
        24 => &[b"x-envoy-external-address"],
        _ => return false,
    };
    candidates
        .iter()
        .any(|c| portcullis_core::same_name_folded(name, c))
}

/// Whether a field called `name` is another spelling (`_` for `-`) of a forwarding field the
/// gateway sets, or of its request-id field.
fn forwarding_alias(name: &[u8], request_id: &HeaderName) -> bool {
    name.contains(&b'_')
        && [
            X_FORWARDED_FOR.as_str(),
            X_FORWARDED_PROTO.as_str(),
            X_FORWARDED_HOST.as_str(),
            request_id.as_str(),
        ]
        .iter()
        .any(|f| portcullis_core::same_name_folded(name, f.as_bytes()))
}

/// Removes what a client could pass off as the gateway's forwarding fields: another spelling of
/// those it sets (`x_forwarded_for`, `x_request_id` — CGI, WSGI, Rack and PHP read `_` as `-`,
/// and some let the copy win over the gateway's field), and, from a peer that is not a trusted
/// proxy, the other fields upstreams read as the client's address, port, scheme or prefix
/// (`X-Real-IP`, `X-Forwarded-Port` … in any spelling, see `address_claim`). A trusted
/// proxy's own such fields are kept. One pass over the names; nothing is hashed or allocated
/// when there is nothing to remove.
pub fn strip_forwarding_claims(
    headers: &mut HeaderMap,
    peer_trusted: bool,
    request_id: &HeaderName,
) {
    let claimed = |k: &HeaderName| {
        let n = k.as_str().as_bytes();
        forwarding_alias(n, request_id) || (!peer_trusted && address_claim(n))
    };
    if !headers.keys().any(claimed) {
        return;
    }
    let doomed: Vec<HeaderName> = headers.keys().filter(|k| claimed(k)).cloned().collect();
    for n in doomed {
        headers.remove(n);
    }
}

/// Builds `X-Forwarded-*` and `Forwarded`. From an untrusted peer, whatever it sent is
/// replaced; from a trusted proxy, its chain is extended. Disabled headers are removed, so a
/// client can never smuggle its own copy to the upstream.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    ctx: &RequestCtx,
    f: &Forwarding<'_>,
    sink: &mut FieldSink<'_>,
) {
    let peer = ctx.peer.ip();
    let proto = ctx.scheme.as_str();
    // Only a Host made of visible ASCII is repeated (it always is, past the hygiene step).
    let host = f.host.and_then(|h| h.to_str().ok().map(|s| (h, s)));
    // A previous chain counts only from a trusted proxy: from anyone else it is not read.
    let prev = |headers: &HeaderMap, name: &HeaderName| {
        if f.peer_trusted {
            joined(headers, name)
        } else {
            None
        }
    };
    // The address's text, written once (and only when some field carries it): for
    // `Forwarded`'s node too when it is IPv4 (only an IPv6 node is quoted and bracketed).
    let mut buf = [0u8; IP_TEXT_MAX];
    let ip: &[u8] = if f.x_forwarded || f.forwarded {
        ip_text(peer, false, &mut buf)
    } else {
        &[]
    };
    if f.x_forwarded {
        match prev(headers, &X_FORWARDED_FOR) {
            Some(prev) => {
                let mut v = Vec::with_capacity(prev.len() + 2 + ip.len());
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
                v.extend_from_slice(ip);
                put(headers, sink, X_FORWARDED_FOR, v);
            }
            // The common case: the value is copied once, from the stack.
            None => sink.set_own(headers, X_FORWARDED_FOR, ip),
        }
        if !(f.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            sink.set(
                headers,
                X_FORWARDED_PROTO,
                HeaderValue::from_static(scheme_str(ctx.scheme)),
            );
        }
        if !(f.peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            match host {
                Some((h, _)) => sink.set(headers, X_FORWARDED_HOST, h.clone()),
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
        // `for=…;proto=…[;host=…]`, after the previous chain and ", " when extended: sized
        // first, so the value is built in one allocation that becomes the header's bytes.
        let mut node_buf = [0u8; IP_TEXT_MAX];
        let node = match peer {
            IpAddr::V4(_) => ip,
            IpAddr::V6(_) => ip_text(peer, true, &mut node_buf),
        };
        let host = host.map(|(_, s)| (s, is_forwarded_token(s)));
        let prev = prev(headers, &header::FORWARDED);
        let len = prev.as_ref().map_or(0, |p| p.len() + 2)
            + "for=".len()
            + node.len()
            + ";proto=".len()
            + proto.len()
            + host.map_or(0, |(s, t)| ";host=".len() + token_or_quoted_len(s, t));
        let mut v = Vec::with_capacity(len);
        if let Some(p) = &prev {
            v.extend_from_slice(p.as_bytes());
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(b"for=");
        v.extend_from_slice(node);
        v.extend_from_slice(b";proto=");
        v.extend_from_slice(proto.as_bytes());
        if let Some((s, token)) = host {
            v.extend_from_slice(b";host=");
            push_token_or_quoted(&mut v, s, token);
        }
        put(headers, sink, header::FORWARDED, v);
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

/// Sets `name` to `value` (its bytes become the header's, no copy), or removes it when the
/// value is not a valid header value.
fn put(headers: &mut HeaderMap, sink: &mut FieldSink<'_>, name: HeaderName, value: Vec<u8>) {
    if let FieldSink::Wire(_) = sink {
        return sink.set_made(headers, name, &value);
    }
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        Ok(v) => sink.set(headers, name, v),
        Err(_) => {
            headers.remove(name);
        }
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The trace id and flags of a well-formed `traceparent` value (surrounding spaces allowed;
/// fields after the flags only in a version above `00`).
fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let mut it = v.trim().split('-');
    let (ver, trace, parent, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
    let ok = is_hex(ver, 2)
        && ver != "ff"
        && is_hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && is_hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && is_hex(flags, 2)
        && (ver != "00" || it.next().is_none());
    ok.then_some((trace, flags))
}

/// `server.trace_context: pass`: the caller's `traceparent` goes on as sent when it is one
/// well-formed field of exactly the four parts (what the WAF, which skips the field, may take
/// on trust), and is removed otherwise; none is started. `tracestate` is left as sent (the WAF
/// inspects it).
pub fn pass_traceparent(headers: &mut HeaderMap) {
    if !has_header(headers, &TRACEPARENT) {
        return;
    }
    let mut all = headers.get_all(&TRACEPARENT).iter();
    let ok = match (all.next(), all.next()) {
        (Some(v), None) => v.len() == 55 && v.to_str().ok().and_then(parse_traceparent).is_some(),
        _ => false,
    };
    if !ok {
        remove_header(headers, &TRACEPARENT);
    }
}

/// Continues the caller's W3C trace (same trace id, the gateway as a new parent span) or starts
/// one. A malformed `traceparent` is replaced, never passed on.
pub fn propagate_traceparent(headers: &mut HeaderMap, sink: &mut FieldSink<'_>) {
    // Most requests start a trace: the name is looked for before it is hashed.
    let incoming = has_header(headers, &TRACEPARENT)
        .then(|| headers.get(&TRACEPARENT))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
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
            // Vendors' state goes on with the trace only when it is what W3C Trace Context
            // allows: anything else (a payload for whoever logs or parses it) is dropped.
            if has_header(headers, &TRACESTATE)
                && !valid_tracestate(headers.get_all(&TRACESTATE).iter().map(|v| v.as_bytes()))
            {
                remove_header(headers, &TRACESTATE);
            }
        }
        None => {
            remove_header(headers, &TRACESTATE);
            let trace = loop {
                let t = fastrand::u128(..);
                if t != 0 {
                    break t;
                }
            };
            write_hex_lower(trace, &mut value[3..35]);
        }
    }
    write_hex_lower(u128::from(span), &mut value[36..52]);
    sink.set_own(headers, TRACEPARENT, &value);
}

/// Makes an answer's `Cache-Control` say `private` (no shared cache may keep it), keeping the
/// upstream's other directives — `no-store`, `no-cache`, `max-age` … — and dropping those
/// that speak to shared caches (`public`, `s-maxage`, `proxy-revalidate`).
pub fn make_private(headers: &mut HeaderMap) {
    let mut value = String::from("private");
    for v in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let name = d.split('=').next().unwrap_or(d).trim();
            let shared = ["public", "private", "s-maxage", "proxy-revalidate"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n));
            if !shared {
                value.push_str(", ");
                value.push_str(d);
            }
        }
    }
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            headers.insert(http::header::CACHE_CONTROL, v);
        }
        Err(_) => {
            headers.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
        }
    }
}

/// Whether `tracestate` field values (several fields are one list) are a W3C Trace Context
/// list: at most 32 members and 512 bytes, each `key=value` with a key of lower-case letters,
/// digits and `_-*/` (or `tenant@system`), a value of 1–256 printable characters other than `,`
/// and `=` not ending in a space, no key twice.
pub fn valid_tracestate<'a>(values: impl Iterator<Item = &'a [u8]>) -> bool {
    const MAX_MEMBERS: usize = 32;
    const MAX_BYTES: usize = 512;
    let key_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(&b);
    let valid_key = |k: &[u8]| match k.iter().position(|&b| b == b'@') {
        None => {
            k.len() <= 256
                && k.first().is_some_and(u8::is_ascii_lowercase)
                && k.iter().all(|&b| key_char(b))
        }
        Some(at) => {
            let (tenant, system) = (&k[..at], &k[at + 1..]);
            (1..=241).contains(&tenant.len())
                && tenant
                    .first()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && tenant.iter().all(|&b| key_char(b))
                && (1..=14).contains(&system.len())
                && system.first().is_some_and(u8::is_ascii_lowercase)
                && system.iter().all(|&b| key_char(b))
        }
    };
    let valid_value = |v: &[u8]| {
        (1..=256).contains(&v.len())
            && v.iter()
                .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
            && v.last() != Some(&b' ')
    };
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut bytes = 0usize;
    for value in values {
        bytes = bytes.saturating_add(value.len());
        if bytes > MAX_BYTES {
            return false;
        }
        for member in value.split(|&b| b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            let Some(eq) = member.iter().position(|&b| b == b'=') else {
                return false;
            };
            let (key, val) = (&member[..eq], &member[eq + 1..]);
            if !valid_key(key) || !valid_value(val) || keys.contains(&key) {
                return false;
            }
            if keys.len() == MAX_MEMBERS {
                return false;
            }
            keys.push(key);
        }
    }
    true
}

/// Rewrites an absolute `Location` or `Content-Location` that names the target the answer came
/// from (`http://10.0.0.5:8081/x`, as an upstream reached by its own address writes it) to the
/// client's scheme and `Host`: the client gets a link it can follow, and the internal address
/// stays inside. Other values are left as they are.
pub fn rewrite_target_links(headers: &mut HeaderMap, target: &str, scheme: &str, host: &str) {
    for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        // The target is written with its port; a link may leave out the scheme's default one
        // (`http://orders/login` for `orders:80`), as most frameworks do.
        let rest =
            [("http://", ":80"), ("https://", ":443")]
                .iter()
                .find_map(|(p, default_port)| {
                    let after = value
                        .get(..p.len())?
                        .eq_ignore_ascii_case(p)
                        .then(|| value.get(p.len()..))??;
                    let bare = target.strip_suffix(default_port);
                    [Some(target), bare].into_iter().flatten().find_map(|t| {
                        let tail = after
                            .get(..t.len())?
                            .eq_ignore_ascii_case(t)
                            .then(|| after.get(t.len()..))??;
                        (tail.is_empty() || tail.starts_with(['/', '?', '#'])).then_some(tail)
                    })
                });
        let Some(rest) = rest else { continue };
        if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{rest}")) {
            headers.insert(name, v);
        }
    }
}

/// An answer's body whose trailers lose the fields the route's security headers remove from
/// heads (`Server`, `X-Powered-By`, configured removals, and those it sets itself).
pub struct TrailersStripped {
    body: portcullis_core::BoxBody,
    policy: std::sync::Arc<portcullis_response::SecurityHeaders>,
    tls: bool,
}

impl TrailersStripped {
    pub fn new(
        body: portcullis_core::BoxBody,
        policy: std::sync::Arc<portcullis_response::SecurityHeaders>,
        tls: bool,
    ) -> Self {
        TrailersStripped { body, policy, tls }
    }
}

impl http_body::Body for TrailersStripped {
    type Data = bytes::Bytes;
    type Error = portcullis_core::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let mut r = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &mut r
            && let Some(trailers) = frame.trailers_mut()
        {
            this.policy.strip(trailers, this.tls);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn links_to_the_target_are_rewritten_and_no_others() {
        let run = |loc: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::LOCATION, HeaderValue::from_str(loc).unwrap());
            rewrite_target_links(&mut h, "10.0.0.5:8081", "https", "api.example.com");
            h[http::header::LOCATION].to_str().unwrap().to_string()
        };
        assert_eq!(
            run("http://10.0.0.5:8081/a?b#c"),
            "https://api.example.com/a?b#c"
        );
        assert_eq!(run("HTTPS://10.0.0.5:8081"), "https://api.example.com");
        assert_eq!(run("http://10.0.0.5:8081?q"), "https://api.example.com?q");
        for other in [
            "http://10.0.0.5:80810/a",
            "http://10.0.0.5:8081.evil.example/a",
            "http://10.0.0.5/a",
            "/relative",
            "https://elsewhere.example/10.0.0.5:8081",
        ] {
            assert_eq!(run(other), other);
        }
    }

    /// A link that leaves out its scheme's default port names the target all the same (and
    /// one of the other scheme's default port does not).
    #[test]
    fn links_without_the_default_port_are_rewritten() {
        let run = |target: &str, loc: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::LOCATION, HeaderValue::from_str(loc).unwrap());
            rewrite_target_links(&mut h, target, "https", "api.example.com");
            h[http::header::LOCATION].to_str().unwrap().to_string()
        };
        assert_eq!(
            run("orders:80", "http://orders/login"),
            "https://api.example.com/login"
        );
        assert_eq!(
            run("orders:80", "http://orders:80/login"),
            "https://api.example.com/login"
        );
        assert_eq!(
            run("orders:443", "https://ORDERS?x"),
            "https://api.example.com?x"
        );
        assert_eq!(
            run("[fd00::5]:80", "http://[fd00::5]/a"),
            "https://api.example.com/a"
        );
        for (target, other) in [
            ("orders:443", "http://orders/login"),
            ("orders:80", "https://orders/login"),
            ("orders:8080", "http://orders/login"),
            ("orders:80", "http://orders.evil.example/login"),
            ("orders:80", "http://ordersx/login"),
        ] {
            assert_eq!(run(target, other), other, "{target}");
        }
    }

    use super::*;
    use std::sync::Arc;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    /// Every field in order, as sent.
    /// Each name with its values in order; names sorted.
    fn by_name(m: &HeaderMap) -> Vec<(String, Vec<Vec<u8>>)> {
        let mut out: Vec<(String, Vec<Vec<u8>>)> = m
            .keys()
            .map(|k| {
                let vals = m.get_all(k).iter().map(|v| v.as_bytes().to_vec()).collect();
                (k.to_string(), vals)
            })
            .collect();
        out.sort();
        out
    }

    fn listed(m: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        m.iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
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
    fn trailers_in_any_te_field_survive() {
        // Two `TE` fields are one list: `trailers` in the second counts.
        let mut m = h(&[("te", "gzip"), ("te", "trailers"), ("x", "1")]);
        strip_hop_by_hop(&mut m, false);
        assert_eq!(m.get_all("te").iter().collect::<Vec<_>>(), ["trailers"]);
        let mut m = h(&[("te", "gzip"), ("te", "deflate")]);
        strip_hop_by_hop(&mut m, false);
        assert!(!m.contains_key("te"));
    }

    #[test]
    fn websocket_handshake_survives_when_asked() {
        let mut m = h(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_websocket_upgrade(&m));
        strip_hop_by_hop(&mut m, true);
        assert_eq!(m["upgrade"], "websocket");
        assert_eq!(m["connection"], "upgrade");
    }

    #[test]
    fn hop_by_hop_fast_path_leaves_a_clean_message_alone() {
        let pairs = [
            ("host", "a"),
            ("user-agent", "x"),
            ("accept", "*/*"),
            ("x-te", "1"),
        ];
        for keep in [false, true] {
            let mut m = h(&pairs);
            strip_hop_by_hop(&mut m, keep);
            assert_eq!(m, h(&pairs));
        }
        let mut m = HeaderMap::new();
        strip_hop_by_hop(&mut m, true);
        assert!(m.is_empty());
    }

    #[test]
    fn a_length_beside_a_transfer_coding_goes_with_it() {
        let mut m = h(&[
            ("content-length", "3"),
            ("transfer-encoding", "chunked"),
            ("x-a", "1"),
        ]);
        strip_hop_by_hop(&mut m, false);
        assert_eq!(m, h(&[("x-a", "1")]));
        // A length alone stays.
        let mut m = h(&[("content-length", "3"), ("x-a", "1")]);
        strip_hop_by_hop(&mut m, false);
        assert_eq!(m, h(&[("content-length", "3"), ("x-a", "1")]));
    }

    /// What `strip_hop_by_hop` did before it looked for the names first: every name removed,
    /// present or not.
    fn strip_reference(headers: &mut HeaderMap, keep_upgrade: bool) {
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
        let te_trailers = headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        let upgrade = if keep_upgrade {
            headers.get(header::UPGRADE).cloned()
        } else {
            None
        };
        let both_framings = headers.contains_key(header::TRANSFER_ENCODING);
        for n in named {
            headers.remove(n);
        }
        if both_framings {
            headers.remove(header::CONTENT_LENGTH);
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

    #[test]
    fn hop_by_hop_slow_path_matches_removing_every_name() {
        let cases: &[&[(&'static str, &str)]] = &[
            &[("host", "a"), ("connection", "keep-alive"), ("x-a", "1")],
            &[
                ("connection", "close"),
                ("server", "s"),
                ("date", "d"),
                ("content-length", "0"),
            ],
            &[
                ("a", "1"),
                ("b", "2"),
                ("te", "trailers"),
                ("c", "3"),
                ("d", "4"),
            ],
            &[("te", "deflate"), ("x", "1")],
            &[
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("x", "1"),
                ("y", "2"),
            ],
            &[("upgrade", "h2c"), ("host", "a")],
            &[
                ("x-secret", "1"),
                ("connection", "X-Secret, , bogus name, keep-alive"),
                ("connection", "X-OTHER"),
                ("x-other", "2"),
                ("keep-alive", "5"),
                ("z", "3"),
                ("x-secret", "again"),
                ("proxy-connection", "keep-alive"),
                ("trailer", "x"),
                ("y", "4"),
            ],
            &[
                ("connection", "connection, te"),
                ("te", "trailers"),
                ("q", "1"),
            ],
            &[
                ("proxy-authorization", "Basic x"),
                ("p", "1"),
                ("proxy-authenticate", "x"),
            ],
            &[("transfer-encoding", "chunked"), ("a", "1"), ("b", "2")],
        ];
        for pairs in cases {
            for keep in [false, true] {
                let mut ours = h(pairs);
                let mut theirs = h(pairs);
                strip_hop_by_hop(&mut ours, keep);
                strip_reference(&mut theirs, keep);
                assert_eq!(listed(&ours), listed(&theirs), "{pairs:?} keep={keep}");
            }
        }
    }

    #[test]
    fn hop_by_hop_positions_are_the_named_fields() {
        assert_eq!(HOP_BY_HOP[HOP_CONNECTION], header::CONNECTION);
        assert_eq!(HOP_BY_HOP[HOP_TE], header::TE);
        assert_eq!(HOP_BY_HOP[HOP_TRANSFER_ENCODING], header::TRANSFER_ENCODING);
        assert_eq!(HOP_BY_HOP[HOP_UPGRADE], header::UPGRADE);
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(n), Some(i), "{n}");
        }
        for n in [
            "host",
            "user-agent",
            "tes",
            "t",
            "upgrade-insecure-requests",
            "x-connection",
        ] {
            assert_eq!(hop_index(&HeaderName::from_static(n)), None, "{n}");
        }
    }

    #[test]
    fn ipv4_text_is_display() {
        let mut edge = vec![
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [10, 0, 0, 1],
            [9, 10, 99, 100],
            [100, 199, 200, 250],
            [1, 2, 3, 4],
            [127, 0, 0, 1],
            [192, 168, 10, 109],
        ];
        for _ in 0..2000 {
            edge.push(fastrand::u32(..).to_be_bytes());
        }
        for o in edge {
            let ip = std::net::Ipv4Addr::from(o);
            let mut buf = [0u8; 15];
            let n = ipv4_text(ip, &mut buf);
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), ip.to_string());
            let mut buf = [0u8; IP_TEXT_MAX];
            for node in [false, true] {
                let text = ip_text(IpAddr::V4(ip), node, &mut buf);
                assert_eq!(std::str::from_utf8(text).unwrap(), ip.to_string());
            }
        }
    }

    #[test]
    fn ipv6_text_is_display_and_quoted_as_a_node() {
        for s in [
            "::",
            "::1",
            "2001:db8::1",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe80::1:2:3:4",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            let mut buf = [0u8; IP_TEXT_MAX];
            assert_eq!(ip_text(ip, false, &mut buf), ip.to_string().as_bytes());
            assert_eq!(
                ip_text(ip, true, &mut buf),
                format!("\"[{ip}]\"").as_bytes()
            );
        }
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
        set_forwarding(&mut m, &ctx("192.0.2.1:5"), &f, &mut FieldSink::Map);
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
        set_forwarding(&mut m, &ctx("[::1]:5"), &f, &mut FieldSink::Map);
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
        set_forwarding(&mut m, &ctx("[::1]:5"), &f, &mut FieldSink::Map);
        assert_eq!(m["forwarded"], "for=\"[::1]\";proto=https;host=\"a b\"");
        assert!(m.get("x-forwarded-for").is_none());
    }

    /// What `set_forwarding` wrote before it was written without `format!`.
    /// Other spellings of the gateway's forwarding and request-id fields go whoever sent them;
    /// the other address fields go from an untrusted peer only; everything else stays.
    #[test]
    fn forwarding_claims_are_removed() {
        let request_id = HeaderName::from_static("x-correlation-id");
        let sent = [
            ("x_forwarded_for", "6.6.6.6"),
            ("x-forwarded_proto", "https"),
            ("x_forwarded_host", "evil.example"),
            ("x_correlation_id", "forged"),
            ("x-real-ip", "6.6.6.6"),
            ("x_real_ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-scheme", "https"),
            ("x-url-scheme", "https"),
            (
                "x-forwarded-client-cert",
                "By=spiffe://x;URI=spiffe://prod/admin",
            ),
            ("x_ssl_client_verify", "SUCCESS"),
            ("x-envoy-external-address", "6.6.6.6"),
            ("accept-encoding", "gzip"),
            ("x-forwarded-for", "kept for set_forwarding"),
            ("content-type", "text/plain"),
            ("x_custom", "1"),
        ];
        let map = || {
            let mut h = HeaderMap::new();
            for (k, v) in sent {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_static(v),
                );
            }
            h
        };
        let names = |h: &HeaderMap| {
            let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_string()).collect();
            v.sort();
            v
        };
        let mut untrusted = map();
        strip_forwarding_claims(&mut untrusted, false, &request_id);
        assert_eq!(
            names(&untrusted),
            [
                "accept-encoding",
                "content-type",
                "x-forwarded-for",
                "x_custom"
            ]
        );
        let mut trusted = map();
        strip_forwarding_claims(&mut trusted, true, &request_id);
        assert_eq!(
            names(&trusted),
            [
                "accept-encoding",
                "cf-connecting-ip",
                "content-type",
                "true-client-ip",
                "x-envoy-external-address",
                "x-forwarded-client-cert",
                "x-forwarded-for",
                "x-forwarded-port",
                "x-forwarded-prefix",
                "x-forwarded-scheme",
                "x-real-ip",
                "x-url-scheme",
                "x_custom",
                "x_real_ip",
                "x_ssl_client_verify",
            ]
        );
    }

    fn forwarding_reference(headers: &mut HeaderMap, ctx: &RequestCtx, f: &Forwarding<'_>) {
        let put =
            |headers: &mut HeaderMap, name: HeaderName, value: &str| match HeaderValue::from_str(
                value,
            ) {
                Ok(v) => {
                    headers.insert(name, v);
                }
                Err(_) => {
                    headers.remove(name);
                }
            };
        let peer = ctx.peer.ip();
        let proto = ctx.scheme.as_str();
        let host = f.host.filter(|h| h.to_str().is_ok());
        if f.x_forwarded {
            match (f.peer_trusted, joined(headers, &X_FORWARDED_FOR)) {
                (true, Some(prev)) => put(headers, X_FORWARDED_FOR, &format!("{prev}, {peer}")),
                _ => put(headers, X_FORWARDED_FOR, &peer.to_string()),
            }
            if !(f.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
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
            let node = match peer {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("\"[{v6}]\""),
            };
            let mut elem = format!("for={node};proto={proto}");
            if let Some(h) = host.and_then(|h| h.to_str().ok()) {
                elem.push_str(";host=");
                if h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'*+^`|".contains(&b))
                {
                    elem.push_str(h);
                } else {
                    elem.push_str(&format!("\"{}\"", h.replace(['"', '\\'], "")));
                }
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

    #[test]
    fn forwarding_matches_the_formatted_reference() {
        let incoming: &[&[(&'static str, &str)]] = &[
            &[],
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("forwarded", "for=203.0.113.9"),
            ],
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "up"),
                ("forwarded", "for=1.1.1.1"),
                ("forwarded", "for=\"[::1]\""),
            ],
        ];
        let hosts = [
            None,
            Some(HeaderValue::from_static("api.example")),
            Some(HeaderValue::from_static("api.example:8443")),
            Some(HeaderValue::from_static("[::1]:80")),
            Some(HeaderValue::from_static("a \"b\\c")),
            Some(HeaderValue::from_static("~!$&'*+^`|-._AZaz09")),
            Some(HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()),
        ];
        let peers = [
            "0.0.0.0:1",
            "255.255.255.255:2",
            "10.0.0.1:3",
            "[::1]:4",
            "[2001:db8::7]:5",
            "[::ffff:192.0.2.1]:6",
        ];
        for pairs in incoming {
            for host in &hosts {
                for peer in peers {
                    for bits in 0..8u8 {
                        let f = Forwarding {
                            x_forwarded: bits & 1 != 0,
                            forwarded: bits & 2 != 0,
                            peer_trusted: bits & 4 != 0,
                            host: host.as_ref(),
                        };
                        let c = ctx(peer);
                        let mut ours = h(pairs);
                        let mut theirs = h(pairs);
                        let mut listed_too = h(pairs);
                        set_forwarding(&mut ours, &c, &f, &mut FieldSink::Map);
                        forwarding_reference(&mut theirs, &c, &f);
                        assert_eq!(
                            listed(&ours),
                            listed(&theirs),
                            "{pairs:?} {host:?} {peer} {bits}"
                        );
                        // Listed for the client to write after the map's fields: the same
                        // fields reach the target (a listed field comes last).
                        let mut wire = Vec::new();
                        set_forwarding(&mut listed_too, &c, &f, &mut FieldSink::Wire(&mut wire));
                        for (n, v) in wire_fields(&wire) {
                            listed_too.append(n, v);
                        }
                        assert_eq!(
                            by_name(&listed_too),
                            by_name(&ours),
                            "{pairs:?} {host:?} {peer} {bits}"
                        );
                    }
                }
            }
        }
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
        propagate_traceparent(&mut m, &mut FieldSink::Map);
        let v = m["traceparent"].to_str().unwrap().to_string();
        assert!(v.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!v.contains("00f067aa0ba902b7"));
        assert!(v.ends_with("-01"));
        assert_eq!(m["tracestate"], "k=v");

        for bad in [
            "junk",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // The parent id: 16 hex digits, not all zero.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-zz-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
        ] {
            let mut m = h(&[("traceparent", bad), ("tracestate", "k=v")]);
            propagate_traceparent(&mut m, &mut FieldSink::Map);
            let v = m["traceparent"].to_str().unwrap();
            let parts: Vec<&str> = v.split('-').collect();
            assert_eq!(parts.len(), 4, "{v}");
            assert!(is_hex(parts[1], 32) && is_hex(parts[2], 16), "{v}");
            assert!(m.get("tracestate").is_none());
        }
    }

    /// A caller's own view is `private`, and keeps what the upstream said besides, unless it
    /// speaks to shared caches.
    #[test]
    fn a_private_answer_keeps_the_upstreams_other_directives() {
        let private = |values: &[&str]| {
            let mut m = h(&values
                .iter()
                .map(|v| ("cache-control", *v))
                .collect::<Vec<_>>());
            make_private(&mut m);
            let all: Vec<_> = m.get_all("cache-control").iter().collect();
            assert_eq!(all.len(), 1);
            all[0].to_str().unwrap().to_string()
        };
        assert_eq!(private(&[]), "private");
        assert_eq!(private(&["no-store"]), "private, no-store");
        assert_eq!(
            private(&["public, max-age=60, s-maxage=600", "must-revalidate"]),
            "private, max-age=60, must-revalidate"
        );
        assert_eq!(private(&["PRIVATE, no-cache"]), "private, no-cache");
        assert_eq!(
            private(&["private=\"set-cookie\", proxy-revalidate"]),
            "private"
        );
    }

    /// A continued trace keeps its `tracestate` only when the list is one W3C Trace Context
    /// allows; a payload in it goes nowhere.
    #[test]
    fn tracestate_goes_on_only_when_valid() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let kept = |states: &[&str]| {
            let mut pairs = vec![("traceparent", parent)];
            pairs.extend(states.iter().map(|s| ("tracestate", *s)));
            let mut m = h(&pairs);
            propagate_traceparent(&mut m, &mut FieldSink::Map);
            m.get_all("tracestate").iter().count() == states.len()
        };
        for good in [
            &["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"][..],
            &["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"],
            &["t1@vendor=x", " a=b , c=d "],
            &["a=b,,c=d"],
            &["k=a b"],
        ] {
            assert!(kept(good), "{good:?}");
        }
        let long_value = format!("k={}", "v".repeat(257));
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        let large = (0..30)
            .map(|i| format!("k{i}={}", "v".repeat(20)))
            .collect::<Vec<_>>()
            .join(",");
        for bad in [
            "v=a=b",
            "K=v",
            "1k=v",
            "k=",
            "k",
            "k=v,k=w",
            "t@=v",
            "@s=v",
            long_value.as_str(),
            many.as_str(),
            large.as_str(),
        ] {
            assert!(!kept(&[bad]), "{bad:?}");
        }
    }

    #[test]
    fn a_passed_traceparent_goes_on_only_when_well_formed() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut m = h(&[("traceparent", good), ("tracestate", "not a list")]);
        pass_traceparent(&mut m);
        assert_eq!(m["traceparent"], good, "as sent: no new span");
        assert_eq!(m["tracestate"], "not a list", "left to the WAF");
        let mut m = h(&[]);
        pass_traceparent(&mut m);
        assert!(m.get("traceparent").is_none(), "none started");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-' or 1=1--",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "<script>",
        ] {
            let mut m = h(&[("traceparent", bad)]);
            pass_traceparent(&mut m);
            assert!(m.get("traceparent").is_none(), "{bad}");
        }
        let mut m = h(&[("traceparent", good), ("traceparent", good)]);
        pass_traceparent(&mut m);
        assert!(
            m.get("traceparent").is_none(),
            "two fields are not one parent"
        );
    }

    #[test]
    fn traceparent_written_as_a_line_replaces_the_maps() {
        let mut m = h(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-a", "1"),
        ]);
        let mut wire = b"x-forwarded-for: 192.0.2.1\r\n".to_vec();
        propagate_traceparent(&mut m, &mut FieldSink::Wire(&mut wire));
        assert!(m.get("traceparent").is_none());
        assert_eq!(m["x-a"], "1");
        let text = std::str::from_utf8(&wire).unwrap();
        assert!(
            text.starts_with(
                "x-forwarded-for: 192.0.2.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-"
            ),
            "{text}"
        );
        assert!(text.ends_with("-01\r\n"), "{text}");
        let fields: Vec<_> = wire_fields(&wire).collect();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[1].0, TRACEPARENT);
        assert_eq!(fields[1].1.len(), 55);
    }

    #[test]
    fn a_made_value_that_would_cut_the_line_is_not_written() {
        for bad in [&b"192.0.2.1\r\nx-evil: 1"[..], b"a\nb", b"a\rb", b"a\0b"] {
            let mut m = h(&[("x-forwarded-for", "spoofed"), ("x-a", "1")]);
            let mut wire = Vec::new();
            FieldSink::Wire(&mut wire).set_made(&mut m, X_FORWARDED_FOR, bad);
            assert!(wire.is_empty(), "{bad:?}");
            assert!(m.get(X_FORWARDED_FOR).is_none(), "{bad:?}");
            assert_eq!(m["x-a"], "1");
            // The map's sink refuses the same values.
            let mut m = h(&[("x-forwarded-for", "spoofed")]);
            FieldSink::Map.set_made(&mut m, X_FORWARDED_FOR, bad);
            assert!(m.get(X_FORWARDED_FOR).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn wire_fields_reads_back_what_was_written() {
        let mut wire = Vec::new();
        let mut m = HeaderMap::new();
        let mut sink = FieldSink::Wire(&mut wire);
        sink.set(
            &mut m,
            X_FORWARDED_HOST,
            HeaderValue::from_static("a.example:8443"),
        );
        sink.set(
            &mut m,
            HeaderName::from_static("x-request-id"),
            HeaderValue::from_static(""),
        );
        sink.set_made(
            &mut m,
            header::FORWARDED,
            b"for=\"[2001:db8::1]\";proto=https",
        );
        let got: Vec<_> = wire_fields(&wire).collect();
        assert_eq!(
            got,
            vec![
                (X_FORWARDED_HOST, HeaderValue::from_static("a.example:8443")),
                (
                    HeaderName::from_static("x-request-id"),
                    HeaderValue::from_static("")
                ),
                (
                    header::FORWARDED,
                    HeaderValue::from_static("for=\"[2001:db8::1]\";proto=https")
                ),
            ]
        );
    }
}
