//! Recent WAF hits per client address: a signal for the authorization step's risk score
//! ("this address has been sending attacks"). Bounded; the least recently seen go first.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use portcullis_core::window::WindowCounts;

/// Hits older than this no longer count.
pub const WINDOW: Duration = Duration::from_secs(600);

pub struct HitTracker {
    ips: Mutex<WindowCounts<IpAddr>>,
}

impl Default for HitTracker {
    fn default() -> Self {
        HitTracker::new(100_000)
    }
}

impl HitTracker {
    pub fn new(cap: usize) -> HitTracker {
        HitTracker {
            ips: Mutex::new(WindowCounts::new(cap, WINDOW)),
        }
    }

    /// Counts one request with scored findings from `ip` — an IPv6 client by its /64, which
    /// one host may pick addresses from at will, an IPv4-mapped one as its IPv4 address.
    pub fn record(&self, ip: IpAddr) {
        if let Ok(mut m) = self.ips.lock() {
            m.bump(portcullis_core::addr::counted(ip, 64));
        }
    }

    /// Requests with findings from `ip` (counted as [`HitTracker::record`] counts it) in the
    /// current window.
    pub fn recent(&self, ip: IpAddr) -> u32 {
        self.ips
            .lock()
            .map_or(0, |m| m.get(&portcullis_core::addr::counted(ip, 64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bounds() {
        let t = HitTracker::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        t.record(a);
        t.record(a);
        t.record(b);
        assert_eq!(t.recent(a), 2);
        t.record(c);
        assert_eq!(t.ips.lock().unwrap().len(), 2);
        assert_eq!(t.recent(c), 1);
        assert_eq!(t.recent("10.9.9.9".parse().unwrap()), 0);
    }

    /// A client cannot start afresh with each address of its /64, nor count apart as the
    /// IPv4-mapped form of its IPv4 address.
    #[test]
    fn an_ipv6_client_is_counted_by_its_prefix_and_a_mapped_one_as_ipv4() {
        let t = HitTracker::new(8);
        for host in 1..=3 {
            t.record(format!("2001:db8:1:2::{host}").parse().unwrap());
        }
        assert_eq!(t.recent("2001:db8:1:2::abcd".parse().unwrap()), 3);
        assert_eq!(t.recent("2001:db8:1:3::1".parse().unwrap()), 0);
        t.record("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(t.recent("192.0.2.7".parse().unwrap()), 1);
    }
}
