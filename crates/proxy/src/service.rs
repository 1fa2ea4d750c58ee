//! One request's way through the engine: context, pipeline, upstream, response, audit.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_audit::{AuditEvent, Outcome};
use portcullis_config::{
    AcceptFrom, PathMatch, Rewrite, Route, TemplatePart, TraceContext, UpstreamKind,
};
use portcullis_core::{
    BoxBody, BoxError, GatewayRequest, RejectReason, Rejection, RequestBody, RequestCtx, RequestId,
    Scheme, StageId, TlsInfo, has_header, is_tchar,
};
use portcullis_pipeline::{Flow, request_host};

use crate::Gateway;
use crate::audited::Audited;
use crate::body::{BodyRules, LimitedBody, Tripped};
use crate::headers::{
    FieldSink, Forwarding, is_websocket_upgrade, pass_traceparent, propagate_traceparent,
    set_forwarding, strip_hop_by_hop,
};
use crate::paced::ToClient;
use crate::problem::{empty_body, full_body, problem_response};
use crate::runtime::Runtime;
use crate::upstream::{ANSWER_ROOM, ForwardOpts};

/// The step id under which engine-side failures (upstream errors) are recorded.
pub const UPSTREAM_STAGE: StageId = StageId("upstream");

/// The step id of responses withheld because the field masks authorization armed could not
/// be applied (recorded as the authorization step's, like its other refusals).
pub const RESPONSE_FILTER_STAGE: StageId = StageId("authz");
/// The step id of a response withheld by the route's own filters (field removal, the
/// contract's keep-only-declared) when no authorization mask is involved.
pub const RESPONSE_STAGE: StageId = StageId("response");

/// The step id of the token endpoint's refusals (RFC 6749 error answers it gives itself).
pub const TOKEN_EXCHANGE_STAGE: StageId = StageId("token_exchange");

/// The step id of refusals by the strict framing reader (the same id as the hygiene step:
/// both are "protocol" refusals).
pub const FRAMING_STAGE: StageId = StageId("protocol");

/// What the engine knows of a connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub scheme: Scheme,
    pub listener: Arc<str>,
    pub tls: Option<TlsInfo>,
    /// A TLS connection's listener and the client-certificate rules its handshake ran under,
    /// which each of its requests compares with its snapshot's (a reload may have changed
    /// them since); `None` for a cleartext connection.
    pub handshake: Option<crate::runtime::Handshake>,
    /// Set by the strict framing reader when the connection's bytes were ambiguous.
    pub framing: Arc<crate::sniff::Flag>,
    /// The upstream response timer, kept between the connection's requests.
    pub response_timer: crate::upstream::TimerSlot,
    /// Set when a request asked for a WebSocket upgrade: from then on the connection may
    /// carry a tunnel, whose shutdown is a half-close (no lingering read: see the front's
    /// `Prefixed` stream).
    pub may_tunnel: std::sync::atomic::AtomicBool,
    /// `server.abort_on_client_close` when the connection was accepted: the client's end of
    /// stream (or a reset) during an HTTP/1.x request abandons the request.
    pub abort_on_close: bool,
    /// HTTP/2 streams the client reset before their answers, against
    /// `server.http2_max_resets_per_second` as it was when the connection was accepted.
    pub resets: Arc<crate::resets::ResetWatch>,
    /// The connection's traffic, for its watchdog: here, HTTP/2 answers waiting on the
    /// client's flow-control window ([`crate::paced::ToClient`]).
    pub activity: Arc<crate::sniff::Activity>,
}

impl ConnInfo {
    pub(crate) fn may_tunnel(&self) -> bool {
        self.may_tunnel.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Removes the conditional fields that compare against the upstream's entity tags, and
/// `Range`.
#[cold]
fn strip_validators(headers: &mut http::HeaderMap) {
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MATCH,
        header::IF_RANGE,
        header::RANGE,
    ] {
        headers.remove(name);
    }
}

/// The step id of refusals of requests on a connection whose handshake no longer stands
/// (step 0, accept).
pub const ACCEPT_STAGE: StageId = StageId("accept");

/// A request on a TLS connection whose listener's client-certificate rules changed since the
/// handshake (a CA removed from `ca_file`, `optional` made `required`, client auth turned on
/// or off): the certificate the handshake verified is not believed any more — the request goes
/// on without it, so mTLS fails closed as for a missing certificate — and the connection is
/// ended after the answer (HTTP/2: `GOAWAY`, asked for here), so that the client connects
/// again under the new rules. Out of line: it happens once or twice per connection, at most,
/// after such a reload.
#[cold]
#[inline(never)]
fn client_auth_changed(conn: &ConnInfo, ctx: &mut RequestCtx, h2: bool, required: bool) {
    if let Some(tls) = ctx.tls.as_mut() {
        tls.peer_certificate = None;
    }
    if h2 {
        conn.activity.end_gracefully();
    }
    tracing::info!(
        listener = %conn.listener,
        peer = %conn.peer,
        request_id = %ctx.request_id,
        required,
        "the connection predates a change of its listener's client-certificate rules: its certificate is not used, and it is closed after this answer"
    );
}

/// The gateway's fields of an answer whose map does not carry them, for the server that
/// writes the head itself: it skips the map's fields these replace or the policy removes
/// ([`DeferredFields::omits`]) and writes these after the map's.
pub(crate) struct DeferredFields {
    pub headers: Arc<portcullis_response::SecurityHeaders>,
    pub tls: bool,
    /// The request id field (replacing an upstream's of the same name).
    pub request_id: Option<(HeaderName, HeaderValue)>,
}

impl DeferredFields {
    /// Whether the map's fields called `name` stay out of the answer. `Connection` never does:
    /// past the hop-by-hop strip it is the gateway's own `close` (a configured removal of it
    /// is refused at load time; this keeps it so whatever the policy says).
    pub fn omits(&self, name: &HeaderName) -> bool {
        (self.request_id.as_ref().is_some_and(|(n, _)| n == name)
            || self.headers.omits(name, self.tls))
            && name != header::CONNECTION
    }

    /// The fields to write after the map's — the request id, then the security headers
    /// ([`SecurityHeaders::fields`](portcullis_response::SecurityHeaders::fields)) — in
    /// HTTP/1.1 form (`name: value` CRLF each), appended to `out`: the security headers in
    /// one piece, made when the configuration was loaded.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if let Some((n, v)) = &self.request_id {
            crate::headers::push_line(out, n.as_str().as_bytes(), v.as_bytes());
        }
        out.extend_from_slice(self.headers.wire(self.tls));
    }
}

/// What forwarding needs from the client's side: the connection (its response timer; its
/// activity, which watches a tunnel), and the room to keep in the answer's map for the fields
/// the gateway will still add to it.
struct ClientSide<'a> {
    conn: &'a ConnInfo,
    answer_room: usize,
}

/// What the audit event needs that the request itself carries away.
struct Seen {
    method: Method,
    /// The method as the client wrote it, for a head the framing reader refused (the request
    /// that went on is the stand-in's).
    raw_method: Option<String>,
    host: Option<String>,
    path: String,
    version: Version,
    user_agent: Option<String>,
    upstream: Option<Arc<str>>,
    target: Option<Arc<str>>,
    /// Set when an upstream error body was replaced (audit).
    upstream_error: Option<portcullis_audit::UpstreamErrorAudit>,
    /// The request id as a header value, made once for the upstream's copy and the client's.
    request_id: Option<HeaderValue>,
}

