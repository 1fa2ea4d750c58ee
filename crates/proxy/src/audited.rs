//! An answer's audit event, written when its body ends.
//!
//! The event of an answered request is built when the answer's head is ready, but an answer
//! can still be cut off after that: a client that stops reading (the idle or send timeout
//! closes its connection), a client gone mid-body, an upstream whose body breaks or falls
//! short, a stop past its drain deadline. [`Audited`] carries the event with the answer's
//! body, counts the body bytes handed to the connection, and writes the event when the body
//! is done with — read to its end or dropped before it — saying how many bytes went out,
//! whether that was the whole body, and how long the answer took from the request's arrival.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use portcullis_audit::{AuditEvent, AuditSink};
use portcullis_core::{BoxBody, BoxError};

/// An answer's body carrying its audit event (only when audit is on).
pub struct Audited {
    body: BoxBody,
    /// Written on drop (always there until then).
    event: Option<Box<AuditEvent>>,
    sink: AuditSink,
    /// When the request arrived.
    received: Instant,
    /// Body bytes handed on so far.
    sent: u64,
    /// The body said it was over (`None`), or its answer has no body to send (a `HEAD`
    /// answer, 1xx, 204, 304).
    ended: bool,
    /// The body failed (its upstream broke off or fell short): never whole, whatever it says
    /// of its end afterwards.
    failed: bool,
    /// Set by the HTTP/2 answer's watch ([`crate::paced::ToClient`]) when the answer was cut
    /// off or let go after this body's end but before the client was handed all of it (the
    /// watch hands a body on in slices): not whole either.
    undelivered: Option<Arc<AtomicBool>>,
}

/// A response extension from the engine to the HTTP/2 answer's watch: the flag its audited
/// body reads ([`Audited::undelivered_by`]).
#[derive(Clone)]
pub struct Undelivered(pub Arc<AtomicBool>);

impl Audited {
    /// `bodiless`: the answer sends no body whatever its own says (the server drops it
    /// unread), so it is whole as soon as its head is.
    pub fn new(
        body: BoxBody,
        event: AuditEvent,
        sink: AuditSink,
        received: Instant,
        bodiless: bool,
    ) -> Self {
        Audited {
            body,
            event: Some(Box::new(event)),
            sink,
            received,
            sent: 0,
            ended: bodiless,
            failed: false,
            undelivered: None,
        }
    }

    /// Not whole if `flag` is set by the time the event is written.
    pub fn undelivered_by(mut self, flag: Arc<AtomicBool>) -> Self {
        self.undelivered = Some(flag);
        self
    }
}

impl Body for Audited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Err(_))) => this.failed = true,
            Poll::Pending => {}
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

