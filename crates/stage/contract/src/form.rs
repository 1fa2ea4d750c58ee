//! Form bodies (`application/x-www-form-urlencoded`) read into the JSON object their media
//! type's schema checks, as a JSON body's is (field tree, then validator).
//!
//! # Reading
//!
//! As the WHATWG urlencoded parser reads them: the body is split on `&` (empty pieces are
//! skipped), each piece into name and value at its first `=` (none: an empty value), `+` is a
//! space, then percent-decoding (a `%` without two hex digits stays as it is). Unlike that
//! parser, a name or value that is not UTF-8 once decoded is a violation, never replaced: the
//! check would see other text than an upstream reading the bytes. At most [`MAX_FORM_PAIRS`]
//! pairs are read; more is one violation at `body`. A raw `;` is a violation at `body`: old
//! Python `parse_qs` (behind `cgi.FieldStorage`) splits a form body on it too, so
//! `note=x;role=admin` would carry a field this check never saw.
//!
//! # Fields
//!
//! Each property the schema declares ([`FormDef`]) is read by its shape:
//!
//! - a scalar: one value, typed as a query parameter's is (`crate::params::scalar`: integer,
//!   number, boolean, null as the empty text, string); a value that reads as none of its types
//!   stays a string, so the validator reports the type (`must be an integer`). The name given
//!   twice is a violation (`must not be repeated`): frameworks keep the first or the last;
//! - an array: in `form` style exploded (the default) every value of the name, one item each
//!   (`tag=a&tag=b`; one empty value alone is an empty array); not exploded, or
//!   `spaceDelimited`/`pipeDelimited`, one value split on `,`, space or `|` (raw, before
//!   decoding: an encoded delimiter is data), the name given twice being a violation. Items are
//!   typed by the item schema's types;
//! - an object: only in `deepObject` style (`addr[city]=x`, one level, each property once,
//!   typed by its own types; the name alone, an unclosed `[` or text after the `]` is `must be in
//!   deepObject style`). In any other style an object field that is sent is a violation: its
//!   default (`form`, exploded) spreads its properties among the body's own names, where no
//!   reading is safe to check, and PHP, Rails and qs read `addr[city]` as deepObject anyway.
//!
//! A name the schema does not declare is a field of its own with a string value (the field tree
//! says whether it is unknown). One that upstream frameworks read as a declared field
//! ([`fold_name`]: `role[]`, `ROLE`, ` role`, `ro.le` for `ro_le`, `role%00x` cut at the NUL by
//! PHP, `[role]`, `role]` and `]role` read as `role` by Rack 2 or qs) is a violation (`is
//! another spelling of the field role`) whatever `unknown_fields` says, since under `strip` or
//! an open schema its value would reach the upstream as that field, unchecked.
//!
//! A form whose `Content-Type` holds `/json` or `+json` is not read here: the step refuses it
//! with 415 (Laravel reads such a body as JSON).
//!
//! The built object is held to the route's JSON limits (`max_string_bytes` for names and
//! values, `max_object_keys`, `max_array_items`, `max_number_magnitude` for typed numbers):
//! the first break is one violation, as when parsing JSON, and the object is not validated.

use bytes::{BufMut, Bytes, BytesMut};
use portcullis_core::Violation;
use portcullis_core::query::fold_name;
use serde_json::{Map, Value};

use crate::json::{JsonError, JsonLimits, location, push_index, push_segment};
use crate::model::{FormDef, FormField, ScalarType, Shape, Style};
use crate::params::{self, DEEP_NESTED, DEEP_STYLE, NOT_UTF8, REPEATED};

/// Pairs of a form body read; more is a violation. As many as one array value may hold
/// ([`params::MAX_ITEMS`]), so an exploded array can be sent whole.
pub const MAX_FORM_PAIRS: usize = params::MAX_ITEMS;

const NAME_NOT_UTF8: &str = "field names must be UTF-8 text once percent-decoded";
const SEMICOLON: &str =
    "must not contain a raw `;` (some frameworks split a form on it): encode it as %3B";
const OBJECT_NOT_DEEP: &str = "is an object field, which a form carries only in deepObject style \
                               (name[property]=value), and the document does not declare it so";

/// Where the value of one pair went in the object.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A field of the object (several pairs for an exploded array).
    Field(String),
    /// A property of a deepObject field.
    Property(String, String),
    /// Nowhere: the pair is a violation.
    Nowhere,
}

