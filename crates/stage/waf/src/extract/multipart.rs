//! `multipart/form-data` bodies (and other `multipart/*` ones, which Rack reads as forms too): a
//! bounded parser over the buffered bytes.
//!
//! File contents are not inspected, so a body that another parser (PHP, Werkzeug, Go, busboy,
//! Tomcat …) could cut into parts differently would hide whatever the WAF took for a file. The
//! parser therefore accepts only the syntax every one of them reads alike, and anything else is
//! malformed (rule 1001):
//!
//! * every occurrence of `--boundary` that starts a line is a delimiter: it is followed at once
//!   by `--` (the close delimiter) or by the line break of the first delimiter (CRLF or LF,
//!   the same all through the body, the break before each delimiter included; no transport
//!   padding); one that does not start a line must not be preceded by a bare CR nor followed
//!   by what ends a delimiter (`--`, or blanks and a line break); the preamble and what
//!   follows the close delimiter hold no `--boundary` at all (PHP reads lines through a 5 KiB
//!   buffer, compares them as C strings, and reads on past the close);
//! * part header lines end with the same line break, are at most 4 KiB, without control
//!   characters and without folding; `Content-Disposition` and `Content-Type` appear once;
//! * `Content-Disposition` parameters are read alike by every parser ([`plain_disposition`]):
//!   no blanks around `=`, token or quoted values, `filename*` the only RFC 5987 parameter,
//!   only beside `filename` and not empty;
//! * a delimiter's leading line break is not the blank line that ends a part's headers (an
//!   empty value is `CRLF CRLF CRLF --boundary`);
//! * no `Content-Transfer-Encoding` other than the identity ones (`7bit`, `8bit`, `binary`):
//!   Go decodes quoted-printable, the WAF does not (outside `multipart/form-data`, `base64` too,
//!   which no parser decodes for the application);
//! * a file's content does not hold `--boundary` at all.
//!
//! A part's `charset` other than UTF-8, US-ASCII or ISO-8859-1 (and such a `_charset_` field)
//! is rule 1005.

use std::borrow::Cow;

use aho_corasick::AhoCorasick;

use super::{Problem, Sink, parse_params, percent_decode, plain_charset, plain_name};
use crate::model::{Location, Part, Target};

/// Most bytes of one part's header block.
const MAX_PART_HEADERS: usize = 16 * 1024;
/// Longest part header line accepted: well under PHP's 5 KiB line buffer.
const MAX_PART_HEADER_LINE: usize = 4 * 1024;
/// Longest boundary accepted (RFC 2046 says 70).
const MAX_BOUNDARY: usize = 200;

/// The line break a body's delimiters use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Crlf,
    Lf,
}

impl Eol {
    const fn len(self) -> usize {
        match self {
            Eol::Crlf => 2,
            Eol::Lf => 1,
        }
    }
}

/// What follows `--boundary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// `--`: the close delimiter.
    Close,
    /// A line break, and where the next line starts.
    Line(Eol, usize),
    Other,
}

fn after_delimiter(body: &[u8], end: usize) -> After {
    match (body.get(end), body.get(end + 1)) {
        (Some(b'-'), Some(b'-')) => After::Close,
        (Some(b'\r'), Some(b'\n')) => After::Line(Eol::Crlf, end + 2),
        (Some(b'\n'), _) => After::Line(Eol::Lf, end + 1),
        _ => After::Other,
    }
}

/// Whether some parser would end a delimiter at `end`: `--`, or blanks (transport padding)
/// then CR or LF.
fn ends_like_delimiter(body: &[u8], end: usize) -> bool {
    if body.get(end..).is_some_and(|r| r.starts_with(b"--")) {
        return true;
    }
    let rest = body.get(end..).unwrap_or_default();
    matches!(
        rest.iter().find(|&&c| c != b' ' && c != b'\t'),
        Some(b'\r' | b'\n')
    )
}

