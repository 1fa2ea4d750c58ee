//! Bans: a client address that collects too many refusals of the kinds a rule counts (failed
//! authentications, WAF blocks, 404s from a scanner …) within a window is refused outright,
//! before routing, for a while.
//!
//! * **Counts**: the refusal each request ended with (the engine reports it once the request
//!   is answered, [`BanList::record`]), per rule, per client address — an IPv6 address by its
//!   prefix (`/64` by default: one host owns a whole prefix), an IPv4-mapped one as IPv4.
//! * **Refuses**: `403 ip_banned` with `Retry-After`, from the gateway-wide address step; an
//!   exempt address never, even when the prefix it is counted by is banned (by a neighbour's
//!   refusals, by hand, or by another instance).
//! * **Bounds**: at most `max_tracked` addresses are followed, in [`TRACK_SHARDS`] shards of
//!   `⌈max_tracked / TRACK_SHARDS⌉` each (so the bound is `max_tracked` rounded up to a
//!   multiple of the shard count). A new address always finds room in its shard unless nearly
//!   all of that shard is banned: a full shard drops at once the addresses whose counts and ban
//!   have run out, then — until an eighth of it is free — those without a ban that are nearest
//!   no ban (the lowest share of a rule's count, then the least recently seen), so one walk of
//!   the shard pays for an eighth of its size of new addresses, and an attacker filling the list
//!   with one refusal per address pushes out its own entries before an offender's larger count.
//!   A ban is never dropped to make room (that would lift it). When more than seven eighths of a
//!   shard are banned, it is walked again only once the first of those bans ends (at most once
//!   a second) and a new address is meanwhile not counted there: to get there, an attacker must
//!   have about `max_tracked` of its own addresses banned.
//! * **State**: per instance, kept across reloads (counts follow their rule by name). With
//!   `bans.redis`, the bans are shared: every instance writes its new bans to one sorted set
//!   and reads the set every `sync_interval`, so an address banned by one instance is refused
//!   by all, and a ban lifted on one is lifted on all; and the counts add up: each instance
//!   adds the refusals it counted since the last sync to the store's counts, and the store
//!   says which addresses reached a rule's count in all. Redis unreachable: each instance goes
//!   on counting and banning on its own and shares the bans it missed once the store is back
//!   ([`BanList::share`]).
//!
//! The counter is a sliding window of two fixed ones: the previous window's count weighted by
//! how much of it still lies within `within`, plus the current one's — O(1) memory per
//! address and rule.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use portcullis_core::units::parse_duration;
use portcullis_core::{ConfigErrors, RawSecretOrString, RejectReason};
use portcullis_store::{RedisTarget, Store};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{canonical, parse_nets};

/// The `bans` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawBans {
    /// What gets an address banned. None: no bans.
    #[serde(default)]
    pub rules: Vec<RawBanRule>,
    /// Addresses/CIDRs never banned (monitoring, your own offices).
    #[serde(default)]
    pub exempt: Vec<String>,
    /// IPv6 addresses are counted and banned by this prefix. Default 64.
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
    /// Most client addresses followed at once. Default 100000.
    #[serde(default)]
    pub max_tracked: Option<usize>,
    /// Share the bans with every instance through this Redis. None: per instance.
    #[serde(default)]
    pub redis: Option<RawBanRedis>,
    /// Close a banned address's connections at accept, before any TLS handshake, instead of
    /// answering its requests with 403. Default false.
    #[serde(default)]
    pub refuse_connections: bool,
}

/// `bans.redis`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawBanRedis {
    /// `redis://host:port/db` (or `rediss://`), or a secret holding it; with `cluster`, any
    /// node of the cluster.
    pub url: RawSecretOrString,
    /// A Redis Cluster. Default false.
    #[serde(default)]
    pub cluster: bool,
    /// More seed nodes of the cluster.
    #[serde(default)]
    pub cluster_nodes: Vec<portcullis_core::UrlText>,
    /// Prefix of the key (`<prefix>bans`). Default `portcullis:`.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Longest wait for one Redis command. Default `250ms`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// How often the shared bans are written and read. Default `2s`.
    #[serde(default)]
    pub sync_interval: Option<String>,
}

/// One ban rule.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawBanRule {
    pub name: String,
    /// Refusal codes counted: `unauthenticated`, `waf_blocked`, `route_not_found` …
    pub on: Vec<String>,
    /// This many refusals within `within` ban the address.
    pub count: u32,
    pub within: String,
    pub ban_for: String,
}

/// Most refusals a rule may count to.
pub const MAX_COUNT: u32 = 100_000;
const DEFAULT_MAX_TRACKED: usize = 100_000;
const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The compiled section.
#[derive(Debug, Clone)]
pub struct BanRules {
    rules: Vec<BanRule>,
    exempt: Vec<IpNet>,
    ipv6_prefix: u8,
    max_tracked: usize,
    /// The longest `within`: how long an address's counts can matter.
    longest: Duration,
    /// `bans.redis`, when the bans are shared.
    sharing: Option<Sharing>,
    refuse_connections: bool,
}

/// The compiled `bans.redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sharing {
    pub target: RedisTarget,
    pub key_prefix: String,
    pub timeout: Duration,
    pub sync_interval: Duration,
}

#[derive(Debug, Clone)]
struct BanRule {
    name: Arc<str>,
    on: Vec<RejectReason>,
    count: u32,
    within: Duration,
    ban_for: Duration,
}

impl Default for BanRules {
    fn default() -> Self {
        BanRules {
            rules: Vec::new(),
            exempt: Vec::new(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            max_tracked: DEFAULT_MAX_TRACKED,
            longest: Duration::ZERO,
            sharing: None,
            refuse_connections: false,
        }
    }
}

impl BanRules {
    /// `base` resolves a secret's file path.
    pub fn compile(raw: &RawBans, path: &str, base: &Path, e: &mut ConfigErrors) -> BanRules {
        let mut rules: Vec<BanRule> = Vec::new();
        for (i, r) in raw.rules.iter().enumerate() {
            let p = format!("{path}.rules[{i}]");
            // Names go into store keys (as a cluster hash tag) and metric labels.
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                e.push(
                    format!("{p}.name"),
                    "letters, digits, '-', '_' and '.' only, at least one",
                );
            } else if rules.iter().any(|x| *x.name == *r.name) {
                e.push(format!("{p}.name"), format!("{} is used twice", r.name));
            }
            if r.on.is_empty() {
                e.push(format!("{p}.on"), "must name at least one refusal code");
            }
            let mut on = Vec::new();
            for (j, code) in r.on.iter().enumerate() {
                let countable = RejectReason::ALL
                    .iter()
                    .filter(|c| c.counts_against_client());
                match countable.clone().find(|c| c.code() == code) {
                    Some(c) if !on.contains(c) => on.push(*c),
                    Some(_) => e.push(format!("{p}.on[{j}]"), format!("{code} is listed twice")),
                    None => e.push(
                        format!("{p}.on[{j}]"),
                        format!(
                            "{code} is not a refusal a client can be banned for; one of: {}",
                            countable.map(|c| c.code()).collect::<Vec<_>>().join(", ")
                        ),
                    ),
                }
            }
            if r.count == 0 || r.count > MAX_COUNT {
                e.push(format!("{p}.count"), format!("must be 1..={MAX_COUNT}"));
            }
            let mut positive = |text: &str, key: &str| match parse_duration(text) {
                Ok(d) if d.is_zero() => {
                    e.push(format!("{p}.{key}"), "must be longer than 0s");
                    d
                }
                Ok(d) => d,
                Err(m) => {
                    e.push(format!("{p}.{key}"), m);
                    Duration::ZERO
                }
            };
            let within = positive(&r.within, "within");
            let ban_for = positive(&r.ban_for, "ban_for");
            rules.push(BanRule {
                name: Arc::from(r.name.as_str()),
                on,
                count: r.count,
                within,
                ban_for,
            });
        }
        let ipv6_prefix = raw.ipv6_prefix.unwrap_or(DEFAULT_IPV6_PREFIX);
        if !(1..=128).contains(&ipv6_prefix) {
            e.push(format!("{path}.ipv6_prefix"), "must be 1..=128");
        }
        let max_tracked = raw.max_tracked.unwrap_or(DEFAULT_MAX_TRACKED);
        if max_tracked == 0 {
            e.push(format!("{path}.max_tracked"), "must be at least 1");
        }
        let longest = rules.iter().map(|r| r.within).max().unwrap_or_default();
        let sharing = raw.redis.as_ref().map(|r| {
            let p = format!("{path}.redis");
            let target = RedisTarget::compile(&r.url, r.cluster, &r.cluster_nodes, &p, base, e);
            let mut duration =
                |key: &str, text: Option<&String>, default: Duration, least| match text
                    .map(|t| parse_duration(t))
                {
                    None => default,
                    Some(Ok(d)) if d >= least => d,
                    Some(Ok(_)) => {
                        e.push(format!("{p}.{key}"), format!("must be at least {least:?}"));
                        default
                    }
                    Some(Err(m)) => {
                        e.push(format!("{p}.{key}"), m);
                        default
                    }
                };
            Sharing {
                target,
                key_prefix: r.key_prefix.clone().unwrap_or_else(|| "portcullis:".into()),
                timeout: duration(
                    "timeout",
                    r.timeout.as_ref(),
                    Duration::from_millis(250),
                    Duration::from_millis(1),
                ),
                sync_interval: duration(
                    "sync_interval",
                    r.sync_interval.as_ref(),
                    Duration::from_secs(2),
                    Duration::from_millis(100),
                ),
            }
        });
        BanRules {
            rules,
            exempt: parse_nets(&raw.exempt, &format!("{path}.exempt"), e),
            ipv6_prefix,
            max_tracked,
            longest,
            sharing,
            refuse_connections: raw.refuse_connections,
        }
    }

