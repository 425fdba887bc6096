//! Command-line interface: global options shared by every scenario and one
//! sub-command per scenario (`fanout`, `ingest`, `idle`).

use clap::{Args, Parser, Subcommand};

/// Development secret of postgres-websockets (and of pgws `--embedded`).
pub const DEV_SECRET: &str =
    "auwhfdnskjhewfi34uwehdlaehsfkuaeiskjnfduierhfsiweskjcnzeiluwhskdewishdnpwe";

/// Load generator for servers that speak the postgres-websockets protocol.
///
/// Traffic goes only to 127.0.0.1/localhost. Every phase is bounded in count
/// and time; the tool stops by itself. Prints a human summary and one JSON
/// line (starting with `{`) per run on stdout; progress goes to stderr.
#[derive(Debug, Parser)]
#[command(name = "pgws-bench", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Options shared by all scenarios.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// WebSocket server host (only 127.0.0.1 or localhost are accepted).
    #[arg(long, global = true, default_value = "127.0.0.1")]
    pub host: String,
    /// WebSocket server port.
    #[arg(long, global = true, default_value_t = 3000)]
    pub port: u16,
    /// HS256 secret used to sign the tokens.
    #[arg(long, global = true, default_value = DEV_SECRET)]
    pub secret: String,
    /// PostgreSQL connection string (libpq key=value form; `host=` may be a
    /// unix socket directory). Required by fanout and ingest.
    #[arg(long, global = true)]
    pub pg: Option<String>,
    /// Channel the server LISTENs on.
    #[arg(long, global = true, default_value = "postgres-websockets-listener")]
    pub listen_channel: String,
    /// PID of the server process, for CPU time and RSS (from /proc).
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Worker threads of the generator's runtime (default: number of CPUs).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Hard cap on the whole run, in seconds.
    #[arg(long, global = true, default_value_t = 900)]
    pub max_duration: u64,
    /// Free text copied into the JSON line (e.g. the scenario's name in a script).
    #[arg(long, global = true, default_value = "")]
    pub label: String,
    /// Number of loopback source addresses 127.0.0.1..127.0.0.N to spread
    /// client sockets over (bind before connect).
    #[arg(long, global = true, default_value_t = 8)]
    pub source_addrs: u8,
    /// Concurrent connection attempts while opening sockets.
    #[arg(long, global = true, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Use the `/<jwt>` URL form with a `channels` claim instead of
    /// `/<channel>/<jwt>`.
    #[arg(long, global = true)]
    pub token_url: bool,
    /// Timeout of one TCP connect + WebSocket handshake, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// C subscribers over K channels; direct pg_notify publishers.
    Fanout(FanoutArgs),
    /// W websocket writers; a direct LISTEN connection measures arrivals.
    Ingest(IngestArgs),
    /// C idle authenticated connections; server RSS per connection.
    Idle(IdleArgs),
}

/// How messages are paced (shared by fanout publishers and ingest writers).
#[derive(Debug, Clone, Args)]
pub struct Pacing {
    /// Total messages per second over all senders (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Total number of messages (over all senders). Default: rate x duration,
    /// or 1000 when no rate is set.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Duration in seconds, used with --rate when --messages is not given.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Send in bursts of this many messages (over all senders), as fast as
    /// possible, separated by --burst-interval-ms. 0 = no bursts.
    #[arg(long, default_value_t = 0)]
    pub burst: u64,
    /// Pause between bursts, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub burst_interval_ms: u64,
    /// Payload size in bytes of each message (padded JSON).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

/// Options of the `fanout` scenario.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Number of subscriber sockets.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Number of channels; subscriber i listens on channel i mod K.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Channel name prefix (channel k is `<prefix><k>`).
    #[arg(long, default_value = "c")]
    pub channel_prefix: String,
    /// Number of publisher PostgreSQL connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Notifications per transaction (1 = one `SELECT pg_notify` per message).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Queries in flight per publisher connection (pipelining).
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    #[command(flatten)]
    pub pacing: Pacing,
    #[command(flatten)]
    pub drain: Drain,
    /// Sample the server's RSS every this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub rss_interval_ms: u64,
    /// Also report latency to the client kernel's receipt (`SO_TIMESTAMPNS`), which leaves out
    /// the generator's own backlog. Costs the generator ≈4 us more per frame on a 2-core VM, so
    /// it is off in the standard runs.
    #[arg(long)]
    pub kernel_timestamps: bool,
}

/// Options of the `ingest` scenario.
#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Number of writer sockets.
    #[arg(long, default_value_t = 100)]
    pub writers: usize,
    /// Token mode of the writers: `w` or `rw`.
    #[arg(long, default_value = "w")]
    pub mode: String,
    /// Number of channels; writer i writes on channel i mod K.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Channel name prefix.
    #[arg(long, default_value = "ing")]
    pub channel_prefix: String,
    /// Optional read-only subscribers on the writers' channels (round trip).
    #[arg(long, default_value_t = 0)]
    pub subscribers: usize,
    /// Maximum frames written per write call when a writer is behind.
    #[arg(long, default_value_t = 16)]
    pub write_batch: usize,
    #[command(flatten)]
    pub pacing: Pacing,
    #[command(flatten)]
    pub drain: Drain,
    /// Sample the server's RSS every this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub rss_interval_ms: u64,
}

/// Options of the `idle` scenario.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Number of idle connections.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Number of channels the connections are spread over.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Channel name prefix.
    #[arg(long, default_value = "idle")]
    pub channel_prefix: String,
    /// Seconds to wait after the last connection before measuring RSS.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// Seconds to hold the connections after measuring.
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Check liveness at the end: publish one notification per channel
    /// (needs --pg) and count the sockets that receive it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub verify: bool,
}

/// When to stop waiting for outstanding deliveries.
#[derive(Debug, Clone, Args)]
pub struct Drain {
    /// Stop waiting once nothing arrived for this many seconds.
    #[arg(long, default_value_t = 3.0)]
    pub drain_idle: f64,
    /// Stop waiting this many seconds after the last send at the latest.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// Warm-up: give up waiting for every socket to be subscribed after this
    /// many seconds.
    #[arg(long, default_value_t = 20.0)]
    pub ready_timeout: f64,
}
