//! The response filter: runs what a route and its steps ask of an upstream response body — the
//! route's field removal (`response_filter`), the contract's response half (validation,
//! keep-only-declared) and the authorization step's field mask — in one read and one parse,
//! before the body reaches the client ([`Plan`], [`filter_with`]).
//!
//! * **Takes**: the upstream response (head already cleaned of hop-by-hop fields and with the
//!   route's response header rules applied), the plan, and the request method.
//! * **Produces**: the same response with its JSON body parsed, filtered and re-serialized, and
//!   the contract violations found (detect only).
//! * **Rejects** (fail closed when something must change the body and the route does not say
//!   `pass`; always with a field mask — a body that cannot be filtered is withheld, never
//!   passed on unfiltered): `response_filter_failed` (502) or, when the upstream body fails
//!   mid-read, `upstream_error` (502). A plan that only validates never withholds a body; the
//!   contract's keep-only-declared filters JSON bodies and withholds a non-empty body of any
//!   other type (or none, or several) that the operation's declared response does not list.
//!
//! Rules, in order ("refused" below means: withheld when the plan fails closed, passed
//! unchanged otherwise):
//!
//! 1. A response to `HEAD`, and a `1xx`, `204` or `304` response, has no body: it passes
//!    unchanged — except that a `HEAD` whose `GET` would have its body rewritten (any filter
//!    on a JSON type, or route removal and masks on any type) loses `Content-Length` and the
//!    fields listed in 4 that describe the upstream's bytes: they would tell the size of what
//!    the filters hide.
//! 2. `Content-Encoding` other than `identity` is refused (a compressed body cannot be read
//!    here). `Accept-Encoding` is not forwarded upstream when a plan applies (the
//!    authorization step removes it for masks, the engine for route filters and contracts), so
//!    a well-behaved upstream answers uncompressed.
//! 3. `206 Partial Content`, or any response with `Content-Range`, is refused: a fragment of a
//!    JSON document cannot be filtered.
//! 4. A body whose one `Content-Type` is JSON-like — subtype `json`, `x-json` or `…+json`
//!    under any type: `application/json`, `text/json`, `application/x-json`,
//!    `application/*+json` (case-insensitive, parameters such as `charset` allowed; this
//!    includes `application/problem+json` error bodies) — is read whole, up to the filter's `max_bytes`
//!    (reading stops as soon as the limit is passed: refused as larger than the limit), parsed
//!    (invalid JSON, or nesting deeper than 128, is refused), then: route removal, the
//!    contract (validation, then keep-only-declared), the mask; and re-serialized. A plan that
//!    only validates sends the upstream's bytes on untouched.
//!    An empty body stays empty.
//!    The response then carries the new `Content-Length`, and loses the fields that described
//!    the upstream's bytes: `ETag`, `Content-MD5`, `Digest`, `Content-Digest`, `Repr-Digest`,
//!    `Accept-Ranges`, `Transfer-Encoding` and `Trailer`. Trailers are dropped.
//! 5. Any other body — another content type, a missing one, or several `Content-Type` fields —
//!    is refused unless it is empty (an upstream that mislabels JSON would otherwise leak it).
//!    An empty body passes, with `Content-Length: 0` and no trailers. For the contract alone
//!    (no route removal, no mask) this holds when its keep-only-declared is on and the
//!    operation's response for the status does not make the type opaque (a missing type or
//!    several never are): a body passes unread only under a declared concrete non-JSON type
//!    whose schema is absent or a string, or under a wildcard range whose schema is a string.
//! 6. An upstream body that fails while being read is an `upstream_error`.
//!
//! Re-serialization is canonical JSON: insignificant whitespace goes, object keys come out
//! sorted, and numbers go through `f64` unless they are integers that fit 64 bits.
//!
//! At most `max_bytes` plus one frame of the upstream body is held in memory. The caller bounds
//! how long the read may take.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use portcullis_core::{
    BoxBody, BoxError, JsonFilter, RejectReason, Rejection, ResponseContract, ResponseFilter,
    Violation,
};

use crate::problem::full_body;

/// Header fields that describe the upstream's bytes, not the filtered ones.
const STALE_FIELDS: [&str; 8] = [
    "etag",
    "content-md5",
    "digest",
    "content-digest",
    "repr-digest",
    "accept-ranges",
    "transfer-encoding",
    "trailer",
];

