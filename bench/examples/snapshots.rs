//! Snapshot benchmark (issue 23): N protocol-v2 clients subscribe to a table channel with
//! `snapshot: true` at the same moment (sockets opened first), and the run measures the time
//! until each is live (`snapshot_end`), the pgws process's CPU (utime+stime) and peak memory
//! (VmHWM, reset before the run), and the load on PostgreSQL (pg_stat_database deltas, peak
//! backends of the database). With `--since`, each subscription resumes from that position:
//! one of another stream (`<epoch>-…`) makes the server answer with a `gap` and a fresh
//! snapshot, the "re-snapshot storm" after a Gap. Prints one JSON line.
//!
//! `cargo run --release -p pgws-bench --example snapshots -- --port P --pid PID --pg CONN
//! --table public.big --rows 10000 --clients 100`

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Parser)]
struct Args {
    /// pgws's port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// pgws's process id (CPU and memory from /proc).
    #[arg(long)]
    pid: u32,
    /// The database pgws reads (statistics, backends).
    #[arg(long)]
    pg: String,
    /// The table, `schema.table`.
    #[arg(long)]
    table: String,
    /// Rows each snapshot must bring.
    #[arg(long)]
    rows: u64,
    /// Clients subscribing at once.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Resume from this position (a gap, then a fresh snapshot).
    #[arg(long)]
    since: Option<String>,
    /// pgws's JWT secret.
    #[arg(long, env = "PGWS_JWT_SECRET")]
    secret: String,
    /// Seconds the whole run may take.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Label of the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    rows: Option<Rows>,
    code: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Rows {
    Page(Vec<IgnoredAny>),
    Count(u64),
}

/// How one client's subscription ended.
#[derive(Debug)]
enum Ended {
    Live { after: Duration, rows: u64 },
    Failed(String),
}

fn proc_stat(pid: u32) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime), counted from 1 with pid and comm as 1 and 2.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")?;
    Ok((ticks as f64 / 100.0, hwm))
}

async fn pg_stats(db: &tokio_postgres::Client) -> Result<(i64, i64, i64)> {
    let r = db
        .query_one(
            "SELECT (xact_commit + xact_rollback)::int8, tup_returned::int8, tup_fetched::int8 \
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1), r.get(2)))
}

async fn client(
    addr: std::net::SocketAddr,
    url: String,
    request: String,
    rows: u64,
    mut go: watch::Receiver<Option<Instant>>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Result<Ended> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("sec-websocket-protocol", "pgws.v2".parse()?);
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
    ws.next().await.context("welcome")??;
    ready.send(()).await.ok();
    let started = loop {
        if let Some(t) = *go.borrow_and_update() {
            break t;
        }
        go.changed().await?;
    };
    ws.send(Message::text(request)).await?;
    let mut got = 0;
    while let Some(m) = ws.next().await {
        let text = match m? {
            Message::Text(t) => t,
            _ => continue,
        };
        let f: Frame = serde_json::from_str(text.as_str())?;
        match (f.kind.as_str(), f.rows) {
            ("snapshot", Some(Rows::Page(p))) => got += p.len() as u64,
            ("snapshot_end", Some(Rows::Count(n))) => {
                if n != rows || got != rows {
                    bail!("snapshot_end says {n} rows, {got} received, {rows} expected");
                }
                return Ok(Ended::Live {
                    after: started.elapsed(),
                    rows: got,
                });
            }
            ("snapshot_failed", _) => return Ok(Ended::Failed(f.code.unwrap_or_default())),
            ("error", _) => return Ok(Ended::Failed(format!("error {}", text.as_str()))),
            _ => {}
        }
    }
    bail!("socket closed before snapshot_end")
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (db, conn) = tokio_postgres::connect(&a.pg, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let channel = format!("table:{}", a.table);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"mode":"r","channels":[channel]}),
        &jsonwebtoken::EncodingKey::from_secret(a.secret.as_bytes()),
    )?;
    let url = format!("ws://127.0.0.1:{}/{token}", a.port);
    let mut request = json!({"type":"subscribe","id":1,"channel":channel,"snapshot":true});
    if let Some(s) = &a.since {
        request["since"] = json!(s);
    }
    let request = request.to_string();
    let (go_tx, go_rx) = watch::channel(None);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(a.clients);
    let tasks: Vec<_> = (0..a.clients)
        .map(|_| {
            tokio::spawn(client(
                ([127, 0, 0, 1], a.port).into(),
                url.clone(),
                request.clone(),
                a.rows,
                go_rx.clone(),
                ready_tx.clone(),
            ))
        })
        .collect();
    drop(ready_tx);
    for _ in 0..a.clients {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .context("sockets open in time")?
            .context("a client failed to connect")?;
    }
    // Peak memory from here on (writing 5 to clear_refs resets VmHWM to the current RSS).
    std::fs::write(format!("/proc/{}/clear_refs", a.pid), "5").context("reset VmHWM")?;
    let (cpu0, hwm0) = proc_stat(a.pid)?;
    let pg0 = pg_stats(&db).await?;
    // Backends of the database, sampled every 20 ms; the peak is read at the end.
    let peak = std::sync::Arc::new(AtomicI64::new(0));
    let sampler = {
        let pg = a.pg.clone();
        let peak = peak.clone();
        tokio::spawn(async move {
            let (db, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            loop {
                let n: i64 = db
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                         AND backend_type = 'client backend'",
                        &[],
                    )
                    .await?
                    .get(0);
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            #[allow(unreachable_code)]
            Ok::<_, anyhow::Error>(())
        })
    };
    let started = Instant::now();
    go_tx.send(Some(started))?;
    let mut live = Vec::new();
    let mut failed: std::collections::BTreeMap<String, usize> = Default::default();
    let deadline = Duration::from_secs(a.timeout);
    for t in tasks {
        match tokio::time::timeout(deadline.saturating_sub(started.elapsed()), t).await {
            Ok(Ok(Ok(Ended::Live { after, rows }))) => {
                debug_assert_eq!(rows, a.rows);
                live.push(after.as_secs_f64() * 1e3)
            }
            Ok(Ok(Ok(Ended::Failed(code)))) => *failed.entry(code).or_default() += 1,
            Ok(Ok(Err(e))) => *failed.entry(format!("client: {e}")).or_default() += 1,
            Ok(Err(e)) => *failed.entry(format!("task: {e}")).or_default() += 1,
            Err(_) => *failed.entry("timeout".into()).or_default() += 1,
        }
    }
    let all_live = started.elapsed().as_secs_f64() * 1e3;
    let (cpu1, hwm1) = proc_stat(a.pid)?;
    sampler.abort();
    let pg1 = pg_stats(&db).await?;
    live.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "label": a.label, "table": a.table, "rows": a.rows, "clients": a.clients,
            "resume": a.since.is_some(), "live": live.len(), "failed": failed,
            "all_live_ms": all_live, "live_p50_ms": pct(&live, 0.5), "live_max_ms": pct(&live, 1.0),
            "server_cpu_s": cpu1 - cpu0, "server_hwm_before_kib": hwm0, "server_hwm_kib": hwm1,
            "pg_xacts": pg1.0 - pg0.0, "pg_tup_returned": pg1.1 - pg0.1,
            "pg_tup_fetched": pg1.2 - pg0.2,
            "pg_backends_peak": peak.load(Ordering::Relaxed),
        })
    );
    Ok(())
}
