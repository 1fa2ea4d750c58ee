//! WAF configuration: `waf:` at the top level (defaults for every route) and `waf:` on a route
//! (overrides, key by key; exclusions and custom rules add to the gateway-wide ones).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use portcullis_core::ConfigErrors;
use portcullis_core::units::RawSize;
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::detect::api::{self, ApiRules, RawApiRules};
use crate::extract::ExtractLimits;
use crate::model::{Class, RuleId, Severity};
use crate::transform::View;

// ---------------------------------------------------------------------------------------------
// Raw

/// What the WAF does with what it finds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse requests whose anomaly score reaches the threshold (403).
    #[default]
    Block,
    /// Inspect and record (audit, metrics, log) but never refuse.
    Detect,
    /// Do not inspect.
    Off,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Block => "block",
            Mode::Detect => "detect",
            Mode::Off => "off",
        }
    }
}

/// What happens to a body larger than the inspection limit (in `block` mode: `detect` mode
/// passes it, as [`RouteWaf::passes_over_limit`] says).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OverLimit {
    /// 413: a body the WAF cannot inspect does not pass.
    #[default]
    Reject,
    /// Forward it with the head inspected and the body not, recording a finding (rule 1004,
    /// not scored).
    Pass,
}

/// `waf:` (gateway-wide) and a route's `waf:`. Every key is optional on a route, where it
/// overrides the gateway-wide value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawWaf {
    /// `block` (default), `detect` or `off`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// 1 (default) to 4: higher levels run stricter rules (more detection, more false
    /// positives).
    #[serde(default)]
    pub paranoia: Option<u8>,
    /// The anomaly score at which a request is blocked. Default 5 (one critical finding).
    #[serde(default)]
    pub threshold: Option<u32>,
    /// The largest body buffered for inspection. Default 1MiB (never more than the route's
    /// `max_body_bytes`).
    #[serde(default)]
    pub inspect_body_bytes: Option<RawSize>,
    /// `reject` (default: 413) or `pass` for a body over `inspect_body_bytes`.
    #[serde(default)]
    pub on_body_over_limit: Option<OverLimit>,
    /// Deepest JSON/XML nesting inspected; deeper bodies are a finding. Default 64.
    #[serde(default)]
    pub max_depth: Option<usize>,
    /// Most values (parameters, headers, cookies, body fields) inspected per request; more is
    /// a finding. Default 4096.
    #[serde(default)]
    pub max_values: Option<usize>,
    /// Rule exclusions (false-positive fixes). A route's exclusions add to the gateway-wide
    /// ones.
    #[serde(default)]
    pub exclusions: Vec<RawExclusion>,
    /// Rules of your own. A route's add to the gateway-wide ones.
    #[serde(default)]
    pub custom_rules: Vec<RawCustomRule>,
    /// API-abuse limits (parameter pollution, mass assignment, GraphQL, batches, pagination).
    /// On a route, what it leaves out comes from the gateway-wide `api`; a list it gives
    /// replaces the gateway-wide list.
    #[serde(default)]
    pub api: Option<RawApiRules>,
}

/// Turns rules off for some targets. At least one of `rules`, `classes` and `targets` is
/// given: an exclusion naming none would turn every rule off everywhere (`mode: off` does
/// that, saying so).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawExclusion {
    /// Rule ids. Empty (with no `classes`): every rule.
    #[serde(default)]
    pub rules: Vec<RuleId>,
    /// Attack classes (`sqli`, `xss`, …). Empty (with no `rules`): every class.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Targets such as `query:q`, `header:referer`, `body:$.description`, `cookie:prefs`,
    /// `path`; `*` matches any run of characters (`body:$.items[*].note`, `query:*`).
    /// Empty: everywhere.
    #[serde(default)]
    pub targets: Vec<String>,
}

