//! Direct channels, the postgrest-ws message formats, and PostgREST on the same port.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

/// Waits until `cond` holds for the pgws LISTEN session's last statement (pg_stat_activity).
async fn wait_listen_query(db: &tokio_postgres::Client, expected: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = db
            .query(
                "SELECT query FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'pgws' AND query ILIKE '%LISTEN%'",
                &[],
            )
            .await
            .unwrap();
        if rows.iter().any(|r| r.get::<_, String>(0) == expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn direct_mode_delivers_plain_notify_and_triggers() {
    let s = start(&[
        "--channel-mode",
        "direct",
        "--check-listener-interval",
        "600000",
    ])
    .await;
    let db = pg(&s.db).await;
    db.batch_execute(
        "CREATE TABLE orders (id serial PRIMARY KEY, item text);
         CREATE FUNCTION notify_order() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           PERFORM pg_notify('orders', json_build_object('id', NEW.id, 'item', NEW.item)::text);
           RETURN NEW;
         END $$;
         CREATE TRIGGER orders_notify AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION notify_order();",
    )
    .await
    .unwrap();
    let t = token(json!({"mode":"r"}));
    let mut orders = connect(&s.url(&format!("/orders/{t}"))).await;
    // Subscribing issued LISTEN "orders" before the handshake completed.
    wait_listen_query(&db, "LISTEN \"orders\"").await;
    db.execute("INSERT INTO orders (item) VALUES ('tea')", &[])
        .await
        .unwrap();
    assert_eq!(
        next_text(&mut orders).await,
        r#"{"id" : 1, "item" : "tea"}"#
    );

    let mut chat = connect(&s.url(&format!("/chat/{t}"))).await;
    db.batch_execute("NOTIFY chat, 'hello, plain text'")
        .await
        .unwrap();
    assert_eq!(next_text(&mut chat).await, "hello, plain text");
    // A quoted name with odd characters is still one channel.
    let odd = "we\"ird chan";
    let mut weird = connect(&s.url(&format!("/we%22ird%20chan/{t}"))).await;
    notify(&db, odd, "odd").await;
    assert_eq!(next_text(&mut weird).await, "odd");

    // The last subscriber of "orders" leaves: UNLISTEN.
    drop(orders);
    wait_listen_query(&db, "UNLISTEN \"orders\"").await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn direct_mode_client_messages_go_to_the_channel_itself() {
    let s = start(&["--channel-mode", "direct", "--meta-channel", "meta"]).await;
    let mut audit = Listen::new(&s.db, "chat").await;
    let mut meta = Listen::new(&s.db, "meta").await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"rw"}))))).await;
    assert_eq!(meta.next_json().await["event"], "ConnectionOpen");
    send(&mut ws, "hi").await;
    let v = audit.next_json().await;
    assert_eq!(
        (v["channel"].as_str(), v["payload"].as_str()),
        (Some("chat"), Some("hi"))
    );
    // The sender hears its own message, as with the listen channel.
    assert_eq!(next_json(&mut ws).await["payload"], "hi");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn postgrest_ws_formats() {
    let s = start(&[
        "--channel-mode",
        "direct",
        "--message-format",
        "postgrest-ws",
    ])
    .await;
    let mut audit = Listen::new(&s.db, "room").await;
    let mut ws = connect(&s.url(&format!(
        "/room/{}",
        token(json!({"mode":"rw","user":"ann"}))
    )))
    .await;
    send(&mut ws, "hello").await;
    let v = audit.next_json().await;
    assert_eq!(v["payload"], "hello");
    assert_eq!(v["claims"]["user"], "ann");
    assert!(v.get("channel").is_none() && v.get("event").is_none());
    assert_eq!(next_json(&mut ws).await["payload"], "hello");
    s.stop().await.unwrap();

    let s = start(&[
        "--channel-mode",
        "both",
        "--message-format",
        "postgrest-ws-legacy",
    ])
    .await;
    let mut audit = Listen::new(&s.db, "room").await;
    let mut ws = connect(&s.url(&format!(
        "/room/{}",
        token(json!({"mode":"w","user":"ann"}))
    )))
    .await;
    send(&mut ws, "old").await;
    let v = audit.next_json().await;
    assert_eq!(
        (v["userClaims"]["user"].as_str(), v["payload"].as_str()),
        (Some("ann"), Some("old"))
    );
    s.stop().await.unwrap();

    // postgrest-ws messages on the channel itself would never reach listen-channel sockets.
    let db = fresh_db().await;
    let cli = <pgws::Cli as clap::Parser>::try_parse_from(args(
        &db,
        &["--message-format", "postgrest-ws"],
    ))
    .unwrap();
    let err = cli.resolve(None, None).unwrap_err().to_string();
    assert!(err.contains("PGWS_CHANNEL_MODE"), "{err}");
}

