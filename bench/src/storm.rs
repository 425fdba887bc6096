//! `sse-storm` scenario: N event streams over K channels receive paced notifications; after a
//! steady period every stream is cut at once by the client side (its socket closed) while the
//! messages keep flowing, and after a pause all of them reconnect at once with their
//! `Last-Event-ID`. Measures the time until every stream is live again (it received, with no
//! hole before it, a message published after it asked to resume), the server CPU of the
//! reconnect phase against the steady baseline, and loss: each stream checks that it got every
//! numbered message of its channel exactly once, in order, across the cut.

use crate::cli::{Global, Pacing, StormArgs};
use crate::connect;
use crate::connect::OpenOpts;
use crate::message::now_ns;
use crate::pacing::Plan;
use crate::phases::{self, secs};
use crate::procstat;
use crate::publisher::{self, PubCfg, PubResult};
use crate::report::{Report, Window};
use crate::scrape;
use crate::sseclient::{self, SseConn};
use crate::ssesub::{self, Receiver};
use crate::subscriber::{Shared, SubResult};
use crate::target::{self, Target};
use crate::token;
use crate::tracker::Tally;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// Where the run is; every stream follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Receiving.
    Run,
    /// Close the socket now.
    Cut,
    /// Reconnect with Last-Event-ID.
    Reconnect,
    /// The run is over.
    Stop,
}

/// Counters every stream updates.
#[derive(Debug)]
struct Storm {
    cut: AtomicUsize,
    reconnected: AtomicUsize,
    live: AtomicUsize,
    failed: AtomicUsize,
    gate: Semaphore,
}

/// What one stream did.
#[derive(Debug, Default)]
struct Outcome {
    res: SubResult,
    /// When it sent its resume request (ns since the epoch).
    req_ns: u64,
    /// Resume request -> response head, ms.
    connect_ms: Option<f64>,
    /// When it was live again (ns since the epoch).
    live_ns: Option<u64>,
    /// The stream ended before the cut.
    ended_before_cut: Option<String>,
    /// The reconnect failed.
    reconnect_error: Option<String>,
}

struct Client {
    id: usize,
    path: String,
    target: Arc<Target>,
    shared: Arc<Shared>,
    storm: Arc<Storm>,
    timeout: Duration,
}

async fn wait_phase(phase: &mut watch::Receiver<Phase>, at_least: Phase) -> Phase {
    loop {
        let p = *phase.borrow_and_update();
        if p >= at_least {
            return p;
        }
        if phase.changed().await.is_err() {
            return Phase::Stop;
        }
    }
}

