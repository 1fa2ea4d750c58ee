//! Events counted per key over a fixed window, in bounded memory: authentication failures and
//! WAF hits per client address feed the risk score and the admin API.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

struct Count {
    n: u32,
    since: Instant,
    last: Instant,
}

/// Counts per key; a key's count restarts once its window has passed. At most `cap` keys:
/// when full, stale keys go first, then the least recently seen.
pub struct WindowCounts<K> {
    map: HashMap<K, Count>,
    cap: usize,
    window: Duration,
}

impl<K: Hash + Eq + Clone> WindowCounts<K> {
    pub fn new(cap: usize, window: Duration) -> Self {
        WindowCounts {
            map: HashMap::new(),
            cap: cap.max(1),
            window,
        }
    }

    /// Counts one event for `k`.
    pub fn bump(&mut self, k: K) {
        let now = Instant::now();
        if self.map.len() >= self.cap && !self.map.contains_key(&k) {
            let window = self.window;
            self.map.retain(|_, c| now.duration_since(c.last) < window);
            if self.map.len() >= self.cap
                && let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, c)| c.last)
                    .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
        let c = self.map.entry(k).or_insert(Count {
            n: 0,
            since: now,
            last: now,
        });
        if now.duration_since(c.since) >= self.window {
            c.n = 0;
            c.since = now;
        }
        c.n = c.n.saturating_add(1);
        c.last = now;
    }

    /// Events for `k` in its current window.
    pub fn get(&self, k: &K) -> u32 {
        self.map
            .get(k)
            .filter(|c| c.since.elapsed() < self.window)
            .map_or(0, |c| c.n)
    }

    /// Every key with events in its current window: (key, count, time since the last one).
    pub fn live(&self) -> impl Iterator<Item = (&K, u32, Duration)> {
        let now = Instant::now();
        self.map
            .iter()
            .filter(move |(_, c)| now.duration_since(c.since) < self.window)
            .map(move |(k, c)| (k, c.n, now.duration_since(c.last)))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_bounded_and_windowed() {
        let mut w = WindowCounts::new(2, Duration::from_secs(600));
        w.bump("a");
        w.bump("a");
        w.bump("b");
        assert_eq!(w.get(&"a"), 2);
        w.bump("c");
        assert_eq!(w.len(), 2, "the least recently seen key went");
        assert_eq!(w.get(&"c"), 1);
        assert_eq!(w.get(&"z"), 0);
        let mut gone = WindowCounts::new(10, Duration::ZERO);
        gone.bump("a");
        assert_eq!(gone.get(&"a"), 0, "outside its window");
        assert_eq!(gone.live().count(), 0);
    }
}
