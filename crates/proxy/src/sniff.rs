//! A second, strict reading of HTTP/1.1 framing, run on the raw bytes as the connection reads
//! them — before hyper parses them.
//!
//! hyper is lenient where RFC 9112 allows it (bare LF line ends, `Transfer-Encoding` with
//! trailing whitespace) and silently resolves `Content-Length` + `Transfer-Encoding` (dropping
//! the length). A gateway must not be lenient: whatever two parsers could read differently is
//! refused. This reader follows the message boundaries (heads, `Content-Length` bodies, chunked
//! bodies) and flags the connection at the first ambiguity; the engine then answers 400 and
//! closes it. It also refuses heads hyper would refuse itself (characters outside the grammar,
//! folded lines, a bare CR, a line without a colon), which hyper would answer with a bare 400
//! the engine never sees. It stops watching where HTTP/1.1 framing ends (HTTP/2 preface,
//! upgrades) or where hyper will refuse anyway (oversized heads).
//!
//! The bytes pass unchanged, with one exception: a refused head that arrived whole within one
//! read is replaced, for hyper, by a well-formed stand-in request ([`STAND_IN`]), and nothing
//! after it is passed on. The stand-in reaches the engine, which sees the flag and answers with
//! a problem document, a request id and an audit event — rather than hyper answering a bare
//! 400 or acting on bytes it reads differently. A refused head that began in an earlier read
//! (its first bytes already with hyper) keeps the earlier behaviour.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use portcullis_core::is_tchar;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a connection was flagged. `0` means clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Ambiguity {
    BareLf = 1,
    ContentLengthAndTransferEncoding = 2,
    RepeatedContentLength = 3,
    TransferEncodingNotExactlyChunked = 4,
    BadChunk = 5,
    MalformedHead = 6,
    BadContentLength = 7,
    TransferEncodingInHttp10 = 8,
}

/// What hyper is handed instead of a refused head: a request it parses, whose only purpose is
/// to carry the connection's flag to the engine (which refuses it before any step runs).
pub const STAND_IN: &[u8] =
    b"GET /.well-known/portcullis/unreadable-request HTTP/1.1\r\nHost: unreadable.invalid\r\n\r\n";

impl Ambiguity {
    pub fn detail(self) -> &'static str {
        match self {
            Ambiguity::BareLf => "line ends must be CRLF",
            Ambiguity::ContentLengthAndTransferEncoding => {
                "Content-Length and Transfer-Encoding together are not accepted"
            }
            Ambiguity::RepeatedContentLength => "more than one Content-Length is not accepted",
            Ambiguity::TransferEncodingNotExactlyChunked => {
                "Transfer-Encoding must be exactly \"chunked\""
            }
            Ambiguity::BadChunk => "malformed chunked framing",
            Ambiguity::BadContentLength => "Content-Length must be one decimal number",
            Ambiguity::TransferEncodingInHttp10 => "Transfer-Encoding is not accepted in HTTP/1.0",
            Ambiguity::MalformedHead => {
                "the request head is not valid HTTP/1.1 (a character outside the grammar, a folded line, a bare CR or a line without a colon)"
            }
        }
    }

    fn from_u8(v: u8) -> Option<Ambiguity> {
        Some(match v {
            1 => Ambiguity::BareLf,
            2 => Ambiguity::ContentLengthAndTransferEncoding,
            3 => Ambiguity::RepeatedContentLength,
            4 => Ambiguity::TransferEncodingNotExactlyChunked,
            5 => Ambiguity::BadChunk,
            6 => Ambiguity::MalformedHead,
            7 => Ambiguity::BadContentLength,
            8 => Ambiguity::TransferEncodingInHttp10,
            _ => return None,
        })
    }
}

/// Shared between the reader and the request handler of one connection.
#[derive(Debug, Default)]
pub struct Flag(AtomicU8);

impl Flag {
    pub fn get(&self) -> Option<Ambiguity> {
        Ambiguity::from_u8(self.0.load(Ordering::Acquire))
    }

