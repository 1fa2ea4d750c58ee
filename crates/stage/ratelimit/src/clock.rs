//! Where rate limiting reads the time: the wall clock in production, a hand-driven one in tests.
//!
//! Time is a [`Duration`] since the Unix epoch (UTC), nanosecond resolution, because calendar
//! quotas align to UTC days and months and a shared store (Redis) compares instants written by
//! several gateways. The algorithms tolerate a clock that steps backwards (they never admit more
//! because of it), so no monotonic adjustment is made here.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time, since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Now, since 1970-01-01T00:00:00Z.
    fn now(&self) -> Duration;
}

/// The system's wall clock. A time before the epoch (a badly set clock) reads as the epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// A clock that moves only when told to: set, advanced or stepped back by hand. For tests, in
/// this crate and in others.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Mutex<Duration>,
}

impl ManualClock {
    /// A clock reading `start` (since the epoch).
    pub fn new(start: Duration) -> ManualClock {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// Sets the time (possibly backwards).
    pub fn set(&self, now: Duration) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }

    /// Moves the time forward by `by` (saturating at [`Duration::MAX`]).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.saturating_add(by);
    }

    /// Moves the time backward by `by` (saturating at the epoch), as a stepped system clock does.
    pub fn rewind(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.saturating_sub(by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Duration::from_secs(100));
        assert_eq!(c.now(), Duration::from_secs(100));
        c.advance(Duration::from_nanos(5));
        assert_eq!(c.now(), Duration::new(100, 5));
        c.rewind(Duration::from_secs(1));
        assert_eq!(c.now(), Duration::new(99, 5));
        c.set(Duration::from_secs(7));
        assert_eq!(c.now(), Duration::from_secs(7));
        c.rewind(Duration::from_secs(10));
        assert_eq!(c.now(), Duration::ZERO);
        c.set(Duration::MAX);
        c.advance(Duration::from_secs(1));
        assert_eq!(c.now(), Duration::MAX);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > Duration::from_secs(1_577_836_800));
    }
}
