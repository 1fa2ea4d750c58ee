//! Field masks: which fields of a JSON response body a caller may see.
//!
//! A mask is an allow-list of paths, compiled once (at configuration time) into a tree that
//! is walked alongside the body: applying a mask costs one hash lookup per object key and no
//! string matching of paths.
//!
//! # Paths
//!
//! * Dot-separated object keys: `id`, `customer.name`.
//! * `*` as a whole segment matches any key at its level: `*.id`, `items.*`.
//! * Arrays are traversed transparently: `items.sku` keeps `sku` in every element of `items`,
//!   at any depth of nested arrays, and a body that is an array has the mask applied to each
//!   element. Array indices are never part of a path: `items.0` names a key `"0"`.
//! * A path keeps whole whatever it ends at: a scalar, an object or an array.
//! * Escapes: `\.` is a dot inside a key, `\*` a literal `*` key, `\\` a backslash. Any other
//!   `\` is an error, and so is a `*` that is not a whole segment (`a*`), so that nobody
//!   mistakes a segment for a glob.
//! * Refused: an empty path, an empty segment (`a..b`, `.a`, `a.`), more than
//!   [`MAX_SEGMENTS`] segments, a mask whose compiled tree exceeds [`MAX_NODES`] nodes.
//!
//! # Applying
//!
//! A mask is an allow-list: a value is shown only where a listed path ends.
//!
//! * Where a path ends (at its last key, or at any key for a final `*`), the value is kept
//!   whole, whatever it is: `customer` keeps `"customer": "Alice"` and `"customer": {…}` alike.
//! * Where a path only passes through (`customer` for `customer.name`, every key for
//!   `*.id`, the body itself), only an object or array that the path can go on into is kept,
//!   and masked further; a scalar (string, number, boolean, null) there is named by no path
//!   and removed: `customer.name` on `{"customer": "Alice, 4111…"}` gives `{}`, `*.id` on
//!   `{"ssn": "x", "order": {"id": 1}}` gives `{"order": {"id": 1}}`.
//! * Arrays are transparent: their elements are at the array's position, so at a position a
//!   path passes through, scalar elements are removed and objects and arrays are masked:
//!   `items.sku` on `{"items": ["a", {"sku": "s", "x": 1}]}` gives
//!   `{"items": [{"sku": "s"}]}`; `id` on `["a", "b"]` gives `[]`.
//! * An object key no path reaches is removed, whatever its value. An object or array that
//!   a path passes through stays even when nothing in it is left (`{}`, `[]`).
//! * A scalar body is named by no path: it becomes `null`.
//! * The mask that sees nothing (the union of no masks) turns an object body into `{}`, an
//!   array body into `[]` and a scalar body into `null`.
//! * Masks combine by union ([`FieldMask::union`]): a caller holding several scopes sees every
//!   field any of them allows, so a path that keeps an object whole in one mask wins over a
//!   narrower path in another.
//!
//! Applying is iterative (an explicit stack), so no body, however deep, can exhaust the
//! thread's stack; compiling and combining recurse at most [`MAX_SEGMENTS`] deep.

use std::collections::HashMap;

use serde_json::Value;

/// The most segments a path may have. Deeper bodies are refused by the JSON parser anyway
/// (its nesting limit is 128), and no real API needs a mask this deep.
pub const MAX_SEGMENTS: usize = 64;

/// The most nodes one compiled mask may have. Wildcards are merged into their literal siblings
/// at compile time, which multiplies nodes when many wildcards interleave with literal keys;
/// this bound turns such a configuration into an error instead of a slow start.
pub const MAX_NODES: usize = 10_000;

/// The response fields a caller may see: an allow-list of paths.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMask {
    root: Node,
}

/// One position of the compiled tree.
///
/// Invariants after [`Node::normalize`]: a `whole` node has no children; every literal child
/// already includes what `any` allows (the wildcard was merged into it), so a lookup is
/// "the literal child, else the wildcard" and never has to combine two subtrees.
#[derive(Debug, Clone, Default, PartialEq)]
struct Node {
    whole: bool,
    keys: HashMap<String, Node>,
    any: Option<Box<Node>>,
}

/// A parsed path segment.
#[derive(Debug, PartialEq)]
enum Segment {
    Key(String),
    Any,
}

