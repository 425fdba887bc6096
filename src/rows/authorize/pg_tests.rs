//! Row authorization against a real PostgreSQL: PostgREST-style roles and policies, changes
//! read from a real pgoutput slot and built by `rows::change`, every decision compared with an
//! oracle (a plain `SELECT` run as the cohort's role with its claims).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value, json};
use tokio_postgres::NoTls;

use super::*;
use crate::embedded::Cluster;
use crate::rows::change;
use crate::rows::pgoutput::{self, Message, RelationCache};

const WAIT: Duration = Duration::from_secs(30);

async fn start() -> (Cluster, tokio_postgres::Client, Pool) {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let (client, conn) = tokio::time::timeout(
        WAIT,
        tokio_postgres::connect(&cluster.connection_string("postgres"), NoTls),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    tokio::spawn(conn);
    // The throwaway cluster commits asynchronously; the slot decodes only flushed WAL, so the
    // test's writes wait for the flush before the slot is read.
    client
        .batch_execute("SET synchronous_commit = on")
        .await
        .unwrap();
    let db = crate::pg::Database::parse(&cluster.connection_string("postgres")).unwrap();
    let pool = Pool::new(&db, 10, Counter::default());
    (cluster, client, pool)
}

/// A logical slot read with SQL, decoded and turned into change objects as the WAL source does.
struct Slot {
    name: &'static str,
    publication: &'static str,
    relations: RelationCache,
}

impl Slot {
    async fn create(
        db: &tokio_postgres::Client,
        name: &'static str,
        publication: &'static str,
    ) -> Self {
        db.batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')"
        ))
        .await
        .expect("create the slot");

        Self {
            name,
            publication,
            relations: RelationCache::new(),
        }
    }

    /// The table changes committed since the last read, with their Relation.
    async fn changes(
        &mut self,
        db: &tokio_postgres::Client,
    ) -> Vec<(Arc<pgoutput::Relation>, Map<String, Value>)> {
        // The test's own fixed names.
        let rows = db
            .query(
                &format!(
                    "SELECT data FROM pg_logical_slot_get_binary_changes('{}', NULL, NULL, \
                     'proto_version', '1', 'publication_names', '{}')",
                    self.name, self.publication
                ),
                &[],
            )
            .await
            .expect("read the slot");
        let mut out = Vec::new();
        for row in rows {
            let data: Vec<u8> = row.get(0);
            let msg = pgoutput::decode(&data).expect("decode");
            self.relations.observe(&msg);
            let oid = match &msg {
                Message::Insert { relation, .. }
                | Message::Update { relation, .. }
                | Message::Delete { relation, .. } => Some(*relation),
                Message::Truncate { relations, .. } => relations.first().copied(),
                _ => None,
            };
            let Some(oid) = oid else { continue };
            let rel = self.relations.get(oid).unwrap().clone();
            for c in change::changes(&msg, &self.relations, 0, 0).expect("build") {
                let Value::Object(obj) = serde_json::from_str(&c.text).unwrap() else {
                    panic!("a change is an object");
                };
                out.push((rel.clone(), obj));
            }
        }
        out
    }
}

/// What the cohort may `SELECT` now, by `id`, and whether RLS applies to it: the oracle.
async fn oracle(
    db: &mut tokio_postgres::Client,
    cohort: &CohortKey,
    table: &str,
) -> Result<(HashMap<i64, Map<String, Value>>, bool), String> {
    let tx = db.transaction().await.unwrap();
    tx.execute(
        "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
        &[&cohort.role(), &cohort.claims()],
    )
    .await
    .unwrap();
    // The test's own fixed table names.
    let rows = tx
        .query(&format!("SELECT to_jsonb(t)::text FROM {table} t"), &[])
        .await
        .map_err(|e| crate::pg::describe(&e))?;
    let active: bool = tx
        .query_one("SELECT row_security_active($1::text)", &[&table])
        .await
        .unwrap()
        .get(0);
    tx.rollback().await.unwrap();
    let mut visible = HashMap::new();
    for row in rows {
        let text: String = row.get(0);
        let Value::Object(obj) = serde_json::from_str(&text).unwrap() else {
            panic!("a row is an object")
        };
        visible.insert(obj["id"].as_i64().unwrap(), obj);
    }
    Ok((visible, active))
}

