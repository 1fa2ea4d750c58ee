//! # portcullis-audit
//!
//! The audit trail: one JSON line per request — allowed, rejected or failed — written when its
//! answer has gone out (or was cut off).
//!
//! * **Takes**: an [`AuditEvent`] per finished request, built by the proxy from its request
//!   context, and the compiled [`portcullis_config::Audit`] settings.
//! * **Produces**: newline-delimited JSON on stdout, stderr or an append-only file, written by
//!   a thread of its own, so the request path never waits on I/O and events still go out
//!   while the gateway's runtime shuts down (requests cut off by a stop are audited then).
//! * **Rejects**: nothing per event. [`AuditSink::from_config`] fails when the file cannot be
//!   opened, when `output: file` has no path, or when the writer thread cannot be started.
//!
//! Invariants:
//! * Events never carry credentials: the only header values recorded as fields are
//!   `User-Agent` and `Host`, and there is deliberately no field for anything else (a WAF
//!   match's `snippet` quotes what matched in a value as the WAF masks it: never a cookie, a
//!   secret-named value, nor a URL's query or fragment). The path is recorded
//!   without its query string, which may hold secrets; [`AuditSink::emit`] strips a stray one,
//!   drops the `;` parameters of its segments (`;jsessionid=…`) and masks e-mail addresses,
//!   JWT-like tokens and card-like digit runs in it (see [`redact_path`]).
//! * The values a client chooses are bounded so that it cannot blow up audit lines (nor the
//!   queue of events waiting for a slow output): `path` to [`MAX_PATH_BYTES`], `method` to
//!   [`MAX_METHOD_BYTES`], `host` to [`MAX_HOST_BYTES`], `user_agent` to
//!   [`MAX_USER_AGENT_BYTES`] — cut on a char boundary and ended by [`TRUNCATED`], the marker
//!   included in the bound. Of a longer path only [`PATH_LOOKAHEAD_BYTES`] more are read, and
//!   each redaction step is one pass, so that its cost does not grow with the path either.
//! * [`AuditSink::emit`] never blocks: when the bounded channel is full ([`CHANNEL_CAPACITY`]
//!   events, or [`MAX_QUEUED_BYTES`] of them) or the writer has gone, the event is dropped and
//!   counted in [`AuditSink::dropped`].
//! * Each event is exactly one line; output is flushed after every batch so a reader of the
//!   process's stdout sees events promptly.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portcullis_config::AuditOutput;
use serde::Serialize;

/// Events queued between the request path and the writer before new ones are dropped.
pub const CHANNEL_CAPACITY: usize = 8192;

/// Memory the events queued between the request path and the writer may hold (as counted by
/// their fields' allocations) before new ones are dropped: an event can weigh tens of kilobytes
/// (WAF matches, contract violations, an upstream error excerpt), so the count alone does not
/// bound it.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// Longest `user_agent` recorded, in bytes.
pub const MAX_USER_AGENT_BYTES: usize = 256;

/// Longest `path` recorded, in bytes.
pub const MAX_PATH_BYTES: usize = 2048;

/// How far past its first [`MAX_PATH_BYTES`] a longer path is read, so that a secret across
/// that cut is recognised whole (an e-mail address's domain, up to 253 bytes, after a
/// percent-encoded local part of 64 characters; a card number); the rest is never looked at.
pub const PATH_LOOKAHEAD_BYTES: usize = 512;

/// Longest `method` recorded, in bytes.
pub const MAX_METHOD_BYTES: usize = 32;

/// Longest `host` recorded, in bytes.
pub const MAX_HOST_BYTES: usize = 256;

/// Ends a `path`, `method`, `host` or `user_agent` that was cut to its limit (the same marker
/// as an upstream error excerpt's).
pub const TRUNCATED: &str = "…[truncated]";

/// Stands for the `;` parameters dropped from a path segment (`/app;jsessionid=X/y` is
/// recorded as `/app;…/y`).
pub const PARAMS_DROPPED: &str = "…";

/// Most events serialised into one write; bounds the writer's buffer.
const MAX_BATCH: usize = 256;

/// How long the writer lets events gather once one arrives after it was idle: the delay of an
/// audit line, and what keeps a busy gateway from waking the writer for every event.
const GATHER: Duration = Duration::from_millis(2);

/// How often, at most, the audit file's path is looked at again (see [`FollowedFile`]).
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Forwarded and answered (whatever the upstream's status).
    Allowed,
    /// Refused by a security or policy step.
    Rejected,
    /// Accepted but not answered: upstream unreachable, timed out, internal error.
    Failed,
    /// Given up before its answer was ready: the client reset the stream, or the connection
    /// ended under it. Status 499.
    Abandoned,
    /// Still unanswered when the gateway stopped: past the drain deadline its connection was
    /// closed without an answer. Status 444.
    Interrupted,
}

/// One request, as recorded. Field names are the JSON keys; absent values are `null` so every
/// line has the same shape.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-24T07:15:02.123Z`.
    pub time: String,
    pub request_id: String,
    pub listener: String,
    /// After trusted-proxy resolution.
    pub client_ip: String,
    /// The TCP peer, `ip:port`.
    pub peer: String,
    pub method: String,
    pub host: Option<String>,
    /// Normalised path only, never the query string.
    pub path: String,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub target: Option<String>,
    pub status: u16,
    /// Milliseconds from the request's arrival to its answer's head (or to its end, for a
    /// request given up before an answer).
    pub latency_ms: f64,
    /// Milliseconds from the request's arrival to the end of its answer: the last body byte
    /// handed to the client's connection, or the answer cut off.
    pub duration_ms: f64,
    /// Body bytes of the answer handed to the client's connection (the head not counted).
    pub response_bytes: u64,
    /// Whether the answer's whole body was handed to the client's connection: `false` for an
    /// answer cut off (the client stopped reading or went away, the upstream's body broke or
    /// fell short, a stop past its drain deadline) and for a request never answered.
    pub response_complete: bool,
    pub outcome: Outcome,
    /// The step that rejected.
    pub stage: Option<String>,
    /// Stable reason code (`RejectReason::code`).
    pub reason: Option<String>,
    pub tls: bool,
    /// `HTTP/1.1`, `HTTP/2`.
    pub http_version: String,
    pub user_agent: Option<String>,
    /// The verified caller, when a credential verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthAudit>,
    /// Why a presented credential was refused (precise; never sent to the client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failure: Option<String>,
    /// The limit that refused the request (`rate_limited`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// The authorization decision, on routes that authorize.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<AuthzAudit>,
    /// What the WAF found, when it found anything: every rule that matched, where, after
    /// which transformations, with a masked snippet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waf: Option<WafAudit>,
    /// The API contract (OpenAPI) of the route: the operation, and the violations of the
    /// request and of the response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<ContractAudit>,
    /// An upstream error body the client never saw (replaced by a generic problem): its
    /// status and a masked, truncated excerpt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_error: Option<UpstreamErrorAudit>,
}

/// The contract step's findings.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContractAudit {
    pub operation: String,
    /// `block` or `detect`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_violations: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_violations: Vec<String>,
}

impl ContractAudit {
    pub fn from_report(r: &portcullis_core::ContractReport) -> Self {
        ContractAudit {
            operation: r.operation.to_string(),
            mode: if r.enforced { "block" } else { "detect" },
            request_violations: r.request.iter().map(ToString::to_string).collect(),
            response_violations: r.response.iter().map(ToString::to_string).collect(),
        }
    }
}

/// An upstream error response whose body was replaced.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpstreamErrorAudit {
    pub status: u16,
    /// The start of the original body, secrets masked.
    pub body: String,
}

/// The WAF's verdict, explained.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WafAudit {
    /// `block` or `detect`.
    pub mode: &'static str,
    pub paranoia: u8,
    pub score: u32,
    pub threshold: u32,
    /// Whether the request was blocked (in `detect` mode: would have been).
    pub blocked: bool,
    pub matches: Vec<WafMatchAudit>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WafMatchAudit {
    pub rule: u32,
    pub class: &'static str,
    pub severity: &'static str,
    pub message: String,
    /// `query:id`, `header:user-agent`, `body:$.items[0].name`, `path`.
    pub target: String,
    pub transforms: &'static str,
    /// At most 64 characters of what matched; digit runs and e-mail local parts masked.
    pub snippet: String,
    /// Turned off by an exclusion (recorded, not scored).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub excluded: bool,
}

/// Most WAF matches kept in one audit event.
pub const MAX_WAF_MATCHES: usize = 32;

impl WafAudit {
    pub fn from_report(r: &portcullis_core::WafReport) -> WafAudit {
        WafAudit {
            mode: r.mode,
            paranoia: r.paranoia,
            score: r.score,
            threshold: r.threshold,
            blocked: r.blocked,
            matches: r
                .matches
                .iter()
                .take(MAX_WAF_MATCHES)
                .map(|m| WafMatchAudit {
                    rule: m.rule,
                    class: m.class,
                    severity: m.severity,
                    message: m.message.to_string(),
                    target: m.target.clone(),
                    transforms: m.transforms,
                    snippet: m.snippet.clone(),
                    excluded: m.excluded,
                })
                .collect(),
        }
    }
}

/// What authorization decided, and which rule decided it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuthzAudit {
    pub allowed: bool,
    /// The rule that denied (`route:orders`, `policy:p`, `owner`, `tenant`, `risk`,
    /// `rego:data.x.allow`, `opa:main/x/allow`, `require`, `default`), or `allow`.
    pub rule: String,
    /// Why; for `allow`, the rules that held.
    pub reason: String,
    /// Rules in shadow mode: what they would have decided.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadow: Vec<RuleAudit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub risk_signals: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleAudit {
    pub rule: String,
    pub allowed: bool,
    pub reason: String,
}

/// Longest policy reason kept in an audit event.
pub const MAX_REASON_BYTES: usize = 512;

/// Who called, as verified.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuthAudit {
    /// `jwt`, `introspection`, `api_key`, `mtls`.
    pub method: &'static str,
    /// The issuer, endpoint or key table that verified it (its configured name).
    pub authority: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    /// A token's `jti`, an API key's id, a certificate's fingerprint.
    pub credential_id: Option<String>,
}

