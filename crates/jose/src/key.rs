//! Verification keys: parsed once, used for many tokens.

use std::fmt;

use ring::{hmac, signature};

use crate::der::{self, SpkiKey};
use crate::{Alg, JoseError, JwtError, pem};

/// Shortest HMAC secret accepted at all (the HS256 floor). RFC 7518 §3.2 requires a key at
/// least as long as the hash output, so HS384 needs 48 bytes and HS512 64 (see `supports`).
const MIN_HMAC_SECRET: usize = 32;
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// A public verification key (or an HMAC secret), parsed once.
#[derive(Clone)]
pub struct VerifyKey {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Hmac(Box<HmacKeys>),
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Clone)]
struct HmacKeys {
    len: usize,
    hs256: hmac::Key,
    hs384: hmac::Key,
    hs512: hmac::Key,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints secret material.
        let kind = match &self.inner {
            Inner::Hmac(_) => "hmac",
            Inner::Rsa { .. } => "rsa",
            Inner::P256(_) => "ec-p256",
            Inner::P384(_) => "ec-p384",
            Inner::Ed25519(_) => "ed25519",
        };
        f.debug_struct("VerifyKey").field("kind", &kind).finish()
    }
}

impl VerifyKey {
    /// An HMAC secret; secrets shorter than 32 bytes are refused. The key supports HS256,
    /// HS384 only from 48 bytes and HS512 only from 64 (RFC 7518 §3.2: key >= hash size).
    pub fn hmac(secret: &[u8]) -> Result<VerifyKey, JoseError> {
        if secret.len() < MIN_HMAC_SECRET {
            return Err(JoseError::Key(format!(
                "HMAC secret must be at least {MIN_HMAC_SECRET} bytes"
            )));
        }
        Ok(VerifyKey {
            inner: Inner::Hmac(Box::new(HmacKeys {
                len: secret.len(),
                hs256: hmac::Key::new(hmac::HMAC_SHA256, secret),
                hs384: hmac::Key::new(hmac::HMAC_SHA384, secret),
                hs512: hmac::Key::new(hmac::HMAC_SHA512, secret),
            })),
        })
    }

    /// From a PEM "PUBLIC KEY" (SPKI) holding RSA, EC P-256/P-384 or Ed25519.
    pub fn from_spki_pem(pem: &str) -> Result<VerifyKey, JoseError> {
        Self::from_spki_der(&pem::pem_decode(pem, "PUBLIC KEY")?)
    }

    /// From a DER SubjectPublicKeyInfo (same key types as [`from_spki_pem`](Self::from_spki_pem)).
    pub fn from_spki_der(der: &[u8]) -> Result<VerifyKey, JoseError> {
        match der::parse_spki(der).map_err(JoseError::Key)? {
            SpkiKey::Rsa { n, e } => Self::rsa(&n, &e),
            SpkiKey::P256(point) => Self::ec_point(Alg::ES256, point),
            SpkiKey::P384(point) => Self::ec_point(Alg::ES384, point),
            SpkiKey::Ed25519(x) => Self::ed25519(&x),
        }
    }

