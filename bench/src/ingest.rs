//! `ingest` scenario: W websocket writers send text through the server; a
//! direct LISTEN connection on the listen channel measures messages/s that
//! reach PostgreSQL, latency, loss and order per writer. Optional read-only
//! subscribers (and `rw` writers' echoes) measure the round trip.

use crate::cli::{Global, IngestArgs};
use crate::connect::{self, OpenOpts};
use crate::latency::Latency;
use crate::message::{self, now_ns};
use crate::pacing::Plan;
use crate::phases::{self, secs};
use crate::procstat;
use crate::report::Report;
use crate::rss::RssSummary;
use crate::subscriber::{self, Pong, Shared, SubResult};
use crate::target::{self, Target};
use crate::token;
use crate::tracker::{SeqTracker, Tally};
use crate::writer::{self, WriterCfg};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What the LISTEN connection saw.
#[derive(Debug, Default)]
struct ListenState {
    trackers: Vec<SeqTracker>,
    limit: u64,
    samples: Vec<u64>,
    other: u64,
}

/// Totals over receiving sockets.
#[derive(Debug, Default)]
struct RecvTotals {
    tally: Tally,
    frames: u64,
    errors: u64,
    unparsed: u64,
    misrouted: u64,
    first_error: Option<String>,
    ended: BTreeMap<String, usize>,
}

fn total_up(
    subs: &[(usize, SubResult)],
    chan_of: impl Fn(usize) -> usize,
    sent_on: &[Vec<u64>],
    expected_all: u64,
) -> RecvTotals {
    let mut t = RecvTotals::default();
    for (i, r) in subs {
        let ch = chan_of(*i);
        for (w, tr) in r.trackers.iter().enumerate() {
            t.tally.add(tr, sent_on[ch][w]);
        }
        t.frames += r.frames;
        t.errors += r.error_frames;
        t.unparsed += r.unparsed;
        t.misrouted += r.misrouted;
        if t.first_error.is_none() {
            t.first_error.clone_from(&r.first_error);
        }
        if let Some(e) = &r.ended {
            *t.ended.entry(e.clone()).or_default() += 1;
        }
    }
    let unreported = expected_all.saturating_sub(t.tally.expected);
    t.tally.expected += unreported;
    t.tally.lost += unreported;
    t
}

