//! Rego policies evaluated in process (the `regorus` interpreter).
//!
//! * **Takes**: `.rego` files and an optional data document, loaded once per configuration
//!   snapshot; per request a rule reference (`data.orders.allow`) and the input document.
//! * **Produces**: a [`PolicyDecision`]: allow or deny, the policy's reasons, headers for the
//!   upstream request.
//! * **Rejects** (as `Err`, so that the caller fails closed): a runtime error, a result of the
//!   wrong shape, an invalid or framing header in a permit, an evaluation that exceeds its
//!   time limit. A result with `allow: false` is a deny even when the rest of it is malformed.
//!
//! Speed: modules are parsed and analysed once, at load. A regorus engine needs `&mut` to
//! evaluate, so instead of one engine behind a lock every request would queue on, prepared
//! clones are kept in small pools, one pool per group of threads: a request takes a clone from
//! its thread's pool (an uncontended lock held for a `Vec::pop`), evaluates without any lock,
//! and puts it back. A clone that failed an evaluation is dropped rather than reused.
//!
//! `interpret` reads a policy result the same way for this engine and for an external OPA
//! server (see [`crate::opa`]).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

/// What a policy decided.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDecision {
    pub allow: bool,
    /// Why, as the policy said it (may be empty).
    pub reasons: Vec<String>,
    /// Headers the policy asks to add to the request sent upstream (validated names/values).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// Reason given when the queried rule produced no value.
pub const UNDEFINED_REASON: &str = "policy result undefined";

/// Most headers one decision may add.
const MAX_POLICY_HEADERS: usize = 32;

/// Headers a policy may not set: they frame or route the upstream request, and a policy that
/// echoes input into them could smuggle a second request.
/// Framing and hop-by-hop names no policy may set.
pub(crate) const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Reads a policy result. `None` is an undefined result (no value): a deny, not an error.
///
/// Shapes: a boolean is the decision; an object carries `allow` (boolean, required),
/// `reasons` (a string or an array of strings, optional) and `headers` (an object of string
/// values, optional). An object whose `allow` is `false` is a deny whatever else is wrong with
/// it: a malformed `reasons` or `headers` beside it is logged and named among the reasons, so
/// that no caller can turn the policy's refusal into an error (which `on_error: open` would
/// let through). Anything else that is malformed — no `allow`, an `allow` that is not a
/// boolean, a permit with a malformed part — is an error.
pub(crate) fn interpret(result: Option<&serde_json::Value>) -> Result<PolicyDecision, String> {
    use serde_json::Value as J;
    let Some(result) = result else {
        return Ok(PolicyDecision {
            allow: false,
            reasons: vec![UNDEFINED_REASON.to_owned()],
            headers: Vec::new(),
        });
    };
    let fields = match result {
        J::Bool(allow) => {
            return Ok(PolicyDecision {
                allow: *allow,
                reasons: Vec::new(),
                headers: Vec::new(),
            });
        }
        J::Object(fields) => fields,
        other => {
            return Err(format!(
                "policy result must be a boolean or an object, not {}",
                json_kind(other)
            ));
        }
    };
    let allow = match fields.get("allow") {
        Some(J::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "policy result: `allow` must be a boolean, not {}",
                json_kind(other)
            ));
        }
        None => return Err("policy result: the object has no `allow`".to_owned()),
    };
    let reasons = read_reasons(fields.get("reasons"));
    let headers = read_headers(fields.get("headers"));
    if allow {
        return Ok(PolicyDecision {
            allow,
            reasons: reasons?,
            headers: headers?,
        });
    }
    // A deny: its headers would never be sent, and nothing malformed beside it may undo it.
    let mut problems = Vec::new();
    let mut reasons = reasons.unwrap_or_else(|e| {
        problems.push(e);
        Vec::new()
    });
    if let Err(e) = headers {
        problems.push(e);
    }
    for problem in problems {
        tracing::warn!(error = %problem, "policy denied with a malformed answer; the deny stands");
        reasons.push(format!("malformed answer beside allow: false ({problem})"));
    }
    Ok(PolicyDecision {
        allow: false,
        reasons,
        headers: Vec::new(),
    })
}

