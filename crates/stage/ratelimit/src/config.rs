//! Rate-limit configuration: `rate_limits:` (stores, tiers, named limits, gateway-wide
//! limits, adaptive protection) and each route's `rate_limits: [names]`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use portcullis_core::units::compile_duration;
use portcullis_core::{ConfigErrors, UrlText};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::{Algorithm, LimitSpec, Period};

// ---------------------------------------------------------------------------------------------
// Raw

/// Rate limits and quotas.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    /// `local` (default: in memory, per instance) or `redis` (shared by every instance).
    #[serde(default)]
    pub store: StoreKind,
    /// The Redis server or cluster, with `store: redis`.
    #[serde(default)]
    pub redis: Option<RawRedis>,
    /// Most keys the in-memory store keeps (idle ones are evicted first). Default 1000000.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// The `client_ip` key of an IPv6 client is its address cut to this prefix (one host
    /// usually owns a whole /64, and may use any address in it). 1–128, default 64.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Tier names from lowest to highest priority (`[free, pro, enterprise]`). A caller's
    /// tier comes from its API key or token (`tier`), else from `clients`, else `default_tier`.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Client id → tier (whichever authority vouched for the client id), or → `{ tier,
    /// authority }` (only that authority's client of that id).
    #[serde(default)]
    pub clients: BTreeMap<String, RawClientTier>,
    /// The tier of an authenticated caller that has none. Default: none (base rates).
    #[serde(default)]
    pub default_tier: Option<String>,
    /// Named limits, applied where `global` or a route names them.
    #[serde(default)]
    pub limits: BTreeMap<String, RawLimit>,
    /// Limits applied to every route.
    #[serde(default)]
    pub global: Vec<String>,
    /// Send `RateLimit-Policy`/`RateLimit` and `X-RateLimit-*` headers. Default true.
    #[serde(default = "default_true")]
    pub headers: bool,
    /// Adaptive load protection (off unless given).
    #[serde(default)]
    pub adaptive: Option<RawAdaptive>,
}

/// A `clients` entry.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawClientTier {
    /// The tier, for a client of that id whichever authority vouched for it.
    Tier(String),
    /// The tier, for the client of that id only when this authority vouched for it.
    Scoped(RawScopedClientTier),
}

/// A `clients` entry bound to one authority.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawScopedClientTier {
    pub tier: String,
    /// The configured name of what verifies the client's credential: an issuer's or an
    /// introspection endpoint's name under `auth`, `api_keys`, or the listener's name (mTLS).
    pub authority: String,
}

