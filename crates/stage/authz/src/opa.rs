//! Decisions asked of an external OPA server over its Data API.
//!
//! * **Takes**: a base URL, a rule path (`orders/allow` or `orders.allow`) and the input
//!   document of a request.
//! * **Produces**: a [`PolicyDecision`], read from the answer's `result` exactly as
//!   [`crate::rego::RegoPolicies::evaluate`] reads an in-process result (no `result`: undefined,
//!   a deny).
//! * **Rejects** (as `Err`, which the route's `on_error` governs): a non-2xx status, no
//!   complete answer within the timeout, a refused connection, an answer that is not JSON, a
//!   result of the wrong shape. A result whose `allow` is `false` is a deny, never an error,
//!   however malformed the rest of it (`interpret` in [`crate::rego`]).
//!
//! Caching: a decision is kept for `cache_ttl`, keyed by the rule path and the input without
//! its top-level `time` and `request_id` (they differ on every request and would make every
//! lookup a miss). A policy that reads `input.time` (or the clock) must therefore run with
//! `cache_ttl` 0, which disables the cache. The cache holds at most `cache_entries` decisions,
//! dropping the oldest first; errors are never cached. Concurrent identical misses share one
//! call to the server (single flight).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use portcullis_fetch::Fetcher;
use serde::Serialize;
use serde::ser::SerializeMap;
use tokio::sync::OnceCell;

use crate::rego::{PolicyDecision, interpret};

/// Where and how to ask OPA.
pub struct OpaSettings {
    /// Base URL, http or https, e.g. `http://127.0.0.1:8181`.
    pub url: String,
    /// Bound on one call: connection, request and the whole answer.
    pub timeout: Duration,
    /// How long a decision is reused; 0: no caching (required for time-dependent policies).
    pub cache_ttl: Duration,
    /// Most decisions kept; 0: no caching.
    pub cache_entries: usize,
    /// Trust these CAs instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Sent with every call, e.g. `Authorization` for OPA's own authentication.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// A client of one OPA server; Send + Sync, built per configuration snapshot.
pub struct OpaClient {
    fetcher: Fetcher,
    /// The base URL without a trailing slash.
    base: String,
    timeout: Duration,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    cache: Option<DecisionCache>,
}

/// Input keys left out of the cache key: they change on every request.
const VOLATILE_INPUT_KEYS: [&str; 2] = ["time", "request_id"];

impl OpaClient {
    pub fn new(settings: OpaSettings) -> Result<OpaClient, String> {
        let base = settings.url.trim_end_matches('/').to_owned();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| format!("OPA URL {:?}: {e}", settings.url))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(format!(
                    "OPA URL {:?}: the scheme must be http or https",
                    settings.url
                ));
            }
        }
        let Some(authority) = uri.authority() else {
            return Err(format!("OPA URL {:?}: no host", settings.url));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "OPA URL {:?}: credentials go in headers, not in the URL",
                settings.url
            ));
        }
        if uri.query().is_some() {
            return Err(format!(
                "OPA URL {:?}: no query string allowed",
                settings.url
            ));
        }
        if settings.timeout.is_zero() {
            return Err("OPA timeout must be more than 0".to_owned());
        }
        let fetcher = Fetcher::new(settings.ca_pem.as_deref())?;
        let cache =
            (!settings.cache_ttl.is_zero() && settings.cache_entries > 0).then(|| DecisionCache {
                ttl: settings.cache_ttl,
                capacity: settings.cache_entries,
                stored: Mutex::new(Stored::default()),
                in_flight: Mutex::new(HashMap::new()),
            });
        Ok(OpaClient {
            fetcher,
            base,
            timeout: settings.timeout,
            headers: settings.headers,
            cache,
        })
    }

    /// POST {url}/v1/data/{path} with body {"input": input}; reads `result` like
    /// [`crate::rego::RegoPolicies::evaluate`] (missing result = undefined = deny).
    ///
    /// `path` is a rule path with dots or slashes (`orders/allow`, `orders.allow`), relative to
    /// `data`. Non-2xx, timeout, connection refused, invalid JSON → Err: the caller fails closed.
    pub async fn evaluate(
        &self,
        path: &str,
        input: &serde_json::Value,
    ) -> Result<PolicyDecision, String> {
        let path = data_path(path)?;
        let url = format!("{}/v1/data/{path}", self.base);
        let Some(cache) = &self.cache else {
            return self.call(&url, input).await;
        };
        let key = cache_key(&path, input)?;
        if let Some(hit) = cache.get(&key) {
            return Ok(hit);
        }
        let flight = cache.join_flight(&key);
        // However this call ends — a request dropped while the server is asked (a reset
        // stream) included — its flight leaves the map.
        let _landing = portcullis_core::flight::Landing {
            map: &cache.in_flight,
            key: key.as_str(),
            flight: &flight,
        };
        let result = flight.get_or_init(|| self.call(&url, input)).await.clone();
        cache.land_flight(&key, &flight, &result);
        result
    }

    /// One call to the server.
    async fn call(&self, url: &str, input: &serde_json::Value) -> Result<PolicyDecision, String> {
        #[derive(Serialize)]
        struct Body<'a> {
            input: &'a serde_json::Value,
        }
        let body = serde_json::to_vec(&Body { input })
            .map_err(|e| format!("OPA {url}: encoding the input: {e}"))?;
        let answer = self
            .fetcher
            .post_json(url, Bytes::from(body), &self.headers, self.timeout)
            .await
            .map_err(|e| format!("OPA {url}: {e}"))?;
        if !answer.status.is_success() {
            return Err(format!(
                "OPA {url}: status {}{}",
                answer.status,
                opa_error_message(&answer.body)
            ));
        }
        let document: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("OPA {url}: the answer is not JSON: {e}"))?;
        let serde_json::Value::Object(document) = document else {
            return Err(format!("OPA {url}: the answer is not a JSON object"));
        };
        interpret(document.get("result")).map_err(|e| format!("OPA {url}: {e}"))
    }
}

