//! Listeners and connections: accept, TLS handshake, HTTP/1.1 or HTTP/2 serving, graceful stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_config::Config;
use portcullis_core::{Scheme, TlsInfo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::front;
use crate::gate::Gated;
use crate::resets::ResetWatch;
use crate::sniff::{Activity, Flag, Opening, Sniffed};
use crate::{ConnInfo, Gateway};

/// How long a connection whose head ran out of time is given to write its 408.
const HEAD_TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// How long an idle HTTP/2 connection is given to send its `GOAWAY` and close.
const IDLE_GOAWAY_GRACE: Duration = Duration::from_secs(1);
/// Client-reset streams not yet accepted, per HTTP/2 connection.
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams reset for a client's protocol errors, per HTTP/2 connection.
const H2_MAX_LOCAL_RESETS: usize = 128;

/// A bound client listener.
pub struct BoundListener {
    pub name: Arc<str>,
    /// Its place in `config.listeners` (which no reload changes).
    index: usize,
    pub local_addr: SocketAddr,
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    inner: TcpListener,
}

impl BoundListener {
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `http://…` or `https://…` for the startup lines.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.is_tls() { "https" } else { "http" },
            self.local_addr
        )
    }
}

/// Binds every client listener of the configuration.
pub async fn bind(gw: &Gateway, config: &Config) -> Result<Vec<BoundListener>, String> {
    let mut out = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let inner = TcpListener::bind(l.address)
            .await
            .map_err(|e| format!("listener {}: cannot bind {}: {e}", l.name, l.address))?;
        let local_addr = inner.local_addr().map_err(|e| e.to_string())?;
        out.push(BoundListener {
            name: l.name.clone(),
            index,
            local_addr,
            tls: if l.tls.is_some() {
                gw.tls_for(&l.name)
            } else {
                None
            },
            inner,
        });
    }
    Ok(out)
}

/// Serves every listener until `shutdown` turns true, then drains connections for at most
/// `server.drain_timeout`, or until `cut_off` turns true. Connections still open then are
/// left running: the caller marks the gateway interrupted ([`crate::Gateway::interrupt`]) and
/// shuts the runtime down, which drops them, so their requests are audited as interrupted.
pub async fn serve(
    gw: Arc<Gateway>,
    listeners: Vec<BoundListener>,
    mut shutdown: watch::Receiver<bool>,
    mut cut_off: watch::Receiver<bool>,
) {
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let mut tasks = Vec::new();
    for l in listeners {
        let gw = gw.clone();
        let mut stop = shutdown.clone();
        // Each connection carries a watcher: on shutdown it finishes its in-flight requests
        // (HTTP/1.1 closes after the current one, HTTP/2 sends GOAWAY) and ends. Only the
        // accept loops hold the shutdown handle, so it is free again once they have stopped.
        let graceful = graceful.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = l.inner.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let admitted = match gw.admission.admit(&gw, peer.ip()) {
                                Ok(admitted) => admitted,
                                // Over a connection limit, or banned: closed at once, before
                                // any work (a TLS handshake included).
                                Err(reason) => {
                                    tracing::debug!(%peer, reason, "connection refused");
                                    gw.metrics.count_rejection("accept", reason);
                                    drop(stream);
                                    continue;
                                }
                            };
                            let _ = stream.set_nodelay(true);
                            let drain = Drain { watcher: graceful.watcher(), stop: stop.clone() };
                            let listener = (l.name.clone(), l.index);
                            tokio::spawn(connection(gw.clone(), drain, stream, peer, listener, l.tls.clone(), admitted));
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(listener = %l.name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }));
    }
    let _ = shutdown.wait_for(|s| *s).await;
    for t in tasks {
        let _ = t.await;
    }
    // Read now: a reload may have changed it since the start.
    let deadline = gw.runtime().config().server.drain_timeout;
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(deadline) => tracing::warn!(
                drain_timeout = ?deadline,
                "connections still open after the drain timeout: their requests are cut off"
            ),
            // Told to stop at once (a second stop signal).
            () = front::raised(&mut cut_off) => {}
        },
        Err(_) => tracing::warn!("accept loops still running; not draining"),
    }
}

