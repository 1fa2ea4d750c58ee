//! RFC 6749 §5.2 error responses: `{"error", "error_description"}`, never cached.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// A refused token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: StatusCode,
    /// The RFC 6749 / RFC 8693 error code.
    pub error: &'static str,
    /// Sent to the client: says what was wrong with the request, never which check of a
    /// token failed.
    pub description: &'static str,
    /// The precise reason, for the audit event and metrics only.
    pub audit: Option<&'static str>,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: &'static str) -> OAuthError {
        OAuthError {
            status,
            error,
            description,
            audit: None,
        }
    }

    pub fn invalid_request(description: &'static str) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// 401; the response carries a `Basic` challenge.
    pub fn invalid_client(audit: &'static str) -> OAuthError {
        OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
        .audit(audit)
    }

    pub fn unsupported_grant_type() -> OAuthError {
        OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only urn:ietf:params:oauth:grant-type:token-exchange is served here",
        )
    }

    pub fn unsupported_token_type(description: &'static str) -> OAuthError {
        OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_token_type",
            description,
        )
    }

    pub fn invalid_target(description: &'static str) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_target", description)
    }

    pub fn invalid_scope(description: &'static str) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_scope", description)
    }

    pub fn method_not_allowed() -> OAuthError {
        OAuthError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "the token endpoint takes POST",
        )
    }

    /// What verifies tokens cannot answer: 503, to be retried.
    pub fn unavailable(audit: &'static str) -> OAuthError {
        OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "tokens cannot be verified right now; try again later",
        )
        .audit(audit)
    }

    pub fn server_error(audit: &'static str) -> OAuthError {
        OAuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the token could not be issued",
        )
        .audit(audit)
    }

    pub fn audit(mut self, reason: &'static str) -> OAuthError {
        self.audit = Some(reason);
        self
    }

    pub fn response(&self) -> Response<Bytes> {
        let body = serde_json::json!({
            "error": self.error,
            "error_description": self.description,
        });
        let mut r = json_response(self.status, &body);
        let h = r.headers_mut();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"portcullis\""),
                );
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                h.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        r
    }
}

/// A JSON response that no cache may keep (RFC 6749 §5.1).
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body.to_string()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}
