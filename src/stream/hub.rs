//! The hub: which clients follow which channel, and the fan-out of one message to all of them.
//!
//! What it owns: the map channel name → subscribed outboxes, and the counters of what it
//! delivered, could not route, or dropped. What it must never do: wait. A source calls
//! [`Hub::publish_run`] from its receive loop, so a slow client must cost it nothing: each push is
//! a short lock on that client's outbox, and a client over its limits is marked overflowed (its
//! transport closes it) instead of slowing the others. It knows nothing of PostgreSQL or of wire
//! formats.
//!
//! Why this shape: a message's text is allocated once ([`Frame`]) and shared by reference count
//! with every client; the map is behind a read-write lock because routing (read side) happens per
//! message and (un)subscribing (write side) once per client per channel.
//!
//! Positions and replay live here too, because only here are "kept for replay" and "delivered
//! live" the same step: every routed message is numbered ([`Position`]) and kept in its channel's
//! [`Window`] under the map's read lock, while a resuming client takes the write lock to read
//! what it missed *and* join the channel's subscribers. So each message is either in what the
//! client replays or in what it receives live, never both and never neither.
//!
//! Lock order, everywhere in this file: the channel map (read or write), then a channel's
//! window, then `last`; `outages` and an outbox's own lock are taken last and alone. Nothing
//! here awaits while holding a lock, and nothing calls out of the hub while holding one except
//! the caller's closures of [`Hub::subscribe_with`] and [`Hub::notify_subscribers`], which must
//! only build frames (never lock the hub again: the write lock is not re-entrant).
//!
//! What a caller may rely on: positions of one channel only grow; a message is in a window
//! before any subscriber sees it; a socket's frames arrive in stream order per channel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use super::frame::{Encoding, Frame};
use super::gap::GapReason;
use super::outbox::{Outbox, Push};
use super::position::{Position, ResumeFrom, Seq};
use super::select::{Kept, Selector, View};
use super::window::{Held, Window, WindowLimits};

/// Counters of what the hub did (shared with the metrics registry).
#[derive(Debug, Default, Clone)]
pub struct HubStats {
    /// Frames queued for sockets.
    pub delivered: Counter,
    /// Notifications routed to a channel nobody listens to.
    pub unrouted: Counter,
    /// Frames dropped because a socket was too far behind.
    pub overflowed: Counter,
    /// Messages replayed to resuming clients.
    pub replayed: Counter,
    /// Resumes that could not be exact (a `Gap` was sent first).
    pub resume_gaps: Counter,
    /// Filtered subscribers asked about a message ([`Selector::route`]'s candidates).
    pub row_evaluations: Counter,
    /// Frames queued for filtered subscribers.
    pub row_deliveries: Counter,
}

/// How the hub keeps messages for replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplaySettings {
    /// Window limits.
    pub limits: WindowLimits,
    /// Keep a channel's window after its last subscriber left (until it ages out). Only when the
    /// source keeps receiving such channels (the listen channel); with channels received on
    /// demand (direct mode) an idle channel's window would silently miss messages.
    pub retain_idle: bool,
    /// Keep a window for every channel that carries messages, subscribed or not (the WAL
    /// source: a client may resume here with a position it got from another node, or from
    /// before this node restarted and rebuilt its windows from the WAL).
    pub keep_all: bool,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        Self {
            limits: WindowLimits::default(),
            retain_idle: true,
            keep_all: false,
        }
    }
}

/// One channel: its subscribers and its window.
struct Entry {
    /// The sockets following this channel. A `Vec`, not a set: fan-out walks it in order on
    /// every message, and removal (rare) is a `swap_remove`.
    subs: Vec<Arc<Outbox>>,
    /// The sockets following this channel through a view (row subscriptions with a filter),
    /// made by the first such subscriber ([`View::selector`]).
    selector: Option<Box<dyn Selector>>,
    /// Kept messages for resumes. Its own mutex so that routing (under the map's read lock) can
    /// append while other channels are routed from the same read lock.
    window: Mutex<Window>,
}

impl Entry {
    fn new(known: Seq) -> Self {
        Self {
            subs: Vec::new(),
            selector: None,
            window: Mutex::new(Window::new(known)),
        }
    }

    /// Whether nobody follows the channel, directly or through a view.
    fn is_idle(&self) -> bool {
        self.subs.is_empty() && self.selector.as_ref().is_none_or(|s| s.is_empty())
    }

