//! Server-side template injection (rules 1900–1999).
//!
//! Expressions a template engine would evaluate, by the technique used to get from an
//! expression to code: arithmetic probes (`{{7*7}}`, `${7*7}`), Python object-graph walks
//! (`__class__.__mro__`), engine globals (`{{config}}`, `_self.env`), Java class access from
//! EL/SpEL/OGNL/Freemarker/Velocity, scriptlets (ERB, JSP, Mako, Smarty), template tags that
//! import or include, and the JavaScript constructor escape. A plain `{{name}}` is only noted at
//! paranoia 3.

use std::sync::LazyLock;

use super::shared::{Bank, Literals, push_once};
use crate::model::{Class, Finding, Rule, Severity, Target};
use crate::transform::{View, Views};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::Ssti,
        severity,
        paranoia,
        description,
    }
}

pub static RULES: &[Rule] = &[
    rule(
        1900,
        Severity::Critical,
        1,
        "Python object-graph traversal (__class__, __mro__, __globals__ …)",
    ),
    rule(
        1901,
        Severity::Critical,
        1,
        "template expression evaluating arithmetic (probe)",
    ),
    rule(
        1902,
        Severity::Critical,
        1,
        "template engine globals or environment access (config, self, request, _self.env)",
    ),
    rule(
        1903,
        Severity::Critical,
        1,
        "Java class access from an expression language (EL, SpEL, OGNL, Freemarker, Velocity)",
    ),
    rule(
        1904,
        Severity::Critical,
        1,
        "template scriptlet executing code (ERB, JSP, Mako, Smarty)",
    ),
    rule(
        1905,
        Severity::Critical,
        1,
        "template tag importing, including or calling back into the host language",
    ),
    rule(
        1906,
        Severity::Critical,
        1,
        "JavaScript constructor escape from a sandboxed expression",
    ),
    rule(1907, Severity::Error, 1, "ERB/JSP/ASP expression tag"),
    rule(
        1908,
        Severity::Warning,
        2,
        "template expression with a call or member access",
    ),
    rule(1909, Severity::Notice, 3, "template expression delimiters"),
];

