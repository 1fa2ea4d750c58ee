//! The WAF's shared vocabulary: rules, attack classes, severities, inspection targets and
//! findings. Every detector speaks it; the engine scores it; audit records it.

use std::borrow::Cow;
use std::fmt;

use crate::transform::View;

/// A rule's stable id. Built-in rules use 1000–99999 (one block of 100 per class, see
/// `docs/waf.md`); custom rules from the configuration use 100000 and above.
pub type RuleId = u32;

/// How bad a finding is. Its anomaly score is the CRS one: critical 5, error 4, warning 3,
/// notice 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Notice,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub const fn score(self) -> u32 {
        match self {
            Severity::Critical => 5,
            Severity::Error => 4,
            Severity::Warning => 3,
            Severity::Notice => 2,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Notice => "notice",
        }
    }
}

/// The attack class of a rule (for audit, metrics and the corpus report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Malformed or uninspectable requests: a body that does not parse as its content type,
    /// nesting or parameter counts over the limits.
    Protocol,
    Sqli,
    Xss,
    CommandInjection,
    /// Path traversal and local file inclusion.
    Traversal,
    /// Remote file inclusion and server-side request forgery.
    Ssrf,
    Xxe,
    Nosql,
    Ldap,
    /// Server-side template injection.
    Ssti,
    /// `${jndi:…}` and other lookup-expression injection (Log4Shell class).
    Log4Shell,
    /// CR/LF in values that end up in headers (response splitting, header injection).
    Crlf,
    /// Scanner and attack-tool signatures.
    Scanner,
    /// HTTP parameter pollution.
    ParameterPollution,
    /// Sensitive fields a client must not set (`role`, `is_admin` …).
    MassAssignment,
    /// GraphQL depth, aliases, complexity and batch size; JSON batch size; pagination.
    ApiAbuse,
    /// A rule from the configuration.
    Custom,
}

impl Class {
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Protocol => "protocol",
            Class::Sqli => "sqli",
            Class::Xss => "xss",
            Class::CommandInjection => "command-injection",
            Class::Traversal => "traversal",
            Class::Ssrf => "ssrf",
            Class::Xxe => "xxe",
            Class::Nosql => "nosql",
            Class::Ldap => "ldap",
            Class::Ssti => "ssti",
            Class::Log4Shell => "log4shell",
            Class::Crlf => "crlf",
            Class::Scanner => "scanner",
            Class::ParameterPollution => "parameter-pollution",
            Class::MassAssignment => "mass-assignment",
            Class::ApiAbuse => "api-abuse",
            Class::Custom => "custom",
        }
    }
}

/// A built-in rule.
#[derive(Debug)]
pub struct Rule {
    pub id: RuleId,
    pub class: Class,
    pub severity: Severity,
    /// The lowest paranoia level (1–4) at which the rule runs.
    pub paranoia: u8,
    /// What the rule detects, as a technique (`SQL tautology`, `event handler attribute`).
    pub description: &'static str,
}

/// Where in the request a value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// The normalised path.
    Path,
    /// A query parameter (name = parameter name).
    Query,
    /// A header (name = lowercase header name).
    Header,
    /// One cookie (name = cookie name).
    Cookie,
    /// A body field: a JSON path (`$.items[0].name`), a form or multipart field name, an XML
    /// path (`/order/item/@id`), or empty for a body inspected whole.
    Body,
}

impl Location {
    pub const fn as_str(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
            Location::Cookie => "cookie",
            Location::Body => "body",
        }
    }
}

/// Which part of a named item the value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Value,
    /// The item's own name (a query parameter name, a JSON key, a form field name).
    Name,
    /// A multipart file name.
    Filename,
}

/// One value to inspect, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub location: Location,
    /// The item's name (see [`Location`]); empty for the path and whole bodies.
    pub name: Cow<'a, str>,
    pub part: Part,
    /// The value as the request carried it after the one decoding its syntax demands (query
    /// and form values percent-decoded once, JSON strings unescaped); detectors decode further
    /// through [`crate::transform::Views`].
    pub value: Cow<'a, str>,
    /// Made from text other targets hold too (an XML element's joined text, a `;` piece of a
    /// query pair): a finding on it is not scored where a finding of the same rule on such
    /// other text is (see [`Finding::derived`]).
    pub derived: bool,
}

