//! OAuth 2.0 token introspection (RFC 7662) for opaque tokens: the gateway authenticates to
//! the endpoint with its client credentials; active answers are cached until their `exp`
//! (bounded), inactive ones briefly; concurrent requests with one token share one call; an
//! endpoint that cannot answer, with nothing cached, fails closed (503).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use portcullis_core::{AuthMethod, Principal};
use tokio::sync::OnceCell;

use crate::cache::{Cached, Digest, TokenCache, Verifier};
use crate::config::Introspection;
use crate::fetch::Fetcher;
use crate::principal::from_claims;
use crate::{Fail, unix_now};

type Flight = Arc<OnceCell<Result<Arc<Principal>, Fail>>>;

/// The failure code of a token not sent because `max_in_flight` calls are under way. A 503
/// like the endpoint's own failures, but counted against the client like an invalid
/// credential: tokens that find every slot taken are, overwhelmingly, a flood's.
pub const SATURATED: &str = "introspection_saturated";

pub struct Introspector {
    pub cfg: Introspection,
    fetcher: Fetcher,
    inflight: Mutex<HashMap<Digest, Flight>>,
    /// One permit per call under way (`max_in_flight`).
    slots: tokio::sync::Semaphore,
}

/// `application/x-www-form-urlencoded` value encoding: everything but unreserved characters.
const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn form(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, FORM).to_string()
}

