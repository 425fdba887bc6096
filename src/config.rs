//! Configuration: every `PGWS_*` variable of postgres-websockets, each also a command-line flag.
//!
//! The original read its settings with `envparse`, which silently fell back to the default when a
//! value did not parse (`PGWS_PORT=abc` meant port 3000). Here a value that does not parse stops
//! start-up with a message naming the variable and the value. `True`/`False` are accepted in any
//! case. Missing required settings print the original's help text and exit with status 1.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::auth::{ClaimPath, KeyError, KeySet, Rules};

/// The development secret: the original's `sample-env` secret, used by `--embedded` when no
/// `PGWS_JWT_SECRET` is given, and by the example page.
pub const DEV_SECRET: &str =
    "auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe";

/// Default meta channel in embedded mode, as in the original's `sample-env`.
pub const DEV_META_CHANNEL: &str = "server-info";

/// Command line and environment, as clap sees them. Converted into [`Config`] by [`Cli::resolve`].
#[derive(Debug, Clone, Parser)]
#[command(
    name = "pgws",
    version,
    about = "Connects websockets to PostgreSQL asynchronous notifications (a drop-in postgres-websockets).",
    after_help = "Every option is also read from the environment variable shown in brackets; a flag wins over the variable.\nTry it without any setup: pgws --embedded"
)]
pub struct Cli {
    /// PostgreSQL connection string (URI or key=value), or @file to read it from a file.
    #[arg(long, env = "PGWS_DB_URI", value_name = "PGWS_DB_URI")]
    pub db_uri: Option<String>,

    /// Secret to verify JWTs: raw HMAC bytes, a JWK, or a JWK Set; @file reads it from a file.
    #[arg(
        long,
        env = "PGWS_JWT_SECRET",
        value_name = "PGWS_JWT_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub jwt_secret: Option<String>,

    /// The secret is base64 (or base64url) encoded [True|False].
    #[arg(long, env = "PGWS_JWT_SECRET_BASE64", value_name = "PGWS_JWT_SECRET_BASE64",
          default_value = "False", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub jwt_secret_base64: bool,

