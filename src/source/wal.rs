//! The WAL source (`PGWS_SOURCE=wal`): messages written with
//! `pg_logical_emit_message(true, '<PGWS_LISTEN_CHANNEL>', '<envelope JSON>')`, read from a
//! logical replication slot (`pgoutput`, `messages 'true'`) with the `pgwire-replication` crate.
//!
//! Why the WAL: no 8000-byte cap, no commit lock shared by every notifying transaction, and a
//! stream that PostgreSQL keeps until pgws says it is done with it, so positions survive
//! restarts and mean the same on every node.
//!
//! Positions ([`Seq::wal`]) are `(commit LSN, index among this prefix's messages of the
//! transaction)`: the order logical decoding sends transactions in, identical on every node
//! reading the same database. The epoch names the cluster (system identifier), the database
//! and the prefix.
//!
//! What this source owns beyond the NOTIFY one:
//! - the slot and its publication: checked and created at start-up (with errors that name the
//!   fix when `wal_level` is not `logical` or the role lacks `REPLICATION`);
//! - what it confirms: never a position a replay window still holds ([`Hub::oldest_held`]), so
//!   that a restarted node reads those messages again and rebuilds its windows; with nothing
//!   held, the end of what it received (keepalives included), so the slot advances on an idle
//!   database;
//! - reconnection without loss: after any failure it starts again from the slot's confirmed
//!   point and skips what it had already delivered (positions are exact, so nothing is doubled);
//! - the slot's health for operators: lag and retained WAL in /metrics, for its own slot and
//!   every other `pgws*` slot of the database (a dead node's slot shows up there).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_postgres::config::Host;
use tokio_util::sync::CancellationToken;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};

use super::failover;
use super::{Sink, SourceStatus};
use crate::channel::{ChannelName, quote_ident};
use crate::pg::hosts::{self, Endpoint};
use crate::pg::tls::{RootCert, SslMode};
use crate::pg::{Database, SessionAttrs, backoff, describe, with_defaults};
use crate::rows::change::{self, Change};
use crate::rows::decode_metrics::{DecodeLag, TableChanges};
use crate::rows::pgoutput::{self, RelationCache};
use crate::stream::Seq;
use crate::stream::position::wal_epoch;

/// Most replication events taken at once (one hub run per channel for all of them).
const BATCH: usize = 512;
/// How often the confirmed position is recomputed and reported.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Time limit for connecting and for each preparation step.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the WAL source stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Start-up attempts exhausted (an explicit `PGWS_RETRIES`) without a stream.
    #[error("could not start reading the WAL after {attempts} attempts: {last}")]
    StartupFailed {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// The database cannot serve a WAL source as configured; the text says how to fix it.
    #[error("{0}")]
    Unusable(String),
}

/// Settings of the WAL source.
pub struct WalSettings {
    /// Database to read.
    pub db: Database,
    /// The message prefix (`PGWS_LISTEN_CHANNEL`).
    pub prefix: ChannelName,
    /// The replication slot (`PGWS_WAL_SLOT`, by default from `PGWS_NODE_ID`).
    pub slot: String,
    /// The publication the slot is read with (`PGWS_WAL_PUBLICATION`; created empty if missing).
    pub publication: String,
    /// Where the slot is read (`PGWS_WAL_READ_URI`: a standby, PostgreSQL 16 and later); `None`:
    /// the primary of `db`.
    pub read_db: Option<Database>,
    /// How often the slot's lag is read.
    pub check_interval: Duration,
    /// Start-up attempts (`None`: for ever, the default).
    pub startup_retries: Option<u32>,
    /// Where to count.
    pub metrics: WalMetrics,
    /// Per-row authorization and the tables' catalog: each batch of table changes is decided
    /// for the cohorts with row subscribers before it reaches the hub (`None`: off).
    pub rows: Option<(
        Arc<crate::rows::rls::Rls>,
        Arc<crate::rows::catalog::Catalog>,
    )>,
}

/// A `slot` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabel {
    /// The replication slot's name.
    pub slot: String,
}

/// The WAL source's metrics (shared with the registry).
#[derive(Clone, Default)]
pub struct WalMetrics {
    /// 1 while the replication stream is up.
    pub up: Gauge,
    /// Streams re-established after a loss.
    pub reconnects: Counter,
    /// The end of what was received (an LSN as a number).
    pub received_lsn: Gauge,
    /// The position confirmed to PostgreSQL.
    pub confirmed_lsn: Gauge,
    /// Bytes of WAL between PostgreSQL's current position and this node's confirmed one.
    pub slot_lag_bytes: Gauge,
    /// 1 while the primary holds this node's stream back until a standby confirms it has the
    /// WAL (`synchronized_standby_slots`; a standby that lags or is down).
    pub waiting_for_standby: Gauge,
    /// WAL retained by each `pgws*` slot of the database (restart LSN to current), by slot.
    pub retained_bytes: Family<SlotLabel, Gauge>,
    /// Messages with another prefix (not pgws's), skipped.
    pub foreign: Counter,
    /// Messages received again after a reconnection and skipped (already delivered).
    pub resent: Counter,
    /// Table changes delivered (tables in the publication).
    pub changes: Counter,
    /// pgoutput messages or changes that could not be decoded (skipped, logged).
    pub undecodable: Counter,
    /// Table changes delivered, by table (at most 1,000 tables labelled, then `other`).
    pub changes_by_table: TableChanges,
    /// Seconds from a table change's commit to its delivery to the hub.
    pub decode_lag: DecodeLag,
    /// Tables in the relation cache of the current replication session.
    pub relations: Gauge,
}