impl AuditEvent {
    /// The memory the event holds, in bytes: its own size and its fields' allocations. What
    /// [`MAX_QUEUED_BYTES`] counts; reads lengths only.
    pub fn footprint(&self) -> usize {
        fn opt(s: &Option<String>) -> usize {
            s.as_ref().map_or(0, String::capacity)
        }
        fn list(v: &Vec<String>) -> usize {
            v.capacity() * size_of::<String>() + v.iter().map(String::capacity).sum::<usize>()
        }
        let strings = [
            &self.time,
            &self.request_id,
            &self.listener,
            &self.client_ip,
            &self.peer,
            &self.method,
            &self.path,
            &self.http_version,
        ];
        let optional = [
            &self.host,
            &self.route,
            &self.upstream,
            &self.target,
            &self.stage,
            &self.reason,
            &self.user_agent,
            &self.auth_failure,
            &self.rate_limit,
        ];
        let mut n = size_of::<AuditEvent>()
            + strings.iter().map(|s| s.capacity()).sum::<usize>()
            + optional.iter().map(|s| opt(s)).sum::<usize>();
        if let Some(a) = &self.auth {
            n += a.authority.capacity() + opt(&a.subject) + opt(&a.client_id);
            n += opt(&a.credential_id);
        }
        if let Some(a) = &self.authz {
            n += a.rule.capacity() + a.reason.capacity();
            n += a.shadow.capacity() * size_of::<RuleAudit>();
            n += a
                .shadow
                .iter()
                .map(|r| r.rule.capacity() + r.reason.capacity())
                .sum::<usize>();
            n += a.risk_signals.capacity() * size_of::<&str>();
        }
        if let Some(w) = &self.waf {
            n += w.matches.capacity() * size_of::<WafMatchAudit>();
            n += w
                .matches
                .iter()
                .map(|m| m.message.capacity() + m.target.capacity() + m.snippet.capacity())
                .sum::<usize>();
        }
        if let Some(c) = &self.contract {
            n += c.operation.capacity() + list(&c.request_violations);
            n += list(&c.response_violations);
        }
        if let Some(u) = &self.upstream_error {
            n += u.body.capacity();
        }
        n
    }

    /// Enforces the size and secrecy invariants in place: drops a query string from `path`,
    /// redacts it ([`redact_path`]), and cuts `path`, `method`, `host` and `user_agent` to
    /// their limits ([`cut_marked`]). The path is redacted before it is cut, so that a secret
    /// straddling the cut is recognised whole. Of a path longer than [`MAX_PATH_BYTES`] and
    /// [`PATH_LOOKAHEAD_BYTES`] together, only that much is read: what is recorded is its first
    /// [`MAX_PATH_BYTES`] redacted (a secret starting there masked whole), cut and marked.
    pub fn sanitize(&mut self) {
        // A query, or a fragment (never sent by a client that follows RFC 9112, but a refused
        // head records its target as it came).
        if let Some(i) = self.path.find(['?', '#']) {
            self.path.truncate(i);
        }
        redact_and_cut_path(&mut self.path);
        cut_marked(&mut self.method, MAX_METHOD_BYTES);
        if let Some(h) = self.host.as_mut() {
            cut_marked(h, MAX_HOST_BYTES);
        }
        if let Some(ua) = self.user_agent.as_mut() {
            cut_marked(ua, MAX_USER_AGENT_BYTES);
        }
        if let Some(w) = self.waf.as_mut() {
            for m in &mut w.matches {
                // Targets carry client-chosen names (JSON keys, parameter names).
                truncate_on_char_boundary(&mut m.target, MAX_REASON_BYTES);
            }
        }
        if let Some(a) = self.authz.as_mut() {
            truncate_on_char_boundary(&mut a.reason, MAX_REASON_BYTES);
            for s in &mut a.shadow {
                truncate_on_char_boundary(&mut s.reason, MAX_REASON_BYTES);
            }
        }
    }
}

