//! Adaptive load protection: the gateway watches its own health and backs off before it, or
//! the services behind it, fall over.
//!
//! Two parts:
//!
//! * [`Adaptive`], one per gateway. It takes every upstream answer ([`Adaptive::record_upstream`],
//!   lock-free: atomics in fixed per-slot buckets, no allocation) and, about once a second
//!   ([`Adaptive::tick`]), a sample of the process's CPU and resident memory. From them it
//!   derives a [`Level`], a rate-limit *factor* (limits are multiplied by it) and a shedding
//!   decision per request priority ([`Adaptive::shed`]).
//! * [`ConcurrencyLimiter`], one per upstream: a gradient-style adaptive limit on requests in
//!   flight, so a backend that slows down gets less concurrent work instead of a growing queue.
//!
//! # Signals
//!
//! All computed over the sliding `window`: answers are counted in slots of one second
//! (`window / 60` for windows over a minute), the current slot and the previous ones, so an
//! answer older than `window` has left it.
//!
//! | signal     | value                         | degraded at       | extreme at                    |
//! |------------|-------------------------------|-------------------|-------------------------------|
//! | CPU        | mean of the window's samples  | `cpu_high`        | `(1 + cpu_high) / 2`          |
//! | memory     | latest resident bytes         | `memory_high`     | `1.25 × memory_high`          |
//! | error rate | failed / all upstream answers | `error_rate_high` | `min(2 × high, (1 + high)/2)` |
//! | latency    | upstream p99 (≤ 1/32 off)     | `latency_slo`     | `2 × latency_slo`             |
//!
//! CPU is the process's CPU time over wall time, as a fraction of the cores this process may
//! use (`std::thread::available_parallelism`, which honours affinity and cgroup quotas),
//! averaged over the window so that a one-second spike does not cut limits. The error rate
//! and p99 only count once the window holds at least [`MIN_REQUESTS`] answers (one failure
//! out of two is not a 50 % error rate). A threshold that is not a positive number (or
//! `None`) switches its signal off. On Linux [`Adaptive::tick`] reads `/proc/self/stat` and
//! `/proc/self/status`; elsewhere it has no CPU or memory sample and those signals stay off.
//!
//! # Severity, level and factor
//!
//! Each signal scores 0 below its threshold, 1 at it, 2 at its extreme, linearly between (and
//! on beyond 2). The gateway's severity is `σ = max score + (number of degraded signals − 1)`,
//! capped at 3: one signal at its threshold is 1, two signals at their thresholds (or one at
//! its extreme) are 2.
//!
//! * `σ < 1`: [`Level::Normal`], factor 1.
//! * `1 ≤ σ < 2`: [`Level::Degraded`].
//! * `σ ≥ 2`: [`Level::Severe`] ("several signals degraded, or one extreme").
//! * factor = `max(min_factor, 1 − (1 − min_factor) × σ / 3)` for `σ ≥ 1`: with the default
//!   `min_factor` 0.25, 0.75 at σ = 1, 0.5 at σ = 2, 0.25 at σ = 3.
//!
//! # Hysteresis
//!
//! What is published is a *held* severity. Each tick:
//!
//! * worse than held (`σ_now > σ_held`): held = σ_now at once (step down fast);
//! * not clearly better (`σ_now > σ_held − 0.25`): the recovery timer is reset;
//! * clearly better for `recover_after`: held = `max(σ_now, σ_held − 1)` (one level back;
//!   σ_now itself once that is under 1), and the timer starts again for the next step.
//!
//! A signal hovering at its threshold therefore keeps resetting the timer and the level does
//! not flap; full recovery from the worst takes up to three `recover_after` periods.
//!
//! # Shedding
//!
//! Only at [`Level::Severe`]. Priorities run from 0 (lowest: anonymous) to `max_priority`
//! (most important). With `σ` the held severity, priorities below
//! `1 + ⌊(σ − 2) × (max_priority − 1)⌋` are shed: only priority 0 at σ = 2, every priority
//! but the highest at σ = 3, monotonic in between. **The highest priority is never shed**
//! (so with `max_priority` 0, nothing is): shedding it would hand the most important callers
//! the outage the gateway is trying to prevent, and a collapsing backend is still protected
//! from them by the rate-limit factor and by its [`ConcurrencyLimiter`], which refuses
//! whatever is over the upstream's limit regardless of priority.
//!
//! # Gradient concurrency limit
//!
//! Each upstream's limiter works in windows of `clamp(limit, 10, 500)` completed requests
//! (about one round trip of the current limit). At the end of a window, with `short` the
//! mean latency of its successful requests, `f` its failure fraction (5xx answers, transport
//! errors, timeouts; a permit dropped without [`ConcurrencyPermit::done`] — a request its
//! client abandoned — counts neither way) and `baseline` the long-run "no-load" latency:
//!
//! ```text
//! gradient = clamp((1.5 × baseline + 0.1 ms) / short, 0.5, 1)  // tolerance, jitter slack
//! target   = limit × gradient + sqrt(limit)                      // sqrt: queue allowance
//! target   = limit        if gradient = 1 and the window never had half the limit in flight
//! next     = 0.8 × limit + 0.2 × target                          // no failure: smoothed
//! next     = limit × min(0.9, 1 − f / 2)                         // failures: at once (AIMD)
//! limit    = clamp(next, min, max)
//! baseline = short                          if short < baseline  (follows improvements)
//!            baseline + (short − baseline) / 32   otherwise      (drifts up slowly)
//! ```
//!
//! So fast, healthy answers grow the limit (by about `sqrt(limit) / 5` per window) up to
//! `max`; latency over 1.5× the baseline shrinks it, by up to about 10 % per window;
//! failures shrink it by 10 % (up to 50 % when all fail) per window; it never leaves
//! `[min, max]`. A latency that only creeps up is taken, slowly, as the new baseline: the
//! limiter guards against queueing, not against a backend that is permanently slower.
//! Acquiring never lets more than the current limit in flight (a shrunken limit lets nothing
//! new in until enough requests have finished).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::clock::Clock;

/// The error rate and p99 signals count only once the window holds this many answers.
pub const MIN_REQUESTS: u64 = 20;

/// The severity cap (where the factor reaches `min_factor`).
const MAX_SEVERITY: f64 = 3.0;
/// How much better than the held severity the current one must be for the recovery timer to run.
const RECOVERY_BAND: f64 = 0.25;
/// At most this many slots in the sliding window (longer windows get longer slots).
const MAX_SLOTS: u64 = 60;
/// At most this many CPU samples kept (a tick per second would need 4096 s of window).
const MAX_CPU_SAMPLES: usize = 4096;
/// `/proc/self/stat` counts CPU time in USER_HZ ticks, 100 a second on every Linux ABI.
const USER_HZ: f64 = 100.0;

// ---------------------------------------------------------------------------------------------
// Settings, level, samples

