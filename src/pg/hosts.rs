//! Several hosts and `target_session_attrs`, as libpq has them, for every connection pgws opens.
//!
//! A connection string may name several servers (`host=a,b port=5432,5433`,
//! `postgres://a:5432,b:5433/db`): a primary and its standbys. libpq tries them in order and
//! keeps the first whose session fits `target_session_attrs`; after a failover, an application
//! reconnecting that way finds the new primary by itself. tokio-postgres knows only `any`,
//! `read-write` and `read-only`, and gives no account of the hosts it skipped, so pgws takes
//! `target_session_attrs` out of the string ([`split`]) and walks the hosts itself ([`connect`]):
//!
//! | `target_session_attrs` | the server must be | checked with |
//! |---|---|---|
//! | `any` | reachable | — |
//! | `read-write` | writable | `transaction_read_only` is `off` |
//! | `read-only` | read-only | `transaction_read_only` is `on` |
//! | `primary` | not in recovery | `pg_is_in_recovery()` |
//! | `standby` | in recovery | `pg_is_in_recovery()` |
//! | `prefer-standby` | a standby if any fits, else any | both passes |
//!
//! Without the parameter libpq means `any`; pgws means `read-write` when several hosts are named
//! (everything pgws does on its main connections writes or LISTENs, which a standby refuses, so
//! `any` would only move the error from the connection to the first statement), and `any` for
//! one host (no check: no extra round trip).
//!
//! When no host fits, the error names every host tried and why (refused, timed out, a standby,
//! …): that is what the reconnection loops log.

use std::fmt;
use std::net::IpAddr;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, Connection, SimpleQueryMessage, Socket};

use super::{Database, describe, tls};

/// How long the primary/standby check may take when the connection string sets no
/// `connect_timeout`.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// libpq's `target_session_attrs` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// Any server that accepts the connection.
    Any,
    /// A server that accepts writes.
    ReadWrite,
    /// A server that refuses writes.
    ReadOnly,
    /// A server not in recovery.
    Primary,
    /// A server in recovery.
    Standby,
    /// A standby if one fits, else any server.
    PreferStandby,
}

impl SessionAttrs {
    /// Parses libpq's spelling.
    pub fn parse(value: &str) -> Result<Self, AttrsError> {
        Ok(match value {
            "any" => Self::Any,
            "read-write" => Self::ReadWrite,
            "read-only" => Self::ReadOnly,
            "primary" => Self::Primary,
            "standby" => Self::Standby,
            "prefer-standby" => Self::PreferStandby,
            other => return Err(AttrsError(other.to_string())),
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Primary => "primary",
            Self::Standby => "standby",
            Self::PreferStandby => "prefer-standby",
        }
    }

    /// Whether a server in `state` fits (for `prefer-standby`: in its first pass).
    fn fits(self, state: ServerState) -> bool {
        match self {
            Self::Any => true,
            Self::ReadWrite => !state.read_only,
            Self::ReadOnly => state.read_only,
            Self::Primary => !state.in_recovery,
            Self::Standby | Self::PreferStandby => state.in_recovery,
        }
    }
}

impl fmt::Display for SessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `target_session_attrs` value.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid target_session_attrs {0:?}: expected any, read-write, read-only, primary, standby or prefer-standby"
)]
pub struct AttrsError(String);

/// Takes `target_session_attrs` out of a connection string (URL or key=value); the rest goes to
/// tokio-postgres.
pub fn split(uri: &str) -> Result<(String, Option<SessionAttrs>), AttrsError> {
    let mut attrs = None;
    let rest = tls::take_params(uri, |key, value| {
        if key != "target_session_attrs" {
            return Ok(false);
        }
        attrs = Some(SessionAttrs::parse(value)?);
        Ok(true)
    })?;
    Ok((rest, attrs))
}

/// One server of the connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its host name, address or Unix socket directory.
    pub host: Host,
    /// Its port.
    pub port: u16,
    /// Its `hostaddr`, when given (connect there, name it `host` for TLS).
    pub hostaddr: Option<IpAddr>,
}

