//! Client addresses as the gateway counts them.
//!
//! Limits, bans and the connection cap count an address, not a socket: an IPv4-mapped IPv6
//! address (`::ffff:192.0.2.1`, what a dual-stack listener reports for an IPv4 client) is that
//! IPv4 address, and an IPv6 client by its network prefix, since one host is usually given a
//! whole /64 and can pick a new address from it for every request.

use std::net::IpAddr;

/// The address with IPv4-mapped IPv6 written as IPv4; every other address unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The address as counted: [`canonical`], then an IPv6 address cut to its first
/// `ipv6_prefix` bits (the rest zero). A prefix of 0 or of 128 and more keeps the address whole.
pub fn counted(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) if (1..128).contains(&ipv6_prefix) => {
            let mask = u128::MAX << (128 - u32::from(ipv6_prefix));
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        other => other,
    }
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address (a /32 or /128). A network with
/// bits set past its prefix (`203.0.113.10/8`: a typo for a /24, or for the address alone?)
/// is refused rather than widened. IPv4-mapped IPv6 entries (`::ffff:192.0.2.0/120`) are
/// their IPv4 networks, as client addresses are compared in their IPv4 form.
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    let net = match s.parse::<ipnet::IpNet>() {
        Ok(net) if net.trunc() != net => {
            return Err(format!(
                "\"{s}\" has bits set past its /{} prefix: write {} for the network or {} for \
                 the one address",
                net.prefix_len(),
                net.trunc(),
                ipnet::IpNet::from(net.addr())
            ));
        }
        Ok(net) => net,
        Err(_) => s
            .parse::<IpAddr>()
            .map(ipnet::IpNet::from)
            .map_err(|_| format!("\"{s}\" is not an IP address or CIDR"))?,
    };
    Ok(ipv4_if_mapped(net))
}

/// An IPv6 network inside `::ffff:0:0/96` as the IPv4 network it maps; any other unchanged.
fn ipv4_if_mapped(net: ipnet::IpNet) -> ipnet::IpNet {
    if let ipnet::IpNet::V6(n) = net
        && let Some(v4) = n.network().to_ipv4_mapped()
        && let Some(len) = n.prefix_len().checked_sub(96)
        && let Ok(v4) = ipnet::Ipv4Net::new(v4, len)
    {
        return ipnet::IpNet::V4(v4);
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        assert_eq!(canonical(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(counted(ip("::ffff:192.0.2.1"), 64), ip("192.0.2.1"));
        assert_eq!(counted(ip("::ffff:192.0.2.1"), 1), ip("192.0.2.1"));
        // Only the mapped form: the deprecated IPv4-compatible one is an IPv6 address.
        assert_eq!(canonical(ip("::192.0.2.1")), ip("::192.0.2.1"));
        assert_eq!(canonical(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn ipv6_is_cut_to_its_prefix() {
        let a = ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd");
        assert_eq!(counted(a, 64), ip("2001:db8:1:2::"));
        assert_eq!(counted(a, 48), ip("2001:db8:1::"));
        assert_eq!(counted(a, 127), ip("2001:db8:1:2:aaaa:bbbb:cccc:dddc"));
        assert_eq!(counted(a, 1), ip("::"));
        assert_eq!(counted(ip("8000::1"), 1), ip("8000::"));
        assert_eq!(counted(a, 128), a);
        assert_eq!(counted(a, 0), a);
        assert_eq!(counted(a, 200), a);
        // IPv4 is never cut.
        assert_eq!(counted(ip("192.0.2.77"), 8), ip("192.0.2.77"));
    }
}