static CANON: LazyLock<Bank> = LazyLock::new(|| {
    // `(?i)` although the canonical view is lowercase: the rules must not depend on it.
    let pats: &[(usize, &str)] = &[
        (
            0,
            r#"(?:\.|\[\s*['"]|\|\s*attr\s*\(\s*['"])__(?:class|mro|subclasses|globals|builtins|bases?|import|getattribute|func_globals|loader|reduce_ex|init__\.__globals)__"#,
        ),
        (0, r"\b__(?:import|builtins|subclasses)__\s*[(\[.]"),
        (
            1,
            r#"(?:\{\{|[$#*@~%]\{|\{%|<%=?)\s*\(?\s*[0-9]+\s*\)?\s*[*+/%-]\s*\(?\s*['"]?[0-9]+['"]?\s*\)?\s*(?:\}|%>|%\})"#,
        ),
        (
            2,
            r#"\{[{%][^}]{0,200}?\b(?:config|self|request|lipsum|cycler|joiner|namespace|url_for|get_flashed_messages|g)\s*(?:\.|\[\s*['"]|\|\s*attr\s*\(\s*['"])\s*(?:__|application\b|environ\b|items\s*\(|_templatereference|_module|from_object|from_pyfile|os\b|popen|_get_current_object)"#,
        ),
        (
            2,
            r"\{\{\s*(?:config|self|request|settings|_self|_context)\s*\}\}",
        ),
        (
            2,
            r"\b_self\.env\b|\bregisterundefinedfiltercallback\b|\bgetfilter\s*\(",
        ),
        (
            3,
            r"[$#*@%]\{[^}]{0,200}?(?:\bt\s*\(\s*java\.|\bjava\.lang\.|\.getclass\s*\(|\bforname\s*\(|\bgetruntime\b|\bprocessbuilder\b|\bnew\s+java\.|\.exec\s*\(|\bgetmethod\s*\(|\bclassloader\b|\bscriptenginemanager\b)",
        ),
        (
            3,
            r"#_memberaccess|@java\.lang\.[a-z]+@|\bognl\.ognlcontext\b|#context\s*\[\s*['\x22]xwork|\bdefault_member_access\b",
        ),
        (
            3,
            r"\bfreemarker\.template\.utility\.(?:execute|objectconstructor|jythonruntime)\b|\?new\s*\(\s*\)|<#assign\b|\?api\.\w+|\bbuiltin\.(?:execute|objectconstructor)",
        ),
        (
            3,
            r"#set\s*\(\s*\$\w+\s*=[^)]*(?:\.getclass|\.forname|runtime|\$class|\.class\b|classloader)|\$class\.(?:inspect|type|forname)\b|\.getclass\s*\(\s*\)\s*\.\s*forname\s*\(|\$\{?\s*\w+\.getclass\s*\(",
        ),
        (
            4,
            r"<%=?\s*(?:system|exec|spawn|`|%x|io\.popen|file\.(?:read|open|write)|dir\.(?:entries|glob)|eval|kernel\.|open\s*\(|require\b|runtime\b|process\b|import\s+os|__import__)",
        ),
        (
            4,
            r"\{php\}|\{system\s*\(|\{\$smarty\.(?:version|template_object)|\bself::getstreamvariable\s*\(|\{if\s+(?:system|phpinfo|exec|passthru)\s*\(",
        ),
        (
            4,
            r"\$\{\s*(?:self\.module|__import__|os\.(?:system|popen)|subprocess)",
        ),
        (
            5,
            r#"\{%-?\s*(?:import|from)\s+[a-z_][\w.]*(?:\s|%)|\{%-?\s*(?:include|extends|embed|source)\s*\(?\s*['"]\s*(?:/|\.\./|[a-z]:\\|[a-z]+://)|\{%-?\s*debug\s*-?%\}"#,
        ),
        (
            5,
            r#"\|\s*(?:filter|map|reduce|sort|attr)\s*\(\s*['"](?:system|exec|passthru|shell_exec|popen|proc_open|phpinfo|eval|file_get_contents|__class__|__globals__)"#,
        ),
        (
            6,
            r#"\bconstructor\s*(?:\.\s*constructor|\[\s*['"]constructor['"]\s*\])\s*\("#,
        ),
        (6, r#"\{\{[^}]{0,200}?\bconstructor\s*(?:\.|\[)"#),
        (7, r"<%=?[^%]{1,200}%>"),
        (
            8,
            r"\{\{[^{}]{0,200}?(?:\(|\[|\|)[^{}]{0,200}\}\}|[$#*]\{[^{}]{0,200}?\([^{}]{0,200}\}",
        ),
        (
            9,
            r"\{\{\s*[=#/^>&!]?\s*[\w.\-]+\s*\}\}|\$\{\s*[\w.]+\s*\}|#\{\s*[\w.]+\s*\}",
        ),
    ];
    let srcs: Vec<(usize, String)> = pats.iter().map(|(r, p)| (*r, format!("(?i){p}"))).collect();
    let refs: Vec<(usize, &str)> = srcs.iter().map(|(r, p)| (*r, p.as_str())).collect();
    Bank::new("ssti", &refs)
});

/// Fragments every pattern needs (delimiters, dunder names, engine-specific words).
static LITS: LazyLock<Literals> = LazyLock::new(|| {
    Literals::new(
        "ssti",
        &[
            "{",
            "__",
            "<%",
            "<#",
            "#set",
            "$class",
            "constructor",
            "_self",
            "memberaccess",
            "member_access",
            "@java.",
            "ognl",
            "#context",
            "freemarker",
            "?new",
            "?api",
            "builtin.",
            "getclass",
            "self::",
            "getfilter",
            "registerundefined",
            "|",
        ],
    )
});

fn has_trigger(s: &str) -> bool {
    LITS.any(s)
}

pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let raw = views.get(View::Raw);
    if !has_trigger(raw) && !raw.contains(['%', '&']) && raw.is_ascii() {
        return;
    }
    let canon = views.get(View::Canonical);
    if !has_trigger(canon) {
        return;
    }
    let mut seen = 0u64;
    CANON.scan(canon, |r, m| {
        push_once(RULES, r, &mut seen, paranoia, t, View::Canonical, m, out)
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
        assert_eq!(CANON.failed, 0);
        assert!(LITS.built());
    }

    #[test]
    fn rule_ids_are_in_block_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!((1900..2000).contains(&r.id));
            assert!(seen.insert(r.id));
        }
    }

    #[test]
    fn attacks() {
        for v in [
            "{{7*7}}",
            "${7*7}",
            "#{7*7}",
            "{{7*'7'}}",
            "<%= 7*7 %>",
            "{{config}}",
            "{{config.items()}}",
            "{{''.__class__.__mro__[1].__subclasses__()}}",
            "{{request.application.__globals__.__builtins__}}",
            "{{ lipsum.__globals__.os.popen('id').read() }}",
            "${T(java.lang.Runtime).getRuntime().exec('id')}",
            "<#assign ex=\"freemarker.template.utility.Execute\"?new()>${ex(\"id\")}",
            "#set($x=$class.inspect(\"java.lang.Runtime\"))",
            "<%= system('id') %>",
            "{% import os %}{{ os.popen('id').read() }}",
            "{{_self.env.registerUndefinedFilterCallback(\"exec\")}}",
            "{{['id']|filter('system')}}",
            "{{constructor.constructor('alert(1)')()}}",
            "%{(#_memberAccess['allowStaticMethodAccess']=true)}",
            "{php}echo `id`;{/php}",
            "&#123;&#123;7*7&#125;&#125;",
            "%7B%7B7*7%7D%7D",
            "\u{FF5B}\u{FF5B}7*7\u{FF5D}\u{FF5D}",
        ] {
            assert!(score(v) >= 5, "{v} -> {:?}", ids(v, 1));
        }
    }

    #[test]
    fn benign() {
        for v in [
            "{{name}}",
            "Hello {{ user.first_name }}",
            "${price}",
            "50% off {today}",
            "def __init__(self):",
            "a_b_c",
            "{\"a\": 1}",
            "5 * 3 = 15",
            "{{ request.path }}",
            "{% import 'macros.html' as m %}",
            "#set($name = 'World')",
            "Today is {$smarty.now}",
        ] {
            assert!(score(v) < 5, "{v} -> {:?}", ids(v, 1));
        }
        assert!(ids("{{name}}", 3).contains(&1909));
    }
}
