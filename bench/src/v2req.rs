//! Request loop of one protocol v2 socket, for the `v2-subscribe` and `v2-publish` scenarios:
//! keeps up to `window` requests in flight (closed loop), or sends each when it is due (open
//! loop, at a rate, the window bounding what may be outstanding), matches every answer to its
//! request by id, and records the round trip request → answer. Pings are answered.

use crate::latency::Latency;
use crate::v2;
use crate::wsclient::{Conn, Msg};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How one socket sends.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Requests in flight at most.
    pub window: usize,
    /// Requests per second of this socket; 0 = closed loop (as fast as answers come back).
    pub rate: f64,
    /// Delay of this socket's first request (spreads open-loop sockets over one period).
    pub offset: Duration,
    /// Requests this socket sends at most.
    pub count: u64,
    /// No request is sent from then on.
    pub until: Instant,
    /// After sending stopped, how long outstanding answers are waited for.
    pub drain: Duration,
}

/// What one socket saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests sent.
    pub sent: u64,
    /// Answered with success (`subscribed`, `unsubscribed`, `ack`, `pong`).
    pub ok: u64,
    /// Answered with `error` or `nack`.
    pub failed: u64,
    /// Failures by code.
    pub codes: BTreeMap<String, u64>,
    /// The first failure, as received.
    pub first_failure: Option<String>,
    /// Answers whose id matched no outstanding request.
    pub unmatched: u64,
    /// When the last answer arrived.
    pub last_answer: Option<Instant>,
    /// Open loop: the latest a request went out after it was due, microseconds.
    pub max_lag_us: f64,
    /// Why the socket stopped early (or answers were missing at the end).
    pub ended: Option<String>,
}

/// Runs `request(seq)` requests on `conn` according to `plan` from `start`; round trips (from
/// the moment each request is written) go into `latency`. Open loop: how late requests went
/// out behind their schedule is [`Outcome::max_lag_us`] (timer granularity is about 1 ms).
pub async fn run(
    key: usize,
    conn: Conn,
    plan: Plan,
    start: Instant,
    mut request: impl FnMut(u64) -> String,
    latency: &Latency,
) -> Outcome {
    let (mut rd, mut wr) = conn;
    let mut out = Outcome::default();
    let mut inflight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut next = 0u64;
    let mut samples: Vec<u64> = Vec::new();
    let mut drain_until: Option<Instant> = None;
    'outer: loop {
        let now = Instant::now();
        let mut wake = plan.until;
        if now < plan.until {
            while inflight.len() < plan.window.max(1) && next < plan.count {
                let due = if plan.rate > 0.0 {
                    start + plan.offset + Duration::from_secs_f64(next as f64 / plan.rate)
                } else {
                    now
                };
                if due > now {
                    wake = due;
                    break;
                }
                wr.push_text(request(next).as_bytes());
                out.max_lag_us = out
                    .max_lag_us
                    .max(now.saturating_duration_since(due).as_secs_f64() * 1e6);
                inflight.push_back((next, now));
                next += 1;
            }
        }
        if wr.pending() > 0
            && tokio::time::timeout(Duration::from_secs(5), wr.flush())
                .await
                .map_or(true, |r| r.is_err())
        {
            out.ended = Some("request write failed".into());
            break;
        }
        if now >= plan.until || next >= plan.count {
            if inflight.is_empty() {
                break;
            }
            let d = *drain_until.get_or_insert(now + plan.drain);
            if now >= d {
                out.ended = Some(format!("{} answers missing", inflight.len()));
                break;
            }
            wake = d;
        }
        tokio::select! {
            r = rd.fill() => match r {
                Ok(0) => { out.ended = Some("eof".into()); break }
                Err(e) => { out.ended = Some(format!("io: {:?}", e.kind())); break }
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(wake.into()) => continue,
        }
        let now = Instant::now();
        loop {
            let m = match rd.next_msg() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    out.ended = Some(format!("protocol: {e}"));
                    break 'outer;
                }
            };
            match m {
                Msg::Text(t) => {
                    let Some(r) = v2::read(t).filter(|r| r.kind.is_answer()) else {
                        continue;
                    };
                    let Some(pos) =
                        r.id.and_then(|id| inflight.iter().position(|(seq, _)| *seq == id))
                    else {
                        out.unmatched += 1;
                        continue;
                    };
                    let (_, t0) = inflight.remove(pos).expect("position is in range");
                    samples.push(now.saturating_duration_since(t0).as_nanos() as u64);
                    out.last_answer = Some(now);
                    if r.kind.is_success() {
                        out.ok += 1;
                    } else {
                        out.failed += 1;
                        let code = serde_json::from_slice::<Value>(t)
                            .ok()
                            .and_then(|v| v["code"].as_str().map(str::to_string))
                            .unwrap_or_else(|| "?".into());
                        *out.codes.entry(code).or_default() += 1;
                        if out.first_failure.is_none() {
                            out.first_failure = Some(String::from_utf8_lossy(t).into_owned());
                        }
                    }
                }
                Msg::Ping(p) => wr.push_pong(p),
                Msg::Close(code) => {
                    out.ended = Some(format!("close {}", code.unwrap_or(0)));
                    break 'outer;
                }
                Msg::Binary(_) | Msg::Pong => {}
            }
        }
        latency.record_all(key, &samples);
        samples.clear();
    }
    out.sent = next;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    /// A v2 server that welcomes, pings once, and answers request N with `ack`, or with
    /// `error` `nope` when N mod 4 = 3; returns the ids in the order it read them.
    async fn server(l: tokio::net::TcpListener) -> Vec<u64> {
        let (s, _) = l.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        ws.send(Message::text(r#"{"type":"welcome","protocol":"pgws.v2"}"#))
            .await
            .unwrap();
        ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
        let mut ids = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            let id = v["id"].as_u64().unwrap();
            ids.push(id);
            let answer = if id % 4 == 3 {
                format!(r#"{{"type":"error","id":{id},"code":"nope","message":"m"}}"#)
            } else {
                format!(r#"{{"type":"ack","id":{id},"channel":"c","position":null}}"#)
            };
            if ws.send(Message::text(answer)).await.is_err() {
                break;
            }
        }
        ids
    }

    #[tokio::test]
    async fn matches_answers_and_counts_failures() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::new("127.0.0.1", l.local_addr().unwrap().port(), 1).unwrap();
        let srv = tokio::spawn(server(l));
        let t = Duration::from_secs(5);
        let conn = crate::wsclient::connect(&target, 0, "/", t, 256)
            .await
            .unwrap();
        let start = Instant::now();
        let plan = Plan {
            window: 4,
            rate: 0.0,
            offset: Duration::ZERO,
            count: 20,
            until: start + Duration::from_secs(10),
            drain: Duration::from_secs(5),
        };
        let latency = Latency::default();
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            run(
                0,
                conn,
                plan,
                start,
                |seq| v2::publish(seq, "c", "x"),
                &latency,
            ),
        )
        .await
        .expect("the loop ends by itself");
        assert_eq!((out.sent, out.ok, out.failed), (20, 15, 5), "{out:?}");
        assert_eq!(out.codes.get("nope"), Some(&5));
        assert_eq!((out.unmatched, out.ended.as_deref()), (0, None));
        assert!(out.first_failure.unwrap().contains("\"id\":3"));
        assert_eq!(latency.summary().count, 20);
        // The socket was closed with the loop; the server read every request, in order.
        let ids = tokio::time::timeout(t, srv).await.unwrap().unwrap();
        assert_eq!(ids, (0..20).collect::<Vec<u64>>());
    }
}
