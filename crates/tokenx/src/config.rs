//! The `token_exchange:` section: the raw YAML and its compiled form. Names of issuers and
//! introspection endpoints are resolved against the compiled `auth` section here, so a typo
//! fails `portcullis check` with its path.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use portcullis_authn::config::{AuthSettings, parse_key_hash};
use portcullis_core::units::compile_duration;
use portcullis_core::{ConfigErrors, SpiffeId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// RFC 8693 token exchange served by the gateway. Routes reach it through an upstream of
/// `kind: token_exchange`; it trades a subject token (and an optional actor token) from a
/// trusted issuer for a short-lived token signed with the gateway's internal-token key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTokenExchange {
    /// Names of `auth.jwt` issuers whose JWTs are accepted as subject and actor tokens.
    /// Default: none.
    #[serde(default)]
    pub jwt_issuers: Vec<String>,
    /// Names of `auth.introspection` endpoints that verify opaque subject and actor tokens
    /// (`subject_token_type` access_token only). Default: none.
    #[serde(default)]
    pub introspection: Vec<String>,
    /// Lifetime of an issued token; never past the subject (or actor) token's `exp`.
    /// Default `5m`.
    #[serde(default = "default_ttl")]
    pub ttl: String,
    /// The audiences tokens are issued for, by name; the name is the issued token's `aud`.
    pub audiences: BTreeMap<String, RawAudience>,
    /// The clients allowed to exchange tokens, by client id.
    pub clients: BTreeMap<String, RawClient>,
}

fn default_ttl() -> String {
    "5m".into()
}

/// An audience tokens can be issued for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAudience {
    /// Absolute URIs (RFC 8707 resource indicators) by which the `resource` or `audience`
    /// parameter may also name this audience. Default: none (the name only).
    #[serde(default)]
    pub resources: Vec<String>,
    /// Lifetime of tokens for this audience. Default: the section's `ttl`.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A client of the token endpoint. Exactly one of `secret_hash`, `spiffe_id` and
/// `certificate_subject` says how it authenticates.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// `sha256:<64 hex digits>` of the client secret, for `client_secret_basic` and
    /// `client_secret_post` (`portcullis apikey` prints a random secret and its hash).
    #[serde(default)]
    pub secret_hash: Option<String>,
    /// mTLS (`tls_client_auth`): the SPIFFE id the verified client certificate must carry.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// mTLS (`tls_client_auth`): the verified client certificate's subject, exactly as
    /// RFC 4514 writes it (`CN=bff,O=Example`).
    #[serde(default)]
    pub certificate_subject: Option<String>,
    /// The audiences this client may obtain tokens for, each with the scopes it may obtain
    /// there (names from `audiences`).
    pub audiences: BTreeMap<String, Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Compiled

/// How a client proves who it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientAuth {
    /// SHA-256 of the secret (`client_secret_basic`, `client_secret_post`).
    Secret([u8; 32]),
    /// The SPIFFE id of the verified client certificate.
    Spiffe(String),
    /// The subject of the verified client certificate.
    Subject(String),
}

impl ClientAuth {
    pub fn is_mtls(&self) -> bool {
        !matches!(self, ClientAuth::Secret(_))
    }
}

#[derive(Debug, Clone)]
pub struct Audience {
    /// The issued `aud`.
    pub name: String,
    pub resources: Vec<String>,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub auth: ClientAuth,
    /// (index into [`TokenExchangeSettings::audiences`], allowed scopes).
    pub audiences: Vec<(usize, Vec<String>)>,
}

impl Client {
    /// The scopes this client may obtain for an audience; `None` if the audience is not its.
    pub fn allowed(&self, audience: usize) -> Option<&[String]> {
        self.audiences
            .iter()
            .find(|(a, _)| *a == audience)
            .map(|(_, s)| s.as_slice())
    }
}

/// The compiled section.
#[derive(Debug, Clone)]
pub struct TokenExchangeSettings {
    /// Indexes into [`AuthSettings::jwt`].
    pub jwt_issuers: Vec<usize>,
    /// Indexes into [`AuthSettings::introspection`].
    pub introspection: Vec<usize>,
    pub audiences: Vec<Audience>,
    pub clients: Vec<Client>,
}

