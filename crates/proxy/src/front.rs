//! The HTTP/1.1 front: a connection's plain requests read, handled and answered by the
//! connection's own task, without hyper's server.
//!
//! Most of what a gateway serves is plain: an HTTP/1.1 request without a body or with one of
//! known length, no upgrade, no `Expect`. For those, hyper's server machinery (its dispatcher,
//! a body channel, a boxed handler future, a general-purpose answer encoder) cost about a third
//! of the gateway's instructions per request (ADR 0010). The front reads such a request from
//! the strict framing reader's bytes, hands it to the engine and writes the answer itself,
//! head and first body bytes in one write.
//!
//! A body of known length ([`FrontBody`]): the bytes that came with the head, plus what the
//! socket already holds when the body is short, are handed on at once (no channel, no timer);
//! the rest of a longer body is read by the connection's task while the engine handles the
//! request, one piece at a time and only once the engine took the last one ([`Feed`]), each
//! piece in a buffer of its own and never past the body's end (the connection's buffer stays
//! the size heads need). The
//! engine watches it as any body (size limit, read timeout, minimum rate). A body that ends
//! early fails; one the engine answered without reading whole ends the connection after the
//! answer, the rest read and dropped for a while first ([`linger`]) so that closing does not
//! reset the connection under the answer.
//!
//! Everything else — a chunked body, an upgrade, `CONNECT`, `Expect`, HTTP/1.0, an HTTP/2
//! preface, a head `httparse` or `http` refuses, a `Content-Length` not in plain decimal, one
//! with more fields than the front reads, an oversized head, a head cut by the end of the
//! stream — is not taken: hyper serves the connection from that request on, starting with the
//! bytes the front had read ([`Outcome::HandOver`]). So the front never refuses a request hyper
//! would have taken, nor reads one differently: whatever it does not read exactly as hyper would
//! goes to hyper.
//!
//! The answer is written as hyper writes it: `HTTP/1.1`, lower-case names in the map's order,
//! `content-length` from the body when it knows its length (`0` for an empty body), chunked
//! otherwise, no body for `HEAD`, 204 and 304, a `date`, and `connection: close` when the
//! connection ends after it (the client asked, the answer says so, the request's body was not
//! read whole, or the gateway is stopping). A body that fails or ends short of its length ends
//! the connection, the only honest signal left once a head is out.

use std::cell::Cell;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use portcullis_core::BoxBody;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::{mpsc, watch};

use crate::gate::Gated;
use crate::headers::{NameCache, itoa_u64, lists, push_line, raw_lists};
use crate::service::DeferredFields;
use crate::{ConnInfo, Gateway};

/// Fields the front reads in a head; a head with more goes to hyper (whose own limit is the
/// configured one).
const MAX_FIELDS: usize = 64;
/// Room in a request's map for what the engine adds (forwarding, trace context, identity),
/// so that the map is not grown (rehashed and copied) for every request.
const REQUEST_HEADROOM: usize = 8;
/// Free room kept in the read buffer before a read.
const READ_ROOM: usize = 4 * 1024;
/// A first body frame up to this size goes into the head's buffer (one write, one copy);
/// a larger one is written beside it (one vectored write, no copy).
const COALESCE: usize = 1024;

/// How the front left a connection.
pub(crate) enum Outcome<S> {
    /// Over: either side closed it, an answer ended it, or the gateway is stopping.
    Closed,
    /// A request the front does not take: hyper serves the connection from here on, starting
    /// with these bytes (that request's head first).
    HandOver(Prefixed<S>),
}

/// What one head is, for the front.
enum Parsed {
    /// A plain request, whether the client asked to close after it, and its body's length.
    Take(Box<http::request::Parts>, bool, u64),
    /// Not a whole head yet.
    Partial,
    /// Anything else: hyper's.
    Other,
}

