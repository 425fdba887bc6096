//! One session loop for every connected client, whatever carries it and whatever it speaks.
//!
//! A session is three parts:
//! - a [`Carrier`] ([`carrier`]): the connection's wire (a websocket today; Server-Sent Events
//!   and long-poll or WebTransport fit the same trait): it writes frames in its encoding, reads
//!   what the client sends, keeps the connection alive and says goodbye;
//! - a [`Handler`]: the protocol, which answers what the client sends ([`compat`]: the original
//!   protocol, whose client texts are publishes; [`v2`]: protocol v2's requests, one file per
//!   operation in `v2/`);
//! - the [`crate::client::Client`]: subscriptions, publishing, limits, the outbox.
//!
//! What the loop owns, once for all of them ([`serve`]): shutdown, one timer for the token's
//! expiry and the carrier's keep-alive, draining the outbox into the carrier (with the write
//! time-out and the slow-consumer rule), answers that complete later (a v2 publish awaiting
//! PostgreSQL), and the close reasons ([`End`]) with their metrics. What it must never do: know
//! a wire format (the carrier and `crate::wire` do) or a protocol's requests (the handler does).
//!
//! Why one task with one `select!` per session: the state stays in one place, the close
//! handshake is simple to get right, and an idle session costs one future. Rare paths (writes,
//! requests, the close) are boxed so that the resting state stays small: a future is as large as
//! its largest await, and every idle socket holds one.

pub mod carrier;
pub mod compat;
pub mod v2;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

pub use carrier::{Carrier, Inbound};

use crate::client::Client;
use crate::ops::metrics::ReasonLabel;
use crate::stream::Frame;

/// Close code when the token's `exp` passes (the original's).
pub const CLOSE_JWT_EXPIRED: u16 = 3001;
/// Close code for a socket that fell too far behind its outbound queue limits.
pub const CLOSE_SLOW_CONSUMER: u16 = 4000;
/// Close code for a peer that answered no keep-alive for two intervals.
pub const CLOSE_PING_TIMEOUT: u16 = 4001;
/// How long a blocked write may take before the peer is considered gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed or vanished; nothing more to send.
    Peer,
    /// We close with this code and reason; the label names the reason in metrics.
    Close(u16, &'static str, &'static str),
    /// We drop the connection without a goodbye (it accepts no data); label for metrics.
    Drop(&'static str),
}

impl End {
    /// The server shuts down (1001).
    pub const SHUTDOWN: Self = Self::Close(1001, "server shutting down", "shutdown");
    /// The token expired (3001).
    pub const EXPIRED: Self = Self::Close(CLOSE_JWT_EXPIRED, "JWT expired", "expired");
    /// The peer answered no keep-alive (4001).
    pub const PING_TIMEOUT: Self =
        Self::Close(CLOSE_PING_TIMEOUT, "no answer to pings", "ping_timeout");
    /// The client fell behind its queue limits (4000).
    pub const SLOW_CONSUMER: Self = Self::Close(
        CLOSE_SLOW_CONSUMER,
        "slow consumer: outbound queue limit reached",
        "slow_consumer",
    );

    /// The metrics label of an end the server decided (`None`: the peer's).
    pub fn label(self) -> Option<&'static str> {
        match self {
            Self::Close(_, _, label) | Self::Drop(label) => Some(label),
            Self::Peer => None,
        }
    }
}

/// A protocol: what the client's frames mean, and the answers it owes.
pub trait Handler: Send {
    /// Queues what the client is told before anything else (v2: `welcome`). Nothing by default.
    fn greet(&mut self, _client: &Client) {}

    /// Answers one text frame.
    fn text(&mut self, client: &mut Client, text: &str) -> impl Future<Output = ()> + Send;

    /// Answers one binary frame.
    fn binary(&mut self, client: &mut Client, bytes: &[u8]) -> impl Future<Output = ()> + Send;

    /// Whether answers are owed that complete later ([`Handler::next_answer`] is polled only
    /// then).
    fn awaiting(&self) -> bool {
        false
    }

    /// The next answer that completed (in the order owed); `None` when none is owed.
    fn next_answer(&mut self) -> impl Future<Output = Option<Frame>> + Send {
        std::future::ready(None)
    }
}

