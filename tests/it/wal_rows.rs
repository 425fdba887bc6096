//! Table changes from the WAL (docs/ROWS.md §0–1) on a real PostgreSQL: a 300,000-row
//! transaction streamed in bounded memory (measured on a spawned pgws), values independent of
//! the database's session defaults, schema changes between changes, partitioned tables,
//! `TRUNCATE` in all its forms, and the decode metrics in /metrics.

use std::process::Stdio;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::common::*;

async fn wal_server(db: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--source", "wal"];
    args.extend_from_slice(extra);
    start_on(db, &args).await
}

/// A compat websocket following `channel` (a token that names it).
async fn follow(s: &TestServer, channel: &str) -> Ws {
    let t = token(json!({"mode":"r","channels":[channel]}));
    connect(&s.url(&format!("/{channel}/{t}"))).await
}

/// An event stream read without copying its buffer per event (the shared test reader drains
/// from the front, quadratic over 300,000 events): yields `(id, data)` of each event.
struct FastSse {
    body: Incoming,
    buf: Vec<u8>,
    at: usize,
    _conn: tokio::task::JoinHandle<()>,
}

impl FastSse {
    async fn open(port: u16, path: &str) -> Self {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(path)
            .header("host", "localhost")
            .header("accept", "text/event-stream")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("answer in time")
            .expect("response");
        assert_eq!(resp.status(), 200);
        Self {
            body: resp.into_body(),
            buf: Vec::new(),
            at: 0,
            _conn: conn,
        }
    }

    /// The next event with data: its id and its data.
    async fn next(&mut self) -> (String, String) {
        loop {
            if let Some(n) = self.buf[self.at..].windows(2).position(|w| w == b"\n\n") {
                let block = std::str::from_utf8(&self.buf[self.at..self.at + n])
                    .expect("UTF-8")
                    .to_string();
                self.at += n + 2;
                let (mut id, mut data) = (None, None);
                for line in block.split('\n') {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(v.to_string());
                    }
                }
                if let (Some(id), Some(data)) = (id, data) {
                    return (id, data);
                }
                continue;
            }
            self.buf.drain(..self.at);
            self.at = 0;
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("an event in time")
                .expect("stream still open")
                .expect("body frame");
            if let Some(data) = frame.data_ref() {
                self.buf.extend_from_slice(data);
            }
        }
    }
}

/// `pgws --source wal` as a child process on `db`; returns it and its port once it listens.
async fn spawn_wal_child(db: &str) -> (tokio::process::Child, u16) {
    spawn_wal_child_with(db, &[]).await
}

/// [`spawn_wal_child`] with more environment settings (`("PGWS_…", value)`), for the memory
/// measurements of other modules (a child's /proc is its own, unlike an in-process server's).
pub(crate) async fn spawn_wal_child_with(
    db: &str,
    env: &[(&str, &str)],
) -> (tokio::process::Child, u16) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgws"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("PGWS_DB_URI", db)
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_HOST", "127.0.0.1")
        .env("PGWS_PORT", "0")
        .env("PGWS_LISTEN_CHANNEL", LISTEN)
        .env("PGWS_POOL_SIZE", "2")
        .env("PGWS_SOURCE", "wal")
        .envs(env.iter().copied());
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pgws");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Listening on port") {
                return line.rsplit(' ').next().unwrap().parse::<u16>().unwrap();
            }
        }
        panic!("pgws ended before listening");
    })
    .await
    .expect("pgws listens in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// A field of /proc/PID/status in KiB (`VmHWM`: peak resident set; `VmRSS`: current).
pub(crate) fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("the field")
}

/// Reads `n` changes of one transaction: inserts of ids `first..first + n`, in order, each
/// positioned after the previous one within the same commit.
async fn read_transaction(sse: &mut FastSse, first: i64, n: i64) {
    let mut commit: Option<String> = None;
    let mut index: Option<u64> = None;
    for id in first..first + n {
        let (pos, data) = sse.next().await;
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(
            (v["op"].as_str(), v["new"]["id"].as_i64()),
            (Some("INSERT"), Some(id)),
            "every change, in order"
        );
        let (c, i) = pos.rsplit_once('.').expect("a WAL position");
        let i: u64 = i.parse().unwrap();
        match (&commit, index) {
            (Some(prev), Some(prev_i)) => {
                assert_eq!(prev, c, "one commit");
                assert!(i > prev_i, "increasing positions: {prev_i} then {i}");
            }
            _ => commit = Some(c.to_string()),
        }
        index = Some(i);
    }
}

