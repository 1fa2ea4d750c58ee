//! The validated runtime configuration: everything parsed, checked and loaded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use ipnet::IpNet;
use portcullis_ipfilter::IpRules;
use portcullis_limits::HeadLimits;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::raw::RawConfig;
pub use crate::raw::{
    AcceptFrom, AuditOutput, Balance, ClientAddressHeader, HostHeader, LogFormat, MethodOverride,
    TraceContext, UpstreamKind, UpstreamProtocol,
};
pub use portcullis_authn::config::{AuthSettings, RouteAuth};
pub use portcullis_authz::config::{AuthzSettings, RouteAuthz};
pub use portcullis_ratelimit::config::RateLimitSettings;
pub use portcullis_response::{ErrorPolicy, OnUnfilterable, ResponseFilterRules, SecurityHeaders};
pub use portcullis_waf::{RouteWaf, WafSettings};

/// A configuration that compiled without error.
#[derive(Debug)]
pub struct Config {
    /// What the operator wrote (secrets redact themselves when serialised).
    pub raw: RawConfig,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    pub listeners: Vec<Listener>,
    pub admin: Admin,
    pub server: Server,
    pub logging: Logging,
    pub audit: Audit,
    pub upstreams: Vec<Upstream>,
    pub routes: Vec<Route>,
    /// The token endpoint's settings, when the `token_exchange` section is present.
    pub token_exchange: Option<portcullis_tokenx::TokenExchangeSettings>,
    pub auth: AuthSettings,
    pub authz: AuthzSettings,
    pub rate_limits: RateLimitSettings,
    pub waf: WafSettings,
    pub bans: Arc<portcullis_ipfilter::bans::BanRules>,
    /// The gateway-wide security headers (responses that match no route).
    pub security_headers: Arc<SecurityHeaders>,
    /// Other files the configuration is made of (OpenAPI documents and the files they
    /// reference), watched with it for changes.
    pub files: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
}

#[derive(Debug)]
pub struct ListenerTls {
    pub certificates: Vec<Certificate>,
    /// Refuse TLS 1.2 when true.
    pub tls13_only: bool,
    pub client_auth: Option<ClientAuth>,
}

#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub required: bool,
    pub roots: Vec<CertificateDer<'static>>,
    /// SPIFFE trust domains, sorted, with the CA certificates that vouch for their ids
    /// (`spiffe_bundles`); empty: `roots` vouch for every domain.
    pub spiffe_bundles: Vec<(String, Vec<CertificateDer<'static>>)>,
}

#[derive(Debug)]
pub struct Certificate {
    pub cert_file: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Lowercase names (exact, or `*.suffix`) for SNI; empty means "use the certificate's SANs".
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub enabled: bool,
    pub address: SocketAddr,
    pub token: Option<portcullis_core::Secret>,
    /// A token that may only read (`admin.read_token`).
    pub read_token: Option<portcullis_core::Secret>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub trusted_proxies: Vec<IpNet>,
    pub client_address_header: ClientAddressHeader,
    pub request_id_header: HeaderName,
    pub accept_request_id: AcceptFrom,
    /// Whether the request id is sent upstream (a client's copy is removed otherwise).
    pub request_id_upstream: bool,
    /// Whether every answer carries the request id, or only the gateway's problem documents.
    pub request_id_response: bool,
    /// Whether the gateway continues (or starts) W3C trace context, or passes it on as sent.
    pub trace_context: TraceContext,
    pub x_forwarded: bool,
    pub forwarded: bool,
    /// `encoded_slash` and `path_semicolons`.
    pub path_rules: portcullis_core::path::PathRules,
    /// Whether method and URL overrides are refused by the protocol step, or passed on.
    pub method_override: MethodOverride,
    pub limits: HeadLimits,
    pub ip_filter: IpRules,
    pub header_read_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    /// Most HTTP/2 streams a client may reset before their answers in one second of a
    /// connection (0: no limit).
    pub http2_max_resets_per_second: u32,
    pub idle_timeout: Duration,
    /// How long an HTTP/2 connection's answers may wait on the client's flow-control window,
    /// none of them moving, before the connection is closed.
    pub send_timeout: Duration,
    /// Slowest average rate (bytes per second) at which a client may take what the gateway
    /// has to send it while its writes wait on the client (0: no minimum).
    pub send_min_bytes_per_second: u64,
    pub body_read_timeout: Duration,
    pub body_min_bytes_per_second: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// On stop, how long requests in flight may take to finish before their connections are
    /// closed (and those requests audited as interrupted).
    pub drain_timeout: Duration,
    /// On stop, how long the gateway keeps accepting and serving (not ready) before draining.
    pub stop_delay: Duration,
    /// An HTTP/1.x client's end of stream or reset during its request abandons the request
    /// (the upstream exchange is given up, the request audited with status 499).
    pub abort_on_client_close: bool,
}