impl crate::ops::metrics::Register for WalMetrics {
    /// Registers every metric (prefix `pgws_wal_`).
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("wal");
        r.register(
            "up",
            "1 while the replication stream is up",
            self.up.clone(),
        );
        r.register(
            "reconnects",
            "Replication streams re-established after a loss",
            self.reconnects.clone(),
        );
        r.register(
            "received_lsn",
            "End of the WAL received (LSN as a number)",
            self.received_lsn.clone(),
        );
        r.register(
            "confirmed_lsn",
            "Position confirmed to PostgreSQL (LSN as a number)",
            self.confirmed_lsn.clone(),
        );
        r.register(
            "slot_lag_bytes",
            "WAL bytes between the current position and this node's confirmed position",
            self.slot_lag_bytes.clone(),
        );
        r.register(
            "waiting_for_standby",
            "1 while the primary holds the stream back until a standby in synchronized_standby_slots has the WAL",
            self.waiting_for_standby.clone(),
        );
        r.register(
            "slot_retained_bytes",
            "WAL bytes retained by each pgws* replication slot of the database",
            self.retained_bytes.clone(),
        );
        r.register(
            "foreign_messages",
            "Logical messages with another prefix, skipped",
            self.foreign.clone(),
        );
        r.register(
            "resent_messages",
            "Messages read again after a reconnection and skipped",
            self.resent.clone(),
        );
        r.register(
            "table_changes",
            "Table changes delivered (tables in the publication)",
            self.changes.clone(),
        );
        r.register(
            "undecodable",
            "pgoutput messages or table changes that could not be decoded (skipped)",
            self.undecodable.clone(),
        );
        r.register(
            "table_changes_by_table",
            "Table changes delivered, by table (schema.name; beyond 1,000 tables: other)",
            self.changes_by_table.family.clone(),
        );
        r.register(
            "decode_lag_seconds",
            "Seconds from a table change's commit to its delivery to subscribers",
            self.decode_lag.0.clone(),
        );
        r.register(
            "relations",
            "Tables known to the current replication session (pgoutput relation cache)",
            self.relations.clone(),
        );
    }
}

/// How a session ended.
enum Ended {
    /// Shutdown.
    Stopped,
    /// Worth another attempt.
    Retry(String),
    /// Configuration the database refuses; fatal at start-up.
    Unusable(String),
}

/// What the source remembers across sessions.
struct Progress {
    /// The last position handed to the hub.
    delivered: Seq,
    /// The highest LSN confirmed.
    confirmed: u64,
    /// Sessions started.
    generation: u64,
    /// The timeline of the last session (a new one: a standby was promoted).
    timeline: Option<u32>,
    /// Where the stream forked, when this node delivered messages that a promoted standby never
    /// had: positions from then on belong to another epoch.
    fork: Option<u64>,
}

/// Runs until `shutdown` is cancelled, or until start-up fails for good.
pub async fn run(
    settings: WalSettings,
    sink: Arc<Sink>,
    status: watch::Sender<SourceStatus>,
    shutdown: CancellationToken,
) -> Result<(), WalError> {
    let db = with_defaults(&settings.db);
    if let Some(
        attrs @ (SessionAttrs::Standby | SessionAttrs::PreferStandby | SessionAttrs::ReadOnly),
    ) = db.target_session_attrs
    {
        tracing::warn!(target_session_attrs = %attrs,
            "the WAL source reads its slot on the primary: it connects to the first server of \
             PGWS_DB_URI that is one, whatever target_session_attrs says");
    }
    let mut progress = Progress {
        delivered: Seq::ZERO,
        confirmed: 0,
        generation: 0,
        timeline: None,
        fork: None,
    };
    let mut attempts: u32 = 0;
    let mut lost_at: Option<tokio::time::Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let ended = session(
            &settings,
            &db,
            &sink,
            &status,
            &shutdown,
            &mut progress,
            &mut attempts,
            &mut lost_at,
        )
        .await;
        settings.metrics.up.set(0);
        let reason = match ended {
            Ended::Stopped => return Ok(()),
            Ended::Unusable(why) if progress.generation == 0 => {
                tracing::error!(error = %why, "the database cannot serve PGWS_SOURCE=wal");
                let _ = status.send(SourceStatus::Down);
                return Err(WalError::Unusable(why));
            }
            Ended::Unusable(why) | Ended::Retry(why) => why,
        };
        status.send_if_modified(|s| {
            let changed = *s != SourceStatus::Down;
            *s = SourceStatus::Down;
            changed
        });
        if lost_at.is_none() && attempts == 0 && progress.generation > 0 {
            tracing::error!(reason = %reason, slot = %settings.slot,
                "replication stream lost; reconnecting (nothing is lost: it continues from the slot)");
            lost_at = Some(tokio::time::Instant::now());
        } else {
            tracing::error!(attempt = attempts + 1, error = %reason, slot = %settings.slot,
                "cannot read the WAL");
        }
        attempts += 1;
        if progress.generation == 0
            && let Some(max) = settings.startup_retries
            && attempts >= max
        {
            return Err(WalError::StartupFailed {
                attempts,
                last: reason,
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff(attempts)) => {}
        }
    }
}