/// What counts as degraded, and how the factor and recovery behave.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveSettings {
    /// Process CPU use (fraction of the cores this process may use, 0..=1) counted as
    /// degraded, e.g. 0.85.
    pub cpu_high: f64,
    /// Resident bytes counted as degraded.
    pub memory_high: Option<u64>,
    /// Upstream 5xx/transport-error fraction counted as degraded, e.g. 0.2.
    pub error_rate_high: f64,
    /// Upstream p99 above it is degraded.
    pub latency_slo: Option<Duration>,
    /// The factor never goes below this, e.g. 0.25 (clamped to 0..=1).
    pub min_factor: f64,
    /// Signals are computed over this sliding window, e.g. 10s.
    pub window: Duration,
    /// Clearly healthier this long before stepping back up one level (hysteresis).
    pub recover_after: Duration,
}

impl Default for AdaptiveSettings {
    fn default() -> Self {
        AdaptiveSettings {
            cpu_high: 0.85,
            memory_high: None,
            error_rate_high: 0.2,
            latency_slo: None,
            min_factor: 0.25,
            window: Duration::from_secs(10),
            recover_after: Duration::from_secs(30),
        }
    }
}

/// How loaded the gateway is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Every signal under its threshold: limits as configured, nothing shed.
    Normal,
    /// One signal over its threshold: limits scaled down, nothing shed.
    Degraded,
    /// Several signals over, or one extreme: limits scaled down further, low priorities shed.
    Severe,
}

impl Level {
    /// The name used in status, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Degraded => "degraded",
            Level::Severe => "severe",
        }
    }

    fn from_severity(severity: f64) -> Level {
        if severity >= 2.0 {
            Level::Severe
        } else if severity >= 1.0 {
            Level::Degraded
        } else {
            Level::Normal
        }
    }

    fn from_u8(v: u8) -> Level {
        match v {
            2 => Level::Severe,
            1 => Level::Degraded,
            _ => Level::Normal,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Level::Normal => 0,
            Level::Degraded => 1,
            Level::Severe => 2,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sample of the process's resources (what [`Adaptive::tick`] reads from `/proc`; tests
/// pass their own to [`Adaptive::tick_with`]). `None`: not known (not Linux, first tick).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// CPU use since the previous sample, as a fraction of the cores available (0..=1).
    pub cpu: Option<f64>,
    /// Resident bytes.
    pub memory: Option<u64>,
}

/// The signals one tick computed (for status and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Signals {
    cpu: Option<f64>,
    memory: Option<u64>,
    requests: u64,
    failures: u64,
    /// `None` under [`MIN_REQUESTS`].
    error_rate: Option<f64>,
    /// `None` under [`MIN_REQUESTS`].
    p99: Option<Duration>,
}

// ---------------------------------------------------------------------------------------------
// Latency histogram: fixed log buckets (16 linear sub-buckets per power of two, in µs)

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Latencies are capped just under 2^36 µs (about 19 hours).
const MAX_EXP: u32 = 35;
const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;

fn bucket_of(latency: Duration) -> usize {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    let us = us.min((1u64 << (MAX_EXP + 1)) - 1);
    if us < SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // ≥ SUB_BITS
    let sub = (us >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(exp - SUB_BITS) * SUB + sub) as usize
}

/// The bucket's lower bound and width, in µs.
fn bucket_bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB {
        return (index, 1);
    }
    let shift = (index - SUB) / SUB;
    let sub = (index - SUB) % SUB;
    ((SUB + sub) << shift, 1 << shift)
}

/// The value reported for a bucket: its middle (error at most 1/32 of the value).
fn bucket_value(index: usize) -> Duration {
    let (low, width) = bucket_bounds(index);
    Duration::from_micros(low + width / 2)
}

/// Nearest-rank quantile `q` of a histogram.
fn quantile(hist: &[u64], q: f64) -> Option<Duration> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(bucket_value(i));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The sliding window of upstream answers

struct Slot {
    /// The slot's index in time + 1 (0: never used).
    tag: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    hist: Box<[AtomicU64]>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            tag: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// A ring of slots, each `slot_nanos` long. Writers rotate a slot with one compare-and-swap on
/// its tag; the winner zeroes it (an answer counted by another writer in that instant may be
/// lost: an accepted approximation for a load signal, in exchange for no lock).
struct Window {
    slot_nanos: u64,
    slots: Box<[Slot]>,
}

impl Window {
    fn new(window: Duration) -> Window {
        let window_nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
        let slot_nanos = window_nanos
            .div_ceil(MAX_SLOTS)
            .max(window_nanos.min(1_000_000_000));
        let count = window_nanos.div_ceil(slot_nanos).max(1);
        Window {
            slot_nanos,
            slots: (0..count).map(|_| Slot::new()).collect(),
        }
    }

    fn index(&self, now: Duration) -> u64 {
        u64::try_from(now.as_nanos() / u128::from(self.slot_nanos)).unwrap_or(u64::MAX - 1)
    }

