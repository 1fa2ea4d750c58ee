//! Wycheproof signature vectors run through the same primitives `VerifyKey` uses.
//!
//! The corpus lives outside the repository (`/work/shared/corpora/wycheproof`); when it is
//! missing the tests print a note and pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use portcullis_jose::{Alg, VerifyKey};
use serde_json::Value;

fn corpus(name: &str) -> Option<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpora/wycheproof")
        .join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).unwrap()),
        Err(_) => {
            println!("skipping: Wycheproof file {} not found", path.display());
            None
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("missing {key} in {v}"))
}

/// Runs every group of a verification file; returns (valid, invalid, acceptable) counts.
fn run(file: &str, alg: Alg, sha: &str) -> Option<(usize, usize, usize)> {
    let doc = corpus(file)?;
    let (mut valid, mut invalid, mut acceptable) = (0, 0, 0);
    for group in doc["testGroups"].as_array().unwrap() {
        if let Some(s) = group.get("sha").and_then(Value::as_str) {
            assert_eq!(s, sha, "{file}: unexpected hash in group");
        }
        if let Some(m) = group.get("mgfSha").and_then(Value::as_str) {
            assert_eq!(m, sha, "{file}: unexpected MGF hash");
        }
        let der = hex(str_of(group, "publicKeyDer"));
        let key =
            VerifyKey::from_spki_der(&der).unwrap_or_else(|e| panic!("{file}: key refused: {e}"));
        // The same key must load from the PEM form too.
        if let Some(pem) = group.get("publicKeyPem").and_then(Value::as_str) {
            VerifyKey::from_spki_pem(pem).unwrap();
        }
        assert!(key.supports(alg));
        for t in group["tests"].as_array().unwrap() {
            let id = &t["tcId"];
            let msg = hex(str_of(t, "msg"));
            let sig = hex(str_of(t, "sig"));
            let ok = key.verify_raw(alg, &msg, &sig).is_ok();
            match str_of(t, "result") {
                "valid" => {
                    valid += 1;
                    assert!(ok, "{file} tc {id} valid but refused: {}", t["comment"]);
                }
                "invalid" => {
                    invalid += 1;
                    assert!(!ok, "{file} tc {id} invalid but accepted: {}", t["comment"]);
                }
                "acceptable" => acceptable += 1,
                other => panic!("{file} tc {id}: unknown result {other}"),
            }
        }
    }
    println!("{file}: {valid} valid, {invalid} invalid, {acceptable} acceptable");
    assert!(valid > 0 && invalid > 0);
    Some((valid, invalid, acceptable))
}

#[test]
fn ecdsa_p256_p1363() {
    run(
        "ecdsa_secp256r1_sha256_p1363_test.json",
        Alg::ES256,
        "SHA-256",
    );
}

#[test]
fn ecdsa_p384_p1363() {
    run(
        "ecdsa_secp384r1_sha384_p1363_test.json",
        Alg::ES384,
        "SHA-384",
    );
}

#[test]
fn ed25519() {
    run("ed25519_test.json", Alg::EdDSA, "");
}

#[test]
fn rsa_pkcs1_2048_sha256() {
    run("rsa_signature_2048_sha256_test.json", Alg::RS256, "SHA-256");
}

#[test]
fn rsa_pss_2048_sha256_mgf1_32() {
    run(
        "rsa_pss_2048_sha256_mgf1_32_test.json",
        Alg::PS256,
        "SHA-256",
    );
}

/// P-521 is not supported: its SPKI must be refused rather than misread.
#[test]
fn ecdsa_p521_keys_refused() {
    let Some(doc) = corpus("ecdsa_secp521r1_sha512_p1363_test.json") else {
        return;
    };
    for group in doc["testGroups"].as_array().unwrap() {
        let der = hex(str_of(group, "publicKeyDer"));
        assert!(VerifyKey::from_spki_der(&der).is_err());
    }
}
