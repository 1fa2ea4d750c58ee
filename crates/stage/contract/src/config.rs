//! The route key `openapi:` and what it compiles to: one [`Operation`] per operation of the
//! document, each with its validators and field trees built once, at configuration time.

use std::path::Path;
use std::sync::Arc;

use portcullis_core::ConfigErrors;
use portcullis_core::units::RawSize;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fields::{Direction, FieldTree};
use crate::json::JsonLimits;
use crate::model::{Document, In, MediaDef, OperationDef, ResponseDef, Shape, is_json_media};

// ---------------------------------------------------------------------------------------------
// Raw

/// What the contract step does with a violation.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse the request (400, or 415 for an undeclared media type).
    #[default]
    Block,
    /// Record the violations (audit, metrics, log) and let the request through: a contract
    /// rolled out safely.
    Detect,
}

/// What happens to body fields the schema does not declare.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    /// A violation (the request is refused in `block` mode).
    #[default]
    Reject,
    /// Removed before the body is forwarded.
    Strip,
}

/// What happens to query parameters the operation does not declare.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnknownQuery {
    /// A violation.
    #[default]
    Reject,
    /// Passed on unchecked.
    Allow,
}

/// What happens to a request body the gateway cannot check against its declared schema (one
/// read neither as JSON nor as a form, under a schema with fields: a multipart upload, XML).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UncheckedBodies {
    /// 415 in block mode (a violation in detect mode).
    #[default]
    Refuse,
    /// Forwarded unchecked (its type checked only).
    Pass,
}

/// Whether the document's `security` requirements are checked (by the authorization step).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecurityPolicy {
    /// Checked: an operation that requires credentials needs an authenticated route, and the
    /// caller's credential must meet one of its requirements.
    #[default]
    Enforce,
    /// Not checked: authentication and authorization are the route's `auth` and `authz` alone.
    Ignore,
}

/// Whether responses are validated against the document.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResponseValidation {
    #[default]
    Off,
    /// Violations are recorded in the audit event and counted; the response is not changed.
    Detect,
}

/// Limits on JSON request bodies, enforced while parsing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawJsonLimits {
    /// Default 32 (at most 127).
    #[serde(default)]
    pub max_depth: Option<usize>,
    /// Keys of one object. Default 1000.
    #[serde(default)]
    pub max_object_keys: Option<usize>,
    /// Values in the whole document. Default 100000.
    #[serde(default)]
    pub max_total_values: Option<usize>,
    /// Bytes of one string. Default 64KiB.
    #[serde(default)]
    pub max_string_bytes: Option<RawSize>,
    /// Items of one array. Default 10000.
    #[serde(default)]
    pub max_array_items: Option<usize>,
    /// Largest absolute value of a number. Default 9007199254740991 (2^53 − 1: beyond it,
    /// parsers disagree on integers).
    #[serde(default)]
    pub max_number_magnitude: Option<f64>,
}

/// The response half of the contract.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawResponses {
    /// `off` (default) or `detect`.
    #[serde(default)]
    pub validate: ResponseValidation,
    /// Remove from JSON responses every field the response schema does not declare (and
    /// `writeOnly` ones). Default false.
    #[serde(default)]
    pub declared_only: bool,
    /// The largest response body read for either. Default 1MiB; a larger one follows the
    /// route's `response_filter.on_unfilterable` when `declared_only` is on (502 by default),
    /// and is passed unvalidated otherwise.
    #[serde(default)]
    pub max_bytes: Option<RawSize>,
}

