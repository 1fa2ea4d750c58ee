//! The authentication step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_core::{
    AuthMethod, GatewayRequest, Principal, RejectReason, Rejection, RequestCtx, Stage, StageId,
    Step, Verdict,
};
use portcullis_jose::{ClaimRules, JwtError, Signer};

use crate::apikey::{self, KeyTable};
use crate::cache::{Cached, Digest, TokenCache, Verifier, digest};
use crate::config::{AuthSettings, KeySource, Method, MtlsRule, RouteAuth};
use crate::failures::FailureTracker;
use crate::introspect::Introspector;
use crate::jwks::{KeyStatus, RemoteKeys};
use crate::principal::from_claims;
use crate::revocation::Revocations;
use crate::{Fail, unix_now};
use portcullis_store::Store;

/// The authenticator of one configuration snapshot.
pub struct Authn {
    pub settings: AuthSettings,
    pub routes: Vec<RouteAuth>,
    rules: Vec<ClaimRules>,
    remotes: Vec<Option<Arc<RemoteKeys>>>,
    introspectors: Vec<Introspector>,
    keys: Option<KeyTable>,
    store: Option<Arc<Store>>,
    pub revocations: Arc<Revocations>,
    pub signer: Arc<Signer>,
    failures: Arc<FailureTracker>,
    cache: TokenCache,
}

/// Credentials found on a request.
#[derive(Default)]
struct Creds {
    bearer: Option<String>,
    api_key: Option<String>,
}

enum Attempt {
    Done(Result<Arc<Principal>, Fail>),
    /// The JWT names a key the remote set lacks (or no set is loaded yet).
    NeedKeys(Arc<RemoteKeys>),
}

impl Authn {
    /// Counts a credential found invalid elsewhere than on a route (the token endpoint's
    /// client authentication) against `ip`, as a refused route credential is: the risk signal
    /// and the admin API's top lists see it.
    pub fn record_failure(&self, ip: std::net::IpAddr, identity: Option<&str>) {
        self.failures.record(ip, identity);
    }

