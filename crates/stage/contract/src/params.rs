//! Reading an operation's parameters from a request: each found by its location, split by its
//! `style` and `explode`, decoded and typed per its [`Shape`], ready for its schema.
//!
//! Input here is hostile: work is bounded (at most [`MAX_QUERY_PAIRS`] query pairs,
//! [`MAX_ITEMS`] items per value, [`MAX_JSON_BYTES`] of JSON), nothing panics, and violation
//! messages never quote what the client sent.
//!
//! Decoding: query names and values are percent-decoded with `+` as a space; path segments are
//! percent-decoded; header and cookie values are taken as they are (cookies are not
//! percent-decoded: clients disagree on whether to encode them). Text that is not UTF-8 after
//! decoding is a violation.
//!
//! Typing: a value's text is read as the first type its schema allows, in the order integer
//! (i64, else u64), number (finite), boolean (`true`/`false` only), null, string. Null is
//! only ever the empty text — and an empty query value is refused ("must not be empty") unless
//! the parameter sets `allowEmptyValue`, so `?tag=` gives `null` only then; the text `null` is
//! a string. A schema with no `type` reads everything as a string.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;
use portcullis_core::Violation;
use serde_json::{Map, Value};

use crate::json::JsonLimits;
use crate::model::{In, ParamDef, ScalarType, Shape, Style};
use portcullis_core::query::fold_name;

/// Query pairs looked at; more are a violation.
pub const MAX_QUERY_PAIRS: usize = 256;
/// Items of one array or object parameter.
pub const MAX_ITEMS: usize = 1024;
/// Text of a `content` (JSON) parameter.
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// Undeclared query names [`unknown_query`] returns.
pub const MAX_UNKNOWN: usize = 20;
/// Longest undeclared name [`unknown_query`] returns whole.
const MAX_NAME: usize = 64;
/// Cookies looked at.
const MAX_COOKIES: usize = 256;

/// What [`read`] needs of a request.
pub struct RawRequest<'a> {
    /// The raw query string (without `?`), still percent-encoded.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// The raw path segment (percent-encoded) the route captured for a template name.
    pub path_params: &'a dyn Fn(&str) -> Option<&'a str>,
}

/// Reads every parameter of `defs` from `req`: each one present and well-formed is pushed to
/// `values` as (its index in `defs`, its JSON value), for its schema to check; each problem
/// is pushed to `violations`, located `query:limit`, `path:id`, `header:x-tag` (lowercase),
/// `cookie:session` (the location alone is `query` for too many query pairs).
pub fn read(
    defs: &[ParamDef],
    req: &RawRequest<'_>,
    limits: &JsonLimits,
    values: &mut Vec<(usize, Value)>,
    violations: &mut Vec<Violation>,
) {
    // Rack 2 and older `parse_qs` also split the query on `;`: what they read after one is a
    // parameter this reader never saw (`q=x;limit=100000`, `q=x;admin=1`).
    if req.query.is_some_and(|q| q.contains(';')) {
        violations.push(Violation::new("query", SEMICOLON));
    }
    let query = Query::parse(req.query);
    // A name this reader cannot decode is a parameter it cannot judge (`filter[$where%FF]`
    // is `filter[$where�]` to a lenient application).
    if query.pairs.iter().any(|(n, _)| n.is_none()) {
        violations.push(Violation::new("query", NAME_NOT_UTF8));
    }
    let query_ok = !query.too_many;
    if query.too_many && defs.iter().any(|d| d.location == In::Query) {
        violations.push(Violation::new(
            "query",
            format!("too many query parameters (more than {MAX_QUERY_PAIRS})"),
        ));
    }
    let (cookies, cookies_ok) = if defs.iter().any(|d| d.location == In::Cookie) {
        match cookies(req.headers) {
            Ok(c) => (c, true),
            Err(message) => {
                violations.push(Violation::new("cookie", message));
                (Vec::new(), false)
            }
        }
    } else {
        (Vec::new(), true)
    };
    for (i, def) in defs.iter().enumerate() {
        let location = match def.location {
            In::Header => format!("header:{}", def.name.to_ascii_lowercase()),
            other => format!("{}:{}", other.as_str(), def.name),
        };
        let found = match def.location {
            In::Query if !query_ok => continue,
            In::Query => query.find(def),
            In::Path => path(def, (req.path_params)(&def.name)),
            In::Header => header(def, req.headers),
            In::Cookie if !cookies_ok => continue,
            In::Cookie => cookie(def, &cookies),
        };
        let result = found.map_err(|m| (None, m)).and_then(|f| match f {
            None => Ok(None),
            Some(found) => typed(def, found, limits),
        });
        match result {
            Ok(Some(value)) => values.push((i, value)),
            Ok(None) if def.required => violations.push(Violation::new(location, "is required")),
            Ok(None) => {}
            // An item or property is located below the parameter, as schema violations are
            // (`query:ids/1`).
            Err((Some(at), message)) => {
                violations.push(Violation::new(format!("{location}/{at}"), message));
            }
            Err((None, message)) => violations.push(Violation::new(location, message)),
        }
    }
}

/// The query names `defs` does not declare (decoded; exploded-object properties and
/// `name[prop]` of deepObject parameters count as declared), each once, at most
/// [`MAX_UNKNOWN`], each cut to 64 bytes with control characters replaced by `?`.
pub fn unknown_query(defs: &[ParamDef], query: Option<&str>) -> Vec<String> {
    let query = Query::parse(query);
    let mut out: Vec<String> = Vec::new();
    for name in undeclared(defs, &query) {
        let shown = printable(name);
        if !out.contains(&shown) {
            out.push(shown);
            if out.len() == MAX_UNKNOWN {
                break;
            }
        }
    }
    out
}

/// The undeclared query names (as [`unknown_query`] finds them) that an upstream framework
/// may read as a declared query parameter ([`fold_name`]: `limit[]`, ` limit`, `LIMIT`,
/// `user.role` for `user_role`), with the name they stand for: values that would escape that
/// parameter's schema where undeclared names are allowed. Each once, at most
/// [`MAX_UNKNOWN`], cut as [`unknown_query`] cuts them.
pub fn aliased_query(defs: &[ParamDef], query: Option<&str>) -> Vec<(String, String)> {
    let query = Query::parse(query);
    // The names, and the properties of exploded form objects (each a query name of its own).
    let mut declared: Vec<(String, &str)> = Vec::new();
    for d in defs.iter().filter(|d| d.location == In::Query) {
        declared.push((fold_name(&d.name), d.name.as_str()));
        if let Shape::Object(props) = &d.shape
            && d.explode
            && d.style == Style::Form
        {
            declared.extend(props.iter().map(|(p, _)| (fold_name(p), p.as_str())));
        }
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for name in undeclared(defs, &query) {
        let folded = fold_name(name);
        let Some((_, of)) = declared.iter().find(|(f, _)| *f == folded) else {
            continue;
        };
        let shown = printable(name);
        if !out.iter().any(|(n, _)| *n == shown) {
            out.push((shown, (*of).to_string()));
            if out.len() == MAX_UNKNOWN {
                break;
            }
        }
    }
    out
}

/// The names of `query`'s pairs that `defs` does not declare (an undecodable one as `""`).
fn undeclared<'q>(defs: &'q [ParamDef], query: &'q Query<'_>) -> impl Iterator<Item = &'q str> {
    query
        .pairs
        .iter()
        .map(|(name, _)| name.as_deref().unwrap_or(""))
        .filter(move |name| {
            !defs.iter().filter(|d| d.location == In::Query).any(|d| {
                d.name == *name
                    || (d.style == Style::DeepObject
                        && name
                            .strip_prefix(d.name.as_str())
                            .is_some_and(|rest| rest.starts_with('[') && rest.ends_with(']')))
                    || match &d.shape {
                        Shape::Object(props) if d.explode && d.style == Style::Form => {
                            props.iter().any(|(p, _)| p == name)
                        }
                        _ => false,
                    }
            })
        })
}

