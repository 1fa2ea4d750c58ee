//! The rate-limit steps: `ratelimit_pre` (before authentication: keys known from the request)
//! and `ratelimit` (after authentication: identity keys, tiers, quotas, load shedding).
//!
//! Per request and step: the route's limits of that phase are keyed (a limit whose identity
//! dimension is absent does not apply), their tier's values chosen and scaled by the adaptive
//! factor; concurrency limits take a slot (held until the response head is sent); rate limits
//! and quotas are checked all-or-nothing in one store call. A refusal is 429 with
//! `Retry-After`; the headers of the most restrictive limit go on every response.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use portcullis_core::{
    GatewayRequest, Principal, RejectReason, Rejection, RequestCtx, Stage, StageId, Step, Verdict,
};

use crate::config::{Dim, Limit, OnStoreError, RateLimitSettings};
use crate::local::{ConcurrencyGuard, LocalStore};
use crate::redis::RedisStore;
use crate::types::{Algorithm, Check, Decision, LimitSpec, Period};

/// The limiter of one configuration snapshot. The stores are long-lived (see
/// [`crate::RateLimitState`]); budgets survive reloads.
pub struct RateLimiter {
    pub settings: RateLimitSettings,
    /// Per route: indexes into `settings.limits`.
    pub routes: Vec<Vec<usize>>,
    pub(crate) local: Arc<LocalStore>,
    pub(crate) fallback: Arc<LocalStore>,
    pub(crate) redis: Option<Arc<RedisStore>>,
    /// What tells this Redis configuration from another ([`crate::RateLimitState::activate`]).
    pub(crate) redis_id: Option<String>,
    pub(crate) adaptive: Option<Arc<crate::adaptive::Adaptive>>,
    pub(crate) adaptive_id: Option<String>,
}

/// Concurrency slots a request holds; released when the request's context is dropped (the
/// context's extensions must be `Clone`: nothing clones them, so the slots are not shared).
#[derive(Default, Clone)]
pub struct Held(pub Vec<Arc<ConcurrencyGuard>>);

/// The most restrictive limit seen so far for this request, whose headers are published.
#[derive(Clone)]
struct Published {
    remaining: u64,
    /// What `remaining` is out of: the burst for GCRA (its remaining never exceeds it), the
    /// limit otherwise.
    capacity: u64,
}

/// What a decision's `remaining` is out of (see [`Published::capacity`]).
fn capacity(spec: &LimitSpec, d: &Decision) -> u64 {
    match spec.algorithm {
        Algorithm::Gcra => spec.burst.max(1),
        _ => d.limit.max(1),
    }
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static QUOTA_WARNING: HeaderName = HeaderName::from_static("x-quota-warning");

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn window_secs(spec: &LimitSpec, reset: Duration) -> u64 {
    match spec.period {
        Period::Fixed(d) => ceil_secs(d).max(1),
        // Calendar windows: the time left is the honest window to announce.
        Period::CalendarDay | Period::CalendarMonth => ceil_secs(reset).max(1),
    }
}

/// A structured-field token for a limit name: letters, digits and `_-.:*/` kept, others `_`.
fn sf_key(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.:*/".contains(c) {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase() || c == '*') {
        s.insert(0, 'l');
    }
    s
}

impl RateLimiter {
    fn tier_of(&self, p: Option<&Principal>) -> Option<usize> {
        let p = p?;
        let s = &self.settings;
        p.tier
            .as_deref()
            .and_then(|t| s.tier_index(t))
            .or_else(|| {
                let c = p.client_id.as_deref()?;
                s.clients
                    .iter()
                    .find(|(k, authority, _)| {
                        k == c && authority.as_ref().is_none_or(|a| *a == p.authority)
                    })
                    .map(|(_, _, t)| *t)
            })
            .or(s.default_tier)
    }

    /// Load-shedding priority: 0 anonymous, 1 authenticated without a tier, then tiers.
    fn priority(&self, p: Option<&Principal>, tier: Option<usize>) -> (u8, u8) {
        let max = u8::try_from(self.settings.tiers.len() + 1).unwrap_or(u8::MAX);
        let pr = match (p, tier) {
            (None, _) => 0,
            (Some(_), None) => 1,
            (Some(_), Some(t)) => u8::try_from(t + 2).unwrap_or(u8::MAX).min(max),
        };
        (pr, max)
    }

