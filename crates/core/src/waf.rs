//! What the WAF found in a request, as audit records it.

use std::borrow::Cow;

/// One rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WafMatch {
    pub rule: u32,
    /// `sqli`, `xss`, `protocol`, `custom` …
    pub class: &'static str,
    /// `critical`, `error`, `warning`, `notice`.
    pub severity: &'static str,
    /// What the rule detects.
    pub message: Cow<'static, str>,
    /// Where: `query:id`, `header:user-agent`, `body:$.items[0].name`, `path`.
    pub target: String,
    /// The transformations the value went through before it matched.
    pub transforms: &'static str,
    /// A short, masked excerpt of what matched.
    pub snippet: String,
    /// Whether an exclusion turned this match off (recorded, not scored).
    pub excluded: bool,
}

/// The WAF's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WafReport {
    /// `block` or `detect`.
    pub mode: &'static str,
    pub paranoia: u8,
    /// The anomaly score (sum of the scored matches' severities).
    pub score: u32,
    pub threshold: u32,
    /// Whether the request was (in `detect` mode: would have been) blocked.
    pub blocked: bool,
    pub matches: Vec<WafMatch>,
}
