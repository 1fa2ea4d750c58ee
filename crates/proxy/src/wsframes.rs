//! The frame rules of a WebSocket tunnel (RFC 6455 §5), and the tunnel's two pumps.
//!
//! After a 101 no step reads the connection, but the gateway still follows the frames the
//! client sends — their headers only, never their payloads — so that a message larger than the
//! route's `websocket.max_message_bytes`, or a frame no conforming client sends (unmasked, a
//! reserved opcode or bit, an oversized or fragmented control frame, a continuation without a
//! message), ends the tunnel before it reaches the upstream. Both sides are then sent a Close
//! frame saying why (1009 or 1002), each at a frame boundary of its own direction: the
//! offending frame is not forwarded, and the upstream's answer in flight to the client is not
//! cut in the middle of a frame (when it is, the connection is closed without a Close frame).

use std::io;
use std::sync::OnceLock;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// RFC 6455 §7.4.1: "a message that is too big for it to process".
pub(crate) const MESSAGE_TOO_BIG: u16 = 1009;
/// RFC 6455 §7.4.1: "a protocol error".
pub(crate) const PROTOCOL_ERROR: u16 = 1002;
/// RFC 6455 §7.4.1: an endpoint "going away", such as a server going down.
pub(crate) const GOING_AWAY: u16 = 1001;
/// The reason the Close frames of a stop carry.
const STOPPING: &str = "the gateway is stopping";

/// Why the client's frames end the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Violation {
    /// Where the offending frame's header begins in the bytes given to [`ClientFrames::feed`]:
    /// what comes before it is whole frames (or the rest of one) and may be forwarded.
    pub at: usize,
    /// The Close code both sides are sent.
    pub code: u16,
    /// The Close frame's reason (at most 123 bytes, RFC 6455 §5.5), also logged.
    pub reason: &'static str,
}

/// The extensions a 101 agreed on (its `Sec-WebSocket-Extensions`), which give the RSV bits
/// their meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extensions {
    /// None: every RSV bit must be 0.
    None,
    /// `permessage-deflate` alone (RFC 7692 §6): RSV1 on a message's first frame only.
    Deflate,
    /// Another one, whose use of the bits the gateway does not know: they are not checked.
    Other,
}

impl Extensions {
    /// Reads the 101's `Sec-WebSocket-Extensions` values (each a list of extensions, each
    /// with its parameters after `;`).
    pub(crate) fn agreed<'a>(values: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut agreed = Extensions::None;
        for value in values {
            for ext in list_items(value) {
                let name = ext.split(|&b| b == b';').next().unwrap_or_default();
                match name.trim_ascii() {
                    b"" => {}
                    n if n.eq_ignore_ascii_case(b"permessage-deflate") => {
                        if agreed == Extensions::None {
                            agreed = Extensions::Deflate;
                        }
                    }
                    _ => return Extensions::Other,
                }
            }
        }
        agreed
    }
}

/// The items of a comma-separated header list (RFC 9110 §5.6.1), a comma inside a quoted
/// string (a parameter's value, RFC 6455 §9.1) not ending one. An unclosed quote runs to the
/// end.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut escaped = false;
    value.split(move |&b| {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == b',' && !quoted {
            return true;
        }
        false
    })
}

/// Follows the frames a client sends: their headers, and how much of each message has gone by.
#[derive(Debug)]
pub(crate) struct ClientFrames {
    max_message: u64,
    extensions: Extensions,
    /// Payload bytes of the current frame still to go by.
    left: u64,
    /// The bytes of the message under way (`Some` between a data frame without FIN and the
    /// continuation that ends it).
    message: Option<u64>,
}

impl ClientFrames {
    pub(crate) fn new(max_message: u64, extensions: Extensions) -> Self {
        ClientFrames {
            max_message,
            extensions,
            left: 0,
            message: None,
        }
    }

    /// Whether what went by ends a frame (no payload of one still to come).
    pub(crate) fn between_frames(&self) -> bool {
        self.left == 0
    }

