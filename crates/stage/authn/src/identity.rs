//! What the upstream sees: the last request step. Client-supplied identity headers were
//! removed on every route by the authentication step (`ForgedIdentity`, so they cannot be
//! forged, not even to a policy); on authenticated routes the verified identity is
//! added as headers, the client's credential is removed (unless the route keeps it), and a
//! gateway-signed token can stand in for it.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_core::{
    GatewayRequest, Principal, RejectReason, Rejection, RequestCtx, Stage, StageId, Step,
};
use serde_json::{Map, Value};

use crate::stage::{Authn, form_pairs};
use crate::unix_now;

pub struct IdentityStage {
    authn: Arc<Authn>,
    /// Per route, the stripped names its earlier steps read as the request's input (see
    /// [`ForgedIdentity`]): their client copies are removed here, as the request leaves.
    late: Arc<[Vec<HeaderName>]>,
}

impl IdentityStage {
    pub const ID: StageId = StageId("identity");

    /// `late`: per route (in route order), the stripped names the authentication step leaves
    /// for this one (the same lists given to [`crate::AuthnStage::new`]).
    pub fn new(authn: Arc<Authn>, late: Arc<[Vec<HeaderName>]>) -> IdentityStage {
        IdentityStage { authn, late }
    }
}

/// A route's `late` names (none for a request without a route).
pub(crate) fn late_of<'a>(late: &'a [Vec<HeaderName>], ctx: &RequestCtx) -> &'a [HeaderName] {
    ctx.route_id()
        .and_then(|r| late.get(r.0))
        .map_or(&[], Vec::as_slice)
}

/// The client's copies of the identity headers (and of `identity_headers.strip`'s), removed
/// from every request on every route by the authentication step, first thing: no later step
/// — authorization's Rego and OPA input, the rate limits, the contract — reads a forged one,
/// and none that a later step adds (the verified tenant) is taken out. Except the names that a
/// later step of the request's route reads as the request's input (`late`: the tenant header
/// the route names, the risk signals' country and device headers on a route with a risk rule,
/// the API key header on a route that takes API keys — when one of those is also a stripped
/// name): those are left for that step to read, and removed by the identity step.
pub(crate) struct ForgedIdentity {
    /// Some stripped name holds `_`: every request name is then compared with `_` read as `-`.
    strip_has_underscore: bool,
    /// Per route.
    late: Arc<[Vec<HeaderName>]>,
}

impl ForgedIdentity {
    pub(crate) fn new(authn: &Authn, late: Arc<[Vec<HeaderName>]>) -> ForgedIdentity {
        ForgedIdentity {
            strip_has_underscore: authn
                .settings
                .identity
                .strip
                .iter()
                .any(|n| n.as_str().contains('_')),
            late,
        }
    }

    /// Removes every value of every such name.
    pub(crate) fn remove(&self, authn: &Authn, h: &mut HeaderMap, ctx: &RequestCtx) {
        let late = late_of(&self.late, ctx);
        // A client rarely sends these: one pass over the request's names says whether any is
        // there (comparing names, not hashing each one) before any is removed.
        if h.keys().any(|k| self.stripped(authn, k, late)) {
            let doomed: Vec<HeaderName> = h
                .keys()
                .filter(|k| self.stripped(authn, k, late))
                .cloned()
                .collect();
            for name in &doomed {
                h.remove(name);
            }
        }
    }

    /// Whether a request header called `name` is one of the stripped names. CGI, WSGI, Rack
    /// and PHP hand headers to applications as `HTTP_*` variables, with `-` and `_` both
    /// written `_`: `x_user_id` reaches them as `HTTP_X_USER_ID`, exactly as `x-user-id`
    /// would. So names are compared with `_` read as `-` — only for names holding one (or
    /// when a stripped name does), so the common case stays a plain comparison.
    fn stripped(&self, authn: &Authn, name: &HeaderName, late: &[HeaderName]) -> bool {
        let strip = &authn.settings.identity.strip;
        let n = name.as_str().as_bytes();
        let stripped = strip.contains(name)
            || ((self.strip_has_underscore || n.contains(&b'_'))
                && strip
                    .iter()
                    .any(|s| portcullis_core::same_name_folded(n, s.as_str().as_bytes())));
        stripped
            && !late
                .iter()
                .any(|l| portcullis_core::same_name_folded(n, l.as_str().as_bytes()))
    }
}

/// A header value from a verified claim: visible ASCII and spaces kept, anything else
/// percent-encoded, so a claim can never split or smuggle a header. Spaces at either end are
/// encoded too: every reader trims them from a field value, so `" admin"` would arrive as
/// `admin`.
fn value(s: &str) -> HeaderValue {
    let mut out = String::with_capacity(s.len());
    let inner = s.trim_matches(' ');
    let lead = s.len() - s.trim_start_matches(' ').len();
    // All spaces: they are all leading.
    let trail = if inner.is_empty() {
        0
    } else {
        s.len() - s.trim_end_matches(' ').len()
    };
    out.push_str(&"%20".repeat(lead));
    push_encoded(&mut out, inner, b"");
    out.push_str(&"%20".repeat(trail));
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""))
}

