//! False positives on prose: Markdown documentation found on this machine, each distinct line
//! and each paragraph of several lines sent through the whole WAF as a JSON string value and
//! as a form value, at the default settings (paranoia 1, threshold 5).
//!
//! An API that stores Markdown (a CMS, an issue tracker, a wiki, a support desk) receives such
//! values: documentation, not attacks (a few quote one, as a security library's README does,
//! and are rightly blocked). The files are not part of the repository: they are read
//! at run time from the Rust crate sources in the cargo registry (`~/.cargo/registry/src`, the
//! crates' READMEs and other documents), `/usr/share/doc` (the Node.js manual and the Debian
//! packages' documents, `.md.gz` inflated) and `/usr/lib/node_modules` (the npm manual); the
//! test says so and passes when none is found.
//!
//! ```text
//! cargo test --release -p portcullis-waf --test corpus_markdown -- --ignored --nocapture
//! ```
//!
//! Environment: `MARKDOWN_DIRS` (folders to read instead, separated by `:`), `MD_EXAMPLES`
//! (examples printed per rule, shortest first; default 5), `MD_DUMP=<file>` (writes every
//! blocked value with its rules, one JSON line each, for a closer look).
//!
//! It reports the counts (values, blocked in either placement, in each placement), then per
//! rule how many blocked values it fired in and in how many it was decisive (the value would
//! pass without that rule's score), with the shortest examples. It asserts nothing: the
//! figures are recorded in `docs/waf.md` ("Prose and Markdown"). The two tests that are not
//! ignored send Markdown forms written for them, and the attacks beside them, through the same
//! engine.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use portcullis_waf::RouteWaf;
use portcullis_waf::engine::{BodyState, Inspection, inspect};

fn roots() -> Vec<PathBuf> {
    if let Some(dirs) = std::env::var_os("MARKDOWN_DIRS") {
        return std::env::split_paths(&dirs).collect();
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    vec![
        home.join(".cargo/registry/src"),
        PathBuf::from("/usr/share/doc"),
        PathBuf::from("/usr/lib/node_modules"),
    ]
}

fn is_markdown(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name = name.to_ascii_lowercase();
    name.ends_with(".md") || name.ends_with(".markdown") || name.ends_with(".md.gz")
}

/// Every Markdown file under `dir`, symbolic links not followed.
fn markdown_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(kind) = e.file_type() else { continue };
        let p = e.path();
        if kind.is_dir() {
            markdown_under(&p, out);
        } else if kind.is_file() && is_markdown(&p) {
            out.push(p);
        }
    }
}

fn read_text(p: &Path) -> Option<String> {
    let bytes = std::fs::read(p).ok()?;
    let bytes = if p.extension().is_some_and(|e| e == "gz") {
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut inflated)
            .ok()?;
        inflated
    } else {
        bytes
    };
    Some(String::from_utf8_lossy(&bytes).replace("\r\n", "\n"))
}

/// The distinct non-blank lines of every file, and every paragraph (lines between blank
/// lines) of two lines or more, in a stable order.
fn samples(files: &[PathBuf]) -> (usize, Vec<String>) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut lines = 0;
    let mut keep = |s: &str, out: &mut Vec<String>| {
        if !s.trim().is_empty() && seen.insert(s.to_string()) {
            out.push(s.to_string());
        }
    };
    for f in files {
        let Some(text) = read_text(f) else { continue };
        let mut para: Vec<&str> = Vec::new();
        for line in text.lines() {
            lines += 1;
            if line.trim().is_empty() {
                if para.len() > 1 {
                    keep(&para.join("\n"), &mut out);
                }
                para.clear();
            } else {
                keep(line, &mut out);
                para.push(line);
            }
        }
        if para.len() > 1 {
            keep(&para.join("\n"), &mut out);
        }
    }
    (lines, out)
}

/// The value's outcome in one placement: (blocked, rule → score it added, what each matched).
fn run(
    route: &RouteWaf,
    head: &http::request::Parts,
    body: &[u8],
) -> (bool, BTreeMap<u32, u32>, Vec<String>) {
    let out = inspect(
        route,
        &Inspection {
            head,
            path: "/notes",
            client_ip: std::net::IpAddr::from([192, 0, 2, 1]),
            body: BodyState::Buffered(body),
        },
    );
    let mut rules = BTreeMap::new();
    let mut matched = Vec::new();
    for s in out
        .findings
        .iter()
        .filter(|s| !s.excluded && !s.informational)
    {
        *rules.entry(s.finding.rule).or_insert(0) += s.finding.severity.score();
        matched.push(format!("{} {}", s.finding.rule, s.finding.snippet));
    }
    (out.blocked, rules, matched)
}

fn head(content_type: &'static str) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static("/notes");
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    req.into_parts().0
}

#[derive(Default)]
struct PerRule {
    /// Blocked values the rule fired in.
    hits: usize,
    /// Of those, the values that would pass without this rule's score.
    decisive: usize,
    examples: BTreeSet<(usize, String)>,
}