/// One connection of the control client and the replication stream, until either fails.
#[allow(clippy::too_many_arguments)]
async fn session(
    settings: &WalSettings,
    db: &Database,
    sink: &Sink,
    status: &watch::Sender<SourceStatus>,
    shutdown: &CancellationToken,
    progress: &mut Progress,
    attempts: &mut u32,
    lost_at: &mut Option<tokio::time::Instant>,
) -> Ended {
    // The slot lives on the primary: both connections go to the first server of the
    // connection string that is one (after a failover, the promoted standby). With
    // PGWS_WAL_READ_URI, on the server that names (a standby unless its target_session_attrs
    // says otherwise), and the primary only creates the publication and writes snapshots.
    let read = settings.read_db.as_ref().map(with_defaults);
    let (source_db, attrs) = match &read {
        Some(read) => (
            read,
            read.target_session_attrs
                .unwrap_or(SessionAttrs::PreferStandby),
        ),
        None => (db, SessionAttrs::Primary),
    };
    let (control, server) = match step(hosts::connect(source_db, attrs)).await {
        Ok(Ok((client, connection, server))) => {
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            (Control { client, driver }, server)
        }
        Ok(Err(e)) => return Ended::Retry(e.to_string()),
        Err(why) => return Ended::Retry(why),
    };
    let slot = match prepare(&control.client, settings, db).await {
        Ok(slot) => slot,
        Err(ended) => return ended,
    };
    if slot.created && progress.generation > 0 {
        // Our slot vanished while we were away (dropped, invalidated by
        // max_slot_wal_keep_size, or not synchronised to the standby that was promoted): what
        // was written meanwhile cannot be read any more.
        tracing::error!(slot = %settings.slot, server = %server,
            "the replication slot was gone and has been created again; messages written meanwhile \
             are lost (after a failover: the slot had not been synchronised to the promoted standby, \
             see docs/SCALING.md)");
        let down = lost_at.map(|t| t.elapsed()).unwrap_or_default();
        sink.gap(down).await;
    }
    let hurry = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if slot.version >= FAILOVER_SLOTS && !slot.on_standby {
        tokio::spawn(failover::check(
            db.clone(),
            server.clone(),
            settings.slot.clone(),
            hurry.clone(),
        ));
    }
    let config = match replication_config(source_db, &server, settings) {
        Ok(c) => c,
        Err(why) => return Ended::Unusable(why),
    };
    let mut stream = match step(ReplicationClient::connect_gated(config)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Ended::Retry(format!("replication connection to {server}: {e}")),
        Err(why) => return Ended::Retry(why),
    };
    if slot.version >= FAILOVER_SLOTS && !slot.failover && !slot.on_standby {
        // A slot made before pgws made failover slots, or by hand: make it one (a replication
        // command, so on this connection, before the stream starts).
        let alter = format!(
            "ALTER_REPLICATION_SLOT {} ( FAILOVER true )",
            quote_ident(&settings.slot)
        );
        match step(stream.simple_query(&alter)).await {
            Ok(Ok(_)) => tracing::info!(slot = %settings.slot,
                "made the replication slot a failover slot (synchronised to standbys that sync slots)"),
            Ok(Err(e)) => tracing::warn!(slot = %settings.slot, error = %e,
                "cannot make the replication slot a failover slot: a failover will lose it"),
            Err(why) => return Ended::Retry(why),
        }
    }
    let system = match step(stream.identify_system()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Ended::Retry(format!("IDENTIFY_SYSTEM: {e}")),
        Err(why) => return Ended::Retry(why),
    };
    if let Some(before) = progress.timeline
        && system.timeline != before
        && !slot.created
    {
        // A standby was promoted. Positions are WAL positions, the same on both servers up to
        // the point where the new timeline left the old one; what this node delivered past that
        // point (possible without synchronized_standby_slots) the new primary never had, and it
        // writes other messages there.
        let fork = match step(stream.timeline_history(system.timeline)).await {
            Ok(Ok(history)) => switch_point(&history.content, before),
            _ => None,
        }
        // Unknown lineage: nothing past the slot's position can be trusted.
        .unwrap_or(slot.confirmed);
        if progress.delivered.major >= fork {
            tracing::error!(slot = %settings.slot, server = %server, timeline = system.timeline,
                fork = %Lsn(fork), delivered = %Lsn(progress.delivered.major),
                "after the failover the new primary lacks messages this node already delivered \
                 (the standby had not received them: set synchronized_standby_slots on the primary, \
                 see docs/SCALING.md); clients get a Gap and positions start a new epoch");
            let down = lost_at.map(|t| t.elapsed()).unwrap_or_default();
            sink.gap(down).await;
            progress.delivered = Seq::wal(fork.max(1), 0).before();
            progress.fork = Some(fork);
        }
    }
    progress.timeline = Some(system.timeline);
    let database = system.dbname.clone().unwrap_or_default();
    // After a fork, the same positions name other messages: another epoch.
    let system_id = match progress.fork {
        Some(fork) => format!("{}/{fork:X}", system.system_id),
        None => system.system_id.clone(),
    };
    let epoch = wal_epoch(&system_id, &database, settings.prefix.as_str());
    sink.hub()
        .set_origin(epoch, Seq::wal(slot.confirmed.max(1), 0).before());
    if let Err(e) = stream.start().await {
        return Ended::Retry(format!("START_REPLICATION: {e}"));
    }
    match step(stream.wait_started()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Ended::Retry(format!("START_REPLICATION: {e}")),
        Err(why) => return Ended::Retry(why),
    }
    *attempts = 0;
    progress.generation += 1;
    progress.confirmed = progress.confirmed.max(slot.confirmed);
    settings.metrics.up.set(1);
    if let Some(at) = lost_at.take() {
        settings.metrics.reconnects.inc();
        tracing::warn!(slot = %settings.slot, down_ms = at.elapsed().as_millis() as u64,
            "replication stream recovered; continuing from the slot");
    } else {
        tracing::info!(slot = %settings.slot, from = %Lsn(slot.confirmed), prefix = %settings.prefix,
            "reading messages from the WAL");
    }
    let _ = status.send(SourceStatus::Listening {
        generation: progress.generation,
    });
    let mut reader = Reader {
        prefix: settings.prefix.as_str(),
        txn: None,
        pending: Vec::with_capacity(BATCH),
        relations: RelationCache::new(),
        delivered: progress.delivered,
        received_end: slot.confirmed,
        metrics: &settings.metrics,
        hurry,
    };
    let ended = reader
        .run(
            &mut stream,
            &control,
            settings,
            sink,
            shutdown,
            &mut progress.confirmed,
        )
        .await;
    progress.delivered = reader.delivered;
    if matches!(ended, Ended::Stopped) {
        stream.stop();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.join()).await;
    } else {
        stream.abort();
    }
    control.driver.abort();
    ended
}