/// Reads `body` as multipart delimited by `boundary`. In `multipart/form-data` (`form_data`)
/// every part has a `Content-Disposition`; in other multipart types (`multipart/mixed`,
/// `multipart/related`: batches, MTOM) a part may have none, and its content is a value
/// without a name (Rack reads it as a value named after its `Content-Type`).
pub(super) fn extract<'a>(
    body: &'a [u8],
    boundary: Option<&str>,
    form_data: bool,
    sink: &mut Sink<'a, '_>,
) -> Result<(), Problem> {
    // Some parsers split a header on `,` or strip `'` around a value: a boundary with either
    // is not the same boundary to all of them.
    let boundary = boundary
        .filter(|b| {
            !b.is_empty()
                && b.len() <= MAX_BOUNDARY
                && !b
                    .bytes()
                    .any(|c| c.is_ascii_control() || c == b',' || c == b'\'')
        })
        .ok_or(Problem::Malformed { at: 0 })?;
    let mut delim = Vec::with_capacity(boundary.len() + 2);
    delim.extend_from_slice(b"--");
    delim.extend_from_slice(boundary.as_bytes());
    let finder = AhoCorasick::new([&delim]).map_err(|_| Problem::Malformed { at: 0 })?;

    // Every occurrence of `--boundary`: those that start a line are the delimiters; any other
    // must not look like one to a parser that finds delimiters elsewhere.
    let mut delimiters = Vec::new();
    for m in finder.find_overlapping_iter(body) {
        let s = m.start();
        let before = s.checked_sub(1).and_then(|i| body.get(i)).copied();
        match before {
            None | Some(b'\n') => delimiters.push(s),
            Some(b'\r') => return Err(Problem::Malformed { at: s }),
            Some(_) if ends_like_delimiter(body, m.end()) => {
                return Err(Problem::Malformed { at: s });
            }
            // In the preamble, anywhere: PHP looks for the first delimiter line by line, its
            // lines cut at 5 KiB, and compares them as C strings (a NUL ends one).
            Some(_) if delimiters.is_empty() => return Err(Problem::Malformed { at: s }),
            Some(_) => {}
        }
    }
    let dl = delim.len();
    let mut delimiters = delimiters.into_iter();
    let first = delimiters.next().ok_or(Problem::Malformed { at: 0 })?;
    let (eol, mut p) = match after_delimiter(body, first + dl) {
        After::Line(eol, next) => (eol, next),
        After::Close => return epilogue(body, &finder, first + dl),
        After::Other => return Err(Problem::Malformed { at: first }),
    };
    loop {
        if sink.full {
            return Ok(());
        }
        let (headers, content_start) = part_headers(body, p, eol, form_data)?;
        let d = delimiters
            .next()
            .ok_or(Problem::Malformed { at: body.len() })?;
        // A delimiter inside the header block, or one whose line break is not the first
        // delimiter's (the break before a delimiter belongs to it).
        let content_end = d
            .checked_sub(eol.len())
            .filter(|&e| e >= content_start)
            .ok_or(Problem::Malformed { at: d })?;
        let line_break = body.get(content_end..d).unwrap_or_default();
        let bare_lf_before = content_end
            .checked_sub(1)
            .and_then(|i| body.get(i))
            .is_none_or(|&c| c != b'\r');
        let same = match eol {
            Eol::Crlf => line_break == b"\r\n",
            Eol::Lf => line_break == b"\n" && bare_lf_before,
        };
        if !same {
            return Err(Problem::Malformed { at: d });
        }
        let content = body.get(content_start..content_end).unwrap_or_default();
        emit(headers, content, &finder, content_start, form_data, sink)?;
        match after_delimiter(body, d + dl) {
            After::Line(e, next) if e == eol => p = next,
            After::Close => return epilogue(body, &finder, d + dl),
            _ => return Err(Problem::Malformed { at: d }),
        }
    }
}

/// After the close delimiter (`close` is where its `--` starts): no `--boundary` anywhere, at
/// the start of a line or not (PHP looks for delimiter lines past it, cut at 5 KiB, and would
/// read more parts).
fn epilogue(body: &[u8], finder: &AhoCorasick, close: usize) -> Result<(), Problem> {
    let rest = body.get(close..).unwrap_or_default();
    match finder.find(rest) {
        Some(m) => Err(Problem::Malformed {
            at: close + m.start(),
        }),
        None => Ok(()),
    }
}

/// What a part's headers say.
#[derive(Default)]
struct PartHeaders<'a> {
    disposition: bool,
    name: Option<Cow<'a, str>>,
    filename: Option<Cow<'a, str>>,
    filename_star: Option<Cow<'a, str>>,
    content_type: Option<Cow<'a, str>>,
    /// A parameter named twice (parsers keep the first or the last), or an RFC 5987 one
    /// other than `filename*` (busboy takes `name*` for the field name, others ignore it).
    repeated: bool,
}

impl<'a> PartHeaders<'a> {
    fn param(&mut self, name: &str, value: Cow<'a, str>) {
        let slot = if name.eq_ignore_ascii_case("name") {
            &mut self.name
        } else if name.eq_ignore_ascii_case("filename") {
            &mut self.filename
        } else if name.eq_ignore_ascii_case("filename*") {
            &mut self.filename_star
        } else {
            if name.ends_with('*') {
                self.repeated = true;
            }
            return;
        };
        if slot.is_some() {
            self.repeated = true;
        }
        *slot = Some(value);
    }

