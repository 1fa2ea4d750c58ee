//! The in-memory store: budgets of one gateway process, the default when no Redis is configured
//! (and the fallback when Redis is down).
//!
//! Takes checks (key + limit) and a cost, returns one [`Decision`] per check; concurrency
//! limits are acquired as guards that release on drop.
//!
//! Layout: 2^k shards (at most 64), each a `Mutex` over a `HashMap` from the full key to its
//! state. A key is hashed with a per-process random `RandomState` to pick its shard (so clients
//! cannot aim their keys at one shard), and the map compares whole keys (two keys never share a
//! budget, whatever their hash). Locks are held for the arithmetic only; nothing allocates under
//! a lock except a key seen for the first time. No background task: the store tidies a shard
//! when it must insert into a full one, and [`LocalStore::sweep`] can be called periodically.
//!
//! Invariants and guarantees:
//! - **Exact under concurrency.** [`LocalStore::check_all`] locks every shard its checks touch (in
//!   shard order, so callers never deadlock), decides all checks, and commits only if all allow:
//!   a refused request consumes nothing from any budget, and concurrent callers together never
//!   admit more than a limit allows. Two checks with the same key in one call share one budget
//!   (the second sees the first's charge).
//! - **Time never runs backwards here.** Each shard keeps the latest time it has seen and counts
//!   at `max(clock, latest)`: a clock stepped back is seen as a pause, and a budget forgotten as
//!   whole can never be revived into admitting more.
//! - **Bounded memory.** At most `max_keys` rate budgets are held (`max_keys / shards` per
//!   shard). Concurrency counters are held only while a request is in flight (bounded by the
//!   requests in flight) and are never evicted.
//! - **Eviction never resets a budget in use while a cheaper choice exists.** When a key must be
//!   inserted into a full shard, the shard first drops every budget that is whole again (window
//!   over, TAT passed): that changes no decision. Only if it is still full does it drop its
//!   least recently checked budgets (an eighth of the shard at once, so the scan is amortised).
//!   Every check of a key — admitted or refused — makes it the most recent, so a key in use is
//!   never dropped before all idle ones: a budget that is still partly used is forgotten (and a
//!   client can get more than its limit) only if at least 7/8 of its shard's capacity, about
//!   7/8 of `max_keys` distinct keys across the store, were checked since that key was last
//!   checked. Size `max_keys` above the distinct keys active within your longest period;
//!   [`LocalStore::evictions`] counts the budgets dropped early (zero means no limit was
//!   loosened by eviction).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::algo::{self, State};
use crate::clock::Clock;
use crate::types::{Check, Decision};

const MAX_SHARDS: usize = 64;
/// A full shard drops this fraction of its budgets at once (least recently checked first).
const EVICT_DIVISOR: usize = 8;

/// One budget as held in memory.
struct Entry {
    state: State,
    /// From this instant (ns) the state counts as a never-seen key: it may be dropped.
    whole_at: u128,
    /// The shard's check sequence at the last check of this key (recency, unique per shard).
    seen: u64,
}

#[derive(Default)]
struct Shard {
    rates: HashMap<Box<str>, Entry>,
    in_flight: HashMap<Box<str>, u64>,
    /// Incremented at each touch of a budget; orders recency without reading the clock.
    seq: u64,
    /// The latest time (ns) this shard has counted at.
    latest: u128,
}

impl Shard {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Now, never earlier than any time this shard has counted at.
    fn now(&mut self, clock: Duration) -> Duration {
        let ns = clock.as_nanos();
        if ns > self.latest {
            self.latest = ns;
            clock
        } else {
            algo::duration_from_nanos(self.latest)
        }
    }