    /// The budget key of a limit for this request; `None` when an identity dimension is absent.
    fn key(&self, l: &Limit, req: &GatewayRequest, ctx: &RequestCtx) -> Option<String> {
        let p = ctx.principal.as_deref();
        let mut k = String::with_capacity(64);
        k.push_str(&l.name);
        for d in &l.key {
            k.push('|');
            match d {
                Dim::Global => k.push('*'),
                Dim::ClientIp => {
                    let _ = write!(
                        k,
                        "{}",
                        portcullis_core::addr::counted(ctx.client_ip, self.settings.ipv6_prefix)
                    );
                }
                Dim::Route => k.push_str(ctx.route.as_ref().map(|r| &*r.name).unwrap_or("")),
                Dim::Method => k.push_str(req.head.method.as_str()),
                Dim::Header(h) => {
                    // Every value, in order: a request cannot pick a budget by repeating it.
                    // Digested: a header may carry a credential (`x-api-key`,
                    // `authorization`), which must not become a key name in the store.
                    let mut values = req.head.headers.get_all(h).iter();
                    match (values.next(), values.next()) {
                        // Absent is the empty value: one budget, not two.
                        (None, _) => push_digest(&mut k, b""),
                        (Some(one), None) => push_digest(&mut k, one.as_bytes()),
                        (Some(first), Some(second)) => {
                            let mut all = first.as_bytes().to_vec();
                            for v in std::iter::once(second).chain(values) {
                                all.push(b',');
                                all.extend_from_slice(v.as_bytes());
                            }
                            push_digest(&mut k, &all);
                        }
                    }
                }
                // A client id and a subject are the authority's own: the same value from two
                // issuers is two callers.
                Dim::ClientId => {
                    let p = p?;
                    let id = p.client_id.as_deref()?;
                    push_part(&mut k, p.authority.as_bytes());
                    k.push('|');
                    push_part(&mut k, id.as_bytes());
                }
                Dim::User => {
                    let p = p?;
                    let sub = p.subject.as_deref()?;
                    push_part(&mut k, p.authority.as_bytes());
                    k.push('|');
                    push_part(&mut k, sub.as_bytes());
                }
                Dim::Authority => push_part(&mut k, p?.authority.as_bytes()),
                Dim::ApiKey => {
                    let p = p?;
                    if p.method != portcullis_core::AuthMethod::ApiKey {
                        return None;
                    }
                    push_part(&mut k, p.credential_id.as_deref()?.as_bytes());
                }
                Dim::Tenant => push_part(&mut k, p?.tenant.as_deref()?.as_bytes()),
                // Digested: a claim may be personal data (`email`).
                Dim::Claim(c) => push_digest(&mut k, p?.claim_text(c)?.as_bytes()),
            }
        }
        Some(k)
    }

    /// The values a caller gets from `l` now. Under load (factor below 1) a limit with
    /// per-tier values steps the caller down tiers — one step per third of the way to
    /// `min_factor`, to the lowest tier and then the base values — as long as that lowers it;
    /// otherwise (no tier to step from, or a lower tier allowing more) the caller's values are
    /// scaled by the factor, as are those of a limit without tiers. Quotas are never adapted:
    /// they are contracts over days or months, and a refusal would say "come back next month"
    /// for a load that lasts seconds.
    fn effective(&self, l: &Limit, tier: Option<usize>) -> LimitSpec {
        let Some(a) = &self.adaptive else {
            return *l.spec_for(tier);
        };
        let f = a.factor();
        if f >= 1.0 || l.is_quota {
            return *l.spec_for(tier);
        }
        let current = l.spec_for(tier);
        if l.tiers.is_empty() || tier.is_none() {
            return self.scaled(current, f);
        }
        let min = self
            .settings
            .adaptive
            .as_ref()
            .map_or(0.25, |c| c.min_factor)
            .clamp(0.0, 0.99);
        let depth = ((1.0 - f) / (1.0 - min)).clamp(0.0, 1.0);
        // (A hair below each third counts as it: 0.75 with min 0.25 is exactly one step.)
        let steps = (depth * 3.0 - 1e-9).ceil().max(0.0) as usize;
        // Tier t (0-based) stepped down: t - steps, below 0 the base values.
        let stepped = l.spec_for(tier.and_then(|t| t.checked_sub(steps)));
        if lower(stepped, current) {
            *stepped
        } else {
            self.scaled(current, f)
        }
    }

    fn scaled(&self, spec: &LimitSpec, f: f64) -> LimitSpec {
        let scale = |n: u64| -> u64 {
            let v = (n as f64 * f).floor();
            if v.is_finite() && v >= 1.0 {
                v as u64
            } else {
                1
            }
        };
        LimitSpec {
            limit: scale(spec.limit),
            burst: scale(spec.burst),
            ..*spec
        }
    }

    fn headers(&self, ctx: &mut RequestCtx, name: &str, spec: &LimitSpec, d: &Decision) {
        if !self.settings.headers {
            return;
        }
        let cap = capacity(spec, d);
        let better = match ctx.extensions.get::<Published>() {
            None => true,
            Some(p) => {
                // The limit closest to refusing: least remaining, relative to what it can
                // hold (a GCRA budget holds its burst: 49 left of a burst of 50 is full).
                (d.remaining as u128) * (p.capacity as u128) < (p.remaining as u128) * (cap as u128)
            }
        };
        if !better {
            return;
        }
        ctx.extensions.insert(Published {
            remaining: d.remaining,
            capacity: cap,
        });
        let key = sf_key(name);
        let reset = ceil_secs(d.reset);
        let w = window_secs(spec, d.reset);
        // A GCRA budget whose burst is above its rate holds more than the rate's count; what
        // is said to remain never exceeds the count the policy states.
        let remaining = d.remaining.min(d.limit);
        let set = [
            (&RATELIMIT_POLICY, format!("\"{key}\";q={};w={w}", d.limit)),
            (&RATELIMIT, format!("\"{key}\";r={remaining};t={reset}")),
            (&X_LIMIT, d.limit.to_string()),
            (&X_REMAINING, remaining.to_string()),
            (&X_RESET, reset.to_string()),
        ];
        ctx.response_headers
            .retain(|(n, _)| !set.iter().any(|(s, _)| *s == n));
        for (n, v) in set {
            if let Ok(v) = HeaderValue::from_str(&v) {
                ctx.response_headers.push((n.clone(), v));
            }
        }
    }

    fn quota_warning(&self, ctx: &mut RequestCtx, l: &Limit, d: &Decision) {
        if !l.is_quota || d.limit == 0 {
            return;
        }
        let used = d.limit.saturating_sub(d.remaining);
        let pct = used.saturating_mul(100) / d.limit;
        if let Some(t) = l.warn_at.iter().rev().find(|t| pct >= u64::from(**t)) {
            let v = format!(
                "{}; used={used}; limit={}; threshold={t}%",
                sf_key(&l.name),
                d.limit
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                ctx.response_headers.push((QUOTA_WARNING.clone(), v));
            }
        }
    }