/// Where the timeline `before` ended, from a timeline history file (lines of
/// `timeline<TAB>switch LSN<TAB>reason`).
fn switch_point(history: &[u8], before: u32) -> Option<u64> {
    String::from_utf8_lossy(history).lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let tli: u32 = fields.next()?.parse().ok()?;
        let lsn = Lsn::parse(fields.next()?).ok()?;
        (tli == before).then_some(lsn.as_u64())
    })
}

/// A step that must not hang: the time-out becomes the error text.
async fn step<T>(f: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| format!("no answer within {STEP_TIMEOUT:?}"))
}

/// The plain SQL connection beside the stream: checks, slot management, lag.
struct Control {
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
}

/// The slot as found (or made).
struct SlotState {
    /// Its confirmed position: the stream starts there.
    confirmed: u64,
    /// Whether it had to be created now.
    created: bool,
    /// Whether it is a failover slot (PostgreSQL 17 and later).
    failover: bool,
    /// The server's `server_version_num`.
    version: i32,
    /// Whether it is read on a standby (`PGWS_WAL_READ_URI`).
    on_standby: bool,
}

/// The first version that decodes on a standby (`server_version_num`).
const STANDBY_DECODING: i32 = 160_000;

/// The first version with failover slots (`server_version_num`).
const FAILOVER_SLOTS: i32 = 170_000;

/// Checks what a WAL source needs, creates the publication and the slot where missing.
async fn prepare(
    client: &tokio_postgres::Client,
    settings: &WalSettings,
    primary: &Database,
) -> Result<SlotState, Ended> {
    let query = |e: tokio_postgres::Error| Ended::Retry(describe(&e));
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_user::text, \
             (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
             current_setting('max_slot_wal_keep_size'), \
             current_setting('server_version_num')::int, pg_is_in_recovery()",
            &[],
        )
        .await
        .map_err(query)?;
    let (wal_level, user, replication, keep): (String, String, Option<bool>, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let version: i32 = row.get(4);
    let on_standby: bool = row.get(5);
    if on_standby && version < STANDBY_DECODING {
        return Err(Ended::Unusable(
            "PGWS_WAL_READ_URI names a standby, which decodes the WAL from PostgreSQL 16 on only: \
             upgrade, or read on the primary (unset PGWS_WAL_READ_URI)"
                .into(),
        ));
    }
    if wal_level != "logical" {
        return Err(Ended::Unusable(format!(
            "PostgreSQL's wal_level is '{wal_level}'; PGWS_SOURCE=wal needs 'logical': run \
             ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL (or use PGWS_SOURCE=notify)"
        )));
    }
    if replication != Some(true) {
        return Err(Ended::Unusable(format!(
            "the role {user} may not read the WAL: PGWS_SOURCE=wal needs the REPLICATION attribute \
             (ALTER ROLE {} REPLICATION;)",
            quote_ident(&user)
        )));
    }
    if keep == "-1" {
        tracing::warn!(
            "max_slot_wal_keep_size is unlimited: if this node dies for good, PostgreSQL keeps WAL \
             for its slot until the slot is dropped (pgws --drop-wal-slot, see docs/DEPLOYMENT.md)"
        );
    }
    let has_publication = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&settings.publication],
        )
        .await
        .map_err(query)?
        .is_some();
    if !has_publication && on_standby {
        // A standby cannot create it: the primary does, and the standby replays it.
        create_on_primary(primary, settings).await?;
        return Err(Ended::Retry(format!(
            "the publication {} was created on the primary; waiting for the standby to replay it",
            settings.publication
        )));
    }
    if !has_publication {
        // An empty publication: only logical messages until an operator adds tables
        // (`ALTER PUBLICATION … ADD TABLE`), whose changes go to `table:<schema>.<table>`.
        let create = format!("CREATE PUBLICATION {}", quote_ident(&settings.publication));
        if let Err(e) = client.batch_execute(&create).await {
            let again = client
                .query_opt(
                    "SELECT 1 FROM pg_publication WHERE pubname = $1",
                    &[&settings.publication],
                )
                .await
                .map_err(query)?;
            if again.is_none() {
                return Err(Ended::Unusable(format!(
                    "cannot create the publication {0} ({1}); create it once as a user who may: \
                     CREATE PUBLICATION {0};",
                    quote_ident(&settings.publication),
                    describe(&e)
                )));
            }
        }
        tracing::info!(publication = %settings.publication, "created the (empty) publication");
    }
    // `failover` exists from PostgreSQL 17 on.
    let failover_column = if version >= FAILOVER_SLOTS {
        "failover"
    } else {
        "false"
    };
    let slot = client
        .query_opt(
            &format!(
                "SELECT plugin::text, database::text, active, active_pid, \
                 confirmed_flush_lsn::text, wal_status, {failover_column} \
                 FROM pg_replication_slots WHERE slot_name = $1"
            ),
            &[&settings.slot],
        )
        .await
        .map_err(query)?;
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(query)?
        .get(0);
    if let Some(row) = slot {
        let plugin: Option<String> = row.get(0);
        let slot_db: Option<String> = row.get(1);
        let active: bool = row.get(2);
        let pid: Option<i32> = row.get(3);
        let confirmed: Option<String> = row.get(4);
        let wal_status: Option<String> = row.get(5);
        let failover: bool = row.get(6);
        if plugin.as_deref() != Some("pgoutput") || slot_db.as_deref() != Some(database.as_str()) {
            return Err(Ended::Unusable(format!(
                "the replication slot {} exists but is not a pgoutput slot of database {database} \
                 (plugin {plugin:?}, database {slot_db:?}); set PGWS_WAL_SLOT or PGWS_NODE_ID to another name",
                settings.slot
            )));
        }
        if active {
            return Err(Ended::Retry(format!(
                "the replication slot {} is in use by backend {} (another pgws with the same \
                 PGWS_NODE_ID, or this node's previous connection not yet gone)",
                settings.slot,
                pid.unwrap_or(0)
            )));
        }
        if wal_status.as_deref() != Some("lost") {
            let confirmed = confirmed
                .as_deref()
                .and_then(|t| Lsn::parse(t).ok())
                .map_or(0, Lsn::as_u64);
            return Ok(SlotState {
                confirmed,
                created: false,
                failover,
                version,
                on_standby,
            });
        }
        tracing::error!(slot = %settings.slot,
            "the replication slot was invalidated (max_slot_wal_keep_size exceeded); dropping and creating it again");
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&settings.slot])
            .await
            .map_err(query)?;
    }
    // From PostgreSQL 17 on, a failover slot: standbys that sync slots keep a copy, and the
    // node continues from it on the standby promoted after a failover (docs/SCALING.md).
    // (A slot made on a standby cannot be a failover slot.)
    let failover = version >= FAILOVER_SLOTS && !on_standby;
    // On a standby, creating a slot waits for a snapshot record from the primary: ask for one
    // rather than wait for the next (up to 15 s).
    let _nudge = on_standby.then(|| {
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(standby_snapshot(primary.clone())))
    });
    let create = if failover {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
    } else {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')"
    };
    let row = client
        .query_one(create, &[&settings.slot])
        .await
        .map_err(|e| {
            Ended::Retry(format!(
                "cannot create the replication slot {}: {} (is max_replication_slots reached?)",
                settings.slot,
                describe(&e)
            ))
        })?;
    let lsn: String = row.get(0);
    tracing::info!(slot = %settings.slot, at = %lsn, failover, on_standby, "created the replication slot");
    Ok(SlotState {
        confirmed: Lsn::parse(&lsn).map_or(0, Lsn::as_u64),
        created: true,
        failover,
        version,
        on_standby,
    })
}

