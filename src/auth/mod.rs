//! Token checks: which keys verify a JWT ([`keys`]) and what a verified token grants ([`grant`]).
//!
//! Everything here runs before the websocket handshake is accepted, so a refused token becomes an
//! HTTP 400 whose body is the original's text (`Token expired`, `Missing mode`,
//! `No allowed channels`, `Error: …`).

pub mod grant;
pub mod keys;

pub use grant::{ClaimPath, Grant, Mode, Rules, parse_path, resolve, verify};
pub use keys::{KeyError, KeySet};

/// Why a token was refused. `Display` is the exact text the original put in its HTTP 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `exp` has passed.
    #[error("Token expired")]
    Expired,
    /// No string `mode` claim.
    #[error("Missing mode")]
    MissingMode,
    /// The URL and the claims leave no channel to open.
    #[error("No allowed channels")]
    NoAllowedChannels,
    /// Any other token failure; the text follows the original's `Error: <jose error>` form.
    #[error("Error: {0}")]
    Invalid(String),
}

impl AuthError {
    /// A signature that does not verify (also: wrong key, HMAC key too short).
    pub(crate) fn bad_signature() -> Self {
        Self::Invalid("JWSError JWSInvalidSignature".into())
    }
}

/// Seconds since the Unix epoch, with a fractional part, from the system clock.
pub fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    (now_seconds() * 1000.0) as u64
}
