//! Verification keys from `PGWS_JWT_SECRET`: a JWK Set, a single JWK, or raw HMAC bytes (first
//! match wins, as in the original), and the signature check against them.
//!
//! Each key only accepts the algorithms of its own family (HMAC keys HS*, RSA keys RS*/PS*, EC keys
//! the ES* of their curve, Ed25519 keys EdDSA), so `none` and algorithm confusion (an RS256 public key
//! used as an HS256 secret) are refused. With a JWK Set the key whose `kid` matches the token's is
//! used; a token without `kid`, or with a `kid` no key has, is tried against every key (the
//! original ignored `kid` and tried them all).

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::AuthError;

/// Why the configured secret is not usable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The secret looks like a JWK or JWK Set but could not be read as one.
    #[error("not a usable JWK: {0}")]
    BadJwk(String),
    /// A JWK Set without any key pgws can use.
    #[error("the JWK Set has no usable key")]
    EmptySet,
    /// PEM text that holds no public key pgws can use.
    #[error("not a usable PEM public key: {0}")]
    BadPem(String),
    /// `PGWS_JWT_ALGORITHMS` leaves no key anything to verify.
    #[error("no key can verify any of the algorithms allowed by PGWS_JWT_ALGORITHMS")]
    NoAllowedAlgorithm,
    /// An HMAC secret shorter than its algorithms need: every token would fail.
    #[error(
        "the HMAC secret is {0} bytes; HS256 needs at least 32 (HS384 48, HS512 64), so no token could be verified"
    )]
    ShortSecret(usize),
}

/// One verification key and the algorithms it may verify.
struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
    /// For HMAC keys: the key length, which decides which HS* algorithms are safe.
    hmac_len: Option<usize>,
}

impl Key {
    fn clone_key(&self) -> Self {
        Self {
            kid: self.kid.clone(),
            key: self.key.clone(),
            algorithms: self.algorithms.clone(),
            hmac_len: self.hmac_len,
        }
    }
}

/// Public keys from PEM text (one or more `-----BEGIN …-----` blocks): RSA keys verify RS*/PS*,
/// EC keys ES256/ES384, Ed25519 keys EdDSA.
fn pem_keys(text: &[u8]) -> Result<Vec<Key>, KeyError> {
    let text = String::from_utf8_lossy(text);
    let mut blocks = Vec::new();
    let mut rest: &str = &text;
    while let Some(start) = rest.find("-----BEGIN") {
        let from = &rest[start..];
        let Some(end) = from.find("-----END") else {
            break;
        };
        let Some(close) = from[end + 8..].find("-----") else {
            break;
        };
        let len = end + 8 + close + 5;
        blocks.push(&from[..len]);
        rest = &from[len..];
    }
    let mut keys = Vec::new();
    for pem in blocks {
        let bytes = pem.as_bytes();
        let key = if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
            (
                k,
                vec![
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ],
            )
        } else if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
            (k, vec![Algorithm::ES256, Algorithm::ES384])
        } else if let Ok(k) = DecodingKey::from_ed_pem(bytes) {
            (k, vec![Algorithm::EdDSA])
        } else {
            return Err(KeyError::BadPem(
                "expected an RSA, EC (P-256/P-384) or Ed25519 public key".into(),
            ));
        };
        keys.push(Key {
            kid: None,
            key: key.0,
            algorithms: key.1,
            hmac_len: None,
        });
    }
    if keys.is_empty() {
        return Err(KeyError::BadPem("no -----END line".into()));
    }
    Ok(keys)
}

/// The keys that verify tokens. Cheap to clone.
#[derive(Clone)]
pub struct KeySet {
    keys: Arc<Vec<Key>>,
}

impl fmt::Debug for KeySet {
    /// Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.len())
            .finish()
    }
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// Shortest key each HMAC algorithm accepts: the hash output size (RFC 7518 §3.2), as the original.
fn hmac_min_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

