//! Authorization configuration: the raw YAML shape (`authz:` and each route's `authz:`) and
//! its compilation into settings the step evaluates without parsing anything per request.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;
use portcullis_core::ConfigErrors;

use crate::rego::PolicyDecision;
use portcullis_core::units::{RawSize, compile_duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fieldmask::FieldMask;
use crate::geo::GeoDb;
use crate::opa::{OpaClient, OpaSettings};
use crate::rego::RegoPolicies;
use crate::rules::{Group, PathPattern, Requirement, ScopeHierarchy};

// ---------------------------------------------------------------------------------------------
// Raw

/// Gateway-wide authorization settings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAuthz {
    /// Scopes that imply others: `admin:orders: [write:orders]`, `write:orders: [read:orders]`.
    /// Expanded once when the configuration loads; cycles are refused.
    #[serde(default)]
    pub scope_hierarchy: BTreeMap<String, Vec<String>>,
    /// Method → action for resource policies. Defaults: GET, HEAD, OPTIONS → `read`; POST,
    /// PUT, PATCH → `write`; DELETE → `delete`. Entries here replace or add to those. A
    /// method without an action (TRACE, WebDAV's, QUERY …) is held to every policy on its
    /// path, and a policy that lists actions permits it nothing by itself.
    #[serde(default)]
    pub actions: BTreeMap<String, String>,
    /// Resource policies: requirements over path patterns and actions, covering many routes.
    #[serde(default)]
    pub policies: Vec<RawResourcePolicy>,
    /// Embedded Rego policies (OPA's language), evaluated in process.
    #[serde(default)]
    pub rego: RawRego,
    /// External OPA servers by name, for routes that ask one.
    #[serde(default)]
    pub opa: BTreeMap<String, RawOpaServer>,
    /// Zero-trust risk signals and their weights.
    #[serde(default)]
    pub risk: RawRisk,
    /// Largest response body a field mask filters; a larger one is withheld (502).
    /// Default `1MiB`.
    #[serde(default = "default_mask_bytes")]
    pub field_mask_max_body_bytes: RawSize,
    /// Headers a Rego or OPA decision may set on the request sent upstream. Client copies of
    /// each (also spelled with `_` for `-`) are removed from every request, whether or not a
    /// policy sets them; a decision that sets a name not listed is an error (503).
    #[serde(default)]
    pub policy_headers: Vec<String>,
}

impl Default for RawAuthz {
    fn default() -> Self {
        RawAuthz {
            scope_hierarchy: BTreeMap::new(),
            actions: BTreeMap::new(),
            policies: Vec::new(),
            rego: RawRego::default(),
            opa: BTreeMap::new(),
            risk: RawRisk::default(),
            field_mask_max_body_bytes: default_mask_bytes(),
            policy_headers: Vec::new(),
        }
    }
}

fn default_mask_bytes() -> RawSize {
    RawSize::bytes(1 << 20)
}

/// `any_of`: at least one; `all_of`: every one. Both given: both must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    #[serde(default)]
    pub any_of: Vec<String>,
    #[serde(default)]
    pub all_of: Vec<String>,
}

/// `enforce` (default): a denial refuses the request. `shadow`: evaluated and recorded in the
/// audit event, never enforced.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

/// A resource policy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawResourcePolicy {
    /// Unique name (audit).
    pub name: String,
    /// Path patterns: `/orders` (exact), `/orders/*` (one segment), `/orders/**` (any depth,
    /// `/orders` itself included).
    pub resources: Vec<String>,
    /// Actions it governs (`read`, `write`, `delete`, or configured ones). Empty: all. A
    /// method mapped to no action is held to the policy's requirement whatever it lists.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Required scopes.
    #[serde(default)]
    pub scopes: Option<RawGroup>,
    /// Required roles.
    #[serde(default)]
    pub roles: Option<RawGroup>,
    #[serde(default)]
    pub mode: Mode,
}

/// Rego modules.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRego {
    /// `.rego` files, relative to the configuration file.
    #[serde(default)]
    pub files: Vec<String>,
    /// A JSON file available to policies as `data`.
    #[serde(default)]
    pub data_file: Option<String>,
    /// Bound on one evaluation; beyond it the decision fails closed (503). Default `50ms`.
    #[serde(default = "default_rego_timeout")]
    pub timeout: String,
}

impl Default for RawRego {
    fn default() -> Self {
        RawRego {
            files: Vec::new(),
            data_file: None,
            timeout: default_rego_timeout(),
        }
    }
}

fn default_rego_timeout() -> String {
    "50ms".into()
}

/// An external OPA server (its Data API, `POST /v1/data/<path>`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawOpaServer {
    /// Base URL, e.g. `http://127.0.0.1:8181`.
    pub url: String,
    /// Default `200ms`.
    #[serde(default = "default_opa_timeout")]
    pub timeout: String,
    /// How long a decision is reused for the same input (`time` and `request_id` ignored).
    /// `0s` turns caching off (do that for time-dependent policies). Default `5s`.
    #[serde(default = "default_opa_cache")]
    pub cache_ttl: String,
    /// Default 10000.
    #[serde(default = "default_opa_entries")]
    pub cache_entries: usize,
    /// PEM CA bundle to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// A bearer token for OPA's own authentication: a secret (`{ env: NAME }`, `{ file: path }`
    /// or `{ value: … }`).
    #[serde(default)]
    pub token: Option<portcullis_core::RawSecret>,
    /// When OPA cannot answer: `closed` (default, 503) or `open` (allow, recorded).
    #[serde(default)]
    pub on_error: OnError,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Closed,
    Open,
}

