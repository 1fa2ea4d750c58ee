//! LDAP filter injection (rules 1800–1899).
//!
//! A value that closes the filter it is pasted into and opens another (`*)(uid=*))(|(uid=*`,
//! `admin)(&)`, `*)(|(objectclass=*)`), wildcard probes of directory attributes, and the
//! hex-escaped forms of filter metacharacters. A lone `*` or parentheses in prose are not enough.

use std::sync::LazyLock;

use super::shared::{Bank, Literals, push_once};
use crate::model::{Class, Finding, Rule, Severity, Target};
use crate::transform::{View, Views};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::Ldap,
        severity,
        paranoia,
        description,
    }
}

pub static RULES: &[Rule] = &[
    rule(
        1800,
        Severity::Critical,
        1,
        "LDAP filter breakout (closing a filter and opening another)",
    ),
    rule(
        1801,
        Severity::Critical,
        1,
        "LDAP filter with a boolean operator over an attribute assertion",
    ),
    rule(
        1802,
        Severity::Critical,
        1,
        "LDAP wildcard probe of a directory attribute",
    ),
    rule(
        1803,
        Severity::Warning,
        2,
        "hex-escaped LDAP filter metacharacters",
    ),
    rule(
        1804,
        Severity::Error,
        1,
        "LDAP filter closed and left open with a wildcard",
    ),
];

/// Directory attributes worth probing.
const ATTRS: &str = "objectclass|userpassword|unicodepwd|uid|cn|sn|mail|samaccountname|userprincipalname|memberof|member|givenname|displayname|ou|dc|o|description|telephonenumber|homedirectory|loginshell|uidnumber|gidnumber|objectcategory|distinguishedname|name|password|pwdlastset|admincount|useraccountcontrol|serviceprincipalname";

static DECODED: LazyLock<Bank> = LazyLock::new(|| {
    let attr_assert = r"[a-z][\w.;-]*\s*[~<>]?=";
    let pats: Vec<(usize, String)> = vec![
        (
            0,
            r"(?i)\*\s*\)\s*\(\s*(?:[|&!]|[a-z][\w.;-]*\s*[~<>]?=)".into(),
        ),
        (0, format!(r"(?i)\)\s*\(\s*[|&!]\s*\(\s*{attr_assert}")),
        (0, format!(r"(?i)[\w*]\s*\)\s*\(\s*{attr_assert}\s*\*")),
        (0, r"(?i)\)\s*\)\s*\(\s*[|&!]\s*\(".into()),
        (0, r"(?i)[\w*]\s*\)\s*\(\s*[|&]\s*\)".into()),
        (1, format!(r"(?i)\(\s*[|&!]\s*\(\s*(?:{ATTRS})\s*[~<>]?=")),
        (1, format!(r"(?i)\(\s*[|&!]\s*(?:{ATTRS})\s*[~<>]?=\s*\*")),
        (2, format!(r"(?i)\(\s*(?:{ATTRS})\s*=\s*\*\s*\)")),
        (
            3,
            r"(?i)\\(?:2a|28|29|5c|00|7c|26|21)(?:.*\\(?:2a|28|29|5c|00|7c|26|21))".into(),
        ),
        (4, r"^[\w.@-]*\*\s*\)\s*[)(]".into()),
    ];
    let refs: Vec<(usize, &str)> = pats.iter().map(|(r, p)| (*r, p.as_str())).collect();
    Bank::new("ldap", &refs)
});

/// Fragments every pattern needs: a closed-then-opened filter, an operator after a parenthesis,
/// a wildcard assertion or closing, a hex escape.
static LITS: LazyLock<Literals> = LazyLock::new(|| {
    Literals::new(
        "ldap",
        &[
            ")(", ") (", "(|", "(&", "(!", "( |", "( &", "=*", "= *", "*)", "* )", "\\",
        ],
    )
});

pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let raw = views.get(View::Raw);
    if !raw.contains([')', '(', '%', '\\']) {
        return;
    }
    let decoded = views.get(View::Decoded);
    if !LITS.any(decoded) {
        return;
    }
    let mut seen = 0u64;
    DECODED.scan(decoded, |r, m| {
        push_once(RULES, r, &mut seen, paranoia, t, View::Decoded, m, out)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &str, pl: u8) -> Vec<u32> {
        crate::detect::testing::ids(inspect, v, pl)
    }

    fn score(v: &str) -> u32 {
        crate::detect::testing::score(inspect, v)
    }

    #[test]
    fn patterns_compile() {
        assert_eq!(DECODED.failed, 0);
        assert!(LITS.built());
    }

    #[test]
    fn rule_ids_are_in_block_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!((1800..1900).contains(&r.id));
            assert!(seen.insert(r.id));
        }
    }

    #[test]
    fn attacks() {
        for v in [
            "*)(uid=*))(|(uid=*",
            "admin*)((|userPassword=*)",
            "*(|(mail=*))",
            "*(|(objectclass=*))",
            "admin)(&)",
            "*)(&",
            "x)(cn=*",
        ] {
            assert!(score(v) >= 5, "{v} -> {:?}", ids(v, 1));
        }
        assert!(ids(r"\2a\29\28cn=\2a", 2).contains(&1803));
    }

    #[test]
    fn benign() {
        for v in [
            "*",
            "(see above)",
            "5 * (3 + 2)",
            "foo (bar) (baz)",
            "f(x)(y)",
            "note (a)(b)",
            "rating: 5*",
            "C:\\Users\\bob",
        ] {
            assert!(score(v) < 5, "{v} -> {:?}", ids(v, 1));
        }
    }
}