    fn refuse(&self, ctx: &mut RequestCtx, l: &Limit, spec: &LimitSpec, d: &Decision) -> Rejection {
        ctx.limited_by = Some(l.name.clone());
        ctx.extensions.remove::<Published>();
        self.headers(ctx, &l.name, spec, d);
        let retry = d.retry_after.map(ceil_secs).unwrap_or(1).max(1);
        let what = if l.is_concurrency() {
            "too many requests in flight"
        } else if l.is_quota {
            "quota exhausted"
        } else {
            "rate limit exceeded"
        };
        let mut r = Rejection::new(
            RejectReason::RateLimited,
            format!("{what} ({}); retry after {retry} s", l.name),
        );
        if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
            r = r.with_header(http::header::RETRY_AFTER, v);
        }
        r
    }

    /// The decisions for `checks`, from Redis or memory, with the documented fallbacks.
    async fn decide(
        &self,
        checks: &[Check<'_>],
        limits: &[&Limit],
    ) -> Result<Vec<Decision>, &'static str> {
        let Some(redis) = &self.redis else {
            return Ok(self.local.check_all(checks, 1));
        };
        match redis.check_all(checks, 1).await {
            Ok(d) => Ok(d),
            Err(e) => {
                if limits
                    .iter()
                    .any(|l| l.on_store_error == OnStoreError::FailClosed)
                {
                    warn_store_down(&e, "rate-limit store unavailable: failing closed");
                    return Err("rate limiting is unavailable");
                }
                warn_store_down(&e, "rate-limit store unavailable: counting locally");
                let share = self
                    .settings
                    .redis
                    .as_ref()
                    .map(|r| r.instances)
                    .unwrap_or(1)
                    .max(1);
                let specs: Vec<LimitSpec> = checks
                    .iter()
                    .map(|c| LimitSpec {
                        limit: (c.spec.limit / share).max(1),
                        burst: (c.spec.burst / share).max(1),
                        ..*c.spec
                    })
                    .collect();
                let local: Vec<Check<'_>> = checks
                    .iter()
                    .zip(&specs)
                    .map(|(c, s)| Check {
                        key: c.key,
                        spec: s,
                    })
                    .collect();
                Ok(self.fallback.check_all(&local, 1))
            }
        }
    }

    /// The adaptive controller, when configured: the engine reports every upstream answer.
    pub fn adaptive(&self) -> Option<&Arc<crate::adaptive::Adaptive>> {
        self.adaptive.as_ref()
    }

    /// The shared store's health; `None` without one.
    pub fn store_up(&self) -> Option<bool> {
        self.redis.as_ref().map(|r| r.healthy())
    }

    /// Budgets held in memory.
    pub fn keys(&self) -> usize {
        self.local.len()
    }

    /// Budgets dropped while partly used because the in-memory store was full, since it was
    /// made (each may have let its client exceed its limit until it would have been whole).
    pub fn evictions(&self) -> u64 {
        self.local.evictions()
    }

    /// For the admin API.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "store": if self.redis.is_some() { "redis" } else { "local" },
            "store_up": self.store_up(),
            "keys": self.keys(),
            "limits": self.settings.limits.iter().map(|l| &*l.name).collect::<Vec<_>>(),
            "adaptive": self.adaptive.as_ref().map(|a| a.status()),
        })
    }
}

/// One of the two steps.
pub struct RateLimitStage {
    rl: Arc<RateLimiter>,
    pre: bool,
}

impl RateLimitStage {
    pub const PRE_ID: StageId = StageId("ratelimit_pre");
    pub const ID: StageId = StageId("ratelimit");

    pub fn pre_auth(rl: Arc<RateLimiter>) -> RateLimitStage {
        RateLimitStage { rl, pre: true }
    }

    pub fn post_auth(rl: Arc<RateLimiter>) -> RateLimitStage {
        RateLimitStage { rl, pre: false }
    }
}

struct Planned {
    idx: usize,
    key: String,
    spec: LimitSpec,
}

impl Stage for RateLimitStage {
    fn id(&self) -> StageId {
        if self.pre { Self::PRE_ID } else { Self::ID }
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        let rl = &*self.rl;
        let Some(route) = ctx.route_id().and_then(|r| rl.routes.get(r.0)) else {
            return Step::CONTINUE;
        };
        // Nothing to count and nothing to shed: the common case costs two lookups.
        if route.is_empty() && (self.pre || rl.adaptive.is_none()) {
            return Step::CONTINUE;
        }
        let principal = ctx.principal.clone();
        let tier = rl.tier_of(principal.as_deref());

        // Load shedding, lowest priority first (after authentication: the priority is known).
        if !self.pre
            && let Some(a) = &rl.adaptive
        {
            let (pr, max) = rl.priority(principal.as_deref(), tier);
            if a.shed(pr, max) {
                let retry = ceil_secs(a.retry_after()).max(1);
                let mut r = Rejection::new(
                    RejectReason::Overloaded,
                    "the gateway is shedding load; retry later",
                );
                if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
                    r = r.with_header(http::header::RETRY_AFTER, v);
                }
                return Step::reject(r);
            }
        }

        let mut planned: Vec<Planned> = Vec::new();
        for &idx in route {
            let Some(l) = rl.settings.limits.get(idx) else {
                continue;
            };
            if l.pre_auth != self.pre {
                continue;
            }
            let Some(key) = rl.key(l, req, ctx) else {
                continue;
            };
            planned.push(Planned {
                idx,
                key,
                spec: rl.effective(l, tier),
            });
        }
        if planned.is_empty() {
            return Step::CONTINUE;
        }