    pub(crate) fn new(
        settings: AuthSettings,
        routes: Vec<RouteAuth>,
        remotes: Vec<Option<Arc<RemoteKeys>>>,
        store: Option<Arc<Store>>,
        revocations: Arc<Revocations>,
        signer: Arc<Signer>,
        failures: Arc<FailureTracker>,
    ) -> Result<Authn, String> {
        let rules = settings
            .jwt
            .iter()
            .map(|i| ClaimRules {
                issuer: i.issuer.clone(),
                audiences: i.audiences.clone(),
                leeway_secs: i.leeway.as_secs(),
                typ: i.typ.clone(),
                required: i.required_claims.clone(),
                require_exp: true,
                max_lifetime_secs: i.max_lifetime.map(|d| d.as_secs()),
            })
            .collect();
        let introspectors = settings
            .introspection
            .iter()
            .map(|c| {
                Introspector::new(c.clone())
                    .map_err(|e| format!("auth.introspection.{}: {e}", c.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = settings.api_keys.as_ref().map(KeyTable::new);
        let cache = TokenCache::new(settings.cache_entries);
        Ok(Authn {
            settings,
            routes,
            rules,
            remotes,
            introspectors,
            keys,
            store,
            revocations,
            signer,
            failures,
            cache,
        })
    }

    pub fn key_status(&self) -> Vec<serde_json::Value> {
        self.settings
            .jwt
            .iter()
            .zip(&self.remotes)
            .map(|(i, r)| {
                let status = match (r, &i.source) {
                    (Some(r), _) => r.status(),
                    (None, KeySource::Static(set)) => KeyStatus {
                        source: "static".into(),
                        kids: set.kids(),
                        ..KeyStatus::default()
                    },
                    (None, _) => KeyStatus::default(),
                };
                let loaded = match (r, &i.source) {
                    (Some(r), _) => r.current().map(|s| s.keys.len()).unwrap_or(0),
                    (None, KeySource::Static(s)) => s.keys.len(),
                    _ => 0,
                };
                serde_json::json!({
                    "name": &*i.name,
                    "issuer": i.issuer,
                    "keys_loaded": loaded,
                    "status": status,
                })
            })
            .collect()
    }

    pub fn key_metrics(&self) -> Vec<(String, usize, u64, u64)> {
        self.settings
            .jwt
            .iter()
            .zip(&self.remotes)
            .map(|(i, r)| match (r, &i.source) {
                (Some(r), _) => {
                    let s = r.status();
                    (
                        i.name.to_string(),
                        r.current().map(|k| k.keys.len()).unwrap_or(0),
                        s.last_success.unwrap_or(0),
                        s.failures,
                    )
                }
                (None, KeySource::Static(set)) => (i.name.to_string(), set.keys.len(), 0, 0),
                _ => (i.name.to_string(), 0, 0, 0),
            })
            .collect()
    }

    /// Issuers whose keys come from the network and have never been loaded, each with why
    /// (readiness: tokens of theirs cannot be verified yet). A set loaded once keeps serving
    /// while its source is down, so such an issuer is not listed again.
    pub fn keys_pending(&self) -> Vec<String> {
        self.settings
            .jwt
            .iter()
            .zip(&self.remotes)
            .filter_map(|(i, r)| {
                let r = r.as_ref()?;
                if r.current().is_some() {
                    return None;
                }
                let why = r
                    .status()
                    .last_error
                    .unwrap_or_else(|| "first fetch not done yet".into());
                Some(format!("auth.jwt.{}: no keys loaded yet ({why})", i.name))
            })
            .collect()
    }

    fn route(&self, ctx: &RequestCtx) -> Option<&RouteAuth> {
        ctx.route_id().and_then(|r| self.routes.get(r.0))
    }

    /// Reads the credentials; an ambiguous request is refused outright.
    fn credentials(
        &self,
        head: &http::request::Parts,
        route: &RouteAuth,
    ) -> Result<Creds, Rejection> {
        let mut creds = Creds::default();
        let wants_bearer = route
            .methods
            .iter()
            .any(|m| matches!(m, Method::Jwt(_) | Method::Introspection(_)));
        if wants_bearer {
            let mut values = head.headers.get_all(http::header::AUTHORIZATION).iter();
            if let Some(v) = values.next() {
                if values.next().is_some() {
                    return Err(invalid_request("more than one Authorization header"));
                }
                creds.bearer = bearer(v)?;
            }
        }
        if route.methods.contains(&Method::ApiKey)
            && let Some(cfg) = &self.settings.api_keys
        {
            let mut values = head.headers.get_all(&cfg.header).iter();
            if let Some(v) = values.next() {
                if values.next().is_some() {
                    return Err(invalid_request("more than one API key header"));
                }
                creds.api_key = Some(
                    v.to_str()
                        .map_err(|_| invalid_request("malformed API key"))?
                        .trim()
                        .to_string(),
                );
            }
            if let Some(param) = &route.api_key_query
                && let Some(q) = head.uri.query()
            {
                // Every spelling an upstream framework reads as the same parameter
                // (`api.key`, `API_KEY`, `api_key[]` …): a second one is a second key.
                let wanted = portcullis_core::query::fold_name(param);
                let mut found = None;
                for (k, v) in form_pairs(q) {
                    if portcullis_core::query::fold_name(&k) == wanted {
                        if found.is_some() || creds.api_key.is_some() {
                            return Err(invalid_request("more than one API key"));
                        }
                        found = Some(v);
                    }
                }
                if found.is_some() {
                    creds.api_key = found;
                }
            }
        }
        Ok(creds)
    }

    /// JWT verification without waiting: from the cache, or with keys already loaded.
    fn jwt_now(&self, token: &str, issuers: &[usize], key: &Digest) -> Attempt {
        // A verdict of one of the route's issuers (a token verified under another issuer's
        // rules, or by introspection, is verified here anew).
        // Void once the issuer's remote key set withdrew a key since it was cached: the key
        // it rests on may be gone.
        if let Some(c) = issuers.iter().find_map(|i| {
            self.cache
                .get_since(key, Verifier::Jwt(*i), self.withdrawals(*i))
        }) {
            return Attempt::Done(match c {
                Cached::Valid(p) => Ok(p),
                Cached::Invalid(c) => Err(Fail::Invalid(c)),
            });
        }
        let max = issuers
            .iter()
            .filter_map(|i| self.settings.jwt.get(*i))
            .map(|j| j.max_token_bytes)
            .max()
            .unwrap_or(0);
        let tok = match portcullis_jose::decode(token, max) {
            Ok(t) => t,
            Err(e) => return Attempt::Done(Err(Fail::Invalid(jwt_code(&e)))),
        };
        let iss = tok.claims.get("iss").and_then(|v| v.as_str());
        let Some(idx) = issuers.iter().copied().find(|i| {
            self.settings
                .jwt
                .get(*i)
                .is_some_and(|j| Some(j.issuer.as_str()) == iss)
        }) else {
            return Attempt::Done(Err(Fail::Invalid(if iss.is_none() {
                "missing_claim"
            } else {
                "untrusted_issuer"
            })));
        };
        let (Some(issuer), Some(rules)) = (self.settings.jwt.get(idx), self.rules.get(idx)) else {
            return Attempt::Done(Err(Fail::Invalid("untrusted_issuer")));
        };
        if token.len() > issuer.max_token_bytes {
            return Attempt::Done(Err(Fail::Invalid("too_large")));
        }
        let alg = tok.header.alg;
        if !issuer.algorithms.contains(&alg) {
            return Attempt::Done(Err(Fail::Invalid("alg_not_allowed")));
        }
        let remote = self.remotes.get(idx).cloned().flatten();
        // Read before the set: a set that replaced it after this read is stamped by a later
        // count, so the verdict is void then.
        let stamp = self.withdrawals(idx);
        let set = match (&issuer.source, &remote) {
            (KeySource::Static(s), _) => s.clone(),
            (_, Some(r)) => match r.current() {
                Some(s) => s,
                None => return Attempt::NeedKeys(r.clone()),
            },
            _ => return Attempt::Done(Err(Fail::Unavailable("no_keys"))),
        };
        let kid = if issuer.match_kid {
            tok.header.kid.as_deref()
        } else {
            None
        };
        let mut any = false;
        let mut verified = false;
        for k in set.candidates(kid, alg) {
            any = true;
            if tok.verify(&k.key).is_ok() {
                verified = true;
                break;
            }
        }
        if !any {
            return match remote {
                Some(r) => Attempt::NeedKeys(r),
                None => Attempt::Done(Err(Fail::Invalid("unknown_kid"))),
            };
        }
        if !verified {
            return Attempt::Done(Err(Fail::Invalid("bad_signature")));
        }
        if let Err(e) =
            portcullis_jose::validate_claims(&tok.header, &tok.claims, rules, unix_now())
        {
            return Attempt::Done(Err(Fail::Invalid(jwt_code(&e))));
        }
        let p = Arc::new(from_claims(
            AuthMethod::Jwt,
            issuer.name.clone(),
            &issuer.claims,
            tok.claims,
        ));
        self.cache_valid(key, idx, &p, stamp);
        Attempt::Done(Ok(p))
    }

    /// The withdrawals of the `issuer`-th issuer's remote key set (0 for other key sources:
    /// they change only with the configuration, and so with the cache).
    fn withdrawals(&self, issuer: usize) -> u64 {
        self.remotes
            .get(issuer)
            .and_then(|r| r.as_ref())
            .map_or(0, |r| r.withdrawals())
    }

    fn cache_valid(&self, key: &Digest, issuer: usize, p: &Arc<Principal>, stamp: u64) {
        let mut ttl = self.settings.cache_ttl;
        if let Some(exp) = p.expires_at {
            ttl = ttl.min(Duration::from_secs(exp.saturating_sub(unix_now())));
        }
        self.cache.put_stamped(
            *key,
            Verifier::Jwt(issuer),
            Cached::Valid(p.clone()),
            Instant::now() + ttl,
            stamp,
        );
    }

    async fn jwt(&self, token: &str, issuers: &[usize]) -> Result<Arc<Principal>, Fail> {
        let key = digest(token.as_bytes());
        match self.jwt_now(token, issuers, &key) {
            Attempt::Done(r) => r,
            Attempt::NeedKeys(remote) => {
                remote.refetch_for_unknown_kid().await;
                match self.jwt_now(token, issuers, &key) {
                    Attempt::Done(r) => r,
                    Attempt::NeedKeys(r) if r.current().is_none() => {
                        Err(Fail::Unavailable("no_keys"))
                    }
                    Attempt::NeedKeys(_) => Err(Fail::Invalid("unknown_kid")),
                }
            }
        }
    }

    fn api_key_now(&self, key: &str) -> Option<Result<Arc<Principal>, Fail>> {
        let hash = digest(key.as_bytes());
        if self.revocations.is_key_revoked(&hash) {
            return Some(Err(Fail::Invalid("revoked")));
        }
        if let Some(e) = self.keys.as_ref().and_then(|t| t.find(&hash)) {
            return Some(apikey::check(&e));
        }
        match (&self.settings.api_keys, &self.store) {
            (Some(cfg), Some(_)) if cfg.redis => None,
            _ => Some(Err(Fail::Invalid("api_key_unknown"))),
        }
    }

    async fn api_key(&self, key: &str) -> Result<Arc<Principal>, Fail> {
        if let Some(r) = self.api_key_now(key) {
            return r;
        }
        let (Some(cfg), Some(store)) = (&self.settings.api_keys, &self.store) else {
            return Err(Fail::Invalid("api_key_unknown"));
        };
        apikey::lookup_redis(store, &self.cache, &digest(key.as_bytes()), cfg.cache_ttl).await
    }

    fn mtls(&self, ctx: &RequestCtx, rule: &MtlsRule) -> Option<Result<Arc<Principal>, Fail>> {
        let cert = ctx.tls.as_ref()?.peer_certificate.as_ref()?;
        // Verified at the handshake; the connection, or a session resumed later, may outlive it.
        if !cert.valid_at(portcullis_core::unix_now()) {
            return Some(Err(Fail::Invalid("mtls_certificate_expired")));
        }
        if !rule.trust_domains.is_empty() || !rule.spiffe_paths.is_empty() {
            let Some(id) = &cert.spiffe else {
                return Some(Err(Fail::Invalid("mtls_no_spiffe_id")));
            };
            if !rule.trust_domains.is_empty() && !rule.trust_domains.contains(&id.trust_domain) {
                return Some(Err(Fail::Invalid("mtls_trust_domain")));
            }
            if !rule.spiffe_paths.is_empty()
                && !rule.spiffe_paths.iter().any(|p| path_matches(p, &id.path))
            {
                return Some(Err(Fail::Invalid("mtls_spiffe_path")));
            }
        }
        let mut p = Principal::new(AuthMethod::Mtls, ctx.listener.clone());
        match &cert.spiffe {
            Some(id) => {
                p.subject = Some(id.to_string());
                p.client_id = Some(id.to_string());
            }
            None => {
                p.subject = Some(cert.subject.clone());
                // Any trusted CA can write any common name: one that spells a SPIFFE id
                // would pass, as a client id, for the workload whose id it is — which
                // `spiffe_bundles` keeps other CAs from naming.
                p.client_id = cert.common_name.clone().filter(|cn| !spells_spiffe_id(cn));
            }
        }
        p.credential_id = Some(cert.fingerprint_sha256.clone());
        p.expires_at = Some(cert.not_after);
        Some(Ok(Arc::new(p)))
    }

    /// [`bound_to_sender`] with this authenticator's revocations.
    fn bound_to_sender(&self, p: &Principal, ctx: &RequestCtx) -> Result<(), Fail> {
        bound_to_sender(p, ctx, &self.revocations)
    }

    /// Revocation is checked on every use, cached or not: `Invalid("revoked")` for a revoked
    /// credential. A credential that could be revoked (a token with a `jti`, an API key — its
    /// hash was checked before it was looked up —, a client certificate) while the shared
    /// revocation list has never been read is `Unavailable("revocations_not_loaded")`: it may
    /// be revoked in the store alone, and the other Redis-backed checks fail closed (503).
    fn revocation(&self, p: &Principal) -> Result<(), Fail> {
        let revocable = match p.method {
            AuthMethod::Jwt | AuthMethod::Introspection => match p.credential_id.as_deref() {
                Some(j) if self.revocations.is_jti_revoked(j) => {
                    return Err(Fail::Invalid("revoked"));
                }
                Some(_) => true,
                None => false,
            },
            AuthMethod::ApiKey => true,
            // Never a route's principal (the token endpoint's record of its client).
            AuthMethod::ClientSecret => false,
            AuthMethod::Mtls => match p.credential_id.as_deref() {
                Some(fp) if self.revocations.is_cert_revoked(fp) => {
                    return Err(Fail::Invalid("revoked"));
                }
                Some(_) => true,
                None => false,
            },
        };
        if revocable && !self.revocations.loaded() {
            return Err(Fail::Unavailable("revocations_not_loaded"));
        }
        Ok(())
    }

    /// The whole evaluation, waiting where needed. `known`: a method's verdict the fast path
    /// found already (by index in `route.methods`).
    async fn authenticate(
        &self,
        route: &RouteAuth,
        creds: Creds,
        ctx: &RequestCtx,
        mut known: Option<(usize, Result<Arc<Principal>, Fail>)>,
    ) -> Result<Arc<Principal>, (Fail, bool)> {
        let mut first_fail: Option<Fail> = None;
        let mut unavailable: Option<Fail> = None;
        let mut presented = false;
        for (i, m) in route.methods.iter().enumerate() {
            let r = if known.as_ref().is_some_and(|(j, _)| *j == i) {
                known.take().map(|(_, r)| r)
            } else {
                match m {
                    Method::Jwt(issuers) => match &creds.bearer {
                        Some(t) if looks_like_jwt(t) => Some(self.jwt(t, issuers).await),
                        Some(_)
                            if !route
                                .methods
                                .iter()
                                .any(|m| matches!(m, Method::Introspection(_))) =>
                        {
                            Some(Err(Fail::Invalid("malformed")))
                        }
                        _ => None,
                    },
                    Method::Introspection(ids) => match &creds.bearer {
                        Some(t)
                            if !(looks_like_jwt(t)
                                && route.methods.iter().any(|m| matches!(m, Method::Jwt(_)))) =>
                        {
                            Some(self.introspect(t, ids).await)
                        }
                        _ => None,
                    },
                    Method::ApiKey => match &creds.api_key {
                        Some(k) => Some(self.api_key(k).await),
                        None => None,
                    },
                    Method::Mtls => self.mtls(ctx, &route.mtls),
                }
            };
            let Some(r) = r else { continue };
            presented = true;
            match r
                .and_then(|p| self.revocation(&p).map(|()| p))
                .and_then(|p| self.bound_to_sender(&p, ctx).map(|()| p))
            {
                Ok(p) => return Ok(p),
                Err(f @ Fail::Unavailable(_)) => {
                    unavailable.get_or_insert(f);
                }
                Err(f) => {
                    first_fail.get_or_insert(f);
                }
            }
        }
        match (unavailable, first_fail) {
            (Some(u), _) => Err((u, presented)),
            (None, Some(f)) => Err((f, presented)),
            (None, None) => Err((Fail::Invalid("missing_credentials"), presented)),
        }
    }

    async fn introspect(&self, token: &str, ids: &[usize]) -> Result<Arc<Principal>, Fail> {
        let key = digest(token.as_bytes());
        // As across methods: an endpoint that could not answer wins over one that did not
        // know the token (the token may be the silent one's), so the client is told to retry
        // (503) rather than to drop its token (401).
        let mut invalid: Option<Fail> = None;
        let mut unavailable: Option<Fail> = None;
        for i in ids {
            let Some(x) = self.introspectors.get(*i) else {
                continue;
            };
            if token.len() > x.cfg.max_token_bytes {
                invalid.get_or_insert(Fail::Invalid("too_large"));
                continue;
            }
            match x.verify(token, key, *i, &self.cache).await {
                Ok(p) => return Ok(p),
                Err(f @ Fail::Unavailable(_)) => {
                    unavailable.get_or_insert(f);
                }
                Err(f) => {
                    invalid.get_or_insert(f);
                }
            }
        }
        Err(unavailable
            .or(invalid)
            .unwrap_or(Fail::Invalid("token_inactive")))
    }

    /// Verifies a token presented outside the `Authorization` header (e.g. the subject token
    /// of a token exchange) exactly as the authentication step would — cache, signature,
    /// claims, introspection, revocation — restricted to the given issuers (indexes into
    /// [`AuthSettings::jwt`]) and introspection endpoints (into
    /// [`AuthSettings::introspection`]). A token with two dots is a JWT when issuers are
    /// given; anything else is introspected. Waits for keys (one refetch) when needed.
    pub async fn verify_token(
        &self,
        token: &str,
        jwt_issuers: &[usize],
        introspection: &[usize],
    ) -> Result<Arc<Principal>, Fail> {
        let r = if looks_like_jwt(token) && !jwt_issuers.is_empty() {
            self.jwt(token, jwt_issuers).await
        } else if !introspection.is_empty() {
            self.introspect(token, introspection).await
        } else {
            Err(Fail::Invalid("malformed"))
        };
        r.and_then(|p| self.revocation(&p).map(|()| p))
    }

    /// Fast path: the first presented credential settles it without waiting when it passes.
    /// Otherwise [`Fast::Wait`] carries what it was found to be (its method's index and
    /// verdict), so that the whole evaluation does not check it a second time — a refused
    /// token would cost its signature checks twice.
    fn now(&self, route: &RouteAuth, creds: &Creds, ctx: &RequestCtx) -> Fast {
        for (i, m) in route.methods.iter().enumerate() {
            let r = match m {
                Method::Jwt(issuers) => match &creds.bearer {
                    Some(t) if looks_like_jwt(t) => {
                        match self.jwt_now(t, issuers, &digest(t.as_bytes())) {
                            Attempt::Done(r) => r,
                            Attempt::NeedKeys(_) => return Fast::Wait(None),
                        }
                    }
                    _ => continue,
                },
                Method::ApiKey => match &creds.api_key {
                    Some(k) => match self.api_key_now(k) {
                        Some(r) => r,
                        None => return Fast::Wait(None),
                    },
                    None => continue,
                },
                Method::Mtls => match self.mtls(ctx, &route.mtls) {
                    Some(r) => r,
                    None => continue,
                },
                Method::Introspection(_) => return Fast::Wait(None),
            };
            return match r
                .and_then(|p| self.revocation(&p).map(|()| p))
                .and_then(|p| self.bound_to_sender(&p, ctx).map(|()| p))
            {
                Ok(p) => Fast::Pass(p),
                r => Fast::Wait(Some((i, r))),
            };
        }
        Fast::Wait(None)
    }

    fn refuse(
        &self,
        fail: Fail,
        presented: bool,
        claimed: Option<String>,
        route: &RouteAuth,
        ctx: &mut RequestCtx,
    ) -> Rejection {
        ctx.auth_failure = Some(fail.code());
        // Only credentials found invalid count against a client (the risk signal, the admin
        // API's top lists): an IdP that cannot answer is no fault of the client's. A token
        // not sent for introspection because every call slot was taken is counted, though:
        // that 503 is the gateway's own, and such tokens are a flood's — a client sending
        // made-up tokens to a slow endpoint must go on being counted.
        let counted = match fail {
            Fail::Invalid(_) => true,
            Fail::Unavailable(code) => code == crate::introspect::SATURATED,
        };
        if presented && counted {
            self.failures.record(ctx.client_ip, claimed.as_deref());
        }
        let bearer = route
            .methods
            .iter()
            .any(|m| matches!(m, Method::Jwt(_) | Method::Introspection(_)));
        match fail {
            Fail::Unavailable(_) => Rejection::new(
                RejectReason::AuthUnavailable,
                "credentials cannot be verified right now; try again later",
            )
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("5")),
            Fail::Invalid(_) => {
                let challenge = match (bearer, presented) {
                    (true, true) => HeaderValue::from_static(
                        "Bearer realm=\"portcullis\", error=\"invalid_token\", \
                         error_description=\"the access token is not valid\"",
                    ),
                    _ => HeaderValue::from_static("Bearer realm=\"portcullis\""),
                };
                let detail = if presented {
                    "the credentials are not valid"
                } else {
                    "credentials are required"
                };
                Rejection::new(RejectReason::Unauthenticated, detail)
                    .with_header(http::header::WWW_AUTHENTICATE, challenge)
            }
        }
    }
}

fn invalid_request(detail: &'static str) -> Rejection {
    Rejection::new(RejectReason::BadRequest, detail).with_header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"portcullis\", error=\"invalid_request\""),
    )
}

/// `Bearer <token68>`; another scheme is "no bearer credential".
fn bearer(v: &HeaderValue) -> Result<Option<String>, Rejection> {
    let s = v
        .to_str()
        .map_err(|_| invalid_request("malformed Authorization header"))?;
    let (scheme, rest) = match s.split_once(' ') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_matches(' ');
    let ok = !token.is_empty()
        && token.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        });
    if !ok {
        return Err(invalid_request("malformed bearer token"));
    }
    Ok(Some(token.to_string()))
}

