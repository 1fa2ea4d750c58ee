//! Authentication failures counted per client address and per claimed identity, for later
//! threat detection (bans, risk scores). Bounded: the least recently seen entries go first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Failures older than this no longer count.
const WINDOW: Duration = Duration::from_secs(600);

struct Count {
    n: u32,
    since: Instant,
    last: Instant,
}

#[derive(Default)]
struct Maps {
    ips: HashMap<IpAddr, Count>,
    identities: HashMap<String, Count>,
}

pub struct FailureTracker {
    maps: Mutex<Maps>,
    cap: usize,
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

fn bump<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, Count>, k: K, cap: usize) {
    let now = Instant::now();
    if map.len() >= cap && !map.contains_key(&k) {
        map.retain(|_, c| now.duration_since(c.last) < WINDOW);
        if map.len() >= cap
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, c)| c.last)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
    let c = map.entry(k).or_insert(Count {
        n: 0,
        since: now,
        last: now,
    });
    if now.duration_since(c.since) > WINDOW {
        c.n = 0;
        c.since = now;
    }
    c.n = c.n.saturating_add(1);
    c.last = now;
}

fn top<K: ToString>(map: &HashMap<K, Count>, n: usize) -> Vec<FailureEntry> {
    let now = Instant::now();
    let mut v: Vec<FailureEntry> = map
        .iter()
        .filter(|(_, c)| now.duration_since(c.since) <= WINDOW)
        .map(|(k, c)| FailureEntry {
            key: k.to_string(),
            failures: c.n,
            seconds_ago: now.duration_since(c.last).as_secs(),
        })
        .collect();
    v.sort_by(|a, b| b.failures.cmp(&a.failures).then(a.key.cmp(&b.key)));
    v.truncate(n);
    v
}

impl FailureTracker {
    pub fn new(cap: usize) -> FailureTracker {
        FailureTracker {
            maps: Mutex::new(Maps::default()),
            cap: cap.max(1),
        }
    }

    pub fn record(&self, ip: IpAddr, identity: Option<&str>) {
        if let Ok(mut m) = self.maps.lock() {
            bump(&mut m.ips, ip, self.cap);
            if let Some(id) = identity {
                let id: String = id.chars().take(128).collect();
                bump(&mut m.identities, id, self.cap);
            }
        }
    }

    /// Failures from `ip` in the last ten minutes.
    pub fn recent(&self, ip: IpAddr) -> u32 {
        self.maps
            .lock()
            .ok()
            .and_then(|m| {
                m.ips
                    .get(&ip)
                    .and_then(|c| (Instant::now().duration_since(c.since) <= WINDOW).then_some(c.n))
            })
            .unwrap_or(0)
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