/// What the oracle says a cohort may receive of a change.
fn expected(change: &RowChange<'_>, visible: &HashMap<i64, Map<String, Value>>, rls: bool) -> bool {
    match change.op {
        Op::Truncate => true,
        Op::Delete => !rls,
        Op::Insert | Op::Update => {
            let row = change.row.unwrap();
            let id = row["id"].as_i64().unwrap();
            visible
                .get(&id)
                .is_some_and(|now| row.iter().all(|(k, v)| now.get(k) == Some(v)))
        }
    }
}

/// A small deterministic generator (no extra crate for tests).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len() as u64) as usize]
    }
}

const POSTGREST: &str = r#"
CREATE ROLE anon NOLOGIN;
CREATE ROLE authenticated NOLOGIN;
CREATE ROLE service NOLOGIN BYPASSRLS;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service;
CREATE TABLE todos (id int PRIMARY KEY, owner text, team text, public boolean NOT NULL,
  title text, body text, n numeric, tags text[], meta jsonb);
ALTER TABLE todos ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE todos ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON todos TO anon, authenticated, service;
CREATE POLICY public_rows ON todos FOR SELECT USING (public);
CREATE POLICY own_rows ON todos FOR SELECT TO authenticated
  USING (owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
CREATE POLICY team_rows ON todos FOR SELECT TO authenticated
  USING (team = current_setting('request.jwt.claims', true)::jsonb ->> 'team');
CREATE PUBLICATION rls_pub FOR TABLE todos;
"#;

fn cohort(role: &str, claims: Value) -> CohortKey {
    CohortKey::new(role, claims.as_object().unwrap(), &CohortClaims::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_decisions_match_an_oracle_over_10000_changes() {
    let (_cluster, mut db, pool) = start().await;
    db.batch_execute(POSTGREST).await.expect("set up");
    let mut slot = Slot::create(&db, "rls_slot", "rls_pub").await;
    let mut registry = Cohorts::new();
    let keys = [
        cohort("anon", json!({"role": "anon"})),
        cohort(
            "authenticated",
            json!({"sub": "u1", "team": "red", "exp": 1}),
        ),
        cohort(
            "authenticated",
            json!({"sub": "u2", "team": "red", "exp": 2}),
        ),
        cohort("authenticated", json!({"sub": "u3", "team": "blue"})),
        cohort("service", json!({"role": "service"})),
    ];
    for k in &keys {
        registry.join("table:public.todos", k.clone());
    }
    let cohorts = registry.on_table("table:public.todos");
    assert_eq!(cohorts.len(), 5);
    let metrics = AuthorizeMetrics::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut live: Vec<i32> = Vec::new();
    let mut next_id = 1;
    let (mut changes_total, mut batches) = (0usize, 0usize);
    let (mut delivered, mut withheld) = (vec![0usize; 5], vec![0usize; 5]);
    let (mut team_before_change, mut team_after_change) = (0, 0);
    let owners = ["u1", "u2", "u3", "u4"];
    let teams = ["red", "blue", "green"];
    while changes_total < 10_000 {
        batches += 1;
        if batches == 26 {
            // Mid-stream: team rows are no longer shared. The next batch follows it.
            db.batch_execute("ALTER POLICY team_rows ON todos USING (false)")
                .await
                .unwrap();
        }
        let statements = 100 + rng.below(200);
        let tx = db.transaction().await.unwrap();
        for _ in 0..statements {
            let roll = rng.below(10);
            if live.len() < 20 || roll < 3 {
                let id = next_id;
                next_id += 1;
                let body = if rng.below(4) == 0 {
                    "x".repeat(3000)
                } else {
                    format!("body {id}")
                };
                tx.execute(
                    "INSERT INTO todos VALUES ($1, $2, $3, $4, $5, $6, $7::text::numeric, $8, $9::text::jsonb)",
                    &[
                        &id,
                        &rng.pick(&owners),
                        &rng.pick(&teams),
                        &(rng.below(3) == 0),
                        &format!("title {id}"),
                        &body,
                        &format!("{}.{}0", rng.below(100), rng.below(10)),
                        &vec![rng.pick(&teams).to_owned()],
                        &format!("{{\"k\": {}}}", rng.below(5)),
                    ],
                )
                .await
                .unwrap();
                live.push(id);
            } else if roll < 8 {
                let id = live[rng.below(live.len() as u64) as usize];
                match rng.below(5) {
                    0 => tx
                        .execute(
                            "UPDATE todos SET owner = $2 WHERE id = $1",
                            &[&id, &rng.pick(&owners)],
                        )
                        .await
                        .unwrap(),
                    1 => tx
                        .execute(
                            "UPDATE todos SET team = $2 WHERE id = $1",
                            &[&id, &rng.pick(&teams)],
                        )
                        .await
                        .unwrap(),
                    2 => tx
                        .execute("UPDATE todos SET public = NOT public WHERE id = $1", &[&id])
                        .await
                        .unwrap(),
                    3 => tx
                        .execute(
                            "UPDATE todos SET title = $2 WHERE id = $1",
                            &[&id, &format!("t{}", rng.below(1000))],
                        )
                        .await
                        .unwrap(),
                    _ => {
                        // A key change.
                        let new_id = next_id;
                        next_id += 1;
                        live.retain(|l| *l != id);
                        live.push(new_id);
                        tx.execute("UPDATE todos SET id = $2 WHERE id = $1", &[&id, &new_id])
                            .await
                            .unwrap()
                    }
                };
            } else {
                let i = rng.below(live.len() as u64) as usize;
                let id = live.swap_remove(i);
                tx.execute("DELETE FROM todos WHERE id = $1", &[&id])
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
        let batch = slot.changes(&db).await;
        assert_eq!(batch.len() as u64, statements);
        let shape = TableShape::of(&batch[0].0).unwrap();
        let rows: Vec<RowChange<'_>> = batch
            .iter()
            .map(|(_, c)| RowChange::of_change(c).unwrap())
            .collect();
        let decision = decide_table(
            &pool,
            &cohorts,
            &shape,
            &rows,
            Duration::from_secs(10),
            &metrics,
        )
        .await;
        assert!(decision.failed.is_empty(), "{:?}", decision.failed);
        for (n, (id, key)) in cohorts.iter().enumerate() {
            let (visible, rls) = oracle(&mut db, key, "todos").await.unwrap();
            for (i, change) in rows.iter().enumerate() {
                let want = expected(change, &visible, rls);
                let got = decision.allowed[i].contains(*id);
                assert_eq!(
                    got,
                    want,
                    "batch {batches}, change {i} ({:?}), cohort {} {}: decided {got}, oracle {want}: {:?}",
                    change.op,
                    key.role(),
                    key.claims(),
                    change.row
                );
                if got {
                    delivered[n] += 1;
                } else {
                    withheld[n] += 1;
                }
                if got && key.role() == "authenticated" && change.op != Op::Delete {
                    let row = change.row.unwrap();
                    let claims: Value = serde_json::from_str(key.claims()).unwrap();
                    let mine = row.get("owner") == claims.get("sub");
                    if !mine && row.get("public") != Some(&json!(true)) {
                        if batches >= 26 {
                            team_after_change += 1;
                        } else {
                            team_before_change += 1;
                        }
                    }
                }
            }
        }
        changes_total += rows.len();
    }
    // Every cohort got some and missed some; the policy change took effect at once.
    for (n, d) in delivered.iter().enumerate() {
        assert!(*d > 0, "cohort {n} received nothing");
    }
    for (n, w) in withheld.iter().enumerate().take(4) {
        assert!(*w > 0, "cohort {n} was shown everything");
    }
    assert!(
        team_before_change > 0,
        "team rows shown before the policy change"
    );
    assert_eq!(
        team_after_change, 0,
        "team rows shown after the policy change"
    );
    let queries = metrics.queries.get();
    assert_eq!(
        queries,
        (batches * 5) as u64,
        "one statement per cohort per batch"
    );
    eprintln!(
        "{changes_total} changes in {batches} batches, 5 cohorts: {queries} statements, \
         delivered {delivered:?}, withheld {withheld:?}"
    );

    // TRUNCATE: every cohort with the grant is told, after which the grant is revoked and the
    // cohort's next batch fails with the database's reason while the others are decided.
    db.batch_execute(
        "TRUNCATE todos; REVOKE SELECT ON todos FROM anon; \
         INSERT INTO todos (id, owner, team, public) VALUES (1, 'u1', 'red', true)",
    )
    .await
    .unwrap();
    let batch = slot.changes(&db).await;
    let shape = TableShape::of(&batch[0].0).unwrap();
    let rows: Vec<RowChange<'_>> = batch
        .iter()
        .map(|(_, c)| RowChange::of_change(c).unwrap())
        .collect();
    assert_eq!(rows[0].op, Op::Truncate);
    let decision = decide_table(
        &pool,
        &cohorts,
        &shape,
        &rows,
        Duration::from_secs(10),
        &metrics,
    )
    .await;
    let anon = cohorts[0].0;
    assert_eq!(decision.failed.len(), 1);
    let (failed, why) = &decision.failed[0];
    assert_eq!(*failed, anon);
    assert!(
        matches!(why, AuthorizeError::Refused { sqlstate, message, .. }
            if sqlstate == "42501" && message.contains("permission denied for table todos")),
        "{why}"
    );
    for (id, _) in &cohorts[1..] {
        assert!(decision.allowed[0].contains(*id), "TRUNCATE told");
        assert!(decision.allowed[1].contains(*id), "a public row");
    }
}

/// Every common column type (the table `rows::pg_tests` checks values on): the change's
/// values, typed back through the row type, equal the row's own, so every current version is
/// delivered and every superseded one withheld.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_type_compares_exactly() {
    let (_cluster, db, pool) = start().await;
    db.batch_execute(crate::rows::pg_tests::TABLE)
        .await
        .expect("create the table");
    db.batch_execute(
        "CREATE ROLE authenticated NOLOGIN;
         GRANT USAGE ON SCHEMA public TO authenticated;
         GRANT SELECT ON every_type TO authenticated;
         ALTER TABLE every_type ENABLE ROW LEVEL SECURITY;
         CREATE POLICY odd ON every_type FOR SELECT USING (n % 2 = 1);
         ALTER TABLE every_type REPLICA IDENTITY FULL;
         CREATE PUBLICATION types_pub FOR TABLE every_type;",
    )
    .await
    .unwrap();
    let mut slot = Slot::create(&db, "types_slot", "types_pub").await;
    // Copies of every row (all types, NULLs, extremes), then a change to each copy's `t`.
    db.batch_execute(
        "INSERT INTO every_type SELECT n + 1000, i2, i4, i8, num, f4, f8, t, vc, ch, nm, b, j, \
         jb, ts, tsn, d, tm, ttz, iv, u, by, o, m, ai, at, an, ajb, ats, ab, a2 FROM every_type \
         WHERE n < 1000",
    )
    .await
    .unwrap();
    let batch = slot.changes(&db).await;
    assert_eq!(batch.len(), 5);
    let shape = TableShape::of(&batch[0].0).unwrap();
    // REPLICA IDENTITY FULL flags every column (NULLs included): none is matched with `=`
    // unless the primary key is given.
    assert!(shape.key.is_empty());
    let keyed = shape.clone().with_key(&["n"]).unwrap();
    assert_eq!(keyed.key, vec![0]);
    assert!(shape.clone().with_key(&["nope"]).is_err());
    let key = cohort("authenticated", json!({}));
    let rows: Vec<RowChange<'_>> = batch
        .iter()
        .map(|(_, c)| RowChange::of_change(c).unwrap())
        .collect();
    let odd = |r: &RowChange<'_>| r.row.unwrap()["n"].as_i64().unwrap() % 2 == 1;
    let want: Vec<bool> = rows.iter().map(odd).collect();
    let seen = decide(&pool, &key, &shape, &rows, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(seen, want, "every current version of a visible row");
    let by_key = decide(&pool, &key, &keyed, &rows, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(by_key, want, "the same with the key matched by '='");
    assert!(seen.iter().any(|s| *s) && seen.iter().any(|s| !*s));
    db.batch_execute("UPDATE every_type SET t = coalesce(t, '') || '!' WHERE n > 1000")
        .await
        .unwrap();
    let updates = slot.changes(&db).await;
    let superseded = decide(&pool, &key, &shape, &rows, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(superseded, vec![false; 5], "the inserts were superseded");
    let rows: Vec<RowChange<'_>> = updates
        .iter()
        .map(|(_, c)| RowChange::of_change(c).unwrap())
        .collect();
    let seen = decide(&pool, &key, &shape, &rows, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(seen, rows.iter().map(odd).collect::<Vec<_>>());
}

/// `(role, claims)` of the failure cases, and a policy that raises or sleeps on a claim.
const FAILURES: &str = r#"
CREATE ROLE anon NOLOGIN;
CREATE ROLE authenticated NOLOGIN;
GRANT USAGE ON SCHEMA public TO anon, authenticated;
CREATE FUNCTION boom() RETURNS boolean LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN RAISE EXCEPTION 'policy exploded'; END $$;
CREATE FUNCTION slow() RETURNS boolean LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM pg_sleep(5); RETURN true; END $$;
CREATE TABLE notes (id int PRIMARY KEY, owner text, body text);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON notes TO anon, authenticated;
REVOKE SELECT ON notes FROM anon;
CREATE POLICY p ON notes FOR SELECT USING (
  CASE current_setting('request.jwt.claims', true)::jsonb ->> 'mode'
    WHEN 'boom' THEN boom()
    WHEN 'slow' THEN slow()
    ELSE owner = current_setting('request.jwt.claims', true)::jsonb ->> 'sub' END);
CREATE SCHEMA "sch""ema; --";
GRANT USAGE ON SCHEMA "sch""ema; --" TO authenticated;
CREATE TABLE "sch""ema; --"."we""ird'); DROP TABLE notes; --" (
  "i""d" int PRIMARY KEY, "select" text, "own er" text);
ALTER TABLE "sch""ema; --"."we""ird'); DROP TABLE notes; --" ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON "sch""ema; --"."we""ird'); DROP TABLE notes; --" TO authenticated;
CREATE POLICY p ON "sch""ema; --"."we""ird'); DROP TABLE notes; --" FOR SELECT
  USING ("own er" = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
CREATE PUBLICATION fail_pub FOR TABLE notes, "sch""ema; --"."we""ird'); DROP TABLE notes; --";
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_sleeping_cohort_affects_only_itself() {
    let (_cluster, db, pool) = start().await;
    db.batch_execute(FAILURES).await.expect("set up");
    let mut slot = Slot::create(&db, "fail_slot", "fail_pub").await;
    db.batch_execute(
        "INSERT INTO notes SELECT i, CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END, 'n' || i \
         FROM generate_series(1, 50) i",
    )
    .await
    .unwrap();
    let batch = slot.changes(&db).await;
    assert_eq!(batch.len(), 50);
    let batch_notes = batch.clone();
    let shape = TableShape::of(&batch[0].0).unwrap();
    let rows: Vec<RowChange<'_>> = batch
        .iter()
        .map(|(_, c)| RowChange::of_change(c).unwrap())
        .collect();
    let mut registry = Cohorts::new();
    let t = "table:public.notes";
    let a = registry.join(t, cohort("authenticated", json!({"sub": "a"})));
    let b = registry.join(t, cohort("authenticated", json!({"sub": "b"})));
    let boom = registry.join(t, cohort("authenticated", json!({"mode": "boom"})));
    let slow = registry.join(t, cohort("authenticated", json!({"mode": "slow"})));
    let anon = registry.join(t, cohort("anon", json!({})));
    let cohorts = registry.on_table(t);
    let timeout = Duration::from_millis(300);

    // Each cohort on its own, concurrently, timed.
    let started = Instant::now();
    let timed = join_all(cohorts.iter().map(|(id, key)| {
        let (shape, rows, pool) = (&shape, &rows, &pool);
        async move {
            let answer = decide(pool, key, shape, rows, timeout).await;
            (*id, answer, started.elapsed())
        }
    }))
    .await;
    let took: HashMap<CohortId, Duration> = timed.iter().map(|(id, _, d)| (*id, *d)).collect();
    for (id, answer, _) in &timed {
        let id = *id;
        if id == a || id == b {
            let seen = answer.as_ref().unwrap();
            let owner = if id == a { "a" } else { "b" };
            for (i, row) in rows.iter().enumerate() {
                assert_eq!(seen[i], row.row.unwrap()["owner"] == json!(owner));
            }
        } else if id == boom {
            assert!(
                matches!(answer, Err(AuthorizeError::Refused { sqlstate, message, .. })
                    if sqlstate == "P0001" && message == "policy exploded"),
                "{answer:?}"
            );
        } else if id == slow {
            assert!(
                matches!(answer, Err(AuthorizeError::Timeout { .. })),
                "{answer:?}"
            );
        } else {
            assert_eq!(id, anon);
            let e = answer.as_ref().unwrap_err();
            assert!(
                e.to_string().contains("permission denied for table notes"),
                "{e}"
            );
        }
    }
    assert!(took[&slow] >= timeout, "{:?}", took[&slow]);
    for id in [a, b, boom, anon] {
        assert!(took[&id] < took[&slow], "{id:?} waited for the slow cohort");
    }
    eprintln!(
        "sleeping policy: timed out after {:?}; the other cohorts answered in {:?}, {:?}, {:?}, {:?}",
        took[&slow], took[&a], took[&b], took[&boom], took[&anon]
    );

    // Together: the decision names the failed cohorts with the database's reason.
    let metrics = AuthorizeMetrics::default();
    let decision = decide_table(&pool, &cohorts, &shape, &rows, timeout, &metrics).await;
    let failed: Vec<CohortId> = decision.failed.iter().map(|(id, _)| *id).collect();
    assert_eq!(failed.len(), 3);
    assert!(failed.contains(&boom) && failed.contains(&slow) && failed.contains(&anon));
    for (i, set) in decision.allowed.iter().enumerate() {
        let owner = &rows[i].row.unwrap()["owner"];
        assert_eq!(set.contains(a), *owner == json!("a"));
        assert_eq!(set.contains(b), *owner == json!("b"));
        assert_eq!(set.len(), 1);
    }
    assert_eq!(metrics.failures.get(), 3);
    assert_eq!(metrics.timeouts.get(), 1);
    assert_eq!(metrics.queries.get(), 5);
    // The pool still works after the time-out (the connection was cleaned or discarded).
    assert!(
        decide(
            &pool,
            &registry.key(a).unwrap().clone(),
            &shape,
            &rows,
            timeout
        )
        .await
        .is_ok()
    );

    // Hostile names: quoted, decided, and the statement did nothing else.
    db.batch_execute(
        r#"INSERT INTO "sch""ema; --"."we""ird'); DROP TABLE notes; --" VALUES
           (1, 'x', 'a'), (2, 'y', 'b'), (3, ''';--', 'a')"#,
    )
    .await
    .unwrap();
    let batch = slot.changes(&db).await;
    assert_eq!(batch.len(), 3);
    let shape = TableShape::of(&batch[0].0).unwrap();
    assert_eq!(shape.name, "we\"ird'); DROP TABLE notes; --");
    let rows: Vec<RowChange<'_>> = batch
        .iter()
        .map(|(_, c)| RowChange::of_change(c).unwrap())
        .collect();
    let key = cohort("authenticated", json!({"sub": "a"}));
    let seen = decide(&pool, &key, &shape, &rows, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(seen, vec![true, false, true]);

    // Both tables of a batch at once: each table's cohorts, each its own answer.
    let notes_batch = &batch_notes;
    let notes_shape = TableShape::of(&notes_batch[0].0).unwrap();
    let notes_rows: Vec<RowChange<'_>> = notes_batch
        .iter()
        .map(|(_, c)| RowChange::of_change(c).unwrap())
        .collect();
    let weird_cohorts = vec![(CohortId(0), Arc::new(key.clone()))];
    let decisions = decide_batch(
        &pool,
        &[
            TablePart {
                table: &notes_shape,
                cohorts: &cohorts,
                changes: &notes_rows,
            },
            TablePart {
                table: &shape,
                cohorts: &weird_cohorts,
                changes: &rows,
            },
        ],
        timeout,
        &metrics,
    )
    .await;
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0].failed.len(), 3);
    assert!(decisions[1].failed.is_empty());
    let allowed: Vec<bool> = decisions[1]
        .allowed
        .iter()
        .map(|s| s.contains(CohortId(0)))
        .collect();
    assert_eq!(allowed, vec![true, false, true]);
    let notes: i64 = db
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(notes, 50);
}

/// 50 cohorts, batches of 100 to 500 changes: decisions per second and statements per change
/// per cohort. `cargo test --release --lib rows::authorize::pg_tests::bench -- --ignored
/// --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_50_cohorts() {
    let (_cluster, db, pool) = start().await;
    db.batch_execute(POSTGREST).await.expect("set up");
    let mut slot = Slot::create(&db, "bench_slot", "rls_pub").await;
    let mut registry = Cohorts::new();
    let t = "table:public.todos";
    for i in 0..50 {
        let role = if i % 10 == 0 { "anon" } else { "authenticated" };
        registry.join(
            t,
            cohort(
                role,
                json!({"sub": format!("u{i}"), "team": format!("t{}", i % 10)}),
            ),
        );
    }
    let cohorts = registry.on_table(t);
    assert_eq!(cohorts.len(), 50);
    let mut next_id = 0;
    for size in [100usize, 250, 500] {
        let metrics = AuthorizeMetrics::default();
        let (mut changes, mut decided_true, mut elapsed) = (0usize, 0usize, Duration::ZERO);
        for _round in 0..10 {
            // Half inserts, half updates of the rows just inserted.
            db.execute(
                "INSERT INTO todos (id, owner, team, public, title) \
                 SELECT i, 'u' || (i % 50), 't' || (i % 10), i % 7 = 0, 'title ' || i \
                 FROM generate_series($1::int, $1::int + $2::int - 1) i",
                &[&next_id, &((size / 2) as i32)],
            )
            .await
            .unwrap();
            db.execute(
                "UPDATE todos SET title = title || '!' WHERE id >= $1",
                &[&next_id],
            )
            .await
            .unwrap();
            next_id += (size / 2) as i32;
            let batch = slot.changes(&db).await;
            assert_eq!(batch.len(), size / 2 * 2);
            let shape = TableShape::of(&batch[0].0).unwrap();
            let rows: Vec<RowChange<'_>> = batch
                .iter()
                .map(|(_, c)| RowChange::of_change(c).unwrap())
                .collect();
            let started = Instant::now();
            let decision = decide_table(
                &pool,
                &cohorts,
                &shape,
                &rows,
                Duration::from_secs(30),
                &metrics,
            )
            .await;
            elapsed += started.elapsed();
            assert!(decision.failed.is_empty());
            changes += rows.len();
            decided_true += decision.allowed.iter().map(CohortSet::len).sum::<usize>();
        }
        let decisions = changes * cohorts.len();
        eprintln!(
            "batch {size}: {decisions} decisions ({decided_true} allowed) in {elapsed:?}: \
             {:.0} decisions/s, {:.0} changes/s through 50 cohorts, {} statements = {:.4} per \
             change per cohort (1/batch = {:.4}), {:.1} ms per batch for 50 cohorts",
            decisions as f64 / elapsed.as_secs_f64(),
            changes as f64 / elapsed.as_secs_f64(),
            metrics.queries.get(),
            metrics.queries.get() as f64 / decisions as f64,
            1.0 / size as f64,
            elapsed.as_secs_f64() * 1000.0 / 10.0,
        );
        assert_eq!(metrics.queries.get() as usize, 10 * cohorts.len());
    }
}