/// A 300,000-row transaction reaches a client change by change, in order, with increasing
/// positions, and pgws's peak memory stays near what a 3,000-row one takes: the source hands
/// changes on in bounded runs as they are decoded, never a whole transaction at its commit.
#[tokio::test]
async fn a_300000_row_transaction_streams_in_bounded_memory() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, payload text); \
         CREATE PUBLICATION pgws FOR TABLE big;",
    )
    .await
    .unwrap();
    let (child, port) = spawn_wal_child(&db_uri).await;
    let pid = child.id().expect("running");
    let channel = "table:public.big";
    let t = token(json!({"mode":"r","channels":[channel]}));
    let mut sse = FastSse::open(port, &format!("/{channel}/{t}")).await;
    let insert = |from: i64, to: i64| {
        let db = &db;
        async move {
            db.execute(
                "INSERT INTO big SELECT i, repeat('x', 100) FROM generate_series($1::int8, $2::int8) i",
                &[&from, &to],
            )
            .await
            .unwrap();
        }
    };
    let idle = proc_kib(pid, "VmHWM");
    let started = std::time::Instant::now();
    insert(1, 3_000).await;
    read_transaction(&mut sse, 1, 3_000).await;
    let small = proc_kib(pid, "VmHWM");
    let small_time = started.elapsed();
    let started = std::time::Instant::now();
    insert(3_001, 303_000).await;
    read_transaction(&mut sse, 3_001, 300_000).await;
    let large = proc_kib(pid, "VmHWM");
    let large_time = started.elapsed();
    eprintln!(
        "pgws peak RSS (VmHWM): idle {idle} KiB, after 3,000 rows {small} KiB ({small_time:?}), \
         after 300,000 rows {large} KiB ({large_time:?})"
    );
    // Held whole, the large transaction's ~75 MB of JSON would be in memory at once.
    assert!(
        large < small + 32 * 1024,
        "peak RSS grew from {small} KiB to {large} KiB for a 100 times larger transaction"
    );
    drop(child);
}

/// The walsender killed in the middle of a 100,000-row transaction whose first changes were
/// already delivered: pgws reads the transaction again from its Begin (positions are known
/// there), skips what it had delivered, and the client gets every change once, in order.
#[tokio::test]
async fn a_walsender_killed_mid_transaction_repeats_nothing() {
    const ROWS: i64 = 100_000;
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, payload text); \
         CREATE PUBLICATION pgws FOR TABLE big;",
    )
    .await
    .unwrap();
    let mut s = wal_server(&db_uri, &["--admin-address", "127.0.0.1:0"]).await;
    let channel = "table:public.big";
    let t = token(json!({"mode":"r","channels":[channel]}));
    let mut sse = FastSse::open(s.addr.port(), &format!("/{channel}/{t}")).await;
    let (early, mut started) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(ROWS as usize);
        let mut last = None;
        for n in 0..ROWS {
            let (pos, data) = sse.next().await;
            let v: Value = serde_json::from_str(&data).unwrap();
            let index: u64 = pos.rsplit_once('.').unwrap().1.parse().unwrap();
            assert!(
                last.is_none_or(|l| index > l),
                "increasing: {last:?} then {index}"
            );
            last = Some(index);
            got.push(v["new"]["id"].as_i64().unwrap());
            if n == 5_000 {
                let _ = early.send(true);
            }
        }
        got
    });
    db.execute(
        "INSERT INTO big SELECT i, repeat('y', 50) FROM generate_series(1, $1::int8) i",
        &[&ROWS],
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(60), started.wait_for(|s| *s))
        .await
        .expect("the first changes in time")
        .unwrap();
    let killed: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
             WHERE database = current_database() AND active",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "the walsender was there to kill");
    s.wait_listening(2).await;
    let got = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("reader done in time")
        .unwrap();
    assert_eq!(
        got,
        (1..=ROWS).collect::<Vec<_>>(),
        "none lost, none twice, in order"
    );
    assert!(
        s.metric("pgws_wal_resent_messages_total").await > 0.0,
        "changes read again after the kill were skipped"
    );
    s.stop().await.unwrap();
}

