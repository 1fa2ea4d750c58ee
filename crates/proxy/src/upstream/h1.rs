//! The direct HTTP/1.1 client: requests without an upgrade and with a body of known length
//! (or none) to cleartext targets.
//!
//! * **Takes**: a request head (method, origin-form path and query, final headers) for one
//!   target, and its body when it has one of known length.
//! * **Produces**: the target's response, whose body reads the connection itself: the
//!   request's own task writes the head, reads the answer and streams the body, and the
//!   connection goes back to the target's idle list the moment the body's last byte is read.
//!   Its head holds the end-to-end fields only: the hop-by-hop ones (and those `Connection`
//!   names) are read for the framing and left out, as the gateway would remove them.
//!   There is no connection task, no channel between tasks and no per-response bookkeeping —
//!   the costs that dominated a proxied request through the general client (see
//!   docs/performance.md and ADR 0007).
//! * **Rejects**: [`SendError::Connect`] when no connection could be made (nothing was sent),
//!   [`SendError::Unanswered`] when a fresh connection ended before any byte of an answer,
//!   [`SendError::Request`] when the request's own body failed or disagreed with its length,
//!   [`SendError::Stale`] when a reused connection failed before any byte of an answer (closed,
//!   reset: while the head or the body was written, or after) and the request could not be
//!   sent again, [`SendError::Other`] for everything else after the connect (a fresh
//!   connection failing while a body was sent, a malformed or oversized head, more than
//!   [`MAX_INFORMATIONAL`] interim answers, an unsupported answer).
//!
//! Invariants:
//! * Framing follows RFC 9112 §6.3: no body after HEAD, 1xx, 204 and 304; a
//!   `Transfer-Encoding` overrides `Content-Length` (which is then removed, from bodiless
//!   answers too, and the connection not reused); its last coding `chunked` makes the body
//!   chunked, other transfer codings and answers without length are read to the end of the
//!   connection; `Content-Length` values must agree; an HTTP/1.0 answer with
//!   `Transfer-Encoding` is refused (§6.1: its framing is faulty).
//! * Whatever answer this client reads to its end, hyper's HTTP/1.1 client reads the same
//!   (status, end-to-end fields, body, trailers): checked on random answers by the unit tests
//!   and on arbitrary bytes by the `upstream_response` fuzz target (module `differential`,
//!   built for tests and the `fuzzing` feature). Where the two differ, this client is the
//!   stricter: it refuses the answer (a 502 to the client when the head is refused; a body
//!   cut off, the connection closed, when a chunk is). Its limits are hyper's or tighter, and
//!   are held against where a line or section ends, never against what one read happened to
//!   hold: a chunk-size line of at most 4 KiB (hyper: none), chunk extensions of less than
//!   16 KiB over the whole body and a trailer section of less than 16 KiB (hyper's own), at
//!   most 16 hex digits of chunk size (hyper: any number of leading zeros).
//! * A connection is reused only after an HTTP/1.1 answer without `Connection: close` whose
//!   body was read to its end with no byte left over. A body dropped early closes it. So does
//!   an answer that has no body by its status or the request's method (HEAD, 204, 304) but
//!   announces one (`Content-Length` other than 0, or any `Transfer-Encoding`): a server that
//!   sends that body anyway, in a later write, would have it read as the next request's answer.
//!   `Connection` is read as bytes split at commas, so that a value with bytes outside ASCII
//!   still says `close` and still names the fields to remove.
//! * The head is parsed when its first bytes come and after that only when a read brings bytes
//!   that can end it (an LF followed by LF or CRLF: the ends `httparse` accepts), not after every
//!   read: a head trickled a byte at a time costs one pass over its bytes, not one per byte. The
//!   same holds while a request body is sent, where the informational answers count towards the
//!   same bound as those after it.
//! * An idle connection is checked before reuse (a target that closed it is noticed without
//!   sending anything); one that still turns out closed before any byte of the answer costs
//!   one more attempt on a fresh connection, for bodiless requests of idempotent methods only
//!   (otherwise [`SendError::Stale`]: an upload that meets the race — its connection closed or
//!   reset while the head or the body goes out — is not sent again, and not counted against
//!   the target either). A *fresh* connection closed so is no such race: the
//!   target dropped the request ([`SendError::Unanswered`]; the pool counts it against the
//!   target and may send a bodiless idempotent request to another).
//! * The request target is written in origin form: a path-and-query without a leading `/` (a
//!   query alone) gets one, as hyper's client writes it; `*` stays.
//! * A body is sent with `Content-Length` and must match it. While it is sent the connection
//!   is watched: an answer that comes early (a 413, a 401) stops the sending and is returned,
//!   and the connection is not reused. A body that fails (too large, too slow) fails the
//!   exchange.
//! * Every wait in here is bounded by the caller (connect timeout, response-head timeout); a
//!   body's reads are paced by the client reading it, like the general client's.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use portcullis_core::{BoxBody, BoxError};

