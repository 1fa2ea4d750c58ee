//! The user-facing format: what operators write in YAML. Every struct refuses unknown keys.
//! Values that need parsing (addresses, durations, CIDRs, sizes) stay strings here and are
//! parsed by [`crate::compile`], so that every malformed value is reported with its path.

use std::collections::BTreeMap;

pub use portcullis_authn::config::{RawAuth, RawRouteAuth};
pub use portcullis_authz::config::{RawAuthz, RawRouteAuthz};
pub use portcullis_contract::config::RawOpenApi;
pub use portcullis_core::RawSecret;
use portcullis_core::RawSecretOrString;
use portcullis_core::units::RawSize;
pub use portcullis_cors::{RawCors, RawWebSocket, RawWebSocketSettings};
use portcullis_ipfilter::RawIpFilter;
use portcullis_limits::RawLimits;
pub use portcullis_ratelimit::config::RawRateLimits;
pub use portcullis_response::{RawErrors, RawResponseFilter, RawSecurityHeaders};
pub use portcullis_tokenx::RawTokenExchange;
pub use portcullis_waf::config::RawWaf;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Portcullis configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where the gateway accepts client traffic.
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// The admin listener (health, readiness, metrics, running config).
    #[serde(default)]
    pub admin: RawAdmin,
    /// Gateway-wide request handling.
    #[serde(default)]
    pub server: RawServer,
    /// Log output.
    #[serde(default)]
    pub logging: RawLogging,
    /// The audit trail: one JSON event per request.
    #[serde(default)]
    pub audit: RawAudit,
    /// Named upstream pools.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Routes, the only requests that are served: anything else is refused with 404.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// RFC 8693 token exchange served by the gateway (routes reach it through an upstream of
    /// `kind: token_exchange`). Absent: no token endpoint.
    #[serde(default)]
    pub token_exchange: Option<RawTokenExchange>,
    /// Authentication: JWT issuers, introspection, API keys, revocation, identity headers.
    #[serde(default)]
    pub auth: RawAuth,
    /// Authorization: scope hierarchy, resource policies, Rego and OPA, risk signals.
    #[serde(default)]
    pub authz: RawAuthz,
    /// Rate limits, quotas, concurrency limits, adaptive load protection.
    #[serde(default)]
    pub rate_limits: RawRateLimits,
    /// Client addresses banned for a while after too many refused requests. Absent: no bans.
    #[serde(default)]
    pub bans: portcullis_ipfilter::bans::RawBans,
    /// The WAF's gateway-wide settings (every route inherits them). Absent: on, `block`,
    /// paranoia 1, threshold 5.
    #[serde(default)]
    pub waf: RawWaf,
    /// Security headers every response carries (routes override key by key). Absent: the
    /// defaults (HSTS on TLS listeners, nosniff, DENY, a locked-down CSP …).
    #[serde(default)]
    pub security_headers: Option<RawSecurityHeaders>,
    /// Upstream error bodies replaced by a generic problem (routes override key by key).
    /// Absent: 5xx bodies replaced, 4xx passed.
    #[serde(default)]
    pub errors: Option<RawErrors>,
}

/// A client-facing listener.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// A name for logs, metrics and audit.
    pub name: String,
    /// `IP:port` to bind (`0.0.0.0:443`, `[::]:8443`, `127.0.0.1:0` for an ephemeral port).
    pub address: String,
    /// TLS termination; absent means cleartext HTTP/1.1 and h2c (prior knowledge).
    #[serde(default)]
    pub tls: Option<RawListenerTls>,
}

/// TLS settings of a listener.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// Certificates; the one whose names match the client's SNI is served. The first is the
    /// default for clients that send no SNI or an unknown name.
    pub certificates: Vec<RawCertificate>,
    /// Lowest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default = "default_tls_min")]
    pub min_version: String,
    /// Client certificates (mTLS). Absent: none asked for.
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
}

