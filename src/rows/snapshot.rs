//! Snapshot, then live: the rows a row subscription starts from, read at one point of the
//! database's history, and the seam that tells which later changes of the stream that point
//! already contains (issue 23; docs/ROWS.md, "Snapshots").
//!
//! What it owns: reading a table's rows in one `REPEATABLE READ` transaction (as the
//! subscriber's role and claims when authorization by the database is on, so RLS applies), in
//! pages through a cursor, each row turned into JSON by the same code as the changes
//! ([`super::value`]) and filtered and projected by the same subscription; and the [`Seam`].
//! What it must never do: hold the whole table (pages go to the socket's queue as they are
//! read, and the next page waits until the queue has drained), or put a name into SQL
//! unquoted (identifiers from the catalog, quoted; values bound).
//!
//! Why exact: the subscription joins the hub, holding what it receives, *before* the snapshot
//! transaction starts; so every change committed after the snapshot is either held or comes
//! later. The snapshot's `pg_current_snapshot()` says which transactions it sees, and
//! `pg_current_wal_insert_lsn()`, read after it was taken, bounds their commit records: a change
//! is in the snapshot exactly when its commit LSN is at or below that bound *and* its transaction
//! is visible in the snapshot ([`Seam::contains`]). The held changes not in the snapshot follow
//! its last page, then live ones.

use std::time::Duration;

use serde_json::{Map, Value};

use super::catalog::TableInfo;
use super::filter::Verdict;
use super::seam::Seam;
use super::selector::RowSubscription;
use super::value::to_json;
use crate::channel::quote_ident;
use crate::pg::{Database, describe, with_defaults};
use crate::stream::{Frame, Outbox};

/// Rows fetched per round trip (and per `snapshot` frame at most).
pub const PAGE_ROWS: usize = 500;
/// Changes a subscription may hold while its snapshot is read; more, and the snapshot is
/// abandoned (`snapshot_failed`, reason `too_many_changes`): the client asks again.
pub const HOLD_CAP: usize = 100_000;

/// Bounds on one snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rows sent at most (after the filter); more is a refusal, not a cut list.
    pub max_rows: usize,
    /// Time the whole read may take.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Why a snapshot was not completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// More rows than the limit.
    #[error("the snapshot has more than {0} rows")]
    TooLarge(usize),
    /// Slower than the limit.
    #[error("the snapshot took longer than {0:?}")]
    Timeout(Duration),
    /// The database refused (permissions, RLS policy error) or could not answer.
    #[error("the snapshot could not be read: {0}")]
    Database(String),
    /// The socket went away or fell behind; nobody to send it to.
    #[error("the socket closed")]
    Gone,
}

/// Who reads the snapshot: the subscriber's role and claims (authorization by the database),
/// or pgws's own connection role (`None`).
pub type As<'a> = Option<(&'a str, &'a str)>;

/// Reads the rows of `schema.table` that `sub` lets through, sending each page to `outbox` as
/// the frame `page` makes of the rows' JSON texts (waiting, before each fetch, until the queue is
/// under half its limit). Returns the seam and how many rows were sent.
#[allow(clippy::too_many_arguments)]
pub async fn read(
    db: &Database,
    who: As<'_>,
    schema: &str,
    table: &str,
    info: &TableInfo,
    sub: &RowSubscription,
    limits: Limits,
    outbox: &Outbox,
    page: impl Fn(&[String]) -> Frame,
) -> Result<(Seam, usize), SnapshotError> {
    tokio::time::timeout(
        limits.timeout,
        read_inner(db, who, schema, table, info, sub, limits, outbox, page),
    )
    .await
    .map_err(|_| SnapshotError::Timeout(limits.timeout))?
}

