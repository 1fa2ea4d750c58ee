//! The token endpoint itself: one RFC 8693 exchange per request.

use portcullis_core::unix_now;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use portcullis_authn::{Authn, Fail};
use portcullis_core::{AuthMethod, Principal, RequestCtx};
use serde_json::{Map, Value, json};

use crate::client::authenticate;
use crate::config::{Audience, ClientAuth, TokenExchangeSettings, valid_resource, valid_scope};
use crate::error::{OAuthError, json_response};
use crate::form::{Form, is_form_content_type};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The token types read and issued here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// A JWT or, with introspection, an opaque token.
    AccessToken,
    /// A JWT only.
    Jwt,
}

impl TokenType {
    pub fn uri(self) -> &'static str {
        match self {
            TokenType::AccessToken => ACCESS_TOKEN_TYPE,
            TokenType::Jwt => JWT_TOKEN_TYPE,
        }
    }

    fn parse(v: &str) -> Option<TokenType> {
        match v {
            ACCESS_TOKEN_TYPE => Some(TokenType::AccessToken),
            JWT_TOKEN_TYPE => Some(TokenType::Jwt),
            _ => None,
        }
    }
}

/// The token endpoint of one configuration snapshot.
#[derive(Debug)]
pub struct TokenExchange {
    settings: TokenExchangeSettings,
}

/// What was issued.
struct Issued {
    token: String,
    token_type: TokenType,
    expires_in: u64,
    scope: String,
    /// For the audit event: who asked, for whom, and the issued token's `jti`.
    client_id: String,
    by_certificate: bool,
    subject: String,
    jti: String,
}

impl TokenExchange {
    pub fn new(settings: TokenExchangeSettings) -> TokenExchange {
        TokenExchange { settings }
    }

    pub fn settings(&self) -> &TokenExchangeSettings {
        &self.settings
    }

    /// Answers one token request: 200 with the issued token, or an RFC 6749 §5.2 error. Both
    /// are `Cache-Control: no-store`. A refused client or token leaves its precise reason in
    /// `ctx.auth_failure` (audit, metrics); tokens are never logged.
    pub async fn handle(
        &self,
        head: &http::request::Parts,
        body: &[u8],
        ctx: &mut RequestCtx,
        authn: &Authn,
    ) -> Response<Bytes> {
        // The client, once it authenticated: named in the event of a refusal too.
        let mut asked: Option<(String, bool)> = None;
        match self.exchange(head, body, ctx, authn, &mut asked).await {
            Ok(i) => {
                // The audit event names the client that asked (method, `token_exchange` as
                // the authority), the subject the token was issued for and its `jti`.
                let method = if i.by_certificate {
                    AuthMethod::Mtls
                } else {
                    AuthMethod::ClientSecret
                };
                let mut p = Principal::new(method, Arc::from("token_exchange"));
                p.client_id = Some(i.client_id);
                p.subject = Some(i.subject);
                p.credential_id = Some(i.jti);
                ctx.principal = Some(Arc::new(p));
                json_response(
                    StatusCode::OK,
                    &json!({
                        "access_token": i.token,
                        "issued_token_type": i.token_type.uri(),
                        "token_type": "Bearer",
                        "expires_in": i.expires_in,
                        "scope": i.scope,
                    }),
                )
            }
            Err(e) => {
                // The precise reason, or the OAuth error code for refusals without one
                // (`invalid_scope`, `invalid_target` …).
                ctx.auth_failure = Some(e.audit.unwrap_or(e.error));
                if let Some((client_id, by_certificate)) = asked {
                    let method = if by_certificate {
                        AuthMethod::Mtls
                    } else {
                        AuthMethod::ClientSecret
                    };
                    let mut p = Principal::new(method, Arc::from("token_exchange"));
                    p.client_id = Some(client_id);
                    ctx.principal = Some(Arc::new(p));
                }
                // A client that failed to authenticate counts against its address, as a
                // refused credential on a route does (guessing secrets here is no cheaper).
                if e.error == "invalid_client" {
                    authn.record_failure(ctx.client_ip, None);
                }
                tracing::debug!(
                    request_id = %ctx.request_id,
                    error = e.error,
                    reason = e.audit.unwrap_or(""),
                    description = e.description,
                    "token exchange refused"
                );
                e.response()
            }
        }
    }

