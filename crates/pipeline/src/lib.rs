//! # portcullis-pipeline
//!
//! THE order of the request's steps, written once ([`ORDER`], built by [`Pipeline::build`]),
//! and the immutable per-configuration snapshot every request runs under.
//!
//! * **Takes**: a compiled [`portcullis_config::Config`].
//! * **Produces**: a [`Snapshot`]: the configuration, the route table and the built steps.
//!   A request pins one snapshot for its whole life; reload builds a new one off the hot path.
//! * **Rejects**: whatever its steps reject; [`Pipeline::run`] stops at the first rejection
//!   and records which step made it (`RequestCtx::rejected_by`).
//!
//! Adding a capability means writing a [`Stage`] in its own crate and adding one line to
//! [`Pipeline::build`] and [`ORDER`] — the order test below fails until both agree.

#![forbid(unsafe_code)]

pub mod client;
pub mod normalize;
pub mod router;

use std::sync::Arc;

use portcullis_authn::{AuthnStage, AuthnState, IdentityStage};
use portcullis_authz::{AuthzStage, AuthzState};
use portcullis_config::Config;
use portcullis_contract::ContractStage;
use portcullis_core::{
    Answer, ConfigErrors, GatewayRequest, Rejection, RequestCtx, Stage, StageId, Step, Verdict,
};
use portcullis_cors::{CorsStage, RouteOrigins};
use portcullis_hygiene::HygieneStage;
use portcullis_ipfilter::IpFilterStage;
use portcullis_limits::{BodyLimitStage, HeadLimitsStage};
use portcullis_ratelimit::{RateLimitStage, RateLimitState};
use portcullis_waf::{WafStage, WafState};

pub use client::ClientAddressStage;
pub use normalize::NormalizeStage;
pub use router::{RouteStage, RouteTable, request_host};

/// The request's way through the gateway, in order. Steps 0 (accept, TLS) and 10–11 (upstream,
/// response) belong to the engine; audit is a finalizer that sees every outcome.
pub const ORDER: &[StageId] = &[
    // 0b. who is calling: trusted proxies → client IP, first, so that every refusal (the
    // malformed requests below too) is the client's, for audit and bans — never a balancer's.
    ClientAddressStage::ID,
    // 1. protocol hygiene: framing and Host that two parsers could read differently …
    HygieneStage::ID,
    // … one canonical path before anything looks at it …
    NormalizeStage::ID,
    // … and the cheapest refusals: URI, header count and size.
    HeadLimitsStage::ID,
    // 2. gateway-wide allow/deny lists and bans.
    IpFilterStage::GLOBAL_ID,
    // 3. route match: deny by default (404/405); everything after is per route.
    RouteStage::ID,
    IpFilterStage::ROUTE_ID,
    // … CORS: preflights answered here (nothing after runs for them), and the CORS headers of
    // allowed origins attached to every response, refusals included.
    CorsStage::ID,
    BodyLimitStage::ID,
    // 4. limits on what the request alone tells (client IP, route, method, header): before
    // authentication, so credential stuffing and token floods are cut off cheaply.
    RateLimitStage::PRE_ID,
    // 5. the WAF: every value of the path, query, headers, cookies and body normalised and
    // inspected, anomaly-scored; attacks in credentials and bodies stop before auth code
    // parses them.
    WafStage::ID,
    // 6. who is calling, verified: JWT / introspection / API key / mTLS → principal.
    AuthnStage::ID,
    // 6b. limits and quotas on who is calling (client, user, API key, tenant, claims; tiers),
    // and load shedding lowest priority first.
    RateLimitStage::ID,
    // 7. what the caller may do: scopes (with the hierarchy), roles, resource policies,
    // ownership and tenant, risk and step-up, Rego/OPA; default deny; field masks.
    AuthzStage::ID,
    // 9. the API contract (OpenAPI): parameters, media type and JSON body of a request now
    // known to be allowed; unknown fields refused or stripped.
    ContractStage::ID,
    // 10. what the upstream sees: forged identity headers removed, verified identity (or a
    // gateway-signed token) added, the client's credential stripped.
    IdentityStage::ID,
];

/// The built steps of one snapshot.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
    /// The authenticator of this snapshot (also used by in-process endpoints such as token
    /// exchange).
    pub authn: Arc<portcullis_authn::Authn>,
    /// The rate limiter of this snapshot (the engine feeds its adaptive controller).
    pub ratelimit: Arc<portcullis_ratelimit::RateLimiter>,
    /// What this snapshot changes in the process-wide authentication state, applied by
    /// [`Pipeline::activate`] once the whole configuration built (taken then).
    activation: std::sync::Mutex<Option<portcullis_authn::Activation>>,
}