        // Concurrency slots first (local, synchronous).
        let mut held = Vec::new();
        for pl in planned
            .iter()
            .filter(|p| p.spec.algorithm == Algorithm::Concurrency)
        {
            let Some(l) = rl.settings.limits.get(pl.idx) else {
                continue;
            };
            match rl.local.acquire(&pl.key, pl.spec.limit) {
                Some(g) => held.push(Arc::new(g)),
                None => {
                    let d = Decision {
                        allowed: false,
                        limit: pl.spec.limit,
                        remaining: 0,
                        reset: Duration::from_secs(1),
                        retry_after: Some(Duration::from_secs(1)),
                    };
                    return Step::reject(rl.refuse(ctx, l, &pl.spec, &d));
                }
            }
        }
        if !held.is_empty() {
            match ctx.extensions.get_mut::<Held>() {
                Some(h) => h.0.extend(held),
                None => {
                    ctx.extensions.insert(Held(held));
                }
            }
        }
        planned.retain(|p| p.spec.algorithm != Algorithm::Concurrency);
        if planned.is_empty() {
            return Step::CONTINUE;
        }

        let finish = move |ctx: &mut RequestCtx, planned: &[Planned], decisions: Vec<Decision>| {
            for (pl, d) in planned.iter().zip(&decisions) {
                if !d.allowed
                    && let Some(l) = rl.settings.limits.get(pl.idx)
                {
                    return Verdict::Reject(rl.refuse(ctx, l, &pl.spec, d));
                }
            }
            for (pl, d) in planned.iter().zip(&decisions) {
                if let Some(l) = rl.settings.limits.get(pl.idx) {
                    rl.headers(ctx, &l.name, &pl.spec, d);
                    rl.quota_warning(ctx, l, d);
                }
            }
            Verdict::Continue
        };

        fn checks(planned: &[Planned]) -> Vec<Check<'_>> {
            planned
                .iter()
                .map(|p| Check {
                    key: &p.key,
                    spec: &p.spec,
                })
                .collect()
        }
        if rl.redis.is_none() {
            let checks = checks(&planned);
            let decisions = rl.local.check_all(&checks, 1);
            return Step::Done(finish(ctx, &planned, decisions));
        }
        Step::from_future(async move {
            let checks = checks(&planned);
            let limits: Vec<&Limit> = planned
                .iter()
                .filter_map(|p| rl.settings.limits.get(p.idx))
                .collect();
            match rl.decide(&checks, &limits).await {
                Ok(decisions) => finish(ctx, &planned, decisions),
                Err(msg) => {
                    ctx.limited_by = limits.first().map(|l| l.name.clone());
                    Verdict::Reject(
                        Rejection::new(RejectReason::RateLimitUnavailable, msg)
                            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
                    )
                }
            }
        })
    }
}

/// The address a `client_ip` budget is kept under: an IPv4-mapped IPv6 address as its IPv4
/// address, any other IPv6 address cut to `prefix` bits (0: whole), so that a client cannot
/// take a fresh budget with every address of its network.
/// Longest value of a key dimension kept as written; a longer one is replaced by its digest,
/// so that a client cannot make each budget it opens cost kilobytes (a header of 8 KiB).
const MAX_PART: usize = 128;

/// Logs that the shared store is down at most once every [`STORE_DOWN_LOG_EVERY`] seconds
/// (per process), with how many requests met it since: every request that finds it down
/// would otherwise write a line, a log flood at the request rate for as long as it lasts.
fn warn_store_down(e: &dyn std::fmt::Display, what: &str) {
    static THROTTLE: LogThrottle = LogThrottle::new();
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // Monotonic (a wall clock set back would silence it), and a period past the start so
    // that the first one logs.
    let now = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs()
        + STORE_DOWN_LOG_EVERY;
    if let Some(requests) = THROTTLE.tick(now, STORE_DOWN_LOG_EVERY) {
        tracing::warn!(error = %e, requests, "{what}");
    }
}

/// One line per period: [`LogThrottle::tick`] says when to write one, and for how many
/// occurrences (those held back since the last line, and this one).
struct LogThrottle {
    last: std::sync::atomic::AtomicU64,
    since: std::sync::atomic::AtomicU64,
}

impl LogThrottle {
    const fn new() -> Self {
        LogThrottle {
            last: std::sync::atomic::AtomicU64::new(0),
            since: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn tick(&self, now: u64, every: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.last.load(Relaxed);
        if now >= last.saturating_add(every)
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.since.swap(0, Relaxed) + 1)
        } else {
            self.since.fetch_add(1, Relaxed);
            None
        }
    }
}

/// Seconds between two lines saying the shared rate-limit store is down.
const STORE_DOWN_LOG_EVERY: u64 = 10;

/// Appends `#` and the SHA-256 of a dimension value that may be a secret or personal data
/// (a header, a claim): budget keys are names in the store (Redis `SCAN`, its files,
/// replicas), where such a value must not be readable. Present or absent, and equal or not,
/// are all a budget needs.
fn push_digest(k: &mut String, v: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    k.push('#');
    for b in ring::digest::digest(&ring::digest::SHA256, v).as_ref() {
        k.push(char::from(HEX[usize::from(b >> 4)]));
        k.push(char::from(HEX[usize::from(b & 15)]));
    }
}

