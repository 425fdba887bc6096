//! The meta channel (spec §6; §13 scenario 9), with the added `ConnectionClose`.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn connection_open_and_close_events() {
    let s = start(&["--meta-channel", "meta"]).await;
    let mut audit = Listen::new(&s.db, LISTEN).await;
    let mut meta = connect(&s.url(&format!("/meta/{}", token(json!({"mode":"rw"}))))).await;
    // The meta socket sees its own ConnectionOpen (it is subscribed before the event goes out).
    let own = next_json(&mut meta).await;
    assert_eq!(own["event"], "ConnectionOpen");
    assert_eq!(own["payload"], "meta");
    assert_eq!(audit.next_json().await["event"], "ConnectionOpen");

    let t = token(json!({"mode":"rw","channels":["test","secondary"],"sub":"u1"}));
    let mut other = connect(&s.url(&format!("/{t}"))).await;
    let open = next_json(&mut meta).await;
    assert_eq!(open["event"], "ConnectionOpen");
    assert_eq!(open["channel"], "meta");
    assert_eq!(open["payload"], "test,secondary");
    assert_eq!(open["claims"]["sub"], "u1");
    assert!(open["claims"]["message_delivered_at"].is_f64());

    other.close(None).await.unwrap();
    let close = next_json(&mut meta).await;
    assert_eq!(close["event"], "ConnectionClose");
    assert_eq!(close["channel"], "meta");
    assert_eq!(close["payload"], "test,secondary");
    assert_eq!(close["claims"]["sub"], "u1");
    s.stop().await.unwrap();
}

/// A meta event PostgreSQL refuses (its claims make the notification longer than NOTIFY takes)
/// is classified by its SQLSTATE (22023) as too large, and counted: nobody waits for it, and the
/// socket opens anyway.
#[tokio::test]
async fn a_meta_event_too_long_for_notify_is_counted_as_too_large() {
    let s = start(&["--admin-address", "127.0.0.1:0", "--meta-channel", "meta"]).await;
    let big = "x".repeat(7_900);
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r","big":big}))))).await;
    let wanted = "pgws_notify_errors_total{reason=\"payload_too_large\"} 1";
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = s.admin_get("/metrics").await;
        if body.contains(wanted) {
            assert!(!body.contains("reason=\"notify_failed\""), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/metrics lacks {wanted}:\n{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ws.close(None).await.unwrap();
    s.stop().await.unwrap();
}
