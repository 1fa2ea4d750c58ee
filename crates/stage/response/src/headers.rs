//! Security headers: `security_headers:` at the top level (every route) and on a route
//! (overrides, key by key). See the crate documentation for the configuration.

use http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_core::ConfigErrors;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

// ---------------------------------------------------------------------------------------------
// Raw

/// One header's setting: its value, or `false` to turn it off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawHeaderSetting {
    /// Only `false` is accepted (`true` says nothing about the value to send).
    Switch(bool),
    Value(String),
}

/// `security_headers:` (gateway-wide) and a route's `security_headers:`. On a route, a key left
/// out inherits the gateway-wide value; a key given replaces it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSecurityHeaders {
    /// `Strict-Transport-Security`, sent on TLS listeners only. Default
    /// `max-age=31536000; includeSubDomains`.
    #[serde(default)]
    pub strict_transport_security: Option<RawHeaderSetting>,
    /// `X-Content-Type-Options`. Default `nosniff` (the only value).
    #[serde(default)]
    pub content_type_options: Option<RawHeaderSetting>,
    /// `X-Frame-Options`: `DENY` (default) or `SAMEORIGIN`.
    #[serde(default)]
    pub frame_options: Option<RawHeaderSetting>,
    /// `Content-Security-Policy`. Default `default-src 'none'; frame-ancestors 'none'`.
    #[serde(default)]
    pub content_security_policy: Option<RawHeaderSetting>,
    /// `Referrer-Policy`: a referrer policy token, or a comma list of them. Default
    /// `no-referrer`.
    #[serde(default)]
    pub referrer_policy: Option<RawHeaderSetting>,
    /// `Permissions-Policy`. Default: the powerful browser features off.
    #[serde(default)]
    pub permissions_policy: Option<RawHeaderSetting>,
    /// `Cross-Origin-Resource-Policy`: `same-origin` (default), `same-site` or `cross-origin`.
    #[serde(default)]
    pub cross_origin_resource_policy: Option<RawHeaderSetting>,
    /// Response header names removed in addition to the built-in list. On a route, a list
    /// replaces the gateway-wide one.
    #[serde(default)]
    pub remove: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Compiled

/// Response headers removed on every route, whatever the configuration: they name the
/// upstream's software, version or host and help only an attacker choose an exploit.
pub static BUILTIN_REMOVE: [HeaderName; 9] = [
    HeaderName::from_static("server"),
    HeaderName::from_static("x-powered-by"),
    HeaderName::from_static("x-aspnet-version"),
    HeaderName::from_static("x-aspnetmvc-version"),
    // Rack/Rails: the framework, and server-side timing.
    HeaderName::from_static("x-runtime"),
    HeaderName::from_static("x-backend-server"),
    // CMS and site generators (Drupal, WordPress plugins …) with their versions.
    HeaderName::from_static("x-generator"),
    // Point at source maps, i.e. the upstream's source code.
    HeaderName::from_static("sourcemap"),
    HeaderName::from_static("x-sourcemap"),
];

/// The default `Permissions-Policy`: an API has no use for these browser features, and a
/// response rendered by mistake should not get them either.
pub const DEFAULT_PERMISSIONS_POLICY: &str = "accelerometer=(), camera=(), geolocation=(), \
     gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()";

/// The headers the gateway sets, in the order of [`SLOTS`].
const PERMISSIONS_POLICY: HeaderName = HeaderName::from_static("permissions-policy");
const CROSS_ORIGIN_RESOURCE_POLICY: HeaderName =
    HeaderName::from_static("cross-origin-resource-policy");

/// Index of `Strict-Transport-Security` in [`SLOTS`] (the one sent on TLS only).
const HSTS: usize = 0;

/// A header the gateway sets: configuration key, header name, default value, validation.
struct Slot {
    key: &'static str,
    name: HeaderName,
    default: &'static str,
    check: fn(&str) -> Result<(), String>,
}

static SLOTS: [Slot; 7] = [
    Slot {
        key: "strict_transport_security",
        name: STRICT_TRANSPORT_SECURITY,
        default: "max-age=31536000; includeSubDomains",
        check: check_hsts,
    },
    Slot {
        key: "content_type_options",
        name: X_CONTENT_TYPE_OPTIONS,
        default: "nosniff",
        check: check_nosniff,
    },
    Slot {
        key: "frame_options",
        name: X_FRAME_OPTIONS,
        default: "DENY",
        check: check_frame_options,
    },
    Slot {
        key: "content_security_policy",
        name: CONTENT_SECURITY_POLICY,
        default: "default-src 'none'; frame-ancestors 'none'",
        check: check_csp,
    },
    Slot {
        key: "referrer_policy",
        name: REFERRER_POLICY,
        default: "no-referrer",
        check: check_referrer_policy,
    },
    Slot {
        key: "permissions_policy",
        name: PERMISSIONS_POLICY,
        default: DEFAULT_PERMISSIONS_POLICY,
        check: check_permissions_policy,
    },
    Slot {
        key: "cross_origin_resource_policy",
        name: CROSS_ORIGIN_RESOURCE_POLICY,
        default: "same-origin",
        check: check_corp,
    },
];

