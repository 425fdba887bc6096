//! The NOTIFY pool: `PGWS_POOL_SIZE` connections, each owned by one worker task that runs
//! `SELECT pg_notify($1, $2)` with bound parameters (with the WAL source,
//! `SELECT pg_logical_emit_message(true, $1, $2)`: the same arguments, the listen channel as the
//! prefix, so that client messages reach every node through the WAL in one order).
//!
//! [`Publisher::publish`] is the one publish call (see [`crate::publish`]): it also runs the write
//! function's calls, so that every publish answers the same typed outcome on one oneshot.
//!
//! A socket always uses the same worker, and a worker sends its jobs in order on one connection,
//! so one socket's messages reach PostgreSQL in the order they were sent, and their outcomes are
//! answered in that order. A worker takes every job waiting in its queue and pipelines them on
//! its connection (one round trip for many NOTIFYs). A NOTIFY that fails (database down, payload
//! too long) is answered as a [`PublishError`], classified by SQLSTATE or the kind of failure,
//! and logged and counted here; nothing is dropped silently. The pool never writes to a client:
//! whoever waits renders the outcome.
//!
//! What it owns: the pool's connections and prepared statements, the order of each key's
//! jobs, and the classification of failures. What it must never do: write a client frame or
//! know a protocol (it answers [`Outcome`]s; compat, v2 and HTTP render them), paste a
//! channel name or payload into SQL text (both are always bound parameters), or drop a job
//! without answering it (every path ends in `accepted` or `fail`, shutdown included).
//!
//! Why workers with a connection each, not a shared pool: the order of one socket's
//! messages must be kept end to end, which one connection per key gives for free; and a
//! worker that owns its connection can pipeline every queued job without any lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::types::Type;

use super::SourceKind;
use super::{describe, with_defaults};
use crate::ops::metrics::ReasonLabel;
use crate::publish::{Ack, Outcome, Pending, Publish, PublishError};

/// Jobs a worker queues before a sender waits (backpressure on the sending socket).
///
/// 1024 jobs: several full batches, so a burst from many sockets is absorbed without
/// anyone waiting; past it the sending socket waits, which is the backpressure we want
/// (a client cannot queue unbounded work in the server).
const QUEUE: usize = 1024;
/// Jobs pipelined in one round.
///
/// 256: large enough that one round trip carries a burst, small enough that one statement's
/// arrays stay bounded (about 2 MiB at NOTIFY's largest payloads).
const BATCH: usize = 256;
/// After a failed connection attempt, jobs fail at once for this long instead of each waiting.
///
/// One second: while the database is down, a flood of publishes fails fast instead of
/// each paying a connection time-out, yet a database that comes back is noticed quickly.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One NOTIFY to send, and where its outcome goes.
struct Job {
    /// The PostgreSQL channel to NOTIFY; `None`: the listen channel.
    pg_channel: Option<String>,
    /// The notification text (an envelope).
    payload: String,
    /// The pgws channel it is for (log lines).
    channel: Option<String>,
    /// Told the outcome (taken when answered); a caller that dropped its [`Pending`] is simply
    /// not told.
    answer: Option<tokio::sync::oneshot::Sender<Outcome>>,
}

/// Counters of the pool (shared with the metrics registry), and its health for readiness.
///
/// Shared: the registry reads the counters, readiness reads `last_failure_ms`.
#[derive(Debug, Default, Clone)]
pub struct PublisherStats {
    /// NOTIFYs that PostgreSQL accepted.
    pub sent: Counter,
    /// NOTIFYs that failed and were reported, by code.
    pub errors: Family<ReasonLabel, Counter>,
    /// When a connection attempt last failed (Unix milliseconds; 0: never, or cleared by a
    /// later success). Readiness looks at it.
    pub last_failure_ms: Arc<AtomicU64>,
}

