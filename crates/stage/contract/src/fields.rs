//! Unknown, read-only and write-only fields of JSON bodies, and keep-only-declared.
//!
//! The JSON Schema validator reports but cannot remove fields, and `additionalProperties:
//! false` misfires under `allOf` (each branch sees the other branches' properties as
//! additional). So a schema is compiled once into a [`FieldTree`] — which properties each
//! object declares, which schema its property values and array items have — and bodies are
//! walked against it.
//!
//! # Compiling
//!
//! A node of the tree stands for a set of schema locations that apply to the same value
//! together. Expanding a location follows `$ref` (local `#/…` pointers into the bundled
//! document, JSON-pointer and percent unescaped; at most [`MAX_REF_HOPS`] in a chain), `allOf`,
//! `anyOf`, `oneOf`, `if`/`then`/`else` and `dependentSchemas`: for the question "is this key
//! declared?", every branch that could apply counts. Nodes are interned by their set of
//! locations, so recursive schemas (`$ref` cycles) make cycles of node ids and compile in
//! finite time. A schema yielding more than [`MAX_NODES`] nodes, or merging more than
//! [`MAX_PARTS`] locations into one node, is refused; so is a `$ref` that is not local or does
//! not resolve.
//!
//! An object node is **closed** when the union of its parts' `properties` is not empty and
//! no part opens it — and, for answers ([`Direction::Response`]), also when no part opens it
//! and it declares no keys at all while saying something of objects: a part is sealed
//! (`additionalProperties: false` without properties), or parts give a `type` and none allows
//! `object` (a `string` property the upstream filled with an object). So what an answer's
//! schema does not declare never leaves, whatever the upstream put where. A part opens it with `additionalProperties` or `unevaluatedProperties`
//! other than `false`, with a non-empty `patternProperties`, with `$dynamicRef` /
//! `$recursiveRef` (not followed), or by being an `anyOf`/`oneOf` alternative that accepts
//! anything (`true`, `{}`, or a `$ref` to one). A closed object's keys outside the union are
//! **unknown**. Free-form schemas (`{}`, `type: object` with no properties,
//! `additionalProperties: true`) have no unknown keys, but their declared properties are still
//! walked, and keys they do not declare are walked with their `additionalProperties` /
//! `unevaluatedProperties` schemas when those are schemas.
//!
//! A property's value is walked with the merge of every part's schema for that name; array
//! items with `items`, and positions covered by `prefixItems` with those too. A property is
//! read-only (write-only) when any part of its merged schema says `readOnly: true`
//! (`writeOnly: true`).
//!
//! # Applying
//!
//! - Unknown keys of closed objects: [`Unknown::Reject`] reports `unknown field` at the key,
//!   [`Unknown::Strip`] removes them, [`Unknown::Allow`] leaves them.
//! - [`Direction::Request`]: a read-only property that is present is reported as `read-only
//!   field`, whatever the unknown-field policy (a client setting `id` or `role` is the
//!   mass-assignment case the contract exists for); it is not walked further.
//! - [`Direction::Response`]: write-only properties are always removed, whatever the policy,
//!   so they never leak.
//!
//! Locations are `prefix` for the root, else `prefix:/json/pointer` (see
//! [`crate::json::location`]); pointers are built only for violations. The walk is iterative
//! (no recursion on the body), visits each value at most once and skips subtrees whose schema
//! node can change nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use portcullis_core::Violation;
use serde_json::Value;

use crate::json::{location, push_index, push_segment};

/// Most nodes one schema may compile into.
pub const MAX_NODES: usize = 10_000;
/// Most `$ref`s followed in one chain.
pub const MAX_REF_HOPS: usize = 64;
/// Most schema locations merged into one node.
pub const MAX_PARTS: usize = 1_000;

/// Which way a body goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// What to do with keys a closed object does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    Reject,
    Strip,
    Allow,
}

type NodeId = u32;

#[derive(Debug, Default)]
struct Node {
    /// Keys outside `props` are unknown.
    closed: bool,
    /// Sorted by name: few per object, so a binary search beats hashing hostile keys.
    props: Box<[(Box<str>, NodeId)]>,
    /// The schema of keys outside `props` (`additionalProperties` as a schema).
    extra: Option<NodeId>,
    prefix: Vec<NodeId>,
    items: Option<NodeId>,
    /// Read-only in the request direction, write-only in the response direction.
    forbidden: bool,
    /// Some property of this node is `forbidden`.
    has_forbidden: bool,
    /// A request's object with declared properties: a key that is another spelling of one
    /// (`AGE` beside `age`) is reported, whatever the unknown-field policy, as
    /// case-insensitive binders (ASP.NET Core, Jackson so configured) read it as the field.
    case_checked: bool,
    /// Walking a value with this node can report or change something.
    active: bool,
}

/// A schema compiled for walking bodies: see the module documentation.
#[derive(Debug)]
pub struct FieldTree {
    nodes: Vec<Node>,
    direction: Direction,
}

impl FieldTree {
    /// Compiles the schema at `pointer` (a JSON pointer into `root`, with or without a leading
    /// `#`).
    pub fn compile(root: &Value, pointer: &str, direction: Direction) -> Result<FieldTree, String> {
        let pointer = pointer.strip_prefix('#').unwrap_or(pointer);
        if root.pointer(pointer).is_none() {
            return Err(format!("no schema at #{pointer}"));
        }
        let mut c = Compiler {
            root,
            direction,
            nodes: Vec::new(),
            interned: HashMap::new(),
            queue: Vec::new(),
        };
        c.intern(vec![pointer.to_owned()])?;
        while let Some((id, list)) = c.queue.pop() {
            c.build(id, &list)?;
        }
        let mut nodes = c.nodes;
        let forbidden: Vec<bool> = nodes.iter().map(|n| n.forbidden).collect();
        for n in &mut nodes {
            n.has_forbidden = n
                .props
                .iter()
                .any(|&(_, c)| forbidden.get(c as usize).copied().unwrap_or(false));
        }
        mark_active(&mut nodes);
        Ok(FieldTree { nodes, direction })
    }