impl Default for RawRateLimits {
    fn default() -> Self {
        RawRateLimits {
            store: StoreKind::Local,
            redis: None,
            max_keys: default_max_keys(),
            ipv6_prefix: default_ipv6_prefix(),
            tiers: Vec::new(),
            clients: BTreeMap::new(),
            default_tier: None,
            limits: BTreeMap::new(),
            global: Vec::new(),
            headers: true,
            adaptive: None,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_max_keys() -> usize {
    1_000_000
}
fn default_ipv6_prefix() -> u8 {
    64
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Local,
    Redis,
}

/// Redis for limits shared by several instances.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port/db` (or `rediss://`; a password as `redis://:pw@host`). For a
    /// cluster, any node (more in `cluster_nodes`). Default `redis://127.0.0.1:6379`.
    #[serde(default = "default_url")]
    pub url: UrlText,
    /// An environment variable that, when set and not empty, holds the URL instead (keeps a
    /// password out of the file), e.g. `REDIS_URL`.
    #[serde(default)]
    pub url_env: Option<String>,
    /// Talk Redis Cluster. Default false.
    #[serde(default)]
    pub cluster: bool,
    /// More cluster seed nodes.
    #[serde(default)]
    pub cluster_nodes: Vec<UrlText>,
    /// Default `portcullis:rl:`.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// No request waits longer for Redis. Default `50ms`.
    #[serde(default = "default_redis_timeout")]
    pub timeout: String,
    /// Gateway instances sharing the limits: while Redis is unreachable a `fail_open` limit
    /// is counted locally at `limit / instances` per instance. Default 1.
    #[serde(default = "default_instances")]
    pub instances: u64,
}

fn default_url() -> UrlText {
    "redis://127.0.0.1:6379".into()
}
fn default_prefix() -> String {
    "portcullis:rl:".into()
}
fn default_redis_timeout() -> String {
    "50ms".into()
}
fn default_instances() -> u64 {
    1
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawAlgorithm {
    /// Token bucket as GCRA: bursts up to `burst`, exact.
    #[default]
    Gcra,
    SlidingWindow,
    FixedWindow,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawPhase {
    /// Before authentication: keys of the request only (IP, route, method, header, global).
    PreAuth,
    /// After authentication: identity keys (client, user, API key, tenant, claim) too.
    #[default]
    PostAuth,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Count locally (each instance its share) and say so in logs and metrics.
    #[default]
    FailOpen,
    /// Refuse with 503.
    FailClosed,
}

/// A named limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// Key dimensions: `client_ip`, `client_id`, `user`, `api_key`, `tenant`, `authority`,
    /// `route`, `method`, `header:<name>`, `claim:<name>`, `global`. Several: a composite key. The key
    /// decides the budget: routes naming the same limit share it unless `route` is a dimension.
    pub key: Vec<String>,
    /// `gcra` (default), `sliding_window`, `fixed_window`.
    #[serde(default)]
    pub algorithm: RawAlgorithm,
    /// `N/second`, `N/minute`, `N/hour`, `N/day`, or `N/<duration>` (`20/10s`).
    #[serde(default)]
    pub rate: Option<String>,
    /// GCRA: requests allowed at once. Default: the rate's N.
    #[serde(default)]
    pub burst: Option<u64>,
    /// Requests in flight at once instead of a rate.
    #[serde(default)]
    pub concurrency: Option<u64>,
    /// A quota: `N/day` or `N/month`, UTC calendar windows.
    #[serde(default)]
    pub quota: Option<String>,
    /// Quota percentages at which a warning header is sent. Default `[80, 95]`.
    #[serde(default = "default_warn")]
    pub warn_at: Vec<u8>,
    /// Rates (or quotas, or concurrency) per tier, replacing the base value.
    #[serde(default)]
    pub tiers: BTreeMap<String, String>,
    /// Default: `pre_auth` when every dimension is known before authentication, else
    /// `post_auth`.
    #[serde(default)]
    pub phase: Option<RawPhase>,
    /// When the store (Redis) cannot answer. Default `fail_open`.
    #[serde(default)]
    pub on_store_error: OnStoreError,
}

fn default_warn() -> Vec<u8> {
    vec![80, 95]
}

/// Adaptive load protection.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptive {
    /// Process CPU use counted as degraded (0–1). Default 0.85.
    #[serde(default = "default_cpu")]
    pub cpu_high: f64,
    /// Resident memory counted as degraded (`2GiB`). Default: not watched.
    #[serde(default)]
    pub memory_high: Option<portcullis_core::units::RawSize>,
    /// Upstream failure fraction counted as degraded. Default 0.2.
    #[serde(default = "default_error_rate")]
    pub error_rate_high: f64,
    /// Upstream p99 latency objective. Default: not watched.
    #[serde(default)]
    pub latency_slo: Option<String>,
    /// Limits never scale below this fraction. Default 0.25.
    #[serde(default = "default_min_factor")]
    pub min_factor: f64,
    /// Signals are computed over this window. Default `10s`.
    #[serde(default = "default_window")]
    pub window: String,
    /// Healthy this long before limits step back up. Default `30s`.
    #[serde(default = "default_recover")]
    pub recover_after: String,
}

fn default_cpu() -> f64 {
    0.85
}
fn default_error_rate() -> f64 {
    0.2
}
fn default_min_factor() -> f64 {
    0.25
}
fn default_window() -> String {
    "10s".into()
}
fn default_recover() -> String {
    "30s".into()
}

// ---------------------------------------------------------------------------------------------
// Compiled

/// A key dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    ClientIp,
    /// The client id, under the authority that vouched for it (client ids are the
    /// authority's own: two issuers may both have a client `web`).
    ClientId,
    /// The subject (`sub`), under the authority that vouched for it (OpenID Connect: a
    /// subject is unique only within its issuer).
    User,
    ApiKey,
    /// The tenant, whichever authority named it (`authority` beside it scopes it).
    Tenant,
    /// The configured name of what verified the credential.
    Authority,
    Route,
    Method,
    Header(HeaderName),
    Claim(String),
    Global,
}

impl Dim {
    /// Known before authentication.
    pub fn pre_auth(&self) -> bool {
        matches!(
            self,
            Dim::ClientIp | Dim::Route | Dim::Method | Dim::Header(_) | Dim::Global
        )
    }
}

/// A compiled limit.
#[derive(Debug, Clone)]
pub struct Limit {
    pub name: Arc<str>,
    pub key: Vec<Dim>,
    pub base: LimitSpec,
    /// (tier index, spec) for tiers that differ from `base`.
    pub tiers: Vec<(usize, LimitSpec)>,
    pub pre_auth: bool,
    pub on_store_error: OnStoreError,
    /// Quota warning thresholds (percent), ascending.
    pub warn_at: Vec<u8>,
    pub is_quota: bool,
}

impl Limit {
    pub fn spec_for(&self, tier: Option<usize>) -> &LimitSpec {
        tier.and_then(|t| self.tiers.iter().find(|(i, _)| *i == t).map(|(_, s)| s))
            .unwrap_or(&self.base)
    }

