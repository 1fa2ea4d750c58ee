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
//!   bounded, TCP, TLS and the HTTP/2 preface together, by `connect_timeout`.
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

use std::sync::atomic::{AtomicBool, Ordering};
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
    },
}

/// A connection as a request gets it.
enum Checkout {
    /// `reused`: it was there before this request came (not made for it, nor for the requests
    /// that waited on the same connect).
    H2 {
        tx: SendRequest<BoxBody>,
        reused: bool,
    },
    Http1,
}

/// How a request went.
pub(super) enum Sent {
    Answer(Response<Incoming>),
    /// The target speaks HTTP/1.1 (ALPN, `auto`): the request, untouched, to send another way.
    Http1(Request<BoxBody>),
}

#[derive(Debug)]
pub(super) enum MuxError {
    /// No connection could be made: nothing was sent.
    Connect(BoxError),
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
        // The HTTP/2 settings hyper-util's client was given for these targets: tokio's
        // executor and timer, hyper's defaults otherwise.
        let mut builder = Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        Arc::new(Mux {
            slot: Mutex::new(Slot::Empty),
            connector,
            dst,
            builder,
            connect_timeout,
            speaks_http1: AtomicBool::new(false),
            keep,
            parked,
        })
    }

    /// True once a connection to the target negotiated HTTP/1.1 (`auto` over TLS).
    pub(super) fn speaks_http1(&self) -> bool {
        self.speaks_http1.load(Ordering::Relaxed)
    }

    /// Sends `req` over the target's connection, making one if there is none (or joining the
    /// connect under way). A request the connection hands back unsent goes on the next one.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<BoxBody>,
    ) -> Result<Sent, MuxError> {
        for _ in 0..MAX_HANDBACKS {
            let (mut tx, reused) = match self.checkout().await.map_err(MuxError::Connect)? {
                Checkout::H2 { tx, reused } => (tx, reused),
                Checkout::Http1 => return Ok(Sent::Http1(req)),
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
                    None => return Err(MuxError::Exchange(e.into_error())),
                },
            }
        }
        Err(MuxError::Unanswered(
            "every connection to the target closed before it took the request".into(),
        ))
    }

    /// The connection for one request: the shared one when it is open, else the outcome of a
    /// connect (the one under way, or a new one).
    async fn checkout(self: &Arc<Self>) -> Result<Checkout, BoxError> {
        if !self.keep {
            return Ok(match connect(self.params()).await? {
                Link::H2(tx) => Checkout::H2 { tx, reused: false },
                Link::Http1 => {
                    self.speaks_http1.store(true, Ordering::Relaxed);
                    Checkout::Http1
                }
            });
        }
        let mut waiting = {
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            match &mut *slot {
                Slot::Ready { tx, last_used } if !tx.is_closed() => {
                    *last_used = Instant::now();
                    return Ok(Checkout::H2 {
                        tx: tx.clone(),
                        reused: true,
                    });
                }
                // (A connect whose task is gone without settling — its runtime stopped — is
                // started afresh below.)
                Slot::Connecting(rx) if !rx.is_closed() => rx.clone(),
                _ => {
                    let Ok(rt) = tokio::runtime::Handle::try_current() else {
                        return Err("no async runtime to connect from".into());
                    };
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
            Some(Ok(Link::H2(tx))) => Ok(Checkout::H2 { tx, reused: false }),
            Some(Ok(Link::Http1)) => Ok(Checkout::Http1),
            Some(Err(e)) => Err(Box::new(ConnectFailed(e))),
            // The connect's task ended without an outcome: the runtime is shutting down.
            None => Err("the connect to the target was abandoned".into()),
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
        if let Slot::Ready { tx, last_used } = &*slot
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
    // The TCP connector has its own bound; this one also covers the TLS handshake and the
    // HTTP/2 preface, so that a target that accepts and then says nothing cannot hold the
    // connect (and every request waiting for it) for ever.
    match tokio::time::timeout(timeout, made).await {
        Ok(r) => r,
        Err(_) => Err(format!("connect timed out after {timeout:?}").into()),
    }
}
