//! API keys: stored only as SHA-256 hashes, in the configuration or in Redis. A presented key
//! is hashed once; the configured entry whose hash it equals (compared in constant time) or
//! the Redis record under that hash decides.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_core::{AuthMethod, Principal};
use subtle::ConstantTimeEq;

use crate::cache::{Cached, Digest, TokenCache, Verifier, digest};
use crate::config::{ApiKeyEntry, ApiKeys};
use crate::revocation::hex;
use crate::{Fail, unix_now};
use portcullis_store::Store;

/// Generates a key: `pk_` and 32 random bytes in base64url. Returns `(key, "sha256:<hex>")`.
pub fn generate() -> Result<(String, String), String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| "no randomness available".to_string())?;
    let key = format!(
        "pk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let hash = format!("sha256:{}", hex(&digest(key.as_bytes())));
    Ok((key, hash))
}

/// The configured keys, bucketed by the first 8 bytes of their hash.
pub struct KeyTable {
    buckets: HashMap<[u8; 8], Vec<Arc<Entry>>>,
}

pub struct Entry {
    pub hash: Digest,
    pub principal: Arc<Principal>,
    pub expires: Option<u64>,
    pub active: bool,
}

fn principal_of(e: &ApiKeyEntry) -> Principal {
    let mut p = Principal::new(AuthMethod::ApiKey, Arc::from("api_keys"));
    p.client_id = Some(e.client_id.clone());
    p.subject = e.owner.clone().or_else(|| Some(e.client_id.clone()));
    p.scopes = e.scopes.clone();
    p.tier = e.tier.clone();
    p.tenant = e.tenant.clone();
    p.credential_id = Some(key_id(&e.hash));
    p.expires_at = e.expires;
    p
}

/// A key's public id: the first 12 hex digits of its hash (safe to log).
pub fn key_id(hash: &Digest) -> String {
    hex(&hash[..6])
}

fn bucket(h: &Digest) -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    b
}

impl KeyTable {
    pub fn new(cfg: &ApiKeys) -> KeyTable {
        let mut buckets: HashMap<[u8; 8], Vec<Arc<Entry>>> = HashMap::new();
        for k in &cfg.keys {
            buckets
                .entry(bucket(&k.hash))
                .or_default()
                .push(Arc::new(Entry {
                    hash: k.hash,
                    principal: Arc::new(principal_of(k)),
                    expires: k.expires,
                    active: k.active,
                }));
        }
        KeyTable { buckets }
    }

    pub fn find(&self, hash: &Digest) -> Option<Arc<Entry>> {
        let mut found = None;
        for e in self.buckets.get(&bucket(hash))? {
            if bool::from(e.hash.ct_eq(hash)) {
                found = Some(e.clone());
            }
        }
        found
    }
}

/// Checks a found entry's flags.
pub fn check(entry: &Entry) -> Result<Arc<Principal>, Fail> {
    if !entry.active {
        return Err(Fail::Invalid("api_key_inactive"));
    }
    if let Some(exp) = entry.expires
        && unix_now() >= exp
    {
        return Err(Fail::Invalid("api_key_expired"));
    }
    Ok(entry.principal.clone())
}

