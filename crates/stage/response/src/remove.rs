//! JSON field removal: a route's `response_filter:` lists fields (bare names or `$`-paths) to
//! remove from JSON response bodies. See the crate documentation for the path syntax.
//!
//! The rules compile into a deterministic automaton over path steps (object keys and array
//! indices): each state knows, for a key it names, for any other key, for an index it names
//! and for any other index, which state the child is in. Applying walks the body once with an
//! explicit stack, looking up one transition per key or element visited and descending only
//! where some rule can still match; no path strings are built.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use portcullis_core::units::RawSize;
use portcullis_core::{ConfigErrors, JsonFilter, ResponseFilter};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Raw

/// What to do with a body the filter cannot read: not JSON, compressed, or over `max_bytes`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnUnfilterable {
    /// 502: a body that may hold the fields is never passed on unfiltered.
    #[default]
    Reject,
    /// Forward it unchanged (for routes whose non-JSON answers are known to be harmless).
    Pass,
}

/// A route's `response_filter:`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawResponseFilter {
    /// Fields to remove: bare names (that key in every object, at any depth) or `$`-paths.
    /// At least one, at most 256.
    #[serde(default)]
    pub remove: Vec<String>,
    /// The largest body buffered for filtering. Default 1MiB, at most 64MiB.
    #[serde(default)]
    pub max_bytes: Option<RawSize>,
    /// `reject` (default: 502) or `pass` for a body that cannot be filtered.
    #[serde(default)]
    pub on_unfilterable: Option<OnUnfilterable>,
}

// ---------------------------------------------------------------------------------------------
// Compiled

pub const MAX_RULES: usize = 256;
/// The most steps one path may have (the JSON parser refuses bodies nested past 128).
pub const MAX_SEGMENTS: usize = 64;
/// The most automaton states the rules may compile into. Combining many `..` and `*` steps
/// can multiply states; this turns such a configuration into an error, not a slow start.
pub const MAX_STATES: usize = 4096;
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// Buffering more than this per response would let a few responses hold the gateway's memory.
pub const MAX_MAX_BYTES: u64 = 64 << 20;

/// A route's response filter, compiled.
#[derive(Debug, Clone)]
pub struct ResponseFilterRules {
    pub rules: Arc<RemoveRules>,
    pub max_bytes: u64,
    pub on_unfilterable: OnUnfilterable,
}

impl ResponseFilterRules {
    /// The filter in the engine's terms (buffer up to `max_bytes`, parse, apply). The engine's
    /// filter always withholds what it cannot filter; with [`OnUnfilterable::Pass`] the
    /// integrator forwards such bodies instead.
    pub fn to_core(&self) -> ResponseFilter {
        ResponseFilter {
            json: Arc::clone(&self.rules) as Arc<dyn JsonFilter>,
            max_bytes: self.max_bytes,
        }
    }
}

/// Compiled removal rules: an automaton (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoveRules {
    /// The paths as written, for explanations.
    sources: Vec<Arc<str>>,
    /// State 0 is the body's own position; [`REMOVE`] is the state of a removed value.
    states: Vec<State>,
}

/// The shared state of every position some rule ends at.
const REMOVE: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq)]
struct State {
    /// Transitions for the keys rules name here (they already include what `*` and `..`
    /// contribute); a key not listed takes `other_key`. `None`: no rule can match below.
    keys: HashMap<Box<str>, u32>,
    other_key: Option<u32>,
    /// The same for array elements, sorted by index.
    indices: Vec<(usize, u32)>,
    other_index: Option<u32>,
    /// Some key / some element leads to [`REMOVE`] (skips the removal pass otherwise).
    removes_key: bool,
    removes_index: bool,
}

impl State {
    fn key(&self, k: &str) -> Option<u32> {
        match self.keys.get(k) {
            Some(&s) => Some(s),
            None => self.other_key,
        }
    }

    fn index(&self, i: usize) -> Option<u32> {
        match self.indices.binary_search_by_key(&i, |&(j, _)| j) {
            Ok(pos) => self.indices.get(pos).map(|&(_, s)| s),
            Err(_) => self.other_index,
        }
    }
}

