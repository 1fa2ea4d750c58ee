//! # portcullis-authn
//!
//! Authentication, and the hand-over of verified identity to upstreams.
//!
//! * **Takes**: the matched route's accepted methods ([`config::RouteAuth`]); the request's
//!   `Authorization: Bearer` token, API key header (or, where a route opts in, query
//!   parameter), and the client certificate the TLS handshake verified.
//! * **Produces**: `RequestCtx::principal` — the verified identity — and, in the identity
//!   step, the headers (or the gateway-signed token) the upstream sees.
//! * **Rejects**: `401 unauthenticated` with an RFC 6750 `WWW-Authenticate` challenge for a
//!   missing or invalid credential (the precise reason goes to `RequestCtx::auth_failure`,
//!   the audit event and metrics — never to the client); `503 auth_unavailable` when what
//!   verifies the credential is unavailable and nothing cached can stand in (fail closed);
//!   `400 bad_request` for an ambiguous request (two `Authorization` headers, two keys).
//!
//! Invariants: the token never chooses how it is verified (issuer by `iss` among the route's
//! issuers, algorithms fixed per issuer, keys never from the token); a verified token is
//! cached by its SHA-256, never past its `exp`; revocations are checked on every request,
//! cached or not; client-supplied identity headers are removed on every route (spelled with
//! `_` for `-` too), by the authentication step first thing, before any later step reads them; the internal-token key's `kid` is its RFC 7638 thumbprint, and a key a
//! reload replaced stays published while tokens it signed may live.
//!
//! Long-lived state ([`AuthnState`]: remote key sets, revocations, the Redis store, the
//! internal-token key, failure counters) outlives configuration snapshots, so a reload keeps
//! the last good keys and does not refetch them.

#![forbid(unsafe_code)]

pub mod apikey;
pub mod cache;
pub mod config;
pub mod failures;
pub use portcullis_fetch as fetch;
pub mod identity;
pub mod introspect;
pub mod jwks;
pub mod principal;
pub mod revocation;
pub mod stage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwapOption;
use portcullis_jose::{Alg, Signer};

pub use config::{AuthSettings, RawAuth, RawRouteAuth, RouteAuth};
pub use identity::IdentityStage;
pub use stage::{Authn, AuthnStage};

use crate::config::KeySource;
use crate::jwks::RemoteKeys;
use crate::revocation::Revocations;
use portcullis_store::Store;

/// Why a credential was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// Invalid: 401. The code is the precise reason (audit only).
    Invalid(&'static str),
    /// Could not be checked: 503.
    Unavailable(&'static str),
}

impl Fail {
    pub fn code(self) -> &'static str {
        match self {
            Fail::Invalid(c) | Fail::Unavailable(c) => c,
        }
    }
}

pub(crate) use portcullis_core::unix_now;

/// How much longer than the tokens it signed a replaced internal-token key stays published:
/// for a request that started under the old configuration to end (its upstream's read of
/// `/jwks` included), and for clock skew between the gateway and the services.
const RETIRED_GRACE: u64 = 60;

/// An internal-token key a reload replaced, published while tokens it signed may live.
struct Retired {
    signer: Arc<Signer>,
    /// Unix seconds of the replacement.
    since: u64,
    /// `internal_token.ttl` then.
    ttl: std::time::Duration,
}

impl Retired {
    /// Until when (unix seconds) `/jwks` publishes the key: past the latest `exp` of every
    /// token it signed — internal tokens and exchanged ones (`token_exchange`, whose `ttl` may
    /// be up to a day) alike, under this configuration or an earlier one — and past one more
    /// internal token signed at the replacement, plus the grace. Read each time, so a token a
    /// request of the old configuration signs after the replacement counts too.
    fn until(&self) -> u64 {
        self.since
            .saturating_add(self.ttl.as_secs())
            .max(self.signer.signed_until())
            .saturating_add(RETIRED_GRACE)
    }
}