/// A form read into its JSON object.
#[derive(Debug)]
pub struct Form<'b> {
    /// The object the media type's checks run on.
    pub value: Value,
    /// Each pair as sent, with where its value went.
    pairs: Vec<(&'b [u8], Target)>,
    /// Undeclared names given more than once (the object holds their first value).
    repeated: Vec<String>,
}

impl Form<'_> {
    /// Once the field tree has run: each undeclared name given more than once that is still in
    /// the object (not stripped) and not already reported is a violation. Where unknown names
    /// pass, frameworks disagree on which value is the one.
    pub fn finish(&self, out: &mut Vec<Violation>, cap: usize) {
        for name in &self.repeated {
            if self.value.get(name).is_none() {
                continue;
            }
            let at = field_location(name);
            if !out.iter().any(|v| v.location == at) {
                push(out, cap, at, REPEATED);
            }
        }
    }

    /// The body to forward after stripping: the pairs whose field (or deepObject property) is
    /// still in the object, in their order and as they were encoded, joined by `&`. `None` when
    /// no pair was dropped (the body goes on as it is).
    pub fn kept(&self) -> Option<Bytes> {
        let keep = |t: &Target| match t {
            Target::Field(f) => self.value.get(f).is_some(),
            Target::Property(f, p) => self.value.get(f).and_then(|o| o.get(p)).is_some(),
            Target::Nowhere => false,
        };
        if self.pairs.iter().all(|(_, t)| keep(t)) {
            return None;
        }
        let mut out = BytesMut::new();
        for (raw, _) in self.pairs.iter().filter(|(_, t)| keep(t)) {
            if !out.is_empty() {
                out.put_u8(b'&');
            }
            out.extend_from_slice(raw);
        }
        Some(out.freeze())
    }
}

/// Reads `body` as a form whose fields `def` declares: the object to check, or `None` when it
/// cannot be built (too many pairs, a JSON limit broken), which is then reported. Every other
/// problem is pushed to `out` (while it holds fewer than `cap`) and the rest of the form is
/// still read, so the schema sees it.
pub fn read<'b>(
    body: &'b [u8],
    def: &FormDef,
    limits: &JsonLimits,
    out: &mut Vec<Violation>,
    cap: usize,
) -> Option<Form<'b>> {
    if body.contains(&b';') {
        push(out, cap, "body".to_owned(), SEMICOLON);
    }
    let pieces: Vec<&[u8]> = body
        .split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .take(MAX_FORM_PAIRS + 1)
        .collect();
    if pieces.len() > MAX_FORM_PAIRS {
        push(
            out,
            cap,
            "body".to_owned(),
            format!("too many form fields (more than {MAX_FORM_PAIRS})"),
        );
        return None;
    }
    let folded: Vec<String> = def.fields.iter().map(|f| fold_name(&f.name)).collect();
    let mut b = Builder {
        map: Map::new(),
        lists: vec![None; def.fields.len()],
        repeated: Vec::new(),
        out,
        cap,
    };
    let mut name_not_utf8 = false;
    let mut pairs = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let (raw_name, raw_value) = match piece.iter().position(|b| *b == b'=') {
            Some(i) => (&piece[..i], &piece[i + 1..]),
            None => (piece, &piece[piece.len()..]),
        };
        let Some(name) = decode(raw_name) else {
            if !name_not_utf8 {
                name_not_utf8 = true;
                b.push("body".to_owned(), NAME_NOT_UTF8);
            }
            pairs.push((piece, Target::Nowhere));
            continue;
        };
        let value = std::str::from_utf8(raw_value).ok();
        let target = b.pair(def, &folded, name, value);
        pairs.push((piece, target));
    }
    let Builder {
        mut map,
        lists,
        repeated,
        out,
        ..
    } = b;
    for (field, list) in def.fields.iter().zip(lists) {
        let (Shape::Array(types), Some(mut texts)) = (&field.shape, list) else {
            continue;
        };
        // One empty value alone is an empty array, as in a query (`tag=`).
        if texts.len() == 1 && texts.first().is_some_and(String::is_empty) {
            texts.clear();
        }
        let items = texts.into_iter().map(|t| typed(t, types)).collect();
        map.insert(field.name.clone(), Value::Array(items));
    }
    let value = Value::Object(map);
    if let Err(e) = within(&value, limits) {
        push(
            out,
            cap,
            location("body", e.pointer().unwrap_or("")),
            e.message(),
        );
        return None;
    }
    Some(Form {
        value,
        pairs,
        repeated,
    })
}

