//! The shared HTTP/2 connection of a target: one multiplexed connection per target that carries
//! every request to it, whatever host the request names.
//!
//! * **Takes**: a request whose URI names the host the target is to see (sent as its
//!   `:authority`), for a target whose connections may speak HTTP/2 (`protocol: http2`, or
//!   `auto` to an `https://` target).
//! * **Produces**: the target's response, read by hyper's HTTP/2 client
//!   (`hyper::client::conn::http2`); or, under `auto`, the request back untouched when the
//!   target negotiated HTTP/1.1 by ALPN ([`Sent::Http1`]), for the pool to send it another way.
//! * **Rejects**: [`MuxError::Connect`] when no connection could be made (nothing was sent),
//!   [`MuxError::Unanswered`] when a connection just made closed before it took the request,
//!   [`MuxError::Exchange`] when the exchange failed once the request was handed over.
//!
//! Why not hyper-util's client (ADR 0015): it keeps its connections by the scheme and authority
//! of the request URI, and the URI's authority is what its HTTP/2 client sends as `:authority`.
//! With `host_header: preserve` that is the client's `Host`, so every name a client sends would
//! open (and keep) a connection of its own: an upstream connection per random `Host`.
//!
//! Invariants:
//! * At most one connection per target is made at a time (single flight): requests that find
//!   none wait for the connect under way, they do not each start one. The connect runs in a
//!   task of its own, so a request that gives up does not abandon it for the others; it is
//!   bounded, TCP and TLS together, by `connect_timeout` (the target's HTTP/2 settings are not
//!   waited for: a target that accepts and then says nothing is found by the requests'
//!   timeouts and by the connection's PING, unanswered within 30 s). A failed connect counts
//!   once against the target, for the request that started it.
//! * The connection is checked with a PING every 20 s (answer within 10 s), busy or idle; one
//!   unanswered ends it. The health checks have their own shared connection, so that a probe
//!   never waits for a stream behind the requests.
//! * A stream the target refused unprocessed (`REFUSED_STREAM`, or a `GOAWAY` without error
//!   below it) is the race of a connection the target closes: a request without a body goes
//!   on a new connection, one with a body fails uncounted.
//! * A connection is kept while it is open and a request used it within `idle_timeout` (the
//!   pool's sweep drops it after that; requests still running on it finish). A closed one
//!   (the target went away, `GOAWAY`) is replaced by the next request.
//! * A request is never sent twice: only one that hyper hands back unsent (the connection was
//!   closing before it took the request) goes on another connection.
//! * Under `auto`, a connection that negotiated HTTP/1.1 is handed to the target's HTTP/1.1
//!   client ([`Parked`]: its next connect takes it rather than dialling) and the target is
//!   remembered as speaking HTTP/1.1 for the pool's life (a reload builds new pools): from then
//!   on its requests go through that client, never over this path.
//! * `max_idle_per_target: 0` keeps nothing: each request makes a connection of its own,
//!   closed when its exchange ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portcullis_core::{BoxBody, BoxError};
use tokio::sync::watch;

use super::{Connector, Stream};

/// How long a connection handed over by [`Parked`] stays usable: it is meant for the request
/// that found it HTTP/1.1, which goes to the HTTP/1.1 client at once. One left longer (that
/// request went away) is closed rather than given to a later request: the target may have
/// closed it meanwhile, and a fresh connection failing would count against the target.
const PARKED_FOR: Duration = Duration::from_secs(5);

/// A connection made here to a target that chose HTTP/1.1 by ALPN, handed to the target's
/// HTTP/1.1 client, whose connector takes it on its next call instead of dialling: the probe
/// costs no extra connection.
#[derive(Clone, Default)]
pub(super) struct Parked(Arc<Mutex<Option<(Stream, Instant)>>>);

impl Parked {
    fn park(&self, s: Stream) {
        // One left by an earlier probe is dropped (closed).
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((s, Instant::now()));
    }

    /// The connection parked last, if it is recent enough (see [`PARKED_FOR`]).
    pub(super) fn take(&self) -> Option<Stream> {
        let (s, at) = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        (at.elapsed() < PARKED_FOR).then_some(s)
    }
}

/// How often an idle shared connection is checked with a PING, and how long its answer may take
/// before the connection is ended.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Each stream's receive window (hyper's client default is 2 MiB); the connection's is sixteen
/// times this.
const STREAM_WINDOW: u32 = 1024 * 1024;

/// How many times a request handed back unsent is offered to a connection before it counts
/// as unanswered: each time means a connection found closing, which another request may have
/// replaced already, so more than one retry is rare; the bound keeps it from looping.
const MAX_HANDBACKS: usize = 3;

