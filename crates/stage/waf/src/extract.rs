//! What the WAF inspects: the request turned into [`Target`]s.
//!
//! Head: the normalised path, every query parameter (name and value, percent-decoded once), the
//! headers (values; `Cookie` split into one target per cookie), except those whose syntax is
//! checked strictly elsewhere or that carry opaque credentials (see [`SKIPPED_HEADERS`]).
//! Body, by content type: JSON (every key and every leaf, addressed by JSON path), URL-encoded
//! forms, multipart (field values and file names; file contents are not targets), XML (text,
//! attribute values; a DOCTYPE is emitted as a target of its own so the XXE rules see it),
//! GraphQL documents, and anything else textual as one raw target.
//!
//! Parsing is bounded: nesting depth and target count are limited; going over a limit, or a body
//! that does not parse as its declared type, is itself a finding (class `protocol`), never a
//! panic and never a silent skip.
//!
//! # Head
//!
//! * Path: one target (`path`, unnamed) holding the normalised path.
//! * Query: the query string split on `&`, and each `name=value` after a `;` in a pair read
//!   as a parameter of its own too (servers that split on `;` as well; a derived target, see
//!   [`Target::derived`]); each percent-decoded once
//!   with `+` as a space, invalid escapes kept literally, invalid UTF-8 read lossily. A value
//!   target per non-empty value (repeated parameters each get theirs), named by the decoded
//!   name; a name target only for names with characters other than `[A-Za-z0-9_.\-\[\]]`.
//! * Headers: one target per header value (lossy UTF-8), named by the lowercase header name.
//!   `Cookie` headers are split on `;` into one `cookie:<name>` target per cookie, the value
//!   percent-decoded once (no `+` rule), plus a name target for unusual cookie names. A value
//!   in double quotes is a second target of the same name, unquoted the way Python, Werkzeug,
//!   Node and Go read it: quotes stripped, `\ooo` octal and `\c` escapes decoded, then
//!   percent-decoded once (`cookie_unquote`).
//!
//! # Body
//!
//! The media type is matched case-insensitively and read as PHP reads it: up to the first `;`,
//! `,` or blank (Rack cuts at `;` or `,`); text after it there (`application/json, x`) is rule
//! 1005, since other parsers read another type or none. Of the parameters `boundary` and
//! `charset` are read. A form, multipart, XML or GraphQL type in a field that holds `/json` or
//! `+json` anywhere, on a body that is a JSON document, is rule 1005 too (Laravel reads such a
//! body as JSON), and the body is read as JSON; any other such body is read by its type. Bodies are read as UTF-8: a JSON `charset` other than
//! UTF-8 (which an upstream might decode: UTF-7, UTF-16) is rule 1005, as is a form, text or XML `charset` (or XML
//! declaration `encoding`) that is not ASCII-transparent (`plain_charset`: UTF-8, US-ASCII,
//! ISO-8859-1), UTF-16/32 text in an untyped, unknown or text body (`wide_text`), two
//! `Content-Type` fields and a multipart type with more than one boundary parameter (XML must
//! be valid UTF-8, so UTF-16 XML is malformed). A UTF-8 BOM is skipped. An empty (or
//! whitespace-only) body yields no target and no finding.
//!
//! * JSON (`application/json`, `text/json`, `application/*+json`): every object key is a
//!   name target and every leaf (strings, numbers and booleans as their text; `null` and empty
//!   strings skipped) a value target, both named by the JSON path (`$.user.name`,
//!   `$.items[0]`, `$['we ird']` for keys that are not identifiers; path segments are cut at
//!   128 bytes and paths stop growing at 512). A top-level array's length is recorded.
//!   Numbers outside the `f64` range make the body malformed (that is how serde_json reads
//!   them). A key repeated in one object is rule 1005 (parsers keep the first or the last).
//! * Forms (`application/x-www-form-urlencoded`): as the query string, at `body:<field>`. A raw
//!   control character (other than tab, CR, LF) makes the form malformed; invalid
//!   percent-encoding does not.
//! * Multipart (`multipart/form-data`, and every other `multipart/*` type, which Rack reads into
//!   its form parameters too; outside form-data a part may lack `Content-Disposition`, and is
//!   then a value without a name): for each part, a value target with the content of
//!   fields without a file name (or with an empty one), whatever their content type — every
//!   server behind takes such a part for a form value —, and a file-name target
//!   for `filename` and `filename*` (RFC 5987, percent-decoded); file contents are not
//!   inspected. Only the syntax every server's parser reads alike is accepted (see
//!   `multipart.rs`: every line-start `--boundary` a delimiter, one line-break style, no
//!   folding, plain `Content-Disposition` parameters …); a missing or invalid boundary, no
//!   opening or closing delimiter, a header line without a colon, part headers over 16 KiB, a
//!   form-data part without `Content-Disposition` and anything outside that syntax make the
//!   body malformed.
//! * XML (`application/xml`, `text/xml`, `application/*+xml`): text and CDATA of an element
//!   form one target named by the element path (`/order/item`) for each run between its
//!   child elements (comments and processing instructions do not end a run), attribute
//!   values are named `/order/item/@id`; an element with mixed content (text of its own and
//!   child elements splitting its text) is also a target holding its joined text, its own and
//!   its descendants' in document order (DOM's `getTextContent()`; a derived target, not
//!   counted toward `max_targets`), while the joined texts' total length stays within the
//!   body's (past it no more are made, with no finding), and such elements nested more than 8
//!   deep are rule 1002; a DOCTYPE is one target `body:!DOCTYPE` holding
//!   `<!DOCTYPE …>`, a processing instruction one target `body:?pi` holding `<?…?>`. The
//!   five predefined entities and character references are decoded, other entity references
//!   are kept as written (never resolved). Not well-formed (including no root, several roots, text outside
//!   the root, unclosed elements, invalid UTF-8) is malformed. The start tag of markup an XML
//!   processor acts on (an `include` element, an `xsl:` one, one declaring the XInclude or
//!   XSLT namespace) is a target of its own, `body:/r/xi:include/<tag>`, holding `<…>` as
//!   written.
//! * GraphQL (`application/graphql`): one target `body:$.query`, the name a JSON
//!   `{"query": …}` body gives the document.
//! * Text (`text/*`; no content type; an unknown type whose bytes look textual — at most 5 %
//!   invalid UTF-8 or control bytes): one unnamed target with the whole body. If such a body
//!   is a JSON document (it starts with `{` or `[` and parses), it is inspected as JSON
//!   instead and reported as [`BodyKind::Json`]: backends that ignore the content type must
//!   not be a way around the JSON extraction. So is one that starts with a JSON value followed
//!   by anything (a streaming decoder reads the value: Go's `json.Decoder`), the whole body
//!   also inspected as text; and a body without a type, or of an unknown one, that starts
//!   like JSON is never taken for binary, however many of its bytes are not UTF-8. Whatever its
//!   bytes, a body without a type or of a text or unknown one is also searched for a field
//!   that reads as `_method` when the body is read as a form or as multipart
//!   ([`BodyFacts::untyped_method_field`], for rule 2401): Rack reads an untyped POST body as
//!   a form.
//! * Binary (`image/*`, `audio/*`, `video/*`, `font/*`, octet streams, archives, PDF,
//!   protobuf, gRPC …, and unknown types that do not look textual nor wide): no target. The
//!   WAF stage only skips buffering a binary body when the request has a single
//!   `Content-Type` and the body's first kilobyte is not text ([`crate::sniff`]); one that is
//!   text is inspected as an untyped body (the engine passes it here without its type).
//!
//! Findings: a body that does not parse as its type is rule 1001 (target `body`, snippet: the
//! error's offset and the shape of the bytes around it, never their text); nesting deeper than `max_depth` is rule 1002; reaching
//! `max_targets` (head and body together, counting what `out` already holds) is rule 1003,
//! raised once, after which nothing more is extracted (a JSON body is still read to the end
//! to check its syntax and count a top-level array). The three block by themselves, whatever
//! the score and threshold (what cannot be inspected does not pass); 1003 is matched by
//! exclusions as target `request`, not as the target where the limit was reached (which the
//! client chooses).
//!
//! OWNER: helper A. The public API below is the contract the engine uses.

