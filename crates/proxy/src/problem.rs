//! THE table that turns a rejection (a policy outcome) or an engine failure into HTTP: an
//! RFC 9457 `application/problem+json` body with a stable `type`, the reason's status, and the
//! headers the rejection asked for. No other place in the gateway writes an error response.

use bytes::Bytes;
use http::Response;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http_body_util::{BodyExt, Full};
use portcullis_core::{BoxBody, BoxError, RejectReason, Rejection, RequestId, push_json_string};

pub const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

pub fn full_body(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|e| -> BoxError { match e {} })
        .boxed_unsync()
}

/// An empty body. Zero-sized: boxing it does not allocate.
pub fn empty_body() -> BoxBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| -> BoxError { match never {} })
        .boxed_unsync()
}

/// The problem document for a rejection.
pub fn problem_body(rejection: &Rejection, request_id: &RequestId) -> String {
    let reason = rejection.reason;
    let mut out = String::with_capacity(192 + rejection.detail.len());
    out.push_str("{\"type\":");
    push_json_string(&mut out, reason.type_uri());
    out.push_str(",\"title\":");
    push_json_string(&mut out, reason.title());
    out.push_str(",\"status\":");
    out.push_str(reason.status().as_str());
    out.push_str(",\"detail\":");
    push_json_string(&mut out, &rejection.detail);
    out.push_str(",\"code\":");
    push_json_string(&mut out, reason.code());
    out.push_str(",\"request_id\":");
    push_json_string(&mut out, request_id.as_str());
    if !rejection.violations.is_empty() {
        out.push_str(",\"violations\":[");
        for (i, v) in rejection.violations.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"location\":");
            push_json_string(&mut out, &v.location);
            out.push_str(",\"message\":");
            push_json_string(&mut out, &v.message);
            out.push('}');
        }
        out.push(']');
    }
    out.push('}');
    out
}

/// The response for a rejection.
pub fn problem_response(rejection: &Rejection, request_id: &RequestId) -> Response<BoxBody> {
    let body = problem_body(rejection, request_id);
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = rejection.status();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, PROBLEM_JSON);
    h.insert(CACHE_CONTROL, NO_STORE);
    for (name, value) in &rejection.headers {
        h.append(name.clone(), value.clone());
    }
    if matches!(
        rejection.reason,
        RejectReason::BadRequest | RejectReason::BodyReadFailed
    ) {
        // The connection's framing may be in doubt after a malformed request or body (a
        // well-framed request that breaks the API contract leaves it sound).
        h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::RejectReason;

    #[test]
    fn body_is_valid_problem_json_with_escaping() {
        let r = Rejection::new(RejectReason::IpDenied, "say \"no\"\n\u{1}");
        let id = RequestId::from_client(b"abc").unwrap();
        let v: serde_json::Value = serde_json::from_str(&problem_body(&r, &id)).unwrap();
        assert_eq!(v["type"], "urn:portcullis:problem:ip_denied");
        assert_eq!(v["status"], 403);
        assert_eq!(v["title"], "Client address not allowed");
        assert_eq!(v["detail"], "say \"no\"\n\u{1}");
        assert_eq!(v["code"], "ip_denied");
        assert_eq!(v["request_id"], "abc");
    }

    #[test]
    fn violations_are_listed_with_location_and_message() {
        let r =
            Rejection::new(RejectReason::ContractViolation, "2 violations").with_violations(vec![
                portcullis_core::Violation::new("body:/items/0/qty", "must be >= 1"),
                portcullis_core::Violation::new("query:\"q\"", "required"),
            ]);
        let id = RequestId::from_client(b"abc").unwrap();
        let v: serde_json::Value = serde_json::from_str(&problem_body(&r, &id)).unwrap();
        assert_eq!(v["status"], 400);
        assert_eq!(v["violations"][0]["location"], "body:/items/0/qty");
        assert_eq!(v["violations"][0]["message"], "must be >= 1");
        assert_eq!(v["violations"][1]["location"], "query:\"q\"");
        assert_eq!(v["violations"].as_array().unwrap().len(), 2);
        let plain = problem_body(&Rejection::new(RejectReason::BadRequest, "x"), &id);
        assert!(!plain.contains("violations"));
    }

    #[test]
    fn only_framing_doubts_close_the_connection() {
        let id = RequestId::generate();
        for (reason, closes) in [
            (RejectReason::BadRequest, true),
            (RejectReason::BodyReadFailed, true),
            (RejectReason::ContractViolation, false),
            (RejectReason::RouteNotFound, false),
        ] {
            let resp = problem_response(&Rejection::new(reason, "x"), &id);
            assert_eq!(
                resp.headers().get(http::header::CONNECTION).is_some(),
                closes,
                "{reason:?}"
            );
        }
    }

    #[test]
    fn response_carries_status_type_and_rejection_headers() {
        let r = Rejection::new(RejectReason::MethodNotAllowed, "no")
            .with_header(http::header::ALLOW, HeaderValue::from_static("GET"));
        let resp = problem_response(&r, &RequestId::generate());
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/problem+json");
        assert_eq!(resp.headers()[http::header::ALLOW], "GET");
    }
}
