//! Positions, replay and resume over Server-Sent Events and websockets: exact catch-up after a
//! disconnection (also with a publisher running through it), and an explicit `Gap` first
//! whenever it cannot be exact. Every message is numbered in its payload, and what each client
//! received is checked for loss, duplicates and order.

use serde_json::{Value, json};

use crate::common::*;
use crate::sse::{Sse, open};

pub(crate) fn message(channel: &str, n: usize) -> String {
    json!({"channel": channel, "payload": n}).to_string()
}

/// The numbered payload of an event's data (a notification text as sent by [`message`]).
pub(crate) fn number(data: &str) -> usize {
    let v: Value = serde_json::from_str(data).expect("JSON message");
    v["payload"].as_u64().expect("numbered payload") as usize
}

/// Sends messages `range` on `channel` and waits until `witness` (a live subscriber) has them,
/// so that they are in the server's window before anyone resumes.
async fn send_and_witness(
    db: &tokio_postgres::Client,
    witness: &mut Sse,
    channel: &str,
    range: std::ops::Range<usize>,
) {
    for n in range.clone() {
        notify(db, LISTEN, &message(channel, n)).await;
    }
    for n in range {
        assert_eq!(number(&witness.next_event().await.data.unwrap()), n);
    }
}

pub(crate) async fn stream(s: &TestServer, channel: &str, last_event_id: Option<&str>) -> Sse {
    let path = format!("/{channel}/{}", token(json!({"mode":"r"})));
    let headers: Vec<(&str, &str)> = last_event_id
        .map(|id| ("last-event-id", id))
        .into_iter()
        .collect();
    let mut sse = open(s.addr, &path, &headers).await.expect("stream opens");
    assert_eq!(sse.next().await.unwrap().comment.as_deref(), Some("ok"));
    sse
}

#[tokio::test]
async fn sse_resume_replays_exactly_what_was_missed_then_goes_live() {
    let s = start(&[]).await;
    let db = pg(&s.db).await;
    let mut witness = stream(&s, "chat", None).await;
    let mut client = stream(&s, "chat", None).await;
    send_and_witness(&db, &mut witness, "chat", 0..3).await;
    let mut last = None;
    for n in 0..3 {
        let ev = client.next_event().await;
        assert_eq!(number(ev.data.as_deref().unwrap()), n);
        last = ev.id;
    }
    drop(client);
    // Meanwhile: more on this channel, and messages of another channel that must not replay.
    send_and_witness(&db, &mut witness, "chat", 3..8).await;
    notify(&db, LISTEN, &message("other", 99)).await;
    let mut back = stream(&s, "chat", last.as_deref()).await;
    for n in 3..8 {
        let ev = back.next_event().await;
        assert!(ev.id.is_some());
        assert_eq!(
            number(ev.data.as_deref().unwrap()),
            n,
            "replayed in order, none missing"
        );
    }
    notify(&db, LISTEN, &message("chat", 8)).await;
    let ev = back.next_event().await;
    assert_eq!(
        number(ev.data.as_deref().unwrap()),
        8,
        "then live, no overlap"
    );
    s.stop().await.unwrap();
}

