//! What an OpenAPI document describes, after loading: the shared vocabulary of the loader
//! (`openapi`), the parameter parser (`params`), the body checks (`json`, `fields`) and the
//! step itself.
//!
//! Schemas are not copied into this model: they stay in the bundled document
//! ([`Document::request_root`] / [`Document::response_root`]) and are named by JSON pointer,
//! so `$ref`s between them keep working and each schema is compiled once.

use std::sync::Arc;

use serde_json::Value;

/// The OpenAPI version a document declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 3.0.x: schemas are an extended subset of JSON Schema draft 4 (`nullable`, boolean
    /// `exclusiveMinimum` …) and are converted to JSON Schema 2020-12 on load.
    V30,
    /// 3.1.x: schemas are JSON Schema 2020-12 (the OAS dialect) and are used as written.
    V31,
}

/// A loaded, bundled and converted OpenAPI document.
#[derive(Debug, Clone)]
pub struct Document {
    pub version: Version,
    /// The file it was loaded from, as the operator wrote it (for error messages).
    pub source: String,
    /// Every file the document is made of, the main one first (watched for reload).
    pub files: Vec<std::path::PathBuf>,
    /// The whole document with every external `$ref` pulled in (each other file is placed under
    /// `/x-portcullis-files/<n>` and its references rewritten to point there), every Schema
    /// Object converted to JSON Schema 2020-12, and — in this request view — `readOnly`
    /// properties removed from `required` lists.
    pub request_root: Arc<Value>,
    /// The same, in the response view: `writeOnly` properties removed from `required` lists.
    pub response_root: Arc<Value>,
    /// Every operation, in document order.
    pub operations: Vec<OperationDef>,
}

/// One operation: a method on a path template.
#[derive(Debug, Clone)]
pub struct OperationDef {
    /// `operationId`, else `METHOD /template`.
    pub id: String,
    pub method: http::Method,
    /// The OpenAPI path template as written (`/products/{id}`), without any server prefix.
    pub path: String,
    /// Path-level and operation-level parameters merged (the operation's win on the same
    /// name and location).
    pub parameters: Vec<ParamDef>,
    pub body: Option<BodyDef>,
    pub responses: Vec<ResponseDef>,
    /// The operation's JSON pointer in the main document (`/paths/~1products/post`).
    pub pointer: String,
    /// What credentials the operation requires (its own `security`, else the document's):
    /// alternatives, any one of which suffices, each a list of schemes that must all hold.
    /// `None` when the operation can be called without credentials (no requirement, an empty
    /// list, or an empty requirement `{}` among the alternatives).
    pub security: Option<Vec<Vec<SchemeUse>>>,
}

/// What a security scheme asks for, as far as the gateway can verify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemeKind {
    /// `apiKey`: an API key (read where the gateway's `auth.api_keys` says, not where the
    /// document does).
    ApiKey,
    /// `http` with scheme `bearer`: a bearer token.
    Bearer,
    /// `oauth2` or `openIdConnect`: a bearer token holding the scopes the requirement lists.
    OAuth,
    /// `mutualTLS`: a client certificate.
    MutualTls,
    /// Anything else (`http` `basic`, `digest` …): not a credential the gateway verifies;
    /// the text says what it is.
    Other(String),
}

/// One scheme of a security requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemeUse {
    /// The scheme's name in `components/securitySchemes`.
    pub name: String,
    pub kind: SchemeKind,
    /// The scopes (`oauth2`, `openIdConnect`) or roles (other types, OpenAPI 3.1) listed.
    pub values: Vec<String>,
}

/// Where a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum In {
    Path,
    Query,
    Header,
    Cookie,
}

impl In {
    /// The prefix of violation locations: `path`, `query`, `header`, `cookie`.
    pub fn as_str(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
            In::Cookie => "cookie",
        }
    }
}

/// How an array or object parameter is serialised (OpenAPI `style`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Path, header: `1,2,3` / `a,1,b,2` (exploded objects: `a=1,b=2`).
    Simple,
    /// Path: `.1.2.3`.
    Label,
    /// Path: `;id=1,2,3` / `;id=1;id=2`.
    Matrix,
    /// Query, cookie: `id=1&id=2` (exploded) or `id=1,2`.
    Form,
    /// Query arrays: `id=1%202%203`.
    SpaceDelimited,
    /// Query arrays: `id=1|2|3`.
    PipeDelimited,
    /// Query objects: `filter[color]=red`.
    DeepObject,
}

