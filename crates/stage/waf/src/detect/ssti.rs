//! Server-side template injection (rules 1900–1999).
//!
//! Expressions a template engine would evaluate, by the technique used to get from an
//! expression to code: arithmetic probes (`{{7*7}}`, `${7*7}`), Python object-graph walks
//! (`__class__.__mro__`), engine globals (`{{config}}`, `_self.env`), Java class access from
//! EL/SpEL/OGNL/Freemarker/Velocity, scriptlets (ERB, JSP, Mako, Smarty), template tags that
//! import or include, and the JavaScript constructor escape. A plain `{{name}}` is only noted at
//! paranoia 3.
//!
//! Jinja expressions (`{{ … }}`, `{% … %}`) are matched a second time with their string
//! literals decoded and joined (`unfold`), so that escaped (`'\x5f\x5fclass\x5f\x5f'`) and
//! assembled (`'_''_class_''_'`, `('_'*2)~'class'~('_'*2)`) dunder names read as written out;
//! escapes of `_` and `.` inside an expression (1910), a computed `|attr(…)` name (1911) and
//! `{% print … %}` (1912) are findings by themselves.

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
    rule(
        1910,
        Severity::Critical,
        1,
        "escaped underscore or dot inside a template expression (\\x5f, \\137, \\x2e …)",
    ),
    rule(
        1911,
        Severity::Critical,
        1,
        "attr filter with a computed or escaped attribute name (|attr(…))",
    ),
    rule(
        1912,
        Severity::Critical,
        1,
        "Jinja print tag with an expression ({% print … %})",
    ),
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
        (
            10,
            r"(?:\{[{%]|[$#*%]\{)[^}]{0,400}?\\(?:x0{0,2}5f|x0{0,2}2e|137|056|u005f|u002e|u0000005f|u0000002e)",
        ),
        (12, r#"\{%[-+]?\s*print(?:\s*[(\['"]|\s+[^%\s])"#),
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
    let jinja = canon.contains("{{") || canon.contains("{%");
    if jinja && let Some(m) = computed_attr(canon) {
        push_once(RULES, 11, &mut seen, paranoia, t, View::Canonical, m, out);
    }
    // The expressions again with their string literals decoded and joined: what the engine
    // evaluates (`'\x5f\x5fclass\x5f\x5f'`, `'_''_class_''_'` and `('_'*2)~'class'~('_'*2)`
    // all read `'__class__'`, `'java.la'+'ng.Runtime'` reads `'java.lang.runtime'`).
    let mut scan = |unfolded: &str| {
        CANON.scan(unfolded, |r, m| {
            push_once(RULES, r, &mut seen, paranoia, t, View::Canonical, m, out)
        });
    };
    if jinja && let Some(unfolded) = unfold(canon, Kind::Jinja, Escapes::Python) {
        scan(&unfolded);
    }
    if EXPR_OPENERS.iter().any(|o| canon.contains(o)) {
        // Each way an engine may read a backslash, where the value has one.
        let mut previous: Option<String> = None;
        for esc in [Escapes::Python, Escapes::FreeMarker, Escapes::None] {
            let read_differently = match esc {
                Escapes::Python => true,
                Escapes::FreeMarker => canon.contains("\\x"),
                Escapes::None => canon.contains('\\'),
            };
            if !read_differently {
                continue;
            }
            if let Some(unfolded) = unfold(canon, Kind::Expr, esc)
                && previous.as_deref() != Some(unfolded.as_str())
            {
                scan(&unfolded);
                previous = Some(unfolded);
            }
        }
    }
}

/// What opens an expression of the other engines: FreeMarker, EL, Spring EL and Thymeleaf
/// (`${`, `#{`, `*{`), OGNL (`%{`), Ruby interpolation (`#{`), Mako and JavaScript template
/// literals (`${`).
const EXPR_OPENERS: [&str; 4] = ["${", "#{", "*{", "%{"];

/// Which expressions an [`unfold`] pass reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Jinja's `{{ … }}` and `{% … %}`, to `}}` and `%}` outside string literals.
    Jinja,
    /// [`EXPR_OPENERS`] expressions, to the `}` that closes their `{` (braces inside counted,
    /// string literals skipped).
    Expr,
}

