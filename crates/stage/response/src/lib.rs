//! # portcullis-response
//!
//! Response security the engine applies to every response: security headers and removal of
//! revealing headers ([`headers`]), replacement of upstream error bodies ([`errors`]), and
//! removal of JSON fields by name or path ([`remove`]). Configuration compiles once into the
//! values here; applying them is pure (a [`http::HeaderMap`], a [`serde_json::Value`], bytes)
//! and never fails or panics on what an upstream sends. The integrator wires them into the
//! proxy.
//!
//! ## Security headers — `security_headers:` (top level and per route)
//!
//! ```yaml
//! security_headers:
//!   strict_transport_security: "max-age=31536000; includeSubDomains"  # TLS listeners only
//!   content_type_options: nosniff
//!   frame_options: DENY
//!   content_security_policy: "default-src 'none'; frame-ancestors 'none'"
//!   referrer_policy: no-referrer
//!   permissions_policy: "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()"
//!   cross_origin_resource_policy: same-origin
//!   remove: [x-debug-token]
//! ```
//!
//! * The values above are the defaults: every header is on unless turned off. A value is a
//!   string (trimmed; printable ASCII) or `false` (turns the header off); `true` is refused.
//! * Each value's syntax is checked at load time, since browsers silently ignore a malformed
//!   header: `strict_transport_security` needs `max-age=<seconds>` and knows only
//!   `includeSubDomains` and `preload`, each at most once; `content_type_options` is `nosniff`;
//!   `frame_options` is `DENY` or `SAMEORIGIN` (case-insensitive; `ALLOW-FROM` is obsolete);
//!   `content_security_policy` is one policy (no `,`) of `;`-separated directives, none
//!   repeated; `referrer_policy` is a comma list of the standard tokens (exact case);
//!   `permissions_policy` is a dictionary of `feature=allowlist` (allowlist `*`, `self`, `src`,
//!   `"origin"` or `(…)` of those; `;param=value` allowed), no feature repeated;
//!   `cross_origin_resource_policy` is `same-origin`, `same-site` or `cross-origin`.
//! * Applying ([`SecurityHeaders::apply`]) first removes the revealing headers, then sets every
//!   enabled header, **replacing** any value the upstream sent: the gateway is the enforcement
//!   point, so an upstream cannot weaken the policy. A header turned off is neither set nor
//!   removed (the upstream's value, if any, passes). `Strict-Transport-Security` is sent only
//!   on TLS (`tls`: the client's connection is HTTPS, as the integrator determines it).
//! * Always removed, on every route, and not configurable ([`BUILTIN_REMOVE`]): `server`,
//!   `x-powered-by`, `x-aspnet-version`, `x-aspnetmvc-version`, `x-runtime`,
//!   `x-backend-server`, `x-generator`, `sourcemap`, `x-sourcemap` — they name the upstream's
//!   software, version, host or source code. `remove` adds names (case-insensitive) to that
//!   list; `content-length` and `transfer-encoding` cannot be removed (they frame the body).
//!   Removal happens before setting, so listing a header the gateway sets is harmless, and
//!   combined with `false` it strips the upstream's without sending one.
//! * A route's `security_headers:` overrides key by key: a key left out inherits the
//!   gateway-wide value, a key given replaces it, `false` turns that header off for the route.
//!   A route's `remove` list replaces the gateway-wide list (repeat entries to keep them); the
//!   built-in list always applies.
//!
//! ## Compiling
//!
//! Every compile function records each problem with its configuration path in
//! [`portcullis_core::ConfigErrors`] and carries on, so one check reports them all. Route
//! functions take the path of the route's section itself (`routes[3].security_headers`) and
//! inherit from the *compiled* gateway-wide value, so a mistake in the gateway-wide section is
//! reported once. At the crate root:
//!
//! | Section | Gateway-wide | Route |
//! |---|---|---|
//! | `security_headers` | [`compile_global`] → [`SecurityHeaders`] | [`compile_route`] → [`SecurityHeaders`] |
//! | `errors` | [`compile_errors_global`] → [`ErrorPolicy`] | [`compile_errors_route`] → [`ErrorPolicy`] |
//! | `response_filter` | — | [`compile_response_filter`] → `Option<`[`ResponseFilterRules`]`>` |
//!
//! ## Error normalisation — `errors:` (top level and per route)
//!
//! ```yaml
//! errors:
//!   replace_5xx: true    # default true
//!   replace_4xx: false   # default false
//!   keep: [409, 422]     # never replaced; 400–599; default none
//!   audit_bytes: 1024    # 0 to 16KiB (sizes as elsewhere: 1024, 1KiB); default 1024
//! ```
//!
//! * [`ErrorPolicy::replaces`] says whether an upstream response's body is replaced: a 5xx when
//!   `replace_5xx`, a 4xx when `replace_4xx`, never a status in `keep`, never a status outside
//!   400–599.
//! * The replacement is [`generic_body`], an RFC 9457 document with
//!   exactly `type` (`about:blank`), `title` (the canonical reason phrase), `status`, `detail`
//!   (`The service could not complete the request. Quote the request id when reporting it.`)
//!   and `request_id`. [`replaced_body_headers`](errors::replaced_body_headers) keeps only
//!   `Retry-After`, `WWW-Authenticate` and `Allow` of the upstream's headers and sets
//!   `application/problem+json` and `no-store`. Upstream responses only: the gateway's own problem responses are generic
//!   already.
//! * [`audit_excerpt`] gives the audit event at most `audit_bytes` bytes from the start of the
//!   original body: decoded lossily, control and bidi-override characters neutralised, secrets
//!   masked (JWT-like tokens, bearer tokens, values after keys that name a password, secret,
//!   token, key, authorization, session, cookie, credential, pin, cvv, ssn or otp, cookie
//!   values, PEM private keys, e-mail local parts, card-like digit runs, IBANs, social
//!   security and phone numbers; see `errors::MASK_PATTERN`), `…[truncated]` appended
//!   when cut. It needs at most `audit_bytes` + 256 bytes of the body
//!   ([`ErrorPolicy::excerpt_read_bytes`]); the extra bytes let a secret straddling the cut be
//!   masked whole. `audit_bytes: 0` records nothing.
//! * A route's `errors:` overrides key by key; a route's `keep` replaces the gateway-wide list.
//!
//! ## JSON field removal — `response_filter:` (per route)
//!
//! ```yaml
//! response_filter:
//!   remove: [internal_id, "$.items[*].cost_price", "$..password_hash", "$.meta['debug info']"]
//!   max_bytes: 1MiB          # default 1MiB, at most 64MiB
//!   on_unfilterable: reject  # reject (502, default) | pass
//! ```
//!
//! Paths:
//! * A **bare name** (`internal_id`) removes that key from every object at any depth (it is
//!   `$..internal_id`). It may not contain `.`, `[`, `]`, `*`, quotes, `\`, whitespace or
//!   control characters, nor start with `$` (use a `$`-path for such keys).
//! * A **`$`-path** starts at the body and is a sequence of steps, with no whitespace between
//!   them:
//!   * `.name` — that member of an object. `name` runs to the next `.` or `[` and may not
//!     contain `]`, `*`, quotes, `\`, whitespace or control characters.
//!   * `['name']` or `["name"]` — the same for any key; inside, `\'` (resp. `\"`) and `\\` are
//!     the only escapes. `['*']` is a key named `*`.
//!   * `.*` or `[*]` — every member of an object, every element of an array.
//!   * `[N]` — element `N` (from 0, no leading zeros, no negative indices) of an array, counted
//!     in the body as received.
//!   * `..name`, `..['name']`, `..*`, `..[N]` — recursive descent: the step applied to the
//!     current position's children and to all their descendants, through objects and arrays.
//! * A name never selects an array element and an index never selects an object key; a path
//!   that matches nothing changes nothing. What a path ends at (a member or an element) is
//!   removed whole; removing `$` itself is refused.
//! * Refused at load time, at `<route>.response_filter.remove[i]` with the path and the
//!   character offset: empty paths, syntax errors, more than 64 steps; at `…remove`: an empty
//!   list, more than 256 paths, and sets of paths whose automaton would exceed 4096 states.
//! * The rules compile into an automaton ([`RemoveRules`], a [`portcullis_core::JsonFilter`]);
//!   applying walks the body once, iteratively, and descends only where a rule can still match.
//! * `max_bytes` and `on_unfilterable` tell the engine what to buffer and what to do with a body
//!   it cannot filter (not JSON, compressed, over `max_bytes`): `reject` answers 502, `pass`
//!   forwards it unchanged.

#![forbid(unsafe_code)]

pub mod errors;
pub mod headers;
pub mod remove;

pub use errors::{
    ErrorPolicy, RawErrors, audit_excerpt, compile_global as compile_errors_global,
    compile_route as compile_errors_route, generic_body,
};
pub use headers::{
    BUILTIN_REMOVE, RawHeaderSetting, RawSecurityHeaders, SecurityHeaders, compile_global,
    compile_route,
};
pub use remove::{
    OnUnfilterable, RawResponseFilter, RemoveRules, ResponseFilterRules,
    compile as compile_response_filter,
};