    /// Every socket following the channel, directly or through a view.
    fn each_sub(&self, mut each: impl FnMut(&Arc<Outbox>)) {
        self.subs.iter().for_each(&mut each);
        if let Some(selector) = &self.selector {
            selector.for_each(&mut each);
        }
    }
}

/// What a resuming subscription did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resumed {
    /// Messages replayed.
    pub replayed: usize,
    /// Whether a `Gap` came first.
    pub gap: bool,
}

/// A resume that cannot be exact, for the caller to word in its protocol: why, which channels,
/// the client's position when the server knows it (`after`), the last position that may be lost
/// when known (`through`), and the first position replayed next (`resumes_at`; `None`: nothing
/// to replay).
#[derive(Debug, Clone, Copy)]
pub struct ResumeGap<'a> {
    /// Why.
    pub reason: GapReason,
    /// The channels joined.
    pub channels: &'a [&'a str],
    /// The client's position, when known.
    pub after: Option<Position>,
    /// The last position that may be lost, when known.
    pub through: Option<Position>,
    /// The first position replayed next.
    pub resumes_at: Option<Position>,
}

/// The notice made for `encoding` so far in one round of [`Hub::notify_subscribers`], made by
/// `make` the first time.
///
/// A `Vec` rather than a map: there are only a handful of encodings (compat, v2, SSE), and
/// a linear scan over them beats hashing on this path.
fn memo(
    made: &mut Vec<(Encoding, Option<Frame>)>,
    encoding: Encoding,
    make: impl FnOnce() -> Option<Frame>,
) -> Option<Frame> {
    if let Some((_, frame)) = made.iter().find(|(e, _)| *e == encoding) {
        return frame.clone();
    }
    let frame = make();
    made.push((encoding, frame.clone()));
    frame
}

/// What a resume replays, and why it is not exact (if so).
///
/// Built under the map's write lock by [`Hub::plan`], consumed by `subscribe_with` before
/// the lock is released, so nothing it names can move in between.
struct Plan {
    /// The position the client has seen through (`Seq::ZERO` when unknown or refused).
    after: Seq,
    /// The highest position any of the windows dropped: above `after`, the resume is not exact.
    lost_through: Seq,
    /// Why the resume is not exact; `None` when it is.
    reason: Option<GapReason>,
    /// What the windows still hold after `after`, in stream order.
    replay: Vec<Frame>,
}

impl Plan {
    /// The `after` and `through` a `Gap` names for `reason`.
    fn bounds(&self, reason: GapReason) -> (Option<Seq>, Option<Seq>) {
        // The client's own position is worth naming only when it had one, or when the window
        // (not the client) is at fault; `through` only means something for a window overrun.
        let known =
            (!self.after.is_zero() || reason == GapReason::WindowExceeded).then_some(self.after);
        let through = (reason == GapReason::WindowExceeded).then_some(self.lost_through);
        (known, through)
    }
}

/// Channel name → subscribed outboxes, plus each channel's replay window.
pub struct Hub {
    /// The routing table. Keys are `Arc<str>` so each routed frame can point at its channel's
    /// name without a copy ([`Frame::set_route`]).
    channels: RwLock<HashMap<Arc<str>, Entry>>,
    /// The numbering's epoch: this process's (NOTIFY), or the WAL stream's, set by the source
    /// once it knows the database ([`Hub::set_origin`]).
    epoch: AtomicU64,
    /// The last position given (NOTIFY) or received (WAL). Changed only under the map's read
    /// lock by the one source task, read under the write lock by resuming clients.
    last: Mutex<Seq>,
    /// Fixed at start-up; never changes while the hub lives.
    replay: ReplaySettings,
    /// What all windows hold together, for the global limits and the metrics.
    held: Held,
    /// Positions after which the source lost messages (outages), with when.
    /// Bounded (see [`Hub::mark_outage`]) and aged out by [`Hub::sweep`].
    outages: Mutex<VecDeque<(Instant, Seq)>>,
    /// Keep-all (WAL): the position through which a window made now knows nothing. Every
    /// message since the stream's origin made or found its channel's window, so a channel met
    /// for the first time had no message after the origin, or after the newest position a
    /// removed window knew of; a fresh window starts there, not at `last` (which would make a
    /// resume from before it a false `window_exceeded`).
    floor: Mutex<Seq>,
    /// Woken when a source that numbers its own messages moves `last` (resumes wait on it).
    progress: tokio::sync::Notify,
    /// What the hub did so far.
    pub stats: HubStats,
}