/// How an engine reads a backslash in a string literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escapes {
    /// As Python (Jinja, Mako), JavaScript, Ruby, Java and OGNL do: `\xHH` (two hex digits),
    /// octal, `\uXXXX`, `\UXXXXXXXX`, the one-letter escapes, `\'` and `\"`.
    Python,
    /// As FreeMarker does: the same, but `\x` takes one to four hex digits (`\x0066` is `f`).
    FreeMarker,
    /// As Spring EL does: no escapes at all, a backslash is a character (`'\'` is a string)
    /// and a quote is written twice (`'it''s'`).
    None,
}

/// The template expressions of `s` of one kind: for [`Kind::Jinja`] every `{{ … }}` and
/// `{% … %}`, for [`Kind::Expr`] every `${ … }`, `#{ … }`, `*{ … }` and `%{ … }` (an
/// unterminated one runs to the end), as (start of its content, end of its content, end of
/// its closing delimiter). String literals are skipped as `esc` reads them.
fn spans(s: &str, kind: Kind, esc: Escapes) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let b = s.as_bytes();
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let mut i = at;
        loop {
            let (&c0, &c1) = (b.get(i)?, b.get(i + 1)?);
            let start = i + 2;
            let end = match kind {
                Kind::Jinja if c0 == b'{' && c1 == b'{' => content_end(b, start, b'}'),
                Kind::Jinja if c0 == b'{' && c1 == b'%' => content_end(b, start, b'%'),
                Kind::Expr if c1 == b'{' && matches!(c0, b'$' | b'#' | b'*' | b'%') => {
                    expr_end(b, start, esc)
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            let after = match kind {
                _ if end >= b.len() => end,
                Kind::Jinja => end + 2,
                Kind::Expr => end + 1,
            };
            at = after;
            return Some((start, end, after));
        }
    })
}

