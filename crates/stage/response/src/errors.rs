//! Error normalisation: `errors:` at the top level and on a route (overrides, key by key).
//! Upstream error bodies (stack traces, SQL, internal host names) are replaced by a generic
//! problem document; a masked excerpt of the original goes to the audit event.

use std::sync::LazyLock;

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use portcullis_core::ConfigErrors;
use portcullis_core::units::RawSize;
use regex::{Captures, Regex};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Raw

/// `errors:` (gateway-wide) and a route's `errors:`. On a route, a key left out inherits the
/// gateway-wide value; a key given replaces it (`keep` too: a route's list replaces the
/// gateway-wide list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawErrors {
    /// Replace upstream 5xx bodies with a generic problem document. Default `true`.
    #[serde(default)]
    pub replace_5xx: Option<bool>,
    /// Replace upstream 4xx bodies with a generic problem document. Default `false`.
    #[serde(default)]
    pub replace_4xx: Option<bool>,
    /// Statuses (400–599) never replaced, e.g. validation answers meant for clients.
    /// Default none.
    #[serde(default)]
    pub keep: Option<Vec<u16>>,
    /// How much of the original body (masked) the audit event records: 0 (nothing) to 16KiB.
    /// Default 1024.
    #[serde(default)]
    pub audit_bytes: Option<RawSize>,
}

// ---------------------------------------------------------------------------------------------
// Compiled

/// The largest `audit_bytes`: audit events stay small whatever upstreams answer.
pub const MAX_AUDIT_BYTES: usize = 16 * 1024;
pub const DEFAULT_AUDIT_BYTES: usize = 1024;

/// The `detail` of every generic problem document.
pub const GENERIC_DETAIL: &str =
    "The service could not complete the request. Quote the request id when reporting it.";

/// `Content-Type` of a generic body.
pub const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// Which upstream error bodies are replaced, and how much of them audit keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorPolicy {
    pub replace_5xx: bool,
    pub replace_4xx: bool,
    /// The most bytes of an original body the audit event records (0: none; at most
    /// [`MAX_AUDIT_BYTES`]).
    pub audit_bytes: usize,
    /// Bit `s - 400` set: status `s` is kept.
    keep: [u64; 4],
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy {
            replace_5xx: true,
            replace_4xx: false,
            keep: [0; 4],
            audit_bytes: DEFAULT_AUDIT_BYTES,
        }
    }
}

impl ErrorPolicy {
    /// Whether an upstream response with this status has its body replaced by
    /// [`generic_body`]: 5xx when `replace_5xx`, 4xx when `replace_4xx`, never a status in
    /// `keep`, never a status outside 400–599 (informational, success and redirect answers,
    /// and the non-standard 600–999).
    pub fn replaces(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        let class = match s {
            400..=499 => self.replace_4xx,
            500..=599 => self.replace_5xx,
            _ => return false,
        };
        class && !self.keeps(status)
    }

