//! Remote key sets (a JWKS URL, or one found by OIDC discovery) and their lifecycle:
//! cached for the server's `max-age` within bounds, refetched in the background before they
//! expire, refetched once (single-flight, with a cooldown) when a token names an unknown `kid`,
//! and kept — the last good set — while the IdP is down. A key set URL found by discovery is
//! looked up again when fetching it fails (in the background or for an unknown `kid`), and the
//! new one kept once a key set was read there: a provider that moves its key set is followed,
//! while a forged `kid` alone never makes the gateway read the discovery document again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use portcullis_core::unix_now;

use arc_swap::ArcSwapOption;
use portcullis_jose::JwkSet;
use serde::Serialize;

use crate::config::{JwksCacheSettings, JwtIssuer, KeySource};
use crate::fetch::{Fetcher, max_age};

/// What the admin API and metrics show about one key source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeyStatus {
    pub source: String,
    pub jwks_uri: Option<String>,
    pub kids: Vec<String>,
    /// Unix seconds of the last successful fetch.
    pub last_success: Option<u64>,
    pub last_error: Option<String>,
    pub fetches: u64,
    pub failures: u64,
    /// Refetches caused by tokens with an unknown `kid`.
    pub unknown_kid_refetches: u64,
    /// Unknown-`kid` refetches refused by the cooldown.
    pub unknown_kid_throttled: u64,
}

/// A remote key set shared by every snapshot whose issuer has the same source and settings.
pub struct RemoteKeys {
    name: String,
    source: KeySource,
    settings: JwksCacheSettings,
    fetcher: Fetcher,
    keys: ArcSwapOption<JwkSet>,
    jwks_uri: Mutex<Option<String>>,
    status: Mutex<KeyStatus>,
    /// Serialises fetches: concurrent callers wait for the one in flight.
    fetching: tokio::sync::Mutex<()>,
    /// Bumped by every completed fetch attempt.
    generation: AtomicU64,
    last_kid_refetch: Mutex<Option<Instant>>,
}

impl RemoteKeys {
    pub fn new(issuer: &JwtIssuer) -> Result<Arc<RemoteKeys>, String> {
        let fetcher = Fetcher::new(issuer.ca_pem.as_deref())?;
        let source_desc = match &issuer.source {
            KeySource::Discovery { issuer } => format!("discovery {issuer}"),
            KeySource::JwksUrl(u) => format!("jwks_url {u}"),
            KeySource::Static(_) => "static".into(),
        };
        Ok(Arc::new(RemoteKeys {
            name: issuer.name.to_string(),
            source: issuer.source.clone(),
            settings: issuer.cache.clone(),
            fetcher,
            keys: ArcSwapOption::empty(),
            jwks_uri: Mutex::new(match &issuer.source {
                KeySource::JwksUrl(u) => Some(u.clone()),
                _ => None,
            }),
            status: Mutex::new(KeyStatus {
                source: source_desc,
                ..KeyStatus::default()
            }),
            fetching: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            last_kid_refetch: Mutex::new(None),
        }))
    }

    /// Starts the background refresh task; it stops when the last snapshot using these keys
    /// is gone. Needs a Tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let weak: Weak<RemoteKeys> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let Some(me) = weak.upgrade() else { return };
                let wait = {
                    let _g = me.fetching.lock().await;
                    match me.fetch().await {
                        Ok(ttl) => {
                            failures = 0;
                            (ttl * 3 / 4).max(Duration::from_secs(1))
                        }
                        Err(_) => {
                            failures = failures.saturating_add(1);
                            // 1s, 2s, 4s … up to 60s while the IdP is down.
                            Duration::from_secs(1u64 << failures.min(6).saturating_sub(1))
                                .min(Duration::from_secs(60))
                        }
                    }
                };
                drop(me);
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// The current set, if one was ever loaded.
    pub fn current(&self) -> Option<Arc<JwkSet>> {
        self.keys.load_full()
    }

