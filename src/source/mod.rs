//! Sources: where messages come from, chosen with `PGWS_SOURCE`: [`notify`] (PostgreSQL
//! LISTEN/NOTIFY, the default) or [`wal`] (logical replication, reading `pg_logical_emit_message`
//! from the WAL, with positions of its own).
//!
//! What a source owns: its connection(s) to the database, reconnecting, and deciding when
//! messages may have been lost. What it gives the rest of the server, and nothing more:
//! - messages, handed to a [`Sink`] as `(PostgreSQL channel, text)` pairs, in batches of what
//!   arrived together ([`Sink::deliver_all`]; the sink routes them into the hub);
//! - losses, reported to the sink ([`Sink::gap`]), which tells the affected clients;
//! - its state, on a `watch` channel of [`SourceStatus`] (readiness, the embedded banner, tests);
//! - interest: in direct mode clients ask it to follow or drop PostgreSQL channels through a
//!   [`SourceHandle`], acknowledged once the source receives them.
//!
//! What a source must never do: write to clients itself, or decide which channel a notification
//! belongs to (that is [`crate::routing`]'s rule, applied through the sink), or block on a slow
//! client (the hub never waits: queues overflow and their clients are closed).

pub mod failover;
pub mod notify;
pub mod unread_notify;
pub mod wal;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot, watch};

use crate::channel::ChannelName;
use crate::control::Plane;
use crate::pg::publisher::Publisher;
use crate::publish::Publish;
use crate::routing::Router;
use crate::stream::{Frame, Hub, Seq};
use crate::wire::{self, compat::meta_gap_event};

pub use crate::pg::SourceKind;

/// Where a source stands; published on a watch channel for readiness, admission and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceStatus {
    /// Start-up: the first connection attempt is in flight.
    Connecting,
    /// Connected and receiving; the counter grows with every (re)connection.
    Listening {
        /// Number of successful connections so far (1 after start-up).
        generation: u64,
    },
    /// Not connected, and known to be: an attempt failed (also the first one, at start-up) or the
    /// connection was lost. Reconnecting.
    Down,
}

/// A change of the set of PostgreSQL channels a source follows (direct mode).
#[derive(Debug)]
pub enum Interest {
    /// A client subscribed to this channel; the sender is answered once the source receives it
    /// (or, while disconnected, at once: every channel is followed again on reconnection).
    Follow(ChannelName, oneshot::Sender<()>),
    /// The channel's last subscriber left: drop it, unless someone subscribed again meanwhile.
    Drop(ChannelName),
}

/// What clients and the server hold of the running source.
#[derive(Clone)]
pub struct SourceHandle {
    status: watch::Receiver<SourceStatus>,
    /// `None` unless channels are followed on demand (direct mode).
    interest: Option<mpsc::Sender<Interest>>,
}

/// How long a handshake waits for the source to follow its channels.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(5);

impl SourceHandle {
    /// A handle over a status channel and, in direct mode, the interest queue.
    pub fn new(
        status: watch::Receiver<SourceStatus>,
        interest: Option<mpsc::Sender<Interest>>,
    ) -> Self {
        Self { status, interest }
    }

    /// Whether the source is receiving now.
    pub fn is_up(&self) -> bool {
        matches!(*self.status.borrow(), SourceStatus::Listening { .. })
    }

    /// Waits while the first connection attempt is in flight ([`SourceStatus::Connecting`]), at
    /// most `limit`, so that a request at start-up is answered by the outcome rather than by the
    /// race with it. Returns at once in every other state.
    pub async fn settled(&self, limit: Duration) {
        let mut status = self.status.clone();
        let connecting = status.wait_for(|s| *s != SourceStatus::Connecting);
        let _ = tokio::time::timeout(limit, connecting).await;
    }

    /// Asks the source to receive `channels` and waits (at most 5 s) until it does, so that a
    /// client misses nothing sent after its handshake completes. Returns `false` on time-out.
    pub async fn follow(&self, channels: &[ChannelName]) -> bool {
        let Some(interest) = &self.interest else {
            return true;
        };
        let mut waits = Vec::new();
        for channel in channels {
            let (done, wait) = oneshot::channel();
            if interest
                .send(Interest::Follow(channel.clone(), done))
                .await
                .is_ok()
            {
                waits.push(wait);
            }
        }
        let all = futures_util::future::join_all(waits);
        tokio::time::timeout(FOLLOW_TIMEOUT, all).await.is_ok()
    }

    /// Tells the source that `channel` lost its last subscriber. A full queue only leaves the
    /// channel followed until the next reconnection.
    pub fn unfollow(&self, channel: &ChannelName) {
        if let Some(interest) = &self.interest {
            let _ = interest.try_send(Interest::Drop(channel.clone()));
        }
    }
}

/// Consecutive messages of one channel, handed to the hub as one run (one lock and one wake-up
/// per client for the run).
struct Runs<'a, 'h> {
    hub: &'h Hub,
    channel: Option<Cow<'a, str>>,
    run: Vec<Frame>,
    delivered: usize,
}

