//! Command-line interface: global options shared by every scenario and one
//! sub-command per scenario (`fanout`, `ingest`, `idle`, and the event-stream
//! scenarios `sse-fanout`, `sse-idle`, `sse-catchup`, `sse-storm`, `windows`), `chaos`, and the
//! protocol v2 request scenarios `v2-subscribe` and `v2-publish` (`fanout` and `idle` take
//! `--v2`), and `rows` (row changes to filtered row subscriptions).

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
    /// The server's source: `notify` (publish with `pg_notify`) or `wal` (publish with
    /// `pg_logical_emit_message`, for a server with `PGWS_SOURCE=wal`).
    #[arg(long, global = true, value_enum, default_value = "notify")]
    pub source: Source,
    /// The server's admin listener (`PGWS_ADMIN_ADDRESS`, loopback `ip:port`), scraped for
    /// `pgws_window_*` and `pgws_replayed_total` by the event-stream scenarios.
    #[arg(long, global = true)]
    pub admin: Option<String>,
}

/// What the server reads messages from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// LISTEN/NOTIFY.
    Notify,
    /// Logical messages in the WAL.
    Wal,
}

impl Global {
    /// Whether messages are published as logical messages.
    pub fn wal(&self) -> bool {
        self.source == Source::Wal
    }
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
    /// `fanout` with Server-Sent Events streams as subscribers.
    SseFanout(FanoutArgs),
    /// `idle` with idle Server-Sent Events streams.
    SseIdle(IdleArgs),
    /// A stream that missed M messages resumes with Last-Event-ID: time and server CPU to
    /// receive the replay and the first live message.
    SseCatchup(CatchupArgs),
    /// N streams cut at once by the client side while messages flow, all resuming at once
    /// with their Last-Event-ID: time until all are live, server CPU, loss.
    SseStorm(StormArgs),
    /// K busy channels fill their replay windows: pgws_window_* and server RSS.
    Windows(WindowsArgs),
    /// Protocol v2: S sockets subscribe and unsubscribe (alternately, one channel each) with up
    /// to W requests in flight: operations/s, round trip, server CPU per operation.
    V2Subscribe(V2SubscribeArgs),
    /// Protocol v2: S sockets publish, acknowledged after PostgreSQL accepted each message, in a
    /// closed loop of W outstanding publishes or at a rate: round trip publish → ack.
    V2Publish(V2PublishArgs),
    /// Minutes of traffic while faults are injected at random (its own PostgreSQL and pgws),
    /// then a per-channel continuity check of what every subscriber received; exits non-zero
    /// on a violation (WAL: any loss, duplicate or reordering; NOTIFY: a loss without a Gap).
    Chaos(ChaosArgs),
    /// Row changes of one table (`PGWS_SOURCE=wal`) to S filtered row subscriptions over protocol
    /// v2 (equality or range filters), or logical messages to S plain-channel subscriptions;
    /// changes inserted from SQL in batches: changes/s end to end, server CPU per change, issue
    /// → receipt latency, every socket's share checked.
    Rows(RowsArgs),
}

/// What the subscriptions of the `rows` scenario are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RowsKind {
    /// `user_id=eq.U` on the table's channel (the server's equality index applies).
    Eq,
    /// `user_id=gte.U&user_id=lte.U`: the same rows, a filter the index cannot use.
    Range,
    /// Plain channels `rowmsg-U` fed by `pg_logical_emit_message` (no table).
    Message,
}