/// Reads `conn` until the phase reaches `until`; with `live_after` (a resume request time),
/// returns when the stream first was live: a message sent after it, no hole before it.
async fn read_until(
    c: &Client,
    conn: &mut SseConn,
    rx: &mut Receiver,
    phase: &mut watch::Receiver<Phase>,
    until: Phase,
    live_after: Option<u64>,
    live_ns: &mut Option<u64>,
) -> Result<(), String> {
    loop {
        if *phase.borrow_and_update() >= until {
            return Ok(());
        }
        let mut newest = 0u64;
        let mut at = 0u64;
        tokio::select! {
            biased;
            _ = phase.changed() => continue,
            r = ssesub::read_batch(&mut conn.0, rx, c.id, &c.shared, |d, _, now| {
                newest = newest.max(d.t);
                at = now;
            }) => r?,
        }
        if let Some(req) = live_after
            && live_ns.is_none()
            && newest >= req
            && rx.res.trackers.iter().all(|t| t.contiguous())
        {
            *live_ns = Some(at);
            c.storm.live.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn client(
    c: Client,
    channel: String,
    mut conn: SseConn,
    mut phase: watch::Receiver<Phase>,
) -> Outcome {
    let mut out = Outcome::default();
    let mut rx = Receiver::new(channel, c.shared.senders);
    let mut unused = None;
    if let Err(e) = read_until(
        &c,
        &mut conn,
        &mut rx,
        &mut phase,
        Phase::Cut,
        None,
        &mut unused,
    )
    .await
    {
        out.ended_before_cut = Some(e);
    }
    // The cut: the client closes its socket.
    drop(conn);
    c.storm.cut.fetch_add(1, Ordering::Relaxed);
    if wait_phase(&mut phase, Phase::Reconnect).await == Phase::Stop {
        out.res = rx.res;
        return out;
    }
    let conn = {
        let _permit = c.storm.gate.acquire().await;
        out.req_ns = now_ns();
        let t = Instant::now();
        let last = (!rx.last_id.is_empty()).then_some(rx.last_id.as_slice());
        let r = sseclient::connect(&c.target, c.id, &c.path, last, c.timeout, 4096).await;
        out.connect_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        r
    };
    let mut conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            out.reconnect_error = Some(e.category());
            c.storm.failed.fetch_add(1, Ordering::Relaxed);
            out.res = rx.res;
            return out;
        }
    };
    c.storm.reconnected.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = read_until(
        &c,
        &mut conn,
        &mut rx,
        &mut phase,
        Phase::Stop,
        Some(out.req_ns),
        &mut out.live_ns,
    )
    .await
    {
        rx.res.ended = Some(e);
        if out.live_ns.is_none() {
            c.storm.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    out.res = rx.res;
    out
}

/// Percentiles (p50, p99, max) of `v`.
fn spread(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Some((at(0.5), at(0.99), v[v.len() - 1]))
}

/// Runs the scenario.
pub async fn run(g: &Global, a: &StormArgs, threads: usize) -> Result<Report> {
    let conninfo = g.pg.as_deref().context("sse-storm needs --pg")?;
    target::check_pg_conninfo(conninfo)?;
    let target = Arc::new(Target::new(&g.host, g.port, g.source_addrs)?);
    let admin = g.admin.as_deref().map(scrape::check_addr).transpose()?;
    if a.clients == 0 || a.clients > 100_000 || a.channels == 0 || a.channels > a.clients {
        bail!("--clients within 1..=100000, --channels within 1..=clients");
    }
    if !a.rate.is_finite() || a.rate <= 0.0 || a.publishers == 0 || a.publishers > 64 {
        bail!("--rate must be > 0, --publishers within 1..=64");
    }
    let down = Duration::from_millis(a.down_ms);
    if a.cut_at + down.as_secs_f64() + 1.0 >= a.duration {
        bail!("--duration must leave time after --cut-at + --down-ms");
    }
    let plan = Plan::new(&Pacing {
        rate: a.rate,
        messages: None,
        duration: Some(a.duration),
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
    let pid = g.server_pid;
    let shared = Arc::new(Shared::new(a.publishers, plan.total));
    let storm = Arc::new(Storm {
        cut: AtomicUsize::new(0),
        reconnected: AtomicUsize::new(0),
        live: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        gate: Semaphore::new(a.reconnect_concurrency.unwrap_or(a.clients).max(1)),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);

    eprintln!(
        "sse-storm: opening {} streams over {} channels",
        a.clients, a.channels
    );
    let opts = OpenOpts {
        concurrency: g.connect_concurrency,
        timeout,
        read_buf: 4096,
        subprotocol: None,
    };
    let mut tasks = Vec::with_capacity(a.clients);
    let conn_stats = connect::open_all_sse(
        &target,
        a.clients,
        opts,
        |i| paths[i % a.channels].clone(),
        |i, conn| {
            let c = Client {
                id: i,
                path: paths[i % a.channels].clone(),
                target: target.clone(),
                shared: shared.clone(),
                storm: storm.clone(),
                timeout,
            };
            let ch = channels[i % a.channels].clone();
            tasks.push((i, tokio::spawn(client(c, ch, conn, phase_rx.clone()))));
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
    eprintln!(
        "  ready: {ready}/{connected}; publishing at {}/s for {} s, cut at {} s",
        a.rate, a.duration, a.cut_at
    );
    let scraped0 = match admin {
        Some(addr) => scrape::scrape(addr).await.ok(),
        None => None,
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let window = Window::start(pid);
    let cpu0 = pid.and_then(procstat::cpu_ns);
    let start = Instant::now();
    let deadline = start + secs(a.duration) + Duration::from_secs(1);
    let mut pubs = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let cfg = PubCfg {
            id: i as u32,
            of: a.publishers,
            channels: channels.clone(),
            listen_channel: g.listen_channel.clone(),
            wal: g.wal(),
            payload: a.payload,
            batch: 1,
            window: 32,
            schedule: plan.sender(i, a.publishers),
        };
        pubs.push(tokio::spawn(publisher::run(client, cfg, start, deadline)));
    }

    tokio::time::sleep_until((start + secs(a.cut_at)).into()).await;
    let cpu_cut = pid.and_then(procstat::cpu_ns);
    let t_cut = Instant::now();
    let _ = phase_tx.send(Phase::Cut);
    let cut_deadline = t_cut + Duration::from_secs(10);
    while storm.cut.load(Ordering::Relaxed) < tasks.len() && Instant::now() < cut_deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cut_ms = t_cut.elapsed().as_secs_f64() * 1e3;
    let cut_done = storm.cut.load(Ordering::Relaxed);
    tokio::time::sleep_until((t_cut + down).into()).await;

    let cpu_rec = pid.and_then(procstat::cpu_ns);
    let t_rec = Instant::now();
    let t_rec_ns = now_ns();
    let _ = phase_tx.send(Phase::Reconnect);
    let publish_end = start + secs(a.duration);
    let mut all_connected = None;
    let mut all_live = None;
    while Instant::now() < publish_end {
        let done = storm.live.load(Ordering::Relaxed) + storm.failed.load(Ordering::Relaxed);
        if all_connected.is_none()
            && storm.reconnected.load(Ordering::Relaxed) + storm.failed.load(Ordering::Relaxed)
                >= cut_done
        {
            all_connected = Some(t_rec.elapsed());
        }
        if done >= cut_done {
            all_live = Some(t_rec.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu_live = pid.and_then(procstat::cpu_ns);
    let live_wall = all_live.unwrap_or_else(|| t_rec.elapsed());
    eprintln!(
        "  cut {cut_done} streams in {cut_ms:.1} ms; reconnected in {} ms; all live after {:.1} ms ({} live, {} failed)",
        all_connected.map_or("?".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)),
        live_wall.as_secs_f64() * 1e3,
        storm.live.load(Ordering::Relaxed),
        storm.failed.load(Ordering::Relaxed)
    );

    let mut results: Vec<PubResult> = Vec::new();
    for p in pubs {
        results.push(p.await.context("publisher task")?);
    }
    let mut subs_on = vec![0u64; a.channels];
    for (i, _) in &tasks {
        subs_on[i % a.channels] += 1;
    }
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
    let _ = phase_tx.send(Phase::Stop);
    let scraped1 = match admin {
        Some(addr) => scrape::scrape(addr).await.ok(),
        None => None,
    };
    let mut outcomes = Vec::with_capacity(tasks.len());
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, t) in tasks {
        let abort = t.abort_handle();
        match tokio::time::timeout_at(deadline.into(), t).await {
            Ok(Ok(o)) => outcomes.push((i, o)),
            Ok(Err(_)) => {}
            Err(_) => abort.abort(),
        }
    }

    let mut tally = Tally::default();
    let (mut gaps, mut errors, mut unparsed, mut misrouted) = (0, 0, 0, 0);
    let mut ended_before: BTreeMap<String, usize> = BTreeMap::new();
    let mut ended_after: BTreeMap<String, usize> = BTreeMap::new();
    let mut reconnect_errors: BTreeMap<String, usize> = BTreeMap::new();
    let (mut live_lat, mut connect_ms) = (Vec::new(), Vec::new());
    for (i, o) in &outcomes {
        let ch = i % a.channels;
        for (p, tr) in o.res.trackers.iter().enumerate() {
            tally.add(tr, results[p].sent[ch]);
        }
        gaps += o.res.gaps;
        errors += o.res.error_frames;
        unparsed += o.res.unparsed;
        misrouted += o.res.misrouted;
        if let Some(e) = &o.ended_before_cut {
            *ended_before.entry(e.clone()).or_default() += 1;
        }
        if let Some(e) = &o.res.ended {
            *ended_after.entry(e.clone()).or_default() += 1;
        }
        if let Some(e) = &o.reconnect_error {
            *reconnect_errors.entry(e.clone()).or_default() += 1;
        }
        if let Some(l) = o.live_ns {
            live_lat.push(l.saturating_sub(o.req_ns) as f64 / 1e6);
        }
        if let Some(c) = o.connect_ms {
            connect_ms.push(c);
        }
    }
    let unreported = expected.saturating_sub(tally.expected);
    tally.expected += unreported;
    tally.lost += unreported;
    let first_req = outcomes
        .iter()
        .map(|(_, o)| o.req_ns)
        .filter(|&t| t > 0)
        .min()
        .unwrap_or(t_rec_ns);
    let last_req_ms = outcomes
        .iter()
        .map(|(_, o)| o.req_ns.saturating_sub(t_rec_ns) as f64 / 1e6)
        .fold(0.0, f64::max);
    let live_count = outcomes.iter().filter(|(_, o)| o.live_ns.is_some()).count();
    let ms =
        |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a) as f64 / 1e6);
    let steady_cpu_ms = ms(cpu0, cpu_cut);
    let steady_s = (t_cut - start).as_secs_f64();
    let baseline_ms_per_s = steady_cpu_ms.map(|c| c / steady_s.max(1e-9));
    let cut_cpu_ms = ms(cpu_cut, cpu_rec);
    let storm_cpu_ms = ms(cpu_rec, cpu_live);
    let live_s = live_wall.as_secs_f64();
    let storm_excess_ms = storm_cpu_ms
        .zip(baseline_ms_per_s)
        .map(|(c, b)| c - b * live_s);
    let delta = |name: &str| {
        scraped0
            .as_ref()
            .zip(scraped1.as_ref())
            .and_then(|(m0, m1)| Some(m1.get(name)? - m0.get(name).unwrap_or(0.0)))
    };
    let replayed = delta("pgws_replayed_total");
    let resume_gaps = delta("pgws_resume_gaps_total");
    let sent: u64 = results.iter().flat_map(|r| r.sent.iter()).sum();
    let max_lag_ms = results.iter().map(|r| r.max_lag_us).fold(0.0, f64::max) / 1e3;
    let live_spread = spread(live_lat);
    let connect_spread = spread(connect_ms);

    let params = json!({
        "clients": a.clients, "channels": a.channels, "rate": a.rate, "publishers": a.publishers,
        "payload": a.payload, "cut_at_s": a.cut_at, "down_ms": a.down_ms, "duration_s": a.duration,
        "reconnect_concurrency": a.reconnect_concurrency.unwrap_or(a.clients), "threads": threads,
    });
    let mut rep = Report::new("sse-storm", &g.label, params);
    rep.line(conn_stats.human("streams"));
    rep.line(format!(
        "ready {ready}/{connected}; published {sent} notifications ({:.0}/s, max lag {max_lag_ms:.1} ms)",
        sent as f64 / a.duration
    ));
    rep.line(format!(
        "cut: {cut_done} streams closed by the client within {cut_ms:.1} ms; down {} ms",
        a.down_ms
    ));
    rep.line(format!(
        "reconnect: all requests sent within {last_req_ms:.1} ms, all connected after {} ms, \
         all live after {:.1} ms ({live_count} live, {} failed)",
        all_connected.map_or("?".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)),
        live_s * 1e3,
        storm.failed.load(Ordering::Relaxed)
    ));
    if let Some((p50, p99, max)) = live_spread {
        rep.line(format!(
            "per stream, resume request -> live: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
        ));
    }
    if let Some((p50, p99, max)) = connect_spread {
        rep.line(format!(
            "per stream, resume request -> response head: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
        ));
    }
    rep.line(format!(
        "server CPU: steady {} ms/s; cut phase {} ms; reconnect -> all live {} ms ({} ms above the steady rate)",
        baseline_ms_per_s.map_or("?".into(), |c| format!("{c:.1}")),
        cut_cpu_ms.map_or("?".into(), |c| format!("{c:.1}")),
        storm_cpu_ms.map_or("?".into(), |c| format!("{c:.1}")),
        storm_excess_ms.map_or("?".into(), |c| format!("{c:.1}")),
    ));
    rep.line(format!(
        "deliveries: expected {} delivered {} lost {} duplicated {} out-of-order {} (drain: {drain_end:?}); \
         gap events {gaps}, replayed (server) {}, resume gaps (server) {}",
        tally.expected,
        tally.delivered,
        tally.lost,
        tally.duplicated,
        tally.out_of_order,
        replayed.map_or("?".into(), |r| format!("{r:.0}")),
        resume_gaps.map_or("?".into(), |r| format!("{r:.0}")),
    ));
    if errors + unparsed + misrouted > 0
        || !ended_before.is_empty()
        || !reconnect_errors.is_empty()
        || !ended_after.is_empty()
    {
        rep.line(format!(
            "anomalies: error frames {errors}, unparsed {unparsed}, misrouted {misrouted}, \
             ended before the cut {ended_before:?}, reconnect errors {reconnect_errors:?}, \
             ended after {ended_after:?}"
        ));
    }
    rep.usage(&usage);
    rep.set("connect", &conn_stats);
    rep.set("ready", ready);
    rep.set("published", sent);
    rep.set("publish_max_lag_ms", max_lag_ms);
    rep.set("cut_streams", cut_done);
    rep.set("cut_ms", cut_ms);
    rep.set("last_request_ms", last_req_ms);
    rep.set(
        "first_request_delay_ms",
        first_req.saturating_sub(t_rec_ns) as f64 / 1e6,
    );
    rep.set(
        "all_connected_ms",
        all_connected.map(|d| d.as_secs_f64() * 1e3),
    );
    rep.set("all_live_ms", all_live.map(|d| d.as_secs_f64() * 1e3));
    rep.set("live", live_count);
    rep.set("failed", storm.failed.load(Ordering::Relaxed));
    rep.set(
        "live_ms",
        live_spread.map(|(p50, p99, max)| json!({"p50": p50, "p99": p99, "max": max})),
    );
    rep.set(
        "connect_ms",
        connect_spread.map(|(p50, p99, max)| json!({"p50": p50, "p99": p99, "max": max})),
    );
    rep.set("server_cpu_steady_ms_per_s", baseline_ms_per_s);
    rep.set("server_cpu_cut_ms", cut_cpu_ms);
    rep.set("server_cpu_storm_ms", storm_cpu_ms);
    rep.set("server_cpu_storm_excess_ms", storm_excess_ms);
    rep.set("deliveries", tally);
    rep.set("drain", drain_end);
    rep.set("gap_events", gaps);
    rep.set("error_frames", errors);
    rep.set("replayed", replayed);
    rep.set("resume_gaps", resume_gaps);
    rep.set("ended_before_cut", ended_before);
    rep.set("ended_after", ended_after);
    rep.set("reconnect_errors", reconnect_errors);
    Ok(rep)
}