/// Applies `filter` to an upstream response. Fail closed: a body that cannot be filtered is
/// withheld, never passed on unfiltered. See the module documentation for the rules.
pub async fn filter_response(
    resp: Response<BoxBody>,
    filter: &ResponseFilter,
    request_method: &Method,
) -> Result<Response<BoxBody>, Rejection> {
    let plan = Plan {
        remove: None,
        contract: None,
        mask: Some(&*filter.json),
        max_bytes: filter.max_bytes,
        fail_closed: true,
    };
    filter_with(resp, &plan, request_method)
        .await
        .map(|(resp, _)| resp)
}

/// Everything to be done to one response body, in this order: the route's field removal, the
/// contract (validation, then keep-only-declared), the authorization mask.
pub struct Plan<'a> {
    pub remove: Option<&'a dyn JsonFilter>,
    pub contract: Option<&'a dyn ResponseContract>,
    pub mask: Option<&'a dyn JsonFilter>,
    /// The largest body read.
    pub max_bytes: u64,
    /// A body that cannot be filtered is withheld (502) rather than passed on unchanged.
    /// Always true with an authorization mask.
    pub fail_closed: bool,
}

impl Plan<'_> {
    /// Whether anything in the plan changes bodies of this type (a plan that only validates
    /// never withholds one). The contract's keep-only-declared filters JSON bodies; a body of
    /// another type is its to withhold only when the operation does not declare that type
    /// ([`Plan::contract_withholds`]).
    fn filters(&self, json: bool) -> bool {
        self.remove.is_some()
            || self.mask.is_some()
            || (json && self.contract.is_some_and(|c| c.filters()))
    }

    /// Whether the contract's keep-only-declared withholds a body that is not read as JSON:
    /// one whose type — another one, none, or several (`content_type` is then `None`) — the
    /// operation's declared response does not list. The contract is handed a stand-in value
    /// and answers as it does for a JSON body of an undeclared type: by setting it to `null`.
    fn contract_withholds(&self, status: StatusCode, content_type: Option<&str>) -> bool {
        let Some(contract) = self.contract.filter(|c| c.filters()) else {
            return false;
        };
        let mut stand_in = serde_json::Value::Bool(true);
        // Its violations are the ones `apply(…, None)` reports, taken where the body goes.
        let _ = contract.apply(status, content_type, Some(&mut stand_in));
        stand_in.is_null()
    }
}

