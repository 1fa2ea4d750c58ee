//! The WAF step (pipeline step 5): after the pre-authentication rate limits, before
//! authentication.

use std::sync::Arc;

use portcullis_core::{
    BodyError, GatewayRequest, Prefix, RejectReason, Rejection, RequestBody, RequestCtx, Stage,
    StageId, Step, Verdict,
};

use crate::config::{Mode, RouteWaf, WafSettings};
use crate::engine::{self, BodyState, Inspection, Outcome};
use crate::extract::{BodyKind, body_kind};
use crate::hits::HitTracker;
use crate::sniff;

/// The WAF of one configuration snapshot.
pub struct Waf {
    pub settings: WafSettings,
    /// Indexed by route id.
    pub routes: Vec<RouteWaf>,
    hits: Arc<HitTracker>,
}

impl Waf {
    pub fn new(settings: WafSettings, routes: Vec<RouteWaf>, hits: Arc<HitTracker>) -> Waf {
        Waf {
            settings,
            routes,
            hits,
        }
    }
}

pub struct WafStage {
    waf: Arc<Waf>,
}

impl WafStage {
    pub const ID: StageId = StageId("waf");

    pub fn new(waf: Arc<Waf>) -> Self {
        WafStage { waf }
    }
}

/// The 403 a blocked request gets: the request id (added by the engine) and nothing that
/// would help an attacker tune a payload.
fn blocked_rejection() -> Rejection {
    Rejection::new(
        RejectReason::WafBlocked,
        "The request was blocked by the gateway's security policy. Quote the request id if you believe this is a mistake.",
    )
}

fn body_error(e: BodyError) -> Rejection {
    e.into_rejection()
}

impl Waf {
    /// Inspects the head alone (no body, or one that streams on uninspected).
    fn head_only(&self, route: &RouteWaf, req: &GatewayRequest, ctx: &mut RequestCtx) -> Verdict {
        let outcome = engine::inspect(
            route,
            &Inspection {
                head: &req.head,
                path: req.head.uri.path(),
                client_ip: ctx.client_ip,
                body: BodyState::None,
            },
        );
        self.conclude(route, outcome, ctx)
    }

    /// Records the outcome and turns it into a verdict.
    fn conclude(&self, route: &RouteWaf, outcome: Outcome, ctx: &mut RequestCtx) -> Verdict {
        if outcome.findings.is_empty() {
            return Verdict::Continue;
        }
        if outcome.score > 0 {
            self.hits.record(ctx.client_ip);
        }
        let blocked = outcome.blocked;
        ctx.waf = Some(Box::new(outcome.report(route)));
        if blocked && engine::enforces(route) {
            Verdict::Reject(blocked_rejection())
        } else {
            Verdict::Continue
        }
    }
}