/// A route's `openapi:` key: the route becomes one route per operation of the document,
/// under the route's `match.prefix`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawOpenApi {
    /// The OpenAPI 3.0 or 3.1 document (YAML or JSON), relative to the configuration file.
    pub spec: String,
    /// `block` (default) or `detect`.
    #[serde(default)]
    pub mode: Mode,
    /// Body fields the schema does not declare: `reject` (default) or `strip`.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// Query parameters the operation does not declare: `reject` (default) or `allow`.
    #[serde(default)]
    pub unknown_query: UnknownQuery,
    /// Request bodies read neither as JSON nor as forms under a declared schema with fields
    /// (multipart, XML): `refuse` (default, 415) or `pass` (forwarded unchecked).
    #[serde(default)]
    pub unchecked_bodies: UncheckedBodies,
    /// Parse-time limits of JSON bodies.
    #[serde(default)]
    pub limits: RawJsonLimits,
    /// How many violations a 400 lists at most. Default 10 (1..=100).
    #[serde(default)]
    pub max_violations: Option<usize>,
    #[serde(default)]
    pub responses: RawResponses,
    /// The document's `security` requirements: `enforce` (default) or `ignore`.
    #[serde(default)]
    pub security: SecurityPolicy,
}

// ---------------------------------------------------------------------------------------------
// Compiled

/// Settings shared by every operation of one route group.
#[derive(Debug)]
pub struct Settings {
    pub mode: Mode,
    pub security: SecurityPolicy,
    pub unknown_fields: UnknownFields,
    pub unknown_query: UnknownQuery,
    pub unchecked_bodies: UncheckedBodies,
    pub limits: JsonLimits,
    pub max_violations: usize,
    pub validate_responses: bool,
    pub declared_only: bool,
    pub response_max_bytes: u64,
}

/// What a media type's schema says of a body the gateway does not read as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaKind {
    /// No schema, or one that constrains nothing (`{}`, `true`, annotations only).
    Absent,
    /// A string (`type: string`, e.g. `format: binary`): the body is one opaque value.
    Opaque,
    /// Anything else (objects, arrays, combinators): fields the gateway cannot see in a body
    /// it does not parse.
    Structured,
}

/// One media type of a body or response, compiled.
pub struct Media {
    pub def: MediaDef,
    /// Set for JSON-like (and wildcard) media with a schema, and for a request body's form
    /// type with a structured one ([`Media::reads_form`]).
    pub validator: Option<jsonschema::Validator>,
    pub fields: Option<FieldTree>,
    pub schema_kind: SchemaKind,
}

impl Media {
    /// The fields of a request body of this type read as a form: the request body's
    /// `application/x-www-form-urlencoded` range (concrete: a wildcard's schema applies to JSON
    /// only) under a structured schema. A form under no schema or a string one passes unread,
    /// as any other type does.
    pub fn reads_form(&self) -> Option<&crate::model::FormDef> {
        self.def
            .form
            .as_ref()
            .filter(|_| self.schema_kind == SchemaKind::Structured)
    }

    /// Whether keep-only-declared lets a body of this media type that is not read as JSON
    /// pass: only under a concrete non-JSON type whose schema is absent or a string, or under
    /// any non-JSON range whose schema is explicitly a string. A wildcard without one, a
    /// JSON-like range, or a structured schema withholds it.
    pub fn passes_unread(&self) -> bool {
        let range = &self.def.range;
        if is_json_media(range) {
            return false;
        }
        match self.schema_kind {
            SchemaKind::Opaque => true,
            SchemaKind::Absent => !range.contains('*'),
            SchemaKind::Structured => false,
        }
    }
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("range", &self.def.range)
            .field("validated", &self.validator.is_some())
            .finish()
    }
}

/// One declared response, compiled.
#[derive(Debug)]
pub struct Response {
    pub def: ResponseDef,
    pub media: Vec<Media>,
}

/// One operation, ready to check requests: what the contract step of a route holds.
pub struct Operation {
    pub def: OperationDef,
    /// `operationId` or `METHOD /path`, shared with audit reports.
    pub id: Arc<str>,
    pub settings: Arc<Settings>,
    /// One per entry of `def.parameters`.
    pub params: Vec<Option<jsonschema::Validator>>,
    /// One per entry of `def.parameters`: the field tree of an object or JSON (`content`)
    /// parameter's schema, walked as a body's is (undeclared and read-only properties).
    pub param_fields: Vec<Option<FieldTree>>,
    /// One per entry of `def.parameters`: `query:limit`, `path:id` … (violation locations).
    pub locations: Vec<String>,
    pub body: Vec<Media>,
    pub responses: Vec<Response>,
    /// How many `/`-separated segments the operation's path template has (its parameters are
    /// the last segments of the request path).
    pub segments: usize,
    /// Each path parameter of the template and the index of its segment.
    pub path_params: Vec<(String, usize)>,
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operation").field("id", &self.id).finish()
    }
}

