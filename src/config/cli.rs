//! The command line and the environment as clap sees them: every `PGWS_*` variable of
//! postgres-websockets, each also a flag. Only parsing lives here; [`super::Cli::resolve`] turns
//! the result into a [`super::Config`].

use std::path::PathBuf;

use clap::Parser;

use crate::routing::{ChannelMode, MessageFormat};
use crate::source::SourceKind;

/// Command line and environment, as clap sees them. Converted into [`Config`] by [`Cli::resolve`].
#[derive(Debug, Clone, Parser)]
#[command(
    name = "pgws",
    version,
    about = "Connects websockets to PostgreSQL asynchronous notifications (a drop-in postgres-websockets).",
    after_help = "Every option is also read from the environment variable shown in brackets; a flag wins over the variable.\nTry it without any setup: pgws --embedded",
    disable_help_flag = true
)]
pub struct Cli {
    // `-h` and `--help` print the same text: the settings grouped by topic, one paragraph each
    // (clap's long form added a blank line and three more lines per setting, 470 lines in all).
    /// Print help
    #[arg(short = 'h', long, action = clap::ArgAction::HelpShort)]
    pub help: Option<bool>,

    /// PostgreSQL connection string (URI or key=value), or @file to read it from a file.
    // The value is hidden because it may hold a password; `from_env_and_args` shows it redacted.
    #[arg(
        long,
        env = "PGWS_DB_URI",
        help_heading = "Database",
        value_name = "PGWS_DB_URI",
        hide_env_values = true
    )]
    pub db_uri: Option<String>,

    /// Secret to verify JWTs: raw HMAC bytes, a JWK, or a JWK Set; @file reads it from a file.
    #[arg(
        long,
        env = "PGWS_JWT_SECRET",
        help_heading = "Tokens",
        value_name = "PGWS_JWT_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub jwt_secret: Option<String>,

    /// The secret is base64 (or base64url) encoded. True or False (also true/false, yes/no,
    /// on/off, 1/0, in any case).
    #[arg(long, env = "PGWS_JWT_SECRET_BASE64", help_heading = "Tokens", value_name = "PGWS_JWT_SECRET_BASE64",
          default_value = "False", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub jwt_secret_base64: bool,

    /// Address to bind: `*` (any, IPv4 and IPv6), `*4` (any, IPv4), `!4` (IPv4 only), `*6` (any,
    /// prefer IPv6), `!6` (IPv6 only), or a host name / IP address.
    #[arg(
        long,
        env = "PGWS_HOST",
        help_heading = "HTTP and TLS",
        value_name = "PGWS_HOST",
        default_value = "*4"
    )]
    pub host: String,

    /// TCP port for HTTP, static files and websockets (0 picks a free port).
    #[arg(
        long,
        env = "PGWS_PORT",
        help_heading = "HTTP and TLS",
        value_name = "PGWS_PORT",
        default_value_t = 3000
    )]
    pub port: u16,

    /// The PostgreSQL channel pgws LISTENs on and NOTIFYs to.
    #[arg(
        long,
        env = "PGWS_LISTEN_CHANNEL",
        help_heading = "Channels and messages",
        value_name = "PGWS_LISTEN_CHANNEL",
        default_value = "postgres-websockets-listener"
    )]
    pub listen_channel: String,

    /// Channel that receives ConnectionOpen / ConnectionClose events (unset: no events).
    #[arg(
        long,
        env = "PGWS_META_CHANNEL",
        help_heading = "Channels and messages",
        value_name = "PGWS_META_CHANNEL"
    )]
    pub meta_channel: Option<String>,

    /// Directory served as static files to non-websocket requests (unset: "Hello, Web!").
    #[arg(
        long,
        env = "PGWS_ROOT_PATH",
        help_heading = "HTTP and TLS",
        value_name = "PGWS_ROOT_PATH"
    )]
    pub root_path: Option<PathBuf>,

    /// Number of connections used to send NOTIFY (the LISTEN connection is separate).
    #[arg(long, env = "PGWS_POOL_SIZE", help_heading = "Database", value_name = "PGWS_POOL_SIZE", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub pool_size: u16,

    /// Attempts to open the LISTEN connection at start-up before giving up (exit 1). Unset: pgws
    /// retries for ever and refuses handshakes with 503 meanwhile; unused when
    /// PGWS_CHECK_LISTENER_INTERVAL is set (then pgws retries for ever).
    #[arg(
        long,
        env = "PGWS_RETRIES",
        help_heading = "Database",
        value_name = "PGWS_RETRIES"
    )]
    pub retries: Option<u32>,

    /// Milliseconds between health checks of the LISTEN connection (unset: 10000). A failed
    /// check reconnects it.
    #[arg(
        long,
        env = "PGWS_CHECK_LISTENER_INTERVAL",
        help_heading = "Database",
        value_name = "PGWS_CHECK_LISTENER_INTERVAL"
    )]
    pub check_listener_interval: Option<u64>,

    /// PEM certificate chain; with PGWS_KEY_FILE pgws serves only TLS (https/wss).
    #[arg(
        long,
        env = "PGWS_CERTIFICATE_FILE",
        help_heading = "HTTP and TLS",
        value_name = "PGWS_CERTIFICATE_FILE"
    )]
    pub certificate_file: Option<PathBuf>,

    /// PEM private key for PGWS_CERTIFICATE_FILE.
    #[arg(
        long,
        env = "PGWS_KEY_FILE",
        help_heading = "HTTP and TLS",
        value_name = "PGWS_KEY_FILE"
    )]
    pub key_file: Option<PathBuf>,

    /// Start a private, throwaway PostgreSQL from the installed server binaries and use it. True
    /// or False (also true/false, yes/no, on/off, 1/0, in any case); `--embedded` alone is True.
    #[arg(long, env = "PGWS_EMBEDDED", help_heading = "Database", value_name = "PGWS_EMBEDDED", default_value = "False",
          value_parser = parse_bool, num_args = 0..=1, default_missing_value = "True",
          action = clap::ArgAction::Set)]
    pub embedded: bool,

    /// Keep the embedded cluster in this directory across restarts (implies --embedded):
    /// `initdb` runs only when it is empty or missing, later starts reuse its tables, slots and
    /// WAL, so that positions survive a restart (`--source wal`). pgws stops the cluster when it
    /// exits and never removes the directory.
    #[arg(
        long,
        env = "PGWS_EMBEDDED_DIR",
        help_heading = "Database",
        value_name = "PGWS_EMBEDDED_DIR"
    )]
    pub embedded_dir: Option<PathBuf>,

    /// Most messages waiting to be written to one socket; a socket that falls further behind is
    /// closed with code 4000.
    #[arg(
        long,
        env = "PGWS_MAX_QUEUE_MESSAGES",
        help_heading = "Limits",
        value_name = "PGWS_MAX_QUEUE_MESSAGES",
        default_value_t = 4096
    )]
    pub max_queue_messages: usize,

    /// Most bytes waiting to be written to one socket (see PGWS_MAX_QUEUE_MESSAGES).
    #[arg(long, env = "PGWS_MAX_QUEUE_BYTES", help_heading = "Limits", value_name = "PGWS_MAX_QUEUE_BYTES",
          default_value_t = 4 * 1024 * 1024)]
    pub max_queue_bytes: usize,

    /// Largest websocket message accepted from a client, in bytes; larger ones close the socket
    /// with 1009. Messages that cannot fit PostgreSQL's 8000-byte NOTIFY get an error event.
    #[arg(long, env = "PGWS_MAX_MESSAGE_SIZE", help_heading = "Limits", value_name = "PGWS_MAX_MESSAGE_SIZE",
          default_value_t = 64 * 1024)]
    pub max_message_size: usize,

    /// Seconds between server pings on every socket (the original's 30; 0 disables). A peer that
    /// sends nothing, not even a pong, for two intervals is closed with 4001.
    #[arg(
        long,
        env = "PGWS_PING_INTERVAL",
        help_heading = "Operations",
        value_name = "PGWS_PING_INTERVAL",
        default_value_t = 30
    )]
    pub ping_interval: u64,

    /// Address (host:port) of the admin listener serving /metrics, /health and /ready; unset:
    /// no admin listener. Keep it on loopback or a private network.
    #[arg(
        long,
        env = "PGWS_ADMIN_ADDRESS",
        help_heading = "Operations",
        value_name = "PGWS_ADMIN_ADDRESS"
    )]
    pub admin_address: Option<String>,

    /// Most websockets open at once; further handshakes get 503.
    #[arg(
        long,
        env = "PGWS_MAX_CONNECTIONS",
        help_heading = "Limits",
        value_name = "PGWS_MAX_CONNECTIONS",
        default_value_t = 100_000
    )]
    pub max_connections: usize,

    /// Most channels one socket may be bound to; more is refused with 400.
    #[arg(
        long,
        env = "PGWS_MAX_CHANNELS",
        help_heading = "Limits",
        value_name = "PGWS_MAX_CHANNELS",
        default_value_t = 1000
    )]
    pub max_channels: usize,

    /// Seconds a client may take to send its request head (and finish TLS).
    #[arg(
        long,
        env = "PGWS_HANDSHAKE_TIMEOUT",
        help_heading = "Limits",
        value_name = "PGWS_HANDSHAKE_TIMEOUT",
        default_value_t = 30
    )]
    pub handshake_timeout: u64,

    /// Seconds the server waits at shutdown for sockets to close and NOTIFYs to be sent.
    #[arg(
        long,
        env = "PGWS_SHUTDOWN_TIMEOUT",
        help_heading = "Operations",
        value_name = "PGWS_SHUTDOWN_TIMEOUT",
        default_value_t = 10
    )]
    pub shutdown_timeout: u64,

    /// Tell sockets (and the meta channel) when notifications may have been lost while the LISTEN
    /// connection was down. False: strict compatibility, no extra frames. True or False (also
    /// true/false, yes/no, on/off, 1/0, in any case).
    #[arg(long, env = "PGWS_GAP_EVENTS", help_heading = "Channels and messages", value_name = "PGWS_GAP_EVENTS", default_value = "True",
          value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub gap_events: bool,

    /// Log format: `text` or `json` (one object per line).
    #[arg(
        long,
        env = "PGWS_LOG_FORMAT",
        help_heading = "Operations",
        value_name = "PGWS_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Comma-separated JWT algorithms to accept (e.g. `RS256,ES256`); unset: every algorithm the
    /// configured keys support.
    #[arg(
        long,
        env = "PGWS_JWT_ALGORITHMS",
        help_heading = "Tokens",
        value_name = "PGWS_JWT_ALGORITHMS"
    )]
    pub jwt_algorithms: Option<String>,

    /// Comma-separated accepted `aud` values; unset: `aud` is not checked.
    #[arg(
        long,
        env = "PGWS_JWT_AUDIENCE",
        help_heading = "Tokens",
        value_name = "PGWS_JWT_AUDIENCE"
    )]
    pub jwt_audience: Option<String>,

    /// Comma-separated accepted `iss` values; unset: `iss` is not checked.
    #[arg(
        long,
        env = "PGWS_JWT_ISSUER",
        help_heading = "Tokens",
        value_name = "PGWS_JWT_ISSUER"
    )]
    pub jwt_issuer: Option<String>,

    /// Seconds of clock skew allowed for `exp`, `nbf` and `iat` (the original: 0).
    #[arg(
        long,
        env = "PGWS_JWT_LEEWAY",
        help_heading = "Tokens",
        value_name = "PGWS_JWT_LEEWAY",
        default_value_t = 0
    )]
    pub jwt_leeway: u64,

    /// Where the mode claim is: a top-level name (e.g. `https://example.com/mode`) or a JSON
    /// Pointer starting with `/` (e.g. `/app_metadata/pgws/mode`).
    #[arg(
        long,
        env = "PGWS_CLAIM_MODE",
        help_heading = "Tokens",
        value_name = "PGWS_CLAIM_MODE",
        default_value = "mode"
    )]
    pub claim_mode: String,

    /// Where the single-channel claim is (see PGWS_CLAIM_MODE).
    #[arg(
        long,
        env = "PGWS_CLAIM_CHANNEL",
        help_heading = "Tokens",
        value_name = "PGWS_CLAIM_CHANNEL",
        default_value = "channel"
    )]
    pub claim_channel: String,

    /// Where the channel-list claim is (see PGWS_CLAIM_MODE).
    #[arg(
        long,
        env = "PGWS_CLAIM_CHANNELS",
        help_heading = "Tokens",
        value_name = "PGWS_CLAIM_CHANNELS",
        default_value = "channels"
    )]
    pub claim_channels: String,

    /// Mode (`r`, `w` or `rw`) for tokens without a mode claim; unset: such tokens are refused
    /// with "Missing mode".
    #[arg(
        long,
        env = "PGWS_DEFAULT_MODE",
        help_heading = "Tokens",
        value_name = "PGWS_DEFAULT_MODE"
    )]
    pub default_mode: Option<DefaultMode>,

    /// Comma-separated browser origins allowed to open websockets (e.g.
    /// `https://app.example.com`); unset: any. Requests without an Origin header are allowed.
    #[arg(
        long,
        env = "PGWS_ALLOWED_ORIGINS",
        help_heading = "HTTP and TLS",
        value_name = "PGWS_ALLOWED_ORIGINS"
    )]
    pub allowed_origins: Option<String>,

    /// New websockets per second from one client address (burst: twice as many); 0: no limit.
    #[arg(
        long,
        env = "PGWS_RATE_CONNECTIONS",
        help_heading = "Limits",
        value_name = "PGWS_RATE_CONNECTIONS",
        default_value_t = 200
    )]
    pub rate_connections: u32,

    /// Client addresses PGWS_RATE_CONNECTIONS does not apply to: comma-separated addresses, CIDR
    /// ranges and `private` (loopback, private ranges, link-local, carrier-grade NAT: proxies,
    /// load balancers and NATs share one address among many clients); `none`: limit every address.
    #[arg(
        long,
        env = "PGWS_RATE_CONNECTIONS_EXEMPT",
        help_heading = "Limits",
        value_name = "PGWS_RATE_CONNECTIONS_EXEMPT",
        default_value = "private"
    )]
    pub rate_connections_exempt: String,

    /// Messages per second one socket may send (burst: twice as many); 0: no limit.
    #[arg(
        long,
        env = "PGWS_RATE_MESSAGES",
        help_heading = "Limits",
        value_name = "PGWS_RATE_MESSAGES",
        default_value_t = 1000
    )]
    pub rate_messages: u32,

    /// Bytes per second one socket may send (burst: twice as many); 0: no limit.
    #[arg(long, env = "PGWS_RATE_BYTES", help_heading = "Limits", value_name = "PGWS_RATE_BYTES",
          default_value_t = 1024 * 1024)]
    pub rate_bytes: u32,

    /// Most websockets open at once with the same token `sub`; 0: no limit.
    #[arg(
        long,
        env = "PGWS_MAX_CONNECTIONS_PER_SUBJECT",
        help_heading = "Limits",
        value_name = "PGWS_MAX_CONNECTIONS_PER_SUBJECT",
        default_value_t = 0
    )]
    pub max_connections_per_subject: usize,

    /// Comma-separated addresses (or CIDR ranges, or `private`) of reverse proxies whose
    /// X-Forwarded-For is trusted for the client address (rate limits, logs).
    #[arg(
        long,
        env = "PGWS_TRUSTED_PROXIES",
        help_heading = "HTTP and TLS",
        value_name = "PGWS_TRUSTED_PROXIES"
    )]
    pub trusted_proxies: Option<String>,

    /// Which PostgreSQL channels reach sockets: `listen-channel` (postgres-websockets: everything
    /// through PGWS_LISTEN_CHANNEL, routed by the JSON `channel` field), `direct` (a socket on
    /// channel X gets every NOTIFY X; client messages are NOTIFYed on X), or `both`.
    #[arg(
        long,
        env = "PGWS_CHANNEL_MODE",
        help_heading = "Channels and messages",
        value_name = "PGWS_CHANNEL_MODE",
        default_value = "listen-channel"
    )]
    pub channel_mode: ChannelMode,

    /// Shape of client messages: `postgres-websockets` ({"channel","event","payload","claims"}),
    /// `postgrest-ws` ({"claims","payload"} NOTIFYed on the channel itself) or
    /// `postgrest-ws-legacy` ({"userClaims","payload"}).
    #[arg(
        long,
        env = "PGWS_MESSAGE_FORMAT",
        help_heading = "Channels and messages",
        value_name = "PGWS_MESSAGE_FORMAT",
        default_value = "postgres-websockets"
    )]
    pub message_format: MessageFormat,

    /// URL of an HTTP server (PostgREST) that receives every non-websocket request, so that one
    /// port serves the REST API and the websockets.
    #[arg(
        long,
        env = "PGWS_UPSTREAM",
        help_heading = "HTTP and TLS",
        value_name = "PGWS_UPSTREAM"
    )]
    pub upstream: Option<String>,

    /// Seconds after which the server ends an event stream (browsers reconnect by themselves,
    /// with `Last-Event-ID`, and miss nothing), so that long-lived streams spread over nodes
    /// after a deploy; 0: streams last until the client or the token ends them.
    #[arg(
        long,
        env = "PGWS_SSE_MAX_AGE",
        help_heading = "Channels and messages",
        value_name = "PGWS_SSE_MAX_AGE",
        default_value_t = 0
    )]
    pub sse_max_age: u64,

    /// Messages kept per channel for clients that resume (SSE `Last-Event-ID`, websocket
    /// `?last-event-id=`); 0: keep none (every resume starts with a Gap event).
    #[arg(
        long,
        env = "PGWS_REPLAY_MESSAGES",
        help_heading = "Resume",
        value_name = "PGWS_REPLAY_MESSAGES",
        default_value_t = 1000
    )]
    pub replay_messages: usize,

    /// Bytes of message text kept per channel for resuming clients.
    #[arg(long, env = "PGWS_REPLAY_BYTES", help_heading = "Resume", value_name = "PGWS_REPLAY_BYTES",
          default_value_t = 1024 * 1024)]
    pub replay_bytes: usize,

    /// Seconds a message is kept for resuming clients.
    #[arg(
        long,
        env = "PGWS_REPLAY_AGE",
        help_heading = "Resume",
        value_name = "PGWS_REPLAY_AGE",
        default_value_t = 300
    )]
    pub replay_age: u64,

    /// Bytes of message text kept by all channels together for resuming clients.
    #[arg(long, env = "PGWS_REPLAY_MEMORY", help_heading = "Resume", value_name = "PGWS_REPLAY_MEMORY",
          default_value_t = 256 * 1024 * 1024)]
    pub replay_memory: usize,

    /// Where messages come from: `notify` (LISTEN/NOTIFY on PGWS_LISTEN_CHANNEL) or `wal`
    /// (`pg_logical_emit_message` with prefix PGWS_LISTEN_CHANNEL, read from a logical
    /// replication slot: any size, positions that survive restarts and span nodes; needs
    /// wal_level=logical and a role with REPLICATION).
    #[arg(
        long,
        env = "PGWS_SOURCE",
        help_heading = "Reading from the WAL",
        value_name = "PGWS_SOURCE",
        default_value = "notify"
    )]
    pub source: SourceKind,

    /// This node's name among the pgws nodes of one database (WAL source: names its slot);
    /// default `<host name>_<port>`, which cannot collide on one host. Set it where host names
    /// change at every restart (containers), or a restarted node starts a new slot.
    #[arg(
        long,
        env = "PGWS_NODE_ID",
        help_heading = "Reading from the WAL",
        value_name = "PGWS_NODE_ID"
    )]
    pub node_id: Option<String>,

    /// The replication slot of the WAL source (default `pgws_<PGWS_NODE_ID>`, made safe); created
    /// when missing. Letters, digits and `_`, at most 63.
    #[arg(
        long,
        env = "PGWS_WAL_SLOT",
        help_heading = "Reading from the WAL",
        value_name = "PGWS_WAL_SLOT"
    )]
    pub wal_slot: Option<String>,

    /// Where the WAL source reads its slot: a connection string naming a standby (PostgreSQL 16
    /// and later; `target_session_attrs` defaults to `prefer-standby`), while publishes and
    /// checks go to PGWS_DB_URI. Default: PGWS_DB_URI's primary. `@file` reads it from a file.
    #[arg(
        long,
        env = "PGWS_WAL_READ_URI",
        help_heading = "Reading from the WAL",
        value_name = "PGWS_WAL_READ_URI",
        hide_env_values = true
    )]
    pub wal_read_uri: Option<String>,

    /// The publication the WAL source reads its slot with; created (empty: no table changes) when
    /// missing.
    #[arg(
        long,
        env = "PGWS_WAL_PUBLICATION",
        help_heading = "Reading from the WAL",
        value_name = "PGWS_WAL_PUBLICATION",
        default_value = "pgws"
    )]
    pub wal_publication: String,

    /// Rows a row subscription's snapshot may send at most (after its filter); a larger one is
    /// refused with `snapshot_failed` `too_large`, never cut short.
    #[arg(
        long,
        env = "PGWS_SNAPSHOT_MAX_ROWS",
        help_heading = "Reading from the WAL",
        value_name = "PGWS_SNAPSHOT_MAX_ROWS",
        default_value = "1000000"
    )]
    pub snapshot_max_rows: usize,

    /// Seconds a snapshot may take, from its query to its last page queued
    /// (`snapshot_failed` `timeout` after).
    #[arg(
        long,
        env = "PGWS_SNAPSHOT_TIMEOUT",
        help_heading = "Reading from the WAL",
        value_name = "PGWS_SNAPSHOT_TIMEOUT",
        default_value = "120"
    )]
    pub snapshot_timeout: u64,

    /// Snapshots read at once (each holds a database connection and a transaction); more wait
    /// their turn.
    #[arg(
        long,
        env = "PGWS_SNAPSHOT_CONCURRENCY",
        help_heading = "Reading from the WAL",
        value_name = "PGWS_SNAPSHOT_CONCURRENCY",
        default_value = "8"
    )]
    pub snapshot_concurrency: usize,

    /// With authorization by the database: the token claims that row-level security policies
    /// read, comma-separated. Subscribers with the same role and these claims share one cohort
    /// (one authorization query per batch of changes). Empty: every claim but `exp`, `iat`, `nbf`
    /// and `jti`.
    #[arg(
        long,
        env = "PGWS_ROWS_COHORT_CLAIMS",
        help_heading = "Reading from the WAL",
        value_name = "PGWS_ROWS_COHORT_CLAIMS"
    )]
    pub rows_cohort_claims: Option<String>,

    /// Presence in protocol v2 (who follows each channel, shared by the nodes of one database
    /// through control messages on the bus). False: no presence traffic at all, and a
    /// `subscribe` asking for presence is answered `presence_disabled`. True or False (also
    /// true/false, yes/no, on/off, 1/0, in any case).
    #[arg(long, env = "PGWS_PRESENCE", help_heading = "Presence", value_name = "PGWS_PRESENCE", default_value = "True",
          value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub presence: bool,

    /// The token claim that names a presence member (a string; without it, or with another
    /// type, the connection is counted as anonymous).
    #[arg(
        long,
        env = "PGWS_PRESENCE_CLAIM",
        help_heading = "Presence",
        value_name = "PGWS_PRESENCE_CLAIM",
        default_value = "sub"
    )]
    pub presence_claim: String,

    /// Milliseconds (50 to 3600000) between presence heartbeats (each node's full presence
    /// state); a node silent for 3 intervals is dropped from the others' presence.
    #[arg(
        long,
        env = "PGWS_PRESENCE_INTERVAL",
        help_heading = "Presence",
        value_name = "PGWS_PRESENCE_INTERVAL",
        default_value_t = 5000
    )]
    pub presence_interval: u64,

    /// Drops this replication slot of PGWS_DB_URI's database and exits: for a WAL node that is
    /// gone for good, whose slot would otherwise make PostgreSQL keep WAL.
    #[arg(long, value_name = "SLOT", help_heading = "Reading from the WAL")]
    pub drop_wal_slot: Option<String>,

    /// SQL function returning boolean that authorizes every channel a client asks for (`name` or
    /// `schema.name`, taken as quoted identifiers; unset: no checks): called as the token's role
    /// with its claims in `request.jwt.claims` and the channel and mode in `pgws.channel` and
    /// `pgws.mode`. See docs/AUTHORIZATION.md.
    #[arg(
        long,
        env = "PGWS_AUTHZ_FUNCTION",
        help_heading = "Authorization by the database",
        value_name = "PGWS_AUTHZ_FUNCTION"
    )]
    pub authz_function: Option<String>,

    /// Client messages and HTTP publishes call this SQL function `(channel text, message text)`
    /// as the token's role instead of NOTIFY (unset: NOTIFY as before).
    #[arg(
        long,
        env = "PGWS_AUTHZ_WRITE_FUNCTION",
        help_heading = "Authorization by the database",
        value_name = "PGWS_AUTHZ_WRITE_FUNCTION"
    )]
    pub authz_write_function: Option<String>,

    /// Where the role is in the claims (a top-level key, or a JSON Pointer starting with `/`).
    #[arg(
        long,
        env = "PGWS_AUTHZ_ROLE_CLAIM",
        help_heading = "Authorization by the database",
        value_name = "PGWS_AUTHZ_ROLE_CLAIM",
        default_value = "role"
    )]
    pub authz_role_claim: String,

    /// The role of tokens without a role claim (PostgREST's `db-anon-role`; unset: such tokens
    /// are refused with 403).
    #[arg(
        long,
        env = "PGWS_AUTHZ_ANON_ROLE",
        help_heading = "Authorization by the database",
        value_name = "PGWS_AUTHZ_ANON_ROLE"
    )]
    pub authz_anon_role: Option<String>,

    /// Connections of the check pool (separate from the NOTIFY pool).
    #[arg(long, env = "PGWS_AUTHZ_POOL_SIZE", help_heading = "Authorization by the database", value_name = "PGWS_AUTHZ_POOL_SIZE",
          default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub authz_pool_size: u16,

    /// Connections of the write pool.
    #[arg(long, env = "PGWS_AUTHZ_WRITE_POOL_SIZE", help_heading = "Authorization by the database", value_name = "PGWS_AUTHZ_WRITE_POOL_SIZE",
          default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub authz_write_pool_size: u16,

    /// Milliseconds a check may take (its statement_timeout; also the longest wait for a free
    /// pool connection).
    #[arg(long, env = "PGWS_AUTHZ_TIMEOUT", help_heading = "Authorization by the database", value_name = "PGWS_AUTHZ_TIMEOUT",
          default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub authz_timeout: u64,

    /// Milliseconds a write function call may take (its statement_timeout).
    #[arg(long, env = "PGWS_AUTHZ_WRITE_TIMEOUT", help_heading = "Authorization by the database", value_name = "PGWS_AUTHZ_WRITE_TIMEOUT",
          default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub authz_write_timeout: u64,

    /// Write function calls one socket may have in flight (1: in order).
    #[arg(long, env = "PGWS_AUTHZ_WRITE_CONCURRENCY", help_heading = "Authorization by the database", value_name = "PGWS_AUTHZ_WRITE_CONCURRENCY",
          default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub authz_write_concurrency: u16,

    /// Most cached check results (0: every check asks the database).
    #[arg(
        long,
        env = "PGWS_AUTHZ_CACHE_SIZE",
        help_heading = "Authorization by the database",
        value_name = "PGWS_AUTHZ_CACHE_SIZE",
        default_value_t = 10_000
    )]
    pub authz_cache_size: usize,

    /// Seconds between re-checks of every open client, with an emptied cache (0: only on
    /// revocation messages).
    #[arg(
        long,
        env = "PGWS_AUTHZ_RECHECK_INTERVAL",
        help_heading = "Authorization by the database",
        value_name = "PGWS_AUTHZ_RECHECK_INTERVAL",
        default_value_t = 0
    )]
    pub authz_recheck_interval: u64,

    /// Log level or filter (`error`, `warn`, `info`, `debug`, `trace`, or a RUST_LOG-style filter);
    /// RUST_LOG wins when set.
    #[arg(
        long,
        env = "PGWS_LOG_LEVEL",
        help_heading = "Operations",
        value_name = "PGWS_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

