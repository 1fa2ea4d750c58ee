//! GraphQL document analysis: parse (bounded), resolve fragments (cycles guarded), measure each
//! operation's depth, aliases and complexity, and note introspection, list-size arguments and
//! input-object fields a client must not set.
//!
//! Cost is bounded whatever the document: the parser stops at [`RECURSION_LIMIT`] nested
//! selection sets or values and at the route's token limit; every fragment is walked once (its
//! measures are memoised and reused at each spread), fragments are ordered without recursion,
//! and the walk of one definition recurses no deeper than the parser did.

use std::collections::HashMap;

use apollo_parser::{Parser, cst};

use super::names::{NameSet, PageValue, page_value};

/// Deepest nesting (selection sets, list and object values) the parser follows. Documents
/// nested deeper do not parse (rule 2501); `max_depth` is capped well below it.
pub(crate) const RECURSION_LIMIT: usize = 128;

/// Most list-size arguments and protected input fields one document reports.
const MAX_NOTES: usize = 16;

/// Introspection root fields (`__typename` is not one: clients ask for it everywhere).
const INTROSPECTION_FIELDS: [&str; 2] = ["__schema", "__type"];

/// The measures of a selection set, fragments included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Nesting of fields: `{ a }` is 1, `{ a { b } }` is 2.
    pub depth: u32,
    /// Aliased fields, each fragment counted at every spread.
    pub aliases: u64,
    /// Fields resolved, list multipliers applied (see `RawGraphql::max_complexity`).
    pub complexity: u64,
}

impl Stats {
    /// Adds a sibling selection's measures (depth is the deeper one).
    fn merge(&mut self, other: Stats) {
        self.depth = self.depth.max(other.depth);
        self.aliases = self.aliases.saturating_add(other.aliases);
        self.complexity = self.complexity.saturating_add(other.complexity);
    }

    /// The larger of each measure.
    fn max(&mut self, other: Stats) {
        self.depth = self.depth.max(other.depth);
        self.aliases = self.aliases.max(other.aliases);
        self.complexity = self.complexity.max(other.complexity);
    }
}

/// What the request gives the analysis.
pub(crate) struct Inputs<'a> {
    /// The parser's token limit (white space and punctuation count).
    pub max_tokens: usize,
    /// Arguments that size a list (`first`, `last`, …).
    pub list_arguments: &'a NameSet,
    /// Input-object fields a client must not set, when mass assignment applies to the request.
    pub protected: Option<&'a NameSet>,
    /// The value of a request variable (`$n`), as text.
    pub variables: &'a mut dyn FnMut(&str) -> Option<String>,
}

/// A list-size argument and its value as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListArgument {
    pub name: String,
    pub value: String,
}

/// The outcome of analysing one document.
#[derive(Debug, Default)]
pub(crate) struct Analysis {
    /// The first syntax error (or the recursion limit), with its byte offset.
    pub syntax_error: Option<String>,
    /// The token limit was reached (the rest of the document was not read).
    pub token_limit: bool,
    /// Operations in the document.
    pub operations: usize,
    /// The largest measures over the document's operations.
    pub stats: Stats,
    /// An introspection field the document selects.
    pub introspection: Option<&'static str>,
    /// A fragment on a cycle of spreads.
    pub cycle: Option<String>,
    /// Protected fields set in mutation input objects.
    pub protected: Vec<String>,
    /// List-size arguments with a known value.
    pub list_arguments: Vec<ListArgument>,
}