    /// Reads `Content-Disposition`; false when its syntax could be read another way.
    fn disposition(&mut self, value: &'a [u8]) -> bool {
        if self.disposition || !plain_disposition(value) {
            return false;
        }
        self.disposition = true;
        match std::str::from_utf8(value) {
            Ok(s) => parse_params(s, &mut |n, v| self.param(n, v)),
            Err(_) => {
                let s = String::from_utf8_lossy(value);
                parse_params(&s, &mut |n, v| self.param(n, Cow::Owned(v.into_owned())));
            }
        }
        !self.repeated
    }
}

/// Whether a `Content-Disposition` value is made only of what every parser reads alike:
/// `type *( OWS ";" OWS name "=" value ) OWS`, where the type and names are tokens, a value a
/// token or a closed double-quoted string, and nothing else:
///
/// * no blanks around `=` (PHP compares `filename ` with `filename`, Werkzeug drops such a
///   parameter: both would read a value where the WAF read a file);
/// * an unquoted value is a token (Werkzeug ignores a parameter whose value is not one), not
///   starting with `'` (some parsers take it for a quote);
/// * a quoted string ends at the same `"` whether `\` escapes only `"` (browsers send
///   Windows paths with raw backslashes) or any character (Werkzeug, Tomcat, Go): `"a\\"`
///   ends there for the latter and runs on for the former, so it is refused, while Go's own
///   `"c\\d.txt"` ends alike for both; outside a file name no `\\` at all (the field name
///   would differ); no control characters;
/// * the only name with `*` is `filename*` (RFC 5987): Go reads `filename*0` and `name*0`
///   (RFC 2231 continuations), busboy `name*`.
fn plain_disposition(v: &[u8]) -> bool {
    let tchar = portcullis_core::is_tchar;
    let blanks = |i: &mut usize| {
        while matches!(v.get(*i), Some(b' ' | b'\t')) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while v.get(*i).is_some_and(|&c| tchar(c)) {
            *i += 1;
        }
        v.get(start..*i).unwrap_or_default()
    };
    let mut i = 0;
    if token(&mut i).is_empty() {
        return false;
    }
    loop {
        blanks(&mut i);
        match v.get(i) {
            None => return true,
            Some(b';') => i += 1,
            Some(_) => return false,
        }
        blanks(&mut i);
        if i == v.len() {
            return true;
        }
        let name = token(&mut i);
        if name.is_empty()
            || (name.contains(&b'*') && !name.eq_ignore_ascii_case(b"filename*"))
            || v.get(i) != Some(&b'=')
        {
            return false;
        }
        i += 1;
        if v.get(i) == Some(&b'"') {
            let Some(body) = v.get(i + 1..) else {
                return false;
            };
            let (Some(end), Some(any_end)) = (quoted_end(body, false), quoted_end(body, true))
            else {
                return false;
            };
            let inner = body.get(..end).unwrap_or_default();
            let file_name =
                name.eq_ignore_ascii_case(b"filename") || name.eq_ignore_ascii_case(b"filename*");
            if end != any_end
                || inner.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f)
                || (!file_name && inner.windows(2).any(|w| w == b"\\\\"))
            {
                return false;
            }
            i += 1 + end + 1;
        } else {
            let value = token(&mut i);
            if value.is_empty() || value.first() == Some(&b'\'') {
                return false;
            }
        }
    }
}