impl Pipeline {
    /// Builds the steps from a compiled configuration, in [`ORDER`]. Long-lived state (key
    /// sets, revocations …) comes from `shared`.
    pub fn build(config: &Config, shared: &Shared) -> Result<Pipeline, ConfigErrors> {
        let routes = &config.routes;
        let mut errors = ConfigErrors::new();
        let authn = shared
            .authn
            .prepare(
                &config.auth,
                routes.iter().map(|r| r.auth.clone()).collect(),
            )
            .map_err(|m| push_at(&mut errors, "auth", m))
            .ok();
        let ratelimit = shared
            .ratelimit
            .build(
                &config.rate_limits,
                routes.iter().map(|r| r.rate_limits.clone()).collect(),
            )
            .map_err(|m| push_at(&mut errors, "rate_limits", m))
            .ok();
        let (Some((authn, activation)), Some(ratelimit)) = (authn, ratelimit) else {
            return Err(errors);
        };
        // A gateway that lets method overrides pass (`server.method_override: pass`) lets the
        // body's `_method` pass too (WAF rule 2401).
        let overrides_pass =
            config.server.method_override == portcullis_config::MethodOverride::Pass;
        let waf = shared.waf.build(
            config.waf.clone(),
            routes
                .iter()
                .map(|r| {
                    let mut w = r.waf.clone();
                    if overrides_pass {
                        w.api.allow_method_fields();
                    }
                    w.grpc_streams = config.upstreams.get(r.upstream).is_some_and(speaks_h2);
                    w
                })
                .collect(),
        );
        // Identity-named headers that later steps read as the request's input: removed as the
        // request leaves (identity step), not as authentication begins.
        let late: Arc<[Vec<http::HeaderName>]> = input_headers(config).into();
        let failures = shared.authn.failures.clone();
        let waf_hits = shared.waf.hits.clone();
        let authz = shared.authz.build(
            &config.authz,
            routes.iter().map(|r| r.authz.clone()).collect(),
            Arc::new(move |ip| failures.recent(ip)),
            Arc::new(move |ip| waf_hits.recent(ip)),
        );
        let stages: Vec<Box<dyn Stage>> = vec![
            Box::new(ClientAddressStage::new(
                config.server.trusted_proxies.clone(),
                config.server.client_address_header,
            )),
            Box::new(HygieneStage::new(
                config.server.method_override == portcullis_config::MethodOverride::Refuse,
            )),
            Box::new(NormalizeStage::new(config.server.path_rules)),
            Box::new(HeadLimitsStage::new(config.server.limits)),
            Box::new(IpFilterStage::global_with_bans(
                config.server.ip_filter.clone(),
                shared.bans.clone(),
                config.bans.clone(),
            )),
            Box::new(RouteStage::new(RouteTable::new(routes))),
            Box::new(IpFilterStage::per_route(
                routes.iter().map(|r| r.ip_filter.clone()).collect(),
            )),
            Box::new(CorsStage::new(
                routes
                    .iter()
                    .map(|r| RouteOrigins {
                        cors: r.cors.clone(),
                        websocket: r.websocket.clone(),
                    })
                    .collect(),
            )),
            Box::new(BodyLimitStage::new(
                routes.iter().map(|r| r.max_body_bytes).collect(),
                config.server.limits.max_body_bytes,
            )),
            Box::new(RateLimitStage::pre_auth(ratelimit.clone())),
            Box::new(WafStage::new(waf)),
            Box::new(AuthnStage::new(authn.clone(), late.clone())),
            Box::new(RateLimitStage::post_auth(ratelimit.clone())),
            Box::new(AuthzStage::new(authz)),
            Box::new(ContractStage::new(
                routes.iter().map(|r| r.contract.clone()).collect(),
            )),
            Box::new(IdentityStage::new(authn.clone(), late)),
        ];
        Ok(Pipeline {
            stages,
            authn,
            ratelimit,
            activation: std::sync::Mutex::new(Some(activation)),
        })
    }

    /// Puts this snapshot's process-wide state in force — configured revocations and their
    /// sharing, the internal-token key `/jwks` publishes, the snapshot the admin API shows, the
    /// rate-limit stores later configurations keep —
    /// once it is to serve: a configuration refused after the pipeline built (its upstreams,
    /// its TLS) changes none of it. Once; later calls do nothing.
    pub fn activate(&self, shared: &Shared) {
        let taken = self
            .activation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(a) = taken {
            shared.authn.activate(a);
            shared.ratelimit.activate(&self.ratelimit);
        }
    }

    pub fn ids(&self) -> Vec<StageId> {
        self.stages.iter().map(|s| s.id()).collect()
    }