/// What a connect made.
#[derive(Clone)]
enum Link {
    /// An HTTP/2 connection, ready for requests.
    H2(SendRequest<BoxBody>),
    /// The target chose HTTP/1.1 by ALPN (`auto` only); the connection was closed unused.
    Http1,
}

/// The outcome of a connect, shared with every request waiting for it.
type Outcome = Result<Link, Arc<BoxError>>;

/// A connect's failure as each request that waited for it reports it.
#[derive(Debug)]
struct ConnectFailed(Arc<BoxError>);

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

enum Slot {
    Empty,
    /// A connect under way; its outcome is published here (`None` until then).
    Connecting(watch::Receiver<Option<Outcome>>),
    /// The target's connection, and when a request last took it (for the idle sweep).
    Ready {
        tx: SendRequest<BoxBody>,
        last_used: Instant,
        /// Which connection this is (see [`Mux::retire`]).
        generation: u64,
    },
}

/// A connection as a request gets it.
enum Checkout {
    /// `reused`: it was there before this request came (not made for it, nor for the requests
    /// that waited on the same connect).
    H2 {
        tx: SendRequest<BoxBody>,
        reused: bool,
        generation: u64,
    },
    Http1,
}

/// Why a checkout found no connection.
struct NoConnection {
    error: BoxError,
    /// This request started the connect that failed.
    started: bool,
}

/// How a request went.
pub(super) enum Sent {
    Answer(Response<Incoming>),
    /// The target speaks HTTP/1.1 (ALPN, `auto`): the request, untouched, to send another way.
    Http1(Request<BoxBody>),
}

#[derive(Debug)]
pub(super) enum MuxError {
    /// No connection could be made: nothing was sent. `counted`: this request started the
    /// connect (those that waited for it report the same failure uncounted: one failed connect
    /// is one failure of the target, however many requests waited).
    Connect { error: BoxError, counted: bool },
    /// The target refused the stream unprocessed (a `GOAWAY` without error whose last stream
    /// is below it, or `REFUSED_STREAM`: RFC 9113 §8.7) and the request, having a body, could
    /// not be sent again. Not the target's failure.
    Refused(hyper::Error),
    /// A connection made for the request closed before it took it.
    Unanswered(BoxError),
    /// The exchange failed after the request was handed to the connection.
    Exchange(hyper::Error),
}

/// One target's shared HTTP/2 connection (see the module header).
pub(super) struct Mux {
    slot: Mutex<Slot>,
    connector: Connector,
    /// `scheme://host:port` of the target: the address dialled, and its name for TLS.
    dst: Uri,
    builder: Builder<TokioExecutor>,
    connect_timeout: Duration,
    /// Set once a connection negotiated HTTP/1.1.
    speaks_http1: AtomicBool,
    /// Numbers the connections the slot has held (see [`Mux::retire`]).
    generations: AtomicU64,
    /// `max_idle_per_target` > 0: the connection is kept and shared.
    keep: bool,
    /// `Some` under `auto`: ALPN decides per connection, and a connection that turned out
    /// HTTP/1.1 goes here. `None` (`http2`): every connection speaks HTTP/2, by prior knowledge
    /// in cleartext.
    parked: Option<Parked>,
}

impl Mux {
    pub(super) fn new(
        connector: Connector,
        dst: Uri,
        connect_timeout: Duration,
        keep: bool,
        parked: Option<Parked>,
    ) -> Arc<Mux> {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // One connection carries all of the target's traffic: a peer gone silent (a NAT
            // that dropped the flow, a target that accepted and says nothing) is found by its
            // unanswered PING and the connection ended, so that the next request makes another
            // — rather than every request waiting out its timeout until TCP gives up.
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            // The connection's window is shared by every answer on it, and a stream's part is
            // given back only as its client reads: a few slow readers of large answers must not
            // hold up every other answer from the target. Sixteen streams' worth.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(STREAM_WINDOW * 16);
        Arc::new(Mux {
            slot: Mutex::new(Slot::Empty),
            connector,
            dst,
            builder,
            connect_timeout,
            speaks_http1: AtomicBool::new(false),
            generations: AtomicU64::new(0),
            keep,
            parked,
        })
    }

    /// True once a connection to the target negotiated HTTP/1.1 (`auto` over TLS).
    pub(super) fn speaks_http1(&self) -> bool {
        self.speaks_http1.load(Ordering::Relaxed)
    }

