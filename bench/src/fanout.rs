//! `fanout` scenario: C subscribers over K channels receive notifications
//! that P publisher connections send with `pg_notify` on the listen channel;
//! measures deliveries/s, loss, duplicates, order, latency, and the server's
//! CPU per delivery. `sse-fanout` is the same scenario with event streams
//! instead of websockets, measured the same way; `fanout --v2` has protocol v2
//! subscribers (each subscribes to its channel with a request).

use crate::cli::{FanoutArgs, Global};
use crate::connect::{self, OpenOpts, Transport};
use crate::pacing::Plan;
use crate::phases::{self, secs};
use crate::procstat;
use crate::publisher::{self, PubCfg, PubResult};
use crate::report::Report;
use crate::rss::RssSummary;
use crate::ssesub;
use crate::subscriber::{self, Pong, Shared};
use crate::target::{self, Target};
use crate::tracker::Tally;
use crate::v2;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// Runs the scenario over websockets.
pub async fn run(g: &Global, a: &FanoutArgs, threads: usize) -> Result<Report> {
    run_over(g, a, threads, Transport::Websocket).await
}

/// Runs the scenario with subscribers of the given transport.
pub async fn run_over(
    g: &Global,
    a: &FanoutArgs,
    threads: usize,
    transport: Transport,
) -> Result<Report> {
    if transport == Transport::Sse && (a.kernel_timestamps || a.v2) {
        bail!("--kernel-timestamps and --v2 are for websocket subscribers only");
    }
    let conninfo = g.pg.as_deref().context("fanout needs --pg")?;
    target::check_pg_conninfo(conninfo)?;
    let target = Target::new(&g.host, g.port, g.source_addrs)?;
    let plan = Plan::new(&a.pacing)?;
    if a.subscribers == 0 || a.subscribers > 1_000_000 || a.channels == 0 || a.channels > 100_000 {
        bail!("--subscribers and --channels must be positive (and sane)");
    }
    if a.publishers == 0 || a.publishers > 256 || a.batch == 0 || a.batch > 10_000 {
        bail!("--publishers within 1..=256, --batch within 1..=10000");
    }
    let channels: Arc<Vec<String>> = Arc::new(
        (0..a.channels)
            .map(|k| format!("{}{k}", a.channel_prefix))
            .collect(),
    );
    let (paths, subprotocol) = v2::paths(a.v2, g, "r", &channels)?;
    let timeout = Duration::from_millis(g.connect_timeout_ms);
    let mut clients = Vec::new();
    for _ in 0..a.publishers {
        clients.push(crate::pg::connect(conninfo, timeout).await?);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let before = g.server_pid.and_then(|p| procstat::sample(p).ok());

    eprintln!("fanout: opening {} subscribers", a.subscribers);
    let shared = Arc::new(Shared::new(a.publishers, plan.total));
    let mut tasks = Vec::with_capacity(a.subscribers);
    let opts = OpenOpts {
        concurrency: g.connect_concurrency,
        timeout,
        read_buf: 4096,
        subprotocol,
    };
    let path_of = |i: usize| paths[i % a.channels].clone();
    let conn_stats = match transport {
        Transport::Websocket => {
            connect::open_all(
                &target,
                a.subscribers,
                opts,
                path_of,
                |i, (mut rd, mut wr)| {
                    let ch = channels[i % a.channels].clone();
                    if a.v2 {
                        v2::queue_subscriptions(&mut wr, [&ch]);
                    }
                    if a.kernel_timestamps
                        && let Err(e) = rd.enable_rx_timestamps()
                    {
                        eprintln!("  kernel receive timestamps unavailable: {e}");
                    }
                    let t = tokio::spawn(subscriber::run(
                        i,
                        ch,
                        rd,
                        Pong::Direct(wr),
                        shared.clone(),
                        stop_rx.clone(),
                    ));
                    tasks.push((i, t));
                },
            )
            .await
        }
        Transport::Sse => {
            connect::open_all_sse(&target, a.subscribers, opts, path_of, |i, (rd, wr)| {
                let ch = channels[i % a.channels].clone();
                let t = tokio::spawn(ssesub::run(i, ch, rd, wr, shared.clone(), stop_rx.clone()));
                tasks.push((i, t));
            })
            .await
        }
    };
    eprintln!("  {}", conn_stats.human("subscribers"));
    let connected = conn_stats.ok;
    let ready = phases::warm_up(
        g.wal(),
        &clients[0],
        &g.listen_channel,
        &channels,
        &shared,
        connected,
        secs(a.drain.ready_timeout),
    )
    .await;
    eprintln!(
        "  ready: {ready}/{connected}; publishing {} messages",
        plan.total
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let phases::Measure {
        window,
        rss,
        t0_ns,
        start,
        deadline,
    } = phases::start_measure(g, a.rss_interval_ms, &stop_rx);
    let mut pubs = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let cfg = PubCfg {
            id: i as u32,
            of: a.publishers,
            channels: channels.clone(),
            listen_channel: g.listen_channel.clone(),
            wal: g.wal(),
            payload: a.pacing.payload,
            batch: a.batch,
            window: a.window,
            schedule: plan.sender(i, a.publishers),
        };
        pubs.push(tokio::spawn(publisher::run(client, cfg, start, deadline)));
    }
    let mut results: Vec<PubResult> = Vec::new();
    for p in pubs {
        results.push(p.await.context("publisher task")?);
    }
    let publish_s = start.elapsed().as_secs_f64();
    // expected deliveries: per channel, sum over publishers, times subscribers on it
    let mut subs_on = vec![0u64; a.channels];
    for (i, _) in &tasks {
        subs_on[i % a.channels] += 1;
    }
    let sent: u64 = results.iter().flat_map(|r| r.sent.iter()).sum();
    let expected: u64 = results
        .iter()
        .map(|r| r.sent.iter().zip(&subs_on).map(|(s, n)| s * n).sum::<u64>())
        .sum();
    let drain_end = phases::drain(
        || shared.frames.load(Ordering::Relaxed),
        expected,
        secs(a.drain.drain_idle),
        secs(a.drain.drain_timeout),
    )
    .await;
    let usage = window.finish(threads);
    let _ = stop_tx.send(true);
    let subs = phases::collect(tasks, Duration::from_secs(10)).await;
    let rss = match rss {
        Some(h) => Some(h.await?),
        None => None,
    };

    let mut tally = Tally::default();
    let (mut misrouted, mut unparsed, mut errors, mut frames, mut gaps) = (0, 0, 0, 0, 0);
    let mut ended: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_error = None;
    for (i, r) in &subs {
        let ch = i % a.channels;
        for (p, tr) in r.trackers.iter().enumerate() {
            tally.add(tr, results[p].sent[ch]);
        }
        misrouted += r.misrouted;
        unparsed += r.unparsed;
        errors += r.error_frames;
        frames += r.frames;
        gaps += r.gaps;
        if first_error.is_none() {
            first_error.clone_from(&r.first_error);
        }
        if let Some(e) = &r.ended {
            *ended.entry(e.clone()).or_default() += 1;
        }
    }
    // sockets whose task did not report count as receiving nothing
    let missing = connected - subs.len();
    let unreported = expected.saturating_sub(tally.expected);
    tally.expected += unreported;
    tally.lost += unreported;
    let publish_failed: u64 = results.iter().map(|r| r.failed).sum();
    let max_lag_us = results.iter().map(|r| r.max_lag_us).fold(0.0, f64::max);
    let pub_error = results.iter().find_map(|r| r.first_error.clone());
    let last_rx = shared.last_rx_ns.load(Ordering::Relaxed);
    let recv_s = (last_rx.saturating_sub(t0_ns)) as f64 / 1e9;
    let deliveries_per_s = if recv_s > 0.0 {
        tally.delivered as f64 / recv_s
    } else {
        0.0
    };
    let lat = shared.latency.summary();
    let kernel_lat = shared.kernel_latency.summary();
    let server_cpu_per_delivery_us = usage
        .server_cpu_s
        .filter(|_| frames > 0)
        .map(|c| c * 1e6 / frames as f64);
    let gen_cpu_per_delivery_us = (frames > 0).then(|| usage.generator_cpu_s * 1e6 / frames as f64);

    let params = json!({
        "subscribers": a.subscribers, "channels": a.channels, "publishers": a.publishers,
        "batch": a.batch, "window": a.window, "rate": plan.rate, "messages": plan.total,
        "burst": plan.burst, "burst_interval_ms": a.pacing.burst_interval_ms,
        "payload": a.pacing.payload, "threads": threads, "v2": a.v2,
    });
    let mut rep = Report::new(&transport.scenario("fanout"), &g.label, params);
    rep.line(conn_stats.human("subscribers"));
    rep.line(format!(
        "ready after warm-up: {ready}/{connected}; published {sent} notifications in {publish_s:.2} s \
         ({:.0}/s), {publish_failed} failed, max lag behind schedule {:.1} ms",
        sent as f64 / publish_s.max(1e-9),
        max_lag_us / 1000.0
    ));
    if let Some(e) = &pub_error {
        rep.line(format!("first publish error: {e}"));
    }
    rep.line(format!(
        "deliveries: expected {} delivered {} lost {} duplicated {} out-of-order {} invalid {} \
         (drain: {:?}); {:.0} deliveries/s",
        tally.expected,
        tally.delivered,
        tally.lost,
        tally.duplicated,
        tally.out_of_order,
        tally.invalid,
        drain_end,
        deliveries_per_s
    ));
    rep.line(format!("latency pg_notify -> receipt: {}", lat.human()));
    if a.kernel_timestamps {
        rep.line(format!(
            "latency pg_notify -> client kernel (SO_TIMESTAMPNS): {}",
            kernel_lat.human()
        ));
        rep.set("latency_kernel", kernel_lat);
    }
    if misrouted + unparsed + errors + gaps > 0 || !ended.is_empty() || missing > 0 {
        rep.line(format!(
            "anomalies: misrouted {misrouted}, unparsed {unparsed}, error frames {errors}, \
             gap events {gaps}, sockets ended early {ended:?}, tasks lost {missing}"
        ));
    }
    if let Some(c) = server_cpu_per_delivery_us {
        rep.line(format!("server CPU per delivery: {c:.3} us"));
    }
    if let Some(c) = gen_cpu_per_delivery_us {
        rep.line(format!(
            "generator CPU per delivery (incl. publishing): {c:.3} us"
        ));
    }
    let rss_summary = rss
        .as_ref()
        .map(|s| RssSummary::of(s, before.map(|b| b.rss_kib)));
    if let Some(s) = &rss_summary {
        rep.line(s.human());
    }
    rep.usage(&usage);
    rep.set("connect", &conn_stats);
    rep.set("ready", ready);
    rep.set("published", sent);
    rep.set("publish_failed", publish_failed);
    rep.set("publish_s", publish_s);
    rep.set("publish_rate", sent as f64 / publish_s.max(1e-9));
    rep.set("publish_max_lag_ms", max_lag_us / 1000.0);
    rep.set("publish_error", pub_error);
    rep.set("deliveries", tally);
    rep.set("deliveries_per_s", deliveries_per_s);
    rep.set("frames", frames);
    rep.set("drain", drain_end);
    rep.set("latency", lat);
    rep.set("misrouted", misrouted);
    rep.set("unparsed", unparsed);
    rep.set("error_frames", errors);
    rep.set("gap_events", gaps);
    rep.set("transport", transport.name());
    rep.set("protocol", if a.v2 { "v2" } else { "compat" });
    rep.set("first_error_frame", first_error);
    rep.set("ended_early", ended);
    rep.set("server_cpu_per_delivery_us", server_cpu_per_delivery_us);
    rep.set("generator_cpu_per_delivery_us", gen_cpu_per_delivery_us);
    rep.set("rss", rss_summary);
    Ok(rep)
}