    async fn exchange(
        &self,
        head: &http::request::Parts,
        body: &[u8],
        ctx: &RequestCtx,
        authn: &Authn,
        asked: &mut Option<(String, bool)>,
    ) -> Result<Issued, OAuthError> {
        if head.method != Method::POST {
            return Err(OAuthError::method_not_allowed());
        }
        let mut types = head.headers.get_all(http::header::CONTENT_TYPE).iter();
        let form_type = match (types.next(), types.next()) {
            (Some(v), None) => v.to_str().is_ok_and(is_form_content_type),
            _ => false,
        };
        if !form_type {
            return Err(OAuthError::invalid_request(
                "the request must be application/x-www-form-urlencoded",
            ));
        }
        let form = Form::parse(body).map_err(OAuthError::invalid_request)?;
        let cert = ctx.tls.as_ref().and_then(|t| t.peer_certificate.as_deref());
        let client = authenticate(&self.settings, &head.headers, &form, cert)?;
        // A client that authenticated by its certificate: that certificate may be revoked,
        // as for `mtls` routes (and until the shared list was read, it may be without this
        // instance knowing).
        if let (Some(cert), ClientAuth::Spiffe(_) | ClientAuth::Subject(_)) = (cert, &client.auth) {
            if authn.revocations.is_cert_revoked(&cert.fingerprint_sha256) {
                return Err(OAuthError::invalid_client("client_certificate_revoked"));
            }
            if !authn.revocations.loaded() {
                return Err(OAuthError::unavailable("revocations_not_loaded"));
            }
        }
        // Authenticated (its certificate not revoked): named in the event of a refusal.
        *asked = Some((client.id.clone(), client.auth.is_mtls()));

        match form.get("grant_type") {
            None => return Err(OAuthError::invalid_request("grant_type is required")),
            Some(GRANT_TYPE) => {}
            Some(_) => return Err(OAuthError::unsupported_grant_type()),
        }
        let (Some(subject_token), Some(subject_type)) =
            (form.get("subject_token"), form.get("subject_token_type"))
        else {
            return Err(OAuthError::invalid_request(
                "subject_token and subject_token_type are required",
            ));
        };
        let subject_type = TokenType::parse(subject_type).ok_or(
            OAuthError::unsupported_token_type("subject_token_type: access_token or jwt"),
        )?;
        let actor = match (form.get("actor_token"), form.get("actor_token_type")) {
            (None, None) => None,
            (Some(t), Some(ty)) => Some((
                t,
                TokenType::parse(ty).ok_or(OAuthError::unsupported_token_type(
                    "actor_token_type: access_token or jwt",
                ))?,
            )),
            _ => {
                return Err(OAuthError::invalid_request(
                    "actor_token and actor_token_type go together",
                ));
            }
        };
        let issued_type = match form.get("requested_token_type") {
            None => TokenType::AccessToken,
            Some(t) => TokenType::parse(t).ok_or(OAuthError::invalid_request(
                "requested_token_type: only access_token or jwt are issued",
            ))?,
        };
        let audience_idx = self.audience(form.get("audience"), form.get("resource"))?;
        let Some(allowed) = client.allowed(audience_idx) else {
            return Err(OAuthError::invalid_target(
                "this client may not obtain tokens for this audience",
            ));
        };
        let requested = match form.get("scope") {
            None => None,
            Some(s) => {
                let list: Vec<&str> = s.split(' ').filter(|s| !s.is_empty()).collect();
                if list.is_empty() || !list.iter().all(|s| valid_scope(s)) {
                    return Err(OAuthError::invalid_scope(
                        "the scope parameter is malformed",
                    ));
                }
                Some(list)
            }
        };

        let subject = self
            .verify(authn, subject_token, subject_type)
            .await
            .map_err(|e| e.or_describe("the subject token is not valid"))?;
        let Some(sub) = subject_of(&subject) else {
            return Err(
                OAuthError::invalid_request("the subject token names no subject")
                    .audit("subject_missing"),
            );
        };
        let actor = match actor {
            // A subject that names who may act for it is never exchanged without that actor:
            // leaving the actor out would turn delegation into impersonation (RFC 8693 §4.4).
            None if subject.claims.contains_key("may_act") => {
                return Err(OAuthError::invalid_request(
                    "the subject token names who may act for it: an actor token is required",
                )
                .audit("may_act"));
            }
            None => None,
            Some((t, ty)) => {
                let a = self
                    .verify(authn, t, ty)
                    .await
                    .map_err(|e| e.or_describe("the actor token is not valid"))?;
                if subject_of(&a).is_none() {
                    return Err(
                        OAuthError::invalid_request("the actor token names no subject")
                            .audit("actor_subject_missing"),
                    );
                }
                if !may_act(&subject, &a) {
                    return Err(OAuthError::invalid_request(
                        "the actor may not act for this subject",
                    )
                    .audit("may_act"));
                }
                Some(a)
            }
        };

        let scopes = grant(requested.as_deref(), &subject.scopes, allowed);
        if scopes.is_empty() {
            return Err(OAuthError::invalid_scope(
                "none of the scopes can be granted to this client for this audience",
            ));
        }

        let Some(audience) = self.settings.audiences.get(audience_idx) else {
            return Err(OAuthError::server_error("audience_index"));
        };
        let now = unix_now();
        let mut exp = now.saturating_add(audience.ttl.as_secs().max(1));
        for e in [
            subject.expires_at,
            actor.as_ref().and_then(|a| a.expires_at),
        ]
        .into_iter()
        .flatten()
        {
            exp = exp.min(e);
        }
        if exp <= now {
            return Err(
                OAuthError::invalid_request("the subject token is not valid").audit("expired"),
            );
        }

        let scope = scopes.join(" ");
        let mut c = Map::new();
        c.insert(
            "iss".into(),
            Value::String(authn.settings.internal_token.issuer.clone()),
        );
        c.insert("aud".into(), Value::String(audience.name.clone()));
        c.insert("sub".into(), Value::String(sub.clone()));
        c.insert("client_id".into(), Value::String(client.id.clone()));
        c.insert("scope".into(), Value::String(scope.clone()));
        c.insert("iat".into(), Value::from(now));
        c.insert("exp".into(), Value::from(exp));
        c.insert(
            "jti".into(),
            Value::String(random_id().ok_or(OAuthError::server_error("random"))?),
        );
        if let Some(iss) = &subject.issuer {
            c.insert("orig_iss".into(), Value::String(iss.clone()));
        }
        if let Some(act) = act_claim(&subject, actor.as_deref()) {
            c.insert("act".into(), act);
        }
        let typ = match issued_type {
            TokenType::AccessToken => "at+jwt",
            TokenType::Jwt => "JWT",
        };
        let token = authn.signer.sign(typ, &c).map_err(|e| {
            tracing::warn!(request_id = %ctx.request_id, error = %e, "token exchange: signing failed");
            OAuthError::server_error("sign_failed")
        })?;
        tracing::debug!(
            request_id = %ctx.request_id,
            client = %client.id,
            audience = %audience.name,
            subject = %sub,
            actor = actor.as_deref().and_then(subject_of).unwrap_or_default(),
            scope = %scope,
            expires_in = exp - now,
            "token exchanged"
        );
        let jti = c
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(Issued {
            token,
            token_type: issued_type,
            expires_in: exp - now,
            scope,
            by_certificate: matches!(client.auth, ClientAuth::Spiffe(_) | ClientAuth::Subject(_)),
            client_id: client.id.clone(),
            subject: sub,
            jti,
        })
    }

