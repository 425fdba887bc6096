//! Configuration: every `PGWS_*` variable of postgres-websockets, each also a command-line flag.
//!
//! - [`cli`]: what clap parses (flags and variables, help text, value parsers);
//! - this module: [`Config`], the resolved settings the server runs with, and the checks that
//!   settings make sense together;
//! - [`secrets`]: `@file` secrets, base64, keys; [`help`]: the original's missing-settings text.
//!
//! The runtime types a setting resolves to live with the code that uses them (the channel mode in
//! [`crate::routing`], the site in the HTTP layer, the bind address in [`crate::net`]).
//!
//! The original read its settings with `envparse`, which silently fell back to the default when a
//! value did not parse (`PGWS_PORT=abc` meant port 3000). Here a value that does not parse stops
//! start-up with a message naming the variable and the value. `True`/`False` are accepted in any
//! case. Missing required settings print the original's help text and exit with status 1.

mod cli;
mod help;
mod secrets;

use std::time::Duration;

pub use crate::source::SourceKind;
pub use cli::{Cli, LogFormat};

use crate::address::AddressSet;
use crate::auth::{ClaimPath, KeySet, Rules};
use crate::channel::ChannelName;
use crate::http::proxy::Upstream;
use crate::http::static_files::Site;
use crate::net::{HostPreference, TlsFiles};
use crate::ops::limits::RateLimits;
use crate::pg::redact::{redact_conninfo, scrub};
use crate::routing::{ChannelMode, MessageFormat};
use help::missing_help;

/// The development secret: the original's `sample-env` secret, used by `--embedded` when no
/// `PGWS_JWT_SECRET` is given, and by the example page.
pub const DEV_SECRET: &str =
    "auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe";

/// Default meta channel in embedded mode, as in the original's `sample-env`.
pub const DEV_META_CHANNEL: &str = "server-info";

/// Resolved settings the server runs with. Built from [`Cli`]; tests build it the same way.
#[derive(Debug, Clone)]
pub struct Config {
    /// tokio-postgres connection settings for both the LISTEN connection and the NOTIFY pool.
    pub db: crate::pg::Database,
    /// Keys that verify tokens.
    pub keys: KeySet,
    /// Where to bind.
    pub host: HostPreference,
    /// Port to bind (0 = any free port).
    pub port: u16,
    /// The one PostgreSQL channel used as the message bus.
    pub listen_channel: ChannelName,
    /// Channel for connection events, if any.
    pub meta_channel: Option<ChannelName>,
    /// What non-websocket requests get.
    pub site: Site,
    /// Size of the NOTIFY pool.
    pub pool_size: usize,
    /// Start-up attempts for the LISTEN connection; `None` = retry for ever (the default: only an
    /// explicit `PGWS_RETRIES` without `PGWS_CHECK_LISTENER_INTERVAL` gives up).
    pub startup_retries: Option<u32>,
    /// How often the LISTEN connection is checked.
    pub check_listener_interval: Duration,
    /// TLS certificate and key, if TLS is on.
    pub tls: Option<TlsFiles>,
    /// Per-socket outbound queue limits.
    pub max_queue_messages: usize,
    /// Per-socket outbound queue limit in bytes.
    pub max_queue_bytes: usize,
    /// Largest accepted client message.
    pub max_message_size: usize,
    /// Interval between server pings (`None`: no pings).
    pub ping_interval: Option<Duration>,
    /// Admin listener address, if any.
    pub admin_address: Option<String>,
    /// Most open websockets.
    pub max_connections: usize,
    /// Most channels per socket.
    pub max_channels: usize,
    /// Time limit for request heads and TLS handshakes.
    pub handshake_timeout: Duration,
    /// Time limit for the drain at shutdown.
    pub shutdown_timeout: Duration,
    /// Whether `Gap` events are sent.
    pub gap_events: bool,
    /// Token rules beyond the signature.
    pub rules: Rules,
    /// Allowed browser origins (`None`: any).
    pub allowed_origins: Option<Vec<String>>,
    /// Abuse limits.
    pub rates: RateLimits,
    /// Proxies whose X-Forwarded-For is trusted.
    pub trusted_proxies: AddressSet,
    /// Client addresses the connection rate does not apply to.
    pub rate_exempt: AddressSet,
    /// Which PostgreSQL channels reach sockets.
    pub channel_mode: ChannelMode,
    /// Shape of client messages.
    pub message_format: MessageFormat,
    /// Lifetime of an event stream (`None`: unlimited).
    pub sse_max_age: Option<Duration>,
    /// Replay windows for resuming clients.
    pub replay: crate::stream::window::WindowLimits,
    /// Where plain HTTP requests are forwarded, if anywhere (parsed once, here).
    pub upstream: Option<Upstream>,
    /// Where messages come from.
    pub source: crate::source::SourceKind,
    /// This node's name (`None`: `<host name>_<port>`, known once bound).
    pub node_id: Option<String>,
    /// The WAL source's slot (`None`: from the node id).
    pub wal_slot: Option<String>,
    /// The WAL source's publication.
    pub wal_publication: String,
    /// Bounds on row subscriptions' snapshots.
    pub snapshot: crate::rows::snapshot::Limits,
    /// Snapshots read at once.
    pub snapshot_concurrency: usize,
    /// The claims row-level security policies read (`None`: all but the time claims).
    pub rows_cohort_claims: Option<String>,
    /// Where the WAL source reads its slot (`PGWS_WAL_READ_URI`; `None`: the primary of `db`).
    pub wal_read_db: Option<crate::pg::Database>,
    /// Authorization by the database (`None`: off, the default).
    pub authz: Option<crate::authz::AuthzSettings>,
    /// Presence (`PGWS_PRESENCE*`); `None` when off.
    pub presence: Option<crate::presence::PresenceSettings>,
}

