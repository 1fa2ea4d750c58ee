//! Bodies labelled binary that are text.
//!
//! A body whose one `Content-Type` is a binary type (`image/*`, `application/octet-stream`,
//! protobuf …) is not buffered: it streams to the upstream as it arrives. But many backends
//! ignore the type (`express.json({type: '*/*'})`, Go's `json.NewDecoder(r.Body)`, PHP's
//! `json_decode(file_get_contents('php://input'))`), so the label alone must not be a way
//! around inspection. The step reads the body's first [`SNIFF_BYTES`] bytes — waiting for
//! them, or for the end of a shorter body — and decides on exactly those ([`textual_prefix`]),
//! whatever pieces they came in:
//!
//! * a known binary format's signature (PNG, JPEG, PDF, ZIP, MP4 …) → binary: no JSON, XML or
//!   UTF-16/32 decoder reads past it, and the formats whose first kilobyte may be text (a
//!   JPEG's XMP, a PDF's dictionaries, a ZIP's stored entry) are taken for what they are;
//! * UTF-16 or UTF-32 text (a byte order mark, or an ASCII first character padded with NULs —
//!   how Python's `json` and Jackson detect it) whose first non-blank character opens JSON or
//!   XML (`{`, `[`, `"`, `<`) → text;
//! * after an optional UTF-8 byte order mark: starts like JSON (`{`, `[` after blanks) or
//!   looks textual (at most 5 % invalid UTF-8 or control bytes; a character cut by the end of
//!   the window is not counted) → text — the untyped body's test;
//! * anything else → binary.
//!
//! Text is then buffered and inspected as an untyped body (the step's inspection limit and
//! `on_body_over_limit` hold); binary streams on, the bytes read put back in front of the rest
//! (so the route's size limit still counts them as the body is forwarded). What the first
//! kilobyte cannot show — binary bytes, then text a form parser or the raw body's user reads —
//! is the limit `docs/waf.md` names.
//!
//! The untyped body's UTF-16/32 test (a first ASCII character beside a NUL, NULs at 90 % of
//! one parity) is narrowed here to what opens JSON or XML: it takes an MP4 (`00 00 00 20
//! ftyp`), a 16-bit image or PCM audio for wide text, and would refuse them (rule 1005).
//!
//! Two exceptions to the window:
//!
//! * gRPC (`application/grpc*`) streams both ways: a client may send one short message and
//!   wait for an answer. A body framed as gRPC (a first byte 0 or 1, then a 4-byte length) is
//!   judged on its first message, at most [`SNIFF_BYTES`] of it, which a client sends whole
//!   before waiting; no UTF-8 parser reads a body that starts with a NUL or 0x01, so only the
//!   UTF-16/32 test applies. A body so labelled but not so framed is judged as any other.
//! * A `gzip` or `deflate` body (`Content-Encoding`) is judged on its first inflated bytes —
//!   Express's body parsers inflate what they parse — read from at most
//!   [`SNIFF_CODED_BYTES`] compressed bytes; a body that yields none from them (a gzip header
//!   padded with a long name) is buffered, the engine then inflates and inspects it whole. A
//!   body in another coding (`br`, `zstd`, `snappy` — Prometheus' remote write —, two
//!   codings) streams on uninspected as before: the WAF cannot read it.

use std::io::Read;
use std::pin::Pin;

use bytes::BytesMut;
use flate2::bufread::{MultiGzDecoder, ZlibDecoder};
use http_body::Body;
use portcullis_core::{BodyError, GatewayRequest, RequestBody};

use crate::extract::{looks_textual, starts_like_json};

/// The first bytes of a body labelled binary (inflated, when in `gzip` or `deflate`) that
/// decide whether it is text.
pub const SNIFF_BYTES: usize = 1024;

/// The most compressed bytes read to inflate [`SNIFF_BYTES`].
pub const SNIFF_CODED_BYTES: usize = 64 * 1024;

/// Whether a `Content-Type` is gRPC's (`application/grpc`, `+proto`, `-web` …).
pub fn is_grpc(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let media = ct.split(';').next().unwrap_or_default().trim();
        media
            .get(..16)
            .is_some_and(|m| m.eq_ignore_ascii_case("application/grpc"))
    })
}

