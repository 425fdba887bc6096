//! Fault injection on a real PostgreSQL (issue: production reliability): database restarts and
//! outages, slow consumers, peers that stop answering, and several instances on one database.
//! Tests that stop PostgreSQL get a cluster of their own.

use std::time::Duration;

use futures_util::StreamExt;
use pgws::embedded::Cluster;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

pub(crate) async fn own_cluster() -> Cluster {
    tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("a private cluster")
}

pub(crate) async fn pause(mut c: Cluster) -> Cluster {
    tokio::task::spawn_blocking(move || {
        c.pause().expect("stop postgres");
        c
    })
    .await
    .unwrap()
}

pub(crate) async fn resume(mut c: Cluster) -> Cluster {
    tokio::task::spawn_blocking(move || {
        c.resume().expect("start postgres");
        c
    })
    .await
    .unwrap()
}

/// Sends `text` until it is echoed (the pool may refuse while it reconnects); every attempt is
/// answered by the echo or an `Error` event.
async fn send_until_echoed(ws: &mut Ws, text: &str) {
    for _ in 0..50 {
        send(ws, text).await;
        loop {
            let v = next_json(ws).await;
            if v["event"] == "Error" {
                assert_eq!(v["code"], "notify_failed", "{v}");
                break;
            }
            if v["payload"] == text {
                return;
            }
        }
        // Pace the retries while the pool's connection comes back.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{text:?} was never delivered");
}

#[tokio::test]
async fn postgresql_restart_during_traffic_is_survived() {
    let cluster = own_cluster().await;
    let db = cluster.connection_string("postgres");
    let mut s = start_on(
        &db,
        &[
            "--check-listener-interval",
            "200",
            "--meta-channel",
            "meta",
            "--admin-address",
            "127.0.0.1:0",
        ],
    )
    .await;
    let t = token(json!({"mode":"rw"}));
    let mut reader = connect(&s.url(&format!("/chat/{t}"))).await;
    let mut writer = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"w"}))))).await;
    send(&mut writer, "before").await;
    assert_eq!(next_json(&mut reader).await["payload"], "before");
    assert_eq!(s.admin_get("/ready").await.0, 200);

    let cluster = pause(cluster).await;
    s.wait_down().await;
    assert_eq!(s.admin_get("/ready").await.0, 503);
    // During the outage a message is answered with an error, not silence.
    send(&mut writer, "during").await;
    let err = next_json(&mut writer).await;
    assert_eq!(
        (err["event"].as_str(), err["code"].as_str()),
        (Some("Error"), Some("notify_failed"))
    );

    let cluster = resume(cluster).await;
    s.wait_listening(2).await;
    let gap = next_json(&mut reader).await;
    assert_eq!(gap["event"], "Gap", "{gap}");
    assert!(gap["down_ms"].as_u64().is_some());
    send_until_echoed(&mut reader, "after").await;
    assert!(s.metric("pgws_listener_reconnects_total").await >= 1.0);
    assert!(s.metric("pgws_gaps_total").await >= 1.0);
    s.stop().await.unwrap();
    drop(cluster);
}

