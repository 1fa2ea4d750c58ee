//! The request as the pipeline sees it: a head and a body that is streamed unless a step asks
//! for it, and then buffered once, up to a limit, for every later step to reuse.

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::BodyExt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A type-erased streaming body.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The request body in one of its states.
pub enum RequestBody {
    /// Not yet read: streamed to the upstream as it arrives.
    Streaming(BoxBody),
    /// Read whole by a step (within the limit it gave).
    Buffered(Bytes),
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBody::Streaming(_) => f.write_str("Streaming"),
            RequestBody::Buffered(b) => write!(f, "Buffered({} bytes)", b.len()),
        }
    }
}

/// The error a watched body returns when it exceeds its size limit (the engine's watcher;
/// steps that buffer the body recognise it by downcasting).
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's limit")]
pub struct BodyLimitExceeded;

/// The error a watched body returns when the client sends it too slowly.
#[derive(Debug, thiserror::Error)]
#[error("request body arrived too slowly")]
pub struct BodyTooSlow;

/// What [`GatewayRequest::buffer_prefix`] found.
#[derive(Debug)]
pub enum Prefix<'a> {
    /// The whole body, within the limit (now buffered).
    Whole(&'a Bytes),
    /// The body is longer than the limit; it is left streaming, whole (what was read is put
    /// back in front of the rest).
    Longer,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("request body could not be read: {0}")]
    Read(BoxError),
}

impl BodyError {
    /// The refusal a step gives when it could not buffer the body: 413 over the limit, 408
    /// when the client trickled it, 400 when it broke off.
    pub fn into_rejection(self) -> crate::Rejection {
        use crate::RejectReason;
        match self {
            BodyError::TooLarge { limit } => crate::Rejection::new(
                RejectReason::BodyTooLarge,
                format!("the request body exceeds {limit} bytes"),
            ),
            BodyError::Read(err) if err.is::<BodyTooSlow>() => crate::Rejection::new(
                RejectReason::BodyTimeout,
                "the request body arrived too slowly",
            ),
            BodyError::Read(_) => crate::Rejection::new(
                RejectReason::BodyReadFailed,
                "the request body could not be read",
            ),
        }
    }
}

/// A request under inspection. The head is boxed so that handing the request from layer to
/// layer (server, steps, forwarding, the upstream client) moves a pointer, not the head's
/// couple of hundred bytes into each layer's future.
#[derive(Debug)]
pub struct GatewayRequest {
    pub head: Box<http::request::Parts>,
    pub body: RequestBody,
}

impl GatewayRequest {
    pub fn new(head: impl Into<Box<http::request::Parts>>, body: BoxBody) -> Self {
        GatewayRequest {
            head: head.into(),
            body: RequestBody::Streaming(body),
        }
    }

