//! Presence (protocol v2): per channel, who follows it (by a token claim, `PGWS_PRESENCE_CLAIM`),
//! over every pgws node of one database, with join and leave events for the sockets that ask.
//!
//! - [`table`]: the numbers (this node's, each other node's, their sums), without I/O.
//! - [`bus`]: the control messages nodes exchange through PostgreSQL.
//! - this module: the shared state behind one lock (the table, the sockets watching each
//!   channel, the deltas not yet sent) and the task that talks to the bus.
//!
//! How nodes share it (docs/ARCHITECTURE.md, "Presence"): each node sends its own changes as
//! deltas as they happen, and its whole state every `PGWS_PRESENCE_INTERVAL` (a heartbeat,
//! authoritative for that node: it corrects any delta lost). A node silent for 3 of its
//! intervals is dropped: its members leave with `node_lost`. Only a node with members talks:
//! its first member (and its source's return after an outage) makes it say `hello`, and every
//! node with members answers with its state at once; when its last member leaves, or it stops
//! cleanly, it says `bye` (what the others still held of it leaves with `left`).
//!
//! Member states (`presence_set`, see [`table`]): a named member's small JSON state, last
//! writer wins over its connections on every node; sent as `set` messages as they happen and in
//! every heartbeat, told to watchers as `presence_state` events and in snapshots, gone when the
//! member's last connection leaves.
//!
//! Cost: the work is per join and leave (and per heartbeat), never per message: the source pays
//! one prefix comparison per message ([`bus::is_control`]), and sockets that do not watch
//! presence get nothing.

pub mod bus;
pub mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::pg::publisher::Publisher;
use crate::publish::Publish;
use crate::source::SourceStatus;
use crate::stream::{Frame, Outbox};
use bus::{Header, Op};
use table::{Change, Member, Reason, Table};

/// `PGWS_PRESENCE_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceSettings {
    /// The claim that names a member.
    pub claim: String,
    /// Between heartbeats.
    pub interval: Duration,
}

/// Presence metrics (prefix `pgws_presence_`).
#[derive(Debug, Clone, Default)]
pub struct PresenceMetrics {
    /// Other nodes known now.
    pub nodes: Gauge,
    /// Nodes dropped for silence (their members left with `node_lost`).
    pub nodes_lost: Counter,
    /// Control messages received from other nodes.
    pub received: Counter,
    /// Control messages dropped (unreadable, stale, or the inbox was full).
    pub dropped: Counter,
    /// Control messages sent.
    pub sent: Counter,
}

impl crate::ops::metrics::Register for PresenceMetrics {
    /// Registers every metric under `presence_`.
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("presence");
        r.register("nodes", "Other pgws nodes heard from", self.nodes.clone());
        r.register(
            "nodes_lost",
            "Nodes dropped after 3 silent intervals",
            self.nodes_lost.clone(),
        );
        r.register(
            "received",
            "Presence control messages received from other nodes",
            self.received.clone(),
        );
        r.register(
            "dropped",
            "Presence control messages dropped (unreadable, stale replays, or inbox full)",
            self.dropped.clone(),
        );
        r.register("sent", "Presence control messages sent", self.sent.clone());
    }
}

/// Deltas waiting for the task; more are dropped and the next heartbeat is sent at once.
const MAX_PENDING: usize = 10_000;
/// Control messages received and not yet read; more are dropped (heartbeats correct it).
const INBOX: usize = 1024;
/// The publisher key of presence messages: one worker, so they reach the bus in order.
const PUBLISH_KEY: u64 = 0;

/// A socket watching a channel's presence.
struct Watcher {
    id: u64,
    outbox: Weak<Outbox>,
}

/// A state of another node being received in parts.
struct Assembly {
    seq: u64,
    parts: u32,
    seen: Vec<bool>,
    channels: table::Channels,
    states: table::States,
}

