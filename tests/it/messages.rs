//! Messages both ways (spec §5; §10 rows 13–17; §13 scenarios 5–7 and 10).

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

fn ts() -> String {
    token(json!({"mode":"rw"}))
}

fn tm() -> String {
    token(json!({"mode":"rw","channels":["test","secondary"]}))
}

// §10 rows 14 and 15.
#[tokio::test]
async fn a_message_reaches_every_reader_of_the_channel_including_the_sender() {
    let s = start(&[]).await;
    let mut receiver = connect(&s.url(&format!("/test/{}", ts()))).await;
    let mut sender = connect(&s.url(&format!("/test/{}", ts()))).await;
    send(&mut sender, "test data").await;
    for ws in [&mut receiver, &mut sender] {
        let v = next_json(ws).await;
        assert_eq!(v["payload"], "test data");
        assert_eq!(v["channel"], "test");
        assert_eq!(v["event"], "WebsocketMessage");
        assert_eq!(v["claims"]["mode"], "rw");
        assert!(v["claims"]["message_delivered_at"].is_f64());
    }
    s.stop().await.unwrap();
}

// §10 row 16.
#[tokio::test]
async fn one_message_to_multiple_channels() {
    let s = start(&[]).await;
    let mut a = connect(&s.url(&format!("/test/{}", ts()))).await;
    let mut b = connect(&s.url(&format!("/secondary/{}", ts()))).await;
    let mut sender = connect(&s.url(&format!("/{}", tm()))).await;
    send(&mut sender, "test data").await;
    let va = next_json(&mut a).await;
    assert_eq!(
        (va["payload"].as_str(), va["channel"].as_str()),
        (Some("test data"), Some("test"))
    );
    let vb = next_json(&mut b).await;
    assert_eq!(
        (vb["payload"].as_str(), vb["channel"].as_str()),
        (Some("test data"), Some("secondary"))
    );
    s.stop().await.unwrap();
}

// §10 row 17.
#[tokio::test]
async fn a_multi_channel_reader_gets_one_frame_per_channel() {
    let s = start(&[]).await;
    let mut receiver = connect(&s.url(&format!("/{}", tm()))).await;
    let mut sender = connect(&s.url(&format!("/{}", tm()))).await;
    send(&mut sender, "test data").await;
    let mut channels = vec![];
    for _ in 0..2 {
        let v = next_json(&mut receiver).await;
        assert_eq!(v["payload"], "test data");
        channels.push(v["channel"].as_str().unwrap().to_string());
    }
    channels.sort();
    assert_eq!(channels, ["secondary", "test"]);
    s.stop().await.unwrap();
}

