//! JWT claim validation (RFC 7519 §4.1) against one issuer's rules.

use serde_json::{Map, Value};

use crate::{Header, JwtError};

/// Claim rules of one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRules {
    /// `iss` must equal this exactly.
    pub issuer: String,
    /// Empty: `aud` not checked. Otherwise `aud` must contain one of these.
    pub audiences: Vec<String>,
    pub leeway_secs: u64,
    /// Header `typ` to require (case-insensitive, `application/` prefix optional either side).
    pub typ: Option<String>,
    /// Claims that must be present and not null.
    pub required: Vec<String>,
    pub require_exp: bool,
    /// Upper bound for `exp - iat` (or `exp - now` without `iat`); also makes `exp` mandatory.
    pub max_lifetime_secs: Option<u64>,
}

/// Claims that must be strings when present.
const STRING_CLAIMS: &[&str] = &["sub", "jti", "scope", "client_id"];

/// Checks claims at `now` (unix seconds). Check order: typ, time claims, iss, aud, lifetime,
/// claim types, required claims; the first failure is returned.
pub fn validate_claims(
    header: &Header,
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: u64,
) -> Result<(), JwtError> {
    if let Some(want) = &rules.typ {
        let ok = header.typ.as_deref().is_some_and(|t| typ_eq(t, want));
        if !ok {
            return Err(JwtError::WrongType);
        }
    }

    // NumericDate arithmetic in f64: exact for any realistic integer time (< 2^53).
    let now_f = now as f64;
    let leeway = rules.leeway_secs as f64;
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    match exp {
        Some(exp) if now_f >= exp + leeway => return Err(JwtError::Expired),
        None if rules.require_exp || rules.max_lifetime_secs.is_some() => {
            return Err(JwtError::MissingClaim("exp".into()));
        }
        _ => {}
    }
    if nbf.is_some_and(|nbf| now_f + leeway < nbf) {
        return Err(JwtError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now_f + leeway) {
        return Err(JwtError::IssuedInFuture);
    }

    match claims.get("iss") {
        None | Some(Value::Null) => return Err(JwtError::MissingClaim("iss".into())),
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        Some(Value::String(_)) => return Err(JwtError::WrongIssuer),
        Some(_) => return Err(JwtError::ClaimType("iss".into())),
    }

    check_audience(claims.get("aud"), &rules.audiences)?;

    if let (Some(max), Some(exp)) = (rules.max_lifetime_secs, exp)
        && exp - iat.unwrap_or(now_f) > max as f64
    {
        return Err(JwtError::LifetimeTooLong);
    }

    for name in STRING_CLAIMS {
        if claims.get(*name).is_some_and(|v| !v.is_string()) {
            return Err(JwtError::ClaimType((*name).into()));
        }
    }
    if let Some(scp) = claims.get("scp")
        && !is_string_or_strings(scp)
    {
        return Err(JwtError::ClaimType("scp".into()));
    }

    for name in &rules.required {
        if claims.get(name).is_none_or(Value::is_null) {
            return Err(JwtError::MissingClaim(name.clone()));
        }
    }
    Ok(())
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| JwtError::ClaimType(name.into())),
        Some(_) => Err(JwtError::ClaimType(name.into())),
    }
}

fn check_audience(aud: Option<&Value>, wanted: &[String]) -> Result<(), JwtError> {
    let matches = |s: &str| wanted.iter().any(|w| w == s);
    let found = match aud {
        None | Some(Value::Null) if wanted.is_empty() => return Ok(()),
        None | Some(Value::Null) => return Err(JwtError::MissingClaim("aud".into())),
        Some(Value::String(s)) => matches(s),
        Some(Value::Array(items)) => {
            if !items.iter().all(Value::is_string) {
                return Err(JwtError::ClaimType("aud".into()));
            }
            items.iter().filter_map(Value::as_str).any(matches)
        }
        Some(_) => return Err(JwtError::ClaimType("aud".into())),
    };
    if wanted.is_empty() || found {
        Ok(())
    } else {
        Err(JwtError::WrongAudience)
    }
}

fn is_string_or_strings(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    }
}

