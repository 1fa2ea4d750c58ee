//! # portcullis-ratelimit
//!
//! Rate limits, quotas and concurrency limits per key (client IP, client, user, API key,
//! tenant, route, method, header, claim, composites), counted in memory or in Redis, and
//! adaptive load protection.

#![forbid(unsafe_code)]

pub mod adaptive;
pub mod algo;
pub mod clock;
pub mod config;
pub mod local;
pub mod redis;
pub mod stage;
pub mod types;

pub use config::{RateLimitSettings, RawRateLimits};
pub use stage::{RateLimitStage, RateLimiter};
pub use types::{Algorithm, Check, Decision, LimitSpec, Period, StoreError};

use std::sync::{Arc, Mutex};

use crate::adaptive::{Adaptive, AdaptiveSettings};
use crate::clock::{Clock, SystemClock};
use crate::config::{AdaptiveConfig, RedisConfig};
use crate::local::LocalStore;
use crate::redis::{RedisSettings, RedisStore};

/// State that outlives configuration snapshots: the budgets (in memory), the Redis
/// connection, the adaptive controller. A reload keeps every budget.
pub struct RateLimitState {
    clock: Arc<dyn Clock>,
    local: Mutex<Option<(usize, Arc<LocalStore>)>>,
    redis: Mutex<Option<(String, Arc<RedisStore>)>>,
    adaptive: Mutex<Option<(String, Arc<Adaptive>)>>,
}

impl RateLimitState {
    pub fn new() -> Arc<RateLimitState> {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Arc<RateLimitState> {
        Arc::new(RateLimitState {
            clock,
            local: Mutex::new(None),
            redis: Mutex::new(None),
            adaptive: Mutex::new(None),
        })
    }

    fn local(&self, max_keys: usize) -> Arc<LocalStore> {
        let mut g = self.local.lock().unwrap_or_else(|p| p.into_inner());
        match &*g {
            Some((m, s)) if *m == max_keys => s.clone(),
            _ => {
                let s = Arc::new(LocalStore::new(max_keys, self.clock.clone()));
                *g = Some((max_keys, s.clone()));
                s
            }
        }
    }

    fn redis(&self, cfg: &RedisConfig) -> Result<Arc<RedisStore>, String> {
        let id = format!(
            "{}|{}|{:?}|{}|{:?}",
            cfg.url.0,
            cfg.cluster,
            cfg.cluster_nodes
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>(),
            cfg.key_prefix,
            cfg.timeout
        );
        let mut g = self.redis.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, s)) = &*g
            && *k == id
        {
            return Ok(s.clone());
        }
        let mut urls = vec![cfg.url.0.clone()];
        urls.extend(cfg.cluster_nodes.iter().map(|n| n.0.clone()));
        let s = Arc::new(RedisStore::new(RedisSettings {
            url: urls.join(","),
            cluster: cfg.cluster,
            key_prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
        })?);
        *g = Some((id, s.clone()));
        Ok(s)
    }

    fn adaptive(&self, cfg: &AdaptiveConfig) -> Arc<Adaptive> {
        let id = format!("{cfg:?}");
        let mut g = self.adaptive.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, a)) = &*g
            && *k == id
        {
            return a.clone();
        }
        let a = Arc::new(Adaptive::new(
            AdaptiveSettings {
                cpu_high: cfg.cpu_high,
                memory_high: cfg.memory_high,
                error_rate_high: cfg.error_rate_high,
                latency_slo: cfg.latency_slo,
                min_factor: cfg.min_factor,
                window: cfg.window,
                recover_after: cfg.recover_after,
            },
            self.clock.clone(),
        ));
        // About once a second, while some snapshot still uses it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&a);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(a) => a.tick(),
                        None => break,
                    }
                }
            });
        }
        *g = Some((id, a.clone()));
        a
    }

    /// The controller in use, if adaptive protection is configured (for the engine's upstream
    /// feedback and the admin API).
    pub fn current_adaptive(&self) -> Option<Arc<Adaptive>> {
        self.adaptive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, a)| a.clone())
    }

    /// The limiter of a snapshot.
    pub fn build(
        &self,
        settings: &RateLimitSettings,
        routes: Vec<Vec<usize>>,
    ) -> Result<Arc<RateLimiter>, String> {
        let redis = match &settings.redis {
            Some(cfg) => Some(self.redis(cfg)?),
            None => None,
        };
        let adaptive = settings.adaptive.as_ref().map(|a| self.adaptive(a));
        if settings.adaptive.is_none() {
            *self.adaptive.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        // With Redis the in-memory store counts only what falls back to it (and concurrency):
        // one store, sized by `max_keys`, whose keys and evictions the metrics already show.
        let local = self.local(settings.max_keys);
        Ok(Arc::new(RateLimiter {
            settings: settings.clone(),
            routes,
            fallback: local.clone(),
            local,
            redis,
            adaptive,
        }))
    }
}
