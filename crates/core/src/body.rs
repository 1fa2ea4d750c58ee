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

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("request body could not be read: {0}")]
    Read(BoxError),
}

/// A request under inspection.
#[derive(Debug)]
pub struct GatewayRequest {
    pub head: http::request::Parts,
    pub body: RequestBody,
}

impl GatewayRequest {
    pub fn new(head: http::request::Parts, body: BoxBody) -> Self {
        GatewayRequest {
            head,
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

    /// Takes the body out for forwarding, leaving an empty buffer behind.
    pub fn take_body(&mut self) -> RequestBody {
        std::mem::replace(&mut self.body, RequestBody::Buffered(Bytes::new()))
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
    async fn refuses_over_limit() {
        let mut r = req("hello world");
        assert!(matches!(
            r.buffer_body(5).await,
            Err(BodyError::TooLarge { limit: 5 })
        ));
    }
}
