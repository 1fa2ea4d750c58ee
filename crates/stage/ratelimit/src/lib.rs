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

    /// The in-memory store for `max_keys`: the one in force when it has that size (its budgets
    /// kept), else a new one. Nothing is put in force here ([`RateLimitState::activate`]).
    fn local(&self, max_keys: usize) -> Arc<LocalStore> {
        let g = self.local.lock().unwrap_or_else(|p| p.into_inner());
        match &*g {
            Some((m, s)) if *m == max_keys => s.clone(),
            _ => Arc::new(LocalStore::new(max_keys, self.clock.clone())),
        }
    }

    fn redis(&self, cfg: &RedisConfig) -> Result<(String, Arc<RedisStore>), String> {
        let id = redis_id(cfg);
        let g = self.redis.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, s)) = &*g
            && *k == id
        {
            return Ok((id, s.clone()));
        }
        drop(g);
        let mut urls = vec![cfg.url.0.clone()];
        urls.extend(cfg.cluster_nodes.iter().map(|n| n.0.clone()));
        let s = Arc::new(RedisStore::new(RedisSettings {
            url: urls.join(","),
            cluster: cfg.cluster,
            key_prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
        })?);
        Ok((id, s))
    }

    fn adaptive(&self, cfg: &AdaptiveConfig) -> (String, Arc<Adaptive>) {
        let id = format!("{cfg:?}");
        let g = self.adaptive.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, a)) = &*g
            && *k == id
        {
            return (id, a.clone());
        }
        drop(g);
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
        // About once a second, while some snapshot still uses it (a refused configuration's
        // controller ends with it).
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
        (id, a)
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

    /// The limiter of a snapshot: the stores in force where this configuration has the same
    /// ones (budgets kept across reloads), new ones otherwise. None of it is put in force
    /// before [`RateLimitState::activate`]: a configuration refused after it built leaves the
    /// stores the next one finds as they were.
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
        // With Redis the in-memory store counts only what falls back to it (and concurrency):
        // one store, sized by `max_keys`, whose keys and evictions the metrics already show.
        let local = self.local(settings.max_keys);
        Ok(Arc::new(RateLimiter {
            settings: settings.clone(),
            routes,
            fallback: local.clone(),
            local,
            redis_id: redis.as_ref().map(|(id, _)| id.clone()),
            redis: redis.map(|(_, s)| s),
            adaptive_id: adaptive.as_ref().map(|(id, _)| id.clone()),
            adaptive: adaptive.map(|(_, a)| a),
        }))
    }

    /// Puts a built limiter's stores in force, as the ones later configurations find: once its
    /// whole configuration is to serve. A configuration without Redis leaves the connection
    /// for a later one that has it again; one without adaptive protection ends it.
    pub fn activate(&self, limiter: &RateLimiter) {
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((limiter.settings.max_keys, limiter.local.clone()));
        if let (Some(id), Some(s)) = (&limiter.redis_id, &limiter.redis) {
            *self.redis.lock().unwrap_or_else(|p| p.into_inner()) = Some((id.clone(), s.clone()));
        }
        *self.adaptive.lock().unwrap_or_else(|p| p.into_inner()) =
            limiter.adaptive_id.clone().zip(limiter.adaptive.clone());
    }
}

/// What tells one Redis configuration's connection from another's.
fn redis_id(cfg: &RedisConfig) -> String {
    format!(
        "{}|{}|{:?}|{}|{:?}",
        cfg.url.0,
        cfg.cluster,
        cfg.cluster_nodes
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>(),
        cfg.key_prefix,
        cfg.timeout
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawRateLimits, compile};

    fn settings(yaml: &str) -> RateLimitSettings {
        let raw: RawRateLimits = serde_yaml_ng::from_str(yaml).unwrap();
        let mut e = portcullis_core::ConfigErrors::new();
        let s = compile(&raw, &mut e);
        assert!(e.is_empty(), "{e:?}");
        s
    }

    /// A configuration refused after its limiter built (its upstreams or TLS did not load)
    /// changes no store: the next one finds the budgets and the controller in force.
    #[test]
    fn only_an_activated_limiter_changes_the_stores_kept() {
        let state = RateLimitState::new();
        let running = "max_keys: 1000\nadaptive: { cpu_high: 0.9 }\n";
        let a = state.build(&settings(running), vec![]).unwrap();
        state.activate(&a);
        let in_force = state.current_adaptive().unwrap();
        // Refused: other stores built, never put in force.
        let refused = state.build(&settings("max_keys: 2000\n"), vec![]).unwrap();
        assert!(!Arc::ptr_eq(&refused.local, &a.local));
        assert!(Arc::ptr_eq(&state.current_adaptive().unwrap(), &in_force));
        // The running configuration again: the same stores.
        let again = state.build(&settings(running), vec![]).unwrap();
        assert!(Arc::ptr_eq(&again.local, &a.local));
        assert!(Arc::ptr_eq(again.adaptive.as_ref().unwrap(), &in_force));
        // Put in force, a configuration without adaptive protection ends it.
        state.activate(&refused);
        assert!(state.current_adaptive().is_none());
        let after = state.build(&settings(running), vec![]).unwrap();
        assert!(!Arc::ptr_eq(&after.local, &a.local));
    }
}
