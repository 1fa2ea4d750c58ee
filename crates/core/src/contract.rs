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

/// Whether a `Content-Type` value is `application/json` or `application/*+json` (a non-empty
/// token name before `+json`), with any parameters: the bodies the response filter parses as
/// JSON. One test for the filter and for the contract's [`ResponseContract::apply`], so that a
/// body is never JSON to one and not to the other.
pub fn is_json_content_type(s: &str) -> bool {
    let essence = s.split_once(';').map_or(s, |(e, _)| e).trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    if !ty.eq_ignore_ascii_case("application") {
        return false;
    }
    if sub.eq_ignore_ascii_case("json") {
        return true;
    }
    sub.len() > "+json".len()
        && sub
            .get(sub.len() - "+json".len()..)
            .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json"))
        && sub
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
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