impl Seen {
    /// What the audit event says of a head the framing reader refused: its request line as far
    /// as it reads — the method (empty unless a token), the target's path (never its query),
    /// the version when it is HTTP/1.0 — rather than the stand-in's, and no host or user agent.
    /// `line` is bounded ([`crate::sniff::LINE_KEPT`]).
    fn refused_head(&mut self, line: &[u8]) {
        let mut parts = line.splitn(3, |&b| b == b' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        let method_ok = !method.is_empty() && method.iter().all(|&b| is_tchar(b));
        self.raw_method = Some(if method_ok {
            String::from_utf8_lossy(method).into_owned()
        } else {
            String::new()
        });
        // An absolute-form target's path only: its authority may hold credentials
        // (`http://user:password@host/x`).
        let path = match path.windows(3).position(|w| w == b"://") {
            Some(i) => {
                let rest = path.get(i + 3..).unwrap_or_default();
                rest.iter()
                    .position(|&b| b == b'/')
                    .and_then(|j| rest.get(j..))
                    .unwrap_or(b"/")
            }
            None => path,
        };
        self.path = String::from_utf8_lossy(path).into_owned();
        if parts.next() == Some(b"HTTP/1.0") {
            self.version = Version::HTTP_10;
        }
        self.host = None;
        self.user_agent = None;
    }
}

/// What a captured parameter (decoded by the router) is written back with in a rewritten
/// path: everything but the unreserved characters escaped. A delimiter it held escaped
/// (`%26`, `%3D`, `%3B`, `%2B`, `%3F`) stays escaped, so the upstream cannot read from it a
/// query parameter, a path parameter (`..;`) or a segment the gateway did not see.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn incoming_request_id(headers: &http::HeaderMap, name: &http::HeaderName) -> Option<RequestId> {
    headers
        .get(name)
        .and_then(|v| RequestId::from_client(v.as_bytes()))
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// The upstream path and query for a route's rewrite rule.
fn rewritten(route: &Route, ctx: &RequestCtx, uri: &http::Uri) -> Option<String> {
    let rw = route.rewrite.as_ref()?;
    let path = uri.path();
    let query = uri.query();
    let mut out = match (rw, &route.path) {
        (Rewrite::ReplacePrefix(new), PathMatch::Prefix(old)) => {
            let rest = path.get(old.len()..).unwrap_or("");
            let p = format!("{new}{rest}");
            if p.is_empty() {
                "/".to_string()
            } else if p.starts_with('/') {
                p
            } else {
                format!("/{p}")
            }
        }
        (Rewrite::ReplacePrefix(_), _) => path.to_string(),
        (Rewrite::Template(parts), _) => {
            let mut p = String::with_capacity(path.len() + 16);
            for part in parts {
                match part {
                    TemplatePart::Literal(l) => p.push_str(l),
                    TemplatePart::Param(name) => {
                        let v = ctx.route.as_ref().and_then(|m| m.param(name)).unwrap_or("");
                        p.extend(percent_encoding::utf8_percent_encode(v, SEGMENT));
                    }
                }
            }
            p
        }
    };
    match (query, out.find('?')) {
        (None, _) => {}
        (Some(q), None) => {
            out.push('?');
            out.push_str(q);
        }
        (Some(q), Some(at)) => {
            // The template's parameters are the route's to set: the client's of the same names
            // would follow them, and PHP and Rails read the last value (qs an array).
            let set: Vec<String> = pieces(&out[at + 1..]).map(|(_, p)| query_name(p)).collect();
            let mut first = true;
            for (sep, piece) in pieces(q) {
                if set.contains(&query_name(piece)) {
                    continue;
                }
                // Each kept piece after its own separator, so that a backend that does not
                // split at `;` reads the kept values as sent.
                out.push(if first { '&' } else { sep });
                out.push_str(piece);
                first = false;
            }
        }
    }
    Some(out)
}

/// A query's parameters as sent, each with the separator before it (`&` for the first), split
/// where any framework an upstream may use splits them: at `&`, and at `;` (Rack before 3,
/// Python before 3.10, Go before 1.17).
fn pieces(query: &str) -> impl Iterator<Item = (char, &str)> {
    let mut sep = '&';
    query.split_inclusive(['&', ';']).filter_map(move |p| {
        let (piece, next) = match p.strip_suffix(['&', ';']) {
            Some(piece) => (piece, if p.ends_with(';') { ';' } else { '&' }),
            None => (p, '&'),
        };
        let before = std::mem::replace(&mut sep, next);
        (!piece.is_empty()).then_some((before, piece))
    })
}

/// A parameter's name as upstream frameworks read it ([`portcullis_core::query::fold_name`]), from a
/// piece of a query as sent: percent-decoded, `+` a space.
fn query_name(piece: &str) -> String {
    let raw = piece
        .split('=')
        .next()
        .unwrap_or_default()
        .replace('+', " ");
    portcullis_core::query::fold_name(
        &percent_encoding::percent_decode_str(&raw).decode_utf8_lossy(),
    )
}

impl Gateway {
    /// The hyper service entry point. The future is boxed as `Send` here, at a concrete type,
    /// because rustc cannot prove it through hyper's higher-ranked service bounds.
    pub fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<ToClient>, Infallible>> + Send>> {
        Box::pin(async move {
            let (head, body) = req.into_parts();
            // HTTP/2 answers are watched while they wait on the client's window, and an answer
            // the client resets before its end counts towards the connection's reset rate.
            let h2 = head.version == Version::HTTP_2;
            let watch = h2.then(|| conn.activity.clone());
            let resets = h2.then(|| conn.resets.clone());
            let mut resp = self.serve(conn, Box::new(head), body, false).await.0;
            let undelivered = resp
                .extensions_mut()
                .remove::<crate::audited::Undelivered>();
            Ok(resp.map(|b| {
                let b = ToClient::new(b, watch, undelivered.map(|u| u.0));
                match resets {
                    Some(r) => b.counting_resets(r),
                    None => b,
                }
            }))
        })
    }

    /// One request's way, from whichever server read it (hyper, or the HTTP/1.1 front).
    /// `defer_security`: the caller writes the answer's head itself and may be handed the
    /// gateway's fields to write after the map's ([`DeferredFields`]).
    pub(crate) async fn serve<B>(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        mut head: Box<http::request::Parts>,
        body: B,
        defer_security: bool,
    ) -> (Response<BoxBody>, Option<DeferredFields>)
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // Until the answer's head is out, the connection is not idle: this request's own
        // timeouts bound the wait (dropped with this future, if the request is given up).
        let _waiting = conn.activity.request_waits();
        let rt = self.runtime();
        let config = rt.config();
        let mut ctx = RequestCtx::new(conn.peer, conn.scheme, conn.listener.clone());
        ctx.tls = conn.tls.clone();
        ctx.peer_trusted = rt.snapshot.trusted.is_trusted(conn.peer.ip());
        // Whether the client reached the gateway over TLS: its own listener's, or a trusted
        // proxy's word (`X-Forwarded-Proto`, `Forwarded: proto=`) — what HSTS is sent on.
        let client_tls = ctx.client_scheme(&head.headers) == Scheme::Https;