impl Cli {
    /// Parses the command line and the environment. An optional variable set to the empty string
    /// counts as unset (as in an env file with `PGWS_META_CHANNEL=`); the two required ones keep
    /// their "is empty" error. A value from the environment that does not parse is reported
    /// under the variable's name (`PGWS_PORT: invalid value 'abc': …`), one from the command
    /// line under the flag's. `--help` shows `PGWS_DB_URI` with its password replaced by `***`.
    pub fn from_env_and_args() -> Result<Self, clap::Error> {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let mut cmd = shown_with_the_environment(Self::command(), |name| {
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        });
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let matches = cmd.try_get_matches_from_mut(&args).map_err(|e| {
            name_the_variable(e, &cmd, &args, |var| std::env::var_os(var).is_some())
        })?;
        Self::from_arg_matches(&matches)
    }
}

/// The command as the environment `var` makes it, each argument changed in place (so that
/// `--help` keeps its order and headings): an optional variable set to the empty string is not
/// read at all; `--help` shows `[env: PGWS_PORT=3001]` for a variable that is set and
/// `[env: PGWS_PORT]` (not clap's `[env: PGWS_PORT=]`, which reads as "set to the empty
/// string") for one that is not; `PGWS_DB_URI` is shown with its password replaced by `***`.
pub(super) fn shown_with_the_environment(
    cmd: clap::Command,
    var: impl Fn(&std::ffi::OsStr) -> Option<String>,
) -> clap::Command {
    cmd.mut_args(|a| {
        let Some(name) = a.get_env().map(ToOwned::to_owned) else {
            return a;
        };
        match var(&name) {
            None => a.hide_env_values(true),
            Some(uri) if name == "PGWS_DB_URI" && !uri.is_empty() => show_redacted(a, &uri),
            Some(v) if v.is_empty() && name != "PGWS_DB_URI" && name != "PGWS_JWT_SECRET" => {
                a.env(None)
            }
            Some(_) => a,
        }
    })
}

