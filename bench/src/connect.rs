//! Opening many WebSocket connections (or event streams) with bounded concurrency, spreading
//! them over loopback source addresses, and counting failures by category.

use crate::sseclient::{self, SseConn};
use crate::target::Target;
use crate::wsclient::{self, Conn, ConnectError};
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What carries a scenario's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Websockets (`Upgrade: websocket`).
    Websocket,
    /// Server-Sent Events (`Accept: text/event-stream`).
    Sse,
}

impl Transport {
    /// Name of `base` (a scenario) over this transport: `fanout` or `sse-fanout`.
    pub fn scenario(self, base: &str) -> String {
        match self {
            Self::Websocket => base.to_string(),
            Self::Sse => format!("sse-{base}"),
        }
    }

    /// `websocket` or `sse`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Websocket => "websocket",
            Self::Sse => "sse",
        }
    }
}

/// Outcome of opening a batch of connections.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectStats {
    /// Connections established.
    pub ok: usize,
    /// Attempts that failed.
    pub failed: usize,
    /// Failures by category (first 20 categories).
    pub failures: BTreeMap<String, usize>,
    /// Time to open all, seconds.
    pub elapsed_s: f64,
    /// Established connections per second.
    pub per_s: f64,
}

/// How to open the connections.
#[derive(Debug, Clone, Copy)]
pub struct OpenOpts {
    /// Connection attempts in flight.
    pub concurrency: usize,
    /// Timeout of each attempt.
    pub timeout: Duration,
    /// Initial read buffer per connection.
    pub read_buf: usize,
    /// Websocket subprotocol to offer (and require in the answer), e.g. `pgws.v2`.
    pub subprotocol: Option<&'static str>,
}

/// Opens `n` websocket connections; `path_of(i)` gives the URL path of connection `i`
/// and `on_open(i, conn)` receives each established connection.
pub async fn open_all(
    target: &Target,
    n: usize,
    opts: OpenOpts,
    path_of: impl Fn(usize) -> String,
    on_open: impl FnMut(usize, Conn),
) -> ConnectStats {
    open_with(
        n,
        opts.concurrency,
        |i| {
            let path = path_of(i);
            async move {
                let (timeout, buf, proto) = (opts.timeout, opts.read_buf, opts.subprotocol);
                wsclient::connect_as(target, i, &path, timeout, buf, proto).await
            }
        },
        on_open,
    )
    .await
}

/// Opens `n` event streams (no `Last-Event-ID`), as [`open_all`] does websockets.
pub async fn open_all_sse(
    target: &Target,
    n: usize,
    opts: OpenOpts,
    path_of: impl Fn(usize) -> String,
    on_open: impl FnMut(usize, SseConn),
) -> ConnectStats {
    open_with(
        n,
        opts.concurrency,
        |i| {
            let path = path_of(i);
            async move {
                sseclient::connect(target, i, &path, None, opts.timeout, opts.read_buf).await
            }
        },
        on_open,
    )
    .await
}

/// Runs `connect(i)` for `i` in `0..n`, at most `concurrency` at once, hands each established
/// connection to `on_open(i, conn)` and counts failures by category.
pub async fn open_with<C, Fut>(
    n: usize,
    concurrency: usize,
    connect: impl Fn(usize) -> Fut,
    mut on_open: impl FnMut(usize, C),
) -> ConnectStats
where
    Fut: Future<Output = Result<C, ConnectError>>,
{
    let start = Instant::now();
    let mut stats = ConnectStats::default();
    let mut attempts = futures_util::stream::iter(0..n)
        .map(|i| {
            let attempt = connect(i);
            async move { (i, attempt.await) }
        })
        .buffer_unordered(concurrency.max(1));
    let mut last_report = Instant::now();
    while let Some((i, r)) = attempts.next().await {
        match r {
            Ok(conn) => {
                stats.ok += 1;
                on_open(i, conn);
            }
            Err(e) => {
                stats.failed += 1;
                let cat = e.category();
                if stats.failures.len() < 20 || stats.failures.contains_key(&cat) {
                    *stats.failures.entry(cat).or_default() += 1;
                }
            }
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  connecting: {} ok, {} failed of {n}",
                stats.ok, stats.failed
            );
            last_report = Instant::now();
        }
    }
    stats.elapsed_s = start.elapsed().as_secs_f64();
    stats.per_s = stats.ok as f64 / stats.elapsed_s.max(1e-9);
    stats
}

impl ConnectStats {
    /// One human line.
    pub fn human(&self, what: &str) -> String {
        let mut s = format!(
            "{what}: {} connected, {} failed in {:.2} s ({:.0}/s)",
            self.ok, self.failed, self.elapsed_s, self.per_s
        );
        for (k, v) in &self.failures {
            s.push_str(&format!("; {v} x {k}"));
        }
        s
    }
}