/// The replication session pins the settings pgoutput's text depends on: a database whose
/// defaults differ everywhere (time zone, date and interval styles, bytea output, float
/// digits) still yields what `to_jsonb` gives under UTC and PostgreSQL's defaults.
#[tokio::test]
async fn values_do_not_depend_on_the_databases_session_defaults() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    let name: String = db
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    // The name is `t<pid>_<n>` (made by the harness), quoted anyway.
    db.batch_execute(&format!(
        "ALTER DATABASE \"{name}\" SET TimeZone = 'Asia/Kathmandu'; \
         ALTER DATABASE \"{name}\" SET DateStyle = 'SQL, DMY'; \
         ALTER DATABASE \"{name}\" SET IntervalStyle = 'sql_standard'; \
         ALTER DATABASE \"{name}\" SET bytea_output = 'escape'; \
         ALTER DATABASE \"{name}\" SET extra_float_digits = -2; \
         CREATE TABLE v (id int PRIMARY KEY, at timestamptz, day date, ts timestamp, \
           raw bytea, f8 float8, f4 float4, span interval, times timestamptz[]); \
         CREATE PUBLICATION pgws FOR TABLE v;"
    ))
    .await
    .unwrap();
    // pgws (and this writer) connect after the change, so the database's defaults apply to
    // every session that does not pin its own.
    let s = wal_server(&db_uri, &[]).await;
    let mut ws = follow(&s, "table:public.v").await;
    let writer = pg(&db_uri).await;
    let zone: String = writer.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(zone, "Asia/Kathmandu", "the database's default applies");
    writer
        .batch_execute(
            "INSERT INTO v VALUES (1, '2024-02-29 23:50:00.5+00', '2024-03-01', \
               '2024-03-01 01:02:03', '\\x00ff5c41', 1.0/3, 0.1, '1 day 02:03:04', \
               ARRAY['2024-01-01 00:00:00+00'::timestamptz]); \
             INSERT INTO v VALUES (2, '-infinity', '0044-03-15 BC', NULL, '', 1e300, 'NaN', \
               '-1 year 2 mons', '{}');",
        )
        .await
        .unwrap();
    let oracle = pg(&db_uri).await;
    oracle
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; \
             SET bytea_output = 'hex'; SET extra_float_digits = 3;",
        )
        .await
        .unwrap();
    for id in [1, 2] {
        let v = next_json(&mut ws).await;
        let expected: String = oracle
            .query_one("SELECT to_jsonb(v)::text FROM v WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        let expected: Value = serde_json::from_str(&expected).unwrap();
        assert_eq!(
            v["new"], expected,
            "row {id} as to_jsonb gives it under UTC"
        );
    }
    s.stop().await.unwrap();
}