impl TokenExchangeSettings {
    /// True when some client authenticates with a client certificate.
    pub fn needs_mtls(&self) -> bool {
        self.clients.iter().any(|c| c.auth.is_mtls())
    }
}

/// A scope token as RFC 6749 §3.3 allows it: printable ASCII but space, `"` and `\`.
pub fn valid_scope(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// An absolute URI without fragment, as RFC 8707 requires of a resource indicator.
pub fn valid_resource(s: &str) -> bool {
    match s.parse::<http::Uri>() {
        Ok(u) => {
            u.scheme().is_some() && u.host().is_some_and(|h| !h.is_empty()) && !s.contains('#')
        }
        Err(_) => false,
    }
}

/// Compiles the section. `auth` is the compiled `auth` section the names refer to; every
/// error is recorded with its path under `token_exchange`.
pub fn compile(
    raw: &RawTokenExchange,
    _base_dir: &Path,
    auth: &AuthSettings,
    e: &mut ConfigErrors,
) -> TokenExchangeSettings {
    let p = "token_exchange";
    let jwt_issuers = resolve(
        &raw.jwt_issuers,
        auth.jwt.iter().map(|j| &*j.name).collect(),
        &format!("{p}.jwt_issuers"),
        "auth.jwt issuer",
        e,
    );
    let introspection = resolve(
        &raw.introspection,
        auth.introspection.iter().map(|i| &*i.name).collect(),
        &format!("{p}.introspection"),
        "auth.introspection endpoint",
        e,
    );
    // A subject token is exchanged into one the gateway signs for an internal audience: one
    // minted for another party (a third-party app, another API) must not be (RFC 7519
    // §4.1.3), so the trusted issuers must say which audiences name this gateway.
    for (i, n) in raw.jwt_issuers.iter().enumerate() {
        if auth
            .jwt
            .iter()
            .any(|j| *j.name == **n && j.audiences.is_empty())
        {
            e.push(
                format!("{p}.jwt_issuers[{i}]"),
                format!(
                    "auth.jwt.{n} accepts any audience (any_audience): tokens it minted for \
                     another party would be exchanged; list there the audiences that name this \
                     gateway"
                ),
            );
        }
    }
    for (i, n) in raw.introspection.iter().enumerate() {
        if auth
            .introspection
            .iter()
            .any(|j| *j.name == **n && j.audiences.is_empty())
        {
            e.push(
                format!("{p}.introspection[{i}]"),
                format!(
                    "auth.introspection.{n} has no audiences: tokens issued for any audience \
                     would be exchanged; list there the audiences that name this gateway"
                ),
            );
        }
    }
    if raw.jwt_issuers.is_empty() && raw.introspection.is_empty() {
        e.push(
            p,
            "trust at least one issuer: list auth.jwt names in jwt_issuers or auth.introspection \
             names in introspection",
        );
    }
    let ttl = positive(&raw.ttl, &format!("{p}.ttl"), e);

    if raw.audiences.is_empty() {
        e.push(
            format!("{p}.audiences"),
            "name at least one audience tokens can be issued for",
        );
    }
    let mut audiences = Vec::new();
    let mut by_uri: HashMap<&str, &str> = HashMap::new();
    for (name, a) in &raw.audiences {
        let ap = format!("{p}.audiences.{name}");
        if name.trim().is_empty() || name.chars().any(|c| c.is_control() || c == ' ') {
            e.push(&ap, "an audience name has no spaces or control characters");
        }
        for (i, r) in a.resources.iter().enumerate() {
            let rp = format!("{ap}.resources[{i}]");
            if !valid_resource(r) {
                e.push(
                    &rp,
                    format!("\"{r}\" is not an absolute URI without fragment"),
                );
            }
            if let Some(prev) = by_uri.insert(r.as_str(), name.as_str()) {
                e.push(&rp, format!("\"{r}\" already names audience \"{prev}\""));
            }
        }
        audiences.push(Audience {
            name: name.clone(),
            resources: a.resources.clone(),
            ttl: a
                .ttl
                .as_ref()
                .map(|t| positive(t, &format!("{ap}.ttl"), e))
                .unwrap_or(ttl),
        });
    }
    // A name that is also another audience's resource would make `audience=` ambiguous.
    for a in &audiences {
        if let Some(other) = by_uri.get(a.name.as_str()).filter(|o| **o != a.name) {
            e.push(
                format!("{p}.audiences.{}", a.name),
                format!("the name is also a resource of audience \"{other}\""),
            );
        }
    }

    if raw.clients.is_empty() {
        e.push(format!("{p}.clients"), "name at least one client");
    }
    let mut clients = Vec::new();
    let mut mtls_ids: HashMap<ClientAuth, &str> = HashMap::new();
    for (id, c) in &raw.clients {
        let cp = format!("{p}.clients.{id}");
        if id.is_empty() || id.chars().any(|ch| ch.is_control()) {
            e.push(&cp, "a client id has no control characters");
        }
        let methods = [
            c.secret_hash.is_some(),
            c.spiffe_id.is_some(),
            c.certificate_subject.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if methods != 1 {
            e.push(
                &cp,
                "exactly one of secret_hash, spiffe_id, certificate_subject",
            );
        }
        let auth = if let Some(h) = &c.secret_hash {
            match parse_key_hash(h) {
                Ok(h) => Some(ClientAuth::Secret(h)),
                Err(m) => {
                    e.push(format!("{cp}.secret_hash"), m);
                    None
                }
            }
        } else if let Some(s) = &c.spiffe_id {
            match SpiffeId::parse(s) {
                Some(id) => Some(ClientAuth::Spiffe(id.to_string())),
                None => {
                    e.push(
                        format!("{cp}.spiffe_id"),
                        format!("\"{s}\" is not a SPIFFE id (spiffe://trust.domain/path)"),
                    );
                    None
                }
            }
        } else if let Some(s) = &c.certificate_subject {
            if s.trim().is_empty() {
                e.push(format!("{cp}.certificate_subject"), "must not be empty");
            }
            Some(ClientAuth::Subject(s.clone()))
        } else {
            None
        };
        if let Some(a) = auth.as_ref().filter(|a| a.is_mtls())
            && let Some(prev) = mtls_ids.insert(a.clone(), id.as_str())
        {
            e.push(
                &cp,
                format!("client \"{prev}\" authenticates with the same certificate identity"),
            );
        }
        if c.audiences.is_empty() {
            e.push(
                format!("{cp}.audiences"),
                "list the audiences this client may obtain tokens for",
            );
        }
        let mut allowed = Vec::new();
        for (aud, scopes) in &c.audiences {
            let sp = format!("{cp}.audiences.{aud}");
            let Some(idx) = audiences.iter().position(|a| a.name == *aud) else {
                e.push(
                    &sp,
                    format!("unknown audience \"{aud}\" (not in token_exchange.audiences)"),
                );
                continue;
            };
            if scopes.is_empty() {
                e.push(
                    &sp,
                    "list the scopes this client may obtain for this audience",
                );
            }
            for (i, s) in scopes.iter().enumerate() {
                if !valid_scope(s) {
                    e.push(
                        format!("{sp}[{i}]"),
                        format!("\"{s}\" is not a scope (printable ASCII without spaces, quotes or backslashes)"),
                    );
                }
            }
            let mut list: Vec<String> = Vec::new();
            for s in scopes {
                if !list.contains(s) {
                    list.push(s.clone());
                }
            }
            allowed.push((idx, list));
        }
        if let Some(auth) = auth {
            clients.push(Client {
                id: id.clone(),
                auth,
                audiences: allowed,
            });
        }
    }

    TokenExchangeSettings {
        jwt_issuers,
        introspection,
        audiences,
        clients,
    }
}

fn positive(s: &str, path: &str, e: &mut ConfigErrors) -> Duration {
    let d = compile_duration(s, path, e);
    if d.is_zero() && portcullis_core::units::parse_duration(s).is_ok() {
        e.push(path, "must be greater than 0");
    }
    if d > Duration::from_secs(24 * 3600) {
        e.push(path, "at most 24h: exchanged tokens are short-lived");
    }
    d
}

fn resolve(
    names: &[String],
    known: Vec<&str>,
    path: &str,
    what: &str,
    e: &mut ConfigErrors,
) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match known.iter().position(|k| *k == n) {
            Some(idx) if out.contains(&idx) => e.push(format!("{path}[{i}]"), "listed twice"),
            Some(idx) => out.push(idx),
            None => e.push(format!("{path}[{i}]"), format!("unknown {what} \"{n}\"")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AuthSettings {
        let raw: portcullis_authn::RawAuth = serde_json::from_value(serde_json::json!({
            "jwt": {"a": {"issuer": "https://a.test", "algorithms": ["HS256"],
                          "audiences": ["https://gw.test"],
                          "hmac_secret": {"value": "0123456789abcdef0123456789abcdef"}},
                    "any": {"issuer": "https://any.test", "algorithms": ["HS256"],
                          "any_audience": true,
                          "hmac_secret": {"value": "0123456789abcdef0123456789abcdef"}}},
        }))
        .unwrap();
        let mut e = ConfigErrors::new();
        let s = portcullis_authn::config::compile(&raw, Path::new("."), &mut e);
        assert!(e.is_empty(), "{e:?}");
        s
    }

    fn compile_json(v: serde_json::Value) -> (TokenExchangeSettings, Vec<String>) {
        let raw: RawTokenExchange = serde_json::from_value(v).unwrap();
        let mut e = ConfigErrors::new();
        let s = compile(&raw, Path::new("."), &auth(), &mut e);
        (s, e.iter().map(|e| e.to_string()).collect())
    }

    const HASH: &str = "sha256:0fefc1b27100e636d38ff6bc989040691f4a48220d8bc2183b6bbcfd001524c7";

    #[test]
    fn a_valid_section_resolves_names() {
        let (s, e) = compile_json(serde_json::json!({
            "jwt_issuers": ["a"],
            "audiences": {"orders": {"resources": ["https://orders.internal/"]}},
            "clients": {
                "bff": {"secret_hash": HASH, "audiences": {"orders": ["read", "read", "write"]}},
                "svc": {"spiffe_id": "spiffe://td/sa/svc", "audiences": {"orders": ["read"]}},
            },
        }));
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.jwt_issuers, [0]);
        assert_eq!(s.audiences[0].ttl, Duration::from_secs(300));
        assert_eq!(s.clients[0].allowed(0).unwrap(), ["read", "write"]);
        assert!(s.needs_mtls());
    }

    #[test]
    fn every_error_has_its_path() {
        let (_, e) = compile_json(serde_json::json!({
            "jwt_issuers": ["a", "a", "b", "any"],
            "ttl": "25h",
            "audiences": {
                "orders": {"resources": ["https://x.test/#frag", "https://dup.test"]},
                "https://dup.test": {},
            },
            "clients": {
                "c1": {"spiffe_id": "spiffe://td/x", "audiences": {"orders": ["ok"]}},
                "c2": {"spiffe_id": "spiffe://td/x", "audiences": {"orders": ["bad\"scope"]}},
                "c3": {"audiences": {}},
            },
        }));
        for want in [
            "token_exchange.jwt_issuers[1]: listed twice",
            "token_exchange.jwt_issuers[2]: unknown auth.jwt issuer \"b\"",
            "token_exchange.jwt_issuers[3]: auth.jwt.any accepts any audience",
            "token_exchange.ttl: at most 24h",
            "token_exchange.audiences.orders.resources[0]",
            "token_exchange.audiences.https://dup.test: the name is also a resource",
            "token_exchange.clients.c2: client \"c1\" authenticates with the same",
            "token_exchange.clients.c2.audiences.orders[0]",
            "token_exchange.clients.c3: exactly one of",
            "token_exchange.clients.c3.audiences: list the audiences",
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(want)),
                "missing {want} in {e:#?}"
            );
        }
    }

    #[test]
    fn resources_are_absolute_uris() {
        assert!(valid_resource("https://orders.internal/"));
        assert!(valid_resource("urn://x.y/z"));
        assert!(!valid_resource("orders"));
        assert!(!valid_resource("/relative"));
        assert!(!valid_resource("https://x/#f"));
        assert!(valid_scope("read:orders"));
        assert!(!valid_scope("a b"));
        assert!(!valid_scope("a\\b"));
        assert!(!valid_scope(""));
    }
}
