//! A bounded cache of verified credentials, keyed by the SHA-256 of the credential (the
//! credential itself is never kept) and the verifier whose verdict it is: a verdict is never
//! served to another verifier (a token found valid by one issuer's rules, or inactive by one
//! introspection endpoint, says nothing of what another would find). Sharded to keep lock
//! hold times short; an entry is never served past its deadline (the token's `exp`, or the
//! cache's own bound).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_core::Principal;

const SHARDS: usize = 16;

/// How often a full shard is swept of run-out entries at most: a sweep walks the whole shard.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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
    /// What the verdict rests on, in a count the caller keeps (a remote key set's
    /// withdrawals): served only while the count has not moved past it.
    stamp: u64,
}

/// One shard: its entries, how many of them are refusals, and when it was last swept.
#[derive(Default)]
struct Shard {
    map: HashMap<Key, Entry>,
    refusals: usize,
    swept: Option<Instant>,
}

impl Shard {
    fn remove(&mut self, k: &Key) {
        if let Some(e) = self.map.remove(k)
            && matches!(e.value, Cached::Invalid(_))
        {
            self.refusals = self.refusals.saturating_sub(1);
        }
    }

    fn insert(&mut self, k: Key, e: Entry) {
        if matches!(e.value, Cached::Invalid(_)) {
            self.refusals += 1;
        }
        if let Some(old) = self.map.insert(k, e)
            && matches!(old.value, Cached::Invalid(_))
        {
            self.refusals = self.refusals.saturating_sub(1);
        }
    }

    /// Forgets run-out entries, at most once every [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant) {
        if self
            .swept
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.swept = Some(now);
        self.map.retain(|_, e| e.until > now);
        self.refusals = self
            .map
            .values()
            .filter(|e| matches!(e.value, Cached::Invalid(_)))
            .count();
    }
}

pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl TokenCache {
    pub fn new(max_entries: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max_entries.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: &Digest) -> Option<&Mutex<Shard>> {
        self.shards.get(key[0] as usize % SHARDS)
    }

    /// `by`'s verdict on the credential whose digest is `key`, if it is still good.
    pub fn get(&self, key: &Digest, by: Verifier) -> Option<Cached> {
        self.get_since(key, by, 0)
    }

    /// As [`Self::get`], for a verdict stamped ([`Self::put_stamped`]) with `stamp` or more:
    /// one stamped lower is void and forgotten.
    pub fn get_since(&self, key: &Digest, by: Verifier, stamp: u64) -> Option<Cached> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(key)?.lock().ok()?;
        let k = (*key, by);
        match shard.map.get(&k) {
            Some(e) if e.until > Instant::now() && e.stamp >= stamp => Some(e.value.clone()),
            Some(_) => {
                shard.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Remembers `by`'s verdict on the credential whose digest is `key` until `until`.
    pub fn put(&self, key: Digest, by: Verifier, value: Cached, until: Instant) {
        self.put_stamped(key, by, value, until, 0);
    }

    /// As [`Self::put`], with the stamp [`Self::get_since`] compares.
    ///
    /// A full shard first forgets its run-out entries (a sweep of the whole shard, at most once
    /// a second); then, to make room for an eighth of it, refusals (`Cached::Invalid`) go
    /// first: a flood of unknown keys or inactive tokens — every one a fresh entry — never
    /// pushes out a valid verdict. A refusal is not kept when the shard holds fewer refusals
    /// than that eighth: making room would mean walking the shard for a slot or two, on every
    /// refusal of such a flood. A valid verdict takes the room of the refusals there, and of
    /// other valid verdicts (whichever the map yields first) when refusals do not make enough.
    pub fn put_stamped(
        &self,
        key: Digest,
        by: Verifier,
        value: Cached,
        until: Instant,
        stamp: u64,
    ) {
        if self.per_shard == 0 || until <= Instant::now() {
            return;
        }
        let Some(shard) = self.shard(&key) else {
            return;
        };
        let key = (key, by);
        let Ok(mut shard) = shard.lock() else { return };
        if shard.map.len() >= self.per_shard && !shard.map.contains_key(&key) {
            shard.sweep(Instant::now());
            if shard.map.len() >= self.per_shard {
                let drop_n = (self.per_shard / 8).max(1);
                let refusal = matches!(value, Cached::Invalid(_));
                if refusal && shard.refusals < drop_n {
                    return;
                }
                let mut victims: Vec<Key> = Vec::with_capacity(drop_n);
                if shard.refusals > 0 {
                    victims.extend(
                        shard
                            .map
                            .iter()
                            .filter(|(_, e)| matches!(e.value, Cached::Invalid(_)))
                            .map(|(k, _)| *k)
                            .take(drop_n),
                    );
                }
                if !refusal && victims.len() < drop_n {
                    let more = drop_n - victims.len();
                    victims.extend(
                        shard
                            .map
                            .iter()
                            .filter(|(_, e)| matches!(e.value, Cached::Valid(_)))
                            .map(|(k, _)| *k)
                            .take(more),
                    );
                }
                for v in victims {
                    shard.remove(&v);
                }
            }
        }
        shard.insert(
            key,
            Entry {
                value,
                until,
                stamp,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.map.len()).unwrap_or(0))
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
        // Expiry runs on the real clock: a second, so that a descheduled test thread does not
        // see the entry expire before it looks.
        c.put(k, by, p(), Instant::now() + Duration::from_secs(1));
        assert!(c.get(&k, by).is_some());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(c.get(&k, by).is_none());
        let disabled = TokenCache::new(0);
        disabled.put(k, by, p(), later);
        assert!(disabled.get(&k, by).is_none());
    }

    /// A digest in shard 0, told apart by `i`.
    fn in_shard_zero(i: u32) -> Digest {
        let mut d = [0u8; 32];
        d[0] = 0;
        d[1..5].copy_from_slice(&i.to_le_bytes());
        d
    }

    /// Refusals never push valid verdicts out of a full shard: a flood of unknown credentials
    /// leaves every valid verdict in place, and a valid verdict makes room by dropping
    /// refusals first.
    #[test]
    fn refusals_never_evict_valid_verdicts() {
        // 8 entries a shard.
        let c = TokenCache::new(8 * SHARDS);
        let later = Instant::now() + Duration::from_secs(60);
        let by = Verifier::ApiKeyStore;
        let valid: Vec<Digest> = (0..4).map(in_shard_zero).collect();
        for k in &valid {
            c.put(*k, by, p(), later);
        }
        // A flood of refusals in the same shard.
        for i in 1000..1500 {
            c.put(
                in_shard_zero(i),
                by,
                Cached::Invalid("api_key_unknown"),
                later,
            );
        }
        for k in &valid {
            assert!(
                matches!(c.get(k, by), Some(Cached::Valid(_))),
                "a valid verdict was evicted by refusals"
            );
        }
        assert_eq!(c.len(), 8, "the rest of the shard holds refusals");
        // New valid verdicts take the refusals' room, never the valid ones'.
        let more: Vec<Digest> = (4..8).map(in_shard_zero).collect();
        for k in &more {
            c.put(*k, by, p(), later);
        }
        for k in valid.iter().chain(&more) {
            assert!(matches!(c.get(k, by), Some(Cached::Valid(_))));
        }
        // Full of valid verdicts: a refusal is not kept, and evicts nothing.
        c.put(
            in_shard_zero(2000),
            by,
            Cached::Invalid("api_key_unknown"),
            later,
        );
        assert!(c.get(&in_shard_zero(2000), by).is_none());
        assert_eq!(c.len(), 8);
        // Once only valid verdicts are left, a new valid one still finds room (an eighth of
        // them goes).
        c.put(in_shard_zero(9), by, p(), later);
        assert!(c.get(&in_shard_zero(9), by).is_some());
        assert!(c.len() <= 8);
    }

    /// A verdict stamped lower than asked for is void, and forgotten.
    #[test]
    fn a_verdict_stamped_before_a_withdrawal_is_void() {
        let c = TokenCache::new(32);
        let later = Instant::now() + Duration::from_secs(60);
        let k = digest(b"token");
        c.put_stamped(k, Verifier::Jwt(0), p(), later, 3);
        assert!(c.get_since(&k, Verifier::Jwt(0), 3).is_some());
        assert!(c.get_since(&k, Verifier::Jwt(0), 2).is_some());
        assert!(c.get_since(&k, Verifier::Jwt(0), 4).is_none());
        assert!(c.get_since(&k, Verifier::Jwt(0), 3).is_none(), "forgotten");
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

    /// A refusal finding a full shard with fewer refusals than an eighth of it is not kept and
    /// moves nothing (making room would walk the shard for a slot or two on every refusal of
    /// a flood); once there are enough refusals, they make the room; the shard's refusal count
    /// follows every insert, replacement and removal.
    #[test]
    fn refusals_make_room_only_in_bulk() {
        // 64 entries a shard: room is made an eighth (8) at a time.
        let c = TokenCache::new(64 * SHARDS);
        let later = Instant::now() + Duration::from_secs(60);
        let by = Verifier::ApiKeyStore;
        let no = || Cached::Invalid("api_key_unknown");
        for i in 0..60 {
            c.put(in_shard_zero(i), by, p(), later);
        }
        for i in 60..64 {
            c.put(in_shard_zero(i), by, no(), later);
        }
        let refusals = |c: &TokenCache| c.shards[0].lock().unwrap().refusals;
        assert_eq!((c.len(), refusals(&c)), (64, 4));
        c.put(in_shard_zero(100), by, no(), later);
        assert!(c.get(&in_shard_zero(100), by).is_none(), "not kept");
        assert_eq!((c.len(), refusals(&c)), (64, 4), "nothing moved");
        // Replacing a refusal by a valid verdict (the key was found after all) counts right.
        c.put(in_shard_zero(63), by, p(), later);
        assert_eq!((c.len(), refusals(&c)), (64, 3));
        // A valid verdict makes room: the 3 refusals, then 5 valid verdicts.
        c.put(in_shard_zero(200), by, p(), later);
        assert_eq!((c.len(), refusals(&c)), (57, 0));
        for i in 300..307 {
            c.put(in_shard_zero(i), by, no(), later);
        }
        assert_eq!((c.len(), refusals(&c)), (64, 7));
        c.put(in_shard_zero(400), by, no(), later);
        assert_eq!((c.len(), refusals(&c)), (64, 7), "7 < 8: not kept");
        c.put(in_shard_zero(401), by, p(), later);
        c.put(in_shard_zero(402), by, no(), later);
        assert_eq!(
            (c.len(), refusals(&c)),
            (58, 1),
            "the valid one took 7 refusals and 1 valid"
        );
        // Removal on expiry counts too.
        c.put(
            in_shard_zero(500),
            by,
            no(),
            // `put` drops what has already expired: room for a descheduled thread.
            Instant::now() + Duration::from_millis(300),
        );
        assert_eq!(refusals(&c), 2);
        std::thread::sleep(Duration::from_millis(400));
        assert!(c.get(&in_shard_zero(500), by).is_none());
        assert_eq!(refusals(&c), 1);
    }
}