impl<'a> Target<'a> {
    pub fn new(
        location: Location,
        name: impl Into<Cow<'a, str>>,
        part: Part,
        value: impl Into<Cow<'a, str>>,
    ) -> Self {
        Target {
            location,
            name: name.into(),
            part,
            value: value.into(),
            derived: false,
        }
    }

    /// A target made from text other targets hold too ([`Target::derived`]).
    pub fn new_derived(
        location: Location,
        name: impl Into<Cow<'a, str>>,
        part: Part,
        value: impl Into<Cow<'a, str>>,
    ) -> Self {
        Target {
            derived: true,
            ..Target::new(location, name, part, value)
        }
    }

    /// The address exclusions use: `query:q`, `header:referer`, `body:$.description`, `path`.
    pub fn address(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.location.as_str())?;
        if !self.name.is_empty() {
            write!(f, ":{}", self.name)?;
        }
        match self.part {
            Part::Value => Ok(()),
            Part::Name => f.write_str(" (name)"),
            Part::Filename => f.write_str(" (filename)"),
        }
    }
}

/// One rule that matched one target: what the audit event shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: RuleId,
    pub class: Class,
    pub severity: Severity,
    /// Set by custom rules with `action: block`: blocks whatever the score.
    pub blocks: bool,
    /// The rule's description (or the custom rule's message).
    pub message: Cow<'static, str>,
    /// `query:id`, `body:$.items[0].name`, …
    pub target: String,
    /// Where to match exclusions: `location:name` without the part suffix.
    pub exclusion_key: String,
    /// The transformation chain the matching value went through.
    pub transforms: &'static str,
    /// A short, masked excerpt of what matched (never the whole value).
    pub snippet: String,
    /// Found on a derived target ([`Target::derived`]): scored only when no finding of the same
    /// rule, on a target that is not derived and not excluded, is in the same location — the
    /// same bytes are not scored twice, while what only the derived text shows counts.
    pub derived: bool,
}

impl Finding {
    /// A finding of a built-in rule on a target, `matched` being the part of the
    /// transformed value that matched (or the whole transformed value).
    pub fn new(rule: &'static Rule, target: &Target<'_>, view: View, matched: &str) -> Finding {
        Finding {
            rule: rule.id,
            class: rule.class,
            severity: rule.severity,
            blocks: false,
            message: Cow::Borrowed(rule.description),
            target: target.to_string(),
            exclusion_key: exclusion_key(target),
            transforms: view.chain(),
            snippet: evidence(target, matched),
            derived: target.derived,
        }
    }
}

/// What a finding on `t` quotes of `matched` (the part of a view of its value that matched, or
/// a detector's note about it): the one place every detector's snippet is made, so that what
/// reaches the audit log follows the same rules whatever found it.
/// * A value that [`holds_secret`]: only its length ([`redacted`]).
/// * A value that is a URL ([`UrlValue`]) with a query, a fragment or a userinfo: `matched`
///   only when it is text of the URL without them (the scheme, host and path); otherwise that
///   text, its query or fragment replaced by its length — a `Referer` carries the query of the
///   page before (an OAuth `code`, a reset token), which the audit never records.
/// * Anything else: [`snippet`].
pub fn evidence(t: &Target<'_>, matched: &str) -> String {
    if holds_secret(t) {
        return redacted(matched);
    }
    match UrlValue::of(t) {
        Some(url) if !url.shows(matched) => url.shown(),
        _ => snippet(matched),
    }
}

/// A value that is a URL, split into what a snippet may quote and what it may not. A value
/// is a URL when it is the value of a `Referer` or `Origin` header (whatever it looks like), or
/// when it starts (after blanks and a `<`, as in `Link`) with `scheme://`, `//` or `/` — in any
/// header (`X-Forwarded-Uri`, `Destination`, `Content-Location` …), query parameter or body
/// field (`return_to`, `redirect_uri`).
#[derive(Debug, PartialEq, Eq)]
pub struct UrlValue {
    /// The URL up to its query or fragment, a userinfo replaced by `[redacted]`.
    base: String,
    /// The `?` or `#` that starts what is hidden, and how many characters follow it.
    hidden: Option<(char, usize)>,
}