    /// The audience named by `audience` and/or `resource` (by name or resource URI); when
    /// both are given they must name the same one.
    fn audience(
        &self,
        audience: Option<&str>,
        resource: Option<&str>,
    ) -> Result<usize, OAuthError> {
        let find = |v: &str| {
            self.settings
                .audiences
                .iter()
                .position(|a: &Audience| a.name == v || a.resources.iter().any(|r| r == v))
        };
        if resource.is_some_and(|r| !valid_resource(r)) {
            return Err(OAuthError::invalid_target(
                "resource must be an absolute URI without fragment",
            ));
        }
        let unknown = || OAuthError::invalid_target("unknown audience");
        match (audience, resource) {
            (None, None) => Err(OAuthError::invalid_request(
                "audience or resource is required",
            )),
            (Some(v), None) | (None, Some(v)) => find(v).ok_or_else(unknown),
            (Some(a), Some(r)) => {
                let (a, r) = (find(a).ok_or_else(unknown)?, find(r).ok_or_else(unknown)?);
                if a != r {
                    return Err(OAuthError::invalid_target(
                        "audience and resource name different audiences",
                    ));
                }
                Ok(a)
            }
        }
    }

    /// Verifies a subject or actor token as authentication would, among the trusted issuers
    /// only (a `jwt` token type never goes to introspection).
    async fn verify(
        &self,
        authn: &Authn,
        token: &str,
        ty: TokenType,
    ) -> Result<Arc<Principal>, OAuthError> {
        let introspection: &[usize] = match ty {
            TokenType::Jwt => &[],
            TokenType::AccessToken => &self.settings.introspection,
        };
        let p = authn
            .verify_token(token, &self.settings.jwt_issuers, introspection)
            .await
            .map_err(|f| match f {
                Fail::Invalid(code) => OAuthError::invalid_request("").audit(code),
                Fail::Unavailable(code) => OAuthError::unavailable(code),
            })?;
        // A sender-constrained token (`cnf`: bound to a certificate or a key) is good only
        // from its holder, which the endpoint cannot tell: exchanged, it would become a
        // bearer token anyone holding a stolen copy could obtain.
        if p.claims.contains_key("cnf") {
            return Err(OAuthError::invalid_request(
                "a sender-constrained token (cnf) is not exchanged for a bearer token",
            )
            .audit("sender_constrained"));
        }
        Ok(p)
    }
}

