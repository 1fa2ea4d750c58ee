//! JSON bodies: streamed through serde_json into targets, without building a `Value`; strings
//! without escapes are borrowed from the body.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::{MAX_PATH, MAX_SEGMENT, Problem, Sink, truncate};
use crate::model::{Location, Part, Target};

/// Reads `body` as one JSON document, pushing its keys and leaves; `top_array` receives the
/// length of a top-level array.
pub(super) fn extract<'a>(
    body: &'a [u8],
    max_depth: usize,
    sink: &mut Sink<'a, '_>,
    top_array: &mut Option<usize>,
) -> Result<(), Problem> {
    extract_with(body, max_depth, sink, top_array, true)
}

/// Reads the JSON value `body` starts with, as [`extract`] does, ignoring what follows it —
/// what a streaming decoder reading one value does (Go's `json.Decoder`).
pub(super) fn extract_leading<'a>(
    body: &'a [u8],
    max_depth: usize,
    sink: &mut Sink<'a, '_>,
    top_array: &mut Option<usize>,
) -> Result<(), Problem> {
    extract_with(body, max_depth, sink, top_array, false)
}

fn extract_with<'a>(
    body: &'a [u8],
    max_depth: usize,
    sink: &mut Sink<'a, '_>,
    top_array: &mut Option<usize>,
    whole: bool,
) -> Result<(), Problem> {
    let mut ctx = Ctx {
        sink,
        path: String::with_capacity(64),
        depth: 0,
        max_depth,
        top_array: None,
        too_deep: false,
        repeated_key: false,
    };
    ctx.path.push('$');
    let mut de = serde_json::Deserializer::from_slice(body);
    let res = Node { ctx: &mut ctx }
        .deserialize(&mut de)
        .and_then(|()| if whole { de.end() } else { Ok(()) });
    *top_array = ctx.top_array;
    match res {
        Ok(()) => Ok(()),
        Err(e) => {
            let at = portcullis_core::json_error_offset(body, e.line(), e.column());
            // serde_json's own recursion limit (128) is reached first if `max_depth` is higher.
            if ctx.too_deep || e.to_string().starts_with("recursion limit exceeded") {
                Err(Problem::TooDeep { at })
            } else {
                Err(Problem::Malformed { at })
            }
        }
    }
}

struct Ctx<'s, 'a, 'o> {
    sink: &'s mut Sink<'a, 'o>,
    /// The JSON path of the value being read.
    path: String,
    depth: usize,
    max_depth: usize,
    top_array: Option<usize>,
    too_deep: bool,
    /// A repeated key was reported (once per body).
    repeated_key: bool,
}

impl<'a> Ctx<'_, 'a, '_> {
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.depth += 1;
        if self.depth > self.max_depth {
            self.too_deep = true;
            return Err(E::custom("nesting deeper than the inspection limit"));
        }
        Ok(())
    }

    fn leaf(&mut self, value: Cow<'a, str>) {
        if self.sink.full || value.is_empty() {
            return;
        }
        let name = self.path.clone();
        self.sink
            .push(Target::new(Location::Body, name, Part::Value, value));
    }

    fn push_index(&mut self, i: usize) {
        if self.path.len() < MAX_PATH {
            let _ = write!(self.path, "[{i}]");
        }
    }

    fn push_key(&mut self, key: &str) {
        if self.path.len() >= MAX_PATH {
            return;
        }
        let key = truncate(key, MAX_SEGMENT);
        let mut bytes = key.bytes();
        let ident = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ident {
            self.path.push('.');
            self.path.push_str(key);
        } else {
            self.path.push_str("['");
            for c in key.chars() {
                if c == '\'' || c == '\\' {
                    self.path.push('\\');
                }
                self.path.push(c);
            }
            self.path.push_str("']");
        }
    }
}

/// Any JSON value at the current path.
struct Node<'c, 's, 'a, 'o> {
    ctx: &'c mut Ctx<'s, 'a, 'o>,
}

impl<'a> DeserializeSeed<'a> for Node<'_, '_, 'a, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'a>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'a> Visitor<'a> for Node<'_, '_, 'a, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.ctx
            .leaf(Cow::Borrowed(if v { "true" } else { "false" }));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        if !self.ctx.sink.full {
            self.ctx.leaf(Cow::Owned(v.to_string()));
        }
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        if !self.ctx.sink.full {
            self.ctx.leaf(Cow::Owned(v.to_string()));
        }
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        if !self.ctx.sink.full {
            self.ctx.leaf(Cow::Owned(v.to_string()));
        }
        Ok(())
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'a str) -> Result<(), E> {
        self.ctx.leaf(Cow::Borrowed(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if !self.ctx.sink.full {
            self.ctx.leaf(Cow::Owned(v.to_owned()));
        }
        Ok(())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.ctx.leaf(Cow::Owned(v));
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<(), A::Error> {
        let ctx = self.ctx;
        ctx.enter()?;
        let top = ctx.depth == 1;
        let mut n = 0usize;
        loop {
            let base = ctx.path.len();
            if !ctx.sink.full {
                ctx.push_index(n);
            }
            let next = seq.next_element_seed(Node { ctx: &mut *ctx });
            ctx.path.truncate(base);
            match next? {
                Some(()) => n += 1,
                None => break,
            }
        }
        if top {
            ctx.top_array = Some(n);
        }
        ctx.depth -= 1;
        Ok(())
    }

    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.ctx;
        ctx.enter()?;
        // A key repeated in one object is read first-wins by some parsers and last-wins by
        // others (and by the WAF as both): what the upstream takes may be the one no rule
        // looked at as such (ten harmless `query`s, then introspection).
        let mut keys: Vec<Cow<'a, str>> = Vec::new();
        let mut many: Option<std::collections::HashSet<Cow<'a, str>>> = None;
        while let Some(key) = map.next_key_seed(Key)? {
            let repeated = match &mut many {
                Some(set) => !set.insert(key.clone()),
                None if keys.len() < 16 => {
                    let r = keys.contains(&key);
                    keys.push(key.clone());
                    r
                }
                None => {
                    let mut set: std::collections::HashSet<Cow<'a, str>> = keys.drain(..).collect();
                    let r = !set.insert(key.clone());
                    many = Some(set);
                    r
                }
            };
            if repeated && !ctx.repeated_key {
                ctx.repeated_key = true;
                ctx.sink.ambiguous("a key repeated in a JSON object");
            }
            let base = ctx.path.len();
            if !ctx.sink.full {
                ctx.push_key(&key);
            }
            if !ctx.sink.full && !key.is_empty() {
                let name = ctx.path.clone();
                ctx.sink
                    .push(Target::new(Location::Body, name, Part::Name, key));
            }
            let value = map.next_value_seed(Node { ctx: &mut *ctx });
            ctx.path.truncate(base);
            value?;
        }
        ctx.depth -= 1;
        Ok(())
    }
}

/// An object key, borrowed when it has no escapes.
struct Key;

impl<'a> DeserializeSeed<'a> for Key {
    type Value = Cow<'a, str>;

    fn deserialize<D: de::Deserializer<'a>>(self, d: D) -> Result<Cow<'a, str>, D::Error> {
        d.deserialize_str(Key)
    }
}

impl<'a> Visitor<'a> for Key {
    type Value = Cow<'a, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'a str) -> Result<Cow<'a, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'a, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'a, str>, E> {
        Ok(Cow::Owned(v))
    }
}