#[derive(Default)]
struct Inner {
    table: Table,
    watchers: HashMap<Box<str>, Vec<Watcher>>,
    pending: Vec<(Box<str>, Member, i64)>,
    /// Member states set here and not yet sent.
    pending_sets: Vec<bus::StateItem>,
    /// Deltas were dropped, or another node said hello: send the state now.
    state_now: bool,
    assembling: HashMap<Box<str>, Assembly>,
}

/// This node's presence: shared by its sockets, its source (control messages in) and its task.
pub struct Presence {
    settings: PresenceSettings,
    /// This process's id among the nodes (random per process: a restarted node is a new one).
    node: Box<str>,
    /// Control messages are read after replays of the past (WAL): drop those older than 3
    /// intervals.
    drop_stale: bool,
    inner: Mutex<Inner>,
    wake: Notify,
    inbox: mpsc::Sender<String>,
    inbox_rx: Mutex<Option<mpsc::Receiver<String>>>,
    counter: AtomicU64,
    seq: AtomicU64,
    metrics: PresenceMetrics,
}

/// What this node told the others (the task's state).
#[derive(Debug, Default)]
struct Talk {
    /// It said `hello` since it started (or since its source came back).
    greeted: bool,
    /// The others may hold members of it (it sent deltas or a state, and no `bye` since).
    announced: bool,
}

/// A v2 subscription's place in its channel's presence; leaving is dropping it.
pub struct Membership {
    presence: Arc<Presence>,
    channel: Box<str>,
    member: Member,
    watcher: Option<u64>,
}

impl Membership {
    /// The channel whose presence this is.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Sets the state of this membership's member on its channel (`json`: compact JSON of at
    /// most [`table::MAX_STATE`] bytes, checked by the caller); watchers of the channel on every
    /// node are told. `Err(Anonymous)`: the member has no name, so no state.
    pub fn set_state(&self, json: &str) -> Result<(), Anonymous> {
        let member = self.member.as_deref().ok_or(Anonymous)?;
        self.presence.set_state(&self.channel, member, json);
        Ok(())
    }
}

/// A member without a name (no `PGWS_PRESENCE_CLAIM` claim) cannot have a state: nobody could
/// tell whose it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an anonymous member has no state")]
pub struct Anonymous;

impl Drop for Membership {
    fn drop(&mut self) {
        self.presence.leave(self);
    }
}

fn now_ms() -> u64 {
    crate::auth::now_millis()
}

impl Presence {
    /// A node's presence; `base` names it in logs (its `PGWS_NODE_ID`, if any), `wal`: the bus
    /// replays the past after restarts.
    pub fn new(
        settings: PresenceSettings,
        base: Option<&str>,
        wal: bool,
        metrics: PresenceMetrics,
    ) -> Arc<Self> {
        let random = crate::stream::position::new_epoch();
        let node = match base {
            Some(b) => format!("{}-{random:016x}", b.chars().take(80).collect::<String>()),
            None => format!("{random:016x}"),
        };
        let (inbox, rx) = mpsc::channel(INBOX);
        Arc::new(Self {
            settings,
            node: node.as_str().into(),
            drop_stale: wal,
            inner: Mutex::new(Inner {
                table: Table::new(&node),
                ..Inner::default()
            }),
            wake: Notify::new(),
            inbox,
            inbox_rx: Mutex::new(Some(rx)),
            counter: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            metrics,
        })
    }

    /// This node's id on the bus.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section leaves the table consistent: a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The claim that names a member (`PGWS_PRESENCE_CLAIM`): its string value, else anonymous
    /// (read once per token, by [`crate::session::v2::access::Access`]).
    pub fn claim(&self) -> &str {
        &self.settings.claim
    }