/// Serves `io`'s plain HTTP/1.1 requests until the connection ends or a request is not the
/// front's. `stop` turns true when the gateway stops: a connection between requests closes,
/// an answer in progress is finished with `connection: close`.
pub(crate) async fn serve<S>(
    mut io: S,
    gw: &Arc<Gateway>,
    info: &Arc<ConnInfo>,
    max_head: usize,
    stop: watch::Receiver<bool>,
) -> Outcome<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut rbuf = BytesMut::with_capacity(2 * READ_ROOM);
    let mut wbuf: Vec<u8> = Vec::with_capacity(1024);
    let mut names = NameCache::default();
    let mut fields_at = Vec::with_capacity(16);
    // One wait for the stop for the connection's life, looked at only when the stop wakes
    // it: a wait made anew for each request (a notification registered, then dropped) cost
    // about 350 instructions per request.
    let mut stop_wait = stop.clone();
    let stopping = std::pin::pin!(raised(&mut stop_wait));
    let mut stopping = Gated::new(stopping);
    loop {
        let (req, asked_close, length) = loop {
            if !rbuf.is_empty() {
                match parse(&mut rbuf, &mut names, &mut fields_at) {
                    Parsed::Take(req, close, length) => break (req, close, length),
                    Parsed::Partial if rbuf.len() <= max_head => {}
                    Parsed::Partial | Parsed::Other => {
                        return Outcome::HandOver(Prefixed::new(rbuf, io, info.clone()));
                    }
                }
            }
            make_room(&mut rbuf);
            // The read first: when the next request is already there, the stop signal is
            // not even looked at.
            let read = tokio::select! {
                biased;
                r = io.read_buf(&mut rbuf) => r,
                () = &mut stopping, if rbuf.is_empty() => return Outcome::Closed,
            };
            match read {
                Ok(0) if rbuf.is_empty() => return Outcome::Closed,
                // The end of the stream inside a head: hyper says what it says to that.
                Ok(0) => return Outcome::HandOver(Prefixed::new(rbuf, io, info.clone())),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "connection read failed");
                    return Outcome::Closed;
                }
            }
        };
        let head_request = req.method == Method::HEAD;
        // The body: what came with the head at once (for a short body, with what the socket
        // already holds, in a buffer of the body's own: the connection's stays the size heads
        // need); the rest, if any, read by this task while the engine handles the request, and
        // only as fast as the engine takes it.
        let first = if length > rbuf.len() as u64 && length <= EAGER_BODY as u64 {
            let mut body = BytesMut::with_capacity(length as usize);
            body.extend_from_slice(&rbuf);
            rbuf.clear();
            take_what_is_there(&mut io, &mut body, length as usize).await;
            body.freeze()
        } else {
            let here = usize::try_from(length).map_or(rbuf.len(), |n| n.min(rbuf.len()));
            rbuf.split_to(here).freeze()
        };
        let mut feed = Feed {
            unread: length - first.len() as u64,
            failed: false,
        };
        let first = (!first.is_empty()).then_some(first);
        let (tx, rx) = if feed.unread == 0 {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel(1);
            (Some(tx), Some(rx))
        };
        let body = FrontBody::new(first, rx, length);
        // Built in its pinned slot, once: a future made in two places, or made and then
        // moved, is copied whole (a few kilobytes) on the way.
        let mut served = std::pin::pin!(gw.clone().serve(info.clone(), req, body, true));
        // While the body is still coming, it is fed to the engine; once the body is in (or
        // there is none), a connection whose client's end of stream abandons its request is
        // watched for it.
        let mut answer = None;
        if tx.is_some() {
            answer = loop {
                tokio::select! {
                    biased;
                    out = &mut served => break Some(out),
                    more = feed.next(&mut io, tx.as_ref()) => {
                        if !more {
                            break None;
                        }
                    }
                }
            };
        }
        drop(tx);
        let (resp, security) = match answer {
            Some(out) => out,
            None if info.abort_on_close && !feed.failed => {
                match answered_unless_gone(served.as_mut(), &mut io, &mut rbuf, max_head).await {
                    Some(out) => out,
                    // The request's future is dropped here: audited as abandoned, its upstream
                    // exchange given up.
                    None => return Outcome::Closed,
                }
            }
            None => served.await,
        };
        // The value, not whether it changed: the sender is dropped once it has said stop.
        // A body left on the wire (the engine answered without reading it all) ends the
        // connection: the next request would start somewhere in it.
        let keep = !asked_close && !*stop.borrow() && feed.unread == 0;
        match respond(&mut io, &mut wbuf, head_request, keep, resp, security).await {
            // What a TLS layer kept of the answer (its writes take plaintext the socket had no
            // room for, and send it only at the next write or a flush) goes now: the client
            // may be waiting for it before it sends anything more.
            Ok(true) => {
                if let Err(e) = io.flush().await {
                    tracing::debug!(error = %e, "answer not written");
                    return Outcome::Closed;
                }
            }
            Ok(false) => {
                let _ = io.shutdown().await;
                if feed.unread > 0 && !feed.failed {
                    linger(&mut io, &mut rbuf).await;
                }
                return Outcome::Closed;
            }
            Err(e) => {
                tracing::debug!(error = %e, "answer not written");
                return Outcome::Closed;
            }
        }
    }
}

/// Room for a read of at least `READ_ROOM` bytes in the connection's buffer.
#[inline]
fn make_room(rbuf: &mut BytesMut) {
    if rbuf.capacity() - rbuf.len() < READ_ROOM {
        rbuf.reserve(2 * READ_ROOM);
    }
}

