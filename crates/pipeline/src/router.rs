//! Step 3: the route table. Host, path and method → one route, or a refusal.
//!
//! Deny by default: a request no route takes is refused with 404 (405 with `Allow` when the
//! path is served but not with that method) and never reaches an upstream.
//!
//! Precedence, most specific first: an exact host over a wildcard host over "any host"; then
//! an exact path over a template (more literal segments first) over a prefix (longer first);
//! declaration order breaks ties. A route that matches the path but not the method does not
//! hide a less specific route that takes the method.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderValue, Method};
use portcullis_config::{HostMatch, PathMatch, Route, Segment};
use portcullis_core::{
    GatewayRequest, RejectReason, Rejection, RequestCtx, RouteId, RouteMatch, Stage, StageId, Step,
};

/// Captured template parameters.
type Params = Vec<(Arc<str>, String)>;

/// What the table says about a request.
#[derive(Debug)]
pub enum Lookup {
    Found(RouteMatch),
    MethodNotAllowed(Vec<Method>),
    NotFound,
    /// The route that takes the request is a template one of whose captures does not decode
    /// to UTF-8: refused, not left to a less specific route (whose rules would then judge that
    /// path). A more specific route (by host, method or path) still takes it.
    Undecodable,
}

/// The best route so far: its key (host score, path score, takes the method itself), its
/// index, its captures, and whether one of them did not decode.
type Candidate = ((usize, usize, bool), usize, Params, bool);

/// How a route's path takes a request's.
enum PathFit {
    No,
    Yes(usize, Params),
    /// A template whose literals match (with its score), one of whose captures does not
    /// decode to UTF-8.
    Undecodable(usize),
}

struct Entry {
    name: Arc<str>,
    /// Empty: every listener.
    listeners: Vec<Arc<str>>,
    hosts: Vec<HostMatch>,
    path: PathMatch,
    methods: Option<Vec<Method>>,
    /// The route answers CORS preflights itself.
    cors: bool,
}

pub struct RouteTable {
    entries: Vec<Entry>,
    /// Whether any route matches on the host: if none does, the request's host is not read.
    by_host: bool,
}

fn host_score(hosts: &[HostMatch], host: &str) -> Option<usize> {
    if hosts.is_empty() {
        return Some(0);
    }
    hosts
        .iter()
        .filter(|h| h.matches(host))
        .map(HostMatch::specificity)
        .max()
}