#[derive(Debug, Clone)]
pub struct Logging {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct Audit {
    pub enabled: bool,
    pub output: AuditOutput,
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Target {
    /// `scheme://host:port` with no path.
    pub base: Uri,
    pub tls: bool,
    /// `host:port` as written.
    pub authority: String,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct Retries {
    pub attempts: u32,
    pub on_status: Vec<StatusCode>,
    /// Retries under way at once: at most `budget_percent` % of the requests under way to the
    /// upstream, or `min_concurrent`, whichever is more.
    pub budget_percent: u32,
    pub min_concurrent: u32,
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// The checks' `Host` (`name` or `name:port`); `None`: the target's `host:port`.
    pub host: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PassiveHealth {
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    /// Most targets ejected at once, in percent (0–100; rounded down, at least one).
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: Arc<str>,
    pub kind: UpstreamKind,
    pub targets: Vec<Target>,
    pub protocol: UpstreamProtocol,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Longest wait for the next piece of an answer's body once its head has come.
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_target: usize,
    pub retries: Retries,
    pub health_check: Option<HealthCheck>,
    pub passive_health: PassiveHealth,
    /// CA certificates to trust for `https://` targets; `None`: the system roots.
    pub tls_roots: Option<Vec<CertificateDer<'static>>>,
    pub host_header: HostHeader,
    /// Per snapshot: a reload starts the limit again from `initial`.
    pub adaptive_concurrency: Option<Arc<portcullis_ratelimit::adaptive::ConcurrencyLimiter>>,
    /// `kind: static`: the canned answers, in order.
    pub static_responses: Vec<StaticResponse>,
}

/// One canned answer of a `static` upstream.
#[derive(Debug, Clone)]
pub struct StaticResponse {
    /// `None`: any method.
    pub method: Option<Method>,
    pub path: PathMatch,
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl StaticResponse {
    /// Whether this answer takes a request with `method` for `path`.
    pub fn takes(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        match &self.path {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Template(segs) => {
                let mut parts = path.split('/').skip(1);
                segs.iter().all(|s| match (s, parts.next()) {
                    (Segment::Literal(l), Some(p)) => l == p,
                    (Segment::Param(_), Some(p)) => !p.is_empty(),
                    (_, None) => false,
                }) && parts.next().is_none()
            }
        }
    }
}

/// How a route's host list matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Lowercase, without port.
    Exact(String),
    /// `*.example.com` stored as `.example.com`: any name ending so (at least one label more).
    Suffix(String),
}

impl HostMatch {
    /// `host` must already be lowercase and without port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }

    /// Higher is more specific.
    pub fn specificity(&self) -> usize {
        match self {
            HostMatch::Exact(h) => 10_000 + h.len(),
            HostMatch::Suffix(s) => s.len(),
        }
    }
}

/// One segment of a templated path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(Arc<str>),
}

/// How a route's path matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Template(Vec<Segment>),
    /// Without trailing slash (`/` itself is stored as empty: matches everything).
    Prefix(String),
}

/// A piece of a rewrite template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Param(Arc<str>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    ReplacePrefix(String),
    Template(Vec<TemplatePart>),
}

#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
    pub rename: Vec<(HeaderName, HeaderName)>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.add.is_empty()
            && self.remove.is_empty()
            && self.rename.is_empty()
    }

    /// Applies remove, rename, set, add — in that order.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (from, to) in &self.rename {
            // `to` is what came as `from`, and nothing else: when `from` is absent, a `to` of
            // the sender's own is not left to pass for it.
            let values: Vec<HeaderValue> = match headers.entry(from) {
                http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
                http::header::Entry::Vacant(_) => Vec::new(),
            };
            headers.remove(to);
            for v in values {
                headers.append(to.clone(), v);
            }
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    /// Listener names the route takes requests from; empty: every listener.
    pub listeners: Vec<Arc<str>>,
    pub hosts: Vec<HostMatch>,
    pub path: PathMatch,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub rewrite: Option<Rewrite>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub max_body_bytes: u64,
    pub ip_filter: IpRules,
    pub timeout: Option<Duration>,
    pub auth: RouteAuth,
    pub authz: RouteAuthz,
    /// Indexes into `Config::rate_limits.limits`: the gateway-wide ones and the route's own.
    pub rate_limits: Vec<usize>,
    pub waf: RouteWaf,
    /// The OpenAPI operation this route was made from (route groups with `openapi:`).
    pub contract: Option<Arc<portcullis_contract::config::Operation>>,
    pub cors: Option<Arc<portcullis_cors::Cors>>,
    pub security_headers: Arc<SecurityHeaders>,
    pub errors: ErrorPolicy,
    pub response_filter: Option<ResponseFilterRules>,
    /// `None`: WebSocket handshakes are refused.
    pub websocket: Option<Arc<portcullis_cors::WebSocket>>,
}
