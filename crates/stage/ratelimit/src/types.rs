//! The vocabulary every part of rate limiting shares: what a limit is, what one check of it
//! decided, and the store contract (local memory or Redis).

use std::time::Duration;

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Generic cell rate algorithm (a token bucket without a refill task): `limit` per
    /// `period` on average, up to `burst` at once. Exact.
    Gcra,
    /// A sliding window approximated from the previous and the current fixed window (weighted
    /// by how much of the previous one still overlaps). Smooth; approximate.
    SlidingWindow,
    /// A counter per aligned window. Cheapest; exact within a window; allows 2× at an edge.
    FixedWindow,
    /// Requests in flight per key (`limit` at once); `period` unused. Released when the
    /// request ends.
    Concurrency,
}

/// How windows align.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// A fixed length (`1s`, `1m`, `1h`, `1d`…), windows aligned to the Unix epoch.
    Fixed(Duration),
    /// The UTC calendar day (quotas).
    CalendarDay,
    /// The UTC calendar month (quotas).
    CalendarMonth,
}

/// One limit's parameters (after tier selection and adaptive scaling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitSpec {
    pub algorithm: Algorithm,
    /// Requests per period (in flight, for `Concurrency`). At least 1.
    pub limit: u64,
    pub period: Period,
    /// GCRA: requests that may arrive at once (≥ 1). Other algorithms: ignored.
    pub burst: u64,
}

/// One limit checked for one request.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The budget's identity: the limit's name and the values of its key dimensions. Two
    /// checks with the same key share one budget, whichever route they come from.
    pub key: &'a str,
    pub spec: &'a LimitSpec,
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The limit as applied (for the headers).
    pub limit: u64,
    /// What is left after this request (0 when refused).
    pub remaining: u64,
    /// Until the budget is whole again (window end, or GCRA's full refill).
    pub reset: Duration,
    /// When refused: how long to wait before a retry can succeed.
    pub retry_after: Option<Duration>,
}

/// Why a store could not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Unreachable, timed out, or answered nonsense; the message is for logs.
    Unavailable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "store unavailable: {m}"),
        }
    }
}
