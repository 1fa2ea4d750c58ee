//! What the pattern-based detectors share: [`Bank`] (a pattern set compiled once),
//! [`Literals`] (a keyword prefilter) and [`push_once`] (one finding per rule per target).

use aho_corasick::AhoCorasick;
use regex::{Regex, RegexSet, RegexSetBuilder};

use crate::model::{Finding, Rule, Target};
use crate::transform::View;

/// A set of patterns compiled once: a [`RegexSet`] answers "does anything match" in one pass,
/// and the single regexes give the matched fragment of the patterns that did.
///
/// A pattern that fails to compile is logged and never matches (no panic in the data path).
pub(crate) struct Bank {
    set: RegexSet,
    /// Index in `pats` of each pattern in `set`.
    map: Vec<usize>,
    res: Vec<Option<Regex>>,
    rules: Vec<usize>,
    /// How many patterns failed to compile (a unit test asserts zero).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) failed: usize,
}

impl Bank {
    /// Compiles `(rule index, pattern)` pairs. `\b` is made ASCII-only (keeps the fast engines
    /// usable on any haystack).
    pub(crate) fn new(what: &str, pats: &[(usize, &str)]) -> Bank {
        let mut failed = 0usize;
        let mut res = Vec::with_capacity(pats.len());
        let mut map = Vec::with_capacity(pats.len());
        let mut srcs = Vec::with_capacity(pats.len());
        for (i, (_, p)) in pats.iter().enumerate() {
            let src = p.replace(r"\b", r"(?-u:\b)");
            match Regex::new(&src) {
                Ok(re) => {
                    res.push(Some(re));
                    map.push(i);
                    srcs.push(src);
                }
                Err(e) => {
                    tracing::error!(detector = what, pattern = *p, error = %e, "WAF pattern does not compile; it will never match");
                    failed += 1;
                    res.push(None);
                }
            }
        }
        let set = RegexSetBuilder::new(&srcs)
            .size_limit(64 << 20)
            .dfa_size_limit(16 << 20)
            .build()
            .unwrap_or_else(|e| {
                tracing::error!(detector = what, error = %e, "WAF pattern set does not compile; it will never match");
                failed += srcs.len();
                RegexSet::empty()
            });
        Bank {
            set,
            map,
            res,
            rules: pats.iter().map(|(r, _)| *r).collect(),
            failed,
        }
    }

    /// Calls `f(rule index, matched fragment)` for every matching pattern.
    pub(crate) fn scan<'h>(&self, hay: &'h str, mut f: impl FnMut(usize, &'h str)) {
        if !self.set.is_match(hay) {
            return;
        }
        for si in self.set.matches(hay).iter() {
            let Some(&pi) = self.map.get(si) else {
                continue;
            };
            if let Some(Some(re)) = self.res.get(pi)
                && let Some(m) = re.find(hay)
            {
                f(self.rules[pi], m.as_str());
            }
        }
    }
}

/// A literal prefilter (ASCII case-insensitive): a bank runs only on a value containing one of
/// the literals its patterns cannot match without. If the automaton cannot be built, every
/// value passes (the banks still decide).
pub(crate) struct Literals(Option<AhoCorasick>);

impl Literals {
    pub(crate) fn new(what: &str, lits: &[&str]) -> Literals {
        match AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(lits)
        {
            Ok(ac) => Literals(Some(ac)),
            Err(e) => {
                tracing::error!(detector = what, error = %e, "WAF literal prefilter does not build; inspecting every value");
                Literals(None)
            }
        }
    }

    pub(crate) fn any(&self, hay: &str) -> bool {
        self.0.as_ref().is_none_or(|ac| ac.is_match(hay))
    }

    /// Which of two groups of literals occur: those before index `split` and the others
    /// (both, when the automaton could not be built).
    pub(crate) fn groups(&self, hay: &str, split: usize) -> (bool, bool) {
        let Some(ac) = &self.0 else {
            return (true, true);
        };
        let (mut a, mut b) = (false, false);
        for m in ac.find_overlapping_iter(hay) {
            if m.pattern().as_usize() < split {
                a = true;
            } else {
                b = true;
            }
            if a && b {
                break;
            }
        }
        (a, b)
    }

    #[cfg(test)]
    pub(crate) fn built(&self) -> bool {
        self.0.is_some()
    }
}

/// Records one finding per rule per target: `seen` is a bitmask of rule indexes already pushed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn push_once(
    rules: &'static [Rule],
    idx: usize,
    seen: &mut u64,
    paranoia: u8,
    t: &Target<'_>,
    view: View,
    matched: &str,
    out: &mut Vec<Finding>,
) {
    let Some(rule) = rules.get(idx) else { return };
    let bit = 1u64 << (idx % 64);
    if *seen & bit != 0 || rule.paranoia > paranoia {
        return;
    }
    *seen |= bit;
    out.push(Finding::new(rule, t, view, matched));
}