        let id_header = config.server.request_id_header.clone();
        let accept_id = match config.server.accept_request_id {
            AcceptFrom::Any => true,
            AcceptFrom::TrustedProxies => ctx.peer_trusted,
            AcceptFrom::None => false,
        };
        if accept_id && let Some(id) = incoming_request_id(&head.headers, &id_header) {
            ctx.request_id = id;
        }
        // The client-certificate rules the connection's handshake ran under, against this
        // snapshot's: `Some(required now)` when they changed.
        let trust_changed = conn
            .handshake
            .as_ref()
            .and_then(|h| rt.client_auth_changed(h));
        if let Some(required) = trust_changed {
            client_auth_changed(&conn, &mut ctx, head.version == Version::HTTP_2, required);
        }

        // The framing reader stops following an HTTP/1 connection at a head that asks for an
        // upgrade or a tunnel (what follows a 101 is not HTTP/1.1). When none is made, the
        // connection is closed after the answer: later heads would reach hyper unchecked.
        let unfollowed = matches!(head.version, Version::HTTP_10 | Version::HTTP_11)
            && (head.method == Method::CONNECT || has_header(&head.headers, &header::UPGRADE));
        let websocket =
            unfollowed && head.version == Version::HTTP_11 && is_websocket_upgrade(&head.headers);
        let downstream_upgrade = if websocket {
            Some(downstream_upgrade(&mut head, &conn))
        } else {
            None
        };
        // What only the audit event needs is copied only when there is one to write.
        let audited = self.audit.enabled();
        let seen = Seen {
            method: head.method.clone(),
            raw_method: None,
            host: if audited { request_host(&head) } else { None },
            // The raw path until the pipeline has run (an abandoned request's may be all there
            // is), then the normalised one.
            path: if audited {
                head.uri.path().to_string()
            } else {
                String::new()
            },
            version: head.version,
            // Copied bounded, yet longer than the audit's limit when the field is, so that the
            // event cuts and marks it (a character is at most 4 bytes).
            user_agent: if audited {
                head.headers.get(header::USER_AGENT).map(|v| {
                    let b = v.as_bytes();
                    let kept = b
                        .get(..portcullis_audit::MAX_USER_AGENT_BYTES + 4)
                        .unwrap_or(b);
                    String::from_utf8_lossy(kept).into_owned()
                })
            } else {
                None
            },
            upstream: None,
            target: None,
            upstream_error: None,
            request_id: HeaderValue::from_str(ctx.request_id.as_str()).ok(),
        };
        // From here on the request is audited even if its future is dropped before the answer
        // (a stream reset, a connection gone): `Open`'s drop writes it as abandoned.
        let mut open = Open {
            gw: &self,
            ctx,
            seen,
            answered: false,
            // Only an HTTP/2 stream's future is dropped by a reset the connection outlives.
            resets: (head.version == Version::HTTP_2).then_some(&*conn.resets),
        };
        let (ctx, seen) = (&mut open.ctx, &mut open.seen);
        // Watched for trickling from the first byte, so a step that buffers the body (the WAF)
        // is protected as much as the upstream is; the route's size limit is added at forward
        // time (buffering steps bound themselves by `ctx.body_limit`).
        let mut watched = None;
        let body = if http_body::Body::is_end_stream(&body) {
            empty_body() // nothing to watch, nothing to box (most GETs)
        } else {
            let body: BoxBody = body.map_err(Into::into).boxed_unsync();
            let tripped = Arc::new(Tripped::default());
            ctx.extensions.insert(tripped.clone());
            watched = Some(tripped.clone());
            let server = &rt.snapshot.config.server;
            let rules = BodyRules {
                limit: u64::MAX,
                read_timeout: server.body_read_timeout,
                min_bytes_per_second: server.body_min_bytes_per_second,
            };
            LimitedBody::new(body, rules, tripped).boxed_unsync()
        };
        let mut greq = GatewayRequest::new(head, body);