/// `ALTER TABLE` between changes (in separate transactions and inside one): each change
/// arrives with the columns of its own time: added, dropped, retyped and renamed columns, and
/// a renamed table's later changes on the new name's channel.
#[tokio::test]
async fn schema_changes_between_changes_decode_with_the_columns_of_their_time() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE s (id int PRIMARY KEY, a int, b text); CREATE PUBLICATION pgws FOR TABLE s;",
    )
    .await
    .unwrap();
    let s = wal_server(&db_uri, &[]).await;
    let mut ws = follow(&s, "table:public.s").await;
    let steps: &[(&str, Value)] = &[
        (
            "INSERT INTO s VALUES (1, 10, 'x')",
            json!({"id": 1, "a": 10, "b": "x"}),
        ),
        (
            "ALTER TABLE s ADD COLUMN c jsonb DEFAULT '{\"k\": 1}'; INSERT INTO s (id, a) VALUES (2, 20)",
            json!({"id": 2, "a": 20, "b": null, "c": {"k": 1}}),
        ),
        (
            "ALTER TABLE s DROP COLUMN b; UPDATE s SET a = 11 WHERE id = 1",
            json!({"id": 1, "a": 11, "c": {"k": 1}}),
        ),
        (
            "ALTER TABLE s ALTER COLUMN a TYPE text USING a::text || '!'; \
             INSERT INTO s (id, a) VALUES (3, 'z')",
            json!({"id": 3, "a": "z", "c": {"k": 1}}),
        ),
        (
            "ALTER TABLE s RENAME COLUMN a TO alpha; INSERT INTO s (id, alpha) VALUES (4, 'w')",
            json!({"id": 4, "alpha": "w", "c": {"k": 1}}),
        ),
        // Inside one transaction: the change before the ALTER keeps the old columns.
        (
            "BEGIN; INSERT INTO s (id) VALUES (5); ALTER TABLE s ADD COLUMN d int DEFAULT 4; \
             INSERT INTO s (id) VALUES (6); ALTER TABLE s DROP COLUMN c; \
             INSERT INTO s (id) VALUES (7); COMMIT",
            json!({"id": 5, "alpha": null, "c": {"k": 1}}),
        ),
    ];
    for (sql, expected) in steps {
        db.batch_execute(sql).await.unwrap();
        let v = next_json(&mut ws).await;
        assert_eq!(&v["new"], expected, "after {sql}");
    }
    for expected in [
        json!({"id": 6, "alpha": null, "c": {"k": 1}, "d": 4}),
        json!({"id": 7, "alpha": null, "d": 4}),
    ] {
        assert_eq!(next_json(&mut ws).await["new"], expected);
    }
    // A renamed table: its changes go to the new name's channel (followed once the table has
    // its name: a table channel is refused until its table is in the publication).
    db.batch_execute("ALTER TABLE s RENAME TO s2")
        .await
        .unwrap();
    let mut renamed = follow(&s, "table:public.s2").await;
    db.batch_execute("INSERT INTO s2 (id) VALUES (8)")
        .await
        .unwrap();
    let v = next_json(&mut renamed).await;
    assert_eq!(
        (v["table"].as_str(), &v["new"]),
        (Some("s2"), &json!({"id": 8, "alpha": null, "d": 4}))
    );
    s.stop().await.unwrap();
}

/// A partitioned table published with `publish_via_partition_root = true`: changes of every
/// partition (a row moving between partitions included) arrive on the root's channel, named
/// as the root. Without the option they arrive on each partition's own channel.
#[tokio::test]
async fn partitions_publish_through_their_root_when_asked() {
    let schema = "CREATE TABLE m (id int, region text, PRIMARY KEY (id, region)) \
                  PARTITION BY LIST (region); \
                  CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu'); \
                  CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');";
    // Through the root.
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(&format!(
        "{schema} CREATE PUBLICATION pgws FOR TABLE m WITH (publish_via_partition_root = true);"
    ))
    .await
    .unwrap();
    let s = wal_server(&db_uri, &[]).await;
    let mut root = follow(&s, "table:public.m").await;
    db.batch_execute(
        "INSERT INTO m VALUES (1, 'eu'), (2, 'us'); \
         UPDATE m SET region = 'us' WHERE id = 1; DELETE FROM m WHERE id = 2;",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        let v = next_json(&mut root).await;
        assert_eq!(v["table"], "m", "named as the root: {v}");
        got.push((
            v["op"].as_str().unwrap().to_string(),
            if v["new"].is_null() {
                v["old"].clone()
            } else {
                v["new"].clone()
            },
        ));
    }
    // A row moving between partitions is a delete from one and an insert into the other.
    assert_eq!(
        got,
        [
            ("INSERT".into(), json!({"id": 1, "region": "eu"})),
            ("INSERT".into(), json!({"id": 2, "region": "us"})),
            ("DELETE".into(), json!({"id": 1, "region": "eu"})),
            ("INSERT".into(), json!({"id": 1, "region": "us"})),
            ("DELETE".into(), json!({"id": 2, "region": "us"})),
        ]
    );
    s.stop().await.unwrap();
    // Without the option: each partition's own channel.
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(&format!("{schema} CREATE PUBLICATION pgws FOR TABLE m;"))
        .await
        .unwrap();
    let s = wal_server(&db_uri, &[]).await;
    let mut eu = follow(&s, "table:public.m_eu").await;
    let mut us = follow(&s, "table:public.m_us").await;
    db.batch_execute("INSERT INTO m VALUES (1, 'eu'), (2, 'us');")
        .await
        .unwrap();
    let v = next_json(&mut eu).await;
    assert_eq!(
        (v["table"].as_str(), &v["new"]["id"]),
        (Some("m_eu"), &json!(1))
    );
    let v = next_json(&mut us).await;
    assert_eq!(
        (v["table"].as_str(), &v["new"]["id"]),
        (Some("m_us"), &json!(2))
    );
    s.stop().await.unwrap();
}

