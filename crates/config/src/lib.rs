//! # portcullis-config
//!
//! The configuration in two layers.
//!
//! * **Takes**: YAML text ([`load_file`], [`load_str`]).
//! * **Produces**: a validated [`Config`] — addresses, CIDRs, durations, sizes, templates,
//!   header names parsed; certificates, keys and secrets loaded; references between sections
//!   resolved.
//! * **Rejects**: unknown keys, wrong types, and every semantic error, *all at once*, each with
//!   its path (`routes[3].upstream: unknown upstream "billing"`). Structural errors are found by
//!   validating the YAML against the JSON Schema generated from the raw types ([`schema`]), so
//!   one pass reports all of them instead of serde's first.
//!
//! Invariant: a [`Config`] value is only ever built by [`compile`]; holding one means the whole
//! file was valid.

#![forbid(unsafe_code)]

mod compile;
pub mod raw;
pub mod validated;

use std::path::Path;

pub use compile::{compile, parse_template};
/// Re-exported so that steps can hold parsed CIDRs without their own dependency.
pub use ipnet::IpNet as IpNetRef;
/// The files an OpenAPI document names, transitively, read or not (for the reload watcher).
pub use portcullis_contract::openapi::files_named as openapi_files_named;
pub use portcullis_core::{ConfigError, ConfigErrors};
pub use raw::RawConfig;
pub use validated::*;

/// The JSON Schema of the configuration file, for editors and for structural validation.
pub fn schema() -> serde_json::Value {
    let schema = schemars::schema_for!(RawConfig);
    let mut schema = serde_json::to_value(schema).unwrap_or(serde_json::Value::Null);
    bound_unsigned(&mut schema);
    schema
}

/// schemars gives `uint8` and `uint16` fields a `maximum` but not the wider unsigned ones:
/// without it a value too large for its field (`5000000000` for a `u32`) would pass the
/// schema and fail deserialisation with an error that names no path.
fn bound_unsigned(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            let max = match o.get("format").and_then(Value::as_str) {
                Some("uint32") => Some(u64::from(u32::MAX)),
                // `usize`: the same bound where it is 32 bits wide.
                Some("uint") => u64::try_from(usize::MAX).ok(),
                _ => None,
            };
            if let Some(max) = max
                && !o.contains_key("maximum")
            {
                o.insert("maximum".into(), max.into());
            }
            o.values_mut().for_each(bound_unsigned);
        }
        Value::Array(a) => a.iter_mut().for_each(bound_unsigned),
        _ => {}
    }
}