    /// Runs every step in order; the first rejection (or answer) stops the run.
    pub async fn run(
        &self,
        req: &mut GatewayRequest,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, Rejection> {
        for stage in &self.stages {
            // Matched here rather than through `Step::resolve`: most steps are done at once,
            // and a synchronous verdict then costs no future (nor the moves of one).
            let verdict = match stage.on_request(req, ctx) {
                Step::Done(v) => v,
                Step::Async(f) => f.await,
            };
            match verdict {
                Verdict::Continue => {}
                Verdict::Reject(r) => {
                    ctx.rejected_by = Some((stage.id(), r.reason));
                    return Err(r);
                }
                Verdict::Answer(a) => return Ok(Flow::Answer(a)),
            }
        }
        Ok(Flow::Forward)
    }
}

/// How a request that passed every step goes on.
#[derive(Debug)]
pub enum Flow {
    /// To the route's upstream.
    Forward,
    /// Answered by the gateway itself (a CORS preflight).
    Answer(Box<Answer>),
}

/// One configuration, compiled and built. Immutable; shared by every request that started
/// under it.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub pipeline: Pipeline,
    /// Whether the TCP peer is trusted to supply forwarding headers and request ids.
    pub trusted: ClientAddressStage,
    /// The RFC 8693 token endpoint, when `token_exchange` is configured (served in process
    /// by upstreams of `kind: token_exchange`, with `pipeline.authn` verifying tokens).
    pub token_exchange: Option<Arc<portcullis_tokenx::TokenExchange>>,
}

impl Snapshot {
    pub fn new(config: Arc<Config>, shared: &Shared) -> Result<Snapshot, ConfigErrors> {
        Ok(Snapshot {
            pipeline: Pipeline::build(&config, shared)?,
            trusted: ClientAddressStage::new(
                config.server.trusted_proxies.clone(),
                config.server.client_address_header,
            ),
            token_exchange: config
                .token_exchange
                .clone()
                .map(|t| Arc::new(portcullis_tokenx::TokenExchange::new(t))),
            config,
        })
    }
}

/// Per route (in route order), the request fields its later steps read as input that are
/// also stripped identity names: its tenant header, the risk signals' country and device
/// headers where it has a risk rule, the API key header where it takes API keys. Only these,
/// so the lists are usually empty; a route that reads none strips them all at once (a name
/// another route reads is no exception on it).
fn input_headers(config: &Config) -> Vec<Vec<http::HeaderName>> {
    let strip = &config.auth.identity.strip;
    config
        .routes
        .iter()
        .map(|r| {
            let mut read: Vec<http::HeaderName> = Vec::new();
            if let Some(t) = &r.authz.tenant
                && let portcullis_authz::config::Source::Header(h) = &t.source
            {
                read.push(h.clone());
            }
            if r.authz.risk.is_some() {
                read.extend(config.authz.risk.country_header.clone());
                read.extend(config.authz.risk.device_header.clone());
            }
            if r.auth
                .methods
                .contains(&portcullis_authn::config::Method::ApiKey)
            {
                read.extend(config.auth.api_keys.as_ref().map(|k| k.header.clone()));
            }
            read.retain(|h| {
                strip.iter().any(|s| {
                    portcullis_core::same_name_folded(h.as_str().as_bytes(), s.as_str().as_bytes())
                })
            });
            read.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            read.dedup();
            read
        })
        .collect()
}

/// Whether every target of an upstream may speak HTTP/2, so that a gRPC call may stream on to
/// it uninspected (WAF `grpc_streams`): a proxy of `protocol: http2`, or of `auto` whose
/// targets are all `https://` (ALPN may pick HTTP/2 only over TLS; a cleartext target of an
/// `auto` upstream speaks HTTP/1.1, and any target may be the one picked).
fn speaks_h2(u: &portcullis_config::Upstream) -> bool {
    u.kind == portcullis_config::UpstreamKind::Proxy
        && match u.protocol {
            portcullis_config::UpstreamProtocol::Http2 => true,
            portcullis_config::UpstreamProtocol::Auto => {
                !u.targets.is_empty() && u.targets.iter().all(|t| t.tls)
            }
            portcullis_config::UpstreamProtocol::Http1 => false,
        }
}

/// Records a failure of the `section` part as built: at the path its message starts with
/// (`auth.introspection.idp: …`), or at `section` when it names none.
fn push_at(errors: &mut ConfigErrors, section: &str, message: String) {
    let at = message.split_once(": ").filter(|(path, _)| {
        path.strip_prefix(section)
            .is_some_and(|rest| rest.starts_with(['.', '[']))
            && !path.contains(char::is_whitespace)
    });
    match at {
        Some((path, rest)) => errors.push(path, rest),
        None => errors.push(section, message),
    }
}

/// State that outlives configuration snapshots (built once per process).
#[derive(Clone)]
pub struct Shared {
    pub authn: Arc<AuthnState>,
    pub authz: Arc<AuthzState>,
    pub ratelimit: Arc<RateLimitState>,
    pub waf: Arc<WafState>,
    /// Counts and bans of client addresses (kept across reloads).
    pub bans: Arc<portcullis_ipfilter::bans::BanList>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            authn: AuthnState::new(),
            authz: AuthzState::new(),
            ratelimit: RateLimitState::new(),
            waf: WafState::new(),
            bans: portcullis_ipfilter::bans::BanList::new(),
        }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

#[cfg(test)]
mod tests;
