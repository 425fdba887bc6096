//! Protocol v2 (`pgws.v2`, docs/PROTOCOL.md) conformance: every request, answer, event and
//! error code of the document, exact per-channel resume (with a concurrent publisher: loss,
//! duplicates and order counted), gaps, in-band token refresh (in time, too late, bad), and
//! malformed frames that never end the socket nor touch another one.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::*;
use crate::resume::{message, number};

/// Opens a v2 socket at `path` and reads its `welcome`.
async fn open_v2(s: &TestServer, path: &str) -> (Ws, Value) {
    open_v2_url(&s.url(path)).await
}

/// A v2 socket with `claims` (path `/<token>`).
async fn v2(s: &TestServer, claims: Value) -> Ws {
    open_v2(s, &format!("/{}", token(claims))).await.0
}

/// Sends a request and returns the next frame.
async fn ask(ws: &mut Ws, request: Value) -> Value {
    send(ws, &request.to_string()).await;
    next_json(ws).await
}

/// Subscribes and returns the `subscribed` answer (frames before it, a replay, in `before`).
async fn subscribe(ws: &mut Ws, channel: &str, since: Option<&str>) -> (Value, Vec<Value>) {
    let mut req = json!({"type":"subscribe","id":channel,"channel":channel});
    if let Some(p) = since {
        req["since"] = json!(p);
    }
    send(ws, &req.to_string()).await;
    let mut before = Vec::new();
    loop {
        let v = next_json(ws).await;
        if v["type"] == "subscribed" {
            assert_eq!(v["id"], channel);
            assert_eq!(v["channel"], channel);
            assert!(v["position"].is_string(), "{v}");
            return (v, before);
        }
        assert!(
            v["type"] == "message" || v["type"] == "gap",
            "only a replay comes before the answer: {v}"
        );
        before.push(v);
    }
}

/// Proves that nothing else is queued before it: a ping's pong is the next frame.
async fn nothing_pending(ws: &mut Ws) {
    let v = ask(ws, json!({"type":"ping","id":"probe"})).await;
    assert_eq!(
        v,
        json!({"type":"pong","id":"probe"}),
        "nothing before the pong"
    );
}