    /// Reads the body whole, up to `limit` bytes, once. Later calls return the same buffer.
    pub async fn buffer_body(&mut self, limit: u64) -> Result<&Bytes, BodyError> {
        if let RequestBody::Streaming(body) = &mut self.body {
            if body.size_hint().lower() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            let mut buf = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(BodyError::Read)?;
                if let Ok(data) = frame.into_data() {
                    if (buf.len() + data.len()) as u64 > limit {
                        return Err(BodyError::TooLarge { limit });
                    }
                    buf.extend_from_slice(&data);
                }
            }
            self.body = RequestBody::Buffered(buf.freeze());
        }
        match &self.body {
            RequestBody::Buffered(b) => Ok(b),
            RequestBody::Streaming(_) => Err(BodyError::Read("body state lost".into())),
        }
    }

    /// Puts bytes already read from the body back in front of what is left of it: a streaming
    /// body then gives them first (its length hint counting them), a buffered one holds them
    /// before its own.
    pub fn put_back(&mut self, head: Bytes) {
        if head.is_empty() {
            return;
        }
        match &mut self.body {
            RequestBody::Streaming(body) => {
                let rest = std::mem::replace(
                    body,
                    http_body_util::Empty::new()
                        .map_err(|e| -> BoxError { match e {} })
                        .boxed_unsync(),
                );
                *body = Replayed {
                    head: Some(head),
                    rest,
                }
                .boxed_unsync();
            }
            RequestBody::Buffered(b) => {
                let mut whole = BytesMut::with_capacity(head.len() + b.len());
                whole.extend_from_slice(&head);
                whole.extend_from_slice(b);
                *b = whole.freeze();
            }
        }
    }

    /// Reads the body whole if it fits in `limit` bytes; a longer body is left streaming,
    /// intact, with what was read put back in front of the rest.
    pub async fn buffer_prefix(&mut self, limit: u64) -> Result<Prefix<'_>, BodyError> {
        if let RequestBody::Streaming(body) = &mut self.body {
            if body.size_hint().lower() > limit {
                return Ok(Prefix::Longer);
            }
            let mut buf = BytesMut::new();
            let mut over = None;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(BodyError::Read)?;
                if let Ok(data) = frame.into_data() {
                    if (buf.len() + data.len()) as u64 > limit {
                        over = Some(data);
                        break;
                    }
                    buf.extend_from_slice(&data);
                }
            }
            if let Some(data) = over {
                let mut head = buf;
                head.extend_from_slice(&data);
                self.put_back(head.freeze());
                return Ok(Prefix::Longer);
            }
            self.body = RequestBody::Buffered(buf.freeze());
        }
        match &self.body {
            RequestBody::Buffered(b) if b.len() as u64 <= limit => Ok(Prefix::Whole(b)),
            RequestBody::Buffered(_) => Ok(Prefix::Longer),
            RequestBody::Streaming(_) => Err(BodyError::Read("body state lost".into())),
        }
    }

    /// Replaces the body by one a step rewrote (stripped fields, inflated from a content
    /// coding): it goes on whole, with its length; the coding the old one had, its digests
    /// and announced trailers are gone.
    pub fn replace_body(&mut self, body: Bytes) {
        let headers = &mut self.head.headers;
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(body.len()),
        );
        headers.remove(http::header::TRANSFER_ENCODING);
        headers.remove(http::header::CONTENT_ENCODING);
        // What described the old body's bytes describes them no more: digests of them, and
        // trailers it announced (the new body has none).
        for name in ["content-digest", "repr-digest", "digest", "content-md5"] {
            headers.remove(name);
        }
        headers.remove(http::header::TRAILER);
        self.body = RequestBody::Buffered(body);
    }

    /// Takes the body out for forwarding, leaving an empty buffer behind.
    pub fn take_body(&mut self) -> RequestBody {
        std::mem::replace(&mut self.body, RequestBody::Buffered(Bytes::new()))
    }
}

/// A body whose first bytes were already read: they come first, then the rest of the stream.
struct Replayed {
    head: Option<Bytes>,
    rest: BoxBody,
}

