//! The counting rules, as pure functions over small plain state values: given the stored state
//! of one budget, the limit, the time and the cost of the request, what is stored next and what
//! was decided. No locks, no I/O, no clock: the local store calls them under a shard lock, and
//! they are the reference for any other store.
//!
//! Invariants, for every algorithm:
//! - Nothing here panics or overflows, whatever the spec (a zero limit or period, `u64::MAX`
//!   limits, [`Duration::MAX`] periods) and whatever `now`: arithmetic is done in `u128`
//!   nanoseconds and saturates.
//! - A clock that steps backwards never admits more: a stored window or theoretical arrival time
//!   later than `now` keeps counting as it is (the most recent stored instant wins).
//! - A refused request changes nothing (the returned state is the one given).
//! - `retry_after` is honest: retrying exactly after it (same cost, nothing else counted in
//!   between) succeeds; where the arithmetic allows it, one nanosecond earlier fails. It is `None`
//!   when refused and no wait can help (`cost` above what the limit can ever grant).
//! - Calendar periods are quotas: [`check`] counts them in a fixed window aligned to the UTC
//!   calendar, whatever the algorithm.

use std::time::Duration;

use crate::types::{Algorithm, Decision, LimitSpec, Period};

const NS_PER_SEC: u128 = 1_000_000_000;
const NS_PER_DAY: u128 = 86_400 * NS_PER_SEC;
/// The mean Gregorian month (365.2425 days / 12), the nominal length of a calendar month for the
/// GCRA rate when [`gcra`] is called directly with `Period::CalendarMonth`.
const NS_PER_MEAN_MONTH: u128 = 2_629_746 * NS_PER_SEC;

/// GCRA keeps time in ticks of 2^-32 ns, so that the emission interval `period / limit` is exact
/// to far below a nanosecond even for limits of billions per second (rounding it to whole
/// nanoseconds would admit up to 2× the rate at such limits, or nothing at all).
const TICK_SHIFT: u32 = 32;
const TICKS_PER_NS: u128 = 1 << TICK_SHIFT;

// ---------------------------------------------------------------------------------------------
// Time helpers

/// A nanosecond count as a [`Duration`], saturating at [`Duration::MAX`].
pub fn duration_from_nanos(ns: u128) -> Duration {
    let secs = ns / NS_PER_SEC;
    // `ns % NS_PER_SEC` is below 10^9, so it always fits.
    let sub = u32::try_from(ns % NS_PER_SEC).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(secs) => Duration::new(secs, sub),
        Err(_) => Duration::MAX,
    }
}

fn to_ticks(ns: u128) -> u128 {
    ns.saturating_mul(TICKS_PER_NS)
}

/// Ticks to nanoseconds, rounded up (a wait computed from ticks is never announced short).
fn ticks_to_nanos_ceil(ticks: u128) -> u128 {
    (ticks >> TICK_SHIFT) + u128::from(ticks & (TICKS_PER_NS - 1) != 0)
}

fn ticks_to_duration_ceil(ticks: u128) -> Duration {
    duration_from_nanos(ticks_to_nanos_ceil(ticks))
}

fn ceil_div(a: u128, b: u128) -> u128 {
    if b == 0 {
        return u128::MAX;
    }
    a / b + u128::from(!a.is_multiple_of(b))
}

/// The nominal length of a period in nanoseconds (at least 1).
fn period_nanos(period: Period) -> u128 {
    match period {
        Period::Fixed(d) => d.as_nanos().max(1),
        Period::CalendarDay => NS_PER_DAY,
        Period::CalendarMonth => NS_PER_MEAN_MONTH,
    }
}

// ---------------------------------------------------------------------------------------------
// Calendar arithmetic (proleptic Gregorian, UTC)

/// Days in a 400-year Gregorian cycle (the calendar repeats exactly every 400 years).
const DAYS_PER_CYCLE: u64 = 146_097;
/// Days from 1600-01-01 (the start of a cycle) to 1970-01-01: 370 years, 90 of them leap.
const DAYS_1600_TO_EPOCH: u64 = 135_140;

fn is_leap_in_cycle(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

/// Days from the start of a cycle to the start of its `year`-th year (`year` in 0..=400). Year 0
/// of a cycle is divisible by 400, so leap years among years 0..year are those divisible by 4,
/// minus those by 100, plus those by 400 (counting year 0 in each).
fn days_before_year_in_cycle(year: u64) -> u64 {
    365 * year + year.div_ceil(4) - year.div_ceil(100) + year.div_ceil(400)
}

fn month_lengths(leap: bool) -> [u64; 12] {
    [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ]
}

/// The calendar month holding `day` (days since 1970-01-01): its first day and the first day of
/// the next month, both as days since 1970-01-01.
pub fn month_bounds(day: u64) -> (u64, u64) {
    let d = day.saturating_add(DAYS_1600_TO_EPOCH);
    let r = d % DAYS_PER_CYCLE;
    // A year has at most 366 days, so r / 366 never overshoots; it undershoots by at most 2.
    let mut year = r / 366;
    while year < 399 && days_before_year_in_cycle(year + 1) <= r {
        year += 1;
    }
    let day_of_year = r - days_before_year_in_cycle(year);
    let mut month_start = 0;
    for len in month_lengths(is_leap_in_cycle(year)) {
        if day_of_year < month_start + len {
            let first = day.saturating_sub(day_of_year - month_start);
            return (first, first.saturating_add(len));
        }
        month_start += len;
    }
    // Unreachable (a year's months cover all its days); a one-day window is a safe answer.
    (day, day.saturating_add(1))
}

/// The window of `period` holding the instant `t` (nanoseconds since the epoch): `[start, end)`.
/// Fixed periods align to the epoch; calendar periods to UTC midnight and the first of the month.
pub fn window_of(period: Period, t: u128) -> (u128, u128) {
    match period {
        Period::Fixed(_) | Period::CalendarDay => {
            let p = match period {
                Period::CalendarDay => NS_PER_DAY,
                _ => period_nanos(period),
            };
            let start = t - t % p;
            (start, start.saturating_add(p))
        }
        Period::CalendarMonth => {
            let day = u64::try_from(t / NS_PER_DAY).unwrap_or(u64::MAX);
            let (first, next) = month_bounds(day);
            (
                u128::from(first).saturating_mul(NS_PER_DAY),
                u128::from(next).saturating_mul(NS_PER_DAY),
            )
        }
    }
}

fn refused(spec: &LimitSpec, reset: Duration, retry_after: Option<Duration>) -> Decision {
    Decision {
        allowed: false,
        limit: spec.limit,
        remaining: 0,
        reset,
        retry_after,
    }
}

// ---------------------------------------------------------------------------------------------
// GCRA

/// GCRA state: the theoretical arrival time (TAT), in ticks of 2^-32 ns since the epoch. The
/// budget is whole when `tat <= now`; the default (0) is a whole budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcraState {
    pub tat: u128,
}

