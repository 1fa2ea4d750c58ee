//! What the authorization step decided (for audit) and what it asks of the response.

use std::sync::Arc;

/// One rule's verdict. `rule` names it the way the configuration does (`route:orders`,
/// `policy:orders-write`, `rego:data.orders.allow`, `opa:main`, `owner`, `tenant`, `risk` …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleVerdict {
    pub rule: String,
    pub allowed: bool,
    /// Why, in words an operator can act on (`missing scope write:orders`).
    pub reason: String,
}

/// The authorization step's decision for one request, recorded in its audit event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzDecision {
    pub allowed: bool,
    /// The rule that decided: the first that denied, or `allow` with every rule that held.
    pub decided_by: Option<RuleVerdict>,
    /// Rules in shadow mode: evaluated and recorded, never enforced.
    pub shadow: Vec<RuleVerdict>,
    /// The request's risk score, when the route computes one.
    pub risk: Option<u32>,
    /// The risk signals that contributed, e.g. `ip_reputation`, `auth_age`.
    pub risk_signals: Vec<&'static str>,
}

/// Changes a JSON response body in place (a field mask).
pub trait JsonFilter: Send + Sync + std::fmt::Debug {
    fn apply(&self, value: &mut serde_json::Value);
}

/// A response body filter a step asks the engine to run on the upstream's answer. The engine
/// buffers the body (up to `max_bytes`), parses it as JSON and applies `json`; a body it cannot
/// filter (not JSON, compressed, larger than `max_bytes`) is withheld with 502, never passed on
/// unfiltered.
#[derive(Debug, Clone)]
pub struct ResponseFilter {
    pub json: Arc<dyn JsonFilter>,
    pub max_bytes: u64,
}