mod json;
mod loose;
mod multipart;
mod xml;

use std::borrow::Cow;

use crate::extract_rules::{AMBIGUOUS_CONTENT_TYPE, MALFORMED_BODY, TOO_DEEP, TOO_MANY_TARGETS};
use crate::model::{Finding, Location, Part, Target};
use crate::transform::View;

/// Headers not inspected as values.
///
/// * Credentials: `authorization` and `proxy-authorization` hold secrets that a finding's
///   snippet would copy into the audit log, and their usual values (base64 of a user and
///   password, JWTs) are opaque text the detectors would misread; authentication parses and
///   checks them.
/// * Framing and routing fields, which the gateway parses strictly and does not forward as
///   sent: `content-length`, `host`, `connection`, `transfer-encoding`.
///
/// Everything else is inspected, `sec-websocket-key` and the rest of the WebSocket handshake
/// included: nothing checks their syntax and they go upstream as sent.
pub const SKIPPED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "content-length",
    "host",
    "connection",
    "transfer-encoding",
    // Rebuilt by the gateway from its hex digits; `tracestate` goes on as sent, so it is
    // inspected like any other field.
    "traceparent",
];

/// Bounds on what one request may make the WAF look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Deepest JSON/XML nesting inspected; deeper is a finding (rule 1002).
    pub max_depth: usize,
    /// Most targets (parameters, fields, leaves, headers) per request; more is a finding
    /// (rule 1003) and the rest are not extracted.
    pub max_targets: usize,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits {
            max_depth: 64,
            max_targets: 4096,
        }
    }
}

/// What the body turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyKind {
    /// No body (or an empty one without a content type).
    #[default]
    None,
    Json,
    Form,
    Multipart,
    Xml,
    GraphQl,
    /// Textual but of no structured type: inspected as one raw value.
    Text,
    /// Binary (images, archives, octet streams): not inspected.
    Binary,
}

/// Structural facts about the body the API-abuse rules need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyFacts {
    pub kind: BodyKind,
    /// Length of a top-level JSON array (a batch).
    pub json_top_array: Option<usize>,
    /// In a body without a type, or of a `text/*` or unknown one — which Rack reads as a form
    /// when it has no type —, the first field that reads as `_method` when the body is read
    /// as a URL-encoded form or as multipart anyway (rule 2401): its name, cut to 128 bytes.
    pub untyped_method_field: Option<String>,
}