/// A compiled document: every operation, in document order.
#[derive(Debug)]
pub struct Contract {
    pub document: Document,
    pub operations: Vec<Arc<Operation>>,
}

/// The largest response body read for the contract (as for `response_filter.max_bytes`).
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

const REQUEST_BASE: &str = "urn:portcullis:openapi:request";
const RESPONSE_BASE: &str = "urn:portcullis:openapi:response";

/// Loads and compiles a route's `openapi:` key. Every problem is pushed to `e` at `path`
/// (document problems carry the file and JSON pointer in the message).
pub fn compile(
    raw: &RawOpenApi,
    base_dir: &Path,
    path: &str,
    e: &mut ConfigErrors,
) -> Option<Contract> {
    let settings = Arc::new(compile_settings(raw, path, e));
    let file = portcullis_core::resolve_path(base_dir, &raw.spec);
    let document = match crate::openapi::load(&file) {
        Ok(d) => d,
        Err(errors) => {
            for err in errors {
                e.push(format!("{path}.spec"), err.to_string());
            }
            return None;
        }
    };
    let mut failed = false;
    let root = document.request_root.clone();
    let mut problem = |at: &str, what: String| {
        failed = true;
        e.push(
            format!("{path}.spec"),
            format!("{}: {what}", crate::openapi::locate(&root, &raw.spec, at)),
        );
    };
    let mut operations = Vec::with_capacity(document.operations.len());
    for def in &document.operations {
        let params = def
            .parameters
            .iter()
            .map(|p| {
                p.schema.as_deref().and_then(|ptr| {
                    crate::schema::compile(&document.request_root, REQUEST_BASE, ptr)
                        .map_err(|m| problem(ptr, m))
                        .ok()
                })
            })
            .collect();
        let param_fields = def
            .parameters
            .iter()
            .map(|p| match (&p.shape, p.schema.as_deref()) {
                (Shape::Object(_) | Shape::Json, Some(ptr)) => {
                    FieldTree::compile(&document.request_root, ptr, Direction::Request)
                        .map_err(|m| problem(ptr, m))
                        .ok()
                }
                _ => None,
            })
            .collect();
        let body = def
            .body
            .as_ref()
            .map(|b| {
                b.media
                    .iter()
                    .map(|m| {
                        let media = compile_media(&document, m, Direction::Request, &mut problem);
                        if let Some(form) = media.reads_form() {
                            warn_form(&raw.spec, &def.id, form);
                        } else if media.schema_kind == SchemaKind::Structured
                            && !is_json_media(&m.range)
                            && !m.range.contains('*')
                            && settings.unchecked_bodies == UncheckedBodies::Refuse
                        {
                            tracing::warn!(
                                spec = %raw.spec,
                                operation = %def.id,
                                media = %m.range,
                                "request bodies of this type cannot be checked against their \
                                 schema: refused in block mode (openapi.unchecked_bodies: pass \
                                 forwards them unchecked)"
                            );
                        }
                        media
                    })
                    .collect()
            })
            .unwrap_or_default();
        let responses = def
            .responses
            .iter()
            .map(|r| Response {
                def: r.clone(),
                media: r
                    .media
                    .iter()
                    .map(|m| {
                        let media = compile_media(&document, m, Direction::Response, &mut problem);
                        if settings.declared_only
                            && !media.passes_unread()
                            && !is_json_media(&m.range)
                        {
                            tracing::warn!(
                                spec = %raw.spec,
                                operation = %def.id,
                                status = %r.status,
                                media = %m.range,
                                "responses of this type cannot be filtered to their declared \
                                 fields: withheld under declared_only"
                            );
                        }
                        media
                    })
                    .collect(),
            })
            .collect();
        let segments = def.path.split('/').skip(1).count();
        let path_params = def
            .path
            .split('/')
            .skip(1)
            .enumerate()
            .filter_map(|(i, seg)| {
                let name = seg.strip_prefix('{')?.strip_suffix('}')?;
                Some((name.to_string(), i))
            })
            .collect();
        let locations = def
            .parameters
            .iter()
            .map(|p| match p.location {
                // Header names are case-insensitive: located as the parameter reader does.
                In::Header => format!("header:{}", p.name.to_ascii_lowercase()),
                _ => format!("{}:{}", p.location.as_str(), p.name),
            })
            .collect();
        operations.push(Arc::new(Operation {
            id: Arc::from(def.id.as_str()),
            def: def.clone(),
            settings: settings.clone(),
            params,
            param_fields,
            locations,
            body,
            responses,
            segments,
            path_params,
        }));
    }
    if failed {
        return None;
    }
    Some(Contract {
        document,
        operations,
    })
}