/// A client drops and resumes over and over while a publisher keeps sending: the seam between
/// replay and live traffic must lose, repeat and reorder nothing.
#[tokio::test]
async fn resume_under_a_concurrent_publisher_loses_and_repeats_nothing() {
    const TOTAL: usize = 400;
    let s = start(&[]).await;
    let db_conn = s.db.clone();
    let publisher = tokio::spawn(async move {
        let db = pg(&db_conn).await;
        for n in 0..TOTAL {
            notify(&db, LISTEN, &message("race", n)).await;
        }
    });
    let mut received: Vec<usize> = Vec::new();
    let mut last: Option<String> = None;
    let mut rounds = 0;
    while received.last().is_none_or(|n| *n + 1 < TOTAL) {
        rounds += 1;
        let mut sse = stream(&s, "race", last.as_deref()).await;
        // Read a few, then cut the connection mid-stream.
        for _ in 0..37 {
            let ev = sse.next_event().await;
            if ev.event.is_some() {
                continue;
            }
            let data = ev.data.expect("data");
            assert!(
                !data.contains("\"Gap\""),
                "no gap inside the window: {data}"
            );
            received.push(number(&data));
            last = ev.id;
            if received.last() == Some(&(TOTAL - 1)) {
                break;
            }
        }
    }
    publisher.await.unwrap();
    let expected: Vec<usize> = (received[0]..TOTAL).collect();
    assert_eq!(
        received, expected,
        "in order, none lost or twice, across {rounds} resumes"
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn websocket_opt_in_carries_positions_and_resumes() {
    let s = start(&[]).await;
    let db = pg(&s.db).await;
    let tok = token(json!({"mode":"r"}));
    // Compat sockets keep receiving the bare text.
    let mut compat = connect(&s.url(&format!("/chat/{tok}"))).await;
    let mut opted = connect(&s.url(&format!("/chat/{tok}?last-event-id="))).await;
    for n in 0..3 {
        notify(&db, LISTEN, &message("chat", n)).await;
    }
    let mut last = String::new();
    for n in 0..3 {
        assert_eq!(next_text(&mut compat).await, message("chat", n));
        let v = next_json(&mut opted).await;
        assert_eq!(
            v["data"],
            message("chat", n),
            "the exact compat text, as a string"
        );
        last = v["id"].as_str().expect("a position").to_string();
    }
    drop(opted);
    for n in 3..6 {
        notify(&db, LISTEN, &message("chat", n)).await;
        assert_eq!(next_text(&mut compat).await, message("chat", n));
    }
    let query = percent_encode(&last);
    let mut back = connect(&s.url(&format!("/chat/{tok}?last-event-id={query}"))).await;
    for n in 3..6 {
        let v = next_json(&mut back).await;
        assert_eq!(v["data"], message("chat", n));
    }
    s.stop().await.unwrap();
}

/// The seam between replay and live for websockets that opted in: a publisher runs while the
/// socket is cut and reopened with `?last-event-id=` again and again.
#[tokio::test]
async fn websocket_opt_in_resume_under_a_concurrent_publisher_loses_and_repeats_nothing() {
    const TOTAL: usize = 400;
    let s = start(&[]).await;
    let db_conn = s.db.clone();
    let tok = token(json!({"mode":"r"}));
    // Open once before publishing, so that the first message is live for this socket.
    let mut ws = connect(&s.url(&format!("/race/{tok}?last-event-id="))).await;
    let publisher = tokio::spawn(async move {
        let db = pg(&db_conn).await;
        for n in 0..TOTAL {
            notify(&db, LISTEN, &message("race", n)).await;
        }
    });
    let mut received: Vec<usize> = Vec::new();
    let mut last = String::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        for _ in 0..37 {
            let v = next_json(&mut ws).await;
            assert!(v.get("event").is_none(), "no gap inside the window: {v}");
            received.push(number(v["data"].as_str().expect("data")));
            last = v["id"].as_str().expect("a position").to_string();
            if received.last() == Some(&(TOTAL - 1)) {
                break;
            }
        }
        if received.last() == Some(&(TOTAL - 1)) {
            break;
        }
        // Cut the connection mid-stream and come back from the last position.
        drop(ws);
        let query = percent_encode(&last);
        ws = connect(&s.url(&format!("/race/{tok}?last-event-id={query}"))).await;
    }
    publisher.await.unwrap();
    let expected: Vec<usize> = (0..TOTAL).collect();
    assert_eq!(
        received, expected,
        "in order, none lost or twice, across {rounds} resumes"
    );
    s.stop().await.unwrap();
}

pub(crate) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The first event of a resume that cannot be exact.
pub(crate) async fn gap(sse: &mut Sse) -> Value {
    let ev = sse.next_event().await;
    assert!(ev.id.is_none(), "a gap is not a stream message");
    assert_eq!(
        ev.event.as_deref(),
        Some("gap"),
        "a gap is a named event, apart from onmessage"
    );
    let v: Value = serde_json::from_str(&ev.data.unwrap()).unwrap();
    assert_eq!(v["event"], "Gap", "{v}");
    v
}

#[tokio::test]
async fn a_position_older_than_the_window_gets_a_gap_then_what_is_left() {
    let s = start(&["--replay-messages", "3"]).await;
    let db = pg(&s.db).await;
    let mut witness = stream(&s, "chat", None).await;
    let mut client = stream(&s, "chat", None).await;
    send_and_witness(&db, &mut witness, "chat", 0..1).await;
    let last = client.next_event().await.id;
    drop(client);
    send_and_witness(&db, &mut witness, "chat", 1..7).await;
    let mut back = stream(&s, "chat", last.as_deref()).await;
    let g = gap(&mut back).await;
    assert_eq!(g["reason"], "window_exceeded");
    assert_eq!(g["channels"], json!(["chat"]));
    assert_eq!(g["after"].as_str(), last.as_deref());
    assert!(g["through"].is_string() && g["resumes_at"].is_string());
    for n in 4..7 {
        assert_eq!(number(&back.next_event().await.data.unwrap()), n);
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn positions_of_another_process_and_garbage_get_a_gap_never_a_wrong_replay() {
    let a = start(&[]).await;
    let b = start_on(&a.db, &[]).await;
    let db = pg(&a.db).await;
    let mut on_a = stream(&a, "chat", None).await;
    let mut witness_b = stream(&b, "chat", None).await;
    notify(&db, LISTEN, &message("chat", 0)).await;
    let from_a = on_a.next_event().await.id.unwrap();
    assert_eq!(number(&witness_b.next_event().await.data.unwrap()), 0);
    notify(&db, LISTEN, &message("chat", 1)).await;
    assert_eq!(number(&witness_b.next_event().await.data.unwrap()), 1);
    // A's position on B: another epoch. B says so, then replays what it has.
    let mut moved = stream(&b, "chat", Some(&from_a)).await;
    assert_eq!(gap(&mut moved).await["reason"], "other_epoch");
    assert_eq!(number(&moved.next_event().await.data.unwrap()), 0);
    assert_eq!(number(&moved.next_event().await.data.unwrap()), 1);
    // Garbage, an absurd number, a 10 KB header: a gap, then the window; never a crash.
    let long = "x".repeat(10 * 1024);
    let future = {
        let (epoch, _) = from_a.split_once('-').unwrap();
        format!("{epoch}-999999999")
    };
    for (bad, reason) in [
        ("not-a-position", "unknown_position"),
        (long.as_str(), "unknown_position"),
        (future.as_str(), "future_position"),
    ] {
        let mut sse = stream(&a, "chat", Some(bad)).await;
        assert_eq!(gap(&mut sse).await["reason"], reason);
        assert_eq!(number(&sse.next_event().await.data.unwrap()), 0);
    }
    // Another channel's position never replays this channel's past as if it were its own.
    let mut other = stream(&a, "elsewhere", Some(&from_a)).await;
    assert_eq!(gap(&mut other).await["reason"], "window_exceeded");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_listen_outage_after_the_position_gets_a_gap() {
    let mut s = start(&["--check-listener-interval", "200"]).await;
    let db = pg(&s.db).await;
    let mut client = stream(&s, "chat", None).await;
    notify(&db, LISTEN, &message("chat", 0)).await;
    let last = client.next_event().await.id;
    drop(client);
    kill_listener(&db).await;
    s.wait_down().await;
    s.wait_listening(2).await;
    let mut back = stream(&s, "chat", last.as_deref()).await;
    assert_eq!(gap(&mut back).await["reason"], "source_outage");
    notify(&db, LISTEN, &message("chat", 1)).await;
    assert_eq!(number(&back.next_event().await.data.unwrap()), 1);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn compat_sockets_never_see_positions() {
    let s = start(&[]).await;
    let db = pg(&s.db).await;
    let mut ws = connect(&s.url(&format!("/chat/{}", token(json!({"mode":"r"}))))).await;
    let text = message("chat", 7);
    notify(&db, LISTEN, &text).await;
    assert_eq!(next_text(&mut ws).await, text, "byte for byte");
    s.stop().await.unwrap();
}

/// Regression (found by the chaos run): after a LISTEN outage the `Gap` must come before the
/// first message of the new connection. A publisher commits numbered NOTIFYs as fast as it can
/// while the LISTEN backend is killed; a live stream must then see every jump in the numbering
/// announced by a `Gap` that arrived before the message after the jump.
#[tokio::test]
async fn a_listen_outage_under_traffic_announces_the_gap_before_any_later_message() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = start(&["--check-listener-interval", "200"]).await;
    let db = pg(&s.db).await;
    let mut live = stream(&s, "chat", None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let db = pg(&s.db).await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                notify(&db, LISTEN, &message("chat", n)).await;
                n += 1;
            }
            n
        })
    };
    // Some messages before the outage, then the outage while the publisher keeps going.
    let first = number(&live.next_event().await.data.unwrap());
    kill_listener(&db).await;
    let mut last = first;
    let mut gaps_before_jumps = 0;
    let mut pending_gap = false;
    let mut after_gap = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while after_gap < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "200 messages after the gap in time"
        );
        let ev = live.next_event().await;
        let data = ev.data.unwrap();
        if ev.id.is_none() {
            let v: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(v["event"], "Gap", "{v}");
            assert_eq!(ev.event.as_deref(), Some("gap"), "a named event");
            pending_gap = true;
            continue;
        }
        let n = number(&data);
        assert!(n > last, "in order, none twice: {n} after {last}");
        if n != last + 1 {
            assert!(
                pending_gap,
                "messages {}..{} were lost and no Gap came before message {n}",
                last + 1,
                n
            );
            gaps_before_jumps += 1;
        }
        if pending_gap {
            after_gap += 1;
        }
        last = n;
    }
    stop.store(true, Ordering::Relaxed);
    let sent = tokio::time::timeout(WAIT, publisher)
        .await
        .unwrap()
        .unwrap();
    assert!(sent > last, "the publisher ran through the outage");
    // The outage was real: PostgreSQL dropped what was committed while nobody listened, or at
    // least a Gap was announced (a reconnection fast enough to lose nothing still warns).
    assert!(pending_gap, "the outage was announced");
    assert!(gaps_before_jumps <= 1, "one outage, at most one jump");
    s.stop().await.unwrap();
}
