//! Per-row authorization wired into the stream: who may see each table change, decided by
//! PostgreSQL once per cohort per batch before the change reaches the hub, and the subscription
//! side of it (a subscriber's place in its cohort).
//!
//! What it owns: the cohort registry shared by the sessions (which join and leave) and the WAL
//! source (which asks, per batch, the cohorts with subscribers on each table of the batch), its
//! own connection pool (so that row decisions never wait behind subscribe checks), and the
//! [`Decision`] attached to each change's frame. What it must never do: decide in Rust: every
//! verdict is a `rows::authorize` statement's answer; a change whose decision is missing or
//! failed for a cohort is withheld from it, and its subscribers are told (docs/ROWS.md §7).
//!
//! Why decisions ride on the frames: the replay window keeps the frame, so a resume decides
//! exactly as live delivery did, without asking the database again for old row versions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};

use super::authorize::{
    self, AuthorizeMetrics, CohortClaims, CohortId, CohortKey, CohortSet, Cohorts, RowChange,
    TablePart, TableShape,
};
use super::catalog::{Catalog, split_name};
use super::change::Change;
use super::pgoutput::RelationCache;
use crate::authz::Subject;
use crate::authz::pool::Pool;
use crate::pg::Database;
use crate::stream::frame::Detail;

/// Connections of the row-authorization pool.
const POOL_SIZE: usize = 8;

/// Who may see one change: attached to its frame by the WAL source.
#[derive(Debug)]
pub struct Decision {
    /// The cohorts asked (a subscriber whose cohort was not asked gets a notice instead).
    pub asked: CohortSet,
    /// The cohorts that may see it.
    pub allowed: CohortSet,
    /// The cohorts whose statement failed for this change's table in its batch, with why.
    pub failed: Failed,
}

/// Cohorts whose statement failed, with the database's reason.
pub type Failed = Arc<[(CohortId, Arc<str>)]>;

impl Decision {
    /// What `cohort` may do with the change: `Ok(true)` see it, `Ok(false)` not, `Err(why)`
    /// nobody could tell (its subscribers are told).
    pub fn verdict(&self, cohort: CohortId) -> Result<bool, &str> {
        if let Some((_, why)) = self.failed.iter().find(|(id, _)| *id == cohort) {
            return Err(why);
        }
        if !self.asked.contains(cohort) {
            return Err("this change was authorized before the subscription's cohort existed");
        }
        Ok(self.allowed.contains(cohort))
    }
}

/// Row authorization for the whole server.
pub struct Rls {
    cohorts: Mutex<Cohorts>,
    pool: Pool,
    which: CohortClaims,
    timeout: Duration,
    /// Counters of the statements run (registered with the server's metrics).
    pub metrics: AuthorizeMetrics,
}

impl Rls {
    /// Row authorization against `db`: cohorts keyed by `which` claims, each statement bounded
    /// by `timeout`.
    pub fn new(
        db: &Database,
        which: CohortClaims,
        timeout: Duration,
        metrics: AuthorizeMetrics,
        discarded: Counter,
    ) -> Self {
        Self {
            cohorts: Mutex::new(Cohorts::new()),
            pool: Pool::new(db, POOL_SIZE, discarded),
            which,
            timeout,
            metrics,
        }
    }

    fn cohorts(&self) -> std::sync::MutexGuard<'_, Cohorts> {
        self.cohorts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a subscriber of `table` (`schema.name`) with `subject`'s role and claims in its
    /// cohort; it stays there until the membership is dropped.
    pub fn join(self: &Arc<Self>, table: &str, subject: &Subject) -> Membership {
        let key = CohortKey::of_subject(subject, &self.which);
        let id = self.cohorts().join(table, key);
        Membership {
            rls: self.clone(),
            table: table.to_owned(),
            id,
            noticed: AtomicU64::new(0),
        }
    }

