//! Target selection: smooth weighted round robin and power-of-two-choices least requests, both
//! restricted to eligible targets, both lock-free.

use std::sync::atomic::Ordering;

use portcullis_config::Balance;

use super::{MAX_ATTEMPTS, UpstreamPool};

/// Upper bound on the round-robin schedule's length. Weights whose sum exceeds it are scaled
/// down (each keeping at least 1), so an outlandish weight cannot make the schedule — and the
/// walk over ineligible entries — large.
const MAX_SCHEDULE: u64 = 4096;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One period of smooth weighted round robin (the nginx algorithm), precomputed: each target
/// appears `weight` times, spread out rather than in runs (weights 1, 2 give `1 0 1`), so
/// consecutive requests do not pile onto one target. Weights are reduced by their common
/// divisor first (2, 2 is 1, 1: strict alternation).
pub(super) fn weighted_schedule(weights: &[u32]) -> Vec<u32> {
    let mut w: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let g = w.iter().copied().fold(0, gcd).max(1);
    w.iter_mut().for_each(|x| *x /= g);
    let sum: u64 = w.iter().sum();
    if sum > MAX_SCHEDULE {
        w.iter_mut()
            .for_each(|x| *x = (*x * MAX_SCHEDULE / sum).max(1));
    }
    let total: u64 = w.iter().sum();
    let total_i = i64::try_from(total).unwrap_or(i64::MAX);
    let mut current = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        // Every target gains its weight; the one ahead is chosen and pays the total back.
        // The first index wins ties, which keeps the order stable.
        let mut best = 0;
        for (c, &wi) in current.iter_mut().zip(&w) {
            *c += i64::try_from(wi).unwrap_or(i64::MAX);
        }
        for (i, &c) in current.iter().enumerate() {
            if c > current[best] {
                best = i;
            }
        }
        current[best] -= total_i;
        schedule.push(u32::try_from(best).unwrap_or(0));
    }
    schedule
}

/// The targets already tried for one request, without allocating: a request has at most
/// [`MAX_ATTEMPTS`] attempts.
#[derive(Default)]
pub(super) struct Tried {
    idx: [usize; MAX_ATTEMPTS as usize],
    len: usize,
}

impl Tried {
    pub(super) fn insert(&mut self, i: usize) {
        if self.len < self.idx.len() && !self.contains(i) {
            self.idx[self.len] = i;
            self.len += 1;
        }
    }

    pub(super) fn contains(&self, i: usize) -> bool {
        self.idx[..self.len].contains(&i)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl UpstreamPool {
    /// Chooses an eligible target, preferring one not in `tried`; `None` if none is eligible.
    pub(super) fn select(&self, tried: &Tried) -> Option<usize> {
        let now = self.now_ms();
        if !tried.is_empty()
            && let Some(i) = self.pick(now, |i| !tried.contains(i))
        {
            return Some(i);
        }
        self.pick(now, |_| true)
    }

    fn pick(&self, now: u64, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let ok = |i: usize| allowed(i) && self.eligible(i, now);
        match self.balance {
            Balance::RoundRobin => {
                let n = self.schedule.len();
                // Relaxed: the cursor only spreads load; it orders nothing.
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                // An ineligible entry passes its turn to the next eligible one.
                (0..n)
                    .map(|k| self.schedule[start.wrapping_add(k) % n] as usize)
                    .find(|&i| ok(i))
            }
            Balance::LeastRequests => {
                let n = self.targets.len();
                let probe = |start: usize| (0..n).map(|k| (start + k) % n).find(|&i| ok(i));
                if n == 1 {
                    return probe(0);
                }
                // Two *distinct* random candidates: with two targets both are always compared,
                // so a busy target never wins against an idle one.
                let a0 = fastrand::usize(..n);
                let b0 = (a0 + 1 + fastrand::usize(..n - 1)) % n;
                let a = probe(a0)?;
                let b = probe(b0).unwrap_or(a);
                let load = |i: usize| self.targets[i].in_flight.count.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}