/// `TRUNCATE` of one table, of several at once with `RESTART IDENTITY`, and with `CASCADE`
/// reaching a referencing table: one `TRUNCATE` change on each table's channel. The decode
/// metrics count them by table, with their lag, and the tables known.
#[tokio::test]
async fn truncates_arrive_on_each_tables_channel_and_are_counted() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE a (id serial PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); \
         CREATE TABLE c (id int PRIMARY KEY, a_id int REFERENCES a); \
         CREATE PUBLICATION pgws FOR TABLE a, b, c;",
    )
    .await
    .unwrap();
    let s = wal_server(&db_uri, &["--admin-address", "127.0.0.1:0"]).await;
    let mut wa = follow(&s, "table:public.a").await;
    let mut wb = follow(&s, "table:public.b").await;
    let mut wc = follow(&s, "table:public.c").await;
    db.batch_execute(
        "INSERT INTO a DEFAULT VALUES; INSERT INTO b VALUES (1); INSERT INTO c VALUES (1, 1);",
    )
    .await
    .unwrap();
    for ws in [&mut wa, &mut wb, &mut wc] {
        assert_eq!(next_json(ws).await["op"], "INSERT");
    }
    // One table.
    db.batch_execute("TRUNCATE b").await.unwrap();
    let v = next_json(&mut wb).await;
    assert_eq!(
        (v["op"].as_str(), &v["new"], &v["old"]),
        (Some("TRUNCATE"), &Value::Null, &Value::Null)
    );
    // Several, restarting identities, cascading to c (which references a).
    db.batch_execute("INSERT INTO b VALUES (2); TRUNCATE a, b RESTART IDENTITY CASCADE")
        .await
        .unwrap();
    assert_eq!(next_json(&mut wb).await["op"], "INSERT");
    for (ws, table) in [(&mut wa, "a"), (&mut wb, "b"), (&mut wc, "c")] {
        let v = next_json(ws).await;
        assert_eq!(
            (v["op"].as_str(), v["table"].as_str()),
            (Some("TRUNCATE"), Some(table))
        );
    }
    // The sequence restarted: the next row of a is 1 again.
    db.batch_execute("INSERT INTO a DEFAULT VALUES")
        .await
        .unwrap();
    assert_eq!(next_json(&mut wa).await["new"], json!({"id": 1}));
    // Metrics: by table, lag, relations, nothing undecodable.
    let m = |name: &str| format!("pgws_wal_{name}");
    assert_eq!(
        s.metric(&m("table_changes_by_table_total{table=\"public.a\"}"))
            .await,
        3.0
    );
    assert_eq!(
        s.metric(&m("table_changes_by_table_total{table=\"public.b\"}"))
            .await,
        4.0
    );
    assert_eq!(
        s.metric(&m("table_changes_by_table_total{table=\"public.c\"}"))
            .await,
        2.0
    );
    assert_eq!(s.metric(&m("decode_lag_seconds_count")).await, 9.0);
    assert_eq!(s.metric(&m("relations ")).await, 3.0);
    assert_eq!(s.metric(&m("undecodable_total")).await, 0.0);
    let (_, body) = s.admin_get("/metrics").await;
    assert!(
        body.contains("pgws_wal_decode_lag_seconds_bucket{le=\"1.0\"}"),
        "{body}"
    );
    s.stop().await.unwrap();
}
