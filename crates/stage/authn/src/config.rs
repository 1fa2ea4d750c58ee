//! Authentication settings: the raw YAML (`auth:` at the top, `auth:` per route) and their
//! compiled form. Keys from files are loaded here, so a bad key fails `portcullis check`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use portcullis_core::units::compile_duration;
use portcullis_core::{ConfigErrors, RawSecret, resolve_path};
use portcullis_jose::{Alg, JwkSet, VerifyKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Gateway-wide authentication: who may issue credentials, and how identity is handed on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// JWT issuers, by a name routes refer to (`jwt:<name>`).
    #[serde(default)]
    pub jwt: BTreeMap<String, RawJwtIssuer>,
    /// OAuth 2.0 token introspection endpoints (RFC 7662) for opaque tokens, by name.
    #[serde(default)]
    pub introspection: BTreeMap<String, RawIntrospection>,
    /// API keys, stored as hashes.
    #[serde(default)]
    pub api_keys: Option<RawApiKeys>,
    /// Revoked token ids and API keys.
    #[serde(default)]
    pub revocation: RawRevocation,
    /// A Redis server shared by several gateway instances (API keys, revocations).
    #[serde(default)]
    pub redis: Option<RawRedis>,
    /// Names of the identity headers sent upstream.
    #[serde(default)]
    pub identity_headers: RawIdentityHeaders,
    /// The gateway-signed token routes can send upstream instead of the client's credential.
    #[serde(default)]
    pub internal_token: RawInternalToken,
    /// Cache of verified tokens.
    #[serde(default)]
    pub token_cache: RawTokenCache,
}

/// A JWT issuer. Exactly one key source: `discovery`, `jwks_url`, `jwks_file`,
/// `public_key_files` or `hmac_secret`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawJwtIssuer {
    /// The `iss` value tokens must carry (exact match).
    pub issuer: String,
    /// Fetch `<issuer>/.well-known/openid-configuration` and use its `jwks_uri`.
    #[serde(default)]
    pub discovery: bool,
    /// A JWKS URL (`https://`, or `http://` on loopback only).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A JWKS file.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// PEM public key files (SPKI, `-----BEGIN PUBLIC KEY-----`).
    #[serde(default)]
    pub public_key_files: Vec<String>,
    /// A shared secret for HS256/384/512 (at least 32 bytes).
    #[serde(default)]
    pub hmac_secret: Option<RawSecret>,
    /// Accepted signature algorithms (required). HS* only with `hmac_secret`.
    pub algorithms: Vec<String>,
    /// Accepted audiences: the token's `aud` must contain one (RFC 9068 §4). Required unless
    /// `any_audience` is set.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accept tokens minted for any audience (`aud` not checked): only for an issuer that mints
    /// tokens for this gateway alone. Default false; not with `audiences`.
    #[serde(default)]
    pub any_audience: bool,
    /// Required `typ` header (e.g. `at+jwt`, RFC 9068). Default: not checked.
    #[serde(default)]
    pub typ: Option<String>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`. Default `30s`.
    #[serde(default = "default_leeway")]
    pub leeway: String,
    /// Claims that must be present.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Refuse tokens valid for longer than this (`exp - iat`). Default: no bound.
    #[serde(default)]
    pub max_lifetime: Option<String>,
    /// Largest token accepted, in bytes. Default 8192.
    #[serde(default = "default_max_token")]
    pub max_token_bytes: usize,
    /// Where identity is read from the claims.
    #[serde(default)]
    pub claims: RawClaimNames,
    /// JWKS caching and refetching (remote key sources only).
    #[serde(default)]
    pub jwks_cache: RawJwksCache,
    /// PEM CA bundle for `https://` key URLs instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_leeway() -> String {
    "30s".into()
}
fn default_max_token() -> usize {
    8192
}

/// Claim names (dotted paths such as `realm_access.roles` reach into objects).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawClaimNames {
    /// Default `sub`.
    #[serde(default = "default_subject_claim")]
    pub subject: String,
    /// Tried in order. Default `[client_id, azp]`.
    #[serde(default = "default_client_claims")]
    pub client_id: Vec<String>,
    /// Tried in order; a space-separated string or an array. Default `[scope, scp]`.
    #[serde(default = "default_scope_claims")]
    pub scopes: Vec<String>,
    /// Tried in order; an array or a space-separated string. Default `[roles]`.
    #[serde(default = "default_role_claims")]
    pub roles: Vec<String>,
    /// Default: none.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Default: none.
    #[serde(default)]
    pub tier: Option<String>,
}

impl Default for RawClaimNames {
    fn default() -> Self {
        RawClaimNames {
            subject: default_subject_claim(),
            client_id: default_client_claims(),
            scopes: default_scope_claims(),
            roles: default_role_claims(),
            tenant: None,
            tier: None,
        }
    }
}

fn default_subject_claim() -> String {
    "sub".into()
}
fn default_client_claims() -> Vec<String> {
    vec!["client_id".into(), "azp".into()]
}
fn default_scope_claims() -> Vec<String> {
    vec!["scope".into(), "scp".into()]
}
fn default_role_claims() -> Vec<String> {
    vec!["roles".into()]
}

/// JWKS caching: the server's `Cache-Control: max-age` within `[min_ttl, max_ttl]`
/// (`default_ttl` without one); refetched in the background at 3/4 of the time to live.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawJwksCache {
    /// Default `1m`.
    #[serde(default = "default_min_ttl")]
    pub min_ttl: String,
    /// Default `24h`.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: String,
    /// Default `10m`.
    #[serde(default = "default_ttl")]
    pub default_ttl: String,
    /// Least time between two refetches caused by tokens with an unknown `kid`. Default `5s`.
    #[serde(default = "default_kid_cooldown")]
    pub unknown_kid_cooldown: String,
    /// Timeout of one fetch. Default `5s`.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: String,
}

impl Default for RawJwksCache {
    fn default() -> Self {
        RawJwksCache {
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
            default_ttl: default_ttl(),
            unknown_kid_cooldown: default_kid_cooldown(),
            fetch_timeout: default_fetch_timeout(),
        }
    }
}

fn default_min_ttl() -> String {
    "1m".into()
}
fn default_max_ttl() -> String {
    "24h".into()
}
fn default_ttl() -> String {
    "10m".into()
}
fn default_kid_cooldown() -> String {
    "5s".into()
}
fn default_fetch_timeout() -> String {
    "5s".into()
}

/// An RFC 7662 introspection endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    /// The endpoint URL (`https://`, or `http://` on loopback only).
    pub endpoint: String,
    /// The gateway's client id at the authorization server (HTTP Basic authentication).
    pub client_id: String,
    pub client_secret: RawSecret,
    /// When set, an active answer's `iss` must equal it.
    #[serde(default)]
    pub issuer: Option<String>,
    /// When set, an active answer's `aud` must contain one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Timeout of one call. Default `2s`.
    #[serde(default = "default_introspection_timeout")]
    pub timeout: String,
    /// Active answers are cached until their `exp`, but no longer than this. Default `5m`.
    #[serde(default = "default_active_ttl")]
    pub cache_active_max: String,
    /// Inactive answers are cached this long. Default `10s`.
    #[serde(default = "default_inactive_ttl")]
    pub cache_inactive: String,
    /// Largest token accepted, in bytes. Default 4096.
    #[serde(default = "default_max_opaque")]
    pub max_token_bytes: usize,
    /// Most calls to the endpoint under way at once (requests with the same token share
    /// one). Past it a token that is not cached is not sent: 503, as when the endpoint cannot
    /// answer. Default 64.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub claims: RawClaimNames,
    /// PEM CA bundle for an `https://` endpoint instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_introspection_timeout() -> String {
    "2s".into()
}
fn default_active_ttl() -> String {
    "5m".into()
}
fn default_inactive_ttl() -> String {
    "10s".into()
}
fn default_max_opaque() -> usize {
    4096
}
fn default_max_in_flight() -> usize {
    64
}