/// The test a custom rule applies to a value: exactly one key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawOperator {
    /// A regular expression (Rust `regex` syntax: linear time, no backreferences).
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub starts_with: Option<String>,
    #[serde(default)]
    pub ends_with: Option<String>,
    #[serde(default)]
    pub equals: Option<String>,
    /// The value is an IP address inside one of these networks.
    #[serde(default)]
    pub ip_in: Option<Vec<String>>,
    /// Length in characters.
    #[serde(default)]
    pub length_gt: Option<usize>,
    #[serde(default)]
    pub length_lt: Option<usize>,
    /// The value is a number and compares so.
    #[serde(default)]
    pub number_gt: Option<f64>,
    #[serde(default)]
    pub number_lt: Option<f64>,
    #[serde(default)]
    pub number_eq: Option<f64>,
}

/// What a custom rule does when it matches.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Add the rule's severity to the anomaly score (default).
    #[default]
    Score,
    /// Block whatever the score (in `block` mode).
    Block,
}

/// A rule of your own.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCustomRule {
    /// 100000 or above, unique.
    pub id: RuleId,
    /// What it detects (shown in audit).
    pub description: String,
    /// Targets it looks at, as in exclusions (`query:*`, `header:user-agent`, `body:$.name`,
    /// `path`), plus `client_ip`. Required.
    pub targets: Vec<String>,
    /// The transformation chain applied first: `none` (default), `decoded`, `canonical`,
    /// `sql`, `shell`, `path` (see docs/waf.md).
    #[serde(default)]
    pub transform: Option<String>,
    pub operator: RawOperator,
    /// Match when the operator does not.
    #[serde(default)]
    pub negate: bool,
    /// `critical` (default), `error`, `warning`, `notice`.
    #[serde(default)]
    pub severity: Option<String>,
    /// The lowest paranoia level the rule runs at. Default 1.
    #[serde(default)]
    pub paranoia: Option<u8>,
    /// `score` (default) or `block`.
    #[serde(default)]
    pub action: Action,
}

// ---------------------------------------------------------------------------------------------
// Compiled

/// A target pattern: `location:name-glob` or a bare location.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetPattern {
    /// The pattern as written (for explanations).
    pub text: Arc<str>,
    glob: Vec<GlobPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GlobPart {
    Lit(String),
    Star,
}

impl TargetPattern {
    pub fn parse(text: &str) -> Result<TargetPattern, String> {
        let t = text.trim();
        let (loc, _) = t.split_once(':').unwrap_or((t, ""));
        if !matches!(
            loc,
            "path" | "query" | "header" | "cookie" | "body" | "client_ip" | "*"
        ) {
            return Err(format!(
                "\"{text}\": a target starts with path, query, header, cookie, body or client_ip"
            ));
        }
        let mut glob = Vec::new();
        let mut lit = String::new();
        for c in t.chars() {
            if c == '*' {
                if !lit.is_empty() {
                    glob.push(GlobPart::Lit(std::mem::take(&mut lit)));
                }
                if glob.last() != Some(&GlobPart::Star) {
                    glob.push(GlobPart::Star);
                }
            } else {
                // Header names are matched lowercase.
                lit.push(if loc == "header" {
                    c.to_ascii_lowercase()
                } else {
                    c
                });
            }
        }
        if !lit.is_empty() {
            glob.push(GlobPart::Lit(lit));
        }
        Ok(TargetPattern {
            text: Arc::from(t),
            glob,
        })
    }

    /// Whether an exclusion key (`query:q`, `path`) matches. A bare location (`query`)
    /// matches every item of it.
    pub fn matches(&self, key: &str) -> bool {
        if let [GlobPart::Lit(l)] = self.glob.as_slice()
            && !l.contains(':')
        {
            return key == l
                || key
                    .strip_prefix(l.as_str())
                    .is_some_and(|r| r.starts_with(':'));
        }
        glob_match(&self.glob, key)
    }
}