/// Client certificate verification on a TLS listener.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    /// `required`: the handshake fails without a certificate that verifies. `optional`
    /// (default): a certificate, when sent, must verify; routes decide whether they need one.
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// PEM file of the CA certificates client certificates must chain to.
    pub ca_file: String,
    /// SPIFFE trust domains and the PEM file of each one's CA certificates (its trust bundle):
    /// a certificate's SPIFFE id counts only when the certificate also chains to its own trust
    /// domain's bundle, so that a CA trusted for one domain cannot issue ids of another. Empty
    /// (default): any CA of `ca_file` vouches for ids of any domain.
    #[serde(default)]
    pub spiffe_bundles: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    Required,
    #[default]
    Optional,
}

fn default_tls_min() -> String {
    "1.2".into()
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM file: the leaf certificate first, then intermediates.
    pub cert_file: String,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// Names this certificate answers for in SNI (exact or `*.example.com`). Default: the
    /// certificate's DNS subject alternative names.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// The admin listener.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Serve the admin API at all. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `IP:port`. Default `127.0.0.1:9901`. A non-loopback address requires `token`.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Bearer token required on every admin request except `/healthz` and `/readyz`.
    #[serde(default)]
    pub token: Option<RawSecret>,
    /// A second bearer token that may only read (`GET`/`HEAD`: metrics, configuration, state)
    /// — for scrapers and dashboards; every change (`POST`, `DELETE`) needs `token`.
    /// Requires `token`, and must differ from it.
    #[serde(default)]
    pub read_token: Option<RawSecret>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            enabled: true,
            address: default_admin_address(),
            token: None,
            read_token: None,
        }
    }
}

fn default_admin_address() -> String {
    "127.0.0.1:9901".into()
}

fn default_true() -> bool {
    true
}

/// Gateway-wide request handling.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Peers (CIDRs) whose `X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto` and
    /// `X-Request-ID` are believed. Default: none — every peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Which header a trusted proxy names the client in: `x-forwarded-for` (default) or
    /// `forwarded` (RFC 7239 `for=`). Only that one is read for the client address: a proxy
    /// that writes one header and passes the client's copy of the other on would otherwise let
    /// the client choose its address.
    #[serde(default)]
    pub client_address_header: ClientAddressHeader,
    /// Request id handling.
    #[serde(default)]
    pub request_id: RawRequestId,
    /// Which forwarding headers are sent upstream.
    #[serde(default)]
    pub forwarded_headers: RawForwardedHeaders,
    /// W3C trace context: `continue` (default: continued or started, the gateway a new parent
    /// span) or `pass` (the client's fields go on as sent; none started).
    #[serde(default)]
    pub trace_context: TraceContext,
    /// What an encoded slash (`%2F`) in a request path is met with: `reject` (default, 400) or
    /// `keep` (passed on encoded, part of its segment).
    #[serde(default)]
    pub encoded_slash: RawEncodedSlash,
    /// What a `;` (or `%3B`) in a request path is met with: `reject` (default, 400: servers
    /// that strip path parameters read `/admin;x/users` as `/admin/users`) or `keep` (an
    /// ordinary character of its segment; dot segments with a parameter still refused).
    #[serde(default)]
    pub path_semicolons: RawSemicolons,
    /// What a method or URL override is met with (`X-HTTP-Method-Override`, `X-HTTP-Method`,
    /// `X-Method-Override`, `X-Original-URL`, `X-Rewrite-URL` in any case or `_` spelling, a
    /// query parameter `_method`): `refuse` (default, 400: the backend would run another method
    /// or serve another path than the one the gateway authorized) or `pass` (forwarded as sent).
    #[serde(default)]
    pub method_override: MethodOverride,
    /// Size limits on every request.
    #[serde(default)]
    pub limits: RawLimits,
    /// Gateway-wide client address lists, checked before routing.
    #[serde(default)]
    pub ip_filter: RawIpFilter,
    /// Time allowed to receive a request head. Default `10s`.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout: String,
    /// Most concurrent streams per HTTP/2 connection. Default 100.
    #[serde(default = "default_h2_streams")]
    pub http2_max_concurrent_streams: u32,
    /// Most streams an HTTP/2 client may reset before their answers in one second of a
    /// connection; past it the connection is closed. Default 100; 0: no limit.
    #[serde(default = "default_h2_resets")]
    pub http2_max_resets_per_second: u32,
    /// Close a connection on which no byte moved for this long. Default `60s`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: String,
    /// Close an HTTP/2 connection whose answers have waited this long on the client's
    /// flow-control window with none of them moving. Default `60s`.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: String,
    /// Slowest average rate, in bytes per second, at which a client may take an answer the
    /// gateway has more of to send, judged while its writes wait on the client. Default 256;
    /// 0 disables.
    #[serde(default = "default_send_min_rate")]
    pub send_min_bytes_per_second: u64,
    /// Longest wait for the next piece of a request body. Default `30s`.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: String,
    /// Slowest accepted average body rate in bytes per second, measured after the first
    /// `10s` of a body. Default 1024; 0 disables.
    #[serde(default = "default_body_min_rate")]
    pub body_min_bytes_per_second: u64,
    /// Most open client connections in all. Default 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most open client connections from one client address. Default 512.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// On stop, how long requests in flight may take to finish. Default `15s`.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: String,
    /// On stop, how long to keep accepting and serving, with `/readyz` saying not ready,
    /// before the drain. Default `0s`.
    #[serde(default = "default_stop_delay")]
    pub stop_delay: String,
    /// Whether an HTTP/1.x client that ends its stream (or resets the connection) while its
    /// request is in flight abandons it. Default false: the end of the stream is a half-close.
    #[serde(default)]
    pub abort_on_client_close: bool,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            trusted_proxies: Vec::new(),
            client_address_header: ClientAddressHeader::default(),
            request_id: RawRequestId::default(),
            forwarded_headers: RawForwardedHeaders::default(),
            encoded_slash: RawEncodedSlash::default(),
            path_semicolons: RawSemicolons::default(),
            trace_context: TraceContext::default(),
            method_override: MethodOverride::default(),
            limits: RawLimits::default(),
            ip_filter: RawIpFilter::default(),
            header_read_timeout: default_header_timeout(),
            http2_max_concurrent_streams: default_h2_streams(),
            http2_max_resets_per_second: default_h2_resets(),
            idle_timeout: default_idle_timeout(),
            send_timeout: default_send_timeout(),
            send_min_bytes_per_second: default_send_min_rate(),
            body_read_timeout: default_body_read_timeout(),
            body_min_bytes_per_second: default_body_min_rate(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            drain_timeout: default_drain_timeout(),
            stop_delay: default_stop_delay(),
            abort_on_client_close: false,
        }
    }
}