    /// Address to bind: `*` (any, IPv4 and IPv6), `*4` (any, IPv4), `!4` (IPv4 only), `*6` (any,
    /// prefer IPv6), `!6` (IPv6 only), or a host name / IP address.
    #[arg(
        long,
        env = "PGWS_HOST",
        value_name = "PGWS_HOST",
        default_value = "*4"
    )]
    pub host: String,

    /// TCP port for HTTP, static files and websockets (0 picks a free port).
    #[arg(
        long,
        env = "PGWS_PORT",
        value_name = "PGWS_PORT",
        default_value_t = 3000
    )]
    pub port: u16,

    /// The PostgreSQL channel pgws LISTENs on and NOTIFYs to.
    #[arg(
        long,
        env = "PGWS_LISTEN_CHANNEL",
        value_name = "PGWS_LISTEN_CHANNEL",
        default_value = "postgres-websockets-listener"
    )]
    pub listen_channel: String,

    /// Channel that receives ConnectionOpen / ConnectionClose events (unset: no events).
    #[arg(long, env = "PGWS_META_CHANNEL", value_name = "PGWS_META_CHANNEL")]
    pub meta_channel: Option<String>,

    /// Directory served as static files to non-websocket requests (unset: "Hello, Web!").
    #[arg(long, env = "PGWS_ROOT_PATH", value_name = "PGWS_ROOT_PATH")]
    pub root_path: Option<PathBuf>,

    /// Number of connections used to send NOTIFY (the LISTEN connection is separate).
    #[arg(long, env = "PGWS_POOL_SIZE", value_name = "PGWS_POOL_SIZE", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub pool_size: u16,

    /// Attempts to open the LISTEN connection at start-up before giving up (exit 1); unused
    /// when PGWS_CHECK_LISTENER_INTERVAL is set (then pgws retries for ever).
    #[arg(
        long,
        env = "PGWS_RETRIES",
        value_name = "PGWS_RETRIES",
        default_value_t = 5
    )]
    pub retries: u32,

    /// Milliseconds between health checks of the LISTEN connection (unset: 10000). A failed
    /// check reconnects it.
    #[arg(
        long,
        env = "PGWS_CHECK_LISTENER_INTERVAL",
        value_name = "PGWS_CHECK_LISTENER_INTERVAL"
    )]
    pub check_listener_interval: Option<u64>,

    /// PEM certificate chain; with PGWS_KEY_FILE pgws serves only TLS (https/wss).
    #[arg(
        long,
        env = "PGWS_CERTIFICATE_FILE",
        value_name = "PGWS_CERTIFICATE_FILE"
    )]
    pub certificate_file: Option<PathBuf>,

    /// PEM private key for PGWS_CERTIFICATE_FILE.
    #[arg(long, env = "PGWS_KEY_FILE", value_name = "PGWS_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Start a private, throwaway PostgreSQL from the installed server binaries and use it.
    #[arg(long, env = "PGWS_EMBEDDED", value_name = "PGWS_EMBEDDED", default_value = "False",
          value_parser = parse_bool, num_args = 0..=1, default_missing_value = "True",
          action = clap::ArgAction::Set)]
    pub embedded: bool,

    /// Most messages waiting to be written to one socket; a socket that falls further behind is
    /// closed with code 4000.
    #[arg(
        long,
        env = "PGWS_MAX_QUEUE_MESSAGES",
        value_name = "PGWS_MAX_QUEUE_MESSAGES",
        default_value_t = 4096
    )]
    pub max_queue_messages: usize,

    /// Most bytes waiting to be written to one socket (see PGWS_MAX_QUEUE_MESSAGES).
    #[arg(long, env = "PGWS_MAX_QUEUE_BYTES", value_name = "PGWS_MAX_QUEUE_BYTES",
          default_value_t = 4 * 1024 * 1024)]
    pub max_queue_bytes: usize,

    /// Largest websocket message accepted from a client, in bytes; larger ones close the socket
    /// with 1009. Messages that cannot fit PostgreSQL's 8000-byte NOTIFY get an error event.
    #[arg(long, env = "PGWS_MAX_MESSAGE_SIZE", value_name = "PGWS_MAX_MESSAGE_SIZE",
          default_value_t = 64 * 1024)]
    pub max_message_size: usize,

    /// Seconds between server pings on every socket (the original's 30; 0 disables). A peer that
    /// sends nothing, not even a pong, for two intervals is closed with 4001.
    #[arg(
        long,
        env = "PGWS_PING_INTERVAL",
        value_name = "PGWS_PING_INTERVAL",
        default_value_t = 30
    )]
    pub ping_interval: u64,

    /// Address (host:port) of the admin listener serving /metrics, /health and /ready; unset:
    /// no admin listener. Keep it on loopback or a private network.
    #[arg(long, env = "PGWS_ADMIN_ADDRESS", value_name = "PGWS_ADMIN_ADDRESS")]
    pub admin_address: Option<String>,

    /// Most websockets open at once; further handshakes get 503.
    #[arg(
        long,
        env = "PGWS_MAX_CONNECTIONS",
        value_name = "PGWS_MAX_CONNECTIONS",
        default_value_t = 100_000
    )]
    pub max_connections: usize,

    /// Most channels one socket may be bound to; more is refused with 400.
    #[arg(
        long,
        env = "PGWS_MAX_CHANNELS",
        value_name = "PGWS_MAX_CHANNELS",
        default_value_t = 1000
    )]
    pub max_channels: usize,

    /// Seconds a client may take to send its request head (and finish TLS).
    #[arg(
        long,
        env = "PGWS_HANDSHAKE_TIMEOUT",
        value_name = "PGWS_HANDSHAKE_TIMEOUT",
        default_value_t = 30
    )]
    pub handshake_timeout: u64,

    /// Seconds the server waits at shutdown for sockets to close and NOTIFYs to be sent.
    #[arg(
        long,
        env = "PGWS_SHUTDOWN_TIMEOUT",
        value_name = "PGWS_SHUTDOWN_TIMEOUT",
        default_value_t = 10
    )]
    pub shutdown_timeout: u64,

    /// Tell sockets (and the meta channel) when notifications may have been lost while the LISTEN
    /// connection was down [True|False]. False: strict compatibility, no extra frames.
    #[arg(long, env = "PGWS_GAP_EVENTS", value_name = "PGWS_GAP_EVENTS", default_value = "True",
          value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub gap_events: bool,

    /// Log format: `text` or `json` (one object per line).
    #[arg(long, env = "PGWS_LOG_FORMAT", value_name = "PGWS_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    pub log_format: String,

    /// Comma-separated JWT algorithms to accept (e.g. `RS256,ES256`); unset: every algorithm the
    /// configured keys support.
    #[arg(long, env = "PGWS_JWT_ALGORITHMS", value_name = "PGWS_JWT_ALGORITHMS")]
    pub jwt_algorithms: Option<String>,

    /// Comma-separated accepted `aud` values; unset: `aud` is not checked.
    #[arg(long, env = "PGWS_JWT_AUDIENCE", value_name = "PGWS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Comma-separated accepted `iss` values; unset: `iss` is not checked.
    #[arg(long, env = "PGWS_JWT_ISSUER", value_name = "PGWS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Seconds of clock skew allowed for `exp`, `nbf` and `iat` (the original: 0).
    #[arg(
        long,
        env = "PGWS_JWT_LEEWAY",
        value_name = "PGWS_JWT_LEEWAY",
        default_value_t = 0
    )]
    pub jwt_leeway: u64,

    /// Where the mode claim is: a top-level name (e.g. `https://example.com/mode`) or a JSON
    /// Pointer starting with `/` (e.g. `/app_metadata/pgws/mode`).
    #[arg(
        long,
        env = "PGWS_CLAIM_MODE",
        value_name = "PGWS_CLAIM_MODE",
        default_value = "mode"
    )]
    pub claim_mode: String,

    /// Where the single-channel claim is (see PGWS_CLAIM_MODE).
    #[arg(
        long,
        env = "PGWS_CLAIM_CHANNEL",
        value_name = "PGWS_CLAIM_CHANNEL",
        default_value = "channel"
    )]
    pub claim_channel: String,

    /// Where the channel-list claim is (see PGWS_CLAIM_MODE).
    #[arg(
        long,
        env = "PGWS_CLAIM_CHANNELS",
        value_name = "PGWS_CLAIM_CHANNELS",
        default_value = "channels"
    )]
    pub claim_channels: String,

    /// Mode (`r`, `w` or `rw`) for tokens without a mode claim; unset: such tokens are refused
    /// with "Missing mode".
    #[arg(long, env = "PGWS_DEFAULT_MODE", value_name = "PGWS_DEFAULT_MODE",
          value_parser = ["r", "w", "rw"])]
    pub default_mode: Option<String>,

    /// Comma-separated browser origins allowed to open websockets (e.g.
    /// `https://app.example.com`); unset: any. Requests without an Origin header are allowed.
    #[arg(
        long,
        env = "PGWS_ALLOWED_ORIGINS",
        value_name = "PGWS_ALLOWED_ORIGINS"
    )]
    pub allowed_origins: Option<String>,

    /// New websockets per second from one client address (burst: twice as many); 0: no limit.
    #[arg(
        long,
        env = "PGWS_RATE_CONNECTIONS",
        value_name = "PGWS_RATE_CONNECTIONS",
        default_value_t = 200
    )]
    pub rate_connections: u32,

    /// Messages per second one socket may send (burst: twice as many); 0: no limit.
    #[arg(
        long,
        env = "PGWS_RATE_MESSAGES",
        value_name = "PGWS_RATE_MESSAGES",
        default_value_t = 1000
    )]
    pub rate_messages: u32,

    /// Bytes per second one socket may send (burst: twice as many); 0: no limit.
    #[arg(long, env = "PGWS_RATE_BYTES", value_name = "PGWS_RATE_BYTES",
          default_value_t = 1024 * 1024)]
    pub rate_bytes: u32,

    /// Most websockets open at once with the same token `sub`; 0: no limit.
    #[arg(
        long,
        env = "PGWS_MAX_CONNECTIONS_PER_SUBJECT",
        value_name = "PGWS_MAX_CONNECTIONS_PER_SUBJECT",
        default_value_t = 0
    )]
    pub max_connections_per_subject: usize,

    /// Comma-separated addresses of reverse proxies whose X-Forwarded-For is trusted for the client
    /// address (rate limits, logs).
    #[arg(
        long,
        env = "PGWS_TRUSTED_PROXIES",
        value_name = "PGWS_TRUSTED_PROXIES"
    )]
    pub trusted_proxies: Option<String>,

    /// Which PostgreSQL channels reach sockets: `listen-channel` (postgres-websockets: everything
    /// through PGWS_LISTEN_CHANNEL, routed by the JSON `channel` field), `direct` (a socket on
    /// channel X gets every NOTIFY X; client messages are NOTIFYed on X), or `both`.
    #[arg(long, env = "PGWS_CHANNEL_MODE", value_name = "PGWS_CHANNEL_MODE",
          default_value = "listen-channel", value_parser = ["listen-channel", "direct", "both"])]
    pub channel_mode: String,

    /// Shape of client messages: `postgres-websockets` ({"channel","event","payload","claims"}),
    /// `postgrest-ws` ({"claims","payload"} NOTIFYed on the channel itself) or
    /// `postgrest-ws-legacy` ({"userClaims","payload"}).
    #[arg(long, env = "PGWS_MESSAGE_FORMAT", value_name = "PGWS_MESSAGE_FORMAT",
          default_value = "postgres-websockets",
          value_parser = ["postgres-websockets", "postgrest-ws", "postgrest-ws-legacy"])]
    pub message_format: String,

    /// URL of an HTTP server (PostgREST) that receives every non-websocket request, so that one
    /// port serves the REST API and the websockets.
    #[arg(long, env = "PGWS_UPSTREAM", value_name = "PGWS_UPSTREAM")]
    pub upstream: Option<String>,

    /// Log level or filter (`error`, `warn`, `info`, `debug`, `trace`, or a RUST_LOG-style filter);
    /// RUST_LOG wins when set.
    #[arg(
        long,
        env = "PGWS_LOG_LEVEL",
        value_name = "PGWS_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