/// `reasons` of a result object: absent, a string, or an array of strings.
fn read_reasons(value: Option<&serde_json::Value>) -> Result<Vec<String>, String> {
    use serde_json::Value as J;
    match value {
        None => Ok(Vec::new()),
        Some(J::String(s)) => Ok(vec![s.clone()]),
        Some(J::Array(items)) => items
            .iter()
            .map(|item| match item {
                J::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "policy result: `reasons` must hold strings, not {}",
                    json_kind(other)
                )),
            })
            .collect(),
        Some(other) => Err(format!(
            "policy result: `reasons` must be a string or an array of strings, not {}",
            json_kind(other)
        )),
    }
}

/// `headers` of a result object: absent, or an object of string values whose names and
/// values are valid and may be set by a policy.
fn read_headers(
    value: Option<&serde_json::Value>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    use serde_json::Value as J;
    let map = match value {
        None => return Ok(Vec::new()),
        Some(J::Object(map)) => map,
        Some(other) => {
            return Err(format!(
                "policy result: `headers` must be an object of strings, not {}",
                json_kind(other)
            ));
        }
    };
    if map.len() > MAX_POLICY_HEADERS {
        return Err(format!(
            "policy result: more than {MAX_POLICY_HEADERS} headers"
        ));
    }
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("policy result: invalid header name {name:?}"))?;
        if FORBIDDEN_HEADERS.contains(&header.as_str()) {
            return Err(format!(
                "policy result: header {name:?} may not be set by a policy"
            ));
        }
        let J::String(value) = value else {
            return Err(format!(
                "policy result: header {name:?} must be a string, not {}",
                json_kind(value)
            ));
        };
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("policy result: invalid value for header {name:?}"))?;
        out.push((header, value));
    }
    Ok(out)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Rego modules compiled once per configuration snapshot; Send + Sync; evaluated concurrently
/// from many tasks.
pub struct RegoPolicies {
    /// Modules parsed and analysed, data loaded, time limit set: what every clone starts from.
    template: Engine,
    /// Prepared clones ready for use; a thread always uses the same shard.
    shards: Box<[Mutex<Vec<Engine>>]>,
}

/// Interpreter steps between two reads of the clock for the time limit: frequent enough that
/// a runaway loop stops close to the limit, rare enough that the clock costs nothing.
const TIME_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::MIN.saturating_add(15);

/// Prepared clones kept per shard (more than one thread may share a shard).
const CLONES_PER_SHARD: usize = 4;

/// Shard of the current thread: threads are numbered as they first evaluate.
fn shard_of_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SHARD.with(|s| *s)
}

