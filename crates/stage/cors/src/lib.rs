//! # portcullis-cors
//!
//! Cross-origin resource sharing per route: the gateway answers CORS preflights itself and adds
//! the CORS response headers for allowed origins. On a route with `cors:`, the gateway alone
//! speaks CORS: the engine strips [`CORS_RESPONSE_HEADERS`] from upstream responses, so an
//! upstream cannot widen the policy.
//!
//! * **Takes**: the request's `Origin`, `Access-Control-Request-Method` and
//!   `Access-Control-Request-Headers`; [`RequestCtx::route`] and [`RequestCtx::preflight`] (set
//!   by the router, which matches a preflight's route by the method it asks about, see
//!   [`preflight_method`]).
//! * **Produces**: a `204` answer to an allowed preflight; on other requests, headers pushed
//!   into [`RequestCtx::response_headers`] (so they reach the response whatever its outcome,
//!   including a later 401 or 429, which scripts of an allowed origin can then read).
//! * **Rejects**: `403 cors_rejected` for a preflight from an origin, or for a method or header,
//!   the route does not allow. The refusal carries `Vary` and no `Access-Control-*` header, so
//!   the browser blocks the real request.
//!
//! ## Configuration (`cors:` on a route)
//!
//! ```yaml
//! cors:
//!   allowed_origins: ["https://app.example.com", "https://*.example.com"]  # required
//!   allowed_methods: [GET, POST]           # default GET, HEAD, POST
//!   allowed_headers: [content-type, authorization]   # default none
//!   exposed_headers: [x-request-id]        # default none
//!   allow_credentials: false               # default false
//!   max_age: 10m                           # default 5m; 0s: no Access-Control-Max-Age; ≤ 24h
//! ```
//!
//! **Origins** are `scheme://host[:port]` with scheme `http` or `https`: no path (not even a
//! trailing `/`), query, fragment or userinfo. Scheme and host are compared case-insensitively
//! and a default port is the same as none (`https://a.com:443` is `https://a.com`); `http://`
//! and `https://` are different origins, as are different ports. International names are
//! written in their `xn--` form, IPv6 addresses in brackets.
//!
//! * `https://*.example.com`: a wildcard, only as the whole leftmost label, matches any
//!   subdomain at any depth (`https://a.example.com`, `https://a.b.example.com`), never
//!   `https://example.com` itself nor `https://evilexample.com`; same scheme and port only. At
//!   least two labels must follow it (`*.com` is refused). Every subdomain is trusted, so a
//!   takeover of any one (a dangling DNS record) reaches the route.
//! * `null`: only as an explicit entry. Risky: sandboxed iframes, `file:` and `data:`
//!   documents and cross-origin redirects all send `Origin: null`, so an attacker can produce
//!   it from any page. Never combine it with credentials unless you mean it.
//! * `["*"]` alone: any origin (answered with `Access-Control-Allow-Origin: *`). Not with other
//!   entries, not with `allow_credentials: true`.
//! * A malformed request `Origin` (or more than one) is never allowed, even under `*`.
//!
//! **Methods** are case-sensitive tokens. The standard ones (`GET`, `POST`, `PATCH` …) are
//! upper-cased in the configuration; others are kept as written. Browsers upper-case `DELETE`,
//! `GET`, `HEAD`, `OPTIONS`, `POST` and `PUT` themselves, but a script's `patch` stays `patch`
//! and is not allowed by `PATCH`. The simple methods (`GET`, `HEAD`, `POST`) are not implied:
//! a preflight for them is allowed only if they are listed (explicit beats implicit; a
//! preflight for a simple method happens when it carries non-simple headers). `*` allows any
//! method (without credentials); the answer then names the method asked for.
//!
//! **Headers** (`allowed_headers`) are case-insensitive names; every name a preflight lists in
//! `Access-Control-Request-Headers` must be allowed (at most 64 names). The answer lists the
//! configured names, or, with `*`, echoes the names asked for, lowercase. As in browsers, `*`
//! does not cover `authorization`, which must be listed by name. `exposed_headers` lists the
//! response headers scripts may read beyond the safelisted ones (`*`: all, without
//! credentials).
//!
//! **Credentials** (`allow_credentials: true`) let browsers send cookies and read the answer;
//! they require explicit origins, methods, allowed and exposed headers (`*` is refused: browsers
//! read it literally or refuse it in credentialed mode).
//!
//! ## Behaviour
//!
//! * A route without `cors:`: nothing happens.
//! * A preflight: allowed when its origin, its method and every header it asks for are allowed,
//!   checked in that order. Answer `204` with `Access-Control-Allow-Origin` (the request's
//!   origin as sent, or `*`), `Access-Control-Allow-Methods`, `Access-Control-Allow-Headers`
//!   (when there is anything to list), `Access-Control-Max-Age` (unless 0),
//!   `Access-Control-Allow-Credentials: true` (when configured) and
//!   `Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers`. Otherwise
//!   `403 cors_rejected` whose detail says which part failed (`origin … not allowed`,
//!   `method … not allowed`, `header … not allowed`; echoed values are capped at 100
//!   characters).
//! * Any other request: `Vary: Origin` always (the response depends on it); when the `Origin`
//!   is allowed, `Access-Control-Allow-Origin`, `Access-Control-Allow-Credentials: true` and
//!   `Access-Control-Expose-Headers` as configured. A request from an origin that is not
//!   allowed is **not refused**: CORS is a browser policy on what scripts may read, enforced by
//!   browsers; the gateway only withholds the headers, so the browser hides the response. Such
//!   requests (plain forms, `curl`) could be sent without CORS anyway, so server-side
//!   protections (authentication, authorization, CSRF defences such as `SameSite` cookies or
//!   tokens) remain the route's business, not this step's.
//!
//! ## WebSockets (`websocket:` on a route, any route)
//!
//! A WebSocket handshake (`Upgrade: websocket`, the token in any case, alone or in a list) is
//! refused with `403 forbidden` on a route without `websocket:` (or with `websocket: false`):
//! after the upstream's 101 the connection is a tunnel no step reads. Where the route serves
//! WebSockets, the handshake must be a `GET` (`400 bad_request` otherwise), and browsers —
//! which apply no CORS to WebSockets and send the user's cookies with a handshake from any
//! page — are held to the route's own origin (the `Host`'s name and port, `https` where the client used it; see [`WebSocket`])
//! and `websocket.origins`. The route's `cors.allowed_origins` do not count: CORS decides what
//! scripts may read, `*` included, where a WebSocket carries credentials both ways. Anything
//! else, a malformed or repeated `Origin` included, is `403 cors_rejected`. A handshake without
//! `Origin` is not from a browser and goes on.
//!
//! Everything the answers carry is built when the configuration loads; per request, the step
//! parses the `Origin` without allocating and compares it with each allowed origin in turn.