// §10 row 13 and §13 scenario 5: raw text, byte for byte, routed by the `channel` field.
#[tokio::test]
async fn database_notifications_are_routed_and_delivered_verbatim() {
    let s = start(&[]).await;
    let db = pg(&s.db).await;
    let reader = token(json!({"mode":"r"}));
    let mut test = connect(&s.url(&format!("/test/{reader}"))).await;
    let mut other = connect(&s.url(&format!("/other/{reader}"))).await;
    let mut unrouted = connect(&s.url(&format!("/{LISTEN}/{reader}"))).await;

    let raw = r#"{"channel": "test", "payload": "hello there"}"#;
    notify(&db, LISTEN, raw).await;
    notify(&db, LISTEN, "plain").await;
    notify(&db, LISTEN, r#"{"channel": 5}"#).await;
    notify(&db, LISTEN, r#"{"channel":"other","n":"barrier"}"#).await;
    assert_eq!(next_text(&mut test).await, raw);
    // `other` got nothing before its barrier message.
    assert_eq!(
        next_text(&mut other).await,
        r#"{"channel":"other","n":"barrier"}"#
    );
    // Unroutable payloads go to the channel named like the listen channel.
    assert_eq!(next_text(&mut unrouted).await, "plain");
    assert_eq!(next_text(&mut unrouted).await, r#"{"channel": 5}"#);
    // The original's README recipe.
    db.batch_execute(&format!(
        "SELECT pg_notify('{LISTEN}', json_build_object('event','WebsocketMessage','channel','test','payload','test')::text)"
    ))
    .await
    .unwrap();
    assert_eq!(
        next_text(&mut test).await,
        r#"{"event" : "WebsocketMessage", "channel" : "test", "payload" : "test"}"#
    );
    s.stop().await.unwrap();
}

// §13 scenario 6.
#[tokio::test]
async fn client_messages_reach_postgresql_in_the_envelope() {
    let s = start(&[]).await;
    let mut audit = Listen::new(&s.db, LISTEN).await;
    let t = token(json!({"mode":"rw","user":"bob","channels":["chat"]}));
    let mut ws = connect(&s.url(&format!("/chat/{t}"))).await;
    send(&mut ws, r#"{"json":"stays a string"}"#).await;
    let v = audit.next_json().await;
    assert_eq!(v["channel"], "chat");
    assert_eq!(v["event"], "WebsocketMessage");
    assert_eq!(v["payload"], r#"{"json":"stays a string"}"#);
    assert_eq!(v["claims"]["user"], "bob");
    assert_eq!(v["claims"]["mode"], "rw");
    assert_eq!(v["claims"]["channels"], json!(["chat"]));
    let at = v["claims"]["message_delivered_at"].as_f64().unwrap();
    assert!((at - pgws::auth::now_seconds()).abs() < 60.0);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn messages_of_one_socket_keep_their_order() {
    let s = start(&["--pool-size", "4"]).await;
    let mut audit = Listen::new(&s.db, LISTEN).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"w"}))))).await;
    for i in 0..200 {
        ws.feed(Message::text(i.to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..200 {
        assert_eq!(audit.next_json().await["payload"], i.to_string());
    }
    s.stop().await.unwrap();
}

// §13 scenario 7.
#[tokio::test]
async fn read_only_sockets_do_not_publish_and_write_only_sockets_do_not_receive() {
    let s = start(&[]).await;
    let mut audit = Listen::new(&s.db, LISTEN).await;
    let mut r = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let mut w = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"w"}))))).await;
    send(&mut r, "from reader").await;
    let err = next_json(&mut r).await;
    assert_eq!(err["event"], "Error");
    assert_eq!(err["code"], "read_only");
    send(&mut w, "from writer").await;
    // The first notification PostgreSQL sees is the writer's: the reader's never went out.
    assert_eq!(audit.next_json().await["payload"], "from writer");
    assert_eq!(next_json(&mut r).await["payload"], "from writer");
    // The reader's socket is still usable, and the writer got nothing before its close.
    w.close(None).await.unwrap();
    let mut texts = vec![];
    while let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, w.next()).await {
        if let Message::Text(t) = m {
            texts.push(t.to_string());
        }
    }
    assert!(texts.is_empty(), "write-only socket received {texts:?}");
    s.stop().await.unwrap();
}

