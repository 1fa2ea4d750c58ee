//! Scanner and attack-tool signatures (rules 2200–2299).
//!
//! The User-Agent strings attack tools send by default, the headers some scanners add, and the
//! out-of-band interaction domains (Burp Collaborator, interactsh …) their payloads call back to.

use std::sync::LazyLock;

use super::shared::{Bank, Literals, push_once};
use crate::model::{Class, Finding, Location, Rule, Severity, Target};
use crate::transform::{View, Views};

const fn rule(id: u32, severity: Severity, paranoia: u8, description: &'static str) -> Rule {
    Rule {
        id,
        class: Class::Scanner,
        severity,
        paranoia,
        description,
    }
}

pub static RULES: &[Rule] = &[
    rule(
        2200,
        Severity::Critical,
        1,
        "User-Agent of an attack tool or vulnerability scanner",
    ),
    rule(
        2201,
        Severity::Warning,
        1,
        "User-Agent of a reconnaissance scanner",
    ),
    rule(
        2202,
        Severity::Critical,
        1,
        "out-of-band interaction domain (Burp Collaborator, interactsh …)",
    ),
    rule(
        2203,
        Severity::Critical,
        1,
        "header added by a vulnerability scanner",
    ),
    rule(
        2204,
        Severity::Notice,
        2,
        "User-Agent of a scripting library or command-line client",
    ),
];

static UA: LazyLock<Bank> = LazyLock::new(|| {
    Bank::new(
        "scanner",
        &[
            (
                0,
                r"(?i)\b(?:sqlmap|nikto|nmap scripting engine|nmap nse|nuclei|wpscan|dirbuster|gobuster|feroxbuster|dirsearch|ffuf|fuzz faster u fool|wfuzz|acunetix|netsparker|invicti|w3af|arachni|havij|openvas|nessus|jaeles|commix|whatweb|xsstrike|fimap|dotdotpwn|sqlninja|zmeu|morfeus|paros|webinspect|appscan|skipfish|wapiti|joomscan|droopescan|cmsmap|metasploit|bbqsql|grabber|webshag|xsser|jorgee|struts-pwn|log4j-scan|wafw00f|brutus|owasp zap|zaproxy|burpsuite|burp suite|qualys|teh forest lobster|sqlpowerinjector|pangolin|absinthe|bsqlbf|mysqloit|nsauditor|floodgate|dominohunter|crimscanner|webvulnscan|vega/|dirb/|blackwidow|n-stealth|infoga|sitelock|medusa|ncrack|patator)\b",
            ),
            (
                0,
                r"(?i)\((?:hydra|thc-hydra)\)|\bthc-hydra\b|\bmozilla/4\.0 \(hydra\)",
            ),
            (
                1,
                r"(?i)\b(?:masscan|zgrab|zmap|censys|shodan|internet-measurement|expanse|netcraft survey|l9scan|leakix|project sonar|odin\.io|binaryedge|criminalip|onyphe|fofa)\b",
            ),
            (
                4,
                r"(?i)^(?:python-requests|python-urllib|go-http-client|curl|wget|libwww-perl|lwp::simple|java/|okhttp|httpclient|apache-httpclient|ruby|php/|axios|node-fetch|aiohttp|httpx|scrapy|mechanize|powershell)",
            ),
        ],
    )
});

static ANY: LazyLock<Bank> = LazyLock::new(|| {
    Bank::new(
        "scanner",
        &[(
            2,
            r"(?i)\b(?:[a-z0-9-]+\.)*(?:burpcollaborator\.net|oastify\.com|interact\.sh|interactsh\.com|oast\.(?:pro|live|site|online|fun|me)|dnslog\.(?:cn|link)|ceye\.io|bxss\.me|xss\.ht|canarytokens\.com|requestrepo\.com|dnslog\.pw|eyes\.sh|ngrok\.io|pingb\.in|r87\.me|l4j\.(?:io|me))\b",
        )],
    )
});

