//! PostgreSQL connections shared by every part that talks to the database: the connection
//! settings ([`Database`], with libpq's TLS modes in [`tls`]), the NOTIFY pool ([`publisher`]),
//! and the helpers for errors, timeouts and back-off. The LISTEN connection is a source
//! ([`crate::source::notify`]).

pub mod hosts;
pub mod publisher;
pub mod redact;
pub mod tls;

/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
pub const MAX_NOTIFY_PAYLOAD: usize = 7999;

/// Which PostgreSQL mechanism carries messages (`PGWS_SOURCE`): what the sources read
/// ([`crate::source`]) and what the publisher writes ([`publisher`]) alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// LISTEN/NOTIFY: payloads up to 8000 bytes, positions per process.
    Notify,
    /// Logical decoding of `pg_logical_emit_message`: any size, positions from the WAL.
    Wal,
}

impl SourceKind {
    /// The largest envelope PostgreSQL takes from a client message (`None`: no limit but
    /// `PGWS_MAX_MESSAGE_SIZE` on the text).
    pub fn payload_limit(self) -> Option<usize> {
        match self {
            Self::Notify => Some(MAX_NOTIFY_PAYLOAD),
            Self::Wal => None,
        }
    }
}

use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Connection, Socket};

pub use hosts::{ConnectError, SessionAttrs};

/// Where and how to connect: tokio-postgres's settings plus the TLS connector that applies
/// libpq's `sslmode` checks ([`tls`]).
#[derive(Debug, Clone)]
pub struct Database {
    /// Connection settings, TLS parameters already taken out.
    pub config: tokio_postgres::Config,
    /// Makes the TLS connections.
    pub tls: tls::Connector,
    /// The TLS parameters as written (the replication connection applies them itself).
    pub tls_settings: tls::TlsSettings,
    /// `target_session_attrs` as written (`None`: not given; see [`Database::session_attrs`]).
    pub target_session_attrs: Option<SessionAttrs>,
}

impl Database {
    /// Parses a libpq connection string (URL or key=value), `sslmode`/`sslrootcert` included.
    pub fn parse(uri: &str) -> Result<Self, DatabaseError> {
        let (rest, target_session_attrs) = hosts::split(uri)?;
        let (rest, settings) = tls::split(&rest)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(DatabaseError::Uri)?;
        // libpq ignores sslmode for Unix sockets; tokio-postgres would ask them for TLS.
        let unix_only = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| !matches!(h, Host::Tcp(_)));
        config.ssl_mode(if unix_only {
            tokio_postgres::config::SslMode::Disable
        } else {
            settings.mode.negotiation()
        });
        Ok(Self {
            config,
            tls: tls::Connector::new(&settings)?,
            tls_settings: settings,
            target_session_attrs,
        })
    }

    /// What connections ask of a server: `target_session_attrs` as written, else `read-write`
    /// when several hosts are named (pgws writes and LISTENs, which standbys refuse) and `any`
    /// for one (see [`hosts`]).
    pub fn session_attrs(&self) -> SessionAttrs {
        self.target_session_attrs.unwrap_or_else(|| {
            if hosts::endpoints(&self.config).len() > 1 {
                SessionAttrs::ReadWrite
            } else {
                SessionAttrs::Any
            }
        })
    }

    /// Where connections go, for log lines: each host with its port (`db.example:5432`,
    /// `/var/run/postgresql:5432` for a Unix socket directory), comma-separated as libpq names
    /// several hosts. Never the user or the password.
    pub fn target(&self) -> String {
        hosts::endpoints(&self.config)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Connects once, to the first server that fits [`Database::session_attrs`].
    pub async fn connect(
        &self,
    ) -> Result<(Client, Connection<Socket, tls::PgTlsStream>), ConnectError> {
        let (client, connection, _) = hosts::connect(self, self.session_attrs()).await?;
        Ok((client, connection))
    }
}

/// A connection string pgws cannot use. The texts never contain the connection string; use
/// [`DatabaseError::detail`] for the whole story.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// tokio-postgres refused it.
    #[error("{0}")]
    Uri(tokio_postgres::Error),
    /// Its TLS settings are unusable.
    #[error("{0}")]
    Tls(#[from] tls::TlsConfigError),
    /// Its `target_session_attrs` is not one of libpq's.
    #[error("{0}")]
    Attrs(#[from] hosts::AttrsError),
}

impl DatabaseError {
    /// The message with its causes (tokio-postgres says only "invalid connection string" and
    /// keeps which option is wrong in its source).
    pub fn detail(&self) -> String {
        match self {
            Self::Uri(e) => describe(e),
            Self::Tls(e) => e.to_string(),
            Self::Attrs(e) => e.to_string(),
        }
    }
}

/// An error with its causes (tokio-postgres keeps the useful part, such as "connection refused"
/// or "database does not exist", in the source chain, not in its own message).
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(db) = e
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::as_db_error)
    {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Connection settings with the timeouts pgws relies on filled in where the user set none.
pub(crate) fn with_defaults(database: &Database) -> Database {
    let mut database = database.clone();
    let db = &mut database.config;
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
    database
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
mod target_tests {
    use super::Database;

    #[test]
    fn targets_name_hosts_and_ports_never_credentials() {
        let t = |uri: &str| Database::parse(uri).unwrap().target();
        assert_eq!(
            t("postgres://u:secret@db.example:6543/app"),
            "db.example:6543"
        );
        assert_eq!(t("postgres://u@a,b:5433/app"), "a:5432,b:5433");
        assert_eq!(t("host=/tmp port=5544 dbname=x"), "/tmp:5544");
        assert!(!t("postgres://u:secret@h/app").contains("secret"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) >= Duration::from_secs(1) && backoff(1) < Duration::from_secs(2));
        assert!(backoff(3) >= Duration::from_secs(4));
        assert!(backoff(30) >= Duration::from_secs(32) && backoff(30) <= Duration::from_secs(40));
    }
}