fn printable(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut s: String = name[..end]
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if end < name.len() {
        s.push('…');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Finding raw values

/// A parameter's text, split per its style, decoded, before typing.
enum Found {
    One(String),
    List(Vec<String>),
    Pairs(Vec<(String, String)>),
}

/// How a parameter is split: one text, a list, name/value pairs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    One,
    List,
    Pairs,
}

fn mode(shape: &Shape) -> Mode {
    match shape {
        Shape::Json | Shape::Scalar(_) => Mode::One,
        Shape::Array(_) => Mode::List,
        Shape::Object(_) => Mode::Pairs,
    }
}

/// `Ok(None)`: absent. `Err`: the violation message.
type Lookup = Result<Option<Found>, String>;

pub(crate) const NOT_UTF8: &str = "must be valid UTF-8 text";
pub(crate) const REPEATED: &str = "must not be repeated";
const EMPTY: &str = "must not be empty";
const PAIRS: &str = "must be a list of name,value pairs";
pub(crate) const DEEP_STYLE: &str = "must be in deepObject style (name[property]=value)";
pub(crate) const DEEP_NESTED: &str = "must not nest objects (name[a][b])";
const NAME_NOT_UTF8: &str = "parameter names must be UTF-8 text once percent-decoded";
const SEMICOLON: &str =
    "must not contain a raw `;` (some frameworks split the query on it): encode it as %3B";

/// A raw query name decoded as the parameters are read (`None`: not UTF-8).
pub(crate) fn query_name(raw: &str) -> Option<String> {
    decode_query(raw).ok()
}

/// A raw query (or form) component decoded: `+` as a space, then percent-decoded (a `%` not
/// followed by two hex digits stays as it is, as the WHATWG parser leaves it); `Err` when the
/// bytes are not UTF-8.
pub(crate) fn decode_query(raw: &str) -> Result<String, String> {
    let plus: Cow<'_, str> = if raw.contains('+') {
        Cow::Owned(raw.replace('+', " "))
    } else {
        Cow::Borrowed(raw)
    };
    percent_decode_str(&plus)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| NOT_UTF8.to_owned())
}

fn decode_path(raw: &str) -> Result<String, String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| NOT_UTF8.to_owned())
}

fn too_many<T>(items: &[T]) -> Result<(), String> {
    if items.len() > MAX_ITEMS {
        Err(format!("has too many items (more than {MAX_ITEMS})"))
    } else {
        Ok(())
    }
}

/// Splits `raw` on any of `delimiters` (checked with [`MAX_ITEMS`]), decoding each piece.
pub(crate) fn split(
    raw: &str,
    delimiters: &[&str],
    decode: fn(&str) -> Result<String, String>,
) -> Result<Vec<String>, String> {
    let mut pieces = vec![raw];
    for d in delimiters {
        pieces = pieces.into_iter().flat_map(|p| p.split(d)).collect();
        too_many(&pieces)?;
    }
    pieces.into_iter().map(decode).collect()
}

/// `a,1,b,2` → [(a, 1), (b, 2)].
fn pairs(items: Vec<String>) -> Result<Vec<(String, String)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err(PAIRS.to_owned());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// `a=1` items → [(a, 1)] (an item without `=` has an empty value).
fn assignments(items: Vec<String>) -> Vec<(String, String)> {
    items
        .into_iter()
        .map(|i| match i.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (i, String::new()),
        })
        .collect()
}

/// Delimiters of a query parameter's (or form field's) array items (raw, before decoding).
pub(crate) fn query_delimiters(style: Style) -> &'static [&'static str] {
    match style {
        Style::SpaceDelimited => &["%20", "+", " "],
        Style::PipeDelimited => &["|", "%7C", "%7c"],
        _ => &[","],
    }
}

struct Query<'a> {
    /// Decoded name (None: not UTF-8) and raw value.
    pairs: Vec<(Option<String>, &'a str)>,
    too_many: bool,
}

impl<'a> Query<'a> {
    fn parse(query: Option<&'a str>) -> Self {
        let mut pairs = Vec::new();
        let mut too_many = false;
        for piece in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == MAX_QUERY_PAIRS {
                too_many = true;
                break;
            }
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            pairs.push((decode_query(name).ok(), value));
        }
        Query { pairs, too_many }
    }

    fn values(&self, name: &str) -> Vec<&'a str> {
        self.pairs
            .iter()
            .filter(|(n, _)| n.as_deref() == Some(name))
            .map(|(_, v)| *v)
            .collect()
    }

    fn find(&self, def: &ParamDef) -> Lookup {
        let empty_ok = def.allow_empty_value;
        let mode = mode(&def.shape);
        if mode == Mode::Pairs && def.style == Style::DeepObject {
            return self.deep_object(def);
        }
        if mode == Mode::Pairs && def.explode && def.style == Style::Form {
            // Each property is a query parameter of its own.
            let Shape::Object(props) = &def.shape else {
                return Ok(None);
            };
            let mut out = Vec::new();
            for (prop, _) in props {
                match self.values(prop).as_slice() {
                    [] => {}
                    [v] => out.push((prop.clone(), decode_query(v)?)),
                    _ => return Err(REPEATED.to_owned()),
                }
            }
            return Ok((!out.is_empty()).then_some(Found::Pairs(out)));
        }
        let values = self.values(&def.name);
        if values.is_empty() {
            return Ok(None);
        }
        if values.iter().any(|v| v.is_empty()) && !empty_ok {
            return Err(EMPTY.to_owned());
        }
        let exploded_list = mode == Mode::List && def.explode;
        if values.len() > 1 && !exploded_list {
            return Err(REPEATED.to_owned());
        }
        match mode {
            Mode::One => Ok(Some(Found::One(decode_query(values[0])?))),
            Mode::List if exploded_list => {
                too_many(&values)?;
                let items: Result<Vec<String>, String> =
                    values.iter().map(|v| decode_query(v)).collect();
                let mut items = items?;
                if items.len() == 1 && items[0].is_empty() {
                    items.clear();
                }
                Ok(Some(Found::List(items)))
            }
            Mode::List if values[0].is_empty() => Ok(Some(Found::List(Vec::new()))),
            Mode::List => Ok(Some(Found::List(split(
                values[0],
                query_delimiters(def.style),
                decode_query,
            )?))),
            Mode::Pairs if values[0].is_empty() => Ok(Some(Found::Pairs(Vec::new()))),
            Mode::Pairs => {
                let items = split(values[0], query_delimiters(def.style), decode_query)?;
                Ok(Some(Found::Pairs(pairs(items)?)))
            }
        }
    }

    /// `name[prop]=value` pairs. The name alone (`name=…`) is refused: qs-style parsers read
    /// it as the whole value, which no property check would see.
    fn deep_object(&self, def: &ParamDef) -> Lookup {
        let mut out: Vec<(String, String)> = Vec::new();
        for (name, raw) in &self.pairs {
            let Some(name) = name else { continue };
            let Some(rest) = name.strip_prefix(def.name.as_str()) else {
                continue;
            };
            if rest.is_empty() {
                return Err(DEEP_STYLE.to_owned());
            }
            // `name[prop]x`: qs and PHP drop what follows the `]`, so it is `name[prop]` to
            // them; another name (`namex`) is another parameter.
            let Some(inner) = rest.strip_prefix('[') else {
                continue;
            };
            let Some(prop) = inner.strip_suffix(']') else {
                return Err(DEEP_STYLE.to_owned());
            };
            if prop.contains(['[', ']']) {
                return Err(DEEP_NESTED.to_owned());
            }
            if out.iter().any(|(p, _)| p == prop) {
                return Err(REPEATED.to_owned());
            }
            if raw.is_empty() && !def.allow_empty_value {
                return Err(EMPTY.to_owned());
            }
            out.push((prop.to_owned(), decode_query(raw)?));
            too_many(&out)?;
        }
        Ok((!out.is_empty()).then_some(Found::Pairs(out)))
    }
}

