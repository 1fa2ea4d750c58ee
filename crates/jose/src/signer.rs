//! Signing of gateway-minted internal tokens (and demo tokens).

use std::fmt;

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
        })
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