/// Pushes the head's targets. `path` is the normalised path.
pub fn head_targets<'a>(
    head: &'a http::request::Parts,
    path: &'a str,
    limits: &ExtractLimits,
    out: &mut Vec<Target<'a>>,
    findings: &mut Vec<Finding>,
) {
    let mut sink = Sink::new(out, findings, limits);
    if !sink.push(Target::new(Location::Path, "", Part::Value, path)) {
        return;
    }
    if let Some(query) = head.uri.query() {
        urlencoded(query.as_bytes(), Location::Query, &mut sink);
    }
    for (name, value) in &head.headers {
        if sink.full {
            return;
        }
        let name = name.as_str();
        if SKIPPED_HEADERS.contains(&name) {
            continue;
        }
        let bytes = value.as_bytes();
        if name == "cookie" {
            cookies(bytes, &mut sink);
        } else if !bytes.is_empty() {
            let value = String::from_utf8_lossy(bytes);
            sink.push(Target::new(Location::Header, name, Part::Value, value));
        }
    }
}

/// Pushes the body's targets and returns its facts.
pub fn body_targets<'a>(
    content_type: Option<&str>,
    body: &'a [u8],
    limits: &ExtractLimits,
    out: &mut Vec<Target<'a>>,
    findings: &mut Vec<Finding>,
) -> BodyFacts {
    let ct = ContentType::parse(content_type);
    let mut facts = BodyFacts {
        kind: ct.media.announced(),
        json_top_array: None,
        untyped_method_field: None,
    };
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        if ct.media == Media::Absent {
            facts.kind = BodyKind::None;
        }
        return facts;
    }
    if matches!(ct.media, Media::Absent | Media::Unknown | Media::Text) {
        facts.untyped_method_field = loose::method_field(body);
    }
    let mut sink = Sink::new(out, findings, limits);
    if let Some(why) = ct.ambiguous {
        sink.ambiguous(why);
    }
    // A type that is not JSON in a field that holds `/json` or `+json`: Laravel reads the body
    // as JSON, so a body that is a JSON document is inspected as one, and is rule 1005. Any
    // other such body is read by its type (`multipart/related; type="application/dicom+json"`,
    // a DICOMweb upload, is a multipart body whose field names a JSON part type).
    if ct.json_in_field && json_document(body, limits, &mut sink, &mut facts) {
        sink.ambiguous(JSON_IN_FIELD);
        return facts;
    }
    match ct.media {
        Media::Json => {
            if let Err(p) =
                json::extract(body, limits.max_depth, &mut sink, &mut facts.json_top_array)
            {
                sink.problem(p, body);
            }
        }
        Media::Form => form(body, &mut sink),
        Media::Multipart => {
            let parts = multipart::extract(body, ct.boundary.as_deref(), ct.form_data, &mut sink);
            if let Err(p) = parts {
                sink.problem(p, body);
            }
        }
        Media::Xml => {
            if let Err(p) = xml::extract(body, limits.max_depth, &mut sink) {
                sink.problem(p, body);
            }
        }
        Media::GraphQl => {
            let doc = String::from_utf8_lossy(body);
            sink.push(Target::new(Location::Body, "$.query", Part::Value, doc));
        }
        Media::Text => {
            if wide_text(body) {
                sink.ambiguous(WIDE_TEXT);
            }
            text(body, limits, &mut sink, &mut facts);
        }
        Media::Binary => {}
        Media::Absent | Media::Unknown => {
            // A body that starts like JSON is read as text (JSON first) however many bytes of
            // it are not UTF-8: servers that ignore the type decode JSON with invalid bytes in
            // its strings (Go), so such bytes must not make it binary, hence uninspected.
            // UTF-16 or UTF-32 text is not binary either: an upstream that detects it (by
            // its BOM, or as JSON decoders do) reads characters the WAF cannot see as UTF-8.
            let wide = wide_text(body);
            if wide {
                sink.ambiguous(WIDE_TEXT);
            }
            if wide || looks_textual(body) || starts_like_json(body) {
                facts.kind = BodyKind::Text;
                text(body, limits, &mut sink, &mut facts);
            } else {
                facts.kind = BodyKind::Binary;
            }
        }
    }
    facts
}

/// Rule 1005 for a request with more than one `Content-Type`.
pub fn two_content_types(findings: &mut Vec<Finding>) {
    ambiguous_type(findings, "more than one Content-Type");
}

/// Rule 1005 for a `Content-Type` with bytes beyond ASCII: the WAF would read the body as
/// untyped, while PHP reads the type up to its `;` and Go's `ParseForm` a form despite a bad
/// parameter.
pub fn non_ascii_content_type(findings: &mut Vec<Finding>) {
    ambiguous_type(findings, "a Content-Type with bytes beyond ASCII");
}

fn ambiguous_type(findings: &mut Vec<Finding>, why: &str) {
    let t = Target::new(Location::Body, "", Part::Value, "");
    let mut f = Finding::new(AMBIGUOUS_CONTENT_TYPE, &t, View::Raw, why);
    f.blocks = true;
    findings.push(f);
}