use crate::headers::{
    HOP_CONNECTION, HOP_TE, HOP_TRANSFER_ENCODING, NameCache, hop_index, itoa_u64, lists,
};
use tokio::io::{AsyncWrite as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// At most this many header fields in a response head (and in a trailer section).
const MAX_HEADERS: usize = 100;
/// A response head (status line and fields) may not exceed this.
const MAX_HEAD_BYTES: usize = 256 * 1024;
/// At most this many informational (1xx) heads before the final one: a target sending them
/// without end would keep the exchange parsing until its deadline.
const MAX_INFORMATIONAL: u32 = 16;
/// A chunk-size line (with extensions, without its CRLF) may not exceed this. hyper's client
/// has no bound of its own on the line, only on the extensions ([`MAX_CHUNK_EXTENSIONS`]).
const MAX_CHUNK_LINE: usize = 4096;
/// The extension bytes (those after a chunk-size line's first `;`) of all the chunk-size lines
/// of one body together must stay below this: hyper's client refuses a body whose extensions
/// reach 16 KiB, and a target could otherwise send an endless body of empty extensions.
const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// A trailer section (from after the last chunk's size line to the CRLF that ends it, both
/// included) must stay below this, as in hyper's client (16 KiB).
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Free room every read has at least: an answer whose head and body come to less than this,
/// once arrived, is taken in one read and so goes to the client in one write (a 16 KiB body
/// read in two cost a read and a write more per request). Below it, the buffer is grown by
/// [`READ_ROOM`] (in place when nothing else shares it), so a pooled connection keeps about
/// 32 KiB for reading.
const MIN_ROOM: usize = 20 * 1024;
/// What the read buffer is grown by.
const READ_ROOM: usize = 32 * 1024;
/// A first body chunk up to this size goes out in the same write as the head.
const COALESCE_BODY: usize = 16 * 1024;

/// Why an exchange failed. The pool counts against the target what says something of it:
/// `Connect`, `Unanswered` and `Other`, not `Request` nor `Stale`.
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection: the request never left.
    Connect(BoxError),
    /// A fresh connection was closed (or reset) by the target before any byte of an answer
    /// came: the target dropped the request. A bodiless request of an idempotent method may
    /// be sent again, elsewhere.
    Unanswered(BoxError),
    /// The request's body failed (the gateway's size or rate limits, the client gone) or did
    /// not match its length: nothing the target did.
    Request(BoxError),
    /// A pooled connection the target had closed while it was idle (it failed before any
    /// byte of an answer, whether the head, the body or nothing was still going out), for a
    /// request that is not sent twice: the race every keep-alive client has with a server
    /// closing idle connections, no fault of the target.
    Stale(BoxError),
    /// The exchange failed after the request may have been sent.
    Other(BoxError),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum H1Error {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("the upstream closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("the upstream closed the connection in the middle of the body")]
    ClosedMidBody,
    #[error("the upstream's response head is malformed: {0}")]
    BadHead(&'static str),
    #[error("the upstream's response head exceeds {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("the upstream's chunked body is malformed: {0}")]
    BadChunk(&'static str),
    #[error("the upstream switched protocols unasked")]
    UnaskedSwitch,
    #[error("the upstream sent more than {MAX_INFORMATIONAL} informational answers")]
    TooManyInformational,
    #[error("the upstream closed the connection while the request body was sent")]
    ClosedDuringBody,
    #[error("the request body ended before its Content-Length")]
    BodyShort,
    #[error("the request body is longer than its Content-Length")]
    BodyLong,
}

/// A connection and its buffers, kept across requests.
pub(super) struct Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    rbuf: BytesMut,
    /// The request head being written (its capacity is reused).
    wbuf: Vec<u8>,
    /// The field names of the last answer read on this connection.
    names: NameCache,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// A target's idle connections, most recently used last.
#[derive(Default)]
pub(super) struct IdleConns {
    list: Mutex<VecDeque<Idle>>,
}

/// Settings of the direct client, from the upstream's configuration.
#[derive(Clone, Copy, Debug)]
pub(super) struct Direct {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

impl IdleConns {
    /// The most recently used idle connection that is still open and fresh.
    fn take(&self, idle_timeout: Duration) -> Option<Conn> {
        loop {
            let idle = {
                let Ok(mut list) = self.list.lock() else {
                    return None;
                };
                let idle = list.pop_back()?;
                if idle.since.elapsed() >= idle_timeout {
                    // The others are older still.
                    list.clear();
                    return None;
                }
                idle
            };
            if !idle.conn.closed_by_peer() {
                return Some(idle.conn);
            }
        }
    }

    fn put(&self, conn: Conn, d: &Direct) {
        if d.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let Ok(mut list) = self.list.lock() else {
            return;
        };
        if list.len() >= d.max_idle {
            list.pop_front();
        }
        list.push_back(Idle { conn, since: now });
    }

    /// Closes the connections idle for `idle_timeout` or longer (the periodic sweep: a target
    /// that gets no more requests does not keep sockets open forever).
    pub(super) fn purge(&self, idle_timeout: Duration) {
        let now = Instant::now();
        let Ok(mut list) = self.list.lock() else {
            return;
        };
        while list
            .front()
            .is_some_and(|i| now.duration_since(i.since) >= idle_timeout)
        {
            list.pop_front();
        }
    }

    /// Idle connections held now (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.list.lock().map(|l| l.len()).unwrap_or(0)
    }
}

impl Conn {
    /// True if the peer closed the connection (or sent something unasked) while it was idle.
    /// Costs no system call unless the socket was reported readable.
    fn closed_by_peer(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads what the socket has into `rbuf`; `Ok(0)` is the end of the stream.
    ///
    /// Through tokio's `poll_read`, not `try_read`: a read that does not fill the buffer
    /// counts as the socket drained, so the next read waits for readiness instead of first
    /// asking the kernel and getting `EAGAIN` — one system call fewer per request on a
    /// reused connection (the answer never is there yet when the request has just left).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < MIN_ROOM {
            self.rbuf.reserve(READ_ROOM);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// While a request body is sent: `Ready(Ok(()))` once bytes of an answer have arrived
    /// (kept in `rbuf`), an error if the target closed or failed, `Pending` otherwise (with
    /// the task registered for the socket's readability).
    /// Interim answers (`100 Continue` to a forwarded `Expect`, `103 Early Hints`) are read
    /// and dropped here: the body goes on. They count in `scan` towards
    /// [`MAX_INFORMATIONAL`], with those that come after the body.
    fn poll_answer_started(
        &mut self,
        cx: &mut Context<'_>,
        scan: &mut HeadScan,
    ) -> Poll<Result<(), BoxError>> {
        loop {
            match ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(Box::new(H1Error::ClosedDuringBody))),
                Ok(_) => {
                    scan.got_any = true;
                    while scan.worth_parsing(&self.rbuf) {
                        match interim_head(&self.rbuf) {
                            Arrived::Interim(len) => {
                                self.rbuf.advance(len);
                                scan.next_head();
                                scan.informational += 1;
                                if scan.informational > MAX_INFORMATIONAL {
                                    return Poll::Ready(Err(Box::new(
                                        H1Error::TooManyInformational,
                                    )));
                                }
                            }
                            Arrived::Incomplete => {
                                scan.incomplete(self.rbuf.len());
                                break;
                            }
                            Arrived::Final => {
                                // Parsed again, at once, by the head reader.
                                scan.next_head();
                                return Poll::Ready(Ok(()));
                            }
                        }
                    }
                }
                Err(e) => return Poll::Ready(Err(Box::new(e))),
            }
        }
    }

    /// Sends the rest of a request body: `pending`, then `left` more bytes from `body`.
    /// `Ok(false)`: an answer arrived before the body was all sent (sending stopped). A body
    /// that fails or does not match its length is `Exchange::Request`; the connection failing
    /// is `Exchange::Failed`.
    async fn send_body(
        &mut self,
        body: &mut BoxBody,
        mut left: u64,
        mut pending: Bytes,
        scan: &mut HeadScan,
    ) -> Result<bool, Exchange> {
        loop {
            while !pending.is_empty() {
                let step = std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = self.poll_answer_started(cx, scan) {
                        return Poll::Ready(r.map(|()| None));
                    }
                    Pin::new(&mut self.io)
                        .poll_write(cx, &pending)
                        .map(|r| r.map(Some).map_err(|e| -> BoxError { Box::new(e) }))
                })
                .await
                .map_err(Exchange::Failed)?;
                match step {
                    None => return Ok(false),
                    Some(0) => return Err(Exchange::Failed(Box::new(H1Error::ClosedDuringBody))),
                    Some(n) => pending.advance(n),
                }
            }
            if left == 0 {
                return Ok(true);
            }
            let frame = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = self.poll_answer_started(cx, scan) {
                    return Poll::Ready(r.map(|()| None));
                }
                Pin::new(&mut *body).poll_frame(cx).map(|f| Ok(Some(f)))
            })
            .await
            .map_err(Exchange::Failed)?;
            match frame {
                None => return Ok(false),
                Some(None) => return Err(Exchange::Request(Box::new(H1Error::BodyShort))),
                Some(Some(Err(e))) => return Err(Exchange::Request(e)),
                Some(Some(Ok(frame))) => {
                    // Trailers cannot follow a length-delimited body; they are dropped, as
                    // they would be by any HTTP/1.1 client.
                    if let Ok(data) = frame.into_data() {
                        if data.len() as u64 > left {
                            return Err(Exchange::Request(Box::new(H1Error::BodyLong)));
                        }
                        left -= data.len() as u64;
                        pending = data;
                    }
                }
            }
        }
    }
}

/// What is sent of a request: the direct client only carries bodiless ones.
#[derive(Clone, Copy)]
pub(super) struct RequestHead<'a> {
    pub method: &'a Method,
    /// Origin form: path and query.
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// Replaces the request's `Host` (`host_header: target`).
    pub host: Option<&'a HeaderValue>,
    /// The body's length (0: no body). Written as `Content-Length` if the headers lack one;
    /// the caller makes sure a present one says the same.
    pub body_len: u64,
    /// Field lines (`name: value` CRLF each) written after the map's (the gateway's own; the
    /// map has none of these names).
    pub extra: &'a [u8],
    /// Room kept in the answer's map for fields the gateway adds (see `ForwardOpts`).
    pub answer_room: usize,
}