#[test]
#[ignore = "reads the Markdown files on this machine; run explicitly"]
fn markdown_prose_is_not_blocked() {
    let mut files = Vec::new();
    for r in roots() {
        markdown_under(&r, &mut files);
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        println!(
            "no Markdown files under {:?}: nothing measured (set MARKDOWN_DIRS)",
            roots()
        );
        return;
    }
    let (lines, values) = samples(&files);
    println!(
        "{} Markdown files, {lines} lines; {} distinct lines and paragraphs",
        files.len(),
        values.len()
    );
    let show: usize = std::env::var("MD_EXAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut dump = std::env::var_os("MD_DUMP").and_then(|p| std::fs::File::create(p).ok());

    let route = RouteWaf::default();
    let json_head = head("application/json");
    let form_head = head("application/x-www-form-urlencoded");
    let (mut in_json, mut in_form, mut in_either) = (0usize, 0usize, 0usize);
    let mut per_rule: BTreeMap<u32, PerRule> = BTreeMap::new();
    let start = std::time::Instant::now();
    for v in &values {
        let json = serde_json::json!({ "text": v }).to_string();
        let form = format!(
            "text={}",
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
        );
        let (jb, jr, jm) = run(&route, &json_head, json.as_bytes());
        let (fb, fr, fm) = run(&route, &form_head, form.as_bytes());
        in_json += usize::from(jb);
        in_form += usize::from(fb);
        if !(jb || fb) {
            continue;
        }
        in_either += 1;
        // The placement that blocked (JSON first): its rules and their scores.
        let rules = if jb { &jr } else { &fr };
        let total: u32 = rules.values().sum();
        for (&rule, &score) in rules {
            let e = per_rule.entry(rule).or_default();
            e.hits += 1;
            if total - score < route.threshold {
                e.decisive += 1;
            }
            e.examples.insert((v.len(), v.clone()));
            if e.examples.len() > show {
                e.examples.pop_last();
            }
        }
        if let Some(f) = dump.as_mut() {
            let line = serde_json::json!({
                "value": v,
                "json": jm,
                "form": fm,
            });
            let _ = writeln!(f, "{line}");
        }
    }
    let pct = |n: usize| 100.0 * n as f64 / values.len().max(1) as f64;
    println!(
        "blocked at paranoia 1: {in_either} ({:.3}%) in either placement; as a JSON string {in_json}, as a form value {in_form} ({:.1} s)",
        pct(in_either),
        start.elapsed().as_secs_f64()
    );
    println!("per rule (blocked values it fired in; decisive: would pass without it):");
    let mut order: Vec<_> = per_rule.iter().collect();
    order.sort_by_key(|(id, r)| (std::cmp::Reverse(r.hits), **id));
    for (id, r) in order {
        println!("  rule {id}: {} (decisive {})", r.hits, r.decisive);
        for (_, e) in &r.examples {
            let shown: String = e.chars().take(160).collect();
            let cut = if shown.len() < e.len() { " …" } else { "" };
            println!("      {shown:?}{cut}");
        }
    }
}

/// Both placements of one value: whether either blocked, and the rules that scored.
fn blocked_anywhere(v: &str) -> (bool, Vec<u32>) {
    let route = RouteWaf::default();
    let json = serde_json::json!({ "text": v }).to_string();
    let form = format!(
        "text={}",
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
    );
    let (jb, jr, _) = run(&route, &head("application/json"), json.as_bytes());
    let (fb, fr, _) = run(
        &route,
        &head("application/x-www-form-urlencoded"),
        form.as_bytes(),
    );
    let mut rules: Vec<u32> = jr.keys().chain(fr.keys()).copied().collect();
    rules.sort_unstable();
    rules.dedup();
    (jb || fb, rules)
}

/// Markdown the rules used to misread (one or two of each form, written for this test):
/// through the whole engine, as a JSON string and as a form value, none blocks at the
/// defaults.
#[test]
fn markdown_forms_pass_the_whole_engine() {
    for v in [
        "Writes `value` into `buf` at the given `offset`.",
        "`true` if the stream ended, `false` otherwise.",
        "`Host` header is required.",
        "Remove `Array::flatten`; make `const fn` work.",
        "Set `NODE_ENV` before starting.",
        "<!-- YAML\nadded: v1.0.0\nchanges:\n  - version: v2.0.0\n    description: The `signal` option was added.\n-->",
        "Local<Object> obj = Object::New(isolate);",
        "fn frames(&self) -> Vec<Frame>",
        "### DEP0111: `process.binding()`",
        "Deprecated: `process.binding('util')`.",
        "## `process.mainModule`",
        "Use `child_process.execFile()` rather than `child_process.exec()`.",
        "let h = std::thread::spawn(move || {",
        "Pass code with `--eval` or `--import`.",
        "The policy at `file:///C:/app/policy.json` applies.",
        "// file:///srv/app/index.mjs",
        "Run `npm exec @scope/create-app` to scaffold it.",
    ] {
        let (blocked, rules) = blocked_anywhere(v);
        assert!(!blocked, "blocked {v:?}: {rules:?}");
    }
}

/// The attacks beside those forms, through the whole engine in both placements: blocked.
#[test]
fn attacks_beside_them_still_block() {
    for v in [
        "`id`",
        "x`id`",
        "a `b` c`uname -a`",
        "`whoami`.evil.example",
        "x; echo `id`",
        "<!-- `x` --><img src=x onerror=alert(1)>",
        "<object data=javascript:alert(1)>",
        "process.mainModule.require('child_process').execSync(x)",
        "process.binding('spawn_sync').spawn(o)",
        "require('child_process').exec(cmd)",
        "'-alert`1`-'",
        "file:///srv/app/config",
        "{\"url\": \"file:///srv/app/config\"}",
        "x';exec @q--",
    ] {
        let (blocked, rules) = blocked_anywhere(v);
        assert!(blocked, "let through {v:?}: {rules:?}");
    }
}
