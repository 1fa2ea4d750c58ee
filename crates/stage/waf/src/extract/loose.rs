//! Field names in a body whose type names no form — none, `text/*`, or one the WAF does not
//! know —, read as a form parser would read them anyway: Rack reads a `POST` body without a
//! type as a URL-encoded form. Only what rule 2401 needs: whether such a body carries a field
//! whose name reads as `_method`.

use std::borrow::Cow;

use portcullis_core::query::is_method_name;

use super::{parse_params, percent_decode, truncate};

/// Longest name kept for the finding, in bytes.
const MAX_NAME: usize = 128;

/// What opens a multipart part's disposition line (matched in any case).
const DISPOSITION: &[u8] = b"content-disposition:";

/// The first field of `body` whose name reads as `_method` ([`is_method_name`]):
///
/// * read as a URL-encoded form: pairs split at `&` and `;`, the name before the first `=`
///   (returned percent-decoded once);
/// * read as multipart: the `name` parameter, quoted or not, of a `Content-Disposition:`
///   found on any line (returned as written).
///
/// Linear in the body; nothing is allocated unless such a field is found.
pub(super) fn method_field(body: &[u8]) -> Option<String> {
    let pair = body
        .split(|b| *b == b'&' || *b == b';')
        .map(|pair| pair.split(|b| *b == b'=').next().unwrap_or_default())
        .find(|name| is_method_name(name));
    if let Some(name) = pair {
        return Some(cut(percent_decode(name, true)));
    }
    body.split(|b| *b == b'\n').find_map(disposition_name)
}

/// The `name` of a `Content-Disposition:` on `line` if it reads as `_method`.
fn disposition_name(line: &[u8]) -> Option<String> {
    let at = line
        .windows(DISPOSITION.len())
        .position(|w| w.eq_ignore_ascii_case(DISPOSITION))?;
    let value = String::from_utf8_lossy(line.get(at + DISPOSITION.len()..)?);
    let mut found = None;
    parse_params(&value, &mut |name, v| {
        if found.is_none() && name.eq_ignore_ascii_case("name") && is_method_name(v.as_bytes()) {
            found = Some(cut(v));
        }
    });
    found
}

fn cut(name: Cow<'_, str>) -> String {
    truncate(&name, MAX_NAME).to_string()
}

#[cfg(test)]
mod tests {
    use super::method_field;

    #[test]
    fn url_encoded_and_multipart_names() {
        for (body, name) in [
            (&b"_method=DELETE"[..], "_method"),
            (b"note=x&_method=DELETE", "_method"),
            (b"note=x;%5Fmethod=DELETE&y=1", "_method"),
            (b"[_method]=PUT", "[_method]"),
            (b"_method", "_method"),
            (b"\xff\xfe\x00&_method=DELETE&\x00\x01", "_method"),
            (
                b"--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--",
                "_method",
            ),
            (
                b"--b\nCONTENT-DISPOSITION: form-data; name=_method\n\nDELETE\n--b--",
                "_method",
            ),
            (
                b"x\r\ncontent-disposition:form-data;name=\"x\"; name=\".method\"\r\n",
                ".method",
            ),
        ] {
            assert_eq!(
                method_field(body).as_deref(),
                Some(name),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [
            &b"method=DELETE"[..],
            b"note=_method",
            b"note=a%26_method%3DDELETE",
            b"x_method=1&_methods=2",
            b"{\"_method\": \"DELETE\"}",
            b"Content-Disposition: form-data; name=\"note\"\r\n\r\n_method",
            b"Content-Type: text/plain; name=_method",
            b"",
        ] {
            assert_eq!(
                method_field(body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn linear_on_long_bodies() {
        let mut body = vec![b' '; 4 << 20];
        body.extend_from_slice(b"&[[[[");
        body.extend(std::iter::repeat_n(b'[', 1 << 20));
        body.extend(std::iter::repeat_n(b'x', 1 << 20));
        // (No clock: a quadratic scan makes this test slow, not red.)
        assert_eq!(method_field(&body), None);
    }
}
