//! # portcullis-waf
//!
//! The native WAF (pipeline step 5): normalises what a request carries, runs CRS-class
//! detectors over every value, scores findings CRS-style and blocks, logs or stays silent per
//! route, explaining every verdict.
//!
//! * **Takes**: the request head (normalised path, query, headers, cookies) and its body
//!   buffered up to the route's inspection limit — a body labelled binary only when its first
//!   bytes are text ([`sniff`]), else it streams on.
//! * **Produces**: `RequestCtx::waf` (the report audit records) when anything matched.
//! * **Rejects**: 403 `waf_blocked` when the anomaly score reaches the route's threshold (or a
//!   blocking custom rule matches) in `block` mode; 413 `body_too_large` when a body exceeds
//!   the inspection limit and the route says `reject` in `block` mode (`detect` mode passes
//!   it, as `pass` does), or the route's body limit in any mode; 408/400 when the body
//!   trickles or breaks while being buffered.
//!
//! Layout: [`extract`] turns the request into targets; [`transform`] normalises each value
//! once per view; [`detect`] holds one module per attack class; [`engine`] runs them, applies
//! exclusions and custom rules and scores; [`sniff`] tells a body labelled binary that is
//! text; [`stage`] is the pipeline step.

#![forbid(unsafe_code)]

pub mod coding;
pub mod config;
pub mod detect;
pub mod engine;
pub mod extract;
pub mod extract_rules;
pub mod hits;
pub mod model;
pub mod sniff;
pub mod stage;
pub mod transform;

use std::sync::Arc;

pub use config::{Mode, RawWaf, RouteWaf, WafSettings};
pub use model::{Class, Finding, Location, Part, Rule, RuleId, Severity, Target};
pub use stage::{Waf, WafStage};

/// State that outlives configuration snapshots.
#[derive(Default)]
pub struct WafState {
    /// Recent hits per client address (read by the risk score).
    pub hits: Arc<hits::HitTracker>,
}

impl WafState {
    pub fn new() -> Arc<WafState> {
        Arc::new(WafState::default())
    }

    /// Builds the WAF of a snapshot.
    pub fn build(&self, settings: WafSettings, routes: Vec<RouteWaf>) -> Arc<Waf> {
        detect::warm_up();
        Arc::new(Waf::new(settings, routes, self.hits.clone()))
    }
}