impl RegoPolicies {
    /// Loads `.rego` files. `files`: (config path used in error messages, e.g.
    /// `authz.rego.files[0]`, file path). `data`: an optional data document (a JSON object)
    /// available as `data.…`. `eval_timeout`: a bound on one evaluation (an evaluation that
    /// exceeds it is an error; zero makes every evaluation fail).
    ///
    /// Policies are Rego v1 (OPA 1.0 syntax: `if`, `contains`; `import rego.v1` is accepted).
    ///
    /// Returns every error, each as (config path, message with file:line:col): every file that
    /// cannot be read or parsed, then the analysis errors (unsafe variables, recursion…) of the
    /// files that parsed, one per file. An invalid data document is reported under `data`.
    pub fn load(
        files: &[(String, PathBuf)],
        data: Option<serde_json::Value>,
        eval_timeout: Duration,
    ) -> Result<RegoPolicies, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut sources = Vec::with_capacity(files.len());
        for (config_path, file) in files {
            let name = file.display().to_string();
            let text = match std::fs::read_to_string(file) {
                Ok(t) => t,
                Err(e) => {
                    errors.push((config_path.clone(), format!("{name}: {e}")));
                    continue;
                }
            };
            // Parse alone first, so that every file with a syntax error is reported.
            let mut probe = Engine::new();
            match probe.add_policy(name.clone(), text.clone()) {
                Ok(_) => sources.push((config_path.clone(), name, text)),
                Err(e) => errors.push((config_path.clone(), tidy_error(&e.to_string()))),
            }
        }
        let data = match data {
            None => None,
            Some(d @ serde_json::Value::Object(_)) => Some(to_rego(&d)),
            Some(_) => {
                errors.push((
                    "data".to_owned(),
                    "the data document must be a JSON object".to_owned(),
                ));
                None
            }
        };
        let timer = ExecutionTimerConfig {
            limit: eval_timeout,
            check_interval: TIME_CHECK_INTERVAL,
        };
        // Analysis needs all modules together (rules refer to one another): analyse, and on an
        // error set aside the file it names and analyse the rest, so each file's first error
        // is reported.
        let mut remaining = sources;
        let template = loop {
            match prepared_engine(&remaining, data.as_ref(), timer) {
                Ok(engine) => break Some(engine),
                Err((Blame::File(index), message)) => {
                    let (config_path, _, _) = remaining.remove(index);
                    errors.push((config_path, message));
                }
                Err((Blame::Data, message)) => {
                    errors.push(("data".to_owned(), message));
                    break None;
                }
                Err((Blame::Unknown, message)) => {
                    let config_path = remaining
                        .first()
                        .map_or_else(|| "data".to_owned(), |(p, _, _)| p.clone());
                    errors.push((config_path, message));
                    break None;
                }
            }
        };
        // In the order of the configuration, the data document last.
        errors.sort_by_key(|(config_path, _)| {
            files
                .iter()
                .position(|(p, _)| p == config_path)
                .unwrap_or(files.len())
        });
        match template {
            Some(template) if errors.is_empty() => {
                let shards = std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(4)
                    .clamp(1, 64);
                let shards = (0..shards).map(|_| Mutex::new(Vec::new())).collect();
                Ok(RegoPolicies { template, shards })
            }
            _ => Err(errors),
        }
    }

    /// For `portcullis check`: `query` is a rule reference such as `data.orders.allow`; Err if
    /// the loaded modules define no such rule (or the reference is malformed).
    pub fn check_query(&self, query: &str) -> Result<(), String> {
        check_reference(query)?;
        let mut engine = self.template.clone();
        engine
            .compile_with_entrypoint(&query.into())
            .map(|_| ())
            .map_err(|_| format!("no rule {query} in the loaded policies"))
    }

    /// Evaluates `query` with `input`. Result shapes: a boolean → allow = it; an object →
    /// `allow` (boolean, required), `reasons` (array of strings or one string, optional),
    /// `headers` (object of string → string, optional); undefined → Ok(deny, reasons
    /// ["policy result undefined"]).
    ///
    /// Errors (runtime error, wrong shape, invalid header name/value in a permit, time limit
    /// exceeded) → Err(message): the caller fails closed. `allow: false` with a malformed
    /// `reasons` or `headers` is a deny, not an error.
    pub fn evaluate(
        &self,
        query: &str,
        input: &serde_json::Value,
    ) -> Result<PolicyDecision, String> {
        let result = self.evaluate_raw(query, input)?;
        interpret(result.as_ref())
    }

    /// The value of `query` as JSON (`None` when undefined), before any interpretation.
    pub(crate) fn evaluate_raw(
        &self,
        query: &str,
        input: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, String> {
        let shard = &self.shards[shard_of_thread() % self.shards.len()];
        let pooled = match shard.lock() {
            Ok(mut clones) => clones.pop(),
            Err(_) => None,
        };
        let mut engine = pooled.unwrap_or_else(|| self.template.clone());
        engine.set_input(to_rego(input));
        let value = engine
            .eval_rule(query.to_owned())
            .map_err(|e| format!("policy {query}: {}", tidy_error(&e.to_string())))?;
        // Only a clone whose evaluation completed goes back to the pool.
        if let Ok(mut clones) = shard.lock()
            && clones.len() < CLONES_PER_SHARD
        {
            clones.push(engine);
        }
        if value == Value::Undefined {
            return Ok(None);
        }
        serde_json::to_value(&value)
            .map(Some)
            .map_err(|e| format!("policy {query}: result not representable as JSON: {e}"))
    }
}