/// Parses and measures a document.
pub(crate) fn analyse(doc: &str, inputs: &mut Inputs<'_>) -> Analysis {
    let tree = Parser::new(doc)
        .recursion_limit(RECURSION_LIMIT)
        .token_limit(inputs.max_tokens)
        .parse();
    let mut out = Analysis::default();
    for e in tree.errors() {
        if e.is_limit() && e.message().contains("token") {
            out.token_limit = true;
        } else if out.syntax_error.is_none() {
            out.syntax_error = Some(format!("{} at {}", e.message(), e.index()));
        }
    }
    let document = tree.document();

    // Fragments by name (the first definition of a name wins; servers refuse duplicates).
    let mut fragments: Vec<(String, Option<cst::SelectionSet>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut operations: Vec<cst::OperationDefinition> = Vec::new();
    for def in document.definitions() {
        match def {
            cst::Definition::OperationDefinition(op) => operations.push(op),
            cst::Definition::FragmentDefinition(f) => {
                let Some(name) = f
                    .fragment_name()
                    .and_then(|n| n.name())
                    .and_then(|n| n.ident_token())
                else {
                    continue;
                };
                let name = name.text().to_string();
                if !index.contains_key(&name) {
                    index.insert(name.clone(), fragments.len());
                    fragments.push((name, f.selection_set()));
                }
            }
            _ => {}
        }
    }
    out.operations = operations.len();

    let mut walk = Walk {
        inputs,
        index: &index,
        fragment_stats: vec![None; fragments.len()],
        defaults: Vec::new(),
        introspection: None,
        protected: Vec::new(),
        list_arguments: Vec::new(),
    };

    // Fragments in dependency order, each measured once.
    let (order, cycle) = dependency_order(&fragments, &index);
    out.cycle = cycle;
    for i in order {
        if let Some(set) = &fragments[i].1 {
            let s = walk.selection_set(set);
            walk.fragment_stats[i] = Some(s);
        }
    }

    for op in &operations {
        walk.defaults = variable_defaults(op);
        let Some(set) = op.selection_set() else {
            continue;
        };
        let s = walk.selection_set(&set);
        out.stats.max(s);
        let mutation = op
            .operation_type()
            .is_some_and(|t| t.mutation_token().is_some());
        if mutation && walk.inputs.protected.is_some() {
            walk.mutation_inputs(&set);
        }
    }
    out.introspection = walk.introspection;
    out.protected = walk.protected;
    out.list_arguments = walk.list_arguments;
    out
}

/// The fragments spread directly in a selection set.
fn spreads(set: &cst::SelectionSet, index: &HashMap<String, usize>, out: &mut Vec<usize>) {
    for sel in set.selections() {
        match sel {
            cst::Selection::Field(f) => {
                if let Some(child) = f.selection_set() {
                    spreads(&child, index, out);
                }
            }
            cst::Selection::FragmentSpread(s) => {
                let i = s
                    .fragment_name()
                    .and_then(|n| n.name())
                    .and_then(|n| n.ident_token())
                    .and_then(|tok| index.get(tok.text()).copied());
                if let Some(i) = i.filter(|i| !out.contains(i)) {
                    out.push(i);
                }
            }
            cst::Selection::InlineFragment(f) => {
                if let Some(child) = f.selection_set() {
                    spreads(&child, index, out);
                }
            }
        }
    }
}

/// Fragments ordered so that each comes after those it spreads (an iterative depth-first
/// search); a spread closing a cycle is left out of the order's guarantee and reported.
fn dependency_order(
    fragments: &[(String, Option<cst::SelectionSet>)],
    index: &HashMap<String, usize>,
) -> (Vec<usize>, Option<String>) {
    let deps: Vec<Vec<usize>> = fragments
        .iter()
        .map(|(_, set)| {
            let mut d = Vec::new();
            if let Some(set) = set {
                spreads(set, index, &mut d);
            }
            d
        })
        .collect();
    // 0 unvisited, 1 on the current path, 2 done.
    let mut colour = vec![0u8; fragments.len()];
    let mut order = Vec::with_capacity(fragments.len());
    let mut cycle = None;
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for root in 0..fragments.len() {
        if colour[root] != 0 {
            continue;
        }
        colour[root] = 1;
        stack.push((root, 0));
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            if let Some(&d) = deps[node].get(next) {
                top.1 += 1;
                match colour[d] {
                    0 => {
                        colour[d] = 1;
                        stack.push((d, 0));
                    }
                    1 if cycle.is_none() => cycle = Some(fragments[d].0.clone()),
                    _ => {}
                }
            } else {
                colour[node] = 2;
                order.push(node);
                stack.pop();
            }
        }
    }
    (order, cycle)
}

