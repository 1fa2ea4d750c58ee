//! # portcullis-proxy
//!
//! The HTTP engine — the only crate that knows hyper, rustls and tokio's sockets.
//!
//! * **Takes**: client connections on the configured listeners (HTTP/1.1, h2c prior knowledge,
//!   TLS with ALPN h2/http1.1); a [`Runtime`] built from a compiled configuration.
//! * **Produces**: for every request, either the upstream's response (streamed, with
//!   hop-by-hop fields removed and the route's header rules applied) or one problem+json
//!   response from the single rejection table ([`problem`]); and exactly one audit event.
//! * **Rejects**: whatever the pipeline rejects; upstream failures become 502/503/504 problems,
//!   never a raw error or a hang (every upstream wait is bounded).
//!
//! Invariants: a request runs under exactly one [`Runtime`] (pinned at its start, so a reload
//! never changes the rules mid-request); nothing reaches an upstream unless every step said
//! `Continue`; client-supplied forwarding headers are believed only from trusted proxies.

#![forbid(unsafe_code)]

pub mod audited;
pub mod body;
pub mod echo;
mod front;
mod gate;
pub mod headers;
pub mod paced;
pub mod problem;
pub mod resets;
pub mod respfilter;
pub mod runtime;
pub mod server;
pub mod service;
pub mod sniff;
pub mod tls;
pub mod upstream;
mod wsframes;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use portcullis_audit::AuditSink;
use portcullis_config::Config;
use portcullis_core::ConfigErrors;
use portcullis_telemetry::Metrics;

/// The front's reading set against hyper's, for the `front_parse` fuzz target.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use front::differential as front_differential;
pub use runtime::Runtime;
pub use service::ConnInfo;
/// The direct upstream client's reading of answers set against hyper's, for the
/// `upstream_response` fuzz target.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use upstream::h1_differential as upstream_differential;
/// The WebSocket frame follower's invariants, for the `ws_frames` fuzz target.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use wsframes::fuzz_check as ws_frames_check;

/// The gateway's shared state: the current runtime (swapped on reload), metrics, audit, and
/// per-listener TLS contexts (swapped on reload, so certificates rotate without a restart).
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    pub audit: AuditSink,
    tls: Vec<(Arc<str>, Arc<ArcSwap<rustls::ServerConfig>>)>,
    ready: Mutex<Result<(), String>>,
    audit_dropped_seen: std::sync::atomic::AtomicU64,
    pub(crate) admission: server::Admission,
    /// State that outlives snapshots (key sets, revocations …).
    pub shared: portcullis_pipeline::Shared,
    /// Set once the stop's drain deadline has passed: requests dropped unanswered from then
    /// on were cut off by the stop, not abandoned by their clients.
    interrupted: std::sync::atomic::AtomicBool,
    /// Set at the stop signal: not ready any more (load balancers take it out), though it may
    /// serve a while longer (`server.stop_delay`).
    stopping: std::sync::atomic::AtomicBool,
    /// One reload at a time (a signal, the file watcher and the admin API may ask at once):
    /// each applies a whole configuration — TLS contexts, authentication state, runtime.
    reloading: Mutex<()>,
}

impl Gateway {
    /// Wraps a built runtime. TLS contexts are built from its listeners.
    /// `shared` must be the one `runtime` was built with.
    pub fn new(
        runtime: Runtime,
        shared: portcullis_pipeline::Shared,
        metrics: Arc<Metrics>,
        audit: AuditSink,
    ) -> Result<Arc<Gateway>, ConfigErrors> {
        let tls = tls_contexts(runtime.config())?
            .into_iter()
            .map(|(name, cfg)| (name, Arc::new(ArcSwap::new(cfg))))
            .collect();
        // Shared bans (`bans.redis`) follow the configuration that runs, never one refused;
        // so does the process-wide authentication state.
        shared.bans.share(&runtime.config().bans);
        runtime.snapshot.pipeline.activate(&shared);
        Ok(Arc::new(Gateway {
            runtime: ArcSwap::new(Arc::new(runtime)),
            metrics,
            audit,
            tls,
            ready: Mutex::new(Err("upstream hosts not resolved yet".into())),
            audit_dropped_seen: std::sync::atomic::AtomicU64::new(0),
            admission: server::Admission::default(),
            shared,
            interrupted: std::sync::atomic::AtomicBool::new(false),
            stopping: std::sync::atomic::AtomicBool::new(false),
            reloading: Mutex::new(()),
        }))
    }