/// The JSON type a parameter's raw text is read as, taken from its schema's `type` (after
/// following `$ref`s). Several types (`[integer, string]`) are tried in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarType {
    String,
    Integer,
    Number,
    Boolean,
    Null,
}

/// The shape of a parameter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// A parameter described by `content` (one media type, JSON): its raw text is parsed as JSON.
    Json,
    /// One value, read as the first of these types that parses (empty: as a string).
    Scalar(Vec<ScalarType>),
    /// An array whose items are read as these types.
    Array(Vec<ScalarType>),
    /// An object whose properties are read by their own types (properties not listed: as
    /// strings).
    Object(Vec<(String, Vec<ScalarType>)>),
}

/// One parameter of an operation.
#[derive(Debug, Clone)]
pub struct ParamDef {
    pub name: String,
    pub location: In,
    /// Always true for path parameters.
    pub required: bool,
    pub style: Style,
    pub explode: bool,
    pub allow_empty_value: bool,
    pub shape: Shape,
    /// Pointer of its schema in [`Document::request_root`], if it has one.
    pub schema: Option<String>,
    /// Pointer of the Parameter Object (for configuration errors).
    pub pointer: String,
}

/// An operation's request body.
#[derive(Debug, Clone)]
pub struct BodyDef {
    pub required: bool,
    pub media: Vec<MediaDef>,
}

/// One media type of a body or response: `application/json`, `application/*+json`, `*/*`.
#[derive(Debug, Clone)]
pub struct MediaDef {
    /// Lowercase media range without parameters.
    pub range: String,
    /// Pointer of its schema in the request (bodies) or response (responses) root.
    pub schema: Option<String>,
    /// How a body of it is read as a form: set for a request body's
    /// [`FORM`] range with a schema.
    pub form: Option<FormDef>,
}

/// The one media type whose bodies are read as forms (the name/value pairs of the WHATWG
/// `application/x-www-form-urlencoded` parser).
pub const FORM: &str = "application/x-www-form-urlencoded";

/// Whether a `Content-Type` value is [`FORM`] (any case, with any parameters).
pub fn is_form_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(FORM))
}

/// The fields of a form body: the properties its schema declares at the top level (through
/// `$ref` and `allOf`/`anyOf`/`oneOf`, as a parameter's are found), each with the `style` and
/// `explode` its Encoding Object gives it (`requestBody.content[type].encoding[name]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormDef {
    pub fields: Vec<FormField>,
    /// Encoding Objects that name no property of the schema (ignored; warned of at load).
    pub unmatched_encodings: Vec<String>,
}

/// One declared property of a form body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormField {
    pub name: String,
    /// Its value's shape: scalar, array (of scalars) or object (of scalars).
    pub shape: Shape,
    /// `form` (default), `spaceDelimited`, `pipeDelimited` or `deepObject`.
    pub style: Style,
    /// Default: true for `form`, false otherwise.
    pub explode: bool,
    /// The Encoding Object's `contentType`, when it names a type other than `text/plain`
    /// (not applied: the value is read as text; warned of at load).
    pub content_type: Option<String>,
}

/// One declared response.
#[derive(Debug, Clone)]
pub struct ResponseDef {
    /// `200`, `2XX` (uppercase) or `default`.
    pub status: String,
    pub media: Vec<MediaDef>,
}

impl ResponseDef {
    /// Whether this entry covers `status`. Exact codes beat ranges, ranges beat `default`:
    /// callers pick with [`pick_response`].
    pub fn covers(&self, status: u16) -> bool {
        match self.status.as_bytes() {
            b"default" => true,
            [c, b'X', b'X'] => status / 100 == u16::from(c.wrapping_sub(b'0')),
            _ => self.status.parse::<u16>().is_ok_and(|s| s == status),
        }
    }
}

/// The response entry that describes `status`: the exact code, else its range (`4XX`), else
/// `default`. `def` finds each item's [`ResponseDef`] (items may be compiled wrappers).
pub fn pick_response<T>(items: &[T], status: u16, def: impl Fn(&T) -> &ResponseDef) -> Option<&T> {
    let exact = |r: &&T| def(r).status.parse::<u16>().is_ok_and(|s| s == status);
    let range = |r: &&T| def(r).status != "default" && def(r).covers(status);
    items
        .iter()
        .find(exact)
        .or_else(|| items.iter().find(range))
        .or_else(|| items.iter().find(|r| def(r).status == "default"))
}

