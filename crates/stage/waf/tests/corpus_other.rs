//! Detection and false-positive rates of every value detector on the public corpora (command
//! injection, traversal/LFI, RFI, LDAP, NoSQL, XML) and the benign sets.
//!
//! Each sample is inspected as a query parameter (`query:q`) the way the server sees it after
//! one percent-decoding (`+` as a space, lossy UTF-8, as the extractor does); the severity scores of all findings are summed and the sample counts as
//! blocked at 5 or more, at paranoia 1.
//!
//! `cargo test -p portcullis-waf --release --test corpus_other -- --ignored --nocapture`
//! (`CORPUS_MISSES=20` prints that many missed samples per file and every blocked benign one;
//! `PORTCULLIS_CORPORA` overrides where the corpora are.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use portcullis_waf::detect::VALUE_DETECTORS;
use portcullis_waf::transform::Views;
use portcullis_waf::{Location, Part, Target};

fn corpora() -> PathBuf {
    std::env::var_os("PORTCULLIS_CORPORA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../../shared/corpora")
        })
}

/// `payload,length,attack_type,label` with RFC 4180 quoting.
fn read_csv(path: &PathBuf) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
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

fn read_lines(path: &PathBuf) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// One percent-decoding with `+` as a space, invalid UTF-8 read lossily: what the extractor
/// makes of a query parameter.
fn as_server_sees(sample: &str) -> String {
    percent_encoding::percent_decode_str(&sample.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

struct Engine {
    views: Views,
    out: Vec<portcullis_waf::Finding>,
}

impl Engine {
    fn new() -> Engine {
        Engine {
            views: Views::new(),
            out: Vec::new(),
        }
    }

    /// Summed score and the rule ids that matched.
    fn inspect(&mut self, value: &str) -> (u32, Vec<u32>) {
        let t = Target::new(Location::Query, "q", Part::Value, value);
        self.views.load(value);
        self.out.clear();
        for (_, f) in VALUE_DETECTORS {
            f(&t, &mut self.views, 1, &mut self.out);
        }
        // The engine's shortcut for plain values must never hide a finding.
        assert!(
            self.out.is_empty() || !portcullis_waf::engine::skips_value_detectors(value),
            "{value:?} skips the detectors in the engine but has findings: {:?}",
            self.out.iter().map(|f| f.rule).collect::<Vec<_>>()
        );
        let score = self.out.iter().map(|f| f.severity.score()).sum();
        (score, self.out.iter().map(|f| f.rule).collect())
    }
}

fn misses_to_print() -> usize {
    std::env::var("CORPUS_MISSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn report(engine: &mut Engine, name: &str, samples: &[String]) -> (usize, usize) {
    let show = misses_to_print();
    let mut blocked = 0;
    let mut shown = 0;
    for s in samples {
        let v = as_server_sees(s);
        let (score, _) = engine.inspect(&v);
        if score >= 5 {
            blocked += 1;
        } else if shown < show {
            shown += 1;
            println!("    miss: {v:?}");
        }
    }
    let pct = if samples.is_empty() {
        0.0
    } else {
        100.0 * blocked as f64 / samples.len() as f64
    };
    println!("{name:<60} {blocked:>5}/{:<5} {pct:6.2}%", samples.len());
    (blocked, samples.len())
}

#[test]
#[ignore = "reads the shared corpora; run explicitly"]
fn corpus_other() {
    let root = corpora();
    let mut engine = Engine::new();

    // httpparams: per class.
    let rows = read_csv(&root.join("httpparams/train.csv"));
    let mut by_class: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows.iter().skip(1) {
        if r.len() >= 3 {
            by_class.entry(r[2].clone()).or_default().push(r[0].clone());
        }
    }
    println!("== httpparams (attack classes; all detectors, PL1, blocked = score >= 5)");
    for (class, samples) in &by_class {
        if class != "norm" {
            report(&mut engine, &format!("httpparams {class}"), samples);
        }
    }

    println!("== fuzzdb");
    let fuzz = root.join("fuzzdb");
    let files = [
        "os-cmd-execution/command-execution-unix.txt",
        "os-cmd-execution/OSCommandInject.Windows.txt",
        "os-cmd-execution/command-injection-template.txt",
        "os-cmd-execution/source-disc-cmd-exec-traversal.txt",
        "os-cmd-execution/useful-commands-unix.txt",
        "os-cmd-execution/useful-commands-windows.txt",
        "os-cmd-execution/shell-delimiters.txt",
        "os-cmd-execution/shell-operators.txt",
        "os-cmd-execution/Commands-Linux.txt",
        "os-cmd-execution/Commands-OSX.txt",
        "os-cmd-execution/Commands-Windows.txt",
        "os-cmd-execution/Commands-WindowsPowershell.txt",
        "path-traversal/path-traversal-windows.txt",
        "path-traversal/traversals-8-deep-exotic-encoding.txt",
        "lfi/JHADDIX_LFI.txt",
        "lfi/common-unix-httpd-log-locations.txt",
        "lfi/common-ms-httpd-log-locations.txt",
        "rfi/rfi.txt",
        "ldap/ldap-injection.txt",
        "no-sql-injection/mongodb.txt",
        "xml/xml-attacks.txt",
    ];
    for f in files {
        let lines = read_lines(&fuzz.join(f));
        report(&mut engine, f, &lines);
    }
    // The templates, instantiated the way they are meant to be used.
    let tpl: Vec<String> =
        read_lines(&fuzz.join("os-cmd-execution/command-injection-template.txt"))
            .into_iter()
            .map(|l| l.replace("{cmd}", "id"))
            .collect();
    report(&mut engine, "command-injection-template ({cmd} = id)", &tpl);
    let tpl: Vec<String> =
        read_lines(&fuzz.join("os-cmd-execution/command-injection-template.txt"))
            .into_iter()
            .map(|l| l.replace("{cmd}", "cat /etc/passwd"))
            .collect();
    report(
        &mut engine,
        "command-injection-template ({cmd} = cat /etc/passwd)",
        &tpl,
    );
    let exotic: Vec<String> =
        read_lines(&fuzz.join("path-traversal/traversals-8-deep-exotic-encoding.txt"))
            .into_iter()
            .map(|l| l.replace("{FILE}", "etc/passwd"))
            .collect();
    report(
        &mut engine,
        "traversals-8-deep-exotic-encoding ({FILE} = etc/passwd)",
        &exotic,
    );
    let rfi: Vec<String> = read_lines(&fuzz.join("rfi/rfi.txt"))
        .into_iter()
        .map(|l| {
            // The include parameter's value, pointing at a remote script.
            let v = l.replace("XXpathXX", "http://attacker.example/shell.txt?");
            match v.split_once('=') {
                Some((_, rest)) if rest.contains("http://") => rest.to_string(),
                _ => v,
            }
        })
        .collect();
    report(
        &mut engine,
        "rfi.txt (XXpathXX = remote URL, parameter value)",
        &rfi,
    );

    println!("== benign (all detectors, PL1)");
    let show = misses_to_print() > 0;
    let mut benign: Vec<String> = by_class.get("norm").cloned().unwrap_or_default();
    let httpparams_norm = benign.len();
    benign.extend(
        read_lines(&root.join("libinjection/false_positives.txt"))
            .into_iter()
            .filter(|l| !l.starts_with('#')),
    );
    let mut fp = 0usize;
    let mut by_rule: BTreeMap<u32, usize> = BTreeMap::new();
    let mut flagged = 0usize;
    for s in &benign {
        let v = as_server_sees(s);
        let (score, rules) = engine.inspect(&v);
        if !rules.is_empty() {
            flagged += 1;
        }
        for r in &rules {
            *by_rule.entry(*r).or_default() += 1;
        }
        if score >= 5 {
            fp += 1;
            if show {
                println!("    blocked: {v:?} {rules:?}");
            }
        }
    }
    println!(
        "benign blocked: {fp}/{} ({:.3}%) [httpparams norm {httpparams_norm} + libinjection false_positives {}]; with any finding: {flagged}",
        benign.len(),
        100.0 * fp as f64 / benign.len().max(1) as f64,
        benign.len() - httpparams_norm
    );
    println!("benign findings by rule: {by_rule:?}");

    // Cost per benign value (a rough figure; use --release).
    let values: Vec<String> = benign.iter().map(|s| as_server_sees(s)).collect();
    let mine = [
        portcullis_waf::Class::CommandInjection,
        portcullis_waf::Class::Traversal,
        portcullis_waf::Class::Ssrf,
        portcullis_waf::Class::Xxe,
        portcullis_waf::Class::Nosql,
        portcullis_waf::Class::Ldap,
        portcullis_waf::Class::Ssti,
        portcullis_waf::Class::Log4Shell,
        portcullis_waf::Class::Crlf,
        portcullis_waf::Class::Scanner,
    ];
    for (label, only_mine) in [
        ("these ten detectors", true),
        ("all value detectors", false),
    ] {
        let mut views = Views::new();
        let mut out = Vec::new();
        let rounds = 5;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            for v in &values {
                let t = Target::new(Location::Query, "q", Part::Value, v.as_str());
                views.load(v);
                out.clear();
                for (class, f) in VALUE_DETECTORS {
                    if !only_mine || mine.contains(class) {
                        f(&t, &mut views, 1, &mut out);
                    }
                }
            }
        }
        let per = start.elapsed().as_nanos() as f64 / (rounds * values.len()) as f64;
        println!("cost per benign value, {label}: {per:.0} ns");
    }
    for view in portcullis_waf::transform::View::ALL {
        let mut views = Views::new();
        let start = std::time::Instant::now();
        for _ in 0..5 {
            for v in &values {
                views.load(v);
                std::hint::black_box(views.get(view));
            }
        }
        let per = start.elapsed().as_nanos() as f64 / (5 * values.len()) as f64;
        println!("  view {view:<16?} {per:6.0} ns (load included)");
    }
    for (class, f) in VALUE_DETECTORS {
        let mut views = Views::new();
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        for _ in 0..5 {
            for v in &values {
                let t = Target::new(Location::Query, "q", Part::Value, v.as_str());
                views.load(v);
                out.clear();
                f(&t, &mut views, 1, &mut out);
            }
        }
        let per = start.elapsed().as_nanos() as f64 / (5 * values.len()) as f64;
        println!("  {:<20} {per:6.0} ns (views included)", class.as_str());
    }
}

/// Benign values shaped like the attacks these detectors look for (shell words after
/// punctuation, paths, URLs, template braces, parentheses): none may be blocked by the
/// command-injection, traversal, SSRF, XXE, NoSQL, LDAP, SSTI, Log4Shell, CRLF or scanner rules
/// at paranoia 1.
#[test]
fn benign_lookalikes_pass() {
    use portcullis_waf::Class;
    let mine = [
        Class::CommandInjection,
        Class::Traversal,
        Class::Ssrf,
        Class::Xxe,
        Class::Nosql,
        Class::Ldap,
        Class::Ssti,
        Class::Log4Shell,
        Class::Crlf,
        Class::Scanner,
    ];
    let values = [
        "Tom & Jerry; cat lovers welcome",
        "R&D | Sales | Support",
        "Ping me at 10:30 tomorrow",
        "python & ruby developers",
        "I love python; perl is fine too",
        "Raleigh; NC 27601",
        "salt & pepper; more to come",
        "type 2 diabetes",
        "sleep 8 hours a night",
        "find the best deals",
        "set up your account",
        "echo chamber",
        "who we are",
        "last name",
        "more info",
        "time: 10:30-11:00",
        "cat, dog & bird",
        "AT&T; Verizon",
        "B&W photo",
        "Q&A session (live)",
        "net income (loss)",
        "see https://example.com/docs/install.html#step-2",
        "https://www.google.com/search?q=rust+regex&hl=en",
        "http://localhost.example.org/",
        "mailto:jane.doe@example.com",
        "C:\\Users\\jane\\Documents\\report.docx",
        "/home/jane/projects/readme.md",
        "images/logo.png",
        "report.final.v2.pdf",
        "v1.2.3",
        "1.5 kg",
        "192.0.2.44",
        "wait... what?",
        "and so on...",
        "Hello {{ user.first_name }}, welcome!",
        "{\"name\": \"x\", \"tags\": [\"a\", \"b\"]}",
        "${amount} USD",
        "Total: $10 (incl. tax)",
        "price >= 10 && price <= 20",
        "(see above) (and below)",
        "f(x) = (x + 1) * (x - 1)",
        "rating: 5* (excellent)",
        "user@example.com",
        "<b>bold</b> and <i>italic</i>",
        "<!DOCTYPE html><html><body>hi</body></html>",
        "Dear John,\nNote: bring your ID\nThanks",
        "line one\r\nline two",
        "SELECT your plan",
        "this.that",
        "db.example.com",
        "$ne is not an operator here",
        "50% off [today only]",
        "100%",
        "A-LAST-MINUTE",
        "c/ caridad s/n",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl",
        "Lorem ipsum dolor sit amet",
        "LGTM, ship it",
        "set it to `true` to enable",
        "run `make` first",
        "id",
        "sort=-name",
        "2024-01-02T10:00:00Z",
        "+1 (555) 123-4567",
        "O'Reilly & Sons",
        "Rock 'n' roll",
        "--verbose",
        "rm -rf is dangerous, don't run it",
        "what is /etc/hosts for?",
        "Venue\r\nLocation: Paris\r\nHost: Anne",
        "Admins\nUsers\nGuests",
        "name\nid\nemail",
        "the operating system (which runs it)",
        "downloadFile",
        "start-process",
        "net user growth was strong",
        "install it to /usr/local/bin/mytool",
        "src/**/*.js",
        "C:\\Program Files\\Example\\app.exe",
        "https://api.example.com/v1/credentials?page=2",
        "/api/log/messages",
        "sftp://backup.example.com/daily",
        "https://cdn.example.com/logo.png?",
        "{{ request.path }}",
        "#set($name = 'World')",
        "{% import 'macros.html' as m %}",
        "${PORT:-8080}",
        "Our system \"https://status.example.com\" is up",
        "$type",
        "a.b.c.d",
        "http://10.0.0.5:8080/health",
        "<img src=\"images/logo.png\">",
        "Tea & more 2.5 kg",
        "Q&A | more/less",
    ];
    let mut views = Views::new();
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for v in values {
        let t = Target::new(Location::Query, "q", Part::Value, v);
        views.load(v);
        out.clear();
        for (_, f) in VALUE_DETECTORS {
            f(&t, &mut views, 1, &mut out);
        }
        let score: u32 = out
            .iter()
            .filter(|f| mine.contains(&f.class))
            .map(|f| f.severity.score())
            .sum();
        if score >= 5 {
            let ids: Vec<u32> = out.iter().map(|f| f.rule).collect();
            failures.push(format!("{v:?} {ids:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "blocked benign values:\n{}",
        failures.join("\n")
    );
}

/// Rough cost of the ten detectors on typical values (run with --release --ignored --nocapture).
#[test]
#[ignore = "timing; run explicitly"]
fn cost_on_typical_values() {
    let mine = [
        portcullis_waf::Class::CommandInjection,
        portcullis_waf::Class::Traversal,
        portcullis_waf::Class::Ssrf,
        portcullis_waf::Class::Xxe,
        portcullis_waf::Class::Nosql,
        portcullis_waf::Class::Ldap,
        portcullis_waf::Class::Ssti,
        portcullis_waf::Class::Log4Shell,
        portcullis_waf::Class::Crlf,
        portcullis_waf::Class::Scanner,
    ];
    let values = [
        "2",
        "price",
        "blue walking boots",
        "ann@example.org",
        "12, rue de l'Église, 75004 Paris",
        "Gift wrap, please; it's for Anne's birthday",
        "https://shop.example.com/cart?step=2",
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        "en-GB,en;q=0.7",
        "3f9a1c2e7b",
    ];
    let mut views = Views::new();
    let mut out = Vec::new();
    // The minimum over several trials of `rounds` iterations: the machine may be busy.
    let mut time = |v: &str, f: &mut dyn FnMut(&mut Views, &mut Vec<portcullis_waf::Finding>)| {
        let rounds = 4000;
        let mut best = f64::MAX;
        for _ in 0..9 {
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                views.load(v);
                for view in portcullis_waf::transform::View::ALL {
                    std::hint::black_box(views.get(view));
                }
                out.clear();
                f(&mut views, &mut out);
            }
            best = best.min(start.elapsed().as_nanos() as f64 / rounds as f64);
        }
        best
    };
    for v in values {
        let t = Target::new(Location::Query, "q", Part::Value, v);
        let base = time(v, &mut |_, _| {});
        let mut detail = Vec::new();
        let mut total = 0.0;
        for (class, f) in VALUE_DETECTORS.iter().filter(|(c, _)| mine.contains(c)) {
            let n = (time(v, &mut |views, out| f(&t, views, 1, out)) - base).max(0.0);
            total += n;
            detail.push(format!("{} {n:.0}", class.as_str()));
        }
        println!("{v:<45.45} {total:5.0} ns  [{}]", detail.join(", "));
    }
}