/// Where the quoted string `s` begins (after its opening `"`) ends: the index of its closing
/// `"`. `any_escape`: `\` escapes any character; else only `\"` is an escape.
fn quoted_end(s: &[u8], any_escape: bool) -> Option<usize> {
    let mut i = 0;
    loop {
        match s.get(i)? {
            b'\\' if any_escape || s.get(i + 1) == Some(&b'"') => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
}

/// Reads the header block starting at `p`: the headers and where the content starts. Every
/// line ends with `eol`. `form_data`: the block must hold a `Content-Disposition`.
fn part_headers(
    body: &[u8],
    p: usize,
    eol: Eol,
    form_data: bool,
) -> Result<(PartHeaders<'_>, usize), Problem> {
    let mut h = PartHeaders::default();
    let limit = p.saturating_add(MAX_PART_HEADERS).min(body.len());
    let mut i = p;
    loop {
        let window = body.get(i..limit).unwrap_or_default();
        let len = window
            .iter()
            .position(|&c| c == b'\n')
            .ok_or(Problem::Malformed { at: i })?;
        let raw = window.get(..len).unwrap_or_default();
        let line_at = i;
        i += len + 1;
        let line = match eol {
            Eol::Crlf => raw.strip_suffix(b"\r"),
            Eol::Lf => Some(raw),
        }
        .ok_or(Problem::Malformed { at: line_at })?;
        // A CR inside a line: Werkzeug ends lines (and the header block) at a bare CR. Other
        // control bytes: PHP's C strings end at a NUL. A long line: PHP reads lines through a
        // 5 KiB buffer and takes each full buffer for a line of its own.
        if line.len() > MAX_PART_HEADER_LINE
            || line.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f)
        {
            return Err(Problem::Malformed { at: line_at });
        }
        if line.is_empty() {
            if form_data && !h.disposition {
                return Err(Problem::Malformed { at: p });
            }
            return Ok((h, i));
        }
        // Folded lines are joined by some parsers and taken for headers by others.
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(Problem::Malformed { at: line_at });
        }
        let colon = line
            .iter()
            .position(|&c| c == b':')
            .ok_or(Problem::Malformed { at: line_at })?;
        let name = line.get(..colon).unwrap_or_default();
        if name.is_empty() || !name.iter().all(|&c| c.is_ascii_graphic()) {
            return Err(Problem::Malformed { at: line_at });
        }
        let value = line.get(colon + 1..).unwrap_or_default().trim_ascii();
        let understood = if name.eq_ignore_ascii_case(b"content-disposition") {
            h.disposition(value)
        } else if name.eq_ignore_ascii_case(b"content-type") {
            let first = h.content_type.is_none();
            h.content_type = Some(String::from_utf8_lossy(value));
            first
        } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
            // Outside form-data (SOAP with attachments, batches) `base64` is common, and no
            // parser decodes it for the application: it is read as sent, as the WAF reads it.
            [&b"7bit"[..], b"8bit", b"binary"]
                .iter()
                .any(|c| value.eq_ignore_ascii_case(c))
                || (!form_data && value.eq_ignore_ascii_case(b"base64"))
        } else {
            true
        };
        if !understood {
            return Err(Problem::Malformed { at: line_at });
        }
    }
}

/// The `charset` parameter of a part's `Content-Type`, if it names one that is read
/// differently from UTF-8.
fn odd_charset(content_type: &str) -> bool {
    let params = content_type.split_once(';').map_or("", |(_, p)| p);
    let mut odd = false;
    parse_params(params, &mut |n, v| {
        if n.eq_ignore_ascii_case("charset") && !plain_charset(&v) {
            odd = true;
        }
    });
    odd
}

fn emit<'a>(
    h: PartHeaders<'a>,
    content: &'a [u8],
    finder: &AhoCorasick,
    content_start: usize,
    form_data: bool,
    sink: &mut Sink<'a, '_>,
) -> Result<(), Problem> {
    // RFC 5987 alone: PHP and Go take such a part for a value, Werkzeug for a file.
    if h.filename_star.is_some() && h.filename.is_none() {
        return Err(Problem::Malformed { at: content_start });
    }
    // A part with a (non-empty) `filename` is a file; any other is a form value to PHP,
    // Werkzeug, Go and busboy alike, whatever its `Content-Type` says (`image/png` on a value
    // changes nothing for them), so its content is inspected as one (read lossily).
    let is_file = h.filename.as_ref().is_some_and(|f| !f.is_empty())
        // Outside form-data, a part without a name whose type is not text (an MTOM or SOAP
        // attachment: an image, a PDF) is an attachment, not inspected as text either.
        || (!form_data
            && h.name.is_none()
            && h.content_type.as_deref().is_some_and(|t| !textual(t)));
    // A file is not inspected: it must not hold what another parser could take for a
    // delimiter.
    if is_file && let Some(m) = finder.find(content) {
        return Err(Problem::Malformed {
            at: content_start + m.start(),
        });
    }
    let field = h.name.unwrap_or(Cow::Borrowed(""));
    // A value an upstream decodes from another charset is not what the WAF read; a file's
    // content is not inspected, whatever its charset. `_charset_` names the charset of the
    // whole form (HTML §4.10.22.7).
    if !is_file
        && (h.content_type.as_deref().is_some_and(odd_charset)
            || (field == "_charset_" && !plain_charset(&String::from_utf8_lossy(content))))
    {
        sink.ambiguous("a multipart part in a charset other than UTF-8, US-ASCII or ISO-8859-1");
    }
    if !plain_name(&field) {
        sink.push(Target::new(
            Location::Body,
            field.clone(),
            Part::Name,
            field.clone(),
        ));
    }
    let filename_star: Option<Cow<'_, str>> = h.filename_star.map(|v| {
        // RFC 5987: charset'language'percent-encoded
        let encoded = v.splitn(3, '\'').nth(2).unwrap_or(&v);
        Cow::Owned(percent_decode(encoded.as_bytes(), false).into_owned())
    });
    // Go takes `filename*` over `filename`: an empty one makes the part a value to it.
    if filename_star.as_ref().is_some_and(|f| f.is_empty()) {
        return Err(Problem::Malformed { at: content_start });
    }
    for filename in [h.filename, filename_star].into_iter().flatten() {
        if !filename.is_empty() {
            sink.push(Target::new(
                Location::Body,
                field.clone(),
                Part::Filename,
                filename,
            ));
        }
    }
    if !is_file && !content.is_empty() {
        let value = String::from_utf8_lossy(content);
        sink.push(Target::new(Location::Body, field, Part::Value, value));
    }
    Ok(())
}

