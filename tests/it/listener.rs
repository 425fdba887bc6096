//! The LISTEN connection's life (spec §7.4–§7.6; §13 scenarios 8, 12, 13), token expiry and
//! shutdown.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use crate::common::*;

// §13 scenario 13, done better: the server recovers by itself and says there was a gap.
#[tokio::test]
async fn killing_the_listen_session_is_survived_and_reported() {
    let mut s = start(&["--check-listener-interval", "500"]).await;
    let db = pg(&s.db).await;
    let mut ws = connect(&s.url(&format!("/test/{}", token(json!({"mode":"r"}))))).await;
    notify(&db, LISTEN, r#"{"channel":"test","n":1}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"channel":"test","n":1}"#);

    let killed: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    s.wait_listening(2).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["event"], "Gap");
    notify(&db, LISTEN, r#"{"channel":"test","n":2}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"channel":"test","n":2}"#);
    s.stop().await.unwrap();
}

// §13 scenario 12: with no check interval, start-up gives up after PGWS_RETRIES attempts.
#[tokio::test]
async fn unreachable_database_at_start_up_fails_after_the_retries() {
    let nowhere = "host=/nonexistent-pgws-dir port=5432 user=nobody dbname=nothing";
    let server = bind(nowhere, &["--retries", "2"]).await;
    let addr = server.local_addr();
    let started = Instant::now();
    let run = tokio::spawn(server.run(tokio_util::sync::CancellationToken::new()));
    // The port answers while the listener retries, as in the original.
    let (status, _, body) = get(addr, "GET", "/", "").await;
    assert_eq!((status, body.as_str()), (200, "Hello, Web!"));
    let result = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("gives up in time")
        .unwrap();
    let err = result.expect_err("start-up must fail");
    assert!(
        err.to_string().contains("Broadcaster connection is dead"),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "backed off between attempts"
    );
}

// §13 scenario 8: close 3001 at `exp`, then the server closes TCP itself.
#[tokio::test]
async fn expiry_closes_the_socket_with_3001() {
    let s = start(&[]).await;
    let exp = pgws::auth::now_seconds() + 1.5;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r","exp":exp}))))).await;
    let (frame, _) = closed(&mut ws).await;
    let frame = frame.expect("close frame");
    assert_eq!(u16::from(frame.code), 3001);
    assert_eq!(frame.reason.as_str(), "JWT expired");
    assert!(pgws::auth::now_seconds() >= exp);
    // The stream ends: the server finished the closing handshake and dropped the connection.
    let end =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(end.is_ok(), "server did not close the TCP connection");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001_and_sends_their_last_events() {
    let s = start(&["--meta-channel", "meta"]).await;
    let mut audit = Listen::new(&s.db, LISTEN).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"rw"}))))).await;
    assert_eq!(audit.next_json().await["event"], "ConnectionOpen");
    let stopping = tokio::spawn(s.stop());
    let (frame, _) = closed(&mut ws).await;
    assert_eq!(u16::from(frame.expect("close frame").code), 1001);
    drop(ws);
    stopping.await.unwrap().unwrap();
    // The ConnectionClose went out before run() returned.
    assert_eq!(audit.next_json().await["event"], "ConnectionClose");
}