impl Stage for WafStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        let Some(route) = ctx.route_id().and_then(|id| self.waf.routes.get(id.0)) else {
            return Step::CONTINUE;
        };
        if route.mode == Mode::Off {
            return Step::CONTINUE;
        }
        let has_body = match &req.body {
            RequestBody::Streaming(b) => !http_body::Body::is_end_stream(b),
            RequestBody::Buffered(b) => !b.is_empty(),
        };
        let mut cts = req.head.headers.get_all(http::header::CONTENT_TYPE).iter();
        let ct = cts.next().and_then(|v| v.to_str().ok());
        // Two `Content-Type` fields are rule 1005 (upstreams read the first or the last), found
        // by the engine on a buffered body: a binary first one must not skip it.
        let one_type = cts.next().is_none();
        if !has_body {
            return Step::Done(self.waf.head_only(route, req, ctx));
        }
        // Labelled binary: streamed on uninspected, unless its first bytes are text (backends
        // that ignore the label would parse it).
        let labelled_binary = one_type && body_kind(ct) == BodyKind::Binary;
        let route_limit = ctx.body_limit.unwrap_or(u64::MAX);
        let limit = route.inspect_body_bytes.min(route_limit);
        Step::from_future(async move {
            if labelled_binary {
                match sniff::declared_binary_is_text(req, route.grpc_streams).await {
                    Ok(true) => {}
                    Ok(false) => return self.waf.head_only(route, req, ctx),
                    Err(e) => return Verdict::Reject(body_error(e)),
                }
            }
            let whole = match req.buffer_prefix(limit).await {
                Ok(Prefix::Whole(_)) => true,
                Ok(Prefix::Longer) => false,
                Err(e) => return Verdict::Reject(body_error(e)),
            };
            if !whole {
                if route_limit <= route.inspect_body_bytes {
                    return Verdict::Reject(body_error(BodyError::TooLarge { limit: route_limit }));
                }
                // Past the inspection limit, within the route's: refused, or (`pass`, and
                // `detect` mode, which refuses nothing) forwarded uninspected, rule 1004
                // recorded.
                if !route.passes_over_limit() {
                    return Verdict::Reject(Rejection::new(
                        RejectReason::BodyTooLarge,
                        format!(
                            "the request body exceeds {} bytes, the most this route inspects",
                            route.inspect_body_bytes
                        ),
                    ));
                }
            }
            let body = match (&req.body, whole) {
                (RequestBody::Buffered(b), true) if labelled_binary => BodyState::Sniffed(b),
                (RequestBody::Buffered(b), true) => BodyState::Buffered(b),
                _ => BodyState::Skipped {
                    limit: route.inspect_body_bytes,
                },
            };
            let mut outcome = engine::inspect(
                route,
                &Inspection {
                    head: &req.head,
                    path: req.head.uri.path(),
                    client_ip: ctx.client_ip,
                    body,
                },
            );
            // What was inspected is what goes upstream — within the route's body limit, which
            // holds for the body it receives (the inspection limit may be the larger).
            let mut too_large = outcome
                .inflated_over_limit
                .then_some(route.inspect_body_bytes);
            if let Some(inflated) = outcome.inflated.take() {
                if inflated.len() as u64 > route_limit {
                    too_large = Some(route_limit);
                } else {
                    req.replace_body(bytes::Bytes::from(inflated));
                }
            }
            let verdict = self.waf.conclude(route, outcome, ctx);
            if let Some(limit) = too_large {
                // Past the route's body limit whatever the mode, as a body sent that long is;
                // past the inspection limit where the route refuses such bodies (recorded all
                // the same).
                return Verdict::Reject(Rejection::new(
                    RejectReason::BodyTooLarge,
                    format!("the request body inflates past {limit} bytes"),
                ));
            }
            verdict
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use portcullis_core::{RouteId, RouteMatch, Scheme};

    use super::*;
    use crate::config::OverLimit;

    /// Runs the step on a POST of `body` to a route with these settings (route limit: none):
    /// the verdict, the WAF report's rules, and the body as it goes on.
    async fn post(
        route: RouteWaf,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (Verdict, Vec<u32>, Vec<u8>) {
        let waf = Arc::new(Waf::new(
            RouteWaf::default(),
            vec![route],
            Arc::new(HitTracker::default()),
        ));
        let stage = WafStage::new(waf);
        let mut b = http::Request::builder().method("POST").uri("/orders");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (head, ()) = b.body(()).unwrap().into_parts();
        let body = Full::new(Bytes::from(body))
            .map_err(|e| -> portcullis_core::BoxError { match e {} })
            .boxed_unsync();
        let mut req = GatewayRequest::new(head, body);
        let mut ctx = RequestCtx::new(
            "192.0.2.1:5000".parse().unwrap(),
            Scheme::Http,
            Arc::from("l"),
        );
        ctx.route = Some(RouteMatch {
            id: RouteId(0),
            name: Arc::from("orders"),
            params: Vec::new(),
        });
        let verdict = match stage.on_request(&mut req, &mut ctx) {
            Step::Done(v) => v,
            Step::Async(f) => f.await,
        };
        let rules = ctx
            .waf
            .map(|w| w.matches.iter().map(|m| m.rule).collect())
            .unwrap_or_default();
        let rest = match req.take_body() {
            RequestBody::Buffered(b) => b.to_vec(),
            RequestBody::Streaming(b) => b.collect().await.unwrap().to_bytes().to_vec(),
        };
        (verdict, rules, rest)
    }

    fn refused_413(v: &Verdict) -> bool {
        matches!(v, Verdict::Reject(r) if r.reason == RejectReason::BodyTooLarge)
    }

    /// A body past the inspection limit: 413 in `block` mode; in `detect` mode, which refuses
    /// nothing, forwarded whole and uninspected with rule 1004 recorded, as
    /// `on_body_over_limit: pass` does — sent that long or inflating past it.
    #[tokio::test]
    async fn detect_mode_passes_a_body_over_the_inspection_limit() {
        let small = RouteWaf {
            inspect_body_bytes: 64,
            ..RouteWaf::default()
        };
        let detect = RouteWaf {
            mode: Mode::Detect,
            ..small.clone()
        };
        let pass = RouteWaf {
            on_body_over_limit: OverLimit::Pass,
            ..small.clone()
        };
        let json = [("content-type", "application/json")];
        let big = format!(
            r#"{{"q":"1' UNION SELECT password FROM users--{}"}}"#,
            "a".repeat(200)
        );
        let (v, rules, _) = post(small.clone(), &json, big.clone().into_bytes()).await;
        assert!(refused_413(&v), "{v:?}");
        assert!(rules.is_empty(), "{rules:?}");
        for route in [detect.clone(), pass] {
            let (v, rules, rest) = post(route, &json, big.clone().into_bytes()).await;
            assert!(matches!(v, Verdict::Continue), "{v:?}");
            assert_eq!(rules, [1004]);
            assert_eq!(rest, big.as_bytes(), "the whole body goes on");
        }
        // Sent within the limit, inflating past it: the same.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(
            &mut e,
            format!(r#"{{"q":"{}"}}"#, "a".repeat(2000)).as_bytes(),
        )
        .unwrap();
        let gz = e.finish().unwrap();
        assert!(gz.len() <= 64);
        let coded = [
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ];
        let (v, rules, _) = post(small, &coded, gz.clone()).await;
        assert!(refused_413(&v), "{v:?}");
        assert_eq!(rules, [1006]);
        let (v, rules, rest) = post(detect.clone(), &coded, gz.clone()).await;
        assert!(matches!(v, Verdict::Continue), "{v:?}");
        assert_eq!(rules, [1004]);
        assert_eq!(rest, gz);
        // Within the limit, detect mode inspects and records as ever.
        let (v, rules, _) = post(
            detect,
            &json,
            br#"{"q":"1' UNION SELECT password FROM users--"}"#.to_vec(),
        )
        .await;
        assert!(matches!(v, Verdict::Continue), "{v:?}");
        assert!(rules.iter().any(|r| (1100..1200).contains(r)), "{rules:?}");
    }
}