    /// The direction it was compiled for.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Walks `value`: see the module documentation. Violations are pushed while `out` holds
    /// fewer than `cap`. Returns how many fields were removed (stripped unknown fields and, in
    /// responses, write-only fields), so the caller knows whether to re-serialise.
    pub fn apply(
        &self,
        value: &mut Value,
        unknown: Unknown,
        location_prefix: &str,
        out: &mut Vec<Violation>,
        cap: usize,
    ) -> usize {
        // Without removals to make, the walk is only for reporting: stop once `out` is full.
        let mutates = unknown == Unknown::Strip || self.direction == Direction::Response;
        let mut removed = 0;
        // Path of each container pushed: (parent crumb, segment). Read only for violations.
        let mut crumbs: Vec<(usize, Seg<'_>)> = Vec::with_capacity(32);
        let mut stack: Vec<(&mut Value, NodeId, usize)> = Vec::with_capacity(32);
        if self.node(0).is_some_and(|n| n.active) {
            stack.push((value, 0, ROOT));
        }
        while let Some((v, id, at)) = stack.pop() {
            if !mutates && out.len() >= cap {
                break;
            }
            let Some(node) = self.node(id) else { continue };
            match v {
                Value::Object(map) => {
                    let check_unknown = node.closed && unknown != Unknown::Allow;
                    let forbidden = || {
                        if self.direction == Direction::Response {
                            Verdict::Remove
                        } else {
                            Verdict::Report("read-only field")
                        }
                    };
                    let verdict = |k: &str| match node.prop(k) {
                        Some(c) if self.node(c).is_some_and(|c| c.forbidden) => forbidden(),
                        Some(_) => Verdict::Keep,
                        // Another spelling of a forbidden field: binders that match names
                        // regardless of case (ASP.NET Core, Jackson with case-insensitive
                        // properties) read `IsAdmin` as `isAdmin`.
                        None if node.has_forbidden && self.forbidden_in_other_case(node, k) => {
                            forbidden()
                        }
                        // (A closed object strips or refuses it as unknown already.)
                        None if !check_unknown
                            && node.case_checked
                            && declared_in_other_case(node, k) =>
                        {
                            Verdict::Report("another spelling of a declared field")
                        }
                        None if !check_unknown => Verdict::Keep,
                        None if unknown == Unknown::Strip => Verdict::Remove,
                        None => Verdict::Report("unknown field"),
                    };
                    // Scanning first spares the common case (nothing to do) a `retain`.
                    if (check_unknown || node.has_forbidden || node.case_checked)
                        && map.keys().any(|k| !matches!(verdict(k), Verdict::Keep))
                    {
                        map.retain(|k, _| match verdict(k) {
                            Verdict::Keep => true,
                            Verdict::Remove => {
                                removed += 1;
                                false
                            }
                            Verdict::Report(msg) => {
                                if out.len() < cap {
                                    let mut p = pointer(&crumbs, at);
                                    push_segment(&mut p, k);
                                    out.push(Violation::new(location(location_prefix, &p), msg));
                                }
                                true
                            }
                        });
                    }
                    // Reversed, so that children are visited (and reported) in order.
                    for (k, child) in map.iter_mut().rev() {
                        let cid = match node.prop(k) {
                            Some(c) => c,
                            None => match node.extra {
                                Some(c) => c,
                                None => continue,
                            },
                        };
                        let Some(c) = self.node(cid) else { continue };
                        // Read-only fields were reported: nothing more to say about them.
                        if c.active && !c.forbidden && is_container(child) {
                            crumbs.push((at, Seg::Key(k)));
                            stack.push((child, cid, crumbs.len() - 1));
                        }
                    }
                }
                Value::Array(items) => {
                    if node.items.is_none() && node.prefix.is_empty() {
                        continue;
                    }
                    for (i, child) in items.iter_mut().enumerate().rev() {
                        let Some(cid) = node.prefix.get(i).copied().or(node.items) else {
                            continue;
                        };
                        if self.node(cid).is_some_and(|c| c.active) && is_container(child) {
                            crumbs.push((at, Seg::Index(i)));
                            stack.push((child, cid, crumbs.len() - 1));
                        }
                    }
                }
                _ => {}
            }
        }
        removed
    }

    fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id as usize)
    }

    /// Whether `key`, not a property of `node` as written, is one of its forbidden properties
    /// in another case.
    fn forbidden_in_other_case(&self, node: &Node, key: &str) -> bool {
        node.props.iter().any(|(name, c)| {
            self.node(*c).is_some_and(|c| c.forbidden)
                && name
                    .chars()
                    .flat_map(char::to_lowercase)
                    .eq(key.chars().flat_map(char::to_lowercase))
        })
    }
}

/// Whether `key` is not a property of `node` but one in another case.
fn declared_in_other_case(node: &Node, key: &str) -> bool {
    node.props.iter().any(|(name, _)| {
        name.chars()
            .flat_map(char::to_lowercase)
            .eq(key.chars().flat_map(char::to_lowercase))
    })
}

impl Node {
    fn prop(&self, name: &str) -> Option<NodeId> {
        self.props
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .and_then(|i| self.props.get(i))
            .map(|&(_, c)| c)
    }
}

/// The crumb index of the root value.
const ROOT: usize = usize::MAX;

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