/// Serves a client over `carrier` in `handler`'s protocol until the session ends, and says why.
/// The caller concludes ([`conclude`]).
pub async fn serve<C: Carrier, H: Handler>(
    carrier: &mut C,
    client: &mut Client,
    handler: &mut H,
) -> End {
    let state = client.state();
    let shutdown = state.shutdown.clone();
    let keepalive = state.config.ping_interval;
    handler.greet(client);
    // What the greeting queued goes out now, and the storage it made the outbox and the batch
    // allocate is given back: a socket that then stays idle holds none.
    let mut batch: Vec<Frame> = Vec::new();
    if let Err(end) = Box::pin(write_outbox(carrier, client, &mut batch)).await {
        return end;
    }
    batch = Vec::new();
    client.outbox().release();
    let mut expiry = client.expiry();
    let mut exp = client.exp();
    // One timer for the token's expiry and the next keep-alive (one timer per idle socket).
    let mut next_keepalive = keepalive.map(|p| Instant::now() + p);
    // A carrier's own end (an event stream's lifetime) is the timer's third deadline.
    let lifetime = carrier.lifetime();
    let deadline = |expiry: Option<Instant>, next: Option<Instant>| {
        [expiry, next, lifetime.map(|(at, _)| at)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
    };
    let timer = tokio::time::sleep_until(deadline(expiry, next_keepalive));
    tokio::pin!(timer);
    let mut last_inbound = Instant::now();
    // Made once: re-made on every turn of the loop it would join and leave the token's waiter
    // list, which every socket shares, on every delivery.
    let shutdown = shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => return End::SHUTDOWN,
            _ = &mut timer => {
                let now = Instant::now();
                if expiry.is_some_and(|at| now >= at) {
                    return End::EXPIRED;
                }
                if let Some((at, end)) = lifetime
                    && now >= at
                {
                    return end;
                }
                if let (Some(at), Some(interval)) = (next_keepalive, keepalive)
                    && now >= at
                {
                    if carrier.answers_keepalive() && last_inbound.elapsed() > interval * 2 {
                        return End::PING_TIMEOUT;
                    }
                    if Box::pin(carrier.keepalive()).await.is_err() {
                        return End::Peer;
                    }
                    next_keepalive = Some(now + interval);
                }
                timer.as_mut().reset(deadline(expiry, next_keepalive));
            }
            Some(answer) = handler.next_answer(), if handler.awaiting() => {
                client.outbox().push(answer);
            }
            _ = client.outbox().wait() => {
                if let Err(end) = write_outbox(carrier, client, &mut batch).await {
                    return end;
                }
            }
            raw = carrier.next() => {
                match Box::pin(carrier.inbound(raw, client.id())).await {
                    Inbound::Text(text) => {
                        last_inbound = Instant::now();
                        Box::pin(handler.text(client, text.as_str())).await;
                    }
                    Inbound::Binary(bytes) => {
                        last_inbound = Instant::now();
                        Box::pin(handler.binary(client, &bytes)).await;
                    }
                    Inbound::Alive => last_inbound = Instant::now(),
                    Inbound::End(end) => return end,
                }
                // A refreshed token (v2) moves the expiry.
                if client.exp() != exp {
                    exp = client.exp();
                    expiry = client.expiry();
                    timer.as_mut().reset(deadline(expiry, next_keepalive));
                }
            }
        }
    }
}

/// Writes what the client's outbox holds, in its encoding; `Err` when the session must end.
async fn write_outbox<C: Carrier>(
    carrier: &mut C,
    client: &Client,
    batch: &mut Vec<Frame>,
) -> Result<(), End> {
    let id = client.id();
    let drained = client.outbox().drain_into(batch);
    if let Some((code, reason)) = drained.end {
        // Access revoked (authorization by the database): nothing more is sent.
        return Err(End::Close(code, reason, "revoked"));
    }
    if !batch.is_empty() {
        let encoding = client.outbox().encoding();
        // Boxed, like the other rare paths: every idle socket would otherwise carry the write
        // state.
        let write = Box::pin(tokio::time::timeout(
            WRITE_TIMEOUT,
            carrier.write(batch, encoding),
        ));
        let written = if C::DROP_ON_OVERFLOW {
            tokio::select! {
                r = write => r,
                // The peer stopped reading and its queue overflowed meanwhile.
                _ = client.outbox().overflowed() => return Err(End::Drop("slow_consumer")),
            }
        } else {
            write.await
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(conn = id, error = %e, "write failed");
                return Err(End::Peer);
            }
            Err(_) => return Err(End::Drop("write_timeout")),
        }
        if let Some(oldest) = drained.oldest {
            client
                .state()
                .metrics
                .delivery_latency
                .observe(oldest.elapsed().as_secs_f64());
        }
        batch.clear();
        if batch.capacity() > 256 {
            batch.shrink_to_fit();
        }
    }
    if !drained.healthy {
        return Err(End::SLOW_CONSUMER);
    }
    Ok(())
}

