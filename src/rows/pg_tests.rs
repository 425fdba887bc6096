//! The row pieces against a real PostgreSQL (the embedded throwaway cluster): values as
//! `to_jsonb` gives them, and a real pgoutput stream decoded message by message.
//!
//! These live beside the code rather than in tests/it because the row modules are internal
//! until the WAL source uses them.

use serde_json::Value;
use tokio_postgres::NoTls;

use super::pgoutput::{self, Message, OldTuple, RelationCache, ReplicaIdentity};
use super::value::{ColumnType, to_json};
use crate::embedded::Cluster;

const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

async fn connect(cluster: &Cluster) -> tokio_postgres::Client {
    let (client, conn) = tokio::time::timeout(
        WAIT,
        tokio_postgres::connect(&cluster.connection_string("postgres"), NoTls),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    tokio::spawn(conn);
    client
}

/// Columns of every common type; each row a case (NULLs, extremes, escapes).
pub(super) const TABLE: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE every_type (
  n int PRIMARY KEY, i2 smallint, i4 int, i8 bigint, num numeric, f4 real, f8 double precision,
  t text, vc varchar(10), ch char(4), nm name, b boolean, j json, jb jsonb, ts timestamptz,
  tsn timestamp, d date, tm time, ttz timetz, iv interval, u uuid, by bytea, o oid, m mood,
  ai int[], at text[], an numeric[], ajb jsonb[], ats timestamptz[], ab bool[], a2 int[]
);
INSERT INTO every_type VALUES
 (1, 1, -2147483648, 9223372036854775807, 1.50, 1.5, 0.1, 'plain', 'v', 'ab', 'nm', true,
  '{"b": 1, "a": [1, 2.50]}', '{"b": 1, "a": [1, 2.50]}', '2024-01-02 03:04:05.123456+00',
  '2024-01-02 03:04:05', '2024-01-02', '03:04:05.5', '03:04:05+05:30', '1 day 02:00', 
  'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '\x00ff10', 12, 'happy',
  '{1,NULL,3}', '{"a,b","q\"",NULL,"NULL",""," x ","back\\slash"}', '{1.5,NaN,-0.000}',
  ARRAY['{"a": 1}'::jsonb, '[1, "x"]'], ARRAY['2024-01-01 00:00+03'::timestamptz],
  '{t,f,NULL}', '{{1,2},{3,4}}'),
 (2, -32768, 0, -9223372036854775808, 'NaN', 'NaN', 'Infinity', 'ünïcødé 🎉 "quoted" \ back',
  '', '', '', false, '"just a string"', 'null', 'infinity', '-infinity', '0044-03-15 BC',
  '24:00:00', '00:00:00-00:00:30', '-1 year', '00000000-0000-0000-0000-000000000000', '\x',
  4294967295, 'sad', '{}', '{}', '{}', '{}', '{}', '{}', '[0:1]={7,8}'),
 (3, NULL, NULL, NULL, '123456789012345678901234567890.123456789', '-Infinity', 1e300,
  NULL, NULL, NULL, NULL, NULL, NULL, '[]', '1900-01-01 00:00:00+00', NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, 42, 1234567890123, -0.000001000, 3.4e38, -1.5e-300, 'x', NULL, 'abcd', NULL, NULL,
  '[1, 2]', '{"n": 1e2}', '1999-12-31 23:59:59.999999-08', '1999-12-31 23:59:59.999999',
  'infinity', '00:00', '12:00+00', '0', NULL, '\x41', 0, NULL, '{-1}', '{NULL}', '{1e-5}',
  '{NULL}', '{NULL}', '{NULL}', '{{NULL}}'),
 (5, NULL, NULL, NULL, 1e20, 1e20, 1e15, NULL, NULL, NULL, NULL, NULL, NULL, '1.0', NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_match_to_jsonb() {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let db = connect(&cluster).await;
    db.batch_execute(TABLE).await.expect("create the table");
    let columns: Vec<(String, u32)> = db
        .query(
            "SELECT attname::text, atttypid::oid FROM pg_attribute \
             WHERE attrelid = 'every_type'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut compared = 0;
    let mut exact_text = 0;
    let mut ulp_off = 0;
    for zone in ["UTC", "Asia/Kolkata", "America/St_Johns"] {
        db.execute("SELECT set_config('TimeZone', $1, false)", &[&zone])
            .await
            .unwrap();
        for (name, type_oid) in &columns {
            // The column name comes from the catalogue of a table defined above, quoted anyway.
            // The simple query protocol returns each value through its type's output
            // function, exactly the text pgoutput sends (a `::text` cast would not: it trims
            // `char(n)` padding).
            let q = format!(
                "SELECT n, \"{0}\", to_jsonb(\"{0}\") FROM every_type ORDER BY 1",
                name.replace('"', "\"\"")
            );
            let rows = db.simple_query(&q).await.unwrap();
            for row in rows.iter().filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            }) {
                let n = row.get(0).unwrap_or_default().to_owned();
                let text = row.get(1).map(str::to_owned);
                let jsonb = row.get(2).map(str::to_owned);
                let Some(text) = text else {
                    assert!(jsonb.is_none());
                    continue;
                };
                let jsonb = jsonb.unwrap();
                let want: Value = serde_json::from_str(&jsonb).unwrap();
                let got = to_json(ColumnType::of(*type_oid), &text)
                    .unwrap_or_else(|e| panic!("{name} row {n}: {e}"));
                if got != want && close_doubles(&got, &want) {
                    // serde_json (without `float_roundtrip`) may round `to_jsonb`'s 300-digit
                    // expansion of a double one unit off; the double itself is right.
                    ulp_off += 1;
                } else if got != want {
                    // The one documented difference: numerics a double cannot hold exactly
                    // are strings with the exact digits `to_jsonb` printed as a number.
                    assert_eq!(
                        got,
                        Value::String(jsonb.clone()),
                        "{name} (oid {type_oid}) row {n} in {zone}: text {text:?}"
                    );
                    exact_text += 1;
                }
                compared += 1;
            }
        }
    }
    assert!(compared > 250, "{compared}");
    assert_eq!(exact_text, 3, "one over-long numeric, in three time zones");
    assert!(ulp_off <= 3, "{ulp_off}");
}

/// Two doubles at most two units in the last place apart.
fn close_doubles(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if x.is_finite() && y.is_finite() && x.signum() == y.signum() => {
            x.to_bits().abs_diff(y.to_bits()) <= 2
        }
        _ => false,
    }
}