    /// Whether a banned address's connections are closed at accept (`refuse_connections`).
    pub fn refuse_connections(&self) -> bool {
        self.refuse_connections
    }

    /// `bans.redis`, when the bans are shared.
    pub fn sharing(&self) -> Option<&Sharing> {
        self.sharing.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The address as counted (bans, and the connection cap per address): IPv4-mapped IPv6
    /// as IPv4, IPv6 by its prefix (`ipv6_prefix`).
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        portcullis_core::addr::counted(ip, self.ipv6_prefix)
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.exempt.iter().any(|n| n.contains(&ip))
    }
}

/// A ban just imposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBan {
    /// The address (an IPv6 prefix as its first address).
    pub address: IpAddr,
    pub rule: Arc<str>,
    pub ban_for: Duration,
}

/// One banned address, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct BanEntry {
    pub address: String,
    pub rule: String,
    /// Seconds left.
    pub remaining_secs: u64,
}

/// Counts and bans, per instance; lives across reloads.
#[derive(Default)]
pub struct BanList {
    /// The addresses followed (counts, and the bans' details), in shards.
    tracks: Tracks,
    /// The bans in force, which every request is checked against: apart from the counts, so
    /// that a request takes no lock while there is no ban, and otherwise only a shared lock
    /// on one of many shards.
    in_force: InForce,
    /// The shared store, when `bans.redis` is set: the store, what it was made from, the
    /// rules it syncs under (the latest configuration's).
    store: RwLock<Option<(Sharing, Arc<Store>)>>,
    rules: RwLock<Arc<BanRules>>,
    /// Addresses lifted here (and when, unix ms) whose shared bans are still to be removed
    /// from the store.
    pending_lifts: Mutex<Vec<(IpAddr, u64)>>,
    last_error: RwLock<Option<String>>,
    /// Rules of the bans the shared counts brought since the metrics last looked.
    banned_by_shared_counts: Mutex<Vec<Arc<str>>>,
    /// Syncs that failed so far: refusals counted before a failed sync are not added to the
    /// store's counts (they may be older than a rule's window by the time it is back).
    failed_syncs: AtomicU64,
}

struct Track {
    windows: Vec<(Arc<str>, Window)>,
    ban: Option<(Instant, Arc<str>)>,
    /// Whether the ban is known to be in the shared store (written there, or read from it).
    shared: bool,
    /// When the ban was imposed or last extended here (unix ms; for a ban read from the store,
    /// a time before that read): a lift marker written after it ends it.
    banned_at: u64,
    last: Instant,
    /// With shared bans: per rule, the refusals counted here since the last sync (to add to
    /// every instance's count in the store), and whether a ban by that rule was imposed here
    /// meanwhile (the store's count of the address is then cleared, as the local one was).
    unsent: Vec<Unsent>,
}

/// Refusals counted here under one rule that the store's count has not had yet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Unsent {
    rule: Arc<str>,
    refusals: u32,
    /// A ban by the rule was imposed here since: the store's count is cleared instead.
    reset: bool,
    /// `BanList::failed_syncs` when the refusals began to be counted.
    epoch: u64,
}

impl Track {
    /// How near a ban the address's counts are: the largest share of a rule's `count` it
    /// collected within that rule's window, in millionths.
    fn weight(&self, rules: &BanRules, now: Instant) -> u64 {
        let share = self
            .windows
            .iter()
            .filter_map(|(name, w)| {
                let r = rules.rules.iter().find(|r| r.name == *name)?;
                Some(w.weighted(now, r.within) / f64::from(r.count.max(1)))
            })
            .fold(0.0, f64::max);
        // Saturating; a NaN (no window) is 0.
        (share * 1e6) as u64
    }

    /// Bans until `until` under `rule` unless a ban in force lasts as long; whether it did
    /// (the ban is then new here: not yet shared, imposed now).
    fn impose(&mut self, until: Instant, rule: Arc<str>) -> bool {
        if self.ban.as_ref().is_some_and(|(have, _)| *have >= until) {
            return false;
        }
        self.ban = Some((until, rule));
        self.shared = false;
        self.banned_at = unix_ms();
        true
    }

    /// Takes up a ban read from the store (ending at `until`, read after `read_from_ms`)
    /// unless a ban in force here ends as late (within the slack of going through unix
    /// milliseconds); whether it did. The ban counts as imposed when the read began: the store
    /// held it then, so a lift marker written after that (its ban removed from the store
    /// first) ends it — even if this read came after the lift was made.
    fn take_up(&mut self, until: Instant, rule: Arc<str>, read_from_ms: u64) -> bool {
        if self
            .ban
            .as_ref()
            .is_some_and(|(have, _)| have.checked_add(STORE_SLACK).is_none_or(|h| h >= until))
        {
            return false;
        }
        self.ban = Some((until, rule));
        self.shared = true;
        self.banned_at = read_from_ms;
        true
    }
}

/// How far apart two ends of the same ban may be after a round trip through the store (unix
/// milliseconds, each instance's clock read at a slightly different moment).
const STORE_SLACK: Duration = Duration::from_secs(1);

/// How the bans are shared, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct SharingStatus {
    /// The store (its password left out).
    pub store: String,
    /// The last sync's error; `None` when it went through.
    pub error: Option<String>,
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    current: u32,
    previous: u32,
}

impl Window {
    /// Counts one refusal at `now`; whether `count` were reached within `within`.
    fn hit(&mut self, now: Instant, within: Duration, count: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= within.saturating_mul(2) {
            *self = Window {
                start: now,
                current: 0,
                previous: 0,
            };
        } else if elapsed >= within {
            self.previous = self.current;
            self.current = 0;
            self.start += within;
        }
        self.current = self.current.saturating_add(1);
        self.weighted(now, within) + 1e-9 >= f64::from(count)
    }

    /// The refusals counted within `within` of `now` (the previous fixed window weighted by how
    /// much of it is still inside, plus the current one), without counting one.
    fn weighted(&self, now: Instant, within: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(self.start);
        let (previous, current, into) = if elapsed >= within.saturating_mul(2) {
            return 0.0;
        } else if elapsed >= within {
            (self.current, 0, elapsed.saturating_sub(within))
        } else {
            (self.previous, self.current, elapsed)
        };
        let into = into.as_secs_f64() / within.as_secs_f64();
        f64::from(previous) * (1.0 - into).max(0.0) + f64::from(current)
    }
}

/// Shards of the addresses followed (a power of two).
pub const TRACK_SHARDS: usize = 64;
/// The fewest addresses a shard follows, whatever `max_tracked` says.
const MIN_SHARD: usize = 8;
/// A full shard makes this fraction of its room free at once.
const EVICT_DIVISOR: usize = 8;
/// Least time between two walks of a shard that could not free its eighth.
const SWEEP_PAUSE: Duration = Duration::from_secs(1);

/// The addresses followed, in shards by a per-process random hash of the address (so that
/// clients cannot aim their addresses at one shard): a request locks one shard, for the work
/// of its own address — a walk of the shard only when it is full, and then to free an eighth
/// of it at once.
struct Tracks {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Entries looked at by the walks that make room, so far.
    visited: AtomicU64,
}

impl Default for Tracks {
    fn default() -> Self {
        Tracks::with_shards(TRACK_SHARDS)
    }
}

impl Tracks {
    /// `n` shards (a power of two, 1..=`TRACK_SHARDS`).
    fn with_shards(n: usize) -> Tracks {
        let n = n.clamp(1, TRACK_SHARDS).next_power_of_two();
        Tracks {
            shards: (0..n).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            visited: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: IpAddr) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) & (self.shards.len() - 1);
        lock(&self.shards[i])
    }

    /// Each shard, locked in turn (never two at once).
    fn each(&self, mut f: impl FnMut(&mut Shard)) {
        for shard in self.shards.iter() {
            f(&mut lock(shard));
        }
    }

    /// Addresses one shard follows at most (bans by hand and from the store apart).
    /// At least [`MIN_SHARD`]: a shard of one or two would be quiet (full of bans) after one
    /// or two bans, and count no other address hashed to it.
    fn cap(&self, rules: &BanRules) -> usize {
        rules.max_tracked.div_ceil(self.shards.len()).max(MIN_SHARD)
    }

    /// The track of `key` in its (locked) `shard`, made when there is room for it. A full
    /// shard makes room (see [`Shard::make_room`]); a `forced` track (a ban by hand or another
    /// instance's) is made even when none could be made, the shard then growing past its
    /// bound — an attacker who filled it with bans of its own must not keep an operator from
    /// banning.
    fn track<'a>(
        &self,
        shard: &'a mut Shard,
        rules: &BanRules,
        key: IpAddr,
        now: Instant,
        forced: bool,
    ) -> Option<&'a mut Track> {
        let cap = self.cap(rules);
        if !shard.map.contains_key(&key) && shard.map.len() >= cap {
            let visited = shard.make_room(rules, cap, now);
            self.visited.fetch_add(visited, Ordering::Relaxed);
            if shard.map.len() >= cap && !forced {
                return None;
            }
        }
        Some(shard.map.entry(key).or_insert_with(|| Track {
            windows: Vec::new(),
            ban: None,
            shared: false,
            banned_at: 0,
            last: now,
            unsent: Vec::new(),
        }))
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<IpAddr, Track>,
    /// The last walk could not free an eighth of the shard (too many of it banned): no walk
    /// before this (the first of those bans' ends, a second after that walk at the earliest).
    quiet_until: Option<Instant>,
}