/// A POST body without a type read as the URL-encoded form Rack takes it for, whatever its
/// bytes: its fields, at `body:<field>` (split at `&` alone, as a form body is). Together with
/// the `counted` targets of the head, at most `limits.max_targets` of them: past that, rule
/// 1003 (into `findings`, once per request) and no more. Nothing when the body holds no `=`.
pub fn loose_form<'a>(
    body: &'a [u8],
    limits: &ExtractLimits,
    counted: usize,
    findings: &mut Vec<Finding>,
) -> Vec<Target<'a>> {
    let mut out = Vec::new();
    if !body.contains(&b'=') {
        return out;
    }
    let mut sink = Sink::new(&mut out, findings, limits);
    sink.counted = counted;
    urlencoded(body, Location::Body, &mut sink);
    out
}

/// The kind a content type announces (without reading the body).
///
/// A missing or unknown content type announces [`BodyKind::Text`] (the body is worth
/// buffering: [`body_targets`] inspects it if it looks textual, and reports
/// [`BodyKind::Binary`] otherwise); this function never returns [`BodyKind::None`].
pub fn body_kind(content_type: Option<&str>) -> BodyKind {
    ContentType::parse(content_type).media.announced()
}

// ---------------------------------------------------------------------------------------------
// Where targets go

/// Why a body could not be read to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    /// Does not parse as its type; `at` is the byte offset of the error.
    Malformed { at: usize },
    /// Nested deeper than the limit.
    TooDeep { at: usize },
}

/// The target list with its limit.
struct Sink<'a, 'o> {
    out: &'o mut Vec<Target<'a>>,
    findings: &'o mut Vec<Finding>,
    max: usize,
    /// Targets counted toward the limit that are not in `out` (the head's, for a second
    /// reading of the body into a list of its own).
    counted: usize,
    /// Targets in `out` not counted toward the limit ([`Sink::push_uncounted`]).
    uncounted: usize,
    /// The limit was reached: nothing more is pushed.
    full: bool,
}

impl<'a, 'o> Sink<'a, 'o> {
    fn new(
        out: &'o mut Vec<Target<'a>>,
        findings: &'o mut Vec<Finding>,
        limits: &ExtractLimits,
    ) -> Self {
        Sink {
            out,
            findings,
            max: limits.max_targets,
            counted: 0,
            uncounted: 0,
            full: false,
        }
    }

    /// Pushes a target; `false` (and rule 1003, once per request) when the limit is reached.
    fn push(&mut self, t: Target<'a>) -> bool {
        if self.full {
            return false;
        }
        let n = self.out.len().saturating_sub(self.uncounted);
        if n.saturating_add(self.counted) >= self.max {
            self.full = true;
            if !self.findings.iter().any(|f| f.rule == TOO_MANY_TARGETS.id) {
                let note = format!("more than {} targets", self.max);
                let mut f = Finding::new(TOO_MANY_TARGETS, &t, View::Raw, &note);
                // The note is the gateway's own words, never the target's value: shown as it
                // is, whatever the target (a secret's, a URL's).
                f.snippet = note;
                // The request as a whole went uninspected, whatever target it was at: an
                // exclusion naming that target (which the client chooses) must not cover it.
                f.exclusion_key = UNINSPECTED.to_string();
                f.blocks = true;
                // Nor is it the bytes of a derived target: it is scored, whatever target.
                f.derived = false;
                self.findings.push(f);
            }
            return false;
        }
        self.out.push(t);
        true
    }

    /// Pushes a target that the limit does not count (an XML element's joined text, bounded
    /// by a budget of its own), unless the limit was reached.
    fn push_uncounted(&mut self, t: Target<'a>) {
        if !self.full {
            self.out.push(t);
            self.uncounted += 1;
        }
    }

    /// Rule 1005 for the body: it blocks by itself (what the WAF read is not what an
    /// upstream may read).
    fn ambiguous(&mut self, why: &str) {
        let t = Target::new(Location::Body, "", Part::Value, "");
        let mut f = Finding::new(AMBIGUOUS_CONTENT_TYPE, &t, View::Raw, why);
        f.blocks = true;
        self.findings.push(f);
    }

    /// Rule 1001 or 1002 for the body.
    fn problem(&mut self, p: Problem, body: &[u8]) {
        let (rule, at) = match p {
            Problem::Malformed { at } => (MALFORMED_BODY, at),
            Problem::TooDeep { at } => (TOO_DEEP, at),
        };
        let t = Target::new(Location::Body, "", Part::Value, "");
        let at = at.min(body.len());
        let start = at.saturating_sub(16);
        let end = at.saturating_add(24).min(body.len());
        // The shape of the bytes around the error, not their text: a login body cut short or
        // with a stray byte would otherwise put the password beside it into the audit log.
        let window = shape_of(body.get(start..end).unwrap_or_default());
        let note = format!("@{at}: {window}");
        let mut f = Finding::new(rule, &t, View::Raw, &note);
        f.blocks = true;
        self.findings.push(f);
    }
}

/// Bytes as their shape: every letter (any script) `a`, every digit `0`; punctuation, blanks
/// and control characters as they are (the snippet escapes the latter). A malformed body's
/// snippet shows where its structure broke (`{"a": aaaa}`: a bare word where a value goes)
/// without quoting what it says.
fn shape_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| match c {
            c if c.is_ascii_digit() => '0',
            c if c.is_alphanumeric() || !c.is_ascii() => 'a',
            c => c,
        })
        .collect()
}

/// The exclusion key of rule 1003: only an exclusion listing this target, or none, covers it.
pub const UNINSPECTED: &str = "request";

// ---------------------------------------------------------------------------------------------
// Query strings, forms, cookies