/// The raw settings in [`SLOTS`] order.
fn raw_slots(raw: &RawSecurityHeaders) -> [Option<&RawHeaderSetting>; 7] {
    [
        raw.strict_transport_security.as_ref(),
        raw.content_type_options.as_ref(),
        raw.frame_options.as_ref(),
        raw.content_security_policy.as_ref(),
        raw.referrer_policy.as_ref(),
        raw.permissions_policy.as_ref(),
        raw.cross_origin_resource_policy.as_ref(),
    ]
}

/// Where `name` is in [`BUILTIN_REMOVE`], if it is (one match on the text: mostly its length
/// decides).
fn builtin_removed_index(name: &str) -> Option<usize> {
    Some(match name {
        "server" => 0,
        "x-powered-by" => 1,
        "x-aspnet-version" => 2,
        "x-aspnetmvc-version" => 3,
        "x-runtime" => 4,
        "x-backend-server" => 5,
        "x-generator" => 6,
        "sourcemap" => 7,
        "x-sourcemap" => 8,
        _ => return None,
    })
}

/// Where `name` is in [`SLOTS`], if it is (one match on the text, like
/// [`builtin_removed_index`]).
fn slot_index(name: &str) -> Option<usize> {
    Some(match name {
        "strict-transport-security" => 0,
        "x-content-type-options" => 1,
        "x-frame-options" => 2,
        "content-security-policy" => 3,
        "referrer-policy" => 4,
        "permissions-policy" => 5,
        "cross-origin-resource-policy" => 6,
        _ => return None,
    })
}

/// The security headers of a route (or the gateway-wide ones): values built and validated at
/// configuration time, so [`SecurityHeaders::apply`] only edits the map.
#[derive(Clone)]
pub struct SecurityHeaders {
    /// Per [`SLOTS`] entry: the value to set, or `None` when turned off.
    values: [Option<HeaderValue>; 7],
    /// Configured removals (lowercase, deduplicated, none of [`BUILTIN_REMOVE`]).
    extra_remove: Vec<HeaderName>,
    /// [`SecurityHeaders::fields`] as they go on the wire (`name: value` CRLF each), without
    /// and with `Strict-Transport-Security`: made whenever the values change, so a server
    /// that writes answer heads itself copies them in one piece.
    wire: [Box<[u8]>; 2],
}

impl PartialEq for SecurityHeaders {
    /// The policy: the values and the removals (the wire form follows from the values).
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values && self.extra_remove == other.extra_remove
    }
}

impl std::fmt::Debug for SecurityHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityHeaders")
            .field("values", &self.values)
            .field("extra_remove", &self.extra_remove)
            .finish_non_exhaustive()
    }
}

impl Default for SecurityHeaders {
    /// The built-in defaults: every header on with its default value, no extra removal.
    fn default() -> Self {
        let mut out = SecurityHeaders {
            values: SLOTS
                .each_ref()
                .map(|s| Some(HeaderValue::from_static(s.default))),
            extra_remove: Vec::new(),
            wire: Default::default(),
        };
        out.rewire();
        out
    }
}

impl SecurityHeaders {
    /// Makes the wire form anew from the values.
    fn rewire(&mut self) {
        self.wire = [false, true].map(|tls| {
            let mut out = Vec::new();
            for (name, value) in self.fields(tls) {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.into_boxed_slice()
        });
    }

    /// The fields set on a response ([`SecurityHeaders::fields`]) in HTTP/1.1 form, each
    /// `name: value` and CRLF, in the same order.
    pub fn wire(&self, tls: bool) -> &[u8] {
        &self.wire[usize::from(tls)]
    }

    /// Secures a response's headers in place: removes the revealing headers (built-in and
    /// configured), then sets every enabled header, replacing whatever value the upstream
    /// sent — the gateway is where the policy is enforced, so an upstream cannot weaken it.
    /// `Strict-Transport-Security` is set only when `tls` (the client's connection is HTTPS);
    /// a header turned off (`false`) is neither set nor removed, so the upstream's passes.
    pub fn apply(&self, headers: &mut HeaderMap, tls: bool) {
        self.strip(headers, tls);
        // One growth at most (none when the map was made with room), not one per insert.
        let _ = headers.try_reserve(self.values.len());
        for (name, value) in self.fields(tls) {
            // Cloning a value built once shares its bytes: no allocation per response.
            headers.append(name.clone(), value.clone());
        }
    }

    /// The first half of [`apply`](Self::apply): removes the revealing headers and every
    /// field that [`fields`](Self::fields) will set. A server that writes the answer head
    /// itself then writes those fields after the map's — the same answer as `apply`, without
    /// inserting seven values into the map.
    pub fn strip(&self, headers: &mut HeaderMap, tls: bool) {
        // One pass over the response's names marks which built-in removals and which set
        // names are there (none usually, an upstream's `Server` often); only those are looked
        // up and removed.
        let mut present = [false; BUILTIN_REMOVE.len()];
        let mut set_present = [false; SLOTS.len()];
        for k in headers.keys() {
            if let Some(i) = builtin_removed_index(k.as_str()) {
                present[i] = true;
            } else if let Some(i) = slot_index(k.as_str()) {
                set_present[i] = true;
            }
        }
        for (name, _) in BUILTIN_REMOVE.iter().zip(present).filter(|(_, p)| *p) {
            headers.remove(name);
        }
        for name in &self.extra_remove {
            portcullis_core::remove_header(headers, name);
        }
        for (i, slot) in SLOTS.iter().enumerate() {
            if set_present[i] && self.values[i].is_some() && (i != HSTS || tls) {
                headers.remove(&slot.name);
            }
        }
    }

    /// Whether [`strip`](Self::strip) removes the fields called `name`. A server that writes
    /// the answer head itself may leave them in the map and skip them as it writes: the same
    /// answer, without removing entries from the map.
    pub fn omits(&self, name: &HeaderName, tls: bool) -> bool {
        let n = name.as_str();
        if builtin_removed_index(n).is_some() || self.extra_remove.iter().any(|r| r == name) {
            return true;
        }
        slot_index(n).is_some_and(|i| self.values[i].is_some() && (i != HSTS || tls))
    }

    /// The fields set on a response (`Strict-Transport-Security` only when `tls`).
    pub fn fields(&self, tls: bool) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        SLOTS
            .iter()
            .zip(&self.values)
            .enumerate()
            .filter(move |(i, _)| *i != HSTS || tls)
            .filter_map(|(_, (s, v))| v.as_ref().map(|v| (&s.name, v)))
    }

