//! Arbitrary bytes as `PGWS_JWT_SECRET`: `KeySet::from_secret`, then `verify` of fixed tokens.
//!
//! Invariants: nothing panics; raw (non-JWK) secrets are always usable HMAC keys; a raw secret
//! verifies an HS256/384/512 token signed with itself exactly when it is at least 32/48/64 bytes
//! long, the fixed HS256 token exactly when it is the fixed secret, and never an RSA/EC/EdDSA token
//! (no algorithm confusion); a JWK or JWK Set never verifies an HMAC token signed with the secret's
//! own text (the classic confusion: a PEM public key used as an HS256 secret); whatever verifies
//! yields the signed claims; `Debug` never prints key material; after `restrict` (what
//! `PGWS_JWT_ALGORITHMS` does) only allowed algorithms verify, and nothing the full set refused.
#![no_main]

#[path = "common.rs"]
mod common;

use common::SECRET;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use pgws::auth::KeySet;
use serde_json::{Map, Value, json};
use std::sync::LazyLock;

/// `{"mode":"rw","channels":["chat"],"sub":"fuzz"}` signed by the public keys in
/// `fuzz/keys/keys.json` (also as PEM in `fuzz/keys/`) (their `kid`s: rsa, ps, ec256, ec384, ed). Seeds in the corpus carry those JWKs.
const ASYMMETRIC: &[(&str, &str)] = &[
    (
        "rsa",
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsImtpZCI6InJzYSJ9.eyJjaGFubmVscyI6WyJjaGF0Il0sIm1vZGUiOiJydyIsInN1YiI6ImZ1enoifQ.mrlf2M5GmZDz3IgGHuA38SEJhPk8_tWhmg7TQRCT-iKhnSPV1St8F4c_Q_eDfY3o2ovUkcsG-d3HBOjLDSCt_qrDTYlx9T7CQmdEJSVyOm1LSFnDUjzz-EipzB-oHeoinW2iQ_EpOYWHzGjYzhP-aPzngDf26C4GCl82Mp2kWA5xC1IrwDo6ox8O_xFMM_-Em8XDCpKE8FB5F3y_q0ACoGQ-EiJ24l7Qxh19I63U1JqZM6lBhWFgrJ5mK5iJoITiO582s02VdIhwuQhnOLSwhCiJRgkbrfzc4rYSnr75K4A9HDebWy6LOo7fmgbgjt-V36f-NuHcGINaVBgNGOGeew",
    ),
    (
        "ps",
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJQUzI1NiIsImtpZCI6InBzIn0.eyJjaGFubmVscyI6WyJjaGF0Il0sIm1vZGUiOiJydyIsInN1YiI6ImZ1enoifQ.QdjH7l9qf_m9RPAw-WUVgzFnaCmRseQCZt1qbCyqbwE4r8BA9Qbg-7ll0nPb-n4tvRG0VMvSE422iER4GtyaJwkPb3iR9wU0hVSQN4lg0FyZItMq05g5NftIEh7k1jO8AccEjBMJJiQz_NYei-p1d2GSd1pdKMgZZmHBXEA53KueNVdPKIRVMucijszgSifauqfoGzkLD5uHxjISUdYVkC5SPPYoG4LCBl7h7gaTMhjLLL6E0QtMLWEL9ISd9z9zCYrmTjKwSt1WvbmGBrhpMgMlq9Hkx7aSff6C_eoT3PFE9TM3Lj01kcJe4yzEdzqcnJC7SOrsF7rtfzhafSnsMw",
    ),
    (
        "ec256",
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiIsImtpZCI6ImVjMjU2In0.eyJjaGFubmVscyI6WyJjaGF0Il0sIm1vZGUiOiJydyIsInN1YiI6ImZ1enoifQ.K_mVJscUMEO0xiHoEveuN8JMDDvhrPgtMmKlY-Kd_eoaWHkfFaKhjynU70ntDxYb0buucHWoyXo53YWlXrxwpw",
    ),
    (
        "ec384",
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzM4NCIsImtpZCI6ImVjMzg0In0.eyJjaGFubmVscyI6WyJjaGF0Il0sIm1vZGUiOiJydyIsInN1YiI6ImZ1enoifQ.q0zq2_ElLgwgKB3FhPwQ_9ilv4V0nFhLeMk_FZZyUPRAZZfzzRX7WktYNPaygJDJgPhJH8SkneV1nnOg5HZX2euf2nTs-fNXguuJt5WvzQyhomxv5u1wHwnQVzKW8qNA",
    ),
    (
        "ed",
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJFZERTQSIsImtpZCI6ImVkIn0.eyJjaGFubmVscyI6WyJjaGF0Il0sIm1vZGUiOiJydyIsInN1YiI6ImZ1enoifQ.n1pdYRGJguplOEhgNSDcMjupELhOP5IPesJHBK3FXTsoI4BcH_Pe4Vk8C3zupQC_oqcdNArbbjiM13XpnE4cCw",
    ),
];