// §13 scenario 10, done better: an error event instead of silence.
#[tokio::test]
async fn too_large_messages_get_an_error_and_the_socket_stays_usable() {
    let s = start(&[]).await;
    let mut audit = Listen::new(&s.db, LISTEN).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", ts()))).await;
    send(&mut ws, &"x".repeat(8000)).await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["event"], "Error");
    assert_eq!(err["code"], "payload_too_large");
    assert_eq!(err["channel"], "chat");
    assert!(err["message"].as_str().unwrap().contains("7999"));
    send(&mut ws, "small").await;
    assert_eq!(next_json(&mut ws).await["payload"], "small");
    assert_eq!(audit.next_json().await["payload"], "small");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let s = start(&["--max-message-size", "10000"]).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", ts()))).await;
    send(&mut ws, &"x".repeat(20_000)).await;
    let (frame, _) = closed(&mut ws).await;
    assert_eq!(u16::from(frame.expect("close frame").code), 1009);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn binary_frames_are_text_and_invalid_utf8_is_reported() {
    let s = start(&[]).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", ts()))).await;
    ws.send(Message::binary(b"bin text".to_vec()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["payload"], "bin text");
    ws.send(Message::binary(vec![0xff, 0xfe])).await.unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["code"], "invalid_utf8");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn pings_are_answered_in_every_mode_and_the_server_pings() {
    let s = start(&["--ping-interval", "1"]).await;
    let mut r = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    r.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    let mut got_pong = false;
    let mut got_ping = None;
    while !(got_pong && got_ping.is_some()) {
        match tokio::time::timeout(WAIT, r.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"hi");
                got_pong = true;
            }
            Some(Ok(Message::Ping(p))) => got_ping = Some(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(&got_ping.unwrap()[..], b"1");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn percent_encoded_channel_names_are_decoded() {
    let s = start(&[]).await;
    let db = pg(&s.db).await;
    let mut ws = connect(&s.url(&format!("/my%20chan/{}", token(json!({"mode":"r"}))))).await;
    notify(&db, LISTEN, r#"{"channel":"my chan"}"#).await;
    assert_eq!(next_text(&mut ws).await, r#"{"channel":"my chan"}"#);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_notify_is_reported_to_the_sender() {
    let s = start(&["--check-listener-interval", "200"]).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", ts()))).await;
    send(&mut ws, "before").await;
    assert_eq!(next_json(&mut ws).await["payload"], "before");
    // Take the database away under the server.
    let admin = pg(&cluster().connection_string("postgres")).await;
    let name = s.db.rsplit("dbname=").next().unwrap().to_string();
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    // Every message is now answered by an error event, not by silence.
    for i in 0..3 {
        send(&mut ws, &format!("after {i}")).await;
        let v = next_json(&mut ws).await;
        assert_eq!(v["event"], "Error", "{v}");
        assert_eq!(v["code"], "notify_failed");
        assert_eq!(v["channel"], "chat");
    }
    s.stop().await.unwrap();
}

/// While the database refuses the pool, every message is answered, per channel, by an `Error`
/// event, in the order the messages (and, within one, its channels) were sent.
#[tokio::test]
async fn failed_publishes_are_answered_in_the_order_sent() {
    let s = start(&[]).await;
    let t = token(json!({"mode":"w","channels":["first","second"]}));
    let mut ws = connect(&s.url(&format!("/{t}"))).await;
    let refusal = DatabaseRefusal::start(&s.db).await;
    for text in ["one", "two", "three"] {
        send(&mut ws, text).await;
    }
    let mut channels = Vec::new();
    for _ in 0..6 {
        let v = next_json(&mut ws).await;
        assert_eq!(
            (v["event"].as_str(), v["code"].as_str()),
            (Some("Error"), Some("notify_failed")),
            "{v}"
        );
        channels.push(v["channel"].as_str().unwrap().to_string());
    }
    assert_eq!(
        channels,
        ["first", "second", "first", "second", "first", "second"]
    );
    refusal.end().await;
    s.stop().await.unwrap();
}

/// A client still writing an oversized frame reads the 1009 close, not a TCP reset: the server
/// lingers, reading and dropping what the peer still sends, after its close frame.
#[tokio::test]
async fn a_client_still_writing_an_oversized_frame_reads_the_1009_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(&["--max-message-size", "10000"]).await;
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let t = ts();
    wr.write_all(raw_upgrade_request(&format!("/chat/{t}")).as_bytes())
        .await
        .unwrap();
    // A masked text frame announcing 4 MB (far over the limit), whose payload keeps coming for
    // a while after the server has refused it.
    let writer = tokio::spawn(async move {
        let mut header = vec![0x81u8, 0x80 | 127];
        header.extend_from_slice(&(4_000_000u64).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        if wr.write_all(&header).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..40 {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    let mut buf = Vec::new();
    let code = tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = match rd.read(&mut chunk).await {
                Ok(n) => n,
                Err(e) => panic!("the connection was reset before the close frame: {e}"),
            };
            assert!(n > 0, "connection ended without a close frame");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                && buf.starts_with(b"HTTP/1.1 101")
            {
                buf.drain(..end + 4);
            }
            while buf.len() >= 2 && !buf.starts_with(b"HTTP") && buf.len() >= 2 + buf[1] as usize {
                let (op, len) = (buf[0] & 0x0f, buf[1] as usize);
                if op == 8 {
                    return u16::from_be_bytes([buf[2], buf[3]]);
                }
                buf.drain(..2 + len);
            }
        }
    })
    .await
    .expect("a close frame in time");
    assert_eq!(code, 1009);
    writer.abort();
    s.stop().await.unwrap();
}

/// The same with a websocket library as the client: its send of the oversized message fails
/// or not, and it still reads the 1009 close (a reset made it report 1006).
#[tokio::test]
async fn a_library_client_sending_an_oversized_message_reads_1009() {
    let s = start(&["--max-message-size", "10000"]).await;
    for _ in 0..5 {
        let mut ws = connect(&s.url(&format!("/chat/{}", ts()))).await;
        let _ = ws.send(Message::text("x".repeat(8_000_000))).await;
        let (frame, _) = closed(&mut ws).await;
        assert_eq!(
            u16::from(frame.expect("a close frame, not a reset").code),
            1009
        );
    }
    s.stop().await.unwrap();
}
