//! Revoked token ids and API keys. The request path only reads a local set; with Redis, a
//! background task mirrors the shared sets every `sync_interval`, and admin additions go to
//! both. A revocation therefore reaches every instance within one interval.
//!
//! A token id may be revoked `until` a time (the token's own expiry: after it the token is
//! refused anyway): it is then forgotten, here and in the shared store (a sorted set scored by
//! that time), so that the list does not grow without end. Forgotten only once the longest
//! `leeway` of the JWT issuers has passed as well: a token is still taken that long past its
//! `exp`, and a revocation `until` its `exp` must hold as long.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use serde::Serialize;

use portcullis_store::Store;

#[derive(Default)]
struct Sets {
    /// From the configuration (replaced on reload).
    config_jtis: HashSet<String>,
    config_keys: HashSet<[u8; 32]>,
    /// Added at run time (admin API) or read from the shared store, each with the unix time
    /// after which it is forgotten (`None`: never).
    jtis: HashMap<String, Option<u64>>,
    keys: HashSet<[u8; 32]>,
    /// Client certificates by the SHA-256 of their DER (a principal's `credential_id`).
    config_certs: HashSet<[u8; 32]>,
    certs: HashSet<[u8; 32]>,
}

impl Sets {
    /// Records `jti` as revoked until `until`; an entry already there keeps the later end.
    fn add_jti(&mut self, jti: &str, until: Option<u64>) {
        match self.jtis.get_mut(jti) {
            Some(have) => {
                *have = match (*have, until) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                }
            }
            None => {
                self.jtis.insert(jti.to_string(), until);
            }
        }
    }

    /// Forgets the token ids whose revocation ended at or before `now`.
    fn forget_ended(&mut self, now: u64) {
        self.jtis.retain(|_, until| until.is_none_or(|t| t > now));
    }

    fn jti_revoked(&self, jti: &str, now: u64) -> bool {
        self.config_jtis.contains(jti)
            || self
                .jtis
                .get(jti)
                .is_some_and(|until| until.is_none_or(|t| t > now))
    }
}

/// The latest `until` taken: the end of year 9999 (and exactly representable as a Redis score).
const MAX_UNTIL: u64 = 253_402_300_799;

