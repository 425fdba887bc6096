//! Fanout publishers: one PostgreSQL connection each, sending paced,
//! pipelined `pg_notify` calls on the listen channel with per-(publisher,
//! channel) sequence numbers and send timestamps.

use crate::message::{self, now_ns};
use crate::pacing::Schedule;
use crate::pg;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// Configuration of one publisher.
#[derive(Debug, Clone)]
pub struct PubCfg {
    /// Publisher id (embedded as `pub`).
    pub id: u32,
    /// Number of publishers (for spreading messages over channels).
    pub of: usize,
    /// Channel names.
    pub channels: Arc<Vec<String>>,
    /// PostgreSQL channel the server listens on.
    pub listen_channel: String,
    /// Payload size in bytes.
    pub payload: usize,
    /// Notifications per transaction.
    pub batch: usize,
    /// Queries in flight.
    pub window: usize,
    /// When messages are due.
    pub schedule: Schedule,
    /// Publish with `pg_logical_emit_message` (a server reading the WAL).
    pub wal: bool,
}

/// What one publisher did.
#[derive(Debug, Clone, Default)]
pub struct PubResult {
    /// Messages attempted per channel (= next sequence number).
    pub sent: Vec<u64>,
    /// Messages whose query failed.
    pub failed: u64,
    /// First error text.
    pub first_error: Option<String>,
    /// Largest delay behind schedule, microseconds.
    pub max_lag_us: f64,
}

type Pending = Pin<Box<dyn Future<Output = (u64, Result<u64, tokio_postgres::Error>)> + Send>>;

/// Publishes this publisher's share of messages; bounded by the schedule's
/// count and by `deadline`.
pub async fn run(client: Client, cfg: PubCfg, start: Instant, deadline: Instant) -> PubResult {
    let client = Arc::new(client);
    let k = cfg.channels.len().max(1);
    let mut res = PubResult {
        sent: vec![0; k],
        ..PubResult::default()
    };
    let batch = cfg.batch.max(1);
    let sql = if batch == 1 {
        pg::one(cfg.wal)
    } else {
        pg::many(cfg.wal)
    };
    let stmt = match client.prepare(sql).await {
        Ok(s) => s,
        Err(e) => {
            res.first_error = Some(e.to_string());
            return res;
        }
    };
    let mut inflight: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut j = 0u64;
    let count = cfg.schedule.count;
    while j < count && Instant::now() < deadline {
        if let Some(at) = cfg.schedule.due(j, start) {
            let now = Instant::now();
            if at > now {
                loop {
                    if inflight.is_empty() {
                        tokio::time::sleep_until(at.into()).await;
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => break,
                        r = inflight.next() => if let Some(r) = r { settle(&mut res, r) },
                    }
                }
            } else {
                res.max_lag_us = res.max_lag_us.max((now - at).as_secs_f64() * 1e6);
            }
        }
        while inflight.len() >= cfg.window.max(1) {
            if let Some(r) = inflight.next().await {
                settle(&mut res, r);
            }
        }
        let n = batch.min((count - j) as usize);
        let mut texts = Vec::with_capacity(n);
        let t = now_ns();
        for i in 0..n as u64 {
            let ch = ((j + i) as usize * cfg.of + cfg.id as usize) % k;
            let seq = res.sent[ch];
            res.sent[ch] += 1;
            texts.push(message::fanout(
                &cfg.channels[ch],
                seq,
                cfg.id,
                t,
                cfg.payload,
            ));
        }
        j += n as u64;
        let client = client.clone();
        let stmt = stmt.clone();
        let listen = cfg.listen_channel.clone();
        let n64 = n as u64;
        inflight.push_back(Box::pin(async move {
            let r = if n64 == 1 {
                client.execute(&stmt, &[&listen, &texts[0]]).await
            } else {
                client.execute(&stmt, &[&listen, &texts]).await
            };
            (n64, r)
        }));
    }
    let drain_deadline = deadline.max(Instant::now() + Duration::from_secs(30));
    while let Ok(Some(r)) = tokio::time::timeout_at(drain_deadline.into(), inflight.next()).await {
        settle(&mut res, r);
    }
    res
}

fn settle(res: &mut PubResult, (n, r): (u64, Result<u64, tokio_postgres::Error>)) {
    if let Err(e) = r {
        res.failed += n;
        if res.first_error.is_none() {
            res.first_error = Some(e.to_string());
        }
    }
}

/// Publishes one warm-up probe per channel in a single transaction.
pub async fn probe(
    wal: bool,
    client: &Client,
    listen_channel: &str,
    channels: &[String],
    round: u64,
) -> Result<u64, tokio_postgres::Error> {
    let texts: Vec<String> = channels.iter().map(|c| message::probe(c, round)).collect();
    client
        .execute(pg::many(wal), &[&listen_channel, &texts])
        .await
}
