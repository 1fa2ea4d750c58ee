//! A request body watched while it streams: the route's size limit holds whatever the framing
//! (chunked, HTTP/2 DATA frames), and a client that trickles its body — a gap longer than the
//! read timeout, or an average rate below the minimum — is cut off. Nothing is buffered.
//! Trailers end the body and go no further: a request's trailer fields would reach the upstream
//! unchecked by every step (identity fields the gateway strips from heads, credentials), and no
//! common protocol sends them (gRPC's trailers are the answer's).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use portcullis_core::{BodyLimitExceeded, BodyTooSlow, BoxBody, BoxError, RejectReason};
use tokio::time::{Instant, Sleep};

/// Why a body was cut off, and whether it was read to its end: shared with the code that
/// answers the client.
#[derive(Debug, Default)]
pub struct Tripped {
    reason: AtomicU8,
    ended: AtomicBool,
}

impl Tripped {
    pub fn reason(&self) -> Option<RejectReason> {
        match self.reason.load(Ordering::Acquire) {
            1 => Some(RejectReason::BodyTooLarge),
            2 => Some(RejectReason::BodyTimeout),
            _ => None,
        }
    }

    fn set(&self, v: u8) {
        self.reason.store(v, Ordering::Release);
    }

    /// Whether the body was read whole (its last frame was taken).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    fn set_ended(&self) {
        self.ended.store(true, Ordering::Release);
    }
}

/// How a body is watched.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    pub limit: u64,
    /// Longest gap between two pieces of the body.
    pub read_timeout: Duration,
    /// Slowest average rate, checked once `MIN_RATE_GRACE` has passed; 0 disables.
    pub min_bytes_per_second: u64,
}

/// The minimum rate is judged only after this long, so short pauses at the start do not count.
pub const MIN_RATE_GRACE: Duration = Duration::from_secs(10);

pin_project_lite::pin_project! {
    pub struct LimitedBody {
        #[pin]
        inner: BoxBody,
        remaining: u64,
        received: u64,
        rules: BodyRules,
        started: Instant,
        // When the last piece arrived (the start before the first).
        last: Instant,
        // Whether gaps are timed (not for a size-only watcher).
        timed: bool,
        // Armed the first time the body has nothing to give: a body whose bytes are all there
        // already (most small ones) never registers a timer.
        gap: Option<Pin<Box<Sleep>>>,
        tripped: Arc<Tripped>,
    }
}

impl LimitedBody {
    pub fn new(inner: BoxBody, rules: BodyRules, tripped: Arc<Tripped>) -> Self {
        let started = Instant::now();
        LimitedBody {
            inner,
            remaining: rules.limit,
            received: 0,
            rules,
            started,
            last: started,
            timed: true,
            gap: None,
            tripped,
        }
    }
}