/// Percent-decodes once (`+` as a space when `plus`), invalid escapes kept, lossy UTF-8;
/// borrows when there is nothing to decode.
fn percent_decode(raw: &[u8], plus: bool) -> Cow<'_, str> {
    if !raw.iter().any(|&b| b == b'%' || (plus && b == b'+')) {
        return String::from_utf8_lossy(raw);
    }
    let mut v = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'+' if plus => {
                v.push(b' ');
                i += 1;
            }
            b'%' => match (
                raw.get(i + 1).copied().and_then(crate::transform::hex_val),
                raw.get(i + 2).copied().and_then(crate::transform::hex_val),
            ) {
                (Some(h), Some(l)) => {
                    v.push((h << 4) | l);
                    i += 3;
                }
                _ => {
                    v.push(b'%');
                    i += 1;
                }
            },
            _ => {
                v.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(match String::from_utf8(v) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// A parameter name that needs no inspection.
fn plain_name(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'[' | b']'))
}

/// `a=1&b=2` (query strings and form bodies). A query string is also read as the servers that
/// split it at `;` too read it (Rack 2, Go before 1.17, older Python and Django): each
/// `name=value` after a `;` in a pair is a parameter of its own as well — `?q=x;id=1` holds
/// `id` to them, which no exclusion of `q` may cover and which the parameter rules must see.
/// (Form bodies are split at `&` alone: Rack reads them so, and the source code forms carry
/// is full of `;`. Go before 1.17 and older Django split them at `;` too: a residual risk for
/// such backends, see `docs/waf.md`, "Limits".)
fn urlencoded<'a>(src: &'a [u8], location: Location, sink: &mut Sink<'a, '_>) {
    for pair in src.split(|&b| b == b'&') {
        if sink.full {
            return;
        }
        if pair.is_empty() {
            continue;
        }
        urlencoded_pair(pair, location, false, sink);
        if location == Location::Query && pair.contains(&b';') {
            for piece in pair.split(|&b| b == b';').skip(1) {
                // Only what those servers take for a parameter: a name, `=`, a value. Its text
                // is its pair's too: a derived target.
                if sink.full {
                    return;
                }
                if piece.iter().position(|&b| b == b'=').is_some_and(|p| p > 0) {
                    urlencoded_pair(piece, location, true, sink);
                }
            }
        }
    }
}

/// One `name=value` (or a bare name) of a URL-encoded list; `derived`: a `;` piece of a pair.
fn urlencoded_pair<'a>(pair: &'a [u8], location: Location, derived: bool, sink: &mut Sink<'a, '_>) {
    let target = if derived {
        Target::new_derived
    } else {
        Target::new
    };
    let (name, value) = match pair.iter().position(|&b| b == b'=') {
        Some(p) => (
            pair.get(..p).unwrap_or_default(),
            pair.get(p + 1..).unwrap_or_default(),
        ),
        None => (pair, &[][..]),
    };
    let name = percent_decode(name, true);
    if !plain_name(&name) {
        sink.push(target(location, name.clone(), Part::Name, name.clone()));
    }
    if !value.is_empty() {
        let value = percent_decode(value, true);
        sink.push(target(location, name, Part::Value, value));
    }
}

/// A URL-encoded form body.
fn form<'a>(body: &'a [u8], sink: &mut Sink<'a, '_>) {
    // Form encoders escape every control character: a raw one is smuggled.
    let raw_control = body
        .iter()
        .position(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7f);
    urlencoded(body, Location::Body, sink);
    if let Some(at) = raw_control {
        sink.problem(Problem::Malformed { at }, body);
    }
}

/// One `Cookie` header.
fn cookies<'a>(header: &'a [u8], sink: &mut Sink<'a, '_>) {
    for pair in header.split(|&b| b == b';') {
        if sink.full {
            return;
        }
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(p) => (
                pair.get(..p).unwrap_or_default().trim_ascii(),
                pair.get(p + 1..).unwrap_or_default().trim_ascii(),
            ),
            None => (pair, &[][..]),
        };
        let name = String::from_utf8_lossy(name);
        if !plain_name(&name) {
            sink.push(Target::new(
                Location::Cookie,
                name.clone(),
                Part::Name,
                name.clone(),
            ));
        }
        if !value.is_empty() {
            let unquoted = match value {
                [b'"', inner @ .., b'"'] if !inner.is_empty() => Some(cookie_unquote(inner)),
                _ => None,
            };
            // Quoted: as sent (PHP keeps the quotes), then unquoted (Python, Werkzeug, Node,
            // Go), both under the cookie's name (so redacted alike, under the same exclusions).
            let decoded = percent_decode(value, false);
            match unquoted {
                Some(u) => {
                    sink.push(Target::new(
                        Location::Cookie,
                        name.clone(),
                        Part::Value,
                        decoded,
                    ));
                    sink.push(Target::new(Location::Cookie, name, Part::Value, u));
                }
                None => {
                    sink.push(Target::new(Location::Cookie, name, Part::Value, decoded));
                }
            }
        }
    }
}