/// RFC 7515 §4.1.9: media types compare case-insensitively, `application/` may be omitted.
fn typ_eq(a: &str, b: &str) -> bool {
    fn bare(s: &str) -> &str {
        match s.get(..12) {
            Some(p) if p.eq_ignore_ascii_case("application/") => &s[12..],
            _ => s,
        }
    }
    bare(a).eq_ignore_ascii_case(bare(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Alg;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: "https://idp.example".into(),
            audiences: vec!["api".into(), "api2".into()],
            leeway_secs: 0,
            typ: None,
            required: vec![],
            require_exp: true,
            max_lifetime_secs: None,
        }
    }

    fn header(typ: Option<&str>) -> Header {
        Header {
            alg: Alg::ES256,
            kid: None,
            typ: typ.map(str::to_owned),
        }
    }

    fn base() -> Map<String, Value> {
        match json!({"iss": "https://idp.example", "aud": "api", "exp": NOW + 60, "iat": NOW}) {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn check_with(f: impl FnOnce(&mut Map<String, Value>), r: &ClaimRules) -> Result<(), JwtError> {
        let mut c = base();
        f(&mut c);
        validate_claims(&header(None), &c, r, NOW)
    }

    fn check(f: impl FnOnce(&mut Map<String, Value>)) -> Result<(), JwtError> {
        check_with(f, &rules())
    }

    fn set(name: &'static str, v: Value) -> impl FnOnce(&mut Map<String, Value>) {
        move |c| {
            c.insert(name.into(), v);
        }
    }

    fn remove(name: &'static str) -> impl FnOnce(&mut Map<String, Value>) {
        move |c| {
            c.remove(name);
        }
    }

    #[test]
    fn baseline_ok() {
        assert_eq!(check(|_| {}), Ok(()));
    }

    #[test]
    fn exp_boundaries() {
        assert_eq!(check(set("exp", json!(NOW))), Err(JwtError::Expired));
        assert_eq!(check(set("exp", json!(NOW - 1))), Err(JwtError::Expired));
        assert_eq!(check(set("exp", json!(NOW + 1))), Ok(()));
        assert_eq!(check(set("exp", json!(NOW as f64 + 0.5))), Ok(()));
        assert_eq!(
            check(set("exp", json!(NOW as f64 - 0.5))),
            Err(JwtError::Expired)
        );
        let mut r = rules();
        r.leeway_secs = 30;
        assert_eq!(check_with(set("exp", json!(NOW - 29)), &r), Ok(()));
        assert_eq!(
            check_with(set("exp", json!(NOW - 30)), &r),
            Err(JwtError::Expired)
        );
        assert_eq!(
            check(remove("exp")),
            Err(JwtError::MissingClaim("exp".into()))
        );
        let mut r = rules();
        r.require_exp = false;
        assert_eq!(check_with(remove("exp"), &r), Ok(()));
        for bad in [
            json!("1700000100"),
            json!(null),
            json!(true),
            json!([1]),
            json!({}),
        ] {
            assert_eq!(
                check(set("exp", bad)),
                Err(JwtError::ClaimType("exp".into()))
            );
        }
    }

    #[test]
    fn nbf_and_iat() {
        assert_eq!(check(set("nbf", json!(NOW))), Ok(()));
        assert_eq!(
            check(set("nbf", json!(NOW + 1))),
            Err(JwtError::NotYetValid)
        );
        let mut r = rules();
        r.leeway_secs = 10;
        assert_eq!(check_with(set("nbf", json!(NOW + 10)), &r), Ok(()));
        assert_eq!(
            check_with(set("nbf", json!(NOW + 11)), &r),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            check(set("nbf", json!("x"))),
            Err(JwtError::ClaimType("nbf".into()))
        );

        assert_eq!(check(set("iat", json!(NOW))), Ok(()));
        assert_eq!(
            check(set("iat", json!(NOW + 1))),
            Err(JwtError::IssuedInFuture)
        );
        assert_eq!(check_with(set("iat", json!(NOW + 10)), &r), Ok(()));
        assert_eq!(
            check_with(set("iat", json!(NOW + 11)), &r),
            Err(JwtError::IssuedInFuture)
        );
        assert_eq!(
            check(set("iat", json!(null))),
            Err(JwtError::ClaimType("iat".into()))
        );
        assert_eq!(check(remove("iat")), Ok(()));
    }

    #[test]
    fn issuer() {
        assert_eq!(
            check(remove("iss")),
            Err(JwtError::MissingClaim("iss".into()))
        );
        assert_eq!(
            check(set("iss", json!(null))),
            Err(JwtError::MissingClaim("iss".into()))
        );
        assert_eq!(
            check(set("iss", json!("https://idp.example/"))),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(
            check(set("iss", json!("HTTPS://idp.example"))),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(
            check(set("iss", json!(["https://idp.example"]))),
            Err(JwtError::ClaimType("iss".into()))
        );
        assert_eq!(
            check(set("iss", json!(1))),
            Err(JwtError::ClaimType("iss".into()))
        );
    }

    #[test]
    fn audience() {
        assert_eq!(check(set("aud", json!("api2"))), Ok(()));
        assert_eq!(check(set("aud", json!(["other", "api"]))), Ok(()));
        assert_eq!(
            check(set("aud", json!("other"))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            check(set("aud", json!(["other"]))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(check(set("aud", json!([]))), Err(JwtError::WrongAudience));
        assert_eq!(
            check(set("aud", json!("API"))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            check(remove("aud")),
            Err(JwtError::MissingClaim("aud".into()))
        );
        assert_eq!(
            check(set("aud", json!(null))),
            Err(JwtError::MissingClaim("aud".into()))
        );
        assert_eq!(
            check(set("aud", json!(7))),
            Err(JwtError::ClaimType("aud".into()))
        );
        assert_eq!(
            check(set("aud", json!(["api", 7]))),
            Err(JwtError::ClaimType("aud".into()))
        );
        assert_eq!(
            check(set("aud", json!({"api": true}))),
            Err(JwtError::ClaimType("aud".into()))
        );
        let mut r = rules();
        r.audiences.clear();
        assert_eq!(check_with(remove("aud"), &r), Ok(()));
        assert_eq!(check_with(set("aud", json!("anything")), &r), Ok(()));
        assert_eq!(
            check_with(set("aud", json!(5)), &r),
            Err(JwtError::ClaimType("aud".into()))
        );
    }

    #[test]
    fn lifetime() {
        let mut r = rules();
        r.max_lifetime_secs = Some(60);
        assert_eq!(check_with(|_| {}, &r), Ok(()));
        assert_eq!(
            check_with(set("exp", json!(NOW + 61)), &r),
            Err(JwtError::LifetimeTooLong)
        );
        // Without iat the lifetime counts from now.
        assert_eq!(
            check_with(
                |c| {
                    c.remove("iat");
                    c.insert("exp".into(), json!(NOW + 60));
                },
                &r
            ),
            Ok(())
        );
        assert_eq!(
            check_with(
                |c| {
                    c.remove("iat");
                    c.insert("exp".into(), json!(NOW + 61));
                },
                &r
            ),
            Err(JwtError::LifetimeTooLong)
        );
        // An old iat makes a long lifetime even if exp is near.
        assert_eq!(
            check_with(set("iat", json!(NOW - 100)), &r),
            Err(JwtError::LifetimeTooLong)
        );
        r.require_exp = false;
        assert_eq!(
            check_with(remove("exp"), &r),
            Err(JwtError::MissingClaim("exp".into()))
        );
    }

    #[test]
    fn string_claims() {
        for name in ["sub", "jti", "scope", "client_id"] {
            assert_eq!(check(set(name, json!("x"))), Ok(()));
            assert_eq!(
                check(set(name, json!(1))),
                Err(JwtError::ClaimType(name.into()))
            );
            assert_eq!(
                check(set(name, json!(["x"]))),
                Err(JwtError::ClaimType(name.into()))
            );
            assert_eq!(
                check(set(name, json!(null))),
                Err(JwtError::ClaimType(name.into()))
            );
        }
        assert_eq!(check(set("scp", json!("a b"))), Ok(()));
        assert_eq!(check(set("scp", json!(["a", "b"]))), Ok(()));
        assert_eq!(
            check(set("scp", json!(["a", 1]))),
            Err(JwtError::ClaimType("scp".into()))
        );
        assert_eq!(
            check(set("scp", json!(1))),
            Err(JwtError::ClaimType("scp".into()))
        );
    }

    #[test]
    fn required_claims() {
        let mut r = rules();
        r.required = vec!["sub".into(), "tenant".into()];
        assert_eq!(
            check_with(set("sub", json!("u")), &r),
            Err(JwtError::MissingClaim("tenant".into()))
        );
        assert_eq!(
            check_with(
                |c| {
                    c.insert("sub".into(), json!("u"));
                    c.insert("tenant".into(), json!(null));
                },
                &r
            ),
            Err(JwtError::MissingClaim("tenant".into()))
        );
        assert_eq!(
            check_with(
                |c| {
                    c.insert("sub".into(), json!("u"));
                    c.insert("tenant".into(), json!(0));
                },
                &r
            ),
            Ok(())
        );
    }

    #[test]
    fn typ_matching() {
        let mut r = rules();
        r.typ = Some("at+jwt".into());
        let c = base();
        for ok in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/AT+jwt",
        ] {
            assert_eq!(
                validate_claims(&header(Some(ok)), &c, &r, NOW),
                Ok(()),
                "{ok}"
            );
        }
        for bad in ["jwt", "JWT", "at+jwt2", "text/at+jwt", "application/", ""] {
            assert_eq!(
                validate_claims(&header(Some(bad)), &c, &r, NOW),
                Err(JwtError::WrongType),
                "{bad}"
            );
        }
        assert_eq!(
            validate_claims(&header(None), &c, &r, NOW),
            Err(JwtError::WrongType)
        );
        r.typ = Some("application/at+jwt".into());
        assert_eq!(
            validate_claims(&header(Some("at+jwt")), &c, &r, NOW),
            Ok(())
        );
        r.typ = None;
        assert_eq!(
            validate_claims(&header(Some("whatever")), &c, &r, NOW),
            Ok(())
        );
        // Multi-byte characters do not break the prefix check.
        r.typ = Some("ééééééé".into());
        assert_eq!(
            validate_claims(&header(Some("ééééééé")), &c, &r, NOW),
            Ok(())
        );
    }
}