fn default_header_timeout() -> String {
    "10s".into()
}
fn default_h2_streams() -> u32 {
    100
}
fn default_h2_resets() -> u32 {
    100
}
fn default_idle_timeout() -> String {
    "60s".into()
}
fn default_send_timeout() -> String {
    "60s".into()
}
fn default_send_min_rate() -> u64 {
    256
}
fn default_body_read_timeout() -> String {
    "30s".into()
}
fn default_body_min_rate() -> u64 {
    1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_ip() -> usize {
    512
}
fn default_drain_timeout() -> String {
    "15s".into()
}
fn default_stop_delay() -> String {
    "0s".into()
}

/// Request id handling.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRequestId {
    /// Header carrying the id upstream and back to the client. Default `x-request-id`.
    #[serde(default = "default_request_id_header")]
    pub header: String,
    /// Whose incoming id is kept: `trusted_proxies` (default), `any` or `none`.
    #[serde(default)]
    pub accept_from: AcceptFrom,
    /// Send the id upstream (default true). When false, a client's copy is removed.
    #[serde(default = "default_true")]
    pub upstream: bool,
    /// Return the id on every answer (default true). When false, only the gateway's problem
    /// documents (its refusals and upstream failures) carry it as a header.
    #[serde(default = "default_true")]
    pub response: bool,
}

impl Default for RawRequestId {
    fn default() -> Self {
        RawRequestId {
            header: default_request_id_header(),
            accept_from: AcceptFrom::default(),
            upstream: true,
            response: true,
        }
    }
}

fn default_request_id_header() -> String {
    "x-request-id".into()
}

/// The header a trusted proxy names the client in.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum ClientAddressHeader {
    #[default]
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// Whose incoming request id is kept.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AcceptFrom {
    #[default]
    TrustedProxies,
    Any,
    None,
}