/// An operation's variable defaults (`$first: Int = 50`), as text.
fn variable_defaults(op: &cst::OperationDefinition) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Some(defs) = op.variable_definitions() else {
        return out;
    };
    for d in defs.variable_definitions() {
        let name = d
            .variable()
            .and_then(|v| v.name())
            .and_then(|n| n.ident_token());
        let value = d.default_value().and_then(|v| v.value());
        if let (Some(name), Some(text)) = (name, value.as_ref().and_then(literal_text)) {
            out.push((name.text().to_string(), text));
        }
    }
    out
}

/// The text of a scalar literal: an integer or float as written, a string's content.
fn literal_text(v: &cst::Value) -> Option<String> {
    match v {
        cst::Value::IntValue(i) => i.int_token().map(|t| t.text().to_string()),
        cst::Value::FloatValue(f) => f.float_token().map(|t| t.text().to_string()),
        cst::Value::StringValue(s) => {
            let raw = cst::CstNode::syntax(s).text().to_string();
            let inner = raw
                .strip_prefix("\"\"\"")
                .and_then(|r| r.strip_suffix("\"\"\""))
                .or_else(|| raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
                .unwrap_or(&raw);
            Some(inner.to_string())
        }
        _ => None,
    }
}

struct Walk<'w, 'a> {
    inputs: &'w mut Inputs<'a>,
    index: &'w HashMap<String, usize>,
    fragment_stats: Vec<Option<Stats>>,
    defaults: Vec<(String, String)>,
    introspection: Option<&'static str>,
    protected: Vec<String>,
    list_arguments: Vec<ListArgument>,
}

impl Walk<'_, '_> {
    fn selection_set(&mut self, set: &cst::SelectionSet) -> Stats {
        let mut s = Stats::default();
        for sel in set.selections() {
            match sel {
                cst::Selection::Field(f) => {
                    let name = f.name().and_then(|n| n.ident_token());
                    let name = name.as_ref().map(|t| t.text()).unwrap_or("");
                    if let Some(&hit) = INTROSPECTION_FIELDS.iter().find(|&&x| x == name) {
                        self.introspection.get_or_insert(hit);
                    }
                    let own = u64::from(name != "__typename");
                    let aliases = u64::from(f.alias().is_some());
                    let multiplier = match f.arguments() {
                        Some(args) => self.multiplier(&args),
                        None => 1,
                    };
                    let field = match f.selection_set() {
                        Some(child) => {
                            let c = self.selection_set(&child);
                            Stats {
                                depth: c.depth.saturating_add(1),
                                aliases: c.aliases.saturating_add(aliases),
                                complexity: own
                                    .saturating_add(multiplier.saturating_mul(c.complexity)),
                            }
                        }
                        None => Stats {
                            depth: 1,
                            aliases,
                            complexity: own,
                        },
                    };
                    s.merge(field);
                }
                cst::Selection::FragmentSpread(spread) => {
                    let stats = spread
                        .fragment_name()
                        .and_then(|n| n.name())
                        .and_then(|n| n.ident_token())
                        .and_then(|t| self.index.get(t.text()).copied())
                        .and_then(|i| self.fragment_stats.get(i).copied().flatten());
                    // An unknown fragment, or one on a cycle not measured yet, adds nothing.
                    if let Some(stats) = stats {
                        s.merge(stats);
                    }
                }
                cst::Selection::InlineFragment(f) => {
                    if let Some(child) = f.selection_set() {
                        let c = self.selection_set(&child);
                        s.merge(c);
                    }
                }
            }
        }
        s
    }

    /// The list size a field's arguments ask for (the largest list-size argument with a known
    /// integer value; 1 when there is none), noting each such argument.
    fn multiplier(&mut self, args: &cst::Arguments) -> u64 {
        let mut m = 1u64;
        for a in args.arguments() {
            let Some(name) = a.name().and_then(|n| n.ident_token()) else {
                continue;
            };
            let name = name.text();
            if !self.inputs.list_arguments.contains(name) {
                continue;
            }
            let Some(value) = a.value() else { continue };
            let text = match &value {
                cst::Value::Variable(v) => {
                    let Some(var) = v.name().and_then(|n| n.ident_token()) else {
                        continue;
                    };
                    let var = var.text();
                    match (self.inputs.variables)(var) {
                        Some(t) => Some(t),
                        None => self
                            .defaults
                            .iter()
                            .find(|(n, _)| n == var)
                            .map(|(_, v)| v.clone()),
                    }
                }
                other => literal_text(other),
            };
            let Some(text) = text else { continue };
            if let PageValue::Number(n) = page_value(&text) {
                m = m.max(n);
            }
            if self.list_arguments.len() < MAX_NOTES {
                self.list_arguments.push(ListArgument {
                    name: name.to_string(),
                    value: text,
                });
            }
        }
        m
    }

    /// Notes protected fields in the input objects of a mutation's root fields.
    fn mutation_inputs(&mut self, set: &cst::SelectionSet) {
        for sel in set.selections() {
            let cst::Selection::Field(f) = sel else {
                continue;
            };
            if let Some(args) = f.arguments() {
                for a in args.arguments() {
                    if let Some(v) = a.value() {
                        self.input_value(&v);
                    }
                }
            }
        }
    }

    fn input_value(&mut self, v: &cst::Value) {
        match v {
            cst::Value::ObjectValue(o) => {
                for field in o.object_fields() {
                    if let Some(tok) = field.name().and_then(|n| n.ident_token()) {
                        let name = tok.text();
                        if self.inputs.protected.is_some_and(|p| p.contains(name))
                            && self.protected.len() < MAX_NOTES
                            && !self.protected.iter().any(|x| x == name)
                        {
                            self.protected.push(name.to_string());
                        }
                    }
                    if let Some(v) = field.value() {
                        self.input_value(&v);
                    }
                }
            }
            cst::Value::ListValue(l) => {
                for v in l.values() {
                    self.input_value(&v);
                }
            }
            _ => {}
        }
    }
}

/// Whether a text starts like a GraphQL executable document: `{` then a field or spread,
/// `query`/`mutation`/`subscription` then (a name and) `{`, `(` or `@`, or
/// `fragment Name on`. Cheap: reads at most three tokens.
pub(crate) fn looks_like_graphql(doc: &str) -> bool {
    let mut lx = Lexer {
        s: doc.as_bytes(),
        i: 0,
    };
    match lx.next() {
        Tok::Punct(b'{') => matches!(lx.next(), Tok::Name(_) | Tok::Spread),
        Tok::Name(b"query" | b"mutation" | b"subscription") => match lx.next() {
            Tok::Punct(b'{' | b'(' | b'@') => true,
            Tok::Name(_) => matches!(lx.next(), Tok::Punct(b'{' | b'(' | b'@')),
            _ => false,
        },
        Tok::Name(b"fragment") => {
            matches!(lx.next(), Tok::Name(_)) && matches!(lx.next(), Tok::Name(b"on"))
        }
        _ => false,
    }
}

enum Tok<'s> {
    Punct(u8),
    Spread,
    Name(&'s [u8]),
    Other,
}

struct Lexer<'s> {
    s: &'s [u8],
    i: usize,
}