impl UrlValue {
    /// `None` when `t` is not a URL, or is one with nothing to hide.
    pub fn of(t: &Target<'_>) -> Option<UrlValue> {
        if t.part != Part::Value || t.location == Location::Path {
            // The path target is the normalised path: its query is never part of it.
            return None;
        }
        let v: &str = &t.value;
        let by_name = t.location == Location::Header && matches!(&*t.name, "referer" | "origin");
        let rest = v.trim_start().trim_start_matches('<');
        let authority_at = authority_start(rest);
        if !(by_name || authority_at.is_some() || rest.starts_with('/')) {
            return None;
        }
        let cut = v.find(['?', '#']);
        let head = v.get(..cut.unwrap_or(v.len())).unwrap_or_default();
        let hidden = cut.and_then(|at| {
            let delim = v.get(at..)?.chars().next()?;
            Some((delim, v.get(at + 1..)?.chars().count()))
        });
        // A userinfo: what comes between `//` and the last `@` before the path.
        let lead = v.len() - rest.len();
        let userinfo = authority_at.and_then(|a| {
            let from = lead + a;
            let auth = head.get(from..)?;
            let auth = auth.get(..auth.find('/').unwrap_or(auth.len()))?;
            auth.rfind('@').map(|at| (from, from + at))
        });
        // Where the path starts: after the authority, if any.
        let path_at = match authority_at {
            Some(a) => {
                let from = lead + a;
                from + head.get(from..)?.find('/').unwrap_or(head.len() - from)
            }
            None => 0,
        };
        let params = head.get(path_at..).is_some_and(|p| {
            p.split('/')
                .any(|seg| seg.split_once(';').is_some_and(|(_, v)| !v.is_empty()))
        });
        if hidden.is_none() && userinfo.is_none() && !params {
            return None;
        }
        let mut base = match userinfo {
            Some((from, to)) => format!(
                "{}[redacted]{}",
                head.get(..from).unwrap_or_default(),
                head.get(to..).unwrap_or_default()
            ),
            None => head.to_string(),
        };
        if params {
            // A path segment's `;` parameters (`;jsessionid=…`): the segment's name stays.
            let at = base.len() - (head.len() - path_at);
            let path = base.split_off(at);
            for (i, seg) in path.split('/').enumerate() {
                if i > 0 {
                    base.push('/');
                }
                match seg.split_once(';') {
                    Some((name, p)) if !p.is_empty() => {
                        base.push_str(name);
                        base.push_str(";…");
                    }
                    _ => base.push_str(seg),
                }
            }
        }
        Some(UrlValue { base, hidden })
    }

    /// Whether `matched` may be quoted: it is text of the URL's quotable part (ASCII case
    /// ignored, as views lowercase). Text a decoding view made (`%2e%2e` read as `..`) is not
    /// found there and is not quoted either: failing closed, [`UrlValue::shown`] stands for it.
    fn shows(&self, matched: &str) -> bool {
        self.base
            .to_ascii_lowercase()
            .contains(&matched.to_ascii_lowercase())
    }

    /// The quotable part as a [`snippet`], followed by the length of what is hidden:
    /// `https://app.example/cb?[redacted: 40 characters]`.
    pub fn shown(&self) -> String {
        let mut out = snippet(&self.base);
        if let Some((delim, n)) = self.hidden {
            out.push(delim);
            out.push_str(&redacted_chars(n));
        }
        out
    }
}

/// Where the authority of a URL starting `s` begins: after `scheme://` (a letter, then
/// letters, digits, `+`, `-` or `.`) or a leading `//`. `None` for anything else.
fn authority_start(s: &str) -> Option<usize> {
    if s.starts_with("//") {
        return Some(2);
    }
    let scheme = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        .count();
    let starts_with_letter = s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic());
    (starts_with_letter && s.get(scheme..)?.starts_with("://")).then_some(scheme + 3)
}

/// Whether a target carries a secret: every cookie value (session identifiers under any name:
/// `_gh_sess`, `li_at`, `.AspNetCore.Cookies`), and a value whose name says so (`password`,
/// `client_secret`, `refresh_token`, `api_key`, `client_assertion`, `SAMLResponse` …): its
/// snippets are redacted, so an attack typed into a password field does not put the password
/// into the audit log.
pub fn holds_secret(t: &Target<'_>) -> bool {
    if t.part != Part::Value {
        return false;
    }
    if t.location == Location::Cookie {
        return true;
    }
    let name = t.name.to_ascii_lowercase();
    const MARKERS: &[&str] = &[
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "auth",
        "credential",
        "sess",
        "sid",
        "assert",
        "saml",
        "bearer",
        "jwt",
        "otp",
        "pin",
        "ssn",
        "cvv",
        "card",
        // Request signatures (`signature`, `sig`, `X-Hub-Signature-256`, `X-Amz-Signature`):
        // whoever has one can replay the request it signs while it is valid.
        "sig",
        // `code_verifier` (PKCE), `oauth_verifier`, `verification_code`.
        "verif",
    ];
    MARKERS.iter().any(|m| name.contains(m)) || names_a_code(&t.name)
}