impl Shard {
    /// Makes room in a shard holding `cap` at most: drops the entries whose counts and ban have
    /// run out, then, until an eighth of `cap` is free, the entries without a ban that matter
    /// least (the lowest share of a rule's count within its window, then the least recently
    /// seen). Bans are never dropped. When the eighth could not be freed, no walk is made again
    /// until the first ban of the shard ends (and not within `SWEEP_PAUSE`). One walk of the
    /// shard; how many entries it looked at.
    fn make_room(&mut self, rules: &BanRules, cap: usize, now: Instant) -> u64 {
        if self.quiet_until.is_some_and(|q| now < q) {
            return 0;
        }
        self.quiet_until = None;
        let visited = self.map.len() as u64;
        let idle = rules.longest.saturating_mul(2);
        let mut first_end: Option<Instant> = None;
        let mut unbanned: Vec<(u64, Instant, IpAddr)> = Vec::with_capacity(self.map.len());
        self.map.retain(|ip, t| {
            if let Some((until, _)) = &t.ban {
                if *until > now {
                    first_end = Some(first_end.map_or(*until, |f| f.min(*until)));
                    return true;
                }
                t.ban = None;
            }
            if now.saturating_duration_since(t.last) >= idle {
                return false;
            }
            unbanned.push((t.weight(rules, now), t.last, *ip));
            true
        });
        let keep = cap.saturating_sub((cap / EVICT_DIVISOR).max(1));
        let n = self.map.len().saturating_sub(keep).min(unbanned.len());
        if n > 0 {
            if n < unbanned.len() {
                unbanned.select_nth_unstable(n - 1);
            }
            for (_, _, ip) in &unbanned[..n] {
                self.map.remove(ip);
            }
        }
        if self.map.len() > keep {
            let pause = now.checked_add(SWEEP_PAUSE).unwrap_or(now);
            self.quiet_until = Some(first_end.map_or(pause, |f| f.max(pause)));
        }
        visited
    }
}

impl BanList {
    pub fn new() -> Arc<BanList> {
        Arc::new(BanList::default())
    }

    /// Entries looked at so far by the walks that make room for new addresses (a full shard's;
    /// amortised over an eighth of a shard of new addresses each).
    pub fn visited_to_make_room(&self) -> u64 {
        self.tracks.visited.load(Ordering::Relaxed)
    }

    /// Whether the bans are shared (`bans.redis` in the configuration put to work, its
    /// store made): lifts are then queued for the store and refusals kept for its counts.
    fn is_shared(&self) -> bool {
        self.store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// How long `ip` stays banned, if it is. An exempt address never is, even when the
    /// prefix it is counted by is banned (a neighbour's refusals, a ban by hand of a nearby
    /// address, a ban read from the store): exemption is of the address itself, not its key.
    pub fn banned(&self, rules: &BanRules, ip: IpAddr, now: Instant) -> Option<Duration> {
        let key = rules.key(ip);
        let until = self.in_force.get(key)?;
        if until > now {
            // Looked at only for a banned key: no cost while nothing is banned.
            if rules.exempt(ip) {
                return None;
            }
            return Some(until - now);
        }
        // Run out: out of the way of this address's next requests (and, once none is left,
        // of every request's).
        self.in_force.change(key, |_| {});
        None
    }

    /// Counts the refusal a request from `ip` ended with; the ban it brings, if any.
    pub fn record(
        &self,
        rules: &BanRules,
        ip: IpAddr,
        reason: RejectReason,
        now: Instant,
    ) -> Option<NewBan> {
        if !rules.rules.iter().any(|r| r.on.contains(&reason)) || rules.exempt(ip) {
            return None;
        }
        let key = rules.key(ip);
        let shared_counts = self.is_shared();
        let epoch = self.failed_syncs.load(Ordering::Relaxed);
        let mut shard = self.tracks.shard(key);
        let t = self.tracks.track(&mut shard, rules, key, now, false)?;
        t.last = now;
        let mut new = None;
        for r in rules.rules.iter().filter(|r| r.on.contains(&reason)) {
            if shared_counts {
                match t.unsent.iter_mut().find(|u| u.rule == r.name) {
                    Some(u) if u.epoch == epoch => u.refusals = u.refusals.saturating_add(1),
                    Some(u) => {
                        u.refusals = 1;
                        u.epoch = epoch;
                    }
                    None => t.unsent.push(Unsent {
                        rule: r.name.clone(),
                        refusals: 1,
                        reset: false,
                        epoch,
                    }),
                }
            }
            let w = match t.windows.iter().position(|(n, _)| *n == r.name) {
                Some(i) => &mut t.windows[i].1,
                None => {
                    t.windows.push((
                        r.name.clone(),
                        Window {
                            start: now,
                            current: 0,
                            previous: 0,
                        },
                    ));
                    let last = t.windows.len() - 1;
                    &mut t.windows[last].1
                }
            };
            if !w.hit(now, r.within, r.count) {
                continue;
            }
            *w = Window {
                start: now,
                current: 0,
                previous: 0,
            };
            if let Some(u) = t.unsent.iter_mut().find(|u| u.rule == r.name) {
                u.refusals = 0;
                u.reset = true;
            }
            t.impose(now.checked_add(r.ban_for).unwrap_or(now), r.name.clone());
            new = Some(NewBan {
                address: key,
                rule: r.name.clone(),
                ban_for: r.ban_for,
            });
        }
        if new.is_some()
            && let Some((until, _)) = &t.ban
        {
            self.in_force.set(key, *until);
        }
        new
    }

    /// The addresses banned now.
    pub fn list(&self, now: Instant) -> Vec<BanEntry> {
        let mut out: Vec<BanEntry> = Vec::new();
        self.tracks.each(|shard| {
            out.extend(shard.map.iter().filter_map(|(ip, t)| {
                let (until, rule) = t.ban.as_ref()?;
                (*until > now).then(|| BanEntry {
                    address: ip.to_string(),
                    rule: rule.to_string(),
                    remaining_secs: (*until - now).as_secs_f64().ceil() as u64,
                })
            }));
        });
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out
    }

    /// Bans `ip` (its key: an IPv6 address by its prefix) for `ban_for`, under the name
    /// `by` (the admin API's bans): extends a ban already there to the later end. Exempt
    /// addresses are refused, saying why (an exempt address within the key's prefix is not
    /// refused by the ban: see [`Self::banned`]); a full list makes room (see `Tracks::track`).
    pub fn ban(
        &self,
        rules: &BanRules,
        ip: IpAddr,
        ban_for: Duration,
        by: &str,
        now: Instant,
    ) -> Result<IpAddr, String> {
        if rules.exempt(ip) {
            return Err(format!("{ip} is exempt from bans (bans.exempt)"));
        }
        let key = rules.key(ip);
        let until = now
            .checked_add(ban_for)
            .ok_or_else(|| "the ban is too long".to_string())?;
        let mut shard = self.tracks.shard(key);
        let t = self
            .tracks
            .track(&mut shard, rules, key, now, true)
            .ok_or("the ban list is full (bans.max_tracked)")?;
        t.last = now;
        if t.impose(until, Arc::from(by)) {
            self.in_force.set(key, until);
        }
        Ok(key)
    }

    /// Lifts the ban of `ip` (and forgets its counts); whether there was one. When the bans
    /// are shared, the address's shared bans are removed from the store at the next sync.
    pub fn lift(&self, rules: &BanRules, ip: IpAddr, now: Instant) -> bool {
        let key = rules.key(ip);
        if self.is_shared() {
            let mut pending = lock(&self.pending_lifts);
            pending.retain(|(a, _)| *a != key);
            pending.push((key, unix_ms()));
        }
        let mut shard = self.tracks.shard(key);
        let lifted = shard.map.remove(&key).and_then(|t| t.ban);
        if lifted.is_some() {
            shard.quiet_until = None;
            self.in_force.remove(key);
        }
        lifted.is_some_and(|(until, _)| until > now)
    }
}

/// Shards of the bans in force (a power of two).
const SHARDS: usize = 64;

/// The bans in force (address → end), in shards by address; entries that ran out are dropped
/// from a shard when it next changes.
struct InForce {
    shards: Vec<RwLock<HashMap<IpAddr, Instant>>>,
    /// Entries in all shards: while 0 (no ban at all, the usual case), no shard is looked at.
    len: AtomicUsize,
}

impl Default for InForce {
    fn default() -> Self {
        InForce {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            len: AtomicUsize::new(0),
        }
    }
}

impl InForce {
    fn shard(&self, ip: IpAddr) -> &RwLock<HashMap<IpAddr, Instant>> {
        let h = match ip {
            IpAddr::V4(a) => u64::from(u32::from(a)),
            IpAddr::V6(a) => {
                let v = u128::from(a);
                (v as u64) ^ ((v >> 64) as u64)
            }
        };
        // Fibonacci hashing: the top bits of the product pick the shard.
        let i = (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHARDS.trailing_zeros())) as usize;
        &self.shards[i % SHARDS]
    }

    fn get(&self, ip: IpAddr) -> Option<Instant> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let shard = self
            .shard(ip)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(&ip).copied()
    }

    /// Changes one shard (dropping its entries that ran out) and keeps the count.
    fn change(&self, ip: IpAddr, f: impl FnOnce(&mut HashMap<IpAddr, Instant>)) {
        let mut shard = self
            .shard(ip)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = shard.len();
        let now = Instant::now();
        shard.retain(|_, until| *until > now);
        f(&mut shard);
        let after = shard.len();
        if after > before {
            self.len.fetch_add(after - before, Ordering::AcqRel);
        } else {
            self.len.fetch_sub(before - after, Ordering::AcqRel);
        }
    }

    fn count(&self, now: Instant) -> usize {
        if self.len.load(Ordering::Acquire) == 0 {
            return 0;
        }
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
                shard.values().filter(|until| **until > now).count()
            })
            .sum()
    }

    fn set(&self, ip: IpAddr, until: Instant) {
        self.change(ip, |m| {
            m.insert(ip, until);
        });
    }

    fn remove(&self, ip: IpAddr) {
        self.change(ip, |m| {
            m.remove(&ip);
        });
    }
}