impl FieldMask {
    /// Compiles a list of paths (see the module documentation for their syntax). An empty list
    /// is refused: a mask that shows nothing is better expressed by denying the route.
    pub fn compile(paths: &[String]) -> Result<FieldMask, String> {
        if paths.is_empty() {
            return Err("a field mask needs at least one path".into());
        }
        let mut root = Node::default();
        for path in paths {
            let segments = parse_path(path)?;
            root.insert(&segments);
        }
        let mut budget = MAX_NODES;
        root.normalize(&mut budget).map_err(|()| {
            format!(
                "the field mask is too complex (more than {MAX_NODES} nodes once its wildcards \
                 are expanded); use fewer `*` segments"
            )
        })?;
        Ok(FieldMask { root })
    }

    /// Sees everything.
    pub fn all() -> FieldMask {
        FieldMask {
            root: Node {
                whole: true,
                ..Node::default()
            },
        }
    }

    pub fn is_all(&self) -> bool {
        self.root.whole
    }

    /// The union of several masks: a caller holding several scopes sees every field any of
    /// them allows. The union of no masks sees nothing (`{}`, `[]` or `null`, by the body's
    /// kind).
    ///
    /// Combining is done once per set of masks, not per request field; its cost grows with the
    /// product of the masks' wildcard fan-out, which [`FieldMask::compile`]'s bounds keep small.
    pub fn union<'a>(masks: impl IntoIterator<Item = &'a FieldMask>) -> FieldMask {
        let mut iter = masks.into_iter();
        let Some(first) = iter.next() else {
            return FieldMask {
                root: Node::default(),
            };
        };
        let mut root = first.root.clone();
        let mut merged = false;
        for m in iter {
            if root.whole {
                break;
            }
            root.merge(&m.root);
            merged = true;
        }
        if merged {
            // The inputs are normalized, so this only has to push each one's wildcards into
            // the other's literal keys. No bound: each input was bounded when compiled.
            let mut budget = usize::MAX;
            // Cannot fail with an unbounded budget.
            let _ = root.normalize(&mut budget);
        }
        FieldMask { root }
    }

    /// Removes everything not allowed, in place: a value survives where a path ends (whole),
    /// or where a path passes through and the value is an object or array it continues into.
    pub fn apply(&self, value: &mut Value) {
        if self.root.whole {
            return;
        }
        if !self.root.passes_on() {
            // The mask that sees nothing (the union of no masks): no position is kept, not
            // even the body's own, so nothing of it survives but its outer kind.
            match value {
                Value::Object(map) => map.clear(),
                Value::Array(items) => items.clear(),
                other => *other = Value::Null,
            }
            return;
        }
        // The body's own position is one the paths pass through: a scalar body is named by
        // none of them.
        if !is_container(value) {
            *value = Value::Null;
            return;
        }
        // Invariant of the stack: every value on it is a container at a position some path
        // passes through (its node is not `whole`).
        let mut stack: Vec<(&mut Value, &Node)> = vec![(value, &self.root)];
        while let Some((value, node)) = stack.pop() {
            match value {
                Value::Object(map) => {
                    // A member stays where a path ends at its key, or where one goes on
                    // through it into an object or array; a scalar there is not named.
                    map.retain(|k, v| {
                        node.child(k)
                            .is_some_and(|child| child.whole || is_container(v))
                    });
                    for (k, v) in map.iter_mut() {
                        if let Some(child) = node.child(k)
                            && !child.whole
                        {
                            stack.push((v, child));
                        }
                    }
                }
                Value::Array(items) => {
                    // Arrays are transparent: every element is at the array's position,
                    // which a path only passes through, so scalar elements go.
                    items.retain(is_container);
                    for item in items.iter_mut() {
                        stack.push((item, node));
                    }
                }
                // Never pushed (see the invariant); nothing to do if one were.
                Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
            }
        }
    }
}

impl portcullis_core::JsonFilter for FieldMask {
    fn apply(&self, value: &mut Value) {
        FieldMask::apply(self, value);
    }
}

fn is_container(v: &Value) -> bool {
    matches!(v, Value::Object(_) | Value::Array(_))
}

impl Node {
    /// Whether some path goes on below this position.
    fn passes_on(&self) -> bool {
        !self.keys.is_empty() || self.any.is_some()
    }

