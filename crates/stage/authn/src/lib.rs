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
//! cached or not; client-supplied identity headers are removed on every route.
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

/// How much longer than `internal_token.ttl` a replaced internal-token key stays published.
const RETIRED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// `internal_token.ttl`: how long a replaced key stays published.
    token_ttl: std::time::Duration,
    token_ids: Vec<String>,
    api_keys: Vec<[u8; 32]>,
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
    /// The key a reload replaced, and until when `/jwks` still publishes it: tokens it signed
    /// (up to `internal_token.ttl` before the reload, and by requests still running under the
    /// old configuration) must stay verifiable while they live.
    retired: Mutex<Vec<(Arc<Signer>, std::time::Instant)>>,
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
                _ => {
                    // Unique even for two keys made within a second (both may be published).
                    let mut salt = [0u8; 4];
                    let _ =
                        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt);
                    let kid = format!("portcullis-{}-{}", unix_now(), revocation::hex(&salt));
                    let s = match &it.key_pem {
                        Some(pem) => Signer::from_pkcs8_pem(pem.expose(), kid),
                        None => Signer::generate(it.algorithm, kid),
                    }
                    .map(Arc::new)
                    .map_err(|e| format!("auth.internal_token: {e}"))?;
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
            && let Some((_, _, old)) = slot.replace(new)
            && let Ok(mut retired) = self.retired.lock()
        {
            // Long enough for a token signed just now, and for a request that started under
            // the old configuration to end (its upstream's read of `/jwks` included).
            let now = std::time::Instant::now();
            retired.retain(|(_, until)| *until > now);
            retired.push((old, now + a.token_ttl + RETIRED_GRACE));
        }
        self.revocations
            .set_configured(&a.token_ids, &a.api_keys, a.leeway);
        if a.share {
            self.revocations.share(a.store, a.sync_interval);
        }
        self.current.store(Some(a.authn));
    }

    /// The public key set of gateway-signed internal tokens: the current key, and the one a
    /// reload replaced while tokens it signed may still be alive.
    pub fn public_jwks(&self) -> serde_json::Value {
        let mut keys: Vec<serde_json::Value> = self
            .signer
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|(_, _, s)| vec![s.public_jwk()]))
            .unwrap_or_default();
        if let Ok(mut retired) = self.retired.lock() {
            let now = std::time::Instant::now();
            retired.retain(|(_, until)| *until > now);
            // The most recently replaced first.
            keys.extend(retired.iter().rev().map(|(old, _)| old.public_jwk()));
        }
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

    /// Per issuer: (name, keys loaded, unix time of the last successful fetch or 0, failures).
    pub fn key_metrics(&self) -> Vec<(String, usize, u64, u64)> {
        self.current
            .load_full()
            .map(|a| a.key_metrics())
            .unwrap_or_default()
    }
}