/// What a `;` (or `%3B`) in a request path is met with.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawSemicolons {
    /// Refused with 400.
    #[default]
    Reject,
    /// An ordinary character of its segment (`/a;jsessionid=1`), except in dot segments.
    Keep,
}

/// The gateway's part in W3C trace context (`traceparent`, `tracestate`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TraceContext {
    /// The caller's trace is continued with the gateway as a new parent span, or one is
    /// started; a malformed `traceparent` is replaced and a malformed `tracestate` dropped.
    #[default]
    Continue,
    /// The gateway takes no part: the client's fields go on as sent (like any other field),
    /// and none is started.
    Pass,
}

/// What a method or URL override in a request is met with.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MethodOverride {
    /// Refused with 400: the method and URL the gateway authorizes are the request line's.
    #[default]
    Refuse,
    /// Forwarded as sent, for backends that need them: per-method authorization then no
    /// longer binds what such a backend runs.
    Pass,
}

/// What an encoded slash (`%2F`) in a request path is met with.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawEncodedSlash {
    /// Refused with 400.
    #[default]
    Reject,
    /// Passed on encoded, part of its segment, between text that is neither empty nor a dot
    /// segment.
    Keep,
}

/// Which forwarding headers are sent upstream.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawForwardedHeaders {
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`. Default true.
    #[serde(default = "default_true")]
    pub x_forwarded: bool,
    /// RFC 7239 `Forwarded`. Default true.
    #[serde(default = "default_true")]
    pub forwarded: bool,
}

impl Default for RawForwardedHeaders {
    fn default() -> Self {
        RawForwardedHeaders {
            x_forwarded: true,
            forwarded: true,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    /// `pretty` (default) or `json`. The `--log-format` flag overrides it.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `portcullis=debug,info`. Default `info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// The audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Write audit events at all. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `stdout` (default), `stderr` or `file`.
    #[serde(default)]
    pub output: AuditOutput,
    /// File path when `output` is `file` (appended to).
    #[serde(default)]
    pub path: Option<String>,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            enabled: true,
            output: AuditOutput::default(),
            path: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutput {
    #[default]
    Stdout,
    Stderr,
    File,
}

/// A named pool of upstream targets, or the built-in echo upstream.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `proxy` (default): forward to `targets`. `echo`: answer in process with the request
    /// as the upstream would have received it, as JSON (for demos and tests). `static`: answer
    /// in process from `responses`.
    /// `token_exchange`: the token endpoint of the `token_exchange` section, in process.
    #[serde(default)]
    pub kind: UpstreamKind,
    /// `http://host:port` or `https://host:port` URLs (no path), optionally with a weight.
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    /// `auto` (default: HTTP/1.1 in cleartext, ALPN over TLS), `http1`, or `http2` (h2c prior
    /// knowledge in cleartext; needed for gRPC to cleartext backends).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// `round_robin` (default) or `least_requests` (power of two random choices).
    #[serde(default)]
    pub balance: Balance,
    /// TCP (and TLS) connect timeout. Default `2s`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// Time to the upstream's response head. Default `30s`.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
    /// Longest wait for the next piece of an answer's body once its head has come. Default
    /// `60s`.
    #[serde(default = "default_upstream_read_timeout")]
    pub read_timeout: String,
    /// How long an idle pooled connection is kept. Default `90s`.
    #[serde(default = "default_pool_idle")]
    pub idle_timeout: String,
    /// Most idle pooled connections per target. Default 64.
    #[serde(default = "default_pool_max_idle")]
    pub max_idle_per_target: usize,
    /// Retries of idempotent requests.
    #[serde(default)]
    pub retries: RawRetries,
    /// Active health checking; absent: none.
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    /// Passive ejection of failing targets.
    #[serde(default)]
    pub passive_health: RawPassiveHealth,
    /// TLS to `https://` targets.
    #[serde(default)]
    pub tls: RawUpstreamTls,
    /// `preserve` (default): send the client's Host. `target`: send the target's host:port.
    #[serde(default)]
    pub host_header: HostHeader,
    /// A concurrency limit that adapts to the upstream's latency (gradient): requests over it
    /// get 503 `overloaded` instead of piling onto a struggling backend. Default: off.
    #[serde(default)]
    pub adaptive_concurrency: Option<RawAdaptiveConcurrency>,
    /// `kind: static` only: canned answers, the first whose `match` takes the request (method
    /// and path as the upstream would receive them) wins; none: 404 with an empty body.
    #[serde(default)]
    pub responses: Vec<RawStaticResponse>,
}

