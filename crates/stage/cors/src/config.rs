//! A route's `cors:` block, as written ([`RawCors`]) and compiled ([`Cors`]).

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use portcullis_core::ConfigErrors;
use portcullis_core::units::parse_duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::origin::{self, OriginPattern};

/// A route's `cors:` block.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Origins allowed to call the route: `scheme://host[:port]` (`https://app.example.com`),
    /// `https://*.example.com` (any subdomain, not `example.com` itself), `null` (risky: any
    /// sandboxed frame or `file:` page sends it), or `["*"]` alone (any origin, without
    /// credentials). Required, not empty.
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for. Default `[GET, HEAD, POST]`. Tokens are case-sensitive;
    /// the standard ones are upper-cased (`get` is read as `GET`). `*`: any method (not with
    /// credentials).
    #[serde(default = "default_methods")]
    pub allowed_methods: Vec<String>,
    /// Request header names a preflight may ask for (case-insensitive). Default none. `*`: any
    /// name but `authorization`, which must be listed (as browsers treat `*`); not with
    /// credentials.
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    /// Response header names scripts of an allowed origin may read beyond the safelisted ones.
    /// Default none. `*`: all (not with credentials).
    #[serde(default)]
    pub exposed_headers: Vec<String>,
    /// Whether browsers may send cookies and client certificates, and let scripts read the
    /// response. Default false. Requires explicit origins, methods and headers.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight's answer, in whole seconds (`10m`, `1h`).
    /// Default `5m`; `0s` sends no `Access-Control-Max-Age`; at most `24h`.
    #[serde(default = "default_max_age")]
    pub max_age: String,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "POST".into()]
}

fn default_max_age() -> String {
    "5m".into()
}

/// Browsers cap the preflight cache lower still (Chromium 2h, Firefox 24h); more is a
/// configuration mistake.
const MAX_AGE_CAP: Duration = Duration::from_secs(24 * 3600);

/// Methods upper-cased when configured in any case. Fetch itself upper-cases only DELETE, GET,
/// HEAD, OPTIONS, POST and PUT in what scripts ask for; `patch` stays `patch` on the wire and
/// is not `PATCH`.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

#[derive(Debug, Clone)]
pub(crate) enum Origins {
    Any,
    List(Vec<OriginPattern>),
}

#[derive(Debug, Clone)]
pub(crate) enum Methods {
    Any,
    List(Vec<Method>),
}

/// A route's CORS policy, compiled: every header value the gateway sends is built here once.
#[derive(Debug, Clone)]
pub struct Cors {
    pub(crate) origins: Origins,
    pub(crate) methods: Methods,
    /// `Access-Control-Allow-Methods` for a method list.
    pub(crate) allow_methods: Option<HeaderValue>,
    /// `*` in `allowed_headers`.
    pub(crate) headers_any: bool,
    /// Lowercase, without duplicates.
    pub(crate) headers: Vec<HeaderName>,
    /// `Access-Control-Allow-Headers` for a header list without `*` (none when empty).
    pub(crate) allow_headers: Option<HeaderValue>,
    pub(crate) expose_headers: Option<HeaderValue>,
    /// `None` when `max_age` is 0.
    pub(crate) max_age: Option<HeaderValue>,
    pub(crate) credentials: bool,
}

impl Cors {
    /// Whether `origin` (a request's `Origin` value) may call the route. A malformed origin
    /// never may, even under `*`.
    pub fn allows_origin(&self, origin: &str) -> bool {
        origin::parse_request(origin).is_some_and(|o| self.allows(&o))
    }

    pub(crate) fn allows(&self, origin: &origin::RequestOrigin<'_>) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::List(list) => list.iter().any(|p| p.matches(origin)),
        }
    }

    /// Whether credentialed requests are allowed.
    pub fn allow_credentials(&self) -> bool {
        self.credentials
    }

    /// The allowed origins, normalised (`*` when any).
    pub fn origins(&self) -> Vec<String> {
        match &self.origins {
            Origins::Any => vec!["*".into()],
            Origins::List(list) => list.iter().map(ToString::to_string).collect(),
        }
    }

    /// The allowed methods (`*` when any).
    pub fn methods(&self) -> Vec<String> {
        match &self.methods {
            Methods::Any => vec!["*".into()],
            Methods::List(list) => list.iter().map(|m| m.as_str().to_owned()).collect(),
        }
    }
}

