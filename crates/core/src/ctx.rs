//! The per-request context that travels through the pipeline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::{RejectReason, StageId};

/// Index of a route in the running snapshot's route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteId(pub usize);

/// The route a request matched, with the parameters captured by a templated path.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub id: RouteId,
    pub name: Arc<str>,
    /// `{name}` captures of a templated path, in template order, percent-decoded.
    pub params: Vec<(Arc<str>, String)>,
}

impl RouteMatch {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The scheme the client used to reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What the TLS handshake established.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub server_name: Option<String>,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<&'static str>,
    /// The client certificate, when the listener asked for one and it verified.
    pub peer_certificate: Option<Arc<crate::PeerCertificate>>,
}

/// A request id: 32 lowercase hex digits unless a trusted client supplied its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A fresh random id. Not a secret: it must be unique, not unguessable.
    pub fn generate() -> Self {
        let mut buf = [0u8; 32];
        let id = hex_lower(fastrand::u128(..), &mut buf);
        RequestId(Arc::from(id))
    }

    /// Accepts a client-supplied id only if it is short and made of safe characters, so it can
    /// be logged and echoed without escaping.
    pub fn from_client(value: &[u8]) -> Option<Self> {
        if value.is_empty() || value.len() > 128 {
            return None;
        }
        if !value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return None;
        }
        std::str::from_utf8(value)
            .ok()
            .map(|s| RequestId(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `v` as lowercase hex of `N` digits (zero-padded, the high digits cut if `v` is longer),
/// written into `buf` without formatting machinery or allocation (per-request ids).
pub fn hex_lower<const N: usize>(v: u128, buf: &mut [u8; N]) -> &str {
    write_hex_lower(v, buf);
    // Only ASCII hex digits were written.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// [`hex_lower`] into any byte slice (its length is the number of digits), for a caller that
/// wants the bytes, not a `str` (a header value being assembled).
pub fn write_hex_lower(v: u128, buf: &mut [u8]) {
    // Two digits per byte of `v` from one table load (a digit at a time took a 128-bit shift
    // each: about 80 digits per request between the request id and `traceparent`).
    static PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
            i += 1;
        }
        t
    };
    let bytes = v.to_be_bytes();
    let mut out = buf.len();
    let mut i = bytes.len();
    while out >= 2 && i > 0 {
        i -= 1;
        let [hi, lo] = PAIRS[usize::from(bytes[i])];
        buf[out - 2] = hi;
        buf[out - 1] = lo;
        out -= 2;
    }
    // An odd number of digits: the last one is the low half of the next byte.
    if out > 0 && i > 0 {
        buf[out - 1] = PAIRS[usize::from(bytes[i - 1])][1];
        out -= 1;
    }
    // Digits beyond `v`'s 32.
    buf[..out].fill(b'0');
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything the gateway knows about a request beyond its head and body.
#[derive(Debug)]
pub struct RequestCtx {
    pub request_id: RequestId,
    pub received: Instant,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client address after trusted-proxy resolution (equals the peer's unless the peer is a
    /// trusted proxy that forwarded a client address); an IPv4-mapped IPv6 address written as
    /// IPv4 ([`crate::addr::canonical`]), so that every step, list and log sees one spelling.
    pub client_ip: IpAddr,
    /// Whether the TCP peer is a trusted proxy.
    pub peer_trusted: bool,
    pub scheme: Scheme,
    pub listener: Arc<str>,
    pub tls: Option<TlsInfo>,
    /// The path as received, before normalisation (for audit).
    pub original_path: Option<String>,
    /// Set by the route step.
    pub route: Option<RouteMatch>,
    /// The largest body the route accepts; enforced while streaming.
    pub body_limit: Option<u64>,
    /// Set by the authentication step when a credential verified.
    pub principal: Option<Arc<crate::Principal>>,
    /// Set by the authentication step when a credential was presented and refused: the
    /// precise reason (for audit and failure counting; never sent to the client).
    pub auth_failure: Option<&'static str>,
    /// Set by the WAF step when it matched anything (or blocked).
    pub waf: Option<Box<crate::WafReport>>,
    /// Set by the authorization step: what it decided and which rule decided it.
    pub authz: Option<Box<crate::AuthzDecision>>,
    /// Set by a step that needs the response body filtered (field masks).
    pub response_filter: Option<crate::ResponseFilter>,
    /// Set by a step whose route answers each caller differently (field masks), even when
    /// this caller's answer is not filtered: the answer is made private to shared caches and
    /// varies by `Authorization`.
    pub per_caller_response: bool,
    /// Set by the contract step: the operation matched and the violations found.
    pub contract: Option<Box<crate::ContractReport>>,
    /// Set by the contract step when the response must be checked or filtered against the
    /// operation's declared responses.
    pub response_contract: Option<Arc<dyn crate::ResponseContract>>,
    /// Set by the route step: the request is a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) for a route with CORS, matched by the method it asks
    /// about.
    pub preflight: bool,
    /// Headers every response to this request carries, whatever its outcome (rate-limit
    /// state, quota warnings). A name listed here replaces the upstream's own.
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The limit that refused the request (audit, metrics).
    pub limited_by: Option<Arc<str>>,
    /// Set when a step rejects: which step and why (for audit and metrics).
    pub rejected_by: Option<(StageId, RejectReason)>,
    /// Per-request data of later steps (principal, permit …), keyed by type.
    pub extensions: http::Extensions,
}

impl RequestCtx {
    pub fn new(peer: SocketAddr, scheme: Scheme, listener: Arc<str>) -> Self {
        RequestCtx {
            request_id: RequestId::generate(),
            received: Instant::now(),
            peer,
            client_ip: crate::addr::canonical(peer.ip()),
            peer_trusted: false,
            scheme,
            listener,
            tls: None,
            original_path: None,
            route: None,
            principal: None,
            auth_failure: None,
            waf: None,
            authz: None,
            response_filter: None,
            per_caller_response: false,
            contract: None,
            response_contract: None,
            preflight: false,
            response_headers: Vec::new(),
            limited_by: None,
            body_limit: None,
            rejected_by: None,
            extensions: http::Extensions::new(),
        }
    }

    pub fn route_id(&self) -> Option<RouteId> {
        self.route.as_ref().map(|r| r.id)
    }

    /// The scheme the client used to reach the gateway: the listener's, or, from a trusted
    /// proxy that says so (`X-Forwarded-Proto`, `Forwarded: proto=`), its client's — a TLS
    /// terminator in front of a cleartext listener. An untrusted peer's claim is never taken.
    pub fn client_scheme(&self, headers: &http::HeaderMap) -> Scheme {
        if self.peer_trusted {
            crate::header::forwarded_scheme(headers).unwrap_or(self.scheme)
        } else {
            self.scheme
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_32_hex_and_distinct() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn hex_is_what_format_writes() {
        for v in [
            0u128,
            1,
            0xdead_beef,
            u128::from(u64::MAX),
            u128::MAX,
            0x0123 << 100,
        ] {
            assert_eq!(hex_lower(v, &mut [0u8; 32]), format!("{v:032x}"));
            assert_eq!(hex_lower(v, &mut [0u8; 16]), format!("{:016x}", v as u64));
        }
        assert_eq!(hex_lower(0xab, &mut [0u8; 2]), "ab");
        // Every length, odd ones and ones beyond 32 digits included: the lowest `len` digits,
        // zero-padded.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let v = rng.u128(..) >> rng.u32(0..128);
            for len in 0..=40 {
                let mut buf = vec![b'?'; len];
                write_hex_lower(v, &mut buf);
                let full = format!("{v:040x}");
                assert_eq!(
                    std::str::from_utf8(&buf).unwrap(),
                    &full[40 - len..],
                    "{v:x} {len}"
                );
            }
        }
    }

    #[test]
    fn client_ids_are_filtered() {
        assert!(RequestId::from_client(b"abc-123_x.y:z").is_some());
        assert!(RequestId::from_client(b"").is_none());
        assert!(RequestId::from_client(b"has space").is_none());
        assert!(RequestId::from_client(b"a\r\nb").is_none());
        assert!(RequestId::from_client(&[b'a'; 129]).is_none());
    }
}