impl<'s> Lexer<'s> {
    fn next(&mut self) -> Tok<'s> {
        // Ignored: white space, line terminators, commas, comments, a byte-order mark.
        loop {
            match self.s.get(self.i) {
                Some(b' ' | b'\t' | b'\n' | b'\r' | b',') => self.i += 1,
                Some(b'#') => {
                    while let Some(&b) = self.s.get(self.i) {
                        if b == b'\n' || b == b'\r' {
                            break;
                        }
                        self.i += 1;
                    }
                }
                Some(0xEF) if self.s[self.i..].starts_with(&[0xEF, 0xBB, 0xBF]) => self.i += 3,
                _ => break,
            }
        }
        let Some(&b) = self.s.get(self.i) else {
            return Tok::Other;
        };
        if b == b'_' || b.is_ascii_alphabetic() {
            let start = self.i;
            while self
                .s
                .get(self.i)
                .is_some_and(|&c| c == b'_' || c.is_ascii_alphanumeric())
            {
                self.i += 1;
            }
            return Tok::Name(&self.s[start..self.i]);
        }
        if self.s[self.i..].starts_with(b"...") {
            self.i += 3;
            return Tok::Spread;
        }
        self.i += 1;
        match b {
            b'{' | b'(' | b'@' => Tok::Punct(b),
            _ => Tok::Other,
        }
    }
}