    /// A v2 subscription joins `channel`'s presence (its own connection counts). When
    /// `watch` is given, that socket gets the channel's snapshot now (after its own join) and
    /// every change after it until the membership is dropped.
    pub fn join(
        self: &Arc<Self>,
        channel: &str,
        member: Option<&str>,
        watch: Option<(u64, &Arc<Outbox>)>,
    ) -> Membership {
        let mut inner = self.lock();
        let member = inner.table.admit(channel, member);
        if let Some(change) = inner.table.local_add(channel, &member, 1) {
            emit(&mut inner, &[change]);
        }
        queue(&mut inner, channel, &member, 1);
        if let Some((id, outbox)) = watch {
            inner
                .watchers
                .entry(channel.into())
                .or_default()
                .push(Watcher {
                    id,
                    outbox: Arc::downgrade(outbox),
                });
            outbox.push_replay(&[snapshot(&inner.table, channel)]);
        }
        drop(inner);
        self.wake.notify_one();
        Membership {
            presence: self.clone(),
            channel: channel.into(),
            member,
            watcher: watch.map(|(id, _)| id),
        }
    }

    fn leave(&self, m: &Membership) {
        let mut inner = self.lock();
        if let Some(id) = m.watcher
            && let Some(list) = inner.watchers.get_mut(&m.channel)
        {
            list.retain(|w| w.id != id);
            if list.is_empty() {
                inner.watchers.remove(&m.channel);
            }
        }
        if let Some(change) = inner.table.local_add(&m.channel, &m.member, -1) {
            emit(&mut inner, &[change]);
        }
        queue(&mut inner, &m.channel, &m.member, -1);
        drop(inner);
        self.wake.notify_one();
    }

    /// `member` (named, with a connection here) sets its state on `channel`.
    fn set_state(&self, channel: &str, member: &str, json: &str) {
        let mut inner = self.lock();
        let stamped = inner
            .table
            .local_set(channel, member, json.into(), now_ms());
        if inner.pending_sets.len() >= MAX_PENDING {
            inner.state_now = true;
        } else {
            inner
                .pending_sets
                .push((channel.into(), member.into(), stamped));
        }
        emit(&mut inner, &[]);
        drop(inner);
        self.wake.notify_one();
    }

    /// Hands a control message from the bus to the task (the source's loop does not wait: a
    /// full inbox drops it, and the sender's next heartbeat corrects what it said).
    pub fn receive(&self, payload: &str) {
        if self.inbox.try_send(payload.to_string()).is_err() {
            self.metrics.dropped.inc();
            tracing::warn!("presence: inbox full; a control message is dropped");
        }
    }

    fn header(&self) -> Header {
        Header {
            node: self.node.clone(),
            n: self.counter.fetch_add(1, Ordering::Relaxed),
            ts: now_ms(),
            interval_ms: self.settings.interval.as_millis() as u64,
        }
    }

