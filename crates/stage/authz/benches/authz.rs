//! What authorization adds to a typical request: the step as the pipeline runs it, with a
//! route that checks scopes (through the hierarchy) and one Rego rule, against a principal as
//! authentication leaves it. Compared with scopes alone and with a route that only needs an
//! authenticated caller.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use portcullis_authz::config::{RawAuthz, RawRouteAuthz, RouteFacts, compile, compile_route};
use portcullis_authz::{AuthzStage, AuthzState};
use portcullis_core::{
    AuthMethod, BoxError, ConfigErrors, GatewayRequest, Principal, RequestCtx, RouteId, RouteMatch,
    Scheme, Stage, Step, Verdict,
};

const POLICY: &str = r#"
package orders
import rego.v1
default allow := false
allow if {
	"read:orders" in input.principal.scopes
	input.request.method == "GET"
	input.request.params.id != "0"
}
"#;

fn stage(routes_yaml: &[&str]) -> (AuthzStage, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.rego"), POLICY).unwrap();
    let raw: RawAuthz = serde_yaml_ng::from_str(
        "scope_hierarchy: { admin:orders: [write:orders], write:orders: [read:orders] }\n\
         rego: { files: [p.rego] }\n",
    )
    .unwrap();
    let mut e = ConfigErrors::new();
    let settings = compile(&raw, dir.path(), &mut e);
    let params: Vec<Arc<str>> = vec![Arc::from("id")];
    let routes = routes_yaml
        .iter()
        .map(|y| {
            let r: RawRouteAuthz = serde_yaml_ng::from_str(y).unwrap();
            compile_route(
                Some(&r),
                &RouteFacts {
                    anonymous: false,
                    params: &params,
                },
                &settings,
                "routes[0]",
                &mut e,
            )
        })
        .collect();
    assert!(e.is_empty(), "{e:?}");
    let authz = AuthzState::new().build(&settings, routes, Arc::new(|_| 0), Arc::new(|_| 0));
    (AuthzStage::new(authz), dir)
}

fn principal() -> Arc<Principal> {
    let mut p = Principal::new(AuthMethod::Jwt, Arc::from("main"));
    p.subject = Some("alice".into());
    p.client_id = Some("web".into());
    p.scopes = vec!["admin:orders".into(), "profile".into()];
    p.claims = Arc::new(
        serde_json::json!({"sub": "alice", "scope": "admin:orders profile", "iss": "https://idp", "exp": 2_000_000_000u64})
            .as_object()
            .cloned()
            .unwrap(),
    );
    Arc::new(p)
}

fn run(stage: &AuthzStage, route: usize, p: &Arc<Principal>) {
    let (head, _) = http::Request::builder()
        .method("GET")
        .uri("/orders/42")
        .header("host", "api.example")
        .header("accept", "application/json")
        .header("user-agent", "bench/1")
        .body(())
        .unwrap()
        .into_parts();
    let body = Full::new(Bytes::new())
        .map_err(|e| -> BoxError { match e {} })
        .boxed_unsync();
    let mut req = GatewayRequest::new(head, body);
    let mut ctx = RequestCtx::new(
        "203.0.113.9:4000".parse().unwrap(),
        Scheme::Https,
        Arc::from("public"),
    );
    ctx.route = Some(RouteMatch {
        id: RouteId(route),
        name: Arc::from("orders"),
        params: vec![(Arc::from("id"), "42".into())],
    });
    ctx.principal = Some(p.clone());
    match stage.on_request(&mut req, &mut ctx) {
        Step::Done(Verdict::Continue) => {}
        _ => panic!("not allowed synchronously"),
    }
}

fn bench(c: &mut Criterion) {
    let (stage, _dir) = stage(&[
        "allow: any-authenticated",
        "scopes: { any_of: [read:orders] }",
        "scopes: { any_of: [read:orders] }\nrego: { query: data.orders.allow }",
    ]);
    let p = principal();
    let mut g = c.benchmark_group("authorize");
    g.bench_function("any_authenticated", |b| b.iter(|| run(&stage, 0, &p)));
    g.bench_function("scopes", |b| b.iter(|| run(&stage, 1, &p)));
    g.bench_function("scopes_and_one_rego_rule", |b| {
        b.iter(|| run(&stage, 2, &p))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