/// Whether a media type (`application/json; charset=utf-8`) falls in a range
/// (`application/json`, `application/*`, `*/*`, `application/*+json`). Case-insensitive;
/// parameters are ignored.
pub fn media_matches(range: &str, media: &str) -> bool {
    let media = media.split(';').next().unwrap_or("").trim();
    let (mt, ms) = media.split_once('/').unwrap_or((media, ""));
    let (rt, rs) = range.split_once('/').unwrap_or((range, ""));
    // `*/json` and `*/*+json` still name their subtype: only `*/*` takes every type.
    if rt != "*" && !rt.eq_ignore_ascii_case(mt) {
        return false;
    }
    if rs == "*" {
        return true;
    }
    if let Some(suffix) = rs.strip_prefix("*+") {
        return ms
            .rsplit_once('+')
            .is_some_and(|(_, s)| s.eq_ignore_ascii_case(suffix));
    }
    rs.eq_ignore_ascii_case(ms)
}

/// The most specific declared media range that `media` falls in: the subtype first (exact,
/// then `*+suffix`, then `*`), then the type (exact before `*`) — `text/json`, `*/json`,
/// `text/*+json`, `*/*+json`, `text/*`, `*/*`. `range` finds each item's range (items may be
/// compiled wrappers).
pub fn pick_media<'a, T>(items: &'a [T], media: &str, range: impl Fn(&T) -> &str) -> Option<&'a T> {
    let specificity = |r: &str| {
        let (t, sub) = r.split_once('/').unwrap_or((r, ""));
        let sub = match sub {
            "*" => 0,
            s if s.starts_with("*+") => 1,
            _ => 2,
        };
        sub * 2 + u8::from(t != "*")
    };
    items
        .iter()
        .filter(|m| media_matches(range(m), media))
        .max_by_key(|m| specificity(range(m)))
}

/// Whether a declared media range (or type) is JSON-like: a subtype `json` or `x-json`, or one
/// ending in `+json`, under any type (`application/json`, `text/json`, `application/x-json`,
/// `application/*+json`, `*/*+json`). Parameters are ignored.
pub fn is_json_media(media: &str) -> bool {
    let media = media.split(';').next().unwrap_or("").trim();
    let Some((_, sub)) = media.split_once('/') else {
        return false;
    };
    sub.eq_ignore_ascii_case("json")
        || sub.eq_ignore_ascii_case("x-json")
        || sub
            .rsplit_once('+')
            .is_some_and(|(_, s)| s.eq_ignore_ascii_case("json"))
}

/// Whether a `Content-Type` value is read as JSON: a well-formed JSON-like type (see
/// [`is_json_media`]), with any parameters — the response filter's test too.
pub use portcullis_core::is_json_content_type as is_json_type;