fn default_opa_timeout() -> String {
    "200ms".into()
}
fn default_opa_cache() -> String {
    "5s".into()
}
fn default_opa_entries() -> usize {
    10_000
}

/// Risk signals. Each signal that fires adds its weight; the score is capped at 100.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRisk {
    /// Client networks with a bad reputation (CIDRs).
    #[serde(default)]
    pub reputation_list: Vec<String>,
    /// A MaxMind DB (GeoLite2/GeoIP2 Country or City) for the client's country.
    #[serde(default)]
    pub geoip_database: Option<String>,
    /// A header carrying the client's country (ISO 3166-1 alpha-2), set by a trusted proxy
    /// or CDN. Read only from trusted proxies; used when no database is configured or it
    /// has no answer.
    #[serde(default)]
    pub country_header: Option<String>,
    /// Countries considered risky.
    #[serde(default)]
    pub risky_countries: Vec<String>,
    /// If set, every other country (and an unknown one) is risky.
    #[serde(default)]
    pub expected_countries: Vec<String>,
    /// An authentication (`auth_time`) older than this is a signal. Default `12h`.
    #[serde(default = "default_auth_age")]
    pub max_auth_age: String,
    /// `acr` values that count as strong authentication.
    #[serde(default)]
    pub strong_acr: Vec<String>,
    /// `amr` values that count as strong authentication. Default `[mfa, hwk, otp, swk]`.
    #[serde(default = "default_strong_amr")]
    pub strong_amr: Vec<String>,
    /// A header carrying a device identifier; a device not seen before for the subject is a
    /// signal. Default: none (signal off).
    #[serde(default)]
    pub device_header: Option<String>,
    /// How long a device is remembered. Default `30d`.
    #[serde(default = "default_device_memory")]
    pub device_memory: String,
    /// Recent authentication failures from the client address that make a signal.
    /// Default 3.
    #[serde(default = "default_failures")]
    pub auth_failures_threshold: u32,
    /// Requests from the client address in the last ten minutes in which the WAF found
    /// something (scored matches, blocked or not) that make a signal. Default 1.
    #[serde(default = "default_waf_hits")]
    pub waf_hits_threshold: u32,
    #[serde(default)]
    pub weights: RawRiskWeights,
}

impl Default for RawRisk {
    fn default() -> Self {
        RawRisk {
            reputation_list: Vec::new(),
            geoip_database: None,
            country_header: None,
            risky_countries: Vec::new(),
            expected_countries: Vec::new(),
            max_auth_age: default_auth_age(),
            strong_acr: Vec::new(),
            strong_amr: default_strong_amr(),
            device_header: None,
            device_memory: default_device_memory(),
            auth_failures_threshold: default_failures(),
            waf_hits_threshold: default_waf_hits(),
            weights: RawRiskWeights::default(),
        }
    }
}

fn default_auth_age() -> String {
    "12h".into()
}
fn default_strong_amr() -> Vec<String> {
    ["mfa", "hwk", "otp", "swk"].map(String::from).to_vec()
}
fn default_device_memory() -> String {
    "30d".into()
}
fn default_failures() -> u32 {
    3
}
fn default_waf_hits() -> u32 {
    1
}

/// The weight of each signal (0–100).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRiskWeights {
    /// Client address on the reputation list. Default 50.
    #[serde(default = "w50")]
    pub reputation: u32,
    /// Risky or unexpected country. Default 30.
    #[serde(default = "w30")]
    pub country: u32,
    /// Authentication older than `max_auth_age`, or no `auth_time`. Default 20.
    #[serde(default = "w20")]
    pub auth_age: u32,
    /// Neither a strong `acr` nor a strong `amr`. Default 20.
    #[serde(default = "w20")]
    pub weak_authentication: u32,
    /// A device not seen before for this subject. Default 20.
    #[serde(default = "w20")]
    pub new_device: u32,
    /// Recent authentication failures from the client address. Default 30.
    #[serde(default = "w30")]
    pub auth_failures: u32,
    /// Recent WAF findings from the client address. Default 40.
    #[serde(default = "w40")]
    pub waf_hits: u32,
}

impl Default for RawRiskWeights {
    fn default() -> Self {
        RawRiskWeights {
            reputation: 50,
            country: 30,
            auth_age: 20,
            weak_authentication: 20,
            new_device: 20,
            auth_failures: 30,
            waf_hits: 40,
        }
    }
}

fn w40() -> u32 {
    40
}
fn w50() -> u32 {
    50
}
fn w30() -> u32 {
    30
}
fn w20() -> u32 {
    20
}

/// `any-authenticated`: every verified caller may use the route.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum Allow {
    #[serde(rename = "any-authenticated")]
    AnyAuthenticated,
}

