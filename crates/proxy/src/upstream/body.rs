//! The in-flight count of a target and the response body that holds it.
//!
//! A request occupies its target until the response body is finished — a slow download is
//! load as much as a slow head — so the count is released when the body ends, fails, or is
//! dropped (the client went away), not when the head arrives.
//!
//! Its trailer section, if any, loses the fields that may not be trailers
//! ([`portcullis_core::trailer_allowed`]) before any front sees it: the HTTP/1.1 front and
//! hyper's would leave them out, HTTP/2 would refuse the section (and break the answer) for a
//! hop-by-hop one, and pass on the rest (`content-length`, `set-cookie`, `authorization` …).
//!
//! The same body bounds the upstream's silence once its head has come: a wait for the next
//! piece longer than the upstream's `read_timeout` fails the body (the answer is cut off, the
//! upstream connection closed), so a target that stalls mid-answer does not hold the exchange
//! for as long as the client stays. Only the gateway's wait on the target is timed — the body
//! is asked for its next piece when the client's side can take it — and the timer is made the
//! first time the body has nothing to give: an answer that came whole with its head (most
//! small ones) never registers one.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use portcullis_core::BoxError;
use portcullis_telemetry::Metrics;
use tokio::time::{Instant, Sleep};

/// The upstream sent nothing more of its answer's body for its `read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing more of its answer for {0:?} (read_timeout)")]
pub struct UpstreamReadTimeout(pub Duration);

/// A target's in-flight count, and the names it is told by (for the log and the metric of an
/// answer cut off). Shared with the response bodies that hold a unit of the count.
pub(super) struct Load {
    pub(super) count: AtomicUsize,
    pub(super) upstream: Arc<str>,
    pub(super) target: Arc<str>,
    /// Where read timeouts are counted (none when the pool is built only to be checked).
    pub(super) metrics: Option<Arc<Metrics>>,
}

impl Load {
    pub(super) fn new(
        upstream: Arc<str>,
        target: Arc<str>,
        metrics: Option<Arc<Metrics>>,
    ) -> Arc<Load> {
        Arc::new(Load {
            count: AtomicUsize::new(0),
            upstream,
            target,
            metrics,
        })
    }
}

/// One unit of a target's in-flight count, given back on drop.
pub(super) struct InFlight(Arc<Load>);

