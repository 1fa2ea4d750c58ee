//! API abuse and request-shape rules that need the route's settings: HTTP parameter
//! pollution, mass assignment, GraphQL depth/aliases/complexity/batch/introspection, JSON batch
//! size, pagination limits.
//!
//! Rules 2300–2399 (parameter pollution), 2400–2499 (mass assignment), 2500–2599 (API abuse).
//! Unlike the value detectors these look at the whole request at once ([`inspect`]): a repeated
//! parameter or a batch is a property of the request, not of one value.
//!
//! Cost: a request without a JSON, form or GraphQL body costs a few comparisons per query
//! parameter and allocates nothing unless it carries more than 32 query parameters or a rule
//! fires. GraphQL documents are parsed only when a target is where GraphQL travels (`query` in
//! the query string or form, `$.query` / `$[n].query` in JSON, an `application/graphql` body)
//! and either the request is clearly GraphQL or the text starts like a GraphQL document.
//!
//! OWNER: helper D.

mod graphql;
mod keys;
mod names;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use http::Method;
use portcullis_core::ConfigErrors;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::extract::{BodyFacts, BodyKind};
use crate::model::{Class, Finding, Location, Part, Rule, Severity, Target};
use crate::transform::View;

use names::{
    NameSet, PageValue, field_last_segment, json_is_top_level, json_last_key, page_value, php_key,
};

pub static RULES: &[Rule] = &[
    Rule {
        id: 2300,
        class: Class::ParameterPollution,
        severity: Severity::Critical,
        paranoia: 1,
        description: "parameter repeated but not declared as an array",
    },
    Rule {
        id: 2301,
        class: Class::ParameterPollution,
        severity: Severity::Critical,
        paranoia: 2,
        description: "parameter in both the query string and the form body",
    },
    Rule {
        id: 2400,
        class: Class::MassAssignment,
        severity: Severity::Critical,
        paranoia: 1,
        description: "client sets a protected field",
    },
    Rule {
        id: 2500,
        class: Class::ApiAbuse,
        severity: Severity::Critical,
        paranoia: 1,
        description: "JSON batch (top-level array) longer than the limit",
    },
    Rule {
        id: 2501,
        class: Class::ApiAbuse,
        severity: Severity::Critical,
        paranoia: 1,
        description: "GraphQL document, or its string variables or multipart operations, does not parse",
    },
    Rule {
        id: 2502,
        class: Class::ApiAbuse,
        severity: Severity::Critical,
        paranoia: 1,
        description: "GraphQL document longer than the token limit, or its string variables or multipart operations too long to read",
    },
    Rule {
        id: 2503,
        class: Class::ApiAbuse,
        severity: Severity::Critical,
        paranoia: 1,
        description: "GraphQL query nested deeper than the limit",
    },
    Rule {
        id: 2504,
        class: Class::ApiAbuse,
        severity: Severity::Critical,
        paranoia: 1,
        description: "GraphQL query with more aliases than the limit",
    },
    Rule {
        id: 2505,
        class: Class::ApiAbuse,
        severity: Severity::Critical,
        paranoia: 1,
        description: "GraphQL query more complex than the limit",
    },
    Rule {
        id: 2506,
        class: Class::ApiAbuse,
        severity: Severity::Critical,
        paranoia: 1,
        description: "GraphQL batch with more operations than the limit",
    },
    Rule {
        id: 2507,
        class: Class::ApiAbuse,
        severity: Severity::Critical,
        paranoia: 1,
        description: "GraphQL introspection query",
    },
    Rule {
        id: 2508,
        class: Class::ApiAbuse,
        severity: Severity::Critical,
        paranoia: 1,
        description: "GraphQL fragments spread in a cycle",
    },
    Rule {
        id: 2510,
        class: Class::ApiAbuse,
        severity: Severity::Critical,
        paranoia: 1,
        description: "page size over the maximum",
    },
    Rule {
        id: 2511,
        class: Class::ApiAbuse,
        severity: Severity::Error,
        paranoia: 1,
        description: "page size not a plain non-negative integer (negative, fractional, exponent, hex or trailing characters)",
    },
    Rule {
        id: 2512,
        class: Class::ApiAbuse,
        severity: Severity::Error,
        paranoia: 2,
        description: "page size not a number",
    },
    Rule {
        id: 2401,
        class: Class::MassAssignment,
        severity: Severity::Critical,
        paranoia: 1,
        description: "POST body field a framework reads as a method override (`_method`)",
    },
];

static HPP_REPEATED: &Rule = &RULES[0];
static HPP_QUERY_AND_FORM: &Rule = &RULES[1];
static MASS_ASSIGNMENT: &Rule = &RULES[2];
static JSON_BATCH: &Rule = &RULES[3];
static GQL_SYNTAX: &Rule = &RULES[4];
static GQL_TOKENS: &Rule = &RULES[5];
static GQL_DEPTH: &Rule = &RULES[6];
static GQL_ALIASES: &Rule = &RULES[7];
static GQL_COMPLEXITY: &Rule = &RULES[8];
static GQL_BATCH: &Rule = &RULES[9];
static GQL_INTROSPECTION: &Rule = &RULES[10];
static GQL_CYCLE: &Rule = &RULES[11];
static PAGE_OVER_MAX: &Rule = &RULES[12];
static PAGE_MALFORMED: &Rule = &RULES[13];
static PAGE_NOT_NUMBER: &Rule = &RULES[14];
static METHOD_FIELD: &Rule = &RULES[15];

// ---------------------------------------------------------------------------------------------
// Defaults.

/// Default of `mass_assignment.fields`.
pub const DEFAULT_PROTECTED_FIELDS: &[&str] = &[
    "role",
    "roles",
    "is_admin",
    "isAdmin",
    "admin",
    "permissions",
    "scopes",
    "owner_id",
    "tenant_id",
    "verified",
    "email_verified",
    "balance",
    "credit",
];
/// Default of `mass_assignment.methods`.
pub const DEFAULT_MASS_ASSIGNMENT_METHODS: &[&str] = &["POST", "PUT", "PATCH"];
/// Default of `graphql.max_depth`.
pub const DEFAULT_GRAPHQL_MAX_DEPTH: u32 = 10;
/// Largest accepted `graphql.max_depth`.
pub const GRAPHQL_MAX_DEPTH_CAP: u32 = 64;
/// Default of `graphql.max_aliases`.
pub const DEFAULT_GRAPHQL_MAX_ALIASES: u64 = 15;
/// Default of `graphql.max_complexity`.
pub const DEFAULT_GRAPHQL_MAX_COMPLEXITY: u64 = 1000;
/// Default of `graphql.max_batch`.
pub const DEFAULT_GRAPHQL_MAX_BATCH: u64 = 10;
/// Default of `graphql.max_tokens`.
pub const DEFAULT_GRAPHQL_MAX_TOKENS: u64 = 20_000;
/// Default of `graphql.list_arguments`.
pub const DEFAULT_GRAPHQL_LIST_ARGUMENTS: &[&str] = &[
    "first",
    "last",
    "limit",
    "top",
    "take",
    "page_size",
    "per_page",
];
/// Default of `max_batch`.
pub const DEFAULT_MAX_BATCH: u64 = 100;
/// Default of `pagination.params`.
pub const DEFAULT_PAGINATION_PARAMS: &[&str] = &[
    "limit",
    "per_page",
    "page_size",
    "pagesize",
    "size",
    "count",
    "top",
    "first",
    "last",
    "max_results",
];
/// Default of `pagination.max`.
pub const DEFAULT_PAGINATION_MAX: u64 = 1000;

