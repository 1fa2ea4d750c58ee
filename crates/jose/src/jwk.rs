//! JWK Sets (RFC 7517) of public signature keys.

use serde_json::{Map, Value};

use crate::{Alg, JoseError, VerifyKey, b64url_decode};

/// Members that only private (or symmetric) keys carry.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// One key of a JWK Set.
#[derive(Debug, Clone)]
pub struct Jwk {
    pub kid: Option<String>,
    pub alg: Option<Alg>,
    pub key: VerifyKey,
}

/// The usable signature keys of a JWK Set.
#[derive(Debug, Clone, Default)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// Parses RFC 7517 JSON `{"keys":[...]}`. Unusable keys (`use` other than `sig`, `key_ops`
    /// without `verify`, unknown kty/crv/alg, private members, `oct`, RSA under 2048 bits, bad
    /// encodings) are skipped with one warning each; only malformed JSON or a missing `keys`
    /// array fails the whole set.
    pub fn from_json(bytes: &[u8]) -> Result<(JwkSet, Vec<String>), JoseError> {
        let doc: Value = serde_json::from_slice(bytes)
            .map_err(|e| JoseError::Jwks(format!("invalid JSON: {e}")))?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| JoseError::Jwks("no \"keys\" array".into()))?;
        let mut keys = Vec::with_capacity(entries.len());
        let mut warnings = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let label = match entry.get("kid").and_then(Value::as_str) {
                Some(kid) => format!("key {i} (kid {kid:?})"),
                None => format!("key {i}"),
            };
            match parse_jwk(entry) {
                Ok(jwk) => {
                    if let Some(kid) = &jwk.kid
                        && keys.iter().any(|k: &Jwk| k.kid.as_ref() == Some(kid))
                    {
                        warnings.push(format!("{label}: duplicate kid (both keys kept)"));
                    }
                    keys.push(jwk);
                }
                Err(why) => warnings.push(format!("{label} skipped: {why}")),
            }
        }
        Ok((JwkSet { keys }, warnings))
    }

    /// Candidate keys for a token: with `kid`, keys with exactly that kid; without, every key.
    /// Only keys that support `alg` and whose own `alg` (when present) equals it.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Alg,
    ) -> impl Iterator<Item = &'a Jwk> + 'a {
        self.keys.iter().filter(move |k| {
            kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
                && k.key.supports(alg)
                && k.alg.is_none_or(|a| a == alg)
        })
    }

    /// The key ids present (keys without a kid are not listed).
    pub fn kids(&self) -> Vec<String> {
        self.keys.iter().filter_map(|k| k.kid.clone()).collect()
    }
}

fn parse_jwk(v: &Value) -> Result<Jwk, String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    let kty = obj
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("missing or non-string kty")?;
    if kty == "oct" {
        return Err("symmetric (oct) keys are never taken from a JWK set".into());
    }
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| obj.contains_key(**m)) {
        return Err(format!("private key member {m:?} present"));
    }
    match obj.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(u) => return Err(format!("use {u} is not \"sig\"")),
    }
    match obj.get("key_ops") {
        None => {}
        Some(Value::Array(ops)) if ops.iter().any(|o| o == "verify") => {}
        Some(_) => return Err("key_ops does not include \"verify\"".into()),
    }
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("kid is not a string".into()),
    };
    let alg = match obj.get("alg") {
        None => None,
        Some(Value::String(s)) => {
            Some(Alg::from_name(s).ok_or_else(|| format!("unsupported alg {s:?}"))?)
        }
        Some(_) => return Err("alg is not a string".into()),
    };
    let key = match kty {
        "RSA" => {
            let n = member(obj, "n")?;
            let e = member(obj, "e")?;
            VerifyKey::rsa(&n, &e).map_err(|e| e.to_string())?
        }
        "EC" => {
            let (alg, len) = match crv(obj)? {
                "P-256" => (Alg::ES256, 32),
                "P-384" => (Alg::ES384, 48),
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let x = member(obj, "x")?;
            let y = member(obj, "y")?;
            if x.len() != len || y.len() != len {
                return Err("EC coordinate of the wrong length".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            VerifyKey::ec_point(alg, point).map_err(|e| e.to_string())?
        }
        "OKP" => match crv(obj)? {
            "Ed25519" => VerifyKey::ed25519(&member(obj, "x")?).map_err(|e| e.to_string())?,
            other => return Err(format!("unsupported OKP curve {other:?}")),
        },
        other => return Err(format!("unsupported kty {other:?}")),
    };
    if let Some(a) = alg
        && !key.supports(a)
    {
        return Err(format!("alg {a} does not fit the key type"));
    }
    Ok(Jwk { kid, alg, key })
}

fn crv(obj: &Map<String, Value>) -> Result<&str, String> {
    obj.get("crv")
        .and_then(Value::as_str)
        .ok_or_else(|| "missing or non-string crv".into())
}

fn member(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = obj
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing or non-string {name:?}"))?;
    let bytes = b64url_decode(s).ok_or_else(|| format!("{name:?} is not base64url"))?;
    if bytes.is_empty() {
        return Err(format!("{name:?} is empty"));
    }
    Ok(bytes)
}