#![forbid(unsafe_code)]

mod config;
mod origin;
mod websocket;

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use portcullis_core::{
    Answer, GatewayRequest, RejectReason, Rejection, RequestCtx, Scheme, Stage, StageId, Step,
    Verdict,
};

pub use config::{Cors, RawCors, compile};
pub use websocket::{RawWebSocket, RawWebSocketSettings, WebSocket, compile_websocket};

/// The CORS response fields the engine removes from upstream responses on routes with CORS:
/// there the gateway alone decides who may read a response.
pub const CORS_RESPONSE_HEADERS: &[HeaderName] = &CORS_FIELDS;

// A static behind the const: a `HeaderName` cannot be borrowed from a const temporary.
static CORS_FIELDS: [HeaderName; 7] = [
    ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE,
    // Private Network Access: only a preflight answer may grant it, and the gateway gives none.
    HeaderName::from_static("access-control-allow-private-network"),
];

/// Most names a preflight may ask for: browsers send a handful; more is abuse.
pub const MAX_REQUESTED_HEADERS: usize = 64;

/// Longest request value echoed in a refusal's detail.
const DETAIL_CAP: usize = 100;

const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);
const STAR: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");

/// The method a CORS preflight asks about: `Some` when the request is `OPTIONS` with an
/// `Origin` and exactly one `Access-Control-Request-Method` holding a method token. The router
/// matches the route by this method (a preflight for `PUT /x` belongs to the route serving
/// `PUT /x`) and then sets [`RequestCtx::preflight`] when that route has CORS.
pub fn preflight_method(head: &http::request::Parts) -> Option<Method> {
    if head.method != Method::OPTIONS || !head.headers.contains_key(ORIGIN) {
        return None;
    }
    let value = single(&head.headers, &ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(value.as_bytes()).ok()
}

/// The value of a field sent exactly once; `None` when absent or repeated (a repeated `Origin`
/// is ambiguous, and browsers never send one).
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// What the step knows of one route.
#[derive(Debug, Clone, Default)]
pub struct RouteOrigins {
    /// The route's `cors:`; `None`: no CORS.
    pub cors: Option<Arc<Cors>>,
    /// The route's `websocket:`; `None`: WebSocket handshakes are refused.
    pub websocket: Option<Arc<WebSocket>>,
}

/// The CORS step, which also decides WebSocket handshakes (who may open one is a question of
/// origins too).
pub struct CorsStage {
    /// Indexed by route id.
    per_route: Vec<RouteOrigins>,
}

impl CorsStage {
    pub const ID: StageId = StageId("cors");

    pub fn new(per_route: Vec<RouteOrigins>) -> Self {
        CorsStage { per_route }
    }
}

impl Stage for CorsStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        let Some(route) = ctx.route_id().and_then(|id| self.per_route.get(id.0)) else {
            return Step::CONTINUE;
        };
        if portcullis_core::has_header(&req.head.headers, &http::header::UPGRADE)
            && is_websocket(&req.head.headers)
            && let Some(refusal) = websocket_refusal(
                route,
                &req.head.method,
                &req.head.headers,
                ctx.client_scheme(&req.head.headers),
            )
        {
            return Step::Done(refusal);
        }
        let Some(cors) = route.cors.as_deref() else {
            return Step::CONTINUE;
        };
        if ctx.preflight {
            Step::Done(cors.preflight(&req.head.headers))
        } else {
            cors.actual(&req.head.headers, &mut ctx.response_headers);
            Step::CONTINUE
        }
    }
}

