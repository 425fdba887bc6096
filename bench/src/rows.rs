//! The `rows` scenario: row changes of one table (a server with `PGWS_SOURCE=wal`) delivered to
//! filtered row subscriptions over protocol v2, or, for a reference on the same server, logical
//! messages on plain channels.
//!
//! S sockets each hold one subscription (one row subscription per table per socket is all the
//! protocol allows). Socket i follows user `i / K` (K = `--per-change`): `user_id=eq.U` (an
//! equality filter, found through the server's index), `user_id=gte.U&user_id=lte.U` (the same
//! rows, but a filter the index cannot use, so every subscription's filter is evaluated), or the
//! plain channel `rowmsg-U` fed by `pg_logical_emit_message`. Change j (its `seq`) belongs to user
//! `j mod (S / K)` (or `j mod A` with `--active-users A`: only the first A users' sockets receive,
//! the rest are subscriptions the server must pass over), so every change is expected at exactly
//! K sockets, and the run checks that each socket received exactly its share. Changes are inserted from SQL in transactions of `--batch`
//! rows, as fast as possible (throughput, server CPU per change) or at `--rate` (latency: from the
//! moment the generator issues the statement, whose time is in the row, to the moment it parses
//! the frame).

use crate::cli::{Global, RowsArgs, RowsKind};
use crate::connect::{self, OpenOpts};
use crate::latency::Latency;
use crate::message::{self, now_ns};
use crate::pg;
use crate::report::{Report, Window};
use crate::target::Target;
use crate::token;
use crate::v2;
use crate::wsclient::{Conn, Msg};
use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::json;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

/// What the socket tasks share with the run.
#[derive(Default)]
struct Shared {
    /// Sockets whose subscription was answered `subscribed`.
    ready: AtomicUsize,
    /// Sockets whose subscription was refused (or that closed before the answer).
    refused: AtomicUsize,
    /// The first refusal's frame.
    first_refusal: Mutex<Option<String>>,
    /// Woken when `ready + refused` changes.
    answered: Notify,
    /// Deliveries received by all sockets.
    received: AtomicU64,
    /// Woken on deliveries (the run waits for the expected count).
    progress: Notify,
    /// Wall clock of the latest delivery, ns since the epoch.
    last_rx_ns: AtomicU64,
    /// Issue → receipt of each delivery.
    latency: Latency,
}

/// What one socket saw.
#[derive(Debug, Default, Clone)]
struct SockStats {
    received: u64,
    out_of_order: u64,
    unreadable: u64,
    error_frames: u64,
    closed: bool,
}

/// The user a socket follows.
fn user_of(socket: usize, per_change: usize) -> usize {
    socket / per_change
}

/// The `subscribe` request of socket `i`.
fn subscribe_request(a: &RowsArgs, i: usize) -> String {
    let u = user_of(i, a.per_change);
    match a.kind {
        RowsKind::Eq => json!({"type":"subscribe","id":1,"channel":table_channel(a),
            "filter": format!("user_id=eq.{u}")}),
        RowsKind::Range => json!({"type":"subscribe","id":1,"channel":table_channel(a),
            "filter": format!("user_id=gte.{u}&user_id=lte.{u}")}),
        RowsKind::Message => json!({"type":"subscribe","id":1,"channel":format!("rowmsg-{u}")}),
    }
    .to_string()
}

fn table_channel(a: &RowsArgs) -> String {
    format!("table:public.{}", a.table)
}

/// The unsigned integer after `key` (e.g. `"seq":`) in `hay`.
fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = hay.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = &hay[at..];
    let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