async fn connection(
    gw: Arc<Gateway>,
    drain: Drain,
    stream: TcpStream,
    peer: SocketAddr,
    (listener, index): (Arc<str>, usize),
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    admitted: Admitted,
) {
    let _open = OpenConnection::new(gw.metrics.clone(), listener.clone());
    // Dropped before `_open` (locals drop in reverse order): the connection's place under the
    // caps is given back before the gauge says it is gone, so a client that saw the gauge fall
    // is not refused for a place not yet returned.
    let _admitted = admitted;
    // What the kernel may hold unsent for the client is bounded from the start: the minimum
    // send rate allows for it.
    let unsent_bound = crate::sniff::bound_unsent(&stream);
    let new_activity = || {
        let activity = Activity::default();
        if let Some(bound) = unsent_bound {
            activity.kernel_holds_at_most(bound);
        }
        Arc::new(activity)
    };
    let rt = gw.runtime();
    let server = &rt.config().server;
    let timeouts = Timeouts {
        opened: tokio::time::Instant::now(),
        first_byte: server.header_read_timeout,
        idle: server.idle_timeout,
        send: server.send_timeout,
        send_min_rate: server.send_min_bytes_per_second,
    };
    let abort_on_close = server.abort_on_client_close;
    let max_resets = server.http2_max_resets_per_second;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let limits = server.limits;
    let max_buf = ((limits.max_header_bytes + limits.max_uri_bytes) * 2).max(16 * 1024);
    let max_buf = usize::try_from(max_buf).unwrap_or(usize::MAX);
    // hyper's field count, past which it refuses a head itself; the framing reader refuses
    // such heads first, so that the engine answers them (a problem document, audited).
    let max_fields = usize::try_from(limits.max_header_count)
        .unwrap_or(100)
        .saturating_mul(2)
        .max(100);
    builder
        .http1()
        .timer(TokioTimer::new())
        // Heads are timed by the idle watchdog, from their first byte (the framing reader
        // holds an incomplete head back and says since when): hyper's own timer would be
        // armed, registered and dropped for every request.
        .header_read_timeout(None)
        // A client may close its sending side once its request is out (`nc`, some scanners
        // and HTTP/1.0 tools do): it still gets its answer, refusals included — unless the
        // end of its stream is to abandon the request (`server.abort_on_client_close`), which
        // also makes hyper watch the connection for a reset while a request is in flight.
        .half_close(!abort_on_close)
        .keep_alive(true)
        .max_buf_size(max_buf)
        .max_headers(max_fields);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.http2_max_concurrent_streams)
        // HTTP/2 rapid reset (CVE-2023-44487): streams the client opens and resets before we
        // answer are bounded; past the bound the connection gets GOAWAY (ENHANCE_YOUR_CALM).
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        // Streams we must reset because the client sent a stream error, per connection: the
        // "MadeYouReset" variant (CVE-2025-8671) frees stream slots this way without a single
        // RST_STREAM from the client.
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
        );
    drop(rt);

    match tls {
        None => {
            let framing = Arc::new(Flag::default());
            let activity = new_activity();
            let watchdog = std::pin::pin!(idle_watchdog(
                activity.clone(),
                timeouts,
                peer,
                gw.metrics.clone()
            ));
            // Polled only when its timer fires, not at each of the connection's wake-ups.
            let watchdog = Gated::new(watchdog);
            let stream = Sniffed::new(stream, framing.clone(), activity.clone(), max_buf)
                .with_max_fields(max_fields);
            let info = Arc::new(ConnInfo {
                peer,
                scheme: Scheme::Http,
                listener: listener.clone(),
                tls: None,
                handshake: None,
                framing,
                response_timer: Default::default(),
                may_tunnel: Default::default(),
                abort_on_close,
                resets: Arc::new(ResetWatch::new(max_resets)),
                activity,
            });
            let metrics = gw.metrics.clone();
            let watched = info.clone();
            let conn = serve_http(gw, info, stream, builder, drain, max_buf, true);
            watch(conn, watchdog, &watched, &metrics).await;
        }
        Some(cfg) => {
            // The client-certificate rules the handshake runs under, read before the TLS
            // context: a reload stores the new contexts before the new runtime, so what is
            // recorded is never newer than the context the handshake uses — at worst older (a
            // reload between the two reads), and then the connection's first request finds the
            // rules changed and the client connects again.
            let (handshake, spiffe) = {
                let runtime = gw.runtime();
                (runtime.handshake(index), runtime.spiffe_bundles(index))
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.load_full());
            // The handshake is part of the time to the first head: a client that trickles its
            // hello, or connects and says nothing, is closed like a slowloris in cleartext.
            let deadline = timeouts.opened + timeouts.first_byte;
            let tls_stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    gw.metrics.count_rejection("accept", "tls_handshake_failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not done within server.header_read_timeout: connection closed");
                    gw.metrics
                        .count_rejection("accept", "tls_handshake_timeout");
                    return;
                }
            };
            let (_, session) = tls_stream.get_ref();
            let info = TlsInfo {
                server_name: session.server_name().map(str::to_string),
                alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                version: session.protocol_version().and_then(|v| v.as_str()),
                // The bundles of the configuration the handshake was recorded under: one
                // reloaded since has another fingerprint, and the certificate then no
                // longer counts (`client_auth_changed`).
                peer_certificate: session
                    .peer_certificates()
                    .and_then(|c| crate::tls::peer_identity(c, spiffe.as_deref()))
                    .map(Arc::new),
            };
            let h2 = info.alpn.as_deref() == Some(b"h2");
            let framing = Arc::new(Flag::default());
            // The first head's deadline counts from the accept (`timeouts.opened`).
            let activity = new_activity();
            let watchdog = std::pin::pin!(idle_watchdog(
                activity.clone(),
                timeouts,
                peer,
                gw.metrics.clone()
            ));
            let watchdog = Gated::new(watchdog);
            let tls_stream = Sniffed::new(tls_stream, framing.clone(), activity.clone(), max_buf)
                .with_max_fields(max_fields);
            // The version over TLS is what ALPN chose (RFC 9113 §3.2, §3.4): without `h2`
            // there, a connection that opens with the HTTP/2 preface is refused, not served
            // HTTP/2; with it, one that opens with anything else (an HTTP/1.1 head) is refused,
            // not served HTTP/1.1.
            let tls_stream = tls_stream.opening(if h2 { Opening::Http2 } else { Opening::Http1 });
            let info = Arc::new(ConnInfo {
                peer,
                scheme: Scheme::Https,
                listener: listener.clone(),
                tls: Some(info),
                handshake: Some(handshake),
                framing,
                response_timer: Default::default(),
                may_tunnel: Default::default(),
                abort_on_close,
                resets: Arc::new(ResetWatch::new(max_resets)),
                activity,
            });
            // Intent only: serving with upgrades, hyper-util's auto builder reads the version
            // from the first bytes whatever these say. What holds a connection to its ALPN
            // choice is the framing reader (`opening` above).
            let builder = if h2 {
                builder.http2_only()
            } else {
                builder.http1_only()
            };
            let metrics = gw.metrics.clone();
            let watched = info.clone();
            let conn = Box::pin(serve_http(
                gw, info, tls_stream, builder, drain, max_buf, !h2,
            ));
            watch(conn, watchdog, &watched, &metrics).await;
        }
    }
}

