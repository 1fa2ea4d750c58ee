//! Step 2a: the client address. When the TCP peer is a trusted proxy, the client is the
//! right-most address in `X-Forwarded-For` (or, as configured, RFC 7239 `Forwarded: for=`)
//! that is not itself a trusted proxy; otherwise the peer is the client. Headers from
//! untrusted peers are ignored, so a client cannot choose the address every later step keys
//! on.

use std::net::IpAddr;

use portcullis_config::IpNetRef;
use portcullis_config::validated::ClientAddressHeader;
use portcullis_core::{GatewayRequest, RequestCtx, Stage, StageId, Step};

pub struct ClientAddressStage {
    trusted: Vec<IpNetRef>,
    header: ClientAddressHeader,
}

impl ClientAddressStage {
    pub const ID: StageId = StageId("client_address");

    pub fn new(trusted: Vec<IpNetRef>, header: ClientAddressHeader) -> Self {
        ClientAddressStage { trusted, header }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = portcullis_ipfilter::canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Walks the forwarded chain from the right, skipping trusted hops.
    ///
    /// Each hop was written by the trusted hop to its right (the last one by the peer), so the
    /// first address that is not a trusted proxy is the client, and nothing left of it is read:
    /// what a client writes into the chain itself — garbage included — never decides. A hop a
    /// trusted proxy wrote unreadable (`unknown`, an obfuscated name, an element without
    /// `for`) ends the walk: the client is then the nearest address known, that proxy's.
    ///
    /// The address is [`portcullis_ipfilter::canonical`]: an IPv4-mapped one (a dual-stack
    /// listener's IPv4 peer, or a hop written so) is its IPv4 address.
    pub fn resolve(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        portcullis_ipfilter::canonical(self.resolve_as_written(peer, headers))
    }

    fn resolve_as_written(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        if self.header == ClientAddressHeader::XForwardedFor {
            return self.walk(
                peer,
                headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .rev()
                    .flat_map(|line| line.as_bytes().rsplit(|b| *b == b','))
                    .map(parse_hop),
            );
        }
        let forwarded = headers.get_all(http::header::FORWARDED);
        self.walk(
            peer,
            forwarded
                .iter()
                .rev()
                .flat_map(|line| line.as_bytes().rsplit(|b| *b == b','))
                .map(|element| {
                    element.split(|b| *b == b';').find_map(|pair| {
                        let eq = pair.iter().position(|b| *b == b'=')?;
                        let (k, v) = pair.split_at(eq);
                        k.trim_ascii()
                            .eq_ignore_ascii_case(b"for")
                            .then(|| parse_hop(v.get(1..).unwrap_or_default()))
                    })?
                }),
        )
    }

    /// The client, from the hops read right to left (`None`: a hop that cannot be read).
    fn walk(&self, peer: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
        let mut client = peer;
        for hop in hops {
            let Some(ip) = hop else { break };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }
}

/// `203.0.113.7`, `"[2001:db8::1]:4711"`, `203.0.113.7:80` → the address; `None` for anything
/// else (`unknown`, an obfuscated name, an empty item, bytes that are not text).
fn parse_hop(s: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(s).ok()?;
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':')?.0.parse().ok()
}

impl Stage for ClientAddressStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        ctx.client_ip = self.resolve(ctx.peer.ip(), &req.head.headers);
        Step::CONTINUE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(trusted: &[&str]) -> ClientAddressStage {
        stage_reading(trusted, ClientAddressHeader::XForwardedFor)
    }

