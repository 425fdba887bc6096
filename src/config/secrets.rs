//! Secrets: `@file` indirection, base64 decoding, and the key set built from them (also used to
//! re-read a JWKS file on SIGHUP). Nothing here logs or prints a secret.

use crate::auth::{KeyError, KeySet};

use super::{Cli, ConfigError, list};

impl Cli {
    /// Reads the secret (`@file`, base64), builds the keys and applies `PGWS_JWT_ALGORITHMS`.
    /// Also used to re-read a JWKS file on SIGHUP.
    pub fn load_keys(&self, secret: &str) -> Result<KeySet, ConfigError> {
        let secret_bytes = load_secret(secret, self.jwt_secret_base64)?;
        let mut keys = KeySet::from_secret(&secret_bytes)?;
        if let Some(algs) = list(self.jwt_algorithms.as_deref()) {
            let parsed = algs
                .iter()
                .map(|a| {
                    a.parse::<jsonwebtoken::Algorithm>()
                        .map_err(|_| ConfigError::Value {
                            var: "PGWS_JWT_ALGORITHMS",
                            value: a.clone(),
                            reason: "is not a supported algorithm (HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA)".into(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            keys = keys.restrict(&parsed)?;
        }
        if let Some(len) = keys.short_hmac_key() {
            return Err(KeyError::ShortSecret(len).into());
        }
        Ok(keys)
    }
}

/// Reads `@file` secrets (one trailing newline removed, as the original) and decodes base64.
pub(super) fn load_secret(secret: &str, is_base64: bool) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = match secret.strip_prefix('@') {
        Some(path) => std::fs::read(path).map_err(|error| ConfigError::File {
            var: "PGWS_JWT_SECRET",
            path: path.to_string(),
            error,
        })?,
        None => secret.as_bytes().to_vec(),
    };
    if secret.starts_with('@') && bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    if !is_base64 {
        return Ok(bytes);
    }
    use base64::Engine as _;
    let text: String = String::from_utf8_lossy(&bytes)
        .trim()
        .chars()
        .map(|c| match c {
            '_' => '/',
            '-' => '+',
            '.' => '=',
            c => c,
        })
        .collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(text).map_err(ConfigError::Base64)
}
