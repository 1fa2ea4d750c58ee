//! The built-in `echo` upstream: answers in process with the request exactly as an upstream
//! would have received it — method, path, headers after every rewrite, body — as JSON. For the
//! quickstart and for tests; it never touches the network.

use base64::Engine;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use portcullis_core::{BoxBody, RejectReason, Rejection};
use serde_json::{Map, Value, json};

use crate::problem::full_body;

fn limit_tripped(len: usize, limit: u64) -> bool {
    u64::try_from(len).unwrap_or(u64::MAX) > limit
}

fn too_large(limit: u64) -> Rejection {
    Rejection::new(
        RejectReason::BodyTooLarge,
        format!("the request body exceeds {limit} bytes"),
    )
}

/// Reads the body (up to `limit`) and answers with the JSON description of the request.
pub fn respond(
    head: http::request::Parts,
    body: BoxBody,
    limit: u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<BoxBody>, Rejection>> + Send>>
{
    // Boxed at a concrete type: rustc cannot prove `Send` for the body's error conversion
    // through the caller's higher-ranked bounds.
    Box::pin(respond_inner(head, body, limit))
}

async fn respond_inner(
    head: http::request::Parts,
    body: BoxBody,
    limit: u64,
) -> Result<Response<BoxBody>, Rejection> {
    let bytes = read_body(body, limit).await?;
    let mut headers = Map::new();
    for name in head.headers.keys() {
        let values: Vec<Value> = head
            .headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let v = if values.len() == 1 {
            values.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        headers.insert(name.as_str().to_string(), v);
    }
    let mut doc = json!({
        "upstream": "echo",
        "method": head.method.as_str(),
        "uri": head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
    });
    match std::str::from_utf8(&bytes) {
        Ok(s) => doc["body"] = Value::String(s.to_string()),
        Err(_) => {
            doc["body_base64"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(&bytes))
        }
    }
    let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    let mut resp = Response::new(full_body(text));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Reads a request body whole, up to `limit` (in-process upstreams: echo, token exchange).
pub(crate) async fn read_body(body: BoxBody, limit: u64) -> Result<bytes::Bytes, Rejection> {
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) if e.is::<portcullis_core::BodyLimitExceeded>() => return Err(too_large(limit)),
            Err(e) if e.is::<portcullis_core::BodyTooSlow>() => {
                return Err(Rejection::new(
                    RejectReason::BodyTimeout,
                    "the request body arrived too slowly",
                ));
            }
            Err(_) => {
                return Err(Rejection::new(
                    RejectReason::BodyReadFailed,
                    "the request body could not be read",
                ));
            }
        };
        if let Ok(data) = frame.into_data() {
            if limit_tripped(buf.len() + data.len(), limit) {
                return Err(too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