/// Reads one socket until `stop`: answers its subscription, counts deliveries, records latency.
async fn socket_loop(
    (mut rd, mut wr): Conn,
    idx: usize,
    request: String,
    time_key: &'static [u8],
    shared: Arc<Shared>,
    subscribing: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> SockStats {
    let mut st = SockStats::default();
    let mut answered = false;
    // Held until the subscription is answered: bounds the subscribes in flight.
    let mut permit: Option<OwnedSemaphorePermit> = subscribing.acquire_owned().await.ok();
    let mut last_seq: Option<u64> = None;
    let mut samples = Vec::new();
    wr.push_text(request.as_bytes());
    if wr.flush().await.is_err() {
        st.closed = true;
    }
    while !st.closed {
        tokio::select! {
            r = rd.fill() => match r {
                Ok(0) | Err(_) => st.closed = true,
                Ok(_) => {}
            },
            _ = stop.changed() => break,
        }
        let mut got = 0u64;
        loop {
            let m = match rd.next_msg() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    st.closed = true;
                    break;
                }
            };
            match m {
                Msg::Text(t) => {
                    let Some(r) = v2::read(t) else {
                        st.unreadable += 1;
                        continue;
                    };
                    match r.kind {
                        v2::Kind::Message => {
                            let rx = now_ns();
                            let data = r.data.unwrap_or_default();
                            let (Some(seq), Some(t0)) = (
                                number_after(&data, b"\"seq\":"),
                                number_after(&data, time_key),
                            ) else {
                                st.unreadable += 1;
                                continue;
                            };
                            if last_seq.is_some_and(|l| seq <= l) {
                                st.out_of_order += 1;
                            }
                            last_seq = Some(seq);
                            st.received += 1;
                            got += 1;
                            samples.push(rx.saturating_sub(t0));
                        }
                        v2::Kind::Subscribed if !answered => {
                            answered = true;
                            permit = None;
                            shared.ready.fetch_add(1, Ordering::Relaxed);
                            shared.answered.notify_one();
                        }
                        v2::Kind::Error | v2::Kind::Nack => {
                            st.error_frames += 1;
                            if !answered {
                                answered = true;
                                permit = None;
                                let mut first = shared
                                    .first_refusal
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner());
                                first.get_or_insert_with(|| String::from_utf8_lossy(t).into());
                                drop(first);
                                shared.refused.fetch_add(1, Ordering::Relaxed);
                                shared.answered.notify_one();
                            }
                        }
                        _ => {}
                    }
                }
                Msg::Ping(p) => wr.push_pong(p),
                Msg::Close(_) => st.closed = true,
                Msg::Binary(_) | Msg::Pong => {}
            }
        }
        if got > 0 {
            shared.latency.record_all(idx, &samples);
            samples.clear();
            shared.received.fetch_add(got, Ordering::Relaxed);
            shared.last_rx_ns.fetch_max(now_ns(), Ordering::Relaxed);
            shared.progress.notify_one();
        }
        if wr.pending() > 0 && wr.flush().await.is_err() {
            st.closed = true;
        }
    }
    drop(permit);
    if !answered {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        shared.answered.notify_one();
    }
    st
}

/// What the writer did.
#[derive(Debug, Default)]
struct Sent {
    changes: u64,
    failed: u64,
    first_error: Option<String>,
    first_ns: u64,
    last_done: Option<Instant>,
    max_lag_us: f64,
}

const INSERT: &str = "INSERT INTO public.{table} (user_id, seq, t_ns, body) \
    SELECT (($1::bigint + g) % $2::bigint)::int, $1::bigint + g, $3::bigint, $4::text \
    FROM generate_series(0::bigint, $5::bigint - 1) AS g";