/// Whether a name's last key (after the last `.`, `[`, `]`, `/`, `@`, `$` or `:`: the
/// parameter itself, a JSON or XML leaf) is `code`, ends in `_code` or `-code`, or is a
/// camelCase `…Code`: the OAuth 2.0 authorization `code` (RFC 6749), `device_code` and
/// `user_code` (RFC 8628), `mfa_code`, `reset_code`, `verificationCode`, `security_code`.
/// Harmless names of that shape (`country_code`, `error_code`) lose only the quoted text of a
/// finding, never its detection; `zipcode`, `postcode`, `barcode` and `encode` are quoted.
fn names_a_code(name: &str) -> bool {
    let last = name
        .rsplit(['.', '[', ']', '/', '@', '$', ':'])
        .find(|k| !k.is_empty())
        .unwrap_or_default();
    let lower = last.to_ascii_lowercase();
    let camel = last.len() > 4
        && last.ends_with("Code")
        && last
            .as_bytes()
            .get(last.len() - 5)
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    lower == "code" || lower.ends_with("_code") || lower.ends_with("-code") || camel
}

/// The snippet of a secret: only its length.
pub fn redacted(matched: &str) -> String {
    redacted_chars(matched.chars().count())
}

fn redacted_chars(n: usize) -> String {
    format!("[redacted: {n} characters]")
}

/// `location:name` (or `location` alone when unnamed).
pub fn exclusion_key(t: &Target<'_>) -> String {
    if t.name.is_empty() {
        t.location.as_str().to_string()
    } else {
        format!("{}:{}", t.location.as_str(), t.name)
    }
}

/// Most characters of a snippet.
pub const SNIPPET_CHARS: usize = 64;

