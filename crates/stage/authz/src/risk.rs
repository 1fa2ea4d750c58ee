//! The zero-trust risk score of a request and step-up (RFC 9470).
//!
//! Each signal that fires adds its configured weight; the score is capped at 100. A route
//! then asks for stronger or fresher authentication above `step_up` (401) and refuses above
//! `deny` (403). Signals about the authentication itself (its age and strength, an unknown
//! device) vanish once the caller has stepped up, so a step-up can always succeed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use portcullis_core::{AuthMethod, Principal};

use crate::config::Risk;

/// What the token says about how the user authenticated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuthFacts<'a> {
    pub acr: Option<&'a str>,
    pub amr: Vec<&'a str>,
    pub auth_time: Option<u64>,
}

impl<'a> AuthFacts<'a> {
    pub fn of(p: &'a Principal) -> AuthFacts<'a> {
        let c = &p.claims;
        AuthFacts {
            acr: c.get("acr").and_then(|v| v.as_str()),
            amr: c
                .get("amr")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default(),
            auth_time: c.get("auth_time").and_then(|v| {
                v.as_u64().or_else(|| {
                    v.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f as u64)
                })
            }),
        }
    }

    /// Seconds since the user authenticated; `None` without `auth_time`. A time in the future
    /// counts as now.
    pub fn age(&self, now: u64) -> Option<u64> {
        self.auth_time.map(|t| now.saturating_sub(t))
    }

    pub fn acr_in(&self, list: &[String]) -> bool {
        self.acr.is_some_and(|a| list.iter().any(|x| x == a))
    }

    pub fn strong(&self, risk: &Risk) -> bool {
        self.acr_in(&risk.strong_acr)
            || self
                .amr
                .iter()
                .any(|m| risk.strong_amr.iter().any(|s| s == m))
    }
}

/// Devices seen per subject, remembered for `device_memory`. Long-lived (survives reloads);
/// bounded: the oldest entries go first.
pub struct DeviceMemory {
    seen: Mutex<HashMap<u64, Instant>>,
    cap: usize,
    /// Random per process: which (subject, device) pairs collide cannot be predicted.
    keys: std::collections::hash_map::RandomState,
}

impl DeviceMemory {
    pub fn new(cap: usize) -> DeviceMemory {
        DeviceMemory {
            seen: Mutex::new(HashMap::new()),
            cap: cap.max(1),
            keys: std::collections::hash_map::RandomState::new(),
        }
    }

    fn key(&self, subject: &str, device: &[u8]) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.keys.build_hasher();
        h.write(subject.as_bytes());
        h.write_u8(0);
        h.write(device);
        h.finish()
    }

    pub fn known(&self, subject: &str, device: &[u8], memory: Duration) -> bool {
        let k = self.key(subject, device);
        self.seen
            .lock()
            .ok()
            .and_then(|m| m.get(&k).map(|t| t.elapsed() < memory))
            .unwrap_or(false)
    }

    pub fn remember(&self, subject: &str, device: &[u8], memory: Duration) {
        let k = self.key(subject, device);
        if let Ok(mut m) = self.seen.lock() {
            if m.len() >= self.cap && !m.contains_key(&k) {
                let now = Instant::now();
                m.retain(|_, t| now.saturating_duration_since(*t) < memory);
                if m.len() >= self.cap {
                    // Still full of live entries: the oldest eighth goes at once, so that the
                    // walk is paid once per eighth of the memory's size in new devices, not
                    // for each (a caller sending a new device id with every request).
                    let mut by_age: Vec<(Instant, u64)> = m.iter().map(|(k, t)| (*t, *k)).collect();
                    let n = (self.cap / 8).clamp(1, by_age.len());
                    by_age.select_nth_unstable(n - 1);
                    for (_, old) in &by_age[..n] {
                        m.remove(old);
                    }
                }
            }
            m.insert(k, Instant::now());
        }
    }
}

/// The score and the signals that made it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    pub score: u32,
    pub signals: Vec<&'static str>,
    pub country: Option<[u8; 2]>,
}

/// Everything the score looks at.
pub struct Request<'a> {
    pub client_ip: IpAddr,
    /// The TCP peer is a trusted proxy (so its country header can be believed).
    pub peer_trusted: bool,
    pub headers: &'a HeaderMap,
    pub principal: &'a Principal,
    pub now: u64,
    /// The caller has stepped up for this route: strong and fresh as it demands.
    pub stepped_up: bool,
    /// Recent authentication failures from the client address.
    pub auth_failures: u32,
    /// Recent requests from the client address the WAF found something in.
    pub waf_hits: u32,
}