impl Cli {
    /// Parses the command line and the environment. An optional variable set to the empty string
    /// counts as unset (as in an env file with `PGWS_META_CHANNEL=`); the two required ones keep
    /// their "is empty" error.
    pub fn from_env_and_args() -> Result<Self, clap::Error> {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let mut cmd = Self::command();
        let empty: Vec<clap::Id> = cmd
            .get_arguments()
            .filter(|a| {
                a.get_env().is_some_and(|name| {
                    name != "PGWS_DB_URI"
                        && name != "PGWS_JWT_SECRET"
                        && std::env::var_os(name).is_some_and(|v| v.is_empty())
                })
            })
            .map(|a| a.get_id().clone())
            .collect();
        for id in empty {
            cmd = cmd.mut_arg(id, |a| a.env(None));
        }
        let matches = cmd.try_get_matches()?;
        Self::from_arg_matches(&matches)
    }
}

/// Parses `True`/`False` in any case (and `1`/`0`, `yes`/`no`), naming the value when it fails.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected True or False, got '{s}'")),
    }
}

/// Where the server binds, decoded from `PGWS_HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPreference {
    /// `*`: every IPv4 and IPv6 address (a dual-stack socket when IPv6 exists).
    Any,
    /// `*4`: every IPv4 address (the original's default).
    AnyPreferV4,
    /// `!4`: every IPv4 address, IPv4 only.
    V4Only,
    /// `*6`: every address through a dual-stack IPv6 socket, falling back to IPv4.
    AnyPreferV6,
    /// `!6`: every IPv6 address, IPv6 only.
    V6Only,
    /// A host name or an address literal.
    Named(String),
}