/// Serves a connection under its watchdog; when the watchdog fires, the connection is closed
/// (dropped) and the reason told (an idle HTTP/2 connection was sent `GOAWAY` first: see
/// [`idle_watchdog`]). The connection's bytes may go on in a tunnel after its HTTP ended (an
/// upgrade, joined to the upstream's by its own task): the watchdog watches it until it ends,
/// and ends it when it fires.
async fn watch(
    conn: impl Future<Output = ()>,
    mut watchdog: impl Future<Output = Closed> + Unpin,
    info: &ConnInfo,
    metrics: &portcullis_telemetry::Metrics,
) {
    let (activity, peer) = (&*info.activity, info.peer);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        () = &mut conn => {}
        why = &mut watchdog => {
            // A tunnel the connection opened (its HTTP over, its drain waited on) ends too.
            if activity.tunnel_is_open() {
                activity.stop_tunnel();
            }
            why.tell(peer, metrics);
            activity.held.abandon_waiting();
            return;
        }
    }
    if activity.tunnel_is_open() {
        tokio::select! {
            () = activity.tunnel_ended() => {}
            why = watchdog => {
                activity.stop_tunnel();
                why.tell(peer, metrics);
            }
        }
    }
}

/// How a connection learns that the gateway is stopping, and is waited for while it finishes:
/// hyper's graceful watcher for what hyper serves (held for the connection's whole life, so
/// the drain waits for the front's requests too), the stop signal for the front.
struct Drain {
    watcher: hyper_util::server::graceful::Watcher,
    stop: watch::Receiver<bool>,
}

