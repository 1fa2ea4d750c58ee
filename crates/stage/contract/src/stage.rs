//! The contract step: the request against its operation (parameters, media type, JSON or form
//! body), and the response half handed to the engine.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use portcullis_core::coding::{self, Inflated};
use portcullis_core::{
    ContractReport, GatewayRequest, Prefix, RejectReason, Rejection, RequestBody, RequestCtx,
    ResponseContract, Stage, StageId, Step, Verdict, Violation,
};

use serde_json::Value;

use crate::config::{
    Media, Mode, Operation, SchemaKind, UncheckedBodies, UnknownFields, UnknownQuery,
};
use crate::fields::Unknown;
use crate::model::{In, Style};
use crate::model::{
    charset_is_utf8, is_form_type, is_json_media, is_json_type, pick_media, pick_response,
};

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
        let stripped = check_params(op, req, &mut violations);
        if !stripped.is_empty() && !drop_query_pairs(req, &stripped) {
            violations.push(Violation::new("query", "could not be rewritten"));
        }
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
        let (media, read) = match pick_body_media(op, req) {
            Ok(m) => m,
            Err(r) => return Step::Done(refuse(op, r, "content-type", violations, ctx)),
        };
        let read_json = |m: &&Media| m.validator.is_some() || m.fields.is_some();
        let Some(media) = media.filter(|m| match read {
            Read::Json => read_json(m),
            Read::Form => m.reads_form().is_some(),
            Read::Type => false,
        }) else {
            // A media type the document declares without a schema, or with a string one (opaque
            // bytes): the type is the whole contract. `pick_body_media` refused a body it does
            // not read (neither JSON nor a form) under a structured schema, unless the route
            // passes such bodies unchecked.
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
            let checked = match media.reads_form() {
                Some(form) if read == Read::Form => {
                    check_form(op, media, form, &body, &mut violations)
                }
                _ => check_body(op, media, &body, &mut violations),
            };
            match checked {
                Some(new) => set_body(req, new),
                None if inflated => set_body(req, body),
                None => {}
            }
            conclude(op, violations, ctx)
        })
    }
}

/// How a request body is read against its media type's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// As JSON: its type is JSON-like.
    Json,
    /// As a form: its type is `application/x-www-form-urlencoded` and the declared form range
    /// has a structured schema ([`Media::reads_form`]).
    Form,
    /// Not read: its type is the whole check.
    Type,
}

