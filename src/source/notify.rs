//! The actor that owns the dedicated LISTEN connection.
//!
//! It connects, runs `LISTEN "<listen channel>"`, and drives the connection through
//! `Connection::poll_message` (tokio-postgres hands out notifications nowhere else), routing each
//! notification into the [`Sink`]. A heartbeat (`SELECT 1` every `PGWS_CHECK_LISTENER_INTERVAL`)
//! detects a dead or half-open connection; whenever the connection is lost the actor logs it,
//! tells every subscribed socket that messages may have been lost, reconnects with back-off and
//! LISTENs again. It never goes deaf silently.
//!
//! After a reconnection the `Gap` must reach every subscriber before the first notification of
//! the new connection (a message delivered ahead of it would make the loss look like it happened
//! later, which a client cannot tell from a silent loss). The driver task therefore starts with
//! its deliveries held behind a gate: it keeps polling the connection (the `LISTEN`s need it) and
//! buffers what arrives until the actor, having sent the `Gap`, opens the gate.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::{Interest, Sink, SourceStatus};
use crate::channel::{ChannelName, quote_ident};
use crate::pg::{Database, backoff, describe, with_defaults};

/// Most notifications taken from the connection at once.
const BATCH: usize = 256;

/// Why the listener stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Start-up attempts exhausted (an explicit `PGWS_RETRIES`) without a connection.
    #[error("could not connect the LISTEN connection after {attempts} attempts: {last}")]
    StartupFailed {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

/// Settings of the listener actor.
pub struct ListenerSettings {
    /// Database to connect to.
    pub db: Database,
    /// The channel to LISTEN on.
    pub channel: ChannelName,
    /// Heartbeat period.
    pub check_interval: Duration,
    /// Start-up attempts (`None`: for ever, the default).
    pub startup_retries: Option<u32>,
    /// Where to count.
    pub metrics: ListenerMetrics,
    /// Subscription changes of client channels (direct mode); `None` when not in direct mode.
    pub interest: Option<mpsc::Receiver<Interest>>,
}

/// The listener's metrics (shared with the registry).
#[derive(Clone, Default)]
pub struct ListenerMetrics {
    /// 1 while connected.
    pub up: Gauge,
    /// Reconnections after a loss.
    pub reconnects: Counter,
    /// `pg_notification_queue_usage()`.
    pub queue_usage: Gauge<f64, AtomicU64>,
    /// PostgreSQL channels LISTENed for sockets (direct mode).
    pub listened: Gauge,
}

/// Runs until `shutdown` is cancelled, or until start-up retries are exhausted.
pub async fn run(
    mut settings: ListenerSettings,
    sink: Arc<Sink>,
    status: watch::Sender<SourceStatus>,
    shutdown: CancellationToken,
) -> Result<(), ListenerError> {
    let db = with_defaults(&settings.db);
    let mut commands = settings.interest.take();
    // Presence shares the listen channel as its bus, in direct mode too.
    let listen_channel = (sink.router().mode().uses_listen_channel()
        || sink.control.needs_listen_channel())
    .then(|| settings.channel.clone());
    let mut attempts: u32 = 0;
    let mut generation: u64 = 0;
    let mut lost_at: Option<tokio::time::Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let connecting = connect(&db, listen_channel.as_ref(), sink.clone());
        tokio::pin!(connecting);
        let connected = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = &mut connecting => break r,
                // Not connected: subscribers need not wait; reconnection LISTENs every channel.
                Some(cmd) = recv(&mut commands) => ack(cmd),
            }
        };
        match connected {
            Ok(mut conn) => {
                attempts = 0;
                generation += 1;
                let mut listened = HashSet::new();
                if commands.is_some() {
                    for channel in sink.hub().channel_names() {
                        if let Err(e) = conn
                            .client
                            .batch_execute(&format!("LISTEN {}", quote_ident(&channel)))
                            .await
                        {
                            tracing::warn!(channel = %channel, error = %describe(&e), "LISTEN failed");
                        } else {
                            listened.insert(channel);
                        }
                    }
                    settings.metrics.listened.set(listened.len() as i64);
                }
                settings.metrics.up.set(1);
                if let Some(at) = lost_at.take() {
                    let down = at.elapsed();
                    settings.metrics.reconnects.inc();
                    tracing::warn!(channel = %settings.channel, down_ms = down.as_millis() as u64,
                        "LISTEN connection recovered; notifications sent while it was down are lost");
                    sink.gap(down).await;
                } else {
                    tracing::info!(channel = %settings.channel, "listening for notifications");
                }
                // Only now may notifications of this connection reach subscribers.
                conn.open_gate();
                let _ = status.send(SourceStatus::Listening { generation });
                let watch = Supervision {
                    check_interval: settings.check_interval,
                    metrics: &settings.metrics,
                    shutdown: &shutdown,
                    hub: sink.hub(),
                    keep: listen_channel.as_ref(),
                };
                let reason = watch.run(conn, &mut commands, &mut listened).await;
                settings.metrics.up.set(0);
                let Some(reason) = reason else {
                    return Ok(());
                };
                tracing::error!(reason = %reason, "LISTEN connection lost; reconnecting");
                lost_at = Some(tokio::time::Instant::now());
                let _ = status.send(SourceStatus::Down);
            }
            Err(e) => {
                attempts += 1;
                let e = describe(&e);
                tracing::error!(attempt = attempts, target = %db.target(), error = %e,
                    "Error connecting notification listener to database at {}", db.target());
                // Known down from now on (at start-up too): handshakes are refused until it is up.
                status.send_if_modified(|s| {
                    let changed = *s != SourceStatus::Down;
                    *s = SourceStatus::Down;
                    changed
                });
                if generation == 0
                    && let Some(max) = settings.startup_retries
                    && attempts >= max
                {
                    return Err(ListenerError::StartupFailed { attempts, last: e });
                }
                let pause = tokio::time::sleep(backoff(attempts));
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = &mut pause => break,
                        Some(cmd) = recv(&mut commands) => ack(cmd),
                    }
                }
            }
        }
    }
}