/// A route's authorization. Without it an authenticated route refuses everyone (403).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRouteAuthz {
    /// `any-authenticated`: no requirement beyond a verified identity.
    #[serde(default)]
    pub allow: Option<Allow>,
    /// Required scopes (after the hierarchy's expansion).
    #[serde(default)]
    pub scopes: Option<RawGroup>,
    /// Required roles.
    #[serde(default)]
    pub roles: Option<RawGroup>,
    /// Per method, replacing `scopes`/`roles` for that method: `POST: {scopes: {all_of: …}}`.
    #[serde(default)]
    pub methods: BTreeMap<String, RawMethodRule>,
    /// Enforce or only record the scope and role rules.
    #[serde(default)]
    pub mode: Mode,
    /// The object must belong to the caller.
    #[serde(default)]
    pub owner: Option<RawOwner>,
    /// The tenant in the request must be the caller's.
    #[serde(default)]
    pub tenant: Option<RawTenant>,
    /// Which response fields each scope may see.
    #[serde(default)]
    pub field_masks: Option<RawFieldMasks>,
    /// A Rego rule of `authz.rego` deciding too.
    #[serde(default)]
    pub rego: Option<RawRouteRego>,
    /// An external OPA server deciding too.
    #[serde(default)]
    pub opa: Option<RawRouteOpa>,
    /// Risk thresholds.
    #[serde(default)]
    pub risk: Option<RawRouteRisk>,
    /// Authentication strength and freshness this route demands (401 step-up otherwise).
    #[serde(default)]
    pub require: Option<RawRequire>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawMethodRule {
    #[serde(default)]
    pub scopes: Option<RawGroup>,
    #[serde(default)]
    pub roles: Option<RawGroup>,
}

/// Ownership (the defence against broken object-level authorization): the named path
/// parameter and/or query parameter must equal the claim.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawOwner {
    /// A `{name}` of the route's path template.
    #[serde(default)]
    pub param: Option<String>,
    /// A query parameter.
    #[serde(default)]
    pub query: Option<String>,
    /// The claim it must equal. Default `sub`.
    #[serde(default = "default_owner_claim")]
    pub claim: String,
    /// Callers holding any of these scopes may act on anyone's objects.
    #[serde(default)]
    pub override_scopes: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
}

fn default_owner_claim() -> String {
    "sub".into()
}

/// Tenant isolation: the tenant named by the request must be the caller's tenant.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// A `{name}` of the route's path template.
    #[serde(default)]
    pub param: Option<String>,
    /// A request header.
    #[serde(default)]
    pub header: Option<String>,
    /// A query parameter.
    #[serde(default)]
    pub query: Option<String>,
    /// The caller's tenant claim. Default: the issuer's `claims.tenant` (the principal's
    /// tenant).
    #[serde(default)]
    pub claim: Option<String>,
    /// The header the verified tenant is sent upstream in. Default `x-portcullis-tenant`.
    #[serde(default = "default_tenant_header")]
    pub upstream_header: String,
    #[serde(default)]
    pub mode: Mode,
}

fn default_tenant_header() -> String {
    "x-portcullis-tenant".into()
}