/// API keys. Only hashes are stored: `sha256:<64 hex digits>` of the key
/// (`portcullis apikey` prints both).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeys {
    /// Request header carrying the key. Default `x-api-key`.
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// Keys in the configuration file.
    #[serde(default)]
    pub keys: Vec<RawApiKey>,
    /// Also look keys up in `auth.redis` (hash `<prefix>apikey:<hex>`). Default false.
    #[serde(default)]
    pub redis: bool,
    /// How long a key read from Redis is trusted before it is read again. Default `30s`.
    #[serde(default = "default_api_key_cache")]
    pub cache_ttl: String,
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}
fn default_api_key_cache() -> String {
    "30s".into()
}

/// One API key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// `sha256:<64 lowercase hex digits>`.
    pub hash: String,
    pub client_id: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    /// RFC 3339 time after which the key is refused.
    #[serde(default)]
    pub expires: Option<String>,
    /// Default true.
    #[serde(default = "default_true")]
    pub active: bool,
}

fn default_true() -> bool {
    true
}

/// Revocations. Entries here are always refused; the admin API adds more at run time, and
/// with `auth.redis` they are shared by every instance.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRevocation {
    /// Revoked token ids (`jti`).
    #[serde(default)]
    pub token_ids: Vec<String>,
    /// Revoked API keys, by hash (`sha256:…`).
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Revoked client certificates (mTLS), by the SHA-256 of their DER (`sha256:<64 hex
    /// digits>`; `:` between the digits, as `openssl x509 -fingerprint -sha256` prints them,
    /// and capitals are taken).
    #[serde(default)]
    pub certificates: Vec<String>,
    /// How often the shared list is read from Redis. Default `2s`.
    #[serde(default = "default_sync")]
    pub sync_interval: String,
}

impl Default for RawRevocation {
    fn default() -> Self {
        RawRevocation {
            token_ids: Vec::new(),
            api_keys: Vec::new(),
            certificates: Vec::new(),
            sync_interval: default_sync(),
        }
    }
}

fn default_sync() -> String {
    "2s".into()
}

/// Redis connection.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port/db` (or `rediss://`); with `cluster`, any node of the cluster.
    pub url: RawSecretOrString,
    /// A Redis Cluster. Default false.
    #[serde(default)]
    pub cluster: bool,
    /// More seed nodes of the cluster.
    #[serde(default)]
    pub cluster_nodes: Vec<portcullis_core::UrlText>,
    /// Longest wait for one Redis command on the request path. Default `250ms`.
    #[serde(default = "default_redis_timeout")]
    pub timeout: String,
    /// Prefix of every key. Default `portcullis:`.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
}

pub use portcullis_core::RawSecretOrString;
use portcullis_store::RedisTarget;

fn default_redis_timeout() -> String {
    "250ms".into()
}
fn default_prefix() -> String {
    "portcullis:".into()
}

/// Identity header names. Client-supplied copies of all of them (and of `strip`) are removed
/// from every request, on every route.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawIdentityHeaders {
    /// Default `x-user-id`.
    #[serde(default = "h_user")]
    pub user: String,
    /// Default `x-client-id`.
    #[serde(default = "h_client")]
    pub client: String,
    /// Space-separated. Default `x-scopes`.
    #[serde(default = "h_scopes")]
    pub scopes: String,
    /// Comma-separated. Default `x-roles`.
    #[serde(default = "h_roles")]
    pub roles: String,
    /// Default `x-tenant-id`.
    #[serde(default = "h_tenant")]
    pub tenant: String,
    /// The method that verified the caller (`jwt`, `api_key` …). Default `x-authenticated`.
    #[serde(default = "h_auth")]
    pub authenticated: String,
    /// The authority that verified the caller: the configured name of the `auth.jwt` issuer
    /// or `auth.introspection` endpoint, `api_keys`, or the listener's name for mTLS — what
    /// tells apart two issuers' users of the same `sub`. Default `x-authenticated-by`.
    #[serde(default = "h_authority")]
    pub authority: String,
    /// More headers to strip from every client request.
    #[serde(default)]
    pub strip: Vec<String>,
}

impl Default for RawIdentityHeaders {
    fn default() -> Self {
        RawIdentityHeaders {
            user: h_user(),
            client: h_client(),
            scopes: h_scopes(),
            roles: h_roles(),
            tenant: h_tenant(),
            authenticated: h_auth(),
            authority: h_authority(),
            strip: Vec::new(),
        }
    }
}

fn h_user() -> String {
    "x-user-id".into()
}
fn h_client() -> String {
    "x-client-id".into()
}
fn h_scopes() -> String {
    "x-scopes".into()
}
fn h_roles() -> String {
    "x-roles".into()
}
fn h_tenant() -> String {
    "x-tenant-id".into()
}
fn h_auth() -> String {
    "x-authenticated".into()
}
fn h_authority() -> String {
    "x-authenticated-by".into()
}

/// The gateway-signed internal token.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawInternalToken {
    /// `EdDSA` (default) or `ES256`.
    #[serde(default = "default_internal_alg")]
    pub algorithm: String,
    /// PKCS#8 PEM private key. Default: a key generated at start (kept across reloads; its
    /// public half is served by the admin API at `/jwks`).
    #[serde(default)]
    pub key_file: Option<String>,
    /// `iss` of minted tokens. Default `portcullis`.
    #[serde(default = "default_internal_iss")]
    pub issuer: String,
    /// Lifetime. Default `60s`.
    #[serde(default = "default_internal_ttl")]
    pub ttl: String,
    /// Header carrying it upstream, as `Bearer <token>`. Default `authorization`.
    #[serde(default = "default_internal_header")]
    pub header: String,
}

impl Default for RawInternalToken {
    fn default() -> Self {
        RawInternalToken {
            algorithm: default_internal_alg(),
            key_file: None,
            issuer: default_internal_iss(),
            ttl: default_internal_ttl(),
            header: default_internal_header(),
        }
    }
}

fn default_internal_alg() -> String {
    "EdDSA".into()
}
fn default_internal_iss() -> String {
    "portcullis".into()
}
fn default_internal_ttl() -> String {
    "60s".into()
}
fn default_internal_header() -> String {
    "authorization".into()
}

/// Verified-token cache.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTokenCache {
    /// Most cached tokens. Default 100000; 0 disables the cache.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// A verified token is re-verified after this long (never used past its `exp`).
    /// Default `5m`.
    #[serde(default = "default_cache_ttl")]
    pub max_ttl: String,
}