/// Whether the first bytes of a body labelled binary are text an upstream that ignores the
/// label could parse (see the module's documentation). Only the first [`SNIFF_BYTES`] of
/// `prefix` are looked at; `whole`: `prefix` is the whole body.
pub fn textual_prefix(prefix: &[u8], whole: bool) -> bool {
    let cut = !whole || prefix.len() > SNIFF_BYTES;
    let p = prefix.get(..SNIFF_BYTES).unwrap_or(prefix);
    if binary_signature(p) {
        return false;
    }
    if wide_markup(p, cut) {
        return true;
    }
    let p = p.strip_prefix(b"\xef\xbb\xbf").unwrap_or(p);
    let p = if cut { without_cut_char(p) } else { p };
    starts_like_json(p) || looks_textual(p)
}

/// The start of a binary format whose first kilobyte may look textual (or that is binary
/// anyway: cheap to name). None starts like JSON, XML or UTF-16/32 text a decoder reads; the
/// short ones that are words (`BM`, `BZh`, `ID3`, `fLaC`, `RIFF`, `FORM`, `ftyp`) are
/// checked with the bytes that follow them, so that text starting so stays text.
fn binary_signature(p: &[u8]) -> bool {
    const AT_START: &[&[u8]] = &[
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff",
        b"GIF87a",
        b"GIF89a",
        // TIFF, and the camera raw formats built on it.
        b"II*\x00",
        b"MM\x00*",
        // JPEG XL: codestream, container.
        b"\xff\x0a",
        b"\x00\x00\x00\x0cJXL \r\n\x87\n",
        b"8BPS\x00\x01",
        b"8BPS\x00\x02",
        b"%PDF-1.",
        b"%PDF-2.",
        // ZIP, and what is built on it (Office documents, JAR, APK, EPUB).
        b"PK\x03\x04",
        b"PK\x05\x06",
        b"PK\x07\x08",
        b"\x1f\x8b",
        b"\xfd7zXZ\x00",
        b"(\xb5/\xfd",
        b"7z\xbc\xaf\x27\x1c",
        b"Rar!\x1a\x07",
        b"\x00asm",
        b"wOFF\x00\x01\x00\x00",
        b"wOFFOTTO",
        b"wOF2\x00\x01\x00\x00",
        b"wOF2OTTO",
        b"OTTO\x00",
        b"\x00\x01\x00\x00\x00",
        b"OggS\x00",
        b"\x1a\x45\xdf\xa3",
        b"\xd9\xd9\xf7",
    ];
    AT_START.iter().any(|s| p.starts_with(s))
        // ISO media (MP4, MOV, HEIC, AVIF, 3GP, JPEG 2000): a box size under 64 KiB, then
        // `ftyp` (any four bytes before it could open JSON: `{"abftyp": …}`).
        || (p.starts_with(b"\x00\x00") && p.get(4..8) == Some(b"ftyp"))
        || (p.starts_with(b"RIFF") && matches!(p.get(8..12), Some(b"WAVE" | b"AVI " | b"WEBP")))
        || (p.starts_with(b"FORM") && matches!(p.get(8..12), Some(b"AIFF" | b"AIFC")))
        || (p.starts_with(b"BM") && p.get(6..10) == Some(b"\x00\x00\x00\x00"))
        || (p.starts_with(b"BZh")
            && p.get(3).is_some_and(|d| (b'1'..=b'9').contains(d))
            && p.get(4..10) == Some(b"1AY&SY"))
        || (p.starts_with(b"ID3")
            && p.get(3).is_some_and(|v| (2..=4).contains(v))
            && p.get(4) == Some(&0))
        || (p.starts_with(b"fLaC") && p.get(4).is_some_and(|b| b & 0x7f == 0))
}

/// UTF-16 or UTF-32 text whose first non-blank character opens JSON or XML: a byte order
/// mark, or a first character that is ASCII padded with NULs (RFC 4627 §3; Python's `json`,
/// Jackson), then blanks, then `{`, `[`, `"` or `<`. A window of blanks only counts too when
/// the body goes on (JSON after a kilobyte of spaces).
fn wide_markup(p: &[u8], cut: bool) -> bool {
    let ascii = |c: u8| c.is_ascii_graphic() || c.is_ascii_whitespace();
    let (unit, big_endian, skip) = match p {
        [0, 0, 0xfe, 0xff, ..] => (4, true, 4),
        [0xff, 0xfe, 0, 0, ..] => (4, false, 4),
        [0xfe, 0xff, ..] => (2, true, 2),
        [0xff, 0xfe, ..] => (2, false, 2),
        [0, 0, 0, c, ..] if ascii(*c) => (4, true, 0),
        [c, 0, 0, 0, ..] if ascii(*c) => (4, false, 0),
        [0, c, ..] if ascii(*c) => (2, true, 0),
        [c, 0, ..] if ascii(*c) => (2, false, 0),
        _ => return false,
    };
    let mut blanks = 0usize;
    for u in p.get(skip..).unwrap_or_default().chunks_exact(unit) {
        let c = u.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        let c = match (big_endian, unit) {
            (true, _) => c,
            (false, 2) => u32::from((c as u16).swap_bytes()),
            (false, _) => c.swap_bytes(),
        };
        match c {
            0x20 | 0x09 | 0x0a | 0x0d => blanks += 1,
            0x7b | 0x5b | 0x22 | 0x3c => return true,
            _ => return false,
        }
    }
    cut && blanks > 0
}