enum Verdict {
    Keep,
    Remove,
    Report(&'static str),
}

fn is_container(v: &Value) -> bool {
    matches!(v, Value::Object(_) | Value::Array(_))
}

/// The JSON pointer of crumb `at`.
fn pointer(crumbs: &[(usize, Seg<'_>)], mut at: usize) -> String {
    let mut segs = Vec::new();
    while let Some((parent, seg)) = crumbs.get(at) {
        segs.push(seg);
        at = *parent;
    }
    let mut p = String::new();
    for seg in segs.into_iter().rev() {
        match seg {
            Seg::Key(k) => push_segment(&mut p, k),
            Seg::Index(i) => push_index(&mut p, *i),
        }
    }
    p
}

/// Marks the nodes whose walk can do something: those that are closed or have forbidden
/// properties, and every node leading to one (propagated backwards along the edges).
fn mark_active(nodes: &mut [Node]) {
    let mut parents: Vec<Vec<NodeId>> = vec![Vec::new(); nodes.len()];
    let mut work = Vec::new();
    for (id, n) in nodes.iter().enumerate() {
        let children = n
            .props
            .iter()
            .map(|(_, c)| c)
            .chain(n.extra.iter())
            .chain(n.prefix.iter())
            .chain(n.items.iter());
        for &c in children {
            if let Some(p) = parents.get_mut(c as usize) {
                p.push(id as NodeId);
            }
        }
        if n.closed || n.has_forbidden || n.case_checked {
            work.push(id as NodeId);
        }
    }
    while let Some(id) = work.pop() {
        let Some(n) = nodes.get_mut(id as usize) else {
            continue;
        };
        if n.active {
            continue;
        }
        n.active = true;
        if let Some(ps) = parents.get(id as usize) {
            work.extend(ps.iter().copied());
        }
    }
}

struct Compiler<'r> {
    root: &'r Value,
    direction: Direction,
    nodes: Vec<Node>,
    interned: HashMap<Vec<String>, NodeId>,
    queue: Vec<(NodeId, Vec<String>)>,
}

/// What the parts of one node declare, before their children are interned.
#[derive(Default)]
struct Gathered {
    open: bool,
    props: BTreeMap<String, Vec<String>>,
    extra: Vec<String>,
    prefix: Vec<Vec<String>>,
    /// Each part's `items`, with the length of that part's `prefixItems` (the positions
    /// `items` does not cover).
    items: Vec<(String, usize)>,
    read_only: bool,
    write_only: bool,
    /// A part says `additionalProperties: false` (or `unevaluatedProperties: false`).
    sealed: bool,
    /// A part has `type`, and whether any part's `type` allows an object.
    typed: bool,
    object_typed: bool,
}

impl<'r> Compiler<'r> {
    /// The node for a set of schema locations, queued for building if new.
    fn intern(&mut self, mut list: Vec<String>) -> Result<NodeId, String> {
        list.sort_unstable();
        list.dedup();
        if let Some(&id) = self.interned.get(&list) {
            return Ok(id);
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(format!(
                "the schema is too complex to check fields against (more than {MAX_NODES} nodes)"
            ));
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(Node::default());
        self.interned.insert(list.clone(), id);
        self.queue.push((id, list));
        Ok(id)
    }

    fn build(&mut self, id: NodeId, list: &[String]) -> Result<(), String> {
        let g = self.gather(list)?;
        // An answer's object where the schema declares none of its keys — sealed without
        // properties, or typed as something else (a `string` the upstream filled with an
        // object) — keeps none of them: what is not declared never leaves. (A request's such
        // object is refused by the validator already.)
        let declares_no_keys =
            self.direction == Direction::Response && (g.sealed || (g.typed && !g.object_typed));
        let closed = !g.open && (!g.props.is_empty() || declares_no_keys);
        let forbidden = match self.direction {
            Direction::Request => g.read_only,
            Direction::Response => g.write_only,
        };
        // From a BTreeMap: already sorted.
        let mut props = Vec::with_capacity(g.props.len());
        for (name, locations) in g.props {
            let c = self.intern(locations)?;
            props.push((name.into_boxed_str(), c));
        }
        let extra = if g.extra.is_empty() {
            None
        } else {
            Some(self.intern(g.extra)?)
        };
        let mut prefix = Vec::with_capacity(g.prefix.len());
        for (i, mut locations) in g.prefix.into_iter().enumerate() {
            // Position `i` also falls under the `items` of parts with fewer `prefixItems`.
            locations.extend(
                g.items
                    .iter()
                    .filter(|(_, covered)| *covered <= i)
                    .map(|(l, _)| l.clone()),
            );
            prefix.push(self.intern(locations)?);
        }
        let items = if g.items.is_empty() {
            None
        } else {
            Some(self.intern(g.items.into_iter().map(|(l, _)| l).collect())?)
        };
        let case_checked = self.direction == Direction::Request && !props.is_empty();
        let node = Node {
            closed,
            props: props.into_boxed_slice(),
            extra,
            prefix,
            items,
            forbidden,
            has_forbidden: false,
            case_checked,
            active: false,
        };
        if let Some(slot) = self.nodes.get_mut(id as usize) {
            *slot = node;
        }
        Ok(())
    }

    /// Expands `list` through `$ref` and the applicators, and collects what the parts declare.
    fn gather(&self, list: &[String]) -> Result<Gathered, String> {
        let mut g = Gathered::default();
        let mut seen: HashSet<String> = HashSet::new();
        let mut work: Vec<(String, usize)> = list.iter().map(|p| (p.clone(), 0)).collect();
        while let Some((ptr, hops)) = work.pop() {
            if seen.contains(&ptr) {
                continue;
            }
            if seen.len() >= MAX_PARTS {
                return Err(format!(
                    "the schema at #{ptr} merges more than {MAX_PARTS} schemas"
                ));
            }
            let schema = self
                .root
                .pointer(&ptr)
                .ok_or_else(|| format!("no schema at #{ptr}"))?;
            seen.insert(ptr.clone());
            // `true` and `false` declare nothing.
            let Value::Object(obj) = schema else { continue };
            if let Some(r) = obj.get("$ref") {
                if hops >= MAX_REF_HOPS {
                    return Err(format!("more than {MAX_REF_HOPS} $ref hops at #{ptr}"));
                }
                let target = self.resolve_ref(r, &ptr)?;
                work.push((target, hops + 1));
            }
            if obj.contains_key("$dynamicRef") || obj.contains_key("$recursiveRef") {
                g.open = true;
            }
            for kw in ["allOf", "anyOf", "oneOf"] {
                if let Some(Value::Array(branches)) = obj.get(kw) {
                    for (i, b) in branches.iter().enumerate() {
                        if kw != "allOf" && self.accepts_anything(b) {
                            g.open = true;
                        }
                        work.push((format!("{ptr}/{kw}/{i}"), hops));
                    }
                }
            }
            for kw in ["if", "then", "else"] {
                if obj.contains_key(kw) {
                    work.push((format!("{ptr}/{kw}"), hops));
                }
            }
            if let Some(Value::Object(deps)) = obj.get("dependentSchemas") {
                for name in deps.keys() {
                    work.push((child(&ptr, "dependentSchemas", name), hops));
                }
            }
            self.collect(&ptr, obj, &mut g);
        }
        Ok(g)
    }

    /// What one schema object declares about objects and arrays.
    fn collect(&self, ptr: &str, obj: &serde_json::Map<String, Value>, g: &mut Gathered) {
        if let Some(Value::Object(props)) = obj.get("properties") {
            for name in props.keys() {
                g.props
                    .entry(name.clone())
                    .or_default()
                    .push(child(ptr, "properties", name));
            }
        }
        match obj.get("type") {
            Some(Value::String(t)) => {
                g.typed = true;
                g.object_typed |= t == "object";
            }
            Some(Value::Array(ts)) => {
                g.typed = true;
                g.object_typed |= ts.iter().any(|t| t == "object");
            }
            _ => {}
        }
        for kw in ["additionalProperties", "unevaluatedProperties"] {
            match obj.get(kw) {
                None => {}
                Some(Value::Bool(false)) => g.sealed = true,
                Some(Value::Object(_)) => {
                    g.open = true;
                    g.extra.push(format!("{ptr}/{kw}"));
                }
                Some(_) => g.open = true,
            }
        }
        if let Some(Value::Object(pp)) = obj.get("patternProperties")
            && !pp.is_empty()
        {
            g.open = true;
        }
        let covered = match obj.get("prefixItems") {
            Some(Value::Array(tuple)) => {
                add_prefix(g, ptr, "prefixItems", tuple.len());
                tuple.len()
            }
            _ => 0,
        };
        match obj.get("items") {
            // The draft 4 tuple form, in case a schema was not converted.
            Some(Value::Array(tuple)) => add_prefix(g, ptr, "items", tuple.len()),
            Some(_) => g.items.push((format!("{ptr}/items"), covered)),
            None => {}
        }
        if obj.get("readOnly") == Some(&Value::Bool(true)) {
            g.read_only = true;
        }
        if obj.get("writeOnly") == Some(&Value::Bool(true)) {
            g.write_only = true;
        }
    }

    /// The JSON pointer a local `$ref` names.
    fn resolve_ref(&self, r: &Value, at: &str) -> Result<String, String> {
        let Value::String(r) = r else {
            return Err(format!("$ref at #{at} is not a string"));
        };
        let Some(fragment) = r.strip_prefix('#') else {
            return Err(format!("$ref {r} at #{at} is not a local reference"));
        };
        let target = percent_encoding::percent_decode_str(fragment)
            .decode_utf8()
            .map_err(|_| format!("$ref {r} at #{at} is not valid UTF-8"))?
            .into_owned();
        if self.root.pointer(&target).is_none() {
            return Err(format!("$ref {r} at #{at} does not resolve"));
        }
        Ok(target)
    }

    /// Whether an alternative accepts any value: `true`, `{}` (annotations aside), or a `$ref`
    /// chain ending at one.
    fn accepts_anything(&self, mut schema: &'r Value) -> bool {
        for _ in 0..MAX_REF_HOPS {
            let obj = match schema {
                Value::Bool(b) => return *b,
                Value::Object(obj) => obj,
                _ => return false,
            };
            let mut target = None;
            for (k, v) in obj {
                match k.as_str() {
                    "$ref" => target = Some(v),
                    "title" | "description" | "default" | "examples" | "deprecated"
                    | "$comment" | "readOnly" | "writeOnly" => {}
                    _ => return false,
                }
            }
            let Some(Value::String(r)) = target else {
                return true;
            };
            let next = r
                .strip_prefix('#')
                .and_then(|f| percent_encoding::percent_decode_str(f).decode_utf8().ok())
                .and_then(|p| self.root.pointer(&p));
            match next {
                Some(s) => schema = s,
                None => return false,
            }
        }
        false
    }
}

fn add_prefix(g: &mut Gathered, ptr: &str, kw: &str, n: usize) {
    if g.prefix.len() < n {
        g.prefix.resize_with(n, Vec::new);
    }
    for (i, slot) in g.prefix.iter_mut().take(n).enumerate() {
        slot.push(format!("{ptr}/{kw}/{i}"));
    }
}

/// `ptr/kw/<name escaped as a JSON-pointer segment>`.
fn child(ptr: &str, kw: &str, name: &str) -> String {
    let mut s = String::with_capacity(ptr.len() + kw.len() + name.len() + 2);
    s.push_str(ptr);
    s.push('/');
    s.push_str(kw);
    s.push('/');
    for c in name.chars() {
        match c {
            '~' => s.push_str("~0"),
            '/' => s.push_str("~1"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "components": {"schemas": {
                "Order": {
                    "type": "object",
                    "required": ["items"],
                    "properties": {
                        "id": {"type": "integer", "readOnly": true},
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                        "customer": {"allOf": [
                            {"$ref": "#/components/schemas/Customer"},
                            {"properties": {"note": {"type": "string"}}}
                        ]},
                        "password": {"type": "string", "writeOnly": true},
                        "meta": {"type": "object"},
                        "tags": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Tag"}},
                        "created": {"$ref": "#/components/schemas/Stamp"}
                    }
                },
                "Item": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}},
                "Customer": {"type": "object", "properties": {"name": {}, "email": {}, "secret": {"writeOnly": true}}},
                "Tag": {"properties": {"label": {"type": "string"}}},
                "Stamp": {"type": "string", "readOnly": true},
                "Node": {"properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}
                }}
            }}
        })
    }

