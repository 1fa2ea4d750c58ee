//! Authentication failures counted per client address and per claimed identity, for later
//! threat detection (bans, risk scores). Bounded: the least recently seen entries go first.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use portcullis_core::window::WindowCounts;
use serde::Serialize;

/// Failures older than this no longer count.
const WINDOW: Duration = Duration::from_secs(600);

struct Maps {
    ips: WindowCounts<IpAddr>,
    identities: WindowCounts<String>,
}

/// The address failures are counted under: IPv6 by its /64 (as bans and rate limits count
/// it by default).
fn counted(ip: IpAddr) -> IpAddr {
    portcullis_core::addr::counted(ip, 64)
}

pub struct FailureTracker {
    maps: Mutex<Maps>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureEntry {
    pub key: String,
    pub failures: u32,
    pub seconds_ago: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FailureSnapshot {
    pub by_client_ip: Vec<FailureEntry>,
    pub by_identity: Vec<FailureEntry>,
}

fn top<K: ToString + std::hash::Hash + Eq + Clone>(
    counts: &WindowCounts<K>,
    n: usize,
) -> Vec<FailureEntry> {
    let mut v: Vec<FailureEntry> = counts
        .live()
        .map(|(k, failures, ago)| FailureEntry {
            key: k.to_string(),
            failures,
            seconds_ago: ago.as_secs(),
        })
        .collect();
    v.sort_by(|a, b| b.failures.cmp(&a.failures).then(a.key.cmp(&b.key)));
    v.truncate(n);
    v
}

impl FailureTracker {
    pub fn new(cap: usize) -> FailureTracker {
        FailureTracker {
            maps: Mutex::new(Maps {
                ips: WindowCounts::new(cap, WINDOW),
                identities: WindowCounts::new(cap, WINDOW),
            }),
        }
    }

    /// Counts a failure from `ip` — an IPv6 client by its /64, which one host may pick
    /// addresses from at will, an IPv4-mapped one as its IPv4 address — and against
    /// `identity`.
    pub fn record(&self, ip: IpAddr, identity: Option<&str>) {
        if let Ok(mut m) = self.maps.lock() {
            m.ips.bump(counted(ip));
            if let Some(id) = identity {
                m.identities.bump(id.chars().take(128).collect());
            }
        }
    }

    /// Failures from `ip` (counted as [`FailureTracker::record`] counts it) in the last ten
    /// minutes.
    pub fn recent(&self, ip: IpAddr) -> u32 {
        self.maps.lock().map_or(0, |m| m.ips.get(&counted(ip)))
    }

    pub fn snapshot(&self, n: usize) -> FailureSnapshot {
        self.maps
            .lock()
            .map(|m| FailureSnapshot {
                by_client_ip: top(&m.ips, n),
                by_identity: top(&m.identities, n),
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_per_key_and_bounded() {
        let t = FailureTracker::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            t.record(a, Some("alice"));
        }
        assert_eq!(t.recent(a), 5);
        for i in 2..10 {
            t.record(format!("10.0.0.{i}").parse().unwrap(), None);
        }
        let s = t.snapshot(10);
        assert!(s.by_client_ip.len() <= 3);
        assert_eq!(s.by_identity[0].key, "alice");
        assert_eq!(s.by_identity[0].failures, 5);
    }

    /// A client cannot start afresh with each address of its /64, nor count apart as the
    /// IPv4-mapped form of its IPv4 address.
    #[test]
    fn an_ipv6_client_is_counted_by_its_prefix_and_a_mapped_one_as_ipv4() {
        let t = FailureTracker::new(8);
        for host in 1..=4 {
            t.record(format!("2001:db8:1:2::{host}").parse().unwrap(), None);
        }
        assert_eq!(t.recent("2001:db8:1:2::ffff".parse().unwrap()), 4);
        assert_eq!(t.recent("2001:db8:1:3::1".parse().unwrap()), 0);
        t.record("::ffff:192.0.2.7".parse().unwrap(), None);
        t.record("192.0.2.7".parse().unwrap(), None);
        assert_eq!(t.recent("192.0.2.7".parse().unwrap()), 2);
    }
}
