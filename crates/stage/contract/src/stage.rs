//! The contract step: the request against its operation (parameters, media type, JSON body),
//! and the response half handed to the engine.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use portcullis_core::coding::{self, Inflated};
use portcullis_core::{
    ContractReport, GatewayRequest, Prefix, RejectReason, Rejection, RequestBody, RequestCtx,
    ResponseContract, Stage, StageId, Step, Verdict, Violation,
};

use crate::config::{Media, Mode, Operation, UnknownFields, UnknownQuery};
use crate::fields::Unknown;
use crate::model::{is_json_media, pick_media, pick_response};

/// The contract step: one operation (or none) per route, indexed by route id.
pub struct ContractStage {
    routes: Vec<Option<Arc<Operation>>>,
}

impl ContractStage {
    pub const ID: StageId = StageId("contract");

    pub fn new(routes: Vec<Option<Arc<Operation>>>) -> Self {
        ContractStage { routes }
    }
}

impl Stage for ContractStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        let Some(op) = ctx
            .route_id()
            .and_then(|id| self.routes.get(id.0))
            .and_then(Option::as_ref)
        else {
            return Step::CONTINUE;
        };
        let mut violations = Vec::new();
        check_params(op, req, &mut violations);
        let has_body = match &req.body {
            RequestBody::Streaming(b) => !http_body::Body::is_end_stream(b),
            RequestBody::Buffered(b) => !b.is_empty(),
        };
        if !has_body {
            if op.def.body.as_ref().is_some_and(|b| b.required) {
                violations.push(Violation::new("body", "is required"));
            }
            return Step::Done(conclude(op, violations, ctx));
        }
        let (media, json) = match pick_body_media(op, req) {
            Ok(m) => m,
            Err(r) => return Step::Done(refuse(op, r, "content-type", violations, ctx)),
        };
        let Some(media) = media.filter(|m| json && (m.validator.is_some() || m.fields.is_some()))
        else {
            // A media type the document declares without a JSON schema, or a body that is not
            // JSON under a range (`*/*`) with one: the type is the whole contract.
            return Step::Done(conclude(op, violations, ctx));
        };
        let limit = ctx.body_limit.unwrap_or(u64::MAX);
        Step::from_future(async move {
            let body = match req.buffer_prefix(limit).await {
                Ok(Prefix::Whole(b)) => b.clone(),
                Ok(Prefix::Longer) => {
                    return Verdict::Reject(Rejection::new(
                        RejectReason::BodyTooLarge,
                        format!("the request body exceeds {limit} bytes"),
                    ));
                }
                Err(e) => return Verdict::Reject(e.into_rejection()),
            };
            // A compressed body is read as the upstream that inflates it reads it, and its
            // inflated size is held to the same limit.
            // It goes on inflated: an upstream that would not inflate it reads what was checked.
            let (body, inflated) = match coding::inflate(&req.head.headers, &body, limit) {
                Inflated::Plain => (body, false),
                Inflated::Inflated(inflated) => (Bytes::from(inflated), true),
                Inflated::OverLimit => {
                    return Verdict::Reject(Rejection::new(
                        RejectReason::BodyTooLarge,
                        format!("the request body inflates past {limit} bytes"),
                    ));
                }
                Inflated::Refused(why) => {
                    let r = Rejection::new(
                        RejectReason::UnsupportedMediaType,
                        format!("the request body cannot be read: {why}"),
                    );
                    return refuse(op, r, "content-encoding", violations, ctx);
                }
            };
            match check_body(op, media, &body, &mut violations) {
                Some(new) => set_body(req, new),
                None if inflated => set_body(req, body),
                None => {}
            }
            conclude(op, violations, ctx)
        })
    }
}

