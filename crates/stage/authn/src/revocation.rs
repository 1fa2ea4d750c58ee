//! Revoked token ids and API keys. The request path only reads a local set; with Redis, a
//! background task mirrors the shared sets every `sync_interval`, and admin additions go to
//! both. A revocation therefore reaches every instance within one interval.

use std::collections::HashSet;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use serde::Serialize;

use crate::store::Store;

#[derive(Default)]
struct Sets {
    /// From the configuration (replaced on reload).
    config_jtis: HashSet<String>,
    config_keys: HashSet<[u8; 32]>,
    /// Added at run time (admin API) or read from the shared store.
    jtis: HashSet<String>,
    keys: HashSet<[u8; 32]>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RevocationStatus {
    pub token_ids: Vec<String>,
    pub api_keys: Vec<String>,
    pub shared: bool,
    pub last_sync_error: Option<String>,
}

pub struct Revocations {
    sets: RwLock<Sets>,
    store: RwLock<Option<Arc<Store>>>,
    last_error: RwLock<Option<String>>,
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
        })
    }

    /// Replaces the configured entries (on every snapshot build).
    pub fn set_configured(&self, jtis: &[String], keys: &[[u8; 32]]) {
        if let Ok(mut s) = self.sets.write() {
            s.config_jtis = jtis.iter().cloned().collect();
            s.config_keys = keys.iter().copied().collect();
        }
    }

    /// Shares the list through `store`, mirrored every `every`.
    pub fn share(self: &Arc<Self>, store: Option<Arc<Store>>, every: Duration) {
        let changed = {
            let Ok(mut slot) = self.store.write() else {
                return;
            };
            let same = match (&*slot, &store) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            *slot = store.clone();
            !same
        };
        if !changed || store.is_none() {
            return;
        }
        let Some(mine) = store else { return };
        let weak: Weak<Revocations> = Arc::downgrade(self);
        let every = every.max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                // A later configuration replaced (or removed) the store: this task is done.
                let current = me.store.read().ok().and_then(|s| s.clone());
                if !current.is_some_and(|c| Arc::ptr_eq(&c, &mine)) {
                    return;
                }
                me.sync(&mine).await;
                drop(me);
                tokio::time::sleep(every).await;
            }
        });
    }

    async fn sync(&self, store: &Store) {
        let jtis = store.smembers(&store.key("revoked:jti")).await;
        let keys = store.smembers(&store.key("revoked:apikey")).await;
        match (jtis, keys) {
            (Ok(j), Ok(k)) => {
                if let Ok(mut s) = self.sets.write() {
                    s.jtis.extend(j);
                    s.keys.extend(
                        k.iter()
                            .filter_map(|h| crate::config::parse_key_hash(h).ok()),
                    );
                }
                if let Ok(mut e) = self.last_error.write() {
                    *e = None;
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "revocation list sync failed; using the last known list");
                if let Ok(mut le) = self.last_error.write() {
                    *le = Some(e);
                }
            }
        }
    }

    pub fn is_jti_revoked(&self, jti: &str) -> bool {
        self.sets
            .read()
            .map(|s| s.jtis.contains(jti) || s.config_jtis.contains(jti))
            .unwrap_or(true)
    }

    pub fn is_key_revoked(&self, hash: &[u8; 32]) -> bool {
        self.sets
            .read()
            .map(|s| s.keys.contains(hash) || s.config_keys.contains(hash))
            .unwrap_or(true)
    }

    /// Adds an entry locally and, when shared, to the store. An error means the shared store
    /// did not take it (it is still refused here).
    pub async fn revoke_jti(&self, jti: &str) -> Result<(), String> {
        if let Ok(mut s) = self.sets.write() {
            s.jtis.insert(jti.to_string());
        }
        let store = self.store.read().ok().and_then(|s| s.clone());
        match store {
            Some(st) => st.sadd(&st.key("revoked:jti"), jti).await,
            None => Ok(()),
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
        let (mut token_ids, mut api_keys) = self
            .sets
            .read()
            .map(|s| {
                (
                    s.jtis.union(&s.config_jtis).cloned().collect::<Vec<_>>(),
                    s.keys
                        .union(&s.config_keys)
                        .map(|k| format!("sha256:{}", hex(k)))
                        .collect::<Vec<_>>(),
                )
            })
            .unwrap_or_default();
        token_ids.sort();
        api_keys.sort();
        RevocationStatus {
            token_ids,
            api_keys,
            shared: self.store.read().map(|s| s.is_some()).unwrap_or(false),
            last_sync_error: self.last_error.read().ok().and_then(|e| e.clone()),
        }
    }
}