    fn tree(root: &Value, ptr: &str, dir: Direction) -> FieldTree {
        match FieldTree::compile(root, ptr, dir) {
            Ok(t) => t,
            Err(e) => panic!("{ptr}: {e}"),
        }
    }

    fn compile_err(root: &Value, ptr: &str) -> String {
        match FieldTree::compile(root, ptr, Direction::Request) {
            Ok(t) => panic!("{ptr} compiled: {t:?}"),
            Err(e) => e,
        }
    }

    /// Applies and returns (removed, violations as "location: message").
    fn run(t: &FieldTree, v: &mut Value, unknown: Unknown) -> (usize, Vec<String>) {
        let mut out = Vec::new();
        let n = t.apply(v, unknown, "body", &mut out, 100);
        (n, out.iter().map(ToString::to_string).collect())
    }

    const ORDER: &str = "/components/schemas/Order";

    #[test]
    fn unknown_fields_rejected_stripped_or_allowed() {
        let root = doc();
        let t = tree(&root, ORDER, Direction::Request);
        assert_eq!(t.direction(), Direction::Request);
        let body = json!({
            "x": 1,
            "items": [{"sku": "a", "qty": 1, "extra": true}, {"sku": "b"}],
            "customer": {"name": "n", "note": "", "other": 1},
            "meta": {"anything": {"goes": 1}},
            "tags": {"t1": {"label": "x", "bad": 1}},
            "password": "p"
        });
        let mut v = body.clone();
        assert_eq!(
            run(&t, &mut v, Unknown::Reject),
            (
                0,
                vec![
                    "body:/x: unknown field".to_owned(),
                    "body:/customer/other: unknown field".to_owned(),
                    "body:/items/0/extra: unknown field".to_owned(),
                    "body:/tags/t1/bad: unknown field".to_owned(),
                ]
            )
        );
        assert_eq!(v, body, "reject leaves the body as it is");

        let mut v = body.clone();
        assert_eq!(run(&t, &mut v, Unknown::Strip), (4, vec![]));
        assert_eq!(
            v,
            json!({
                "items": [{"sku": "a", "qty": 1}, {"sku": "b"}],
                "customer": {"name": "n", "note": ""},
                "meta": {"anything": {"goes": 1}},
                "tags": {"t1": {"label": "x"}},
                "password": "p"
            })
        );

        let mut v = body.clone();
        assert_eq!(run(&t, &mut v, Unknown::Allow), (0, vec![]));
        assert_eq!(v, body);
    }

