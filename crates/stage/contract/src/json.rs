//! JSON bodies parsed under limits that are enforced while parsing.
//!
//! A request body is hostile input: a document is refused as soon as one of its values breaks a
//! limit, before the rest of it is read or built. The `serde_json::Value` is built by our own
//! [`DeserializeSeed`]/[`Visitor`] driven by `serde_json::Deserializer::from_slice`, so every
//! value passes a check as it arrives:
//!
//! - **depth** is counted on entering an array or object (a top-level container is at depth 1,
//!   scalars add none); `max_depth` is clamped to [`MAX_DEPTH_CAP`] (127): serde_json refuses
//!   the 128th level on its own, which is reported as [`JsonError::TooDeep`] too;
//! - **keys per object** and **items per array** are counted as they arrive; a container holding
//!   exactly the limit passes, the next key or item is refused before it is read;
//! - **total values** counts every value (containers and scalars, not keys);
//! - **strings**: values and keys longer than `max_string_bytes` (UTF-8 bytes, after unescaping)
//!   are refused;
//! - **numbers** whose magnitude is above `max_number_magnitude` are refused, whatever their
//!   representation (`9007199254740992`, `-9007199254740992`, `1e16`). A number too large for an
//!   `f64` (`1e400`) is reported as [`JsonError::NumberTooLarge`] too, although serde_json
//!   itself classifies it as a syntax error ("number out of range");
//! - **duplicate keys** in one object are refused (the same key after unescaping, byte for byte:
//!   `"a"` and `"\u0061"` are duplicates). Parsers disagree on which duplicate wins, so a
//!   document with duplicates could be validated here as one thing and read upstream as another;
//! - content after the document (other than whitespace) makes it malformed; a top-level scalar
//!   is a valid document.
//!
//! The JSON pointer of the offending value (RFC 6901) is built only when a limit is broken: each
//! container frame the error unwinds through adds its segment, so well-formed bodies pay
//! nothing for it. Pointers are cut at [`MAX_POINTER_BYTES`] (ending in `…`) since keys are
//! input too.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use portcullis_core::Violation;

/// The deepest nesting `max_depth` may ask for: serde_json stops at 128 levels on its own.
pub const MAX_DEPTH_CAP: usize = 127;

/// The longest JSON pointer put in a violation location (keys are input and may be long).
pub const MAX_POINTER_BYTES: usize = 512;

/// Limits of one JSON document.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonLimits {
    /// Nesting of arrays and objects; clamped to [`MAX_DEPTH_CAP`].
    pub max_depth: usize,
    /// Keys of one object.
    pub max_object_keys: usize,
    /// Values in the whole document (containers and scalars).
    pub max_total_values: usize,
    /// UTF-8 bytes of one string or key, after unescaping.
    pub max_string_bytes: usize,
    /// Items of one array.
    pub max_array_items: usize,
    /// Largest magnitude of a number; `f64::INFINITY` lifts the limit.
    pub max_number_magnitude: f64,
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits {
            max_depth: 32,
            max_object_keys: 1000,
            max_total_values: 100_000,
            max_string_bytes: 65_536,
            max_array_items: 10_000,
            // 2^53-1: I-JSON's (RFC 7493) range of exactly representable integers.
            max_number_magnitude: 9_007_199_254_740_991.0,
        }
    }
}

/// Why a body was refused. Pointers are RFC 6901 JSON pointers (`""` for the whole document).
#[derive(Debug, Clone, PartialEq)]
pub enum JsonError {
    /// Not JSON: a syntax error, or content after the document.
    Malformed { offset: usize },
    /// The same key twice in one object; the pointer names the second one.
    DuplicateKey { pointer: String },
    /// A container nested deeper than `limit`; the pointer names it.
    TooDeep { pointer: String, limit: usize },
    /// An object with more than `limit` keys.
    TooManyKeys { pointer: String, limit: usize },
    /// More than `limit` values in the document.
    TooManyValues { limit: usize },
    /// A string value longer than `limit` bytes.
    StringTooLong { pointer: String, limit: usize },
    /// A key longer than `limit` bytes; the pointer names its object.
    KeyTooLong { pointer: String, limit: usize },
    /// An array with more than `limit` items.
    ArrayTooLong { pointer: String, limit: usize },
    /// A number whose magnitude is above `limit` (or beyond what an `f64` holds).
    NumberTooLarge { pointer: String, limit: f64 },
}