/// Who a refused credential claimed to be (for failure counting only; never trusted):
/// an API key's id, or the `sub` of an unverified JWT.
fn claimed_identity(creds: &Creds) -> Option<String> {
    use base64::Engine;
    if let Some(k) = &creds.api_key {
        return Some(format!("api_key:{}", apikey::key_id(&digest(k.as_bytes()))));
    }
    let t = creds.bearer.as_deref().filter(|t| looks_like_jwt(t))?;
    let payload = t.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let sub: String = v.get("sub")?.as_str()?.chars().take(128).collect();
    Some(format!("sub:{sub}"))
}

fn looks_like_jwt(t: &str) -> bool {
    t.bytes().filter(|b| *b == b'.').count() == 2
}

/// `application/x-www-form-urlencoded` pairs, decoded.
pub fn form_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (dec(k), dec(v))
    })
}

/// `*` matches one segment, `**` (last) the rest. The trust domain's own ID (no path) matches
/// no pattern: it names no workload.
fn path_matches(pattern: &[String], path: &str) -> bool {
    if path.is_empty() {
        return false;
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut i = 0;
    for (n, p) in pattern.iter().enumerate() {
        if p == "**" && n + 1 == pattern.len() {
            return i < segs.len();
        }
        match segs.get(i) {
            Some(s) if p == "*" || p == s => i += 1,
            _ => return false,
        }
    }
    i == segs.len()
}

/// What the fast path found ([`Authn::now`]).
enum Fast {
    /// The first presented credential passed.
    Pass(Arc<Principal>),
    /// The whole evaluation must run; with the verdict already found for one method.
    Wait(Option<(usize, Result<Arc<Principal>, Fail>)>),
}

fn jwt_code(e: &JwtError) -> &'static str {
    e.code()
}