    /// Makes room for one more budget in a shard holding `cap` at most; returns how many
    /// budgets still in use were dropped.
    fn make_room(&mut self, cap: usize) -> u64 {
        if self.rates.len() < cap {
            return 0;
        }
        let now = self.latest;
        self.rates.retain(|_, e| e.whole_at > now);
        if self.rates.len() < cap {
            return 0;
        }
        let n = (cap / EVICT_DIVISOR)
            .max(self.rates.len() + 1 - cap)
            .min(self.rates.len());
        if n == 0 {
            return 0;
        }
        // The budgets closest to whole go first: dropping one lets its client exceed its
        // limit only until it would have been whole anyway. So a month's quota a client has
        // used up outlives the minute budgets of the fresh keys an attacker makes to fill the
        // shard (the least recently checked went first before, the quota among them).
        let mut order: Vec<(u128, u64)> =
            self.rates.values().map(|e| (e.whole_at, e.seen)).collect();
        let (_, cutoff, _) = order.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        // `seen` values are unique, so this drops exactly n.
        self.rates.retain(|_, e| (e.whole_at, e.seen) > cutoff);
        n as u64
    }

    /// Stores the state of a budget that was just charged.
    fn commit(&mut self, key: &str, state: State, whole_at: u128, cap: usize) -> u64 {
        let seen = self.next_seq();
        if let Some(e) = self.rates.get_mut(key) {
            *e = Entry {
                state,
                whole_at,
                seen,
            };
            return 0;
        }
        let evicted = self.make_room(cap);
        self.rates.insert(
            key.into(),
            Entry {
                state,
                whole_at,
                seen,
            },
        );
        evicted
    }

    fn touch(&mut self, key: &str) {
        let seen = self.next_seq();
        if let Some(e) = self.rates.get_mut(key) {
            e.seen = seen;
        }
    }
}

type SharedShard = Arc<Mutex<Shard>>;

/// Working space of one multi-check call (on the stack for the usual few checks).
struct Scratch<'a, 's> {
    shard_of: &'a mut [usize],
    order: &'a mut [usize],
    guards: &'a mut [Option<MutexGuard<'s, Shard>>],
    nows: &'a mut [Duration],
    planned: &'a mut [Option<(State, Decision)>],
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic under the lock cannot leave a half-written entry (each write is one assignment),
    // so a poisoned shard is still consistent.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The in-memory store of rate budgets and in-flight counters (see the module header for its
/// guarantees).
pub struct LocalStore {
    shards: Box<[SharedShard]>,
    hasher: RandomState,
    /// Budgets per shard at most.
    cap: usize,
    clock: Arc<dyn Clock>,
    evictions: AtomicU64,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("shards", &self.shards.len())
            .field("keys_per_shard", &self.cap)
            .finish_non_exhaustive()
    }
}

/// Neutral answer for a concurrency check passed to `check_all` (those are acquired instead).
fn not_counted(limit: u64) -> Decision {
    Decision {
        allowed: true,
        limit,
        remaining: limit,
        reset: Duration::ZERO,
        retry_after: None,
    }
}

impl LocalStore {
    /// A store holding at most `max_keys` rate budgets (0 counts as 1), reading time from
    /// `clock`.
    pub fn new(max_keys: usize, clock: Arc<dyn Clock>) -> LocalStore {
        let max_keys = max_keys.max(1);
        // The largest power of two ≤ min(max_keys, 64): every shard holds at least one key and
        // shards × cap never exceeds max_keys.
        let wanted = max_keys.min(MAX_SHARDS);
        let shards = 1usize << (usize::BITS - 1 - wanted.leading_zeros());
        LocalStore {
            shards: (0..shards).map(|_| SharedShard::default()).collect(),
            hasher: RandomState::new(),
            cap: max_keys / shards,
            clock,
            evictions: AtomicU64::new(0),
        }
    }

    fn shard_index(&self, key: &str) -> usize {
        let h = self.hasher.hash_one(key);
        // Shard count is a power of two; the map hashes with its own keys, so using low bits
        // here does not skew it.
        (h as usize) & (self.shards.len() - 1)
    }