/// The request head as written to the target.
/// `host`: a `Host` value replacing the request's (the target's own authority); without one,
/// the request's `Host` is kept, or the target's authority written if it has none.
pub(super) fn encode_head(out: &mut Vec<u8>, req: &RequestHead<'_>, authority: &str) {
    let RequestHead {
        method,
        path_and_query,
        headers,
        host,
        body_len,
        extra,
        answer_room: _,
    } = *req;
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    // An origin-form target starts with `/` (RFC 9112 §3.2.1): a query alone (`?x=1`, from an
    // absolute form without a path or an HTTP/2 `:path` of that shape) gets one in front, as
    // hyper's client writes it; `*` (an `OPTIONS` of the whole server) stays as it is.
    if !(path_and_query.starts_with('/') || path_and_query == "*") {
        out.push(b'/');
    }
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match host {
        Some(h) => {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None if !portcullis_core::has_header(headers, &HOST) => {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(authority.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None => {}
    }
    for (name, value) in headers {
        if host.is_some() && name == HOST {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
    // A body says its length; so does a body-carrying method's empty body (some servers answer
    // 411 otherwise).
    if (body_len > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH))
        && !portcullis_core::has_header(headers, &CONTENT_LENGTH)
    {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa_u64(body_len, &mut [0u8; 20]));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether `bytes` hold a CR not followed by LF or an LF not preceded by CR.
fn has_bare_cr_or_lf(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || bytes[i - 1] != b'\r',
        _ => false,
    })
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What the start of `buf` holds, as seen while a request body is still being sent.
enum Arrived {
    /// A whole 1xx head (other than 101) of this many bytes.
    Interim(usize),
    /// Nothing, or not enough to tell.
    Incomplete,
    /// A final answer (or something the head reader will refuse).
    Final,
}

fn interim_head(buf: &[u8]) -> Arrived {
    if buf.is_empty() {
        return Arrived::Incomplete;
    }
    #[cfg(test)]
    HEAD_PARSES.set(HEAD_PARSES.get() + 1);
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => match resp.code {
            Some(c) if (100..200).contains(&c) && c != 101 => Arrived::Interim(len),
            _ => Arrived::Final,
        },
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => Arrived::Incomplete,
        _ => Arrived::Final,
    }
}

/// How far the reading of an answer's heads has come, across the reads that bring them (one
/// per exchange, on the stack: shared by the body's sending and the head reader).
#[derive(Default)]
struct HeadScan {
    /// Informational (1xx) heads read so far, while the body was sent and after.
    informational: u32,
    /// Whether any byte of an answer has come.
    got_any: bool,
    /// How many bytes at the start of `rbuf` are known not to end the head (but for their
    /// last two, which may begin its end): its length when the parser last found the head
    /// incomplete or the search for its end last failed. 0 when the parser has not been tried
    /// on this head yet (then it is, at once: the usual answer came whole).
    seen: usize,
    /// How many bytes at the start of `rbuf` are known to be CR or LF: the empty lines before
    /// a head, which `httparse` skips (they end no head).
    lead: usize,
}

impl HeadScan {
    /// Whether parsing the head at the start of `buf` may find something new: the first time,
    /// or when bytes read since the last try can end the head (or `buf` is past the size
    /// limit, which the parser reports). An incomplete head is not parsed again per read: a
    /// head trickled byte by byte would be scanned whole each time (quadratic in its size).
    /// The bytes searched are the new ones (and the two before them), each once.
    fn worth_parsing(&mut self, buf: &[u8]) -> bool {
        if self.seen == 0 || buf.len() > MAX_HEAD_BYTES {
            return true;
        }
        while buf
            .get(self.lead)
            .is_some_and(|b| matches!(b, b'\r' | b'\n'))
        {
            self.lead += 1;
        }
        let from = self.lead.max(self.seen.saturating_sub(2));
        let may_end = buf.get(from..).is_some_and(may_end_head);
        if !may_end {
            self.seen = buf.len();
        }
        may_end
    }

    /// The parser found the head at the start of a buffer of `len` bytes incomplete.
    fn incomplete(&mut self, len: usize) {
        self.seen = len;
    }

    /// A head was taken off the buffer (or is to be parsed anew): the next one is tried at
    /// once.
    fn next_head(&mut self) {
        self.seen = 0;
        self.lead = 0;
    }
}

/// Whether `bytes` hold the end of a head as `httparse` takes it: a line's LF, then an empty
/// line (CRLF, or a bare LF, which `httparse` accepts as a line end).
fn may_end_head(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|i| match bytes.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => bytes.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

#[cfg(test)]
thread_local! {
    /// Heads parsed (or tried) on this thread: the tests count them.
    pub(super) static HEAD_PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A parsed final response head.
struct Head {
    status: StatusCode,
    version: Version,
    /// The end-to-end fields: the hop-by-hop ones are left out as the head is read.
    headers: HeaderMap,
    framing: FramingFields,
}

/// What the framing fields said, read as the head's fields are taken (they are hop-by-hop, or
/// checked only when the answer has a body).
#[derive(Default)]
struct FramingFields {
    /// `Connection` lists `close`.
    close: bool,
    /// Whether `Transfer-Encoding` came, and whether its last coding is `chunked`.
    transfer_encoding: Option<bool>,
    /// The `Content-Length` value (all agreeing), or why the values are refused.
    content_length: Option<Result<u64, &'static str>>,
    /// A `Transfer-Encoding` value that is not text.
    transfer_encoding_invalid: bool,
}

impl FramingFields {
    /// Reads a `Content-Length` value (a comma-separated list of equal lengths is one).
    fn content_length(&mut self, v: &[u8]) {
        if matches!(self.content_length, Some(Err(_))) {
            return;
        }
        for part in v.split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                self.content_length = Some(Err("invalid Content-Length"));
                return;
            }
            let n = part
                .iter()
                .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
            if matches!(self.content_length, Some(Ok(l)) if l != n) {
                self.content_length = Some(Err("conflicting Content-Length values"));
                return;
            }
            self.content_length = Some(Ok(n));
        }
    }

    /// Reads a `Transfer-Encoding` value: the last coding of the last value decides. A value
    /// that ends in an empty element (`chunked,`, `,`, nothing) is refused: the list rule
    /// would skip the empty element and find `chunked`, where hyper's client takes the empty
    /// element for the last coding and reads to the end of the connection.
    fn transfer_encoding(&mut self, v: &HeaderValue) {
        let chunked = self.transfer_encoding.unwrap_or(false);
        let last = v
            .to_str()
            .ok()
            .and_then(|s| s.rsplit(',').next())
            .map(str::trim);
        match last {
            Some(t) if !t.is_empty() => {
                self.transfer_encoding = Some(t.eq_ignore_ascii_case("chunked"));
            }
            _ => {
                self.transfer_encoding_invalid = true;
                self.transfer_encoding = Some(chunked);
            }
        }
    }
}

/// Parses one response head at the start of `buf`. `Ok(None)`: incomplete. On success the
/// head's bytes are taken off `buf`; the header values share one copy of them.
///
/// The hop-by-hop fields (RFC 9110 §7.6.1) are read, not kept: those the gateway removes from
/// every answer (`Connection` and the fields it lists, `Keep-Alive`, `Proxy-Connection`,
/// `TE` but for `trailers`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`,
/// `Proxy-Authorization`), so that the answer is not built to be taken apart again.
fn parse_head(
    buf: &mut BytesMut,
    names: &mut NameCache,
    room: usize,
) -> Result<Option<Head>, H1Error> {
    #[cfg(test)]
    HEAD_PARSES.set(HEAD_PARSES.get() + 1);
    // Left uninitialised: the parser writes what it returns (zeroing 3 KiB per response
    // would cost more than the parse).
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Complete(_)) => return Err(H1Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD_BYTES {
                Err(H1Error::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::BadHead("too many fields")),
        Err(_) => return Err(H1Error::BadHead("not an HTTP/1.x response")),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(H1Error::BadHead("invalid status"))?;
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // One copy of the head (a few hundred bytes) that every value slices.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    // Room for what the gateway adds on the way back (security headers, request id, CORS),
    // so that the map is not grown (rehashed and copied) for every answer.
    let mut headers = HeaderMap::with_capacity(resp.headers.len() + room);
    let mut framing = FramingFields::default();
    // Names `Connection` lists (but `keep-alive`): removed at the end.
    let mut listed: Vec<HeaderName> = Vec::new();
    let mut te_trailers = false;
    for (i, h) in resp.headers.iter().enumerate() {
        let name = names
            .name(i, h.name.as_bytes())
            .ok_or(H1Error::BadHead("invalid field name"))?;
        let start = h.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(head.slice(start..start + h.value.len()))
            .map_err(|_| H1Error::BadHead("invalid field value"))?;
        match hop_index(&name) {
            // Most upstreams say only `keep-alive`: nothing to close, no name listed.
            Some(HOP_CONNECTION) if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") => {}
            Some(HOP_CONNECTION) => {
                // By bytes: a value with bytes outside ASCII is no `str`, and its other
                // elements still count (`close, \xe9` closes).
                for t in value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                {
                    framing.close |= t.eq_ignore_ascii_case(b"close");
                    // A field the gateway keeps, named here, is removed (`close` included, as
                    // a name); a `Keep-Alive` field is never kept.
                    if !t.eq_ignore_ascii_case(b"keep-alive")
                        && let Ok(n) = HeaderName::from_bytes(t)
                    {
                        listed.push(n);
                    }
                }
            }
            Some(HOP_TRANSFER_ENCODING) => framing.transfer_encoding(&value),
            Some(HOP_TE) => te_trailers |= lists(&value, "trailers"),
            Some(_) => {}
            None => {
                if name == CONTENT_LENGTH {
                    framing.content_length(value.as_bytes());
                }
                crate::headers::append_field(&mut headers, name, value);
            }
        }
    }
    for n in listed {
        headers.remove(n);
    }
    if te_trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    buf.advance(len);
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
    }))
}

/// The body's framing (RFC 9112 §6.3) and whether the connection may carry another request.
/// Removes a `Content-Length` that a `Transfer-Encoding` overrides.
fn framing(head_request: bool, head: &mut Head) -> Result<(Framing, bool), H1Error> {
    let f = &head.framing;
    let mut reusable = head.version == Version::HTTP_11 && !f.close;
    // `Transfer-Encoding` overrides `Content-Length` (RFC 9112 §6.3), on every answer, bodiless
    // ones included: the length is removed (an intermediary must not pass both on) and the
    // connection not reused (an answer with both may be an attempt at splitting).
    if f.transfer_encoding.is_some() && head.headers.remove(CONTENT_LENGTH).is_some() {
        reusable = false;
    }
    let status = head.status;
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        // Without a body whatever it announces; but a server that announces one may send it
        // all the same, later: those bytes would be read as the next request's answer.
        if f.transfer_encoding.is_some() || !matches!(f.content_length, None | Some(Ok(0))) {
            reusable = false;
        }
        return Ok((Framing::Empty, reusable));
    }
    if let Some(chunked) = f.transfer_encoding {
        if f.transfer_encoding_invalid {
            return Err(H1Error::BadHead("invalid Transfer-Encoding"));
        }
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing (its
        // sender did not frame it by the coding; what follows may be read in two ways).
        if head.version == Version::HTTP_10 {
            return Err(H1Error::BadHead("Transfer-Encoding in an HTTP/1.0 answer"));
        }
        return Ok(if chunked {
            (Framing::Chunked, reusable)
        } else {
            (Framing::UntilClose, false)
        });
    }
    Ok(match f.content_length {
        Some(Err(why)) => return Err(H1Error::BadHead(why)),
        Some(Ok(0)) => (Framing::Empty, reusable),
        Some(Ok(n)) => (Framing::Length(n), reusable),
        None => (Framing::UntilClose, false),
    })
}

impl Direct {
    async fn connect(&self, authority: &str) -> Result<Conn, SendError> {
        let io =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(authority)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => return Err(SendError::Connect(Box::new(e))),
                Err(_) => return Err(SendError::Connect(Box::new(H1Error::ConnectTimeout))),
            };
        // Requests and answers are written whole: nothing is gained by waiting to coalesce.
        let _ = io.set_nodelay(true);
        Ok(Conn {
            io,
            rbuf: BytesMut::new(),
            names: NameCache::default(),
            wbuf: Vec::with_capacity(1024),
        })
    }

    /// Sends a request (with `body` when `req.body_len > 0`) and returns the response once its
    /// head has arrived.
    pub(super) async fn send(
        &self,
        idle: &Arc<IdleConns>,
        authority: &str,
        req: &RequestHead<'_>,
        body: &mut BoxBody,
    ) -> Result<Response<H1Body>, SendError> {
        let method = req.method;
        let mut pooled = idle.take(self.idle_timeout);
        loop {
            let reused = pooled.is_some();
            let conn = match pooled.take() {
                Some(c) => c,
                None => self.connect(authority).await?,
            };
            match self
                .exchange(conn, reused, idle, authority, req, body)
                .await
            {
                // A reused connection the target had closed (or reset): nothing of an answer
                // came back. Only a request that may be repeated, and has no body to replay,
                // is sent again, on a fresh connection; an upload is not, and is no fault of
                // the target's either.
                Err(Exchange::Stale(_))
                    if reused && req.body_len == 0 && method.is_idempotent() => {}
                Err(Exchange::Stale(e)) if reused => return Err(SendError::Stale(e)),
                // On a fresh connection nothing of an answer is no race: the target took the
                // connection and dropped the request.
                Err(Exchange::Stale(e)) => return Err(SendError::Unanswered(e)),
                Err(Exchange::Request(e)) => return Err(SendError::Request(e)),
                Err(Exchange::Failed(e)) => return Err(SendError::Other(e)),
                Ok(resp) => return Ok(resp),
            }
        }
    }

    /// One attempt on `conn` (`reused`: taken from the idle list). A failure of a reused
    /// connection before any byte of an answer, while the request goes out or after, is
    /// `Exchange::Stale`: the keep-alive race, not the target's doing.
    async fn exchange(
        &self,
        mut conn: Conn,
        reused: bool,
        idle: &Arc<IdleConns>,
        authority: &str,
        req: &RequestHead<'_>,
        body: &mut BoxBody,
    ) -> Result<Response<H1Body>, Exchange> {
        let method = req.method;
        let mut wbuf = std::mem::take(&mut conn.wbuf);
        encode_head(&mut wbuf, req, authority);
        // A body already at hand (buffered, or a first chunk that came with the head) goes out
        // in the same write when it is small.
        let mut left = req.body_len;
        let mut pending = Bytes::new();
        if left > 0
            && let Some(first) = body.frame().now_or_never()
        {
            match first {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if data.len() as u64 > left {
                            return Err(Exchange::Request(Box::new(H1Error::BodyLong)));
                        }
                        left -= data.len() as u64;
                        if data.len() <= COALESCE_BODY {
                            wbuf.extend_from_slice(&data);
                        } else {
                            pending = data;
                        }
                    }
                }
                Some(Err(e)) => return Err(Exchange::Request(e)),
                None => return Err(Exchange::Request(Box::new(H1Error::BodyShort))),
            }
        }
        let written = conn.io.write_all(&wbuf).await;
        conn.wbuf = wbuf;
        if let Err(e) = written {
            return Err(if req.body_len == 0 || reused {
                Exchange::Stale(Box::new(e))
            } else {
                Exchange::Failed(Box::new(e))
            });
        }
        let mut scan = HeadScan::default();
        // Whether the whole request went out (an early answer cuts the body short).
        let complete = if req.body_len > 0 {
            match conn.send_body(body, left, pending, &mut scan).await {
                Ok(complete) => complete,
                // The connection failed under the body before any byte of an answer: on a
                // reused one, the target had closed it (the same race as for a bodiless
                // request, which is not sent again either).
                Err(Exchange::Failed(e)) if reused && !scan.got_any => {
                    return Err(Exchange::Stale(e));
                }
                Err(e) => return Err(e),
            }
        } else {
            true
        };
        let mut head = loop {
            // Nothing read yet (the usual case right after the request went out), or nothing
            // read since that could end the head: nothing to parse.
            let parsed = if conn.rbuf.is_empty() || !scan.worth_parsing(&conn.rbuf) {
                Ok(None)
            } else {
                let parsed = parse_head(&mut conn.rbuf, &mut conn.names, req.answer_room);
                match parsed {
                    Ok(None) => scan.incomplete(conn.rbuf.len()),
                    _ => scan.next_head(),
                }
                parsed
            };
            match parsed {
                Ok(Some(h)) if h.status == StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(Exchange::Failed(Box::new(H1Error::UnaskedSwitch)));
                }
                // 100 Continue, 103 Early Hints: the final answer follows.
                Ok(Some(h)) if h.status.is_informational() => {
                    scan.informational += 1;
                    if scan.informational > MAX_INFORMATIONAL {
                        return Err(Exchange::Failed(Box::new(H1Error::TooManyInformational)));
                    }
                    continue;
                }
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => return Err(Exchange::Failed(Box::new(e))),
            }
            match conn.fill().await {
                Ok(0) if !scan.got_any && conn.rbuf.is_empty() => {
                    return Err(Exchange::Stale(Box::new(H1Error::ClosedBeforeAnswer)));
                }
                Ok(0) => return Err(Exchange::Failed(Box::new(H1Error::ClosedBeforeAnswer))),
                Ok(_) => scan.got_any = true,
                Err(e) if !scan.got_any => return Err(Exchange::Stale(Box::new(e))),
                Err(e) => return Err(Exchange::Failed(Box::new(e))),
            }
        };
        let (framing, reusable) =
            framing(*method == Method::HEAD, &mut head).map_err(|e| Exchange::Failed(e.into()))?;
        let reusable = reusable && complete;
        let mut body = H1Body {
            conn: Some(conn),
            state: match framing {
                Framing::Empty => State::Done,
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::ChunkSize,
                Framing::UntilClose => State::UntilClose,
            },
            reusable,
            idle: idle.clone(),
            direct: *self,
            extensions: 0,
        };
        if body.state == State::Done {
            body.release();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }
}