/// What servers that unquote cookies read in a double-quoted cookie value (`inner`, without
/// its quotes): Python's `http.cookies` (Django, Starlette) and Werkzeug turn `\ooo` (three
/// octal digits, at most `\377`) into that byte and `\c` into `c`; Node's `cookie` (Express)
/// and Go strip the quotes and percent-decode. Both at once: escapes decoded, then
/// percent-decoded once; the bytes read as UTF-8 (lossily).
fn cookie_unquote(inner: &[u8]) -> String {
    let mut v = Vec::with_capacity(inner.len());
    let mut i = 0;
    while let Some(&b) = inner.get(i) {
        if b != b'\\' {
            v.push(b);
            i += 1;
            continue;
        }
        let octal = match (inner.get(i + 1), inner.get(i + 2), inner.get(i + 3)) {
            (Some(&a @ b'0'..=b'3'), Some(&m @ b'0'..=b'7'), Some(&l @ b'0'..=b'7')) => {
                Some(((a - b'0') << 6) | ((m - b'0') << 3) | (l - b'0'))
            }
            _ => None,
        };
        match (octal, inner.get(i + 1)) {
            (Some(byte), _) => {
                v.push(byte);
                i += 4;
            }
            // Python's `.` does not match a line break: the backslash stays.
            (None, Some(&c)) if c != b'\n' => {
                v.push(c);
                i += 2;
            }
            (None, _) => {
                v.push(b);
                i += 1;
            }
        }
    }
    percent_decode(&v, false).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Text

/// At most 5 % of invalid UTF-8 and control bytes.
pub(crate) fn looks_textual(body: &[u8]) -> bool {
    let mut bad = 0usize;
    for chunk in body.utf8_chunks() {
        bad += chunk.invalid().len();
        bad += chunk
            .valid()
            .bytes()
            .filter(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c)) || b == 0x7f)
            .count();
    }
    bad.saturating_mul(20) <= body.len()
}

/// Why a wide body is rule 1005.
const WIDE_TEXT: &str = "UTF-16 or UTF-32 text";

/// Whether a body looks like UTF-16 or UTF-32 text: a UTF-16/32 byte order mark; a first
/// character that is ASCII padded with NULs, which is how RFC 4627 §3 (and Python's `json`,
/// .NET, Jackson) tell UTF-16/32 JSON from UTF-8; or NULs at 90 % or more of the even or of
/// the odd offsets (ASCII and Latin-1 text in UTF-16 or UTF-32). One pass, no allocation.
fn wide_text(body: &[u8]) -> bool {
    let ascii = |c: u8| c.is_ascii_graphic() || c.is_ascii_whitespace();
    match body {
        [0xfe, 0xff, ..] | [0xff, 0xfe, ..] | [0, 0, 0xfe, 0xff, ..] => return true,
        [0, 0, 0, c, ..] | [c, 0, 0, 0, ..] | [0, c, ..] | [c, 0, ..] if ascii(*c) => {
            return true;
        }
        _ => {}
    }
    if body.len() < 4 {
        return false;
    }
    let (mut even, mut odd) = (0usize, 0usize);
    for pair in body.chunks(2) {
        if pair.first() == Some(&0) {
            even += 1;
        }
        if pair.get(1) == Some(&0) {
            odd += 1;
        }
    }
    let half = body.len() / 2;
    even.max(odd).saturating_mul(10) >= half.saturating_mul(9)
}

/// Reads `body` as JSON if it is a JSON document (it starts with `{` or `[` and parses, within
/// the depth limit) and says so; otherwise pushes nothing and leaves `facts` alone.
fn json_document<'a>(
    body: &'a [u8],
    limits: &ExtractLimits,
    sink: &mut Sink<'a, '_>,
    facts: &mut BodyFacts,
) -> bool {
    if !starts_like_json(body) {
        return false;
    }
    let (targets, findings, full) = (sink.out.len(), sink.findings.len(), sink.full);
    let mut top = None;
    if json::extract(body, limits.max_depth, sink, &mut top).is_ok() {
        facts.kind = BodyKind::Json;
        facts.json_top_array = top;
        return true;
    }
    // Not JSON after all: forget what the attempt pushed.
    sink.out.truncate(targets);
    sink.findings.truncate(findings);
    sink.full = full;
    false
}

/// Whether a body's first non-blank byte opens a JSON object or array.
pub(crate) fn starts_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// A textual body: as JSON if it is a JSON document (or starts with one), else one raw
/// target.
fn text<'a>(
    body: &'a [u8],
    limits: &ExtractLimits,
    sink: &mut Sink<'a, '_>,
    facts: &mut BodyFacts,
) {
    if json_document(body, limits, sink, facts) {
        return;
    }
    if starts_like_json(body) {
        let (targets, findings, full) = (sink.out.len(), sink.findings.len(), sink.full);
        // A JSON value followed by something else (`{…} x`) is still that value to a decoder
        // that reads one: inspected as JSON, and the whole body as text besides.
        let mut top = None;
        if json::extract_leading(body, limits.max_depth, sink, &mut top).is_ok() {
            facts.kind = BodyKind::Json;
            facts.json_top_array = top;
            sink.push(Target::new(
                Location::Body,
                "",
                Part::Value,
                String::from_utf8_lossy(body),
            ));
            return;
        }
        sink.out.truncate(targets);
        sink.findings.truncate(findings);
        sink.full = full;
    }
    facts.kind = BodyKind::Text;
    sink.push(Target::new(
        Location::Body,
        "",
        Part::Value,
        String::from_utf8_lossy(body),
    ));
}

// ---------------------------------------------------------------------------------------------
// Content types

