//! Target selection: smooth weighted round robin and power-of-two-choices least requests, both
//! restricted to eligible targets, both lock-free. Targets out of rotation leave their share to
//! the others in proportion to their weights (round robin) or evenly (least requests), never
//! to a neighbour.

use std::sync::atomic::Ordering;

use portcullis_config::Balance;

use super::{MAX_ATTEMPTS, UpstreamPool};

/// Upper bound on the round-robin schedule's length. Weights whose sum exceeds it are scaled
/// down (each keeping at least 1), so an outlandish weight cannot make the schedule — and the
/// draws past ineligible entries — large.
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

    pub(super) fn pick(&self, now: u64, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let ok = |i: usize| allowed(i) && self.eligible(i, now);
        let n = self.targets.len();
        // Any target that can take the request, for the rare draws that found none.
        let any = || (0..n).find(|&i| ok(i));
        match self.balance {
            Balance::RoundRobin => {
                let len = self.schedule.len();
                // Relaxed: the cursor only spreads load; it orders nothing.
                let draw =
                    || self.schedule[self.cursor.fetch_add(1, Ordering::Relaxed) % len] as usize;
                let first = draw();
                if ok(first) {
                    return Some(first);
                }
                any()?;
                // An entry whose target cannot take the request is passed over and the next
                // one drawn from the cursor, so that the turns of a target out of rotation are
                // shared by the others as the schedule shares them — by weight — instead of
                // all going to the entry after it. One period of the schedule holds every
                // target; draws made at the same time by other requests can take the entries
                // this one needed, hence the scan at the end.
                (1..len).map(|_| draw()).find(|&i| ok(i)).or_else(any)
            }
            Balance::LeastRequests => {
                if n == 1 {
                    return any();
                }
                // A target that cannot take the request is replaced by one drawn among those
                // that can, not by its neighbour: each of these is then as likely a
                // candidate as the others.
                let among_ok = |skip: Option<usize>| {
                    let fits = |i: &usize| Some(*i) != skip && ok(*i);
                    let m = (0..n).filter(fits).count();
                    if m == 0 {
                        return None;
                    }
                    let k = fastrand::usize(..m);
                    (0..n).filter(fits).nth(k).or_else(|| (0..n).find(fits))
                };
                // Two *distinct* random candidates: with two targets both are always compared,
                // so a busy target never wins against an idle one.
                let a0 = fastrand::usize(..n);
                let a = if ok(a0) { a0 } else { among_ok(None)? };
                let b0 = (a + 1 + fastrand::usize(..n - 1)) % n;
                let b = if ok(b0) {
                    b0
                } else {
                    among_ok(Some(a)).unwrap_or(a)
                };
                let load = |i: usize| self.targets[i].in_flight.count.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}