/// Whether every `charset` parameter of a `Content-Type` value is `utf-8` or `utf8`
/// (case-insensitive, quoted or not); true when there is none. An unterminated quoted value,
/// of any parameter, counts as another charset: a reader that splits at `;` would find the
/// `charset` inside it (`x="; charset=utf-16`).
pub fn charset_is_utf8(content_type: &str) -> bool {
    let Some((_, mut rest)) = content_type.split_once(';') else {
        return true;
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return true;
        }
        let (name, after) = rest.split_at(rest.find(['=', ';']).unwrap_or(rest.len()));
        let name = name.trim();
        let mut value = String::new();
        match after.strip_prefix('=').map(str::trim_start) {
            Some(quoted) if quoted.starts_with('"') => {
                let mut end = None;
                let mut chars = quoted.char_indices().skip(1);
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                let Some(end) = end else {
                    return false;
                };
                let tail = quoted.get(end..).unwrap_or("");
                rest = tail.find(';').and_then(|i| tail.get(i..)).unwrap_or("");
            }
            Some(token) => {
                let (v, tail) = token.split_at(token.find(';').unwrap_or(token.len()));
                value.push_str(v.trim());
                rest = tail;
            }
            None => rest = after,
        }
        if name.eq_ignore_ascii_case("charset")
            && !(value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8"))
        {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ranges() {
        assert!(media_matches(
            "application/json",
            "Application/JSON; charset=utf-8"
        ));
        assert!(media_matches("application/*", "application/xml"));
        assert!(media_matches("*/*", "text/plain"));
        assert!(media_matches(
            "application/*+json",
            "application/merge-patch+json"
        ));
        assert!(!media_matches("application/*+json", "application/json"));
        assert!(!media_matches("application/json", "application/jsonx"));
        assert!(!media_matches("text/*", "application/json"));
        // A wildcard type still names its subtype.
        assert!(media_matches("*/*+json", "text/vnd.x+json"));
        assert!(!media_matches("*/*+json", "text/plain"));
        assert!(media_matches("*/json", "text/JSON"));
        assert!(!media_matches("*/json", "application/xml"));
        let ranges = [
            "*/*",
            "text/*",
            "*/*+json",
            "text/*+json",
            "*/json",
            "text/json",
        ];
        let defs: Vec<MediaDef> = ranges
            .iter()
            .map(|r| MediaDef {
                range: (*r).into(),
                schema: None,
                form: None,
            })
            .collect();
        for (media, want) in [
            ("text/json", "text/json"),
            ("application/json", "*/json"),
            ("text/vnd.x+json", "text/*+json"),
            ("image/vnd.x+json", "*/*+json"),
            ("text/plain", "text/*"),
            ("image/png", "*/*"),
        ] {
            assert_eq!(
                pick_media(&defs, media, |m| &m.range).map(|m| m.range.as_str()),
                Some(want),
                "{media}"
            );
        }
        let defs = vec![
            MediaDef {
                range: "*/*".into(),
                schema: None,
                form: None,
            },
            MediaDef {
                range: "application/json".into(),
                schema: Some("/x".into()),
                form: None,
            },
        ];
        assert_eq!(
            pick_media(&defs, "application/json", |m| &m.range).map(|m| m.range.as_str()),
            Some("application/json")
        );
        assert_eq!(
            pick_media(&defs, "text/plain", |m| &m.range).map(|m| m.range.as_str()),
            Some("*/*")
        );
        assert!(is_json_media("application/problem+json"));
        assert!(!is_json_media("text/json5"));
        for range in [
            "text/json",
            "application/x-json",
            "*/*+json",
            "text/x-json; q=1",
        ] {
            assert!(is_json_media(range), "{range}");
        }
        assert!(!is_json_media("application/jsonx"));
    }

    #[test]
    fn json_content_types() {
        for ct in [
            "application/json",
            "Text/JSON; charset=utf-8",
            "application/x-json",
            "text/x-json",
            "application/vnd.api+json",
            "application/merge-patch+JSON ; profile=x",
        ] {
            assert!(is_json_type(ct), "{ct}");
        }
        for ct in [
            "text/plain",
            "text/json5",
            "application/jsonp",
            "application/x-json-stream",
            "application/+json",
            "application/x y+json",
            "application/json+xml",
            "*/json",
            "/json",
            "json",
            "",
        ] {
            assert!(!is_json_type(ct), "{ct}");
        }
    }

    #[test]
    fn charsets() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;CHARSET=\"UTF8\"",
            "application/json; ; charset = utf-8 ; x=\"a;b\"",
            "application/json; flag",
        ] {
            assert!(charset_is_utf8(ct), "{ct}");
        }
        for ct in [
            "application/json; charset=utf-7",
            "application/json; charset=\"utf-16\"",
            "application/json; charset=utf-8; charset=utf-7",
            "application/json; x=\"a;charset=utf-8\"; charset=latin1",
            "application/json; charset=\"utf-8",
            "application/json; x=\"; charset=utf-16",
            "application/json; charset=",
            "application/json; charset=\"utf\\-8\"x; charset=us-ascii",
        ] {
            assert!(!charset_is_utf8(ct), "{ct}");
        }
    }

    #[test]
    fn response_picking_prefers_exact_then_range_then_default() {
        let r = |s: &str| ResponseDef {
            status: s.into(),
            media: vec![],
        };
        let list = vec![r("default"), r("2XX"), r("201")];
        assert_eq!(
            pick_response(&list, 201, |r| r).map(|r| r.status.as_str()),
            Some("201")
        );
        assert_eq!(
            pick_response(&list, 200, |r| r).map(|r| r.status.as_str()),
            Some("2XX")
        );
        assert_eq!(
            pick_response(&list, 404, |r| r).map(|r| r.status.as_str()),
            Some("default")
        );
        assert!(pick_response(&[r("200")], 500, |r| r).is_none());
    }
}