        // Refused before the client address step: behind a trusted proxy, the client is not
        // known (only the proxy is), and such a refusal is counted against no one.
        let framing_refused = conn.framing.get().is_some();
        let verdict = match conn.framing.get() {
            // The raw bytes were ambiguous: refuse before any step reads the request.
            // Nothing after it is read (the reader passes nothing on): the connection ends
            // with the answer.
            Some(a) => {
                ctx.rejected_by = Some((FRAMING_STAGE, a.reason()));
                // (No line when the head's start had already gone to hyper, which then parsed
                // it: what it parsed stands.)
                if audited && let Some(line) = conn.framing.line() {
                    seen.refused_head(line);
                }
                Err(Rejection::new(a.reason(), a.detail())
                    .with_header(header::CONNECTION, HeaderValue::from_static("close")))
            }
            // The listener now requires a client certificate, and none this connection
            // presented can be believed: refused before any step, and the connection ends.
            None if trust_changed == Some(true) => {
                ctx.rejected_by = Some((ACCEPT_STAGE, RejectReason::ClientAuthChanged));
                Err(Rejection::new(
                    RejectReason::ClientAuthChanged,
                    "the connection predates a change of the listener's client-certificate rules; open a new connection",
                ))
            }
            None => {
                let verdict = rt.snapshot.pipeline.run(&mut greq, ctx).await;
                // The normalised path when normalisation ran, the raw one when it refused the
                // request.
                if audited {
                    seen.path.clear();
                    seen.path.push_str(greq.head.uri.path());
                }
                verdict
            }
        };
        let result = match verdict {
            Err(rejection) => Err(rejection),
            Ok(Flow::Forward) => {
                let client = ClientSide {
                    conn: &conn,
                    // When the server writes the gateway's fields after the map's (below: no
                    // step added response fields), the answer's map gets none.
                    answer_room: if defer_security && ctx.response_headers.is_empty() {
                        0
                    } else {
                        ANSWER_ROOM
                    },
                };
                self.forward(&rt, greq, ctx, seen, downstream_upgrade, client)
                    .await
            }
            Ok(Flow::Answer(answer)) => Ok(answered(*answer)),
        };
        // The gateway's problem documents carry the request id whatever
        // `request_id.response` says: it is what a refused client quotes.
        let id_on_answer = config.server.request_id_response || result.is_err();
        let mut resp = match result {
            Ok(resp) => resp,
            Err(rejection) => {
                if ctx.rejected_by.is_none() {
                    ctx.rejected_by = Some((forward_stage(rejection.reason), rejection.reason));
                }
                problem_response(&rejection, &ctx.request_id)
            }
        };
        // A server that writes the head itself gets the gateway's fields to write after the
        // map's (the same answer, without inserts into the map or removals from it) — unless a
        // step's own response fields may replace some of them, which the map then sorts out.
        let defer = defer_security && ctx.response_headers.is_empty();
        let request_id = seen
            .request_id
            .take()
            .filter(|_| id_on_answer)
            .map(|v| (id_header, v));
        let request_id = if defer {
            request_id
        } else {
            if let Some((name, value)) = request_id {
                resp.headers_mut().insert(name, value);
            }
            None
        };
        // An HTTP/1 answer given before the request's body was read whole (a refusal, an
        // upstream's early answer) ends the connection: the next request would start somewhere
        // in the body. Said in the answer, as the front does; hyper then closes after it (and
        // `Prefixed` lingers, so the close does not reset the answer away).
        if !defer_security
            && matches!(seen.version, Version::HTTP_10 | Version::HTTP_11)
            && watched.is_some_and(|t| !t.ended())
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // Every response — forwarded, refused or answered by the gateway — carries the security
        // headers of its route (the gateway-wide ones when no route matched).
        let security = ctx
            .route_id()
            .and_then(|id| config.routes.get(id.0))
            .map_or(&config.security_headers, |r| &r.security_headers);
        let tls = client_tls;
        let deferred = if defer {
            Some(DeferredFields {
                headers: security.clone(),
                tls,
                request_id,
            })
        } else {
            security.apply(resp.headers_mut(), tls);
            // Trailers (HTTP/2 answers, announced HTTP/1.1 ones) are held to the same policy
            // as the head: a revealing field must not come after the body instead.
            if !http_body::Body::is_end_stream(resp.body())
                && (seen.version == Version::HTTP_2 || resp.headers().contains_key(header::TRAILER))
            {
                let policy = security.clone();
                resp = resp
                    .map(|b| crate::headers::TrailersStripped::new(b, policy, tls).boxed_unsync());
            }
            None
        };
        if !ctx.response_headers.is_empty() {
            let h = resp.headers_mut();
            for (name, _) in &ctx.response_headers {
                // `Vary` lists what the response depends on: the upstream's reasons stay,
                // the gateway's are added.
                if name != header::VARY {
                    h.remove(name);
                }
            }
            for (name, value) in ctx.response_headers.drain(..) {
                h.append(name, value);
            }
        }
        if unfollowed && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // A connection whose client-certificate rules changed ends with this answer (an
        // HTTP/2 one was told to, above), so that its client handshakes again.
        if trust_changed.is_some()
            && matches!(seen.version, Version::HTTP_10 | Version::HTTP_11)
            && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // A refusal counts towards the client address's bans (kept across reloads) — never a
        // trusted proxy's, whose own address `client_ip` still is when the framing reader
        // refused the head before the client address was read from it.
        if let Some((_, reason)) = ctx.rejected_by
            && !config.bans.is_empty()
            && !(framing_refused && ctx.peer_trusted)
            && let Some(ban) = self.shared.bans.record(
                &config.bans,
                ctx.client_ip,
                reason,
                std::time::Instant::now(),
            )
        {
            tracing::warn!(address = %ban.address, rule = %ban.rule, seconds = ban.ban_for.as_secs(), request_id = %ctx.request_id, "client address banned");
            self.metrics.banned(&ban.rule);
        }
        if let Some(event) = self.finish(ctx, seen, Some(resp.status())) {
            // A WebSocket tunnel records its own end when the gateway closes it, as the
            // handshake's event with what changed.
            if let Some(TunnelAudit(slot)) = resp.extensions().get::<TunnelAudit>() {
                let _ = slot.set(event.clone());
            }
            // Written when the answer's body is done with: whole, or cut off.
            let status = resp.status();
            let bodiless = seen.method == Method::HEAD
                || status.is_informational()
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED;
            let sink = self.audit.clone();
            if seen.version == Version::HTTP_2 {
                // The HTTP/2 answer's watch hands the body on in slices: it tells this event
                // when it cut the answer off, or let it go, before the last one was out.
                let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
                resp = resp.map(|b| {
                    Audited::new(b, event, sink, ctx.received, bodiless)
                        .undelivered_by(flag.clone())
                        .boxed_unsync()
                });
                resp.extensions_mut()
                    .insert(crate::audited::Undelivered(flag));
            } else {
                resp = resp
                    .map(|b| Audited::new(b, event, sink, ctx.received, bodiless).boxed_unsync());
            }
        }
        open.answered = true;
        (resp, deferred)
    }

    async fn forward(
        &self,
        rt: &Runtime,
        mut greq: GatewayRequest,
        ctx: &mut RequestCtx,
        seen: &mut Seen,
        downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
        client: ClientSide<'_>,
    ) -> Result<Response<BoxBody>, Rejection> {
        let config = rt.config();
        let Some(route_id) = ctx.route_id() else {
            return Err(Rejection::new(RejectReason::RouteNotFound, "no route"));
        };
        let (Some(route), Some(upstream)) = (
            config.routes.get(route_id.0),
            config
                .routes
                .get(route_id.0)
                .and_then(|r| config.upstreams.get(r.upstream)),
        ) else {
            return Err(Rejection::new(
                RejectReason::Internal,
                "route table out of step",
            ));
        };
        seen.upstream = Some(upstream.name.clone());
        // What follows a 101 is no HTTP answer: nothing there is masked, filtered or checked.
        // Where this request's answers are to be (field masks, `response_filter`, a contract's
        // response checks), an upgrade would carry them past all of it: refused before the
        // upstream hears of it.
        if downstream_upgrade.is_some()
            && (ctx.response_filter.is_some()
                || route.response_filter.is_some()
                || ctx.response_contract.is_some())
        {
            return Err(Rejection::new(
                RejectReason::Forbidden,
                "the answers on this route are filtered; an upgraded connection could not be",
            ));
        }
        let body = greq.take_body();
        let mut head = greq.head;

        // HTTP/2 carries the host in :authority; an HTTP/1.1 upstream needs it as Host.
        if !portcullis_core::has_header(&head.headers, &header::HOST)
            && let Some(v) = head
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            head.headers.insert(header::HOST, v);
        }

        // Path and query for the upstream: the rewritten ones, else the request's own (taken
        // out of an absolute or authority form, kept as they are otherwise — no copy).
        if let Some(pq) = rewritten(route, ctx, &head.uri) {
            head.uri = match pq.parse::<http::Uri>() {
                Ok(u) => u,
                Err(_) => {
                    return Err(Rejection::new(
                        RejectReason::BadRequest,
                        "the rewritten path is not valid",
                    ));
                }
            };
        } else if head.uri.scheme().is_some() || head.uri.authority().is_some() {
            let pq = head
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            head.uri = http::Uri::from(pq);
        }

