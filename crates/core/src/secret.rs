//! Secrets in configuration: from an environment variable, a file, or inline.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigErrors;

/// A secret: from an environment variable, a file, or (discouraged) inline.
#[derive(Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
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
    s.serialize_str(REDACTED)
}

impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawSecret::Env(name) => f.debug_tuple("Env").field(name).finish(),
            RawSecret::File(path) => f.debug_tuple("File").field(path).finish(),
            RawSecret::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

/// What stands for a hidden secret wherever one would be shown.
pub const REDACTED: &str = "<redacted>";

/// A secret read from the configuration. Its `Debug` does not show it; `expose` does, for
/// the one place that uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// `url` with the password of its userinfo (`scheme://user:password@host/…`) replaced by
/// [`REDACTED`]; anything else, a URL without a password included, unchanged. The authority
/// ends where a URL parser ends it (`/`, `\\`, `?` or `#`), so an `@` in a path is no userinfo.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    hide_passwords(url, false)
}

/// `text` with the password of every URL in it hidden as [`redact_url`] does; here a URL's
/// authority also ends at white space. For messages that quote a URL.
pub fn redact_urls_in(text: &str) -> Cow<'_, str> {
    hide_passwords(text, true)
}

fn hide_passwords(s: &str, in_text: bool) -> Cow<'_, str> {
    let is_scheme_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.');
    let mut out: Option<String> = None;
    let (mut copied, mut from) = (0, 0);
    while let Some(at) = s[from..].find("://").map(|i| from + i) {
        // Scheme bytes are ASCII, so the byte after any other is a char boundary.
        let start = s.as_bytes()[..at]
            .iter()
            .rposition(|&b| !is_scheme_byte(b))
            .map_or(0, |j| j + 1);
        let scheme_ok = s.as_bytes().get(start).is_some_and(u8::is_ascii_alphabetic)
            && start < at
            && (in_text || start == 0);
        let rest = at + "://".len();
        let end = s[rest..]
            .find(|c: char| matches!(c, '/' | '\\' | '?' | '#') || (in_text && c.is_whitespace()))
            .map_or(s.len(), |i| rest + i);
        let mut userinfo_end = s[rest..end].rfind('@').map(|i| rest + i);
        // A password holding `/`, `?` or `#` unescaped (`redis://:Zm9v/YmFy@h`) ends the
        // authority early for a parser, which then sees `:Zm9v` — a colon followed by no port —
        // and no userinfo. Such an authority is read on to the last `@` before the URL's end,
        // so that the password is hidden all the same (at worst a little more with it).
        if userinfo_end.is_none()
            && let Some((_, after_colon)) = s[rest..end].split_once(':')
            && !after_colon.bytes().all(|b| b.is_ascii_digit())
        {
            let url_end = s[rest..]
                .find(|c: char| in_text && c.is_whitespace())
                .map_or(s.len(), |i| rest + i);
            userinfo_end = s[rest..url_end].rfind('@').map(|i| rest + i);
        }
        let password = userinfo_end.and_then(|u| s[rest..u].split_once(':'));
        if let Some((user, password)) = password
            && scheme_ok
            && !password.is_empty()
        {
            let at_password = rest + user.len() + 1;
            let o = out.get_or_insert_with(String::new);
            o.push_str(&s[copied..at_password]);
            o.push_str(REDACTED);
            copied = at_password + password.len();
        }
        if !in_text {
            break;
        }
        from = end.max(rest).max(copied);
    }
    match out {
        None => Cow::Borrowed(s),
        Some(mut o) => {
            o.push_str(&s[copied..]);
            Cow::Owned(o)
        }
    }
}

/// A URL as the configuration gives it, which may carry a password (`redis://:pw@host`): its
/// `Debug` hides the password. Serialised as written (the admin API's view of the
/// configuration hides passwords in every URL it shows).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct UrlText(pub String);