/// The internal-token signer and what it was built from (key PEM, algorithm).
type SignerSlot = (Option<portcullis_core::Secret>, Alg, Arc<Signer>);

/// What a prepared authenticator changes in [`AuthnState`] once it is put in force.
pub struct Activation {
    authn: Arc<Authn>,
    /// The Redis store the snapshot uses (revocations are shared through it).
    store: Option<Arc<Store>>,
    /// A store made for this snapshot, kept for reuse from then on.
    new_store: Option<(String, Arc<Store>)>,
    /// An internal-token key made for this snapshot, likewise.
    new_signer: Option<SignerSlot>,
    /// `internal_token.ttl`: the least time a replaced key stays published.
    token_ttl: std::time::Duration,
    token_ids: Vec<String>,
    api_keys: Vec<[u8; 32]>,
    certificates: Vec<[u8; 32]>,
    /// The longest `leeway` of the JWT issuers: how long past its `exp` a token still passes.
    leeway: std::time::Duration,
    sync_interval: std::time::Duration,
    /// Inside a Tokio runtime: revocations are synced in the background.
    share: bool,
}

/// State that lives as long as the process, shared by every configuration snapshot.
pub struct AuthnState {
    remotes: Mutex<HashMap<String, Weak<RemoteKeys>>>,
    pub revocations: Arc<Revocations>,
    store: Mutex<Option<(String, Arc<Store>)>>,
    signer: Mutex<Option<SignerSlot>>,
    /// The keys reloads replaced, each published while tokens it signed (before the reload,
    /// and by requests still running under the old configuration) may live.
    retired: Mutex<Vec<Retired>>,
    pub failures: Arc<failures::FailureTracker>,
    /// The snapshot built last (for the admin API).
    current: ArcSwapOption<Authn>,
}

impl AuthnState {
    pub fn new() -> Arc<AuthnState> {
        Arc::new(AuthnState {
            remotes: Mutex::new(HashMap::new()),
            revocations: Revocations::new(),
            store: Mutex::new(None),
            signer: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
            failures: Arc::new(failures::FailureTracker::new(10_000)),
            current: ArcSwapOption::empty(),
        })
    }

    /// Builds the per-snapshot authenticator and puts it in force at once ([`Self::prepare`]
    /// then [`Self::activate`]).
    pub fn build(
        self: &Arc<Self>,
        settings: &AuthSettings,
        routes: Vec<RouteAuth>,
    ) -> Result<Arc<Authn>, String> {
        let (authn, activation) = self.prepare(settings, routes)?;
        self.activate(activation);
        Ok(authn)
    }

