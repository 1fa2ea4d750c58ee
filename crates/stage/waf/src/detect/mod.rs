//! The value detectors, one module per attack class. Each exposes `RULES` (its rule catalogue)
//! and `inspect` (an [`InspectFn`]); patterns are compiled once per process into sets, so
//! inspecting a value allocates no rule state.

use crate::model::{Class, InspectFn, Rule};

pub mod api;
pub mod cmdi;
pub mod crlf;
pub mod ldap;
pub mod log4shell;
pub mod nosql;
pub mod scanner;
mod shared;
pub mod sqli;
pub mod ssrf;
pub mod ssti;
pub mod traversal;
pub mod xss;
pub mod xxe;

/// Compiles every detector's patterns now rather than on the first request: runs each
/// detector at the highest paranoia level over a value holding every trigger character, in
/// each location, so every lazily built pattern set is built.
pub fn warm_up() {
    use crate::model::{Location, Part, Target};
    sqli::warm_up();
    xss::warm_up();
    let value = "%27 ' \" ` ; | & $( ${ {{ <% <!-- </ > = ( ) [ ] * # / \\ .. : @ \r\n jndi http://a/ file:// select <script> $ne";
    let mut views = crate::transform::Views::new();
    let mut out = Vec::new();
    for location in [Location::Query, Location::Header, Location::Body] {
        for part in [Part::Value, Part::Name] {
            let t = Target::new(location, "user-agent", part, value);
            views.load(value);
            for (_, inspect) in VALUE_DETECTORS {
                inspect(&t, &mut views, 4, &mut out);
            }
        }
    }
}

/// Every value detector, in the order they run.
pub const VALUE_DETECTORS: &[(Class, InspectFn)] = &[
    (Class::Sqli, sqli::inspect),
    (Class::Xss, xss::inspect),
    (Class::CommandInjection, cmdi::inspect),
    (Class::Traversal, traversal::inspect),
    (Class::Ssrf, ssrf::inspect),
    (Class::Xxe, xxe::inspect),
    (Class::Nosql, nosql::inspect),
    (Class::Ldap, ldap::inspect),
    (Class::Ssti, ssti::inspect),
    (Class::Log4Shell, log4shell::inspect),
    (Class::Crlf, crlf::inspect),
    (Class::Scanner, scanner::inspect),
];

/// Every built-in rule (the value detectors', the API-abuse ones and the protocol ones).
pub fn all_rules() -> impl Iterator<Item = &'static Rule> {
    [
        crate::extract_rules::RULES,
        sqli::RULES,
        xss::RULES,
        cmdi::RULES,
        traversal::RULES,
        ssrf::RULES,
        xxe::RULES,
        nosql::RULES,
        ldap::RULES,
        ssti::RULES,
        log4shell::RULES,
        crlf::RULES,
        scanner::RULES,
        api::RULES,
    ]
    .into_iter()
    .flatten()
}

/// The rule catalogue as a Markdown table (id, class, severity, paranoia, technique), as
/// `docs/waf.md` carries it; a test keeps the two equal.
pub fn catalogue_markdown() -> String {
    let mut rules: Vec<&Rule> = all_rules().collect();
    rules.sort_by_key(|r| r.id);
    let mut s =
        String::from("| id | class | severity | paranoia | detects |\n|---:|---|---|---:|---|\n");
    for r in rules {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.id,
            r.class.as_str(),
            r.severity.as_str(),
            r.paranoia,
            r.description.replace('|', "\\|")
        ));
    }
    s
}

/// What detector unit tests share: one value as a query parameter through one detector.
#[cfg(test)]
pub(crate) mod testing {
    use crate::model::{Finding, InspectFn, Location, Part, Target};
    use crate::transform::Views;

    pub(crate) fn findings(inspect: InspectFn, v: &str, paranoia: u8) -> Vec<Finding> {
        let t = Target::new(Location::Query, "q", Part::Value, v);
        let mut views = Views::new();
        views.load(v);
        let mut out = Vec::new();
        inspect(&t, &mut views, paranoia, &mut out);
        out
    }

    pub(crate) fn ids(inspect: InspectFn, v: &str, paranoia: u8) -> Vec<u32> {
        findings(inspect, v, paranoia)
            .iter()
            .map(|f| f.rule)
            .collect()
    }

    /// The anomaly score at paranoia 1.
    pub(crate) fn score(inspect: InspectFn, v: &str) -> u32 {
        findings(inspect, v, 1)
            .iter()
            .map(|f| f.severity.score())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Long runs of one character behind the openings detectors pair or count back from: each
    /// detector's work must stay linear in the value (a quadratic scan here — counting the
    /// backslashes before every byte again — pinned a thread for minutes on one 1 MiB body).
    /// No clock (timed assertions flake on shared machines): a quadratic detector makes this
    /// test slow, not red — that scan took it from 8 to 33 s in a debug build.
    #[test]
    fn detectors_stay_linear_on_long_runs() {
        const LEN: usize = 64 << 10;
        for prefix in [
            "`", "${", "$(", "'", "\"", "<", "{{", "/*", "&#", "%", "a=", "../",
        ] {
            for run in [
                '\\', '`', '$', '{', '(', '\'', '"', '<', '%', '&', '/', '.', ';', '|', ' ', 'a',
                '0', '-', '#', '*', '=', ':', '[', ',',
            ] {
                let mut v = String::with_capacity(LEN + 8);
                v.push_str(prefix);
                v.extend(std::iter::repeat_n(run, LEN));
                v.push_str(prefix);
                for (_, inspect) in VALUE_DETECTORS {
                    testing::findings(*inspect, &v, 4);
                }
            }
        }
        // Lookups (`${…}`) side by side, nested, unclosed: the Log4Shell resolver reads each
        // value once (it read from the end, one lookup at a time, over the first 8 KiB).
        const N: usize = 16 << 10;
        let nested = |open: &str| format!("{}x{}", open.repeat(N), "}".repeat(N));
        for v in [
            "${".repeat(N),
            "${x}".repeat(N),
            "${x:-y}".repeat(N),
            "}${".repeat(N),
            nested("${"),
            nested("${a:-"),
            nested("${lower:"),
            nested("${date:'"),
            nested("${jndi${"),
            // Defaults nested around a long text: the resolver's bound.
            format!("{}{}{}", "${a:-".repeat(N), "x".repeat(N), "}".repeat(N)),
        ] {
            for (_, inspect) in VALUE_DETECTORS {
                testing::findings(*inspect, &v, 4);
            }
        }
    }

    #[test]
    fn rule_ids_are_unique_and_in_their_class_block() {
        let mut seen = HashSet::new();
        for r in all_rules() {
            assert!(seen.insert(r.id), "rule id {} used twice", r.id);
            assert!((1..=4).contains(&r.paranoia), "rule {}", r.id);
            assert!((1000..100_000).contains(&r.id), "rule {}", r.id);
            assert!(!r.description.is_empty(), "rule {}", r.id);
        }
    }

    /// docs/waf.md carries the catalogue exactly as the code defines it
    /// (`PRINT_CATALOGUE=1 cargo test -p portcullis-waf catalogue -- --nocapture` prints it).
    #[test]
    fn the_documented_catalogue_is_current() {
        let table = catalogue_markdown();
        if std::env::var_os("PRINT_CATALOGUE").is_some() {
            println!("{table}");
        }
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../docs/waf.md"))
                .unwrap_or_default();
        assert!(
            docs.contains(&table),
            "docs/waf.md's rule catalogue is out of date:\n{table}"
        );
    }
}
