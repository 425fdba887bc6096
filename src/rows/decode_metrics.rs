//! Metrics of table-change decoding that need more than a plain counter: changes counted per
//! table with a bounded number of labels, and the decode lag (commit to delivery) as a
//! histogram. The WAL source owns them and registers them with its other metrics
//! (`crate::source::wal::WalMetrics`).
//!
//! What it owns: the set of tables that already have their own label. What it must never do:
//! let the number of label sets grow with the number of tables (a database with 100,000
//! tables in the publication must not grow /metrics without bound), or block the reader (one
//! short lock per delivered run of changes).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Most tables that get their own `table` label; changes of the others count under
/// [`OTHER`].
pub const MAX_TABLE_LABELS: usize = 1_000;
/// The label value of the tables beyond [`MAX_TABLE_LABELS`].
pub const OTHER: &str = "other";

/// A `table` label: `schema.name`, or [`OTHER`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// The table (`schema.name`).
    pub table: String,
}

/// Table changes delivered, by table: the first [`MAX_TABLE_LABELS`] tables seen get their own
/// label, later ones count under `table="other"` (a table keeps its label once it has one).
#[derive(Clone)]
pub struct TableChanges {
    /// The counters (registered).
    pub family: Family<TableLabel, Counter>,
    labelled: Arc<Mutex<HashSet<String>>>,
    limit: usize,
}

impl Default for TableChanges {
    fn default() -> Self {
        Self::with_limit(MAX_TABLE_LABELS)
    }
}

impl TableChanges {
    /// At most `limit` tables labelled.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            family: Family::default(),
            labelled: Arc::new(Mutex::new(HashSet::new())),
            limit,
        }
    }

    /// Counts `n` changes of `table` (`schema.name`).
    pub fn add(&self, table: &str, n: u64) {
        let own = {
            let mut labelled = self.labelled.lock().unwrap_or_else(|e| e.into_inner());
            if labelled.contains(table) {
                true
            } else if labelled.len() < self.limit {
                labelled.insert(table.to_string());
                true
            } else {
                false
            }
        };
        let table = if own { table } else { OTHER };
        self.family
            .get_or_create(&TableLabel {
                table: table.to_string(),
            })
            .inc_by(n);
    }
}

/// Seconds from a change's commit to its delivery to the hub (PostgreSQL's commit timestamp
/// against this host's clock, so clock skew between the two shows up here too).
#[derive(Clone)]
pub struct DecodeLag(pub Histogram);

impl Default for DecodeLag {
    fn default() -> Self {
        Self(Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ]))
    }
}

impl DecodeLag {
    /// Records the lag of `n` changes committed at `commit_micros` (microseconds since
    /// 2000-01-01 UTC), now. A commit "in the future" (skew) counts as no lag.
    pub fn observe(&self, commit_micros: i64, n: u64) {
        let lag = (now_pg_micros() - commit_micros).max(0) as f64 / 1e6;
        for _ in 0..n {
            self.0.observe(lag);
        }
    }
}

/// Microseconds since PostgreSQL's epoch (2000-01-01 UTC), now.
fn now_pg_micros() -> i64 {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    unix - PG_EPOCH_UNIX_SECS * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn tables_beyond_the_limit_count_as_other() {
        let t = TableChanges::with_limit(2);
        t.add("public.a", 1);
        t.add("public.b", 2);
        t.add("public.c", 3);
        t.add("public.a", 1);
        t.add("public.d", 4);
        let mut r = Registry::default();
        r.register("changes", "", t.family.clone());
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        assert!(out.contains("changes_total{table=\"public.a\"} 2"), "{out}");
        assert!(out.contains("changes_total{table=\"public.b\"} 2"), "{out}");
        assert!(out.contains("changes_total{table=\"other\"} 7"), "{out}");
        assert!(!out.contains("public.c"), "{out}");
    }

    #[test]
    fn lag_is_measured_from_the_commit() {
        let lag = DecodeLag::default();
        lag.observe(now_pg_micros() - 2_000_000, 3);
        let mut r = Registry::default();
        r.register("lag", "", lag.0.clone());
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        assert!(out.contains("lag_count 3"), "{out}");
        assert!(out.contains("lag_bucket{le=\"1.0\"} 0"), "{out}");
        assert!(out.contains("lag_bucket{le=\"2.5\"} 3"), "{out}");
    }
}
