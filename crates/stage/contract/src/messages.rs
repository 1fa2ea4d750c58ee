//! Violations from JSON Schema validation errors, worded from the contract and never from the
//! input.
//!
//! jsonschema's own messages quote the offending value (`"abc" is not of type "integer"`), which
//! would echo client input — secrets, markup, megabytes — into responses and logs. Messages here
//! are built from the error kind and the schema's constraint only: `must be an integer`, `must
//! be >= 1`, `must match the pattern ^[a-z]+$`. Quoted schema text is bounded (patterns up to
//! [`MAX_QUOTED_PATTERN`] characters, enum/const values up to [`MAX_QUOTED_VALUES`] bytes).
//!
//! # Locations
//!
//! The location is the prefix joined with the error's instance path (see
//! [`crate::json::location`]): a prefix naming a whole part gets `:` and the JSON pointer
//! (`body` + `/items/0/qty` → `body:/items/0/qty`; the root is `body`), a prefix already naming
//! a field gets the pointer appended (`query:filter` + `/color` → `query:filter/color`; the
//! parameter itself is `query:filter`). Where the error is about a key rather than a value, the
//! key is appended: `required` names the missing property (`body:/customer/email` — `is
//! required`), `additionalProperties: false` / `unevaluatedProperties: false` name each unknown
//! key (`unknown field`, one violation per key in [`collect`]). Keys are part of locations as
//! in the rest of the contract; pointers are cut at [`crate::json::MAX_POINTER_BYTES`].

use std::fmt::Write as _;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{JsonType, ValidationError, Validator};
use portcullis_core::Violation;
use serde_json::Value;

use crate::json::{location, push_segment};

/// Longest pattern quoted in a message; longer ones are "the required pattern".
pub const MAX_QUOTED_PATTERN: usize = 100;
/// Longest list of `enum` values (or a `const` value) quoted in a message.
pub const MAX_QUOTED_VALUES: usize = 200;

/// The violation for one validation error (for `additionalProperties` and
/// `unevaluatedProperties`, the first unknown key: [`collect`] reports each).
pub fn violation(location_prefix: &str, error: &ValidationError<'_>) -> Violation {
    let path = error.instance_path().as_str();
    match unknown_keys(error.kind()).and_then(<[String]>::first) {
        Some(key) => key_violation(location_prefix, path, key, "unknown field"),
        None => Violation::new(
            key_location(location_prefix, path, error.kind()),
            message(error.kind(), 0),
        ),
    }
}

/// Validates `instance` and pushes a violation per error while `out` holds fewer than `cap`.
pub fn collect(
    location_prefix: &str,
    validator: &Validator,
    instance: &Value,
    out: &mut Vec<Violation>,
    cap: usize,
) {
    // Most bodies are valid, and `is_valid` stops at the first failure without building errors.
    if out.len() >= cap || validator.is_valid(instance) {
        return;
    }
    for error in validator.iter_errors(instance) {
        if out.len() >= cap {
            return;
        }
        match unknown_keys(error.kind()) {
            Some(keys) if !keys.is_empty() => {
                let path = error.instance_path().as_str();
                for key in keys {
                    if out.len() >= cap {
                        return;
                    }
                    out.push(key_violation(location_prefix, path, key, "unknown field"));
                }
            }
            _ => out.push(violation(location_prefix, &error)),
        }
    }
}

fn unknown_keys(kind: &ValidationErrorKind) -> Option<&[String]> {
    match kind {
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => Some(unexpected),
        _ => None,
    }
}

fn key_violation(prefix: &str, path: &str, key: &str, message: &str) -> Violation {
    let mut p = path.to_owned();
    push_segment(&mut p, key);
    Violation::new(location(prefix, &p), message)
}

/// The location of an error: its instance path, plus the missing key for `required`.
fn key_location(prefix: &str, path: &str, kind: &ValidationErrorKind) -> String {
    if let ValidationErrorKind::Required { property } = kind {
        let mut p = path.to_owned();
        match property {
            Value::String(name) => push_segment(&mut p, name),
            other => push_segment(&mut p, &other.to_string()),
        }
        return location(prefix, &p);
    }
    location(prefix, path)
}

