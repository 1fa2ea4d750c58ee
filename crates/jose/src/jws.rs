//! Compact JWS parsing (RFC 7515 §7.1) with the gateway's refusals.

use serde_json::{Map, Value};

use crate::strict_json::parse_object;
use crate::{Alg, JwtError, VerifyKey, b64url_decode};

/// Headers that would let a token choose its own verification key.
const KEY_SOURCE_HEADERS: &[&str] = &["jku", "x5u", "jwk", "x5c"];

/// The protected header fields the gateway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: Alg,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// A parsed but unverified token.
#[derive(Debug, Clone)]
pub struct Unverified {
    pub header: Header,
    pub claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

/// A compact JWS split and checked, payload still raw bytes.
pub(crate) struct RawJws {
    pub(crate) header: Header,
    pub(crate) payload: Vec<u8>,
    pub(crate) signing_input: String,
    pub(crate) signature: Vec<u8>,
}

/// Parses a compact JWS and checks everything that can be checked without a key.
pub fn decode(token: &str, max_len: usize) -> Result<Unverified, JwtError> {
    let raw = decode_raw(token, max_len)?;
    let claims = parse_object(&raw.payload).ok_or(JwtError::Malformed)?;
    Ok(Unverified {
        header: raw.header,
        claims,
        signing_input: raw.signing_input,
        signature: raw.signature,
    })
}

/// Everything of [`decode`] except reading the payload as JSON claims.
pub(crate) fn decode_raw(token: &str, max_len: usize) -> Result<RawJws, JwtError> {
    if token.len() > max_len {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    if s64.is_empty() {
        return Err(JwtError::Malformed);
    }
    let header_bytes = b64url_decode(h64).ok_or(JwtError::Malformed)?;
    let payload = b64url_decode(p64).ok_or(JwtError::Malformed)?;
    let signature = b64url_decode(s64).ok_or(JwtError::Malformed)?;
    let header = parse_object(&header_bytes).ok_or(JwtError::Malformed)?;
    let header = check_header(&header)?;
    Ok(RawJws {
        header,
        payload,
        signing_input: token[..h64.len() + 1 + p64.len()].to_owned(),
        signature,
    })
}

fn check_header(h: &Map<String, Value>) -> Result<Header, JwtError> {
    let alg = match h.get("alg") {
        Some(Value::String(s)) => s,
        _ => return Err(JwtError::Malformed),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    let alg = Alg::from_name(alg).ok_or(JwtError::AlgUnsupported)?;
    if KEY_SOURCE_HEADERS.iter().any(|k| h.contains_key(*k)) {
        return Err(JwtError::KeySourceHeader);
    }
    if h.contains_key("crit") || h.contains_key("b64") {
        return Err(JwtError::CritUnsupported);
    }
    let string_field = |name: &str| match h.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwtError::Malformed),
    };
    Ok(Header {
        alg,
        kid: string_field("kid")?,
        typ: string_field("typ")?,
    })
}

impl Unverified {
    /// Verifies the signature with `key` using the header's algorithm (which the caller has
    /// already checked against its allow-list).
    pub fn verify(&self, key: &VerifyKey) -> Result<(), JwtError> {
        key.verify_raw(
            self.header.alg,
            self.signing_input.as_bytes(),
            &self.signature,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::b64url_encode;

    fn tok(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.{}",
            b64url_encode(header.as_bytes()),
            b64url_encode(payload.as_bytes()),
            b64url_encode(&[1, 2, 3])
        )
    }

    #[test]
    fn good_header_parses() {
        let t = tok(
            r#"{"alg":"ES256","kid":"k1","typ":"JWT","x":1}"#,
            r#"{"sub":"a"}"#,
        );
        let u = decode(&t, 8192).unwrap();
        assert_eq!(u.header.alg, Alg::ES256);
        assert_eq!(u.header.kid.as_deref(), Some("k1"));
        assert_eq!(u.header.typ.as_deref(), Some("JWT"));
        assert_eq!(u.claims["sub"], "a");
        assert_eq!(u.signature, vec![1, 2, 3]);
        assert_eq!(u.signing_input, t[..t.rfind('.').unwrap()]);
    }

    #[test]
    fn header_refusals() {
        let cases: &[(&str, JwtError)] = &[
            (r#"{}"#, JwtError::Malformed),
            (r#"{"alg":5}"#, JwtError::Malformed),
            (r#"{"alg":null}"#, JwtError::Malformed),
            (r#"{"alg":"none"}"#, JwtError::AlgNone),
            (r#"{"alg":"None"}"#, JwtError::AlgNone),
            (r#"{"alg":"NONE"}"#, JwtError::AlgNone),
            (r#"{"alg":"nOnE"}"#, JwtError::AlgNone),
            (r#"{"alg":"hs256"}"#, JwtError::AlgUnsupported),
            (r#"{"alg":"ES512"}"#, JwtError::AlgUnsupported),
            (r#"{"alg":""}"#, JwtError::AlgUnsupported),
            (
                r#"{"alg":"RS256","jku":"https://x"}"#,
                JwtError::KeySourceHeader,
            ),
            (
                r#"{"alg":"RS256","x5u":"https://x"}"#,
                JwtError::KeySourceHeader,
            ),
            (
                r#"{"alg":"RS256","jwk":{"kty":"RSA"}}"#,
                JwtError::KeySourceHeader,
            ),
            (
                r#"{"alg":"RS256","x5c":["AAAA"]}"#,
                JwtError::KeySourceHeader,
            ),
            (
                r#"{"alg":"RS256","crit":["exp"]}"#,
                JwtError::CritUnsupported,
            ),
            (r#"{"alg":"RS256","crit":[]}"#, JwtError::CritUnsupported),
            (r#"{"alg":"RS256","crit":"x"}"#, JwtError::CritUnsupported),
            (r#"{"alg":"RS256","b64":false}"#, JwtError::CritUnsupported),
            (r#"{"alg":"RS256","b64":true}"#, JwtError::CritUnsupported),
            (r#"{"alg":"RS256","kid":1}"#, JwtError::Malformed),
            (r#"{"alg":"RS256","typ":["JWT"]}"#, JwtError::Malformed),
            (r#"{"alg":"RS256","alg":"RS256"}"#, JwtError::Malformed),
            (
                r#"{"alg":"RS256","kid":"a","kid":"b"}"#,
                JwtError::Malformed,
            ),
            (r#"["alg","RS256"]"#, JwtError::Malformed),
            (r#"{"alg":"RS256""#, JwtError::Malformed),
        ];
        for (header, want) in cases {
            let got = decode(&tok(header, "{}"), 8192).err();
            assert_eq!(got.as_ref(), Some(want), "header {header}");
        }
    }

    #[test]
    fn payload_refusals() {
        for payload in [
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"a":{"x":1,"x":1}}"#,
            "[1,2]",
            "\"str\"",
            "42",
            "null",
            "",
            "{",
        ] {
            let got = decode(&tok(r#"{"alg":"HS256"}"#, payload), 8192).err();
            assert_eq!(got, Some(JwtError::Malformed), "payload {payload:?}");
        }
        // Invalid UTF-8 in the payload.
        let t = format!(
            "{}.{}.AQID",
            b64url_encode(br#"{"alg":"HS256"}"#),
            b64url_encode(b"{\"a\":\"\xc3\x28\"}")
        );
        assert_eq!(decode(&t, 8192).err(), Some(JwtError::Malformed));
    }

    #[test]
    fn structure_and_encoding_refusals() {
        let good = tok(r#"{"alg":"HS256"}"#, r#"{"a":"b"}"#);
        assert!(decode(&good, 8192).is_ok());
        assert_eq!(decode(&good, good.len()).err(), None);
        assert_eq!(
            decode(&good, good.len() - 1).err(),
            Some(JwtError::TooLarge)
        );
        let (h, rest) = good.split_once('.').unwrap();
        let (p, s) = rest.split_once('.').unwrap();
        let bad = [
            format!("{h}.{p}"),         // two parts
            format!("{h}.{p}.{s}.{s}"), // four parts
            format!("{h}.{p}.{s}."),    // trailing empty part
            format!("{h}.{p}."),        // empty signature
            format!("{h}.{p}.{s}="),    // padding
            format!("{h}=.{p}.{s}"),    // padding on header
            format!("{h}.{p}.{s}+"),    // standard alphabet
            format!("{h}.{p}.A/{s}"),   // standard alphabet
            format!("{h}.{p}. {s}"),    // whitespace
            format!("{h}.{p}.{s}\n"),   // newline
            format!(".{p}.{s}"),        // empty header
            format!("{h}..{s}"),        // empty payload (not JSON)
            format!("{h}.{p}.A"),       // impossible base64 length
            format!("{h}.{p}.AB"),      // non-zero trailing bits
            String::new(),
            "..".to_owned(),
        ];
        for t in &bad {
            assert_eq!(
                decode(t, 8192).err(),
                Some(JwtError::Malformed),
                "token {t:?}"
            );
        }
        // Standard-alphabet header: '{"alg":"HS256","x":"??>"}' encodes with '+' and '/'.
        let std_b64 = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD_NO_PAD
                .encode(br#"{"alg":"HS256","x":"??>>?"}"#)
        };
        assert!(std_b64.contains('/') || std_b64.contains('+'));
        assert_eq!(
            decode(&format!("{std_b64}.{p}.{s}"), 8192).err(),
            Some(JwtError::Malformed)
        );
    }
}