    pub fn is_concurrency(&self) -> bool {
        self.base.algorithm == Algorithm::Concurrency
    }
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: UrlText,
    pub cluster: bool,
    pub cluster_nodes: Vec<UrlText>,
    pub key_prefix: String,
    pub timeout: Duration,
    pub instances: u64,
}

#[derive(Debug, Clone)]
pub struct AdaptiveConfig {
    pub cpu_high: f64,
    pub memory_high: Option<u64>,
    pub error_rate_high: f64,
    pub latency_slo: Option<Duration>,
    pub min_factor: f64,
    pub window: Duration,
    pub recover_after: Duration,
}

/// Gateway-wide compiled settings.
#[derive(Debug, Clone, Default)]
pub struct RateLimitSettings {
    pub redis: Option<RedisConfig>,
    pub max_keys: usize,
    /// IPv6 client addresses are keyed by this prefix (0 in a default-built value: whole).
    pub ipv6_prefix: u8,
    pub tiers: Vec<String>,
    /// (client id, the authority it must come from — any when `None`, tier index).
    pub clients: Vec<(String, Option<Arc<str>>, usize)>,
    pub default_tier: Option<usize>,
    pub limits: Vec<Limit>,
    /// Indexes into `limits`.
    pub global: Vec<usize>,
    pub headers: bool,
    pub adaptive: Option<AdaptiveConfig>,
}

impl RateLimitSettings {
    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t == name)
    }
}

/// Parses `N/unit` or `N/<duration>`.
pub fn parse_rate(s: &str) -> Result<(u64, Duration), String> {
    let bad = || format!("\"{s}\" is not a rate like 100/minute or 20/10s");
    let (n, per) = s.split_once('/').ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("\"{s}\": the count must be at least 1"));
    }
    let per = per.trim();
    let d = match per {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => portcullis_core::units::parse_duration(other).map_err(|_| bad())?,
    };
    if d.is_zero() {
        return Err(format!("\"{s}\": the period must be longer than zero"));
    }
    Ok((n, d))
}

/// Parses `N/day` or `N/month`.
fn parse_quota(s: &str) -> Result<(u64, Period), String> {
    let bad = || format!("\"{s}\" is not a quota like 10000/day or 250000/month");
    let (n, per) = s.split_once('/').ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("\"{s}\": the count must be at least 1"));
    }
    match per.trim() {
        "d" | "day" => Ok((n, Period::CalendarDay)),
        "month" => Ok((n, Period::CalendarMonth)),
        _ => Err(bad()),
    }
}

