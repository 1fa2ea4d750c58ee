//! Rejections and their stable reason codes.

use std::borrow::Cow;

use http::{HeaderName, HeaderValue, StatusCode};

/// Why a request was refused or failed. The code is stable: it appears in audit events, in
/// metrics labels and in the problem+json `type` (`urn:portcullis:problem:<code>`). Add new
/// variants; never rename or reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The request could not be understood (malformed head, bad path encoding).
    BadRequest,
    /// No route matches the host and path: deny by default.
    RouteNotFound,
    /// A route matches the path but not the method.
    MethodNotAllowed,
    /// The client address is on a deny list or missing from an allow list.
    IpDenied,
    /// The client address is banned for a while, after too many refusals of the kinds a ban
    /// rule counts (403 with `Retry-After`).
    IpBanned,
    /// The request target is longer than allowed.
    UriTooLong,
    /// More header fields than allowed.
    TooManyHeaders,
    /// The header section, or one header field, is larger than allowed.
    HeadersTooLarge,
    /// The body is larger than the route allows.
    BodyTooLarge,
    /// The body was cut short or malformed.
    BodyReadFailed,
    /// The body arrived too slowly (a gap longer than allowed, or below the minimum rate).
    BodyTimeout,
    /// The request head began but was not complete within the header read timeout.
    HeaderTimeout,
    /// Every target of the upstream is unhealthy or ejected.
    NoHealthyUpstream,
    /// The upstream could not be reached or failed mid-exchange.
    UpstreamError,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// An internal failure of the gateway itself.
    Internal,
    /// No valid credential: missing, malformed, expired, badly signed, revoked (401).
    Unauthenticated,
    /// A credential could not be checked because what verifies it is unavailable: no keys
    /// were ever loaded from the issuer, the introspection endpoint or the key store is down
    /// and nothing is cached (503, fail closed).
    AuthUnavailable,
    /// Authenticated, but not allowed: missing scope or role, a constraint (ownership, tenant)
    /// not met, a policy denied, or the request's risk is too high (403).
    Forbidden,
    /// The caller must authenticate again, more strongly or more recently (401 with an
    /// RFC 9470 `insufficient_user_authentication` challenge).
    StepUpRequired,
    /// An authorization policy could not be evaluated (external policy server down or slow,
    /// a policy error) and the route fails closed (503).
    AuthzUnavailable,
    /// A response could not be filtered as the route requires (field masks on a body that is
    /// not JSON, compressed, or too large): withheld rather than leaked (502).
    ResponseFilterFailed,
    /// A rate limit, quota or concurrency limit is exhausted (429 with `Retry-After`).
    RateLimited,
    /// The shared rate-limit store cannot answer and the limit fails closed (503).
    RateLimitUnavailable,
    /// The gateway is shedding load to stay healthy, lowest priority first (503).
    Overloaded,
    /// The WAF found an attack: the anomaly score reached the route's threshold, or a rule
    /// that blocks outright matched (403; the body carries only the request id).
    WafBlocked,
    /// The request does not match the route's API contract (OpenAPI): a parameter or the body
    /// violates its schema, a required one is missing, or the JSON body breaks a parsing limit
    /// (400; the body lists each violation with its location).
    ContractViolation,
    /// The request body's media type is not one the route's API contract declares (415).
    UnsupportedMediaType,
    /// A CORS preflight from an origin, or for a method or header, the route does not allow
    /// (403, no CORS headers).
    CorsRejected,
    /// The request came on a TLS connection whose handshake ran under client-certificate rules
    /// (`listeners[].tls.client_auth`) a reload has changed since, and the listener now requires
    /// a certificate: the client must open a new connection (421; the connection ends).
    ClientAuthChanged,
}

