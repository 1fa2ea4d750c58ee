//! Who is calling: the verified identity the authentication step establishes, and the client
//! certificate the TLS handshake verified.

use std::sync::Arc;

/// How a principal was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    Jwt,
    Introspection,
    ApiKey,
    Mtls,
    /// A token-exchange client that authenticated at the token endpoint by its secret (only
    /// recorded there, for the audit event; no route accepts it).
    ClientSecret,
}

impl AuthMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::Introspection => "introspection",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Mtls => "mtls",
            AuthMethod::ClientSecret => "client_secret",
        }
    }
}

/// A verified identity. Built once per credential (and cached with it), shared by reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub method: AuthMethod,
    /// The configured name of what verified it: an issuer, an introspection endpoint,
    /// `api_keys`, or the listener for mTLS.
    pub authority: Arc<str>,
    /// The token's `iss` (JWT, introspection).
    pub issuer: Option<String>,
    /// The user or service (`sub`; an API key's owner; a certificate's SPIFFE id or subject).
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub tenant: Option<String>,
    /// An API key's (or a claim's) tier, e.g. `free`, `pro`.
    pub tier: Option<String>,
    /// The credential's id: a JWT's `jti`, an API key's id (a prefix of its hash).
    pub credential_id: Option<String>,
    /// Unix seconds after which the credential is no longer valid.
    pub expires_at: Option<u64>,
    /// Every claim of a token (JWT, introspection answer); empty for other methods.
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
}

impl Principal {
    pub fn new(method: AuthMethod, authority: Arc<str>) -> Principal {
        Principal {
            method,
            authority,
            issuer: None,
            subject: None,
            client_id: None,
            scopes: Vec::new(),
            roles: Vec::new(),
            tenant: None,
            tier: None,
            credential_id: None,
            expires_at: None,
            claims: Arc::default(),
        }
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// A claim by dotted path (`org.id` reaches into objects); a claim whose own name holds
    /// dots is found first.
    pub fn claim(&self, path: &str) -> Option<&serde_json::Value> {
        claim_at(&self.claims, path)
    }

    /// A claim as text: strings, and numbers and booleans as written; anything else is absent.
    pub fn claim_text(&self, path: &str) -> Option<String> {
        match self.claim(path)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// A claim of a claim set by dotted path (`realm_access.roles` reaches into objects); a
/// claim whose own name holds dots is found first.
pub fn claim_at<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    path: &str,
) -> Option<&'a serde_json::Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for part in parts {
        cur = cur.as_object()?.get(part)?;
    }
    Some(cur)
}

/// A SPIFFE id (`spiffe://trust-domain/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    pub trust_domain: String,
    /// Starts with `/`, or is empty for the trust domain itself.
    pub path: String,
}

impl SpiffeId {
    /// Parses per the SPIFFE ID spec: scheme `spiffe`, a trust domain of lowercase letters,
    /// digits, `.`, `-`, `_`; a path of segments of letters, digits, `.`, `-`, `_` with no
    /// empty, `.` or `..` segment and no trailing slash; no query, fragment, port or userinfo.
    pub fn parse(uri: &str) -> Option<SpiffeId> {
        let rest = uri.strip_prefix("spiffe://")?;
        if rest.len() > 2048 {
            return None;
        }
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let td_ok = !td.is_empty()
            && td.len() <= 255
            && td.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if !td_ok {
            return None;
        }
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty()
                    || seg == "."
                    || seg == ".."
                    || !seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                {
                    return None;
                }
            }
        }
        Some(SpiffeId {
            trust_domain: td.to_string(),
            path: path.to_string(),
        })
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// The client certificate a TLS handshake verified against the listener's CA bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject distinguished name, RFC 4514 style (`CN=svc,O=Example`).
    pub subject: String,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    pub san_uris: Vec<String>,
    pub san_dns: Vec<String>,
    /// The SPIFFE id: the certificate's only SAN URI, when that is a valid SPIFFE id (an
    /// X.509-SVID has exactly one URI SAN; with more, or an invalid one, there is none).
    pub spiffe: Option<SpiffeId>,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint_sha256: String,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds.
    pub not_after: u64,
}

impl PeerCertificate {
    /// Whether the certificate is valid at `now` (Unix seconds). It was at the handshake; a
    /// connection (or a resumed session) may outlive it.
    pub fn valid_at(&self, now: u64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_are_parsed_strictly() {
        let id = SpiffeId::parse("spiffe://prod.example/ns/orders/sa/api").unwrap();
        assert_eq!(id.trust_domain, "prod.example");
        assert_eq!(id.path, "/ns/orders/sa/api");
        assert_eq!(id.to_string(), "spiffe://prod.example/ns/orders/sa/api");
        assert_eq!(SpiffeId::parse("spiffe://td").unwrap().path, "");
        for bad in [
            "spiffe://",
            "spiffe://TD/x",
            "spiffe://td/",
            "spiffe://td//x",
            "spiffe://td/a/../b",
            "spiffe://td/./b",
            "spiffe://td:8080/x",
            "spiffe://user@td/x",
            "spiffe://td/x?q=1",
            "spiffe://td/x#f",
            "http://td/x",
            "SPIFFE://td/x",
        ] {
            assert!(SpiffeId::parse(bad).is_none(), "{bad}");
        }
    }
}