impl Default for RawTokenCache {
    fn default() -> Self {
        RawTokenCache {
            max_entries: default_cache_entries(),
            max_ttl: default_cache_ttl(),
        }
    }
}

fn default_cache_entries() -> usize {
    100_000
}
fn default_cache_ttl() -> String {
    "5m".into()
}

/// A route's authentication. Exactly one of `anonymous: true` or a non-empty `methods`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRouteAuth {
    /// Serve the route without credentials.
    #[serde(default)]
    pub anonymous: bool,
    /// Accepted methods, tried in order; any may succeed: `jwt` (any issuer) or
    /// `jwt:<name>`, `introspection` or `introspection:<name>`, `api_key`, `mtls`.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Also accept the API key from this query parameter (removed before forwarding).
    /// Default: never from the query string.
    #[serde(default)]
    pub api_key_query: Option<String>,
    /// The client's `Authorization` header: `strip` (default) or `keep`.
    #[serde(default)]
    pub authorization: ForwardAuthorization,
    /// Send the verified identity upstream in the identity headers. Default true.
    #[serde(default = "default_true")]
    pub identity_headers: bool,
    /// Send a gateway-signed token for this audience upstream.
    #[serde(default)]
    pub internal_token: Option<RawRouteInternalToken>,
    /// mTLS: which client certificates this route accepts (default: any the listener verified).
    #[serde(default)]
    pub mtls: RawMtlsRule,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ForwardAuthorization {
    #[default]
    Strip,
    Keep,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRouteInternalToken {
    /// The `aud` of the minted token: the upstream service's name.
    pub audience: String,
}

/// Which client certificates a route accepts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawMtlsRule {
    /// Require a SPIFFE id in one of these trust domains. Empty: any certificate.
    #[serde(default)]
    pub trust_domains: Vec<String>,
    /// Require the SPIFFE path to match one of these patterns (`*` one segment, `**` the rest).
    #[serde(default)]
    pub spiffe_paths: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Compiled

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Loaded at compile time.
    Static(Arc<JwkSet>),
    Discovery {
        issuer: String,
    },
    JwksUrl(String),
}