/// What the contract asks for, by error kind. `depth` guards the one nested kind
/// (`propertyNames`).
fn message(kind: &ValidationErrorKind, depth: usize) -> String {
    use ValidationErrorKind as K;
    match kind {
        K::AdditionalItems { limit } => format!(
            "must have at most {limit} {}",
            plural(*limit as u64, "item")
        ),
        K::AdditionalProperties { .. } | K::UnevaluatedProperties { .. } => {
            "unknown field".to_owned()
        }
        K::AnyOf { .. } => "must match at least one of the allowed shapes".to_owned(),
        K::OneOfNotValid { .. } => "must match exactly one of the allowed shapes".to_owned(),
        K::OneOfMultipleValid { .. } => {
            "must match exactly one of the allowed shapes, not several".to_owned()
        }
        K::Not { .. } => "must not match the excluded shape".to_owned(),
        K::BacktrackLimitExceeded { .. } | K::RegexEngineFailure { .. } => {
            "could not be checked against the required pattern".to_owned()
        }
        K::Pattern { pattern } => {
            if pattern.chars().count() <= MAX_QUOTED_PATTERN {
                format!("must match the pattern {pattern}")
            } else {
                "must match the required pattern".to_owned()
            }
        }
        K::Constant { expected_value } => {
            let mut s = "must be ".to_owned();
            quote_values(&mut s, std::slice::from_ref(&**expected_value));
            s
        }
        K::Enum { options } => {
            let mut s = "must be one of: ".to_owned();
            match &**options {
                Value::Array(values) => quote_values(&mut s, values),
                other => quote_values(&mut s, std::slice::from_ref(other)),
            }
            s
        }
        K::Contains => "must contain the required number of matching items".to_owned(),
        K::ContentEncoding { content_encoding } => format!("must be {content_encoding}-encoded"),
        K::ContentMediaType { content_media_type } => {
            format!("must be a valid {content_media_type} document")
        }
        K::FromUtf8 { .. } => "must decode to valid UTF-8".to_owned(),
        K::ExclusiveMaximum { limit } => format!("must be < {limit}"),
        K::ExclusiveMinimum { limit } => format!("must be > {limit}"),
        K::Maximum { limit } => format!("must be <= {limit}"),
        K::Minimum { limit } => format!("must be >= {limit}"),
        K::MultipleOf { multiple_of } => format!("must be a multiple of {multiple_of}"),
        K::FalseSchema => "must not be present".to_owned(),
        K::Format { format } => format!("must be a valid {format}"),
        K::MaxItems { limit } => format!("must have at most {limit} {}", plural(*limit, "item")),
        K::MinItems { limit } => format!("must have at least {limit} {}", plural(*limit, "item")),
        K::MaxLength { limit } => {
            format!("must be at most {limit} {}", plural(*limit, "character"))
        }
        K::MinLength { limit } => {
            format!("must be at least {limit} {}", plural(*limit, "character"))
        }
        K::MaxProperties { limit } => {
            format!("must have at most {limit} {}", plural_properties(*limit))
        }
        K::MinProperties { limit } => {
            format!("must have at least {limit} {}", plural_properties(*limit))
        }
        K::PropertyNames { error } if depth == 0 => {
            format!("property names {}", message(error.kind(), depth + 1))
        }
        K::PropertyNames { .. } => "property names are not allowed".to_owned(),
        K::Required { .. } => "is required".to_owned(),
        K::Type { kind } => type_message(kind),
        K::UnevaluatedItems { .. } => "must not have items beyond those allowed".to_owned(),
        K::UniqueItems => "must not contain duplicate items".to_owned(),
        K::Referencing(_) => {
            "could not be checked (the schema has an unresolvable reference)".to_owned()
        }
        // A user-defined keyword's message is its own: it might quote the input.
        K::Custom { keyword, .. } => format!("does not satisfy the schema ({keyword})"),
    }
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        word.to_owned()
    } else {
        format!("{word}s")
    }
}