/// Where the content of a Jinja expression starting at `from` ends: at `close` followed by `}`
/// outside string literals, or at the end of `b`.
fn content_end(b: &[u8], from: usize, close: u8) -> usize {
    let mut i = from;
    let mut quote = None;
    while let Some(&c) = b.get(i) {
        match quote {
            Some(q) => {
                if c == b'\\' {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if c == close && b.get(i + 1) == Some(&b'}') => return i,
            None => {}
        }
        i += 1;
    }
    b.len()
}

/// Where the content of an [`Kind::Expr`] expression starting at `from` ends: at the `}`
/// matching its opening brace, outside string literals (a backslash escaping the next
/// character unless `esc` is [`Escapes::None`]), or at the end of `b`.
fn expr_end(b: &[u8], from: usize, esc: Escapes) -> usize {
    let mut i = from;
    let mut quote = None;
    let mut depth = 0usize;
    while let Some(&c) = b.get(i) {
        match quote {
            Some(q) => {
                if c == b'\\' && esc != Escapes::None {
                    i += 1;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if c == b'{' => depth += 1,
            None if c == b'}' => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return i,
            },
            None => {}
        }
        i += 1;
    }
    b.len()
}

/// The first `|attr(` inside a template expression whose argument is not a plain identifier
/// in quotes (`|attr('name')`): a name built by an expression or spelled with escapes.
fn computed_attr(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    for (start, end, _) in spans(s, Kind::Jinja, Escapes::Python) {
        let inner = b.get(start..end)?;
        let mut from = 0usize;
        while let Some(p) = find(inner.get(from..)?, b"attr") {
            let at = from + p;
            from = at + 4;
            let before = inner.get(..at)?.trim_ascii_end();
            if before.last() != Some(&b'|') {
                continue;
            }
            let Some(arg) = inner.get(at + 4..).map(<[u8]>::trim_ascii_start) else {
                continue;
            };
            let Some(arg) = arg.strip_prefix(b"(") else {
                continue;
            };
            if !plain_name_argument(arg) {
                let whole = s.get(start + at..end)?;
                return Some(whole.get(..whole.len().min(64)).unwrap_or(whole));
            }
        }
    }
    None
}

/// `'name'` or `"name"` (letters, digits, `_`; not starting with a digit) and `)`.
fn plain_name_argument(arg: &[u8]) -> bool {
    let arg = arg.trim_ascii_start();
    let Some((&q, rest)) = arg.split_first() else {
        return false;
    };
    if q != b'\'' && q != b'"' {
        return false;
    }
    let n = rest
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count();
    if n == 0 || rest.first().is_some_and(u8::is_ascii_digit) {
        return false;
    }
    let Some(rest) = rest.get(n..) else {
        return false;
    };
    rest.first() == Some(&q)
        && rest
            .get(1..)
            .map(<[u8]>::trim_ascii_start)
            .and_then(<[u8]>::first)
            == Some(&b')')
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A token of a template expression.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A string literal, its escapes decoded.
    Str(String),
    Num(u64),
    /// Any other character (whitespace included).
    Ch(char),
}

/// Longest string a `'s' * n` repetition is expanded to.
const MAX_REPEAT: usize = 256;

/// `s` with the string literals of its template expressions of one kind decoded as `esc`
/// reads them (`\xHH`, `\ooo`, `\uXXXX`, `\UXXXXXXXX`, `\n` …, as Jinja's Python-style
/// literals), and adjacent, `~`-, `+`- or `+=`-concatenated, `.concat(…)`-joined,
/// parenthesised and `*`-repeated literals folded into one; `None` when that changes nothing.
fn unfold(s: &str, kind: Kind, esc: Escapes) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut last = 0usize;
    for (start, end, after) in spans(s, kind, esc) {
        let inner = s.get(start..end)?;
        if !inner.contains(['\'', '"']) {
            continue;
        }
        let (mut toks, decoded) = tokenize(inner, esc);
        let mut folded = false;
        for _ in 0..8 {
            let a = fold_groups(&mut toks);
            let b = fold_concat(&mut toks);
            let c = fold_concat_calls(&mut toks);
            folded |= a || b || c;
            if !(a || b || c) {
                break;
            }
        }
        if !(decoded || folded) {
            continue;
        }
        changed = true;
        out.push_str(s.get(last..start)?);
        for t in &toks {
            match t {
                Tok::Str(v) => {
                    out.push('\'');
                    out.push_str(&v.to_lowercase());
                    out.push('\'');
                }
                Tok::Num(n) => out.push_str(&n.to_string()),
                Tok::Ch(c) => out.push(*c),
            }
        }
        out.push_str(s.get(end..after)?);
        last = after;
    }
    if !changed {
        return None;
    }
    out.push_str(s.get(last..)?);
    Some(out)
}

/// The tokens of an expression, and whether a literal had an escape decoded.
fn tokenize(s: &str, esc: Escapes) -> (Vec<Tok>, bool) {
    let mut toks = Vec::new();
    let mut decoded = false;
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\'' | '"' => {
                let mut v = String::new();
                while let Some(d) = it.next() {
                    if d == c {
                        break;
                    }
                    if d != '\\' || esc == Escapes::None {
                        v.push(d);
                        continue;
                    }
                    decoded = true;
                    unescape(&mut it, &mut v, esc);
                }
                toks.push(Tok::Str(v));
            }
            '0'..='9' => {
                let mut n = u64::from(c as u8 - b'0');
                while let Some(d) = it.peek().and_then(|d| d.to_digit(10)) {
                    n = n.saturating_mul(10).saturating_add(u64::from(d));
                    it.next();
                }
                toks.push(Tok::Num(n));
            }
            c => toks.push(Tok::Ch(c)),
        }
    }
    (toks, decoded)
}