#[tokio::test]
async fn negotiation_welcome_and_token_carriers() {
    let s = start(&["--max-channels", "7"]).await;
    let exp = (pgws::auth::now_seconds() + 600.0).floor();
    let tok = token(json!({"mode":"rw","channels":["a","b"],"exp":exp}));
    let (_ws, welcome) = open_v2(&s, &format!("/{tok}")).await;
    assert_eq!(
        welcome,
        json!({"type":"welcome","protocol":"pgws.v2","mode":"rw","channels":["a","b"],
               "exp":exp,"max_subscriptions":7,"max_message_size":65536})
    );
    // A token without channel claims grants any channel; the path's channel is not used.
    let (_ws, welcome) = open_v2(&s, &format!("/ignored/{}", token(json!({"mode":"r"})))).await;
    assert_eq!(welcome["channels"], Value::Null);
    assert_eq!(welcome["exp"], Value::Null);
    // The token in the subprotocol list, next to pgws.v2 (what browsers can send).
    let mut req = s.url("/").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("pgws.v2, bearer.{tok}").parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "pgws.v2");
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    // Authorization header.
    let mut req = s.url("/").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "pgws.v2".parse().unwrap());
    req.headers_mut()
        .insert("authorization", format!("Bearer {tok}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ws).await["mode"], "rw");
    // Refusals stay HTTP answers, as for every websocket.
    let mut req = s.url("/garbage").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "pgws.v2".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
        other => panic!("expected a 400, got {other:?}"),
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn messages_carry_channel_position_and_the_exact_compat_text() {
    let s = start(&[]).await;
    let db = pg(&s.db).await;
    let mut compat = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let mut ws = v2(&s, json!({"mode":"r"})).await;
    let (answer, before) = subscribe(&mut ws, "chat", None).await;
    assert!(before.is_empty());
    assert_eq!(answer["replayed"], 0);
    subscribe(&mut ws, "other", None).await;
    let texts = [message("chat", 1), "plain \"text\"\nline".to_string()];
    for t in &texts {
        let routed = if t.starts_with('{') {
            t.clone()
        } else {
            json!({"channel":"chat","payload":t}).to_string()
        };
        notify(&db, LISTEN, &routed).await;
        let compat_text = next_text(&mut compat).await;
        assert_eq!(compat_text, routed, "compat bytes unchanged");
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["channel"], "chat");
        assert_eq!(m["data"], compat_text, "data is exactly the compat text");
        assert!(m["position"].is_string());
        assert_eq!(m.as_object().unwrap().len(), 4, "{m}");
    }
    notify(&db, LISTEN, &message("other", 2)).await;
    assert_eq!(next_json(&mut ws).await["channel"], "other");
    // Unsubscribed: nothing of the channel follows the answer.
    let v = ask(
        &mut ws,
        json!({"type":"unsubscribe","id":5,"channel":"chat"}),
    )
    .await;
    assert_eq!(v, json!({"type":"unsubscribed","id":5,"channel":"chat"}));
    notify(&db, LISTEN, &message("chat", 3)).await;
    notify(&db, LISTEN, &message("other", 4)).await;
    let m = next_json(&mut ws).await;
    assert_eq!(
        (m["channel"].as_str(), number(m["data"].as_str().unwrap())),
        (Some("other"), 4)
    );
    let v = ask(
        &mut ws,
        json!({"type":"unsubscribe","id":6,"channel":"chat"}),
    )
    .await;
    assert_eq!(v["type"], "error");
    assert_eq!(
        (v["id"].clone(), v["code"].clone()),
        (json!(6), json!("not_subscribed"))
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn subscribe_refusals_each_with_its_code() {
    let s = start(&["--max-channels", "2"]).await;
    let mut ws = v2(&s, json!({"mode":"r","channels":["a","b","c"]})).await;
    let err = |v: &Value| (v["type"].clone(), v["code"].clone());
    let v = ask(&mut ws, json!({"type":"subscribe","id":1,"channel":"z"})).await;
    assert_eq!(err(&v), (json!("error"), json!("not_granted")));
    assert_eq!(v["id"], 1);
    let long = "x".repeat(64);
    for bad in ["", long.as_str(), "a\u{1}b"] {
        let v = ask(&mut ws, json!({"type":"subscribe","id":2,"channel":bad})).await;
        assert_eq!(err(&v), (json!("error"), json!("bad_channel")), "{bad:?}");
    }
    subscribe(&mut ws, "a", None).await;
    let v = ask(&mut ws, json!({"type":"subscribe","id":3,"channel":"a"})).await;
    assert_eq!(err(&v), (json!("error"), json!("already_subscribed")));
    subscribe(&mut ws, "b", None).await;
    let v = ask(&mut ws, json!({"type":"subscribe","id":4,"channel":"c"})).await;
    assert_eq!(err(&v), (json!("error"), json!("too_many_subscriptions")));
    // Unsubscribing makes room again.
    ask(&mut ws, json!({"type":"unsubscribe","id":5,"channel":"a"})).await;
    subscribe(&mut ws, "c", None).await;
    let mut w = v2(&s, json!({"mode":"w"})).await;
    let v = ask(&mut w, json!({"type":"subscribe","id":6,"channel":"a"})).await;
    assert_eq!(err(&v), (json!("error"), json!("write_only")));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn resume_per_channel_replays_exactly_what_was_missed() {
    let s = start(&[]).await;
    let db = pg(&s.db).await;
    let claims = json!({"mode":"r"});
    let mut witness = v2(&s, claims.clone()).await;
    subscribe(&mut witness, "chat", None).await;
    subscribe(&mut witness, "quiet", None).await;
    let mut ws = v2(&s, claims.clone()).await;
    let (answer, _) = subscribe(&mut ws, "chat", None).await;
    let joined_at = answer["position"].as_str().unwrap().to_string();
    // A channel that received nothing resumes from the answer's position.
    let (quiet, _) = subscribe(&mut ws, "quiet", None).await;
    let quiet_at = quiet["position"].as_str().unwrap().to_string();
    let mut last = joined_at.clone();
    for n in 0..3 {
        notify(&db, LISTEN, &message("chat", n)).await;
        let m = next_json(&mut ws).await;
        assert_eq!(number(m["data"].as_str().unwrap()), n);
        last = m["position"].as_str().unwrap().to_string();
        next_json(&mut witness).await;
    }
    drop(ws);
    for n in 3..8 {
        notify(&db, LISTEN, &message("chat", n)).await;
        assert_eq!(
            number(next_json(&mut witness).await["data"].as_str().unwrap()),
            n
        );
    }
    notify(&db, LISTEN, &message("quiet", 100)).await;
    let newest = next_json(&mut witness).await;
    assert_eq!(number(newest["data"].as_str().unwrap()), 100);
    let mut back = v2(&s, claims.clone()).await;
    let (answer, replay) = subscribe(&mut back, "chat", Some(&last)).await;
    let got: Vec<usize> = replay
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "message", "no gap inside the window: {m}");
            number(m["data"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        got,
        (3..8).collect::<Vec<_>>(),
        "in order, none missing or twice"
    );
    assert_eq!(answer["replayed"], 5);
    assert_eq!(
        answer["position"], newest["position"],
        "the stream's position at the join (every channel shares one numbering)"
    );
    // The quiet channel, from the position its answer gave: exactly the one message.
    let (_, replay) = subscribe(&mut back, "quiet", Some(&quiet_at)).await;
    assert_eq!(replay.len(), 1);
    assert_eq!(number(replay[0]["data"].as_str().unwrap()), 100);
    notify(&db, LISTEN, &message("chat", 8)).await;
    let m = next_json(&mut back).await;
    assert_eq!(
        number(m["data"].as_str().unwrap()),
        8,
        "then live, no overlap"
    );
    s.stop().await.unwrap();
}

/// A socket drops and resumes over and over while a publisher keeps sending: the seam between
/// replay and live traffic loses, repeats and reorders nothing.
#[tokio::test]
async fn resume_under_a_concurrent_publisher_loses_and_repeats_nothing() {
    const TOTAL: usize = 400;
    let s = start(&[]).await;
    let mut ws = v2(&s, json!({"mode":"r"})).await;
    let (answer, _) = subscribe(&mut ws, "race", None).await;
    let mut last = answer["position"].as_str().unwrap().to_string();
    let db_conn = s.db.clone();
    let publisher = tokio::spawn(async move {
        let db = pg(&db_conn).await;
        for n in 0..TOTAL {
            notify(&db, LISTEN, &message("race", n)).await;
        }
    });
    let mut received: Vec<usize> = Vec::new();
    let mut rounds = 0;
    'outer: loop {
        rounds += 1;
        for _ in 0..37 {
            let m = next_json(&mut ws).await;
            match m["type"].as_str() {
                Some("message") => {
                    received.push(number(m["data"].as_str().unwrap()));
                    last = m["position"].as_str().unwrap().to_string();
                    if received.last() == Some(&(TOTAL - 1)) {
                        break 'outer;
                    }
                }
                Some("subscribed") => last = m["position"].as_str().unwrap().to_string(),
                _ => panic!("unexpected frame: {m}"),
            }
        }
        drop(ws);
        ws = v2(&s, json!({"mode":"r"})).await;
        let req = json!({"type":"subscribe","id":rounds,"channel":"race","since":last});
        send(&mut ws, &req.to_string()).await;
    }
    publisher.await.unwrap();
    assert_eq!(
        received,
        (0..TOTAL).collect::<Vec<_>>(),
        "in order, none lost or twice, across {rounds} resumes"
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn resumes_that_cannot_be_exact_start_with_a_gap() {
    let a = start(&["--replay-messages", "3"]).await;
    let b = start_on(&a.db, &[]).await;
    let db = pg(&a.db).await;
    let mut ws = v2(&a, json!({"mode":"r"})).await;
    let (answer, _) = subscribe(&mut ws, "chat", None).await;
    let from = answer["position"].as_str().unwrap().to_string();
    let mut on_b = v2(&b, json!({"mode":"r"})).await;
    subscribe(&mut on_b, "chat", None).await;
    for n in 0..6 {
        notify(&db, LISTEN, &message("chat", n)).await;
        next_json(&mut ws).await;
        next_json(&mut on_b).await;
    }
    // Window exceeded: the gap names what was lost, then the 3 messages left.
    let mut back = v2(&a, json!({"mode":"r"})).await;
    let (answer, replay) = subscribe(&mut back, "chat", Some(&from)).await;
    let gap = &replay[0];
    assert_eq!(gap["type"], "gap");
    assert_eq!(gap["channel"], "chat");
    assert_eq!(gap["reason"], "window_exceeded");
    assert_eq!(gap["after"], from.as_str());
    assert!(gap["through"].is_string() && gap["message"].is_string());
    assert_eq!(gap["resumes_at"], replay[1]["position"]);
    let got: Vec<usize> = replay[1..]
        .iter()
        .map(|m| number(m["data"].as_str().unwrap()))
        .collect();
    assert_eq!(got, [3, 4, 5]);
    assert_eq!(answer["replayed"], 3);
    // Another process's position, garbage, a position from the future, a huge one.
    let future = format!("{}-999999999", from.split_once('-').unwrap().0);
    let huge = "9".repeat(10_000);
    for (since, server, reason) in [
        (from.as_str(), &b, "other_epoch"),
        ("not-a-position", &a, "unknown_position"),
        (future.as_str(), &a, "future_position"),
        (huge.as_str(), &a, "unknown_position"),
    ] {
        let mut ws = v2(server, json!({"mode":"r"})).await;
        let (_, replay) = subscribe(&mut ws, "chat", Some(since)).await;
        assert_eq!(replay[0]["type"], "gap");
        assert_eq!(
            replay[0]["reason"],
            reason,
            "{}",
            &since[..since.len().min(40)]
        );
        assert!(replay[1..].iter().all(|m| m["type"] == "message"));
    }
    // Another channel's past is never replayed as this one's.
    let mut ws = v2(&a, json!({"mode":"r"})).await;
    let (_, replay) = subscribe(&mut ws, "elsewhere", Some(&from)).await;
    assert!(replay.iter().all(|m| m["type"] == "gap"), "{replay:?}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_listen_outage_is_a_gap_on_every_subscription() {
    // Without --gap-events: v2 sockets are told anyway.
    let mut s = start(&["--check-listener-interval", "200"]).await;
    let db = pg(&s.db).await;
    let mut ws = v2(&s, json!({"mode":"r"})).await;
    subscribe(&mut ws, "x", None).await;
    subscribe(&mut ws, "y", None).await;
    kill_listener(&db).await;
    s.wait_down().await;
    s.wait_listening(2).await;
    let mut channels = Vec::new();
    for _ in 0..2 {
        let g = next_json(&mut ws).await;
        assert_eq!(
            (g["type"].as_str(), g["reason"].as_str()),
            (Some("gap"), Some("source_outage"))
        );
        assert!(g["down_ms"].is_u64());
        channels.push(g["channel"].as_str().unwrap().to_string());
    }
    channels.sort();
    assert_eq!(channels, ["x", "y"]);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn publish_is_acked_or_nacked_with_a_reason() {
    let s = start(&["--rate-messages", "1"]).await;
    let mut listen = Listen::new(&s.db, LISTEN).await;
    let mut ws = v2(
        &s,
        json!({"mode":"rw","channels":["chat","room"],"user":"ann"}),
    )
    .await;
    let v = ask(
        &mut ws,
        json!({"type":"publish","id":"p1","channel":"chat","data":"hi"}),
    )
    .await;
    assert_eq!(
        v,
        json!({"type":"ack","id":"p1","channel":"chat","position":null})
    );
    let n = listen.next_json().await;
    assert_eq!(
        (
            n["channel"].as_str(),
            n["event"].as_str(),
            n["payload"].as_str()
        ),
        (Some("chat"), Some("WebsocketMessage"), Some("hi")),
        "the original's envelope"
    );
    assert_eq!(n["claims"]["user"], "ann");
    let nack = |v: &Value, code: &str| {
        assert_eq!(v["type"], "nack", "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].is_string());
    };
    // The rate (1/s, burst 2) is spent: the next requests within the second are refused.
    let v = ask(
        &mut ws,
        json!({"type":"publish","id":"p2","channel":"room","data":"x"}),
    )
    .await;
    if v["type"] == "ack" {
        let v = ask(
            &mut ws,
            json!({"type":"publish","id":"p3","channel":"room","data":"x"}),
        )
        .await;
        nack(&v, "rate_limited");
    } else {
        nack(&v, "rate_limited");
    }
    let v = ask(&mut ws, json!({"type":"ping","id":1})).await;
    assert_eq!(
        (v["type"].clone(), v["code"].clone()),
        (json!("error"), json!("rate_limited"))
    );
    s.stop().await.unwrap();

    let s = start(&[]).await;
    let mut ws = v2(&s, json!({"mode":"rw","channels":["chat"]})).await;
    let v = ask(
        &mut ws,
        json!({"type":"publish","id":1,"channel":"other","data":"x"}),
    )
    .await;
    nack(&v, "not_granted");
    assert_eq!(
        (v["id"].clone(), v["channel"].clone()),
        (json!(1), json!("other"))
    );
    let v = ask(
        &mut ws,
        json!({"type":"publish","id":2,"channel":"","data":"x"}),
    )
    .await;
    nack(&v, "bad_channel");
    let big = "x".repeat(8000);
    let v = ask(
        &mut ws,
        json!({"type":"publish","id":3,"channel":"chat","data":big}),
    )
    .await;
    nack(&v, "too_large");
    let mut r = v2(&s, json!({"mode":"r"})).await;
    let v = ask(
        &mut r,
        json!({"type":"publish","id":4,"channel":"chat","data":"x"}),
    )
    .await;
    nack(&v, "read_only");
    // The database refuses connections: the pool cannot send it.
    let refusal = DatabaseRefusal::start(&s.db).await;
    let v = ask(
        &mut ws,
        json!({"type":"publish","id":5,"channel":"chat","data":"x"}),
    )
    .await;
    nack(&v, "database_unavailable");
    refusal.end().await;
    s.stop().await.unwrap();
}

/// A token with `exp` `secs` from now, as a whole number of seconds.
fn expiring(secs: f64, claims: Value) -> (String, f64) {
    let exp = (pgws::auth::now_seconds() + secs).ceil();
    let mut c = claims;
    c["exp"] = json!(exp);
    (token(c), exp)
}

/// Waits until the wall clock passes `exp` (the thing under test is time passing).
async fn past(exp: f64) {
    let left = exp - pgws::auth::now_seconds() + 0.3;
    if left > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(left)).await;
    }
}

#[tokio::test]
async fn a_refresh_in_time_keeps_the_socket_past_the_old_exp() {
    let s = start(&[]).await;
    let db = pg(&s.db).await;
    let (old, old_exp) = expiring(2.0, json!({"mode":"r","sub":"u1"}));
    let (mut ws, welcome) = open_v2(&s, &format!("/{old}")).await;
    assert_eq!(welcome["exp"], old_exp);
    subscribe(&mut ws, "chat", None).await;
    let (new, new_exp) = expiring(600.0, json!({"mode":"r","sub":"u1"}));
    let v = ask(&mut ws, json!({"type":"refresh","id":"r","token":new})).await;
    assert_eq!(
        v,
        json!({"type":"refreshed","id":"r","mode":"r","channels":null,"exp":new_exp})
    );
    past(old_exp).await;
    nothing_pending(&mut ws).await;
    notify(&db, LISTEN, &message("chat", 1)).await;
    assert_eq!(
        number(next_json(&mut ws).await["data"].as_str().unwrap()),
        1
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_good_refresh_the_socket_closes_at_its_exp() {
    let s = start(&[]).await;
    let (old, old_exp) = expiring(2.0, json!({"mode":"r","sub":"u1"}));
    let (mut ws, _) = open_v2(&s, &format!("/{old}")).await;
    let code = |v: &Value| v["code"].as_str().unwrap().to_string();
    let v = ask(&mut ws, json!({"type":"refresh","id":1,"token":"garbage"})).await;
    assert_eq!(
        (v["type"].as_str(), code(&v).as_str()),
        (Some("error"), "bad_token")
    );
    let bad_sig = sign(
        json!({"mode":"r","sub":"u1"}),
        b"another-secret-another-secret-32",
    );
    let v = ask(&mut ws, json!({"type":"refresh","id":2,"token":bad_sig})).await;
    assert_eq!(code(&v), "bad_token");
    let (stale, _) = expiring(-10.0, json!({"mode":"r","sub":"u1"}));
    let v = ask(&mut ws, json!({"type":"refresh","id":3,"token":stale})).await;
    assert_eq!(code(&v), "token_expired");
    let (other, _) = expiring(600.0, json!({"mode":"r","sub":"u2"}));
    let v = ask(&mut ws, json!({"type":"refresh","id":4,"token":other})).await;
    assert_eq!(code(&v), "subject_changed");
    // The old token still rules: the socket works, then closes at its exp with 3001.
    nothing_pending(&mut ws).await;
    let (frame, texts) = closed(&mut ws).await;
    assert!(texts.is_empty(), "{texts:?}");
    let frame = frame.expect("close frame");
    assert_eq!(u16::from(frame.code), 3001);
    assert_eq!(frame.reason.as_str(), "JWT expired");
    assert!(pgws::auth::now_seconds() >= old_exp - 0.5);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_refresh_that_narrows_the_grant_leaves_channels_with_an_event() {
    let s = start(&[]).await;
    let db = pg(&s.db).await;
    let mut ws = v2(&s, json!({"mode":"rw","channels":["a","b"],"sub":"u"})).await;
    subscribe(&mut ws, "a", None).await;
    subscribe(&mut ws, "b", None).await;
    let narrow = token(json!({"mode":"rw","channels":["a"],"sub":"u"}));
    send(
        &mut ws,
        &json!({"type":"refresh","id":9,"token":narrow}).to_string(),
    )
    .await;
    let left = next_json(&mut ws).await;
    assert_eq!(left["type"], "left");
    assert_eq!(left["channel"], "b");
    assert_eq!(left["reason"], "not_granted");
    assert!(left["message"].is_string());
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["channels"].clone()),
        (Some("refreshed"), json!(["a"]))
    );
    notify(&db, LISTEN, &message("b", 1)).await;
    notify(&db, LISTEN, &message("a", 2)).await;
    let m = next_json(&mut ws).await;
    assert_eq!(
        (m["channel"].as_str(), number(m["data"].as_str().unwrap())),
        (Some("a"), 2)
    );
    let v = ask(
        &mut ws,
        json!({"type":"publish","id":1,"channel":"b","data":"x"}),
    )
    .await;
    assert_eq!(v["code"], "not_granted");
    // A write-only token leaves every channel.
    let w = token(json!({"mode":"w","channels":["a"],"sub":"u"}));
    send(
        &mut ws,
        &json!({"type":"refresh","id":10,"token":w}).to_string(),
    )
    .await;
    let left = next_json(&mut ws).await;
    assert_eq!(
        (left["type"].as_str(), left["channel"].as_str()),
        (Some("left"), Some("a"))
    );
    assert_eq!(left["reason"], "write_only");
    assert_eq!(next_json(&mut ws).await["mode"], "w");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_frames_get_errors_and_never_touch_another_socket() {
    let s = start(&[
        "--max-message-size",
        "2000000",
        "--rate-messages",
        "0",
        "--rate-bytes",
        "0",
    ])
    .await;
    let db = pg(&s.db).await;
    let mut other = v2(&s, json!({"mode":"r"})).await;
    subscribe(&mut other, "calm", None).await;
    let mut ws = v2(&s, json!({"mode":"rw"})).await;
    let deep = "[".repeat(1 << 20);
    let deep_closed = format!("{}{}", "[".repeat(500_000), "]".repeat(500_000));
    let cases: Vec<(String, &str, Value)> = vec![
        ("not json".into(), "bad_json", Value::Null),
        ("".into(), "bad_json", Value::Null),
        ("[1,2]".into(), "bad_json", Value::Null),
        ("\"subscribe\"".into(), "bad_json", Value::Null),
        ("{\"type\":\"ping\"".into(), "bad_json", Value::Null),
        (deep.clone(), "bad_json", Value::Null),
        (
            format!("{{\"type\":\"ping\",\"id\":{deep}"),
            "bad_json",
            Value::Null,
        ),
        (
            format!("{{\"type\":\"ping\",\"id\":{deep_closed}}}"),
            "bad_json",
            Value::Null,
        ),
        (
            r#"{"type":"dance","id":1}"#.into(),
            "unknown_type",
            json!(1),
        ),
        (r#"{"id":2}"#.into(), "bad_request", json!(2)),
        (r#"{"type":null,"id":3}"#.into(), "bad_request", json!(3)),
        (
            r#"{"type":["ping"],"id":4}"#.into(),
            "bad_request",
            json!(4),
        ),
        (
            r#"{"type":"subscribe","id":5}"#.into(),
            "bad_request",
            json!(5),
        ),
        (
            r#"{"type":"subscribe","id":6,"channel":{"a":1}}"#.into(),
            "bad_request",
            json!(6),
        ),
        (
            r#"{"type":"subscribe","id":7,"channel":"c","since":7}"#.into(),
            "bad_request",
            json!(7),
        ),
        (
            r#"{"type":"publish","id":8,"channel":"c","data":{"x":1}}"#.into(),
            "bad_request",
            json!(8),
        ),
        (
            r#"{"type":"refresh","id":9,"token":false}"#.into(),
            "bad_request",
            json!(9),
        ),
        (
            r#"{"type":"ping","id":true}"#.into(),
            "bad_request",
            Value::Null,
        ),
        (
            r#"{"type":"ping","id":{"k":"v"}}"#.into(),
            "bad_request",
            Value::Null,
        ),
        (
            r#"{"type":"ping","id":[1]}"#.into(),
            "bad_request",
            Value::Null,
        ),
        (
            format!(r#"{{"type":"ping","id":"{}"}}"#, "i".repeat(257)),
            "bad_request",
            Value::Null,
        ),
        (
            r#"{"type":"ping","type":"ping"}"#.into(),
            "bad_json",
            Value::Null,
        ),
    ];
    for (i, (text, code, id)) in cases.iter().enumerate() {
        send(&mut ws, text).await;
        let v = next_json(&mut ws).await;
        let shown = &text[..text.len().min(60)];
        assert_eq!(v["type"], "error", "{shown}: {v}");
        assert_eq!(v["code"], *code, "{shown}: {v}");
        assert_eq!(v["id"], *id, "{shown}");
        assert!(v["message"].is_string());
        // Meanwhile the other socket is served as usual.
        notify(&db, LISTEN, &message("calm", i)).await;
        assert_eq!(
            number(next_json(&mut other).await["data"].as_str().unwrap()),
            i
        );
    }
    // Ids of every accepted JSON type are echoed as sent.
    for id in [
        json!("s"),
        json!(""),
        json!(0),
        json!(-12),
        json!(1.5),
        json!(1e300),
        json!(null),
    ] {
        let v = ask(&mut ws, json!({"type":"ping","id":id})).await;
        assert_eq!(v, json!({"type":"pong","id":id}));
    }
    let v = ask(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(v, json!({"type":"pong","id":null}));
    // A well-formed deep value in a member pgws does not read is skipped.
    send(
        &mut ws,
        &format!("{{\"type\":\"ping\",\"id\":\"deep\",\"x\":{deep_closed}}}"),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["id"], "deep");
    // Binary frames are not requests.
    ws.send(Message::binary(b"{\"type\":\"ping\"}".to_vec()))
        .await
        .unwrap();
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    nothing_pending(&mut ws).await;
    nothing_pending(&mut other).await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn limits_close_with_their_codes() {
    let s = start(&["--max-message-size", "1000"]).await;
    let mut ws = v2(&s, json!({"mode":"rw"})).await;
    send(&mut ws, &"x".repeat(2000)).await;
    let (frame, _) = closed(&mut ws).await;
    assert_eq!(u16::from(frame.expect("close frame").code), 1009);
    // Shutdown: 1001.
    let mut ws = v2(&s, json!({"mode":"r"})).await;
    let stopping = tokio::spawn(s.stop());
    let (frame, _) = closed(&mut ws).await;
    assert_eq!(u16::from(frame.expect("close frame").code), 1001);
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn compat_and_positioned_sockets_are_unchanged_beside_v2() {
    let s = start(&[]).await;
    let db = pg(&s.db).await;
    let tok = token(json!({"mode":"r"}));
    let mut compat = connect(&s.url(&format!("/chat/{tok}"))).await;
    let mut positioned = connect(&s.url(&format!("/chat/{tok}?last-event-id="))).await;
    let mut ws = v2(&s, json!({"mode":"r"})).await;
    subscribe(&mut ws, "chat", None).await;
    let text = message("chat", 1);
    notify(&db, LISTEN, &text).await;
    assert_eq!(next_text(&mut compat).await, text);
    let p = next_json(&mut positioned).await;
    assert_eq!(p["data"], text);
    let m = next_json(&mut ws).await;
    assert_eq!(m["data"], text);
    assert_eq!(m["position"], p["id"], "one numbering for both");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn numeric_ids_are_echoed_as_written() {
    let s = start(&[]).await;
    let mut ws = v2(&s, json!({"mode":"rw"})).await;
    // The answer's bytes carry the client's number text (docs/PROTOCOL.md §2.1), which parsing
    // it as a float would change: precision, trailing zeros, the sign of zero, the range.
    for number in ["123456789012345678901234567890", "1.50", "-0", "1e400", "7"] {
        send(&mut ws, &format!(r#"{{"type":"ping","id":{number}}}"#)).await;
        assert_eq!(
            next_text(&mut ws).await,
            format!(r#"{{"type":"pong","id":{number}}}"#)
        );
        // And in an answer with more members.
        send(
            &mut ws,
            &format!(r#"{{"type":"unsubscribe","id":{number},"channel":"nope"}}"#),
        )
        .await;
        let answer = next_text(&mut ws).await;
        assert!(
            answer.contains(&format!(r#""id":{number},"#)),
            "{number}: {answer}"
        );
    }
    s.stop().await.unwrap();
}