/// What an analysis error is about.
enum Blame {
    /// The file at this index of the sources.
    File(usize),
    Data,
    /// The message names no loaded file.
    Unknown,
}

/// An engine with `sources` and `data`, analysed.
fn prepared_engine(
    sources: &[(String, String, String)],
    data: Option<&Value>,
    timer: ExecutionTimerConfig,
) -> Result<Engine, (Blame, String)> {
    let mut engine = Engine::new();
    engine.set_execution_timer_config(timer);
    for (i, (_, name, text)) in sources.iter().enumerate() {
        engine
            .add_policy(name.clone(), text.clone())
            .map_err(|e| (Blame::File(i), tidy_error(&e.to_string())))?;
    }
    if let Some(data) = data {
        engine
            .add_data(data.clone())
            .map_err(|e| (Blame::Data, format!("data document: {e}")))?;
    }
    // Evaluating the empty rule path runs the analysis (done once, kept by every clone) and
    // then stops: no rule has that path.
    match engine.eval_rule(String::new()) {
        Ok(_) => Ok(engine),
        Err(e) if e.to_string() == "not a valid rule path" => Ok(engine),
        Err(e) => {
            let message = tidy_error(&e.to_string());
            let blame = sources
                .iter()
                .position(|(_, name, _)| message.starts_with(&format!("{name}:")))
                .map_or(Blame::Unknown, Blame::File);
            Err((blame, message))
        }
    }
}