/// What a media type announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Absent,
    Json,
    Form,
    Multipart,
    Xml,
    GraphQl,
    Text,
    Binary,
    Unknown,
}

impl Media {
    fn of(media: &str) -> Media {
        let m = media.trim().to_ascii_lowercase();
        let m = m.as_str();
        if m.is_empty() {
            return Media::Absent;
        }
        match m {
            "application/json" | "text/json" | "application/x-json" => return Media::Json,
            "application/x-www-form-urlencoded" => return Media::Form,
            "application/xml" | "text/xml" => return Media::Xml,
            "application/graphql" => return Media::GraphQl,
            "application/octet-stream"
            | "application/zip"
            | "application/pdf"
            | "application/gzip"
            | "application/x-gzip"
            | "application/x-tar"
            | "application/x-7z-compressed"
            | "application/x-rar-compressed"
            | "application/vnd.rar"
            | "application/x-bzip2"
            | "application/x-xz"
            | "application/zstd"
            | "application/protobuf"
            | "application/x-protobuf"
            | "application/vnd.google.protobuf"
            | "application/grpc"
            | "application/wasm"
            | "application/cbor"
            | "application/msgpack"
            | "application/x-msgpack" => {
                return Media::Binary;
            }
            _ => {}
        }
        if m.ends_with("+json") {
            Media::Json
        } else if m.ends_with("+xml") {
            Media::Xml
        } else if m.starts_with("multipart/") {
            // Rack parses `multipart/mixed` and `multipart/related` bodies into its form
            // parameters as it does `multipart/form-data` ones.
            Media::Multipart
        } else if ["image/", "audio/", "video/", "font/", "application/grpc"]
            .iter()
            .any(|p| m.starts_with(p))
        {
            Media::Binary
        } else if m.starts_with("text/") {
            Media::Text
        } else {
            Media::Unknown
        }
    }

    const fn announced(self) -> BodyKind {
        match self {
            Media::Json => BodyKind::Json,
            Media::Form => BodyKind::Form,
            Media::Multipart => BodyKind::Multipart,
            Media::Xml => BodyKind::Xml,
            Media::GraphQl => BodyKind::GraphQl,
            Media::Binary => BodyKind::Binary,
            Media::Text | Media::Absent | Media::Unknown => BodyKind::Text,
        }
    }
}

/// A parsed `Content-Type`.
struct ContentType {
    media: Media,
    boundary: Option<String>,
    /// Why parsers could read this body differently than the WAF does, if they could.
    ambiguous: Option<&'static str>,
    /// A multipart type is `multipart/form-data` (whose parts must all say what they are).
    form_data: bool,
    /// A structured type other than JSON (form, multipart, XML, GraphQL) in a field that holds
    /// `/json` or `+json`, which Laravel reads as JSON.
    json_in_field: bool,
}

/// Why a media type followed by other text is rule 1005.
const MEDIA_AND_MORE: &str = "a media type followed by other text (PHP reads the type up to \
                              a `,` or a blank, Rack up to a `,`, others not at all)";
/// Why a non-JSON type in a field holding `/json` or `+json` is rule 1005.
const JSON_IN_FIELD: &str = "a Content-Type holding `/json` or `+json` on a body of another \
                             type (Laravel reads it as JSON)";

impl ContentType {
    fn parse(ct: Option<&str>) -> ContentType {
        let Some(ct) = ct else {
            return ContentType {
                media: Media::Absent,
                boundary: None,
                ambiguous: None,
                form_data: false,
                json_in_field: false,
            };
        };
        let (media, params) = ct.split_once(';').unwrap_or((ct, ""));
        // The type as PHP reads it: up to the first `;`, `,` or blank (Rack: `;` or `,`). What
        // follows it there is read by other parsers as part of the type, or refused.
        let media = media.trim_start_matches([' ', '\t']);
        let (media, more) = media.split_at(media.find([',', ' ', '\t']).unwrap_or(media.len()));
        let form_data = media.trim().eq_ignore_ascii_case("multipart/form-data");
        let media = Media::of(media);
        let mut ambiguous = None;
        if !more.trim_matches([' ', '\t']).is_empty() {
            ambiguous = Some(MEDIA_AND_MORE);
        }
        // Laravel's `isJson()` looks for `/json` or `+json` anywhere in the field (`text/*` and
        // unknown types are read as JSON anyway when they are JSON documents).
        let json_in_field = matches!(
            media,
            Media::Form | Media::Multipart | Media::Xml | Media::GraphQl
        ) && [&b"/json"[..], b"+json"].iter().any(|needle| {
            ct.as_bytes()
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
        });
        let mut boundary = None;
        let mut boundaries = 0;
        parse_params(params, &mut |name, value| {
            // JSON is UTF-8 (RFC 8259 §8.1), and the WAF reads it so: a body an upstream
            // would decode from another charset (UTF-7, UTF-16) is not what was inspected.
            if media == Media::Json
                && name.eq_ignore_ascii_case("charset")
                && !value.eq_ignore_ascii_case("utf-8")
                && !value.eq_ignore_ascii_case("utf8")
            {
                ambiguous = Some("a JSON charset other than UTF-8");
            }
            // Forms, XML and text are read as (lossy) UTF-8 too; an upstream honouring a
            // charset that is not ASCII-transparent (UTF-16, UTF-7, EBCDIC, Shift_JIS …)
            // reads other characters than the WAF did.
            if matches!(media, Media::Form | Media::Xml | Media::Text)
                && name.eq_ignore_ascii_case("charset")
                && !plain_charset(&value)
            {
                ambiguous = Some("a charset other than UTF-8, US-ASCII or ISO-8859-1");
            }
            // Parsers pick different boundaries out of `xboundary=A; boundary=B` or two
            // `boundary` parameters: parts the WAF took for one thing would be others.
            if media == Media::Multipart && name.to_ascii_lowercase().contains("boundary") {
                boundaries += 1;
                if boundary.is_none() && name.eq_ignore_ascii_case("boundary") {
                    boundary = Some(value.into_owned());
                }
            }
        });
        // PHP takes the boundary after the first `boundary` anywhere in the field, inside
        // another parameter's value too (`x=boundary=A; boundary=B` is `A` to it).
        let php_disagrees =
            media == Media::Multipart && php_boundary(params) != boundary.as_deref();
        if boundaries > 1 || php_disagrees {
            ambiguous = Some("more than one multipart boundary");
        }
        ContentType {
            media,
            boundary,
            ambiguous,
            form_data,
            json_in_field,
        }
    }
}