fn compile_media(
    doc: &Document,
    m: &MediaDef,
    direction: Direction,
    problem: &mut impl FnMut(&str, String),
) -> Media {
    let (root, base) = match direction {
        Direction::Request => (&doc.request_root, REQUEST_BASE),
        Direction::Response => (&doc.response_root, RESPONSE_BASE),
    };
    let schema_kind = m
        .schema
        .as_deref()
        .map_or(SchemaKind::Absent, |ptr| schema_kind(root, ptr));
    // A form is read into a JSON object that the media type's schema checks as a JSON body's.
    let form = direction == Direction::Request
        && m.form.is_some()
        && schema_kind == SchemaKind::Structured;
    let (validator, fields) = match m.schema.as_deref() {
        Some(ptr) if is_json_media(&m.range) || m.range.ends_with("/*") || form => {
            let v = crate::schema::compile(root, base, ptr)
                .map_err(|msg| problem(ptr, msg))
                .ok();
            let f = FieldTree::compile(root, ptr, direction)
                .map_err(|msg| problem(ptr, msg))
                .ok();
            (v, f)
        }
        _ => (None, None),
    };
    Media {
        def: m.clone(),
        validator,
        fields,
        schema_kind,
    }
}

/// Warns of what a form body's declaration asks that the form reader does not do: an object
/// field without `style: deepObject` (refused when sent), a `contentType` (not applied), an
/// Encoding Object naming no property (ignored).
fn warn_form(spec: &str, operation: &str, form: &crate::model::FormDef) {
    for f in &form.fields {
        if matches!(f.shape, Shape::Object(_)) && f.style != crate::model::Style::DeepObject {
            tracing::warn!(
                spec = %spec,
                operation = %operation,
                field = %f.name,
                "this form field is an object without style: deepObject in its encoding: a form \
                 that sends it is refused (declare encoding.{}.style: deepObject to accept \
                 name[property]=value)",
                f.name
            );
        }
        if let Some(t) = &f.content_type {
            tracing::warn!(
                spec = %spec,
                operation = %operation,
                field = %f.name,
                content_type = %t,
                "the contentType of this form field's encoding is not applied: its value is \
                 read as text"
            );
        }
    }
    for name in &form.unmatched_encodings {
        tracing::warn!(
            spec = %spec,
            operation = %operation,
            field = %name,
            "this form encoding names no property of the schema: ignored"
        );
    }
}

/// Keywords that do not constrain a value.
const ANNOTATIONS: [&str; 12] = [
    "title",
    "description",
    "example",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "externalDocs",
    "xml",
    "$comment",
    "$schema",
];