/// Runs a plan on an upstream response. Returns the response to send and the contract
/// violations found (response validation, detect only).
pub async fn filter_with(
    resp: Response<BoxBody>,
    plan: &Plan<'_>,
    request_method: &Method,
) -> Result<(Response<BoxBody>, Vec<Violation>), Rejection> {
    let status = resp.status();
    let content_type = single_content_type(resp.headers()).map(str::to_owned);
    let ct = content_type.as_deref();
    let validate_only = |v: Option<&mut serde_json::Value>| {
        plan.contract
            .map(|c| c.apply(status, ct, v))
            .unwrap_or_default()
    };
    if request_method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        let mut resp = resp;
        // A HEAD whose GET would be filtered or withheld loses what describes that body.
        let would_filter = || {
            let json = is_json(resp.headers());
            plan.filters(json)
                || (!json && plan.contract_withholds(status, single_content_type(resp.headers())))
        };
        // So does a 304, whose fields are the whole body's (its tag, its length) — often with
        // no type to tell whether the body would be JSON.
        let stale = if request_method == Method::HEAD {
            would_filter()
        } else {
            status == StatusCode::NOT_MODIFIED && (plan.filters(true) || would_filter())
        };
        if stale {
            remove_stale(resp.headers_mut());
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        // No body: the status and type can still be checked.
        return Ok((resp, validate_only(None)));
    }
    let json = is_json(resp.headers());
    // A JSON answer mislabelled (`text/plain`, no type, two types) must not slip past the
    // contract's keep-only-declared: a body of a type the operation does not declare is
    // withheld like one that cannot be filtered.
    let filters = plan.filters(json)
        || (!json && plan.contract_withholds(status, single_content_type(resp.headers())));
    let unfilterable = |detail: &'static str, resp: Response<BoxBody>| {
        if filters && plan.fail_closed {
            Err(refuse(detail))
        } else {
            let mut violations = validate_only(None);
            if filters {
                tracing::debug!(detail, "response passed unfiltered (route policy: pass)");
            } else if plan.contract.is_some() && is_json(resp.headers()) {
                violations.push(Violation::new(
                    "body",
                    "not validated: ".to_owned() + detail,
                ));
            }
            Ok((resp, violations))
        }
    };
    if is_encoded(resp.headers()) {
        return unfilterable(
            "the upstream response is compressed (Content-Encoding) and cannot be filtered",
            resp,
        );
    }
    if status == StatusCode::PARTIAL_CONTENT || resp.headers().contains_key(header::CONTENT_RANGE) {
        return unfilterable(
            "the upstream response is partial (206 or Content-Range) and cannot be filtered",
            resp,
        );
    }

    if !json {
        if !filters {
            // Validation of a non-JSON body stops at its status and type.
            return Ok((resp, validate_only(None)));
        }
        let (mut parts, body) = resp.into_parts();
        return match body_state(body).await? {
            BodyState::Empty => {
                remove_stale(&mut parts.headers);
                set_length(&mut parts.headers, 0);
                Ok((
                    Response::from_parts(parts, full_body(Bytes::new())),
                    validate_only(None),
                ))
            }
            BodyState::NotEmpty(body) => unfilterable(
                "the upstream response is not JSON (by its Content-Type) and cannot be filtered",
                Response::from_parts(parts, body),
            ),
        };
    }

    let (mut parts, body) = resp.into_parts();
    let bytes = match read_limited(body, plan.max_bytes).await? {
        Read::Whole(b) => b,
        Read::Over(body) => {
            let detail = "the upstream response is larger than the filtering limit";
            return if filters && plan.fail_closed {
                Err(Rejection::new(
                    RejectReason::ResponseFilterFailed,
                    format!(
                        "the upstream response is larger than {} bytes and cannot be filtered",
                        plan.max_bytes
                    ),
                ))
            } else {
                unfilterable(detail, Response::from_parts(parts, body))
            };
        }
    };
    let mut violations = Vec::new();
    let out = if bytes.is_empty() {
        violations = validate_only(None);
        bytes
    } else {
        let mut value: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(_) if !(filters && plan.fail_closed) => {
                let mut v = validate_only(None);
                if plan.contract.is_some() {
                    v.push(Violation::new("body", "is not valid JSON"));
                }
                return Ok((Response::from_parts(parts, full_body(bytes)), v));
            }
            Err(_) => {
                return Err(refuse(
                    "the upstream response is not valid JSON and cannot be filtered",
                ));
            }
        };
        if !filters {
            // Validation only: the upstream's bytes go on untouched.
            let v = validate_only(Some(&mut value));
            return Ok((Response::from_parts(parts, full_body(bytes)), v));
        }
        drop(bytes);
        if let Some(r) = plan.remove {
            r.apply(&mut value);
        }
        if let Some(c) = plan.contract {
            violations = c.apply(status, ct, Some(&mut value));
        }
        if let Some(m) = plan.mask {
            m.apply(&mut value);
        }
        serde_json::to_vec(&value)
            .map(Bytes::from)
            .map_err(|_| refuse("the filtered response could not be serialized"))?
    };
    remove_stale(&mut parts.headers);
    set_length(&mut parts.headers, out.len());
    Ok((Response::from_parts(parts, full_body(out)), violations))
}

fn refuse(detail: &'static str) -> Rejection {
    Rejection::new(RejectReason::ResponseFilterFailed, detail)
}

fn read_failed() -> Rejection {
    Rejection::new(
        RejectReason::UpstreamError,
        "the upstream response body could not be read",
    )
}

/// Whether any `Content-Encoding` coding is other than `identity` (an unreadable field value
/// counts as a coding).
fn is_encoded(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_ENCODING).iter().any(|v| {
        v.to_str().map_or(true, |s| {
            s.split(',')
                .map(str::trim)
                .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        })
    })
}

/// Whether the response has exactly one `Content-Type` and it is JSON-like
/// ([`portcullis_core::is_json_content_type`], the contract's test too), with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    value
        .to_str()
        .is_ok_and(portcullis_core::is_json_content_type)
}

/// What [`read_limited`] found.
enum Read {
    Whole(Bytes),
    /// Longer than the limit: the body, whole again (what was read is put back in front).
    Over(BoxBody),
}

/// Reads a body up to its end, stopping as soon as it holds more than `max` bytes. Trailers
/// are read and dropped.
async fn read_limited(mut body: BoxBody, max: u64) -> Result<Read, Rejection> {
    if body.size_hint().lower() > max {
        return Ok(Read::Over(body));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| read_failed())?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() as u64).saturating_add(data.len() as u64) > max {
                buf.extend_from_slice(&data);
                return Ok(Read::Over(replay(buf.freeze(), body)));
            }
            if buf.is_empty() && body.is_end_stream() {
                // A body in one frame is kept without copying.
                return Ok(Read::Whole(data));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Read::Whole(buf.freeze()))
}