/// The next command, or never when there is no command channel.
async fn recv(commands: &mut Option<mpsc::Receiver<Interest>>) -> Option<Interest> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Answers a command without a connection.
fn ack(cmd: Interest) {
    if let Interest::Follow(_, done) = cmd {
        let _ = done.send(());
    }
}

/// A live LISTEN connection: the client for heartbeats and the driver task's end signal.
struct Live {
    client: tokio_postgres::Client,
    ended: oneshot::Receiver<String>,
    driver: tokio::task::JoinHandle<()>,
    /// Opens the driver's deliveries (see the module header); `None` once opened.
    gate: Option<oneshot::Sender<()>>,
}

impl Live {
    /// Lets the driver deliver: what it buffered first, in order, then as it arrives.
    fn open_gate(&mut self) {
        if let Some(gate) = self.gate.take() {
            let _ = gate.send(());
        }
    }
}

async fn connect(
    db: &Database,
    listen_channel: Option<&ChannelName>,
    sink: Arc<Sink>,
) -> Result<Live, crate::pg::ConnectError> {
    let (client, mut connection) = db.connect().await?;
    let (end_tx, ended) = oneshot::channel();
    let (gate_tx, mut gate) = oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        // Everything the connection has ready is taken at once, so that a burst of
        // notifications reaches each client as one run (one wake-up), not one by one.
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx))
            .ready_chunks(BATCH);
        let mut notifications: Vec<tokio_postgres::Notification> = Vec::with_capacity(BATCH);
        let mut closed = true;
        let reason = 'read: loop {
            let chunk = tokio::select! {
                biased;
                // The gate opens (or the actor let go of it: nobody will send the Gap then).
                _ = &mut gate, if closed => {
                    closed = false;
                    sink.deliver_all(notifications.iter().map(|n| (n.channel(), n.payload())));
                    notifications.clear();
                    continue;
                }
                chunk = messages.next() => chunk,
            };
            let Some(chunk) = chunk else {
                break "the server closed the connection".to_string();
            };
            let mut ended = None;
            for message in chunk {
                match message {
                    Ok(AsyncMessage::Notification(n)) => notifications.push(n),
                    Ok(AsyncMessage::Notice(notice)) => {
                        tracing::debug!(notice = %notice.message(), "notice on the LISTEN connection");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        ended = Some(describe(&e));
                        break;
                    }
                }
            }
            if !closed {
                sink.deliver_all(notifications.iter().map(|n| (n.channel(), n.payload())));
                notifications.clear();
                if notifications.capacity() > BATCH {
                    notifications.shrink_to(BATCH);
                }
            }
            if let Some(reason) = ended {
                break 'read reason;
            }
        };
        let _ = end_tx.send(reason);
    });
    if let Some(channel) = listen_channel
        && let Err(e) = client
            .batch_execute(&format!("LISTEN {}", channel.quoted()))
            .await
    {
        driver.abort();
        return Err(e.into());
    }
    Ok(Live {
        client,
        ended,
        driver,
        gate: Some(gate_tx),
    })
}

