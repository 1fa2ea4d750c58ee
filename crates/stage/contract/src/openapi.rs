//! Loading an OpenAPI 3.0/3.1 document: read (YAML or JSON), bundle (every file a `$ref`
//! names, pulled into one value), convert (3.0 schemas to JSON Schema 2020-12) and read the
//! operations into [`crate::model`].
//!
//! Errors are located `file#/json/pointer`: the file as the operator named it (others relative
//! to it, `specs/common.yaml`) and an RFC 6901 pointer into that file, e.g.
//! `shop.yaml#/paths/~1orders/post/requestBody`. A reference that cannot be followed is
//! reported at the Reference Object (the object holding the `$ref`).
//!
//! ## The bundle
//!
//! The main document is the root; every other file is placed whole under
//! `/x-portcullis-files/<n>` (n ≥ 1) and `/x-portcullis-sources/<n>` names it (`/0` is the
//! main file), so [`locate`] can turn any pointer of the bundle back into `file#/pointer`.
//! Every `$ref` of the bundle is local (`#/x-portcullis-files/3/components/schemas/Money`).
//!
//! ## Conversion
//!
//! Schema Objects are found by walking from the places schemas sit (`components/schemas`,
//! parameter, header and media type `schema`s) through the schema keywords and `$ref`s. For
//! 3.0 documents each is rewritten in place: `nullable` becomes a `"null"` type (or an
//! `anyOf` with `{"type": "null"}` where there is no `type` to extend), boolean
//! `exclusiveMinimum`/`exclusiveMaximum` become the numeric form, and a `$ref` loses its
//! siblings (the 3.0 rule) except `readOnly` and `writeOnly`, which are kept beside it (the
//! `required` lists already honour them there, so the validators and the field trees do too).
//! In both versions `format: int32`/`int64` add the range as
//! `minimum`/`maximum` unless the schema sets tighter bounds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::{Map, Value};
use serde_yaml_ng::Value as Yaml;

use crate::model::{
    BodyDef, Document, FORM, FormDef, FormField, In, MediaDef, OperationDef, ParamDef, ResponseDef,
    ScalarType, SchemeKind, SchemeUse, Shape, Style, Version,
};

/// Largest document file read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most files one document may span (the main file included).
pub const MAX_FILES: usize = 64;
/// Longest chain of Reference Objects followed (also the budget of a parameter's shape).
const MAX_HOPS: usize = 32;
/// Where the other files of the bundle are placed, and where their names are kept.
const FILES_KEY: &str = "x-portcullis-files";
const SOURCES_KEY: &str = "x-portcullis-sources";

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A problem with the document, located `file#/pointer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub location: String,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl std::error::Error for LoadError {}

/// Escapes one JSON pointer token (RFC 6901: `~` → `~0`, `/` → `~1`).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// What a JSON pointer must have percent-encoded to be a URI fragment (`$ref: "#…"`).
const FRAGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// A JSON pointer as a URI fragment (without the `#`).
pub fn pointer_fragment(pointer: &str) -> String {
    utf8_percent_encode(pointer, FRAGMENT).to_string()
}

/// `file#/pointer` for a pointer of a bundled root (either view) loaded from `source`.
pub fn locate(root: &Value, source: &str, pointer: &str) -> String {
    let sources: Vec<String> = root
        .get(SOURCES_KEY)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or(source).to_owned())
                .collect()
        })
        .unwrap_or_else(|| vec![source.to_owned()]);
    locate_in(&sources, pointer)
}

fn locate_in(sources: &[String], pointer: &str) -> String {
    let (file, inner) = split_bundle_pointer(pointer);
    let name = sources.get(file).map_or("?", String::as_str);
    format!("{name}#{inner}")
}

/// Which file of the bundle a pointer is in, and the pointer inside that file.
fn split_bundle_pointer(pointer: &str) -> (usize, &str) {
    let rest = pointer
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(FILES_KEY))
        .and_then(|p| p.strip_prefix('/'));
    if let Some(rest) = rest {
        let (n, inner) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Ok(n) = n.parse::<usize>() {
            return (n, inner);
        }
    }
    (0, pointer)
}

/// The files the document at `path` names, transitively, as far as they read — those that are
/// missing or do not parse included (the reload watcher's: after a reload refused for such a
/// file, creating or fixing it reloads). Best effort, never an error.
pub fn files_named(path: &Path) -> Vec<PathBuf> {
    let mut bundler = Bundler::new(path.to_path_buf(), normalize(path));
    bundler.run();
    bundler.named
}

/// Loads, bundles, converts and reads the document at `path`; every problem found, located.
pub fn load(path: &Path) -> Result<Document, Vec<LoadError>> {
    let display = normalize(path);
    let mut bundler = Bundler::new(path.to_path_buf(), display.clone());
    bundler.run();
    if !bundler.errors.is_empty() {
        return Err(bundler.errors);
    }
    let sources: Vec<String> = bundler.files.iter().map(|f| f.display.clone()).collect();
    let files: Vec<PathBuf> = bundler.files.iter().map(|f| f.actual.clone()).collect();
    let ordered: Vec<Yaml> = bundler
        .files
        .iter_mut()
        .map(|f| std::mem::take(&mut f.ordered))
        .collect();
    let mut raw = bundler.into_bundle()?;
    if let Value::Object(o) = &mut raw {
        o.insert(
            SOURCES_KEY.to_owned(),
            Value::Array(sources.iter().cloned().map(Value::String).collect()),
        );
    }

    let version = read_version(&raw, &display)?;
    let mut reader = Reader {
        doc: &raw,
        version,
        sources: &sources,
        ordered: &ordered,
        errors: Vec::new(),
        schema_roots: Vec::new(),
        schemes: HashMap::new(),
    };
    let operations = reader.operations();
    if let Some(schemas) = raw
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    {
        for name in schemas.keys() {
            reader
                .schema_roots
                .push(format!("/components/schemas/{}", escape(name)));
        }
    }
    let Reader {
        mut errors,
        schema_roots,
        ..
    } = reader;

    let schemas = expand(&raw, schema_roots);
    let mut request = raw.clone();
    strip_required(&mut request, &raw, &schemas, "readOnly");
    let mut response = raw.clone();
    strip_required(&mut response, &raw, &schemas, "writeOnly");
    drop(raw);
    convert(&mut request, &schemas, version);
    convert(&mut response, &schemas, version);
    check_schemas(&request, &schemas, &sources, &mut errors);

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Document {
        version,
        source: display,
        files,
        request_root: Arc::new(request),
        response_root: Arc::new(response),
        operations,
    })
}

fn read_version(doc: &Value, display: &str) -> Result<Version, Vec<LoadError>> {
    let at = format!("{display}#/openapi");
    let fail = |message: &str| {
        Err(vec![LoadError {
            location: at.clone(),
            message: message.to_owned(),
        }])
    };
    let patch_ok = |rest: &str| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    match doc.get("openapi") {
        Some(Value::String(v)) => match v.strip_prefix("3.0.") {
            Some(rest) if patch_ok(rest) => Ok(Version::V30),
            _ => match v.strip_prefix("3.1.") {
                Some(rest) if patch_ok(rest) => Ok(Version::V31),
                _ => fail("must be 3.0.x or 3.1.x"),
            },
        },
        Some(_) => fail("must be a string such as \"3.1.0\" (quote it in YAML)"),
        None if doc.get("swagger").is_some() => {
            fail("is missing: Swagger 2.0 documents are not supported, convert to OpenAPI 3")
        }
        None => fail("is required (3.0.x or 3.1.x)"),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading files

/// A path with `.` removed and `a/..` folded, `/`-separated: how files are named in errors.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut absolute = false;
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => absolute = true,
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.last().is_some_and(|p| p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..".to_owned());
                }
            }
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// A file's content as JSON, and as the ordered YAML tree (the JSON map is sorted; operations
/// are read in document order from this one).
fn read_file(actual: &Path, display: &str) -> Result<(Value, Yaml), Vec<LoadError>> {
    let fail = |message: String| {
        vec![LoadError {
            location: display.to_owned(),
            message,
        }]
    };
    let file = std::fs::File::open(actual).map_err(|e| fail(format!("cannot be read: {e}")))?;
    let too_big = || {
        fail(format!(
            "is larger than {} MiB",
            MAX_FILE_BYTES / 1024 / 1024
        ))
    };
    if file.metadata().is_ok_and(|m| m.len() > MAX_FILE_BYTES) {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot be read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    let is_json = actual
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let mut yaml: Yaml = if is_json {
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("is not valid JSON: {e}")))?
    } else {
        serde_yaml_ng::from_slice(&bytes).map_err(|e| fail(format!("is not valid YAML: {e}")))?
    };
    yaml.apply_merge()
        .map_err(|e| fail(format!("has an invalid YAML merge key: {e}")))?;
    let mut errors = Vec::new();
    let mut at = String::new();
    let json = yaml_to_json(&yaml, &mut at, display, &mut errors);
    if errors.is_empty() {
        Ok((json, yaml))
    } else {
        Err(errors)
    }
}

/// The JSON value of a YAML tree. Keys must be strings; integer keys (`200:` for a response
/// status, which YAML reads as a number) are taken as their decimal text.
fn yaml_to_json(y: &Yaml, at: &mut String, display: &str, errors: &mut Vec<LoadError>) -> Value {
    let fail = |errors: &mut Vec<LoadError>, at: &str, message: &str| {
        errors.push(LoadError {
            location: format!("{display}#{at}"),
            message: message.to_owned(),
        });
        Value::Null
    };
    match y {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                match n.as_f64().and_then(serde_json::Number::from_f64) {
                    Some(f) => Value::Number(f),
                    None => fail(errors, at, "must be a finite number"),
                }
            }
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                out.push(yaml_to_json(item, at, display, errors));
                at.truncate(len);
            }
            Value::Array(out)
        }
        Yaml::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let Some(key) = yaml_key(k) else {
                    fail(errors, at, "has a key that is not a string");
                    continue;
                };
                let len = at.len();
                at.push('/');
                at.push_str(&escape(&key));
                if out.contains_key(&key) {
                    errors.push(LoadError {
                        location: format!("{display}#{at}"),
                        message: "is a duplicate key".to_owned(),
                    });
                } else {
                    let value = yaml_to_json(v, at, display, errors);
                    out.insert(key, value);
                }
                at.truncate(len);
            }
            Value::Object(out)
        }
        Yaml::Tagged(_) => fail(errors, at, "is a tagged YAML value, which is not supported"),
    }
}