    fn record(&self, now: Duration, latency: Duration, failed: bool) {
        let index = self.index(now);
        let tag = index + 1;
        let slot = &self.slots[(index % self.slots.len() as u64) as usize];
        let current = slot.tag.load(Ordering::Acquire);
        if current != tag {
            if current > tag {
                return; // a late answer for a slot already reused: drop it
            }
            if slot
                .tag
                .compare_exchange(current, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.requests.store(0, Ordering::Relaxed);
                slot.failures.store(0, Ordering::Relaxed);
                for b in slot.hist.iter() {
                    b.store(0, Ordering::Relaxed);
                }
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            slot.failures.fetch_add(1, Ordering::Relaxed);
        } else {
            slot.hist[bucket_of(latency)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Totals over the slots still inside the window at `now`.
    fn collect(&self, now: Duration) -> (u64, u64, Vec<u64>) {
        let current = self.index(now);
        let len = self.slots.len() as u64;
        let mut requests = 0;
        let mut failures = 0;
        let mut hist = vec![0u64; BUCKETS];
        for slot in self.slots.iter() {
            let tag = slot.tag.load(Ordering::Acquire);
            if tag == 0 {
                continue;
            }
            let index = tag - 1;
            if index > current || index + len <= current {
                continue;
            }
            requests += slot.requests.load(Ordering::Relaxed);
            failures += slot.failures.load(Ordering::Relaxed);
            for (sum, b) in hist.iter_mut().zip(slot.hist.iter()) {
                *sum += b.load(Ordering::Relaxed);
            }
        }
        (requests, failures.min(requests), hist)
    }
}

// ---------------------------------------------------------------------------------------------
// Process sampling (/proc on Linux; nothing elsewhere)

struct ProcSampler {
    cores: f64,
    last: Mutex<Option<(Instant, f64)>>,
}

impl ProcSampler {
    fn new() -> ProcSampler {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        ProcSampler {
            cores: cores as f64,
            last: Mutex::new(None),
        }
    }

    fn sample(&self) -> Sample {
        let now = Instant::now();
        let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_cpu_seconds(&s));
        let memory = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_resident_bytes(&s));
        let mut last = lock(&self.last);
        let cpu = match (cpu_seconds, *last) {
            (Some(cpu), Some((then, cpu_then))) => {
                let wall = now.duration_since(then).as_secs_f64();
                (wall > 0.0).then(|| ((cpu - cpu_then) / (wall * self.cores)).clamp(0.0, 1.0))
            }
            _ => None,
        };
        *last = cpu_seconds.map(|c| (now, c));
        Sample { cpu, memory }
    }
}

/// User + system CPU seconds of the whole process, from `/proc/self/stat`.
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Resident bytes, from `/proc/self/status` (`VmRSS: N kB`: no page size to guess).
fn parse_resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Severity

/// A signal's score: 0 under `high`, 1 at it, 2 at `extreme`, linear between and beyond.
fn score(value: f64, high: f64, extreme: f64) -> f64 {
    let enabled = high > 0.0 && high.is_finite();
    if !enabled || value.is_nan() || value < high {
        return 0.0;
    }
    if extreme - high <= f64::EPSILON * high.max(1.0) {
        return 2.0;
    }
    1.0 + (value - high) / (extreme - high)
}

fn severity(signals: &Signals, settings: &AdaptiveSettings) -> f64 {
    let mut scores = [0.0f64; 4];
    if let Some(cpu) = signals.cpu {
        let high = settings.cpu_high;
        scores[0] = score(cpu, high, (1.0 + high) / 2.0);
    }
    if let (Some(memory), Some(high)) = (signals.memory, settings.memory_high) {
        let high = high as f64;
        scores[1] = score(memory as f64, high, high * 1.25);
    }
    if let Some(rate) = signals.error_rate {
        let high = settings.error_rate_high;
        scores[2] = score(rate, high, (2.0 * high).min((1.0 + high) / 2.0));
    }
    if let (Some(p99), Some(slo)) = (signals.p99, settings.latency_slo) {
        let slo = slo.as_secs_f64();
        scores[3] = score(p99.as_secs_f64(), slo, 2.0 * slo);
    }
    let degraded = scores.iter().filter(|s| **s >= 1.0).count();
    if degraded == 0 {
        return 0.0;
    }
    let max = scores.iter().copied().fold(0.0, f64::max);
    (max + (degraded - 1) as f64).min(MAX_SEVERITY)
}

fn factor_for(severity: f64, min_factor: f64) -> f64 {
    if severity < 1.0 {
        return 1.0;
    }
    (1.0 - (1.0 - min_factor) * severity.min(MAX_SEVERITY) / MAX_SEVERITY).max(min_factor)
}

// ---------------------------------------------------------------------------------------------
// Adaptive

struct TickState {
    cpu_samples: VecDeque<(Duration, f64)>,
    memory: Option<u64>,
    held: f64,
    now: f64,
    calm_since: Option<Duration>,
    signals: Signals,
}

/// The gateway's load level, rate-limit factor and shedding decision. Long-lived, shared
/// (`Send + Sync`); see the module docs for the rules.
pub struct Adaptive {
    settings: AdaptiveSettings,
    clock: Arc<dyn Clock>,
    window: Window,
    sampler: ProcSampler,
    state: Mutex<TickState>,
    // Published by `tick`, read on the request path.
    level: AtomicU8,
    factor: AtomicU64,
    severity: AtomicU64,
}

impl std::fmt::Debug for Adaptive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adaptive")
            .field("settings", &self.settings)
            .field("level", &self.level())
            .field("factor", &self.factor())
            .finish_non_exhaustive()
    }
}

impl Adaptive {
    pub fn new(settings: AdaptiveSettings, clock: Arc<dyn Clock>) -> Adaptive {
        let mut settings = settings;
        settings.min_factor = if settings.min_factor.is_nan() {
            1.0
        } else {
            settings.min_factor.clamp(0.0, 1.0)
        };
        Adaptive {
            window: Window::new(settings.window),
            settings,
            clock,
            sampler: ProcSampler::new(),
            state: Mutex::new(TickState {
                cpu_samples: VecDeque::new(),
                memory: None,
                held: 0.0,
                now: 0.0,
                calm_since: None,
                signals: Signals::default(),
            }),
            level: AtomicU8::new(Level::Normal.to_u8()),
            factor: AtomicU64::new(1.0f64.to_bits()),
            severity: AtomicU64::new(0.0f64.to_bits()),
        }
    }

    pub fn settings(&self) -> &AdaptiveSettings {
        &self.settings
    }

    /// One upstream answer (`failed`: 5xx or transport error; its latency is not counted).
    /// Lock-free, no allocation.
    pub fn record_upstream(&self, latency: Duration, failed: bool) {
        self.window.record(self.clock.now(), latency, failed);
    }

    /// Samples the process's CPU and memory and updates level and factor. About once a second.
    pub fn tick(&self) {
        let sample = self.sampler.sample();
        self.tick_with(sample);
    }

    /// [`Adaptive::tick`] with a given resource sample.
    pub fn tick_with(&self, sample: Sample) {
        let now = self.clock.now();
        let (requests, failures, hist) = self.window.collect(now);
        let mut state = lock(&self.state);

        if state.cpu_samples.back().is_some_and(|(t, _)| *t > now) {
            state.cpu_samples.clear(); // the wall clock stepped back
        }
        if let Some(cpu) = sample.cpu.filter(|c| c.is_finite()) {
            state.cpu_samples.push_back((now, cpu.clamp(0.0, 1.0)));
            if state.cpu_samples.len() > MAX_CPU_SAMPLES {
                state.cpu_samples.pop_front();
            }
        }
        // Samples older than the window leave it; the latest always counts.
        let oldest = now.saturating_sub(self.settings.window);
        while state.cpu_samples.len() > 1
            && state.cpu_samples.front().is_some_and(|(t, _)| *t <= oldest)
        {
            state.cpu_samples.pop_front();
        }
        if sample.memory.is_some() {
            state.memory = sample.memory;
        }
        let cpu = (!state.cpu_samples.is_empty()).then(|| {
            state.cpu_samples.iter().map(|(_, c)| c).sum::<f64>() / state.cpu_samples.len() as f64
        });
        let enough = requests >= MIN_REQUESTS;
        let signals = Signals {
            cpu,
            memory: state.memory,
            requests,
            failures,
            error_rate: enough.then(|| failures as f64 / requests as f64),
            p99: if enough { quantile(&hist, 0.99) } else { None },
        };
        let current = severity(&signals, &self.settings);
        state.signals = signals;
        state.now = current;

        if current > state.held {
            state.held = current;
            state.calm_since = None;
        } else if current > state.held - RECOVERY_BAND {
            state.calm_since = None;
        } else {
            let since = *state.calm_since.get_or_insert(now);
            if now.saturating_sub(since) >= self.settings.recover_after {
                let stepped = current.max(state.held - 1.0);
                // Back under degraded is back to normal: no invisible residue.
                state.held = if stepped < 1.0 { current } else { stepped };
                state.calm_since = (state.held > 0.0).then_some(now);
            }
        }

        let held = state.held;
        self.severity.store(held.to_bits(), Ordering::Release);
        self.factor.store(
            factor_for(held, self.settings.min_factor).to_bits(),
            Ordering::Release,
        );
        self.level
            .store(Level::from_severity(held).to_u8(), Ordering::Release);
    }

