//! # portcullis-telemetry
//!
//! Prometheus metrics and the process-wide log subscriber.
//!
//! * **Takes**: observations from the request path (route, status, latency, rejections,
//!   connections, upstream target state, config reloads, dropped audit events), and a log
//!   format plus an `EnvFilter` directive string at start-up.
//! * **Produces**: [`Metrics::encode`] — the whole registry in Prometheus text exposition
//!   format — and a global `tracing` subscriber writing to **stderr**.
//! * **Rejects**: a log filter directive that does not parse ([`init_logging`] returns `Err`).
//!
//! Invariants:
//! * Label values must come from bounded sets (route, listener and upstream names from the
//!   configuration, stable reason codes, status codes). Never pass client-controlled text as a
//!   label: every distinct value is a new time series kept for the life of the process.
//! * Recording is cheap: label values are interned as `Arc<str>` so that, once a series
//!   exists, an observation costs a couple of read locks and atomic operations and no heap
//!   allocation. Past [`INTERN_LIMIT`] distinct strings the interner stops growing and each
//!   call allocates one small `Arc<str>` instead.
//! * stdout is never written: it is reserved for start-up lines and audit events.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Most distinct label strings the interner keeps. Configuration-derived values stay far below
/// this; the cap only bounds memory if a caller mistakenly passes unbounded values.
pub const INTERN_LIMIT: usize = 4096;