/// The interaction domains' distinctive parts.
static LITS: LazyLock<Literals> = LazyLock::new(|| {
    Literals::new(
        "scanner",
        &[
            "burpcollaborator",
            "oastify",
            "interact.sh",
            "interactsh",
            "oast.",
            "dnslog",
            "ceye.io",
            "bxss.me",
            "xss.ht",
            "canarytokens",
            "requestrepo",
            "eyes.sh",
            "ngrok.io",
            "pingb.in",
            "r87.me",
            "l4j.",
        ],
    )
});

/// Header names scanners add (lowercase).
const SCANNER_HEADERS: [&str; 10] = [
    "x-scanner",
    "acunetix-product",
    "acunetix-scanning-agreement",
    "acunetix-user-agreement",
    "x-wipp",
    "x-request-memo",
    "x-scan-memo",
    "x-ratproxy-loop",
    "x-burp-collaborator",
    "x-nuclei",
];

pub fn inspect(t: &Target<'_>, views: &mut Views, paranoia: u8, out: &mut Vec<Finding>) {
    let mut seen = 0u64;
    if t.location == Location::Header {
        if t.name.eq_ignore_ascii_case("user-agent") {
            let raw = views.get(View::Raw);
            UA.scan(raw, |r, m| {
                push_once(RULES, r, &mut seen, paranoia, t, View::Raw, m, out)
            });
        } else if SCANNER_HEADERS
            .iter()
            .any(|h| t.name.eq_ignore_ascii_case(h))
        {
            let name = t.name.as_ref();
            push_once(RULES, 3, &mut seen, paranoia, t, View::Raw, name, out);
        }
    }
    let raw = views.get(View::Raw);
    if raw.len() < 7 || !LITS.any(raw) {
        return;
    }
    ANY.scan(raw, |r, m| {
        push_once(RULES, r, &mut seen, paranoia, t, View::Raw, m, out)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Part;

    fn ids(loc: Location, name: &str, v: &str, pl: u8) -> Vec<u32> {
        let t = Target::new(loc, name, Part::Value, v);
        let mut views = Views::new();
        views.load(v);
        let mut out = Vec::new();
        inspect(&t, &mut views, pl, &mut out);
        out.iter().map(|f| f.rule).collect()
    }

    fn ua(v: &str) -> Vec<u32> {
        ids(Location::Header, "user-agent", v, 1)
    }

    #[test]
    fn patterns_compile() {
        assert_eq!(UA.failed, 0);
        assert_eq!(ANY.failed, 0);
        assert!(LITS.built());
    }

    #[test]
    fn rule_ids_are_in_block_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!((2200..2300).contains(&r.id));
            assert!(seen.insert(r.id));
        }
    }

    #[test]
    fn tools() {
        assert_eq!(ua("sqlmap/1.7.2#stable (https://sqlmap.org)"), vec![2200]);
        assert_eq!(
            ua("Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:000001)"),
            vec![2200]
        );
        assert_eq!(
            ua("Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)"),
            vec![2200]
        );
        assert_eq!(ua("Fuzz Faster U Fool v2.0.0"), vec![2200]);
        assert_eq!(ua("Mozilla/4.0 (Hydra)"), vec![2200]);
        assert_eq!(ua("Mozilla/5.0 zgrab/0.x"), vec![2201]);
        assert_eq!(
            ids(Location::Header, "user-agent", "curl/8.0", 2),
            vec![2204]
        );
        assert!(ua("curl/8.0").is_empty());
        assert_eq!(
            ids(Location::Header, "acunetix-product", "WVS/14", 1),
            vec![2203]
        );
        assert_eq!(
            ids(Location::Query, "q", "x.abc123.oastify.com", 1),
            vec![2202]
        );
        assert_eq!(
            ids(
                Location::Header,
                "referer",
                "http://abc.burpcollaborator.net/",
                1
            ),
            vec![2202]
        );
    }

    #[test]
    fn benign() {
        for v in [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
            "okhttp/4.9.0",
        ] {
            assert!(ua(v).is_empty(), "{v}");
        }
        assert!(ids(Location::Query, "q", "nikto", 1).is_empty());
    }
}