#[derive(Debug, Clone)]
pub struct JwksCacheSettings {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub default_ttl: Duration,
    pub unknown_kid_cooldown: Duration,
    pub fetch_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ClaimNames {
    pub subject: String,
    pub client_id: Vec<String>,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub tenant: Option<String>,
    pub tier: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JwtIssuer {
    pub name: Arc<str>,
    pub issuer: String,
    pub source: KeySource,
    /// Whether a token's `kid` selects the keys tried: for key sets (JWKS by URL, discovery
    /// or file), whose keys carry ids. Keys configured without one (`public_key_files`,
    /// `hmac_secret`) are all tried whatever `kid` the token names — an IdP sets one as a
    /// matter of course, and it names no key the gateway knows by that name.
    pub match_kid: bool,
    pub algorithms: Vec<Alg>,
    pub audiences: Vec<String>,
    pub typ: Option<String>,
    pub leeway: Duration,
    pub required_claims: Vec<String>,
    pub max_lifetime: Option<Duration>,
    pub max_token_bytes: usize,
    pub claims: ClaimNames,
    pub cache: JwksCacheSettings,
    pub ca_pem: Option<Vec<u8>>,
}

impl JwtIssuer {
    /// An EdDSA issuer `https://i` with a key set at `jwks_url`, for tests to adjust.
    #[cfg(test)]
    pub(crate) fn for_tests(jwks_url: &str) -> JwtIssuer {
        JwtIssuer {
            name: Arc::from("i"),
            issuer: "https://i".into(),
            source: KeySource::JwksUrl(jwks_url.into()),
            match_kid: true,
            algorithms: vec![portcullis_jose::Alg::EdDSA],
            audiences: Vec::new(),
            typ: None,
            leeway: Duration::ZERO,
            required_claims: Vec::new(),
            max_lifetime: None,
            max_token_bytes: 8192,
            claims: ClaimNames {
                subject: "sub".into(),
                client_id: Vec::new(),
                scopes: Vec::new(),
                roles: Vec::new(),
                tenant: None,
                tier: None,
            },
            cache: JwksCacheSettings {
                min_ttl: Duration::from_secs(60),
                max_ttl: Duration::from_secs(3600),
                default_ttl: Duration::from_secs(600),
                unknown_kid_cooldown: Duration::from_secs(5),
                fetch_timeout: Duration::from_secs(5),
            },
            ca_pem: None,
        }
    }

    /// Identifies a remote key source: managers are shared across reloads when it is equal.
    pub fn source_key(&self) -> Option<String> {
        let c = &self.cache;
        let tail = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{}",
            c.min_ttl,
            c.max_ttl,
            c.default_ttl,
            c.unknown_kid_cooldown,
            c.fetch_timeout,
            // The bundle's contents, not its length: a different CA of the same size must
            // not keep the old fetcher (and its trust).
            self.ca_pem
                .as_ref()
                .map(|p| crate::revocation::hex(
                    ring::digest::digest(&ring::digest::SHA256, p).as_ref()
                ))
                .unwrap_or_default()
        );
        match &self.source {
            KeySource::Static(_) => None,
            KeySource::Discovery { issuer } => Some(format!("discovery|{issuer}|{tail}")),
            KeySource::JwksUrl(u) => Some(format!("jwks|{u}|{tail}")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Introspection {
    pub name: Arc<str>,
    pub endpoint: http::Uri,
    pub client_id: String,
    pub client_secret: portcullis_core::Secret,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub timeout: Duration,
    pub cache_active_max: Duration,
    pub cache_inactive: Duration,
    pub max_token_bytes: usize,
    /// Most calls under way at once (at least 1).
    pub max_in_flight: usize,
    pub claims: ClaimNames,
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct ApiKeyEntry {
    pub hash: [u8; 32],
    pub client_id: String,
    pub owner: Option<String>,
    pub scopes: Vec<String>,
    pub tier: Option<String>,
    pub tenant: Option<String>,
    /// Unix seconds.
    pub expires: Option<u64>,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub struct ApiKeys {
    pub header: HeaderName,
    pub keys: Vec<ApiKeyEntry>,
    pub redis: bool,
    pub cache_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct Revocation {
    pub token_ids: Vec<String>,
    pub api_keys: Vec<[u8; 32]>,
    /// SHA-256 of the DER of revoked client certificates.
    pub certificates: Vec<[u8; 32]>,
    pub sync_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Redis {
    pub target: RedisTarget,
    pub timeout: Duration,
    pub key_prefix: String,
}

#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user: HeaderName,
    pub client: HeaderName,
    pub scopes: HeaderName,
    pub roles: HeaderName,
    pub tenant: HeaderName,
    pub authenticated: HeaderName,
    pub authority: HeaderName,
    /// Every header removed from client requests (the seven above, the internal token header
    /// and `strip`).
    pub strip: Vec<HeaderName>,
}

/// Names an identity header may not have: fields that frame, route or authenticate a request
/// or are the gateway's forwarding and tracing fields.
const RESERVED_IDENTITY_NAMES: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
    "traceparent",
    "tracestate",
];

#[derive(Debug, Clone)]
pub struct InternalToken {
    pub algorithm: Alg,
    pub key_pem: Option<portcullis_core::Secret>,
    pub issuer: String,
    pub ttl: Duration,
    pub header: HeaderName,
}

/// Compiled gateway-wide settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub jwt: Vec<JwtIssuer>,
    pub introspection: Vec<Introspection>,
    pub api_keys: Option<ApiKeys>,
    pub revocation: Revocation,
    pub redis: Option<Redis>,
    pub identity: IdentityHeaders,
    pub internal_token: InternalToken,
    pub cache_entries: usize,
    pub cache_ttl: Duration,
}

impl AuthSettings {
    /// True when any authenticator is configured.
    pub fn any_authenticator(&self) -> bool {
        !self.jwt.is_empty() || !self.introspection.is_empty() || self.api_keys.is_some()
    }
}

/// One accepted method of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// Indexes into [`AuthSettings::jwt`].
    Jwt(Vec<usize>),
    /// Indexes into [`AuthSettings::introspection`].
    Introspection(Vec<usize>),
    ApiKey,
    Mtls,
}

#[derive(Debug, Clone, Default)]
pub struct MtlsRule {
    pub trust_domains: Vec<String>,
    pub spiffe_paths: Vec<Vec<String>>,
}

/// Compiled per-route settings.
#[derive(Debug, Clone)]
pub struct RouteAuth {
    /// Empty: anonymous.
    pub methods: Vec<Method>,
    pub api_key_query: Option<String>,
    pub keep_authorization: bool,
    pub identity_headers: bool,
    pub internal_audience: Option<String>,
    pub mtls: MtlsRule,
}

impl RouteAuth {
    pub fn anonymous() -> RouteAuth {
        RouteAuth {
            methods: Vec::new(),
            api_key_query: None,
            keep_authorization: true,
            identity_headers: false,
            internal_audience: None,
            mtls: MtlsRule::default(),
        }
    }
}

fn header(s: &str, path: &str, e: &mut ConfigErrors) -> Option<HeaderName> {
    match HeaderName::from_bytes(s.trim().to_ascii_lowercase().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            e.push(path, format!("\"{s}\" is not a valid header name"));
            None
        }
    }
}

pub(crate) fn claim_names(r: &RawClaimNames) -> ClaimNames {
    ClaimNames {
        subject: r.subject.clone(),
        client_id: r.client_id.clone(),
        scopes: r.scopes.clone(),
        roles: r.roles.clone(),
        tenant: r.tenant.clone(),
        tier: r.tier.clone(),
    }
}

fn read_file(base: &Path, f: &str, path: &str, e: &mut ConfigErrors) -> Option<Vec<u8>> {
    let file = resolve_path(base, f);
    match std::fs::read(&file) {
        Ok(b) => Some(b),
        Err(err) => {
            e.push(path, format!("cannot read {}: {err}", file.display()));
            None
        }
    }
}

/// A fetch URL must be https, or http to a loopback host (tests, sidecars).
fn check_fetch_url(u: &str, path: &str, e: &mut ConfigErrors) -> Option<http::Uri> {
    let Ok(uri) = u.parse::<http::Uri>() else {
        e.push(path, format!("\"{u}\" is not a URL"));
        return None;
    };
    let host = uri.host().unwrap_or("");
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // As for upstreams and OPA: a URL's password ends up in logs and views.
        e.push(
            path,
            format!("\"{u}\": credentials in the URL are not supported"),
        );
        return None;
    }
    match uri.scheme_str() {
        Some("https") => Some(uri),
        Some("http") if is_loopback_host(host) => Some(uri),
        Some("http") => {
            e.push(
                path,
                format!("\"{u}\": keys and tokens are fetched over https (http only on loopback)"),
            );
            None
        }
        _ => {
            e.push(path, format!("\"{u}\" is not an http(s) URL"));
            None
        }
    }
}

pub(crate) fn is_loopback_host(h: &str) -> bool {
    let h = h.trim_start_matches('[').trim_end_matches(']');
    // Names are compared as resolvers read them: in any case, with or without the root's dot;
    // `*.localhost` is loopback too (RFC 6761, and what systemd-resolved answers).
    let name = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || h.parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Parses `sha256:<64 hex>`.
pub fn parse_key_hash(s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix("sha256:")
        .ok_or_else(|| "an API key hash is written \"sha256:<64 hex digits>\"".to_string())?;
    if hex.len() != 64 {
        return Err("an API key hash has 64 hex digits".into());
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| "not hex".to_string())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| format!("\"{hex}\" is not hex"))?;
    }
    Ok(out)
}

/// Parses a client certificate's SHA-256 fingerprint: `sha256:<64 hex digits>`, the digits
/// in either case and optionally in pairs separated by `:` (as OpenSSL prints them); the
/// `sha256:` prefix may be left out.
pub fn parse_cert_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    let digits = match s.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("sha256:") => &s[7..],
        _ => s,
    };
    let hex: String = digits.chars().filter(|c| *c != ':').collect();
    let bad = || {
        "a certificate fingerprint is written \"sha256:<64 hex digits>\" (the SHA-256 of its DER)"
            .to_string()
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    parse_key_hash(&format!("sha256:{hex}")).map_err(|_| bad())
}

fn parse_time(s: &str, path: &str, e: &mut ConfigErrors) -> Option<u64> {
    match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs()),
        Err(_) => {
            e.push(
                path,
                format!("\"{s}\" is not an RFC 3339 time (2027-01-31T00:00:00Z)"),
            );
            None
        }
    }
}