/// Field masks: the fields callers holding a scope may see; several scopes see the union.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawFieldMasks {
    /// Scope → visible field paths (`id`, `customer.name`, `items.sku`, `*`).
    #[serde(default)]
    pub by_scope: BTreeMap<String, Vec<String>>,
    /// What a caller holding none of those scopes sees. Default: nothing (`{}`).
    #[serde(default)]
    pub default: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRouteRego {
    /// A rule of the loaded modules, e.g. `data.orders.allow`.
    pub query: String,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRouteOpa {
    /// A name under `authz.opa`.
    pub server: String,
    /// The decision's path, e.g. `orders/allow`.
    pub path: String,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRouteRisk {
    /// From this score up: 401 asking for stronger or fresher authentication.
    #[serde(default)]
    pub step_up: Option<u32>,
    /// From this score up: 403.
    #[serde(default)]
    pub deny: Option<u32>,
    /// `acr_values` of the step-up challenge.
    #[serde(default)]
    pub acr_values: Vec<String>,
    /// `max_age` of the step-up challenge, e.g. `5m`.
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRequire {
    /// The token's `acr` must be one of these.
    #[serde(default)]
    pub acr: Vec<String>,
    /// The token's `auth_time` must be at most this old, e.g. `15m`.
    #[serde(default)]
    pub max_age: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Compiled

/// Where a value of the request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Param(Arc<str>),
    Query(String),
    Header(HeaderName),
}

#[derive(Debug, Clone)]
pub struct Owner {
    pub param: Option<Arc<str>>,
    pub query: Option<String>,
    pub claim: String,
    pub override_scopes: Vec<String>,
    pub mode: Mode,
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub source: Source,
    pub claim: Option<String>,
    pub upstream_header: HeaderName,
    pub mode: Mode,
}

#[derive(Debug, Clone)]
pub struct FieldMasks {
    /// (scope, mask) in configuration order.
    pub by_scope: Vec<(String, Arc<FieldMask>)>,
    pub default: Arc<FieldMask>,
}

#[derive(Debug, Clone)]
pub struct RiskRule {
    pub step_up: Option<u32>,
    pub deny: Option<u32>,
    pub acr_values: Vec<String>,
    pub max_age: Option<Duration>,
    pub mode: Mode,
}

#[derive(Debug, Clone, Default)]
pub struct AuthRequire {
    pub acr: Vec<String>,
    pub max_age: Option<Duration>,
}

/// A route's compiled authorization.
#[derive(Debug, Clone, Default)]
pub struct RouteAuthz {
    /// Anonymous routes are not authorized at all.
    pub anonymous: bool,
    pub any_authenticated: bool,
    /// Scope and role rule for every method without its own.
    pub base: Option<Requirement>,
    pub per_method: Vec<(Method, Requirement)>,
    pub mode: Mode,
    pub owner: Option<Owner>,
    pub tenant: Option<Tenant>,
    pub field_masks: Option<FieldMasks>,
    pub rego: Option<(String, Mode)>,
    pub opa: Option<(usize, String, Mode)>,
    pub risk: Option<RiskRule>,
    pub require: Option<AuthRequire>,
    /// The security requirements of the OpenAPI operation the route was made from (set by
    /// the route group, `openapi.security: enforce`): checked in addition to the rules above,
    /// never permitting a request by themselves.
    pub openapi: Option<Arc<DocumentSecurity>>,
}

/// An OpenAPI operation's security requirements: any one alternative must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentSecurity {
    /// The operation (`operationId`, else `METHOD /path`), for verdicts.
    pub operation: String,
    pub alternatives: Vec<SecurityAlternative>,
}

/// One security requirement of a document (its schemes together).
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityAlternative {
    /// The schemes' names, joined with ` + `.
    pub schemes: String,
    /// The credentials that meet every scheme of it (and that the route accepts).
    pub methods: Vec<portcullis_core::AuthMethod>,
    /// The scopes (`oauth2`, `openIdConnect` schemes; through the hierarchy) and roles (other
    /// schemes) it lists, all required.
    pub requirement: Requirement,
}

impl RouteAuthz {
    /// Whether anything at all authorizes a request on this route (policies aside).
    pub fn has_rule(&self) -> bool {
        self.any_authenticated
            || self.base.is_some()
            || !self.per_method.is_empty()
            || self.owner.is_some()
            || self.tenant.is_some()
            || self.rego.is_some()
            || self.opa.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct ResourcePolicy {
    pub name: String,
    pub resources: Vec<PathPattern>,
    /// Empty: every action.
    pub actions: Vec<String>,
    pub requirement: Requirement,
    pub mode: Mode,
}

#[derive(Clone)]
pub struct Risk {
    pub reputation: Vec<IpNet>,
    pub geoip: Option<Arc<GeoDb>>,
    pub country_header: Option<HeaderName>,
    pub risky_countries: Vec<[u8; 2]>,
    pub expected_countries: Vec<[u8; 2]>,
    pub max_auth_age: Duration,
    pub strong_acr: Vec<String>,
    pub strong_amr: Vec<String>,
    pub device_header: Option<HeaderName>,
    pub device_memory: Duration,
    pub auth_failures_threshold: u32,
    pub waf_hits_threshold: u32,
    pub weights: RawRiskWeights,
}

impl std::fmt::Debug for Risk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Risk")
            .field("reputation", &self.reputation.len())
            .field("geoip", &self.geoip.as_ref().map(|g| g.database_type()))
            .field("country_header", &self.country_header)
            .finish_non_exhaustive()
    }
}

impl Risk {
    /// Whether a reputation list holds `ip` — an IPv4 client on a dual-stack listener
    /// (`::ffff:192.0.2.1`) under its IPv4 address too.
    pub fn is_reputation_listed(&self, ip: IpAddr) -> bool {
        let v4 = portcullis_core::addr::canonical(ip);
        self.reputation
            .iter()
            .any(|n| n.contains(&ip) || n.contains(&v4))
    }
}

/// Gateway-wide compiled settings.
#[derive(Clone)]
pub struct AuthzSettings {
    pub hierarchy: ScopeHierarchy,
    pub actions: Vec<(Method, Arc<str>)>,
    pub policies: Vec<ResourcePolicy>,
    pub rego: Option<Arc<RegoPolicies>>,
    pub opa: Vec<(String, Arc<OpaClient>, OnError)>,
    pub risk: Risk,
    pub mask_max_bytes: u64,
    /// Names a policy decision may set upstream (`authz.policy_headers`).
    pub policy_headers: Vec<HeaderName>,
}

impl std::fmt::Debug for AuthzSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthzSettings")
            .field("hierarchy", &self.hierarchy)
            .field("actions", &self.actions)
            .field("policies", &self.policies)
            .field("rego", &self.rego.is_some())
            .field(
                "opa",
                &self.opa.iter().map(|(n, _, _)| n).collect::<Vec<_>>(),
            )
            .field("risk", &self.risk)
            .finish()
    }
}