/// `head` followed by the rest of `rest`.
fn replay(head: Bytes, rest: BoxBody) -> BoxBody {
    let first = http_body_util::Full::new(head).map_err(|e| -> BoxError { match e {} });
    let stream = futures_util::stream::unfold(
        (Some(first), Some(rest)),
        |(mut first, mut rest)| async move {
            if let Some(f) = first.as_mut() {
                if let Some(frame) = f.frame().await {
                    return Some((frame, (first, rest)));
                }
                first = None;
            }
            let r = rest.as_mut()?;
            let frame = r.frame().await?;
            Some((frame, (first, rest)))
        },
    );
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

enum BodyState {
    Empty,
    /// The body holds data: it is handed back whole, to be passed on when the policy allows.
    NotEmpty(BoxBody),
}

/// Learns whether a body holds any data, reading no further than its first data frame.
async fn body_state(mut body: BoxBody) -> Result<BodyState, Rejection> {
    if body.is_end_stream() {
        return Ok(BodyState::Empty);
    }
    if body.size_hint().lower() > 0 {
        return Ok(BodyState::NotEmpty(body));
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| read_failed())?;
        if let Some(d) = frame.data_ref().filter(|d| !d.is_empty()) {
            let first = d.clone();
            return Ok(BodyState::NotEmpty(replay(first, body)));
        }
    }
    Ok(BodyState::Empty)
}

/// The one `Content-Type` of a response, if it has exactly one readable.
fn single_content_type(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok(),
        _ => None,
    }
}

fn remove_stale(headers: &mut HeaderMap) {
    for name in STALE_FIELDS {
        headers.remove(HeaderName::from_static(name));
    }
}