    fn set(&self, a: Ambiguity) {
        let _ = self
            .0
            .compare_exchange(0, a as u8, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Largest head the reader follows; beyond it hyper refuses the request itself.
const MAX_HEAD: usize = 256 * 1024;

#[derive(Debug)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping `n` body bytes.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    ChunkCr,
    ChunkLf,
    /// Reading trailer lines after the last chunk.
    Trailers(Vec<u8>),
    /// No longer watching (HTTP/2, upgrade, flagged, oversized).
    Off,
}

/// The framing follower.
#[derive(Debug)]
pub struct Framing {
    state: State,
    flag: Arc<Flag>,
}

impl Framing {
    pub fn new(flag: Arc<Flag>) -> Self {
        Framing {
            state: State::Head(Vec::new()),
            flag,
        }
    }

    fn flag(&mut self, a: Ambiguity) {
        self.flag.set(a);
        self.state = State::Off;
    }

    /// Feeds bytes as they arrive. When a head is refused and it began within `input`, returns
    /// where it began (the caller may replace it by [`STAND_IN`]).
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut data = input;
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return None,
                State::Head(buf) => {
                    // Fast path: a whole head within this read, nothing buffered — no copy.
                    if buf.is_empty() {
                        let mut lead = 0;
                        while data[lead..].starts_with(b"\r\n") {
                            lead += 2;
                        }
                        if let Some(pos) = find_head_end(&data[lead..]) {
                            if data[lead..].starts_with(b"PRI * HTTP/2.0") {
                                self.state = State::Off;
                                return None;
                            }
                            let head_len = lead + pos + 4;
                            match after_head(&data[lead..head_len]) {
                                Ok(next) => self.state = next,
                                Err(a) => {
                                    self.flag(a);
                                    return Some(input.len() - data.len());
                                }
                            }
                            data = &data[head_len..];
                            continue;
                        }
                    }
                    let before = buf.len();
                    buf.extend_from_slice(data);
                    // Leading empty lines before a request line are allowed (RFC 9112 §2.2).
                    let mut lead = 0;
                    while buf[lead..].starts_with(b"\r\n") {
                        lead += 2;
                    }
                    if buf[lead..].starts_with(b"PRI * HTTP/2.0") {
                        self.state = State::Off;
                        return None;
                    }
                    let from = before.saturating_sub(3).max(lead);
                    let Some(pos) = find_head_end(&buf[from..]) else {
                        if buf.len() > MAX_HEAD {
                            self.state = State::Off;
                        } else if has_bare_lf(&buf[lead..]) {
                            self.flag(Ambiguity::BareLf);
                        }
                        return None;
                    };
                    let head_len = from + pos + 4;
                    let consumed = head_len.saturating_sub(before).min(data.len());
                    let next = after_head(&buf[lead..head_len]);
                    data = &data[consumed..];
                    match next {
                        Ok(next) => self.state = next,
                        Err(a) => {
                            self.flag(a);
                            return None;
                        }
                    }
                }
                State::Fixed(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => {
                    let Some(pos) = data.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(data);
                        if line.len() > 1024 {
                            self.flag(Ambiguity::BadChunk);
                        }
                        return None;
                    };
                    line.extend_from_slice(&data[..=pos]);
                    data = &data[pos + 1..];
                    let Some(size) = parse_chunk_size(line) else {
                        self.flag(Ambiguity::BadChunk);
                        return None;
                    };
                    self.state = if size == 0 {
                        State::Trailers(Vec::new())
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::ChunkCr;
                    }
                }
                State::ChunkCr => {
                    if data[0] != b'\r' {
                        self.flag(Ambiguity::BadChunk);
                        return None;
                    }
                    data = &data[1..];
                    self.state = State::ChunkLf;
                }
                State::ChunkLf => {
                    if data[0] != b'\n' {
                        self.flag(Ambiguity::BadChunk);
                        return None;
                    }
                    data = &data[1..];
                    self.state = State::ChunkSize(Vec::new());
                }
                State::Trailers(line) => {
                    let Some(pos) = data.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(data);
                        if line.len() > MAX_HEAD {
                            self.state = State::Off;
                        }
                        return None;
                    };
                    line.extend_from_slice(&data[..=pos]);
                    data = &data[pos + 1..];
                    if !line.ends_with(b"\r\n") {
                        self.flag(Ambiguity::BareLf);
                        return None;
                    }
                    if line.len() == 2 {
                        self.state = State::Head(Vec::new());
                    } else {
                        line.clear();
                    }
                }
            }
        }
        None
    }
}