/// The country a trusted proxy wrote: the last value of the header (the last element of its
/// last field line, lists split at commas). A proxy that appends puts its own value after
/// whatever the client sent, so an earlier value may be the client's; if the last one is not
/// a country code the country is unknown — an earlier value is never used instead.
fn header_country(headers: &HeaderMap, name: &http::HeaderName) -> Option<[u8; 2]> {
    let last = headers.get_all(name).iter().next_back()?;
    let value = last.to_str().ok()?;
    let element = value.rsplit(',').next()?;
    crate::geo::parse_country(element.trim())
}

/// The device identifier of a request, if the header is configured and present.
pub fn device<'a>(risk: &Risk, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    let name = risk.device_header.as_ref()?;
    headers
        .get(name)
        .map(HeaderValue::as_bytes)
        .filter(|b| !b.is_empty() && b.len() <= 256)
}

pub fn assess(risk: &Risk, devices: &DeviceMemory, r: &Request<'_>) -> Assessment {
    let w = &risk.weights;
    let mut a = Assessment::default();
    let add = |a: &mut Assessment, signal: &'static str, weight: u32| {
        if weight > 0 {
            a.score = a.score.saturating_add(weight);
            a.signals.push(signal);
        }
    };

    if risk.is_reputation_listed(r.client_ip) {
        add(&mut a, "ip_reputation", w.reputation);
    }

    a.country = risk
        .geoip
        .as_ref()
        .and_then(|db| db.country(r.client_ip))
        .or_else(|| {
            if r.peer_trusted {
                header_country(r.headers, risk.country_header.as_ref()?)
            } else {
                None
            }
        });
    let country_risky = match a.country {
        Some(c) => {
            risk.risky_countries.contains(&c)
                || (!risk.expected_countries.is_empty() && !risk.expected_countries.contains(&c))
        }
        None => !risk.expected_countries.is_empty(),
    };
    if country_risky {
        add(&mut a, "country", w.country);
    }

    let p = r.principal;
    let facts = AuthFacts::of(p);
    let token = matches!(p.method, AuthMethod::Jwt | AuthMethod::Introspection);
    if token && !r.stepped_up {
        let stale = facts
            .age(r.now)
            .is_none_or(|age| age > risk.max_auth_age.as_secs());
        if stale {
            add(&mut a, "auth_age", w.auth_age);
        }
    }
    let strong = p.method == AuthMethod::Mtls || facts.strong(risk);
    if !strong && !r.stepped_up {
        add(&mut a, "weak_authentication", w.weak_authentication);
    }

    if risk.device_header.is_some() && !r.stepped_up {
        let known = match (p.subject.as_deref(), device(risk, r.headers)) {
            (Some(s), Some(d)) => devices.known(s, d, risk.device_memory),
            _ => false,
        };
        if !known {
            add(&mut a, "new_device", w.new_device);
        }
    }

    if r.auth_failures >= risk.auth_failures_threshold {
        add(&mut a, "auth_failures", w.auth_failures);
    }
    if r.waf_hits >= risk.waf_hits_threshold {
        add(&mut a, "waf_hits", w.waf_hits);
    }

    a.score = a.score.min(100);
    a
}