impl HostPreference {
    /// Decodes Warp's host-preference syntax.
    pub fn parse(s: &str) -> Self {
        match s {
            "*" => Self::Any,
            "*4" => Self::AnyPreferV4,
            "!4" => Self::V4Only,
            "*6" => Self::AnyPreferV6,
            "!6" => Self::V6Only,
            other => Self::Named(other.to_string()),
        }
    }
}

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
    pub listen_channel: String,
    /// Channel for connection events, if any.
    pub meta_channel: Option<String>,
    /// What non-websocket requests get.
    pub site: Site,
    /// Size of the NOTIFY pool.
    pub pool_size: usize,
    /// Start-up attempts for the LISTEN connection; `None` = retry for ever.
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
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Which PostgreSQL channels reach sockets.
    pub channel_mode: ChannelMode,
    /// Shape of client messages.
    pub message_format: MessageFormat,
    /// Where plain HTTP requests are forwarded, if anywhere.
    pub upstream: Option<String>,
}

/// Which PostgreSQL channels reach sockets (`PGWS_CHANNEL_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelMode {
    /// Everything through the listen channel, routed by the JSON `channel` field.
    ListenChannel,
    /// Each socket channel is a PostgreSQL channel, LISTENed on demand.
    Direct,
    /// Both at once.
    Both,
}

impl ChannelMode {
    /// Whether the listen channel is LISTENed and routed.
    pub fn uses_listen_channel(self) -> bool {
        self != Self::Direct
    }

