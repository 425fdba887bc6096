//! Per-row authorization by the database, batched by cohort (issue 22, item 4; docs/ROWS.md,
//! "Per-row authorization").
//!
//! Before a batch of decoded changes reaches the hub, the WAL source asks, for each table of
//! the batch, every cohort with row subscribers on it ([`cohort::Cohorts::on_table`]) which of
//! the table's changes it may see: [`decide_table`] runs one statement per cohort, concurrently
//! on the authorization pool, each in its own transaction as the cohort's role with its claims
//! and statement timeout ([`crate::authz::check::transaction`]). PostgreSQL decides, from the
//! table's grants and RLS policies; nothing here interprets a policy. The answer, per change the
//! [`CohortSet`] that may see it and per failed cohort its reason, travels with the change's
//! frame so that live delivery and replay from the window apply the same decision.
//!
//! What it must never do: deliver a value the cohort could not `SELECT` at the time of the
//! check, paste a name or value into SQL text (identifiers are quoted, values bound), or let one
//! cohort's failure or slowness change another cohort's answer.

pub mod cohort;
pub mod sql;

#[cfg(test)]
mod pg_tests;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};
use tokio_postgres::types::{ToSql, Type};

// The WAL source and the hub use these once row subscriptions are wired.
#[allow(unused_imports)]
pub use cohort::{CohortClaims, CohortId, CohortKey, CohortSet, Cohorts};
pub use sql::TableShape;

use crate::authz::Subject;
use crate::authz::check::{DbError, End, Session, TxError, transaction};
use crate::authz::pool::Pool;

pub use crate::rows::change::Op;

/// One change as the decision reads it: its operation and the row version it carries (the new
/// row of an `INSERT`/`UPDATE` as `rows::change` builds it, unchanged TOASTed values it could
/// not fill left out; the old row of a `DELETE`; none for `TRUNCATE`).
#[derive(Debug, Clone, Copy)]
pub struct RowChange<'a> {
    pub op: Op,
    pub row: Option<&'a Map<String, Value>>,
}

impl<'a> RowChange<'a> {
    /// The change of an object `rows::change` built (`op`, `new`, `old`); `None` if it is not
    /// one.
    pub fn of_change(change: &'a Map<String, Value>) -> Option<Self> {
        let op = match change.get("op")?.as_str()? {
            "INSERT" => Op::Insert,
            "UPDATE" => Op::Update,
            "DELETE" => Op::Delete,
            "TRUNCATE" => Op::Truncate,
            _ => return None,
        };
        let row = match op {
            Op::Insert | Op::Update => Some(change.get("new")?.as_object()?),
            Op::Delete => Some(change.get("old")?.as_object()?),
            Op::Truncate => None,
        };
        Some(Self { op, row })
    }
}

/// The form of a change delivered to a subscriber authorized by RLS: an `UPDATE` loses its
/// `old` row (the old version may have been one the cohort could not see, and it is gone: it
/// cannot be checked). Filters then see the old row as unknown (docs/ROWS.md, section 4), so
/// no *leave* is ever derived from a version the cohort may not see.
pub fn rls_form(change: &Map<String, Value>) -> Map<String, Value> {
    let mut out = change.clone();
    if out.get("op").and_then(Value::as_str) == Some("UPDATE") {
        out.insert("old".into(), Value::Null);
    }
    out
}

/// Why a cohort's decision failed: every change of the batch for that table is then withheld
/// from it, and its subscribers are told this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizeError {
    /// The database refused the statement as the cohort's role: no `SELECT` grant on the table
    /// or a column (42501), a policy that raised, a role that cannot be used.
    #[error("the database refused to authorize rows of {table}: {message} (SQLSTATE {sqlstate})")]
    Refused {
        table: String,
        sqlstate: String,
        message: String,
    },
    /// No answer within the statement timeout (a slow or sleeping policy).
    #[error("the authorization of rows of {table} did not answer within {} ms", .timeout.as_millis())]
    Timeout { table: String, timeout: Duration },
    /// The decision could not be run: no connection, pool busy, connection lost.
    #[error("the authorization of rows of {table} could not run: {reason}")]
    Unavailable { table: String, reason: String },
    /// A schema, table or column name that cannot be quoted (holds NUL).
    #[error("a name cannot be used in SQL: {0}")]
    Name(String),
}