    /// The node a key of an object at this position leads to, if the key is kept.
    fn child(&self, key: &str) -> Option<&Node> {
        self.keys.get(key).or(self.any.as_deref())
    }

    /// Adds one path to a raw (not yet normalized) tree.
    fn insert(&mut self, segments: &[Segment]) {
        let mut node = self;
        for seg in segments {
            if node.whole {
                return;
            }
            node = match seg {
                Segment::Key(k) => node.keys.entry(k.clone()).or_default(),
                Segment::Any => node.any.get_or_insert_with(Box::default),
            };
        }
        node.whole = true;
    }

    /// Adds everything `other` allows to `self` (both raw or normalized; the result needs
    /// normalizing).
    fn merge(&mut self, other: &Node) {
        if self.whole {
            return;
        }
        if other.whole {
            self.make_whole();
            return;
        }
        for (k, c) in &other.keys {
            self.keys.entry(k.clone()).or_default().merge(c);
        }
        if let Some(o) = &other.any {
            self.any.get_or_insert_with(Box::default).merge(o);
        }
    }

    fn make_whole(&mut self) {
        self.whole = true;
        self.keys.clear();
        self.any = None;
    }

    /// Establishes the invariants (see [`Node`]), counting nodes against `budget`.
    fn normalize(&mut self, budget: &mut usize) -> Result<(), ()> {
        *budget = budget.checked_sub(1).ok_or(())?;
        if self.whole {
            self.make_whole();
            return Ok(());
        }
        if let Some(any) = self.any.as_deref() {
            for child in self.keys.values_mut() {
                child.merge(any);
            }
        }
        for child in self.keys.values_mut() {
            child.normalize(budget)?;
        }
        if let Some(any) = self.any.as_deref_mut() {
            any.normalize(budget)?;
        }
        Ok(())
    }
}

