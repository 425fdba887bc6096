//! The protocol v2 request scenarios: `v2-subscribe` (sockets subscribe to and unsubscribe from
//! a channel, alternately: operations per second, round trip, server CPU per operation) and
//! `v2-publish` (acknowledged publishes: round trip client → PostgreSQL → `ack`, in a closed
//! loop of outstanding publishes or at a fixed rate; the achieved rate). Both open their sockets
//! first, then measure only the requests ([`crate::v2req`] runs each socket's loop).

use crate::cli::{Global, RequestLoad, V2PublishArgs, V2SubscribeArgs};
use crate::connect::{self, OpenOpts};
use crate::latency::Latency;
use crate::message::{self, now_ns};
use crate::phases::secs;
use crate::report::{Report, Window};
use crate::target::Target;
use crate::token;
use crate::v2;
use crate::v2req::{self, Outcome, Plan};
use crate::wsclient::Conn;
use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs `v2-subscribe`.
pub async fn subscribe(g: &Global, a: &V2SubscribeArgs, threads: usize) -> Result<Report> {
    if a.channels == 0 {
        bail!("--channels must be positive");
    }
    let channels = names(&a.channel_prefix, a.channels);
    let params = json!({"channels": a.channels});
    run(
        g,
        &a.load,
        threads,
        "v2-subscribe",
        "r",
        params,
        move |i, seq| {
            let ch = &channels[i % channels.len()];
            if seq % 2 == 0 {
                v2::subscribe(seq, ch)
            } else {
                v2::unsubscribe(seq, ch)
            }
        },
    )
    .await
}

/// Runs `v2-publish`.
pub async fn publish(g: &Global, a: &V2PublishArgs, threads: usize) -> Result<Report> {
    if a.channels == 0 || a.payload > 7000 {
        bail!("--channels must be positive and --payload at most 7000 (NOTIFY's limit)");
    }
    let channels = names(&a.channel_prefix, a.channels);
    let payload = a.payload;
    let params = json!({"channels": a.channels, "payload": a.payload});
    run(
        g,
        &a.load,
        threads,
        "v2-publish",
        "w",
        params,
        move |i, seq| {
            let text = message::ingest(i as u32, seq, now_ns(), payload);
            v2::publish(seq, &channels[i % channels.len()], &text)
        },
    )
    .await
}

fn names(prefix: &str, n: usize) -> Arc<Vec<String>> {
    Arc::new((0..n).map(|k| format!("{prefix}{k}")).collect())
}