/// Longest `variables` sent as a string (a GET or form parameter, a JSON string member, one in
/// a multipart request's `operations`) that is parsed, to resolve list sizes and find protected
/// fields; a longer one is not read, and so is rule 2502.
const MAX_VARIABLES_BYTES: usize = 64 * 1024;
/// Largest `operations` field of a GraphQL multipart request that is read (as a JSON tree);
/// a longer one is rule 2502.
const MAX_OPERATIONS_BYTES: usize = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// Configuration.

/// `waf.api`: request-shape limits for APIs (gateway-wide, and per route).
///
/// Every setting is optional. A route's `waf.api` inherits, setting by setting, whatever it
/// leaves out from the gateway-wide `waf.api`, and both fall back to the defaults documented
/// here. A list given on a route replaces the gateway's list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiRules {
    /// HTTP parameter pollution: a query parameter or form field given more than once
    /// (rules 2300, 2301).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_pollution: Option<RawParameterPollution>,
    /// Mass assignment: a request body setting a field the client must not set (rule 2400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mass_assignment: Option<RawMassAssignment>,
    /// GraphQL limits (rules 2501–2508).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphql: Option<RawGraphql>,
    /// Longest top-level JSON array in any JSON body (a batch of objects or operations);
    /// longer is rule 2500. At least 1. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u64>,
    /// Page-size parameters (rules 2510–2512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagination: Option<RawPagination>,
}

/// `waf.api.parameter_pollution`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParameterPollution {
    /// Whether repeated parameters are findings. Default true.
    ///
    /// A query parameter (or form field, URL-encoded or multipart; files excepted) given more
    /// than once is rule 2300 (critical, paranoia 1) unless its name ends in `[]` or is listed
    /// in `allow_arrays`. At paranoia 2, a name given both in the query string and in a form
    /// body is rule 2301 (critical). Repeated JSON keys are a protocol finding, not this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Parameter names that may repeat (exact, case-sensitive), e.g. `[ids, tag]`. Names ending
    /// in `[]` always may. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_arrays: Option<Vec<String>>,
}

/// `waf.api.mass_assignment`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMassAssignment {
    /// Whether protected fields in request bodies are findings (rule 2400, critical,
    /// paranoia 1). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Fields a client must not set. Matched against the last segment of every JSON key path
    /// at any depth (`$.user.role`, `$.items[0].owner_id`), of form and multipart field names
    /// (`role`, `user[role]`, `user.role`), of XML element and attribute paths, and of the
    /// input-object fields of GraphQL mutations; ignoring case and ASCII punctuation, so
    /// `is_admin` also matches `isAdmin`, `IsAdmin` and `is-admin`. Default `[role, roles,
    /// is_admin, isAdmin, admin, permissions, scopes, owner_id, tenant_id, verified,
    /// email_verified, balance, credit]`. Empty only with `extra_fields` while the rule is on
    /// (it would protect nothing: turn it off with `enabled: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// Fields protected in addition to `fields` (so the default list can be extended without
    /// being repeated). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_fields: Option<Vec<String>>,
    /// Request methods the rule applies to (upper case, as HTTP spells them); not empty while
    /// the rule is on. Default `[POST, PUT, PATCH]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Whether query parameters count too (frameworks such as Rails and Spring bind query
    /// parameters into the same object as the body). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_query: Option<bool>,
}

/// `waf.api.graphql`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGraphql {
    /// Whether GraphQL documents are inspected. Default true.
    ///
    /// A document is looked for in the `query` query parameter, the `query` form field,
    /// `$.query` of a JSON body, `$[n].query` of a JSON batch, `application/graphql` bodies,
    /// and the operations of an `operations` form or multipart field. It is parsed when the
    /// request is clearly GraphQL (an `application/graphql` body, an `operationName`,
    /// `variables` or `extensions` member or parameter next to it, a `map` field next to
    /// `operations`) or when its text starts like a GraphQL document (`{ field`, `query Name {`, `mutation (`,
    /// `fragment X on`); a REST search such as `?query=shoes` is left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Deepest field nesting of an operation, fragments resolved: `{ a }` is 1,
    /// `{ a { b } }` is 2 (Relay's `edges { node { … } }` counts two levels). Deeper is rule
    /// 2503. Between 1 and 64. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Most aliased fields in an operation, each fragment counted at every spread. More is
    /// rule 2504. 0 forbids aliases. Default 15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_aliases: Option<u64>,
    /// Highest complexity of an operation; higher is rule 2505. At least 1. Default 1000.
    ///
    /// Complexity counts the fields the server would resolve: every field (but `__typename`)
    /// counts 1, times the list sizes of the fields it is nested in. A field's list size is
    /// the largest integer given to one of its `list_arguments` (a literal, the request's
    /// variable — found by its exact name, the largest of its values when several `variables`
    /// members give it —, or the variable's default), 1 if none. So
    /// `{ users(first: 100) { name friends(first: 10) { name } } }` costs
    /// 1 + 100 × (1 + 1 + 10 × 1) = 1201. Fragments count at every spread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_complexity: Option<u64>,
    /// Most operations in one JSON batch (`[{"query": …}, {"query": …}]`); more is rule 2506.
    /// Also the most documents analysed in one request (batched or not: a repeated `query`
    /// parameter counts); those past it are not parsed. At least 1. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u64>,
    /// Most tokens the parser reads in one document, white space and punctuation included
    /// (one token per 2–4 bytes of a formatted query, so the default is some 40–80 KB);
    /// longer is rule 2502 and the rest is not read. Parsing costs about 0.1 ms per 1000
    /// tokens. Between 100 and 1000000. Default 20000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// `allow` or `deny` introspection (`__schema`, `__type`; `__typename` is always allowed).
    /// Denied, an introspection query is rule 2507. Default `deny`: a production API need not
    /// publish its schema; allow it on development routes or where the schema is public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<Introspection>,
    /// Arguments that size a list (compared like `mass_assignment.fields`), for complexity;
    /// their values are also checked against `pagination.max`. Default `[first, last, limit,
    /// top, take, page_size, per_page]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_arguments: Option<Vec<String>>,
}

/// Whether GraphQL introspection is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Introspection {
    /// Introspection queries pass.
    Allow,
    /// An introspection query is rule 2507.
    Deny,
}

/// `waf.api.pagination`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPagination {
    /// Whether page sizes are checked. Default true.
    ///
    /// Checked: query parameters and form fields whose name (its last segment: `page[size]`
    /// is `size`) is one of `params`, members of a top-level JSON object so named
    /// (`$.limit`), and GraphQL `list_arguments`. A value over `max` is rule 2510 (critical,
    /// paranoia 1); a numeric-looking value that is not a plain non-negative integer (`-1`,
    /// `1e9`, `10.5`, `0x10`, `100;`) is rule 2511 (error, paranoia 1), and rule 2510 too when
    /// a lenient parser would read it as more than `max` (`99999999x`, `1e9`, `0xFFFFF`:
    /// `parseInt`, `Number`, `float`); a word (`all`,
    /// `unlimited`) is rule 2512 (error, paranoia 2). An empty value is left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Page-size parameter names, compared like `mass_assignment.fields` (so `page_size` also
    /// matches `pageSize` and `$top` matches `top`). Default `[limit, per_page, page_size,
    /// pagesize, size, count, top, first, last, max_results]`. Not empty while the check is on
    /// (turn it off with `enabled: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<String>>,
    /// Largest page size. At least 1. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