fn claims() -> Value {
    json!({"mode":"rw","channels":["chat"],"sub":"fuzz"})
}

fn hs(alg: Algorithm, key: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims(), &EncodingKey::from_secret(key)).unwrap()
}

/// The fixed HS256 token, signed with [`SECRET`].
static FIXED: LazyLock<String> = LazyLock::new(|| hs(Algorithm::HS256, SECRET));

/// Would `from_secret` read these bytes as a JWK Set, a JWK or PEM public keys (rather than raw
/// HMAC bytes)? The README's order: JWK Set, JWK, PEM, raw bytes.
fn looks_like_key(secret: &[u8]) -> bool {
    match serde_json::from_slice::<Map<String, Value>>(secret) {
        Ok(obj) if obj.get("keys").is_some_and(Value::is_array) || obj.contains_key("kty") => true,
        _ => secret.trim_ascii_start().starts_with(b"-----BEGIN"),
    }
}

/// `PGWS_JWT_ALGORITHMS` settings tried on every key set.
const RESTRICTIONS: &[&[Algorithm]] = &[
    &[Algorithm::HS256],
    &[
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ],
    &[Algorithm::ES384, Algorithm::HS512],
];

fn alg_of(token: &str) -> Algorithm {
    jsonwebtoken::decode_header(token).unwrap().alg
}

fuzz_target!(|secret: &[u8]| {
    let keys = KeySet::from_secret(secret);
    let jwk = looks_like_key(secret);
    let keys = match keys {
        Ok(k) => k,
        Err(e) => {
            assert!(jwk, "raw secret refused: {e}");
            return;
        }
    };
    let _ = keys.short_hmac_key();
    // Debug shows the number of keys and nothing else. (Not "the secret is not a substring": the
    // fuzzer promptly found the secret `KeySet { keys: 1 }`.)
    let debug = format!("{keys:?}");
    assert!(
        debug
            .strip_prefix("KeySet { keys: ")
            .and_then(|r| r.strip_suffix(" }"))
            .is_some_and(|n| n.parse::<usize>().is_ok()),
        "Debug shows more than the key count: {debug}"
    );

    let fixed = keys.verify(&FIXED);
    if let Ok(c) = &fixed {
        assert_eq!(Value::Object(c.clone()), claims());
    }
    if !jwk {
        assert_eq!(
            fixed.is_ok(),
            secret == SECRET,
            "fixed HS256 token: {fixed:?}"
        );
        assert_eq!(
            keys.short_hmac_key(),
            (secret.len() < 32).then_some(secret.len())
        );
    }
    let mut tokens: Vec<String> = vec![FIXED.clone()];
    for (name, token) in ASYMMETRIC {
        let r = keys.verify(token);
        if let Ok(c) = &r {
            assert!(
                jwk,
                "raw HMAC secret verified the {name} token (algorithm confusion)"
            );
            assert_eq!(Value::Object(c.clone()), claims());
        }
        tokens.push(token.to_string());
    }
    if !secret.is_empty() {
        for (alg, min) in [
            (Algorithm::HS256, 32),
            (Algorithm::HS384, 48),
            (Algorithm::HS512, 64),
        ] {
            let token = hs(alg, secret);
            tokens.push(token.clone());
            let r = keys.verify(&token);
            if jwk {
                assert!(
                    r.is_err(),
                    "a JWK secret verified an {alg:?} token keyed by its own text"
                );
            } else {
                assert_eq!(
                    r.is_ok(),
                    secret.len() >= min,
                    "{alg:?}, {}-byte key: {r:?}",
                    secret.len()
                );
            }
        }
    }

    for allowed in RESTRICTIONS {
        match keys.clone().restrict(allowed) {
            Ok(restricted) => {
                for token in &tokens {
                    if restricted.verify(token).is_ok() {
                        assert!(
                            allowed.contains(&alg_of(token)),
                            "{:?} verified after restrict",
                            alg_of(token)
                        );
                        assert!(
                            keys.verify(token).is_ok(),
                            "restrict made a refused token verify"
                        );
                    }
                }
            }
            Err(_) => {
                for token in &tokens {
                    assert!(
                        keys.verify(token).is_err() || !allowed.contains(&alg_of(token)),
                        "restrict refused a key set that verifies an allowed {:?} token",
                        alg_of(token)
                    );
                }
            }
        }
    }
});