    /// Whether socket channels are LISTENed directly.
    pub fn uses_direct(self) -> bool {
        self != Self::ListenChannel
    }
}

/// Shape of the JSON a client message becomes (`PGWS_MESSAGE_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFormat {
    /// `{"channel","event":"WebsocketMessage","payload","claims"}`.
    PostgresWebsockets,
    /// postgrest-ws: `{"claims","payload"}` on the channel itself.
    PostgrestWs,
    /// The first postgrest-ws: `{"userClaims","payload"}` on the channel itself.
    PostgrestWsLegacy,
}

/// Abuse limits; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// New websockets per second per client address.
    pub connections: u32,
    /// Messages per second per socket.
    pub messages: u32,
    /// Bytes per second per socket.
    pub bytes: u32,
    /// Open websockets per token subject.
    pub per_subject: usize,
}

/// What the server answers to plain HTTP requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Site {
    /// `200 Hello, Web!` for everything, as the original without `PGWS_ROOT_PATH`.
    Hello,
    /// Static files from a directory (`PGWS_ROOT_PATH`).
    Directory(PathBuf),
    /// The example page compiled into the binary (embedded mode).
    Builtin,
}

/// PEM files for native TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub certificate: PathBuf,
    /// Private key.
    pub key: PathBuf,
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
    /// A file named with `@file` could not be read.
    #[error("{var}: cannot read file '{path}': {source}")]
    File {
        /// The variable.
        var: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `PGWS_JWT_SECRET_BASE64=True` but the secret is not base64.
    #[error("PGWS_JWT_SECRET: not valid base64 (PGWS_JWT_SECRET_BASE64 is True): {0}")]
    Base64(base64::DecodeError),
    /// The secret parsed as JSON but is not a usable JWK / JWK Set.
    #[error("PGWS_JWT_SECRET: {0}")]
    Key(#[from] KeyError),
    /// The database URI does not parse.
    #[error("PGWS_DB_URI: cannot use the connection string: {0}")]
    DbUri(crate::pg::DatabaseError),
    /// A channel name PostgreSQL cannot use.
    #[error("{var}: '{value}' {reason}")]
    Channel {
        /// The variable.
        var: &'static str,
        /// The value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value that does not make sense.
    #[error("{var}: '{value}' {reason}")]
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
                .map_err(|source| ConfigError::File {
                    var: "PGWS_DB_URI",
                    path: path.to_string(),
                    source,
                })?
                .trim()
                .to_string(),
            None => db_uri,
        };
        let db = crate::pg::Database::parse(&db_uri).map_err(ConfigError::DbUri)?;

        check_channel("PGWS_LISTEN_CHANNEL", &self.listen_channel)?;
        if let Some(meta) = &self.meta_channel {
            check_channel("PGWS_META_CHANNEL", meta)?;
        }

        let site = match (&self.root_path, self.embedded) {
            (Some(root), _) => {
                if !root.is_dir() {
                    return Err(ConfigError::RootPath(root.display().to_string()));
                }
                Site::Directory(root.clone())
            }
            (None, true) => Site::Builtin,
            (None, false) => Site::Hello,
        };

        let channel_mode = match self.channel_mode.as_str() {
            "direct" => ChannelMode::Direct,
            "both" => ChannelMode::Both,
            _ => ChannelMode::ListenChannel,
        };
        let message_format = match self.message_format.as_str() {
            "postgrest-ws" => MessageFormat::PostgrestWs,
            "postgrest-ws-legacy" => MessageFormat::PostgrestWsLegacy,
            _ => MessageFormat::PostgresWebsockets,
        };
        if message_format != MessageFormat::PostgresWebsockets && !channel_mode.uses_direct() {
            return Err(ConfigError::Value {
                var: "PGWS_MESSAGE_FORMAT",
                value: self.message_format.clone(),
                reason: "NOTIFYs on the channel itself, which sockets only hear with PGWS_CHANNEL_MODE=direct or both".into(),
            });
        }
        if let Some(url) = &self.upstream {
            crate::proxy::Upstream::new(url).map_err(|e| ConfigError::Value {
                var: "PGWS_UPSTREAM",
                value: url.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(Config {
            db,
            keys,
            host: HostPreference::parse(&self.host),
            port: self.port,
            listen_channel: self.listen_channel.clone(),
            meta_channel: self.meta_channel.clone(),
            site,
            pool_size: usize::from(self.pool_size),
            startup_retries: match self.check_listener_interval {
                Some(_) => None,
                None => Some(self.retries.max(1)),
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
                default_mode: self.default_mode.clone(),
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
            upstream: self.upstream.clone(),
            trusted_proxies: match list(self.trusted_proxies.as_deref()) {
                None => Vec::new(),
                Some(items) => items
                    .iter()
                    .map(|a| {
                        a.parse().map_err(|_| ConfigError::Value {
                            var: "PGWS_TRUSTED_PROXIES",
                            value: a.clone(),
                            reason: "is not an IP address".into(),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
        })
    }

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

/// Splits a comma-separated setting; `None` when unset or empty.
fn list(value: Option<&str>) -> Option<Vec<String>> {
    let items: Vec<String> = value?
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    (!items.is_empty()).then_some(items)
}

/// PostgreSQL truncates identifiers to 63 bytes; `pg_notify` refuses longer names, and a LISTEN
/// on a longer name would silently listen to the truncated one.
fn check_channel(var: &'static str, value: &str) -> Result<(), ConfigError> {
    let reason = if value.is_empty() {
        "is empty"
    } else if value.len() > 63 {
        "is longer than PostgreSQL's 63-byte channel name limit"
    } else if value.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(ConfigError::Channel {
        var,
        value: value.to_string(),
        reason,
    })
}

/// Reads `@file` secrets (one trailing newline removed, as the original) and decodes base64.
fn load_secret(secret: &str, is_base64: bool) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = match secret.strip_prefix('@') {
        Some(path) => std::fs::read(path).map_err(|source| ConfigError::File {
            var: "PGWS_JWT_SECRET",
            path: path.to_string(),
            source,
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

/// The original's help text for missing variables, plus a pointer to embedded mode.
fn missing_help(errors: &[&str]) -> String {
    let mut out = String::from(
        "You need to configure some environment variables to start the service.\n\n\
         Available environment variables:\n",
    );
    for (name, help) in [
        ("PGWS_DB_URI", "PostgreSQL connection string (required)"),
        ("PGWS_JWT_SECRET", "secret to verify JWTs (required)"),
        (
            "PGWS_JWT_SECRET_BASE64",
            "the secret is base64 (default: False)",
        ),
        ("PGWS_HOST", "address to bind (default: *4)"),
        ("PGWS_PORT", "port to bind (default: 3000)"),
        (
            "PGWS_LISTEN_CHANNEL",
            "channel to LISTEN on (default: postgres-websockets-listener)",
        ),
        (
            "PGWS_META_CHANNEL",
            "channel for connection events (optional)",
        ),
        ("PGWS_ROOT_PATH", "static files directory (optional)"),
        ("PGWS_POOL_SIZE", "NOTIFY connections (default: 10)"),
        ("PGWS_RETRIES", "start-up connection attempts (default: 5)"),
        (
            "PGWS_CHECK_LISTENER_INTERVAL",
            "listener check interval in ms (optional)",
        ),
        ("PGWS_CERTIFICATE_FILE", "TLS certificate (optional)"),
        ("PGWS_KEY_FILE", "TLS key (optional)"),
    ] {
        out.push_str(&format!("  {name:<30} {help}\n"));
    }
    out.push_str("\nParsing errors:\n");
    for e in errors {
        out.push_str(&format!("  {e}\n"));
    }
    out.push_str(
        "\nHint: `pgws --embedded` starts pgws with a private, throwaway PostgreSQL to try it out.\n\
         Run `pgws --help` for every option.",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut full = vec!["pgws"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).expect("parses")
    }

    #[test]
    fn bool_values_in_any_case() {
        for t in ["True", "true", "TRUE", "1"] {
            assert_eq!(parse_bool(t), Ok(true));
        }
        for f in ["False", "false", "FALSE", "0"] {
            assert_eq!(parse_bool(f), Ok(false));
        }
        assert!(parse_bool("maybe").unwrap_err().contains("maybe"));
    }

    #[test]
    fn unparsable_port_names_variable_and_value() {
        let err = Cli::try_parse_from(["pgws", "--port", "abc"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("PGWS_PORT"), "{err}");
        assert!(err.contains("abc"), "{err}");
    }

    #[test]
    fn missing_required_lists_both() {
        let err = cli(&[]).resolve(None, None).unwrap_err().to_string();
        assert!(err.contains("PGWS_DB_URI is unset"), "{err}");
        assert!(err.contains("PGWS_JWT_SECRET is unset"), "{err}");
        assert!(err.contains("--embedded"), "{err}");
    }

    #[test]
    fn empty_db_uri_is_reported() {
        let err = cli(&["--db-uri", "", "--jwt-secret", DEV_SECRET])
            .resolve(None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PGWS_DB_URI is empty"), "{err}");
    }

    #[test]
    fn tls_needs_both_files() {
        let err = cli(&[
            "--db-uri",
            "postgres://x/y",
            "--jwt-secret",
            DEV_SECRET,
            "--key-file",
            "k",
        ])
        .resolve(None, None)
        .unwrap_err()
        .to_string();
        assert!(err.contains("PGWS_KEY_FILE"), "{err}");
    }

    #[test]
    fn short_hmac_secret_is_a_start_up_error() {
        let err = cli(&["--db-uri", "postgres://u@h/d", "--jwt-secret", "short"])
            .resolve(None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("5 bytes") && err.contains("32"), "{err}");
    }

    #[test]
    fn algorithm_allow_list() {
        let c = cli(&["--db-uri", "postgres://u@h/d", "--jwt-secret", DEV_SECRET]);
        let mut c2 = c.clone();
        c2.jwt_algorithms = Some("RS256".into());
        let err = c2.resolve(None, None).unwrap_err().to_string();
        assert!(err.contains("PGWS_JWT_ALGORITHMS"), "{err}");
        c2.jwt_algorithms = Some("HS256, nope".into());
        let err = c2.resolve(None, None).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        c2.jwt_algorithms = Some("HS256".into());
        assert!(c2.resolve(None, None).is_ok());
    }

    #[test]
    fn host_forms() {
        assert_eq!(HostPreference::parse("*"), HostPreference::Any);
        assert_eq!(HostPreference::parse("*4"), HostPreference::AnyPreferV4);
        assert_eq!(HostPreference::parse("!4"), HostPreference::V4Only);
        assert_eq!(HostPreference::parse("*6"), HostPreference::AnyPreferV6);
        assert_eq!(HostPreference::parse("!6"), HostPreference::V6Only);
        assert_eq!(
            HostPreference::parse("127.0.0.1"),
            HostPreference::Named("127.0.0.1".into())
        );
    }

    #[test]
    fn base64_secret_accepts_url_alphabet() {
        let bytes = load_secret("cmVhbGx5cmVhbGx5cmVhbGx5cmVhbGx5dmVyeXNhZmU", true).unwrap();
        assert_eq!(bytes, b"reallyreallyreallyreallyverysafe");
        let bytes = load_secret("-_8.", true).unwrap();
        assert_eq!(bytes, vec![0xfb, 0xff]);
        assert!(matches!(
            load_secret("%%%", true),
            Err(ConfigError::Base64(_))
        ));
    }

    #[test]
    fn secret_file_loses_one_newline() {
        let dir = std::env::temp_dir().join(format!("pgws-secret-{}", std::process::id()));
        std::fs::write(&dir, b"abc\n\n").unwrap();
        let bytes = load_secret(&format!("@{}", dir.display()), false).unwrap();
        std::fs::remove_file(&dir).ok();
        assert_eq!(bytes, b"abc\n");
    }

    #[test]
    fn defaults_match_the_original() {
        let c = cli(&[
            "--db-uri",
            "postgres://u@localhost/db",
            "--jwt-secret",
            DEV_SECRET,
        ])
        .resolve(None, None)
        .unwrap();
        assert_eq!(c.port, 3000);
        assert_eq!(c.host, HostPreference::AnyPreferV4);
        assert_eq!(c.listen_channel, "postgres-websockets-listener");
        assert_eq!(c.pool_size, 10);
        assert_eq!(c.startup_retries, Some(5));
        assert_eq!(c.site, Site::Hello);
        assert_eq!(c.ping_interval, Some(Duration::from_secs(30)));
    }

    #[test]
    fn channel_names_are_checked() {
        let long = "x".repeat(64);
        let err = cli(&[
            "--db-uri",
            "postgres://u@h/d",
            "--jwt-secret",
            DEV_SECRET,
            "--listen-channel",
            &long,
        ])
        .resolve(None, None)
        .unwrap_err()
        .to_string();
        assert!(err.contains("PGWS_LISTEN_CHANNEL"), "{err}");
    }
}