fn dim(s: &str, path: &str, e: &mut ConfigErrors) -> Option<Dim> {
    let d = match s {
        "client_ip" => Dim::ClientIp,
        "client_id" => Dim::ClientId,
        "user" => Dim::User,
        "api_key" => Dim::ApiKey,
        "tenant" => Dim::Tenant,
        "authority" => Dim::Authority,
        "route" => Dim::Route,
        "method" => Dim::Method,
        "global" => Dim::Global,
        other => {
            if let Some(h) = other.strip_prefix("header:") {
                match HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes()) {
                    Ok(h) => Dim::Header(h),
                    Err(_) => {
                        e.push(path, format!("\"{h}\" is not a header name"));
                        return None;
                    }
                }
            } else if let Some(c) = other.strip_prefix("claim:").filter(|c| !c.is_empty()) {
                Dim::Claim(c.to_string())
            } else {
                e.push(
                    path,
                    format!(
                        "unknown key dimension \"{other}\" (client_ip, client_id, user, api_key, \
                         tenant, route, method, header:<name>, claim:<name>, global)"
                    ),
                );
                return None;
            }
        }
    };
    Some(d)
}

fn algorithm(a: RawAlgorithm) -> Algorithm {
    match a {
        RawAlgorithm::Gcra => Algorithm::Gcra,
        RawAlgorithm::SlidingWindow => Algorithm::SlidingWindow,
        RawAlgorithm::FixedWindow => Algorithm::FixedWindow,
    }
}

/// The spec of a value written as the limit's kind (rate, quota or concurrency).
fn spec(raw: &RawLimit, value: &str, path: &str, e: &mut ConfigErrors) -> Option<LimitSpec> {
    if raw.concurrency.is_some() {
        return match value.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Some(LimitSpec {
                algorithm: Algorithm::Concurrency,
                limit: n,
                period: Period::Fixed(Duration::from_secs(1)),
                burst: n,
            }),
            _ => {
                e.push(path, format!("\"{value}\" is not a count of at least 1"));
                None
            }
        };
    }
    if raw.quota.is_some() {
        return match parse_quota(value) {
            Ok((n, period)) => Some(LimitSpec {
                algorithm: Algorithm::FixedWindow,
                limit: n,
                period,
                burst: n,
            }),
            Err(m) => {
                e.push(path, m);
                None
            }
        };
    }
    match parse_rate(value) {
        Ok((n, d)) => Some(LimitSpec {
            algorithm: algorithm(raw.algorithm),
            limit: n,
            period: Period::Fixed(d),
            burst: raw.burst.unwrap_or(n).max(1),
        }),
        Err(m) => {
            e.push(path, m);
            None
        }
    }
}

/// `base`'s burst for a tier's rate: in proportion to the two rates (requests per second),
/// rounded up, at least 1.
fn scaled_burst(base: &LimitSpec, tier: &LimitSpec) -> u64 {
    let (Period::Fixed(bp), Period::Fixed(tp)) = (base.period, tier.period) else {
        return tier.burst;
    };
    let per_second = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(f64::MIN_POSITIVE);
    let b = base.burst as f64 * per_second(tier.limit, tp) / per_second(base.limit, bp);
    if b.is_finite() {
        // `as` saturates: a burst beyond u64 is u64::MAX.
        (b.ceil() as u64).max(1)
    } else {
        tier.burst
    }
}