/// Whether a part's `Content-Type` is text an application reads as such: what the body's own
/// type would be read as (JSON, a form, XML, GraphQL, `text/*`), or `application/http` (a
/// batch's requests).
fn textual(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or_default();
    matches!(
        super::Media::of(media),
        super::Media::Json
            | super::Media::Form
            | super::Media::Xml
            | super::Media::GraphQl
            | super::Media::Text
    ) || media.trim().eq_ignore_ascii_case("application/http")
}

#[cfg(test)]
mod tests {
    use crate::extract::{ExtractLimits, body_targets};

    const CT: &str = "multipart/form-data; boundary=XyZ";

    /// (address, value) pairs and the rules found.
    fn run(ct: &str, b: &[u8]) -> (Vec<(String, String)>, Vec<u32>) {
        let mut out = Vec::new();
        let mut findings = Vec::new();
        body_targets(
            Some(ct),
            b,
            &ExtractLimits::default(),
            &mut out,
            &mut findings,
        );
        (
            out.iter()
                .map(|t| (t.to_string(), t.value.to_string()))
                .collect(),
            findings.iter().map(|f| f.rule).collect(),
        )
    }

    fn p(a: &str, v: &str) -> (String, String) {
        (a.to_string(), v.to_string())
    }

    /// A part with headers `h` and content `c`, CRLF, opening the body.
    fn one(h: &str, c: &[u8]) -> Vec<u8> {
        let mut b = format!("--XyZ\r\n{h}\r\n\r\n").into_bytes();
        b.extend_from_slice(c);
        b.extend_from_slice(b"\r\n--XyZ--\r\n");
        b
    }

    fn malformed(ct: &str, b: &[u8]) {
        let (_, f) = run(ct, b);
        assert_eq!(f, vec![1001], "{}", String::from_utf8_lossy(b));
    }

    fn ambiguous(ct: &str, b: &[u8]) {
        let (_, f) = run(ct, b);
        assert_eq!(f, vec![1005], "{}", String::from_utf8_lossy(b));
    }

    // ----- what clients send

    #[test]
    fn browser_body() {
        let ct = "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW";
        let b = b"------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n\
Content-Disposition: form-data; name=\"comment\"\r\n\r\n\
line one\r\nline two -- not a delimiter\r\n\
------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n\
Content-Disposition: form-data; name=\"avatar\"; filename=\"it's me.png\"\r\n\
Content-Type: image/png\r\n\r\n\
\x89PNG\r\n\x1a\n\0\0\0\rIHDR--\r\n--\n\r\n\
------WebKitFormBoundary7MA4YWxkTrZu0gW\r\n\
Content-Disposition: form-data; name=\"unset\"; filename=\"\"\r\n\
Content-Type: application/octet-stream\r\n\r\n\
\r\n\
------WebKitFormBoundary7MA4YWxkTrZu0gW--\r\n";
        let (t, f) = run(ct, b);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(
            t,
            vec![
                p("body:comment", "line one\r\nline two -- not a delimiter"),
                p("body:avatar (filename)", "it's me.png"),
            ]
        );
    }

    #[test]
    fn curl_body() {
        let ct = "multipart/form-data; boundary=------------------------d74496d66958873e";
        let b = b"--------------------------d74496d66958873e\r\n\
Content-Disposition: form-data; name=\"person\"\r\n\r\n\
anonymous\r\n\
--------------------------d74496d66958873e\r\n\
Content-Disposition: form-data; name=\"secret\"; filename=\"file.txt\"\r\n\
Content-Type: text/plain\r\n\r\n\
contents of the file\r\n\
--------------------------d74496d66958873e--\r\n";
        let (t, f) = run(ct, b);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(
            t,
            vec![
                p("body:person", "anonymous"),
                p("body:secret (filename)", "file.txt"),
            ]
        );
    }