/// Opens `load.sockets` v2 sockets with a `mode` token, runs `request(socket, seq)` on each
/// according to `load`, and reports answers, round trips and the server's CPU per answer.
async fn run(
    g: &Global,
    load: &RequestLoad,
    threads: usize,
    scenario: &str,
    mode: &str,
    mut params: Value,
    request: impl Fn(usize, u64) -> String + Clone + Send + Sync + 'static,
) -> Result<Report> {
    let target = Target::new(&g.host, g.port, g.source_addrs)?;
    if load.sockets == 0 || load.sockets > 1_000_000 || load.window == 0 {
        bail!("--sockets and --window must be positive");
    }
    if !(load.rate.is_finite() && load.rate >= 0.0 && load.duration > 0.0) {
        bail!("--rate must be >= 0 and --duration > 0");
    }
    let path = token::v2_path(&g.secret, mode)?;
    let opts = OpenOpts {
        concurrency: g.connect_concurrency,
        timeout: Duration::from_millis(g.connect_timeout_ms),
        read_buf: 4096,
        subprotocol: Some(v2::SUBPROTOCOL),
    };
    eprintln!("{scenario}: opening {} sockets", load.sockets);
    let mut conns: Vec<(usize, Conn)> = Vec::with_capacity(load.sockets);
    let stats = connect::open_all(
        &target,
        load.sockets,
        opts,
        |_| path.clone(),
        |i, c| conns.push((i, c)),
    )
    .await;
    eprintln!("  {}", stats.human("sockets"));
    if conns.is_empty() {
        bail!("no socket connected: {}", stats.human("sockets"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let latency = Arc::new(Latency::default());
    let window = Window::start(g.server_pid);
    let start = Instant::now();
    let until = start + secs(load.duration).min(Duration::from_secs(g.max_duration));
    let per_socket = load.rate / conns.len() as f64;
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, conn) in conns {
        let plan = Plan {
            window: load.window,
            rate: per_socket,
            offset: if load.rate > 0.0 {
                Duration::from_secs_f64(i as f64 / load.rate)
            } else {
                Duration::ZERO
            },
            count: u64::MAX,
            until,
            drain: secs(load.drain_timeout),
        };
        let (request, latency) = (request.clone(), latency.clone());
        tasks.push(tokio::spawn(async move {
            v2req::run(i, conn, plan, start, |seq| request(i, seq), &latency).await
        }));
    }
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await?);
    }
    let usage = window.finish(threads);

    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let (sent, ok, failed, unmatched) = (
        sum(|o| o.sent),
        sum(|o| o.ok),
        sum(|o| o.failed),
        sum(|o| o.unmatched),
    );
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut ended: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outcomes {
        for (c, n) in &o.codes {
            *codes.entry(c.clone()).or_default() += n;
        }
        if let Some(e) = &o.ended {
            *ended.entry(e.clone()).or_default() += 1;
        }
    }
    let first_failure = outcomes.iter().find_map(|o| o.first_failure.clone());
    let max_lag_ms = outcomes.iter().map(|o| o.max_lag_us).fold(0.0, f64::max) / 1000.0;
    let last = outcomes.iter().filter_map(|o| o.last_answer).max();
    let span_s = last.map_or(0.0, |l| l.duration_since(start).as_secs_f64());
    let ops_per_s = if span_s > 0.0 {
        (ok + failed) as f64 / span_s
    } else {
        0.0
    };
    let answered = ok + failed;
    let per_op = |cpu: Option<f64>| {
        cpu.filter(|_| answered > 0)
            .map(|c| c * 1e6 / answered as f64)
    };
    let server_us = per_op(usage.server_cpu_s);
    let pg_us = per_op(usage.server_children_cpu_s);
    let lat = latency.summary();

    if let Value::Object(m) = &mut params {
        m.insert("sockets".into(), json!(load.sockets));
        m.insert("window".into(), json!(load.window));
        m.insert("rate".into(), json!(load.rate));
        m.insert("duration".into(), json!(load.duration));
        m.insert("threads".into(), json!(threads));
    }
    let mut rep = Report::new(scenario, &g.label, params);
    rep.line(stats.human("sockets"));
    let loop_kind = if load.rate > 0.0 {
        format!("open loop at {}/s", load.rate)
    } else {
        "closed loop".to_string()
    };
    rep.line(format!(
        "requests ({loop_kind}, window {} per socket): sent {sent}, ok {ok}, failed {failed} \
         {codes:?}, unmatched {unmatched}; {ops_per_s:.0} answers/s over {span_s:.2} s",
        load.window
    ));
    rep.line(format!("round trip request -> answer: {}", lat.human()));
    if load.rate > 0.0 {
        rep.line(format!(
            "requests went out at most {max_lag_ms:.2} ms behind schedule"
        ));
    }
    if let Some(c) = server_us {
        rep.line(format!(
            "server CPU per answered request: {c:.2} us (PostgreSQL: {:.2} us)",
            pg_us.unwrap_or(0.0)
        ));
    }
    if let Some(f) = &first_failure {
        rep.line(format!("first failure: {f}"));
    }
    if !ended.is_empty() {
        rep.line(format!("sockets ended early: {ended:?}"));
    }
    rep.usage(&usage);
    rep.set("connect", &stats);
    rep.set("sent", sent);
    rep.set("ok", ok);
    rep.set("failed", failed);
    rep.set("failure_codes", codes);
    rep.set("unmatched", unmatched);
    rep.set("first_failure", first_failure);
    rep.set("ops_per_s", ops_per_s);
    rep.set("span_s", span_s);
    rep.set("latency", lat);
    rep.set("max_lag_ms", max_lag_ms);
    rep.set("server_cpu_per_op_us", server_us);
    rep.set("pg_cpu_per_op_us", pg_us);
    rep.set("ended_early", ended);
    Ok(rep)
}