    /// Reads one control message and applies it.
    fn apply(&self, payload: &str, now: Instant) {
        let (header, op) = match bus::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.dropped.inc();
                tracing::warn!(error = %e, "presence: control message ignored");
                return;
            }
        };
        if header.node == self.node {
            return;
        }
        let interval = Duration::from_millis(header.interval_ms);
        if self.drop_stale && header.ts.saturating_add(3 * header.interval_ms) < now_ms() {
            self.metrics.dropped.inc();
            return;
        }
        self.metrics.received.inc();
        let node = &*header.node;
        let mut inner = self.lock();
        let changes = match op {
            Op::Hello => {
                tracing::info!(node, "presence: a node said hello");
                if inner.table.touch(node, interval, now) && !inner.table.local().is_empty() {
                    inner.state_now = true;
                    self.wake.notify_one();
                }
                Vec::new()
            }
            Op::Bye => {
                tracing::info!(node, "presence: a node said goodbye");
                inner.assembling.remove(node);
                inner.table.drop_node(node, Reason::Left)
            }
            Op::Delta(deltas) => deltas
                .iter()
                .filter_map(|(channel, member, delta)| {
                    inner
                        .table
                        .remote_add(node, interval, now, channel, member, *delta)
                })
                .collect(),
            Op::Set(sets) => {
                for (channel, member, stamped) in sets {
                    inner
                        .table
                        .remote_set(node, interval, now, &channel, &member, stamped);
                }
                Vec::new()
            }
            Op::State {
                seq,
                part,
                parts,
                channels,
                states,
            } => {
                if !inner.table.touch(node, interval, now) {
                    return;
                }
                let a = inner
                    .assembling
                    .entry(node.into())
                    .or_insert_with(|| Assembly {
                        seq,
                        parts,
                        seen: vec![false; parts as usize],
                        channels: table::Channels::new(),
                        states: table::States::new(),
                    });
                if a.seq != seq || a.parts != parts {
                    *a = Assembly {
                        seq,
                        parts,
                        seen: vec![false; parts as usize],
                        channels: table::Channels::new(),
                        states: table::States::new(),
                    };
                }
                a.seen[part as usize] = true;
                for (channel, counts) in channels {
                    let into = a.channels.entry(channel).or_default();
                    into.anonymous = into.anonymous.saturating_add(counts.anonymous);
                    for (m, n) in counts.members {
                        let slot = into.members.entry(m).or_insert(0);
                        *slot = slot.saturating_add(n);
                    }
                }
                for (channel, member, stamped) in states {
                    a.states.entry(channel).or_default().insert(member, stamped);
                }
                if a.seen.iter().all(|s| *s) {
                    let (state, states) = inner
                        .assembling
                        .remove(node)
                        .map(|a| (a.channels, a.states))
                        .unwrap_or_default();
                    inner.table.remote_state(node, interval, now, state, states)
                } else {
                    Vec::new()
                }
            }
        };
        self.metrics.nodes.set(inner.table.nodes() as i64);
        emit(&mut inner, &changes);
    }

    /// Drops the nodes silent for too long.
    fn expire(&self, now: Instant) {
        let mut inner = self.lock();
        let (changes, lost) = inner.table.expire(now);
        for node in &lost {
            inner.assembling.remove(node);
            self.metrics.nodes_lost.inc();
            tracing::warn!(
                node = %node,
                "presence: node lost (silent for 3 intervals); its members left"
            );
        }
        self.metrics.nodes.set(inner.table.nodes() as i64);
        emit(&mut inner, &changes);
    }

    /// After this node's own outage: every node gets 3 intervals again (nothing could be heard
    /// meanwhile).
    fn touch_all(&self, now: Instant) {
        self.lock().table.touch_all(now);
    }

    /// Sends every presence watcher its channel's snapshot again (after an outage, once the
    /// other nodes answered).
    fn resend_snapshots(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for (channel, list) in inner.watchers.iter_mut() {
            list.retain(|w| w.outbox.strong_count() > 0);
            let frame = snapshot(&inner.table, channel);
            for w in list.iter() {
                if let Some(o) = w.outbox.upgrade() {
                    // Bounded (MAX_NAMED names), and a catch-up: like the first snapshot.
                    o.push_replay(std::slice::from_ref(&frame));
                }
            }
        }
        inner.watchers.retain(|_, l| !l.is_empty());
    }

    /// What to send now: the deltas queued, and (on a heartbeat, or when asked for) the full
    /// state, taken together so that the state includes exactly the deltas sent before it.
    ///
    /// Only a node with members of its own talks: the first time it has one (and again after an
    /// outage) it says `hello` first; once it has none left it says `bye` after its last deltas
    /// and falls silent. So a node without v2 presence members puts nothing on the bus.
    fn outgoing(&self, heartbeat: bool, talk: &mut Talk) -> Vec<String> {
        let mut inner = self.lock();
        let active = !inner.table.local().is_empty();
        let deltas = coalesce(std::mem::take(&mut inner.pending));
        let asked = std::mem::take(&mut inner.state_now);
        let mut out = Vec::new();
        if active && !talk.greeted {
            talk.greeted = true;
            out.push(bus::encode_plain(&self.header(), &Op::Hello));
        }
        out.extend(bus::encode_deltas(&deltas, || self.header()));
        let mut sets = last_sets(std::mem::take(&mut inner.pending_sets));
        let held = inner.table.local_states();
        sets.retain(|(c, m, s)| held.get(c).and_then(|h| h.get(m)) == Some(s));
        if active {
            // (A node without members has no states to tell either.)
            out.extend(bus::encode_sets(&sets, || self.header()));
        }
        if active && (heartbeat || asked || !talk.announced) {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            out.extend(bus::encode_state(
                inner.table.local(),
                inner.table.local_states(),
                seq,
                || self.header(),
            ));
        }
        if active {
            talk.announced = true;
        } else if talk.announced {
            talk.announced = false;
            out.push(bus::encode_plain(&self.header(), &Op::Bye));
        }
        out
    }

    /// Talks to the bus until `stop` (once the source receives, and while this node has
    /// members: [`Presence::outgoing`]): deltas as they come and the state every interval; reads
    /// what other nodes say, drops silent nodes, and says goodbye at the end.
    pub async fn run(
        self: Arc<Self>,
        publisher: Publisher,
        mut status: watch::Receiver<SourceStatus>,
        stop: CancellationToken,
    ) {
        let Some(mut inbox) = self
            .inbox_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let send = |payloads: Vec<String>| {
            let publisher = publisher.clone();
            let sent = self.metrics.sent.clone();
            async move {
                for payload in payloads {
                    sent.inc();
                    // Fire and forget: the pool logs and counts a failure.
                    drop(
                        publisher
                            .publish(
                                PUBLISH_KEY,
                                Publish::Notify {
                                    pg_channel: None,
                                    payload,
                                    channel: None,
                                },
                            )
                            .await,
                    );
                }
            }
        };
        // Nothing is heard before the source receives: talk from then on, so that answers to
        // `hello` arrive.
        let up = |s: &SourceStatus| match s {
            SourceStatus::Listening { generation } => Some(*generation),
            _ => None,
        };
        let mut generation = tokio::select! {
            _ = stop.cancelled() => return,
            r = status.wait_for(|s| up(s).is_some()) => match r {
                Ok(s) => up(&s).unwrap_or(1),
                Err(_) => return,
            },
        };
        let mut talk = Talk::default();
        send(self.outgoing(false, &mut talk)).await;
        let quarter = (self.settings.interval / 4).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(quarter);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut ticks: u64 = 0;
        let mut resync_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    ticks += 1;
                    let listening = up(&status.borrow()).is_some();
                    if listening {
                        self.expire(Instant::now());
                    }
                    if resync_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                        resync_at = None;
                        self.resend_snapshots();
                    }
                    if ticks.is_multiple_of(4) {
                        send(self.outgoing(true, &mut talk)).await;
                    }
                }
                _ = self.wake.notified() => send(self.outgoing(false, &mut talk)).await,
                Some(payload) = inbox.recv() => {
                    let now = Instant::now();
                    self.apply(&payload, now);
                    // Whatever else arrived meanwhile, without waiting.
                    while let Ok(payload) = inbox.try_recv() {
                        self.apply(&payload, now);
                    }
                }
                r = status.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let now_up = up(&status.borrow_and_update());
                    if let Some(g) = now_up
                        && g != generation
                    {
                        generation = g;
                        // Back after an outage: what others said meanwhile is lost. Give them
                        // 3 intervals again, ask for their states, and send the snapshots again
                        // once they had an interval to answer.
                        tracing::info!(node = %self.node, "presence: source back; asking the others again");
                        self.touch_all(Instant::now());
                        talk.greeted = false;
                        send(self.outgoing(true, &mut talk)).await;
                        resync_at = Some(tokio::time::Instant::now() + self.settings.interval);
                    }
                }
            }
        }
        if talk.announced {
            send(vec![bus::encode_plain(&self.header(), &Op::Bye)]).await;
        }
    }
}

