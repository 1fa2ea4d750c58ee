//! RFC 8693 token exchange end to end: the real gateway serving its token endpoint, subject
//! tokens from a real OpenID provider (`oidc-provider`: JWTs by discovery, opaque tokens by
//! introspection), actor and hostile tokens from local issuers, client authentication by
//! secret (Basic, post) and by client certificate over real TLS, and the issued token checked
//! against the gateway's own `/jwks`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use common::*;
use portcullis_jose::{Alg, Signer};
use portcullis_test_support::idp::{JWT_AUDIENCE, OPAQUE_AUDIENCE};
use serde_json::{Map, Value, json};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const AGENTS: &str = "https://agents.test";
const UNTRUSTED: &str = "https://untrusted.test";
const BFF_SECRET: &str = "bff-secret: with spaces+and:colons";
const REPORTING_SECRET: &str = "reporting-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hash(secret: &str) -> String {
    format!("sha256:{}", sha256_hex(secret))
}

/// Form encoding of one component: unreserved characters kept, everything else escaped.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

fn jwks_of(s: &Signer) -> String {
    json!({ "keys": [s.public_jwk()] }).to_string()
}

/// The audience the local issuers' tokens name the gateway's token endpoint by.
const EXCHANGE_AUD: &str = "https://gateway.test/token";

/// A token of a local issuer (`AGENTS` or `UNTRUSTED`) for [`EXCHANGE_AUD`], valid ten minutes
/// unless `extra` says otherwise (a `null` removes a claim).
fn local_token(signer: &Signer, iss: &str, sub: &str, extra: Value) -> String {
    let mut c: Map<String, Value> = json!({
        "iss": iss, "aud": EXCHANGE_AUD, "sub": sub, "scope": "read:orders write:orders",
        "iat": now(), "exp": now() + 600, "jti": format!("{sub}-{}", fastrand_id()),
    })
    .as_object()
    .unwrap()
    .clone();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.remove(k);
        } else {
            c.insert(k.clone(), v.clone());
        }
    }
    signer.sign("JWT", &c).unwrap()
}

fn fastrand_id() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{t:x}")
}

struct Setup {
    _dir: tempfile::TempDir,
    gw: Gateway,
    idp: OidcProvider,
    agents: Signer,
    untrusted: Signer,
}

/// A gateway trusting the provider (JWT by discovery, opaque by introspection) and the local
/// `agents` issuer for exchange; `untrusted` is a configured issuer not trusted for exchange.
async fn setup() -> Setup {
    let idp = OidcProvider::start("RS256");
    let dir = tempfile::tempdir().unwrap();
    let agents = Signer::generate(Alg::EdDSA, "agents-1".into()).unwrap();
    let untrusted = Signer::generate(Alg::EdDSA, "untrusted-1".into()).unwrap();
    std::fs::write(dir.path().join("agents.jwks.json"), jwks_of(&agents)).unwrap();
    std::fs::write(dir.path().join("untrusted.jwks.json"), jwks_of(&untrusted)).unwrap();
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ tx: {{ kind: token_exchange }}, app: {{ kind: echo }} }}
auth:
  jwt:
    idp: {{ issuer: "{iss}", discovery: true, algorithms: [RS256], audiences: ["{aud}"], typ: at+jwt }}
    agents: {{ issuer: "{AGENTS}", jwks_file: agents.jwks.json, algorithms: [EdDSA], audiences: ["{EXCHANGE_AUD}"] }}
    untrusted: {{ issuer: "{UNTRUSTED}", jwks_file: untrusted.jwks.json, algorithms: [EdDSA], audiences: ["{EXCHANGE_AUD}"] }}
  introspection:
    idp:
      endpoint: "{iss}/token/introspection"
      client_id: gateway
      client_secret: {{ value: gateway-secret }}
      issuer: "{iss}"
      audiences: ["{OPAQUE_AUDIENCE}"]
  internal_token: {{ issuer: gw.test }}
token_exchange:
  jwt_issuers: [idp, agents]
  introspection: [idp]
  ttl: 1h
  audiences:
    orders-api: {{ resources: ["https://orders.internal/"] }}
    billing-api: {{ ttl: 30s }}
  clients:
    bff:
      secret_hash: "{bff}"
      audiences: {{ orders-api: [read:orders, write:orders], billing-api: [read:orders] }}
    reporting:
      secret_hash: "{reporting}"
      audiences: {{ billing-api: [read:orders] }}
routes:
  # The endpoint's own RFC 6749 errors are under test: the WAF records but does not refuse
  # (repeated parameters and non-form bodies would get its 403 first).
  - {{ name: token, match: {{ path: /token }}, upstream: tx, auth: {{ anonymous: true }}, max_body_bytes: 8KiB, waf: {{ mode: detect }} }}
  - {{ name: orders, match: {{ prefix: /orders }}, upstream: app, auth: {{ methods: [jwt:idp] }} }}
"#,
        iss = idp.issuer(),
        aud = JWT_AUDIENCE,
        bff = hash(BFF_SECRET),
        reporting = hash(REPORTING_SECRET),
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    Setup {
        _dir: dir,
        gw,
        idp,
        agents,
        untrusted,
    }
}

impl Setup {
    async fn post(&self, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        h.extend_from_slice(headers);
        send(req(
            "POST",
            &format!("{}/token", self.gw.url("public")),
            &h,
            body,
        ))
        .await
    }