    /// Python requests (urllib3) and Go's `mime/multipart` writer; Go doubles backslashes and
    /// escapes quotes.
    #[test]
    fn python_and_go_bodies() {
        let ct = "multipart/form-data; boundary=3f4b5c2e1d0a4e8f9b7c6d5e4f3a2b1c";
        let b = b"--3f4b5c2e1d0a4e8f9b7c6d5e4f3a2b1c\r\n\
Content-Disposition: form-data; name=\"q\"\r\n\r\n\
hello\r\n\
--3f4b5c2e1d0a4e8f9b7c6d5e4f3a2b1c\r\n\
Content-Disposition: form-data; name=\"f\"; filename=\"report.csv\"\r\n\
Content-Type: text/csv; charset=utf-16\r\n\r\n\
a,b\r\n\
--3f4b5c2e1d0a4e8f9b7c6d5e4f3a2b1c--\r\n";
        let (t, f) = run(ct, b);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(
            t,
            vec![p("body:q", "hello"), p("body:f (filename)", "report.csv")]
        );
        let ct = "multipart/form-data; boundary=0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7";
        let b = b"--0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7\r\n\
Content-Disposition: form-data; name=\"field\"\r\n\r\n\
value\r\n\
--0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"a \\\"b\\\" c\\\\d.txt\"\r\n\
Content-Type: application/octet-stream\r\n\r\n\
\0\x01\x02\r\n\r\n\
--0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7--\r\n";
        let (t, f) = run(ct, b);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(
            t,
            vec![
                p("body:field", "value"),
                p("body:file (filename)", "a \"b\" c\\\\d.txt"),
            ]
        );
    }

    #[test]
    fn preamble_epilogue_and_lf_bodies() {
        let b = b"This is a preamble.\r\nIt spans lines.\r\n--XyZ\r\n\
Content-Disposition: form-data; name=a\r\n\r\n\
1\r\n--XyZ--\r\nepilogue, ignored\r\n";
        let (t, f) = run(CT, b);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(t, vec![p("body:a", "1")]);
        let b = b"preamble\n--XyZ\nContent-Disposition: form-data; name=a\n\n1\n\
--XyZ\nContent-Disposition: form-data; name=b\nContent-Type: text/plain; charset=UTF-8\n\n\
two\nlines\n--XyZ--\n";
        let (t, f) = run(CT, b);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(t, vec![p("body:a", "1"), p("body:b", "two\nlines")]);
        // No epilogue, no line break after the close delimiter.
        let (t, f) = run(
            CT,
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--XyZ--",
        );
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(t, vec![p("body:a", "1")]);
    }

    #[test]
    fn empty_values_identity_encodings_and_rfc5987_beside_filename() {
        let b = b"--XyZ\r\n\
Content-Disposition: form-data; name=\"empty\"\r\n\r\n\
\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"doc\"; filename=\"x.txt\"; filename*=UTF-8''%2e%2e%2fx.php\r\n\
Content-Transfer-Encoding: binary\r\n\r\n\
x\r\n--XyZ\r\n\
content-disposition: form-data; name=\"v\"\r\ncontent-transfer-encoding: 8BIT\r\n\r\n\
mid-line --XyZ text and a--XyZb\r\n--XyZ--\r\n";
        let (t, f) = run(CT, b);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(
            t,
            vec![
                p("body:doc (filename)", "x.txt"),
                p("body:doc (filename)", "../x.php"),
                p("body:v", "mid-line --XyZ text and a--XyZb"),
            ]
        );
    }

    #[test]
    fn plain_charsets_pass() {
        for cs in [
            "utf-8",
            "UTF8",
            "us-ascii",
            "ISO-8859-1",
            "latin1",
            "\"utf-8\"",
        ] {
            let b = one(
                &format!(
                    "Content-Disposition: form-data; name=a\r\nContent-Type: text/plain; charset={cs}"
                ),
                b"x",
            );
            let (_, f) = run(CT, &b);
            assert!(f.is_empty(), "{cs}: {f:?}");
        }
        let (_, f) = run(
            CT,
            &one("Content-Disposition: form-data; name=_charset_", b"UTF-8"),
        );
        assert!(f.is_empty(), "{f:?}");
    }

    // ----- delimiters

