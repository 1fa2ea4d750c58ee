//! JWK Set parsing: what is kept, what is skipped (with a warning), candidate selection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_jose::{Alg, JwkSet, Signer};
use serde_json::{Value, json};

const RSA_PRIVATE: &str = include_str!("keys/rsa.pem");

fn rsa_jwk() -> Value {
    Signer::from_pkcs8_pem(RSA_PRIVATE, "rsa-1".into())
        .unwrap()
        .public_jwk()
}

fn with(mut jwk: Value, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    f(jwk.as_object_mut().unwrap());
    jwk
}

fn parse(keys: Vec<Value>) -> (JwkSet, Vec<String>) {
    JwkSet::from_json(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
}

#[test]
fn good_keys_kept() {
    let ed = Signer::generate(Alg::EdDSA, "ed-1".into())
        .unwrap()
        .public_jwk();
    let ec = Signer::generate(Alg::ES256, "ec-1".into())
        .unwrap()
        .public_jwk();
    // No alg, no use, no kid: still usable.
    let bare_ec = with(ec.clone(), |m| {
        m.remove("alg");
        m.remove("use");
        m.remove("kid");
    });
    let (set, warnings) = parse(vec![rsa_jwk(), ed, ec, bare_ec]);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(set.keys.len(), 4);
    assert_eq!(set.kids(), vec!["rsa-1", "ed-1", "ec-1"]);

    let kids = |kid: Option<&str>, alg| -> Vec<Option<String>> {
        set.candidates(kid, alg).map(|k| k.kid.clone()).collect()
    };
    assert_eq!(kids(Some("rsa-1"), Alg::RS256), vec![Some("rsa-1".into())]);
    assert!(
        kids(Some("rsa-1"), Alg::PS256).is_empty(),
        "JWK alg pins RS256"
    );
    assert!(kids(Some("rsa-1"), Alg::ES256).is_empty());
    assert!(kids(Some("nope"), Alg::RS256).is_empty());
    assert!(kids(Some("RSA-1"), Alg::RS256).is_empty(), "kid is exact");
    assert_eq!(kids(None, Alg::ES256), vec![Some("ec-1".into()), None]);
    assert_eq!(kids(Some("ec-1"), Alg::ES256), vec![Some("ec-1".into())]);
    assert_eq!(kids(None, Alg::EdDSA), vec![Some("ed-1".into())]);
    assert!(kids(None, Alg::HS256).is_empty());
    assert!(kids(None, Alg::ES384).is_empty());

    // Without a JWK alg, an RSA key serves every RS*/PS*.
    let (set, _) = parse(vec![with(rsa_jwk(), |m| {
        m.remove("alg");
    })]);
    for alg in [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
    ] {
        assert_eq!(set.candidates(Some("rsa-1"), alg).count(), 1, "{alg}");
    }
}

#[test]
fn unusable_keys_skipped_with_warnings() {
    let ec = Signer::generate(Alg::ES256, "ec".into())
        .unwrap()
        .public_jwk();
    let small_n = B64.encode([0xffu8; 128]); // 1024 bits
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"kty": "oct", "kid": "hs", "k": B64.encode([1u8; 32]), "alg": "HS256"}),
            "oct",
        ),
        (
            with(rsa_jwk(), |m| {
                m.insert("d".into(), json!("AQAB"));
            }),
            "\"d\"",
        ),
        (
            with(ec.clone(), |m| {
                m.insert("d".into(), json!("AQAB"));
            }),
            "\"d\"",
        ),
        (
            with(rsa_jwk(), |m| {
                m.insert("p".into(), json!("AQAB"));
            }),
            "\"p\"",
        ),
        (
            with(rsa_jwk(), |m| {
                m.insert("use".into(), json!("enc"));
            }),
            "use",
        ),
        (
            with(rsa_jwk(), |m| {
                m.insert("use".into(), json!(1));
            }),
            "use",
        ),
        (
            with(ec.clone(), |m| {
                m.insert("key_ops".into(), json!(["encrypt"]));
            }),
            "key_ops",
        ),
        (
            with(rsa_jwk(), |m| {
                m.insert("n".into(), json!(small_n));
            }),
            "1024 bits",
        ),
        (
            with(rsa_jwk(), |m| {
                m.insert("e".into(), json!("AQ"));
            }),
            "exponent",
        ),
        (
            with(rsa_jwk(), |m| {
                m.remove("n");
            }),
            "\"n\"",
        ),
        (
            with(rsa_jwk(), |m| {
                m.insert("n".into(), json!("a+b/"));
            }),
            "base64url",
        ),
        (
            with(rsa_jwk(), |m| {
                m.insert("alg".into(), json!("ES256"));
            }),
            "does not fit",
        ),
        (
            with(rsa_jwk(), |m| {
                m.insert("alg".into(), json!("RSA-OAEP"));
            }),
            "unsupported alg",
        ),
        (
            with(rsa_jwk(), |m| {
                m.insert("kid".into(), json!(5));
            }),
            "kid",
        ),
        (
            with(ec.clone(), |m| {
                m.insert("crv".into(), json!("P-521"));
            }),
            "curve",
        ),
        (
            with(ec.clone(), |m| {
                m.insert("crv".into(), json!("P-384"));
                m.remove("alg");
            }),
            "length",
        ),
        (
            with(ec.clone(), |m| {
                m.insert("kty".into(), json!("RSA"));
            }),
            "\"n\"",
        ),
        (
            json!({"kty": "OKP", "crv": "X25519", "x": B64.encode([9u8; 32])}),
            "curve",
        ),
        (
            json!({"kty": "OKP", "crv": "Ed448", "x": B64.encode([9u8; 57])}),
            "curve",
        ),
        (
            json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode([9u8; 31])}),
            "32 bytes",
        ),
        (json!({"kty": "DSA", "y": "AQAB"}), "kty"),
        (json!({"n": "AQAB", "e": "AQAB"}), "kty"),
        (json!("not an object"), "object"),
    ];
    for (jwk, why) in &cases {
        let (set, warnings) = parse(vec![jwk.clone(), ec.clone()]);
        assert_eq!(set.keys.len(), 1, "{jwk}");
        assert_eq!(warnings.len(), 1, "{jwk}");
        assert!(warnings[0].contains("key 0"), "{warnings:?}");
        assert!(
            warnings[0].contains(why),
            "{jwk}: {warnings:?} should mention {why}"
        );
    }
    // All at once: one warning per skipped key, the good key survives.
    let mut all: Vec<Value> = cases.into_iter().map(|(j, _)| j).collect();
    let n = all.len();
    all.push(ec);
    let (set, warnings) = parse(all);
    assert_eq!(set.keys.len(), 1);
    assert_eq!(warnings.len(), n);
    assert!(warnings.iter().any(|w| w.contains("kid \"hs\"")));
}

#[test]
fn duplicate_kids_kept_with_warning() {
    let a = Signer::generate(Alg::ES256, "same".into())
        .unwrap()
        .public_jwk();
    let b = Signer::generate(Alg::EdDSA, "same".into())
        .unwrap()
        .public_jwk();
    let (set, warnings) = parse(vec![a, b]);
    assert_eq!(set.keys.len(), 2);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("duplicate kid"));
    assert_eq!(set.candidates(Some("same"), Alg::EdDSA).count(), 1);
}

#[test]
fn whole_set_errors() {
    for bad in [
        &b"not json"[..],
        b"{}",
        br#"{"keys": {}}"#,
        br#"{"keys": null}"#,
        br#"[{"kty":"OKP"}]"#,
        b"",
    ] {
        assert!(
            JwkSet::from_json(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let (set, warnings) = JwkSet::from_json(br#"{"keys": []}"#).unwrap();
    assert!(set.keys.is_empty() && warnings.is_empty());
}