    /// A request's key that is another spelling of a declared property (a case-insensitive
    /// binder reads `AGE` as `age`, unchecked) is reported wherever unknown keys pass: in an
    /// open object, or under `Unknown::Allow`. A closed object refuses or strips it as
    /// unknown, as before; answers are not concerned.
    #[test]
    fn other_case_spellings_of_declared_fields_in_requests() {
        let root = json!({"s": {
            "Open": {"type": "object", "additionalProperties": true,
                     "properties": {"age": {"type": "integer"}, "inner": {"$ref": "#/s/Closed"}}},
            "Closed": {"type": "object", "properties": {"age": {"type": "integer"}}}
        }});
        let t = tree(&root, "/s/Open", Direction::Request);
        let mut v = json!({"age": 30, "AGE": -5, "other": 1, "inner": {"age": 1, "Age": 2}});
        assert_eq!(
            run(&t, &mut v, Unknown::Reject),
            (
                0,
                vec![
                    "body:/AGE: another spelling of a declared field".to_owned(),
                    "body:/inner/Age: unknown field".to_owned()
                ]
            )
        );
        let mut v = json!({"inner": {"age": 1, "Age": 2}});
        assert_eq!(
            run(&t, &mut v, Unknown::Allow),
            (
                0,
                vec!["body:/inner/Age: another spelling of a declared field".to_owned()]
            )
        );
        let mut v = json!({"inner": {"age": 1, "Age": 2}});
        assert_eq!(run(&t, &mut v, Unknown::Strip), (1, vec![]));
        assert_eq!(v, json!({"inner": {"age": 1}}));
        let t = tree(&root, "/s/Open", Direction::Response);
        let mut v = json!({"age": 30, "AGE": -5});
        assert_eq!(run(&t, &mut v, Unknown::Allow), (0, vec![]));
    }

    #[test]
    fn read_only_fields_in_requests() {
        let root = doc();
        let t = tree(&root, ORDER, Direction::Request);
        for unknown in [Unknown::Reject, Unknown::Strip, Unknown::Allow] {
            let mut v = json!({"id": 7, "created": "now", "items": []});
            assert_eq!(
                run(&t, &mut v, unknown),
                (
                    0,
                    vec![
                        "body:/created: read-only field".to_owned(),
                        "body:/id: read-only field".to_owned()
                    ]
                ),
                "{unknown:?}"
            );
            assert_eq!(v, json!({"id": 7, "created": "now", "items": []}));
        }
        // Write-only fields are fine in requests.
        let mut v = json!({"password": "p", "customer": {"secret": "s"}});
        assert_eq!(run(&t, &mut v, Unknown::Reject), (0, vec![]));
        // In another case (a case-insensitive binder reads it as the field), whatever the
        // unknown-field policy.
        for unknown in [Unknown::Reject, Unknown::Strip, Unknown::Allow] {
            let mut v = json!({"ID": 7, "Created": "now", "items": []});
            assert_eq!(
                run(&t, &mut v, unknown),
                (
                    0,
                    vec![
                        "body:/Created: read-only field".to_owned(),
                        "body:/ID: read-only field".to_owned()
                    ]
                ),
                "{unknown:?}"
            );
        }
    }

    #[test]
    fn write_only_fields_in_another_case_never_leave_in_responses() {
        let root = doc();
        let t = tree(&root, ORDER, Direction::Response);
        for unknown in [Unknown::Reject, Unknown::Strip, Unknown::Allow] {
            let mut v = json!({"id": 7, "PassWord": "p", "customer": {"name": "n", "SECRET": "s"}});
            let mut out = Vec::new();
            assert_eq!(
                t.apply(&mut v, unknown, "body", &mut out, 0),
                2,
                "{unknown:?}"
            );
            assert_eq!(v, json!({"id": 7, "customer": {"name": "n"}}));
        }
    }

