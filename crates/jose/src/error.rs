//! Error types: [`JwtError`] for token refusals (stable codes), [`JoseError`] for key material.

/// Why a token was refused. Each variant has a stable [`code`](JwtError::code) for audit logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("alg none is refused")]
    AlgNone,
    #[error("unsupported alg")]
    AlgUnsupported,
    #[error("alg not allowed for this key")]
    AlgNotAllowed,
    #[error("token names a key source (jku/x5u/jwk/x5c)")]
    KeySourceHeader,
    #[error("critical header extensions are not supported")]
    CritUnsupported,
    #[error("unknown key id")]
    UnknownKid,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token lifetime too long")]
    LifetimeTooLong,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong token type")]
    WrongType,
    #[error("missing claim {0}")]
    MissingClaim(String),
    #[error("claim {0} has the wrong type")]
    ClaimType(String),
}

impl JwtError {
    /// Stable snake_case code for audit logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "too_large",
            JwtError::Malformed => "malformed",
            JwtError::AlgNone => "alg_none",
            JwtError::AlgUnsupported => "alg_unsupported",
            JwtError::AlgNotAllowed => "alg_not_allowed",
            JwtError::KeySourceHeader => "key_source_header",
            JwtError::CritUnsupported => "crit_unsupported",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::IssuedInFuture => "issued_in_future",
            JwtError::LifetimeTooLong => "lifetime_too_long",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::WrongType => "wrong_type",
            JwtError::MissingClaim(_) => "missing_claim",
            JwtError::ClaimType(_) => "claim_type",
        }
    }
}

/// Problems with key material: PEM, DER, JWK Sets, signing.
#[derive(Debug, thiserror::Error)]
pub enum JoseError {
    #[error("PEM: {0}")]
    Pem(String),
    #[error("key: {0}")]
    Key(String),
    #[error("JWK set: {0}")]
    Jwks(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("signing: {0}")]
    Sign(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case() {
        let all = [
            JwtError::TooLarge,
            JwtError::Malformed,
            JwtError::AlgNone,
            JwtError::AlgUnsupported,
            JwtError::AlgNotAllowed,
            JwtError::KeySourceHeader,
            JwtError::CritUnsupported,
            JwtError::UnknownKid,
            JwtError::BadSignature,
            JwtError::Expired,
            JwtError::NotYetValid,
            JwtError::IssuedInFuture,
            JwtError::LifetimeTooLong,
            JwtError::WrongIssuer,
            JwtError::WrongAudience,
            JwtError::WrongType,
            JwtError::MissingClaim("x".into()),
            JwtError::ClaimType("x".into()),
        ];
        let mut codes: Vec<&str> = all.iter().map(JwtError::code).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