/// Metrics of row authorization (registered under `rows_authz_`).
#[derive(Debug, Clone)]
pub struct AuthorizeMetrics {
    /// Decision statements run (one per cohort per table per batch).
    pub queries: Counter,
    /// Seconds a decision statement took (pool wait included).
    pub query_seconds: Histogram,
    /// Changes decided, counted once per cohort.
    pub changes_decided: Counter,
    /// Decision statements that failed (refused, timed out, could not run).
    pub failures: Counter,
    /// Of those, time-outs.
    pub timeouts: Counter,
}

impl Default for AuthorizeMetrics {
    fn default() -> Self {
        Self {
            queries: Counter::default(),
            query_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            changes_decided: Counter::default(),
            failures: Counter::default(),
            timeouts: Counter::default(),
        }
    }
}

impl crate::ops::metrics::Register for AuthorizeMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("rows_authz");
        r.register(
            "queries",
            "Row authorization statements run (one per cohort, table and batch)",
            self.queries.clone(),
        );
        r.register(
            "query_seconds",
            "Seconds a row authorization statement took, pool wait included",
            self.query_seconds.clone(),
        );
        r.register(
            "changes_decided",
            "Table changes decided, once per cohort",
            self.changes_decided.clone(),
        );
        r.register(
            "failures",
            "Row authorization statements that failed (refused, timed out, could not run)",
            self.failures.clone(),
        );
        r.register(
            "timeouts",
            "Row authorization statements that timed out",
            self.timeouts.clone(),
        );
    }
}

/// Which of `changes` (all of one table) the cohort may see: one statement, in one pipelined
/// transaction as the cohort's role with its claims and `timeout` as statement timeout.
/// `Ok(v)`: `v[i]` says whether change `i` may be delivered to the cohort.
pub async fn decide(
    pool: &Pool,
    cohort: &CohortKey,
    table: &TableShape,
    changes: &[RowChange<'_>],
    timeout: Duration,
) -> Result<Vec<bool>, AuthorizeError> {
    decide_param(
        pool,
        cohort,
        table,
        &table.batch_param(changes),
        changes.len(),
        timeout,
    )
    .await
}

/// [`decide`] with the batch already written as the statement's parameter (once per table and
/// batch, whatever the number of cohorts).
async fn decide_param(
    pool: &Pool,
    cohort: &CohortKey,
    table: &TableShape,
    batch: &String,
    len: usize,
    timeout: Duration,
) -> Result<Vec<bool>, AuthorizeError> {
    let subject = Subject {
        claims: cohort.claims().into(),
        role: cohort.role().into(),
        sub: None,
        jti: None,
        exp: None,
    };
    let channel = crate::rows::change::channel_of(&table.schema, &table.name);
    let session = Session {
        subject: &subject,
        channel: &channel,
        mode: "rows",
        timeout,
    };
    let oid = table.oid;
    let params: [(&(dyn ToSql + Sync), Type); 2] = [(batch, Type::TEXT), (&oid, Type::OID)];
    let what = || format!("{}.{}", table.schema, table.name);
    let refused = |db: DbError| AuthorizeError::Refused {
        table: what(),
        sqlstate: db.sqlstate,
        message: db.message,
    };
    let rows = transaction(pool, &session, table.sql(), &params, End::Rollback)
        .await
        .map_err(|e| match e {
            TxError::Role(db) | TxError::Call(db) => refused(db),
            TxError::Timeout(timeout) => AuthorizeError::Timeout {
                table: what(),
                timeout,
            },
            TxError::Pool(e) => AuthorizeError::Unavailable {
                table: what(),
                reason: e.to_string(),
            },
            TxError::Connection(reason) => AuthorizeError::Unavailable {
                table: what(),
                reason,
            },
        })?;
    let mut seen = vec![false; len];
    for row in rows {
        let i: i32 = row.try_get(0).map_err(|e| AuthorizeError::Unavailable {
            table: what(),
            reason: format!("unexpected answer: {e}"),
        })?;
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| seen.get_mut(i)) {
            *slot = true;
        }
    }
    Ok(seen)
}