/// Upper bounds (seconds) of the request duration histogram: 0.5 ms to 10 s, roughly
/// 1-2.5-5 per decade, which resolves both in-process rejections and slow upstreams.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    stage: Arc<str>,
    reason: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: Arc<str>,
    target: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamRequestLabels {
    upstream: Arc<str>,
    target: Arc<str>,
    outcome: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BanLabels {
    rule: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WafLabels {
    rule: u32,
    class: &'static str,
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WafOutcomeLabels {
    route: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContractLabels {
    route: Arc<str>,
    operation: Arc<str>,
    /// `request` or `response`.
    direction: &'static str,
    /// `block` or `detect`.
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthzLabels {
    rule: Arc<str>,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The hasher of the telemetry's own maps. Their keys are label values, from bounded,
/// configuration-derived sets (see the crate invariants), never client text, so a fast
/// non-cryptographic hash (randomly seeded) fits; SipHash was most of a recording's cost.
type FastHash = foldhash::fast::RandomState;

/// Hands out shared copies of label strings so the hot path does not allocate.
#[derive(Debug, Default)]
struct Interner {
    set: RwLock<HashSet<Arc<str>, FastHash>>,
}

/// Longest handle key ([`handle_key`]) kept; longer label values take the uncached path.
const HANDLE_KEY_MAX: usize = 256;

/// The label values of one series as one byte string: each value's length (two bytes), then
/// its bytes, so that two different lists of values never make the same key. `None` when it
/// would not fit in `buf`.
fn handle_key<'b>(values: &[&[u8]], buf: &'b mut [u8; HANDLE_KEY_MAX]) -> Option<&'b [u8]> {
    let mut n = 0;
    for v in values {
        let len = u16::try_from(v.len()).ok()?;
        let end = n + 2 + v.len();
        let dst = buf.get_mut(n..end)?;
        dst[..2].copy_from_slice(&len.to_le_bytes());
        dst[2..].copy_from_slice(v);
        n = end;
    }
    Some(&buf[..n])
}

/// Removes from `families` the series of the labels shown last time and not `now`, and makes
/// `now` the labels shown.
fn retire<L>(shown: &Mutex<HashSet<L>>, now: HashSet<L>, families: &[&Family<L, Gauge>])
where
    L: Clone + std::hash::Hash + Eq,
{
    let mut shown = shown
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for gone in shown.difference(&now) {
        for family in families {
            family.remove(gone);
        }
    }
    *shown = now;
}

/// Handles of series already created (clones of a family's metric, which share its value),
/// found by their [`handle_key`]: one fast hash per observation instead of an interned copy
/// of each label value and SipHash of the label set. Nothing is ever removed from the
/// families, so a handle stays the family's series. Holds at most [`INTERN_LIMIT`] handles;
/// past that, observations go through the family.
struct Handles<H> {
    map: RwLock<std::collections::HashMap<Box<[u8]>, H, FastHash>>,
}

impl<H> Default for Handles<H> {
    fn default() -> Self {
        Handles {
            map: RwLock::default(),
        }
    }
}

impl<H: Clone> Handles<H> {
    /// Runs `f` on the handle for `key`, made by `create` the first time.
    fn with(&self, key: &[u8], create: impl FnOnce() -> H, f: impl FnOnce(&H)) {
        // A poisoned lock only means another thread panicked mid-insert; the map is intact.
        {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = map.get(key) {
                f(h);
                return;
            }
        }
        let h = create();
        f(&h);
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() < INTERN_LIMIT {
            map.entry(key.into()).or_insert(h);
        }
    }
}

impl Interner {
    fn get(&self, s: &str) -> Arc<str> {
        // A poisoned lock only means another thread panicked mid-insert; the set itself is
        // still a valid HashSet, so keep using it rather than losing metrics.
        {
            let set = self.set.read().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = set.get(s) {
                return Arc::clone(v);
            }
        }
        let mut set = self.set.write().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = set.get(s) {
            return Arc::clone(v);
        }
        let v: Arc<str> = Arc::from(s);
        if set.len() < INTERN_LIMIT {
            set.insert(Arc::clone(&v));
        }
        v
    }
}

/// Every metric the gateway exports. `Send + Sync`; share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    interner: Interner,
    /// Per route and status: the duration histogram and the request counter.
    request_handles: Handles<(Histogram, Counter)>,
    /// Per upstream, target and outcome: the upstream request counter.
    upstream_request_handles: Handles<Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    rejections: Family<RejectionLabels, Counter>,
    active_connections: Family<ListenerLabels, Gauge>,
    target_healthy: Family<TargetLabels, Gauge>,
    target_in_flight: Family<TargetLabels, Gauge>,
    upstream_read_timeouts: Family<TargetLabels, Counter>,
    upstream_requests: Family<UpstreamRequestLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    config_last_reload_success: Gauge,
    audit_dropped: Counter,
    auth_failures: Family<ReasonLabels, Counter>,
    authz_decisions: Family<AuthzLabels, Counter>,
    waf_matches: Family<WafLabels, Counter>,
    waf_requests: Family<WafOutcomeLabels, Counter>,
    contract_violations: Family<ContractLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    bans: Family<BanLabels, Counter>,
    bans_in_force: Gauge,
    bans_store_up: Gauge,
    rate_limit_store_up: Gauge,
    rate_limit_keys: Gauge,
    rate_limit_evictions: Gauge,
    adaptive_factor: Gauge<f64, std::sync::atomic::AtomicU64>,
    adaptive_level: Gauge,
    jwks_keys: Family<IssuerLabels, Gauge>,
    jwks_last_success: Family<IssuerLabels, Gauge>,
    jwks_fetch_failures: Family<IssuerLabels, Gauge>,
    /// The target and issuer series set at the last scrape: those gone from the configuration
    /// since are removed, not left at their last value.
    shown_targets: Mutex<HashSet<TargetLabels>>,
    shown_issuers: Mutex<HashSet<IssuerLabels>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "portcullis_requests",
            "Finished requests by route (empty when none matched) and status",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "portcullis_request_duration_seconds",
            "Time from request head received to response head sent, by route",
            request_duration.clone(),
        );
        let rejections = Family::<RejectionLabels, Counter>::default();
        registry.register(
            "portcullis_rejections",
            "Requests refused, by the step that refused them and the stable reason code",
            rejections.clone(),
        );
        let active_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "portcullis_active_connections",
            "Client connections currently open, by listener",
            active_connections.clone(),
        );
        let target_healthy = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "portcullis_upstream_target_healthy",
            "1 when the upstream target is considered healthy, else 0",
            target_healthy.clone(),
        );
        let target_in_flight = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "portcullis_upstream_target_in_flight",
            "Requests currently outstanding to the upstream target",
            target_in_flight.clone(),
        );
        let upstream_read_timeouts = Family::<TargetLabels, Counter>::default();
        registry.register(
            "portcullis_upstream_read_timeouts",
            "Answers cut off because their upstream target sent nothing more of the body for the upstream's read_timeout",
            upstream_read_timeouts.clone(),
        );
        let upstream_requests = Family::<UpstreamRequestLabels, Counter>::default();
        registry.register(
            "portcullis_upstream_requests",
            "Requests sent to upstream targets, by outcome (ok, error, timeout)",
            upstream_requests.clone(),
        );
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "portcullis_config_reloads",
            "Configuration reload attempts, by result",
            config_reloads.clone(),
        );
        let config_last_reload_success = Gauge::default();
        // The configuration that started the process loaded, or there would be no process.
        config_last_reload_success.set(1);
        registry.register(
            "portcullis_config_last_reload_success",
            "1 when the last configuration reload succeeded, else 0",
            config_last_reload_success.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register(
            "portcullis_audit_events_dropped",
            "Audit events dropped because the writer could not keep up or failed",
            audit_dropped.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "portcullis_auth_failures",
            "Credentials refused, by precise reason (never sent to clients)",
            auth_failures.clone(),
        );
        let authz_decisions = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "portcullis_authz_decisions",
            "Authorization verdicts: denials by the rule that decided (`allow` for permits), and \
             every shadow rule's verdict (decision `shadow_allow` / `shadow_deny`)",
            authz_decisions.clone(),
        );
        let waf_matches = Family::<WafLabels, Counter>::default();
        registry.register(
            "portcullis_waf_matches",
            "WAF rule matches (excluded ones not counted), by rule id, attack class and the \
             route's mode",
            waf_matches.clone(),
        );
        let waf_requests = Family::<WafOutcomeLabels, Counter>::default();
        registry.register(
            "portcullis_waf_requests",
            "Requests the WAF found something in, by route and outcome (`blocked`, \
             `detected` — would have been blocked in detect mode — or `below_threshold`)",
            waf_requests.clone(),
        );
        let contract_violations = Family::<ContractLabels, Counter>::default();
        registry.register(
            "portcullis_contract_violations",
            "Requests (direction `request`) and upstream responses (`response`) that broke the \
             route's API contract, by route, OpenAPI operation and mode (`block` refused the \
             request; `detect` only recorded it; responses are never refused)",
            contract_violations.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "portcullis_rate_limited",
            "Requests refused by a rate limit, quota or concurrency limit, by limit name",
            rate_limited.clone(),
        );
        let bans = Family::<BanLabels, Counter>::default();
        registry.register(
            "portcullis_bans",
            "Client addresses banned, by the ban rule that banned them",
            bans.clone(),
        );
        let bans_in_force = Gauge::default();
        registry.register(
            "portcullis_bans_in_force",
            "Client addresses banned now (imposed here or, with bans.redis, by another instance)",
            bans_in_force.clone(),
        );
        let bans_store_up = Gauge::default();
        registry.register(
            "portcullis_bans_store_up",
            "1 while the bans are shared through Redis (or not shared at all), 0 while the last sync failed",
            bans_store_up.clone(),
        );
        let rate_limit_store_up = Gauge::default();
        registry.register(
            "portcullis_rate_limit_store_up",
            "1 while the shared rate-limit store (Redis) answers, 0 while limits fail open or closed",
            rate_limit_store_up.clone(),
        );
        let rate_limit_keys = Gauge::default();
        registry.register(
            "portcullis_rate_limit_keys",
            "Budgets held in memory",
            rate_limit_keys.clone(),
        );
        let rate_limit_evictions = Gauge::default();
        registry.register(
            "portcullis_rate_limit_evictions",
            "Budgets dropped while partly used because the in-memory store was full (since the store was made)",
            rate_limit_evictions.clone(),
        );
        let adaptive_factor = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "portcullis_adaptive_factor",
            "The adaptive controller's factor on every limit (1 = normal)",
            adaptive_factor.clone(),
        );
        let adaptive_level = Gauge::default();
        registry.register(
            "portcullis_adaptive_level",
            "0 normal, 1 degraded, 2 severe (shedding)",
            adaptive_level.clone(),
        );
        let jwks_keys = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "portcullis_jwks_keys",
            "Signing keys currently loaded, by JWT issuer (0: none could be loaded)",
            jwks_keys.clone(),
        );
        let jwks_last_success = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "portcullis_jwks_last_success_timestamp_seconds",
            "Unix time of the last successful key set fetch, by JWT issuer (0: never)",
            jwks_last_success.clone(),
        );
        let jwks_fetch_failures = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "portcullis_jwks_fetch_failures",
            "Failed key set fetches since start, by JWT issuer",
            jwks_fetch_failures.clone(),
        );
        Arc::new(Metrics {
            registry,
            auth_failures,
            authz_decisions,
            waf_matches,
            waf_requests,
            contract_violations,
            rate_limited,
            bans,
            bans_in_force,
            bans_store_up,
            rate_limit_store_up,
            rate_limit_keys,
            rate_limit_evictions,
            adaptive_factor,
            adaptive_level,
            jwks_keys,
            jwks_last_success,
            jwks_fetch_failures,
            shown_targets: Mutex::default(),
            shown_issuers: Mutex::default(),
            interner: Interner::default(),
            request_handles: Handles::default(),
            upstream_request_handles: Handles::default(),
            requests,
            request_duration,
            rejections,
            active_connections,
            target_healthy,
            target_in_flight,
            upstream_read_timeouts,
            upstream_requests,
            config_reloads,
            config_last_reload_success,
            audit_dropped,
        })
    }

    /// One finished request. `route` is `""` when no route matched.
    pub fn observe_request(&self, route: &str, status: u16, latency: Duration) {
        let record = |(duration, count): &(Histogram, Counter)| {
            duration.observe(latency.as_secs_f64());
            count.inc();
        };
        let mut buf = [0u8; HANDLE_KEY_MAX];
        let create = || {
            let route = self.interner.get(route);
            let duration = self.request_duration.get_or_create_owned(&RouteLabels {
                route: Arc::clone(&route),
            });
            let count = self
                .requests
                .get_or_create_owned(&RequestLabels { route, status });
            (duration, count)
        };
        match handle_key(&[route.as_bytes(), &status.to_le_bytes()], &mut buf) {
            Some(key) => self.request_handles.with(key, create, record),
            None => record(&create()),
        }
    }

    /// A request refused by `stage` for the stable `reason` code.
    pub fn count_rejection(&self, stage: &str, reason: &str) {
        let labels = RejectionLabels {
            stage: self.interner.get(stage),
            reason: self.interner.get(reason),
        };
        self.rejections.get_or_create(&labels).inc();
    }

    pub fn connection_opened(&self, listener: &str) {
        let labels = ListenerLabels {
            listener: self.interner.get(listener),
        };
        self.active_connections.get_or_create(&labels).inc();
    }

    pub fn connection_closed(&self, listener: &str) {
        let labels = ListenerLabels {
            listener: self.interner.get(listener),
        };
        self.active_connections.get_or_create(&labels).dec();
    }

    /// The health and load of every upstream target, as the balancer sees them now
    /// (`(upstream, target, healthy, in flight)`). The series of a target no longer among them
    /// (a reload removed it) are removed: a gauge left at its last value would say an absent
    /// target is down, or busy, for as long as the process runs.
    pub fn set_upstream_targets<'a>(
        &self,
        targets: impl IntoIterator<Item = (&'a str, &'a str, bool, usize)>,
    ) {
        let mut now = HashSet::new();
        for (upstream, target, healthy, in_flight) in targets {
            let labels = TargetLabels {
                upstream: self.interner.get(upstream),
                target: self.interner.get(target),
            };
            self.target_healthy
                .get_or_create(&labels)
                .set(i64::from(healthy));
            self.target_in_flight
                .get_or_create(&labels)
                .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
            now.insert(labels);
        }
        retire(
            &self.shown_targets,
            now,
            &[&self.target_healthy, &self.target_in_flight],
        );
    }

    /// `n` more answers of `upstream`'s `target` cut off by its `read_timeout` (told at a
    /// scrape: the bodies that time out do not reach the metrics).
    pub fn upstream_read_timeouts(&self, upstream: &str, target: &str, n: u64) {
        let labels = TargetLabels {
            upstream: self.interner.get(upstream),
            target: self.interner.get(target),
        };
        self.upstream_read_timeouts.get_or_create(&labels).inc_by(n);
    }

    /// `outcome` is one of `"ok"`, `"error"`, `"timeout"`.
    pub fn count_upstream_request(&self, upstream: &str, target: &str, outcome: &str) {
        let create = || {
            let labels = UpstreamRequestLabels {
                upstream: self.interner.get(upstream),
                target: self.interner.get(target),
                outcome: self.interner.get(outcome),
            };
            self.upstream_requests.get_or_create_owned(&labels)
        };
        let mut buf = [0u8; HANDLE_KEY_MAX];
        let values = [upstream.as_bytes(), target.as_bytes(), outcome.as_bytes()];
        match handle_key(&values, &mut buf) {
            Some(key) => self.upstream_request_handles.with(key, create, |c| {
                c.inc();
            }),
            None => {
                create().inc();
            }
        }
    }

    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
        self.config_last_reload_success.set(i64::from(ok));
    }

    /// A credential refused for the precise `reason`.
    pub fn auth_failure(&self, reason: &str) {
        let labels = ReasonLabels {
            reason: self.interner.get(reason),
        };
        self.auth_failures.get_or_create(&labels).inc();
    }

    /// One authorization verdict: `rule` as recorded in audit (`allow` for a permit);
    /// `decision` one of `allow`, `deny`, `shadow_allow`, `shadow_deny`.
    pub fn authz_decision(&self, rule: &str, decision: &'static str) {
        let labels = AuthzLabels {
            rule: self.interner.get(rule),
            decision,
        };
        self.authz_decisions.get_or_create(&labels).inc();
    }

    /// What the WAF found in one request.
    pub fn waf(&self, route: &str, report: &portcullis_core::WafReport) {
        for m in report.matches.iter().filter(|m| !m.excluded) {
            let labels = WafLabels {
                rule: m.rule,
                class: m.class,
                mode: report.mode,
            };
            self.waf_matches.get_or_create(&labels).inc();
        }
        let outcome = match (report.blocked, report.mode) {
            (true, "block") => "blocked",
            (true, _) => "detected",
            (false, _) => "below_threshold",
        };
        let labels = WafOutcomeLabels {
            route: self.interner.get(route),
            outcome,
        };
        self.waf_requests.get_or_create(&labels).inc();
    }

    /// What the contract step found in one request and its response.
    pub fn contract(&self, route: &str, report: &portcullis_core::ContractReport) {
        let mode = if report.enforced { "block" } else { "detect" };
        for (direction, found) in [
            ("request", !report.request.is_empty()),
            ("response", !report.response.is_empty()),
        ] {
            if found {
                let labels = ContractLabels {
                    route: self.interner.get(route),
                    operation: self.interner.get(&report.operation),
                    direction,
                    mode,
                };
                self.contract_violations.get_or_create(&labels).inc();
            }
        }
    }

    /// Rate-limiting state: the shared store's health (None: no shared store), keys held and
    /// budgets evicted, and the adaptive factor and level when configured.
    pub fn set_ratelimit(
        &self,
        store_up: Option<bool>,
        keys: usize,
        evictions: u64,
        adaptive: Option<(f64, u8)>,
    ) {
        self.rate_limit_store_up
            .set(i64::from(store_up.unwrap_or(true)));
        self.rate_limit_keys
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
        self.rate_limit_evictions
            .set(i64::try_from(evictions).unwrap_or(i64::MAX));
        let (f, l) = adaptive.unwrap_or((1.0, 0));
        self.adaptive_factor.set(f);
        self.adaptive_level.set(i64::from(l));
    }

    /// A client address was banned by `rule`.
    pub fn banned(&self, rule: &str) {
        let labels = BanLabels {
            rule: self.interner.get(rule),
        };
        self.bans.get_or_create(&labels).inc();
    }

    /// Bans: the addresses banned now, and whether their sharing works (None: not shared).
    pub fn set_bans(&self, in_force: usize, store_up: Option<bool>) {
        self.bans_in_force
            .set(i64::try_from(in_force).unwrap_or(i64::MAX));
        self.bans_store_up.set(i64::from(store_up.unwrap_or(true)));
    }

    /// A request refused by the named limit.
    pub fn rate_limited(&self, limit: &str) {
        let labels = LimitLabels {
            limit: self.interner.get(limit),
        };
        self.rate_limited.get_or_create(&labels).inc();
    }

    /// The key state of every JWT issuer (`(issuer, keys, last success, failures)`); the
    /// series of an issuer no longer among them are removed.
    pub fn set_issuers_keys<'a>(
        &self,
        issuers: impl IntoIterator<Item = (&'a str, usize, u64, u64)>,
    ) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut now = HashSet::new();
        for (issuer, keys, last_success, failures) in issuers {
            let labels = IssuerLabels {
                issuer: self.interner.get(issuer),
            };
            self.jwks_keys.get_or_create(&labels).set(g(keys as u64));
            self.jwks_last_success
                .get_or_create(&labels)
                .set(g(last_success));
            self.jwks_fetch_failures
                .get_or_create(&labels)
                .set(g(failures));
            now.insert(labels);
        }
        retire(
            &self.shown_issuers,
            now,
            &[
                &self.jwks_keys,
                &self.jwks_last_success,
                &self.jwks_fetch_failures,
            ],
        );
    }

    /// `n` more audit events were dropped (a delta, not a total).
    pub fn audit_dropped(&self, n: u64) {
        self.audit_dropped.inc_by(n);
    }

    /// The whole registry in Prometheus text exposition format, ending with `# EOF\n`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; an Err could only come from a broken encoder,
        // and half a page of metrics is still more useful than none.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("metrics encoding failed; output may be incomplete");
        }
        out
    }
}