/// `: message` from OPA's error body (`{"code": …, "message": …}`), shortened; or nothing.
fn opa_error_message(body: &[u8]) -> String {
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return String::new();
    };
    match doc.get("message") {
        Some(serde_json::Value::String(m)) => {
            let short: String = m.chars().take(200).collect();
            format!(": {short}")
        }
        _ => String::new(),
    }
}

/// `orders/allow` or `orders.allow` (surrounding slashes ignored) as URL path segments.
/// Segments are letters, digits, `_` and `-`, which need no encoding.
fn data_path(path: &str) -> Result<String, String> {
    let trimmed = path.trim_matches('/');
    let separator = if trimmed.contains('/') { '/' } else { '.' };
    let mut out = String::with_capacity(trimmed.len());
    for segment in trimmed.split(separator) {
        let valid = !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!(
                "OPA rule path {path:?}: expected segments of letters, digits, _ or - separated by / or . (e.g. orders/allow)"
            ));
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(segment);
    }
    Ok(out)
}

/// The rule path, then the input as JSON without its volatile top-level keys.
fn cache_key(path: &str, input: &serde_json::Value) -> Result<String, String> {
    struct Stable<'a>(&'a serde_json::Map<String, serde_json::Value>);
    impl Serialize for Stable<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(None)?;
            for (k, v) in self.0 {
                if !VOLATILE_INPUT_KEYS.contains(&k.as_str()) {
                    map.serialize_entry(k, v)?;
                }
            }
            map.end()
        }
    }
    let mut key = Vec::with_capacity(256);
    key.extend_from_slice(path.as_bytes());
    key.push(b'\n');
    let written = match input {
        serde_json::Value::Object(fields) => serde_json::to_writer(&mut key, &Stable(fields)),
        other => serde_json::to_writer(&mut key, other),
    };
    written.map_err(|e| format!("OPA: encoding the input: {e}"))?;
    String::from_utf8(key).map_err(|e| format!("OPA: encoding the input: {e}"))
}

type Flight = Arc<OnceCell<Result<PolicyDecision, String>>>;