/// Compiles the gateway-wide section.
pub fn compile(raw: &RawAuth, base: &Path, e: &mut ConfigErrors) -> AuthSettings {
    let mut jwt = Vec::new();
    for (name, r) in &raw.jwt {
        let path = format!("auth.jwt.{name}");
        if let Some(i) = compile_issuer(name, r, &path, base, e) {
            jwt.push(i);
        }
    }
    let mut introspection = Vec::new();
    for (name, r) in &raw.introspection {
        let path = format!("auth.introspection.{name}");
        let endpoint = check_fetch_url(&r.endpoint, &format!("{path}.endpoint"), e);
        let secret = r
            .client_secret
            .resolve(&format!("{path}.client_secret"), base, e);
        let ca_pem = r
            .ca_file
            .as_ref()
            .and_then(|f| read_file(base, f, &format!("{path}.ca_file"), e));
        let i = Introspection {
            name: Arc::from(name.as_str()),
            endpoint: endpoint.unwrap_or_default(),
            client_id: r.client_id.clone(),
            client_secret: portcullis_core::Secret::new(secret.unwrap_or_default()),
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            timeout: compile_duration(&r.timeout, &format!("{path}.timeout"), e),
            cache_active_max: compile_duration(
                &r.cache_active_max,
                &format!("{path}.cache_active_max"),
                e,
            ),
            cache_inactive: compile_duration(
                &r.cache_inactive,
                &format!("{path}.cache_inactive"),
                e,
            ),
            max_token_bytes: r.max_token_bytes,
            max_in_flight: r.max_in_flight,
            claims: claim_names(&r.claims),
            ca_pem,
        };
        // Above the semaphore's bound it would panic; no endpoint takes a million at once.
        if !(1..=1_000_000).contains(&r.max_in_flight) {
            e.push(format!("{path}.max_in_flight"), "between 1 and 1000000");
        }
        introspection.push(i);
    }

    let api_keys = raw.api_keys.as_ref().map(|a| {
        let header = header(&a.header, "auth.api_keys.header", e)
            .unwrap_or(HeaderName::from_static("x-api-key"));
        if header == http::header::AUTHORIZATION || header == http::header::COOKIE {
            e.push(
                "auth.api_keys.header",
                "use a dedicated header for API keys",
            );
        }
        let mut seen = HashMap::new();
        let mut keys = Vec::new();
        for (i, k) in a.keys.iter().enumerate() {
            let path = format!("auth.api_keys.keys[{i}]");
            let hash = match parse_key_hash(&k.hash) {
                Ok(h) => h,
                Err(m) => {
                    e.push(format!("{path}.hash"), m);
                    continue;
                }
            };
            if let Some(prev) = seen.insert(hash, i) {
                e.push(
                    format!("{path}.hash"),
                    format!("the same key as auth.api_keys.keys[{prev}]"),
                );
            }
            if k.client_id.trim().is_empty() {
                e.push(format!("{path}.client_id"), "must not be empty");
            }
            let expires = k
                .expires
                .as_ref()
                .and_then(|t| parse_time(t, &format!("{path}.expires"), e));
            keys.push(ApiKeyEntry {
                hash,
                client_id: k.client_id.clone(),
                owner: k.owner.clone(),
                scopes: k.scopes.clone(),
                tier: k.tier.clone(),
                tenant: k.tenant.clone(),
                expires,
                active: k.active,
            });
        }
        if a.redis && raw.redis.is_none() {
            e.push("auth.api_keys.redis", "needs auth.redis");
        }
        ApiKeys {
            header,
            keys,
            redis: a.redis,
            cache_ttl: compile_duration(&a.cache_ttl, "auth.api_keys.cache_ttl", e),
        }
    });

    let revocation = Revocation {
        token_ids: raw.revocation.token_ids.clone(),
        api_keys: raw
            .revocation
            .api_keys
            .iter()
            .enumerate()
            .filter_map(|(i, h)| match parse_key_hash(h) {
                Ok(h) => Some(h),
                Err(m) => {
                    e.push(format!("auth.revocation.api_keys[{i}]"), m);
                    None
                }
            })
            .collect(),
        certificates: raw
            .revocation
            .certificates
            .iter()
            .enumerate()
            .filter_map(|(i, h)| match parse_cert_fingerprint(h) {
                Ok(h) => Some(h),
                Err(m) => {
                    e.push(format!("auth.revocation.certificates[{i}]"), m);
                    None
                }
            })
            .collect(),
        sync_interval: compile_duration(
            &raw.revocation.sync_interval,
            "auth.revocation.sync_interval",
            e,
        ),
    };

    let redis = raw.redis.as_ref().map(|r| Redis {
        target: RedisTarget::compile(&r.url, r.cluster, &r.cluster_nodes, "auth.redis", base, e),
        timeout: compile_duration(&r.timeout, "auth.redis.timeout", e),
        key_prefix: r.key_prefix.clone(),
    });

    let h = &raw.identity_headers;
    let p = "auth.identity_headers";
    let hn = |s: &str, k: &str, e: &mut ConfigErrors| {
        header(s, &format!("{p}.{k}"), e).unwrap_or(HeaderName::from_static("x-invalid"))
    };
    let user = hn(&h.user, "user", e);
    let client = hn(&h.client, "client", e);
    let scopes = hn(&h.scopes, "scopes", e);
    let roles = hn(&h.roles, "roles", e);
    let tenant = hn(&h.tenant, "tenant", e);
    let authenticated = hn(&h.authenticated, "authenticated", e);
    let authority = hn(&h.authority, "authority", e);
    // Seven fields, seven names; none the request's framing, routing or credentials use.
    let named = [
        ("user", &user),
        ("client", &client),
        ("scopes", &scopes),
        ("roles", &roles),
        ("tenant", &tenant),
        ("authenticated", &authenticated),
        ("authority", &authority),
    ];
    for (i, (k, n)) in named.iter().enumerate() {
        // (A name that did not parse stands in as `x-invalid`, already reported.)
        if n.as_str() == "x-invalid" {
            continue;
        }
        if let Some((other, _)) = named[..i].iter().find(|(_, m)| m == n) {
            e.push(
                format!("{p}.{k}"),
                format!("{n} is also {p}.{other}: one would overwrite the other upstream"),
            );
        }
        if RESERVED_IDENTITY_NAMES.contains(&n.as_str()) {
            e.push(
                format!("{p}.{k}"),
                format!("{n} frames, routes or authenticates requests: name another header"),
            );
        }
    }

    let it = &raw.internal_token;
    let algorithm = match Alg::from_name(&it.algorithm) {
        Some(a @ (Alg::EdDSA | Alg::ES256)) => a,
        _ => {
            e.push(
                "auth.internal_token.algorithm",
                format!("\"{}\": EdDSA or ES256", it.algorithm),
            );
            Alg::EdDSA
        }
    };
    let key_pem = it.key_file.as_ref().and_then(|f| {
        read_file(base, f, "auth.internal_token.key_file", e)
            .and_then(|b| String::from_utf8(b).ok())
    });
    // The key decides how tokens are signed: it must be a key of the configured algorithm
    // (a P-256 key under the default `EdDSA`, or an RSA key, is refused, never used as is).
    if let Some(pem) = &key_pem {
        match portcullis_jose::Signer::from_pkcs8_pem(pem, String::new()) {
            Err(err) => e.push("auth.internal_token.key_file", err.to_string()),
            Ok(s) if s.alg() != algorithm => e.push(
                "auth.internal_token.key_file",
                format!(
                    "a key for {}, not for auth.internal_token.algorithm {algorithm} \
                     (EdDSA takes an Ed25519 key, ES256 a P-256 key)",
                    s.alg()
                ),
            ),
            Ok(_) => {}
        }
    }
    let key_pem = key_pem.map(portcullis_core::Secret::new);
    let internal_header =
        header(&it.header, "auth.internal_token.header", e).unwrap_or(http::header::AUTHORIZATION);
    let mut strip = vec![
        user.clone(),
        client.clone(),
        scopes.clone(),
        roles.clone(),
        tenant.clone(),
        authenticated.clone(),
        authority.clone(),
    ];
    if internal_header != http::header::AUTHORIZATION {
        strip.push(internal_header.clone());
    }
    for (i, s) in h.strip.iter().enumerate() {
        if let Some(n) = header(s, &format!("{p}.strip[{i}]"), e) {
            strip.push(n);
        }
    }
    let identity = IdentityHeaders {
        user,
        client,
        scopes,
        roles,
        tenant,
        authenticated,
        authority,
        strip,
    };
    let before = e.len();
    let ttl = compile_duration(&it.ttl, "auth.internal_token.ttl", e);
    if e.len() == before && (ttl.is_zero() || ttl > Duration::from_secs(24 * 3600)) {
        e.push(
            "auth.internal_token.ttl",
            "more than 0 and at most 24h: an internal token is made for one request",
        );
    }
    if it.issuer.trim().is_empty() {
        e.push("auth.internal_token.issuer", "must not be empty");
    }
    let internal_token = InternalToken {
        algorithm,
        key_pem,
        issuer: it.issuer.clone(),
        ttl,
        header: internal_header,
    };

    AuthSettings {
        jwt,
        introspection,
        api_keys,
        revocation,
        redis,
        identity,
        internal_token,
        cache_entries: raw.token_cache.max_entries,
        cache_ttl: compile_duration(&raw.token_cache.max_ttl, "auth.token_cache.max_ttl", e),
    }
}

