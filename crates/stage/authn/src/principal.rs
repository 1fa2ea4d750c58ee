//! Building a [`Principal`] from verified claims.

use std::sync::Arc;

use portcullis_core::{AuthMethod, Principal};
use serde_json::{Map, Value};

use crate::config::ClaimNames;

/// Looks a dotted path (`realm_access.roles`) up in the claims.
pub use portcullis_core::claim_at as claim;

fn string(claims: &Map<String, Value>, path: &str) -> Option<String> {
    claim(claims, path)
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// A list claim: an array of strings, or one string split on spaces (and commas for roles).
fn list(claims: &Map<String, Value>, names: &[String], commas: bool) -> Vec<String> {
    for n in names {
        match claim(claims, n) {
            Some(Value::String(s)) => {
                return s
                    .split(|c: char| c == ' ' || (commas && c == ','))
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            Some(Value::Array(a)) => {
                return a
                    .iter()
                    .filter_map(|v| v.as_str())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            _ => {}
        }
    }
    Vec::new()
}

/// The principal of a verified token.
pub fn from_claims(
    method: AuthMethod,
    authority: Arc<str>,
    names: &ClaimNames,
    claims: Map<String, Value>,
) -> Principal {
    let mut p = Principal::new(method, authority);
    p.issuer = string(&claims, "iss");
    p.subject = string(&claims, &names.subject);
    p.client_id = names.client_id.iter().find_map(|n| string(&claims, n));
    p.scopes = list(&claims, &names.scopes, false);
    p.roles = list(&claims, &names.roles, true);
    p.tenant = names.tenant.as_ref().and_then(|n| string(&claims, n));
    p.tier = names.tier.as_ref().and_then(|n| string(&claims, n));
    p.credential_id = string(&claims, "jti");
    p.expires_at = claims.get("exp").and_then(|v| v.as_f64()).and_then(|f| {
        if f.is_finite() && f >= 0.0 {
            Some(f as u64)
        } else {
            None
        }
    });
    p.claims = Arc::new(claims);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identity_comes_from_the_configured_claims() {
        let names = ClaimNames {
            subject: "sub".into(),
            client_id: vec!["client_id".into(), "azp".into()],
            scopes: vec!["scope".into(), "scp".into()],
            roles: vec!["realm_access.roles".into()],
            tenant: Some("org.id".into()),
            tier: None,
        };
        let claims = json!({
            "iss": "https://idp", "sub": "u1", "azp": "web", "scp": ["a", "b"],
            "realm_access": {"roles": ["admin", "ops"]}, "org.id": "t9", "jti": "j1", "exp": 2000000000
        });
        let p = from_claims(
            AuthMethod::Jwt,
            Arc::from("idp"),
            &names,
            claims.as_object().unwrap().clone(),
        );
        assert_eq!(p.subject.as_deref(), Some("u1"));
        assert_eq!(p.client_id.as_deref(), Some("web"));
        assert_eq!(p.scopes, ["a", "b"]);
        assert_eq!(p.roles, ["admin", "ops"]);
        assert_eq!(p.tenant.as_deref(), Some("t9"));
        assert_eq!(p.credential_id.as_deref(), Some("j1"));
        assert_eq!(p.expires_at, Some(2_000_000_000));
        assert_eq!(p.issuer.as_deref(), Some("https://idp"));
    }

    #[test]
    fn scope_strings_split_on_spaces() {
        let names = ClaimNames {
            subject: "sub".into(),
            client_id: vec![],
            scopes: vec!["scope".into()],
            roles: vec!["roles".into()],
            tenant: None,
            tier: None,
        };
        let claims = json!({"scope": "read:a  write:a", "roles": "x,y z"});
        let p = from_claims(
            AuthMethod::Jwt,
            Arc::from("i"),
            &names,
            claims.as_object().unwrap().clone(),
        );
        assert_eq!(p.scopes, ["read:a", "write:a"]);
        assert_eq!(p.roles, ["x", "y", "z"]);
    }
}