impl UrlText {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for UrlText {
    fn from(s: &str) -> UrlText {
        UrlText(s.to_string())
    }
}

impl From<String> for UrlText {
    fn from(s: String) -> UrlText {
        UrlText(s)
    }
}

impl fmt::Debug for UrlText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

/// A plain value or a secret reference (for URLs that may carry a password).
#[derive(Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RawSecretOrString {
    Plain(String),
    Secret(RawSecret),
}

impl fmt::Debug for RawSecretOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawSecretOrString::Plain(v) => f.debug_tuple("Plain").field(&redact_url(v)).finish(),
            RawSecretOrString::Secret(s) => f.debug_tuple("Secret").field(s).finish(),
        }
    }
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

/// An environment variable's name as shells write them: a letter or `_`, then letters, digits
/// and `_`, at most 64 of them.
fn looks_like_env_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// A file name with a folder or a short extension: `secrets/token`, `token.txt`, `./token` —
/// not a token with dots in it (a JWT's three long parts).
fn looks_like_path(p: &str) -> bool {
    p.contains(['/', '\\'])
        || p.rsplit_once('.').is_some_and(|(_, ext)| {
            (1..=6).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

impl RawSecret {
    /// Reads the secret; a missing variable or file, or an empty secret, is an error at `path`.
    pub fn resolve(&self, path: &str, base: &Path, e: &mut ConfigErrors) -> Option<String> {
        let v = match self {
            RawSecret::Value(v) => Some(v.clone()),
            RawSecret::Env(name) => match std::env::var(name) {
                Ok(v) => Some(v),
                Err(_) => {
                    let what = if looks_like_env_name(name) {
                        format!("environment variable {name} is not set")
                    } else {
                        // Not quoted: a secret written where its variable's name was meant.
                        "the environment variable named here is not set (its name is not shown: \
                         it is not a variable name — was the secret itself written here?)"
                            .to_string()
                    };
                    e.push(format!("{path}.env"), what);
                    None
                }
            },
            RawSecret::File(f) => {
                let file = resolve_path(base, f);
                match std::fs::read_to_string(&file) {
                    Ok(v) => Some(v.trim_end_matches(['\r', '\n']).to_string()),
                    Err(err) => {
                        let what = if looks_like_path(f) {
                            format!("cannot read {}: {err}", file.display())
                        } else {
                            // Not quoted: a secret written where its file was meant.
                            format!(
                                "cannot read the file named here: {err} (its name is not shown: \
                                 it does not look like a file name — was the secret itself \
                                 written here?)"
                            )
                        };
                        e.push(format!("{path}.file"), what);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_hidden_and_nothing_else_changes() {
        for (url, shown) in [
            ("redis://:pw@h:6379/0", "redis://:<redacted>@h:6379/0"),
            ("rediss://user:pw@h", "rediss://user:<redacted>@h"),
            ("redis://:p@ss@h/1", "redis://:<redacted>@h/1"),
            (
                "https://u:p%40x@idp.example/jwks?x=1",
                "https://u:<redacted>@idp.example/jwks?x=1",
            ),
            ("postgres+ssl://a:b@c", "postgres+ssl://a:<redacted>@c"),
            // No password: unchanged.
            ("redis://user@h", "redis://user@h"),
            ("redis://user:@h", "redis://user:@h"),
            ("redis://h:6379", "redis://h:6379"),
            // An `@` or `:` past the authority is no userinfo.
            (
                "https://api.example/users/@me",
                "https://api.example/users/@me",
            ),
            ("https://h:443/a:b@c", "https://h:443/a:b@c"),
            ("https://h?q=a:b@c", "https://h?q=a:b@c"),
            ("https://h\\a:b@c", "https://h\\a:b@c"),
            // A password holding `/`, `?` or `#` unescaped: hidden all the same.
            (
                "redis://:Zm9v/YmFy@redis:6379/0",
                "redis://:<redacted>@redis:6379/0",
            ),
            ("redis://u:p?w#d@h/1", "redis://u:<redacted>@h/1"),
            ("ftp://u:hunter2/x@h:80", "ftp://u:<redacted>@h:80"),
            // Not a URL.
            ("a:b@c", "a:b@c"),
            ("://a:b@c", "://a:b@c"),
            ("1x://a:b@c", "1x://a:b@c"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn passwords_in_urls_quoted_in_text_are_hidden() {
        for (text, shown) in [
            (
                "\"http://u:pw@h:1\": credentials go in headers",
                "\"http://u:<redacted>@h:1\": credentials go in headers",
            ),
            (
                "a redis://:x@a and rediss://b:y@c/0 both",
                "a redis://:<redacted>@a and rediss://b:<redacted>@c/0 both",
            ),
            (
                "redis://u@h: no password, ha: b@c",
                "redis://u@h: no password, ha: b@c",
            ),
            (
                "not a url: ://a:b@c, é://a:b@c",
                "not a url: ://a:b@c, é://a:b@c",
            ),
            ("ééhttp://a:b@c", "ééhttp://a:<redacted>@c"),
            (
                "redis redis://:Zm9v/YmFy@r:6379/0: refused",
                "redis redis://:<redacted>@r:6379/0: refused",
            ),
            // A scheme inside a hidden password: nothing read twice, no panic.
            (
                "x://:a/b://c:d@h@e and y://:p@q",
                "x://:<redacted>@e and y://:<redacted>@q",
            ),
            ("", ""),
        ] {
            assert_eq!(redact_urls_in(text), shown, "{text}");
        }
        // A whole URL is one URL, whatever its password holds.
        assert_eq!(redact_url("redis://:p w@h"), "redis://:<redacted>@h");
        assert_eq!(redact_url("x redis://:pw@h"), "x redis://:pw@h");
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let shown = format!(
            "{:?} {:?} {:?} {:?} {:?} {:?}",
            UrlText::from("redis://u:s3cret@h"),
            Secret::new("s3cret".into()),
            RawSecret::Value("s3cret".into()),
            RawSecretOrString::Plain("redis://:s3cret@h".into()),
            RawSecretOrString::Secret(RawSecret::Value("s3cret".into())),
            RawSecret::Env("NAME".into()),
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(
            shown,
            "\"redis://u:<redacted>@h\" <redacted> Value(<redacted>) Plain(\"redis://:<redacted>@h\") \
             Secret(Value(<redacted>)) Env(\"NAME\")"
        );
        assert_eq!(Secret::new("s3cret".into()).expose(), "s3cret");
    }

    /// A secret written where its variable's or file's name was meant is not quoted back in
    /// the error (errors are printed, logged and returned by the admin API); a name that is
    /// one is.
    #[test]
    fn a_secret_in_the_name_of_its_variable_or_file_is_not_quoted() {
        let base = Path::new("/nonexistent-portcullis-dir");
        let message = |s: RawSecret| {
            let mut e = ConfigErrors::new();
            assert!(s.resolve("auth.secret", base, &mut e).is_none());
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let leaked = "sk-live-9f2c0ffee";
        let m = message(RawSecret::Env(leaked.into()));
        assert!(
            !m.contains(leaked) && m.starts_with("auth.secret.env:"),
            "{m}"
        );
        for leaked in [
            "sk_live_9f2c0ffee",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlX2hlcmU",
        ] {
            let m = message(RawSecret::File(leaked.into()));
            assert!(
                !m.contains(leaked) && m.starts_with("auth.secret.file:"),
                "{m}"
            );
        }
        // Names that are names are said.
        let m = message(RawSecret::Env("PORTCULLIS_NEVER_SET_7Q".into()));
        assert!(m.contains("PORTCULLIS_NEVER_SET_7Q is not set"), "{m}");
        let m = message(RawSecret::File("secrets/token.txt".into()));
        assert!(m.contains("secrets/token.txt"), "{m}");
    }
}