impl http_body::Body for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self.rest.size_hint();
        let n = self.head.as_ref().map_or(0, |b| b.len() as u64);
        // Built anew, upper bound first: raising the lower bound of a hint with an upper one
        // (an exact length) above that bound would panic.
        let mut h = http_body::SizeHint::new();
        if let Some(u) = rest.upper() {
            h.set_upper(u.saturating_add(n));
        }
        h.set_lower(rest.lower().saturating_add(n));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn req(body: &'static str) -> GatewayRequest {
        let (head, ()) = http::Request::new(()).into_parts();
        let b = Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| -> BoxError { match e {} })
            .boxed_unsync();
        GatewayRequest::new(head, b)
    }

    /// The bytes read ahead count in the length the body reports, exact or bounded, and
    /// reporting it never panics.
    #[test]
    fn a_replayed_body_reports_its_whole_length() {
        let rest = |lower: u64, upper: Option<u64>| -> BoxBody {
            struct Hinted(http_body::SizeHint);
            impl http_body::Body for Hinted {
                type Data = Bytes;
                type Error = BoxError;
                fn poll_frame(
                    self: std::pin::Pin<&mut Self>,
                    _: &mut std::task::Context<'_>,
                ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>>
                {
                    std::task::Poll::Ready(None)
                }
                fn size_hint(&self) -> http_body::SizeHint {
                    self.0
                }
            }
            let mut h = http_body::SizeHint::new();
            if let Some(u) = upper {
                h.set_upper(u);
            }
            h.set_lower(lower);
            Hinted(h).boxed_unsync()
        };
        for (lower, upper) in [(10, Some(10)), (10, Some(15)), (0, None), (7, None)] {
            let r = Replayed {
                head: Some(Bytes::from_static(b"abcd")),
                rest: rest(lower, upper),
            };
            let h = http_body::Body::size_hint(&r);
            assert_eq!(h.lower(), lower + 4);
            assert_eq!(h.upper(), upper.map(|u| u + 4));
        }
    }

    /// Bytes put back come first, before a streaming body's rest or a buffered body's bytes.
    #[tokio::test]
    async fn bytes_put_back_come_first() {
        let mut r = req("world");
        r.put_back(Bytes::from_static(b"hello "));
        assert_eq!(
            http_body::Body::size_hint(match &r.body {
                RequestBody::Streaming(b) => b,
                RequestBody::Buffered(_) => panic!("still streaming"),
            })
            .exact(),
            Some(11)
        );
        assert_eq!(r.buffer_body(64).await.unwrap().as_ref(), b"hello world");
        r.put_back(Bytes::from_static(b">> "));
        r.put_back(Bytes::new());
        assert_eq!(r.buffer_body(64).await.unwrap().as_ref(), b">> hello world");
    }

    /// A replaced body goes with its own length and nothing that described the old one.
    #[test]
    fn a_replaced_body_loses_what_described_the_old_one() {
        let mut r = req("compressed");
        for (n, v) in [
            ("content-encoding", "gzip"),
            ("transfer-encoding", "chunked"),
            ("content-digest", "sha-256=:x:"),
            ("digest", "SHA-256=x"),
            ("content-md5", "x"),
            ("trailer", "x-sig"),
            ("content-type", "application/json"),
        ] {
            r.head.headers.insert(n, http::HeaderValue::from_static(v));
        }
        r.replace_body(Bytes::from_static(b"{\"a\":1}"));
        let names: Vec<&str> = r.head.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "content-length"]);
        assert_eq!(r.head.headers["content-length"], "7");
        assert!(matches!(&r.body, RequestBody::Buffered(b) if b.len() == 7));
    }

    #[tokio::test]
    async fn buffers_once_within_limit() {
        let mut r = req("hello");
        assert_eq!(
            r.buffer_body(10).await.ok().cloned(),
            Some(Bytes::from_static(b"hello"))
        );
        assert_eq!(r.buffer_body(10).await.map(|b| b.len()).ok(), Some(5));
    }

    #[tokio::test]
    async fn prefix_keeps_a_longer_body_whole() {
        let mut r = req("hello world");
        assert!(matches!(r.buffer_prefix(5).await, Ok(Prefix::Longer)));
        let RequestBody::Streaming(b) = r.take_body() else {
            panic!("a longer body stays streaming");
        };
        let all = b.collect().await.map(|c| c.to_bytes()).ok();
        assert_eq!(all, Some(Bytes::from_static(b"hello world")));
        let mut r = req("hi");
        assert!(matches!(r.buffer_prefix(5).await, Ok(Prefix::Whole(b)) if b.as_ref() == b"hi"));
    }

    #[tokio::test]
    async fn refuses_over_limit() {
        let mut r = req("hello world");
        assert!(matches!(
            r.buffer_body(5).await,
            Err(BodyError::TooLarge { limit: 5 })
        ));
    }
}