        // Headers for the upstream.
        let websocket = downstream_upgrade.is_some();
        strip_hop_by_hop(&mut head.headers, websocket);
        let host_for_fwd = portcullis_core::header_value(&head.headers, &header::HOST).cloned();
        // The scheme the client used, for links in the answer: the listener's, or, behind a
        // trusted proxy that says so, the proxy's client's (a TLS terminator in front of a
        // cleartext listener would otherwise get `http://` links). The host stays the request's
        // own: a forwarded host written into a cacheable redirect is how caches get poisoned.
        let link_scheme = ctx.client_scheme(&head.headers).as_str();
        // HTTP/2's `:authority` (when there is no `Host`), for links in the answer.
        let authority = head.uri.authority().cloned();
        // The gateway's own fields go to a proxied target's client as a list, written after
        // the map's (no inserts into the map) — unless the route's header rules are to see
        // them in the map.
        let listed =
            matches!(upstream.kind, UpstreamKind::Proxy) && route.request_headers.is_empty();
        let mut own_fields = Vec::new();
        let mut sink = if listed {
            own_fields.reserve_exact(256);
            FieldSink::Wire(&mut own_fields)
        } else {
            FieldSink::Map
        };
        crate::headers::strip_forwarding_claims(
            &mut head.headers,
            ctx.peer_trusted,
            &config.server.request_id_header,
        );
        set_forwarding(
            &mut head.headers,
            ctx,
            &Forwarding {
                x_forwarded: config.server.x_forwarded,
                forwarded: config.server.forwarded,
                peer_trusted: ctx.peer_trusted,
                host: host_for_fwd.as_ref(),
            },
            &mut sink,
        );
        if !config.server.request_id_upstream {
            // Not the gateway's to send, and not the client's to choose for the upstream.
            head.headers.remove(&config.server.request_id_header);
        } else if let Some(v) = seen.request_id.clone() {
            sink.set(
                &mut head.headers,
                config.server.request_id_header.clone(),
                v,
            );
        }
        match config.server.trace_context {
            TraceContext::Continue => propagate_traceparent(&mut head.headers, &mut sink),
            TraceContext::Pass => pass_traceparent(&mut head.headers),
        }
        let rewritten = route.response_filter.is_some()
            || ctx.response_filter.is_some()
            || ctx.response_contract.as_ref().is_some_and(|c| c.filters());
        if rewritten || ctx.response_contract.is_some() {
            // Filtered and validated bodies must arrive readable (a compressed one could only
            // be withheld or passed unchecked).
            head.headers.remove(header::ACCEPT_ENCODING);
        }
        if rewritten && matches!(head.method, Method::GET | Method::HEAD) {
            // The upstream's validators describe the whole body, not the view the client
            // gets: a 304 to a guessed `If-None-Match` would tell whether a hidden field holds
            // the guessed value (and the tag itself, its length and hash), and a range of it
            // (206) cannot be filtered. A read gets the view whole every time; a write keeps
            // its preconditions (`If-Match` guards against lost updates).
            strip_validators(&mut head.headers);
        }
        route.request_headers.apply(&mut head.headers);
        head.version = Version::HTTP_11;

        // The body, counted against the route's limit and watched for trickling as it streams.
        let limit = ctx
            .body_limit
            .unwrap_or(config.server.limits.max_body_bytes);
        let mut tripped = ctx.extensions.get::<Arc<Tripped>>().cloned();
        let body: BoxBody = match body {
            // Nothing to count (most GETs).
            RequestBody::Streaming(b) if http_body::Body::is_end_stream(&b) => b,
            RequestBody::Streaming(b) => {
                let tripped = tripped.get_or_insert_with(Default::default).clone();
                LimitedBody::size_only(b, limit, tripped).boxed_unsync()
            }
            RequestBody::Buffered(bytes) => full_body(bytes),
        };