/// Creates the (empty) publication on the primary, for a WAL source that reads a standby.
async fn create_on_primary(primary: &Database, settings: &WalSettings) -> Result<(), Ended> {
    let (client, connection) = match step(hosts::connect(primary, SessionAttrs::Primary)).await {
        Ok(Ok((client, connection, _))) => (client, connection),
        Ok(Err(e)) => return Err(Ended::Retry(format!("primary: {e}"))),
        Err(why) => return Err(Ended::Retry(why)),
    };
    let driver = tokio::spawn(connection);
    let create = format!("CREATE PUBLICATION {}", quote_ident(&settings.publication));
    let result = client.batch_execute(&create).await;
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    match result {
        Ok(()) => {
            tracing::info!(publication = %settings.publication, "created the (empty) publication on the primary");
            Ok(())
        }
        // Made meanwhile by another node: the standby will have it.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(()),
        Err(e) => Err(Ended::Unusable(format!(
            "cannot create the publication {0} on the primary ({1}); create it once as a user who may: \
             CREATE PUBLICATION {0};",
            quote_ident(&settings.publication),
            describe(&e)
        ))),
    }
}

/// Asks the primary for a standby snapshot record (`pg_log_standby_snapshot()`), which a slot
/// being created on a standby waits for; best effort, repeated until aborted (when the
/// creation ends, however it ends).
async fn standby_snapshot(primary: Database) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(Ok((client, connection, _))) =
            step(hosts::connect(&primary, SessionAttrs::Primary)).await
        {
            let driver = tokio::spawn(connection);
            let _ = client
                .batch_execute("SELECT pg_log_standby_snapshot()")
                .await;
            drop(client);
            let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The replication connection's settings, from the same connection string as every other
/// connection (libpq's `sslmode` rules mapped onto the crate's; `allow` tries TLS first, as
/// `prefer` does, and `sslrootcert=system` uses the Mozilla roots the crate ships), to `server`:
/// the one the control connection found to be the primary (the crate takes one host).
fn replication_config(
    db: &Database,
    server: &Endpoint,
    settings: &WalSettings,
) -> Result<ReplicationConfig, String> {
    let c = &db.config;
    let user = c.get_user().unwrap_or("postgres").to_string();
    let password = c
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = c.get_dbname().map_or_else(|| user.clone(), str::to_string);
    let port = server.port;
    let mut config = match &server.host {
        Host::Unix(dir) => ReplicationConfig::unix(
            dir.to_string_lossy(),
            port,
            user,
            password,
            database,
            settings.slot.clone(),
            settings.publication.clone(),
        ),
        Host::Tcp(host) => ReplicationConfig::new(
            server
                .hostaddr
                .map_or_else(|| host.clone(), |addr| addr.to_string()),
            user,
            password,
            database,
            settings.slot.clone(),
            settings.publication.clone(),
        )
        .with_port(port)
        .with_tls(tls_config(&db.tls_settings)),
    };
    config = config
        .with_status_interval(STATUS_INTERVAL)
        .with_wakeup_interval(Duration::from_secs(10))
        .with_application_name("pgws-wal")
        .with_options(session_options(c.get_options()));
    Ok(config)
}

/// Settings of the replication session that pgoutput's text values depend on (it prints them
/// with the output functions, in the walsender's session): pinned so that the JSON clients get
/// does not depend on the server's, the database's or the role's defaults (docs/ROWS.md §2).
const SESSION_SETTINGS: &str = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres \
     -c bytea_output=hex -c extra_float_digits=3";

/// The startup `options` of the replication connection: the connection string's own (for
/// instance `-c search_path=…`) followed by [`SESSION_SETTINGS`], which win (the last `-c` of a
/// setting counts; startup options also override `ALTER DATABASE/ROLE … SET`).
fn session_options(own: Option<&str>) -> String {
    match own.map(str::trim).filter(|o| !o.is_empty()) {
        Some(own) => format!("{own} {SESSION_SETTINGS}"),
        None => SESSION_SETTINGS.to_string(),
    }
}

fn tls_config(tls: &crate::pg::tls::TlsSettings) -> TlsConfig {
    let roots = match &tls.root_cert {
        Some(RootCert::File(path)) => Some(path.clone()),
        Some(RootCert::System) | None => None,
    };
    let mut config = match tls.mode {
        SslMode::Disable => TlsConfig::disabled(),
        SslMode::Allow | SslMode::Prefer => TlsConfig {
            mode: pgwire_replication::SslMode::Prefer,
            ..TlsConfig::disabled()
        },
        SslMode::Require => TlsConfig::require(),
        SslMode::VerifyCa => TlsConfig::verify_ca(roots),
        SslMode::VerifyFull => TlsConfig::verify_full(roots),
    };
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        config = config.with_client_cert(cert, key);
    }
    config
}