    /// Follows `data`, which continues where the last call's forwardable bytes ended. `Ok(n)`:
    /// the first `n` bytes may be forwarded; the rest (fewer than 14) is the start of a frame
    /// header to be given again, with what follows it, once more has come.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<usize, Violation> {
        let mut i = 0;
        loop {
            let rest = data.len() - i;
            if self.left > 0 {
                // `left` may exceed what a usize holds on a 32-bit target; `rest` never does.
                let take = usize::try_from(self.left).map_or(rest, |l| l.min(rest));
                i += take;
                self.left -= take as u64;
                if self.left > 0 {
                    return Ok(i);
                }
            }
            if i == data.len() {
                return Ok(i);
            }
            let at = i;
            let Some((frame, len)) = header(&data[at..]) else {
                return Ok(at);
            };
            self.check(&frame, at)?;
            i = at + len;
            self.left = frame.payload;
        }
    }

    fn check(&mut self, f: &Frame, at: usize) -> Result<(), Violation> {
        let refuse = |code, reason| Err(Violation { at, code, reason });
        if !f.masked {
            return refuse(PROTOCOL_ERROR, "client frame not masked");
        }
        let rsv_allowed = match self.extensions {
            Extensions::None => 0,
            // RSV1 marks a compressed message, on its first frame (RFC 7692 §6.1).
            Extensions::Deflate if matches!(f.opcode, 0x1 | 0x2) => 0b100,
            Extensions::Deflate => 0,
            Extensions::Other => 0b111,
        };
        if f.rsv & !rsv_allowed != 0 {
            return refuse(
                PROTOCOL_ERROR,
                "reserved bits set that no extension agreed gives a meaning",
            );
        }
        if f.payload >> 63 != 0 {
            return refuse(PROTOCOL_ERROR, "frame length out of range");
        }
        match f.opcode {
            0x8..=0xA => {
                if !f.fin || f.payload > 125 {
                    return refuse(PROTOCOL_ERROR, "control frame fragmented or over 125 bytes");
                }
                Ok(())
            }
            0x0 => {
                let Some(so_far) = self.message else {
                    return refuse(PROTOCOL_ERROR, "continuation frame without a message");
                };
                let total = so_far.saturating_add(f.payload);
                if total > self.max_message {
                    return refuse(MESSAGE_TOO_BIG, "message over the gateway's size limit");
                }
                self.message = (!f.fin).then_some(total);
                Ok(())
            }
            0x1 | 0x2 => {
                if self.message.is_some() {
                    return refuse(PROTOCOL_ERROR, "new message before the last one ended");
                }
                if f.payload > self.max_message {
                    return refuse(MESSAGE_TOO_BIG, "message over the gateway's size limit");
                }
                self.message = (!f.fin).then_some(f.payload);
                Ok(())
            }
            _ => refuse(PROTOCOL_ERROR, "reserved opcode"),
        }
    }
}

/// Follows the frames the upstream sends, only to know where one ends and the next begins.
#[derive(Debug, Default)]
pub(crate) struct Boundaries {
    /// A header begun in an earlier piece.
    head: [u8; MAX_HEADER],
    have: usize,
    left: u64,
}

impl Boundaries {
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let take = usize::try_from(self.left).map_or(data.len(), |l| l.min(data.len()));
                self.left -= take as u64;
                data = &data[take..];
                continue;
            }
            let add = (MAX_HEADER - self.have).min(data.len());
            self.head[self.have..self.have + add].copy_from_slice(&data[..add]);
            match header(&self.head[..self.have + add]) {
                Some((frame, len)) => {
                    // Of the bytes just added, those past the header are payload.
                    data = &data[len - self.have..];
                    self.have = 0;
                    self.left = frame.payload;
                }
                None => {
                    self.have += add;
                    data = &data[add..];
                }
            }
        }
    }

    /// Whether the bytes so far end exactly at the end of a frame.
    pub(crate) fn at_boundary(&self) -> bool {
        self.left == 0 && self.have == 0
    }
}

/// The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
const MAX_HEADER: usize = 14;

struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: u64,
}

