//! HTTP/2 answers the client holds up.
//!
//! An HTTP/2 client controls how fast it is sent to: its flow-control window. One that opens
//! no window (or keeps it at a trickle) stalls its answers while pings, settings or other
//! streams keep its connection busy, so the idle timeout never sees it idle — and each stalled
//! answer holds its upstream exchange (the "slow read" of HTTP/2). [`ToClient`] wraps every
//! HTTP/2 answer's body and tells the connection's [`Activity`] while the body waits for the
//! server to take its next piece (which the server does only when the window has room); the
//! connection's watchdog closes a connection whose answers have waited `server.send_timeout`
//! with none of them taking a step.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use portcullis_core::{BoxBody, BoxError};

use crate::sniff::Activity;

/// An answer's body on its way to the client; watched on HTTP/2 connections.
pub struct ToClient {
    body: BoxBody,
    /// The connection's activity, on HTTP/2 only.
    watch: Option<Arc<Activity>>,
    /// Whether the body waits for the server to take its next piece.
    waiting: bool,
}

impl ToClient {
    /// `watch`: the connection's activity when the answer is watched (HTTP/2). An answer with
    /// a body to come waits from the start: the server takes the first piece only once the
    /// client's window has room.
    pub fn new(body: BoxBody, watch: Option<Arc<Activity>>) -> Self {
        let waiting = match &watch {
            Some(a) if !body.is_end_stream() => {
                a.answer_waits();
                true
            }
            _ => false,
        };
        ToClient {
            body,
            watch,
            waiting,
        }
    }
}

impl Body for ToClient {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(watch) = &this.watch else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        if this.waiting {
            this.waiting = false;
            watch.answer_done_waiting(true);
        }
        let r = Pin::new(&mut this.body).poll_frame(cx);
        // A piece handed on, more to come: waiting again, for the server to take the next.
        // (Pending is the upstream's wait, not the client's.)
        if matches!(r, Poll::Ready(Some(Ok(_)))) && !this.body.is_end_stream() {
            watch.answer_waits();
            this.waiting = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ToClient {
    fn drop(&mut self) {
        if self.waiting
            && let Some(watch) = &self.watch
        {
            watch.answer_done_waiting(false);
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

    #[tokio::test]
    async fn an_answer_waits_until_each_piece_is_taken_and_not_after_its_end() {
        let a = Arc::new(Activity::default());
        let mut b = ToClient::new(body(&["one", "two"]), Some(a.clone()));
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

    #[tokio::test]
    async fn an_answer_given_up_while_waiting_stops_waiting() {
        let a = Arc::new(Activity::default());
        let b = ToClient::new(body(&["one"]), Some(a.clone()));
        assert_eq!(a.answers(), (1, 0));
        drop(b);
        assert_eq!(a.answers(), (0, 0), "dropped unread: no step taken");
        // An empty answer never waits; an unwatched one is not counted.
        let empty = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        let b = ToClient::new(empty, Some(a.clone()));
        assert_eq!(a.answers(), (0, 0));
        drop(b);
        let mut b = ToClient::new(body(&["one"]), None);
        b.frame().await.unwrap().unwrap();
        assert_eq!(a.answers(), (0, 0));
    }
}