#[tokio::test]
async fn database_absent_at_start_up_then_ready_when_it_appears() {
    let cluster = pause(own_cluster().await).await;
    let db = cluster.connection_string("postgres");
    // With a check interval the start-up retries never give up.
    let mut s = spawn_on(
        &db,
        &[
            "--check-listener-interval",
            "200",
            "--admin-address",
            "127.0.0.1:0",
        ],
    )
    .await;
    assert_eq!(s.admin_get("/health").await, (200, "ok".into()));
    let (status, body) = s.admin_get("/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("LISTEN"), "{body}");
    // The port serves meanwhile.
    assert_eq!(get(s.addr, "GET", "/", "").await.0, 200);
    let cluster = resume(cluster).await;
    s.wait_listening(1).await;
    assert_eq!(s.admin_get("/ready").await, (200, "ready".into()));
    s.stop().await.unwrap();
    drop(cluster);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_others_get_everything() {
    let s = start(&[
        "--max-queue-messages",
        "200",
        "--max-queue-bytes",
        "1000000",
        "--admin-address",
        "127.0.0.1:0",
    ])
    .await;
    let t = token(json!({"mode":"r"}));
    // A client with a tiny receive buffer that never reads.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(sock.into()).unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(s.url(&format!("/chat/{t}")), tcp)
        .await
        .expect("handshake");
    let mut good = connect(&s.url(&format!("/chat/{t}"))).await;

    let db = pg(&s.db).await;
    let pad = "x".repeat(4000);
    // 8 MB in batches of 100: the reading client never has more than one batch queued, the
    // one that does not read falls behind by far more than its queue allows.
    for batch in 0..20 {
        db.execute(
            "SELECT pg_notify($1, json_build_object('channel','chat','n',i,'pad',$2::text)::text) \
             FROM generate_series($3::int, $3::int + 99) AS i",
            &[&LISTEN, &pad, &(batch * 100 + 1)],
        )
        .await
        .unwrap();
        for i in 1..=100 {
            let v = next_json(&mut good).await;
            assert_eq!(v["n"], batch * 100 + i);
        }
    }
    assert!(s.metric("pgws_drops_total{reason=\"slow_consumer\"}").await > 0.0);
    assert_eq!(
        s.metric("pgws_server_closes_total{reason=\"slow_consumer\"}")
            .await,
        1.0
    );
    // The slow socket was ended by the server: reading it now reaches its end.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match slow.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "slow socket still open");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed_with_4001() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(&["--ping-interval", "1"]).await;
    // A raw client that completes the handshake and then never answers anything.
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let t = token(json!({"mode":"r"}));
    tcp.write_all(raw_upgrade_request(&format!("/chat/{t}")).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut pings = 0;
    let code = tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = [0u8; 512];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection ended without a close frame");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                && buf.starts_with(b"HTTP/1.1 101")
            {
                buf.drain(..end + 4);
            }
            // Server frames are unmasked and small here: [opcode byte, length byte, payload].
            while buf.len() >= 2 && !buf.starts_with(b"HTTP") && buf.len() >= 2 + buf[1] as usize {
                let (op, len) = (buf[0] & 0x0f, buf[1] as usize);
                let payload: Vec<u8> = buf.drain(..2 + len).skip(2).collect();
                match op {
                    0x9 => pings += 1,
                    0x8 => return u16::from_be_bytes([payload[0], payload[1]]),
                    _ => {}
                }
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(code, 4001);
    assert!(pings >= 1);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn two_instances_share_one_database() {
    let db = fresh_db().await;
    let a = start_on(&db, &[]).await;
    let b = start_on(&db, &[]).await;
    let mut reader_b = connect(&b.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let mut reader_a = connect(&a.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let mut writer_a = connect(&a.url(&format!("/chat/{}", token(json!({"mode":"w"}))))).await;
    send(&mut writer_a, "across instances").await;
    assert_eq!(
        next_json(&mut reader_b).await["payload"],
        "across instances"
    );
    assert_eq!(
        next_json(&mut reader_a).await["payload"],
        "across instances"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn gap_events_can_be_turned_off_and_reach_the_meta_channel() {
    // Off: after a loss the first frame is the next message, not a Gap event.
    let mut s = start(&["--check-listener-interval", "200", "--gap-events", "false"]).await;
    let db = pg(&s.db).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    kill_listener(&db).await;
    s.wait_listening(2).await;
    notify(&db, LISTEN, r#"{"channel":"chat","n":1}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"channel":"chat","n":1}"#);
    s.stop().await.unwrap();

    // On (default): the meta channel gets a Gap event through PostgreSQL.
    let mut s = start(&["--check-listener-interval", "200", "--meta-channel", "meta"]).await;
    let db = pg(&s.db).await;
    let mut audit = Listen::new(&s.db, LISTEN).await;
    kill_listener(&db).await;
    s.wait_listening(2).await;
    let v = audit.next_json().await;
    assert_eq!(
        (v["event"].as_str(), v["channel"].as_str()),
        (Some("Gap"), Some("meta"))
    );
    s.stop().await.unwrap();
}
