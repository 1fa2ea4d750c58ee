//! `application/x-www-form-urlencoded` token requests, read strictly: a malformed escape,
//! invalid UTF-8 or a repeated parameter refuses the request (RFC 6749 §3.2: "parameters MUST
//! NOT be included more than once"), where a lenient reader would have to guess.

use std::collections::HashMap;

/// The parameters of a token request. Empty values count as absent (RFC 6749 §3.1).
#[derive(Debug, Default)]
pub struct Form {
    params: HashMap<String, String>,
}

/// Why a form was refused (the `error_description` sent back).
pub type FormError = &'static str;

impl Form {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<Form, FormError> {
        let text = std::str::from_utf8(body).map_err(|_| "the form is not UTF-8")?;
        let mut params = HashMap::new();
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(k)?;
            let v = decode(v)?;
            if k.is_empty() {
                return Err("a form parameter has no name");
            }
            if params.insert(k, v).is_some() {
                return Err("a parameter is repeated");
            }
        }
        Ok(Form { params })
    }

    /// A parameter's value; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Decodes one form component: `+` is a space, `%XX` a byte; a `%` not followed by two hex
/// digits, or bytes that are not UTF-8, are refused.
pub fn decode(s: &str) -> Result<String, FormError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
                match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err("a form value has a malformed escape"),
                }
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "a form value is not UTF-8")
}

/// Whether a `Content-Type` value is `application/x-www-form-urlencoded` (parameters such as
/// `charset=UTF-8` allowed).
pub fn is_form_content_type(v: &str) -> bool {
    v.split(';').next().is_some_and(|t| {
        t.trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_and_escapes() {
        let f = Form::parse(b"a=x+y%3Az&b=%E2%82%AC&c=&d").unwrap();
        assert_eq!(f.get("a"), Some("x y:z"));
        assert_eq!(f.get("b"), Some("\u{20ac}"));
        assert_eq!(f.get("c"), None, "empty is absent");
        assert_eq!(f.get("d"), None);
        assert_eq!(f.get("e"), None);
    }

    #[test]
    fn refuses_what_it_would_have_to_guess() {
        for bad in [
            &b"a=1&a=2"[..],
            b"a=1&a=",
            b"a=%zz",
            b"a=%4",
            b"a=%ff",
            b"=x",
            b"a=\xff",
            b"a=1&%61=2",
        ] {
            assert!(
                Form::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn content_types() {
        assert!(is_form_content_type("application/x-www-form-urlencoded"));
        assert!(is_form_content_type(
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8"
        ));
        assert!(!is_form_content_type("application/json"));
        assert!(!is_form_content_type("multipart/form-data; boundary=x"));
    }
}