async fn peek(db: &tokio_postgres::Client) -> Vec<Message> {
    db.query(
        "SELECT data FROM pg_logical_slot_get_binary_changes('rows_test', NULL, NULL, \
         'proto_version', '1', 'publication_names', 'rows_pub')",
        &[],
    )
    .await
    .expect("read the slot")
    .iter()
    .map(|r| {
        let data: Vec<u8> = r.get(0);
        pgoutput::decode(&data).unwrap_or_else(|e| panic!("decode {data:?}: {e}"))
    })
    .collect()
}

fn obj(v: serde_json::Map<String, Value>) -> Value {
    Value::Object(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decodes_a_real_pgoutput_stream() {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let db = connect(&cluster).await;
    db.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE todos (id int PRIMARY KEY, title text, body text, m mood);
         ALTER TABLE todos ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE TABLE full_t (id int PRIMARY KEY, v text, tags text[]);
         ALTER TABLE full_t REPLICA IDENTITY FULL;
         CREATE PUBLICATION rows_pub FOR TABLE todos, full_t;",
    )
    .await
    .expect("set up");
    db.batch_execute("SELECT pg_create_logical_replication_slot('rows_test', 'pgoutput')")
        .await
        .expect("create the slot");
    // One transaction each, as an application would commit them.
    for statement in [
        "INSERT INTO todos VALUES (1, 'one', repeat('x', 10000), 'happy')",
        "UPDATE todos SET title = 'uno' WHERE id = 1",
        "UPDATE todos SET id = 2 WHERE id = 1",
        "DELETE FROM todos WHERE id = 2",
        "INSERT INTO full_t VALUES (1, 'a', '{x,y}')",
        "UPDATE full_t SET v = 'b' WHERE id = 1",
        "DELETE FROM full_t WHERE id = 1",
        "ALTER TABLE todos ADD COLUMN done boolean DEFAULT false",
        "INSERT INTO todos (id, title) VALUES (3, 'three')",
        "TRUNCATE todos, full_t RESTART IDENTITY",
    ] {
        db.batch_execute(statement).await.expect(statement);
    }
    let todos: u32 = db
        .query_one("SELECT 'todos'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    let full_t: u32 = db
        .query_one("SELECT 'full_t'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    let msgs = peek(&db).await;
    let mut cache = RelationCache::new();
    let mut changes = Vec::new();
    let mut types = Vec::new();
    let mut schema_changes = 0;
    for m in &msgs {
        match m {
            Message::Relation(r) => {
                if cache.insert(r.clone()).is_some() {
                    schema_changes += 1;
                }
            }
            Message::Type { name, .. } => types.push(name.clone()),
            Message::Begin { .. } | Message::Commit { .. } => {}
            other => changes.push(other.clone()),
        }
        // Each change is decodable with the relation as it was when it was sent.
        match m {
            Message::Insert { relation, new } => {
                cache.get(*relation).unwrap().row(new, false).unwrap();
            }
            Message::Update { relation, new, .. } => {
                cache.get(*relation).unwrap().row(new, false).unwrap();
            }
            _ => {}
        }
    }
    // A Type message precedes each Relation message that uses the enum.
    assert!(
        !types.is_empty() && types.iter().all(|t| t == "mood"),
        "{types:?}"
    );
    assert_eq!(schema_changes, 1, "ALTER TABLE gave a new Relation message");
    let rel = cache.get(todos).unwrap().clone();
    assert_eq!(rel.columns.len(), 5);
    assert_eq!(rel.columns[4].name, "done");
    assert!(rel.columns[0].key && !rel.columns[1].key);
    assert_eq!(
        cache.get(full_t).unwrap().replica_identity,
        ReplicaIdentity::Full
    );
    let full = cache.get(full_t).unwrap().clone();
    // The old 4-column relation, for the changes before the ALTER.
    let mut old_rel = rel.as_ref().clone();
    old_rel.columns.truncate(4);

    assert_eq!(changes.len(), 9, "{changes:#?}");
    let Message::Insert { new, .. } = &changes[0] else {
        panic!("insert: {:?}", changes[0])
    };
    let row = old_rel.row(new, false).unwrap();
    assert_eq!(row.values["body"].as_str().map(str::len), Some(10_000));
    assert_eq!(row.values["m"], Value::from("happy"));

    // Title changed, the TOASTed body did not: not sent, no old row (key unchanged).
    let Message::Update { old: None, new, .. } = &changes[1] else {
        panic!("update: {:?}", changes[1])
    };
    let row = old_rel.row(new, false).unwrap();
    assert_eq!(row.unchanged, vec!["body".to_owned()]);
    assert_eq!(
        obj(row.values),
        serde_json::json!({"id": 1, "title": "uno", "m": "happy"})
    );

    // Key changed: the old key comes along.
    let Message::Update {
        old: Some(OldTuple::Key(old)),
        ..
    } = &changes[2]
    else {
        panic!("key update: {:?}", changes[2])
    };
    assert_eq!(
        obj(old_rel.row(old, true).unwrap().values),
        serde_json::json!({"id": 1})
    );
    let Message::Delete {
        old: OldTuple::Key(old),
        ..
    } = &changes[3]
    else {
        panic!("delete: {:?}", changes[3])
    };
    assert_eq!(
        obj(old_rel.row(old, true).unwrap().values),
        serde_json::json!({"id": 2})
    );

    // REPLICA IDENTITY FULL: whole old rows.
    let Message::Update {
        old: Some(OldTuple::Full(old)),
        new,
        ..
    } = &changes[5]
    else {
        panic!("full update: {:?}", changes[5])
    };
    assert_eq!(
        obj(full.row(old, false).unwrap().values),
        serde_json::json!({"id": 1, "v": "a", "tags": ["x", "y"]})
    );
    assert_eq!(
        obj(full.row(new, false).unwrap().values),
        serde_json::json!({"id": 1, "v": "b", "tags": ["x", "y"]})
    );
    assert!(matches!(
        &changes[6],
        Message::Delete {
            old: OldTuple::Full(_),
            ..
        }
    ));

    // After the ALTER: the new column, with its default.
    let Message::Insert { new, .. } = &changes[7] else {
        panic!("insert after alter: {:?}", changes[7])
    };
    assert_eq!(
        obj(rel.row(new, false).unwrap().values),
        serde_json::json!({"id": 3, "title": "three", "body": null, "m": null, "done": false})
    );
    let Message::Truncate {
        relations,
        restart_identity: true,
        cascade: false,
    } = &changes[8]
    else {
        panic!("truncate: {:?}", changes[8])
    };
    let mut relations = relations.clone();
    relations.sort_unstable();
    let mut want = vec![todos, full_t];
    want.sort_unstable();
    assert_eq!(relations, want);
}

/// The filter evaluator against PostgreSQL itself: each PostgREST filter beside the SQL `WHERE`
/// that PostgREST would run for it, over a few hundred random rows with NULLs, NaNs, infinities,
/// mixed offsets and odd text; the matching ids must be the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_agree_with_sql() {
    use super::filter::{Filter, Limits, Verdict};

    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("start PostgreSQL");
    let db = connect(&cluster).await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, a int, b text, c boolean, d numeric, \
         f double precision, ts timestamptz, tags text[], j jsonb, u uuid, by bytea, \
         dt date)",
    )
    .await
    .unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut pick = |options: &[Option<&'static str>]| -> Option<&'static str> {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        options[(x % options.len() as u64) as usize]
    };
    for id in 0..300i32 {
        let a = pick(&[
            None,
            Some("0"),
            Some("1"),
            Some("2"),
            Some("3"),
            Some("4"),
            Some("5"),
        ]);
        let b = pick(&[
            None,
            Some("aa"),
            Some("ab"),
            Some("b"),
            Some("bb"),
            Some("a"),
            Some("A"),
            Some("Ab"),
            Some("b,c"),
            Some(""),
            Some("é"),
            Some("a%b"),
        ]);
        let c = pick(&[None, Some("true"), Some("false")]);
        let d = pick(&[
            None,
            Some("1"),
            Some("1.5"),
            Some("2.50"),
            Some("2.5"),
            Some("-3"),
            Some("NaN"),
            Some("0.000"),
        ]);
        let f = pick(&[
            None,
            Some("0.1"),
            Some("1e300"),
            Some("-1e-300"),
            Some("NaN"),
            Some("Infinity"),
            Some("-Infinity"),
            Some("0"),
        ]);
        let ts = pick(&[
            None,
            Some("2024-01-01 12:00:00+00"),
            Some("2024-01-01 12:00:00+05"),
            Some("2024-01-01 07:00:00+00"),
            Some("2024-01-01 12:00:00.000001+00"),
            Some("infinity"),
        ]);
        let tags = pick(&[
            None,
            Some("{}"),
            Some("{x}"),
            Some("{x,y}"),
            Some("{y,z}"),
            Some("{x,NULL}"),
            Some("{NULL}"),
        ]);
        let j = pick(&[
            None,
            Some(r#"{"k": 1}"#),
            Some(r#"{"k": 1.0, "m": [1, 2]}"#),
            Some(r#"{"k": 2}"#),
            Some("[1, 2]"),
            Some("1"),
            Some(r#""k""#),
            // Not JSON `null`: in a row it reads as SQL NULL (docs/ROWS.md), unlike in SQL.
        ]);
        let u = pick(&[
            None,
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Some("00000000-0000-0000-0000-000000000000"),
            Some("ffffffff-0000-0000-0000-000000000000"),
        ]);
        let by = pick(&[
            None,
            Some("\\x"),
            Some("\\x41"),
            Some("\\x4142"),
            Some("\\xff00"),
        ]);
        let dt = pick(&[
            None,
            Some("2024-01-01"),
            Some("2023-12-31"),
            Some("0044-03-15 BC"),
            Some("infinity"),
        ]);
        db.execute(
            "INSERT INTO t VALUES ($1, $2::text::int, $3::text, $4::text::boolean, \
             $5::text::numeric, $6::text::float8, $7::text::timestamptz, $8::text::text[], \
             $9::text::jsonb, $10::text::uuid, $11::text::bytea, $12::text::date)",
            &[&id, &a, &b, &c, &d, &f, &ts, &tags, &j, &u, &by, &dt],
        )
        .await
        .unwrap();
    }
    let columns: Vec<(String, ColumnType)> = db
        .query(
            "SELECT attname::text, atttypid::oid FROM pg_attribute \
             WHERE attrelid = 't'::regclass AND attnum > 0 ORDER BY attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), ColumnType::of(r.get(1))))
        .collect();
    let rows: Vec<(i32, serde_json::Map<String, Value>)> = db
        .query("SELECT id, to_jsonb(t)::text FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let text: String = r.get(1);
            let Ok(Value::Object(m)) = serde_json::from_str(&text) else {
                panic!("row json")
            };
            (r.get(0), m)
        })
        .collect();
    let cases = [
        ("a=eq.3", "a = 3"),
        ("a=neq.3", "a <> 3"),
        ("a=lt.2", "a < 2"),
        ("a=gte.4", "a >= 4"),
        ("b=eq.bb", "b = 'bb'"),
        ("b=lt.b", "b < 'b'"),
        ("b=gt.A", "b > 'A'"),
        ("b=like.*a*", "b LIKE '%a%'"),
        ("b=ilike.A*", "b ILIKE 'A%'"),
        ("b=like.a_", "b LIKE 'a_'"),
        ("b=like.a\\%25b", "b LIKE 'a\\%b'"),
        ("b=not.like.a*", "NOT (b LIKE 'a%')"),
        ("c=is.true", "c IS TRUE"),
        ("c=is.false", "c IS FALSE"),
        ("c=is.null", "c IS NULL"),
        ("c=not.is.null", "c IS NOT NULL"),
        ("c=eq.false", "c = false"),
        ("c=not.eq.true", "NOT (c = true)"),
        ("d=gt.1.5", "d > 1.5"),
        ("d=eq.2.50", "d = 2.50"),
        ("d=eq.0", "d = 0"),
        ("d=lt.NaN", "d < 'NaN'"),
        ("d=eq.NaN", "d = 'NaN'"),
        ("f=gt.0.1", "f > 0.1"),
        ("f=eq.NaN", "f = 'NaN'"),
        ("f=lte.-Infinity", "f <= '-Infinity'"),
        ("f=lt.0", "f < 0"),
        ("a=in.(1,3,5)", "a IN (1, 3, 5)"),
        ("a=not.in.(1,2)", "NOT (a IN (1, 2))"),
        ("b=in.(aa,\"b,c\",)", "b IN ('aa', 'b,c', '')"),
        ("ts=gt.2024-01-01T07:00:00Z", "ts > '2024-01-01T07:00:00Z'"),
        (
            "ts=eq.2024-01-01T12:00:00+05:00",
            "ts = '2024-01-01T12:00:00+05:00'",
        ),
        ("ts=lt.infinity", "ts < 'infinity'"),
        ("tags=cs.{x}", "tags @> '{x}'"),
        ("tags=cd.{x,y}", "tags <@ '{x,y}'"),
        ("tags=eq.{x,y}", "tags = '{x,y}'"),
        ("tags=cs.{}", "tags @> '{}'"),
        ("tags=eq.{x,NULL}", "tags = '{x,NULL}'"),
        ("j=cs.{\"k\":1}", "j @> '{\"k\":1}'"),
        ("j=eq.{\"k\":1}", "j = '{\"k\":1}'"),
        ("j=cs.[1]", "j @> '[1]'"),
        ("j=cs.1", "j @> '1'"),
        (
            "j=cd.{\"k\":1,\"m\":[1,2,3]}",
            "j <@ '{\"k\":1,\"m\":[1,2,3]}'",
        ),
        ("j=is.null", "j IS NULL"),
        (
            "u=eq.A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "u = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        ),
        (
            "u=gt.{00000000000000000000000000000000}",
            "u > '00000000-0000-0000-0000-000000000000'",
        ),
        ("by=eq.\\x4142", "by = '\\x4142'"),
        ("by=eq.AB", "by = 'AB'::bytea"),
        ("by=lt.\\x42", "by < '\\x42'"),
        ("by=gte.\\x", "by >= '\\x'"),
        ("dt=gt.2023-12-31", "dt > '2023-12-31'"),
        ("dt=lt.0001-01-01", "dt < '0001-01-01'"),
        (
            "dt=in.(2024-01-01,infinity)",
            "dt IN ('2024-01-01', 'infinity')",
        ),
        ("or=(a.eq.1,b.eq.aa)", "(a = 1 OR b = 'aa')"),
        ("not.or=(a.eq.1,c.is.true)", "NOT (a = 1 OR c IS TRUE)"),
        (
            "and=(a.gt.1,or(b.like.b*,not.and(c.is.false,d.lt.2)))",
            "(a > 1 AND (b LIKE 'b%' OR NOT (c IS FALSE AND d < 2)))",
        ),
        ("a=eq.2&b=neq.aa", "a = 2 AND b <> 'aa'"),
        ("or=(a.is.null,a.not.gt.2)", "(a IS NULL OR NOT (a > 2))"),
        ("not.and=(a.eq.1,b.eq.x)", "NOT (a = 1 AND b = 'x')"),
    ];
    for (filter, sql) in cases {
        let f = Filter::new(filter, &Limits::default(), columns.as_slice())
            .unwrap_or_else(|e| panic!("{filter}: {e}"));
        // The WHERE texts are the constants above, not input.
        let mut want: Vec<i32> = db
            .query(&format!("SELECT id FROM t WHERE {sql}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        want.sort_unstable();
        let mut got: Vec<i32> = rows
            .iter()
            .filter(|(_, r)| f.eval(r) == Verdict::Match)
            .map(|(id, _)| *id)
            .collect();
        got.sort_unstable();
        assert_eq!(got, want, "{filter} vs {sql}");
        assert!(
            rows.iter().all(|(_, r)| f.eval(r) != Verdict::Unknown),
            "{filter}: full rows are decidable"
        );
    }

    // Random trees of the same conditions (`a=eq.3` is `a.eq.3` inside a group).
    let atoms: Vec<(String, &str)> = cases
        .iter()
        .filter(|(f, _)| !f.contains('&') && !f.contains('(') && !f.starts_with("not."))
        .map(|(f, sql)| (f.replacen('=', ".", 1), *sql))
        .collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    fn tree(
        depth: usize,
        atoms: &[(String, &str)],
        next: &mut dyn FnMut(usize) -> usize,
    ) -> (String, String) {
        if depth == 0 || next(3) == 0 {
            let (f, sql) = &atoms[next(atoms.len())];
            return (f.clone(), format!("({sql})"));
        }
        let n = 1 + next(3);
        let items: Vec<(String, String)> = (0..n).map(|_| tree(depth - 1, atoms, next)).collect();
        let (word, sql_word) = if next(2) == 0 {
            ("and", " AND ")
        } else {
            ("or", " OR ")
        };
        let f = format!(
            "{word}({})",
            items
                .iter()
                .map(|i| i.0.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let sql = format!(
            "({})",
            items
                .iter()
                .map(|i| i.1.as_str())
                .collect::<Vec<_>>()
                .join(sql_word)
        );
        if next(3) == 0 {
            (format!("not.{f}"), format!("(NOT {sql})"))
        } else {
            (f, sql)
        }
    }
    for _ in 0..200 {
        let (f_text, sql) = tree(3, &atoms, &mut next);
        let filter = format!("and=({f_text})");
        let f = Filter::new(&filter, &Limits::default(), columns.as_slice())
            .unwrap_or_else(|e| panic!("{filter}: {e}"));
        let mut want: Vec<i32> = db
            .query(&format!("SELECT id FROM t WHERE {sql}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        want.sort_unstable();
        let mut got: Vec<i32> = rows
            .iter()
            .filter(|(_, r)| f.eval(r) == Verdict::Match)
            .map(|(id, _)| *id)
            .collect();
        got.sort_unstable();
        assert_eq!(got, want, "{filter} vs {sql}");
    }
}