pub fn compile(raw: &RawRateLimits, e: &mut ConfigErrors) -> RateLimitSettings {
    let p = "rate_limits";
    let mut seen = HashSet::new();
    for (i, t) in raw.tiers.iter().enumerate() {
        if t.is_empty() || !seen.insert(t.as_str()) {
            e.push(
                format!("{p}.tiers[{i}]"),
                format!("\"{t}\" is empty or repeated"),
            );
        }
    }
    let tier = |name: &str, at: String, e: &mut ConfigErrors| -> Option<usize> {
        let i = raw.tiers.iter().position(|t| t == name);
        if i.is_none() {
            e.push(
                at,
                format!("unknown tier \"{name}\" (tiers: {})", raw.tiers.join(", ")),
            );
        }
        i
    };
    let clients = raw
        .clients
        .iter()
        .filter_map(|(c, t)| {
            let (name, authority) = match t {
                RawClientTier::Tier(t) => (t, None),
                RawClientTier::Scoped(s) => (&s.tier, Some(Arc::from(s.authority.as_str()))),
            };
            Some((
                c.clone(),
                authority,
                tier(name, format!("{p}.clients.{c}"), e)?,
            ))
        })
        .collect();
    let default_tier = raw
        .default_tier
        .as_ref()
        .and_then(|t| tier(t, format!("{p}.default_tier"), e));

    let mut limits = Vec::new();
    for (name, l) in &raw.limits {
        let lp = format!("{p}.limits.{name}");
        if l.key.is_empty() {
            e.push(
                format!("{lp}.key"),
                "name at least one dimension (or global)",
            );
        }
        let key: Vec<Dim> = l
            .key
            .iter()
            .enumerate()
            .filter_map(|(i, d)| dim(d.trim(), &format!("{lp}.key[{i}]"), e))
            .collect();
        let kinds = [l.rate.is_some(), l.quota.is_some(), l.concurrency.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            e.push(&lp, "give exactly one of rate, quota, concurrency");
            continue;
        }
        let (value, vp) = match (&l.rate, &l.quota, &l.concurrency) {
            (Some(r), _, _) => (r.clone(), format!("{lp}.rate")),
            (_, Some(q), _) => (q.clone(), format!("{lp}.quota")),
            (_, _, Some(c)) => (c.to_string(), format!("{lp}.concurrency")),
            _ => continue,
        };
        if l.burst.is_some() && (l.rate.is_none() || l.algorithm != RawAlgorithm::Gcra) {
            e.push(format!("{lp}.burst"), "burst applies to a gcra rate only");
        }
        if l.burst == Some(0) {
            e.push(format!("{lp}.burst"), "at least 1");
        }
        let Some(base_spec) = spec(l, &value, &vp, e) else {
            continue;
        };
        let tiers: Vec<(usize, LimitSpec)> = l
            .tiers
            .iter()
            .filter_map(|(t, v)| {
                let tp = format!("{lp}.tiers.{t}");
                let idx = tier(t, tp.clone(), e)?;
                let mut tier_spec = spec(l, v, &tp, e)?;
                // An explicit burst is the base rate's: a tier gets it in proportion to its
                // own rate (a burst of 200 on 1000/minute is 2 on a tier of 10/minute), not
                // the whole of it.
                if l.burst.is_some() {
                    tier_spec.burst = scaled_burst(&base_spec, &tier_spec);
                }
                Some((idx, tier_spec))
            })
            .collect();
        // Redis keeps a GCRA budget's time in whole microseconds: a rate whose interval
        // between requests is shorter would round every charge away and never refuse.
        if raw.store == StoreKind::Redis {
            let too_fast = |s: &LimitSpec| match (s.algorithm, s.period) {
                (Algorithm::Gcra, Period::Fixed(d)) => d.as_nanos() < u128::from(s.limit) * 1000,
                _ => false,
            };
            const TOO_FAST: &str = "with store: redis, a gcra rate allows at most one request \
                 per microsecond (a million a second): use sliding_window for more";
            if too_fast(&base_spec) {
                e.push(&vp, TOO_FAST);
            }
            for (t, _) in l.tiers.iter().filter(|(_, v)| {
                spec(l, v, "", &mut ConfigErrors::new()).is_some_and(|s| too_fast(&s))
            }) {
                e.push(format!("{lp}.tiers.{t}"), TOO_FAST);
            }
        }
        let all_pre = key.iter().all(Dim::pre_auth);
        let pre_auth = match l.phase {
            Some(RawPhase::PreAuth) => {
                if !all_pre {
                    e.push(
                        format!("{lp}.phase"),
                        "pre_auth limits can key only on client_ip, route, method, header:<name>, global",
                    );
                }
                true
            }
            Some(RawPhase::PostAuth) => false,
            None => all_pre,
        };
        let mut warn_at = l.warn_at.clone();
        warn_at.sort_unstable();
        warn_at.dedup();
        if warn_at.iter().any(|w| *w == 0 || *w > 100) {
            e.push(format!("{lp}.warn_at"), "percentages between 1 and 100");
        }
        limits.push(Limit {
            name: Arc::from(name.as_str()),
            key,
            base: base_spec,
            tiers,
            pre_auth,
            on_store_error: l.on_store_error,
            warn_at,
            is_quota: l.quota.is_some(),
        });
    }
    let global = raw
        .global
        .iter()
        .enumerate()
        .filter_map(|(i, n)| resolve_name(&limits, n, &format!("{p}.global[{i}]"), e))
        .collect();

    let redis = match (raw.store, &raw.redis) {
        (StoreKind::Redis, None) => {
            e.push(format!("{p}.redis"), "store: redis needs redis.url");
            None
        }
        (StoreKind::Local, Some(_)) => {
            e.push(
                format!("{p}.store"),
                "redis is configured but store is local",
            );
            None
        }
        (StoreKind::Local, None) => None,
        (StoreKind::Redis, Some(r)) => {
            let rp = format!("{p}.redis");
            let url = r
                .url_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| r.url.0.clone());
            let url = UrlText(url.trim().to_string());
            // One URL each: a list written in one (`redis://a,redis://b`) would be split into
            // seed nodes, but shown and checked as one URL (the passwords after the first
            // unhidden in `/config`).
            let one_url = |u: &str, at: String, e: &mut ConfigErrors| {
                if u.contains([',', ' ', '\t', '\n']) {
                    e.push(
                        at,
                        "one URL, without commas or blanks (more seed nodes go in redis.cluster_nodes)",
                    );
                } else if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    e.push(at, "a redis:// or rediss:// URL");
                }
            };
            one_url(&url.0, format!("{rp}.url"), e);
            for (i, n) in r.cluster_nodes.iter().enumerate() {
                one_url(n.0.trim(), format!("{rp}.cluster_nodes[{i}]"), e);
            }
            if r.instances == 0 {
                e.push(format!("{rp}.instances"), "at least 1");
            }
            Some(RedisConfig {
                url,
                cluster: r.cluster,
                cluster_nodes: r.cluster_nodes.clone(),
                key_prefix: r.key_prefix.clone(),
                timeout: compile_duration(&r.timeout, &format!("{rp}.timeout"), e),
                instances: r.instances.max(1),
            })
        }
    };
    if raw.max_keys == 0 {
        e.push(format!("{p}.max_keys"), "at least 1");
    }
    if !(1..=128).contains(&raw.ipv6_prefix) {
        e.push(format!("{p}.ipv6_prefix"), "must be 1..=128");
    }

    let adaptive = raw.adaptive.as_ref().map(|a| {
        let ap = format!("{p}.adaptive");
        for (k, v) in [
            ("cpu_high", a.cpu_high),
            ("error_rate_high", a.error_rate_high),
            ("min_factor", a.min_factor),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                e.push(format!("{ap}.{k}"), "a fraction above 0 and at most 1");
            }
        }
        AdaptiveConfig {
            cpu_high: a.cpu_high,
            memory_high: a
                .memory_high
                .as_ref()
                .map(|m| m.compile(&format!("{ap}.memory_high"), e)),
            error_rate_high: a.error_rate_high,
            latency_slo: a
                .latency_slo
                .as_ref()
                .map(|s| compile_duration(s, &format!("{ap}.latency_slo"), e)),
            min_factor: a.min_factor,
            window: compile_duration(&a.window, &format!("{ap}.window"), e),
            recover_after: compile_duration(&a.recover_after, &format!("{ap}.recover_after"), e),
        }
    });

    RateLimitSettings {
        redis,
        max_keys: raw.max_keys.max(1),
        ipv6_prefix: raw.ipv6_prefix,
        tiers: raw.tiers.clone(),
        clients,
        default_tier,
        limits,
        global,
        headers: raw.headers,
        adaptive,
    }
}