impl OAuthError {
    /// Fills in the description of an `invalid_request` made without one.
    fn or_describe(mut self, description: &'static str) -> OAuthError {
        if self.description.is_empty() {
            self.description = description;
        }
        self
    }
}

/// Scopes granted: requested ∩ held ∩ allowed, or held ∩ allowed when none were requested;
/// in the order asked for (or allowed), without repeats.
pub fn grant(requested: Option<&[&str]>, held: &[String], allowed: &[String]) -> Vec<String> {
    let ok = |s: &str| held.iter().any(|h| h == s) && allowed.iter().any(|a| a == s);
    let mut out: Vec<String> = Vec::new();
    let candidates: Vec<&str> = match requested {
        Some(r) => r.to_vec(),
        None => allowed.iter().map(String::as_str).collect(),
    };
    for s in candidates {
        if ok(s) && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

/// Who a token speaks for: its subject or, for a token without one (an introspected
/// client-credentials token), its client — as RFC 9068 §2.2 has `sub` name the client then.
pub fn subject_of(p: &Principal) -> Option<String> {
    p.subject.clone().or_else(|| p.client_id.clone())
}

/// The `act` claim (RFC 8693 §4.1): the actor's `sub`, with the subject token's own `act`
/// (prior actors) nested inside; without an actor, the subject token's `act` is kept. The
/// actor token's own `sub` claim, with its issuer (`iss`: a `sub` is unique only within its
/// issuer); for an actor token without one, the subject it stands for (its client).
pub fn act_claim(subject: &Principal, actor: Option<&Principal>) -> Option<Value> {
    let prior = subject.claims.get("act").filter(|v| v.is_object()).cloned();
    let raw_sub = actor.and_then(|a| a.claims.get("sub").and_then(Value::as_str));
    match raw_sub
        .map(String::from)
        .or_else(|| actor.and_then(subject_of))
    {
        Some(sub) => {
            let mut m = Map::new();
            m.insert("sub".into(), Value::String(sub));
            if raw_sub.is_some()
                && let Some(iss) = actor.and_then(|a| a.issuer.clone())
            {
                m.insert("iss".into(), Value::String(iss));
            }
            if let Some(p) = prior {
                m.insert("act".into(), p);
            }
            Some(Value::Object(m))
        }
        None => prior,
    }
}

/// RFC 8693 §4.4: when the subject token carries `may_act`, the actor token's claims must
/// match every claim in it (`sub`, `iss` …) — the token's own `sub`, never the subject the
/// issuer's `claims.subject` maps nor a `client_id` (other namespaces: a user could choose
/// a name, a client be named like a user). A `sub` is unique only within its issuer, so a
/// `may_act` without `iss` admits only an actor verified by the subject token's own issuer
/// (or endpoint). A `may_act` that is not an object, or an empty one (it names no actor),
/// admits no actor.
pub fn may_act(subject: &Principal, actor: &Principal) -> bool {
    match subject.claims.get("may_act") {
        None => true,
        Some(Value::Object(m)) if m.is_empty() => false,
        Some(Value::Object(m)) => {
            (m.contains_key("iss") || same_issuer(subject, actor))
                && m.iter().all(|(k, v)| actor.claims.get(k) == Some(v))
        }
        Some(_) => false,
    }
}

/// Whether two tokens come from one issuer: the configured authority that verified them, or,
/// for two JWTs, their `iss` (pinned by the issuer's configuration: the same provider
/// configured twice is one issuer). An introspection answer's `iss` is the endpoint's word,
/// unchecked unless configured: a partner's server could name the main provider in it.
fn same_issuer(a: &Principal, b: &Principal) -> bool {
    if a.authority == b.authority {
        return true;
    }
    match (a.method, b.method, &a.issuer, &b.issuer) {
        (AuthMethod::Jwt, AuthMethod::Jwt, Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// 128 random bits, hex.
fn random_id() -> Option<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::AuthMethod;

    /// A token of issuer `i` whose `sub` claim (and so its subject) is `sub`.
    fn principal(sub: &str, claims: Value) -> Principal {
        let mut p = Principal::new(AuthMethod::Jwt, Arc::from("i"));
        p.subject = Some(sub.into());
        let mut claims = claims.as_object().cloned().unwrap_or_default();
        claims.insert("sub".into(), Value::String(sub.into()));
        p.issuer = claims.get("iss").and_then(Value::as_str).map(String::from);
        p.claims = Arc::new(claims);
        p
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scopes_are_the_intersection() {
        let held = v(&["read", "write", "admin"]);
        let allowed = v(&["read", "write", "other"]);
        assert_eq!(grant(None, &held, &allowed), ["read", "write"]);
        assert_eq!(grant(Some(&["write", "admin"]), &held, &allowed), ["write"]);
        assert_eq!(grant(Some(&["write", "write"]), &held, &allowed), ["write"]);
        assert!(grant(Some(&["admin", "other"]), &held, &allowed).is_empty());
        assert!(grant(None, &[], &allowed).is_empty());
    }

    #[test]
    fn act_nests_prior_actors() {
        let s = principal("alice", json!({"act": {"sub": "svc-a"}}));
        let a = principal("svc-b", json!({}));
        assert_eq!(
            act_claim(&s, Some(&a)),
            Some(json!({"sub": "svc-b", "act": {"sub": "svc-a"}}))
        );
        assert_eq!(act_claim(&s, None), Some(json!({"sub": "svc-a"})));
        let plain = principal("alice", json!({}));
        assert_eq!(act_claim(&plain, None), None);
        assert_eq!(act_claim(&plain, Some(&a)), Some(json!({"sub": "svc-b"})));
        // The actor's issuer, when it has one, says whose subject that is.
        let a = principal("svc-b", json!({"iss": "https://idp"}));
        assert_eq!(
            act_claim(&plain, Some(&a)),
            Some(json!({"sub": "svc-b", "iss": "https://idp"}))
        );
    }

    #[test]
    fn may_act_restricts_the_actor() {
        let a = principal("svc-b", json!({"iss": "https://idp"}));
        let open = principal("alice", json!({}));
        assert!(may_act(&open, &a));
        let ok = principal(
            "alice",
            json!({"may_act": {"sub": "svc-b", "iss": "https://idp"}}),
        );
        assert!(may_act(&ok, &a));
        let other = principal("alice", json!({"may_act": {"sub": "svc-c"}}));
        assert!(!may_act(&other, &a));
        let odd = principal("alice", json!({"may_act": "svc-b"}));
        assert!(!may_act(&odd, &a));
        // An empty may_act names nobody: it admits no actor (`all` over nothing would).
        let empty = principal("alice", json!({"may_act": {}}));
        assert!(!may_act(&empty, &a));
        // An actor token without `sub` whose client is called `svc-b` is not `sub: svc-b`.
        let mut client_only = Principal::new(AuthMethod::Jwt, Arc::from("i"));
        client_only.client_id = Some("svc-b".into());
        assert!(!may_act(&ok, &client_only));
        let by_sub = principal("alice", json!({"may_act": {"sub": "svc-b"}}));
        assert!(!may_act(&by_sub, &client_only));
        assert!(may_act(&by_sub, &a));
        // The token's own `sub`, not the subject an issuer's `claims.subject` maps (a
        // name its users may choose).
        let mut mapped = principal("123", json!({}));
        mapped.subject = Some("svc-b".into());
        assert!(!may_act(&by_sub, &mapped));
        // Without `iss`, only an actor of the subject token's own issuer: another issuer's
        // `svc-b` is another party.
        let mut partner = principal("svc-b", json!({"iss": "https://partner"}));
        partner.authority = Arc::from("partners");
        assert!(!may_act(&by_sub, &partner));
        let named = principal(
            "alice",
            json!({"may_act": {"sub": "svc-b", "iss": "https://partner"}}),
        );
        assert!(may_act(&named, &partner));
        assert!(!may_act(&named, &a));
        // One provider configured as two JWT issuers: one issuer by its (pinned) `iss`.
        let mut subject = principal(
            "alice",
            json!({"iss": "https://idp", "may_act": {"sub": "svc-b"}}),
        );
        subject.authority = Arc::from("idp-1");
        let mut actor = principal("svc-b", json!({"iss": "https://idp"}));
        actor.authority = Arc::from("idp-2");
        assert!(may_act(&subject, &actor));
        // An introspection answer's `iss` is its endpoint's word: a partner's server naming
        // the main provider is not it.
        actor.method = AuthMethod::Introspection;
        actor.authority = Arc::from("partner-introspection");
        assert!(!may_act(&subject, &actor));
    }

    /// `act.sub` is the actor token's own `sub` (with its `iss`), not the subject an issuer's
    /// `claims.subject` maps; an actor token without `sub` is named by its client, without
    /// an `iss` it would not be the subject of.
    #[test]
    fn act_names_the_actor_tokens_own_subject() {
        let plain = principal("alice", json!({}));
        let mut mapped = principal("123", json!({"iss": "https://idp"}));
        mapped.subject = Some("bob@example.com".into());
        assert_eq!(
            act_claim(&plain, Some(&mapped)),
            Some(json!({"sub": "123", "iss": "https://idp"}))
        );
        let mut client = Principal::new(AuthMethod::Introspection, Arc::from("i"));
        client.client_id = Some("svc-c".into());
        client.issuer = Some("https://idp".into());
        assert_eq!(
            act_claim(&plain, Some(&client)),
            Some(json!({"sub": "svc-c"}))
        );
    }

    #[test]
    fn jti_is_random() {
        let (a, b) = (random_id().unwrap(), random_id().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