        let mut resp = match upstream.kind {
            UpstreamKind::Echo => {
                seen.target = Some(Arc::from("echo"));
                crate::echo::respond(*head, body, limit).await?
            }
            UpstreamKind::Static => {
                seen.target = Some(Arc::from("static"));
                drop(body);
                static_answer(upstream, &head.method, head.uri.path())
            }
            UpstreamKind::TokenExchange => {
                seen.target = Some(Arc::from("token_exchange"));
                let Some(tx) = rt.snapshot.token_exchange.clone() else {
                    return Err(Rejection::new(
                        RejectReason::Internal,
                        "the token endpoint is not configured",
                    ));
                };
                let bytes = crate::echo::read_body(body, limit).await?;
                let authn = rt.snapshot.pipeline.authn.clone();
                let answer = tx.handle(&head, &bytes, ctx, &authn).await;
                // Its error answers are refusals like any step's: audited as such, counted in
                // the metrics and towards bans (a client guessing secrets or replaying tokens).
                let refused = match answer.status() {
                    StatusCode::UNAUTHORIZED => Some(RejectReason::Unauthenticated),
                    StatusCode::SERVICE_UNAVAILABLE => Some(RejectReason::AuthUnavailable),
                    s if s.is_client_error() => Some(RejectReason::BadRequest),
                    _ => None,
                };
                if let Some(reason) = refused {
                    ctx.rejected_by = Some((TOKEN_EXCHANGE_STAGE, reason));
                }
                answer.map(full_body)
            }
            UpstreamKind::Proxy => {
                let Some(pool) = rt.pools.get(route.upstream).and_then(Option::as_ref) else {
                    return Err(Rejection::new(
                        RejectReason::Internal,
                        "upstream pool missing",
                    ));
                };
                let opts = ForwardOpts {
                    timeout: route.timeout.unwrap_or(upstream.request_timeout),
                    retryable: is_idempotent(&head.method) && !websocket,
                    timer: Some(&client.conn.response_timer),
                    extra: &own_fields,
                    answer_room: client.answer_room,
                    request_body: tripped.as_deref(),
                };
                // A struggling backend is not handed more than it currently copes with.
                let permit = match &upstream.adaptive_concurrency {
                    Some(l) => match l.try_acquire() {
                        Some(p) => Some(p),
                        None => {
                            return Err(Rejection::new(
                                RejectReason::Overloaded,
                                "the upstream is at its concurrency limit; retry later",
                            )
                            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")));
                        }
                    },
                    None => None,
                };
                let adaptive = rt.snapshot.pipeline.ratelimit.adaptive();
                // Timed only for the limits that learn from upstream latency.
                let started =
                    (adaptive.is_some() || permit.is_some()).then(std::time::Instant::now);
                // `seen.target` names the target from its pick on (an exchange given up midway
                // is audited with it).
                let answer = pool
                    .forward_head(&mut head, body, opts, &mut seen.target)
                    .await;
                if let Some(started) = started {
                    let failed = answer
                        .as_ref()
                        .map_or(true, |ur| ur.response.status().is_server_error());
                    let took = started.elapsed();
                    if let Some(a) = adaptive {
                        a.record_upstream(took, failed);
                    }
                    if let Some(p) = permit {
                        p.done(took, failed);
                    }
                }
                match answer {
                    Ok(ur) => {
                        self.metrics
                            .count_upstream_request(&upstream.name, &ur.target, "ok");
                        ur.response
                    }
                    Err(e) => {
                        let target = e.target().unwrap_or("");
                        let reason = e.reason();
                        if !target.is_empty() {
                            let outcome = if reason == RejectReason::UpstreamTimeout {
                                "timeout"
                            } else {
                                "error"
                            };
                            self.metrics
                                .count_upstream_request(&upstream.name, target, outcome);
                            seen.target = Some(Arc::from(target));
                        }
                        match tripped.as_ref().and_then(|t| t.reason()) {
                            Some(RejectReason::BodyTooLarge) => {
                                return Err(Rejection::new(
                                    RejectReason::BodyTooLarge,
                                    format!("the request body exceeds {limit} bytes"),
                                ));
                            }
                            Some(r) => {
                                return Err(Rejection::new(
                                    r,
                                    "the request body arrived too slowly",
                                ));
                            }
                            None => {}
                        }
                        tracing::warn!(upstream = %upstream.name, target, error = %e, request_id = %ctx.request_id, "upstream failure");
                        let detail = match reason {
                            RejectReason::NoHealthyUpstream => {
                                "no healthy upstream target is available"
                            }
                            RejectReason::UpstreamTimeout => "the upstream did not answer in time",
                            _ => "the upstream could not be reached or failed",
                        };
                        return Err(Rejection::new(reason, detail));
                    }
                }
            }
        };

        let mut tunnel_down = None;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The upstream's hop-by-hop fields (`Keep-Alive`, `Proxy-Authenticate`, what its
            // `Connection` names) stay on its side of the tunnel: only the handshake's own
            // `Upgrade` and `Connection: upgrade` go on, and no length for a 101.
            strip_hop_by_hop(resp.headers_mut(), true);
            resp.headers_mut().remove(header::CONTENT_LENGTH);
            match downstream_upgrade {
                // Joined into a tunnel once the route's header rules have run (below).
                Some(down) => tunnel_down = Some(down),
                None => {
                    return Err(Rejection::new(
                        RejectReason::UpstreamError,
                        "the upstream switched protocols unasked",
                    ));
                }
            }
        } else {
            strip_hop_by_hop(resp.headers_mut(), false);
            // (Only answers that carry such links: a redirect, a 201.)
            if (resp.status().is_redirection() || resp.status() == StatusCode::CREATED)
                && let (Some(target), Some(host)) = (
                    &seen.target,
                    host_for_fwd
                        .as_ref()
                        .and_then(|h| h.to_str().ok())
                        .or(authority.as_ref().map(|a| a.as_str())),
                )
            {
                crate::headers::rewrite_target_links(resp.headers_mut(), target, link_scheme, host);
            }
        }
        if route.cors.is_some() {
            // The gateway alone speaks CORS on this route.
            for name in portcullis_cors::CORS_RESPONSE_HEADERS {
                resp.headers_mut().remove(name);
            }
        }
        route.response_headers.apply(resp.headers_mut());
        if let Some(down) = tunnel_down {
            // The extensions the client is told were agreed: the 101 as it leaves.
            let frames = crate::wsframes::ClientFrames::new(
                route
                    .websocket
                    .as_ref()
                    .and_then(|w| w.max_message_bytes())
                    .unwrap_or(route.max_body_bytes),
                crate::wsframes::Extensions::agreed(
                    resp.headers()
                        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                        .iter()
                        .map(HeaderValue::as_bytes),
                ),
            );
            tunnel(
                down,
                &mut resp,
                frames,
                (ctx.request_id.clone(), route.name.clone()),
                (&self.metrics, &self.audit, ctx.received),
                &client.conn.activity,
            );
            return Ok(resp);
        }
        // The body is buffered before anything reaches the client, so its read is bounded like
        // the wait for the head.
        let wait = route.timeout.unwrap_or(upstream.request_timeout);
        // The token endpoint's errors are protocol answers (RFC 6749 JSON), not leaks.
        if upstream.kind != UpstreamKind::TokenExchange && route.errors.replaces(resp.status()) {
            return tokio::time::timeout(wait, self.replace_error(resp, route, ctx, seen))
                .await
                .map_err(|_| {
                    Rejection::new(
                        RejectReason::UpstreamTimeout,
                        "the upstream response body did not arrive in time",
                    )
                });
        }
        let contract = ctx
            .response_contract
            .as_deref()
            .filter(|c| c.wants_body(resp.status()));
        let mask = ctx.response_filter.as_ref();
        let remove = route.response_filter.as_ref();
        if contract.is_none() && mask.is_none() && remove.is_none() {
            if ctx.per_caller_response {
                per_caller(resp.headers_mut());
            }
            return Ok(resp);
        }
        let max_bytes = [
            mask.map(|m| m.max_bytes),
            remove.map(|r| r.max_bytes),
            contract.map(|c| c.max_bytes()),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(u64::MAX);
        let plan = crate::respfilter::Plan {
            remove: remove.map(|r| &*r.rules as &dyn portcullis_core::JsonFilter),
            contract,
            mask: mask.map(|m| &*m.json),
            max_bytes,
            fail_closed: mask.is_some()
                || remove
                    .is_none_or(|r| r.on_unfilterable == portcullis_config::OnUnfilterable::Reject),
        };
        let (mut resp, violations) = tokio::time::timeout(
            wait,
            crate::respfilter::filter_with(resp, &plan, &seen.method),
        )
        .await
        .map_err(|_| {
            Rejection::new(
                RejectReason::UpstreamTimeout,
                "the upstream response body did not arrive in time",
            )
        })?
        .inspect_err(|r| {
            // A body withheld because the caller may not see it unfiltered is a policy
            // outcome, not an upstream failure.
            if r.reason == RejectReason::ResponseFilterFailed {
                let stage = if mask.is_some() {
                    RESPONSE_FILTER_STAGE
                } else {
                    RESPONSE_STAGE
                };
                ctx.rejected_by = Some((stage, r.reason));
            }
        })?;
        if !violations.is_empty()
            && let Some(report) = ctx.contract.as_deref_mut()
        {
            tracing::info!(request_id = %ctx.request_id, operation = %report.operation, violations = violations.len(), "response breaks the API contract");
            report.response = violations;
        }
        if mask.is_some() || ctx.per_caller_response {
            per_caller(resp.headers_mut());
        }
        Ok(resp)
    }