/// One canned answer of a `static` upstream (mocks, maintenance pages, demos).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawStaticResponse {
    /// `METHOD /path`: a method (or `*` for any) and an exact path or a template
    /// (`/products/{id}`; a `{name}` matches one segment).
    #[serde(rename = "match")]
    pub matcher: String,
    /// Default 200.
    #[serde(default = "default_static_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body as text. At most one of `body` and `json`.
    #[serde(default)]
    pub body: Option<String>,
    /// The body as a JSON value (written in YAML); sets `content-type: application/json`
    /// unless `headers` gives one.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
}

fn default_static_status() -> u16 {
    200
}

/// Bounds of an upstream's adaptive concurrency limit.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptiveConcurrency {
    /// Default 1.
    #[serde(default = "default_ac_min")]
    pub min: u32,
    /// Default 1000.
    #[serde(default = "default_ac_max")]
    pub max: u32,
    /// Where it starts. Default 20.
    #[serde(default = "default_ac_initial")]
    pub initial: u32,
}

fn default_ac_min() -> u32 {
    1
}
fn default_ac_max() -> u32 {
    1000
}
fn default_ac_initial() -> u32 {
    20
}

fn default_connect_timeout() -> String {
    "2s".into()
}
fn default_request_timeout() -> String {
    "30s".into()
}
fn default_upstream_read_timeout() -> String {
    "60s".into()
}
fn default_pool_idle() -> String {
    "90s".into()
}
fn default_pool_max_idle() -> usize {
    64
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    #[default]
    Proxy,
    Echo,
    /// The RFC 8693 token endpoint of the `token_exchange` section, served in process.
    TokenExchange,
    /// Canned answers from `responses`, in process (mocks, maintenance pages, demos).
    Static,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastRequests,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HostHeader {
    #[default]
    Preserve,
    Target,
}

/// An upstream target: a URL, or a URL with a weight.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawTarget {
    Url(String),
    Weighted {
        url: String,
        #[serde(default = "default_weight")]
        weight: u32,
    },
}

fn default_weight() -> u32 {
    1
}

impl RawTarget {
    pub fn url(&self) -> &str {
        match self {
            RawTarget::Url(u) | RawTarget::Weighted { url: u, .. } => u,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            RawTarget::Url(_) => 1,
            RawTarget::Weighted { weight, .. } => *weight,
        }
    }
}

/// Retries: only for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) whose body
/// is empty, and each retry goes to another target when there is one.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Retries after the first try. Default 1; 0 disables. At most 5.
    #[serde(default = "default_retry_attempts")]
    pub attempts: u32,
    /// Upstream statuses that are retried besides connection failures. Default `[502, 503]`.
    #[serde(default = "default_retry_statuses")]
    pub on_status: Vec<u16>,
    /// The most retries under way at once, as a percentage of the requests under way to the
    /// upstream (beyond `min_concurrent`). Default 20; 0–100.
    #[serde(default = "default_retry_budget")]
    pub budget_percent: u32,
    /// Retries always allowed at once, whatever `budget_percent` says. Default 3.
    #[serde(default = "default_retry_min_concurrent")]
    pub min_concurrent: u32,
}

impl Default for RawRetries {
    fn default() -> Self {
        RawRetries {
            attempts: default_retry_attempts(),
            on_status: default_retry_statuses(),
            budget_percent: default_retry_budget(),
            min_concurrent: default_retry_min_concurrent(),
        }
    }
}

fn default_retry_budget() -> u32 {
    20
}
fn default_retry_min_concurrent() -> u32 {
    3
}

fn default_retry_attempts() -> u32 {
    1
}
fn default_retry_statuses() -> Vec<u16> {
    vec![502, 503]
}

