//! The rate at which an HTTP/2 client resets streams the gateway is already working on.
//!
//! The h2 layer bounds streams a client opens and resets before they are accepted (the
//! original CVE-2023-44487 pattern: `HEADERS` and `RST_STREAM` back to back). A client that
//! waits until each stream is accepted — its request routed, checked, perhaps sent upstream —
//! and then resets it frees the stream's slot at once, so `max_concurrent_streams` does not
//! bound how many such requests it makes per second; each costs the gateway (and perhaps the
//! upstream) a request whose answer nobody reads. [`ResetWatch`] counts those resets per
//! connection and second (`server.http2_max_resets_per_second`); past the limit the
//! connection's server closes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

/// One HTTP/2 connection's count of streams its client reset before their answers.
#[derive(Debug)]
pub struct ResetWatch {
    /// Most such resets in one second of the connection's life; 0: no limit.
    limit: u32,
    born: Instant,
    /// `(second of the connection's life << 32) | resets counted in that second`.
    window: AtomicU64,
    flooded: Notify,
}

impl Default for ResetWatch {
    /// No limit.
    fn default() -> Self {
        ResetWatch::new(0)
    }
}

impl ResetWatch {
    pub fn new(limit: u32) -> Self {
        ResetWatch {
            limit,
            born: Instant::now(),
            window: AtomicU64::new(0),
            flooded: Notify::new(),
        }
    }

    /// Counts a stream the client reset before its answer (its request's future dropped
    /// unanswered). True, and [`ResetWatch::flooded`] resolves, once the second's count
    /// passes the limit.
    pub fn client_reset(&self) -> bool {
        if self.limit == 0 {
            return false;
        }
        let second = u32::try_from(self.born.elapsed().as_secs()).unwrap_or(u32::MAX);
        self.count_at(second)
    }

    fn count_at(&self, second: u32) -> bool {
        let mut current = self.window.load(Ordering::Relaxed);
        let count = loop {
            let (at, n) = ((current >> 32) as u32, current as u32);
            // A stream task that read the clock before another one stored a later second
            // counts into that later second.
            let (at, n) = if at >= second {
                (at, n.saturating_add(1))
            } else {
                (second, 1)
            };
            let next = (u64::from(at) << 32) | u64::from(n);
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break n,
                Err(now) => current = now,
            }
        };
        if count > self.limit {
            // Kept as a permit when the connection's server is not waiting yet.
            self.flooded.notify_one();
            true
        } else {
            false
        }
    }

    /// Resolves once the limit was passed.
    pub async fn flooded(&self) {
        self.flooded.notified().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn more_resets_than_the_limit_in_one_second_flood_the_connection() {
        let w = ResetWatch::new(3);
        // Three in second 0, three in second 1 (a new second starts a new count): under.
        for second in [0, 0, 0, 1, 1, 1] {
            assert!(!w.count_at(second));
        }
        let pending = tokio::time::timeout(Duration::from_millis(20), w.flooded()).await;
        assert!(pending.is_err(), "not flooded under the limit");
        // A late reader of an earlier second counts into the later one: the fourth of second 1.
        assert!(w.count_at(0));
        // The notification was kept for the server, which waits only now.
        tokio::time::timeout(Duration::from_secs(5), w.flooded())
            .await
            .expect("flooded");
        assert!(w.count_at(1), "further resets stay over");
    }

    #[test]
    fn no_limit_counts_nothing() {
        let w = ResetWatch::default();
        for _ in 0..10_000 {
            assert!(!w.client_reset());
        }
        assert_eq!(w.window.load(Ordering::Relaxed), 0);
    }
}