/// Why a WebSocket handshake may not go on, if it may not. After the upstream's 101 the
/// connection is a tunnel no step reads, so only routes that say so take one. Browsers apply no
/// CORS to WebSockets: a page of any origin may open one, with the user's cookies, and read
/// what comes back; the origin check is the only defence. A route's CORS origins are not used
/// for it: CORS lets scripts read answers (`*` is for answers without credentials), a
/// WebSocket carries the user's credentials both ways.
#[cold]
fn websocket_refusal(
    route: &RouteOrigins,
    method: &Method,
    headers: &HeaderMap,
    client: Scheme,
) -> Option<Verdict> {
    let Some(ws) = route.websocket.as_deref() else {
        return Some(Verdict::Reject(Rejection::new(
            RejectReason::Forbidden,
            "WebSocket upgrades are not enabled on this route",
        )));
    };
    // RFC 6455 §4.1: the handshake is a GET. Another method with `Upgrade: websocket` is
    // something a server might still switch on, with a body the gateway never looked at.
    if method != Method::GET {
        return Some(Verdict::Reject(Rejection::new(
            RejectReason::BadRequest,
            "a WebSocket handshake is a GET",
        )));
    }
    let refused = match ws.check(
        headers.get_all(ORIGIN),
        headers.get(http::header::HOST),
        client,
    ) {
        Ok(()) => return None,
        Err(websocket::WsOriginRefused::NotAllowed(o)) => Some(o),
        Err(websocket::WsOriginRefused::Malformed) => None,
    };
    Some(refuse(match refused {
        Some(o) => format!("WebSocket from origin {} not allowed", capped(o)),
        None => "WebSocket with an unreadable Origin".to_string(),
    }))
}

/// A WebSocket opening handshake (`Upgrade: websocket`).
fn is_websocket(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::UPGRADE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|p| {
                p.trim_matches([' ', '\t'])
                    .eq_ignore_ascii_case("websocket")
            })
        })
    })
}

/// `s`, cut to [`DETAIL_CAP`] characters.
fn capped(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(DETAIL_CAP) {
        None => Cow::Borrowed(s),
        Some((i, _)) => Cow::Owned(format!("{}…", &s[..i])),
    }
}

fn refuse(detail: impl Into<Cow<'static, str>>) -> Verdict {
    // Vary even on a refusal: a cache must not serve it to a preflight from another origin.
    Verdict::Reject(
        Rejection::new(RejectReason::CorsRejected, detail).with_header(VARY, VARY_PREFLIGHT),
    )
}

/// A token of RFC 9110 (non-empty, token characters only).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(portcullis_core::is_tchar)
}

/// Why a request's `Origin` is not allowed.
enum OriginRefused<'h> {
    Missing,
    /// Unparsable, not visible ASCII, or sent more than once.
    Malformed,
    NotAllowed(&'h str),
}

impl OriginRefused<'_> {
    fn detail(&self) -> Cow<'static, str> {
        match self {
            OriginRefused::Missing => Cow::Borrowed("origin missing"),
            OriginRefused::Malformed => Cow::Borrowed("origin malformed"),
            OriginRefused::NotAllowed(o) => Cow::Owned(format!("origin {} not allowed", capped(o))),
        }
    }
}

