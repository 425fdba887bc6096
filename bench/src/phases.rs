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
    wal: bool,
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
                publisher::probe(wal, client, listen_channel, channels, round),
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

/// The start of a measurement window: CPU/RSS baseline, an RSS sampler (the connect phase is
/// excluded from both), and the clock the scenario measures against.
pub struct Measure {
    /// CPU and RSS baseline.
    pub window: crate::report::Window,
    /// RSS series over the window, when the server's pid is known.
    pub rss: Option<JoinHandle<crate::procstat::RssSeries>>,
    /// Wall clock at the start, in ns since the epoch (for latencies carried in payloads).
    pub t0_ns: u64,
    /// Monotonic start.
    pub start: Instant,
    /// When the scenario must stop at the latest (`--max-duration`).
    pub deadline: Instant,
}

/// Starts the measurement window of a scenario.
pub fn start_measure(
    g: &crate::cli::Global,
    rss_interval_ms: u64,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Measure {
    let window = crate::report::Window::start(g.server_pid);
    let rss = g.server_pid.map(|pid| {
        crate::procstat::spawn_rss_sampler(
            pid,
            Duration::from_millis(rss_interval_ms),
            stop.clone(),
        )
    });
    let t0_ns = crate::message::now_ns();
    let start = Instant::now();
    Measure {
        window,
        rss,
        t0_ns,
        start,
        deadline: start + Duration::from_secs(g.max_duration),
    }
}