/// A list header's value from verified claim values, each encoded as [`value`] does and its
/// list separators (`,` and space) percent-encoded too, so that an upstream splitting the list
/// sees the elements the gateway saw: a role `dev,admin` is one role, never two.
fn list_value(items: &[String], sep: &str) -> HeaderValue {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        push_encoded(&mut out, item, b", ");
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""))
}

/// `s` with visible ASCII kept but for `%` and `also`, everything else percent-encoded.
fn push_encoded(out: &mut String, s: &str, also: &[u8]) {
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' && !also.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Whether `s` is an OAuth scope token (RFC 6749 §3.3): what a `scope` claim, split on spaces,
/// can carry.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

fn set(h: &mut http::HeaderMap, name: &HeaderName, v: Option<&str>) {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        h.insert(name.clone(), value(v));
    }
}

impl IdentityStage {
    fn mint(&self, p: &Principal, audience: &str, ctx: &RequestCtx) -> Result<String, String> {
        let it = &self.authn.settings.internal_token;
        let now = unix_now();
        let mut c = Map::new();
        c.insert("iss".into(), Value::String(it.issuer.clone()));
        c.insert("aud".into(), Value::String(audience.to_string()));
        c.insert("iat".into(), Value::from(now));
        c.insert(
            "exp".into(),
            Value::from(internal_exp(now, it.ttl, p.expires_at)),
        );
        // Unique per token, and chosen by no client (the request id may come from one).
        c.insert("jti".into(), Value::String(random_id()?));
        c.insert(
            "request_id".into(),
            Value::String(ctx.request_id.as_str().to_string()),
        );
        if let Some(s) = &p.subject {
            c.insert("sub".into(), Value::String(s.clone()));
        }
        if let Some(s) = &p.client_id {
            c.insert("client_id".into(), Value::String(s.clone()));
        }
        // Space-separated: a verified scope that is no scope token (one holding a space, say)
        // would become two to the reader; it is left out.
        let scopes: Vec<&str> = p
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|s| is_scope_token(s))
            .collect();
        if !scopes.is_empty() {
            c.insert("scope".into(), Value::String(scopes.join(" ")));
        }
        if !p.roles.is_empty() {
            c.insert(
                "roles".into(),
                Value::Array(p.roles.iter().cloned().map(Value::String).collect()),
            );
        }
        if let Some(t) = &p.tenant {
            c.insert("tenant".into(), Value::String(t.clone()));
        }
        if let Some(i) = &p.issuer {
            c.insert("orig_iss".into(), Value::String(i.clone()));
        }
        c.insert(
            "auth_method".into(),
            Value::String(p.method.as_str().into()),
        );
        // What vouched for the identity, as `x-authenticated-by` says: a subject is unique
        // only within its authority (two listeners' CAs can both issue `CN=alice`).
        c.insert("authority".into(), Value::String(p.authority.to_string()));
        self.authn.signer.sign("JWT", &c).map_err(|e| e.to_string())
    }
}

/// The internal token's `exp`: `ttl` (at least a second) from now, and never past the
/// credential's own `exp` — not even by a second when that has passed already (a JWT accepted
/// within its issuer's `leeway`): the token then carries the credential's `exp`, and the
/// upstream's own clock skew allowance decides, as the gateway's did.
fn internal_exp(now: u64, ttl: std::time::Duration, credential_exp: Option<u64>) -> u64 {
    let exp = now.saturating_add(ttl.as_secs().max(1));
    match credential_exp {
        Some(until) => exp.min(until),
        None => exp,
    }
}

/// 128 random bits in hex, from the system's generator.
fn random_id() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "no randomness for the token's jti".to_string())?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Stage for IdentityStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        let s = &self.authn.settings;
        // The client's copies of the identity headers are gone already (`ForgedIdentity`,
        // removed by the authentication step), but for those an earlier step read as input.
        let h = &mut req.head.headers;
        portcullis_core::remove_headers_folded(h, late_of(&self.late, ctx));
        let Some(route) = ctx.route_id().and_then(|r| self.authn.routes.get(r.0)) else {
            return Step::CONTINUE;
        };
        if route.methods.is_empty() {
            return Step::CONTINUE;
        }
        if !route.keep_authorization {
            portcullis_core::remove_header(h, &http::header::AUTHORIZATION);
            if let Some(k) = &s.api_keys {
                // Also spelled with `_`: CGI-style backends read `x_api_key` as `x-api-key`.
                portcullis_core::remove_headers_folded(h, std::slice::from_ref(&k.header));
            }
            if let Some(param) = &route.api_key_query {
                strip_query_param(&mut req.head.uri, param);
            }
        }
        let Some(p) = ctx.principal.clone() else {
            return Step::CONTINUE;
        };
        let h = &mut req.head.headers;
        if route.identity_headers {
            let id = &s.identity;
            set(h, &id.user, p.subject.as_deref());
            set(h, &id.client, p.client_id.as_deref());
            if !p.scopes.is_empty() {
                h.insert(id.scopes.clone(), list_value(&p.scopes, " "));
            }
            if !p.roles.is_empty() {
                h.insert(id.roles.clone(), list_value(&p.roles, ","));
            }
            set(h, &id.tenant, p.tenant.as_deref());
            set(h, &id.authenticated, Some(p.method.as_str()));
            // Who vouched for the identity: on a route accepting several issuers, one's `sub`
            // is not another's.
            set(h, &id.authority, Some(&p.authority));
        }
        if let Some(aud) = &route.internal_audience {
            match self.mint(&p, aud, ctx) {
                Ok(t) => {
                    let v = HeaderValue::from_str(&format!("Bearer {t}"))
                        .unwrap_or(HeaderValue::from_static(""));
                    req.head.headers.insert(s.internal_token.header.clone(), v);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot sign the internal token");
                    return Step::reject(Rejection::new(
                        RejectReason::Internal,
                        "the gateway could not sign the upstream token",
                    ));
                }
            }
        }
        Step::CONTINUE
    }
}