/// Splits a path into segments, resolving escapes.
fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let err = |what: &str| format!("field path {path:?}: {what}");
    if path.is_empty() {
        return Err(err("empty path"));
    }
    let mut segments = Vec::new();
    let mut key = String::new();
    // Whether the segment so far holds an unescaped `*`, and whether it holds anything else.
    let mut star = false;
    let mut other = false;
    let mut chars = path.chars();
    loop {
        let c = chars.next();
        match c {
            None | Some('.') => {
                let seg = match (star, other) {
                    (false, false) => return Err(err("empty segment")),
                    (true, false) if key == "*" => Segment::Any,
                    (true, _) => {
                        return Err(err(
                            "`*` must be a whole segment (write `\\*` for a literal star)",
                        ));
                    }
                    (false, true) => Segment::Key(std::mem::take(&mut key)),
                };
                segments.push(seg);
                if segments.len() > MAX_SEGMENTS {
                    return Err(err(&format!("more than {MAX_SEGMENTS} segments")));
                }
                key.clear();
                star = false;
                other = false;
                if c.is_none() {
                    break;
                }
            }
            Some('\\') => match chars.next() {
                Some(e @ ('.' | '*' | '\\')) => {
                    key.push(e);
                    other = true;
                }
                Some(e) => {
                    return Err(err(&format!(
                        "unknown escape `\\{e}` (only `\\.`, `\\*` and `\\\\` are escapes)"
                    )));
                }
                None => return Err(err("ends with a lone `\\`")),
            },
            Some('*') => {
                if star {
                    // `**` is not a segment either.
                    other = true;
                }
                star = true;
                key.push('*');
            }
            Some(c) => {
                key.push(c);
                other = true;
            }
        }
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mask(paths: &[&str]) -> FieldMask {
        let paths: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
        match FieldMask::compile(&paths) {
            Ok(m) => m,
            Err(e) => panic!("{paths:?} should compile: {e}"),
        }
    }

    fn masked(m: &FieldMask, mut v: Value) -> Value {
        m.apply(&mut v);
        v
    }

    fn compile_err(paths: &[&str]) -> String {
        let paths: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
        match FieldMask::compile(&paths) {
            Ok(m) => panic!("{paths:?} should not compile, got {m:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn fieldmask_keeps_listed_top_level_fields() {
        let m = mask(&["id", "name"]);
        let v = json!({"id": 1, "name": "a", "secret": "s", "nested": {"id": 2}});
        assert_eq!(masked(&m, v), json!({"id": 1, "name": "a"}));
    }

    #[test]
    fn fieldmask_nested_objects() {
        let m = mask(&["id", "customer.name", "customer.address.city"]);
        let v = json!({
            "id": 7,
            "customer": {
                "name": "Ann",
                "email": "ann@example.com",
                "address": {"city": "Oslo", "street": "Main 1"},
            },
            "total": 12,
        });
        assert_eq!(
            masked(&m, v),
            json!({"id": 7, "customer": {"name": "Ann", "address": {"city": "Oslo"}}})
        );
    }

    #[test]
    fn fieldmask_path_naming_an_object_or_array_keeps_it_whole() {
        let m = mask(&["customer", "items"]);
        let v = json!({
            "customer": {"name": "Ann", "card": {"pan": "4111"}},
            "items": [{"sku": "a", "cost": 1}, [1, 2]],
            "other": 1,
        });
        assert_eq!(
            masked(&m, v),
            json!({
                "customer": {"name": "Ann", "card": {"pan": "4111"}},
                "items": [{"sku": "a", "cost": 1}, [1, 2]],
            })
        );
    }

    #[test]
    fn fieldmask_arrays_of_objects() {
        let m = mask(&["items.sku", "items.price.amount"]);
        let v = json!({
            "items": [
                {"sku": "a", "cost": 3, "price": {"amount": 10, "margin": 4}},
                {"sku": "b", "cost": 5},
                {"cost": 9},
            ],
        });
        assert_eq!(
            masked(&m, v),
            json!({"items": [{"sku": "a", "price": {"amount": 10}}, {"sku": "b"}, {}]})
        );
    }

    #[test]
    fn fieldmask_arrays_of_arrays() {
        let m = mask(&["matrix.x"]);
        let v = json!({
            "matrix": [[{"x": 1, "y": 2}], [{"x": 3, "y": 4}, [{"x": 5, "y": 6}]], []],
        });
        assert_eq!(
            masked(&m, v),
            json!({"matrix": [[{"x": 1}], [{"x": 3}, [{"x": 5}]], []]})
        );
    }

    #[test]
    fn fieldmask_top_level_array() {
        let m = mask(&["id"]);
        let v = json!([{"id": 1, "pw": "x"}, {"id": 2, "pw": "y"}, [{"id": 3, "pw": "z"}]]);
        assert_eq!(masked(&m, v), json!([{"id": 1}, {"id": 2}, [{"id": 3}]]));
    }

    #[test]
    fn fieldmask_scalars_where_a_path_only_passes_are_dropped() {
        // A wildcard passes through every top-level key: a scalar there is no `id`.
        let m = mask(&["*.id"]);
        let v = json!({"ssn": "x", "order": {"id": 1, "secret": 2}});
        assert_eq!(masked(&m, v), json!({"order": {"id": 1}}));
        // A scalar where the path expected an object to go into.
        let m = mask(&["customer.name"]);
        let v = json!({"customer": "Alice, 4111 1111 1111 1111", "id": 1});
        assert_eq!(masked(&m, v), json!({}));
        assert_eq!(masked(&m, json!({"customer": null})), json!({}));
        assert_eq!(
            masked(&m, json!({"customer": [true, 7]})),
            json!({"customer": []})
        );
        // Array elements are at the array's position: scalars there go, objects are masked.
        let m = mask(&["items.sku"]);
        let v = json!({"items": ["secret1", 1, null, {"sku": "s", "x": 1}, ["secret2"]]});
        assert_eq!(masked(&m, v), json!({"items": [{"sku": "s"}, []]}));
        // A top-level array of scalars: nothing of it is named.
        let m = mask(&["id"]);
        assert_eq!(masked(&m, json!(["a", "b"])), json!([]));
        assert_eq!(
            masked(&m, json!(["a", {"id": 1, "pw": 2}, 3])),
            json!([{"id": 1}])
        );
        // A scalar body is not named by any path either.
        assert_eq!(masked(&m, json!("text")), Value::Null);
        assert_eq!(masked(&m, json!(42)), Value::Null);
        // Where a path ends, a scalar is what it names: kept, as is anything under a `*` end.
        let m = mask(&["customer", "tags.*"]);
        let v = json!({"customer": "Alice", "tags": {"a": 1, "b": [2, "x"]}, "z": 1});
        assert_eq!(
            masked(&m, v),
            json!({"customer": "Alice", "tags": {"a": 1, "b": [2, "x"]}})
        );
    }

    #[test]
    fn fieldmask_objects_not_named_become_absent() {
        let m = mask(&["a.b"]);
        let v = json!({"a": {"c": {"d": 1}}, "e": {"f": 1}});
        assert_eq!(masked(&m, v), json!({"a": {}}));
    }

    #[test]
    fn fieldmask_wildcard_any_key() {
        let m = mask(&["*.id"]);
        let v = json!({
            "order": {"id": 1, "secret": 2},
            "user": {"id": 3, "pw": 4},
            "list": [{"id": 5, "x": 6}],
            "flat": 7,
        });
        assert_eq!(
            masked(&m, v),
            json!({"order": {"id": 1}, "user": {"id": 3}, "list": [{"id": 5}]})
        );
    }

    #[test]
    fn fieldmask_wildcard_keeps_children_whole() {
        let m = mask(&["items.*"]);
        let v = json!({"items": [{"a": {"deep": 1}, "b": 2}], "other": 1});
        assert_eq!(
            masked(&m, v),
            json!({"items": [{"a": {"deep": 1}, "b": 2}]})
        );
    }

    #[test]
    fn fieldmask_wildcard_and_literal_siblings_combine() {
        let m = mask(&["*.id", "items.sku"]);
        let v = json!({
            "items": [{"id": 1, "sku": "a", "cost": 2}],
            "user": {"id": 3, "sku": "no"},
        });
        assert_eq!(
            masked(&m, v),
            json!({"items": [{"id": 1, "sku": "a"}], "user": {"id": 3}})
        );
        // A literal that keeps a subtree whole is not narrowed by a sibling wildcard.
        let m = mask(&["*.id", "user"]);
        let v = json!({"user": {"id": 1, "pw": 2}, "order": {"id": 3, "pw": 4}});
        assert_eq!(
            masked(&m, v),
            json!({"user": {"id": 1, "pw": 2}, "order": {"id": 3}})
        );
        // And the other way round: a whole wildcard keeps every key whole.
        let m = mask(&["*", "user.id"]);
        let v = json!({"user": {"id": 1, "pw": 2}, "x": {"y": 1}});
        assert_eq!(masked(&m, v.clone()), v);
    }

    #[test]
    fn fieldmask_nested_wildcards() {
        let m = mask(&["*.*.id"]);
        let v = json!({"a": {"b": {"id": 1, "x": 2}, "c": 3}, "d": 4});
        assert_eq!(masked(&m, v), json!({"a": {"b": {"id": 1}}}));
    }

    #[test]
    fn fieldmask_whole_path_wins_in_one_mask() {
        let v = json!({"customer": {"name": "Ann", "email": "e"}});
        for paths in [["customer", "customer.name"], ["customer.name", "customer"]] {
            let m = mask(&paths);
            assert_eq!(masked(&m, v.clone()), v, "{paths:?}");
        }
    }

    #[test]
    fn fieldmask_union_sees_what_any_mask_allows() {
        let a = mask(&["id", "customer.name"]);
        let b = mask(&["total", "customer.email"]);
        let u = FieldMask::union([&a, &b]);
        let v = json!({
            "id": 1, "total": 2, "secret": 3,
            "customer": {"name": "Ann", "email": "e", "phone": "p"},
        });
        assert_eq!(
            masked(&u, v),
            json!({"id": 1, "total": 2, "customer": {"name": "Ann", "email": "e"}})
        );
    }

    #[test]
    fn fieldmask_union_whole_object_wins_over_narrower_path() {
        let wide = mask(&["customer"]);
        let narrow = mask(&["customer.name"]);
        let v = json!({"customer": {"name": "Ann", "email": "e"}, "x": 1});
        let want = json!({"customer": {"name": "Ann", "email": "e"}});
        assert_eq!(masked(&FieldMask::union([&narrow, &wide]), v.clone()), want);
        assert_eq!(masked(&FieldMask::union([&wide, &narrow]), v), want);
    }

    #[test]
    fn fieldmask_union_merges_wildcards_across_masks() {
        let a = mask(&["*.id"]);
        let b = mask(&["items.sku"]);
        let u = FieldMask::union([&a, &b]);
        assert_eq!(u, mask(&["*.id", "items.sku"]));
        let v = json!({"items": [{"id": 1, "sku": "a", "c": 2}], "u": {"id": 2, "sku": 3}});
        assert_eq!(
            masked(&u, v),
            json!({"items": [{"id": 1, "sku": "a"}], "u": {"id": 2}})
        );
    }

    #[test]
    fn fieldmask_union_with_all_is_all_and_empty_union_sees_nothing() {
        let a = mask(&["id"]);
        let all = FieldMask::all();
        assert!(FieldMask::union([&a, &all]).is_all());
        assert!(FieldMask::union([&all, &a]).is_all());
        assert!(!FieldMask::union([&a]).is_all());
        assert_eq!(FieldMask::union([&a]), a);

        let none = FieldMask::union(std::iter::empty());
        assert!(!none.is_all());
        assert_eq!(masked(&none, json!({"a": 1, "b": [{"c": 1}]})), json!({}));
        assert_eq!(masked(&none, json!([{"a": 1}, "s", 2])), json!([]));
        assert_eq!(masked(&none, json!("secret")), Value::Null);
        assert_eq!(masked(&none, json!(7)), Value::Null);
        // The union of nothing with a mask is that mask.
        assert_eq!(FieldMask::union([&none, &a]), a);
    }

    #[test]
    fn fieldmask_all_keeps_everything() {
        let m = FieldMask::all();
        assert!(m.is_all());
        let v = json!({"a": [1, {"b": null}], "c": "d"});
        assert_eq!(masked(&m, v.clone()), v);
        assert!(!mask(&["a"]).is_all());
        assert!(!mask(&["*"]).is_all());
    }

    #[test]
    fn fieldmask_escaped_dots_stars_and_backslashes() {
        let m = mask(&["a\\.b", "c\\*", "d\\\\e.f"]);
        let v = json!({
            "a.b": 1,
            "a": {"b": 2},
            "c*": 3,
            "cx": 4,
            "d\\e": {"f": 5, "g": 6},
        });
        assert_eq!(masked(&m, v), json!({"a.b": 1, "c*": 3, "d\\e": {"f": 5}}));
        // `\*` as a whole segment is the key "*", not a wildcard.
        let m = mask(&["\\*"]);
        assert_eq!(masked(&m, json!({"*": 1, "x": 2})), json!({"*": 1}));
    }

    #[test]
    fn fieldmask_keys_that_look_like_numbers_are_keys_not_indices() {
        let m = mask(&["0.name", "items.1"]);
        let v = json!({
            "0": {"name": "zero", "pw": "x"},
            "1": {"name": "one"},
            "items": [{"0": "a", "1": "b"}, {"1": "c"}],
        });
        assert_eq!(
            masked(&m, v),
            json!({"0": {"name": "zero"}, "items": [{"1": "b"}, {"1": "c"}]})
        );
        // On a top-level array, `0` does not select the first element.
        let m = mask(&["0"]);
        assert_eq!(
            masked(&m, json!([{"0": 1, "a": 2}, {"a": 3}])),
            json!([{"0": 1}, {}])
        );
    }

    #[test]
    fn fieldmask_compile_errors() {
        assert!(compile_err(&[]).contains("at least one"));
        assert!(compile_err(&[""]).contains("empty path"));
        for p in ["a..b", ".a", "a.", "."] {
            assert!(compile_err(&[p]).contains("empty segment"), "{p}");
        }
        assert!(compile_err(&["a\\"]).contains("lone"));
        assert!(compile_err(&["a\\n"]).contains("unknown escape"));
        for p in ["a*", "*a", "**", "a.b*c"] {
            assert!(compile_err(&[p]).contains("whole segment"), "{p}");
        }
        let deep = vec!["a"; MAX_SEGMENTS + 1].join(".");
        assert!(compile_err(&[deep.as_str()]).contains("segments"));
        let ok = vec!["a"; MAX_SEGMENTS].join(".");
        assert!(FieldMask::compile(&[ok]).is_ok());
        // A bad path among good ones is named.
        assert!(compile_err(&["id", "x..y"]).contains("\"x..y\""));
    }

    #[test]
    fn fieldmask_wildcard_blow_up_is_refused() {
        // Each path is `*` everywhere but one literal position: merging wildcards into literal
        // siblings would produce a tree exponential in the number of paths.
        let depth = 40;
        let paths: Vec<String> = (0..depth)
            .map(|i| {
                (0..depth)
                    .map(|j| if i == j { "k" } else { "*" })
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .collect();
        let e = match FieldMask::compile(&paths) {
            Ok(_) => panic!("should be refused"),
            Err(e) => e,
        };
        assert!(e.contains("too complex"), "{e}");
    }

    #[test]
    fn fieldmask_is_order_independent() {
        assert_eq!(mask(&["a.b", "*.c", "d"]), mask(&["d", "*.c", "a.b"]));
    }

    #[test]
    fn fieldmask_filter_trait_applies_the_mask() {
        let m: std::sync::Arc<dyn portcullis_core::JsonFilter> = std::sync::Arc::new(mask(&["a"]));
        let mut v = json!({"a": 1, "b": 2});
        m.apply(&mut v);
        assert_eq!(v, json!({"a": 1}));
    }

    /// Takes a deeply nested value apart without recursion, so dropping it cannot overflow.
    fn dismantle(v: Value) {
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                Value::Array(items) => stack.extend(items),
                Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
                _ => {}
            }
        }
    }

    #[test]
    fn fieldmask_deep_body_near_the_parser_limit() {
        // 120 levels of `{"a": …, "drop": 1}`, the mask reaching 60 of them and keeping the
        // rest whole below that.
        let depth = 120;
        let mut text = String::new();
        for _ in 0..depth {
            text.push_str("{\"drop\":1,\"a\":");
        }
        text.push_str("{\"leaf\":true}");
        for _ in 0..depth {
            text.push('}');
        }
        let mut v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => panic!("parse: {e}"),
        };
        let mut path = vec!["a"; 60].join(".");
        path.push_str(".keep");
        let m = mask(&[path.as_str(), &vec!["a"; 60].join(".")]);
        // Run on a small stack: applying must not recurse per level.
        let v = match std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                m.apply(&mut v);
                v
            })
            .map(|h| h.join())
        {
            Ok(Ok(v)) => v,
            _ => panic!("apply failed on a small stack"),
        };
        let mut cur = &v;
        for level in 0..depth {
            let Value::Object(map) = cur else {
                panic!("level {level} is not an object");
            };
            // Above the 60th `a` only `a` survives; from there on the value is kept whole.
            if level < 60 {
                assert!(!map.contains_key("drop"), "level {level}");
            } else {
                assert!(map.contains_key("drop"), "level {level}");
            }
            cur = &map["a"];
        }
        assert_eq!(cur, &json!({"leaf": true}));
    }

    #[test]
    fn fieldmask_huge_deep_value_does_not_blow_the_stack() {
        // Built in code (the parser would refuse it): 100 000 nested arrays around an object.
        let mut v = json!({"id": 1, "secret": 2});
        for _ in 0..100_000 {
            v = Value::Array(vec![v, json!({"secret": 3})]);
        }
        let m = mask(&["id"]);
        let v = match std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                m.apply(&mut v);
                v
            })
            .map(|h| h.join())
        {
            Ok(Ok(v)) => v,
            _ => panic!("apply failed on a small stack"),
        };
        // Walk down the first elements to the innermost object.
        let mut levels = 0;
        let mut cur = &v;
        while let Value::Array(items) = cur {
            assert_eq!(items.get(1), Some(&json!({})));
            levels += 1;
            cur = &items[0];
        }
        assert_eq!(levels, 100_000);
        assert_eq!(cur, &json!({"id": 1}));
        dismantle(v);
    }

    #[test]
    fn fieldmask_wide_body() {
        let items: Vec<Value> = (0..100_000)
            .map(|i| json!({"id": i, "secret": "s", "tags": [{"k": 1, "v": 2}]}))
            .collect();
        let mut v = json!({ "items": items });
        mask(&["items.id", "items.tags.k"]).apply(&mut v);
        let Some(items) = v["items"].as_array() else {
            panic!("items missing");
        };
        assert_eq!(items.len(), 100_000);
        assert_eq!(items[99_999], json!({"id": 99_999, "tags": [{"k": 1}]}));
    }
}