// A lock poisoned by a panic elsewhere still holds consistent data here (every change is a
// single insert, remove or assignment): it is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(PoisonError::into_inner).clone()
}

fn write<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(PoisonError::into_inner) = v;
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long a lift made on one instance is remembered in the store (an instance that could
/// not reach the store for longer may share a ban lifted meanwhile again).
const LIFTS_REMEMBERED_MS: u64 = 60 * 60 * 1000;

/// A shared ban as the store holds it: `<address>|<rule>`, scored by its end (unix ms).
fn member(address: IpAddr, rule: &str) -> String {
    format!("{address}|{rule}")
}

/// A rule's shared count windows at `now_ms` (key suffixes of the current and the previous
/// fixed window; the rule's name as hash tag keeps both on one cluster node) and the weight of
/// the previous one (the part of it still within `within`).
fn shared_windows(r: &BanRule, now_ms: u64) -> (String, String, f64) {
    let within = u64::try_from(r.within.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let window = now_ms / within;
    let into = (now_ms % within) as f64 / within as f64;
    (
        format!("bans:count:{{{}}}:{window}", r.name),
        format!("bans:count:{{{}}}:{}", r.name, window.saturating_sub(1)),
        1.0 - into,
    )
}

/// Most addresses whose refusals one script adds to the store's counts.
const COUNT_BATCH: usize = 1000;

/// How long a count window is kept: while it can still be the previous one, and a second.
fn window_ttl_ms(within: Duration) -> u64 {
    u64::try_from(within.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(1000)
}

fn parse_member(m: &str) -> Option<(IpAddr, &str)> {
    let (address, rule) = m.split_once('|')?;
    Some((address.parse().ok()?, rule))
}

impl BanList {
    /// Shares the bans as `rules` say (`bans.redis`), or stops sharing them; called with every
    /// configuration that is put to work (at start and at each reload that succeeds). The same
    /// store settings keep the same store and sync task; new ones start a new task (the old
    /// one ends at its next turn). Outside a tokio runtime nothing is shared.
    pub fn share(self: &Arc<Self>, rules: &Arc<BanRules>) {
        write(&self.rules, rules.clone());
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let wanted = rules.sharing.clone();
        let current = read(&self.store);
        if current.as_ref().map(|(s, _)| s) == wanted.as_ref() {
            return;
        }
        let Some(sharing) = wanted else {
            write(&self.store, None);
            return;
        };
        let store = match Store::new(
            &sharing.target.urls,
            sharing.target.cluster,
            sharing.timeout,
            &sharing.key_prefix,
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(error = %e, "bans.redis: the bans are not shared");
                write(&self.store, None);
                write(&self.last_error, Some(e));
                return;
            }
        };
        write(&self.store, Some((sharing.clone(), store.clone())));
        write(&self.last_error, None);
        let weak: Weak<BanList> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                let current = read(&me.store);
                if !current.is_some_and(|(_, s)| Arc::ptr_eq(&s, &store)) {
                    return;
                }
                me.sync(&store).await;
                drop(me);
                tokio::time::sleep(sharing.sync_interval).await;
            }
        });
    }

    /// How many addresses are banned at `now`.
    pub fn in_force_count(&self, now: Instant) -> usize {
        self.in_force.count(now)
    }

    /// How the bans are shared, when they are.
    pub fn sharing_status(&self) -> Option<SharingStatus> {
        let (_, store) = read(&self.store)?;
        Some(SharingStatus {
            store: store.url_redacted.clone(),
            error: read(&self.last_error),
        })
    }

    /// One turn of sharing: the lifts made here are written to the store (the address's bans
    /// removed, a lift marker added); the lifts made elsewhere applied here; the bans made
    /// here written; then the store's bans read back and applied (see [`Self::apply_live`]).
    async fn sync(&self, store: &Store) {
        let bans = store.key("bans");
        let lifted = store.key("bans:lifted");
        let result = async {
            let lifts = lock(&self.pending_lifts).clone();
            for lift in lifts {
                let address = lift.0;
                store.zrem_starting(&bans, &format!("{address}|")).await?;
                // The marker is timed after the removal: whoever read the ban from the store
                // read it before this time (see `Track::take_up`).
                let removed_at = unix_ms();
                store
                    .zadd_gt(&lifted, &address.to_string(), removed_at)
                    .await?;
                lock(&self.pending_lifts).retain(|l| *l != lift);
            }
            let remembered = unix_ms().saturating_sub(LIFTS_REMEMBERED_MS);
            let lifts = store.zlive(&lifted, remembered).await?;
            self.apply_lifts(&lifts);
            let share: Vec<(String, u64)> = self
                .to_share(unix_ms())
                .into_iter()
                .map(|(address, rule, until_ms)| (member(address, &rule), until_ms))
                .collect();
            store.zadd_gt_many(&bans, &share).await?;
            self.count_shared(store).await?;
            let read_from_ms = unix_ms();
            Ok((store.zlive(&bans, read_from_ms).await?, read_from_ms))
        }
        .await;
        match result {
            Ok((live, read_from_ms)) => {
                self.apply_live(&live, unix_ms(), read_from_ms);
                write(&self.last_error, None);
            }
            Err(e) => {
                self.failed_syncs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "bans: sharing through Redis failed; each instance bans on its own until it is back");
                write(&self.last_error, Some(e));
            }
        }
    }

    /// Rules of the bans the shared counts brought since the last call (for
    /// `portcullis_bans_total`).
    pub fn take_banned_by_shared_counts(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut *lock(&self.banned_by_shared_counts))
    }

    /// Adds the refusals counted here since the last sync to every instance's count in the
    /// store (per rule, a sliding window of two fixed ones aligned on unix time, as the local
    /// count), and bans the addresses whose count there reached the rule's `count`. The store
    /// decides and clears those counts at once (one script per rule), so one instance brings
    /// each such ban; it then reaches the others as any ban does. Refusals counted while the
    /// store cannot be reached count here only.
    async fn count_shared(&self, store: &Store) -> Result<(), String> {
        let mut unsent: Vec<(IpAddr, Vec<Unsent>)> = Vec::new();
        self.tracks.each(|shard| {
            unsent.extend(
                shard
                    .map
                    .iter_mut()
                    .filter(|(_, t)| !t.unsent.is_empty())
                    .map(|(ip, t)| (*ip, std::mem::take(&mut t.unsent))),
            );
        });
        if unsent.is_empty() {
            return Ok(());
        }
        let epoch = self.failed_syncs.load(Ordering::Relaxed);
        let rules = read(&self.rules);
        for r in &rules.rules {
            let entries: Vec<(String, u32, bool)> = unsent
                .iter()
                .flat_map(|(ip, counts)| {
                    counts
                        .iter()
                        .filter(|u| u.rule == r.name && (u.epoch == epoch || u.reset))
                        .map(move |u| {
                            let refusals = if u.epoch == epoch { u.refusals } else { 0 };
                            (ip.to_string(), refusals, u.reset)
                        })
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            let mut reached = Vec::new();
            // In batches, so that no one script holds the store up for long.
            for batch in entries.chunks(COUNT_BATCH) {
                let (current, previous, weight) = shared_windows(r, unix_ms());
                reached.extend(
                    store
                        .count_refusals(
                            &store.key(&current),
                            &store.key(&previous),
                            window_ttl_ms(r.within),
                            weight,
                            r.count,
                            batch,
                        )
                        .await?,
                );
            }
            let now = Instant::now();
            for address in reached {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                // Forced: the store has cleared the count, so this instance is the only one
                // that will impose the ban — a full shard must not lose it.
                let mut shard = self.tracks.shard(ip);
                let Some(t) = self.tracks.track(&mut shard, &rules, ip, now, true) else {
                    continue;
                };
                if let Some((_, w)) = t.windows.iter_mut().find(|(n, _)| *n == r.name) {
                    *w = Window {
                        start: now,
                        current: 0,
                        previous: 0,
                    };
                }
                if t.impose(now.checked_add(r.ban_for).unwrap_or(now), r.name.clone())
                    && let Some((until, _)) = &t.ban
                {
                    self.in_force.set(ip, *until);
                    tracing::warn!(address = %ip, rule = %r.name, seconds = r.ban_for.as_secs(), "client address banned (refusals counted by every instance)");
                    lock(&self.banned_by_shared_counts).push(r.name.clone());
                }
            }
        }
        Ok(())
    }

    /// The bans in force here that the store does not hold yet: address, rule, end (unix ms).
    fn to_share(&self, now_ms: u64) -> Vec<(IpAddr, Arc<str>, u64)> {
        let now = Instant::now();
        let mut out = Vec::new();
        self.tracks.each(|shard| {
            out.extend(
                shard
                    .map
                    .iter()
                    .filter(|(_, t)| !t.shared)
                    .filter_map(|(ip, t)| {
                        let (until, rule) = t.ban.as_ref()?;
                        let left = until.checked_duration_since(now)?;
                        let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                        Some((*ip, rule.clone(), now_ms.saturating_add(left)))
                    }),
            );
        });
        out
    }

    /// Applies the store's lift markers (address → when its bans were removed from the store,
    /// unix ms): a ban imposed or read here before that ends, wherever the lift was made.
    fn apply_lifts(&self, lifts: &[(String, u64)]) {
        for (address, at) in lifts {
            let Ok(address) = address.parse::<IpAddr>() else {
                continue;
            };
            let mut shard = self.tracks.shard(address);
            let Some(t) = shard.map.get_mut(&address) else {
                continue;
            };
            if t.ban.is_some() && t.banned_at < *at {
                t.ban = None;
                t.shared = false;
                shard.quiet_until = None;
                self.in_force.remove(address);
                tracing::info!(address = %address, "ban lifted on another instance");
            }
        }
    }

    /// Applies the store's bans (`<address>|<rule>` → end in unix ms; `now_ms` the unix time
    /// now, `read_from_ms` a time before they were read): an address banned there is banned
    /// here until the latest of its ends (exempt addresses excepted — an exempt address within
    /// a banned prefix is let through by [`Self::banned`] —, those lifted here and not yet
    /// written excepted; room is made as for a ban by hand). A ban of this instance's that the store
    /// does not hold (a store that lost its data, a write that failed) is written again at the
    /// next turn.
    fn apply_live(&self, live: &[(String, u64)], now_ms: u64, read_from_ms: u64) {
        let rules = read(&self.rules);
        let pending: Vec<IpAddr> = lock(&self.pending_lifts).iter().map(|l| l.0).collect();
        let mut latest: HashMap<IpAddr, (u64, &str)> = HashMap::new();
        for (m, until_ms) in live {
            let Some((address, rule)) = parse_member(m) else {
                continue;
            };
            let e = latest.entry(address).or_insert((*until_ms, rule));
            if *until_ms > e.0 {
                *e = (*until_ms, rule);
            }
        }
        let now = Instant::now();
        self.tracks.each(|shard| {
            for (address, t) in shard.map.iter_mut() {
                t.shared = false;
                if let (Some((until, _)), Some((until_ms, _))) = (&t.ban, latest.get(address)) {
                    // Held there until at least about the same end (the ends go through unix
                    // milliseconds, hence the slack): nothing of this ban's to write.
                    let left = until.saturating_duration_since(now);
                    let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                    t.shared = now_ms.saturating_add(left) <= until_ms.saturating_add(1000);
                }
            }
        });
        for (address, (until_ms, rule)) in &latest {
            if rules.exempt(*address) || pending.contains(address) {
                continue;
            }
            let left = Duration::from_millis(until_ms.saturating_sub(now_ms));
            let Some(until) = now.checked_add(left) else {
                continue;
            };
            let mut shard = self.tracks.shard(*address);
            let Some(t) = self.tracks.track(&mut shard, &rules, *address, now, true) else {
                continue;
            };
            if t.take_up(until, Arc::from(*rule), read_from_ms) {
                self.in_force.set(*address, until);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rules(yaml_rules: &[(&str, &[&str], u32, &str, &str)], exempt: &[&str]) -> BanRules {
        tracking(yaml_rules, exempt, 3)
    }

    fn tracking(
        yaml_rules: &[(&str, &[&str], u32, &str, &str)],
        exempt: &[&str],
        max_tracked: usize,
    ) -> BanRules {
        let raw = RawBans {
            rules: yaml_rules
                .iter()
                .map(|(name, on, count, within, ban_for)| RawBanRule {
                    name: name.to_string(),
                    on: on.iter().map(|s| s.to_string()).collect(),
                    count: *count,
                    within: within.to_string(),
                    ban_for: ban_for.to_string(),
                })
                .collect(),
            exempt: exempt.iter().map(|s| s.to_string()).collect(),
            ipv6_prefix: None,
            max_tracked: Some(max_tracked),
            redis: None,
            refuse_connections: false,
        };
        let mut e = ConfigErrors::new();
        let r = BanRules::compile(&raw, "bans", Path::new("."), &mut e);
        assert!(e.is_empty(), "{e}");
        r
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A list of one shard: `max_tracked` is then its bound exactly.
    fn one_shard() -> Arc<BanList> {
        Arc::new(BanList {
            tracks: Tracks::with_shards(1),
            ..BanList::default()
        })
    }

    impl BanList {
        fn tracked(&self) -> usize {
            let mut n = 0;
            self.tracks.each(|shard| n += shard.map.len());
            n
        }

        fn is_tracked(&self, key: IpAddr) -> bool {
            self.tracks.shard(key).map.contains_key(&key)
        }
    }

    const S: Duration = Duration::from_secs(1);

    /// The key bans and the per-address connection cap count by: one per IPv6 /64 (by
    /// default), IPv4-mapped addresses as their IPv4 address.
    #[test]
    fn addresses_are_counted_by_their_key() {
        let r = rules(&[], &[]);
        assert_eq!(r.key(ip("2001:db8::1")), r.key(ip("2001:db8::ffff:1")));
        assert_eq!(r.key(ip("2001:db8::1")), ip("2001:db8::"));
        assert_ne!(r.key(ip("2001:db8::1")), r.key(ip("2001:db8:0:1::1")));
        assert_eq!(r.key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(r.key(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn count_refusals_within_the_window_ban_for_a_while() {
        let r = rules(&[("auth", &["unauthenticated"], 3, "60s", "10s")], &[]);
        let b = one_shard();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // Other refusals do not count.
        for i in 0..10 {
            assert_eq!(b.record(&r, a, RejectReason::WafBlocked, t0 + i * S), None);
        }
        assert_eq!(b.record(&r, a, RejectReason::Unauthenticated, t0), None);
        assert_eq!(b.record(&r, a, RejectReason::Unauthenticated, t0 + S), None);
        assert_eq!(b.banned(&r, a, t0 + S), None);
        let ban = b.record(&r, a, RejectReason::Unauthenticated, t0 + 2 * S);
        assert_eq!(
            ban,
            Some(NewBan {
                address: a,
                rule: Arc::from("auth"),
                ban_for: 10 * S
            })
        );
        assert_eq!(b.banned(&r, a, t0 + 3 * S), Some(9 * S));
        assert_eq!(b.banned(&r, ip("192.0.2.2"), t0 + 3 * S), None);
        assert_eq!(b.list(t0 + 3 * S)[0].address, "192.0.2.1");
        assert_eq!(b.list(t0 + 3 * S)[0].remaining_secs, 9);
        // Over once its time is up.
        assert_eq!(b.banned(&r, a, t0 + 12 * S), None);
        assert!(b.list(t0 + 12 * S).is_empty());
    }

    #[test]
    fn refusals_are_kept_for_the_shared_counts_until_a_local_ban_clears_them() {
        let r = rules(
            &[
                ("auth", &["unauthenticated"], 3, "60s", "10s"),
                (
                    "any",
                    &["unauthenticated", "route_not_found"],
                    100,
                    "60s",
                    "10s",
                ),
            ],
            &[],
        );
        let b = one_shard();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let unsent = |b: &BanList| {
            let mut u = b
                .tracks
                .shard(a)
                .map
                .get(&a)
                .map(|t| t.unsent.clone())
                .unwrap_or_default();
            u.sort();
            u.into_iter()
                .map(|u| (u.rule.to_string(), u.refusals, u.reset))
                .collect::<Vec<_>>()
        };
        // Not shared: nothing kept.
        b.record(&r, a, RejectReason::Unauthenticated, t0);
        assert!(unsent(&b).is_empty());
        // Shared, as `share` makes it inside a runtime (nothing connects until a sync).
        let urls = vec!["redis://127.0.0.1:1".to_string()];
        let store = Store::new(&urls, false, S, "p:").unwrap();
        let sharing = Sharing {
            target: RedisTarget {
                urls,
                cluster: false,
            },
            key_prefix: "p:".into(),
            timeout: S,
            sync_interval: S,
        };
        write(&b.store, Some((sharing, Arc::new(store))));
        b.record(&r, a, RejectReason::RouteNotFound, t0);
        b.record(&r, a, RejectReason::Unauthenticated, t0 + S);
        assert_eq!(
            unsent(&b),
            [("any".into(), 2, false), ("auth".into(), 1, false)]
        );
        // The third of `auth` bans here: the store's count of it is to be cleared, not added to.
        assert!(
            b.record(&r, a, RejectReason::Unauthenticated, t0 + 2 * S)
                .is_some()
        );
        assert_eq!(
            unsent(&b),
            [("any".into(), 3, false), ("auth".into(), 0, true)]
        );
        // A failed sync: what was counted before it starts over (the reset stays owed).
        b.failed_syncs.fetch_add(1, Ordering::Relaxed);
        b.record(&r, a, RejectReason::RouteNotFound, t0 + 3 * S);
        assert_eq!(
            unsent(&b),
            [("any".into(), 1, false), ("auth".into(), 0, true)]
        );
    }

    /// More addresses than one script takes (`COUNT_BATCH`), counted by two instances through
    /// a real Redis: every batch is added, each address's count reaches the rule's on the
    /// second instance, which brings all the bans, and the store's counts are cleared.
    #[tokio::test]
    async fn shared_counts_of_more_addresses_than_one_script_takes_add_up() {
        let redis = portcullis_test_support::RedisServer::start();
        let n = COUNT_BATCH + COUNT_BATCH / 2;
        let r = Arc::new(tracking(
            &[("scan", &["route_not_found"], 2, "1d", "60s")],
            &[],
            2 * n,
        ));
        let urls = vec![redis.url()];
        let shared = |b: &Arc<BanList>| {
            write(&b.rules, r.clone());
            let store = Arc::new(Store::new(&urls, false, 10 * S, "t:").unwrap());
            let sharing = Sharing {
                target: RedisTarget {
                    urls: urls.clone(),
                    cluster: false,
                },
                key_prefix: "t:".into(),
                timeout: 10 * S,
                sync_interval: S,
            };
            write(&b.store, Some((sharing, store.clone())));
            store
        };
        let (a, b) = (one_shard(), one_shard());
        let (store_a, store_b) = (shared(&a), shared(&b));
        let addresses: Vec<IpAddr> = (0..n)
            .map(|i| IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]))
            .collect();
        let t0 = Instant::now();
        for &address in &addresses {
            assert!(
                a.record(&r, address, RejectReason::RouteNotFound, t0)
                    .is_none()
            );
        }
        a.count_shared(&store_a).await.unwrap();
        assert!(a.take_banned_by_shared_counts().is_empty());
        let keys = redis.cmd(&["KEYS", "t:bans:count:*"]);
        let key = keys.lines().next().unwrap().to_string();
        assert_eq!(
            redis.cmd(&["HLEN", &key]),
            n.to_string(),
            "every batch added"
        );
        for &address in &addresses {
            assert!(
                b.record(&r, address, RejectReason::RouteNotFound, t0)
                    .is_none()
            );
        }
        b.count_shared(&store_b).await.unwrap();
        assert_eq!(b.take_banned_by_shared_counts().len(), n);
        let now = Instant::now();
        assert!(addresses.iter().all(|&x| b.banned(&r, x, now).is_some()));
        assert_eq!(b.in_force_count(now), n);
        // Decided and cleared by the store: nothing left to count again.
        assert_eq!(redis.cmd(&["HLEN", &key]), "0");
    }

    #[test]
    fn shared_count_windows_are_aligned_on_unix_time() {
        let r = rules(&[("scan", &["route_not_found"], 3, "10s", "60s")], &[]);
        let rule = &r.rules[0];
        let (current, previous, weight) = shared_windows(rule, 1_000_002_500);
        assert_eq!(current, "bans:count:{scan}:100000");
        assert_eq!(previous, "bans:count:{scan}:99999");
        assert!((weight - 0.75).abs() < 1e-9, "{weight}");
        let (current, _, weight) = shared_windows(rule, 1_000_000_000);
        assert_eq!(current, "bans:count:{scan}:100000");
        assert!((weight - 1.0).abs() < 1e-9, "{weight}");
        assert_eq!(window_ttl_ms(rule.within), 21_000);
    }

    #[test]
    fn refusals_spread_wider_than_the_window_do_not_ban() {
        let r = rules(&[("scan", &["route_not_found"], 3, "10s", "60s")], &[]);
        let b = one_shard();
        let t0 = Instant::now();
        let a = ip("192.0.2.9");
        for i in 0..20u32 {
            assert_eq!(
                b.record(&r, a, RejectReason::RouteNotFound, t0 + i * 8 * S),
                None,
                "refusal {i}"
            );
        }
        // Three close together do.
        let t1 = t0 + 1000 * S;
        b.record(&r, a, RejectReason::RouteNotFound, t1);
        b.record(&r, a, RejectReason::RouteNotFound, t1 + S);
        assert!(
            b.record(&r, a, RejectReason::RouteNotFound, t1 + 2 * S)
                .is_some()
        );
    }

    #[test]
    fn exempt_addresses_and_ipv6_prefixes() {
        let r = rules(&[("x", &["forbidden"], 2, "60s", "60s")], &["10.0.0.0/8"]);
        let b = one_shard();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(
                b.record(&r, ip("10.1.2.3"), RejectReason::Forbidden, t0),
                None
            );
        }
        // Two addresses of one /64 are one client; an IPv4-mapped address is its IPv4.
        b.record(&r, ip("2001:db8:1:2::1"), RejectReason::Forbidden, t0);
        let ban = b
            .record(&r, ip("2001:db8:1:2::ffff"), RejectReason::Forbidden, t0)
            .unwrap();
        assert_eq!(ban.address, ip("2001:db8:1:2::"));
        assert!(b.banned(&r, ip("2001:db8:1:2:abcd::9"), t0).is_some());
        assert!(b.banned(&r, ip("2001:db8:1:3::1"), t0).is_none());
        b.record(&r, ip("::ffff:192.0.2.7"), RejectReason::Forbidden, t0);
        b.record(&r, ip("192.0.2.7"), RejectReason::Forbidden, t0);
        assert!(b.banned(&r, ip("192.0.2.7"), t0).is_some());
        // Lifted by hand.
        assert!(b.lift(&r, ip("192.0.2.7"), t0));
        assert!(b.banned(&r, ip("192.0.2.7"), t0).is_none());
        assert!(!b.lift(&r, ip("192.0.2.7"), t0));
    }

    #[test]
    fn bans_by_hand_extend_and_respect_exempt_and_the_bound() {
        let r = rules(&[], &["10.0.0.0/8"]);
        let b = one_shard();
        let t0 = Instant::now();
        assert_eq!(
            b.ban(&r, ip("2001:db8::7"), 60 * S, "admin", t0),
            Ok(ip("2001:db8::"))
        );
        assert_eq!(b.banned(&r, ip("2001:db8::1"), t0), Some(60 * S));
        // A shorter ban leaves the longer one; a longer one extends it.
        b.ban(&r, ip("2001:db8::7"), 10 * S, "admin", t0).unwrap();
        assert_eq!(b.banned(&r, ip("2001:db8::1"), t0), Some(60 * S));
        b.ban(&r, ip("2001:db8::7"), 90 * S, "admin", t0).unwrap();
        assert_eq!(b.banned(&r, ip("2001:db8::1"), t0), Some(90 * S));
        // What requests are checked against: the one address, with the latest end.
        assert_eq!(b.in_force.len.load(Ordering::Acquire), 1);
        assert_eq!(b.in_force.get(ip("2001:db8::")), Some(t0 + 90 * S));
        assert!(b.ban(&r, ip("10.1.1.1"), S, "admin", t0).is_err());
        b.ban(&r, ip("192.0.2.1"), S, "admin", t0).unwrap();
        b.ban(&r, ip("192.0.2.2"), S, "admin", t0).unwrap();
        // Past the bound (3) with every address banned: a ban by hand still goes in.
        b.ban(&r, ip("192.0.2.3"), S, "admin", t0).unwrap();
        assert_eq!(b.list(t0).len(), 4);
        assert_eq!(b.in_force_count(t0), 4);
        assert_eq!(
            b.in_force_count(t0 + 2 * S),
            1,
            "the one-second bans ran out"
        );
    }

    /// An attacker filling the tracked addresses with counts of its own keeps neither an
    /// operator from banning nor a new address from being counted: the unbanned address nearest
    /// no ban (here all with one refusal: the least recently seen) makes room.
    #[test]
    fn a_full_list_makes_room_for_a_new_address_and_a_ban_by_hand() {
        // Eight: the fewest a shard follows.
        let r = tracking(&[("r", &["route_not_found"], 5, "1m", "1m")], &[], 8);
        let b = one_shard();
        let t0 = Instant::now();
        for i in 1..=8u8 {
            b.record(
                &r,
                IpAddr::from([192, 0, 2, i]),
                RejectReason::RouteNotFound,
                t0 + S * u32::from(i),
            );
        }
        b.record(&r, ip("192.0.2.9"), RejectReason::RouteNotFound, t0 + 9 * S);
        assert_eq!(b.tracked(), 8);
        assert!(b.is_tracked(ip("192.0.2.9")), "the newcomer is counted");
        assert!(!b.is_tracked(ip("192.0.2.1")), "the oldest made room");
        b.ban(&r, ip("198.51.100.9"), 60 * S, "admin", t0 + 10 * S)
            .unwrap();
        assert_eq!(b.banned(&r, ip("198.51.100.9"), t0 + 10 * S), Some(60 * S));
        assert_eq!(b.tracked(), 8);
        assert!(!b.is_tracked(ip("192.0.2.2")), "the next oldest made room");
    }

    /// However small `max_tracked`, a shard follows eight addresses: one ban does not leave a
    /// shard full of bans, counting nobody else.
    #[test]
    fn one_ban_does_not_stop_a_small_shard_counting() {
        let r = tracking(&[("r", &["route_not_found"], 2, "1m", "1h")], &[], 1);
        let b = one_shard();
        let t0 = Instant::now();
        for k in 0..2 {
            b.record(&r, ip("192.0.2.1"), RejectReason::RouteNotFound, t0 + k * S);
        }
        assert!(b.banned(&r, ip("192.0.2.1"), t0 + 2 * S).is_some());
        for k in 0..2 {
            b.record(
                &r,
                ip("192.0.2.2"),
                RejectReason::RouteNotFound,
                t0 + (2 + k) * S,
            );
        }
        assert!(
            b.banned(&r, ip("192.0.2.2"), t0 + 4 * S).is_some(),
            "the second offender is counted and banned"
        );
    }

    /// The list full of an attacker's addresses (one refusal each, the cheapest way to fill
    /// it), and kept full by more of them between an offender's refusals: the offender is still
    /// counted, and banned at the rule's count — its larger count outlives the attacker's
    /// entries. Before, a new address was not followed while the list was full: never banned.
    #[test]
    fn a_full_list_still_counts_and_bans_a_new_address() {
        let r = tracking(&[("scan", &["route_not_found"], 5, "1m", "1h")], &[], 1000);
        let b = one_shard();
        let t0 = Instant::now();
        let attacker = |i: u32| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        for i in 0..1000 {
            assert_eq!(
                b.record(&r, attacker(i), RejectReason::RouteNotFound, t0),
                None
            );
        }
        assert_eq!(b.tracked(), 1000);
        let offender = ip("2001:db8:1:2::99");
        for k in 0..2 {
            assert_eq!(
                b.record(&r, offender, RejectReason::RouteNotFound, t0 + k * S),
                None
            );
        }
        // Twice the list's size of new addresses meanwhile: each is counted, in bounded room.
        for i in 1000..3000 {
            b.record(&r, attacker(i), RejectReason::RouteNotFound, t0 + 2 * S);
            assert!(b.tracked() <= 1000);
        }
        assert!(b.is_tracked(attacker(2999)));
        assert!(b.is_tracked(r.key(offender)), "the larger count stays");
        for k in 2..4 {
            assert_eq!(
                b.record(&r, offender, RejectReason::RouteNotFound, t0 + k * S),
                None
            );
        }
        let ban = b.record(&r, offender, RejectReason::RouteNotFound, t0 + 4 * S);
        assert_eq!(
            ban,
            Some(NewBan {
                address: ip("2001:db8:1:2::"),
                rule: Arc::from("scan"),
                ban_for: 3600 * S,
            })
        );
        assert_eq!(b.banned(&r, offender, t0 + 5 * S), Some(3599 * S));
        assert!(b.tracked() <= 1000);
    }

    /// A new address with the list full costs no walk of the whole list each: a walk frees an
    /// eighth of it, which the next new addresses take without looking at anything. Before,
    /// every new address walked every entry (and was then not counted).
    #[test]
    fn a_new_address_with_a_full_list_does_not_walk_it_each_time() {
        let cap = 1000u32;
        let r = tracking(
            &[("scan", &["route_not_found"], 5, "1m", "1h")],
            &[],
            cap as usize,
        );
        let b = one_shard();
        let t0 = Instant::now();
        let address = |i: u32| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        for i in 0..cap {
            b.record(&r, address(i), RejectReason::RouteNotFound, t0);
        }
        assert_eq!(b.visited_to_make_room(), 0, "no walk while there is room");
        // The first new address walks the list once and frees an eighth of it …
        b.record(&r, address(cap), RejectReason::RouteNotFound, t0);
        assert_eq!(b.visited_to_make_room(), u64::from(cap));
        // … which the next ones take without a look.
        for i in 1..cap / 8 {
            b.record(&r, address(cap + i), RejectReason::RouteNotFound, t0);
        }
        assert_eq!(b.visited_to_make_room(), u64::from(cap));
        assert_eq!(b.tracked(), cap as usize);
        // Over many: about EVICT_DIVISOR entries looked at per new address, not the list.
        let n = 10 * cap;
        for i in 0..n {
            b.record(&r, address(2 * cap + i), RejectReason::RouteNotFound, t0);
        }
        let per_address = b.visited_to_make_room() / u64::from(n);
        assert!(
            per_address <= 2 * EVICT_DIVISOR as u64,
            "{per_address} entries looked at per new address"
        );
        assert!(b.is_tracked(address(2 * cap + n - 1)));
    }

    /// The list full of bans (which are never dropped to make room): a new address is not
    /// counted there, and costs no walk, until the first ban ends; then the list makes room.
    #[test]
    fn a_list_full_of_bans_is_walked_again_only_once_one_ends() {
        let r = tracking(&[("once", &["route_not_found"], 1, "1m", "10m")], &[], 100);
        let b = one_shard();
        let t0 = Instant::now();
        let address = |i: u32| IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
        for i in 0..100 {
            assert!(
                b.record(&r, address(i), RejectReason::RouteNotFound, t0)
                    .is_some()
            );
        }
        assert_eq!(
            b.record(&r, address(100), RejectReason::RouteNotFound, t0 + S),
            None
        );
        assert_eq!(b.visited_to_make_room(), 100);
        assert_eq!(b.in_force_count(t0 + S), 100, "no ban was dropped");
        for i in 101..1000 {
            b.record(&r, address(i), RejectReason::RouteNotFound, t0 + 2 * S);
        }
        assert_eq!(b.visited_to_make_room(), 100, "no walk before a ban ends");
        assert_eq!(b.tracked(), 100);
        // A ban by hand still goes in, past the bound.
        b.ban(&r, ip("198.51.100.9"), 60 * S, "admin", t0 + 2 * S)
            .unwrap();
        assert_eq!(b.tracked(), 101);
        // The bans ran out: room is made, and a new address is counted again.
        let later = t0 + 601 * S;
        assert!(
            b.record(&r, address(2000), RejectReason::RouteNotFound, later)
                .is_some()
        );
        assert!(b.tracked() <= 101);
    }

    /// Sharded as in production: the bound holds across the shards, a new address still finds
    /// room, and the walks stay amortised.
    #[test]
    fn the_shards_keep_the_bound_and_the_walks_short() {
        let max = 64 * 50;
        let r = tracking(&[("scan", &["route_not_found"], 3, "1m", "1h")], &[], max);
        let b = BanList::new();
        let t0 = Instant::now();
        let n = 20_000u32;
        let address = |i: u32| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        for i in 0..n {
            b.record(&r, address(i), RejectReason::RouteNotFound, t0);
        }
        assert!(b.tracked() <= max, "{}", b.tracked());
        assert!(
            b.visited_to_make_room() <= 10 * u64::from(n),
            "{}",
            b.visited_to_make_room()
        );
        let offender = ip("198.51.100.9");
        for _ in 0..2 {
            assert!(
                b.record(&r, offender, RejectReason::RouteNotFound, t0)
                    .is_none()
            );
        }
        assert!(
            b.record(&r, offender, RejectReason::RouteNotFound, t0)
                .is_some()
        );
    }

    /// Bans are by prefix, exemption by address: an exempt address is not refused by a ban of
    /// its /64, whether a neighbour's refusals, a ban by hand of a nearby address, or a ban read
    /// from the store brought it; its neighbours are. Before, `2001:db8:1:2::10`, exempt, was
    /// refused for an hour after 50 refusals of `2001:db8:1:2::99`.
    #[test]
    fn an_exempt_address_is_not_refused_by_a_ban_of_its_prefix() {
        let r = rules(
            &[("scan", &["route_not_found"], 50, "1m", "1h")],
            &["2001:db8:1:2::10", "2001:db8:1:3::10", "2001:db8:1:4::10"],
        );
        let list = list_with(r.clone());
        let t0 = Instant::now();
        let exempt = ip("2001:db8:1:2::10");
        let neighbour = ip("2001:db8:1:2::99");
        for _ in 0..60 {
            assert_eq!(
                list.record(&r, exempt, RejectReason::RouteNotFound, t0),
                None
            );
        }
        for _ in 0..49 {
            list.record(&r, neighbour, RejectReason::RouteNotFound, t0);
        }
        assert!(
            list.record(&r, neighbour, RejectReason::RouteNotFound, t0)
                .is_some()
        );
        assert_eq!(list.banned(&r, neighbour, t0), Some(3600 * S));
        assert_eq!(list.banned(&r, ip("2001:db8:1:2::1"), t0), Some(3600 * S));
        assert_eq!(list.banned(&r, exempt, t0), None);
        // By hand, a nearby address: the /64 is banned, the exempt address not refused; the
        // exempt address itself cannot be banned.
        assert_eq!(
            list.ban(&r, ip("2001:db8:1:3::99"), 60 * S, "admin", t0),
            Ok(ip("2001:db8:1:3::"))
        );
        assert!(list.banned(&r, ip("2001:db8:1:3::5"), t0).is_some());
        assert_eq!(list.banned(&r, ip("2001:db8:1:3::10"), t0), None);
        assert!(
            list.ban(&r, ip("2001:db8:1:3::10"), 60 * S, "admin", t0)
                .is_err()
        );
        // Read from the store.
        let live = [("2001:db8:1:4::|scan".to_string(), ms_from_now(60_000))];
        list.apply_live(&live, unix_ms(), unix_ms());
        let now = Instant::now();
        assert!(list.banned(&r, ip("2001:db8:1:4::5"), now).is_some());
        assert_eq!(list.banned(&r, ip("2001:db8:1:4::10"), now), None);
        assert_eq!(list.list(now).len(), 3);
    }

    #[test]
    fn bad_rules_are_reported_with_their_paths() {
        let raw = RawBans {
            rules: vec![
                RawBanRule {
                    name: "a".into(),
                    on: vec![
                        "upstream_error".into(),
                        "waf_blocked".into(),
                        "waf_blocked".into(),
                    ],
                    count: 0,
                    within: "0s".into(),
                    ban_for: "soon".into(),
                },
                RawBanRule {
                    name: "a".into(),
                    on: vec![],
                    count: 1,
                    within: "1m".into(),
                    ban_for: "1m".into(),
                },
                RawBanRule {
                    name: "}".into(),
                    on: vec!["waf_blocked".into()],
                    count: 1,
                    within: "1m".into(),
                    ban_for: "1m".into(),
                },
            ],
            exempt: vec!["nope".into()],
            ipv6_prefix: Some(0),
            max_tracked: Some(0),
            redis: Some(RawBanRedis {
                url: RawSecretOrString::Plain("http://127.0.0.1:6379".into()),
                cluster: false,
                cluster_nodes: vec!["redis://127.0.0.1:7001".into(), "127.0.0.1:7002".into()],
                key_prefix: None,
                timeout: Some("0s".into()),
                sync_interval: Some("50ms".into()),
            }),
            refuse_connections: false,
        };
        let mut e = ConfigErrors::new();
        BanRules::compile(&raw, "bans", Path::new("."), &mut e);
        let paths: Vec<String> = e.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "bans.rules[0].on[0]",
                "bans.rules[0].on[2]",
                "bans.rules[0].count",
                "bans.rules[0].within",
                "bans.rules[0].ban_for",
                "bans.rules[1].name",
                "bans.rules[1].on",
                "bans.rules[2].name",
                "bans.ipv6_prefix",
                "bans.max_tracked",
                "bans.redis.url",
                "bans.redis.cluster_nodes",
                "bans.redis.cluster_nodes[1]",
                "bans.redis.timeout",
                "bans.redis.sync_interval",
                "bans.exempt[0]",
            ]
        );
    }

    #[test]
    fn a_store_the_client_refuses_is_a_configuration_error() {
        let raw = |nodes: &[&str]| RawBans {
            redis: Some(RawBanRedis {
                url: RawSecretOrString::Plain("redis://:a@127.0.0.1:7000".into()),
                cluster: true,
                cluster_nodes: nodes
                    .iter()
                    .map(|n| portcullis_core::UrlText::from(*n))
                    .collect(),
                key_prefix: None,
                timeout: None,
                sync_interval: None,
            }),
            ..RawBans::default()
        };
        let mut e = ConfigErrors::new();
        let r = BanRules::compile(
            &raw(&["redis://:a@127.0.0.1:7001"]),
            "bans",
            Path::new("."),
            &mut e,
        );
        assert!(e.is_empty(), "{e}");
        assert_eq!(r.sharing().unwrap().target.urls.len(), 2);
        BanRules::compile(
            &raw(&["redis://:b@127.0.0.1:7001"]),
            "bans",
            Path::new("."),
            &mut e,
        );
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["bans.redis.url"], "{e}");
    }

    fn ms_from_now(ms: u64) -> u64 {
        unix_ms() + ms
    }

    fn list_with(rules: BanRules) -> Arc<BanList> {
        let list = one_shard();
        // Outside a runtime: the rules are taken, nothing is started.
        list.share(&Arc::new(rules));
        list
    }

    #[test]
    fn bans_read_from_the_store_are_applied_until_their_latest_end() {
        let r = rules(&[], &["198.51.100.200"]);
        let list = list_with(r.clone());
        let now = Instant::now();
        let live = vec![
            ("198.51.100.7|scanner".to_string(), ms_from_now(60_000)),
            ("198.51.100.7|admin".to_string(), ms_from_now(120_000)),
            ("198.51.100.200|scanner".to_string(), ms_from_now(60_000)),
            ("not an entry".to_string(), ms_from_now(60_000)),
            ("2001:db8::|auth".to_string(), ms_from_now(30_000)),
        ];
        list.apply_live(&live, unix_ms(), unix_ms());
        let left = list.banned(&r, ip("198.51.100.7"), now).unwrap();
        assert!((118..=120).contains(&left.as_secs()), "{left:?}");
        assert!(
            list.banned(&r, ip("198.51.100.200"), now).is_none(),
            "exempt"
        );
        assert!(
            list.banned(&r, ip("2001:db8::1"), now).is_some(),
            "by its /64"
        );
        let entries = list.list(now);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].address, "198.51.100.7");
        assert_eq!(entries[0].rule, "admin");
        // What was read from the store is not written back.
        assert!(list.to_share(unix_ms()).is_empty());
    }

    #[test]
    fn bans_made_here_are_written_until_the_store_holds_them() {
        let r = rules(&[], &[]);
        let list = list_with(r.clone());
        let now = Instant::now();
        list.ban(
            &r,
            ip("198.51.100.9"),
            Duration::from_secs(600),
            "admin",
            now,
        )
        .unwrap();
        let share = list.to_share(unix_ms());
        assert_eq!(share.len(), 1);
        let (address, rule, until_ms) = &share[0];
        assert_eq!(
            (address.to_string().as_str(), &**rule),
            ("198.51.100.9", "admin")
        );
        assert!(
            until_ms.abs_diff(ms_from_now(600_000)) < 2_000,
            "{until_ms}"
        );
        // The store holds it: nothing more to write.
        list.apply_live(&[(member(*address, rule), *until_ms)], unix_ms(), unix_ms());
        assert!(list.to_share(unix_ms()).is_empty());
        // The store lost it (flushed, restarted empty): it is written again, and still in
        // force here meanwhile.
        list.apply_live(&[], unix_ms(), unix_ms());
        assert_eq!(list.to_share(unix_ms()).len(), 1);
        assert!(list.banned(&r, ip("198.51.100.9"), now).is_some());
        // A shorter ban in the store does not cover it either.
        list.apply_live(
            &[(member(*address, rule), ms_from_now(10_000))],
            unix_ms(),
            unix_ms(),
        );
        assert_eq!(list.to_share(unix_ms()).len(), 1);
        // Extended here: written again.
        list.apply_live(&[(member(*address, rule), *until_ms)], unix_ms(), unix_ms());
        assert!(list.to_share(unix_ms()).is_empty());
        list.ban(
            &r,
            ip("198.51.100.9"),
            Duration::from_secs(6000),
            "admin",
            now,
        )
        .unwrap();
        assert_eq!(list.to_share(unix_ms()).len(), 1);
    }

    #[test]
    fn a_lift_made_elsewhere_ends_earlier_bans_only() {
        let r = rules(&[], &[]);
        let list = list_with(r.clone());
        let now = Instant::now();
        let live = [("198.51.100.7|scanner".to_string(), ms_from_now(60_000))];
        list.apply_live(&live, unix_ms(), unix_ms());
        let by_hand = || {
            list.ban(
                &r,
                ip("198.51.100.8"),
                Duration::from_secs(60),
                "admin",
                now,
            )
            .unwrap()
        };
        by_hand();
        // Lifted elsewhere after both were imposed: both end here.
        let later = unix_ms() + 1;
        list.apply_lifts(&[
            ("198.51.100.7".to_string(), later),
            ("198.51.100.8".to_string(), later),
            ("nonsense".to_string(), later),
        ]);
        assert!(list.banned(&r, ip("198.51.100.7"), now).is_none());
        assert!(list.banned(&r, ip("198.51.100.8"), now).is_none());
        // A ban imposed after a lift outlives that lift's marker.
        std::thread::sleep(Duration::from_millis(5));
        by_hand();
        list.apply_lifts(&[("198.51.100.8".to_string(), later)]);
        assert!(list.banned(&r, ip("198.51.100.8"), now).is_some());
        // A ban that ran out here, lifted elsewhere, then imposed again elsewhere: the new
        // one, read from the store, is not ended by the older lift.
        list.ban(
            &r,
            ip("198.51.100.9"),
            Duration::from_millis(10),
            "admin",
            Instant::now(),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let lifted_at = unix_ms();
        std::thread::sleep(Duration::from_millis(5));
        let live = [("198.51.100.9|scanner".to_string(), ms_from_now(60_000))];
        list.apply_live(&live, unix_ms(), unix_ms());
        list.apply_lifts(&[("198.51.100.9".to_string(), lifted_at)]);
        assert!(
            list.banned(&r, ip("198.51.100.9"), Instant::now())
                .is_some()
        );
    }

    #[test]
    fn a_ban_read_before_a_lift_reached_the_store_is_ended_by_it() {
        let r = rules(&[], &[]);
        let list = list_with(r.clone());
        let now = Instant::now();
        let scanner = ip("198.51.100.7");
        let live = [("198.51.100.7|scanner".to_string(), ms_from_now(60_000))];
        // Taken up by a read that began before the lift's marker was timed, even though it was
        // applied after that time: the store still held the ban when it was read.
        let read_from = unix_ms();
        std::thread::sleep(Duration::from_millis(5));
        let removed_at = unix_ms();
        std::thread::sleep(Duration::from_millis(5));
        list.apply_live(&live, unix_ms(), read_from);
        list.apply_lifts(&[("198.51.100.7".to_string(), removed_at)]);
        assert!(list.banned(&r, scanner, now).is_none());

        // Read again and again with ends a little apart (unix ms round trips): still the ban
        // first read, so a lift timed after that first read ends it.
        let first_read = unix_ms();
        let end = ms_from_now(60_000);
        list.apply_live(&[(live[0].0.clone(), end)], unix_ms(), first_read);
        std::thread::sleep(Duration::from_millis(5));
        let removed_at = unix_ms();
        std::thread::sleep(Duration::from_millis(5));
        for late in [1, 7, 300] {
            list.apply_live(&[(live[0].0.clone(), end + late)], unix_ms(), unix_ms());
        }
        list.apply_lifts(&[("198.51.100.7".to_string(), removed_at)]);
        assert!(list.banned(&r, scanner, now).is_none());

        // A ban the store extends by more than the slack is a new ban, read after the lift.
        list.apply_live(&[(live[0].0.clone(), end)], unix_ms(), first_read);
        list.apply_live(&[(live[0].0.clone(), end + 5_000)], unix_ms(), unix_ms());
        list.apply_lifts(&[("198.51.100.7".to_string(), removed_at)]);
        let left = list.banned(&r, scanner, now).unwrap();
        assert!(left > Duration::from_secs(62), "{left:?}");
    }

    #[test]
    fn an_address_lifted_here_is_not_taken_up_again_before_its_lift_is_written() {
        let r = rules(&[], &[]);
        let list = list_with(r.clone());
        let now = Instant::now();
        let live = [("198.51.100.7|scanner".to_string(), ms_from_now(60_000))];
        list.apply_live(&live, unix_ms(), unix_ms());
        // What `lift` queues when the bans are shared.
        list.lift(&r, ip("198.51.100.7"), now);
        lock(&list.pending_lifts).push((ip("198.51.100.7"), unix_ms()));
        list.apply_live(&live, unix_ms(), unix_ms());
        assert!(list.banned(&r, ip("198.51.100.7"), now).is_none());
        lock(&list.pending_lifts).clear();
        list.apply_live(&live, unix_ms(), unix_ms());
        assert!(list.banned(&r, ip("198.51.100.7"), now).is_some());
    }
}
