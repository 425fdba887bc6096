//! Ingest writers: send paced text frames carrying writer id, sequence
//! number and send timestamp through the server, batching frames per write
//! call only when behind schedule; also relay pongs for the reader task.

use crate::message::{self, now_ns};
use crate::pacing::Schedule;
use crate::wsclient::WsWriter;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};

/// Progress of all writers, for the orchestrator.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages written so far.
    pub sent: AtomicU64,
    /// Writers done sending (or failed).
    pub finished: AtomicUsize,
}

/// Configuration of one writer.
#[derive(Debug, Clone)]
pub struct WriterCfg {
    /// Writer id (embedded as `w`).
    pub id: u32,
    /// Text size in bytes.
    pub payload: usize,
    /// Largest number of frames per write call.
    pub write_batch: usize,
    /// When messages are due.
    pub schedule: Schedule,
    /// Shared progress counters.
    pub progress: Arc<Progress>,
}

/// What one writer did.
#[derive(Debug, Clone, Default)]
pub struct WriterResult {
    /// Messages written.
    pub sent: u64,
    /// Largest delay behind schedule, microseconds.
    pub max_lag_us: f64,
    /// Write error, if any.
    pub error: Option<String>,
}

const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

async fn flush(wr: &mut WsWriter<OwnedWriteHalf>) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, wr.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("io: {:?}", e.kind())),
        Err(_) => Err("write timeout".into()),
    }
}

/// Sends the writer's messages, then keeps the socket open (answering
/// pings) until `stop` changes.
pub async fn run(
    mut wr: WsWriter<OwnedWriteHalf>,
    mut pongs: mpsc::Receiver<Vec<u8>>,
    cfg: WriterCfg,
    start: Instant,
    deadline: Instant,
    stop: watch::Receiver<bool>,
) -> (WriterResult, WsWriter<OwnedWriteHalf>) {
    let mut res = WriterResult::default();
    let ok = send_all(&mut wr, &mut pongs, &cfg, start, deadline, &mut res).await;
    cfg.progress.finished.fetch_add(1, Ordering::Relaxed);
    if ok {
        hold(&mut wr, &mut pongs, deadline, stop).await;
    }
    (res, wr)
}

async fn send_all(
    wr: &mut WsWriter<OwnedWriteHalf>,
    pongs: &mut mpsc::Receiver<Vec<u8>>,
    cfg: &WriterCfg,
    start: Instant,
    deadline: Instant,
    res: &mut WriterResult,
) -> bool {
    let mut batched = 0usize;
    let mut j = 0u64;
    while j < cfg.schedule.count && Instant::now() < deadline {
        if let Some(at) = cfg.schedule.due(j, start) {
            let now = Instant::now();
            if at > now {
                if let Err(e) = flush(wr).await {
                    res.error = Some(e);
                    return false;
                }
                cfg.progress
                    .sent
                    .fetch_add(batched as u64, Ordering::Relaxed);
                batched = 0;
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    p = pongs.recv() => {
                        if let Some(p) = p { wr.push_pong(&p) }
                        continue;
                    }
                }
            } else {
                res.max_lag_us = res.max_lag_us.max((now - at).as_secs_f64() * 1e6);
            }
        }
        while let Ok(p) = pongs.try_recv() {
            wr.push_pong(&p);
        }
        let text = message::ingest(cfg.id, j, now_ns(), cfg.payload);
        wr.push_text(text.as_bytes());
        j += 1;
        res.sent += 1;
        batched += 1;
        let next_due_later = cfg
            .schedule
            .due(j, start)
            .is_some_and(|t| t > Instant::now());
        if batched >= cfg.write_batch.max(1) || next_due_later || j == cfg.schedule.count {
            if let Err(e) = flush(wr).await {
                res.error = Some(e);
                return false;
            }
            cfg.progress
                .sent
                .fetch_add(batched as u64, Ordering::Relaxed);
            batched = 0;
        }
    }
    true
}

async fn hold(
    wr: &mut WsWriter<OwnedWriteHalf>,
    pongs: &mut mpsc::Receiver<Vec<u8>>,
    deadline: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let hold_until = deadline.min(Instant::now() + Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep_until(hold_until.into()) => break,
            p = pongs.recv() => match p {
                Some(p) => {
                    wr.push_pong(&p);
                    if flush(wr).await.is_err() { break }
                }
                None => {
                    // reader gone; wait for stop only
                    tokio::select! {
                        _ = stop.changed() => {}
                        _ = tokio::time::sleep_until(hold_until.into()) => {}
                    }
                    break;
                }
            },
        }
    }
}