/// Adds a local change to the deltas to send (bounded: past it, the next heartbeat says all).
fn queue(inner: &mut Inner, channel: &str, member: &Member, delta: i64) {
    if inner.pending.len() >= MAX_PENDING {
        inner.state_now = true;
        return;
    }
    inner.pending.push((channel.into(), member.clone(), delta));
}

/// Sums the deltas of each (channel, member), dropping those that cancel out, in first-seen
/// order.
fn coalesce(deltas: Vec<(Box<str>, Member, i64)>) -> Vec<(Box<str>, Member, i64)> {
    let mut index: HashMap<(Box<str>, Member), usize> = HashMap::new();
    let mut out: Vec<(Box<str>, Member, i64)> = Vec::new();
    for (c, m, d) in deltas {
        match index.get(&(c.clone(), m.clone())) {
            Some(&i) => out[i].2 += d,
            None => {
                index.insert((c.clone(), m.clone()), out.len());
                out.push((c, m, d));
            }
        }
    }
    out.retain(|(_, _, d)| *d != 0);
    out
}

/// Keeps the last set of each (channel, member), in the order of those last sets.
fn last_sets(sets: Vec<bus::StateItem>) -> Vec<bus::StateItem> {
    let mut last: HashMap<(Box<str>, Box<str>), usize> = HashMap::new();
    for (i, (c, m, _)) in sets.iter().enumerate() {
        last.insert((c.clone(), m.clone()), i);
    }
    sets.into_iter()
        .enumerate()
        .filter(|(i, (c, m, _))| last.get(&(c.clone(), m.clone())) == Some(i))
        .map(|(_, item)| item)
        .collect()
}

