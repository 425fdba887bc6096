//! `windows` scenario: memory held by the replay windows. K channels, each with S event
//! streams subscribed (a channel nobody ever subscribed to has no window), each receive M
//! messages; then the server's `pgws_window_messages` and `pgws_window_bytes` (admin listener)
//! and its RSS are read. RSS is sampled after the streams connected and again after the
//! messages, so the difference is what the windows (and nothing per connection) cost. Every
//! stream also checks that it received its channel's messages once and in order.

use crate::cli::{Global, Pacing, WindowsArgs};
use crate::connect::{self, OpenOpts};
use crate::pacing::Plan;
use crate::phases::{self, secs};
use crate::procstat;
use crate::publisher::{self, PubCfg, PubResult};
use crate::report::Report;
use crate::scrape;
use crate::ssesub;
use crate::subscriber::Shared;
use crate::target::{self, Target};
use crate::token;
use crate::tracker::Tally;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Runs the scenario.
pub async fn run(g: &Global, a: &WindowsArgs, threads: usize) -> Result<Report> {
    let conninfo = g.pg.as_deref().context("windows needs --pg")?;
    target::check_pg_conninfo(conninfo)?;
    let admin = scrape::check_addr(g.admin.as_deref().context("windows needs --admin")?)?;
    let target = Target::new(&g.host, g.port, g.source_addrs)?;
    if a.channels == 0 || a.channels > 100_000 || a.streams_per_channel == 0 {
        bail!("--channels within 1..=100000, --streams-per-channel positive");
    }
    if a.publishers == 0 || a.publishers > 64 || a.batch == 0 || a.batch > 10_000 {
        bail!("--publishers within 1..=64, --batch within 1..=10000");
    }
    let total = a.per_channel * a.channels as u64;
    let plan = Plan::new(&Pacing {
        rate: 0.0,
        messages: Some(total),
        duration: None,
        burst: 0,
        burst_interval_ms: 0,
        payload: a.payload,
    })?;
    let channels: Arc<Vec<String>> = Arc::new(
        (0..a.channels)
            .map(|k| format!("{}{k}", a.channel_prefix))
            .collect(),
    );
    let paths = token::channel_paths(&g.secret, "r", &channels, false)?;
    let timeout = Duration::from_millis(g.connect_timeout_ms);
    let mut clients = Vec::new();
    for _ in 0..a.publishers {
        clients.push(crate::pg::connect(conninfo, timeout).await?);
    }
    let sample = || g.server_pid.and_then(|p| procstat::sample(p).ok());
    let start_rss = sample();
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared::new(a.publishers, plan.total));
    let n = a.channels * a.streams_per_channel;
    eprintln!("windows: opening {n} streams over {} channels", a.channels);
    let opts = OpenOpts {
        concurrency: g.connect_concurrency,
        timeout,
        read_buf: 4096,
        subprotocol: None,
    };
    let mut tasks = Vec::with_capacity(n);
    let conn_stats = connect::open_all_sse(
        &target,
        n,
        opts,
        |i| paths[i % a.channels].clone(),
        |i, (rd, wr)| {
            let ch = channels[i % a.channels].clone();
            let t = tokio::spawn(ssesub::run(i, ch, rd, wr, shared.clone(), stop_rx.clone()));
            tasks.push((i, t));
        },
    )
    .await;
    eprintln!("  {}", conn_stats.human("streams"));
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
    tokio::time::sleep(secs(a.settle)).await;
    let before = sample();
    let m0 = scrape::scrape(admin).await?;
    eprintln!(
        "  ready: {ready}/{connected}; publishing {} messages per channel ({total} in all)",
        a.per_channel
    );

    let window = crate::report::Window::start(g.server_pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(g.max_duration);
    let mut pubs = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let cfg = PubCfg {
            id: i as u32,
            of: a.publishers,
            channels: channels.clone(),
            listen_channel: g.listen_channel.clone(),
            wal: g.wal(),
            payload: a.payload,
            batch: a.batch,
            window: 4,
            schedule: plan.sender(i, a.publishers),
        };
        pubs.push(tokio::spawn(publisher::run(client, cfg, start, deadline)));
    }
    let mut results: Vec<PubResult> = Vec::new();
    for p in pubs {
        results.push(p.await.context("publisher task")?);
    }
    let publish_s = start.elapsed().as_secs_f64();
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
    tokio::time::sleep(secs(a.settle)).await;
    let after = sample();
    let m1 = scrape::scrape(admin).await?;
    let _ = stop_tx.send(true);
    let subs = phases::collect(tasks, Duration::from_secs(10)).await;

    let mut tally = Tally::default();
    let mut ended = 0usize;
    for (i, r) in &subs {
        for (p, tr) in r.trackers.iter().enumerate() {
            tally.add(tr, results[p].sent[i % a.channels]);
        }
        ended += usize::from(r.ended.is_some());
    }
    let unreported = expected.saturating_sub(tally.expected);
    tally.expected += unreported;
    tally.lost += unreported;
    let win_msgs = m1.get("pgws_window_messages");
    let win_bytes = m1.get("pgws_window_bytes");
    let rss_delta_kib = before
        .zip(after)
        .map(|(b, a)| a.rss_kib as f64 - b.rss_kib as f64);
    let rss_per_msg = rss_delta_kib
        .zip(win_msgs)
        .filter(|(_, m)| *m > 0.0)
        .map(|(d, m)| d * 1024.0 / m);
    let text_per_msg = win_bytes
        .zip(win_msgs)
        .filter(|(_, m)| *m > 0.0)
        .map(|(b, m)| b / m);

    let params = json!({
        "channels": a.channels, "streams_per_channel": a.streams_per_channel,
        "per_channel": a.per_channel, "payload": a.payload, "publishers": a.publishers,
        "batch": a.batch, "threads": threads,
    });
    let mut rep = Report::new("windows", &g.label, params);
    rep.line(conn_stats.human("streams"));
    rep.line(format!(
        "published {sent} notifications in {publish_s:.2} s ({:.0}/s); deliveries expected {} \
         delivered {} lost {} duplicated {} out-of-order {} (drain: {drain_end:?}); streams ended early {ended}",
        sent as f64 / publish_s.max(1e-9),
        tally.expected,
        tally.delivered,
        tally.lost,
        tally.duplicated,
        tally.out_of_order
    ));
    rep.line(format!(
        "windows: {} messages, {} text bytes (before: {} / {})",
        win_msgs.unwrap_or(0.0),
        win_bytes.unwrap_or(0.0),
        m0.get("pgws_window_messages").unwrap_or(0.0),
        m0.get("pgws_window_bytes").unwrap_or(0.0)
    ));
    if let (Some(s), Some(b), Some(af)) = (start_rss, before, after) {
        rep.line(format!(
            "server RSS: {} KiB before the streams, {} KiB with them, {} KiB with full windows \
             (peak {} KiB); {} KiB for the windows = {} bytes per held message ({} of them text)",
            s.rss_kib,
            b.rss_kib,
            af.rss_kib,
            af.hwm_kib,
            rss_delta_kib.unwrap_or(0.0),
            rss_per_msg.map_or("?".into(), |v| format!("{v:.0}")),
            text_per_msg.map_or("?".into(), |v| format!("{v:.0}")),
        ));
    }
    rep.usage(&usage);
    rep.set("connect", &conn_stats);
    rep.set("ready", ready);
    rep.set("published", sent);
    rep.set("publish_s", publish_s);
    rep.set("deliveries", tally);
    rep.set("drain", drain_end);
    rep.set("ended_early", ended);
    rep.set("window_messages", win_msgs);
    rep.set("window_bytes", win_bytes);
    rep.set("window_messages_before", m0.get("pgws_window_messages"));
    rep.set("window_bytes_before", m0.get("pgws_window_bytes"));
    rep.set("server_start", start_rss);
    rep.set("server_before", before);
    rep.set("server_after", after);
    rep.set("rss_delta_kib", rss_delta_kib);
    rep.set("rss_per_held_message_bytes", rss_per_msg);
    rep.set("text_per_held_message_bytes", text_per_msg);
    Ok(rep)
}