/// The declared media type the request's `Content-Type` falls in; `Err` when there is none.
/// Also says whether the request's type is JSON (only JSON bodies are read against schemas).
fn pick_body_media<'o>(
    op: &'o Operation,
    req: &GatewayRequest,
) -> Result<(Option<&'o Media>, bool), Rejection> {
    let declared = match &op.def.body {
        Some(b) => b,
        None => {
            return Err(Rejection::new(
                RejectReason::ContractViolation,
                "this operation takes no request body",
            )
            .with_violations(vec![Violation::new("body", "is not expected")]));
        }
    };
    let mut types = req.head.headers.get_all(http::header::CONTENT_TYPE).iter();
    let ct = match (types.next(), types.next()) {
        (Some(v), None) => v.to_str().ok(),
        _ => None,
    };
    let Some(ct) = ct else {
        return Err(Rejection::new(
            RejectReason::UnsupportedMediaType,
            "the request body needs one Content-Type the operation declares",
        ));
    };
    let found = pick_media(&op.body, ct, |m| &m.def.range);
    let json = is_json_media(ct);
    match found {
        Some(m) => Ok((Some(m), json)),
        None if declared.media.is_empty() => Ok((None, json)),
        None => Err(Rejection::new(
            RejectReason::UnsupportedMediaType,
            format!(
                "the operation takes {}",
                declared
                    .media
                    .iter()
                    .map(|m| m.range.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Checks a JSON body; returns the body to forward when unknown fields were stripped.
fn check_body(
    op: &Operation,
    media: &Media,
    body: &Bytes,
    violations: &mut Vec<Violation>,
) -> Option<Bytes> {
    let settings = &op.settings;
    let mut value = match crate::json::parse(body, &settings.limits) {
        Ok(v) => v,
        Err(e) => {
            violations.push(e.violation());
            return None;
        }
    };
    let cap = settings.max_violations;
    let mut stripped = false;
    if let Some(tree) = &media.fields {
        let unknown = match settings.unknown_fields {
            UnknownFields::Reject => Unknown::Reject,
            UnknownFields::Strip => Unknown::Strip,
        };
        stripped = tree.apply(&mut value, unknown, "body", violations, cap) > 0
            && unknown == Unknown::Strip;
    }
    if let Some(v) = &media.validator {
        crate::messages::collect("body", v, &value, violations, cap);
    }
    if stripped && violations.is_empty() {
        serde_json::to_vec(&value).ok().map(Bytes::from)
    } else {
        None
    }
}

/// Replaces the forwarded body (stripped, or inflated) and its length; it goes uncompressed.
fn set_body(req: &mut GatewayRequest, body: Bytes) {
    req.replace_body(body);
}

fn check_params(op: &Operation, req: &GatewayRequest, violations: &mut Vec<Violation>) {
    let defs = &op.def.parameters;
    let query = req.head.uri.query();
    let path = req.head.uri.path();
    // The operation's template is the tail of the route's: its segments are the request
    // path's last ones.
    let offset = path.split('/').skip(1).count().saturating_sub(op.segments);
    let path_param = |name: &str| -> Option<&str> {
        let at = op
            .path_params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| offset + i)?;
        path.split('/').skip(1).nth(at)
    };
    let raw = crate::params::RawRequest {
        query,
        headers: &req.head.headers,
        path_params: &path_param,
    };
    let mut values = Vec::with_capacity(defs.len());
    crate::params::read(defs, &raw, &mut values, violations);
    let cap = op.settings.max_violations;
    for (i, value) in &values {
        let (Some(Some(v)), Some(prefix)) = (op.params.get(*i), op.locations.get(*i)) else {
            continue;
        };
        crate::messages::collect(prefix, v, value, violations, cap);
    }
    if op.settings.unknown_query == UnknownQuery::Reject {
        for name in crate::params::unknown_query(defs, query) {
            if violations.len() >= cap {
                break;
            }
            violations.push(Violation::new(
                format!("query:{name}"),
                "is not a parameter of this operation",
            ));
        }
    }
}

/// Records the findings and turns them into a verdict.
fn conclude(op: &Arc<Operation>, mut violations: Vec<Violation>, ctx: &mut RequestCtx) -> Verdict {
    let settings = &op.settings;
    if settings.validate_responses || settings.declared_only {
        ctx.response_contract = Some(op.clone() as Arc<dyn ResponseContract>);
    }
    dedup(&mut violations);
    violations.truncate(settings.max_violations);
    let enforced = settings.mode == Mode::Block;
    let verdict = if enforced && !violations.is_empty() {
        let n = violations.len();
        Verdict::Reject(
            Rejection::new(
                RejectReason::ContractViolation,
                format!(
                    "the request breaks the API contract of {} ({n} violation{})",
                    op.id,
                    if n == 1 { "" } else { "s" }
                ),
            )
            .with_violations(violations.clone()),
        )
    } else {
        Verdict::Continue
    };
    ctx.contract = Some(Box::new(ContractReport {
        operation: op.id.clone(),
        enforced,
        request: violations,
        response: Vec::new(),
    }));
    verdict
}

/// Drops repeats, keeping the first of each: the field walk and the schema can both see an
/// unknown field (`additionalProperties: false`). Lists are short (capped).
fn dedup(violations: &mut Vec<Violation>) {
    let mut i = 1;
    while i < violations.len() {
        if violations[..i].contains(&violations[i]) {
            violations.remove(i);
        } else {
            i += 1;
        }
    }
}

/// A refusal before the body is read (media type, unexpected body), with the parameter
/// violations found so far.
/// `field`: the header a 415 is about (`content-type`, `content-encoding`).
fn refuse(
    op: &Arc<Operation>,
    rejection: Rejection,
    field: &str,
    mut violations: Vec<Violation>,
    ctx: &mut RequestCtx,
) -> Verdict {
    if rejection.reason == RejectReason::ContractViolation {
        violations.extend(rejection.violations.iter().cloned());
        return conclude(op, violations, ctx);
    }
    // 415: the type is refused whatever else is wrong (in detect mode: recorded).
    violations.push(Violation::new(field, rejection.detail.to_string()));
    let verdict = conclude(op, violations, ctx);
    match verdict {
        Verdict::Reject(r) => Verdict::Reject(Rejection {
            reason: RejectReason::UnsupportedMediaType,
            ..r
        }),
        v => v,
    }
}

impl ResponseContract for Operation {
    fn wants_body(&self, status: StatusCode) -> bool {
        let s = &self.settings;
        (s.validate_responses || s.declared_only) && !status.is_informational()
    }

    fn filters(&self) -> bool {
        self.settings.declared_only
    }

    fn max_bytes(&self) -> u64 {
        self.settings.response_max_bytes
    }

    fn apply(
        &self,
        status: StatusCode,
        content_type: Option<&str>,
        body: Option<&mut serde_json::Value>,
    ) -> Vec<Violation> {
        let s = &self.settings;
        let mut out = Vec::new();
        let cap = s.max_violations;
        let Some(resp) = pick_response(&self.responses, status.as_u16(), |r| &r.def) else {
            if s.validate_responses {
                out.push(Violation::new(
                    "status",
                    format!("{} is not a declared response", status.as_u16()),
                ));
            }
            if s.declared_only
                && let Some(b) = body
            {
                // Nothing is declared for this status: nothing of the body is.
                *b = serde_json::Value::Null;
            }
            return out;
        };
        let media = content_type.and_then(|ct| pick_media(&resp.media, ct, |m| &m.def.range));
        if media.is_none() && !resp.media.is_empty() && s.validate_responses {
            out.push(Violation::new(
                "content-type",
                "is not a media type declared for this response",
            ));
        }
        let Some(body) = body else {
            return out;
        };
        let Some(media) = media else {
            if s.declared_only && content_type.is_some_and(is_json_media) {
                *body = serde_json::Value::Null;
            }
            return out;
        };
        if s.validate_responses {
            if let Some(v) = &media.validator {
                crate::messages::collect("body", v, body, &mut out, cap);
            }
            // Fields the backend sends but the contract does not publish are a breach too.
            if let Some(tree) = &media.fields {
                tree.apply(body, Unknown::Reject, "body", &mut out, cap);
            }
            dedup(&mut out);
        }
        if s.declared_only
            && let Some(tree) = &media.fields
        {
            let mut ignored = Vec::new();
            tree.apply(body, Unknown::Strip, "body", &mut ignored, 0);
        }
        out
    }
}