    /// Builds the per-snapshot authenticator without changing what is in force: the
    /// revocations configured, their sharing, the Redis store and internal-token key kept for
    /// reuse, the snapshot the admin API shows. Those change in [`Self::activate`], once the
    /// whole configuration has built — a reload refused for any reason leaves them as they
    /// were. Reuses remote key sets whose source and settings are unchanged (they keep their
    /// keys and their refresh task), the Redis store when its URL is unchanged, and the
    /// internal-token key when its configuration is unchanged. Background tasks start only
    /// inside a Tokio runtime.
    pub fn prepare(
        self: &Arc<Self>,
        settings: &AuthSettings,
        routes: Vec<RouteAuth>,
    ) -> Result<(Arc<Authn>, Activation), String> {
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        let mut remotes = Vec::with_capacity(settings.jwt.len());
        {
            let mut map = self
                .remotes
                .lock()
                .map_err(|_| "key registry poisoned".to_string())?;
            map.retain(|_, w| w.strong_count() > 0);
            for issuer in &settings.jwt {
                let remote = match (&issuer.source, issuer.source_key()) {
                    (KeySource::Static(_), _) | (_, None) => None,
                    (_, Some(key)) => match map.get(&key).and_then(|w| w.upgrade()) {
                        Some(r) => Some(r),
                        None => {
                            let r = RemoteKeys::new(issuer)
                                .map_err(|e| format!("auth.jwt.{}: {e}", issuer.name))?;
                            if in_runtime {
                                r.start();
                            }
                            map.insert(key, Arc::downgrade(&r));
                            Some(r)
                        }
                    },
                };
                remotes.push(remote);
            }
        }

        let mut new_store = None;
        let store = match &settings.redis {
            None => None,
            Some(cfg) => {
                let slot = self
                    .store
                    .lock()
                    .map_err(|_| "store poisoned".to_string())?;
                // The URLs themselves (their `Debug` hides passwords, which may be all that changed).
                let id = format!(
                    "{}|{}|{:?}|{}",
                    cfg.target.urls.join(","),
                    cfg.target.cluster,
                    cfg.timeout,
                    cfg.key_prefix
                );
                match &*slot {
                    Some((k, s)) if *k == id => Some(s.clone()),
                    _ => {
                        let s = Arc::new(
                            Store::new(
                                &cfg.target.urls,
                                cfg.target.cluster,
                                cfg.timeout,
                                &cfg.key_prefix,
                            )
                            .map_err(|e| format!("auth.redis: {e}"))?,
                        );
                        new_store = Some((id, s.clone()));
                        Some(s)
                    }
                }
            }
        };

        let it = &settings.internal_token;
        let mut new_signer = None;
        let signer = {
            let slot = self
                .signer
                .lock()
                .map_err(|_| "signer poisoned".to_string())?;
            match &*slot {
                Some((pem, alg, s)) if *pem == it.key_pem && *alg == it.algorithm => s.clone(),
                current => {
                    let made = match &it.key_pem {
                        Some(pem) => Signer::from_pkcs8_pem(pem.expose(), String::new()),
                        None => Signer::generate(it.algorithm, String::new()),
                    }
                    .map_err(|e| format!("auth.internal_token: {e}"))?;
                    // The kid is the key's thumbprint: every process holding the key (other
                    // instances, this one after a restart) publishes and signs with the same.
                    let kid = made.thumbprint();
                    // The same key again (the file rewritten, or a key a reload replaced
                    // coming back): its signer is kept, with what it has signed, so `/jwks`
                    // lists it once and retires it only when no token of its may live.
                    let known = current
                        .as_ref()
                        .map(|(_, _, s)| s.clone())
                        .into_iter()
                        .chain(
                            self.retired
                                .lock()
                                .map(|r| r.iter().map(|k| k.signer.clone()).collect::<Vec<_>>())
                                .unwrap_or_default(),
                        )
                        .find(|s| s.kid() == kid);
                    let s = known.unwrap_or_else(|| Arc::new(made.with_kid(kid)));
                    new_signer = Some((it.key_pem.clone(), it.algorithm, s.clone()));
                    s
                }
            }
        };

        let authn = Arc::new(Authn::new(
            settings.clone(),
            routes,
            remotes,
            store.clone(),
            self.revocations.clone(),
            signer,
            self.failures.clone(),
        )?);
        let activation = Activation {
            authn: authn.clone(),
            store,
            new_store,
            new_signer,
            token_ttl: settings.internal_token.ttl,
            token_ids: settings.revocation.token_ids.clone(),
            api_keys: settings.revocation.api_keys.clone(),
            certificates: settings.revocation.certificates.clone(),
            leeway: settings
                .jwt
                .iter()
                .map(|i| i.leeway)
                .max()
                .unwrap_or_default(),
            sync_interval: settings.revocation.sync_interval,
            share: in_runtime,
        };
        Ok((authn, activation))
    }

