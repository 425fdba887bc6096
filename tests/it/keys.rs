//! Key forms and algorithms (spec §3.1; §10 rows 10–12) against a running server.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

use crate::common::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
}

fn signed(alg: Algorithm, kid: Option<&str>, key: EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, &json!({"mode":"r"}), &key).expect("sign")
}

#[tokio::test]
async fn jwks_file_verifies_every_asymmetric_algorithm() {
    let jwks = format!("@{FIXTURES}/jwks.json");
    let s = start(&["--jwt-secret", &jwks]).await;
    let rsa = fixture("rsa.pem");
    let cases = [
        signed(
            Algorithm::RS256,
            Some("rsa1"),
            EncodingKey::from_rsa_pem(&rsa).unwrap(),
        ),
        signed(
            Algorithm::RS512,
            None,
            EncodingKey::from_rsa_pem(&rsa).unwrap(),
        ),
        signed(
            Algorithm::PS256,
            Some("rsa1"),
            EncodingKey::from_rsa_pem(&rsa).unwrap(),
        ),
        signed(
            Algorithm::ES256,
            Some("ec256"),
            EncodingKey::from_ec_pem(&fixture("ec256.pem")).unwrap(),
        ),
        signed(
            Algorithm::ES384,
            None,
            EncodingKey::from_ec_pem(&fixture("ec384.pem")).unwrap(),
        ),
        signed(
            Algorithm::EdDSA,
            Some("ed1"),
            EncodingKey::from_ed_pem(&fixture("ed25519.pem")).unwrap(),
        ),
    ];
    for t in &cases {
        let _ws = connect(&s.url(&format!("/chan/{t}"))).await;
    }
    // Algorithm confusion: an HS256 token whose "secret" is the public RSA modulus is refused.
    let jwk: serde_json::Value = serde_json::from_slice(&fixture("rsa.jwk.json")).unwrap();
    let n = jwk["n"].as_str().unwrap();
    let confused = signed(
        Algorithm::HS256,
        Some("rsa1"),
        EncodingKey::from_secret(n.as_bytes()),
    );
    let (status, body) = refused(&s.url(&format!("/chan/{confused}"))).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("Error: "), "{body}");
    // A token signed by a key that is not in the set.
    let other = signed(
        Algorithm::HS256,
        None,
        EncodingKey::from_secret(SECRET.as_bytes()),
    );
    assert_eq!(refused(&s.url(&format!("/chan/{other}"))).await.0, 400);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn jwk_and_base64_secrets() {
    let jwk = r#"{"kty":"oct","k":"cmVhbGx5cmVhbGx5cmVhbGx5cmVhbGx5dmVyeXNhZmU","alg":"HS256"}"#;
    let s = start(&["--jwt-secret", jwk]).await;
    let _ws = connect(&s.url(&format!(
        "/test/{}",
        token(json!({"mode":"r","channel":"test"}))
    )))
    .await;
    s.stop().await.unwrap();

    let s = start(&[
        "--jwt-secret",
        "cmVhbGx5cmVhbGx5cmVhbGx5cmVhbGx5dmVyeXNhZmU",
        "--jwt-secret-base64",
        "true",
    ])
    .await;
    let _ws = connect(&s.url(&format!("/test/{}", token(json!({"mode":"r"}))))).await;
    s.stop().await.unwrap();

    // §10 row 12's wrong key is 30 bytes: too short for HS256, so pgws refuses to start with it
    // (the original started and refused every token).
    let wrong =
        r#"{"keys":[{"kty":"oct","k":"d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3Jvbmdr","alg":"HS256"}]}"#;
    let db = fresh_db().await;
    let cli =
        <pgws::Cli as clap::Parser>::try_parse_from(args(&db, &["--jwt-secret", wrong])).unwrap();
    let err = cli.resolve(None, None).unwrap_err().to_string();
    assert!(err.contains("30 bytes"), "{err}");
    // A long enough wrong key starts, and refuses the token.
    let wrong = r#"{"keys":[{"kty":"oct","k":"d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3Jvbmdrd3Jvbmc","alg":"HS256"}]}"#;
    let s = start(&["--jwt-secret", wrong]).await;
    let (status, body) = refused(&s.url(&format!("/test/{}", token(json!({"mode":"r"}))))).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("Error: "), "{body}");
    s.stop().await.unwrap();
}