impl Introspector {
    pub fn new(cfg: Introspection) -> Result<Introspector, String> {
        Ok(Introspector {
            fetcher: Fetcher::new(cfg.ca_pem.as_deref())?,
            slots: tokio::sync::Semaphore::new(
                cfg.max_in_flight
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            ),
            cfg,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies `token` (whose digest is `key`) with this endpoint, the `index`-th of
    /// `auth.introspection`, through `cache` (where only this endpoint's verdicts count).
    pub async fn verify(
        &self,
        token: &str,
        key: Digest,
        index: usize,
        cache: &TokenCache,
    ) -> Result<Arc<Principal>, Fail> {
        let by = Verifier::Introspection(index);
        if let Some(c) = cache.get(&key, by) {
            return match c {
                Cached::Valid(p) => Ok(p),
                Cached::Invalid(code) => Err(Fail::Invalid(code)),
            };
        }
        let flight = {
            let Ok(mut map) = self.inflight.lock() else {
                return Err(Fail::Unavailable("introspection_internal"));
            };
            map.entry(key).or_default().clone()
        };
        // The flight leaves the map when this call ends, however it ends: a request dropped
        // while the endpoint is asked (a client that resets its stream) must not leave it
        // there for good.
        let _landing = portcullis_core::flight::Landing {
            map: &self.inflight,
            key: &key,
            flight: &flight,
        };
        flight
            .get_or_init(|| async {
                // Never waited for: a request past the bound is answered at once, and the
                // endpoint is not asked (a flood of made-up tokens, each a fresh call, cannot
                // pile up on a slow endpoint nor hold requests for its timeout).
                let Ok(_slot) = self.slots.try_acquire() else {
                    tracing::debug!(endpoint = %self.cfg.name, "introspection calls at max_in_flight; token not sent");
                    return Err(Fail::Unavailable(SATURATED));
                };
                let r = self.call(token).await;
                let now = Instant::now();
                match &r {
                    Ok(p) => {
                        let mut ttl = self.cfg.cache_active_max;
                        if let Some(exp) = p.expires_at {
                            ttl = ttl.min(Duration::from_secs(exp.saturating_sub(unix_now())));
                        }
                        cache.put(key, by, Cached::Valid(p.clone()), now + ttl);
                    }
                    Err(Fail::Invalid(code)) => {
                        cache.put(
                            key,
                            by,
                            Cached::Invalid(code),
                            now + self.cfg.cache_inactive,
                        );
                    }
                    Err(_) => {}
                }
                r
            })
            .await
            .clone()
    }

    async fn call(&self, token: &str) -> Result<Arc<Principal>, Fail> {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form(&self.cfg.client_id),
            form(self.cfg.client_secret.expose())
        ));
        let body = format!("token={}&token_type_hint=access_token", form(token));
        let req = Request::post(self.cfg.endpoint.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| Fail::Unavailable("introspection_request"))?;
        let r = self
            .fetcher
            .send(req, self.cfg.timeout)
            .await
            .map_err(|e| {
                tracing::warn!(endpoint = %self.cfg.name, error = %e, "introspection failed");
                Fail::Unavailable("introspection_unavailable")
            })?;
        if !r.status.is_success() {
            tracing::warn!(endpoint = %self.cfg.name, status = %r.status, "introspection refused the gateway");
            return Err(Fail::Unavailable("introspection_unavailable"));
        }
        let doc: serde_json::Value = serde_json::from_slice(&r.body).map_err(|_| {
            tracing::warn!(endpoint = %self.cfg.name, "introspection answer is not JSON");
            Fail::Unavailable("introspection_bad_answer")
        })?;
        let Some(claims) = doc.as_object() else {
            return Err(Fail::Unavailable("introspection_bad_answer"));
        };
        self.check_answer(claims, unix_now())?;
        Ok(Arc::new(from_claims(
            AuthMethod::Introspection,
            self.cfg.name.clone(),
            &self.cfg.claims,
            claims.clone(),
        )))
    }
    /// What an answer must say for its token to pass: `active: true`; not expired, not yet to
    /// come (`nbf`, with [`NBF_SKEW`] for the two clocks); the configured issuer and audience;
    /// and, where the server says what kind of token it is, an access token — RFC 7662 servers
    /// introspect refresh tokens too, and a refresh token is no credential for an API.
    fn check_answer(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: u64,
    ) -> Result<(), Fail> {
        if claims.get("active") != Some(&serde_json::Value::Bool(true)) {
            return Err(Fail::Invalid("token_inactive"));
        }
        match claims.get("exp") {
            None => {}
            Some(v) => match v.as_f64() {
                Some(exp) if exp > now as f64 => {}
                Some(_) => return Err(Fail::Invalid("expired")),
                None => return Err(Fail::Invalid("claim_type")),
            },
        }
        match claims.get("nbf") {
            None => {}
            Some(v) => match v.as_f64() {
                Some(nbf) if nbf <= now.saturating_add(NBF_SKEW) as f64 => {}
                Some(_) => return Err(Fail::Invalid("not_yet_valid")),
                None => return Err(Fail::Invalid("claim_type")),
            },
        }
        if !is_access_token(claims) {
            return Err(Fail::Invalid("not_an_access_token"));
        }
        if let Some(iss) = &self.cfg.issuer
            && claims.get("iss").and_then(|v| v.as_str()) != Some(iss.as_str())
        {
            return Err(Fail::Invalid("wrong_issuer"));
        }
        if !self.cfg.audiences.is_empty() {
            let ok = match claims.get("aud") {
                Some(serde_json::Value::String(a)) => self.cfg.audiences.contains(a),
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .filter_map(|v| v.as_str())
                    .any(|a| self.cfg.audiences.iter().any(|x| x == a)),
                _ => false,
            };
            if !ok {
                return Err(Fail::Invalid("wrong_audience"));
            }
        }
        Ok(())
    }
}

/// Seconds an answer's `nbf` may lie ahead of this clock (the server's clock may run ahead).
const NBF_SKEW: u64 = 30;

/// False when the answer says the token is a refresh token (or another kind that is not an
/// access token), in the fields servers use for it: `token_use` (Ory Hydra, Amazon Cognito:
/// `access_token` / `access` for access tokens), `typ` (Keycloak: `Refresh`, `Offline`, and
/// `ID` or `Logout` for ID and logout tokens), and `token_type` when it names one of those.
/// An answer that says nothing of it passes.
fn is_access_token(claims: &serde_json::Map<String, serde_json::Value>) -> bool {
    let field = |name: &str| claims.get(name).and_then(|v| v.as_str());
    if let Some(u) = field("token_use")
        && !(u.eq_ignore_ascii_case("access_token") || u.eq_ignore_ascii_case("access"))
    {
        return false;
    }
    let refresh = |t: &str| {
        [
            "refresh",
            "refresh_token",
            "offline",
            "id",
            "id_token",
            "logout",
            "logout_token",
        ]
        .iter()
        .any(|r| t.eq_ignore_ascii_case(r))
    };
    !(field("typ").is_some_and(refresh) || field("token_type").is_some_and(refresh))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::digest;

    fn introspector(endpoint: &str) -> Introspector {
        Introspector::new(Introspection {
            name: Arc::from("as"),
            endpoint: endpoint.parse().unwrap(),
            client_id: "gw".into(),
            client_secret: portcullis_core::Secret::new("s".into()),
            issuer: None,
            audiences: Vec::new(),
            timeout: Duration::from_secs(30),
            cache_active_max: Duration::from_secs(60),
            cache_inactive: Duration::from_secs(60),
            max_token_bytes: 4096,
            max_in_flight: 64,
            claims: crate::config::claim_names(&Default::default()),
            ca_pem: None,
        })
        .unwrap()
    }

    /// Only an active access token, within its times, passes: refresh tokens (as each kind
    /// of server marks them) and tokens whose `nbf` is ahead are refused.
    #[test]
    fn answers_for_refresh_tokens_and_future_tokens_are_refused() {
        let x = introspector("http://127.0.0.1:1/introspect");
        let now = 1_000_000u64;
        let check = |v: serde_json::Value| x.check_answer(v.as_object().unwrap(), now);
        let ok = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"active": true, "sub": "u", "exp": now + 60});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            check(v)
        };
        assert_eq!(ok(serde_json::json!({})), Ok(()));
        for fine in [
            serde_json::json!({"token_use": "access_token"}),
            serde_json::json!({"token_use": "access"}),
            serde_json::json!({"token_type": "Bearer"}),
            serde_json::json!({"typ": "Bearer"}),
            serde_json::json!({"nbf": now - 10}),
            serde_json::json!({"nbf": now + NBF_SKEW}),
        ] {
            assert_eq!(ok(fine.clone()), Ok(()), "{fine}");
        }
        for (bad, code) in [
            (
                serde_json::json!({"token_use": "refresh_token"}),
                "not_an_access_token",
            ),
            (
                serde_json::json!({"token_use": "id"}),
                "not_an_access_token",
            ),
            (serde_json::json!({"typ": "Refresh"}), "not_an_access_token"),
            (serde_json::json!({"typ": "Offline"}), "not_an_access_token"),
            // Keycloak's ID and logout tokens: not credentials for an API either.
            (serde_json::json!({"typ": "ID"}), "not_an_access_token"),
            (serde_json::json!({"typ": "Logout"}), "not_an_access_token"),
            (
                serde_json::json!({"token_type": "id_token"}),
                "not_an_access_token",
            ),
            (
                serde_json::json!({"token_type": "refresh_token"}),
                "not_an_access_token",
            ),
            (
                serde_json::json!({"nbf": now + NBF_SKEW + 1}),
                "not_yet_valid",
            ),
            (serde_json::json!({"nbf": "soon"}), "claim_type"),
            (serde_json::json!({"exp": now}), "expired"),
        ] {
            assert_eq!(ok(bad.clone()), Err(Fail::Invalid(code)), "{bad}");
        }
        assert_eq!(
            check(serde_json::json!({"active": "true"})),
            Err(Fail::Invalid("token_inactive"))
        );
    }

    /// A call whose request is dropped while the endpoint is asked (a client that resets its
    /// stream) leaves nothing in the in-flight map; a call that ends leaves nothing either.
    #[tokio::test]
    async fn an_abandoned_call_leaves_no_flight_behind() {
        // An endpoint that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                conns.push(s);
            }
        });
        let x = Arc::new(introspector(&format!("http://{addr}/introspect")));
        let cache = Arc::new(TokenCache::new(64));
        for i in 0..20u32 {
            let token = format!("token-{i}");
            let (x2, cache2) = (x.clone(), cache.clone());
            let call = tokio::spawn(async move {
                x2.verify(&token, digest(token.as_bytes()), 0, &cache2)
                    .await
            });
            // Until the call is waiting on the endpoint, then drop it.
            for _ in 0..200 {
                if x.inflight.lock().unwrap().len() == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(x.inflight.lock().unwrap().len(), 1, "call {i} in flight");
            call.abort();
            let _ = call.await;
            assert_eq!(x.inflight.lock().unwrap().len(), 0, "call {i} left behind");
        }
        held.abort();
        // An endpoint that refuses: the call ends (unavailable) and leaves nothing.
        let gone = introspector(&format!("http://{addr}/introspect"));
        let r = gone.verify("t", digest(b"t"), 0, &cache).await;
        assert!(matches!(r, Err(Fail::Unavailable(_))), "{r:?}");
        assert_eq!(gone.inflight.lock().unwrap().len(), 0);
        assert!(
            cache.is_empty(),
            "nothing cached from an unavailable endpoint"
        );
    }
}
