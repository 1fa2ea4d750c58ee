//! HTTP/2 answers the client holds up.
//!
//! An HTTP/2 client controls how fast it is sent to: its flow-control window, for the whole
//! connection and for each stream. One that opens no window (or keeps it at a trickle) stalls
//! its answers while pings, settings or other streams keep its connection busy, so the idle
//! timeout never sees it idle — and each stalled answer holds its upstream exchange (the "slow
//! read" of HTTP/2). [`ToClient`] wraps every HTTP/2 answer's body and tells the connection's
//! [`Activity`] while the body waits for the server to take its next piece (which the server
//! does only when the window has room). The connection's watchdog then judges twice, at each
//! of its ticks:
//!
//! * the connection: when its answers have waited `server.send_timeout` with none of them
//!   taking a step, it is closed;
//! * each answer: one that has waited `server.send_timeout` (and a little more, see
//!   [`HeldAnswers::tick`]) while others moved is cut off alone — its body is taken away and
//!   dropped, which closes its upstream exchange (and writes its audit event, not whole),
//!   and the stream is reset as soon as the server asks the body for more (unless it already
//!   holds the body's last piece: that is then sent, the answer audited as not whole). The
//!   server takes a piece ahead and then waits for window before it sends it and asks for the
//!   next, so a body whose stream has no window is not asked for anything and cannot time
//!   itself: the watchdog reaches it through the connection's register ([`HeldAnswers`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use portcullis_core::{BoxBody, BoxError};

use crate::sniff::Activity;

/// The client held this answer up (no window for it) past `server.send_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client held the answer up past server.send_timeout")]
pub struct HeldUp;

