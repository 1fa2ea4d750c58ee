//! `multipart/form-data` bodies: a bounded parser over the buffered bytes.

use std::borrow::Cow;

use super::{Problem, Sink, parse_params, percent_decode, plain_name};
use crate::model::{Location, Part, Target};

/// Most bytes of one part's header block.
const MAX_PART_HEADERS: usize = 16 * 1024;
/// Longest boundary accepted (RFC 2046 says 70).
const MAX_BOUNDARY: usize = 200;

/// Reads `body` as multipart/form-data delimited by `boundary`.
pub(super) fn extract<'a>(
    body: &'a [u8],
    boundary: Option<&str>,
    sink: &mut Sink<'a, '_>,
) -> Result<(), Problem> {
    let boundary = boundary
        .filter(|b| {
            !b.is_empty() && b.len() <= MAX_BOUNDARY && !b.bytes().any(|c| c.is_ascii_control())
        })
        .ok_or(Problem::Malformed { at: 0 })?;
    let mut delim = Vec::with_capacity(boundary.len() + 2);
    delim.extend_from_slice(b"--");
    delim.extend_from_slice(boundary.as_bytes());

    let (_, mut p) = next_delimiter(body, &delim, 0).ok_or(Problem::Malformed { at: 0 })?;
    loop {
        if sink.full {
            return Ok(());
        }
        let rest = body.get(p..).unwrap_or_default();
        if rest.starts_with(b"--") {
            // The close delimiter; the epilogue is ignored.
            return Ok(());
        }
        p = after_line_break(body, p).ok_or(Problem::Malformed { at: p })?;
        let (headers, content_start) = part_headers(body, p)?;
        let (dstart, dend) = next_delimiter(body, &delim, content_start)
            .ok_or(Problem::Malformed { at: body.len() })?;
        // The line break before a delimiter belongs to it.
        let mut content_end = dstart;
        if content_end > content_start && body.get(content_end - 1) == Some(&b'\n') {
            content_end -= 1;
            if content_end > content_start && body.get(content_end - 1) == Some(&b'\r') {
                content_end -= 1;
            }
        }
        let content = body.get(content_start..content_end).unwrap_or_default();
        emit(headers, content, sink);
        p = dend;
    }
}

/// After a delimiter: optional transport padding, then CRLF or LF; the position after it.
fn after_line_break(body: &[u8], p: usize) -> Option<usize> {
    let pad = body
        .get(p..)?
        .iter()
        .take_while(|&&c| c == b' ' || c == b'\t')
        .count();
    let q = p + pad;
    match (body.get(q), body.get(q + 1)) {
        (Some(b'\r'), Some(b'\n')) => Some(q + 2),
        (Some(b'\n'), _) => Some(q + 1),
        _ => None,
    }
}

/// The next delimiter at or after `from`: `--boundary` at the start of a line, followed by
/// `--` or a line break. Its start and end.
fn next_delimiter(body: &[u8], delim: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    loop {
        let line = if i == 0 || body.get(i - 1) == Some(&b'\n') {
            i
        } else {
            i + body.get(i..)?.iter().position(|&c| c == b'\n')? + 1
        };
        let rest = body.get(line..)?;
        if rest.starts_with(delim) {
            let end = line + delim.len();
            if body.get(end..)?.starts_with(b"--") || after_line_break(body, end).is_some() {
                return Some((line, end));
            }
        }
        i = line + 1;
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
}

impl<'a> PartHeaders<'a> {
    fn param(&mut self, name: &str, value: Cow<'a, str>) {
        if name.eq_ignore_ascii_case("name") {
            self.name = Some(value);
        } else if name.eq_ignore_ascii_case("filename") {
            self.filename = Some(value);
        } else if name.eq_ignore_ascii_case("filename*") {
            // RFC 5987: charset'language'percent-encoded
            let encoded = value.splitn(3, '\'').nth(2).unwrap_or(&value);
            self.filename_star = Some(Cow::Owned(
                percent_decode(encoded.as_bytes(), false).into_owned(),
            ));
        }
    }

    fn disposition(&mut self, value: &'a [u8]) {
        self.disposition = true;
        match std::str::from_utf8(value) {
            Ok(s) => parse_params(s, &mut |n, v| self.param(n, v)),
            Err(_) => {
                let s = String::from_utf8_lossy(value);
                parse_params(&s, &mut |n, v| self.param(n, Cow::Owned(v.into_owned())));
            }
        }
    }
}

/// Reads the header block starting at `p`: the headers and where the content starts.
fn part_headers(body: &[u8], p: usize) -> Result<(PartHeaders<'_>, usize), Problem> {
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
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line_at = i;
        i += len + 1;
        if line.is_empty() {
            if !h.disposition {
                return Err(Problem::Malformed { at: p });
            }
            return Ok((h, i));
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            continue; // a folded continuation line
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
        if name.eq_ignore_ascii_case(b"content-disposition") {
            h.disposition(value);
        } else if name.eq_ignore_ascii_case(b"content-type") {
            h.content_type = Some(String::from_utf8_lossy(value));
        }
    }
}

fn emit<'a>(h: PartHeaders<'a>, content: &'a [u8], sink: &mut Sink<'a, '_>) {
    let field = h.name.unwrap_or(Cow::Borrowed(""));
    if !plain_name(&field) {
        sink.push(Target::new(
            Location::Body,
            field.clone(),
            Part::Name,
            field.clone(),
        ));
    }
    // A part with a (non-empty) file name is a file; any other is a form value to PHP,
    // Werkzeug, Go and busboy alike, whatever its `Content-Type` says (`image/png` on a value
    // changes nothing for them), so its content is inspected as one (read lossily).
    let is_file = [&h.filename, &h.filename_star]
        .into_iter()
        .flatten()
        .any(|f| !f.is_empty());
    for filename in [h.filename, h.filename_star].into_iter().flatten() {
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
}
