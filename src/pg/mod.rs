//! Everything that talks to PostgreSQL: the one LISTEN connection ([`listener`]) and the NOTIFY
//! pool ([`publisher`]).

pub mod listener;
pub mod publisher;

use std::time::Duration;

/// Quotes an identifier for SQL text the way PostgreSQL does: in double quotes, with embedded
/// double quotes doubled. Used only for `LISTEN`, which takes no parameters.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An error with its causes (tokio-postgres keeps the useful part, such as "connection refused"
/// or "database does not exist", in the source chain, not in its own message).
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Connection settings with the timeouts pgws relies on filled in where the user set none.
pub(crate) fn with_defaults(db: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut db = db.clone();
    if db.get_connect_timeout().is_none() {
        db.connect_timeout(Duration::from_secs(10));
    }
    if db.get_application_name().is_none() {
        db.application_name("pgws");
    }
    db.keepalives(true);
    if db.get_keepalives_idle() > Duration::from_secs(30) {
        db.keepalives_idle(Duration::from_secs(30));
    }
    db
}

/// Exponential back-off (1 s, 2 s, 4 s, … capped at 32 s, as the original) with up to 25 %
/// jitter so that many servers do not reconnect in lock-step.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = base.mul_f64(f64::from(nanos % 1000) / 4000.0);
    base + jitter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("chat"), "\"chat\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("x\"; DROP TABLE t; --"),
            "\"x\"\"; DROP TABLE t; --\""
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) >= Duration::from_secs(1) && backoff(1) < Duration::from_secs(2));
        assert!(backoff(3) >= Duration::from_secs(4));
        assert!(backoff(30) >= Duration::from_secs(32) && backoff(30) <= Duration::from_secs(40));
    }
}
