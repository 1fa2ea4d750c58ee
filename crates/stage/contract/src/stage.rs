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

use serde_json::Value;

use crate::config::{
    Media, Mode, Operation, SchemaKind, UncheckedBodies, UnknownFields, UnknownQuery,
};
use crate::fields::Unknown;
use crate::model::{In, Style};
use crate::model::{charset_is_utf8, is_json_media, is_json_type, pick_media, pick_response};

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
        let (media, json) = match pick_body_media(op, req) {
            Ok(m) => m,
            Err(r) => return Step::Done(refuse(op, r, "content-type", violations, ctx)),
        };
        let Some(media) = media.filter(|m| json && (m.validator.is_some() || m.fields.is_some()))
        else {
            // A media type the document declares without a schema, or with a string one (opaque
            // bytes): the type is the whole contract. `pick_body_media` refused a body that is
            // not JSON under a structured schema.
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

/// The declared media type the request's `Content-Type` falls in; `Err` when there is none,
/// when a JSON-like body is not UTF-8, or when the body is not JSON and the media type has a
/// structured schema (fields the gateway cannot see). Also says whether the request's type is
/// JSON (only JSON bodies are read against schemas).
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
    let json = is_json_type(ct);
    // Backends decode a body by its charset (utf-7, utf-16 …): the bytes checked as UTF-8
    // would not be the document they read.
    if json && !charset_is_utf8(ct) {
        return Err(Rejection::new(
            RejectReason::UnsupportedMediaType,
            "a JSON request body must be UTF-8 (charset utf-8 or none)",
        ));
    }
    match found {
        // `unchecked_bodies: pass` is for concrete types the gateway cannot read (a form, a
        // multipart upload); a body that only a JSON-like or wildcard range takes is refused
        // anyway: many backends parse JSON whatever its label.
        Some(m)
            if !json
                && m.schema_kind == SchemaKind::Structured
                && (op.settings.unchecked_bodies == UncheckedBodies::Refuse
                    || is_json_media(&m.def.range)
                    || m.def.range.contains('*')) =>
        {
            Err(Rejection::new(
                RejectReason::UnsupportedMediaType,
                format!(
                    "a body matching {} cannot be checked against its schema: only JSON bodies are",
                    m.def.range
                ),
            ))
        }
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
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api.yaml"), SPEC).unwrap();
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
}