/// regorus reports `\n--> file:line:col\n  |\nN | source\n  | ^\nerror: what`; this keeps
/// `file:line:col: what` and the offending source line, on one line.
fn tidy_error(message: &str) -> String {
    let mut location = None;
    let mut what = None;
    let mut source = None;
    for line in message.lines() {
        let line = line.trim_end();
        if let Some(l) = line.trim_start().strip_prefix("--> ") {
            location = Some(l.trim());
        } else if let Some(w) = line.strip_prefix("error: ") {
            what = Some(w.trim());
        } else if source.is_none()
            && let Some((n, text)) = line.split_once(" | ")
            && n.trim().parse::<u32>().is_ok()
        {
            source = Some(text.trim());
        }
    }
    match (location, what) {
        (Some(l), Some(w)) => match source {
            Some(s) if !s.is_empty() => format!("{l}: {w} (in `{s}`)"),
            _ => format!("{l}: {w}"),
        },
        _ => message.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// `data.a.b_c`: `data` then identifiers, separated by dots (the form rules are looked up by).
fn check_reference(query: &str) -> Result<(), String> {
    let malformed = || {
        format!(
            "{query:?} is not a rule reference (expected data.<package>.<rule>, e.g. data.orders.allow)"
        )
    };
    let mut parts = query.split('.');
    if parts.next() != Some("data") {
        return Err(malformed());
    }
    let mut count = 0;
    for part in parts {
        let mut chars = part.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(malformed());
        }
        count += 1;
    }
    if count < 2 {
        return Err(malformed());
    }
    Ok(())
}

/// JSON to a regorus value, directly (no text round trip).
fn to_rego(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => {
            Value::from(items.iter().map(to_rego).collect::<Vec<_>>())
        }
        serde_json::Value::Object(fields) => Value::from(
            fields
                .iter()
                .map(|(k, v)| (Value::from(k.as_str()), to_rego(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;
    use std::time::Instant;

    const ORDERS: &str = r#"
package orders

import rego.v1

default allow := false

allow if {
    "read:orders" in input.principal.scopes
    input.request.method == "GET"
}

decision := {"allow": count(deny) == 0, "reasons": deny}

deny contains "scope read:orders is missing" if not "read:orders" in input.principal.scopes

deny contains "only GET is allowed" if input.request.method != "GET"

one_reason := {"allow": false, "reasons": "tenant mismatch"}

with_headers := {"allow": true, "headers": {"X-Tenant": input.principal.tenant, "x-plan": "gold"}}

bad_header_name := {"allow": true, "headers": {"bad header": "x"}}

bad_header_value := {"allow": true, "headers": {"x-echo": input.value}}

framing_header := {"allow": true, "headers": {"Content-Length": "0"}}

admins_only if input.principal.admin == true

divide := 1 / input.zero

wrong_shape := 42

no_allow := {"reasons": ["x"]}

deny_with_bad_reasons := {"allow": false, "reasons": [7]}

deny_with_framing_header := {"allow": false, "headers": {"Content-Length": "0"}}

role_allowed if data.roles[input.principal.sub][_] == input.request.method
"#;

    /// Writes each (name, source) to a temporary directory and loads them as
    /// `authz.rego.files[i]`.
    fn load_sources(
        sources: &[(&str, &str)],
        data: Option<serde_json::Value>,
        timeout: Duration,
    ) -> (
        tempfile::TempDir,
        Result<RegoPolicies, Vec<(String, String)>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(String, PathBuf)> = sources
            .iter()
            .enumerate()
            .map(|(i, (name, text))| {
                let path = dir.path().join(name);
                std::fs::write(&path, text).unwrap();
                (format!("authz.rego.files[{i}]"), path)
            })
            .collect();
        let loaded = RegoPolicies::load(&files, data, timeout);
        (dir, loaded)
    }

    fn orders() -> RegoPolicies {
        let data = json!({"roles": {"alice": ["GET", "POST"]}});
        let (_dir, loaded) = load_sources(
            &[("orders.rego", ORDERS)],
            Some(data),
            Duration::from_secs(1),
        );
        loaded.unwrap()
    }

    fn input(scopes: &[&str], method: &str) -> serde_json::Value {
        json!({
            "principal": {"sub": "alice", "scopes": scopes, "tenant": "acme"},
            "request": {"method": method, "path": "/orders/42", "params": {"id": "42"}},
            "value": "a\u{1}b",
            "zero": 0,
        })
    }

    #[test]
    fn boolean_result_is_the_decision() {
        let p = orders();
        let d = p
            .evaluate("data.orders.allow", &input(&["read:orders"], "GET"))
            .unwrap();
        assert!(d.allow);
        assert!(d.reasons.is_empty() && d.headers.is_empty());
        let d = p
            .evaluate("data.orders.allow", &input(&["write:orders"], "GET"))
            .unwrap();
        assert!(!d.allow);
    }

    #[test]
    fn object_result_with_reasons_as_array_or_string() {
        let p = orders();
        let d = p
            .evaluate("data.orders.decision", &input(&["read:orders"], "GET"))
            .unwrap();
        assert_eq!(
            d,
            PolicyDecision {
                allow: true,
                reasons: vec![],
                headers: vec![]
            }
        );
        let d = p
            .evaluate("data.orders.decision", &input(&[], "DELETE"))
            .unwrap();
        assert!(!d.allow);
        assert_eq!(
            d.reasons,
            vec!["only GET is allowed", "scope read:orders is missing"]
        );
        let d = p
            .evaluate("data.orders.one_reason", &input(&[], "GET"))
            .unwrap();
        assert!(!d.allow);
        assert_eq!(d.reasons, vec!["tenant mismatch"]);
    }

    #[test]
    fn headers_are_validated() {
        let p = orders();
        let d = p
            .evaluate("data.orders.with_headers", &input(&[], "GET"))
            .unwrap();
        assert!(d.allow);
        let mut headers: Vec<(String, String)> = d
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        assert_eq!(
            headers,
            vec![
                ("x-plan".to_owned(), "gold".to_owned()),
                ("x-tenant".to_owned(), "acme".to_owned())
            ]
        );
        let e = p
            .evaluate("data.orders.bad_header_name", &input(&[], "GET"))
            .unwrap_err();
        assert!(e.contains("invalid header name"), "{e}");
        let e = p
            .evaluate("data.orders.bad_header_value", &input(&[], "GET"))
            .unwrap_err();
        assert!(e.contains("invalid value for header"), "{e}");
        let e = p
            .evaluate("data.orders.framing_header", &input(&[], "GET"))
            .unwrap_err();
        assert!(e.contains("may not be set"), "{e}");
    }

    #[test]
    fn undefined_is_a_deny_with_a_reason() {
        let p = orders();
        let d = p
            .evaluate("data.orders.admins_only", &input(&[], "GET"))
            .unwrap();
        assert_eq!(
            d,
            PolicyDecision {
                allow: false,
                reasons: vec![UNDEFINED_REASON.to_owned()],
                headers: vec![]
            }
        );
    }

    #[test]
    fn runtime_errors_and_wrong_shapes_are_errors() {
        let p = orders();
        let e = p
            .evaluate("data.orders.divide", &input(&[], "GET"))
            .unwrap_err();
        assert!(
            e.contains("divide by zero") && e.contains("orders.rego:"),
            "{e}"
        );
        let e = p
            .evaluate("data.orders.wrong_shape", &input(&[], "GET"))
            .unwrap_err();
        assert!(e.contains("boolean or an object"), "{e}");
        let e = p
            .evaluate("data.orders.no_allow", &input(&[], "GET"))
            .unwrap_err();
        assert!(e.contains("no `allow`"), "{e}");
        let e = p
            .evaluate("data.orders.nope", &input(&[], "GET"))
            .unwrap_err();
        assert!(e.contains("data.orders.nope"), "{e}");
        // The pool is still healthy after failed evaluations.
        let d = p
            .evaluate("data.orders.allow", &input(&["read:orders"], "GET"))
            .unwrap();
        assert!(d.allow);
    }

    #[test]
    fn interpret_reads_every_shape() {
        let ok = |v: serde_json::Value| interpret(Some(&v));
        assert!(ok(json!(true)).unwrap().allow);
        assert!(!ok(json!(false)).unwrap().allow);
        assert!(ok(json!({"allow": true, "reasons": []})).unwrap().allow);
        assert!(ok(json!({"allow": "yes"})).is_err());
        assert!(ok(json!({"allow": true, "reasons": [1]})).is_err());
        assert!(ok(json!({"allow": true, "reasons": {"a": 1}})).is_err());
        assert!(ok(json!({"allow": true, "headers": ["x"]})).is_err());
        assert!(ok(json!({"allow": true, "headers": {"x-a": 1}})).is_err());
        assert!(ok(json!({"allow": true, "headers": {"Transfer-Encoding": "chunked"}})).is_err());
        assert!(ok(json!(null)).is_err());
        assert!(ok(json!(["allow"])).is_err());
        let many: serde_json::Map<_, _> = (0..=MAX_POLICY_HEADERS)
            .map(|i| (format!("x-h{i}"), json!("v")))
            .collect();
        assert!(ok(json!({"allow": true, "headers": many})).is_err());
        assert!(!interpret(None).unwrap().allow);
    }

    #[test]
    fn an_explicit_deny_stands_whatever_else_the_answer_holds() {
        let read = |v: serde_json::Value| interpret(Some(&v));
        for answer in [
            json!({"allow": false, "reasons": [{"code": 7}]}),
            json!({"allow": false, "reasons": 7}),
            json!({"allow": false, "headers": ["x"]}),
            json!({"allow": false, "headers": {"bad header": "x"}}),
            json!({"allow": false, "headers": {"Transfer-Encoding": "chunked"}}),
            json!({"allow": false, "reasons": [null], "headers": {"x-a": 1}}),
        ] {
            let d = match read(answer.clone()) {
                Ok(d) => d,
                Err(e) => panic!("{answer}: a deny turned into an error: {e}"),
            };
            assert!(!d.allow, "{answer}");
            assert!(d.headers.is_empty(), "{answer}");
            // What was wrong is said among the reasons (it reaches the audit event).
            assert!(
                d.reasons.iter().any(|r| r.contains("malformed")),
                "{answer}: {:?}",
                d.reasons
            );
        }
        // The well-formed part of a deny is kept.
        let d = read(json!({"allow": false, "reasons": ["no"], "headers": 1})).unwrap();
        assert_eq!(d.reasons[0], "no");
        // Only a missing or invalid `allow`, or a malformed permit, is an error.
        assert!(read(json!({"reasons": ["x"]})).is_err());
        assert!(read(json!({"allow": "false", "reasons": ["x"]})).is_err());
        assert!(read(json!({"allow": null})).is_err());
        assert!(read(json!({"allow": true, "reasons": [{"code": 7}]})).is_err());
        assert!(read(json!({"allow": true, "headers": {"bad header": "x"}})).is_err());
        // In process too.
        let p = orders();
        for rule in ["deny_with_bad_reasons", "deny_with_framing_header"] {
            let d = p
                .evaluate(&format!("data.orders.{rule}"), &input(&[], "GET"))
                .unwrap();
            assert!(!d.allow, "{rule}");
        }
    }

    #[test]
    fn an_expensive_policy_hits_the_time_limit() {
        let src = r#"
package slow

allow if {
    count([x | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000); x := i * j]) > 0
}
"#;
        let (_dir, p) = load_sources(&[("slow.rego", src)], None, Duration::from_millis(50));
        let p = p.unwrap();
        let started = Instant::now();
        let e = p.evaluate("data.slow.allow", &json!({})).unwrap_err();
        assert!(e.contains("time limit"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn every_broken_file_is_reported_with_its_config_path_and_line() {
        let good = "package good\n\nallow := true\n";
        let syntax = "package a\n\nallow if {\n    input.x ==\n}\n";
        let unsafe_var = "package b\n\nallow if {\n    x > 1\n}\n";
        let (dir, loaded) = load_sources(
            &[
                ("a.rego", syntax),
                ("good.rego", good),
                ("b.rego", unsafe_var),
            ],
            None,
            Duration::from_secs(1),
        );
        let Err(errors) = loaded else {
            panic!("broken files loaded")
        };
        assert_eq!(errors.len(), 2, "{errors:?}");
        let a = dir.path().join("a.rego").display().to_string();
        let b = dir.path().join("b.rego").display().to_string();
        assert_eq!(errors[0].0, "authz.rego.files[0]");
        assert!(errors[0].1.starts_with(&format!("{a}:5:1: ")), "{errors:?}");
        assert_eq!(errors[1].0, "authz.rego.files[2]");
        assert!(errors[1].1.starts_with(&format!("{b}:4:5: ")), "{errors:?}");
        assert!(errors[1].1.contains("unsafe"), "{errors:?}");

        // Two analysis errors in two files are both reported too.
        let unsafe_too = "package c\n\ndeny if {\n    y < 1\n}\n";
        let (dir, loaded) = load_sources(
            &[("b.rego", unsafe_var), ("c.rego", unsafe_too)],
            None,
            Duration::from_secs(1),
        );
        let errors = loaded.err().unwrap();
        let c = dir.path().join("c.rego").display().to_string();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].0, "authz.rego.files[0]");
        assert_eq!(errors[1].0, "authz.rego.files[1]");
        assert!(errors[1].1.starts_with(&format!("{c}:4:5: ")), "{errors:?}");
    }

    #[test]
    fn unreadable_files_and_bad_data_are_reported() {
        let files = vec![(
            "authz.rego.files[0]".to_owned(),
            PathBuf::from("/nonexistent/x.rego"),
        )];
        let errors = RegoPolicies::load(&files, Some(json!([1])), Duration::from_secs(1))
            .err()
            .unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].0, "authz.rego.files[0]");
        assert!(errors[0].1.contains("/nonexistent/x.rego"));
        assert_eq!(errors[1].0, "data");
    }

    #[test]
    fn check_query_knows_the_rules() {
        let p = orders();
        assert!(p.check_query("data.orders.allow").is_ok());
        assert!(p.check_query("data.orders.deny").is_ok());
        assert!(p.check_query("data.orders.missing").is_err());
        assert!(p.check_query("data.billing.allow").is_err());
        for malformed in [
            "orders.allow",
            "data.orders",
            "data.orders.",
            "data.orders[0]",
            "",
        ] {
            let e = p.check_query(malformed).unwrap_err();
            assert!(e.contains("not a rule reference"), "{malformed}: {e}");
        }
    }

    #[test]
    fn the_data_document_is_available() {
        let p = orders();
        let mut i = input(&[], "POST");
        assert!(p.evaluate("data.orders.role_allowed", &i).unwrap().allow);
        i["request"]["method"] = json!("DELETE");
        assert!(!p.evaluate("data.orders.role_allowed", &i).unwrap().allow);
        i["principal"]["sub"] = json!("mallory");
        i["request"]["method"] = json!("GET");
        assert!(!p.evaluate("data.orders.role_allowed", &i).unwrap().allow);
    }

    #[test]
    fn input_numbers_keep_their_values() {
        let src = r#"
package n

allow if {
    input.neg == -3
    input.big == 18446744073709551615
    input.frac > 1.4
    input.frac < 1.6
    input.nothing == null
}
"#;
        let (_dir, p) = load_sources(&[("n.rego", src)], None, Duration::from_secs(1));
        let p = p.unwrap();
        let i = json!({"neg": -3, "big": u64::MAX, "frac": 1.5, "nothing": null});
        assert!(p.evaluate("data.n.allow", &i).unwrap().allow);
        let i = json!({"neg": 3, "big": u64::MAX, "frac": 1.5, "nothing": null});
        assert!(!p.evaluate("data.n.allow", &i).unwrap().allow);
    }

    #[test]
    fn concurrent_evaluations_give_the_right_answers() {
        let p = Arc::new(orders());
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for n in 0..300 {
                        let allowed = (t + n) % 2 == 0;
                        let scopes: &[&str] = if allowed { &["read:orders"] } else { &["x"] };
                        let d = p
                            .evaluate("data.orders.decision", &input(scopes, "GET"))
                            .unwrap();
                        assert_eq!(d.allow, allowed);
                        assert_eq!(d.reasons.is_empty(), allowed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn the_examples_refund_policy_checks_every_amount_under_every_spelling() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../examples/policies/orders.rego");
        let p =
            RegoPolicies::load(&[("orders".into(), file)], None, Duration::from_secs(1)).unwrap();
        // 2026-01-01, a Thursday; 2026-01-03, a Saturday.
        let (thursday, saturday) = (1_767_225_600_u64, 1_767_398_400_u64);
        let ask = |query: &str, time: u64| {
            let head = http::Request::builder()
                .uri(format!("/refunds?{query}"))
                .body(())
                .unwrap()
                .into_parts()
                .0;
            let folded = crate::input::query_folded(&head);
            let input = json!({
                "principal": {"roles": ["clerk"]},
                "request": {"query_folded": folded},
                "time": time,
            });
            p.evaluate("data.orders.decision", &input)
        };
        let d = ask("amount=120", thursday).unwrap();
        assert!(d.allow, "{d:?}");
        assert_eq!(d.headers.len(), 1);
        for smuggled in [
            "amount=120&amount=900",
            "amount=120&Amount=900",
            "amount=120&amount%5B%5D=900",
            "amount=120;amount=900",
        ] {
            let d = ask(smuggled, thursday).unwrap();
            assert!(!d.allow, "{smuggled}");
            assert_eq!(
                d.reasons,
                ["amounts above 500 need a manager"],
                "{smuggled}"
            );
        }
        let d = ask("other=1", thursday).unwrap();
        assert_eq!(
            (d.allow, d.reasons),
            (false, vec!["no amount given".to_owned()])
        );
        let d = ask("amount=120", saturday).unwrap();
        assert!(!d.allow);
        // Not a number: the evaluation fails, and the step answers 503.
        assert!(ask("amount=12e", thursday).is_err());
    }

    #[test]
    fn policies_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RegoPolicies>();
    }
}
