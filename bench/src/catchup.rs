//! `sse-catchup` scenario: a stream that missed M messages comes back with `Last-Event-ID`.
//!
//! A witness stream on a fresh channel sees an anchor message (sequence 0, whose `id:` is the
//! position the resuming stream stopped at) and then M more (1..=M), published in batches while
//! the witness keeps up (its outbox holds 4,096). Then, R times one after the other, a new
//! stream asks for the channel with `Last-Event-ID: <anchor>`; as soon as its response head
//! arrives one live message is published. Each resume is timed from the request to the last
//! replayed message and to the live one, checked (every number once, in order, the anchor not
//! repeated, no `Gap`), and charged the server CPU it used: `/proc/<pid>/task/*/schedstat`
//! (nanoseconds) from before the request until just after the live message arrived, with the
//! server otherwise idle. Resume r also replays the live messages of the r resumes before it.

use crate::cli::{CatchupArgs, Global};
use crate::message::{self, now_ns};
use crate::pg;
use crate::procstat;
use crate::report::{Report, Window};
use crate::scrape;
use crate::sseclient::{self, SseReader};
use crate::ssesub::{self, Receiver};
use crate::subscriber::Shared;
use crate::target::{self, Target};
use crate::token;
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::watch;

/// One measured resume.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resume {
    /// Request sent -> response head received, ms.
    pub head_ms: f64,
    /// Request sent -> last replayed message received, ms.
    pub replayed_ms: f64,
    /// Request sent -> live message received, ms.
    pub live_ms: f64,
    /// Messages the stream received (replayed + live).
    pub received: u64,
    /// Messages it should have received.
    pub expected: u64,
    /// Server's `pgws_replayed_total` increase (needs --admin).
    pub replayed_metric: Option<f64>,
    /// Server CPU from the request to the live message, ms (schedstat).
    pub server_cpu_ms: Option<f64>,
    /// The same from /proc/<pid>/stat ticks (10 ms resolution), ms.
    pub server_cpu_ticks_ms: Option<f64>,
    /// Generator CPU over the same window (all its threads, schedstat), ms.
    pub generator_cpu_ms: f64,
    /// Duplicates, out-of-order arrivals, `Gap` events, anchor repeated.
    pub duplicated: u64,
    /// Arrivals after a higher number.
    pub out_of_order: u64,
    /// `Gap` events received.
    pub gaps: u64,
    /// The anchor (the position resumed from) came again.
    pub anchor_repeated: bool,
    /// Why the resume failed, if it did.
    pub error: Option<String>,
}

/// What the witness stream shares with the scenario.
#[derive(Debug, Default)]
struct Witness {
    /// Numbered messages received.
    count: AtomicU64,
    /// `id:` of sequence 0.
    anchor: Mutex<Option<Vec<u8>>>,
    /// Why it ended early.
    ended: Mutex<Option<String>>,
}