impl Drop for Audited {
    fn drop(&mut self) {
        let Some(mut event) = self.event.take() else {
            return;
        };
        // A body that knows its end (a length, a full buffer) is whole once its last piece
        // was taken, even if the server did not ask again.
        let undelivered = self
            .undelivered
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed));
        event.response_complete =
            !self.failed && !undelivered && (self.ended || self.body.is_end_stream());
        event.response_bytes = self.sent;
        event.duration_ms = self.received.elapsed().as_secs_f64() * 1000.0;
        event.time = portcullis_audit::now_rfc3339();
        self.sink.emit(*event);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    fn event(request_id: &str) -> AuditEvent {
        AuditEvent {
            time: String::new(),
            request_id: request_id.into(),
            listener: "public".into(),
            client_ip: "127.0.0.1".into(),
            peer: "127.0.0.1:1".into(),
            method: "GET".into(),
            host: None,
            path: "/".into(),
            route: None,
            upstream: None,
            target: None,
            status: 200,
            latency_ms: 1.0,
            duration_ms: 0.0,
            response_bytes: 0,
            response_complete: false,
            outcome: portcullis_audit::Outcome::Allowed,
            stage: None,
            reason: None,
            tls: false,
            http_version: "HTTP/1.1".into(),
            user_agent: None,
            auth: None,
            auth_failure: None,
            rate_limit: None,
            authz: None,
            waf: None,
            contract: None,
            upstream_error: None,
        }
    }

    /// A real sink writing to a file, and a way to read back what it wrote.
    struct FileSink {
        sink: AuditSink,
        path: std::path::PathBuf,
    }

    impl FileSink {
        fn new(name: &str) -> FileSink {
            let path = std::env::temp_dir().join(format!(
                "portcullis-audited-{name}-{}.jsonl",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&path);
            let cfg = portcullis_config::Audit {
                enabled: true,
                output: portcullis_config::AuditOutput::File,
                path: Some(path.clone()),
            };
            FileSink {
                sink: AuditSink::from_config(&cfg).unwrap(),
                path,
            }
        }

        fn events(&self) -> Vec<serde_json::Value> {
            assert!(self.sink.flush(Duration::from_secs(5)));
            std::fs::read_to_string(&self.path)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    impl Drop for FileSink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn stream(pieces: &[&'static str], fail_after: bool) -> BoxBody {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = pieces
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        if fail_after {
            frames.push(Err("upstream body cut off".into()));
        }
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    /// A body that fails, then says it is over (as the upstream client's body does once its
    /// connection broke off).
    struct Breaks(bool);

    impl Body for Breaks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.0 {
                return Poll::Ready(None);
            }
            self.0 = true;
            Poll::Ready(Some(Err("closed mid-body".into())))
        }

        fn is_end_stream(&self) -> bool {
            self.0
        }
    }

    #[tokio::test]
    async fn the_event_is_written_at_the_body_end_with_what_went_out() {
        let s = FileSink::new("ends");
        let received = Instant::now() - Duration::from_millis(40);
        let wrap = |body: BoxBody, id: &str, bodiless: bool| {
            Audited::new(body, event(id), s.sink.clone(), received, bodiless)
        };

        // Read to its end (a body that learns its end only when asked again).
        let mut b = wrap(stream(&["hello ", "world"], false), "whole", false);
        assert!(
            s.events().is_empty(),
            "nothing written while the body is on its way"
        );
        while b.frame().await.is_some() {}
        drop(b);

        // A body that knows its length: whole once its bytes were taken.
        let mut b = wrap(
            http_body_util::Full::new(Bytes::from_static(b"0123456789"))
                .map_err(|never| match never {})
                .boxed_unsync(),
            "full",
            false,
        );
        b.frame().await.unwrap().unwrap();
        drop(b);

        // Cut off after its first piece (a client gone, a timeout).
        let mut b = wrap(stream(&["first", "second"], false), "cut", false);
        b.frame().await.unwrap().unwrap();
        drop(b);

        // Broken by its upstream.
        let mut b = wrap(stream(&["part"], true), "broken", false);
        b.frame().await.unwrap().unwrap();
        assert!(b.frame().await.unwrap().is_err());
        drop(b);

        // Broken, then saying it is over.
        let mut b = wrap(Breaks(false).boxed_unsync(), "broken-then-over", false);
        assert!(b.frame().await.unwrap().is_err());
        assert!(b.is_end_stream());
        drop(b);

        // A HEAD answer: its body is never sent, and it is whole.
        let b = wrap(stream(&["not sent"], false), "head", true);
        drop(b);

        let events = s.events();
        let by = |id: &str| {
            events
                .iter()
                .find(|e| e["request_id"] == id)
                .unwrap_or_else(|| panic!("{id} written: {events:#?}"))
                .clone()
        };
        assert_eq!(events.len(), 6, "{events:#?}");
        for (id, bytes, complete) in [
            ("whole", 11, true),
            ("full", 10, true),
            ("cut", 5, false),
            ("broken", 4, false),
            ("broken-then-over", 0, false),
            ("head", 0, true),
        ] {
            let e = by(id);
            assert_eq!(e["response_bytes"], bytes, "{id}: {e}");
            assert_eq!(e["response_complete"], complete, "{id}: {e}");
            assert!(e["duration_ms"].as_f64().unwrap() >= 40.0, "{id}: {e}");
            assert_eq!(e["latency_ms"], 1.0, "{id}: the head's latency is kept");
            assert!(e["time"].as_str().unwrap().ends_with('Z'), "{id}: {e}");
        }
    }
}
