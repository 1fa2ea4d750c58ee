//! # portcullis-limits
//!
//! Request size limits.
//!
//! * **Takes**: the request head, before any other inspection ([`HeadLimitsStage`]), and, once
//!   the route is known, its `Content-Length` ([`BodyLimitStage`]).
//! * **Rejects**: `414 uri_too_long`, `431 too_many_headers`, `431 headers_too_large`,
//!   `413 body_too_large`.
//! * **Invariants**: a declared `Content-Length` above the limit is refused before a byte of
//!   the body is read; a body without a length (chunked, h2) is counted as it streams, and the
//!   engine cuts it off at [`RequestCtx::body_limit`] — so the limit holds whatever the framing.

#![forbid(unsafe_code)]

use portcullis_core::units::RawSize;
use portcullis_core::{
    ConfigErrors, GatewayRequest, RejectReason, Rejection, RequestCtx, Stage, StageId, Step,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const DEFAULT_MAX_URI_BYTES: u64 = 8 * 1024;
pub const DEFAULT_MAX_HEADER_COUNT: u64 = 100;
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 * 1024;
pub const DEFAULT_MAX_HEADER_FIELD_BYTES: u64 = 8 * 1024;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;

/// Gateway-wide limits on the request head, and the default body limit of routes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Longest request target (path and query) in bytes. Default 8KiB.
    #[serde(default = "default_uri")]
    pub max_uri_bytes: RawSize,
    /// Most header fields in a request. Default 100.
    #[serde(default = "default_count")]
    pub max_header_count: u64,
    /// Largest header section (every name and value) in bytes. Default 32KiB.
    #[serde(default = "default_headers")]
    pub max_header_bytes: RawSize,
    /// Largest single header field (name and value) in bytes. Default 8KiB.
    #[serde(default = "default_field")]
    pub max_header_field_bytes: RawSize,
    /// Default largest body for routes that set none. Default 1MiB.
    #[serde(default = "default_body")]
    pub max_body_bytes: RawSize,
}

fn default_uri() -> RawSize {
    RawSize::Bytes(DEFAULT_MAX_URI_BYTES)
}
fn default_count() -> u64 {
    DEFAULT_MAX_HEADER_COUNT
}
fn default_headers() -> RawSize {
    RawSize::Bytes(DEFAULT_MAX_HEADER_BYTES)
}
fn default_field() -> RawSize {
    RawSize::Bytes(DEFAULT_MAX_HEADER_FIELD_BYTES)
}
fn default_body() -> RawSize {
    RawSize::Bytes(DEFAULT_MAX_BODY_BYTES)
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_uri_bytes: default_uri(),
            max_header_count: default_count(),
            max_header_bytes: default_headers(),
            max_header_field_bytes: default_field(),
            max_body_bytes: default_body(),
        }
    }
}

/// Compiled head limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    pub max_uri_bytes: u64,
    pub max_header_count: u64,
    pub max_header_bytes: u64,
    pub max_header_field_bytes: u64,
    /// The default body limit for routes.
    pub max_body_bytes: u64,
}

impl HeadLimits {
    pub fn compile(raw: &RawLimits, path: &str, errors: &mut ConfigErrors) -> HeadLimits {
        let l = HeadLimits {
            max_uri_bytes: raw
                .max_uri_bytes
                .compile(&format!("{path}.max_uri_bytes"), errors),
            max_header_count: raw.max_header_count,
            max_header_bytes: raw
                .max_header_bytes
                .compile(&format!("{path}.max_header_bytes"), errors),
            max_header_field_bytes: raw
                .max_header_field_bytes
                .compile(&format!("{path}.max_header_field_bytes"), errors),
            max_body_bytes: raw
                .max_body_bytes
                .compile(&format!("{path}.max_body_bytes"), errors),
        };
        for (name, v) in [
            ("max_uri_bytes", l.max_uri_bytes),
            ("max_header_count", l.max_header_count),
            ("max_header_bytes", l.max_header_bytes),
            ("max_header_field_bytes", l.max_header_field_bytes),
        ] {
            if v == 0 {
                errors.push(format!("{path}.{name}"), "must be greater than 0");
            }
        }
        if l.max_header_field_bytes > l.max_header_bytes {
            errors.push(
                format!("{path}.max_header_field_bytes"),
                "must not exceed max_header_bytes",
            );
        }
        l
    }