/// Serves one connection's HTTP: its plain HTTP/1.1 requests by the front (when `front`),
/// then — from the first request the front does not take, or from the start — by hyper.
async fn serve_http<S>(
    gw: Arc<Gateway>,
    info: Arc<ConnInfo>,
    io: S,
    builder: auto::Builder<TokioExecutor>,
    drain: Drain,
    max_buf: usize,
    front: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let io = if front {
        match front::serve(io, &gw, &info, max_buf, drain.stop.clone()).await {
            front::Outcome::Closed => return,
            front::Outcome::HandOver(io) => io,
        }
    } else {
        front::Prefixed::new(bytes::BytesMut::new(), io, info.clone())
    };
    let (watched, metrics) = (info.clone(), gw.metrics.clone());
    let svc = service_fn(move |req| gw.clone().handle(info.clone(), req));
    let mut conn = Box::pin(builder.serve_connection_with_upgrades(TokioIo::new(io), svc));
    // Held for the connection's life, a tunnel it opened included: the stop's drain waits for
    // it.
    let Drain {
        watcher: _watcher,
        mut stop,
    } = drain;
    let mut stop_tunnel = stop.clone();
    // The connection is ended gracefully — HTTP/1.1 after the answer in progress, HTTP/2 with
    // `GOAWAY`, its streams in flight answered — at the gateway's stop (which comes before
    // the drain's), or when one of its requests asks for it (the client-certificate rules its
    // handshake ran under changed), or when its watchdog finds an HTTP/2 connection idle
    // (`GOAWAY` before the close): [`Activity::end_gracefully`]. Polled only when it is told,
    // like the flood's watch.
    let ending = std::pin::pin!(async {
        tokio::select! {
            () = front::raised(&mut stop) => {}
            () = watched.activity.ending() => {}
        }
    });
    let mut ending = Gated::new(ending);
    let mut ended = false;
    // Polled only when it is told, not at each of the connection's wake-ups.
    let flooded = std::pin::pin!(watched.resets.flooded());
    let mut flooded = Gated::new(flooded);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            () = &mut ending, if !ended => {
                ended = true;
                conn.as_mut().graceful_shutdown();
            }
            // Dropping the connection closes it and drops its streams' requests with it.
            () = &mut flooded => {
                tracing::warn!(%peer, "HTTP/2 client reset too many streams in flight: connection closed");
                metrics.count_rejection("accept", "h2_reset_flood");
                return;
            }
        }
    }
    // The connection's bytes went on in a WebSocket tunnel (its own task): the drain waits for
    // it too, and the stop tells it to close both sides with a Close frame ("going away").
    let activity = &watched.activity;
    if activity.tunnel_is_open() {
        tokio::select! {
            () = activity.tunnel_ended() => return,
            () = front::raised(&mut stop_tunnel) => activity.tunnel_go_away(),
        }
        activity.tunnel_ended().await;
    }
}