impl AuthzSettings {
    /// A policy decision whose headers are all among `policy_headers`; otherwise why not.
    pub fn declared(&self, d: PolicyDecision) -> Result<PolicyDecision, String> {
        match d
            .headers
            .iter()
            .find(|(n, _)| !self.policy_headers.contains(n))
        {
            None => Ok(d),
            Some((n, _)) => Err(format!(
                "policy result: header {:?} is not listed in authz.policy_headers",
                n.as_str()
            )),
        }
    }

    /// The action of a method (`read`, `write` …), if any is mapped.
    pub fn action(&self, m: &Method) -> Option<&str> {
        self.actions.iter().find(|(k, _)| k == m).map(|(_, a)| &**a)
    }
}

fn method(s: &str, path: &str, e: &mut ConfigErrors) -> Option<Method> {
    let up = s.trim().to_ascii_uppercase();
    match Method::from_bytes(up.as_bytes()) {
        Ok(m) if !up.is_empty() => Some(m),
        _ => {
            e.push(path, format!("\"{s}\" is not an HTTP method"));
            None
        }
    }
}

fn header_name(s: &str, path: &str, e: &mut ConfigErrors) -> Option<HeaderName> {
    match HeaderName::from_bytes(s.trim().to_ascii_lowercase().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            e.push(path, format!("\"{s}\" is not a valid header name"));
            None
        }
    }
}

fn check_names(names: &[String], what: &str, path: &str, e: &mut ConfigErrors) {
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c.is_control()) {
            e.push(
                format!("{path}[{i}]"),
                format!("\"{n}\" is not a valid {what} (no spaces, not empty)"),
            );
        }
    }
}

fn group(raw: &RawGroup, what: &str, path: &str, e: &mut ConfigErrors) -> Group {
    check_names(&raw.any_of, what, &format!("{path}.any_of"), e);
    check_names(&raw.all_of, what, &format!("{path}.all_of"), e);
    if raw.any_of.is_empty() && raw.all_of.is_empty() {
        e.push(
            path,
            format!("name at least one {what} in any_of or all_of"),
        );
    }
    Group {
        any_of: raw.any_of.clone(),
        all_of: raw.all_of.clone(),
    }
}

fn requirement(
    scopes: Option<&RawGroup>,
    roles: Option<&RawGroup>,
    path: &str,
    e: &mut ConfigErrors,
) -> Option<Requirement> {
    if scopes.is_none() && roles.is_none() {
        return None;
    }
    Some(Requirement {
        scopes: scopes.map(|g| group(g, "scope", &format!("{path}.scopes"), e)),
        roles: roles.map(|g| group(g, "role", &format!("{path}.roles"), e)),
    })
}

fn country_list(list: &[String], path: &str, e: &mut ConfigErrors) -> Vec<[u8; 2]> {
    list.iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let parsed = crate::geo::parse_country(c);
            if parsed.is_none() {
                e.push(
                    format!("{path}[{i}]"),
                    format!("\"{c}\" is not a two-letter country code"),
                );
            }
            parsed
        })
        .collect()
}

