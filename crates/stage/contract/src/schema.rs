//! Compiling the validators of a loaded document.
//!
//! A schema is never compiled on its own: the whole bundled document is registered as one
//! JSON Schema resource under a base URI (`urn:portcullis:openapi:request` or `…:response`) and
//! the validator is built for `{"$ref": "<base>#<pointer>"}`, so the `$ref`s inside the schema
//! (all local after bundling, see [`crate::openapi`]) resolve against the document.
//!
//! Validators are draft 2020-12, assert `format` (email, uuid, date-time, date, ipv4, ipv6,
//! uri …; formats the crate does not know, such as `int32` or `binary`, are annotations) and
//! compile `pattern` with the linear-time `regex` engine, since they run on hostile input.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use jsonschema::{Draft, PatternOptions, Registry, Validator};
use serde_json::{Value, json};

use crate::model::Document;
use crate::openapi::{LoadError, locate, pointer_fragment};

/// Base URI of [`Document::request_root`].
pub const REQUEST_BASE: &str = "urn:portcullis:openapi:request";
/// Base URI of [`Document::response_root`].
pub const RESPONSE_BASE: &str = "urn:portcullis:openapi:response";

/// Longest message taken from the schema crate: its messages quote the offending schema, which
/// can be a whole subtree.
const MAX_MESSAGE: usize = 300;

/// A document registered once, for compiling many of its schemas.
pub struct Compiler {
    registry: Registry<'static>,
    root: Arc<Value>,
    base: String,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler")
            .field("base", &self.base)
            .finish()
    }
}

impl Compiler {
    /// Registers `root` under `base` (an absolute URI without fragment).
    pub fn new(root: &Arc<Value>, base: &str) -> Result<Self, String> {
        let registry = Registry::new()
            .draft(Draft::Draft202012)
            .add(base, Arc::clone(root))
            .and_then(|b| b.prepare())
            .map_err(|e| format!("cannot register the document: {}", short(&e.to_string())))?;
        Ok(Compiler {
            registry,
            root: Arc::clone(root),
            base: base.to_owned(),
        })
    }

    /// The validator of the schema at `pointer` (a JSON pointer, RFC 6901 escaped).
    pub fn compile(&self, pointer: &str) -> Result<Validator, String> {
        if pointer.is_empty() || self.root.pointer(pointer).is_none() {
            return Err(format!("there is no schema at {pointer}"));
        }
        let wrapper = json!({ "$ref": format!("{}#{}", self.base, pointer_fragment(pointer)) });
        options()
            .with_registry(&self.registry)
            .build(&wrapper)
            .map_err(|e| {
                format!(
                    "the schema at {pointer} does not compile: {}",
                    short(&e.to_string())
                )
            })
    }
}

fn options<'r>() -> jsonschema::ValidationOptions<'r> {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .should_ignore_unknown_formats(true)
        .with_pattern_options(PatternOptions::regex())
}

thread_local! {
    // The last document registered by `compile`: the integrator compiles every schema of a
    // document in a row, and registering the document again for each would repeat the work.
    static LAST: RefCell<Option<(Weak<Value>, Arc<Compiler>)>> = const { RefCell::new(None) };
}

/// Builds the validator of the subschema at `pointer` of `root`, whose local `$ref`s resolve
/// against `root` registered under `base` ([`REQUEST_BASE`] or [`RESPONSE_BASE`]). The error
/// names the pointer.
pub fn compile(root: &Arc<Value>, base: &str, pointer: &str) -> Result<Validator, String> {
    let cached = LAST.with(|last| {
        last.borrow().as_ref().and_then(|(weak, c)| {
            let same = weak.upgrade().is_some_and(|r| Arc::ptr_eq(&r, root)) && c.base == base;
            same.then(|| Arc::clone(c))
        })
    });
    let compiler = match cached {
        Some(c) => c,
        None => {
            let c = Arc::new(Compiler::new(root, base)?);
            LAST.with(|last| *last.borrow_mut() = Some((Arc::downgrade(root), Arc::clone(&c))));
            c
        }
    };
    compiler.compile(pointer)
}

/// Every validator of a document, by schema pointer.
#[derive(Default)]
pub struct Validators {
    request: HashMap<String, Arc<Validator>>,
    response: HashMap<String, Arc<Validator>>,
}

impl std::fmt::Debug for Validators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validators")
            .field("request", &self.request.len())
            .field("response", &self.response.len())
            .finish()
    }
}

