//! End-to-end signing and verification: every algorithm, key confusion, malformed signatures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_jose::{
    Alg, ClaimRules, JwkSet, JwtError, Signer, Unverified, VerifyKey, decode, validate_claims,
};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _, RsaKeyPair};
use serde_json::{Map, Value, json};

const RSA_PRIVATE: &str = include_str!("keys/rsa.pem");
const RSA_PUBLIC: &str = include_str!("keys/rsa_pub.pem");
const RSA1024_PUBLIC: &str = include_str!("keys/rsa1024_pub.pem");
const P256_PRIVATE: &str = include_str!("keys/p256.pem");
const P256_PUBLIC: &str = include_str!("keys/p256_pub.pem");
const P384_PUBLIC: &str = include_str!("keys/p384_pub.pem");
const ED_PRIVATE: &str = include_str!("keys/ed.pem");
const ED_PUBLIC: &str = include_str!("keys/ed_pub.pem");

const NOW: u64 = 1_800_000_000;
const MAX: usize = 16 * 1024;

fn claims() -> Map<String, Value> {
    match json!({"iss": "https://idp.example", "aud": "api", "sub": "user-1",
                 "iat": NOW, "exp": NOW + 300})
    {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn rules() -> ClaimRules {
    ClaimRules {
        issuer: "https://idp.example".into(),
        audiences: vec!["api".into()],
        leeway_secs: 5,
        typ: Some("at+jwt".into()),
        required: vec!["sub".into()],
        require_exp: true,
        max_lifetime_secs: Some(3600),
    }
}

/// Builds a compact JWS from a header, claims and a signing function.
fn build(header: Value, claims: &Map<String, Value>, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(&header).unwrap()),
        B64.encode(serde_json::to_vec(claims).unwrap())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

fn hmac_sign(alg: Alg, secret: &[u8], msg: &[u8]) -> Vec<u8> {
    let algorithm = match alg {
        Alg::HS256 => ring::hmac::HMAC_SHA256,
        Alg::HS384 => ring::hmac::HMAC_SHA384,
        _ => ring::hmac::HMAC_SHA512,
    };
    ring::hmac::sign(&ring::hmac::Key::new(algorithm, secret), msg)
        .as_ref()
        .to_vec()
}

fn rsa_sign(alg: Alg, msg: &[u8]) -> Vec<u8> {
    let der = portcullis_jose::pem_decode(RSA_PRIVATE, "PRIVATE KEY").unwrap();
    let kp = RsaKeyPair::from_pkcs8(&der).unwrap();
    let padding: &dyn signature::RsaEncoding = match alg {
        Alg::RS256 => &signature::RSA_PKCS1_SHA256,
        Alg::RS384 => &signature::RSA_PKCS1_SHA384,
        Alg::RS512 => &signature::RSA_PKCS1_SHA512,
        Alg::PS256 => &signature::RSA_PSS_SHA256,
        Alg::PS384 => &signature::RSA_PSS_SHA384,
        _ => &signature::RSA_PSS_SHA512,
    };
    let mut sig = vec![0; kp.public().modulus_len()];
    kp.sign(padding, &SystemRandom::new(), msg, &mut sig)
        .unwrap();
    sig
}

/// Re-encodes a token with a different signature.
fn with_signature(token: &str, sig: &[u8]) -> String {
    let input = &token[..token.rfind('.').unwrap()];
    format!("{input}.{}", B64.encode(sig))
}

fn signature_of(token: &str) -> Vec<u8> {
    B64.decode(&token[token.rfind('.').unwrap() + 1..]).unwrap()
}

fn keyset_of(signer: &Signer) -> JwkSet {
    let doc = json!({"keys": [signer.public_jwk()]});
    let (set, warnings) = JwkSet::from_json(doc.to_string().as_bytes()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    set
}

#[test]
fn generated_signers_round_trip_through_jwks() {
    for alg in [Alg::EdDSA, Alg::ES256] {
        let signer = Signer::generate(alg, format!("k-{alg}")).unwrap();
        assert_eq!(signer.alg(), alg);
        assert_eq!(signer.kid(), format!("k-{alg}"));
        let token = signer.sign("at+jwt", &claims()).unwrap();
        let u = decode(&token, MAX).unwrap();
        assert_eq!(u.header.alg, alg);
        assert_eq!(u.header.kid.as_deref(), Some(signer.kid()));
        assert_eq!(u.header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(u.claims, claims());

        let set = keyset_of(&signer);
        assert_eq!(set.kids(), vec![signer.kid().to_owned()]);
        let keys: Vec<_> = set.candidates(u.header.kid.as_deref(), alg).collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].alg, Some(alg));
        u.verify(&keys[0].key).unwrap();
        validate_claims(&u.header, &u.claims, &rules(), NOW).unwrap();

        // Another key of the same type does not verify.
        let other = Signer::generate(alg, "other".into()).unwrap();
        assert_eq!(
            u.verify(&keyset_of(&other).keys[0].key),
            Err(JwtError::BadSignature)
        );

        // Tampered payload.
        let mut c = claims();
        c.insert("sub".into(), json!("admin"));
        let forged = format!(
            "{}.{}.{}",
            token.split('.').next().unwrap(),
            B64.encode(serde_json::to_vec(&c).unwrap()),
            token.rsplit('.').next().unwrap()
        );
        assert_eq!(
            decode(&forged, MAX).unwrap().verify(&keys[0].key),
            Err(JwtError::BadSignature)
        );

        // Truncated and extended signatures decode but fail verification.
        let sig = signature_of(&token);
        for bad in [&sig[..sig.len() - 1], &[sig.as_slice(), &[0]].concat()[..]] {
            let t = with_signature(&token, bad);
            assert_eq!(
                decode(&t, MAX).unwrap().verify(&keys[0].key),
                Err(JwtError::BadSignature)
            );
        }
    }
}

#[test]
fn signer_pem_round_trip_and_openssl_keys() {
    for alg in [Alg::EdDSA, Alg::ES256] {
        let a = Signer::generate(alg, "a".into()).unwrap();
        let pem = a.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let b = Signer::from_pkcs8_pem(&pem, "a".into()).unwrap();
        assert_eq!(b.alg(), alg);
        assert_eq!(a.public_jwk(), b.public_jwk());
        let t = b.sign("JWT", &claims()).unwrap();
        decode(&t, MAX)
            .unwrap()
            .verify(&keyset_of(&a).keys[0].key)
            .unwrap();
    }
    // Keys written by openssl (PKCS#8 v1), verified with openssl's SPKI.
    for (private, public, alg) in [
        (ED_PRIVATE, ED_PUBLIC, Alg::EdDSA),
        (P256_PRIVATE, P256_PUBLIC, Alg::ES256),
        (RSA_PRIVATE, RSA_PUBLIC, Alg::RS256),
    ] {
        let s = Signer::from_pkcs8_pem(private, "ossl".into()).unwrap();
        assert_eq!(s.alg(), alg);
        let t = s.sign("JWT", &claims()).unwrap();
        let u = decode(&t, MAX).unwrap();
        u.verify(&VerifyKey::from_spki_pem(public).unwrap())
            .unwrap();
        u.verify(&keyset_of(&s).keys[0].key).unwrap();
        assert_eq!(
            Signer::from_pkcs8_pem(&s.to_pkcs8_pem(), "x".into())
                .unwrap()
                .alg(),
            alg
        );
    }
    assert!(format!("{:?}", Signer::generate(Alg::EdDSA, "d".into()).unwrap()).contains("EdDSA"));
}

#[test]
fn signer_refusals() {
    for alg in [Alg::RS256, Alg::HS256, Alg::ES384, Alg::PS256] {
        assert!(Signer::generate(alg, "k".into()).is_err(), "{alg}");
    }
    assert!(Signer::from_pkcs8_pem(RSA_PUBLIC, "k".into()).is_err());
    assert!(
        Signer::from_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "k".into()
        )
        .is_err()
    );
}

#[test]
fn hmac_round_trip() {
    let secret = &[0x5au8; 64];
    let key = VerifyKey::hmac(secret).unwrap();
    let mut other = *secret;
    other[63] ^= 1;
    let wrong = VerifyKey::hmac(&other).unwrap();
    for alg in [Alg::HS256, Alg::HS384, Alg::HS512] {
        let t = build(json!({"alg": alg.name(), "typ": "JWT"}), &claims(), |m| {
            hmac_sign(alg, secret, m)
        });
        let u = decode(&t, MAX).unwrap();
        assert_eq!(u.header.alg, alg);
        u.verify(&key).unwrap();
        assert_eq!(u.verify(&wrong), Err(JwtError::BadSignature));
        let sig = signature_of(&t);
        let truncated = with_signature(&t, &sig[..sig.len() - 1]);
        assert_eq!(
            decode(&truncated, MAX).unwrap().verify(&key),
            Err(JwtError::BadSignature)
        );
        // The MAC of one HS* under another name fails.
        let relabelled = build(json!({"alg": "HS256"}), &claims(), |m| {
            hmac_sign(Alg::HS512, secret, m)[..32].to_vec()
        });
        assert_eq!(
            decode(&relabelled, MAX).unwrap().verify(&key),
            Err(JwtError::BadSignature)
        );
    }
    assert!(VerifyKey::hmac(&secret[..31]).is_err());
    // A 32-byte secret is too short for HS384/HS512 (RFC 7518 §3.2).
    let short = VerifyKey::hmac(&secret[..32]).unwrap();
    let t = build(json!({"alg": "HS512"}), &claims(), |m| {
        hmac_sign(Alg::HS512, &secret[..32], m)
    });
    assert_eq!(
        decode(&t, MAX).unwrap().verify(&short),
        Err(JwtError::AlgNotAllowed)
    );
    assert!(VerifyKey::hmac(b"").is_err());
}

#[test]
fn rsa_all_algorithms() {
    let key = VerifyKey::from_spki_pem(RSA_PUBLIC).unwrap();
    for alg in [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
    ] {
        assert!(key.supports(alg));
        let t = build(json!({"alg": alg.name()}), &claims(), |m| rsa_sign(alg, m));
        let u = decode(&t, MAX).unwrap();
        u.verify(&key).unwrap();
        let sig = signature_of(&t);
        let truncated = with_signature(&t, &sig[..sig.len() - 1]);
        assert_eq!(
            decode(&truncated, MAX).unwrap().verify(&key),
            Err(JwtError::BadSignature)
        );
        let mut flipped = sig.clone();
        flipped[100] ^= 1;
        assert_eq!(
            decode(&with_signature(&t, &flipped), MAX)
                .unwrap()
                .verify(&key),
            Err(JwtError::BadSignature)
        );
    }
    // PKCS#1 v1.5 signature presented as PSS (and the other way round) fails.
    let t = build(json!({"alg": "PS256"}), &claims(), |m| {
        rsa_sign(Alg::RS256, m)
    });
    assert_eq!(
        decode(&t, MAX).unwrap().verify(&key),
        Err(JwtError::BadSignature)
    );
    let t = build(json!({"alg": "RS256"}), &claims(), |m| {
        rsa_sign(Alg::PS256, m)
    });
    assert_eq!(
        decode(&t, MAX).unwrap().verify(&key),
        Err(JwtError::BadSignature)
    );
    for alg in [Alg::HS256, Alg::ES256, Alg::ES384, Alg::EdDSA] {
        assert!(!key.supports(alg));
    }
}

#[test]
fn key_confusion_hmac_with_rsa_public_key_bytes() {
    let rsa = VerifyKey::from_spki_pem(RSA_PUBLIC).unwrap();
    assert!(!rsa.supports(Alg::HS256));
    for alg in [Alg::HS256, Alg::HS384, Alg::HS512] {
        let t = build(json!({"alg": alg.name()}), &claims(), |m| {
            hmac_sign(alg, RSA_PUBLIC.as_bytes(), m)
        });
        let u = decode(&t, MAX).unwrap();
        assert_eq!(u.verify(&rsa), Err(JwtError::AlgNotAllowed));
        assert_eq!(JwtError::AlgNotAllowed.code(), "alg_not_allowed");
    }
    // Same through a JWK set: an RSA key is never a candidate for HS*.
    let signer = Signer::from_pkcs8_pem(RSA_PRIVATE, "rsa".into()).unwrap();
    let set = keyset_of(&signer);
    assert_eq!(set.candidates(Some("rsa"), Alg::HS256).count(), 0);
    assert_eq!(set.candidates(None, Alg::HS256).count(), 0);
    // ... nor for another RSA alg than the JWK's own "alg".
    assert_eq!(set.candidates(Some("rsa"), Alg::PS256).count(), 0);
    assert_eq!(set.candidates(Some("rsa"), Alg::RS256).count(), 1);
    // An EC key is not usable for EdDSA/ES384 and vice versa.
    let p256 = VerifyKey::from_spki_pem(P256_PUBLIC).unwrap();
    let ed = VerifyKey::from_spki_pem(ED_PUBLIC).unwrap();
    let sig = Signer::from_pkcs8_pem(ED_PRIVATE, "e".into())
        .unwrap()
        .sign("JWT", &claims())
        .unwrap();
    let relabelled = {
        let u = decode(&sig, MAX).unwrap();
        assert!(u.verify(&ed).is_ok());
        build(json!({"alg": "ES256"}), &claims(), |_| signature_of(&sig))
    };
    assert_eq!(
        decode(&relabelled, MAX).unwrap().verify(&ed),
        Err(JwtError::AlgNotAllowed)
    );
    assert_eq!(
        decode(&relabelled, MAX).unwrap().verify(&p256),
        Err(JwtError::BadSignature)
    );
}

/// P-256 group order n.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

#[test]
fn psychic_signatures_cve_2022_21449() {
    let signer = Signer::generate(Alg::ES256, "ec".into()).unwrap();
    let key = keyset_of(&signer).keys.remove(0).key;
    let token = signer.sign("JWT", &claims()).unwrap();
    decode(&token, MAX).unwrap().verify(&key).unwrap();
    let mut one = [0u8; 32];
    one[31] = 1;
    let zero = [0u8; 32];
    let cases: Vec<Vec<u8>> = vec![
        [zero, zero].concat(),
        [P256_N, P256_N].concat(),
        [zero, P256_N].concat(),
        [P256_N, zero].concat(),
        [one, one].concat(),
        [P256_N, one].concat(),
        vec![0u8; 63],
        vec![0u8; 65],
    ];
    for sig in cases {
        let t = with_signature(&token, &sig);
        assert_eq!(
            decode(&t, MAX).unwrap().verify(&key),
            Err(JwtError::BadSignature),
            "{sig:02x?}"
        );
        assert_eq!(
            key.verify_raw(Alg::ES256, b"", &sig),
            Err(JwtError::BadSignature)
        );
    }
    // A DER (ASN.1) signature is not the JOSE r||s form.
    let der_sig = {
        let rng = SystemRandom::new();
        let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .unwrap();
        let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            doc.as_ref(),
            &rng,
        )
        .unwrap();
        let mut point = kp.public_key().as_ref().to_vec();
        let msg = b"message";
        let sig = kp.sign(&rng, msg).unwrap().as_ref().to_vec();
        let spki_key = VerifyKey::from_spki_der(&{
            let mut der = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
            der.append(&mut point);
            der
        })
        .unwrap();
        (spki_key, sig)
    };
    assert_eq!(
        der_sig.0.verify_raw(Alg::ES256, b"message", &der_sig.1),
        Err(JwtError::BadSignature)
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn spki_parsing() {
    let rsa = VerifyKey::from_spki_pem(RSA_PUBLIC).unwrap();
    assert!(rsa.supports(Alg::RS256) && rsa.supports(Alg::PS512));
    let p384 = VerifyKey::from_spki_pem(P384_PUBLIC).unwrap();
    assert!(p384.supports(Alg::ES384) && !p384.supports(Alg::ES256));
    let p256 = VerifyKey::from_spki_pem(P256_PUBLIC).unwrap();
    assert!(p256.supports(Alg::ES256) && !p256.supports(Alg::ES384));
    let ed = VerifyKey::from_spki_pem(ED_PUBLIC).unwrap();
    assert!(ed.supports(Alg::EdDSA));
    for a in Alg::ALL {
        assert_eq!(ed.supports(*a), *a == Alg::EdDSA);
    }
    assert!(
        VerifyKey::from_spki_pem(RSA1024_PUBLIC).is_err(),
        "1024-bit RSA"
    );
    assert!(
        VerifyKey::from_spki_pem(RSA_PRIVATE).is_err(),
        "private key PEM"
    );
    assert!(VerifyKey::from_spki_pem("garbage").is_err());
    // Trailing byte, truncation, compressed EC point, unknown curve (P-521).
    let der = portcullis_jose::pem_decode(P256_PUBLIC, "PUBLIC KEY").unwrap();
    assert!(VerifyKey::from_spki_der(&[der.as_slice(), &[0]].concat()).is_err());
    assert!(VerifyKey::from_spki_der(&der[..der.len() - 1]).is_err());
    let mut compressed = der.clone();
    compressed[26] = 0x02;
    assert!(VerifyKey::from_spki_der(&compressed).is_err());
    let p521 = hex(
        "30819b301006072a8648ce3d020106052b810400230381860004005c6457ec088d532f482093965ae53ccd07e556ed59e2af945cd8c7a95c1c644f8a56a8a8a3cd77392ddd861e8a924dac99c69069093bd52a52fa6c56004a074508007878d6d42e4b4dd1e9c0696cb3e19f63033c3db4e60d473259b3ebe079aaf0a986ee6177f8217a78c68b813f7e149a4e56fd9562c07fed3d895942d7d101cb83f6",
    );
    assert!(VerifyKey::from_spki_der(&p521).is_err());
    // Roundtrip through pem_encode.
    let pem = portcullis_jose::pem_encode(&der, "PUBLIC KEY");
    assert!(VerifyKey::from_spki_pem(&pem).is_ok());
}

#[test]
fn unverified_is_inspectable() {
    let t = build(json!({"alg": "HS256", "kid": "k"}), &claims(), |m| {
        hmac_sign(Alg::HS256, &[7; 32], m)
    });
    let u: Unverified = decode(&t, MAX).unwrap();
    assert_eq!(u.header.kid.as_deref(), Some("k"));
    assert_eq!(u.claims["sub"], "user-1");
    u.verify(&VerifyKey::hmac(&[7; 32]).unwrap()).unwrap();
}

#[test]
fn oversize_refused_before_parsing() {
    let t = "a".repeat(MAX + 1);
    assert_eq!(decode(&t, MAX).err(), Some(JwtError::TooLarge));
    assert_eq!(JwtError::TooLarge.code(), "too_large");
}