/// Compiles `authz:`. Files (Rego modules, the GeoIP database, CA bundles) are read here so
/// `portcullis check` reports their errors.
pub fn compile(raw: &RawAuthz, base: &Path, e: &mut ConfigErrors) -> AuthzSettings {
    let hierarchy = match ScopeHierarchy::compile(&raw.scope_hierarchy) {
        Ok(h) => h,
        Err(msg) => {
            e.push("authz.scope_hierarchy", msg);
            ScopeHierarchy::default()
        }
    };
    for (k, v) in &raw.scope_hierarchy {
        check_names(std::slice::from_ref(k), "scope", "authz.scope_hierarchy", e);
        check_names(v, "scope", &format!("authz.scope_hierarchy.{k}"), e);
    }

    let mut actions: Vec<(Method, Arc<str>)> = [
        (Method::GET, "read"),
        (Method::HEAD, "read"),
        (Method::OPTIONS, "read"),
        (Method::POST, "write"),
        (Method::PUT, "write"),
        (Method::PATCH, "write"),
        (Method::DELETE, "delete"),
    ]
    .into_iter()
    .map(|(m, a)| (m, Arc::from(a)))
    .collect();
    let mut head_mapped = false;
    for (m, a) in &raw.actions {
        let p = format!("authz.actions.{m}");
        check_names(std::slice::from_ref(a), "action", &p, e);
        if let Some(m) = method(m, &p, e) {
            head_mapped |= m == Method::HEAD;
            actions.retain(|(k, _)| *k != m);
            actions.push((m, Arc::from(a.as_str())));
        }
    }
    // HEAD asks for what GET would answer, headers and length included: unless mapped
    // itself, it is held to GET's action (as per-method route rules hold it to GET's rule).
    if !head_mapped
        && let Some(get) = actions
            .iter()
            .find(|(m, _)| *m == Method::GET)
            .map(|(_, a)| a.clone())
    {
        actions.retain(|(k, _)| *k != Method::HEAD);
        actions.push((Method::HEAD, get));
    }

    let mut names = HashSet::new();
    let policies = raw
        .policies
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let path = format!("authz.policies[{i}]");
            if !names.insert(p.name.as_str()) {
                e.push(
                    format!("{path}.name"),
                    format!("duplicate policy name \"{}\"", p.name),
                );
            }
            if p.resources.is_empty() {
                e.push(
                    format!("{path}.resources"),
                    "name at least one path pattern",
                );
            }
            let resources = p
                .resources
                .iter()
                .enumerate()
                .filter_map(|(j, r)| match PathPattern::parse(r) {
                    Ok(pp) => Some(pp),
                    Err(m) => {
                        e.push(format!("{path}.resources[{j}]"), m);
                        None
                    }
                })
                .collect();
            let known: HashSet<&str> = actions.iter().map(|(_, a)| &**a).collect();
            for (j, a) in p.actions.iter().enumerate() {
                if !known.contains(a.as_str()) {
                    let mut k: Vec<&str> = known.iter().copied().collect();
                    k.sort_unstable();
                    e.push(
                        format!("{path}.actions[{j}]"),
                        format!("unknown action \"{a}\" (known: {})", k.join(", ")),
                    );
                }
            }
            let Some(requirement) = requirement(p.scopes.as_ref(), p.roles.as_ref(), &path, e)
            else {
                e.push(&path, "a policy needs scopes or roles");
                return None;
            };
            Some(ResourcePolicy {
                name: p.name.clone(),
                resources,
                actions: p.actions.clone(),
                requirement,
                mode: p.mode,
            })
        })
        .collect();

    let rego_timeout = compile_duration(&raw.rego.timeout, "authz.rego.timeout", e);
    let rego = if raw.rego.files.is_empty() {
        if raw.rego.data_file.is_some() {
            e.push("authz.rego.data_file", "data without any policy file");
        }
        None
    } else {
        let data = raw.rego.data_file.as_ref().and_then(|f| {
            let p = portcullis_core::resolve_path(base, f);
            match std::fs::read(&p)
                .map_err(|err| err.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|err| err.to_string()))
            {
                Ok(v) => Some(v),
                Err(msg) => {
                    e.push("authz.rego.data_file", format!("{}: {msg}", p.display()));
                    None
                }
            }
        });
        let files: Vec<(String, std::path::PathBuf)> = raw
            .rego
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    format!("authz.rego.files[{i}]"),
                    portcullis_core::resolve_path(base, f),
                )
            })
            .collect();
        match RegoPolicies::load(&files, data, rego_timeout) {
            Ok(r) => Some(Arc::new(r)),
            Err(errs) => {
                for (p, m) in errs {
                    e.push(p, m);
                }
                None
            }
        }
    };

    let opa = raw
        .opa
        .iter()
        .filter_map(|(name, o)| {
            let p = format!("authz.opa.{name}");
            let timeout = compile_duration(&o.timeout, &format!("{p}.timeout"), e);
            let cache_ttl = compile_duration(&o.cache_ttl, &format!("{p}.cache_ttl"), e);
            let ca_pem = o.ca_file.as_ref().and_then(|f| {
                let path = portcullis_core::resolve_path(base, f);
                match std::fs::read(&path) {
                    Ok(b) => Some(b),
                    Err(err) => {
                        e.push(format!("{p}.ca_file"), format!("{}: {err}", path.display()));
                        None
                    }
                }
            });
            let mut headers = Vec::new();
            if let Some(secret) = o
                .token
                .as_ref()
                .and_then(|t| t.resolve(&format!("{p}.token"), base, e))
            {
                match http::HeaderValue::from_str(&format!("Bearer {}", secret.trim())) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        headers.push((http::header::AUTHORIZATION, v));
                    }
                    Err(_) => e.push(format!("{p}.token"), "not a valid header value"),
                }
            }
            let url_ok = (o.url.starts_with("http://") || o.url.starts_with("https://"))
                && o.url.parse::<http::Uri>().is_ok();
            if !url_ok {
                e.push(
                    format!("{p}.url"),
                    format!("\"{}\" is not an http(s) URL", o.url),
                );
                return None;
            }
            match OpaClient::new(OpaSettings {
                url: o.url.trim_end_matches('/').to_string(),
                timeout,
                cache_ttl,
                cache_entries: o.cache_entries,
                ca_pem,
                headers,
            }) {
                Ok(c) => Some((name.clone(), Arc::new(c), o.on_error)),
                Err(msg) => {
                    e.push(&p, msg);
                    None
                }
            }
        })
        .collect();

    let r = &raw.risk;
    let reputation = r
        .reputation_list
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            // As every list of addresses: an IPv4-mapped entry is its IPv4 network (client
            // addresses are compared in their IPv4 form), bits past the prefix refused.
            match portcullis_core::addr::parse_net(c) {
                Ok(n) => Some(n),
                Err(m) => {
                    e.push(format!("authz.risk.reputation_list[{i}]"), m);
                    None
                }
            }
        })
        .collect();
    let geoip = r.geoip_database.as_ref().and_then(|f| {
        let p = portcullis_core::resolve_path(base, f);
        match GeoDb::open(&p) {
            Ok(db) => Some(Arc::new(db)),
            Err(msg) => {
                e.push("authz.risk.geoip_database", msg);
                None
            }
        }
    });
    let w = &r.weights;
    for (name, v) in [
        ("reputation", w.reputation),
        ("country", w.country),
        ("auth_age", w.auth_age),
        ("weak_authentication", w.weak_authentication),
        ("new_device", w.new_device),
        ("auth_failures", w.auth_failures),
        ("waf_hits", w.waf_hits),
    ] {
        if v > 100 {
            e.push(
                format!("authz.risk.weights.{name}"),
                format!("{v} is above 100"),
            );
        }
    }
    let risk = Risk {
        reputation,
        geoip,
        country_header: r
            .country_header
            .as_ref()
            .and_then(|h| header_name(h, "authz.risk.country_header", e)),
        risky_countries: country_list(&r.risky_countries, "authz.risk.risky_countries", e),
        expected_countries: country_list(&r.expected_countries, "authz.risk.expected_countries", e),
        max_auth_age: compile_duration(&r.max_auth_age, "authz.risk.max_auth_age", e),
        strong_acr: r.strong_acr.clone(),
        strong_amr: r.strong_amr.clone(),
        device_header: r
            .device_header
            .as_ref()
            .and_then(|h| header_name(h, "authz.risk.device_header", e)),
        device_memory: compile_duration(&r.device_memory, "authz.risk.device_memory", e),
        auth_failures_threshold: r.auth_failures_threshold.max(1),
        waf_hits_threshold: r.waf_hits_threshold.max(1),
        weights: r.weights.clone(),
    };

    AuthzSettings {
        hierarchy,
        actions,
        policies,
        rego,
        opa,
        risk,
        mask_max_bytes: raw
            .field_mask_max_body_bytes
            .compile("authz.field_mask_max_body_bytes", e),
        policy_headers: policy_headers(&raw.policy_headers, e),
    }
}