    pub fn status(&self) -> KeyStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Called when a token names a `kid` the current set lacks (or no set is loaded yet).
    /// Waits for a fetch already in flight; otherwise fetches once unless the cooldown since
    /// the last such refetch has not passed. Returns true when a new set may be in place.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let before = self.generation.load(Ordering::Acquire);
        let _g = self.fetching.lock().await;
        if self.generation.load(Ordering::Acquire) != before {
            return true;
        }
        {
            let Ok(mut last) = self.last_kid_refetch.lock() else {
                return false;
            };
            if let Some(t) = *last
                && t.elapsed() < self.settings.unknown_kid_cooldown
            {
                if let Ok(mut s) = self.status.lock() {
                    s.unknown_kid_throttled += 1;
                }
                return false;
            }
            *last = Some(Instant::now());
        }
        if let Ok(mut s) = self.status.lock() {
            s.unknown_kid_refetches += 1;
        }
        self.fetch().await.is_ok()
    }

    /// One fetch (discovery first when needed). On success the set is swapped in and its time
    /// to live returned; on failure the old set stays.
    async fn fetch(&self) -> Result<Duration, String> {
        let result = self.fetch_inner().await;
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut s) = self.status.lock() {
            s.fetches += 1;
            match &result {
                Ok((set, _)) => {
                    s.last_success = Some(unix_now());
                    s.last_error = None;
                    s.kids = set.kids();
                    s.jwks_uri = self.jwks_uri.lock().ok().and_then(|u| u.clone());
                }
                Err(e) => {
                    s.failures += 1;
                    s.last_error = Some(e.clone());
                }
            }
        }
        match result {
            Ok((set, ttl)) => {
                tracing::debug!(issuer = %self.name, kids = ?set.kids(), ttl = ?ttl, "key set loaded");
                self.keys.store(Some(Arc::new(set)));
                Ok(ttl)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.name, error = %e, "key set fetch failed; keeping the last good keys");
                Err(e)
            }
        }
    }

    async fn fetch_inner(&self) -> Result<(JwkSet, Duration), String> {
        let known = self.jwks_uri.lock().ok().and_then(|u| u.clone());
        let KeySource::Discovery { issuer } = &self.source else {
            return match known {
                Some(u) => self.fetch_set(&u).await,
                None => Err("no key source".into()),
            };
        };
        let first = match &known {
            Some(u) => match self.fetch_set(u).await {
                Ok(set) => return Ok(set),
                Err(e) => Some(e),
            },
            None => None,
        };
        // None known yet, or the known one failed: the provider may have moved its key set.
        // A URL is kept only once a key set was read there.
        let found = match self.discover(issuer, self.settings.fetch_timeout).await {
            Ok(u) => u,
            Err(e) => return Err(first.unwrap_or(e)),
        };
        if let Some(e) = first
            && known.as_deref() == Some(found.as_str())
        {
            return Err(e);
        }
        let set = self.fetch_set(&found).await?;
        if let Some(old) = &known {
            tracing::warn!(issuer = %self.name, from = %old, to = %found, "the provider's key set moved");
        }
        if let Ok(mut slot) = self.jwks_uri.lock() {
            *slot = Some(found);
        }
        Ok(set)
    }

    /// Fetches and reads the key set at `uri`, with its time to live.
    async fn fetch_set(&self, uri: &str) -> Result<(JwkSet, Duration), String> {
        let timeout = self.settings.fetch_timeout;
        let r = self.fetcher.get_json(uri, timeout).await?;
        if !r.status.is_success() {
            return Err(format!("{uri} answered {}", r.status));
        }
        let (set, warnings) = JwkSet::from_json(&r.body).map_err(|e| format!("{uri}: {e}"))?;
        for w in warnings {
            tracing::debug!(issuer = %self.name, "{uri}: {w}");
        }
        if set.keys.is_empty() {
            return Err(format!("{uri}: no usable signing key"));
        }
        let s = &self.settings;
        let ttl = max_age(&r.headers)
            .unwrap_or(s.default_ttl)
            .clamp(s.min_ttl, s.max_ttl);
        Ok((set, ttl))
    }

    async fn discover(&self, issuer: &str, timeout: Duration) -> Result<String, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let r = self.fetcher.get_json(&url, timeout).await?;
        if !r.status.is_success() {
            return Err(format!("{url} answered {}", r.status));
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&r.body).map_err(|e| format!("{url}: {e}"))?;
        // OpenID Connect Discovery §4.3: the document's issuer must be the one asked for.
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
            return Err(format!("{url}: the document's issuer is not {issuer}"));
        }
        let jwks = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("{url}: no jwks_uri"))?;
        let parsed: http::Uri = jwks
            .parse()
            .map_err(|_| format!("{url}: jwks_uri is not a URL"))?;
        let loopback = parsed
            .host()
            .map(|h| {
                h == "localhost"
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .map(|ip| ip.is_loopback())
                        .unwrap_or(false)
            })
            .unwrap_or(false);
        match parsed.scheme_str() {
            Some("https") => {}
            Some("http") if loopback => {}
            _ => return Err(format!("{url}: jwks_uri must be https")),
        }
        Ok(jwks.to_string())
    }
}