/// Options of the `rows` scenario.
#[derive(Debug, Clone, Args)]
pub struct RowsArgs {
    /// Subscriptions, one per socket.
    #[arg(long, default_value_t = 1000)]
    pub subscriptions: usize,
    /// Kind of subscription.
    #[arg(long, value_enum, default_value = "eq")]
    pub kind: RowsKind,
    /// Subscriptions each change matches (socket i follows user i / K).
    #[arg(long, default_value_t = 1)]
    pub per_change: usize,
    /// Users that changes go to (0: every user): change j belongs to user j mod A, so only the
    /// sockets of the first A users receive anything and the others are subscriptions the
    /// server must pass over (the cost of a change with a fixed number of receivers).
    #[arg(long, default_value_t = 0)]
    pub active_users: usize,
    /// Subscriptions awaiting their answer at a time (0: all at once). pgws reads a table's
    /// description from the database for each row subscription; thousands at once queue there.
    #[arg(long, default_value_t = 200)]
    pub subscribe_window: usize,
    /// Table in schema `public`, in pgws's publication, with columns
    /// `user_id int, seq bigint, t_ns bigint, body text` (scripts/bench-rows.sh creates it).
    #[arg(long, default_value = "bench_rows")]
    pub table: String,
    /// Changes to write (at most; see --duration and --max-seconds).
    #[arg(long, default_value_t = 100_000)]
    pub changes: u64,
    /// Rows (or messages) per transaction.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Transactions in flight on the writer's connection.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Changes per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// With --rate: seconds of changes (caps --changes).
    #[arg(long, default_value_t = 0.0)]
    pub duration: f64,
    /// Stop writing after this many seconds whatever the count.
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
    /// Seconds to wait for the expected deliveries after the last write.
    #[arg(long, default_value_t = 60)]
    pub drain_timeout: u64,
    /// Bytes of the `body` text of each row (messages are padded to this plus 60).
    #[arg(long, default_value_t = 40)]
    pub payload: usize,
}

/// A fault the `chaos` scenario injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// A quarter of the subscribers drop their connection and resume from their position.
    ClientCut,
    /// `pg_terminate_backend` on the walsender of pgws's slot (WAL source).
    WalsenderKill,
    /// `pg_terminate_backend` on pgws's LISTEN connection (NOTIFY source).
    ListenKill,
    /// PostgreSQL stopped (fast shutdown) and started again.
    PgRestart,
    /// pgws stopped (SIGTERM or SIGKILL) and started again, same port and settings.
    PgwsRestart,
    /// The network between pgws and PostgreSQL cut for a while (connections reset, new ones
    /// refused or blackholed), then healed.
    NetCut,
}

/// Options of the `chaos` scenario (the source is the global `--source`).
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// The pgws binary to run (it is started, killed and restarted by the run).
    #[arg(long)]
    pub pgws_bin: std::path::PathBuf,
    /// More pgws flags (repeat: `--pgws-arg=--pool-size --pgws-arg=8`).
    #[arg(long, allow_hyphen_values = true)]
    pub pgws_arg: Vec<String>,
    /// Seconds of traffic with faults.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Number of channels.
    #[arg(long, default_value_t = 8)]
    pub channels: usize,
    /// Channels published by websocket writers (one `rw` socket each); the others by SQL.
    #[arg(long, default_value_t = 2)]
    pub writer_channels: usize,
    /// PostgreSQL connections publishing with SQL (`pg_logical_emit_message` or `pg_notify`).
    #[arg(long, default_value_t = 2)]
    pub sql_publishers: usize,
    /// Subscribers (even: websocket with `?last-event-id=`, odd: Server-Sent Events).
    #[arg(long, default_value_t = 16)]
    pub subscribers: usize,
    /// Channels each subscriber follows (one `/<token>` with a `channels` claim).
    #[arg(long, default_value_t = 2)]
    pub channels_per_subscriber: usize,
    /// Messages per second over all channels.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Padding bytes in every message.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Mean seconds between faults (each pause is uniform in 0.5..1.5 times this).
    #[arg(long, default_value_t = 4.0)]
    pub fault_every: f64,
    /// Longest outage (network cut, PostgreSQL down), seconds.
    #[arg(long, default_value_t = 6.0)]
    pub max_outage: f64,
    /// Faults to inject (comma-separated); default: all that apply to the source.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<Fault>,
    /// Seed of the random choices (default: from the clock; printed in the report).
    #[arg(long)]
    pub seed: Option<u64>,
    /// After the faults: seconds to wait for every subscriber to catch up.
    #[arg(long, default_value_t = 90.0)]
    pub settle_timeout: f64,
    /// pgws's log file (default: a file in the temporary directory, named in the report).
    #[arg(long)]
    pub log: Option<std::path::PathBuf>,
}

/// How the protocol v2 request scenarios send (shared by `v2-subscribe` and `v2-publish`).
#[derive(Debug, Clone, Args)]
pub struct RequestLoad {
    /// Sockets (protocol v2), each running its own request loop.
    #[arg(long, default_value_t = 1)]
    pub sockets: usize,
    /// Requests in flight per socket at most (closed loop: the next goes when an answer came).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Requests per second over all sockets (0 = closed loop, as fast as answers allow).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds to wait for outstanding answers after sending stopped.
    #[arg(long, default_value_t = 15.0)]
    pub drain_timeout: f64,
}