    /// The headers set (name and value), `Strict-Transport-Security` included when enabled.
    pub fn set_headers(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        SLOTS
            .iter()
            .zip(&self.values)
            .filter_map(|(s, v)| v.as_ref().map(|v| (&s.name, v)))
    }

    /// Every header removed: the built-in list, then the configured ones.
    pub fn removed_headers(&self) -> impl Iterator<Item = &HeaderName> {
        BUILTIN_REMOVE.iter().chain(&self.extra_remove)
    }
}

/// Compiles the gateway-wide `security_headers:` (the built-in defaults when absent). Errors
/// are recorded at `security_headers.<key>`; an invalid key keeps its default.
pub fn compile_global(
    raw: Option<&RawSecurityHeaders>,
    errors: &mut ConfigErrors,
) -> SecurityHeaders {
    let mut out = SecurityHeaders::default();
    if let Some(raw) = raw {
        apply_raw(&mut out, raw, "security_headers", errors);
    }
    out
}

/// Compiles a route's `security_headers:` over the compiled gateway-wide settings: a key left
/// out inherits, a key given replaces (an invalid key inherits). `path` is the section's own
/// path (`routes[3].security_headers`); errors are recorded at `<path>.<key>`. Inheriting
/// from the compiled value (not the raw one) means a mistake in the gateway-wide section is
/// reported once, not again under every route.
pub fn compile_route(
    raw: Option<&RawSecurityHeaders>,
    global: &SecurityHeaders,
    path: &str,
    errors: &mut ConfigErrors,
) -> SecurityHeaders {
    let mut out = global.clone();
    if let Some(raw) = raw {
        apply_raw(&mut out, raw, path, errors);
    }
    out
}

fn apply_raw(out: &mut SecurityHeaders, raw: &RawSecurityHeaders, p: &str, e: &mut ConfigErrors) {
    for ((slot, setting), value) in SLOTS.iter().zip(raw_slots(raw)).zip(&mut out.values) {
        let Some(setting) = setting else { continue };
        let at = format!("{p}.{}", slot.key);
        match setting {
            RawHeaderSetting::Switch(false) => *value = None,
            RawHeaderSetting::Switch(true) => e.push(
                at,
                "`true` is not a value: give the header's value, or `false` to turn it off",
            ),
            RawHeaderSetting::Value(s) => match compile_value(s, slot.check) {
                Ok(v) => *value = Some(v),
                Err(m) => e.push(at, m),
            },
        }
    }
    if let Some(list) = &raw.remove {
        out.extra_remove.clear();
        for (i, name) in list.iter().enumerate() {
            match compile_remove(name) {
                Ok(n) => {
                    if !BUILTIN_REMOVE.contains(&n) && !out.extra_remove.contains(&n) {
                        out.extra_remove.push(n);
                    }
                }
                Err(m) => e.push(format!("{p}.remove[{i}]"), m),
            }
        }
    }
    out.rewire();
}

fn compile_value(s: &str, check: fn(&str) -> Result<(), String>) -> Result<HeaderValue, String> {
    let v = s.trim();
    if v.is_empty() {
        return Err("empty: give a value, or `false` to turn the header off".into());
    }
    // Stricter than HTTP allows (no obs-text): every browser reads these as ASCII.
    if let Some(c) = v.chars().find(|c| !matches!(c, ' '..='~')) {
        return Err(format!(
            "{s:?}: {c:?} is not allowed (printable ASCII only)"
        ));
    }
    check(v)?;
    HeaderValue::from_str(v).map_err(|_| format!("{s:?} is not a valid header value"))
}