/// The configuration as the admin API shows it: what the operator wrote, with what may be a
/// secret hidden — inline secrets (`{ value: … }`), the password of every URL
/// (`redis://:pw@host`, wherever it is), and the values of credential-bearing header fields a
/// route sets or adds ([`raw::is_credential_header`]).
pub fn shown(raw: &RawConfig) -> serde_json::Value {
    fn hide(v: &mut serde_json::Value) {
        match v {
            // Every URL in the string, not only a first one (`redis://:a@h/0,redis://:b@k/0`).
            serde_json::Value::String(s) => {
                if let std::borrow::Cow::Owned(r) = portcullis_core::redact_urls_in(s) {
                    *s = r;
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(hide),
            serde_json::Value::Object(o) => o.values_mut().for_each(hide),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(raw).unwrap_or(serde_json::Value::Null);
    hide(&mut v);
    v
}

/// Reads, validates and compiles a configuration file. Relative paths inside it resolve against
/// the file's folder.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        let mut e = ConfigErrors::new();
        e.push("", format!("cannot read {}: {err}", path.display()));
        e
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut cfg = load_str(&text, base)?;
    cfg.source = Some(path.to_path_buf());
    Ok(cfg)
}

/// A YAML document's shape, for finding repeated keys: the JSON value the configuration is
/// read into keeps the last of them silently (two `auth:` sections: the first is gone).
enum Shape {
    Map(Vec<(String, Shape)>),
    Seq(Vec<Shape>),
    Scalar,
}

impl<'de> serde::Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
                let mut entries = Vec::new();
                // Keys by their text, as the JSON value names them: `1` and `'1'` are one key
                // there, `16` and `0x10` two. (A key that is not a scalar makes the whole
                // check give up; the JSON reading then reports it.)
                while let Some(k) = a.next_key::<String>()? {
                    entries.push((k, a.next_value::<Shape>()?));
                }
                Ok(Shape::Map(entries))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = a.next_element::<Shape>()? {
                    items.push(v);
                }
                Ok(Shape::Seq(items))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_none<E>(self) -> Result<Shape, E> {
                Ok(Shape::Scalar)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
                <Shape as serde::Deserialize>::deserialize(d)
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(self, a: A) -> Result<Shape, A::Error> {
                // A tagged value (`!tag x`): what it holds.
                let (_, v) = a.variant::<serde::de::IgnoredAny>()?;
                serde::de::VariantAccess::newtype_variant::<Shape>(v)
            }
        }
        d.deserialize_any(V)
    }
}

/// Every key written twice in one mapping, by the path of the key.
fn repeated_keys(shape: &Shape, path: &str, e: &mut ConfigErrors) {
    match shape {
        Shape::Map(entries) => {
            let mut seen = std::collections::HashSet::new();
            let mut told = std::collections::HashSet::new();
            for (k, v) in entries {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if !seen.insert(k.as_str()) && told.insert(k.as_str()) {
                    e.push(
                        at.clone(),
                        "written more than once in the same mapping (only the last would be \
                         used): merge them",
                    );
                }
                repeated_keys(v, &at, e);
            }
        }
        Shape::Seq(items) => {
            for (i, v) in items.iter().enumerate() {
                repeated_keys(v, &format!("{path}[{i}]"), e);
            }
        }
        Shape::Scalar => {}
    }
}

/// Parses YAML text into the raw layer, reporting every structural error.
pub fn parse_raw(text: &str) -> Result<RawConfig, ConfigErrors> {
    let mut e = ConfigErrors::new();
    // Text that is not YAML is reported below, with its position.
    if let Ok(shape) = serde_yaml_ng::from_str::<Shape>(text) {
        repeated_keys(&shape, "", &mut e);
        if !e.is_empty() {
            return Err(e);
        }
    }
    let value: serde_json::Value = match serde_yaml_ng::from_str(text) {
        Ok(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Ok(v) => v,
        Err(err) => {
            let at = err
                .location()
                .map(|l| format!("line {}, column {}", l.line(), l.column()))
                .unwrap_or_default();
            e.push(at, format!("not valid YAML: {err}"));
            return Err(e);
        }
    };
    structural_errors(&value, &mut e);
    if !e.is_empty() {
        return Err(e);
    }
    serde_json::from_value(value).map_err(|err| {
        e.push("", hide_quoted_values(&err.to_string()));
        e
    })
}

/// Parses and compiles YAML text. `base_dir` resolves relative file paths.
pub fn load_str(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let raw = parse_raw(text)?;
    compile(raw, base_dir)
}

fn structural_errors(value: &serde_json::Value, e: &mut ConfigErrors) {
    let schema = schema();
    let validator = match jsonschema::validator_for(&schema) {
        Ok(v) => v,
        Err(err) => {
            e.push(
                "",
                format!("internal error: the configuration schema does not compile: {err}"),
            );
            return;
        }
    };
    for err in validator.iter_errors(value) {
        push_error(&err, e);
    }
}

/// A schema error, by its path. An optional value (`anyOf: [T, null]`) or a choice of forms
/// that fails says only that no form fits, without the value: where exactly one form fails on
/// more than its type, that form's own errors are reported instead (an unknown key, a missing
/// one), so that the message still says what is wrong.
fn push_error(err: &jsonschema::ValidationError<'_>, e: &mut ConfigErrors) {
    use jsonschema::error::ValidationErrorKind as K;
    if let K::AnyOf { context } | K::OneOfNotValid { context } = err.kind() {
        let mut telling = context
            .iter()
            .filter(|form| !form.iter().all(|x| matches!(x.kind(), K::Type { .. })));
        if let (Some(form), None) = (telling.next(), telling.next())
            && !form.is_empty()
        {
            for sub in form {
                push_error(sub, e);
            }
            return;
        }
    }
    let path = pointer_to_path(&err.instance_path().to_string());
    e.push(path, describe(err));
}

/// The message of a schema error, without the offending value: a value in the wrong place
/// may be a secret (`token: "s3cr3t"` where `{ value: … }` was meant), and these messages are
/// logged, printed by `portcullis check` and returned by the admin API's reload.
fn describe(err: &jsonschema::ValidationError<'_>) -> String {
    let msg = err.masked().to_string();
    // anyOf/oneOf failures print the whole offending value; keep messages short.
    if msg.len() > 300 {
        format!("{}…", &msg[..msg.floor_char_boundary(300)])
    } else {
        msg
    }
}

/// A deserializer's message without the string values it quotes (`invalid type: string
/// "s3cr3t", expected …`): they may be secrets.
fn hide_quoted_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find("string \"") {
        let (before, after) = rest.split_at(at + "string ".len());
        out.push_str(before);
        out.push_str("(value not shown)");
        // The value ends at the last quote before ", expected" (or at the last quote).
        let tail = &after[1..];
        let end = tail
            .find("\", expected")
            .or_else(|| tail.rfind('"'))
            .map_or(tail.len(), |i| i + 1);
        rest = &tail[end.min(tail.len())..];
    }
    out.push_str(rest);
    out
}

/// `/routes/3/match/path` → `routes[3].match.path`.
pub fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty() {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests;