impl fmt::Display for Endpoint {
    /// `host:port` (a socket directory for a Unix socket), never credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Tcp(name) => write!(f, "{name}:{}", self.port),
            Host::Unix(dir) => write!(f, "{}:{}", dir.display(), self.port),
        }
    }
}

/// The servers a configuration names, in order, with libpq's rules for ports (one port for
/// every host, or one per host; none: 5432) and for no host at all (`localhost`).
pub fn endpoints(config: &Config) -> Vec<Endpoint> {
    let ports = config.get_ports();
    let port = |i: usize| match ports.len() {
        0 => 5432,
        1 => ports[0],
        _ => ports.get(i).copied().unwrap_or(5432),
    };
    let hostaddrs = config.get_hostaddrs();
    let hosts = config.get_hosts();
    if hosts.is_empty() {
        if hostaddrs.is_empty() {
            return vec![Endpoint {
                host: Host::Tcp("localhost".into()),
                port: port(0),
                hostaddr: None,
            }];
        }
        return hostaddrs
            .iter()
            .enumerate()
            .map(|(i, addr)| Endpoint {
                host: Host::Tcp(addr.to_string()),
                port: port(i),
                hostaddr: Some(*addr),
            })
            .collect();
    }
    hosts
        .iter()
        .enumerate()
        .map(|(i, host)| Endpoint {
            host: host.clone(),
            port: port(i),
            hostaddr: hostaddrs.get(i).copied(),
        })
        .collect()
}

/// `config` narrowed to one server: every other setting kept.
fn single(config: &Config, endpoint: &Endpoint) -> Config {
    let mut c = Config::new();
    if let Some(v) = config.get_user() {
        c.user(v);
    }
    if let Some(v) = config.get_password() {
        c.password(v);
    }
    if let Some(v) = config.get_dbname() {
        c.dbname(v);
    }
    if let Some(v) = config.get_options() {
        c.options(v);
    }
    if let Some(v) = config.get_application_name() {
        c.application_name(v);
    }
    match &endpoint.host {
        Host::Tcp(name) => {
            c.host(name);
            c.ssl_mode(config.get_ssl_mode());
        }
        Host::Unix(dir) => {
            c.host_path(dir);
            // libpq ignores sslmode for Unix sockets.
            c.ssl_mode(SslMode::Disable);
        }
    }
    if let Some(addr) = endpoint.hostaddr {
        c.hostaddr(addr);
    }
    c.port(endpoint.port);
    c.ssl_negotiation(config.get_ssl_negotiation());
    if let Some(v) = config.get_connect_timeout() {
        c.connect_timeout(*v);
    }
    if let Some(v) = config.get_tcp_user_timeout() {
        c.tcp_user_timeout(*v);
    }
    c.keepalives(config.get_keepalives());
    c.keepalives_idle(config.get_keepalives_idle());
    if let Some(v) = config.get_keepalives_interval() {
        c.keepalives_interval(v);
    }
    if let Some(v) = config.get_keepalives_retries() {
        c.keepalives_retries(v);
    }
    c.channel_binding(config.get_channel_binding());
    c
}

/// What `target_session_attrs` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServerState {
    in_recovery: bool,
    read_only: bool,
}

impl ServerState {
    fn describe(self) -> &'static str {
        match (self.in_recovery, self.read_only) {
            (true, _) => "a standby (in recovery)",
            (false, true) => "a primary with read-only sessions (default_transaction_read_only)",
            (false, false) => "a primary",
        }
    }
}

/// A connection and the task-less driver it needs (as tokio-postgres returns them).
pub type Connected = (Client, Connection<Socket, tls::PgTlsStream>);

/// Why no server gave a fitting connection. The text names every server tried and why it was
/// not kept; it never contains the connection string.
#[derive(Debug)]
pub enum ConnectError {
    /// One server, any session: tokio-postgres's error as it is.
    Pg(tokio_postgres::Error),
    /// Several servers, or a session check: each server and what was wrong with it.
    NoServer {
        /// What was asked for.
        wanted: SessionAttrs,
        /// `(server, why not)`, in the order tried.
        tried: Vec<(String, String)>,
    },
}