const WILDCARD_WITH_CREDENTIALS: &str = "\"*\" cannot be used with allow_credentials: true \
                                         (browsers read it literally or refuse it): list names";

/// Compiles a route's `cors:` block. `path` is where it sits (`routes[2].cors`); every error is
/// recorded under its own path. `None` when anything is wrong.
pub fn compile(raw: &RawCors, path: &str, errors: &mut ConfigErrors) -> Option<Cors> {
    let before = errors.len();
    let origins = compile_origins(raw, path, errors);
    let methods = compile_methods(raw, path, errors);
    let (headers_any, headers) = compile_names(
        &raw.allowed_headers,
        raw.allow_credentials,
        &format!("{path}.allowed_headers"),
        errors,
    );
    let (exposed_any, exposed) = compile_names(
        &raw.exposed_headers,
        raw.allow_credentials,
        &format!("{path}.exposed_headers"),
        errors,
    );
    let max_age = compile_max_age(&raw.max_age, &format!("{path}.max_age"), errors);
    if errors.len() > before {
        return None;
    }

    let allow_methods = match &methods {
        Methods::Any => None,
        Methods::List(list) => join(list.iter().map(Method::as_str), path, errors),
    };
    let allow_headers = if headers_any {
        None
    } else {
        join(headers.iter().map(HeaderName::as_str), path, errors)
    };
    let expose_headers = join(
        exposed_any
            .then_some("*")
            .into_iter()
            .chain(exposed.iter().map(HeaderName::as_str)),
        path,
        errors,
    );
    if errors.len() > before {
        return None;
    }
    Some(Cors {
        origins,
        methods,
        allow_methods,
        headers_any,
        headers,
        allow_headers,
        expose_headers,
        max_age: max_age.and_then(|secs| (secs > 0).then(|| HeaderValue::from(secs))),
        credentials: raw.allow_credentials,
    })
}

fn compile_origins(raw: &RawCors, path: &str, errors: &mut ConfigErrors) -> Origins {
    let p = format!("{path}.allowed_origins");
    if raw.allowed_origins.is_empty() {
        errors.push(p, "list at least one origin (or \"*\" for any)");
        return Origins::List(Vec::new());
    }
    let (list, star) = origin::parse_list(&raw.allowed_origins, &p, errors);
    if raw.allow_credentials
        && let Some(i) = raw
            .allowed_origins
            .iter()
            .position(|s| s.eq_ignore_ascii_case("null"))
    {
        errors.push(
            format!("{p}[{i}]"),
            "\"null\" cannot be combined with allow_credentials: any page can send it (from a \
             sandboxed frame), with the user's cookies, and read the answers",
        );
    }
    let Some(i) = star else {
        return Origins::List(list);
    };
    if raw.allowed_origins.iter().any(|s| s != "*") {
        errors.push(
            format!("{p}[{i}]"),
            "\"*\" cannot be combined with other origins",
        );
    }
    if raw.allow_credentials {
        errors.push(format!("{p}[{i}]"), WILDCARD_WITH_CREDENTIALS);
    }
    Origins::Any
}

fn compile_methods(raw: &RawCors, path: &str, errors: &mut ConfigErrors) -> Methods {
    let p = format!("{path}.allowed_methods");
    if raw.allowed_methods.is_empty() {
        errors.push(p, "list at least one method (default: GET, HEAD, POST)");
        return Methods::List(Vec::new());
    }
    let mut any = false;
    let mut list: Vec<Method> = Vec::new();
    for (i, s) in raw.allowed_methods.iter().enumerate() {
        if s == "*" {
            any = true;
            if raw.allow_credentials {
                errors.push(format!("{p}[{i}]"), WILDCARD_WITH_CREDENTIALS);
            }
            continue;
        }
        let s = STANDARD_METHODS
            .iter()
            .find(|m| m.eq_ignore_ascii_case(s))
            .map_or(s.as_str(), |m| *m);
        match Method::from_bytes(s.as_bytes()) {
            Ok(m) if !list.contains(&m) => list.push(m),
            Ok(_) => {}
            Err(_) => errors.push(
                format!("{p}[{i}]"),
                format!("\"{s}\" is not a method (an HTTP token such as GET)"),
            ),
        }
    }
    if any {
        Methods::Any
    } else {
        Methods::List(list)
    }
}