/// A connection's timeouts, as configured when it was accepted.
#[derive(Clone, Copy)]
struct Timeouts {
    /// When the connection was accepted: the first head's deadline counts from it, a TLS
    /// handshake's time included.
    opened: tokio::time::Instant,
    /// `server.header_read_timeout`.
    first_byte: Duration,
    /// `server.idle_timeout`.
    idle: Duration,
    /// `server.send_timeout`.
    send: Duration,
    /// `server.send_min_bytes_per_second` (0: none).
    send_min_rate: u64,
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// Silent, idle, or its head late.
    Idle,
    /// Its HTTP/2 answers waited on the client's window for the send timeout.
    Stalled,
    /// It took what the gateway had to send it slower than the minimum send rate.
    SlowReader,
}

impl Closed {
    fn tell(self, peer: SocketAddr, metrics: &portcullis_telemetry::Metrics) {
        match self {
            Closed::Idle => tracing::debug!(%peer, "idle connection closed"),
            Closed::Stalled => {
                tracing::warn!(%peer, "HTTP/2 answers held up by the client past server.send_timeout: connection closed");
                metrics.count_rejection("accept", "send_timeout");
            }
            Closed::SlowReader => {
                tracing::warn!(%peer, "the client took its answers slower than server.send_min_bytes_per_second: connection reset");
                metrics.count_rejection("accept", "send_rate");
            }
        }
    }
}

/// What the gateway's own layers may hold of a connection's output beyond what the kernel holds
/// (TLS records being built), allowed for by the minimum send rate.
const SEND_HELD_ALLOWANCE: u64 = 64 * 1024;

/// The minimum send rate (`server.send_min_bytes_per_second`), judged at the watchdog's
/// ticks: while the gateway's writes wait on the client, from the first tick that sees them
/// waiting, the connection must take `rate` bytes per second on average — less what the
/// kernel and the gateway's layers may have held for the client when the wait began
/// ([`crate::sniff::bound_unsent`], [`crate::sniff::ClientSocket::send_buffer`],
/// [`SEND_HELD_ALLOWANCE`]), which the client drains without the gateway's writes moving:
/// however the kernel takes the writes (in bursts, once enough is gone), the connection has
/// taken at least what the client drained less what was held then, so a client at any steady
/// rate above the minimum is never behind by more than that. A tick that finds the
/// writes not waiting (the client took everything, or there is nothing more to send) ends the
/// judgement; the next wait starts afresh.
#[derive(Debug)]
struct SendRate {
    rate: u64,
    /// When the writes were first seen waiting, the bytes taken by then, and what the kernel
    /// may have held for the client then.
    since: Option<(tokio::time::Instant, u64, u64)>,
}

impl SendRate {
    fn new(rate: u64) -> Self {
        SendRate { rate, since: None }
    }

    /// At a tick: whether the client has fallen behind the minimum rate.
    fn too_slow(
        &mut self,
        now: tokio::time::Instant,
        waiting: bool,
        sent: u64,
        kernel_holds: u64,
    ) -> bool {
        if self.rate == 0 || !waiting {
            self.since = None;
            return false;
        }
        let Some((at, from, held)) = self.since else {
            self.since = Some((now, sent, kernel_holds));
            return false;
        };
        let owed = u128::from(self.rate) * now.saturating_duration_since(at).as_millis() / 1000;
        let taken = u128::from(sent.wrapping_sub(from));
        taken + u128::from(held) + u128::from(SEND_HELD_ALLOWANCE) < owed
    }
}