impl ConnectError {
    /// The database error, when the one server tried refused with one (for callers that
    /// treat, say, a missing database differently from a refused connection).
    pub fn as_db_error(&self) -> Option<&tokio_postgres::error::DbError> {
        match self {
            Self::Pg(e) => e.as_db_error(),
            Self::NoServer { .. } => None,
        }
    }
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pg(e) => f.write_str(&describe(e)),
            Self::NoServer { wanted, tried } => {
                write!(f, "no server fits target_session_attrs={wanted} (tried ")?;
                for (i, (server, why)) in tried.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{server}: {why}")?;
                }
                f.write_str(")")
            }
        }
    }
}

// No `source`: the text already carries the causes (see [`describe`]).
impl std::error::Error for ConnectError {}

/// Connects to one given server of `db`'s list, whatever it is.
pub async fn connect_one(
    db: &Database,
    server: &Endpoint,
) -> Result<Connected, tokio_postgres::Error> {
    single(&db.config, server).connect(db.tls.clone()).await
}

/// Connects to the first server of `db` that fits `attrs`, as libpq does; returns which one.
pub async fn connect(
    db: &Database,
    attrs: SessionAttrs,
) -> Result<(Client, Connection<Socket, tls::PgTlsStream>, Endpoint), ConnectError> {
    let servers = endpoints(&db.config);
    if servers.len() == 1 && attrs == SessionAttrs::Any {
        let server = &servers[0];
        let (client, connection) = single(&db.config, server).connect(db.tls.clone()).await?;
        return Ok((client, connection, server.clone()));
    }
    let mut tried = Vec::with_capacity(servers.len());
    // prefer-standby: the first server that is not a standby, kept in case none is.
    let mut fallback: Option<(Connected, Endpoint)> = None;
    for server in &servers {
        let (client, mut connection) =
            match single(&db.config, server).connect(db.tls.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    tried.push((server.to_string(), describe(&e)));
                    continue;
                }
            };
        if attrs == SessionAttrs::Any {
            return Ok((client, connection, server.clone()));
        }
        let wait = db
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CHECK_TIMEOUT);
        let state = match tokio::time::timeout(wait, state(&client, &mut connection)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tried.push((
                    server.to_string(),
                    format!("cannot tell primary from standby: {}", describe(&e)),
                ));
                continue;
            }
            Err(_) => {
                tried.push((
                    server.to_string(),
                    format!("no answer to the primary/standby check within {wait:?}"),
                ));
                continue;
            }
        };
        if attrs.fits(state) {
            if !tried.is_empty() {
                tracing::debug!(server = %server, skipped = ?tried, wanted = %attrs,
                    "connected past the servers that did not fit");
            }
            return Ok((client, connection, server.clone()));
        }
        tried.push((server.to_string(), state.describe().to_string()));
        if attrs == SessionAttrs::PreferStandby && fallback.is_none() {
            fallback = Some(((client, connection), server.clone()));
        }
    }
    if let Some(((client, connection), server)) = fallback {
        return Ok((client, connection, server));
    }
    Err(ConnectError::NoServer {
        wanted: attrs,
        tried,
    })
}

