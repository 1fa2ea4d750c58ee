//! What the API-contract step (OpenAPI) found, and what it asks of the response.

use std::sync::Arc;

use crate::Violation;

/// The contract step's findings for one request, recorded in its audit event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContractReport {
    /// The operation the request matched (`operationId`, else `METHOD /template`).
    pub operation: Arc<str>,
    /// `false` in `detect` mode: violations were recorded, not enforced.
    pub enforced: bool,
    /// Violations of the request (in `detect` mode the request went on regardless).
    pub request: Vec<Violation>,
    /// Violations of the upstream's response (response validation is detect-only).
    pub response: Vec<Violation>,
}

/// Whether a `Content-Type` value is read as JSON: a JSON-like type — subtype `json`, `x-json`
/// or a `+json` suffix after a non-empty name, under any type (`application/json`,
/// `text/json`, `application/x-json`, `application/problem+json`) — whose type and subtype are
/// made of RFC 6838 name characters, with any parameters. One test for the response filter, the
/// contract's request step and its [`ResponseContract::apply`], so that a body is never JSON to
/// one and not to another.
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    let name = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !name(ty) || !name(sub) {
        return false;
    }
    sub.eq_ignore_ascii_case("json")
        || sub.eq_ignore_ascii_case("x-json")
        || (sub.len() > "+json".len()
            && sub
                .get(sub.len() - "+json".len()..)
                .is_some_and(|s| s.eq_ignore_ascii_case("+json")))
}

/// The response half of a route's contract, run by the engine on the upstream's answer.
///
/// The engine reads the body (up to `max_bytes`) only when [`wants_body`](Self::wants_body)
/// says so, parses it as JSON once, and hands it here together with the other response
/// filters (route field removal, authorization masks).
pub trait ResponseContract: Send + Sync + std::fmt::Debug {
    /// Whether a response with this status needs its JSON body (fields kept to the declared
    /// ones, or validation).
    fn wants_body(&self, status: http::StatusCode) -> bool;
    /// Whether [`apply`](Self::apply) may remove fields (keep-only-declared). A body that
    /// cannot be read as JSON then follows the route's policy for unfilterable bodies; a
    /// contract that only validates never withholds a response.
    fn filters(&self) -> bool;
    /// The largest body read for it; a larger one follows the route's policy for bodies that
    /// cannot be filtered.
    fn max_bytes(&self) -> u64;
    /// Checks (and, when configured, filters) one response. `body` is the parsed JSON body, or
    /// `None` when the body is empty or not JSON. Returns the violations found (response
    /// validation never rejects).
    fn apply(
        &self,
        status: http::StatusCode,
        content_type: Option<&str>,
        body: Option<&mut serde_json::Value>,
    ) -> Vec<Violation>;
}