/// Active health checks: a GET to every target on an interval.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path requested. Default `/healthz`.
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// Default `5s`.
    #[serde(default = "default_hc_interval")]
    pub interval: String,
    /// Default `2s`.
    #[serde(default = "default_hc_timeout")]
    pub timeout: String,
    /// Consecutive successes to become healthy again. Default 2.
    #[serde(default = "default_hc_healthy")]
    pub healthy_threshold: u32,
    /// Consecutive failures to become unhealthy. Default 2.
    #[serde(default = "default_hc_unhealthy")]
    pub unhealthy_threshold: u32,
    /// The `Host` of the checks (and their HTTP/2 `:authority`), `name` or `name:port`, for
    /// targets that route by virtual host. Default: the target's `host:port`.
    #[serde(default)]
    pub host: Option<String>,
}

fn default_hc_path() -> String {
    "/healthz".into()
}
fn default_hc_interval() -> String {
    "5s".into()
}
fn default_hc_timeout() -> String {
    "2s".into()
}
fn default_hc_healthy() -> u32 {
    2
}
fn default_hc_unhealthy() -> u32 {
    2
}

/// Passive health: a target that fails this many times in a row (connect errors, timeouts,
/// 502/503/504 answers) is taken out of rotation for `ejection_time`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPassiveHealth {
    /// Default 5; 0 disables.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// Default `30s`.
    #[serde(default = "default_ejection")]
    pub ejection_time: String,
    /// Most targets ejected at once, in percent of the upstream's targets (rounded down, at
    /// least one), 0–100. Default 50. The last eligible target is never ejected.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for RawPassiveHealth {
    fn default() -> Self {
        RawPassiveHealth {
            consecutive_failures: default_consecutive(),
            ejection_time: default_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_max_ejection_percent() -> u32 {
    50
}

fn default_consecutive() -> u32 {
    5
}
fn default_ejection() -> String {
    "30s".into()
}

/// TLS towards upstream targets.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM file of CA certificates to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// A route: which requests it takes, where they go, and how they are changed on the way.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name (audit, metrics).
    pub name: String,
    /// What requests this route takes.
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// Name of an entry of `upstreams`.
    pub upstream: String,
    /// Path rewrite before forwarding.
    #[serde(default)]
    pub rewrite: Option<RawRewrite>,
    /// Headers changed on the request sent upstream.
    #[serde(default)]
    pub request_headers: RawHeaderOps,
    /// Headers changed on the response sent to the client.
    #[serde(default)]
    pub response_headers: RawHeaderOps,
    /// Largest request body. Default: `server.limits.max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<RawSize>,
    /// Client address lists for this route (after the gateway-wide ones).
    #[serde(default)]
    pub ip_filter: RawIpFilter,
    /// Overrides the upstream's `request_timeout`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Who may call: accepted credentials, or `anonymous: true`. Required once `auth`
    /// configures any authenticator.
    #[serde(default)]
    pub auth: Option<RawRouteAuth>,
    /// What an authenticated caller may do here. Without it an authenticated route refuses
    /// every request (unless a resource policy covers it): `allow: any-authenticated`, scopes,
    /// roles, owner, tenant, rego, opa …
    #[serde(default)]
    pub authz: Option<RawRouteAuthz>,
    /// Names of `rate_limits.limits` applied here, besides `rate_limits.global`.
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// The WAF on this route: overrides of the gateway-wide `waf:` key by key (exclusions and
    /// custom rules add to the gateway-wide ones).
    #[serde(default)]
    pub waf: Option<RawWaf>,
    /// An OpenAPI document defining this route group: each of its operations becomes a route
    /// under `match.prefix`, requests are validated against it, and paths and methods under the
    /// prefix the document does not describe match none of these routes (404/405 unless a
    /// broader route takes them).
    #[serde(default)]
    pub openapi: Option<RawOpenApi>,
    /// CORS: preflights answered by the gateway, headers for allowed origins.
    #[serde(default)]
    pub cors: Option<RawCors>,
    /// Overrides of the gateway-wide `security_headers`, key by key.
    #[serde(default)]
    pub security_headers: Option<RawSecurityHeaders>,
    /// Overrides of the gateway-wide `errors`, key by key.
    #[serde(default)]
    pub errors: Option<RawErrors>,
    /// Fields removed from JSON responses, by name or JSON path.
    #[serde(default)]
    pub response_filter: Option<RawResponseFilter>,
    /// WebSocket handshakes on this route: `true`, or `{ origins: [...] }` for pages of other
    /// origins. Default `false`: a handshake is refused (403).
    #[serde(default)]
    pub websocket: Option<RawWebSocket>,
}

/// Route matching. Host and method lists empty: any. Exactly one of `path` and `prefix`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Hosts: exact (`api.example.com`) or wildcard (`*.example.com`, any subdomain). Empty: any.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// An exact path (`/health`) or a template (`/orders/{id}`; a `{name}` matches one segment).
    #[serde(default)]
    pub path: Option<String>,
    /// A path prefix matched on segment boundaries (`/api` takes `/api` and `/api/x`, not `/apix`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Methods (`GET`, `POST` …). Empty: any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Listeners (by name) whose requests the route takes. Empty: every listener.
    #[serde(default)]
    pub listeners: Vec<String>,
}

