//! Step 2a: the client address. When the TCP peer is a trusted proxy, the client is the
//! right-most address in `X-Forwarded-For` (or RFC 7239 `Forwarded: for=`) that is not itself a
//! trusted proxy; otherwise the peer is the client. Headers from untrusted peers are ignored,
//! so a client cannot choose the address every later step keys on.

use std::net::IpAddr;

use portcullis_config::IpNetRef;
use portcullis_core::{GatewayRequest, RequestCtx, Stage, StageId, Step};

pub struct ClientAddressStage {
    trusted: Vec<IpNetRef>,
}

impl ClientAddressStage {
    pub const ID: StageId = StageId("client_address");

    pub fn new(trusted: Vec<IpNetRef>) -> Self {
        ClientAddressStage { trusted }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = portcullis_ipfilter::canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Walks the forwarded chain from the right, skipping trusted hops.
    pub fn resolve(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut chain: Vec<IpAddr> = Vec::new();
        for v in headers.get_all("x-forwarded-for") {
            let Ok(s) = v.to_str() else { return peer };
            for item in s.split(',') {
                match parse_hop(item) {
                    Some(ip) => chain.push(ip),
                    None => return peer,
                }
            }
        }
        if chain.is_empty() {
            for v in headers.get_all(http::header::FORWARDED) {
                let Ok(s) = v.to_str() else { return peer };
                for elem in s.split(',') {
                    for pair in elem.split(';') {
                        let Some((k, val)) = pair.split_once('=') else {
                            continue;
                        };
                        if k.trim().eq_ignore_ascii_case("for") {
                            match parse_hop(val) {
                                Some(ip) => chain.push(ip),
                                None => return peer,
                            }
                        }
                    }
                }
            }
        }
        let mut client = peer;
        for ip in chain.iter().rev() {
            client = *ip;
            if !self.is_trusted(*ip) {
                break;
            }
        }
        client
    }
}

/// `203.0.113.7`, `"[2001:db8::1]:4711"`, `203.0.113.7:80` → the address.
fn parse_hop(s: &str) -> Option<IpAddr> {
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
        ClientAddressStage::new(
            trusted
                .iter()
                .map(|s| portcullis_ipfilter::parse_net(s).unwrap())
                .collect(),
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

    #[test]
    fn forwarded_header_and_garbage() {
        let s = stage(&["127.0.0.1"]);
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\"",
        )]);
        assert_eq!(s.resolve(ip("127.0.0.1"), &h), ip("2001:db8::1"));
        let h = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(s.resolve(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        assert_eq!(
            s.resolve(ip("127.0.0.1"), &http::HeaderMap::new()),
            ip("127.0.0.1")
        );
    }
}