/// The declared media type the request's `Content-Type` falls in, and how the body is read;
/// `Err` when there is none, when a JSON or form body is not UTF-8 by its `charset`, or when
/// the body is read neither as JSON nor as a form and the media type has a structured schema
/// (fields the gateway cannot see) that `unchecked_bodies` does not let pass.
fn pick_body_media<'o>(
    op: &'o Operation,
    req: &GatewayRequest,
) -> Result<(Option<&'o Media>, Read), Rejection> {
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
    let json = is_json_type(ct);
    // Backends decode a body by its charset (utf-7, utf-16 …): the bytes checked as UTF-8
    // would not be the document they read.
    if json && !charset_is_utf8(ct) {
        return Err(Rejection::new(
            RejectReason::UnsupportedMediaType,
            "a JSON request body must be UTF-8 (charset utf-8 or none)",
        ));
    }
    // A form is read when its type falls in the declared form range under a structured schema
    // (not in a wildcard range: a wildcard's schema is for JSON bodies).
    let form = !json && is_form_type(ct) && found.is_some_and(|m| m.reads_form().is_some());
    if form && !charset_is_utf8(ct) {
        return Err(Rejection::new(
            RejectReason::UnsupportedMediaType,
            "a form request body must be UTF-8 (charset utf-8 or none)",
        ));
    }
    // Laravel reads a body as JSON when its `Content-Type` holds `/json` or `+json` anywhere
    // (`isJson()`), parameters included: such a form would be checked as a form and read by
    // it as a JSON document the check never saw.
    if form && holds_json(ct) {
        return Err(Rejection::new(
            RejectReason::UnsupportedMediaType,
            FORM_LABELLED_JSON,
        ));
    }
    let read = match (json, form) {
        (true, _) => Read::Json,
        (_, true) => Read::Form,
        _ => Read::Type,
    };
    match found {
        // `unchecked_bodies: pass` is for concrete types the gateway cannot read (a multipart
        // upload, XML); a body that only a JSON-like or wildcard range takes is refused
        // anyway: many backends parse JSON whatever its label.
        Some(m)
            if read == Read::Type
                && m.schema_kind == SchemaKind::Structured
                && (op.settings.unchecked_bodies == UncheckedBodies::Refuse
                    || is_json_media(&m.def.range)
                    || m.def.range.contains('*')) =>
        {
            Err(Rejection::new(
                RejectReason::UnsupportedMediaType,
                format!(
                    "a body matching {} cannot be checked against its schema: only JSON and \
                     form (application/x-www-form-urlencoded) bodies are",
                    m.def.range
                ),
            ))
        }
        Some(m) => Ok((Some(m), read)),
        None if declared.media.is_empty() => Ok((None, read)),
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

/// Why a form whose `Content-Type` holds `/json` or `+json` is refused.
const FORM_LABELLED_JSON: &str = "a form request body's Content-Type must not hold `/json` or \
                                  `+json` (some frameworks then read the body as JSON)";

/// Whether a `Content-Type` value holds `/json` or `+json`, in any case.
fn holds_json(content_type: &str) -> bool {
    [&b"/json"[..], b"+json"].iter().any(|needle| {
        content_type
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    })
}

/// Checks a JSON body; returns the body to forward when unknown fields were stripped.
fn check_body(
    op: &Operation,
    media: &Media,
    body: &Bytes,
    violations: &mut Vec<Violation>,
) -> Option<Bytes> {
    let mut value = match crate::json::parse(body, &op.settings.limits) {
        Ok(v) => v,
        Err(e) => {
            violations.push(e.violation());
            return None;
        }
    };
    let stripped = check_value(op, media, &mut value, violations);
    if stripped && violations.is_empty() {
        serde_json::to_vec(&value).ok().map(Bytes::from)
    } else {
        None
    }
}

/// Checks a form body as a JSON one: its pairs read into an object
/// ([`crate::form::read`]) that the media type's field tree and schema check. Returns the body
/// to forward when unknown fields were stripped: the pairs kept, as they were sent.
fn check_form(
    op: &Operation,
    media: &Media,
    def: &crate::model::FormDef,
    body: &Bytes,
    violations: &mut Vec<Violation>,
) -> Option<Bytes> {
    let cap = op.settings.max_violations;
    let start = violations.len();
    let mut form = crate::form::read(body, def, &op.settings.limits, violations, cap)?;
    // A field the reader found wrong (not UTF-8, repeated …) is left out of the object: the
    // schema would only add that it is missing.
    let read: Vec<String> = violations
        .get(start..)
        .unwrap_or_default()
        .iter()
        .map(|v| v.location.clone())
        .filter(|l| l != "body")
        .collect();
    let mut checked = Vec::new();
    let stripped = check_value(op, media, &mut form.value, &mut checked);
    violations.extend(checked.into_iter().filter(|v| !read.contains(&v.location)));
    form.finish(violations, cap);
    if stripped && violations.is_empty() {
        form.kept()
    } else {
        None
    }
}

/// Runs a media type's checks on a body's value: the field tree (unknown fields reported or
/// stripped, read-only ones reported), then the schema. Whether fields were stripped.
fn check_value(
    op: &Operation,
    media: &Media,
    value: &mut Value,
    violations: &mut Vec<Violation>,
) -> bool {
    let settings = &op.settings;
    let cap = settings.max_violations;
    let mut stripped = false;
    if let Some(tree) = &media.fields {
        let unknown = match settings.unknown_fields {
            UnknownFields::Reject => Unknown::Reject,
            UnknownFields::Strip => Unknown::Strip,
        };
        stripped =
            tree.apply(value, unknown, "body", violations, cap) > 0 && unknown == Unknown::Strip;
    }
    if let Some(v) = &media.validator {
        crate::messages::collect("body", v, value, violations, cap);
    }
    stripped
}

/// Replaces the forwarded body (stripped, or inflated) and its length; it goes uncompressed.
fn set_body(req: &mut GatewayRequest, body: Bytes) {
    req.replace_body(body);
}

/// Checks the parameters; returns the (decoded) query names to remove from what is forwarded:
/// the undeclared properties of deepObject parameters, under `unknown_fields: strip`.
fn check_params(
    op: &Operation,
    req: &GatewayRequest,
    violations: &mut Vec<Violation>,
) -> Vec<String> {
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
    crate::params::read(defs, &raw, &op.settings.limits, &mut values, violations);
    let cap = op.settings.max_violations;
    let strip = op.settings.unknown_fields == UnknownFields::Strip;
    let mut stripped = Vec::new();
    for (i, value) in &mut values {
        let (Some(def), Some(prefix)) = (defs.get(*i), op.locations.get(*i)) else {
            continue;
        };
        // Object and JSON parameters are closed as bodies are: undeclared properties are
        // operator injection waiting for a lenient parser (`filter[$where]=…`).
        if let Some(Some(tree)) = op.param_fields.get(*i) {
            // Only a deepObject parameter's properties are pairs of their own that can be left
            // out of the forwarded query; other serialisations pack them into one value, which
            // is not rewritten: there an undeclared property is a violation under `strip` too.
            let removable = strip && def.location == In::Query && def.style == Style::DeepObject;
            let before: Vec<String> = match value {
                Value::Object(o) if removable => o.keys().cloned().collect(),
                _ => Vec::new(),
            };
            let unknown = if removable {
                Unknown::Strip
            } else {
                Unknown::Reject
            };
            tree.apply(value, unknown, prefix, violations, cap);
            if let Value::Object(o) = value {
                stripped.extend(
                    before
                        .into_iter()
                        .filter(|k| !o.contains_key(k))
                        .map(|k| format!("{}[{k}]", def.name)),
                );
            }
        }
        if let Some(Some(v)) = op.params.get(*i) {
            crate::messages::collect(prefix, v, value, violations, cap);
        }
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
    } else {
        // Undeclared names are allowed, but not another spelling of a declared one: an upstream
        // that reads `limit[]=100000` or `LIMIT=100000` as `limit` would get a value its schema
        // never saw.
        for (name, of) in crate::params::aliased_query(defs, query) {
            if violations.len() >= cap {
                break;
            }
            violations.push(Violation::new(
                format!("query:{name}"),
                format!("is another spelling of the parameter {of}"),
            ));
        }
    }
    stripped
}

/// Removes every query pair whose decoded name is one of `names` from the forwarded URI.
/// `false` when the URI could not be rebuilt (the pairs would then go on).
fn drop_query_pairs(req: &mut GatewayRequest, names: &[String]) -> bool {
    let uri = &req.head.uri;
    let Some(query) = uri.query() else {
        return true;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|piece| {
            let raw = piece.split_once('=').map_or(*piece, |(n, _)| n);
            crate::params::query_name(raw).is_none_or(|n| !names.contains(&n))
        })
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    let Ok(pq) = path_and_query.parse() else {
        return false;
    };
    parts.path_and_query = Some(pq);
    match http::Uri::from_parts(parts) {
        Ok(u) => {
            req.head.uri = u;
            true
        }
        Err(_) => false,
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

/// Whether the response filter parses a body of this type: a JSON-like type
/// ([`is_json_type`]: `application/json`, `text/json`, `*/x-json`, `*/*+json`). Other bodies
/// reach [`ResponseContract::apply`] with a stand-in value, only to learn whether
/// keep-only-declared lets them pass (it sets the value to `null` when it does not).
fn read_as_json(content_type: &str) -> bool {
    is_json_type(content_type)
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
            // The declared response does not list the type (or there is no single one):
            // nothing of the body is declared. For a body the response filter does not read
            // (not JSON by its type) this is the answer to "may it pass?": it is withheld.
            if s.declared_only {
                *body = serde_json::Value::Null;
            }
            return out;
        };
        if !content_type.is_some_and(read_as_json) {
            // A declared type the response filter does not parse: `body` only asked whether
            // the body may pass. It may only when the document makes it opaque
            // ([`Media::passes_unread`]): not under a JSON-like range (`application/*+json`
            // matching a malformed `application/+json`), a wildcard without a string schema
            // (`*/*` answered as XML) or a structured schema (`text/plain` with an object).
            if s.declared_only && !media.passes_unread() {
                *body = serde_json::Value::Null;
            }
            return out;
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::{BodyExt, Empty};
    use portcullis_core::{ConfigErrors, RouteId, RouteMatch, Scheme};

    use super::*;
    use crate::config::{RawOpenApi, compile};

    const SPEC: &str = r##"openapi: 3.1.0
info: {title: t, version: "1"}
paths:
  /items:
    get:
      operationId: listItems
      parameters:
        - name: filter
          in: query
          style: deepObject
          schema:
            type: object
            properties:
              color: {type: string}
              size: {type: integer}
              owner: {type: string, readOnly: true}
        - name: limit
          in: query
          schema: {type: integer, maximum: 100}
        - name: where
          in: query
          content:
            application/json:
              schema:
                type: object
                properties:
                  name: {type: string}
                  tags:
                    type: array
                    items: {type: object, properties: {k: {type: string}}}
        - name: X-Range
          in: header
          schema: {type: object, properties: {from: {type: integer}, to: {type: integer}}}
        - name: role
          in: cookie
          schema: {type: string, enum: [user]}
      responses: {"200": {description: ok}}
"##;

    /// The step for the one operation of [`SPEC`], with these extra `openapi:` settings.
    fn stage(settings: &str) -> ContractStage {
        stage_of(SPEC, settings)
    }

    /// The step for the first operation of `spec`, with these extra `openapi:` settings.
    fn stage_of(spec: &str, settings: &str) -> ContractStage {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api.yaml"), spec).unwrap();
        let raw: RawOpenApi =
            serde_yaml_ng::from_str(&format!("{{spec: api.yaml{settings}}}")).unwrap();
        let mut e = ConfigErrors::new();
        let contract = compile(&raw, dir.path(), "routes[0].openapi", &mut e);
        assert!(e.is_empty(), "{e}");
        let op = contract.unwrap().operations.into_iter().next().unwrap();
        ContractStage::new(vec![Some(op)])
    }

    type Found = (Vec<(String, String)>, String);

    /// Runs a GET of `uri`: the violations it is refused with (none: let through) and the URI
    /// that goes on.
    fn get(stage: &ContractStage, uri: &str, headers: &[(&str, &[u8])]) -> Found {
        let mut b = http::Request::builder().method("GET").uri(uri);
        for (k, v) in headers {
            b = b.header(*k, http::HeaderValue::from_bytes(v).unwrap());
        }
        let (head, ()) = b.body(()).unwrap().into_parts();
        let body = Empty::new()
            .map_err(|e| -> portcullis_core::BoxError { match e {} })
            .boxed_unsync();
        let mut req = GatewayRequest::new(head, body);
        let mut ctx = RequestCtx::new(
            "127.0.0.1:5000".parse().unwrap(),
            Scheme::Https,
            Arc::from("l"),
        );
        ctx.route = Some(RouteMatch {
            id: RouteId(0),
            name: Arc::from("items"),
            params: Vec::new(),
        });
        let verdict = match stage.on_request(&mut req, &mut ctx) {
            Step::Done(v) => v,
            Step::Async(_) => panic!("a GET without a body is checked synchronously"),
        };
        let violations = match verdict {
            Verdict::Continue => Vec::new(),
            Verdict::Reject(r) => {
                assert_eq!(r.reason, RejectReason::ContractViolation, "{r:?}");
                r.violations
                    .iter()
                    .map(|v| (v.location.clone(), v.message.clone()))
                    .collect()
            }
            Verdict::Answer(a) => panic!("unexpected answer {a:?}"),
        };
        (violations, req.head.uri.to_string())
    }

    fn refused(found: Found, want: &[(&str, &str)]) {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(l, m)| ((*l).to_owned(), (*m).to_owned()))
            .collect();
        assert_eq!(found.0, want);
    }

    fn passed(found: Found, uri: &str) {
        assert_eq!(found, (Vec::new(), uri.to_owned()));
    }

    /// A body the response filter does not read as JSON, of a type a declared JSON range
    /// matches, is withheld; one of a declared non-JSON type passes; a real JSON one is
    /// filtered.
    #[test]
    fn declared_only_withholds_what_it_cannot_read_of_a_json_range() {
        let spec = r##"openapi: 3.1.0
info: {title: t, version: "1"}
paths:
  /a:
    get:
      responses:
        "200":
          description: ok
          content:
            application/*+json:
              schema: {type: object, properties: {id: {type: integer}}}
            text/csv: {}
"##;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api.yaml"), spec).unwrap();
        let raw: RawOpenApi =
            serde_yaml_ng::from_str("{spec: api.yaml, responses: {declared_only: true}}").unwrap();
        let mut e = ConfigErrors::new();
        let contract = compile(&raw, dir.path(), "routes[0].openapi", &mut e);
        assert!(e.is_empty(), "{e}");
        let op = contract.unwrap().operations.into_iter().next().unwrap();
        let ok = StatusCode::OK;
        let withheld = |ct: &str| {
            let mut stand_in = Value::Bool(true);
            op.apply(ok, Some(ct), Some(&mut stand_in));
            stand_in.is_null()
        };
        assert!(withheld("application/+json"));
        assert!(withheld("application/x y+json"));
        assert!(!withheld("text/csv"));
        let mut body = serde_json::json!({"id": 1, "secret": "s"});
        op.apply(ok, Some("application/problem+json"), Some(&mut body));
        assert_eq!(body, serde_json::json!({"id": 1}));
    }

    /// Swashbuckle and springdoc shapes: JSON-like labels are filtered, non-JSON bodies pass
    /// only under a concrete type without a structured schema or under an explicit string.
    #[test]
    fn declared_only_passes_only_what_the_document_makes_opaque() {
        let spec = r##"openapi: 3.0.3
info: {title: t, version: "1"}
paths:
  /a:
    get:
      responses:
        "200":
          description: ok
          content:
            text/plain: {schema: {$ref: "#/components/schemas/User"}}
            text/json: {schema: {$ref: "#/components/schemas/User"}}
            image/png: {schema: {type: string, format: binary}}
            text/csv: {schema: {description: rows}}
            "*/*": {schema: {$ref: "#/components/schemas/User"}}
        "201":
          description: ok
          content:
            "*/*": {}
        "202":
          description: ok
          content:
            application/*: {schema: {type: string, format: binary}}
components:
  schemas:
    User: {type: object, properties: {name: {type: string}}}
"##;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api.yaml"), spec).unwrap();
        let raw: RawOpenApi =
            serde_yaml_ng::from_str("{spec: api.yaml, responses: {declared_only: true}}").unwrap();
        let mut e = ConfigErrors::new();
        let contract = compile(&raw, dir.path(), "routes[0].openapi", &mut e);
        assert!(e.is_empty(), "{e}");
        let op = contract.unwrap().operations.into_iter().next().unwrap();
        let withheld = |status: u16, ct: &str| {
            let mut stand_in = Value::Bool(true);
            op.apply(
                StatusCode::from_u16(status).unwrap(),
                Some(ct),
                Some(&mut stand_in),
            );
            stand_in.is_null()
        };
        for ct in ["text/plain; charset=utf-8", "application/xml", "text/html"] {
            assert!(withheld(200, ct), "{ct}");
        }
        for ct in ["image/png", "text/csv"] {
            assert!(!withheld(200, ct), "{ct}");
        }
        assert!(withheld(201, "application/octet-stream"));
        assert!(!withheld(202, "application/pdf"));
        for ct in ["text/json; charset=utf-8", "application/x-json"] {
            let mut body = serde_json::json!({"name": "x", "passwordHash": "h"});
            op.apply(StatusCode::OK, Some(ct), Some(&mut body));
            assert_eq!(body, serde_json::json!({"name": "x"}), "{ct}");
        }
    }

    #[test]
    fn object_parameters_are_closed_as_bodies_are() {
        let s = stage("");
        let ok = "/items?filter[color]=red&filter[size]=3&limit=5";
        passed(get(&s, ok, &[]), ok);
        // Operator injection through a qs-style parser.
        refused(
            get(
                &s,
                "/items?filter[color]=red&filter[$where]=sleep(5000)",
                &[],
            ),
            &[("query:filter/$where", "unknown field")],
        );
        refused(
            get(&s, "/items?filter%5Bf%5D=1", &[]),
            &[("query:filter/f", "unknown field")],
        );
        refused(
            get(&s, "/items?filter[owner]=me", &[]),
            &[("query:filter/owner", "read-only field")],
        );
        // The name alone would be the whole value upstream.
        refused(
            get(&s, "/items?filter=anything", &[]),
            &[(
                "query:filter",
                "must be in deepObject style (name[property]=value)",
            )],
        );
        // Packed serialisations (a header here) and JSON parameters, at any depth.
        refused(
            get(&s, "/items", &[("x-range", b"from,1,to,2,admin,1")]),
            &[("header:x-range/admin", "unknown field")],
        );
        let json = "%7B%22name%22%3A%22a%22%2C%22%24ne%22%3A1%2C%22tags%22%3A%5B%7B%22k%22%3A%22v%22%2C%22x%22%3A1%7D%5D%7D";
        refused(
            get(&s, &format!("/items?where={json}"), &[]),
            &[
                ("query:where/$ne", "unknown field"),
                ("query:where/tags/0/x", "unknown field"),
            ],
        );
        passed(
            get(&s, "/items?where=%7B%22name%22%3A%22a%22%7D", &[]),
            "/items?where=%7B%22name%22%3A%22a%22%7D",
        );
    }

    #[test]
    fn json_parameters_are_read_under_the_route_limits() {
        let s = stage(", limits: {max_depth: 2, max_number_magnitude: 1000}");
        // {"name":"a","name":"b"}: which one an application reads is up to its parser.
        refused(
            get(
                &s,
                "/items?where=%7B%22name%22%3A%22a%22%2C%22name%22%3A%22b%22%7D",
                &[],
            ),
            &[("query:where/name", "duplicate key")],
        );
        refused(
            get(&s, "/items?where=%7B%22n%22%3A1001%7D", &[]),
            &[("query:where/n", "number beyond ±1000")],
        );
        refused(
            get(&s, "/items?where=%7B%22tags%22%3A%5B%7B%7D%5D%7D", &[]),
            &[("query:where/tags/0", "nesting deeper than 2")],
        );
    }

    #[test]
    fn strip_leaves_undeclared_deep_object_properties_out_of_the_query() {
        let s = stage(", unknown_fields: strip");
        passed(
            get(
                &s,
                "/items?filter[color]=red&filter%5B%24where%5D=sleep(5000)&limit=5&filter[x]=1",
                &[],
            ),
            "/items?filter[color]=red&limit=5",
        );
        passed(get(&s, "/items?filter[zz]=1", &[]), "/items");
        // Read-only is refused whatever the policy; packed values are not rewritten.
        refused(
            get(&s, "/items?filter[owner]=me&filter[zz]=1", &[]),
            &[("query:filter/owner", "read-only field")],
        );
        refused(
            get(&s, "/items", &[("x-range", b"from,1,admin,1")]),
            &[("header:x-range/admin", "unknown field")],
        );
    }

    #[test]
    fn a_raw_semicolon_in_the_query_is_a_violation() {
        let s = stage(", unknown_query: allow");
        for uri in [
            "/items?filter[color]=x;limit=100000",
            "/items?filter[color]=x;admin=1",
        ] {
            refused(
                get(&s, uri, &[]),
                &[(
                    "query",
                    "must not contain a raw `;` (some frameworks split the query on it): \
                     encode it as %3B",
                )],
            );
        }
        passed(get(&s, "/items?x=a%3Bb", &[]), "/items?x=a%3Bb");
    }

    /// Where undeclared query names are allowed, another spelling of a declared one is not:
    /// the upstream may read it as that parameter, a value its schema never saw.
    #[test]
    fn other_spellings_of_a_declared_parameter_are_violations_under_allow() {
        let s = stage(", unknown_query: allow");
        for (uri, name) in [
            ("/items?limit=5&limit[]=100000", "limit[]"),
            ("/items?LIMIT=100000", "LIMIT"),
            ("/items?limit=5&%20limit=100000", " limit"),
        ] {
            refused(
                get(&s, uri, &[]),
                &[(
                    &format!("query:{name}"),
                    "is another spelling of the parameter limit",
                )],
            );
        }
        passed(
            get(&s, "/items?limit=5&other=1", &[]),
            "/items?limit=5&other=1",
        );
    }

    #[test]
    fn cookie_parameters_see_every_cookie() {
        let s = stage("");
        refused(
            get(&s, "/items", &[("cookie", b"role=user; role =admin")]),
            &[("cookie:role", "must not be repeated")],
        );
        refused(
            get(&s, "/items", &[("cookie", b"role =admin")]),
            &[("cookie:role", "must be one of: user")],
        );
        refused(
            get(&s, "/items", &[("cookie", b"n=\xc3\xa9; role=admin")]),
            &[("cookie", "the Cookie header must be ASCII text")],
        );
        let many = format!("{}role=admin", "z=1; ".repeat(256));
        refused(
            get(
                &s,
                "/items",
                &[("cookie", b"role=user"), ("cookie", many.as_bytes())],
            ),
            &[("cookie", "too many cookies (more than 256)")],
        );
        passed(
            get(&s, "/items", &[("cookie", b"a=1; role=user")]),
            "/items",
        );
    }

    const FORM_SPEC: &str = r##"openapi: 3.1.0
info: {title: t, version: "1"}
paths:
  /people:
    post:
      operationId: createPerson
      requestBody:
        required: true
        content:
          application/x-www-form-urlencoded:
            schema:
              type: object
              required: [name]
              properties:
                name: {type: string, maxLength: 20}
                age: {type: integer, minimum: 0}
                member: {type: boolean}
                role: {type: string, enum: [user]}
                id: {type: string, readOnly: true}
                tag: {type: array, items: {type: string}, maxItems: 3}
                ids: {type: array, items: {type: integer}}
                words: {type: array, items: {type: string}}
                addr:
                  type: object
                  properties:
                    city: {type: string}
                    zip: {type: integer}
                meta: {type: object, properties: {k: {type: string}}}
            encoding:
              ids: {style: form, explode: false}
              words: {style: pipeDelimited}
              addr: {style: deepObject}
          multipart/form-data:
            schema: {type: object, properties: {file: {type: string}}}
      responses: {"204": {description: ok}}
"##;

    const FORM: &str = "application/x-www-form-urlencoded";

    /// What became of a POST.
    #[derive(Debug)]
    struct Posted {
        /// `None`: let through; else the reason and the violations.
        refused: Option<(RejectReason, Vec<(String, String)>)>,
        /// The body that goes on, and its `Content-Length`.
        body: Bytes,
        length: Option<String>,
        encoding: Option<String>,
        /// The violations recorded in the contract report.
        recorded: Vec<(String, String)>,
    }

    fn pairs(v: &[Violation]) -> Vec<(String, String)> {
        v.iter()
            .map(|v| (v.location.clone(), v.message.clone()))
            .collect()
    }

    fn owned(want: &[(&str, &str)]) -> Vec<(String, String)> {
        want.iter()
            .map(|(l, m)| ((*l).to_owned(), (*m).to_owned()))
            .collect()
    }

    /// Runs a POST of `body` with this `Content-Type` (and headers) through the step.
    fn post(
        stage: &ContractStage,
        content_type: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Posted {
        let body: Bytes = body.into();
        let mut b = http::Request::builder()
            .method("POST")
            .uri("/people")
            .header("content-type", content_type)
            .header("content-length", body.len());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (head, ()) = b.body(()).unwrap().into_parts();
        let stream = http_body_util::Full::new(body)
            .map_err(|e| -> portcullis_core::BoxError { match e {} })
            .boxed_unsync();
        let mut req = GatewayRequest::new(head, stream);
        let mut ctx = RequestCtx::new(
            "127.0.0.1:5000".parse().unwrap(),
            Scheme::Https,
            Arc::from("l"),
        );
        ctx.route = Some(RouteMatch {
            id: RouteId(0),
            name: Arc::from("people"),
            params: Vec::new(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let verdict = rt.block_on(stage.on_request(&mut req, &mut ctx).resolve());
        let refused = match verdict {
            Verdict::Continue => None,
            Verdict::Reject(r) => Some((r.reason, pairs(&r.violations))),
            Verdict::Answer(a) => panic!("unexpected answer {a:?}"),
        };
        let body = match req.take_body() {
            RequestBody::Buffered(b) => b,
            RequestBody::Streaming(s) => rt.block_on(s.collect()).unwrap().to_bytes(),
        };
        let header = |name: &str| {
            req.head
                .headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        Posted {
            refused,
            body,
            length: header("content-length"),
            encoding: header("content-encoding"),
            recorded: ctx.contract.map(|c| pairs(&c.request)).unwrap_or_default(),
        }
    }

    fn form(stage: &ContractStage, body: &str) -> Posted {
        post(stage, FORM, body.to_owned(), &[])
    }

    /// Refused with 400 and exactly these violations.
    fn violates(p: Posted, want: &[(&str, &str)]) {
        assert_eq!(
            p.refused,
            Some((RejectReason::ContractViolation, owned(want))),
            "{p:?}"
        );
    }

    /// Let through with no violation, the body going on as `forwarded`.
    fn forwarded(p: Posted, body: &str) {
        assert_eq!(p.refused, None, "{p:?}");
        assert!(p.recorded.is_empty(), "{p:?}");
        assert_eq!(p.body, body.as_bytes(), "{p:?}");
        assert_eq!(p.length, Some(body.len().to_string()), "{p:?}");
    }

    #[test]
    fn a_valid_form_is_forwarded_unchanged() {
        let s = stage_of(FORM_SPEC, "");
        let body = "name=Ann+Lee&age=30&member=true&tag=a&tag=b&ids=1,2&words=x%7Cy|z\
                    &addr[city]=Paris&addr%5Bzip%5D=75001&role=user";
        forwarded(form(&s, body), body);
        // Any case, with a UTF-8 charset.
        for ct in [
            "Application/X-WWW-Form-Urlencoded",
            "application/x-www-form-urlencoded; charset=UTF-8",
            "application/x-www-form-urlencoded;charset=\"utf8\"",
        ] {
            forwarded(post(&s, ct, "name=x", &[]), "name=x");
        }
        // Undecodable escapes stay as they are (as the WHATWG parser leaves them).
        forwarded(form(&s, "name=100%zz"), "name=100%zz");
    }

    #[test]
    fn form_values_are_typed_as_the_schema_says_and_checked_by_it() {
        let s = stage_of(FORM_SPEC, "");
        // A value that is not of its type stays text: the schema says what is wrong.
        violates(
            form(&s, "name=a&age=abc"),
            &[("body:/age", "must be an integer")],
        );
        violates(form(&s, "name=a&age=-1"), &[("body:/age", "must be >= 0")]);
        violates(
            form(&s, "name=a&member=yes"),
            &[("body:/member", "must be a boolean")],
        );
        violates(form(&s, "age=3"), &[("body:/name", "is required")]);
        violates(
            form(&s, "name=aaaaaaaaaaaaaaaaaaaaa"),
            &[("body:/name", "must be at most 20 characters")],
        );
        violates(
            form(&s, "name=a&role=admin"),
            &[("body:/role", "must be one of: user")],
        );
        violates(form(&s, "name=a&id=7"), &[("body:/id", "read-only field")]);
    }

    #[test]
    fn an_empty_form_is_a_missing_body() {
        let s = stage_of(FORM_SPEC, "");
        violates(form(&s, ""), &[("body", "is required")]);
        // Pieces without pairs are an empty object.
        violates(form(&s, "&&"), &[("body:/name", "is required")]);
    }

    #[test]
    fn unknown_form_fields_are_refused_under_reject() {
        let s = stage_of(FORM_SPEC, "");
        violates(
            form(&s, "name=a&admin=1&addr[evil]=x"),
            &[
                ("body:/admin", "unknown field"),
                ("body:/addr/evil", "unknown field"),
            ],
        );
    }

    #[test]
    fn strip_forwards_the_kept_pairs_as_they_were_sent() {
        let s = stage_of(FORM_SPEC, ", unknown_fields: strip");
        let p = form(
            &s,
            "admin=1&name=A%20b+c&x=1&&addr[evil]=1&age=%33&x=2&addr[city]=P%61ris",
        );
        forwarded(p, "name=A%20b+c&age=%33&addr[city]=P%61ris");
        // Nothing to strip: the body goes on as sent (empty pieces and all).
        forwarded(form(&s, "name=a&&age=1"), "name=a&&age=1");
        // Read-only fields and other violations are refused, not stripped.
        violates(
            form(&s, "name=a&id=1&junk=2"),
            &[("body:/id", "read-only field")],
        );
    }

    #[test]
    fn a_repeated_field_that_is_not_an_array_is_refused() {
        let s = stage_of(FORM_SPEC, "");
        violates(
            form(&s, "name=a&name=b"),
            &[("body:/name", "must not be repeated")],
        );
        violates(
            form(&s, "name=a&age=1&age=1"),
            &[("body:/age", "must not be repeated")],
        );
        // Not exploded: one value, split.
        violates(
            form(&s, "name=a&ids=1&ids=2"),
            &[("body:/ids", "must not be repeated")],
        );
        violates(
            form(&s, "name=a&addr[city]=a&addr[city]=b"),
            &[("body:/addr/city", "must not be repeated")],
        );
    }

    #[test]
    fn arrays_by_repetition_and_by_delimiter() {
        let s = stage_of(FORM_SPEC, "");
        violates(
            form(&s, "name=a&tag=1&tag=2&tag=3&tag=4"),
            &[("body:/tag", "must have at most 3 items")],
        );
        violates(
            form(&s, "name=a&ids=1,x,3"),
            &[("body:/ids/1", "must be an integer")],
        );
        // An encoded comma is data, not a delimiter.
        violates(
            form(&s, "name=a&ids=1%2C2"),
            &[("body:/ids/0", "must be an integer")],
        );
        for ok in [
            "name=a&tag=x",
            "name=a&tag=",
            "name=a&ids=",
            "name=a&words=a|b%7Cc",
        ] {
            forwarded(form(&s, ok), ok);
        }
    }

    #[test]
    fn object_fields_are_read_in_deep_object_style_only() {
        let s = stage_of(FORM_SPEC, "");
        violates(
            form(&s, "name=a&addr[city]=P&addr[zip]=x"),
            &[("body:/addr/zip", "must be an integer")],
        );
        let deep = "must be in deepObject style (name[property]=value)";
        for body in ["name=a&addr=x", "name=a&addr[city", "name=a&addr[city]x=1"] {
            violates(form(&s, body), &[("body:/addr", deep)]);
        }
        violates(
            form(&s, "name=a&addr[city][x]=1"),
            &[("body:/addr", "must not nest objects (name[a][b])")],
        );
        // Without `style: deepObject` an object field cannot be read.
        for body in ["name=a&meta[k]=1", "name=a&meta=k,1"] {
            violates(
                form(&s, body),
                &[(
                    "body:/meta",
                    "is an object field, which a form carries only in deepObject style \
                     (name[property]=value), and the document does not declare it so",
                )],
            );
        }
    }

    #[test]
    fn names_and_values_must_be_utf8() {
        let s = stage_of(FORM_SPEC, "");
        violates(
            form(&s, "name=%FF"),
            &[("body:/name", "must be valid UTF-8 text")],
        );
        violates(
            post(&s, FORM, &b"name=\xff"[..], &[]),
            &[("body:/name", "must be valid UTF-8 text")],
        );
        violates(
            form(&s, "name=a&ro%FFle=admin"),
            &[(
                "body",
                "field names must be UTF-8 text once percent-decoded",
            )],
        );
        violates(
            form(&s, "name=a&tag=ok&tag=%C3"),
            &[("body:/tag", "must be valid UTF-8 text")],
        );
    }

    #[test]
    fn a_form_in_another_charset_gets_415() {
        let s = stage_of(FORM_SPEC, "");
        for ct in [
            "application/x-www-form-urlencoded; charset=iso-8859-1",
            "application/x-www-form-urlencoded; charset=utf-7",
        ] {
            let p = post(&s, ct, "name=a", &[]);
            assert_eq!(
                p.refused,
                Some((
                    RejectReason::UnsupportedMediaType,
                    owned(&[(
                        "content-type",
                        "a form request body must be UTF-8 (charset utf-8 or none)"
                    )])
                )),
                "{ct}"
            );
        }
    }

    /// Laravel reads a body whose `Content-Type` holds `/json` or `+json` as JSON: a form so
    /// labelled is refused, not checked as a form.
    #[test]
    fn a_form_labelled_json_gets_415() {
        let s = stage_of(FORM_SPEC, "");
        for ct in [
            "application/x-www-form-urlencoded; v=/json",
            "application/x-www-form-urlencoded; charset=utf-8; profile=\"a+JSON\"",
        ] {
            let p = post(&s, ct, r#"{"name":"a","role":"admin"}"#, &[]);
            assert_eq!(
                p.refused,
                Some((
                    RejectReason::UnsupportedMediaType,
                    owned(&[("content-type", super::FORM_LABELLED_JSON)])
                )),
                "{ct}"
            );
        }
        forwarded(
            post(
                &s,
                "application/x-www-form-urlencoded; charset=utf-8",
                "name=a",
                &[],
            ),
            "name=a",
        );
    }

    /// PHP cuts a name at a NUL; Rack 2 drops leading brackets and ends a name at a `]`; qs
    /// (Express) reads `[role]` as `role`: each is another spelling, even where the schema
    /// lets other fields through.
    #[test]
    fn bracket_and_nul_spellings_of_a_declared_field_are_refused() {
        let open = FORM_SPEC.replacen(
            "required: [name]",
            "additionalProperties: true\n              required: [name]",
            1,
        );
        assert_ne!(open, FORM_SPEC);
        for settings in ["", ", unknown_fields: strip"] {
            let s = stage_of(&open, settings);
            forwarded(form(&s, "name=a&note=x"), "name=a&note=x");
            for body in [
                "name=a&role%00=admin",
                "name=a&role%00x=admin",
                "name=a&[role]=admin",
                "name=a&%5Brole%5D=admin",
                "name=a&role]=admin",
                "name=a&]role=admin",
            ] {
                let p = form(&s, body);
                let Some((RejectReason::ContractViolation, v)) = &p.refused else {
                    panic!("{body}: {p:?}");
                };
                assert_eq!(v.len(), 1, "{body}: {v:?}");
                assert!(v[0].0.starts_with("body:/"), "{body}: {v:?}");
                assert_eq!(v[0].1, "is another spelling of the field role", "{body}");
            }
        }
    }

    /// A name a PHP, Rails or case-insensitive binder reads as a declared field is refused,
    /// whatever `unknown_fields` says: under `strip` it is not silently forwarded.
    #[test]
    fn other_spellings_of_a_declared_field_are_refused() {
        for settings in ["", ", unknown_fields: strip"] {
            let s = stage_of(FORM_SPEC, settings);
            for (body, name, of) in [
                ("name=a&ROLE=admin", "ROLE", "role"),
                ("name=a&role=user&role[]=admin", "role[]", "role"),
                ("name=a&%20role=admin", " role", "role"),
                ("name=a&ID=1", "ID", "id"),
                ("name=a&Id[x]=1", "Id[x]", "id"),
                ("name=a&tag[]=x", "tag[]", "tag"),
                ("name=a&ADDR[city]=x", "ADDR[city]", "addr"),
            ] {
                violates(
                    form(&s, body),
                    &[(
                        &format!("body:/{name}"),
                        &format!("is another spelling of the field {of}"),
                    )],
                );
            }
        }
    }

    #[test]
    fn a_raw_semicolon_in_a_form_is_a_violation() {
        let s = stage_of(FORM_SPEC, "");
        violates(
            form(&s, "name=x;role=admin"),
            &[(
                "body",
                "must not contain a raw `;` (some frameworks split a form on it): encode it \
                 as %3B",
            )],
        );
        forwarded(form(&s, "name=x%3By"), "name=x%3By");
    }

    #[test]
    fn too_many_form_pairs_are_refused() {
        let s = stage_of(FORM_SPEC, ", unknown_fields: strip");
        let many = format!("name=a{}", "&z=1".repeat(crate::form::MAX_FORM_PAIRS));
        violates(
            form(&s, &many),
            &[("body", "too many form fields (more than 1024)")],
        );
        let fits = format!("name=a{}", "&tag=1".repeat(crate::form::MAX_FORM_PAIRS - 1));
        violates(
            form(&s, &fits),
            &[("body:/tag", "must have at most 3 items")],
        );
    }

    #[test]
    fn form_values_are_held_to_the_route_limits() {
        let s = stage_of(
            FORM_SPEC,
            ", limits: {max_string_bytes: 8, max_number_magnitude: 1000, max_array_items: 2}",
        );
        violates(
            form(&s, "name=123456789"),
            &[("body:/name", "string longer than 8 bytes")],
        );
        violates(
            form(&s, "name=a&age=1001"),
            &[("body:/age", "number beyond ±1000")],
        );
        violates(
            form(&s, "name=a&ids=1,2,3"),
            &[("body:/ids", "more than 2 items")],
        );
    }

    /// A zlib stream (`deflate`) of `data` in one stored block.
    fn zlib(data: &[u8]) -> Vec<u8> {
        let len = u16::try_from(data.len()).unwrap();
        let mut out = vec![0x78, 0x01, 0x01];
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(data);
        let (mut a, mut b) = (1u32, 0u32);
        for byte in data {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        out.extend_from_slice(&((b << 16) | a).to_be_bytes());
        out
    }

    #[test]
    fn a_compressed_form_is_checked_inflated() {
        let s = stage_of(FORM_SPEC, "");
        let deflate = [("content-encoding", "deflate")];
        violates(
            post(&s, FORM, zlib(b"name=a&age=x"), &deflate),
            &[("body:/age", "must be an integer")],
        );
        let p = post(&s, FORM, zlib(b"name=a&age=1"), &deflate);
        assert_eq!(p.encoding, None, "{p:?}");
        forwarded(p, "name=a&age=1");
        let s = stage_of(FORM_SPEC, ", unknown_fields: strip");
        let p = post(&s, FORM, zlib(b"name=a&junk=1"), &deflate);
        assert_eq!(p.encoding, None, "{p:?}");
        forwarded(p, "name=a");
    }

    #[test]
    fn detect_mode_records_a_bad_form_and_lets_it_through() {
        let s = stage_of(FORM_SPEC, ", mode: detect, unknown_fields: strip");
        let body = "name=a&age=x&junk=1";
        let p = form(&s, body);
        assert_eq!(p.refused, None, "{p:?}");
        assert_eq!(p.recorded, owned(&[("body:/age", "must be an integer")]));
        // Not rewritten: a request with violations goes on as sent.
        assert_eq!(p.body, body.as_bytes());
        let p = post(&s, &format!("{FORM}; charset=latin1"), "name=a", &[]);
        assert_eq!(p.refused, None, "{p:?}");
        assert_eq!(
            p.recorded,
            owned(&[(
                "content-type",
                "a form request body must be UTF-8 (charset utf-8 or none)"
            )])
        );
    }

    /// `unchecked_bodies: pass` still passes the types the gateway does not read; forms are
    /// checked whatever it says.
    #[test]
    fn unchecked_bodies_applies_to_types_that_are_not_read() {
        let multipart = "multipart/form-data; boundary=x";
        let upload = "--x\r\ncontent-disposition: form-data; name=\"evil\"\r\n\r\n1\r\n--x--\r\n";
        let s = stage_of(FORM_SPEC, "");
        let p = post(&s, multipart, upload, &[]);
        assert_eq!(
            p.refused,
            Some((
                RejectReason::UnsupportedMediaType,
                owned(&[(
                    "content-type",
                    "a body matching multipart/form-data cannot be checked against its schema: \
                     only JSON and form (application/x-www-form-urlencoded) bodies are"
                )])
            ))
        );
        let s = stage_of(FORM_SPEC, ", unchecked_bodies: pass");
        assert_eq!(post(&s, multipart, upload, &[]).refused, None);
        violates(
            form(&s, "name=a&evil=1"),
            &[("body:/evil", "unknown field")],
        );
    }
}