    /// Marks the gateway as stopping: from now on it is not ready (`/readyz` answers 503,
    /// reason `stopping`), whatever else it could say.
    pub fn begin_stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Marks the stop's drain deadline as passed. The requests still running are then dropped
    /// with the runtime (`portcullis run` shuts it down next); each is audited and counted as
    /// `interrupted`, status 444, instead of going unrecorded.
    pub fn interrupt(&self) {
        self.interrupted
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The runtime a new request runs under.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub fn tls_for(&self, listener: &str) -> Option<Arc<ArcSwap<rustls::ServerConfig>>> {
        self.tls
            .iter()
            .find(|(n, _)| &**n == listener)
            .map(|(_, c)| c.clone())
    }

    /// Replaces the running configuration; on any error the old one stays. Blocks while the new
    /// one is built (tens to hundreds of milliseconds): callers on the runtime run it on a
    /// blocking thread (`spawn_blocking`), off the threads that serve requests. Listener changes cannot be applied live and are refused as needing a restart.
    pub fn reload(&self, config: Config) -> Result<(), ConfigErrors> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = self.try_reload(config);
        self.metrics.config_reload(result.is_ok());
        result
    }

    fn try_reload(&self, config: Config) -> Result<(), ConfigErrors> {
        let current = self.runtime();
        let mut e = ConfigErrors::new();
        let old = &current.config().listeners;
        if old.len() != config.listeners.len() {
            e.push("listeners", "adding or removing listeners needs a restart");
        }
        for (i, (a, b)) in old.iter().zip(&config.listeners).enumerate() {
            if a.name != b.name || a.address != b.address || a.tls.is_some() != b.tls.is_some() {
                e.push(
                    format!("listeners[{i}]"),
                    "changing a listener's name, address or TLS on/off needs a restart",
                );
            }
        }
        if current.config().admin.address != config.admin.address
            || current.config().admin.enabled != config.admin.enabled
        {
            e.push("admin", "changing the admin listener needs a restart");
        }
        let (a, b) = (&current.config().audit, &config.audit);
        if a.enabled != b.enabled || a.output != b.output || a.path != b.path {
            e.push("audit", "changing where audit events go needs a restart");
        }
        let (a, b) = (&current.config().logging, &config.logging);
        if a.format != b.format || a.level != b.level {
            e.push(
                "logging",
                "changing the log format or level needs a restart",
            );
        }
        let contexts = tls_contexts(&config);
        if !e.is_empty() || contexts.is_err() {
            // Every error at once: the rest is checked as `portcullis check` does, with state
            // of its own, so that nothing of the running configuration changes (a listener's
            // TLS errors are among what this finds). Key-set fetches and store connections its
            // authentication part begins end with it (their tasks hold it weakly).
            let config = Arc::new(config);
            match Runtime::build(config, false, &portcullis_pipeline::Shared::new(), None) {
                Err(more) => e.extend(more),
                Ok(_) => {
                    if let Err(tls) = contexts {
                        e.extend(tls);
                    }
                }
            }
            return Err(e);
        }
        let contexts = contexts?;
        let runtime = Runtime::build(Arc::new(config), true, &self.shared, Some(&self.metrics))?;
        for new in runtime.pools.iter().flatten() {
            if let Some(old) = current
                .pools
                .iter()
                .flatten()
                .find(|o| o.name() == new.name())
            {
                new.inherit_health(old);
            }
        }
        runtime.snapshot.pipeline.activate(&self.shared);
        // The TLS settings before the runtime: a handshake reads the runtime's client-auth
        // fingerprint, then the settings (`server.rs`), so a connection is never recorded
        // under newer rules than it was verified by (at worst under older ones, and its next
        // request then ends it: see `ConnInfo::handshake`). Keep this order.
        for (name, cfg) in contexts {
            if let Some(slot) = self.tls_for(&name) {
                slot.store(cfg);
            }
        }
        self.shared.bans.share(&runtime.config().bans);
        self.runtime.store(Arc::new(runtime));
        Ok(())
    }