fn path(def: &ParamDef, raw: Option<&str>) -> Lookup {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let mode = mode(&def.shape);
    let found = match def.style {
        Style::Label => {
            let rest = raw
                .strip_prefix('.')
                .ok_or_else(|| "must be in label style (.value)".to_owned())?;
            match mode {
                Mode::One => Found::One(decode_path(rest)?),
                _ => {
                    // Non-exploded lists are `.a,b` (RFC 6570); OpenAPI 3.0's table shows
                    // `.a.b`, so that is read too when there is no comma.
                    let delimiter = if !def.explode && rest.contains(',') {
                        ","
                    } else {
                        "."
                    };
                    let items = if rest.is_empty() {
                        Vec::new()
                    } else {
                        split(rest, &[delimiter], decode_path)?
                    };
                    list_or_pairs(mode, def.explode, items)?
                }
            }
        }
        Style::Matrix => {
            let rest = raw
                .strip_prefix(';')
                .ok_or_else(|| "must be in matrix style (;name=value)".to_owned())?;
            let pieces = split(rest, &[";"], decode_path)?;
            let assigned = assignments(pieces);
            let mine = |assigned: &[(String, String)]| -> Vec<String> {
                assigned
                    .iter()
                    .filter(|(k, _)| *k == def.name)
                    .map(|(_, v)| v.clone())
                    .collect()
            };
            match mode {
                Mode::List if def.explode => Found::List(mine(&assigned)),
                Mode::Pairs if def.explode => Found::Pairs(assigned),
                _ => {
                    let values = mine(&assigned);
                    let [value] = values.as_slice() else {
                        return Err("must be in matrix style (;name=value)".to_owned());
                    };
                    match mode {
                        Mode::One => Found::One(value.clone()),
                        _ => {
                            let items = if value.is_empty() {
                                Vec::new()
                            } else {
                                value.split(',').map(str::to_owned).collect()
                            };
                            too_many(&items)?;
                            list_or_pairs(mode, false, items)?
                        }
                    }
                }
            }
        }
        // Simple, and anything else the loader would have refused.
        _ => match mode {
            Mode::One => Found::One(decode_path(raw)?),
            _ => {
                let items = if raw.is_empty() {
                    Vec::new()
                } else {
                    split(raw, &[","], decode_path)?
                };
                list_or_pairs(mode, def.explode, items)?
            }
        },
    };
    Ok(Some(found))
}

/// Items as a list, or as pairs: `k=v` items when exploded, `k,v,…` otherwise.
fn list_or_pairs(mode: Mode, explode: bool, items: Vec<String>) -> Result<Found, String> {
    Ok(match mode {
        Mode::Pairs if explode => Found::Pairs(assignments(items)),
        Mode::Pairs => Found::Pairs(pairs(items)?),
        _ => Found::List(items),
    })
}

fn header(def: &ParamDef, headers: &http::HeaderMap) -> Lookup {
    let Ok(name) = http::HeaderName::from_bytes(def.name.as_bytes()) else {
        return Ok(None);
    };
    // CGI, WSGI, Rack and PHP read `x_rate` as `x-rate`: a value under the other spelling
    // would reach the application unchecked.
    let wanted = name.as_str().as_bytes();
    if headers
        .keys()
        .any(|k| k != name && portcullis_core::same_name_folded(k.as_str().as_bytes(), wanted))
    {
        return Err(format!(
            "must be sent as {name}: a name with `_` for `-` is the same header to some \
             frameworks"
        ));
    }
    let mut joined = String::new();
    let mut any = false;
    for value in headers.get_all(&name) {
        let text = std::str::from_utf8(value.as_bytes()).map_err(|_| NOT_UTF8.to_owned())?;
        if any {
            joined.push(',');
        }
        joined.push_str(text);
        any = true;
    }
    if !any {
        return Ok(None);
    }
    let mode = mode(&def.shape);
    if mode == Mode::One {
        return Ok(Some(Found::One(joined)));
    }
    let items: Vec<String> = if joined.trim().is_empty() {
        Vec::new()
    } else {
        joined.split(',').map(|s| s.trim().to_owned()).collect()
    };
    too_many(&items)?;
    Ok(Some(list_or_pairs(mode, def.explode, items)?))
}

/// Every `name=value` of every `Cookie` field, names trimmed (`role =x` is `role`, as
/// lenient parsers read it). A field that is not visible ASCII, or more than [`MAX_COOKIES`]
/// cookies, is an error: skipping either would leave a cookie unchecked that the application
/// may still read.
///
/// A value holding a space, tab or comma (none is a cookie-octet, RFC 6265) is also read as
/// the parsers that split there read it (Python's `SimpleCookie` at a space: `x=1 role=admin`
/// is two cookies, `role` among them; Tomcat's legacy parser and Jetty also at a comma): each
/// `name=value` after such a separator in an unquoted value counts as a cookie too, so that
/// one the application may read is checked (and repeats the one sent apart).
fn cookies(headers: &http::HeaderMap) -> Result<Vec<(&str, &str)>, String> {
    let mut out = Vec::new();
    let mut inner = 0;
    for field in headers.get_all(http::header::COOKIE) {
        let text = field
            .to_str()
            .map_err(|_| "the Cookie header must be ASCII text".to_owned())?;
        for (name, value) in text.split(';').filter_map(|c| c.trim().split_once('=')) {
            if out.len() - inner == MAX_COOKIES {
                return Err(format!("too many cookies (more than {MAX_COOKIES})"));
            }
            out.push((name.trim(), value));
            // (A quoted value is one value to those parsers too.)
            let unquoted = !value.trim_start().starts_with('"');
            for (n, v) in value
                .split([' ', '\t', ','])
                .filter(|_| unquoted)
                .skip(1)
                .filter_map(|seg| seg.split_once('='))
                .filter(|(n, _)| !n.is_empty())
            {
                if inner == MAX_COOKIES {
                    return Err(format!("too many cookies (more than {MAX_COOKIES})"));
                }
                inner += 1;
                out.push((n, v));
            }
        }
    }
    Ok(out)
}

fn cookie(def: &ParamDef, cookies: &[(&str, &str)]) -> Lookup {
    let values = |name: &str| -> Vec<&str> {
        let folded = fold_name(name);
        cookies
            .iter()
            .filter(|(n, _)| *n == name || same_cookie(n, &folded))
            .map(|(_, v)| *v)
            .collect()
    };
    let mode = mode(&def.shape);
    if let (Mode::Pairs, true, Shape::Object(props)) = (mode, def.explode, &def.shape) {
        let mut out = Vec::new();
        for (prop, _) in props {
            match values(prop).as_slice() {
                [] => {}
                [v] => out.push((prop.clone(), (*v).to_owned())),
                _ => return Err(REPEATED.to_owned()),
            }
        }
        return Ok((!out.is_empty()).then_some(Found::Pairs(out)));
    }
    let found = values(&def.name);
    match (mode, found.as_slice()) {
        (_, []) => Ok(None),
        (Mode::List, many) if def.explode => Ok(Some(Found::List(
            many.iter().map(|v| (*v).to_owned()).collect(),
        ))),
        (_, [_, _, ..]) => Err(REPEATED.to_owned()),
        (Mode::One, [v]) => Ok(Some(Found::One((*v).to_owned()))),
        (_, [v]) => {
            let items: Vec<String> = if v.is_empty() {
                Vec::new()
            } else {
                v.split(',').map(str::to_owned).collect()
            };
            too_many(&items)?;
            Ok(Some(list_or_pairs(mode, false, items)?))
        }
    }
}

