//! SQLi/XSS detection and false-positive rates on the shared corpora (see
//! `/work/shared/corpora/README.md`). Ignored by default (needs the corpora, takes a while):
//!
//! ```text
//! cargo test --release -p portcullis-waf --test corpus_sqli_xss -- --ignored --nocapture
//! ```
//!
//! Environment: `CORPORA_DIR` (default `../../../../shared/corpora` from this crate),
//! `PARANOIA` (1–4, default 1), `DUMP=misses|fps|all` to print the missed attacks / blocked
//! benign values, `DUMP_FILE=<substring>` to limit the dump to matching file names.
//!
//! Each sample is inspected as a query parameter `q` whose value is the sample as the server
//! sees it after the one percent-decoding of the query string (the raw corpus line is what a
//! client would URL-encode). "Blocked" = summed severity score ≥ 5.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use portcullis_waf::detect::{VALUE_DETECTORS, sqli, xss};
use portcullis_waf::model::{Finding, InspectFn, Location, Part, Target};
use portcullis_waf::transform::Views;

const THRESHOLD: u32 = 5;

fn corpora() -> PathBuf {
    std::env::var_os("CORPORA_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../../shared/corpora"),
        PathBuf::from,
    )
}

fn paranoia() -> u8 {
    std::env::var("PARANOIA")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Sqli,
    Xss,
    Benign,
}

struct Set {
    name: String,
    kind: Kind,
    /// Counted towards the goals (httpparams, libinjection) or only reported.
    goal: bool,
    samples: Vec<String>,
}

fn lines(path: &Path) -> Vec<String> {
    let Ok(bytes) = fs::read(path) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Minimal CSV reader for `payload,length,attack_type,label` with quoted fields.
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else {
            match c {
                '"' => quoted = true,
                ',' => row.push(std::mem::take(&mut field)),
                '\n' => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                '\r' => {}
                c => field.push(c),
            }
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, out);
        } else if p.extension().is_some_and(|e| e == "txt") {
            out.push(p);
        }
    }
}

fn load() -> Vec<Set> {
    let root = corpora();
    let mut sets = Vec::new();

    let rows = csv_rows(&root.join("httpparams/train.csv"));
    for (label, kind) in [
        ("sqli", Kind::Sqli),
        ("xss", Kind::Xss),
        ("norm", Kind::Benign),
    ] {
        let samples: Vec<String> = rows
            .iter()
            .skip(1)
            .filter(|r| r.get(2).map(String::as_str) == Some(label))
            .filter_map(|r| r.first().cloned())
            .collect();
        sets.push(Set {
            name: format!("httpparams/{label}"),
            kind,
            goal: true,
            samples,
        });
    }

    let mut li = Vec::new();
    files_under(&root.join("libinjection"), &mut li);
    for p in li {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let kind = if name.starts_with("sqli-") {
            Kind::Sqli
        } else if name.starts_with("xss-") || name.starts_with("tbd-xss") {
            Kind::Xss
        } else if name == "false_positives.txt" {
            Kind::Benign
        } else {
            continue;
        };
        sets.push(Set {
            name: format!("libinjection/{name}"),
            kind,
            goal: !name.starts_with("tbd-"),
            samples: lines(&p),
        });
    }

    for (dir, kind) in [
        ("payloadbox/sql-injection-payload-list", Kind::Sqli),
        ("payloadbox/xss-payload-list", Kind::Xss),
        ("fuzzdb/sql-injection", Kind::Sqli),
        ("fuzzdb/xss", Kind::Xss),
    ] {
        let mut files = Vec::new();
        files_under(&root.join(dir), &mut files);
        for p in files {
            let rel = p
                .strip_prefix(&root)
                .unwrap_or(&p)
                .to_string_lossy()
                .to_string();
            // Lists of names, not attacks.
            if rel.contains("event-attributes") || rel.contains("no-sql") || rel.contains("NoSQL") {
                continue;
            }
            sets.push(Set {
                name: rel,
                kind,
                goal: false,
                samples: lines(&p),
            });
        }
    }
    sets
}

fn inspect(
    detectors: &[InspectFn],
    value: &str,
    views: &mut Views,
    paranoia: u8,
    out: &mut Vec<Finding>,
) -> u32 {
    out.clear();
    let t = Target::new(Location::Query, "q", Part::Value, value);
    views.load(value);
    for d in detectors {
        d(&t, views, paranoia, out);
    }
    // The engine's shortcut for plain values must never hide a finding.
    assert!(
        out.is_empty() || !portcullis_waf::engine::skips_value_detectors(value),
        "{value:?} skips the detectors in the engine but has findings"
    );
    out.iter().map(|f| f.severity.score()).sum()
}

struct Tally {
    total: usize,
    blocked_all: usize,
    blocked_mine: usize,
}