impl RemoveRules {
    /// The paths as written.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| &**s)
    }

    /// Removes every matching field or element, in place. Array elements are matched by their
    /// index in the body as received, so `[0]` and `[1]` remove the first two elements.
    pub fn apply(&self, value: &mut Value) {
        let mut stack: Vec<(&mut Value, u32)> = vec![(value, 0)];
        while let Some((value, id)) = stack.pop() {
            let Some(st) = self.states.get(id as usize) else {
                continue;
            };
            match value {
                Value::Object(map) => {
                    if st.removes_key {
                        map.retain(|k, _| st.key(k) != Some(REMOVE));
                    }
                    for (k, child) in map.iter_mut() {
                        if let Some(next) = st.key(k)
                            && is_container(child)
                        {
                            stack.push((child, next));
                        }
                    }
                }
                Value::Array(items) => {
                    let len = items.len();
                    if st.removes_index {
                        let mut i = 0;
                        items.retain(|_| {
                            let keep = st.index(i) != Some(REMOVE);
                            i += 1;
                            keep
                        });
                    }
                    // `orig` walks the indices as received, skipping the removed ones.
                    let mut orig = 0;
                    for child in items.iter_mut() {
                        while st.removes_index && orig < len && st.index(orig) == Some(REMOVE) {
                            orig += 1;
                        }
                        if let Some(next) = st.index(orig)
                            && is_container(child)
                        {
                            stack.push((child, next));
                        }
                        orig += 1;
                    }
                }
                Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
            }
        }
    }
}

impl JsonFilter for RemoveRules {
    fn apply(&self, value: &mut Value) {
        RemoveRules::apply(self, value);
    }
}

fn is_container(v: &Value) -> bool {
    matches!(v, Value::Object(_) | Value::Array(_))
}

/// Compiles a route's `response_filter:`. `path` is the section's own path
/// (`routes[3].response_filter`); errors are recorded at `<path>.<key>` (`<path>.remove[i]`
/// for one path). `None` when any was found.
pub fn compile(
    raw: &RawResponseFilter,
    p: &str,
    errors: &mut ConfigErrors,
) -> Option<ResponseFilterRules> {
    let before = errors.len();
    if raw.remove.is_empty() {
        errors.push(
            format!("{p}.remove"),
            "list at least one field to remove (a filter that removes nothing only costs)",
        );
    } else if raw.remove.len() > MAX_RULES {
        errors.push(
            format!("{p}.remove"),
            format!("{} paths; at most {MAX_RULES}", raw.remove.len()),
        );
    }
    let mut rules = Vec::with_capacity(raw.remove.len());
    for (i, text) in raw.remove.iter().enumerate() {
        match parse(text) {
            Ok(steps) => rules.push(steps),
            Err(m) => errors.push(format!("{p}.remove[{i}]"), m),
        }
    }
    let max_bytes = match &raw.max_bytes {
        None => DEFAULT_MAX_BYTES,
        Some(size) => {
            let at = format!("{p}.max_bytes");
            match size.parse() {
                Ok(0) => {
                    errors.push(at, "must be at least 1 byte");
                    0
                }
                Ok(n) if n > MAX_MAX_BYTES => {
                    errors.push(
                        at,
                        format!("{n} bytes is more than {MAX_MAX_BYTES} (64MiB)"),
                    );
                    0
                }
                Ok(n) => n,
                Err(m) => {
                    errors.push(at, m);
                    0
                }
            }
        }
    };
    if errors.len() != before {
        return None;
    }
    let states = match build(&rules) {
        Ok(s) => s,
        Err(()) => {
            errors.push(
                format!("{p}.remove"),
                format!(
                    "the paths are too complex (more than {MAX_STATES} automaton states); use \
                     fewer `..` and `*` steps"
                ),
            );
            return None;
        }
    };
    Some(ResponseFilterRules {
        rules: Arc::new(RemoveRules {
            sources: raw.remove.iter().map(|s| Arc::from(s.as_str())).collect(),
            states,
        }),
        max_bytes,
        on_unfilterable: raw.on_unfilterable.unwrap_or_default(),
    })
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Name(Box<str>),
    Index(usize),
    /// `*`: every member of an object, every element of an array.
    Any,
}

/// One path step: a selector applied to the children (`descendant: false`) or to every
/// descendant (`..`) of the current positions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    descendant: bool,
    sel: Selector,
}

/// Characters that end a `.name`, or have a meaning that a bare name or `.name` may not carry.
fn is_special(c: char) -> bool {
    matches!(c, '.' | '[' | ']' | '*' | '\'' | '"' | '\\') || c.is_whitespace() || c.is_control()
}

