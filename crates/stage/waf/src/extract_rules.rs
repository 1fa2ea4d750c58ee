//! The protocol rules the extractor raises (malformed or uninspectable bodies, limits).

use crate::model::{Class, Rule, Severity};

pub static RULES: &[Rule] = &[
    Rule {
        id: 1001,
        class: Class::Protocol,
        severity: Severity::Critical,
        paranoia: 1,
        description: "body does not parse as its declared content type",
    },
    Rule {
        id: 1002,
        class: Class::Protocol,
        severity: Severity::Critical,
        paranoia: 1,
        description: "body nesting deeper than the inspection limit",
    },
    Rule {
        id: 1003,
        class: Class::Protocol,
        severity: Severity::Critical,
        paranoia: 1,
        description: "more parameters or fields than the inspection limit",
    },
    Rule {
        id: 1004,
        class: Class::Protocol,
        severity: Severity::Critical,
        paranoia: 1,
        description: "body larger than the inspection limit",
    },
    Rule {
        id: 1005,
        class: Class::Protocol,
        severity: Severity::Critical,
        paranoia: 1,
        description: "body whose content type can be read more than one way",
    },
    Rule {
        id: 1006,
        class: Class::Protocol,
        severity: Severity::Critical,
        paranoia: 1,
        description: "body in a content coding that cannot be inspected",
    },
];

pub static MALFORMED_BODY: &Rule = &RULES[0];
pub static TOO_DEEP: &Rule = &RULES[1];
pub static TOO_MANY_TARGETS: &Rule = &RULES[2];
pub static BODY_OVER_LIMIT: &Rule = &RULES[3];
pub static AMBIGUOUS_CONTENT_TYPE: &Rule = &RULES[4];
pub static UNINSPECTABLE_CODING: &Rule = &RULES[5];