/// The shape of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// What is logged while a configuration is loaded before logging has been set up from it (at
/// start, and by `portcullis check`): its warnings — a document the gateway can only partly
/// enforce, a key file with a problem — to stderr as text. Used with
/// `tracing::dispatcher::with_default` around the load.
pub fn load_logger() -> tracing::Dispatch {
    tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::WARN)
            .finish(),
    )
}

/// Installs the global tracing subscriber writing to stderr (stdout is reserved for start-up
/// lines and audit events).
///
/// `filter` is an `EnvFilter` directive string such as `"info"` or `"portcullis=debug,info"`;
/// a non-empty `RUST_LOG` overrides it. `filter` is validated even when overridden, so a bad
/// configuration is reported whatever the environment. Errors: a bad directive in `filter` or
/// `RUST_LOG`, or a global subscriber already installed.
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;

    let configured = EnvFilter::builder()
        .parse(filter)
        .map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
    let env_filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::builder()
            .parse(&v)
            .map_err(|e| format!("invalid RUST_LOG {v:?}: {e}"))?,
        _ => configured,
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(env_filter);
    let res = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    res.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

#[cfg(test)]
// Tests may panic on unexpected values; the workspace lint is meant for library code.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn handle_keys_tell_value_lists_apart() {
        let key = |values: &[&[u8]]| {
            let mut buf = [0u8; HANDLE_KEY_MAX];
            handle_key(values, &mut buf).map(<[u8]>::to_vec)
        };
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        assert_ne!(key(&[b"", b"a"]), key(&[b"a", b""]));
        assert_ne!(key(&[b"a"]), key(&[b"a", b""]));
        assert_eq!(key(&[b"api", b"ok"]), key(&[b"api", b"ok"]));
        let fits = vec![b'x'; HANDLE_KEY_MAX - 2];
        assert_eq!(key(&[&fits]).map(|k| k.len()), Some(HANDLE_KEY_MAX));
        let long = vec![b'x'; HANDLE_KEY_MAX - 1];
        assert_eq!(key(&[&long]), None);
        assert_eq!(key(&[b"a", &fits]), None);
    }

    #[test]
    fn cached_and_uncached_observations_count_alike() {
        let m = Metrics::new();
        let long = "r".repeat(HANDLE_KEY_MAX);
        for _ in 0..3 {
            m.observe_request("users", 200, Duration::from_millis(3));
            m.observe_request(&long, 200, Duration::from_millis(3));
            m.count_upstream_request("api", "http://10.0.0.1:80", "ok");
            m.count_upstream_request(&long, "http://10.0.0.1:80", "ok");
        }
        m.observe_request("users", 500, Duration::from_millis(3));
        let text = m.encode();
        // The histogram is per route: "users" has the 500 too.
        for (route, timed) in [("users", 4.0), (long.as_str(), 3.0)] {
            assert_eq!(
                line_value(
                    &text,
                    &format!("portcullis_requests_total{{route=\"{route}\",status=\"200\"}}")
                ),
                Some(3.0),
                "{text}"
            );
            assert_eq!(
                line_value(
                    &text,
                    &format!("portcullis_request_duration_seconds_count{{route=\"{route}\"}}")
                ),
                Some(timed),
                "{text}"
            );
        }
        assert_eq!(
            line_value(
                &text,
                "portcullis_requests_total{route=\"users\",status=\"500\"}"
            ),
            Some(1.0),
            "{text}"
        );
        for upstream in ["api", long.as_str()] {
            assert_eq!(
                line_value(
                    &text,
                    &format!(
                        "portcullis_upstream_requests_total{{upstream=\"{upstream}\",target=\"http://10.0.0.1:80\",outcome=\"ok\"}}"
                    )
                ),
                Some(3.0),
                "{text}"
            );
        }
        // Cached once per series that fits a key.
        assert_eq!(m.request_handles.map.read().unwrap().len(), 2);
        assert_eq!(m.upstream_request_handles.map.read().unwrap().len(), 1);
    }

    #[test]
    fn metrics_are_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Metrics>();
    }

    #[test]
    fn request_counter_and_histogram() {
        let m = Metrics::new();
        m.observe_request("users", 200, Duration::from_millis(3));
        m.observe_request("users", 200, Duration::from_millis(30));
        m.observe_request("", 404, Duration::from_micros(100));
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE portcullis_requests counter"),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                "portcullis_requests_total{route=\"users\",status=\"200\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                "portcullis_requests_total{route=\"\",status=\"404\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert!(
            text.contains("# TYPE portcullis_request_duration_seconds histogram"),
            "{text}"
        );
        let bucket = |le: &str| {
            line_value(
                &text,
                &format!(
                    "portcullis_request_duration_seconds_bucket{{le=\"{le}\",route=\"users\"}}"
                ),
            )
        };
        // 3 ms falls in le=0.005, 30 ms in le=0.05; buckets are cumulative.
        assert_eq!(bucket("0.0005"), Some(0.0), "{text}");
        assert_eq!(bucket("0.0025"), Some(0.0), "{text}");
        assert_eq!(bucket("0.005"), Some(1.0), "{text}");
        assert_eq!(bucket("0.025"), Some(1.0), "{text}");
        assert_eq!(bucket("0.05"), Some(2.0), "{text}");
        assert_eq!(bucket("10.0"), Some(2.0), "{text}");
        assert_eq!(bucket("+Inf"), Some(2.0), "{text}");
        assert_eq!(
            line_value(
                &text,
                "portcullis_request_duration_seconds_count{route=\"users\"}"
            ),
            Some(2.0)
        );
        let sum = line_value(
            &text,
            "portcullis_request_duration_seconds_sum{route=\"users\"}",
        );
        assert!(sum.is_some_and(|s| (s - 0.033).abs() < 1e-9), "{text}");
        assert_eq!(
            line_value(
                &text,
                "portcullis_request_duration_seconds_bucket{le=\"0.0005\",route=\"\"}"
            ),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn issuers_no_longer_configured_leave_the_metrics() {
        let m = Metrics::new();
        m.set_issuers_keys([("kept", 2, 100, 0), ("removed", 1, 50, 3)]);
        let text = m.encode();
        assert_eq!(
            line_value(&text, "portcullis_jwks_fetch_failures{issuer=\"removed\"}"),
            Some(3.0),
            "{text}"
        );
        m.set_issuers_keys([("kept", 3, 200, 0)]);
        let text = m.encode();
        assert!(!text.contains("issuer=\"removed\""), "{text}");
        assert_eq!(
            line_value(&text, "portcullis_jwks_keys{issuer=\"kept\"}"),
            Some(3.0),
            "{text}"
        );
    }

    #[test]
    fn rejections_connections_upstreams() {
        let m = Metrics::new();
        m.count_rejection("ipfilter", "ip_denied");
        m.count_rejection("ipfilter", "ip_denied");
        m.connection_opened("public");
        m.connection_opened("public");
        m.connection_closed("public");
        m.set_upstream_targets([
            ("api", "http://10.0.0.1:80", true, 3),
            ("api", "http://10.0.0.2:80", false, 0),
        ]);
        m.count_upstream_request("api", "http://10.0.0.1:80", "ok");
        m.count_upstream_request("api", "http://10.0.0.1:80", "timeout");
        m.upstream_read_timeouts("api", "http://10.0.0.1:80", 2);
        m.upstream_read_timeouts("api", "http://10.0.0.1:80", 1);
        let text = m.encode();
        assert_eq!(
            line_value(
                &text,
                "portcullis_upstream_read_timeouts_total{upstream=\"api\",target=\"http://10.0.0.1:80\"}"
            ),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                "portcullis_rejections_total{stage=\"ipfilter\",reason=\"ip_denied\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            line_value(&text, "portcullis_active_connections{listener=\"public\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                "portcullis_upstream_target_healthy{upstream=\"api\",target=\"http://10.0.0.1:80\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                "portcullis_upstream_target_healthy{upstream=\"api\",target=\"http://10.0.0.2:80\"}"
            ),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                "portcullis_upstream_target_in_flight{upstream=\"api\",target=\"http://10.0.0.1:80\"}"
            ),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            line_value(
                &text,
                "portcullis_upstream_requests_total{upstream=\"api\",target=\"http://10.0.0.1:80\",outcome=\"timeout\"}"
            ),
            Some(1.0),
            "{text}"
        );
        // Updating a target replaces the gauge values; a target no longer configured loses
        // its gauges (its counters stay: they count what happened).
        m.set_upstream_targets([("api", "http://10.0.0.1:80", false, 0)]);
        let text = m.encode();
        assert_eq!(
            line_value(
                &text,
                "portcullis_upstream_target_healthy{upstream=\"api\",target=\"http://10.0.0.1:80\"}"
            ),
            Some(0.0),
            "{text}"
        );
        assert!(!text.contains("target=\"http://10.0.0.2:80\""), "{text}");
        assert_eq!(
            line_value(
                &text,
                "portcullis_upstream_requests_total{upstream=\"api\",target=\"http://10.0.0.1:80\",outcome=\"timeout\"}"
            ),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn reloads_and_audit_drops() {
        let m = Metrics::new();
        let text = m.encode();
        assert_eq!(
            line_value(&text, "portcullis_config_last_reload_success "),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            line_value(&text, "portcullis_audit_events_dropped_total "),
            Some(0.0),
            "{text}"
        );
        m.config_reload(true);
        m.config_reload(false);
        m.audit_dropped(5);
        m.audit_dropped(2);
        let text = m.encode();
        assert_eq!(
            line_value(&text, "portcullis_config_reloads_total{result=\"ok\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            line_value(&text, "portcullis_config_reloads_total{result=\"error\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            line_value(&text, "portcullis_config_last_reload_success "),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            line_value(&text, "portcullis_audit_events_dropped_total "),
            Some(7.0),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.count_rejection("x", "a\"b\\c\nd");
        let text = m.encode();
        assert!(text.contains(r#"reason="a\"b\\c\nd""#), "{text}");
    }

    #[test]
    fn interner_shares_and_caps() {
        let i = Interner::default();
        let a = i.get("route-a");
        let b = i.get("route-a");
        assert!(Arc::ptr_eq(&a, &b));
        for n in 0..INTERN_LIMIT + 10 {
            let _ = i.get(&format!("v{n}"));
        }
        let len = i.set.read().map(|s| s.len()).unwrap_or(0);
        assert_eq!(len, INTERN_LIMIT);
        // Past the cap values are still returned correctly, just not shared.
        assert_eq!(&*i.get("late"), "late");
    }

    #[test]
    fn bad_log_filter_is_rejected() {
        // Run before any successful init in this process, so the error is the filter's.
        let err = init_logging(LogFormat::Json, "portcullis=notalevel");
        assert!(
            err.as_ref()
                .is_err_and(|e| e.contains("invalid log filter")),
            "{err:?}"
        );
    }
}