    fn stage_reading(trusted: &[&str], header: ClientAddressHeader) -> ClientAddressStage {
        ClientAddressStage::new(
            trusted
                .iter()
                .map(|s| portcullis_ipfilter::parse_net(s).unwrap())
                .collect(),
            header,
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let s = stage(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(s.resolve(ip("192.0.2.9"), &h), ip("192.0.2.9"));
    }

    #[test]
    fn mapped_addresses_resolve_to_their_ipv4_form() {
        let s = stage(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "::ffff:203.0.113.7, ::ffff:10.1.1.1")]);
        // A dual-stack listener's IPv4 peers, trusted or not; mapped hops.
        assert_eq!(s.resolve(ip("::ffff:10.0.0.2"), &h), ip("203.0.113.7"));
        assert_eq!(s.resolve(ip("::ffff:192.0.2.9"), &h), ip("192.0.2.9"));
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let s = stage(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.1.1")]);
        assert_eq!(s.resolve(ip("10.0.0.2"), &h), ip("203.0.113.7"));
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.8"),
        ]);
        assert_eq!(s.resolve(ip("10.0.0.2"), &h), ip("203.0.113.8"));
    }

    /// What a client writes left of its own address — the address the first trusted proxy saw —
    /// decides nothing: garbage there is never read, so it cannot make the proxy the client.
    #[test]
    fn only_the_hops_up_to_the_client_are_read() {
        let s = stage(&["10.0.0.0/8"]);
        for chain in [
            "x, 198.51.100.9",
            ", 198.51.100.9",
            "unknown, 198.51.100.9",
            "fe80::1%eth0, 198.51.100.9",
            "6.6.6.6, 198.51.100.9",
            "_hidden, 198.51.100.9, 10.1.1.1",
        ] {
            let h = headers(&[("x-forwarded-for", chain)]);
            assert_eq!(s.resolve(ip("10.0.0.2"), &h), ip("198.51.100.9"), "{chain}");
        }
        let mut h = headers(&[("x-forwarded-for", "198.51.100.9")]);
        h.insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff, 198.51.100.9").unwrap(),
        );
        assert_eq!(s.resolve(ip("10.0.0.2"), &h), ip("198.51.100.9"));
        let s = stage_reading(&["10.0.0.0/8"], ClientAddressHeader::Forwarded);
        for forwarded in [
            "for=unknown, for=198.51.100.9",
            "for=_hidden;proto=https, for=\"198.51.100.9:4711\"",
            "proto=https, for=198.51.100.9",
        ] {
            let h = headers(&[("forwarded", forwarded)]);
            assert_eq!(
                s.resolve(ip("10.0.0.2"), &h),
                ip("198.51.100.9"),
                "{forwarded}"
            );
        }
        // A trusted proxy's own unreadable hop: the client is that proxy, the nearest known.
        let h = headers(&[("x-forwarded-for", "198.51.100.9, unknown, 10.1.1.1")]);
        assert_eq!(
            stage(&["10.0.0.0/8"]).resolve(ip("10.0.0.2"), &h),
            ip("10.1.1.1")
        );
        let h = headers(&[("forwarded", "for=198.51.100.9, for=unknown")]);
        assert_eq!(s.resolve(ip("10.0.0.2"), &h), ip("10.0.0.2"));
    }

    /// Only the configured header is read: a proxy that writes one and passes the client's copy
    /// of the other on cannot be fooled through it.
    #[test]
    fn only_the_configured_header_names_the_client() {
        let both = headers(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("forwarded", "for=198.51.100.2"),
        ]);
        let xff = stage(&["10.0.0.0/8"]);
        let fwd = stage_reading(&["10.0.0.0/8"], ClientAddressHeader::Forwarded);
        assert_eq!(xff.resolve(ip("10.0.0.2"), &both), ip("203.0.113.1"));
        assert_eq!(fwd.resolve(ip("10.0.0.2"), &both), ip("198.51.100.2"));
        // The other header alone: the peer.
        let only_fwd = headers(&[("forwarded", "for=198.51.100.2")]);
        assert_eq!(xff.resolve(ip("10.0.0.2"), &only_fwd), ip("10.0.0.2"));
        let only_xff = headers(&[("x-forwarded-for", "203.0.113.1")]);
        assert_eq!(fwd.resolve(ip("10.0.0.2"), &only_xff), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_header_and_garbage() {
        let s = stage_reading(&["127.0.0.1"], ClientAddressHeader::Forwarded);
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\"",
        )]);
        assert_eq!(s.resolve(ip("127.0.0.1"), &h), ip("2001:db8::1"));
        let h = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(
            stage(&["127.0.0.1"]).resolve(ip("127.0.0.1"), &h),
            ip("127.0.0.1")
        );
        // An element without `for` is a hop no one can read: the walk ends there.
        let h = headers(&[("forwarded", "for=192.0.2.60, proto=https")]);
        assert_eq!(s.resolve(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        assert_eq!(
            s.resolve(ip("127.0.0.1"), &http::HeaderMap::new()),
            ip("127.0.0.1")
        );
    }
}
