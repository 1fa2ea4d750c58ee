use super::*;

fn q(name: &str, value: &str) -> Target<'static> {
    Target::new(
        Location::Query,
        name.to_string(),
        Part::Value,
        value.to_string(),
    )
}

fn body(name: &str, value: &str) -> Target<'static> {
    Target::new(
        Location::Body,
        name.to_string(),
        Part::Value,
        value.to_string(),
    )
}

/// A JSON key target (what the extractor emits for every member).
fn key(path: &str) -> Target<'static> {
    let k = names::json_last_key(path)
        .map(|k| k.into_owned())
        .unwrap_or_default();
    Target::new(Location::Body, path.to_string(), Part::Name, k)
}

fn facts(kind: BodyKind) -> BodyFacts {
    BodyFacts {
        kind,
        json_top_array: None,
        untyped_method_field: None,
    }
}

fn rules_from(yaml: &str) -> ApiRules {
    let raw: RawApiRules = serde_yaml_ng::from_str(yaml).unwrap();
    let mut e = ConfigErrors::new();
    let r = compile(&raw, "waf.api", &mut e);
    assert!(e.is_empty(), "{e}");
    r
}

fn findings(
    rules: &ApiRules,
    method: &Method,
    targets: &[Target<'_>],
    facts: &BodyFacts,
    paranoia: u8,
) -> Vec<Finding> {
    let mut out = Vec::new();
    inspect_method(rules, method, targets, facts, paranoia, &mut out);
    out
}

fn ids(f: &[Finding]) -> Vec<u32> {
    f.iter().map(|f| f.rule).collect()
}

fn post(targets: &[Target<'_>], facts: &BodyFacts) -> Vec<Finding> {
    findings(&ApiRules::default(), &Method::POST, targets, facts, 1)
}

fn get(targets: &[Target<'_>]) -> Vec<Finding> {
    findings(
        &ApiRules::default(),
        &Method::GET,
        targets,
        &BodyFacts::default(),
        1,
    )
}

/// A GraphQL JSON request body: the document and an `operationName` companion.
fn gql_body(doc: &str) -> Vec<Target<'static>> {
    vec![
        key("$.query"),
        body("$.query", doc),
        key("$.operationName"),
        body("$.operationName", "Op"),
    ]
}

fn gql(doc: &str) -> Vec<Finding> {
    post(&gql_body(doc), &facts(BodyKind::Json))
}

// --- catalogue and configuration -------------------------------------------------------------

#[test]
fn rule_ids_are_unique_and_in_their_blocks() {
    let mut seen = std::collections::HashSet::new();
    for r in RULES {
        assert!(seen.insert(r.id), "duplicate {}", r.id);
        let class = match r.id {
            2300..=2399 => Class::ParameterPollution,
            2400..=2499 => Class::MassAssignment,
            2500..=2599 => Class::ApiAbuse,
            _ => panic!("rule {} out of range", r.id),
        };
        assert_eq!(r.class, class, "rule {}", r.id);
        assert!((1..=4).contains(&r.paranoia));
    }
    assert_eq!(HPP_REPEATED.id, 2300);
    assert_eq!(HPP_QUERY_AND_FORM.id, 2301);
    assert_eq!(MASS_ASSIGNMENT.id, 2400);
    assert_eq!(JSON_BATCH.id, 2500);
    assert_eq!(GQL_SYNTAX.id, 2501);
    assert_eq!(GQL_TOKENS.id, 2502);
    assert_eq!(GQL_DEPTH.id, 2503);
    assert_eq!(GQL_ALIASES.id, 2504);
    assert_eq!(GQL_COMPLEXITY.id, 2505);
    assert_eq!(GQL_BATCH.id, 2506);
    assert_eq!(GQL_INTROSPECTION.id, 2507);
    assert_eq!(GQL_CYCLE.id, 2508);
    assert_eq!(PAGE_OVER_MAX.id, 2510);
    assert_eq!(PAGE_MALFORMED.id, 2511);
    assert_eq!(PAGE_NOT_NUMBER.id, 2512);
    assert_eq!(METHOD_FIELD.id, 2401);
}

/// Rule 2401: a POST body field the frameworks that honour it read as `_method` — a form or
/// multipart field in any case and PHP spelling, a top-level JSON key — and nothing else.
#[test]
fn a_method_override_field_in_a_post_body() {
    let form = facts(BodyKind::Form);
    for name in [
        "_method",
        "_METHOD",
        ".method",
        " _method",
        "_method[]",
        "%5Fmethod",
        "_method%00x",
        // Rack 2 (leading brackets dropped, trailing `]` ignored) and qs (`[_method]`).
        "[_method]",
        "]_method",
        "_method]",
        "[[_method]]",
    ] {
        let f = post(&[body(name, "DELETE")], &form);
        assert_eq!(ids(&f), [2401], "{name:?}");
    }
    assert_eq!(
        ids(&post(
            &[body("_method", "PUT")],
            &facts(BodyKind::Multipart)
        )),
        [2401]
    );
    let json = facts(BodyKind::Json);
    assert_eq!(
        ids(&post(
            &[key("$._method"), body("$._method", "DELETE")],
            &json
        )),
        [2401]
    );
    // Not a method override: other names, a nested key, another method.
    // `[method` is dropped by PHP and is `method` to Rack 2.
    for name in [
        "method",
        "_methods",
        "x_method",
        "_method_id",
        "a[_method]",
        "[method",
        "_method]x",
    ] {
        assert!(post(&[body(name, "DELETE")], &form).is_empty(), "{name:?}");
    }
    assert!(
        post(
            &[key("$.order._method"), body("$.order._method", "x")],
            &json
        )
        .is_empty()
    );
    for m in [Method::PUT, Method::PATCH, Method::GET] {
        let f = findings(
            &ApiRules::default(),
            &m,
            &[body("_method", "DELETE")],
            &form,
            1,
        );
        assert!(f.is_empty(), "{m}");
    }
    // A gateway that lets overrides pass.
    let mut open = ApiRules::default();
    open.allow_method_fields();
    let f = findings(&open, &Method::POST, &[body("_method", "DELETE")], &form, 1);
    assert!(f.is_empty());
    // A body without a type (or of a text or unknown one) that holds such a field when read
    // as a form: the extractor's fact, at the field's name.
    let untyped = BodyFacts {
        untyped_method_field: Some("_method".into()),
        ..facts(BodyKind::Text)
    };
    let whole = body("", "note=x&_method=DELETE");
    let f = post(std::slice::from_ref(&whole), &untyped);
    assert_eq!(ids(&f), [2401]);
    assert_eq!(f[0].target, "body:_method");
    for m in [Method::PUT, Method::PATCH] {
        let f = findings(
            &ApiRules::default(),
            &m,
            std::slice::from_ref(&whole),
            &untyped,
            1,
        );
        assert!(f.is_empty(), "{m}");
    }
    let f = findings(&open, &Method::POST, &[whole], &untyped, 1);
    assert!(f.is_empty());
}

#[test]
fn defaults_compile_cleanly_and_equal_the_default() {
    let mut e = ConfigErrors::new();
    let r = compile(&RawApiRules::default(), "waf.api", &mut e);
    assert!(e.is_empty());
    assert_eq!(r, ApiRules::default());
    assert!(r.hpp.is_some() && r.mass.is_some() && r.graphql.is_some());
    let g = r.graphql.as_ref().unwrap();
    assert_eq!(
        (
            g.max_depth,
            g.max_aliases,
            g.max_complexity,
            g.max_batch,
            g.max_tokens
        ),
        (10, 15, 1000, 10, 20_000)
    );
    assert_eq!(g.introspection, Introspection::Deny);
    assert_eq!(r.max_batch, 100);
    assert_eq!(r.pagination.max, 1000);
    // `is_admin`/`isAdmin` and `page_size`/`pagesize` normalise to one name each.
    assert_eq!(r.mass.as_ref().unwrap().fields.len(), 12);
    assert_eq!(r.pagination.params.len(), 9);
    assert_eq!(
        r.mass.as_ref().unwrap().methods,
        vec![Method::POST, Method::PUT, Method::PATCH]
    );
}

#[test]
fn the_documented_yaml_parses() {
    let r = rules_from(
        r#"
parameter_pollution:
  enabled: true
  allow_arrays: ["ids", "tag[]"]
mass_assignment:
  fields: [role, is_admin]
  extra_fields: [plan]
  methods: [POST, PUT, PATCH, DELETE]
  include_query: true
graphql:
  max_depth: 8
  max_aliases: 0
  max_complexity: 500
  max_batch: 5
  max_tokens: 5000
  introspection: allow
  list_arguments: [first, last]
max_batch: 50
pagination:
  params: [limit]
  max: 200
"#,
    );
    let m = r.mass.as_ref().unwrap();
    assert!(m.fields.contains("plan") && m.fields.contains("isAdmin"));
    assert!(!m.fields.contains("balance"));
    assert!(m.include_query);
    assert_eq!(
        r.graphql.as_ref().unwrap().introspection,
        Introspection::Allow
    );
    assert_eq!(r.max_batch, 50);
    let off = rules_from(
        "{parameter_pollution: {enabled: false}, mass_assignment: {enabled: false}, graphql: {enabled: false}, pagination: {enabled: false}}",
    );
    assert!(off.hpp.is_none() && off.mass.is_none() && off.graphql.is_none());
    assert!(!off.pagination.enabled);
}

#[test]
fn unknown_keys_are_refused() {
    for y in [
        "{nope: 1}",
        "{graphql: {max_deep: 3}}",
        "{parameter_pollution: {mode: block}}",
        "{graphql: {introspection: maybe}}",
    ] {
        assert!(serde_yaml_ng::from_str::<RawApiRules>(y).is_err(), "{y}");
    }
}

#[test]
fn compile_errors_carry_their_path() {
    let raw: RawApiRules = serde_yaml_ng::from_str(
        r#"
parameter_pollution: {allow_arrays: [""]}
mass_assignment: {fields: [role, "__"], methods: [post, "BAD METHOD"]}
graphql: {max_depth: 0, max_complexity: 0, max_batch: 0, max_tokens: 10, list_arguments: ["-"]}
max_batch: 0
pagination: {max: 0, params: [""]}
"#,
    )
    .unwrap();
    let mut e = ConfigErrors::new();
    compile(&raw, "routes[2].waf.api", &mut e);
    let got: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    let want = [
        "routes[2].waf.api.parameter_pollution.allow_arrays[0]: must not be empty",
        "routes[2].waf.api.mass_assignment.fields[1]: must contain a letter or digit",
        "routes[2].waf.api.mass_assignment.methods[0]: methods are case-sensitive: write \"POST\"",
        "routes[2].waf.api.mass_assignment.methods[1]: not an HTTP method",
        "routes[2].waf.api.graphql.max_depth: must be between 1 and 64",
        "routes[2].waf.api.graphql.max_complexity: must be ≥ 1",
        "routes[2].waf.api.graphql.max_batch: must be ≥ 1",
        "routes[2].waf.api.graphql.max_tokens: must be between 100 and 1000000",
        "routes[2].waf.api.graphql.list_arguments[0]: must contain a letter or digit",
        "routes[2].waf.api.max_batch: must be ≥ 1",
        "routes[2].waf.api.pagination.params[0]: must contain a letter or digit",
        "routes[2].waf.api.pagination.max: must be ≥ 1",
    ];
    assert_eq!(got, want);
    let mut e = ConfigErrors::new();
    compile(
        &serde_yaml_ng::from_str("{mass_assignment: {methods: []}}").unwrap(),
        "waf.api",
        &mut e,
    );
    assert_eq!(e.len(), 1);
}

/// An empty list of protected fields or page-size parameters would leave the rule on doing
/// nothing: refused at its path, as an empty list of methods is.
#[test]
fn empty_lists_that_turn_a_rule_into_nothing_are_refused() {
    let errors = |yaml: &str| -> Vec<String> {
        let mut e = ConfigErrors::new();
        compile(
            &serde_yaml_ng::from_str(yaml).unwrap(),
            "routes[1].waf.api",
            &mut e,
        );
        e.iter().map(|e| e.to_string()).collect()
    };
    assert_eq!(
        errors("{mass_assignment: {fields: []}, pagination: {params: []}}"),
        [
            "routes[1].waf.api.mass_assignment.fields: must name at least one field (turn the rule off with enabled: false)",
            "routes[1].waf.api.pagination.params: must name at least one parameter (turn the rule off with enabled: false)",
        ]
    );
    assert_eq!(
        errors("{mass_assignment: {fields: [], extra_fields: []}}"),
        [
            "routes[1].waf.api.mass_assignment.fields: must name at least one field (turn the rule off with enabled: false)"
        ]
    );
    // Fields of one's own only, and the rules turned off, are fine.
    assert!(errors("{mass_assignment: {fields: [], extra_fields: [plan]}}").is_empty());
    assert!(errors("{mass_assignment: {enabled: false}, pagination: {enabled: false}}").is_empty());
    // Empty lists of a rule turned off are moot.
    assert!(
        errors(
            "{mass_assignment: {enabled: false, fields: [], methods: []}, \
             pagination: {enabled: false, params: []}}"
        )
        .is_empty()
    );
}

#[test]
fn a_route_inherits_what_it_leaves_out() {
    let gateway: RawApiRules = serde_yaml_ng::from_str(
        "{graphql: {max_depth: 6, introspection: allow}, mass_assignment: {extra_fields: [plan]}, max_batch: 20}",
    )
    .unwrap();
    let route: RawApiRules =
        serde_yaml_ng::from_str("{graphql: {max_depth: 4}, pagination: {max: 50}}").unwrap();
    let merged = route.inherit(&gateway);
    assert_eq!(merged.graphql.as_ref().unwrap().max_depth, Some(4));
    assert_eq!(
        merged.graphql.as_ref().unwrap().introspection,
        Some(Introspection::Allow)
    );
    assert_eq!(merged.max_batch, Some(20));
    assert_eq!(merged.pagination.as_ref().unwrap().max, Some(50));
    assert_eq!(
        merged.mass_assignment.as_ref().unwrap().extra_fields,
        Some(vec!["plan".to_string()])
    );
    assert_eq!(RawApiRules::default().inherit(&gateway), gateway);
}

// --- parameter pollution ---------------------------------------------------------------------

#[test]
fn a_repeated_query_parameter_is_pollution() {
    let f = get(&[q("id", "1"), q("x", "y"), q("id", "2"), q("id", "3")]);
    assert_eq!(ids(&f), vec![2300]);
    assert_eq!(f[0].target, "query:id");
    assert_eq!(f[0].snippet, "id given 3 times");
    assert_eq!(f[0].severity, Severity::Critical);
    assert!(get(&[q("id", "1"), q("x", "1"), q("y", "1")]).is_empty());
    // In another case: one parameter to case-insensitive binders (ASP.NET and others).
    let f = get(&[q("id", "1"), q("ID", "2"), q("Id", "3")]);
    assert_eq!(ids(&f), vec![2300]);
    assert_eq!(f[0].target, "query:ID");
    assert_eq!(f[0].snippet, "id given 3 times");
}

#[test]
fn declared_arrays_and_bracket_names_may_repeat() {
    let r = rules_from("{parameter_pollution: {allow_arrays: [ids]}}");
    let t = [
        q("ids", "1"),
        q("ids", "2"),
        q("tag[]", "a"),
        q("tag[]", "b"),
    ];
    assert!(findings(&r, &Method::GET, &t, &BodyFacts::default(), 1).is_empty());
    // `ids` is declared on this route only.
    assert_eq!(ids(&get(&t)), vec![2300]);
    let off = rules_from("{parameter_pollution: {enabled: false}}");
    assert!(
        findings(
            &off,
            &Method::GET,
            &[q("a", "1"), q("a", "2")],
            &BodyFacts::default(),
            1
        )
        .is_empty()
    );
}

#[test]
fn many_parameters_are_checked_too() {
    let mut t: Vec<Target<'static>> = (0..100).map(|i| q(&format!("p{i}"), "v")).collect();
    assert!(get(&t).is_empty());
    t.push(q("p7", "again"));
    t.push(q("P9", "again"));
    t.push(q("p9", "again"));
    let f = get(&t);
    assert_eq!(ids(&f), vec![2300, 2300]);
    assert_eq!(f[0].snippet, "p7 given 2 times");
    assert_eq!(f[1].snippet, "p9 given 3 times");
}

#[test]
fn repeated_form_fields_are_pollution_but_files_and_xml_are_not() {
    let form = facts(BodyKind::Form);
    assert_eq!(
        ids(&post(&[body("role", "user"), body("role", "admin")], &form)),
        vec![2300, 2400]
    );
    let multipart = facts(BodyKind::Multipart);
    let files = [
        Target::new(Location::Body, "files", Part::Filename, "a.png"),
        Target::new(Location::Body, "files", Part::Filename, "b.png"),
        body("title", "x"),
    ];
    assert!(post(&files, &multipart).is_empty());
    let xml = facts(BodyKind::Xml);
    assert!(post(&[body("/order/item", "a"), body("/order/item", "b")], &xml).is_empty());
    // JSON keys repeat in arrays of objects; duplicates are the extractor's business.
    let json = facts(BodyKind::Json);
    assert!(post(&[body("$.a", "1"), body("$.a", "2")], &json).is_empty());
}

#[test]
fn a_name_in_query_and_form_is_pollution_at_paranoia_2() {
    let t = [q("amount", "1"), body("amount", "1000"), body("note", "x")];
    let form = facts(BodyKind::Form);
    let r = ApiRules::default();
    assert!(findings(&r, &Method::POST, &t, &form, 1).is_empty());
    let f = findings(&r, &Method::POST, &t, &form, 2);
    assert_eq!(ids(&f), vec![2301]);
    assert_eq!(f[0].target, "body:amount");
    let t = [q("Amount", "1"), body("amount", "1000")];
    assert_eq!(ids(&findings(&r, &Method::POST, &t, &form, 2)), vec![2301]);
}

// --- mass assignment -------------------------------------------------------------------------

/// Letters that servers' case-insensitive binding takes for ASCII ones: Go folds `ſ` to `s`
/// and the Kelvin sign to `k`; Java's `equalsIgnoreCase` and .NET match `ı` and `İ` with `i`.
#[test]
fn protected_keys_spelled_with_letters_servers_fold_to_ascii() {
    let json = facts(BodyKind::Json);
    for k in [
        "$.iſ_admin",
        "$.ıs_admin",
        "$.İS_ADMIN",
        "$.user.permiſſions",
        "$.\u{212a}ey_owner_id",
        "$.tenant_ıd",
    ] {
        let f = post(&[key(k)], &json);
        if k.contains('\u{212a}') {
            // `key_owner_id` is no protected name: folding must not make one up.
            assert!(f.is_empty(), "{k}");
        } else {
            assert_eq!(ids(&f), vec![2400], "{k}");
        }
    }
    // Letters that fold to nothing ASCII stay themselves.
    assert!(post(&[key("$.iß_admin"), key("$.ﬁrole")], &json).is_empty());
}

#[test]
fn protected_json_keys_at_any_depth() {
    let json = facts(BodyKind::Json);
    let t = [
        key("$.user"),
        key("$.user.name"),
        body("$.user.name", "ann"),
        key("$.user.role"),
        body("$.user.role", "admin"),
        key("$.items"),
        key("$.items[0].qty"),
        key("$.items[0].OwnerId"),
        key("$['IS-ADMIN']"),
    ];
    let f = post(&t, &json);
    assert_eq!(ids(&f), vec![2400, 2400, 2400]);
    assert_eq!(f[0].target, "body:$.user.role (name)");
    assert_eq!(f[0].snippet, "role");
    assert_eq!(f[1].snippet, "OwnerId");
    assert_eq!(f[2].snippet, "IS-ADMIN");
    assert!(
        post(
            &[key("$.user.roles_description"), key("$.adminNote")],
            &json
        )
        .is_empty()
    );
}

#[test]
fn protected_form_fields_case_insensitive_and_bracketed() {
    let form = facts(BodyKind::Form);
    let f = post(&[body("name", "x"), body("Role", "admin")], &form);
    assert_eq!(ids(&f), vec![2400]);
    assert_eq!(f[0].target, "body:Role");
    assert_eq!(
        ids(&post(&[body("user[is_admin]", "1")], &form)),
        vec![2400]
    );
    assert_eq!(
        ids(&post(&[body("user.permissions", "*")], &form)),
        vec![2400]
    );
    let xml = facts(BodyKind::Xml);
    assert_eq!(
        ids(&post(&[body("/user/@role", "admin")], &xml)),
        vec![2400]
    );
}

#[test]
fn mass_assignment_only_on_the_listed_methods() {
    let json = facts(BodyKind::Json);
    let t = [key("$.role")];
    let r = ApiRules::default();
    for m in [Method::GET, Method::DELETE, Method::HEAD] {
        assert!(findings(&r, &m, &t, &json, 1).is_empty(), "{m}");
    }
    for m in [Method::POST, Method::PUT, Method::PATCH] {
        assert_eq!(ids(&findings(&r, &m, &t, &json, 1)), vec![2400], "{m}");
    }
    // Method unknown: applies.
    let mut out = Vec::new();
    inspect(&r, &t, &json, 1, &mut out);
    assert_eq!(ids(&out), vec![2400]);
    // Query parameters only when asked.
    assert!(post(&[q("role", "admin")], &BodyFacts::default()).is_empty());
    let iq = rules_from("{mass_assignment: {include_query: true, extra_fields: [plan]}}");
    let f = findings(
        &iq,
        &Method::POST,
        &[q("role", "admin"), q("user[plan]", "gold")],
        &BodyFacts::default(),
        1,
    );
    assert_eq!(ids(&f), vec![2400, 2400]);
    let off = rules_from("{mass_assignment: {enabled: false}}");
    assert!(findings(&off, &Method::POST, &t, &json, 1).is_empty());
}

// --- JSON batch ------------------------------------------------------------------------------

#[test]
fn a_long_top_level_array_is_a_batch_over_the_limit() {
    let mut fa = facts(BodyKind::Json);
    fa.json_top_array = Some(100);
    assert!(post(&[], &fa).is_empty());
    fa.json_top_array = Some(101);
    let f = post(&[], &fa);
    assert_eq!(ids(&f), vec![2500]);
    assert_eq!(f[0].target, "body:$");
    assert_eq!(f[0].snippet, "101 elements > 100");
}

// --- GraphQL ---------------------------------------------------------------------------------

const NORMAL: &str = r#"
# A realistic client query: fragments, variables, directives, inline fragments.
query RepoPage($owner: String!, $name: String!, $first: Int = 20, $withIssues: Boolean!) {
  viewer { login __typename }
  repository(owner: $owner, name: $name) {
    ...RepoFields
    issues(first: $first, states: [OPEN]) @include(if: $withIssues) {
      totalCount
      edges {
        cursor
        node {
          ... on Issue { number title author { login ...Avatar } }
        }
      }
      pageInfo { hasNextPage endCursor }
    }
  }
}

fragment RepoFields on Repository {
  id
  nameWithOwner
  description
  stargazerCount
  owner { ...Avatar }
}

fragment Avatar on Actor { avatarUrl(size: 64) url }

mutation AddStar($id: ID!) {
  addStar(input: {starrableId: $id, clientMutationId: "x"}) { starrable { id viewerHasStarred } }
}

subscription OnIssue($repo: ID!) {
  issueAdded(repositoryId: $repo) { id title }
}
"#;

#[test]
fn a_realistic_document_passes() {
    let f = gql(NORMAL);
    assert!(f.is_empty(), "{f:?}");
    // And it measures what the documentation says.
    let mut none = |_: &str| None;
    let list = NameSet::new(DEFAULT_GRAPHQL_LIST_ARGUMENTS.iter().copied());
    let mut inputs = graphql::Inputs {
        max_tokens: 20_000,
        list_arguments: &list,
        protected: None,
        variables: &mut none,
    };
    let a = graphql::analyse(NORMAL, &mut inputs);
    assert!(a.syntax_error.is_none() && a.cycle.is_none() && !a.token_limit);
    assert_eq!(a.operations, 3);
    // repository > issues > edges > node > author > avatar fields: 6.
    assert_eq!(a.stats.depth, 6);
    assert_eq!(a.stats.aliases, 0);
    // viewer 1 + login 1 (__typename is free) = 2; repository 1 + RepoFields 7 (four
    // scalars, owner 1 + Avatar 2) + issues (1 + 20 × (totalCount 1 + edges 9 + pageInfo 3))
    // = 269, `$first` taking its default 20. The mutation (4) and subscription (3) are smaller.
    assert_eq!(a.stats.complexity, 271);
}

#[test]
fn the_formula_of_the_documentation() {
    let list = NameSet::new(DEFAULT_GRAPHQL_LIST_ARGUMENTS.iter().copied());
    let mut none = |_: &str| None;
    let mut inputs = graphql::Inputs {
        max_tokens: 20_000,
        list_arguments: &list,
        protected: None,
        variables: &mut none,
    };
    let a = graphql::analyse(
        "{ users(first: 100) { name friends(first: 10) { name } } }",
        &mut inputs,
    );
    assert_eq!(a.stats.complexity, 1201);
    assert_eq!(a.stats.depth, 3);
}

#[test]
fn a_deep_query_is_over_the_depth_limit() {
    let deep = format!("{{{}x{}}}", "a {".repeat(11), "}".repeat(11));
    let f = gql(&deep);
    assert_eq!(ids(&f), vec![2503]);
    assert_eq!(f[0].snippet, "depth 12 > 10");
    assert_eq!(f[0].target, "body:$.query");
    let ok = format!("{{{}x{}}}", "a {".repeat(9), "}".repeat(9));
    assert!(gql(&ok).is_empty());
}

#[test]
fn depth_counts_through_fragments() {
    let doc = "query { a { ...F } }
        fragment F on T { b { c { ...G } } }
        fragment G on T { d { e { f { g { h { i { j { k } } } } } } } }";
    let f = gql(doc);
    assert_eq!(ids(&f), vec![2503]);
    assert_eq!(f[0].snippet, "depth 11 > 10");
}

#[test]
fn a_fragment_cycle_is_reported_and_terminates() {
    let doc = "query { a { ...A } }
        fragment A on T { x { ...B } }
        fragment B on T { y { ...A } }
        fragment C on T { ...C }";
    let f = gql(doc);
    assert_eq!(ids(&f), vec![2508]);
    assert!(f[0].snippet.starts_with("fragment "));
}

#[test]
fn fragment_bombs_cost_little_and_are_over_the_limits() {
    // Each fragment spreads the previous one twice: 2^40 fields if expanded naively.
    let mut doc = String::from("query { ...F0 }\nfragment F40 on T { a: x b: x }\n");
    for i in 0..40 {
        doc.push_str(&format!(
            "fragment F{i} on T {{ l: y {{ ...F{n} }} r: y {{ ...F{n} }} }}\n",
            n = i + 1
        ));
    }
    // (No clock: a naive expansion would not finish; a timed bound would flake.)
    let f = gql(&doc);
    assert_eq!(ids(&f), vec![2503, 2504, 2505]);
}

#[test]
fn an_alias_bomb_is_over_the_alias_limit() {
    let many: String = (0..16)
        .map(|i| format!("a{i}: user(id: {i}) {{ id }} "))
        .collect();
    let f = gql(&format!("{{ {many} }}"));
    assert_eq!(ids(&f), vec![2504]);
    assert_eq!(f[0].snippet, "16 aliases > 15");
    let few: String = (0..15)
        .map(|i| format!("a{i}: user(id: {i}) {{ id }} "))
        .collect();
    assert!(gql(&format!("{{ {few} }}")).is_empty());
}

#[test]
fn list_sizes_multiply_complexity() {
    let doc = "query Q($n: Int) { users(first: $n) { friends(first: 50) { name } } }";
    let mut t = gql_body(doc);
    t.push(key("$.variables"));
    t.push(key("$.variables.n"));
    t.push(body("$.variables.n", "30"));
    // 1 + 30 × (1 + 50) = 1531.
    let f = post(&t, &facts(BodyKind::Json));
    assert_eq!(ids(&f), vec![2505]);
    assert_eq!(f[0].snippet, "complexity 1531 > 1000");
    t.pop();
    t.push(body("$.variables.n", "10"));
    assert!(post(&t, &facts(BodyKind::Json)).is_empty());
    // The variable's default when the request gives none.
    let doc = "query Q($n: Int = 100) { users(first: $n) { friends(first: 50) { name } } }";
    assert_eq!(ids(&gql(doc)), vec![2505]);
    // A huge literal saturates instead of overflowing, and is also a page size over the max.
    let f = gql("{ a(first: 99999999999999999999999) { b(last: 99999999999) { c } } }");
    assert_eq!(ids(&f), vec![2505, 2510, 2510]);
    assert_eq!(f[0].snippet, "complexity overflows");
}

#[test]
fn get_graphql_resolves_the_variables_parameter() {
    let t = [
        q(
            "query",
            "query Q($n: Int) { users(first: $n) { friends(first: 50) { name } } }",
        ),
        q("variables", r#"{"n": 30}"#),
    ];
    assert_eq!(ids(&get(&t)), vec![2505]);
}

#[test]
fn a_batch_over_the_limit() {
    let mut fa = facts(BodyKind::Json);
    fa.json_top_array = Some(11);
    let t: Vec<Target<'static>> = (0..11)
        .map(|i| body(&format!("$[{i}].query"), "{ me { id } }"))
        .collect();
    let f = post(&t, &fa);
    assert_eq!(ids(&f), vec![2506]);
    assert_eq!(f[0].snippet, "11 operations > 10");
    fa.json_top_array = Some(10);
    assert!(post(&t[..10], &fa).is_empty());
    // Documents past the limit are not analysed, however `query` is repeated.
    let t: Vec<Target<'static>> = (0..1000)
        .map(|_| q("query", "{ __schema { types { name } } }"))
        .collect();
    let f = get(&t);
    assert_eq!(f.iter().filter(|f| f.rule == 2507).count(), 10);
    assert_eq!(f.iter().filter(|f| f.rule == 2300).count(), 1);
}

#[test]
fn introspection_is_denied_by_default() {
    let f = gql("query IntrospectionQuery { __schema { types { name } } }");
    assert_eq!(ids(&f), vec![2507]);
    assert_eq!(f[0].snippet, "__schema");
    assert_eq!(
        ids(&gql("{ t: __type(name: \"User\") { name } }")),
        vec![2507]
    );
    // Through a fragment too.
    assert_eq!(
        ids(&gql(
            "{ ...I } fragment I on Query { __schema { queryType { name } } }"
        )),
        vec![2507]
    );
    assert!(gql("{ me { __typename id } }").is_empty());
    let allow = rules_from("{graphql: {introspection: allow}}");
    let f = findings(
        &allow,
        &Method::POST,
        &gql_body("{ __schema { types { name } } }"),
        &facts(BodyKind::Json),
        1,
    );
    assert!(f.is_empty());
}

#[test]
fn a_document_that_does_not_parse() {
    let f = gql("query { user(id: 1) { name }");
    assert_eq!(ids(&f), vec![2501]);
    // A GraphQL body is GraphQL whatever it looks like.
    let f = post(&[body("$.query", "}{ nonsense")], &facts(BodyKind::GraphQl));
    assert_eq!(ids(&f), vec![2501]);
}

#[test]
fn a_rest_search_named_query_is_not_graphql() {
    assert!(get(&[q("query", "shoes")]).is_empty());
    assert!(get(&[q("query", "query for shoes {size 42")]).is_empty());
    let json = facts(BodyKind::Json);
    assert!(post(&[body("$.query", "select * from shoes")], &json).is_empty());
    assert!(post(&[body("$.query", "{\"match\": {\"a\": 1}}")], &json).is_empty());
    // But a document that starts like GraphQL is analysed.
    assert_eq!(
        ids(&get(&[q("query", "{ __schema { types { name } } }")])),
        vec![2507]
    );
    assert_eq!(ids(&get(&[q("query", "query Q { a { b }")])), vec![2501]);
}

#[test]
fn hostile_documents_cost_bounded_time() {
    let json = facts(BodyKind::GraphQl);
    for doc in [
        "{".repeat(100_000),
        format!("{}{}", "{a".repeat(100_000), "}".repeat(100_000)),
        format!(
            "{{ a(x: {}1{}) }}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
        format!(
            "{{ a(x: {}1{}) }}",
            "{b: ".repeat(50_000),
            "}".repeat(50_000)
        ),
        "query ".repeat(100_000),
        "\"".repeat(100_000),
        format!("{{ {} }}", "a ".repeat(200_000)),
    ] {
        // (No clock: a superlinear parse makes this test slow, not red.)
        let f = post(&[body("$.query", &doc)], &json);
        assert!(ids(&f).contains(&2501) || ids(&f).contains(&2502), "{f:?}");
    }
    // Nested selections past the parser's limit: does not parse, and too deep.
    let doc = format!("{}{}", "{a".repeat(100_000), "}".repeat(100_000));
    let f = gql(&doc);
    assert!(ids(&f).contains(&2503), "{f:?}");
}

#[test]
fn a_long_document_is_over_the_token_limit() {
    let doc = format!("{{ {} }}", "a ".repeat(20_000));
    let f = gql(&doc);
    assert!(ids(&f).contains(&2502), "{f:?}");
    assert_eq!(
        f.iter().find(|f| f.rule == 2502).unwrap().snippet,
        "more than 20000 tokens"
    );
}

#[test]
fn protected_fields_in_mutation_inputs() {
    let doc = r#"mutation { updateUser(id: 1, input: {name: "x", profile: {isAdmin: true}, tags: [{role: ADMIN}]}) { id } }"#;
    let f = gql(doc);
    assert_eq!(ids(&f), vec![2400, 2400]);
    assert_eq!(f[0].snippet, "isAdmin");
    assert_eq!(f[0].target, "body:$.query");
    // Not in queries (filters), and not on methods the route does not list.
    assert!(gql("query { users(filter: {role: ADMIN}) { id } }").is_empty());
    let t = gql_body(doc);
    assert!(
        findings(
            &ApiRules::default(),
            &Method::GET,
            &t,
            &facts(BodyKind::Json),
            1
        )
        .is_empty()
    );
}

#[test]
fn graphql_can_be_turned_off() {
    let off = rules_from("{graphql: {enabled: false}}");
    let f = findings(
        &off,
        &Method::POST,
        &gql_body("{ __schema { types { name } } }"),
        &facts(BodyKind::Json),
        1,
    );
    assert!(f.is_empty());
}

// --- pagination ------------------------------------------------------------------------------

#[test]
fn page_sizes_over_the_maximum() {
    let f = get(&[q("limit", "5000")]);
    assert_eq!(ids(&f), vec![2510]);
    assert_eq!(f[0].snippet, "limit=5000 > 1000");
    assert!(get(&[q("limit", "1000"), q("page", "999999"), q("per_page", "")]).is_empty());
    assert_eq!(ids(&get(&[q("page[size]", "2000")])), vec![2510]);
    assert_eq!(ids(&get(&[q("pageSize", "2000")])), vec![2510]);
    assert_eq!(ids(&get(&[q("$top", "2000")])), vec![2510]);
    assert_eq!(
        ids(&get(&[q("limit", "99999999999999999999999999")])),
        vec![2510]
    );
    let form = facts(BodyKind::Form);
    assert_eq!(ids(&post(&[body("per_page", "5000")], &form)), vec![2510]);
    let json = facts(BodyKind::Json);
    assert_eq!(ids(&post(&[body("$.limit", "5000")], &json)), vec![2510]);
    assert!(post(&[body("$.filter.limit", "5000")], &json).is_empty());
    let r = rules_from("{pagination: {max: 50, params: [take]}}");
    let t = [q("take", "51"), q("limit", "5000")];
    assert_eq!(
        ids(&findings(&r, &Method::GET, &t, &BodyFacts::default(), 1)),
        vec![2510]
    );
    let off = rules_from("{pagination: {enabled: false}}");
    assert!(findings(&off, &Method::GET, &t, &BodyFacts::default(), 1).is_empty());
}

#[test]
fn page_sizes_that_are_not_plain_numbers() {
    for v in ["-1", "+5", "10.5", "0x10", "100;", "1,000"] {
        let f = get(&[q("limit", v)]);
        assert_eq!(ids(&f), vec![2511], "{v}");
        assert_eq!(f[0].severity, Severity::Error);
    }
    // Malformed, and more than the maximum as lenient parsers read it: over the maximum too.
    for v in ["99999999x", "1e9", "0xFFFFF", "+5000", "5000;", "-99999"] {
        let mut f = ids(&get(&[q("limit", v)]));
        f.sort_unstable();
        assert_eq!(f, vec![2510, 2511], "{v}");
    }
    // Words only at paranoia 2 (`size=XL` is common on shops).
    assert!(get(&[q("limit", "all")]).is_empty());
    let f = findings(
        &ApiRules::default(),
        &Method::GET,
        &[q("limit", "all")],
        &BodyFacts::default(),
        2,
    );
    assert_eq!(ids(&f), vec![2512]);
}

#[test]
fn graphql_list_arguments_are_page_sizes() {
    let f = gql("{ users(first: 5000) { id } }");
    // 1 + 5000 × 1 = 5001 too.
    assert_eq!(ids(&f), vec![2505, 2510]);
    assert_eq!(f[1].snippet, "first=5000 > 1000");
    assert_eq!(ids(&gql("{ users(last: -1) { id } }")), vec![2511]);
    // `size` is not a list argument in GraphQL by default (image sizes…).
    assert!(gql("{ me { avatar(size: 2048) } }").is_empty());
}

// --- cost of the common case -----------------------------------------------------------------

#[test]
fn paranoia_zero_runs_nothing() {
    let t = [q("id", "1"), q("id", "2"), q("limit", "99999")];
    assert!(
        findings(
            &ApiRules::default(),
            &Method::GET,
            &t,
            &BodyFacts::default(),
            0
        )
        .is_empty()
    );
}

#[test]
fn names_are_read_as_frameworks_bind_them() {
    assert_eq!(names::json_last_key("$.user.role").as_deref(), Some("role"));
    assert_eq!(
        names::json_last_key("$['we ird']").as_deref(),
        Some("we ird")
    );
    assert_eq!(
        names::json_last_key("$.a['it\\'s']").as_deref(),
        Some("it's")
    );
    assert_eq!(
        names::json_last_key("$.items[0].qty").as_deref(),
        Some("qty")
    );
    assert_eq!(
        names::json_last_key("$.roles[0][1]").as_deref(),
        Some("roles")
    );
    assert_eq!(names::json_last_key("$"), None);
    assert_eq!(names::json_last_key("$[3]"), None);
    assert!(names::json_is_top_level("$.limit"));
    assert!(names::json_is_top_level("$['limit']"));
    assert!(!names::json_is_top_level("$.a.limit"));
    assert!(!names::json_is_top_level("$[0].limit"));
    assert_eq!(names::field_last_segment("user[role]"), "role");
    assert_eq!(names::field_last_segment("roles[]"), "roles");
    assert_eq!(names::field_last_segment("items[0]"), "items");
    assert_eq!(names::field_last_segment("a.b"), "b");
    assert_eq!(names::xml_last_segment("/u/@role"), "role");
    assert_eq!(names::xml_last_segment("/a:u/a:role[2]"), "role");
    let s = NameSet::new(["is_admin", "x"]);
    assert!(s.contains("IsAdmin") && s.contains("is-admin") && s.contains("IS_ADMIN"));
    assert!(!s.contains("is_admins") && !s.contains("") && !s.contains("__"));
    assert!(!s.contains(&"a".repeat(1000)));
    // Configured names and request names fold alike (the Kelvin sign is `k`).
    let s = NameSet::new(["api_\u{212a}ey", "ſecret"]);
    assert!(s.contains("API_KEY") && s.contains("apikey") && s.contains("Secret"));
    assert!(!s.contains("api_kez"));
}

// --- names as PHP binds them -----------------------------------------------------------------

/// PHP ends a parameter's name at a NUL, drops its leading spaces and makes its spaces and dots
/// `_`: `id%00x`, ` id` and `user.id` are `id`, `id` and `user_id` to it — the parameter
/// rules read them so.
#[test]
fn names_php_reads_as_one_parameter() {
    for (a, b) in [
        ("id", "id\0x"),
        ("id", " id"),
        ("user_id", "user.id"),
        ("user_id", "user id"),
    ] {
        assert_eq!(
            ids(&get(&[q(a, "1"), q(b, "2")])),
            vec![2300],
            "{a:?} {b:?}"
        );
    }
    // Pollution across the query and a form too.
    let form = facts(BodyKind::Form);
    let r = ApiRules::default();
    let t = [q("amount", "1"), body("amount\0x", "1000")];
    assert_eq!(ids(&findings(&r, &Method::POST, &t, &form, 2)), vec![2301]);
    // A protected field, a page size and a GraphQL document under such names.
    assert_eq!(ids(&post(&[body("role\0x", "admin")], &form)), vec![2400]);
    let mass = rules_from("{mass_assignment: {fields: [is_admin]}}");
    assert_eq!(
        ids(&findings(
            &mass,
            &Method::POST,
            &[body("is.admin", "1")],
            &form,
            1
        )),
        vec![2400]
    );
    assert_eq!(ids(&get(&[q("limit\0x", "1000000")])), vec![2510]);
    assert_eq!(ids(&get(&[q("page.size", "1000000")])), vec![2510]);
    assert_eq!(
        ids(&get(&[q("query\0x", "{ __schema { types { name } } }")])),
        vec![2507]
    );
    assert_eq!(
        ids(&post(
            &[body(" query", "{ __schema { types { name } } }")],
            &form
        )),
        vec![2507]
    );
}

// --- GraphQL in other shapes -------------------------------------------------------------------

/// GraphQL as servers also take it: members in any case (Go's `encoding/json`), `variables` as
/// a JSON string (express-graphql), the multipart request's `operations` field (uploads), and
/// JSON in a multipart part (Spring's `@RequestPart`).
#[test]
fn graphql_and_json_in_the_shapes_servers_also_read() {
    let json = facts(BodyKind::Json);
    let f = post(
        &[
            key("$.QUERY"),
            body("$.QUERY", "query{__schema{types{name}}}"),
        ],
        &json,
    );
    assert_eq!(ids(&f), vec![2507]);
    let t = [
        key("$.query"),
        body(
            "$.query",
            "query Q($n: Int) { users(first: $n) { friends(first: 50) { name } } }",
        ),
        key("$.Variables"),
        body("$.Variables", r#"{"n": 30}"#),
    ];
    assert_eq!(ids(&post(&t, &json)), vec![2505]);

    let form = facts(BodyKind::Form);
    let mutation = "mutation($u: UserInput!) { updateUser(input: $u) { id } }";
    let t = [
        body("query", mutation),
        body("variables", r#"{"u": {"role": "admin"}}"#),
    ];
    let f = post(&t, &form);
    assert_eq!(ids(&f), vec![2400]);
    assert_eq!(f[0].snippet, "role");
    let t = [
        key("$.query"),
        body("$.query", mutation),
        key("$.variables"),
        body("$.variables", r#"{"u": {"role": "admin"}}"#),
    ];
    assert_eq!(ids(&post(&t, &json)), vec![2400]);

    let multipart = facts(BodyKind::Multipart);
    let ops = |o: &str| [body("operations", o), body("map", "{}")];
    assert_eq!(
        ids(&post(
            &ops(r#"{"query": "{ __schema { types { name } } }"}"#),
            &multipart
        )),
        vec![2507]
    );
    assert_eq!(
        ids(&post(
            &ops(&format!(
                r#"{{"query": "{mutation}", "variables": {{"u": {{"role": "admin"}}}}}}"#
            )),
            &multipart
        )),
        vec![2400]
    );
    let batch: Vec<String> = (0..11)
        .map(|_| r#"{"query": "{ me { id } }"}"#.to_string())
        .collect();
    assert_eq!(
        ids(&post(&ops(&format!("[{}]", batch.join(","))), &multipart)),
        vec![2506]
    );
    assert!(post(&ops(r#"{"query": "{ me { id } }"}"#), &multipart).is_empty());

    // A JSON part holding a protected field; the same text in a form value is a value.
    let part = [body("profile", r#"{"name": "eve", "role": "admin"}"#)];
    assert_eq!(ids(&post(&part, &multipart)), vec![2400]);
    assert!(post(&part, &form).is_empty());
}

/// A variable's name is matched exactly (GraphQL is case-sensitive), its `variables` member in
/// any case and every one of them; of several values the largest is taken.
#[test]
fn graphql_variables_match_exactly_and_the_largest_value_counts() {
    let json = facts(BodyKind::Json);
    let doc = "query($First: Int) { users(first: $First) { friends(first: $First) { id } } }";
    let with = |members: &[(&str, &str)]| {
        let mut t = vec![key("$.query"), body("$.query", doc)];
        for (path, value) in members {
            t.push(key(path));
            if !value.is_empty() {
                t.push(body(path, value));
            }
        }
        ids(&post(&t, &json))
    };
    // `first` is another variable: `$First` is 100000, as Go reads it.
    let f = with(&[
        ("$.variables", ""),
        ("$.variables.first", "1"),
        ("$.variables.First", "100000"),
    ]);
    assert!(f.contains(&2505) && f.contains(&2510), "{f:?}");
    // The other way round `$First` is 1: nothing over the limits.
    let f = with(&[
        ("$.variables", ""),
        ("$.variables.first", "100000"),
        ("$.variables.First", "1"),
    ]);
    assert!(f.is_empty(), "{f:?}");
    // Two `variables` members (Go merges them, the later wins): the larger value.
    for members in [
        [("$.variables.First", "1"), ("$.Variables.First", "100000")],
        [("$.Variables.First", "100000"), ("$.variables.First", "1")],
        [
            ("$.variables", r#"{"First": 1}"#),
            ("$.VARIABLES", r#"{"First": 100000}"#),
        ],
    ] {
        let f = with(&members);
        assert!(f.contains(&2505) && f.contains(&2510), "{members:?}: {f:?}");
    }
    // GET GraphQL: every `variables` parameter.
    let f = get(&[
        q("query", doc),
        q("variables", r#"{"First": 100000}"#),
        q("Variables", r#"{"First": 1}"#),
    ]);
    assert!(ids(&f).contains(&2505), "{:?}", ids(&f));
}

/// Every `query` member of a multipart request's operation is analysed (a parsed object no
/// longer tells which one the server keeps), with every `variables` member.
#[test]
fn every_query_member_of_an_operation_is_analysed() {
    let multipart = facts(BodyKind::Multipart);
    let ops = |o: &str| [body("operations", o), body("map", "{}")];
    assert_eq!(
        ids(&post(
            &ops(r#"{"Query": "{ ok }", "query": "{ __schema { types { name } } }"}"#),
            &multipart
        )),
        vec![2507]
    );
    assert_eq!(
        ids(&post(
            &ops(r#"{"query": "{ __schema { types { name } } }", "QUERY": "{ ok }"}"#),
            &multipart
        )),
        vec![2507]
    );
    let doc = "query($n: Int) { users(first: $n) { friends(first: $n) { id } } }";
    for vars in [
        r#""variables": {"n": 1}, "Variables": {"n": 100000}"#,
        r#""Variables": {"n": 100000}, "variables": {"n": 1}"#,
        r#""variables": "{\"n\": 1}", "Variables": "{\"n\": 100000}""#,
    ] {
        let f = ids(&post(
            &ops(&format!(r#"{{"query": "{doc}", {vars}}}"#)),
            &multipart,
        ));
        assert!(f.contains(&2505) && f.contains(&2510), "{vars}: {f:?}");
    }
}

// --- `;` pieces and parameter pollution ------------------------------------------------------

/// A `;` piece of a query pair (what servers splitting at `;` read as a parameter).
fn piece(name: &str, value: &str) -> Target<'static> {
    Target::new_derived(
        Location::Query,
        name.to_string(),
        Part::Value,
        value.to_string(),
    )
}

/// A `;` piece repeats a parameter split at `&` (its own pair's name too), never another
/// piece: an RSQL filter's conditions are one parameter.
#[test]
fn pieces_repeat_parameters_but_not_each_other() {
    let rsql = [
        q("search", "name==x;age=ge=18;age=le=65"),
        piece("age", "ge=18"),
        piece("age", "le=65"),
    ];
    assert!(get(&rsql).is_empty(), "{:?}", get(&rsql));
    assert_eq!(
        ids(&get(&[q("id", "1;id=2"), piece("id", "2")])),
        vec![2300]
    );
    assert_eq!(
        ids(&get(&[
            q("age", "5"),
            q("search", "x;age=ge=18"),
            piece("age", "ge=18")
        ])),
        vec![2300]
    );
    // The same past the small-list path.
    let mut padded: Vec<Target<'static>> = (0..40).map(|i| q(&format!("p{i}"), "1")).collect();
    padded.extend(rsql.iter().cloned());
    assert!(get(&padded).is_empty(), "{:?}", get(&padded));
    padded.push(q("age", "30"));
    let f = get(&padded);
    assert_eq!(ids(&f), vec![2300]);
    assert_eq!(f[0].snippet, "age given 3 times");
}

/// JSON inside a value is walked whatever its length (no tree is built): a protected key
/// after 300 KiB of padding is found; an `operations` field too long to read is rule 2502, and
/// so are `variables` sent as a string too long to read for list sizes.
#[test]
fn long_json_values_are_still_read() {
    let pad = "x".repeat(300 * 1024);
    let multipart = facts(BodyKind::Multipart);
    let part = format!(r#"{{"pad": "{pad}", "profile": {{"role": "admin"}}}}"#);
    let f = post(&[body("profile", &part)], &multipart);
    assert_eq!(ids(&f), vec![2400]);
    assert_eq!(f[0].snippet, "role");
    let vars = format!(r#"{{"pad": "{pad}", "u": {{"role": "admin"}}}}"#);
    let json = facts(BodyKind::Json);
    let t = [
        key("$.query"),
        body(
            "$.query",
            "mutation($u: UserInput!) { updateUser(input: $u) { id } }",
        ),
        key("$.variables"),
        body("$.variables", &vars),
    ];
    let f = post(&t, &json);
    assert_eq!(ids(&f), vec![2400, 2502]);
    assert_eq!(f[1].target, "body:$.variables");
    let ops = format!(r#"{{"query": "{{ __schema {{ types {{ name }} }} }}", "pad": "{pad}"}}"#);
    let f = post(&[body("operations", &ops), body("map", "{}")], &multipart);
    assert_eq!(ids(&f), vec![2502]);
    assert_eq!(f[0].target, "body:operations");
}

/// `variables` sent as a string that cannot be read for list sizes — longer than 64 KiB, not
/// JSON, or nested deeper than the parser goes, all of which a server's `JSON.parse` may take —
/// would let `first: $n` pass whatever `n` is: such a request is refused (2502 too long, 2501
/// unparsable), in every shape that sends `variables` as a string.
#[test]
fn variables_that_cannot_be_read_are_reported() {
    let doc = "query Q($n: Int) { users(first: $n) { id } }";
    let pad = |n: usize| "x".repeat(n);
    // Padded to just over and to exactly the limit (64 KiB): `{"n": 1000000, "p": "xx…"}`.
    let over = format!(r#"{{"n": 1000000, "p": "{}"}}"#, pad(64 * 1024));
    let at = format!(r#"{{"n": 5, "p": "{}"}}"#, pad(64 * 1024 - 17));
    assert_eq!(at.len(), 64 * 1024);
    let deep = format!(
        r#"{{"n": 1000000, "p": {}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let f = get(&[q("query", doc), q("variables", &over)]);
    assert_eq!(ids(&f), vec![2502]);
    assert_eq!(f[0].target, "query:variables");
    assert_eq!(f[0].snippet, "variables over 65536 bytes");
    let f = get(&[q("query", doc), q("variables", &deep)]);
    assert_eq!(ids(&f), vec![2501]);
    assert!(
        f[0].snippet.starts_with("variables do not parse as JSON"),
        "{}",
        f[0].snippet
    );
    assert_eq!(
        ids(&get(&[q("query", doc), q("variables", "{n: 5")])),
        vec![2501]
    );
    // At the limit the variables are read: `n` = 5 is within every limit, a million is not.
    assert!(get(&[q("query", doc), q("variables", &at)]).is_empty());
    let million = format!(r#"{{"n": 1000000, "p": "{}"}}"#, pad(64 * 1024 - 23));
    assert_eq!(million.len(), 64 * 1024);
    assert_eq!(
        ids(&get(&[q("query", doc), q("variables", &million)])),
        vec![2505, 2510]
    );
    // Reported once, however many documents share the parameter (the repeated `query` is
    // parameter pollution of its own).
    let f = get(&[q("query", doc), q("query", doc), q("variables", &over)]);
    assert_eq!(ids(&f), vec![2300, 2502]);
    // A form body and a JSON string member alike.
    let form = facts(BodyKind::Form);
    assert_eq!(
        ids(&post(
            &[body("query", doc), body("variables", &deep)],
            &form
        )),
        vec![2501]
    );
    let json = facts(BodyKind::Json);
    let t = [
        key("$.query"),
        body("$.query", doc),
        key("$.variables"),
        body("$.variables", &over),
    ];
    assert_eq!(ids(&post(&t, &json)), vec![2502]);
    // Inside a multipart request's operations.
    let multipart = facts(BodyKind::Multipart);
    let ops = |vars: &str| serde_json::json!({"query": doc, "variables": vars}).to_string();
    let f = post(
        &[body("operations", &ops(&over)), body("map", "{}")],
        &multipart,
    );
    assert_eq!(ids(&f), vec![2502]);
    assert_eq!(f[0].target, "body:operations");
    let f = post(
        &[body("operations", &ops(&deep)), body("map", "{}")],
        &multipart,
    );
    assert_eq!(ids(&f), vec![2501]);
    assert!(
        post(
            &[body("operations", &ops(&at)), body("map", "{}")],
            &multipart
        )
        .is_empty()
    );
    // Beside the map, operations that are not JSON the parser takes are not analysed: 2501.
    let nested = format!(
        r#"{{"query": "{doc}", "x": {}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let f = post(
        &[body("operations", &nested), body("map", "{}")],
        &multipart,
    );
    assert_eq!(ids(&f), vec![2501]);
}

/// `variables` sent as a string inside a multipart request's `operations` are read for
/// protected fields (the part's own JSON walk sees only a string there).
#[test]
fn string_variables_in_multipart_operations_are_read() {
    let multipart = facts(BodyKind::Multipart);
    let ops = r#"{"query": "mutation($u: UserInput!) { updateUser(input: $u) { id } }", "variables": "{\"u\": {\"role\": \"admin\"}}"}"#;
    let f = post(&[body("operations", ops), body("map", "{}")], &multipart);
    assert_eq!(ids(&f), vec![2400]);
    // An object is read once, by the part's walk.
    let ops = r#"{"query": "mutation($u: UserInput!) { updateUser(input: $u) { id } }", "variables": {"u": {"role": "admin"}}}"#;
    let f = post(&[body("operations", ops), body("map", "{}")], &multipart);
    assert_eq!(ids(&f), vec![2400]);
}

/// A field named `operations` is GraphQL's multipart request only beside its `map` field, or
/// where its documents look like GraphQL: a bulk API's operations are not.
#[test]
fn an_operations_field_is_graphql_beside_its_map_or_when_it_looks_so() {
    let bulk = r#"[{"op": "search", "query": "red shoes"}]"#;
    for kind in [BodyKind::Form, BodyKind::Multipart] {
        assert!(post(&[body("operations", bulk)], &facts(kind)).is_empty());
        let many: Vec<&str> = (0..20)
            .map(|_| r#"{"op": "search", "query": "red shoes"}"#)
            .collect();
        let many = format!("[{}]", many.join(","));
        assert!(post(&[body("operations", &many)], &facts(kind)).is_empty());
        // A document that looks like GraphQL is analysed without the map too.
        let doc = r#"{"query": "{ __schema { types { name } } }"}"#;
        assert_eq!(
            ids(&post(&[body("operations", doc)], &facts(kind))),
            vec![2507]
        );
        // Beside the map every document is GraphQL's.
        assert_eq!(
            ids(&post(
                &[body("operations", bulk), body("map", "{}")],
                &facts(kind)
            )),
            vec![2501]
        );
    }
    // Too long to read: rule 2502 only beside the map.
    let long = format!(r#"{{"query": "{}"}}"#, "x".repeat(300 * 1024));
    let multipart = facts(BodyKind::Multipart);
    assert!(post(&[body("operations", &long)], &multipart).is_empty());
}

/// PHP makes dots and spaces `_` only in a name's part before its first `[`: `f[a.b]` and
/// `f[a_b]` are two parameters to it, `a.b` and `a_b` one.
#[test]
fn php_mangles_only_the_base_of_a_name() {
    assert_eq!(names::php_key("f[a.b]"), "f[a.b]");
    assert_eq!(names::php_key("f.x[a b]"), "f_x[a b]");
    assert!(get(&[q("f[a.b]", "1"), q("f[a_b]", "2")]).is_empty());
    assert!(get(&[q("f[a b]", "1"), q("f[a_b]", "2")]).is_empty());
    assert_eq!(ids(&get(&[q("a.b", "1"), q("a_b", "2")])), vec![2300]);
    assert_eq!(ids(&get(&[q("f.x[a]", "1"), q("f_x[a]", "2")])), vec![2300]);
}
