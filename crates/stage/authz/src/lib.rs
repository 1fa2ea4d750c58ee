//! # portcullis-authz
//!
//! The authorization step: after authentication, decide what the caller may do.
//!
//! * **Takes**: the matched route, the verified [`portcullis_core::Principal`], the request head.
//! * **Produces**: an [`portcullis_core::AuthzDecision`] in the context (for audit), headers
//!   for the upstream (verified tenant, policy headers) and, with field masks, a response filter.
//! * **Rejects**: 403 `forbidden` (scope, role, constraint, policy, risk, no rule), 401
//!   `step_up_required` (RFC 9470 challenge), 503 `authz_unavailable` (a policy that cannot be
//!   evaluated, fail closed).
//!
//! Default deny: an authenticated route without any rule refuses every request unless it says
//! `allow: any-authenticated`.

#![forbid(unsafe_code)]

pub mod config;
pub mod constraints;
pub mod fieldmask;
pub mod geo;
pub mod input;
pub mod opa;
pub mod rego;
pub mod risk;
pub mod rules;
pub mod stage;

use std::sync::Arc;

pub use config::{AuthzSettings, RawAuthz, RawRouteAuthz, RouteAuthz};
pub use stage::{Authz, AuthzStage, FailureCount};

/// State that outlives configuration snapshots: the devices seen per subject.
pub struct AuthzState {
    devices: Arc<risk::DeviceMemory>,
}

impl AuthzState {
    pub fn new() -> Arc<AuthzState> {
        Arc::new(AuthzState {
            devices: Arc::new(risk::DeviceMemory::new(100_000)),
        })
    }

    /// The authorizer of a snapshot.
    pub fn build(
        &self,
        settings: &AuthzSettings,
        routes: Vec<RouteAuthz>,
        failures: FailureCount,
        waf_hits: FailureCount,
    ) -> Arc<Authz> {
        Arc::new(Authz::new(
            settings.clone(),
            routes,
            self.devices.clone(),
            failures,
            waf_hits,
        ))
    }
}