/// The pipeline step.
pub struct AuthnStage {
    authn: Arc<Authn>,
    forged: crate::identity::ForgedIdentity,
}

impl AuthnStage {
    pub const ID: StageId = StageId("authn");

    /// `late`: per route (in route order), the identity-named headers its later steps read as
    /// the request's input, which this step leaves for the identity step to remove (see
    /// `ForgedIdentity`).
    pub fn new(authn: Arc<Authn>, late: Arc<[Vec<HeaderName>]>) -> AuthnStage {
        let forged = crate::identity::ForgedIdentity::new(&authn, late);
        AuthnStage { authn, forged }
    }
}

impl Stage for AuthnStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        let a = &*self.authn;
        // On every route, before anything reads the request's headers.
        self.forged.remove(a, &mut req.head.headers, ctx);
        let Some(route) = a.route(ctx) else {
            return Step::CONTINUE;
        };
        if route.methods.is_empty() {
            return Step::CONTINUE;
        }
        let creds = match a.credentials(&req.head, route) {
            Ok(c) => c,
            Err(r) => {
                ctx.auth_failure = Some("invalid_request");
                return Step::reject(r);
            }
        };
        let known = match a.now(route, &creds, ctx) {
            Fast::Pass(p) => {
                ctx.principal = Some(p);
                return Step::CONTINUE;
            }
            Fast::Wait(known) => known,
        };
        Step::from_future(async move {
            let claimed = claimed_identity(&creds);
            match a.authenticate(route, creds, ctx, known).await {
                Ok(p) => {
                    ctx.principal = Some(p);
                    Verdict::Continue
                }
                Err((fail, presented)) => {
                    Verdict::Reject(a.refuse(fail, presented, claimed, route, ctx))
                }
            }
        })
    }
}