#[tokio::test]
async fn both_mode_serves_both_styles_and_relistens_after_a_loss() {
    let mut s = start(&["--channel-mode", "both", "--check-listener-interval", "200"]).await;
    let db = pg(&s.db).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    notify(&db, LISTEN, r#"{"channel":"chat","via":"listen channel"}"#).await;
    notify(&db, "chat", "via direct NOTIFY").await;
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"channel":"chat","via":"listen channel"}"#
    );
    assert_eq!(next_text(&mut ws).await, "via direct NOTIFY");
    db.query_one(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'pgws' AND query ILIKE '%LISTEN%'",
        &[],
    )
    .await
    .unwrap();
    s.wait_listening(2).await;
    assert_eq!(next_json(&mut ws).await["event"], "Gap");
    notify(&db, "chat", "after the loss").await;
    assert_eq!(next_text(&mut ws).await, "after the loss");
    s.stop().await.unwrap();
}

/// A small real HTTP server standing in for PostgREST: it echoes what it got as JSON.
async fn upstream() -> std::net::SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let h = |n: &str| {
                        parts
                            .headers
                            .get(n)
                            .map(|v| v.to_str().unwrap().to_string())
                    };
                    let echo = json!({
                        "method": parts.method.as_str(),
                        "uri": parts.uri.to_string(),
                        "authorization": h("authorization"),
                        "x_forwarded_for": h("x-forwarded-for"),
                        "connection": h("connection"),
                        "body": String::from_utf8_lossy(&body),
                    });
                    let mut r =
                        hyper::Response::new(Full::new(bytes::Bytes::from(echo.to_string())));
                    r.headers_mut()
                        .insert("content-range", "0-0/*".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn plain_requests_are_proxied_to_the_upstream_and_websockets_stay() {
    let up = upstream().await;
    let s = start(&["--upstream", &format!("http://{up}/")]).await;
    let (status, headers, body) = get(
        s.addr,
        "GET",
        "/items?id=eq.1",
        "Authorization: Bearer tok\r\nConnection: close, x-hop\r\nX-Hop: 1\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-range"), Some("0-0/*"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["uri"], "/items?id=eq.1");
    assert_eq!(v["authorization"], "Bearer tok");
    assert_eq!(v["x_forwarded_for"], "127.0.0.1");
    let (status, _, body) = get(
        s.addr,
        "POST",
        "/rpc/add",
        "Content-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"a\":1,\"b\":2}",
    )
    .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["method"].as_str(), v["body"].as_str()),
        (Some("POST"), Some("{\"a\":1,\"b\":2}"))
    );
    // Websockets on the same port are pgws's.
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"rw"}))))).await;
    send(&mut ws, "both on one port").await;
    assert_eq!(next_json(&mut ws).await["payload"], "both on one port");
    s.stop().await.unwrap();

    // An upstream that is gone: 502 with a reason.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let s = start(&["--upstream", &format!("http://{closed}")]).await;
    let (status, _, body) = get(s.addr, "GET", "/items", "").await;
    assert_eq!(status, 502);
    assert!(body.starts_with("Bad Gateway"), "{body}");
    s.stop().await.unwrap();
}