/// The object being built, and the violations found.
struct Builder<'o> {
    map: Map<String, Value>,
    /// The texts of each array field's items so far (typed at the end), by field index.
    lists: Vec<Option<Vec<String>>>,
    repeated: Vec<String>,
    out: &'o mut Vec<Violation>,
    cap: usize,
}

impl Builder<'_> {
    fn push(&mut self, at: String, message: impl Into<String>) {
        push(self.out, self.cap, at, message);
    }

    /// Reads one pair: `name` decoded, `value` raw (`None`: not UTF-8).
    fn pair(
        &mut self,
        def: &FormDef,
        folded: &[String],
        name: String,
        value: Option<&str>,
    ) -> Target {
        if let Some(i) = def.fields.iter().position(|f| f.name == name) {
            return self.field(i, &def.fields[i], name, value);
        }
        // `addr[city]` for an object field `addr`.
        let object = def.fields.iter().find(|f| {
            matches!(f.shape, Shape::Object(_))
                && name
                    .strip_prefix(f.name.as_str())
                    .is_some_and(|rest| rest.starts_with('['))
        });
        if let Some(f) = object {
            return self.property(f, &name, value);
        }
        let fold = fold_name(&name);
        if let Some(f) = def
            .fields
            .iter()
            .zip(folded)
            .find_map(|(f, x)| (*x == fold).then_some(f))
        {
            let message = format!("is another spelling of the field {}", f.name);
            self.push(field_location(&name), message);
            return Target::Nowhere;
        }
        // Not declared: a string, for the field tree and the schema to judge.
        let Some(text) = self.text(&name, value) else {
            return Target::Nowhere;
        };
        if self.map.contains_key(&name) {
            if !self.repeated.contains(&name) {
                self.repeated.push(name.clone());
            }
        } else {
            self.map.insert(name.clone(), Value::String(text));
        }
        Target::Field(name)
    }

    /// A pair named as the declared field `f` (at index `i`).
    fn field(&mut self, i: usize, f: &FormField, name: String, value: Option<&str>) -> Target {
        match &f.shape {
            Shape::Array(_) if f.explode && f.style != Style::DeepObject => {
                let Some(text) = self.text(&name, value) else {
                    return Target::Nowhere;
                };
                let Some(list) = self.lists.get_mut(i) else {
                    return Target::Nowhere;
                };
                list.get_or_insert_with(Vec::new).push(text);
                Target::Field(name)
            }
            Shape::Array(_) => {
                let seen = self.lists.get(i).is_some_and(Option::is_some);
                if seen {
                    self.push(field_location(&name), REPEATED);
                    return Target::Nowhere;
                }
                let Some(raw) = value else {
                    self.push(field_location(&name), NOT_UTF8);
                    return Target::Nowhere;
                };
                let items = if raw.is_empty() {
                    Ok(Vec::new())
                } else {
                    params::split(raw, params::query_delimiters(f.style), params::decode_query)
                };
                match items {
                    Ok(items) => {
                        if let Some(slot) = self.lists.get_mut(i) {
                            *slot = Some(items);
                        }
                        Target::Field(name)
                    }
                    Err(message) => {
                        // Seen all the same (a repeat is still one), but left out of the object.
                        if let Some(slot) = self.lists.get_mut(i) {
                            *slot = Some(Vec::new());
                        }
                        self.push(field_location(&name), message);
                        Target::Nowhere
                    }
                }
            }
            Shape::Object(_) => {
                let message = if f.style == Style::DeepObject {
                    DEEP_STYLE
                } else {
                    OBJECT_NOT_DEEP
                };
                self.push(field_location(&name), message);
                Target::Nowhere
            }
            Shape::Scalar(types) => {
                if self.map.contains_key(&name) {
                    self.push(field_location(&name), REPEATED);
                    return Target::Nowhere;
                }
                let Some(text) = self.text(&name, value) else {
                    return Target::Nowhere;
                };
                self.map.insert(name.clone(), typed(text, types));
                Target::Field(name)
            }
            // Form fields are never `content` parameters.
            Shape::Json => Target::Nowhere,
        }
    }

    /// A pair `name` that is `f.name[…]`, `f` an object field.
    fn property(&mut self, f: &FormField, name: &str, value: Option<&str>) -> Target {
        let at = field_location(&f.name);
        if f.style != Style::DeepObject {
            self.push(at, OBJECT_NOT_DEEP);
            return Target::Nowhere;
        }
        let inner = name.get(f.name.len() + 1..).unwrap_or("");
        // `addr[city]x`: qs and PHP read it as `addr[city]`, which this check would not.
        let Some(prop) = inner.strip_suffix(']') else {
            self.push(at, DEEP_STYLE);
            return Target::Nowhere;
        };
        if prop.contains(['[', ']']) {
            self.push(at, DEEP_NESTED);
            return Target::Nowhere;
        }
        let mut pointer = String::new();
        push_segment(&mut pointer, &f.name);
        push_segment(&mut pointer, prop);
        let prop_at = location("body", &pointer);
        let Some(raw) = value else {
            self.push(prop_at, NOT_UTF8);
            return Target::Nowhere;
        };
        let Ok(text) = params::decode_query(raw) else {
            self.push(prop_at, NOT_UTF8);
            return Target::Nowhere;
        };
        let types: &[ScalarType] = match &f.shape {
            Shape::Object(props) => props
                .iter()
                .find(|(p, _)| p == prop)
                .map_or(&[], |(_, t)| t.as_slice()),
            _ => &[],
        };
        let entry = self
            .map
            .entry(f.name.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(o) = entry else {
            return Target::Nowhere;
        };
        if o.contains_key(prop) {
            self.push(prop_at, REPEATED);
            return Target::Nowhere;
        }
        o.insert(prop.to_owned(), typed(text, types));
        Target::Property(f.name.clone(), prop.to_owned())
    }

    /// A value decoded, or the violation for it.
    fn text(&mut self, name: &str, value: Option<&str>) -> Option<String> {
        match value.map(params::decode_query) {
            Some(Ok(text)) => Some(text),
            _ => {
                self.push(field_location(name), NOT_UTF8);
                None
            }
        }
    }
}