impl JsonError {
    /// The JSON pointer of the offending value, if the error has one.
    pub fn pointer(&self) -> Option<&str> {
        match self {
            JsonError::Malformed { .. } | JsonError::TooManyValues { .. } => None,
            JsonError::DuplicateKey { pointer }
            | JsonError::TooDeep { pointer, .. }
            | JsonError::TooManyKeys { pointer, .. }
            | JsonError::StringTooLong { pointer, .. }
            | JsonError::KeyTooLong { pointer, .. }
            | JsonError::ArrayTooLong { pointer, .. }
            | JsonError::NumberTooLarge { pointer, .. } => Some(pointer),
        }
    }

    /// What is wrong, quoting the limit and never the input.
    pub fn message(&self) -> String {
        match self {
            JsonError::Malformed { offset } => format!("not valid JSON (at byte {offset})"),
            JsonError::DuplicateKey { .. } => "duplicate key".to_owned(),
            JsonError::TooDeep { limit, .. } => format!("nesting deeper than {limit}"),
            JsonError::TooManyKeys { limit, .. } => format!("more than {limit} keys"),
            JsonError::TooManyValues { limit } => format!("more than {limit} values"),
            JsonError::StringTooLong { limit, .. } => format!("string longer than {limit} bytes"),
            JsonError::KeyTooLong { limit, .. } => format!("key longer than {limit} bytes"),
            JsonError::ArrayTooLong { limit, .. } => format!("more than {limit} items"),
            JsonError::NumberTooLarge { limit, .. } => format!("number beyond ±{limit}"),
        }
    }

    /// The violation to report: located at `body` or `body:<pointer>`.
    pub fn violation(&self) -> Violation {
        Violation::new(
            location("body", self.pointer().unwrap_or("")),
            self.message(),
        )
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pointer() {
            Some(p) if !p.is_empty() => write!(f, "{p}: {}", self.message()),
            _ => f.write_str(&self.message()),
        }
    }
}

impl std::error::Error for JsonError {}

/// A violation location: `prefix` alone for the root, else `prefix:pointer`; if the prefix
/// already names a field (`query:filter`), the pointer is appended to it (`query:filter/color`).
pub fn location(prefix: &str, pointer: &str) -> String {
    if pointer.is_empty() {
        return prefix.to_owned();
    }
    let mut out = String::with_capacity(prefix.len() + 1 + pointer.len());
    out.push_str(prefix);
    if !prefix.contains(':') {
        out.push(':');
    }
    out.push_str(pointer);
    out
}