/// An attempt's failure: `Stale` when nothing of an answer arrived (the connection may have
/// been closed by the target while idle; for a request with a body, only a reused connection's
/// failure counts as such), `Request` when the request's body failed or did not match its
/// length.
enum Exchange {
    Stale(BoxError),
    Request(BoxError),
    Failed(BoxError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Done,
}

/// A response body read straight from the target's connection.
pub(super) struct H1Body {
    /// `None` once the body has ended (the connection was kept or closed) or failed.
    conn: Option<Conn>,
    state: State,
    reusable: bool,
    idle: Arc<IdleConns>,
    direct: Direct,
    /// Extension bytes of the chunk-size lines read so far ([`MAX_CHUNK_EXTENSIONS`]).
    extensions: usize,
}

impl H1Body {
    /// The body is over: the connection goes back to the idle list if it can carry another
    /// request (nothing read beyond this answer), and is closed otherwise.
    fn release(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.rbuf.is_empty()
        {
            self.idle.put(conn, &self.direct);
        }
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

/// The position of the first CRLF in `buf`, if any.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Parses a chunk-size line (without its CRLF): hex digits, then optional spaces or tabs and
/// extensions after `;`. The line ends at its first CRLF, so a CR or LF in it is a bare one:
/// refused, as hyper's client refuses it (a reader that took `5\r` for a size would disagree
/// with one that does not on where the chunk starts).
pub(super) fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(H1Error::BadChunk("missing chunk size"));
    }
    if digits > 16 {
        return Err(H1Error::BadChunk("chunk size too large"));
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(rest.len())..];
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(H1Error::BadChunk("invalid chunk size"));
    }
    if rest.iter().any(|b| matches!(b, b'\r' | b'\n')) {
        return Err(H1Error::BadChunk("bare CR or LF in a chunk extension"));
    }
    let mut n = 0u64;
    for b in &line[..digits] {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        n = (n << 4) | u64::from(d);
    }
    Ok(n)
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buffered = conn.rbuf.len();
            match this.state {
                State::Done => {
                    this.release();
                    return Poll::Ready(None);
                }
                State::Length(left) if buffered > 0 => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buffered);
                    let data = conn.rbuf.split_to(take).freeze();
                    let left = left - take as u64;
                    this.state = State::Length(left);
                    if left == 0 {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose if buffered > 0 => {
                    let data = conn.rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::ChunkData(left) if buffered > 0 => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buffered);
                    let data = conn.rbuf.split_to(take).freeze();
                    let left = left - take as u64;
                    this.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::ChunkSize => {
                    // The line's end is looked for only where a line of the longest length
                    // would have it: whether the line is refused depends on its length, never
                    // on how its bytes were cut into reads.
                    let window = &conn.rbuf[..buffered.min(MAX_CHUNK_LINE + 2)];
                    if let Some(end) = find_crlf(window) {
                        let line = &conn.rbuf[..end];
                        let size = chunk_size(line);
                        if let Some(semi) = line.iter().position(|&b| b == b';') {
                            this.extensions += end - semi - 1;
                        }
                        let _ = conn.rbuf.split_to(end + 2);
                        if this.extensions >= MAX_CHUNK_EXTENSIONS {
                            return this
                                .fail(Box::new(H1Error::BadChunk("chunk extensions too large")));
                        }
                        match size {
                            Ok(0) => this.state = State::Trailers,
                            Ok(n) => this.state = State::ChunkData(n),
                            Err(e) => return this.fail(Box::new(e)),
                        }
                        continue;
                    }
                    if window.len() == MAX_CHUNK_LINE + 2 {
                        return this.fail(Box::new(H1Error::BadChunk("chunk size line too long")));
                    }
                }
                State::ChunkEnd if buffered >= 2 => {
                    if &conn.rbuf[..2] != b"\r\n" {
                        return this.fail(Box::new(H1Error::BadChunk("missing CRLF after data")));
                    }
                    let _ = conn.rbuf.split_to(2);
                    this.state = State::ChunkSize;
                    continue;
                }
                State::Trailers => {
                    if conn.rbuf.starts_with(b"\r\n") {
                        let _ = conn.rbuf.split_to(2);
                        this.release();
                        return Poll::Ready(None);
                    }
                    // As for a chunk-size line: the section's end is looked for only where a
                    // section short enough would have it.
                    let window = &conn.rbuf[..buffered.min(MAX_TRAILER_BYTES - 1)];
                    if let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") {
                        let section = conn.rbuf.split_to(end + 4);
                        // Every line ended by CRLF: `httparse` also takes a bare LF for a line
                        // end (and an empty one for the section's end, which would leave bytes
                        // of the section unread); hyper refuses both.
                        if has_bare_cr_or_lf(&section) {
                            return this.fail(Box::new(H1Error::BadChunk(
                                "bare CR or LF in the trailer section",
                            )));
                        }
                        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        let trailers = match httparse::parse_headers(&section, &mut fields) {
                            Ok(httparse::Status::Complete((n, fields))) if n == section.len() => {
                                let mut map = HeaderMap::with_capacity(fields.len());
                                for f in fields.iter() {
                                    match (
                                        HeaderName::from_bytes(f.name.as_bytes()),
                                        HeaderValue::from_bytes(f.value),
                                    ) {
                                        (Ok(n), Ok(v)) => {
                                            map.append(n, v);
                                        }
                                        _ => {
                                            return this.fail(Box::new(H1Error::BadChunk(
                                                "invalid trailer field",
                                            )));
                                        }
                                    }
                                }
                                map
                            }
                            _ => {
                                return this
                                    .fail(Box::new(H1Error::BadChunk("invalid trailer section")));
                            }
                        };
                        this.release();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    if window.len() == MAX_TRAILER_BYTES - 1 {
                        return this.fail(Box::new(H1Error::BadChunk("trailer section too large")));
                    }
                }
                State::Length(_) | State::UntilClose | State::ChunkData(_) | State::ChunkEnd => {}
            }
            // More bytes are needed.
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.state == State::UntilClose => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Box::new(H1Error::ClosedMidBody)),
                Ok(_) => {}
                Err(e) => return this.fail(Box::new(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// The direct client's reading of an answer set against hyper's HTTP/1.1 client: whatever
/// answer the direct client reads to its end, hyper must read the same (status, end-to-end
/// fields, body, trailers). Both get the answer from a socket on 127.0.0.1 that sends it
/// whole and then closes. Used by the unit tests and, with the `fuzzing` feature, by the
/// `upstream_response` fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
pub mod differential {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use http_body_util::{Collected, Empty};
    use tokio::io::AsyncReadExt as _;

    /// Field names (lowercase, sorted) with their values in order.
    type Fields = Vec<(String, Vec<Vec<u8>>)>;

    /// What a client read of an answer.
    #[derive(Debug, PartialEq, Eq)]
    struct Read {
        status: u16,
        fields: Fields,
        body: Vec<u8>,
        trailers: Option<Fields>,
    }

    /// What [`check`] found.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Outcome {
        /// The direct client read an answer with this status and body length, and hyper read
        /// the same.
        Read { status: u16, body: usize },
        /// The direct client refused the answer (or it did not end).
        Refused,
    }

    /// Sends `raw` as the answer to a `GET /` (`HEAD /` when `head_request`) to the direct
    /// client and to hyper's client; panics if the direct client reads an answer and hyper
    /// reads another, or none.
    pub async fn check(raw: &[u8], head_request: bool) -> Outcome {
        let Some(ours) = ours_reads(raw, head_request).await else {
            return Outcome::Refused;
        };
        let shown = || String::from_utf8_lossy(raw).escape_debug().to_string();
        let theirs = hyper_reads(raw, head_request)
            .await
            .unwrap_or_else(|| panic!("hyper refused {} (HEAD: {head_request})", shown()));
        assert_eq!(ours, theirs, "{} (HEAD: {head_request})", shown());
        Outcome::Read {
            status: ours.status,
            body: ours.body.len(),
        }
    }

    fn fields(map: &HeaderMap) -> Fields {
        let mut v: Fields = map
            .keys()
            .map(|k| {
                let values = map.get_all(k).iter().map(|v| v.as_bytes().to_vec());
                (k.to_string(), values.collect())
            })
            .collect();
        v.sort();
        v
    }

    fn read(status: StatusCode, headers: &HeaderMap, body: Collected<Bytes>) -> Read {
        Read {
            status: status.as_u16(),
            fields: fields(headers),
            trailers: body.trailers().map(fields),
            body: body.to_bytes().to_vec(),
        }
    }

    /// A one-connection target: reads the request head, sends `raw`, closes its sending side
    /// and reads until the client closes (closing with bytes unread could reset the
    /// connection before the client read the answer).
    ///
    /// Closing first leaves each connection in TIME_WAIT on the target's side for a minute,
    /// holding its port: a fuzzer making a thousand connections a second would run out of
    /// ports for new listeners on one address. So the targets take turns among the loopback
    /// addresses 127.0.0.1 to 127.0.0.254, each with its own ports.
    async fn target(raw: Vec<u8>) -> std::net::SocketAddr {
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let host = 1 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 254;
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 0, 0, host), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let Ok((mut io, _)) = listener.accept().await else {
                return;
            };
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match io.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&chunk[..n]),
                }
            }
            if io.write_all(&raw).await.is_err() {
                return;
            }
            let _ = io.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                while matches!(io.read(&mut chunk).await, Ok(n) if n > 0) {}
            })
            .await;
        });
        addr
    }

    fn method(head_request: bool) -> Method {
        if head_request {
            Method::HEAD
        } else {
            Method::GET
        }
    }

    async fn ours_reads(raw: &[u8], head_request: bool) -> Option<Read> {
        let addr = target(raw.to_vec()).await.to_string();
        let direct = Direct {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_idle: 1,
        };
        let idle = Arc::new(IdleConns::default());
        let method = method(head_request);
        let headers = HeaderMap::new();
        let req = RequestHead {
            method: &method,
            path_and_query: "/",
            headers: &headers,
            host: None,
            body_len: 0,
            extra: &[],
            answer_room: 0,
        };
        let mut body: BoxBody = Empty::new().map_err(|e| match e {}).boxed_unsync();
        let exchange = async {
            let resp = direct.send(&idle, &addr, &req, &mut body).await.ok()?;
            let (parts, body) = resp.into_parts();
            Some(read(
                parts.status,
                &parts.headers,
                body.collect().await.ok()?,
            ))
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .ok()
            .flatten()
    }

    async fn hyper_reads(raw: &[u8], head_request: bool) -> Option<Read> {
        let addr = target(raw.to_vec()).await;
        let io = TcpStream::connect(addr).await.ok()?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .ok()?;
        let task = tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method(head_request))
            .uri("/")
            .header(HOST, "target")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let exchange = async {
            let resp = send.send_request(req).await.ok()?;
            let (mut parts, body) = resp.into_parts();
            let body = body.collect().await.ok()?;
            // What the direct client leaves out by design: a `Content-Length` that a
            // `Transfer-Encoding` overrides (RFC 9112 §6.3; hyper 1.13 removes it too, 1.12
            // does not), and the hop-by-hop fields.
            if parts.headers.contains_key(http::header::TRANSFER_ENCODING) {
                parts.headers.remove(CONTENT_LENGTH);
            }
            crate::headers::strip_hop_by_hop(&mut parts.headers, false);
            Some(read(parts.status, &parts.headers, body))
        };
        // Generous: hyper not answering in time would fail the check (every answer here ends,
        // the target closing its side), so a loaded machine must not be taken for a refusal.
        let read = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .ok()
            .flatten();
        task.abort();
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONNECTION, TRANSFER_ENCODING};

    /// The framing as it was read from a map holding every field, before the head reader
    /// left the hop-by-hop ones out: the reference the fields read on the way must agree with.
    fn framing_reference(
        head_request: bool,
        status: StatusCode,
        version: Version,
        headers: &mut HeaderMap,
    ) -> Result<(Framing, bool), H1Error> {
        let connection_has = |headers: &HeaderMap, token: &str| {
            headers
                .get_all(CONNECTION)
                .iter()
                .any(|v| crate::headers::lists(v, token))
        };
        let mut reusable = version == Version::HTTP_11 && !connection_has(headers, "close");
        if headers.contains_key(TRANSFER_ENCODING) && headers.remove(CONTENT_LENGTH).is_some() {
            reusable = false;
        }
        if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            // A body announced on an answer that has none: the connection is not reused.
            let announced = headers.contains_key(TRANSFER_ENCODING)
                || headers.get_all(CONTENT_LENGTH).iter().any(|v| {
                    v.as_bytes().split(|b| *b == b',').any(|p| {
                        let p = p.trim_ascii();
                        p.is_empty() || p.iter().any(|d| *d != b'0')
                    })
                });
            return Ok((Framing::Empty, reusable && !announced));
        }
        if headers.contains_key(TRANSFER_ENCODING) {
            let mut chunked = false;
            for v in headers.get_all(TRANSFER_ENCODING) {
                let s = v
                    .to_str()
                    .map_err(|_| H1Error::BadHead("invalid Transfer-Encoding"))?;
                match s.rsplit(',').map(str::trim).next() {
                    Some(t) if !t.is_empty() => chunked = t.eq_ignore_ascii_case("chunked"),
                    _ => return Err(H1Error::BadHead("invalid Transfer-Encoding")),
                }
            }
            if version == Version::HTTP_10 {
                return Err(H1Error::BadHead("Transfer-Encoding in an HTTP/1.0 answer"));
            }
            return Ok(if chunked {
                (Framing::Chunked, reusable)
            } else {
                (Framing::UntilClose, false)
            });
        }
        let mut length: Option<u64> = None;
        for v in &headers.get_all(CONTENT_LENGTH) {
            for part in v.as_bytes().split(|b| *b == b',') {
                let part = part.trim_ascii();
                if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                    return Err(H1Error::BadHead("invalid Content-Length"));
                }
                let n = part
                    .iter()
                    .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
                if length.is_some_and(|l| l != n) {
                    return Err(H1Error::BadHead("conflicting Content-Length values"));
                }
                length = Some(n);
            }
        }
        Ok(match length {
            Some(0) => (Framing::Empty, reusable),
            Some(n) => (Framing::Length(n), reusable),
            None => (Framing::UntilClose, false),
        })
    }

    /// Every field of a head, in a map (what the head reader made before).
    fn all_fields(raw: &[u8]) -> HeaderMap {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        assert!(resp.parse(raw).is_ok_and(|s| s.is_complete()));
        let mut map = HeaderMap::new();
        for h in resp.headers.iter() {
            map.append(
                HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        map
    }

    fn fields(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        v.sort();
        v
    }

    /// `Connection` is read by its elements, whatever other bytes its value holds: `close`
    /// is seen beside a byte outside ASCII, and so is a field it names — by the head reader and
    /// by the removal the general client's answers go through.
    #[test]
    fn a_connection_value_with_bytes_outside_ascii_is_read_by_its_elements() {
        let mut names = NameCache::default();
        let raw = b"HTTP/1.1 200 OK\r\nConnection: close, \xe9\r\nContent-Length: 2\r\n\r\n";
        let mut head = parse_head(&mut BytesMut::from(&raw[..]), &mut names, 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            framing(false, &mut head).unwrap(),
            (Framing::Length(2), false)
        );
        let raw = b"HTTP/1.1 200 OK\r\nConnection: x-secret , \xe9\r\nX-Secret: 1\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n";
        let mut head = parse_head(&mut BytesMut::from(&raw[..]), &mut names, 0)
            .unwrap()
            .unwrap();
        assert_eq!(framing(false, &mut head).unwrap(), (Framing::Empty, true));
        let kept = [
            ("content-length".to_string(), b"0".to_vec()),
            ("x-kept".to_string(), b"2".to_vec()),
        ];
        assert_eq!(fields(&head.headers), kept);
        let mut map = all_fields(raw);
        crate::headers::strip_hop_by_hop(&mut map, false);
        assert_eq!(fields(&map), kept);
    }

    /// A head that comes a byte at a time is parsed when its first byte comes and when its
    /// end does, not in between: what the head reader does is linear in the head's size. So
    /// are the empty lines before a head (which the parser skips), however many.
    #[test]
    fn a_trickled_head_is_parsed_once_its_end_can_have_come() {
        let mut head = b"\r\n\n".repeat(10_000);
        head.extend_from_slice(b"HTTP/1.1 200 OK\r\nx-long: ");
        head.resize(MAX_HEAD_BYTES - 40, b'a');
        head.extend_from_slice(b"\nx-bare-lf: 1\ncontent-length: 0\r\n\r\n");
        assert!(head.len() <= MAX_HEAD_BYTES);
        let mut names = NameCache::default();
        let mut scan = HeadScan::default();
        let mut buf = BytesMut::new();
        let mut parses = 0;
        let mut parsed = None;
        for &b in &head {
            buf.extend_from_slice(&[b]);
            if !scan.worth_parsing(&buf) {
                continue;
            }
            parses += 1;
            match parse_head(&mut buf, &mut names, 0).unwrap() {
                None => scan.incomplete(buf.len()),
                Some(h) => parsed = Some(h),
            }
        }
        let parsed = parsed.expect("the head is read");
        assert_eq!(parsed.headers["x-bare-lf"], "1");
        assert!(buf.is_empty());
        assert_eq!(parses, 2);
        // Every way the end can be cut across two reads (CRLF CRLF, LF LF, LF CRLF, CRLF LF) is
        // found in the second.
        for end in ["\r\n\r\n", "\n\n", "\n\r\n", "\r\n\n"] {
            let whole = format!("HTTP/1.1 204 No Content\r\nx-a: 1{end}");
            for cut in whole.len() - end.len()..whole.len() {
                let mut scan = HeadScan::default();
                let mut buf = BytesMut::from(&whole.as_bytes()[..cut]);
                assert!(scan.worth_parsing(&buf));
                assert!(parse_head(&mut buf, &mut names, 0).unwrap().is_none());
                scan.incomplete(buf.len());
                buf.extend_from_slice(&whole.as_bytes()[cut..]);
                assert!(scan.worth_parsing(&buf), "{whole:?} cut at {cut}");
                assert!(parse_head(&mut buf, &mut names, 0).unwrap().is_some());
            }
        }
    }

    /// Through a connection: a head sent a byte per write is parsed at most twice, however
    /// the reads fall (it was parsed after each read).
    #[tokio::test]
    async fn a_head_trickled_over_a_connection_is_not_parsed_per_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut answer = b"HTTP/1.1 200 OK\r\nx-long: ".to_vec();
        answer.resize(300, b'a');
        answer.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\n");
        let server = tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let (mut io, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut chunk = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = io.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                seen.extend_from_slice(&chunk[..n]);
            }
            for b in &answer {
                io.write_all(std::slice::from_ref(b)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            io.write_all(b"ok").await.unwrap();
            // Held until the client is done.
            let _ = io.read(&mut chunk).await;
        });
        let direct = Direct {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_idle: 0,
        };
        let idle = Arc::new(IdleConns::default());
        let headers = HeaderMap::new();
        let req = RequestHead {
            method: &Method::GET,
            path_and_query: "/",
            headers: &headers,
            host: None,
            body_len: 0,
            extra: &[],
            answer_room: 0,
        };
        let mut body: BoxBody = http_body_util::Empty::new()
            .map_err(|e| match e {})
            .boxed_unsync();
        HEAD_PARSES.set(0);
        let resp = direct.send(&idle, &addr, &req, &mut body).await.unwrap();
        let parses = HEAD_PARSES.get();
        assert_eq!(resp.headers()["content-length"], "2");
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"ok");
        assert!(parses <= 2, "parsed {parses} times");
        server.await.unwrap();
    }

    /// The head reader keeps what `strip_hop_by_hop` would have left of every field, and the
    /// framing it reads on the way is the one read from the whole map — on random heads made
    /// of the fields that matter.
    #[test]
    fn the_head_reader_agrees_with_reading_every_field_then_stripping() {
        let statuses: [&str; 6] = [
            "200 OK",
            "204 No Content",
            "304 Not Modified",
            "404 Not Found",
            "101 Switching",
            "103 Hints",
        ];
        let versions = ["HTTP/1.1", "HTTP/1.0"];
        let fields_pool: [&[u8]; 30] = [
            b"Connection: close",
            b"Connection: keep-alive",
            b"Connection: Keep-Alive, X-Gone",
            b"Connection: close, x-gone, ,",
            b"Connection: \xff",
            b"Connection: close, \xe9",
            b"Connection: x-gone, \xe9",
            b"Content-Length: 00",
            b"Keep-Alive: timeout=5",
            b"Proxy-Connection: keep-alive",
            b"TE: trailers",
            b"TE: gzip",
            b"Trailer: X-Sum",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip, chunked",
            b"Transfer-Encoding: chunked, gzip",
            b"Transfer-Encoding: ,",
            b"Transfer-Encoding: chunked ,",
            b"Transfer-Encoding: \xff",
            b"Upgrade: websocket",
            b"Proxy-Authenticate: Basic",
            b"Content-Length: 5",
            b"Content-Length: 5, 5",
            b"Content-Length: 0",
            b"Content-Length: 7",
            b"Content-Length: x",
            b"X-Gone: 1",
            b"x-gone: 2",
            b"Server: test",
            b"server: Test",
        ];
        // One cache for every head, as on a connection whose answers change.
        let mut names = NameCache::default();
        for _ in 0..5000 {
            let mut raw = format!(
                "{} {}\r\n",
                versions[fastrand::usize(..versions.len())],
                statuses[fastrand::usize(..statuses.len())]
            )
            .into_bytes();
            for _ in 0..fastrand::usize(..6) {
                raw.extend_from_slice(fields_pool[fastrand::usize(..fields_pool.len())]);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"\r\n");
            let head_request = fastrand::bool();
            let what = String::from_utf8_lossy(&raw).into_owned();

            let mut buf = BytesMut::from(&raw[..]);
            let mut head = parse_head(&mut buf, &mut names, crate::upstream::ANSWER_ROOM)
                .unwrap()
                .unwrap();
            assert!(buf.is_empty());
            let got = framing(head_request, &mut head);

            let mut map = all_fields(&raw);
            let want = framing_reference(head_request, head.status, head.version, &mut map);
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{what}");
            crate::headers::strip_hop_by_hop(&mut map, false);
            assert_eq!(fields(&head.headers), fields(&map), "{what}");
        }
    }

    /// A random answer, made of the parts whose reading could differ: interim answers, status
    /// lines, framing fields, chunk-size lines with odd extensions and whitespace, chunk ends,
    /// trailers, and bytes after the answer.
    fn random_answer() -> Vec<u8> {
        let pick = |pool: &[&'static [u8]]| pool[fastrand::usize(..pool.len())];
        let mut raw = Vec::new();
        if fastrand::u8(..6) == 0 {
            raw.extend_from_slice(pick(&[
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            ]));
        }
        raw.extend_from_slice(pick(&[b"HTTP/1.1 ", b"HTTP/1.1 ", b"HTTP/1.0 "]));
        raw.extend_from_slice(pick(&[
            b"200 OK",
            b"200 OK",
            b"200",
            b"204 No Content",
            b"304 Not Modified",
            b"404 Not Found",
            b"100 Continue",
        ]));
        raw.extend_from_slice(b"\r\n");
        let chunked_form = fastrand::bool();
        if chunked_form {
            raw.extend_from_slice(pick(&[
                b"Transfer-Encoding: chunked\r\n",
                b"Transfer-Encoding: chunked\r\n",
                b"Transfer-Encoding: gzip, chunked\r\n",
                b"transfer-encoding: CHUNKED\r\n",
                b"Transfer-Encoding: chunked,\r\n",
                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: ,\r\n",
                b"Transfer-Encoding: chunked, gzip\r\n",
            ]));
        }
        for _ in 0..fastrand::usize(..4) {
            raw.extend_from_slice(pick(&[
                b"Content-Length: 5\r\n",
                b"Content-Length: 5, 5\r\n",
                b"Content-Length: 0\r\n",
                b"Content-Length: 12\r\n",
                b"Content-Length: 5\r\nContent-Length: 6\r\n",
                b"Connection: close\r\n",
                b"Connection: keep-alive, X-Gone\r\n",
                b"X-Gone: 1\r\n",
                b"Trailer: X-Sum\r\n",
                b"TE: trailers\r\n",
                b"Server: test\r\n",
                b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n",
            ]));
        }
        raw.extend_from_slice(b"\r\n");
        if chunked_form || fastrand::u8(..4) == 0 {
            for _ in 0..fastrand::usize(..3) {
                let data: Vec<u8> = (0..fastrand::usize(1..8))
                    .map(|_| fastrand::alphanumeric() as u8)
                    .collect();
                raw.extend_from_slice(format!("{:x}", data.len()).as_bytes());
                raw.extend_from_slice(pick(&[
                    b"", b"", b" ", b"\t", b";a=b", b" ;x", b"\r", b";a\rb", b";a\nb", b"\x0c",
                    b"\n",
                ]));
                raw.extend_from_slice(b"\r\n");
                raw.extend_from_slice(&data);
                raw.extend_from_slice(pick(&[b"\r\n", b"\r\n", b"\r\n", b"\n", b"xx"]));
            }
            // Now and then chunks whose extensions come to about hyper's limit on them
            // (16 KiB for the body), each line within the direct client's own.
            if fastrand::u8(..10) == 0 {
                for _ in 0..fastrand::usize(4..6) {
                    let ext = "e".repeat(fastrand::usize(3500..4090));
                    raw.extend_from_slice(format!("1;{ext}\r\nz\r\n").as_bytes());
                }
            }
            raw.extend_from_slice(pick(&[
                b"0\r\n",
                b"0\r\n",
                b"0;end\r\n",
                b"00\r\n",
                b"0 \r\n",
            ]));
            for _ in 0..fastrand::usize(..3) {
                raw.extend_from_slice(pick(&[
                    b"X-Sum: 1\r\n",
                    b"x-sum: 2\r\n",
                    b"Bad Field: 1\r\n",
                    b"X-Bad: \x01\r\n",
                ]));
            }
            // Now and then a trailer section about the size of hyper's limit (16 KiB).
            if fastrand::u8(..10) == 0 {
                let value = "t".repeat(fastrand::usize(16_300..16_400));
                raw.extend_from_slice(format!("X-Big: {value}\r\n").as_bytes());
            }
            raw.extend_from_slice(pick(&[b"\r\n", b"\r\n", b""]));
        } else {
            raw.extend_from_slice(pick(&[b"", b"hello", b"hello world!", b"hel"]));
        }
        if fastrand::u8(..5) == 0 {
            raw.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
        raw
    }

    /// Whatever answer the direct client reads, hyper's client reads the same — on random
    /// answers over real connections (the fuzz target `upstream_response` does the same on
    /// arbitrary bytes).
    #[tokio::test]
    async fn the_direct_client_reads_answers_as_hyper_does() {
        let (mut read, mut refused) = (0, 0);
        for _ in 0..1500 {
            let raw = random_answer();
            match differential::check(&raw, fastrand::u8(..8) == 0).await {
                differential::Outcome::Read { .. } => read += 1,
                differential::Outcome::Refused => refused += 1,
            }
        }
        // Both kinds are exercised (a generator that made only refused answers would check
        // nothing).
        assert!(
            read > 300 && refused > 300,
            "read {read}, refused {refused}"
        );
    }

    /// A chunked answer: chunks of one byte with these chunk-size line tails, then the last
    /// chunk with `last`'s tail and a trailer section of `trailer` (field lines and the final
    /// CRLF).
    fn chunked(tails: &[String], last: &str, trailer: &str) -> Vec<u8> {
        let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for t in tails {
            raw.extend_from_slice(format!("1{t}\r\nz\r\n").as_bytes());
        }
        raw.extend_from_slice(format!("0{last}\r\n{trailer}").as_bytes());
        raw
    }

    /// hyper's client refuses a body whose chunk extensions come to 16 KiB and a trailer
    /// section of 16 KiB; the direct client refuses them too (it read both when each line was
    /// short, or when the section came in few reads), and reads what hyper reads up to the
    /// limits. A chunk-size line over its own limit is refused even when it came whole.
    #[tokio::test]
    async fn chunk_extensions_and_trailers_are_held_to_hyper_s_limits() {
        let ext = |n: usize| format!(";{}", "e".repeat(n - 1));
        // `ext(n)`: `;` and n - 1 extension bytes. Four lines of 4000 extension bytes; the last
        // chunk's make the total 16383 (read) or 16384 (refused).
        let four: Vec<String> = (0..4).map(|_| ext(4001)).collect();
        let below = chunked(&four, &ext(16 * 1024 - 16_000), "\r\n");
        let at_limit = chunked(&four, &ext(16 * 1024 - 16_000 + 1), "\r\n");
        assert_eq!(
            differential::check(&below, false).await,
            differential::Outcome::Read {
                status: 200,
                body: 4
            }
        );
        assert_eq!(
            differential::check(&at_limit, false).await,
            differential::Outcome::Refused
        );
        // The trailer section, final CRLF included: 16383 bytes are read, 16384 refused.
        let field = |len: usize| format!("X-Big: {}\r\n\r\n", "t".repeat(len - 11));
        let small = chunked(&[], "", &field(16 * 1024 - 1));
        assert_eq!(
            differential::check(&small, false).await,
            differential::Outcome::Read {
                status: 200,
                body: 0
            }
        );
        let large = chunked(&[], "", &field(16 * 1024));
        assert_eq!(
            differential::check(&large, false).await,
            differential::Outcome::Refused
        );
        // One line longer than MAX_CHUNK_LINE (hyper reads it: it has no bound of its own).
        let long = chunked(&[ext(MAX_CHUNK_LINE)], "", "\r\n");
        assert_eq!(
            differential::check(&long, false).await,
            differential::Outcome::Refused
        );
        let longest = chunked(&[ext(MAX_CHUNK_LINE - 1)], "", "\r\n");
        assert_eq!(
            differential::check(&longest, false).await,
            differential::Outcome::Read {
                status: 200,
                body: 1
            }
        );
    }

    /// Answers hyper's client reads otherwise than the list rules would (or not at all): the
    /// direct client refuses them rather than pick one reading.
    #[tokio::test]
    async fn answers_two_readers_could_frame_differently_are_refused() {
        for raw in [
            // A bare CR or LF in a chunk-size line.
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\r\nhello\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\x0c\r\nhello\r\n0\r\n\r\n",
            // A Transfer-Encoding ending in an empty element: `chunked` by the list rule,
            // read to the end of the connection by hyper.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: ,\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            // Transfer-Encoding in HTTP/1.0 (RFC 9112 §6.1: faulty framing).
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ] {
            let shown = String::from_utf8_lossy(raw).escape_debug().to_string();
            assert_eq!(
                differential::check(raw, false).await,
                differential::Outcome::Refused,
                "{shown}"
            );
        }
        // Found by the fuzz target: `Transfer-Encoding` overrides `Content-Length` on bodiless
        // answers too (a HEAD's, a 204): the length is not passed on (hyper 1.13's client
        // removes it as well).
        for (raw, head_request) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\n"[..], true),
            (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nContent-Length: 12\r\n\r\n", false),
        ] {
            assert_eq!(
                differential::check(raw, head_request).await,
                differential::Outcome::Read { status: if head_request { 200 } else { 204 }, body: 0 }
            );
        }
        // The same answers well formed are read.
        let good = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 ;a=b\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n";
        assert_eq!(
            differential::check(good, false).await,
            differential::Outcome::Read {
                status: 200,
                body: 5
            }
        );
    }
}