/// The decision for every cohort with subscribers on the table, for one batch of its changes.
#[derive(Debug, Clone, Default)]
pub struct TableDecision {
    /// Per change (same order as the batch): the cohorts that may see it.
    pub allowed: Vec<CohortSet>,
    /// The cohorts whose statement failed, with why: none of the batch's changes of this table
    /// is delivered to them.
    pub failed: Vec<(CohortId, AuthorizeError)>,
}

/// Runs [`decide`] for every cohort concurrently (each under its own timeout, so a slow cohort
/// delays only itself until the slowest answers; the caller waits for all) and gathers the
/// answers per change.
pub async fn decide_table(
    pool: &Pool,
    cohorts: &[(CohortId, std::sync::Arc<CohortKey>)],
    table: &TableShape,
    changes: &[RowChange<'_>],
    timeout: Duration,
    metrics: &AuthorizeMetrics,
) -> TableDecision {
    let batch = &table.batch_param(changes);
    let answers = join_all(cohorts.iter().map(|(id, key)| async move {
        let started = Instant::now();
        let answer = decide_param(pool, key, table, batch, changes.len(), timeout).await;
        metrics.queries.inc();
        metrics
            .query_seconds
            .observe(started.elapsed().as_secs_f64());
        match &answer {
            Ok(_) => {
                metrics.changes_decided.inc_by(changes.len() as u64);
            }
            Err(e) => {
                metrics.failures.inc();
                if matches!(e, AuthorizeError::Timeout { .. }) {
                    metrics.timeouts.inc();
                }
                tracing::warn!(cohort = id.0, error = %e, "row authorization failed");
            }
        }
        (*id, answer)
    }))
    .await;
    let mut allowed: Vec<Vec<CohortId>> = vec![Vec::new(); changes.len()];
    let mut failed = Vec::new();
    for (id, answer) in answers {
        match answer {
            Ok(seen) => {
                for (i, yes) in seen.into_iter().enumerate() {
                    if yes {
                        allowed[i].push(id);
                    }
                }
            }
            Err(e) => failed.push((id, e)),
        }
    }
    TableDecision {
        allowed: allowed.into_iter().map(CohortSet::from_ids).collect(),
        failed,
    }
}

/// One table's part of a batch: its shape, the cohorts with row subscribers on it, and its
/// changes in the batch's order.
pub struct TablePart<'a> {
    pub table: &'a TableShape,
    pub cohorts: &'a [(CohortId, std::sync::Arc<CohortKey>)],
    pub changes: &'a [RowChange<'a>],
}

/// [`decide_table`] for every table of a batch at once: every (table, cohort) statement runs
/// concurrently (as the pool allows), so the batch waits for its slowest statement only once.
/// The answers are in the order of `parts`.
pub async fn decide_batch(
    pool: &Pool,
    parts: &[TablePart<'_>],
    timeout: Duration,
    metrics: &AuthorizeMetrics,
) -> Vec<TableDecision> {
    join_all(
        parts
            .iter()
            .map(|p| decide_table(pool, p.cohorts, p.table, p.changes, timeout, metrics)),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn changes_read_their_row_and_updates_lose_old_for_rls() {
        let update = obj(
            json!({"op": "UPDATE", "new": {"id": 1, "t": "x"}, "old": {"id": 0, "t": "secret"}}),
        );
        let ch = RowChange::of_change(&update).unwrap();
        assert_eq!(ch.op, Op::Update);
        assert_eq!(ch.row.unwrap()["t"], json!("x"));
        let shown = rls_form(&update);
        assert_eq!(shown["old"], Value::Null);
        assert_eq!(shown["new"], update["new"]);
        let delete = obj(json!({"op": "DELETE", "new": null, "old": {"id": 2}}));
        assert_eq!(
            RowChange::of_change(&delete).unwrap().row.unwrap()["id"],
            json!(2)
        );
        assert_eq!(rls_form(&delete), delete);
        let truncate = obj(json!({"op": "TRUNCATE", "new": null, "old": null}));
        assert!(RowChange::of_change(&truncate).unwrap().row.is_none());
        assert!(RowChange::of_change(&obj(json!({"op": "MERGE"}))).is_none());
        assert!(RowChange::of_change(&obj(json!({"op": "INSERT", "new": 1}))).is_none());
    }
}