/// What a worker is asked to do.
enum Cmd {
    /// Send a NOTIFY.
    Notify(Job),
    /// Answer once every earlier job was sent.
    // Commands share the jobs' queue so that a flush or a close is ordered after every
    // job queued before it, with no extra bookkeeping.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Send the earlier jobs, close the connection, answer, and stop.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// Handle to the pool's workers. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    /// One bounded queue per worker; index = key modulo the pool size.
    workers: Arc<[mpsc::Sender<Cmd>]>,
    /// What the pool did so far.
    pub stats: Arc<PublisherStats>,
}

impl Publisher {
    /// Starts `size` workers; they connect lazily, on their first job.
    pub fn start(
        db: &super::Database,
        listen_channel: &str,
        size: usize,
        stats: PublisherStats,
        bus: SourceKind,
    ) -> Self {
        let db = with_defaults(db);
        let stats = Arc::new(stats);
        let listen: Arc<str> = listen_channel.into();
        // At least one worker even if configured to 0: publishing must always have a path.
        let workers = (0..size.max(1))
            .map(|i| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(worker(
                    i,
                    db.clone(),
                    bus,
                    listen.clone(),
                    rx,
                    stats.clone(),
                ));
                tx
            })
            .collect();
        Self { workers, stats }
    }

    /// The one publish call. Waits until the message is queued (for room in the queue of the
    /// worker that serves `key`, a socket's id, or for one of the socket's write slots), then
    /// returns its outcome to come. Messages of one `key` are sent, and answered, in the order
    /// of the calls; a write function's calls run in tasks of their own (at most the slots'
    /// number at a time).
    pub async fn publish(&self, key: u64, publish: Publish) -> Pending {
        match publish {
            Publish::Notify {
                pg_channel,
                payload,
                channel,
            } => {
                let (answer, pending) = Pending::channel();
                let job = Job {
                    pg_channel,
                    payload,
                    channel,
                    answer: Some(answer),
                };
                // Same key, same worker, same connection: this is what keeps one socket's order.
                let worker = &self.workers[(key % self.workers.len() as u64) as usize];
                // The worker is gone only after `close`: answer with "shutting down" rather than
                // leave the caller's `Pending` to see a dropped sender.
                if let Err(mpsc::error::SendError(Cmd::Notify(mut job))) =
                    worker.send(Cmd::Notify(job)).await
                {
                    fail(&mut job, PublishError::ShuttingDown, &self.stats);
                }
                pending
            }
            Publish::Write { slots, call } => {
                let permit = match slots {
                    // The socket's write slots bound how many of its calls run at once; a closed
                    // semaphore means the socket is going away.
                    Some(slots) => match slots.acquire_owned().await {
                        Ok(p) => Some(p),
                        Err(_) => return Pending::ready(Err(PublishError::socket_closing())),
                    },
                    None => None,
                };
                let (answer, pending) = Pending::channel();
                // The function's call runs on the write function's own pool
                // (`PGWS_AUTHZ_WRITE_POOL_SIZE`), in a task of its own, not on a NOTIFY
                // worker: a slow function must not hold up other sockets' NOTIFYs.
                tokio::spawn(async move {
                    let outcome = call.await.map(|result| Ack { result });
                    drop(permit);
                    let _ = answer.send(outcome.map_err(PublishError::from));
                });
                pending
            }
        }
    }

    /// Waits until every job queued so far has been sent (at shutdown, so that the last
    /// `ConnectionClose` events reach PostgreSQL before the process exits).
    pub async fn flush(&self) {
        let mut waits = Vec::new();
        for worker in self.workers.iter() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if worker.send(Cmd::Flush(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
    }

    /// Sends every job queued so far, then closes the connections and waits until they are
    /// closed; later jobs fail with "the server is shutting down". At shutdown, so that the
    /// connections end at our request (quietly) instead of being ended by the server, as when
    /// the embedded cluster is stopped next. (Write function calls are not the pool's: they
    /// end with their sockets.)
    pub async fn close(&self) {
        let mut waits = Vec::new();
        for worker in self.workers.iter() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if worker.send(Cmd::Close(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
    }
}

/// Answers a job's failure, and logs and counts it (whether or not anyone waits).
fn fail(job: &mut Job, error: PublishError, stats: &PublisherStats) {
    // Two codes only in the metrics: what a client could fix (size) and what it could
    // not; the full text goes to the log line and to whoever waits.
    let code = match error {
        PublishError::TooLarge(_) => "payload_too_large",
        _ => "notify_failed",
    };
    stats
        .errors
        .get_or_create(&ReasonLabel { reason: code })
        .inc();
    tracing::warn!(code, error = %error, channel = ?job.channel, "NOTIFY failed");
    if let Some(answer) = job.answer.take() {
        let _ = answer.send(Err(error));
    }
}

struct Conn {
    client: tokio_postgres::Client,
    /// One NOTIFY.
    stmt: tokio_postgres::Statement,
    /// Many NOTIFYs in one statement, hence one transaction, in array order.
    batch: tokio_postgres::Statement,
    /// The task driving the connection; it ends (without a warning) once `client` is dropped.
    // Joined on close so that the Terminate message really goes out before shutdown
    // proceeds (see `Conn::close`).
    driver: tokio::task::JoinHandle<()>,
}

impl Conn {
    /// Closes the connection (PostgreSQL gets a Terminate message) and waits until it is closed.
    async fn close(self) {
        let Self { client, driver, .. } = self;
        drop(client);
        // Bounded: a server that does not answer must not hold the shutdown.
        let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    }
}

async fn open(db: &super::Database, bus: SourceKind) -> Result<Conn, super::ConnectError> {
    let (client, connection) = db.connect().await?;
    let driver = tokio::spawn(async move {
        // Only a connection that the server or the network ended: one that pgws closes by
        // dropping its client ends with `Ok`.
        if let Err(e) = connection.await {
            tracing::warn!(error = %describe(&e), "NOTIFY connection ended");
        }
    });
    let (one, many) = match bus {
        SourceKind::Notify => {
            // Notifications are not durable anyway: do not wait for the WAL flush of each commit.
            client.batch_execute("SET synchronous_commit = off").await?;
            (
                "SELECT pg_notify($1, $2)",
                "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(c, p, n) ORDER BY n",
            )
        }
        // Logical decoding reads only flushed WAL: an asynchronous commit would wait for the WAL
        // writer (up to 3 × wal_writer_delay) before any node sees the message.
        SourceKind::Wal => {
            client.batch_execute("SET synchronous_commit = on").await?;
            (
                "SELECT pg_logical_emit_message(true, $1, $2)",
                "SELECT pg_logical_emit_message(true, c, p) FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(c, p, n) ORDER BY n",
            )
        }
    };
    // Prepared once per connection with explicit types: each NOTIFY is then one
    // bind/execute, with no parse or planning, and no text ever reaches the SQL.
    let stmt = client.prepare_typed(one, &[Type::TEXT, Type::TEXT]).await?;
    let batch = client
        .prepare_typed(many, &[Type::TEXT_ARRAY, Type::TEXT_ARRAY])
        .await?;
    Ok(Conn {
        client,
        stmt,
        batch,
        driver,
    })
}

async fn worker(
    id: usize,
    db: super::Database,
    bus: SourceKind,
    listen: Arc<str>,
    mut rx: mpsc::Receiver<Cmd>,
    stats: Arc<PublisherStats>,
) {
    // Opened on the first job and again after a failure; never shared with another
    // worker, so nothing here needs a lock.
    let mut conn: Option<Conn> = None;
    // When and why the last connection attempt failed (see `RETRY_AFTER`).
    let mut failed_at: Option<(Instant, String)> = None;
    let mut cmds = Vec::with_capacity(BATCH);
    let mut jobs = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    let mut closing = None;
    // Everything waiting, up to a batch, in one wake-up: under load a worker sends many
    // jobs per round trip; when idle it sends one at once (no waiting to fill a batch).
    while rx.recv_many(&mut cmds, BATCH).await > 0 {
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Notify(job) => jobs.push(job),
                Cmd::Flush(done) => flushes.push(done),
                Cmd::Close(done) => closing = Some(done),
            }
        }
        send_all(
            id,
            (&db, bus),
            &listen,
            &mut conn,
            &mut failed_at,
            &mut jobs,
            &stats,
        )
        .await;
        // Answered only after the jobs queued before them were sent: that is all a flush
        // promises.
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        if let Some(done) = closing.take() {
            if let Some(c) = conn.take() {
                c.close().await;
            }
            let _ = done.send(());
            // What was queued after the close is answered, not dropped silently.
            rx.close();
            while let Ok(cmd) = rx.try_recv() {
                if let Cmd::Notify(mut job) = cmd {
                    fail(&mut job, PublishError::ShuttingDown, &stats);
                }
            }
            return;
        }
    }
}

/// Sends every job (in order, pipelined on one connection), reporting each failure.
async fn send_all(
    id: usize,
    (db, bus): (&super::Database, SourceKind),
    listen: &str,
    conn: &mut Option<Conn>,
    failed_at: &mut Option<(Instant, String)>,
    jobs: &mut Vec<Job>,
    stats: &PublisherStats,
) {
    if jobs.is_empty() {
        return;
    }
    // A connection the server ended since the last round is replaced before use, so
    // these jobs are not lost to a connection already known to be dead.
    if conn.as_ref().is_some_and(|c| c.client.is_closed()) {
        *conn = None;
    }
    if conn.is_none() {
        match &*failed_at {
            Some((at, err)) if at.elapsed() < RETRY_AFTER => {
                for mut job in jobs.drain(..) {
                    fail(
                        &mut job,
                        PublishError::DatabaseUnavailable(err.clone()),
                        stats,
                    );
                }
                return;
            }
            _ => {}
        }
        // Connecting happens inside the worker, in line: the jobs behind this one wait for
        // it, which keeps their order.
        match open(db, bus).await {
            Ok(c) => {
                tracing::debug!(worker = id, "NOTIFY connection open");
                *conn = Some(c);
                *failed_at = None;
                stats.last_failure_ms.store(0, Ordering::Relaxed);
            }
            Err(e) => {
                let e = describe(&e);
                tracing::error!(worker = id, error = %e, "cannot open a NOTIFY connection");
                for mut job in jobs.drain(..) {
                    fail(
                        &mut job,
                        PublishError::DatabaseUnavailable(e.clone()),
                        stats,
                    );
                }
                *failed_at = Some((Instant::now(), e));
                stats
                    .last_failure_ms
                    .store(crate::auth::now_millis(), Ordering::Relaxed);
                return;
            }
        }
    }
    let Some(c) = conn.as_ref() else { return };
    // One transaction per group of jobs: a NOTIFY transaction commits under a global lock, so
    // committing many at once is what makes ingest fast. PostgreSQL folds identical
    // notifications of one transaction into one, so a group never holds the same
    // (channel, text) twice.
    // Logical messages are never folded: no need to look for repeats (hashing every payload).
    let ranges = match bus {
        SourceKind::Notify => groups(jobs, listen),
        // (One group: see above.)
        SourceKind::Wal => std::iter::once(0..jobs.len()).collect(),
    };
    for range in ranges {
        let group = &mut jobs[range];
        let result = if group.len() == 1 {
            let channel = group[0].pg_channel.as_deref().unwrap_or(listen);
            // (A single job: the batch statement would cost a plan for nothing.)
            c.client
                .execute(&c.stmt, &[&channel, &group[0].payload])
                .await
        } else {
            let channels: Vec<&str> = group
                .iter()
                .map(|j| j.pg_channel.as_deref().unwrap_or(listen))
                .collect();
            let payloads: Vec<&str> = group.iter().map(|j| j.payload.as_str()).collect();
            c.client.execute(&c.batch, &[&channels, &payloads]).await
        };
        match result {
            Ok(_) => {
                stats.sent.inc_by(group.len() as u64);
                for job in group {
                    accepted(job);
                }
            }
            // The whole group's transaction rolled back, so none of it was sent: retrying each
            // alone sends the good ones and pins the error on the bad one, with no duplicates.
            Err(e) if group.len() > 1 && !c.client.is_closed() => {
                // Something in the group was refused: send one by one to tell each its fate.
                tracing::debug!(error = %describe(&e), "batched NOTIFY failed; retrying one by one");
                for job in group.iter_mut() {
                    let channel = job.pg_channel.as_deref().unwrap_or(listen);
                    match c.client.execute(&c.stmt, &[&channel, &job.payload]).await {
                        Ok(_) => {
                            stats.sent.inc();
                            accepted(job);
                        }
                        Err(e) => report(job, &e, stats),
                    }
                }
            }
            // The connection failed mid-group (or a single job was refused): every job of the
            // group gets the same error; the next round opens a new connection if needed.
            Err(e) => {
                for job in group.iter_mut() {
                    report(job, &e, stats);
                }
            }
        }
    }
    // Every job was answered above; the Vec keeps its capacity for the next round.
    jobs.clear();
    if c.client.is_closed() {
        *conn = None;
    }
}

/// Consecutive runs of jobs in which no (channel, text) pair repeats.
///
/// Why groups at all: if one transaction held two identical notifications, PostgreSQL
/// would deliver one and the client would see a message vanish. A group ends just
/// before the first repeat, so each job's notification is delivered exactly once.
fn groups(jobs: &[Job], listen: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < jobs.len() {
        // Pairs borrowed from the jobs: nothing is copied to find repeats.
        let mut seen = std::collections::HashSet::new();
        let mut end = start;
        while end < jobs.len()
            && seen.insert((
                jobs[end].pg_channel.as_deref().unwrap_or(listen),
                jobs[end].payload.as_str(),
            ))
        {
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// Tells a waiting publisher that PostgreSQL accepted its NOTIFY.
fn accepted(job: &mut Job) {
    if let Some(answer) = job.answer.take() {
        let _ = answer.send(Ok(Ack::default()));
    }
}

/// Answers (and logs) why PostgreSQL did not take a NOTIFY.
fn report(job: &mut Job, e: &tokio_postgres::Error, stats: &PublisherStats) {
    fail(job, classify(e), stats);
}

/// A statement's failure as a [`PublishError`], by SQLSTATE: `pg_notify` raises 22023
/// (`invalid_parameter_value`) for a payload over 8000 bytes, and for an empty or too long
/// channel name, which [`crate::channel::ChannelName`] rules out before. Anything else is a
/// failure with PostgreSQL's message (or the connection's error when PostgreSQL sent none).
fn classify(e: &tokio_postgres::Error) -> PublishError {
    match e.as_db_error() {
        Some(db) if *db.code() == tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE => {
            // The only 22023 a valid channel name leaves: the payload was too long.
            PublishError::TooLarge(db.message().to_string())
        }
        Some(db) => PublishError::Failed {
            sqlstate: Some(db.code().code().to_string()),
            message: db.message().to_string(),
        },
        None => PublishError::Failed {
            sqlstate: None,
            message: describe(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(channel: Option<&str>, payload: &str) -> Job {
        Job {
            pg_channel: channel.map(str::to_string),
            payload: payload.into(),
            channel: None,
            answer: None,
        }
    }

    #[test]
    fn identical_notifications_never_share_a_transaction() {
        let jobs = [
            job(None, "a"),
            job(None, "b"),
            job(Some("x"), "a"),
            job(None, "a"),
            job(Some("l"), "b"),
            job(None, "c"),
        ];
        // "a" on the listen channel repeats at 3, which starts a new group; `Some("l")` is the
        // listen channel too, but its "b" is new in that group.
        assert_eq!(groups(&jobs, "l"), vec![0..3, 3..6]);
        let same = [job(None, "a"), job(Some("l"), "a")];
        assert_eq!(groups(&same, "l"), vec![0..1, 1..2]);
        assert!(groups(&[], "l").is_empty());
    }
}