fn compile_issuer(
    name: &str,
    r: &RawJwtIssuer,
    path: &str,
    base: &Path,
    e: &mut ConfigErrors,
) -> Option<JwtIssuer> {
    let sources = [
        r.discovery,
        r.jwks_url.is_some(),
        r.jwks_file.is_some(),
        !r.public_key_files.is_empty(),
        r.hmac_secret.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if sources != 1 {
        e.push(
            path,
            "exactly one key source: discovery, jwks_url, jwks_file, public_key_files or \
             hmac_secret",
        );
    }
    if r.issuer.trim().is_empty() {
        e.push(format!("{path}.issuer"), "must not be empty");
    }
    // A token minted for another API of the same issuer must not open this one (RFC 9068 §4,
    // RFC 7519 §4.1.3): the audience is checked unless the configuration says otherwise.
    match (r.audiences.is_empty(), r.any_audience) {
        (true, false) => e.push(
            format!("{path}.audiences"),
            "list the audiences that name this gateway (a token's `aud` must contain one), or \
             set any_audience: true to accept tokens minted for any audience",
        ),
        (false, true) => e.push(
            format!("{path}.any_audience"),
            "any_audience accepts every `aud` and audiences lists the accepted ones: one of them",
        ),
        _ => {}
    }
    for (i, a) in r.audiences.iter().enumerate() {
        if a.trim().is_empty() {
            e.push(format!("{path}.audiences[{i}]"), "must not be empty");
        }
    }
    let mut algorithms = Vec::new();
    if r.algorithms.is_empty() {
        e.push(
            format!("{path}.algorithms"),
            "list the accepted algorithms (the token never chooses)",
        );
    }
    for (i, a) in r.algorithms.iter().enumerate() {
        let ap = format!("{path}.algorithms[{i}]");
        match Alg::from_name(a) {
            Some(alg) if alg.is_hmac() && r.hmac_secret.is_none() => e.push(
                ap,
                format!("{alg} needs hmac_secret (never a public key as an HMAC secret)"),
            ),
            Some(alg) if !alg.is_hmac() && r.hmac_secret.is_some() => {
                e.push(ap, format!("{alg} cannot be verified with hmac_secret"))
            }
            Some(alg) => algorithms.push(alg),
            None => e.push(
                ap,
                format!(
                    "\"{a}\" is not supported (one of {})",
                    Alg::ALL
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    let ca_pem = r
        .ca_file
        .as_ref()
        .and_then(|f| read_file(base, f, &format!("{path}.ca_file"), e));
    let source = if r.discovery {
        let disc = format!(
            "{}/.well-known/openid-configuration",
            r.issuer.trim_end_matches('/')
        );
        check_fetch_url(&disc, &format!("{path}.issuer"), e);
        KeySource::Discovery {
            issuer: r.issuer.clone(),
        }
    } else if let Some(u) = &r.jwks_url {
        check_fetch_url(u, &format!("{path}.jwks_url"), e);
        KeySource::JwksUrl(u.clone())
    } else if let Some(f) = &r.jwks_file {
        let fp = format!("{path}.jwks_file");
        let set = read_file(base, f, &fp, e).and_then(|b| match JwkSet::from_json(&b) {
            Ok((set, warnings)) => {
                for w in warnings {
                    tracing::warn!(issuer = name, "jwks_file: {w}");
                }
                if set.keys.is_empty() {
                    e.push(fp.clone(), "no usable signing key in the set");
                }
                Some(set)
            }
            Err(err) => {
                e.push(fp.clone(), err.to_string());
                None
            }
        });
        KeySource::Static(Arc::new(set.unwrap_or(JwkSet { keys: Vec::new() })))
    } else if !r.public_key_files.is_empty() {
        let mut keys = Vec::new();
        for (i, f) in r.public_key_files.iter().enumerate() {
            let fp = format!("{path}.public_key_files[{i}]");
            if let Some(b) = read_file(base, f, &fp, e) {
                let pem = String::from_utf8_lossy(&b);
                match VerifyKey::from_spki_pem(&pem) {
                    Ok(key) => keys.push(portcullis_jose::Jwk {
                        kid: None,
                        alg: None,
                        key,
                    }),
                    Err(err) => e.push(fp, err.to_string()),
                }
            }
        }
        KeySource::Static(Arc::new(JwkSet { keys }))
    } else if let Some(s) = &r.hmac_secret {
        let sp = format!("{path}.hmac_secret");
        let key =
            s.resolve(&sp, base, e)
                .and_then(|secret| match VerifyKey::hmac(secret.as_bytes()) {
                    Ok(k) => Some(k),
                    Err(err) => {
                        e.push(sp.clone(), err.to_string());
                        None
                    }
                });
        KeySource::Static(Arc::new(JwkSet {
            keys: key
                .map(|key| portcullis_jose::Jwk {
                    kid: None,
                    alg: None,
                    key,
                })
                .into_iter()
                .collect(),
        }))
    } else {
        return None;
    };
    if let KeySource::Static(set) = &source {
        for alg in &algorithms {
            if set.candidates(None, *alg).next().is_none() && !set.keys.is_empty() {
                e.push(
                    format!("{path}.algorithms"),
                    format!("no configured key can verify {alg}"),
                );
            }
        }
    }
    let c = &r.jwks_cache;
    let cp = format!("{path}.jwks_cache");
    let cache = JwksCacheSettings {
        min_ttl: compile_duration(&c.min_ttl, &format!("{cp}.min_ttl"), e),
        max_ttl: compile_duration(&c.max_ttl, &format!("{cp}.max_ttl"), e),
        default_ttl: compile_duration(&c.default_ttl, &format!("{cp}.default_ttl"), e),
        unknown_kid_cooldown: compile_duration(
            &c.unknown_kid_cooldown,
            &format!("{cp}.unknown_kid_cooldown"),
            e,
        ),
        fetch_timeout: compile_duration(&c.fetch_timeout, &format!("{cp}.fetch_timeout"), e),
    };
    if cache.min_ttl > cache.max_ttl {
        e.push(format!("{cp}.min_ttl"), "must not exceed max_ttl");
    }
    // Floors: a cooldown of nothing lets forged `kid`s make a fetch each, and a fetch that
    // may not take a tenth of a second never succeeds.
    if cache.unknown_kid_cooldown < Duration::from_secs(1) {
        e.push(
            format!("{cp}.unknown_kid_cooldown"),
            "at least 1s: it bounds the fetches that tokens with unknown kids can cause",
        );
    }
    if cache.fetch_timeout < Duration::from_millis(100) {
        e.push(format!("{cp}.fetch_timeout"), "at least 100ms");
    }
    if r.max_token_bytes < 64 {
        e.push(format!("{path}.max_token_bytes"), "at least 64");
    }
    Some(JwtIssuer {
        name: Arc::from(name),
        issuer: r.issuer.clone(),
        source,
        match_kid: r.public_key_files.is_empty() && r.hmac_secret.is_none(),
        algorithms,
        audiences: r.audiences.clone(),
        typ: r.typ.clone(),
        leeway: compile_duration(&r.leeway, &format!("{path}.leeway"), e),
        required_claims: r.required_claims.clone(),
        max_lifetime: r
            .max_lifetime
            .as_ref()
            .map(|m| compile_duration(m, &format!("{path}.max_lifetime"), e)),
        max_token_bytes: r.max_token_bytes,
        claims: claim_names(&r.claims),
        cache,
        ca_pem,
    })
}

/// Compiles a route's `auth`. `None` (no `auth` key) is anonymous when the gateway has no
/// authenticator, and an error otherwise: once credentials exist, every route says what it
/// accepts.
pub fn compile_route(
    raw: Option<&RawRouteAuth>,
    settings: &AuthSettings,
    path: &str,
    e: &mut ConfigErrors,
) -> RouteAuth {
    let Some(r) = raw else {
        if settings.any_authenticator() {
            e.push(
                format!("{path}.auth"),
                "required once auth is configured: list the accepted methods, or write \
                 `auth: {anonymous: true}`",
            );
        }
        return RouteAuth::anonymous();
    };
    let p = format!("{path}.auth");
    if r.anonymous {
        if !r.methods.is_empty() {
            e.push(&p, "anonymous: true and methods exclude each other");
        }
        return RouteAuth::anonymous();
    }
    if r.methods.is_empty() {
        e.push(
            format!("{p}.methods"),
            "list the accepted methods, or write anonymous: true",
        );
    }
    let mut methods = Vec::new();
    for (i, m) in r.methods.iter().enumerate() {
        let mp = format!("{p}.methods[{i}]");
        let (kind, name) = match m.split_once(':') {
            Some((k, n)) => (k, Some(n)),
            None => (m.as_str(), None),
        };
        let pick = |names: Vec<&str>, what: &str, e: &mut ConfigErrors| -> Vec<usize> {
            match name {
                None if names.is_empty() => {
                    e.push(&mp, format!("no {what} is configured under auth"));
                    Vec::new()
                }
                None => (0..names.len()).collect(),
                Some(n) => match names.iter().position(|x| *x == n) {
                    Some(i) => vec![i],
                    None => {
                        e.push(&mp, format!("unknown {what} \"{n}\""));
                        Vec::new()
                    }
                },
            }
        };
        let method = match kind {
            "jwt" => Method::Jwt(pick(
                settings.jwt.iter().map(|j| &*j.name).collect(),
                "jwt issuer",
                e,
            )),
            "introspection" => Method::Introspection(pick(
                settings.introspection.iter().map(|j| &*j.name).collect(),
                "introspection endpoint",
                e,
            )),
            "api_key" if name.is_none() => {
                if settings.api_keys.is_none() {
                    e.push(&mp, "auth.api_keys is not configured");
                }
                Method::ApiKey
            }
            "mtls" if name.is_none() => Method::Mtls,
            _ => {
                e.push(
                    &mp,
                    format!(
                        "\"{m}\": one of jwt, jwt:<name>, introspection, \
                         introspection:<name>, api_key, mtls"
                    ),
                );
                continue;
            }
        };
        if methods.contains(&method) {
            e.push(&mp, "listed twice");
        }
        methods.push(method);
    }
    // A token is matched to the route's first issuer with its `iss`: a second one with the
    // same `iss` would never verify a token here (its audiences, keys or algorithms unused).
    let mut jwt: Vec<usize> = methods
        .iter()
        .filter_map(|m| match m {
            Method::Jwt(ix) => Some(ix.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    // (`[jwt, jwt:a]` names `a` twice: the same issuer, not two with one `iss`.)
    jwt.sort_unstable();
    jwt.dedup();
    for (n, &a) in jwt.iter().enumerate() {
        if let Some(&b) = jwt[..n]
            .iter()
            .find(|&&b| settings.jwt[b].issuer == settings.jwt[a].issuer)
        {
            e.push(
                format!("{p}.methods"),
                format!(
                    "jwt issuers \"{}\" and \"{}\" have the same issuer: a token is matched by its iss \
                     to the first alone, so the second would never verify one here; accept one of \
                     them on this route (jwt:<name>) or make them one entry",
                    settings.jwt[b].name, settings.jwt[a].name
                ),
            );
        }
    }
    if r.api_key_query.is_some() && !methods.contains(&Method::ApiKey) {
        e.push(format!("{p}.api_key_query"), "needs the api_key method");
    }
    // The parameter is read under every spelling frameworks fold to its name: the name must
    // be its own folded form (lower case, no `.`, space or brackets), or it would stand for
    // another one (`auth[key]` is `auth`).
    if let Some(q) = &r.api_key_query
        && (q.is_empty() || portcullis_core::query::fold_name(q) != *q)
    {
        e.push(
            format!("{p}.api_key_query"),
            format!(
                "\"{q}\": a parameter name as frameworks read it (lower case; no '.', space, \
                 '[' or ']'): \"{}\"",
                portcullis_core::query::fold_name(q)
            ),
        );
    }
    let mut spiffe_paths = Vec::new();
    for (i, s) in r.mtls.spiffe_paths.iter().enumerate() {
        let Some(rest) = s.strip_prefix('/') else {
            e.push(
                format!("{p}.mtls.spiffe_paths[{i}]"),
                "a path pattern starts with /",
            );
            continue;
        };
        let segs: Vec<String> = rest.split('/').map(String::from).collect();
        // What a SPIFFE ID's path may hold (the wildcards standing for segments), or the
        // pattern could never match an ID the gateway takes.
        let last = segs.len() - 1;
        let stand_in: Vec<&str> = segs
            .iter()
            .enumerate()
            .map(|(j, seg)| match seg.as_str() {
                "*" => "x",
                "**" if j == last => "x",
                seg => seg,
            })
            .collect();
        let as_id = format!("spiffe://example.org/{}", stand_in.join("/"));
        if portcullis_core::SpiffeId::parse(&as_id)
            .is_none_or(|id| id.path.strip_prefix('/') != Some(&*stand_in.join("/")))
        {
            e.push(
                format!("{p}.mtls.spiffe_paths[{i}]"),
                format!(
                    "\"{s}\" can never match a SPIFFE ID: segments are letters, digits, '.', \
                     '-' and '_' (not empty, not a dot segment), * for one, a last ** for more"
                ),
            );
            continue;
        }
        spiffe_paths.push(segs);
    }
    for (i, td) in r.mtls.trust_domains.iter().enumerate() {
        // Compared with the IDs' exactly: any other spelling would never match.
        if portcullis_core::SpiffeId::parse(&format!("spiffe://{td}"))
            .is_none_or(|id| id.trust_domain != *td)
        {
            e.push(
                format!("{p}.mtls.trust_domains[{i}]"),
                format!(
                    "\"{td}\" is not a SPIFFE trust domain (lowercase letters, digits, `.`, \
                     `-`, `_`; no spiffe:// nor path)"
                ),
            );
        }
    }
    if (!r.mtls.trust_domains.is_empty() || !r.mtls.spiffe_paths.is_empty())
        && !methods.contains(&Method::Mtls)
    {
        e.push(format!("{p}.mtls"), "needs the mtls method");
    }
    RouteAuth {
        methods,
        api_key_query: r.api_key_query.clone(),
        keep_authorization: r.authorization == ForwardAuthorization::Keep,
        identity_headers: r.identity_headers,
        internal_audience: r.internal_token.as_ref().map(|t| t.audience.clone()),
        mtls: MtlsRule {
            trust_domains: r.mtls.trust_domains.clone(),
            spiffe_paths,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn errors_of(auth: serde_json::Value) -> Vec<String> {
        let raw: RawAuth = serde_json::from_value(auth).unwrap();
        let mut e = ConfigErrors::new();
        compile(&raw, Path::new("."), &mut e);
        e.iter().map(|e| e.to_string()).collect()
    }

    /// Each identity field has a name of its own, none a field that frames, routes or
    /// authenticates requests.
    #[test]
    fn identity_header_names_are_distinct_and_unreserved() {
        let e = errors_of(serde_json::json!({"identity_headers": {
            "user": "x-id", "client": "X-Id", "roles": "authorization", "tenant": "host",
        }}));
        for want in [
            "auth.identity_headers.client: x-id is also auth.identity_headers.user",
            "auth.identity_headers.roles: authorization frames, routes or authenticates",
            "auth.identity_headers.tenant: host frames",
        ] {
            assert!(e.iter().any(|m| m.starts_with(want)), "{want}: {e:#?}");
        }
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(
            errors_of(serde_json::json!({"identity_headers": {"user": "x-remote-user"}}))
                .is_empty()
        );
    }

    /// An internal token lives for a request's length (at most a day) and names its issuer.
    #[test]
    fn internal_token_lifetimes_and_issuers_are_bounded() {
        for (it, want) in [
            (
                serde_json::json!({"ttl": "0s"}),
                "auth.internal_token.ttl: more than 0",
            ),
            (
                serde_json::json!({"ttl": "25h"}),
                "auth.internal_token.ttl: more than 0",
            ),
            (
                serde_json::json!({"issuer": " "}),
                "auth.internal_token.issuer: must not",
            ),
        ] {
            let e = errors_of(serde_json::json!({ "internal_token": it }));
            assert!(e.len() == 1 && e[0].starts_with(want), "{want}: {e:#?}");
        }
        assert!(errors_of(serde_json::json!({"internal_token": {"ttl": "24h"}})).is_empty());
    }

    /// `internal_token.algorithm` is what tokens are signed with: a key file of another
    /// algorithm (RSA, or a curve the setting does not name) is refused, never signed with.
    #[test]
    fn the_internal_token_key_must_be_of_the_configured_algorithm() {
        let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../jose/tests/keys");
        let errors = |algorithm: Option<&str>, file: &str| -> Vec<String> {
            let mut it = serde_json::json!({ "key_file": file });
            if let Some(a) = algorithm {
                it["algorithm"] = a.into();
            }
            let raw: RawAuth =
                serde_json::from_value(serde_json::json!({ "internal_token": it })).unwrap();
            let mut e = ConfigErrors::new();
            let s = compile(&raw, &keys, &mut e);
            if e.is_empty() {
                assert!(s.internal_token.key_pem.is_some());
            }
            e.iter().map(|e| e.to_string()).collect()
        };
        assert_eq!(errors(None, "ed.pem"), Vec::<String>::new());
        assert_eq!(errors(Some("EdDSA"), "ed.pem"), Vec::<String>::new());
        assert_eq!(errors(Some("ES256"), "p256.pem"), Vec::<String>::new());
        for (algorithm, file, found) in [
            (None, "p256.pem", "ES256"),
            (None, "rsa.pem", "RS256"),
            (Some("EdDSA"), "rsa.pem", "RS256"),
            (Some("ES256"), "rsa.pem", "RS256"),
            (Some("ES256"), "ed.pem", "EdDSA"),
        ] {
            let e = errors(algorithm, file);
            assert_eq!(e.len(), 1, "{algorithm:?} {file}: {e:?}");
            assert!(
                e[0].starts_with(&format!(
                    "auth.internal_token.key_file: a key for {found}, not"
                )),
                "{e:?}"
            );
        }
    }

    /// `max_in_flight` is a count a semaphore can hold: 0 and absurd values are refused at
    /// load (one above the semaphore's bound would panic when the endpoint is built).
    #[test]
    fn max_in_flight_is_bounded() {
        let errors = |n: u64| -> Vec<String> {
            let raw: RawAuth =
                serde_json::from_value(serde_json::json!({ "introspection": { "idp": {
                "endpoint": "https://idp.test/introspect", "client_id": "gw",
                "client_secret": { "value": "s" }, "max_in_flight": n } } }))
                .unwrap();
            let mut e = ConfigErrors::new();
            compile(&raw, Path::new("."), &mut e);
            e.iter().map(|e| e.to_string()).collect()
        };
        assert!(errors(1).is_empty() && errors(1_000_000).is_empty());
        for n in [0, 1_000_001, 3_000_000_000_000_000_000] {
            assert_eq!(
                errors(n),
                vec!["auth.introspection.idp.max_in_flight: between 1 and 1000000"],
                "{n}"
            );
        }
    }

    /// A certificate fingerprint is taken as `sha256:<hex>`, bare, in capitals, or in the
    /// `AB:CD:…` pairs OpenSSL prints; anything else is refused.
    #[test]
    fn certificate_fingerprints_in_their_usual_spellings() {
        let want = [0xa1u8; 32];
        let hex = "a1".repeat(32);
        let pairs = vec!["A1"; 32].join(":");
        for ok in [
            format!("sha256:{hex}"),
            format!("SHA256:{}", hex.to_uppercase()),
            hex.clone(),
            pairs.clone(),
            format!("sha256:{pairs}"),
            format!(" {hex} "),
        ] {
            assert_eq!(parse_cert_fingerprint(&ok), Ok(want), "{ok}");
        }
        for bad in [
            String::new(),
            "sha256:".into(),
            hex[..62].to_string(),
            format!("{hex}00"),
            format!("sha1:{hex}"),
            format!("sha256:{}zz", &hex[..62]),
            "é".repeat(32),
        ] {
            assert!(parse_cert_fingerprint(&bad).is_err(), "{bad}");
        }
    }

    /// A key source is reused across reloads only with the same CA bundle: one of the same
    /// length but other contents is another source (it trusts other servers).
    #[test]
    fn a_key_source_is_keyed_by_its_ca_bundles_contents() {
        let issuer = |ca: &[u8]| JwtIssuer {
            ca_pem: Some(ca.to_vec()),
            ..JwtIssuer::for_tests("https://i/jwks")
        };
        let (a, b) = (issuer(b"CA one"), issuer(b"CA two"));
        assert_ne!(a.source_key(), b.source_key());
        assert_eq!(a.source_key(), issuer(b"CA one").source_key());
    }
}