impl InFlight {
    pub(super) fn new(load: &Arc<Load>) -> Self {
        // Relaxed: the count is a load estimate read by the balancer and metrics; it guards
        // no other memory.
        load.count.fetch_add(1, Ordering::Relaxed);
        InFlight(load.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that gives its in-flight unit back at its end, and fails when its
    /// upstream is silent for longer than `read_timeout`.
    pub(super) struct GuardedBody<B> {
        #[pin]
        inner: B,
        guard: Option<InFlight>,
        read_timeout: Duration,
        // Whether the last poll found nothing (the wait is timed from its start).
        waiting: bool,
        // Made the first time the body has nothing to give, reset at each wait after.
        gap: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> GuardedBody<B> {
    pub(super) fn new(inner: B, guard: InFlight, read_timeout: Duration) -> Self {
        GuardedBody {
            inner,
            guard: Some(guard),
            read_timeout,
            waiting: false,
            gap: None,
        }
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            // (A timer still set goes with the body, which its reader drops next.)
            Poll::Ready(None) => {
                this.guard.take();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A failed body will not be read further: the exchange is over.
                this.guard.take();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(mut frame))) => {
                *this.waiting = false;
                // A target's trailers, from either client, as every front may pass them on:
                // without the fields that may not be trailers (an HTTP/2 front would refuse
                // the whole section for a hop-by-hop one, after the body).
                if let Some(trailers) = frame.trailers_mut() {
                    portcullis_core::remove_disallowed_trailers(trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => waited(this.waiting, this.gap, this.guard, *this.read_timeout, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body had nothing to give: its wait on the target is timed from here (the timer made the
/// first time), and past `read_timeout` the body fails. Out of line: an answer that came whole
/// with its head never waits, and the rest of `poll_frame` stays small enough to be inlined
/// into its caller.
#[cold]
#[inline(never)]
fn waited(
    waiting: &mut bool,
    gap: &mut Option<Pin<Box<Sleep>>>,
    guard: &mut Option<InFlight>,
    read_timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if !*waiting {
        *waiting = true;
        // A timeout too long to be a point in time is no timeout.
        match Instant::now().checked_add(read_timeout) {
            Some(deadline) => match gap.as_mut() {
                Some(g) => g.as_mut().reset(deadline),
                None => *gap = Some(Box::pin(tokio::time::sleep_until(deadline))),
            },
            None => *gap = None,
        }
    }
    if let Some(g) = gap.as_mut()
        && g.as_mut().poll(cx).is_ready()
    {
        if let Some(InFlight(load)) = guard.take().as_ref() {
            if let Some(m) = &load.metrics {
                m.upstream_read_timeouts(&load.upstream, &load.target, 1);
            }
            tracing::warn!(
                upstream = %load.upstream,
                target = %load.target,
                ?read_timeout,
                "the target sent nothing more of its answer for the upstream's read_timeout: answer cut off"
            );
        }
        *gap = None;
        return Poll::Ready(Some(Err(Box::new(UpstreamReadTimeout(read_timeout)))));
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use http_body_util::BodyExt;

    /// A body that gives `pieces`, each after waiting `gap`, then ends (or waits for ever).
    fn paced(pieces: usize, gap: Duration, then_silent: bool) -> portcullis_core::BoxBody {
        let frames = futures_util::stream::unfold(0usize, move |i| async move {
            tokio::time::sleep(gap).await;
            if i == pieces {
                if then_silent {
                    std::future::pending::<()>().await;
                }
                return None;
            }
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"piece"))),
                i + 1,
            ))
        });
        http_body_util::StreamBody::new(frames).boxed_unsync()
    }

    #[tokio::test(start_paused = true)]
    async fn each_wait_on_the_upstream_is_timed_afresh() {
        let load = Load::new("u".into(), "127.0.0.1:1".into(), None);
        // Ten gaps of 0.9 s under a 1 s read timeout: 9 s in all, never one wait too long.
        let body = GuardedBody::new(
            paced(10, Duration::from_millis(900), false),
            InFlight::new(&load),
            Duration::from_secs(1),
        );
        assert_eq!(load.count.load(Ordering::Relaxed), 1);
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 50);
        assert_eq!(
            load.count.load(Ordering::Relaxed),
            0,
            "the target is given back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_upstream_fails_the_body_after_its_read_timeout() {
        let load = Load::new("u".into(), "127.0.0.1:1".into(), None);
        let mut body = GuardedBody::new(
            paced(2, Duration::from_millis(100), true),
            InFlight::new(&load),
            Duration::from_secs(1),
        );
        let started = Instant::now();
        for _ in 0..2 {
            body.frame().await.unwrap().unwrap();
        }
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.is::<UpstreamReadTimeout>(), "{e}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1200) && waited < Duration::from_millis(1300),
            "{waited:?}: the two pieces' 0.2 s, then 1 s of waiting for the third (its gap of \
             0.1 s before the silence counts in it)"
        );
        assert_eq!(
            load.count.load(Ordering::Relaxed),
            0,
            "the target is given back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_timeout_too_long_to_be_a_point_in_time_is_none() {
        let load = Load::new("u".into(), "127.0.0.1:1".into(), None);
        let mut body = GuardedBody::new(
            paced(0, Duration::from_millis(1), true),
            InFlight::new(&load),
            Duration::MAX,
        );
        let waited = tokio::time::timeout(Duration::from_secs(3600), body.frame()).await;
        assert!(waited.is_err(), "still waiting after an hour");
        assert_eq!(
            load.count.load(Ordering::Relaxed),
            1,
            "the exchange still holds its target"
        );
    }
}