/// Path rewrite. Exactly one key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    /// Replace the matched `prefix` with this (empty string: strip it).
    #[serde(default)]
    pub replace_prefix: Option<String>,
    /// A new path built from the route's template captures, e.g. `/v2/orders/{id}`.
    #[serde(default)]
    pub template: Option<String>,
}

/// Whether a header field named `name` likely carries a credential (`Authorization`, `Cookie`,
/// `X-Api-Key`, `X-Auth-Token` …): its value is hidden where the configuration is shown.
pub fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "cookie"
        || name == "set-cookie"
        || [
            "auth",
            "token",
            "secret",
            "passw",
            "key",
            "session",
            "signature",
            "credential",
        ]
        .iter()
        .any(|w| name.contains(w))
}

/// Header fields as the configuration is shown (admin API, `Debug`): the values of
/// credential-bearing names hidden; a value given as a secret shown as where it comes from
/// (`{ env: NAME }`, `{ file: PATH }`), an inline one (`{ value: … }`) hidden.
struct Shown<'a>(&'a BTreeMap<String, RawSecretOrString>);

/// One value as shown.
#[derive(Serialize)]
#[serde(untagged)]
enum ShownValue<'a> {
    Text(&'a str),
    Secret(&'a RawSecret),
}

impl std::fmt::Debug for ShownValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShownValue::Text(t) => std::fmt::Debug::fmt(t, f),
            ShownValue::Secret(s) => std::fmt::Debug::fmt(s, f),
        }
    }
}

impl Shown<'_> {
    fn entries(&self) -> impl Iterator<Item = (&String, ShownValue<'_>)> {
        self.0.iter().map(|(name, value)| {
            let value = match value {
                RawSecretOrString::Plain(_) if is_credential_header(name) => {
                    ShownValue::Text(portcullis_core::REDACTED)
                }
                RawSecretOrString::Plain(v) => ShownValue::Text(v),
                RawSecretOrString::Secret(s) => ShownValue::Secret(s),
            };
            (name, value)
        })
    }
}

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries()).finish()
    }
}

fn credentials_hidden<S: serde::Serializer>(
    fields: &BTreeMap<String, RawSecretOrString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(Shown(fields).entries())
}

impl std::fmt::Debug for RawHeaderOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawHeaderOps")
            .field("set", &Shown(&self.set))
            .field("add", &Shown(&self.add))
            .field("remove", &self.remove)
            .field("rename", &self.rename)
            .finish()
    }
}

/// Header changes.
#[derive(Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    /// Set (replace) these headers. A value is a string, or a secret: `{ env: NAME }`,
    /// `{ file: PATH }` (read when the configuration is loaded or reloaded).
    #[serde(default, serialize_with = "credentials_hidden")]
    pub set: BTreeMap<String, RawSecretOrString>,
    /// Append these headers (kept alongside existing values); values as for `set`.
    #[serde(default, serialize_with = "credentials_hidden")]
    pub add: BTreeMap<String, RawSecretOrString>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Rename headers: `from: to`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}
