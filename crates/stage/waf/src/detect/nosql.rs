//! NoSQL (MongoDB-style) injection (rules 1700–1799).
//!
//! Query operators where user data should be plain: as JSON keys and bracketed parameter names
//! (`user[$ne]=x`, which PHP/Express parsers turn into `{"user": {"$ne": "x"}}`), as operator
//! objects written into a string that ends up concatenated into a query, and JavaScript injected
//! into `$where`/`mapReduce` contexts.

use std::sync::LazyLock;

use super::shared::{Bank, Literals, push_once};
use crate::model::{Class, Finding, Part, Rule, Severity, Target};
use crate::transform::{View, Views};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::Nosql,
        severity,
        paranoia,
        description,
    }
}

pub static RULES: &[Rule] = &[
    rule(
        1700,
        Severity::Critical,
        1,
        "JavaScript-executing query operator as a key ($where, $function, $accumulator)",
    ),
    rule(
        1701,
        Severity::Critical,
        1,
        "query operator as a key or bracketed parameter name ($ne, $gt, $regex …)",
    ),
    rule(
        1702,
        Severity::Critical,
        1,
        "query operator object written in a value",
    ),
    rule(
        1703,
        Severity::Critical,
        1,
        "JavaScript injection into a NoSQL query (this.*, db.*, return true)",
    ),
    rule(1704, Severity::Error, 1, "JavaScript tautology"),
    rule(
        1705,
        Severity::Warning,
        2,
        "aggregation stage operator as a key ($lookup, $merge, $out …)",
    ),
    rule(
        1706,
        Severity::Critical,
        1,
        "JavaScript tautology comparing a value with itself",
    ),
    rule(
        1707,
        Severity::Warning,
        2,
        "query-DSL operator as a key or bracketed parameter name ($eq, $in, $or …)",
    ),
];

const JS_OPS: &str = "where|function|accumulator|eval";
/// Operators of authentication bypass and blind extraction (comparison, regex, existence).
const QUERY_OPS: &str =
    "ne|gt|gte|lt|lte|nin|regex|exists|expr|where|function|accumulator|jsonschema|not|nor";
/// Operators the query DSLs of some frameworks legitimately accept in parameter names.
const DSL_OPS: &str =
    "eq|in|or|and|elemmatch|all|options|size|mod|text|geowithin|near|bitsallset|bitsanyset";
const STAGE_OPS: &str = "lookup|merge|out|group|match|project|unwind|unionwith|graphlookup|facet|addfields|replaceroot|set|unset|currentop|listsessions";

/// Patterns over a key or parameter name (case kept: MongoDB operators are case-sensitive, but
/// parsers differ, so `(?i)`).
static NAME: LazyLock<Bank> = LazyLock::new(|| {
    let a = format!(r"(?i)(?:^|[.\[\x22'])\s*\$(?:{JS_OPS})\s*(?:$|[\]\x22'.\[])");
    let b = format!(r"(?i)(?:^|[.\[\x22'])\s*\$(?:{QUERY_OPS})\s*(?:$|[\]\x22'.\[])");
    let c = format!(r"(?i)(?:^|[.\[\x22'])\s*\$(?:{STAGE_OPS})\s*(?:$|[\]\x22'.\[])");
    let d = format!(r"(?i)(?:^|[.\[\x22'])\s*\$(?:{DSL_OPS})\s*(?:$|[\]\x22'.\[])");
    let pats = [(0, a), (1, b), (5, c), (7, d)];
    let refs: Vec<(usize, &str)> = pats.iter().map(|(r, p)| (*r, p.as_str())).collect();
    Bank::new("nosql", &refs)
});

/// Patterns over a value (decoded view).
static VALUE: LazyLock<Bank> = LazyLock::new(|| {
    // In a value (a string pasted into a query), any operator counts.
    let obj =
        format!(r"(?i)(?:^|[{{,\[(])\s*[\x22']?\$(?:{QUERY_OPS}|{DSL_OPS}|comment)[\x22']?\s*:");
    let bracket = format!(r"(?i)\[\s*\$(?:{QUERY_OPS})\s*\]");
    let pats: Vec<(usize, String)> = vec![
        (2, obj),
        (2, bracket),
        (
            3,
            r"(?i)[\x22'`]\s*(?:;|\|\||&&)\s*this\.\w+(?:\.(?:match|test|indexof|startswith|endswith|includes)\s*\(|\s*(?:===?|!==?|>=?|<=?))".into(),
        ),
        (3, r"(?i)[\x22'`]\s*(?:;|\|\||&&)\s*return\s+(?:true|1|!0|this)\b".into()),
        (
            3,
            r"(?i)(?:^|[\x22'`;]\s*)db\.(?:[\w]+\.(?:find|findone|insert|insertone|insertmany|update|updateone|updatemany|remove|deleteone|deletemany|drop|mapreduce|aggregate|count|distinct|save|renamecollection)|getcollection(?:names)?|dropdatabase|eval|runcommand|admincommand|getsiblingdb|getmongo|shutdownserver|currentop|killop|createuser|auth|loadserverscripts)\s*\(".into(),
        ),
        (3, r"(?i)[\x22'`]\s*(?:;|\|\||&&)\s*(?:sleep|while\s*\(\s*true)\s*\(?".into()),
        (3, r"(?i)\bmapreduce\s*\(\s*function\b".into()),
        (
            4,
            r#"(?i)(?:\|\||&&)\s*["']?(?:\w+|["'][^"']*["'])["']?\s*(?:===?|!==?)\s*["']?\w*["']?"#.into(),
        ),
        (4, r"(?i)\bthis\.\w+\s*(?:===?|!==?|>=?|<=?)".into()),
    ];
    let refs: Vec<(usize, &str)> = pats.iter().map(|(r, p)| (*r, p.as_str())).collect();
    Bank::new("nosql", &refs)
});