    /// Puts a prepared authenticator's process-wide state in force (see [`Self::prepare`]).
    pub fn activate(&self, a: Activation) {
        if let Some(new) = a.new_store
            && let Ok(mut slot) = self.store.lock()
        {
            *slot = Some(new);
        }
        if let Some(new) = a.new_signer
            && let Ok(mut slot) = self.signer.lock()
            && let Ok(mut retired) = self.retired.lock()
        {
            let kid = new.2.kid().to_string();
            let old = slot.replace(new);
            let now = unix_now();
            // The key in force is published as such, never also as a retired one.
            retired.retain(|k| k.signer.kid() != kid && k.until() > now);
            if let Some((_, _, old)) = old
                && old.kid() != kid
            {
                retired.push(Retired {
                    signer: old,
                    since: now,
                    ttl: a.token_ttl,
                });
            }
        }
        self.revocations
            .set_configured(&a.token_ids, &a.api_keys, a.leeway);
        self.revocations.set_configured_certs(&a.certificates);
        if a.share {
            self.revocations.share(a.store, a.sync_interval);
        }
        self.current.store(Some(a.authn));
    }

    /// The public key set of gateway-signed internal tokens: the current key, and the one a
    /// reload replaced while tokens it signed may still be alive.
    pub fn public_jwks(&self) -> serde_json::Value {
        let mut signers: Vec<Arc<Signer>> = self
            .signer
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|(_, _, s)| vec![s.clone()]))
            .unwrap_or_default();
        if let Ok(mut retired) = self.retired.lock() {
            let now = unix_now();
            retired.retain(|k| k.until() > now);
            // The most recently replaced first; a kid is listed once.
            for k in retired.iter().rev() {
                if !signers.iter().any(|s| s.kid() == k.signer.kid()) {
                    signers.push(k.signer.clone());
                }
            }
        }
        let keys: Vec<serde_json::Value> = signers.iter().map(|s| s.public_jwk()).collect();
        serde_json::json!({ "keys": keys })
    }

    /// Key status of every issuer, revocations and failure counts (admin API).
    pub fn status(&self) -> serde_json::Value {
        let issuers = self
            .current
            .load_full()
            .map(|a| a.key_status())
            .unwrap_or_default();
        serde_json::json!({
            "issuers": issuers,
            "revocations": self.revocations.status(),
            "failures": self.failures.snapshot(50),
        })
    }

    /// Issuers with network key sources whose keys were never loaded, with why (readiness).
    pub fn keys_pending(&self) -> Vec<String> {
        self.current
            .load_full()
            .map(|a| a.keys_pending())
            .unwrap_or_default()
    }

    /// Why the revocation list in force is not complete yet — shared through `auth.redis` and
    /// never read from it (readiness: a credential revoked through another instance would
    /// pass, so such credentials get 503 meanwhile); `None` once it is.
    pub fn revocations_pending(&self) -> Option<String> {
        self.revocations.pending()
    }

    /// Per issuer: (name, keys loaded, unix time of the last successful fetch or 0, failures).
    pub fn key_metrics(&self) -> Vec<(String, usize, u64, u64)> {
        self.current
            .load_full()
            .map(|a| a.key_metrics())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn settings(algorithm: &str, key: Option<&Signer>) -> AuthSettings {
        let raw: RawAuth = serde_json::from_value(serde_json::json!({
            "internal_token": {"algorithm": algorithm, "ttl": "60s"},
        }))
        .unwrap();
        let mut e = portcullis_core::ConfigErrors::new();
        let mut s = config::compile(&raw, std::path::Path::new("."), &mut e);
        assert!(e.is_empty(), "{e:?}");
        s.internal_token.key_pem = key.map(|k| portcullis_core::Secret::new(k.to_pkcs8_pem()));
        s
    }

    fn kids(state: &AuthnState) -> Vec<String> {
        state.public_jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }

    impl AuthnState {
        /// Each retired key's kid and end of publication.
        fn retired_until(&self) -> Vec<(String, u64)> {
            self.retired
                .lock()
                .unwrap()
                .iter()
                .map(|k| (k.signer.kid().to_string(), k.until()))
                .collect()
        }
    }

    /// A key replaced by a reload stays published as long as the longest-lived token it
    /// signed — here one exchanged for an hour (`token_exchange.ttl` may be up to a day),
    /// far past `internal_token.ttl` — and the grace.
    #[test]
    fn a_replaced_key_stays_published_while_tokens_it_signed_live() {
        let state = AuthnState::new();
        let a = state.build(&settings("EdDSA", None), Vec::new()).unwrap();
        let exp = unix_now() + 3600;
        let mut claims = serde_json::Map::new();
        claims.insert("exp".into(), exp.into());
        a.signer.sign("at+jwt", &claims).unwrap();
        let old = a.signer.kid().to_string();

        let b = state.build(&settings("ES256", None), Vec::new()).unwrap();
        let new = b.signer.kid().to_string();
        assert_ne!(old, new);
        assert_eq!(kids(&state), [new.clone(), old.clone()]);
        let until = state.retired_until();
        assert_eq!(until.len(), 1);
        assert_eq!(until[0].0, old);
        assert!(
            until[0].1 >= exp + RETIRED_GRACE,
            "published until {}, a token lives until {exp}",
            until[0].1
        );

        // A key that signed nothing longer is kept for the internal ttl and the grace.
        let c = state.build(&settings("EdDSA", None), Vec::new()).unwrap();
        let until = state.retired_until();
        let b_until = until.iter().find(|(k, _)| *k == new).unwrap().1;
        let now = unix_now();
        assert!((now + 60 + RETIRED_GRACE..=now + 61 + RETIRED_GRACE).contains(&b_until));
        assert_eq!(kids(&state), [c.signer.kid().to_string(), new, old]);
    }

    /// The kid is the key's RFC 7638 thumbprint: the same key file gives the same kid in any
    /// process; a reload that keeps the key (the file rewritten) keeps its signer, and a key
    /// that comes back while still published as retired is listed once.
    #[test]
    fn the_same_key_has_the_same_kid_and_is_listed_once() {
        let k1 = Signer::generate(Alg::EdDSA, "ignored".into()).unwrap();
        let k2 = Signer::generate(Alg::EdDSA, "ignored".into()).unwrap();
        let (t1, t2) = (k1.thumbprint(), k2.thumbprint());

        let one = AuthnState::new();
        let other = AuthnState::new();
        let a = one
            .build(&settings("EdDSA", Some(&k1)), Vec::new())
            .unwrap();
        let b = other
            .build(&settings("EdDSA", Some(&k1)), Vec::new())
            .unwrap();
        assert_eq!(a.signer.kid(), t1);
        assert_eq!(b.signer.kid(), t1);
        assert_eq!(kids(&one), kids(&other));

        // The same key in a file written otherwise (here: a comment before the block).
        let mut rewritten = settings("EdDSA", None);
        rewritten.internal_token.key_pem = Some(portcullis_core::Secret::new(format!(
            "# rotated never\n{}",
            k1.to_pkcs8_pem()
        )));
        let again = one.build(&rewritten, Vec::new()).unwrap();
        assert!(Arc::ptr_eq(&again.signer, &a.signer));
        assert_eq!(kids(&one), [t1.as_str()]);

        // k1 → k2 → k1: k1 is in force again, not also retired.
        let mut claims = serde_json::Map::new();
        claims.insert("exp".into(), (unix_now() + 7200).into());
        a.signer.sign("JWT", &claims).unwrap();
        one.build(&settings("EdDSA", Some(&k2)), Vec::new())
            .unwrap();
        assert_eq!(kids(&one), [t2.clone(), t1.clone()]);
        let back = one
            .build(&settings("EdDSA", Some(&k1)), Vec::new())
            .unwrap();
        assert_eq!(kids(&one), [t1.clone(), t2.clone()]);
        // … with what it signed before, should it be replaced once more.
        assert!(Arc::ptr_eq(&back.signer, &a.signer));
        one.build(&settings("EdDSA", Some(&k2)), Vec::new())
            .unwrap();
        assert_eq!(kids(&one), [t2.clone(), t1.clone()]);
        let t1_until = one
            .retired_until()
            .into_iter()
            .find(|(k, _)| *k == t1)
            .unwrap()
            .1;
        assert!(t1_until >= unix_now() + 7200 + RETIRED_GRACE);
    }
}