/// Parses one rule. Errors quote the rule and give the character offset (from 0) of the
/// problem.
fn parse(text: &str) -> Result<Vec<Step>, String> {
    let chars: Vec<char> = text.chars().collect();
    let err = |at: usize, what: &str| format!("{text:?}, character {at}: {what}");
    if chars.is_empty() {
        return Err("empty: name a field, or write a $-path".into());
    }
    if chars[0] != '$' {
        // A bare name: that key at any depth.
        if let Some(at) = chars.iter().position(|&c| is_special(c)) {
            return Err(err(
                at,
                &format!(
                    "{:?} cannot appear in a bare name; write a $-path such as $..['a.b']",
                    chars[at]
                ),
            ));
        }
        return Ok(vec![Step {
            descendant: true,
            sel: Selector::Name(text.into()),
        }]);
    }
    let mut steps = Vec::new();
    let mut i = 1;
    while i < chars.len() {
        let descendant;
        let sel;
        match chars[i] {
            '.' => {
                descendant = chars.get(i + 1) == Some(&'.');
                i += if descendant { 2 } else { 1 };
                match chars.get(i) {
                    None => return Err(err(i, "expected a name or *")),
                    Some('[') if descendant => {
                        let (s, next) = parse_bracket(&chars, i, &err)?;
                        sel = s;
                        i = next;
                    }
                    Some('*') => {
                        if chars.get(i + 1).is_some_and(|&c| c != '.' && c != '[') {
                            return Err(err(
                                i + 1,
                                "`*` must be a whole step; write ['…'] for a key containing *",
                            ));
                        }
                        sel = Selector::Any;
                        i += 1;
                    }
                    Some(_) => {
                        let start = i;
                        while let Some(&c) = chars.get(i) {
                            if c == '.' || c == '[' {
                                break;
                            }
                            if is_special(c) {
                                return Err(err(
                                    i,
                                    &format!("{c:?} cannot appear in .name; write ['…']"),
                                ));
                            }
                            i += 1;
                        }
                        if i == start {
                            return Err(err(i, "expected a name or *"));
                        }
                        sel = Selector::Name(chars[start..i].iter().collect::<String>().into());
                    }
                }
            }
            '[' => {
                descendant = false;
                let (s, next) = parse_bracket(&chars, i, &err)?;
                sel = s;
                i = next;
            }
            c => return Err(err(i, &format!("expected . or [, found {c:?}"))),
        }
        steps.push(Step { descendant, sel });
        if steps.len() > MAX_SEGMENTS {
            return Err(format!("{text:?}: more than {MAX_SEGMENTS} steps"));
        }
    }
    if steps.is_empty() {
        return Err(format!(
            "{text:?}: removing $ (the whole body) is not possible; name the fields to remove"
        ));
    }
    Ok(steps)
}

/// Parses `[…]` starting at `chars[at] == '['`; returns the selector and the index after `]`.
fn parse_bracket(
    chars: &[char],
    at: usize,
    err: &impl Fn(usize, &str) -> String,
) -> Result<(Selector, usize), String> {
    let mut i = at + 1;
    let sel = match chars.get(i) {
        Some(&q @ ('\'' | '"')) => {
            let mut name = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err(i, &format!("unterminated name: expected {q}"))),
                    Some(&c) if c == q => {
                        i += 1;
                        break;
                    }
                    Some('\\') => match chars.get(i + 1) {
                        Some(&e) if e == q || e == '\\' => {
                            name.push(e);
                            i += 2;
                        }
                        _ => {
                            return Err(err(
                                i,
                                &format!("unknown escape (only \\{q} and \\\\ are escapes)"),
                            ));
                        }
                    },
                    Some(&c) => {
                        name.push(c);
                        i += 1;
                    }
                }
            }
            Selector::Name(name.into())
        }
        Some('*') => {
            i += 1;
            Selector::Any
        }
        Some('-') => return Err(err(i, "negative indices are not supported")),
        Some(c) if c.is_ascii_digit() => {
            let start = i;
            while chars.get(i).is_some_and(char::is_ascii_digit) {
                i += 1;
            }
            if chars[start] == '0' && i - start > 1 {
                return Err(err(start, "an index has no leading zeros"));
            }
            let digits: String = chars[start..i].iter().collect();
            let n = digits
                .parse::<usize>()
                .map_err(|_| err(start, "index too large"))?;
            Selector::Index(n)
        }
        _ => return Err(err(i, "expected a quoted name, an index or * after [")),
    };
    if chars.get(i) != Some(&']') {
        return Err(err(i, "expected ]"));
    }
    Ok((sel, i + 1))
}

// ---------------------------------------------------------------------------------------------
// The automaton

/// A child position, as the automaton sees it.
#[derive(Clone, Copy)]
enum Child<'a> {
    Key(&'a str),
    /// A key no rule names at this state.
    OtherKey,
    Index(usize),
    OtherIndex,
}