/// Resolves when a connection has been silent or slow too long: no complete first head within
/// the header timeout of its opening (a connect-and-wait or trickling slowloris), a later head
/// still incomplete the header timeout after its first byte, no byte either way for the
/// idle timeout while no request waits for its answer's head, HTTP/2 answers waiting on the
/// client's flow-control window for the send timeout with none of them taking a step (a slow
/// read the client's pings would otherwise hide from the idle timeout), or a client taking what
/// the gateway has to send it slower than the minimum send rate ([`SendRate`]). A late head
/// that has begun is first answered (408 `header_timeout`, through the reader's stand-in); a
/// connection that sent nothing gets no answer. A connection closed while the gateway's writes
/// wait on its client is marked to be reset (`Activity::reset_at_close`).
async fn idle_watchdog(
    activity: Arc<Activity>,
    t: Timeouts,
    peer: SocketAddr,
    metrics: Arc<portcullis_telemetry::Metrics>,
) -> Closed {
    // Ticks of a quarter of the shortest timeout: a connection is closed at most a tick after
    // its deadline, never before it, and the traffic path never reads the clock for it.
    let step = (t.first_byte.min(t.idle).min(t.send) / 4).max(Duration::from_millis(50));
    // An HTTP/2 answer held up alone is cut off after this many ticks (see
    // `HeldAnswers::cut_held_up`).
    let held_ticks = u64::try_from(t.send.as_nanos().div_ceil(step.as_nanos()))
        .unwrap_or(u64::MAX)
        .saturating_add(2);
    let started = t.opened;
    let mut moves = activity.moves();
    let mut started_seen = activity.requests_started();
    // Whether the engine has started on a request of this connection.
    let mut began = false;
    // When an idle HTTP/2 connection was asked to send `GOAWAY`.
    let mut goaway_at: Option<tokio::time::Instant> = None;
    let mut last_move = tokio::time::Instant::now();
    // The answers' move count when they were last seen to move, and since when they have
    // been seen waiting without moving (None: none waiting).
    let mut answer_moves = 0;
    let mut stalled_since: Option<tokio::time::Instant> = None;
    // When a late head was told to the reader: the connection ends with its 408, or here
    // once the grace has passed.
    let mut told: Option<tokio::time::Instant> = None;
    let mut send_rate = SendRate::new(t.send_min_rate);
    loop {
        // The one wait of this future (a second one would make its state, which the
        // connection's task polls through the gate, larger).
        tokio::time::sleep(step).await;
        activity.held.tick();
        let now = tokio::time::Instant::now();
        if let Some(at) = told {
            if now - at >= HEAD_TIMEOUT_GRACE {
                return Closed::Idle;
            }
            continue;
        }
        let m = activity.moves();
        let h2 = activity.is_http2();
        let started_now = activity.requests_started();
        // A request waiting for its answer's head keeps the connection from being idle. Over
        // HTTP/2, pings, settings and window updates move bytes without any request: bytes
        // count only while a stream is open (a request under way, an answer still sending),
        // and a stream that starts counts.
        let busy = if h2 {
            // (Or the gateway's writes wait on the client while bytes move: what the HTTP/2
            // layer still has to send of answers the server let go — a slow reader's end of
            // a long answer — is watched by the send rate, not cut off as idle.)
            started_now != started_seen
                || activity.requests_waiting()
                || (m != moves && (activity.held.any() || activity.sending().0))
        } else {
            m != moves || activity.requests_waiting()
        };
        moves = m;
        started_seen = started_now;
        if busy {
            last_move = now;
        }
        let pending = activity.head_pending_since();
        // HTTP/2 hands the server every byte after the preface: its first request is late when
        // the engine has not started on one (its header block not complete) in time.
        began |= started_now != 0;
        let first_late =
            (!activity.has_handed() || (h2 && !began)) && now - started >= t.first_byte;
        if pending.is_some_and(|since| now.saturating_duration_since(since) >= t.first_byte)
            || (first_late && pending.is_some())
        {
            // A head began and is late: the reader hands on the stand-in, which the engine
            // refuses with 408 and the connection ends with that answer — or with this, after
            // a grace, if nothing is reading it.
            activity.head_timed_out();
            told = Some(now);
            continue;
        }
        let (writes_wait, sent, kernel_holds) = activity.sending();
        if first_late || now - last_move >= t.idle {
            if writes_wait {
                // A client that stopped taking its answer: what the kernel holds for it is
                // dropped with a reset rather than kept to be sent after the close.
                activity.reset_at_close();
                return Closed::Idle;
            }
            if !h2 {
                return Closed::Idle;
            }
            // HTTP/2: told first (`GOAWAY`, hyper's graceful end), so that a client starting a
            // stream just then knows whether it was taken. A stream taken meanwhile makes the
            // connection busy again and is watched as any other, the connection ending after
            // it; one still idle a grace later is closed.
            match goaway_at {
                None => {
                    activity.end_gracefully();
                    goaway_at = Some(now);
                }
                Some(at) if now - at >= IDLE_GOAWAY_GRACE => return Closed::Idle,
                Some(_) => {}
            }
            continue;
        }
        if send_rate.too_slow(now, writes_wait, sent, kernel_holds) {
            activity.reset_at_close();
            return Closed::SlowReader;
        }
        let (waiting, answered) = activity.answers();
        match stalled_since {
            _ if waiting == 0 => stalled_since = None,
            Some(since) if answered == answer_moves => {
                if now - since >= t.send {
                    return Closed::Stalled;
                }
            }
            // Answers waiting, seen for the first time or after one moved.
            _ => {
                answer_moves = answered;
                stalled_since = Some(now);
            }
        }
        // Others move: each answer held up alone for the send timeout is cut off alone.
        if waiting > 0 {
            let cut = activity.held.cut_held_up(held_ticks);
            if cut > 0 {
                tracing::warn!(
                    %peer,
                    answers = cut,
                    "HTTP/2 answers held up by the client past server.send_timeout: cut off"
                );
                for _ in 0..cut {
                    metrics.count_rejection("accept", "send_timeout");
                }
            }
        }
    }
}