    /// Sends `req` over the target's connection, making one if there is none (or joining the
    /// connect under way). A request the connection hands back unsent goes on the next one, as
    /// does a request without a body that the target refused unprocessed (a `GOAWAY` that came
    /// as it was sent: the race of an idle connection the target closes).
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<BoxBody>,
    ) -> Result<Sent, MuxError> {
        // Without a body the request can be made again as it is: its head is kept for that.
        let mut replay = http_body::Body::is_end_stream(req.body()).then(|| head_of(&req));
        for _ in 0..MAX_HANDBACKS {
            let (mut tx, reused, generation) = match self.checkout().await {
                Ok(Checkout::H2 {
                    tx,
                    reused,
                    generation,
                }) => (tx, reused, generation),
                Ok(Checkout::Http1) => return Ok(Sent::Http1(req)),
                Err(e) => {
                    return Err(MuxError::Connect {
                        error: e.error,
                        counted: e.started,
                    });
                }
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(Sent::Answer(resp)),
                Err(mut e) => match e.take_message() {
                    // The connection was closing before it took the request (the target
                    // closed it, or sent `GOAWAY`, since it was last used): the keep-alive
                    // race. Nothing was sent; the next connection gets it (hyper marks a
                    // connection closed before it hands anything back, so the checkout does
                    // not offer this one again).
                    Some(back) if reused => req = back,
                    Some(_) => return Err(MuxError::Unanswered(Box::new(e.into_error()))),
                    None => {
                        let error = e.into_error();
                        if !refused_unprocessed(&error) {
                            return Err(MuxError::Exchange(error));
                        }
                        // The connection is going away: no later request is to get it.
                        self.retire(generation);
                        match replay.take() {
                            Some(head) => {
                                req = Request::from_parts(head, crate::problem::empty_body());
                                replay = Some(head_of(&req));
                            }
                            None => return Err(MuxError::Refused(error)),
                        }
                    }
                },
            }
        }
        Err(MuxError::Unanswered(
            "every connection to the target closed before it took the request".into(),
        ))
    }

    /// The connection for one request: the shared one when it is open, else the outcome of a
    /// connect (the one under way, or a new one).
    async fn checkout(self: &Arc<Self>) -> Result<Checkout, NoConnection> {
        // Another request found the target speaking HTTP/1.1 since this one was routed here.
        if self.parked.is_some() && self.speaks_http1() {
            return Ok(Checkout::Http1);
        }
        if !self.keep {
            return Ok(
                match connect(self.params()).await.map_err(|error| NoConnection {
                    error,
                    started: true,
                })? {
                    Link::H2(tx) => Checkout::H2 {
                        tx,
                        reused: false,
                        generation: 0,
                    },
                    Link::Http1 => {
                        self.speaks_http1.store(true, Ordering::Relaxed);
                        Checkout::Http1
                    }
                },
            );
        }
        let mut started = false;
        let mut waiting = {
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            match &mut *slot {
                Slot::Ready {
                    tx,
                    last_used,
                    generation,
                } if !tx.is_closed() => {
                    *last_used = Instant::now();
                    return Ok(Checkout::H2 {
                        tx: tx.clone(),
                        reused: true,
                        generation: *generation,
                    });
                }
                // (A connect whose task is gone without settling — its runtime stopped — is
                // started afresh below.)
                Slot::Connecting(rx) if !rx.is_closed() => rx.clone(),
                _ => {
                    let Ok(rt) = tokio::runtime::Handle::try_current() else {
                        return Err(NoConnection {
                            error: "no async runtime to connect from".into(),
                            started: true,
                        });
                    };
                    started = true;
                    let (publish, rx) = watch::channel(None);
                    *slot = Slot::Connecting(rx.clone());
                    let mux = Arc::downgrade(self);
                    let params = self.params();
                    let ours = rx.clone();
                    rt.spawn(async move {
                        let outcome = connect(params).await.map_err(Arc::new);
                        if let Some(mux) = mux.upgrade() {
                            mux.settle(&ours, &outcome);
                        }
                        // Nobody waiting is fine: the slot holds the connection.
                        let _ = publish.send(Some(outcome));
                    });
                    rx
                }
            }
        };
        let outcome = match waiting.wait_for(Option::is_some).await {
            Ok(got) => got.clone(),
            Err(_) => None,
        };
        match outcome {
            Some(Ok(Link::H2(tx))) => Ok(Checkout::H2 {
                tx,
                reused: false,
                generation: self.current_generation(),
            }),
            Some(Ok(Link::Http1)) => Ok(Checkout::Http1),
            Some(Err(e)) => Err(NoConnection {
                error: Box::new(ConnectFailed(e)),
                started,
            }),
            // The connect's task ended without an outcome: the runtime is shutting down.
            None => Err(NoConnection {
                error: "the connect to the target was abandoned".into(),
                started,
            }),
        }
    }

    /// The generation of the connection in the slot (0 when there is none).
    fn current_generation(&self) -> u64 {
        match &*self.slot.lock().unwrap_or_else(PoisonError::into_inner) {
            Slot::Ready { generation, .. } => *generation,
            _ => 0,
        }
    }

    /// Empties the slot if it still holds connection `generation`, one the target is closing
    /// (`GOAWAY`): hyper marks it closed only once its last stream is done, and until then the
    /// checkout would offer it to requests the target will refuse.
    fn retire(&self, generation: u64) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(&*slot, Slot::Ready { generation: g, .. } if *g == generation && generation != 0)
        {
            *slot = Slot::Empty;
        }
    }

    /// Records the outcome of the connect `ours` in the slot, if the slot still waits for it.
    fn settle(&self, ours: &watch::Receiver<Option<Outcome>>, outcome: &Outcome) {
        if matches!(outcome, Ok(Link::Http1)) {
            self.speaks_http1.store(true, Ordering::Relaxed);
        }
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if !matches!(&*slot, Slot::Connecting(rx) if rx.same_channel(ours)) {
            return;
        }
        *slot = match outcome {
            Ok(Link::H2(tx)) => Slot::Ready {
                tx: tx.clone(),
                last_used: Instant::now(),
                generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            },
            // A failed connect is not remembered: the next request tries again (passive
            // health and retries decide how often that is).
            Ok(Link::Http1) | Err(_) => Slot::Empty,
        };
    }

    /// Drops the shared connection if it is closed, or no request took it for `idle_timeout`.
    /// Requests still running on it finish: the connection closes after them.
    pub(super) fn purge(&self, idle_timeout: Duration) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Slot::Ready { tx, last_used, .. } = &*slot
            && (tx.is_closed() || last_used.elapsed() >= idle_timeout)
        {
            *slot = Slot::Empty;
        }
    }

    fn params(&self) -> ConnectParams {
        ConnectParams {
            connector: self.connector.clone(),
            dst: self.dst.clone(),
            builder: self.builder.clone(),
            timeout: self.connect_timeout,
            parked: self.parked.clone(),
        }
    }

    /// Whether a connection is kept now (tests).
    #[cfg(test)]
    pub(super) fn is_connected(&self) -> bool {
        let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(&*slot, Slot::Ready { tx, .. } if !tx.is_closed())
    }
}