    /// Checks every rate limit or quota in `checks` for one request of `cost`, all or nothing:
    /// if every check allows, every budget is charged; if any refuses, none is, and the
    /// decisions of the checks that would have allowed report their budgets as they are.
    /// Concurrency checks are not counted here (see [`LocalStore::acquire`]); their decision
    /// is a neutral "allowed, `limit` remaining". Returns one decision per check, in order.
    pub fn check_all(&self, checks: &[Check<'_>], cost: u64) -> Vec<Decision> {
        let clock = self.clock.now();
        match checks {
            [] => Vec::new(),
            [one] => vec![self.check_one(one, cost, clock)],
            _ => self.check_many(checks, cost, clock),
        }
    }

    fn check_one(&self, check: &Check<'_>, cost: u64, clock: Duration) -> Decision {
        if algo::counting(check.spec).is_none() {
            return not_counted(check.spec.limit);
        }
        let mut guard = lock(&self.shards[self.shard_index(check.key)]);
        let now = guard.now(clock);
        let shard = &mut *guard;
        shard.seq += 1;
        let seen = shard.seq;
        // A known key is decided and updated in place (one lookup).
        if let Some(e) = shard.rates.get_mut(check.key) {
            let Some((next, decision)) = algo::check(Some(e.state), check.spec, now, cost) else {
                return not_counted(check.spec.limit);
            };
            e.seen = seen;
            if decision.allowed {
                e.state = next;
                e.whole_at = algo::whole_at(&next, check.spec);
            }
            return decision;
        }
        let Some((next, decision)) = algo::check(None, check.spec, now, cost) else {
            return not_counted(check.spec.limit);
        };
        if decision.allowed {
            let whole = algo::whole_at(&next, check.spec);
            let evicted = shard.commit(check.key, next, whole, self.cap);
            drop(guard);
            self.count_evictions(evicted);
        }
        decision
    }

    fn check_many(&self, checks: &[Check<'_>], cost: u64, clock: Duration) -> Vec<Decision> {
        // The usual handful of checks is decided without allocating scratch space.
        const INLINE: usize = 8;
        let n = checks.len();
        if n <= INLINE {
            let mut shard_of = [0; INLINE];
            let mut order = [0; INLINE];
            let mut guards: [Option<MutexGuard<'_, Shard>>; INLINE] = std::array::from_fn(|_| None);
            let mut nows = [Duration::ZERO; INLINE];
            let mut planned = [None; INLINE];
            self.decide_all(
                checks,
                cost,
                clock,
                Scratch {
                    shard_of: &mut shard_of[..n],
                    order: &mut order[..n],
                    guards: &mut guards[..n],
                    nows: &mut nows[..n],
                    planned: &mut planned[..n],
                },
            )
        } else {
            let mut shard_of = vec![0; n];
            let mut order = vec![0; n];
            let mut guards: Vec<Option<MutexGuard<'_, Shard>>> = (0..n).map(|_| None).collect();
            let mut nows = vec![Duration::ZERO; n];
            let mut planned = vec![None; n];
            self.decide_all(
                checks,
                cost,
                clock,
                Scratch {
                    shard_of: &mut shard_of,
                    order: &mut order,
                    guards: &mut guards,
                    nows: &mut nows,
                    planned: &mut planned,
                },
            )
        }
    }

    fn decide_all<'s>(
        &'s self,
        checks: &[Check<'_>],
        cost: u64,
        clock: Duration,
        sc: Scratch<'_, 's>,
    ) -> Vec<Decision> {
        for (slot, c) in sc.shard_of.iter_mut().zip(checks) {
            *slot = self.shard_index(c.key);
        }
        sc.order.copy_from_slice(sc.shard_of);
        sc.order.sort_unstable();
        // Deduplicate in place: the first `m` entries are the distinct shards, ascending.
        let mut m = 0;
        for i in 0..sc.order.len() {
            if m == 0 || sc.order[i] != sc.order[m - 1] {
                sc.order[m] = sc.order[i];
                m += 1;
            }
        }
        let order = &sc.order[..m];
        // Locks in ascending shard order: no two callers can wait on each other.
        for (g, &i) in sc.guards.iter_mut().zip(order) {
            *g = Some(lock(&self.shards[i]));
        }
        let guards = &mut sc.guards[..m];
        for (now, g) in sc.nows.iter_mut().zip(guards.iter_mut()) {
            if let Some(g) = g {
                *now = g.now(clock);
            }
        }
        let nows = &sc.nows[..m];
        let slot = |shard: usize| order.binary_search(&shard).unwrap_or(0);

        // Decide every check on the stored state, or on an earlier check's charge of the same
        // key in this request.
        let planned = sc.planned;
        let mut all_allowed = true;
        for (i, c) in checks.iter().enumerate() {
            let g = slot(sc.shard_of[i]);
            let earlier = (0..i)
                .rev()
                .find(|&j| checks[j].key == c.key && planned[j].is_some())
                .and_then(|j| planned[j].map(|(s, _)| s));
            let state = earlier.or_else(|| {
                guards[g]
                    .as_ref()
                    .and_then(|g| g.rates.get(c.key).map(|e| e.state))
            });
            let outcome = algo::check(state, c.spec, nows[g], cost);
            if let Some((_, d)) = outcome {
                all_allowed &= d.allowed;
            }
            planned[i] = outcome;
        }

        let mut out = Vec::with_capacity(checks.len());
        let mut evicted = 0;
        for (i, (c, p)) in checks.iter().zip(planned.iter()).enumerate() {
            let g = slot(sc.shard_of[i]);
            let (Some((next, decision)), Some(shard)) = (*p, guards[g].as_mut()) else {
                out.push(not_counted(c.spec.limit));
                continue;
            };
            if all_allowed {
                let whole = algo::whole_at(&next, c.spec);
                evicted += shard.commit(c.key, next, whole, self.cap);
                out.push(decision);
            } else {
                shard.touch(c.key);
                if decision.allowed {
                    // Nothing was charged: report this budget as it stands.
                    let stored = shard.rates.get(c.key).map(|e| e.state);
                    let as_is = algo::check(stored, c.spec, nows[g], 0).map(|(_, d)| d);
                    out.push(as_is.unwrap_or(decision));
                } else {
                    out.push(decision);
                }
            }
        }
        for g in guards.iter_mut() {
            *g = None;
        }
        self.count_evictions(evicted);
        out
    }

    fn count_evictions(&self, n: u64) {
        if n > 0 {
            self.evictions.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Takes one in-flight slot of `key` if fewer than `limit` are taken; the slot is given back
    /// when the guard drops (on any thread).
    pub fn acquire(&self, key: &str, limit: u64) -> Option<ConcurrencyGuard> {
        let shard = &self.shards[self.shard_index(key)];
        let mut g = lock(shard);
        let current = g.in_flight.get(key).copied().unwrap_or(0);
        let (now_in_flight, decision) = algo::concurrency_acquire(current, limit);
        if !decision.allowed {
            return None;
        }
        match g.in_flight.get_mut(key) {
            Some(n) => *n = now_in_flight,
            None => {
                g.in_flight.insert(key.into(), now_in_flight);
            }
        }
        drop(g);
        Some(ConcurrencyGuard {
            shard: Arc::clone(shard),
            key: key.into(),
            decision,
        })
    }

    /// Keys held: rate budgets plus keys with requests in flight (for metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = lock(s);
                g.rates.len() + g.in_flight.len()
            })
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every budget that is whole again (changes no decision); returns how many. For a
    /// periodic caller that wants memory back between bursts; never required for correctness.
    pub fn sweep(&self) -> usize {
        let clock = self.clock.now();
        self.shards
            .iter()
            .map(|s| {
                let mut g = lock(s);
                let now = g.now(clock).as_nanos();
                let before = g.rates.len();
                g.rates.retain(|_, e| e.whole_at > now);
                before - g.rates.len()
            })
            .sum()
    }

    /// Budgets dropped while still partly used, because their shard was full, since the store
    /// was created (for metrics: each one may have let a client exceed its limit once).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The most rate budgets this store holds.
    pub fn capacity(&self) -> usize {
        self.cap * self.shards.len()
    }
}

/// One in-flight slot of a concurrency limit; gives it back when dropped, on whichever thread.
pub struct ConcurrencyGuard {
    shard: SharedShard,
    key: Box<str>,
    decision: Decision,
}

impl ConcurrencyGuard {
    /// The decision that granted this slot (`remaining`: slots left at that moment).
    pub fn decision(&self) -> Decision {
        self.decision
    }
}

impl std::fmt::Debug for ConcurrencyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyGuard")
            .field("key", &self.key)
            .field("decision", &self.decision)
            .finish()
    }
}

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        let mut g = lock(&self.shard);
        if let Some(n) = g.in_flight.get_mut(&*self.key) {
            *n = algo::concurrency_release(*n);
            if *n == 0 {
                g.in_flight.remove(&*self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::types::{Algorithm, LimitSpec, Period};
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    const T0: Duration = Duration::from_secs(1_699_999_200);
    const NS: Duration = Duration::from_nanos(1);

    fn spec(algorithm: Algorithm, limit: u64, period: Duration) -> LimitSpec {
        LimitSpec {
            algorithm,
            limit,
            period: Period::Fixed(period),
            burst: limit,
        }
    }

    fn store(max_keys: usize) -> (LocalStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(T0));
        (LocalStore::new(max_keys, clock.clone()), clock)
    }

    fn one(s: &LocalStore, key: &str, spec: &LimitSpec, cost: u64) -> Decision {
        s.check_all(&[Check { key, spec }], cost)[0]
    }

    #[test]
    fn types_fit_their_use() {
        fn send_static<T: Send + 'static>() {}
        fn send_sync<T: Send + Sync>() {}
        send_static::<ConcurrencyGuard>();
        send_sync::<LocalStore>();
    }

    #[test]
    fn shards_never_exceed_max_keys() {
        for (max, shards, cap) in [
            (0, 1, 1),
            (1, 1, 1),
            (5, 4, 1),
            (64, 64, 1),
            (100, 64, 1),
            (1000, 64, 15),
        ] {
            let (s, _) = store(max);
            assert_eq!(s.shards.len(), shards, "{max}");
            assert_eq!(s.cap, cap, "{max}");
            assert!(s.capacity() <= max.max(1));
        }
    }

    #[test]
    fn one_limit_counts_and_refuses() {
        let (s, clock) = store(1000);
        let l = spec(Algorithm::FixedWindow, 3, Duration::from_secs(60));
        for i in 0..3 {
            let d = one(&s, "k", &l, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, 2 - i);
        }
        let d = one(&s, "k", &l, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_secs(60)));
        assert!(one(&s, "other", &l, 1).allowed);
        assert_eq!(s.len(), 2);
        clock.advance(Duration::from_secs(60));
        assert!(one(&s, "k", &l, 1).allowed);
        assert!(s.check_all(&[], 1).is_empty());
    }

    #[test]
    fn all_or_nothing_across_limits() {
        let (s, _) = store(1000);
        let wide = spec(Algorithm::Gcra, 10, Duration::from_secs(10));
        let narrow = spec(Algorithm::FixedWindow, 2, Duration::from_secs(10));
        let sliding = spec(Algorithm::SlidingWindow, 10, Duration::from_secs(10));
        let checks = [
            Check {
                key: "route:a",
                spec: &wide,
            },
            Check {
                key: "user:b",
                spec: &narrow,
            },
            Check {
                key: "tenant:c",
                spec: &sliding,
            },
        ];
        for _ in 0..2 {
            assert!(s.check_all(&checks, 1).iter().all(|d| d.allowed));
        }
        let d = s.check_all(&checks, 1);
        assert_eq!(
            d.iter().map(|d| d.allowed).collect::<Vec<_>>(),
            [true, false, true]
        );
        // The limits that would have allowed report their budgets as they stand: untouched.
        assert_eq!(d[0].remaining, 8);
        assert_eq!(d[2].remaining, 8);
        for _ in 0..5 {
            assert!(!s.check_all(&checks, 1)[1].allowed);
        }
        assert_eq!(one(&s, "route:a", &wide, 1).remaining, 7);
        assert_eq!(one(&s, "tenant:c", &sliding, 1).remaining, 7);
        // A concurrency check passed here is neutral.
        let conc = LimitSpec {
            algorithm: Algorithm::Concurrency,
            ..wide
        };
        let d = s.check_all(
            &[
                Check {
                    key: "c",
                    spec: &conc,
                },
                Check {
                    key: "route:a",
                    spec: &wide,
                },
            ],
            1,
        );
        assert!(d[0].allowed && d[1].allowed);
        assert_eq!(d[0].remaining, 10);
        assert_eq!(d[1].remaining, 6);
    }

    #[test]
    fn same_key_twice_shares_one_budget() {
        let (s, _) = store(1000);
        let l = spec(Algorithm::FixedWindow, 5, Duration::from_secs(60));
        let twice = [Check { key: "k", spec: &l }, Check { key: "k", spec: &l }];
        let d = s.check_all(&twice, 1);
        assert_eq!((d[0].remaining, d[1].remaining), (4, 3));
        let d = s.check_all(&twice, 1);
        assert_eq!((d[0].remaining, d[1].remaining), (2, 1));
        // 4 used: the first would fit, the second not; nothing is charged.
        let d = s.check_all(&twice, 1);
        assert!(d[0].allowed && !d[1].allowed);
        assert_eq!(one(&s, "k", &l, 1).remaining, 0);
    }

    #[test]
    fn keys_in_one_shard_never_share_a_budget() {
        let (s, _) = store(1000);
        let long = "x".repeat(10_000);
        let a = format!("{long}a");
        // Find another long key that lands in the same shard.
        let b = (0..)
            .map(|i| format!("{long}{i}"))
            .find(|k| *k != a && s.shard_index(k) == s.shard_index(&a))
            .unwrap();
        let l = spec(Algorithm::Gcra, 1, Duration::from_secs(60));
        assert!(one(&s, &a, &l, 1).allowed);
        assert!(!one(&s, &a, &l, 1).allowed);
        assert!(one(&s, &b, &l, 1).allowed);
    }

    #[test]
    fn calendar_quota_through_the_store() {
        let (s, clock) = store(1000);
        let quota = LimitSpec {
            algorithm: Algorithm::Gcra,
            limit: 2,
            period: Period::CalendarMonth,
            burst: 1,
        };
        // 2024-02-01T00:00:00Z
        let feb = Duration::from_secs(1_706_745_600);
        clock.set(feb - NS);
        assert!(one(&s, "q", &quota, 2).allowed);
        let d = one(&s, "q", &quota, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(NS));
        clock.set(feb);
        let d = one(&s, "q", &quota, 1);
        assert!(d.allowed);
        assert_eq!(d.reset, Duration::from_secs(29 * 86_400));
    }

    #[test]
    fn a_clock_stepping_back_admits_nothing_more() {
        let limits = [
            spec(Algorithm::Gcra, 5, Duration::from_secs(60)),
            spec(Algorithm::FixedWindow, 5, Duration::from_secs(60)),
            spec(Algorithm::SlidingWindow, 5, Duration::from_secs(60)),
        ];
        for l in &limits {
            let (s, clock) = store(1000);
            clock.set(T0 + Duration::from_secs(30));
            for _ in 0..5 {
                assert!(one(&s, "k", l, 1).allowed);
            }
            assert!(!one(&s, "k", l, 1).allowed);
            // Back by an hour: still refused, and a sweep does not forget the budget.
            clock.set(T0 - Duration::from_secs(3600));
            s.sweep();
            assert!(!one(&s, "k", l, 1).allowed, "{l:?}");
            // Forward again, not past where it was: still refused.
            clock.set(T0 + Duration::from_secs(30));
            assert!(!one(&s, "k", l, 1).allowed, "{l:?}");
            // Past the budget's refill: admitted.
            clock.advance(Duration::from_secs(120));
            assert!(one(&s, "k", l, 1).allowed, "{l:?}");
        }
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let (s, clock) = store(512);
        let l = spec(Algorithm::FixedWindow, 10, Duration::from_secs(3600));
        for i in 0..20_000 {
            one(&s, &format!("flood:{i}"), &l, 1);
            if i % 1000 == 0 {
                assert!(s.len() <= 512);
                clock.advance(Duration::from_millis(1));
            }
        }
        assert!(s.len() <= 512);
        assert!(
            s.len() >= 512 - 64 * 2,
            "eviction is by batches, not wholesale: {}",
            s.len()
        );
        assert!(s.evictions() > 0);
    }

    #[test]
    fn a_key_under_pressure_is_not_evicted() {
        let (s, _) = store(512);
        let l = spec(Algorithm::FixedWindow, 3, Duration::from_secs(3600));
        for _ in 0..3 {
            assert!(one(&s, "victim", &l, 1).allowed);
        }
        for i in 0..20_000 {
            one(&s, &format!("flood:{i}"), &l, 1);
            // The client keeps trying (refused tries refresh the key too).
            assert!(!one(&s, "victim", &l, 1).allowed, "after {i} flood keys");
        }
        assert!(s.evictions() > 0);
    }

    #[test]
    fn whole_budgets_go_first() {
        let (s, clock) = store(128);
        let daily = spec(Algorithm::Gcra, 3, Duration::from_secs(86_400));
        let per_second = spec(Algorithm::SlidingWindow, 10, Duration::from_secs(1));
        for _ in 0..3 {
            assert!(one(&s, "victim", &daily, 1).allowed);
        }
        // A flood of keys whose budgets are whole again two seconds later; the victim is idle.
        for i in 0..5_000 {
            clock.advance(Duration::from_secs(2));
            assert!(one(&s, &format!("flood:{i}"), &per_second, 1).allowed);
        }
        assert_eq!(s.evictions(), 0);
        let d = one(&s, "victim", &daily, 1);
        assert!(!d.allowed, "the victim's budget survived: {d:?}");
        assert!(s.len() <= 128);
        clock.advance(Duration::from_secs(86_400));
        assert!(s.sweep() > 0);
        assert_eq!(s.len(), 0);
    }

    /// A full shard drops the budgets closest to whole: a month's quota, used up and then left
    /// alone while an attacker floods the store with fresh minute budgets, is still used up
    /// (dropping the least recently checked would have given the month back).
    #[test]
    fn a_used_quota_outlives_a_flood_of_fresh_keys() {
        let (s, clock) = store(128);
        let quota = LimitSpec {
            algorithm: Algorithm::Gcra,
            limit: 3,
            period: Period::CalendarMonth,
            burst: 3,
        };
        for _ in 0..3 {
            assert!(one(&s, "victim", &quota, 1).allowed);
        }
        let minute = spec(Algorithm::FixedWindow, 10, Duration::from_secs(60));
        for i in 0..5_000 {
            clock.advance(Duration::from_millis(1));
            one(&s, &format!("flood:{i}"), &minute, 1);
        }
        assert!(s.evictions() > 0);
        assert!(!one(&s, "victim", &quota, 1).allowed, "the month came back");
    }

    /// 8 threads × `attempts` on one hot key, clock frozen within each window.
    fn hammer(s: &LocalStore, checks: &[Check<'_>], attempts: usize) -> usize {
        let admitted = AtomicUsize::new(0);
        thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    for _ in 0..attempts {
                        if s.check_all(checks, 1).iter().all(|d| d.allowed) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        admitted.into_inner()
    }

    #[test]
    fn exact_under_concurrency() {
        let (s, clock) = store(10_000);
        for algorithm in [
            Algorithm::Gcra,
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
        ] {
            let l = spec(algorithm, 1000, Duration::from_secs(60));
            let checks = [Check {
                key: "hot",
                spec: &l,
            }];
            let admitted = hammer(&s, &checks, 10_000);
            assert_eq!(admitted, 1000, "{algorithm:?}");
            // Two windows on (the sliding previous window has faded): exactly one budget again.
            clock.advance(Duration::from_secs(120));
            assert_eq!(hammer(&s, &checks, 10_000), 1000, "{algorithm:?}");
            clock.advance(Duration::from_secs(120));
        }
    }

    #[test]
    fn all_or_nothing_stays_exact_under_concurrency() {
        let (s, _) = store(10_000);
        let shared = spec(Algorithm::FixedWindow, 1000, Duration::from_secs(60));
        let own = spec(Algorithm::Gcra, 1_000_000, Duration::from_secs(60));
        let admitted: Vec<usize> = thread::scope(|sc| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let (s, shared, own) = (&s, &shared, &own);
                    sc.spawn(move || {
                        let key = format!("thread:{t}");
                        let checks = [
                            Check {
                                key: &key,
                                spec: own,
                            },
                            Check {
                                key: "shared",
                                spec: shared,
                            },
                        ];
                        (0..10_000)
                            .filter(|_| s.check_all(&checks, 1).iter().all(|d| d.allowed))
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(admitted.iter().sum::<usize>(), 1000);
        // Each thread's own budget was charged exactly for its admitted requests.
        for (t, n) in admitted.iter().enumerate() {
            let key = format!("thread:{t}");
            let d = s.check_all(
                &[Check {
                    key: &key,
                    spec: &own,
                }],
                0,
            )[0];
            assert_eq!(d.remaining, 1_000_000 - *n as u64, "thread {t}");
        }
    }

    /// A clock that moves forward one step at every reading: time advances with the attempts.
    struct SteppingClock {
        reads: AtomicU64,
        step: Duration,
    }

    impl Clock for SteppingClock {
        fn now(&self) -> Duration {
            let n = self.reads.fetch_add(1, Ordering::Relaxed);
            T0 + self.step * u32::try_from(n).unwrap()
        }
    }

    #[test]
    fn sliding_window_within_one_percent_under_concurrency() {
        // 80 000 attempts over five periods: 16 000 attempts per period for a limit of 1000.
        let period = Duration::from_secs(1);
        let clock = Arc::new(SteppingClock {
            reads: AtomicU64::new(0),
            step: period / 16_000,
        });
        let s = LocalStore::new(1000, clock.clone());
        let l = spec(Algorithm::SlidingWindow, 1000, period);
        let times: Vec<Duration> = thread::scope(|sc| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (s, l) = (&s, &l);
                    sc.spawn(move || {
                        let mut admitted = Vec::new();
                        for _ in 0..10_000 {
                            let d = s.check_all(
                                &[Check {
                                    key: "hot",
                                    spec: l,
                                }],
                                1,
                            )[0];
                            if d.allowed {
                                admitted.push(d.reset);
                            }
                        }
                        admitted
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let total = times.len() as f64;
        // One budget per period, five periods.
        assert!((total - 5000.0).abs() <= 50.0, "admitted {total}");
    }

    #[test]
    fn concurrency_guards_count_and_release_on_drop() {
        let (s, _) = store(100);
        let a = s.acquire("c", 2).unwrap();
        assert_eq!(a.decision().remaining, 1);
        let b = s.acquire("c", 2).unwrap();
        assert_eq!(b.decision().remaining, 0);
        assert!(s.acquire("c", 2).is_none());
        assert!(s.acquire("other", 2).is_some());
        assert_eq!(s.len(), 1);
        drop(a);
        let c = s.acquire("c", 2).unwrap();
        // Dropped on another thread.
        thread::spawn(move || drop(b)).join().unwrap();
        let d = s.acquire("c", 2).unwrap();
        assert!(s.acquire("c", 2).is_none());
        drop((c, d));
        assert_eq!(s.len(), 0, "no in-flight key left behind");
        assert!(s.acquire("zero", 0).is_none());
    }

    #[test]
    fn concurrency_is_exact_across_threads() {
        let (s, _) = store(100);
        let held = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let granted = AtomicUsize::new(0);
        thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    for _ in 0..5_000 {
                        if let Some(g) = s.acquire("c", 3) {
                            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            granted.fetch_add(1, Ordering::Relaxed);
                            held.fetch_sub(1, Ordering::SeqCst);
                            drop(g);
                        }
                    }
                });
            }
        });
        assert!(peak.into_inner() <= 3);
        assert!(granted.into_inner() > 0);
        assert_eq!(s.len(), 0);
    }
}