/// Why the configuration was refused. Each message names the variable and, where it has one,
/// the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Required variables are missing; the text is the original's help text plus the errors.
    #[error("{0}")]
    Missing(String),
    /// Only one of the TLS files is set.
    #[error(
        "PGWS_CERTIFICATE_FILE and PGWS_KEY_FILE must be set in tandem (got only {0}); set both for TLS or neither"
    )]
    TlsPair(&'static str),
    /// A file named with `@file` could not be read. (The I/O error is part of the text, not a
    /// `source`, so that printing the chain does not repeat it.)
    #[error("{var}: cannot read file '{path}': {error}")]
    File {
        /// The variable.
        var: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// `PGWS_JWT_SECRET_BASE64=True` but the secret is not base64.
    #[error("PGWS_JWT_SECRET: not valid base64 (PGWS_JWT_SECRET_BASE64 is True): {0}")]
    Base64(base64::DecodeError),
    /// The secret parsed as JSON but is not a usable JWK / JWK Set (the key error is part of the
    /// text, not a `source`).
    #[error("PGWS_JWT_SECRET: {0}")]
    Key(crate::auth::KeyError),
    /// `PGWS_WAL_READ_URI` does not parse.
    #[error("PGWS_WAL_READ_URI: cannot use the connection string '{shown}': {detail}")]
    WalReadUri {
        /// The connection string, passwords replaced by `***`.
        shown: String,
        /// What is wrong with it (passwords replaced too).
        detail: String,
    },
    /// The database URI does not parse.
    #[error("PGWS_DB_URI: cannot use the connection string '{shown}': {detail}")]
    DbUri {
        /// The connection string, passwords replaced by `***`.
        shown: String,
        /// What is wrong with it (passwords replaced too).
        detail: String,
    },
    /// A channel name PostgreSQL cannot use.
    #[error("{var}: '{value}' {reason}")]
    Channel {
        /// The variable.
        var: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: crate::channel::ChannelNameError,
    },
    /// A value that does not make sense. The reason reads after "invalid value '…': ", as
    /// clap's own value errors do (`expected …`, or why the value cannot work).
    #[error("{var}: invalid value '{value}': {reason}")]
    Value {
        /// The variable.
        var: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The static root is not a directory.
    #[error("PGWS_ROOT_PATH: '{0}' is not a readable directory")]
    RootPath(String),
}

impl From<crate::auth::KeyError> for ConfigError {
    fn from(e: crate::auth::KeyError) -> Self {
        Self::Key(e)
    }
}

impl Cli {
    /// Resolves files, base64 and keys, and checks that the settings make sense together.
    ///
    /// `db_uri_override` is the embedded cluster's connection string, used instead of
    /// `PGWS_DB_URI`; `secret_fallback` is used when no secret is configured (embedded mode).
    pub fn resolve(
        &self,
        db_uri_override: Option<&str>,
        secret_fallback: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let db_uri = match (db_uri_override, self.db_uri.as_deref()) {
            (Some(uri), _) => Some(uri.to_string()),
            (None, Some("")) => {
                errors.push("PGWS_DB_URI is empty");
                None
            }
            (None, Some(uri)) => Some(uri.to_string()),
            (None, None) => {
                errors.push("PGWS_DB_URI is unset");
                None
            }
        };
        let secret = match (self.jwt_secret.as_deref(), secret_fallback) {
            (Some(s), _) => Some(s.to_string()),
            (None, Some(s)) => Some(s.to_string()),
            (None, None) => {
                errors.push("PGWS_JWT_SECRET is unset");
                None
            }
        };
        if !errors.is_empty() {
            return Err(ConfigError::Missing(missing_help(&errors)));
        }
        let (db_uri, secret) = (db_uri.unwrap_or_default(), secret.unwrap_or_default());

        let tls = match (&self.certificate_file, &self.key_file) {
            (Some(c), Some(k)) => Some(TlsFiles {
                certificate: c.clone(),
                key: k.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::TlsPair("PGWS_CERTIFICATE_FILE")),
            (None, Some(_)) => return Err(ConfigError::TlsPair("PGWS_KEY_FILE")),
        };

        let keys = self.load_keys(&secret)?;

        let db_uri = match db_uri.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|error| ConfigError::File {
                    var: "PGWS_DB_URI",
                    path: path.to_string(),
                    error,
                })?
                .trim()
                .to_string(),
            None => db_uri,
        };
        let db = crate::pg::Database::parse(&db_uri).map_err(|e| ConfigError::DbUri {
            shown: redact_conninfo(&db_uri),
            detail: scrub(&e.detail(), &db_uri),
        })?;

        let wal_read_db = match self.wal_read_uri.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(uri) => {
                let uri = match uri.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path)
                        .map_err(|error| ConfigError::File {
                            var: "PGWS_WAL_READ_URI",
                            path: path.to_string(),
                            error,
                        })?
                        .trim()
                        .to_string(),
                    None => uri.to_string(),
                };
                Some(
                    crate::pg::Database::parse(&uri).map_err(|e| ConfigError::WalReadUri {
                        shown: redact_conninfo(&uri),
                        detail: scrub(&e.detail(), &uri),
                    })?,
                )
            }
        };

        let listen_channel = channel_setting("PGWS_LISTEN_CHANNEL", &self.listen_channel)?;
        let meta_channel = self
            .meta_channel
            .as_deref()
            .map(|meta| channel_setting("PGWS_META_CHANNEL", meta))
            .transpose()?;

        let site = match (&self.root_path, self.embedded) {
            (Some(root), _) => {
                if !root.is_dir() {
                    return Err(ConfigError::RootPath(root.display().to_string()));
                }
                Site::Directory(root.clone())
            }
            (None, true) => Site::Builtin,
            (None, false) if self.embedded_dir.is_some() => Site::Builtin,
            (None, false) => Site::Hello,
        };

        let (channel_mode, message_format) = (self.channel_mode, self.message_format);
        if message_format != MessageFormat::PostgresWebsockets && !channel_mode.uses_direct() {
            return Err(ConfigError::Value {
                var: "PGWS_MESSAGE_FORMAT",
                value: message_format.as_str().to_string(),
                reason: "this format NOTIFYs on the channel itself, which sockets only hear with PGWS_CHANNEL_MODE=direct or both".into(),
            });
        }
        if self.source == crate::source::SourceKind::Wal
            && channel_mode != ChannelMode::ListenChannel
        {
            return Err(ConfigError::Value {
                var: "PGWS_CHANNEL_MODE",
                value: format!("{channel_mode:?}").to_lowercase(),
                reason: "PGWS_SOURCE=wal reads every message through PGWS_LISTEN_CHANNEL (the logical message prefix), so it needs listen-channel".into(),
            });
        }
        if let Some(slot) = &self.wal_slot
            && (slot.is_empty()
                || slot.len() > 63
                || !slot
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        {
            return Err(ConfigError::Value {
                var: "PGWS_WAL_SLOT",
                value: slot.clone(),
                reason: "expected 1 to 63 lower-case letters, digits or _".into(),
            });
        }
        if self.wal_publication.is_empty() || self.wal_publication.contains('\0') {
            return Err(ConfigError::Value {
                var: "PGWS_WAL_PUBLICATION",
                value: self.wal_publication.clone(),
                reason: "expected a publication name (not empty)".into(),
            });
        }
        let upstream = self
            .upstream
            .as_deref()
            .map(|url| {
                // The error names the variable and the value itself.
                Upstream::new(url).map_err(|_| ConfigError::Value {
                    var: "PGWS_UPSTREAM",
                    value: url.to_string(),
                    reason: "expected an http:// URL with a host".into(),
                })
            })
            .transpose()?;
        if !(50..=3_600_000).contains(&self.presence_interval) {
            return Err(ConfigError::Value {
                var: "PGWS_PRESENCE_INTERVAL",
                value: self.presence_interval.to_string(),
                reason: "expected milliseconds from 50 to 3600000".into(),
            });
        }
        if self.presence_claim.is_empty() {
            return Err(ConfigError::Value {
                var: "PGWS_PRESENCE_CLAIM",
                value: String::new(),
                reason: "expected a claim name (not empty)".into(),
            });
        }
        let authz = self.authz_settings()?;
        Ok(Config {
            authz,
            db,
            keys,
            host: HostPreference::parse(&self.host),
            port: self.port,
            listen_channel,
            meta_channel,
            site,
            pool_size: usize::from(self.pool_size),
            // Giving up is asked for with PGWS_RETRIES; PGWS_CHECK_LISTENER_INTERVAL overrides it.
            startup_retries: match (self.retries, self.check_listener_interval) {
                (Some(n), None) => Some(n.max(1)),
                _ => None,
            },
            check_listener_interval: Duration::from_millis(
                self.check_listener_interval.unwrap_or(10_000).max(100),
            ),
            tls,
            max_queue_messages: self.max_queue_messages.max(1),
            max_queue_bytes: self.max_queue_bytes.max(1),
            max_message_size: self.max_message_size.max(1),
            ping_interval: (self.ping_interval > 0)
                .then(|| Duration::from_secs(self.ping_interval)),
            admin_address: self.admin_address.clone(),
            max_connections: self.max_connections,
            max_channels: self.max_channels.max(1),
            handshake_timeout: Duration::from_secs(self.handshake_timeout.max(1)),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout),
            gap_events: self.gap_events,
            rules: Rules {
                audience: list(self.jwt_audience.as_deref()),
                issuer: list(self.jwt_issuer.as_deref()),
                leeway: self.jwt_leeway as f64,
                mode: ClaimPath::new(&self.claim_mode),
                channel: ClaimPath::new(&self.claim_channel),
                channels: ClaimPath::new(&self.claim_channels),
                default_mode: self.default_mode.map(|m| m.as_str().to_string()),
            },
            allowed_origins: list(self.allowed_origins.as_deref()),
            rates: RateLimits {
                connections: self.rate_connections,
                messages: self.rate_messages,
                bytes: self.rate_bytes,
                per_subject: self.max_connections_per_subject,
            },
            channel_mode,
            message_format,
            upstream,
            sse_max_age: (self.sse_max_age > 0).then(|| Duration::from_secs(self.sse_max_age)),
            replay: crate::stream::window::WindowLimits {
                messages: self.replay_messages,
                bytes: self.replay_bytes,
                age: Duration::from_secs(self.replay_age),
                memory: self.replay_memory,
            },
            trusted_proxies: addresses(
                "PGWS_TRUSTED_PROXIES",
                self.trusted_proxies.as_deref().unwrap_or(""),
            )?,
            rate_exempt: addresses(
                "PGWS_RATE_CONNECTIONS_EXEMPT",
                &self.rate_connections_exempt,
            )?,
            source: self.source,
            node_id: self.node_id.clone(),
            wal_slot: self.wal_slot.clone(),
            wal_publication: self.wal_publication.clone(),
            snapshot: crate::rows::snapshot::Limits {
                max_rows: self.snapshot_max_rows,
                timeout: Duration::from_secs(self.snapshot_timeout.max(1)),
            },
            snapshot_concurrency: self.snapshot_concurrency.max(1),
            rows_cohort_claims: self
                .rows_cohort_claims
                .clone()
                .filter(|s| !s.trim().is_empty()),
            wal_read_db,
            presence: self.presence.then(|| crate::presence::PresenceSettings {
                claim: self.presence_claim.clone(),
                interval: Duration::from_millis(self.presence_interval),
            }),
        })
    }
}