impl Validators {
    /// The validator of a parameter or request body schema.
    pub fn request(&self, pointer: &str) -> Option<&Arc<Validator>> {
        self.request.get(pointer)
    }

    /// The validator of a response schema.
    pub fn response(&self, pointer: &str) -> Option<&Arc<Validator>> {
        self.response.get(pointer)
    }
}

/// Compiles every schema an operation names (parameters and bodies in the request view,
/// responses in the response view), each once. Failures are located `file#/pointer`.
pub fn compile_all(doc: &Document) -> Result<Validators, Vec<LoadError>> {
    let mut errors = Vec::new();
    let mut out = Validators::default();
    let request = Compiler::new(&doc.request_root, REQUEST_BASE);
    let response = Compiler::new(&doc.response_root, RESPONSE_BASE);
    let (request, response) = match (request, response) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(m), _) | (_, Err(m)) => {
            return Err(vec![LoadError {
                location: doc.source.clone(),
                message: m,
            }]);
        }
    };
    // Each pointer once, whether it compiled or not.
    let mut seen_request = HashSet::new();
    let mut seen_response = HashSet::new();
    for op in &doc.operations {
        let params = op.parameters.iter().filter_map(|p| p.schema.as_ref());
        let bodies = op
            .body
            .iter()
            .flat_map(|b| b.media.iter().filter_map(|m| m.schema.as_ref()));
        for ptr in params.chain(bodies) {
            if seen_request.insert(ptr.as_str()) {
                match request.compile(ptr) {
                    Ok(v) => {
                        out.request.insert(ptr.clone(), Arc::new(v));
                    }
                    Err(m) => errors.push(located(doc, ptr, m)),
                }
            }
        }
        let responses = op
            .responses
            .iter()
            .flat_map(|r| r.media.iter().filter_map(|m| m.schema.as_ref()));
        for ptr in responses {
            if seen_response.insert(ptr.as_str()) {
                match response.compile(ptr) {
                    Ok(v) => {
                        out.response.insert(ptr.clone(), Arc::new(v));
                    }
                    Err(m) => errors.push(located(doc, ptr, m)),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn located(doc: &Document, pointer: &str, message: String) -> LoadError {
    LoadError {
        location: locate(&doc.request_root, &doc.source, pointer),
        message,
    }
}

/// Checks the schema at `pointer` of `root` against the draft 2020-12 meta-schema: each problem
/// as (pointer of the offending value, message).
pub(crate) fn meta_problems(root: &Value, pointer: &str) -> Vec<(String, String)> {
    let Some(schema) = root.pointer(pointer) else {
        return vec![(pointer.to_owned(), "there is no schema here".to_owned())];
    };
    let meta = jsonschema::draft202012::meta::validator();
    meta.iter_errors(schema)
        .take(20)
        .map(|e| {
            (
                format!("{pointer}{}", e.instance_path().as_str()),
                meta_message(&e),
            )
        })
        .collect()
}

/// What a meta-schema error says, without quoting the offending value: it is document text,
/// possibly of a file a `$ref` pulled in that is no schema at all.
fn meta_message(e: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    // Kinds whose masked message names only the meta-schema's own terms (types, limits,
    // property names it requires); the others may list the value's keys.
    let masked = matches!(
        e.kind(),
        K::Type { .. }
            | K::Enum { .. }
            | K::Constant { .. }
            | K::Minimum { .. }
            | K::Maximum { .. }
            | K::ExclusiveMinimum { .. }
            | K::ExclusiveMaximum { .. }
            | K::MinLength { .. }
            | K::MaxLength { .. }
            | K::MinItems { .. }
            | K::MaxItems { .. }
            | K::MinProperties { .. }
            | K::MaxProperties { .. }
            | K::UniqueItems
            | K::Format { .. }
            | K::Required { .. }
            | K::AnyOf { .. }
            | K::OneOfNotValid { .. }
            | K::OneOfMultipleValid { .. }
            | K::FalseSchema
    );
    if masked {
        format!(
            "is not a valid schema: {}",
            short(&e.masked_with("the value").to_string())
        )
    } else {
        format!(
            "is not a valid schema: the meta-schema's `{}` rule rejects it",
            e.kind().keyword()
        )
    }
}

/// Whether a `pattern` (ECMA-262 syntax, as JSON Schema has it) compiles with the engine the
/// validators use.
pub(crate) fn pattern_problem(pattern: &str) -> Option<String> {
    match options().build(&json!({ "pattern": pattern })) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "is not a supported regular expression: {}",
            short(&e.to_string())
        )),
    }
}

fn short(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        BodyDef, In, MediaDef, OperationDef, ParamDef, ResponseDef, Shape, Style, Version,
    };

    fn root() -> Arc<Value> {
        Arc::new(json!({
            "components": {"schemas": {
                "Id": {"type": "string", "format": "uuid"},
                "Item": {"type": "object", "required": ["id"],
                         "properties": {"id": {"$ref": "#/components/schemas/Id"}}},
                "Formats": {"type": "object", "properties": {
                    "email": {"format": "email"}, "date": {"format": "date"},
                    "when": {"format": "date-time"}, "v4": {"format": "ipv4"},
                    "v6": {"format": "ipv6"}, "uri": {"format": "uri"},
                    "i32": {"format": "int32"}, "byte": {"format": "byte"},
                    "bin": {"format": "binary"}, "pw": {"format": "password"}
                }},
                "Bad": {"type": 7},
                "Pattern": {"type": "string", "pattern": "[a-"},
                "Ahead": {"type": "string", "pattern": "(?=a)b"},
                "Dangling": {"$ref": "#/components/schemas/Nope"},
                "Leak": "s3cr3t",
                "LeakKeys": {"$id": "s3cr3t", "type": ["s3cr3t"], "minimum": "s3cr3t",
                             "properties": {"a": "s3cr3t"}, "$defs": [{"s3cr3t": 1}]}
            }},
            "paths": {"/a/{id}": {"get": {"x": {"type": "integer"}}}}
        }))
    }

    #[test]
    fn local_references_resolve_against_the_document() {
        let root = root();
        let v = compile(&root, REQUEST_BASE, "/components/schemas/Item").unwrap();
        assert!(v.is_valid(&json!({"id": "6f1c2a4e-7c1b-4f7e-9d55-0b6f1d2a3c4e"})));
        assert!(!v.is_valid(&json!({"id": "nope"})));
        assert!(!v.is_valid(&json!({})));
        // Pointers with characters a URI fragment cannot hold.
        let v = compile(&root, RESPONSE_BASE, "/paths/~1a~1{id}/get/x").unwrap();
        assert!(v.is_valid(&json!(3)));
        assert!(!v.is_valid(&json!("3")));
    }

    #[test]
    fn the_cache_follows_the_root() {
        let a = Arc::new(json!({"s": {"type": "string"}}));
        let b = Arc::new(json!({"s": {"type": "integer"}}));
        assert!(
            compile(&a, REQUEST_BASE, "/s")
                .unwrap()
                .is_valid(&json!("x"))
        );
        assert!(compile(&b, REQUEST_BASE, "/s").unwrap().is_valid(&json!(1)));
        assert!(
            compile(&a, REQUEST_BASE, "/s")
                .unwrap()
                .is_valid(&json!("x"))
        );
        let c = Compiler::new(&b, RESPONSE_BASE).unwrap();
        assert!(!c.compile("/s").unwrap().is_valid(&json!("x")));
        assert_eq!(
            format!("{c:?}"),
            "Compiler { base: \"urn:portcullis:openapi:response\" }"
        );
    }

    #[test]
    fn formats_are_asserted_and_unknown_ones_ignored() {
        let v = compile(&root(), REQUEST_BASE, "/components/schemas/Formats").unwrap();
        let ok = json!({"email": "a@b.org", "date": "2024-02-29", "when": "2024-02-29T10:00:00+01:00",
            "v4": "10.0.0.1", "v6": "::1", "uri": "https://x.org/a", "i32": "anything",
            "byte": "!!", "bin": "\u{0}", "pw": ""});
        assert!(v.is_valid(&ok));
        for (k, bad) in [
            ("email", "a.b.org"),
            ("date", "2023-02-29"),
            ("when", "2024-02-29"),
            ("v4", "10.0.0.256"),
            ("v6", "::g"),
            ("uri", "no scheme"),
        ] {
            assert!(!v.is_valid(&json!({ k: bad })), "{k}");
        }
    }

    #[test]
    fn compile_errors_name_the_pointer() {
        let root = root();
        let err = |p: &str| compile(&root, REQUEST_BASE, p).unwrap_err();
        assert_eq!(
            err("/components/schemas/Missing"),
            "there is no schema at /components/schemas/Missing"
        );
        assert_eq!(err(""), "there is no schema at ");
        assert!(
            err("/components/schemas/Bad")
                .starts_with("the schema at /components/schemas/Bad does not compile: ")
        );
        assert!(
            err("/components/schemas/Pattern")
                .starts_with("the schema at /components/schemas/Pattern does not compile: ")
        );
        assert!(
            err("/components/schemas/Ahead").contains("does not compile"),
            "lookaround is refused"
        );
        assert!(err("/components/schemas/Dangling").contains("does not compile"));
    }

    #[test]
    fn meta_and_pattern_checks() {
        let root = root();
        let problems = meta_problems(&root, "/components/schemas/Bad");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "/components/schemas/Bad/type");
        assert_eq!(
            problems[0].1,
            "is not a valid schema: the value is not valid under any of the schemas listed in \
             the 'anyOf' keyword"
        );
        // The offending value is never quoted (it may be a file that is no schema at all).
        for at in ["/components/schemas/Leak", "/components/schemas/LeakKeys"] {
            let problems = meta_problems(&root, at);
            assert!(!problems.is_empty(), "{at}");
            for (_, m) in problems {
                assert!(m.starts_with("is not a valid schema: "), "{m}");
                assert!(!m.contains("s3cr3t"), "{m}");
            }
        }
        assert!(meta_problems(&root, "/components/schemas/Item").is_empty());
        assert_eq!(
            meta_problems(&root, "/nope"),
            [("/nope".to_owned(), "there is no schema here".to_owned())]
        );
        assert!(pattern_problem("^[a-z]+$").is_none());
        assert!(pattern_problem("\\d{2}").is_none());
        assert!(pattern_problem("[a-").is_some());
        assert!(pattern_problem("(?=a)").is_some());
        assert_eq!(short(&"é".repeat(200)).chars().count(), MAX_MESSAGE / 2 + 1);
    }

    fn doc(root: Value) -> Document {
        let param = |schema: &str| ParamDef {
            name: "p".into(),
            location: In::Query,
            required: false,
            style: Style::Form,
            explode: true,
            allow_empty_value: false,
            shape: Shape::Scalar(vec![]),
            schema: Some(schema.into()),
            pointer: String::new(),
        };
        let media = |schema: &str| MediaDef {
            range: "application/json".into(),
            schema: Some(schema.into()),
            form: None,
        };
        let root = Arc::new(root);
        Document {
            version: Version::V31,
            source: "a.yaml".into(),
            files: Vec::new(),
            request_root: Arc::clone(&root),
            response_root: root,
            operations: vec![OperationDef {
                id: "x".into(),
                method: http::Method::POST,
                path: "/x".into(),
                parameters: vec![param("/s/int"), param("/s/int")],
                body: Some(BodyDef {
                    required: true,
                    media: vec![media("/x-portcullis-files/1/S")],
                }),
                responses: vec![ResponseDef {
                    status: "200".into(),
                    media: vec![media("/s/int")],
                }],
                pointer: "/paths/~1x/post".into(),
                security: None,
            }],
        }
    }

    #[test]
    fn compile_all_compiles_each_schema_once_and_locates_failures() {
        let good = doc(json!({
            "x-portcullis-sources": ["a.yaml", "b.yaml"],
            "x-portcullis-files": {"1": {"S": {"type": "string"}}},
            "s": {"int": {"type": "integer"}}
        }));
        let validators = compile_all(&good).unwrap();
        assert!(validators.request("/s/int").unwrap().is_valid(&json!(1)));
        assert!(
            validators
                .request("/x-portcullis-files/1/S")
                .unwrap()
                .is_valid(&json!("s"))
        );
        assert!(validators.response("/s/int").unwrap().is_valid(&json!(1)));
        assert!(validators.response("/x-portcullis-files/1/S").is_none());
        assert_eq!(
            format!("{validators:?}"),
            "Validators { request: 2, response: 1 }"
        );

        let bad = doc(json!({
            "x-portcullis-sources": ["a.yaml", "b.yaml"],
            "x-portcullis-files": {"1": {"S": {"type": 7}}},
            "s": {}
        }));
        let errors = compile_all(&bad).unwrap_err();
        let locations: Vec<&str> = errors.iter().map(|e| e.location.as_str()).collect();
        assert_eq!(locations, ["a.yaml#/s/int", "b.yaml#/S", "a.yaml#/s/int"]);
        assert!(
            errors[1]
                .message
                .starts_with("the schema at /x-portcullis-files/1/S does not compile")
        );
        assert_eq!(errors[0].message, "there is no schema at /s/int");
    }
}
