//! The running state built from one configuration: the pipeline snapshot plus the upstream
//! pools and their health checks. Swapped whole on reload; a request pins one for its life.

use std::sync::Arc;

use portcullis_config::{Config, UpstreamKind};
use portcullis_core::ConfigErrors;
use portcullis_pipeline::{Shared, Snapshot};
use portcullis_telemetry::Metrics;

use crate::upstream::{HealthChecks, UpstreamPool};

pub struct Runtime {
    pub snapshot: Snapshot,
    /// Indexed like `config.upstreams`; `None` for in-process (echo, token exchange) upstreams.
    pub pools: Vec<Option<Arc<UpstreamPool>>>,
    _health: Vec<HealthChecks>,
}

impl Runtime {
    /// Builds pools (and, with `start_health`, their health-check tasks — which needs a tokio
    /// runtime). Every failure is reported at its upstream's path. `metrics`: where the pools
    /// count what their answers' bodies meet (none when the configuration is only checked).
    pub fn build(
        config: Arc<Config>,
        start_health: bool,
        shared: &Shared,
        metrics: Option<&Arc<Metrics>>,
    ) -> Result<Runtime, ConfigErrors> {
        let mut errors = ConfigErrors::new();
        let mut pools = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            match u.kind {
                UpstreamKind::Echo | UpstreamKind::TokenExchange | UpstreamKind::Static => {
                    pools.push(None)
                }
                UpstreamKind::Proxy => match UpstreamPool::new(u, metrics) {
                    Ok(p) => pools.push(Some(p)),
                    Err(e) => {
                        errors.push(format!("upstreams.{}", u.name), e);
                        pools.push(None);
                    }
                },
            }
        }
        for (i, l) in config.listeners.iter().enumerate() {
            if let Some(tls) = &l.tls
                && let Err(e) = crate::tls::server_config(tls)
            {
                errors.push(format!("listeners[{i}].tls"), e);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let snapshot = Snapshot::new(config, shared)?;
        let health = if start_health {
            pools
                .iter()
                .flatten()
                .map(|p| p.start_health_checks())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Runtime {
            snapshot,
            pools,
            _health: health,
        })
    }

    pub fn config(&self) -> &Config {
        &self.snapshot.config
    }
}