/// Checks a complete head and says how its body is framed.
fn after_head(head: &[u8]) -> Result<State, Ambiguity> {
    if has_bare_lf(head) {
        return Err(Ambiguity::BareLf);
    }
    // One pass over the head (without its final empty line) checks the grammar, as strictly
    // as hyper reads it or more, and reads the framing fields: a request line without control
    // characters; then only `name ":" value` lines, the name made of token characters (so no
    // folded line, no space before the colon), the value of visible characters, spaces, tabs
    // and obs-text; no bare CR anywhere.
    let ctl = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
    let mut lines = split_lines(&head[..head.len() - 4]);
    let request_line = lines.next().unwrap_or_default();
    let request_line = request_line.strip_suffix(b"\r").unwrap_or(request_line);
    if request_line.is_empty() || request_line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(Ambiguity::MalformedHead);
    }
    let mut content_length: Option<u64> = None;
    let mut cl_count = 0;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut upgrade = false;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // The name runs to the first byte that is not a token character, which must be a colon
        // (itself not one): the same test as finding the first colon and checking that the
        // name before it is a non-empty token, in one pass over the name.
        let Some(colon) = line
            .iter()
            .position(|&b| !is_tchar(b))
            .filter(|&c| c > 0 && line[c] == b':')
        else {
            return Err(Ambiguity::MalformedHead);
        };
        let name = &line[..colon];
        let value = &line[colon + 1..];
        if value.iter().any(|&b| ctl(b)) {
            return Err(Ambiguity::MalformedHead);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            cl_count += 1;
            let v = trim_ows(value);
            if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                return Err(Ambiguity::BadContentLength);
            }
            content_length = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_count += 1;
            te = Some(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    if te_count > 0 && cl_count > 0 {
        return Err(Ambiguity::ContentLengthAndTransferEncoding);
    }
    if cl_count > 1 {
        return Err(Ambiguity::RepeatedContentLength);
    }
    if te_count > 1 {
        return Err(Ambiguity::TransferEncodingNotExactlyChunked);
    }
    let connect = request_line.starts_with(b"CONNECT ");
    if upgrade || connect {
        // After a 101 (or a tunnel) the bytes are no longer HTTP/1.1 messages.
        return Ok(State::Off);
    }
    if let Some(v) = te {
        if request_line.ends_with(b" HTTP/1.0") {
            return Err(Ambiguity::TransferEncodingInHttp10);
        }
        // One optional space after the colon, then exactly "chunked", nothing after.
        let v = v.strip_prefix(b" ").unwrap_or(v);
        if v != b"chunked" {
            return Err(Ambiguity::TransferEncodingNotExactlyChunked);
        }
        return Ok(State::ChunkSize(Vec::new()));
    }
    Ok(match content_length {
        Some(n) if n > 0 => State::Fixed(n),
        // A malformed length is refused by hyper; zero or none: the next head follows.
        _ => State::Head(Vec::new()),
    })
}

/// Where the first `\r\n\r\n` in `hay` begins. Only the line feeds are visited (found by
/// `memchr`), each checked for the three bytes before it.
fn find_head_end(hay: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', hay)
        .find(|&i| i >= 3 && hay[i - 3..=i] == *b"\r\n\r\n")
        .map(|i| i - 3)
}

/// A line feed first, or after anything but a carriage return.
fn has_bare_lf(buf: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', buf).any(|i| i == 0 || buf[i - 1] != b'\r')
}