fn resolve_name(limits: &[Limit], name: &str, path: &str, e: &mut ConfigErrors) -> Option<usize> {
    let i = limits.iter().position(|l| &*l.name == name);
    if i.is_none() {
        let mut known: Vec<&str> = limits.iter().map(|l| &*l.name).collect();
        known.sort_unstable();
        e.push(
            path,
            format!("unknown limit \"{name}\" (known: {})", known.join(", ")),
        );
    }
    i
}

/// A route's limits: the gateway-wide ones and its own, by index, without repeats.
pub fn compile_route(
    names: &[String],
    settings: &RateLimitSettings,
    path: &str,
    e: &mut ConfigErrors,
) -> Vec<usize> {
    let mut out = settings.global.clone();
    for (i, n) in names.iter().enumerate() {
        if let Some(idx) = resolve_name(&settings.limits, n, &format!("{path}.rate_limits[{i}]"), e)
            && !out.contains(&idx)
        {
            out.push(idx);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(
            parse_rate("100/minute").unwrap(),
            (100, Duration::from_secs(60))
        );
        assert_eq!(parse_rate("5/s").unwrap(), (5, Duration::from_secs(1)));
        assert_eq!(parse_rate("20/10s").unwrap(), (20, Duration::from_secs(10)));
        assert_eq!(
            parse_rate("1/day").unwrap(),
            (1, Duration::from_secs(86_400))
        );
        for bad in ["100", "0/s", "x/s", "5/0s", "5/fortnight", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_quota("10/month").unwrap(),
            (10, Period::CalendarMonth)
        );
        assert!(parse_quota("10/minute").is_err());
    }

    #[test]
    fn the_ipv6_prefix_is_a_prefix_length() {
        for (prefix, ok) in [(0, false), (1, true), (64, true), (128, true), (129, false)] {
            let raw = RawRateLimits {
                ipv6_prefix: prefix,
                ..Default::default()
            };
            let mut e = ConfigErrors::new();
            let s = compile(&raw, &mut e);
            assert_eq!(e.is_empty(), ok, "{prefix}: {e:?}");
            if ok {
                assert_eq!(s.ipv6_prefix, prefix);
            }
        }
        assert_eq!(RawRateLimits::default().ipv6_prefix, 64);
    }

    /// Redis keeps GCRA times in whole microseconds: a faster rate (a tier's too) would never
    /// refuse there, and is refused at load; locally, or as a sliding window, it is fine.
    #[test]
    fn redis_gcra_rates_stay_within_a_request_per_microsecond() {
        let errors = |yaml: &str| {
            let raw: RawRateLimits = serde_yaml_ng::from_str(yaml).unwrap();
            let mut e = ConfigErrors::new();
            compile(&raw, &mut e);
            e.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        };
        let redis = "store: redis\nredis: { url: \"redis://127.0.0.1:6379\" }\n";
        let e = errors(&format!(
            "{redis}tiers: [gold]\nlimits:\n  a: {{ key: [global], rate: 2000000/s }}\n  b: {{ key: [global], rate: 1000000/s }}\n  c: {{ key: [global], rate: 2000000/s, algorithm: sliding_window }}\n  d: {{ key: [global], rate: 10/s, tiers: {{ gold: 3000000/s }} }}\n"
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("rate_limits.limits.a.rate: with store: redis"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("rate_limits.limits.d.tiers.gold: with store: redis"),
            "{e:?}"
        );
        assert!(errors("limits:\n  a: { key: [global], rate: 2000000/s }\n").is_empty());
    }
}