/// Connection admission: a global cap and a per-client-address cap, checked at accept.
#[derive(Default)]
pub struct Admission {
    total: std::sync::atomic::AtomicUsize,
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// A connection's place under the caps; given back on drop.
pub struct Admitted {
    gw: Arc<Gateway>,
    /// The address key counted under the per-address cap (not a trusted proxy's).
    ip: Option<std::net::IpAddr>,
}

impl Admission {
    /// Takes a place for a connection from `ip`, or says why not (`connection_limit` when a
    /// cap is reached, `ip_banned` for a banned address under `bans.refuse_connections`).
    /// Locks only at accept, never per request. A trusted proxy (`server.trusted_proxies`) is
    /// held to the global cap only, and never refused as banned: its connections carry many
    /// clients, whose addresses are known only per request.
    pub fn admit(&self, gw: &Arc<Gateway>, ip: std::net::IpAddr) -> Result<Admitted, &'static str> {
        use std::sync::atomic::Ordering;
        let rt = gw.runtime();
        let config = rt.config();
        let server = &config.server;
        if self.total.fetch_add(1, Ordering::AcqRel) >= server.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("connection_limit");
        }
        if rt.snapshot.trusted.is_trusted(ip) {
            return Ok(Admitted {
                gw: gw.clone(),
                ip: None,
            });
        }
        if config.bans.refuse_connections()
            && gw
                .shared
                .bans
                .banned(&config.bans, ip, std::time::Instant::now())
                .is_some()
        {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("ip_banned");
        }
        let mut map = match self.per_ip.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Counted as bans count addresses: an IPv6 host owns a whole prefix (`bans.ipv6_prefix`)
        // and could open the cap's worth of connections from each of its addresses.
        let key = config.bans.key(ip);
        let n = map.entry(key).or_insert(0);
        if *n >= server.max_connections_per_ip {
            drop(map);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("connection_limit");
        }
        *n += 1;
        Ok(Admitted {
            gw: gw.clone(),
            ip: Some(key),
        })
    }

    fn release(&self, ip: Option<std::net::IpAddr>) {
        self.total.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        let Some(ip) = ip else { return };
        let mut map = match self.per_ip.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gw.admission.release(self.ip);
    }
}

