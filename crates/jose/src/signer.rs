//! Signing of gateway-minted internal tokens (and demo tokens).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{Map, Value, json};

use crate::der::{self, SpkiKey};
use crate::{Alg, JoseError, b64url_encode, pem};

/// Signs compact JWS tokens with one key pair (EdDSA, ES256, or RS256 when loaded from PEM).
pub struct Signer {
    key: SigningKey,
    kid: String,
    pkcs8: Vec<u8>,
    rng: SystemRandom,
    /// The latest `exp` of the tokens signed so far (0: none had one).
    signed_until: AtomicU64,
}

enum SigningKey {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A fresh Ed25519 (`EdDSA`) or P-256 (`ES256`) key pair; any other alg is an error.
    pub fn generate(alg: Alg, kid: String) -> Result<Signer, JoseError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            Alg::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng),
            Alg::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
            other => {
                return Err(JoseError::Unsupported(format!(
                    "cannot generate {other} keys (EdDSA or ES256 only)"
                )));
            }
        }
        .map_err(|_| JoseError::Key("key generation failed".into()))?;
        Self::from_pkcs8_der(pkcs8.as_ref().to_vec(), kid, rng)
    }

    /// From a PKCS#8 PEM ("PRIVATE KEY") holding an Ed25519, P-256 or RSA (2048..=8192 bit)
    /// key; the alg (EdDSA, ES256, RS256) is inferred.
    pub fn from_pkcs8_pem(pem: &str, kid: String) -> Result<Signer, JoseError> {
        let der = pem::pem_decode(pem, "PRIVATE KEY")?;
        Self::from_pkcs8_der(der, kid, SystemRandom::new())
    }

    fn from_pkcs8_der(pkcs8: Vec<u8>, kid: String, rng: SystemRandom) -> Result<Signer, JoseError> {
        let key = if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8) {
            SigningKey::Ed25519(k)
        } else if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
        {
            SigningKey::P256(k)
        } else {
            match RsaKeyPair::from_pkcs8(&pkcs8) {
                Ok(k) if (2048..=8192).contains(&(k.public().modulus_len() * 8)) => {
                    SigningKey::Rsa(k)
                }
                Ok(_) => return Err(JoseError::Key("RSA key size out of range".into())),
                Err(e) => {
                    return Err(JoseError::Key(format!(
                        "not an Ed25519, P-256 or RSA PKCS#8 private key ({e})"
                    )));
                }
            }
        };
        Ok(Signer {
            key,
            kid,
            pkcs8,
            rng,
            signed_until: AtomicU64::new(0),
        })
    }

    /// The same key under another `kid`.
    pub fn with_kid(mut self, kid: String) -> Signer {
        self.kid = kid;
        self
    }

    /// The RFC 7638 JWK thumbprint of the public key: SHA-256 over the key's required JWK
    /// members (no `kid`, `alg` or `use`), base64url. Equal for the same key wherever and
    /// whenever it is loaded, so it serves as a `kid` that several processes agree on.
    pub fn thumbprint(&self) -> String {
        let jwk = self.public_jwk();
        let m = |k: &str| jwk.get(k).and_then(Value::as_str).unwrap_or_default();
        // Members in lexicographic order, no whitespace (§3.2); the values are base64url or
        // fixed curve names, which JSON writes without escapes.
        let canonical = match &self.key {
            SigningKey::Ed25519(_) => {
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, m("x"))
            }
            SigningKey::P256(_) => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                m("x"),
                m("y")
            ),
            SigningKey::Rsa(_) => {
                format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, m("e"), m("n"))
            }
        };
        b64url_encode(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// The latest `exp` (unix seconds) of the tokens this signer has signed, 0 when none had
    /// one: tokens it signed may be presented until then, so its public key is needed as long.
    pub fn signed_until(&self) -> u64 {
        self.signed_until.load(Ordering::Acquire)
    }

    pub fn alg(&self) -> Alg {
        match self.key {
            SigningKey::Ed25519(_) => Alg::EdDSA,
            SigningKey::P256(_) => Alg::ES256,
            SigningKey::Rsa(_) => Alg::RS256,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Header `{"alg","kid","typ"}` plus `claims` as a compact JWS.
    pub fn sign(&self, typ: &str, claims: &Map<String, Value>) -> Result<String, JoseError> {
        let header = json!({"alg": self.alg().name(), "kid": self.kid, "typ": typ});
        let header = serde_json::to_vec(&header).map_err(|e| JoseError::Sign(e.to_string()))?;
        let payload = serde_json::to_vec(claims).map_err(|e| JoseError::Sign(e.to_string()))?;
        let mut token = b64url_encode(&header);
        token.push('.');
        token.push_str(&b64url_encode(&payload));
        let sig = self.sign_bytes(token.as_bytes())?;
        token.push('.');
        token.push_str(&b64url_encode(&sig));
        if let Some(exp) = claims.get("exp").and_then(Value::as_u64) {
            self.signed_until.fetch_max(exp, Ordering::AcqRel);
        }
        Ok(token)
    }

    fn sign_bytes(&self, msg: &[u8]) -> Result<Vec<u8>, JoseError> {
        let failed = |_| JoseError::Sign("signature computation failed".into());
        Ok(match &self.key {
            SigningKey::Ed25519(k) => k.sign(msg).as_ref().to_vec(),
            SigningKey::P256(k) => k.sign(&self.rng, msg).map_err(failed)?.as_ref().to_vec(),
            SigningKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)
                    .map_err(failed)?;
                sig
            }
        })
    }

    /// The public key as a JWK object (kty, crv/x/y or n/e, kid, alg, use "sig").
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &self.key {
            SigningKey::Ed25519(k) => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64url_encode(k.public_key().as_ref()),
            }),
            SigningKey::P256(k) => {
                // Uncompressed point: 0x04 || x (32) || y (32).
                let point = k.public_key().as_ref();
                let x = point.get(1..33).unwrap_or_default();
                let y = point.get(33..65).unwrap_or_default();
                json!({"kty": "EC", "crv": "P-256", "x": b64url_encode(x), "y": b64url_encode(y)})
            }
            SigningKey::Rsa(k) => match der::parse_rsa_public_key(k.public().as_ref()) {
                Ok(SpkiKey::Rsa { n, e }) => {
                    json!({"kty": "RSA", "n": b64url_encode(&n), "e": b64url_encode(&e)})
                }
                // ring serialises its own public key; this cannot fail to parse.
                _ => json!({"kty": "RSA"}),
            },
        };
        if let Value::Object(m) = &mut jwk {
            m.insert("kid".into(), Value::String(self.kid.clone()));
            m.insert("alg".into(), Value::String(self.alg().name().into()));
            m.insert("use".into(), Value::String("sig".into()));
        }
        jwk
    }

    /// The PKCS#8 private key as PEM.
    pub fn to_pkcs8_pem(&self) -> String {
        pem::pem_encode(&self.pkcs8, "PRIVATE KEY")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// RFC 8037 §A.1–A.3: the Ed25519 key of the examples and its RFC 7638 thumbprint.
    #[test]
    fn thumbprint_of_the_rfc_8037_key() {
        let seed = crate::b64url_decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A").unwrap();
        // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410 §7).
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        let s = Signer::from_pkcs8_pem(&pem::pem_encode(&der, "PRIVATE KEY"), "x".into()).unwrap();
        assert_eq!(
            s.public_jwk()["x"],
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        assert_eq!(
            s.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        // The kid given plays no part; the same key loaded again has the same thumbprint.
        let again = Signer::from_pkcs8_pem(&s.to_pkcs8_pem(), "other".into()).unwrap();
        assert_eq!(again.thumbprint(), s.thumbprint());
        assert_eq!(again.with_kid("k".into()).kid(), "k");
    }

    #[test]
    fn thumbprints_of_other_keys_differ_and_ignore_the_kid() {
        let a = Signer::generate(Alg::ES256, "a".into()).unwrap();
        let b = Signer::generate(Alg::ES256, "a".into()).unwrap();
        assert_ne!(a.thumbprint(), b.thumbprint());
        assert_eq!(a.thumbprint().len(), 43);
        let pem = a.to_pkcs8_pem();
        let a2 = Signer::from_pkcs8_pem(&pem, "b".into()).unwrap();
        assert_eq!(a.thumbprint(), a2.thumbprint());
    }

    #[test]
    fn the_latest_exp_signed_is_remembered() {
        let s = Signer::generate(Alg::EdDSA, "k".into()).unwrap();
        assert_eq!(s.signed_until(), 0);
        let claims = |exp: u64| {
            let mut c = Map::new();
            c.insert("exp".into(), Value::from(exp));
            c
        };
        s.sign("JWT", &claims(5000)).unwrap();
        s.sign("JWT", &claims(4000)).unwrap();
        assert_eq!(s.signed_until(), 5000);
        s.sign("JWT", &Map::new()).unwrap();
        assert_eq!(s.signed_until(), 5000);
    }
}