/// The boundary PHP reads from a multipart `Content-Type`'s parameters: after the first `=`
/// that follows the first `boundary` (case-sensitive, else in any case) anywhere in them,
/// up to `,` or `;`, or a double-quoted string, taken as written.
fn php_boundary(params: &str) -> Option<&str> {
    let at = params.find("boundary").or_else(|| {
        params
            .as_bytes()
            .windows(b"boundary".len())
            .position(|w| w.eq_ignore_ascii_case(b"boundary"))
    })?;
    let rest = params.get(at..)?;
    let value = rest.get(rest.find('=')? + 1..)?;
    match value.strip_prefix('"') {
        Some(q) => q.get(..q.find('"')?),
        None => value.get(..value.find([',', ';']).unwrap_or(value.len())),
    }
}

/// Whether a `charset` names UTF-8, US-ASCII or ISO-8859-1: the charsets in which every byte
/// below 0x80 is the ASCII character it reads as UTF-8, without shifts or multi-byte units,
/// so what the WAF reads (lossy UTF-8) holds every ASCII character an upstream decodes.
/// Case-insensitive, blanks trimmed; the IANA names and the aliases no decoder maps to
/// another charset (`utf8`, `ascii`, `latin1` …). Short or numeric aliases (`us`, `l1`,
/// `cp367`, `ibm819` …) are not accepted: nothing sends them, and an unknown name is left to
/// each upstream's default.
pub(super) fn plain_charset(name: &str) -> bool {
    const PLAIN: &[&str] = &[
        // UTF-8
        "utf-8",
        "utf8",
        "csutf8",
        // US-ASCII
        "us-ascii",
        "ascii",
        "ansi_x3.4-1968",
        "ansi_x3.4-1986",
        "iso646-us",
        "iso_646.irv:1991",
        "csascii",
        // ISO-8859-1
        "iso-8859-1",
        "iso_8859-1",
        "iso_8859-1:1987",
        "iso8859-1",
        "latin1",
        "iso-ir-100",
        "csisolatin1",
    ];
    let name = name.trim();
    PLAIN.iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// `; name=value; name="quoted \" value"` parameters (of `Content-Type` and
/// `Content-Disposition`); a leading token without `=` is skipped. In quoted values only `\"`
/// is an escape (browsers send Windows paths with raw backslashes).
fn parse_params<'x>(mut s: &'x str, f: &mut dyn FnMut(&'x str, Cow<'x, str>)) {
    loop {
        s = s.trim_start_matches(|c: char| c == ';' || c.is_ascii_whitespace());
        if s.is_empty() {
            return;
        }
        let name_end = s.find(['=', ';']).unwrap_or(s.len());
        let name = s.get(..name_end).unwrap_or_default().trim();
        s = s.get(name_end..).unwrap_or_default();
        let Some(after) = s.strip_prefix('=') else {
            continue;
        };
        let after = after.trim_start_matches([' ', '\t']);
        let (value, rest) = match after.strip_prefix('"') {
            Some(q) => quoted(q),
            None => {
                let end = after.find(';').unwrap_or(after.len());
                (
                    Cow::Borrowed(after.get(..end).unwrap_or_default().trim_end()),
                    after.get(end..).unwrap_or_default(),
                )
            }
        };
        f(name, value);
        s = rest;
    }
}

/// The quoted string `q` starts (after its opening quote), and what follows it.
fn quoted(q: &str) -> (Cow<'_, str>, &str) {
    let b = q.as_bytes();
    let mut i = 0;
    let mut escaped = false;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' if b.get(i + 1) == Some(&b'"') => {
                escaped = true;
                i += 2;
            }
            b'"' => break,
            _ => i += 1,
        }
    }
    let raw = q.get(..i).unwrap_or(q);
    let rest = q.get(i + 1..).unwrap_or_default();
    let value = if escaped {
        Cow::Owned(raw.replace("\\\"", "\""))
    } else {
        Cow::Borrowed(raw)
    };
    (value, rest)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Longest path segment (JSON key, XML name) in a target name, in bytes.
const MAX_SEGMENT: usize = 128;
/// Length after which a JSON or XML path stops growing.
const MAX_PATH: usize = 512;

#[cfg(test)]
mod tests;