/// Matches `s` against literal parts and stars with the classic greedy algorithm: on a mismatch
/// only the last star is re-tried one character further, so the cost is bounded by
/// `len(s) × parts` whatever the number of stars (target names are client-chosen).
fn glob_match(parts: &[GlobPart], s: &str) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    // (part index after the last star, position in s where that star's match ends)
    let mut retry: Option<(usize, usize)> = None;
    loop {
        match parts.get(p) {
            Some(GlobPart::Star) => {
                p += 1;
                retry = Some((p, i));
                continue;
            }
            Some(GlobPart::Lit(l)) if s.get(i..).is_some_and(|r| r.starts_with(l.as_str())) => {
                p += 1;
                i += l.len();
                continue;
            }
            None if i == s.len() => return true,
            _ => {}
        }
        // Mismatch: let the last star swallow one more character, or fail.
        let Some((rp, ri)) = retry else {
            return false;
        };
        let Some(c) = s.get(ri..).and_then(|r| r.chars().next()) else {
            return false;
        };
        let next = ri + c.len_utf8();
        retry = Some((rp, next));
        p = rp;
        i = next;
    }
}

/// One exclusion, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Exclusion {
    pub rules: Vec<RuleId>,
    pub classes: Vec<Class>,
    pub targets: Vec<TargetPattern>,
}

impl Exclusion {
    pub fn covers(&self, rule: RuleId, class: Class, key: &str) -> bool {
        let rule_ok = (self.rules.is_empty() && self.classes.is_empty())
            || self.rules.contains(&rule)
            || self.classes.contains(&class);
        rule_ok && (self.targets.is_empty() || self.targets.iter().any(|t| t.matches(key)))
    }
}

/// A custom rule's operator, compiled.
#[derive(Debug, Clone)]
pub enum Operator {
    Regex(Regex),
    Contains(String),
    StartsWith(String),
    EndsWith(String),
    Equals(String),
    IpIn(Vec<IpNet>),
    LengthGt(usize),
    LengthLt(usize),
    NumberGt(f64),
    NumberLt(f64),
    NumberEq(f64),
}

impl PartialEq for Operator {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Operator::Regex(a), Operator::Regex(b)) => a.as_str() == b.as_str(),
            (Operator::Contains(a), Operator::Contains(b))
            | (Operator::StartsWith(a), Operator::StartsWith(b))
            | (Operator::EndsWith(a), Operator::EndsWith(b))
            | (Operator::Equals(a), Operator::Equals(b)) => a == b,
            (Operator::IpIn(a), Operator::IpIn(b)) => a == b,
            (Operator::LengthGt(a), Operator::LengthGt(b))
            | (Operator::LengthLt(a), Operator::LengthLt(b)) => a == b,
            (Operator::NumberGt(a), Operator::NumberGt(b))
            | (Operator::NumberLt(a), Operator::NumberLt(b))
            | (Operator::NumberEq(a), Operator::NumberEq(b)) => a == b,
            _ => false,
        }
    }
}

impl Operator {
    /// The matched part (for the snippet), or `None`.
    pub fn find<'v>(&self, v: &'v str) -> Option<&'v str> {
        let num = || v.trim().parse::<f64>().ok().filter(|n| n.is_finite());
        match self {
            Operator::Regex(r) => r.find(v).map(|m| m.as_str()),
            Operator::Contains(s) => v.find(s.as_str()).map(|i| &v[i..i + s.len()]),
            Operator::StartsWith(s) => v.starts_with(s.as_str()).then_some(v),
            Operator::EndsWith(s) => v.ends_with(s.as_str()).then_some(v),
            Operator::Equals(s) => (v == s).then_some(v),
            // An IPv4 client on a dual-stack listener (`::ffff:192.0.2.1`) is in IPv4 lists.
            Operator::IpIn(nets) => v
                .trim()
                .parse::<IpAddr>()
                .ok()
                .filter(|ip| {
                    let v4 = portcullis_core::addr::canonical(*ip);
                    nets.iter().any(|n| n.contains(ip) || n.contains(&v4))
                })
                .map(|_| v),
            Operator::LengthGt(n) => (v.chars().count() > *n).then_some(v),
            Operator::LengthLt(n) => (v.chars().count() < *n).then_some(v),
            Operator::NumberGt(n) => num().filter(|x| x > n).map(|_| v),
            Operator::NumberLt(n) => num().filter(|x| x < n).map(|_| v),
            Operator::NumberEq(n) => num().filter(|x| x == n).map(|_| v),
        }
    }
}