/// Something read from the slot and not yet handed to the sink.
enum Item {
    /// A logical message of ours (its content; routed by the sink).
    Message(Bytes),
    /// A table change (delivered on `table:<schema>.<table>`).
    Change(Change),
}

/// Turns replication events into positioned messages for the sink.
struct Reader<'a> {
    prefix: &'a str,
    /// The open transaction: its commit LSN, the index of its next item, and its commit time
    /// (microseconds since 2000-01-01).
    txn: Option<(u64, u64, i64, u32)>,
    /// What was read and not yet handed to the sink, in stream order.
    pending: Vec<(Seq, Item)>,
    /// The tables seen on this session (pgoutput sends a table's Relation before its first
    /// change and again after every schema change).
    relations: RelationCache,
    /// The last position handed to the sink (what a new session skips up to).
    delivered: Seq,
    /// The end of the last whole transaction (or keepalive) received.
    received_end: u64,
    metrics: &'a WalMetrics,
    /// Set while a standby's copy of the slot is still temporary (`failover::check`): confirm
    /// everything received, so the copy becomes persistent soon.
    hurry: Arc<std::sync::atomic::AtomicBool>,
}

impl Reader<'_> {
    async fn run(
        &mut self,
        stream: &mut ReplicationClient,
        control: &Control,
        settings: &WalSettings,
        sink: &Sink,
        shutdown: &CancellationToken,
        confirmed: &mut u64,
    ) -> Ended {
        // A new session starts with an empty relation cache.
        self.metrics.relations.set(self.relations.len() as i64);
        let mut status = tokio::time::interval(STATUS_INTERVAL);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(settings.check_interval.max(Duration::from_secs(1)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Stopped,
                event = stream.recv() => {
                    match event {
                        Ok(Some(event)) => self.take(event),
                        Ok(None) => return Ended::Retry("the replication stream ended".into()),
                        Err(e) => return Ended::Retry(format!("replication stream: {e}")),
                    }
                    // Everything already received goes to the hub together.
                    let mut failed = None;
                    for _ in 0..BATCH {
                        match stream.recv().now_or_never() {
                            Some(Ok(Some(event))) => self.take(event),
                            Some(Ok(None)) => {
                                failed = Some("the replication stream ended".to_string());
                                break;
                            }
                            Some(Err(e)) => {
                                failed = Some(format!("replication stream: {e}"));
                                break;
                            }
                            None => break,
                        }
                    }
                    self.flush(sink, settings.rows.as_ref()).await;
                    if let Some(why) = failed {
                        return Ended::Retry(why);
                    }
                }
                _ = status.tick() => {
                    let hurry = self.hurry.load(std::sync::atomic::Ordering::Relaxed);
                    let safe = match sink.hub().oldest_held() {
                        Some(oldest) if !hurry => oldest.major.min(self.received_end),
                        _ => self.received_end,
                    };
                    if safe > *confirmed {
                        *confirmed = safe;
                        stream.update_applied_lsn(Lsn(safe));
                    }
                    self.metrics.confirmed_lsn.set(*confirmed as i64);
                }
                _ = check.tick() => {
                    if let Err(e) = step(lag(&control.client, settings, self.metrics)).await
                        .unwrap_or_else(Err)
                    {
                        return Ended::Retry(format!("slot check: {e}"));
                    }
                }
            }
        }
    }

    /// Reads one event.
    fn take(&mut self, event: ReplicationEvent) {
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                xid,
            } => {
                self.txn = Some((final_lsn.as_u64(), 0, commit_time_micros, xid));
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                if prefix != self.prefix {
                    self.metrics.foreign.inc();
                    return;
                }
                let seq = match (transactional, &mut self.txn) {
                    (true, Some((commit, next, _, _))) => {
                        *next += 1;
                        Seq::wal(*commit, *next - 1)
                    }
                    // Outside a transaction (or, defensively, a transactional one without its
                    // Begin): decoded at its own LSN, which orders it among the commits.
                    _ => Seq::wal(lsn.as_u64(), 0),
                };
                if seq <= self.delivered {
                    self.metrics.resent.inc();
                    return;
                }
                self.pending.push((seq, Item::Message(content)));
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.txn = None;
                self.received(end_lsn.as_u64());
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if self.txn.is_none() {
                    self.received(wal_end.as_u64());
                }
            }
            ReplicationEvent::XLogData { data, .. } => self.table_change(&data),
            ReplicationEvent::StoppedAt { .. } => {}
        }
    }

    /// Reads a pgoutput message other than Begin, Commit and logical messages: Relation
    /// messages update the table cache, changes become items positioned like messages (the
    /// commit's LSN and the next index of the transaction). What cannot be decoded is logged
    /// and counted, never delivered half-read.
    fn table_change(&mut self, data: &[u8]) {
        let message = match pgoutput::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.undecodable.inc();
                tracing::warn!(error = %e, "a pgoutput message could not be read; skipped");
                // A row change that cannot be read still takes its place, so that the
                // positions of the transaction's later items do not depend on it.
                if let (Some((_, next, _, _)), Some(b'I' | b'U' | b'D')) =
                    (&mut self.txn, data.first())
                {
                    *next += 1;
                }
                return;
            }
        };
        if let pgoutput::Message::Relation(relation) = message {
            self.relations.insert(relation);
            self.metrics.relations.set(self.relations.len() as i64);
            return;
        }
        let Some((commit, next, commit_time, xid)) = &mut self.txn else {
            return;
        };
        let changes = match change::changes(&message, &self.relations, *commit_time, *xid) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.undecodable.inc();
                tracing::warn!(error = %e, "a table change could not be read; skipped");
                // Its positions stay taken (see above).
                *next += change::count(&message);
                return;
            }
        };
        for change in changes {
            *next += 1;
            let seq = Seq::wal(*commit, *next - 1);
            if seq <= self.delivered {
                self.metrics.resent.inc();
                continue;
            }
            self.pending.push((seq, Item::Change(change)));
        }
    }

    /// Counts delivered changes: in all, by table, and their lag since commit (one metric
    /// update per run of changes of the same table and commit, not one per change).
    fn count<'c>(&self, changes: impl Iterator<Item = &'c Change>) {
        let mut run: Option<(&Change, u64)> = None;
        for change in changes {
            match &mut run {
                Some((first, n))
                    if first.channel == change.channel
                        && first.commit_micros == change.commit_micros =>
                {
                    *n += 1;
                }
                _ => {
                    if let Some((first, n)) = run.take() {
                        self.count_run(first, n);
                    }
                    run = Some((change, 1));
                }
            }
        }
        if let Some((first, n)) = run {
            self.count_run(first, n);
        }
    }

    fn count_run(&self, change: &Change, n: u64) {
        self.metrics.changes.inc_by(n);
        self.metrics.changes_by_table.add(change.table(), n);
        self.metrics.decode_lag.observe(change.commit_micros, n);
    }

    fn received(&mut self, end: u64) {
        if end > self.received_end {
            self.received_end = end;
            self.metrics.received_lsn.set(end as i64);
        }
    }

    /// Hands what was read to the sink, in order: logical messages through the routing rules,
    /// table changes to their table's channel.
    async fn flush(
        &mut self,
        sink: &Sink,
        rows: Option<&(
            Arc<crate::rows::rls::Rls>,
            Arc<crate::rows::catalog::Catalog>,
        )>,
    ) {
        if self.pending.is_empty() {
            return;
        }
        let prefix = self.prefix;
        let mut skipped = 0;
        let mut at = 0;
        while at < self.pending.len() {
            let messages = matches!(self.pending[at].1, Item::Message(_));
            let end = self.pending[at..]
                .iter()
                .position(|(_, item)| matches!(item, Item::Message(_)) != messages)
                .map_or(self.pending.len(), |n| at + n);
            let run = &self.pending[at..end];
            if messages {
                let batch = run.iter().filter_map(|(seq, item)| match item {
                    Item::Message(content) => match std::str::from_utf8(content) {
                        Ok(text) => Some((*seq, prefix, text)),
                        Err(_) => {
                            skipped += 1;
                            None
                        }
                    },
                    Item::Change(..) => None,
                });
                sink.deliver_positioned(batch);
            } else {
                let changes = || {
                    run.iter().filter_map(|(seq, item)| match item {
                        Item::Change(change) => Some((*seq, change)),
                        Item::Message(_) => None,
                    })
                };
                // Per-row authorization first (one statement per table and cohort of the run),
                // so that every frame reaches the hub with its decision.
                let details = match rows {
                    Some((rls, catalog)) => {
                        let list: Vec<&Change> = changes().map(|(_, c)| c).collect();
                        rls.decide(catalog, &self.relations, &list).await
                    }
                    None => Vec::new(),
                };
                let mut details = details.into_iter();
                sink.deliver_changes(changes().map(|(seq, c)| {
                    (
                        seq,
                        c.channel.as_str(),
                        c.text.as_str(),
                        details.next().flatten(),
                    )
                }));
                self.count(changes().map(|(_, c)| c));
            }
            at = end;
        }
        if skipped > 0 {
            tracing::warn!(
                count = skipped,
                "skipped logical messages that are not UTF-8 text"
            );
        }
        if let Some((last, _)) = self.pending.last() {
            self.delivered = self.delivered.max(*last);
        }
        self.pending.clear();
    }
}

