//! The authorization step.
//!
//! Per request, in this order, the first enforced denial stops: the route's demands on the
//! authentication itself (`require`: step-up), the route's scope and role rule, every resource
//! policy that covers the path and action, ownership, tenant, risk, the Rego rule, the OPA
//! decision. Rules in shadow mode are evaluated and recorded, never enforced. Default deny: a
//! request that no enforced rule (nor `allow: any-authenticated`) permits is refused.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use portcullis_core::{
    AuthMethod, AuthzDecision, GatewayRequest, Principal, RejectReason, Rejection, RequestCtx,
    ResponseFilter, RuleVerdict, Stage, StageId, Step, Verdict, unix_now,
};

use crate::config::{AuthzSettings, Mode, OnError, RouteAuthz};
use crate::constraints::{check_owner, check_tenant};
use crate::fieldmask::FieldMask;
use crate::rego::PolicyDecision;
use crate::risk::{self, Assessment, AuthFacts, DeviceMemory};
use crate::rules::Unmet;

/// Recent authentication failures from a client address (fed by the authentication step).
pub type FailureCount = Arc<dyn Fn(IpAddr) -> u32 + Send + Sync>;

/// The authorizer of one configuration snapshot.
pub struct Authz {
    pub settings: AuthzSettings,
    pub routes: Vec<RouteAuthz>,
    devices: Arc<DeviceMemory>,
    failures: FailureCount,
    waf_hits: FailureCount,
    /// Every header name a tenant rule or a policy sends upstream: client copies (also spelled
    /// with `_` for `-`) are removed everywhere.
    owned_headers: Vec<HeaderName>,
}

impl Authz {
    pub fn new(
        settings: AuthzSettings,
        routes: Vec<RouteAuthz>,
        devices: Arc<DeviceMemory>,
        failures: FailureCount,
        waf_hits: FailureCount,
    ) -> Authz {
        let mut owned_headers: Vec<HeaderName> = routes
            .iter()
            .filter_map(|r| r.tenant.as_ref().map(|t| t.upstream_header.clone()))
            .chain(settings.policy_headers.iter().cloned())
            .collect();
        owned_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        owned_headers.dedup();
        Authz {
            settings,
            routes,
            devices,
            failures,
            waf_hits,
            owned_headers,
        }
    }
}

/// The evaluation of one request so far.
#[derive(Default)]
struct Run {
    held: Vec<RuleVerdict>,
    shadow: Vec<RuleVerdict>,
    /// Whether an enforced rule (or `any-authenticated`) permitted the request.
    permitted: bool,
    headers: Vec<(HeaderName, HeaderValue)>,
    risk: Option<Assessment>,
}

impl Run {
    /// Records a verdict; `Err` for an enforced denial.
    fn verdict(
        &mut self,
        rule: String,
        mode: Mode,
        result: Result<String, String>,
        deny: impl FnOnce(&str) -> Rejection,
    ) -> Result<(), Box<Denied>> {
        let allowed = result.is_ok();
        let reason = match result {
            Ok(r) | Err(r) => r,
        };
        let v = RuleVerdict {
            rule,
            allowed,
            reason,
        };
        match mode {
            Mode::Shadow => {
                self.shadow.push(v);
                Ok(())
            }
            Mode::Enforce if allowed => {
                self.permitted = true;
                self.held.push(v);
                Ok(())
            }
            Mode::Enforce => {
                let r = deny(&v.reason);
                Err(Box::new((v, r)))
            }
        }
    }

