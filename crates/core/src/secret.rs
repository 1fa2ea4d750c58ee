//! Secrets in configuration: from an environment variable, a file, or inline.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigErrors;

/// A secret: from an environment variable, a file, or (discouraged) inline.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RawSecret {
    /// Name of an environment variable holding the secret.
    Env(String),
    /// Path of a file holding the secret (trailing newline removed).
    File(String),
    /// The secret itself. Shown redacted by the admin API.
    #[serde(serialize_with = "redact")]
    Value(String),
}

fn redact<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

/// A plain value or a secret reference (for URLs that may carry a password).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawSecretOrString {
    Plain(String),
    Secret(RawSecret),
}

impl RawSecretOrString {
    /// The value, read from where a secret says; an error at `path` when it cannot be.
    pub fn resolve(&self, path: &str, base: &Path, e: &mut ConfigErrors) -> Option<String> {
        match self {
            RawSecretOrString::Plain(v) => Some(v.clone()),
            RawSecretOrString::Secret(s) => s.resolve(path, base, e),
        }
    }
}

/// `p` relative to `base` unless absolute.
pub fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl RawSecret {
    /// Reads the secret; a missing variable or file, or an empty secret, is an error at `path`.
    pub fn resolve(&self, path: &str, base: &Path, e: &mut ConfigErrors) -> Option<String> {
        let v = match self {
            RawSecret::Value(v) => Some(v.clone()),
            RawSecret::Env(name) => match std::env::var(name) {
                Ok(v) => Some(v),
                Err(_) => {
                    e.push(
                        format!("{path}.env"),
                        format!("environment variable {name} is not set"),
                    );
                    None
                }
            },
            RawSecret::File(f) => {
                let file = resolve_path(base, f);
                match std::fs::read_to_string(&file) {
                    Ok(v) => Some(v.trim_end_matches(['\r', '\n']).to_string()),
                    Err(err) => {
                        e.push(
                            format!("{path}.file"),
                            format!("cannot read {}: {err}", file.display()),
                        );
                        None
                    }
                }
            }
        };
        match v {
            Some(v) if v.is_empty() => {
                e.push(path, "the secret is empty");
                None
            }
            other => other,
        }
    }
}