impl Cors {
    /// The request's `Origin` when it is allowed. Allocates nothing, whatever the outcome.
    fn allowed_origin<'h>(
        &self,
        headers: &'h HeaderMap,
    ) -> Result<&'h HeaderValue, OriginRefused<'h>> {
        let mut values = headers.get_all(ORIGIN).iter();
        let value = values.next().ok_or(OriginRefused::Missing)?;
        if values.next().is_some() {
            return Err(OriginRefused::Malformed);
        }
        let text = value.to_str().map_err(|_| OriginRefused::Malformed)?;
        let parsed = origin::parse_request(text).ok_or(OriginRefused::Malformed)?;
        if self.allows(&parsed) {
            Ok(value)
        } else {
            Err(OriginRefused::NotAllowed(text))
        }
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        match self.origins {
            // `*` is never configured with credentials, where it would not do.
            config::Origins::Any => STAR,
            // The origin exactly as sent: browsers compare it byte for byte.
            config::Origins::List(_) => origin.clone(),
        }
    }

    fn header_allowed(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|h| h.as_str().eq_ignore_ascii_case(name))
            // Browsers never let `*` cover Authorization; neither does the gateway.
            || (self.headers_any && !name.eq_ignore_ascii_case("authorization"))
    }

    fn preflight(&self, headers: &HeaderMap) -> Verdict {
        let origin = match self.allowed_origin(headers) {
            Ok(o) => o,
            Err(why) => return refuse(why.detail()),
        };

        let Some(method_value) = single(headers, &ACCESS_CONTROL_REQUEST_METHOD) else {
            return refuse("access-control-request-method missing or repeated");
        };
        let allow_methods = match (&self.methods, Method::from_bytes(method_value.as_bytes())) {
            (_, Err(_)) => return refuse("access-control-request-method malformed"),
            // The method asked for, so browsers without `*` support accept the answer too.
            (config::Methods::Any, Ok(_)) => method_value.clone(),
            (config::Methods::List(list), Ok(m)) => match &self.allow_methods {
                Some(v) if list.contains(&m) => v.clone(),
                _ => return refuse(format!("method {} not allowed", capped(m.as_str()))),
            },
        };

        // With `*` the names asked for are echoed; otherwise the configured list answers.
        let mut echoed = self.headers_any.then(String::new);
        let mut count = 0usize;
        for value in headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            let Ok(text) = value.to_str() else {
                return refuse("access-control-request-headers malformed");
            };
            for name in text.split(',').map(|n| n.trim_matches([' ', '\t'])) {
                // Empty list elements are allowed by HTTP's list syntax.
                if name.is_empty() {
                    continue;
                }
                count += 1;
                if count > MAX_REQUESTED_HEADERS {
                    return refuse("more than 64 headers requested");
                }
                if !is_token(name) {
                    return refuse("access-control-request-headers malformed");
                }
                if !self.header_allowed(name) {
                    let name = capped(name).to_ascii_lowercase();
                    return refuse(format!("header {name} not allowed"));
                }
                if let Some(e) = echoed.as_mut() {
                    if !e.is_empty() {
                        e.push_str(", ");
                    }
                    e.extend(name.chars().map(|c| c.to_ascii_lowercase()));
                }
            }
        }
        let allow_headers = match echoed {
            // Tokens always make a valid value; an impossible failure just omits the field.
            Some(e) if !e.is_empty() => HeaderValue::try_from(e).ok(),
            Some(_) => None,
            None => self.allow_headers.clone(),
        };

        let mut out = Vec::with_capacity(6);
        out.push((ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin)));
        out.push((ACCESS_CONTROL_ALLOW_METHODS, allow_methods));
        if let Some(v) = allow_headers {
            out.push((ACCESS_CONTROL_ALLOW_HEADERS, v));
        }
        if let Some(v) = &self.max_age {
            out.push((ACCESS_CONTROL_MAX_AGE, v.clone()));
        }
        if self.credentials {
            out.push((ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE));
        }
        out.push((VARY, VARY_PREFLIGHT));
        Verdict::Answer(Box::new(Answer {
            status: StatusCode::NO_CONTENT,
            headers: out,
        }))
    }

    fn actual(&self, headers: &HeaderMap, out: &mut Vec<(HeaderName, HeaderValue)>) {
        // Whether the CORS headers are present depends on Origin, so caches must key on it
        // even when this answer carries none.
        out.push((VARY, VARY_ORIGIN));
        let Ok(origin) = self.allowed_origin(headers) else {
            return;
        };
        out.push((ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin)));
        if self.credentials {
            out.push((ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE));
        }
        if let Some(v) = &self.expose_headers {
            out.push((ACCESS_CONTROL_EXPOSE_HEADERS, v.clone()));
        }
    }
}

#[cfg(test)]
mod tests;