/// Decisions with their expiry, bounded, plus the calls in flight.
struct DecisionCache {
    ttl: Duration,
    capacity: usize,
    stored: Mutex<Stored>,
    in_flight: Mutex<HashMap<Arc<str>, Flight>>,
}

#[derive(Default)]
struct Stored {
    entries: HashMap<Arc<str>, (PolicyDecision, Instant)>,
    /// Insertion order with each insertion's expiry: the oldest is dropped first. A record
    /// whose expiry no longer matches its entry is stale (the key was stored again).
    order: VecDeque<(Arc<str>, Instant)>,
}

impl Stored {
    /// Drops the oldest record, and its entry if the record is current.
    fn pop_oldest(&mut self) {
        if let Some((key, expires)) = self.order.pop_front()
            && self.entries.get(&key).is_some_and(|(_, e)| *e == expires)
        {
            self.entries.remove(&key);
        }
    }
}

impl DecisionCache {
    fn get(&self, key: &str) -> Option<PolicyDecision> {
        let stored = self.stored.lock().ok()?;
        match stored.entries.get(key) {
            Some((decision, expires)) if Instant::now() < *expires => Some(decision.clone()),
            _ => None,
        }
    }

    /// The call in flight for `key`, or a new one this caller may lead.
    fn join_flight(&self, key: &str) -> Flight {
        let Ok(mut flights) = self.in_flight.lock() else {
            return Arc::new(OnceCell::new());
        };
        if let Some(flight) = flights.get(key) {
            return flight.clone();
        }
        let flight: Flight = Arc::new(OnceCell::new());
        flights.insert(Arc::from(key), flight.clone());
        flight
    }

    /// The first caller back from a flight retires it and stores a successful decision.
    fn land_flight(&self, key: &str, flight: &Flight, result: &Result<PolicyDecision, String>) {
        let retired = portcullis_core::flight::retire(&self.in_flight, key, flight);
        let (true, Ok(decision)) = (retired, result) else {
            return;
        };
        let Ok(mut stored) = self.stored.lock() else {
            return;
        };
        let now = Instant::now();
        while stored.order.front().is_some_and(|(_, e)| *e <= now) {
            stored.pop_oldest();
        }
        let key: Arc<str> = Arc::from(key);
        let expires = now + self.ttl;
        stored
            .entries
            .insert(key.clone(), (decision.clone(), expires));
        stored.order.push_back((key, expires));
        while !stored.order.is_empty()
            && (stored.entries.len() > self.capacity || stored.order.len() > 2 * self.capacity)
        {
            stored.pop_oldest();
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a real HTTP server on loopback speaking OPA's Data API, whose decisions come from
    //! a real Rego policy evaluated by [`RegoPolicies`].

    use super::*;
    use crate::rego::RegoPolicies;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use serde_json::json;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const POLICY: &str = r#"
package orders

default allow := false

allow if {
    "read:orders" in input.principal.scopes
    input.request.method == "GET"
}

decision := {"allow": count(deny) == 0, "reasons": deny}

deny contains "scope read:orders is missing" if not "read:orders" in input.principal.scopes

deny contains "only GET is allowed" if input.request.method != "GET"

admins_only if input.principal.admin == true
"#;

    const TOKEN: &str = "Bearer opa-token";

    /// An OPA stand-in. Paths under `/v1/data/` evaluate the rule they name; a first segment
    /// `slow` waits 30 s, `delay` waits 300 ms, `fail` answers 500, `garbage` answers non-JSON.
    struct Opa {
        addr: SocketAddr,
        calls: Arc<AtomicUsize>,
        _dir: tempfile::TempDir,
    }

    impl Opa {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn url(&self) -> String {
            format!("http://{}/", self.addr)
        }
    }

    async fn start_opa() -> Opa {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("orders.rego");
        std::fs::write(&file, POLICY).unwrap();
        let policies =
            RegoPolicies::load(&[("opa".to_owned(), file)], None, Duration::from_secs(1)).unwrap();
        let policies = Arc::new(policies);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let policies = policies.clone();
                let calls = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        answer(req, policies.clone(), calls.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Opa {
            addr,
            calls,
            _dir: dir,
        }
    }

    fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.into()))
            .unwrap()
    }