/// Appends a client-supplied dimension value to a budget key: bytes other than printable
/// ASCII, and `|` (the separator), `%` and `#`, percent-encoded, so that two different value
/// lists never make the same key (`a|b` + `c` against `a` + `b|c`) and no invalid UTF-8 is
/// folded into another value; a value longer than [`MAX_PART`] is `#` and its SHA-256.
fn push_part(k: &mut String, v: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if v.len() > MAX_PART {
        return push_digest(k, v);
    }
    for &b in v {
        if (0x21..=0x7e).contains(&b) && !matches!(b, b'|' | b'%' | b'#') {
            k.push(char::from(b));
        } else {
            k.push('%');
            k.push(char::from(HEX[usize::from(b >> 4)]));
            k.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// Whether `a` allows less than `b`: a smaller rate (requests per second, cross-multiplied),
/// or, between a calendar quota and a fixed period, the smaller count.
fn lower(a: &LimitSpec, b: &LimitSpec) -> bool {
    match (a.period, b.period) {
        (Period::Fixed(pa), Period::Fixed(pb)) => {
            u128::from(a.limit) * pb.as_nanos() < u128::from(b.limit) * pa.as_nanos()
        }
        _ => a.limit < b.limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RateLimitState;
    use crate::clock::ManualClock;
    use crate::config::{RawRateLimits, compile, compile_route};
    use portcullis_core::{AuthMethod, BoxError, ConfigErrors, RouteId, RouteMatch, Scheme};

    fn limiter(yaml: &str, clock: Arc<ManualClock>) -> Arc<RateLimiter> {
        let raw: RawRateLimits = serde_yaml_ng::from_str(yaml).unwrap();
        let mut e = ConfigErrors::new();
        let settings = compile(&raw, &mut e);
        let names: Vec<String> = raw.limits.keys().cloned().collect();
        let route = compile_route(&names, &settings, "routes[0]", &mut e);
        assert!(e.is_empty(), "{e:?}");
        RateLimitState::with_clock(clock)
            .build(&settings, vec![route])
            .unwrap()
    }

    fn request(tier: Option<&str>, client: &str) -> (GatewayRequest, RequestCtx) {
        request_from("api_keys", tier, client)
    }

    /// A request of `client` (also its subject) as vouched for by `authority`.
    fn request_from(
        authority: &str,
        tier: Option<&str>,
        client: &str,
    ) -> (GatewayRequest, RequestCtx) {
        use http_body_util::BodyExt;
        let (head, _) = http::Request::builder()
            .uri("/export")
            .body(())
            .unwrap()
            .into_parts();
        let body = http_body_util::Full::new(bytes::Bytes::new())
            .map_err(|e| -> BoxError { match e {} })
            .boxed_unsync();
        let mut ctx = RequestCtx::new(
            "198.51.100.7:1000".parse().unwrap(),
            Scheme::Http,
            Arc::from("public"),
        );
        ctx.route = Some(RouteMatch {
            id: RouteId(0),
            name: Arc::from("export"),
            params: Vec::new(),
        });
        let mut p = Principal::new(AuthMethod::ApiKey, Arc::from(authority));
        p.client_id = Some(client.into());
        p.subject = Some(client.into());
        p.tier = tier.map(str::to_string);
        ctx.principal = Some(Arc::new(p));
        (GatewayRequest::new(head, body), ctx)
    }

    fn run(stage: &RateLimitStage, tier: Option<&str>, client: &str) -> (bool, RequestCtx) {
        run_from(stage, "api_keys", tier, client)
    }

    fn run_from(
        stage: &RateLimitStage,
        authority: &str,
        tier: Option<&str>,
        client: &str,
    ) -> (bool, RequestCtx) {
        let (mut req, mut ctx) = request_from(authority, tier, client);
        let allowed = match stage.on_request(&mut req, &mut ctx) {
            Step::Done(Verdict::Continue) => true,
            Step::Done(Verdict::Reject(r)) => {
                assert_eq!(r.reason, RejectReason::RateLimited);
                false
            }
            Step::Done(Verdict::Answer(_)) => panic!("rate limits never answer"),
            Step::Async(_) => panic!("the local store decides synchronously"),
        };
        (allowed, ctx)
    }

    fn header<'a>(ctx: &'a RequestCtx, name: &str) -> Option<&'a str> {
        ctx.response_headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    /// While Redis is down, budgets fall back to the in-memory store the configuration sizes
    /// (`max_keys`), whose budgets and evictions the metrics read: not a store of their own.
    #[test]
    fn the_redis_fallback_is_the_sized_in_memory_store() {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000_000)));
        let rl = limiter(
            "store: redis\nredis: { url: \"redis://127.0.0.1:1\" }\nmax_keys: 1234\nlimits:\n  a: { key: [client_ip], rate: 10/minute }\n",
            clock,
        );
        assert!(Arc::ptr_eq(&rl.fallback, &rl.local));
    }

    /// A claim may be personal data: it enters the key as its digest, never as written.
    #[test]
    fn claim_keys_are_digests() {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000_000)));
        let rl = limiter(
            "limits:\n  c: { key: [claim:email], rate: 10/minute }\n",
            clock,
        );
        let l = &rl.settings.limits[0];
        let key = |email: &str| {
            let (req, mut ctx) = request(None, "c");
            let mut p = (**ctx.principal.as_ref().unwrap()).clone();
            let mut claims = serde_json::Map::new();
            claims.insert("email".into(), serde_json::json!(email));
            p.claims = Arc::new(claims);
            ctx.principal = Some(Arc::new(p));
            rl.key(l, &req, &ctx).unwrap()
        };
        let a = key("jo@example.com");
        assert!(a.starts_with("c|#") && !a.contains("example"), "{a}");
        assert_eq!(a, key("jo@example.com"));
        assert_ne!(a, key("al@example.com"));
    }

    #[test]
    fn store_down_lines_are_one_per_period_with_the_count() {
        let t = LogThrottle::new();
        assert_eq!(t.tick(1_000, 10), Some(1));
        for now in [1_000, 1_003, 1_009] {
            assert_eq!(t.tick(now, 10), None);
        }
        assert_eq!(t.tick(1_010, 10), Some(4));
        assert_eq!(t.tick(1_011, 10), None);
        assert_eq!(t.tick(1_100, 10), Some(2));
    }

    /// A header dimension takes every value, in order: a repeated header is a key of its own
    /// (a client cannot pick a budget by repeating it). The values are digested: a header
    /// may carry a credential, which must not become a name in the store.
    #[test]
    fn header_keys_take_every_value() {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000_000)));
        let rl = limiter(
            "limits:\n  h: { key: [header:x-k], rate: 10/minute, phase: post_auth }\n",
            clock,
        );
        let l = &rl.settings.limits[0];
        let key = |values: &[&str]| {
            let (mut req, ctx) = request(None, "c");
            for v in values {
                req.head.headers.append("x-k", v.parse().unwrap());
            }
            rl.key(l, &req, &ctx).unwrap()
        };
        let sha = |v: &str| -> String {
            ring::digest::digest(&ring::digest::SHA256, v.as_bytes())
                .as_ref()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect()
        };
        assert_eq!(key(&["a b"]), format!("h|#{}", sha("a b")));
        assert_eq!(key(&["a", "b"]), format!("h|#{}", sha("a,b")));
        assert_ne!(key(&["a", "b"]), key(&["a"]));
        // Absent is the empty value.
        assert_eq!(key(&[]), format!("h|#{}", sha("")));
        assert_eq!(key(&[""]), key(&[]));
        assert!(!key(&["sk_live_secret"]).contains("secret"));
    }

    /// The headers show the limit closest to refusing, each measured against what it can
    /// hold: a GCRA budget holds its burst, so 49 left of a burst of 50 (rate 300) is full,
    /// and 9 left of 10 is the closer one.
    #[test]
    fn the_published_limit_is_the_closest_to_refusing_by_capacity() {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000_000)));
        let rl = limiter(
            "limits:\n  per-ip: { key: [client_ip], rate: 300/minute, burst: 50, phase: post_auth }\n  per-client: { key: [client_id], rate: 10/minute }\n",
            clock,
        );
        let stage = RateLimitStage::post_auth(rl);
        let (ok, ctx) = run(&stage, None, "c");
        assert!(ok);
        assert_eq!(header(&ctx, "x-ratelimit-limit"), Some("10"));
        assert_eq!(header(&ctx, "x-ratelimit-remaining"), Some("9"));
    }

    #[test]
    fn client_ip_keys_group_ipv6_by_prefix_and_fold_mapped_ipv4() {
        // The masking itself is `portcullis_core::addr::counted`'s (tested there). Through
        // the step: a client walking its /64 shares one budget.
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000_000)));
        let rl = limiter(
            "limits:\n  per-ip: { key: [client_ip], rate: 3/minute, phase: post_auth }\n",
            clock,
        );
        let stage = RateLimitStage::post_auth(rl);
        let from = |ip: &str| {
            let (mut req, mut ctx) = request(None, "c");
            ctx.client_ip = ip.parse().unwrap();
            matches!(
                stage.on_request(&mut req, &mut ctx),
                Step::Done(Verdict::Continue)
            )
        };
        for i in 1..=3 {
            assert!(from(&format!("2001:db8:7:7::{i}")), "{i}");
        }
        assert!(
            !from("2001:db8:7:7:dead:beef::99"),
            "the /64's budget is spent"
        );
        assert!(from("2001:db8:7:8::1"), "another /64 has its own");
    }

    /// Key dimension values cannot run into each other, nor fold distinct bytes into one,
    /// and a long one costs a digest's length.
    #[test]
    fn key_parts_are_unambiguous_and_bounded() {
        let key = |parts: &[&[u8]]| {
            let mut k = String::from("l");
            for p in parts {
                k.push('|');
                push_part(&mut k, p);
            }
            k
        };
        assert_ne!(key(&[b"a|b", b"c"]), key(&[b"a", b"b|c"]));
        assert_eq!(key(&[b"a|b", b"c"]), "l|a%7Cb|c");
        assert_ne!(key(&[b"\xff"]), key(&[b"\xfe"]));
        assert_ne!(key(&[b"%7C"]), key(&[b"|"]));
        assert_eq!(key(&[b"alice@example.com"]), "l|alice@example.com");
        let long = key(&[&[b'x'; 8192]]);
        assert_eq!(long.len(), "l|#".len() + 64);
        assert_ne!(long, key(&[&[b'y'; 8192]]));
        // A short value can never look like a digest.
        assert!(key(&[b"#abc"]).starts_with("l|%23"));
    }

    #[test]
    fn under_load_callers_step_down_tiers_and_untiered_limits_scale() {
        use crate::adaptive::Sample;
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000_000)));
        let rl = limiter(
            "tiers: [free, pro, enterprise]\nadaptive: { cpu_high: 0.5, window: 2s, recover_after: 10s }\nlimits:\n  per-client: { key: [client_id], rate: 10/minute, tiers: { free: 10/minute, pro: 100/minute, enterprise: 1000/minute } }\n  per-ip: { key: [client_ip], rate: 400/minute, phase: post_auth }\n",
            clock.clone(),
        );
        let per_client = &rl.settings.limits[0];
        let per_ip = &rl.settings.limits[1];
        let q = |l: &Limit, tier: Option<usize>| rl.effective(l, tier).limit;
        assert_eq!((q(per_client, Some(2)), q(per_ip, Some(2))), (1000, 400));
        // CPU at the threshold: degraded, factor 0.75: one tier down; per-ip (no tiers)
        // scaled to 300.
        let a = rl.adaptive().unwrap().clone();
        a.tick_with(Sample {
            cpu: Some(0.5),
            memory: None,
        });
        assert_eq!(a.factor(), 0.75);
        assert_eq!(q(per_client, Some(2)), 100);
        assert_eq!(q(per_client, Some(1)), 10);
        // Below the lowest tier: the base values — unless they are no lower (here equal to
        // free's), and for callers without a tier: then scaled, as every limit goes down.
        assert_eq!(q(per_client, Some(0)), 7);
        assert_eq!(q(per_client, None), 7);
        assert_eq!(q(per_ip, Some(2)), 300);

        // The step applies to requests: an enterprise caller now gets pro's budget.
        let stage = RateLimitStage::post_auth(rl.clone());
        let (_, ctx) = run(&stage, Some("enterprise"), "e1");
        assert!(
            ctx.response_headers
                .iter()
                .any(|(n, v)| n.as_str() == "ratelimit-policy"
                    && v.to_str().unwrap() == "\"per-client\";q=100;w=60"),
            "{:?}",
            ctx.response_headers
        );

        let rl = limiter(
            "tiers: [free, pro, enterprise]\nadaptive: { cpu_high: 0.5, window: 2s, recover_after: 10s }\nlimits:\n  odd: { key: [client_id], rate: 50/minute, tiers: { free: 5/minute, pro: 100/minute } }\n  monthly: { key: [client_id], quota: 1000/month, tiers: { pro: 5000/month } }\n",
            clock.clone(),
        );
        let named = |n: &str| rl.settings.limits.iter().find(|l| &*l.name == n).unwrap();
        let (odd, monthly) = (named("odd"), named("monthly"));
        let q = |l: &Limit, tier: Option<usize>| rl.effective(l, tier).limit;
        rl.adaptive().unwrap().tick_with(Sample {
            cpu: Some(0.5),
            memory: None,
        });
        // A step that would raise a limit (enterprise has the base, 50; pro allows 100): the
        // caller's own values scaled instead.
        assert_eq!(q(odd, Some(2)), 37);
        assert_eq!(q(odd, Some(1)), 5);
        // Quotas are never adapted.
        assert_eq!((q(monthly, Some(1)), q(monthly, None)), (5000, 1000));
    }

    /// 2026-03-31T23:59:00Z: a minute before a day (and a month) ends.
    const MONTH_END: Duration = Duration::from_secs(1_775_001_540);

    #[test]
    fn quotas_renew_at_the_utc_day_and_month_boundary() {
        let clock = Arc::new(ManualClock::new(MONTH_END));
        let rl = limiter(
            "tiers: [free, pro]\nlimits:\n  daily: { key: [client_id], quota: 3/day, warn_at: [60] }\n  monthly: { key: [client_id], quota: 5/month }\n",
            clock.clone(),
        );
        let stage = RateLimitStage::post_auth(rl);
        for i in 0..3 {
            let (ok, ctx) = run(&stage, None, "c1");
            assert!(ok, "request {i}");
            if i >= 1 {
                assert!(
                    header(&ctx, "x-quota-warning")
                        .unwrap()
                        .starts_with("daily;")
                );
            }
        }
        let (ok, ctx) = run(&stage, None, "c1");
        assert!(!ok);
        assert_eq!(ctx.limited_by.as_deref(), Some("daily"));
        // Another client has its own quota.
        assert!(run(&stage, None, "c2").0);
        // One minute later it is April 1st: the daily quota is whole again; the monthly one
        // (3 used in March) too.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            assert!(run(&stage, None, "c1").0);
        }
        assert!(!run(&stage, None, "c1").0);
        // The next day: daily renewed, but the monthly quota (3 of 5 used in April) runs out.
        clock.advance(Duration::from_secs(86_400));
        assert!(run(&stage, None, "c1").0);
        assert!(run(&stage, None, "c1").0);
        let (ok, ctx) = run(&stage, None, "c1");
        assert!(!ok);
        assert_eq!(ctx.limited_by.as_deref(), Some("monthly"));
    }

    #[test]
    fn tiers_select_values_and_the_tightest_limit_sets_the_headers() {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000_000)));
        let rl = limiter(
            "tiers: [free, pro]\nclients: { partner: pro }\nlimits:\n  per-client: { key: [client_id], rate: 2/minute, tiers: { pro: 10/minute } }\n  per-ip: { key: [client_ip], rate: 100/minute, phase: post_auth }\n",
            clock,
        );
        let stage = RateLimitStage::post_auth(rl);
        let (_, ctx) = run(&stage, Some("free"), "a");
        assert_eq!(header(&ctx, "x-ratelimit-limit"), Some("2"));
        assert_eq!(header(&ctx, "x-ratelimit-remaining"), Some("1"));
        assert_eq!(
            header(&ctx, "ratelimit-policy"),
            Some("\"per-client\";q=2;w=60")
        );
        // A client mapped to a tier.
        let (_, ctx) = run(&stage, None, "partner");
        assert_eq!(header(&ctx, "x-ratelimit-limit"), Some("10"));
        // An unknown tier name falls back to the base values.
        let (_, ctx) = run(&stage, Some("platinum"), "b");
        assert_eq!(header(&ctx, "x-ratelimit-limit"), Some("2"));
    }

    /// A client id and a subject are their authority's own: the same value vouched for by two
    /// issuers is two budgets; `authority` in a key scopes a tenant or claim the same way.
    #[test]
    fn identity_keys_are_scoped_by_their_authority() {
        for dim in ["client_id", "user", "authority"] {
            let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000_000)));
            let rl = limiter(
                &format!("limits:\n  l: {{ key: [{dim}], rate: 2/minute }}\n"),
                clock,
            );
            let stage = RateLimitStage::post_auth(rl);
            assert!(run_from(&stage, "idp-a", None, "alice").0, "{dim}");
            assert!(run_from(&stage, "idp-a", None, "alice").0, "{dim}");
            assert!(!run_from(&stage, "idp-a", None, "alice").0, "{dim}");
            // Another issuer's `alice` has a budget of her own.
            assert!(run_from(&stage, "idp-b", None, "alice").0, "{dim}");
            // With `authority` alone, every caller of an authority shares its budget.
            let bob = run_from(&stage, "idp-a", None, "bob").0;
            assert_eq!(bob, dim != "authority", "{dim}");
        }
    }

    /// A `clients` entry with an authority gives its tier to that authority's client only.
    #[test]
    fn a_client_tier_may_be_bound_to_an_authority() {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000_000)));
        let rl = limiter(
            "tiers: [free, pro]\nclients: { partner: { tier: pro, authority: corp }, web: free }\nlimits:\n  per-client: { key: [client_id], rate: 2/minute, tiers: { pro: 10/minute, free: 1/minute } }\n",
            clock,
        );
        let stage = RateLimitStage::post_auth(rl);
        let (_, ctx) = run_from(&stage, "corp", None, "partner");
        assert_eq!(header(&ctx, "x-ratelimit-limit"), Some("10"));
        // The same client id from another authority gets the base values.
        let (_, ctx) = run_from(&stage, "byo-idp", None, "partner");
        assert_eq!(header(&ctx, "x-ratelimit-limit"), Some("2"));
        // An entry without an authority applies whichever vouched for the id.
        for authority in ["corp", "byo-idp"] {
            let (_, ctx) = run_from(&stage, authority, None, "web");
            assert_eq!(header(&ctx, "x-ratelimit-limit"), Some("1"), "{authority}");
        }
    }

    /// An explicit burst is the base rate's: a tier gets it in proportion to its own rate;
    /// without one, each tier's burst is its own rate's count.
    #[test]
    fn an_explicit_burst_scales_with_each_tiers_rate() {
        let spec_of = |yaml: &str| {
            let raw: RawRateLimits = serde_yaml_ng::from_str(yaml).unwrap();
            let mut e = ConfigErrors::new();
            let s = compile(&raw, &mut e);
            assert!(e.is_empty(), "{e:?}");
            let l = &s.limits[0];
            let mut bursts = vec![l.base.burst];
            bursts.extend(l.tiers.iter().map(|(_, t)| t.burst));
            bursts
        };
        assert_eq!(
            spec_of(
                "tiers: [free, pro]\nlimits:\n  l: { key: [client_id], rate: 1000/minute, burst: 200, tiers: { free: 10/minute, pro: 100/second } }\n"
            ),
            vec![200, 2, 1200]
        );
        assert_eq!(
            spec_of(
                "tiers: [free]\nlimits:\n  l: { key: [client_id], rate: 1000/minute, burst: 1, tiers: { free: 1/hour } }\n"
            ),
            vec![1, 1]
        );
        assert_eq!(
            spec_of(
                "tiers: [free]\nlimits:\n  l: { key: [client_id], rate: 1000/minute, tiers: { free: 10/minute } }\n"
            ),
            vec![1000, 10]
        );
        // End to end: a free caller gets two at once, not two hundred.
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000_000)));
        let rl = limiter(
            "tiers: [free]\nlimits:\n  l: { key: [client_id], rate: 1000/minute, burst: 200, tiers: { free: 10/minute } }\n",
            clock,
        );
        let stage = RateLimitStage::post_auth(rl);
        assert!(run(&stage, Some("free"), "f").0);
        assert!(run(&stage, Some("free"), "f").0);
        assert!(!run(&stage, Some("free"), "f").0);
    }

    /// With a burst above the rate, what the headers say remains never exceeds the count the
    /// policy states.
    #[test]
    fn remaining_never_exceeds_the_stated_count() {
        let clock = Arc::new(ManualClock::new(Duration::from_secs(1_000_000)));
        let rl = limiter(
            "limits:\n  l: { key: [client_id], rate: 10/minute, burst: 50 }\n",
            clock,
        );
        let stage = RateLimitStage::post_auth(rl);
        let (_, ctx) = run(&stage, None, "c");
        assert_eq!(header(&ctx, "ratelimit-policy"), Some("\"l\";q=10;w=60"));
        assert_eq!(header(&ctx, "x-ratelimit-limit"), Some("10"));
        assert_eq!(header(&ctx, "x-ratelimit-remaining"), Some("10"));
        assert!(
            header(&ctx, "ratelimit")
                .unwrap()
                .starts_with("\"l\";r=10;")
        );
        // Once less than the count is left, the true remainder shows.
        for _ in 0..45 {
            assert!(run(&stage, None, "c").0);
        }
        let (_, ctx) = run(&stage, None, "c");
        assert_eq!(header(&ctx, "x-ratelimit-remaining"), Some("3"));
    }
}