    /// The decisions for a batch of changes (in order; `None`: no cohort has subscribers on
    /// that change's table). One statement per (table, cohort) of the batch, all at once.
    pub async fn decide(
        &self,
        catalog: &Catalog,
        relations: &RelationCache,
        changes: &[&Change],
    ) -> Vec<Option<Detail>> {
        let mut out: Vec<Option<Detail>> = vec![None; changes.len()];
        // The batch's tables, in order of first appearance, with their changes' indexes.
        let mut tables: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            match tables.iter_mut().find(|(t, _)| *t == c.table()) {
                Some((_, idx)) => idx.push(i),
                None => tables.push((c.table(), vec![i])),
            }
        }
        struct Part {
            idx: Vec<usize>,
            cohorts: Vec<(CohortId, Arc<CohortKey>)>,
            shape: Result<TableShape, String>,
            maps: Vec<Map<String, Value>>,
        }
        let mut parts: Vec<Part> = Vec::new();
        for (table, idx) in tables {
            let cohorts = self.cohorts().on_table(table);
            if cohorts.is_empty() {
                continue;
            }
            let shape = shape(catalog, relations, table).await;
            let maps = idx
                .iter()
                .map(|&i| serde_json::from_str(&changes[i].text).unwrap_or_default())
                .collect();
            parts.push(Part {
                idx,
                cohorts,
                shape,
                maps,
            });
        }
        // The transactions must be visible before their rows are checked (see
        // `Catalog::all_visible`); if that cannot be confirmed in time, nobody decides: every
        // cohort of the batch is told (never a silent "not visible").
        if !parts.is_empty()
            && !self
                .visible(
                    catalog,
                    &parts.iter().flat_map(|p| p.maps.iter()).collect::<Vec<_>>(),
                )
                .await
        {
            for p in &mut parts {
                p.shape = Err(
                    "the changes' transaction did not become visible in time to be authorized"
                        .into(),
                );
            }
        }
        let row_changes: Vec<Vec<RowChange<'_>>> = parts
            .iter()
            .map(|p| p.maps.iter().filter_map(RowChange::of_change).collect())
            .collect();
        // Only the parts whose shape is known and whose changes all read go to the database;
        // the others fail for every cohort (nothing is delivered on a guess).
        let mut asked = Vec::new();
        let mut table_parts = Vec::new();
        for (p, rc) in parts.iter().zip(&row_changes) {
            if let Ok(shape) = &p.shape
                && rc.len() == p.maps.len()
            {
                asked.push(true);
                table_parts.push(TablePart {
                    table: shape,
                    cohorts: &p.cohorts,
                    changes: rc,
                });
            } else {
                asked.push(false);
            }
        }
        let mut decisions =
            authorize::decide_batch(&self.pool, &table_parts, self.timeout, &self.metrics)
                .await
                .into_iter();
        for (p, was_asked) in parts.iter().zip(asked) {
            let ids: Vec<CohortId> = p.cohorts.iter().map(|(id, _)| *id).collect();
            let (allowed, failed): (Vec<CohortSet>, Failed) = if was_asked
                && let Some(d) = decisions.next()
            {
                let failed = d
                    .failed
                    .iter()
                    .map(|(id, e)| (*id, Arc::from(e.to_string())))
                    .collect();
                (d.allowed, failed)
            } else {
                let why: Arc<str> = match &p.shape {
                    Err(e) => e.as_str().into(),
                    Ok(_) => "a change of this table could not be read for authorization".into(),
                };
                (
                    vec![CohortSet::default(); p.idx.len()],
                    ids.iter().map(|id| (*id, why.clone())).collect(),
                )
            };
            let asked = CohortSet::from_ids(ids);
            for (k, &i) in p.idx.iter().enumerate() {
                out[i] = Some(Arc::new(Decision {
                    asked: asked.clone(),
                    allowed: allowed.get(k).cloned().unwrap_or_default(),
                    failed: failed.clone(),
                }) as Detail);
            }
        }
        out
    }
}

impl Rls {
    /// Waits (at most the statement timeout) until every transaction of `changes` is visible.
    async fn visible(&self, catalog: &Catalog, changes: &[&Map<String, Value>]) -> bool {
        let mut xids: Vec<i64> = changes
            .iter()
            .filter_map(|c| c.get("xid").and_then(Value::as_i64))
            .collect();
        xids.sort_unstable();
        xids.dedup();
        if xids.is_empty() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match catalog.all_visible(&xids).await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot tell whether changes are visible yet");
                    return false;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            // The window is the committing backend's few steps after its commit record.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// The statement's shape for `table` (`schema.name`): its columns from the stream's Relation,
/// its key from the catalog (the primary key, which `REPLICA IDENTITY FULL` does not mark).
async fn shape(
    catalog: &Catalog,
    relations: &RelationCache,
    table: &str,
) -> Result<TableShape, String> {
    let (schema, name) = split_name(table).map_err(|e| e.to_string())?;
    let rel = relations
        .find(schema, name)
        .ok_or_else(|| format!("no description of {table} in the stream"))?;
    let shape = TableShape::of(rel).map_err(|e| e.to_string())?;
    match catalog.describe(schema, name).await {
        Ok(info) if !info.key.is_empty() => {
            let key: Vec<&str> = info.key.iter().map(String::as_str).collect();
            shape.with_key(&key).map_err(|e| e.to_string())
        }
        Ok(_) => Ok(shape),
        Err(e) => Err(e.to_string()),
    }
}

/// A subscriber's place in its cohort; leaving is dropping it.
pub struct Membership {
    rls: Arc<Rls>,
    table: String,
    id: CohortId,
    /// The last transaction (commit LSN) its subscriber was told about a withheld change, so
    /// that a batch costs one notice, not one per change.
    noticed: AtomicU64,
}

impl Membership {
    /// The cohort.
    pub fn cohort(&self) -> CohortId {
        self.id
    }

    /// Whether a notice about a change of the transaction committed at `commit_lsn` is due
    /// (the first of that transaction).
    pub fn notice_due(&self, commit_lsn: u64) -> bool {
        self.noticed.fetch_max(commit_lsn, Ordering::Relaxed) < commit_lsn
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Membership({}, {})", self.table, self.id.0)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.rls.cohorts().leave(&self.table, self.id);
    }
}