/// Returns the path score and the captured parameters.
fn path_score(m: &PathMatch, path: &str) -> PathFit {
    let fit = |ok: bool, score: usize| {
        if ok {
            PathFit::Yes(score, Vec::new())
        } else {
            PathFit::No
        }
    };
    match m {
        PathMatch::Exact(p) => fit(p == path, 3_000_000 + p.len()),
        PathMatch::Prefix(p) => {
            let ok = path.starts_with(p.as_str())
                && (path.len() == p.len() || path.as_bytes().get(p.len()) == Some(&b'/'));
            fit(ok, 1_000_000 + p.len())
        }
        PathMatch::Template(segs) => {
            let mut params = Vec::new();
            let mut literal = 0;
            let mut undecodable = false;
            let mut parts = path.split('/').skip(1);
            for seg in segs {
                let Some(part) = parts.next() else {
                    return PathFit::No;
                };
                match seg {
                    Segment::Literal(l) => {
                        if l != part {
                            return PathFit::No;
                        }
                        literal += 1;
                    }
                    Segment::Param(name) => {
                        if part.is_empty() {
                            return PathFit::No;
                        }
                        // Read lossily, `%FF` and `%FE` would both be U+FFFD to the owner and
                        // tenant rules and to a rewrite, while the upstream tells them apart.
                        match percent_encoding::percent_decode_str(part).decode_utf8() {
                            Ok(v) => params.push((name.clone(), v.into_owned())),
                            Err(_) => undecodable = true,
                        }
                    }
                }
            }
            let score = 2_000_000 + literal * 1000 + segs.len();
            if parts.next().is_some() {
                PathFit::No
            } else if undecodable {
                PathFit::Undecodable(score)
            } else {
                PathFit::Yes(score, params)
            }
        }
    }
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the Host header, lowercase,
/// without port.
pub fn request_host(head: &http::request::Parts) -> Option<String> {
    host_of(head).map(Cow::into_owned)
}

/// [`request_host`], borrowed from the request when it needs no change (already lowercase):
/// the routing step then copies nothing. The normalisation is
/// [`portcullis_core::normalized_host`], shared with what authorization policies see.
fn host_of(head: &http::request::Parts) -> Option<Cow<'_, str>> {
    portcullis_core::normalized_host(head)
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> Self {
        RouteTable {
            by_host: routes.iter().any(|r| !r.hosts.is_empty()),
            entries: routes
                .iter()
                .map(|r| Entry {
                    name: r.name.clone(),
                    listeners: r.listeners.clone(),
                    hosts: r.hosts.clone(),
                    path: r.path.clone(),
                    methods: r.methods.clone(),
                    cors: r.cors.is_some(),
                })
                .collect(),
        }
    }

    pub fn lookup(&self, host: &str, path: &str, method: &Method) -> Lookup {
        self.lookup_on("", host, path, method)
    }

    /// The lookup for a request that came in on `listener`: routes restricted to other
    /// listeners are not there for it.
    pub fn lookup_on(&self, listener: &str, host: &str, path: &str, method: &Method) -> Lookup {
        let mut best: Option<Candidate> = None;
        let mut allowed: Vec<Method> = Vec::new();
        let mut path_hit = false;
        for (i, e) in self.entries.iter().enumerate() {
            if !e.listeners.is_empty() && !e.listeners.iter().any(|l| &**l == listener) {
                continue;
            }
            let Some(hs) = host_score(&e.hosts, host) else {
                continue;
            };
            let (ps, params, undecodable) = match path_score(&e.path, path) {
                PathFit::No => continue,
                PathFit::Yes(ps, params) => (ps, params, false),
                PathFit::Undecodable(ps) => (ps, Vec::new(), true),
            };
            path_hit = true;
            // A HEAD is served by a GET route, but a route that lists HEAD itself (an OpenAPI
            // `head` operation, with its own rules) comes first among equally specific ones; a
            // route without methods does not (declaration order decides, as for any method).
            let (method_ok, own_method) = match &e.methods {
                None => (true, method != Method::HEAD),
                Some(ms) if ms.contains(method) => (true, true),
                Some(ms) => (method == Method::HEAD && ms.contains(&Method::GET), false),
            };
            if !method_ok {
                if let Some(ms) = &e.methods {
                    for m in ms {
                        if !allowed.contains(m) {
                            allowed.push(m.clone());
                        }
                    }
                }
                continue;
            }
            let key = (hs, ps, own_method);
            if best.as_ref().is_none_or(|(k, ..)| key > *k) {
                best = Some((key, i, params, undecodable));
            }
        }
        match best {
            // The route that takes the request cannot read its captures: refused, not left to
            // a less specific route.
            Some((.., true)) => Lookup::Undecodable,
            Some((_, i, params, false)) => Lookup::Found(RouteMatch {
                id: RouteId(i),
                name: self.entries[i].name.clone(),
                params,
            }),
            None if path_hit => Lookup::MethodNotAllowed(allowed),
            None => Lookup::NotFound,
        }
    }
}

/// The routing step.
pub struct RouteStage {
    table: RouteTable,
}

impl RouteStage {
    pub const ID: StageId = StageId("route");

    pub fn new(table: RouteTable) -> Self {
        RouteStage { table }
    }
}

impl Stage for RouteStage {
    fn id(&self) -> StageId {
        Self::ID
    }