impl RejectReason {
    /// Every reason, for documentation and exhaustive tests.
    pub const ALL: &'static [RejectReason] = &[
        RejectReason::BadRequest,
        RejectReason::RouteNotFound,
        RejectReason::MethodNotAllowed,
        RejectReason::IpDenied,
        RejectReason::IpBanned,
        RejectReason::UriTooLong,
        RejectReason::TooManyHeaders,
        RejectReason::HeadersTooLarge,
        RejectReason::BodyTooLarge,
        RejectReason::BodyReadFailed,
        RejectReason::BodyTimeout,
        RejectReason::HeaderTimeout,
        RejectReason::NoHealthyUpstream,
        RejectReason::UpstreamError,
        RejectReason::UpstreamTimeout,
        RejectReason::Internal,
        RejectReason::Unauthenticated,
        RejectReason::AuthUnavailable,
        RejectReason::Forbidden,
        RejectReason::StepUpRequired,
        RejectReason::AuthzUnavailable,
        RejectReason::ResponseFilterFailed,
        RejectReason::RateLimited,
        RejectReason::RateLimitUnavailable,
        RejectReason::Overloaded,
        RejectReason::WafBlocked,
        RejectReason::ContractViolation,
        RejectReason::UnsupportedMediaType,
        RejectReason::CorsRejected,
        RejectReason::ClientAuthChanged,
    ];

    /// Whether the client's own request caused the refusal (what a ban may count), rather
    /// than a failure of the gateway or of what it depends on. A ban's own refusal is not
    /// counted (a banned client would never be let go).
    pub const fn counts_against_client(self) -> bool {
        match self {
            RejectReason::BadRequest
            | RejectReason::RouteNotFound
            | RejectReason::MethodNotAllowed
            | RejectReason::IpDenied
            | RejectReason::UriTooLong
            | RejectReason::TooManyHeaders
            | RejectReason::HeadersTooLarge
            | RejectReason::BodyTooLarge
            | RejectReason::BodyReadFailed
            | RejectReason::BodyTimeout
            | RejectReason::HeaderTimeout
            | RejectReason::Unauthenticated
            | RejectReason::Forbidden
            | RejectReason::StepUpRequired
            | RejectReason::RateLimited
            | RejectReason::WafBlocked
            | RejectReason::ContractViolation
            | RejectReason::UnsupportedMediaType
            | RejectReason::CorsRejected => true,
            RejectReason::IpBanned
            | RejectReason::NoHealthyUpstream
            | RejectReason::UpstreamError
            | RejectReason::UpstreamTimeout
            | RejectReason::Internal
            | RejectReason::AuthUnavailable
            | RejectReason::AuthzUnavailable
            | RejectReason::ResponseFilterFailed
            | RejectReason::RateLimitUnavailable
            | RejectReason::Overloaded
            | RejectReason::ClientAuthChanged => false,
        }
    }

    /// The stable machine-readable code.
    pub const fn code(self) -> &'static str {
        match self {
            RejectReason::BadRequest => "bad_request",
            RejectReason::RouteNotFound => "route_not_found",
            RejectReason::MethodNotAllowed => "method_not_allowed",
            RejectReason::IpDenied => "ip_denied",
            RejectReason::IpBanned => "ip_banned",
            RejectReason::UriTooLong => "uri_too_long",
            RejectReason::TooManyHeaders => "too_many_headers",
            RejectReason::HeadersTooLarge => "headers_too_large",
            RejectReason::BodyTooLarge => "body_too_large",
            RejectReason::BodyReadFailed => "body_read_failed",
            RejectReason::BodyTimeout => "body_timeout",
            RejectReason::HeaderTimeout => "header_timeout",
            RejectReason::NoHealthyUpstream => "no_healthy_upstream",
            RejectReason::UpstreamError => "upstream_error",
            RejectReason::UpstreamTimeout => "upstream_timeout",
            RejectReason::Internal => "internal_error",
            RejectReason::Unauthenticated => "unauthenticated",
            RejectReason::AuthUnavailable => "auth_unavailable",
            RejectReason::Forbidden => "forbidden",
            RejectReason::StepUpRequired => "step_up_required",
            RejectReason::AuthzUnavailable => "authz_unavailable",
            RejectReason::ResponseFilterFailed => "response_filter_failed",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::RateLimitUnavailable => "rate_limit_unavailable",
            RejectReason::Overloaded => "overloaded",
            RejectReason::WafBlocked => "waf_blocked",
            RejectReason::ContractViolation => "contract_violation",
            RejectReason::UnsupportedMediaType => "unsupported_media_type",
            RejectReason::CorsRejected => "cors_rejected",
            RejectReason::ClientAuthChanged => "client_auth_changed",
        }
    }

    /// The problem `type` URI.
    pub const fn type_uri(self) -> &'static str {
        match self {
            RejectReason::BadRequest => "urn:portcullis:problem:bad_request",
            RejectReason::RouteNotFound => "urn:portcullis:problem:route_not_found",
            RejectReason::MethodNotAllowed => "urn:portcullis:problem:method_not_allowed",
            RejectReason::IpDenied => "urn:portcullis:problem:ip_denied",
            RejectReason::IpBanned => "urn:portcullis:problem:ip_banned",
            RejectReason::UriTooLong => "urn:portcullis:problem:uri_too_long",
            RejectReason::TooManyHeaders => "urn:portcullis:problem:too_many_headers",
            RejectReason::HeadersTooLarge => "urn:portcullis:problem:headers_too_large",
            RejectReason::BodyTooLarge => "urn:portcullis:problem:body_too_large",
            RejectReason::BodyReadFailed => "urn:portcullis:problem:body_read_failed",
            RejectReason::BodyTimeout => "urn:portcullis:problem:body_timeout",
            RejectReason::HeaderTimeout => "urn:portcullis:problem:header_timeout",
            RejectReason::NoHealthyUpstream => "urn:portcullis:problem:no_healthy_upstream",
            RejectReason::UpstreamError => "urn:portcullis:problem:upstream_error",
            RejectReason::UpstreamTimeout => "urn:portcullis:problem:upstream_timeout",
            RejectReason::Internal => "urn:portcullis:problem:internal_error",
            RejectReason::Unauthenticated => "urn:portcullis:problem:unauthenticated",
            RejectReason::AuthUnavailable => "urn:portcullis:problem:auth_unavailable",
            RejectReason::Forbidden => "urn:portcullis:problem:forbidden",
            RejectReason::StepUpRequired => "urn:portcullis:problem:step_up_required",
            RejectReason::AuthzUnavailable => "urn:portcullis:problem:authz_unavailable",
            RejectReason::ResponseFilterFailed => "urn:portcullis:problem:response_filter_failed",
            RejectReason::RateLimited => "urn:portcullis:problem:rate_limited",
            RejectReason::RateLimitUnavailable => "urn:portcullis:problem:rate_limit_unavailable",
            RejectReason::Overloaded => "urn:portcullis:problem:overloaded",
            RejectReason::WafBlocked => "urn:portcullis:problem:waf_blocked",
            RejectReason::ContractViolation => "urn:portcullis:problem:contract_violation",
            RejectReason::UnsupportedMediaType => "urn:portcullis:problem:unsupported_media_type",
            RejectReason::CorsRejected => "urn:portcullis:problem:cors_rejected",
            RejectReason::ClientAuthChanged => "urn:portcullis:problem:client_auth_changed",
        }
    }

    /// The HTTP status this reason answers with.
    pub const fn status(self) -> StatusCode {
        match self {
            RejectReason::BadRequest => StatusCode::BAD_REQUEST,
            RejectReason::RouteNotFound => StatusCode::NOT_FOUND,
            RejectReason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RejectReason::IpDenied | RejectReason::IpBanned => StatusCode::FORBIDDEN,
            RejectReason::UriTooLong => StatusCode::URI_TOO_LONG,
            RejectReason::TooManyHeaders | RejectReason::HeadersTooLarge => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            RejectReason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RejectReason::BodyReadFailed => StatusCode::BAD_REQUEST,
            RejectReason::BodyTimeout | RejectReason::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            RejectReason::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
            RejectReason::UpstreamError => StatusCode::BAD_GATEWAY,
            RejectReason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            RejectReason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            RejectReason::Unauthenticated => StatusCode::UNAUTHORIZED,
            RejectReason::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RejectReason::Forbidden => StatusCode::FORBIDDEN,
            RejectReason::StepUpRequired => StatusCode::UNAUTHORIZED,
            RejectReason::AuthzUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            RejectReason::ResponseFilterFailed => StatusCode::BAD_GATEWAY,
            RejectReason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            RejectReason::RateLimitUnavailable | RejectReason::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RejectReason::WafBlocked => StatusCode::FORBIDDEN,
            RejectReason::ContractViolation => StatusCode::BAD_REQUEST,
            RejectReason::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RejectReason::CorsRejected => StatusCode::FORBIDDEN,
            RejectReason::ClientAuthChanged => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    /// A short human title (the problem `title`).
    pub const fn title(self) -> &'static str {
        match self {
            RejectReason::BadRequest => "Bad request",
            RejectReason::RouteNotFound => "No route for this request",
            RejectReason::MethodNotAllowed => "Method not allowed",
            RejectReason::IpDenied => "Client address not allowed",
            RejectReason::IpBanned => "Client address banned",
            RejectReason::UriTooLong => "Request target too long",
            RejectReason::TooManyHeaders => "Too many header fields",
            RejectReason::HeadersTooLarge => "Header section too large",
            RejectReason::BodyTooLarge => "Request body too large",
            RejectReason::BodyReadFailed => "Request body could not be read",
            RejectReason::BodyTimeout => "Request body too slow",
            RejectReason::HeaderTimeout => "Request head too slow",
            RejectReason::NoHealthyUpstream => "No healthy upstream",
            RejectReason::UpstreamError => "Upstream failed",
            RejectReason::UpstreamTimeout => "Upstream timed out",
            RejectReason::Internal => "Internal gateway error",
            RejectReason::Unauthenticated => "Authentication required",
            RejectReason::AuthUnavailable => "Authentication unavailable",
            RejectReason::Forbidden => "Forbidden",
            RejectReason::StepUpRequired => "Stronger authentication required",
            RejectReason::AuthzUnavailable => "Authorization unavailable",
            RejectReason::ResponseFilterFailed => "Response could not be filtered",
            RejectReason::RateLimited => "Too many requests",
            RejectReason::RateLimitUnavailable => "Rate limiting unavailable",
            RejectReason::Overloaded => "Gateway overloaded",
            RejectReason::WafBlocked => "Request blocked",
            RejectReason::ContractViolation => "Request does not match the API contract",
            RejectReason::UnsupportedMediaType => "Unsupported media type",
            RejectReason::CorsRejected => "Cross-origin request not allowed",
            RejectReason::ClientAuthChanged => "Client certificate rules changed",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// One way a request (or a response) breaks its API contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where: `body:/items/0/qty`, `query:limit`, `path:id`, `header:x-trace`, `cookie:session`,
    /// `body` (the body as a whole), `content-type`.
    pub location: String,
    /// What is wrong, in words that quote the contract (`must be >= 1`), never the input.
    pub message: String,
}

impl Violation {
    pub fn new(location: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            location: location.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// A refusal: the reason, a detail for the client, and headers the response must carry
/// (`Allow`, `Retry-After`, `WWW-Authenticate` …).
#[derive(Debug, Clone)]
pub struct Rejection {
    pub reason: RejectReason,
    /// Client-facing explanation. Never echo secrets or large input here.
    pub detail: Cow<'static, str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Each contract violation, listed in the problem body (`violations`). Capped by the step
    /// that found them. (A boxed slice: rejections travel through every step's verdict, and
    /// almost all of them have none.)
    pub violations: Box<[Violation]>,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            headers: Vec::new(),
            violations: Box::default(),
        }
    }

    pub fn with_violations(mut self, violations: Vec<Violation>) -> Self {
        self.violations = violations.into_boxed_slice();
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.reason.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_and_types_are_unique_and_consistent() {
        let mut codes = HashSet::new();
        for r in RejectReason::ALL {
            assert!(codes.insert(r.code()), "duplicate code {}", r.code());
            assert_eq!(
                r.type_uri(),
                format!("urn:portcullis:problem:{}", r.code()),
                "type uri of {r:?}"
            );
            assert!(r.status().is_client_error() || r.status().is_server_error());
        }
    }
}