impl Selector {
    fn matches(&self, c: Child<'_>) -> bool {
        match (self, c) {
            (Selector::Any, _) => true,
            (Selector::Name(n), Child::Key(k)) => **n == *k,
            (Selector::Index(n), Child::Index(i)) => *n == i,
            _ => false,
        }
    }
}

/// Subset construction over the rules' positions. An NFA position is (rule, steps matched);
/// it is numbered `first[rule] + matched`, so "one more step matched" is `+ 1`.
fn build(rules: &[Vec<Step>]) -> Result<Vec<State>, ()> {
    // The step each NFA position waits for (`None`: the rule is complete).
    let mut next_step: Vec<Option<&Step>> = Vec::new();
    let mut start = Vec::new();
    for r in rules {
        start.push(next_step.len() as u32);
        next_step.extend(r.iter().map(Some));
        next_step.push(None);
    }
    let advance = |set: &[u32], c: Child<'_>| -> Vec<u32> {
        let mut out = BTreeSet::new();
        for &s in set {
            if let Some(Some(step)) = next_step.get(s as usize) {
                if step.descendant {
                    // `..` may skip this level too.
                    out.insert(s);
                }
                if step.sel.matches(c) {
                    out.insert(s + 1);
                }
            }
        }
        out.into_iter().collect()
    };
    let complete = |set: &[u32]| {
        set.iter()
            .any(|&s| matches!(next_step.get(s as usize), Some(None)))
    };

    let mut states = vec![State::default(), State::default()];
    let mut ids: HashMap<Vec<u32>, u32> = HashMap::from([(start.clone(), 0)]);
    let mut work: Vec<(u32, Vec<u32>)> = vec![(0, start)];
    // Interns a position set: `None` when empty, [`REMOVE`] when some rule is complete.
    let mut intern = |set: Vec<u32>,
                      states: &mut Vec<State>,
                      work: &mut Vec<(u32, Vec<u32>)>|
     -> Result<Option<u32>, ()> {
        if set.is_empty() {
            return Ok(None);
        }
        if complete(&set) {
            return Ok(Some(REMOVE));
        }
        if let Some(&id) = ids.get(&set) {
            return Ok(Some(id));
        }
        if states.len() >= MAX_STATES {
            return Err(());
        }
        let id = states.len() as u32;
        states.push(State::default());
        ids.insert(set.clone(), id);
        work.push((id, set));
        Ok(Some(id))
    };
    while let Some((id, set)) = work.pop() {
        let mut st = State::default();
        let mut names: BTreeSet<&str> = BTreeSet::new();
        let mut indices: BTreeSet<usize> = BTreeSet::new();
        for &s in &set {
            match next_step.get(s as usize) {
                Some(Some(Step {
                    sel: Selector::Name(n),
                    ..
                })) => {
                    names.insert(n);
                }
                Some(Some(Step {
                    sel: Selector::Index(i),
                    ..
                })) => {
                    indices.insert(*i);
                }
                _ => {}
            }
        }
        for n in names {
            if let Some(t) = intern(advance(&set, Child::Key(n)), &mut states, &mut work)? {
                st.keys.insert(n.into(), t);
            }
        }
        st.other_key = intern(advance(&set, Child::OtherKey), &mut states, &mut work)?;
        for i in indices {
            if let Some(t) = intern(advance(&set, Child::Index(i)), &mut states, &mut work)? {
                st.indices.push((i, t));
            }
        }
        st.other_index = intern(advance(&set, Child::OtherIndex), &mut states, &mut work)?;
        st.removes_key = st.other_key == Some(REMOVE) || st.keys.values().any(|&t| t == REMOVE);
        st.removes_index =
            st.other_index == Some(REMOVE) || st.indices.iter().any(|&(_, t)| t == REMOVE);
        if let Some(slot) = states.get_mut(id as usize) {
            *slot = st;
        }
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(paths: &[&str]) -> Arc<RemoveRules> {
        let raw = RawResponseFilter {
            remove: paths.iter().map(|s| s.to_string()).collect(),
            ..RawResponseFilter::default()
        };
        let mut e = ConfigErrors::new();
        match compile(&raw, "routes[0].response_filter", &mut e) {
            Some(c) => c.rules,
            None => panic!("{paths:?}: {e}"),
        }
    }

    fn filtered(paths: &[&str], mut v: Value) -> Value {
        rules(paths).apply(&mut v);
        v
    }

    fn errs(yaml: &str) -> Vec<String> {
        let raw: RawResponseFilter = serde_yaml_ng::from_str(yaml).unwrap();
        let mut e = ConfigErrors::new();
        assert!(
            compile(&raw, "routes[3].response_filter", &mut e).is_none(),
            "{yaml}"
        );
        e.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn config_defaults_and_values() {
        let raw: RawResponseFilter = serde_yaml_ng::from_str("remove: [a]").unwrap();
        let c = compile(&raw, "routes[0].response_filter", &mut ConfigErrors::new()).unwrap();
        assert_eq!(c.max_bytes, 1 << 20);
        assert_eq!(c.on_unfilterable, OnUnfilterable::Reject);
        let raw: RawResponseFilter =
            serde_yaml_ng::from_str("remove: [a, '$.b']\nmax_bytes: 64KiB\non_unfilterable: pass")
                .unwrap();
        let c = compile(&raw, "routes[0].response_filter", &mut ConfigErrors::new()).unwrap();
        assert_eq!(c.max_bytes, 65536);
        assert_eq!(c.on_unfilterable, OnUnfilterable::Pass);
        assert_eq!(c.rules.sources().collect::<Vec<_>>(), ["a", "$.b"]);
        let core = c.to_core();
        assert_eq!(core.max_bytes, 65536);
        let mut v = json!({"a": 1, "b": 2, "c": 3});
        core.json.apply(&mut v);
        assert_eq!(v, json!({"c": 3}));
        let raw: RawResponseFilter =
            serde_yaml_ng::from_str("remove: [a]\nmax_bytes: 64MiB").unwrap();
        assert!(compile(&raw, "routes[0].response_filter", &mut ConfigErrors::new()).is_some());
        assert!(serde_yaml_ng::from_str::<RawResponseFilter>("remove: [a]\nmax: 1").is_err());
        assert!(
            serde_yaml_ng::from_str::<RawResponseFilter>("remove: [a]\non_unfilterable: drop")
                .is_err()
        );
    }

    #[test]
    fn config_refusals() {
        let p = "routes[3].response_filter";
        assert_eq!(
            errs("remove: []"),
            [format!(
                "{p}.remove: list at least one field to remove (a filter that removes nothing only costs)"
            )]
        );
        assert_eq!(errs("{}").len(), 1);
        assert_eq!(
            errs("remove: [a]\nmax_bytes: 0"),
            [format!("{p}.max_bytes: must be at least 1 byte")]
        );
        assert_eq!(
            errs("remove: [a]\nmax_bytes: 65MiB"),
            [format!(
                "{p}.max_bytes: 68157440 bytes is more than 67108864 (64MiB)"
            )]
        );
        assert_eq!(
            errs("remove: [a]\nmax_bytes: lots"),
            [format!(
                "{p}.max_bytes: \"lots\" is not a size (e.g. 1024, 64KiB, 10MB)"
            )]
        );
        let many: Vec<String> = (0..=MAX_RULES).map(|i| format!("f{i}")).collect();
        assert_eq!(
            errs(&format!("remove: [{}]", many.join(", "))),
            [format!("{p}.remove: 257 paths; at most 256")]
        );
        let ok: Vec<String> = (0..MAX_RULES).map(|i| format!("f{i}")).collect();
        let raw = RawResponseFilter {
            remove: ok,
            ..RawResponseFilter::default()
        };
        assert!(compile(&raw, "r.response_filter", &mut ConfigErrors::new()).is_some());
        // Every bad path is reported, each at its own index.
        assert_eq!(
            errs("remove: [ok, '', '$', 'a b']"),
            [
                format!("{p}.remove[1]: empty: name a field, or write a $-path"),
                format!(
                    "{p}.remove[2]: \"$\": removing $ (the whole body) is not possible; name the fields to remove"
                ),
                format!(
                    "{p}.remove[3]: \"a b\", character 1: ' ' cannot appear in a bare name; write a $-path such as $..['a.b']"
                ),
            ]
        );
    }

    fn parse_err(path: &str) -> String {
        match parse(path) {
            Ok(s) => panic!("{path:?} parsed as {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn syntax_errors_give_the_character_offset() {
        let cases: &[(&str, &str)] = &[
            (
                "a.b",
                "\"a.b\", character 1: '.' cannot appear in a bare name; write a $-path such as $..['a.b']",
            ),
            (
                "*",
                "\"*\", character 0: '*' cannot appear in a bare name; write a $-path such as $..['a.b']",
            ),
            ("$ref", "\"$ref\", character 1: expected . or [, found 'r'"),
            ("$.", "\"$.\", character 2: expected a name or *"),
            ("$..", "\"$..\", character 3: expected a name or *"),
            ("$.a.", "\"$.a.\", character 4: expected a name or *"),
            ("$.[0]", "\"$.[0]\", character 2: expected a name or *"),
            ("$...a", "\"$...a\", character 3: expected a name or *"),
            (
                "$.a*",
                "\"$.a*\", character 3: '*' cannot appear in .name; write ['…']",
            ),
            (
                "$.*a",
                "\"$.*a\", character 3: `*` must be a whole step; write ['…'] for a key containing *",
            ),
            (
                "$.a b",
                "\"$.a b\", character 3: ' ' cannot appear in .name; write ['…']",
            ),
            (
                "$.a]",
                "\"$.a]\", character 3: ']' cannot appear in .name; write ['…']",
            ),
            (
                "$.é'",
                "\"$.é'\", character 3: '\\'' cannot appear in .name; write ['…']",
            ),
            (
                "$[",
                "\"$[\", character 2: expected a quoted name, an index or * after [",
            ),
            (
                "$[a]",
                "\"$[a]\", character 2: expected a quoted name, an index or * after [",
            ),
            ("$['a'", "\"$['a'\", character 5: expected ]"),
            ("$['a' ]", "\"$['a' ]\", character 5: expected ]"),
            (
                "$['a",
                "\"$['a\", character 4: unterminated name: expected '",
            ),
            (
                "$[\"a'",
                "\"$[\\\"a'\", character 5: unterminated name: expected \"",
            ),
            (
                "$['a\\n']",
                "\"$['a\\\\n']\", character 4: unknown escape (only \\' and \\\\ are escapes)",
            ),
            (
                "$['a\\",
                "\"$['a\\\\\", character 4: unknown escape (only \\' and \\\\ are escapes)",
            ),
            ("$[*", "\"$[*\", character 3: expected ]"),
            (
                "$[-1]",
                "\"$[-1]\", character 2: negative indices are not supported",
            ),
            (
                "$[01]",
                "\"$[01]\", character 2: an index has no leading zeros",
            ),
            ("$[1x]", "\"$[1x]\", character 3: expected ]"),
            (
                "$[99999999999999999999999]",
                "\"$[99999999999999999999999]\", character 2: index too large",
            ),
            ("$.a['b'", "\"$.a['b'\", character 7: expected ]"),
        ];
        for (path, want) in cases {
            assert_eq!(parse_err(path), *want, "{path}");
        }
        let deep = format!("${}", ".a".repeat(MAX_SEGMENTS + 1));
        assert_eq!(parse_err(&deep), format!("{deep:?}: more than 64 steps"));
        let ok = format!("${}", ".a".repeat(MAX_SEGMENTS));
        assert_eq!(parse(&ok).map(|s| s.len()), Ok(MAX_SEGMENTS));
    }

    #[test]
    fn parses_every_step_kind() {
        let name = |n: &str| Selector::Name(n.into());
        let st = |descendant, sel| Step { descendant, sel };
        assert_eq!(
            parse(r#"$.a['b c'].*[*][3]..d..['it\'s \\ x']..*..[0]["q\"x"]"#),
            Ok(vec![
                st(false, name("a")),
                st(false, name("b c")),
                st(false, Selector::Any),
                st(false, Selector::Any),
                st(false, Selector::Index(3)),
                st(true, name("d")),
                st(true, name("it's \\ x")),
                st(true, Selector::Any),
                st(true, Selector::Index(0)),
                st(false, name("q\"x")),
            ])
        );
        assert_eq!(parse("user-id@v2"), Ok(vec![st(true, name("user-id@v2"))]));
        assert_eq!(
            parse("$.ünï-code:x"),
            Ok(vec![st(false, name("ünï-code:x"))])
        );
        assert_eq!(parse("$['*']"), Ok(vec![st(false, name("*"))]));
    }

    #[test]
    fn bare_names_at_any_depth() {
        let v = json!({
            "internal_id": 1,
            "id": 2,
            "items": [{"internal_id": 3, "x": [{"internal_id": 4, "y": 5}]}, 7, "internal_id"],
            "nested": {"deep": {"internal_id": {"whole": "object"}, "keep": true}},
        });
        assert_eq!(
            filtered(&["internal_id"], v),
            json!({
                "id": 2,
                "items": [{"x": [{"y": 5}]}, 7, "internal_id"],
                "nested": {"deep": {"keep": true}},
            })
        );
        // A top-level array is walked too.
        assert_eq!(
            filtered(&["secret"], json!([{"secret": 1, "a": 2}, [{"secret": 3}]])),
            json!([{"a": 2}, [{}]])
        );
    }

    #[test]
    fn child_paths_and_wildcards() {
        let v = json!({
            "items": [
                {"sku": "a", "cost_price": 1, "sub": {"cost_price": 9}},
                {"sku": "b", "cost_price": 2},
                "scalar",
            ],
            "cost_price": 3,
        });
        assert_eq!(
            filtered(&["$.items[*].cost_price"], v.clone()),
            json!({
                "items": [{"sku": "a", "sub": {"cost_price": 9}}, {"sku": "b"}, "scalar"],
                "cost_price": 3,
            })
        );
        // `.*` is the same as `[*]`, and on an object selects every member.
        assert_eq!(
            filtered(&["$.items.*.cost_price"], v.clone()),
            filtered(&["$.items[*].cost_price"], v)
        );
        assert_eq!(
            filtered(
                &["$.m.*.pw"],
                json!({"m": {"a": {"pw": 1, "k": 1}, "b": {"pw": 2}}})
            ),
            json!({"m": {"a": {"k": 1}, "b": {}}})
        );
        // Removing every member or element.
        assert_eq!(
            filtered(
                &["$.m.*", "$.l[*]"],
                json!({"m": {"a": 1}, "l": [1, 2], "k": 0})
            ),
            json!({"m": {}, "l": [], "k": 0})
        );
        assert_eq!(filtered(&["$.*"], json!({"a": 1, "b": 2})), json!({}));
        assert_eq!(filtered(&["$[*]"], json!([1, {"a": 2}])), json!([]));
    }

    #[test]
    fn indices() {
        let v = json!({"l": [{"a": 1, "b": 1}, {"a": 2, "b": 2}, {"a": 3, "b": 3}, 4]});
        assert_eq!(
            filtered(&["$.l[1]"], v.clone()),
            json!({"l": [{"a": 1, "b": 1}, {"a": 3, "b": 3}, 4]})
        );
        // Indices refer to the body as received, whatever else is removed.
        assert_eq!(
            filtered(&["$.l[0]", "$.l[2].a", "$.l[1]"], v.clone()),
            json!({"l": [{"b": 3}, 4]})
        );
        assert_eq!(
            filtered(&["$.l[3]", "$.l[0].b", "$.l[9]"], v.clone()),
            json!({"l": [{"a": 1}, {"a": 2, "b": 2}, {"a": 3, "b": 3}]})
        );
        // A name does not select an element, an index does not select a key.
        assert_eq!(filtered(&["$.l.a", "$.l['0']"], v.clone()), v);
        assert_eq!(
            filtered(&["$.o[0]"], json!({"o": {"0": 1}})),
            json!({"o": {"0": 1}})
        );
        assert_eq!(filtered(&["$[0]"], json!([1, 2, 3])), json!([2, 3]));
    }

    #[test]
    fn recursive_descent() {
        let v = json!({
            "password_hash": 0,
            "user": {"password_hash": 1, "name": "a", "friends": [{"password_hash": 2}]},
            "meta": {"user": {"password_hash": 3}},
        });
        let want = json!({
            "user": {"name": "a", "friends": [{}]},
            "meta": {"user": {}},
        });
        assert_eq!(filtered(&["$..password_hash"], v.clone()), want);
        // A bare name is `$..name`.
        assert_eq!(filtered(&["password_hash"], v.clone()), want);
        // `..` after a step: only below it.
        assert_eq!(
            filtered(&["$.user..password_hash"], v.clone()),
            json!({
                "password_hash": 0,
                "user": {"name": "a", "friends": [{}]},
                "meta": {"user": {"password_hash": 3}},
            })
        );
        // `..name.child`: the child of that key wherever the key is.
        assert_eq!(
            filtered(
                &["$..user.name"],
                json!({"user": {"name": 1, "k": 1}, "x": [{"user": {"name": 2}}]})
            ),
            json!({"user": {"k": 1}, "x": [{"user": {}}]})
        );
        // `..[0]`: the first element of every array.
        assert_eq!(
            filtered(&["$..[0]"], json!({"a": [1, 2], "b": {"c": [[3, 4], 5]}})),
            json!({"a": [2], "b": {"c": [5]}})
        );
        // `..*` below a key: everything beneath it.
        assert_eq!(
            filtered(&["$.a..*"], json!({"a": {"b": {"c": 1}}, "d": 1})),
            json!({"a": {}, "d": 1})
        );
        // Two overlapping descents.
        assert_eq!(
            filtered(
                &["$..a..b", "$..c"],
                json!({"a": {"x": {"b": 1, "c": 2, "d": 3}}, "b": 4})
            ),
            json!({"a": {"x": {"d": 3}}, "b": 4})
        );
    }

    #[test]
    fn quoted_names_and_a_key_named_star() {
        let v = json!({
            "meta": {"debug info": 1, "debug": 2, "it's": 3, "back\\slash": 4, "q\"": 5},
            "*": 6,
            "x": {"*": 7, "y": 8},
        });
        assert_eq!(
            filtered(
                &[
                    "$.meta['debug info']",
                    "$.meta['it\\'s']",
                    "$.meta['back\\\\slash']",
                    "$.meta[\"q\\\"\"]",
                    "$['*']",
                ],
                v.clone()
            ),
            json!({"meta": {"debug": 2}, "x": {"*": 7, "y": 8}})
        );
        // `['*']` is the key, at any depth with `..`; not a wildcard.
        assert_eq!(
            filtered(&["$..['*']"], v),
            json!({
                "meta": {"debug info": 1, "debug": 2, "it's": 3, "back\\slash": 4, "q\"": 5},
                "x": {"y": 8},
            })
        );
    }

    #[test]
    fn no_match_leaves_the_body_untouched() {
        let v = json!({"a": [1, {"b": null}], "c": "internal_id", "d": {"e": [[]]}});
        assert_eq!(
            filtered(
                &["internal_id", "$.a[5]", "$.x.y", "$..z", "$.d.e[0][0]"],
                v.clone()
            ),
            v
        );
        for scalar in [json!(null), json!(1), json!("internal_id"), json!(true)] {
            assert_eq!(
                filtered(&["internal_id", "$[0]", "$.*"], scalar.clone()),
                scalar
            );
        }
    }

    #[test]
    fn the_brief_example() {
        let v = json!({
            "internal_id": 1,
            "items": [{"id": 1, "cost_price": 2, "internal_id": 9}],
            "user": {"profile": {"password_hash": "x"}},
            "meta": {"debug info": "y", "page": 1},
        });
        assert_eq!(
            filtered(
                &[
                    "internal_id",
                    "$.items[*].cost_price",
                    "$..password_hash",
                    "$.meta['debug info']"
                ],
                v
            ),
            json!({"items": [{"id": 1}], "user": {"profile": {}}, "meta": {"page": 1}})
        );
    }

    #[test]
    fn state_blow_up_is_refused() {
        // Each path has `..` before one of many names: tracking which prefixes have matched
        // needs a state per combination.
        let paths: Vec<String> = (0..14)
            .map(|i| format!("$..k{i}..k{i}..k{i}..end{i}"))
            .collect();
        let raw = RawResponseFilter {
            remove: paths,
            ..RawResponseFilter::default()
        };
        let mut e = ConfigErrors::new();
        assert!(compile(&raw, "routes[3].response_filter", &mut e).is_none());
        let got: Vec<String> = e.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            got,
            [
                "routes[3].response_filter.remove: the paths are too complex (more than 4096 automaton states); use fewer `..` and `*` steps"
            ]
        );
    }

    #[test]
    fn deep_value_does_not_blow_the_stack() {
        // Built in code (the parser would refuse it): 100 000 nested arrays.
        let mut v = json!({"secret": 1, "id": 2});
        for _ in 0..100_000 {
            v = Value::Array(vec![v, json!({"secret": 3})]);
        }
        let r = rules(&["secret"]);
        let v = match std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                r.apply(&mut v);
                v
            })
            .map(|h| h.join())
        {
            Ok(Ok(v)) => v,
            _ => panic!("apply failed on a small stack"),
        };
        let mut levels = 0;
        let mut cur = &v;
        while let Value::Array(items) = cur {
            assert_eq!(items.get(1), Some(&json!({})));
            levels += 1;
            cur = &items[0];
        }
        assert_eq!(levels, 100_000);
        assert_eq!(cur, &json!({"id": 2}));
        // Take it apart without recursion, so dropping it cannot overflow either.
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
    fn paths_only_descend_where_they_can_match() {
        // Without `..` a rule reaches only its own path: the automaton has the start state,
        // the removal state and one state per step on the way.
        let r = rules(&["$.a.b.c"]);
        assert_eq!(r.states.len(), 4);
        let r = rules(&["x", "y"]);
        assert_eq!(r.states.len(), 2);
    }
}