    /// Every `--boundary` that starts a line is a delimiter (PHP takes it for one by its
    /// prefix): followed by something else, the body is refused, not read on.
    #[test]
    fn a_line_starting_with_the_boundary_is_a_delimiter() {
        malformed(
            CT,
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--XyZnot\r\ny\r\n--XyZ--",
        );
        // In the preamble too.
        malformed(
            CT,
            b"--XyZ-ish\r\n--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--XyZ--",
        );
    }

    #[test]
    fn transport_padding_is_refused() {
        malformed(
            CT,
            b"--XyZ \r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--XyZ--",
        );
        malformed(
            CT,
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--XyZ\t\r\n\
Content-Disposition: form-data; name=b\r\n\r\ny\r\n--XyZ--",
        );
    }

    /// One line-break style all through: an LF before a delimiter of a CRLF body (and a CRLF
    /// one in an LF body) cuts the value elsewhere for parsers that expect the other.
    #[test]
    fn mixed_line_breaks_are_refused() {
        malformed(
            CT,
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx\n--XyZ--\r\n",
        );
        malformed(
            CT,
            b"--XyZ\nContent-Disposition: form-data; name=a\n\nx\r\n--XyZ--\n",
        );
        malformed(
            CT,
            b"--XyZ\nContent-Disposition: form-data; name=a\r\n\r\nx\n--XyZ--\n",
        );
        malformed(
            CT,
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--XyZ\n\
Content-Disposition: form-data; name=b\r\n\r\ny\r\n--XyZ--",
        );
    }

    /// Werkzeug ends a line at a bare CR.
    #[test]
    fn bare_cr_is_refused() {
        malformed(
            CT,
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r--XyZ\r\n\
Content-Disposition: form-data; name=b\r\n\r\ny\r\n--XyZ--",
        );
        malformed(
            CT,
            b"--XyZ\r\nContent-Disposition: form-data; name=a\rContent-Type: text/plain\r\n\r\nx\r\n--XyZ--",
        );
    }

    /// Text that some parser would end a delimiter at (`--`, or blanks and a line break) is
    /// refused even in the middle of a line.
    #[test]
    fn boundary_text_ending_like_a_delimiter_is_refused() {
        malformed(
            CT,
            &one("Content-Disposition: form-data; name=a", b"x--XyZ--"),
        );
        malformed(
            CT,
            &one("Content-Disposition: form-data; name=a", b"x--XyZ \r\ny"),
        );
        malformed(
            CT,
            &one("Content-Disposition: form-data; name=a", b"x--XyZ\ny"),
        );
    }

    /// A file is not inspected: it must not hold the boundary at all.
    #[test]
    fn a_file_holding_the_boundary_is_refused() {
        malformed(
            CT,
            &one(
                "Content-Disposition: form-data; name=f; filename=a.bin",
                b"x --XyZ y",
            ),
        );
    }

    /// PHP reads on past the close delimiter.
    #[test]
    fn parts_after_the_close_delimiter_are_refused() {
        malformed(
            CT,
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--XyZ--\r\n\
--XyZ\r\nContent-Disposition: form-data; name=b\r\n\r\n' or 1=1\r\n--XyZ--\r\n",
        );
    }

    /// The blank line ending the headers is not also the line break of the next delimiter.
    #[test]
    fn a_delimiter_right_after_the_headers_is_refused() {
        malformed(
            CT,
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n--XyZ--\r\n",
        );
    }