/// Literals without one of which no value pattern matches.
static LITS: LazyLock<Literals> = LazyLock::new(|| {
    Literals::new(
        "nosql",
        &[
            "$",
            "this.",
            "return",
            "db.",
            "||",
            "&&",
            "mapreduce",
            "sleep",
            "while",
        ],
    )
});

pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let mut seen = 0u64;
    if t.part == Part::Name {
        for s in [t.name.as_ref(), t.value.as_ref()] {
            if s.contains('$') {
                NAME.scan(s, |r, m| {
                    push_once(RULES, r, &mut seen, paranoia, t, View::Raw, m, out)
                });
            }
        }
    }
    if t.part == Part::Name {
        return;
    }
    let decoded = views.get(View::Decoded);
    if !LITS.any(decoded) {
        return;
    }
    VALUE.scan(decoded, |r, m| {
        if r == 4 && is_self_comparison(m) {
            push_once(RULES, 6, &mut seen, paranoia, t, View::Decoded, m, out);
        }
        push_once(RULES, r, &mut seen, paranoia, t, View::Decoded, m, out)
    });
}

/// `|| 1==1`, `&& 'a'==='a'`: both sides of the comparison the same literal.
fn is_self_comparison(m: &str) -> bool {
    let body = m.trim_start_matches(['|', '&']);
    let Some(i) = body.find("==") else {
        return false;
    };
    let (l, r) = (&body[..i], &body[i..]);
    if body[..i].ends_with('!') || r.starts_with("==!") {
        return false;
    }
    let (l, r) = (unquote(l), unquote(r));
    !l.is_empty() && l == r
}

fn unquote(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '=' | '!'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Location;

    fn ids(loc: Location, name: &str, part: Part, v: &str) -> Vec<u32> {
        let t = Target::new(loc, name, part, v);
        let mut views = Views::new();
        views.load(v);
        let mut out = Vec::new();
        inspect(&t, &mut views, 1, &mut out);
        out.iter().map(|f| f.rule).collect()
    }

    fn val(v: &str) -> Vec<u32> {
        ids(Location::Query, "q", Part::Value, v)
    }

    #[test]
    fn patterns_compile() {
        assert_eq!(NAME.failed, 0);
        assert_eq!(VALUE.failed, 0);
        assert!(LITS.built());
    }

    #[test]
    fn rule_ids_are_in_block_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!((1700..1800).contains(&r.id));
            assert!(seen.insert(r.id));
        }
    }

    #[test]
    fn operator_names() {
        assert_eq!(
            ids(Location::Body, "$.user['$ne']", Part::Name, "$ne"),
            vec![1701]
        );
        assert_eq!(
            ids(Location::Body, "$['$where']", Part::Name, "$where"),
            vec![1700, 1701]
        );
        assert_eq!(
            ids(
                Location::Query,
                "password[$regex]",
                Part::Name,
                "password[$regex]"
            ),
            vec![1701]
        );
        assert!(ids(Location::Body, "$.price", Part::Name, "price").is_empty());
        assert!(ids(Location::Body, "$['$type']", Part::Name, "$type").is_empty());
        assert!(ids(Location::Body, "$['$schema']", Part::Name, "$schema").is_empty());
        assert!(
            ids(
                Location::Query,
                "filters[title][$eq]",
                Part::Name,
                "filters[title][$eq]"
            )
            .is_empty()
        );
        assert!(ids(Location::Body, "$.items[0]", Part::Name, "items").is_empty());
    }

    #[test]
    fn values() {
        assert!(val("{ $ne: 1 }").contains(&1702));
        assert!(val("', $where: '1 == 1'").contains(&1702));
        assert!(val("[$ne]=1").contains(&1702));
        assert!(val("' && this.password.match(/.*/)//").contains(&1703));
        assert!(val("'; return true; var x='").contains(&1703));
        assert!(val("db.injection.insert({success:1});").contains(&1703));
        assert!(val("|| 1==1").contains(&1706));
        // JSON escapes in a value a backend parses as JSON.
        assert!(val(r#"{"\u0024ne": null}"#).contains(&1702));
        assert!(val(r#"{"username":{"\u0024gt":""}}"#).contains(&1702));
        assert!(!val("|| a==b").contains(&1706));
    }

    #[test]
    fn benign() {
        for v in [
            "$5 off",
            "price: $10",
            "US$ 20",
            "a || b",
            "this is it",
            "cost $ne",
        ] {
            assert!(val(v).is_empty(), "{v} -> {:?}", val(v));
        }
    }
}
