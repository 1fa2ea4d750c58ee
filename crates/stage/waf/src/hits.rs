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

    /// Counts one request with scored findings from `ip`.
    pub fn record(&self, ip: IpAddr) {
        if let Ok(mut m) = self.ips.lock() {
            m.bump(ip);
        }
    }

    /// Requests with findings from `ip` in the current window.
    pub fn recent(&self, ip: IpAddr) -> u32 {
        self.ips.lock().map_or(0, |m| m.get(&ip))
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