/// Appends `/segment` to a JSON pointer, escaped (`~` → `~0`, `/` → `~1`), stopping with `…`
/// once the pointer would pass [`MAX_POINTER_BYTES`].
pub fn push_segment(pointer: &mut String, segment: &str) {
    if pointer.len() >= MAX_POINTER_BYTES {
        return;
    }
    pointer.push('/');
    for c in segment.chars() {
        if pointer.len() + c.len_utf8() + 1 > MAX_POINTER_BYTES {
            pointer.push('…');
            return;
        }
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// Appends `/index` to a JSON pointer (same bound as [`push_segment`]).
pub fn push_index(pointer: &mut String, index: usize) {
    if pointer.len() < MAX_POINTER_BYTES {
        use fmt::Write as _;
        let _ = write!(pointer, "/{index}");
    }
}

/// Parses `body` as one JSON document under `limits`.
pub fn parse(body: &[u8], limits: &JsonLimits) -> Result<Value, JsonError> {
    let mut ctx = Ctx {
        limits: JsonLimits {
            max_depth: limits.max_depth.min(MAX_DEPTH_CAP),
            ..limits.clone()
        },
        depth: 0,
        values: 0,
        broken: None,
        trail: Vec::new(),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let res = Node { ctx: &mut ctx }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match res {
        Ok(v) => Ok(v),
        Err(e) => Err(ctx.into_error(body, &e)),
    }
}

/// Which limit broke (the pointer is assembled from the unwound frames).
#[derive(Debug, Clone, Copy)]
enum Broken {
    Duplicate,
    Deep,
    Keys,
    Values,
    Str,
    Key,
    Array,
    Number,
}

/// One step of the pointer of the offending value, innermost first.
enum Seg {
    Key(String),
    Index(usize),
}

struct Ctx {
    limits: JsonLimits,
    depth: usize,
    values: usize,
    broken: Option<Broken>,
    /// Filled only while an error unwinds (one segment per container frame, at most
    /// [`MAX_DEPTH_CAP`]).
    trail: Vec<Seg>,
}

impl Ctx {
    fn fail<E: de::Error>(&mut self, what: Broken) -> E {
        self.broken = Some(what);
        // The text is never shown: the error is rebuilt from `broken` and `trail`.
        E::custom("limit")
    }

    fn into_error(self, body: &[u8], e: &serde_json::Error) -> JsonError {
        let mut pointer = String::new();
        for seg in self.trail.iter().rev() {
            match seg {
                Seg::Key(k) => push_segment(&mut pointer, k),
                Seg::Index(i) => push_index(&mut pointer, *i),
            }
        }
        let l = &self.limits;
        let Some(broken) = self.broken else {
            let msg = e.to_string();
            // serde_json reads a number too large for an f64 as a syntax error; for the client
            // it is a number out of the contract's range.
            if msg.starts_with("number out of range") {
                return JsonError::NumberTooLarge {
                    pointer,
                    limit: l.max_number_magnitude,
                };
            }
            // serde_json's own limit, one level past `MAX_DEPTH_CAP`.
            if msg.starts_with("recursion limit exceeded") {
                return JsonError::TooDeep {
                    pointer,
                    limit: l.max_depth,
                };
            }
            // At the end of input serde_json points at the last byte read; the problem is that
            // nothing follows it.
            let offset = if e.is_eof() {
                body.len()
            } else {
                portcullis_core::json_error_offset(body, e.line(), e.column())
            };
            return JsonError::Malformed { offset };
        };
        match broken {
            Broken::Duplicate => JsonError::DuplicateKey { pointer },
            Broken::Deep => JsonError::TooDeep {
                pointer,
                limit: l.max_depth,
            },
            Broken::Keys => JsonError::TooManyKeys {
                pointer,
                limit: l.max_object_keys,
            },
            Broken::Values => JsonError::TooManyValues {
                limit: l.max_total_values,
            },
            Broken::Str => JsonError::StringTooLong {
                pointer,
                limit: l.max_string_bytes,
            },
            Broken::Key => JsonError::KeyTooLong {
                pointer,
                limit: l.max_string_bytes,
            },
            Broken::Array => JsonError::ArrayTooLong {
                pointer,
                limit: l.max_array_items,
            },
            Broken::Number => JsonError::NumberTooLarge {
                pointer,
                limit: l.max_number_magnitude,
            },
        }
    }

    fn check_u64<E: de::Error>(&mut self, v: u64) -> Result<(), E> {
        let max = self.limits.max_number_magnitude;
        let f = v as f64;
        // `as f64` rounds: at equality compare as integers (the cast of `max` saturates).
        let over = if f == max { v > max as u64 } else { f > max };
        if over {
            return Err(self.fail(Broken::Number));
        }
        Ok(())
    }

    fn check_str<E: de::Error>(&mut self, v: &str) -> Result<(), E> {
        if v.len() > self.limits.max_string_bytes {
            return Err(self.fail(Broken::Str));
        }
        Ok(())
    }
}

/// Any value.
struct Node<'c> {
    ctx: &'c mut Ctx,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.ctx.values += 1;
        if self.ctx.values > self.ctx.limits.max_total_values {
            return Err(self.ctx.fail(Broken::Values));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.ctx.check_u64(v)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.ctx.check_u64(v.unsigned_abs())?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        if !v.is_finite() || v.abs() > self.ctx.limits.max_number_magnitude {
            return Err(self.ctx.fail(Broken::Number));
        }
        match Number::from_f64(v) {
            Some(n) => Ok(Value::Number(n)),
            None => Err(self.ctx.fail(Broken::Number)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.ctx.check_str(v)?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.ctx.check_str(&v)?;
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let ctx = self.ctx;
        ctx.depth += 1;
        if ctx.depth > ctx.limits.max_depth {
            return Err(ctx.fail(Broken::Deep));
        }
        let mut items = Vec::new();
        loop {
            // At the limit, one more item is refused before it is read; the end of the array
            // is still accepted. The error then names the array itself.
            if items.len() >= ctx.limits.max_array_items {
                seq.next_element_seed(Refuse {
                    ctx: &mut *ctx,
                    what: Broken::Array,
                })?;
                break;
            }
            match seq.next_element_seed(Node { ctx: &mut *ctx }) {
                Ok(Some(v)) => items.push(v),
                Ok(None) => break,
                Err(e) => {
                    ctx.trail.push(Seg::Index(items.len()));
                    return Err(e);
                }
            }
        }
        ctx.depth -= 1;
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let ctx = self.ctx;
        ctx.depth += 1;
        if ctx.depth > ctx.limits.max_depth {
            return Err(ctx.fail(Broken::Deep));
        }
        let mut out = Map::new();
        loop {
            // Errors on a key (too many, too long) name this object.
            if out.len() >= ctx.limits.max_object_keys {
                map.next_key_seed(Refuse {
                    ctx: &mut *ctx,
                    what: Broken::Keys,
                })?;
                break;
            }
            let key = map.next_key_seed(Key { ctx: &mut *ctx })?;
            let Some(key) = key else { break };
            // One lookup per key: the slot is found before the value is read.
            let slot = match out.entry(key) {
                serde_json::map::Entry::Vacant(slot) => slot,
                serde_json::map::Entry::Occupied(taken) => {
                    let e = ctx.fail(Broken::Duplicate);
                    ctx.trail.push(Seg::Key(taken.key().clone()));
                    return Err(e);
                }
            };
            match map.next_value_seed(Node { ctx: &mut *ctx }) {
                Ok(v) => {
                    slot.insert(v);
                }
                Err(e) => {
                    ctx.trail.push(Seg::Key(slot.key().clone()));
                    return Err(e);
                }
            }
        }
        ctx.depth -= 1;
        Ok(Value::Object(out))
    }
}

/// A seed that refuses whatever value or key comes: reading it means a limit is passed.
struct Refuse<'c> {
    ctx: &'c mut Ctx,
    what: Broken,
}

impl<'de> DeserializeSeed<'de> for Refuse<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(self.ctx.fail(self.what))
    }
}

/// An object key, checked against the string limit.
struct Key<'c> {
    ctx: &'c mut Ctx,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        if v.len() > self.ctx.limits.max_string_bytes {
            return Err(self.ctx.fail(Broken::Key));
        }
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        if v.len() > self.ctx.limits.max_string_bytes {
            return Err(self.ctx.fail(Broken::Key));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn small() -> JsonLimits {
        JsonLimits {
            max_depth: 3,
            max_object_keys: 2,
            max_total_values: 10,
            max_string_bytes: 4,
            max_array_items: 3,
            max_number_magnitude: 100.0,
        }
    }

    fn err(body: &str, limits: &JsonLimits) -> JsonError {
        match parse(body.as_bytes(), limits) {
            Ok(v) => panic!("{body} parsed as {v}"),
            Err(e) => e,
        }
    }

    fn ok(body: &str, limits: &JsonLimits) -> Value {
        match parse(body.as_bytes(), limits) {
            Ok(v) => v,
            Err(e) => panic!("{body} refused: {e}"),
        }
    }

    #[test]
    fn builds_the_same_value_as_serde_json() {
        let body =
            r#" {"a": [1, -2, 2.5, true, false, null, "x\u00e9\n"], "b": {"c": {}}, "d": []} "#;
        let want: Value = serde_json::from_str(body).unwrap();
        assert_eq!(ok(body, &JsonLimits::default()), want);
        assert_eq!(ok("  \"s\" ", &JsonLimits::default()), json!("s"));
        assert_eq!(ok("17", &JsonLimits::default()), json!(17));
        assert_eq!(ok("null", &JsonLimits::default()), Value::Null);
    }

    #[test]
    fn default_limits() {
        let l = JsonLimits::default();
        assert_eq!(l.max_depth, 32);
        assert_eq!(l.max_object_keys, 1000);
        assert_eq!(l.max_total_values, 100_000);
        assert_eq!(l.max_string_bytes, 65_536);
        assert_eq!(l.max_array_items, 10_000);
        assert_eq!(l.max_number_magnitude, 9_007_199_254_740_991.0);
    }

    #[test]
    fn duplicate_keys() {
        let l = JsonLimits::default();
        assert_eq!(
            err(r#"{"a":1,"a":2}"#, &l),
            JsonError::DuplicateKey {
                pointer: "/a".into()
            }
        );
        assert_eq!(
            err(r#"{"x":[{"b":1},{"a":1,"\u0061":2}]}"#, &l),
            JsonError::DuplicateKey {
                pointer: "/x/1/a".into()
            }
        );
        // Byte-equal after unescaping only: no Unicode normalisation, case is significant.
        ok(r#"{"a":1,"A":2,"é":3,"e\u0301":4}"#, &l);
        let e = err(r#"{"a/b":{"k":1,"k":1}}"#, &l);
        assert_eq!(e.violation().location, "body:/a~1b/k");
        assert_eq!(e.violation().message, "duplicate key");
    }

    #[test]
    fn depth_at_and_over_the_limit() {
        let l = small();
        ok("[[[1]]]", &l);
        ok(r#"{"a":{"b":{"c":1}}}"#, &l);
        assert_eq!(
            err("[[[[1]]]]", &l),
            JsonError::TooDeep {
                pointer: "/0/0/0".into(),
                limit: 3
            }
        );
        assert_eq!(
            err(r#"{"a":[{"b":{}}]}"#, &l),
            JsonError::TooDeep {
                pointer: "/a/0/b".into(),
                limit: 3
            }
        );
        let zero = JsonLimits {
            max_depth: 0,
            ..small()
        };
        ok("1", &zero);
        assert_eq!(
            err("[]", &zero),
            JsonError::TooDeep {
                pointer: String::new(),
                limit: 0
            }
        );
        let d = JsonLimits::default();
        let deep32 = format!("{}{}", "[".repeat(32), "]".repeat(32));
        ok(&deep32, &d);
        let deep33 = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert_eq!(
            err(&deep33, &d).violation(),
            Violation::new(
                format!("body:{}", "/0".repeat(32)),
                "nesting deeper than 32"
            )
        );
    }

    #[test]
    fn depth_is_clamped_below_serde_jsons_recursion_limit() {
        let huge = JsonLimits {
            max_depth: 10_000,
            ..JsonLimits::default()
        };
        let deep = format!("{}{}", "[".repeat(127), "]".repeat(127));
        ok(&deep, &huge);
        // Level 128 is refused by serde_json itself, still with a pointer.
        let deeper = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert_eq!(
            err(&deeper, &huge),
            JsonError::TooDeep {
                pointer: "/0".repeat(127),
                limit: 127
            }
        );
        let deepest = "[".repeat(200);
        assert!(matches!(
            err(&deepest, &huge),
            JsonError::TooDeep { limit: 127, .. }
        ));
        let capped = JsonLimits {
            max_depth: 127,
            ..JsonLimits::default()
        };
        assert_eq!(
            parse(deep.as_bytes(), &capped),
            parse(deep.as_bytes(), &huge)
        );
    }

    #[test]
    fn nesting_bomb_stops_at_the_limit() {
        let bomb = "[".repeat(100_000);
        assert!(matches!(
            err(&bomb, &JsonLimits::default()),
            JsonError::TooDeep { limit: 32, .. }
        ));
        let bomb = r#"{"a":"#.repeat(100_000);
        let e = err(&bomb, &JsonLimits::default());
        assert_eq!(e.pointer(), Some("/a".repeat(32).as_str()));
    }

    #[test]
    fn keys_at_and_over_the_limit() {
        let l = small();
        ok(r#"{"a":1,"b":2}"#, &l);
        assert_eq!(
            err(r#"{"a":1,"b":2,"c":3}"#, &l),
            JsonError::TooManyKeys {
                pointer: String::new(),
                limit: 2
            }
        );
        assert_eq!(
            err(r#"[{"a":{"x":1,"y":2,"z":3}}]"#, &l).violation(),
            Violation::new("body:/0/a", "more than 2 keys")
        );
    }

    #[test]
    fn total_values_at_and_over_the_limit() {
        let l = small();
        // 2 arrays + 8 numbers = 10 values.
        let wide = JsonLimits {
            max_array_items: 10,
            ..small()
        };
        ok("[[1,2,3],4,5,6,7,8]", &wide);
        assert_eq!(
            err("[[1,2,3],4,5,6,7,8,9]", &wide),
            JsonError::TooManyValues { limit: 10 }
        );
        let e = err("[[1,2,3],[4,5,6],[7,8,9]]", &l);
        assert_eq!(e, JsonError::TooManyValues { limit: 10 });
        assert_eq!(e.violation(), Violation::new("body", "more than 10 values"));
        // Object keys are not values.
        ok(
            r#"{"a":{"b":1,"c":2},"d":[1,2,3,4]}"#,
            &JsonLimits {
                max_object_keys: 5,
                max_array_items: 5,
                ..small()
            },
        );
    }

    #[test]
    fn strings_at_and_over_the_limit() {
        let l = small();
        ok(r#"["abcd","éé"]"#, &l);
        // Counted in bytes after unescaping: \u00e9 is 2 bytes, "ééé" is 6.
        ok(r#""\u00e9\u00e9""#, &l);
        assert_eq!(
            err(r#"["abcde"]"#, &l),
            JsonError::StringTooLong {
                pointer: "/0".into(),
                limit: 4
            }
        );
        assert_eq!(
            err(r#"{"k":"ééé"}"#, &l).violation(),
            Violation::new("body:/k", "string longer than 4 bytes")
        );
        // Borrowed (no escapes) and owned (escapes) strings alike.
        assert!(matches!(
            err(r#"{"k":"a\nbcd"}"#, &l),
            JsonError::StringTooLong { .. }
        ));
    }

    #[test]
    fn keys_over_the_string_limit() {
        let l = small();
        ok(r#"{"abcd":1}"#, &l);
        let e = err(r#"{"a":{"abcde":1}}"#, &l);
        assert_eq!(
            e,
            JsonError::KeyTooLong {
                pointer: "/a".into(),
                limit: 4
            }
        );
        assert_eq!(e.violation().message, "key longer than 4 bytes");
        assert!(matches!(
            err(r#"{"ab\ncd":1}"#, &l),
            JsonError::KeyTooLong { .. }
        ));
    }

    #[test]
    fn arrays_at_and_over_the_limit() {
        let l = small();
        ok("[1,2,3]", &l);
        ok("[]", &l);
        assert_eq!(
            err("[1,2,3,4]", &l),
            JsonError::ArrayTooLong {
                pointer: String::new(),
                limit: 3
            }
        );
        // The extra item is refused before it is read: a malformed one still says "too long".
        assert!(matches!(
            err("[1,2,3,@]", &l),
            JsonError::ArrayTooLong { .. }
        ));
        assert_eq!(
            err(r#"{"a":[[1,2,3,4]]}"#, &l).violation(),
            Violation::new("body:/a/0", "more than 3 items")
        );
    }

    #[test]
    fn numbers_at_and_over_the_limit() {
        let d = JsonLimits::default();
        for n in [
            "9007199254740991",
            "-9007199254740991",
            "9007199254740991.0",
            "9.007199254740991e15",
            "0.5",
            "-0",
            "1e-400",
        ] {
            ok(n, &d);
        }
        for n in [
            "9007199254740992",
            "-9007199254740992",
            "18446744073709551615",
            "-9223372036854775808",
            "18446744073709551616",
            "1e16",
            "-1.5e300",
        ] {
            assert_eq!(
                err(n, &d),
                JsonError::NumberTooLarge {
                    pointer: String::new(),
                    limit: 9_007_199_254_740_991.0
                },
                "{n}"
            );
        }
        let e = err(r#"{"a":[1, 1e400]}"#, &d);
        // serde_json calls it "number out of range"; reported as a number beyond the limit.
        assert_eq!(
            e.violation(),
            Violation::new("body:/a/1", "number beyond ±9007199254740991")
        );
        let l = small();
        ok("[100, -100, 100.0]", &l);
        assert!(matches!(err("101", &l), JsonError::NumberTooLarge { .. }));
        assert!(matches!(err("-101", &l), JsonError::NumberTooLarge { .. }));
        assert!(matches!(err("100.5", &l), JsonError::NumberTooLarge { .. }));
        // An integer limit that an f64 cannot tell from its neighbours.
        let big = JsonLimits {
            max_number_magnitude: 1_152_921_504_606_846_976.0, // 2^60
            ..d.clone()
        };
        ok("1152921504606846976", &big);
        assert!(matches!(
            err("1152921504606846977", &big),
            JsonError::NumberTooLarge { .. }
        ));
        let unlimited = JsonLimits {
            max_number_magnitude: f64::INFINITY,
            ..d
        };
        ok("1.7976931348623157e308", &unlimited);
        assert!(matches!(
            err("1e309", &unlimited),
            JsonError::NumberTooLarge { .. }
        ));
    }

    #[test]
    fn malformed_offsets() {
        let d = JsonLimits::default();
        let cases: &[(&str, usize)] = &[
            ("", 0),
            ("{", 1),
            ("   ", 3),
            (r#"{"a":1,}"#, 7),
            ("[1,2", 4),
            (r#"{"a""#, 4),
            ("[1 2]", 3),
            ("{\n  \"a\": tru\n}", 13),
            ("{} x", 3),
            ("1 2", 2),
            ("\u{feff}{}", 0),
            ("nul", 3),
            ("nux", 2),
            ("'a'", 0),
        ];
        for (body, at) in cases {
            assert_eq!(
                err(body, &d),
                JsonError::Malformed { offset: *at },
                "{body:?}"
            );
        }
        assert_eq!(
            err(r#"{"password":"hunter2" x}"#, &d).violation(),
            Violation::new("body", "not valid JSON (at byte 22)")
        );
        // Invalid UTF-8 in a string.
        assert!(matches!(
            parse(b"[\"\xff\"]", &d),
            Err(JsonError::Malformed { .. })
        ));
        // Whitespace around the document is fine.
        ok(" \n\t[1]\r\n ", &d);
    }

    #[test]
    fn pointers_escape_keys_and_are_bounded() {
        let d = JsonLimits {
            max_array_items: 0,
            ..JsonLimits::default()
        };
        assert_eq!(
            err(r#"{"a/b":{"c~d":{"":[1]}}}"#, &d).violation().location,
            "body:/a~1b/c~0d/"
        );
        let long = "k".repeat(5000);
        let body = format!(r#"{{"{long}":{{"{long}":[1]}}}}"#);
        let e = err(&body, &d);
        let p = e.pointer().unwrap();
        assert!(p.len() <= MAX_POINTER_BYTES + '…'.len_utf8(), "{}", p.len());
        assert!(p.ends_with('…'));
        assert!(p.starts_with("/kkk"));
    }

    #[test]
    fn locations() {
        assert_eq!(location("body", ""), "body");
        assert_eq!(location("body", "/a/0"), "body:/a/0");
        assert_eq!(location("query:filter", "/color"), "query:filter/color");
        let mut p = String::new();
        push_segment(&mut p, "a/b~c");
        push_index(&mut p, 7);
        assert_eq!(p, "/a~1b~0c/7");
    }

    #[test]
    fn display_and_messages() {
        let e = JsonError::TooManyKeys {
            pointer: "/a".into(),
            limit: 1000,
        };
        assert_eq!(e.to_string(), "/a: more than 1000 keys");
        assert_eq!(
            JsonError::Malformed { offset: 17 }.to_string(),
            "not valid JSON (at byte 17)"
        );
        assert_eq!(
            JsonError::TooDeep {
                pointer: String::new(),
                limit: 32
            }
            .to_string(),
            "nesting deeper than 32"
        );
    }
}
