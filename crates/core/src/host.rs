//! The request's host as the gateway reads it: one normalisation for routing and for what
//! authorization policies see, so a policy never compares a host other than the one the
//! router matched.

use std::borrow::Cow;

/// The request's host: the URI authority (HTTP/2 `:authority`, absolute-form) or else the
/// `Host` header; without port; one trailing dot removed (the fully qualified form names the
/// same host); ASCII letters in lower case. A bracketed IPv6 address keeps its brackets and is
/// written in its canonical form (`[0:0::1]:80` → `[::1]`). `None` without a host, or for a `Host` that is not text. Borrowed
/// from the request when it needs no change.
pub fn normalized_host(head: &http::request::Parts) -> Option<Cow<'_, str>> {
    let raw = match head.uri.authority() {
        Some(a) => a.host(),
        None => {
            let h = crate::header_value(&head.headers, &http::header::HOST)?
                .to_str()
                .ok()?;
            let h = h.trim();
            if let Some(rest) = h.strip_prefix('[') {
                // [v6]:port: through the first `]`.
                let end = rest.find(']')?;
                &h[..end + 2]
            } else {
                // host:port, the port all digits (or empty); else the whole value.
                match h.bytes().rposition(|b| b == b':') {
                    Some(i) if h.as_bytes()[i + 1..].iter().all(u8::is_ascii_digit) => &h[..i],
                    _ => h,
                }
            }
        }
    };
    // An IPv6 address has many spellings (`[0:0::1]`, `[::1]`, `[::0001]`): one, the canonical
    // (RFC 5952, as `Ipv6Addr` prints it), so that a route or policy naming the address matches
    // whichever the client wrote.
    if let Some(inner) = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && let Ok(addr) = inner.parse::<std::net::Ipv6Addr>()
    {
        let canonical = format!("[{addr}]");
        return Some(if canonical == raw {
            Cow::Borrowed(raw)
        } else {
            Cow::Owned(canonical)
        });
    }
    // One trailing dot goes (the fully qualified form names the same host).
    let raw = raw.strip_suffix('.').unwrap_or(raw);
    Some(if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(raw.to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    })
}
