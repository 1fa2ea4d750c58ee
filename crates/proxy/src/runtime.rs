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
    /// Indexed like `config.listeners` (which no reload reorders: a reload that adds, removes
    /// or renames a listener is refused): the listener's client-certificate rules, when it asks
    /// for client certificates.
    client_auth: Box<[Option<ClientAuthRules>]>,
    /// Whether any listener asks for client certificates: requests on TLS connections whose
    /// handshake asked for none skip the comparison when none does now either.
    any_client_auth: bool,
    /// Indexed like `config.listeners`: the SPIFFE trust bundles of each, when it has some.
    spiffe: Box<[Option<Arc<crate::tls::SpiffeBundles>>]>,
    _health: Vec<HealthChecks>,
}

/// A listener's client-certificate rules (`listeners[].tls.client_auth`) as a TLS connection's
/// handshake and its later requests compare them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAuthRules {
    /// [`crate::tls::client_auth_fingerprint`]: the `required` flag and every CA certificate.
    pub fingerprint: [u8; 32],
    /// A client certificate is required (`mode: required`).
    pub required: bool,
}

/// What a TLS connection's handshake ran under: its listener's place in `config.listeners` and
/// the fingerprint of the listener's client-certificate rules then (`None`: it asked for no
/// certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub listener: usize,
    pub client_auth: Option<[u8; 32]>,
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
        let mut spiffe = Vec::with_capacity(config.listeners.len());
        for (i, l) in config.listeners.iter().enumerate() {
            if let Some(tls) = &l.tls
                && let Err(e) = crate::tls::server_config(tls)
            {
                errors.push(format!("listeners[{i}].tls"), e);
            }
            let bundles = l
                .tls
                .as_ref()
                .and_then(|t| t.client_auth.as_ref())
                .map(crate::tls::SpiffeBundles::new)
                .transpose()
                .map(Option::flatten);
            match bundles {
                Ok(b) => spiffe.push(b.map(Arc::new)),
                Err(e) => {
                    errors.push(format!("listeners[{i}].tls"), e);
                    spiffe.push(None);
                }
            }
        }
        // The steps are compiled even when a pool or a listener failed: every error at once.
        let snapshot = Snapshot::new(Arc::clone(&config), shared);
        let snapshot = match snapshot {
            Ok(s) if errors.is_empty() => s,
            Ok(_) => return Err(errors),
            Err(more) => {
                errors.extend(more);
                return Err(errors);
            }
        };
        let client_auth: Box<[Option<ClientAuthRules>]> = config
            .listeners
            .iter()
            .map(|l| {
                let ca = l.tls.as_ref()?.client_auth.as_ref()?;
                Some(ClientAuthRules {
                    fingerprint: crate::tls::client_auth_fingerprint(ca),
                    required: ca.required,
                })
            })
            .collect();
        let any_client_auth = client_auth.iter().any(Option::is_some);
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
            client_auth,
            spiffe: spiffe.into_boxed_slice(),
            any_client_auth,
            _health: health,
        })
    }

    pub fn config(&self) -> &Config {
        &self.snapshot.config
    }

    /// The SPIFFE trust bundles of the listener at `listener`, when it has some.
    pub fn spiffe_bundles(&self, listener: usize) -> Option<Arc<crate::tls::SpiffeBundles>> {
        self.spiffe.get(listener)?.clone()
    }

    /// What a TLS connection of the listener at `listener` (its place in `config.listeners`)
    /// records at its handshake.
    pub fn handshake(&self, listener: usize) -> Handshake {
        Handshake {
            listener,
            client_auth: self
                .client_auth
                .get(listener)
                .copied()
                .flatten()
                .map(|r| r.fingerprint),
        }
    }

    /// Whether the client-certificate rules of a connection's listener differ from those its
    /// handshake ran under: `None` when they are the same, else whether the listener now
    /// requires a client certificate. A pointer and a flag to look at for a connection whose
    /// listener asked for no certificate then and none asks for one now.
    #[inline]
    pub fn client_auth_changed(&self, handshake: &Handshake) -> Option<bool> {
        if handshake.client_auth.is_none() && !self.any_client_auth {
            return None;
        }
        let now = self.client_auth.get(handshake.listener).copied().flatten();
        if now.map(|r| r.fingerprint) == handshake.client_auth {
            None
        } else {
            Some(now.is_some_and(|r| r.required))
        }
    }
}