async fn witness_loop(
    mut rd: SseReader<OwnedReadHalf>,
    channel: String,
    w: Arc<Witness>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rx = Receiver::new(channel, 1);
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let r = tokio::select! {
            biased;
            _ = &mut stopped => return,
            r = ssesub::read_batch(&mut rd, &mut rx, 0, &shared, |d, id, _| {
                if d.seq == 0 {
                    *w.anchor.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_vec());
                }
                w.count.fetch_add(1, Ordering::Relaxed);
            }) => r,
        };
        if let Err(e) = r {
            *w.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            return;
        }
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Runs the scenario.
pub async fn run(g: &Global, a: &CatchupArgs, threads: usize) -> Result<Report> {
    let conninfo = g.pg.as_deref().context("sse-catchup needs --pg")?;
    target::check_pg_conninfo(conninfo)?;
    let target = Target::new(&g.host, g.port, g.source_addrs)?;
    let admin = g.admin.as_deref().map(scrape::check_addr).transpose()?;
    if a.missed == 0 || a.missed > 1_000_000 || a.resumes == 0 || a.resumes > 1000 {
        bail!("--missed within 1..=1000000, --resumes within 1..=1000");
    }
    let timeout = Duration::from_millis(g.connect_timeout_ms);
    let path =
        token::channel_paths(&g.secret, "r", std::slice::from_ref(&a.channel), false)?.remove(0);
    let client = Arc::new(pg::connect(conninfo, timeout).await?);
    let many = client.prepare(pg::many(g.wal())).await?;
    let one = client.prepare(pg::one(g.wal())).await?;
    let total = a.missed + 1 + a.resumes as u64;
    let shared = Arc::new(Shared::new(1, total));

    // 1. The witness, then the anchor and the messages the resuming stream misses.
    let (wrd, _wwr) = sseclient::connect(&target, 0, &path, None, timeout, 65_536)
        .await
        .map_err(|e| anyhow!("witness stream: {e}"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let witness = Arc::new(Witness::default());
    let wtask = tokio::spawn(witness_loop(
        wrd,
        a.channel.clone(),
        witness.clone(),
        shared.clone(),
        stop_rx.clone(),
    ));
    eprintln!(
        "sse-catchup: publishing the anchor and {} messages on {}",
        a.missed, a.channel
    );
    let fill_start = Instant::now();
    let mut seq = 0u64;
    while seq <= a.missed {
        let n = (a.batch.max(1) as u64).min(a.missed + 1 - seq);
        let t = now_ns();
        let texts: Vec<String> = (seq..seq + n)
            .map(|s| message::fanout(&a.channel, s, 0, t, a.payload))
            .collect();
        client
            .execute(&many, &[&g.listen_channel, &texts])
            .await
            .context("publishing")?;
        seq += n;
        // Keep the witness within 2,000 messages (its outbox would close it at 4,096).
        let lag_deadline = Instant::now() + Duration::from_secs(30);
        while seq.saturating_sub(witness.count.load(Ordering::Relaxed)) > 2000 {
            if Instant::now() > lag_deadline {
                bail!("the witness stream stopped receiving");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while witness.count.load(Ordering::Relaxed) < a.missed + 1 {
        if let Some(e) = witness
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            bail!("the witness stream ended: {e}");
        }
        if Instant::now() > deadline {
            bail!(
                "the witness received {} of {} messages",
                witness.count.load(Ordering::Relaxed),
                a.missed + 1
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fill_s = fill_start.elapsed().as_secs_f64();
    let anchor = witness
        .anchor
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .context("the anchor message had no id")?;
    let window_before = match admin {
        Some(addr) => Some(scrape::scrape(addr).await?),
        None => None,
    };
    eprintln!(
        "  window filled in {fill_s:.2} s; resuming {} times from {}",
        a.resumes,
        String::from_utf8_lossy(&anchor)
    );

    // 1b. Optionally, a server restart between the fill and the resumes.
    let restarted;
    let (g, target, restart_s) = match &a.restart_cmd {
        Some(cmd) => {
            let _ = stop_tx.send(true);
            let t = Instant::now();
            let cmd = cmd.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .stderr(std::process::Stdio::inherit())
                    .output()
            })
            .await?
            .context("running --restart-cmd")?;
            if !out.status.success() {
                bail!("--restart-cmd failed: {}", out.status);
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let last = text.lines().last().unwrap_or_default().to_string();
            let (pid, port) = last
                .split_once(' ')
                .and_then(|(p, q)| Some((p.parse::<u32>().ok()?, q.trim().parse::<u16>().ok()?)))
                .with_context(|| format!("--restart-cmd printed {last:?}, not '<pid> <port>'"))?;
            let mut g2 = g.clone();
            g2.server_pid = Some(pid);
            g2.port = port;
            restarted = g2;
            let t2 = Target::new(&restarted.host, port, restarted.source_addrs)?;
            eprintln!(
                "  server restarted in {:.2} s: pid {pid} port {port}",
                t.elapsed().as_secs_f64()
            );
            (&restarted, t2, Some(t.elapsed().as_secs_f64()))
        }
        None => (g, target, None),
    };

    // 2. The resumes.
    let mut resumes = Vec::with_capacity(a.resumes);
    for r in 0..a.resumes {
        let live_seq = a.missed + 1 + r as u64;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let scraped0 = match admin {
            Some(addr) => scrape::scrape(addr).await.ok(),
            None => None,
        };
        let res = resume_once(
            g, a, &target, &path, &anchor, &client, &one, live_seq, r, timeout,
        )
        .await;
        let mut res = res.unwrap_or_else(|e| Resume {
            error: Some(format!("{e:#}")),
            ..Resume::default()
        });
        if let (Some(addr), Some(m0)) = (admin, scraped0)
            && let Ok(m1) = scrape::scrape(addr).await
        {
            res.replayed_metric = m1
                .get("pgws_replayed_total")
                .zip(m0.get("pgws_replayed_total"))
                .map(|(b, a)| b - a);
        }
        eprintln!(
            "  resume {}: head {:.2} ms, replayed {:.2} ms, live {:.2} ms, {} of {} received, \
             server CPU {} ms{}",
            r + 1,
            res.head_ms,
            res.replayed_ms,
            res.live_ms,
            res.received,
            res.expected,
            res.server_cpu_ms.map_or("?".into(), |c| format!("{c:.1}")),
            res.error
                .as_deref()
                .map_or(String::new(), |e| format!("; FAILED: {e}"))
        );
        resumes.push(res);
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), wtask).await;

    let ok: Vec<&Resume> = resumes.iter().filter(|r| r.error.is_none()).collect();
    let failed = resumes.len() - ok.len();
    let anomalies: u64 = ok
        .iter()
        .map(|r| r.duplicated + r.out_of_order + r.gaps + u64::from(r.anchor_repeated))
        .sum::<u64>()
        + ok.iter()
            .map(|r| r.expected.saturating_sub(r.received))
            .sum::<u64>();
    let med = |f: fn(&Resume) -> Option<f64>| median(ok.iter().filter_map(|r| f(r)).collect());
    let live_ms = med(|r| Some(r.live_ms));
    let replayed_ms = med(|r| Some(r.replayed_ms));
    let head_ms = med(|r| Some(r.head_ms));
    let cpu_ms = med(|r| r.server_cpu_ms);
    let cpu_ticks_ms = med(|r| r.server_cpu_ticks_ms);
    let gen_ms = med(|r| Some(r.generator_cpu_ms));

    let params = json!({
        "channel": a.channel, "missed": a.missed, "payload": a.payload, "batch": a.batch,
        "resumes": a.resumes, "read_buf": a.read_buf, "threads": threads,
        "restart": a.restart_cmd.is_some(),
    });
    let mut rep = Report::new("sse-catchup", &g.label, params);
    rep.line(format!(
        "window filled with the anchor + {} messages in {fill_s:.2} s; {} resumes from {}",
        a.missed,
        a.resumes,
        String::from_utf8_lossy(&anchor)
    ));
    if let Some(m) = &window_before {
        rep.line(format!(
            "server windows before the resumes: {} messages, {} bytes",
            m.get("pgws_window_messages").unwrap_or(0.0),
            m.get("pgws_window_bytes").unwrap_or(0.0)
        ));
    }
    rep.line(format!(
        "median over {} good resumes: head {:.2} ms, all replayed {:.2} ms, first live {:.2} ms; \
         server CPU {} ms (ticks: {} ms), generator CPU {:.1} ms",
        ok.len(),
        head_ms.unwrap_or(0.0),
        replayed_ms.unwrap_or(0.0),
        live_ms.unwrap_or(0.0),
        cpu_ms.map_or("?".into(), |c| format!("{c:.1}")),
        cpu_ticks_ms.map_or("?".into(), |c| format!("{c:.0}")),
        gen_ms.unwrap_or(0.0)
    ));
    rep.line(format!(
        "failed resumes {failed}; missing + duplicated + out-of-order + gaps + anchor repeats: {anomalies}"
    ));
    if let Some(s) = restart_s {
        rep.line(format!(
            "server restarted between the fill and the resumes in {s:.2} s"
        ));
    }
    rep.set("restart_s", restart_s);
    rep.set("fill_s", fill_s);
    rep.set("anchor", String::from_utf8_lossy(&anchor));
    rep.set(
        "window_before",
        window_before.as_ref().map(|m| {
            json!({
                "messages": m.get("pgws_window_messages"),
                "bytes": m.get("pgws_window_bytes"),
            })
        }),
    );
    rep.set("resumes", &resumes);
    rep.set("failed", failed);
    rep.set("anomalies", anomalies);
    rep.set("head_ms", head_ms);
    rep.set("replayed_ms", replayed_ms);
    rep.set("live_ms", live_ms);
    rep.set("server_cpu_ms", cpu_ms);
    rep.set("server_cpu_ticks_ms", cpu_ticks_ms);
    rep.set("generator_cpu_ms", gen_ms);
    rep.set(
        "witness_ended",
        witness
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    );
    Ok(rep)
}

/// One resume from `anchor`; publishes the live message `live_seq` once the head arrived.
#[allow(clippy::too_many_arguments)]
async fn resume_once(
    g: &Global,
    a: &CatchupArgs,
    target: &Target,
    path: &str,
    anchor: &[u8],
    client: &Arc<tokio_postgres::Client>,
    one: &tokio_postgres::Statement,
    live_seq: u64,
    r: usize,
    timeout: Duration,
) -> Result<Resume> {
    let pid = g.server_pid;
    let cpu0 = pid.and_then(procstat::cpu_ns);
    let window = Window::start(pid);
    let own0 = procstat::cpu_ns(std::process::id());
    let t0 = Instant::now();
    let (mut rd, _wr) = sseclient::connect(target, r + 1, path, Some(anchor), timeout, a.read_buf)
        .await
        .map_err(|e| anyhow!("resume request: {e}"))?;
    let head_ms = t0.elapsed().as_secs_f64() * 1e3;
    let text = message::fanout(&a.channel, live_seq, 0, now_ns(), a.payload);
    let (c, s, listen) = (client.clone(), one.clone(), g.listen_channel.clone());
    let publish = tokio::spawn(async move { c.execute(&s, &[&listen, &text]).await });

    let shared = Shared::new(1, live_seq + 1);
    let mut rx = Receiver::new(a.channel.clone(), 1);
    let (mut replayed_at, mut live_at) = (None, None);
    let mut anchor_repeated = false;
    let deadline = t0 + Duration::from_secs_f64(a.timeout.clamp(0.1, 600.0));
    while live_at.is_none() {
        let r = tokio::time::timeout_at(
            deadline.into(),
            ssesub::read_batch(&mut rd, &mut rx, 0, &shared, |d, _, _| {
                if d.seq == 0 {
                    anchor_repeated = true;
                }
                if d.seq + 1 == live_seq {
                    replayed_at = Some(t0.elapsed());
                }
                if d.seq == live_seq {
                    live_at = Some(t0.elapsed());
                }
            }),
        )
        .await;
        match r {
            Err(_) => bail!(
                "timed out after {:.1} s with {} messages",
                a.timeout,
                rx.res.frames
            ),
            Ok(Err(e)) => bail!("stream ended: {e} after {} messages", rx.res.frames),
            Ok(Ok(())) => {}
        }
    }
    let live = live_at.unwrap_or_default();
    // Let the server's threads be switched out, so that their run time is up to date.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let cpu1 = pid.and_then(procstat::cpu_ns);
    let usage = window.finish(1);
    let own1 = procstat::cpu_ns(std::process::id());
    drop(rd);
    publish
        .await
        .context("publish task")?
        .context("publishing the live message")?;
    let tr = &rx.res.trackers[0];
    Ok(Resume {
        head_ms,
        replayed_ms: replayed_at.unwrap_or(live).as_secs_f64() * 1e3,
        live_ms: live.as_secs_f64() * 1e3,
        received: tr.unique,
        expected: live_seq,
        replayed_metric: None,
        server_cpu_ms: cpu0
            .zip(cpu1)
            .map(|(a, b)| b.saturating_sub(a) as f64 / 1e6),
        server_cpu_ticks_ms: usage.server_cpu_s.map(|c| c * 1e3),
        generator_cpu_ms: own0
            .zip(own1)
            .map_or(0.0, |(a, b)| b.saturating_sub(a) as f64 / 1e6),
        duplicated: tr.duplicates,
        out_of_order: tr.out_of_order,
        gaps: rx.res.gaps,
        anchor_repeated,
        error: None,
    })
}