/// Tells the watchers of each change's channel, then of the member state changes the table
/// collected (after the joins they belong to).
fn emit(inner: &mut Inner, changes: &[Change]) {
    let states = inner.table.take_state_changes();
    let frames = changes
        .iter()
        .map(|change| (&change.channel, count_frame(change)))
        .chain(states.iter().map(|s| {
            (
                &s.channel,
                crate::wire::v2::presence_state(&s.channel, &s.member, s.state.as_deref()),
            )
        }));
    for (channel, frame) in frames {
        let Some(list) = inner.watchers.get_mut(channel) else {
            continue;
        };
        list.retain(|w| match w.outbox.upgrade() {
            Some(o) => {
                o.push(frame.clone());
                true
            }
            None => false,
        });
        if list.is_empty() {
            inner.watchers.remove(channel);
        }
    }
}

/// A join or leave event.
fn count_frame(change: &Change) -> Frame {
    match change.left {
        None => crate::wire::v2::presence_join(
            &change.channel,
            change.member.as_deref(),
            change.connections,
            change.count,
        ),
        Some(reason) => crate::wire::v2::presence_leave(
            &change.channel,
            change.member.as_deref(),
            change.connections,
            change.count,
            reason.as_str(),
        ),
    }
}

fn snapshot(table: &Table, channel: &str) -> Frame {
    let (members, anonymous, count) = table.snapshot(channel);
    let states = table.snapshot_states(channel);
    crate::wire::v2::presence_snapshot(channel, &members, &states, anonymous, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::outbox::Limits;
    use serde_json::Value;

    fn frames(o: &Outbox) -> Vec<Value> {
        let mut v = Vec::new();
        o.drain_into(&mut v);
        v.iter()
            .map(|f| serde_json::from_str(f.as_str()).unwrap())
            .collect()
    }

    /// Hostile numbers and stale replays (WAL) neither panic nor count.
    #[test]
    fn odd_messages_are_harmless() {
        let p = Presence::new(
            PresenceSettings {
                claim: "sub".into(),
                interval: Duration::from_millis(100),
            },
            Some("n"),
            true,
            PresenceMetrics::default(),
        );
        let now = Instant::now();
        let msg = |ts: u64, n: u64| {
            format!(
                r#"{{"pgws_control":"presence","node":"x","n":{n},"ts":{ts},"i":3600000,"op":"delta","d":[["c","m",1000000]]}}"#
            )
        };
        p.apply(&msg(u64::MAX, u64::MAX), now);
        assert_eq!(p.lock().table.snapshot("c").2, 1_000_000);
        // Older than 3 of its intervals: a replay of the past, ignored.
        let old = now_ms() - 3 * 3_600_000 - 1;
        p.apply(&msg(old, 1), now);
        assert_eq!(p.lock().table.snapshot("c").2, 1_000_000);
        p.apply(&msg(now_ms(), 2), now);
        assert_eq!(p.lock().table.snapshot("c").2, 2_000_000);
        assert_eq!(p.metrics.received.get(), 2);
        p.apply("{\"pgws_control\":\"presence\",", now);
        assert_eq!(
            p.metrics.dropped.get(),
            2,
            "the stale one and the unreadable one"
        );
    }

    #[test]
    fn watchers_get_a_snapshot_then_changes() {
        let p = Presence::new(
            PresenceSettings {
                claim: "sub".into(),
                interval: Duration::from_millis(100),
            },
            None,
            false,
            PresenceMetrics::default(),
        );
        let limits = Limits {
            messages: 64,
            bytes: 1 << 16,
        };
        let (a, b) = (
            Arc::new(Outbox::new(limits, crate::wire::V2)),
            Arc::new(Outbox::new(limits, crate::wire::V2)),
        );
        let ma = p.join("chat", Some("alice"), Some((1, &a)));
        let snap = frames(&a);
        assert_eq!(
            snap,
            [
                serde_json::json!({"type":"presence","channel":"chat","members":{"alice":1},"states":{},"anonymous":0,"count":1})
            ]
        );
        let mb = p.join("chat", None, Some((2, &b)));
        assert_eq!(
            frames(&a),
            [
                serde_json::json!({"type":"join","channel":"chat","member":null,"connections":1,"count":2})
            ]
        );
        assert_eq!(frames(&b)[0]["count"], 2);
        drop(ma);
        assert!(frames(&a).is_empty(), "no event of its own leave");
        assert_eq!(
            frames(&b),
            [
                serde_json::json!({"type":"leave","channel":"chat","member":"alice","connections":1,"count":1,"reason":"left"})
            ]
        );
        // Another node's state, then its loss.
        let other = bus::encode_state(
            &HashMap::from([(
                Box::<str>::from("chat"),
                table::Counts {
                    members: HashMap::from([("bob".into(), 2)]),
                    anonymous: 0,
                },
            )]),
            &table::States::new(),
            1,
            || Header {
                node: "other".into(),
                n: 1,
                ts: now_ms(),
                interval_ms: 100,
            },
        );
        let now = Instant::now();
        p.apply(&other[0], now);
        assert_eq!(frames(&b)[0]["connections"], 2);
        p.expire(now + Duration::from_millis(301));
        assert_eq!(
            frames(&b),
            [
                serde_json::json!({"type":"leave","channel":"chat","member":"bob","connections":2,"count":1,"reason":"node_lost"})
            ]
        );
        drop(mb);
        let mut talk = Talk::default();
        // The deltas cancelled out (alice +1 -1, anonymous +1 -1) and nobody is here: a node
        // without members says nothing.
        assert!(p.outgoing(true, &mut talk).is_empty());
        let mc = p.join("chat", Some("carol"), None);
        let out = p.outgoing(false, &mut talk);
        let ops: Vec<_> = out
            .iter()
            .map(|m| bus::decode(m).unwrap().1)
            .map(|op| match op {
                Op::Hello => "hello",
                Op::Bye => "bye",
                Op::Delta(_) => "delta",
                Op::Set(_) => "set",
                Op::State { .. } => "state",
            })
            .collect();
        assert_eq!(ops, ["hello", "delta", "state"]);
        assert_eq!(p.outgoing(false, &mut talk), Vec::<String>::new());
        drop(mc);
        let out = p.outgoing(false, &mut talk);
        assert_eq!(out.len(), 2);
        assert!(out[1].contains("\"op\":\"bye\""));
    }

    /// States: set, seen by watchers (and in snapshots), last writer wins across nodes, told
    /// in `set` and heartbeats, gone with the member's last connection on each node.
    #[test]
    fn member_states() {
        let p = Presence::new(
            PresenceSettings {
                claim: "sub".into(),
                interval: Duration::from_millis(100),
            },
            Some("n"),
            false,
            PresenceMetrics::default(),
        );
        let limits = Limits {
            messages: 64,
            bytes: 1 << 16,
        };
        let w = Arc::new(Outbox::new(limits, crate::wire::V2));
        let mw = p.join("chat", Some("watcher"), Some((1, &w)));
        frames(&w);
        let a1 = p.join("chat", Some("alice"), None);
        let a2 = p.join("chat", Some("alice"), None);
        let anon = p.join("chat", None, None);
        frames(&w);
        assert_eq!(anon.set_state("{}"), Err(Anonymous));
        a1.set_state(r#"{"typing":true}"#).unwrap();
        assert_eq!(
            frames(&w),
            [
                serde_json::json!({"type":"presence_state","channel":"chat","member":"alice","state":{"typing":true}})
            ]
        );
        // The same value again says nothing; another connection of alice replaces it.
        a2.set_state(r#"{"typing":true}"#).unwrap();
        assert!(frames(&w).is_empty());
        a2.set_state(r#"{"typing":false}"#).unwrap();
        assert_eq!(frames(&w)[0]["state"]["typing"], false);
        // What goes on the bus: the last set only, then the state with it.
        let mut talk = Talk::default();
        let out = p.outgoing(false, &mut talk);
        let sets: Vec<_> = out
            .iter()
            .filter_map(|m| match bus::decode(m).unwrap().1 {
                Op::Set(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(sets.len(), 1);
        assert_eq!(&*sets[0][0].2.json, r#"{"typing":false}"#);
        let in_state: Vec<_> = out
            .iter()
            .filter_map(|m| match bus::decode(m).unwrap().1 {
                Op::State { states, .. } => Some(states),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(in_state, sets[0]);
        let local_ts = sets[0][0].2.ts;
        // Another node with alice too: its older state loses, a newer one wins.
        let msg = |n: u64, body: &str| {
            format!(
                r#"{{"pgws_control":"presence","node":"x","n":{n},"ts":{},"i":100,{body}}}"#,
                now_ms()
            )
        };
        let now = Instant::now();
        p.apply(&msg(1, r#""op":"delta","d":[["chat","alice",1]]"#), now);
        assert_eq!(frames(&w)[0]["type"], "join");
        p.apply(
            &msg(
                2,
                &format!(
                    r#""op":"set","d":[["chat","alice",{},"old"]]"#,
                    local_ts - 1
                ),
            ),
            now,
        );
        assert!(frames(&w).is_empty(), "older: not seen");
        p.apply(
            &msg(
                3,
                &format!(
                    r#""op":"set","d":[["chat","alice",{},"new"]]"#,
                    local_ts + 5
                ),
            ),
            now,
        );
        assert_eq!(frames(&w)[0]["state"], "new");
        // A set here after it is stamped later, so it wins.
        a1.set_state("[1]").unwrap();
        assert_eq!(frames(&w)[0]["state"], serde_json::json!([1]));
        let snap = snapshot(&p.lock().table, "chat");
        let snap: Value = serde_json::from_str(snap.as_str()).unwrap();
        assert_eq!(snap["states"], serde_json::json!({"alice":[1]}));
        // Alice's connections here leave: her state is the other node's again.
        drop((a1, a2));
        let seen = frames(&w);
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[2]["state"], "new");
        // A heartbeat without her state clears it (she is still there: an event says null).
        p.apply(
            &msg(
                4,
                r#""op":"state","seq":1,"part":0,"parts":1,"s":[["chat",[["alice",1]]]]"#,
            ),
            now,
        );
        assert_eq!(
            frames(&w),
            [
                serde_json::json!({"type":"presence_state","channel":"chat","member":"alice","state":null})
            ]
        );
        // A set for a member the node does not hold is ignored; a bye takes her away without a
        // state event.
        p.apply(&msg(5, r#""op":"set","d":[["chat","bob",1,"x"]]"#), now);
        assert!(frames(&w).is_empty());
        p.apply(
            &msg(6, r#""op":"set","d":[["chat","alice",99999999999999,"x"]]"#),
            now,
        );
        assert_eq!(frames(&w)[0]["state"], "x");
        p.apply(&msg(7, r#""op":"bye""#), now);
        let seen = frames(&w);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0]["type"], "leave");
        assert!(p.lock().table.snapshot_states("chat").is_empty());
        drop((mw, anon));
    }
}
