//! What a row subscription needs to know about its table before the first change arrives:
//! whether the table is in pgws's publication, its columns with their types (to bind the
//! filter), and its key columns (always sent, so clients can keep rows by key).
//!
//! What it owns: one database connection, opened on demand and re-opened after an error, and a
//! short-lived cache of answers (a reconnect storm of a thousand clients asks once per table,
//! not a thousand times). What it must never do: put a name into SQL text: the schema, the
//! table and the publication are bound parameters of one catalog query.
//!
//! Why a catalog query rather than the WAL stream's Relation messages: PostgreSQL sends a
//! table's Relation only before its first change, so a subscription made before any change
//! (the usual case) would have nothing to bind its filter to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::value::ColumnType;
use crate::pg::{Database, describe, with_defaults};

/// How long an answer is reused. Short: an `ALTER TABLE` or `ALTER PUBLICATION` is seen by
/// the subscriptions made this long after it.
const TTL: Duration = Duration::from_secs(2);
/// How long one catalog query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The columns, types and key of a table in the publication.
const DESCRIBE: &str = "\
SELECT a.attname::text, a.atttypid::oid, \
       COALESCE((SELECT a.attnum = ANY (i.indkey::int2[]) FROM pg_index i \
                 WHERE i.indrelid = c.oid AND (i.indisprimary OR (c.relreplident = 'i' AND i.indisreplident)) \
                 ORDER BY i.indisprimary DESC LIMIT 1), false) \
FROM pg_class c \
JOIN pg_namespace n ON n.oid = c.relnamespace \
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
WHERE n.nspname = $1 AND c.relname = $2 \
  AND EXISTS (SELECT 1 FROM pg_publication_tables p \
              WHERE p.pubname = $3 AND p.schemaname = n.nspname AND p.tablename = c.relname) \
ORDER BY a.attnum";

/// Whether 32-bit transaction ids are visible to a snapshot taken now: each is widened to the
/// 64-bit id of the current epoch (or the one before, if that would be past `xmax`), then asked
/// to `pg_visible_in_snapshot`; an id older than epoch 0 allows is long frozen (visible).
const VISIBLE: &str = "\
WITH m AS (SELECT s AS snap, pg_snapshot_xmax(s)::text::int8 AS xmax8 FROM pg_current_snapshot() s), \
w AS (SELECT m.snap, CASE WHEN ((m.xmax8 >> 32) << 32) + x > m.xmax8 \
                          THEN ((m.xmax8 >> 32) << 32) + x - 4294967296 \
                          ELSE ((m.xmax8 >> 32) << 32) + x END AS x8 \
      FROM m, unnest($1::int8[]) AS x) \
SELECT bool_and(x8 < 0 OR pg_visible_in_snapshot(x8::text::xid8, snap)) FROM w";

/// A table as row subscriptions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Every column with its type, in the table's order.
    pub columns: Vec<(String, ColumnType)>,
    /// The primary key's columns (else the replica identity index's; empty without either).
    pub key: Vec<String>,
}

/// Why a table cannot be subscribed to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogError {
    /// Not a `table:<schema>.<table>` name.
    #[error("a table's channel is table:<schema>.<table> (got {0:?})")]
    BadName(String),
    /// No such table, or not in the publication.
    #[error(
        "table {schema}.{table} is not in pgws's publication {publication:?} (or does not exist): ALTER PUBLICATION {publication} ADD TABLE ..."
    )]
    NotPublished {
        /// The schema asked for.
        schema: String,
        /// The table asked for.
        table: String,
        /// The publication pgws reads.
        publication: String,
    },
    /// The catalog could not be read.
    #[error("the table's description could not be read: {0}")]
    Unavailable(String),
}

/// The schema and table a table channel's name (without its prefix) names: `schema.table`,
/// split at the first dot.
pub fn split_name(name: &str) -> Result<(&str, &str), CatalogError> {
    match name.split_once('.') {
        Some((schema, table)) if !schema.is_empty() && !table.is_empty() => Ok((schema, table)),
        _ => Err(CatalogError::BadName(name.to_owned())),
    }
}

/// (schema, table).
type TableName = (String, String);

/// Reads tables' descriptions for row subscriptions.
pub struct Catalog {
    db: Database,
    publication: String,
    conn: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    cache: Mutex<HashMap<TableName, (Instant, Arc<TableInfo>)>>,
    /// Catalog queries sent (a storm of subscriptions to one table should make one).
    queries: AtomicU64,
}

impl Catalog {
    /// A catalog of `publication` in `db` (nothing is opened yet).
    pub fn new(db: &Database, publication: &str) -> Self {
        Self {
            db: with_defaults(db),
            publication: publication.to_owned(),
            conn: tokio::sync::Mutex::default(),
            cache: Mutex::default(),
            queries: AtomicU64::new(0),
        }
    }