    fn on_request<'a>(&'a self, req: &'a mut GatewayRequest, ctx: &'a mut RequestCtx) -> Step<'a> {
        // Without host rules every route's host score is the same, whatever the host.
        let host = if self.table.by_host {
            host_of(&req.head).unwrap_or_default()
        } else {
            Cow::Borrowed("")
        };
        // A CORS preflight is routed by the method it asks about, to a route that answers
        // preflights; anywhere else it is an ordinary OPTIONS request.
        if let Some(asked) = portcullis_cors::preflight_method(&req.head)
            && let Lookup::Found(m) =
                self.table
                    .lookup_on(&ctx.listener, &host, req.head.uri.path(), &asked)
            && self.table.entries.get(m.id.0).is_some_and(|e| e.cors)
        {
            ctx.route = Some(m);
            ctx.preflight = true;
            return Step::CONTINUE;
        }
        match self
            .table
            .lookup_on(&ctx.listener, &host, req.head.uri.path(), &req.head.method)
        {
            Lookup::Found(m) => {
                ctx.route = Some(m);
                Step::CONTINUE
            }
            Lookup::MethodNotAllowed(methods) => {
                let allow = methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut r = Rejection::new(
                    RejectReason::MethodNotAllowed,
                    format!("{} is not allowed here", req.head.method),
                );
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    r = r.with_header(http::header::ALLOW, v);
                }
                Step::reject(r)
            }
            Lookup::NotFound => Step::reject(Rejection::new(
                RejectReason::RouteNotFound,
                "no route is configured for this host and path",
            )),
            Lookup::Undecodable => Step::reject(Rejection::new(
                RejectReason::BadRequest,
                "a path segment a route captures is not UTF-8 once percent-decoded",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table(yaml_routes: &str) -> RouteTable {
        let y = format!("upstreams: {{ d: {{ kind: echo }} }}\nroutes:\n{yaml_routes}");
        let c = portcullis_config::load_str(&y, Path::new(".")).unwrap();
        RouteTable::new(&c.routes)
    }

    fn found(l: Lookup) -> (String, Vec<(String, String)>) {
        match l {
            Lookup::Found(m) => (
                m.name.to_string(),
                m.params
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            ),
            other => panic!("expected a route, got {other:?}"),
        }
    }

    const ROUTES: &str = r#"
  - { name: any-prefix, match: { prefix: / }, upstream: d }
  - { name: api, match: { prefix: /api }, upstream: d }
  - { name: order, match: { path: "/api/orders/{id}", methods: [GET, DELETE] }, upstream: d }
  - { name: order-items, match: { path: "/api/orders/{id}/items" }, upstream: d }
  - { name: exact, match: { path: /api/orders/special }, upstream: d }
  - { name: wild, match: { hosts: ["*.example.com"], prefix: /api }, upstream: d }
  - { name: host, match: { hosts: [admin.example.com], prefix: /api }, upstream: d }
  - { name: post-only, match: { path: /submit, methods: [POST] }, upstream: d }
"#;

    #[test]
    fn precedence() {
        let t = table(ROUTES);
        let g = Method::GET;
        assert_eq!(found(t.lookup("x", "/", &g)).0, "any-prefix");
        assert_eq!(found(t.lookup("x", "/apix", &g)).0, "any-prefix");
        assert_eq!(found(t.lookup("x", "/api", &g)).0, "api");
        assert_eq!(found(t.lookup("x", "/api/other", &g)).0, "api");
        assert_eq!(
            found(t.lookup("x", "/api/orders/42", &g)),
            (
                "order".to_string(),
                vec![("id".to_string(), "42".to_string())]
            )
        );
        assert_eq!(found(t.lookup("x", "/api/orders/special", &g)).0, "exact");
        assert_eq!(
            found(t.lookup("x", "/api/orders/4/items", &g)).0,
            "order-items"
        );
        assert_eq!(found(t.lookup("shop.example.com", "/api/x", &g)).0, "wild");
        assert_eq!(found(t.lookup("admin.example.com", "/api/x", &g)).0, "host");
        assert_eq!(found(t.lookup("example.com", "/api/x", &g)).0, "api");
    }

    /// A capture is its segment percent-decoded; one that does not decode to UTF-8 is refused
    /// (read lossily, `%FF` and `%FE` would be one value to owner rules), not left to a less
    /// specific route whose rules would then judge the path.
    #[test]
    fn captures_are_decoded_or_the_request_is_refused() {
        let t = table(ROUTES);
        let g = Method::GET;
        assert_eq!(
            found(t.lookup("x", "/api/orders/caf%C3%A9", &g)).1,
            vec![("id".to_string(), "café".to_string())]
        );
        for odd in [
            "/api/orders/%FF",
            "/api/orders/%C3",
            "/api/orders/%FF/items",
        ] {
            assert!(
                matches!(t.lookup("x", odd, &g), Lookup::Undecodable),
                "{odd}"
            );
        }
        // Paths no template takes are routed as before.
        assert_eq!(found(t.lookup("x", "/api/%FF", &g)).0, "api");
        // A more specific route by host, or the only one taking the method, still takes it.
        assert_eq!(
            found(t.lookup("admin.example.com", "/api/orders/%FF", &g)).0,
            "host"
        );
        assert_eq!(
            found(t.lookup("x", "/api/orders/%FF", &Method::POST)).0,
            "api"
        );
    }

    #[test]
    fn method_falls_through_to_a_less_specific_route() {
        let t = table(ROUTES);
        assert_eq!(
            found(t.lookup("x", "/api/orders/42", &Method::POST)).0,
            "api"
        );
        assert_eq!(
            found(t.lookup("x", "/api/orders/42", &Method::HEAD)).0,
            "order"
        );
    }

    /// A route that takes HEAD itself wins over an equally specific GET route declared
    /// before it (whose HEAD fallback would otherwise take the request), and a HEAD still
    /// falls back to a GET route when no route takes HEAD.
    #[test]
    fn a_route_of_its_own_takes_head_before_a_get_route() {
        let t = table(
            r#"
  - { name: get, match: { path: "/orders/{id}", methods: [GET] }, upstream: d }
  - { name: head, match: { path: "/orders/{id}", methods: [HEAD] }, upstream: d }
  - { name: list, match: { path: "/orders", methods: [GET] }, upstream: d }
"#,
        );
        assert_eq!(found(t.lookup("x", "/orders/1", &Method::HEAD)).0, "head");
        assert_eq!(found(t.lookup("x", "/orders/1", &Method::GET)).0, "get");
        assert_eq!(found(t.lookup("x", "/orders", &Method::HEAD)).0, "list");
        // A route without methods does not take a HEAD from a GET route declared before it.
        let t = table(
            r#"
  - { name: get, match: { path: "/orders/{id}", methods: [GET] }, upstream: d }
  - { name: any, match: { path: "/orders/{id}" }, upstream: d }
"#,
        );
        assert_eq!(found(t.lookup("x", "/orders/1", &Method::HEAD)).0, "get");
        assert_eq!(found(t.lookup("x", "/orders/1", &Method::POST)).0, "any");
    }

    #[test]
    fn not_found_and_method_not_allowed() {
        let t = table(
            r#"
  - { name: a, match: { path: "/orders/{id}", methods: [GET] }, upstream: d }
  - { name: b, match: { path: "/orders/{id}", methods: [PUT] }, upstream: d }
  - { name: h, match: { hosts: [only.example], prefix: /x }, upstream: d }
"#,
        );
        assert!(matches!(
            t.lookup("x", "/nope", &Method::GET),
            Lookup::NotFound
        ));
        assert!(matches!(
            t.lookup("x", "/orders", &Method::GET),
            Lookup::NotFound
        ));
        assert!(matches!(
            t.lookup("x", "/orders/1/2", &Method::GET),
            Lookup::NotFound
        ));
        assert!(matches!(
            t.lookup("x", "/orders/", &Method::GET),
            Lookup::NotFound
        ));
        assert!(matches!(
            t.lookup("other", "/x", &Method::GET),
            Lookup::NotFound
        ));
        match t.lookup("x", "/orders/1", &Method::POST) {
            Lookup::MethodNotAllowed(m) => assert_eq!(m, vec![Method::GET, Method::PUT]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn params_are_percent_decoded() {
        let t = table("  - { name: a, match: { path: \"/u/{name}\" }, upstream: d }\n");
        assert_eq!(found(t.lookup("x", "/u/a%20b", &Method::GET)).1[0].1, "a b");
    }

    #[test]
    fn host_extraction() {
        let head = |uri: &str, host: Option<&str>| {
            let mut b = http::Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(
            request_host(&head("/", Some("API.Example.com:8080"))).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            request_host(&head("/", Some("example.com."))).as_deref(),
            Some("example.com")
        );
        assert_eq!(
            request_host(&head("/", Some("[::1]:80"))).as_deref(),
            Some("[::1]")
        );
        assert_eq!(
            request_host(&head("http://h2.example/x", None)).as_deref(),
            Some("h2.example")
        );
        assert_eq!(request_host(&head("/", None)), None);
        // One spelling per IPv6 address, the canonical one.
        assert_eq!(
            request_host(&head("/", Some("[0:0:0::1]:80"))).as_deref(),
            Some("[::1]")
        );
        assert_eq!(
            request_host(&head("http://[2001:DB8::0:1]:8080/x", None)).as_deref(),
            Some("[2001:db8::1]")
        );
    }

    /// A route naming an IPv6 address, bracketed or not, in any spelling, takes requests to it
    /// in any spelling.
    #[test]
    fn ipv6_route_hosts_match() {
        let t = table(
            r#"
  - { name: v6, match: { hosts: ["::1", "[2001:DB8::0:1]"], prefix: / }, upstream: d }
  - { name: other, match: { prefix: / }, upstream: d }
"#,
        );
        let g = Method::GET;
        let host = |h: &str| {
            let head = http::Request::builder()
                .uri("/")
                .header("host", h)
                .body(())
                .unwrap()
                .into_parts()
                .0;
            request_host(&head).unwrap()
        };
        for h in [
            "[::1]:8080",
            "[0:0::1]",
            "[2001:db8::1]",
            "[2001:0DB8:0::1]:443",
        ] {
            assert_eq!(found(t.lookup(&host(h), "/", &g)).0, "v6", "{h}");
        }
        for h in ["[::2]", "localhost", "127.0.0.1"] {
            assert_eq!(found(t.lookup(&host(h), "/", &g)).0, "other", "{h}");
        }
    }

    /// `request_host` as it was before it borrowed: the reference for the one that does.
    fn request_host_reference(head: &http::request::Parts) -> Option<String> {
        let raw = match head.uri.authority() {
            Some(a) => a.host().to_string(),
            None => {
                let h = head.headers.get(http::header::HOST)?.to_str().ok()?;
                let h = h.trim();
                if let Some(rest) = h.strip_prefix('[') {
                    let end = rest.find(']')?;
                    format!("[{}]", &rest[..end])
                } else {
                    h.rsplit_once(':')
                        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                        .map(|(host, _)| host)
                        .unwrap_or(h)
                        .to_string()
                }
            }
        };
        if let Some(addr) = raw
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|a| a.parse::<std::net::Ipv6Addr>().ok())
        {
            return Some(format!("[{addr}]"));
        }
        let mut raw = raw;
        raw.make_ascii_lowercase();
        if raw.ends_with('.') {
            raw.pop();
        }
        Some(raw)
    }

    #[test]
    fn host_extraction_matches_the_reference() {
        let hosts = [
            "api.example.com",
            "API.Example.COM",
            "a.example:8080",
            "a.example:",
            "a.example:80x",
            "a.example:x80",
            "a:b:443",
            "Example.com.",
            "example.com..",
            "example.com.:443",
            ".",
            "",
            "  Spaced.Example:1  ",
            "\tTab.example",
            "[::1]:80",
            "[::1]",
            "[::1",
            "[FE80::1]:8443",
            "[0:0::1]:80",
            "[2001:DB8:0:0:0:0:0:1]",
            "[::ffff:1.2.3.4]",
            "[]",
            "[::1]x",
            ":80",
            "1.2.3.4:5",
        ];
        for h in hosts {
            let mut b = http::Request::builder().uri("/");
            b = b.header("host", h);
            let head = b.body(()).unwrap().into_parts().0;
            assert_eq!(request_host(&head), request_host_reference(&head), "{h:?}");
            let borrowed = host_of(&head);
            assert_eq!(
                borrowed.as_deref(),
                request_host_reference(&head).as_deref(),
                "{h:?}"
            );
        }
        let mut head = http::Request::builder()
            .uri("/")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        head.headers.insert(
            "host",
            http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(request_host(&head), None);
        for uri in [
            "http://H2.Example/x",
            "https://h2.example:8443/",
            "http://[::1]:8/",
            "http://a.b./",
        ] {
            let head = http::Request::builder()
                .uri(uri)
                .header("host", "other")
                .body(())
                .unwrap()
                .into_parts()
                .0;
            assert_eq!(request_host(&head), request_host_reference(&head), "{uri}");
        }
    }
}