    pub fn level(&self) -> Level {
        Level::from_u8(self.level.load(Ordering::Acquire))
    }

    /// Multiply rate limits by this: 1.0 at normal, down to `min_factor`.
    pub fn factor(&self) -> f64 {
        f64::from_bits(self.factor.load(Ordering::Acquire))
    }

    /// The held severity σ (0 normal, 1 degraded, 2 severe, 3 worst).
    pub fn severity(&self) -> f64 {
        f64::from_bits(self.severity.load(Ordering::Acquire))
    }

    /// Whether a request of this priority (0: lowest, anonymous; `max_priority`: most
    /// important) is shed now. Only at [`Level::Severe`], lowest priorities first, more as
    /// severity grows; never `max_priority` (nor above it). See the module docs.
    pub fn shed(&self, priority: u8, max_priority: u8) -> bool {
        shed_at(self.severity(), priority, max_priority)
    }

    /// A `Retry-After` for shed requests: the earliest the level can step back.
    pub fn retry_after(&self) -> Duration {
        self.settings.recover_after.max(Duration::from_secs(1))
    }

    /// Level, factor, severity and the signals of the last tick, for the admin API and metrics.
    pub fn status(&self) -> serde_json::Value {
        let state = lock(&self.state);
        let s = &state.signals;
        let now = self.clock.now();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        json!({
            "level": self.level().as_str(),
            "factor": self.factor(),
            "severity": state.held,
            "severity_now": state.now,
            "recovering_for_ms": state.calm_since.map(|t| ms(now.saturating_sub(t))),
            "recover_after_ms": ms(self.settings.recover_after),
            "window_ms": ms(self.settings.window),
            "signals": {
                "cpu": s.cpu,
                "cpu_high": self.settings.cpu_high,
                "memory_bytes": s.memory,
                "memory_high": self.settings.memory_high,
                "requests": s.requests,
                "failures": s.failures,
                "error_rate": s.error_rate,
                "error_rate_high": self.settings.error_rate_high,
                "latency_p99_ms": s.p99.map(ms),
                "latency_slo_ms": self.settings.latency_slo.map(ms),
            },
        })
    }
}

fn shed_at(severity: f64, priority: u8, max_priority: u8) -> bool {
    if severity < 2.0 || priority >= max_priority {
        return false;
    }
    let over = (severity.min(MAX_SEVERITY) - 2.0).max(0.0);
    let shed_below = 1 + (over * f64::from(max_priority - 1)).floor() as u32;
    u32::from(priority) < shed_below.min(u32::from(max_priority))
}

// ---------------------------------------------------------------------------------------------
// Gradient concurrency limiter

const MIN_WINDOW: u32 = 10;
const MAX_WINDOW: u32 = 500;
const TOLERANCE: f64 = 1.5;
const MIN_GRADIENT: f64 = 0.5;
const SMOOTHING: f64 = 0.2;
const MAX_BACKOFF: f64 = 0.9;
const BASELINE_DRIFT: f64 = 1.0 / 32.0;
/// Seconds of latency rise always tolerated (sub-millisecond jitter is not queueing).
const SLACK: f64 = 0.000_1;

struct Gradient {
    limit: f64,
    baseline: Option<f64>,
}

/// A gradient-style adaptive limit on one upstream's requests in flight (module docs: the
/// update rule). `Send + Sync`; share it in an `Arc`.
pub struct ConcurrencyLimiter {
    min: u32,
    max: u32,
    limit: AtomicU32,
    in_flight: AtomicU32,
    // The current window, accumulated lock-free; whoever completes it takes `gradient`.
    samples: AtomicU32,
    ok: AtomicU32,
    failures: AtomicU32,
    latency_sum_us: AtomicU64,
    peak_in_flight: AtomicU32,
    gradient: Mutex<Gradient>,
}

impl std::fmt::Debug for ConcurrencyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimiter")
            .field("min", &self.min)
            .field("max", &self.max)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl ConcurrencyLimiter {
    /// `min` is raised to 1 and `max` to `min`; `initial` is clamped between them.
    pub fn new(min: u32, max: u32, initial: u32) -> ConcurrencyLimiter {
        let min = min.max(1);
        let max = max.max(min);
        let initial = initial.clamp(min, max);
        ConcurrencyLimiter {
            min,
            max,
            limit: AtomicU32::new(initial),
            in_flight: AtomicU32::new(0),
            samples: AtomicU32::new(0),
            ok: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            latency_sum_us: AtomicU64::new(0),
            peak_in_flight: AtomicU32::new(0),
            gradient: Mutex::new(Gradient {
                limit: f64::from(initial),
                baseline: None,
            }),
        }
    }

    /// A slot, or `None` when the current limit is in flight already (answer 503).
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConcurrencyPermit> {
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            if current >= self.limit.load(Ordering::Acquire) {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.peak_in_flight
            .fetch_max(current + 1, Ordering::Relaxed);
        Some(ConcurrencyPermit {
            limiter: Some(Arc::clone(self)),
        })
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The "no-load" latency estimate, once known.
    pub fn baseline(&self) -> Option<Duration> {
        lock(&self.gradient).baseline.map(Duration::from_secs_f64)
    }

    fn complete(&self, latency: Duration, failed: bool) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        } else {
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
            self.ok.fetch_add(1, Ordering::Relaxed);
        }
        let window = self.limit().clamp(MIN_WINDOW, MAX_WINDOW);
        let seen = self.samples.fetch_add(1, Ordering::AcqRel) + 1;
        if seen < window {
            return;
        }
        // Whoever completes the window updates; anyone finding the lock taken carries on.
        let Ok(mut gradient) = self.gradient.try_lock() else {
            return;
        };
        if self.samples.load(Ordering::Acquire) < window {
            return; // closed by someone else meanwhile
        }
        self.samples.store(0, Ordering::Release);
        let ok = self.ok.swap(0, Ordering::AcqRel);
        let failures = self.failures.swap(0, Ordering::AcqRel);
        let sum_us = self.latency_sum_us.swap(0, Ordering::AcqRel);
        let peak = self.peak_in_flight.swap(self.in_flight(), Ordering::AcqRel);
        let short = (ok > 0).then(|| sum_us as f64 / 1e6 / f64::from(ok));
        let failure_rate = if ok + failures == 0 {
            0.0
        } else {
            f64::from(failures) / f64::from(ok + failures)
        };
        let limit = gradient_update(&mut gradient, short, failure_rate, peak, self.min, self.max);
        self.limit.store(limit, Ordering::Release);
    }
}

/// One window's update (module docs); returns the new integer limit.
fn gradient_update(
    g: &mut Gradient,
    short: Option<f64>,
    failure_rate: f64,
    peak_in_flight: u32,
    min: u32,
    max: u32,
) -> u32 {
    let limit = g.limit;
    let mut target = limit;
    if let Some(short) = short.filter(|s| s.is_finite()) {
        let baseline = *g.baseline.get_or_insert(short);
        let gradient = if short <= 0.0 {
            1.0
        } else {
            ((TOLERANCE * baseline + SLACK) / short).clamp(MIN_GRADIENT, 1.0)
        };
        let app_limited = f64::from(peak_in_flight) * 2.0 < limit;
        target = if gradient >= 1.0 && app_limited {
            limit
        } else {
            limit * gradient + limit.sqrt()
        };
        g.baseline = Some(if short < baseline {
            short
        } else {
            baseline + (short - baseline) * BASELINE_DRIFT
        });
    }
    let next = if failure_rate > 0.0 {
        // Failures are not smoothed: a multiplicative decrease at once, as in AIMD.
        limit * MAX_BACKOFF.min(1.0 - failure_rate / 2.0)
    } else {
        (1.0 - SMOOTHING) * limit + SMOOTHING * target
    };
    let next = next.clamp(f64::from(min), f64::from(max));
    g.limit = next;
    // Published rounded down when shrinking, and up when growing (so growth from small limits
    // is not stuck at one integer).
    let published = if next >= limit {
        next.ceil()
    } else {
        next.floor()
    };
    (published as u32).clamp(min, max)
}

/// One request's slot in a [`ConcurrencyLimiter`]. Finish it with [`ConcurrencyPermit::done`]
/// (timeouts and transport errors are failures there); dropping it without — the request
/// abandoned by its client while the upstream worked on it — releases the slot and says
/// nothing of the upstream, so that a client resetting its own requests cannot make the limit
/// shrink for everyone.
#[derive(Debug)]
pub struct ConcurrencyPermit {
    limiter: Option<Arc<ConcurrencyLimiter>>,
}

impl ConcurrencyPermit {
    /// The request ended: its latency, and whether it failed (5xx, transport error, timeout).
    pub fn done(mut self, latency: Duration, failed: bool) {
        if let Some(limiter) = self.limiter.take() {
            limiter.complete(latency, failed);
        }
    }
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        if let Some(limiter) = self.limiter.take() {
            limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::atomic::AtomicBool;

    const SEC: Duration = Duration::from_secs(1);

    fn settings() -> AdaptiveSettings {
        AdaptiveSettings {
            cpu_high: 0.8,
            memory_high: Some(1_000_000),
            error_rate_high: 0.2,
            latency_slo: Some(Duration::from_millis(100)),
            min_factor: 0.25,
            window: Duration::from_secs(10),
            recover_after: Duration::from_secs(30),
        }
    }

    fn adaptive(s: AdaptiveSettings) -> (Adaptive, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_700_000_000)));
        (Adaptive::new(s, clock.clone()), clock)
    }

    fn cpu(c: f64) -> Sample {
        Sample {
            cpu: Some(c),
            memory: Some(100_000),
        }
    }

    /// Advances one second and ticks with `sample`, `n` times.
    fn ticks(a: &Adaptive, clock: &ManualClock, sample: Sample, n: usize) {
        for _ in 0..n {
            clock.advance(SEC);
            a.tick_with(sample);
        }
    }

    fn signal(a: &Adaptive, name: &str) -> serde_json::Value {
        a.status()["signals"][name].clone()
    }

    #[test]
    fn healthy_gateway_stays_normal_at_factor_one() {
        let (a, clock) = adaptive(settings());
        for _ in 0..120 {
            clock.advance(SEC);
            for i in 0..50 {
                a.record_upstream(Duration::from_millis(10 + i), i == 0);
            }
            a.tick_with(cpu(0.5));
        }
        assert_eq!(a.level(), Level::Normal);
        assert_eq!(a.factor(), 1.0);
        assert!((0..=3).all(|p| !a.shed(p, 3)));
        assert_eq!(a.status()["level"], "normal");
    }

    #[test]
    fn high_cpu_degrades() {
        let (a, clock) = adaptive(settings());
        ticks(&a, &clock, cpu(0.79), 20);
        assert_eq!(a.level(), Level::Normal);
        ticks(&a, &clock, cpu(0.82), 20);
        assert_eq!(a.level(), Level::Degraded);
        let f = a.factor();
        assert!((0.25..1.0).contains(&f), "{f}");
    }

    #[test]
    fn high_memory_degrades() {
        let (a, clock) = adaptive(settings());
        let sample = |m| Sample {
            cpu: Some(0.1),
            memory: Some(m),
        };
        ticks(&a, &clock, sample(999_999), 3);
        assert_eq!(a.level(), Level::Normal);
        ticks(&a, &clock, sample(1_100_000), 1);
        assert_eq!(a.level(), Level::Degraded);
        assert_eq!(signal(&a, "memory_bytes"), 1_100_000);
        // Extreme (1.25×) is severe on its own.
        ticks(&a, &clock, sample(1_300_000), 1);
        assert_eq!(a.level(), Level::Severe);
    }

    #[test]
    fn error_rate_degrades_once_there_are_enough_answers() {
        let (a, clock) = adaptive(settings());
        // 3 of 10 failed: too few answers to judge.
        for i in 0..10 {
            a.record_upstream(Duration::from_millis(5), i < 3);
        }
        ticks(&a, &clock, cpu(0.1), 1);
        assert_eq!(a.level(), Level::Normal);
        assert_eq!(signal(&a, "error_rate"), serde_json::Value::Null);
        // 3 of 30 (10 %) in the window: under 0.2.
        for _ in 0..20 {
            a.record_upstream(Duration::from_millis(5), false);
        }
        ticks(&a, &clock, cpu(0.1), 1);
        assert_eq!(a.level(), Level::Normal);
        // 10 of 40 (25 %).
        for _ in 0..7 {
            a.record_upstream(Duration::from_millis(5), true);
        }
        for _ in 0..3 {
            a.record_upstream(Duration::from_millis(5), false);
        }
        ticks(&a, &clock, cpu(0.1), 1);
        assert_eq!(a.level(), Level::Degraded);
        assert_eq!(signal(&a, "error_rate"), 0.25);
        assert_eq!(signal(&a, "failures"), 10);
        // 50 %: past the extreme (0.4): severe.
        for _ in 0..20 {
            a.record_upstream(Duration::from_millis(5), true);
        }
        ticks(&a, &clock, cpu(0.1), 1);
        assert_eq!(a.level(), Level::Severe);
    }

    #[test]
    fn p99_over_the_slo_degrades() {
        let (a, clock) = adaptive(settings());
        // 2 % of answers at 150 ms: p99 is 150 ms, over the 100 ms SLO.
        for i in 0..100 {
            let ms = if i < 98 { 20 } else { 150 };
            a.record_upstream(Duration::from_millis(ms), false);
        }
        ticks(&a, &clock, cpu(0.1), 1);
        assert_eq!(a.level(), Level::Degraded);
        let p99 = signal(&a, "latency_p99_ms").as_f64().unwrap_or(0.0);
        assert!((p99 - 150.0).abs() <= 150.0 / 32.0, "{p99}");

        // The same with only 1 % slow: p99 is the fast value.
        let (a, clock) = adaptive(settings());
        for i in 0..100 {
            let ms = if i < 99 { 20 } else { 150 };
            a.record_upstream(Duration::from_millis(ms), false);
        }
        ticks(&a, &clock, cpu(0.1), 1);
        assert_eq!(a.level(), Level::Normal);
    }

    #[test]
    fn p99_matches_a_sorted_reference_within_bucket_precision() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (n, spread_us) in [
            (25usize, 900u64),
            (1000, 50_000),
            (20_000, 3_000_000),
            (500, 12),
        ] {
            let (a, clock) = adaptive(settings());
            let mut reference = Vec::with_capacity(n);
            for _ in 0..n {
                // Skewed: mostly small, a long tail.
                let r = next();
                let us = (r % spread_us) * (1 + (r >> 60)) / 4 + 1;
                reference.push(us);
                a.record_upstream(Duration::from_micros(us), false);
            }
            clock.advance(Duration::from_millis(100));
            a.tick_with(Sample::default());
            reference.sort_unstable();
            let rank = (0.99 * n as f64).ceil() as usize;
            let want = reference[rank - 1] as f64 / 1000.0;
            let got = signal(&a, "latency_p99_ms").as_f64().unwrap_or(-1.0);
            assert!(
                (got - want).abs() <= want / 16.0 + 0.001,
                "n={n}: p99 {got} ms, reference {want} ms"
            );
        }
    }

    #[test]
    fn histogram_buckets_cover_every_latency() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            15,
            16,
            17,
            31,
            32,
            1000,
            123_456,
            1 << 35,
            u64::MAX / 2,
        ] {
            let b = bucket_of(Duration::from_micros(us));
            assert!(b < BUCKETS && b >= last, "{us}: {b}");
            last = b;
            let (low, width) = bucket_bounds(b);
            let capped = us.min((1 << (MAX_EXP + 1)) - 1);
            assert!(low <= capped && capped < low + width, "{us}: {low}+{width}");
        }
        assert_eq!(bucket_of(Duration::MAX), BUCKETS - 1);
    }

    #[test]
    fn old_answers_leave_the_window() {
        let (a, clock) = adaptive(settings());
        for _ in 0..30 {
            a.record_upstream(Duration::from_millis(5), true);
        }
        clock.advance(Duration::from_secs(5));
        for _ in 0..30 {
            a.record_upstream(Duration::from_millis(5), false);
        }
        a.tick_with(cpu(0.1));
        assert_eq!(signal(&a, "requests"), 60);
        assert_eq!(a.level(), Level::Severe); // 50 % failures

        // 10 s after the failures they have left; the successes are still in.
        clock.advance(Duration::from_secs(5));
        a.tick_with(cpu(0.1));
        assert_eq!(signal(&a, "requests"), 30);
        assert_eq!(signal(&a, "failures"), 0);
        clock.advance(Duration::from_secs(5));
        a.tick_with(cpu(0.1));
        assert_eq!(signal(&a, "requests"), 0);

        // A slot reused a window later starts from zero.
        for _ in 0..3 {
            a.record_upstream(Duration::from_millis(5), false);
        }
        a.tick_with(cpu(0.1));
        assert_eq!(signal(&a, "requests"), 3);
    }

    #[test]
    fn old_cpu_samples_leave_the_window() {
        let (a, clock) = adaptive(settings());
        ticks(&a, &clock, cpu(1.0), 1);
        ticks(&a, &clock, cpu(0.0), 8);
        let mean = signal(&a, "cpu").as_f64().unwrap_or(-1.0);
        assert!((mean - 1.0 / 9.0).abs() < 1e-9, "{mean}");
        ticks(&a, &clock, cpu(0.0), 2);
        assert_eq!(signal(&a, "cpu"), 0.0);
    }

    #[test]
    fn a_one_second_cpu_spike_is_averaged_out() {
        let (a, clock) = adaptive(settings());
        ticks(&a, &clock, cpu(0.5), 9);
        ticks(&a, &clock, cpu(1.0), 1);
        assert_eq!(a.level(), Level::Normal);
        ticks(&a, &clock, cpu(1.0), 5);
        assert_eq!(a.level(), Level::Degraded);
    }

    #[test]
    fn severe_when_several_signals_or_one_extreme() {
        // Two signals at their thresholds.
        let (a, clock) = adaptive(settings());
        let both = |c, m| Sample {
            cpu: Some(c),
            memory: Some(m),
        };
        ticks(&a, &clock, both(0.8, 1_000_000), 1);
        assert_eq!(a.level(), Level::Severe);
        assert_eq!(a.factor(), 0.5);
        // Only one of them.
        let (a, clock) = adaptive(settings());
        ticks(&a, &clock, both(0.79, 1_000_000), 1);
        assert_eq!(a.level(), Level::Degraded);
        assert_eq!(a.factor(), 0.75);
        // One extreme signal: CPU at (1 + 0.8) / 2.
        let (a, clock) = adaptive(settings());
        ticks(&a, &clock, cpu(0.9), 1);
        assert_eq!(a.level(), Level::Severe);
        // Everything at its worst: the factor floor.
        let (a, clock) = adaptive(settings());
        for _ in 0..100 {
            a.record_upstream(Duration::from_secs(1), false);
            a.record_upstream(Duration::ZERO, true);
        }
        ticks(
            &a,
            &clock,
            Sample {
                cpu: Some(1.0),
                memory: Some(u64::MAX),
            },
            1,
        );
        assert_eq!(a.severity(), 3.0);
        assert_eq!(a.factor(), 0.25);
    }

    #[test]
    fn factor_falls_with_severity_and_stays_within_bounds() {
        let mut last = 1.0;
        for i in 0..=40 {
            let s = f64::from(i) / 10.0;
            let f = factor_for(s, 0.25);
            assert!(f <= last && (0.25..=1.0).contains(&f), "σ {s}: {f}");
            last = f;
        }
        assert_eq!(factor_for(0.99, 0.25), 1.0);
        assert_eq!(factor_for(1.0, 0.25), 0.75);
        assert_eq!(factor_for(3.0, 0.25), 0.25);
        assert_eq!(factor_for(3.0, 0.6), 0.6);
    }

    #[test]
    fn recovers_only_after_recover_after_of_health() {
        let (a, clock) = adaptive(settings());
        let mem = |m| Sample {
            cpu: None,
            memory: Some(m),
        };
        ticks(&a, &clock, mem(1_100_000), 1);
        assert_eq!(a.level(), Level::Degraded);
        let degraded = a.factor();
        // Healthy from the next tick on: 30 ticks span 29 s.
        ticks(&a, &clock, mem(10), 30);
        assert_eq!(a.level(), Level::Degraded);
        assert_eq!(a.factor(), degraded);
        ticks(&a, &clock, mem(10), 1);
        assert_eq!(a.level(), Level::Normal);
        assert_eq!(a.factor(), 1.0);
    }

    #[test]
    fn steps_down_fast_and_recovers_one_level_at_a_time() {
        let (a, clock) = adaptive(settings());
        let mem = |m| Sample {
            cpu: None,
            memory: Some(m),
        };
        ticks(&a, &clock, mem(10), 5);
        ticks(&a, &clock, mem(1_250_000), 1); // the memory extreme: σ = 2
        assert_eq!(a.level(), Level::Severe, "one tick is enough to step down");
        assert!(a.shed(0, 3));
        // Healthy again: 30 s per step.
        ticks(&a, &clock, mem(10), 30);
        assert_eq!(a.level(), Level::Severe);
        ticks(&a, &clock, mem(10), 1);
        assert_eq!(a.level(), Level::Degraded);
        assert!(!a.shed(0, 3));
        ticks(&a, &clock, mem(10), 29);
        assert_eq!(a.level(), Level::Degraded);
        ticks(&a, &clock, mem(10), 1);
        assert_eq!(a.level(), Level::Normal);
        assert_eq!(a.factor(), 1.0);
    }

    #[test]
    fn a_signal_hovering_at_its_threshold_does_not_flap() {
        let s = AdaptiveSettings {
            window: SEC, // only the latest CPU sample counts: the signal itself flaps
            ..settings()
        };
        let (a, clock) = adaptive(s);
        let mut levels = Vec::new();
        for i in 0..600 {
            let c = if i % 5 == 0 { 0.81 } else { 0.79 };
            ticks(&a, &clock, cpu(c), 1);
            levels.push(a.level());
        }
        assert!(levels.iter().all(|l| *l == Level::Degraded), "{levels:?}");
        // Once it stays under, it recovers.
        ticks(&a, &clock, cpu(0.79), 30);
        assert_eq!(a.level(), Level::Normal);
    }

    #[test]
    fn a_worse_reading_while_recovering_restarts_the_timer() {
        let (a, clock) = adaptive(settings());
        let mem = |m| Sample {
            cpu: None,
            memory: Some(m),
        };
        ticks(&a, &clock, mem(1_100_000), 1);
        ticks(&a, &clock, mem(10), 25);
        ticks(&a, &clock, mem(1_100_000), 1);
        ticks(&a, &clock, mem(10), 25);
        assert_eq!(a.level(), Level::Degraded);
        assert!(a.status()["recovering_for_ms"].as_f64().unwrap_or(0.0) > 20_000.0);
        ticks(&a, &clock, mem(10), 5);
        assert_eq!(
            a.level(),
            Level::Degraded,
            "30 s after the first healthy tick, not before"
        );
        ticks(&a, &clock, mem(10), 1);
        assert_eq!(a.level(), Level::Normal);
    }

    #[test]
    fn nothing_is_shed_below_severe() {
        let (a, clock) = adaptive(settings());
        for c in [0.1, 0.8, 0.85, 0.89] {
            ticks(&a, &clock, cpu(c), 1);
            assert_ne!(a.level(), Level::Severe);
            for max in 0..=5 {
                assert!((0..=max).all(|p| !a.shed(p, max)), "cpu {c}");
            }
        }
    }

    #[test]
    fn shedding_takes_lowest_priorities_first_and_more_as_it_worsens() {
        let max = 4u8;
        let mut last_count = 0;
        for i in 0..=20 {
            let s = 2.0 + f64::from(i) / 20.0;
            let shed: Vec<bool> = (0..=max).map(|p| shed_at(s, p, max)).collect();
            let count = shed.iter().filter(|x| **x).count();
            // A prefix: every shed priority is below every served one.
            assert!(shed.windows(2).all(|w| w[0] || !w[1]), "σ {s}: {shed:?}");
            assert!(count >= last_count && count >= 1, "σ {s}: {shed:?}");
            assert!(!shed[usize::from(max)], "the highest is never shed");
            last_count = count;
        }
        assert_eq!(last_count, usize::from(max));
        assert_eq!(
            (0..=max).filter(|p| shed_at(2.0, *p, max)).count(),
            1,
            "at the edge of severe only anonymous callers"
        );
        assert!(!shed_at(3.0, 0, 0), "a single class is never shed");
        assert!(shed_at(3.0, 0, 1) && !shed_at(3.0, 1, 1));
        assert!(!shed_at(3.0, 9, 4), "above max counts as max");
        assert!(!shed_at(1.99, 0, 4));

        // Through the controller.
        let (a, clock) = adaptive(settings());
        ticks(&a, &clock, cpu(0.9), 1); // extreme CPU alone: σ = 2
        assert!(a.shed(0, 3) && !a.shed(1, 3) && !a.shed(3, 3));
        for _ in 0..100 {
            a.record_upstream(Duration::ZERO, true);
        }
        ticks(&a, &clock, cpu(1.0), 1); // σ = 3
        assert!(a.shed(0, 3) && a.shed(1, 3) && a.shed(2, 3) && !a.shed(3, 3));
        assert_eq!(a.retry_after(), Duration::from_secs(30));
    }

    #[test]
    fn status_reports_level_factor_and_signals() {
        let (a, clock) = adaptive(settings());
        for _ in 0..40 {
            a.record_upstream(Duration::from_millis(30), false);
        }
        ticks(&a, &clock, cpu(0.85), 1);
        let s = a.status();
        assert_eq!(s["level"], "degraded");
        assert_eq!(s["factor"], a.factor());
        assert_eq!(s["signals"]["cpu"], 0.85);
        assert_eq!(s["signals"]["requests"], 40);
        assert_eq!(s["signals"]["error_rate"], 0.0);
        assert_eq!(s["signals"]["latency_slo_ms"], 100.0);
        assert!(s["signals"]["latency_p99_ms"].as_f64().is_some());
        assert_eq!(s["window_ms"], 10_000.0);
    }

    #[test]
    fn disabled_signals_never_degrade() {
        let s = AdaptiveSettings {
            memory_high: None,
            latency_slo: None,
            error_rate_high: 0.0,
            cpu_high: f64::NAN,
            ..settings()
        };
        let (a, clock) = adaptive(s);
        for _ in 0..100 {
            a.record_upstream(Duration::from_secs(100), true);
        }
        ticks(
            &a,
            &clock,
            Sample {
                cpu: Some(1.0),
                memory: Some(u64::MAX),
            },
            3,
        );
        assert_eq!(a.level(), Level::Normal);
    }

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 100 200000 300";
        assert_eq!(parse_cpu_seconds(stat), Some(3.25));
        assert_eq!(parse_cpu_seconds("garbage"), None);
        let status = "Name:\tportcullis\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t9\n";
        assert_eq!(parse_resident_bytes(status), Some(2048 * 1024));
        assert_eq!(parse_resident_bytes("Name: x\n"), None);
    }

    #[test]
    fn real_sampling_does_not_break_the_controller() {
        let a = Adaptive::new(settings(), Arc::new(crate::clock::SystemClock));
        a.tick();
        std::thread::sleep(Duration::from_millis(20));
        a.tick();
        let s = a.status();
        if cfg!(target_os = "linux") {
            assert!(
                s["signals"]["memory_bytes"].as_u64().is_some_and(|m| m > 0),
                "{s}"
            );
            let c = s["signals"]["cpu"].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&c), "{s}");
        }
    }

    // --- ConcurrencyLimiter ---

    /// Runs one round: takes every slot it can (up to `want`), finishes them all.
    fn round(l: &Arc<ConcurrencyLimiter>, want: u32, latency: Duration, failed: bool) -> u32 {
        let permits: Vec<_> = (0..want).map_while(|_| l.try_acquire()).collect();
        let n = permits.len() as u32;
        for p in permits {
            p.done(latency, failed);
        }
        n
    }

    #[test]
    fn limit_grows_to_max_under_fast_healthy_answers() {
        let l = Arc::new(ConcurrencyLimiter::new(5, 200, 10));
        let mut last = l.limit();
        for _ in 0..400 {
            round(&l, u32::MAX, Duration::from_millis(2), false);
            assert!(l.limit() >= last, "never shrinks while healthy");
            last = l.limit();
        }
        assert_eq!(l.limit(), 200);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn limit_does_not_grow_when_the_traffic_does_not_use_it() {
        let l = Arc::new(ConcurrencyLimiter::new(1, 1000, 50));
        for _ in 0..2000 {
            round(&l, 3, Duration::from_millis(2), false);
        }
        assert_eq!(l.limit(), 50);
    }

    #[test]
    fn limit_shrinks_when_the_upstream_slows_down_never_below_min() {
        let l = Arc::new(ConcurrencyLimiter::new(10, 500, 100));
        for _ in 0..50 {
            round(&l, u32::MAX, Duration::from_millis(10), false);
        }
        let before = l.limit();
        assert!(before >= 200, "{before}");
        assert_eq!(l.baseline(), Some(Duration::from_millis(10)));
        // Latency ×5: queueing. The limit falls fast.
        let mut last = before;
        for _ in 0..12 {
            round(&l, u32::MAX, Duration::from_millis(50), false);
            assert!(l.limit() < last);
            last = l.limit();
        }
        assert!(last < before / 2, "{before} -> {last}");
        // An upstream getting slower and slower: down to min, never below.
        let mut ms = 50.0f64;
        for _ in 0..300 {
            ms *= 1.05;
            round(&l, u32::MAX, Duration::from_secs_f64(ms / 1000.0), false);
            assert!(l.limit() >= 10);
        }
        assert_eq!(l.limit(), 10);
        // Fast again: the baseline follows at once and the limit grows.
        for _ in 0..100 {
            round(&l, u32::MAX, Duration::from_millis(10), false);
        }
        assert_eq!(l.baseline(), Some(Duration::from_millis(10)));
        assert!(l.limit() > 40, "{}", l.limit());
    }

    #[test]
    fn a_small_latency_rise_within_tolerance_does_not_shrink() {
        let l = Arc::new(ConcurrencyLimiter::new(1, 100, 50));
        for _ in 0..5 {
            round(&l, u32::MAX, Duration::from_millis(10), false);
        }
        let before = l.limit();
        for _ in 0..5 {
            round(&l, u32::MAX, Duration::from_millis(14), false);
        }
        assert!(l.limit() >= before);
    }

    #[test]
    fn failures_shrink_the_limit_never_below_min() {
        let l = Arc::new(ConcurrencyLimiter::new(3, 100, 80));
        round(&l, u32::MAX, Duration::from_millis(5), false);
        let before = l.limit();
        round(&l, u32::MAX, Duration::from_millis(5), true);
        assert!(l.limit() < before, "{before} -> {}", l.limit());
        for _ in 0..500 {
            round(&l, u32::MAX, Duration::from_millis(5), true);
        }
        assert_eq!(l.limit(), 3);
        // Some failures among fast answers still push it down.
        let l = Arc::new(ConcurrencyLimiter::new(1, 100, 60));
        for _ in 0..30 {
            let permits: Vec<_> = (0..60).map_while(|_| l.try_acquire()).collect();
            for (i, p) in permits.into_iter().enumerate() {
                p.done(Duration::from_millis(5), i % 10 == 0);
            }
        }
        assert!(l.limit() < 30, "{}", l.limit());
    }

    #[test]
    fn permits_are_released_on_drop_and_abandoned_requests_teach_nothing() {
        let l = Arc::new(ConcurrencyLimiter::new(2, 10, 10));
        let held: Vec<_> = (0..10).map_while(|_| l.try_acquire()).collect();
        assert_eq!(held.len(), 10);
        assert_eq!(l.in_flight(), 10);
        assert!(l.try_acquire().is_none(), "over the limit");
        drop(held);
        assert_eq!(l.in_flight(), 0);
        // A client resetting its requests, window after window: the limit stays.
        for _ in 0..50 {
            let p = l.try_acquire();
            assert!(p.is_some());
            drop(p);
        }
        assert_eq!(l.limit(), 10, "abandoned requests are no failures");
        // Failures the requests end with do shrink it.
        for _ in 0..10 {
            l.try_acquire()
                .unwrap()
                .done(Duration::from_millis(5), true);
        }
        assert!(l.limit() < 10, "ten failures are a failed window");
        let p = l.try_acquire();
        assert!(p.is_some());
        assert_eq!(l.in_flight(), 1);
        drop(p);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn constructor_sanitises_bounds() {
        let l = ConcurrencyLimiter::new(0, 0, 9);
        assert_eq!(l.limit(), 1);
        let l = ConcurrencyLimiter::new(10, 5, 1);
        assert_eq!(l.limit(), 10);
        let l = ConcurrencyLimiter::new(1, 50, 500);
        assert_eq!(l.limit(), 50);
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_limit() {
        let l = Arc::new(ConcurrencyLimiter::new(8, 8, 8));
        let active = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (l, active, peak) = (l.clone(), active.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut got = 0u32;
                    for i in 0..3000u32 {
                        if let Some(p) = l.try_acquire() {
                            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            std::hint::spin_loop();
                            if i % 7 == 0 {
                                std::thread::yield_now();
                            }
                            active.fetch_sub(1, Ordering::SeqCst);
                            got += 1;
                            if (i + t) % 5 == 0 {
                                drop(p);
                            } else {
                                p.done(Duration::from_millis(1), false);
                            }
                        }
                    }
                    got
                })
            })
            .collect();
        let served: u32 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert!(served > 0);
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= 8, "peak {peak}");
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn concurrent_use_with_a_moving_limit_stays_within_max() {
        let l = Arc::new(ConcurrencyLimiter::new(2, 32, 16));
        let active = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let over = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..12)
            .map(|t| {
                let (l, active, stop, over) =
                    (l.clone(), active.clone(), stop.clone(), over.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        if let Some(p) = l.try_acquire() {
                            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                            if now > 32 {
                                over.store(true, Ordering::SeqCst);
                            }
                            active.fetch_sub(1, Ordering::SeqCst);
                            let slow = (i + t).is_multiple_of(3);
                            p.done(
                                Duration::from_micros(if slow { 5000 } else { 500 }),
                                i.is_multiple_of(50),
                            );
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        assert!(!over.load(Ordering::SeqCst));
        assert_eq!(l.in_flight(), 0);
        assert!((2..=32).contains(&l.limit()));
    }
}