fn yaml_key(k: &Yaml) -> Option<String> {
    match k {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Bundling

struct FileEntry {
    /// Path to open: the referencing file's directory joined with the reference.
    actual: PathBuf,
    /// Name in errors.
    display: String,
    json: Value,
    ordered: Yaml,
}

/// A reference to check once every file is read: (location of the Reference Object, file,
/// pointer in that file).
struct RefCheck {
    at: String,
    file: usize,
    pointer: String,
}

struct Bundler {
    files: Vec<FileEntry>,
    /// Every file a reference named, in the main document's directory, whether it could be
    /// read or not ([`files_named`]).
    named: Vec<PathBuf>,
    /// The main document's directory, canonical: no file outside it is read (`None`: it
    /// cannot be resolved, and no other file is read).
    home: Option<PathBuf>,
    by_path: HashMap<PathBuf, usize>,
    checks: Vec<RefCheck>,
    errors: Vec<LoadError>,
}

impl Bundler {
    fn new(main: PathBuf, display: String) -> Self {
        let mut by_path = HashMap::new();
        if let Ok(canonical) = std::fs::canonicalize(&main) {
            by_path.insert(canonical, 0);
        }
        let home = match main.parent() {
            Some(d) if !d.as_os_str().is_empty() => std::fs::canonicalize(d).ok(),
            _ => std::fs::canonicalize(".").ok(),
        };
        Bundler {
            home,
            files: vec![FileEntry {
                actual: main,
                display,
                json: Value::Null,
                ordered: Yaml::Null,
            }],
            by_path,
            checks: Vec::new(),
            errors: Vec::new(),
            named: Vec::new(),
        }
    }

    /// Reads the main file and every file it names, transitively, rewriting references.
    fn run(&mut self) {
        let mut i = 0;
        while i < self.files.len() {
            let entry = &self.files[i];
            match read_file(&entry.actual, &entry.display) {
                Ok((mut json, ordered)) => {
                    let mut at = String::new();
                    walk_refs(&mut json, &mut at, None, &mut |at, reference| {
                        self.rewrite(i, at, reference);
                    });
                    self.files[i].json = json;
                    self.files[i].ordered = ordered;
                }
                Err(mut e) => self.errors.append(&mut e),
            }
            i += 1;
        }
        for check in std::mem::take(&mut self.checks) {
            let Some(file) = self.files.get(check.file) else {
                continue;
            };
            // A file that failed to read was reported already.
            if !file.json.is_null() && file.json.pointer(&check.pointer).is_none() {
                self.errors.push(LoadError {
                    location: check.at,
                    message: format!("there is nothing at {}#{}", file.display, check.pointer),
                });
            }
        }
    }

    /// Rewrites one `$ref` of file `file`, found in the object at `at`, to a local pointer of
    /// the bundle; registers the file it names.
    fn rewrite(&mut self, file: usize, at: &str, reference: &mut String) {
        let here = format!("{}#{}", self.files[file].display, at);
        let fail = |errors: &mut Vec<LoadError>, message: String| {
            errors.push(LoadError {
                location: here.clone(),
                message,
            });
        };
        let (target, fragment) = reference
            .split_once('#')
            .unwrap_or((reference.as_str(), ""));
        let Ok(pointer) = percent_decode_str(fragment).decode_utf8() else {
            fail(
                &mut self.errors,
                "the reference's fragment is not valid percent-encoded UTF-8".to_owned(),
            );
            return;
        };
        let pointer = pointer.into_owned();
        if !pointer.is_empty() && !pointer.starts_with('/') {
            fail(
                &mut self.errors,
                "only JSON pointer fragments (#/…) are supported in references".to_owned(),
            );
            return;
        }
        let target_file = if target.is_empty() {
            file
        } else if has_scheme(target) || target.starts_with("//") {
            fail(
                &mut self.errors,
                "remote references are not fetched".to_owned(),
            );
            return;
        } else if target.starts_with('/') {
            fail(
                &mut self.errors,
                "absolute paths are not followed: name the file relative to this one".to_owned(),
            );
            return;
        } else {
            let Ok(relative) = percent_decode_str(target).decode_utf8() else {
                fail(
                    &mut self.errors,
                    "the reference is not valid percent-encoded UTF-8".to_owned(),
                );
                return;
            };
            let relative = Path::new(relative.as_ref());
            let base = &self.files[file];
            let actual = base
                .actual
                .parent()
                .map_or_else(|| relative.to_path_buf(), |d| d.join(relative));
            let display = normalize(
                &Path::new(&base.display)
                    .parent()
                    .map_or_else(|| relative.to_path_buf(), |d| d.join(relative)),
            );
            // Only files in the main document's directory (or below it) are read, by name and
            // once symbolic links are resolved: a document must not be able to pull in (and
            // have quoted back in errors) whatever else the gateway can read.
            let outside = || {
                format!(
                    "{display} is outside the directory of the main document: only files in it \
                     or below it are read"
                )
            };
            if !self.lexically_home(&display) {
                fail(&mut self.errors, outside());
                return;
            }
            if !self.named.contains(&actual) {
                self.named.push(actual.clone());
            }
            let canonical = match std::fs::canonicalize(&actual) {
                Ok(c) => c,
                Err(e) => {
                    fail(&mut self.errors, format!("cannot open {display}: {e}"));
                    return;
                }
            };
            if !self.home.as_ref().is_some_and(|h| canonical.starts_with(h)) {
                fail(&mut self.errors, outside());
                return;
            }
            match self.by_path.get(&canonical) {
                Some(&n) => n,
                None if self.files.len() >= MAX_FILES => {
                    fail(
                        &mut self.errors,
                        format!("more than {MAX_FILES} files are referenced"),
                    );
                    return;
                }
                None => {
                    let n = self.files.len();
                    self.files.push(FileEntry {
                        actual,
                        display,
                        json: Value::Null,
                        ordered: Yaml::Null,
                    });
                    self.by_path.insert(canonical, n);
                    n
                }
            }
        };
        self.checks.push(RefCheck {
            at: here,
            file: target_file,
            pointer: pointer.clone(),
        });
        let local = if target_file == 0 {
            pointer
        } else {
            format!("/{FILES_KEY}/{target_file}{pointer}")
        };
        *reference = format!("#{}", pointer_fragment(&local));
    }

    /// Whether a file named `display` (normalised, as [`normalize`] gives it) is in the main
    /// document's directory or below it, by name alone.
    fn lexically_home(&self, display: &str) -> bool {
        let main = Path::new(&self.files[0].display);
        let dir = main.parent().unwrap_or_else(|| Path::new(""));
        Path::new(display).strip_prefix(dir).is_ok_and(|rest| {
            rest.components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        })
    }

    /// The main document with the other files placed under `/x-portcullis-files/<n>`.
    fn into_bundle(mut self) -> Result<Value, Vec<LoadError>> {
        let display = self.files[0].display.clone();
        let mut others = Map::new();
        for (n, f) in self.files.iter_mut().enumerate().skip(1) {
            others.insert(n.to_string(), std::mem::take(&mut f.json));
        }
        let Some(Value::Object(main)) = self.files.first_mut().map(|f| &mut f.json) else {
            return Err(vec![LoadError {
                location: format!("{display}#"),
                message: "must be a mapping (an OpenAPI document)".to_owned(),
            }]);
        };
        for key in [FILES_KEY, SOURCES_KEY] {
            if main.contains_key(key) {
                return Err(vec![LoadError {
                    location: format!("{display}#/{key}"),
                    message: "is reserved for the gateway's own use".to_owned(),
                }]);
            }
        }
        if !others.is_empty() {
            main.insert(FILES_KEY.to_owned(), Value::Object(others));
        }
        Ok(std::mem::take(&mut self.files[0].json))
    }
}

/// Whether a URI reference starts with a scheme (`https:`, `urn:`, `file:` …).
fn has_scheme(reference: &str) -> bool {
    match reference.split_once(':') {
        Some((scheme, _)) => {
            let mut bytes = scheme.bytes();
            bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
                && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        }
        None => false,
    }
}

/// Keys whose values are maps of names, not values: a property named `example` is a schema.
const NAME_MAPS: [&str; 6] = [
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
    "schemas",
];

/// Calls `f` for every `$ref` string in `v` with the pointer of the object holding it. Example
/// and constant values (`example`, `const`, `enum`) are data, not document, and are skipped.
fn walk_refs(
    v: &mut Value,
    at: &mut String,
    parent_key: Option<&str>,
    f: &mut dyn FnMut(&str, &mut String),
) {
    match v {
        Value::Object(o) => {
            let in_names = parent_key.is_some_and(|k| NAME_MAPS.contains(&k));
            for (k, child) in o.iter_mut() {
                if k == "$ref" {
                    if let Value::String(r) = child {
                        f(at, r);
                    }
                    continue;
                }
                if !in_names && matches!(k.as_str(), "example" | "const" | "enum") {
                    continue;
                }
                let len = at.len();
                at.push('/');
                at.push_str(&escape(k));
                walk_refs(child, at, Some(k), f);
                at.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                walk_refs(child, at, None, f);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// The pointer a local `$ref` (`#/a/b`, percent-encoded) names.
pub(crate) fn local_target(reference: &str) -> Option<String> {
    let fragment = reference.strip_prefix('#')?;
    let pointer = percent_decode_str(fragment).decode_utf8().ok()?;
    (pointer.is_empty() || pointer.starts_with('/')).then(|| pointer.into_owned())
}

// ---------------------------------------------------------------------------------------------
// Reading operations

struct Reader<'a> {
    doc: &'a Value,
    version: Version,
    sources: &'a [String],
    ordered: &'a [Yaml],
    errors: Vec<LoadError>,
    /// Where schemas sit (parameters, headers, media types): the walk of schemas starts here.
    schema_roots: Vec<String>,
    /// Security schemes read so far, by name (`None`: broken, already reported).
    schemes: HashMap<String, Option<SchemeKind>>,
}

impl<'a> Reader<'a> {
    fn err(&mut self, at: &str, message: impl Into<String>) {
        self.errors.push(LoadError {
            location: locate_in(self.sources, at),
            message: message.into(),
        });
    }

    /// The keys of the object at `at`, in the order the file has them.
    fn keys_in_order(&self, at: &str) -> Vec<String> {
        let (file, inner) = split_bundle_pointer(at);
        let mut node = self.ordered.get(file);
        for token in inner.split('/').skip(1) {
            let token = unescape(token);
            node = match node {
                Some(Yaml::Mapping(m)) => m
                    .iter()
                    .find(|(k, _)| yaml_key(k).as_deref() == Some(token.as_str()))
                    .map(|(_, v)| v),
                Some(Yaml::Sequence(s)) => token.parse::<usize>().ok().and_then(|i| s.get(i)),
                _ => None,
            };
        }
        let from_json = || {
            self.doc
                .pointer(at)
                .and_then(Value::as_object)
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        match node {
            Some(Yaml::Mapping(m)) => m.keys().filter_map(yaml_key).collect(),
            _ => from_json(),
        }
    }

    /// Follows Reference Objects from `at` to the object they name.
    fn follow(&mut self, at: &str) -> Option<(String, &'a Map<String, Value>)> {
        let doc = self.doc;
        let mut current = at.to_owned();
        for _ in 0..=MAX_HOPS {
            let Some(v) = doc.pointer(&current) else {
                self.err(at, "names nothing");
                return None;
            };
            let Some(o) = v.as_object() else {
                self.err(&current, "must be a mapping");
                return None;
            };
            match o.get("$ref") {
                Some(Value::String(r)) => match local_target(r) {
                    Some(next) => current = next,
                    None => {
                        self.err(&current, "is not a local reference after bundling");
                        return None;
                    }
                },
                _ => return Some((current, o)),
            }
        }
        self.err(
            at,
            format!("the chain of references is longer than {MAX_HOPS} (circular?)"),
        );
        None
    }

    fn operations(&mut self) -> Vec<OperationDef> {
        let doc = self.doc;
        let mut ops = Vec::new();
        match doc.get("paths") {
            None if self.version == Version::V30 => {
                self.err("/paths", "is required");
                return ops;
            }
            None => {}
            Some(Value::Object(_)) => {}
            Some(_) => {
                self.err("/paths", "must be a mapping of path templates");
                return ops;
            }
        }
        let document_security = match doc.get("security") {
            Some(_) => self.security("/security"),
            None => None,
        };
        let mut ids: HashMap<String, String> = HashMap::new();
        for template in self.keys_in_order("/paths") {
            if template.starts_with("x-") {
                continue;
            }
            let item_at = format!("/paths/{}", escape(&template));
            if !template.starts_with('/') {
                self.err(&item_at, "a path template must start with /");
                continue;
            }
            let names = match template_names(&template) {
                Ok(n) => n,
                Err(m) => {
                    self.err(&item_at, m);
                    continue;
                }
            };
            let Some((item_at, item)) = self.follow(&item_at) else {
                continue;
            };
            let has_common = item.contains_key("parameters");
            let common = if has_common {
                self.parameters(&format!("{item_at}/parameters"))
            } else {
                Vec::new()
            };
            for method in self.keys_in_order(&item_at) {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let op_at = format!("{item_at}/{method}");
                if let Some(mut op) = self.operation(&method, &template, &names, &op_at, &common) {
                    let own = format!("{op_at}/security");
                    op.security = if doc.pointer(&own).is_some() {
                        self.security(&own)
                    } else {
                        document_security.clone()
                    };
                    if let Some(first) = ids.get(&op.id) {
                        let first = locate_in(self.sources, first);
                        let at = if doc.pointer(&format!("{op_at}/operationId")).is_some() {
                            format!("{op_at}/operationId")
                        } else {
                            op_at.clone()
                        };
                        self.err(&at, format!("the operation id is already used at {first}"));
                    } else {
                        ids.insert(op.id.clone(), op_at);
                    }
                    ops.push(op);
                }
            }
        }
        if ops.is_empty() && self.errors.is_empty() {
            self.err("/paths", "the document describes no operations");
        }
        ops
    }

    fn operation(
        &mut self,
        method: &str,
        template: &str,
        names: &[String],
        at: &str,
        common: &[ParamDef],
    ) -> Option<OperationDef> {
        let Some(op) = self.doc.pointer(at).and_then(Value::as_object) else {
            self.err(at, "must be a mapping (an Operation Object)");
            return None;
        };
        let upper = method.to_ascii_uppercase();
        let id = match op.get("operationId") {
            None => format!("{upper} {template}"),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                self.err(&format!("{at}/operationId"), "must be a non-empty string");
                format!("{upper} {template}")
            }
        };
        let mut parameters = common.to_vec();
        if op.contains_key("parameters") {
            for p in self.parameters(&format!("{at}/parameters")) {
                match parameters.iter_mut().find(|q| same_param(q, &p)) {
                    Some(q) => *q = p,
                    None => parameters.push(p),
                }
            }
        }
        for name in names {
            let declared = parameters
                .iter()
                .any(|p| p.location == In::Path && &p.name == name);
            if !declared {
                self.err(
                    at,
                    format!("the path template names {{{name}}} but no path parameter {name} is declared"),
                );
            }
        }
        for p in &parameters {
            if p.location == In::Path && !names.contains(&p.name) {
                self.err(
                    &p.pointer,
                    format!("path parameter {} is not in the path template", p.name),
                );
            }
        }
        let body = match op.get("requestBody") {
            Some(_) => self.body(&format!("{at}/requestBody")),
            None => None,
        };
        let responses = match op.get("responses") {
            Some(_) => self.responses(&format!("{at}/responses")),
            None => Vec::new(),
        };
        let method = match method {
            "get" => http::Method::GET,
            "put" => http::Method::PUT,
            "post" => http::Method::POST,
            "delete" => http::Method::DELETE,
            "options" => http::Method::OPTIONS,
            "head" => http::Method::HEAD,
            "patch" => http::Method::PATCH,
            _ => http::Method::TRACE,
        };
        Some(OperationDef {
            id,
            method,
            path: template.to_owned(),
            parameters,
            body,
            responses,
            pointer: at.to_owned(),
            security: None,
        })
    }

    /// A `security` list: the alternatives, or `None` when no credential is needed (an empty
    /// list, or an empty requirement among the alternatives).
    fn security(&mut self, at: &str) -> Option<Vec<Vec<SchemeUse>>> {
        let doc = self.doc;
        let Some(list) = doc.pointer(at).and_then(Value::as_array) else {
            self.err(at, "must be a list of security requirements");
            return None;
        };
        let mut alternatives = Vec::new();
        let mut open = list.is_empty();
        for (i, requirement) in list.iter().enumerate() {
            let req_at = format!("{at}/{i}");
            let Some(requirement) = requirement.as_object() else {
                self.err(
                    &req_at,
                    "must be a mapping of security scheme names to lists",
                );
                continue;
            };
            if requirement.is_empty() {
                open = true;
                continue;
            }
            let mut all = Vec::new();
            for name in self.keys_in_order(&req_at) {
                let name_at = format!("{req_at}/{}", escape(&name));
                let values = match requirement.get(&name).and_then(Value::as_array) {
                    Some(v) if v.iter().all(Value::is_string) => v
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                    _ => {
                        self.err(&name_at, "must be a list of scope or role names");
                        continue;
                    }
                };
                if let Some(kind) = self.scheme(&name, &name_at) {
                    all.push(SchemeUse { name, kind, values });
                }
            }
            alternatives.push(all);
        }
        (!open).then_some(alternatives)
    }

    /// The kind of the security scheme `name` (`components/securitySchemes`), reported once
    /// if it is missing or broken; `at`: the requirement that names it.
    fn scheme(&mut self, name: &str, at: &str) -> Option<SchemeKind> {
        if let Some(known) = self.schemes.get(name) {
            return known.clone();
        }
        let s_at = format!("/components/securitySchemes/{}", escape(name));
        let kind = if self.doc.pointer(&s_at).is_none() {
            self.err(
                at,
                format!("names the security scheme {name}, which components/securitySchemes does not define"),
            );
            None
        } else {
            self.follow(&s_at).and_then(|(s_at, s)| {
                let text = |k: &str| s.get(k).and_then(Value::as_str);
                match text("type") {
                    Some("apiKey") => Some(SchemeKind::ApiKey),
                    Some("http") => match text("scheme") {
                        Some(x) if x.eq_ignore_ascii_case("bearer") => Some(SchemeKind::Bearer),
                        Some(x) => Some(SchemeKind::Other(format!("http {x}"))),
                        None => {
                            self.err(&s_at, "an http security scheme needs scheme");
                            None
                        }
                    },
                    Some("oauth2" | "openIdConnect") => Some(SchemeKind::OAuth),
                    Some("mutualTLS") => Some(SchemeKind::MutualTls),
                    Some(t) => {
                        self.err(
                            &format!("{s_at}/type"),
                            format!("{t} is not a security scheme type"),
                        );
                        None
                    }
                    None => {
                        self.err(&s_at, "a security scheme needs type");
                        None
                    }
                }
            })
        };
        self.schemes.insert(name.to_owned(), kind.clone());
        kind
    }

    /// The Parameter Objects of a `parameters` list (Reference Objects followed).
    fn parameters(&mut self, at: &str) -> Vec<ParamDef> {
        let Some(list) = self.doc.pointer(at).and_then(Value::as_array) else {
            self.err(at, "must be a list of parameters");
            return Vec::new();
        };
        let mut out: Vec<ParamDef> = Vec::new();
        for i in 0..list.len() {
            let Some(p) = self.parameter(&format!("{at}/{i}")) else {
                continue;
            };
            if out.iter().any(|q| same_param(q, &p)) {
                let message = format!(
                    "parameter {} in {} is declared twice",
                    p.name,
                    p.location.as_str()
                );
                self.err(&p.pointer, message);
            } else {
                out.push(p);
            }
        }
        out
    }

    fn parameter(&mut self, at: &str) -> Option<ParamDef> {
        let (at, p) = self.follow(at)?;
        let name = match p.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                self.err(&format!("{at}/name"), "is required (a non-empty string)");
                return None;
            }
        };
        let location = match p.get("in").and_then(Value::as_str) {
            Some("path") => In::Path,
            Some("query") => In::Query,
            Some("header") => In::Header,
            Some("cookie") => In::Cookie,
            _ => {
                self.err(&format!("{at}/in"), "must be path, query, header or cookie");
                return None;
            }
        };
        // The spec has these described by the media types and security schemes instead.
        if location == In::Header
            && ["accept", "content-type", "authorization"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
        {
            return None;
        }
        let mut ok = true;
        let required = self.flag(p, &at, "required", false, &mut ok);
        let allow_empty_value = self.flag(p, &at, "allowEmptyValue", false, &mut ok);
        let style = match p.get("style") {
            None => match location {
                In::Query | In::Cookie => Style::Form,
                In::Path | In::Header => Style::Simple,
            },
            Some(s) => {
                let style = match s.as_str() {
                    Some("matrix") => Some(Style::Matrix),
                    Some("label") => Some(Style::Label),
                    Some("form") => Some(Style::Form),
                    Some("simple") => Some(Style::Simple),
                    Some("spaceDelimited") => Some(Style::SpaceDelimited),
                    Some("pipeDelimited") => Some(Style::PipeDelimited),
                    Some("deepObject") => Some(Style::DeepObject),
                    _ => None,
                };
                let Some(style) = style else {
                    self.err(&format!("{at}/style"), "is not a parameter style");
                    return None;
                };
                let allowed = match style {
                    Style::Matrix | Style::Label => location == In::Path,
                    Style::Form => matches!(location, In::Query | In::Cookie),
                    Style::Simple => matches!(location, In::Path | In::Header),
                    Style::SpaceDelimited | Style::PipeDelimited | Style::DeepObject => {
                        location == In::Query
                    }
                };
                if !allowed {
                    self.err(
                        &format!("{at}/style"),
                        format!("is not allowed for {} parameters", location.as_str()),
                    );
                    return None;
                }
                style
            }
        };
        let explode = self.flag(p, &at, "explode", style == Style::Form, &mut ok);
        if location == In::Path && !required {
            self.err(&at, "a path parameter must have required: true");
            ok = false;
        }
        let (shape, schema) = match (p.get("schema"), p.get("content")) {
            (Some(_), Some(_)) => {
                self.err(&at, "must have either schema or content, not both");
                return None;
            }
            (Some(_), None) => {
                let schema = format!("{at}/schema");
                self.schema_roots.push(schema.clone());
                (self.shape(&schema), Some(schema))
            }
            (None, Some(content)) => {
                let content_at = format!("{at}/content");
                let media = match content.as_object() {
                    Some(m) if m.len() == 1 => m.iter().next(),
                    _ => None,
                };
                let Some((media, value)) = media else {
                    self.err(&content_at, "must name exactly one media type");
                    return None;
                };
                let schema = value.get("schema").map(|_| {
                    let s = format!("{content_at}/{}/schema", escape(media));
                    self.schema_roots.push(s.clone());
                    s
                });
                (Shape::Json, schema)
            }
            (None, None) => {
                self.err(&at, "must have schema or content");
                return None;
            }
        };
        ok.then_some(ParamDef {
            name,
            location,
            required,
            style,
            explode,
            allow_empty_value,
            shape,
            schema,
            pointer: at,
        })
    }

    fn flag(
        &mut self,
        o: &Map<String, Value>,
        at: &str,
        key: &str,
        default: bool,
        ok: &mut bool,
    ) -> bool {
        match o.get(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.err(&format!("{at}/{key}"), "must be true or false");
                *ok = false;
                default
            }
        }
    }

    /// A parameter's shape, from its schema's types (references followed, composition
    /// keywords merged; at most [`MAX_HOPS`] schemas looked at).
    fn shape(&self, at: &str) -> Shape {
        let mut kinds = Kinds::default();
        self.gather(at, &mut MAX_HOPS.clone(), &mut kinds);
        let has = |t: &str| kinds.types.iter().any(|k| k == t);
        if has("array") || (kinds.types.is_empty() && kinds.items.is_some()) {
            let items = kinds
                .items
                .as_deref()
                .map(|i| self.scalar_types(i))
                .unwrap_or_default();
            Shape::Array(items)
        } else if has("object") || (kinds.types.is_empty() && !kinds.properties.is_empty()) {
            Shape::Object(
                kinds
                    .properties
                    .iter()
                    .map(|(name, p)| (name.clone(), self.scalar_types(p)))
                    .collect(),
            )
        } else {
            Shape::Scalar(scalar_types(&kinds.types))
        }
    }

    fn scalar_types(&self, at: &str) -> Vec<ScalarType> {
        let mut kinds = Kinds::default();
        self.gather(at, &mut MAX_HOPS.clone(), &mut kinds);
        scalar_types(&kinds.types)
    }

    fn gather(&self, at: &str, budget: &mut usize, out: &mut Kinds) {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let Some(o) = self.doc.pointer(at).and_then(Value::as_object) else {
            return;
        };
        let v30 = self.version == Version::V30;
        let nullable = v30 && o.get("nullable") == Some(&Value::Bool(true));
        if nullable {
            out.types.push("null".to_owned());
        }
        if let Some(r) = o.get("$ref").and_then(Value::as_str) {
            if let Some(target) = local_target(r) {
                self.gather(&target, budget, out);
            }
            if v30 {
                return;
            }
        }
        match o.get("type") {
            Some(Value::String(t)) => out.types.push(t.clone()),
            Some(Value::Array(ts)) => out
                .types
                .extend(ts.iter().filter_map(Value::as_str).map(str::to_owned)),
            _ => {}
        }
        if let Some(props) = o.get("properties").and_then(Value::as_object) {
            for name in props.keys() {
                if !out.properties.iter().any(|(n, _)| n == name) {
                    out.properties
                        .push((name.clone(), format!("{at}/properties/{}", escape(name))));
                }
            }
        }
        if o.get("items").is_some_and(Value::is_object) && out.items.is_none() {
            out.items = Some(format!("{at}/items"));
        }
        for keyword in ["allOf", "anyOf", "oneOf"] {
            if let Some(list) = o.get(keyword).and_then(Value::as_array) {
                for i in 0..list.len() {
                    self.gather(&format!("{at}/{keyword}/{i}"), budget, out);
                }
            }
        }
    }

    fn body(&mut self, at: &str) -> Option<BodyDef> {
        let (at, b) = self.follow(at)?;
        let required = match b.get("required") {
            None => false,
            Some(Value::Bool(r)) => *r,
            Some(_) => {
                self.err(&format!("{at}/required"), "must be true or false");
                false
            }
        };
        let media = self.content(&format!("{at}/content"), true);
        Some(BodyDef { required, media })
    }

    /// The media types of a `content` map: ranges lowercased without parameters. In a request
    /// body (`request`), the form type with a schema gets its fields read ([`Reader::form`]).
    fn content(&mut self, at: &str, request: bool) -> Vec<MediaDef> {
        let Some(content) = self.doc.pointer(at) else {
            return Vec::new();
        };
        let Some(content) = content.as_object() else {
            self.err(at, "must be a mapping of media types");
            return Vec::new();
        };
        let mut out: Vec<MediaDef> = Vec::new();
        for key in self.keys_in_order(at) {
            let Some(media) = content.get(&key) else {
                continue;
            };
            let media_at = format!("{at}/{}", escape(&key));
            let range = key
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let valid = range
                .split_once('/')
                .is_some_and(|(t, s)| !t.is_empty() && !s.is_empty() && !s.contains('/'));
            if !valid {
                self.err(&media_at, "is not a media range (type/subtype)");
                continue;
            }
            if out.iter().any(|m| m.range == range) {
                self.err(&media_at, "names a media range already listed");
                continue;
            }
            if !media.is_object() {
                self.err(&media_at, "must be a mapping (a Media Type Object)");
                continue;
            }
            let schema = media.get("schema").map(|_| {
                let s = format!("{media_at}/schema");
                self.schema_roots.push(s.clone());
                s
            });
            let form = match &schema {
                Some(schema) if request && range == FORM => Some(self.form(&media_at, schema)),
                _ => None,
            };
            out.push(MediaDef {
                range,
                schema,
                form,
            });
        }
        out
    }

    /// The fields of a form body whose Media Type Object is at `at` and schema at `schema`:
    /// each property the schema declares (found as a parameter's are), with the `style` and
    /// `explode` of its Encoding Object. Of an Encoding Object, `headers` is for multipart
    /// bodies only (OpenAPI) and `allowReserved` changes nothing in how a value is read; both
    /// are ignored. `contentType` is kept to be warned of.
    fn form(&mut self, at: &str, schema: &str) -> FormDef {
        let mut kinds = Kinds::default();
        self.gather(schema, &mut MAX_HOPS.clone(), &mut kinds);
        let doc = self.doc;
        let encoding_at = format!("{at}/encoding");
        let encoding = match doc.pointer(&encoding_at) {
            None => None,
            Some(Value::Object(e)) => Some(e),
            Some(_) => {
                self.err(
                    &encoding_at,
                    "must be a mapping of property names to Encoding Objects",
                );
                None
            }
        };
        let mut fields = Vec::with_capacity(kinds.properties.len());
        for (name, pointer) in &kinds.properties {
            let entry_at = format!("{encoding_at}/{}", escape(name));
            let (style, explode, content_type) = match encoding.and_then(|e| e.get(name)) {
                Some(entry) => match self.encoding(&entry_at, entry) {
                    Some(read) => read,
                    None => continue,
                },
                None => (Style::Form, true, None),
            };
            fields.push(FormField {
                name: name.clone(),
                shape: self.shape(pointer),
                style,
                explode,
                content_type,
            });
        }
        let mut unmatched_encodings = Vec::new();
        for name in encoding.map(|e| e.keys()).into_iter().flatten() {
            if !kinds.properties.iter().any(|(p, _)| p == name) {
                let entry_at = format!("{encoding_at}/{}", escape(name));
                if let Some(entry) = encoding.and_then(|e| e.get(name)) {
                    // Checked all the same: a broken document is broken wherever it is.
                    self.encoding(&entry_at, entry);
                }
                unmatched_encodings.push(name.clone());
            }
        }
        FormDef {
            fields,
            unmatched_encodings,
        }
    }

    /// An Encoding Object of a form field: its style, explode and a `contentType` other than
    /// `text/plain`. `None` when it is broken (reported).
    fn encoding(&mut self, at: &str, entry: &Value) -> Option<(Style, bool, Option<String>)> {
        let Some(entry) = entry.as_object() else {
            self.err(at, "must be a mapping (an Encoding Object)");
            return None;
        };
        let style = match entry.get("style") {
            None => Style::Form,
            Some(s) => match s.as_str() {
                Some("form") => Style::Form,
                Some("spaceDelimited") => Style::SpaceDelimited,
                Some("pipeDelimited") => Style::PipeDelimited,
                Some("deepObject") => Style::DeepObject,
                _ => {
                    self.err(
                        &format!("{at}/style"),
                        "is not a style of form fields (form, spaceDelimited, pipeDelimited or \
                         deepObject)",
                    );
                    return None;
                }
            },
        };
        let mut ok = true;
        let explode = self.flag(entry, at, "explode", style == Style::Form, &mut ok);
        let content_type = match entry.get("contentType") {
            None => None,
            Some(Value::String(t))
                if t.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain")) =>
            {
                None
            }
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => {
                self.err(&format!("{at}/contentType"), "must be a string");
                ok = false;
                None
            }
        };
        ok.then_some((style, explode, content_type))
    }

    fn responses(&mut self, at: &str) -> Vec<ResponseDef> {
        if !self.doc.pointer(at).is_some_and(Value::is_object) {
            self.err(at, "must be a mapping of status codes");
            return Vec::new();
        }
        let mut out: Vec<ResponseDef> = Vec::new();
        for key in self.keys_in_order(at) {
            let key = key.as_str();
            if key.starts_with("x-") {
                continue;
            }
            let response_at = format!("{at}/{}", escape(key));
            let Some(status) = status_key(key) else {
                self.err(
                    &response_at,
                    "is not a status code (200), range (2XX) or default",
                );
                continue;
            };
            if out.iter().any(|r| r.status == status) {
                self.err(&response_at, "repeats a status already listed");
                continue;
            }
            let Some((resolved, response)) = self.follow(&response_at) else {
                continue;
            };
            if let Some(headers) = response.get("headers").and_then(Value::as_object) {
                let names: Vec<String> = headers.keys().cloned().collect();
                for name in names {
                    self.header(&format!("{resolved}/headers/{}", escape(&name)));
                }
            }
            let media = self.content(&format!("{resolved}/content"), false);
            out.push(ResponseDef { status, media });
        }
        out
    }

    /// Notes the schema of a response header (checked and converted like any other).
    fn header(&mut self, at: &str) {
        let Some((at, h)) = self.follow(at) else {
            return;
        };
        if h.contains_key("schema") {
            self.schema_roots.push(format!("{at}/schema"));
        }
        if let Some(content) = h.get("content").and_then(Value::as_object) {
            for (media, value) in content {
                if value.get("schema").is_some() {
                    self.schema_roots
                        .push(format!("{at}/content/{}/schema", escape(media)));
                }
            }
        }
    }
}

#[derive(Default)]
struct Kinds {
    types: Vec<String>,
    properties: Vec<(String, String)>,
    items: Option<String>,
}

/// The scalar types named, in the order a parameter's text is tried as them.
fn scalar_types(types: &[String]) -> Vec<ScalarType> {
    let mut out = Vec::new();
    for (name, t) in [
        ("integer", ScalarType::Integer),
        ("number", ScalarType::Number),
        ("boolean", ScalarType::Boolean),
        ("null", ScalarType::Null),
        ("string", ScalarType::String),
    ] {
        if types.iter().any(|x| x == name) {
            out.push(t);
        }
    }
    out
}

fn same_param(a: &ParamDef, b: &ParamDef) -> bool {
    a.location == b.location
        && if a.location == In::Header {
            a.name.eq_ignore_ascii_case(&b.name)
        } else {
            a.name == b.name
        }
}

/// `200`, `2XX` (any case, uppercased) or `default`.
fn status_key(key: &str) -> Option<String> {
    let b = key.as_bytes();
    match b {
        b"default" => Some(key.to_owned()),
        [c @ b'1'..=b'5', x, y]
            if x.eq_ignore_ascii_case(&b'x') && y.eq_ignore_ascii_case(&b'x') =>
        {
            Some(format!("{}XX", char::from(*c)))
        }
        [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => Some(key.to_owned()),
        _ => None,
    }
}

/// The `{name}`s of a path template, in order.
fn template_names(template: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    let mut open: Option<usize> = None;
    for (i, c) in template.char_indices() {
        match (c, open) {
            ('{', None) => open = Some(i + 1),
            ('{', Some(_)) => return Err("has a { inside {…}".to_owned()),
            ('}', None) => return Err("has a } without {".to_owned()),
            ('}', Some(start)) => {
                let name = template.get(start..i).unwrap_or("");
                if name.is_empty() {
                    return Err("has an empty {}".to_owned());
                }
                if names.iter().any(|n| n == name) {
                    return Err(format!("names {{{name}}} twice"));
                }
                names.push(name.to_owned());
                open = None;
            }
            _ => {}
        }
    }
    if open.is_some() {
        return Err("has a { that is not closed".to_owned());
    }
    Ok(names)
}

// ---------------------------------------------------------------------------------------------
// Schemas: finding, views, conversion, checks

const MAP_KEYWORDS: [&str; 5] = [
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];
const SCHEMA_KEYWORDS: [&str; 13] = [
    "additionalProperties",
    "items",
    "additionalItems",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "not",
    "if",
    "then",
    "else",
    "contentSchema",
    "prefixItems",
];
const LIST_KEYWORDS: [&str; 3] = ["allOf", "anyOf", "oneOf"];

/// Every schema reachable from `roots` through schema keywords and `$ref`s.
fn expand(doc: &Value, roots: Vec<String>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = roots;
    while let Some(at) = stack.pop() {
        if at.is_empty() || seen.contains(&at) {
            continue;
        }
        let Some(v) = doc.pointer(&at) else {
            continue;
        };
        seen.insert(at.clone());
        let Some(o) = v.as_object() else {
            continue;
        };
        if let Some(target) = o.get("$ref").and_then(Value::as_str).and_then(local_target) {
            stack.push(target);
        }
        for (k, child) in o {
            let k = k.as_str();
            if MAP_KEYWORDS.contains(&k) {
                if let Some(m) = child.as_object() {
                    for name in m.keys() {
                        stack.push(format!("{at}/{k}/{}", escape(name)));
                    }
                }
            } else if SCHEMA_KEYWORDS.contains(&k) || LIST_KEYWORDS.contains(&k) {
                match child {
                    Value::Array(list) => {
                        stack.extend((0..list.len()).map(|i| format!("{at}/{k}/{i}")));
                    }
                    _ => stack.push(format!("{at}/{k}")),
                }
            }
        }
    }
    seen
}

/// Removes from `required` lists the properties marked `flag` (`readOnly` in the request view,
/// `writeOnly` in the response view), directly or through one `$ref`.
fn strip_required(view: &mut Value, raw: &Value, schemas: &BTreeSet<String>, flag: &str) {
    let flagged = |prop: &Value| {
        let direct = prop.get(flag) == Some(&Value::Bool(true));
        let through_ref = prop
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(local_target)
            .and_then(|t| raw.pointer(&t))
            .is_some_and(|t| t.get(flag) == Some(&Value::Bool(true)));
        direct || through_ref
    };
    for at in schemas {
        let Some(schema) = raw.pointer(at) else {
            continue;
        };
        let (Some(required), Some(props)) = (
            schema.get("required").and_then(Value::as_array),
            schema.get("properties").and_then(Value::as_object),
        ) else {
            continue;
        };
        let drop: HashSet<&str> = required
            .iter()
            .filter_map(Value::as_str)
            .filter(|name| props.get(*name).is_some_and(flagged))
            .collect();
        if drop.is_empty() {
            continue;
        }
        if let Some(Value::Object(o)) = view.pointer_mut(at)
            && let Some(Value::Array(list)) = o.get_mut("required")
        {
            list.retain(|n| n.as_str().is_none_or(|n| !drop.contains(n)));
            if list.is_empty() {
                o.remove("required");
            }
        }
    }
}

/// Converts every schema of `schemas` in place, innermost first (a 3.0 `nullable` can wrap a
/// schema in `anyOf`, which moves what is inside it).
fn convert(view: &mut Value, schemas: &BTreeSet<String>, version: Version) {
    let mut order: Vec<&String> = schemas.iter().collect();
    order.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for at in order {
        if let Some(Value::Object(o)) = view.pointer_mut(at) {
            convert_one(o, version);
        }
    }
}

/// Siblings of a 3.0 `$ref` kept by the conversion.
const REF_FLAGS: [&str; 2] = ["readOnly", "writeOnly"];

fn convert_one(o: &mut Map<String, Value>, version: Version) {
    if version == Version::V31 {
        int_bounds(o);
        return;
    }
    let nullable = o.remove("nullable") == Some(Value::Bool(true));
    if o.get("$ref").is_some_and(Value::is_string) {
        // 3.0: a Reference Object's siblings are ignored — except the access flags, which
        // `strip_required` and the field trees honour there too: both views must agree on
        // what a client may send and what a response may show.
        o.retain(|k, _| k == "$ref" || REF_FLAGS.contains(&k.as_str()));
        if nullable {
            let flags: Vec<(String, Value)> = REF_FLAGS
                .iter()
                .filter_map(|k| o.remove(*k).map(|v| ((*k).to_owned(), v)))
                .collect();
            wrap_nullable(o);
            o.extend(flags);
        }
        return;
    }
    for (exclusive, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        match o.get(exclusive) {
            Some(Value::Bool(true)) => match o.remove(bound) {
                Some(b) => {
                    o.insert(exclusive.to_owned(), b);
                }
                None => {
                    o.remove(exclusive);
                }
            },
            Some(Value::Bool(false)) => {
                o.remove(exclusive);
            }
            _ => {}
        }
    }
    int_bounds(o);
    if !nullable {
        return;
    }
    let composed = LIST_KEYWORDS.iter().any(|k| o.contains_key(*k));
    match o.get_mut("type") {
        Some(t) if !composed => {
            match t {
                Value::String(s) => {
                    *t = Value::Array(vec![Value::String(s.clone()), "null".into()])
                }
                Value::Array(list) if !list.iter().any(|x| x == "null") => {
                    list.push("null".into());
                }
                _ => {}
            }
            if let Some(Value::Array(list)) = o.get_mut("enum")
                && !list.contains(&Value::Null)
            {
                list.push(Value::Null);
            }
        }
        _ => wrap_nullable(o),
    }
}

/// `{…}` → `{"anyOf": [{…}, {"type": "null"}]}`.
fn wrap_nullable(o: &mut Map<String, Value>) {
    let inner = std::mem::take(o);
    let mut null = Map::new();
    null.insert("type".to_owned(), "null".into());
    o.insert(
        "anyOf".to_owned(),
        Value::Array(vec![Value::Object(inner), Value::Object(null)]),
    );
}

/// `format: int32` / `int64`: the range as bounds, unless the schema's own are tighter.
fn int_bounds(o: &mut Map<String, Value>) {
    let (lo, hi): (i64, i64) = match o.get("format").and_then(Value::as_str) {
        Some("int32") => (i32::MIN.into(), i32::MAX.into()),
        Some("int64") => (i64::MIN, i64::MAX),
        _ => return,
    };
    let num = |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_f64);
    let lower = num(o, "minimum")
        .into_iter()
        .chain(num(o, "exclusiveMinimum"));
    if !lower.into_iter().any(|b| b >= lo as f64) {
        o.insert("minimum".to_owned(), lo.into());
    }
    let upper = num(o, "maximum")
        .into_iter()
        .chain(num(o, "exclusiveMaximum"));
    if !upper.into_iter().any(|b| b <= hi as f64) {
        o.insert("maximum".to_owned(), hi.into());
    }
}

/// Reports schemas that would not compile: meta-schema violations (checked from each
/// outermost schema, so each problem once, at its own pointer) and patterns the validators'
/// regex engine refuses.
fn check_schemas(
    view: &Value,
    schemas: &BTreeSet<String>,
    sources: &[String],
    errors: &mut Vec<LoadError>,
) {
    let mut reported: HashSet<String> = HashSet::new();
    let outermost = schemas.iter().filter(|at| {
        !at.match_indices('/')
            .skip(1)
            .any(|(i, _)| at.get(..i).is_some_and(|a| schemas.contains(a)))
    });
    let mut push = |at: String, message: String, errors: &mut Vec<LoadError>| {
        if reported.insert(at.clone()) {
            errors.push(LoadError {
                location: locate_in(sources, &at),
                message,
            });
        }
    };
    for at in outermost {
        for (p, m) in crate::schema::meta_problems(view, at) {
            push(p, m, errors);
        }
    }
    for at in schemas {
        let Some(o) = view.pointer(at).and_then(Value::as_object) else {
            continue;
        };
        if let Some(p) = o.get("pattern").and_then(Value::as_str)
            && let Some(m) = crate::schema::pattern_problem(p)
        {
            push(format!("{at}/pattern"), m, errors);
        }
        if let Some(pp) = o.get("patternProperties").and_then(Value::as_object) {
            for p in pp.keys() {
                if let Some(m) = crate::schema::pattern_problem(p) {
                    push(format!("{at}/patternProperties/{}", escape(p)), m, errors);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Writes `files` into a fresh directory.
    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = d.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        d
    }

    fn load_in(d: &tempfile::TempDir, name: &str) -> Result<Document, Vec<LoadError>> {
        load(&d.path().join(name))
    }

    /// `file#/pointer` as reported for a file of `d`.
    fn at(d: &tempfile::TempDir, rest: &str) -> String {
        format!("{}/{rest}", normalize(d.path()))
    }

    fn errors(d: &tempfile::TempDir, name: &str) -> Vec<(String, String)> {
        let base = format!("{}/", normalize(d.path()));
        load_in(d, name)
            .map(|_| ())
            .unwrap_err()
            .into_iter()
            .map(|e| (e.location.replace(&base, ""), e.message.replace(&base, "")))
            .collect()
    }

    fn validator(doc: &Document, request: bool, pointer: &str) -> jsonschema::Validator {
        let (root, base) = if request {
            (&doc.request_root, crate::schema::REQUEST_BASE)
        } else {
            (&doc.response_root, crate::schema::RESPONSE_BASE)
        };
        crate::schema::compile(root, base, pointer).unwrap()
    }

    fn op<'a>(doc: &'a Document, id: &str) -> &'a OperationDef {
        doc.operations.iter().find(|o| o.id == id).unwrap()
    }

    fn all_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|c| all_refs(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| all_refs(c, out)),
            _ => {}
        }
    }

    const SHOP30: &str = r#"
openapi: 3.0.3
info: {title: shop, version: "1"}
paths:
  /zeta/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
      - {name: verbose, in: query, schema: {type: boolean}}
    post:
      operationId: createZeta
      parameters:
        - {name: id, in: path, required: true, schema: {type: integer, format: int32}}
        - {name: tags, in: query, style: pipeDelimited, schema: {type: array, items: {type: integer}}}
        - {name: Accept, in: header, schema: {type: string}}
        - {name: X-Trace, in: header, schema: {type: string}}
        - {name: session, in: cookie, required: true, schema: {type: string}}
        - {$ref: '#/components/parameters/Filter'}
      requestBody:
        required: true
        content:
          Application/JSON; charset=utf-8:
            schema: {$ref: '#/components/schemas/Order'}
          text/plain: {}
      responses:
        200:
          description: ok
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Order'}
        4xx: {$ref: '#/components/responses/Problem'}
        default: {description: other}
        x-note: ignored
    get:
      responses:
        "204": {description: none}
  /alpha:
    get:
      operationId: listAlpha
      parameters:
        - name: q
          in: query
          content:
            application/json:
              schema: {type: object}
        - {name: limit, in: query, schema: {$ref: '#/components/schemas/Limit'}}
      responses:
        "200": {description: ok}
components:
  parameters:
    Filter:
      name: filter
      in: query
      style: deepObject
      explode: true
      schema:
        type: object
        properties:
          color: {type: string}
          size: {type: integer, nullable: true}
  responses:
    Problem:
      description: problem
      headers:
        X-Rate:
          schema: {type: integer, nullable: true}
      content:
        application/problem+json:
          schema: {type: object, properties: {title: {type: string}}}
  schemas:
    Limit: {type: integer, minimum: 1, exclusiveMaximum: true, maximum: 100, nullable: true}
    Order:
      type: object
      required: [id, qty, secret]
      properties:
        id: {type: string, format: uuid, readOnly: true}
        qty: {type: integer, format: int32, minimum: 1}
        email: {type: string, format: email}
        created: {type: string, format: date-time}
        secret: {$ref: '#/components/schemas/Secret'}
        note: {type: string, nullable: true, enum: [a, b]}
        price: {type: number, minimum: 0, exclusiveMinimum: true}
        parent: {$ref: '#/components/schemas/Order', nullable: true, description: ignored}
        anything: {nullable: true, minLength: 2}
    Secret: {type: string, writeOnly: true}
"#;

    #[test]
    fn reads_operations_in_document_order_with_merged_parameters() {
        let d = dir(&[("shop.yaml", SHOP30)]);
        let doc = load_in(&d, "shop.yaml").unwrap();
        assert_eq!(doc.version, Version::V30);
        assert_eq!(doc.source, at(&d, "shop.yaml"));
        let ids: Vec<&str> = doc.operations.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["createZeta", "GET /zeta/{id}", "listAlpha"]);

        let create = op(&doc, "createZeta");
        assert_eq!(create.method, http::Method::POST);
        assert_eq!(create.path, "/zeta/{id}");
        assert_eq!(create.pointer, "/paths/~1zeta~1{id}/post");
        let names: Vec<(&str, In)> = create
            .parameters
            .iter()
            .map(|p| (p.name.as_str(), p.location))
            .collect();
        // The operation's `id` replaces the path item's in place; Accept is skipped.
        assert_eq!(
            names,
            [
                ("id", In::Path),
                ("verbose", In::Query),
                ("tags", In::Query),
                ("X-Trace", In::Header),
                ("session", In::Cookie),
                ("filter", In::Query),
            ]
        );
        let id = &create.parameters[0];
        assert!(id.required);
        assert_eq!((id.style, id.explode), (Style::Simple, false));
        assert_eq!(id.shape, Shape::Scalar(vec![ScalarType::Integer]));
        assert_eq!(
            id.schema.as_deref(),
            Some("/paths/~1zeta~1{id}/post/parameters/0/schema")
        );
        assert_eq!(id.pointer, "/paths/~1zeta~1{id}/post/parameters/0");
        let verbose = &create.parameters[1];
        assert_eq!(
            (verbose.style, verbose.explode, verbose.required),
            (Style::Form, true, false)
        );
        assert_eq!(verbose.pointer, "/paths/~1zeta~1{id}/parameters/1");
        let tags = &create.parameters[2];
        assert_eq!((tags.style, tags.explode), (Style::PipeDelimited, false));
        assert_eq!(tags.shape, Shape::Array(vec![ScalarType::Integer]));
        assert_eq!(create.parameters[3].style, Style::Simple);
        assert_eq!(create.parameters[4].style, Style::Form);
        let filter = &create.parameters[5];
        assert_eq!(filter.pointer, "/components/parameters/Filter");
        assert_eq!(
            filter.schema.as_deref(),
            Some("/components/parameters/Filter/schema")
        );
        assert_eq!((filter.style, filter.explode), (Style::DeepObject, true));
        assert_eq!(
            filter.shape,
            Shape::Object(vec![
                ("color".into(), vec![ScalarType::String]),
                ("size".into(), vec![ScalarType::Integer, ScalarType::Null]),
            ])
        );

        let body = create.body.as_ref().unwrap();
        assert!(body.required);
        let media: Vec<(&str, Option<&str>)> = body
            .media
            .iter()
            .map(|m| (m.range.as_str(), m.schema.as_deref()))
            .collect();
        assert_eq!(
            media,
            [
                (
                    "application/json",
                    Some(
                        "/paths/~1zeta~1{id}/post/requestBody/content/Application~1JSON; charset=utf-8/schema"
                    )
                ),
                ("text/plain", None),
            ]
        );
        let statuses: Vec<&str> = create.responses.iter().map(|r| r.status.as_str()).collect();
        assert_eq!(statuses, ["200", "4XX", "default"]);
        assert_eq!(
            create.responses[1].media[0].schema.as_deref(),
            Some("/components/responses/Problem/content/application~1problem+json/schema")
        );
        assert_eq!(
            create.responses[1].media[0].range,
            "application/problem+json"
        );

        let get = op(&doc, "GET /zeta/{id}");
        assert_eq!(get.parameters.len(), 2);
        assert_eq!(
            get.parameters[0].shape,
            Shape::Scalar(vec![ScalarType::String])
        );
        assert!(get.body.is_none());

        let list = op(&doc, "listAlpha");
        assert_eq!(list.parameters[0].shape, Shape::Json);
        assert_eq!(
            list.parameters[0].schema.as_deref(),
            Some("/paths/~1alpha/get/parameters/0/content/application~1json/schema")
        );
        // Through a `$ref`, nullable: integer or null.
        assert_eq!(
            list.parameters[1].shape,
            Shape::Scalar(vec![ScalarType::Integer, ScalarType::Null])
        );
    }

    #[test]
    fn access_flags_beside_a_30_ref_are_kept() {
        use crate::fields::{Direction, FieldTree, Unknown};
        let d = dir(&[(
            "acct.yaml",
            r##"
openapi: 3.0.3
info: {title: t, version: "1"}
paths:
  /accounts:
    post:
      requestBody:
        content:
          application/json: {schema: {$ref: '#/components/schemas/Account'}}
      responses: {"201": {description: created}}
components:
  schemas:
    Role: {type: string, enum: [user, admin]}
    Secret: {type: string, minLength: 8}
    Account:
      type: object
      required: [name, role, password]
      properties:
        name: {type: string}
        role: {$ref: '#/components/schemas/Role', readOnly: true, description: dropped}
        password: {$ref: '#/components/schemas/Secret', writeOnly: true}
        boss: {$ref: '#/components/schemas/Role', readOnly: true, nullable: true}
"##,
        )]);
        let doc = load_in(&d, "acct.yaml").unwrap();
        let acct = "/components/schemas/Account";
        let prop =
            |root: &Value, name: &str| root.pointer(&format!("{acct}/properties/{name}")).cloned();
        assert_eq!(
            prop(&doc.request_root, "role"),
            Some(json!({"$ref": "#/components/schemas/Role", "readOnly": true}))
        );
        assert_eq!(
            prop(&doc.response_root, "boss"),
            Some(
                json!({"anyOf": [{"$ref": "#/components/schemas/Role"}, {"type": "null"}],
                "readOnly": true})
            )
        );
        // The validators and the field trees agree with the `required` lists.
        let request = validator(&doc, true, acct);
        assert!(request.is_valid(&json!({"name": "a", "password": "12345678"})));
        let tree = FieldTree::compile(&doc.request_root, acct, Direction::Request).unwrap();
        let mut body = json!({"name": "a", "role": "admin", "boss": null, "password": "12345678"});
        let mut out = Vec::new();
        tree.apply(&mut body, Unknown::Reject, "body", &mut out, 10);
        let got: Vec<(&str, &str)> = out
            .iter()
            .map(|v| (v.location.as_str(), v.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("body:/boss", "read-only field"),
                ("body:/role", "read-only field")
            ]
        );
        let tree = FieldTree::compile(&doc.response_root, acct, Direction::Response).unwrap();
        let mut body = json!({"name": "a", "role": "user", "password": "12345678"});
        tree.apply(&mut body, Unknown::Reject, "body", &mut out, 10);
        assert_eq!(body, json!({"name": "a", "role": "user"}));
    }

    #[test]
    fn converts_30_schemas() {
        let d = dir(&[("shop.yaml", SHOP30)]);
        let doc = load_in(&d, "shop.yaml").unwrap();
        let order = "/components/schemas/Order";
        assert_eq!(
            doc.request_root
                .pointer("/components/schemas/Limit")
                .unwrap(),
            &json!({"type": ["integer", "null"], "minimum": 1, "exclusiveMaximum": 100})
        );
        assert_eq!(
            doc.request_root
                .pointer(&format!("{order}/properties/parent"))
                .unwrap(),
            &json!({"anyOf": [{"$ref": "#/components/schemas/Order"}, {"type": "null"}]})
        );
        assert_eq!(
            doc.request_root
                .pointer(&format!("{order}/properties/note"))
                .unwrap(),
            &json!({"type": ["string", "null"], "enum": ["a", "b", null]})
        );
        assert_eq!(
            doc.request_root
                .pointer(&format!("{order}/properties/anything"))
                .unwrap(),
            &json!({"anyOf": [{"minLength": 2}, {"type": "null"}]})
        );
        assert_eq!(
            doc.request_root
                .pointer(&format!("{order}/properties/qty"))
                .unwrap(),
            &json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": 2147483647})
        );
        // Response header schemas are converted too.
        assert_eq!(
            doc.response_root
                .pointer("/components/responses/Problem/headers/X-Rate/schema")
                .unwrap(),
            &json!({"type": ["integer", "null"]})
        );
        // Request view: readOnly `id` is not required, writeOnly `secret` is.
        assert_eq!(
            doc.request_root
                .pointer(&format!("{order}/required"))
                .unwrap(),
            &json!(["qty", "secret"])
        );
        assert_eq!(
            doc.response_root
                .pointer(&format!("{order}/required"))
                .unwrap(),
            &json!(["id", "qty"])
        );

        let request = validator(&doc, true, order);
        let response = validator(&doc, false, order);
        let base = json!({"qty": 2, "secret": "s"});
        assert!(request.is_valid(&base));
        assert!(!response.is_valid(&base), "id is required in responses");
        let full = json!({"id": "6f1c2a4e-7c1b-4f7e-9d55-0b6f1d2a3c4e", "qty": 2});
        assert!(
            response.is_valid(&full),
            "secret is not required in responses"
        );
        assert!(!request.is_valid(&full), "secret is required in requests");

        let with = |extra: Value| {
            let mut v = base.clone();
            if let (Value::Object(o), Value::Object(e)) = (&mut v, extra) {
                o.extend(e);
            }
            request.is_valid(&v)
        };
        // nullable
        assert!(with(json!({"note": null})));
        assert!(with(json!({"note": "a"})));
        assert!(!with(json!({"note": "c"})));
        assert!(with(json!({"parent": null})));
        assert!(with(json!({"parent": {"qty": 1, "secret": "x"}})));
        assert!(!with(json!({"parent": {"qty": 0, "secret": "x"}})));
        assert!(with(json!({"anything": null})));
        assert!(!with(json!({"anything": "x"})));
        // boolean exclusiveMinimum
        assert!(!with(json!({"price": 0})));
        assert!(with(json!({"price": 0.01})));
        // int32
        assert!(with(json!({"qty": 2147483647})));
        assert!(!with(json!({"qty": 2147483648_i64})));
        // formats
        assert!(with(json!({"email": "a@example.com"})));
        assert!(!with(json!({"email": "not an address"})));
        assert!(!with(json!({"id": "not-a-uuid"})));
        assert!(with(json!({"created": "2024-05-01T10:00:00Z"})));
        assert!(!with(json!({"created": "yesterday"})));

        let limit = validator(&doc, true, "/components/schemas/Limit");
        assert!(limit.is_valid(&json!(null)));
        assert!(limit.is_valid(&json!(99)));
        assert!(!limit.is_valid(&json!(100)), "exclusiveMaximum: true");
        assert!(!limit.is_valid(&json!(0)));
    }

    #[test]
    fn references_stay_in_the_main_documents_directory() {
        let main = |target: &str| {
            format!(
                r##"
openapi: 3.1.0
info: {{title: t, version: "1"}}
paths:
  /a:
    post:
      requestBody:
        content:
          application/json: {{schema: {{$ref: '{target}'}}}}
      responses: {{"200": {{description: ok}}}}
"##
            )
        };
        let d = dir(&[
            ("secret.txt", "s3cr3t"),
            ("api/shop.yaml", &main("../secret.txt")),
            ("api/up.yaml", &main("sub/../../secret.txt")),
            ("api/link.yaml", &main("linked.yaml")),
            ("api/note.yaml", &main("notes.txt")),
            ("api/notes.txt", "s3cr3t"),
            ("api/ok.yaml", &main("sub/common.yaml#/S")),
            ("api/sub/common.yaml", "S: {type: string}"),
        ]);
        std::os::unix::fs::symlink(
            d.path().join("secret.txt"),
            d.path().join("api/linked.yaml"),
        )
        .unwrap();
        let schema = "#/paths/~1a/post/requestBody/content/application~1json/schema";
        for file in ["api/shop.yaml", "api/up.yaml", "api/link.yaml"] {
            let got = errors(&d, file);
            assert!(!format!("{got:?}").contains("s3cr3t"), "{got:?}");
            assert_eq!(got.len(), 1, "{file}: {got:?}");
            assert_eq!(got[0].0, format!("{file}{schema}"));
            assert!(
                got[0]
                    .1
                    .ends_with(" is outside the directory of the main document: only files in it or below it are read"),
                "{file}: {got:?}"
            );
        }
        // A file inside that is no schema: refused without quoting it.
        let got = errors(&d, "api/note.yaml");
        assert_eq!(
            got,
            [(
                "api/notes.txt#".to_owned(),
                "is not a valid schema: the value is not of types \"boolean\", \"object\""
                    .to_owned()
            )]
        );
        let doc = load_in(&d, "api/ok.yaml").unwrap();
        assert_eq!(doc.files.len(), 2);
    }

    #[test]
    fn bundles_files_with_a_cycle_and_every_ref_local() {
        let d = dir(&[
            (
                "api/shop.yaml",
                r##"
openapi: 3.1.0
info: {title: t, version: "1"}
paths:
  /pay:
    $ref: 'paths.yaml#/~1pay'
components:
  schemas:
    Currency: {type: string, enum: [EUR, USD]}
"##,
            ),
            (
                "api/paths.yaml",
                r##"
/pay:
  post:
    requestBody:
      content:
        application/json:
          schema: {$ref: 'common.yaml#/components/schemas/Payment'}
    responses:
      "201":
        description: created
        content:
          application/json:
            schema: {$ref: './money.yaml'}
"##,
            ),
            (
                "api/common.yaml",
                r##"
components:
  schemas:
    Payment:
      type: object
      required: [amount, card]
      properties:
        amount: {$ref: 'money.yaml'}
        card: {$ref: 'schemas/card.json#/Card'}
        back: {$ref: '#/components/schemas/Payment'}
"##,
            ),
            (
                "api/money.yaml",
                r##"
type: object
required: [value, currency]
properties:
  value: {type: [integer, "null"], format: int32}
  currency: {$ref: 'shop.yaml#/components/schemas/Currency'}
"##,
            ),
            (
                "api/schemas/card.json",
                r##"{"Card": {"type": "string", "pattern": "^[0-9]{16}$", "description": "a {card}"}}"##,
            ),
        ]);
        let doc = load_in(&d, "api/shop.yaml").unwrap();
        assert_eq!(doc.version, Version::V31);
        let root = &doc.request_root;
        let mut refs = Vec::new();
        all_refs(root, &mut refs);
        refs.sort();
        assert_eq!(
            refs,
            [
                "#/components/schemas/Currency",
                "#/x-portcullis-files/1/~1pay",
                "#/x-portcullis-files/2/components/schemas/Payment",
                "#/x-portcullis-files/2/components/schemas/Payment",
                "#/x-portcullis-files/3",
                "#/x-portcullis-files/3",
                "#/x-portcullis-files/4/Card",
            ]
        );
        let sources = root.get("x-portcullis-sources").unwrap();
        let prefix = normalize(d.path());
        assert_eq!(
            sources,
            &json!([
                format!("{prefix}/api/shop.yaml"),
                format!("{prefix}/api/paths.yaml"),
                format!("{prefix}/api/common.yaml"),
                format!("{prefix}/api/money.yaml"),
                format!("{prefix}/api/schemas/card.json"),
            ])
        );
        assert_eq!(
            locate(root, &doc.source, "/x-portcullis-files/4/Card"),
            format!("{prefix}/api/schemas/card.json#/Card")
        );
        assert_eq!(
            locate(root, &doc.source, "/paths"),
            format!("{prefix}/api/shop.yaml#/paths")
        );

        let pay = op(&doc, "POST /pay");
        assert_eq!(pay.pointer, "/x-portcullis-files/1/~1pay/post");
        let body = pay.body.as_ref().unwrap();
        let ptr = body.media[0].schema.as_deref().unwrap();
        let v = validator(&doc, true, ptr);
        let card = "1234567812345678";
        assert!(v.is_valid(&json!({"amount": {"value": 5, "currency": "EUR"}, "card": card})));
        assert!(v.is_valid(&json!({"amount": {"value": null, "currency": "EUR"}, "card": card})));
        assert!(!v.is_valid(&json!({"amount": {"value": 5, "currency": "GBP"}, "card": card})));
        assert!(!v.is_valid(&json!({"amount": {"value": 5, "currency": "EUR"}, "card": "12"})));
        assert!(!v.is_valid(
            &json!({"amount": {"value": 2147483648_i64, "currency": "EUR"}, "card": card})
        ));
        let nested = json!({"amount": {"value": 1, "currency": "USD"}, "card": card,
            "back": {"amount": {"value": 1, "currency": "USD"}}});
        assert!(
            !v.is_valid(&nested),
            "the recursive reference checks `card`"
        );
        let r = pay.responses[0].media[0].schema.as_deref().unwrap();
        assert!(validator(&doc, false, r).is_valid(&json!({"value": 1, "currency": "USD"})));
    }

    #[test]
    fn reference_errors_are_located_at_the_reference() {
        let d = dir(&[
            (
                "shop.yaml",
                r##"
openapi: 3.0.3
info: {title: t, version: "1"}
paths:
  /orders:
    post:
      requestBody: {$ref: 'https://example.com/body.yaml'}
      parameters:
        - $ref: 'missing.yaml#/P'
        - $ref: 'common.yaml#/components/parameters/Nope'
        - $ref: '#/components/parameters/Nope'
        - $ref: '/etc/params.yaml'
        - $ref: 'common.yaml#Anchor'
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {$ref: 'urn:x:y'}
"##,
            ),
            ("common.yaml", "components: {parameters: {}}\n"),
        ]);
        assert_eq!(
            errors(&d, "shop.yaml"),
            [
                (
                    "shop.yaml#/paths/~1orders/post/parameters/0".to_owned(),
                    "cannot open missing.yaml: No such file or directory (os error 2)".to_owned()
                ),
                (
                    "shop.yaml#/paths/~1orders/post/parameters/3".to_owned(),
                    "absolute paths are not followed: name the file relative to this one"
                        .to_owned()
                ),
                (
                    "shop.yaml#/paths/~1orders/post/parameters/4".to_owned(),
                    "only JSON pointer fragments (#/…) are supported in references".to_owned()
                ),
                (
                    "shop.yaml#/paths/~1orders/post/requestBody".to_owned(),
                    "remote references are not fetched".to_owned()
                ),
                (
                    "shop.yaml#/paths/~1orders/post/responses/200/content/application~1json/schema"
                        .to_owned(),
                    "remote references are not fetched".to_owned()
                ),
                (
                    "shop.yaml#/paths/~1orders/post/parameters/1".to_owned(),
                    "there is nothing at common.yaml#/components/parameters/Nope".to_owned()
                ),
                (
                    "shop.yaml#/paths/~1orders/post/parameters/2".to_owned(),
                    "there is nothing at shop.yaml#/components/parameters/Nope".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn version_is_checked() {
        let cases = [
            ("openapi: '2.0'\npaths: {}", "must be 3.0.x or 3.1.x"),
            (
                "openapi: 3.1\npaths: {}",
                "must be a string such as \"3.1.0\" (quote it in YAML)",
            ),
            ("openapi: 3.2.0\npaths: {}", "must be 3.0.x or 3.1.x"),
            ("openapi: 3.0.x\npaths: {}", "must be 3.0.x or 3.1.x"),
            ("paths: {}", "is required (3.0.x or 3.1.x)"),
            (
                "swagger: '2.0'\npaths: {}",
                "is missing: Swagger 2.0 documents are not supported, convert to OpenAPI 3",
            ),
        ];
        for (text, message) in cases {
            let d = dir(&[("a.yaml", text)]);
            assert_eq!(
                errors(&d, "a.yaml"),
                [("a.yaml#/openapi".to_owned(), message.to_owned())],
                "{text}"
            );
        }
    }

    #[test]
    fn a_document_must_describe_operations() {
        let d = dir(&[
            ("a.yaml", "openapi: 3.1.0\ninfo: {title: t, version: '1'}\n"),
            ("b.yaml", "openapi: 3.0.0\ninfo: {title: t, version: '1'}\n"),
            ("c.yaml", "openapi: 3.0.0\npaths: {/x: {parameters: []}}\n"),
            ("d.yaml", "openapi: 3.0.0\npaths: [1]\n"),
            ("e.yaml", "- 1\n"),
        ]);
        let none = |f: &str| {
            vec![(
                format!("{f}#/paths"),
                "the document describes no operations".to_owned(),
            )]
        };
        assert_eq!(errors(&d, "a.yaml"), none("a.yaml"));
        assert_eq!(
            errors(&d, "b.yaml"),
            [("b.yaml#/paths".to_owned(), "is required".to_owned())]
        );
        assert_eq!(errors(&d, "c.yaml"), none("c.yaml"));
        assert_eq!(
            errors(&d, "d.yaml"),
            [(
                "d.yaml#/paths".to_owned(),
                "must be a mapping of path templates".to_owned()
            )]
        );
        assert_eq!(
            errors(&d, "e.yaml"),
            [(
                "e.yaml#".to_owned(),
                "must be a mapping (an OpenAPI document)".to_owned()
            )]
        );
    }

    const HEAD: &str = "openapi: 3.0.3\ninfo: {title: t, version: '1'}\n";

    #[test]
    fn path_parameters_must_match_the_template() {
        let d = dir(&[(
            "a.yaml",
            &format!(
                r#"{HEAD}paths:
  /a/{{id}}/{{sub}}:
    get:
      parameters:
        - {{name: id, in: path, required: true, schema: {{type: string}}}}
        - {{name: other, in: path, required: true, schema: {{type: string}}}}
        - {{name: sub, in: path, schema: {{type: string}}}}
      responses: {{}}
  /b/{{x:
    get: {{}}
  c:
    get: {{}}
  /d/{{a}}/{{a}}:
    get: {{}}
"#
            ),
        )]);
        assert_eq!(
            errors(&d, "a.yaml"),
            [
                (
                    "a.yaml#/paths/~1a~1{id}~1{sub}/get/parameters/2".to_owned(),
                    "a path parameter must have required: true".to_owned()
                ),
                (
                    "a.yaml#/paths/~1a~1{id}~1{sub}/get".to_owned(),
                    "the path template names {sub} but no path parameter sub is declared"
                        .to_owned()
                ),
                (
                    "a.yaml#/paths/~1a~1{id}~1{sub}/get/parameters/1".to_owned(),
                    "path parameter other is not in the path template".to_owned()
                ),
                (
                    "a.yaml#/paths/~1b~1{x".to_owned(),
                    "has a { that is not closed".to_owned()
                ),
                (
                    "a.yaml#/paths/c".to_owned(),
                    "a path template must start with /".to_owned()
                ),
                (
                    "a.yaml#/paths/~1d~1{a}~1{a}".to_owned(),
                    "names {a} twice".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn parameter_objects_are_checked() {
        let d = dir(&[(
            "a.yaml",
            &format!(
                r#"{HEAD}paths:
  /a:
    get:
      operationId: one
      parameters:
        - {{name: q, in: query, style: label, schema: {{type: string}}}}
        - {{name: h, in: header, style: form, schema: {{type: string}}}}
        - {{name: c, in: cookie, style: deepObject, schema: {{type: object}}}}
        - {{name: s, in: query, style: wavy, schema: {{type: string}}}}
        - {{name: e, in: body, schema: {{type: string}}}}
        - {{in: query, schema: {{type: string}}}}
        - {{name: n, in: query}}
        - {{name: b, in: query, schema: {{}}, content: {{application/json: {{}}}}}}
        - {{name: m, in: query, content: {{application/json: {{}}, text/plain: {{}}}}}}
        - {{name: r, in: query, required: yes please, schema: {{}}}}
        - {{name: d, in: query, schema: {{}}}}
        - {{name: d, in: query, schema: {{}}}}
        - {{$ref: '#/components/parameters/Loop'}}
    put:
      operationId: one
components:
  parameters:
    Loop: {{$ref: '#/components/parameters/Loop2'}}
    Loop2: {{$ref: '#/components/parameters/Loop'}}
"#
            ),
        )]);
        let p = "a.yaml#/paths/~1a/get/parameters";
        assert_eq!(
            errors(&d, "a.yaml"),
            [
                (
                    format!("{p}/0/style"),
                    "is not allowed for query parameters".to_owned()
                ),
                (
                    format!("{p}/1/style"),
                    "is not allowed for header parameters".to_owned()
                ),
                (
                    format!("{p}/2/style"),
                    "is not allowed for cookie parameters".to_owned()
                ),
                (
                    format!("{p}/3/style"),
                    "is not a parameter style".to_owned()
                ),
                (
                    format!("{p}/4/in"),
                    "must be path, query, header or cookie".to_owned()
                ),
                (
                    format!("{p}/5/name"),
                    "is required (a non-empty string)".to_owned()
                ),
                (format!("{p}/6"), "must have schema or content".to_owned()),
                (
                    format!("{p}/7"),
                    "must have either schema or content, not both".to_owned()
                ),
                (
                    format!("{p}/8/content"),
                    "must name exactly one media type".to_owned()
                ),
                (
                    format!("{p}/9/required"),
                    "must be true or false".to_owned()
                ),
                (
                    format!("{p}/11"),
                    "parameter d in query is declared twice".to_owned()
                ),
                (
                    format!("{p}/12"),
                    "the chain of references is longer than 32 (circular?)".to_owned()
                ),
                (
                    "a.yaml#/paths/~1a/put/operationId".to_owned(),
                    "the operation id is already used at a.yaml#/paths/~1a/get".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn bodies_and_responses_are_checked() {
        let d = dir(&[(
            "a.yaml",
            &format!(
                r#"{HEAD}paths:
  /a:
    post:
      requestBody:
        required: 1
        content:
          json: {{}}
          application/json: {{}}
          APPLICATION/JSON: {{}}
          text/plain: 5
      responses:
        "600": {{}}
        2xx: {{}}
        2XX: {{}}
        "200": 5
"#
            ),
        )]);
        let p = "a.yaml#/paths/~1a/post";
        assert_eq!(
            errors(&d, "a.yaml"),
            [
                (
                    format!("{p}/requestBody/required"),
                    "must be true or false".to_owned()
                ),
                (
                    format!("{p}/requestBody/content/json"),
                    "is not a media range (type/subtype)".to_owned()
                ),
                (
                    format!("{p}/requestBody/content/APPLICATION~1JSON"),
                    "names a media range already listed".to_owned()
                ),
                (
                    format!("{p}/requestBody/content/text~1plain"),
                    "must be a mapping (a Media Type Object)".to_owned()
                ),
                (
                    format!("{p}/responses/600"),
                    "is not a status code (200), range (2XX) or default".to_owned()
                ),
                (
                    format!("{p}/responses/2XX"),
                    "repeats a status already listed".to_owned()
                ),
                (format!("{p}/responses/200"), "must be a mapping".to_owned()),
            ]
        );
    }

    #[test]
    fn bad_schemas_are_located() {
        let d = dir(&[
            (
                "a.yaml",
                &format!(
                    r#"{HEAD}paths:
  /a:
    get:
      parameters:
        - {{name: q, in: query, schema: {{type: string, pattern: '[a-'}}}}
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {{$ref: 'b.yaml#/B'}}
components:
  schemas:
    Bad: {{type: object, properties: {{n: {{type: 7}}}}}}
    Look: {{type: string, pattern: '(?=a)b'}}
    Props: {{patternProperties: {{'(': {{}}}}}}
"#
                ),
            ),
            ("b.yaml", "B: {type: array, items: {minItems: -1}}\n"),
        ]);
        let found = errors(&d, "a.yaml");
        let locations: Vec<&str> = found.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            locations,
            [
                "a.yaml#/components/schemas/Bad/properties/n/type",
                "b.yaml#/B/items/minItems",
                "a.yaml#/components/schemas/Look/pattern",
                "a.yaml#/components/schemas/Props/patternProperties/(",
                "a.yaml#/paths/~1a/get/parameters/0/schema/pattern",
            ]
        );
        assert!(
            found[0].1.starts_with("is not a valid schema: "),
            "{}",
            found[0].1
        );
        assert!(
            found[2]
                .1
                .starts_with("is not a supported regular expression: "),
            "{}",
            found[2].1
        );
    }

    #[test]
    fn files_are_read_strictly() {
        let d = dir(&[
            (
                "keys.yaml",
                "openapi: 3.0.0\npaths:\n  /a:\n    get:\n      responses:\n        200: {description: ok}\n        [1]: {}\n",
            ),
            ("tag.yaml", "openapi: 3.0.0\npaths: !custom {}\n"),
            ("nan.yaml", "openapi: 3.0.0\nx-n: .nan\npaths: {}\n"),
            ("syntax.yaml", "openapi: 3.0.0\npaths: {\n"),
            ("syntax.json", "{\"openapi\": \"3.0.0\",}"),
            (
                "dup.yaml",
                "openapi: 3.0.0\nx-a: {200: 1, '200': 2}\npaths: {}\n",
            ),
            (
                "reserved.yaml",
                "openapi: 3.0.0\nx-portcullis-files: {}\npaths: {}\n",
            ),
        ]);
        assert_eq!(
            errors(&d, "keys.yaml"),
            [(
                "keys.yaml#/paths/~1a/get/responses".to_owned(),
                "has a key that is not a string".to_owned()
            )]
        );
        assert_eq!(
            errors(&d, "tag.yaml"),
            [(
                "tag.yaml#/paths".to_owned(),
                "is a tagged YAML value, which is not supported".to_owned()
            )]
        );
        assert_eq!(
            errors(&d, "nan.yaml"),
            [(
                "nan.yaml#/x-n".to_owned(),
                "must be a finite number".to_owned()
            )]
        );
        let syntax = errors(&d, "syntax.yaml");
        assert_eq!(syntax[0].0, "syntax.yaml");
        assert!(
            syntax[0].1.starts_with("is not valid YAML: "),
            "{}",
            syntax[0].1
        );
        let json_syntax = errors(&d, "syntax.json");
        assert_eq!(json_syntax[0].0, "syntax.json");
        assert!(
            json_syntax[0].1.starts_with("is not valid JSON: "),
            "{}",
            json_syntax[0].1
        );
        assert_eq!(
            errors(&d, "dup.yaml"),
            [(
                "dup.yaml#/x-a/200".to_owned(),
                "is a duplicate key".to_owned()
            )]
        );
        assert_eq!(
            errors(&d, "reserved.yaml"),
            [(
                "reserved.yaml#/x-portcullis-files".to_owned(),
                "is reserved for the gateway's own use".to_owned()
            )]
        );
        assert_eq!(
            errors(&d, "absent.yaml")[0].0,
            "absent.yaml",
            "an unreadable main file is located at the file"
        );
    }

    #[test]
    fn large_files_are_refused() {
        let d = dir(&[]);
        let f = std::fs::File::create(d.path().join("big.yaml")).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert_eq!(
            errors(&d, "big.yaml"),
            [("big.yaml".to_owned(), "is larger than 16 MiB".to_owned())]
        );
    }

    #[test]
    fn at_most_64_files() {
        let mut files: Vec<(String, String)> = (1..=MAX_FILES)
            .map(|i| (format!("s{i}.yaml"), format!("$ref: 's{}.yaml'\n", i + 1)))
            .collect();
        files.push((format!("s{}.yaml", MAX_FILES + 1), "type: string\n".into()));
        files.push((
            "main.yaml".into(),
            format!("{HEAD}paths: {{/a: {{get: {{parameters: [{{name: q, in: query, schema: {{$ref: 's1.yaml'}}}}]}}}}}}\n"),
        ));
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let d = dir(&refs);
        // main + s1..s63 fit; s63's reference to s64 is one too many.
        assert_eq!(
            errors(&d, "main.yaml"),
            [(
                "s63.yaml#".to_owned(),
                "more than 64 files are referenced".to_owned()
            )]
        );
    }

    /// The fields of a form body with their Encoding Objects, in both versions; a form
    /// elsewhere (a response, another type) gets none.
    #[test]
    fn form_bodies_read_their_encoding() {
        for version in ["3.0.3", "3.1.0"] {
            let d = dir(&[(
                "a.yaml",
                &format!(
                    r##"openapi: {version}
info: {{title: t, version: "1"}}
paths:
  /a:
    post:
      requestBody:
        content:
          application/x-www-form-urlencoded; charset=utf-8:
            schema:
              allOf:
                - $ref: "#/components/schemas/Base"
                - properties:
                    ids: {{type: array, items: {{type: integer}}}}
                    addr: {{type: object, properties: {{zip: {{type: integer}}}}}}
            encoding:
              ids: {{style: pipeDelimited, allowReserved: true}}
              addr: {{style: deepObject, explode: true, headers: {{}}}}
              age: {{contentType: application/json}}
              gone: {{style: form}}
          multipart/form-data:
            schema: {{$ref: "#/components/schemas/Base"}}
            encoding: {{age: {{style: nonsense}}}}
      responses:
        "200":
          description: ok
          content:
            application/x-www-form-urlencoded:
              schema: {{$ref: "#/components/schemas/Base"}}
components:
  schemas:
    Base:
      type: object
      properties:
        age: {{type: integer}}
        name: {{type: string, nullable: true}}
"##
                ),
            )]);
            let doc = load_in(&d, "a.yaml").unwrap();
            let body = doc.operations[0].body.as_ref().unwrap();
            let form = body.media[0].form.as_ref().unwrap();
            let f = |name: &str| form.fields.iter().find(|f| f.name == name).unwrap();
            assert_eq!(form.fields.len(), 4, "{version}: {form:?}");
            assert_eq!(f("ids").shape, Shape::Array(vec![ScalarType::Integer]));
            assert_eq!(
                (f("ids").style, f("ids").explode),
                (Style::PipeDelimited, false)
            );
            assert_eq!(
                f("addr").shape,
                Shape::Object(vec![("zip".into(), vec![ScalarType::Integer])])
            );
            assert_eq!(
                (f("addr").style, f("addr").explode),
                (Style::DeepObject, true)
            );
            assert_eq!((f("age").style, f("age").explode), (Style::Form, true));
            assert_eq!(f("age").content_type.as_deref(), Some("application/json"));
            assert_eq!((f("name").style, f("name").explode), (Style::Form, true));
            assert_eq!(form.unmatched_encodings, ["gone"]);
            // Multipart encodings are not read (nor checked); responses are not forms.
            assert!(body.media[1].form.is_none());
            assert!(doc.operations[0].responses[0].media[0].form.is_none());
        }
    }

    #[test]
    fn broken_form_encodings_are_located() {
        let d = dir(&[(
            "a.yaml",
            &format!(
                r#"{HEAD}paths:
  /a:
    post:
      requestBody:
        content:
          application/x-www-form-urlencoded:
            schema: {{type: object, properties: {{a: {{type: string}}, b: {{type: string}}}}}}
            encoding:
              a: {{style: matrix}}
              b: {{explode: "yes", contentType: 5}}
              c: 5
      responses: {{"200": {{description: ok}}}}
  /b:
    post:
      requestBody:
        content:
          application/x-www-form-urlencoded:
            schema: {{type: object}}
            encoding: []
      responses: {{"200": {{description: ok}}}}
"#
            ),
        )]);
        let p = "a.yaml#/paths/~1a/post/requestBody/content/application~1x-www-form-urlencoded";
        let q = "a.yaml#/paths/~1b/post/requestBody/content/application~1x-www-form-urlencoded";
        assert_eq!(
            errors(&d, "a.yaml"),
            [
                (
                    format!("{p}/encoding/a/style"),
                    "is not a style of form fields (form, spaceDelimited, pipeDelimited or \
                     deepObject)"
                        .to_owned()
                ),
                (
                    format!("{p}/encoding/b/explode"),
                    "must be true or false".to_owned()
                ),
                (
                    format!("{p}/encoding/b/contentType"),
                    "must be a string".to_owned()
                ),
                (
                    format!("{p}/encoding/c"),
                    "must be a mapping (an Encoding Object)".to_owned()
                ),
                (
                    format!("{q}/encoding"),
                    "must be a mapping of property names to Encoding Objects".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn json_31_documents() {
        let d = dir(&[(
            "api.json",
            r#"{
  "openapi": "3.1.0",
  "info": {"title": "t", "version": "1"},
  "paths": {
    "/b/{id}": {"get": {"operationId": "b",
      "parameters": [
        {"name": "id", "in": "path", "required": true, "style": "label", "explode": true,
         "schema": {"type": ["integer", "null"], "format": "int64"}},
        {"name": "ids", "in": "query", "explode": false,
         "schema": {"type": "array", "items": {"type": ["number", "string"]}}},
        {"name": "mode", "in": "query", "schema": {"anyOf": [{"type": "boolean"}, {"type": "string"}]}},
        {"name": "free", "in": "header", "schema": {}}
      ],
      "responses": {"200": {"description": "ok"}}}},
    "/a": {"get": {"responses": {"200": {"description": "ok"}}}}
  },
  "components": {"schemas": {
    "N": {"type": "string", "nullable": true, "exclusiveMinimum": 5, "format": "int32"}
  }}
}"#,
        )]);
        let doc = load_in(&d, "api.json").unwrap();
        assert_eq!(doc.version, Version::V31);
        let ids: Vec<&str> = doc.operations.iter().map(|o| o.id.as_str()).collect();
        assert_eq!(ids, ["b", "GET /a"], "JSON files keep document order too");
        let b = op(&doc, "b");
        assert_eq!(
            (b.parameters[0].style, b.parameters[0].explode),
            (Style::Label, true)
        );
        assert_eq!(
            b.parameters[0].shape,
            Shape::Scalar(vec![ScalarType::Integer, ScalarType::Null])
        );
        assert_eq!(
            b.parameters[1].shape,
            Shape::Array(vec![ScalarType::Number, ScalarType::String])
        );
        assert_eq!(
            b.parameters[2].shape,
            Shape::Scalar(vec![ScalarType::Boolean, ScalarType::String])
        );
        assert_eq!(b.parameters[3].shape, Shape::Scalar(vec![]));
        // 3.1 schemas stay as written (only integer formats gain their range).
        assert_eq!(
            doc.request_root.pointer("/components/schemas/N").unwrap(),
            &json!({"type": "string", "nullable": true, "exclusiveMinimum": 5, "format": "int32",
                    "maximum": 2147483647})
        );
        let v = validator(&doc, true, "/components/schemas/N");
        assert!(!v.is_valid(&json!(null)), "nullable means nothing in 3.1");
        let id = validator(&doc, true, b.parameters[0].schema.as_deref().unwrap());
        assert!(id.is_valid(&json!(i64::MAX)));
        assert!(id.is_valid(&json!(null)));
        assert!(!id.is_valid(&json!(u64::MAX)));
    }

    #[test]
    fn pointers_are_escaped_and_fragments_encoded() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
        assert_eq!(unescape("a~1b~0c"), "a/b~c");
        assert_eq!(
            pointer_fragment("/paths/~1a~1{id} x/%"),
            "/paths/~1a~1%7Bid%7D%20x/%25"
        );
        assert_eq!(local_target("#/a/%7Bb%7D"), Some("/a/{b}".to_owned()));
        assert_eq!(local_target("#x"), None);
        assert_eq!(local_target("other.yaml#/x"), None);
        assert!(has_scheme("https://x/y"));
        assert!(has_scheme("urn:a"));
        assert!(!has_scheme("a/b:c.yaml"));
        assert!(!has_scheme("./x.yaml"));
        assert_eq!(normalize(Path::new("./a/./b/../c.yaml")), "a/c.yaml");
        assert_eq!(normalize(Path::new("../a/../../c.yaml")), "../../c.yaml");
        assert_eq!(status_key("2xX"), Some("2XX".to_owned()));
        assert_eq!(status_key("099"), None);
        assert_eq!(status_key("20"), None);
        let e = LoadError {
            location: "a.yaml#/x".into(),
            message: "is wrong".into(),
        };
        assert_eq!(e.to_string(), "a.yaml#/x: is wrong");
    }

    #[test]
    fn refs_in_examples_are_data() {
        let d = dir(&[(
            "a.yaml",
            &format!(
                r#"{HEAD}paths:
  /a:
    get:
      parameters:
        - name: q
          in: query
          example: {{$ref: 'nowhere.yaml'}}
          schema:
            type: object
            properties:
              example: {{$ref: '#/components/schemas/S'}}
            enum: [{{$ref: 'nowhere.yaml'}}]
components:
  schemas:
    S: {{type: string}}
"#
            ),
        )]);
        let doc = load_in(&d, "a.yaml").unwrap();
        assert_eq!(
            doc.request_root
                .pointer("/paths/~1a/get/parameters/0/example/$ref")
                .unwrap(),
            "nowhere.yaml"
        );
        assert_eq!(
            doc.operations[0].parameters[0].shape,
            Shape::Object(vec![("example".into(), vec![ScalarType::String])])
        );
    }

    #[test]
    fn of_thirty_linked_schemas_only_those_operations_name_are_compiled() {
        let mut schemas = String::new();
        let mut params = String::new();
        for i in 0..30 {
            schemas.push_str(&format!(
                "    S{i}: {{type: object, required: [a], properties: {{a: {{type: string, format: email}}, b: {{$ref: '#/components/schemas/S{}'}}, c: {{type: integer, format: int64, nullable: true}}}}}}\n",
                (i + 1) % 30
            ));
            params.push_str(&format!(
                "        - {{name: p{i}, in: query, schema: {{$ref: '#/components/schemas/S{i}'}}}}\n"
            ));
        }
        let text = format!(
            "{HEAD}paths:\n  /a:\n    post:\n      parameters:\n{params}      requestBody:\n        content:\n          application/json:\n            schema: {{$ref: '#/components/schemas/S0'}}\n      responses:\n        '200':\n          description: ok\n          content:\n            application/json:\n              schema: {{$ref: '#/components/schemas/S1'}}\ncomponents:\n  schemas:\n{schemas}"
        );
        let d = dir(&[("a.yaml", &text)]);
        let doc = load_in(&d, "a.yaml").unwrap();
        let validators = crate::schema::compile_all(&doc).unwrap();
        let v = validators.request("/components/schemas/S0").is_none();
        assert!(v, "only what operations name is compiled");
        let p0 = doc.operations[0].parameters[0].schema.as_deref().unwrap();
        assert!(
            validators
                .request(p0)
                .unwrap()
                .is_valid(&json!({"a": "x@y.org", "c": null}))
        );
    }

    /// `security`: the operation's own, else the document's; an empty list, or `{}` among
    /// the alternatives, requires nothing; schemes are read (through a `$ref`) once, and a
    /// requirement naming a missing or malformed scheme is an error located where it is named.
    #[test]
    fn security_requirements_are_read_with_their_schemes() {
        let d = dir(&[(
            "a.yaml",
            r##"openapi: 3.1.0
info: { title: t, version: "1" }
components:
  securitySchemes:
    o: { type: openIdConnect, openIdConnectUrl: "https://i/.well-known/openid-configuration" }
    k: { $ref: "#/components/securitySchemes/k2" }
    k2: { type: apiKey, in: query, name: key }
    b: { type: http, scheme: Basic }
    t: { type: http, scheme: bearer }
security: [ { o: [read] } ]
paths:
  /x:
    get: { responses: { "200": { description: ok } } }
    put: { security: [ { k: [admin], t: [] }, { b: [] } ], responses: { "200": { description: ok } } }
    post: { security: [], responses: { "200": { description: ok } } }
    patch: { security: [ { t: [] }, {} ], responses: { "200": { description: ok } } }
"##,
        )]);
        let doc = load_in(&d, "a.yaml").unwrap();
        let use_ = |name: &str, kind: SchemeKind, values: &[&str]| SchemeUse {
            name: name.into(),
            kind,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert_eq!(
            op(&doc, "GET /x").security,
            Some(vec![vec![use_("o", SchemeKind::OAuth, &["read"])]])
        );
        assert_eq!(
            op(&doc, "PUT /x").security,
            Some(vec![
                vec![
                    use_("k", SchemeKind::ApiKey, &["admin"]),
                    use_("t", SchemeKind::Bearer, &[])
                ],
                vec![use_("b", SchemeKind::Other("http Basic".into()), &[])],
            ])
        );
        assert_eq!(op(&doc, "POST /x").security, None);
        assert_eq!(op(&doc, "PATCH /x").security, None);

        let d = dir(&[(
            "a.yaml",
            r#"openapi: 3.1.0
info: { title: t, version: "1" }
components:
  securitySchemes:
    h: { type: http }
    w: { type: password }
security: { o: [] }
paths:
  /x:
    get: { security: [ { nope: [] }, { h: [] }, { h: [] } ], responses: { "200": { description: ok } } }
    put: { security: [ { w: "all" }, 3 ], responses: { "200": { description: ok } } }
    post: { security: [ { w: [] } ], responses: { "200": { description: ok } } }
"#,
        )]);
        assert_eq!(
            errors(&d, "a.yaml"),
            [
                ("a.yaml#/security", "must be a list of security requirements"),
                (
                    "a.yaml#/paths/~1x/get/security/0/nope",
                    "names the security scheme nope, which components/securitySchemes does not define"
                ),
                (
                    "a.yaml#/components/securitySchemes/h",
                    "an http security scheme needs scheme"
                ),
                (
                    "a.yaml#/paths/~1x/put/security/0/w",
                    "must be a list of scope or role names"
                ),
                (
                    "a.yaml#/paths/~1x/put/security/1",
                    "must be a mapping of security scheme names to lists"
                ),
                (
                    "a.yaml#/components/securitySchemes/w/type",
                    "password is not a security scheme type"
                ),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }
}
