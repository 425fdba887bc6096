//! The WAL source (`--source wal`) on a real PostgreSQL with `wal_level=logical`: delivery from
//! `pg_logical_emit_message` to websocket and SSE clients, large messages both ways, and no loss,
//! no duplicate, no reordering across a node restart, a client moving between nodes, a killed
//! walsender, a PostgreSQL restart and the network to the database cut (through a proxy). Every message is numbered in its payload and what each
//! client received is compared with what was committed.

use std::time::Duration;

use serde_json::json;

use crate::common::proxy::{CutMode, Proxy, Upstream};
use crate::common::*;
use crate::faults::{own_cluster, pause, resume};
use crate::resume::{gap, message, number, percent_encode, stream};

/// `SELECT pg_logical_emit_message(true, prefix, text)`.
async fn emit(db: &tokio_postgres::Client, prefix: &str, text: &str) {
    db.execute(
        "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
        &[&prefix, &text],
    )
    .await
    .expect("pg_logical_emit_message");
}

async fn wal_server(db: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--source", "wal"];
    args.extend_from_slice(extra);
    start_on(db, &args).await
}

/// Reads `n` numbered compat messages from a websocket.
async fn numbers(ws: &mut Ws, n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(number(&next_text(ws).await));
    }
    out
}

#[tokio::test]
async fn sql_messages_reach_websocket_and_sse_clients_in_order() {
    let db_uri = fresh_db().await;
    let s = wal_server(&db_uri, &[]).await;
    let db = pg(&db_uri).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let mut sse = stream(&s, "chat", None).await;
    for n in 0..20 {
        emit(&db, LISTEN, &message("chat", n)).await;
    }
    // Several messages in one transaction, and messages that are not pgws's (another prefix).
    db.batch_execute(&format!(
        "BEGIN; \
         SELECT pg_logical_emit_message(true, '{LISTEN}', '{}'); \
         SELECT pg_logical_emit_message(true, 'someone-else', 'not ours'); \
         SELECT pg_logical_emit_message(true, '{LISTEN}', '{}'); \
         COMMIT;",
        message("chat", 20),
        message("chat", 21)
    ))
    .await
    .unwrap();
    // A message for another channel is not this client's.
    emit(&db, LISTEN, &message("other", 99)).await;
    emit(&db, LISTEN, &message("chat", 22)).await;
    let expected: Vec<usize> = (0..23).collect();
    // Compat clients get the exact text, in commit order.
    let first = next_text(&mut ws).await;
    assert_eq!(first, message("chat", 0), "byte for byte");
    let mut got = vec![number(&first)];
    got.extend(numbers(&mut ws, 22).await);
    assert_eq!(got, expected);
    let mut ids = Vec::new();
    for n in 0..23 {
        let ev = sse.next_event().await;
        assert_eq!(number(ev.data.as_deref().unwrap()), n);
        ids.push(ev.id.expect("a position"));
    }
    // Positions name the commit LSN and the index within the transaction.
    assert!(
        ids[20].ends_with(".0") && ids[21].ends_with(".1"),
        "{ids:?}"
    );
    assert_eq!(
        ids[20].rsplit_once('.').unwrap().0,
        ids[21].rsplit_once('.').unwrap().0
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_mebibyte_travels_intact_from_sql_and_from_a_client() {
    let db_uri = fresh_db().await;
    let s = wal_server(&db_uri, &["--max-message-size", "2000000"]).await;
    let db = pg(&db_uri).await;
    let mut reader = connect(&s.url(&format!("/big/{}", token(json!({"mode":"r"}))))).await;
    let mut writer = connect(&s.url(&format!("/big/{}", token(json!({"mode":"w"}))))).await;
    let big: String = (0..1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    // From SQL: the whole envelope as one logical message.
    let from_sql = json!({"channel": "big", "payload": big}).to_string();
    emit(&db, LISTEN, &from_sql).await;
    assert_eq!(next_text(&mut reader).await, from_sql);
    // From a client: far above NOTIFY's 8000 bytes, written with pg_logical_emit_message.
    send(&mut writer, &big).await;
    let v = next_json(&mut reader).await;
    assert_eq!(v["event"], "WebsocketMessage");
    assert_eq!(v["payload"].as_str().map(str::len), Some(big.len()));
    assert!(v["payload"] == big.as_str(), "intact");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_restarted_node_rebuilds_its_window_and_its_clients_lose_nothing() {
    let db_uri = fresh_db().await;
    let node = ["--node-id", "restart-test"];
    let s = wal_server(&db_uri, &node).await;
    let db = pg(&db_uri).await;
    let mut client = stream(&s, "chat", None).await;
    for n in 0..3 {
        emit(&db, LISTEN, &message("chat", n)).await;
    }
    let mut last = None;
    for n in 0..3 {
        let ev = client.next_event().await;
        assert_eq!(number(ev.data.as_deref().unwrap()), n);
        last = ev.id;
    }
    drop(client);
    s.stop().await.unwrap();
    // While no pgws runs: these stay in the WAL, behind the slot.
    for n in 3..8 {
        emit(&db, LISTEN, &message("chat", n)).await;
    }
    let s = wal_server(&db_uri, &node).await;
    let mut back = stream(&s, "chat", last.as_deref()).await;
    for n in 3..8 {
        let ev = back.next_event().await;
        let data = ev.data.unwrap();
        assert!(!data.contains("\"Gap\""), "exact: {data}");
        assert_eq!(
            number(&data),
            n,
            "replayed from the rebuilt window, in order"
        );
    }
    emit(&db, LISTEN, &message("chat", 8)).await;
    assert_eq!(
        number(&back.next_event().await.data.unwrap()),
        8,
        "then live"
    );
    // The same slot was continued, not a new one made.
    let slots: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_moves_to_another_node_with_its_position() {
    let db_uri = fresh_db().await;
    let a = wal_server(&db_uri, &[]).await;
    let b = wal_server(&db_uri, &[]).await;
    let db = pg(&db_uri).await;
    // Two nodes on one host with default settings: two slots, both in use.
    let active: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND active",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(active, 2, "each node its own slot");
    let mut on_a = stream(&a, "chat", None).await;
    let mut witness_b = stream(&b, "chat", None).await;
    for n in 0..4 {
        emit(&db, LISTEN, &message("chat", n)).await;
    }
    let mut last = None;
    for n in 0..4 {
        let ev = on_a.next_event().await;
        assert_eq!(number(ev.data.as_deref().unwrap()), n);
        last = ev.id;
    }
    drop(on_a);
    for n in 4..10 {
        emit(&db, LISTEN, &message("chat", n)).await;
    }
    for n in 0..10 {
        assert_eq!(number(&witness_b.next_event().await.data.unwrap()), n);
    }
    // A's position means the same on B: exactly what was missed, no Gap.
    let mut moved = stream(&b, "chat", last.as_deref()).await;
    for n in 4..10 {
        let data = moved.next_event().await.data.unwrap();
        assert_eq!(number(&data), n, "{data}");
    }
    // Over a websocket too (opted in with the query parameter).
    let tok = token(json!({"mode":"r"}));
    let q = percent_encode(last.as_deref().unwrap());
    let mut ws = connect(&b.url(&format!("/chat/{tok}?last-event-id={q}"))).await;
    for n in 4..10 {
        let v = next_json(&mut ws).await;
        assert_eq!(number(v["data"].as_str().unwrap()), n);
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// A websocket reader (already connected) that records every numbered message until `total`.
fn collect(mut ws: Ws, total: usize) -> tokio::task::JoinHandle<Vec<usize>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        while got.last().is_none_or(|n| *n + 1 < total) {
            let text = tokio::time::timeout(Duration::from_secs(60), next_text(&mut ws))
                .await
                .expect("messages keep coming");
            got.push(number(&text));
        }
        got
    })
}

#[tokio::test]
async fn a_killed_walsender_loses_and_repeats_nothing() {
    const TOTAL: usize = 600;
    let db_uri = fresh_db().await;
    let mut s = wal_server(&db_uri, &[]).await;
    let db = pg(&db_uri).await;
    let ws = connect(&s.url(&format!("/chaos/{}", token(json!({"mode":"r"}))))).await;
    let reader = collect(ws, TOTAL);
    let publisher = {
        let db_uri = db_uri.clone();
        tokio::spawn(async move {
            let db = pg(&db_uri).await;
            for n in 0..TOTAL {
                emit(&db, LISTEN, &message("chaos", n)).await;
            }
        })
    };
    // Mid-traffic: end the walsender serving this node's slot, twice.
    for generation in [2, 3] {
        tokio::time::sleep(Duration::from_millis(150)).await;
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
        s.wait_listening(generation).await;
    }
    publisher.await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("reader done in time")
        .unwrap();
    assert_eq!(
        got,
        (0..TOTAL).collect::<Vec<_>>(),
        "none lost, none twice, in order"
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_postgresql_restart_under_traffic_loses_nothing_committed() {
    let cluster = own_cluster().await;
    let db_uri = cluster.connection_string("postgres");
    let mut s = wal_server(&db_uri, &["--check-listener-interval", "200"]).await;
    let url = s.url(&format!("/chat/{}", token(json!({"mode":"r"}))));
    let mut ws = connect(&url).await;
    let db = pg(&db_uri).await;
    for n in 0..100 {
        emit(&db, LISTEN, &message("chat", n)).await;
    }
    drop(db);
    let cluster = pause(cluster).await;
    s.wait_down().await;
    let cluster = resume(cluster).await;
    let db = pg(&db_uri).await;
    for n in 100..200 {
        emit(&db, LISTEN, &message("chat", n)).await;
    }
    s.wait_listening(2).await;
    let got = numbers(&mut ws, 200).await;
    assert_eq!(
        got,
        (0..200).collect::<Vec<_>>(),
        "every committed message, once, in order"
    );
    s.stop().await.unwrap();
    drop(db);
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bad_positions_get_a_gap_never_a_wrong_replay() {
    let db_uri = fresh_db().await;
    let s = wal_server(&db_uri, &[]).await;
    let db = pg(&db_uri).await;
    let mut witness = stream(&s, "chat", None).await;
    emit(&db, LISTEN, &message("chat", 0)).await;
    let id = witness.next_event().await.id.unwrap();
    let (epoch, _) = id.split_once('-').unwrap();
    let future = format!("{epoch}-FFFFFFF/0.0");
    let notify_style = format!("{epoch}-5");
    let other_epoch = "0123456789abcdef-0/100.0".to_string();
    let long = "0/".repeat(5000);
    for (bad, reason) in [
        (future.as_str(), "future_position"),
        (other_epoch.as_str(), "other_epoch"),
        ("0123456789abcdef-0/0.0", "unknown_position"),
        ("0123456789abcdef-1/2/3.4", "unknown_position"),
        (long.as_str(), "unknown_position"),
        (notify_style.as_str(), "window_exceeded"),
    ] {
        let mut sse = stream(&s, "chat", Some(bad)).await;
        assert_eq!(gap(&mut sse).await["reason"], reason, "{bad:.40}");
        assert_eq!(number(&sse.next_event().await.data.unwrap()), 0);
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn the_slot_advances_on_an_idle_database_and_its_lag_is_exported() {
    let db_uri = fresh_db().await;
    let s = wal_server(
        &db_uri,
        &[
            "--replay-age",
            "1",
            "--check-listener-interval",
            "200",
            "--admin-address",
            "127.0.0.1:0",
        ],
    )
    .await;
    let db = pg(&db_uri).await;
    let mut sse = stream(&s, "chat", None).await;
    emit(&db, LISTEN, &message("chat", 0)).await;
    sse.next_event().await;
    let target: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    // Once the message ages out of the window, nothing holds the slot back.
    let advanced = async {
        loop {
            let done: bool = db
                .query_one(
                    "SELECT bool_and(confirmed_flush_lsn >= $1::text::pg_lsn) FROM pg_replication_slots \
                     WHERE database = current_database()",
                    &[&target],
                )
                .await
                .unwrap()
                .get(0);
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), advanced)
        .await
        .expect("the slot's confirmed position passes the message");
    let metrics = s.admin_get("/metrics").await.1;
    assert!(metrics.contains("pgws_wal_slot_lag_bytes "), "{metrics}");
    assert!(
        metrics.contains("pgws_wal_slot_retained_bytes{slot=\"pgws_"),
        "{metrics}"
    );
    assert_eq!(s.metric("pgws_wal_up ").await, 1.0);
    let (status, body) = s.admin_get("/ready").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("slot"), "{body}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_nodes_slot_can_be_dropped() {
    let db_uri = fresh_db().await;
    let s = wal_server(&db_uri, &["--node-id", "gone"]).await;
    s.stop().await.unwrap();
    let cli = <pgws::Cli as clap::Parser>::try_parse_from(args(&db_uri, &[])).unwrap();
    let config = cli.resolve(None, None).unwrap();
    pgws::drop_wal_slot(&config, "pgws_gone").await.unwrap();
    let db = pg(&db_uri).await;
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgws_gone'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let again = pgws::drop_wal_slot(&config, "pgws_gone").await;
    assert!(again.unwrap_err().contains("does not exist"));
}

#[tokio::test]
async fn start_up_errors_name_the_fix() {
    // A role without REPLICATION.
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute("CREATE ROLE no_repl LOGIN").await.unwrap();
    let c = cluster();
    let dbname = db_uri.rsplit("dbname=").next().unwrap();
    let as_role = format!(
        "host={} port={} user=no_repl dbname={dbname}",
        c.socket_dir().display(),
        c.port()
    );
    let s = spawn_on(&as_role, &["--source", "wal", "--retries", "3"]).await;
    let err = tokio::time::timeout(WAIT, s.handle_result())
        .await
        .expect("gives up at once")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("REPLICATION") && err.contains("ALTER ROLE"),
        "{err}"
    );
    // wal_level below logical.
    let replica = tokio::task::spawn_blocking(|| {
        pgws::embedded::Cluster::start_with_settings(&[("wal_level", "replica")])
    })
    .await
    .unwrap()
    .unwrap();
    let s = spawn_on(
        &replica.connection_string("postgres"),
        &["--source", "wal", "--retries", "3"],
    )
    .await;
    let err = tokio::time::timeout(WAIT, s.handle_result())
        .await
        .expect("gives up at once")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("wal_level") && err.contains("logical"),
        "{err}"
    );
    tokio::task::spawn_blocking(move || replica.stop())
        .await
        .unwrap()
        .unwrap();
    // Direct channels cannot be read from the WAL: a configuration error.
    let cli = <pgws::Cli as clap::Parser>::try_parse_from(args(
        &db_uri,
        &["--source", "wal", "--channel-mode", "direct"],
    ))
    .unwrap();
    let e = cli.resolve(None, None).unwrap_err().to_string();
    assert!(e.contains("PGWS_CHANNEL_MODE"), "{e}");
}

#[tokio::test]
async fn the_documented_sql_helpers_work() {
    let db_uri = fresh_db().await;
    let s = wal_server(&db_uri, &[]).await;
    let db = pg(&db_uri).await;
    let sql =
        include_str!("../../docs/sql/wal.sql").replace("postgres-websockets-listener", LISTEN);
    db.batch_execute(&sql)
        .await
        .expect("docs/sql/wal.sql installs");
    db.batch_execute(
        "CREATE TABLE messages (id int PRIMARY KEY, body text); \
         CREATE TRIGGER messages_to_pgws AFTER INSERT OR UPDATE ON messages \
           FOR EACH ROW EXECUTE FUNCTION pgws_row_changed();",
    )
    .await
    .unwrap();
    let tok = token(json!({"mode":"r"}));
    let mut rows = connect(&s.url(&format!("/messages/{tok}"))).await;
    let mut chat = connect(&s.url(&format!("/chat/{tok}"))).await;
    db.execute(
        "SELECT pgws_send('chat', $1::text::jsonb)",
        &[&r#"{"hello":"world"}"#],
    )
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut chat).await["payload"],
        json!({"hello":"world"})
    );
    // A rolled-back transaction sends nothing; the committed one after it arrives alone.
    db.batch_execute("BEGIN; INSERT INTO messages VALUES (1, 'never'); ROLLBACK;")
        .await
        .unwrap();
    db.batch_execute(
        "INSERT INTO messages VALUES (2, 'hi'); UPDATE messages SET body = 'edited' WHERE id = 2;",
    )
    .await
    .unwrap();
    let first = next_json(&mut rows).await;
    assert_eq!(first["channel"], "messages");
    assert_eq!(first["payload"], json!({"id": 2, "body": "hi"}));
    assert_eq!(next_json(&mut rows).await["payload"]["body"], "edited");
    s.stop().await.unwrap();
}

/// A proxy in front of the shared cluster, and `db_uri`'s database through it (TCP).
async fn through_proxy(db_uri: &str) -> (Proxy, String) {
    let c = cluster();
    let socket = c.socket_dir().join(format!(".s.PGSQL.{}", c.port()));
    let proxy = Proxy::start(Upstream::Unix(socket)).await.expect("proxy");
    let dbname = db_uri.rsplit("dbname=").next().unwrap();
    let uri = format!(
        "host=127.0.0.1 port={} user={} dbname={dbname} sslmode=disable",
        proxy.addr().port(),
        c.user
    );
    (proxy, uri)
}

#[tokio::test]
async fn a_network_cut_to_the_database_loses_and_repeats_nothing() {
    const TOTAL: usize = 400;
    let db_uri = fresh_db().await;
    let (proxy, via_proxy) = through_proxy(&db_uri).await;
    let mut s = wal_server(&via_proxy, &["--check-listener-interval", "200"]).await;
    let reader = collect(
        connect(&s.url(&format!("/cut/{}", token(json!({"mode":"r"}))))).await,
        TOTAL,
    );
    let mut sse = stream(&s, "cut", None).await;
    // The publisher reaches PostgreSQL directly: it keeps committing while pgws is cut off.
    let db = pg(&db_uri).await;
    let mut sent = 0;
    for (generation, mode) in [(2, CutMode::Refuse), (3, CutMode::Blackhole)] {
        for _ in 0..100 {
            emit(&db, LISTEN, &message("cut", sent)).await;
            sent += 1;
        }
        proxy.cut(mode);
        s.wait_down().await;
        for _ in 0..100 {
            emit(&db, LISTEN, &message("cut", sent)).await;
            sent += 1;
        }
        // The length of the outage (a fault, not a synchronisation).
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.heal();
        s.wait_listening(generation).await;
    }
    assert_eq!(sent, TOTAL);
    let got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("reader done in time")
        .unwrap();
    assert_eq!(
        got,
        (0..TOTAL).collect::<Vec<_>>(),
        "none lost, none twice, in order"
    );
    for n in 0..TOTAL {
        let data = sse.next_event().await.data.unwrap();
        assert_eq!(number(&data), n, "{data}");
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn notify_mode_announces_what_a_network_cut_lost() {
    let db_uri = fresh_db().await;
    let (proxy, via_proxy) = through_proxy(&db_uri).await;
    let mut s = start_on(&via_proxy, &["--check-listener-interval", "200"]).await;
    let mut ws = connect(&s.url(&format!("/cut/{}", token(json!({"mode":"r"}))))).await;
    let db = pg(&db_uri).await;
    notify(&db, LISTEN, &message("cut", 0)).await;
    assert_eq!(number(&next_text(&mut ws).await), 0);
    proxy.cut(CutMode::Refuse);
    s.wait_down().await;
    notify(&db, LISTEN, &message("cut", 1)).await;
    proxy.heal();
    s.wait_listening(2).await;
    notify(&db, LISTEN, &message("cut", 2)).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["event"], "Gap", "the loss is announced first: {gap}");
    assert_eq!(number(&next_text(&mut ws).await), 2, "then live; 1 is gone");
    s.stop().await.unwrap();
}

/// How many sessions of the current database run a LISTEN (pgws's watch of the listen channel).
async fn listening_sessions(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'pgws' AND query ILIKE 'LISTEN%'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn a_pg_notify_on_the_listen_channel_is_warned_about_once() {
    use crate::binary::{line_after, pgws_on, terminate, wait_log};
    use tokio::io::{AsyncBufReadExt, BufReader};
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    let mut c = pgws_on(&db_uri);
    c.env("PGWS_SOURCE", "wal")
        .env("PGWS_LISTEN_CHANNEL", LISTEN)
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn pgws");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    line_after(&mut lines, "Listening on port").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (all_tx, all_rx) = tokio::sync::oneshot::channel::<Vec<String>>();
    tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(l)) = err_lines.next_line().await {
            all.push(l.clone());
            let _ = tx.send(l);
        }
        let _ = all_tx.send(all);
    });
    // pgws LISTENs on the listen channel (polled: there is no event to await).
    tokio::time::timeout(WAIT, async {
        while listening_sessions(&db).await == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the listen channel is watched in time");
    for _ in 0..3 {
        notify(&db, LISTEN, &message("chat", 0)).await;
    }
    wait_log(
        &mut rx,
        &format!("call pg_logical_emit_message(true, '{LISTEN}', payload) instead"),
    )
    .await;
    // Once: the watch ends with its warning.
    tokio::time::timeout(WAIT, async {
        while listening_sessions(&db).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the watch ends after warning");
    notify(&db, LISTEN, &message("chat", 1)).await;
    assert_eq!(terminate(child).await, 0);
    let all = tokio::time::timeout(WAIT, all_rx)
        .await
        .expect("stderr ends in time")
        .unwrap();
    let warnings = all
        .iter()
        .filter(|l| l.contains("pg_logical_emit_message(true,"))
        .count();
    assert_eq!(warnings, 1, "{all:#?}");
    assert!(
        all.iter().any(|l| l.contains(&format!("\"{LISTEN}\""))),
        "the channel is named"
    );
}

/// Table changes (a table added to pgws's publication) arrive on `table:<schema>.<table>` as
/// JSON with the values `to_jsonb` gives, for every common type, an unchanged TOASTed value
/// named, and `DELETE`/`TRUNCATE`; only a token that names the table's channel may follow it.
#[tokio::test]
async fn table_changes_arrive_on_their_channel_with_to_jsonb_values() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE todos (id int PRIMARY KEY, big8 bigint, n numeric, title text, done bool, \
           j jsonb, js json, at timestamptz, u uuid, raw bytea, tags text[], nums int[], \
           big text); \
         CREATE PUBLICATION pgws FOR TABLE todos;",
    )
    .await
    .unwrap();
    let s = wal_server(&db_uri, &["--admin-address", "127.0.0.1:0"]).await;
    let channel = "table:public.todos";
    // "Any channel" never opens a table.
    let (status, body) =
        refused(&s.url(&format!("/{channel}/{}", token(json!({"mode":"r"}))))).await;
    assert_eq!((status, body.as_str()), (400, "No allowed channels"));
    let t = token(json!({"mode":"r","channels":[channel]}));
    let mut ws = connect(&s.url(&format!("/{channel}/{t}"))).await;
    let row_json = |id: i32| {
        let db = &db;
        async move {
            let text: String = db
                .query_one(
                    "SELECT to_jsonb(t)::text FROM todos t WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .get(0);
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        }
    };
    db.batch_execute(
        "INSERT INTO todos VALUES (1, 9007199254740993, 1.50, 'é \"quoted\"\nline', true, \
           '{\"a\":[1,2,{\"b\":null}]}', '{\"x\": 1}', '2024-02-29 12:34:56.789+02', \
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', '{\"a b\",NULL,\"c,d\"}', \
           '{1,2,3}', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i)); \
         INSERT INTO todos (id) VALUES (2);",
    )
    .await
    .unwrap();
    for id in [1, 2] {
        let v = next_json(&mut ws).await;
        assert_eq!(
            (v["op"].as_str(), v["schema"].as_str(), v["table"].as_str()),
            (Some("INSERT"), Some("public"), Some("todos"))
        );
        assert_eq!(
            v["new"],
            row_json(id).await,
            "values as to_jsonb gives them"
        );
        assert!(v["commit_time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["old"], serde_json::Value::Null);
    }
    db.execute("UPDATE todos SET done = false WHERE id = 1", &[])
        .await
        .unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(v["op"], "UPDATE");
    assert_eq!(v["new"]["done"], false);
    assert_eq!(
        v["unchanged_toast"],
        json!(["big"]),
        "the TOASTed value was not sent"
    );
    let mut expected = row_json(1).await;
    expected.as_object_mut().unwrap().remove("big");
    assert_eq!(v["new"], expected);
    db.execute("DELETE FROM todos WHERE id = 2", &[])
        .await
        .unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["op"].as_str(), &v["old"]),
        (Some("DELETE"), &json!({"id": 2}))
    );
    db.batch_execute("ALTER TABLE todos ADD COLUMN extra int DEFAULT 7; INSERT INTO todos (id) VALUES (3); TRUNCATE todos;")
        .await
        .unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["op"].as_str(), &v["new"]["extra"]),
        (Some("INSERT"), &json!(7)),
        "the new schema"
    );
    let v = next_json(&mut ws).await;
    assert_eq!(v["op"], "TRUNCATE");
    assert!(s.metric("pgws_wal_table_changes_total").await >= 6.0);
    s.stop().await.unwrap();
}

/// A table's changes resume exactly across a pgws restart: the changes committed while no pgws
/// ran are replayed after the last position the client saw, in order, without a `Gap`.
#[tokio::test]
async fn table_changes_resume_exactly_across_a_restart() {
    use crate::sse::open;
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, n int); CREATE PUBLICATION pgws FOR TABLE items;",
    )
    .await
    .unwrap();
    let node = ["--node-id", "rows-restart"];
    let channel = "table:public.items";
    let path = format!(
        "/{channel}/{}",
        token(json!({"mode":"r","channels":[channel]}))
    );
    let s = wal_server(&db_uri, &node).await;
    let mut sse = open(s.addr, &path, &[]).await.expect("stream opens");
    assert_eq!(sse.next().await.unwrap().comment.as_deref(), Some("ok"));
    for id in 0..3 {
        db.execute("INSERT INTO items VALUES ($1, 0)", &[&id])
            .await
            .unwrap();
    }
    let mut last = None;
    for id in 0..3 {
        let ev = sse.next_event().await;
        let v: serde_json::Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
        assert_eq!(v["new"]["id"], id);
        last = ev.id;
    }
    drop(sse);
    s.stop().await.unwrap();
    // While no pgws runs: an update, a delete and an insert in one transaction.
    db.batch_execute(
        "BEGIN; UPDATE items SET n = 1 WHERE id = 0; DELETE FROM items WHERE id = 1; \
         INSERT INTO items VALUES (3, 0); COMMIT;",
    )
    .await
    .unwrap();
    let s = wal_server(&db_uri, &node).await;
    let last = last.unwrap();
    let mut back = open(s.addr, &path, &[("last-event-id", last.as_str())])
        .await
        .expect("stream opens");
    assert_eq!(back.next().await.unwrap().comment.as_deref(), Some("ok"));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = back.next_event().await;
        assert_eq!(ev.event, None, "no gap: {:?}", ev.data);
        let v: serde_json::Value = serde_json::from_str(ev.data.as_deref().unwrap()).unwrap();
        seen.push(v["op"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["UPDATE", "DELETE", "INSERT"], "in commit order");
    s.stop().await.unwrap();
}

/// Sends `request` on a v2 socket and reads frames until the one answering it (by `id`).
async fn v2_answer(ws: &mut Ws, request: serde_json::Value) -> serde_json::Value {
    send(ws, &request.to_string()).await;
    loop {
        let v = next_json(ws).await;
        if v["id"] == request["id"] {
            return v;
        }
    }
}

/// The changes (parsed `data`) of the next `n` messages on a v2 socket.
async fn v2_changes(ws: &mut Ws, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = next_json(ws).await;
        assert_eq!(v["type"], "message", "{v}");
        out.push(serde_json::from_str(v["data"].as_str().unwrap()).unwrap());
    }
    out
}

/// (op, move, id) of each change, for comparing sequences.
fn shapes(changes: &[serde_json::Value]) -> Vec<(String, String, i64)> {
    changes
        .iter()
        .map(|c| {
            let row = if c["new"].is_object() {
                &c["new"]
            } else {
                &c["old"]
            };
            (
                c["op"].as_str().unwrap().to_owned(),
                c["move"].as_str().unwrap_or("").to_owned(),
                row["id"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

// Row subscriptions (issue 22): a filter per subscription on a table's channel, rows moving in
// and out of it, `select=` with the key always sent, replay through the same filter, and the
// refusals of what cannot be subscribed.
#[tokio::test]
async fn row_subscriptions_filter_project_move_and_replay() {
    let db_uri = fresh_db().await;
    let db = pg(&db_uri).await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, status text, n int, title text); \
         ALTER TABLE items REPLICA IDENTITY FULL; \
         CREATE TABLE hidden (id int PRIMARY KEY); \
         CREATE PUBLICATION pgws FOR TABLE items;",
    )
    .await
    .unwrap();
    let s = wal_server(&db_uri, &[]).await;
    let channel = "table:public.items";
    let t = token(
        json!({"mode":"r","channels":[channel, "table:public.hidden", "table:public.nope", "chat"]}),
    );
    let path = format!("/{t}");
    let open = |filter: Option<&'static str>| {
        let url = s.url(&path);
        async move {
            let (mut ws, _) = open_v2_url(&url).await;
            let mut req = json!({"type":"subscribe","id":"s","channel":channel});
            if let Some(f) = filter {
                req["filter"] = json!(f);
            }
            let v = v2_answer(&mut ws, req).await;
            assert_eq!(v["type"], "subscribed", "{v}");
            (ws, v["position"].as_str().unwrap().to_owned())
        }
    };
    let (mut a, a_at) = open(Some("status=eq.open&select=title")).await;
    // The same subscription as an event stream: the URL's query string is the filter.
    let mut sse = crate::sse::open(
        s.addr,
        &format!("/{channel}/{t}?status=eq.open&select=title"),
        &[],
    )
    .await
    .expect("event stream opened");
    for (query, status) in [("?titel=eq.x", 400), ("?status=zz.1", 400)] {
        let refused = crate::sse::open(s.addr, &format!("/{channel}/{t}{query}"), &[]).await;
        assert_eq!(refused.err().map(|(s, _)| s), Some(status), "{query}");
    }
    let refused = crate::sse::open(s.addr, &format!("/table:public.hidden/{t}"), &[]).await;
    let (code, body) = refused.err().expect("refused");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("not in pgws's publication"), "{body}");
    let (mut b, _) = open(Some("n=gt.5")).await;
    let (mut c, _) = open(None).await;

    // Refusals, each naming what is wrong; the socket stays usable.
    let (mut d, _) = open_v2_url(&s.url(&path)).await;
    for (i, (chan, filter, code, says)) in [
        (channel, "titel=eq.x", "bad_filter", "titel"),
        (channel, "status=zz.1", "bad_filter", "zz"),
        ("table:public.nope", "", "unknown_table", "public.nope"),
        (
            "table:public.hidden",
            "",
            "unknown_table",
            "not in pgws's publication",
        ),
        ("chat", "a=eq.1", "bad_request", "table channels only"),
    ]
    .into_iter()
    .enumerate()
    {
        let v = v2_answer(
            &mut d,
            json!({"type":"subscribe","id":i,"channel":chan,"filter":filter}),
        )
        .await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some(code)),
            "{v}"
        );
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }

    // A table's channel cannot be published to, even with a token that may write it: a message
    // there could pass for a row change.
    let rw = token(json!({"mode":"rw","channels":[channel]}));
    let (mut w, _) = open_v2_url(&s.url(&format!("/{rw}"))).await;
    let v = v2_answer(
        &mut w,
        json!({"type":"publish","id":"p","channel":channel,"data":"{\"op\":\"INSERT\"}"}),
    )
    .await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("nack"), Some("not_granted")),
        "{v}"
    );
    let (status, _, body) =
        crate::publish::post(s.addr, &format!("/{channel}/{rw}"), "text/plain", "", "{}").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("cannot be published to"), "{body}");

    db.batch_execute(
        "INSERT INTO items VALUES (1, 'open', 1, 'a'), (2, 'closed', 10, 'b'); \
         UPDATE items SET status = 'open' WHERE id = 2; \
         UPDATE items SET status = 'closed' WHERE id = 1; \
         UPDATE items SET n = 3 WHERE id = 2; \
         DELETE FROM items WHERE id = 2; \
         INSERT INTO items VALUES (99, 'open', 99, 'end');",
    )
    .await
    .unwrap();
    let s_ = |op: &str, mv: &str, id: i64| (op.to_owned(), mv.to_owned(), id);
    let got_a = v2_changes(&mut a, 6).await;
    assert_eq!(
        shapes(&got_a),
        [
            s_("INSERT", "", 1),
            s_("UPDATE", "in", 2),
            s_("UPDATE", "out", 1),
            s_("UPDATE", "", 2),
            s_("DELETE", "", 2),
            s_("INSERT", "", 99),
        ]
    );
    // `select=title`: the title and the key, nothing else, in new and old.
    assert_eq!(got_a[0]["new"], json!({"id": 1, "title": "a"}));
    assert_eq!(got_a[2]["old"], json!({"id": 1, "title": "a"}));
    let mut got_sse = Vec::new();
    while got_sse.len() < got_a.len() {
        let e = sse.next_event().await;
        if let Some(data) = e.data.filter(|_| e.comment.is_none()) {
            got_sse.push(serde_json::from_str::<serde_json::Value>(&data).unwrap());
        }
    }
    assert_eq!(
        got_sse, got_a,
        "an event stream receives what a v2 subscription does"
    );
    let got_b = v2_changes(&mut b, 4).await;
    assert_eq!(
        shapes(&got_b),
        [
            s_("INSERT", "", 2),
            s_("UPDATE", "", 2),
            s_("UPDATE", "out", 2),
            s_("INSERT", "", 99),
        ]
    );
    assert_eq!(
        got_b[0]["new"],
        json!({"id": 2, "status": "closed", "n": 10, "title": "b"})
    );
    let got_c = v2_changes(&mut c, 7).await;
    assert!(got_c.iter().all(|c| c.get("move").is_none()), "{got_c:?}");
    assert_eq!(got_c.len(), 7);

    // A resume through the same filter replays what was sent live, byte for byte.
    let (mut a2, _) = open_v2_url(&s.url(&path)).await;
    send(
        &mut a2,
        &json!({"type":"subscribe","id":"r","channel":channel,
                "filter":"status=eq.open&select=title","since":a_at})
        .to_string(),
    )
    .await;
    let replayed = v2_changes(&mut a2, 6).await;
    assert_eq!(
        replayed, got_a,
        "the replay is what the filter let through live"
    );
    let v = next_json(&mut a2).await;
    assert_eq!(
        (v["type"].as_str(), v["replayed"].as_u64()),
        (Some("subscribed"), Some(6)),
        "{v}"
    );
}