    /// In an answer, an object where the schema declares none of its keys keeps none: a
    /// property typed as something else that the upstream filled with an object, an object
    /// sealed without properties, items typed as scalars. A free-form object (`type: object`
    /// alone, `{}`, `additionalProperties: true`) keeps everything, as before.
    #[test]
    fn answers_keep_no_key_the_schema_does_not_declare_even_in_mistyped_objects() {
        let root = json!({"s": {"User": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "manager": {"type": "string"},
                "nick": {"type": ["string", "null"]},
                "meta": {"type": "object", "additionalProperties": false},
                "tags": {"type": "array", "items": {"type": "string"}},
                "free": {"type": "object"},
                "any": {},
                "open": {"additionalProperties": true}
            }
        }}});
        let t = tree(&root, "/s/User", Direction::Response);
        let leak = json!({"name": "Bob", "password_hash": "$2b$"});
        let mut v = json!({
            "id": 1, "manager": leak, "nick": leak, "meta": leak, "tags": ["a", leak],
            "free": leak, "any": leak, "open": leak
        });
        let mut out = Vec::new();
        assert_eq!(t.apply(&mut v, Unknown::Strip, "body", &mut out, 8), 8);
        assert_eq!(
            v,
            json!({
                "id": 1, "manager": {}, "nick": {}, "meta": {}, "tags": ["a", {}],
                "free": leak, "any": leak, "open": leak
            })
        );
        // A request's tree is as it was: the validator refuses such objects there.
        let t = tree(&root, "/s/User", Direction::Request);
        let mut v = json!({"manager": leak});
        let mut out = Vec::new();
        assert_eq!(t.apply(&mut v, Unknown::Strip, "body", &mut out, 8), 0);
    }

    #[test]
    fn write_only_fields_never_leave_in_responses() {
        let root = doc();
        let t = tree(&root, ORDER, Direction::Response);
        for unknown in [Unknown::Reject, Unknown::Strip, Unknown::Allow] {
            let mut v = json!({"id": 7, "password": "p", "customer": {"name": "n", "secret": "s"}});
            let mut out = Vec::new();
            // Even with no room for violations.
            assert_eq!(t.apply(&mut v, unknown, "body", &mut out, 0), 2);
            assert!(out.is_empty());
            assert_eq!(v, json!({"id": 7, "customer": {"name": "n"}}));
        }
        let mut v = json!({"id": 7, "password": "p", "extra": 1});
        assert_eq!(
            run(&t, &mut v, Unknown::Reject),
            (1, vec!["body:/extra: unknown field".to_owned()])
        );
        assert_eq!(v, json!({"id": 7, "extra": 1}));
        let mut v = json!({"id": 7, "password": "p", "extra": 1});
        assert_eq!(run(&t, &mut v, Unknown::Strip), (2, vec![]));
        assert_eq!(v, json!({"id": 7}));
    }

    #[test]
    fn recursive_schemas() {
        let root = doc();
        let t = tree(&root, "/components/schemas/Node", Direction::Request);
        let mut v =
            json!({"name": "a", "children": [{"children": [{"name": "c", "x": 1}]}, {"y": 2}]});
        assert_eq!(
            run(&t, &mut v, Unknown::Reject).1,
            vec![
                "body:/children/0/children/0/x: unknown field".to_owned(),
                "body:/children/1/y: unknown field".to_owned()
            ]
        );
        // Far deeper than any recursion would like: the walk is iterative. (Building and
        // dropping such a value recurses in serde_json, so that happens on a large stack, and
        // the walk on a small one.)
        let walked = std::thread::scope(|outer| {
            let big = std::thread::Builder::new().stack_size(256 << 20);
            let handle = big.spawn_scoped(outer, || {
                let mut deep = json!({"name": "leaf", "bad": 1});
                for _ in 0..20_000 {
                    // Not `json!`: it would copy `deep` each time.
                    let mut m = serde_json::Map::new();
                    m.insert("children".into(), Value::Array(vec![deep]));
                    deep = Value::Object(m);
                }
                std::thread::scope(|inner| {
                    let small = std::thread::Builder::new().stack_size(128 << 10);
                    let walk = small.spawn_scoped(inner, || {
                        let strip = run(&t, &mut deep, Unknown::Strip);
                        let reject = run(&t, &mut deep, Unknown::Reject);
                        (strip, reject)
                    });
                    walk.unwrap().join().unwrap()
                })
            });
            handle.unwrap().join().unwrap()
        });
        assert_eq!(walked, ((1, vec![]), (0, vec![])));
        let mut v = json!({"children": [{"children": [{"bad": 1}]}]});
        let mut out = Vec::new();
        t.apply(&mut v, Unknown::Reject, "body", &mut out, 5);
        assert_eq!(out[0].location, "body:/children/0/children/0/bad");
    }

    #[test]
    fn ref_cycles_and_chains() {
        let root = json!({"s": {
            "A": {"$ref": "#/s/B"},
            "B": {"$ref": "#/s/A", "properties": {"b": {}}},
            "Self": {"allOf": [{"$ref": "#/s/Self"}], "properties": {"a": {}}}
        }});
        let t = tree(&root, "/s/A", Direction::Request);
        let mut v = json!({"b": 1, "c": 2});
        assert_eq!(
            run(&t, &mut v, Unknown::Reject).1,
            vec!["body:/c: unknown field"]
        );
        let t = tree(&root, "#/s/Self", Direction::Request);
        let mut v = json!({"a": 1, "c": 2});
        assert_eq!(
            run(&t, &mut v, Unknown::Reject).1,
            vec!["body:/c: unknown field"]
        );

        let chain = |n: usize| {
            let mut s = serde_json::Map::new();
            for i in 0..n {
                s.insert(format!("S{i}"), json!({"$ref": format!("#/s/S{}", i + 1)}));
            }
            s.insert(format!("S{n}"), json!({"properties": {"a": {}}}));
            json!({ "s": s })
        };
        let ok = chain(MAX_REF_HOPS);
        let t = tree(&ok, "/s/S0", Direction::Request);
        let mut v = json!({"a": 1, "z": 1});
        assert_eq!(
            run(&t, &mut v, Unknown::Reject).1,
            vec!["body:/z: unknown field"]
        );
        let long = chain(MAX_REF_HOPS + 1);
        assert_eq!(
            compile_err(&long, "/s/S0"),
            "more than 64 $ref hops at #/s/S64"
        );
    }

    #[test]
    fn compile_errors() {
        let root = json!({"s": {
            "Dangling": {"properties": {"a": {"$ref": "#/s/Missing"}}},
            "Remote": {"$ref": "https://example.com/x.json#/A"},
            "Relative": {"$ref": "other.yaml#/A"},
            "NotString": {"$ref": 3},
            "BadUtf8": {"$ref": "#/s/%FF"}
        }});
        assert_eq!(compile_err(&root, "/s/Nope"), "no schema at #/s/Nope");
        assert_eq!(
            compile_err(&root, "/s/Dangling"),
            "$ref #/s/Missing at #/s/Dangling/properties/a does not resolve"
        );
        assert_eq!(
            compile_err(&root, "/s/Remote"),
            "$ref https://example.com/x.json#/A at #/s/Remote is not a local reference"
        );
        assert_eq!(
            compile_err(&root, "/s/Relative"),
            "$ref other.yaml#/A at #/s/Relative is not a local reference"
        );
        assert_eq!(
            compile_err(&root, "/s/NotString"),
            "$ref at #/s/NotString is not a string"
        );
        assert_eq!(
            compile_err(&root, "/s/BadUtf8"),
            "$ref #/s/%FF at #/s/BadUtf8 is not valid UTF-8"
        );
    }

    #[test]
    fn size_limits() {
        let mut props = serde_json::Map::new();
        for i in 0..MAX_NODES {
            props.insert(format!("p{i}"), json!({"type": "string"}));
        }
        let root = json!({"properties": props});
        assert_eq!(
            compile_err(&root, ""),
            "the schema is too complex to check fields against (more than 10000 nodes)"
        );
        let mut props = serde_json::Map::new();
        for i in 0..MAX_NODES - 1 {
            props.insert(format!("p{i}"), json!({"type": "string"}));
        }
        let root = json!({"properties": props});
        tree(&root, "", Direction::Request);

        let branches: Vec<Value> = (0..MAX_PARTS)
            .map(|i| json!({"properties": {format!("p{i}"): {}}}))
            .collect();
        let root = json!({"allOf": branches});
        assert_eq!(
            compile_err(&root, ""),
            "the schema at #/allOf/0 merges more than 1000 schemas"
        );
        let root = json!({"allOf": branches[1..]});
        tree(&root, "", Direction::Request);
    }

    #[test]
    fn what_opens_an_object() {
        let cases = [
            (json!({"properties": {"a": {}}}), false),
            (
                json!({"properties": {"a": {}}, "additionalProperties": false}),
                false,
            ),
            (
                json!({"properties": {"a": {}}, "unevaluatedProperties": false}),
                false,
            ),
            (
                json!({"properties": {"a": {}}, "additionalProperties": true}),
                true,
            ),
            (
                json!({"properties": {"a": {}}, "additionalProperties": {}}),
                true,
            ),
            (
                json!({"properties": {"a": {}}, "unevaluatedProperties": true}),
                true,
            ),
            (
                json!({"properties": {"a": {}}, "patternProperties": {"^x": {}}}),
                true,
            ),
            (
                json!({"properties": {"a": {}}, "patternProperties": {}}),
                false,
            ),
            (
                json!({"properties": {"a": {}}, "$dynamicRef": "#meta"}),
                true,
            ),
            (
                json!({"properties": {"a": {}}, "anyOf": [{"type": "null"}, {"required": ["a"]}]}),
                false,
            ),
            (
                json!({"properties": {"a": {}}, "anyOf": [{}, {"required": ["a"]}]}),
                true,
            ),
            (
                json!({"properties": {"a": {}}, "oneOf": [true, {"required": ["a"]}]}),
                true,
            ),
            (
                json!({"properties": {"a": {}}, "oneOf": [{"$ref": "#/$defs/any"}]}),
                true,
            ),
            (
                json!({"properties": {"a": {}}, "oneOf": [{"$ref": "#/$defs/loop"}]}),
                false,
            ),
            (json!({"properties": {"a": {}}, "allOf": [{}]}), false),
            (json!({"properties": {}}), true),
            (json!({"type": "object"}), true),
            (json!({}), true),
            (json!(true), true),
            (
                json!({"allOf": [{"properties": {"a": {}}}, {"additionalProperties": {"type": "string"}}]}),
                true,
            ),
        ];
        for (schema, open) in cases {
            let mut root = schema.clone();
            if let Value::Object(m) = &mut root {
                m.insert(
                    "$defs".into(),
                    json!({"any": {"description": "anything"}, "loop": {"$ref": "#/$defs/loop"}}),
                );
            }
            let t = tree(&root, "", Direction::Request);
            let mut v = json!({"a": 1, "zz": 2});
            let (_, out) = run(&t, &mut v, Unknown::Reject);
            assert_eq!(out.is_empty(), open, "{schema}");
        }
    }

    #[test]
    fn branches_union_their_properties() {
        let root = json!({
            "$defs": {
                "Cat": {"properties": {"kind": {"const": "cat"}, "meow": {"type": "boolean"}}},
                "Dog": {"properties": {"kind": {"const": "dog"}, "bark": {"properties": {"loud": {}}}}}
            },
            "oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}, {"type": "null"}],
            "if": {"properties": {"kind": {"const": "cat"}}},
            "then": {"properties": {"lives": {}}},
            "else": {"properties": {"owner": {"properties": {"name": {}}}}},
            "dependentSchemas": {"a/b": {"properties": {"c~d": {}}}}
        });
        let t = tree(&root, "", Direction::Request);
        let mut v = json!({
            "kind": "dog", "meow": true, "bark": {"loud": 1, "soft": 2}, "lives": 9,
            "owner": {"name": "x", "age": 3}, "c~d": 1, "a/b": 2
        });
        assert_eq!(
            run(&t, &mut v, Unknown::Reject).1,
            vec![
                "body:/a~1b: unknown field",
                "body:/bark/soft: unknown field",
                "body:/owner/age: unknown field"
            ]
        );
    }

    #[test]
    fn same_property_in_several_branches_is_merged() {
        let root = json!({"allOf": [
            {"properties": {"p": {"properties": {"a": {}}}}},
            {"properties": {"p": {"properties": {"b": {}}}}}
        ]});
        let t = tree(&root, "", Direction::Request);
        let mut v = json!({"p": {"a": 1, "b": 2, "c": 3}});
        assert_eq!(
            run(&t, &mut v, Unknown::Reject).1,
            vec!["body:/p/c: unknown field"]
        );
    }

    #[test]
    fn arrays_items_and_prefix_items() {
        let root = json!({
            "type": "array",
            "prefixItems": [{"properties": {"a": {}}}, {"properties": {"b": {}}}],
            "items": {"properties": {"c": {}}}
        });
        let t = tree(&root, "", Direction::Request);
        let mut v =
            json!([{"a": 1, "x": 1}, {"b": 1, "c": 1}, {"c": 1, "a": 1}, {"c": 2}, 5, "s", null]);
        assert_eq!(
            run(&t, &mut v, Unknown::Reject).1,
            vec![
                "body:/0/x: unknown field",
                "body:/1/c: unknown field",
                "body:/2/a: unknown field"
            ]
        );
        // Another part without prefixItems: its items cover every position.
        let root = json!({"allOf": [
            {"prefixItems": [{"properties": {"a": {}}}]},
            {"items": {"properties": {"z": {}}}}
        ]});
        let t = tree(&root, "", Direction::Request);
        let mut v = json!([{"a": 1, "z": 1, "q": 1}, {"a": 1, "z": 1}]);
        assert_eq!(
            run(&t, &mut v, Unknown::Reject).1,
            vec!["body:/0/q: unknown field", "body:/1/a: unknown field"]
        );
        // Tuple form of `items` (draft 4), if a schema comes unconverted.
        let root = json!({"items": [{"properties": {"a": {}}}]});
        let t = tree(&root, "", Direction::Request);
        let mut v = json!([{"b": 1}, {"b": 1}]);
        assert_eq!(
            run(&t, &mut v, Unknown::Reject).1,
            vec!["body:/0/b: unknown field"]
        );
    }

    #[test]
    fn values_of_another_shape_are_left_to_the_validator() {
        let root = doc();
        let t = tree(&root, ORDER, Direction::Request);
        for mut v in [
            json!("s"),
            json!(1),
            json!(null),
            json!([{"x": 1}]),
            json!({"items": {"x": 1}, "customer": [1]}),
        ] {
            let before = v.clone();
            assert_eq!(run(&t, &mut v, Unknown::Strip), (0, vec![]));
            assert_eq!(v, before);
        }
    }

    #[test]
    fn refs_are_unescaped() {
        let root = json!({"s": {
            "a/b": {"properties": {"x": {}}},
            "c~d": {"properties": {"y": {}}},
            "My Thing": {"properties": {"z": {}}},
            "Holder": {"properties": {
                "one": {"$ref": "#/s/a~1b"},
                "two": {"$ref": "#/s/c~0d"},
                "three": {"$ref": "#/s/My%20Thing"}
            }}
        }});
        let t = tree(&root, "/s/Holder", Direction::Request);
        let mut v =
            json!({"one": {"x": 1, "q": 1}, "two": {"y": 1, "q": 1}, "three": {"z": 1, "q": 1}});
        assert_eq!(
            run(&t, &mut v, Unknown::Reject).1,
            vec![
                "body:/one/q: unknown field",
                "body:/three/q: unknown field",
                "body:/two/q: unknown field"
            ]
        );
    }

    #[test]
    fn pointers_escape_keys_and_prefixes_join() {
        let root = json!({"properties": {"a/b": {"properties": {"k": {}}}}});
        let t = tree(&root, "", Direction::Request);
        let mut v = json!({"a/b": {"x~y/z": 1}, "": 2});
        assert_eq!(
            run(&t, &mut v, Unknown::Reject).1,
            vec!["body:/: unknown field", "body:/a~1b/x~0y~1z: unknown field"]
        );
        let mut out = Vec::new();
        let mut v = json!({"a/b": {"c": 1}});
        t.apply(&mut v, Unknown::Reject, "query:filter", &mut out, 10);
        assert_eq!(out[0].location, "query:filter/a~1b/c");
        let root = json!({"properties": {"k": {"readOnly": true}}});
        let t = tree(&root, "", Direction::Request);
        let mut out = Vec::new();
        t.apply(&mut json!({"k": 1}), Unknown::Reject, "body", &mut out, 10);
        assert_eq!(out, vec![Violation::new("body:/k", "read-only field")]);
    }

    #[test]
    fn cap_counts_everything_in_out() {
        let root = json!({"properties": {"a": {}}});
        let t = tree(&root, "", Direction::Request);
        let body = json!({"a": 1, "x": 1, "y": 2, "z": 3});
        let mut out = Vec::new();
        assert_eq!(
            t.apply(&mut body.clone(), Unknown::Reject, "body", &mut out, 2),
            0
        );
        assert_eq!(out.len(), 2);
        let mut out = vec![Violation::new("query:q", "earlier")];
        t.apply(&mut body.clone(), Unknown::Reject, "body", &mut out, 2);
        assert_eq!(out.len(), 2);
        let mut out = vec![Violation::new("query:q", "earlier"); 3];
        t.apply(&mut body.clone(), Unknown::Reject, "body", &mut out, 2);
        assert_eq!(out.len(), 3);
        // Stripping goes on whatever the cap.
        let mut v = body.clone();
        let mut out = Vec::new();
        assert_eq!(t.apply(&mut v, Unknown::Strip, "body", &mut out, 0), 3);
        assert_eq!(v, json!({"a": 1}));
    }

    #[test]
    fn large_bodies_are_walked_once() {
        let root = doc();
        let t = tree(&root, ORDER, Direction::Request);
        let items: Vec<Value> = (0..10_000)
            .map(|i| json!({"sku": "s", "qty": i, "x": 1}))
            .collect();
        let mut v = json!({ "items": items });
        let mut out = Vec::new();
        assert_eq!(
            t.apply(&mut v, Unknown::Strip, "body", &mut out, 10),
            10_000
        );
        let mut v = json!({ "items": (0..10_000).map(|_| json!({"x": 1})).collect::<Vec<_>>() });
        t.apply(&mut v, Unknown::Reject, "body", &mut out, 10);
        assert_eq!(out.len(), 10);
        assert_eq!(out[9].location, "body:/items/9/x");
    }
}
