//! Recent WAF hits per client address: a signal for the authorization step's risk score
//! ("this address has been sending attacks"). Bounded; the least recently seen go first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Hits older than this no longer count.
pub const WINDOW: Duration = Duration::from_secs(600);

struct Count {
    n: u32,
    since: Instant,
    last: Instant,
}

pub struct HitTracker {
    ips: Mutex<HashMap<IpAddr, Count>>,
    cap: usize,
}

impl Default for HitTracker {
    fn default() -> Self {
        HitTracker::new(100_000)
    }
}

impl HitTracker {
    pub fn new(cap: usize) -> HitTracker {
        HitTracker {
            ips: Mutex::new(HashMap::new()),
            cap: cap.max(1),
        }
    }

    /// Counts one request with scored findings from `ip`.
    pub fn record(&self, ip: IpAddr) {
        let now = Instant::now();
        let Ok(mut map) = self.ips.lock() else {
            return;
        };
        if map.len() >= self.cap && !map.contains_key(&ip) {
            map.retain(|_, c| now.duration_since(c.last) < WINDOW);
            if map.len() >= self.cap
                && let Some(oldest) = map.iter().min_by_key(|(_, c)| c.last).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let c = map.entry(ip).or_insert(Count {
            n: 0,
            since: now,
            last: now,
        });
        if now.duration_since(c.since) >= WINDOW {
            c.n = 0;
            c.since = now;
        }
        c.n = c.n.saturating_add(1);
        c.last = now;
    }

    /// Requests with findings from `ip` in the current window.
    pub fn recent(&self, ip: IpAddr) -> u32 {
        let Ok(map) = self.ips.lock() else {
            return 0;
        };
        map.get(&ip)
            .filter(|c| c.since.elapsed() < WINDOW)
            .map_or(0, |c| c.n)
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
}