/// Reads a key record from Redis (hash `<prefix>apikey:<hex>`), through the cache.
pub async fn lookup_redis(
    store: &Store,
    cache: &TokenCache,
    hash: &Digest,
    ttl: Duration,
) -> Result<Arc<Principal>, Fail> {
    let ck = *hash;
    let by = Verifier::ApiKeyStore;
    match cache.get(&ck, by) {
        Some(Cached::Valid(p)) => return recheck(&p),
        Some(Cached::Invalid(code)) => return Err(Fail::Invalid(code)),
        None => {}
    }
    let rec = store
        .hgetall(&store.key(&format!("apikey:{}", hex(hash))))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "API key store unavailable");
            Fail::Unavailable("api_key_store_unavailable")
        })?;
    let until = Instant::now() + ttl;
    let Some(client_id) = rec.get("client_id").filter(|c| !c.is_empty()) else {
        cache.put(ck, by, Cached::Invalid("api_key_unknown"), until);
        return Err(Fail::Invalid("api_key_unknown"));
    };
    let list = |k: &str| -> Vec<String> {
        rec.get(k)
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let opt = |k: &str| rec.get(k).filter(|s| !s.is_empty()).cloned();
    let expires = match rec.get("expires").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<u64>().ok().or_else(|| {
            humantime::parse_rfc3339_weak(s)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        }) {
            Some(t) => Some(t),
            None => {
                tracing::warn!(key = %key_id(hash), "API key record in Redis: expires is neither unix seconds nor an RFC 3339 time; the key is refused");
                cache.put(ck, by, Cached::Invalid("api_key_record_invalid"), until);
                return Err(Fail::Invalid("api_key_record_invalid"));
            }
        },
    };
    let Some(active) = active_flag(rec.get("active").map(String::as_str)) else {
        // Logged by the key's public id only, never the key (nor the field's value: a record
        // is written by hand, and whatever was typed there need not go to the logs).
        tracing::warn!(key = %key_id(hash), "API key record in Redis: active is neither true/1/yes nor false/0/no/off; the key is refused");
        cache.put(ck, by, Cached::Invalid("api_key_record_invalid"), until);
        return Err(Fail::Invalid("api_key_record_invalid"));
    };
    let entry = ApiKeyEntry {
        hash: *hash,
        client_id: client_id.clone(),
        owner: opt("owner"),
        scopes: list("scopes"),
        tier: opt("tier"),
        tenant: opt("tenant"),
        expires,
        active,
    };
    if !active {
        cache.put(ck, by, Cached::Invalid("api_key_inactive"), until);
        return Err(Fail::Invalid("api_key_inactive"));
    }
    let p = Arc::new(principal_of(&entry));
    cache.put(ck, by, Cached::Valid(p.clone()), until);
    recheck(&p)
}

/// A Redis record's `active` field, in any case: absent, `true`, `1` or `yes` is active;
/// `false`, `0`, `no` or `off` inactive; anything else (`disabled`, `nope`, an empty value …)
/// `None` — the record cannot be read, and the key is refused rather than taken as active.
fn active_flag(v: Option<&str>) -> Option<bool> {
    let Some(v) = v else { return Some(true) };
    let is = |words: &[&str]| words.iter().any(|w| v.eq_ignore_ascii_case(w));
    if is(&["true", "1", "yes"]) {
        Some(true)
    } else if is(&["false", "0", "no", "off"]) {
        Some(false)
    } else {
        None
    }
}

fn recheck(p: &Arc<Principal>) -> Result<Arc<Principal>, Fail> {
    match p.expires_at {
        Some(exp) if unix_now() >= exp => Err(Fail::Invalid("api_key_expired")),
        _ => Ok(p.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_key_hash;

    /// `active` in a Redis record fails closed: only the words for "on" (or no field) leave a
    /// key active, the words for "off" in any case disable it, and anything else is refused.
    #[test]
    fn the_active_field_of_a_redis_record_fails_closed() {
        assert_eq!(active_flag(None), Some(true));
        for on in ["true", "TRUE", "True", "1", "yes", "YES", "Yes"] {
            assert_eq!(active_flag(Some(on)), Some(true), "{on}");
        }
        for off in [
            "false", "False", "FALSE", "fAlSe", "0", "no", "No", "NO", "off", "Off", "OFF",
        ] {
            assert_eq!(active_flag(Some(off)), Some(false), "{off}");
        }
        for bad in [
            "", " ", "false ", " true", "disabled", "inactive", "on", "n", "f", "2", "-1", "nope",
            "ja",
        ] {
            assert_eq!(active_flag(Some(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn generated_keys_hash_to_what_the_table_finds() {
        let (key, hash) = generate().unwrap();
        assert!(key.starts_with("pk_") && key.len() == 46, "{key}");
        let h = parse_key_hash(&hash).unwrap();
        assert_eq!(h, digest(key.as_bytes()));
        let cfg = ApiKeys {
            header: http::HeaderName::from_static("x-api-key"),
            keys: vec![ApiKeyEntry {
                hash: h,
                client_id: "c1".into(),
                owner: None,
                scopes: vec!["read".into()],
                tier: Some("pro".into()),
                tenant: None,
                expires: None,
                active: true,
            }],
            redis: false,
            cache_ttl: Duration::from_secs(1),
        };
        let t = KeyTable::new(&cfg);
        let e = t.find(&h).unwrap();
        let p = check(&e).unwrap();
        assert_eq!(p.client_id.as_deref(), Some("c1"));
        assert_eq!(p.tier.as_deref(), Some("pro"));
        let mut other = h;
        other[31] ^= 1;
        assert!(t.find(&other).is_none());
        assert_ne!(generate().unwrap().0, key);
    }
}
