//! Bans: a client address that collects too many refusals of the kinds a rule counts (failed
//! authentications, WAF blocks, 404s from a scanner …) within a window is refused outright,
//! before routing, for a while.
//!
//! * **Counts**: the refusal each request ended with (the engine reports it once the request
//!   is answered, [`BanList::record`]), per rule, per client address — an IPv6 address by its
//!   prefix (`/64` by default: one host owns a whole prefix), an IPv4-mapped one as IPv4.
//! * **Refuses**: `403 ip_banned` with `Retry-After`, from the gateway-wide address step.
//! * **Bounds**: at most `max_tracked` addresses are followed; when full, those whose windows
//!   and ban have run out are dropped, and a new address is not followed until there is room
//!   (it is then never banned: this state fails open rather than growing without end).
//! * **State**: per instance, kept across reloads (counts follow their rule by name).
//!
//! The counter is a sliding window of two fixed ones: the previous window's count weighted by
//! how much of it still lies within `within`, plus the current one's — O(1) memory per
//! address and rule.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use portcullis_core::units::parse_duration;
use portcullis_core::{ConfigErrors, RejectReason};
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
        }
    }
}

impl BanRules {
    pub fn compile(raw: &RawBans, path: &str, e: &mut ConfigErrors) -> BanRules {
        let mut rules: Vec<BanRule> = Vec::new();
        for (i, r) in raw.rules.iter().enumerate() {
            let p = format!("{path}.rules[{i}]");
            if r.name.trim().is_empty() {
                e.push(format!("{p}.name"), "must not be empty");
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
        BanRules {
            rules,
            exempt: parse_nets(&raw.exempt, &format!("{path}.exempt"), e),
            ipv6_prefix,
            max_tracked,
            longest,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The address as counted: IPv4-mapped IPv6 as IPv4, IPv6 by its prefix.
    fn key(&self, ip: IpAddr) -> IpAddr {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix.clamp(1, 128)))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
            v4 => v4,
        }
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
    tracks: Mutex<HashMap<IpAddr, Track>>,
    /// How many tracks carry a ban (some may have run out unseen): while 0, a request is
    /// checked without taking the lock.
    banned: AtomicUsize,
}

struct Track {
    windows: Vec<(Arc<str>, Window)>,
    ban: Option<(Instant, Arc<str>)>,
    last: Instant,
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
        let into = now.saturating_duration_since(self.start).as_secs_f64() / within.as_secs_f64();
        let weighted = f64::from(self.previous) * (1.0 - into).max(0.0) + f64::from(self.current);
        weighted + 1e-9 >= f64::from(count)
    }
}

impl BanList {
    pub fn new() -> Arc<BanList> {
        Arc::new(BanList::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Track>> {
        match self.tracks.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// How long `ip` stays banned, if it is.
    pub fn banned(&self, rules: &BanRules, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.banned.load(Ordering::Acquire) == 0 {
            return None;
        }
        let key = rules.key(ip);
        let mut tracks = self.lock();
        let t = tracks.get_mut(&key)?;
        let (until, _) = t.ban.as_ref()?;
        if *until > now {
            return Some(*until - now);
        }
        t.ban = None;
        self.banned.fetch_sub(1, Ordering::AcqRel);
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
        let mut tracks = self.lock();
        if !tracks.contains_key(&key) && tracks.len() >= rules.max_tracked {
            self.forget_idle(&mut tracks, rules, now);
            if tracks.len() >= rules.max_tracked {
                return None;
            }
        }
        let t = tracks.entry(key).or_insert_with(|| Track {
            windows: Vec::new(),
            ban: None,
            last: now,
        });
        t.last = now;
        let mut new = None;
        for r in rules.rules.iter().filter(|r| r.on.contains(&reason)) {
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
            let until = now.checked_add(r.ban_for).unwrap_or(now);
            match &mut t.ban {
                Some((have, by)) => {
                    if until > *have {
                        *have = until;
                        *by = r.name.clone();
                    }
                }
                None => {
                    t.ban = Some((until, r.name.clone()));
                    self.banned.fetch_add(1, Ordering::AcqRel);
                }
            }
            new = Some(NewBan {
                address: key,
                rule: r.name.clone(),
                ban_for: r.ban_for,
            });
        }
        new
    }

    /// Drops the addresses whose counts and ban can no longer matter.
    fn forget_idle(&self, tracks: &mut HashMap<IpAddr, Track>, rules: &BanRules, now: Instant) {
        let idle = rules.longest.saturating_mul(2);
        tracks.retain(|_, t| {
            let banned = t.ban.as_ref().is_some_and(|(until, _)| *until > now);
            if !banned && t.ban.take().is_some() {
                self.banned.fetch_sub(1, Ordering::AcqRel);
            }
            banned || now.saturating_duration_since(t.last) < idle
        });
    }

    /// The addresses banned now.
    pub fn list(&self, now: Instant) -> Vec<BanEntry> {
        let tracks = self.lock();
        let mut out: Vec<BanEntry> = tracks
            .iter()
            .filter_map(|(ip, t)| {
                let (until, rule) = t.ban.as_ref()?;
                (*until > now).then(|| BanEntry {
                    address: ip.to_string(),
                    rule: rule.to_string(),
                    remaining_secs: (*until - now).as_secs_f64().ceil() as u64,
                })
            })
            .collect();
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out
    }

    /// Bans `ip` (its key: an IPv6 address by its prefix) for `ban_for`, under the name
    /// `by` (the admin API's bans): extends a ban already there to the later end. Exempt
    /// addresses and a full list are refused, saying why.
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
        let mut tracks = self.lock();
        if !tracks.contains_key(&key) && tracks.len() >= rules.max_tracked {
            self.forget_idle(&mut tracks, rules, now);
            if tracks.len() >= rules.max_tracked {
                return Err("the ban list is full (bans.max_tracked)".into());
            }
        }
        let t = tracks.entry(key).or_insert_with(|| Track {
            windows: Vec::new(),
            ban: None,
            last: now,
        });
        t.last = now;
        match &mut t.ban {
            Some((have, who)) => {
                if until > *have {
                    *have = until;
                    *who = Arc::from(by);
                }
            }
            None => {
                t.ban = Some((until, Arc::from(by)));
                self.banned.fetch_add(1, Ordering::AcqRel);
            }
        }
        Ok(key)
    }

    /// Lifts the ban of `ip` (and forgets its counts); whether there was one.
    pub fn lift(&self, rules: &BanRules, ip: IpAddr, now: Instant) -> bool {
        let key = rules.key(ip);
        let mut tracks = self.lock();
        match tracks.remove(&key) {
            Some(t) => match t.ban {
                Some((until, _)) => {
                    self.banned.fetch_sub(1, Ordering::AcqRel);
                    until > now
                }
                None => false,
            },
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rules(yaml_rules: &[(&str, &[&str], u32, &str, &str)], exempt: &[&str]) -> BanRules {
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
            max_tracked: Some(3),
        };
        let mut e = ConfigErrors::new();
        let r = BanRules::compile(&raw, "bans", &mut e);
        assert!(e.is_empty(), "{e}");
        r
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn count_refusals_within_the_window_ban_for_a_while() {
        let r = rules(&[("auth", &["unauthenticated"], 3, "60s", "10s")], &[]);
        let b = BanList::new();
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
        // Over once its time is up; the lock-free check then applies again.
        assert_eq!(b.banned(&r, a, t0 + 12 * S), None);
        assert_eq!(b.banned.load(Ordering::Acquire), 0);
        assert!(b.list(t0 + 12 * S).is_empty());
    }

    #[test]
    fn refusals_spread_wider_than_the_window_do_not_ban() {
        let r = rules(&[("scan", &["route_not_found"], 3, "10s", "60s")], &[]);
        let b = BanList::new();
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
        let b = BanList::new();
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
        let b = BanList::new();
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
        assert_eq!(b.banned.load(Ordering::Acquire), 1);
        assert!(b.ban(&r, ip("10.1.1.1"), S, "admin", t0).is_err());
        b.ban(&r, ip("192.0.2.1"), S, "admin", t0).unwrap();
        b.ban(&r, ip("192.0.2.2"), S, "admin", t0).unwrap();
        assert!(b.ban(&r, ip("192.0.2.3"), S, "admin", t0).is_err(), "full");
        assert_eq!(b.list(t0).len(), 3);
    }

    #[test]
    fn at_most_max_tracked_addresses_are_followed() {
        let r = rules(&[("x", &["forbidden"], 2, "10s", "60s")], &[]);
        let b = BanList::new();
        let t0 = Instant::now();
        for a in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
            b.record(&r, ip(a), RejectReason::Forbidden, t0);
        }
        // Full: a fourth address is not followed (never banned) …
        b.record(&r, ip("192.0.2.4"), RejectReason::Forbidden, t0);
        assert_eq!(
            b.record(&r, ip("192.0.2.4"), RejectReason::Forbidden, t0),
            None
        );
        assert_eq!(b.lock().len(), 3);
        // … until the others' counts have run out.
        let later = t0 + 30 * S;
        b.record(&r, ip("192.0.2.4"), RejectReason::Forbidden, later);
        assert!(
            b.record(&r, ip("192.0.2.4"), RejectReason::Forbidden, later)
                .is_some()
        );
        assert_eq!(b.lock().len(), 1);
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
            ],
            exempt: vec!["nope".into()],
            ipv6_prefix: Some(0),
            max_tracked: Some(0),
        };
        let mut e = ConfigErrors::new();
        BanRules::compile(&raw, "bans", &mut e);
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
                "bans.ipv6_prefix",
                "bans.max_tracked",
                "bans.exempt[0]",
            ]
        );
    }
}