/// Whether the cookie named `name` may be read by the application as the declared cookie whose
/// name folds to `folded` ([`fold_name`]): PHP percent-decodes cookie names and reads `.`,
/// spaces and `[` as `_` (`user.role` is `$_COOKIE['user_role']`), and some frameworks ignore
/// case. Two cookies that may be the same one are a repeat.
fn same_cookie(name: &str, folded: &str) -> bool {
    fold_name(&percent_decode_str(name).decode_utf8_lossy()) == folded
}

// ---------------------------------------------------------------------------------------------
// Typing

/// What is wrong with a parameter: where below it (an array index, an object property), if
/// anywhere, and what.
type Fault = (Option<String>, String);

/// The JSON value of what was found, per the parameter's shape. `Ok(None)`: an allowed empty
/// value that its types cannot hold (left out, not an error).
fn typed(def: &ParamDef, found: Found, limits: &JsonLimits) -> Result<Option<Value>, Fault> {
    match (&def.shape, found) {
        (Shape::Json, Found::One(text)) => {
            if text.is_empty() && def.allow_empty_value {
                return Ok(None);
            }
            if text.len() > MAX_JSON_BYTES {
                return Err((
                    None,
                    format!("is too long (more than {} KiB)", MAX_JSON_BYTES / 1024),
                ));
            }
            // The body's parser and limits: duplicate keys, huge numbers and deep nesting are
            // refused here as they are in bodies.
            crate::json::parse(text.as_bytes(), limits)
                .map(Some)
                .map_err(|e| match e {
                    crate::json::JsonError::Malformed { .. } => {
                        (None, "must be valid JSON".to_owned())
                    }
                    e => {
                        let at = e.pointer().and_then(|p| p.strip_prefix('/'));
                        (at.map(str::to_owned), e.message())
                    }
                })
        }
        (Shape::Scalar(types), Found::One(text)) => match scalar(&text, types) {
            Some(v) => Ok(Some(v)),
            None if text.is_empty() && def.allow_empty_value => Ok(None),
            None => Err((None, format!("must be {}", describe(types)))),
        },
        (Shape::Array(types), Found::List(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let v = scalar(item, types)
                    .ok_or_else(|| (Some(i.to_string()), format!("must be {}", describe(types))))?;
                out.push(v);
            }
            Ok(Some(Value::Array(out)))
        }
        (Shape::Object(props), Found::Pairs(found)) => {
            let mut out = Map::new();
            for (name, text) in found {
                let declared = props.iter().find(|(p, _)| *p == name);
                let value = match declared {
                    Some((p, types)) => scalar(&text, types)
                        .ok_or_else(|| (Some(p.clone()), format!("must be {}", describe(types))))?,
                    None => Value::String(text),
                };
                if out.contains_key(&name) {
                    return Err((None, REPEATED.to_owned()));
                }
                out.insert(name, value);
            }
            Ok(Some(Value::Object(out)))
        }
        // Shapes and findings always agree (`mode` picks the finding from the shape).
        _ => Ok(None),
    }
}

const ORDER: [ScalarType; 5] = [
    ScalarType::Integer,
    ScalarType::Number,
    ScalarType::Boolean,
    ScalarType::Null,
    ScalarType::String,
];

/// `text` as the first of `types` (in [`ORDER`]) it reads as; no types: a string.
pub(crate) fn scalar(text: &str, types: &[ScalarType]) -> Option<Value> {
    if types.is_empty() {
        return Some(Value::String(text.to_owned()));
    }
    ORDER
        .iter()
        .filter(|t| types.contains(t))
        .find_map(|t| match t {
            ScalarType::Integer => integer(text),
            ScalarType::Number => integer(text).or_else(|| number(text)),
            ScalarType::Boolean => match text {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            ScalarType::Null => text.is_empty().then_some(Value::Null),
            ScalarType::String => Some(Value::String(text.to_owned())),
        })
}

/// `-?[0-9]+` within 64 bits.
fn integer(text: &str) -> Option<Value> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>()
        .map(Value::from)
        .ok()
        .or_else(|| text.parse::<u64>().map(Value::from).ok())
}