/// For tests of header handling without a request.
pub fn bearer_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| bearer(v).ok().flatten())
}

/// A sender-constrained token (its `cnf` claim, RFC 7800) is good only from its holder: one
/// bound to a client certificate (`x5t#S256`, RFC 8705) only on a connection that presented
/// that certificate (`certificate_binding`), while the certificate is valid and not revoked
/// (as the `mtls` method holds it); one bound otherwise — a DPoP key (`jkt`, RFC 9449, whose
/// proofs the gateway does not check), a raw key (`jwk`, `kid`) — is refused
/// (`unsupported_binding`): taken as a bearer token, a stolen copy would pass. A `cnf` that is
/// not an object of such members is `cnf_malformed`.
fn bound_to_sender(p: &Principal, ctx: &RequestCtx, revocations: &Revocations) -> Result<(), Fail> {
    use base64::Engine;
    if !matches!(p.method, AuthMethod::Jwt | AuthMethod::Introspection) {
        return Ok(());
    }
    let Some(cnf) = p.claims.get("cnf") else {
        return Ok(());
    };
    let Some(cnf) = cnf.as_object().filter(|c| !c.is_empty()) else {
        return Err(Fail::Invalid("cnf_malformed"));
    };
    for (member, value) in cnf {
        if member != "x5t#S256" {
            return Err(Fail::Invalid("unsupported_binding"));
        }
        let want = value
            .as_str()
            .and_then(|v| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v.trim_end_matches('='))
                    .ok()
            })
            .filter(|d| d.len() == 32)
            .ok_or(Fail::Invalid("cnf_malformed"))?;
        let want: String = want.iter().map(|b| format!("{b:02x}")).collect();
        let Some(cert) = ctx.tls.as_ref().and_then(|t| t.peer_certificate.as_ref()) else {
            return Err(Fail::Invalid("certificate_binding"));
        };
        let have = cert.fingerprint_sha256.to_ascii_lowercase();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            have.as_bytes(),
            want.as_bytes(),
        )) {
            return Err(Fail::Invalid("certificate_binding"));
        }
        // The certificate the token is bound to, held as the `mtls` method holds it.
        if !cert.valid_at(portcullis_core::unix_now()) {
            return Err(Fail::Invalid("mtls_certificate_expired"));
        }
        if revocations.is_cert_revoked(&cert.fingerprint_sha256) {
            return Err(Fail::Invalid("revoked"));
        }
        if !revocations.loaded() {
            return Err(Fail::Unavailable("revocations_not_loaded"));
        }
    }
    Ok(())
}

