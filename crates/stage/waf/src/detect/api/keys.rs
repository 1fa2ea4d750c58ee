//! Protected keys in JSON carried inside a value (a multipart part, GraphQL `variables` sent
//! as a string), found by walking the JSON as serde_json reads it: no tree is built, so the
//! memory a value costs does not grow with its size, and no size cap is needed beyond the
//! inspection limit the body already has. serde_json's recursion limit (128 levels) bounds the
//! stack.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::names::NameSet;

/// The first key, at any depth of the JSON document `json`, that names one of `fields`; none
/// when there is none. A key found before the walk stops — at nesting deeper than serde_json
/// reads (128 levels; Jackson reads a thousand), a number out of its range, text after the
/// document (Jackson ignores it by default) — still counts: a more lenient parser binds it.
pub(super) fn protected_key(fields: &NameSet, json: &str) -> Option<String> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_str(json);
    let scan = Scan {
        fields,
        found: &mut found,
    };
    let _ = scan.deserialize(&mut de);
    found
}

/// Walks one JSON value, noting the first protected key.
struct Scan<'s> {
    fields: &'s NameSet,
    found: &'s mut Option<String>,
}

impl Scan<'_> {
    fn again(&mut self) -> Scan<'_> {
        Scan {
            fields: self.fields,
            found: &mut *self.found,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    // Scalars are read past, nothing kept.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self.again())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key()? {
            if self.found.is_none() && self.fields.contains(&key) {
                *self.found = Some(key.into_owned());
            }
            map.next_value_seed(self.again())?;
        }
        Ok(())
    }
}

/// An object key, borrowed from the text when it holds no escape.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_at_any_depth_without_a_tree() {
        let fields = NameSet::new(["role", "is_admin"]);
        let find = |json: &str| protected_key(&fields, json);
        assert_eq!(
            find(r#"{"name":"eve","role":"admin"}"#).as_deref(),
            Some("role")
        );
        assert_eq!(
            find(r#"[{"a":[1,2,{"b":{"isAdmin":true}}]}]"#).as_deref(),
            Some("isAdmin")
        );
        // Escaped keys are read decoded.
        assert_eq!(find(r#"{"r\u006fle":1}"#).as_deref(), Some("role"));
        // Values are not keys.
        assert_eq!(find(r#"{"name":"role","tags":["is_admin"]}"#), None);
        // A key read before the walk stops counts: a more lenient parser binds it (a
        // document cut short, text after it, nesting deeper than serde_json reads, a number
        // out of its range).
        assert_eq!(find(r#"{"role":"admin""#).as_deref(), Some("role"));
        assert_eq!(find(r#"{"role":"admin"} x"#).as_deref(), Some("role"));
        let deep = format!(
            r#"{{"role":"admin","p":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(find(&deep).as_deref(), Some("role"));
        assert_eq!(
            find(r#"{"role":"admin","x":1e400}"#).as_deref(),
            Some("role")
        );
        // Deeper than serde_json reads, with no key before: nothing, and no overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(find(&deep), None);
        // Long values cost no tree: a few MiB read through.
        let big = format!(
            r#"{{"pad":"{}","items":[{}],"role":1}}"#,
            "x".repeat(4 << 20),
            "0,".repeat(100_000) + "0"
        );
        assert_eq!(find(&big).as_deref(), Some("role"));
    }
}