/// The emission interval `period / limit` in ticks (at least one tick; `limit` > 0).
fn gcra_interval(spec: &LimitSpec) -> u128 {
    let period = to_ticks(period_nanos(spec.period));
    (period / u128::from(spec.limit.max(1))).max(1)
}

/// GCRA: `limit` per `period` on average, up to `burst` at once.
///
/// With emission interval `I = period / limit` and capacity `burst · I` (burst tolerance
/// `(burst - 1) · I` plus one interval), a request of `cost` cells is admitted when
/// `max(tat, now) + cost · I - now <= burst · I`, and then moves the TAT to that sum.
/// `remaining` is the number of cells still admissible at `now`; `reset` is when the TAT is back
/// to `now` (whole budget).
pub fn gcra(state: GcraState, spec: &LimitSpec, now: Duration, cost: u64) -> (GcraState, Decision) {
    let now_t = to_ticks(now.as_nanos());
    let tat = state.tat.max(now_t);
    let debt = tat - now_t;
    if spec.limit == 0 {
        let ok = cost == 0;
        let d = Decision {
            allowed: ok,
            limit: 0,
            remaining: 0,
            reset: ticks_to_duration_ceil(debt),
            retry_after: None,
        };
        return (state, d);
    }
    let interval = gcra_interval(spec);
    let burst = spec.burst.max(1);
    // Cells already spoken for, rounded up: the admissible ones are those still fully free.
    let used = ceil_div(debt, interval);
    let available = u64::try_from(u128::from(burst).saturating_sub(used)).unwrap_or(0);
    if cost <= available {
        let new_tat = tat.saturating_add(u128::from(cost).saturating_mul(interval));
        let d = Decision {
            allowed: true,
            limit: spec.limit,
            remaining: available - cost,
            reset: ticks_to_duration_ceil(new_tat - now_t),
            retry_after: None,
        };
        return (GcraState { tat: new_tat }, d);
    }
    // Admissible at the first t with tat - t <= (burst - cost) · I.
    let retry_after = (cost <= burst).then(|| {
        let at = tat.saturating_sub(u128::from(burst - cost).saturating_mul(interval));
        ticks_to_duration_ceil(at.saturating_sub(now_t))
    });
    (
        state,
        refused(spec, ticks_to_duration_ceil(debt), retry_after),
    )
}

/// Gives back `cost` cells taken earlier by [`gcra`] (all-or-nothing checks that commit first).
pub fn gcra_refund(state: GcraState, spec: &LimitSpec, cost: u64) -> GcraState {
    if spec.limit == 0 {
        return state;
    }
    let back = u128::from(cost).saturating_mul(gcra_interval(spec));
    GcraState {
        tat: state.tat.saturating_sub(back),
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed window

/// Fixed-window state: the window the count belongs to (its start, ns since the epoch) and the
/// count. The default (window 0, count 0) is a whole budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowState {
    pub start: u128,
    pub count: u64,
}

/// A counter per aligned window (epoch-aligned for fixed periods, UTC calendar for calendar
/// periods). Exact within a window; a refused request counts nothing.
pub fn fixed_window(
    state: WindowState,
    spec: &LimitSpec,
    now: Duration,
    cost: u64,
) -> (WindowState, Decision) {
    let now_ns = now.as_nanos();
    // If the stored window is later than now (the clock stepped back), keep counting in it.
    let at = now_ns.max(state.start);
    let (start, end) = window_of(spec.period, at);
    let count = if state.start >= start { state.count } else { 0 };
    let reset = duration_from_nanos(end.saturating_sub(now_ns));
    // An overflowing count is over any limit.
    if let Some(used) = count.checked_add(cost).filter(|&u| u <= spec.limit) {
        let d = Decision {
            allowed: true,
            limit: spec.limit,
            remaining: spec.limit - used,
            reset,
            retry_after: None,
        };
        return (WindowState { start, count: used }, d);
    }
    let retry_after = (cost <= spec.limit).then_some(reset);
    (state, refused(spec, reset, retry_after))
}

/// Gives back `cost` counted by [`fixed_window`] into the window starting at `charged_start`
/// (the `start` of the state that charge returned); nothing if that window is over.
pub fn fixed_window_refund(state: WindowState, charged_start: u128, cost: u64) -> WindowState {
    if state.start == charged_start {
        WindowState {
            start: state.start,
            count: state.count.saturating_sub(cost),
        }
    } else {
        state
    }
}

// ---------------------------------------------------------------------------------------------
// Sliding window

/// Sliding-window state: the current window's start (ns since the epoch), the count of the
/// window before it, and the current count. The default is a whole budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlidingState {
    pub start: u128,
    pub prev: u64,
    pub cur: u64,
}

/// Bits to drop from nanosecond spans so that a span times a `u64` count fits in `u128`
/// (only for windows longer than 292 years; zero otherwise).
fn span_shift(len: u128) -> u32 {
    (128 - len.leading_zeros()).saturating_sub(63)
}