/// `PGWS_DB_URI`'s help with the value clap would show, its password replaced by `***`.
fn show_redacted(arg: clap::Arg, uri: &str) -> clap::Arg {
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    let note = format!(
        "[env: PGWS_DB_URI={}]",
        crate::pg::redact::redact_conninfo(uri)
    );
    arg.hide_env(true)
        .help(format!("{help} {note}"))
        .long_help(format!("{help}\n\n{note}"))
}

/// A value that does not parse, reported under the variable's name when it came from the
/// environment (the variable is set and the flag is not on the command line); clap would name
/// the flag (`invalid value 'abc' for '--port <PGWS_PORT>'`), which the user never typed.
pub(super) fn name_the_variable(
    e: clap::Error,
    cmd: &clap::Command,
    args: &[std::ffi::OsString],
    is_set: impl Fn(&str) -> bool,
) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return e;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) else {
        return e;
    };
    let Some(long) = arg
        .strip_prefix("--")
        .and_then(|a| a.split([' ', '=']).next())
    else {
        return e;
    };
    let Some(var) = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .and_then(|v| v.to_str())
        .map(str::to_string)
    else {
        return e;
    };
    let flag = format!("--{long}");
    let on_command_line = args.iter().skip(1).any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    });
    if on_command_line || !is_set(&var) {
        return e;
    }
    let reason = match (e.kind(), e.get(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
            format!("expected one of {}", valid.join(", "))
        }
        _ => std::error::Error::source(&e)
            .map(ToString::to_string)
            .unwrap_or_else(|| "not a valid value".into()),
    };
    // `parse_bool` names the value too, for the flag's message; once is enough here.
    let got = format!(", got '{value}'");
    let reason = reason.strip_suffix(&got).unwrap_or(&reason);
    // Raw, not formatted with the command: clap would add the usage, which its own value errors
    // leave out.
    clap::Error::raw(
        e.kind(),
        format!(
            "{var}: invalid value '{value}': {reason}\n\nFor more information, try '--help'.\n"
        ),
    )
}

/// What every boolean setting accepts, as its help and its error say.
pub(super) const BOOL_VALUES: &str =
    "True or False (also true/false, yes/no, on/off, 1/0, in any case)";

/// Parses `True`/`False` in any case (and `1`/`0`, `yes`/`no`, `on`/`off`), naming the value when
/// it fails.
pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected {BOOL_VALUES}, got '{s}'")),
    }
}

/// `PGWS_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `PGWS_DEFAULT_MODE`: the mode of tokens without a mode claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultMode {
    /// Read only.
    #[value(name = "r")]
    Read,
    /// Write only.
    #[value(name = "w")]
    Write,
    /// Read and write.
    #[value(name = "rw")]
    ReadWrite,
}

impl DefaultMode {
    /// The claim value this stands for.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "r",
            Self::Write => "w",
            Self::ReadWrite => "rw",
        }
    }
}