/// A frame header at the start of `b` and its length, or `None` when `b` holds only part of it.
fn header(b: &[u8]) -> Option<(Frame, usize)> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (payload, mut len) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
        127 => {
            let ext: [u8; 8] = b.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(ext), 10)
        }
        n => (u64::from(n), 2),
    };
    if masked {
        len += 4;
    }
    if b.len() < len {
        return None;
    }
    Some((
        Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0F,
            masked,
            payload,
        },
        len,
    ))
}

/// A Close frame with `code` and `reason` (under 126 bytes of payload), masked with `mask` when
/// it goes to the upstream (a client's frames are masked, RFC 6455 §5.3).
fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    let mut out = Vec::with_capacity(6 + payload.len());
    out.push(0x88);
    // At most 125: fits the 7-bit length.
    let len = payload.len() as u8;
    match mask {
        Some(key) => {
            out.push(0x80 | len);
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => {
            out.push(len);
            out.extend_from_slice(&payload);
        }
    }
    out
}

/// A refusal, passed from the client's pump to the upstream's; or the gateway's stop, told to
/// both.
#[derive(Default)]
pub(crate) struct Refusal {
    violation: OnceLock<Violation>,
    /// Wakes the upstream's pump (the one writing to the client).
    told: Notify,
    /// The gateway is stopping: each pump sends a Close frame (1001) where it stands between
    /// two frames, and ends.
    stopping: std::sync::atomic::AtomicBool,
    /// Wakes the client's pump (the one writing to the upstream) for the stop.
    told_upstream: Notify,
}

impl Refusal {
    fn raise(&self, v: Violation) {
        let _ = self.violation.set(v);
        self.told.notify_one();
    }

    /// The gateway is stopping: both sides are to be sent a Close frame ("going away").
    pub(crate) fn go_away(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.told.notify_one();
        self.told_upstream.notify_one();
    }

    /// Whether [`Refusal::go_away`] was told.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The client's violation, once its pump found one.
    pub(crate) fn violation(&self) -> Option<Violation> {
        self.violation.get().copied()
    }
}

/// Client to upstream: forwards whole frames (a header only once it is complete), and on a
/// violation forwards what came before the offending frame, sends the upstream a Close frame
/// and tells the other pump to send one to the client.
pub(crate) async fn client_to_upstream<R, W>(
    from: &mut R,
    to: &mut W,
    mut frames: ClientFrames,
    refusal: &Refusal,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let read = tokio::select! {
            biased;
            () = refusal.told_upstream.notified() => {
                // The stop: a Close frame where the upstream stands between two of the
                // client's frames (a control frame may come between a message's fragments);
                // mid-frame it would be read as payload, and the side is closed without one.
                if buf.is_empty() && frames.between_frames() {
                    to.write_all(&close_frame(
                        GOING_AWAY,
                        STOPPING,
                        Some(fastrand::u32(..).to_be_bytes()),
                    ))
                    .await?;
                }
                return to.shutdown().await;
            }
            // Cancel-safe: what a read took is in `buf`.
            read = from.read_buf(&mut buf) => read?,
        };
        if read == 0 {
            // A header begun and never finished is dropped with the client's side.
            return to.shutdown().await;
        }
        match frames.feed(&buf) {
            Ok(n) => {
                to.write_all(&buf[..n]).await?;
                to.flush().await?;
                buf.advance(n);
            }
            Err(v) => {
                refusal.raise(v);
                to.write_all(&buf[..v.at]).await?;
                to.write_all(&close_frame(
                    v.code,
                    v.reason,
                    Some(fastrand::u32(..).to_be_bytes()),
                ))
                .await?;
                return to.shutdown().await;
            }
        }
    }
}