    /// A token request from `bff` (Basic) with these parameters after the grant type.
    async fn exchange(&self, params: &[(&str, &str)]) -> Resp {
        let mut p = vec![("grant_type", GRANT)];
        p.extend_from_slice(params);
        self.post(&[("authorization", &basic("bff", BFF_SECRET))], &form(&p))
            .await
    }

    fn audit_reason(&self, r: &Resp) -> Value {
        audit_of(&self.gw, r.header("x-request-id").unwrap())["auth_failure"].clone()
    }

    async fn admin_jwks(&self) -> portcullis_jose::JwkSet {
        let r = get(&format!("{}/jwks", self.gw.admin_url())).await;
        assert_eq!(r.status, 200);
        portcullis_jose::JwkSet::from_json(r.text().as_bytes())
            .unwrap()
            .0
    }
}

/// A 200 token response: its JSON, with the no-store headers checked.
fn issued(r: &Resp) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer", "{v}");
    v
}

/// An RFC 6749 §5.2 error: status, code, JSON body, not cacheable.
fn oauth_error(r: &Resp, status: u16, error: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"], error, "{v}");
    assert!(
        v["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
    if status == 401 {
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"portcullis\"")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_token_is_exchanged_for_a_gateway_signed_token() {
    let s = setup().await;
    let subject = s
        .idp
        .jwt_token("read:orders write:orders admin:orders")
        .await;
    let subject_claims = claims_of(&subject);
    let r = s
        .exchange(&[
            ("subject_token", &subject),
            ("subject_token_type", ACCESS),
            ("audience", "orders-api"),
        ])
        .await;
    let v = issued(&r);
    assert_eq!(v["issued_token_type"], ACCESS);
    assert_eq!(v["scope"], "read:orders write:orders", "held ∩ allowed");
    let token = v["access_token"].as_str().unwrap();

    // It verifies with the gateway's published key, and says what it should.
    let set = s.admin_jwks().await;
    let tok = portcullis_jose::decode(token, 8192).unwrap();
    let key = set
        .candidates(tok.header.kid.as_deref(), tok.header.alg)
        .next()
        .expect("the signing key is at /jwks");
    tok.verify(&key.key).unwrap();
    assert_eq!(tok.header.typ.as_deref(), Some("at+jwt"));
    let c = &tok.claims;
    assert_eq!(c["iss"], "gw.test");
    assert_eq!(c["aud"], "orders-api");
    assert_eq!(c["sub"], subject_claims["sub"]);
    assert_eq!(c["sub"], "gw-client");
    assert_eq!(c["client_id"], "bff");
    assert_eq!(c["scope"], "read:orders write:orders");
    assert_eq!(c["orig_iss"], s.idp.issuer());
    assert!(c.get("act").is_none());
    let exp = c["exp"].as_u64().unwrap();
    let iat = c["iat"].as_u64().unwrap();
    // ttl is 1h, the provider's token lives 5 minutes: never past the subject token.
    assert_eq!(exp, subject_claims["exp"].as_u64().unwrap());
    assert_eq!(v["expires_in"].as_u64().unwrap(), exp - iat);
    assert_eq!(c["jti"].as_str().unwrap().len(), 32);
    let again = issued(
        &s.exchange(&[
            ("subject_token", &subject),
            ("subject_token_type", ACCESS),
            ("audience", "orders-api"),
        ])
        .await,
    );
    assert_ne!(
        claims_of(again["access_token"].as_str().unwrap())["jti"],
        c["jti"]
    );

    // By resource indicator; a shorter audience ttl; a jwt requested type.
    let v = issued(
        &s.exchange(&[
            ("subject_token", &subject),
            ("subject_token_type", JWT),
            ("resource", "https://orders.internal/"),
            ("scope", "read:orders"),
        ])
        .await,
    );
    assert_eq!(
        claims_of(v["access_token"].as_str().unwrap())["aud"],
        "orders-api"
    );
    let v = issued(
        &s.exchange(&[
            ("subject_token", &subject),
            ("subject_token_type", ACCESS),
            ("audience", "billing-api"),
            ("requested_token_type", JWT),
        ])
        .await,
    );
    assert_eq!(v["issued_token_type"], JWT);
    assert!(v["expires_in"].as_u64().unwrap() <= 30, "{v}");
    assert_eq!(v["scope"], "read:orders");

    // An opaque token from the same provider, verified by introspection.
    let opaque = s.idp.opaque_token("read:orders").await;
    let v = issued(
        &s.exchange(&[
            ("subject_token", &opaque),
            ("subject_token_type", ACCESS),
            ("audience", "orders-api"),
        ])
        .await,
    );
    let c = claims_of(v["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "gw-client");
    assert_eq!(c["scope"], "read:orders");
    // … but never as the `jwt` token type.
    let r = s
        .exchange(&[
            ("subject_token", &opaque),
            ("subject_token_type", JWT),
            ("audience", "orders-api"),
        ])
        .await;
    oauth_error(&r, 400, "invalid_request");

    // The exchange is a normal request: audited, with no token in the event.
    let audit = audit_of(&s.gw, r.header("x-request-id").unwrap());
    assert_eq!(audit["route"], "token");
    assert_eq!(audit["status"], 400);
    assert!(!audit.to_string().contains(&opaque));
    let all = s.gw.stdout_lines().join("\n") + &s.gw.stderr_text();
    assert!(!all.contains(&subject), "a token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_with_an_actor_token_nests_prior_actors_and_honours_may_act() {
    let s = setup().await;
    let subject = s.idp.jwt_token("read:orders").await;
    let actor = local_token(&s.agents, AGENTS, "agent-7", json!({}));
    let v = issued(
        &s.exchange(&[
            ("subject_token", &subject),
            ("subject_token_type", ACCESS),
            ("actor_token", &actor),
            ("actor_token_type", JWT),
            ("audience", "orders-api"),
        ])
        .await,
    );
    let c = claims_of(v["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "gw-client");
    assert_eq!(c["act"], json!({"sub": "agent-7", "iss": AGENTS}));

    // A subject that is already delegated: the new actor wraps the prior one.
    let delegated = local_token(&s.agents, AGENTS, "alice", json!({"act": {"sub": "svc-a"}}));
    let v = issued(
        &s.exchange(&[
            ("subject_token", &delegated),
            ("subject_token_type", JWT),
            ("actor_token", &actor),
            ("actor_token_type", JWT),
            ("audience", "orders-api"),
        ])
        .await,
    );
    let c = claims_of(v["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "alice");
    assert_eq!(
        c["act"],
        json!({"sub": "agent-7", "iss": AGENTS, "act": {"sub": "svc-a"}})
    );

    // may_act names who may act for the subject.
    let only_7 = local_token(
        &s.agents,
        AGENTS,
        "bob",
        json!({"may_act": {"sub": "agent-7"}}),
    );
    let other = local_token(&s.agents, AGENTS, "agent-8", json!({}));
    let ok = s
        .exchange(&[
            ("subject_token", &only_7),
            ("subject_token_type", JWT),
            ("actor_token", &actor),
            ("actor_token_type", JWT),
            ("audience", "orders-api"),
        ])
        .await;
    issued(&ok);
    let r = s
        .exchange(&[
            ("subject_token", &only_7),
            ("subject_token_type", JWT),
            ("actor_token", &other),
            ("actor_token_type", JWT),
            ("audience", "orders-api"),
        ])
        .await;
    oauth_error(&r, 400, "invalid_request");
    assert_eq!(s.audit_reason(&r), "may_act");

    // The actor token is verified like the subject token.
    let forged_actor = local_token(&s.untrusted, AGENTS, "agent-7", json!({}));
    let r = s
        .exchange(&[
            ("subject_token", &subject),
            ("subject_token_type", ACCESS),
            ("actor_token", &forged_actor),
            ("actor_token_type", JWT),
            ("audience", "orders-api"),
        ])
        .await;
    oauth_error(&r, 400, "invalid_request");
    assert_eq!(s.audit_reason(&r), "unknown_kid");
    // actor_token without its type, and the reverse.
    for p in [("actor_token", actor.as_str()), ("actor_token_type", JWT)] {
        let r = s
            .exchange(&[
                ("subject_token", &subject),
                ("subject_token_type", ACCESS),
                p,
                ("audience", "orders-api"),
            ])
            .await;
        oauth_error(&r, 400, "invalid_request");
    }
}

/// A subject token whose `may_act` names its actors is never exchanged without one of them:
/// leaving `actor_token` out would get a token for the subject alone, an impersonation token
/// the subject never allowed. An empty `may_act` names nobody and admits nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_naming_its_actors_is_not_exchanged_without_one() {
    let s = setup().await;
    let agent_7 = local_token(&s.agents, AGENTS, "agent-7", json!({}));
    let only_7 = local_token(
        &s.agents,
        AGENTS,
        "bob",
        json!({"may_act": {"sub": "agent-7"}}),
    );
    let nobody = local_token(&s.agents, AGENTS, "carol", json!({"may_act": {}}));
    let refused = |r: &Resp| {
        oauth_error(r, 400, "invalid_request");
        assert!(r.json().get("access_token").is_none(), "{}", r.text());
        assert_eq!(s.audit_reason(r), "may_act");
    };

    for subject in [&only_7, &nobody] {
        let r = s
            .exchange(&[
                ("subject_token", subject),
                ("subject_token_type", JWT),
                ("audience", "orders-api"),
            ])
            .await;
        refused(&r);
    }
    let r = s
        .exchange(&[
            ("subject_token", &nobody),
            ("subject_token_type", JWT),
            ("actor_token", &agent_7),
            ("actor_token_type", JWT),
            ("audience", "orders-api"),
        ])
        .await;
    refused(&r);

    // With the actor it names, the exchange goes through, and says who acts.
    let v = issued(
        &s.exchange(&[
            ("subject_token", &only_7),
            ("subject_token_type", JWT),
            ("actor_token", &agent_7),
            ("actor_token_type", JWT),
            ("audience", "orders-api"),
        ])
        .await,
    );
    let c = claims_of(v["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], "bob");
    assert_eq!(c["act"], json!({"sub": "agent-7", "iss": AGENTS}));
    // A subject without may_act still needs no actor.
    let plain = local_token(&s.agents, AGENTS, "dave", json!({}));
    issued(
        &s.exchange(&[
            ("subject_token", &plain),
            ("subject_token_type", JWT),
            ("audience", "orders-api"),
        ])
        .await,
    );
    // A `sub` is unique only within its issuer: without `iss`, `may_act` admits only an actor
    // of the subject token's own issuer, not the provider's client of the same name.
    let idp_actor = s.idp.jwt_token("read:orders").await;
    let idp_sub = claims_of(&idp_actor)["sub"].as_str().unwrap().to_string();
    async fn exchange_with_actor(s: &Setup, actor: &str, may: Value) -> Resp {
        let subject = local_token(&s.agents, AGENTS, "erin", json!({ "may_act": may }));
        s.exchange(&[
            ("subject_token", &subject),
            ("subject_token_type", JWT),
            ("actor_token", actor),
            ("actor_token_type", JWT),
            ("audience", "orders-api"),
        ])
        .await
    }
    refused(&exchange_with_actor(&s, &idp_actor, json!({ "sub": idp_sub })).await);
    let named = json!({ "sub": idp_sub, "iss": s.idp.issuer() });
    let v = issued(&exchange_with_actor(&s, &idp_actor, named).await);
    let c = claims_of(v["access_token"].as_str().unwrap());
    assert_eq!(c["act"], json!({ "sub": idp_sub, "iss": s.idp.issuer() }));

    // A sender-constrained token: exchanged, it would become a bearer token.
    let bound = local_token(
        &s.agents,
        AGENTS,
        "dave",
        json!({"cnf": {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}}),
    );
    let r = s
        .exchange(&[
            ("subject_token", &bound),
            ("subject_token_type", JWT),
            ("audience", "orders-api"),
        ])
        .await;
    oauth_error(&r, 400, "invalid_request");
    assert_eq!(s.audit_reason(&r), "sender_constrained");

    // A token its issuer minted for another party (the exchange requires the trusted issuers'
    // audiences) is neither a subject nor an actor here.
    let elsewhere = local_token(
        &s.agents,
        AGENTS,
        "dave",
        json!({"aud": "https://third-party.test"}),
    );
    for (token, ty) in [
        ("subject", "subject_token_type"),
        ("actor", "actor_token_type"),
    ] {
        let (subject, actor) = if token == "subject" {
            (elsewhere.as_str(), None)
        } else {
            (plain.as_str(), Some(elsewhere.as_str()))
        };
        let mut form = vec![
            ("subject_token", subject),
            ("subject_token_type", JWT),
            ("audience", "orders-api"),
        ];
        if let Some(a) = actor {
            form.extend([("actor_token", a), (ty, JWT)]);
        }
        let r = s.exchange(&form).await;
        oauth_error(&r, 400, "invalid_request");
        assert_eq!(s.audit_reason(&r), "wrong_audience", "{token}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_are_requested_and_held_and_allowed() {
    let s = setup().await;
    let subject = s
        .idp
        .jwt_token("read:orders write:orders admin:orders")
        .await;
    let ask = |scope: &'static str, aud: &'static str| {
        let subject = subject.clone();
        let s = &s;
        async move {
            s.exchange(&[
                ("subject_token", &subject),
                ("subject_token_type", ACCESS),
                ("audience", aud),
                ("scope", scope),
            ])
            .await
        }
    };
    // admin:orders is held but not allowed for bff: only the intersection is granted.
    let v = issued(&ask("write:orders admin:orders", "orders-api").await);
    assert_eq!(v["scope"], "write:orders");
    assert_eq!(
        claims_of(v["access_token"].as_str().unwrap())["scope"],
        "write:orders"
    );
    // write:orders is held but bff may only read on billing-api.
    let v = issued(&ask("read:orders write:orders", "billing-api").await);
    assert_eq!(v["scope"], "read:orders");
    // Nothing left: invalid_scope.
    oauth_error(
        &ask("admin:orders", "orders-api").await,
        400,
        "invalid_scope",
    );
    oauth_error(
        &ask("write:orders", "billing-api").await,
        400,
        "invalid_scope",
    );
    oauth_error(
        &ask("delete:orders", "orders-api").await,
        400,
        "invalid_scope",
    );
    // A subject holding none of the allowed scopes, without a scope parameter.
    let none = s.idp.jwt_token("admin:orders").await;
    let r = s
        .exchange(&[
            ("subject_token", &none),
            ("subject_token_type", ACCESS),
            ("audience", "orders-api"),
        ])
        .await;
    oauth_error(&r, 400, "invalid_scope");

    // Audiences: unknown, or not this client's.
    oauth_error(&ask("read:orders", "hr-api").await, 400, "invalid_target");
    let r = s
        .post(
            &[("authorization", &basic("reporting", REPORTING_SECRET))],
            &form(&[
                ("grant_type", GRANT),
                ("subject_token", &subject),
                ("subject_token_type", ACCESS),
                ("audience", "orders-api"),
            ]),
        )
        .await;
    oauth_error(&r, 400, "invalid_target");
    // audience and resource naming different audiences; a resource that is not a URI.
    let r = s
        .exchange(&[
            ("subject_token", &subject),
            ("subject_token_type", ACCESS),
            ("audience", "billing-api"),
            ("resource", "https://orders.internal/"),
        ])
        .await;
    oauth_error(&r, 400, "invalid_target");
    let r = s
        .exchange(&[
            ("subject_token", &subject),
            ("subject_token_type", ACCESS),
            ("resource", "orders-api"),
        ])
        .await;
    oauth_error(&r, 400, "invalid_target");
    let r = s
        .exchange(&[("subject_token", &subject), ("subject_token_type", ACCESS)])
        .await;
    oauth_error(&r, 400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_authenticate_with_their_secret() {
    let s = setup().await;
    let subject = s.idp.jwt_token("read:orders").await;
    let params = form(&[
        ("grant_type", GRANT),
        ("subject_token", &subject),
        ("subject_token_type", ACCESS),
        ("audience", "orders-api"),
    ]);
    // client_secret_post.
    let post = format!(
        "{params}&{}",
        form(&[("client_id", "bff"), ("client_secret", BFF_SECRET)])
    );
    let r = s.post(&[], &post).await;
    let v = issued(&r);
    let claims = claims_of(v["access_token"].as_str().unwrap());
    assert_eq!(claims["client_id"], "bff");
    // The audit event says who asked, for whom, and which token it got.
    let ev = audit_of(&s.gw, r.header("x-request-id").unwrap());
    assert_eq!(ev["auth"]["method"], "client_secret", "{ev}");
    assert_eq!(ev["auth"]["authority"], "token_exchange", "{ev}");
    assert_eq!(ev["auth"]["client_id"], "bff", "{ev}");
    assert_eq!(ev["auth"]["subject"], claims["sub"], "{ev}");
    assert_eq!(ev["auth"]["credential_id"], claims["jti"], "{ev}");
    let failures = || async {
        get(&format!("{}/auth", s.gw.admin_url())).await.json()["failures"]["by_client_ip"][0]
            ["failures"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(failures().await, 0);

    for (headers, body, reason) in [
        (
            vec![("authorization", basic("bff", "wrong"))],
            params.clone(),
            "client_secret_mismatch",
        ),
        (
            vec![("authorization", basic("nobody", BFF_SECRET))],
            params.clone(),
            "client_unknown",
        ),
        (vec![], params.clone(), "client_auth_missing"),
        (
            vec![("authorization", format!("Bearer {subject}"))],
            params.clone(),
            "client_auth_scheme",
        ),
        (
            vec![],
            format!(
                "{params}&{}",
                form(&[("client_id", "bff"), ("client_secret", "wrong")])
            ),
            "client_secret_mismatch",
        ),
        (
            vec![],
            format!(
                "{params}&{}",
                form(&[("client_id", "reporting"), ("client_secret", BFF_SECRET)])
            ),
            "client_secret_mismatch",
        ),
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = s.post(&h, &body).await;
        oauth_error(&r, 401, "invalid_client");
        assert_eq!(s.audit_reason(&r), reason);
        assert!(
            audit_of(&s.gw, r.header("x-request-id").unwrap())["auth"].is_null(),
            "{reason}"
        );
    }
    // Each failed client authentication counted against the address, as on routes.
    assert_eq!(failures().await, 6);
    // Two methods at once: malformed.
    let r = s
        .post(
            &[("authorization", &basic("bff", BFF_SECRET))],
            &format!(
                "{params}&{}",
                form(&[("client_id", "bff"), ("client_secret", BFF_SECRET)])
            ),
        )
        .await;
    oauth_error(&r, 400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_subject_tokens_are_refused_as_invalid_request() {
    let s = setup().await;
    let good = s.idp.jwt_token("read:orders").await;
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut sig = parts[2].clone().into_bytes();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    parts[2] = String::from_utf8(sig).unwrap();
    let forged = parts.join(".");
    let expired = local_token(
        &s.agents,
        AGENTS,
        "alice",
        json!({"iat": now() - 7200, "exp": now() - 3600}),
    );
    let untrusted = local_token(&s.untrusted, UNTRUSTED, "alice", json!({}));
    let unknown_issuer = local_token(&s.untrusted, "https://elsewhere.test", "alice", json!({}));
    for (token, reason) in [
        (forged.as_str(), "bad_signature"),
        (expired.as_str(), "expired"),
        (untrusted.as_str(), "untrusted_issuer"),
        (unknown_issuer.as_str(), "untrusted_issuer"),
        ("not-a-token-at-all", "token_inactive"),
    ] {
        let r = s
            .exchange(&[
                ("subject_token", token),
                ("subject_token_type", ACCESS),
                ("audience", "orders-api"),
            ])
            .await;
        oauth_error(&r, 400, "invalid_request");
        assert_eq!(
            r.json()["error_description"],
            "the subject token is not valid"
        );
        assert_eq!(s.audit_reason(&r), reason, "{token}");
    }
    // The untrusted issuer's token is good for authentication elsewhere in the gateway's
    // configuration, just not for exchange: the exchange's own issuer list decides.

    // Revoked: the same token works, then is refused once its jti is revoked.
    let r = s
        .exchange(&[
            ("subject_token", &good),
            ("subject_token_type", ACCESS),
            ("audience", "orders-api"),
        ])
        .await;
    issued(&r);
    let jti = claims_of(&good)["jti"].as_str().unwrap().to_string();
    let r = send(req(
        "POST",
        &format!("{}/auth/revocations", s.gw.admin_url()),
        &[],
        &json!({ "token_id": jti }).to_string(),
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = s
        .exchange(&[
            ("subject_token", &good),
            ("subject_token_type", ACCESS),
            ("audience", "orders-api"),
        ])
        .await;
    oauth_error(&r, 400, "invalid_request");
    assert_eq!(s.audit_reason(&r), "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused() {
    let s = setup().await;
    let subject = s.idp.jwt_token("read:orders").await;
    let base = [
        ("subject_token", subject.as_str()),
        ("subject_token_type", ACCESS),
        ("audience", "orders-api"),
    ];
    let auth = basic("bff", BFF_SECRET);

    // Token types: unknown ones are unsupported_token_type (RFC 8693 §2.2.2).
    for (k, v) in [
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:id_token",
        ),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:saml2",
        ),
    ] {
        let r = s
            .exchange(&[
                ("subject_token", &subject),
                (k, v),
                ("audience", "orders-api"),
            ])
            .await;
        oauth_error(&r, 400, "unsupported_token_type");
    }
    let actor = local_token(&s.agents, AGENTS, "agent-7", json!({}));
    let r = s
        .exchange(&[
            base[0],
            base[1],
            base[2],
            ("actor_token", &actor),
            ("actor_token_type", "urn:x:custom"),
        ])
        .await;
    oauth_error(&r, 400, "unsupported_token_type");
    // Only access tokens and JWTs are issued.
    let r = s
        .exchange(&[
            base[0],
            base[1],
            base[2],
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:refresh_token",
            ),
        ])
        .await;
    oauth_error(&r, 400, "invalid_request");
    // Missing subject token.
    let r = s.exchange(&[base[1], base[2]]).await;
    oauth_error(&r, 400, "invalid_request");

    // Grant type: another is unsupported; none is malformed.
    let mut p = vec![("grant_type", "client_credentials")];
    p.extend_from_slice(&base);
    let r = s.post(&[("authorization", &auth)], &form(&p)).await;
    oauth_error(&r, 400, "unsupported_grant_type");
    let r = s.post(&[("authorization", &auth)], &form(&base)).await;
    oauth_error(&r, 400, "invalid_request");

    // Repeated parameters are refused, even with equal values (RFC 6749 §3.2).
    let mut p = vec![("grant_type", GRANT)];
    p.extend_from_slice(&base);
    p.push(("audience", "orders-api"));
    let r = s.post(&[("authorization", &auth)], &form(&p)).await;
    oauth_error(&r, 400, "invalid_request");
    let mut p = vec![("grant_type", GRANT), ("grant_type", GRANT)];
    p.extend_from_slice(&base);
    let r = s.post(&[("authorization", &auth)], &form(&p)).await;
    oauth_error(&r, 400, "invalid_request");
    // A malformed escape.
    let mut p = vec![("grant_type", GRANT)];
    p.extend_from_slice(&base);
    let r = s
        .post(&[("authorization", &auth)], &(form(&p) + "&scope=%zz"))
        .await;
    oauth_error(&r, 400, "invalid_request");

    // Not a form: the same parameters as JSON, or without a content type.
    let mut p = vec![("grant_type", GRANT)];
    p.extend_from_slice(&base);
    let body = form(&p);
    for ct in [
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        let r = send(req(
            "POST",
            &format!("{}/token", s.gw.url("public")),
            &[("authorization", &auth), ("content-type", ct)],
            &body,
        ))
        .await;
        oauth_error(&r, 400, "invalid_request");
    }
    let r = send(req(
        "POST",
        &format!("{}/token", s.gw.url("public")),
        &[("authorization", &auth)],
        &body,
    ))
    .await;
    oauth_error(&r, 400, "invalid_request");
    // With a charset parameter it is a form.
    let r = send(req(
        "POST",
        &format!("{}/token", s.gw.url("public")),
        &[
            ("authorization", &auth),
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            ),
        ],
        &body,
    ))
    .await;
    issued(&r);

    // GET: 405 with Allow, as an OAuth error (the route admits any method; the endpoint
    // decides). Parameters in a query string are never read.
    let r = send(req(
        "GET",
        &format!("{}/token?{body}", s.gw.url("public")),
        &[("authorization", &auth)],
        "",
    ))
    .await;
    oauth_error(&r, 405, "invalid_request");
    assert_eq!(r.header("allow"), Some("POST"));

    // A body above the route's limit (8 KiB) is refused by the gateway before the endpoint.
    let big = format!("{body}&padding={}", "x".repeat(9000));
    let r = s.post(&[("authorization", &auth)], &big).await;
    assert_problem(&r, 413, "body_too_large");

    // The gateway is still serving.
    issued(&s.exchange(&base).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_authenticate_with_a_verified_certificate() {
    let pki = TestPki::new();
    let server = pki.issue_server(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let agents = Signer::generate(Alg::EdDSA, "agents-1".into()).unwrap();
    std::fs::write(dir.path().join("agents.jwks.json"), jwks_of(&agents)).unwrap();
    let yaml = format!(
        r#"listeners:
  - name: public
    address: "127.0.0.1:0"
    tls:
      certificates: [{{ cert_file: "{c}", key_file: "{k}" }}]
      client_auth: {{ mode: optional, ca_file: "{ca}" }}
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ tx: {{ kind: token_exchange }} }}
auth:
  jwt: {{ agents: {{ issuer: "{AGENTS}", jwks_file: agents.jwks.json, algorithms: [EdDSA], audiences: ["{EXCHANGE_AUD}"] }} }}
token_exchange:
  jwt_issuers: [agents]
  audiences: {{ orders-api: {{}} }}
  clients:
    svc:
      spiffe_id: "spiffe://prod.test/ns/shop/sa/bff"
      audiences: {{ orders-api: [read:orders] }}
    legacy:
      certificate_subject: "CN=legacy-batch"
      audiences: {{ orders-api: [read:orders, write:orders] }}
routes:
  # replace_4xx: the token endpoint's OAuth errors are protocol answers and stay as they are.
  - {{ name: token, match: {{ path: /token, methods: [POST] }}, upstream: tx, auth: {{ anonymous: true }}, errors: {{ replace_4xx: true }} }}
"#,
        c = server.cert_path.display(),
        k = server.key_path.display(),
        ca = pki.ca_path().display(),
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let addr = gw.listener("public");
    let subject = local_token(&agents, AGENTS, "alice", json!({}));
    let go = |cert: Option<CertFiles>, extra: &'static [(&'static str, &'static str)]| {
        let ca = pki.ca_pem();
        let mut p = vec![
            ("grant_type", GRANT),
            ("subject_token", subject.as_str()),
            ("subject_token_type", JWT),
            ("audience", "orders-api"),
        ];
        p.extend_from_slice(extra);
        let body = form(&p);
        async move {
            let cfg = match &cert {
                Some(c) => client::client_config_with_cert(&ca, c),
                None => client::client_config(&ca, &[&rustls::version::TLS13], &[b"http/1.1"]),
            };
            let rq = req(
                "POST",
                "/token",
                &[
                    ("host", "localhost"),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                &body,
            );
            tls_request(addr, "localhost", cfg, rq).await.unwrap().0
        }
    };
    let svc = pki.issue_client("bff", Some("spiffe://prod.test/ns/shop/sa/bff"));
    // Found by its certificate, with or without client_id.
    for extra in [&[][..], &[("client_id", "svc")][..]] {
        let r = go(Some(svc.clone()), extra).await;
        let v = issued(&r);
        let c = claims_of(v["access_token"].as_str().unwrap());
        assert_eq!(c["client_id"], "svc");
        let ev = audit_of(&gw, r.header("x-request-id").unwrap());
        assert_eq!(ev["auth"]["method"], "mtls", "{ev}");
        assert_eq!(ev["auth"]["client_id"], "svc", "{ev}");
        assert_eq!(c["sub"], "alice");
        assert_eq!(v["scope"], "read:orders");
    }
    let legacy = pki.issue_client("legacy-batch", None);
    let v = issued(&go(Some(legacy.clone()), &[]).await);
    assert_eq!(v["scope"], "read:orders write:orders");

    // Another certificate identity, or another client's id, or no certificate at all.
    let r = go(
        Some(pki.issue_client("bff", Some("spiffe://prod.test/ns/shop/sa/web"))),
        &[],
    )
    .await;
    oauth_error(&r, 401, "invalid_client");
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(
        audit_of(&gw, &id)["auth_failure"],
        "client_certificate_unknown"
    );
    let r = go(Some(legacy), &[("client_id", "svc")]).await;
    oauth_error(&r, 401, "invalid_client");
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(
        audit_of(&gw, &id)["auth_failure"],
        "client_certificate_mismatch"
    );
    let r = go(None, &[]).await;
    oauth_error(&r, 401, "invalid_client");
    // A secret cannot stand in for a certificate client.
    let r = go(None, &[("client_id", "svc"), ("client_secret", "guess")]).await;
    oauth_error(&r, 401, "invalid_client");

    // A revoked certificate no longer authenticates its client; a new one for it does.
    let fp = sha256_bytes_hex(&svc.cert_der);
    let r = send(req(
        "POST",
        &format!("{}/auth/revocations", gw.admin_url()),
        &[("content-type", "application/json")],
        &json!({"certificate_sha256": format!("sha256:{fp}")}).to_string(),
    ))
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = go(Some(svc), &[]).await;
    oauth_error(&r, 401, "invalid_client");
    let id = r.header("x-request-id").unwrap().to_string();
    let ev = audit_of(&gw, &id);
    assert_eq!(ev["auth_failure"], "client_certificate_revoked");
    // A client whose certificate is revoked did not authenticate: the event names none.
    assert!(ev["auth"].is_null(), "{ev}");
    let renewed = pki.issue_client("bff", Some("spiffe://prod.test/ns/shop/sa/bff"));
    issued(&go(Some(renewed), &[]).await);
}

#[test]
fn check_refuses_a_bad_token_exchange_section_with_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        r#"
upstreams:
  tx: { kind: token_exchange, targets: ["http://127.0.0.1:1"] }
auth:
  jwt: { a: { issuer: https://a.test, hmac_secret: { value: "0123456789abcdef0123456789abcdef" }, algorithms: [HS256], any_audience: true } }
token_exchange:
  jwt_issuers: [a, nope]
  introspection: [ghost]
  ttl: 0s
  audiences:
    orders: { resources: ["not a uri"] }
  clients:
    c1: { secret_hash: "md5:abc", audiences: { orders: [], hr: [read] } }
    c2: { secret_hash: "sha256:0fefc1b27100e636d38ff6bc989040691f4a48220d8bc2183b6bbcfd001524c7", spiffe_id: "spiffe://td/x", audiences: { orders: [read] } }
    c3: { spiffe_id: "http://td/x", audiences: { orders: ["two words"] } }
    c4: { certificate_subject: "CN=x", audiences: { orders: [read] } }
routes:
  - { name: t, match: { path: /token, methods: [GET] }, upstream: tx, auth: { methods: [jwt] } }
"#,
    )
    .unwrap();
    let out = run_cli(bin(), &["check", file.to_str().unwrap()]);
    assert_eq!(out.status, 1, "{}{}", out.stdout, out.stderr);
    for want in [
        "upstreams.tx.targets",
        "token_exchange.jwt_issuers[1]: unknown auth.jwt issuer \"nope\"",
        "token_exchange.jwt_issuers[0]: auth.jwt.a accepts any audience",
        "token_exchange.introspection[0]",
        "token_exchange.ttl: must be greater than 0",
        "token_exchange.audiences.orders.resources[0]",
        "token_exchange.clients.c1.secret_hash",
        "token_exchange.clients.c1.audiences.orders: list the scopes",
        "token_exchange.clients.c1.audiences.hr: unknown audience",
        "token_exchange.clients.c2: exactly one of",
        "token_exchange.clients.c3.spiffe_id",
        "token_exchange.clients.c3.audiences.orders[0]",
        "token_exchange.clients: clients with spiffe_id or certificate_subject need a TLS listener",
        "routes[0].auth: the token endpoint authenticates its clients itself",
        "routes[0].match.methods: the token endpoint takes POST",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?} in:\n{}",
            out.stderr
        );
    }

    // A route to the token endpoint without the section; unknown keys in the section.
    std::fs::write(
        &file,
        r#"
upstreams: { tx: { kind: token_exchange } }
routes:
  - { name: t, match: { path: /token }, upstream: tx }
"#,
    )
    .unwrap();
    let out = run_cli(bin(), &["check", file.to_str().unwrap()]);
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.contains(
            "routes[0].upstream: a token_exchange upstream needs the token_exchange section"
        ),
        "{}",
        out.stderr
    );
    std::fs::write(
        &file,
        "token_exchange: { jwt_issuers: [], audiences: {}, clients: {}, lifetime: 5m }\n",
    )
    .unwrap();
    let out = run_cli(bin(), &["check", file.to_str().unwrap()]);
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.contains("token_exchange") && out.stderr.contains("lifetime"),
        "{}",
        out.stderr
    );
}

/// The endpoint's refusals are refusals like any step's: audited as `rejected` by step
/// `token_exchange`, counted, and counted towards bans — a client guessing secrets at the
/// token endpoint is banned like one guessing bearer tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_refusals_are_audited_and_count_towards_bans() {
    let dir = tempfile::tempdir().unwrap();
    let agents = Signer::generate(Alg::EdDSA, "agents-1".into()).unwrap();
    std::fs::write(dir.path().join("agents.jwks.json"), jwks_of(&agents)).unwrap();
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams: {{ tx: {{ kind: token_exchange }} }}
auth:
  jwt:
    agents: {{ issuer: "{AGENTS}", jwks_file: agents.jwks.json, algorithms: [EdDSA], audiences: ["{EXCHANGE_AUD}"] }}
  internal_token: {{ issuer: gw.test }}
token_exchange:
  jwt_issuers: [agents]
  audiences: {{ orders-api: {{}} }}
  clients:
    bff: {{ secret_hash: "{bff}", audiences: {{ orders-api: [read:orders] }} }}
bans:
  rules:
    - {{ name: guessing, on: [unauthenticated], count: 3, within: 1m, ban_for: 1m }}
routes:
  - {{ name: token, match: {{ path: /token }}, upstream: tx, auth: {{ anonymous: true }} }}
"#,
        bff = hash(BFF_SECRET),
    );
    let gw = Gateway::start_in(bin(), dir.path(), &yaml).unwrap();
    let subject = local_token(&agents, AGENTS, "agent-7", json!({}));
    let body = form(&[
        ("grant_type", GRANT),
        ("subject_token", &subject),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", "orders-api"),
    ]);
    let post = |secret: &'static str| {
        let url = format!("{}/token", gw.url("public"));
        let body = body.clone();
        async move {
            send(req(
                "POST",
                &url,
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("authorization", &basic("bff", secret)),
                ],
                &body,
            ))
            .await
        }
    };
    // A good exchange is an allowed transaction.
    let r = post(BFF_SECRET).await;
    issued(&r);
    let ev = audit_of(&gw, r.header("x-request-id").unwrap());
    assert_eq!(ev["outcome"], "allowed", "{ev}");
    // A refusal after the client authenticated names the client and why.
    let r = send(req(
        "POST",
        &format!("{}/token", gw.url("public")),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &basic("bff", BFF_SECRET)),
        ],
        &form(&[
            ("grant_type", GRANT),
            ("subject_token", &subject),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("audience", "orders-api"),
            ("scope", "write:orders"),
        ]),
    ))
    .await;
    oauth_error(&r, 400, "invalid_scope");
    let ev = audit_of(&gw, r.header("x-request-id").unwrap());
    assert_eq!(ev["outcome"], "rejected", "{ev}");
    assert_eq!(ev["auth_failure"], "invalid_scope", "{ev}");
    assert_eq!(ev["auth"]["client_id"], "bff", "{ev}");
    assert_eq!(ev["auth"]["authority"], "token_exchange", "{ev}");
    for _ in 0..3 {
        let r = post("guessed").await;
        oauth_error(&r, 401, "invalid_client");
        let ev = audit_of(&gw, r.header("x-request-id").unwrap());
        assert_eq!(ev["outcome"], "rejected", "{ev}");
        assert_eq!(ev["stage"], "token_exchange", "{ev}");
        assert_eq!(ev["reason"], "unauthenticated", "{ev}");
    }
    // Banned now: even the right secret is refused.
    let r = post(BFF_SECRET).await;
    assert_problem(&r, 403, "ip_banned");
    let metrics = get(&format!("{}/metrics", gw.admin_url())).await.text();
    assert!(
        metrics.contains(
            "portcullis_rejections_total{stage=\"token_exchange\",reason=\"unauthenticated\"} 3"
        ),
        "{metrics}"
    );
}