/// Removes every pair whose name an upstream framework reads as `param` (the credential must
/// not travel upstream, under any spelling: `api.key` is `api_key` to PHP).
fn strip_query_param(uri: &mut http::Uri, param: &str) {
    let Some(q) = uri.query() else { return };
    let wanted = portcullis_core::query::fold_name(param);
    if !form_pairs(q).any(|(k, _)| portcullis_core::query::fold_name(&k) == wanted) {
        return;
    }
    let kept: Vec<&str> = q
        .split('&')
        .filter(|p| {
            let k = p.split_once('=').map(|(k, _)| k).unwrap_or(p);
            let k = percent_encoding::percent_decode_str(&k.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            portcullis_core::query::fold_name(&k) != wanted
        })
        .collect();
    let pq = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = pq.parse().ok();
    if let Ok(u) = http::Uri::from_parts(parts) {
        *uri = u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_values_cannot_break_headers() {
        assert_eq!(value("alice").to_str().unwrap(), "alice");
        assert_eq!(
            value("a\r\nx-admin: 1").to_str().unwrap(),
            "a%0D%0Ax-admin: 1"
        );
        assert_eq!(value("é%").to_str().unwrap(), "%C3%A9%25");
    }

    /// Every reader trims a field value: a claim's spaces at either end are encoded, so
    /// `" admin"` does not arrive as `admin`.
    #[test]
    fn spaces_at_either_end_of_a_value_are_kept() {
        assert_eq!(value(" admin").to_str().unwrap(), "%20admin");
        assert_eq!(value("admin  ").to_str().unwrap(), "admin%20%20");
        assert_eq!(value(" a b ").to_str().unwrap(), "%20a b%20");
        assert_eq!(value("   ").to_str().unwrap(), "%20%20%20");
        assert_eq!(value("John Smith").to_str().unwrap(), "John Smith");
        assert_eq!(value("\t x").to_str().unwrap(), "%09 x");
    }

    /// The internal token never outlives the credential it stands for, not even by a second.
    #[test]
    fn the_internal_token_ends_with_its_credential() {
        let ttl = std::time::Duration::from_secs(60);
        assert_eq!(internal_exp(1000, ttl, None), 1060);
        assert_eq!(internal_exp(1000, ttl, Some(5000)), 1060);
        assert_eq!(internal_exp(1000, ttl, Some(1030)), 1030);
        assert_eq!(internal_exp(1000, ttl, Some(1000)), 1000);
        // A JWT accepted within its issuer's leeway, ten seconds past its exp.
        assert_eq!(internal_exp(1000, ttl, Some(990)), 990);
        assert_eq!(internal_exp(1000, std::time::Duration::ZERO, None), 1001);
    }

    #[test]
    fn list_elements_cannot_become_two() {
        let roles = vec!["dev,admin".to_string(), "ops".into(), "a b".into()];
        assert_eq!(
            list_value(&roles, ",").to_str().unwrap(),
            "dev%2Cadmin,ops,a%20b"
        );
        let scopes = vec!["read admin".to_string(), "write:x".into(), "%".into()];
        assert_eq!(
            list_value(&scopes, " ").to_str().unwrap(),
            "read%20admin write:x %25"
        );
        assert!(is_scope_token("read:orders"));
        for bad in ["read admin", "", "a\"b", "a\\b", "é"] {
            assert!(!is_scope_token(bad), "{bad}");
        }
        let a = random_id().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_id().unwrap());
    }

    #[test]
    fn query_credential_is_removed() {
        let mut u: http::Uri = "/a?x=1&api_key=s3cret&y=2".parse().unwrap();
        strip_query_param(&mut u, "api_key");
        assert_eq!(u.to_string(), "/a?x=1&y=2");
        let mut u: http::Uri = "/a?api%5Fkey=s".parse().unwrap();
        strip_query_param(&mut u, "api_key");
        assert_eq!(u.to_string(), "/a");
    }
}