/// `authz.policy_headers`: valid names, none a framing or hop-by-hop one.
fn policy_headers(raw: &[String], e: &mut ConfigErrors) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = Vec::with_capacity(raw.len());
    for (i, n) in raw.iter().enumerate() {
        let path = format!("authz.policy_headers[{i}]");
        let Some(h) = header_name(n, &path, e) else {
            continue;
        };
        if crate::rego::FORBIDDEN_HEADERS.contains(&h.as_str()) {
            e.push(path, format!("\"{n}\" may not be set by a policy"));
        } else if !out.contains(&h) {
            out.push(h);
        }
    }
    out
}

/// What the route compiler knows about the route.
pub struct RouteFacts<'a> {
    /// The route takes no credentials.
    pub anonymous: bool,
    /// `{name}` parameters of its path template.
    pub params: &'a [Arc<str>],
}

/// Compiles a route's `authz:`. `path` is the route's configuration path (`routes[3]`).
pub fn compile_route(
    raw: Option<&RawRouteAuthz>,
    facts: &RouteFacts<'_>,
    settings: &AuthzSettings,
    path: &str,
    e: &mut ConfigErrors,
) -> RouteAuthz {
    let p = format!("{path}.authz");
    let Some(r) = raw else {
        return RouteAuthz {
            anonymous: facts.anonymous,
            ..RouteAuthz::default()
        };
    };
    if facts.anonymous {
        e.push(
            &p,
            "an anonymous route has no caller to authorize: remove authz or require \
             authentication",
        );
        return RouteAuthz {
            anonymous: true,
            ..RouteAuthz::default()
        };
    }
    let param = |name: &str, at: String, e: &mut ConfigErrors| -> Option<Arc<str>> {
        let found = facts.params.iter().find(|p| &***p == name).cloned();
        if found.is_none() {
            e.push(
                at,
                format!("\"{{{name}}}\" is not a parameter of the route's path template"),
            );
        }
        found
    };

    let base = requirement(r.scopes.as_ref(), r.roles.as_ref(), &p, e);
    let mut per_method = Vec::new();
    for (m, rule) in &r.methods {
        let mp = format!("{p}.methods.{m}");
        let Some(m) = method(m, &mp, e) else { continue };
        match requirement(rule.scopes.as_ref(), rule.roles.as_ref(), &mp, e) {
            Some(req) => per_method.push((m, req)),
            None => e.push(&mp, "give scopes or roles"),
        }
    }
    // In shadow mode the requirements are being tried out beside a permit: allowed together.
    if r.allow.is_some() && r.mode == Mode::Enforce && (base.is_some() || !per_method.is_empty()) {
        e.push(
            format!("{p}.allow"),
            "any-authenticated and enforced scope or role requirements exclude each other \
             (set mode: shadow to try requirements out beside it)",
        );
    }

    let owner = r.owner.as_ref().map(|o| {
        let op = format!("{p}.owner");
        if o.param.is_none() && o.query.is_none() {
            e.push(
                &op,
                "name the path parameter (param) or query parameter (query)",
            );
        }
        check_names(
            &o.override_scopes,
            "scope",
            &format!("{op}.override_scopes"),
            e,
        );
        Owner {
            param: o
                .param
                .as_ref()
                .and_then(|n| param(n, format!("{op}.param"), e)),
            query: o.query.clone(),
            claim: o.claim.clone(),
            override_scopes: o.override_scopes.clone(),
            mode: o.mode,
        }
    });

    let tenant = r.tenant.as_ref().and_then(|t| {
        let tp = format!("{p}.tenant");
        let n = [t.param.is_some(), t.header.is_some(), t.query.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if n != 1 {
            e.push(&tp, "name exactly one of param, header, query");
            return None;
        }
        let source = if let Some(n) = &t.param {
            Source::Param(param(n, format!("{tp}.param"), e)?)
        } else if let Some(h) = &t.header {
            Source::Header(header_name(h, &format!("{tp}.header"), e)?)
        } else {
            Source::Query(t.query.clone().unwrap_or_default())
        };
        Some(Tenant {
            source,
            claim: t.claim.clone(),
            upstream_header: header_name(&t.upstream_header, &format!("{tp}.upstream_header"), e)?,
            mode: t.mode,
        })
    });

    let field_masks = r.field_masks.as_ref().map(|fm| {
        let fp = format!("{p}.field_masks");
        let mut compile_mask = |paths: &[String], at: String| {
            // `*` keeps every key of the body whole (and arrays are crossed): everything.
            if paths.iter().any(|p| p == "*") {
                return Arc::new(FieldMask::all());
            }
            // No path: nothing is seen (objects become `{}`).
            if paths.is_empty() {
                return Arc::new(FieldMask::union(std::iter::empty()));
            }
            match FieldMask::compile(paths) {
                Ok(m) => Arc::new(m),
                Err(msg) => {
                    e.push(at, msg);
                    Arc::new(FieldMask::union(std::iter::empty()))
                }
            }
        };
        let by_scope = fm
            .by_scope
            .iter()
            .map(|(s, paths)| (s.clone(), compile_mask(paths, format!("{fp}.by_scope.{s}"))))
            .collect();
        let default = compile_mask(&fm.default, format!("{fp}.default"));
        FieldMasks { by_scope, default }
    });

    let rego = r.rego.as_ref().and_then(|rr| {
        let rp = format!("{p}.rego.query");
        match &settings.rego {
            None => {
                e.push(&rp, "no Rego policies are loaded (authz.rego.files)");
                None
            }
            Some(pol) => {
                if let Err(msg) = pol.check_query(&rr.query) {
                    e.push(&rp, msg);
                }
                Some((rr.query.clone(), rr.mode))
            }
        }
    });

    let opa = r.opa.as_ref().and_then(|o| {
        let op = format!("{p}.opa");
        let idx = settings.opa.iter().position(|(n, _, _)| *n == o.server);
        if idx.is_none() {
            let known: Vec<&str> = settings.opa.iter().map(|(n, _, _)| n.as_str()).collect();
            e.push(
                format!("{op}.server"),
                format!(
                    "unknown OPA server \"{}\" (known: {})",
                    o.server,
                    known.join(", ")
                ),
            );
        }
        let path = o.path.trim_matches('/').replace('.', "/");
        if path.is_empty()
            || path
                .split('/')
                .any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            e.push(
                format!("{op}.path"),
                format!("\"{}\" is not a decision path like orders/allow", o.path),
            );
        }
        Some((idx?, path, o.mode))
    });

    let risk = r.risk.as_ref().map(|rr| {
        let rp = format!("{p}.risk");
        if rr.step_up.is_none() && rr.deny.is_none() {
            e.push(&rp, "give step_up or deny (or both)");
        }
        for (k, v) in [("step_up", rr.step_up), ("deny", rr.deny)] {
            if v.is_some_and(|v| v == 0 || v > 100) {
                e.push(format!("{rp}.{k}"), "a threshold is between 1 and 100");
            }
        }
        if let (Some(s), Some(d)) = (rr.step_up, rr.deny)
            && s > d
        {
            e.push(&rp, "step_up above deny would never ask for step-up");
        }
        RiskRule {
            step_up: rr.step_up,
            deny: rr.deny,
            acr_values: rr.acr_values.clone(),
            max_age: rr
                .max_age
                .as_ref()
                .map(|m| compile_duration(m, &format!("{rp}.max_age"), e)),
            mode: rr.mode,
        }
    });

    let require = r.require.as_ref().map(|rq| {
        let rp = format!("{p}.require");
        if rq.acr.is_empty() && rq.max_age.is_none() {
            e.push(&rp, "give acr or max_age");
        }
        AuthRequire {
            acr: rq.acr.clone(),
            max_age: rq
                .max_age
                .as_ref()
                .map(|m| compile_duration(m, &format!("{rp}.max_age"), e)),
        }
    });

    let out = RouteAuthz {
        anonymous: false,
        any_authenticated: r.allow.is_some(),
        base,
        per_method,
        mode: r.mode,
        owner,
        tenant,
        field_masks,
        rego,
        opa,
        risk,
        require,
        openapi: None,
    };
    if !out.has_rule() && out.field_masks.is_none() && out.risk.is_none() && out.require.is_none() {
        e.push(
            &p,
            "no rule: give scopes, roles, owner, tenant, rego, opa, or allow: any-authenticated",
        );
    }
    out
}
