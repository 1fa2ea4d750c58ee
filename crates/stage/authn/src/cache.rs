//! A bounded cache of verified credentials, keyed by the SHA-256 of the credential (the
//! credential itself is never kept) and the verifier whose verdict it is: a verdict is never
//! served to another verifier (a token found valid by one issuer's rules, or inactive by one
//! introspection endpoint, says nothing of what another would find). Sharded to keep lock
//! hold times short; an entry is never served past its deadline (the token's `exp`, or the
//! cache's own bound).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use portcullis_core::Principal;

const SHARDS: usize = 16;

pub type Digest = [u8; 32];

pub fn digest(bytes: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whose verdict a cache entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verifier {
    /// An `auth.jwt` issuer, by its index: its keys, algorithms and claim rules.
    Jwt(usize),
    /// An `auth.introspection` endpoint, by its index.
    Introspection(usize),
    /// The Redis API-key store (keyed by the key's hash).
    ApiKeyStore,
}

type Key = (Digest, Verifier);

/// What a cache entry remembers.
#[derive(Clone)]
pub enum Cached {
    Valid(Arc<Principal>),
    /// A credential found invalid (introspection said `active: false`).
    Invalid(&'static str),
}

struct Entry {
    value: Cached,
    until: Instant,
}

pub struct TokenCache {
    shards: Vec<Mutex<HashMap<Key, Entry>>>,
    per_shard: usize,
}

impl TokenCache {
    pub fn new(max_entries: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_entries.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: &Digest) -> Option<&Mutex<HashMap<Key, Entry>>> {
        self.shards.get(key[0] as usize % SHARDS)
    }

    /// `by`'s verdict on the credential whose digest is `key`, if it is still good.
    pub fn get(&self, key: &Digest, by: Verifier) -> Option<Cached> {
        if self.per_shard == 0 {
            return None;
        }
        let mut map = self.shard(key)?.lock().ok()?;
        let k = (*key, by);
        match map.get(&k) {
            Some(e) if e.until > Instant::now() => Some(e.value.clone()),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Remembers `by`'s verdict on the credential whose digest is `key` until `until`.
    pub fn put(&self, key: Digest, by: Verifier, value: Cached, until: Instant) {
        if self.per_shard == 0 || until <= Instant::now() {
            return;
        }
        let Some(shard) = self.shard(&key) else {
            return;
        };
        let key = (key, by);
        let Ok(mut map) = shard.lock() else { return };
        if map.len() >= self.per_shard && !map.contains_key(&key) {
            let now = Instant::now();
            map.retain(|_, e| e.until > now);
            if map.len() >= self.per_shard {
                // Still full of live entries: drop an eighth, whichever the map yields first.
                let drop_n = (self.per_shard / 8).max(1);
                let victims: Vec<Key> = map.keys().take(drop_n).copied().collect();
                for v in victims {
                    map.remove(&v);
                }
            }
        }
        map.insert(key, Entry { value, until });
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::AuthMethod;
    use std::time::Duration;

    fn p() -> Cached {
        Cached::Valid(Arc::new(Principal::new(AuthMethod::Jwt, Arc::from("i"))))
    }

    #[test]
    fn bounded_and_expiring() {
        let c = TokenCache::new(32);
        let later = Instant::now() + Duration::from_secs(60);
        let by = Verifier::Jwt(0);
        for i in 0..1000u32 {
            c.put(digest(&i.to_le_bytes()), by, p(), later);
        }
        assert!(c.len() <= 32, "{}", c.len());
        let k = digest(b"x");
        c.put(k, by, p(), Instant::now() + Duration::from_millis(20));
        assert!(c.get(&k, by).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(c.get(&k, by).is_none());
        let disabled = TokenCache::new(0);
        disabled.put(k, by, p(), later);
        assert!(disabled.get(&k, by).is_none());
    }

    #[test]
    fn a_verdict_is_only_served_to_its_verifier() {
        let c = TokenCache::new(32);
        let later = Instant::now() + Duration::from_secs(60);
        let k = digest(b"token");
        c.put(
            k,
            Verifier::Introspection(0),
            Cached::Invalid("token_inactive"),
            later,
        );
        c.put(k, Verifier::Jwt(1), p(), later);
        assert!(matches!(
            c.get(&k, Verifier::Introspection(0)),
            Some(Cached::Invalid("token_inactive"))
        ));
        assert!(matches!(
            c.get(&k, Verifier::Jwt(1)),
            Some(Cached::Valid(_))
        ));
        for other in [
            Verifier::Introspection(1),
            Verifier::Jwt(0),
            Verifier::ApiKeyStore,
        ] {
            assert!(c.get(&k, other).is_none(), "{other:?}");
        }
        assert_eq!(c.len(), 2);
    }
}