/// Reads the lag of this node's slot and the WAL every `pgws*` slot of the database retains.
async fn lag(
    client: &tokio_postgres::Client,
    settings: &WalSettings,
    metrics: &WalMetrics,
) -> Result<(), String> {
    let rows = client
        .query(
            "WITH here AS (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
             ELSE pg_current_wal_lsn() END AS lsn) \
             SELECT slot_name::text, \
             COALESCE((here.lsn - restart_lsn)::int8, 0), \
             COALESCE((here.lsn - confirmed_flush_lsn)::int8, 0) \
             FROM pg_replication_slots, here \
             WHERE database = current_database() AND (slot_name = $1 OR slot_name LIKE 'pgws%')",
            &[&settings.slot],
        )
        .await
        .map_err(|e| describe(&e))?;
    // A walsender of a failover slot sends nothing a standby of synchronized_standby_slots has
    // not confirmed: a standby that lags or is down holds every client back, which must not be
    // a silent stall.
    let waiting = client
        .query_opt(
            "SELECT a.wait_event = 'WaitForStandbyConfirmation' \
             FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&settings.slot],
        )
        .await
        .map_err(|e| describe(&e))?
        .and_then(|row| row.get::<_, Option<bool>>(0))
        .unwrap_or(false);
    match (metrics.waiting_for_standby.get() == 1, waiting) {
        (false, true) => tracing::warn!(slot = %settings.slot,
            "the primary holds messages back until a standby has them (synchronized_standby_slots): \
             a standby lags or is down; clients wait (nothing is lost). Fix the standby, or remove \
             it from synchronized_standby_slots"),
        (true, false) => tracing::info!(slot = %settings.slot,
            "the primary no longer waits for a standby: messages flow again"),
        _ => {}
    }
    metrics.waiting_for_standby.set(i64::from(waiting));
    metrics.retained_bytes.clear();
    for row in rows {
        let (name, retained, behind): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if name == settings.slot {
            metrics.slot_lag_bytes.set(behind);
        }
        metrics
            .retained_bytes
            .get_or_create(&SlotLabel { slot: name })
            .set(retained);
    }
    Ok(())
}

