//! A request body counted while it streams: the route's limit holds whatever the framing
//! (chunked, HTTP/2 DATA frames), without buffering.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use portcullis_core::{BoxBody, BoxError};

pin_project_lite::pin_project! {
    pub struct LimitedBody {
        #[pin]
        inner: BoxBody,
        remaining: u64,
        tripped: Arc<AtomicBool>,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's limit")]
pub struct BodyLimitExceeded;

impl LimitedBody {
    /// `tripped` is set when the limit is crossed, so the caller can answer 413 instead of a
    /// generic upstream failure.
    pub fn new(inner: BoxBody, limit: u64, tripped: Arc<AtomicBool>) -> Self {
        LimitedBody {
            inner,
            remaining: limit,
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
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > *this.remaining {
                        this.tripped.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded))));
                    }
                    *this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn body(n: usize) -> BoxBody {
        Full::new(Bytes::from(vec![b'x'; n]))
            .map_err(|e| -> BoxError { match e {} })
            .boxed_unsync()
    }

    #[tokio::test]
    async fn passes_within_limit_and_trips_beyond() {
        let flag = Arc::new(AtomicBool::new(false));
        let ok = LimitedBody::new(body(10), 10, flag.clone()).collect().await;
        assert!(ok.is_ok());
        assert!(!flag.load(Ordering::Acquire));
        let err = LimitedBody::new(body(11), 10, flag.clone()).collect().await;
        assert!(err.is_err());
        assert!(flag.load(Ordering::Acquire));
    }
}
