//! `chaos`: minutes of traffic on many channels while faults are injected at random, then a
//! per-channel continuity check of what every subscriber received (see [`crate::chaos_check`]).
//!
//! The run owns everything it breaks: a PostgreSQL cluster (`pgws::embedded::Cluster`,
//! `wal_level=logical`), a TCP proxy between pgws and PostgreSQL ([`crate::chaos_proxy`]) and
//! the pgws process (`--pgws-bin`, restarted on the same port with the same settings). Faults,
//! one at a time, with random pauses: subscribers cut (they resume from their last position),
//! the walsender killed (WAL) or the LISTEN connection killed (NOTIFY), PostgreSQL restarted
//! (fast shutdown), pgws restarted (SIGTERM or SIGKILL), the network to the database cut
//! (connections reset, new ones refused or blackholed) for a while.
//!
//! The end: faults stop and heal, the run waits (bounded) until pgws is ready, then every
//! publisher sends one more message per channel that must be acknowledged, and the run waits
//! (bounded) until every subscriber has reached that last number on each of its channels.
//! Then the logs are checked: WAL mode passes with 0 lost, 0 duplicated, 0 out of order; NOTIFY
//! mode with 0 silent losses (and no duplicate, reordering or phantom either).

use crate::chaos_check::{self, Outcome, SubLog, Tally};
use crate::chaos_clients::{self, Ctx, Phase, Progress, Rng, SubSpec};
use crate::chaos_proxy::{CutMode, Proxy, Upstream};
use crate::cli::{ChaosArgs, Fault, Global};
use crate::report::{Report, Window};
use crate::target::Target;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// The pgws process under test.
struct Pgws {
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<tokio::process::Child>,
    /// pgws's port and its admin port.
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Pgws {
    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = tokio::process::Command::new(&self.bin)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops it: SIGTERM (graceful) or SIGKILL; waits for the exit.
    async fn stop(&mut self, graceful: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if graceful && let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = child.kill().await;
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
}

/// `GET path` on `addr`: the status, or `None` when there is no answer.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf);
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .ok()
        .flatten()
}

/// Waits until `GET path` answers 200; `false` after `limit`.
async fn wait_status(addr: SocketAddr, path: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if http_status(addr, path).await == Some(200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A free loopback port (bound and released: pgws binds it next, with SO_REUSEADDR).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Injected faults, by kind (and what could not be injected).
#[derive(Debug, Default)]
struct FaultLog {
    counts: BTreeMap<String, u64>,
    skipped: BTreeMap<String, u64>,
    outage_s: f64,
    lines: Vec<String>,
}

/// What the fault task needs.
struct Breakables {
    cluster: Arc<Mutex<pgws::embedded::Cluster>>,
    proxy: Proxy,
    pgws: tokio::sync::Mutex<Pgws>,
    cuts: Vec<watch::Sender<u64>>,
    pg: String,
    wal: bool,
}

fn fault_name(f: Fault) -> &'static str {
    match f {
        Fault::ClientCut => "client-cut",
        Fault::WalsenderKill => "walsender-kill",
        Fault::ListenKill => "listen-kill",
        Fault::PgRestart => "pg-restart",
        Fault::PgwsRestart => "pgws-restart",
        Fault::NetCut => "net-cut",
    }
}

/// Terminates the backends `sql` selects (its one result: how many).
async fn terminate(pg: &str, sql: &str) -> Result<i64> {
    let c = crate::pg::connect(pg, Duration::from_secs(5)).await?;
    let n: i64 = tokio::time::timeout(Duration::from_secs(5), c.query_one(sql, &[]))
        .await
        .context("timeout")??
        .get(0);
    Ok(n)
}

/// Injects one fault; `Ok(false)` when there was nothing to break (e.g. no walsender yet).
async fn inject(
    b: &Breakables,
    f: Fault,
    rng: &mut Rng,
    max_outage: f64,
    log: &mut FaultLog,
) -> Result<bool> {
    let t0 = Instant::now();
    let detail = match f {
        Fault::ClientCut => {
            let n = (b.cuts.len() / 4).max(1);
            for _ in 0..n {
                b.cuts[rng.below(b.cuts.len())].send_modify(|g| *g += 1);
            }
            format!("{n} subscribers")
        }
        Fault::WalsenderKill => {
            let n = terminate(
                &b.pg,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication \
                 WHERE application_name = 'pgws-wal'",
            )
            .await?;
            if n == 0 {
                return Ok(false);
            }
            format!("{n} walsender")
        }
        Fault::ListenKill => {
            let n = terminate(
                &b.pg,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = 'pgws' AND pid <> pg_backend_pid() \
                 AND (query ILIKE 'LISTEN%' OR query ILIKE '%pg_notification_queue_usage%')",
            )
            .await?;
            if n == 0 {
                return Ok(false);
            }
            format!("{n} LISTEN backend")
        }
        Fault::PgRestart => {
            let down = rng.secs(0.0, max_outage / 2.0);
            let c = b.cluster.clone();
            tokio::task::spawn_blocking(move || c.lock().expect("cluster").pause()).await??;
            tokio::time::sleep(down).await;
            let c = b.cluster.clone();
            tokio::task::spawn_blocking(move || c.lock().expect("cluster").resume()).await??;
            log.outage_s += t0.elapsed().as_secs_f64();
            format!("down {:.1} s", t0.elapsed().as_secs_f64())
        }
        Fault::PgwsRestart => {
            let graceful = rng.below(2) == 0;
            let mut p = b.pgws.lock().await;
            p.stop(graceful).await;
            tokio::time::sleep(rng.secs(0.0, 1.5)).await;
            p.start()?;
            let addr = p.addr;
            drop(p);
            if !wait_status(addr, "/", Duration::from_secs(30)).await {
                bail!("pgws did not come back within 30 s");
            }
            format!(
                "{} , serving again after {:.1} s",
                if graceful { "SIGTERM" } else { "SIGKILL" },
                t0.elapsed().as_secs_f64()
            )
        }
        Fault::NetCut => {
            let mode = if rng.below(2) == 0 {
                CutMode::Refuse
            } else {
                CutMode::Blackhole
            };
            let down = rng.secs(1.0, max_outage);
            b.proxy.cut(mode);
            tokio::time::sleep(down).await;
            b.proxy.heal();
            log.outage_s += down.as_secs_f64();
            format!("{} for {:.1} s", mode.name(), down.as_secs_f64())
        }
    };
    let _ = b.wal;
    log.lines.push(format!("{} {detail}", fault_name(f)));
    Ok(true)
}

/// Runs the scenario.
pub async fn run(g: &Global, a: &ChaosArgs, threads: usize) -> Result<Report> {
    let wal = g.wal();
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let faults: Vec<Fault> = if a.faults.is_empty() {
        let kill = if wal {
            Fault::WalsenderKill
        } else {
            Fault::ListenKill
        };
        vec![
            Fault::ClientCut,
            kill,
            Fault::PgRestart,
            Fault::PgwsRestart,
            Fault::NetCut,
        ]
    } else {
        a.faults.clone()
    };
    if a.channels == 0 || a.subscribers == 0 || a.writer_channels > a.channels {
        bail!("need channels > 0, subscribers > 0 and writer-channels <= channels");
    }
    if a.writer_channels < a.channels && a.sql_publishers == 0 {
        bail!("channels without a writer need --sql-publishers > 0");
    }
    let mode = if wal { "wal" } else { "notify" };
    let mut report = Report::new(
        "chaos",
        &g.label,
        json!({
            "source": mode, "duration_s": a.duration, "channels": a.channels,
            "writer_channels": a.writer_channels, "sql_publishers": a.sql_publishers,
            "subscribers": a.subscribers, "channels_per_subscriber": a.channels_per_subscriber,
            "rate": a.rate, "payload": a.payload, "fault_every_s": a.fault_every,
            "max_outage_s": a.max_outage, "faults": faults.iter().map(|f| fault_name(*f)).collect::<Vec<_>>(),
            "seed": seed, "settle_timeout_s": a.settle_timeout,
        }),
    );
    eprintln!("chaos: {mode} mode, seed {seed}; starting PostgreSQL");
    let cluster = tokio::task::spawn_blocking(|| {
        pgws::embedded::Cluster::start_with_settings(&[("max_slot_wal_keep_size", "-1")])
    })
    .await?
    .context("starting the PostgreSQL cluster")?;
    let pg = cluster.connection_string("postgres");
    let socket = cluster
        .socket_dir()
        .join(format!(".s.PGSQL.{}", cluster.port()));
    let user = cluster.user.clone();
    let cluster = Arc::new(Mutex::new(cluster));
    {
        let c = crate::pg::connect(&pg, Duration::from_secs(10)).await?;
        c.batch_execute(
            "CREATE TABLE chaos_ledger (channel int NOT NULL, seq bigint NOT NULL, \
             PRIMARY KEY (channel, seq))",
        )
        .await
        .context("creating the ledger table")?;
    }
    let proxy = Proxy::start(Upstream::Unix(socket)).await?;
    let port = free_port()?;
    let admin_port = free_port()?;
    let log = a.log.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("pgws-chaos-{mode}-{}.log", std::process::id()))
    });
    let _ = std::fs::remove_file(&log);
    let db_uri = format!(
        "host=127.0.0.1 port={} user={user} dbname=postgres sslmode=disable",
        proxy.addr().port()
    );
    let mut args: Vec<String> = [
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--db-uri",
        &db_uri,
        "--jwt-secret",
        &g.secret,
        "--listen-channel",
        &g.listen_channel,
        "--source",
        mode,
        "--node-id",
        "chaos",
        "--admin-address",
        &format!("127.0.0.1:{admin_port}"),
        "--check-listener-interval",
        "1000",
        "--pool-size",
        "4",
        "--shutdown-timeout",
        "2",
        "--rate-connections",
        "0",
        "--replay-messages",
        "1000000",
        "--replay-bytes",
        "268435456",
        "--replay-age",
        "3600",
        "--replay-memory",
        "1073741824",
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    override_args(&mut args, &a.pgws_arg);
    let mut pgws = Pgws {
        bin: a.pgws_bin.clone(),
        args,
        log: log.clone(),
        child: None,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
    };
    pgws.start()?;
    if !wait_status(pgws.admin, "/ready", Duration::from_secs(60)).await {
        pgws.stop(false).await;
        bail!("pgws was not ready within 60 s (log: {})", log.display());
    }
    let server_pid = pgws.pid();
    let (phase_tx, phase) = watch::channel(Phase::Running);
    let ctx = Arc::new(Ctx {
        target: Target::new("127.0.0.1", port, g.source_addrs)?,
        secret: g.secret.clone(),
        prefix: g.listen_channel.clone(),
        wal,
        pg: pg.clone(),
        pad: "x".repeat(a.payload),
        phase,
    });
    // Subscribers: half websockets, half event streams, each on a few channels.
    let mut rng = Rng::new(seed);
    let mut cuts = Vec::new();
    let mut progress = Vec::new();
    let mut subs = Vec::new();
    for i in 0..a.subscribers {
        let k = a.channels_per_subscriber.clamp(1, a.channels);
        let channels: Vec<usize> = (0..k).map(|j| (i + j * (1 + i % 3)) % a.channels).collect();
        let mut channels_unique = channels.clone();
        channels_unique.sort_unstable();
        channels_unique.dedup();
        let spec = SubSpec {
            idx: i,
            sse: i % 2 == 1,
            channels: channels_unique,
        };
        let p = Arc::new(Progress::new(spec.channels.len()));
        let (cut_tx, cut_rx) = watch::channel(0u64);
        cuts.push(cut_tx);
        progress.push((spec.channels.clone(), p.clone()));
        subs.push(tokio::spawn(chaos_clients::subscriber(
            spec,
            ctx.clone(),
            p,
            cut_rx,
            rng.next_u64(),
        )));
    }
    let all_connected = async {
        while !progress
            .iter()
            .all(|(_, p)| p.connected.load(Ordering::Relaxed))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), all_connected)
        .await
        .is_err()
    {
        bail!("not every subscriber connected within 30 s");
    }
    eprintln!(
        "chaos: pgws {} on {port} (log {}), {} subscribers connected; traffic and faults for {} s",
        a.pgws_bin.display(),
        log.display(),
        a.subscribers,
        a.duration
    );
    // Publishers: the first `writer_channels` channels by websocket writers, the rest by SQL.
    let per_channel = a.rate / a.channels as f64;
    let interval = Duration::from_secs_f64(1.0 / per_channel.max(0.01));
    let ack_wait = if wal {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(5)
    };
    let mut pubs = Vec::new();
    for c in 0..a.writer_channels {
        pubs.push(tokio::spawn(chaos_clients::writer(
            a.subscribers + c,
            c,
            ctx.clone(),
            interval,
            ack_wait,
        )));
    }
    let sql_channels: Vec<usize> = (a.writer_channels..a.channels).collect();
    let publishers = a.sql_publishers.min(sql_channels.len()).max(1);
    for p in 0..publishers {
        let mine: Vec<usize> = sql_channels
            .iter()
            .enumerate()
            .filter(|(i, _)| i % publishers == p)
            .map(|(_, c)| *c)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let every = interval.div_f64(mine.len() as f64);
        pubs.push(tokio::spawn(chaos_clients::sql_publisher(
            mine,
            ctx.clone(),
            every,
        )));
    }
    let window = Window::start(server_pid);
    let t0 = Instant::now();
    let breakables = Arc::new(Breakables {
        cluster: cluster.clone(),
        proxy,
        pgws: tokio::sync::Mutex::new(pgws),
        cuts,
        pg: pg.clone(),
        wal,
    });
    // Faults until the end of the traffic phase.
    let fault_task = {
        let b = breakables.clone();
        let faults = faults.clone();
        let until = t0 + Duration::from_secs_f64(a.duration);
        let every = a.fault_every;
        let max_outage = a.max_outage;
        let mut rng = Rng::new(seed ^ 0xfa17);
        tokio::spawn(async move {
            let mut log = FaultLog::default();
            if faults.is_empty() {
                return log;
            }
            loop {
                let pause = rng.secs(every * 0.5, every * 1.5);
                if Instant::now() + pause >= until {
                    break;
                }
                tokio::time::sleep(pause).await;
                let f = faults[rng.below(faults.len())];
                let at = t0.elapsed().as_secs_f64();
                match inject(&b, f, &mut rng, max_outage, &mut log).await {
                    Ok(true) => {
                        *log.counts.entry(fault_name(f).into()).or_default() += 1;
                        let line = log.lines.pop().unwrap_or_default();
                        eprintln!("chaos: {at:7.1} s  {line}");
                        log.lines.push(format!("{at:.1} s {line}"));
                    }
                    Ok(false) => {
                        *log.skipped.entry(fault_name(f).into()).or_default() += 1;
                    }
                    Err(e) => {
                        eprintln!("chaos: {at:7.1} s  {} failed: {e:#}", fault_name(f));
                        *log.skipped
                            .entry(format!("{} (failed)", fault_name(f)))
                            .or_default() += 1;
                        log.lines
                            .push(format!("{at:.1} s {} failed: {e:#}", fault_name(f)));
                    }
                }
            }
            log
        })
    };
    let faults_log = fault_task.await?;
    let remaining = Duration::from_secs_f64(a.duration).saturating_sub(t0.elapsed());
    tokio::time::sleep(remaining).await;
    let traffic_s = t0.elapsed().as_secs_f64();
    // The end: pgws ready, one acknowledged message per channel, everyone caught up.
    let admin = breakables.pgws.lock().await.admin;
    let ready = wait_status(admin, "/ready", Duration::from_secs(120)).await;
    eprintln!("chaos: faults over; pgws ready: {ready}; closing each channel");
    let _ = phase_tx.send(Phase::Closing);
    let t_close = Instant::now();
    let mut published: Vec<Vec<Outcome>> = vec![Vec::new(); a.channels];
    let mut publish_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut unclosed = 0;
    let joined = async {
        let mut out = Vec::new();
        for p in pubs {
            out.push(p.await);
        }
        out
    };
    let results = match tokio::time::timeout(Duration::from_secs(120), joined).await {
        Ok(r) => r,
        Err(_) => {
            let _ = phase_tx.send(Phase::Stop);
            bail!("publishers did not close their channels within 120 s");
        }
    };
    for r in results {
        let r = r?;
        if !r.closed {
            unclosed += 1;
        }
        for (c, o) in r.channels.iter().zip(r.outcomes) {
            published[*c] = o;
        }
        for (k, v) in r.errors {
            *publish_errors.entry(k).or_default() += v;
        }
    }
    // The ledger says exactly which SQL messages were committed.
    let mut acked_not_committed = 0u64;
    {
        let c = crate::pg::connect(&pg, Duration::from_secs(10)).await?;
        let rows = c
            .query("SELECT channel, seq FROM chaos_ledger", &[])
            .await
            .context("reading the ledger")?;
        let mut committed: Vec<Vec<bool>> =
            published.iter().map(|p| vec![false; p.len()]).collect();
        for row in rows {
            let (ch, seq): (i32, i64) = (row.get(0), row.get(1));
            if let Some(v) = committed
                .get_mut(ch as usize)
                .and_then(|v| v.get_mut(seq as usize))
            {
                *v = true;
            }
        }
        for c in a.writer_channels..a.channels {
            for (o, &done) in published[c].iter_mut().zip(&committed[c]) {
                if *o == Outcome::Certain && !done {
                    acked_not_committed += 1;
                }
                *o = if done {
                    Outcome::Certain
                } else {
                    Outcome::Absent
                };
            }
        }
    }
    let targets: Vec<i64> = published
        .iter()
        .map(|p| {
            p.iter()
                .rposition(|o| *o == Outcome::Certain)
                .map_or(-1, |i| i as i64)
        })
        .collect();
    let caught_up = || {
        progress.iter().all(|(chs, p)| {
            chs.iter()
                .zip(&p.max)
                .all(|(c, m)| m.load(Ordering::Relaxed) >= targets[*c])
        })
    };
    let settle_deadline = Instant::now() + Duration::from_secs_f64(a.settle_timeout);
    while !caught_up() && Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settle_s = t_close.elapsed().as_secs_f64();
    let stalled: usize = progress
        .iter()
        .map(|(chs, p)| {
            chs.iter()
                .zip(&p.max)
                .filter(|(c, m)| m.load(Ordering::Relaxed) < targets[**c])
                .count()
        })
        .sum();
    let usage = window.finish(threads);
    let _ = phase_tx.send(Phase::Stop);
    let mut logs: Vec<SubLog> = Vec::new();
    let (mut connects, mut cuts_done, mut ended) = (0u64, 0u64, 0u64);
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut gaps: BTreeMap<String, u64> = BTreeMap::new();
    let mut strange: BTreeMap<String, u64> = BTreeMap::new();
    for s in subs {
        let r = tokio::time::timeout(Duration::from_secs(10), s)
            .await
            .context("a subscriber did not stop")??;
        connects += r.connects;
        cuts_done += r.cuts;
        ended += r.ended;
        for (k, v) in r.refused {
            *refused.entry(k).or_default() += v;
        }
        for (k, v) in r.gaps {
            *gaps.entry(k).or_default() += v;
        }
        for (k, v) in r.strange {
            *strange.entry(k).or_default() += v;
        }
        logs.push(r.log);
    }
    let tally: Tally = chaos_check::check(&published, &logs, wal);
    // Shut down: pgws first (its connections go through the proxy), then the cluster.
    let b = Arc::try_unwrap(breakables)
        .map_err(|_| anyhow::anyhow!("the fault task still holds the run"))?;
    b.pgws.into_inner().stop(true).await;
    drop(b.proxy);
    drop(b.cluster);
    if let Ok(c) = Arc::try_unwrap(cluster) {
        let c = c.into_inner().expect("cluster");
        let _ = tokio::task::spawn_blocking(move || c.stop()).await;
    }
    let count = |o: Outcome| published.iter().flatten().filter(|x| **x == o).count() as u64;
    let (certain, uncertain, absent) = (
        count(Outcome::Certain),
        count(Outcome::Uncertain),
        count(Outcome::Absent),
    );
    let mut violations: Vec<String> = Vec::new();
    if wal && tally.lost > 0 {
        violations.push(format!("{} lost", tally.lost));
    }
    if !wal && tally.silent > 0 {
        violations.push(format!("{} lost without a Gap", tally.silent));
    }
    for (n, what) in [
        (tally.duplicated, "duplicated"),
        (tally.out_of_order, "out of order"),
        (tally.phantom, "phantom (never committed)"),
        (acked_not_committed, "acknowledged but not in the ledger"),
        (
            strange.get("foreign_channel").copied().unwrap_or(0),
            "on a channel not subscribed",
        ),
    ] {
        if n > 0 {
            violations.push(format!("{n} {what}"));
        }
    }
    if !ready {
        violations.push("pgws not ready after the faults".into());
    }
    if unclosed > 0 {
        violations.push(format!(
            "{unclosed} publishers could not close their channels"
        ));
    }
    let pass = violations.is_empty();
    report.set("verdict", if pass { "pass" } else { "fail" });
    report.set("violations", &violations);
    report.set("faults", &faults_log.counts);
    report.set("faults_skipped", &faults_log.skipped);
    report.set("fault_log", &faults_log.lines);
    report.set("outage_s", faults_log.outage_s);
    report.set("traffic_s", traffic_s);
    report.set("settle_s", settle_s);
    report.set(
        "published",
        json!({"numbers": certain + uncertain + absent, "committed": certain, "uncertain": uncertain, "not_committed": absent}),
    );
    report.set("publish_errors", &publish_errors);
    report.set("tally", &tally);
    report.set("stalled", stalled);
    report.set("gaps_by_reason", &gaps);
    report.set(
        "subscribers",
        json!({"connects": connects, "cuts": cuts_done, "ended_by_server": ended, "refused": refused, "strange": strange}),
    );
    report.set("pgws_log", log.display().to_string());
    report.line(format!(
        "{mode} mode, {traffic_s:.0} s of traffic on {} channels ({} by websocket writers), {} subscribers (websocket and SSE), seed {seed}",
        a.channels, a.writer_channels, a.subscribers
    ));
    report.line(format!(
        "faults: {} (skipped: {}), {:.1} s of database outage",
        fmt_map(&faults_log.counts),
        fmt_map(&faults_log.skipped),
        faults_log.outage_s
    ));
    report.line(format!(
        "published: {} numbers, {certain} committed, {uncertain} uncertain (failed publishes: {}), {absent} not committed",
        certain + uncertain + absent,
        fmt_map(&publish_errors)
    ));
    report.line(format!(
        "received: {} of {} expected; lost {} (announced by a Gap {}, silent {}), duplicated {}, out of order {}, phantom {}",
        tally.received, tally.expected, tally.lost, tally.announced, tally.silent,
        tally.duplicated, tally.out_of_order, tally.phantom
    ));
    report.line(format!(
        "subscribers: {connects} streams opened, {cuts_done} cut by the tool, {ended} ended by the server; Gap events: {}; end: caught up in {settle_s:.1} s, {stalled} (subscriber, channel) pairs short",
        fmt_map(&gaps)
    ));
    for e in &tally.examples {
        report.line(format!("  {e}"));
    }
    report.usage(&usage);
    report.line(format!(
        "verdict: {}{}",
        if pass { "PASS" } else { "FAIL: " },
        violations.join(", ")
    ));
    Ok(report)
}

/// Appends `extra` flags to `args`, removing a default flag (and its value) that `extra` sets
/// again (pgws refuses a flag given twice).
fn override_args(args: &mut Vec<String>, extra: &[String]) {
    let is_flag = |s: &str| s.starts_with("--");
    for flag in extra.iter().filter(|s| is_flag(s)) {
        let name = flag.split('=').next().unwrap_or(flag);
        if let Some(i) = args.iter().position(|a| a == name) {
            let with_value = args.get(i + 1).is_some_and(|v| !is_flag(v));
            args.drain(i..i + 1 + usize::from(with_value));
        }
    }
    args.extend(extra.iter().cloned());
}

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_flags_replace_defaults() {
        let mut args: Vec<String> = ["--a", "1", "--b", "--c", "3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        override_args(&mut args, &["--a".into(), "9".into(), "--c=4".into()]);
        assert_eq!(args, ["--b", "--a", "9", "--c=4"]);
    }
}