/// The engine's answer, or none when the client went away first: its end of stream or a
/// reset while the request was in flight (`server.abort_on_client_close`). What the client
/// sends meanwhile (a pipelined request) is kept in `rbuf`, up to `max` bytes; beyond that it
/// waits in the socket and the connection is no longer watched.
async fn answered_unless_gone<S, F, T>(
    mut served: Pin<&mut F>,
    io: &mut S,
    rbuf: &mut BytesMut,
    max: usize,
) -> Option<T>
where
    S: AsyncRead + Unpin,
    F: Future<Output = T>,
{
    let mut watching = true;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = served.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        while watching {
            if rbuf.len() >= max {
                watching = false;
                break;
            }
            make_room(rbuf);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, rbuf) {
                Poll::Pending => break,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// A body up to this long that is not all in the buffer after its head is looked for in the
/// socket's without waiting (a client writes head and body together; the first read stops at
/// the buffer's room), so that it is handed on whole.
const EAGER_BODY: usize = 64 * 1024;
/// Most read at once for a body's rest (each piece is a buffer of its own).
const BODY_READ: usize = 64 * 1024;

/// Reads into `buf` what the connection already has, until `buf` holds `want` bytes or a read
/// would wait; never a byte past `want` (what follows the body stays for the next head). The
/// end of the stream or an error is left for the next read to meet.
async fn take_what_is_there<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut, want: usize) {
    while buf.len() < want {
        let mut limited = (&mut *io).take((want - buf.len()) as u64);
        let read = std::future::poll_fn(|cx| {
            let read = std::pin::pin!(limited.read_buf(buf));
            match read.poll(cx) {
                Poll::Ready(Ok(n)) => Poll::Ready(n),
                Poll::Ready(Err(_)) | Poll::Pending => Poll::Ready(0),
            }
        })
        .await;
        if read == 0 {
            return;
        }
    }
}

/// How long, and for how many bytes, a connection closed with a request body still coming is
/// read and discarded, so that closing does not reset it under the answer: a client still
/// sending when the socket is closed with its bytes unread gets a reset, which may destroy
/// the answer before it reads it.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Reads and discards what the client still sends, until it closes, `LINGER` passes or
/// `LINGER_BYTES` were read.
async fn linger<S: AsyncRead + Unpin>(io: &mut S, rbuf: &mut BytesMut) {
    let drain = async {
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            rbuf.clear();
            if rbuf.capacity() < READ_ROOM {
                rbuf.reserve(READ_ROOM);
            }
            match io.read_buf(rbuf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The part of a request body still on the wire, read by the connection's task while the
/// engine handles the request.
struct Feed {
    /// Bytes of the body not yet read from the connection.
    unread: u64,
    /// The connection ended or failed inside the body.
    failed: bool,
}

impl Feed {
    /// Reads the body's next piece (once the body has room for it), into a buffer of its own
    /// and never past the body's end, and passes it on. Returns whether there is more to
    /// feed: not once the body is all read, the engine has dropped the body, or the
    /// connection ended inside it (the body then fails).
    async fn next<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        tx: Option<&mpsc::Sender<io::Result<Bytes>>>,
    ) -> bool {
        let Some(tx) = tx else {
            return false;
        };
        // Room first: nothing is read that the engine is not ready to take.
        let Ok(permit) = tx.reserve().await else {
            return false;
        };
        let room = usize::try_from(self.unread).map_or(BODY_READ, |u| u.min(BODY_READ));
        let mut piece = BytesMut::with_capacity(room);
        match (&mut *io).take(room as u64).read_buf(&mut piece).await {
            Ok(0) => {
                self.failed = true;
                permit.send(Err(io::ErrorKind::UnexpectedEof.into()));
                return false;
            }
            Ok(n) => self.unread -= n as u64,
            Err(e) => {
                self.failed = true;
                permit.send(Err(e));
                return false;
            }
        }
        permit.send(Ok(piece.freeze()));
        self.unread > 0
    }
}

/// A request body the front read or is reading: the bytes that came with the head, then
/// the pieces the connection's task passes on. Its length is the request's `Content-Length`;
/// ending short of it is an error, never a quiet end.
pub(crate) struct FrontBody {
    first: Option<Bytes>,
    rest: Option<mpsc::Receiver<io::Result<Bytes>>>,
    /// Bytes not yet handed out.
    remaining: u64,
}

impl FrontBody {
    fn new(
        first: Option<Bytes>,
        rest: Option<mpsc::Receiver<io::Result<Bytes>>>,
        length: u64,
    ) -> Self {
        FrontBody {
            first,
            rest,
            remaining: length,
        }
    }
}

impl http_body::Body for FrontBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let next = match (self.first.take(), self.rest.as_mut()) {
            (Some(data), _) => Ok(data),
            (None, Some(rest)) => match std::task::ready!(rest.poll_recv(cx)) {
                Some(read) => read,
                None => Err(io::ErrorKind::UnexpectedEof.into()),
            },
            // Owed bytes with nowhere to come from: cut short too, never a quiet end.
            (None, None) => Err(io::ErrorKind::UnexpectedEof.into()),
        };
        let data = match next {
            Ok(data) => data,
            Err(e) => {
                self.rest = None;
                self.remaining = 0;
                return Poll::Ready(Some(Err(e)));
            }
        };
        self.remaining = self.remaining.saturating_sub(data.len() as u64);
        Poll::Ready(Some(Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// Resolves when a signal (the stop, the cut-off) turns true — never, if its sender is gone.
pub(crate) async fn raised(signal: &mut watch::Receiver<bool>) {
    if signal.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Reads the head at the start of `rbuf`; takes it (and only it) off the buffer when it is a
/// request the front serves. `fields_at`: the connection's scratch list (names and where
/// their values lie), kept for its capacity.
fn parse(
    rbuf: &mut BytesMut,
    names: &mut NameCache,
    fields_at: &mut Vec<(HeaderName, usize, usize)>,
) -> Parsed {
    // Left uninitialised: the parser writes what it returns.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(rbuf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if req.version != Some(1) {
        return Parsed::Other;
    }
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        Some("CONNECT") | None => return Parsed::Other,
        Some(m) => match Method::from_bytes(m.as_bytes()) {
            Ok(m) => m,
            Err(_) => return Parsed::Other,
        },
    };
    let base = rbuf.as_ptr() as usize;
    let Some(path) = req.path else {
        return Parsed::Other;
    };
    let path = (path.as_ptr() as usize - base, path.len());
    // Values are placed once the head is cut off the buffer (they then share it): first the
    // names and where each value lies.
    fields_at.clear();
    let mut close = false;
    let mut seen_length = false;
    let mut length = 0;
    for (i, f) in req.headers.iter().enumerate() {
        let Some(name) = names.name(i, f.name.as_bytes()) else {
            return Parsed::Other;
        };
        match name {
            // One length in plain decimal; anything else (a repeated field, which hyper folds
            // into one, a list, leading zeros, a sign) is hyper's.
            header::CONTENT_LENGTH => match plain_length(f.value) {
                Some(n) if !seen_length => {
                    seen_length = true;
                    length = n;
                }
                _ => return Parsed::Other,
            },
            header::TRANSFER_ENCODING | header::UPGRADE | header::EXPECT => {
                return Parsed::Other;
            }
            header::CONNECTION => close |= raw_lists(f.value, "close"),
            _ => {}
        }
        fields_at.push((name, f.value.as_ptr() as usize - base, f.value.len()));
    }
    let mut map = HeaderMap::with_capacity(fields_at.len() + REQUEST_HEADROOM);
    let head = rbuf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1)) else {
        rbuf_restore(rbuf, head);
        return Parsed::Other;
    };
    for (name, start, n) in fields_at.drain(..) {
        match HeaderValue::from_maybe_shared(head.slice(start..start + n)) {
            Ok(v) => crate::headers::append_field(&mut map, name, v),
            Err(_) => {
                rbuf_restore(rbuf, head);
                return Parsed::Other;
            }
        }
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = map;
    Parsed::Take(Box::new(parts), close, length)
}

/// A `Content-Length` value written the one plain way: decimal digits, no leading zero, at
/// most 18 of them (so it fits any length hyper takes).
fn plain_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || (v[0] == b'0' && v.len() > 1) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Puts a head taken off the buffer back in front of what follows it (a head the front turned
/// down after cutting it off: rare, and never in the way of a request it serves).
fn rbuf_restore(rbuf: &mut BytesMut, head: Bytes) {
    let rest = rbuf.split();
    rbuf.extend_from_slice(&head);
    rbuf.extend_from_slice(&rest);
}

/// How the answer's body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body bytes (HEAD, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Writes `resp` (to a `HEAD` request when `head_request`) and, after its own fields, the
/// `security` fields its map was stripped for; `keep`: whether the connection may carry
/// another request. Returns whether it still may.
async fn respond<S>(
    io: &mut S,
    wbuf: &mut Vec<u8>,
    head_request: bool,
    mut keep: bool,
    resp: Response<BoxBody>,
    security: Option<DeferredFields>,
) -> io::Result<bool>
where
    S: AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    wbuf.clear();
    if status.is_informational() {
        // A final answer is due; an interim one here is a gateway fault (hyper answers the
        // same).
        wbuf.extend_from_slice(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n",
        );
        push_date(wbuf);
        wbuf.extend_from_slice(b"\r\n");
        io.write_all(wbuf).await?;
        return Ok(false);
    }
    if status == StatusCode::OK {
        wbuf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        wbuf.extend_from_slice(b"HTTP/1.1 ");
        wbuf.extend_from_slice(status.as_str().as_bytes());
        wbuf.push(b' ');
        wbuf.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        wbuf.extend_from_slice(b"\r\n");
    }
    let no_body = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let empty = body.is_end_stream();
    let exact = if empty {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    let mut declared: Option<u64> = None;
    let mut wrote_length = false;
    let mut wrote_date = false;
    let mut says_close = false;
    let mut trailer_names: Vec<HeaderName> = Vec::new();
    for (name, value) in &parts.headers {
        if security.as_ref().is_some_and(|s| s.omits(name)) {
            continue;
        }
        match *name {
            header::CONTENT_LENGTH => {
                // The body's own length wins (as in hyper); a `HEAD` answer keeps the
                // length the target gave; 204 and 304 carry none.
                if wrote_length || no_body || (exact.is_some() && !head_request) {
                    continue;
                }
                match std::str::from_utf8(value.as_bytes()).ok().map(str::parse) {
                    Some(Ok(n)) => declared = Some(n),
                    _ => continue,
                }
                wrote_length = true;
            }
            // Framed here, from the body.
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION => says_close |= lists(value, "close"),
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if let Ok(v) = value.to_str() {
                    // A revealing field (`X-Powered-By` …) the head may not carry may not come
                    // as a trailer either: only announced trailers are written.
                    trailer_names.extend(
                        v.split(',')
                            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                            .filter(|n| !security.as_ref().is_some_and(|s| s.omits(n))),
                    );
                }
            }
            _ => {}
        }
        push_line(wbuf, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(sec) = &security {
        sec.write_to(wbuf);
    }
    let framing = if head_request || no_body {
        if head_request
            && !wrote_length
            && !empty
            && let Some(n) = exact
        {
            push_length(wbuf, n);
        }
        Framing::None
    } else if let Some(n) = exact {
        push_length(wbuf, n);
        Framing::Length(n)
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else {
        wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if says_close {
        keep = false;
    } else if !keep {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        push_date(wbuf);
    }
    wbuf.extend_from_slice(b"\r\n");

    if framing == Framing::None || empty {
        drop(body);
        io.write_all(wbuf).await?;
        return Ok(keep);
    }
    let mut sent: u64 = 0;
    let mut head_out = false;
    loop {
        // The first frame goes out with the head when it is already there; otherwise the
        // head goes out alone first (the client sees the answer begin).
        let frame = if head_out {
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        } else {
            match std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Pending => Poll::Ready(None),
                Poll::Ready(f) => Poll::Ready(Some(f)),
            })
            .await
            {
                Some(f) => f,
                None => {
                    // Flushed: a TLS layer would otherwise keep it until the first piece of a
                    // body that may be long in coming (a stream, a long poll).
                    io.write_all(wbuf).await?;
                    io.flush().await?;
                    wbuf.clear();
                    head_out = true;
                    continue;
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "answer body failed; connection closed");
                if !head_out {
                    io.write_all(wbuf).await?;
                }
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => d,
                Err(frame) => {
                    if let (Framing::Chunked, Ok(trailers)) = (framing, frame.into_trailers()) {
                        // After the head when it is not out yet: one write.
                        wbuf.extend_from_slice(b"0\r\n");
                        push_trailers(wbuf, &trailers, &trailer_names);
                        wbuf.extend_from_slice(b"\r\n");
                        io.write_all(wbuf).await?;
                        return Ok(keep);
                    }
                    continue;
                }
            },
        };
        if data.is_empty() {
            continue;
        }
        if !head_out {
            head_out = true;
        } else {
            wbuf.clear();
        }
        sent += data.len() as u64;
        match framing {
            Framing::Length(n) if sent > n => {
                tracing::debug!(
                    length = n,
                    "answer body longer than its length; connection closed"
                );
                let fits = data.len() - usize::try_from(sent - n).unwrap_or(data.len());
                write_parts(io, wbuf, &data[..fits], b"").await?;
                return Ok(false);
            }
            Framing::Chunked => {
                push_hex(wbuf, data.len());
                write_parts(io, wbuf, &data, b"\r\n").await?;
            }
            _ => write_parts(io, wbuf, &data, b"").await?,
        }
        // A piece a TLS layer kept (see `serve`) goes before the body is waited on again: a
        // streamed answer's next piece may be long in coming.
        io.flush().await?;
        wbuf.clear();
        if body.is_end_stream() {
            break;
        }
    }
    // What is left: the head if no data went out, the last chunk of a chunked body.
    if framing == Framing::Chunked {
        wbuf.extend_from_slice(b"0\r\n\r\n");
    }
    if !wbuf.is_empty() {
        io.write_all(wbuf).await?;
    }
    match framing {
        Framing::Length(n) if sent < n => {
            tracing::debug!(
                length = n,
                sent,
                "answer body shorter than its length; connection closed"
            );
            Ok(false)
        }
        _ => Ok(keep),
    }
}

fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa_u64(n, &mut [0u8; 20]));
    out.extend_from_slice(b"\r\n");
}

/// A chunk-size line.
fn push_hex(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[v & 0xf];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The trailer fields the answer's `Trailer` field announced (as hyper sends them: none
/// unannounced, none that must not be a trailer, [`portcullis_core::trailer_allowed`]).
fn push_trailers(out: &mut Vec<u8>, trailers: &HeaderMap, announced: &[HeaderName]) {
    for (name, value) in trailers {
        if announced.contains(name) && portcullis_core::trailer_allowed(name) {
            push_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// Writes `first`, then `data`, then `last`, in as few writes as the stream takes.
async fn write_parts<S: AsyncWrite + Unpin>(
    io: &mut S,
    first: &mut Vec<u8>,
    data: &[u8],
    last: &[u8],
) -> io::Result<()> {
    if data.len() <= COALESCE {
        first.extend_from_slice(data);
        first.extend_from_slice(last);
        return io.write_all(first).await;
    }
    let mut parts = [IoSlice::new(first), IoSlice::new(data), IoSlice::new(last)];
    let mut bufs: &mut [IoSlice<'_>] = &mut parts;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

thread_local! {
    /// The `date` line of the current second, formatted once per second per thread.
    static DATE: Cell<(u64, [u8; 37])> = const { Cell::new((u64::MAX, [0; 37])) };
}

/// Appends `date: <IMF-fixdate>\r\n`.
fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (cached, mut line) = DATE.get();
    if cached != secs {
        let text = httpdate::fmt_http_date(now);
        line = [0; 37];
        line[..6].copy_from_slice(b"date: ");
        let n = text.len().min(29);
        line[6..6 + n].copy_from_slice(&text.as_bytes()[..n]);
        line[35..].copy_from_slice(b"\r\n");
        DATE.set((secs, line));
    }
    out.extend_from_slice(&line);
}

/// A stream read first from bytes already read off it: how hyper is handed a connection (the
/// front's after a hand-over, or one hyper serves from the start).
///
/// Its shutdown lingers: once the write side is shut, what the client still sends is read and
/// dropped — until it closes, [`LINGER`] passes or [`LINGER_BYTES`] were read — before hyper
/// drops the socket. hyper ends a connection whose request body it did not read whole (an
/// early answer to a chunked upload); closing a socket with bytes unread resets it, and the
/// reset can destroy the answer before the client reads it. Not on a connection that may be
/// tunnelled ([`ConnInfo::may_tunnel`]): there a shutdown is the tunnel's half-close, and what
/// the client sends after it is the tunnel's.
pub(crate) struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
    info: Arc<ConnInfo>,
    closing: Closing,
}

/// Where a [`Prefixed`] stream's shutdown is.
enum Closing {
    Open,
    /// The write side is shut; the read side is drained until the deadline, with this many
    /// bytes still to take.
    Draining(Pin<Box<tokio::time::Sleep>>, usize),
    Closed,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: BytesMut, inner: S, info: Arc<ConnInfo>) -> Self {
        Prefixed {
            prefix,
            inner,
            info,
            closing: Closing::Open,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = buf.remaining().min(this.prefix.len());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.closing {
                Closing::Open => {
                    std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    if this.info.may_tunnel() {
                        this.closing = Closing::Closed;
                    } else {
                        let until = Box::pin(tokio::time::sleep(LINGER));
                        this.closing = Closing::Draining(until, LINGER_BYTES);
                    }
                }
                Closing::Draining(until, left) => {
                    if until.as_mut().poll(cx).is_ready() {
                        this.closing = Closing::Closed;
                        continue;
                    }
                    let mut scratch = [MaybeUninit::<u8>::uninit(); 8192];
                    let mut buf = ReadBuf::uninit(&mut scratch);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            *left = left.saturating_sub(buf.filled().len());
                            if *left == 0 {
                                this.closing = Closing::Closed;
                            }
                        }
                        // The client closed, or the connection failed: nothing to wait for.
                        Poll::Ready(_) => this.closing = Closing::Closed,
                    }
                }
                Closing::Closed => return Poll::Ready(Ok(())),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The front's reading of a request head set against hyper's own HTTP/1.1 server: whatever the
/// front takes, hyper must read the same (method, target, version, fields, body), and what it
/// does not take is handed over untouched. Used by the unit tests and, with the `fuzzing`
/// feature, by the `front_parse` fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
pub mod differential {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use http_body_util::Empty;

    /// Method, target, version, fields and body.
    type Read = (String, String, Version, Vec<(String, Vec<u8>)>, Vec<u8>);

    /// What [`Reader::check`] found.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Outcome {
        /// Taken, and read by hyper the same; with a body of this length, and this many bytes
        /// of `raw` left after the head (the body and what follows).
        Taken { body: u64, rest: usize },
        /// Handed over to hyper, every byte.
        Handed,
        /// Incomplete.
        Partial,
    }

    /// One connection's reading state (its field-name cache), kept across heads.
    #[derive(Default)]
    pub struct Reader {
        names: NameCache,
        scratch: Vec<(HeaderName, usize, usize)>,
    }

    impl Reader {
        /// Reads the head at the start of `raw` as the front does; panics if the front takes
        /// it and hyper reads it otherwise (or not at all), or if it is handed over altered.
        pub async fn check(&mut self, raw: &[u8]) -> Outcome {
            let mut buf = BytesMut::from(raw);
            match parse(&mut buf, &mut self.names, &mut self.scratch) {
                Parsed::Take(req, _, length) => {
                    let ours = (
                        req.method.to_string(),
                        req.uri.to_string(),
                        req.version,
                        req.headers
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                            .collect::<Vec<_>>(),
                    );
                    let body = buf.get(..usize::try_from(length).unwrap_or(usize::MAX));
                    let shown = || String::from_utf8_lossy(raw).escape_debug().to_string();
                    let (method, uri, version, fields, their_body) = hyper_reads(raw)
                        .await
                        .unwrap_or_else(|| panic!("hyper refused {}", shown()));
                    assert_eq!(ours, (method, uri, version, fields), "{}", shown());
                    // When all of it is there (else hyper met the end of the stream in it).
                    if let Some(body) = body {
                        assert_eq!(body, &their_body[..], "{}", shown());
                    }
                    Outcome::Taken {
                        body: length,
                        rest: buf.len(),
                    }
                }
                Parsed::Other => {
                    assert_eq!(&buf[..], raw, "handed over whole");
                    Outcome::Handed
                }
                Parsed::Partial => Outcome::Partial,
            }
        }
    }

    /// What hyper's own HTTP/1.1 server makes of the request at the start of `raw`, if it
    /// takes it.
    async fn hyper_reads(raw: &[u8]) -> Option<Read> {
        use http_body_util::BodyExt as _;
        use hyper::body::Incoming;
        use hyper_util::rt::TokioIo;
        use tokio::io::AsyncWriteExt as _;
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let tx = tx.clone();
            async move {
                let (head, body) = req.into_parts();
                let fields = head
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect();
                let body = body.collect().await.map(|b| b.to_bytes().to_vec());
                let read = (
                    head.method.to_string(),
                    head.uri.to_string(),
                    head.version,
                    fields,
                    body.unwrap_or_default(),
                );
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(read);
                }
                Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(TokioIo::new(server), svc);
        let task = tokio::spawn(conn);
        client.write_all(raw).await.unwrap();
        client.shutdown().await.unwrap();
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), rx)
            .await
            .ok()
            .and_then(Result::ok);
        task.abort();
        read
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http_body::Frame;
    use http_body_util::{BodyExt as _, StreamBody};
    use portcullis_core::BoxError;

    /// Answers `resp` into an in-memory pipe; returns what `respond` said and the wire bytes.
    async fn wire(head_request: bool, keep: bool, resp: Response<BoxBody>) -> (bool, String) {
        wire_with(head_request, keep, resp, None).await
    }

    /// [`wire`], with the gateway's deferred fields.
    async fn wire_with(
        head_request: bool,
        keep: bool,
        resp: Response<BoxBody>,
        deferred: Option<DeferredFields>,
    ) -> (bool, String) {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut wbuf = Vec::new();
        let kept = respond(&mut ours, &mut wbuf, head_request, keep, resp, deferred)
            .await
            .unwrap();
        drop(ours);
        let mut out = Vec::new();
        theirs.read_to_end(&mut out).await.unwrap();
        (kept, String::from_utf8(out).unwrap())
    }

    fn streamed(frames: Vec<Frame<Bytes>>) -> BoxBody {
        let s = futures_util::stream::iter(frames.into_iter().map(Ok::<_, BoxError>));
        StreamBody::new(s).boxed_unsync()
    }

    fn answer(fields: &[(&str, &str)], body: BoxBody) -> Response<BoxBody> {
        let mut r = Response::new(body);
        for (n, v) in fields {
            r.headers_mut().append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    #[tokio::test]
    async fn announced_trailers_follow_the_last_chunk_and_no_others() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        trailers.insert("x-unannounced", HeaderValue::from_static("1"));
        trailers.insert("content-length", HeaderValue::from_static("9"));
        let body = streamed(vec![
            Frame::data(Bytes::from_static(b"hello")),
            Frame::data(Bytes::from_static(b" world")),
            Frame::trailers(trailers),
        ]);
        let resp = answer(&[("trailer", "x-checksum, content-length")], body);
        let (kept, text) = wire(false, true, resp).await;
        assert!(kept);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ntrailer: x-checksum, content-length\r\ntransfer-encoding: chunked\r\ndate: "), "{text}");
        assert!(
            text.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n"),
            "{text}"
        );
    }

    /// An announced trailer the security headers remove from heads (`X-Powered-By`) is not
    /// written as a trailer either.
    #[tokio::test]
    async fn trailers_the_security_headers_remove_are_not_written() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        trailers.insert("x-powered-by", HeaderValue::from_static("PHP/5.4"));
        let body = streamed(vec![
            Frame::data(Bytes::from_static(b"hi")),
            Frame::trailers(trailers),
        ]);
        let resp = answer(&[("trailer", "x-checksum, x-powered-by")], body);
        let deferred = DeferredFields {
            headers: Arc::new(portcullis_response::SecurityHeaders::default()),
            tls: false,
            request_id: None,
        };
        let (_, text) = wire_with(false, true, resp, Some(deferred)).await;
        assert!(text.ends_with("\r\n0\r\nx-checksum: abc\r\n\r\n"), "{text}");
        assert!(!text.contains("PHP"), "{text}");
    }

    #[tokio::test]
    async fn a_body_longer_than_its_length_is_cut_there_and_ends_the_connection() {
        let body = streamed(vec![
            Frame::data(Bytes::from_static(b"abc")),
            Frame::data(Bytes::from_static(b"defgh")),
        ]);
        let resp = answer(&[("content-length", "5")], body);
        let (kept, text) = wire(false, true, resp).await;
        assert!(!kept);
        assert!(text.contains("\r\ncontent-length: 5\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nabcde"), "{text}");
    }

    #[tokio::test]
    async fn lengths_come_from_the_body_and_close_is_said_once() {
        // A known body length wins over a stale field; `connection: close` is added when the
        // connection ends, not when the answer says it already.
        let resp = answer(
            &[("content-length", "99")],
            crate::problem::full_body("four"),
        );
        let (kept, text) = wire(false, false, resp).await;
        assert!(!kept);
        assert!(text.contains("\r\ncontent-length: 4\r\n"), "{text}");
        assert!(!text.contains("99"), "{text}");
        assert_eq!(text.matches("connection: close").count(), 1, "{text}");
        assert!(text.ends_with("\r\n\r\nfour"));
        let resp = answer(&[("connection", "close")], crate::problem::full_body("x"));
        let (kept, text) = wire(false, true, resp).await;
        assert!(!kept);
        assert_eq!(text.matches("connection: close").count(), 1, "{text}");
        // HEAD: the length the body would have, no body.
        let resp = answer(&[], crate::problem::full_body("four"));
        let (kept, text) = wire(true, true, resp).await;
        assert!(kept);
        assert!(text.contains("\r\ncontent-length: 4\r\n"), "{text}");
        assert!(text.ends_with("GMT\r\n\r\n"), "{text}");
        // A large first frame is written beside the head, not copied into it.
        let big = vec![b'z'; 3 * COALESCE];
        let resp = answer(&[], crate::problem::full_body(big.clone()));
        let (_, text) = wire(false, true, resp).await;
        assert!(
            text.ends_with(std::str::from_utf8(&big).unwrap()),
            "{}",
            text.len()
        );
    }

    #[tokio::test]
    async fn deferred_fields_replace_the_maps_and_follow_them() {
        for tls in [false, true] {
            // The map as the upstream sent it: what the gateway replaces or removes is
            // skipped as the head is written, not removed from the map first.
            let resp = answer(
                &[
                    ("server", "x"),
                    ("x-a", "1"),
                    ("x-request-id", "theirs"),
                    ("x-frame-options", "ALLOWALL"),
                    ("strict-transport-security", "max-age=1"),
                ],
                crate::problem::full_body("b"),
            );
            let sec = Arc::new(portcullis_response::SecurityHeaders::default());
            let deferred = DeferredFields {
                headers: sec,
                tls,
                request_id: Some((
                    HeaderName::from_static("x-request-id"),
                    HeaderValue::from_static("ours"),
                )),
            };
            let (_, text) = wire_with(false, true, resp, Some(deferred)).await;
            assert!(!text.contains("server:"), "{text}");
            assert!(!text.contains("theirs"), "{text}");
            assert!(!text.contains("ALLOWALL"), "{text}");
            assert_eq!(text.matches("x-request-id:").count(), 1, "{text}");
            assert_eq!(text.matches("x-frame-options:").count(), 1, "{text}");
            let a = text.find("\r\nx-a: 1\r\n").unwrap();
            let id = text.find("\r\nx-request-id: ours\r\n").unwrap();
            let frame = text.find("\r\nx-frame-options: DENY\r\n").unwrap();
            assert!(a < id && id < frame, "{text}");
            // Set on TLS connections only, where it replaces the upstream's; otherwise the
            // upstream's passes (as `strip` leaves it).
            assert_eq!(text.contains("max-age=1"), !tls, "{text}");
            assert_eq!(
                text.matches("strict-transport-security:").count(),
                1,
                "{text}"
            );
            assert!(text.ends_with("\r\n\r\nb"), "{text}");
        }
    }

    #[tokio::test]
    async fn configured_removals_are_skipped_and_the_gateways_close_stays() {
        // `connection` itself cannot be configured for removal (refused at load time).
        let refused: portcullis_response::RawSecurityHeaders =
            serde_json::from_str(r#"{"remove": ["connection"]}"#).unwrap();
        let mut errors = portcullis_core::ConfigErrors::new();
        portcullis_response::compile_global(Some(&refused), &mut errors);
        assert!(!errors.is_empty());
        let raw: portcullis_response::RawSecurityHeaders =
            serde_json::from_str(r#"{"remove": ["x-secret"]}"#).unwrap();
        let mut errors = portcullis_core::ConfigErrors::new();
        let sec = portcullis_response::compile_global(Some(&raw), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let resp = answer(
            &[("connection", "close"), ("x-secret", "s"), ("x-a", "1")],
            crate::problem::full_body("b"),
        );
        let deferred = DeferredFields {
            headers: Arc::new(sec),
            tls: false,
            request_id: None,
        };
        let (kept, text) = wire_with(false, true, resp, Some(deferred)).await;
        assert!(!kept, "the connection ends: {text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(!text.contains("x-secret"), "{text}");
        assert!(text.contains("\r\nx-a: 1\r\n"), "{text}");
    }

    #[tokio::test]
    async fn an_interim_status_as_the_final_answer_is_a_500_that_ends_the_connection() {
        let mut resp = answer(&[("x-a", "1")], crate::problem::full_body("body"));
        *resp.status_mut() = StatusCode::EARLY_HINTS;
        let (kept, text) = wire(false, true, resp).await;
        assert!(!kept);
        assert!(
            text.starts_with("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert!(!text.contains("x-a") && !text.contains("body"), "{text}");
    }

    #[tokio::test]
    async fn an_empty_chunked_body_goes_out_with_its_head() {
        let (kept, text) = wire(false, true, answer(&[], streamed(vec![]))).await;
        assert!(kept);
        assert!(
            text.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n0\r\n\r\n"), "{text}");
    }

    #[test]
    fn the_date_line_is_an_imf_fixdate() {
        let mut out = Vec::new();
        push_date(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.starts_with("date: ") && text.ends_with(" GMT\r\n"),
            "{text}"
        );
        let parsed = httpdate::parse_http_date(&text[6..text.len() - 2]).unwrap();
        let age = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(age.as_secs() < 5, "{text}");
    }

    /// A random request head from parts chosen to reach every branch of the front's reading:
    /// odd methods, targets and versions, fields it refuses, values with tabs, obs-text,
    /// control characters and surrounding spaces.
    fn random_head(rng: &mut fastrand::Rng) -> Vec<u8> {
        const METHODS: &[&[u8]] = &[
            b"GET", b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"PURGE", b"get", b"G@T", b"CONNECT",
        ];
        const TARGETS: &[&[u8]] = &[
            b"/",
            b"/a/b?x=1&y=%20",
            b"*",
            b"http://example.com/x",
            b"http://example.com",
            b"/%2e%2e/a",
            b"//x",
            b"/a\\b",
            b"/\xe9",
            b"/a b",
            b"/x?q=\"v\"",
            b"/{a}",
        ];
        const VERSIONS: &[&[u8]] = &[
            b"HTTP/1.1",
            b"HTTP/1.1",
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"HTTP/2.0",
            b"http/1.1",
        ];
        const FIELDS: &[&[u8]] = &[
            b"Host: a",
            b"host:  a  ",
            b"X-Empty:",
            b"X-Tab: a\tb",
            b"X-Obs: \xe9t\xe9",
            b"Content-Length: 0",
            b"Content-Length: 5",
            b"Content-Length: 5",
            b"Content-Length: 12",
            b"Content-Length: 00",
            b"Content-Length: 05",
            b"Content-Length: +5",
            b"Content-Length: 5, 5",
            b"Content-Length: 5 ",
            b"Content-Length: 99999999999999999999",
            b"Connection: close",
            b"Connection: keep-alive, Close",
            b"Upgrade: h2c",
            b"Expect: 100-continue",
            b"Transfer-Encoding: chunked",
            b"X-Dup: 1",
            b"X-Dup: 2",
            b"Cookie: a=b; c=d",
            b"User-Agent: curl/8.5.0",
            b"Accept: */*",
            b"Bad Name: x",
            b"X-Ctl: a\x01b",
            b"X-Del: a\x7fb",
            b"X-Colon:: x",
            b":empty-name",
        ];
        let mut out = Vec::new();
        out.extend_from_slice(METHODS[rng.usize(..METHODS.len())]);
        out.push(b' ');
        out.extend_from_slice(TARGETS[rng.usize(..TARGETS.len())]);
        out.push(b' ');
        out.extend_from_slice(VERSIONS[rng.usize(..VERSIONS.len())]);
        out.extend_from_slice(b"\r\n");
        for _ in 0..rng.usize(0..8) {
            out.extend_from_slice(FIELDS[rng.usize(..FIELDS.len())]);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        // What a length says follows, and the start of what comes after it.
        out.extend_from_slice(b"hello, world");
        out.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        out
    }

    #[tokio::test]
    async fn what_the_front_takes_hyper_reads_the_same() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let mut reader = differential::Reader::default();
        let (mut taken, mut handed, mut with_body) = (0, 0, 0);
        for _ in 0..5000 {
            let raw = random_head(&mut rng);
            match reader.check(&raw).await {
                differential::Outcome::Taken { body, rest } => {
                    taken += 1;
                    with_body += usize::from(body > 0);
                    let after = &raw[raw.len() - rest..];
                    assert!(
                        after.starts_with(b"hello, world"),
                        "the head alone is taken"
                    );
                }
                differential::Outcome::Handed => handed += 1,
                differential::Outcome::Partial => panic!("a whole head read as partial"),
            }
        }
        assert!(
            taken > 300 && handed > 300 && with_body > 60,
            "taken {taken}, handed {handed}, with a body {with_body}"
        );
    }

    #[test]
    fn only_plain_lengths_are_taken() {
        for (v, want) in [
            (&b"0"[..], Some(0)),
            (b"5", Some(5)),
            (b"300000", Some(300_000)),
            (b"999999999999999999", Some(999_999_999_999_999_999)),
            (b"1000000000000000000", None),
            (b"", None),
            (b"00", None),
            (b"05", None),
            (b"+5", None),
            (b"-5", None),
            (b"5 ", None),
            (b"5, 5", None),
            (b"0x10", None),
        ] {
            assert_eq!(plain_length(v), want, "{}", String::from_utf8_lossy(v));
        }
    }

    #[tokio::test]
    async fn a_body_fed_in_pieces_leaves_what_follows_it_and_fails_if_cut_short() {
        use http_body_util::BodyExt as _;
        // Read off the connection: exactly the body, the next request's bytes stay.
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"345678GET / HTTP/1.1\r\n").await.unwrap();
        let (tx, rx) = mpsc::channel(1);
        let body = FrontBody::new(Some(Bytes::from_static(b"12")), Some(rx), 8);
        assert_eq!(body.size_hint().exact(), Some(8));
        let mut feed = Feed {
            unread: 6,
            failed: false,
        };
        assert!(!feed.next(&mut server, Some(&tx)).await);
        assert_eq!((feed.unread, feed.failed), (0, false));
        // Not a byte past the body was read: the next head is still on the connection.
        let mut rest = [0u8; 64];
        let n = server.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"GET / HTTP/1.1\r\n");
        drop(tx);
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"12345678");

        // The connection ends inside the body: the body fails, after what did arrive.
        let (tx, rx) = mpsc::channel(1);
        let mut body = FrontBody::new(None, Some(rx), 10);
        let mut feed = Feed {
            unread: 10,
            failed: false,
        };
        client.write_all(b"abc").await.unwrap();
        assert!(feed.next(&mut server, Some(&tx)).await);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"abc");
        assert_eq!(body.size_hint().exact(), Some(7));
        drop(client);
        assert!(!feed.next(&mut server, Some(&tx)).await);
        assert!(feed.failed);
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(body.frame().await.is_none());

        // The feed stops, failing nothing, once the engine dropped the body.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let (_client, mut server) = tokio::io::duplex(64);
        let mut feed = Feed {
            unread: 10,
            failed: false,
        };
        assert!(!feed.next(&mut server, Some(&tx)).await);
        assert_eq!((feed.unread, feed.failed), (10, false));

        // A sender dropped early (never by the front while the body is owed, but the body
        // must not take it for the end).
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(1);
        drop(tx);
        let body = FrontBody::new(Some(Bytes::from_static(b"ab")), Some(rx), 4);
        assert!(body.collect().await.is_err());
        // Nor when the bytes owed have no source at all.
        let body = FrontBody::new(Some(Bytes::from_static(b"ab")), None, 4);
        assert!(body.collect().await.is_err());
    }

    #[tokio::test]
    async fn a_short_body_is_taken_from_the_socket_without_waiting_and_not_past_its_end() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"6789GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut body = BytesMut::from(&b"12345"[..]);
        take_what_is_there(&mut server, &mut body, 9).await;
        assert_eq!(&body[..], b"123456789");
        let mut rest = [0u8; 64];
        let n = server.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"GET / HTTP/1.1\r\n\r\n");
        // Nothing there yet: it returns at once with what it has.
        let mut body = BytesMut::from(&b"12"[..]);
        let took = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            take_what_is_there(&mut server, &mut body, 9),
        )
        .await;
        assert!(took.is_ok(), "waited for bytes that were not there");
        assert_eq!(&body[..], b"12");
        drop(client);
    }

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        for (n, want) in [
            (0usize, "0\r\n"),
            (5, "5\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
        ] {
            let mut out = Vec::new();
            push_hex(&mut out, n);
            assert_eq!(out, want.as_bytes());
        }
    }

    fn conn_info() -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            peer: "127.0.0.1:9".parse().unwrap(),
            scheme: portcullis_core::Scheme::Http,
            listener: Arc::from("l"),
            tls: None,
            handshake: None,
            framing: Default::default(),
            response_timer: Default::default(),
            may_tunnel: Default::default(),
            abort_on_close: false,
            resets: Default::default(),
            activity: Default::default(),
        })
    }

    /// hyper's shutdown of a `Prefixed` stream shuts the write side, then takes and drops what
    /// the client still sends until the client closes; on a connection that may carry a
    /// tunnel it only shuts the write side, and what the client sends after stays to be read.
    #[tokio::test]
    async fn shutdown_lingers_unless_the_connection_may_be_tunnelled() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = Prefixed::new(BytesMut::from(&b"unread"[..]), server, conn_info());
        client.write_all(&[b'x'; 512]).await.unwrap();
        let shut = tokio::spawn(async move { io.shutdown().await });
        // The write side is shut: the client reads the end of the stream.
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
        // What it sends on is taken, more than the pipe holds.
        for _ in 0..8 {
            client.write_all(&[b'x'; 1024]).await.unwrap();
        }
        assert!(!shut.is_finished(), "the shutdown waits for the client");
        drop(client);
        shut.await.unwrap().unwrap();

        let info = conn_info();
        info.may_tunnel
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = Prefixed::new(BytesMut::new(), server, info);
        io.shutdown().await.unwrap();
        client.write_all(b"tunnel bytes").await.unwrap();
        let mut buf = [0u8; 12];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"tunnel bytes");
    }
}
