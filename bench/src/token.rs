//! HS256 JWT signing for the tokens the generator presents to the server.

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

/// Signs `claims` with HS256 and `secret`.
pub fn sign(secret: &str, claims: &Value) -> Result<String> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing JWT")
}

/// Token granting `mode` (`r`, `w`, `rw`) on any channel named in the URL.
pub fn for_mode(secret: &str, mode: &str) -> Result<String> {
    sign(secret, &json!({ "mode": mode }))
}

/// Path of a protocol v2 socket: `/<jwt {"mode":m}>` (no channel claim: every channel is
/// granted, nothing subscribed at open).
pub fn v2_path(secret: &str, mode: &str) -> Result<String> {
    Ok(crate::target::token_path(&for_mode(secret, mode)?))
}

/// URL path for each channel: `/<channel>/<jwt {"mode":m}>`, or with
/// `token_url` the `/<jwt {"mode":m,"channels":[channel]}>` form.
pub fn channel_paths(
    secret: &str,
    mode: &str,
    channels: &[String],
    token_url: bool,
) -> Result<Vec<String>> {
    if token_url {
        channels
            .iter()
            .map(|c| {
                let t = sign(secret, &json!({ "mode": mode, "channels": [c] }))?;
                Ok(crate::target::token_path(&t))
            })
            .collect()
    } else {
        let t = for_mode(secret, mode)?;
        Ok(channels
            .iter()
            .map(|c| crate::target::channel_path(c, &t))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode};

    #[test]
    fn round_trips_with_the_same_secret() {
        let token = for_mode("0123456789abcdef0123456789abcdef", "rw").unwrap();
        assert_eq!(token.split('.').count(), 3);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let data = decode::<Value>(
            &token,
            &DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims, json!({"mode": "rw"}));
    }

    #[test]
    fn paths_in_both_forms() {
        let chans = vec!["a".to_string(), "b".to_string()];
        let p = channel_paths("s", "r", &chans, false).unwrap();
        assert!(p[0].starts_with("/a/ey") && p[1].starts_with("/b/ey"));
        let q = channel_paths("s", "r", &chans, true).unwrap();
        assert!(q[0].starts_with("/ey") && !q[0][1..].contains('/'));
        assert_ne!(q[0], q[1]);
    }
}