/// What the schema at `pointer` (after `$ref`s) says of a body read as bytes.
fn schema_kind(root: &serde_json::Value, pointer: &str) -> SchemaKind {
    use serde_json::Value;
    let mut at = pointer.to_owned();
    // Reference chains are bounded at load; a loop here is only guarded against.
    for _ in 0..64 {
        let Some(Value::Object(o)) = root.pointer(&at) else {
            return match root.pointer(&at) {
                Some(Value::Bool(true)) => SchemaKind::Absent,
                _ => SchemaKind::Structured,
            };
        };
        if let Some(r) = o.get("$ref") {
            match r.as_str().and_then(crate::openapi::local_target) {
                Some(target) => {
                    at = target;
                    continue;
                }
                None => return SchemaKind::Structured,
            }
        }
        let string = |t: &Value| t.as_str() == Some("string");
        return match o.get("type") {
            Some(t) if string(t) => SchemaKind::Opaque,
            Some(Value::Array(ts))
                if ts.iter().any(string)
                    && ts.iter().all(|t| string(t) || t.as_str() == Some("null")) =>
            {
                SchemaKind::Opaque
            }
            Some(_) => SchemaKind::Structured,
            None if o
                .keys()
                .all(|k| ANNOTATIONS.contains(&k.as_str()) || k.starts_with("x-")) =>
            {
                SchemaKind::Absent
            }
            None => SchemaKind::Structured,
        };
    }
    SchemaKind::Structured
}

fn compile_settings(raw: &RawOpenApi, path: &str, e: &mut ConfigErrors) -> Settings {
    let d = JsonLimits::default();
    let l = &raw.limits;
    let lp = format!("{path}.limits");
    let max_depth = l.max_depth.unwrap_or(d.max_depth);
    if !(1..=crate::json::MAX_DEPTH_CAP).contains(&max_depth) {
        e.push(
            format!("{lp}.max_depth"),
            format!("must be 1..={}", crate::json::MAX_DEPTH_CAP),
        );
    }
    let positive = |v: Option<usize>, default: usize, key: &str, e: &mut ConfigErrors| {
        let v = v.unwrap_or(default);
        if v == 0 {
            e.push(format!("{lp}.{key}"), "must be at least 1");
        }
        v
    };
    let max_object_keys = positive(l.max_object_keys, d.max_object_keys, "max_object_keys", e);
    let max_total_values = positive(
        l.max_total_values,
        d.max_total_values,
        "max_total_values",
        e,
    );
    let max_array_items = positive(l.max_array_items, d.max_array_items, "max_array_items", e);
    let max_string_bytes = l
        .max_string_bytes
        .as_ref()
        .map(|s| s.compile(&format!("{lp}.max_string_bytes"), e))
        .map_or(d.max_string_bytes, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        });
    if max_string_bytes == 0 {
        e.push(format!("{lp}.max_string_bytes"), "must be at least 1 byte");
    }
    let max_number_magnitude = l.max_number_magnitude.unwrap_or(d.max_number_magnitude);
    if !(max_number_magnitude.is_finite() && max_number_magnitude > 0.0) {
        e.push(
            format!("{lp}.max_number_magnitude"),
            "must be a positive finite number",
        );
    }
    let max_violations = raw.max_violations.unwrap_or(10);
    if !(1..=100).contains(&max_violations) {
        e.push(format!("{path}.max_violations"), "must be 1..=100");
    }
    let response_max_bytes = raw.responses.max_bytes.as_ref().map_or(1 << 20, |s| {
        let n = s.compile(&format!("{path}.responses.max_bytes"), e);
        if !(1..=MAX_RESPONSE_BYTES).contains(&n) {
            e.push(format!("{path}.responses.max_bytes"), "must be 1B..=64MiB");
        }
        n
    });
    Settings {
        mode: raw.mode,
        security: raw.security,
        unknown_fields: raw.unknown_fields,
        unknown_query: raw.unknown_query,
        unchecked_bodies: raw.unchecked_bodies,
        limits: JsonLimits {
            max_depth: max_depth.min(crate::json::MAX_DEPTH_CAP),
            max_object_keys,
            max_total_values,
            max_string_bytes,
            max_array_items,
            max_number_magnitude,
        },
        max_violations,
        validate_responses: raw.responses.validate == ResponseValidation::Detect,
        declared_only: raw.responses.declared_only,
        response_max_bytes,
    }
}