/// A custom rule, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomRule {
    pub id: RuleId,
    pub description: Arc<str>,
    pub targets: Vec<TargetPattern>,
    /// Whether one of the targets is `client_ip`.
    pub client_ip: bool,
    pub view: View,
    pub operator: Operator,
    pub negate: bool,
    pub severity: Severity,
    pub paranoia: u8,
    pub action: Action,
}

/// A route's WAF settings, compiled (gateway-wide defaults with the route's overrides).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteWaf {
    pub mode: Mode,
    pub paranoia: u8,
    pub threshold: u32,
    pub inspect_body_bytes: u64,
    pub on_body_over_limit: OverLimit,
    pub limits: ExtractLimits,
    pub exclusions: Vec<Exclusion>,
    pub custom_rules: Vec<CustomRule>,
    pub api: ApiRules,
    /// The `api` settings as written, gateway-wide values filled in (a route inherits what
    /// it leaves out).
    pub api_raw: RawApiRules,
    /// The route's upstream may speak HTTP/2 (`protocol: http2`, or `auto` whose targets are
    /// all TLS ones),
    /// as a gRPC server must: only then may a call labelled gRPC whose body has not begun
    /// stream on uninspected (a bidirectional stream may wait for the server to speak first).
    /// Set by the pipeline from the route's upstream, not written in `waf:`.
    pub grpc_streams: bool,
}

impl Default for RouteWaf {
    fn default() -> Self {
        RouteWaf {
            mode: Mode::Block,
            paranoia: 1,
            threshold: 5,
            inspect_body_bytes: DEFAULT_INSPECT_BYTES,
            on_body_over_limit: OverLimit::Reject,
            limits: ExtractLimits::default(),
            exclusions: Vec::new(),
            custom_rules: Vec::new(),
            api: ApiRules::default(),
            api_raw: RawApiRules::default(),
            grpc_streams: false,
        }
    }
}

impl RouteWaf {
    /// Whether a body over the inspection limit, sent or inflated that long, goes on
    /// uninspected with rule 1004 recorded rather than being refused (413): under
    /// `on_body_over_limit: pass`, and in `detect` mode, which refuses nothing.
    pub fn passes_over_limit(&self) -> bool {
        self.on_body_over_limit == OverLimit::Pass || self.mode == Mode::Detect
    }
}

pub const DEFAULT_INSPECT_BYTES: u64 = 1 << 20;

/// The gateway-wide `waf:`, compiled (each route's settings start from it).
pub type WafSettings = RouteWaf;

/// Compiles the gateway-wide `waf:`.
pub fn compile(raw: &RawWaf, e: &mut ConfigErrors) -> WafSettings {
    let mut seen = HashSet::new();
    let mut out = RouteWaf::default();
    apply(&mut out, raw, "waf", &mut seen, e);
    out
}

/// Compiles a route's `waf:` over the gateway-wide settings.
pub fn compile_route(
    raw: Option<&RawWaf>,
    base: &WafSettings,
    path: &str,
    e: &mut ConfigErrors,
) -> RouteWaf {
    let mut out = base.clone();
    if let Some(raw) = raw {
        // Custom rule ids are unique across the gateway-wide list and the route's.
        let mut seen: HashSet<RuleId> = base.custom_rules.iter().map(|r| r.id).collect();
        apply(&mut out, raw, &format!("{path}.waf"), &mut seen, e);
    }
    out
}

