//! HTTP publish: `POST` with a `text/plain` body publishes like a websocket message, waits for
//! PostgreSQL, and answers with a status and a reason.

use serde_json::{Value, json};

use crate::common::*;

/// `POST path` with `body` and extra header lines; returns status, headers, body.
pub(crate) async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    extra: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let (status, headers, body) = http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        ),
    )
    .await;
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_post_publishes_like_a_websocket_message() {
    let s = start(&[]).await;
    let mut reader = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let writer = token(json!({"mode":"w","sub":"poster"}));
    let (status, headers, body) = post(
        s.addr,
        &format!("/chat/{writer}"),
        "text/plain; charset=utf-8",
        "",
        "hello over http",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"published": 1})
    );
    let v = next_json(&mut reader).await;
    assert_eq!(v["event"], "WebsocketMessage");
    assert_eq!(v["channel"], "chat");
    assert_eq!(v["payload"], "hello over http");
    assert_eq!(v["claims"]["sub"], "poster");
    // The bearer header works as for websockets.
    let (status, _, _) = post(
        s.addr,
        "/chat",
        "text/plain",
        &format!("Authorization: Bearer {writer}\r\n"),
        "second",
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(next_json(&mut reader).await["payload"], "second");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn refusals_say_why() {
    let s = start(&["--max-message-size", "9000"]).await;
    let path = |claims: Value| format!("/chat/{}", token(claims));
    let (status, _, body) = post(s.addr, &path(json!({"mode":"r"})), "text/plain", "", "x").await;
    assert_eq!(status, 403);
    assert!(body.contains("does not allow writing"), "{body}");
    let (status, _, body) = post(
        s.addr,
        &path(json!({"mode":"w"})),
        "text/plain",
        "",
        &"y".repeat(8500),
    )
    .await;
    assert_eq!(status, 413);
    assert!(body.contains("8000") || body.contains("7999"), "{body}");
    let (status, _, body) = post(
        s.addr,
        &path(json!({"mode":"w"})),
        "text/plain",
        "",
        &"z".repeat(9500),
    )
    .await;
    assert_eq!(status, 413);
    assert!(body.contains("PGWS_MAX_MESSAGE_SIZE"), "{body}");
    let (status, _, body) = post(s.addr, "/chat/not-a-token", "text/plain", "", "x").await;
    assert_eq!((status, body), refused(&s.url("/chat/not-a-token")).await);
    // Any other POST is not a publish: the static site answers as before.
    let (status, _, body) = post(
        s.addr,
        &path(json!({"mode":"w"})),
        "application/json",
        "",
        "{}",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "Hello, Web!"));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn database_unavailable_is_a_503() {
    // A server whose database cannot be reached: nothing can be published.
    let dead = "host=/nonexistent-pgws-socket-dir port=5432 user=postgres dbname=none";
    let s = spawn_on(dead, &["--retries", "1000"]).await;
    let (status, headers, body) = post(
        s.addr,
        &format!("/chat/{}", token(json!({"mode":"w"}))),
        "text/plain",
        "",
        "lost?",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(header(&headers, "retry-after").is_some());
    s.stop().await.unwrap();
}