/// Runs the scenario.
pub async fn run(g: &Global, a: &IngestArgs, threads: usize) -> Result<Report> {
    let conninfo = g.pg.as_deref().context("ingest needs --pg")?;
    target::check_pg_conninfo(conninfo)?;
    let target = Target::new(&g.host, g.port, g.source_addrs)?;
    let plan = Plan::new(&a.pacing)?;
    if a.mode != "w" && a.mode != "rw" {
        bail!("--mode must be w or rw");
    }
    if a.writers == 0 || a.writers > 100_000 || a.channels == 0 || a.channels > a.writers {
        bail!("--writers must be positive and --channels within 1..=writers");
    }
    let w_n = a.writers;
    let k = a.channels;
    let channels: Arc<Vec<String>> =
        Arc::new((0..k).map(|i| format!("{}{i}", a.channel_prefix)).collect());
    let timeout = Duration::from_millis(g.connect_timeout_ms);
    let (stop_tx, stop_rx) = watch::channel(false);

    // LISTEN connection
    let latency = Arc::new(Latency::default());
    let arrived = Arc::new(AtomicU64::new(0));
    let last_rx = Arc::new(AtomicU64::new(0));
    let state = Arc::new(Mutex::new(ListenState {
        trackers: vec![SeqTracker::default(); w_n],
        limit: plan.total,
        ..ListenState::default()
    }));
    let handler = {
        let (latency, arrived, last_rx, state) = (
            latency.clone(),
            arrived.clone(),
            last_rx.clone(),
            state.clone(),
        );
        move |n: &tokio_postgres::Notification| {
            let now = now_ns();
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            match message::parse_ingest_envelope(n.payload().as_bytes()) {
                Some((w, seq, t)) if (w as usize) < s.trackers.len() => {
                    let limit = s.limit;
                    s.trackers[w as usize].record(seq, limit);
                    s.samples.push(now.saturating_sub(t));
                    if s.samples.len() >= 512 {
                        latency.record_all(0, &s.samples);
                        s.samples.clear();
                    }
                    arrived.fetch_add(1, Ordering::Relaxed);
                    last_rx.fetch_max(now, Ordering::Relaxed);
                }
                _ if n.payload().contains("\"probe\":") => {}
                _ => s.other += 1,
            }
        }
    };
    // A server reading the WAL receives logical messages, which no LISTEN sees: arrivals are
    // then counted at the subscribers (`--subscribers`, on one channel: messages/s).
    let wal = g.wal();
    if wal && a.subscribers == 0 {
        bail!("--source wal: ingest counts arrivals at subscribers; give --subscribers 1 or more");
    }
    let listen = if wal {
        None
    } else {
        Some(
            crate::pg::listen(
                conninfo,
                &g.listen_channel,
                handler,
                stop_rx.clone(),
                timeout,
            )
            .await?,
        )
    };
    let probe_client = crate::pg::connect(conninfo, timeout).await?;
    let before = g.server_pid.and_then(|p| procstat::sample(p).ok());
    let opts = OpenOpts {
        concurrency: g.connect_concurrency,
        timeout,
        read_buf: 4096,
        subprotocol: None,
    };

    // optional subscribers
    let sub_shared = Arc::new(Shared::new(w_n, plan.total));
    let mut sub_tasks = Vec::new();
    let rpaths = token::channel_paths(&g.secret, "r", &channels, g.token_url)?;
    let sub_stats = if a.subscribers > 0 {
        let s = connect::open_all(
            &target,
            a.subscribers,
            opts,
            |i| rpaths[i % k].clone(),
            |i, (rd, wr)| {
                let t = tokio::spawn(subscriber::run(
                    i,
                    channels[i % k].clone(),
                    rd,
                    Pong::Direct(wr),
                    sub_shared.clone(),
                    stop_rx.clone(),
                ));
                sub_tasks.push((i, t));
            },
        )
        .await;
        eprintln!("  {}", s.human("subscribers"));
        Some(s)
    } else {
        None
    };

    // writers
    eprintln!("ingest: opening {w_n} writers (mode {})", a.mode);
    let wpaths = token::channel_paths(&g.secret, &a.mode, &channels, g.token_url)?;
    let echo_shared = Arc::new(Shared::new(w_n, plan.total));
    let mut echo_tasks = Vec::new();
    let mut writers = Vec::new();
    let w_stats = connect::open_all(
        &target,
        w_n,
        opts,
        |i| wpaths[i % k].clone(),
        |i, (rd, wr)| {
            let (tx, rx) = mpsc::channel(16);
            let t = tokio::spawn(subscriber::run(
                a.subscribers + i,
                channels[i % k].clone(),
                rd,
                Pong::Forward(tx),
                echo_shared.clone(),
                stop_rx.clone(),
            ));
            echo_tasks.push((i, t));
            writers.push((i, wr, rx));
        },
    )
    .await;
    eprintln!("  {}", w_stats.human("writers"));
    let sub_ready = phases::warm_up(
        g.wal(),
        &probe_client,
        &g.listen_channel,
        &channels,
        &sub_shared,
        sub_tasks.len(),
        secs(a.drain.ready_timeout),
    )
    .await;
    let echo_ready = if a.mode == "rw" {
        phases::warm_up(
            g.wal(),
            &probe_client,
            &g.listen_channel,
            &channels,
            &echo_shared,
            echo_tasks.len(),
            secs(a.drain.ready_timeout),
        )
        .await
    } else {
        0
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let phases::Measure {
        window,
        rss,
        t0_ns,
        start,
        deadline,
    } = phases::start_measure(g, a.rss_interval_ms, &stop_rx);
    let progress = Arc::new(writer::Progress::default());
    let mut wtasks = Vec::new();
    let n_writers = writers.len();
    for (i, wr, rx) in writers {
        let cfg = WriterCfg {
            id: i as u32,
            payload: a.pacing.payload,
            write_batch: a.write_batch,
            schedule: plan.sender(i, w_n),
            progress: progress.clone(),
        };
        wtasks.push((
            i,
            tokio::spawn(writer::run(wr, rx, cfg, start, deadline, stop_rx.clone())),
        ));
    }
    while progress.finished.load(Ordering::Relaxed) < n_writers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let send_s = start.elapsed().as_secs_f64();
    let drain_end = if wal {
        None
    } else {
        Some(
            phases::drain(
                || arrived.load(Ordering::Relaxed),
                progress.sent.load(Ordering::Relaxed),
                secs(a.drain.drain_idle),
                secs(a.drain.drain_timeout),
            )
            .await,
        )
    };
    // then the sockets' copies (nominal counts; idle timeout covers shortfalls)
    let nominal_on: Vec<u64> = (0..k)
        .map(|c| (c..w_n).step_by(k).map(|w| plan.sender(w, w_n).count).sum())
        .collect();
    let copies: u64 = (0..sub_tasks.len()).map(|s| nominal_on[s % k]).sum::<u64>()
        + if a.mode == "rw" {
            (0..echo_tasks.len()).map(|w| nominal_on[w % k]).sum()
        } else {
            0
        };
    let copies_end = phases::drain(
        || sub_shared.frames.load(Ordering::Relaxed) + echo_shared.frames.load(Ordering::Relaxed),
        copies,
        secs(a.drain.drain_idle),
        secs(a.drain.drain_timeout),
    )
    .await;
    let usage = window.finish(threads);
    let _ = stop_tx.send(true);
    let mut sent_by = vec![0u64; w_n];
    let mut write_errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut max_lag_us: f64 = 0.0;
    for (i, t) in wtasks {
        if let Ok(Ok((r, _wr))) = tokio::time::timeout(Duration::from_secs(10), t).await {
            sent_by[i] = r.sent;
            max_lag_us = max_lag_us.max(r.max_lag_us);
            if let Some(e) = r.error {
                *write_errors.entry(e).or_default() += 1;
            }
        }
    }
    let listen_state = {
        if let Some((_client, task)) = listen {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        let rest = std::mem::take(&mut s.samples);
        latency.record_all(0, &rest);
        std::mem::take(&mut *s)
    };
    let subs = phases::collect(sub_tasks, Duration::from_secs(10)).await;
    let echoes = phases::collect(echo_tasks, Duration::from_secs(10)).await;
    let rss = match rss {
        Some(h) => Some(h.await?),
        None => None,
    };

    // totals
    let sent: u64 = sent_by.iter().sum();
    let mut listen_tally = Tally::default();
    let mut writers_disordered = 0usize;
    for (w, tr) in listen_state.trackers.iter().enumerate() {
        listen_tally.add(tr, sent_by[w]);
        if tr.out_of_order > 0 || tr.duplicates > 0 {
            writers_disordered += 1;
        }
    }
    // sent_on[channel][writer]
    let mut sent_on = vec![vec![0u64; w_n]; k];
    for (w, s) in sent_by.iter().enumerate() {
        sent_on[w % k][w] = *s;
    }
    let per_channel: Vec<u64> = sent_on.iter().map(|v| v.iter().sum()).collect();
    let subs_expected: u64 = (0..a.subscribers).map(|s| per_channel[s % k]).sum();
    let echo_expected: u64 = if a.mode == "rw" {
        (0..w_stats.ok).map(|w| per_channel[w % k]).sum()
    } else {
        0
    };
    let sub_t = total_up(&subs, |i| i % k, &sent_on, subs_expected);
    let echo_t = total_up(&echoes, |i| i % k, &sent_on, echo_expected);
    let (last, arrivals) = if wal {
        (
            sub_shared.last_rx_ns.load(Ordering::Relaxed),
            sub_t.tally.delivered,
        )
    } else {
        (last_rx.load(Ordering::Relaxed), listen_tally.delivered)
    };
    let recv_s = last.saturating_sub(t0_ns) as f64 / 1e9;
    let rate = if recv_s > 0.0 {
        arrivals as f64 / recv_s
    } else {
        0.0
    };
    let lat = latency.summary();
    let rtt = sub_shared.latency.summary();
    let echo_lat = echo_shared.latency.summary();
    let server_cpu_per_msg_us = usage
        .server_cpu_s
        .filter(|_| arrivals > 0)
        .map(|c| c * 1e6 / arrivals as f64);
    let error_frames = sub_t.errors + echo_t.errors;

    let params = json!({
        "writers": w_n, "mode": a.mode, "source": if wal { "wal" } else { "notify" }, "channels": k, "subscribers": a.subscribers,
        "rate": plan.rate, "messages": plan.total, "burst": plan.burst,
        "payload": a.pacing.payload, "write_batch": a.write_batch, "threads": threads,
    });
    let mut rep = Report::new("ingest", &g.label, params);
    if let Some(s) = &sub_stats {
        rep.line(s.human("subscribers"));
    }
    rep.line(w_stats.human("writers"));
    rep.line(format!(
        "sent {sent} messages in {send_s:.2} s ({:.0}/s); max lag behind schedule {:.1} ms; write errors {write_errors:?}",
        sent as f64 / send_s.max(1e-9),
        max_lag_us / 1000.0
    ));
    if wal {
        rep.line(format!(
            "reached subscribers (WAL source): {arrivals} deliveries in {recv_s:.2} s ({rate:.0}/s)"
        ));
    }
    if !wal {
        rep.line(format!(
        "reached PostgreSQL: {} of {} ({:.0} msg/s), lost {}, duplicated {}, out-of-order {}, \
         writers not in order {writers_disordered}/{w_n}, other notifications {} (drain: {drain_end:?})",
        listen_tally.delivered,
        listen_tally.expected,
        rate,
        listen_tally.lost,
        listen_tally.duplicated,
        listen_tally.out_of_order,
        listen_state.other
    ));
    }
    rep.line(format!(
        "latency client send -> LISTEN receipt: {}",
        lat.human()
    ));
    if a.subscribers > 0 {
        rep.line(format!(
            "subscribers: ready {sub_ready}, delivered {} of {}, lost {}, round trip {}",
            sub_t.tally.delivered,
            sub_t.tally.expected,
            sub_t.tally.lost,
            rtt.human()
        ));
    }
    if a.mode == "rw" {
        rep.line(format!(
            "rw echoes: ready {echo_ready}, delivered {} of {}, lost {}, round trip {}",
            echo_t.tally.delivered,
            echo_t.tally.expected,
            echo_t.tally.lost,
            echo_lat.human()
        ));
    }
    if error_frames > 0 || !sub_t.ended.is_empty() || !echo_t.ended.is_empty() {
        rep.line(format!(
            "error frames {error_frames} (first: {:?}); sockets ended early: {:?} {:?}",
            sub_t.first_error.as_ref().or(echo_t.first_error.as_ref()),
            sub_t.ended,
            echo_t.ended
        ));
    }
    if let Some(c) = server_cpu_per_msg_us {
        rep.line(format!("server CPU per ingested message: {c:.2} us"));
    }
    let rss_summary = rss
        .as_ref()
        .map(|s| RssSummary::of(s, before.map(|b| b.rss_kib)));
    if let Some(s) = &rss_summary {
        rep.line(s.human());
    }
    rep.usage(&usage);
    rep.set("connect", &w_stats);
    rep.set("connect_subscribers", &sub_stats);
    rep.set("sent", sent);
    rep.set("send_s", send_s);
    rep.set("send_rate", sent as f64 / send_s.max(1e-9));
    rep.set("max_lag_ms", max_lag_us / 1000.0);
    rep.set("write_errors", &write_errors);
    rep.set("arrived", listen_tally);
    rep.set("msgs_per_s", rate);
    rep.set("writers_not_in_order", writers_disordered);
    rep.set("other_notifications", listen_state.other);
    rep.set("drain", drain_end);
    rep.set("drain_copies", copies_end);
    rep.set("latency", lat);
    rep.set("subscriber_deliveries", sub_t.tally);
    rep.set("round_trip", rtt);
    rep.set("echo_deliveries", echo_t.tally);
    rep.set("echo_round_trip", echo_lat);
    rep.set("error_frames", error_frames);
    rep.set(
        "first_error_frame",
        sub_t.first_error.or(echo_t.first_error),
    );
    rep.set("unparsed", sub_t.unparsed + echo_t.unparsed);
    rep.set("misrouted", sub_t.misrouted + echo_t.misrouted);
    rep.set("server_cpu_per_msg_us", server_cpu_per_msg_us);
    rep.set("rss", rss_summary);
    Ok(rep)
}