/// Inserts (or emits) the run's changes in transactions of `batch`, `window` in flight, paced
/// by `rate` (0: as fast as possible), until `count` or `deadline`.
async fn write(
    client: &tokio_postgres::Client,
    g: &Global,
    a: &RowsArgs,
    users: u64,
    count: u64,
    deadline: Instant,
) -> Result<Sent> {
    let sql = match a.kind {
        RowsKind::Message => pg::EMIT_MANY.to_string(),
        _ => INSERT.replace("{table}", &pg::quote_ident(&a.table)),
    };
    let stmt = client.prepare(&sql).await.context("preparing the writes")?;
    let body = "x".repeat(a.payload);
    let batch = a.batch.max(1) as u64;
    let mut sent = Sent::default();
    let mut inflight = FuturesUnordered::new();
    let start = Instant::now();
    let mut j = 0u64;
    let settle = |sent: &mut Sent, (n, r): (u64, Result<u64, tokio_postgres::Error>)| {
        if let Err(e) = r {
            sent.failed += n;
            sent.first_error.get_or_insert_with(|| e.to_string());
        }
        sent.last_done = Some(Instant::now());
    };
    while j < count && Instant::now() < deadline {
        if a.rate > 0.0 {
            let at = start + Duration::from_secs_f64(j as f64 / a.rate);
            let now = Instant::now();
            if at > now {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => break,
                        Some(r) = inflight.next(), if !inflight.is_empty() => settle(&mut sent, r),
                    }
                }
            } else {
                sent.max_lag_us = sent.max_lag_us.max((now - at).as_secs_f64() * 1e6);
            }
        }
        while inflight.len() >= a.window.max(1) {
            if let Some(r) = inflight.next().await {
                settle(&mut sent, r);
            }
        }
        let n = batch.min(count - j);
        let t = now_ns();
        if sent.first_ns == 0 {
            sent.first_ns = t;
        }
        let from = j;
        j += n;
        let stmt = stmt.clone();
        let body = body.clone();
        let kind = a.kind;
        let listen = g.listen_channel.clone();
        inflight.push(async move {
            let r = if kind == RowsKind::Message {
                let texts: Vec<String> = (from..from + n)
                    .map(|s| {
                        let u = s % users;
                        message::fanout(&format!("rowmsg-{u}"), s, 0, t, body.len() + 60)
                    })
                    .collect();
                client.execute(&stmt, &[&listen, &texts]).await
            } else {
                let (from, users, t, n) = (from as i64, users as i64, t as i64, n as i64);
                client.execute(&stmt, &[&from, &users, &t, &body, &n]).await
            };
            (n, r)
        });
    }
    while let Some(r) = inflight.next().await {
        settle(&mut sent, r);
    }
    sent.changes = j;
    Ok(sent)
}