    /// Checks a request head; `Err` carries the rejection.
    pub fn check(&self, head: &http::request::Parts) -> Result<(), Rejection> {
        let uri_len = head
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().len())
            .unwrap_or(1) as u64;
        if uri_len > self.max_uri_bytes {
            return Err(Rejection::new(
                RejectReason::UriTooLong,
                format!(
                    "the request target is {uri_len} bytes; at most {} are accepted",
                    self.max_uri_bytes
                ),
            ));
        }
        let count = head.headers.len() as u64;
        if count > self.max_header_count {
            return Err(Rejection::new(
                RejectReason::TooManyHeaders,
                format!(
                    "the request has {count} header fields; at most {} are accepted",
                    self.max_header_count
                ),
            ));
        }
        let mut total: u64 = 0;
        for (name, value) in &head.headers {
            // name + ": " + value + CRLF, as on the wire in HTTP/1.1
            let field = (name.as_str().len() + value.len() + 4) as u64;
            if field > self.max_header_field_bytes {
                return Err(Rejection::new(
                    RejectReason::HeadersTooLarge,
                    format!(
                        "the header field \"{}\" is {field} bytes; at most {} are accepted",
                        name.as_str(),
                        self.max_header_field_bytes
                    ),
                ));
            }
            total += field;
        }
        if total > self.max_header_bytes {
            return Err(Rejection::new(
                RejectReason::HeadersTooLarge,
                format!(
                    "the header section is {total} bytes; at most {} are accepted",
                    self.max_header_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Step 1: head limits, before anything else looks at the request.
pub struct HeadLimitsStage {
    limits: HeadLimits,
}

impl HeadLimitsStage {
    pub const ID: StageId = StageId("request_limits");

    pub fn new(limits: HeadLimits) -> Self {
        HeadLimitsStage { limits }
    }
}

impl Stage for HeadLimitsStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, _ctx: &'a mut RequestCtx) -> Step<'a> {
        match self.limits.check(&req.head) {
            Ok(()) => Step::CONTINUE,
            Err(r) => Step::reject(r),
        }
    }
}

/// After routing: the route's body limit. A declared length above it is refused at once; the
/// limit is also written to the context for the engine to enforce while streaming.
pub struct BodyLimitStage {
    /// Indexed by route id.
    per_route: Vec<u64>,
    default: u64,
}

impl BodyLimitStage {
    pub const ID: StageId = StageId("body_limit");

    pub fn new(per_route: Vec<u64>, default: u64) -> Self {
        BodyLimitStage { per_route, default }
    }
}

impl Stage for BodyLimitStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        let limit = ctx
            .route_id()
            .and_then(|id| self.per_route.get(id.0).copied())
            .unwrap_or(self.default);
        ctx.body_limit = Some(limit);
        let declared =
            portcullis_core::header_value(&req.head.headers, &http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(len) if len > limit => Step::reject(Rejection::new(
                RejectReason::BodyTooLarge,
                format!("the request body is {len} bytes; at most {limit} are accepted"),
            )),
            _ => Step::CONTINUE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        let mut e = ConfigErrors::new();
        let raw = RawLimits {
            max_uri_bytes: RawSize::Bytes(20),
            max_header_count: 3,
            max_header_bytes: RawSize::Text("100B".into()),
            max_header_field_bytes: RawSize::Bytes(50),
            max_body_bytes: RawSize::Bytes(10),
        };
        let l = HeadLimits::compile(&raw, "limits", &mut e);
        assert!(e.is_empty(), "{e}");
        l
    }

    fn head(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn reason(r: Result<(), Rejection>) -> Option<RejectReason> {
        r.err().map(|r| r.reason)
    }

    #[test]
    fn uri_length() {
        let l = limits();
        assert_eq!(reason(l.check(&head("/short", &[]))), None);
        assert_eq!(
            reason(l.check(&head("/this/is/longer/than/twenty", &[]))),
            Some(RejectReason::UriTooLong)
        );
    }

    #[test]
    fn header_count_field_and_section() {
        let l = limits();
        assert_eq!(
            reason(l.check(&head(
                "/",
                &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]
            ))),
            Some(RejectReason::TooManyHeaders)
        );
        let long = "x".repeat(60);
        assert_eq!(
            reason(l.check(&head("/", &[("a", &long)]))),
            Some(RejectReason::HeadersTooLarge)
        );
        let mid = "x".repeat(40);
        assert_eq!(
            reason(l.check(&head("/", &[("a", &mid), ("b", &mid), ("c", &mid)]))),
            Some(RejectReason::HeadersTooLarge)
        );
    }

    #[test]
    fn zero_and_inconsistent_limits_are_refused() {
        let raw = RawLimits {
            max_uri_bytes: RawSize::Bytes(0),
            max_header_field_bytes: RawSize::Bytes(1 << 20),
            max_body_bytes: RawSize::Text("lots".into()),
            ..RawLimits::default()
        };
        let mut e = ConfigErrors::new();
        HeadLimits::compile(&raw, "limits", &mut e);
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"limits.max_uri_bytes"));
        assert!(paths.contains(&"limits.max_header_field_bytes"));
        assert!(paths.contains(&"limits.max_body_bytes"));
    }
}