impl LimitedBody {
    /// A watcher of size only (the timers run in the watcher put on the body when the request
    /// arrived, see `service.rs`), sharing that watcher's `tripped`.
    pub fn size_only(inner: BoxBody, limit: u64, tripped: Arc<Tripped>) -> Self {
        let started = Instant::now();
        LimitedBody {
            inner,
            remaining: limit,
            received: 0,
            rules: BodyRules {
                limit,
                read_timeout: Duration::MAX,
                min_bytes_per_second: 0,
            },
            started,
            last: started,
            timed: false,
            gap: None,
            tripped,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                this.tripped.set_ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.remaining {
                        this.tripped.set(1);
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded))));
                    }
                    *this.remaining -= n;
                    *this.received += n;
                }
                let now = Instant::now();
                let elapsed = now.duration_since(*this.started);
                if this.rules.min_bytes_per_second > 0 && elapsed > MIN_RATE_GRACE {
                    let floor = this
                        .rules
                        .min_bytes_per_second
                        .saturating_mul(elapsed.as_secs());
                    if *this.received < floor {
                        this.tripped.set(2);
                        return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
                    }
                }
                *this.last = now;
                // A timeout too long to be a point in time is no timeout.
                if let Some(gap) = this.gap.as_mut()
                    && let Some(deadline) = now.checked_add(this.rules.read_timeout)
                {
                    gap.as_mut().reset(deadline);
                }
                if this.inner.is_end_stream() {
                    this.tripped.set_ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if *this.timed
                    && let Some(deadline) = this.last.checked_add(this.rules.read_timeout)
                {
                    let gap = this
                        .gap
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if gap.as_mut().poll(cx).is_ready() {
                        this.tripped.set(2);
                        return Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
                    }
                }
                Poll::Pending
            }
            done => {
                *this.gap = None;
                if matches!(done, Poll::Ready(None)) {
                    this.tripped.set_ended();
                }
                done
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads at most `max` bytes from the start of a body (for an audit excerpt). A body that fails
/// mid-read yields what arrived; the rest is never read.
pub async fn read_prefix(mut body: BoxBody, max: usize) -> bytes::Bytes {
    use http_body_util::BodyExt as _;
    let mut buf = bytes::BytesMut::new();
    while buf.len() < max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(max - buf.len());
                    buf.extend_from_slice(&data[..take]);
                }
            }
            _ => break,
        }
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn body(n: usize) -> BoxBody {
        Full::new(Bytes::from(vec![b'x'; n]))
            .map_err(|e| -> BoxError { match e {} })
            .boxed_unsync()
    }

    fn rules(limit: u64) -> BodyRules {
        BodyRules {
            limit,
            read_timeout: Duration::from_secs(30),
            min_bytes_per_second: 0,
        }
    }

    #[tokio::test]
    async fn passes_within_limit_and_trips_beyond() {
        let t = Arc::new(Tripped::default());
        assert!(
            LimitedBody::new(body(10), rules(10), t.clone())
                .collect()
                .await
                .is_ok()
        );
        assert_eq!(t.reason(), None);
        assert!(
            LimitedBody::new(body(11), rules(10), t.clone())
                .collect()
                .await
                .is_err()
        );
        assert_eq!(t.reason(), Some(RejectReason::BodyTooLarge));
    }

    /// `ended` says whether the body was read to its end: not after a part of it, nor when it
    /// was cut off; yes once its last frame was taken (whether or not the reader then asks
    /// for more), or the end was met.
    #[tokio::test]
    async fn ended_only_once_the_last_frame_was_taken() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
        let stream = StreamBody::new(tokio_stream_shim(rx)).boxed_unsync();
        let t = Arc::new(Tripped::default());
        let mut b = LimitedBody::new(stream, rules(100), t.clone());
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        assert!(b.frame().await.is_some());
        assert!(!t.ended());
        drop(tx);
        assert!(b.frame().await.is_none());
        assert!(t.ended());

        let t = Arc::new(Tripped::default());
        let mut b = LimitedBody::new(body(10), rules(100), t.clone());
        assert!(b.frame().await.is_some());
        assert!(t.ended(), "a body whose last frame was taken has ended");

        let t = Arc::new(Tripped::default());
        assert!(
            LimitedBody::new(body(11), rules(10), t.clone())
                .collect()
                .await
                .is_err()
        );
        assert!(!t.ended(), "a body cut off has not ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_is_all_there_arms_no_timer() {
        let t = Arc::new(Tripped::default());
        let mut b = LimitedBody::new(body(10), rules(10), t.clone());
        let data = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(data.len(), 10);
        assert!(b.gap.is_none());
        assert!(b.frame().await.is_none());
        assert_eq!(t.reason(), None);
    }

    /// A request's trailers end its body here: the upstream gets the data, no trailer field.
    #[tokio::test]
    async fn request_trailers_go_no_further() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = StreamBody::new(tokio_stream_shim(rx)).boxed_unsync();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-user-id", http::HeaderValue::from_static("admin"));
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello"))))
            .await
            .unwrap();
        tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
        drop(tx);
        let t = Arc::new(Tripped::default());
        let got = LimitedBody::size_only(stream, 100, t.clone())
            .collect()
            .await
            .unwrap();
        assert!(got.trailers().is_none());
        assert_eq!(got.to_bytes().as_ref(), b"hello");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_beyond_any_point_in_time_is_no_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = StreamBody::new(tokio_stream_shim(rx)).boxed_unsync();
        let r = BodyRules {
            limit: 100,
            read_timeout: Duration::MAX,
            min_bytes_per_second: 0,
        };
        let mut b = LimitedBody::new(stream, r, Arc::new(Tripped::default()));
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        assert!(b.frame().await.unwrap().is_ok());
        // Waiting for the next piece: no deadline to compute, no panic, still waiting.
        let next = tokio::time::timeout(Duration::from_secs(3600), b.frame()).await;
        assert!(next.is_err());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = StreamBody::new(tokio_stream_shim(rx)).boxed_unsync();
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        let t = Arc::new(Tripped::default());
        let r = BodyRules {
            limit: 100,
            read_timeout: Duration::from_secs(5),
            min_bytes_per_second: 0,
        };
        let res = LimitedBody::new(stream, r, t.clone()).collect().await;
        assert!(res.is_err());
        assert_eq!(t.reason(), Some(RejectReason::BodyTimeout));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_below_the_minimum_rate_is_cut_off() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = StreamBody::new(tokio_stream_shim(rx)).boxed_unsync();
        tokio::spawn(async move {
            for _ in 0..100 {
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let t = Arc::new(Tripped::default());
        let r = BodyRules {
            limit: 1000,
            read_timeout: Duration::from_secs(5),
            min_bytes_per_second: 10,
        };
        assert!(
            LimitedBody::new(stream, r, t.clone())
                .collect()
                .await
                .is_err()
        );
        assert_eq!(t.reason(), Some(RejectReason::BodyTimeout));
    }

    fn tokio_stream_shim(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
