//! Operations: the admin listener, limits with clear refusals.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn metrics_health_and_ready() {
    let s = start(&["--admin-address", "127.0.0.1:0", "--meta-channel", "meta"]).await;
    assert_eq!(s.admin_get("/health").await, (200, "ok".into()));
    assert_eq!(s.admin_get("/ready").await, (200, "ready".into()));
    assert_eq!(s.admin_get("/nope").await.0, 404);
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"rw"}))))).await;
    send(&mut ws, "m").await;
    assert_eq!(next_json(&mut ws).await["payload"], "m");
    let _ = refused(&s.url("/chat/")).await;
    let (_, body) = s.admin_get("/metrics").await;
    for name in [
        "pgws_connections{mode=\"rw\"} 1",
        "pgws_connections_accepted_total 1",
        "pgws_handshakes_refused_total{reason=\"missing_mode\"} 1",
        "pgws_messages_in_total 1",
        "pgws_notify_sent_total",
        "pgws_notifications_received_total",
        "pgws_deliveries_total",
        "pgws_listener_up 1",
        "pgws_notification_queue_usage",
        "pgws_delivery_latency_seconds_bucket",
        "pgws_channels 1",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
    // Tokens never appear in metrics.
    assert!(!body.contains("eyJ"));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn limits_are_refused_with_reasons() {
    let s = start(&["--max-connections", "2", "--max-channels", "2"]).await;
    let t = token(json!({"mode":"r"}));
    let long = "c".repeat(64);
    let (status, body) = refused(&s.url(&format!("/{long}/{t}"))).await;
    assert_eq!(status, 400);
    assert!(body.contains("63 bytes"), "{body}");
    assert_eq!(
        refused(&s.url(&format!("//{t}"))).await,
        (400, "Error: empty channel name".into())
    );
    // A NUL would break LISTEN in direct mode; a newline would forge log lines.
    for bad in ["a%00b", "x%0A2026%20ERROR%20forged"] {
        let (status, body) = refused(&s.url(&format!("/{bad}/{t}"))).await;
        assert_eq!(status, 400);
        assert!(body.contains("control character"), "{body}");
    }
    let many = token(json!({"mode":"r","channels":["a","b","c"]}));
    let (status, body) = refused(&s.url(&format!("/{many}"))).await;
    assert_eq!(status, 400);
    assert!(body.contains("too many channels"), "{body}");

    let _a = connect(&s.url(&format!("/x/{t}"))).await;
    let _b = connect(&s.url(&format!("/x/{t}"))).await;
    let (status, body) = refused(&s.url(&format!("/x/{t}"))).await;
    assert_eq!(status, 503);
    assert!(body.contains("Too many connections"), "{body}");
    drop(_a);
    s.stop().await.unwrap();
}
