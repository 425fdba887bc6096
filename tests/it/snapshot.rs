//! Snapshot, then live (issue 23): a row subscription that starts from the table's current rows
//! and follows the changes from exactly the snapshot's point, under concurrent writers. The
//! client's collection is checked against the table, row by row, and every change is applied
//! strictly (an INSERT of a row it has, an UPDATE or DELETE of one it lacks, is counted as a
//! duplicate or a loss).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::common::*;

const FILTER: &str = "done=eq.false";

/// Random writes (insert, update, delete) on `todos` until `stop`, each its own transaction.
async fn writer(db_uri: String, seed: u64, stop: Arc<AtomicBool>, writes: Arc<AtomicU64>) {
    let db = pg(&db_uri).await;
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while !stop.load(Ordering::Relaxed) {
        let id = (next() % 3_000) as i32 + 1;
        let r = match next() % 4 {
            0 => {
                db.execute(
                    "INSERT INTO todos VALUES ($1, $2, 'new', $3) ON CONFLICT (id) DO NOTHING",
                    &[&id, &((next() % 10) as i32), &(next() % 2 == 0)],
                )
                .await
            }
            1 => db.execute("DELETE FROM todos WHERE id = $1", &[&id]).await,
            _ => {
                db.execute(
                    "UPDATE todos SET done = NOT done, title = md5(random()::text) WHERE id = $1",
                    &[&id],
                )
                .await
            }
        };
        r.unwrap();
        writes.fetch_add(1, Ordering::Relaxed);
    }
}

/// The client's side: a collection by key, and the violations of strict application.
#[derive(Default)]
struct Collection {
    rows: BTreeMap<i64, Value>,
    lost: usize,
    duplicated: usize,
}

impl Collection {
    fn apply(&mut self, change: &Value) {
        let id = |row: &Value| row["id"].as_i64().unwrap();
        match (change["op"].as_str().unwrap(), change["move"].as_str()) {
            ("INSERT", _) | ("UPDATE", Some("in")) => {
                if self
                    .rows
                    .insert(id(&change["new"]), change["new"].clone())
                    .is_some()
                {
                    self.duplicated += 1;
                }
            }
            ("UPDATE", Some("out")) | ("DELETE", _) => {
                let key = if change["old"].is_object() {
                    &change["old"]
                } else {
                    &change["new"]
                };
                if self.rows.remove(&id(key)).is_none() {
                    self.lost += 1;
                }
            }
            ("UPDATE", _) => {
                if self
                    .rows
                    .insert(id(&change["new"]), change["new"].clone())
                    .is_none()
                {
                    self.lost += 1;
                }
            }
            other => panic!("unexpected change {other:?}: {change}"),
        }
    }
}

// Must show (issue 23): a snapshot under concurrent writers meets the change stream exactly:
// at the end the collection equals the table as filtered, with 0 lost and 0 duplicated
// changes; repeated 20 times, each a fresh subscription taken while writers run.
#[tokio::test]
async fn a_snapshot_under_concurrent_writers_meets_the_stream_exactly() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE todos (id int PRIMARY KEY, owner int, title text, done bool); \
         ALTER TABLE todos REPLICA IDENTITY FULL; \
         INSERT INTO todos SELECT i, i % 10, 'seed', i % 3 = 0 FROM generate_series(1, 2000) i; \
         INSERT INTO todos VALUES (0, 0, 'sentinel', false); \
         CREATE PUBLICATION pgws FOR TABLE todos;",
    )
    .await
    .unwrap();
    let s = start_on(&db_uri, &["--source", "wal"]).await;
    let channel = "table:public.todos";
    let t = token(json!({"mode":"r","channels":[channel]}));
    let writes = Arc::new(AtomicU64::new(0));
    let (mut total_changes, mut total_rows) = (0, 0);
    for round in 0..20u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|w| {
                tokio::spawn(writer(
                    db_uri.clone(),
                    round * 7 + w + 1,
                    stop.clone(),
                    writes.clone(),
                ))
            })
            .collect();
        let before = writes.load(Ordering::Relaxed);
        let (mut ws, _) = open_v2_url(&s.url(&format!("/{t}"))).await;
        send(
            &mut ws,
            &json!({"type":"subscribe","id":1,"channel":channel,"filter":FILTER,"snapshot":true})
                .to_string(),
        )
        .await;
        let mut c = Collection::default();
        let mut ended = false;
        let mut after_end = 0;
        let sentinel = format!("end-{round}");
        let mut stopped = false;
        loop {
            let v = next_json(&mut ws).await;
            match v["type"].as_str().unwrap() {
                "subscribed" => assert_eq!(v["snapshot"], true, "{v}"),
                "snapshot" => {
                    assert!(!ended);
                    for row in v["rows"].as_array().unwrap() {
                        c.rows.insert(row["id"].as_i64().unwrap(), row.clone());
                        total_rows += 1;
                    }
                }
                "snapshot_end" => {
                    ended = true;
                    assert!(v["position"].is_string(), "{v}");
                }
                "message" => {
                    let change: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
                    c.apply(&change);
                    total_changes += 1;
                    if ended {
                        after_end += 1;
                    }
                    if change["new"]["title"] == sentinel.as_str() {
                        break;
                    }
                }
                other => panic!("unexpected frame {other}: {v}"),
            }
            // Writers run through the snapshot and a while after it; then stop, and a last
            // update of the sentinel row marks the end of the stream for this round.
            if ended && after_end >= 100 && !stopped {
                stopped = true;
                stop.store(true, Ordering::Relaxed);
                for w in &writers {
                    while !w.is_finished() {
                        tokio::task::yield_now().await;
                    }
                }
                db.execute("UPDATE todos SET title = $1 WHERE id = 0", &[&sentinel])
                    .await
                    .unwrap();
            }
        }
        assert!(
            writes.load(Ordering::Relaxed) - before >= 100,
            "writers kept writing"
        );
        let expected: BTreeMap<i64, Value> = db
            .query(
                "SELECT id::int8, to_jsonb(t)::text FROM todos t WHERE NOT done",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0),
                    serde_json::from_str(r.get::<_, &str>(1)).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            (c.lost, c.duplicated),
            (0, 0),
            "round {round}: changes lost / duplicated"
        );
        assert_eq!(c.rows.len(), expected.len(), "round {round}: rows");
        let differ: Vec<_> = expected
            .iter()
            .filter(|(k, v)| c.rows.get(k) != Some(v))
            .take(3)
            .map(|(k, v)| (k, v, c.rows.get(k)))
            .collect();
        assert!(
            differ.is_empty(),
            "round {round}: rows differ from the table: {differ:?}"
        );
    }
    println!(
        "20 rounds: {total_rows} snapshot rows, {total_changes} changes, {} writes",
        writes.load(Ordering::Relaxed)
    );
}