fn apply(
    out: &mut RouteWaf,
    raw: &RawWaf,
    p: &str,
    seen: &mut HashSet<RuleId>,
    e: &mut ConfigErrors,
) {
    if let Some(m) = raw.mode {
        out.mode = m;
    }
    if let Some(pl) = raw.paranoia {
        if (1..=4).contains(&pl) {
            out.paranoia = pl;
        } else {
            e.push(
                format!("{p}.paranoia"),
                format!("{pl} is not a paranoia level (1 to 4)"),
            );
        }
    }
    if let Some(t) = raw.threshold {
        if t == 0 {
            e.push(
                format!("{p}.threshold"),
                "must be at least 1 (0 would block every request)",
            );
        } else {
            out.threshold = t;
        }
    }
    if let Some(s) = &raw.inspect_body_bytes {
        let n = s.compile(&format!("{p}.inspect_body_bytes"), e);
        if n == 0 {
            e.push(format!("{p}.inspect_body_bytes"), "must be at least 1 byte");
        } else {
            out.inspect_body_bytes = n;
        }
    }
    if let Some(o) = raw.on_body_over_limit {
        out.on_body_over_limit = o;
    }
    if let Some(d) = raw.max_depth {
        if d == 0 || d > 512 {
            e.push(format!("{p}.max_depth"), format!("{d} is outside 1 to 512"));
        } else {
            out.limits.max_depth = d;
        }
    }
    if let Some(n) = raw.max_values {
        if n == 0 {
            e.push(format!("{p}.max_values"), "must be at least 1");
        } else {
            out.limits.max_targets = n;
        }
    }
    for (i, x) in raw.exclusions.iter().enumerate() {
        if let Some(c) = compile_exclusion(x, &format!("{p}.exclusions[{i}]"), e) {
            out.exclusions.push(c);
        }
    }
    for (i, r) in raw.custom_rules.iter().enumerate() {
        if let Some(c) = compile_custom(r, &format!("{p}.custom_rules[{i}]"), seen, e) {
            out.custom_rules.push(c);
        }
    }
    if let Some(a) = &raw.api {
        let merged = a.inherit(&out.api_raw);
        out.api = api::compile(&merged, &format!("{p}.api"), e);
        out.api_raw = merged;
    }
}

/// Parses an attack class name (`sqli`, `command-injection` …).
pub fn parse_class(s: &str) -> Option<Class> {
    const ALL: &[Class] = &[
        Class::Protocol,
        Class::Sqli,
        Class::Xss,
        Class::CommandInjection,
        Class::Traversal,
        Class::Ssrf,
        Class::Xxe,
        Class::Nosql,
        Class::Ldap,
        Class::Ssti,
        Class::Log4Shell,
        Class::Crlf,
        Class::Scanner,
        Class::ParameterPollution,
        Class::MassAssignment,
        Class::ApiAbuse,
        Class::Custom,
    ];
    ALL.iter().copied().find(|c| c.as_str() == s)
}

fn compile_exclusion(x: &RawExclusion, p: &str, e: &mut ConfigErrors) -> Option<Exclusion> {
    let before = e.len();
    if x.rules.is_empty() && x.classes.is_empty() && x.targets.is_empty() {
        e.push(
            p,
            "name the rules, classes or targets it excludes (with none it excludes every rule \
             everywhere; turn the WAF off with mode: off)",
        );
    }
    let known: HashSet<RuleId> = crate::detect::all_rules().map(|r| r.id).collect();
    for (i, r) in x.rules.iter().enumerate() {
        if *r < 100_000 && !known.contains(r) {
            e.push(
                format!("{p}.rules[{i}]"),
                format!("no built-in rule has id {r}"),
            );
        }
    }
    let mut classes = Vec::new();
    for (i, c) in x.classes.iter().enumerate() {
        match parse_class(c) {
            Some(c) => classes.push(c),
            None => e.push(
                format!("{p}.classes[{i}]"),
                format!("\"{c}\" is not an attack class"),
            ),
        }
    }
    let mut targets = Vec::new();
    for (i, t) in x.targets.iter().enumerate() {
        match TargetPattern::parse(t) {
            Ok(t) => targets.push(t),
            Err(m) => e.push(format!("{p}.targets[{i}]"), m),
        }
    }
    (e.len() == before).then(|| Exclusion {
        rules: x.rules.clone(),
        classes,
        targets,
    })
}

