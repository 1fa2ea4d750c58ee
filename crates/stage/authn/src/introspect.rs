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

pub struct Introspector {
    pub cfg: Introspection,
    fetcher: Fetcher,
    inflight: Mutex<HashMap<Digest, Flight>>,
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
        if claims.get("active") != Some(&serde_json::Value::Bool(true)) {
            return Err(Fail::Invalid("token_inactive"));
        }
        let now = unix_now();
        match claims.get("exp") {
            None => {}
            Some(v) => match v.as_f64() {
                Some(exp) if exp > now as f64 => {}
                Some(_) => return Err(Fail::Invalid("expired")),
                None => return Err(Fail::Invalid("claim_type")),
            },
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
        Ok(Arc::new(from_claims(
            AuthMethod::Introspection,
            self.cfg.name.clone(),
            &self.cfg.claims,
            claims.clone(),
        )))
    }
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
            claims: crate::config::claim_names(&Default::default()),
            ca_pem: None,
        })
        .unwrap()
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