impl RawApiRules {
    /// These settings (a route's) over `base` (the gateway's): every setting left out here is
    /// taken from `base`.
    pub fn inherit(&self, base: &RawApiRules) -> RawApiRules {
        fn section<T: Clone>(
            mine: &Option<T>,
            base: &Option<T>,
            merge: impl FnOnce(&T, &T) -> T,
        ) -> Option<T> {
            match (mine, base) {
                (Some(m), Some(b)) => Some(merge(m, b)),
                (Some(m), None) => Some(m.clone()),
                (None, b) => b.clone(),
            }
        }
        fn or<T: Clone>(mine: &Option<T>, base: &Option<T>) -> Option<T> {
            mine.clone().or_else(|| base.clone())
        }
        RawApiRules {
            parameter_pollution: section(
                &self.parameter_pollution,
                &base.parameter_pollution,
                |m, b| RawParameterPollution {
                    enabled: or(&m.enabled, &b.enabled),
                    allow_arrays: or(&m.allow_arrays, &b.allow_arrays),
                },
            ),
            mass_assignment: section(&self.mass_assignment, &base.mass_assignment, |m, b| {
                RawMassAssignment {
                    enabled: or(&m.enabled, &b.enabled),
                    fields: or(&m.fields, &b.fields),
                    extra_fields: or(&m.extra_fields, &b.extra_fields),
                    methods: or(&m.methods, &b.methods),
                    include_query: or(&m.include_query, &b.include_query),
                }
            }),
            graphql: section(&self.graphql, &base.graphql, |m, b| RawGraphql {
                enabled: or(&m.enabled, &b.enabled),
                max_depth: or(&m.max_depth, &b.max_depth),
                max_aliases: or(&m.max_aliases, &b.max_aliases),
                max_complexity: or(&m.max_complexity, &b.max_complexity),
                max_batch: or(&m.max_batch, &b.max_batch),
                max_tokens: or(&m.max_tokens, &b.max_tokens),
                introspection: or(&m.introspection, &b.introspection),
                list_arguments: or(&m.list_arguments, &b.list_arguments),
            }),
            max_batch: or(&self.max_batch, &base.max_batch),
            pagination: section(&self.pagination, &base.pagination, |m, b| RawPagination {
                enabled: or(&m.enabled, &b.enabled),
                params: or(&m.params, &b.params),
                max: or(&m.max, &b.max),
            }),
        }
    }
}

/// The route's API-abuse settings (compiled). Raw form: [`RawApiRules`]. The default is the
/// compiled default configuration (every rule on).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRules {
    hpp: Option<Hpp>,
    mass: Option<Mass>,
    graphql: Option<Graphql>,
    max_batch: u64,
    pagination: Pagination,
    /// Whether a `_method` field in a POST body is a finding (rule 2401): unless the gateway
    /// lets method overrides pass (`server.method_override: pass`).
    method_field: bool,
}

impl ApiRules {
    /// Turns rule 2401 off, for a gateway whose backends need method overrides
    /// (`server.method_override: pass`, which lets the header and query forms through too).
    pub fn allow_method_fields(&mut self) {
        self.method_field = false;
    }