/// Parses a view name as written in `transform:`.
pub fn parse_view(s: &str) -> Option<View> {
    Some(match s {
        "none" | "raw" => View::Raw,
        "decoded" => View::Decoded,
        "canonical" => View::Canonical,
        "sql" => View::Sql,
        "shell" => View::Shell,
        "path" => View::Path,
        _ => return None,
    })
}

fn parse_severity(s: &str) -> Option<Severity> {
    Some(match s {
        "critical" => Severity::Critical,
        "error" => Severity::Error,
        "warning" => Severity::Warning,
        "notice" => Severity::Notice,
        _ => return None,
    })
}

/// Longest compiled custom regex, in bytes of program (keeps a hostile config from costing
/// every request a huge automaton).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn compile_custom(
    r: &RawCustomRule,
    p: &str,
    seen: &mut HashSet<RuleId>,
    e: &mut ConfigErrors,
) -> Option<CustomRule> {
    let before = e.len();
    if r.id < 100_000 {
        e.push(
            format!("{p}.id"),
            format!(
                "{} is reserved for built-in rules (custom ids start at 100000)",
                r.id
            ),
        );
    } else if !seen.insert(r.id) {
        e.push(
            format!("{p}.id"),
            format!("{} is used by another custom rule", r.id),
        );
    }
    if r.description.trim().is_empty() {
        e.push(format!("{p}.description"), "must say what the rule detects");
    }
    if r.targets.is_empty() {
        e.push(
            format!("{p}.targets"),
            "name at least one target (e.g. query:*, body:*, header:user-agent)",
        );
    }
    let mut targets = Vec::new();
    for (i, t) in r.targets.iter().enumerate() {
        match TargetPattern::parse(t) {
            Ok(t) => targets.push(t),
            Err(m) => e.push(format!("{p}.targets[{i}]"), m),
        }
    }
    let client_ip = targets.iter().any(|t| &*t.text == "client_ip");
    let view = match r.transform.as_deref() {
        None => View::Raw,
        Some(v) => parse_view(v).unwrap_or_else(|| {
            e.push(
                format!("{p}.transform"),
                format!(
                    "\"{v}\" is not a transformation (none, decoded, canonical, sql, shell, path)"
                ),
            );
            View::Raw
        }),
    };
    let op = format!("{p}.operator");
    let operator = compile_operator(&r.operator, &op, e)?;
    let severity = match r.severity.as_deref() {
        None => Severity::Critical,
        Some(s) => parse_severity(s).unwrap_or_else(|| {
            e.push(
                format!("{p}.severity"),
                format!("\"{s}\" is not a severity (critical, error, warning, notice)"),
            );
            Severity::Critical
        }),
    };
    let paranoia = r.paranoia.unwrap_or(1);
    if !(1..=4).contains(&paranoia) {
        e.push(
            format!("{p}.paranoia"),
            format!("{paranoia} is not a paranoia level (1 to 4)"),
        );
    }
    (e.len() == before).then(|| CustomRule {
        id: r.id,
        description: Arc::from(r.description.as_str()),
        targets,
        client_ip,
        view,
        operator,
        negate: r.negate,
        severity,
        paranoia,
        action: r.action,
    })
}