impl Cli {
    /// `PGWS_AUTHZ_*`: `None` unless a check or write function is named.
    fn authz_settings(&self) -> Result<Option<crate::authz::AuthzSettings>, ConfigError> {
        let function = |var: &'static str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| {
                    crate::authz::FunctionName::parse(v).map_err(|reason| ConfigError::Value {
                        var,
                        value: v.to_string(),
                        reason,
                    })
                })
                .transpose()
        };
        let check_function = function("PGWS_AUTHZ_FUNCTION", &self.authz_function)?;
        let write_function = function("PGWS_AUTHZ_WRITE_FUNCTION", &self.authz_write_function)?;
        if check_function.is_none() && write_function.is_none() {
            return Ok(None);
        }
        if let Some(anon) = &self.authz_anon_role
            && (anon.is_empty() || anon.len() > 63 || anon.contains('\0'))
        {
            return Err(ConfigError::Value {
                var: "PGWS_AUTHZ_ANON_ROLE",
                value: anon.clone(),
                reason: "expected a role name of 1 to 63 bytes".into(),
            });
        }
        Ok(Some(crate::authz::AuthzSettings {
            check_function,
            write_function,
            role_claim: ClaimPath::new(&self.authz_role_claim),
            anon_role: self.authz_anon_role.clone(),
            pool_size: usize::from(self.authz_pool_size),
            write_pool_size: usize::from(self.authz_write_pool_size),
            check_timeout: Duration::from_millis(self.authz_timeout),
            write_timeout: Duration::from_millis(self.authz_write_timeout),
            write_concurrency: usize::from(self.authz_write_concurrency),
            cache_size: self.authz_cache_size,
            recheck_interval: (self.authz_recheck_interval > 0)
                .then(|| Duration::from_secs(self.authz_recheck_interval)),
        }))
    }
}

/// An address-set setting ([`AddressSet`]).
fn addresses(var: &'static str, value: &str) -> Result<AddressSet, ConfigError> {
    AddressSet::parse(value).map_err(|e| ConfigError::Value {
        var,
        value: value.to_string(),
        reason: e.to_string(),
    })
}

/// Splits a comma-separated setting; `None` when unset or empty.
pub(crate) fn list(value: Option<&str>) -> Option<Vec<String>> {
    let items: Vec<String> = value?
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    (!items.is_empty()).then_some(items)
}

/// A channel-name setting, checked by the rules of [`ChannelName`].
fn channel_setting(var: &'static str, value: &str) -> Result<ChannelName, ConfigError> {
    ChannelName::new(value).map_err(|e| ConfigError::Channel {
        var,
        value: value.to_string(),
        reason: e,
    })
}

#[cfg(test)]
mod tests;