    /// Replaces an upstream error body by a generic problem document; the start of the
    /// original, masked, goes to the audit event.
    async fn replace_error(
        &self,
        resp: Response<BoxBody>,
        route: &Route,
        ctx: &RequestCtx,
        seen: &mut Seen,
    ) -> Response<BoxBody> {
        let (mut parts, body) = resp.into_parts();
        let excerpt = if route.errors.audit_bytes == 0 {
            String::new()
        } else {
            let head = crate::body::read_prefix(body, route.errors.excerpt_read_bytes()).await;
            route.errors.excerpt(&head)
        };
        seen.upstream_error = Some(portcullis_audit::UpstreamErrorAudit {
            status: parts.status.as_u16(),
            body: excerpt,
        });
        let doc = portcullis_response::generic_body(parts.status, ctx.request_id.as_str());
        portcullis_response::errors::replaced_body_headers(&mut parts.headers);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(doc.len()));
        route.response_headers.apply(&mut parts.headers);
        Response::from_parts(parts, full_body(doc))
    }

    /// Metrics and the audit event: once per request, whatever the outcome. `status` is the
    /// answer's; none when the request was given up before it: abandoned by its client
    /// (recorded as 499), or cut off by the gateway's stop (444, see [`Gateway::interrupt`]).
    /// Returns the event (when audit is on) for the caller to write — at once for a request
    /// given up, with its answer's body ([`Audited`]) for an answered one.
    fn finish(
        &self,
        ctx: &RequestCtx,
        seen: &mut Seen,
        status: Option<StatusCode>,
    ) -> Option<AuditEvent> {
        let abandoned = status.is_none();
        let interrupted = abandoned && self.interrupted();
        let status = status.unwrap_or(if interrupted {
            NO_RESPONSE
        } else {
            CLIENT_CLOSED
        });
        let latency = ctx.received.elapsed();
        let route = ctx.route.as_ref().map(|r| &*r.name);
        self.metrics
            .observe_request(route.unwrap_or(""), status.as_u16(), latency);
        if let Some(f) = ctx.auth_failure {
            self.metrics.auth_failure(f);
        }
        if let Some(l) = &ctx.limited_by {
            self.metrics.rate_limited(l);
        }
        if let Some(w) = ctx.waf.as_deref() {
            self.metrics.waf(route.unwrap_or(""), w);
        }
        if let Some(c) = ctx.contract.as_deref() {
            self.metrics.contract(route.unwrap_or(""), c);
        }
        if let Some(d) = ctx.authz.as_deref() {
            if let Some(v) = &d.decided_by {
                self.metrics
                    .authz_decision(&v.rule, if d.allowed { "allow" } else { "deny" });
            }
            for v in &d.shadow {
                self.metrics.authz_decision(
                    &v.rule,
                    if v.allowed {
                        "shadow_allow"
                    } else {
                        "shadow_deny"
                    },
                );
            }
        }
        if let Some((s, r)) = ctx.rejected_by {
            self.metrics.count_rejection(s.as_str(), r.code());
        }
        if !self.audit.enabled() {
            return None;
        }
        let (stage, reason) = match ctx.rejected_by {
            Some((s, r)) => (Some(s.as_str().to_string()), Some(r.code().to_string())),
            None => (None, None),
        };
        let outcome = match ctx.rejected_by {
            _ if interrupted => Outcome::Interrupted,
            _ if abandoned => Outcome::Abandoned,
            None => Outcome::Allowed,
            Some((s, _)) if s == UPSTREAM_STAGE => Outcome::Failed,
            Some(_) => Outcome::Rejected,
        };
        let ua = seen.user_agent.take();
        let latency_ms = latency.as_secs_f64() * 1000.0;
        Some(AuditEvent {
            time: portcullis_audit::now_rfc3339(),
            request_id: ctx.request_id.as_str().to_string(),
            listener: ctx.listener.to_string(),
            client_ip: ctx.client_ip.to_string(),
            peer: ctx.peer.to_string(),
            method: seen
                .raw_method
                .take()
                .unwrap_or_else(|| seen.method.as_str().to_string()),
            host: seen.host.take(),
            path: std::mem::take(&mut seen.path),
            route: route.map(str::to_string),
            upstream: seen.upstream.as_deref().map(str::to_string),
            target: seen.target.as_deref().map(str::to_string),
            status: status.as_u16(),
            latency_ms,
            // Until the answer's body is done with (`Audited`): a request given up has none.
            duration_ms: latency_ms,
            response_bytes: 0,
            response_complete: false,
            outcome,
            stage,
            reason,
            tls: ctx.tls.is_some(),
            http_version: version_str(seen.version).to_string(),
            user_agent: ua,
            auth: ctx.principal.as_ref().map(|p| portcullis_audit::AuthAudit {
                method: p.method.as_str(),
                authority: p.authority.to_string(),
                subject: p.subject.clone(),
                client_id: p.client_id.clone(),
                credential_id: p.credential_id.clone(),
            }),
            auth_failure: ctx.auth_failure.map(str::to_string),
            rate_limit: ctx.limited_by.as_deref().map(str::to_string),
            authz: ctx.authz.as_deref().map(|d| {
                let (rule, reason) = d
                    .decided_by
                    .as_ref()
                    .map(|v| (v.rule.clone(), v.reason.clone()))
                    .unwrap_or_default();
                portcullis_audit::AuthzAudit {
                    allowed: d.allowed,
                    rule,
                    reason,
                    shadow: d
                        .shadow
                        .iter()
                        .map(|v| portcullis_audit::RuleAudit {
                            rule: v.rule.clone(),
                            allowed: v.allowed,
                            reason: v.reason.clone(),
                        })
                        .collect(),
                    risk: d.risk,
                    risk_signals: d.risk_signals.clone(),
                }
            }),
            waf: ctx
                .waf
                .as_deref()
                .map(portcullis_audit::WafAudit::from_report),
            contract: ctx
                .contract
                .as_deref()
                .map(portcullis_audit::ContractAudit::from_report),
            upstream_error: seen.upstream_error.take(),
        })
    }
}

/// nginx's code for a request whose client went away before the answer; never sent.
const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// nginx's code for a connection closed without an answer: a request the gateway's stop cut
/// off; never sent.
const NO_RESPONSE: StatusCode = match StatusCode::from_u16(444) {
    Ok(s) => s,
    Err(_) => StatusCode::SERVICE_UNAVAILABLE,
};

/// A request on its way: its context and what its audit event needs. Dropped before it is
/// answered — its future dropped by the server because the client reset the stream or the
/// connection ended under it — it is audited and counted as abandoned (499), so that no
/// request that reached the pipeline goes unrecorded (a request sent upstream, then reset
/// before its answer, included). The upstream exchange is dropped with it. Dropped because
/// the gateway stopped past its drain deadline, it is audited as interrupted (444).
struct Open<'a> {
    gw: &'a Gateway,
    ctx: RequestCtx,
    seen: Seen,
    answered: bool,
    /// The connection's count of client resets, for an HTTP/2 request.
    resets: Option<&'a crate::resets::ResetWatch>,
}

impl Drop for Open<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.answered {
            self.abandoned();
        }
    }
}

impl Open<'_> {
    /// Off the way of answered requests.
    #[cold]
    #[inline(never)]
    fn abandoned(&mut self) {
        if let Some(event) = self.gw.finish(&self.ctx, &mut self.seen, None) {
            self.gw.audit.emit(event);
        }
        if let Some(resets) = self.resets
            && !self.gw.interrupted()
        {
            resets.client_reset();
        }
    }
}

/// A `static` upstream's answer: the first canned response that takes the request, else 404.
fn static_answer(
    upstream: &portcullis_config::Upstream,
    method: &Method,
    path: &str,
) -> Response<BoxBody> {
    let found = upstream.static_responses.iter().find(|r| {
        r.takes(method, path) || (*method == Method::HEAD && r.takes(&Method::GET, path))
    });
    let Some(r) = found else {
        let mut resp = Response::new(full_body(bytes::Bytes::new()));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    };
    let head = *method == Method::HEAD;
    let body = if head {
        bytes::Bytes::new()
    } else {
        r.body.clone()
    };
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = r.status;
    *resp.headers_mut() = r.headers.clone();
    if head {
        // What a GET would get (RFC 9110 §9.3.2); the body itself is not sent.
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(r.body.len()));
    }
    resp
}