/// `ceil(count · left / len)` with `left <= len`: the previous window's weighted count.
fn weighted_ceil(count: u64, left: u128, len: u128) -> u64 {
    let k = span_shift(len);
    let len_k = (len >> k).max(1);
    // Round the overlap up when coarsening: the estimate may only err high.
    let left_k = ceil_div(left, 1 << k).min(len_k);
    let w = ceil_div(u128::from(count) * left_k, len_k);
    u64::try_from(w).unwrap_or(u64::MAX)
}

/// `floor(room · len / count)` with `room < count`: how far before a window's end the weighted
/// previous count has fallen to `room`. Coarsened (for huge windows) it only errs low, so the
/// retry time derived from it errs late, never early.
fn fade_span(room: u64, len: u128, count: u64) -> u128 {
    let k = span_shift(len);
    let q = u128::from(room) * (len >> k) / u128::from(count.max(1));
    q << k
}

/// A sliding window estimated from two fixed windows: the previous window's count weighted by
/// the share of it the sliding window still overlaps, plus the current count. Smooth, and
/// approximate (it assumes the previous window's requests were evenly spread).
pub fn sliding_window(
    state: SlidingState,
    spec: &LimitSpec,
    now: Duration,
    cost: u64,
) -> (SlidingState, Decision) {
    let now_ns = now.as_nanos();
    let at = now_ns.max(state.start);
    let (start, end) = window_of(spec.period, at);
    let (prev, cur) = if state.start >= start {
        (state.prev, state.cur)
    } else if start > 0 && state.start >= window_of(spec.period, start - 1).0 {
        (state.cur, 0)
    } else {
        (0, 0)
    };
    let len = end - start;
    let weighted = weighted_ceil(prev, end.saturating_sub(at), len);
    let used = weighted.checked_add(cur).and_then(|u| u.checked_add(cost));
    if let Some(used) = used.filter(|&u| u <= spec.limit) {
        let new_cur = cur.saturating_add(cost);
        // Whole again once nothing weighs: at this window's end if nothing counts in it,
        // otherwise at the next one's end.
        let whole = if new_cur == 0 {
            end
        } else {
            window_of(spec.period, end).1
        };
        let d = Decision {
            allowed: true,
            limit: spec.limit,
            remaining: spec.limit - used,
            reset: duration_from_nanos(whole.saturating_sub(now_ns)),
            retry_after: None,
        };
        return (
            SlidingState {
                start,
                prev,
                cur: new_cur,
            },
            d,
        );
    }
    let whole = if cur == 0 {
        end
    } else {
        window_of(spec.period, end).1
    };
    let reset = duration_from_nanos(whole.saturating_sub(now_ns));
    let retry_after = (cost <= spec.limit).then(|| {
        let at = if cur.checked_add(cost).is_some_and(|u| u <= spec.limit) {
            // This window: wait until the previous count's weight is down to the room left.
            let room = spec.limit - cur - cost;
            end - fade_span(room, len, prev).min(len)
        } else {
            // The next window, where this window's count becomes the previous one.
            let (next_start, next_end) = window_of(spec.period, end);
            let room = spec.limit - cost;
            let next_len = next_end - next_start;
            next_end - fade_span(room, next_len, cur).min(next_len)
        };
        duration_from_nanos(at.saturating_sub(now_ns))
    });
    (state, refused(spec, reset, retry_after))
}

/// Gives back `cost` counted by [`sliding_window`] into the window starting at `charged_start`.
pub fn sliding_window_refund(
    state: SlidingState,
    spec: &LimitSpec,
    charged_start: u128,
    cost: u64,
) -> SlidingState {
    if state.start == charged_start {
        SlidingState {
            cur: state.cur.saturating_sub(cost),
            ..state
        }
    } else if state.start > charged_start
        && window_of(spec.period, state.start - 1).0 == charged_start
    {
        SlidingState {
            prev: state.prev.saturating_sub(cost),
            ..state
        }
    } else {
        state
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency

/// Takes one in-flight slot: admitted while fewer than `limit` are in flight. Returns the new
/// in-flight count. `reset` is zero and `retry_after` `None`: a slot frees when a request ends,
/// not at a known time.
pub fn concurrency_acquire(in_flight: u64, limit: u64) -> (u64, Decision) {
    if in_flight < limit {
        let now_in_flight = in_flight + 1;
        let d = Decision {
            allowed: true,
            limit,
            remaining: limit - now_in_flight,
            reset: Duration::ZERO,
            retry_after: None,
        };
        (now_in_flight, d)
    } else {
        let d = Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: None,
        };
        (in_flight, d)
    }
}

/// Gives back one in-flight slot.
pub fn concurrency_release(in_flight: u64) -> u64 {
    in_flight.saturating_sub(1)
}

// ---------------------------------------------------------------------------------------------
// Dispatch

/// The stored state of one rate-limit or quota budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Gcra(GcraState),
    FixedWindow(WindowState),
    SlidingWindow(SlidingState),
}

/// How a spec is actually counted: calendar periods are quotas in calendar-aligned fixed
/// windows, whatever the algorithm. `None` for [`Algorithm::Concurrency`] (not a rate).
pub fn counting(spec: &LimitSpec) -> Option<Algorithm> {
    match (spec.algorithm, spec.period) {
        (Algorithm::Concurrency, _) => None,
        (_, Period::CalendarDay | Period::CalendarMonth) => Some(Algorithm::FixedWindow),
        (algorithm, Period::Fixed(_)) => Some(algorithm),
    }
}

/// Counts a request of `cost` against `spec`, from the stored `state` (`None`: never seen, or
/// forgotten while whole). A state of another algorithm (the limit was reconfigured) starts over.
/// `None` for concurrency limits, which are acquired and released instead.
pub fn check(
    state: Option<State>,
    spec: &LimitSpec,
    now: Duration,
    cost: u64,
) -> Option<(State, Decision)> {
    let out = match counting(spec)? {
        Algorithm::Gcra => {
            let s = match state {
                Some(State::Gcra(s)) => s,
                _ => GcraState::default(),
            };
            let (s, d) = gcra(s, spec, now, cost);
            (State::Gcra(s), d)
        }
        Algorithm::SlidingWindow => {
            let s = match state {
                Some(State::SlidingWindow(s)) => s,
                _ => SlidingState::default(),
            };
            let (s, d) = sliding_window(s, spec, now, cost);
            (State::SlidingWindow(s), d)
        }
        Algorithm::FixedWindow | Algorithm::Concurrency => {
            let s = match state {
                Some(State::FixedWindow(s)) => s,
                _ => WindowState::default(),
            };
            let (s, d) = fixed_window(s, spec, now, cost);
            (State::FixedWindow(s), d)
        }
    };
    Some(out)
}