/// One escape after its backslash, as Python reads string literals: `\xHH`, `\o` to `\ooo`,
/// `\uXXXX`, `\UXXXXXXXX` (lowercased by the canonical view: `\u` and eight hex digits naming
/// a code point), the one-letter escapes; anything else keeps its backslash. FreeMarker's
/// `\x` takes one to four hex digits.
fn unescape(it: &mut std::iter::Peekable<std::str::Chars<'_>>, v: &mut String, esc: Escapes) {
    let Some(&e) = it.peek() else {
        v.push('\\');
        return;
    };
    let hex = |it: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize| -> Option<u32> {
        let ahead: String = it.clone().take(n).collect();
        if ahead.len() != n || !ahead.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(&ahead, 16).ok()
    };
    let mut take = |it: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize, cp: u32| {
        for _ in 0..n {
            it.next();
        }
        v.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
    };
    match e {
        'x' if esc == Escapes::FreeMarker => {
            it.next();
            let n = it
                .clone()
                .take(4)
                .take_while(char::is_ascii_hexdigit)
                .count();
            match hex(it, n).filter(|_| n > 0) {
                Some(cp) => take(it, n, cp),
                None => v.push_str("\\x"),
            }
        }
        'x' => {
            it.next();
            match hex(it, 2) {
                Some(cp) => take(it, 2, cp),
                None => v.push_str("\\x"),
            }
        }
        'u' => {
            it.next();
            match (hex(it, 8), hex(it, 4)) {
                (Some(cp), _) if cp <= 0x10ffff => take(it, 8, cp),
                (_, Some(cp)) => take(it, 4, cp),
                _ => v.push_str("\\u"),
            }
        }
        '0'..='7' => {
            let digits: String = it
                .clone()
                .take(3)
                .take_while(|d| ('0'..='7').contains(d))
                .collect();
            let cp = u32::from_str_radix(&digits, 8).unwrap_or(0xfffd);
            take(it, digits.len(), cp);
        }
        _ => {
            it.next();
            match e {
                'n' => v.push('\n'),
                't' => v.push('\t'),
                'r' => v.push('\r'),
                '\\' | '\'' | '"' => v.push(e),
                '\n' => {}
                _ => {
                    v.push('\\');
                    v.push(e);
                }
            }
        }
    }
}

/// The index of the first token before `i` that is not whitespace.
fn prev_solid(toks: &[Tok], i: usize) -> Option<usize> {
    (0..i)
        .rev()
        .find(|&j| !matches!(toks.get(j), Some(Tok::Ch(c)) if c.is_whitespace()))
}

/// `'s' * n`, `n * 's'` and `( 's' )` (a parenthesis that is not a call's) folded into a
/// literal, in one pass over a stack; whether anything was.
fn fold_groups(toks: &mut Vec<Tok>) -> bool {
    let mut changed = false;
    let mut st: Vec<Tok> = Vec::with_capacity(toks.len());
    for t in toks.drain(..) {
        st.push(t);
        loop {
            let n = st.len();
            let Some(a) = n.checked_sub(1) else { break };
            let Some(op) = prev_solid(&st, a) else { break };
            let Some(l) = prev_solid(&st, op) else { break };
            let folded = match (st.get(l), st.get(op), st.get(a)) {
                (Some(Tok::Str(v)), Some(Tok::Ch('*')), Some(Tok::Num(k)))
                | (Some(Tok::Num(k)), Some(Tok::Ch('*')), Some(Tok::Str(v))) => usize::try_from(*k)
                    .ok()
                    .filter(|&k| v.len().saturating_mul(k) <= MAX_REPEAT)
                    .map(|k| v.repeat(k)),
                (Some(Tok::Ch('(')), Some(Tok::Str(v)), Some(Tok::Ch(')'))) => {
                    let call = prev_solid(&st, l).and_then(|j| st.get(j)).is_some_and(|p| {
                        matches!(p, Tok::Str(_) | Tok::Num(_))
                            || matches!(p, Tok::Ch(c) if c.is_alphanumeric() || matches!(c, '_' | ')' | ']'))
                    });
                    (!call).then(|| v.clone())
                }
                _ => None,
            };
            let Some(v) = folded else { break };
            st.truncate(l);
            st.push(Tok::Str(v));
            changed = true;
        }
    }
    *toks = st;
    changed
}

/// Adjacent literals (`'a' 'b'`) and literals joined by `~` or `+` folded into one; whether
/// anything was.
fn fold_concat(toks: &mut Vec<Tok>) -> bool {
    let mut changed = false;
    let mut st: Vec<Tok> = Vec::with_capacity(toks.len());
    for t in toks.drain(..) {
        let Tok::Str(v) = t else {
            st.push(t);
            continue;
        };
        let joined = prev_solid(&st, st.len()).and_then(|p| match st.get(p) {
            Some(Tok::Str(_)) => Some(p),
            Some(Tok::Ch('~' | '+')) => {
                prev_solid(&st, p).filter(|&l| matches!(st.get(l), Some(Tok::Str(_))))
            }
            // EL's string concatenation, `'a' += 'b'`.
            Some(Tok::Ch('=')) => p
                .checked_sub(1)
                .filter(|&q| st.get(q) == Some(&Tok::Ch('+')))
                .and_then(|q| prev_solid(&st, q))
                .filter(|&l| matches!(st.get(l), Some(Tok::Str(_)))),
            _ => None,
        });
        match joined.and_then(|l| match st.get(l) {
            Some(Tok::Str(u)) if u.len() + v.len() <= MAX_REPEAT * 4 => Some((l, u.clone())),
            _ => None,
        }) {
            Some((l, mut u)) => {
                u.push_str(&v);
                st.truncate(l);
                st.push(Tok::Str(u));
                changed = true;
            }
            None => st.push(Tok::Str(v)),
        }
    }
    *toks = st;
    changed
}