    fn decision(self, denied: Option<RuleVerdict>) -> AuthzDecision {
        let allowed = denied.is_none();
        let decided_by = denied.or_else(|| {
            Some(RuleVerdict {
                rule: "allow".into(),
                allowed: true,
                reason: self
                    .held
                    .iter()
                    .map(|v| v.rule.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        });
        AuthzDecision {
            allowed,
            decided_by,
            shadow: self.shadow,
            risk: self.risk.as_ref().map(|a| a.score),
            risk_signals: self.risk.map(|a| a.signals).unwrap_or_default(),
        }
    }
}

/// What a client refused with 403 is told, whichever rule refused it (ADR 0005 §3): the
/// rule's own reason — a claim the caller lacks, the roles or the tenant a route wants, a
/// policy's reasons — stays in the audit event (and the debug log).
const NOT_ALLOWED: &str = "the request is not allowed";

fn forbidden() -> Rejection {
    Rejection::new(RejectReason::Forbidden, NOT_ALLOWED)
}

fn quoted(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// 403 with the RFC 6750 challenge naming the scopes to ask for; its `error_description` is
/// as generic as the problem's detail.
fn insufficient_scope(scopes: &[String]) -> Rejection {
    let v = format!(
        "Bearer error=\"insufficient_scope\", error_description=\"{NOT_ALLOWED}\", scope=\"{}\"",
        quoted(&scopes.join(" "))
    );
    let r = forbidden();
    match HeaderValue::from_str(&v) {
        Ok(h) => r.with_header(http::header::WWW_AUTHENTICATE, h),
        Err(_) => r,
    }
}

/// A scope or role rule's verdict and, should it deny, its refusal: 403 with the RFC 6750
/// `insufficient_scope` challenge when scopes are missing.
fn requirement_verdict(
    r: Result<(), Unmet>,
) -> (Result<String, String>, impl FnOnce(&str) -> Rejection) {
    let scopes = match &r {
        Err(Unmet::Scopes(s, _)) => s.clone(),
        _ => Vec::new(),
    };
    let result = r
        .map(|()| "scopes and roles held".to_string())
        .map_err(|u| u.reason().to_string());
    (result, move |_: &str| {
        if scopes.is_empty() {
            forbidden()
        } else {
            insufficient_scope(&scopes)
        }
    })
}

fn unavailable(detail: &str) -> Rejection {
    Rejection::new(RejectReason::AuthzUnavailable, detail.to_string())
}

/// An enforced denial: the rule's verdict and the refusal (boxed where returned: the denial
/// path is the cold one).
type Denied = (RuleVerdict, Rejection);

/// What the synchronous part leaves for the asynchronous one.
struct Pending {
    run: Run,
    input: Option<serde_json::Value>,
    scopes: Vec<String>,
    stepped_up: bool,
}

impl Authz {
    fn route(&self, ctx: &RequestCtx) -> Option<&RouteAuthz> {
        ctx.route_id().and_then(|r| self.routes.get(r.0))
    }

    /// Whether the caller meets the route's (or the risk rule's) strength and freshness.
    fn stepped_up(&self, route: &RouteAuthz, p: &Principal, now: u64) -> bool {
        if p.method == AuthMethod::Mtls {
            return true;
        }
        if !matches!(p.method, AuthMethod::Jwt | AuthMethod::Introspection) {
            return false;
        }
        let facts = AuthFacts::of(p);
        let (acr_values, max_age) = match &route.risk {
            Some(r) => (&r.acr_values[..], r.max_age),
            None => (&[][..], None),
        };
        let strong = if acr_values.is_empty() {
            facts.strong(&self.settings.risk)
        } else {
            facts.acr_in(acr_values)
        };
        let max_age = max_age.unwrap_or(self.settings.risk.max_auth_age).as_secs();
        strong && facts.age(now).is_some_and(|a| a <= max_age)
    }

    /// Whether the caller's login is strong and fresh by the gateway-wide risk settings (its
    /// `strong_acr` / `strong_amr` and `max_auth_age`), whatever a route asks.
    fn strong_everywhere(&self, p: &Principal, now: u64) -> bool {
        if p.method == AuthMethod::Mtls {
            return true;
        }
        if !matches!(p.method, AuthMethod::Jwt | AuthMethod::Introspection) {
            return false;
        }
        let facts = AuthFacts::of(p);
        facts.strong(&self.settings.risk)
            && facts
                .age(now)
                .is_some_and(|a| a <= self.settings.risk.max_auth_age.as_secs())
    }

    /// Everything but the external policy server.
    fn evaluate_sync(
        &self,
        route: &RouteAuthz,
        req: &GatewayRequest,
        ctx: &RequestCtx,
        p: &Principal,
    ) -> Result<Pending, Box<(Run, Denied)>> {
        let mut run = Run::default();
        let h = &self.settings.hierarchy;
        let head = &req.head;
        let now = unix_now();
        let route_name = ctx
            .route
            .as_ref()
            .map(|r| r.name.to_string())
            .unwrap_or_default();

        macro_rules! check {
            ($rule:expr, $mode:expr, $result:expr, $deny:expr) => {
                if let Err(d) = run.verdict($rule, $mode, $result, $deny) {
                    return Err(Box::new((run, *d)));
                }
            };
        }

        // 1. What the route demands of the authentication itself.
        if let Some(rq) = &route.require {
            let facts = AuthFacts::of(p);
            let acr_ok = rq.acr.is_empty() || facts.acr_in(&rq.acr);
            let age_ok = rq
                .max_age
                .is_none_or(|m| facts.age(now).is_some_and(|a| a <= m.as_secs()));
            let result = match (acr_ok, age_ok) {
                (true, true) => Ok("authentication strong and recent enough".to_string()),
                (false, _) => Err("a stronger authentication is required".to_string()),
                (true, false) => Err("a more recent authentication is required".to_string()),
            };
            // A demand, not a grant: met, it permits nothing by itself (a route with only
            // `require` is still default-deny unless another rule or a policy permits).
            let permitted = run.permitted;
            check!("require".into(), Mode::Enforce, result, |d| {
                Rejection::new(RejectReason::StepUpRequired, d.to_string()).with_header(
                    http::header::WWW_AUTHENTICATE,
                    risk::step_up_challenge(d, &rq.acr, rq.max_age),
                )
            });
            run.permitted = permitted;
        }

        // 2. The route's scopes and roles.
        if route.any_authenticated {
            run.permitted = true;
            run.held.push(RuleVerdict {
                rule: format!("route:{route_name}"),
                allowed: true,
                reason: "any authenticated caller".into(),
            });
        }
        // A HEAD is answered as its GET would be (the router admits it where GET is), so
        // without a rule of its own it is held to GET's.
        let rule_for = |m: &http::Method| route.per_method.iter().find(|(k, _)| k == m);
        let requirement = rule_for(&head.method)
            .or_else(|| {
                (head.method == http::Method::HEAD)
                    .then(|| rule_for(&http::Method::GET))
                    .flatten()
            })
            .map(|(_, r)| r)
            .or(route.base.as_ref());
        if let Some(rq) = requirement {
            let (result, deny) = requirement_verdict(rq.check(p, h));
            check!(format!("route:{route_name}"), route.mode, result, deny);
        }

        // 2b. The OpenAPI operation's security requirements: one alternative must hold, in
        // addition to the rules above (they permit nothing by themselves).
        if let Some(doc) = &route.openapi {
            let rule = format!("openapi:{}", doc.operation);
            let mut unmet = None;
            let met = doc.alternatives.iter().find(|a| {
                if !a.methods.contains(&p.method) {
                    return false;
                }
                match a.requirement.check(p, h) {
                    Ok(()) => true,
                    Err(u) => {
                        unmet.get_or_insert(u);
                        false
                    }
                }
            });
            match met {
                Some(a) => run.held.push(RuleVerdict {
                    rule,
                    allowed: true,
                    reason: format!("{} met", a.schemes),
                }),
                None => {
                    let (reason, rejection) = match unmet {
                        Some(u) => {
                            let reason = u.reason().to_string();
                            let (_, deny) = requirement_verdict(Err(u));
                            let rejection = deny(&reason);
                            (reason, rejection)
                        }
                        None => {
                            let accepted: Vec<&str> = doc
                                .alternatives
                                .iter()
                                .map(|a| a.schemes.as_str())
                                .collect();
                            let reason = format!(
                                "the operation requires {} credentials, not {}",
                                accepted.join(" or "),
                                p.method.as_str()
                            );
                            (reason, forbidden())
                        }
                    };
                    let verdict = RuleVerdict {
                        rule,
                        allowed: false,
                        reason,
                    };
                    return Err(Box::new((run, (verdict, rejection))));
                }
            }
        }

        // 3. Resource policies covering this path and action. A method no action is mapped
        // to (TRACE, WebDAV's MOVE or PROPPATCH, QUERY, PURGE …) could be any of them: every
        // policy on the path holds it to its requirement, but one that lists actions cannot
        // tell whether it was meant to grant it, so it permits nothing by itself.
        let action = self.settings.action(&head.method);
        let path = head.uri.path();
        for pol in &self.settings.policies {
            if !pol.resources.iter().any(|r| r.matches(path)) {
                continue;
            }
            let grants = match action {
                _ if pol.actions.is_empty() => true,
                Some(a) if pol.actions.iter().any(|x| x == a) => true,
                Some(_) => continue,
                None => false,
            };
            let permitted = run.permitted;
            let (result, deny) = requirement_verdict(pol.requirement.check(p, h));
            check!(format!("policy:{}", pol.name), pol.mode, result, deny);
            if !grants {
                run.permitted = permitted;
            }
        }

        // 4. Ownership and tenant.
        if let Some(o) = &route.owner {
            check!(
                "owner".into(),
                o.mode,
                check_owner(o, head, ctx.route.as_ref(), p, h),
                |_| forbidden()
            );
        }
        if let Some(t) = &route.tenant {
            let result = check_tenant(t, head, ctx.route.as_ref(), p);
            if t.mode == Mode::Enforce
                && let Ok(tenant) = &result
            {
                match HeaderValue::from_str(tenant) {
                    Ok(v) => run.headers.push((t.upstream_header.clone(), v)),
                    Err(_) => {
                        let d = "the tenant cannot be sent upstream";
                        return Err(Box::new((
                            run,
                            (
                                RuleVerdict {
                                    rule: "tenant".into(),
                                    allowed: false,
                                    reason: d.into(),
                                },
                                forbidden(),
                            ),
                        )));
                    }
                }
            }
            check!(
                "tenant".into(),
                t.mode,
                result.map(|t| format!("tenant {t}")),
                |_| forbidden()
            );
        }

        // 5. Risk.
        let stepped_up = self.stepped_up(route, p, now);
        if let Some(rr) = &route.risk {
            let a = risk::assess(
                &self.settings.risk,
                &self.devices,
                &risk::Request {
                    client_ip: ctx.client_ip,
                    peer_trusted: ctx.peer_trusted,
                    headers: &head.headers,
                    principal: p,
                    now,
                    stepped_up,
                    auth_failures: (self.failures)(ctx.client_ip),
                    waf_hits: (self.waf_hits)(ctx.client_ip),
                },
            );
            let score = a.score;
            let signals = a.signals.join(", ");
            run.risk = Some(a);
            if rr.deny.is_some_and(|d| score >= d) {
                check!(
                    "risk".into(),
                    rr.mode,
                    Err(format!("risk score {score} ({signals})")),
                    |_| forbidden()
                );
            } else if rr.step_up.is_some_and(|s| score >= s) {
                check!(
                    "risk".into(),
                    rr.mode,
                    Err(format!("risk score {score} ({signals})")),
                    |_| {
                        let d = "a stronger or more recent authentication is required";
                        Rejection::new(RejectReason::StepUpRequired, d).with_header(
                            http::header::WWW_AUTHENTICATE,
                            risk::step_up_challenge(d, &rr.acr_values, rr.max_age),
                        )
                    }
                );
            } else {
                run.shadow_or_note("risk", rr.mode, format!("risk score {score}"));
            }
        }

        // 6. Policies as code.
        let scopes = if route.rego.is_some() || route.opa.is_some() || route.field_masks.is_some() {
            h.expand(&p.scopes)
        } else {
            Vec::new()
        };
        let input = (route.rego.is_some() || route.opa.is_some())
            .then(|| crate::input::build(head, ctx, p, &scopes, action, run.risk.as_ref(), now));
        if let (Some((query, mode)), Some(input), Some(pol)) =
            (&route.rego, &input, &self.settings.rego)
        {
            let rule = format!("rego:{query}");
            match pol
                .evaluate(query, input)
                .and_then(|d| self.settings.declared(d))
            {
                Ok(d) => {
                    let headers = d.headers.clone();
                    check!(rule, *mode, policy_result(&d), |_| forbidden());
                    if *mode == Mode::Enforce {
                        run.headers.extend(headers);
                    }
                }
                Err(msg) => {
                    tracing::warn!(request_id = %ctx.request_id, rule = %rule, error = %msg, "policy evaluation failed");
                    check!(rule, *mode, Err(format!("policy error: {msg}")), |_| {
                        unavailable("the authorization policy could not be evaluated")
                    });
                }
            }
        }

        Ok(Pending {
            run,
            input,
            scopes,
            stepped_up,
        })
    }

    /// The external policy server, then the end of the decision.
    async fn evaluate_opa(
        &self,
        route: &RouteAuthz,
        ctx: &RequestCtx,
        pending: &mut Pending,
    ) -> Result<(), Box<Denied>> {
        let (Some((idx, path, mode)), Some(input)) = (&route.opa, &pending.input) else {
            return Ok(());
        };
        let Some((name, client, on_error)) = self.settings.opa.get(*idx) else {
            return Ok(());
        };
        let rule = format!("opa:{name}/{path}");
        let run = &mut pending.run;
        match client.evaluate(path, input).await {
            Ok(d) => {
                // A header the configuration does not list is its fault, not an unavailable
                // server's: refused whatever `on_error` says.
                let d = match self.settings.declared(d) {
                    Ok(d) => d,
                    Err(msg) => {
                        tracing::warn!(request_id = %ctx.request_id, rule = %rule, error = %msg, "policy decision refused");
                        return run.verdict(rule, *mode, Err(msg), |_| {
                            unavailable("the authorization policy could not be evaluated")
                        });
                    }
                };
                let headers = d.headers.clone();
                run.verdict(rule, *mode, policy_result(&d), |_| forbidden())?;
                if *mode == Mode::Enforce {
                    run.headers.extend(headers);
                }
                Ok(())
            }
            Err(msg) => {
                tracing::warn!(request_id = %ctx.request_id, rule = %rule, error = %msg, "policy server failed");
                let result = match on_error {
                    OnError::Closed => Err(format!("policy server error: {msg}")),
                    OnError::Open => Ok(format!("policy server error, failing open: {msg}")),
                };
                run.verdict(rule, *mode, result, |_| {
                    unavailable("the authorization policy server is unavailable")
                })
            }
        }
    }

    /// After every rule held: default deny, then what the request carries on.
    fn finish(
        &self,
        route: &RouteAuthz,
        req: &mut GatewayRequest,
        ctx: &mut RequestCtx,
        p: &Principal,
        pending: Pending,
    ) -> Verdict {
        let Pending {
            mut run,
            scopes,
            stepped_up,
            ..
        } = pending;
        if !run.permitted {
            let v = RuleVerdict {
                rule: "default".into(),
                allowed: false,
                reason: "no authorization rule permits this request".into(),
            };
            return denied(ctx, run, v, forbidden());
        }
        let headers = &mut req.head.headers;
        for (name, value) in run.headers.drain(..) {
            headers.insert(name, value);
        }
        if let Some(fm) = &route.field_masks {
            // The next caller may see less than this one: whatever this one sees stays out of
            // shared caches, filtered or not.
            ctx.per_caller_response = true;
            let held: Vec<&FieldMask> = fm
                .by_scope
                .iter()
                .filter(|(s, _)| scopes.iter().any(|x| x == s))
                .map(|(_, m)| &**m)
                .collect();
            let mask = match held.as_slice() {
                [] => Some(fm.default.clone()),
                [one] if one.is_all() => None,
                [_] => fm
                    .by_scope
                    .iter()
                    .find(|(s, _)| scopes.iter().any(|x| x == s))
                    .map(|(_, m)| m.clone()),
                many => {
                    let u = FieldMask::union(many.iter().copied());
                    (!u.is_all()).then(|| Arc::new(u))
                }
            };
            if let Some(mask) = mask.filter(|m| !m.is_all()) {
                // A compressed answer could not be filtered: ask for an uncompressed one.
                headers.remove(http::header::ACCEPT_ENCODING);
                ctx.response_filter = Some(ResponseFilter {
                    json: mask,
                    max_bytes: self.settings.mask_max_bytes,
                });
            }
        }
        // Remembered only where a route's own risk rule was met by a login that is strong and
        // fresh by the gateway-wide rule too: a device the client names on a lenient route (or
        // one whose rule asks less) must not count as known on a strict one.
        if stepped_up
            && route.risk.is_some()
            && self.strong_everywhere(p, unix_now())
            && let (Some(s), Some(d)) = (
                p.subject.as_deref(),
                risk::device(&self.settings.risk, headers),
            )
        {
            self.devices
                .remember(s, d, self.settings.risk.device_memory);
        }
        ctx.authz = Some(Box::new(run.decision(None)));
        Verdict::Continue
    }
}

impl Run {
    /// A rule that held without deciding anything (risk under its thresholds).
    fn shadow_or_note(&mut self, rule: &str, mode: Mode, reason: String) {
        let v = RuleVerdict {
            rule: rule.into(),
            allowed: true,
            reason,
        };
        match mode {
            Mode::Shadow => self.shadow.push(v),
            Mode::Enforce => self.held.push(v),
        }
    }
}

/// An enforced denial: the deciding rule and its precise reason go to the audit event (and the
/// debug log); the client gets `rejection`, whose detail is generic.
fn denied(ctx: &mut RequestCtx, run: Run, v: RuleVerdict, rejection: Rejection) -> Verdict {
    tracing::debug!(request_id = %ctx.request_id, rule = %v.rule, reason = %v.reason, "authorization denied");
    ctx.authz = Some(Box::new(run.decision(Some(v))));
    Verdict::Reject(rejection)
}

fn policy_result(d: &PolicyDecision) -> Result<String, String> {
    let reasons = if d.reasons.is_empty() {
        if d.allow { "allowed" } else { "denied" }.to_string()
    } else {
        d.reasons.join("; ")
    };
    if d.allow { Ok(reasons) } else { Err(reasons) }
}

/// The pipeline step.
pub struct AuthzStage {
    authz: Arc<Authz>,
}

impl AuthzStage {
    pub const ID: StageId = StageId("authz");

    pub fn new(authz: Arc<Authz>) -> AuthzStage {
        AuthzStage { authz }
    }
}

impl Stage for AuthzStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        let az = &*self.authz;
        portcullis_core::remove_headers_folded(&mut req.head.headers, &az.owned_headers);
        let Some(route) = az.route(ctx) else {
            // Every route has its entry (the router refuses requests for none): deny if a
            // request ever comes without one, rather than let it through unexamined.
            let v = RuleVerdict {
                rule: "route".into(),
                allowed: false,
                reason: "no authorization entry for the request's route".into(),
            };
            return Step::Done(denied(ctx, Run::default(), v, forbidden()));
        };
        if route.anonymous {
            return Step::CONTINUE;
        }
        let Some(p) = ctx.principal.clone() else {
            // Authentication lets no request without an identity through to here; deny if
            // one ever does.
            let v = RuleVerdict {
                rule: "identity".into(),
                allowed: false,
                reason: "no verified identity".into(),
            };
            return Step::Done(denied(ctx, Run::default(), v, forbidden()));
        };
        let mut pending = match az.evaluate_sync(route, req, ctx, &p) {
            Ok(pending) => pending,
            Err(d) => {
                let (run, (v, rejection)) = *d;
                return Step::Done(denied(ctx, run, v, rejection));
            }
        };
        if route.opa.is_none() {
            return Step::Done(az.finish(route, req, ctx, &p, pending));
        }
        Step::from_future(async move {
            if let Err(d) = az.evaluate_opa(route, ctx, &mut pending).await {
                let (v, rejection) = *d;
                return denied(ctx, pending.run, v, rejection);
            }
            az.finish(route, req, ctx, &p, pending)
        })
    }
}