fn compile_operator(o: &RawOperator, op: &str, e: &mut ConfigErrors) -> Option<Operator> {
    let set = [
        o.regex.is_some(),
        o.contains.is_some(),
        o.starts_with.is_some(),
        o.ends_with.is_some(),
        o.equals.is_some(),
        o.ip_in.is_some(),
        o.length_gt.is_some(),
        o.length_lt.is_some(),
        o.number_gt.is_some(),
        o.number_lt.is_some(),
        o.number_eq.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if set != 1 {
        e.push(
            op,
            "give exactly one of regex, contains, starts_with, ends_with, equals, ip_in, length_gt, length_lt, number_gt, number_lt, number_eq",
        );
        return None;
    }
    let finite = |n: f64, e: &mut ConfigErrors| {
        if n.is_finite() {
            Some(n)
        } else {
            e.push(op, "the number must be finite");
            None
        }
    };
    Some(if let Some(s) = &o.regex {
        match regex::RegexBuilder::new(s)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(re) => Operator::Regex(re),
            Err(err) => {
                e.push(
                    format!("{op}.regex"),
                    format!("invalid regular expression: {err}"),
                );
                return None;
            }
        }
    } else if let Some(s) = &o.contains {
        Operator::Contains(s.clone())
    } else if let Some(s) = &o.starts_with {
        Operator::StartsWith(s.clone())
    } else if let Some(s) = &o.ends_with {
        Operator::EndsWith(s.clone())
    } else if let Some(s) = &o.equals {
        Operator::Equals(s.clone())
    } else if let Some(list) = &o.ip_in {
        let mut nets = Vec::new();
        for (i, n) in list.iter().enumerate() {
            let parsed = n
                .parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => nets.push(net),
                Err(_) => e.push(
                    format!("{op}.ip_in[{i}]"),
                    format!("\"{n}\" is not an address or CIDR network"),
                ),
            }
        }
        Operator::IpIn(nets)
    } else if let Some(n) = o.length_gt {
        Operator::LengthGt(n)
    } else if let Some(n) = o.length_lt {
        Operator::LengthLt(n)
    } else if let Some(n) = o.number_gt {
        Operator::NumberGt(finite(n, e)?)
    } else if let Some(n) = o.number_lt {
        Operator::NumberLt(finite(n, e)?)
    } else if let Some(n) = o.number_eq {
        Operator::NumberEq(finite(n, e)?)
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> TargetPattern {
        TargetPattern::parse(s).unwrap()
    }

    #[test]
    fn target_patterns() {
        assert!(pat("query:q").matches("query:q"));
        assert!(!pat("query:q").matches("query:qq"));
        assert!(pat("query").matches("query:anything"));
        assert!(!pat("query").matches("queryx:a"));
        assert!(pat("path").matches("path"));
        assert!(pat("body:$.items[*].note").matches("body:$.items[12].note"));
        assert!(!pat("body:$.items[*].note").matches("body:$.items[12].name"));
        assert!(pat("header:Referer").matches("header:referer"));
        assert!(pat("*").matches("cookie:x"));
        assert!(pat("body:$.*.note").matches("body:$.a.b.note"));
        assert!(pat("body:*x*y").matches("body:axbxcy"));
        assert!(!pat("body:*x*y").matches("body:axbxcyz"));
        assert!(pat("query:é*").matches("query:éa"));
        // Many stars against a long name stay cheap (no exponential backtracking).
        let long = format!("body:{}", "a".repeat(5000));
        assert!(!pat("body:*a*a*a*a*a*a*a*a*b").matches(&long));
        assert!(TargetPattern::parse("nowhere:x").is_err());
    }

    /// An IPv4 client on a dual-stack listener (`::ffff:a.b.c.d`) is in an IPv4 list.
    #[test]
    fn ip_in_matches_a_mapped_ipv4_client() {
        let op = Operator::IpIn(vec!["192.0.2.0/24".parse().unwrap()]);
        assert!(op.find("192.0.2.9").is_some());
        assert!(op.find("::ffff:192.0.2.9").is_some());
        assert!(op.find("::ffff:198.51.100.9").is_none());
        assert!(op.find("2001:db8::1").is_none());
    }

    #[test]
    fn route_overrides_and_adds() {
        let mut e = ConfigErrors::new();
        let base: RawWaf = serde_yaml_ng::from_str(
            "paranoia: 2\nexclusions: [{rules: [1001], targets: ['query:q']}]\ncustom_rules: [{id: 100001, description: d, targets: ['query:*'], operator: {contains: evil}}]",
        )
        .unwrap();
        let base = compile(&base, &mut e);
        let route: RawWaf = serde_yaml_ng::from_str(
            "mode: detect\nexclusions: [{classes: [xss]}]\ncustom_rules: [{id: 100001, description: d, targets: ['query:*'], operator: {contains: x}}]",
        )
        .unwrap();
        let r = compile_route(Some(&route), &base, "routes[0]", &mut e);
        assert_eq!(r.mode, Mode::Detect);
        assert_eq!(r.paranoia, 2);
        assert_eq!(r.exclusions.len(), 2);
        let errs: Vec<String> = e.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            errs,
            vec!["routes[0].waf.custom_rules[0].id: 100001 is used by another custom rule"]
        );
    }

    #[test]
    fn every_error_has_its_path() {
        let mut e = ConfigErrors::new();
        let raw: RawWaf = serde_yaml_ng::from_str(
            "paranoia: 7\nthreshold: 0\ninspect_body_bytes: 12XB\nexclusions: [{rules: [4242], classes: [nope], targets: ['nowhere']}]\ncustom_rules: [{id: 5, description: '', targets: [], transform: weird, operator: {regex: '('}}, {id: 100002, description: d, targets: [client_ip], operator: {ip_in: [10.0.0.0/33]}, severity: fatal}]",
        )
        .unwrap();
        compile(&raw, &mut e);
        let errs: Vec<String> = e.iter().map(|x| x.path.clone()).collect();
        for p in [
            "waf.paranoia",
            "waf.threshold",
            "waf.inspect_body_bytes",
            "waf.exclusions[0].rules[0]",
            "waf.exclusions[0].classes[0]",
            "waf.exclusions[0].targets[0]",
            "waf.custom_rules[0].id",
            "waf.custom_rules[0].description",
            "waf.custom_rules[0].targets",
            "waf.custom_rules[0].transform",
            "waf.custom_rules[0].operator.regex",
            "waf.custom_rules[1].operator.ip_in[0]",
            "waf.custom_rules[1].severity",
        ] {
            assert!(errs.iter().any(|x| x == p), "missing {p} in {errs:?}");
        }
    }

    /// An exclusion naming no rule, class or target would exclude every rule everywhere,
    /// the protocol rules that block by themselves included: refused at its path.
    #[test]
    fn an_exclusion_of_nothing_is_refused() {
        let mut e = ConfigErrors::new();
        let raw: RawWaf = serde_yaml_ng::from_str(
            "exclusions: [{rules: [1100]}, {}, {rules: [], classes: [], targets: []}]",
        )
        .unwrap();
        let base = compile(&raw, &mut e);
        let route: RawWaf =
            serde_yaml_ng::from_str("exclusions: [{targets: ['query:q']}, {}]").unwrap();
        compile_route(Some(&route), &base, "routes[3]", &mut e);
        let errs: Vec<(String, String)> = e
            .iter()
            .map(|x| (x.path.clone(), x.message.clone()))
            .collect();
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "waf.exclusions[1]",
                "waf.exclusions[2]",
                "routes[3].waf.exclusions[1]"
            ]
        );
        assert!(errs[0].1.contains("mode: off"), "{errs:?}");
        assert_eq!(base.exclusions.len(), 1);
    }

    #[test]
    fn operators() {
        let re = Operator::Regex(Regex::new("ev+il").unwrap());
        assert_eq!(re.find("an evvil x"), Some("evvil"));
        assert_eq!(Operator::Contains("ab".into()).find("xaby"), Some("ab"));
        assert!(
            Operator::IpIn(vec!["10.0.0.0/8".parse().unwrap()])
                .find("10.2.3.4")
                .is_some()
        );
        assert!(
            Operator::IpIn(vec!["10.0.0.0/8".parse().unwrap()])
                .find("11.2.3.4")
                .is_none()
        );
        assert!(Operator::NumberGt(100.0).find("101").is_some());
        assert!(Operator::NumberGt(100.0).find("abc").is_none());
        assert!(Operator::NumberGt(100.0).find("NaN").is_none());
        assert!(Operator::LengthGt(3).find("abcd").is_some());
        assert!(Operator::LengthLt(3).find("abcd").is_none());
    }
}
