//! # portcullis-core
//!
//! The contract between the gateway engine and its security steps, and the types they share.
//!
//! * **Takes**: a request head ([`http::request::Parts`]) with a lazily buffered body
//!   ([`GatewayRequest`]) and a per-request context ([`RequestCtx`]).
//! * **Produces**: a [`Verdict`] per step — `Continue`, `Reject(Rejection)`, or (rarely) an
//!   `Answer` the gateway gives itself (a CORS preflight).
//! * **Rejects**: nothing itself; it defines the stable [`RejectReason`] codes every step uses so
//!   that audit, metrics and problem+json responses key on one vocabulary.
//!
//! Invariants:
//! * A step never writes a response body itself: it rejects, and one table in the proxy turns the
//!   rejection into HTTP (a bodiless `Answer` is the one exception). This keeps error bodies uniform and lets audit see every outcome.
//! * Steps that finish synchronously cost no allocation: [`Step::Done`] carries the verdict
//!   directly; only truly asynchronous work is boxed ([`Step::Async`]).
//! * This crate knows nothing of sockets, TLS or hyper.

#![forbid(unsafe_code)]

pub mod addr;
mod authz;
mod body;
pub mod coding;
mod contract;
mod ctx;
mod errors;
pub mod flight;
mod header;
mod host;
mod identity;
mod jsontext;
pub mod path;
pub mod query;
mod reject;
mod secret;
mod stage;
pub mod units;
mod waf;
pub mod window;

pub use authz::{AuthzDecision, JsonFilter, ResponseFilter, RuleVerdict};
pub use body::{
    BodyError, BodyLimitExceeded, BodyTooSlow, BoxBody, BoxError, GatewayRequest, Prefix,
    RequestBody,
};
pub use contract::{ContractReport, ResponseContract, is_json_content_type};
pub use ctx::{
    RequestCtx, RequestId, RouteId, RouteMatch, Scheme, TlsInfo, hex_lower, write_hex_lower,
};
pub use errors::{ConfigError, ConfigErrors};
pub use header::{
    forwarded_scheme, has_header, header_value, is_tchar, remove_disallowed_trailers,
    remove_header, remove_headers_folded, same_name_folded, trailer_allowed,
};
pub use host::normalized_host;
pub use identity::{AuthMethod, PeerCertificate, Principal, SpiffeId, claim_at};
pub use jsontext::{json_error_offset, push_json_string};
pub use reject::{RejectReason, Rejection, Violation};
pub use secret::{
    REDACTED, RawSecret, RawSecretOrString, Secret, UrlText, redact_url, redact_urls_in,
    resolve_path,
};
pub use stage::{Answer, Stage, StageId, Step, Verdict};
pub use waf::{WafMatch, WafReport};

/// Seconds since the Unix epoch (0 if the clock is before it): token times, quotas, policy
/// input.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