    #[test]
    fn boundaries_with_comma_or_apostrophe_are_refused() {
        for ct in [
            "multipart/form-data; boundary=\"a,b\"",
            "multipart/form-data; boundary='ab'",
        ] {
            let boundary = if ct.contains(',') { "a,b" } else { "'ab'" };
            let b = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--{boundary}--\r\n"
            );
            malformed(ct, b.as_bytes());
        }
    }

    // ----- part headers

    #[test]
    fn folded_header_lines_are_refused() {
        malformed(CT, &one("Content-Disposition: form-data;\r\n name=a", b"x"));
    }

    #[test]
    fn repeated_disposition_or_type_is_refused() {
        malformed(
            CT,
            &one(
                "Content-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b",
                b"x",
            ),
        );
        malformed(
            CT,
            &one(
                "Content-Disposition: form-data; name=a; filename=x.png\r\nContent-Type: image/png\r\nContent-Type: text/plain",
                b"x",
            ),
        );
    }

    #[test]
    fn disposition_parameters_read_more_than_one_way_are_refused() {
        for h in [
            // not a token nor a quoted string
            "form-data; name=a\"b\"",
            "form-data; name=\"a\"b",
            "form-data; name=\"unterminated",
            // `'` outside a quoted string
            "form-data; name='a'",
            "form-data; name=a; filename='x.php'",
            // a parameter named twice
            "form-data; name=a; name=b",
            "form-data; name=a; filename=x; FILENAME=y",
            // RFC 5987 other than filename*, or filename* alone
            "form-data; name*=UTF-8''a",
            "form-data; name=a; filename*=UTF-8''x.php",
        ] {
            malformed(CT, &one(&format!("Content-Disposition: {h}"), b"x"));
        }
    }

    /// Parameters a file to the WAF but a value to PHP, Werkzeug, Tomcat or Go.
    #[test]
    fn dispositions_that_make_a_file_a_value_elsewhere_are_refused() {
        for h in [
            // blanks around `=`: PHP compares `filename `, Werkzeug drops the parameter
            "form-data; name=\"q\"; filename =\"x.txt\"",
            "form-data; name=\"q\"; filename= \"x.txt\"",
            "form-data; name = q",
            // unquoted values that are not tokens: Werkzeug ignores them
            "form-data; name=\"q\"; filename=@x.txt",
            "form-data; name=\"q\"; filename=[1].txt",
            "form-data; name=\"q\"; filename=\u{e9}.txt",
            // `\\` ends a string for Werkzeug and Tomcat, not for `\"`-only readers
            "form-data; name=\"q\"; x=\"a\\\\\"; y=\"; filename=f.txt; z=\"w\"",
            "form-data; name=\"a\\\\b\"",
            // RFC 2231 continuations Go reads, an empty RFC 5987 file name Go takes over
            // `filename`
            "form-data; name=\"q\"; filename=\"x.txt\"; filename*0=\"\"",
            "form-data; name=\"a\"; name*0=\"b\"",
            "form-data; name=\"q\"; filename=\"x.txt\"; filename*=UTF-8''",
        ] {
            malformed(CT, &one(&format!("Content-Disposition: {h}"), b"x"));
        }
        // A NUL ends PHP's line; a line longer than PHP's 5 KiB buffer is two lines to it.
        malformed(
            CT,
            &one(
                "Content-Disposition: form-data; name=q\0; filename=a.txt",
                b"x",
            ),
        );
        let long = format!(
            "X-Long: {}Content-Disposition: form-data; name=\"q\"\r\n\
             Content-Disposition: form-data; name=\"q\"; filename=\"a.txt\"",
            "A".repeat(5112)
        );
        malformed(CT, &one(&long, b"' or 1=1--"));
        // `--boundary` anywhere in the preamble or the epilogue.
        let mut pre = "A".repeat(5120).into_bytes();
        pre.extend_from_slice(b"--XyZ\0\r\n");
        pre.extend_from_slice(&one("Content-Disposition: form-data; name=a", b"1"));
        malformed(CT, &pre);
        let mut post = one("Content-Disposition: form-data; name=a", b"1");
        post.extend_from_slice(b"trailing --XyZ\r\n");
        malformed(CT, &post);
        // What .NET, Java and Go send still passes: unquoted tokens, `'` inside one, an
        // RFC 5987 name beside a plain one, Go's doubled backslash.
        for h in [
            "form-data; name=field; filename=john's.pdf",
            "form-data; name=\"f\"; filename=\"a.txt\"; filename*=utf-8''a%C3%A9.txt",
            "form-data; name=\"f\"; filename=\"c\\\\d.txt\"",
            "form-data; name=\"f\"; filename=\"C:\\Users\\x.txt\"",
        ] {
            let (_, f) = run(CT, &one(&format!("Content-Disposition: {h}"), b"x"));
            assert!(f.is_empty(), "{h}: {f:?}");
        }
    }

    /// Go decodes quoted-printable; the WAF reads bytes as sent.
    #[test]
    fn transfer_encodings_other_than_identity_are_refused() {
        for cte in ["quoted-printable", "base64", "x-uuencode"] {
            malformed(
                CT,
                &one(
                    &format!(
                        "Content-Disposition: form-data; name=a\r\nContent-Transfer-Encoding: {cte}"
                    ),
                    b"=27 or 1=3D1",
                ),
            );
        }
    }

    // ----- charsets

    #[test]
    fn values_in_other_charsets_are_ambiguous() {
        for cs in ["utf-16", "UTF-7", "shift_jis", "ibm037", "utf-32le"] {
            ambiguous(
                CT,
                &one(
                    &format!(
                        "Content-Disposition: form-data; name=a\r\nContent-Type: text/plain; charset={cs}"
                    ),
                    b"+ACc- or 1=1",
                ),
            );
        }
        ambiguous(
            CT,
            &one("Content-Disposition: form-data; name=_charset_", b"UTF-7"),
        );
    }
}