/// Runs `rows`.
pub async fn run(g: &Global, a: &RowsArgs, threads: usize) -> Result<Report> {
    let target = Target::new(&g.host, g.port, g.source_addrs)?;
    if a.subscriptions == 0 || a.subscriptions > 100_000 {
        bail!("--subscriptions must be within 1..=100000");
    }
    if a.per_change == 0 || !a.subscriptions.is_multiple_of(a.per_change) {
        bail!("--per-change must be positive and divide --subscriptions");
    }
    if !(a.rate.is_finite() && a.rate >= 0.0) || a.changes == 0 {
        bail!("--rate must be >= 0 and --changes positive");
    }
    if a.table.is_empty() || a.table.contains('"') {
        bail!("--table: a plain table name in schema public");
    }
    let conninfo = g.pg.as_deref().context("--pg is required")?;
    let client = pg::connect(conninfo, Duration::from_secs(10)).await?;
    let all_users = (a.subscriptions / a.per_change) as u64;
    if a.active_users as u64 > all_users {
        bail!("--active-users must be at most --subscriptions / --per-change");
    }
    // Changes go to the first `users` users; the other subscriptions receive nothing.
    let users = if a.active_users == 0 {
        all_users
    } else {
        a.active_users as u64
    };
    let claims = match a.kind {
        RowsKind::Message => json!({"mode":"r"}),
        _ => json!({"mode":"r","channels":[table_channel(a)]}),
    };
    let path = crate::target::token_path(&token::sign(&g.secret, &claims)?);
    let opts = OpenOpts {
        concurrency: g.connect_concurrency,
        timeout: Duration::from_millis(g.connect_timeout_ms),
        read_buf: 16 * 1024,
        subprotocol: Some(v2::SUBPROTOCOL),
    };
    eprintln!("rows: opening {} sockets", a.subscriptions);
    let mut conns: Vec<(usize, Conn)> = Vec::with_capacity(a.subscriptions);
    let stats = connect::open_all(
        &target,
        a.subscriptions,
        opts,
        |_| path.clone(),
        |i, c| conns.push((i, c)),
    )
    .await;
    eprintln!("  {}", stats.human("sockets"));
    if conns.len() != a.subscriptions {
        bail!("not every socket connected: {}", stats.human("sockets"));
    }
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let time_key: &'static [u8] = if a.kind == RowsKind::Message {
        b"\"t\":"
    } else {
        b"\"t_ns\":"
    };
    let subscribing = Arc::new(Semaphore::new(if a.subscribe_window == 0 {
        Semaphore::MAX_PERMITS
    } else {
        a.subscribe_window
    }));
    let subscribe_started = Instant::now();
    // Sockets connect in any order: each task keeps its socket's number `i`.
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(i, c)| {
            let req = subscribe_request(a, i);
            (
                i,
                tokio::spawn(socket_loop(
                    c,
                    i,
                    req,
                    time_key,
                    shared.clone(),
                    subscribing.clone(),
                    stop_rx.clone(),
                )),
            )
        })
        .collect();
    let answered_by = Instant::now() + Duration::from_secs(120);
    loop {
        let done = shared.ready.load(Ordering::Relaxed) + shared.refused.load(Ordering::Relaxed);
        if done >= a.subscriptions || Instant::now() >= answered_by {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), shared.answered.notified()).await;
    }
    let subscribe_s = subscribe_started.elapsed().as_secs_f64();
    let ready = shared.ready.load(Ordering::Relaxed);
    eprintln!("  {ready} subscribed in {subscribe_s:.2} s");
    if ready != a.subscriptions {
        let _ = stop_tx.send(true);
        let first = shared
            .first_refusal
            .lock()
            .map(|f| f.clone())
            .ok()
            .flatten();
        bail!(
            "{} of {} subscriptions answered `subscribed`; first refusal: {}",
            ready,
            a.subscriptions,
            first.unwrap_or_else(|| "none (timed out or closed)".into())
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let count = if a.rate > 0.0 && a.duration > 0.0 {
        a.changes.min((a.rate * a.duration).round() as u64)
    } else {
        a.changes
    };
    eprintln!(
        "rows: {count} changes in transactions of {} ({})",
        a.batch,
        if a.rate > 0.0 {
            format!("{} per second", a.rate)
        } else {
            "as fast as possible".into()
        }
    );
    let window = Window::start(g.server_pid);
    let deadline = Instant::now() + Duration::from_secs_f64(a.max_seconds.max(1.0));
    let sent = write(&client, g, a, users, count, deadline).await?;
    let expected = (sent.changes - sent.failed) * a.per_change as u64;
    let drain_by = Instant::now() + Duration::from_secs(a.drain_timeout);
    while shared.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_by {
        let _ = tokio::time::timeout(Duration::from_millis(50), shared.progress.notified()).await;
    }
    let usage = window.finish(threads);
    let _ = stop_tx.send(true);
    let mut per_socket = Vec::with_capacity(tasks.len());
    for (i, t) in tasks {
        per_socket.push((i, t.await.unwrap_or_default()));
    }

    // Each socket's share: the changes j with j mod users == its user.
    let ok_changes = sent.changes - sent.failed;
    let share = |u: u64| {
        if u < users {
            ok_changes / users + u64::from(u < ok_changes % users)
        } else {
            0
        }
    };
    let (mut lost, mut extra, mut ooo, mut unreadable, mut errors, mut closed) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for (i, s) in per_socket.iter().map(|(i, s)| (*i, s)) {
        let want = if sent.failed == 0 {
            share(user_of(i, a.per_change) as u64)
        } else {
            s.received
        };
        lost += want.saturating_sub(s.received);
        extra += s.received.saturating_sub(want);
        ooo += s.out_of_order;
        unreadable += s.unreadable;
        errors += s.error_frames;
        closed += u64::from(s.closed);
    }
    let received: u64 = per_socket.iter().map(|(_, s)| s.received).sum();
    let last_rx = shared.last_rx_ns.load(Ordering::Relaxed);
    let span_s = last_rx.saturating_sub(sent.first_ns) as f64 / 1e9;
    let changes_per_s = if span_s > 0.0 {
        ok_changes as f64 / span_s
    } else {
        0.0
    };
    let server_us_per_change = usage
        .server_cpu_s
        .map(|c| c * 1e6 / ok_changes.max(1) as f64);
    let lat = shared.latency.summary();

    let kind = match a.kind {
        RowsKind::Eq => "eq",
        RowsKind::Range => "range",
        RowsKind::Message => "message",
    };
    let params = json!({"subscriptions": a.subscriptions, "kind": kind,
        "per_change": a.per_change, "active_users": users, "subscribe_window": a.subscribe_window, "changes": count, "batch": a.batch, "window": a.window,
        "rate": a.rate, "payload": a.payload, "table": a.table});
    let mut r = Report::new("rows", &g.label, params);
    r.set("changes_sent", sent.changes);
    r.set("changes_failed", sent.failed);
    r.set("first_error", &sent.first_error);
    r.set("expected_deliveries", expected);
    r.set("deliveries", received);
    r.set("lost", lost);
    r.set("extra", extra);
    r.set("out_of_order", ooo);
    r.set("unreadable", unreadable);
    r.set("error_frames", errors);
    r.set("sockets_closed", closed);
    r.set("subscribe_s", subscribe_s);
    r.set("span_s", span_s);
    r.set("changes_per_s", changes_per_s);
    r.set("server_us_per_change", server_us_per_change);
    r.set("writer_max_lag_us", sent.max_lag_us);
    r.set("latency", lat);
    r.usage(&usage);
    r.line(format!(
        "{kind} x {} subscriptions ({} per change): {} changes sent ({} failed), {} of {} \
         deliveries (lost {lost}, extra {extra}, out of order {ooo}, unreadable {unreadable}, \
         error frames {errors}, closed {closed})",
        a.subscriptions, a.per_change, sent.changes, sent.failed, received, expected
    ));
    r.line(format!(
        "changes/s end to end: {changes_per_s:.0} over {span_s:.2} s; server CPU per change: {}",
        server_us_per_change.map_or("n/a".into(), |v| format!("{v:.2} us"))
    ));
    r.line(format!(
        "issue -> receipt: {} (writer max lag {:.1} ms)",
        lat.human(),
        sent.max_lag_us / 1000.0
    ));
    if let Some(e) = &sent.first_error {
        r.line(format!("first write error: {e}"));
    }
    if lost > 0 || extra > 0 || ooo > 0 || sent.failed > 0 {
        r.set("failed", true);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbers_after_keys() {
        let change = br#"{"schema":"public","table":"t","op":"INSERT","new":{"id":3,"user_id":1,"seq":42,"t_ns":1700000000000000000,"body":"x"},"old":null}"#;
        assert_eq!(number_after(change, b"\"seq\":"), Some(42));
        assert_eq!(
            number_after(change, b"\"t_ns\":"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(number_after(change, b"\"nope\":"), None);
        let m = message::fanout("rowmsg-1", 7, 0, 99, 100);
        assert_eq!(number_after(m.as_bytes(), b"\"seq\":"), Some(7));
        assert_eq!(number_after(m.as_bytes(), b"\"t\":"), Some(99));
    }

    #[test]
    fn requests_carry_the_filter_of_the_socket_user() {
        let a = RowsArgs {
            subscriptions: 10,
            kind: RowsKind::Range,
            per_change: 2,
            active_users: 0,
            subscribe_window: 0,
            table: "bench_rows".into(),
            changes: 1,
            batch: 1,
            window: 1,
            rate: 0.0,
            duration: 0.0,
            max_seconds: 1.0,
            drain_timeout: 1,
            payload: 0,
        };
        let v: serde_json::Value = serde_json::from_str(&subscribe_request(&a, 5)).unwrap();
        assert_eq!(v["filter"], "user_id=gte.2&user_id=lte.2");
        assert_eq!(v["channel"], "table:public.bench_rows");
    }
}