    /// Lets these query parameters repeat (arrays a route's API contract declares), on top of
    /// the configured `allow_arrays`. No effect when parameter pollution is off.
    pub fn allow_arrays(&mut self, names: impl IntoIterator<Item = String>) {
        if let Some(h) = self.hpp.as_mut() {
            for n in names {
                if !h.allow_arrays.contains(&n) {
                    h.allow_arrays.push(n);
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Hpp {
    allow_arrays: Vec<String>,
}

impl Hpp {
    fn may_repeat(&self, name: &str) -> bool {
        name.ends_with("[]") || self.allow_arrays.iter().any(|a| a == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Mass {
    fields: NameSet,
    methods: Vec<Method>,
    include_query: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Graphql {
    max_depth: u32,
    max_aliases: u64,
    max_complexity: u64,
    max_batch: u64,
    max_tokens: usize,
    introspection: Introspection,
    list_arguments: NameSet,
}

#[derive(Debug, Clone, PartialEq)]
struct Pagination {
    enabled: bool,
    params: NameSet,
    max: u64,
}

impl Default for ApiRules {
    fn default() -> Self {
        compile(&RawApiRules::default(), "", &mut ConfigErrors::new())
    }
}

/// Checks a list of names; every entry must keep a letter or digit once normalised.
fn check_names(names: &[String], at: &str, e: &mut ConfigErrors) {
    for (i, n) in names.iter().enumerate() {
        let norm = names::normalize(n);
        if norm.is_empty() {
            e.push(format!("{at}[{i}]"), "must contain a letter or digit");
        } else if norm.len() > 64 {
            e.push(format!("{at}[{i}]"), "must be at most 64 characters");
        }
    }
}

fn at_least(v: u64, min: u64, at: String, e: &mut ConfigErrors) {
    if v < min {
        e.push(at, format!("must be ≥ {min}"));
    }
}

/// Compiles the raw settings; errors are pushed with their path under `at`.
pub fn compile(raw: &RawApiRules, at: &str, e: &mut ConfigErrors) -> ApiRules {
    // Parameter pollution.
    let pp = raw.parameter_pollution.clone().unwrap_or_default();
    let allow_arrays = pp.allow_arrays.unwrap_or_default();
    for (i, n) in allow_arrays.iter().enumerate() {
        if n.is_empty() {
            e.push(
                format!("{at}.parameter_pollution.allow_arrays[{i}]"),
                "must not be empty",
            );
        }
    }
    let hpp = pp.enabled.unwrap_or(true).then_some(Hpp { allow_arrays });

    // Mass assignment.
    let ma = raw.mass_assignment.clone().unwrap_or_default();
    let fields = ma.fields.unwrap_or_else(|| {
        DEFAULT_PROTECTED_FIELDS
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    check_names(&fields, &format!("{at}.mass_assignment.fields"), e);
    let extra = ma.extra_fields.unwrap_or_default();
    check_names(&extra, &format!("{at}.mass_assignment.extra_fields"), e);
    // Empty lists leave a rule on that does nothing; on a rule turned off they are moot.
    let ma_enabled = ma.enabled.unwrap_or(true);
    if ma_enabled && fields.is_empty() && extra.is_empty() {
        e.push(
            format!("{at}.mass_assignment.fields"),
            "must name at least one field (turn the rule off with enabled: false)",
        );
    }
    let method_names = ma.methods.unwrap_or_else(|| {
        DEFAULT_MASS_ASSIGNMENT_METHODS
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    if ma_enabled && method_names.is_empty() {
        e.push(
            format!("{at}.mass_assignment.methods"),
            "must name at least one method (turn the rule off with enabled: false)",
        );
    }
    let mut methods = Vec::with_capacity(method_names.len());
    for (i, m) in method_names.iter().enumerate() {
        let path = format!("{at}.mass_assignment.methods[{i}]");
        if m.bytes().any(|b| b.is_ascii_lowercase()) {
            e.push(
                path,
                format!(
                    "methods are case-sensitive: write {:?}",
                    m.to_ascii_uppercase()
                ),
            );
            continue;
        }
        match Method::from_bytes(m.as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => e.push(path, "not an HTTP method"),
        }
    }
    let mass = ma_enabled.then(|| Mass {
        fields: NameSet::new(fields.iter().chain(&extra).map(String::as_str)),
        methods,
        include_query: ma.include_query.unwrap_or(false),
    });

    // GraphQL.
    let gq = raw.graphql.clone().unwrap_or_default();
    let max_depth = gq.max_depth.unwrap_or(DEFAULT_GRAPHQL_MAX_DEPTH);
    if !(1..=GRAPHQL_MAX_DEPTH_CAP).contains(&max_depth) {
        e.push(
            format!("{at}.graphql.max_depth"),
            format!("must be between 1 and {GRAPHQL_MAX_DEPTH_CAP}"),
        );
    }
    let max_complexity = gq.max_complexity.unwrap_or(DEFAULT_GRAPHQL_MAX_COMPLEXITY);
    at_least(max_complexity, 1, format!("{at}.graphql.max_complexity"), e);
    let gq_batch = gq.max_batch.unwrap_or(DEFAULT_GRAPHQL_MAX_BATCH);
    at_least(gq_batch, 1, format!("{at}.graphql.max_batch"), e);
    let max_tokens = gq.max_tokens.unwrap_or(DEFAULT_GRAPHQL_MAX_TOKENS);
    if !(100..=1_000_000).contains(&max_tokens) {
        e.push(
            format!("{at}.graphql.max_tokens"),
            "must be between 100 and 1000000",
        );
    }
    let list_arguments = gq.list_arguments.unwrap_or_else(|| {
        DEFAULT_GRAPHQL_LIST_ARGUMENTS
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    check_names(&list_arguments, &format!("{at}.graphql.list_arguments"), e);
    let graphql = gq.enabled.unwrap_or(true).then(|| Graphql {
        max_depth,
        max_aliases: gq.max_aliases.unwrap_or(DEFAULT_GRAPHQL_MAX_ALIASES),
        max_complexity,
        max_batch: gq_batch,
        max_tokens: usize::try_from(max_tokens).unwrap_or(usize::MAX),
        introspection: gq.introspection.unwrap_or(Introspection::Deny),
        list_arguments: NameSet::new(list_arguments.iter().map(String::as_str)),
    });

    // JSON batch.
    let max_batch = raw.max_batch.unwrap_or(DEFAULT_MAX_BATCH);
    at_least(max_batch, 1, format!("{at}.max_batch"), e);

    // Pagination.
    let pg = raw.pagination.clone().unwrap_or_default();
    let params = pg.params.unwrap_or_else(|| {
        DEFAULT_PAGINATION_PARAMS
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    check_names(&params, &format!("{at}.pagination.params"), e);
    let pg_enabled = pg.enabled.unwrap_or(true);
    if pg_enabled && params.is_empty() {
        e.push(
            format!("{at}.pagination.params"),
            "must name at least one parameter (turn the rule off with enabled: false)",
        );
    }
    let max = pg.max.unwrap_or(DEFAULT_PAGINATION_MAX);
    at_least(max, 1, format!("{at}.pagination.max"), e);
    let pagination = Pagination {
        enabled: pg_enabled,
        params: NameSet::new(params.iter().map(String::as_str)),
        max,
    };

    ApiRules {
        hpp,
        mass,
        graphql,
        max_batch,
        pagination,
        method_field: true,
    }
}

// ---------------------------------------------------------------------------------------------
// Inspection.

/// Runs the request-shape rules over every extracted target and the body facts, the request
/// method being unknown: mass assignment applies whatever the method. The engine calls
/// [`inspect_method`].
pub fn inspect(
    rules: &ApiRules,
    targets: &[Target<'_>],
    facts: &BodyFacts,
    paranoia: u8,
    out: &mut Vec<Finding>,
) {
    run(rules, None, targets, facts, paranoia, out);
}

/// Rule 2401's id (the method override in a POST body).
pub fn method_field_rule() -> u32 {
    METHOD_FIELD.id
}

/// [`inspect`] for a request of a known method: mass assignment applies only to the methods
/// the route lists (`mass_assignment.methods`).
pub fn inspect_method(
    rules: &ApiRules,
    method: &Method,
    targets: &[Target<'_>],
    facts: &BodyFacts,
    paranoia: u8,
    out: &mut Vec<Finding>,
) {
    run(rules, Some(method), targets, facts, paranoia, out);
}

fn run(
    rules: &ApiRules,
    method: Option<&Method>,
    targets: &[Target<'_>],
    facts: &BodyFacts,
    paranoia: u8,
    out: &mut Vec<Finding>,
) {
    let mut f = Findings { paranoia, out };
    if let Some(h) = &rules.hpp {
        parameter_pollution(h, targets, facts, &mut f);
    }
    let mass = rules
        .mass
        .as_ref()
        .filter(|m| method.is_none_or(|x| m.methods.contains(x)));
    if let Some(m) = mass {
        mass_assignment(m, targets, facts, &mut f);
    }
    if rules.method_field && method == Some(&Method::POST) {
        method_field(targets, facts, &mut f);
    }
    if let Some(n) = facts.json_top_array {
        let n = n as u64;
        if n > rules.max_batch {
            f.push(
                JSON_BATCH,
                &request_target(),
                &format!("{n} elements > {}", rules.max_batch),
            );
        }
    }
    if let Some(g) = &rules.graphql {
        graphql_rules(g, mass, &rules.pagination, targets, facts, &mut f);
    }
    if rules.pagination.enabled {
        pagination(&rules.pagination, targets, facts, &mut f);
    }
}

/// Findings of the rules the paranoia level runs.
struct Findings<'o> {
    paranoia: u8,
    out: &'o mut Vec<Finding>,
}

impl Findings<'_> {
    fn runs(&self, rule: &Rule) -> bool {
        rule.paranoia <= self.paranoia
    }

    fn push(&mut self, rule: &'static Rule, target: &Target<'_>, matched: &str) {
        if self.runs(rule) {
            let mut f = Finding::new(rule, target, View::Raw, matched);
            // A request's shape, names and numbers: a derived target's is a fact of its own
            // (`?id=1;id=2` repeats `id`), never the same bytes scored twice.
            f.derived = false;
            self.out.push(f);
        }
    }
}

/// The target of a finding about the request as a whole.
fn request_target() -> Target<'static> {
    Target::new(Location::Body, "$", Part::Value, "")
}

/// How a body target's name is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyName {
    /// A JSON path (`$.user.role`).
    Json,
    /// An XML path (`/user/@role`).
    Xml,
    /// A form or multipart field name.
    Field,
    /// The body inspected whole (or anything else without a name).
    Whole,
}

fn body_name(kind: BodyKind, name: &str) -> BodyName {
    if name.is_empty() {
        return BodyName::Whole;
    }
    match kind {
        BodyKind::Form | BodyKind::Multipart => BodyName::Field,
        BodyKind::Json | BodyKind::GraphQl => {
            if name.starts_with('$') {
                BodyName::Json
            } else {
                BodyName::Whole
            }
        }
        BodyKind::Xml => BodyName::Xml,
        _ => {
            if name.starts_with('$') {
                BodyName::Json
            } else if name.starts_with('/') {
                BodyName::Xml
            } else {
                BodyName::Field
            }
        }
    }
}

fn is_query_value(t: &Target<'_>) -> bool {
    t.location == Location::Query && t.part == Part::Value && !t.name.is_empty()
}

fn is_form_value(t: &Target<'_>, kind: BodyKind) -> bool {
    t.location == Location::Body
        && t.part == Part::Value
        && body_name(kind, &t.name) == BodyName::Field
}

// --- Parameter pollution ---------------------------------------------------------------------

fn parameter_pollution(h: &Hpp, targets: &[Target<'_>], facts: &BodyFacts, f: &mut Findings<'_>) {
    if !f.runs(HPP_REPEATED) {
        return;
    }
    repeats(h, targets, is_query_value, f);
    if matches!(
        facts.kind,
        BodyKind::Form | BodyKind::Multipart | BodyKind::None
    ) {
        repeats(h, targets, |t| is_form_value(t, facts.kind), f);
    }
    if f.runs(HPP_QUERY_AND_FORM) {
        query_and_form(h, targets, facts.kind, f);
    }
}

/// Reports each name picked more than once (on its second occurrence). Names are compared
/// without regard to ASCII case: ASP.NET, PHP's `$_REQUEST` on case-insensitive setups and
/// many binders read `id` and `ID` as one parameter.
///
/// A `;` piece of a query pair (a derived target) counts against parameters split at `&`
/// — its own pair's name included: `?id=1;id=2` is two `id`s to a server that splits at `;` —
/// but not against another piece: RSQL and FIQL filters join conditions with `;`
/// (`?search=age=ge=18;age=le=65`), which is one `search` to most servers and a repeated `age`
/// to none that reads the filter.
fn repeats(
    h: &Hpp,
    targets: &[Target<'_>],
    pick: impl Fn(&Target<'_>) -> bool,
    f: &mut Findings<'_>,
) {
    const SMALL: usize = 32;
    let mut idx = [0usize; SMALL];
    let mut n = 0usize;
    let mut many = false;
    for (i, t) in targets.iter().enumerate() {
        if pick(t) {
            if n == SMALL {
                many = true;
                break;
            }
            idx[n] = i;
            n += 1;
        }
    }
    if n < 2 {
        return;
    }
    // One name's occurrences: reported when two are parameters, or one a parameter and one a
    // piece.
    let mut report = |group: &mut dyn Iterator<Item = &Target<'_>>| {
        let (mut count, mut real) = (0usize, 0usize);
        let (mut first, mut second) = (None, None);
        for t in group {
            count += 1;
            real += usize::from(!t.derived);
            match first {
                None => first = Some(t),
                Some(_) => {
                    second.get_or_insert(t);
                }
            }
        }
        let (Some(first), Some(second)) = (first, second) else {
            return;
        };
        if (real >= 2 || (real >= 1 && count > real)) && !h.may_repeat(&first.name) {
            f.push(
                HPP_REPEATED,
                second,
                &format!("{} given {count} times", first.name),
            );
        }
    };
    if !many {
        let list = &idx[..n];
        let keys: Vec<Cow<'_, str>> = list.iter().map(|&i| php_key(&targets[i].name)).collect();
        for (k, key) in keys.iter().enumerate() {
            if keys[..k].contains(key) {
                continue;
            }
            let mut group = list[k..]
                .iter()
                .zip(&keys[k..])
                .filter(|(_, other)| *other == key)
                .map(|(&j, _)| &targets[j]);
            report(&mut group);
        }
        return;
    }
    let mut list: Vec<(Cow<'_, str>, &Target<'_>)> = targets
        .iter()
        .filter(|t| pick(t))
        .map(|t| (php_key(&t.name), t))
        .collect();
    // Stable: a name's occurrences stay in request order.
    list.sort_by(|a, b| a.0.cmp(&b.0));
    let mut k = 0;
    while k < list.len() {
        let mut end = k + 1;
        while end < list.len() && list[end].0 == list[k].0 {
            end += 1;
        }
        if end - k > 1 {
            report(&mut list[k..end].iter().map(|(_, t)| *t));
        }
        k = end;
    }
}

/// Names given both in the query string and in a form body (once per name).
fn query_and_form(h: &Hpp, targets: &[Target<'_>], kind: BodyKind, f: &mut Findings<'_>) {
    if !targets.iter().any(is_query_value) {
        return;
    }
    let query: Vec<Cow<'_, str>> = targets
        .iter()
        .filter(|t| is_query_value(t))
        .map(|t| php_key(&t.name))
        .collect();
    let mut seen: Vec<Cow<'_, str>> = Vec::new();
    for t in targets.iter().filter(|t| is_form_value(t, kind)) {
        let name = &*t.name;
        let key = php_key(name);
        if h.may_repeat(name) || !query.contains(&key) || seen.contains(&key) {
            continue;
        }
        seen.push(key);
        f.push(HPP_QUERY_AND_FORM, t, &format!("{name} in query and body"));
    }
}

// --- Mass assignment -------------------------------------------------------------------------

fn mass_assignment(m: &Mass, targets: &[Target<'_>], facts: &BodyFacts, f: &mut Findings<'_>) {
    if !f.runs(MASS_ASSIGNMENT) {
        return;
    }
    // (location, name) already reported: a repeated field or XML element reports once.
    let mut seen: Vec<(Location, &str)> = Vec::new();
    for t in targets {
        let segment: Option<Cow<'_, str>> = match t.location {
            Location::Body => match body_name(facts.kind, &t.name) {
                BodyName::Json if t.part == Part::Name => json_last_key(&t.name),
                BodyName::Field if t.part == Part::Value => {
                    Some(Cow::Borrowed(field_last_segment(&t.name)))
                }
                BodyName::Xml if t.part == Part::Value => {
                    Some(Cow::Borrowed(names::xml_last_segment(&t.name)))
                }
                _ => None,
            },
            Location::Query if m.include_query && t.part == Part::Value => {
                Some(Cow::Borrowed(field_last_segment(&t.name)))
            }
            _ => None,
        };
        let Some(segment) = segment else { continue };
        // A field's whole name too: PHP binds `is.admin` as `is_admin` (its last segment,
        // `admin`, names another field).
        let whole = matches!(t.location, Location::Query)
            || body_name(facts.kind, &t.name) == BodyName::Field;
        if !(m.fields.contains(&segment) || whole && m.fields.contains(&t.name))
            || seen.contains(&(t.location, &*t.name))
        {
            continue;
        }
        seen.push((t.location, &t.name));
        f.push(MASS_ASSIGNMENT, t, &segment);
    }
    // JSON inside a value: a multipart part (Spring's `@RequestPart` binds a JSON part), or
    // GraphQL `variables` sent as a string (express-graphql parses it; a form or query
    // parameter is one).
    for t in targets {
        if t.part != Part::Value || !crate::extract::starts_like_json(t.value.as_bytes()) {
            continue;
        }
        let json_part = t.location == Location::Body
            && facts.kind == BodyKind::Multipart
            && body_name(facts.kind, &t.name) == BodyName::Field;
        let variables = match t.location {
            Location::Query => php_key(&t.name) == "variables",
            Location::Body => match body_name(facts.kind, &t.name) {
                BodyName::Field => php_key(&t.name) == "variables",
                BodyName::Json => {
                    json_last_key(&t.name).is_some_and(|k| k.eq_ignore_ascii_case("variables"))
                }
                _ => false,
            },
            _ => false,
        };
        if !(json_part || variables) || seen.contains(&(t.location, &*t.name)) {
            continue;
        }
        // Walked as it is read, whatever its length (no tree built).
        if let Some(key) = keys::protected_key(&m.fields, &t.value) {
            seen.push((t.location, &t.name));
            f.push(MASS_ASSIGNMENT, t, &key);
        }
    }
}

/// Rule 2401: a field of a POST body that Rack, Symfony or Laravel read as the method to run
/// instead of the request line's (`_method=DELETE`), which route methods and per-method
/// authorization never saw — a form or multipart field whose name reads as `_method` (in any
/// case, with PHP's mangling: `.method`, ` _method`, `_method[]`; with Rack 2's and qs's
/// brackets: `[_method]`, `_method]`), a top-level JSON key `_method` (Laravel reads JSON
/// input), or such a field in a body without a type or of a text or unknown one, read as a
/// form or multipart anyway (Rack reads an untyped POST body as a form:
/// [`BodyFacts::untyped_method_field`]). Only POST: those frameworks override no other method.
fn method_field(targets: &[Target<'_>], facts: &BodyFacts, f: &mut Findings<'_>) {
    if !f.runs(METHOD_FIELD) {
        return;
    }
    let found = targets.iter().find(|t| {
        t.location == Location::Body
            && match body_name(facts.kind, &t.name) {
                BodyName::Field => {
                    t.part == Part::Value
                        && portcullis_core::query::is_method_name(t.name.as_bytes())
                }
                BodyName::Json => t.part == Part::Name && t.name == "$._method",
                _ => false,
            }
    });
    if let Some(t) = found {
        f.push(METHOD_FIELD, t, &t.name);
    } else if let Some(name) = &facts.untyped_method_field {
        let t = Target::new(Location::Body, name.as_str(), Part::Value, "");
        f.push(METHOD_FIELD, &t, name);
    }
}

// --- Pagination ------------------------------------------------------------------------------

fn pagination(p: &Pagination, targets: &[Target<'_>], facts: &BodyFacts, f: &mut Findings<'_>) {
    for t in targets {
        if t.part != Part::Value {
            continue;
        }
        let name: Cow<'_, str> = match t.location {
            Location::Query => Cow::Borrowed(field_last_segment(&t.name)),
            Location::Body => match body_name(facts.kind, &t.name) {
                BodyName::Field => Cow::Borrowed(field_last_segment(&t.name)),
                BodyName::Json if json_is_top_level(&t.name) => match json_last_key(&t.name) {
                    Some(k) => k,
                    None => continue,
                },
                _ => continue,
            },
            _ => continue,
        };
        // Or the whole name, as PHP binds it (`page.size` is `page_size` to it).
        if p.params.contains(&name)
            || (t.location == Location::Query || body_name(facts.kind, &t.name) == BodyName::Field)
                && p.params.contains(&t.name)
        {
            page_size(p, t, &name, &t.value, f);
        }
    }
}

fn page_size(p: &Pagination, t: &Target<'_>, name: &str, value: &str, f: &mut Findings<'_>) {
    match page_value(value) {
        PageValue::Empty => {}
        PageValue::Number(n) => {
            if n > p.max {
                f.push(
                    PAGE_OVER_MAX,
                    t,
                    &format!("{name}={} > {}", value.trim_ascii(), p.max),
                );
            }
        }
        PageValue::Malformed => {
            f.push(PAGE_MALFORMED, t, &format!("{name}={value}"));
            // Read as lenient parsers would (`parseInt`, `Number`, `float`, hex), a
            // malformed size may still be a huge one: `99999999x` is 99999999 to `parseInt`.
            if lenient_page_size(value) > p.max as f64 {
                f.push(
                    PAGE_OVER_MAX,
                    t,
                    &format!("{name}={} > {}", value.trim_ascii(), p.max),
                );
            }
        }
        PageValue::Word => f.push(PAGE_NOT_NUMBER, t, &format!("{name}={value}")),
    }
}

/// The largest number lenient parsers read from a page size: its leading digits (after an
/// optional sign), the whole as a float (`1e9`), or as hex (`0x10`).
fn lenient_page_size(value: &str) -> f64 {
    let v = value.trim_ascii();
    let unsigned = v.strip_prefix(['+', '-']).unwrap_or(v);
    let digits = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    let leading = unsigned
        .get(..digits)
        .and_then(|d| d.parse::<f64>().ok())
        .unwrap_or(0.0);
    let whole = v
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .unwrap_or(0.0);
    let hex = unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .map_or(0.0, |x| x as f64);
    leading.max(whole).max(hex)
}

// --- GraphQL ---------------------------------------------------------------------------------

/// Where a GraphQL document travels.
#[derive(Debug, Clone, Copy)]
enum Source<'n> {
    /// A JSON body member; the prefix of its siblings (`$.` or `$[3].`).
    Json { prefix: &'n str, batch: bool },
    /// The `query` query parameter.
    Query,
    /// The `query` form field.
    Form,
    /// The `operations` form field of a GraphQL multipart request: a JSON operation (or a
    /// batch of them), each with its `query` and `variables`.
    Operations,
}

/// Whether a target carries a GraphQL document, and how.
fn graphql_source<'n>(t: &'n Target<'_>, kind: BodyKind) -> Option<Source<'n>> {
    if t.part != Part::Value {
        return None;
    }
    match t.location {
        Location::Query if php_key(&t.name) == "query" => Some(Source::Query),
        Location::Body => {
            let name: &str = &t.name;
            // Members in any case: Go's `encoding/json` (gqlgen) matches them so.
            if name.eq_ignore_ascii_case("$.query") {
                return Some(Source::Json {
                    prefix: "$.",
                    batch: false,
                });
            }
            if matches!(kind, BodyKind::Form | BodyKind::Multipart) {
                return match &*php_key(name) {
                    "query" => Some(Source::Form),
                    // The GraphQL multipart request (file uploads): the operation, or a
                    // batch of them, as JSON in the `operations` field.
                    "operations" => Some(Source::Operations),
                    _ => None,
                };
            }
            let cut = name.len().checked_sub(5)?;
            if !name.get(cut..)?.eq_ignore_ascii_case("query") {
                return None;
            }
            let prefix = name.get(..cut)?;
            let digits = prefix.strip_prefix("$[")?.strip_suffix("].")?;
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(
                Source::Json {
                    prefix,
                    batch: true,
                },
            )
        }
        _ => None,
    }
}

const GRAPHQL_COMPANIONS: [&str; 3] = ["operationName", "variables", "extensions"];

/// Whether the request plainly is GraphQL: a GraphQL body, or a companion member or parameter
/// (`operationName`, `variables`, `extensions`) next to the document — for an `operations`
/// field, the multipart request's `map` field.
fn plainly_graphql(src: Source<'_>, targets: &[Target<'_>], kind: BodyKind) -> bool {
    if kind == BodyKind::GraphQl {
        return true;
    }
    let companion = |name: &str| {
        GRAPHQL_COMPANIONS
            .iter()
            .any(|c| c.eq_ignore_ascii_case(name))
    };
    targets.iter().any(|t| match src {
        Source::Json { prefix, .. } => {
            t.location == Location::Body
                && t.name
                    .get(..prefix.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
                && t.name.get(prefix.len()..).is_some_and(companion)
        }
        Source::Query => t.location == Location::Query && companion(&php_key(&t.name)),
        Source::Form => is_form_value(t, kind) && companion(&php_key(&t.name)),
        // The GraphQL multipart request's map of files to variables.
        Source::Operations => is_form_value(t, kind) && php_key(&t.name) == "map",
    })
}

/// Resolves the request's GraphQL variables (for list sizes). A variable's name is matched
/// exactly (GraphQL names are case-sensitive: `$First` is not `$first`); the `variables` member
/// or parameter in any case, and every one of them (Go's `encoding/json` merges `variables` and
/// `Variables` into one object). Of several values for one variable the largest number is
/// taken ([`larger`]): the reading nearest the limits.
struct Variables<'r, 't> {
    src: Source<'r>,
    targets: &'r [Target<'t>],
    /// The `variables` members or parameters sent as JSON strings, parsed (GET and form
    /// GraphQL; a JSON string member, which express-graphql parses).
    parsed: Vec<serde_json::Value>,
}

impl<'r, 't> Variables<'r, 't> {
    /// The request's variables for the document at a target of `src`, those sent as strings
    /// parsed. One that cannot be read (too long, or not JSON the parser takes) would hide list
    /// sizes — a `$first` of a million would pass —, so it is reported once per target, whatever
    /// other document shares it (`unread`).
    fn read(
        src: Source<'r>,
        targets: &'r [Target<'t>],
        kind: BodyKind,
        unread: &mut Vec<&'r Target<'t>>,
        f: &mut Findings<'_>,
    ) -> Self {
        let mut parsed = Vec::new();
        for t in raw_variables(src, targets, kind) {
            match parse_variables(&t.value) {
                Ok(v) => parsed.push(v),
                Err((rule, why)) if !unread.iter().any(|u| std::ptr::eq(*u, t)) => {
                    unread.push(t);
                    f.push(rule, t, &why);
                }
                Err(_) => {}
            }
        }
        Variables {
            src,
            targets,
            parsed,
        }
    }

    fn get(&self, var: &str) -> Option<String> {
        let mut best: Option<String> = None;
        if let Source::Json { prefix, .. } = self.src {
            // An object: its members are targets (`$.variables.first`, `$.Variables.first`).
            for t in self.targets {
                if t.location == Location::Body
                    && t.part == Part::Value
                    && variables_member(&t.name, prefix)
                        .is_some_and(|rest| rest.strip_prefix('.').is_some_and(|name| name == var))
                {
                    larger(&mut best, Cow::Borrowed(&t.value));
                }
            }
        }
        for vars in &self.parsed {
            if let Some(v) = variable(vars, var) {
                larger(&mut best, Cow::Owned(v));
            }
        }
        best
    }
}

/// The `variables` members or parameters sent as JSON strings, for a document at a target of
/// `src`.
fn raw_variables<'r, 't>(
    src: Source<'r>,
    targets: &'r [Target<'t>],
    kind: BodyKind,
) -> impl Iterator<Item = &'r Target<'t>> {
    targets.iter().filter(move |t| match src {
        Source::Json { prefix, .. } => {
            t.location == Location::Body
                && t.part == Part::Value
                && variables_member(&t.name, prefix).is_some_and(str::is_empty)
        }
        Source::Query => is_query_value(t) && php_key(&t.name) == "variables",
        Source::Form => is_form_value(t, kind) && php_key(&t.name) == "variables",
        Source::Operations => false,
    })
}

/// `variables` sent as a string, parsed; or the rule it breaks and why, when it cannot be read:
/// longer than [`MAX_VARIABLES_BYTES`] (2502), or not JSON the parser takes (2501).
fn parse_variables(s: &str) -> Result<serde_json::Value, (&'static Rule, String)> {
    if s.len() > MAX_VARIABLES_BYTES {
        return Err((
            GQL_TOKENS,
            format!("variables over {MAX_VARIABLES_BYTES} bytes"),
        ));
    }
    serde_json::from_str(s)
        .map_err(|e| (GQL_SYNTAX, format!("variables do not parse as JSON: {e}")))
}

/// What follows a `variables` member (in any case) of the JSON object at `prefix` in a JSON
/// path: `Some("")` for `$.Variables` itself, `Some(".first")` for `$.variables.first`.
fn variables_member<'n>(name: &'n str, prefix: &str) -> Option<&'n str> {
    let rest = name.strip_prefix(prefix)?;
    let member = rest.get(.."variables".len())?;
    member
        .eq_ignore_ascii_case("variables")
        .then(|| rest.get("variables".len()..))
        .flatten()
}

/// Keeps in `best` the larger of it and `candidate` as a list size: a plain integer before
/// anything else, then the number lenient parsers read (the first of equals stays).
fn larger(best: &mut Option<String>, candidate: Cow<'_, str>) {
    let rank = |v: &str| {
        (
            matches!(page_value(v), PageValue::Number(_)),
            lenient_page_size(v),
        )
    };
    let wins = match best.as_deref() {
        None => true,
        Some(b) => rank(&candidate) > rank(b),
    };
    if wins {
        *best = Some(candidate.into_owned());
    }
}

/// A variable's value as a list argument reads it (a number or a string).
fn variable(vars: &serde_json::Value, var: &str) -> Option<String> {
    match vars.get(var)? {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn graphql_rules(
    g: &Graphql,
    mass: Option<&Mass>,
    pagination: &Pagination,
    targets: &[Target<'_>],
    facts: &BodyFacts,
    f: &mut Findings<'_>,
) {
    // Documents in a JSON batch, and documents analysed (at most `max_batch` per request, so
    // that repeating `query` cannot multiply the parser's per-document bound).
    let mut batch = 0u64;
    let mut analysed = 0u64;
    // `variables` strings reported as unreadable (each once, whatever shares it).
    let mut unread: Vec<&Target<'_>> = Vec::new();
    let protected = mass.filter(|_| f.runs(MASS_ASSIGNMENT)).map(|m| &m.fields);
    for t in targets {
        let Some(src) = graphql_source(t, facts.kind) else {
            continue;
        };
        if let Source::Operations = src {
            // GraphQL plainly when the multipart request's `map` field is beside it; else only
            // the operations whose document looks like one (a bulk API's `operations` field
            // holds `{"op": "search", "query": "red shoes"}`).
            let plain = plainly_graphql(src, targets, facts.kind);
            // Read as a tree (documents are small); a longer field is not analysed, and so is
            // reported.
            if t.value.len() > MAX_OPERATIONS_BYTES {
                if plain {
                    f.push(
                        GQL_TOKENS,
                        t,
                        &format!("operations over {MAX_OPERATIONS_BYTES} bytes"),
                    );
                }
                continue;
            }
            // Each operation of the field's JSON, with its own variables. Beside the map, a field
            // that is not such JSON (or nests deeper than the parser goes) is not analysed, and
            // so is reported.
            let Some(mut ops) = operations(&t.value) else {
                if plain {
                    f.push(
                        GQL_SYNTAX,
                        t,
                        "operations are not GraphQL operations in JSON",
                    );
                }
                continue;
            };
            if !plain {
                for op in &mut ops {
                    op.docs.retain(|d| graphql::looks_like_graphql(d));
                }
                ops.retain(|op| !op.docs.is_empty());
            }
            if ops.len() > 1 {
                batch += ops.len() as u64;
            }
            // Variables that are not read hide list sizes and protected fields.
            if let Some((rule, why)) = ops.iter().find_map(|op| op.unread_variables.as_ref()) {
                f.push(rule, t, why);
            }
            for op in ops {
                if analysed >= g.max_batch {
                    break;
                }
                // (A multipart part's JSON is read whole by the mass-assignment rule, but for
                // `variables` sent as a string in it.)
                let multipart = facts.kind == BodyKind::Multipart;
                if let Some(fields) = protected
                    && let Some(key) = op
                        .vars
                        .iter()
                        .filter(|(_, string)| *string || !multipart)
                        .find_map(|(v, _)| protected_key(fields, v))
                {
                    f.push(MASS_ASSIGNMENT, t, &key);
                }
                let mut resolve = |name: &str| {
                    let mut best = None;
                    for v in op.vars.iter().filter_map(|(v, _)| variable(v, name)) {
                        larger(&mut best, Cow::Owned(v));
                    }
                    best
                };
                // Every `query` member: which one the server keeps, the parsed object does not
                // tell.
                for doc in &op.docs {
                    if analysed >= g.max_batch {
                        break;
                    }
                    analysed += 1;
                    analyse_document(g, protected, pagination, t, doc, &mut resolve, f);
                }
            }
            continue;
        }
        if let Source::Json { batch: true, .. } = src {
            batch += 1;
        }
        if analysed >= g.max_batch {
            continue;
        }
        if !plainly_graphql(src, targets, facts.kind) && !graphql::looks_like_graphql(&t.value) {
            continue;
        }
        analysed += 1;
        let vars = Variables::read(src, targets, facts.kind, &mut unread, f);
        let mut resolve = |name: &str| vars.get(name);
        analyse_document(g, protected, pagination, t, &t.value, &mut resolve, f);
    }
    if batch > 0 {
        let n = batch.max(facts.json_top_array.unwrap_or(0) as u64);
        if n > g.max_batch {
            f.push(
                GQL_BATCH,
                &request_target(),
                &format!("{n} operations > {}", g.max_batch),
            );
        }
    }
}

/// Analyses one GraphQL document, found at `t`, and reports what is over the limits.
fn analyse_document(
    g: &Graphql,
    protected: Option<&NameSet>,
    pagination: &Pagination,
    t: &Target<'_>,
    doc: &str,
    resolve: &mut dyn FnMut(&str) -> Option<String>,
    f: &mut Findings<'_>,
) {
    let mut inputs = graphql::Inputs {
        max_tokens: g.max_tokens,
        list_arguments: &g.list_arguments,
        protected,
        variables: resolve,
    };
    let a = graphql::analyse(doc, &mut inputs);
    if let Some(err) = &a.syntax_error {
        f.push(GQL_SYNTAX, t, err);
    }
    if a.token_limit {
        f.push(GQL_TOKENS, t, &format!("more than {} tokens", g.max_tokens));
    }
    if a.stats.depth > g.max_depth {
        f.push(
            GQL_DEPTH,
            t,
            &format!("depth {} > {}", a.stats.depth, g.max_depth),
        );
    }
    if a.stats.aliases > g.max_aliases {
        f.push(
            GQL_ALIASES,
            t,
            &format!("{} aliases > {}", a.stats.aliases, g.max_aliases),
        );
    }
    if a.stats.complexity > g.max_complexity {
        let c = if a.stats.complexity == u64::MAX {
            "complexity overflows".to_string()
        } else {
            format!("complexity {} > {}", a.stats.complexity, g.max_complexity)
        };
        f.push(GQL_COMPLEXITY, t, &c);
    }
    if let (Some(field), Introspection::Deny) = (a.introspection, g.introspection) {
        f.push(GQL_INTROSPECTION, t, field);
    }
    if let Some(name) = &a.cycle {
        f.push(GQL_CYCLE, t, &format!("fragment {name}"));
    }
    for name in &a.protected {
        f.push(MASS_ASSIGNMENT, t, name);
    }
    if pagination.enabled {
        for arg in &a.list_arguments {
            page_size(pagination, t, &arg.name, &arg.value, f);
        }
    }
}

/// One operation of a GraphQL multipart request's `operations` field.
struct Operation {
    /// The string value of every member named `query` in any case (Go's `encoding/json`
    /// takes the last of them in the text, which the parsed object no longer tells).
    docs: Vec<String>,
    /// Every member named `variables` in any case: an object, or a string holding one
    /// (`true`; Go merges them into one object).
    vars: Vec<(serde_json::Value, bool)>,
    /// Why a `variables` string was not read (left out of `vars`): too long (rule 2502), or
    /// not JSON (2501).
    unread_variables: Option<(&'static Rule, String)>,
}

/// The operations of a GraphQL multipart request's `operations` field: one JSON object, or an
/// array of them (a batch), each with its `query` and `variables` members (in any case).
/// `None` when it is not such JSON.
fn operations(value: &str) -> Option<Vec<Operation>> {
    if value.len() > MAX_OPERATIONS_BYTES {
        return None;
    }
    let one = |v: &serde_json::Value| {
        let o = v.as_object()?;
        let named = |name: &'static str| {
            o.iter()
                .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        let docs: Vec<String> = named("query")
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect();
        if docs.is_empty() {
            return None;
        }
        let mut unread_variables = None;
        let mut vars = Vec::new();
        for v in named("variables") {
            match v {
                serde_json::Value::String(s) => match parse_variables(s) {
                    Ok(v) => vars.push((v, true)),
                    Err(why) => unread_variables = Some(why),
                },
                serde_json::Value::Object(_) => vars.push((v.clone(), false)),
                _ => {}
            }
        }
        Some(Operation {
            docs,
            vars,
            unread_variables,
        })
    };
    match serde_json::from_str::<serde_json::Value>(value).ok()? {
        serde_json::Value::Array(items) => Some(items.iter().filter_map(one).collect()),
        v => one(&v).map(|o| vec![o]),
    }
}

/// The first key, at any depth of `value`, that names a protected field.
fn protected_key(fields: &NameSet, value: &serde_json::Value) -> Option<String> {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    if fields.contains(k) {
                        return Some(k.clone());
                    }
                    stack.push(v);
                }
            }
            serde_json::Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    None
}