/// A printable excerpt of at most [`SNIPPET_CHARS`] characters: control characters escaped,
/// and runs of six or more digits (card, phone, account numbers), e-mail local parts and
/// JWT-like tokens (`eyJ` and 8 or more base64url characters: a bearer token in a field not
/// named as one) masked so that an audit log never carries them.
pub fn snippet(matched: &str) -> String {
    let mut c: Vec<char> = matched.chars().take(SNIPPET_CHARS + 1).collect();
    // JWT-like tokens, up to the end of their run (dots and base64url characters).
    let b64 = |ch: char| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_';
    let mut i = 0;
    while i + 3 <= c.len() {
        if c[i..i + 3] == ['e', 'y', 'J'] {
            let run = c[i + 3..].iter().take_while(|&&ch| b64(ch)).count();
            if run >= 8 {
                let end = i
                    + 3
                    + c[i + 3..]
                        .iter()
                        .take_while(|&&ch| b64(ch) || ch == '.')
                        .count();
                c[i..end].fill('*');
                i = end;
                continue;
            }
        }
        i += 1;
    }
    // Digit runs of six or more.
    let mut i = 0;
    while i < c.len() {
        let start = i;
        while i < c.len() && c[i].is_ascii_digit() {
            i += 1;
        }
        if i - start >= 6 {
            c[start..i].fill('#');
        }
        i = i.max(start + 1);
    }
    // The local part of anything that looks like an e-mail address.
    for at in 1..c.len().saturating_sub(1) {
        if c[at] == '@' && c[at + 1].is_alphanumeric() {
            let mut k = at;
            while k > 0 && (c[k - 1].is_alphanumeric() || matches!(c[k - 1], '.' | '_' | '-' | '+'))
            {
                k -= 1;
                c[k] = '*';
            }
        }
    }
    let cut = c.len() > SNIPPET_CHARS;
    let mut out = String::with_capacity(c.len() + 8);
    for ch in c.into_iter().take(SNIPPET_CHARS) {
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    if cut {
        out.push('…');
    }
    out
}

/// A detector's entry point: inspects one target, pushing a finding per matching rule.
/// `paranoia` is the route's level (1–4): rules above it do not run.
pub type InspectFn = fn(&Target<'_>, &mut crate::transform::Views, u8, &mut Vec<Finding>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_quoted() {
        let rule = &crate::extract_rules::RULES[0];
        for name in [
            "$.password",
            "$.user.client_secret",
            "refresh_token",
            "x-api-key",
            "PHPSESSID",
            "_gh_sess",
            "client_assertion",
            "SAMLResponse",
        ] {
            let t = Target::new(Location::Body, name, Part::Value, "hunter2' or 1=1--");
            let f = Finding::new(rule, &t, View::Raw, "hunter2' or 1=1--");
            assert_eq!(f.snippet, "[redacted: 17 characters]", "{name}");
        }
        // Every cookie value, whatever its name.
        for name in ["li_at", ".AspNetCore.Cookies", "theme"] {
            let t = Target::new(Location::Cookie, name, Part::Value, "hunter2' or 1=1--");
            let f = Finding::new(rule, &t, View::Raw, "hunter2' or 1=1--");
            assert_eq!(f.snippet, "[redacted: 17 characters]", "{name}");
        }
        let t = Target::new(Location::Query, "q", Part::Value, "x' or 1=1--");
        assert_eq!(
            Finding::new(rule, &t, View::Raw, "x' or 1=1--").snippet,
            "x' or 1=1--"
        );
    }

    /// Request signatures and one-time codes are secrets too: whoever reads one from the audit
    /// log can replay the request, or redeem the code while it is valid. Ordinary words that
    /// merely end in `code` stay quoted.
    #[test]
    fn signatures_and_codes_are_never_quoted() {
        let rule = &crate::extract_rules::RULES[0];
        let quoted = |location, name: &str| {
            let t = Target::new(location, name, Part::Value, "x' or 1=1--");
            Finding::new(rule, &t, View::Raw, "x' or 1=1--").snippet
        };
        for (location, name) in [
            (Location::Query, "sig"),
            (Location::Query, "signature"),
            (Location::Query, "X-Amz-Signature"),
            (Location::Header, "x-hub-signature-256"),
            (Location::Query, "code"),
            (Location::Query, "Code"),
            (Location::Body, "code"),
            (Location::Body, "$.auth_response.code"),
            (Location::Body, "user[code]"),
            (Location::Body, "device_code"),
            (Location::Body, "user_code"),
            (Location::Body, "$.mfa-code"),
            (Location::Body, "$.verificationCode"),
            (Location::Body, "code_verifier"),
            (Location::Query, "oauth_verifier"),
        ] {
            assert_eq!(
                quoted(location, name),
                "[redacted: 11 characters]",
                "{location:?} {name}"
            );
        }
        for name in [
            "zipcode", "postcode", "barcode", "encode", "codes", "q", "CODEX",
        ] {
            assert_eq!(quoted(Location::Query, name), "x' or 1=1--", "{name}");
        }
    }

    /// A URL's query and fragment never reach the audit log, whatever found what in it: a
    /// `Referer` carries the query of the page before (an OAuth `code`, a reset token), other
    /// headers and fields carry URLs too. Text of the URL before them is quoted as usual; the
    /// rest is replaced by its length.
    #[test]
    fn a_urls_query_and_fragment_are_never_quoted() {
        let rule = &crate::extract_rules::RULES[0];
        let quoted = |location, name: &'static str, value: &'static str, matched: &str| {
            let t = Target::new(location, name, Part::Value, value);
            Finding::new(rule, &t, View::Raw, matched).snippet
        };
        let referer = "https://app.example/cb?code=SplxlOBeZQQYbYS6WxSbIA&x=' or 1=1--";
        // What matched lies in the query, or runs into it (the SQL tokenizer's head).
        for matched in [
            "' or 1=1--",
            "code=SplxlOBeZQQYbYS6WxSbIA",
            "[s&1c] https://app.example/cb?code=SplxlOBeZQQYbYS6WxSbIA&x='",
            "https://app.example/cb?code",
        ] {
            assert_eq!(
                quoted(Location::Header, "referer", referer, matched),
                "https://app.example/cb?[redacted: 40 characters]",
                "{matched}"
            );
        }
        // What matched is text of the URL before its query: quoted (in any case).
        let traversal = "https://app.example/../../etc/passwd?token=abc";
        assert_eq!(
            quoted(Location::Header, "referer", traversal, "../../ETC/PASSWD"),
            "../../ETC/PASSWD"
        );
        // Text a decoding view made is not found there: the URL stands for it.
        let encoded = "https://app.example/%2e%2e/%2e%2e/etc/passwd#frag";
        assert_eq!(
            quoted(Location::Header, "referer", encoded, "../../etc/passwd"),
            "https://app.example/%2e%2e/%2e%2e/etc/passwd#[redacted: 4 characters]"
        );
        // `Referer` and `Origin` are URLs whatever they look like; so is any value that starts
        // like one, in any header, query parameter or body field.
        for (location, name, value, want) in [
            (
                Location::Header,
                "referer",
                "app.example/x?code=abc",
                "app.example/x?[redacted: 8 characters]",
            ),
            (
                Location::Header,
                "origin",
                "null#x",
                "null#[redacted: 1 characters]",
            ),
            (
                Location::Header,
                "x-forwarded-uri",
                "/cb?code=abc",
                "/cb?[redacted: 8 characters]",
            ),
            (
                Location::Header,
                "link",
                "<https://a.example/p?page=2&key=k>; rel=next",
                "<https://a.example/p?[redacted: 23 characters]",
            ),
            (
                Location::Query,
                "return_to",
                "https://app.example/reset#t=abc",
                "https://app.example/reset#[redacted: 5 characters]",
            ),
            (
                Location::Body,
                "$.next",
                "//evil.example/?q=1",
                "//evil.example/?[redacted: 3 characters]",
            ),
        ] {
            assert_eq!(quoted(location, name, value, "<script>"), want, "{name}");
        }
        // A path segment's parameters (a session id) are hidden too.
        for matched in ["<script>", "jsessionid=0a1b2c3d4e"] {
            assert_eq!(
                quoted(
                    Location::Header,
                    "referer",
                    "https://shop.example/cart;jsessionid=0A1B2C3D4E/items;v=2?x=1",
                    matched
                ),
                "https://shop.example/cart;…/items;…?[redacted: 3 characters]",
                "{matched}"
            );
        }
        assert_eq!(
            quoted(Location::Body, "$.next", "/app;sid=SECRET/x", "../../etc"),
            "/app;…/x"
        );
        // What matched in the URL's other text is quoted; a bare `;` hides nothing.
        assert_eq!(
            quoted(
                Location::Header,
                "referer",
                "https://shop.example/../cart;jsessionid=0A1B",
                "/../"
            ),
            "/../"
        );
        assert_eq!(
            quoted(Location::Header, "referer", "https://a.example/x;/y", "<s>"),
            "<s>"
        );
        // A userinfo is hidden too, with or without a query.
        assert_eq!(
            quoted(
                Location::Header,
                "x-callback",
                "https://bob:hunter2@hooks.example/x",
                "<script>"
            ),
            "https://[redacted]@hooks.example/x"
        );
        assert_eq!(
            quoted(
                Location::Header,
                "x-callback",
                "https://bob:hunter2@hooks.example/x",
                "hooks.example/x"
            ),
            "hooks.example/x"
        );
        // No URL, or nothing to hide: quoted as before.
        for (location, name, value) in [
            (Location::Header, "x-note", "why? <script>"),
            (Location::Header, "referer", "https://app.example/<script>"),
            (Location::Query, "q", "<script>?x=1"),
            (Location::Path, "", "/a/<script>?b"),
        ] {
            assert_eq!(
                quoted(location, name, value, "<script>"),
                "<script>",
                "{value}"
            );
        }
        // A secret-named URL is redacted whole, as before.
        assert_eq!(
            quoted(
                Location::Query,
                "redirect_token",
                "https://a/?x",
                "<script>"
            ),
            "[redacted: 8 characters]"
        );
        // The finding's other fields are untouched.
        let t = Target::new(Location::Header, "referer", Part::Value, referer);
        let f = Finding::new(rule, &t, View::Raw, "' or 1=1--");
        assert_eq!(f.target, "header:referer");
        assert_eq!(f.exclusion_key, "header:referer");
    }

    #[test]
    fn snippets_are_short_and_mask_numbers_and_mail_addresses() {
        let s = snippet("card 4111111111111111 from jane.doe@example.org");
        assert!(s.contains("################"), "{s}");
        assert!(s.contains("********@example.org"), "{s}");
        assert!(!s.contains("4111"), "{s}");
        assert!(!s.contains("jane"), "{s}");
        let s = snippet("q=' or 1=1 -- eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln x");
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln";
        assert_eq!(s, format!("q=' or 1=1 -- {} x", "*".repeat(token.len())));
        assert_eq!(snippet("eyJ short"), "eyJ short", "not a token");
        let long = "a".repeat(500);
        assert_eq!(snippet(&long).chars().count(), SNIPPET_CHARS + 1);
        assert_eq!(
            snippet("a\nb\r"),
            "a\\nb\\r",
            "control characters are escaped"
        );
    }
}