impl KeySet {
    /// Interprets the secret bytes the way the original did.
    pub fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        let json: Option<Map<String, Value>> = serde_json::from_slice(secret).ok();
        let keys = match json {
            Some(obj) if obj.get("keys").is_some_and(Value::is_array) => {
                let mut keys = Vec::new();
                for (i, v) in obj["keys"].as_array().into_iter().flatten().enumerate() {
                    match jwk_key(v) {
                        Ok(k) => keys.push(k),
                        Err(e) => {
                            tracing::warn!(index = i, error = %e, "skipping a JWK Set key pgws cannot use")
                        }
                    }
                }
                if keys.is_empty() {
                    return Err(KeyError::EmptySet);
                }
                keys
            }
            Some(obj) if obj.contains_key("kty") => vec![jwk_key(&Value::Object(obj))?],
            _ if secret.trim_ascii_start().starts_with(b"-----BEGIN") => pem_keys(secret)?,
            _ => vec![hmac_key(secret.to_vec(), None)],
        };
        Ok(Self {
            keys: Arc::new(keys),
        })
    }

    /// Keeps only the algorithms in `allowed` (`PGWS_JWT_ALGORITHMS`). Fails when no key is left
    /// with an allowed algorithm.
    pub fn restrict(self, allowed: &[Algorithm]) -> Result<Self, KeyError> {
        let keys: Vec<Key> = Arc::try_unwrap(self.keys)
            .unwrap_or_else(|arc| arc.iter().map(Key::clone_key).collect())
            .into_iter()
            .map(|mut k| {
                k.algorithms.retain(|a| allowed.contains(a));
                k
            })
            .filter(|k| !k.algorithms.is_empty())
            .collect();
        if keys.is_empty() {
            return Err(KeyError::NoAllowedAlgorithm);
        }
        Ok(Self {
            keys: Arc::new(keys),
        })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no key (never true for a set built by `from_secret`).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// HMAC keys shorter than 32 bytes verify nothing (as in the original); worth a warning.
    pub fn short_hmac_key(&self) -> Option<usize> {
        self.keys
            .iter()
            .filter_map(|k| k.hmac_len)
            .find(|len| *len < 32)
    }

    /// Verifies the signature and returns the claims. Time claims are checked by the caller.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err(AuthError::Invalid(format!(
                "JWSError (CompactDecodeError Invalid number of parts: Expected 3 parts; got {})",
                parts.len()
            )));
        }
        let header_bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[0].trim_end_matches('='))
            .map_err(|e| AuthError::Invalid(format!("JWSError (CompactDecodeError {e})")))?;
        let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
            .map_err(|e| AuthError::Invalid(format!("JWSError (JSONDecodeError {e:?})")))?;
        match header.get("alg").and_then(Value::as_str) {
            Some("none") | None => {
                return Err(AuthError::Invalid("JWSError JWSNoSignatures".into()));
            }
            Some(_) => {}
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("JWSError (AlgorithmNotImplemented {e})")))?;
        let alg = header.alg;
        let by_kid: Vec<&Key> = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .collect(),
            None => Vec::new(),
        };
        let pool: Vec<&Key> = if by_kid.is_empty() {
            self.keys.iter().collect()
        } else {
            by_kid
        };
        let family: Vec<&Key> = pool
            .into_iter()
            .filter(|k| k.algorithms.contains(&alg))
            .collect();
        if family.is_empty() {
            return Err(AuthError::Invalid(format!(
                "JWSError (AlgorithmMismatch \"{alg:?} is not allowed for the configured key\")"
            )));
        }
        let mut last = AuthError::bad_signature();
        for key in family {
            if key.hmac_len.is_some_and(|len| len < hmac_min_len(alg)) {
                continue;
            }
            let mut validation = Validation::new(alg);
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            validation.leeway = 0;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = map_error(&e),
            }
        }
        Err(last)
    }
}

fn map_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) => {
            AuthError::bad_signature()
        }
        K::Json(j) => AuthError::Invalid(format!("JWTClaimsSetDecodeError \"{j}\"")),
        K::Base64(b) => AuthError::Invalid(format!("JWSError (CompactDecodeError {b})")),
        K::Utf8(u) => AuthError::Invalid(format!("JWTClaimsSetDecodeError \"{u}\"")),
        other => AuthError::Invalid(format!("JWSError ({other:?})")),
    }
}

fn hmac_key(bytes: Vec<u8>, kid: Option<String>) -> Key {
    let len = bytes.len();
    Key {
        kid,
        key: DecodingKey::from_secret(&bytes),
        algorithms: HMAC.to_vec(),
        hmac_len: Some(len),
    }
}

