//! # portcullis-jose
//!
//! Strict JWS/JWT verification for the gateway, plus signing of gateway-minted internal tokens.
//!
//! * **Takes**: compact JWS strings, PEM/SPKI keys, JWK Sets, claim rules.
//! * **Produces**: an [`Unverified`] token that can be checked against a [`VerifyKey`], then
//!   [`validate_claims`]; or a signed compact JWS from a [`Signer`].
//! * **Refuses**: anything odd — `alg: none` in any casing, key-source headers (`jku`, `x5u`,
//!   `jwk`, `x5c`), `crit`/`b64`, duplicate JSON keys, non-canonical base64url, key/algorithm
//!   confusion. Each refusal is its own [`JwtError`] with a stable [`JwtError::code`].
//!
//! Crypto is `ring` only: this crate parses, `ring` computes.

#![forbid(unsafe_code)]

mod alg;
mod claims;
mod der;
mod error;
mod jwk;
mod jws;
mod key;
mod pem;
mod signer;
mod strict_json;
#[cfg(test)]
mod wycheproof_jose;

pub use alg::Alg;
pub use claims::{ClaimRules, validate_claims};
pub use error::{JoseError, JwtError};
pub use jwk::{Jwk, JwkSet};
pub use jws::{Header, Unverified, decode};
pub use key::VerifyKey;
pub use pem::{pem_decode, pem_encode};
pub use signer::Signer;

use base64::Engine as _;

/// base64url without padding, as JOSE uses everywhere.
pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict base64url decoding: alphabet `A-Z a-z 0-9 - _` only, no padding, no whitespace,
/// zero trailing bits (one canonical encoding per byte string).
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}