/// `p` without a UTF-8 sequence the end of the window cut (its missing bytes are still to
/// come: not invalid).
fn without_cut_char(p: &[u8]) -> &[u8] {
    for back in 1..=p.len().min(3) {
        let at = p.len() - back;
        let Some(&b) = p.get(at) else { break };
        if b & 0xc0 == 0x80 {
            continue;
        }
        let len = match b {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => 1,
        };
        return if len > back {
            p.get(..at).unwrap_or(p)
        } else {
            p
        };
    }
    p
}

/// A gRPC body's window: its first message (5-byte prefix and payload), at most
/// [`SNIFF_BYTES`]; `None` if the body does not start with a gRPC message prefix.
fn grpc_window(p: &[u8]) -> Option<usize> {
    match p {
        [0 | 1, a, b, c, d, ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            Some(len.saturating_add(5).min(SNIFF_BYTES))
        }
        _ => None,
    }
}

/// The body's content coding, as `portcullis_core::coding` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Plain,
    Gzip,
    Zlib,
    /// A coding the WAF does not inflate, several, or a field that is not ASCII.
    Other,
}

impl Coding {
    fn of(headers: &http::HeaderMap) -> Coding {
        let mut coding = Coding::Plain;
        for value in headers.get_all(http::header::CONTENT_ENCODING) {
            let Ok(value) = value.to_str() else {
                return Coding::Other;
            };
            for name in value.split(',') {
                let name = name.trim_matches([' ', '\t']);
                if name.is_empty() || name.eq_ignore_ascii_case("identity") {
                    continue;
                }
                if coding != Coding::Plain {
                    return Coding::Other;
                }
                coding = if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip")
                {
                    Coding::Gzip
                } else if name.eq_ignore_ascii_case("deflate") {
                    Coding::Zlib
                } else {
                    return Coding::Other;
                };
            }
        }
        coding
    }
}

/// What the first bytes read so far tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    More,
    Text,
    Binary,
}

impl Look {
    fn of(text: bool) -> Look {
        if text { Look::Text } else { Look::Binary }
    }
}

/// Decides on the first bytes of a body labelled binary as they arrive.
struct Sniffer {
    coding: Coding,
    grpc: bool,
    /// Compressed bytes the next inflation attempt reads (doubling up to
    /// [`SNIFF_CODED_BYTES`]: each attempt starts over, so the work stays linear).
    next_try: usize,
}

impl Sniffer {
    fn new(coding: Coding, grpc: bool) -> Sniffer {
        Sniffer {
            coding,
            grpc,
            next_try: SNIFF_BYTES,
        }
    }

    /// `buf`: the body's first bytes; `ended`: they are all of it. Never [`Look::More`] when
    /// `ended`.
    fn look(&mut self, buf: &[u8], ended: bool) -> Look {
        match self.coding {
            Coding::Other => Look::Binary,
            Coding::Plain => {
                if self.grpc {
                    if buf.len() < 5 && !ended {
                        return Look::More;
                    }
                    if let Some(window) = grpc_window(buf) {
                        if buf.len() < window && !ended {
                            return Look::More;
                        }
                        let p = buf.get(..window).unwrap_or(buf);
                        return Look::of(wide_markup(p, !ended || buf.len() > window));
                    }
                }
                if buf.len() < SNIFF_BYTES && !ended {
                    return Look::More;
                }
                Look::of(textual_prefix(buf, ended))
            }
            Coding::Gzip | Coding::Zlib => self.look_coded(buf, ended),
        }
    }