impl<'a, 'h> Runs<'a, 'h> {
    fn new(hub: &'h Hub) -> Self {
        Self {
            hub,
            channel: None,
            run: Vec::new(),
            delivered: 0,
        }
    }

    /// Adds a message for `channel` (positioned at `seq`; zero: the hub numbers it), closing
    /// the current run when the channel changes.
    fn push(&mut self, channel: Cow<'a, str>, seq: Seq, text: &str) {
        self.push_detailed(channel, seq, text, None);
    }

    /// [`Runs::push`] with a detail for the hub's selectors.
    fn push_detailed(
        &mut self,
        channel: Cow<'a, str>,
        seq: Seq,
        text: &str,
        detail: Option<crate::stream::frame::Detail>,
    ) {
        if self.channel.as_ref() != Some(&channel) {
            self.flush();
            self.channel = Some(channel);
        }
        let mut frame = match detail {
            Some(d) => Frame::with_detail(text, d),
            None => Frame::text(text),
        };
        if !seq.is_zero() {
            frame.set_seq(seq);
        }
        self.run.push(frame);
    }

    fn flush(&mut self) {
        if let Some(channel) = self.channel.take() {
            self.delivered += self.hub.publish_run(&channel, &mut self.run);
            self.run.clear();
        }
    }

    /// Hands the last run over; returns how many deliveries were queued.
    fn finish(mut self) -> usize {
        self.flush();
        self.delivered
    }
}

/// Where a source puts what it receives: routes messages into the hub, and tells clients (and
/// the meta channel) about losses. The same for every source.
pub struct Sink {
    /// Where messages go.
    pub hub: Arc<Hub>,
    /// Which channel a message goes to.
    pub router: Router,
    /// `PGWS_GAP_EVENTS`: tell connected clients about losses as they happen.
    pub gap_events: bool,
    /// The meta channel and the pool to publish its `Gap` event with.
    pub meta: Option<(Publisher, ChannelName)>,
    /// Gaps announced.
    pub gaps: Counter,
    /// Messages received from the source.
    pub received: Counter,
    /// The control plane: control messages on the listen channel go to their handlers
    /// (presence, revocations) and are never delivered.
    pub control: Plane,
}

impl Sink {
    /// Routes messages received together, in order: consecutive messages for the same channel
    /// go to the hub as one run (one lock and one wake-up per client for the run). Returns how
    /// many deliveries were queued.
    pub fn deliver_all<'a>(&self, batch: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
        self.deliver_positioned(batch.into_iter().map(|(c, p)| (Seq::ZERO, c, p)))
    }

    /// Like [`Sink::deliver_all`], for a source that numbers its messages itself (the WAL): each
    /// comes with its position, in increasing order ([`Seq::ZERO`]: the hub numbers it).
    pub fn deliver_positioned<'a>(
        &self,
        batch: impl IntoIterator<Item = (Seq, &'a str, &'a str)>,
    ) -> usize {
        let mut runs = Runs::new(&self.hub);
        for (seq, pg_channel, payload) in batch {
            self.received.inc();
            if self.control.intercept(pg_channel, payload) {
                continue;
            }
            runs.push(self.router.target(pg_channel, payload), seq, payload);
        }
        runs.finish()
    }

    /// Delivers table changes to their table's channel, past the control plane and the routing
    /// rules (which are about the bus's messages), each with what its channel's selectors need
    /// (per-row authorization decisions).
    pub fn deliver_changes<'a>(
        &self,
        batch: impl IntoIterator<Item = (Seq, &'a str, &'a str, Option<crate::stream::frame::Detail>)>,
    ) -> usize {
        let mut runs = Runs::new(&self.hub);
        for (seq, channel, text, detail) in batch {
            self.received.inc();
            runs.push_detailed(Cow::Borrowed(channel), seq, text, detail);
        }
        runs.finish()
    }

    /// The routing rules (sources ask which PostgreSQL channels to receive).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The hub (sources in direct mode ask which channels have subscribers).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Tells every subscribed client, and the meta channel, that messages may have been lost
    /// while the source was down for `down`. Does nothing when `PGWS_GAP_EVENTS` is off.
    pub async fn gap(&self, down: Duration) {
        // Resuming clients are told whatever `PGWS_GAP_EVENTS` says: they asked for positions.
        self.hub.mark_outage();
        // Protocol v2 sockets are told whatever `PGWS_GAP_EVENTS` says: a v2 client never
        // misses a message silently.
        let gap_events = self.gap_events;
        let n = self.hub.notify_subscribers(
            |encoding| wire::outage_per_socket(encoding, down, gap_events),
            |encoding, channel| wire::outage_per_channel(encoding, channel, down),
        );
        if !self.gap_events {
            return;
        }
        self.gaps.inc();
        tracing::info!(notices = n, "told subscribed sockets about the gap");
        if let Some((publisher, meta)) = &self.meta {
            // Fire and forget: the pool logs and counts a failure.
            drop(
                publisher
                    .publish(
                        0,
                        Publish::Notify {
                            pg_channel: self.router.server_event(meta),
                            payload: meta_gap_event(meta, down),
                            channel: Some(meta.to_string()),
                        },
                    )
                    .await,
            );
        }
    }
}