/// Upstream to client: copies, following frame boundaries; once the client's pump raised a
/// refusal, sends the client a Close frame if the copy stands between two frames, and ends.
pub(crate) async fn upstream_to_client<R, W>(
    from: &mut R,
    to: &mut W,
    refusal: &Refusal,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = Boundaries::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            biased;
            () = refusal.told.notified() => {
                let close = match refusal.violation() {
                    Some(v) => Some((v.code, v.reason)),
                    None => refusal.stopping().then_some((GOING_AWAY, STOPPING)),
                };
                if let (Some((code, reason)), true) = (close, frames.at_boundary()) {
                    to.write_all(&close_frame(code, reason, None)).await?;
                }
                // Mid-frame, a Close frame would be read as the frame's payload: the connection
                // is closed without one.
                to.shutdown().await?;
                return Ok(());
            }
            n = from.read(&mut buf) => n?,
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        frames.feed(&buf[..n]);
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}

/// After a refusal: what each side still sends is read and dropped, up to `cap` bytes, until
/// it closes. Closing a socket with unread bytes in it resets the connection, and a reset
/// throws away what the kernel still holds to send — the Close frame just written — and, on
/// some clients, what they had received but not yet read: a client still sending the message
/// that was refused would never see why. The caller bounds the time this takes.
pub(crate) async fn drain<R: AsyncRead + Unpin>(from: &mut R, cap: u64) {
    // On the heap: held across awaits, an array would grow every tunnel's future.
    let mut buf = vec![0u8; 4096];
    let mut left = cap;
    while left > 0 {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n as u64),
        }
    }
}

/// Feeds `stream` in pieces of `step` bytes as the client's pump does (keeping what is not yet
/// forwardable); the bytes forwarded and the violation, if any.
#[cfg(any(test, feature = "fuzzing"))]
fn follow(frames: &mut ClientFrames, stream: &[u8], step: usize) -> (Vec<u8>, Option<Violation>) {
    let mut held: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in stream.chunks(step.max(1)) {
        held.extend_from_slice(piece);
        match frames.feed(&held) {
            Ok(n) => {
                out.extend_from_slice(&held[..n]);
                held.drain(..n);
            }
            Err(v) => {
                out.extend_from_slice(&held[..v.at]);
                return (out, Some(v));
            }
        }
    }
    (out, None)
}