    fn opa_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
        let body = json!({"code": "internal_error", "message": message}).to_string();
        reply(status, body)
    }

    async fn answer(
        req: Request<Incoming>,
        policies: Arc<RegoPolicies>,
        calls: Arc<AtomicUsize>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        calls.fetch_add(1, Ordering::SeqCst);
        let authorized = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| v == TOKEN);
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        if !authorized {
            return Ok(opa_error(StatusCode::UNAUTHORIZED, "missing token"));
        }
        if method != http::Method::POST {
            return Ok(opa_error(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
        }
        let Some(rule) = path.strip_prefix("/v1/data/") else {
            return Ok(opa_error(StatusCode::NOT_FOUND, "not the Data API"));
        };
        let mut segments: Vec<&str> = rule.split('/').collect();
        match segments.first().copied() {
            Some("slow") => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                segments.remove(0);
            }
            Some("delay") => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                segments.remove(0);
            }
            Some("fail") => {
                return Ok(opa_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "policy engine broke",
                ));
            }
            Some("garbage") => return Ok(reply(StatusCode::OK, "{\"result\": tru")),
            _ => {}
        }
        let document: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let input = document.get("input").cloned().unwrap_or(json!({}));
        let query = format!("data.{}", segments.join("."));
        Ok(match policies.evaluate_raw(&query, &input) {
            Ok(Some(result)) => reply(StatusCode::OK, json!({ "result": result }).to_string()),
            Ok(None) => reply(StatusCode::OK, "{}"),
            Err(e) => opa_error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        })
    }

    fn settings(url: String, cache_ttl: Duration, cache_entries: usize) -> OpaSettings {
        OpaSettings {
            url,
            timeout: Duration::from_secs(2),
            cache_ttl,
            cache_entries,
            ca_pem: None,
            headers: vec![(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_static(TOKEN),
            )],
        }
    }

    fn uncached(opa: &Opa) -> OpaClient {
        OpaClient::new(settings(opa.url(), Duration::ZERO, 0)).unwrap()
    }

    fn input(scopes: &[&str], method: &str) -> serde_json::Value {
        json!({
            "principal": {"sub": "alice", "scopes": scopes},
            "request": {"method": method, "path": "/orders/42", "params": {"id": "42"}},
            "time": 1_767_225_600_000_000_000u64,
            "request_id": "req-1",
        })
    }

    #[tokio::test]
    async fn allows_and_denies_with_reasons() {
        let opa = start_opa().await;
        let client = uncached(&opa);
        let d = client
            .evaluate("orders/allow", &input(&["read:orders"], "GET"))
            .await
            .unwrap();
        assert!(d.allow);
        let d = client
            .evaluate("orders.allow", &input(&["read:orders"], "POST"))
            .await
            .unwrap();
        assert!(!d.allow);
        let d = client
            .evaluate("/orders/decision/", &input(&[], "DELETE"))
            .await
            .unwrap();
        assert_eq!(
            d,
            PolicyDecision {
                allow: false,
                reasons: vec![
                    "only GET is allowed".to_owned(),
                    "scope read:orders is missing".to_owned()
                ],
                headers: vec![],
            }
        );
        assert_eq!(opa.calls(), 3);
    }

    #[tokio::test]
    async fn an_undefined_result_is_a_deny() {
        let opa = start_opa().await;
        let d = uncached(&opa)
            .evaluate("orders/admins_only", &input(&["read:orders"], "GET"))
            .await
            .unwrap();
        assert!(!d.allow);
        assert_eq!(d.reasons, vec![crate::rego::UNDEFINED_REASON.to_owned()]);
    }

    /// A caller dropped while the server is asked (a client that resets its stream) leaves no
    /// flight in the map; inputs unique per request would otherwise grow it without bound.
    #[tokio::test]
    async fn an_abandoned_call_leaves_no_flight_behind() {
        let opa = start_opa().await;
        let client =
            Arc::new(OpaClient::new(settings(opa.url(), Duration::from_secs(60), 100)).unwrap());
        let in_flight = |c: &OpaClient| c.cache.as_ref().unwrap().in_flight.lock().unwrap().len();
        for i in 0..10 {
            let c = client.clone();
            let call = tokio::spawn(async move {
                let mut input = input(&["read:orders"], "GET");
                input["request"]["params"]["id"] = json!(i.to_string());
                c.evaluate("slow/orders/allow", &input).await
            });
            for _ in 0..200 {
                if in_flight(&client) == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(in_flight(&client), 1, "call {i} in flight");
            call.abort();
            let _ = call.await;
            assert_eq!(in_flight(&client), 0, "call {i} left behind");
        }
        // A call that lands: its decision stored, its flight gone.
        let d = client
            .evaluate("orders/allow", &input(&["read:orders"], "GET"))
            .await
            .unwrap();
        assert!(d.allow);
        assert_eq!(in_flight(&client), 0);
        assert!(
            client
                .evaluate("orders/allow", &input(&["read:orders"], "GET"))
                .await
                .unwrap()
                .allow
        );
        assert_eq!(opa.calls(), 11, "the landed decision was cached");
    }

    #[tokio::test]
    async fn decisions_are_cached_without_time_and_request_id() {
        let opa = start_opa().await;
        let client = OpaClient::new(settings(opa.url(), Duration::from_secs(60), 100)).unwrap();
        let first = input(&["read:orders"], "GET");
        assert!(client.evaluate("orders/allow", &first).await.unwrap().allow);
        assert_eq!(opa.calls(), 1);
        // The same input again: from the cache.
        assert!(client.evaluate("orders/allow", &first).await.unwrap().allow);
        assert_eq!(opa.calls(), 1);
        // Differing only in time and request id: still a hit.
        let mut later = first.clone();
        later["time"] = json!(1_767_225_999_000_000_000u64);
        later["request_id"] = json!("req-2");
        assert!(client.evaluate("orders/allow", &later).await.unwrap().allow);
        assert_eq!(opa.calls(), 1);
        // A different input, or another rule: misses.
        let other = input(&["read:profile"], "GET");
        assert!(!client.evaluate("orders/allow", &other).await.unwrap().allow);
        assert_eq!(opa.calls(), 2);
        assert!(
            client
                .evaluate("orders/decision", &first)
                .await
                .unwrap()
                .allow
        );
        assert_eq!(opa.calls(), 3);
        // Each keeps its own answer.
        assert!(!client.evaluate("orders/allow", &other).await.unwrap().allow);
        assert!(client.evaluate("orders/allow", &first).await.unwrap().allow);
        assert_eq!(opa.calls(), 3);
    }

    #[tokio::test]
    async fn cached_decisions_expire_after_the_ttl() {
        let opa = start_opa().await;
        // A second of TTL on the real clock: the second call must come within it, even from a
        // descheduled test thread.
        let client = OpaClient::new(settings(opa.url(), Duration::from_secs(1), 100)).unwrap();
        let i = input(&["read:orders"], "GET");
        client.evaluate("orders/allow", &i).await.unwrap();
        client.evaluate("orders/allow", &i).await.unwrap();
        assert_eq!(opa.calls(), 1);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        client.evaluate("orders/allow", &i).await.unwrap();
        assert_eq!(opa.calls(), 2);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let opa = start_opa().await;
        let client = OpaClient::new(settings(opa.url(), Duration::from_secs(60), 2)).unwrap();
        for scope in ["a", "b", "c"] {
            client
                .evaluate("orders/allow", &input(&[scope], "GET"))
                .await
                .unwrap();
        }
        assert_eq!(opa.calls(), 3);
        // "c" and "b" are kept; "a", the oldest, was dropped.
        client
            .evaluate("orders/allow", &input(&["c"], "GET"))
            .await
            .unwrap();
        assert_eq!(opa.calls(), 3);
        client
            .evaluate("orders/allow", &input(&["a"], "GET"))
            .await
            .unwrap();
        assert_eq!(opa.calls(), 4);
    }

    #[tokio::test]
    async fn concurrent_identical_misses_share_one_call() {
        let opa = start_opa().await;
        let client =
            Arc::new(OpaClient::new(settings(opa.url(), Duration::from_secs(60), 100)).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let client = client.clone();
            tasks.spawn(async move {
                client
                    .evaluate("delay/orders/allow", &input(&["read:orders"], "GET"))
                    .await
            });
        }
        while let Some(result) = tasks.join_next().await {
            assert!(result.unwrap().unwrap().allow);
        }
        assert_eq!(opa.calls(), 1);
    }

    #[tokio::test]
    async fn errors_fail_closed_and_are_not_cached() {
        let opa = start_opa().await;
        let client = OpaClient::new(settings(opa.url(), Duration::from_secs(60), 100)).unwrap();
        let i = input(&["read:orders"], "GET");
        let e = client.evaluate("fail/orders/allow", &i).await.unwrap_err();
        assert!(
            e.contains("500") && e.contains("policy engine broke"),
            "{e}"
        );
        client.evaluate("fail/orders/allow", &i).await.unwrap_err();
        assert_eq!(opa.calls(), 2);
        let e = client
            .evaluate("garbage/orders/allow", &i)
            .await
            .unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[tokio::test]
    async fn the_configured_headers_are_sent() {
        let opa = start_opa().await;
        let mut s = settings(opa.url(), Duration::ZERO, 0);
        s.headers.clear();
        let client = OpaClient::new(s).unwrap();
        let e = client
            .evaluate("orders/allow", &input(&["read:orders"], "GET"))
            .await
            .unwrap_err();
        assert!(e.contains("401") && e.contains("missing token"), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_is_down_is_an_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = OpaClient::new(settings(
            format!("http://127.0.0.1:{port}"),
            Duration::ZERO,
            0,
        ))
        .unwrap();
        let started = Instant::now();
        let e = client
            .evaluate("orders/allow", &input(&[], "GET"))
            .await
            .unwrap_err();
        assert!(e.contains("request failed"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_slow_server_is_an_error_after_the_timeout() {
        let opa = start_opa().await;
        let mut s = settings(opa.url(), Duration::from_secs(60), 100);
        s.timeout = Duration::from_millis(300);
        let client = OpaClient::new(s).unwrap();
        let started = Instant::now();
        let e = client
            .evaluate("slow/orders/allow", &input(&["read:orders"], "GET"))
            .await
            .unwrap_err();
        assert!(e.contains("no answer within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn settings_and_paths_are_checked() {
        let mk = |url: &str| OpaClient::new(settings(url.to_owned(), Duration::ZERO, 0));
        assert!(mk("ftp://127.0.0.1:8181").is_err());
        assert!(mk("127.0.0.1:8181").is_err());
        assert!(mk("http://user:pw@127.0.0.1:8181").is_err());
        assert!(mk("http://127.0.0.1:8181?x=1").is_err());
        assert!(mk("https://opa.internal:8181/").is_ok());
        assert_eq!(data_path("orders.allow").unwrap(), "orders/allow");
        assert!(data_path("/orders/v1.allow/").is_err());
        assert_eq!(data_path("a/b-c/d_e").unwrap(), "a/b-c/d_e");
        for bad in [
            "",
            "orders//allow",
            "orders/../admin",
            "orders/al low",
            "orders/%2e",
        ] {
            assert!(data_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cache_key_leaves_out_only_time_and_request_id() {
        let a = input(&["x"], "GET");
        let mut b = a.clone();
        b["time"] = json!(1);
        b["request_id"] = json!("other");
        assert_eq!(cache_key("p", &a).unwrap(), cache_key("p", &b).unwrap());
        b["request"]["time"] = json!(1);
        assert_ne!(cache_key("p", &a).unwrap(), cache_key("p", &b).unwrap());
        assert_ne!(cache_key("p", &a).unwrap(), cache_key("q", &a).unwrap());
    }
}
