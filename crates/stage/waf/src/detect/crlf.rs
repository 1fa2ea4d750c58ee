//! CR/LF injection: header injection and HTTP response splitting (rules 2100–2199).
//!
//! A value that, once decoded, carries a line break followed by a response header or a status
//! line is written to split or extend a response when it is reflected into a header (a redirect
//! target, a cookie). Header and cookie values should carry no line break at all.

use std::sync::LazyLock;

use super::shared::{Bank, push_once};
use crate::model::{Class, Finding, Location, Rule, Severity, Target};
use crate::transform::{View, Views};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::Crlf,
        severity,
        paranoia,
        description,
    }
}

pub static RULES: &[Rule] = &[
    rule(
        2100,
        Severity::Critical,
        1,
        "line break followed by a response header (header injection)",
    ),
    rule(
        2101,
        Severity::Critical,
        1,
        "line break followed by a status line or a body (response splitting)",
    ),
    rule(
        2102,
        Severity::Error,
        1,
        "line break in a header, cookie or path",
    ),
    rule(2103, Severity::Notice, 2, "encoded CR LF pair in a value"),
];

/// A line break, including the Unicode characters some stacks truncate to CR or LF
/// (U+560A/U+560D, U+010A/U+010D).
const NL: &str = r"(?:\r\n?|\n|[\x{560A}\x{560D}\x{010A}\x{010D}]+)";

static DECODED: LazyLock<Bank> = LazyLock::new(|| {
    // Response headers an injected line would set, each with the shape of its value, so
    // that a line such as "Location: Paris" in a multi-line text is not one.
    let headers = r"set-cookie[ \t]*:[ \t]*[^=\s;]+=|location[ \t]*:[ \t]*(?:[a-z][a-z0-9+.-]*:|//|/)|content-type[ \t]*:[ \t]*[a-z]+/[a-z0-9.+-]+|content-length[ \t]*:[ \t]*[0-9]+[ \t]*(?:$|[\r\n])|transfer-encoding[ \t]*:[ \t]*(?:chunked|identity|gzip)|refresh[ \t]*:[ \t]*[0-9]+|access-control-allow-(?:origin|credentials|headers|methods)[ \t]*:|content-security-policy[ \t]*:|x-xss-protection[ \t]*:[ \t]*[01]|x-frame-options[ \t]*:|x-content-type-options[ \t]*:|strict-transport-security[ \t]*:[ \t]*max-age|content-disposition[ \t]*:[ \t]*(?:attachment|inline)|cache-control[ \t]*:[ \t]*(?:no-|max-age|public|private)";
    let pats: Vec<(usize, String)> = vec![
        (0, format!(r"(?i){NL}[ \t]*(?:{headers})")),
        (
            1,
            format!(r"(?i){NL}[ \t]*http/[0-9](?:\.[0-9])?[ \t]+[0-9]{{3}}\b"),
        ),
        (
            63,
            format!(r"(?i){NL}[ \t]*{NL}[ \t]*<(?:html|script|body|head|!doctype|svg|iframe)\b"),
        ),
    ];
    let refs: Vec<(usize, &str)> = pats.iter().map(|(r, p)| (*r, p.as_str())).collect();
    Bank::new("crlf", &refs)
});

fn has_break(s: &str) -> Option<usize> {
    s.find(['\r', '\n', '\u{560A}', '\u{560D}', '\u{010A}', '\u{010D}'])
}

pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let raw = views.get(View::Raw);
    let raw_break = has_break(raw).is_some();
    if !raw_break && !raw.contains('%') && !raw.bytes().any(|b| b >= 0xC4) {
        return;
    }
    let encoded = !raw_break && contains_encoded_crlf(raw);
    let mut seen = 0u64;
    let decoded = views.get(View::Decoded);
    let Some(at) = has_break(decoded) else {
        return;
    };
    // 63: an empty line then markup, the body of a split response; not for bodies, where
    // HTML after a blank line is ordinary content.
    let body = t.location == Location::Body;
    DECODED.scan(decoded, |r, m| {
        let r = match r {
            63 if body => return,
            63 => 1,
            r => r,
        };
        push_once(RULES, r, &mut seen, paranoia, t, View::Decoded, m, out)
    });
    let frag = decoded
        .get(at.saturating_sub(8)..(at + 24).min(decoded.len()))
        .unwrap_or("");
    if matches!(
        t.location,
        Location::Header | Location::Cookie | Location::Path
    ) && decoded.contains(['\r', '\n'])
    {
        push_once(RULES, 2, &mut seen, paranoia, t, View::Decoded, frag, out);
    }
    if encoded {
        push_once(RULES, 3, &mut seen, paranoia, t, View::Raw, frag, out);
    }
}

/// `%0d%0a` (any case, any number of `25` re-encodings), the form a reflected value carries.
fn contains_encoded_crlf(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let mut j = i + 1;
            while b.get(j..j + 2) == Some(b"25") {
                j += 2;
            }
            if let Some(h) = b.get(j..j + 2)
                && (h.eq_ignore_ascii_case(b"0d") || h.eq_ignore_ascii_case(b"0a"))
            {
                return true;
            }
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Part;

    fn ids_at(loc: Location, v: &str) -> Vec<u32> {
        let t = Target::new(loc, "x", Part::Value, v);
        let mut views = Views::new();
        views.load(v);
        let mut out = Vec::new();
        inspect(&t, &mut views, 2, &mut out);
        let mut ids: Vec<u32> = out.iter().map(|f| f.rule).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn patterns_compile() {
        assert_eq!(DECODED.failed, 0);
    }

    #[test]
    fn rule_ids_are_in_block_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!((2100..2200).contains(&r.id));
            assert!(seen.insert(r.id));
        }
    }

    #[test]
    fn attacks() {
        assert!(ids_at(Location::Query, "x\r\nSet-Cookie: sid=evil").contains(&2100));
        assert!(ids_at(Location::Query, "/\r\nLocation: http://evil").contains(&2100));
        assert!(ids_at(Location::Query, "x\r\n\r\nHTTP/1.1 200 OK").contains(&2101));
        assert!(ids_at(Location::Query, "x\r\n\r\n<html>owned").contains(&2101));
        assert!(ids_at(Location::Cookie, "a\nb").contains(&2102));
        assert!(ids_at(Location::Query, "%0d%0aSet-Cookie:%20a=b").contains(&2100));
        assert!(ids_at(Location::Query, "%250d%250aLocation:%20http://evil").contains(&2100));
        assert!(ids_at(Location::Query, "x\u{560A}\u{560D}Set-Cookie: a=b").contains(&2100));
    }

    #[test]
    fn benign() {
        assert!(ids_at(Location::Query, "line one\nline two").is_empty());
        assert!(ids_at(Location::Body, "Dear John,\nNote: bring ID\nThanks").is_empty());
        assert!(
            ids_at(
                Location::Body,
                "Venue\r\nLocation: Paris\r\nHost: Anne\r\nAge: 30"
            )
            .is_empty()
        );
        assert!(
            ids_at(
                Location::Body,
                "<p>intro</p>\r\n\r\n<script src=x></script>"
            )
            .is_empty()
        );
        assert!(ids_at(Location::Query, "plain").is_empty());
    }
}