/// Watches a live connection: heartbeats and (direct mode) LISTEN/UNLISTEN commands.
struct Supervision<'a> {
    check_interval: Duration,
    metrics: &'a ListenerMetrics,
    shutdown: &'a CancellationToken,
    hub: &'a crate::stream::Hub,
    /// The listen channel, when it is LISTENed for itself: never UNLISTENed.
    keep: Option<&'a ChannelName>,
}

impl Supervision<'_> {
    /// Returns why the connection ended, or `None` on shutdown.
    async fn run(
        &self,
        mut live: Live,
        commands: &mut Option<mpsc::Receiver<Interest>>,
        listened: &mut HashSet<String>,
    ) -> Option<String> {
        let mut tick = tokio::time::interval(self.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let reply_timeout = self
            .check_interval
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        let reason = loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    live.driver.abort();
                    return None;
                }
                r = &mut live.ended => break r.unwrap_or_else(|_| "connection task ended".into()),
                Some(cmd) = recv(commands) => {
                    if let Err(e) = self.apply(&live.client, cmd, listened).await {
                        if live.client.is_closed() {
                            break format!("LISTEN/UNLISTEN failed: {}", describe(&e));
                        }
                        // A statement the server refused: that channel only, the connection lives.
                        tracing::warn!(error = %describe(&e), "LISTEN/UNLISTEN refused");
                    }
                }
                _ = tick.tick() => {
                    let query = live.client.query_one("SELECT pg_notification_queue_usage()", &[]);
                    match tokio::time::timeout(reply_timeout, query).await {
                        Ok(Ok(row)) => {
                            let usage: f64 = row.try_get(0).unwrap_or(0.0);
                            self.metrics.queue_usage.set(usage);
                            if usage > 0.5 {
                                tracing::warn!(usage, "PostgreSQL's notification queue is more than half full");
                            }
                        }
                        Ok(Err(e)) => break format!("heartbeat failed: {}", describe(&e)),
                        Err(_) => break format!("heartbeat got no answer within {reply_timeout:?}"),
                    }
                }
            }
        };
        live.driver.abort();
        Some(reason)
    }

    async fn apply(
        &self,
        client: &tokio_postgres::Client,
        cmd: Interest,
        listened: &mut HashSet<String>,
    ) -> Result<(), tokio_postgres::Error> {
        match cmd {
            Interest::Follow(channel, done) => {
                if !listened.contains(channel.as_str()) {
                    client
                        .batch_execute(&format!("LISTEN {}", channel.quoted()))
                        .await?;
                    tracing::debug!(channel = %channel, "LISTEN");
                    listened.insert(channel.to_string());
                }
                let _ = done.send(());
            }
            Interest::Drop(channel) => {
                if listened.contains(channel.as_str())
                    && !self.hub.has_subscribers(&channel)
                    && self.keep != Some(&channel)
                {
                    client
                        .batch_execute(&format!("UNLISTEN {}", channel.quoted()))
                        .await?;
                    tracing::debug!(channel = %channel, "UNLISTEN");
                    listened.remove(channel.as_str());
                }
            }
        }
        self.metrics.listened.set(listened.len() as i64);
        Ok(())
    }
}