/// Whether a certificate's common name reads as a SPIFFE id (`spiffe:` in any case, after
/// any leading whitespace).
fn spells_spiffe_id(cn: &str) -> bool {
    cn.trim_start()
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("spiffe:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_path_patterns() {
        let p = |s: &str| -> Vec<String> { s[1..].split('/').map(String::from).collect() };
        assert!(path_matches(&p("/ns/*/sa/api"), "/ns/prod/sa/api"));
        assert!(!path_matches(&p("/ns/*/sa/api"), "/ns/prod/sa/web"));
        assert!(!path_matches(&p("/ns/*/sa/api"), "/ns/prod/sa/api/x"));
        assert!(path_matches(&p("/ns/prod/**"), "/ns/prod/sa/api"));
        assert!(!path_matches(&p("/ns/prod/**"), "/ns/prod"));
        assert!(!path_matches(&p("/ns/prod/**"), "/ns/dev/sa"));
        // The trust domain itself (`spiffe://td`) is no workload.
        for any in ["/*", "/**"] {
            assert!(path_matches(&p(any), "/a"), "{any}");
            assert!(!path_matches(&p(any), ""), "{any}");
        }
    }

    #[test]
    fn bearer_parsing() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            bearer(&h("Bearer abc.def-_")).unwrap().as_deref(),
            Some("abc.def-_")
        );
        assert_eq!(bearer(&h("bearer  abc")).unwrap().as_deref(), Some("abc"));
        assert_eq!(bearer(&h("Basic dXNlcjpwdw==")).unwrap(), None);
        assert!(bearer(&h("Bearer")).is_err());
        assert!(bearer(&h("Bearer a b")).is_err());
        assert!(bearer(&h("Bearer a,b")).is_err());
    }
}