fn compile_remove(name: &str) -> Result<HeaderName, String> {
    let n = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{name:?} is not a header name"))?;
    if n == http::header::CONTENT_LENGTH || n == http::header::TRANSFER_ENCODING {
        return Err(format!(
            "{name:?} frames the body; the gateway manages it and it cannot be removed"
        ));
    }
    // An upstream's hop-by-hop fields never reach the client; these are the gateway's own
    // when an answer carries them (a `Connection: close` that ends the connection, a 101's
    // `Connection`/`Upgrade`, the announced trailers), and must stay.
    if [
        http::header::CONNECTION,
        http::header::UPGRADE,
        http::header::TRAILER,
    ]
    .contains(&n)
    {
        return Err(format!(
            "{name:?} is a hop-by-hop field; the gateway manages it and it cannot be removed"
        ));
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Validation: the syntax each header's readers expect, so a typo is refused at load time
// rather than silently ignored by browsers.

/// RFC 6797: `max-age=<seconds>` (required), `includeSubDomains`, `preload`, each at most once
/// (a browser ignores the whole header otherwise). Names are case-insensitive.
fn check_hsts(v: &str) -> Result<(), String> {
    let mut seen: [bool; 3] = [false; 3];
    for d in v.split(';').map(str::trim).filter(|d| !d.is_empty()) {
        let (name, value) = match d.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (d, None),
        };
        let i = ["max-age", "includeSubDomains", "preload"]
            .iter()
            .position(|k| k.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!("unknown directive {name:?} (max-age, includeSubDomains, preload)")
            })?;
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("directive {name:?} appears twice"));
        }
        match (i, value) {
            (0, Some(secs)) => {
                let secs = secs
                    .strip_prefix('"')
                    .and_then(|x| x.strip_suffix('"'))
                    .unwrap_or(secs);
                if secs.is_empty() || secs.len() > 19 || !secs.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("max-age={secs}: the value is a number of seconds"));
                }
            }
            (0, None) => return Err("max-age needs a value: max-age=<seconds>".into()),
            (_, Some(_)) => return Err(format!("{name} takes no value")),
            (_, None) => {}
        }
    }
    if seen[0] {
        Ok(())
    } else {
        Err("must contain max-age=<seconds>".into())
    }
}

fn check_nosniff(v: &str) -> Result<(), String> {
    if v.eq_ignore_ascii_case("nosniff") {
        Ok(())
    } else {
        Err(format!("{v:?}: the only value is nosniff"))
    }
}

fn check_frame_options(v: &str) -> Result<(), String> {
    if v.eq_ignore_ascii_case("DENY") || v.eq_ignore_ascii_case("SAMEORIGIN") {
        Ok(())
    } else if v
        .get(..10)
        .is_some_and(|p| p.eq_ignore_ascii_case("ALLOW-FROM"))
    {
        Err(
            "ALLOW-FROM is obsolete and ignored by browsers; use DENY or SAMEORIGIN, and \
             frame-ancestors in content_security_policy"
                .into(),
        )
    } else {
        Err(format!("{v:?} is not DENY or SAMEORIGIN"))
    }
}

/// CSP Level 3 serialized policy: `;`-separated directives, each a name (letters, digits, `-`)
/// and optional values; a name at most once (browsers drop repeats).
fn check_csp(v: &str) -> Result<(), String> {
    if v.contains(',') {
        return Err("a `,` would start a second policy; give one policy".into());
    }
    let mut names: HashSet<String> = HashSet::new();
    for d in v.split(';').map(str::trim).filter(|d| !d.is_empty()) {
        let name = d.split(' ').next().unwrap_or(d);
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("{name:?} is not a directive name"));
        }
        if !names.insert(name.to_ascii_lowercase()) {
            return Err(format!("directive {name:?} appears twice"));
        }
    }
    if names.is_empty() {
        return Err("no directive".into());
    }
    Ok(())
}

const REFERRER_POLICIES: [&str; 8] = [
    "no-referrer",
    "no-referrer-when-downgrade",
    "same-origin",
    "origin",
    "strict-origin",
    "origin-when-cross-origin",
    "strict-origin-when-cross-origin",
    "unsafe-url",
];

/// A comma list of policy tokens (the last one a browser knows wins, so older browsers can be
/// given a fallback first). Browsers match tokens exactly, so case matters.
fn check_referrer_policy(v: &str) -> Result<(), String> {
    for t in v.split(',').map(str::trim) {
        if !REFERRER_POLICIES.contains(&t) {
            return Err(format!(
                "{t:?} is not a referrer policy ({})",
                REFERRER_POLICIES.join(", ")
            ));
        }
    }
    Ok(())
}

/// A structured-field dictionary: `feature=allowlist` members separated by commas; the
/// allowlist is `*`, `self`, `src`, a quoted origin, or an inner list `(…)` of those; members
/// may carry `;name=value` parameters (e.g. `report-to`).
fn check_permissions_policy(v: &str) -> Result<(), String> {
    let mut features = HashSet::new();
    for member in v.split(',').map(str::trim) {
        let (feature, rest) = member
            .split_once('=')
            .ok_or_else(|| format!("{member:?}: expected feature=allowlist"))?;
        let ok_key = |k: &str| {
            k.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
                && k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b))
        };
        if !ok_key(feature) {
            return Err(format!("{feature:?} is not a feature name"));
        }
        if !features.insert(feature) {
            return Err(format!("feature {feature:?} appears twice"));
        }
        let mut parts = rest.split(';');
        let allowlist = parts.next().unwrap_or("").trim();
        let bad = || {
            format!(
                "{feature}={allowlist}: the allowlist is *, self, src, \"origin\" or (…) of those"
            )
        };
        let item_ok = |i: &str| {
            matches!(i, "*" | "self" | "src")
                || (i.len() >= 2
                    && i.starts_with('"')
                    && i.ends_with('"')
                    && !i
                        .get(1..i.len() - 1)
                        .is_some_and(|inner| inner.contains(['"', '\\'])))
        };
        if let Some(inner) = allowlist.strip_prefix('(') {
            let inner = inner.strip_suffix(')').ok_or_else(bad)?;
            if !inner.split(' ').filter(|i| !i.is_empty()).all(item_ok) {
                return Err(bad());
            }
        } else if !item_ok(allowlist) {
            return Err(bad());
        }
        for param in parts {
            let (k, val) = param.trim().split_once('=').unwrap_or((param.trim(), "?1"));
            if !ok_key(k) || val.is_empty() {
                return Err(format!("{param:?} is not a parameter (;name=value)"));
            }
        }
    }
    Ok(())
}