/// Header names, lowercase and without duplicates; and whether `*` was listed.
fn compile_names(
    names: &[String],
    credentials: bool,
    p: &str,
    errors: &mut ConfigErrors,
) -> (bool, Vec<HeaderName>) {
    let mut any = false;
    let mut list: Vec<HeaderName> = Vec::new();
    for (i, s) in names.iter().enumerate() {
        if s == "*" {
            any = true;
            if credentials {
                errors.push(format!("{p}[{i}]"), WILDCARD_WITH_CREDENTIALS);
            }
            continue;
        }
        match HeaderName::from_bytes(s.as_bytes()) {
            Ok(h) if !list.contains(&h) => list.push(h),
            Ok(_) => {}
            Err(_) => errors.push(
                format!("{p}[{i}]"),
                format!("\"{s}\" is not a header name (an HTTP token such as x-request-id)"),
            ),
        }
    }
    (any, list)
}

/// Seconds, or `None` after recording an error.
fn compile_max_age(s: &str, p: &str, errors: &mut ConfigErrors) -> Option<u64> {
    let d = match parse_duration(s) {
        Ok(d) => d,
        Err(e) => {
            errors.push(p, e);
            return None;
        }
    };
    if d > MAX_AGE_CAP {
        errors.push(p, "at most 24h (browsers cap it lower: Chromium 2h)");
        return None;
    }
    if d.subsec_nanos() != 0 {
        errors.push(
            p,
            "whole seconds only: Access-Control-Max-Age counts seconds",
        );
        return None;
    }
    Some(d.as_secs())
}