/// What a connect needs, owned: it runs in a task of its own.
struct ConnectParams {
    connector: Connector,
    dst: Uri,
    builder: Builder<TokioExecutor>,
    timeout: Duration,
    /// `Some` where ALPN decides (`auto`): where a connection that turned out HTTP/1.1 goes.
    parked: Option<Parked>,
}

/// Dials the target (its address; its name as TLS server name and certificate name, through
/// the pool's connector), and starts HTTP/2 on the connection unless ALPN chose HTTP/1.1 where
/// it decides (then the connection is parked for the HTTP/1.1 client).
async fn connect(p: ConnectParams) -> Result<Link, BoxError> {
    let ConnectParams {
        mut connector,
        dst,
        builder,
        timeout,
        parked,
    } = p;
    let made = async move {
        let io = tower_service::Service::call(&mut connector, dst).await?;
        if let Some(parked) = parked
            && !io.connected().is_negotiated_h2()
        {
            parked.park(io);
            return Ok::<_, BoxError>(Link::Http1);
        }
        let (mut tx, conn) = builder.handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        tx.ready().await?;
        Ok(Link::H2(tx))
    };
    // The TCP connector has its own bound; this one also covers the TLS handshake (and our
    // side of the HTTP/2 preface), so that a target that accepts and then stalls the handshake
    // cannot hold the connect (and every request waiting for it) for ever.
    match tokio::time::timeout(timeout, made).await {
        Ok(r) => r,
        Err(_) => Err(format!("connect timed out after {timeout:?}").into()),
    }
}

/// A request's head, for sending it again (only requests without a body are).
fn head_of(req: &Request<BoxBody>) -> http::request::Parts {
    let mut head = Request::new(()).into_parts().0;
    head.method = req.method().clone();
    head.uri = req.uri().clone();
    head.version = req.version();
    head.headers = req.headers().clone();
    head.extensions = req.extensions().clone();
    head
}

/// Whether the target refused the request's stream without processing it: a `GOAWAY` without
/// error whose last stream id is below the stream (the target closing an idle or rotated
/// connection as the request went out), or a stream reset with `REFUSED_STREAM`. RFC 9113
/// §8.7: such a request may be sent again. A `GOAWAY` with an error code also ends streams
/// the target may have processed: not one of these.
fn refused_unprocessed(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && ((h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)));
        }
        source = e.source();
    }
    false
}