    pub fn set_ready(&self, state: Result<(), String>) {
        if let Ok(mut r) = self.ready.lock() {
            *r = state;
        }
    }

    /// Ready when every upstream host resolved, every JWT issuer whose keys come from the
    /// network (`jwks_url`, discovery) has loaded them once and a revocation list shared
    /// through `auth.redis` has been read once, and the gateway is not stopping; else the
    /// reasons, joined (`stopping` alone once a stop began).
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err("stopping".into());
        }
        let upstreams = self
            .ready
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|_| Err("readiness state poisoned".into()));
        // Tokens of an issuer whose keys were never loaded cannot be verified: not ready yet.
        let mut keys = self.shared.authn.keys_pending();
        // Nor can a credential be known not to be revoked before the shared list was read.
        keys.extend(self.shared.authn.revocations_pending());
        match (upstreams, keys.is_empty()) {
            (Ok(()), true) => Ok(()),
            (Ok(()), false) => Err(keys.join("; ")),
            (Err(e), true) => Err(e),
            (Err(e), false) => Err(format!("{e}; {}", keys.join("; "))),
        }
    }

    /// Copies state kept elsewhere — upstream health, dropped audit events — into the metrics
    /// (called when metrics are scraped).
    pub fn refresh_metrics(&self) {
        let dropped = self.audit.dropped();
        let seen = self
            .audit_dropped_seen
            .swap(dropped, std::sync::atomic::Ordering::AcqRel);
        if dropped > seen {
            self.metrics.audit_dropped(dropped - seen);
        }
        let issuers = self.shared.authn.key_metrics();
        self.metrics.set_issuers_keys(
            issuers
                .iter()
                .map(|(issuer, keys, last, failures)| (issuer.as_str(), *keys, *last, *failures)),
        );
        let bans = &self.shared.bans;
        for rule in bans.take_banned_by_shared_counts() {
            self.metrics.banned(&rule);
        }
        self.metrics.set_bans(
            bans.in_force_count(std::time::Instant::now()),
            bans.sharing_status().map(|s| s.error.is_none()),
        );
        let rt = self.runtime();
        let rl = &rt.snapshot.pipeline.ratelimit;
        self.metrics.set_ratelimit(
            rl.store_up(),
            rl.keys(),
            rl.evictions(),
            rl.adaptive().map(|a| (a.factor(), a.level() as u8)),
        );
        let targets: Vec<_> = rt
            .pools
            .iter()
            .flatten()
            .map(|pool| (pool.name(), pool.health_snapshot()))
            .collect();
        self.metrics
            .set_upstream_targets(targets.iter().flat_map(|(name, snapshot)| {
                snapshot
                    .iter()
                    .map(|t| (*name, &*t.authority, t.healthy && !t.ejected, t.in_flight))
            }));
    }
}

/// A listener's name and its TLS context.
type NamedTls = (Arc<str>, Arc<rustls::ServerConfig>);

fn tls_contexts(config: &Config) -> Result<Vec<NamedTls>, ConfigErrors> {
    let mut e = ConfigErrors::new();
    let mut out = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(t) = &l.tls {
            match tls::server_config(t) {
                Ok(c) => out.push((l.name.clone(), c)),
                Err(err) => e.push(format!("listeners[{i}].tls"), err),
            }
        }
    }
    e.into_result(out)
}