/// The gateway's own bodiless answer (a CORS preflight).
fn answered(answer: portcullis_core::Answer) -> Response<BoxBody> {
    let mut resp = Response::new(full_body(bytes::Bytes::new()));
    *resp.status_mut() = answer.status;
    let h = resp.headers_mut();
    for (name, value) in answer.headers {
        h.append(name, value);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// The step a refusal made on the request's way upstream is recorded under (audit `stage`,
/// `portcullis_rejections_total{stage}`). The client's own faults are refusals of the steps that
/// stand for them — a request body over the route's limit, too slow or cut short while it
/// streams (`body_limit`, which counts such bodies on their way), an upgrade where the route's
/// answers are filtered or a rewritten path the route cannot send (`route`) — so they are
/// audited as `rejected`, like the same faults caught earlier, never as the upstream's
/// failures (`failed`), which upstream alerting reads.
fn forward_stage(reason: RejectReason) -> StageId {
    match reason {
        RejectReason::BodyTooLarge | RejectReason::BodyTimeout | RejectReason::BodyReadFailed => {
            BODY_LIMIT_STAGE
        }
        RejectReason::Forbidden | RejectReason::BadRequest => portcullis_pipeline::RouteStage::ID,
        _ => UPSTREAM_STAGE,
    }
}

/// The body-limit step's id (`portcullis-limits`, which this crate does not depend on).
const BODY_LIMIT_STAGE: StageId = StageId("body_limit");

/// A WebSocket upgrade's client side: the connection may be handed to a tunnel. Out of line:
/// most requests ask for no upgrade.
#[cold]
#[inline(never)]
fn downstream_upgrade(
    head: &mut http::request::Parts,
    conn: &ConnInfo,
) -> hyper::upgrade::OnUpgrade {
    conn.may_tunnel
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // hyper hands the upgrade out of a request's extensions, the head's here.
    let mut holder = Request::new(());
    std::mem::swap(holder.extensions_mut(), &mut head.extensions);
    let upgrade = hyper::upgrade::on(&mut holder);
    std::mem::swap(holder.extensions_mut(), &mut head.extensions);
    upgrade
}

/// Joins the client's upgraded connection to the upstream's once both sides have switched.
/// The client's frames are followed on their way (`crate::wsframes`): a message over the
/// route's limit, or a frame no conforming client sends, ends the tunnel with a Close frame
/// to both sides. The client connection's watchdog watches the tunnel as it watched the HTTP
/// (`activity`): it ends the tunnel when the connection has been idle too long or takes what
/// is sent to it too slowly. Out of line: the spawned future is large, and rare on a
/// request's way.
#[cold]
#[inline(never)]
fn tunnel(
    down: hyper::upgrade::OnUpgrade,
    resp: &mut Response<BoxBody>,
    frames: crate::wsframes::ClientFrames,
    (id, route): (RequestId, Arc<str>),
    (metrics, audit, received): (
        &Arc<portcullis_telemetry::Metrics>,
        &portcullis_audit::AuditSink,
        std::time::Instant,
    ),
    activity: &Arc<crate::sniff::Activity>,
) {
    use crate::wsframes::{PROTOCOL_ERROR, Refusal};
    let up = hyper::upgrade::on(&mut *resp);
    let open = activity.tunnel_opens();
    let metrics = metrics.clone();
    // The handshake's audit event, once it is made (after this returns).
    let handshake = Arc::new(std::sync::OnceLock::new());
    if audit.enabled() {
        resp.extensions_mut()
            .insert(TunnelAudit(Arc::clone(&handshake)));
    }
    let audit = audit.clone();
    tokio::spawn(async move {
        let refusal = Refusal::default();
        let joined = async {
            let (d, u) = match tokio::try_join!(down, up) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(request_id = %id, error = %e, "upgrade failed");
                    return;
                }
            };
            let (mut from_client, mut to_client) = tokio::io::split(TokioIo::new(d));
            let (mut from_upstream, mut to_upstream) = tokio::io::split(TokioIo::new(u));
            let ended = tokio::try_join!(
                crate::wsframes::client_to_upstream(
                    &mut from_client,
                    &mut to_upstream,
                    frames,
                    &refusal
                ),
                crate::wsframes::upstream_to_client(&mut from_upstream, &mut to_client, &refusal),
            );
            // A refusal counts whatever became of the Close frames.
            if let Some(v) = refusal.violation() {
                let reason = if v.code == PROTOCOL_ERROR {
                    "websocket_protocol_error"
                } else {
                    "websocket_message_too_big"
                };
                metrics.count_rejection("websocket", reason);
                if let Some(mut event) = handshake.get().cloned() {
                    event.time = portcullis_audit::now_rfc3339();
                    event.outcome = Outcome::Rejected;
                    event.stage = Some("websocket".to_string());
                    event.reason = Some(reason.to_string());
                    event.duration_ms = received.elapsed().as_secs_f64() * 1000.0;
                    event.response_complete = false;
                    audit.emit(event);
                }
                tracing::info!(
                    request_id = %id,
                    route = %route,
                    close_code = v.code,
                    reason = v.reason,
                    "WebSocket closed: the client broke a frame rule"
                );
                // Both sides were sent a Close frame (the client's only between two frames):
                // give them a moment to read it before the sockets close.
                let _ = tokio::time::timeout(WS_CLOSE_LINGER, async {
                    tokio::join!(
                        crate::wsframes::drain(&mut from_client, WS_CLOSE_DRAIN),
                        crate::wsframes::drain(&mut from_upstream, WS_CLOSE_DRAIN),
                    )
                })
                .await;
            } else if refusal.stopping() {
                // Closed for the gateway's stop: a moment for each side's Close in answer,
                // within the drain.
                let _ = tokio::time::timeout(WS_CLOSE_LINGER, async {
                    tokio::join!(
                        crate::wsframes::drain(&mut from_client, WS_CLOSE_DRAIN),
                        crate::wsframes::drain(&mut from_upstream, WS_CLOSE_DRAIN),
                    )
                })
                .await;
            } else if let Err(e) = ended {
                tracing::debug!(request_id = %id, error = %e, "upgraded connection ended");
            }
        };
        // The stop is passed on to the pumps, which close where they stand between frames.
        let told_to_go = async {
            open.going_away().await;
            refusal.go_away();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = joined => {}
            () = told_to_go => {}
            () = open.stopped() => {}
        }
        drop(open);
    });
}
/// The slot a WebSocket tunnel's handshake event is put in once made, for the event the tunnel
/// writes when the gateway closes it (a response extension from the tunnel to the engine).
#[derive(Clone)]
struct TunnelAudit(Arc<std::sync::OnceLock<AuditEvent>>);

/// How long a tunnel closed for a client's frame waits for both sides to take their Close
/// frame (reading and dropping what they still send), and how much it reads from each.
const WS_CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
const WS_CLOSE_DRAIN: u64 = 1 << 20;

/// An answer that depends on who asked (a route with field masks): what this caller may see
/// is not what the next one may, so no shared cache may keep it for anyone else — nor the
/// whole answer a caller whose mask shows everything got, for a caller with a narrower one.
fn per_caller(h: &mut http::HeaderMap) {
    crate::headers::make_private(h);
    h.append(header::VARY, HeaderValue::from_static("authorization"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pieces_keep_their_separators() {
        let got: Vec<(char, &str)> = pieces("a=1;b=2&&c&d=;").collect();
        assert_eq!(got, [('&', "a=1"), (';', "b=2"), ('&', "c"), ('&', "d=")]);
        assert_eq!(pieces("").count(), 0);
    }

    #[test]
    fn query_names_fold_as_upstreams_read_them() {
        for piece in [
            "tenant=x",
            "TENANT=x",
            "tenant[]=x",
            "%74enant=x",
            "[tenant]=x",
            "tenant",
        ] {
            assert_eq!(query_name(piece), "tenant", "{piece}");
        }
        assert_eq!(query_name("a+b=1"), "a_b");
        assert_eq!(query_name("tenants=x"), "tenants");
    }
}