/// How long [`drop_slot`] waits for a slot still held by a walsender that is going away.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Drops a replication slot (`pgws --drop-wal-slot NAME`): for a node that is gone for good,
/// whose slot would otherwise keep PostgreSQL's WAL. Refuses a slot in use (after waiting a
/// moment for a walsender that is going away).
pub async fn drop_slot(db: &Database, slot: &str) -> Result<(), String> {
    let (client, connection) = step(with_defaults(db).connect())
        .await?
        .map_err(|e| describe(&e))?;
    let driver = tokio::spawn(connection);
    let result = async {
        // A node that has just stopped leaves its walsender behind for a moment: wait for the
        // slot to be released rather than fail with "is active" (a running node is named).
        let deadline = tokio::time::Instant::now() + SLOT_RELEASE_WAIT;
        loop {
            let row = client
                .query_opt(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map_err(|e| describe(&e))?;
            let Some(pid) = row.and_then(|r| r.get::<_, Option<i32>>(0)) else {
                break;
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "replication slot \"{slot}\" is in use by PostgreSQL process {pid} \
                     (a pgws node still reading it?): stop that node first"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map(|_| ())
            .map_err(|e| describe(&e))
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}

/// The slot name for a node: `pgws_` and the node id, lowercased, with everything but
/// `[a-z0-9_]` replaced by `_` (PostgreSQL's rule for slot names), shortened with a hash to
/// PostgreSQL's 63 bytes when longer.
pub fn slot_name(node_id: &str) -> String {
    let clean: String = node_id
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    let name = format!("pgws_{clean}");
    if name.len() <= 63 {
        return name;
    }
    let hash = wal_epoch(node_id, "", "");
    format!("{}_{hash:016x}", &name[..46])
}

/// This host's name (for the default node id), or `localhost` when it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_session_settings_come_last() {
        assert_eq!(session_options(None), SESSION_SETTINGS);
        assert_eq!(session_options(Some("  ")), SESSION_SETTINGS);
        let both = session_options(Some("-c TimeZone=Europe/Paris"));
        assert!(
            both.starts_with("-c TimeZone=Europe/Paris -c TimeZone=UTC "),
            "{both}"
        );
    }

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert_eq!(slot_name("web-1.example_3000"), "pgws_web_1_example_3000");
        assert_eq!(slot_name("Ünï"), "pgws__n_");
        let long = slot_name(&"x".repeat(100));
        assert_eq!(long.len(), 63);
        assert_ne!(long, slot_name(&"x".repeat(101)));
    }

    #[test]
    fn switch_points_come_from_the_history_file() {
        let history = b"1\t0/3000198\tno recovery target specified\n\n2\t0/5000060\tno recovery target specified\n";
        assert_eq!(switch_point(history, 1), Some(0x3000198));
        assert_eq!(switch_point(history, 2), Some(0x5000060));
        assert_eq!(switch_point(history, 3), None);
        assert_eq!(switch_point(b"garbage", 1), None);
    }

    fn message(lsn: u64, prefix: &str, text: &str) -> ReplicationEvent {
        ReplicationEvent::Message {
            transactional: true,
            lsn: Lsn(lsn),
            prefix: prefix.into(),
            content: Bytes::copy_from_slice(text.as_bytes()),
        }
    }

    #[test]
    fn positions_follow_commits_and_skip_what_was_delivered() {
        let metrics = WalMetrics::default();
        let mut r = Reader {
            prefix: "p",
            txn: None,
            pending: Vec::new(),
            relations: RelationCache::new(),
            delivered: Seq::wal(500, 0),
            received_end: 0,
            metrics: &metrics,
            hurry: Default::default(),
        };
        // A transaction committed at 500 (already delivered), then one at 900 whose messages
        // were written before the first one's commit.
        for (commit, end) in [(500, 520), (900, 940)] {
            r.take(ReplicationEvent::Begin {
                final_lsn: Lsn(commit),
                xid: 1,
                commit_time_micros: 0,
            });
            r.take(message(100, "p", "a"));
            r.take(message(110, "other", "x"));
            r.take(message(120, "p", "b"));
            r.take(ReplicationEvent::Commit {
                lsn: Lsn(commit),
                end_lsn: Lsn(end),
                commit_time_micros: 0,
            });
        }
        let seqs: Vec<Seq> = r.pending.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [Seq::wal(500, 1), Seq::wal(900, 0), Seq::wal(900, 1)]);
        assert_eq!(metrics.resent.get(), 1);
        assert_eq!(metrics.foreign.get(), 2);
        assert_eq!(r.received_end, 940);
    }

    #[test]
    fn unreadable_changes_keep_their_positions() {
        let metrics = WalMetrics::default();
        let mut r = Reader {
            prefix: "p",
            txn: None,
            pending: Vec::new(),
            relations: RelationCache::new(),
            delivered: Seq::ZERO,
            received_end: 0,
            metrics: &metrics,
            hurry: Default::default(),
        };
        r.take(ReplicationEvent::Begin {
            final_lsn: Lsn(700),
            xid: 1,
            commit_time_micros: 0,
        });
        // An insert into a table whose Relation never came, then one cut short.
        let mut insert = vec![b'I'];
        insert.extend(42u32.to_be_bytes());
        insert.extend([b'N', 0, 1, b't', 0, 0, 0, 1, b'5']);
        for data in [&insert[..], &insert[..7]] {
            r.take(ReplicationEvent::XLogData {
                wal_start: Lsn(600),
                wal_end: Lsn(600),
                server_time_micros: 0,
                data: Bytes::copy_from_slice(data),
            });
        }
        r.take(message(650, "p", "after"));
        let seqs: Vec<Seq> = r.pending.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            [Seq::wal(700, 2)],
            "the two unreadable changes keep 0 and 1"
        );
        assert_eq!(metrics.undecodable.get(), 2);
    }
}
