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

    pub fn record(&self, ip: IpAddr, identity: Option<&str>) {
        if let Ok(mut m) = self.maps.lock() {
            m.ips.bump(ip);
            if let Some(id) = identity {
                m.identities.bump(id.chars().take(128).collect());
            }
        }
    }

    /// Failures from `ip` in the last ten minutes.
    pub fn recent(&self, ip: IpAddr) -> u32 {
        self.maps.lock().map_or(0, |m| m.ips.get(&ip))
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
}
