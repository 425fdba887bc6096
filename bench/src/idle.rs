//! `idle` scenario: C idle authenticated connections spread over loopback
//! source addresses; measures connections/s, failures and the server's RSS
//! per connection (RSS delta from before connecting to after all connected
//! and settled, divided by C), then holds them and optionally checks they
//! are still alive. `sse-idle` does the same with idle event streams; `idle --v2`
//! with protocol v2 sockets that each subscribe to `--subscriptions` channels
//! (waited for before settling), for the cost of a subscription.

use crate::cli::{Global, IdleArgs};
use crate::connect::{self, OpenOpts, Transport};
use crate::phases::{self, secs};
use crate::procstat::{self, ProcSample};
use crate::report::{Report, Window};
use crate::ssesub;
use crate::subscriber::{self, Pong, Shared};
use crate::target::{self, Target};
use crate::v2;
use anyhow::{Result, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// Runs the scenario over websockets.
pub async fn run(g: &Global, a: &IdleArgs, threads: usize) -> Result<Report> {
    run_over(g, a, threads, Transport::Websocket).await
}

/// Runs the scenario with connections of the given transport.
pub async fn run_over(
    g: &Global,
    a: &IdleArgs,
    threads: usize,
    transport: Transport,
) -> Result<Report> {
    let target = Target::new(&g.host, g.port, g.source_addrs)?;
    if a.connections == 0 || a.connections > 1_000_000 || a.channels == 0 {
        bail!("--connections and --channels must be positive");
    }
    if a.v2 && transport == Transport::Sse {
        bail!("--v2 is for websockets");
    }
    // Subscriptions per connection, and channels (enough for that many each).
    let subs = if a.v2 { a.subscriptions } else { 1 };
    let k = a.channels.max(subs);
    if let Some(pg) = &g.pg {
        target::check_pg_conninfo(pg)?;
    }
    let channels: Vec<String> = (0..k).map(|k| format!("{}{k}", a.channel_prefix)).collect();
    let (paths, subprotocol) = v2::paths(a.v2, g, "r", &channels)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared::new(0, 1));
    let sample = || g.server_pid.and_then(|p| procstat::sample(p).ok());
    let own_before = procstat::own();
    let before = sample();
    let window = Window::start(g.server_pid);
    eprintln!("idle: opening {} connections", a.connections);
    let mut tasks = Vec::with_capacity(a.connections);
    let opts = OpenOpts {
        concurrency: g.connect_concurrency,
        timeout: Duration::from_millis(g.connect_timeout_ms),
        read_buf: 256,
        subprotocol,
    };
    let path_of = |i: usize| paths[i % k].clone();
    let stats = match transport {
        Transport::Websocket => {
            connect::open_all(&target, a.connections, opts, path_of, |i, (rd, mut wr)| {
                if a.v2 {
                    v2::queue_subscriptions(&mut wr, (0..subs).map(|j| &channels[(i + j) % k]));
                }
                let t = tokio::spawn(subscriber::run(
                    i,
                    channels[i % k].clone(),
                    rd,
                    Pong::Direct(wr),
                    shared.clone(),
                    stop_rx.clone(),
                ));
                tasks.push((i, t));
            })
            .await
        }
        Transport::Sse => {
            connect::open_all_sse(&target, a.connections, opts, path_of, |i, (rd, wr)| {
                let t = tokio::spawn(ssesub::run(
                    i,
                    channels[i % k].clone(),
                    rd,
                    wr,
                    shared.clone(),
                    stop_rx.clone(),
                ));
                tasks.push((i, t));
            })
            .await
        }
    };
    let subscribed = if a.v2 {
        let want = stats.ok * subs;
        let t0 = std::time::Instant::now();
        while shared.subscribed.load(Ordering::Relaxed) < want && t0.elapsed() < secs(30.0) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(shared.subscribed.load(Ordering::Relaxed))
    } else {
        None
    };
    let connect_usage = window.finish(threads);
    eprintln!("  {}", stats.human("idle"));
    tokio::time::sleep(secs(a.settle)).await;
    let settled = sample();
    let own_settled = procstat::own();
    eprintln!("  settled; holding {} s", a.hold);
    tokio::time::sleep(secs(a.hold)).await;
    let held = sample();
    let alive = match (&g.pg, a.verify) {
        (Some(pg), true) if subs > 0 => {
            let client = crate::pg::connect(pg, opts.timeout).await?;
            Some(
                phases::warm_up(
                    g.wal(),
                    &client,
                    &g.listen_channel,
                    &channels,
                    &shared,
                    stats.ok,
                    Duration::from_secs(10),
                )
                .await,
            )
        }
        _ => None,
    };
    let _ = stop_tx.send(true);
    let results = phases::collect(tasks, Duration::from_secs(20)).await;
    let mut ended: BTreeMap<String, usize> = BTreeMap::new();
    for (_, r) in &results {
        if let Some(e) = &r.ended {
            *ended.entry(e.clone()).or_default() += 1;
        }
    }
    let per_conn = |a: Option<ProcSample>, b: Option<ProcSample>| match (a, b) {
        (Some(a), Some(b)) if stats.ok > 0 => {
            Some((b.rss_kib as f64 - a.rss_kib as f64) * 1024.0 / stats.ok as f64)
        }
        _ => None,
    };
    let rss_per_conn = per_conn(before, settled);
    let rss_per_conn_held = per_conn(before, held);
    let gen_per_conn = (stats.ok > 0).then(|| {
        (own_settled.rss_kib as f64 - own_before.rss_kib as f64) * 1024.0 / stats.ok as f64
    });

    let params = json!({
        "connections": a.connections, "channels": a.channels, "settle_s": a.settle,
        "hold_s": a.hold, "source_addrs": g.source_addrs, "threads": threads,
        "v2": a.v2, "subscriptions": subs,
    });
    let mut rep = Report::new(&transport.scenario("idle"), &g.label, params);
    rep.line(stats.human("idle connections"));
    if let (Some(b), Some(s)) = (before, settled) {
        rep.line(format!(
            "server RSS {} KiB -> {} KiB after settling ({} KiB after holding {} s); fds {} -> {}",
            b.rss_kib,
            s.rss_kib,
            held.map_or(0, |h| h.rss_kib),
            a.hold,
            b.fds,
            s.fds
        ));
    }
    if let Some(p) = rss_per_conn {
        rep.line(format!(
            "server RSS per idle connection: {:.0} bytes ({:.2} KiB); after hold {:.0} bytes",
            p,
            p / 1024.0,
            rss_per_conn_held.unwrap_or(0.0)
        ));
    }
    if let Some(n) = subscribed {
        rep.line(format!(
            "v2 subscriptions confirmed: {n} ({subs} per connection)"
        ));
    }
    if let Some(n) = alive {
        rep.line(format!(
            "alive at the end (received a notification): {n}/{}",
            stats.ok
        ));
    }
    if !ended.is_empty() {
        rep.line(format!("connections ended by the server: {ended:?}"));
    }
    if let Some(p) = gen_per_conn {
        rep.line(format!("generator RSS per connection: {:.0} bytes", p));
    }
    for l in connect_usage.human() {
        rep.line(format!("(connect phase) {l}"));
    }
    rep.set("connect", &stats);
    rep.set("transport", transport.name());
    rep.set("protocol", if a.v2 { "v2" } else { "compat" });
    rep.set("subscribed", subscribed);
    rep.set("server_before", before);
    rep.set("server_settled", settled);
    rep.set("server_held", held);
    rep.set("rss_per_conn_bytes", rss_per_conn);
    rep.set("rss_per_conn_held_bytes", rss_per_conn_held);
    rep.set("alive", alive);
    rep.set("ended_early", ended);
    rep.set("generator_rss_per_conn_bytes", gen_per_conn);
    rep.set("usage", &connect_usage);
    Ok(rep)
}