/// For the `ws_frames` fuzz target: the first bytes choose the limit, the extensions and a
/// read size, the rest is what a client sends. Panics when the verdict or the bytes forwarded
/// depend on how the stream is cut into reads, when what was forwarded would not pass the
/// check again whole, or when the upstream direction's boundary follower disagrees with it
/// about where the forwarded bytes end.
#[cfg(feature = "fuzzing")]
pub fn fuzz_check(data: &[u8]) {
    let [m, e, step, stream @ ..] = data else {
        return;
    };
    let max = [1, 125, 126, 65_535, 65_536, 1 << 20][usize::from(*m) % 6];
    let ext = [Extensions::None, Extensions::Deflate, Extensions::Other][usize::from(*e) % 3];
    let (whole, verdict) = follow(&mut ClientFrames::new(max, ext), stream, stream.len());
    for step in [1, 2, usize::from(*step) + 1] {
        let (out, v) = follow(&mut ClientFrames::new(max, ext), stream, step);
        assert_eq!(out, whole, "step {step}");
        // (`at` is an offset into the bytes held at that read, which differ by step.)
        let why = |v: Option<Violation>| v.map(|v| (v.code, v.reason));
        assert_eq!(why(v), why(verdict), "step {step}");
    }
    // What went through passes again, whole, and ends where a frame ends or inside a payload.
    let mut again = ClientFrames::new(max, ext);
    assert_eq!(again.feed(&whole), Ok(whole.len()));
    let mut ends = Boundaries::default();
    ends.feed(&whole);
    assert_eq!(ends.at_boundary(), again.left == 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: FIN, opcode, masked with a fixed key, `len` payload bytes.
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![u8::from(fin) << 7 | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    fn run(max: u64, ext: Extensions, stream: &[u8]) -> (Vec<u8>, Option<Violation>) {
        let whole = follow(&mut ClientFrames::new(max, ext), stream, stream.len());
        // Whatever the pieces, the same bytes go through and the same verdict comes.
        for step in [1, 2, 3, 7, 13, 100] {
            let (out, v) = follow(&mut ClientFrames::new(max, ext), stream, step);
            assert_eq!(out, whole.0, "step {step}");
            assert_eq!(
                v.map(|v| (v.code, v.reason)),
                whole.1.map(|v| (v.code, v.reason))
            );
        }
        whole
    }

    #[test]
    fn conforming_frames_go_through_whole() {
        let mut s = frame(true, 1, 5);
        s.extend(frame(false, 2, 200));
        s.extend(frame(false, 0, 0));
        s.extend(frame(true, 9, 125)); // a ping between a message's frames
        s.extend(frame(true, 0, 70_000)); // a 64-bit length
        s.extend(frame(true, 0xA, 0));
        s.extend(frame(true, 8, 2));
        let (out, v) = run(1 << 20, Extensions::None, &s);
        assert_eq!(v, None);
        assert_eq!(out, s);
    }

    #[test]
    fn a_message_may_be_as_large_as_the_limit_and_no_larger() {
        let (out, v) = run(300, Extensions::None, &frame(true, 2, 300));
        assert_eq!((out.len(), v), (300 + 8, None));

        let mut s = frame(true, 1, 10);
        let over = s.len();
        s.extend(frame(true, 2, 301));
        let (out, v) = run(300, Extensions::None, &s);
        assert_eq!(out, frame(true, 1, 10));
        let v = v.unwrap();
        assert_eq!((v.code, v.at <= over), (MESSAGE_TOO_BIG, true));

        // Over the limit in fragments, each under it: the fragment that passes it is held.
        let mut s = frame(false, 1, 200);
        s.extend(frame(false, 0, 100));
        let upto = s.len();
        s.extend(frame(true, 0, 1));
        let (out, v) = run(300, Extensions::None, &s);
        assert_eq!(out, s[..upto]);
        assert_eq!(v.unwrap().code, MESSAGE_TOO_BIG);

        // Control frames do not count against a message.
        let mut s = frame(false, 1, 250);
        s.extend(frame(true, 9, 100));
        s.extend(frame(true, 0, 50));
        assert_eq!(run(300, Extensions::None, &s), (s.clone(), None));

        // A 64-bit length over the limit is refused at its header, its payload never awaited.
        let mut big = vec![0x82, 0x80 | 127];
        big.extend_from_slice(&(5u64 << 30).to_be_bytes());
        big.extend_from_slice(&[1, 2, 3, 4]);
        let (out, v) = run(1 << 20, Extensions::None, &big);
        assert_eq!((out.len(), v.unwrap().code), (0, MESSAGE_TOO_BIG));
    }

    #[test]
    fn frames_no_conforming_client_sends_are_protocol_errors() {
        let unmasked = {
            let mut f = frame(true, 1, 3);
            f[1] &= 0x7F;
            f.drain(2..6);
            f
        };
        let rsv1 = {
            let mut f = frame(true, 1, 3);
            f[0] |= 0x40;
            f
        };
        let mut long_length = vec![0x82, 0x80 | 127];
        long_length.extend_from_slice(&u64::MAX.to_be_bytes());
        long_length.extend_from_slice(&[1, 2, 3, 4]);
        let mut interleaved = frame(false, 1, 3);
        interleaved.extend(frame(true, 2, 3));
        for (name, s) in [
            ("unmasked", unmasked),
            ("rsv1 without extension", rsv1.clone()),
            ("reserved opcode 3", frame(true, 3, 0)),
            ("reserved opcode 0xB", frame(true, 0xB, 0)),
            ("long ping", frame(true, 9, 126)),
            ("fragmented close", frame(false, 8, 2)),
            ("lone continuation", frame(true, 0, 3)),
            ("message inside a message", interleaved),
            ("length with its top bit", long_length),
        ] {
            let (_, v) = run(1 << 20, Extensions::None, &s);
            assert_eq!(v.map(|v| v.code), Some(PROTOCOL_ERROR), "{name}");
        }
        // permessage-deflate gives RSV1 a meaning on a message's first frame, and nowhere else;
        // an extension the gateway does not know, every bit.
        assert_eq!(
            run(1 << 20, Extensions::Deflate, &rsv1),
            (rsv1.clone(), None)
        );
        let mut rsv2 = frame(true, 1, 3);
        rsv2[0] |= 0x20;
        let mut cont_rsv1 = frame(false, 1, 3);
        let mut second = frame(true, 0, 3);
        second[0] |= 0x40;
        cont_rsv1.extend(second);
        let mut ping_rsv1 = frame(true, 9, 0);
        ping_rsv1[0] |= 0x40;
        for (name, s) in [
            ("rsv2", &rsv2),
            ("rsv1 on a continuation", &cont_rsv1),
            ("rsv1 on a ping", &ping_rsv1),
        ] {
            let (_, v) = run(1 << 20, Extensions::Deflate, s);
            assert_eq!(v.map(|v| v.code), Some(PROTOCOL_ERROR), "{name}");
            assert_eq!(
                run(1 << 20, Extensions::Other, s),
                (s.clone(), None),
                "{name}"
            );
        }
    }

    #[test]
    fn a_header_not_yet_whole_is_held_back() {
        let f = frame(true, 2, 70_000);
        let mut frames = ClientFrames::new(1 << 20, Extensions::None);
        for cut in 0..10 {
            assert_eq!(frames.feed(&f[..cut]), Ok(0), "cut at {cut}");
        }
        assert_eq!(frames.feed(&f[..20]), Ok(20));
    }

    #[test]
    fn boundaries_follow_the_upstreams_frames() {
        let mut s = vec![0x81, 3, b'a', b'b', b'c'];
        s.extend([0x82, 126, 0x01, 0x00]);
        s.extend(std::iter::repeat_n(0u8, 256));
        s.extend([0x89, 0]);
        for step in [1, 2, 3, 5, 64, 1000] {
            let mut b = Boundaries::default();
            let mut ends = Vec::new();
            let mut seen = 0;
            for piece in s.chunks(step) {
                b.feed(piece);
                seen += piece.len();
                if b.at_boundary() {
                    ends.push(seen);
                }
            }
            // Every frame end that falls at a piece's end is seen, and nothing else.
            let expected: Vec<usize> = [5, 265, 267]
                .into_iter()
                .filter(|e| *e % step == 0 || *e == s.len())
                .collect();
            assert_eq!(ends, expected, "step {step}");
        }
    }

    #[test]
    fn extensions_are_read_from_the_101() {
        let agreed = |values: &[&str]| Extensions::agreed(values.iter().map(|v| v.as_bytes()));
        assert_eq!(agreed(&[]), Extensions::None);
        assert_eq!(agreed(&[""]), Extensions::None);
        assert_eq!(
            agreed(&["permessage-deflate; client_max_window_bits=10"]),
            Extensions::Deflate
        );
        assert_eq!(agreed(&[" Permessage-Deflate "]), Extensions::Deflate);
        assert_eq!(agreed(&["permessage-deflate, x-webkit"]), Extensions::Other);
        assert_eq!(
            agreed(&["permessage-deflate", "x-other; a=1"]),
            Extensions::Other
        );
        // A comma inside a quoted parameter value does not start another extension.
        assert_eq!(
            agreed(&[r#"permessage-deflate; x="a, b\", c", , "#]),
            Extensions::Deflate
        );
        assert_eq!(
            agreed(&[r#"permessage-deflate; x="a", x-other"#]),
            Extensions::Other
        );
    }

    #[test]
    fn close_frames_carry_their_code_and_reason() {
        assert_eq!(
            close_frame(1009, "big", None),
            [0x88, 5, 0x03, 0xF1, b'b', b'i', b'g']
        );
        let masked = close_frame(1002, "x", Some([0xFF, 0, 0xFF, 0]));
        assert_eq!(
            masked,
            [0x88, 0x83, 0xFF, 0, 0xFF, 0, 0x03 ^ 0xFF, 0xEA, b'x' ^ 0xFF]
        );
        let long = "r".repeat(200);
        assert_eq!(close_frame(1009, &long, None).len(), 2 + 125);
    }
}