/// The instant (ns since the epoch) from which `state` counts exactly like a never-seen budget
/// under `spec`: forgetting it from then on changes no decision (as long as the clock does not
/// step back before it).
pub fn whole_at(state: &State, spec: &LimitSpec) -> u128 {
    match state {
        State::Gcra(s) => ticks_to_nanos_ceil(s.tat),
        State::FixedWindow(s) if s.count == 0 => 0,
        State::FixedWindow(s) => window_of(spec.period, s.start).1,
        State::SlidingWindow(s) if s.cur > 0 => {
            let end = window_of(spec.period, s.start).1;
            window_of(spec.period, end).1
        }
        State::SlidingWindow(s) if s.prev > 0 => window_of(spec.period, s.start).1,
        State::SlidingWindow(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Duration = Duration::from_nanos(1);
    /// 2023-11-14T22:00:00Z: aligned to the hour (and so to seconds and minutes).
    const T0: Duration = Duration::from_secs(1_699_999_200);

    fn spec(algorithm: Algorithm, limit: u64, period: Period, burst: u64) -> LimitSpec {
        LimitSpec {
            algorithm,
            limit,
            period,
            burst,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    /// Days since 1970-01-01, by a naive walk (an oracle independent of `month_bounds`).
    fn naive_days(y: u64, m: u64, d: u64) -> u64 {
        fn leap(y: u64) -> bool {
            (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
        }
        let mut days = 0;
        for yy in 1970..y {
            days += if leap(yy) { 366 } else { 365 };
        }
        let lens = [
            31,
            if leap(y) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        for len in &lens[..(m - 1) as usize] {
            days += len;
        }
        days + d - 1
    }

    fn at(y: u64, m: u64, d: u64) -> Duration {
        secs(naive_days(y, m, d) * 86_400)
    }

    /// Runs one request through `check` and keeps the state.
    struct Budget {
        spec: LimitSpec,
        state: Option<State>,
    }

    impl Budget {
        fn new(spec: LimitSpec) -> Budget {
            Budget { spec, state: None }
        }
        fn hit(&mut self, now: Duration, cost: u64) -> Decision {
            let (s, d) = check(self.state, &self.spec, now, cost).unwrap();
            if d.allowed {
                self.state = Some(s);
            } else {
                assert_eq!(Some(s), self.state.or(Some(s)), "a refusal changes nothing");
            }
            d
        }
        /// Would a request of `cost` pass at `now`? (Leaves the state alone.)
        fn would(&self, now: Duration, cost: u64) -> bool {
            check(self.state, &self.spec, now, cost).unwrap().1.allowed
        }
    }

    // ----- calendar ----------------------------------------------------------------------

    #[test]
    fn calendar_known_dates() {
        assert_eq!(naive_days(2000, 1, 1), 10_957);
        assert_eq!(naive_days(2024, 2, 29), 19_782);
        assert_eq!(naive_days(2100, 3, 1), 47_541);
        assert_eq!(naive_days(2400, 2, 29), 157_113);
        assert_eq!(month_bounds(0), (0, 31));
        assert_eq!(month_bounds(19_782), (19_754, 19_783)); // Feb 2024: 29 days
        assert_eq!(month_bounds(19_388), (19_358, 19_389)); // Jan 2023
        assert_eq!(month_bounds(19_389), (19_389, 19_417)); // Feb 2023: 28 days
    }

    #[test]
    fn month_bounds_matches_a_naive_calendar_for_six_centuries() {
        let mut day = 0;
        for y in 1970..2570 {
            for m in 1..=12 {
                let first = naive_days(y, m, 1);
                assert_eq!(first, day, "{y}-{m}");
                let next = if m == 12 {
                    naive_days(y + 1, 1, 1)
                } else {
                    naive_days(y, m + 1, 1)
                };
                for d in first..next {
                    assert_eq!(month_bounds(d), (first, next), "{y}-{m} day {d}");
                }
                day = next;
            }
        }
    }

    #[test]
    fn calendar_windows_never_panic_at_the_extremes() {
        for t in [
            0,
            1,
            u128::from(u64::MAX),
            Duration::MAX.as_nanos(),
            u128::MAX,
        ] {
            for p in [
                Period::CalendarDay,
                Period::CalendarMonth,
                Period::Fixed(Duration::ZERO),
                Period::Fixed(Duration::MAX),
            ] {
                let (s, e) = window_of(p, t);
                assert!(s <= e, "{p:?} at {t}");
            }
        }
        let _ = month_bounds(u64::MAX);
    }

    // ----- GCRA --------------------------------------------------------------------------

    #[test]
    fn gcra_burst_exactly_at_the_limit_then_one_over() {
        let mut b = Budget::new(spec(Algorithm::Gcra, 10, Period::Fixed(secs(1)), 10));
        for i in 0..10 {
            let d = b.hit(T0, 1);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.reset, ms(100 * (i + 1)));
            assert_eq!(d.limit, 10);
        }
        let d = b.hit(T0, 1);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Some(ms(100)));
        assert_eq!(d.reset, secs(1));
    }

    #[test]
    fn gcra_smaller_burst_spreads_requests() {
        let mut b = Budget::new(spec(Algorithm::Gcra, 10, Period::Fixed(secs(1)), 2));
        assert!(b.hit(T0, 1).allowed);
        assert!(b.hit(T0, 1).allowed);
        let d = b.hit(T0, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(ms(100)));
        assert!(!b.would(T0 + ms(100) - NS, 1));
        assert!(b.hit(T0 + ms(100), 1).allowed);
    }

    #[test]
    fn gcra_refills_over_time() {
        let mut b = Budget::new(spec(Algorithm::Gcra, 10, Period::Fixed(secs(1)), 10));
        for _ in 0..10 {
            assert!(b.hit(T0, 1).allowed);
        }
        // Half a period gives back half the burst.
        let d = b.hit(T0 + ms(500), 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 4);
        // A full period after the last request the budget is whole again.
        let d = b.hit(T0 + ms(1600), 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 9);
    }

    #[test]
    fn gcra_sustained_rate_is_exact() {
        let mut b = Budget::new(spec(Algorithm::Gcra, 10, Period::Fixed(secs(1)), 1));
        let mut admitted = 0;
        let mut t = T0;
        while t < T0 + secs(10) {
            if b.hit(t, 1).allowed {
                admitted += 1;
            }
            t += ms(1);
        }
        assert_eq!(admitted, 100);
    }

    #[test]
    fn gcra_retry_after_is_honest_with_an_inexact_interval() {
        // 3 per second: the interval is 333 333 333.33… ns.
        let mut b = Budget::new(spec(Algorithm::Gcra, 3, Period::Fixed(secs(1)), 1));
        assert!(b.hit(T0, 1).allowed);
        let d = b.hit(T0, 1);
        let r = d.retry_after.unwrap();
        assert_eq!(r, Duration::from_nanos(333_333_334));
        assert!(!b.would(T0 + r - NS, 1));
        assert!(b.hit(T0 + r, 1).allowed);
        // Three intervals make exactly one second: no drift.
        let mut b = Budget::new(spec(Algorithm::Gcra, 3, Period::Fixed(secs(1)), 3));
        assert!(b.hit(T0, 3).allowed);
        assert_eq!(b.hit(T0 + secs(1) - NS, 0).remaining, 2);
        assert_eq!(b.hit(T0 + secs(1), 0).remaining, 3);
    }

    #[test]
    fn gcra_cost_above_one() {
        let mut b = Budget::new(spec(Algorithm::Gcra, 5, Period::Fixed(secs(5)), 5));
        let d = b.hit(T0, 3);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.reset, secs(3));
        let d = b.hit(T0, 3);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(secs(1)));
        assert!(!b.would(T0 + secs(1) - NS, 3));
        assert!(b.would(T0 + secs(1), 3));
        // More than the burst can never pass: no retry time.
        let d = b.hit(T0 + secs(3600), 6);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, None);
        // Cost 0 always passes and reports what is left.
        let d = b.hit(T0, 0);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn gcra_clock_stepping_back_admits_nothing_more() {
        let mut b = Budget::new(spec(Algorithm::Gcra, 10, Period::Fixed(secs(1)), 10));
        for _ in 0..10 {
            assert!(b.hit(T0 + secs(100), 1).allowed);
        }
        let d = b.hit(T0, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(secs(100) + ms(100)));
        assert!(!b.would(T0 + secs(100), 1));
    }

    #[test]
    fn gcra_refund_gives_back_what_was_taken() {
        let s = spec(Algorithm::Gcra, 4, Period::Fixed(secs(4)), 4);
        let (s1, _) = gcra(GcraState::default(), &s, T0, 1);
        let (s2, d) = gcra(s1, &s, T0, 2);
        assert_eq!(d.remaining, 1);
        let back = gcra_refund(s2, &s, 2);
        assert_eq!(back, s1);
        assert_eq!(gcra(back, &s, T0, 3).1.remaining, 0);
    }

    #[test]
    fn gcra_huge_and_degenerate_specs_do_not_overflow() {
        let periods = [
            Period::Fixed(Duration::ZERO),
            Period::Fixed(NS),
            Period::Fixed(Duration::MAX),
            Period::CalendarMonth,
        ];
        let nows = [Duration::ZERO, T0, Duration::MAX];
        for period in periods {
            for limit in [0, 1, u64::MAX] {
                for burst in [0, 1, u64::MAX] {
                    let s = spec(Algorithm::Gcra, limit, period, burst);
                    let mut st = GcraState::default();
                    for now in nows {
                        for cost in [0, 1, u64::MAX] {
                            let (n, _) = gcra(st, &s, now, cost);
                            st = n;
                        }
                    }
                    let _ = gcra_refund(st, &s, u64::MAX);
                }
            }
        }
        // One per Duration::MAX: the second waits (about) forever but is told so.
        let s = spec(Algorithm::Gcra, 1, Period::Fixed(Duration::MAX), 1);
        let (st, d) = gcra(GcraState::default(), &s, T0, 1);
        assert!(d.allowed);
        let (_, d) = gcra(st, &s, T0, 1);
        assert!(!d.allowed);
        assert!(d.retry_after.unwrap() > secs(u64::MAX / 2));
        // A limit of zero refuses everything that costs something.
        let s = spec(Algorithm::Gcra, 0, Period::Fixed(secs(1)), 1);
        let d = gcra(GcraState::default(), &s, T0, 1).1;
        assert!(!d.allowed);
        assert_eq!(d.retry_after, None);
        // A huge rate admits its burst at once and stays exact.
        let s = spec(Algorithm::Gcra, u64::MAX, Period::Fixed(secs(1)), 1000);
        let mut st = GcraState::default();
        for _ in 0..1000 {
            let (n, d) = gcra(st, &s, T0, 1);
            assert!(d.allowed);
            st = n;
        }
        assert!(!gcra(st, &s, T0, 1).1.allowed);
        assert!(gcra(st, &s, T0 + NS, 1).1.allowed);
    }

    // ----- fixed window ------------------------------------------------------------------

    #[test]
    fn fixed_window_boundaries_and_edges() {
        let mut b = Budget::new(spec(Algorithm::FixedWindow, 5, Period::Fixed(secs(60)), 1));
        for i in 0..5 {
            let d = b.hit(T0 + secs(10), 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, 4 - i);
            assert_eq!(d.reset, secs(50));
        }
        let d = b.hit(T0 + secs(10), 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(secs(50)));
        // The last nanosecond of the window is still in it.
        let d = b.hit(T0 + secs(60) - NS, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(NS));
        assert_eq!(d.reset, NS);
        // The first nanosecond of the next one starts over.
        let d = b.hit(T0 + secs(60), 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 4);
        assert_eq!(d.reset, secs(60));
    }

    #[test]
    fn fixed_window_cost_above_one() {
        let mut b = Budget::new(spec(Algorithm::FixedWindow, 10, Period::Fixed(secs(1)), 1));
        assert_eq!(b.hit(T0, 4).remaining, 6);
        assert_eq!(b.hit(T0, 4).remaining, 2);
        let d = b.hit(T0, 3);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(secs(1)));
        assert_eq!(b.hit(T0, 2).remaining, 0);
        let d = b.hit(T0 + secs(5), 11);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, None);
        assert!(b.hit(T0 + secs(5), 10).allowed);
    }

    #[test]
    fn fixed_window_clock_stepping_back_keeps_the_later_window() {
        let mut b = Budget::new(spec(Algorithm::FixedWindow, 3, Period::Fixed(secs(60)), 1));
        for _ in 0..3 {
            assert!(b.hit(T0 + secs(60), 1).allowed);
        }
        // Back into the previous window: still counted against the later one.
        let d = b.hit(T0 + secs(30), 1);
        assert!(!d.allowed);
        assert_eq!(d.reset, secs(90));
        assert_eq!(d.retry_after, Some(secs(90)));
        assert!(!b.would(T0 + secs(120) - NS, 1));
        assert!(b.would(T0 + secs(120), 1));
    }

    #[test]
    fn calendar_day_quota_rolls_at_utc_midnight() {
        let mut b = Budget::new(spec(Algorithm::Gcra, 2, Period::CalendarDay, 1));
        let midnight = at(2024, 3, 11);
        assert_eq!(midnight, secs(1_710_115_200));
        let noon = midnight - secs(12 * 3600);
        assert_eq!(b.hit(noon, 1).reset, secs(12 * 3600));
        assert!(b.hit(midnight - NS, 1).allowed);
        let d = b.hit(midnight - NS, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(NS));
        let d = b.hit(midnight, 1);
        assert!(d.allowed);
        assert_eq!(d.reset, secs(86_400));
    }

    /// Exhausts a monthly quota of 1 on the last nanosecond of `last_day`, then checks the next
    /// day is a new month whose reset is `next_month_days` long.
    fn month_edge(last_day: Duration, next_month_days: u64) {
        let mut b = Budget::new(spec(Algorithm::SlidingWindow, 1, Period::CalendarMonth, 1));
        let edge = last_day + secs(86_400);
        assert!(b.hit(edge - NS, 1).allowed);
        let d = b.hit(edge - NS, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(NS));
        let d = b.hit(edge, 1);
        assert!(d.allowed, "a new month at {edge:?}");
        assert_eq!(d.reset, secs(next_month_days * 86_400));
    }

    #[test]
    fn calendar_month_edges() {
        month_edge(at(2023, 1, 31), 28); // Jan 31 → Feb 1 (non-leap February)
        month_edge(at(2024, 1, 31), 29); // Jan 31 → Feb 1 (leap February)
        month_edge(at(2023, 2, 28), 31); // Feb 28 → Mar 1, non-leap
        month_edge(at(2024, 2, 29), 31); // Feb 29 → Mar 1, leap
        month_edge(at(2023, 12, 31), 31); // Dec 31 → Jan 1
        month_edge(at(2100, 2, 28), 31); // 2100 is not leap
        month_edge(at(2000, 2, 29), 31); // 2000 is
        // Feb 28 → Feb 29 in a leap year is the same month.
        let mut b = Budget::new(spec(Algorithm::FixedWindow, 1, Period::CalendarMonth, 1));
        assert!(b.hit(at(2024, 2, 28), 1).allowed);
        let d = b.hit(at(2024, 2, 29), 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(secs(86_400)));
        assert!(b.hit(at(2024, 3, 1), 1).allowed);
    }

    #[test]
    fn fixed_window_refund_gives_back() {
        let s = spec(Algorithm::FixedWindow, 3, Period::Fixed(secs(60)), 1);
        let (st, _) = fixed_window(WindowState::default(), &s, T0, 2);
        let back = fixed_window_refund(st, st.start, 2);
        assert_eq!(back.count, 0);
        // A refund into a window that is over changes nothing.
        let (later, _) = fixed_window(st, &s, T0 + secs(60), 1);
        assert_eq!(fixed_window_refund(later, st.start, 1), later);
    }

    #[test]
    fn fixed_window_huge_values() {
        for period in [
            Period::Fixed(Duration::ZERO),
            Period::Fixed(Duration::MAX),
            Period::CalendarMonth,
        ] {
            for limit in [0, 1, u64::MAX] {
                let s = spec(Algorithm::FixedWindow, limit, period, 1);
                let mut st = WindowState::default();
                for now in [Duration::MAX, Duration::ZERO, T0] {
                    for cost in [u64::MAX, 1, 0] {
                        st = fixed_window(st, &s, now, cost).0;
                    }
                }
            }
        }
        let s = spec(Algorithm::FixedWindow, u64::MAX, Period::Fixed(secs(1)), 1);
        let (st, d) = fixed_window(WindowState::default(), &s, T0, u64::MAX);
        assert!(d.allowed);
        assert!(!fixed_window(st, &s, T0, 1).1.allowed);
    }

    // ----- sliding window ----------------------------------------------------------------

    #[test]
    fn sliding_window_within_one_window() {
        let mut b = Budget::new(spec(
            Algorithm::SlidingWindow,
            10,
            Period::Fixed(secs(60)),
            1,
        ));
        for i in 0..10 {
            let d = b.hit(T0 + secs(1), 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, 9 - i);
        }
        let d = b.hit(T0 + secs(30), 1);
        assert!(!d.allowed);
        // Next window [60, 120): the previous 10 weigh (120 - t)/60; room for 1 when that is 9,
        // at t = 66 s.
        assert_eq!(d.retry_after, Some(secs(36)));
        assert_eq!(d.reset, secs(90));
    }

    #[test]
    fn sliding_window_previous_window_fades() {
        let mut b = Budget::new(spec(
            Algorithm::SlidingWindow,
            10,
            Period::Fixed(secs(60)),
            1,
        ));
        for _ in 0..10 {
            assert!(b.hit(T0 + secs(59), 1).allowed);
        }
        // First ns of the next window: the previous one weighs fully.
        let d = b.hit(T0 + secs(60), 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(secs(6)));
        assert!(!b.would(T0 + secs(66) - NS, 1));
        let d = b.hit(T0 + secs(66), 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        // Half way through, the previous 10 weigh 5 and 1 is counted: 4 more.
        let d = b.hit(T0 + secs(90), 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 3);
        // Two windows later everything has faded.
        let d = b.hit(T0 + secs(240), 1);
        assert_eq!(d.remaining, 9);
    }

    #[test]
    fn sliding_window_skipped_window_forgets() {
        let mut b = Budget::new(spec(Algorithm::SlidingWindow, 2, Period::Fixed(secs(1)), 1));
        assert!(b.hit(T0, 2).allowed);
        // Half of the previous window still weighs…
        assert!(b.would(T0 + ms(1500), 1));
        assert!(!b.would(T0 + ms(1500), 2));
        // …but a window further on, nothing does.
        assert!(b.would(T0 + secs(2), 2));
    }

    #[test]
    fn sliding_window_cost_and_honest_retry() {
        let mut b = Budget::new(spec(
            Algorithm::SlidingWindow,
            7,
            Period::Fixed(secs(10)),
            1,
        ));
        assert!(b.hit(T0 + secs(3), 5).allowed);
        let d = b.hit(T0 + secs(4), 3);
        assert!(!d.allowed);
        let r = d.retry_after.unwrap();
        assert!(!b.would(T0 + secs(4) + r - NS, 3));
        assert!(b.would(T0 + secs(4) + r, 3));
        assert_eq!(b.hit(T0 + secs(4), 8).retry_after, None);
    }

    #[test]
    fn sliding_window_clock_stepping_back_admits_nothing_more() {
        let mut b = Budget::new(spec(
            Algorithm::SlidingWindow,
            10,
            Period::Fixed(secs(60)),
            1,
        ));
        for _ in 0..10 {
            assert!(b.hit(T0 + secs(30), 1).allowed);
        }
        for _ in 0..5 {
            assert!(b.hit(T0 + secs(90), 1).allowed);
        }
        assert!(!b.would(T0 + secs(90), 1));
        for back in [61, 60, 59, 30, 0] {
            assert!(!b.would(T0 + secs(back), 1), "at {back}s");
        }
    }

    #[test]
    fn sliding_window_refund_gives_back() {
        let s = spec(Algorithm::SlidingWindow, 10, Period::Fixed(secs(60)), 1);
        let (a, _) = sliding_window(SlidingState::default(), &s, T0, 3);
        assert_eq!(sliding_window_refund(a, &s, a.start, 3).cur, 0);
        let (b, _) = sliding_window(a, &s, T0 + secs(60), 1);
        let back = sliding_window_refund(b, &s, a.start, 3);
        assert_eq!((back.prev, back.cur), (0, 1));
    }

    #[test]
    fn sliding_window_huge_values() {
        for period in [
            Period::Fixed(Duration::ZERO),
            Period::Fixed(NS),
            Period::Fixed(Duration::MAX),
            Period::Fixed(Duration::from_secs(u64::MAX / 3)),
        ] {
            for limit in [0, 1, u64::MAX] {
                let s = spec(Algorithm::SlidingWindow, limit, period, 1);
                let mut st = SlidingState::default();
                for now in [Duration::MAX, Duration::ZERO, T0, Duration::MAX - NS] {
                    for cost in [u64::MAX, 1, 0] {
                        let (n, d) = sliding_window(st, &s, now, cost);
                        if let Some(r) = d.retry_after {
                            // Honest even when coarsened: retrying after it passes.
                            let later = now.saturating_add(r);
                            assert!(
                                sliding_window(st, &s, later, cost).1.allowed
                                    || later == Duration::MAX,
                                "{s:?} {st:?} now {now:?} cost {cost} retry {r:?}"
                            );
                        }
                        st = n;
                    }
                }
            }
        }
    }

    // ----- concurrency -------------------------------------------------------------------

    #[test]
    fn concurrency_counts_and_releases() {
        let (n, d) = concurrency_acquire(0, 2);
        assert!(d.allowed);
        assert_eq!((n, d.remaining), (1, 1));
        let (n, d) = concurrency_acquire(n, 2);
        assert_eq!((n, d.remaining, d.allowed), (2, 0, true));
        let (n, d) = concurrency_acquire(n, 2);
        assert_eq!((n, d.allowed), (2, false));
        let n = concurrency_release(n);
        assert!(concurrency_acquire(n, 2).1.allowed);
        assert_eq!(concurrency_release(0), 0);
        assert!(!concurrency_acquire(0, 0).1.allowed);
        assert!(!concurrency_acquire(u64::MAX, u64::MAX).1.allowed);
    }

    // ----- dispatch and properties -------------------------------------------------------

    #[test]
    fn check_dispatches_and_calendar_periods_are_fixed_windows() {
        let month = spec(Algorithm::Gcra, 5, Period::CalendarMonth, 5);
        assert!(matches!(
            check(None, &month, T0, 1),
            Some((State::FixedWindow(_), _))
        ));
        let conc = spec(Algorithm::Concurrency, 5, Period::Fixed(secs(1)), 1);
        assert!(check(None, &conc, T0, 1).is_none());
        // A state of another algorithm starts over.
        let g = spec(Algorithm::Gcra, 1, Period::Fixed(secs(1)), 1);
        let (st, _) = check(None, &month, T0, 5).unwrap();
        assert!(check(Some(st), &g, T0, 1).unwrap().1.allowed);
    }

    /// Arbitrary (even corrupted) stored states, specs and times: nothing panics or overflows
    /// (tests run with overflow checks on).
    #[test]
    fn arbitrary_states_never_panic() {
        let mut rng = Lcg(7);
        let wide = |rng: &mut Lcg| -> u128 {
            match rng.below(4) {
                0 => 0,
                1 => u128::MAX,
                2 => u128::from(rng.next()) << rng.below(70),
                _ => T0.as_nanos() + u128::from(rng.below(1 << 50)),
            }
        };
        let narrow = |rng: &mut Lcg| -> u64 {
            match rng.below(4) {
                0 => 0,
                1 => u64::MAX,
                2 => rng.next(),
                _ => rng.below(100),
            }
        };
        for _ in 0..20_000 {
            let algorithm = [
                Algorithm::Gcra,
                Algorithm::FixedWindow,
                Algorithm::SlidingWindow,
                Algorithm::Concurrency,
            ][rng.below(4) as usize];
            let period = match rng.below(5) {
                0 => Period::Fixed(Duration::from_nanos(narrow(&mut rng))),
                1 => Period::Fixed(Duration::MAX),
                2 => Period::CalendarDay,
                3 => Period::CalendarMonth,
                _ => Period::Fixed(ms(1 + rng.below(100_000))),
            };
            let s = spec(algorithm, narrow(&mut rng), period, narrow(&mut rng));
            let state = match rng.below(4) {
                0 => None,
                1 => Some(State::Gcra(GcraState {
                    tat: wide(&mut rng),
                })),
                2 => Some(State::FixedWindow(WindowState {
                    start: wide(&mut rng),
                    count: narrow(&mut rng),
                })),
                _ => Some(State::SlidingWindow(SlidingState {
                    start: wide(&mut rng),
                    prev: narrow(&mut rng),
                    cur: narrow(&mut rng),
                })),
            };
            let now = match rng.below(3) {
                0 => Duration::MAX,
                1 => Duration::from_nanos(rng.next()),
                _ => T0 + Duration::from_nanos(rng.below(1 << 50)),
            };
            let cost = narrow(&mut rng);
            if let Some((next, _)) = check(state, &s, now, cost) {
                let _ = whole_at(&next, &s);
                match next {
                    State::Gcra(g) => {
                        let _ = gcra_refund(g, &s, cost);
                    }
                    State::FixedWindow(w) => {
                        let _ = fixed_window_refund(w, wide(&mut rng), cost);
                    }
                    State::SlidingWindow(w) => {
                        let _ = sliding_window_refund(w, &s, wide(&mut rng), cost);
                    }
                }
            }
            if let Some(st) = state {
                let _ = whole_at(&st, &s);
            }
            let _ = gcra(
                GcraState {
                    tat: wide(&mut rng),
                },
                &s,
                now,
                cost,
            );
            let _ = fixed_window(
                WindowState {
                    start: wide(&mut rng),
                    count: narrow(&mut rng),
                },
                &s,
                now,
                cost,
            );
            let _ = sliding_window(
                SlidingState {
                    start: wide(&mut rng),
                    prev: narrow(&mut rng),
                    cur: narrow(&mut rng),
                },
                &s,
                now,
                cost,
            );
            let _ = concurrency_acquire(narrow(&mut rng), narrow(&mut rng));
        }
    }

    /// A tiny deterministic generator (no dependency needed for a property loop).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 11
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// For random ordinary specs and request streams: a refusal changes nothing, its
    /// `retry_after` is honest to the nanosecond, `whole_at` is exact, and no fixed window ever
    /// holds more than the limit.
    #[test]
    fn properties_hold_for_random_streams() {
        let mut rng = Lcg(42);
        for _ in 0..300 {
            let algorithm = [
                Algorithm::Gcra,
                Algorithm::FixedWindow,
                Algorithm::SlidingWindow,
            ][rng.below(3) as usize];
            let period = match rng.below(4) {
                0 => Period::Fixed(Duration::from_nanos(1 + rng.below(5_000))),
                1 => Period::Fixed(ms(1 + rng.below(10_000))),
                2 => Period::CalendarDay,
                _ => Period::CalendarMonth,
            };
            let s = spec(algorithm, 1 + rng.below(20), period, 1 + rng.below(20));
            let mut state: Option<State> = None;
            let mut now = T0 + Duration::from_nanos(rng.below(1 << 40));
            let mut window_counts: std::collections::HashMap<u128, u64> = Default::default();
            for _ in 0..200 {
                let span = match period {
                    Period::Fixed(p) => p.as_nanos() as u64,
                    Period::CalendarDay => 86_400_000_000_000,
                    Period::CalendarMonth => 86_400_000_000_000 * 31,
                };
                now += Duration::from_nanos(rng.below(span / 4 + 1));
                let cost = rng.below(4);
                let (next, d) = check(state, &s, now, cost).unwrap();
                if d.allowed {
                    if let State::FixedWindow(w) = next {
                        let c = window_counts.entry(w.start).or_default();
                        *c += cost;
                        assert!(*c <= s.limit, "{s:?}");
                    }
                    if let Some(prev) = state {
                        let whole = whole_at(&prev, &s);
                        if whole <= now.as_nanos() {
                            assert_eq!(check(None, &s, now, cost), Some((next, d)), "{s:?}");
                        }
                    }
                    state = Some(next);
                    continue;
                }
                if let Some(st) = state {
                    assert_eq!(next, st, "a refusal changes nothing");
                }
                if let Some(r) = d.retry_after {
                    assert!(r > Duration::ZERO);
                    assert!(
                        check(state, &s, now + r, cost).unwrap().1.allowed,
                        "{s:?} {r:?}"
                    );
                    assert!(
                        !check(state, &s, now + r - NS, cost).unwrap().1.allowed,
                        "{s:?} {r:?}"
                    );
                } else {
                    assert!(
                        cost > s.limit.min(s.burst)
                            || algorithm != Algorithm::Gcra && cost > s.limit
                    );
                }
            }
        }
    }
}