/// A name or value decoded (`None`: not UTF-8, raw or decoded).
fn decode(raw: &[u8]) -> Option<String> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| params::decode_query(s).ok())
}

/// `text` as the first of `types` it reads as; else the string, for the schema to refuse.
fn typed(text: String, types: &[ScalarType]) -> Value {
    params::scalar(&text, types).unwrap_or(Value::String(text))
}

/// `body:/name`.
fn field_location(name: &str) -> String {
    let mut p = String::new();
    push_segment(&mut p, name);
    location("body", &p)
}

fn push(out: &mut Vec<Violation>, cap: usize, at: String, message: impl Into<String>) {
    if out.len() < cap {
        out.push(Violation::new(at, message.into()));
    }
}

/// The first of the route's JSON limits the built object breaks. It is at most two levels
/// deep (fields; the items or properties of array and deepObject fields), and pointers are
/// built only for what breaks one.
fn within(value: &Value, limits: &JsonLimits) -> Result<(), JsonError> {
    let Value::Object(fields) = value else {
        return Ok(());
    };
    keys(fields, String::new, limits)?;
    for (name, v) in fields {
        let at = || {
            let mut p = String::new();
            push_segment(&mut p, name);
            p
        };
        match v {
            Value::Array(items) => {
                if items.len() > limits.max_array_items {
                    return Err(JsonError::ArrayTooLong {
                        pointer: at(),
                        limit: limits.max_array_items,
                    });
                }
                for (i, item) in items.iter().enumerate() {
                    scalar_within(item, limits, || {
                        let mut p = at();
                        push_index(&mut p, i);
                        p
                    })?;
                }
            }
            Value::Object(props) => {
                keys(props, at, limits)?;
                for (prop, item) in props {
                    scalar_within(item, limits, || {
                        let mut p = at();
                        push_segment(&mut p, prop);
                        p
                    })?;
                }
            }
            scalar => scalar_within(scalar, limits, at)?,
        }
    }
    Ok(())
}

/// How many keys an object has, and how long they are.
fn keys(
    o: &Map<String, Value>,
    pointer: impl Fn() -> String,
    limits: &JsonLimits,
) -> Result<(), JsonError> {
    if o.len() > limits.max_object_keys {
        return Err(JsonError::TooManyKeys {
            pointer: pointer(),
            limit: limits.max_object_keys,
        });
    }
    if o.keys().any(|k| k.len() > limits.max_string_bytes) {
        return Err(JsonError::KeyTooLong {
            pointer: pointer(),
            limit: limits.max_string_bytes,
        });
    }
    Ok(())
}