/// Counts a connection in the active-connections gauge for as long as it lives.
struct OpenConnection {
    metrics: Arc<portcullis_telemetry::Metrics>,
    listener: Arc<str>,
}

impl OpenConnection {
    fn new(metrics: Arc<portcullis_telemetry::Metrics>, listener: Arc<str>) -> Self {
        metrics.connection_opened(&listener);
        OpenConnection { metrics, listener }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.connection_closed(&self.listener);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client reading at `client_rate` bytes per second, judged every 2.5 s for `secs`:
    /// when (if ever) it is too slow. The kernel holds `first` bytes for it when the writes
    /// begin to wait (what it took before), and from then on takes the gateway's writes only
    /// once it holds less than two thirds of `bound` (as Linux wakes a writer), up to `bound`.
    fn judged(rate: u64, client_rate: f64, first: u64, bound: u64, secs: u64) -> Option<f64> {
        let start = tokio::time::Instant::now();
        let mut judge = SendRate::new(rate);
        let mut queued = first as f64;
        let mut holds = first;
        let mut sent = 1_000_000u64;
        let step = 2.5;
        let mut t = 0.0;
        while t < secs as f64 {
            t += step;
            queued -= (client_rate * step).min(queued);
            if queued <= bound as f64 * 2.0 / 3.0 {
                sent += (bound as f64 - queued) as u64;
                queued = bound as f64;
                holds = bound;
            }
            let now = start + Duration::from_secs_f64(t);
            if judge.too_slow(now, true, sent, holds) {
                return Some(t);
            }
        }
        None
    }

    #[test]
    fn a_client_at_the_minimum_rate_or_above_is_never_behind() {
        for (first, bound) in [
            (16 * 1024, 16 * 1024),
            (87_040, 87_040),
            (4 * 1024 * 1024, 4 * 1024 * 1024),
            // A once-fast client: megabytes taken before the unsent bytes were bounded.
            (4 * 1024 * 1024, 192 * 1024),
        ] {
            for client in [256.0, 300.0, 1000.0, 50_000.0] {
                assert_eq!(
                    judged(256, client, first, bound, 6 * 3600),
                    None,
                    "{client} B/s, {first} bytes held, then at most {bound}"
                );
            }
        }
    }

    #[test]
    fn a_client_below_the_minimum_rate_is_closed_once_behind_by_the_buffers() {
        // 100 B/s against 256: behind by the buffer and the layers' allowance after at most
        // (87040 + 65536) / 156 ≈ 978 s — sooner by up to a third of the buffer, which the
        // kernel holds back from the count until it takes the next write.
        let at = judged(256, 100.0, 87_040, 87_040, 3600).expect("too slow");
        assert!((790.0..1000.0).contains(&at), "{at}");
        // One that takes nothing falls behind sooner the smaller its buffer.
        let at = judged(256, 0.0, 16 * 1024, 16 * 1024, 3600).expect("too slow");
        assert!((310.0..330.0).contains(&at), "{at}");
        // No minimum: never.
        assert_eq!(judged(0, 0.0, 16 * 1024, 16 * 1024, 3600), None);
    }

    #[test]
    fn writes_that_stop_waiting_end_the_judgement() {
        let start = tokio::time::Instant::now();
        let mut judge = SendRate::new(1000);
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(!judge.too_slow(at(0), true, 0, 0));
        // 70 s waiting with nothing taken: 70 kB owed, beyond the 64 KiB allowance.
        assert!(judge.too_slow(at(70), true, 0, 0));
        // The client took everything (the writes no longer wait): the debt is forgiven, and
        // the next wait is judged from its own start.
        assert!(!judge.too_slow(at(71), false, 10, 0));
        assert!(!judge.too_slow(at(72), true, 10, 0));
        assert!(!judge.too_slow(at(130), true, 10, 0));
        assert!(judge.too_slow(at(140), true, 10, 0));
    }
}