fn plural_properties(n: u64) -> &'static str {
    if n == 1 { "property" } else { "properties" }
}

fn type_message(kind: &TypeKind) -> String {
    let names: Vec<&str> = match kind {
        TypeKind::Single(t) => vec![with_article(*t)],
        TypeKind::Multiple(set) => set.iter().map(with_article).collect(),
    };
    let mut s = "must be ".to_owned();
    match names.split_last() {
        None => s.push_str("of another type"),
        Some((last, [])) => s.push_str(last),
        Some((last, rest)) => {
            s.push_str(&rest.join(", "));
            s.push_str(" or ");
            s.push_str(last);
        }
    }
    s
}

fn with_article(t: JsonType) -> &'static str {
    match t {
        JsonType::Array => "an array",
        JsonType::Boolean => "a boolean",
        JsonType::Integer => "an integer",
        JsonType::Null => "null",
        JsonType::Number => "a number",
        JsonType::Object => "an object",
        JsonType::String => "a string",
    }
}

/// Appends schema values (`a, b, 3`: strings bare, others as JSON), cut at
/// [`MAX_QUOTED_VALUES`] bytes with `…`.
fn quote_values(out: &mut String, values: &[Value]) {
    let start = out.len();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match v {
            Value::String(s) => out.push_str(s),
            other => {
                let _ = write!(out, "{other}");
            }
        }
        if out.len() - start > MAX_QUOTED_VALUES {
            let mut cut = start + MAX_QUOTED_VALUES;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonschema::{Draft, PatternOptions};
    use serde_json::json;

    fn build(schema: &Value) -> Validator {
        jsonschema::options()
            .should_validate_formats(true)
            .build(schema)
            .unwrap()
    }

    fn check_with(v: &Validator, prefix: &str, instance: &Value) -> Vec<String> {
        let mut out = Vec::new();
        collect(prefix, v, instance, &mut out, 100);
        out.iter().map(ToString::to_string).collect()
    }

    fn check(schema: Value, instance: Value) -> Vec<String> {
        check_with(&build(&schema), "body", &instance)
    }

    fn one(schema: Value, instance: Value) -> String {
        let got = check(schema.clone(), instance);
        assert_eq!(got.len(), 1, "{schema}: {got:?}");
        got.into_iter().next().unwrap()
    }

    #[test]
    fn types() {
        assert_eq!(
            one(json!({"type": "integer"}), json!("x")),
            "body: must be an integer"
        );
        assert_eq!(
            one(json!({"type": "object"}), json!(1)),
            "body: must be an object"
        );
        assert_eq!(
            one(json!({"type": "array"}), json!(1)),
            "body: must be an array"
        );
        assert_eq!(
            one(json!({"type": "number"}), json!("1")),
            "body: must be a number"
        );
        assert_eq!(
            one(json!({"type": "boolean"}), json!(0)),
            "body: must be a boolean"
        );
        assert_eq!(one(json!({"type": "null"}), json!(0)), "body: must be null");
        assert_eq!(
            one(json!({"type": "string"}), json!(0)),
            "body: must be a string"
        );
        assert_eq!(
            one(json!({"type": ["string", "null"]}), json!(1)),
            "body: must be null or a string"
        );
        assert_eq!(
            one(json!({"type": ["array", "integer", "string"]}), json!({})),
            "body: must be an integer, a string or an array"
        );
    }

    #[test]
    fn numbers() {
        let s = json!({"properties": {"items": {"items": {"properties": {"qty": {
            "type": "integer", "minimum": 1, "maximum": 100
        }}}}}});
        assert_eq!(
            check(
                s.clone(),
                json!({"items": [{"qty": 5}, {"qty": 0}, {"qty": 101}]})
            ),
            vec![
                "body:/items/1/qty: must be >= 1",
                "body:/items/2/qty: must be <= 100"
            ]
        );
        assert_eq!(
            one(json!({"exclusiveMinimum": 0}), json!(0)),
            "body: must be > 0"
        );
        assert_eq!(
            one(json!({"exclusiveMaximum": 2.5}), json!(3)),
            "body: must be < 2.5"
        );
        assert_eq!(
            one(json!({"multipleOf": 0.5}), json!(0.7)),
            "body: must be a multiple of 0.5"
        );
        assert_eq!(
            one(json!({"multipleOf": 3}), json!(4)),
            "body: must be a multiple of 3"
        );
    }

    #[test]
    fn strings() {
        assert_eq!(
            one(json!({"maxLength": 100}), json!("x".repeat(101))),
            "body: must be at most 100 characters"
        );
        assert_eq!(
            one(json!({"maxLength": 1}), json!("ab")),
            "body: must be at most 1 character"
        );
        assert_eq!(
            one(json!({"minLength": 1}), json!("")),
            "body: must be at least 1 character"
        );
        assert_eq!(
            one(json!({"minLength": 3}), json!("ab")),
            "body: must be at least 3 characters"
        );
        assert_eq!(
            one(json!({"pattern": "^[a-z]+$"}), json!("ABC")),
            "body: must match the pattern ^[a-z]+$"
        );
        let exactly = format!("^{}$", "a".repeat(98));
        assert_eq!(
            one(json!({"pattern": exactly.clone()}), json!("b")),
            format!("body: must match the pattern {exactly}")
        );
        let long = format!("^{}$", "a".repeat(99));
        assert_eq!(
            one(json!({"pattern": long}), json!("b")),
            "body: must match the required pattern"
        );
        assert_eq!(
            one(json!({"format": "email"}), json!("nope")),
            "body: must be a valid email"
        );
        assert_eq!(
            one(json!({"format": "date-time"}), json!("yesterday")),
            "body: must be a valid date-time"
        );
    }

    #[test]
    fn enums_and_consts() {
        assert_eq!(
            one(json!({"enum": ["a", "b", 3, null, {"k": 1}]}), json!("z")),
            r#"body: must be one of: a, b, 3, null, {"k":1}"#
        );
        assert_eq!(one(json!({"const": "x"}), json!("y")), "body: must be x");
        assert_eq!(one(json!({"const": 7}), json!(8)), "body: must be 7");
        let many: Vec<String> = (0..100).map(|i| format!("value{i:03}")).collect();
        let got = one(json!({ "enum": many }), json!("z"));
        let listed = got.strip_prefix("body: must be one of: ").unwrap();
        assert!(listed.starts_with("value000, value001, "));
        assert!(listed.ends_with('…'));
        assert_eq!(listed.len(), MAX_QUOTED_VALUES + '…'.len_utf8());
        // Cut on a character boundary.
        let wide = vec!["é".repeat(150), "b".into()];
        let got = one(json!({ "enum": wide }), json!("z"));
        assert!(got.ends_with('…'));
    }

    #[test]
    fn objects() {
        assert_eq!(
            check(
                json!({"properties": {"customer": {"required": ["name", "a/b"]}}}),
                json!({"customer": {}})
            ),
            vec![
                "body:/customer/name: is required",
                "body:/customer/a~1b: is required"
            ]
        );
        assert_eq!(
            one(json!({"required": ["id"]}), json!({})),
            "body:/id: is required"
        );
        assert_eq!(
            one(json!({"properties": {"x": false}}), json!({"x": 1})),
            "body:/x: must not be present"
        );
        assert_eq!(
            check(
                json!({"properties": {"a": {}}, "additionalProperties": false}),
                json!({"a": 1, "x": 1, "y~": 2})
            ),
            vec!["body:/x: unknown field", "body:/y~0: unknown field"]
        );
        assert_eq!(
            check(
                json!({"allOf": [{"properties": {"a": {}}}], "unevaluatedProperties": false}),
                json!({"a": 1, "z": 1})
            ),
            vec!["body:/z: unknown field"]
        );
        assert_eq!(
            one(json!({"maxProperties": 1}), json!({"a": 1, "b": 2})),
            "body: must have at most 1 property"
        );
        assert_eq!(
            one(json!({"minProperties": 2}), json!({"a": 1})),
            "body: must have at least 2 properties"
        );
        assert_eq!(
            one(
                json!({"propertyNames": {"pattern": "^[a-z]+$"}}),
                json!({"ABC": 1})
            ),
            "body: property names must match the pattern ^[a-z]+$"
        );
        assert_eq!(
            one(
                json!({"propertyNames": {"maxLength": 3}}),
                json!({"abcd": 1})
            ),
            "body: property names must be at most 3 characters"
        );
    }

    #[test]
    fn arrays() {
        assert_eq!(
            one(json!({"maxItems": 2}), json!([1, 2, 3])),
            "body: must have at most 2 items"
        );
        assert_eq!(
            one(json!({"minItems": 1}), json!([])),
            "body: must have at least 1 item"
        );
        assert_eq!(
            one(json!({"uniqueItems": true}), json!([1, 1])),
            "body: must not contain duplicate items"
        );
        assert_eq!(
            one(json!({"contains": {"type": "string"}}), json!([1])),
            "body: must contain the required number of matching items"
        );
        assert_eq!(
            one(
                json!({"prefixItems": [{}], "unevaluatedItems": false}),
                json!([1, "secret"])
            ),
            "body: must not have items beyond those allowed"
        );
        let v = jsonschema::options()
            .with_draft(Draft::Draft7)
            .build(&json!({"items": [{}], "additionalItems": false}))
            .unwrap();
        assert_eq!(
            check_with(&v, "body", &json!([1, 2])),
            vec!["body: must have at most 1 item"]
        );
    }

    #[test]
    fn combinators() {
        assert_eq!(
            one(
                json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
                json!(null)
            ),
            "body: must match at least one of the allowed shapes"
        );
        assert_eq!(
            one(
                json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
                json!(null)
            ),
            "body: must match exactly one of the allowed shapes"
        );
        assert_eq!(
            one(
                json!({"oneOf": [{"type": "integer"}, {"minimum": 0}]}),
                json!(1)
            ),
            "body: must match exactly one of the allowed shapes, not several"
        );
        assert_eq!(
            one(json!({"not": {"type": "string"}}), json!("s")),
            "body: must not match the excluded shape"
        );
    }

    #[test]
    fn content_keywords() {
        // Asserted by draft 7 (annotations only from 2019-09 on).
        let d7 = |schema: Value| {
            jsonschema::options()
                .with_draft(Draft::Draft7)
                .build(&schema)
                .unwrap()
        };
        let v = d7(json!({"contentEncoding": "base64"}));
        assert_eq!(
            check_with(&v, "body", &json!("!!")),
            vec!["body: must be base64-encoded"]
        );
        let v = d7(json!({"contentMediaType": "application/json"}));
        assert_eq!(
            check_with(&v, "body", &json!("{")),
            vec!["body: must be a valid application/json document"]
        );
        let v = d7(json!({"contentEncoding": "base64", "contentMediaType": "application/json"}));
        // base64 of the single byte 0xFF: not UTF-8.
        assert_eq!(
            check_with(&v, "body", &json!("/w==")),
            vec!["body: must decode to valid UTF-8"]
        );
    }

    #[test]
    fn regex_failures() {
        let v = jsonschema::options()
            .with_pattern_options(PatternOptions::fancy_regex().backtrack_limit(1))
            .build(&json!({"pattern": "^((a+)+)(?!a)b"}))
            .unwrap();
        assert_eq!(
            check_with(&v, "body", &json!("aaaaaaaaaaaaaaaaaaaaaaaac")),
            vec!["body: could not be checked against the required pattern"]
        );
        let kind = ValidationErrorKind::RegexEngineFailure {
            message: "boom".into(),
        };
        assert_eq!(
            message(&kind, 0),
            "could not be checked against the required pattern"
        );
    }

    #[test]
    fn referencing_and_custom_keywords() {
        let err = jsonschema::validator_for(&json!({"$ref": "#/$defs/missing"})).unwrap_err();
        assert!(matches!(err.kind(), ValidationErrorKind::Referencing(_)));
        assert_eq!(
            violation("body", &err).message,
            "could not be checked (the schema has an unresolvable reference)"
        );

        struct Even;
        impl<'i> jsonschema::Keyword<'i> for Even {
            fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
                if self.is_valid(instance) {
                    Ok(())
                } else {
                    Err(ValidationError::custom(format!("{instance} is odd")))
                }
            }
            fn is_valid(&self, instance: &'i Value) -> bool {
                instance.as_u64().is_none_or(|n| n % 2 == 0)
            }
        }
        let v = jsonschema::options()
            .with_keyword("even", |_, _, _| Ok(Box::new(Even)))
            .build(&json!({"properties": {"n": {"even": true}}}))
            .unwrap();
        assert_eq!(
            check_with(&v, "body", &json!({"n": 31337})),
            vec!["body:/n: does not satisfy the schema (even)"]
        );
        let nested = ValidationErrorKind::PropertyNames {
            error: Box::new(ValidationError::custom("x")),
        };
        assert_eq!(message(&nested, 1), "property names are not allowed");
    }

    #[test]
    fn parameter_prefixes() {
        let v = build(
            &json!({"type": "object", "properties": {"color": {"type": "string"}}, "required": ["size"]}),
        );
        assert_eq!(
            check_with(&v, "query:filter", &json!({"color": 5})),
            vec![
                "query:filter/size: is required",
                "query:filter/color: must be a string"
            ]
        );
        assert_eq!(
            check_with(&v, "query:filter", &json!(1)),
            vec!["query:filter: must be an object"]
        );
        assert_eq!(
            check_with(&v, "header:x-f", &json!([])),
            vec!["header:x-f: must be an object"]
        );
    }

    #[test]
    fn input_is_never_quoted() {
        let secret = "SECRET<script>";
        let schema = json!({"properties": {
            "a": {"type": "integer"}, "b": {"maxLength": 2}, "c": {"pattern": "^x$"},
            "d": {"enum": ["x"]}, "e": {"const": "x"}, "f": {"format": "email"},
            "g": {"anyOf": [{"type": "integer"}]}, "h": {"oneOf": [{"type": "integer"}]},
            "i": {"not": {"type": "string"}}, "j": {"contains": {"type": "integer"}},
            "k": {"uniqueItems": true}, "l": {"propertyNames": {"maxLength": 1}},
            "m": false, "n": {"prefixItems": [{}], "unevaluatedItems": false},
            "o": {"minLength": 100}
        }});
        let s = json!(secret);
        let instance = json!({
            "a": s, "b": s, "c": s, "d": s, "e": s, "f": s, "g": s, "h": s, "i": s,
            "j": [s], "k": [s, s], "l": {"SECRET<script>": 1}, "m": s, "n": [1, s], "o": s
        });
        let got = check(schema, instance);
        assert_eq!(got.len(), 15, "{got:?}");
        for v in &got {
            // Keys are locations, never messages.
            let message = v.split_once(": ").unwrap().1;
            assert!(!message.contains("SECRET"), "{v}");
        }
    }

    #[test]
    fn cap_and_single_violations() {
        let v = build(
            &json!({"properties": {"a": {}}, "additionalProperties": false, "required": ["a"]}),
        );
        let instance = json!({"x": 1, "y": 2, "z": 3});
        let mut out = Vec::new();
        collect("body", &v, &instance, &mut out, 2);
        assert_eq!(out.len(), 2);
        let mut out = vec![Violation::new("query:q", "earlier")];
        collect("body", &v, &instance, &mut out, 1);
        assert_eq!(out.len(), 1);
        let mut out = Vec::new();
        collect("body", &v, &instance, &mut out, 100);
        assert_eq!(out.len(), 4);
        let mut out = Vec::new();
        collect("body", &v, &json!({"a": 1}), &mut out, 100);
        assert!(out.is_empty());
        // `violation` reports the first unknown key.
        let first = v
            .iter_errors(&instance)
            .find(|e| unknown_keys(e.kind()).is_some())
            .unwrap();
        assert_eq!(
            violation("body", &first),
            Violation::new("body:/x", "unknown field")
        );
    }
}