/// Cuts `s` to at most `max` bytes without splitting a UTF-8 sequence.
pub fn truncate_on_char_boundary(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

/// Cuts `s` to at most `max` bytes, [`TRUNCATED`] included, when it is longer: the text is cut
/// on a char boundary and the marker appended. A `max` shorter than the marker cuts without it.
pub fn cut_marked(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    match max.checked_sub(TRUNCATED.len()) {
        Some(room) => {
            truncate_on_char_boundary(s, room);
            s.push_str(TRUNCATED);
        }
        None => truncate_on_char_boundary(s, max),
    }
}

/// Redacts `path` and cuts it to [`MAX_PATH_BYTES`], marked when cut. A long path is cut before
/// it is redacted, so that the work does not grow with it: the first [`MAX_PATH_BYTES`] are
/// kept, redacted with [`PATH_LOOKAHEAD_BYTES`] more to look at.
fn redact_and_cut_path(path: &mut String) {
    // Escapes of unreserved characters can spell a secret's digits or separators in a path
    // recorded as it came (a request refused before normalisation: `4111%2D1111…`, `%34111…`).
    // A segment (its name: `;` parameters are dropped anyway) that holds a secret once they
    // are decoded is recorded decoded, masked below; every other keeps its escapes, evidence of
    // what was sent (`%2e%2e`).
    let window = path.floor_char_boundary(MAX_PATH_BYTES + PATH_LOOKAHEAD_BYTES);
    if let Some(mut decoded) = path.get(..window).and_then(secrets_decoded) {
        decoded.push_str(path.get(window..).unwrap_or_default());
        *path = decoded;
    }
    if path.len() <= MAX_PATH_BYTES + PATH_LOOKAHEAD_BYTES {
        if let Some(p) = redact_path(path) {
            *path = p;
        }
        cut_marked(path, MAX_PATH_BYTES);
        return;
    }
    let keep = path.floor_char_boundary(MAX_PATH_BYTES);
    path.truncate(path.floor_char_boundary(MAX_PATH_BYTES + PATH_LOOKAHEAD_BYTES));
    let (redacted, end) = redact_until(path, keep);
    if let Some(p) = redacted {
        *path = p;
    }
    // What came from the bytes after `keep` goes, except the rest of a secret started before.
    truncate_on_char_boundary(path, end);
    truncate_on_char_boundary(path, MAX_PATH_BYTES - TRUNCATED.len());
    path.push_str(TRUNCATED);
    // The event waits in the queue with it: not with the whole path's memory.
    path.shrink_to_fit();
}

/// The path as the audit event records it, or `None` when it needs no change:
/// * the `;` parameters of each segment are dropped, the segment's name kept and the `;`
///   followed by [`PARAMS_DROPPED`]: `/app;jsessionid=X/y` → `/app;…/y` (a bare `;` stays);
/// * JWT-like tokens (`eyJ` and at least 8 base64url characters, with any `.`-separated parts
///   after it, not glued to a letter or digit before it) → `[jwt]`;
/// * e-mail addresses, with `@` or `%40` → their first character, `***` and the domain:
///   `/users/john.doe%40example.com` → `/users/j***%40example.com`; a domain may hold
///   non-ASCII characters, raw or percent-escaped (`ex%C3%A4mple.com`, as the normalised path
///   writes `exämple.com`);
/// * 13 to 19 digits (single `-`, space, `.`, `+`, `%20` or `%2B` allowed between them) not
///   inside a longer run of letters and digits (`_` is no letter: `card_4111…` is masked)
///   → `****` and the last four: `/cards/4111111111111111` → `/cards/****1111`. A 13-digit
///   millisecond timestamp is masked too; longer runs are kept.
///
/// Same shapes as the upstream error excerpt's masks. Each step is one pass over the path.
pub fn redact_path(path: &str) -> Option<String> {
    redact_until(path, path.len()).0
}

/// `path` with the segments whose name holds a secret once its unreserved escapes are decoded
/// ([`unreserved_decoded`]) so decoded, the others as they are; `None` when there are none.
fn secrets_decoded(path: &str) -> Option<String> {
    if !path.contains('%') {
        return None;
    }
    let mut changed = false;
    let segs: Vec<std::borrow::Cow<'_, str>> = path
        .split('/')
        .map(|seg| {
            let name = seg.split(';').next().unwrap_or_default();
            match unreserved_decoded(name).filter(|d| redact_path(d).is_some()) {
                Some(mut d) => {
                    changed = true;
                    d.push_str(seg.get(name.len()..).unwrap_or_default());
                    std::borrow::Cow::Owned(d)
                }
                None => std::borrow::Cow::Borrowed(seg),
            }
        })
        .collect();
    changed.then(|| segs.join("/"))
}

/// `path` with the percent-escapes of unreserved characters (letters, digits, `-`, `.`, `_`,
/// `~`) decoded, as the path normaliser decodes them; `None` when it holds none. A path
/// recorded as it came (a request refused before normalisation) can spell a card number's
/// digits or separators that way (`4111%2D1111…`, `%34111…`), which the masks would not see.
fn unreserved_decoded(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let unreserved_at = |i: usize| -> Option<u8> {
        if b.get(i) != Some(&b'%') {
            return None;
        }
        let v = hex(*b.get(i + 1)?)? * 16 + hex(*b.get(i + 2)?)?;
        let c = u8::try_from(v).ok()?;
        (c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')).then_some(c)
    };
    let first = (0..b.len()).find(|&i| unreserved_at(i).is_some())?;
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(b.get(..first)?);
    let mut i = first;
    while let Some(&c) = b.get(i) {
        match unreserved_at(i) {
            Some(d) => {
                out.push(d);
                i += 3;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// One redaction step: the rewritten text (`None`: unchanged) and where a position of its input
/// lands in it ([`Rewrite`]).
type Step = fn(&str, usize) -> (Option<String>, usize);

/// [`redact_path`], also telling where the position `stop` of `path` lands in the result.
fn redact_until(path: &str, stop: usize) -> (Option<String>, usize) {
    let steps: [Step; 4] = [drop_path_params, mask_jwts, mask_emails, mask_digit_runs];
    let mut cur: Option<String> = None;
    let mut stop = stop;
    for step in steps {
        let (next, at) = step(cur.as_deref().unwrap_or(path), stop);
        stop = at;
        if next.is_some() {
            cur = next;
        }
    }
    (cur, stop)
}

/// A copy of `s` with spans replaced, left to right, made only once something is replaced;
/// tracks where the position `stop` of `s` lands in it: a span starting before `stop` and
/// ending after it is kept whole (its replacement before the landing point), one starting at
/// or after `stop` falls after it.
struct Rewrite<'a> {
    s: &'a str,
    out: Option<String>,
    copied: usize,
    stop: usize,
    landed: Option<usize>,
}

impl<'a> Rewrite<'a> {
    fn new(s: &'a str, stop: usize) -> Self {
        Rewrite {
            s,
            out: None,
            copied: 0,
            stop,
            landed: None,
        }
    }

    /// Replaces `s[start..end]` by `with`; `start` is at or after the end of the last span.
    fn replace(&mut self, start: usize, end: usize, with: &str) {
        let o = self
            .out
            .get_or_insert_with(|| String::with_capacity(self.s.len()));
        if self.landed.is_none() && self.stop <= start {
            self.landed = Some(o.len() + self.stop.saturating_sub(self.copied));
        }
        o.push_str(self.s.get(self.copied..start).unwrap_or_default());
        o.push_str(with);
        if self.landed.is_none() && self.stop < end {
            self.landed = Some(o.len());
        }
        self.copied = end;
    }

    /// The copy (`None` when nothing was replaced) and where `stop` landed in it.
    fn finish(self) -> (Option<String>, usize) {
        let Some(mut o) = self.out else {
            return (None, self.stop);
        };
        let landed = self
            .landed
            .unwrap_or(o.len() + self.stop.saturating_sub(self.copied));
        o.push_str(self.s.get(self.copied..).unwrap_or_default());
        (Some(o), landed)
    }
}

/// `/a;x=1/b;y` → `/a;…/b;…`.
fn drop_path_params(path: &str, stop: usize) -> (Option<String>, usize) {
    let mut w = Rewrite::new(path, stop);
    let mut seg = 0;
    for part in path.split('/') {
        let end = seg + part.len();
        if let Some(semi) = part.find(';')
            && semi + 1 < part.len()
        {
            w.replace(seg + semi + 1, end, PARAMS_DROPPED);
        }
        seg = end + 1;
    }
    w.finish()
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// `eyJ` + 8 or more base64url characters, then any run of `.` and base64url characters; not
/// right after a letter or digit, unless that ends a percent-escape. Linear: a glued `eyJ` is
/// passed over before its run is read, and a run read whole is masked whole.
fn mask_jwts(s: &str, stop: usize) -> (Option<String>, usize) {
    let b = s.as_bytes();
    let mut w = Rewrite::new(s, stop);
    let mut from = 0;
    while let Some(at) = s.get(from..).and_then(|t| t.find("eyJ")).map(|i| i + from) {
        let head = at + 3;
        from = head;
        // A token starts a word: `/heyJudeSongs` is none (`%20eyJ…` is).
        let glued = at
            .checked_sub(1)
            .and_then(|p| b.get(p))
            .is_some_and(u8::is_ascii_alphanumeric)
            && !at.checked_sub(3).is_some_and(|p| is_escape(b, p));
        if glued {
            continue;
        }
        let first = b.get(head..).unwrap_or_default();
        let n = first.iter().take_while(|&&c| is_b64url(c)).count();
        if n < 8 {
            // Fewer than 8 bytes read: the search goes on right after `eyJ`.
            continue;
        }
        let rest = b.get(head + n..).unwrap_or_default();
        let end = head
            + n
            + rest
                .iter()
                .take_while(|&&c| c == b'.' || is_b64url(c))
                .count();
        w.replace(at, end, "[jwt]");
        from = end;
    }
    w.finish()
}

fn is_email_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// The length of the domain-label character at `i`: a letter, digit or `-` (1); a byte of a
/// non-ASCII character (1), or a percent-escape of one (3: `%C3`, how a normalised path writes
/// `ä` of an internationalised domain). `None` for anything else — `.`, `@` and the escapes of
/// ASCII characters (`%40`, `%2F`) among them, so that a domain never runs over an `@`.
fn label_char(b: &[u8], i: usize) -> Option<usize> {
    let c = *b.get(i)?;
    if c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80 {
        Some(1)
    } else if is_escape(b, i)
        && b.get(i + 1)
            .is_some_and(|h| matches!(h, b'8'..=b'9' | b'A'..=b'F' | b'a'..=b'f'))
    {
        Some(3)
    } else {
        None
    }
}

/// Where the domain of an e-mail address starting at `start` ends: labels of letters, digits,
/// `-` and non-ASCII characters (raw or percent-escaped: `ex%C3%A4mple.com`) joined by single
/// dots, at least two of them, the last starting with two letters or a non-ASCII character
/// (`example.com`, `mail.example.co.uk`, `xn--p1ai`, `%D1%80%D1%84`). `None` when what follows
/// is no such domain.
fn email_domain_end(b: &[u8], start: usize) -> Option<usize> {
    let mut pos = start;
    let mut labels = 0;
    let mut end = None;
    loop {
        let first = pos;
        while let Some(n) = label_char(b, pos) {
            pos += n;
        }
        if pos == first {
            break;
        }
        labels += 1;
        let head = b.get(first..).unwrap_or_default();
        let top_level = head
            .get(..2)
            .is_some_and(|h| h.iter().all(u8::is_ascii_alphabetic))
            || head.first().is_some_and(|&c| c >= 0x80 || c == b'%');
        if labels > 1 && top_level {
            end = Some(pos);
        }
        if b.get(pos) != Some(&b'.') {
            break;
        }
        pos += 1;
    }
    end
}

/// `local@domain.tld` or `local%40domain.tld` → first character, `***`, the rest from the `@`.
/// Linear: a domain is read from an `@` up to the next `@` or `%40` at most (neither is a
/// label character), so no byte is read by two of them.
fn mask_emails(s: &str, stop: usize) -> (Option<String>, usize) {
    let b = s.as_bytes();
    let mut w = Rewrite::new(s, stop);
    // Where the run of characters an address's local part may hold began.
    let mut local = 0;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let at_len = if c == b'@' {
            1
        } else if c == b'%' && b.get(i + 1..i + 3) == Some(b"40".as_slice()) {
            3
        } else {
            0
        };
        let domain_end = (at_len > 0 && local < i)
            .then(|| email_domain_end(b, i + at_len))
            .flatten();
        if let Some(end) = domain_end {
            w.replace(local + 1, i, "***");
            local = end;
            i = end;
            continue;
        }
        if !is_email_local(c) {
            local = i + 1;
        }
        i += 1;
    }
    w.finish()
}

/// A percent-escape (`%2F`) at `i`.
fn is_escape(b: &[u8], i: usize) -> bool {
    b.get(i) == Some(&b'%')
        && b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
        && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
}

/// 13 to 19 digits in groups joined by a single `-`, space, `.`, `+`, `%20` or `%2B`, not inside a
/// longer run of letters and digits (`_` and a percent-escape are boundaries: `card_4111…`,
/// `4111…_2024.pdf`, `%2F4111…`) → `****` and the last four digits. Of a longer sequence of
/// groups, the first whole groups that make 13 to 19 digits are masked (as a regular
/// expression's leftmost, longest match would), then the next. Dotted versions, dates and
/// addresses have fewer digits than that (`10.20.300.4000`, `2024.01.15`, `192.168.100.200`);
/// a dotted number of 13 or more (an OID, a decimal timestamp) is masked, as a 13-digit
/// millisecond timestamp is.
/// Linear: a sequence is read once, and each start in it looks at 20 groups at most.
fn mask_digit_runs(s: &str, stop: usize) -> (Option<String>, usize) {
    let b = s.as_bytes();
    let mut w = Rewrite::new(s, stop);
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut prev_word = false;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if is_escape(b, i) {
            prev_word = false;
            i += 3;
            continue;
        }
        if !c.is_ascii_digit() {
            prev_word = c.is_ascii_alphanumeric();
            i += 1;
            continue;
        }
        let startable = !prev_word;
        groups.clear();
        let mut g = i;
        loop {
            let n = b.get(g..).unwrap_or_default();
            let e = g + n.iter().take_while(|d| d.is_ascii_digit()).count();
            groups.push((g, e));
            let sep = match b.get(e) {
                Some(b'-' | b' ' | b'.' | b'+') => 1,
                // `%20` and `%2B`: a space and a `+` as a path writes them.
                Some(b'%')
                    if b.get(e + 1..e + 3)
                        .is_some_and(|x| x == b"20" || x.eq_ignore_ascii_case(b"2B")) =>
                {
                    3
                }
                _ => 0,
            };
            if sep > 0 && b.get(e + sep).is_some_and(u8::is_ascii_digit) {
                g = e + sep;
            } else {
                break;
            }
        }
        let last = groups.len() - 1;
        let seq_end = groups.get(last).map_or(i, |g| g.1);
        let ends_clean = b.get(seq_end).is_none_or(|c| !c.is_ascii_alphanumeric());
        let mut k = usize::from(!startable);
        while k <= last {
            let mut digits = 0;
            let mut best = None;
            for (j, &(gs, ge)) in groups.iter().enumerate().skip(k) {
                digits += ge - gs;
                if digits > 19 {
                    break;
                }
                if digits >= 13 && (j < last || ends_clean) {
                    best = Some(j);
                }
            }
            let (Some(j), Some(&(start, _)), Some(&(_, end))) =
                (best, groups.get(k), best.and_then(|j| groups.get(j)))
            else {
                k += 1;
                continue;
            };
            let span = s.get(start..end).unwrap_or_default();
            // The digits of the number: the `2` of a `%20` or `%2B` between groups is none of
            // them.
            let digits: Vec<char> = span
                .split('%')
                .enumerate()
                .flat_map(|(n, part)| part.chars().skip(if n == 0 { 0 } else { 2 }))
                .filter(char::is_ascii_digit)
                .collect();
            let mut masked = String::from("****");
            masked.extend(digits.iter().skip(digits.len().saturating_sub(4)));
            w.replace(start, end, &masked);
            k = j + 1;
        }
        prev_word = true;
        i = seq_end;
    }
    w.finish()
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    format_rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 UTC with milliseconds (`YYYY-MM-DDTHH:MM:SS.mmmZ`). Times before 1970 are
/// clamped to the epoch: a clock that far off is broken, and audit lines must stay parseable.
pub fn format_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let millis = d.subsec_millis();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
/// Howard Hinnant's `civil_from_days`, restricted to non-negative day counts: shifting the
/// year to start on 1 March puts the leap day last, so months have a fixed pattern.
fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z / 146_097; // 400-year eras
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from 1 March
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

struct Inner {
    /// Each event with its [`AuditEvent::footprint`].
    tx: mpsc::SyncSender<(AuditEvent, usize)>,
    dropped: Arc<AtomicU64>,
    /// The footprints of the events in the channel (and in the writer's batch not yet
    /// serialised), bounded by `max_bytes`.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    /// Events queued, and events the writer has finished with (written or dropped): equal
    /// when everything emitted so far is out.
    sent: AtomicU64,
    done: Arc<AtomicU64>,
}

/// Where audit events go. Cheap to clone; all clones feed the same writer.
#[derive(Clone)]
pub struct AuditSink {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("enabled", &self.inner.is_some())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl AuditSink {
    /// Builds the sink the configuration asks for and starts its writer thread. The file (for
    /// `output: file`) is opened here, in append mode and created if missing, so a bad path
    /// fails start-up or reload instead of every later write.
    pub fn from_config(cfg: &portcullis_config::Audit) -> Result<AuditSink, String> {
        if !cfg.enabled {
            return Ok(AuditSink::disabled());
        }
        let out: Box<dyn Write + Send> = match cfg.output {
            AuditOutput::Stdout => Box::new(std::io::stdout()),
            AuditOutput::Stderr => Box::new(std::io::stderr()),
            AuditOutput::File => {
                let path = cfg
                    .path
                    .as_deref()
                    .ok_or_else(|| "audit output \"file\" needs a path".to_string())?;
                Box::new(FollowedFile::open(path)?)
            }
        };
        Self::spawn(out, CHANNEL_CAPACITY, MAX_QUEUED_BYTES)
    }

    /// A sink that discards every event (and counts none as dropped).
    pub fn disabled() -> AuditSink {
        AuditSink { inner: None }
    }

    /// Whether events go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// A sink writing to `out`, queuing at most `capacity` events and `max_bytes` of them.
    fn spawn(
        out: Box<dyn Write + Send>,
        capacity: usize,
        max_bytes: usize,
    ) -> Result<AuditSink, String> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let (d, n, q) = (Arc::clone(&dropped), Arc::clone(&done), Arc::clone(&queued));
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || writer(rx, out, d, n, q))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(AuditSink {
            inner: Some(Arc::new(Inner {
                tx,
                dropped,
                queued,
                max_bytes,
                sent: AtomicU64::new(0),
                done,
            })),
        })
    }

    /// Whether events are written at all (callers skip building them when not).
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues `event` for writing; never waits. Sanitises it first (see
    /// [`AuditEvent::sanitize`]).
    pub fn emit(&self, mut event: AuditEvent) {
        let Some(inner) = &self.inner else {
            return;
        };
        event.sanitize();
        let size = event.footprint();
        let queued = inner.queued.fetch_add(size, Ordering::Relaxed);
        let fits = queued.saturating_add(size) <= inner.max_bytes;
        if fits && inner.tx.try_send((event, size)).is_ok() {
            inner.sent.fetch_add(1, Ordering::Release);
        } else {
            // Full or writer gone: losing an audit line beats stalling traffic; the count is
            // exported as a metric so the loss is visible.
            inner.queued.fetch_sub(size, Ordering::Relaxed);
            inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (at most `timeout`) until every event emitted so far has been written, so that a
    /// stopping gateway does not lose its last audit lines. True when everything is out.
    /// Blocks the calling thread: meant for the end of the process, off the async runtime.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let target = inner.sent.load(Ordering::Acquire);
        let start = Instant::now();
        while inner.done.load(Ordering::Acquire) < target {
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Events dropped since the sink was built (a running total).
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |i| i.dropped.load(Ordering::Relaxed))
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, String> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    // Client addresses, subjects and user agents: readable by the gateway's user alone when
    // the gateway creates the file (one that exists keeps the mode it was given).
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map_err(|e| format!("cannot open audit file {}: {e}", path.display()))
}

/// The audit file, following its path: before a batch is written, at most once per
/// [`FOLLOW_EVERY`], the path is looked at again, and when it names another file than the one
/// open (renamed away by `logrotate`, which then creates a new one) or none (removed), it is
/// opened anew, created if missing. Rotation by renaming needs no signal and loses nothing:
/// what was written before the switch is in the renamed file, and the first batch after a
/// quiet spell already goes to the new one. Files are switched only between whole lines.
/// Truncation in place (`copytruncate`) needs nothing: writes append.
///
/// When the path cannot be opened again (its directory removed or not writable), the old file
/// is kept only while it still has a name (renamed away, its lines are still readable); once
/// it has none (removed), writes fail instead of vanishing into it, so the writer counts those
/// events as dropped, and the path is tried again on later batches, at most once per
/// [`FOLLOW_EVERY`].
struct FollowedFile {
    path: PathBuf,
    file: std::fs::File,
    checked: Instant,
    /// What was written so far ends with a whole line (a switch may happen).
    at_line_start: bool,
    /// Reopened, nothing written yet: the empty line the writer starts after a torn write
    /// belongs to the old file.
    fresh: bool,
    /// The path could not be opened at the last look (logged once per streak).
    failing: bool,
    /// The open file was removed and the path could not be opened again: nothing is written
    /// until it can.
    lost: bool,
}

impl FollowedFile {
    fn open(path: &Path) -> Result<FollowedFile, String> {
        Ok(FollowedFile {
            path: path.to_path_buf(),
            file: open_append(path)?,
            checked: Instant::now(),
            at_line_start: true,
            fresh: false,
            failing: false,
            lost: false,
        })
    }

    /// Reopens the path when it no longer names the open file (checked once per
    /// [`FOLLOW_EVERY`]).
    fn follow(&mut self) {
        if self.checked.elapsed() < FOLLOW_EVERY {
            return;
        }
        self.checked = Instant::now();
        if self.names_the_open_file() {
            return;
        }
        match open_append(&self.path) {
            Ok(file) => {
                self.file = file;
                self.fresh = true;
                self.failing = false;
                self.lost = false;
                tracing::info!(path = %self.path.display(), "audit file reopened (it was moved or removed)");
            }
            Err(e) => {
                let lost = self.open_file_is_unlinked();
                if !self.failing || lost != self.lost {
                    if lost {
                        tracing::error!(error = %e, "the audit file was removed and cannot be created again; dropping audit events until it can");
                    } else {
                        tracing::error!(error = %e, "the audit file was moved or removed; still writing to the old one");
                    }
                }
                self.failing = true;
                self.lost = lost;
            }
        }
    }

    /// Whether the open file has no name left (removed, or its directory removed): what is
    /// written to it can never be read.
    fn open_file_is_unlinked(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().is_ok_and(|m| m.nlink() == 0)
    }

    fn names_the_open_file(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(p), Ok(f)) => p.dev() == f.dev() && p.ino() == f.ino(),
            _ => false,
        }
    }
}

impl Write for FollowedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.at_line_start {
            self.follow();
        }
        if self.lost {
            // Nothing taken: the writer counts the batch as dropped.
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "the audit file {} was removed and cannot be created again",
                    self.path.display()
                ),
            ));
        }
        let skip = usize::from(self.fresh && buf.first() == Some(&b'\n'));
        let rest = buf.get(skip..).unwrap_or_default();
        if rest.is_empty() {
            return Ok(skip);
        }
        match self.file.write(rest) {
            Ok(n) => {
                self.fresh = false;
                self.at_line_start = rest.get(..n).and_then(<[u8]>::last) == Some(&b'\n');
                Ok(n + skip)
            }
            Err(e) => {
                // The rest of the batch is given up; the next starts on a new line.
                if e.kind() != std::io::ErrorKind::Interrupted {
                    self.at_line_start = true;
                }
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Drains the channel in batches: one write and one flush per batch keeps system calls low
/// under load while still flushing promptly when traffic is light. Ends when every sender
/// (every clone of the sink) is gone.
fn writer(
    rx: mpsc::Receiver<(AuditEvent, usize)>,
    mut out: Box<dyn Write + Send>,
    dropped: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    // A failed write left part of a line in the output: the next write starts a new line, so
    // that the events after it are whole lines (the fragment stays a line of its own).
    let mut torn = false;
    // Idle, the thread waits for an event, then lets a batch gather: events sent while it
    // sleeps do not wake it (a sender wakes only a receiver blocked in `recv`), so busy
    // traffic costs one wake-up and one write per batch, not per event.
    let mut waited = true;
    loop {
        if waited {
            match rx.recv() {
                Ok(first) => batch.push(first),
                Err(_) => break,
            }
            std::thread::sleep(GATHER);
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        // A full batch may have more behind it: taken next without waiting.
        waited = batch.len() < MAX_BATCH;
        if batch.is_empty() {
            continue;
        }
        buf.clear();
        let lead = usize::from(torn);
        if torn {
            buf.push(b'\n');
        }
        let mut lines = 0u64;
        let batch_len = batch.len() as u64;
        let mut freed = 0;
        for (event, size) in batch.drain(..) {
            freed += size;
            let start = buf.len();
            match serde_json::to_writer(&mut buf, &event) {
                Ok(()) => {
                    escape_unicode_breaks(&mut buf, start);
                    buf.push(b'\n');
                    lines += 1;
                }
                Err(e) => {
                    // Cannot happen for this plain struct; if it ever does, the partial
                    // output of this event must not stay in the buffer.
                    tracing::warn!(error = %e, "audit event could not be serialised");
                    dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(pos) = buf.iter().rposition(|&b| b == b'\n') {
                        buf.truncate(pos + 1);
                    } else {
                        buf.clear();
                    }
                }
            }
        }
        // Serialised and dropped: the queue's room is given back before the write, which may
        // take long.
        queued.fetch_sub(freed, Ordering::Relaxed);
        let mut written = 0;
        match write_counting(&mut out, &buf, &mut written) {
            Ok(()) => {
                torn = false;
                if failing {
                    tracing::info!("audit output writable again");
                    failing = false;
                }
            }
            Err(e) => {
                // Log once per failure streak, not once per batch, to avoid flooding stderr.
                if !failing {
                    tracing::error!(error = %e, "cannot write audit events; dropping them");
                    failing = true;
                }
                let whole = buf
                    .get(lead.min(written)..written)
                    .unwrap_or_default()
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count() as u64;
                dropped.fetch_add(lines.saturating_sub(whole), Ordering::Relaxed);
                if written > 0 {
                    torn = buf.get(written - 1) != Some(&b'\n');
                }
            }
        }
        done.fetch_add(batch_len, Ordering::Release);
    }
    let _ = out.flush();
}

/// Writes U+2028, U+2029 and the C1 controls (U+0080–U+009F, NEL among them) in `buf[from..]`
/// — one event as serde_json wrote it, which leaves them raw — as `\uXXXX` escapes: readers
/// that split lines at Unicode breaks (Python's `str.splitlines`, some log shippers) would
/// cut the event in two there, each half invalid JSON. They occur only inside strings, where
/// the escape reads as the same character.
fn escape_unicode_breaks(buf: &mut Vec<u8>, from: usize) {
    let tail = buf.get(from..).unwrap_or_default();
    if !tail
        .windows(2)
        .any(|w| matches!(w, [0xe2, 0x80] | [0xc2, 0x80..=0x9f]))
    {
        return;
    }
    let mut out = Vec::with_capacity(tail.len() + 16);
    let mut i = 0;
    while let Some(&b) = tail.get(i) {
        let escaped = match (b, tail.get(i + 1), tail.get(i + 2)) {
            (0xe2, Some(0x80), Some(&c @ (0xa8 | 0xa9))) => Some((0x2000 | u32::from(c & 0x2f), 3)),
            (0xc2, Some(&c @ 0x80..=0x9f), _) => Some((u32::from(c), 2)),
            _ => None,
        };
        match escaped {
            Some((cp, len)) => {
                out.extend_from_slice(format!("\\u{cp:04x}").as_bytes());
                i += len;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    buf.truncate(from);
    buf.extend_from_slice(&out);
}

/// Writes `buf` whole, then flushes, counting in `written` the bytes the output took (also
/// when it fails partway).
fn write_counting(out: &mut dyn Write, buf: &[u8], written: &mut usize) -> std::io::Result<()> {
    while let Some(rest) = buf.get(*written..).filter(|r| !r.is_empty()) {
        match out.write(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.flush()
}

#[cfg(test)]
// Tests may panic on unexpected values; the workspace lint is meant for library code.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn event() -> AuditEvent {
        AuditEvent {
            contract: None,
            upstream_error: None,
            time: "2026-11-24T07:15:02.123Z".into(),
            request_id: "0123456789abcdef0123456789abcdef".into(),
            listener: "public".into(),
            client_ip: "203.0.113.7".into(),
            peer: "10.0.0.2:51234".into(),
            method: "GET".into(),
            host: Some("api.example.com".into()),
            path: "/v1/users".into(),
            route: Some("users".into()),
            upstream: Some("api".into()),
            target: Some("http://10.0.1.5:8080".into()),
            status: 200,
            latency_ms: 12.5,
            duration_ms: 14.0,
            response_bytes: 512,
            response_complete: true,
            outcome: Outcome::Allowed,
            stage: None,
            reason: None,
            tls: true,
            http_version: "HTTP/2".into(),
            user_agent: Some("curl/8.5.0".into()),
            auth: None,
            auth_failure: None,
            rate_limit: None,
            authz: None,
            waf: None,
        }
    }

    fn at(secs: u64, millis: u64) -> String {
        format_rfc3339(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis))
    }

    /// Unicode line breaks a client sends (in a header, the target) stay inside their event's
    /// line: escaped, they read as the same characters.
    #[test]
    fn unicode_line_breaks_are_escaped_in_events() {
        let mut e = event();
        e.user_agent = Some("a\u{2028}b\u{2029}c\u{85}d\u{9f}e\u{2013}f\u{a0}".into());
        let mut buf = b"{}\n".to_vec();
        let from = buf.len();
        serde_json::to_writer(&mut buf, &e).unwrap();
        escape_unicode_breaks(&mut buf, from);
        let line = std::str::from_utf8(&buf[from..]).unwrap();
        assert_eq!(line.lines().count(), 1);
        for c in ['\u{2028}', '\u{2029}', '\u{85}', '\u{9f}'] {
            assert!(!line.contains(c), "{c:?} in {line}");
        }
        let want = "a\\u2028b\\u2029c\\u0085d\\u009fe\u{2013}f\u{a0}";
        assert!(line.contains(want), "{line}");
        let back: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(back["user_agent"], e.user_agent.clone().unwrap());
        assert_eq!(&buf[..from], b"{}\n");
    }

    #[test]
    fn rfc3339_known_timestamps() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(951_868_799, 999), "2000-02-29T23:59:59.999Z");
        assert_eq!(at(951_868_800, 0), "2000-03-01T00:00:00.000Z");
        assert_eq!(at(946_684_799, 5), "1999-12-31T23:59:59.005Z");
        assert_eq!(at(1_709_164_800, 0), "2024-02-29T00:00:00.000Z");
        // 2100 is not a leap year.
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
        assert_eq!(at(1_795_504_502, 123), "2026-11-24T07:15:02.123Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000Z");
        // Before the epoch: clamped.
        assert_eq!(
            format_rfc3339(UNIX_EPOCH - Duration::from_secs(10)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn rfc3339_every_day_round_trips() {
        // Walk 1970..2401 day by day and check the date advances as the calendar says.
        let (mut y, mut m, mut d) = (1970u64, 1u32, 1u32);
        for days in 0..(431 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn now_has_the_right_shape() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 24, "{s}");
        assert!(
            s.ends_with('Z') && &s[10..11] == "T" && &s[19..20] == ".",
            "{s}"
        );
    }

    #[test]
    fn serialisation_shape() {
        let mut e = event();
        e.outcome = Outcome::Rejected;
        e.stage = Some("ipfilter".into());
        e.reason = Some("ip_denied".into());
        e.route = None;
        let v = serde_json::to_value(&e).unwrap();
        let obj = v.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut expected = vec![
            "time",
            "request_id",
            "listener",
            "client_ip",
            "peer",
            "method",
            "host",
            "path",
            "route",
            "upstream",
            "target",
            "status",
            "latency_ms",
            "duration_ms",
            "response_bytes",
            "response_complete",
            "outcome",
            "stage",
            "reason",
            "tls",
            "http_version",
            "user_agent",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(v["outcome"], "rejected");
        assert_eq!(v["route"], serde_json::Value::Null);
        assert_eq!(v["status"], 200);
        assert_eq!(v["latency_ms"], 12.5);
        assert_eq!(v["duration_ms"], 14.0);
        assert_eq!(v["response_bytes"], 512);
        assert_eq!(v["response_complete"], true);
        assert_eq!(v["tls"], true);
        assert_eq!(v["reason"], "ip_denied");
        assert_eq!(serde_json::to_value(Outcome::Allowed).unwrap(), "allowed");
        assert_eq!(serde_json::to_value(Outcome::Failed).unwrap(), "failed");
        assert_eq!(
            serde_json::to_value(Outcome::Abandoned).unwrap(),
            "abandoned"
        );
        assert_eq!(
            serde_json::to_value(Outcome::Interrupted).unwrap(),
            "interrupted"
        );
        // One line: no raw newline even with hostile input.
        let mut e = event();
        e.user_agent = Some("a\nb".into());
        assert!(!serde_json::to_string(&e).unwrap().contains('\n'));
    }

    #[test]
    fn sanitize_strips_query_and_long_user_agent() {
        let mut e = event();
        e.path = "/login?token=secret".into();
        // 'é' is two bytes: 255 ASCII + 'é' straddles the 256-byte limit.
        e.user_agent = Some(format!("{}é{}", "a".repeat(255), "b".repeat(50)));
        e.sanitize();
        assert_eq!(e.path, "/login");
        // Cut to 256 bytes, the marker included: 242 of the 'a's, then the marker.
        let ua = e.user_agent.unwrap();
        assert_eq!(ua.len(), MAX_USER_AGENT_BYTES);
        assert_eq!(ua, format!("{}{TRUNCATED}", "a".repeat(242)));

        let mut s = "x".repeat(300);
        truncate_on_char_boundary(&mut s, MAX_USER_AGENT_BYTES);
        assert_eq!(s.len(), 256);
        let mut s = "short".to_string();
        truncate_on_char_boundary(&mut s, MAX_USER_AGENT_BYTES);
        assert_eq!(s, "short");
    }

    /// A refused request may carry a path of tens of kilobytes and a long method or host; the
    /// event keeps a bounded, marked prefix of each, so that a full queue stays small.
    #[test]
    fn sanitize_caps_path_method_and_host() {
        let huge = 70_000;
        let mut e = event();
        e.path = format!("/{}", "a".repeat(huge - 1));
        e.method = "M".repeat(huge);
        e.host = Some("h".repeat(huge));
        e.user_agent = Some("u".repeat(huge));
        e.sanitize();
        for (field, got, max) in [
            ("path", e.path.as_str(), MAX_PATH_BYTES),
            ("method", e.method.as_str(), MAX_METHOD_BYTES),
            ("host", e.host.as_deref().unwrap(), MAX_HOST_BYTES),
            (
                "user_agent",
                e.user_agent.as_deref().unwrap(),
                MAX_USER_AGENT_BYTES,
            ),
        ] {
            assert_eq!(got.len(), max, "{field}");
            assert!(got.ends_with(TRUNCATED), "{field}: {got}");
        }
        assert!(e.path.starts_with("/aaa"));
        assert_eq!(
            e.method,
            format!("{}{TRUNCATED}", "M".repeat(32 - TRUNCATED.len()))
        );
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.len() < 3 * 1024, "{} bytes", line.len());

        // Cut on a char boundary: 'é' straddles the cut (2034 bytes before the marker).
        let mut e = event();
        e.path = format!("/{}é{}", "a".repeat(2032), "b".repeat(huge));
        e.sanitize();
        assert_eq!(e.path, format!("/{}{TRUNCATED}", "a".repeat(2032)));
        // Values within their limits are left alone, marker-free.
        let mut e = event();
        e.path = format!("/{}", "p".repeat(MAX_PATH_BYTES - 1));
        e.method = "M".repeat(MAX_METHOD_BYTES);
        e.host = Some("h".repeat(MAX_HOST_BYTES));
        let before = e.clone();
        e.sanitize();
        assert_eq!(e.path, before.path);
        assert_eq!(e.method, before.method);
        assert_eq!(e.host, before.host);
        // A limit shorter than the marker cuts without it.
        let mut s = "abcdef".to_string();
        cut_marked(&mut s, 4);
        assert_eq!(s, "abcd");
    }

    /// Path parameters, e-mail addresses, JWTs and card numbers in a path never reach the
    /// audit line; ordinary paths are left as they are.
    #[test]
    fn sanitize_redacts_secrets_in_the_path() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        let cases: &[(String, &str)] = &[
            // `;` parameters: the segment's name stays.
            ("/app;jsessionid=SECRET/y".into(), "/app;…/y"),
            ("/a;b=1;c=2/d;e".into(), "/a;…/d;…"),
            ("/login;JSESSIONID=0A1B2C?x=1".into(), "/login;…"),
            ("/admin;/x".into(), "/admin;/x"),
            // E-mail addresses, plain and percent-encoded.
            (
                "/users/john.doe@example.com/orders".into(),
                "/users/j***@example.com/orders",
            ),
            (
                "/users/john.doe%40mail.example.co.uk".into(),
                "/users/j***%40mail.example.co.uk",
            ),
            ("/u/ann%2Bx%40example.org/".into(), "/u/a***%40example.org/"),
            // JWTs, also as a segment's part or after an encoded space.
            (format!("/t/{jwt}/next"), "/t/[jwt]/next"),
            (format!("/auth/Bearer%20{jwt}"), "/auth/Bearer%20[jwt]"),
            (format!("/cb/state={jwt}"), "/cb/state=[jwt]"),
            ("/s/eyJ0eXAiOiJKV1Qi".into(), "/s/[jwt]"),
            // 13 to 19 digits.
            (
                "/cards/4111111111111111/charge".into(),
                "/cards/****1111/charge",
            ),
            ("/c/4111-1111-1111-1234".into(), "/c/****1234"),
            ("/c/4111%201111%201111%205678".into(), "/c/****5678"),
            ("/c/%2F5500000000000004".into(), "/c/%2F****0004"),
            ("/n/1234567890123".into(), "/n/****0123"),
            ("/n/1234567890123456789".into(), "/n/****6789"),
            // Left alone.
            ("/v1/users/42/orders".into(), "/v1/users/42/orders"),
            (
                "/projects/group%2Fname/issues".into(),
                "/projects/group%2Fname/issues",
            ),
            ("/orders/123456789012".into(), "/orders/123456789012"),
            (
                "/ids/12345678901234567890".into(),
                "/ids/12345678901234567890",
            ),
            ("/x/ab4111111111111111".into(), "/x/ab4111111111111111"),
            ("/x/4111111111111111ab".into(), "/x/4111111111111111ab"),
            ("/@me/profile".into(), "/@me/profile"),
            ("/a@b/c".into(), "/a@b/c"),
            ("/heyJudeSongs/2024".into(), "/heyJudeSongs/2024"),
            ("/eyJshort".into(), "/eyJshort"),
            ("/%40%40%40".into(), "/%40%40%40"),
            ("/dates/2024-01-15".into(), "/dates/2024-01-15"),
            ("/café/menü".into(), "/café/menü"),
            // `_` is no letter or digit: a number glued to a word by it is still masked.
            (
                "/cards/card_4111111111111111".into(),
                "/cards/card_****1111",
            ),
            (
                "/statements/4111111111111111_2024.pdf".into(),
                "/statements/****1111_2024.pdf",
            ),
            ("/c/x_4111-1111-1111-1234_y".into(), "/c/x_****1234_y"),
            // `.` and `+` (raw or `%2B`) join groups as `-` and a space do.
            ("/cards/4111.1111.1111.1111".into(), "/cards/****1111"),
            ("/cards/4111+1111+1111+1111".into(), "/cards/****1111"),
            ("/cards/4111%2B1111%2B1111%2B4321".into(), "/cards/****4321"),
            (
                "/cards/4111%2b1111%2b1111%2b4321/x".into(),
                "/cards/****4321/x",
            ),
            (
                "/cards/4111.1111.1111.1111.pdf".into(),
                "/cards/****1111.pdf",
            ),
            // E-mail addresses at internationalised domains, as the normalised path writes
            // them (percent-escaped) or raw.
            (
                "/u/john.doe@ex%C3%A4mple.com".into(),
                "/u/j***@ex%C3%A4mple.com",
            ),
            (
                "/u/john.doe%40ex%C3%A4mple.com/x".into(),
                "/u/j***%40ex%C3%A4mple.com/x",
            ),
            ("/u/j%C3%B6rg@exämple.de".into(), "/u/j***@exämple.de"),
            (
                "/u/ivan@%D0%BF%D1%80%D0%B8%D0%BC%D0%B5%D1%80.%D1%80%D1%84".into(),
                "/u/i***@%D0%BF%D1%80%D0%B8%D0%BC%D0%B5%D1%80.%D1%80%D1%84",
            ),
            (
                "/u/ivan@xn--e1afmkfd.xn--p1ai".into(),
                "/u/i***@xn--e1afmkfd.xn--p1ai",
            ),
            // Left alone: too few digits for a card, whatever joins them; no domain.
            ("/v/1.2.3".into(), "/v/1.2.3"),
            ("/v/10.20.300.4000".into(), "/v/10.20.300.4000"),
            ("/d/2024.01.15".into(), "/d/2024.01.15"),
            ("/ip/192.168.100.200".into(), "/ip/192.168.100.200"),
            ("/a/1+2+3".into(), "/a/1+2+3"),
            ("/f/report_2024_01.pdf".into(), "/f/report_2024_01.pdf"),
            (
                "/x/ab4111.1111.1111.1111".into(),
                "/x/ab4111.1111.1111.1111",
            ),
            ("/u/a@b%2Fc.com".into(), "/u/a@b%2Fc.com"),
            ("/u/a@%40%C3%A4.com".into(), "/u/a@%40%C3%A4.com"),
            ("/u/a@b.c".into(), "/u/a@b.c"),
            // A path recorded as it came (refused before normalisation): escapes of
            // unreserved characters that spell a secret are read decoded, and masked; those
            // that hide none stay, as sent.
            ("/c/4111%2D1111%2D1111%2D1234".into(), "/c/****1234"),
            ("/c/4111%2e1111%2E1111%2e1234/x".into(), "/c/****1234/x"),
            ("/c/%34%31%31%31111111111111".into(), "/c/****1111"),
            (
                "/u/john%2Edoe%40example.com".into(),
                "/u/j***%40example.com",
            ),
            ("/u/j%6Fhn@example.com".into(), "/u/j***@example.com"),
            ("/a/%2e%2e/%2E%2E/etc".into(), "/a/%2e%2e/%2E%2E/etc"),
            // Only the segments whose escapes spell a secret are decoded.
            (
                "/a/%2e%2e/%2e%2e/etc/passwd;jsessionid=1".into(),
                "/a/%2e%2e/%2e%2e/etc/passwd;…",
            ),
            (
                "/%2e%2e/c/4111%2D1111%2D1111%2D1234;x=1/%7Eu".into(),
                "/%2e%2e/c/****1234;…/%7Eu",
            ),
            ("/v1/%7Euser/42".into(), "/v1/%7Euser/42"),
            // A fragment (a refused head's target as it came) goes, as a query does.
            ("/reset#token=abc".into(), "/reset"),
            ("/a#x?y".into(), "/a"),
        ];
        for (input, want) in cases {
            let mut e = event();
            e.path = input.clone();
            e.sanitize();
            assert_eq!(e.path, *want, "{input}");
        }
        // Redacted before it is cut: an address straddling the cut is masked whole.
        let mut e = event();
        e.path = format!(
            "/{}/john.doe@example.com/{}",
            "a".repeat(2025),
            "z".repeat(100)
        );
        e.sanitize();
        assert!(!e.path.contains("ohn"), "{}", e.path);
        assert!(e.path.ends_with(TRUNCATED));
        // Long hostile input stays linear: many almost-addresses and almost-tokens.
        let mut e = event();
        e.path = format!("/{}{}", "%40a.".repeat(14_000), "eyJ".repeat(5_000));
        // (No clock: timed assertions flake on shared machines; a quadratic pass makes this
        // test slow, not red.)
        e.sanitize();
        assert!(e.path.len() <= MAX_PATH_BYTES);
    }

    /// `mask_jwts` as it was first written: for each `eyJ`, its run counted, then whether it
    /// is glued to what comes before. Quadratic on glued matches; the reference for what the
    /// linear one must find.
    fn reference_mask_jwts(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i..].starts_with(b"eyJ") {
                let n = b[i + 3..].iter().take_while(|&&c| is_b64url(c)).count();
                let glued =
                    i > 0 && b[i - 1].is_ascii_alphanumeric() && !(i >= 3 && is_escape(b, i - 3));
                if n >= 8 && !glued {
                    let mut end = i + 3 + n;
                    while end < b.len() && (b[end] == b'.' || is_b64url(b[end])) {
                        end += 1;
                    }
                    out.extend_from_slice(b"[jwt]");
                    i = end;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }

    /// The linear `mask_jwts` masks exactly what the reference does, on strings made of the
    /// pieces its rules look at: tokens glued or not, `-`, `_` and `.` inside runs, escapes.
    #[test]
    fn mask_jwts_matches_the_reference() {
        const PIECES: &[&str] = &[
            "eyJ",
            "eyJ",
            "a",
            "Z",
            "0",
            "-",
            "_",
            ".",
            "/",
            "%40",
            "%2F",
            "%",
            "é",
            "aaaa",
            "eyJhbGciO",
            " ",
            "J",
            "ey",
        ];
        // xorshift64: reproducible, no dependency.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut masked = 0;
        for _ in 0..50_000 {
            let len = next() % 24;
            let s: String = (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let want = reference_mask_jwts(&s);
            let (got, _) = mask_jwts(&s, s.len());
            assert_eq!(got.as_deref().unwrap_or(&s), want, "{s:?}");
            assert_eq!(got.is_some(), want != s, "{s:?}");
            masked += usize::from(want != s);
        }
        // The pieces make tokens often enough for the comparison to mean something.
        assert!(masked > 5_000, "{masked}");
        for s in [
            "/aeyJaaaaaaaaaa",
            "/-eyJaaaaaaaa",
            "/_eyJaaaaaaaa.b",
            "/a-eyJaaaaaaaa",
            "/%2FeyJaaaaaaaa",
            "/%2eyJaaaaaaaa",
            "/eyJaaaaaaaaeyJbbbbbbbb",
            "/eyJaaaaaaa/eyJ",
        ] {
            let (got, _) = mask_jwts(s, s.len());
            assert_eq!(got.as_deref().unwrap_or(s), reference_mask_jwts(s), "{s}");
        }
    }

    /// Adversarial paths for each redaction step, 16 times the largest that reaches audit
    /// (64 KiB): each is done in one pass. A step that read a run again for every match in it
    /// would take hours on these (seconds at 64 KiB).
    #[test]
    fn redaction_is_linear_on_hostile_paths() {
        let n = 1024 * 1024;
        let path = format!("/{}", "aeyJ".repeat(16_000));
        assert_eq!(redact_path(&path), None);
        // `eyJ` glued to a letter, each followed by the rest of one long base64url run.
        let glued = format!("/{}", "aeyJ".repeat(n / 4));
        assert_eq!(mask_jwts(&glued, glued.len()), (None, glued.len()));
        assert_eq!(redact_path(&glued), None);
        // The same, a real token at its end.
        let tail = format!("{glued}/eyJhbGciOiJIUzI1NiJ9");
        assert_eq!(redact_path(&tail), Some(format!("{glued}/[jwt]")));
        // Short runs after `eyJ`, and a token that runs to the end.
        let short = format!("/{}", "eyJab-".repeat(n / 6));
        assert_eq!(redact_path(&short), Some("/[jwt]".to_string()));
        let short = format!("/{}", "eyJab/".repeat(n / 6));
        assert_eq!(redact_path(&short), None);
        // Addresses missing their domain; one domain as long as the path.
        let at = format!("/{}", "a%40b".repeat(n / 5));
        assert_eq!(redact_path(&at), None);
        let at = format!("/{}", "a@".repeat(n / 2));
        assert_eq!(redact_path(&at), None);
        let long = format!("/a@{}", "b.".repeat(n / 2));
        assert_eq!(redact_path(&long), None);
        // Domains of percent-escaped characters that never end in a top-level label.
        let idn = format!("/{}", "a@%C3%A4".repeat(n / 8));
        assert_eq!(redact_path(&idn), None);
        let idn = format!("/a@{}", "%C3%A4.".repeat(n / 7));
        assert_eq!(redact_path(&idn).map(|p| p.len()), Some(idn.len() + 3));
        // Digit groups: one long sequence of them, and runs one digit short.
        let groups = format!("/{}", "1-".repeat(n / 2));
        let got = redact_path(&groups).unwrap();
        assert!(got.starts_with("/****1111-****1111-"), "{}", &got[..40]);
        let short = format!("/{}", "123456789012/".repeat(n / 13));
        assert_eq!(redact_path(&short), None);
        // Whole events: cut first, so the work stays small however long the path.
        for path in [glued, tail, at, groups] {
            let mut e = event();
            e.path = path;
            e.sanitize();
            assert!(e.path.len() <= MAX_PATH_BYTES);
            assert!(e.path.ends_with(TRUNCATED));
        }
    }

    /// A path too long to record is read up to [`MAX_PATH_BYTES`] and the look-ahead after it:
    /// what is recorded comes from its first [`MAX_PATH_BYTES`], redacted — a secret starting
    /// there is masked whole, even where it ends past them — and is marked as cut.
    #[test]
    fn a_long_path_is_cut_before_it_is_redacted() {
        // A token shrinks to `[jwt]`: what follows it in the path is not pulled into the line.
        let jwt = format!("eyJ{}", "a".repeat(2100));
        let past = format!("/{jwt}/4111111111111111/{}", "z".repeat(5_000));
        let mut e = event();
        e.path = past.clone();
        e.sanitize();
        assert_eq!(e.path, format!("/[jwt]{TRUNCATED}"));
        let mut e = event();
        e.path = format!("/a;{}/visible/{}", "p".repeat(3_000), "z".repeat(5_000));
        e.sanitize();
        assert_eq!(e.path, format!("/a;…{TRUNCATED}"));
        // A card number from byte 2040 to 2056, an address whose `@` is at byte 2050: masked.
        let jwt = format!("eyJ{}", "a".repeat(2035));
        let card = format!("/{jwt}/4111111111111111/{}", "z".repeat(5_000));
        assert_eq!(card.find("4111"), Some(2040));
        let mut e = event();
        e.path = card;
        e.sanitize();
        assert_eq!(e.path, format!("/[jwt]/****1111{TRUNCATED}"));
        let mail = format!("/{jwt}/johnny.doe@example.com/{}", "z".repeat(5_000));
        assert_eq!(mail.find('@'), Some(2050));
        let mut e = event();
        e.path = mail;
        e.sanitize();
        assert_eq!(e.path, format!("/[jwt]/j***{TRUNCATED}"));
        // Where nothing shrinks, the same as a path cut after its redaction.
        let mut e = event();
        e.path = format!(
            "/{}/john.doe@example.com/{}",
            "a".repeat(2025),
            "z".repeat(5_000)
        );
        e.sanitize();
        assert_eq!(e.path.len(), MAX_PATH_BYTES);
        assert!(!e.path.contains("ohn"), "{}", e.path);
        // Nothing masked, the path was cut in place: it does not keep the whole path's memory
        // while it waits in the queue.
        let mut e = event();
        e.path = format!("/{}", "a".repeat(60_000));
        e.sanitize();
        assert_eq!(e.path.len(), MAX_PATH_BYTES);
        assert!(
            e.path.capacity() < 2 * MAX_PATH_BYTES,
            "{}",
            e.path.capacity()
        );
        // A multi-byte character across either cut.
        for at in [
            MAX_PATH_BYTES - 1,
            MAX_PATH_BYTES + PATH_LOOKAHEAD_BYTES - 1,
        ] {
            let mut e = event();
            e.path = format!("/{}é{}", "a".repeat(at - 1), "b".repeat(5_000));
            e.sanitize();
            assert!(e.path.len() <= MAX_PATH_BYTES);
            assert!(e.path.ends_with(TRUNCATED));
        }
    }

    fn file_cfg(path: &Path) -> portcullis_config::Audit {
        portcullis_config::Audit {
            enabled: true,
            output: AuditOutput::File,
            path: Some(path.to_path_buf()),
        }
    }

    fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
        for _ in 0..200 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= n {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("fewer than {n} lines in {}", path.display());
    }

    #[test]
    fn file_sink_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "existing\n").unwrap();
        let sink = AuditSink::from_config(&file_cfg(&path)).unwrap();
        assert!(sink.is_enabled());
        let mut e = event();
        e.path = "/a?secret=1".into();
        sink.emit(e);
        let mut e = event();
        e.request_id = "second".into();
        sink.clone().emit(e);
        assert!(sink.flush(Duration::from_secs(5)));
        let lines = wait_for_lines(&path, 3);
        assert_eq!(lines[0], "existing");
        let first: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(first["path"], "/a");
        assert_eq!(first["outcome"], "allowed");
        let second: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(second["request_id"], "second");
        assert_eq!(sink.dropped(), 0);
    }

    /// After a torn write, the writer starts its next batch with a newline: in the new file of
    /// a rotation that newline would be an empty first line, so it is left out (and counted
    /// as written). A switch never happens inside a line.
    #[test]
    fn a_new_file_starts_with_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut f = FollowedFile::open(&path).unwrap();
        assert_eq!(f.write(b"{\"a\":1}\n{\"b\"").unwrap(), 12);
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        let long_ago = Instant::now().checked_sub(FOLLOW_EVERY * 2).unwrap();
        f.checked = long_ago;
        // Mid-line: no switch.
        assert_eq!(f.write(b":2").unwrap(), 2);
        assert!(!path.exists());
        f.checked = long_ago;
        assert_eq!(f.write(b"}\n").unwrap(), 2);
        f.checked = long_ago;
        assert_eq!(f.write(b"\n{\"c\":3}\n").unwrap(), 9);
        let old = std::fs::read_to_string(dir.path().join("old")).unwrap();
        assert_eq!(old, "{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"c\":3}\n");
    }

    /// The audit file holds client addresses, subjects and user agents: one the gateway
    /// creates — at start, or anew after a rotation — is readable by its user alone; one that
    /// exists keeps the mode it was given.
    #[cfg(unix)]
    #[test]
    fn a_created_audit_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        drop(open_append(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        let shared = dir.path().join("shared.log");
        std::fs::write(&shared, "").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();
        drop(open_append(&shared).unwrap());
        assert_eq!(mode(&shared), 0o640);
    }

    /// Rotation by renaming (logrotate's default) or removal: the writer notices before its
    /// next batch, at most a second after its last look, and goes on in a new file at the path;
    /// no event is lost and none is split between the two.
    #[test]
    fn a_moved_or_removed_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sink = AuditSink::from_config(&file_cfg(&path)).unwrap();
        let read = |p: &Path| -> Vec<serde_json::Value> {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let mut sent = 0;
        let mut emit = || {
            let mut e = event();
            e.request_id = format!("r{sent}");
            sink.emit(e);
            sent += 1;
            assert!(sink.flush(Duration::from_secs(5)));
        };
        emit();
        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        // Events go on to the old file until the writer looks again, then to a new one.
        for _ in 0..100 {
            emit();
            if path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(path.exists(), "no new file at the path");
        emit();
        let (old, new) = (read(&rotated), read(&path));
        let ids: Vec<&str> = old
            .iter()
            .chain(&new)
            .map(|e| e["request_id"].as_str().unwrap())
            .collect();
        let want: Vec<String> = (0..ids.len()).map(|i| format!("r{i}")).collect();
        assert_eq!(ids, want, "every event once, in order");
        assert!(!old.is_empty() && !new.is_empty());
        // Removed: recreated.
        std::fs::remove_file(&path).unwrap();
        for _ in 0..100 {
            emit();
            if path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        emit();
        assert!(!read(&path).is_empty());
        // After a quiet spell, the first event after a rotation is already in the new file
        // (logrotate may compress and delete the old one at once).
        std::thread::sleep(FOLLOW_EVERY + Duration::from_millis(100));
        let before = read(&path).len();
        std::fs::rename(&path, dir.path().join("audit.log.2")).unwrap();
        emit();
        let new = read(&path);
        assert_eq!(new.len(), 1, "{new:?}");
        assert_eq!(read(&dir.path().join("audit.log.2")).len(), before);
        assert_eq!(sink.dropped(), 0);
    }

    /// The audit file and its directory removed: while the path cannot be opened again the
    /// events are counted as dropped, not written into the unlinked file; once it can, they go
    /// to a new file there.
    #[test]
    fn a_removed_file_that_cannot_be_recreated_counts_drops() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let path = logs.join("audit.log");
        let sink = AuditSink::from_config(&file_cfg(&path)).unwrap();
        let emit = |id: &str| {
            let mut e = event();
            e.request_id = id.into();
            sink.emit(e);
            assert!(sink.flush(Duration::from_secs(5)));
        };
        emit("before");
        assert_eq!(wait_for_lines(&path, 1).len(), 1);
        std::fs::remove_dir_all(&logs).unwrap();
        // The writer looks at the path at most once a second.
        std::thread::sleep(FOLLOW_EVERY + Duration::from_millis(100));
        emit("lost-1");
        assert_eq!(
            sink.dropped(),
            1,
            "counted, not written to the unlinked file"
        );
        // Still gone within the second: dropped without another look.
        emit("lost-2");
        assert_eq!(sink.dropped(), 2);
        std::fs::create_dir(&logs).unwrap();
        std::thread::sleep(FOLLOW_EVERY + Duration::from_millis(100));
        emit("after");
        let lines = wait_for_lines(&path, 1);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let e: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(e["request_id"], "after");
        assert_eq!(sink.dropped(), 2);
    }

    /// A file renamed away while its path cannot be opened again (here: a directory took its
    /// name) still has a name: lines keep going to it, as before, and none is dropped.
    #[test]
    fn a_renamed_file_is_kept_while_its_path_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let old = dir.path().join("audit.log.1");
        let long_ago = || Instant::now().checked_sub(FOLLOW_EVERY * 2).unwrap();
        let mut f = FollowedFile::open(&path).unwrap();
        f.write_all(b"{\"a\":1}\n").unwrap();
        std::fs::rename(&path, &old).unwrap();
        std::fs::create_dir(&path).unwrap();
        f.checked = long_ago();
        f.write_all(b"{\"b\":2}\n").unwrap();
        assert!(!f.lost);
        assert_eq!(
            std::fs::read_to_string(&old).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        // Removed as well: now it is lost, and writes fail, taking nothing.
        std::fs::remove_file(&old).unwrap();
        f.checked = long_ago();
        assert!(f.write(b"{\"c\":3}\n").is_err());
        assert!(f.lost);
        // The path usable again: a new file, from the next line on.
        std::fs::remove_dir(&path).unwrap();
        f.checked = long_ago();
        f.write_all(b"{\"d\":4}\n").unwrap();
        assert!(!f.lost);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"d\":4}\n");
    }

    /// An output whose first write waits until the test lets it go, so the test knows the
    /// writer holds exactly one event and nothing else leaves the channel meanwhile.
    struct Gate {
        entered: mpsc::SyncSender<()>,
        release: mpsc::Receiver<()>,
        gated: bool,
        out: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if !self.gated {
                self.gated = true;
                let _ = self.entered.send(());
                let _ = self.release.recv();
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn gated(
        capacity: usize,
        max_bytes: usize,
    ) -> (
        AuditSink,
        mpsc::SyncSender<()>,
        Arc<std::sync::Mutex<Vec<u8>>>,
    ) {
        let (entered_tx, entered) = mpsc::sync_channel(1);
        let (release, release_rx) = mpsc::sync_channel(1);
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let gate = Gate {
            entered: entered_tx,
            release: release_rx,
            gated: false,
            out: out.clone(),
        };
        let sink = AuditSink::spawn(Box::new(gate), capacity, max_bytes).unwrap();
        sink.emit(event());
        entered.recv_timeout(Duration::from_secs(5)).unwrap();
        (sink, release, out)
    }

    #[test]
    fn drops_are_counted_when_full() {
        // The writer is held inside its first write: the channel fills, and what does not fit
        // is dropped and counted, never waited for.
        let (sink, release, out) = gated(CHANNEL_CAPACITY, MAX_QUEUED_BYTES);
        for _ in 0..CHANNEL_CAPACITY + 10 {
            sink.emit(event());
        }
        assert_eq!(sink.dropped(), 10);
        assert!(!sink.flush(Duration::from_millis(50)), "the writer is held");
        release.send(()).unwrap();
        assert!(sink.flush(Duration::from_secs(10)));
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), CHANNEL_CAPACITY + 1);
        assert_eq!(sink.dropped(), 10);
    }

    /// An output that takes `room` more bytes, then fails (a full disk) until given more.
    struct Disk {
        room: Arc<std::sync::Mutex<usize>>,
        out: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Disk {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(std::io::Error::other("no space left on device"));
            }
            let n = b.len().min(*room);
            *room -= n;
            self.out.lock().unwrap().extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A write that fails partway (the disk filled up inside a line) leaves a fragment; the
    /// events written after space came back are whole lines of their own, and only the events
    /// not written whole are counted as dropped.
    #[test]
    fn a_write_cut_off_partway_does_not_spoil_the_next_lines() {
        let line = serde_json::to_vec(&event()).unwrap().len() + 1;
        let room = Arc::new(std::sync::Mutex::new(line + line / 2));
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = AuditSink::spawn(
            Box::new(Disk {
                room: room.clone(),
                out: out.clone(),
            }),
            64,
            MAX_QUEUED_BYTES,
        )
        .unwrap();
        // One batch of three: one line whole, half of the next, then the disk is full.
        for _ in 0..3 {
            sink.emit(event());
        }
        assert!(sink.flush(Duration::from_secs(5)));
        assert_eq!(sink.dropped(), 2, "one of three was written whole");
        *room.lock().unwrap() = usize::MAX;
        for _ in 0..2 {
            sink.emit(event());
        }
        assert!(sink.flush(Duration::from_secs(5)));
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let parsed = lines
            .iter()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            .count();
        assert_eq!(
            parsed, 3,
            "the whole events parse, the fragment alone does not: {text}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(lines[1]).is_err());
        assert_eq!(sink.dropped(), 2);
    }

    /// Events are few but heavy (WAF matches, an upstream error excerpt): the queue is bounded
    /// by their bytes too, and what does not fit is dropped and counted like an event past
    /// the count; the room comes back as the writer takes them.
    #[test]
    fn the_queue_is_bounded_by_bytes() {
        let light = {
            let mut e = event();
            e.sanitize();
            e.footprint()
        };
        let heavy = || {
            let mut e = event();
            e.upstream_error = Some(UpstreamErrorAudit {
                status: 502,
                body: "x".repeat(16 * 1024),
            });
            e
        };
        assert!(heavy().footprint() >= light + 16 * 1024);
        let (sink, release, out) = gated(CHANNEL_CAPACITY, 3 * light);
        for _ in 0..5 {
            sink.emit(event());
        }
        assert_eq!(
            sink.dropped(),
            2,
            "three fit in the bytes, far below the count"
        );
        sink.emit(heavy());
        assert_eq!(sink.dropped(), 3);
        release.send(()).unwrap();
        assert!(sink.flush(Duration::from_secs(5)));
        // Written: the room is back, for as many as before.
        for _ in 0..3 {
            sink.emit(event());
        }
        assert!(sink.flush(Duration::from_secs(5)));
        assert_eq!(sink.dropped(), 3);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1 + 3 + 3);
        // An event heavier than the whole budget never fits.
        let (sink, release, _out) = gated(CHANNEL_CAPACITY, 16 * 1024);
        sink.emit(heavy());
        assert_eq!(sink.dropped(), 1);
        release.send(()).unwrap();
    }

    #[test]
    fn small_channel_drops() {
        let (sink, release, out) = gated(2, MAX_QUEUED_BYTES);
        for _ in 0..5 {
            sink.emit(event());
        }
        assert_eq!(sink.dropped(), 3);
        release.send(()).unwrap();
        assert!(sink.flush(Duration::from_secs(5)));
        assert_eq!(out.lock().unwrap().split(|b| *b == b'\n').count() - 1, 3);
    }

    #[test]
    fn events_emitted_from_a_runtime_shutting_down_are_written() {
        // What the gateway relies on when it stops: a request dropped with its task, as the
        // runtime shuts down, still gets its line out (the writer is no task of that runtime).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sink = AuditSink::from_config(&file_cfg(&path)).unwrap();
        struct OnDrop(AuditSink);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                let mut e = event();
                e.outcome = Outcome::Interrupted;
                e.status = 444;
                self.0.emit(e);
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let guard = OnDrop(sink.clone());
        rt.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        rt.block_on(tokio::task::yield_now());
        rt.shutdown_timeout(Duration::from_secs(1));
        assert!(sink.flush(Duration::from_secs(5)));
        let lines = wait_for_lines(&path, 1);
        let e: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(e["outcome"], "interrupted");
        assert_eq!(e["status"], 444);
    }

    #[test]
    fn disabled_and_config_errors() {
        let sink = AuditSink::disabled();
        sink.emit(event());
        assert_eq!(sink.dropped(), 0);
        assert!(!sink.is_enabled());
        assert!(sink.flush(Duration::ZERO));

        let off = portcullis_config::Audit {
            enabled: false,
            output: AuditOutput::Stdout,
            path: None,
        };
        assert!(!AuditSink::from_config(&off).unwrap().is_enabled());

        let no_path = portcullis_config::Audit {
            enabled: true,
            output: AuditOutput::File,
            path: None,
        };
        assert!(AuditSink::from_config(&no_path).is_err());
        let bad = file_cfg(Path::new("/nonexistent-dir/for/sure/audit.log"));
        let err = AuditSink::from_config(&bad).unwrap_err();
        assert!(err.contains("cannot open audit file"), "{err}");
    }
}