/// Fetch matches these byte for byte.
fn check_corp(v: &str) -> Result<(), String> {
    if matches!(v, "same-origin" | "same-site" | "cross-origin") {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not same-origin, same-site or cross-origin"
        ))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_slot_match_names_exactly_the_slots() {
        for (i, slot) in SLOTS.iter().enumerate() {
            assert_eq!(slot_index(slot.name.as_str()), Some(i), "{}", slot.name);
            assert_eq!(builtin_removed_index(slot.name.as_str()), None);
        }
        assert_eq!(slot_index("x-frame-option"), None);
    }

    #[test]
    fn strip_then_fields_is_apply() {
        let upstream = [
            ("server", "nginx/1.2"),
            ("x-frame-options", "ALLOWALL"),
            ("strict-transport-security", "max-age=1"),
            ("content-type", "text/plain"),
            ("set-cookie", "a=1"),
            ("x-debug", "1"),
            ("set-cookie", "b=2"),
        ];
        let mut configs = vec![SecurityHeaders::default()];
        let mut custom = SecurityHeaders::default();
        custom.values[2] = None; // frame options off: the upstream's passes
        custom.extra_remove = vec![HeaderName::from_static("x-debug")];
        custom.rewire();
        configs.push(custom.clone());
        // Off, and removed by the route's own list: nobody's goes out.
        custom
            .extra_remove
            .push(HeaderName::from_static("x-frame-options"));
        configs.push(custom);
        for cfg in &configs {
            for tls in [false, true] {
                let mut map = HeaderMap::new();
                for (n, v) in upstream {
                    map.append(n, HeaderValue::from_static(v));
                }
                map.append("server", HeaderValue::from_static("again"));
                let mut applied = map.clone();
                cfg.apply(&mut applied, tls);
                // Skipping what `omits` names leaves exactly what `strip` leaves: the same
                // fields, each name's values in the same order (removal from the map moves
                // other names about; skipping keeps the upstream's order).
                let by_name = |fields: &mut Vec<(HeaderName, HeaderValue)>| {
                    fields.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
                };
                let mut kept: Vec<_> = map
                    .iter()
                    .filter(|(n, _)| !cfg.omits(n, tls))
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect();
                cfg.strip(&mut map, tls);
                let mut left: Vec<_> = map.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
                by_name(&mut kept);
                by_name(&mut left);
                assert_eq!(kept, left, "tls {tls}");
                // The wire form is the fields, in order, each `name: value` CRLF.
                let rendered: Vec<u8> = cfg
                    .fields(tls)
                    .flat_map(|(n, v)| [n.as_str().as_bytes(), b": ", v.as_bytes(), b"\r\n"])
                    .flatten()
                    .copied()
                    .collect();
                assert_eq!(cfg.wire(tls), rendered, "tls {tls}");
                for (n, v) in cfg.fields(tls) {
                    assert!(!map.contains_key(n), "{n} left by strip");
                    map.append(n.clone(), v.clone());
                }
                let sorted = |m: &HeaderMap| {
                    let mut v: Vec<(String, String)> = m
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                        .collect();
                    v.sort();
                    v
                };
                assert_eq!(sorted(&map), sorted(&applied), "tls {tls}");
            }
        }
    }

    #[test]
    fn the_removal_match_names_exactly_the_builtin_list() {
        for (i, n) in BUILTIN_REMOVE.iter().enumerate() {
            assert_eq!(builtin_removed_index(n.as_str()), Some(i), "{n}");
        }
        for n in ["x-powered", "servers", "x-request-id", "content-type", ""] {
            assert_eq!(builtin_removed_index(n), None, "{n}");
        }
    }

    use super::*;

    fn raw(yaml: &str) -> RawSecurityHeaders {
        match serde_yaml_ng::from_str(yaml) {
            Ok(r) => r,
            Err(e) => panic!("{yaml}: {e}"),
        }
    }

    fn errs(e: &ConfigErrors) -> Vec<String> {
        e.iter().map(|x| x.to_string()).collect()
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn sorted(h: &HeaderMap) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        v.sort();
        v
    }

    fn defaults_without_hsts() -> Vec<(String, String)> {
        let mut v = vec![
            (
                "content-security-policy".into(),
                "default-src 'none'; frame-ancestors 'none'".into(),
            ),
            ("cross-origin-resource-policy".into(), "same-origin".into()),
            (
                "permissions-policy".into(),
                DEFAULT_PERMISSIONS_POLICY.into(),
            ),
            ("referrer-policy".into(), "no-referrer".into()),
            ("x-content-type-options".into(), "nosniff".into()),
            ("x-frame-options".into(), "DENY".into()),
        ];
        v.sort();
        v
    }

    #[test]
    fn defaults_apply_with_and_without_tls() {
        let mut e = ConfigErrors::new();
        let g = compile_global(None, &mut e);
        assert!(e.is_empty());
        assert_eq!(g, SecurityHeaders::default());

        let mut h = HeaderMap::new();
        g.apply(&mut h, false);
        assert_eq!(sorted(&h), defaults_without_hsts());

        let mut h = HeaderMap::new();
        g.apply(&mut h, true);
        let mut want = defaults_without_hsts();
        want.push((
            "strict-transport-security".into(),
            "max-age=31536000; includeSubDomains".into(),
        ));
        want.sort();
        assert_eq!(sorted(&h), want);
    }

    #[test]
    fn only_the_revealing_headers_present_are_removed() {
        let g = compile_global(None, &mut ConfigErrors::new());
        for (i, name) in BUILTIN_REMOVE.iter().enumerate() {
            let mut h = map(&[
                ("content-type", "text/plain"),
                (name.as_str(), "x"),
                ("etag", "\"1\""),
                (name.as_str(), "y"),
            ]);
            g.apply(&mut h, false);
            assert!(!h.contains_key(name), "{i}: {name}");
            assert_eq!(h["content-type"], "text/plain");
            assert_eq!(h["etag"], "\"1\"");
        }
    }

    #[test]
    fn revealing_headers_removed_and_upstream_values_replaced() {
        let g = compile_global(None, &mut ConfigErrors::new());
        let mut h = map(&[
            ("Server", "nginx/1.25.3"),
            ("X-Powered-By", "PHP/8.2"),
            ("x-powered-by", "Express"),
            ("x-aspnet-version", "4.0.30319"),
            ("x-aspnetmvc-version", "5.2"),
            ("x-runtime", "0.012"),
            ("x-backend-server", "app-7.internal"),
            ("x-generator", "Drupal 10"),
            ("sourcemap", "/app.js.map"),
            ("x-sourcemap", "/app.js.map"),
            ("content-security-policy", "default-src *"),
            ("content-security-policy", "script-src 'unsafe-inline'"),
            ("x-frame-options", "ALLOWALL"),
            ("strict-transport-security", "max-age=0"),
            ("content-type", "application/json"),
            ("x-debug-token", "abc"),
        ]);
        g.apply(&mut h, true);
        let mut want = defaults_without_hsts();
        want.push((
            "strict-transport-security".into(),
            "max-age=31536000; includeSubDomains".into(),
        ));
        want.push(("content-type".into(), "application/json".into()));
        want.push(("x-debug-token".into(), "abc".into()));
        want.sort();
        assert_eq!(sorted(&h), want);
        assert_eq!(h.get_all("content-security-policy").iter().count(), 1);
    }

    #[test]
    fn route_inherits_absent_keys_and_false_turns_off() {
        let mut e = ConfigErrors::new();
        let g = compile_global(
            Some(&raw(
                "frame_options: SAMEORIGIN\nreferrer_policy: false\nremove: [x-debug-token, X-Trace]",
            )),
            &mut e,
        );
        let r = compile_route(
            Some(&raw(
                "content_security_policy: false\nstrict_transport_security: false\ncross_origin_resource_policy: cross-origin",
            )),
            &g,
            "routes[2].security_headers",
            &mut e,
        );
        assert!(e.is_empty(), "{:?}", errs(&e));
        let mut h = map(&[
            ("x-debug-token", "1"),
            ("x-trace", "2"),
            ("referrer-policy", "unsafe-url"),
            ("content-security-policy", "default-src 'self'"),
        ]);
        r.apply(&mut h, true);
        let mut want: Vec<(String, String)> = vec![
            // Off on the route: the upstream's passes.
            (
                "content-security-policy".into(),
                "default-src 'self'".into(),
            ),
            ("cross-origin-resource-policy".into(), "cross-origin".into()),
            (
                "permissions-policy".into(),
                DEFAULT_PERMISSIONS_POLICY.into(),
            ),
            // Off gateway-wide, inherited.
            ("referrer-policy".into(), "unsafe-url".into()),
            ("x-content-type-options".into(), "nosniff".into()),
            // Gateway-wide value, inherited.
            ("x-frame-options".into(), "SAMEORIGIN".into()),
        ];
        want.sort();
        assert_eq!(sorted(&h), want);
        let removed: Vec<&str> = r.removed_headers().map(|n| n.as_str()).collect();
        assert_eq!(&removed[9..], ["x-debug-token", "x-trace"]);
    }

    #[test]
    fn route_remove_list_replaces_the_global_one() {
        let mut e = ConfigErrors::new();
        let g = compile_global(Some(&raw("remove: [x-a, server, x-a]")), &mut e);
        // Deduplicated, built-ins not repeated.
        assert_eq!(g.extra_remove, vec![HeaderName::from_static("x-a")]);
        let r = compile_route(
            Some(&raw("remove: [x-b]")),
            &g,
            "routes[0].security_headers",
            &mut e,
        );
        assert!(e.is_empty());
        let mut h = map(&[("x-a", "1"), ("x-b", "2"), ("server", "s")]);
        r.apply(&mut h, false);
        assert_eq!(h.get("x-a").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert!(h.get("x-b").is_none());
        assert!(h.get("server").is_none());
        let none = compile_route(
            Some(&raw("remove: []")),
            &g,
            "routes[0].security_headers",
            &mut e,
        );
        assert!(none.extra_remove.is_empty());
    }

    #[test]
    fn route_without_section_is_the_global() {
        let g = compile_global(
            Some(&raw("frame_options: SAMEORIGIN")),
            &mut ConfigErrors::new(),
        );
        let r = compile_route(
            None,
            &g,
            "routes[0].security_headers",
            &mut ConfigErrors::new(),
        );
        assert_eq!(r, g);
        assert_ne!(r, SecurityHeaders::default());
        // An empty section is a copy with nothing changed.
        let r = compile_route(
            Some(&raw("{}")),
            &g,
            "routes[0].security_headers",
            &mut ConfigErrors::new(),
        );
        assert_eq!(r, g);
    }

    #[test]
    fn valid_values_are_accepted_trimmed() {
        let mut e = ConfigErrors::new();
        let g = compile_global(
            Some(&raw(concat!(
                "strict_transport_security: ' max-age=\"0\" ; preload;INCLUDESUBDOMAINS; '\n",
                "content_type_options: NoSniff\n",
                "frame_options: sameorigin\n",
                "content_security_policy: \"default-src 'self'; img-src https://x.example;\"\n",
                "referrer_policy: no-referrer, strict-origin-when-cross-origin\n",
                "permissions_policy: 'fullscreen=(self \"https://a.example\"), camera=*, usb=self;report-to=main, geolocation=()'\n",
                "cross_origin_resource_policy: same-site\n",
            ))),
            &mut e,
        );
        assert!(e.is_empty(), "{:?}", errs(&e));
        let set: Vec<(&str, &str)> = g
            .set_headers()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            set,
            vec![
                (
                    "strict-transport-security",
                    "max-age=\"0\" ; preload;INCLUDESUBDOMAINS;"
                ),
                ("x-content-type-options", "NoSniff"),
                ("x-frame-options", "sameorigin"),
                (
                    "content-security-policy",
                    "default-src 'self'; img-src https://x.example;"
                ),
                (
                    "referrer-policy",
                    "no-referrer, strict-origin-when-cross-origin"
                ),
                (
                    "permissions-policy",
                    "fullscreen=(self \"https://a.example\"), camera=*, usb=self;report-to=main, geolocation=()"
                ),
                ("cross-origin-resource-policy", "same-site"),
            ]
        );
    }

    fn one_error(yaml: &str) -> String {
        let mut e = ConfigErrors::new();
        let g = compile_global(None, &mut e);
        let r = compile_route(Some(&raw(yaml)), &g, "routes[1].security_headers", &mut e);
        // An invalid key keeps the inherited value.
        assert_eq!(r, g, "{yaml}");
        let v = errs(&e);
        assert_eq!(v.len(), 1, "{yaml}: {v:?}");
        v.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn refusals_name_the_key_and_the_problem() {
        let p = "routes[1].security_headers";
        let cases: &[(&str, String)] = &[
            (
                "frame_options: true",
                format!(
                    "{p}.frame_options: `true` is not a value: give the header's value, or `false` to turn it off"
                ),
            ),
            (
                "frame_options: '  '",
                format!(
                    "{p}.frame_options: empty: give a value, or `false` to turn the header off"
                ),
            ),
            (
                "content_security_policy: \"default-src 'self' é\"",
                format!(
                    "{p}.content_security_policy: \"default-src 'self' é\": 'é' is not allowed (printable ASCII only)"
                ),
            ),
            (
                "content_security_policy: \"default-src 'self'\\nx\"",
                format!(
                    "{p}.content_security_policy: \"default-src 'self'\\nx\": '\\n' is not allowed (printable ASCII only)"
                ),
            ),
            (
                "strict_transport_security: includeSubDomains",
                format!("{p}.strict_transport_security: must contain max-age=<seconds>"),
            ),
            (
                "strict_transport_security: max-age",
                format!("{p}.strict_transport_security: max-age needs a value: max-age=<seconds>"),
            ),
            (
                "strict_transport_security: max-age=1y",
                format!(
                    "{p}.strict_transport_security: max-age=1y: the value is a number of seconds"
                ),
            ),
            (
                "strict_transport_security: max-age=",
                format!(
                    "{p}.strict_transport_security: max-age=: the value is a number of seconds"
                ),
            ),
            (
                "strict_transport_security: max-age=99999999999999999999",
                format!(
                    "{p}.strict_transport_security: max-age=99999999999999999999: the value is a number of seconds"
                ),
            ),
            (
                "strict_transport_security: max-age=1; max-age=2",
                format!("{p}.strict_transport_security: directive \"max-age\" appears twice"),
            ),
            (
                "strict_transport_security: max-age=1; includeSubDomain",
                format!(
                    "{p}.strict_transport_security: unknown directive \"includeSubDomain\" (max-age, includeSubDomains, preload)"
                ),
            ),
            (
                "strict_transport_security: max-age=1; preload=yes",
                format!("{p}.strict_transport_security: preload takes no value"),
            ),
            (
                "content_type_options: sniff",
                format!("{p}.content_type_options: \"sniff\": the only value is nosniff"),
            ),
            (
                "frame_options: ALLOWALL",
                format!("{p}.frame_options: \"ALLOWALL\" is not DENY or SAMEORIGIN"),
            ),
            (
                "frame_options: ALLOW-FROM https://a.example",
                format!(
                    "{p}.frame_options: ALLOW-FROM is obsolete and ignored by browsers; use DENY or SAMEORIGIN, and frame-ancestors in content_security_policy"
                ),
            ),
            (
                "content_security_policy: \"default-src 'none', script-src 'self'\"",
                format!(
                    "{p}.content_security_policy: a `,` would start a second policy; give one policy"
                ),
            ),
            (
                "content_security_policy: \"default_src 'none'\"",
                format!("{p}.content_security_policy: \"default_src\" is not a directive name"),
            ),
            (
                "content_security_policy: \"img-src 'self'; IMG-SRC *\"",
                format!("{p}.content_security_policy: directive \"IMG-SRC\" appears twice"),
            ),
            (
                "content_security_policy: ' ; ;'",
                format!("{p}.content_security_policy: no directive"),
            ),
            (
                "referrer_policy: No-Referrer",
                format!(
                    "{p}.referrer_policy: \"No-Referrer\" is not a referrer policy (no-referrer, no-referrer-when-downgrade, same-origin, origin, strict-origin, origin-when-cross-origin, strict-origin-when-cross-origin, unsafe-url)"
                ),
            ),
            (
                "referrer_policy: 'no-referrer,'",
                format!(
                    "{p}.referrer_policy: \"\" is not a referrer policy (no-referrer, no-referrer-when-downgrade, same-origin, origin, strict-origin, origin-when-cross-origin, strict-origin-when-cross-origin, unsafe-url)"
                ),
            ),
            (
                "permissions_policy: camera",
                format!("{p}.permissions_policy: \"camera\": expected feature=allowlist"),
            ),
            (
                "permissions_policy: Camera=()",
                format!("{p}.permissions_policy: \"Camera\" is not a feature name"),
            ),
            (
                "permissions_policy: camera=(), camera=*",
                format!("{p}.permissions_policy: feature \"camera\" appears twice"),
            ),
            (
                "permissions_policy: camera=(self",
                format!(
                    "{p}.permissions_policy: camera=(self: the allowlist is *, self, src, \"origin\" or (…) of those"
                ),
            ),
            (
                "permissions_policy: camera=none",
                format!(
                    "{p}.permissions_policy: camera=none: the allowlist is *, self, src, \"origin\" or (…) of those"
                ),
            ),
            (
                "permissions_policy: camera=(self none)",
                format!(
                    "{p}.permissions_policy: camera=(self none): the allowlist is *, self, src, \"origin\" or (…) of those"
                ),
            ),
            (
                "permissions_policy: camera=();Report=x",
                format!("{p}.permissions_policy: \"Report=x\" is not a parameter (;name=value)"),
            ),
            (
                "cross_origin_resource_policy: Same-Origin",
                format!(
                    "{p}.cross_origin_resource_policy: \"Same-Origin\" is not same-origin, same-site or cross-origin"
                ),
            ),
            (
                "remove: ['bad name']",
                format!("{p}.remove[0]: \"bad name\" is not a header name"),
            ),
            (
                "remove: [Content-Length]",
                format!(
                    "{p}.remove[0]: \"Content-Length\" frames the body; the gateway manages it and it cannot be removed"
                ),
            ),
            (
                "remove: [transfer-encoding]",
                format!(
                    "{p}.remove[0]: \"transfer-encoding\" frames the body; the gateway manages it and it cannot be removed"
                ),
            ),
            (
                "remove: [Connection]",
                format!(
                    "{p}.remove[0]: \"Connection\" is a hop-by-hop field; the gateway manages it and it cannot be removed"
                ),
            ),
            (
                "remove: [upgrade]",
                format!(
                    "{p}.remove[0]: \"upgrade\" is a hop-by-hop field; the gateway manages it and it cannot be removed"
                ),
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(&one_error(yaml), want, "{yaml}");
        }
    }

    #[test]
    fn global_errors_use_the_top_level_path_and_keep_defaults() {
        let mut e = ConfigErrors::new();
        let g = compile_global(
            Some(&raw("frame_options: nope\nremove: [x-ok, '']")),
            &mut e,
        );
        assert_eq!(
            errs(&e),
            vec![
                "security_headers.frame_options: \"nope\" is not DENY or SAMEORIGIN",
                "security_headers.remove[1]: \"\" is not a header name",
            ]
        );
        let mut want = SecurityHeaders::default();
        want.extra_remove.push(HeaderName::from_static("x-ok"));
        assert_eq!(g, want);
    }

    #[test]
    fn unknown_keys_are_refused_by_the_parser() {
        let r: Result<RawSecurityHeaders, _> = serde_yaml_ng::from_str("frame_option: DENY");
        assert!(r.is_err());
    }
}