/// `buf.split(|&b| b == b'\n')`, the line feeds found by `memchr`: every piece between two
/// line feeds, empty ones included, and the piece after the last one.
fn split_lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(buf);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b'\n', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// `1a;ext=1\r\n` → 26. Hex digits only, CRLF line end, extensions allowed.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    let digits_end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = &line[..digits_end];
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Whether a connection moved bytes, for the idle watchdog: a counter bumped by every read and
/// write, which the watchdog compares between its ticks. Reading the clock on every read and
/// write (as a timestamp would need) cost more than the rest of this wrapper.
#[derive(Debug, Default)]
pub struct Activity {
    moves: std::sync::atomic::AtomicU64,
    read_any: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn touch(&self) {
        // Only a change matters to the watchdog, not an exact count: no locked add needed.
        let n = self.moves.load(Ordering::Relaxed);
        self.moves.store(n.wrapping_add(1), Ordering::Relaxed);
    }

    /// Changes whenever a byte moved either way.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// Whether the client has sent anything at all.
    pub fn has_read(&self) -> bool {
        self.read_any.load(Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// An I/O stream whose reads are followed by [`Framing`] and whose traffic is timed.
    pub struct Sniffed<S> {
        #[pin]
        inner: S,
        framing: Framing,
        activity: Arc<Activity>,
        // Set once a stand-in replaced a refused head: reads end there.
        ended: bool,
        // Set when, after a stand-in, the client's side ended (or failed).
        peer_done: bool,
        // Set by the first read.
        started: bool,
        // Bytes of the first read not yet handed over, and how many were.
        stash: Option<(Vec<u8>, usize)>,
    }
}

impl<S> Sniffed<S> {
    pub fn new(inner: S, flag: Arc<Flag>, activity: Arc<Activity>) -> Self {
        Sniffed {
            inner,
            framing: Framing::new(flag),
            activity,
            ended: false,
            peer_done: false,
            started: false,
            stash: None,
        }
    }
}

/// The first read of a connection into a buffer smaller than this (hyper-util's version sniff
/// reads 24 bytes) reads this much into a stash instead, so that a first head arriving in one
/// packet is seen whole — and can be replaced whole.
const FIRST_READ: usize = 8 * 1024;

impl<S: AsyncRead> AsyncRead for Sniffed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if let Some((bytes, pos)) = this.stash.as_mut() {
            let n = buf.remaining().min(bytes.len() - *pos);
            buf.put_slice(&bytes[*pos..*pos + n]);
            *pos += n;
            if *pos == bytes.len() {
                *this.stash = None;
            }
            return Poll::Ready(Ok(()));
        }
        if *this.ended {
            // A stand-in was handed over: nothing after a refused head reaches hyper. What the
            // client sends on is read and dropped, and neither its end of stream nor an error
            // is passed on: hyper would drop the stand-in's answer (it does not wait out a
            // half-closed connection). The answer closes the connection; the idle watchdog
            // closes it if anything else held it open.
            if *this.peer_done {
                return Poll::Pending;
            }
            let mut scratch = [0u8; 2048];
            for _ in 0..16 {
                let mut sink = ReadBuf::new(&mut scratch);
                match this.inner.as_mut().poll_read(cx, &mut sink) {
                    Poll::Ready(Ok(())) if !sink.filled().is_empty() => {}
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(_) => {
                        *this.peer_done = true;
                        return Poll::Pending;
                    }
                }
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if !*this.started && buf.remaining() < FIRST_READ {
            let mut bytes = vec![0u8; FIRST_READ];
            let mut first = ReadBuf::new(&mut bytes);
            match this.inner.as_mut().poll_read(cx, &mut first) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let n = first.filled().len();
            bytes.truncate(n);
            *this.started = true;
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            this.activity.touch();
            this.activity.read_any.store(true, Ordering::Relaxed);
            if let Some(at) = this.framing.feed(&bytes) {
                bytes.truncate(at);
                bytes.extend_from_slice(STAND_IN);
                *this.ended = true;
            }
            let n = buf.remaining().min(bytes.len());
            buf.put_slice(&bytes[..n]);
            if n < bytes.len() {
                *this.stash = Some((bytes, n));
            }
            return Poll::Ready(Ok(()));
        }
        *this.started = true;
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.activity.touch();
                this.activity.read_any.store(true, Ordering::Relaxed);
            }
            if let Some(at) = this.framing.feed(new) {
                // The refused head began in this read: hyper gets the stand-in in its place
                // (when it fits), and nothing after it.
                let keep = before + at;
                if buf.capacity() - keep >= STAND_IN.len() {
                    buf.set_filled(keep);
                    buf.put_slice(STAND_IN);
                    *this.ended = true;
                }
            }
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for Sniffed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            this.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `after_head` as it was before its scans used `memchr` and a token table: the reference
    /// the current one must agree with on every head.
    fn after_head_reference(head: &[u8]) -> Result<State, Ambiguity> {
        let bare_lf = head
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
        if bare_lf {
            return Err(Ambiguity::BareLf);
        }
        let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        let ctl = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
        let mut lines = head[..head.len() - 4].split(|&b| b == b'\n');
        let request_line = lines.next().unwrap_or_default();
        let request_line = request_line.strip_suffix(b"\r").unwrap_or(request_line);
        if request_line.is_empty() || request_line.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(Ambiguity::MalformedHead);
        }
        let mut content_length: Option<u64> = None;
        let mut cl_count = 0;
        let mut te: Option<&[u8]> = None;
        let mut te_count = 0;
        let mut upgrade = false;
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(Ambiguity::MalformedHead);
            };
            let name = &line[..colon];
            let value = &line[colon + 1..];
            if name.is_empty() || !name.iter().all(|&b| tchar(b)) || value.iter().any(|&b| ctl(b)) {
                return Err(Ambiguity::MalformedHead);
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                cl_count += 1;
                let v = trim_ows(value);
                if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                    return Err(Ambiguity::BadContentLength);
                }
                content_length = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                te_count += 1;
                te = Some(value);
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        if te_count > 0 && cl_count > 0 {
            return Err(Ambiguity::ContentLengthAndTransferEncoding);
        }
        if cl_count > 1 {
            return Err(Ambiguity::RepeatedContentLength);
        }
        if te_count > 1 {
            return Err(Ambiguity::TransferEncodingNotExactlyChunked);
        }
        if upgrade || request_line.starts_with(b"CONNECT ") {
            return Ok(State::Off);
        }
        if let Some(v) = te {
            if request_line.ends_with(b" HTTP/1.0") {
                return Err(Ambiguity::TransferEncodingInHttp10);
            }
            let v = v.strip_prefix(b" ").unwrap_or(v);
            if v != b"chunked" {
                return Err(Ambiguity::TransferEncodingNotExactlyChunked);
            }
            return Ok(State::ChunkSize(Vec::new()));
        }
        Ok(match content_length {
            Some(n) if n > 0 => State::Fixed(n),
            _ => State::Head(Vec::new()),
        })
    }