/// A revocation's `until` as the admin API takes it: unix seconds, or an RFC 3339 time; it
/// must lie in the future.
pub fn parse_until(v: &serde_json::Value) -> Result<u64, String> {
    let t = match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        _ => None,
    };
    match t {
        None => Err("until: unix seconds, or an RFC 3339 time (2027-01-31T00:00:00Z)".into()),
        Some(t) if t <= unix_now() => Err("until: the time has passed".into()),
        Some(t) if t > MAX_UNTIL => Err("until: at most 9999-12-31T23:59:59Z".into()),
        Some(t) => Ok(t),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RevocationStatus {
    pub token_ids: Vec<String>,
    /// The token ids revoked until a time (unix seconds), by id.
    pub token_ids_until: BTreeMap<String, u64>,
    pub api_keys: Vec<String>,
    /// Revoked client certificates, `sha256:<hex of the DER's SHA-256>`.
    pub certificates: Vec<String>,
    pub shared: bool,
    /// False while the shared list was never read (see [`Revocations::loaded`]).
    pub loaded: bool,
    pub last_sync_error: Option<String>,
}

pub struct Revocations {
    sets: RwLock<Sets>,
    store: RwLock<Option<Arc<Store>>>,
    last_error: RwLock<Option<String>>,
    /// `auth.revocation.sync_interval` of the configuration in force, read by the sync task at
    /// each turn (a reload that keeps the store may change it).
    every: RwLock<Duration>,
    /// Seconds a revocation is kept past its `until` (the issuers' longest `leeway`).
    grace: AtomicU64,
    /// The store in force, by a number given to each store [`Revocations::share`] puts in
    /// force (0: none).
    need: AtomicU64,
    /// The store whose list was read last ([`Revocations::need`]'s number once read).
    have: AtomicU64,
    /// The last number given to a store.
    epochs: AtomicU64,
}

pub fn hex(h: &[u8]) -> String {
    use std::fmt::Write;
    h.iter()
        .fold(String::with_capacity(h.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Revocations {
    pub fn new() -> Arc<Revocations> {
        Arc::new(Revocations {
            sets: RwLock::new(Sets::default()),
            store: RwLock::new(None),
            last_error: RwLock::new(None),
            every: RwLock::new(Duration::from_secs(1)),
            grace: AtomicU64::new(0),
            need: AtomicU64::new(0),
            have: AtomicU64::new(0),
            epochs: AtomicU64::new(0),
        })
    }

    /// Whether the list in force is complete: no store shares it, or the store in force has
    /// been read once. A fresh instance (or one whose store a reload replaced) holds only the
    /// configured entries and its own until then: a credential revoked through another
    /// instance, known to the store alone, would pass.
    pub fn loaded(&self) -> bool {
        let need = self.need.load(Ordering::Acquire);
        need == 0 || self.have.load(Ordering::Acquire) == need
    }

    /// Why the list is not complete yet ([`Self::loaded`]), for readiness: `None` once it is.
    pub fn pending(&self) -> Option<String> {
        if self.loaded() {
            return None;
        }
        let why = self
            .last_error
            .read()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "first read not done yet".into());
        Some(format!(
            "revocations_not_loaded: the shared revocation list was never read from auth.redis ({why})"
        ))
    }

    /// The time revocations are compared with: now, less the grace past `until` (so that
    /// one `until` a token's `exp` holds while the token could still pass).
    fn ended_before(&self) -> u64 {
        unix_now().saturating_sub(self.grace.load(Ordering::Relaxed))
    }

    /// Replaces the configured entries (on every snapshot build); `leeway`: the issuers'
    /// longest, kept past each revocation's `until`.
    pub fn set_configured(&self, jtis: &[String], keys: &[[u8; 32]], leeway: Duration) {
        let grace = leeway.as_secs() + u64::from(leeway.subsec_nanos() > 0);
        self.grace.store(grace, Ordering::Relaxed);
        if let Ok(mut s) = self.sets.write() {
            s.config_jtis = jtis.iter().cloned().collect();
            s.config_keys = keys.iter().copied().collect();
        }
    }

    /// Replaces the configured client certificate revocations (SHA-256 of their DER).
    pub fn set_configured_certs(&self, certs: &[[u8; 32]]) {
        if let Ok(mut s) = self.sets.write() {
            s.config_certs = certs.iter().copied().collect();
        }
    }

    /// Shares the list through `store`, mirrored every `every`.
    pub fn share(self: &Arc<Self>, store: Option<Arc<Store>>, every: Duration) {
        if let Ok(mut e) = self.every.write() {
            *e = every.max(Duration::from_millis(100));
        }
        let (changed, epoch) = {
            let Ok(mut slot) = self.store.write() else {
                return;
            };
            let same = match (&*slot, &store) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            *slot = store.clone();
            // A new store's list is not known until it has been read: numbered while the slot
            // is held, so that `loaded` never pairs one store with another's number.
            let epoch = match (&store, same) {
                (_, true) => 0,
                (None, false) => {
                    self.need.store(0, Ordering::Release);
                    0
                }
                (Some(_), false) => {
                    let e = self.epochs.fetch_add(1, Ordering::AcqRel) + 1;
                    self.need.store(e, Ordering::Release);
                    if let Ok(mut le) = self.last_error.write() {
                        *le = None;
                    }
                    e
                }
            };
            (!same, epoch)
        };
        if !changed || store.is_none() {
            return;
        }
        let Some(mine) = store else { return };
        let weak: Weak<Revocations> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                // A later configuration replaced (or removed) the store: this task is done.
                let current = me.store.read().ok().and_then(|s| s.clone());
                if !current.is_some_and(|c| Arc::ptr_eq(&c, &mine)) {
                    return;
                }
                if me.sync(&mine).await {
                    // Read once: the list is complete (unless a later store replaced this one
                    // meanwhile, whose number differs).
                    if me.need.load(Ordering::Acquire) == epoch {
                        me.have.store(epoch, Ordering::Release);
                    }
                }
                let every = me.every.read().map_or(Duration::from_secs(1), |e| *e);
                drop(me);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Reads the shared sets into the local one; true when it could.
    async fn sync(&self, store: &Store) -> bool {
        let now = self.ended_before();
        let jtis = store.smembers(&store.key("revoked:jti")).await;
        let until = store.zlive(&store.key("revoked:jti:until"), now).await;
        let keys = store.smembers(&store.key("revoked:apikey")).await;
        let certs = store.smembers(&store.key("revoked:cert")).await;
        match (jtis, until, keys.and_then(|k| certs.map(|c| (k, c)))) {
            (Ok(j), Ok(u), Ok((k, c))) => {
                if let Ok(mut s) = self.sets.write() {
                    for jti in j {
                        s.add_jti(&jti, None);
                    }
                    for (jti, t) in u {
                        s.add_jti(&jti, Some(t));
                    }
                    s.forget_ended(now);
                    s.keys.extend(
                        k.iter()
                            .filter_map(|h| crate::config::parse_key_hash(h).ok()),
                    );
                    s.certs.extend(
                        c.iter()
                            .filter_map(|h| crate::config::parse_cert_fingerprint(h).ok()),
                    );
                }
                if let Ok(mut e) = self.last_error.write() {
                    *e = None;
                }
                true
            }
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                if self.loaded() {
                    tracing::warn!(error = %e, "revocation list sync failed; using the last known list");
                } else {
                    tracing::warn!(error = %e, "revocation list never read yet; credentials that could be revoked get 503 until it is");
                }
                if let Ok(mut le) = self.last_error.write() {
                    *le = Some(e);
                }
                false
            }
        }
    }

    pub fn is_jti_revoked(&self, jti: &str) -> bool {
        self.sets
            .read()
            .map(|s| s.jti_revoked(jti, self.ended_before()))
            .unwrap_or(true)
    }

    pub fn is_key_revoked(&self, hash: &[u8; 32]) -> bool {
        self.sets
            .read()
            .map(|s| s.keys.contains(hash) || s.config_keys.contains(hash))
            .unwrap_or(true)
    }

    /// Whether the client certificate whose DER has this SHA-256 (lowercase hex, as a
    /// principal's `credential_id` carries it) is revoked.
    pub fn is_cert_revoked(&self, fingerprint: &str) -> bool {
        let Ok(fp) = crate::config::parse_cert_fingerprint(fingerprint) else {
            return false;
        };
        self.sets
            .read()
            .map(|s| s.certs.contains(&fp) || s.config_certs.contains(&fp))
            .unwrap_or(true)
    }

    /// Revokes a client certificate by the SHA-256 of its DER, locally and, when shared, in
    /// the store (`<prefix>revoked:cert`). An error means the shared store did not take it.
    pub async fn revoke_cert(&self, fingerprint: [u8; 32]) -> Result<(), String> {
        if let Ok(mut s) = self.sets.write() {
            s.certs.insert(fingerprint);
        }
        let store = self.store.read().ok().and_then(|s| s.clone());
        match store {
            Some(st) => {
                st.sadd(
                    &st.key("revoked:cert"),
                    &format!("sha256:{}", hex(&fingerprint)),
                )
                .await
            }
            None => Ok(()),
        }
    }

    /// Adds an entry locally and, when shared, to the store; `until`: the unix time after
    /// which it is forgotten (`None`: never). Ended entries are forgotten on the way. An error
    /// means the shared store did not take it (it is still refused here).
    pub async fn revoke_jti(&self, jti: &str, until: Option<u64>) -> Result<(), String> {
        if let Ok(mut s) = self.sets.write() {
            s.forget_ended(self.ended_before());
            s.add_jti(jti, until);
        }
        let store = self.store.read().ok().and_then(|s| s.clone());
        match (store, until) {
            (Some(st), None) => st.sadd(&st.key("revoked:jti"), jti).await,
            (Some(st), Some(t)) => st.zadd_gt(&st.key("revoked:jti:until"), jti, t).await,
            (None, _) => Ok(()),
        }
    }

    pub async fn revoke_key(&self, hash: [u8; 32]) -> Result<(), String> {
        if let Ok(mut s) = self.sets.write() {
            s.keys.insert(hash);
        }
        let store = self.store.read().ok().and_then(|s| s.clone());
        match store {
            Some(st) => {
                st.sadd(&st.key("revoked:apikey"), &format!("sha256:{}", hex(&hash)))
                    .await
            }
            None => Ok(()),
        }
    }

    pub fn status(&self) -> RevocationStatus {
        let now = self.ended_before();
        let (token_ids, token_ids_until, mut api_keys, mut certificates) = self
            .sets
            .read()
            .map(|s| {
                let live = s
                    .jtis
                    .iter()
                    .filter(|(_, until)| until.is_none_or(|t| t > now));
                let mut ids: BTreeSet<String> = live.clone().map(|(j, _)| j.clone()).collect();
                ids.extend(s.config_jtis.iter().cloned());
                (
                    ids.into_iter().collect::<Vec<_>>(),
                    live.filter_map(|(j, until)| until.map(|t| (j.clone(), t)))
                        .collect::<BTreeMap<_, _>>(),
                    s.keys
                        .union(&s.config_keys)
                        .map(|k| format!("sha256:{}", hex(k)))
                        .collect::<Vec<_>>(),
                    s.certs
                        .union(&s.config_certs)
                        .map(|k| format!("sha256:{}", hex(k)))
                        .collect::<Vec<_>>(),
                )
            })
            .unwrap_or_default();
        api_keys.sort();
        certificates.sort();
        RevocationStatus {
            token_ids,
            token_ids_until,
            api_keys,
            certificates,
            shared: self.store.read().map(|s| s.is_some()).unwrap_or(false),
            loaded: self.loaded(),
            last_sync_error: self.last_error.read().ok().and_then(|e| e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A token id revoked until a time is refused until then, then forgotten (a later end
    /// wins over an earlier one, and never over "forever"); configured ids never end.
    #[test]
    fn revocations_with_an_end_are_forgotten_after_it() {
        let mut s = Sets::default();
        s.config_jtis.insert("cfg".into());
        s.add_jti("a", Some(100));
        s.add_jti("a", Some(50));
        s.add_jti("b", Some(100));
        s.add_jti("b", None);
        s.add_jti("c", None);
        s.add_jti("c", Some(10));
        assert!(s.jti_revoked("a", 99));
        assert!(!s.jti_revoked("a", 100));
        assert!(s.jti_revoked("b", 1_000));
        assert!(s.jti_revoked("c", 1_000));
        assert!(s.jti_revoked("cfg", u64::MAX));
        assert!(!s.jti_revoked("d", 0));
        s.forget_ended(100);
        assert!(!s.jtis.contains_key("a"));
        assert_eq!(s.jtis.len(), 2);
    }

    /// A revocation `until` a token's `exp` holds for the issuers' leeway past it, since the
    /// token itself still passes that long; then it is forgotten.
    #[tokio::test]
    async fn a_revocation_outlasts_its_until_by_the_leeway() {
        let r = Revocations::new();
        r.set_configured(&[], &[], Duration::from_secs(30));
        r.revoke_jti("ended-10s-ago", Some(unix_now() - 10))
            .await
            .unwrap();
        r.revoke_jti("ended-60s-ago", Some(unix_now() - 60))
            .await
            .unwrap();
        assert!(r.is_jti_revoked("ended-10s-ago"));
        assert!(!r.is_jti_revoked("ended-60s-ago"));
        assert_eq!(
            r.status().token_ids,
            vec!["ended-10s-ago".to_string()],
            "the forgotten one is gone"
        );
        r.set_configured(&[], &[], Duration::ZERO);
        assert!(!r.is_jti_revoked("ended-10s-ago"));
    }

    /// A client certificate is revoked by the SHA-256 of its DER, however the fingerprint is
    /// written; configured ones are replaced by the next configuration, run-time ones stay.
    #[tokio::test]
    async fn client_certificates_are_revoked_by_fingerprint() {
        let r = Revocations::new();
        assert!(r.loaded(), "nothing shared: the list is complete");
        assert!(r.pending().is_none());
        let a = [0xabu8; 32];
        let b = [0x01u8; 32];
        let hex_a = hex(&a);
        assert!(!r.is_cert_revoked(&hex_a));
        r.revoke_cert(a).await.unwrap();
        assert!(r.is_cert_revoked(&hex_a));
        assert!(r.is_cert_revoked(&hex_a.to_uppercase()));
        assert!(!r.is_cert_revoked(&hex(&b)));
        assert!(!r.is_cert_revoked("not a fingerprint"));
        r.set_configured_certs(&[b]);
        assert!(r.is_cert_revoked(&hex(&b)));
        r.set_configured_certs(&[]);
        assert!(!r.is_cert_revoked(&hex(&b)));
        assert!(r.is_cert_revoked(&hex_a));
        assert_eq!(r.status().certificates, vec![format!("sha256:{hex_a}")]);
    }

    #[test]
    fn until_is_a_future_time() {
        let soon = unix_now() + 60;
        assert_eq!(parse_until(&serde_json::json!(soon)), Ok(soon));
        assert_eq!(
            parse_until(&serde_json::json!("9999-12-31T23:59:59Z")),
            Ok(MAX_UNTIL)
        );
        for bad in [
            serde_json::json!(1),
            serde_json::json!("2001-01-01T00:00:00Z"),
            serde_json::json!("tomorrow"),
            serde_json::json!(-5),
            serde_json::json!(MAX_UNTIL + 1),
            serde_json::json!(true),
        ] {
            assert!(parse_until(&bad).is_err(), "{bad}");
        }
    }
}