/// Locks `m`, ignoring poisoning (see inside why that is safe here).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a few field updates; a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// An empty registry with unregistered counters.
    #[cfg(test)]
    pub fn new() -> Self {
        Self::with_stats(HubStats::default(), ReplaySettings::default())
    }

    /// An empty registry counting into `stats`.
    pub fn with_stats(stats: HubStats, replay: ReplaySettings) -> Self {
        Self {
            channels: RwLock::default(),
            epoch: AtomicU64::new(super::position::new_epoch()),
            last: Mutex::new(Seq::ZERO),
            replay,
            held: Held::default(),
            outages: Mutex::default(),
            floor: Mutex::new(Seq::ZERO),
            progress: tokio::sync::Notify::new(),
            stats,
        }
    }

    /// The numbering's epoch (positions carry it).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// The last position given or received.
    pub fn last(&self) -> Seq {
        *lock(&self.last)
    }

    /// Where a source that numbers its own messages (WAL) starts: its stream's epoch, and the
    /// position through which it knows nothing (what came before its slot's confirmed point).
    /// A changed epoch (another database behind the same settings) empties every window: its
    /// positions mean nothing in the new numbering.
    pub fn set_origin(&self, epoch: u64, known_after: Seq) {
        // The write lock first: no message may be routed or replayed while the numbering changes.
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        let mut last = lock(&self.last);
        // Idle channels go with their windows; subscribed ones stay, with an empty window that
        // knows nothing before `known_after` (a resume from earlier gets a gap).
        if self.epoch.swap(epoch, Ordering::Relaxed) != epoch {
            for entry in map.values_mut() {
                let mut window = lock(&entry.window);
                window.clear(&self.held);
                *window = Window::new(known_after);
            }
            map.retain(|_, e| !e.is_idle());
            *last = known_after;
            *lock(&self.floor) = known_after;
        } else {
            if known_after > *last {
                *last = known_after;
            }
            let mut floor = lock(&self.floor);
            *floor = (*floor).max(known_after);
        }
    }

    /// Where a window made now starts knowing (see `floor`).
    fn fresh(&self) -> Seq {
        if self.replay.keep_all {
            *lock(&self.floor)
        } else {
            self.last()
        }
    }

    /// A window goes away: what it knew of is forgotten, so a later window for its channel
    /// must not claim to know from before it.
    fn forget(&self, window: &Window) {
        if self.replay.keep_all {
            let known = if window.is_empty() {
                window.lost_through()
            } else {
                self.last()
            };
            let mut floor = lock(&self.floor);
            *floor = (*floor).max(known);
        }
    }

    /// Waits (at most `limit`) until the stream reaches `position`, when it is a position of this
    /// stream ahead of what was read so far; returns at once otherwise. Only a source that numbers
    /// its own messages (WAL) can be behind a position it will reach; a counted stream's future
    /// positions are wrong, not early.
    pub async fn wait_for(&self, position: Position, limit: std::time::Duration) {
        if !self.replay.keep_all || position.epoch != self.epoch() {
            return;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Register for the wake-up *before* reading `last`: a move between the read and the
            // wait would otherwise be missed and the resume would wait its full `limit`.
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.last() >= position.seq {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// The oldest position any window holds: a WAL source must be able to read everything from
    /// there again after a restart, so it confirms nothing at or after it.
    pub fn oldest_held(&self) -> Option<Seq> {
        let map = self.channels.read().unwrap_or_else(|p| p.into_inner());
        map.values().filter_map(|e| lock(&e.window).oldest()).min()
    }

    /// Routes `text` to every socket subscribed to `channel`. Returns how many got it.
    #[cfg(test)]
    pub fn publish(&self, channel: &str, text: Frame) -> usize {
        self.publish_run(channel, &mut [text])
    }

    /// Routes consecutive messages of one channel to its subscribers: numbers them (unless the
    /// source did: WAL positions), keeps them in the channel's window, and queues them with one
    /// read lock for the run, one outbox lock and at most one wake-up per subscriber. Returns
    /// how many deliveries were queued.
    pub fn publish_run(&self, channel: &str, run: &mut [Frame]) -> usize {
        let Some(tail) = run.last() else { return 0 };
        let numbered = !tail.seq().is_zero();
        let mut map = self.channels.read().unwrap_or_else(|p| p.into_inner());
        // Keep-all (WAL): a window is made for a channel on its first message. Upgrading a read
        // lock is not possible, so drop it, make the entry under the write lock, and read again;
        // a resuming client that took the write lock in between sees a fresh, empty window.
        if self.replay.keep_all && !map.contains_key(channel) {
            drop(map);
            {
                let mut w = self.channels.write().unwrap_or_else(|p| p.into_inner());
                let known = self.fresh();
                w.entry(channel.into()).or_insert_with(|| Entry::new(known));
            }
            map = self.channels.read().unwrap_or_else(|p| p.into_inner());
        }
        // No entry: nobody follows it and no window is kept, so the message is dropped here and
        // counted; a later resume on this channel learns of nothing it could have replayed.
        let Some((name, entry)) = map.get_key_value(channel) else {
            self.stats.unrouted.inc_by(run.len() as u64);
            return 0;
        };
        {
            // Number before keeping or delivering: the position is what makes replay and live
            // delivery meet exactly. `last` is written only here (and in `set_origin`), by the one
            // source task, so the read lock on the map is enough against resumes (write lock).
            let mut last = lock(&self.last);
            if numbered {
                *last = (*last).max(tail.seq());
                self.progress.notify_waiters();
            } else {
                for frame in run.iter_mut() {
                    last.minor += 1;
                    frame.set_seq(*last);
                }
            }
        }
        let epoch = self.epoch();
        for frame in run.iter_mut() {
            // Stamped after numbering so each frame carries its full position to every encoder.
            frame.set_route(name, epoch);
        }
        {
            // Into the window before any outbox: a client that resumes right after this run must
            // find these messages either in its replay or in its live queue.
            let now = Instant::now();
            let mut window = lock(&entry.window);
            for frame in run.iter() {
                window.push(frame, now, &self.replay.limits, &self.held);
            }
        }
        // Kept for replay (retained idle window or keep-all) but nobody to deliver to now.
        if entry.is_idle() {
            self.stats.unrouted.inc_by(run.len() as u64);
            return 0;
        }
        // Every socket gets the same frames, whatever it speaks: each transport encodes them
        // for its wire through the frames' shared cache (once per encoding, not per socket).
        let mut n = 0;
        for sub in &entry.subs {
            // One lock and at most one wake-up per subscriber per run. An overflowed outbox
            // never blocks the others: it is marked and its session closes it.
            let (queued, outcome) = sub.push_all(run);
            n += queued;
            if outcome == Push::Overflow {
                self.stats.overflowed.inc_by((run.len() - queued) as u64);
            }
        }
        if let Some(selector) = &entry.selector {
            n += self.route_selected(selector.as_ref(), run);
        }
        self.stats.delivered.inc_by(n as u64);
        n
    }

    /// The filtered subscribers' share of a run: each gets what its view makes of each frame,
    /// gathered per socket so that it still costs one outbox lock and one wake-up per run.
    fn route_selected(&self, selector: &dyn Selector, run: &[Frame]) -> usize {
        // A list, not a map: the sockets a run reaches are usually few, and their order of
        // first appearance keeps the pushes deterministic.
        let mut per: Vec<(Arc<Outbox>, Vec<Frame>)> = Vec::new();
        let mut evaluated = 0;
        for frame in run {
            evaluated += selector.route(frame, &mut |outbox, frame| match per
                .iter_mut()
                .find(|(o, _)| Arc::ptr_eq(o, outbox))
            {
                Some((_, frames)) => frames.push(frame),
                None => per.push((outbox.clone(), vec![frame])),
            });
        }
        let mut n = 0;
        for (outbox, frames) in per {
            let (queued, outcome) = outbox.push_all(&frames);
            n += queued;
            if outcome == Push::Overflow {
                self.stats.overflowed.inc_by((frames.len() - queued) as u64);
            }
        }
        self.stats.row_evaluations.inc_by(evaluated as u64);
        self.stats.row_deliveries.inc_by(n as u64);
        n
    }

    /// Adds a socket to `channels` at once, resuming after `from` when given, and queues, under
    /// the same write lock: `gap(..)` when the resume cannot be exact, the replay (every message
    /// of those channels after `from` still in their windows, in stream order), then
    /// `answer(position, resumed)` where `position` is the stream's position at the join (when
    /// it returns a frame). So everything of the channels up to `position` came before the
    /// answer and everything after it follows it: a client that keeps the answer's position
    /// (and then each message's) resumes exactly. `then` runs after the answer is queued, still
    /// under the lock (presence queues its snapshot there: nothing of the channel comes
    /// between the two). The caller words the gap and the answer: the hub has no protocol.
    ///
    /// A channel for which `view_of` gives a [`View`] (a row subscription with its filter) is
    /// joined through the channel's [`Selector`] instead, and its replay is what the view makes
    /// of each kept message, exactly as it would have been delivered live; the replay of all
    /// channels stays one stream order.
    #[allow(clippy::too_many_arguments)]
    pub fn subscribe_with<C: AsRef<str>>(
        &self,
        channels: &[C],
        outbox: &Arc<Outbox>,
        mut view_of: impl FnMut(&str) -> Option<View>,
        from: Option<ResumeFrom>,
        gap: impl FnOnce(&ResumeGap<'_>) -> Frame,
        answer: impl FnOnce(Position, Resumed) -> Option<Frame>,
        then: impl FnOnce(),
    ) -> Resumed {
        // The write lock covers join, plan, gap, replay and answer: no message can be routed
        // in between, which is what makes the resume exact.
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        let mut viewed: Vec<&str> = Vec::new();
        for channel in channels {
            let channel = channel.as_ref();
            match view_of(channel) {
                Some(view) => {
                    self.join_view(&mut map, channel, outbox, view);
                    viewed.push(channel);
                }
                None => {
                    self.join(&mut map, channel, outbox);
                }
            }
        }
        let epoch = self.epoch();
        let now = Position {
            epoch,
            seq: self.last(),
        };
        let mut resumed = Resumed::default();
        if let Some(from) = from {
            let mut plan = self.plan(&map, channels, from);
            if !viewed.is_empty() {
                // What the views let through, as it would have been delivered live.
                plan.replay = plan
                    .replay
                    .iter()
                    .filter_map(|f| match f.channel() {
                        Some(c) if viewed.contains(&c) => map
                            .get(c)
                            .and_then(|e| e.selector.as_ref())
                            .and_then(|s| s.view(outbox, f)),
                        _ => Some(f.clone()),
                    })
                    .collect();
            }
            let position = |seq| Position { epoch, seq };
            if let Some(reason) = plan.reason {
                self.stats.resume_gaps.inc();
                let names: Vec<&str> = channels.iter().map(AsRef::as_ref).collect();
                let (known, through) = plan.bounds(reason);
                outbox.push_replay(&[gap(&ResumeGap {
                    reason,
                    channels: &names,
                    after: known.map(position),
                    through: through.map(position),
                    resumes_at: plan.replay.first().map(|f| position(f.seq())),
                })]);
            }
            outbox.push_replay(&plan.replay);
            self.stats.replayed.inc_by(plan.replay.len() as u64);
            resumed = Resumed {
                replayed: plan.replay.len(),
                gap: plan.reason.is_some(),
            };
        }
        if let Some(frame) = answer(now, resumed) {
            outbox.push_replay(&[frame]);
        }
        then();
        resumed
    }

    /// What a resume from `from` replays of `channels`, and why it cannot be exact (if so).
    /// Called under the write lock.
    fn plan<C: AsRef<str>>(
        &self,
        map: &HashMap<Arc<str>, Entry>,
        channels: &[C],
        from: ResumeFrom,
    ) -> Plan {
        let now = self.last();
        let epoch = self.epoch();
        let zero = Seq::ZERO;
        // A position of this epoch at or before now is exact unless a window lost messages
        // since. A position from the future, another epoch or none at all cannot be trusted:
        // replay everything kept (from zero) and say so with a gap.
        let (after, mut reason) = match from {
            ResumeFrom::At(p) if p.epoch == epoch && p.seq <= now => (p.seq, None),
            ResumeFrom::At(p) if p.epoch == epoch => (zero, Some(GapReason::FuturePosition)),
            ResumeFrom::At(_) => (zero, Some(GapReason::OtherEpoch)),
            ResumeFrom::Unknown => (zero, Some(GapReason::UnknownPosition)),
        };
        let mut lost_through = zero;
        let mut replay: Vec<Frame> = Vec::new();
        for channel in channels {
            let Some(entry) = map.get(channel.as_ref()) else {
                continue;
            };
            let window = lock(&entry.window);
            lost_through = lost_through.max(window.lost_through());
            replay.extend(window.after(after).cloned());
        }
        // Order of the checks: a wrong position outranks a window overrun, which outranks an
        // outage; the client is told the most specific reason that applies.
        if reason.is_none() && lost_through > after {
            reason = Some(GapReason::WindowExceeded);
        }
        if reason.is_none() && lock(&self.outages).iter().any(|(_, at)| *at >= after) {
            reason = Some(GapReason::SourceOutage);
        }
        // Channels were walked one after the other; the client must see one stream order.
        replay.sort_by_key(Frame::seq);
        Plan {
            after,
            lost_through,
            reason,
            replay,
        }
    }

    /// Adds a socket to a channel. Returns `true` when it is the channel's first subscriber.
    #[cfg(test)]
    pub fn subscribe(&self, channel: &str, outbox: &Arc<Outbox>) -> bool {
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        self.join(&mut map, channel, outbox)
    }

    /// Adds `outbox` to `channel` under the caller's write lock, making the entry (with a
    /// window that knows nothing before now) if there was none. Returns `true` for the first
    /// subscriber. Joining the same channel twice adds the outbox twice: callers check first.
    fn join(
        &self,
        map: &mut HashMap<Arc<str>, Entry>,
        channel: &str,
        outbox: &Arc<Outbox>,
    ) -> bool {
        let now_seq = self.fresh();
        let entry = map
            .entry(channel.into())
            .or_insert_with(|| Entry::new(now_seq));
        let first = entry.is_idle();
        entry.subs.push(outbox.clone());
        first
    }

    /// Adds `outbox` to `channel`'s selector with its view (see [`Hub::join`]).
    fn join_view(
        &self,
        map: &mut HashMap<Arc<str>, Entry>,
        channel: &str,
        outbox: &Arc<Outbox>,
        view: View,
    ) -> bool {
        let now_seq = self.fresh();
        let entry = map
            .entry(channel.into())
            .or_insert_with(|| Entry::new(now_seq));
        let first = entry.is_idle();
        let selector = entry.selector.get_or_insert_with(view.selector);
        if !selector.add(outbox, view.subscription) {
            // Two kinds of view on one channel: a caller's bug, not a client's. Logged; the
            // socket then receives nothing of the channel rather than unfiltered changes.
            tracing::error!(
                channel,
                "a view of another kind than the channel's selector"
            );
        }
        first
    }

    /// Ends the holding of `outbox`'s view of `channel` (its snapshot has been sent) and queues,
    /// under the write lock (no message of the channel can come in between), what `finish`
    /// makes of what it held and of the stream's position now: the held changes that the
    /// snapshot did not contain, then the snapshot's end with this position. `false` (nothing
    /// queued) when the socket no longer follows the channel, or was not holding.
    pub fn release_view(
        &self,
        channel: &str,
        outbox: &Arc<Outbox>,
        finish: impl FnOnce(Kept, Position) -> Vec<Frame>,
    ) -> bool {
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        let Some(held) = map
            .get_mut(channel)
            .and_then(|e| e.selector.as_mut())
            .and_then(|s| s.release(outbox))
        else {
            return false;
        };
        let now = Position {
            epoch: self.epoch(),
            seq: self.last(),
        };
        // Past the queue's limits like a replay: what was held is bounded by the holding cap.
        outbox.push_replay(&finish(held, now));
        true
    }

    /// Removes a socket from a channel. Returns `true` when that was the last subscriber. The
    /// channel's window stays for resuming clients (until it ages out) when idle windows are
    /// kept; otherwise it goes with the last subscriber.
    pub fn unsubscribe(&self, channel: &str, outbox: &Arc<Outbox>) -> bool {
        // Leaving needs no care for positions: what the socket already queued stays queued,
        // and a later resume of the channel starts from the position the client kept.
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = map.get_mut(channel) else {
            return false;
        };
        if let Some(i) = entry.subs.iter().position(|s| Arc::ptr_eq(s, outbox)) {
            entry.subs.swap_remove(i);
        } else if !entry.selector.as_mut().is_some_and(|s| s.remove(outbox)) {
            return false;
        }
        if !entry.is_idle() {
            return false;
        }
        entry.selector = None;
        // Without retained idle windows (direct mode: the source stops receiving the channel
        // once nobody follows it) a kept window would go stale without knowing it: drop it.
        let keep = self.replay.retain_idle && !lock(&entry.window).is_empty();
        if !keep && let Some(entry) = map.remove(channel) {
            let mut window = lock(&entry.window);
            self.forget(&window);
            window.clear(&self.held);
        }
        true
    }

    /// Notes that the source lost messages after the current position (an outage): resumes from
    /// before here get a `Gap`.
    pub fn mark_outage(&self) {
        let mut outages = lock(&self.outages);
        outages.push_back((Instant::now(), self.last()));
        // Bounded so that a flapping source cannot grow this without limit between sweeps;
        // losing the oldest notes only makes very old resumes look exact a bit sooner.
        if outages.len() > 1024 {
            outages.pop_front();
        }
    }

    /// Ages out windows and outage notes; drops idle channels whose window is empty. Called
    /// periodically by the server.
    pub fn sweep(&self) {
        let now = Instant::now();
        let limits = &self.replay.limits;
        {
            let mut outages = lock(&self.outages);
            while outages
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > limits.age)
            {
                outages.pop_front();
            }
        }
        // Two passes: expire under the read lock (routing goes on), then take the write lock
        // only if some channel became idle, and check again it still is (someone may have
        // joined in between).
        let mut idle = Vec::new();
        {
            let map = self.channels.read().unwrap_or_else(|p| p.into_inner());
            for (name, entry) in map.iter() {
                let mut window = lock(&entry.window);
                window.expire(now, limits, &self.held);
                if entry.is_idle() && window.is_empty() {
                    idle.push(name.clone());
                }
            }
        }
        if !idle.is_empty() {
            let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
            for name in idle {
                if map.get(&name).is_some_and(Entry::is_idle)
                    && let Some(entry) = map.remove(&name)
                {
                    self.forget(&lock(&entry.window));
                }
            }
        }
    }

    /// Messages and text bytes held by all windows.
    pub fn held(&self) -> (usize, usize) {
        (
            self.held.messages.load(Ordering::Relaxed),
            self.held.bytes.load(Ordering::Relaxed),
        )
    }

    /// Whether anyone listens to `channel`.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(channel)
            .is_some_and(|e| !e.is_idle())
    }

    /// Every channel with subscribers.
    pub fn channel_names(&self) -> Vec<String> {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, e)| !e.is_idle())
            .map(|(k, _)| k.to_string())
            .collect()
    }

    /// Queues a notice on every subscribed socket: `per_socket(encoding)` once per socket and
    /// `per_channel(encoding, channel)` once per channel it follows (`None`: nothing for that
    /// kind of socket). Each notice is made once per encoding (and channel) and shared. For
    /// server-wide news such as a source outage, which each protocol words its own way.
    pub fn notify_subscribers(
        &self,
        per_socket: impl Fn(Encoding) -> Option<Frame>,
        per_channel: impl Fn(Encoding, &str) -> Option<Frame>,
    ) -> usize {
        let map = self.channels.read().unwrap_or_else(|p| p.into_inner());
        // An outbox that follows several channels appears in several entries; `seen` makes the
        // per-socket notice go out once. Pointers only compare identities, never dereferenced.
        // A set, not a list: a list made an outage notice quadratic in the number of sockets.
        let mut seen: HashSet<*const Outbox> = HashSet::new();
        let mut socket_notices: Vec<(Encoding, Option<Frame>)> = Vec::new();
        let mut n = 0;
        for (name, entry) in map.iter() {
            // Per channel: the notice names the channel, so it is made once per (encoding,
            // channel) and shared by that channel's sockets of the encoding.
            let mut channel_notices: Vec<(Encoding, Option<Frame>)> = Vec::new();
            entry.each_sub(|sub| {
                let encoding = sub.encoding();
                let notice = memo(&mut channel_notices, encoding, || {
                    per_channel(encoding, name)
                });
                if let Some(frame) = notice
                    && sub.push(frame) == Push::Queued
                {
                    n += 1;
                }
                if !seen.insert(Arc::as_ptr(sub)) {
                    return;
                }
                if let Some(frame) = memo(&mut socket_notices, encoding, || per_socket(encoding))
                    && sub.push(frame) == Push::Queued
                {
                    n += 1;
                }
            });
        }
        n
    }

    /// Number of channels with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|e| !e.is_idle())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::outbox::Limits;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(
            Limits {
                messages: 16,
                bytes: 1 << 16,
            },
            Encoding::slot(0),
        ))
    }

    fn drained(o: &Outbox) -> Vec<String> {
        let mut v = Vec::new();
        o.drain_into(&mut v);
        v.into_iter().map(|b| b.as_str().to_string()).collect()
    }

    // Spec §10 row 2: one message to one listener on one channel.
    #[test]
    fn relays_to_subscribers_of_the_channel_only() {
        let hub = Hub::new();
        let (a, b) = (outbox(), outbox());
        hub.subscribe("test", &a);
        hub.subscribe("other", &b);
        assert_eq!(hub.publish("test", "payload".into()), 1);
        assert_eq!(drained(&a), ["payload"]);
        assert!(drained(&b).is_empty());
        assert_eq!(hub.publish("nobody", "x".into()), 0);
        assert_eq!(hub.stats.unrouted.get(), 1);
    }

    #[test]
    fn last_unsubscribe_removes_the_channel() {
        let hub = Hub::new();
        let (a, b) = (outbox(), outbox());
        hub.subscribe("c", &a);
        hub.subscribe("c", &b);
        hub.unsubscribe("c", &a);
        assert_eq!(hub.channel_count(), 1);
        assert_eq!(hub.publish("c", "m".into()), 1);
        hub.unsubscribe("c", &b);
        assert_eq!(hub.channel_count(), 0);
    }

    /// Every socket of a channel gets the same frame, stamped with its channel and position;
    /// each encoding of it is made once and shared by every socket of that encoding.
    #[test]
    fn sockets_share_one_frame_and_its_encodings() {
        let hub = Hub::new();
        let limits = Limits {
            messages: 16,
            bytes: 1 << 16,
        };
        let (x, y) = (Encoding::slot(1), Encoding::slot(2));
        let (a, b, c) = (
            Arc::new(Outbox::new(limits, x)),
            Arc::new(Outbox::new(limits, x)),
            Arc::new(Outbox::new(limits, y)),
        );
        for o in [&a, &b, &c] {
            hub.subscribe("c", o);
        }
        hub.publish("c", "{\"x\":1}".into());
        let take = |o: &Outbox| {
            let mut v = Vec::new();
            o.drain_into(&mut v);
            v.pop().unwrap()
        };
        let (fa, fb, fc) = (take(&a), take(&b), take(&c));
        assert!(fa.shares_with(&fb) && fa.shares_with(&fc));
        assert_eq!(fa.channel(), Some("c"));
        assert_eq!(fa.position().map(|p| p.epoch), Some(hub.epoch()));
        let encode = |e: Encoding, f: &Frame| format!("{e:?}{}", f.as_str()).into_bytes();
        assert!(std::ptr::eq(fa.encoded(x, encode), fb.encoded(x, encode)));
        assert_ne!(fa.encoded(x, encode), fc.encoded(y, encode));
    }

    /// A notice per socket reaches each socket once; a notice per channel once per channel it
    /// follows; each kind only the encodings that word one.
    #[test]
    fn notices_per_socket_and_per_channel() {
        let hub = Hub::new();
        let limits = Limits {
            messages: 16,
            bytes: 1 << 16,
        };
        let (x, y) = (Encoding::slot(1), Encoding::slot(2));
        let (a, b) = (
            Arc::new(Outbox::new(limits, x)),
            Arc::new(Outbox::new(limits, y)),
        );
        for o in [&a, &b] {
            hub.subscribe("p", o);
            hub.subscribe("q", o);
        }
        let n = hub.notify_subscribers(
            |e| (e == x).then(|| Frame::from("gap")),
            |e, ch| (e == y).then(|| Frame::from(format!("gap {ch}"))),
        );
        assert_eq!(n, 3);
        assert_eq!(drained(&a), ["gap"]);
        let mut on_b = drained(&b);
        on_b.sort();
        assert_eq!(on_b, ["gap p", "gap q"]);
    }
}