    /// The table `schema.table`, if it is in the publication.
    pub async fn describe(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Arc<TableInfo>, CatalogError> {
        let key = (schema.to_owned(), table.to_owned());
        if let Some(info) = self.cached(&key) {
            return Ok(info);
        }
        tokio::time::timeout(QUERY_TIMEOUT, self.refresh(key, schema, table))
            .await
            .map_err(|_| CatalogError::Unavailable(format!("no answer within {QUERY_TIMEOUT:?}")))?
    }

    /// The cached answer for `key`, if it is recent.
    fn cached(&self, key: &TableName) -> Option<Arc<TableInfo>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, info)| info.clone())
    }

    /// Asks the database, one query at a time. Why the cache is read again under the
    /// connection's lock: a storm of subscriptions to one table all miss the cache at once and
    /// queue here; without a second look each would run the query in turn, and with thousands
    /// of them the last ones waited past [`QUERY_TIMEOUT`] and were refused.
    async fn refresh(
        &self,
        key: TableName,
        schema: &str,
        table: &str,
    ) -> Result<Arc<TableInfo>, CatalogError> {
        let mut conn = self.conn.lock().await;
        if let Some(info) = self.cached(&key) {
            return Ok(info);
        }
        let rows = self.query(&mut conn, schema, table).await?;
        if rows.is_empty() {
            return Err(CatalogError::NotPublished {
                schema: schema.to_owned(),
                table: table.to_owned(),
                publication: self.publication.clone(),
            });
        }
        let mut info = TableInfo {
            columns: Vec::with_capacity(rows.len()),
            key: Vec::new(),
        };
        for (name, type_oid, is_key) in rows {
            if is_key {
                info.key.push(name.clone());
            }
            info.columns.push((name, ColumnType::of(type_oid)));
        }
        let info = Arc::new(info);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the tables clients ask for that exist; expired answers go on each insert.
        cache.retain(|_, (at, _)| at.elapsed() < TTL);
        cache.insert(key, (Instant::now(), info.clone()));
        Ok(info)
    }

    /// Whether every transaction of `xids` (pgoutput's 32-bit ids) is visible to a snapshot
    /// taken now. Logical decoding can hand over a transaction after its commit record is
    /// written and before the committing backend makes it visible: a check that reads the table
    /// in between does not see its rows yet (per-row authorization waits for this first).
    pub async fn all_visible(&self, xids: &[i64]) -> Result<bool, CatalogError> {
        let mut conn = self.conn.lock().await;
        let client = self.open(&mut conn).await?;
        match client.query_one(VISIBLE, &[&xids]).await {
            Ok(row) => Ok(row.get::<_, Option<bool>>(0).unwrap_or(true)),
            Err(e) => {
                *conn = None;
                Err(CatalogError::Unavailable(describe(&e)))
            }
        }
    }

    /// The catalog's connection, opened first if there is none (or it broke).
    async fn open<'c>(
        &self,
        conn: &'c mut Option<tokio_postgres::Client>,
    ) -> Result<&'c tokio_postgres::Client, CatalogError> {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            let (client, connection) = self
                .db
                .connect()
                .await
                .map_err(|e| CatalogError::Unavailable(describe(&e)))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "row catalog connection ended");
                }
            });
            *conn = Some(client);
        }
        Ok(conn.as_ref().expect("opened above"))
    }

    /// Runs the query on the catalog's connection, opening it first if needed; a failed
    /// connection is dropped so the next call opens a fresh one.
    async fn query(
        &self,
        conn: &mut Option<tokio_postgres::Client>,
        schema: &str,
        table: &str,
    ) -> Result<Vec<(String, u32, bool)>, CatalogError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let client = self.open(conn).await?;
        match client
            .query(DESCRIBE, &[&schema, &table, &self.publication])
            .await
        {
            Ok(rows) => Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, u32>(1),
                        r.get::<_, bool>(2),
                    )
                })
                .collect()),
            Err(e) => {
                *conn = None;
                Err(CatalogError::Unavailable(describe(&e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::Cluster;

    /// Two thousand subscriptions to one table at once (a reconnect storm) all get the table's
    /// description, and the database is asked once, not once per subscription.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_storm_reads_the_catalog_once() {
        let cluster = tokio::task::spawn_blocking(Cluster::start)
            .await
            .unwrap()
            .expect("start PostgreSQL");
        let uri = cluster.connection_string("postgres");
        let (client, conn) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TABLE storm (id int PRIMARY KEY, user_id int); \
                 CREATE PUBLICATION storm_pub FOR TABLE storm;",
            )
            .await
            .expect("create the table");
        let db = Database::parse(&uri).expect("connection string");
        let catalog = Arc::new(Catalog::new(&db, "storm_pub"));
        let calls: Vec<_> = (0..2000)
            .map(|_| {
                let c = catalog.clone();
                tokio::spawn(async move { c.describe("public", "storm").await })
            })
            .collect();
        for call in calls {
            let info = call.await.unwrap().expect("described");
            assert_eq!(info.key, ["id"]);
            assert_eq!(info.columns.len(), 2);
        }
        assert_eq!(catalog.queries.load(Ordering::Relaxed), 1);
        let missing = catalog.describe("public", "nope").await;
        assert!(matches!(missing, Err(CatalogError::NotPublished { .. })));
    }
}