/// `a, b, c` as a header value; `None` for an empty list.
fn join<'s>(
    items: impl Iterator<Item = &'s str>,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<HeaderValue> {
    let mut s = String::new();
    for item in items {
        if !s.is_empty() {
            s.push_str(", ");
        }
        s.push_str(item);
    }
    if s.is_empty() {
        return None;
    }
    // Tokens are always valid header values; this only guards the invariant.
    HeaderValue::try_from(s)
        .map_err(|_| errors.push(path, "internal: a CORS header value could not be built"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(origins: &[&str]) -> RawCors {
        RawCors {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_methods: default_methods(),
            allowed_headers: Vec::new(),
            exposed_headers: Vec::new(),
            allow_credentials: false,
            max_age: default_max_age(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn errors_of(r: &RawCors) -> Vec<(String, String)> {
        let mut e = ConfigErrors::new();
        let c = compile(r, "routes[2].cors", &mut e);
        assert!(c.is_none(), "errors must yield no policy");
        e.iter()
            .map(|e| (e.path.clone(), e.message.clone()))
            .collect()
    }

    fn ok(r: &RawCors) -> Cors {
        let mut e = ConfigErrors::new();
        let c = compile(r, "routes[2].cors", &mut e);
        assert!(e.is_empty(), "{e}");
        c.unwrap()
    }

    fn pair(p: &str, m: &str) -> (String, String) {
        (p.to_string(), m.to_string())
    }

    #[test]
    fn yaml_defaults_and_unknown_keys() {
        let r: RawCors = serde_yaml_ng::from_str("allowed_origins: [\"https://a.com\"]\n").unwrap();
        assert_eq!(r, raw(&["https://a.com"]));
        let c = ok(&r);
        assert_eq!(c.methods(), ["GET", "HEAD", "POST"]);
        assert_eq!(c.allow_methods.as_ref().unwrap(), "GET, HEAD, POST");
        assert_eq!(c.max_age.as_ref().unwrap(), "300");
        assert_eq!(c.allow_headers, None);
        assert_eq!(c.expose_headers, None);
        assert!(!c.allow_credentials());

        let e = serde_yaml_ng::from_str::<RawCors>("allowed_origins: [x]\nallow_origin: y\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("unknown field `allow_origin`"),
            "{e}"
        );
        assert!(serde_yaml_ng::from_str::<RawCors>("max_age: 5m\n").is_err());
    }

    #[test]
    fn full_yaml_compiles_to_precomputed_values() {
        let r: RawCors = serde_yaml_ng::from_str(
            "allowed_origins: [\"HTTPS://App.Example.com:443\", \"https://*.example.com\"]\n\
             allowed_methods: [get, Post, PATCH, PURGE, get]\n\
             allowed_headers: [Content-Type, authorization, x-request-id, content-type]\n\
             exposed_headers: [X-Request-Id, retry-after]\n\
             allow_credentials: true\n\
             max_age: 10m\n",
        )
        .unwrap();
        let c = ok(&r);
        assert_eq!(
            c.origins(),
            ["https://app.example.com", "https://*.example.com"]
        );
        assert_eq!(c.methods(), ["GET", "POST", "PATCH", "PURGE"]);
        assert_eq!(c.allow_methods.as_ref().unwrap(), "GET, POST, PATCH, PURGE");
        assert_eq!(
            c.allow_headers.as_ref().unwrap(),
            "content-type, authorization, x-request-id"
        );
        assert_eq!(
            c.expose_headers.as_ref().unwrap(),
            "x-request-id, retry-after"
        );
        assert_eq!(c.max_age.as_ref().unwrap(), "600");
        assert!(c.allow_credentials());
    }

    /// Any page can send `Origin: null` (from a sandboxed frame) with the user's cookies: with
    /// credentials it would read the answers, so the pair is refused, as `*` with them is.
    #[test]
    fn null_with_credentials_is_refused() {
        let r: RawCors = serde_yaml_ng::from_str(
            "allowed_origins: [\"https://a.example\", \"null\"]\nallow_credentials: true\n",
        )
        .unwrap();
        let mut e = ConfigErrors::new();
        let _ = compile(&r, "routes[0].cors", &mut e);
        let text = e.to_string();
        assert!(
            text.contains("routes[0].cors.allowed_origins[1]")
                && text.contains("cannot be combined with allow_credentials"),
            "{text}"
        );
        let r: RawCors = serde_yaml_ng::from_str("allowed_origins: [\"null\"]\n").unwrap();
        ok(&r);
    }

    #[test]
    fn duplicates_are_fine() {
        let c = ok(&raw(&["https://a.com", "https://A.com:443"]));
        assert_eq!(c.origins(), ["https://a.com"]);
        let c = ok(&raw(&["*", "*"]));
        assert_eq!(c.origins(), ["*"]);
    }

    #[test]
    fn empty_lists_are_refused() {
        assert_eq!(
            errors_of(&raw(&[])),
            [pair(
                "routes[2].cors.allowed_origins",
                "list at least one origin (or \"*\" for any)"
            )]
        );
        let mut r = raw(&["https://a.com"]);
        r.allowed_methods.clear();
        assert_eq!(
            errors_of(&r),
            [pair(
                "routes[2].cors.allowed_methods",
                "list at least one method (default: GET, HEAD, POST)"
            )]
        );
    }

    #[test]
    fn every_bad_origin_is_reported_at_its_index() {
        let r = raw(&[
            "https://ok.example.com",
            "https://a.com/",
            "ftp://a.com",
            "https://a.*.com",
            "*",
        ]);
        assert_eq!(
            errors_of(&r),
            [
                pair(
                    "routes[2].cors.allowed_origins[1]",
                    "\"https://a.com/\": an origin has no path: remove the trailing \"/\""
                ),
                pair(
                    "routes[2].cors.allowed_origins[2]",
                    "\"ftp://a.com\": the scheme must be http or https"
                ),
                pair(
                    "routes[2].cors.allowed_origins[3]",
                    "\"https://a.*.com\": a wildcard is allowed only as the whole leftmost \
                     label of the host (https://*.example.com)"
                ),
                pair(
                    "routes[2].cors.allowed_origins[4]",
                    "\"*\" cannot be combined with other origins"
                ),
            ]
        );
    }

    #[test]
    fn wildcards_with_credentials_are_refused() {
        let mut r = raw(&["*"]);
        r.allow_credentials = true;
        r.allowed_methods = strings(&["GET", "*"]);
        r.allowed_headers = strings(&["*"]);
        r.exposed_headers = strings(&["x-a", "*"]);
        assert_eq!(
            errors_of(&r),
            [
                pair(
                    "routes[2].cors.allowed_origins[0]",
                    WILDCARD_WITH_CREDENTIALS
                ),
                pair(
                    "routes[2].cors.allowed_methods[1]",
                    WILDCARD_WITH_CREDENTIALS
                ),
                pair(
                    "routes[2].cors.allowed_headers[0]",
                    WILDCARD_WITH_CREDENTIALS
                ),
                pair(
                    "routes[2].cors.exposed_headers[1]",
                    WILDCARD_WITH_CREDENTIALS
                ),
            ]
        );
    }

    #[test]
    fn wildcards_without_credentials_compile() {
        let mut r = raw(&["*"]);
        r.allowed_methods = strings(&["*", "GET"]);
        r.allowed_headers = strings(&["*", "Authorization"]);
        r.exposed_headers = strings(&["*"]);
        let c = ok(&r);
        assert_eq!(c.origins(), ["*"]);
        assert_eq!(c.methods(), ["*"]);
        assert_eq!(c.allow_methods, None);
        assert!(c.headers_any);
        assert_eq!(c.headers, [http::header::AUTHORIZATION]);
        assert_eq!(c.allow_headers, None);
        assert_eq!(c.expose_headers.as_ref().unwrap(), "*");
    }

    #[test]
    fn bad_methods_and_names_are_reported() {
        let mut r = raw(&["https://a.com"]);
        r.allowed_methods = strings(&["GET", "G ET", ""]);
        r.allowed_headers = strings(&["x-ok", "x bad"]);
        r.exposed_headers = strings(&["x:y"]);
        assert_eq!(
            errors_of(&r),
            [
                pair(
                    "routes[2].cors.allowed_methods[1]",
                    "\"G ET\" is not a method (an HTTP token such as GET)"
                ),
                pair(
                    "routes[2].cors.allowed_methods[2]",
                    "\"\" is not a method (an HTTP token such as GET)"
                ),
                pair(
                    "routes[2].cors.allowed_headers[1]",
                    "\"x bad\" is not a header name (an HTTP token such as x-request-id)"
                ),
                pair(
                    "routes[2].cors.exposed_headers[0]",
                    "\"x:y\" is not a header name (an HTTP token such as x-request-id)"
                ),
            ]
        );
    }

    #[test]
    fn max_age_bounds() {
        let mut r = raw(&["https://a.com"]);
        r.max_age = "0s".into();
        assert_eq!(ok(&r).max_age, None);
        r.max_age = "24h".into();
        assert_eq!(ok(&r).max_age.unwrap(), "86400");
        r.max_age = "1m30s".into();
        assert_eq!(ok(&r).max_age.unwrap(), "90");
        r.max_age = "24h1s".into();
        assert_eq!(
            errors_of(&r),
            [pair(
                "routes[2].cors.max_age",
                "at most 24h (browsers cap it lower: Chromium 2h)"
            )]
        );
        r.max_age = "1500ms".into();
        assert_eq!(
            errors_of(&r),
            [pair(
                "routes[2].cors.max_age",
                "whole seconds only: Access-Control-Max-Age counts seconds"
            )]
        );
        r.max_age = "soon".into();
        assert_eq!(
            errors_of(&r),
            [pair(
                "routes[2].cors.max_age",
                "\"soon\" is not a duration (e.g. 500ms, 5s, 2m, 1h)"
            )]
        );
    }

    #[test]
    fn schema_is_generated() {
        let schema = schemars::schema_for!(RawCors);
        let v = serde_json::to_value(&schema).unwrap();
        assert_eq!(v["required"], serde_json::json!(["allowed_origins"]));
        assert_eq!(v["additionalProperties"], false);
    }
}