/// `'a'.concat('b')` (Java, JavaScript, Spring EL, EL) folded into `'ab'`; whether anything was.
fn fold_concat_calls(toks: &mut Vec<Tok>) -> bool {
    let mut changed = false;
    let mut st: Vec<Tok> = Vec::with_capacity(toks.len());
    for t in toks.drain(..) {
        let close = t == Tok::Ch(')');
        st.push(t);
        if !close {
            continue;
        }
        // Back from the `)`: the argument, `(`, `concat`, `.`, the receiver.
        let Some(arg) = prev_solid(&st, st.len() - 1) else {
            continue;
        };
        let Some(open) = prev_solid(&st, arg) else {
            continue;
        };
        let Some(name_end) = prev_solid(&st, open) else {
            continue;
        };
        let Some(name_start) = name_end.checked_sub(5) else {
            continue;
        };
        let named = st.get(name_start..=name_end).is_some_and(|w| {
            w.iter()
                .zip("concat".chars())
                .all(|(t, c)| *t == Tok::Ch(c))
        });
        let Some(dot) = prev_solid(&st, name_start).filter(|_| named) else {
            continue;
        };
        let Some(recv) = prev_solid(&st, dot) else {
            continue;
        };
        let joined = match (st.get(recv), st.get(dot), st.get(open), st.get(arg)) {
            (Some(Tok::Str(u)), Some(Tok::Ch('.')), Some(Tok::Ch('(')), Some(Tok::Str(v)))
                if u.len() + v.len() <= MAX_REPEAT * 4 =>
            {
                let mut u = u.clone();
                u.push_str(v);
                u
            }
            _ => continue,
        };
        st.truncate(recv);
        st.push(Tok::Str(joined));
        changed = true;
    }
    *toks = st;
    changed
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

    fn unfold_jinja(s: &str) -> Option<String> {
        unfold(s, Kind::Jinja, Escapes::Python)
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

    /// Jinja2 payloads that spell the dunder names with string escapes, split literals or
    /// computed `attr` names, or evaluate through `{% print %}`.
    #[test]
    fn obfuscated_jinja_blocks_at_paranoia_1() {
        for (v, rule) in [
            (
                r"{{lipsum|attr('\x5f\x5fglobals\x5f\x5f')|attr('\x5f\x5fgetitem\x5f\x5f')('\x6fs')|attr('\x70open')('\x69d')|attr('read')()}}",
                1900,
            ),
            (
                r"{{()|attr('\x5f\x5fclass\x5f\x5f')|attr('\x5f\x5fbase\x5f\x5f')|attr('\x5f\x5fsubclasses\x5f\x5f')()}}",
                1900,
            ),
            ("{{lipsum['_''_globals_''_']}}", 1900),
            ("{{x|attr(('_'*2)~'class'~('_'*2))}}", 1900),
            ("{{x|attr(('_'*2)~'class'~('_'*2))}}", 1911),
            ("{% print 7*7 %}", 1912),
            (r"{%print(lipsum|attr('\x5f\x5fglobals\x5f\x5f'))%}", 1912),
            (r"{%print(lipsum|attr('\x5f\x5fglobals\x5f\x5f'))%}", 1900),
            // Octal, \u and \U escapes, and `+` joins.
            (r"{{ ''|attr('\137\137class\137\137') }}", 1900),
            (r"{{ ''|attr('\137\137class\137\137') }}", 1910),
            (
                r"{{ request|attr('\U0000005f\U0000005fclass\U0000005f\U0000005f') }}",
                1900,
            ),
            ("{{ ''['__cla'+'ss__'] }}", 1900),
            ("{{ ''[\"__cl\" ~ \"ass__\"] }}", 1900),
            (r"{{ self['\x5f_init\x5f_'] }}", 1910),
            (
                r"{{ cycler.__init__.__globals__['o''s'].popen('id').read() }}",
                1900,
            ),
            (r"{{ lipsum|attr('__glob'~'als__') }}", 1911),
            (r"{{ x|attr(request.args.a) }}", 1911),
            (r"{{ x | attr ( '\x70open' ) }}", 1911),
            (r"{{ config['\x5f\x5fclass\x5f\x5f'] }}", 1902),
            (
                r"{% set x = lipsum|attr('\x5f\x5fglobals\x5f\x5f') %}",
                1900,
            ),
            ("{%- print config -%}", 1912),
            ("{% print(7*7) %}", 1912),
            ("{%print'x'%}", 1912),
            // Percent-encoded.
            ("%7B%7Blipsum%5B'_''_globals_''_'%5D%7D%7D", 1900),
        ] {
            let got = ids(v, 1);
            assert!(got.contains(&rule), "{v}: {rule} not in {got:?}");
            assert!(score(v) >= 5, "{v} -> {got:?}");
        }
    }

    /// Expressions of the other engines (`${ }`, `#{ }`, `*{ }`, `%{ }`) whose class,
    /// attribute or context names are spelled with escapes or split into joined literals: the
    /// second pass reads them as written out.
    #[test]
    fn obfuscated_el_blocks_at_paranoia_1() {
        for (v, rule) in [
            // Spring EL / EL / Thymeleaf: `+`, EL's `+=` and `.concat(…)` joins.
            (
                "${''.class.getClassLoader().loadClass('java.la'+'ng.Runtime')}",
                1903,
            ),
            (
                "*{''.class.getClassLoader().loadClass(\"java.l\"+\"ang.Runt\"+\"ime\")}",
                1903,
            ),
            (
                "#{''.class.getClassLoader().loadClass('java.la' += 'ng.Runtime')}",
                1903,
            ),
            (
                "${''.class.getClassLoader().loadClass('java.la'.concat('ng.Runtime'))}",
                1903,
            ),
            // Escapes as Java, JavaScript, Python and Ruby read them.
            (
                r"${''.class.getClassLoader().loadClass('\x6aava\x2elang.Runtime')}",
                1903,
            ),
            (
                r"${''.class.getClassLoader().loadClass('\x6aava\x2elang.Runtime')}",
                1910,
            ),
            // FreeMarker's `\x` takes up to four hex digits.
            (r#"${"j\x0061va.lang.Runtime"}"#, 1903),
            // Spring EL has no escapes: `'\'` is a string, and the literals after it join.
            (
                r"${'\'.length()+''.class.getClassLoader().loadClass('java.la'+'ng.Runtime')}",
                1903,
            ),
            // OGNL.
            (
                "%{#context['xwo'+'rk.MethodAccessor.denyMethodExecution']=false}",
                1903,
            ),
            // Python (Mako) and Ruby expressions reaching dunder names.
            ("${x['__cla'+'ss__']}", 1900),
            ("#{''['__cla''ss__']}", 1900),
            (r"${''['\x5f\x5fclass\x5f\x5f']}", 1900),
            (r"${''['\x5f\x5fclass\x5f\x5f']}", 1910),
            ("%7B%7D${x['__glo'%2B'bals__']}", 1900),
        ] {
            let got = ids(v, 1);
            assert!(got.contains(&rule), "{v}: {rule} not in {got:?}");
            assert!(score(v) >= 5, "{v} -> {got:?}");
        }
    }

    #[test]
    fn el_lookalikes_do_not_block() {
        for v in [
            "${user.name}",
            "${'Hello' + ' ' + name}",
            "#{first} #{last}, #{'a' 'b'}",
            "${'java' + 'script'} and ${'a'.concat('b')}",
            "${ {'k': 'v'}['k'] + '}' } ${'x'",
            "Price: ${'$' + amount} (${'it''s'})",
            "%{name}s and *{field} and ${'\\'}",
            "Hello ${name}, your order ${'#' + id} ships ${'to' + 'day'}",
            "`${a}.${b}` is ${'_' * 2} wide",
            "${'__' + 'init'}",
        ] {
            assert!(score(v) < 5, "{v} -> {:?}", ids(v, 1));
        }
    }

    #[test]
    fn template_lookalikes_do_not_block() {
        for v in [
            "{{ user.name }}",
            "{{title}}",
            "{{#each items}}{{this}}{{/each}}",
            "{% if x %}yes{% endif %}",
            "{% if user.is_admin %}admin{% else %}guest{% endif %}",
            "{% for item in items %}{{ item.title|upper }}{% endfor %}",
            "{{ 'Hello' ~ ' ' ~ name }}",
            "{{ \"a\" \"b\" }}",
            "{{ '\\n'.join(lines) }}",
            "{{ user|attr('name') }}",
            "{{ user | attr(\"first_name\") }}",
            "{% printer %}",
            "{% print %}",
            "Use `{{ }}` for expressions and `{% %}` for statements.",
            "a {b} c {{d}} e",
            "C:\\x5f\\dir and {not a template}",
            "{ \"path\": \"C:\\\\x5f\" }",
            "Sprint planning {% done %}",
            "## Title\n\nSome *markdown* with {braces} and `code {x}`.",
            "{{ price * 2 }}",
            "{{ '-' * 20 }}",
            "{{ 'x' * 99999999999 }}",
            "{{ '",
            "{{ '\\",
            "{%",
            "{{ ('a') }} {{ f('b') }} {{ ('_'*2) }}",
        ] {
            assert!(score(v) < 5, "{v} -> {:?}", ids(v, 1));
        }
    }

    #[test]
    fn unfolding() {
        assert_eq!(
            unfold_jinja(r"a {{ x|attr(('_'*2)~'cl\x41ss'~('_'*2)) }} b {{'o''s'}}").as_deref(),
            Some("a {{ x|attr('__class__') }} b {{'os'}}")
        );
        assert_eq!(unfold_jinja("{{ user.name }}"), None);
        assert_eq!(unfold_jinja("{{ 'plain' }}"), None);
        assert_eq!(
            unfold_jinja(r"{{ '\x' ~ '\u12' }}").as_deref(),
            Some(r"{{ '\x\u12' }}")
        );
        assert_eq!(
            unfold_jinja("{{ 'a' * 3 + 'b' }}").as_deref(),
            Some("{{ 'aaab' }}")
        );
        assert_eq!(unfold_jinja("{{ f('a') }}"), None);
        assert_eq!(
            unfold_jinja("{% '}}' %}x{{'a'~'b'"),
            Some("{% '}}' %}x{{'ab'".to_string())
        );
        // The other engines' expressions, each way a backslash may be read.
        let expr = |s: &str, esc: Escapes| unfold(s, Kind::Expr, esc);
        assert_eq!(
            expr(
                "a ${'java.la'+'ng'} #{'a' += 'b'} *{'c'.concat('d')}",
                Escapes::Python
            )
            .as_deref(),
            Some("a ${'java.lang'} #{'ab'} *{'cd'}")
        );
        assert_eq!(
            expr(r"${ {'}': 'a'+'b'} } {{'a'~'b'}}", Escapes::Python).as_deref(),
            Some(r"${ {'}': 'ab'} } {{'a'~'b'}}")
        );
        assert_eq!(expr("{{'a'~'b'}}", Escapes::Python), None);
        assert_eq!(
            expr(r"${'\x0066e'}", Escapes::Python).as_deref(),
            Some("${'\u{0}66e'}")
        );
        assert_eq!(
            expr(r"${'\x0066e'}", Escapes::FreeMarker).as_deref(),
            Some("${'fe'}")
        );
        assert_eq!(
            expr(r"${'\'+'a'+'b'}", Escapes::None).as_deref(),
            Some(r"${'\ab'}")
        );
        assert_eq!(
            expr(r"${'it''s'}", Escapes::None).as_deref(),
            Some("${'its'}")
        );
        assert_eq!(
            expr("${x.concat('a')} ${'a'.concat(b)}", Escapes::Python),
            None
        );
        assert_eq!(computed_attr("{{ x|attr('ok') }}"), None);
        assert!(computed_attr("{{ x|attr('o'~'k') }}").is_some());
        assert!(computed_attr("x|attr(y)").is_none());
    }
}
