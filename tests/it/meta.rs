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