#[test]
#[ignore = "needs the shared corpora; run with --ignored --nocapture"]
fn corpus_sqli_xss() {
    let sets = load();
    assert!(!sets.is_empty(), "no corpora under {}", corpora().display());
    let paranoia = paranoia();
    let dump = std::env::var("DUMP").unwrap_or_default();
    let dump_file = std::env::var("DUMP_FILE").unwrap_or_default();
    let all: Vec<InspectFn> = VALUE_DETECTORS.iter().map(|(_, f)| *f).collect();
    let mine: Vec<InspectFn> = vec![sqli::inspect, xss::inspect];
    let mut views = Views::new();
    let mut out = Vec::new();

    println!(
        "paranoia {paranoia}; blocked = score >= {THRESHOLD}; columns: all detectors / sqli+xss only"
    );
    let mut goal_totals: Vec<(Kind, Tally)> = Vec::new();
    let mut timing: Vec<(Kind, std::time::Duration, usize)> = Vec::new();
    let mut fp_list_blocked_mine = 0usize;
    let started = Instant::now();
    let mut n_values = 0usize;
    for set in &sets {
        let mut tally = Tally {
            total: 0,
            blocked_all: 0,
            blocked_mine: 0,
        };
        for s in &set.samples {
            let score_all = inspect(&all, s, &mut views, paranoia, &mut out);
            let findings_all: Vec<String> = out
                .iter()
                .map(|f| format!("{}:{}", f.rule, f.snippet))
                .collect();
            let t0 = Instant::now();
            let score_mine = inspect(&mine, s, &mut views, paranoia, &mut out);
            let dt = t0.elapsed();
            match timing.iter_mut().find(|(k, _, _)| *k == set.kind) {
                Some((_, d, n)) => {
                    *d += dt;
                    *n += 1;
                }
                None => timing.push((set.kind, dt, 1)),
            }
            n_values += 1;
            tally.total += 1;
            let b_all = score_all >= THRESHOLD;
            let b_mine = score_mine >= THRESHOLD;
            tally.blocked_all += usize::from(b_all);
            tally.blocked_mine += usize::from(b_mine);
            if b_mine && set.name.ends_with("false_positives.txt") {
                fp_list_blocked_mine += 1;
            }
            let show = (dump_file.is_empty() || set.name.contains(&dump_file))
                && match dump.as_str() {
                    "misses" => set.kind != Kind::Benign && !b_all,
                    "fps" => set.kind == Kind::Benign && b_all,
                    "all" => true,
                    _ => false,
                };
            if show {
                println!("  [{}] {score_all} {s:?} {findings_all:?}", set.name);
            }
        }
        if tally.total == 0 {
            continue;
        }
        let pct = |n: usize| 100.0 * n as f64 / tally.total as f64;
        let what = if set.kind == Kind::Benign {
            "blocked (FP)"
        } else {
            "detected"
        };
        println!(
            "{:<70} {:>6} {what} {:>7.2}% / {:>7.2}%{}",
            set.name,
            tally.total,
            pct(tally.blocked_all),
            pct(tally.blocked_mine),
            if set.goal { "" } else { "  (report only)" },
        );
        if set.goal {
            match goal_totals.iter_mut().find(|(k, _)| *k == set.kind) {
                Some((_, t)) => {
                    t.total += tally.total;
                    t.blocked_all += tally.blocked_all;
                    t.blocked_mine += tally.blocked_mine;
                }
                None => goal_totals.push((set.kind, tally)),
            }
        }
    }
    let elapsed = started.elapsed();
    println!("--- goal sets (httpparams + libinjection) ---");
    for (kind, t) in &goal_totals {
        let pct = |n: usize| 100.0 * n as f64 / t.total as f64;
        println!(
            "{kind:?}: {} samples, blocked {} ({:.3}%) / sqli+xss only {} ({:.3}%)",
            t.total,
            t.blocked_all,
            pct(t.blocked_all),
            t.blocked_mine,
            pct(t.blocked_mine)
        );
    }
    println!(
        "{n_values} values x (all + mine) in {elapsed:?}: {:.2} us per value pair",
        elapsed.as_secs_f64() * 1e6 / n_values.max(1) as f64
    );
    for (kind, d, n) in &timing {
        println!(
            "sqli+xss inspect, {kind:?} samples: {:.3} us per value (incl. views)",
            d.as_secs_f64() * 1e6 / (*n).max(1) as f64
        );
    }

    // The goals of the SQLi/XSS detectors at paranoia 1 (their own findings only: the other
    // detectors' rules change independently).
    if paranoia == 1 {
        for (kind, t) in &goal_totals {
            let rate = t.blocked_mine as f64 / t.total.max(1) as f64;
            match kind {
                Kind::Sqli | Kind::Xss => {
                    assert!(
                        rate >= 0.99,
                        "{kind:?} detection {:.3}% < 99%",
                        rate * 100.0
                    )
                }
                Kind::Benign => {
                    assert!(rate <= 0.001, "benign blocked {:.3}% > 0.1%", rate * 100.0)
                }
            }
        }
        assert_eq!(
            fp_list_blocked_mine, 0,
            "libinjection false_positives.txt must all pass"
        );
    }
}