fn set_length(headers: &mut HeaderMap, len: usize) {
    headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::stream;
    use http::HeaderValue;
    use http_body::Frame;
    use http_body_util::StreamBody;
    use portcullis_core::{BoxError, JsonFilter};
    use serde_json::{Value, json};

    use super::*;

    /// Keeps only the listed top-level keys (the real mask lives in portcullis-authz, which
    /// this crate does not depend on).
    #[derive(Debug)]
    struct Keep(&'static [&'static str]);

    impl JsonFilter for Keep {
        fn apply(&self, value: &mut Value) {
            match value {
                Value::Object(map) => map.retain(|k, _| self.0.contains(&k.as_str())),
                Value::Array(items) => items.iter_mut().for_each(|v| self.apply(v)),
                _ => {}
            }
        }
    }

    fn filter(max_bytes: u64) -> ResponseFilter {
        ResponseFilter {
            json: Arc::new(Keep(&["id", "status", "type"])),
            max_bytes,
        }
    }

    /// A body streamed in the given frames (an `Err` frame fails the read), with no size hint.
    fn frames(chunks: Vec<Result<Frame<Bytes>, BoxError>>) -> BoxBody {
        StreamBody::new(stream::iter(chunks)).boxed_unsync()
    }

    /// A body streamed as several data frames.
    fn chunked(parts: &[&str]) -> BoxBody {
        frames(
            parts
                .iter()
                .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p.as_bytes()))))
                .collect(),
        )
    }

    fn response(status: u16, headers: &[(&str, &str)], body: BoxBody) -> Response<BoxBody> {
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        for (k, v) in headers {
            resp.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::WARNING),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        resp
    }

    async fn run(resp: Response<BoxBody>, max: u64) -> Result<Response<BoxBody>, Rejection> {
        filter_response(resp, &filter(max), &Method::GET).await
    }

    async fn body_of(resp: Response<BoxBody>) -> (http::response::Parts, Bytes) {
        let (parts, body) = resp.into_parts();
        match body.collect().await {
            Ok(c) => (parts, c.to_bytes()),
            Err(e) => panic!("body: {e}"),
        }
    }

    fn expect_ok(r: Result<Response<BoxBody>, Rejection>) -> Response<BoxBody> {
        match r {
            Ok(r) => r,
            Err(e) => panic!("unexpected rejection: {e:?}"),
        }
    }

    fn expect_err(r: Result<Response<BoxBody>, Rejection>, reason: RejectReason) -> Rejection {
        match r {
            Ok(r) => panic!("expected {reason:?}, got {:?}", r.status()),
            Err(e) => {
                assert_eq!(e.reason, reason, "{e:?}");
                e
            }
        }
    }

    fn length(parts: &http::response::Parts) -> Option<usize> {
        parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    const JSON: (&str, &str) = ("content-type", "application/json");
    const SECRET: &str = r#"{"id":7,"secret":"s3cr3t","nested":{"id":1}}"#;

    #[tokio::test]
    async fn respfilter_masks_json_streamed_in_frames() {
        let body = chunked(&[
            r#"{"id":7,"sec"#,
            r#"ret":"s3cr3t","#,
            r#""nested":{"id":1}}"#,
        ]);
        let resp = response(
            200,
            &[
                JSON,
                ("etag", "\"abc\""),
                ("content-md5", "x"),
                ("digest", "sha-256=x"),
                ("content-digest", "sha-256=:x:"),
                ("repr-digest", "sha-256=:x:"),
                ("transfer-encoding", "chunked"),
                ("accept-ranges", "bytes"),
                ("cache-control", "private"),
            ],
            body,
        );
        let (parts, bytes) = body_of(expect_ok(run(resp, 1024).await)).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(&bytes[..], br#"{"id":7}"#);
        assert_eq!(length(&parts), Some(bytes.len()));
        for gone in [
            "etag",
            "content-md5",
            "digest",
            "content-digest",
            "repr-digest",
            "transfer-encoding",
            "accept-ranges",
        ] {
            assert!(!parts.headers.contains_key(gone), "{gone} kept");
        }
        assert_eq!(parts.headers["cache-control"], "private");
        assert_eq!(parts.headers["content-type"], "application/json");
    }

    #[tokio::test]
    async fn respfilter_replaces_a_stale_content_length() {
        let resp = response(
            200,
            &[JSON, ("content-length", &SECRET.len().to_string())],
            chunked(&[SECRET]),
        );
        let (parts, bytes) = body_of(expect_ok(run(resp, 1024).await)).await;
        assert_eq!(&bytes[..], br#"{"id":7}"#);
        assert_eq!(length(&parts), Some(8));
        assert_eq!(
            parts.headers.get_all(header::CONTENT_LENGTH).iter().count(),
            1
        );
    }

    #[tokio::test]
    async fn respfilter_filters_problem_json_error_bodies() {
        let body =
            r#"{"type":"about:blank","status":404,"detail":"order 7 of alice@example.com","id":7}"#;
        let resp = response(
            404,
            &[("content-type", "application/problem+json")],
            chunked(&[body]),
        );
        let (parts, bytes) = body_of(expect_ok(run(resp, 1024).await)).await;
        assert_eq!(parts.status, StatusCode::NOT_FOUND);
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(v, json!({"type": "about:blank", "status": 404, "id": 7}));
        assert_eq!(length(&parts), Some(bytes.len()));
    }

    #[tokio::test]
    async fn respfilter_json_media_types() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            "application/vnd.api+json",
            "application/hal+JSON ; profile=x",
            "application/merge-patch+json",
            "text/json",
            "Text/JSON; charset=utf-8",
            "application/x-json",
        ] {
            let resp = response(200, &[("content-type", ct)], chunked(&[SECRET]));
            let (_, bytes) = body_of(expect_ok(run(resp, 1024).await)).await;
            assert_eq!(&bytes[..], br#"{"id":7}"#, "{ct}");
        }
    }

    #[tokio::test]
    async fn respfilter_refuses_other_content_types_with_a_body() {
        for ct in [
            Some("text/plain"),
            Some("text/json5"),
            Some("application/jsonp"),
            Some("application/x-json-stream"),
            Some("application/+json"),
            Some("application/json+xml"),
            Some("application/octet-stream"),
            Some("application"),
            Some(""),
            None,
        ] {
            let headers: Vec<(&str, &str)> = ct.iter().map(|c| ("content-type", *c)).collect();
            let resp = response(200, &headers, chunked(&[SECRET]));
            let e = expect_err(run(resp, 1024).await, RejectReason::ResponseFilterFailed);
            assert!(e.detail.contains("not JSON"), "{ct:?}: {}", e.detail);
        }
    }

    /// Keep-only-declared as the contract does it: the response lists these types (prefixes
    /// of the `Content-Type`), a body of another type (or none) is set to `null`, and the
    /// declared JSON keeps its fields but `password_hash`.
    #[derive(Debug)]
    struct Declares(&'static [&'static str]);

    impl ResponseContract for Declares {
        fn wants_body(&self, _: StatusCode) -> bool {
            true
        }
        fn filters(&self) -> bool {
            true
        }
        fn max_bytes(&self) -> u64 {
            1024
        }
        fn apply(
            &self,
            _: StatusCode,
            content_type: Option<&str>,
            body: Option<&mut Value>,
        ) -> Vec<Violation> {
            let declared = content_type.is_some_and(|ct| self.0.iter().any(|t| ct.starts_with(t)));
            match body {
                Some(b) if !declared => *b = Value::Null,
                Some(Value::Object(m)) => {
                    m.remove("password_hash");
                }
                _ => {}
            }
            Vec::new()
        }
    }

    /// A HEAD whose GET would be withheld loses the fields that describe the body.
    #[tokio::test]
    async fn respfilter_head_of_a_withheld_type_loses_its_length() {
        let contract = Declares(&["application/json"]);
        let plan = Plan {
            remove: None,
            contract: Some(&contract),
            mask: None,
            max_bytes: 1024,
            fail_closed: true,
        };
        let head = |ct: &'static str| {
            response(
                200,
                &[
                    ("content-type", ct),
                    ("content-length", "38"),
                    ("etag", "\"1\""),
                ],
                chunked(&[]),
            )
        };
        let (out, _) = filter_with(head("text/plain"), &plan, &Method::HEAD)
            .await
            .unwrap();
        assert!(out.headers().get("content-length").is_none());
        assert!(out.headers().get("etag").is_none());
        // A declared type that is not JSON keeps them.
        let contract = Declares(&["application/json", "text/csv"]);
        let plan = Plan {
            contract: Some(&contract),
            ..plan
        };
        let (out, _) = filter_with(head("text/csv"), &plan, &Method::HEAD)
            .await
            .unwrap();
        assert_eq!(out.headers().get("content-length").unwrap(), "38");
    }

    async fn run_contract(
        resp: Response<BoxBody>,
        declared: &'static [&'static str],
        fail_closed: bool,
    ) -> Result<Response<BoxBody>, Rejection> {
        let contract = Declares(declared);
        let plan = Plan {
            remove: None,
            contract: Some(&contract),
            mask: None,
            max_bytes: 1024,
            fail_closed,
        };
        filter_with(resp, &plan, &Method::GET)
            .await
            .map(|(resp, _)| resp)
    }

    const USER: &str = r#"{"id":7,"password_hash":"$2b$12$abc"}"#;

    #[tokio::test]
    async fn respfilter_declared_only_withholds_mislabelled_json() {
        // Go's detected type, no type, two types, a compressed body of an undeclared type.
        let cases: [&[(&str, &str)]; 5] = [
            &[("content-type", "text/plain; charset=utf-8")],
            &[],
            &[JSON, ("content-type", "text/plain")],
            &[("content-type", "application/octet-stream")],
            &[("content-type", "text/plain"), ("content-encoding", "gzip")],
        ];
        for headers in cases {
            let resp = response(200, headers, chunked(&[USER]));
            expect_err(
                run_contract(resp, &["application/json"], true).await,
                RejectReason::ResponseFilterFailed,
            );
        }
        // The declared JSON is filtered.
        let resp = response(200, &[JSON], chunked(&[USER]));
        let ok = expect_ok(run_contract(resp, &["application/json"], true).await);
        assert_eq!(&body_of(ok).await.1[..], br#"{"id":7}"#);
        // A declared type that is not JSON passes unread; so does an empty body of any type.
        let resp = response(200, &[("content-type", "text/csv")], chunked(&["a,b\n"]));
        let ok = expect_ok(run_contract(resp, &["application/json", "text/csv"], true).await);
        assert_eq!(&body_of(ok).await.1[..], b"a,b\n");
        let resp = response(200, &[("content-type", "text/plain")], chunked(&[]));
        let ok = expect_ok(run_contract(resp, &["application/json"], true).await);
        assert!(body_of(ok).await.1.is_empty());
        // `on_unfilterable: pass`: the route's choice.
        let resp = response(200, &[("content-type", "text/plain")], chunked(&[USER]));
        let ok = expect_ok(run_contract(resp, &["application/json"], false).await);
        assert_eq!(&body_of(ok).await.1[..], USER.as_bytes());
    }

    #[tokio::test]
    async fn respfilter_refuses_two_content_types() {
        let resp = response(
            200,
            &[JSON, ("content-type", "text/html")],
            chunked(&[SECRET]),
        );
        expect_err(run(resp, 1024).await, RejectReason::ResponseFilterFailed);
    }

    #[tokio::test]
    async fn respfilter_lets_empty_non_json_bodies_through() {
        // An empty body with no size hint, and one announced as empty.
        for (headers, body) in [
            (vec![("location", "/x")], chunked(&[])),
            (vec![("content-type", "text/plain")], chunked(&["", ""])),
            (vec![], full_body(Bytes::new())),
        ] {
            let resp = response(302, &headers, body);
            let (parts, bytes) = body_of(expect_ok(run(resp, 1024).await)).await;
            assert_eq!(parts.status, StatusCode::FOUND);
            assert!(bytes.is_empty());
            assert_eq!(length(&parts), Some(0));
        }
    }

    #[tokio::test]
    async fn respfilter_empty_json_body_stays_empty() {
        let resp = response(200, &[JSON], chunked(&[]));
        let (parts, bytes) = body_of(expect_ok(run(resp, 1024).await)).await;
        assert!(bytes.is_empty());
        assert_eq!(length(&parts), Some(0));
    }

    #[tokio::test]
    async fn respfilter_bodyless_responses_pass_unchanged() {
        // HEAD: the body is not read (reading it would fail the test).
        let failing = || frames(vec![Err("must not be read".into())]);
        let resp = response(
            200,
            &[("content-type", "text/html"), ("etag", "\"e\"")],
            failing(),
        );
        let out = expect_ok(filter_response(resp, &filter(8), &Method::HEAD).await);
        // The GET's body would be filtered: its length and tag are not the upstream's.
        assert!(out.headers().get("etag").is_none());
        let resp = response(
            200,
            &[JSON, ("content-length", "1234"), ("etag", "\"e\"")],
            failing(),
        );
        let out = expect_ok(filter_response(resp, &filter(8), &Method::HEAD).await);
        assert!(out.headers().get("content-length").is_none());
        assert!(out.headers().get("etag").is_none());
        for status in [204, 100, 103] {
            let resp = response(
                status,
                &[("content-encoding", "gzip"), ("etag", "\"e\"")],
                failing(),
            );
            let out = expect_ok(run(resp, 8).await);
            assert_eq!(out.status().as_u16(), status);
            assert_eq!(out.headers()["etag"], "\"e\"");
        }
        // A 304's tag and length are the whole body's, not the view's: dropped, typed or not.
        for fields in [
            &[("etag", "\"e\""), ("content-length", "99")][..],
            &[JSON, ("etag", "\"e\"")],
        ] {
            let resp = response(304, fields, failing());
            let out = expect_ok(run(resp, 8).await);
            assert_eq!(out.status().as_u16(), 304);
            assert!(out.headers().get("etag").is_none(), "{fields:?}");
            assert!(out.headers().get("content-length").is_none(), "{fields:?}");
        }
    }

    #[tokio::test]
    async fn respfilter_refuses_compressed_bodies() {
        for ce in ["gzip", "br", "identity, gzip", "x-custom"] {
            let resp = response(200, &[JSON, ("content-encoding", ce)], chunked(&[SECRET]));
            let e = expect_err(run(resp, 1024).await, RejectReason::ResponseFilterFailed);
            assert!(e.detail.contains("compressed"), "{ce}: {}", e.detail);
        }
        // Even when the body is empty or not JSON.
        let resp = response(200, &[("content-encoding", "gzip")], chunked(&[]));
        expect_err(run(resp, 1024).await, RejectReason::ResponseFilterFailed);
        // `identity` is no coding at all.
        for ce in ["identity", "IDENTITY", " identity , identity"] {
            let resp = response(200, &[JSON, ("content-encoding", ce)], chunked(&[SECRET]));
            let (_, bytes) = body_of(expect_ok(run(resp, 1024).await)).await;
            assert_eq!(&bytes[..], br#"{"id":7}"#);
        }
    }

    #[tokio::test]
    async fn respfilter_refuses_partial_content() {
        let resp = response(206, &[JSON], chunked(&[SECRET]));
        let e = expect_err(run(resp, 1024).await, RejectReason::ResponseFilterFailed);
        assert!(e.detail.contains("partial"));
        let resp = response(
            200,
            &[JSON, ("content-range", "bytes 0-9/100")],
            chunked(&[SECRET]),
        );
        expect_err(run(resp, 1024).await, RejectReason::ResponseFilterFailed);
    }

    #[tokio::test]
    async fn respfilter_body_exactly_at_the_limit_passes() {
        let max = SECRET.len() as u64;
        let (a, b) = SECRET.split_at(10);
        let resp = response(200, &[JSON], chunked(&[a, b]));
        let (_, bytes) = body_of(expect_ok(run(resp, max).await)).await;
        assert_eq!(&bytes[..], br#"{"id":7}"#);
    }

    #[tokio::test]
    async fn respfilter_one_byte_over_the_limit_fails() {
        let max = SECRET.len() as u64 - 1;
        let (a, b) = SECRET.split_at(10);
        let resp = response(200, &[JSON], chunked(&[a, b]));
        let e = expect_err(run(resp, max).await, RejectReason::ResponseFilterFailed);
        assert!(
            e.detail.contains(&format!("larger than {max} bytes")),
            "{}",
            e.detail
        );
        // Announced by a size hint: refused before anything is read.
        let resp = response(200, &[JSON], full_body(SECRET));
        expect_err(run(resp, max).await, RejectReason::ResponseFilterFailed);
    }

    #[tokio::test]
    async fn respfilter_stops_reading_once_over_the_limit() {
        // The frame after the one that passes the limit would fail the read: it is never
        // polled, so the answer is "too large", not an upstream error.
        let body = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"[1,2,3,"))),
            Ok(Frame::data(Bytes::from_static(b"4,5,6,"))),
            Err("read past the limit".into()),
        ]);
        let resp = response(200, &[JSON], body);
        let e = expect_err(run(resp, 10).await, RejectReason::ResponseFilterFailed);
        assert!(e.detail.contains("larger than 10 bytes"), "{}", e.detail);
        // An endless body ends too.
        let endless = StreamBody::new(stream::repeat_with(|| {
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"[[[[[[[[")))
        }))
        .boxed_unsync();
        let resp = response(200, &[JSON], endless);
        expect_err(run(resp, 1 << 16).await, RejectReason::ResponseFilterFailed);
    }

    #[tokio::test]
    async fn respfilter_refuses_invalid_json() {
        for bad in [
            "{\"id\":7",
            "{\"id\":7}{}",
            "not json",
            "\u{feff}{\"id\":7}",
            " ",
        ] {
            let resp = response(200, &[JSON], chunked(&[bad]));
            let e = expect_err(run(resp, 1024).await, RejectReason::ResponseFilterFailed);
            assert!(e.detail.contains("not valid JSON"), "{bad:?}");
        }
        // Nesting beyond the parser's limit is refused, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let resp = response(200, &[JSON], chunked(&[&deep]));
        expect_err(run(resp, 1 << 20).await, RejectReason::ResponseFilterFailed);
    }

    #[tokio::test]
    async fn respfilter_upstream_read_error_is_an_upstream_error() {
        let body = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"{\"id\":"))),
            Err("connection reset".into()),
        ]);
        let resp = response(200, &[JSON], body);
        expect_err(run(resp, 1024).await, RejectReason::UpstreamError);
        // Also while checking that a non-JSON body is empty.
        let resp = response(200, &[], frames(vec![Err("connection reset".into())]));
        expect_err(run(resp, 1024).await, RejectReason::UpstreamError);
    }

    #[tokio::test]
    async fn respfilter_drops_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        let body = frames(vec![
            Ok(Frame::data(Bytes::from_static(SECRET.as_bytes()))),
            Ok(Frame::trailers(trailers)),
        ]);
        let resp = response(200, &[JSON, ("trailer", "x-checksum")], body);
        let out = expect_ok(run(resp, 1024).await);
        assert!(!out.headers().contains_key("trailer"));
        let (_, body) = out.into_parts();
        let collected = match body.collect().await {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(collected.trailers().is_none());
        assert_eq!(&collected.to_bytes()[..], br#"{"id":7}"#);
    }

    #[tokio::test]
    async fn respfilter_top_level_array_and_unicode() {
        let body = r#"[{"id":"ä\u00e9","x":1},{"id":"\ud83d\ude00","y":2}]"#;
        let resp = response(
            200,
            &[("content-type", "application/json; charset=utf-8")],
            chunked(&[body]),
        );
        let (parts, bytes) = body_of(expect_ok(run(resp, 1024).await)).await;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(v, json!([{"id": "äé"}, {"id": "😀"}]));
        assert_eq!(length(&parts), Some(bytes.len()));
    }

    #[tokio::test]
    async fn respfilter_single_frame_body_with_exact_size_hint() {
        let resp = response(200, &[JSON], full_body(SECRET));
        let (parts, bytes) = body_of(expect_ok(run(resp, 1024).await)).await;
        assert_eq!(&bytes[..], br#"{"id":7}"#);
        assert_eq!(length(&parts), Some(8));
    }
}