    /// Whether `status` is in `keep` (never replaced).
    pub fn keeps(&self, status: StatusCode) -> bool {
        let i = usize::from(status.as_u16().wrapping_sub(400));
        self.keep
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// How many bytes of the original body to read for [`ErrorPolicy::excerpt`]:
    /// `audit_bytes` plus [`EXCERPT_LOOKAHEAD`], or 0 when the excerpt is off.
    pub fn excerpt_read_bytes(&self) -> usize {
        if self.audit_bytes == 0 {
            0
        } else {
            self.audit_bytes + EXCERPT_LOOKAHEAD
        }
    }

    /// [`audit_excerpt`] with this policy's `audit_bytes`.
    pub fn excerpt(&self, body: &[u8]) -> String {
        audit_excerpt(body, self.audit_bytes)
    }
}

/// Compiles the gateway-wide `errors:` (the defaults when absent). Errors are recorded at
/// `errors.<key>`; an invalid key keeps its default.
pub fn compile_global(raw: Option<&RawErrors>, errors: &mut ConfigErrors) -> ErrorPolicy {
    let mut out = ErrorPolicy::default();
    if let Some(raw) = raw {
        apply_raw(&mut out, raw, "errors", errors);
    }
    out
}

/// Compiles a route's `errors:` over the compiled gateway-wide policy: a key left out
/// inherits, a key given replaces (an invalid key inherits). `path` is the section's own path
/// (`routes[3].errors`); errors are recorded at `<path>.<key>`.
pub fn compile_route(
    raw: Option<&RawErrors>,
    global: &ErrorPolicy,
    path: &str,
    errors: &mut ConfigErrors,
) -> ErrorPolicy {
    let mut out = *global;
    if let Some(raw) = raw {
        apply_raw(&mut out, raw, path, errors);
    }
    out
}

fn apply_raw(out: &mut ErrorPolicy, raw: &RawErrors, p: &str, e: &mut ConfigErrors) {
    if let Some(b) = raw.replace_5xx {
        out.replace_5xx = b;
    }
    if let Some(b) = raw.replace_4xx {
        out.replace_4xx = b;
    }
    if let Some(list) = &raw.keep {
        let mut keep = [0u64; 4];
        let mut ok = true;
        for (i, &s) in list.iter().enumerate() {
            if (400..=599).contains(&s) {
                let bit = usize::from(s - 400);
                if let Some(w) = keep.get_mut(bit / 64) {
                    *w |= 1u64 << (bit % 64);
                }
            } else {
                ok = false;
                e.push(
                    format!("{p}.keep[{i}]"),
                    format!("{s} is not an error status (400 to 599)"),
                );
            }
        }
        if ok {
            out.keep = keep;
        }
    }
    if let Some(size) = &raw.audit_bytes {
        let at = format!("{p}.audit_bytes");
        match size.parse() {
            Ok(n) if n <= MAX_AUDIT_BYTES as u64 => out.audit_bytes = n as usize,
            Ok(n) => e.push(
                at,
                format!("{n} bytes is more than {MAX_AUDIT_BYTES} (16KiB)"),
            ),
            Err(m) => e.push(at, m),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The generic body

/// The problem document (RFC 9457) that replaces an upstream error body. Members, in this
/// order and no others: `type` (`about:blank`: the status says it all), `title` (the status's
/// canonical reason phrase; `Client Error` / `Server Error` for a status without one),
/// `status`, `detail` ([`GENERIC_DETAIL`]) and `request_id`. Strings are JSON-escaped, so any
/// request id yields valid JSON.
pub fn generic_body(status: StatusCode, request_id: &str) -> String {
    let title = status
        .canonical_reason()
        .unwrap_or(if status.is_server_error() {
            "Server Error"
        } else if status.is_client_error() {
            "Client Error"
        } else {
            "Error"
        });
    let mut out = String::with_capacity(200 + request_id.len());
    out.push_str("{\"type\":\"about:blank\",\"title\":");
    portcullis_core::push_json_string(&mut out, title);
    out.push_str(",\"status\":");
    out.push_str(status.as_str());
    out.push_str(",\"detail\":");
    portcullis_core::push_json_string(&mut out, GENERIC_DETAIL);
    out.push_str(",\"request_id\":");
    portcullis_core::push_json_string(&mut out, request_id);
    out.push('}');
    out
}

/// The headers of a replaced error: only those that tell the client what to do next survive
/// (`Retry-After`, `WWW-Authenticate`, `Allow`); everything else the upstream said — its
/// representation, validators, cookies, and any header naming its internals — goes. Sets
/// `Content-Type: application/problem+json` and `Cache-Control: no-store` (a replaced error is
/// not worth caching). The caller sets `Content-Length`.
pub fn replaced_body_headers(headers: &mut HeaderMap) {
    const KEPT: [HeaderName; 3] = [header::RETRY_AFTER, header::WWW_AUTHENTICATE, header::ALLOW];
    let mut kept = HeaderMap::new();
    for name in KEPT {
        for v in headers.get_all(&name) {
            kept.append(name.clone(), v.clone());
        }
    }
    kept.insert(header::CONTENT_TYPE, PROBLEM_JSON);
    kept.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    *headers = kept;
}

// ---------------------------------------------------------------------------------------------
// The audit excerpt

/// Bytes read past `max` before masking, so that a secret straddling the cut is still
/// recognised whole (a card number, an e-mail address) and masked before the text is cut.
/// Callers that read a prefix of the body should read `max` plus this much.
pub const EXCERPT_LOOKAHEAD: usize = 256;

/// Secret-like key names, as a regular expression (for `concat!`), in the forms of
/// `MASK_PATTERN` that take a key:
/// * names containing `password`, `passwd`, `passphrase`, `pwd`, `secret`, `token`,
///   `api_key`/`api-key`/`apikey`, `-key`/`_key` (`x-client-key`, `private_key`),
///   `authorization`, `session`, `sessid`, `cookie`, `credential`, `signature` or `verifier`
///   (any case, any prefix or suffix: `access_token`, `password_hash`, `JSESSIONID`,
///   `Set-Cookie`, `X-Hub-Signature-256`, `code_verifier`);
/// * camelCase names with a `Key` word (`privateKey`, `signingKey`, `accessKeyId`);
/// * the short names `key`, `auth`, `pass`, `pin`, `sig`, `cvv`, `cvc`, `ssn`, `otp`, `totp` as
///   a whole word, optionally after `_`/`-`-joined words and before `code`/`number`
///   (`card_pin`, `x-auth`, `db_pass`, `otp_code`, `pinCode`, `passcode`) — never inside a
///   longer word (`monkey`, `author`, `bypass`, `passed`, `spin`, `pinned`, `design` stay);
/// * one-time codes: `code` after `device`, `user`, `verification`, `reset`, `recovery`,
///   `mfa`, `2fa`, `sms`, `security`, `activation` or `confirmation` (`device_code`,
///   `user_code` of RFC 8628, `verificationCode`, `security_code`).
///
/// `code` alone is not one of them: error bodies are made of `"code": "INVALID_ARGUMENT"`,
/// `status_code` and `error_code`, which an operator needs to read. The OAuth 2.0
/// authorization code is masked where it travels, as a URL's query or fragment parameter
/// (`?code=…`: the `kv` form only); `authorization_code` and `auth_code` are secret-like names
/// anyway.
macro_rules! secret_key {
    () => {
        concat!(
            r"[A-Za-z0-9_-]*(?i:password|passwd|passphrase|pwd|secret|token|api[_-]?key|[_-]key|authorization|session|sessid|cookie|credential|signature|verifier)[A-Za-z0-9_-]*",
            r"|[A-Za-z0-9_-]*[a-z0-9]Key[A-Za-z0-9_-]*",
            r"|\b(?:[A-Za-z0-9]+[_-])*(?i:key|auth|pass|pin|sig|cvv2?|cvc2?|ssn|otp|totp)(?:[_-]?(?i:code|number))?",
            r"|\b(?:[A-Za-z0-9]+[_-])*(?i:device|user|verification|reset|recovery|mfa|2fa|sms|security|activation|confirmation)[_-]?(?i:code)",
        )
    };
}

/// What is masked, in one pass (alternatives tried left to right at each position):
/// * `jwt`: `eyJ` and 8+ base64url characters, with up to four `.`-separated parts — a JWT
///   (JWS or JWE) or any base64url-encoded JSON object, also when cut short.
/// * `bearer`: `Bearer <token>`.
/// * `pem`: a PEM private key block (`-----BEGIN … PRIVATE KEY-----` to its end line), also as
///   the value of a secret-like key.
/// * `cookie`: a `Cookie:` or `Set-Cookie:` line (to its end, a quote or a backslash): the value
///   of every cookie on it, not only the first.
/// * A value named by a secret-like key (the keys: `secret_key!`), written as
///   * `pr`: a PHP `print_r` line, `[password] => hunter 2`: to the end of the line (or of a
///     JSON-escaped one, `\n`), since `print_r` does not quote;
///   * `el`: an XML element, `<password>…</password>`, `<ns:apiKey a="1">…`: its text up to
///     the next tag (or a CDATA section), when there is any;
///   * `cell`: a table cell after a header cell, `<td>password</td><td>…</td>`
///     (`<th>API key:</th>`, `<dt>…</dt><dd>…`): the second cell's text up to the next tag;
///     either cell's text may sit in up to three inline elements (`<td><b>password</b></td>`);
///   * `at`: an attribute or field naming it, then a `value` or `content` one within 256
///     characters: `<input name="password" value="…">`, `<add key="DbPassword" value="…"/>`,
///     `<meta name="csrf-token" content="…">`, `{"name":"DB_PASSWORD","value":"…"}`;
///   * `tt`: an element whose `name`, `key`, `id` or `property` attribute names it, without
///     such a value: its text (`<entry key="password">…</entry>`);
///   * `rv`: the same two the other way round, the value first (`<input value="…"
///     name="csrf_token">`);
///   * `kv`: the key, then `:`, `=` or `=>` (PHP, Ruby: `'password' => '…'`,
///     `"password"=>"…"`), after an optional closing quote and `]` (`user[password]=…`,
///     `["password"]=>` and `var_dump`'s `string(7)`), then a value: a quoted string (to its
///     closing quote, or to the end of the excerpt when cut), a PEM private key, or an
///     unquoted run (optionally after `Bearer `/`Basic `/`Digest `/`Token `). Here only, also
///     `code` as a URL's query or fragment parameter (`?code=…`, `&code=…`, `#code=…`: an OAuth
///     2.0 authorization code).
///
///   The surrounding text these forms pass over (other attributes, between the name and the
///   value) is masked in turn.
/// * `email`: `local@domain.tld`, also `local%40domain.tld`; the local part and the domain's
///   labels may hold non-ASCII characters, the labels also their percent-escapes
///   (`jöhn@exämple.com`, `ex%C3%A4mple.com`).
/// * `card`: 13 to 19 digits, single spaces or dashes allowed between them, not inside a
///   longer run of letters and digits (`_` is neither: `card_4111…` is masked).
/// * `iban`: two capital letters, two check digits, then 10 to 30 capitals or digits, in groups
///   of four with single spaces or none (`DE89 3704 0044 0532 0130 00`).
/// * `ssn`: a US social security number, `123-45-6789`. Like cards and IBANs, also after or
///   before a `_` (`ssn_123-45-6789`).
/// * `phone`: a number written as a phone number — with a `+` country code
///   (`+1 (555) 123-4567`, `+49 30 12345678`); a 3- to 5-digit area code in brackets or
///   followed by a space, `-` or `/`, then 6 to 8 digits in two groups (`(555) 123-4567`,
///   `555-123-4567`, `030/1234 5678`); or `0` and a digit, then four pairs (`01 23 45 67 89`).
///   Plain digit runs without such separators (ids, timestamps), dates (`2024-01-15 10:30`),
///   dotted versions and addresses are not phone numbers.
///
/// Scans that look for a second part (`at`, `tt`, `rv`, attributes) go at most 256 characters
/// and never past a `<` or `>`, so that a form that does not complete costs a bounded look
/// ahead, not a rescan of the rest of the excerpt for every start.
const MASK_PATTERN: &str = concat!(
    // A PEM private key, to its end line or the excerpt's end.
    r"(?P<pem>-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----)(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
    r"|(?P<jwt>eyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,4})",
    // Credentials in a URL's userinfo (`postgres://user:pass@host`): the user stays.
    r"|(?P<userinfo>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s/@]+@",
    r"|(?P<bearer>(?i:bearer)\s+)[A-Za-z0-9\-._~+/]+=*",
    // A cookie header line: every cookie on it (see `mask_cookies`).
    r#"|(?P<cookie>\b(?i:set-cookie|cookie)[ \t]*:[ \t]*)(?P<cookies>[^\r\n"\\<]+)"#,
    // PHP `print_r`: `[password] => hunter 2`, to the end of the (possibly JSON-escaped) line.
    r"|(?P<pr>\[(?:",
    secret_key!(),
    r")\][ \t]*=>[ \t]*)(?:[^\r\n\\]|\\[^nr\r\n])+",
    // An element named by the key: its text, or its CDATA section.
    r"|(?P<el><(?:[A-Za-z_][A-Za-z0-9_.-]*:)?(?:",
    secret_key!(),
    r"))(?P<elattrs>(?:\s[^<>]{0,256})?>)",
    r"(?:(?P<elcdata><!\[CDATA\[)(?s:.*?)(?:\]\]>|\z)|\s*[^<\s][^<]*)",
    // A table cell after a header cell naming the key (up to three more words around it).
    // Either cell's text may sit in up to three inline elements (`<td><b>password</b></td>`,
    // `<td><code>hunter2</code></td>`).
    r"|(?P<cell><(?i:t[dh]|dt)(?:\s[^<>]{0,256})?>\s*",
    r"(?:<(?i:b|strong|em|i|u|span|label|code|kbd|tt|small|samp|var|pre)(?:\s[^<>]{0,256})?>\s*){0,3}",
    r"(?:[A-Za-z0-9_-]+[ \t]+){0,3}(?:",
    secret_key!(),
    r")(?:[ \t]+[A-Za-z0-9_-]+){0,3}\s*:?\s*",
    r"(?:</(?i:b|strong|em|i|u|span|label|code|kbd|tt|small|samp|var|pre)\s*>\s*){0,3}",
    r"</(?i:t[dh]|dt)\s*>\s*<(?i:td|dd)(?:\s[^<>]{0,256})?>",
    r"(?:\s*<(?i:b|strong|em|i|u|span|code|kbd|tt|small|samp|var|pre)(?:\s[^<>]{0,256})?>){0,3})",
    r"\s*[^<\s][^<]*",
    // An attribute (or JSON field) naming the key, then its `value` or `content`.
    r#"|(?P<at>\b(?i:name|key|id|type|property)["']?\s*[:=]\s*["']?(?:[A-Za-z0-9_.-]*\[)?(?:"#,
    secret_key!(),
    r#")\]?["']?)(?P<atmid>[^<>]{0,256}?[^A-Za-z0-9_<>-](?i:value|content)["']?\s*[:=]\s*)"#,
    r#"(?:(?P<atdq>"[^"]*"?)|(?P<atsq>'[^']*'?)|[^\s"'<>,;}]+)"#,
    // An element whose attribute names the key, with no value attribute: its text.
    r#"|(?P<tt>\b(?i:name|key|id|property)\s*=\s*["']?(?:[A-Za-z0-9_.-]*\[)?(?:"#,
    secret_key!(),
    r#")\]?["']?)(?P<ttattrs>(?:\s[^<>]{0,256})?>)"#,
    r"(?:(?P<ttcdata><!\[CDATA\[)(?s:.*?)(?:\]\]>|\z)|\s*[^<\s][^<]*)",
    // The value first, then the attribute (or JSON field) naming the key.
    r#"|(?P<rv>[^A-Za-z0-9_-](?i:value|content)["']?\s*[:=]\s*)"#,
    r#"(?:(?P<rvdq>"[^"]*")|(?P<rvsq>'[^']*')|[^\s"'<>,;}]+)"#,
    r#"(?P<rvmid>[^<>]{0,256}?[^A-Za-z0-9_<>-])"#,
    r#"(?P<rvname>(?i:name|key|id|type|property)["']?\s*[:=]\s*["']?(?:[A-Za-z0-9_.-]*\[)?(?:"#,
    secret_key!(),
    r#")\]?["']?)"#,
    // `key: value`, `key=value`, `key => value`.
    r#"|(?P<kvkey>(?:"#,
    secret_key!(),
    r#"|[?&#](?i:code))["']?\]?\s*(?:=>|[:=])\s*(?:string\([0-9]+\)\s*)?)"#,
    r#"(?:(?P<dq>"(?:[^"\\]|\\.)*"?)|(?P<sq>'[^']*'?)"#,
    r"|(?P<kvpem>-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----)(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
    r#"|(?i:(?:bearer|basic|digest|token)\s+)?[^\s"'&,;{}\[\]<>]+)"#,
    r"|(?P<email>[A-Za-z0-9._%+-]|[^\x00-\x7F])(?:[A-Za-z0-9._%+-]|[^\x00-\x7F])*(?P<domain>(?:@|%40)",
    r"(?:[A-Za-z0-9-]|[^\x00-\x7F]|%[89A-Fa-f][0-9A-Fa-f])+",
    r"(?:\.(?:[A-Za-z0-9-]|[^\x00-\x7F]|%[89A-Fa-f][0-9A-Fa-f])+)*",
    r"\.(?:[A-Za-z]{2,}|[^\x00-\x7F]{2,}|(?:%[89A-Fa-f][0-9A-Fa-f]){2,}))",
    // `_` is a word character to `\b`, not to a reader: `card_4111…`, `4111…_2024.pdf`. An
    // `_` a match takes cannot start the next one, so numbers joined by `_` are one match,
    // masked one by one.
    r"|(?:\b|(?P<cardpre>_))(?P<card>[0-9](?:[ -]?[0-9]){12,18}(?:_[0-9](?:[ -]?[0-9]){12,18})*)(?:\b|(?P<cardpost>_))",
    r"|(?:\b|(?P<ibanpre>_))(?P<iban>[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)(?:\b|(?P<ibanpost>_))",
    r"|(?:\b|(?P<ssnpre>_))(?P<ssn>[0-9]{3}-[0-9]{2}-[0-9]{4})(?:\b|(?P<ssnpost>_))",
    r"|(?P<phone>\+[0-9]{1,3}[ -]?(?:\([0-9]{1,4}\)[ -]?)?[0-9]{2,5}(?:[ -]?[0-9]{2,5}){1,3}\b",
    r"|(?:\([0-9]{3,5}\) ?|\b[0-9]{3,5}[ /-])[0-9]{3,4}[ -]?[0-9]{3,4}\b",
    r"|\b0[1-9](?:[ .-][0-9]{2}){4}\b)",
);

static MASK: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(MASK_PATTERN).ok());

/// Shown instead of an excerpt if the masking expression could not be built (it is a constant
/// and a test builds it, so this is a fail-closed guard, not an expected path).
const UNAVAILABLE: &str = "[excerpt unavailable]";

/// Appended to an excerpt that does not show the whole body.
pub const TRUNCATED: &str = "…[truncated]";

/// A masked, bounded excerpt of an upstream body for the audit event.
///
/// `body` is the whole body or a prefix of it; nothing past `max` + [`EXCERPT_LOOKAHEAD`]
/// bytes is read, so a caller need read no more ([`ErrorPolicy::excerpt_read_bytes`]).
///
/// * The excerpt is the body's first `max` bytes, cut back to a character boundary.
/// * Text is decoded as UTF-8 (invalid sequences become U+FFFD); control characters other than
///   `\n` and `\t`, and the bidirectional overrides U+202A–U+202E and U+2066–U+2069, become
///   U+FFFD, so an excerpt cannot forge log lines or reorder what an operator reads.
/// * Secrets are masked: JWT-like tokens → `[jwt]`; `Bearer <token>` → `Bearer ****`; the value
///   of a secret-like key → `****` (quotes kept: `"password":"****"`, `'pass' => '****'`), and
///   so the text of an element or table cell named by one (`<password>****</password>`,
///   `<td>password</td><td>****</td>`) and the value of an attribute pair naming one
///   (`name="password" value="****"`); e-mail addresses →
///   first character, `***` and the domain (`j***@example.com`: the tenant stays visible, the
///   person does not); the password of a URL's userinfo (`postgres://app:****@db`); every
///   cookie value of a `Cookie:`/`Set-Cookie:` line (`Cookie: theme=****; sid=****`);
///   card-like digit runs → `****` and the last four digits; IBANs → `[iban]`, US social
///   security numbers → `[ssn]`, phone numbers → `[phone]` (`MASK_PATTERN` lists the
///   exact shapes). Matching looks
///   [`EXCERPT_LOOKAHEAD`] bytes past the cut, so a secret that starts before the cut is
///   recognised and masked whole, never shown in part.
/// * The result is at most `max` bytes (a mask longer than what it hides is cut too), followed
///   by [`TRUNCATED`] when the body (as passed) went on past the cut or the text was cut.
///   No total length is given: callers usually pass only a prefix.
///
/// `max` 0 or an empty body gives an empty string.
pub fn audit_excerpt(body: &[u8], max: usize) -> String {
    if max == 0 || body.is_empty() {
        return String::new();
    }
    let Some(re) = MASK.as_ref() else {
        return UNAVAILABLE.to_string();
    };
    let mut cut = max.min(body.len());
    // A character the cut splits starts at most three bytes back: cut before it (in two
    // parts it would decode as U+FFFD). Invalid sequences are left to the lossy decoding.
    for back in 1..=3 {
        let Some(i) = cut.checked_sub(back) else {
            break;
        };
        let Some(&b) = body.get(i) else { break };
        if b & 0xc0 == 0x80 {
            continue;
        }
        let len = match b {
            0xf0.. => 4,
            0xe0.. => 3,
            0xc0.. => 2,
            _ => 1,
        };
        if i + len > cut {
            cut = i;
        }
        break;
    }
    let end = body.len().min(max.saturating_add(EXCERPT_LOOKAHEAD));
    let (head, tail) = (
        body.get(..cut).unwrap_or_default(),
        body.get(cut..end).unwrap_or_default(),
    );
    let mut text = clean(head);
    let text_cut = text.len();
    text.push_str(&clean(tail));

    let mut out = String::with_capacity(text_cut.min(max) + TRUNCATED.len());
    let mut copied = 0;
    for caps in re.captures_iter(&text) {
        let Some(m) = caps.get(0) else { continue };
        if m.start() >= text_cut {
            break;
        }
        out.push_str(text.get(copied..m.start()).unwrap_or_default());
        out.push_str(&mask_one(re, &caps));
        copied = m.end();
    }
    if copied < text_cut {
        out.push_str(text.get(copied..text_cut).unwrap_or_default());
    }
    let mut truncated = cut < body.len();
    if out.len() > max {
        let mut at = max;
        while !out.is_char_boundary(at) {
            at -= 1;
        }
        out.truncate(at);
        truncated = true;
    }
    if truncated {
        out.push_str(TRUNCATED);
    }
    out
}

/// Decodes lossily and neutralises control and bidirectional-override characters.
fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if (c.is_control() && c != '\n' && c != '\t') || bidi {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

fn mask_one(re: &Regex, c: &Captures<'_>) -> String {
    let quoted = |dq: &str, sq: &str| {
        if c.name(dq).is_some() {
            "\""
        } else if c.name(sq).is_some() {
            "'"
        } else {
            ""
        }
    };
    if let Some(p) = c.name("pem") {
        format!("{}[private key]", p.as_str())
    } else if c.name("jwt").is_some() {
        "[jwt]".into()
    } else if let Some(u) = c.name("userinfo") {
        format!("{}****@", u.as_str())
    } else if let Some(b) = c.name("bearer") {
        format!("{}****", b.as_str())
    } else if let (Some(k), Some(list)) = (c.name("cookie"), c.name("cookies")) {
        format!("{}{}", k.as_str(), mask_cookies(list.as_str()))
    } else if let Some(k) = c.name("pr") {
        format!("{}****", k.as_str())
    } else if let (Some(k), Some(attrs)) = (c.name("el"), c.name("elattrs")) {
        // The tag's other attributes are text like any other: masked in turn.
        let text = if c.name("elcdata").is_some() {
            "<![CDATA[****]]>"
        } else {
            "****"
        };
        format!("{}{}{text}", k.as_str(), mask_text(re, attrs.as_str()))
    } else if let Some(k) = c.name("cell") {
        format!("{}****", mask_text(re, k.as_str()))
    } else if let (Some(k), Some(mid)) = (c.name("at"), c.name("atmid")) {
        let q = quoted("atdq", "atsq");
        format!("{}{}{q}****{q}", k.as_str(), mask_text(re, mid.as_str()))
    } else if let (Some(k), Some(attrs)) = (c.name("tt"), c.name("ttattrs")) {
        let text = if c.name("ttcdata").is_some() {
            "<![CDATA[****]]>"
        } else {
            "****"
        };
        format!("{}{}{text}", k.as_str(), mask_text(re, attrs.as_str()))
    } else if let (Some(k), Some(mid), Some(name)) =
        (c.name("rv"), c.name("rvmid"), c.name("rvname"))
    {
        let q = quoted("rvdq", "rvsq");
        format!(
            "{}{q}****{q}{}{}",
            k.as_str(),
            mask_text(re, mid.as_str()),
            name.as_str()
        )
    } else if let (Some(k), Some(p)) = (c.name("kvkey"), c.name("kvpem")) {
        format!("{}{}[private key]", k.as_str(), p.as_str())
    } else if let Some(k) = c.name("kvkey") {
        let q = quoted("dq", "sq");
        format!("{}{q}****{q}", k.as_str())
    } else if let (Some(first), Some(domain)) = (c.name("email"), c.name("domain")) {
        format!("{}***{}", first.as_str(), domain.as_str())
    } else if let Some(cards) = c.name("card") {
        let side = |n| c.name(n).map_or("", |m| m.as_str());
        let masked: Vec<String> = cards
            .as_str()
            .split('_')
            .map(|card| {
                let digits: Vec<char> = card.chars().filter(char::is_ascii_digit).collect();
                let last4: String = digits[digits.len().saturating_sub(4)..].iter().collect();
                format!("****{last4}")
            })
            .collect();
        format!(
            "{}{}{}",
            side("cardpre"),
            masked.join("_"),
            side("cardpost")
        )
    } else if c.name("iban").is_some() {
        let side = |n| c.name(n).map_or("", |m| m.as_str());
        format!("{}[iban]{}", side("ibanpre"), side("ibanpost"))
    } else if c.name("ssn").is_some() {
        let side = |n| c.name(n).map_or("", |m| m.as_str());
        format!("{}[ssn]{}", side("ssnpre"), side("ssnpost"))
    } else if c.name("phone").is_some() {
        "[phone]".into()
    } else {
        // Unreachable by construction (every alternative has a named group); masking the
        // whole match is the safe answer anyway.
        "****".into()
    }
}

/// `text` with every secret in it masked, whole (no cut, no look-ahead): the parts of a match
/// that are shown rather than masked (a tag's other attributes, what stands between a name and
/// its value) may hold secrets of their own. Each part is shorter than the match it came from,
/// so this ends; the forms that use it bound those parts to a few hundred characters.
fn mask_text(re: &Regex, text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for caps in re.captures_iter(text) {
        let Some(m) = caps.get(0) else { continue };
        out.push_str(text.get(copied..m.start()).unwrap_or_default());
        out.push_str(&mask_one(re, &caps));
        copied = m.end();
    }
    out.push_str(text.get(copied..).unwrap_or_default());
    out
}

/// The cookies of a `Cookie:` or `Set-Cookie:` line with their values masked, names and
/// separators kept: `theme=dark; sid=abc` → `theme=****; sid=****`. A part without `=` is a
/// nameless value, masked too, unless it is a `Set-Cookie` flag (`Secure`, `HttpOnly`,
/// `Partitioned`).
fn mask_cookies(list: &str) -> String {
    let mut out = String::with_capacity(list.len());
    for (i, part) in list.split(';').enumerate() {
        if i > 0 {
            out.push(';');
        }
        let body = part.trim_start();
        out.push_str(part.get(..part.len() - body.len()).unwrap_or_default());
        if let Some((name, _)) = body.split_once('=') {
            out.push_str(name);
            out.push_str("=****");
        } else if body.trim().is_empty()
            || ["secure", "httponly", "partitioned"]
                .iter()
                .any(|f| body.trim().eq_ignore_ascii_case(f))
        {
            out.push_str(body);
        } else {
            out.push_str("****");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawErrors {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn errs(e: &ConfigErrors) -> Vec<String> {
        e.iter().map(|x| x.to_string()).collect()
    }

    fn st(n: u16) -> StatusCode {
        StatusCode::from_u16(n).unwrap()
    }

    #[test]
    fn defaults() {
        let mut e = ConfigErrors::new();
        let p = compile_global(None, &mut e);
        assert!(e.is_empty());
        assert_eq!(p, ErrorPolicy::default());
        assert_eq!(p.audit_bytes, 1024);
        for (s, want) in [
            (200, false),
            (204, false),
            (302, false),
            (304, false),
            (400, false),
            (404, false),
            (422, false),
            (499, false),
            (500, true),
            (502, true),
            (503, true),
            (599, true),
            (600, false),
            (999, false),
            (100, false),
        ] {
            assert_eq!(p.replaces(st(s)), want, "{s}");
        }
    }

    #[test]
    fn replaces_matrix_with_keep() {
        let mut e = ConfigErrors::new();
        let p = compile_global(
            Some(&raw("replace_4xx: true\nkeep: [409, 422, 503, 599, 400]")),
            &mut e,
        );
        assert!(e.is_empty(), "{:?}", errs(&e));
        for (s, want) in [
            (200, false),
            (399, false),
            (400, false),
            (401, true),
            (404, true),
            (409, false),
            (422, false),
            (423, true),
            (499, true),
            (500, true),
            (503, false),
            (598, true),
            (599, false),
            (600, false),
        ] {
            assert_eq!(p.replaces(st(s)), want, "{s}");
        }
        assert!(p.keeps(st(409)) && p.keeps(st(503)) && !p.keeps(st(404)));
        assert!(!p.keeps(st(200)) && !p.keeps(st(999)));
        let off = compile_global(Some(&raw("replace_5xx: false")), &mut e);
        assert!(!off.replaces(st(500)));
        assert!(!off.replaces(st(404)));
    }

    #[test]
    fn route_overrides_key_by_key() {
        let mut e = ConfigErrors::new();
        let g = compile_global(
            Some(&raw("replace_4xx: true\nkeep: [422]\naudit_bytes: 2KiB")),
            &mut e,
        );
        assert_eq!(g.audit_bytes, 2048);
        // Absent keys inherit.
        let r = compile_route(
            Some(&raw("replace_5xx: false")),
            &g,
            "routes[0].errors",
            &mut e,
        );
        assert!(!r.replaces(st(500)));
        assert!(r.replaces(st(404)));
        assert!(!r.replaces(st(422)));
        assert_eq!(r.audit_bytes, 2048);
        // A keep list replaces the global one; audit_bytes 0 turns the excerpt off.
        let r = compile_route(
            Some(&raw("keep: [404]\naudit_bytes: 0")),
            &g,
            "routes[1].errors",
            &mut e,
        );
        assert!(r.replaces(st(422)));
        assert!(!r.replaces(st(404)));
        assert_eq!(r.audit_bytes, 0);
        assert_eq!(r.excerpt_read_bytes(), 0);
        assert_eq!(g.excerpt_read_bytes(), 2048 + 256);
        assert_eq!(r.excerpt(b"anything"), "");
        assert_eq!(g.excerpt(b"anything"), "anything");
        assert_eq!(compile_route(None, &g, "routes[2].errors", &mut e), g);
        assert!(e.is_empty(), "{:?}", errs(&e));
    }

    #[test]
    fn refusals_with_paths() {
        let mut e = ConfigErrors::new();
        let g = compile_global(
            Some(&raw("keep: [422, 302, 600]\naudit_bytes: 16385")),
            &mut e,
        );
        let r = compile_route(
            Some(&raw("keep: [399]\naudit_bytes: 1XB")),
            &g,
            "routes[4].errors",
            &mut e,
        );
        assert_eq!(
            errs(&e),
            vec![
                "errors.keep[1]: 302 is not an error status (400 to 599)",
                "errors.keep[2]: 600 is not an error status (400 to 599)",
                "errors.audit_bytes: 16385 bytes is more than 16384 (16KiB)",
                "routes[4].errors.keep[0]: 399 is not an error status (400 to 599)",
                "routes[4].errors.audit_bytes: \"1XB\": unknown size unit \"XB\"",
            ]
        );
        // Invalid keys keep what they would have inherited.
        assert_eq!(g, ErrorPolicy::default());
        assert_eq!(r, ErrorPolicy::default());
        // The largest allowed value.
        let mut e = ConfigErrors::new();
        let p = compile_global(Some(&raw("audit_bytes: 16KiB")), &mut e);
        assert!(e.is_empty());
        assert_eq!(p.audit_bytes, 16384);
        assert!(serde_yaml_ng::from_str::<RawErrors>("replace_3xx: true").is_err());
    }

    #[test]
    fn generic_body_is_exact_problem_json() {
        let body = generic_body(StatusCode::INTERNAL_SERVER_ERROR, "req-1");
        assert_eq!(
            body,
            "{\"type\":\"about:blank\",\"title\":\"Internal Server Error\",\"status\":500,\
             \"detail\":\"The service could not complete the request. Quote the request id \
             when reporting it.\",\"request_id\":\"req-1\"}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 5);
        let v: serde_json::Value =
            serde_json::from_str(&generic_body(StatusCode::NOT_FOUND, "x")).unwrap();
        assert_eq!(v["title"], "Not Found");
        assert_eq!(v["status"], 404);
        for (s, title) in [(599, "Server Error"), (499, "Client Error"), (299, "Error")] {
            let v: serde_json::Value = serde_json::from_str(&generic_body(st(s), "x")).unwrap();
            assert_eq!(v["title"], title);
            assert_eq!(v["status"], s);
        }
    }

    #[test]
    fn generic_body_escapes_a_hostile_request_id() {
        let hostile = "a\"},\"admin\":true,\"x\":\"\\\u{1}\u{1f}\n\r\t</script>é";
        let body = generic_body(StatusCode::BAD_GATEWAY, hostile);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let obj = v.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, ["detail", "request_id", "status", "title", "type"]);
        assert_eq!(v["request_id"], hostile);
        assert_eq!(v["title"], "Bad Gateway");
        assert_eq!(v["type"], "about:blank");
        assert_eq!(v["detail"], GENERIC_DETAIL);
        assert!(body.contains("\\u0001\\u001f\\n\\r\\t"));
    }

    #[test]
    fn replaced_body_headers_drop_the_representation() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-length", "9000"),
            ("content-encoding", "gzip"),
            ("content-type", "text/html"),
            ("etag", "\"x\""),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("content-language", "de"),
            ("digest", "sha-256=x"),
            ("retry-after", "30"),
            ("cache-control", "public, max-age=60"),
            ("x-exception", "NullPointerException at Db.java:12"),
            ("set-cookie", "debug=1"),
        ] {
            h.insert(
                http::HeaderName::from_static(k),
                HeaderValue::from_static(v),
            );
        }
        replaced_body_headers(&mut h);
        let mut got: Vec<(String, String)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("cache-control".to_string(), "no-store".to_string()),
                (
                    "content-type".to_string(),
                    "application/problem+json".to_string()
                ),
                ("retry-after".to_string(), "30".to_string()),
            ]
        );
    }

    #[test]
    fn mask_pattern_compiles() {
        assert!(MASK.is_some());
    }

    #[test]
    fn excerpt_masks_each_secret_kind() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        let cases: &[(&str, &str)] = &[
            (&format!("token was {jwt} here"), "token was [jwt] here"),
            ("jwe eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d end", "jwe [jwt] end"),
            (
                "Authorization: Bearer abc.DEF-123_~+/== x",
                "Authorization: **** x",
            ),
            ("sent bearer abc.DEF-123_~+/== x", "sent bearer **** x"),
            (
                r#"{"password":"hunter2","user":"ann"}"#,
                r#"{"password":"****","user":"ann"}"#,
            ),
            (
                r#"{"Password" : "a \"quoted\" pw"}"#,
                r#"{"Password" : "****"}"#,
            ),
            (
                r#"{"password_hash": "$2b$12$abc"}"#,
                r#"{"password_hash": "****"}"#,
            ),
            ("passwd=s3cret&next=1", "passwd=****&next=1"),
            ("client_secret: 'xyz abc'", "client_secret: '****'"),
            ("access_token=abc123;", "access_token=****;"),
            ("x-api-key: k-123", "x-api-key: ****"),
            ("apikey=k", "apikey=****"),
            ("API_KEY = k", "API_KEY = ****"),
            (
                "authorization: Basic dXNlcjpwYXNz rest",
                "authorization: **** rest",
            ),
            (r#"{"token": 12345}"#, r#"{"token": ****}"#),
            (
                "mail john.doe+x@mail.example.com now",
                "mail j***@mail.example.com now",
            ),
            ("card 4111111111111111.", "card ****1111."),
            (
                "connect(\"postgres://report:S3cr3t-pw@10.0.4.12/shop\")",
                "connect(\"postgres://report:****@10.0.4.12/shop\")",
            ),
            (
                "see https://example.com/a:b@c",
                "see https://example.com/a:b@c",
            ),
            ("card 4111 1111 1111 1234 ok", "card ****1234 ok"),
            ("card 5500-0000-0000-0004 ok", "card ****0004 ok"),
            ("card_4111111111111111 ok", "card_****1111 ok"),
            ("stmt_4111111111111111_2024.pdf", "stmt_****1111_2024.pdf"),
            ("a 4111111111111111 4111111111111112", "a ****1111 ****1112"),
            (
                "stmt_4111111111111111_4012888888881881.pdf",
                "stmt_****1111_****1881.pdf",
            ),
            (
                "4111111111111111_4012888888881881_5555555555554444_x",
                "****1111_****1881_****4444_x",
            ),
            ("4111111111111111_123 ok", "****1111_123 ok"),
            // SSNs and IBANs glued to a word by `_` too.
            ("ssn_123-45-6789 x", "ssn_[ssn] x"),
            ("123-45-6789_old", "[ssn]_old"),
            ("iban_DE89370400440532013000 x", "iban_[iban] x"),
            ("DE89370400440532013000_2024", "[iban]_2024"),
            ("id123-45-6789 kept", "id123-45-6789 kept"),
            ("x4111111111111111 kept", "x4111111111111111 kept"),
            ("4111111111111111y kept", "4111111111111111y kept"),
            ("short 123456789012 kept", "short 123456789012 kept"),
            (
                "long 12345678901234567890 kept",
                "long 12345678901234567890 kept",
            ),
            ("id ab1234567890123456 kept", "id ab1234567890123456 kept"),
            ("nothing secret here", "nothing secret here"),
            // Session identifiers, cookies, other credentials, key headers, private keys.
            (
                "Cookie: JSESSIONID=0A1B2C3D4E; lang=en",
                "Cookie: JSESSIONID=****; lang=****",
            ),
            ("JSESSIONID=0A1B2C3D4E&x=1", "JSESSIONID=****&x=1"),
            ("PHPSESSID: abc123", "PHPSESSID: ****"),
            (r#"{"pwd":"hunter2"}"#, r#"{"pwd":"****"}"#),
            (
                r#"{"passphrase": "open sesame"}"#,
                r#"{"passphrase": "****"}"#,
            ),
            (r#"{"credentials": "u:p"}"#, r#"{"credentials": "****"}"#),
            ("x-client-key: k-9f8e7d", "x-client-key: ****"),
            (
                "key: -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY----- after",
                "key: -----BEGIN PRIVATE KEY-----[private key] after",
            ),
            (
                r#"{"pk":"-----BEGIN RSA PRIVATE KEY-----\nMIIEow"#,
                r#"{"pk":"-----BEGIN RSA PRIVATE KEY-----[private key]"#,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(audit_excerpt(input.as_bytes(), 4096), *want, "{input}");
        }
    }

    /// Key names, personal numbers and cookie lines the first masks missed; and ordinary words
    /// and numbers that must stay readable.
    #[test]
    fn excerpt_masks_more_key_names_numbers_and_cookies() {
        let cases: &[(&str, &str)] = &[
            // camelCase key names.
            (r#"{"privateKey":"abc"}"#, r#"{"privateKey":"****"}"#),
            (r#"{"signingKey": "abc"}"#, r#"{"signingKey": "****"}"#),
            ("accessKey=AKIA123", "accessKey=****"),
            ("accessKeyId=AKIA123", "accessKeyId=****"),
            (r#"{"encryptionKey":"abc"}"#, r#"{"encryptionKey":"****"}"#),
            (r#"{"apiKey":"abc"}"#, r#"{"apiKey":"****"}"#),
            // Short key names, whole words only.
            (r#"{"key":"abc","id":1}"#, r#"{"key":"****","id":1}"#),
            (r#"{"auth": "abc"}"#, r#"{"auth": "****"}"#),
            ("x-auth: abc", "x-auth: ****"),
            (r#"{"pin":"1234"}"#, r#"{"pin":"****"}"#),
            ("card_pin=1234&x=1", "card_pin=****&x=1"),
            ("pinCode: 1234", "pinCode: ****"),
            ("cvv=123", "cvv=****"),
            (r#"{"CVC2":"123"}"#, r#"{"CVC2":"****"}"#),
            ("ssn: 078051120", "ssn: ****"),
            (r#"{"otp":"123456"}"#, r#"{"otp":"****"}"#),
            ("otp_code=123456", "otp_code=****"),
            (r#"{"secret":"x"}"#, r#"{"secret":"****"}"#),
            (r#"{"clientSecret":"x"}"#, r#"{"clientSecret":"****"}"#),
            ("SECRETS=x", "SECRETS=****"),
            // A private key as the value of a key: masked whole, never just its first word.
            (
                "private_key: -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY----- after",
                "private_key: -----BEGIN PRIVATE KEY-----[private key] after",
            ),
            // Phone numbers, with separators.
            ("call +1 (555) 123-4567 now", "call [phone] now"),
            ("tel +49 30 12345678.", "tel [phone]."),
            ("tel +4930123456 x", "tel [phone] x"),
            ("call (555) 123-4567 now", "call [phone] now"),
            ("call 555-123-4567 now", "call [phone] now"),
            ("call 555 123 4567 now", "call [phone] now"),
            ("ruf 030/1234 5678 an", "ruf [phone] an"),
            ("appelez 01 23 45 67 89", "appelez [phone]"),
            // US social security numbers.
            ("ssn 123-45-6789 on file", "ssn [ssn] on file"),
            (r#"{"id":"123-45-6789"}"#, r#"{"id":"[ssn]"}"#),
            // IBANs, with or without spaces.
            ("iban DE89370400440532013000 x", "iban [iban] x"),
            ("iban DE89 3704 0044 0532 0130 00 x", "iban [iban] x"),
            ("to GB29NWBK60161331926819.", "to [iban]."),
            ("NO9386011117947", "[iban]"),
            // Every cookie of a cookie line, not only the first.
            (
                "Cookie: theme=dark; auth=SECRET",
                "Cookie: theme=****; auth=****",
            ),
            (
                "cookie:theme=dark;sid=SECRET\nnext line",
                "cookie:theme=****;sid=****\nnext line",
            ),
            (
                "Set-Cookie: sid=SECRET; Path=/; Secure; HttpOnly",
                "Set-Cookie: sid=****; Path=****; Secure; HttpOnly",
            ),
            (
                r#"{"header":"Cookie: a=1; b=SECRET","x":1}"#,
                r#"{"header":"Cookie: a=****; b=****","x":1}"#,
            ),
            (r#"{"Cookie": "a=1; b=2"}"#, r#"{"Cookie": "****"}"#),
            // Ordinary words and numbers stay.
            ("monkey: banana", "monkey: banana"),
            ("keyboard=us", "keyboard=us"),
            ("author: Ann", "author: Ann"),
            ("spin=3 pinned: true", "spin=3 pinned: true"),
            (r#"{"key_id":"k1","keys":2}"#, r#"{"key_id":"k1","keys":2}"#),
            ("at 2024-01-15 10:30:00 UTC", "at 2024-01-15 10:30:00 UTC"),
            ("ts 1700000000 took 12 ms", "ts 1700000000 took 12 ms"),
            ("zip 12345-6789", "zip 12345-6789"),
            ("host 192.168.100.200:8080", "host 192.168.100.200:8080"),
            ("version 10.20.300.4000", "version 10.20.300.4000"),
            (
                "ISO8601 and RFC7231 and HTTP2",
                "ISO8601 and RFC7231 and HTTP2",
            ),
            ("error E1234: retry in 30 s", "error E1234: retry in 30 s"),
        ];
        for (input, want) in cases {
            assert_eq!(audit_excerpt(input.as_bytes(), 4096), *want, "{input}");
        }
    }

    /// Secrets that upstream error pages write without `key: value` or `key=value`: in markup
    /// (XML elements, HTML tables and form fields, .NET and Spring configuration), in PHP and
    /// Ruby dumps, and under key names the first list lacked. Each is a shape seen in real
    /// error pages; the audit trail promises to be free of credentials.
    #[test]
    fn excerpt_masks_secrets_in_markup_dumps_and_more_key_names() {
        let cases: &[(&str, &str)] = &[
            // An element named by the key: its text, to the next tag.
            (
                "<user>bob</user><password>hunter2</password>",
                "<user>bob</user><password>****</password>",
            ),
            ("<apiKey>AKIA1234567890</apiKey>", "<apiKey>****</apiKey>"),
            (
                "<ns2:Password type=\"plain\">hunter 2</ns2:Password>",
                "<ns2:Password type=\"plain\">****</ns2:Password>",
            ),
            (
                "<SessionToken>\n  FwoGZXIvYXdzE\n</SessionToken>",
                "<SessionToken>****</SessionToken>",
            ),
            (
                "<password><![CDATA[hun<ter>2]]></password>",
                "<password><![CDATA[****]]></password>",
            ),
            (
                "<Signature>c2lnbmF0dXJl</Signature>",
                "<Signature>****</Signature>",
            ),
            // A table cell after a header cell naming it.
            (
                "<tr><td>user</td><td>bob</td></tr><tr><td>password</td><td>hunter2</td></tr>",
                "<tr><td>user</td><td>bob</td></tr><tr><td>password</td><td>****</td></tr>",
            ),
            (
                "<th class=\"k\">API Key:</th> <td>AKIA1234567890</td>",
                "<th class=\"k\">API Key:</th> <td>****</td>",
            ),
            (
                "<dt>Secret</dt><dd>s3cr3t</dd>",
                "<dt>Secret</dt><dd>****</dd>",
            ),
            // Either cell's text inside inline elements.
            (
                "<tr><td><b>Password</b></td><td>hunter2</td></tr>",
                "<tr><td><b>Password</b></td><td>****</td></tr>",
            ),
            (
                "<tr><th><span class=\"l\"><strong>API key:</strong></span></th><td><code>AKIA1234567890</code></td></tr>",
                "<tr><th><span class=\"l\"><strong>API key:</strong></span></th><td><code>****</code></td></tr>",
            ),
            (
                "<td><b>user</b></td><td><code>bob</code></td>",
                "<td><b>user</b></td><td><code>bob</code></td>",
            ),
            // Form fields and configuration entries: name, then value — or the other way.
            (
                r#"<input name="password" value="hunter2">"#,
                r#"<input name="password" value="****">"#,
            ),
            (
                r#"<input type="password" id="pw" value='hunter2'/>"#,
                r#"<input type="password" id="pw" value='****'/>"#,
            ),
            (
                r#"<input name="user[password]" data-x="a@example.com" value=hunter2>"#,
                r#"<input name="user[password]" data-x="a***@example.com" value=****>"#,
            ),
            (
                r#"<input type="hidden" value="tok123" name="csrf_token">"#,
                r#"<input type="hidden" value="****" name="csrf_token">"#,
            ),
            (
                r#"<add key="DbPassword" value="hunter2" />"#,
                r#"<add key="DbPassword" value="****" />"#,
            ),
            (
                r#"<meta name="csrf-token" content="tok123">"#,
                r#"<meta name="csrf-token" content="****">"#,
            ),
            (
                r#"<entry key="password">hunter2</entry>"#,
                r#"<entry key="password">****</entry>"#,
            ),
            (
                r#"{"env":[{"name":"DB_PASSWORD","value":"hunter2"},{"name":"MODE","value":"prod"}]}"#,
                r#"{"env":[{"name":"DB_PASSWORD","value":"****"},{"name":"MODE","value":"prod"}]}"#,
            ),
            // PHP and Ruby dumps: `=>`, `] =>`, var_dump's `string(n)`.
            (
                "Array\n(\n    [user] => bob\n    [password] => hunter 2\n)",
                "Array\n(\n    [user] => bob\n    [password] => ****\n)",
            ),
            (
                r#"{"trace":"Array\n(\n [password] => hunter 2\n [user] => bob\n)"}"#,
                r#"{"trace":"Array\n(\n [password] => ****\n [user] => bob\n)"}"#,
            ),
            (
                "array('user' => 'bob', 'password' => 'hunter2',)",
                "array('user' => 'bob', 'password' => '****',)",
            ),
            (
                "[\"password\"]=>\n  string(7) \"hunter2\"",
                "[\"password\"]=>\n  string(7) \"****\"",
            ),
            (
                r#"{"email"=>"bob@x.io", "password"=>"hunter2"}"#,
                r#"{"email"=>"b***@x.io", "password"=>"****"}"#,
            ),
            ("user[password]=hunter2&x=1", "user[password]=****&x=1"),
            // Key names: `pass`, `signature`, `sig`, `verifier`, one-time codes.
            (
                r#"{"user":"bob","pass":"hunter2"}"#,
                r#"{"user":"bob","pass":"****"}"#,
            ),
            ("db_pass=hunter2", "db_pass=****"),
            ("passcode: 1234", "passcode: ****"),
            (r#"{"signature":"c2lnbmF0dXJl"}"#, r#"{"signature":"****"}"#),
            (
                "X-Hub-Signature-256: sha256=abc",
                "X-Hub-Signature-256: ****",
            ),
            (
                "/blob?sv=2022&sig=abc%2Bdef&se=1",
                "/blob?sv=2022&sig=****&se=1",
            ),
            ("code_verifier=dBjftJeZ4CVP", "code_verifier=****"),
            (r#"{"device_code":"GmRhmhcx"}"#, r#"{"device_code":"****"}"#),
            ("verificationCode: 123456", "verificationCode: ****"),
            // `code` as an OAuth authorization response parameter.
            (
                "GET /cb?code=SplxlOBeZQQYbYS6WxSbIA&state=xyz failed",
                "GET /cb?code=****&state=xyz failed",
            ),
            ("/cb?state=xyz&code=Splx", "/cb?state=xyz&code=****"),
            ("/cb#code=Splx&state=1", "/cb#code=****&state=1"),
            // E-mail addresses with an encoded `@` or an internationalised domain.
            ("user john.doe%40example.com", "user j***%40example.com"),
            ("to jöhn@exämple.com", "to j***@exämple.com"),
            ("to john.doe@ex%C3%A4mple.com", "to j***@ex%C3%A4mple.com"),
            // Ordinary words, codes and markup stay.
            (
                r#"{"error":{"code":"INVALID_ARGUMENT","status_code":400}}"#,
                r#"{"error":{"code":"INVALID_ARGUMENT","status_code":400}}"#,
            ),
            (
                "error_code=E42 country_code=DE",
                "error_code=E42 country_code=DE",
            ),
            (
                "<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>",
                "<Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>",
            ),
            (
                "bypass=1 passed: 3 compass=n",
                "bypass=1 passed: 3 compass=n",
            ),
            ("design=flat signal: ok", "design=flat signal: ok"),
            (
                "<td>user</td><td>bob</td><keyboard>us</keyboard>",
                "<td>user</td><td>bob</td><keyboard>us</keyboard>",
            ),
            (
                r#"<input name="email" value="x"> <password/> <token> </token>"#,
                r#"<input name="email" value="x"> <password/> <token> </token>"#,
            ),
            (
                "$a = ['mode' => 'fast', 'count' => 3];",
                "$a = ['mode' => 'fast', 'count' => 3];",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(audit_excerpt(input.as_bytes(), 4096), *want, "{input}");
        }
    }

    /// Forms that never complete — a name without its value, a value without its name, a tag
    /// that never closes — each followed by something that is masked (an address): a search
    /// that had to read to the end of the text before giving up the earlier start and settling
    /// for the address would make masking quadratic. Each start looks at most 256 characters
    /// ahead instead, so 256 KiB of them (16 times the largest excerpt) take a few milliseconds
    /// a piece, where an unbounded look-ahead takes seconds.
    #[test]
    fn excerpt_masking_stays_linear_on_forms_that_never_complete() {
        let re = MASK.as_ref().unwrap();
        for piece in [
            " value=\"x\" a@b.co ",
            "name=\"password\" a@b.co ",
            "\"name\":\"token\", a@b.co ",
            "<password a@b.co ",
            "<input type=\"password\" a@b.co ",
            "<td>password</td> a@b.co ",
        ] {
            let text = piece.repeat(256 * 1024 / piece.len());
            // (No clock — a timed bound flaked on a loaded machine: an unbounded look-ahead
            // makes this test take minutes, not fail.)
            let masked = mask_text(re, &text);
            assert!(!masked.contains("a@b"), "{piece:?}");
        }
    }

    #[test]
    fn excerpt_replaces_control_characters() {
        let got = audit_excerpt(b"a\r\nb\tc\x1b[31md\x00e\x7f\xc2\x85f\xe2\x80\xaeg", 100);
        assert_eq!(
            got,
            "a\u{fffd}\nb\tc\u{fffd}[31md\u{fffd}e\u{fffd}\u{fffd}f\u{fffd}g"
        );
        // Invalid UTF-8 is decoded lossily.
        assert_eq!(audit_excerpt(b"a\xffb", 100), "a\u{fffd}b");
    }

    #[test]
    fn excerpt_truncates_at_char_boundaries() {
        assert_eq!(audit_excerpt(b"", 10), "");
        assert_eq!(audit_excerpt(b"abc", 0), "");
        assert_eq!(audit_excerpt(b"abc", 3), "abc");
        assert_eq!(audit_excerpt(b"abcd", 3), "abc…[truncated]");
        // `é` is two bytes (1..3): a cut at 2 falls inside it and backs off to 1.
        assert_eq!(audit_excerpt("aébc".as_bytes(), 2), "a…[truncated]");
        assert_eq!(audit_excerpt("aébc".as_bytes(), 3), "aé…[truncated]");
        // A four-byte character cut anywhere inside.
        for max in 1..=4 {
            assert_eq!(
                audit_excerpt("x🦀".as_bytes(), max),
                "x…[truncated]",
                "{max}"
            );
        }
        assert_eq!(audit_excerpt("x🦀".as_bytes(), 5), "x🦀");
        // A prefix that ends inside a character: that character is dropped.
        assert_eq!(audit_excerpt(&"x🦀".as_bytes()[..3], 10), "x…[truncated]");
        // Invalid bytes before the cut are not mistaken for a split character (the cut stays
        // at 4, not 1); their two U+FFFD (3 bytes each) then do not fit in 4 bytes.
        assert_eq!(audit_excerpt(b"ab\x80\x80\x80\x80cd", 4), "ab…[truncated]");
        assert_eq!(
            audit_excerpt(b"ab\x80\x80\x80\x80cd", 100),
            "ab\u{fffd}\u{fffd}\u{fffd}\u{fffd}cd"
        );
    }

    #[test]
    fn excerpt_masks_secrets_straddling_the_cut() {
        // The card starts before the cut and ends after it: masked before cutting, so none of
        // its leading digits leak.
        let body = "card: 4111111111111111 and more text after it";
        assert_eq!(
            audit_excerpt(body.as_bytes(), 12),
            "card: ****11…[truncated]"
        );
        let body = "to: john.doe@example.com";
        assert_eq!(audit_excerpt(body.as_bytes(), 9), "to: j***@…[truncated]");
        // A quoted secret running past the end of the window is masked to its end.
        let mut body = String::from("{\"password\":\"");
        body.push_str(&"p".repeat(1000));
        body.push_str("\"}");
        assert_eq!(
            audit_excerpt(body.as_bytes(), 30),
            "{\"password\":\"****\"…[truncated]"
        );
        // Only `max` + EXCERPT_LOOKAHEAD bytes are looked at: a prefix of that length gives
        // the same excerpt as the whole body.
        let prefix = &body.as_bytes()[..30 + EXCERPT_LOOKAHEAD];
        assert_eq!(
            audit_excerpt(prefix, 30),
            audit_excerpt(body.as_bytes(), 30)
        );
        // A secret that starts after the cut is not shown at all, however much a long token
        // before it shrank when masked.
        let body = format!(
            "{} 4111111111111111 tail",
            "eyJhbGciOiJIUzI1NiJ9.".repeat(15)
        );
        assert_eq!(audit_excerpt(body.as_bytes(), 40), "[jwt]…[truncated]");
        assert_eq!(
            audit_excerpt(format!("ab {}", body).as_bytes(), 2),
            "ab…[truncated]"
        );
        // A masked value longer than the original can push the text past `max`.
        let got = audit_excerpt(b"a@b.co", 6);
        assert_eq!(got, "a***@b…[truncated]");
    }
}