    #[test]
    fn after_head_agrees_with_the_reference() {
        let request_lines: [&[u8]; 6] = [
            b"GET / HTTP/1.1",
            b"POST /x HTTP/1.0",
            b"CONNECT a:443 HTTP/1.1",
            b"",
            b"GET /\x01 HTTP/1.1",
            b"GET /\xc3\xa9 HTTP/1.1",
        ];
        let names: [&[u8]; 16] = [
            b"Host",
            b"Host",
            b"User-Agent",
            b"Content-Length",
            b"content-length",
            b"Content-Length",
            b"Transfer-Encoding",
            b"transfer-encoding",
            b"Transfer-Encoding",
            b"Upgrade",
            b"X-A!#$%&'*+-.^_`|~",
            b"Bad Name",
            b"",
            b"x:y",
            b"X-\xc3\xa9",
            b"(x)",
        ];
        let separators: [&[u8]; 8] = [b":", b": ", b": ", b": ", b": ", b":\t", b" :", b""];
        let values: [&[u8]; 17] = [
            b"a",
            b"5",
            b"5",
            b" 5 ",
            b"chunked",
            b"chunked",
            b" chunked",
            b"a b",
            b"chunked ",
            b"\x01",
            b"\x7f",
            b"\xc3\xa9",
            b"0",
            b"-1",
            b"\t",
            b"1234567890123456789",
            b"a:b",
        ];
        // Mostly well-formed lines, so that every verdict comes up.
        let ends: [&[u8]; 10] = [
            b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r",
        ];
        let pick = |list: &[&'static [u8]]| list[fastrand::usize(..list.len())];
        for _ in 0..20_000 {
            let mut head = pick(&request_lines).to_vec();
            head.extend_from_slice(b"\r\n");
            for _ in 0..fastrand::usize(..5) {
                head.extend_from_slice(pick(&names));
                head.extend_from_slice(pick(&separators));
                head.extend_from_slice(pick(&values));
                head.extend_from_slice(pick(&ends));
            }
            if !head.ends_with(b"\r\n") {
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            // Now and then a byte or two replaced, the final empty line kept.
            for _ in 0..fastrand::usize(..3).saturating_sub(1) {
                if head.len() == 4 {
                    break;
                }
                let at = fastrand::usize(..head.len() - 4);
                head[at] = pick(&[b"\r", b"\n", b":", b" ", b"\t", b"\x00", b"\xff", b"a"])[0];
            }
            assert_eq!(
                format!("{:?}", after_head(&head)),
                format!("{:?}", after_head_reference(&head)),
                "{}",
                String::from_utf8_lossy(&head)
            );
        }
    }

    #[test]
    fn scanning_helpers_agree_with_the_plain_definitions() {
        let mut samples: Vec<Vec<u8>> = [
            &b""[..],
            b"\n",
            b"\r\n",
            b"\r\n\r\n",
            b"\n\n",
            b"a\nb",
            b"a\r\nb\n",
            b"\r\n\r",
            b"\r\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody\r\n\r\n",
            b"x\r\n\r\nGET",
            b"\n\r\n\r\n",
        ]
        .iter()
        .map(|s| s.to_vec())
        .collect();
        // Random strings over the bytes that matter, in every length up to 40.
        for len in 0..40 {
            for _ in 0..200 {
                samples.push((0..len).map(|_| b"\r\na:"[fastrand::usize(..4)]).collect());
            }
        }
        for s in &samples {
            let windows = s.windows(4).position(|w| w == b"\r\n\r\n");
            assert_eq!(find_head_end(s), windows, "{s:?}");
            let bare = s
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'\n' && (i == 0 || s[i - 1] != b'\r'));
            assert_eq!(has_bare_lf(s), bare, "{s:?}");
            let split: Vec<&[u8]> = s.split(|&b| b == b'\n').collect();
            assert_eq!(split_lines(s).collect::<Vec<_>>(), split, "{s:?}");
        }
    }

    fn run(chunks: &[&[u8]]) -> (Option<Ambiguity>, Framing) {
        let flag = Arc::new(Flag::default());
        let mut f = Framing::new(flag.clone());
        for c in chunks {
            f.feed(c);
        }
        (flag.get(), f)
    }

    fn verdict(raw: &[u8]) -> Option<Ambiguity> {
        // Byte by byte and all at once must agree.
        let whole = run(&[raw]).0;
        let split: Vec<&[u8]> = raw.chunks(1).collect();
        assert_eq!(run(&split).0, whole, "{}", String::from_utf8_lossy(raw));
        whole
    }

    #[test]
    fn clean_messages_pass_and_are_followed() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nGET /z HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(verdict(raw), None);
        let (_, f) = run(&[raw]);
        assert!(matches!(f.state, State::Head(ref b) if b.is_empty()));
    }