/// An HTTP/2 answer's body where the connection's watchdog can reach it.
struct Held {
    /// The watchdog's tick count (plus one) when the body began waiting for the server to
    /// take its next piece; 0 while it is not waiting. Only the answer's own task writes it
    /// (the watchdog reads it, and leaves it as it is when it cuts the answer off).
    since: AtomicU64,
    /// Taken by the watchdog when the answer is cut off.
    body: Mutex<Option<BoxBody>>,
    /// The audit event's flag ([`crate::audited::Undelivered`]): set when the answer is cut
    /// off or let go before the client was handed all of it.
    undelivered: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Held {
    /// The answer is not whole, whatever its body said of its end.
    fn undelivered(&self) {
        if let Some(f) = &self.undelivered {
            f.store(true, Ordering::Relaxed);
        }
    }
}

impl Held {
    fn body(&self) -> MutexGuard<'_, Option<BoxBody>> {
        // A poll that panicked left the body as it was: still the body.
        self.body
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The register of a connection's HTTP/2 answers that have more of their body to send, and
/// the watchdog's tick count they are timed by.
#[derive(Default)]
pub struct HeldAnswers {
    ticks: AtomicU64,
    slots: Mutex<Slots>,
}

impl std::fmt::Debug for HeldAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldAnswers")
            .field("ticks", &self.ticks.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A slab: answers come and go by key.
#[derive(Default)]
struct Slots {
    items: Vec<Option<Arc<Held>>>,
    free: Vec<usize>,
}

impl HeldAnswers {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(&self, held: Arc<Held>) -> usize {
        let mut s = self.slots();
        match s.free.pop() {
            Some(key) => {
                if let Some(slot) = s.items.get_mut(key) {
                    *slot = Some(held);
                }
                key
            }
            None => {
                s.items.push(Some(held));
                s.items.len() - 1
            }
        }
    }

    fn unregister(&self, key: usize) {
        let mut s = self.slots();
        if let Some(slot) = s.items.get_mut(key)
            && slot.take().is_some()
        {
            s.free.push(key);
        }
    }

    /// For the watchdog, as it closes the connection: every answer still waiting on the
    /// client (its last piece, or more, not sent) is not whole, whatever its body said.
    pub fn abandon_waiting(&self) {
        let s = self.slots();
        for held in s.items.iter().flatten() {
            if held.since.load(Ordering::Relaxed) != 0 {
                held.undelivered();
            }
        }
    }

    /// Whether any answer with more of its body to send is registered (for the watchdog).
    pub fn any(&self) -> bool {
        let s = self.slots();
        s.items.len() > s.free.len()
    }

    /// The stamp of a wait that begins now.
    fn stamp(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed) + 1
    }

    /// For the watchdog, at each of its ticks: counts it.
    pub fn tick(&self) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// For the watchdog: cuts off every answer that has waited for the server to take its
    /// next piece for `ticks` ticks or more, and returns how many it cut. A wait is stamped
    /// with the tick to come, so when it is cut it has lasted more than `ticks` tick
    /// intervals and less than `ticks + 1`: with `ticks` = ⌈send timeout ÷ interval⌉ + 2 no
    /// answer is cut before the send timeout, none more than four intervals after it, and the
    /// connection-wide judgement (which closes a connection whose answers all stand still once
    /// they have for the send timeout, counted from the first tick that saw them waiting)
    /// comes first.
    pub fn cut_held_up(&self, ticks: u64) -> usize {
        let now = self.ticks.load(Ordering::Relaxed);
        let mut cut = Vec::new();
        {
            let s = self.slots();
            for held in s.items.iter().flatten() {
                let since = held.since.load(Ordering::Relaxed);
                // A body being polled right now is moving: not cut.
                if since != 0
                    && now.saturating_sub(since) >= ticks
                    && let Ok(mut body) = held.body.try_lock()
                    && let Some(b) = body.take()
                {
                    held.undelivered();
                    cut.push(b);
                }
            }
        }
        // Dropped outside the locks: a body's drop closes its upstream exchange and writes its
        // audit event.
        cut.len()
    }
}

/// An answer's body on its way to the client; watched on HTTP/2 connections.
pub struct ToClient {
    inner: Inner,
}

enum Inner {
    /// Not watched (HTTP/1.1 through hyper), or with nothing more to send.
    Plain(BoxBody),
    Watched {
        held: Arc<Held>,
        activity: Arc<Activity>,
        /// In the connection's register.
        key: usize,
        /// Over, as the server is told (`is_end_stream`): the body's last byte handed on, or
        /// trailers, or no more; kept here: the server asks after every piece, and the body is
        /// behind a lock.
        ended: bool,
        /// What is left of the body's last frame, handed on in slices ([`slice`]).
        rest: Option<Bytes>,
        /// The body failed, or the watchdog cut it off: its end is the gateway's doing.
        failed: bool,
        /// Where a body the client reset before its end is counted (see
        /// [`ToClient::counting_resets`]).
        resets: Option<Arc<crate::resets::ResetWatch>>,
    },
}

impl ToClient {
    /// `watch`: the connection's activity when the answer is watched (HTTP/2). An answer with
    /// a body to come waits from the start: the server takes the first piece only once the
    /// client's window has room. `undelivered`: the audit event's flag, set when the answer is
    /// cut off or let go before all of it was handed on.
    pub fn new(
        body: BoxBody,
        watch: Option<Arc<Activity>>,
        undelivered: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Self {
        let inner = match watch {
            Some(activity) if !body.is_end_stream() => {
                activity.answer_waits();
                let held = Arc::new(Held {
                    since: AtomicU64::new(activity.held.stamp()),
                    body: Mutex::new(Some(body)),
                    undelivered,
                });
                let key = activity.held.register(held.clone());
                Inner::Watched {
                    held,
                    activity,
                    key,
                    ended: false,
                    rest: None,
                    failed: false,
                    resets: None,
                }
            }
            _ => Inner::Plain(body),
        };
        ToClient { inner }
    }

    /// Counts in `resets` an answer the client resets before its end (its body dropped
    /// unfinished, through no failure of its own nor a cut-off of the gateway's): a stream
    /// reset once its answer's head came frees its slot as one reset before the answer does,
    /// so the connection's reset rate (`server.http2_max_resets_per_second`) sees both.
    pub fn counting_resets(mut self, resets: Arc<crate::resets::ResetWatch>) -> Self {
        if let Inner::Watched { resets: slot, .. } = &mut self.inner {
            *slot = Some(resets);
        }
        self
    }
}

impl Body for ToClient {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (held, activity, ended, rest, failed) = match &mut self.get_mut().inner {
            Inner::Plain(body) => return Pin::new(body).poll_frame(cx),
            Inner::Watched {
                held,
                activity,
                ended,
                rest,
                failed,
                ..
            } => (held, activity, ended, rest, failed),
        };
        // Waiting (stamped) until now: the server takes the next piece.
        if held.since.load(Ordering::Relaxed) != 0 {
            held.since.store(0, Ordering::Relaxed);
            activity.answer_done_waiting(true);
        }
        let (r, more) = {
            let mut body = held.body();
            let Some(body) = body.as_mut() else {
                // Cut off by the watchdog: the server resets the stream.
                *failed = true;
                return Poll::Ready(Some(Err(Box::new(HeldUp))));
            };
            let r = match rest.take() {
                // The rest of the last frame first. (A data frame: the body is over after it
                // if it said so then, which it still says.)
                Some(data) => {
                    let last = body.is_end_stream();
                    let piece = slice(data, last, rest);
                    *ended = last && rest.is_none();
                    Poll::Ready(Some(Ok(Frame::data(piece))))
                }
                None => {
                    let r = Pin::new(&mut *body).poll_frame(cx);
                    // Over when the body says so, when it has no more (a body that never says
                    // it is over: a chunked or close-delimited answer, a replayed one), and
                    // after trailers (the server asks no more then): a body dropped past any of
                    // these was delivered.
                    let over = body.is_end_stream()
                        || match &r {
                            Poll::Ready(None) => true,
                            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
                            _ => false,
                        };
                    let r = match r {
                        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) => Poll::Ready(Some(Ok(Frame::data(slice(data, over, rest))))),
                            Err(frame) => Poll::Ready(Some(Ok(frame))),
                        },
                        r => r,
                    };
                    *ended = over && rest.is_none();
                    *failed |= matches!(r, Poll::Ready(Some(Err(_))));
                    r
                }
            };
            // Any piece handed on, the last one too: the server takes a piece and holds it
            // until the stream's window has room, and only then asks for the next — or, after
            // the last, lets the answer go (drops it).
            let more = matches!(r, Poll::Ready(Some(Ok(_))));
            (r, more)
        };
        // A piece handed on: waiting again, for the server to send it and come back, or let go.
        // (Pending is the upstream's wait, not the client's.)
        if more {
            activity.answer_waits();
            held.since.store(activity.held.stamp(), Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Plain(body) => body.is_end_stream(),
            // (A body cut off is not over: the server is to poll it and be told it failed.)
            Inner::Watched { ended, .. } => *ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Plain(body) => body.size_hint(),
            Inner::Watched { held, rest, .. } => {
                let hint = held
                    .body()
                    .as_ref()
                    .map_or_else(SizeHint::default, Body::size_hint);
                let Some(r) = rest else { return hint };
                // The rest of the last frame, not yet handed on, is still to come. (Set on a
                // fresh hint: the setters check lower ≤ upper.)
                let n = r.len() as u64;
                let mut with_rest = SizeHint::new();
                with_rest.set_lower(hint.lower().saturating_add(n));
                if let Some(u) = hint.upper() {
                    with_rest.set_upper(u.saturating_add(n));
                }
                with_rest
            }
        }
    }
}

/// The most of a body's frame handed to the server at once. The server takes a piece, gives it
/// to the HTTP/2 layer once the stream's window has room for one byte of it — the layer buffers
/// the whole piece whatever the window — and takes the next, which it holds until the layer
/// has sent the one before and the window has room again. So a
/// frame handed whole (a filtered answer is one frame of up to its `max_bytes`) would wait, out
/// of this watch, in the layer's memory for as long as the client keeps its window shut and
/// pings; in slices, what waits there is a slice, and the rest waits here, watched.
const SLICE: usize = 16 * 1024;

/// The next piece of `data` to hand on, the rest left in `rest`: at most [`SLICE`] bytes, and,
/// of a body's last frame (`last`), never its last byte, which goes alone after the rest. The
/// server sends that byte (with the end of stream) only once the window has room for it, which
/// is once the client took the rest, and lets the answer go only then: until then the answer
/// waits, watched, under `server.send_timeout` — told with the last slice, the answer would be
/// let go as soon as the layer buffered it, and a client could hold every answer that is one
/// small frame (most are) for as long as it pinged. Slices share `data`'s memory (no copy).
fn slice(mut data: Bytes, last: bool, rest: &mut Option<Bytes>) -> Bytes {
    let n = data.len();
    let take = if n > SLICE {
        SLICE
    } else if last && n > 1 {
        n - 1
    } else {
        return data;
    };
    *rest = Some(data.split_off(take));
    data
}

impl Drop for ToClient {
    fn drop(&mut self) {
        if let Inner::Watched {
            held,
            activity,
            key,
            ended,
            failed,
            resets,
            ..
        } = &self.inner
        {
            if held.since.load(Ordering::Relaxed) != 0 {
                activity.answer_done_waiting(false);
            }
            if !*ended {
                held.undelivered();
            }
            activity.held.unregister(*key);
            if let Some(resets) = resets
                && !*ended
                && !*failed
                && held.body().is_some()
            {
                resets.client_reset();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use http_body_util::BodyExt;

    fn body(pieces: &[&'static str]) -> BoxBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = pieces
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    /// Only an answer dropped before its end counts as a client reset: one taken to its end
    /// — whether its body says it is over (a stream body never does), or it ends in trailers
    /// — does not, however many there are.
    #[tokio::test]
    async fn only_answers_dropped_unfinished_count_as_resets() {
        let a = Arc::new(Activity::default());
        let resets = Arc::new(crate::resets::ResetWatch::new(1));
        let watched =
            |b: BoxBody| ToClient::new(b, Some(a.clone()), None).counting_resets(resets.clone());
        for _ in 0..3 {
            let b = watched(body(&["one", "two"]));
            let _ = b.collect().await.unwrap();
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(trailers)),
        ];
        let with_trailers =
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let mut b = watched(with_trailers);
        // The server stops at the trailers frame.
        while let Some(f) = b.frame().await {
            if f.unwrap().is_trailers() {
                break;
            }
        }
        drop(b);
        // None counted: one reset now is the first (the limit is 1, not passed).
        assert!(!resets.client_reset());
        // One dropped halfway counts: the limit passed.
        let mut b = watched(body(&["one", "two"]));
        let _ = b.frame().await;
        drop(b);
        assert!(resets.client_reset());
    }

    #[tokio::test]
    async fn an_answer_waits_until_each_piece_is_taken_and_not_after_its_end() {
        let a = Arc::new(Activity::default());
        let mut b = ToClient::new(body(&["one", "two"]), Some(a.clone()), None);
        assert_eq!(a.answers(), (1, 0), "waits for its first piece to be taken");
        let f = b.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "one");
        // A stream body does not know it has ended until asked again: still waiting.
        assert_eq!(a.answers(), (1, 1));
        b.frame().await.unwrap().unwrap();
        assert_eq!(a.answers(), (1, 2));
        assert!(b.frame().await.is_none());
        assert_eq!(a.answers(), (0, 3));
        drop(b);
        assert_eq!(a.answers(), (0, 3));
    }

    /// A body's frames go to the server in slices of at most 16 KiB, and the last byte of a
    /// body that knows its end goes alone, with that end: the server hands a piece on only
    /// when the window has room, so until the client took the rest, the answer waits here,
    /// watched — and can be cut off meanwhile.
    #[tokio::test]
    async fn frames_go_in_slices_and_the_last_byte_alone() {
        let a = Arc::new(Activity::default());
        let full = |data: Bytes| {
            http_body_util::Full::new(data)
                .map_err(|never| match never {})
                .boxed_unsync()
        };
        let big = Bytes::from((0..40_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let mut b = ToClient::new(full(big.clone()), Some(a.clone()), None);
        assert_eq!(b.size_hint().exact(), Some(40_000));
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        // As the server does: piece after piece until the body says it is over.
        while !b.is_end_stream() {
            let d = b.frame().await.unwrap().unwrap().into_data().unwrap();
            sizes.push(d.len());
            got.extend_from_slice(&d);
            assert_eq!(a.answers().0, 1, "waits for the server to send the piece");
            assert_eq!(b.size_hint().exact(), Some((40_000 - got.len()) as u64));
        }
        assert_eq!(sizes, [16384, 16384, 7231, 1]);
        assert_eq!(got, big);
        // The server holds the last byte until the window has room, then lets the answer go.
        assert_eq!(a.answers(), (1, 4));
        drop(b);
        assert_eq!(a.answers(), (0, 4));

        // A small answer: all but its last byte, then that byte, then the end.
        let mut b = ToClient::new(
            full(Bytes::from_static(b"{\"all\":1}")),
            Some(a.clone()),
            None,
        );
        let f = b.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "{\"all\":1");
        assert!(!b.is_end_stream());
        // The server does not come back for the last byte (no window): cut off.
        for _ in 0..3 {
            a.held.tick();
        }
        assert_eq!(a.held.cut_held_up(2), 1);
        let e = b.frame().await.unwrap().unwrap_err();
        assert!(e.is::<HeldUp>(), "{e}");
        drop(b);
        assert_eq!(a.answers().0, 0);

        // A one-byte answer goes as it is; so does an unwatched one.
        let mut b = ToClient::new(full(Bytes::from_static(b"x")), Some(a.clone()), None);
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "x");
        assert!(b.is_end_stream());
        drop(b);
        let mut b = ToClient::new(full(big.clone()), None, None);
        assert_eq!(
            b.frame().await.unwrap().unwrap().into_data().unwrap().len(),
            40_000
        );
    }

    #[tokio::test]
    async fn an_answer_given_up_while_waiting_stops_waiting() {
        let a = Arc::new(Activity::default());
        let b = ToClient::new(body(&["one"]), Some(a.clone()), None);
        assert_eq!(a.answers(), (1, 0));
        drop(b);
        assert_eq!(a.answers(), (0, 0), "dropped unread: no step taken");
        // An empty answer never waits; an unwatched one is not counted.
        let empty = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        let b = ToClient::new(empty, Some(a.clone()), None);
        assert_eq!(a.answers(), (0, 0));
        drop(b);
        let mut b = ToClient::new(body(&["one"]), None, None);
        b.frame().await.unwrap().unwrap();
        assert_eq!(a.answers(), (0, 0));
    }

    #[tokio::test]
    async fn an_answer_held_up_alone_is_cut_off_after_its_ticks_and_then_fails() {
        let a = Arc::new(Activity::default());
        let mut held = ToClient::new(body(&["one", "two"]), Some(a.clone()), None);
        let mut moving = ToClient::new(body(&["a", "b", "c", "d"]), Some(a.clone()), None);
        // Three ticks: the moving answer takes a step at each, the held one none.
        for _ in 0..3 {
            a.held.tick();
            moving.frame().await.unwrap().unwrap();
            assert_eq!(a.held.cut_held_up(3), 0, "not yet");
        }
        a.held.tick();
        assert_eq!(a.held.cut_held_up(3), 1, "the held answer, after 3 ticks");
        assert_eq!(a.held.cut_held_up(3), 0, "cut once");
        // Cut off: not over, and failing when asked.
        assert!(!held.is_end_stream());
        let e = held.frame().await.unwrap().unwrap_err();
        assert!(e.is::<HeldUp>(), "{e}");
        // The moving one goes on to its end.
        moving.frame().await.unwrap().unwrap();
        assert!(moving.frame().await.is_none());
        drop((held, moving));
        assert_eq!(a.answers().0, 0, "nothing left waiting");
    }

    #[test]
    fn the_register_reuses_its_places() {
        let r = HeldAnswers::default();
        let held = || {
            Arc::new(Held {
                since: AtomicU64::new(0),
                body: Mutex::new(None),
                undelivered: None,
            })
        };
        let a = r.register(held());
        let b = r.register(held());
        assert_ne!(a, b);
        r.unregister(a);
        r.unregister(a);
        assert_eq!(r.register(held()), a, "the freed place, once");
        assert_eq!(r.register(held()), 2);
        assert_eq!(r.slots().items.len(), 3);
    }
}