fn scalar_within(
    v: &Value,
    limits: &JsonLimits,
    pointer: impl FnOnce() -> String,
) -> Result<(), JsonError> {
    match v {
        Value::String(s) if s.len() > limits.max_string_bytes => Err(JsonError::StringTooLong {
            pointer: pointer(),
            limit: limits.max_string_bytes,
        }),
        Value::Number(n)
            if n.as_f64()
                .is_some_and(|f| f.abs() > limits.max_number_magnitude) =>
        {
            Err(JsonError::NumberTooLarge {
                pointer: pointer(),
                limit: limits.max_number_magnitude,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ScalarType::{Boolean, Integer, Null, String as Str};
    use serde_json::json;

    fn field(name: &str, shape: Shape, style: Style, explode: bool) -> FormField {
        FormField {
            name: name.into(),
            shape,
            style,
            explode,
            content_type: None,
        }
    }

    fn def() -> FormDef {
        FormDef {
            fields: vec![
                field("n", Shape::Scalar(vec![Integer]), Style::Form, true),
                field("opt", Shape::Scalar(vec![Integer, Null]), Style::Form, true),
                field("b", Shape::Scalar(vec![Boolean]), Style::Form, true),
                field("s", Shape::Scalar(vec![]), Style::Form, true),
                field("tag", Shape::Array(vec![Integer, Str]), Style::Form, true),
                field("sp", Shape::Array(vec![Str]), Style::SpaceDelimited, false),
                field(
                    "o",
                    Shape::Object(vec![("k".into(), vec![Integer])]),
                    Style::DeepObject,
                    false,
                ),
            ],
            unmatched_encodings: Vec::new(),
        }
    }

    /// The object read from `body` and the violations found.
    fn read_all(body: &str) -> (Option<Value>, Vec<(String, String)>) {
        let mut out = Vec::new();
        let form = read(
            body.as_bytes(),
            &def(),
            &JsonLimits::default(),
            &mut out,
            10,
        );
        let found = out.into_iter().map(|v| (v.location, v.message)).collect();
        (form.map(|f| f.value), found)
    }

    #[test]
    fn pairs_become_typed_fields() {
        let (value, found) = read_all(
            "n=-5&opt=&b=true&s=12&tag=1&tag=x+y&sp=a+b%20c%2Bd&o[k]=7&o[z]=8&u=caf%C3%A9&flag",
        );
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(
            value,
            Some(json!({
                "n": -5, "opt": null, "b": true, "s": "12", "tag": [1, "x y"],
                "sp": ["a", "b", "c+d"], "o": {"k": 7, "z": "8"}, "u": "café", "flag": ""
            }))
        );
        // What is not of its type stays text, for the schema to refuse.
        let (value, _) = read_all("n=1.5&b=1&o[k]=x");
        assert_eq!(value, Some(json!({"n": "1.5", "b": "1", "o": {"k": "x"}})));
    }

    #[test]
    fn an_exploded_array_of_one_empty_value_is_empty() {
        assert_eq!(read_all("tag=").0, Some(json!({"tag": []})));
        assert_eq!(read_all("tag=&tag=").0, Some(json!({"tag": ["", ""]})));
        assert_eq!(read_all("sp=").0, Some(json!({"sp": []})));
    }

    #[test]
    fn the_stripped_body_keeps_the_pairs_as_sent() {
        let body = b"x=1&n=%31&&o[k]=2&o[y]=3&x=4";
        let mut out = Vec::new();
        let mut form = read(body, &def(), &JsonLimits::default(), &mut out, 10).unwrap();
        assert!(form.kept().is_none(), "nothing dropped");
        if let Value::Object(o) = &mut form.value {
            o.remove("x");
            if let Some(Value::Object(deep)) = o.get_mut("o") {
                deep.remove("y");
            }
        }
        assert_eq!(form.kept().unwrap(), &b"n=%31&o[k]=2"[..]);
        // Undeclared names given twice: a violation only while they stay.
        form.finish(&mut out, 10);
        assert!(out.is_empty(), "{out:?}");
        let form = read(body, &def(), &JsonLimits::default(), &mut out, 10).unwrap();
        form.finish(&mut out, 10);
        assert_eq!(out, [Violation::new("body:/x", "must not be repeated")]);
    }

    #[test]
    fn violations_are_capped() {
        let mut out = Vec::new();
        let form = read(
            b"n=1&n=2&b=1&b=2&s=1&s=2",
            &def(),
            &JsonLimits::default(),
            &mut out,
            2,
        );
        assert!(form.is_some());
        assert_eq!(out.len(), 2);
    }
}