/// A finite decimal number (`1.5`, `-2e3`); not `inf`, `NaN` or hex.
fn number(text: &str) -> Option<Value> {
    let plausible = text.bytes().any(|b| b.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    if !plausible {
        return None;
    }
    let f = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    serde_json::Number::from_f64(f).map(Value::Number)
}

fn describe(types: &[ScalarType]) -> String {
    let words: Vec<&str> = ORDER
        .iter()
        .filter(|t| types.contains(t))
        .map(|t| match t {
            ScalarType::Integer => "an integer",
            ScalarType::Number => "a number",
            ScalarType::Boolean => "true or false",
            ScalarType::Null => "empty",
            ScalarType::String => "text",
        })
        .collect();
    words.join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ScalarType::{Boolean, Integer, Null, Number, String as Str};
    use serde_json::json;

    fn def(name: &str, location: In, style: Style, explode: bool, shape: Shape) -> ParamDef {
        ParamDef {
            name: name.into(),
            location,
            required: false,
            style,
            explode,
            allow_empty_value: false,
            shape,
            schema: None,
            pointer: String::new(),
        }
    }

    fn q(name: &str, style: Style, explode: bool, shape: Shape) -> ParamDef {
        def(name, In::Query, style, explode, shape)
    }

    fn obj(props: &[(&str, ScalarType)]) -> Shape {
        Shape::Object(props.iter().map(|(n, t)| ((*n).into(), vec![*t])).collect())
    }

    struct Req<'a> {
        query: Option<&'a str>,
        headers: http::HeaderMap,
        path: Vec<(&'a str, &'a str)>,
    }

    fn req(query: &str) -> Req<'_> {
        Req {
            query: Some(query),
            headers: http::HeaderMap::new(),
            path: Vec::new(),
        }
    }

    /// Reads `defs`: the values, and the violations as (location, message).
    type Outcome = (Vec<(usize, Value)>, Vec<(String, String)>);

    fn run(defs: &[ParamDef], r: &Req<'_>) -> Outcome {
        let lookup = |name: &str| r.path.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let raw = RawRequest {
            query: r.query,
            headers: &r.headers,
            path_params: &lookup,
        };
        let mut values = Vec::new();
        let mut violations = Vec::new();
        read(
            defs,
            &raw,
            &JsonLimits::default(),
            &mut values,
            &mut violations,
        );
        let v = violations
            .into_iter()
            .map(|v| (v.location, v.message))
            .collect();
        (values, v)
    }

    /// The one value read for a single parameter, or its one violation's message (prefixed
    /// `at <item or property>: ` when located below the parameter).
    fn one(d: ParamDef, r: &Req<'_>) -> Result<Value, String> {
        let (values, violations) = run(std::slice::from_ref(&d), r);
        match (values.as_slice(), violations.as_slice()) {
            ([(0, v)], []) => Ok(v.clone()),
            ([], [(l, m)]) => match l.split_once('/') {
                Some((_, at)) => Err(format!("at {at}: {m}")),
                None => Err(m.clone()),
            },
            other => panic!("unexpected {other:?}"),
        }
    }

    fn query(d: ParamDef, query: &str) -> Result<Value, String> {
        one(d, &req(query))
    }

    #[test]
    fn query_scalars() {
        let limit = || q("limit", Style::Form, true, Shape::Scalar(vec![Integer]));
        assert_eq!(query(limit(), "a=1&limit=5"), Ok(json!(5)));
        assert_eq!(query(limit(), "limit=-7"), Ok(json!(-7)));
        assert_eq!(
            query(limit(), "limit=18446744073709551615"),
            Ok(json!(u64::MAX))
        );
        assert_eq!(query(limit(), "limit=+5"), Err("must be an integer".into()));
        assert_eq!(
            query(limit(), "limit=1.5"),
            Err("must be an integer".into())
        );
        assert_eq!(
            query(limit(), "limit=99999999999999999999"),
            Err("must be an integer".into())
        );
        assert_eq!(
            query(limit(), "limit=5&limit=6"),
            Err("must not be repeated".into())
        );
        assert_eq!(query(limit(), "limit="), Err("must not be empty".into()));
        assert_eq!(query(limit(), "limit"), Err("must not be empty".into()));
        let (values, violations) = run(&[limit()], &req("other=1"));
        assert!(
            values.is_empty() && violations.is_empty(),
            "optional and absent"
        );
        let mut required = limit();
        required.required = true;
        let (_, violations) = run(&[required], &req(""));
        assert_eq!(
            violations,
            [("query:limit".to_owned(), "is required".to_owned())]
        );

        let text = || q("q", Style::Form, true, Shape::Scalar(vec![Str]));
        assert_eq!(query(text(), "q=a+b%20c%2B"), Ok(json!("a b c+")));
        assert_eq!(query(text(), "q=null"), Ok(json!("null")));
        assert_eq!(
            query(text(), "q=%FF"),
            Err("must be valid UTF-8 text".into())
        );
        assert_eq!(
            query(text(), "q%5B%5D=x&q=y"),
            Ok(json!("y")),
            "q[] is another name"
        );
        let untyped = q("u", Style::Form, true, Shape::Scalar(vec![]));
        assert_eq!(query(untyped, "u=5"), Ok(json!("5")));

        let num = || q("n", Style::Form, true, Shape::Scalar(vec![Number]));
        assert_eq!(query(num(), "n=1.5"), Ok(json!(1.5)));
        assert_eq!(query(num(), "n=-2e3"), Ok(json!(-2000.0)));
        assert_eq!(query(num(), "n=4"), Ok(json!(4)));
        for bad in ["inf", "NaN", "1e400", "0x10", "1.5.5", ""] {
            let expected = if bad.is_empty() {
                "must not be empty"
            } else {
                "must be a number"
            };
            assert_eq!(
                query(num(), &format!("n={bad}")),
                Err(expected.into()),
                "{bad}"
            );
        }
        let flag = || q("f", Style::Form, true, Shape::Scalar(vec![Boolean]));
        assert_eq!(query(flag(), "f=true"), Ok(json!(true)));
        assert_eq!(query(flag(), "f=false"), Ok(json!(false)));
        assert_eq!(query(flag(), "f=True"), Err("must be true or false".into()));
        let mixed = || {
            q(
                "m",
                Style::Form,
                true,
                Shape::Scalar(vec![Str, Boolean, Integer]),
            )
        };
        assert_eq!(
            query(mixed(), "m=1"),
            Ok(json!(1)),
            "integer is tried first"
        );
        assert_eq!(query(mixed(), "m=true"), Ok(json!(true)));
        assert_eq!(query(mixed(), "m=yes"), Ok(json!("yes")));
        let strict = q(
            "s",
            Style::Form,
            true,
            Shape::Scalar(vec![Boolean, Integer, Null]),
        );
        assert_eq!(
            query(strict, "s=x"),
            Err("must be an integer or true or false or empty".into())
        );
    }

    #[test]
    fn empty_values_when_allowed() {
        let allow = |shape: Shape| {
            let mut d = q("e", Style::Form, true, shape);
            d.allow_empty_value = true;
            d
        };
        assert_eq!(
            query(allow(Shape::Scalar(vec![Str, Null])), "e="),
            Ok(json!(null))
        );
        assert_eq!(query(allow(Shape::Scalar(vec![Str])), "e"), Ok(json!("")));
        let (values, violations) = run(&[allow(Shape::Scalar(vec![Integer]))], &req("e="));
        assert!(
            values.is_empty() && violations.is_empty(),
            "present without a value"
        );
        let (values, violations) = run(&[allow(Shape::Json)], &req("e="));
        assert!(values.is_empty() && violations.is_empty());
        assert_eq!(
            query(allow(Shape::Array(vec![Integer])), "e="),
            Ok(json!([]))
        );
        let mut flat = allow(Shape::Array(vec![Integer]));
        flat.explode = false;
        assert_eq!(query(flat, "e="), Ok(json!([])));
        let mut pairs = allow(obj(&[("a", Integer)]));
        pairs.explode = false;
        assert_eq!(query(pairs, "e="), Ok(json!({})));
    }

    #[test]
    fn query_arrays() {
        let ints = Shape::Array(vec![Integer]);
        let exploded = || q("ids", Style::Form, true, ints.clone());
        assert_eq!(query(exploded(), "ids=1&x=0&ids=2"), Ok(json!([1, 2])));
        assert_eq!(
            query(exploded(), "ids=1,2"),
            Err("at 0: must be an integer".into())
        );
        assert_eq!(
            query(exploded(), "ids=1&ids="),
            Err("must not be empty".into())
        );
        let form = || q("ids", Style::Form, false, ints.clone());
        assert_eq!(query(form(), "ids=1,2,3"), Ok(json!([1, 2, 3])));
        assert_eq!(
            query(form(), "ids=1,x"),
            Err("at 1: must be an integer".into())
        );
        assert_eq!(
            query(form(), "ids=1&ids=2"),
            Err("must not be repeated".into())
        );
        let words = q("w", Style::Form, false, Shape::Array(vec![Str]));
        assert_eq!(
            query(words, "w=a,b%2Cc,d+e"),
            Ok(json!(["a", "b,c", "d e"]))
        );
        let space = || q("ids", Style::SpaceDelimited, false, ints.clone());
        assert_eq!(query(space(), "ids=1%202+3"), Ok(json!([1, 2, 3])));
        assert_eq!(
            query(space(), "ids=1%FF"),
            Err("must be valid UTF-8 text".into())
        );
        let pipe = q("ids", Style::PipeDelimited, false, ints.clone());
        assert_eq!(query(pipe, "ids=1|2%7C3%7c4"), Ok(json!([1, 2, 3, 4])));
        let pipe_exploded = q("ids", Style::PipeDelimited, true, ints.clone());
        assert_eq!(query(pipe_exploded, "ids=1&ids=2"), Ok(json!([1, 2])));
        let many = format!("ids={}", vec!["1"; MAX_ITEMS + 1].join(","));
        assert_eq!(
            query(form(), &many),
            Err("has too many items (more than 1024)".into())
        );
        let many = vec!["ids=1"; MAX_ITEMS + 1].join("&");
        assert_eq!(
            query(exploded(), &many),
            Err("too many query parameters (more than 256)".into())
        );
        let under: String = vec!["ids=1"; 256].join("&");
        assert_eq!(
            query(exploded(), &under).map(|v| v.as_array().map(Vec::len)),
            Ok(Some(256))
        );
    }

    #[test]
    fn query_objects() {
        let shape = obj(&[("color", Str), ("size", Integer)]);
        let deep = || q("f", Style::DeepObject, true, shape.clone());
        // An undeclared property is read as text here; the field walk of the contract step
        // refuses it (or strips it) as it does a body's (stage tests: `object_parameters_*`).
        assert_eq!(
            query(deep(), "f%5Bcolor%5D=red&f[size]=3&f[extra]=9&g[size]=1"),
            Ok(json!({"color": "red", "size": 3, "extra": "9"}))
        );
        assert_eq!(
            query(deep(), "f[size]=big"),
            Err("at size: must be an integer".into())
        );
        assert_eq!(
            query(deep(), "f[a][b]=1"),
            Err("must not nest objects (name[a][b])".into())
        );
        assert_eq!(
            query(deep(), "f[size]=1&f[size]=2"),
            Err("must not be repeated".into())
        );
        assert_eq!(query(deep(), "f[size]="), Err("must not be empty".into()));
        let (values, violations) = run(&[deep()], &req("fx[size]=2"));
        assert!(values.is_empty() && violations.is_empty());
        // The name alone is the whole value to qs-style parsers: no property check sees it;
        // what follows a `]` is dropped by them (`f[size]x` is `f[size]`).
        for bare in [
            "f=anything",
            "f[size]=1&f=2",
            "f=",
            "f",
            "f[$where]x=1",
            "f%5B=1",
        ] {
            assert_eq!(
                query(deep(), bare),
                Err("must be in deepObject style (name[property]=value)".into()),
                "{bare}"
            );
        }

        let exploded = || q("f", Style::Form, true, shape.clone());
        assert_eq!(
            query(exploded(), "color=red&size=3&f=x"),
            Ok(json!({"color": "red", "size": 3}))
        );
        assert_eq!(
            query(exploded(), "size=1&size=2"),
            Err("must not be repeated".into())
        );
        let form = || q("f", Style::Form, false, shape.clone());
        assert_eq!(
            query(form(), "f=color,red,size,3"),
            Ok(json!({"color": "red", "size": 3}))
        );
        assert_eq!(
            query(form(), "f=color,red,size"),
            Err("must be a list of name,value pairs".into())
        );
        assert_eq!(
            query(form(), "f=size,1,size,2"),
            Err("must not be repeated".into())
        );
        let space = q("f", Style::SpaceDelimited, false, shape.clone());
        assert_eq!(
            query(space, "f=color%20red%20size%203"),
            Ok(json!({"color": "red", "size": 3}))
        );
    }

    #[test]
    fn json_parameters() {
        let j = || q("q", Style::Form, true, Shape::Json);
        assert_eq!(
            query(j(), "q=%7B%22a%22%3A%5B1%2C2%5D%7D"),
            Ok(json!({"a": [1, 2]}))
        );
        assert_eq!(query(j(), "q=%7B"), Err("must be valid JSON".into()));
        let long = format!("q=%22{}%22", "a".repeat(MAX_JSON_BYTES));
        assert_eq!(
            query(j(), &long),
            Err("is too long (more than 64 KiB)".into())
        );
        // The body's parser, under the route's limits.
        let deep = format!("q={}", "%5B".repeat(200));
        assert_eq!(
            query(j(), &deep),
            Err(format!("at {}0: nesting deeper than 32", "0/".repeat(31)))
        );
        assert_eq!(
            query(j(), "q=%7B%22a%22%3A1%2C%22a%22%3A2%7D"),
            Err("at a: duplicate key".into())
        );
        assert_eq!(
            query(j(), "q=%7B%22n%22%3A9007199254740993%7D"),
            Err("at n: number beyond ±9007199254740991".into())
        );
        assert_eq!(
            query(j(), "q=1e400"),
            Err("number beyond ±9007199254740991".into())
        );
        assert_eq!(
            query(j(), "q=%22a%22%20x"),
            Err("must be valid JSON".into())
        );
        let mut r = req("");
        r.headers
            .insert("x-filter", http::HeaderValue::from_static("{\"a\": true}"));
        let h = def("X-Filter", In::Header, Style::Simple, false, Shape::Json);
        assert_eq!(one(h, &r), Ok(json!({"a": true})));
    }

    fn path(d: ParamDef, raw: &str) -> Result<Value, String> {
        let mut r = req("");
        r.query = None;
        r.path = vec![("id", raw)];
        one(d, &r)
    }

    fn p(style: Style, explode: bool, shape: Shape) -> ParamDef {
        let mut d = def("id", In::Path, style, explode, shape);
        d.required = true;
        d
    }

    #[test]
    fn path_simple() {
        let ints = Shape::Array(vec![Integer]);
        let rgb = obj(&[("R", Integer), ("G", Integer)]);
        assert_eq!(
            path(p(Style::Simple, false, Shape::Scalar(vec![Integer])), "5"),
            Ok(json!(5))
        );
        assert_eq!(
            path(p(Style::Simple, false, Shape::Scalar(vec![Str])), "a%20b+c"),
            Ok(json!("a b+c"))
        );
        assert_eq!(
            path(p(Style::Simple, false, Shape::Scalar(vec![Str])), "%C3%28"),
            Err("must be valid UTF-8 text".into())
        );
        assert_eq!(
            path(p(Style::Simple, false, ints.clone()), "1,2"),
            Ok(json!([1, 2]))
        );
        assert_eq!(
            path(p(Style::Simple, true, ints.clone()), "1,2"),
            Ok(json!([1, 2]))
        );
        assert_eq!(
            path(p(Style::Simple, false, ints.clone()), ""),
            Ok(json!([]))
        );
        assert_eq!(
            path(p(Style::Simple, false, rgb.clone()), "R,1,G,2"),
            Ok(json!({"R": 1, "G": 2}))
        );
        assert_eq!(
            path(p(Style::Simple, true, rgb.clone()), "R=1,G=2"),
            Ok(json!({"R": 1, "G": 2}))
        );
        assert_eq!(
            path(p(Style::Simple, true, rgb), "R=x"),
            Err("at R: must be an integer".into())
        );
        let mut r = req("");
        r.path = vec![];
        let (_, violations) = run(&[p(Style::Simple, false, ints)], &r);
        assert_eq!(
            violations,
            [("path:id".to_owned(), "is required".to_owned())]
        );
    }

    #[test]
    fn path_label() {
        let ints = Shape::Array(vec![Integer]);
        let rgb = obj(&[("R", Integer), ("G", Integer)]);
        let scalar = Shape::Scalar(vec![Number]);
        assert_eq!(
            path(p(Style::Label, false, scalar.clone()), ".1.5"),
            Ok(json!(1.5))
        );
        assert_eq!(
            path(p(Style::Label, false, scalar), "1.5"),
            Err("must be in label style (.value)".into())
        );
        assert_eq!(
            path(p(Style::Label, true, ints.clone()), ".1.2"),
            Ok(json!([1, 2]))
        );
        assert_eq!(
            path(p(Style::Label, false, ints.clone()), ".1,2"),
            Ok(json!([1, 2]))
        );
        assert_eq!(
            path(p(Style::Label, false, ints.clone()), ".1.2"),
            Ok(json!([1, 2]))
        );
        assert_eq!(path(p(Style::Label, false, ints), "."), Ok(json!([])));
        assert_eq!(
            path(p(Style::Label, true, rgb.clone()), ".R=1.G=2"),
            Ok(json!({"R": 1, "G": 2}))
        );
        assert_eq!(
            path(p(Style::Label, false, rgb.clone()), ".R,1,G,2"),
            Ok(json!({"R": 1, "G": 2}))
        );
        assert_eq!(
            path(p(Style::Label, false, rgb), ".R.1.G"),
            Err("must be a list of name,value pairs".into())
        );
    }

    #[test]
    fn path_matrix() {
        let ints = Shape::Array(vec![Integer]);
        let rgb = obj(&[("R", Integer), ("G", Integer)]);
        let scalar = Shape::Scalar(vec![Integer]);
        let wrong = Err("must be in matrix style (;name=value)".to_owned());
        assert_eq!(
            path(p(Style::Matrix, false, scalar.clone()), ";id=5"),
            Ok(json!(5))
        );
        assert_eq!(
            path(p(Style::Matrix, false, scalar.clone()), ";other=5"),
            wrong
        );
        assert_eq!(path(p(Style::Matrix, false, scalar.clone()), "id=5"), wrong);
        assert_eq!(path(p(Style::Matrix, false, scalar), ";id=1;id=2"), wrong);
        assert_eq!(
            path(p(Style::Matrix, false, ints.clone()), ";id=1,2"),
            Ok(json!([1, 2]))
        );
        assert_eq!(
            path(p(Style::Matrix, false, ints.clone()), ";id"),
            Ok(json!([]))
        );
        assert_eq!(
            path(p(Style::Matrix, true, ints.clone()), ";id=1;id=2"),
            Ok(json!([1, 2]))
        );
        assert_eq!(
            path(p(Style::Matrix, true, ints), ";id=1;id=x"),
            Err("at 1: must be an integer".into())
        );
        assert_eq!(
            path(p(Style::Matrix, true, rgb.clone()), ";R=1;G=2"),
            Ok(json!({"R": 1, "G": 2}))
        );
        assert_eq!(
            path(p(Style::Matrix, false, rgb), ";id=R,1,G,2"),
            Ok(json!({"R": 1, "G": 2}))
        );
        let text = p(Style::Matrix, false, Shape::Scalar(vec![Str]));
        assert_eq!(path(text, ";id=a%3Bb"), Ok(json!("a;b")));
    }

    fn with_headers(d: ParamDef, headers: &[(&'static str, &[u8])]) -> Result<Value, String> {
        let mut r = req("");
        for (name, value) in headers {
            r.headers
                .append(*name, http::HeaderValue::from_bytes(value).unwrap());
        }
        one(d, &r)
    }

    #[test]
    fn headers() {
        let h =
            |shape: Shape, explode: bool| def("X-Rate", In::Header, Style::Simple, explode, shape);
        // The other spelling, alone or beside the declared one.
        let other = "must be sent as x-rate: a name with `_` for `-` is the same header to some \
                     frameworks";
        let alone: &[(&str, &[u8])] = &[("x_rate", b"500")];
        let beside: &[(&str, &[u8])] = &[("x-rate", b"5"), ("x_rate", b"500")];
        for fields in [alone, beside] {
            assert_eq!(
                with_headers(h(Shape::Scalar(vec![Integer]), false), fields),
                Err(other.into())
            );
        }
        assert_eq!(
            with_headers(h(Shape::Scalar(vec![Integer]), false), &[("x-rate", b"5")]),
            Ok(json!(5))
        );
        assert_eq!(
            with_headers(
                h(Shape::Scalar(vec![Integer]), false),
                &[("x-rate", b"5"), ("x-rate", b"6")]
            ),
            Err("must be an integer".into())
        );
        assert_eq!(
            with_headers(
                h(Shape::Array(vec![Integer]), false),
                &[("x-rate", b"1, 2"), ("x-rate", b"3")]
            ),
            Ok(json!([1, 2, 3]))
        );
        assert_eq!(
            with_headers(h(obj(&[("a", Integer)]), true), &[("x-rate", b"a=1, b=x")]),
            Ok(json!({"a": 1, "b": "x"}))
        );
        assert_eq!(
            with_headers(h(obj(&[("a", Integer)]), false), &[("x-rate", b"a,1,b,x")]),
            Ok(json!({"a": 1, "b": "x"}))
        );
        assert_eq!(
            with_headers(
                h(Shape::Scalar(vec![Str]), false),
                &[("x-rate", b"caf\xc3\xa9")]
            ),
            Ok(json!("café"))
        );
        let mut r = req("");
        r.headers
            .append("x-rate", http::HeaderValue::from_bytes(b"\xff").unwrap());
        let mut d = h(Shape::Scalar(vec![Str]), false);
        d.required = true;
        let (_, violations) = run(&[d.clone()], &r);
        assert_eq!(
            violations,
            [(
                "header:x-rate".to_owned(),
                "must be valid UTF-8 text".to_owned()
            )]
        );
        let (_, violations) = run(&[d], &req(""));
        assert_eq!(
            violations,
            [("header:x-rate".to_owned(), "is required".to_owned())]
        );
        let odd = def(
            "bad name",
            In::Header,
            Style::Simple,
            false,
            Shape::Scalar(vec![]),
        );
        let (values, violations) = run(&[odd], &req(""));
        assert!(values.is_empty() && violations.is_empty());
    }

    #[test]
    fn cookies() {
        let c = |name: &str, shape: Shape, explode: bool| {
            def(name, In::Cookie, Style::Form, explode, shape)
        };
        let both: &[(&'static str, &[u8])] = &[
            ("cookie", b"a=1; session=abc%20d"),
            ("cookie", b"ids=1;ids=2; R=7"),
        ];
        assert_eq!(
            with_headers(c("session", Shape::Scalar(vec![Str]), true), both),
            Ok(json!("abc%20d"))
        );
        assert_eq!(
            with_headers(c("ids", Shape::Array(vec![Integer]), true), both),
            Ok(json!([1, 2]))
        );
        assert_eq!(
            with_headers(c("ids", Shape::Scalar(vec![Integer]), true), both),
            Err("must not be repeated".into())
        );
        assert_eq!(
            with_headers(
                c("ids", Shape::Array(vec![Integer]), false),
                &[("cookie", b"ids=1,2")]
            ),
            Ok(json!([1, 2]))
        );
        assert_eq!(
            with_headers(c("ids", Shape::Array(vec![Integer]), false), both),
            Err("must not be repeated".into())
        );
        assert_eq!(
            with_headers(c("rgb", obj(&[("R", Integer), ("G", Integer)]), true), both),
            Ok(json!({"R": 7}))
        );
        assert_eq!(
            with_headers(
                c("rgb", obj(&[("R", Integer)]), false),
                &[("cookie", b"rgb=R,1,G,2")]
            ),
            Ok(json!({"R": 1, "G": "2"}))
        );
        // Names are trimmed, as lenient parsers read them; then `role` and `role ` repeat.
        let role = || c("role", Shape::Scalar(vec![Str]), true);
        assert_eq!(
            with_headers(role(), &[("cookie", b"a=1; role =admin")]),
            Ok(json!("admin"))
        );
        assert_eq!(
            with_headers(role(), &[("cookie", b"role=user; role =admin")]),
            Err("must not be repeated".into())
        );
        // A value that parsers split at a space or comma hides a cookie of its own: read too.
        for field in [
            &b"x=1 role=admin"[..],
            b"x=1, role=admin",
            b"x=1\trole=admin",
        ] {
            assert_eq!(
                with_headers(role(), &[("cookie", field)]),
                Ok(json!("admin")),
                "{}",
                String::from_utf8_lossy(field)
            );
        }
        assert_eq!(
            with_headers(role(), &[("cookie", b"role=user; x=1 role=admin")]),
            Err("must not be repeated".into())
        );
        // A quoted value is one value; common cookies hide nothing.
        for field in [
            &b"x=\"a, role=b\"; role=user"[..],
            b"_ga=GA1.2.123.456; role=user",
            b"s=YWJj==; role=user",
        ] {
            assert_eq!(
                with_headers(role(), &[("cookie", field)]),
                Ok(json!("user")),
                "{}",
                String::from_utf8_lossy(field)
            );
        }
        // Other spellings PHP or a case-insensitive framework read as the name are the cookie
        // too (PHP keeps the first of two: the one the gateway must not leave unchecked).
        for field in [&b"ROLE=admin"[..], b"%72ole=admin", b"role[]=admin"] {
            assert_eq!(
                with_headers(role(), &[("cookie", field)]),
                Ok(json!("admin")),
                "{}",
                String::from_utf8_lossy(field)
            );
        }
        for field in [
            &b"user.role=admin"[..],
            b"user role=admin",
            b"user[role=admin",
        ] {
            assert_eq!(
                with_headers(
                    c("user_role", Shape::Scalar(vec![Str]), true),
                    &[("cookie", field)]
                ),
                Ok(json!("admin")),
                "{}",
                String::from_utf8_lossy(field)
            );
        }
        assert_eq!(
            with_headers(
                c("user_role", Shape::Scalar(vec![Str]), true),
                &[("cookie", b"user.role=admin; user_role=user")]
            ),
            Err("must not be repeated".into())
        );
        // A field that is not ASCII is refused, not skipped (with the cookies it holds).
        assert_eq!(
            with_headers(
                role(),
                &[("cookie", b"role=user"), ("cookie", b"x=\xff; role=admin")]
            ),
            Err("the Cookie header must be ASCII text".into())
        );
        // So is a cookie past the cap, where a repeat could hide.
        let many = format!("{}role=admin", "z=1; ".repeat(MAX_COOKIES));
        assert_eq!(
            with_headers(
                role(),
                &[("cookie", b"role=user"), ("cookie", many.as_bytes())]
            ),
            Err("too many cookies (more than 256)".into())
        );
        let fits = format!("{}role=admin", "z=1; ".repeat(MAX_COOKIES - 1));
        assert_eq!(
            with_headers(role(), &[("cookie", fits.as_bytes())]),
            Ok(json!("admin"))
        );
        // Without cookie parameters the Cookie header is not looked at.
        let mut r = req("");
        r.headers
            .insert("cookie", http::HeaderValue::from_bytes(b"x=\xff").unwrap());
        let (_, violations) = run(&[q("a", Style::Form, true, Shape::Scalar(vec![]))], &r);
        assert!(violations.is_empty());
        let mut session = c("session", Shape::Scalar(vec![Str]), true);
        session.required = true;
        let (_, violations) = run(&[session], &req(""));
        assert_eq!(
            violations,
            [("cookie:session".to_owned(), "is required".to_owned())]
        );
    }

    #[test]
    fn indexes_and_locations_of_several_parameters() {
        let defs = [
            q("a", Style::Form, true, Shape::Scalar(vec![Integer])),
            q("b", Style::Form, true, Shape::Scalar(vec![Integer])),
            def(
                "X-Up",
                In::Header,
                Style::Simple,
                false,
                Shape::Scalar(vec![Integer]),
            ),
        ];
        let mut r = req("a=1&b=x");
        r.headers
            .insert("x-up", http::HeaderValue::from_static("no"));
        let (values, violations) = run(&defs, &r);
        assert_eq!(values, [(0, json!(1))]);
        assert_eq!(
            violations,
            [
                ("query:b".to_owned(), "must be an integer".to_owned()),
                ("header:x-up".to_owned(), "must be an integer".to_owned()),
            ]
        );
        // Too many pairs: one violation for the query, none per parameter.
        let many = vec!["z=1"; MAX_QUERY_PAIRS + 1].join("&");
        let (values, violations) = run(&defs[..2], &req(&many));
        assert!(values.is_empty());
        assert_eq!(
            violations,
            [(
                "query".to_owned(),
                "too many query parameters (more than 256)".to_owned()
            )]
        );
    }

    #[test]
    fn query_names_that_do_not_decode_are_refused() {
        let defs = [q("q", Style::Form, true, Shape::Scalar(vec![Str]))];
        for raw in ["f[$where%FF]=1", "%C3=1&q=a"] {
            let (_, violations) = run(&defs, &req(raw));
            assert_eq!(
                violations,
                [("query".to_owned(), NAME_NOT_UTF8.to_owned())],
                "{raw}"
            );
        }
        let (_, violations) = run(&defs, &req("q=%FF"));
        assert_eq!(violations, [("query:q".to_owned(), NOT_UTF8.to_owned())]);
    }

    #[test]
    fn a_raw_semicolon_in_the_query_is_refused() {
        let defs = [q("q", Style::Form, true, Shape::Scalar(vec![Str]))];
        for raw in ["q=x;limit=100000", "q=x;admin=1", "a;b=1", "q=%3B;"] {
            let (_, violations) = run(&defs, &req(raw));
            assert_eq!(
                violations,
                [("query".to_owned(), SEMICOLON.to_owned())],
                "{raw}"
            );
        }
        // Encoded, it is data.
        assert_eq!(
            query(defs[0].clone(), "q=x%3Blimit%3D1"),
            Ok(json!("x;limit=1"))
        );
        // With no query parameters declared, too.
        let (_, violations) = run(&[], &req("x=1;y=2"));
        assert_eq!(violations, [("query".to_owned(), SEMICOLON.to_owned())]);
    }

    #[test]
    fn unknown_query_names() {
        let defs = [
            q("limit", Style::Form, true, Shape::Scalar(vec![Integer])),
            q("f", Style::DeepObject, true, obj(&[("a", Str)])),
            q("rgb", Style::Form, true, obj(&[("R", Integer)])),
            def(
                "limit2",
                In::Header,
                Style::Simple,
                false,
                Shape::Scalar(vec![]),
            ),
        ];
        assert_eq!(
            unknown_query(
                &defs,
                Some("limit=1&f[a]=1&f[b]=2&R=1&G=2&limit2=1&x%20y=1&G=3&rgb=1&f=1&%FF=1")
            ),
            ["G", "limit2", "x y", ""]
        );
        assert!(unknown_query(&defs, None).is_empty());
        let many: Vec<String> = (0..30).map(|i| format!("n{i}=1")).collect();
        assert_eq!(
            unknown_query(&defs, Some(&many.join("&"))).len(),
            MAX_UNKNOWN
        );
        let long = format!("{}=1&a%0Ab=1", "x".repeat(100));
        assert_eq!(
            unknown_query(&defs, Some(&long)),
            [format!("{}…", "x".repeat(64)), "a?b".to_owned()]
        );
    }

    #[test]
    fn other_spellings_of_declared_query_names() {
        let defs = [
            q("limit", Style::Form, true, Shape::Scalar(vec![Integer])),
            q("user_role", Style::Form, true, Shape::Scalar(vec![])),
            q("f", Style::DeepObject, true, obj(&[("a", Str)])),
        ];
        assert_eq!(
            aliased_query(
                &defs,
                Some(
                    "limit=5&limit[]=9&LIMIT=9&%20limit=9&Limit[x]=9&user.role=a&user%20role=b&limits=1&f[a]=1&F[b]=2&other=1"
                )
            ),
            [
                ("limit[]", "limit"),
                ("LIMIT", "limit"),
                (" limit", "limit"),
                ("Limit[x]", "limit"),
                ("user.role", "user_role"),
                ("user role", "user_role"),
                ("F[b]", "f"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        // The declared names themselves (and deepObject properties) are not aliases.
        assert!(aliased_query(&defs, Some("limit=1&user_role=x&f[a]=1")).is_empty());
        // An exploded form object's properties are query names of their own.
        let rgb = [q("rgb", Style::Form, true, obj(&[("R", Integer)]))];
        assert_eq!(
            aliased_query(&rgb, Some("R=1&r=2&R[]=3")),
            [("r", "R"), ("R[]", "R")].map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert!(aliased_query(&defs, None).is_empty());
    }
}