#[allow(clippy::too_many_arguments)]
async fn read_inner(
    db: &Database,
    who: As<'_>,
    schema: &str,
    table: &str,
    info: &TableInfo,
    sub: &RowSubscription,
    limits: Limits,
    outbox: &Outbox,
    page: impl Fn(&[String]) -> Frame,
) -> Result<(Seam, usize), SnapshotError> {
    let db_err = |e: tokio_postgres::Error| SnapshotError::Database(describe(&e));
    let (client, connection) = with_defaults(db)
        .connect()
        .await
        .map_err(|e| SnapshotError::Database(e.to_string()))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "snapshot connection ended");
        }
    });
    // Dropped with the connection (its task ends) on every exit path: the transaction is
    // never reused, so no `ROLLBACK` is needed on errors.
    let _end = AbortOnDrop(driver);
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(db_err)?;
    // The values' text must not depend on the server's or the role's defaults (the same
    // settings as the replication connection's, so snapshot rows equal changes' rows).
    client
        .execute(
            "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO', true), \
             set_config('IntervalStyle', 'postgres', true), set_config('bytea_output', 'hex', true), \
             set_config('extra_float_digits', '3', true)",
            &[],
        )
        .await
        .map_err(db_err)?;
    if let Some((role, claims)) = who {
        client
            .execute(
                "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
                &[&role, &claims],
            )
            .await
            .map_err(db_err)?;
    }
    let row = client
        .query_one(
            "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await
        .map_err(db_err)?;
    let seam = Seam::parse(row.get(0), row.get(1))
        .ok_or_else(|| SnapshotError::Database("unreadable pg_current_snapshot() or LSN".into()))?;
    // Known from now on: the live subscription drops what the snapshot contains, also after it
    // is released (a source behind the snapshot routes such changes late).
    sub.set_seam(seam.clone());
    let columns: Vec<String> = info
        .columns
        .iter()
        .map(|(name, _)| quote_ident(name))
        .collect();
    client
        .batch_execute(&format!(
            "DECLARE pgws_snapshot NO SCROLL CURSOR FOR SELECT {} FROM {}.{}",
            columns.join(", "),
            quote_ident(schema),
            quote_ident(table)
        ))
        .await
        .map_err(db_err)?;
    let fetch = format!("FETCH {PAGE_ROWS} FROM pgws_snapshot");
    let mut sent = 0;
    loop {
        wait_for_room(outbox).await?;
        // The simple protocol answers in text, through each type's output function: exactly
        // the text pgoutput sends for the same value (a `::text` cast would differ: `true`
        // for a boolean's `t`).
        let rows: Vec<_> = client
            .simple_query(&fetch)
            .await
            .map_err(db_err)?
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .collect();
        if rows.is_empty() {
            break;
        }
        let mut texts = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut obj = Map::new();
            for (i, (name, ty)) in info.columns.iter().enumerate() {
                let cell: Option<&str> = r.get(i);
                let value = match cell {
                    None => Value::Null,
                    Some(text) => to_json(*ty, text).unwrap_or_else(|_| Value::String(text.into())),
                };
                obj.insert(name.clone(), value);
            }
            if sub.filter().eval(&obj) != Verdict::Match {
                continue;
            }
            // Under per-row authorization the subscription remembers which rows it was sent,
            // so that a row leaving its view later is removed by key (`rows::selector`).
            sub.note_sent(&obj);
            if let Some(cols) = sub.columns() {
                obj.retain(|k, _| cols.iter().any(|c| c == k));
            }
            texts.push(Value::Object(obj).to_string());
        }
        sent += texts.len();
        if sent > limits.max_rows {
            return Err(SnapshotError::TooLarge(limits.max_rows));
        }
        if !texts.is_empty() {
            outbox.push_replay(&[page(&texts)]);
        }
    }
    Ok((seam, sent))
}

/// Waits until the socket's queue is under half its byte limit (polled: the queue has no
/// wake-up for "drained", and a snapshot is rare enough that a 5 ms poll costs nothing).
async fn wait_for_room(outbox: &Outbox) -> Result<(), SnapshotError> {
    loop {
        let (bytes, open) = outbox.backlog();
        if !open {
            return Err(SnapshotError::Gone);
        }
        if bytes < outbox.byte_limit() / 2 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Ends the connection's task when the read ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