/// Asks a fresh connection whether its server is in recovery and whether sessions are
/// read-only, driving the connection meanwhile (it has no task of its own yet).
async fn state(
    client: &Client,
    connection: &mut Connection<Socket, tls::PgTlsStream>,
) -> Result<ServerState, tokio_postgres::Error> {
    let query = client
        .simple_query("SELECT pg_is_in_recovery()::text, current_setting('transaction_read_only')");
    tokio::pin!(query);
    let messages = loop {
        tokio::select! {
            answer = &mut query => break answer?,
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                // Notices only: nothing is LISTENed to yet.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                // The connection ended: the query's own error says so.
                None => break query.await?,
            },
        }
    };
    let row = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let (in_recovery, read_only) = match row {
        Some(row) => (row.get(0) == Some("true"), row.get(1) == Some("on")),
        None => (false, false),
    };
    Ok(ServerState {
        in_recovery,
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_come_out_of_both_forms() {
        let (rest, a) =
            split("postgres://u@a:1,b:2/db?target_session_attrs=primary&application_name=x")
                .unwrap();
        assert_eq!(rest, "postgres://u@a:1,b:2/db?application_name=x");
        assert_eq!(a, Some(SessionAttrs::Primary));
        let (rest, a) =
            split("host=a,b port=1,2 target_session_attrs=prefer-standby dbname=d").unwrap();
        assert_eq!(rest, "host=a,b port=1,2 dbname=d");
        assert_eq!(a, Some(SessionAttrs::PreferStandby));
        let (rest, a) = split("host=a dbname=d").unwrap();
        assert_eq!((rest.as_str(), a), ("host=a dbname=d", None));
        for v in [
            "any",
            "read-write",
            "read-only",
            "primary",
            "standby",
            "prefer-standby",
        ] {
            assert_eq!(SessionAttrs::parse(v).unwrap().as_str(), v);
        }
        let e = split("host=a target_session_attrs=master").unwrap_err();
        assert!(e.to_string().contains("\"master\""), "{e}");
    }

    #[test]
    fn endpoints_follow_libpq_port_rules() {
        let e = |uri: &str| {
            endpoints(&uri.parse::<Config>().unwrap())
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(e("host=a,b port=5433,5434"), ["a:5433", "b:5434"]);
        assert_eq!(e("host=a,b port=6000"), ["a:6000", "b:6000"]);
        assert_eq!(e("postgres://u@a:1,b/db"), ["a:1", "b:5432"]);
        assert_eq!(
            e("host=/tmp,db.example port=1,2"),
            ["/tmp:1", "db.example:2"]
        );
        assert_eq!(e("dbname=x"), ["localhost:5432"]);
        let c: Config = "host=a,b hostaddr=10.0.0.1,10.0.0.2".parse().unwrap();
        assert_eq!(endpoints(&c)[1].hostaddr, Some("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn one_server_keeps_every_other_setting() {
        let c: Config = "host=a,/run/pg port=1,2 user=u password=p dbname=d application_name=x \
                         connect_timeout=3 sslmode=require"
            .parse()
            .unwrap();
        let servers = endpoints(&c);
        let one = single(&c, &servers[0]);
        assert_eq!(one.get_hosts(), &[Host::Tcp("a".into())]);
        assert_eq!(one.get_ports(), &[1]);
        assert_eq!(one.get_user(), Some("u"));
        assert_eq!(one.get_password(), Some(&b"p"[..]));
        assert_eq!(one.get_dbname(), Some("d"));
        assert_eq!(one.get_application_name(), Some("x"));
        assert_eq!(
            one.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(one.get_ssl_mode(), SslMode::Require);
        let unix = single(&c, &servers[1]);
        assert_eq!(unix.get_ports(), &[2]);
        assert_eq!(unix.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn which_servers_fit() {
        let primary = ServerState {
            in_recovery: false,
            read_only: false,
        };
        let standby = ServerState {
            in_recovery: true,
            read_only: true,
        };
        let readonly_primary = ServerState {
            in_recovery: false,
            read_only: true,
        };
        use SessionAttrs::*;
        assert!(ReadWrite.fits(primary) && !ReadWrite.fits(standby));
        assert!(!ReadWrite.fits(readonly_primary) && Primary.fits(readonly_primary));
        assert!(Standby.fits(standby) && !Standby.fits(primary));
        assert!(ReadOnly.fits(standby) && !ReadOnly.fits(primary));
        assert!(PreferStandby.fits(standby) && !PreferStandby.fits(primary));
        assert!(Any.fits(standby) && Any.fits(primary));
    }

    #[test]
    fn the_error_names_every_server_and_why() {
        let e = ConnectError::NoServer {
            wanted: SessionAttrs::ReadWrite,
            tried: vec![
                ("a:1".into(), "connection refused".into()),
                ("b:2".into(), "a standby (in recovery)".into()),
            ],
        };
        assert_eq!(
            e.to_string(),
            "no server fits target_session_attrs=read-write (tried a:1: connection refused; \
             b:2: a standby (in recovery))"
        );
    }
}