fn jwk_key(value: &Value) -> Result<Key, KeyError> {
    let jwk: Jwk =
        serde_json::from_value(value.clone()).map_err(|e| KeyError::BadJwk(e.to_string()))?;
    let kid = jwk.common.key_id.clone();
    let algorithms = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(p) => {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.value.trim_end_matches('='))
                .map_err(|e| KeyError::BadJwk(format!("oct key `k`: {e}")))?;
            return Ok(hmac_key(bytes, kid));
        }
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err(KeyError::BadJwk(format!("unsupported curve {:?}", p.curve))),
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        _ => return Err(KeyError::BadJwk("unsupported key type".into())),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| KeyError::BadJwk(e.to_string()))?;
    Ok(Key {
        kid,
        key,
        algorithms,
        hmac_len: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"reallyreallyreallyreallyverysafe";

    fn hs(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
        encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[test]
    fn raw_secret_accepts_hs256_hs384_not_short_keys() {
        let keys = KeySet::from_secret(SECRET).unwrap();
        let t = hs(Algorithm::HS256, SECRET, &json!({"mode":"r"}));
        assert_eq!(keys.verify(&t).unwrap()["mode"], "r");
        // HS384 needs 48 bytes: the 32-byte secret is refused as the original did.
        let t = hs(Algorithm::HS384, SECRET, &json!({"mode":"r"}));
        assert_eq!(keys.verify(&t), Err(AuthError::bad_signature()));
        let long = [7u8; 64];
        let keys64 = KeySet::from_secret(&long).unwrap();
        let t = hs(Algorithm::HS512, &long, &json!({"mode":"r"}));
        assert!(keys64.verify(&t).is_ok());
    }

    #[test]
    fn wrong_signature_and_none_are_refused() {
        let keys = KeySet::from_secret(SECRET).unwrap();
        let t = hs(
            Algorithm::HS256,
            b"wrongwrongwrongwrongwrongwrong!!",
            &json!({"mode":"r"}),
        );
        assert_eq!(keys.verify(&t), Err(AuthError::bad_signature()));
        // alg: none, empty signature
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJtb2RlIjoiciJ9.";
        assert_eq!(
            keys.verify(none).unwrap_err().to_string(),
            "Error: JWSError JWSNoSignatures"
        );
        assert!(
            keys.verify("abc")
                .unwrap_err()
                .to_string()
                .starts_with("Error: ")
        );
    }

    #[test]
    fn jwk_and_jwks_secrets() {
        let jwk =
            r#"{"kty":"oct","k":"cmVhbGx5cmVhbGx5cmVhbGx5cmVhbGx5dmVyeXNhZmU","alg":"HS256"}"#;
        let t = hs(
            Algorithm::HS256,
            SECRET,
            &json!({"mode":"r","channel":"test"}),
        );
        assert!(
            KeySet::from_secret(jwk.as_bytes())
                .unwrap()
                .verify(&t)
                .is_ok()
        );
        let jwks = format!(r#"{{"keys":[{jwk}]}}"#);
        assert!(
            KeySet::from_secret(jwks.as_bytes())
                .unwrap()
                .verify(&t)
                .is_ok()
        );
        let wrong = r#"{"keys":[{"kty":"oct","k":"d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3Jvbmdr","alg":"HS256"}]}"#;
        assert!(
            KeySet::from_secret(wrong.as_bytes())
                .unwrap()
                .verify(&t)
                .is_err()
        );
    }

    #[test]
    fn kid_picks_the_key() {
        let a = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 32]);
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([2u8; 32]);
        let jwks = format!(
            r#"{{"keys":[{{"kty":"oct","kid":"a","k":"{a}"}},{{"kty":"oct","kid":"b","k":"{b}"}}]}}"#
        );
        let keys = KeySet::from_secret(jwks.as_bytes()).unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("b".into());
        let t = encode(
            &h,
            &json!({"mode":"r"}),
            &EncodingKey::from_secret(&[2u8; 32]),
        )
        .unwrap();
        assert!(keys.verify(&t).is_ok());
        // Signed with key b but labelled a: the kid selects a, which fails.
        h.kid = Some("a".into());
        let t = encode(
            &h,
            &json!({"mode":"r"}),
            &EncodingKey::from_secret(&[2u8; 32]),
        )
        .unwrap();
        assert!(keys.verify(&t).is_err());
        // Unknown kid: every key is tried (the original ignored kid).
        h.kid = Some("zzz".into());
        let t = encode(
            &h,
            &json!({"mode":"r"}),
            &EncodingKey::from_secret(&[2u8; 32]),
        )
        .unwrap();
        assert!(keys.verify(&t).is_ok());
    }

    #[test]
    fn empty_set_is_an_error() {
        assert!(matches!(
            KeySet::from_secret(br#"{"keys":[]}"#),
            Err(KeyError::EmptySet)
        ));
    }
}