/// The RFC 9470 challenge: `Bearer error="insufficient_user_authentication"` with what the
/// caller must come back with.
pub fn step_up_challenge(
    description: &str,
    acr_values: &[String],
    max_age: Option<Duration>,
) -> HeaderValue {
    let mut v = format!(
        "Bearer error=\"insufficient_user_authentication\", error_description=\"{}\"",
        description.replace(['"', '\\'], "")
    );
    if !acr_values.is_empty() {
        v.push_str(&format!(
            ", acr_values=\"{}\"",
            acr_values.join(" ").replace(['"', '\\'], "")
        ));
    }
    if let Some(m) = max_age {
        v.push_str(&format!(", max_age=\"{}\"", m.as_secs()));
    }
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static(
        "Bearer error=\"insufficient_user_authentication\"",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawRiskWeights;
    use serde_json::json;
    use std::sync::Arc;

    fn risk() -> Risk {
        Risk {
            reputation: vec!["203.0.113.0/24".parse().unwrap()],
            geoip: None,
            country_header: Some(http::HeaderName::from_static("x-country")),
            risky_countries: vec![*b"KP"],
            expected_countries: vec![],
            max_auth_age: Duration::from_secs(3600),
            strong_acr: vec!["urn:mfa".into()],
            strong_amr: vec!["mfa".into(), "hwk".into()],
            device_header: Some(http::HeaderName::from_static("x-device-id")),
            device_memory: Duration::from_secs(86400),
            auth_failures_threshold: 3,
            waf_hits_threshold: 1,
            weights: RawRiskWeights::default(),
        }
    }

    fn principal(claims: serde_json::Value) -> Principal {
        let mut p = Principal::new(AuthMethod::Jwt, Arc::from("idp"));
        p.subject = Some("alice".into());
        p.claims = Arc::new(claims.as_object().cloned().unwrap_or_default());
        p
    }

    fn req<'a>(p: &'a Principal, h: &'a HeaderMap, ip: &str) -> Request<'a> {
        Request {
            client_ip: ip.parse().unwrap(),
            peer_trusted: true,
            headers: h,
            principal: p,
            now: 1_000_000,
            stepped_up: false,
            auth_failures: 0,
            waf_hits: 0,
        }
    }

    #[test]
    fn a_fresh_strong_login_on_a_known_device_is_quiet() {
        let r = risk();
        let devices = DeviceMemory::new(10);
        devices.remember("alice", b"dev-1", r.device_memory);
        let p = principal(json!({"acr": "urn:mfa", "auth_time": 999_000}));
        let mut h = HeaderMap::new();
        h.insert("x-device-id", HeaderValue::from_static("dev-1"));
        let a = assess(&r, &devices, &req(&p, &h, "198.51.100.1"));
        assert_eq!(
            a,
            Assessment {
                score: 0,
                signals: vec![],
                country: None
            }
        );
    }

    #[test]
    fn every_signal_adds_its_weight_capped_at_100() {
        let r = risk();
        let devices = DeviceMemory::new(10);
        let p = principal(json!({"acr": "urn:pwd", "auth_time": 1}));
        let mut h = HeaderMap::new();
        h.insert("x-country", HeaderValue::from_static("kp"));
        h.insert("x-device-id", HeaderValue::from_static("dev-new"));
        let mut rq = req(&p, &h, "203.0.113.9");
        rq.auth_failures = 3;
        rq.waf_hits = 1;
        let a = assess(&r, &devices, &rq);
        assert_eq!(
            a.signals,
            vec![
                "ip_reputation",
                "country",
                "auth_age",
                "weak_authentication",
                "new_device",
                "auth_failures",
                "waf_hits"
            ]
        );
        assert_eq!(a.score, 100);
        assert_eq!(a.country, Some(*b"KP"));
    }

    #[test]
    fn country_header_only_from_trusted_proxies_and_expected_countries() {
        let mut r = risk();
        r.expected_countries = vec![*b"DE"];
        r.device_header = None;
        let devices = DeviceMemory::new(10);
        let p = principal(json!({"amr": ["hwk"], "auth_time": 999_999}));
        let mut h = HeaderMap::new();
        h.insert("x-country", HeaderValue::from_static("DE"));
        let mut rq = req(&p, &h, "198.51.100.1");
        assert_eq!(assess(&r, &devices, &rq).score, 0);
        // From an untrusted peer the header is ignored: the country is unknown, unexpected.
        rq.peer_trusted = false;
        let a = assess(&r, &devices, &rq);
        assert_eq!(a.signals, vec!["country"]);
        assert_eq!(a.country, None);
    }

    /// A trusted proxy that appends its own value puts it after whatever the client sent:
    /// only the last one is believed, and if that one is no country the country is unknown.
    #[test]
    fn the_country_header_written_last_is_the_one_believed() {
        let r = risk();
        let devices = DeviceMemory::new(10);
        let p = principal(json!({"acr": "urn:mfa", "auth_time": 999_999}));
        let country = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-country", HeaderValue::from_static(v));
            }
            assert_eq!(h.get_all("x-country").iter().count(), values.len());
            assess(&r, &devices, &req(&p, &h, "198.51.100.1")).country
        };
        assert_eq!(country(&["DE"]), Some(*b"DE"));
        assert_eq!(country(&["DE", "KP"]), Some(*b"KP"));
        assert_eq!(country(&["KP", "DE"]), Some(*b"DE"));
        assert_eq!(country(&["de, kp"]), Some(*b"KP"));
        assert_eq!(country(&["FR", "DE , KP "]), Some(*b"KP"));
        // The last value is not a country: unknown, never an earlier (client's) value.
        assert_eq!(country(&["DE", "Germany"]), None);
        assert_eq!(country(&["DE", ""]), None);
        assert_eq!(country(&["DE,"]), None);
        // The client claiming an expected country ahead of the proxy's risky one.
        let mut h = HeaderMap::new();
        h.append("x-country", HeaderValue::from_static("DE"));
        h.append("x-country", HeaderValue::from_static("KP"));
        let a = assess(&r, &devices, &req(&p, &h, "198.51.100.1"));
        assert!(a.signals.contains(&"country"), "{a:?}");
    }

    #[test]
    fn missing_auth_time_counts_as_stale_and_step_up_clears_auth_signals() {
        let r = risk();
        let devices = DeviceMemory::new(10);
        let p = principal(json!({}));
        let h = HeaderMap::new();
        let mut rq = req(&p, &h, "198.51.100.1");
        let a = assess(&r, &devices, &rq);
        assert_eq!(
            a.signals,
            vec!["auth_age", "weak_authentication", "new_device"]
        );
        rq.stepped_up = true;
        assert_eq!(assess(&r, &devices, &rq).score, 0);
    }

    #[test]
    fn mtls_is_strong_and_has_no_auth_age() {
        let r = risk();
        let devices = DeviceMemory::new(10);
        let mut p = principal(json!({}));
        p.method = AuthMethod::Mtls;
        let mut h = HeaderMap::new();
        h.insert("x-device-id", HeaderValue::from_static("d"));
        devices.remember("alice", b"d", r.device_memory);
        assert_eq!(assess(&r, &devices, &req(&p, &h, "198.51.100.1")).score, 0);
    }

    #[test]
    fn device_memory_is_bounded_and_per_subject() {
        let devices = DeviceMemory::new(2);
        let m = Duration::from_secs(60);
        devices.remember("a", b"1", m);
        assert!(devices.known("a", b"1", m));
        assert!(!devices.known("b", b"1", m));
        devices.remember("a", b"2", m);
        devices.remember("a", b"3", m);
        let known = ["1", "2", "3"]
            .iter()
            .filter(|d| devices.known("a", d.as_bytes(), m))
            .count();
        assert_eq!(known, 2);
        assert!(!devices.known("a", b"1", Duration::ZERO));
    }

    #[test]
    fn a_full_device_memory_makes_room_for_many_at_once_oldest_first() {
        let devices = DeviceMemory::new(64);
        let m = Duration::from_secs(600);
        for i in 0..64 {
            devices.remember("a", format!("d{i}").as_bytes(), m);
            std::thread::sleep(Duration::from_micros(50));
        }
        let len = || devices.seen.lock().unwrap().len();
        assert_eq!(len(), 64);
        // One more: the oldest eighth (8) goes, the newcomer comes in.
        devices.remember("a", b"new", m);
        assert_eq!(len(), 64 - 8 + 1);
        for i in 0..8 {
            assert!(!devices.known("a", format!("d{i}").as_bytes(), m), "d{i}");
        }
        for i in 8..64 {
            assert!(devices.known("a", format!("d{i}").as_bytes(), m), "d{i}");
        }
        assert!(devices.known("a", b"new", m));
        // The next seven find room without evicting anything.
        for i in 0..7 {
            devices.remember("b", format!("e{i}").as_bytes(), m);
        }
        assert_eq!(len(), 64);
        assert!(devices.known("a", b"d8", m));
    }

    #[test]
    fn challenge_shape() {
        let v = step_up_challenge(
            "stronger \"auth\"",
            &["urn:mfa".into(), "urn:hwk".into()],
            Some(Duration::from_secs(300)),
        );
        assert_eq!(
            v.to_str().unwrap(),
            "Bearer error=\"insufficient_user_authentication\", error_description=\"stronger auth\", acr_values=\"urn:mfa urn:hwk\", max_age=\"300\""
        );
    }

    /// An IPv4 client on a dual-stack listener (`::ffff:a.b.c.d`) is on an IPv4 list.
    #[test]
    fn a_mapped_ipv4_client_is_on_an_ipv4_reputation_list() {
        let r = risk();
        let devices = DeviceMemory::new(10);
        let p = principal(json!({"acr": "urn:mfa", "auth_time": 999_000}));
        let h = HeaderMap::new();
        for ip in ["203.0.113.9", "::ffff:203.0.113.9"] {
            let a = assess(&r, &devices, &req(&p, &h, ip));
            assert!(a.signals.contains(&"ip_reputation"), "{ip}: {a:?}");
        }
        let a = assess(&r, &devices, &req(&p, &h, "::ffff:198.51.100.9"));
        assert!(!a.signals.contains(&"ip_reputation"), "{a:?}");
        // An entry written in the mapped form is its IPv4 network, and takes IPv4 clients.
        let mut mapped = risk();
        mapped.reputation =
            vec![portcullis_core::addr::parse_net("::ffff:198.51.100.0/120").unwrap()];
        for ip in ["198.51.100.9", "::ffff:198.51.100.9"] {
            let a = assess(&mapped, &devices, &req(&p, &h, ip));
            assert!(a.signals.contains(&"ip_reputation"), "{ip}: {a:?}");
        }
    }
}