/// Options of the `v2-subscribe` scenario.
#[derive(Debug, Clone, Args)]
pub struct V2SubscribeArgs {
    #[command(flatten)]
    pub load: RequestLoad,
    /// Channels; socket i subscribes to and unsubscribes from channel i mod K.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Channel name prefix.
    #[arg(long, default_value = "sub")]
    pub channel_prefix: String,
}

/// Options of the `v2-publish` scenario.
#[derive(Debug, Clone, Args)]
pub struct V2PublishArgs {
    #[command(flatten)]
    pub load: RequestLoad,
    /// Channels; socket i publishes on channel i mod K.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Channel name prefix.
    #[arg(long, default_value = "pub")]
    pub channel_prefix: String,
    /// Bytes of each published text (padded JSON).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

/// Options of the `sse-catchup` scenario.
#[derive(Debug, Clone, Args)]
pub struct CatchupArgs {
    /// Channel (a fresh one per run: its window must hold only this run's messages).
    #[arg(long, default_value = "catchup")]
    pub channel: String,
    /// Messages the resuming stream missed (the server's PGWS_REPLAY_MESSAGES and
    /// PGWS_REPLAY_BYTES must hold them).
    #[arg(long, default_value_t = 10_000)]
    pub missed: u64,
    /// Payload size in bytes of each message.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Notifications per transaction while filling the window.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Resumes from the same position, one after the other, each measured on its own.
    #[arg(long, default_value_t = 10)]
    pub resumes: usize,
    /// Read buffer of the resuming stream, bytes.
    #[arg(long, default_value_t = 65_536)]
    pub read_buf: usize,
    /// After filling the window, run this shell command, which must restart the server and print
    /// `<pid> <port>` of the new one as its last line; the resumes then go to the new server
    /// (a server reading the WAL rebuilds its window from its slot).
    #[arg(long)]
    pub restart_cmd: Option<String>,
    /// Seconds one resume may take before it counts as failed.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

/// Options of the `sse-storm` scenario.
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    /// Number of streams.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Number of channels; stream i listens on channel i mod K.
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    /// Channel name prefix.
    #[arg(long, default_value = "storm")]
    pub channel_prefix: String,
    /// Notifications per second over all channels while the storm runs.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Publisher PostgreSQL connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Payload size in bytes of each message.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Seconds of steady flow before the cut (the CPU baseline).
    #[arg(long, default_value_t = 4.0)]
    pub cut_at: f64,
    /// Milliseconds between the cut and the reconnect (messages keep flowing).
    #[arg(long, default_value_t = 1000)]
    pub down_ms: u64,
    /// Seconds of publishing in all; every stream must be live again before it ends.
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// Reconnects in flight at once (default: all of them).
    #[arg(long)]
    pub reconnect_concurrency: Option<usize>,
    #[command(flatten)]
    pub drain: Drain,
}

/// Options of the `windows` scenario.
#[derive(Debug, Clone, Args)]
pub struct WindowsArgs {
    /// Number of channels.
    #[arg(long, default_value_t = 1000)]
    pub channels: usize,
    /// Channel name prefix.
    #[arg(long, default_value = "win")]
    pub channel_prefix: String,
    /// Event streams per channel (subscribers, so that the channels have windows).
    #[arg(long, default_value_t = 1)]
    pub streams_per_channel: usize,
    /// Messages published to each channel.
    #[arg(long, default_value_t = 1200)]
    pub per_channel: u64,
    /// Payload size in bytes of each message.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publisher PostgreSQL connections.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Notifications per transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Seconds to wait after the last delivery before measuring.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    #[command(flatten)]
    pub drain: Drain,
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
    /// Subscribers speak protocol v2 (`pgws.v2`): one `/<token>` path for all, each subscribes
    /// to its channel with a `subscribe` request, deliveries are v2 `message` frames.
    #[arg(long)]
    pub v2: bool,
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
    /// Connections speak protocol v2 (`pgws.v2`) and subscribe with requests
    /// (`--subscriptions` each).
    #[arg(long)]
    pub v2: bool,
    /// With `--v2`: channels each connection subscribes to (connection i: channels i..i+S mod
    /// K, K = max(--channels, S)); 0 = none (then the liveness check is skipped).
    #[arg(long, default_value_t = 1)]
    pub subscriptions: usize,
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