    #[test]
    fn body_bytes_that_look_like_requests_are_not_heads() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 45\r\n\r\nGET / HTTP/1.1\nHost: a\nTransfer-Encoding: x\n\n";
        assert_eq!(verdict(raw), None);
    }

    #[test]
    fn ambiguities_are_flagged() {
        let cases: &[(&[u8], Ambiguity)] = &[
            (b"GET / HTTP/1.1\nHost: a\n\n", Ambiguity::BareLf),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", Ambiguity::ContentLengthAndTransferEncoding),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", Ambiguity::RepeatedContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n", Ambiguity::TransferEncodingNotExactlyChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n", Ambiguity::TransferEncodingNotExactlyChunked),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Ambiguity::BadChunk),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX", Ambiguity::BadChunk),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", Ambiguity::BadChunk),
            (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", Ambiguity::MalformedHead),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", Ambiguity::MalformedHead),
            (b"GET / HTTP/1.1\r\nHost: a\r\nBad\x01Name: x\r\n\r\n", Ambiguity::MalformedHead),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: x\r\n  folded\r\n\r\n", Ambiguity::MalformedHead),
            (b"GET / HTTP/1.1\rHost: a\r\n\r\n", Ambiguity::MalformedHead),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", Ambiguity::MalformedHead),
            (b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n", Ambiguity::MalformedHead),
            (b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", Ambiguity::MalformedHead),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", Ambiguity::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", Ambiguity::BadContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", Ambiguity::BadContentLength),
            (b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", Ambiguity::TransferEncodingInHttp10),
        ];
        for (raw, want) in cases {
            assert_eq!(
                verdict(raw),
                Some(*want),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn values_with_tabs_and_obs_text_are_grammatical() {
        assert_eq!(
            verdict(b"GET /a?b=c HTTP/1.1\r\nHost: a\r\nX-A: one\ttwo \xc3\xa9 \"q\"\r\nX-Empty:\r\n\r\n"),
            None
        );
    }

    /// Everything hyper would read from `raw`, in reads of `chunk` bytes, and whether it was
    /// then told the stream ended (rather than left waiting).
    async fn read_all(raw: &'static [u8], chunk: usize) -> (Vec<u8>, Option<Ambiguity>, bool) {
        use tokio::io::AsyncReadExt;
        let flag = Arc::new(Flag::default());
        let mut s = Sniffed::new(raw, flag.clone(), Arc::new(Activity::default()));
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        let ended = loop {
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0)) => break true,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => break false,
            }
        };
        (out, flag.get(), ended)
    }

    #[tokio::test]
    async fn a_refused_head_reaches_hyper_as_the_stand_in_and_nothing_after_it() {
        // 16 KiB reads go straight to the socket; 24-byte ones (hyper-util's first read, to
        // tell HTTP/2 from HTTP/1.1) through the first-read stash. Both see whole heads.
        for chunk in [16 * 1024, 24] {
            let clean = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
            let (out, flag, ended) = read_all(
                b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nBad Name: x\r\n\r\nGET /c HTTP/1.1\r\nHost: a\r\n\r\n",
                chunk,
            )
            .await;
            assert_eq!(out, [&clean[..], STAND_IN].concat());
            assert_eq!(flag, Some(Ambiguity::MalformedHead));
            // The client's end of stream is not passed on: hyper would drop the answer.
            assert!(!ended);
            // Ambiguities of framing too: hyper never sees the Transfer-Encoding it would honour.
            let (out, flag, _) = read_all(
                b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                chunk,
            )
            .await;
            assert_eq!(out, STAND_IN);
            assert_eq!(flag, Some(Ambiguity::ContentLengthAndTransferEncoding));
            // Clean traffic passes byte for byte.
            let raw = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
            let (out, flag, ended) = read_all(raw, chunk).await;
            assert_eq!(out, raw);
            assert_eq!(flag, None);
            assert!(ended);
        }
    }

    #[test]
    fn http2_and_upgrades_are_left_alone() {
        assert_eq!(verdict(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\n"), None);
        let (_, f) = run(&[b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello\n\n"]);
        assert!(matches!(f.state, State::Off));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(11);
        let parts: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"\r\n",
            b"\n",
            b"Content-Length: 3\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"0\r\n",
            b"ff\r\n",
            b"x",
            b"\r",
            b";",
            b"PRI * HTTP/2.0",
        ];
        for _ in 0..5000 {
            let mut raw = Vec::new();
            for _ in 0..rng.usize(0..20) {
                raw.extend_from_slice(parts[rng.usize(..parts.len())]);
            }
            let _ = verdict(&raw);
        }
    }
}