/// Counts and logs how a session ended, lets the carrier say goodbye when it is ours to say,
/// and lets the client go (unsubscribed, `ConnectionClose` published).
pub async fn conclude<C: Carrier>(carrier: &mut C, client: Client, end: End) {
    let id = client.id();
    if let Some(reason) = end.label() {
        client
            .state()
            .metrics
            .server_closes
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
    match end {
        End::Drop(reason) => tracing::warn!(conn = id, reason, "dropping {}", C::NAME),
        End::Close(code, reason, _) => {
            tracing::info!(conn = id, code, reason, "closing {}", C::NAME);
            Box::pin(carrier.close(code, reason)).await;
        }
        End::Peer => tracing::info!(conn = id, "{} closed by peer", C::NAME),
    }
    Box::pin(client.finish()).await;
}

/// The protocol a websocket speaks, as admission negotiated it: the handler its session runs
/// and the encoding its outbox carries. The one place outside the handlers and `wire` that
/// tells v2 from compat, so that carriers stay protocol-free.
pub enum Protocol {
    /// The original protocol; `positioned`: the client asked for positions (`?last-event-id`).
    Compat {
        /// Messages carry their positions (`{"id","data"}`).
        positioned: bool,
    },
    /// Protocol v2, with what the token grants (boxed: it moves through the accept path's
    /// states, and every idle v2 socket would hold an inline copy).
    V2(Box<v2::access::Access>),
}

impl Protocol {
    /// The protocol of an admitted websocket (`v2`: it negotiated `pgws.v2`).
    pub fn of(
        v2: bool,
        positioned: bool,
        grant: &crate::auth::Grant,
        presence_claim: Option<&str>,
    ) -> Self {
        if v2 {
            Self::V2(Box::new(v2::access::Access::new(grant, presence_claim)))
        } else {
            Self::Compat { positioned }
        }
    }

    /// The encoding its outbox carries (fixed for the socket's life: every message is encoded
    /// once per encoding, shared by every socket of that encoding).
    pub fn encoding(&self) -> crate::stream::Encoding {
        match self {
            Self::V2(_) => crate::wire::V2,
            Self::Compat { positioned: true } => crate::wire::COMPAT_POSITIONED,
            Self::Compat { positioned: false } => crate::wire::COMPAT,
        }
    }

    /// The subprotocol the handshake answers for it, when the protocol has its own.
    pub fn subprotocol(&self) -> Option<&'static str> {
        match self {
            Self::V2(_) => Some(crate::wire::v2::SUBPROTOCOL),
            Self::Compat { .. } => None,
        }
    }

    /// Spawns the session on `tracker`: `carrier` is awaited in the task (a websocket's upgrade
    /// completes only after the 101 went out; `None`: it failed, logged). One task type per
    /// protocol: a task holds its handler's state inline, so a shared one would make every
    /// socket pay for the larger handler.
    pub fn spawn<C, F>(self, tracker: &tokio_util::task::TaskTracker, client: Client, carrier: F)
    where
        C: Carrier + 'static,
        F: Future<Output = Option<C>> + Send + 'static,
    {
        match self {
            Self::V2(access) => tracker.spawn(async move {
                if let Some(carrier) = carrier.await {
                    run(carrier, client, v2::Session::new(access)).await;
                }
            }),
            Self::Compat { .. } => tracker.spawn(async move {
                if let Some(carrier) = carrier.await {
                    run(carrier, client, compat::Compat).await;
                }
            }),
        };
    }
}

/// A client's whole session: `ConnectionOpen`, the loop, the goodbye, `ConnectionClose`.
pub async fn run<C: Carrier, H: Handler>(mut carrier: C, mut client: Client, mut handler: H) {
    Box::pin(client.start()).await;
    let end = serve(&mut carrier, &mut client, &mut handler).await;
    drop(handler);
    Box::pin(conclude(&mut carrier, client, end)).await;
}