    /// RSA from big-endian modulus and exponent; 2048..=8192 bits, odd exponent >= 3.
    pub(crate) fn rsa(n: &[u8], e: &[u8]) -> Result<VerifyKey, JoseError> {
        let n = der::strip_leading_zeros(n);
        let e = der::strip_leading_zeros(e);
        let bits = match n.first() {
            Some(&top) => n.len() * 8 - top.leading_zeros() as usize,
            None => 0,
        };
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(JoseError::Key(format!(
                "RSA modulus of {bits} bits (need {MIN_RSA_BITS}..={MAX_RSA_BITS})"
            )));
        }
        if n.last().is_some_and(|b| b & 1 == 0) {
            return Err(JoseError::Key("RSA modulus is even".into()));
        }
        // ring accepts 3 <= e < 2^33, odd.
        let e_ok = e.len() <= 5 && e.last().is_some_and(|b| b & 1 == 1) && {
            let v = e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            (3..(1u64 << 33)).contains(&v)
        };
        if !e_ok {
            return Err(JoseError::Key("RSA public exponent out of range".into()));
        }
        if has_roca_fingerprint(n) {
            return Err(JoseError::Key(
                "RSA modulus has the ROCA (CVE-2017-15361) weak-key fingerprint".into(),
            ));
        }
        Ok(VerifyKey {
            inner: Inner::Rsa {
                n: n.to_vec(),
                e: e.to_vec(),
            },
        })
    }

    /// EC from an uncompressed point for ES256 (P-256) or ES384 (P-384).
    pub(crate) fn ec_point(alg: Alg, point: Vec<u8>) -> Result<VerifyKey, JoseError> {
        let len = match alg {
            Alg::ES256 => 65,
            Alg::ES384 => 97,
            _ => return Err(JoseError::Unsupported(format!("{alg} is not an EC alg"))),
        };
        if point.len() != len || point[0] != 0x04 {
            return Err(JoseError::Key("EC point must be uncompressed".into()));
        }
        let inner = if alg == Alg::ES256 {
            Inner::P256(point)
        } else {
            Inner::P384(point)
        };
        Ok(VerifyKey { inner })
    }

    pub(crate) fn ed25519(x: &[u8]) -> Result<VerifyKey, JoseError> {
        if x.len() != 32 {
            return Err(JoseError::Key("Ed25519 public key must be 32 bytes".into()));
        }
        Ok(VerifyKey {
            inner: Inner::Ed25519(x.to_vec()),
        })
    }

    /// Which algorithms this key can verify (RSA: RS*/PS*; P-256: ES256; P-384: ES384;
    /// Ed25519: EdDSA; HMAC: HS*).
    pub fn supports(&self, alg: Alg) -> bool {
        match &self.inner {
            Inner::Hmac(keys) => match alg {
                Alg::HS256 => true,
                Alg::HS384 => keys.len >= 48,
                Alg::HS512 => keys.len >= 64,
                _ => false,
            },
            Inner::Rsa { .. } => matches!(
                alg,
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
            ),
            Inner::P256(_) => alg == Alg::ES256,
            Inner::P384(_) => alg == Alg::ES384,
            Inner::Ed25519(_) => alg == Alg::EdDSA,
        }
    }

    /// Verifies `signature` over `message` with `alg`. A key that does not support `alg`
    /// gives [`JwtError::AlgNotAllowed`]; any verification failure gives
    /// [`JwtError::BadSignature`].
    pub fn verify_raw(&self, alg: Alg, message: &[u8], signature: &[u8]) -> Result<(), JwtError> {
        if !self.supports(alg) {
            return Err(JwtError::AlgNotAllowed);
        }
        let ok = match &self.inner {
            Inner::Hmac(keys) => {
                let key = match alg {
                    Alg::HS256 => &keys.hs256,
                    Alg::HS384 => &keys.hs384,
                    _ => &keys.hs512,
                };
                hmac::verify(key, message, signature).is_ok()
            }
            Inner::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .is_ok()
            }
            Inner::P256(point) => {
                signature.len() == 64
                    && signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(message, signature)
                        .is_ok()
            }
            Inner::P384(point) => {
                signature.len() == 96
                    && signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                        .verify(message, signature)
                        .is_ok()
            }
            Inner::Ed25519(x) => {
                signature.len() == 64
                    && signature::UnparsedPublicKey::new(&signature::ED25519, x)
                        .verify(message, signature)
                        .is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(JwtError::BadSignature)
        }
    }
}

/// ROCA (CVE-2017-15361): moduli from the affected generator satisfy, for every small prime
/// `r` of its primorial, `n mod r` in the subgroup generated by 65537 mod `r`. A random modulus
/// passes all of these primes with negligible probability.
fn has_roca_fingerprint(n: &[u8]) -> bool {
    const PRIMES: &[u32] = &[
        3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
        97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
    ];
    PRIMES.iter().all(|&r| {
        let rem = n
            .iter()
            .fold(0u32, |acc, &b| ((acc << 8) | u32::from(b)) % r);
        let g = 65537 % r;
        let mut x = 1u32;
        loop {
            if x == rem {
                return true;
            }
            x = x * g % r;
            if x == 1 {
                return false;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hmac_secret_length_floor() {
        assert!(VerifyKey::hmac(&[1u8; 31]).is_err());
        let k = VerifyKey::hmac(&[1u8; 32]).unwrap();
        assert!(k.supports(Alg::HS256) && !k.supports(Alg::HS384) && !k.supports(Alg::HS512));
        assert_eq!(
            k.verify_raw(Alg::HS512, b"", &[0; 64]),
            Err(JwtError::AlgNotAllowed)
        );
        let k = VerifyKey::hmac(&[1u8; 48]).unwrap();
        assert!(k.supports(Alg::HS384) && !k.supports(Alg::HS512));
        let k = VerifyKey::hmac(&[1u8; 64]).unwrap();
        assert!(Alg::ALL.iter().all(|a| k.supports(*a) == a.is_hmac()));
        assert!(!k.supports(Alg::RS256) && !k.supports(Alg::EdDSA));
        assert!(!format!("{k:?}").contains("1, 1"));
    }

    #[test]
    fn roca_fingerprint() {
        // Powers of 65537 are in the generated subgroup modulo every prime.
        assert!(has_roca_fingerprint(&65537u32.to_be_bytes()));
        assert!(has_roca_fingerprint(&(65537u64 * 65537).to_be_bytes()));
        assert!(!has_roca_fingerprint(&[0xff; 256]));
        assert!(!has_roca_fingerprint(&[0x02]));
    }

    #[test]
    fn rsa_parameter_checks() {
        let mut n = vec![0xffu8; 256];
        assert!(VerifyKey::rsa(&n, &[1, 0, 1]).is_ok());
        assert!(VerifyKey::rsa(&n, &[1]).is_err()); // e = 1
        assert!(VerifyKey::rsa(&n, &[2]).is_err()); // even
        assert!(VerifyKey::rsa(&n[..255], &[1, 0, 1]).is_err()); // 2040 bits
        n[255] = 0xfe;
        assert!(VerifyKey::rsa(&n, &[3]).is_err()); // even modulus
        let mut padded = vec![0u8, 0];
        padded.extend(vec![0xffu8; 256]);
        assert!(VerifyKey::rsa(&padded, &[0, 3]).is_ok());
        assert!(VerifyKey::rsa(&vec![0xffu8; 1025], &[3]).is_err()); // 8200 bits
    }
}
