//! Phases shared by the scenarios: warm-up until every receiving socket is
//! subscribed, draining outstanding deliveries, and collecting socket tasks.

use crate::publisher;
use crate::subscriber::{Shared, SubResult};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// Publishes probes on `channels` every 250 ms until `want` sockets saw one
/// or `timeout` passes; returns the number of ready sockets.
pub async fn warm_up(
    client: &Client,
    listen_channel: &str,
    channels: &[String],
    shared: &Shared,
    want: usize,
    timeout: Duration,
) -> usize {
    let start = Instant::now();
    let mut round = 0u64;
    loop {
        let ready = shared.ready.load(Ordering::Relaxed);
        if ready >= want || start.elapsed() > timeout {
            return ready;
        }
        round += 1;
        if round <= 400 {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                publisher::probe(client, listen_channel, channels, round),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Why draining stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainEnd {
    /// Everything expected arrived.
    Complete,
    /// Nothing arrived for the idle period.
    Idle,
    /// The drain timeout passed.
    Timeout,
}

/// Waits until `count()` reaches `expected`, nothing arrives for `idle`,
/// or `timeout` passes.
pub async fn drain(
    count: impl Fn() -> u64,
    expected: u64,
    idle: Duration,
    timeout: Duration,
) -> DrainEnd {
    let start = Instant::now();
    let mut last = count();
    let mut last_change = Instant::now();
    loop {
        let c = count();
        if c >= expected {
            return DrainEnd::Complete;
        }
        if c != last {
            last = c;
            last_change = Instant::now();
        }
        if last_change.elapsed() >= idle {
            return DrainEnd::Idle;
        }
        if start.elapsed() >= timeout {
            return DrainEnd::Timeout;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits socket tasks (after stop was signalled), giving up on the rest
/// after `timeout`; returns (socket index, result) pairs.
pub async fn collect(
    tasks: Vec<(usize, JoinHandle<SubResult>)>,
    timeout: Duration,
) -> Vec<(usize, SubResult)> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(tasks.len());
    for (i, t) in tasks {
        let abort = t.abort_handle();
        match tokio::time::timeout_at(deadline.into(), t).await {
            Ok(Ok(r)) => out.push((i, r)),
            Ok(Err(_)) => {}
            Err(_) => abort.abort(),
        }
    }
    out
}

/// Seconds as a Duration, clamped to [0, 1 day].
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}