    fn look_coded(&mut self, buf: &[u8], ended: bool) -> Look {
        loop {
            if buf.len() < self.next_try && !ended {
                return Look::More;
            }
            // Exactly `next_try` bytes unless the body ended: the decision does not depend on
            // how the body was cut into pieces.
            let input = if ended {
                buf
            } else {
                buf.get(..self.next_try).unwrap_or(buf)
            };
            let (out, error) = inflate_prefix(self.coding, input);
            if out.len() >= SNIFF_BYTES {
                return Look::of(textual_prefix(&out, false));
            }
            let corrupt = error.is_some_and(|k| k != std::io::ErrorKind::UnexpectedEof);
            if ended || corrupt {
                // Nothing an upstream could inflate either: as before, binary.
                if out.is_empty() {
                    return Look::Binary;
                }
                return Look::of(textual_prefix(&out, ended && error.is_none()));
            }
            if self.next_try >= SNIFF_CODED_BYTES {
                // Nothing yet out of that much (a gzip header padded with a long name): the
                // WAF cannot tell, so it buffers, and the engine inflates it whole.
                if out.is_empty() {
                    return Look::Text;
                }
                return Look::of(textual_prefix(&out, false));
            }
            self.next_try = self.next_try.saturating_mul(2).min(SNIFF_CODED_BYTES);
        }
    }
}

/// Up to [`SNIFF_BYTES`] inflated from `input`, and the error that stopped the inflation, if
/// one did (`UnexpectedEof`: `input` is cut short).
fn inflate_prefix(coding: Coding, input: &[u8]) -> (Vec<u8>, Option<std::io::ErrorKind>) {
    let mut out = Vec::with_capacity(SNIFF_BYTES);
    let cap = SNIFF_BYTES as u64;
    let read = match coding {
        Coding::Gzip => MultiGzDecoder::new(input).take(cap).read_to_end(&mut out),
        Coding::Zlib => ZlibDecoder::new(input).take(cap).read_to_end(&mut out),
        Coding::Plain | Coding::Other => Ok(0),
    };
    (out, read.err().map(|e| e.kind()))
}

/// Reads the first bytes of a body labelled binary (one binary `Content-Type`) and tells
/// whether it is text to buffer and inspect. The bytes read stay the body's, put back in
/// front of the rest (a body already buffered is looked at whole). `grpc_streams`: the
/// route's upstream may speak HTTP/2 ([`crate::config::RouteWaf::grpc_streams`]).
pub async fn declared_binary_is_text(
    req: &mut GatewayRequest,
    grpc_streams: bool,
) -> Result<bool, BodyError> {
    let ct = req
        .head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut sniffer = Sniffer::new(Coding::of(&req.head.headers), is_grpc(ct));
    let h2 = req.head.version == http::Version::HTTP_2;
    let body = match &mut req.body {
        RequestBody::Buffered(b) => return Ok(sniffer.look(b, true) == Look::Text),
        RequestBody::Streaming(body) => body,
    };
    let mut buf = BytesMut::new();
    let mut ended = body.is_end_stream();
    // A gRPC call (HTTP/2) whose client has sent nothing yet may be a bidirectional stream
    // waiting for the server to speak first: it streams on rather than wait for a message
    // that comes only after an answer — to an upstream that may speak HTTP/2 only, as a gRPC
    // server must (elsewhere the label and a held-back body would carry anything past).
    // What has already arrived is judged as below.
    if sniffer.grpc && h2 && grpc_streams && !ended {
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(Pin::new(&mut *body).poll_frame(cx)))
                .await;
        match first {
            std::task::Poll::Pending => return Ok(false),
            std::task::Poll::Ready(None) => ended = true,
            std::task::Poll::Ready(Some(Err(e))) => return Err(BodyError::Read(e)),
            std::task::Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    ended = body.is_end_stream();
                }
                Err(_) => ended = true,
            },
        }
    }
    let text = loop {
        match sniffer.look(&buf, ended) {
            Look::Text => break true,
            Look::Binary => break false,
            Look::More => {}
        }
        match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => ended = true,
            Some(Err(e)) => return Err(BodyError::Read(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    ended = body.is_end_stream();
                }
                // Trailers end the body (and are dropped, as when a body is buffered).
                Err(_) => ended = true,
            },
        }
    };
    // Put back in front of the rest even when the body ended: a body that goes on streams
    // under the route's size limit (counted when forwarded), which a buffer would escape.
    req.put_back(buf.freeze());
    Ok(text)
}

#[cfg(test)]
mod tests;
