//! The replay window of one channel: its most recent messages, bounded by count, bytes and age
//! (per channel) and by one memory cap shared by every window of the server.
//!
//! Memory is per channel, not per client: a window holds the same shared [`Frame`]s the outboxes
//! hold, so keeping a message for replay costs one reference and its bookkeeping, and an idle
//! connection costs nothing here. Each window also remembers the highest position it can no
//! longer replay (`lost_through`: evicted, or before the window began), which is what lets a
//! resuming client be told about a gap instead of silently missing it.
//!
//! What it owns: one channel's kept frames and their byte count, and its share of the
//! server-wide [`Held`] totals. What it must never do: lock anything (its caller, the hub,
//! holds the channel's mutex), copy a message's text, or hold a frame past any limit once a
//! push or a sweep has run. A window never decides whether a resume is exact; it only answers
//! "what do you hold after this position" and "what can you no longer replay"; the hub turns
//! those into a replay and a gap.
//!
//! Invariant: the frames are in strictly increasing position order (the hub pushes them in
//! stream order under its lock), which is what lets [`Window::after`] binary-search.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Frame, Seq};

/// Limits of the replay windows (`PGWS_REPLAY_*`).
///
/// The defaults (1000 messages, 1 MiB, five minutes per channel; 256 MiB in all) cover a
/// phone that lost its network or a page reload on all but the busiest channels, while a
/// server with thousands of active channels stays within a fixed budget (`memory` caps the
/// sum, whatever the number of channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// Most messages per channel (0: no windows, every resume is a gap).
    pub messages: usize,
    /// Most text bytes per channel.
    pub bytes: usize,
    /// Oldest message kept.
    pub age: Duration,
    /// Most text bytes held by all windows together.
    pub memory: usize,
}

impl Default for WindowLimits {
    fn default() -> Self {
        Self {
            messages: 1000,
            bytes: 1024 * 1024,
            age: Duration::from_secs(300),
            memory: 256 * 1024 * 1024,
        }
    }
}

/// What every window holds, counted together (for the memory cap and the metrics).
///
/// Atomics, not a mutex: every window updates them from under its own channel lock, and a
/// lock shared by all channels would serialise routing across channels.
#[derive(Debug, Default)]
pub struct Held {
    /// Messages.
    pub messages: AtomicUsize,
    /// Text bytes.
    pub bytes: AtomicUsize,
}

/// One channel's window.
#[derive(Debug)]
pub struct Window {
    /// Each kept frame with when it was kept (for the age limit), oldest first.
    entries: VecDeque<(Instant, Frame)>,
    /// The text bytes of `entries` (what the per-channel byte limit counts).
    bytes: usize,
    /// The highest position this window cannot replay.
    lost_through: Seq,
}

impl Window {
    /// An empty window for a channel first seen when the stream was at `now_seq`: anything up
    /// to there is unknown to it.
    pub fn new(now_seq: Seq) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            // Not zero: a client resuming from before the window existed might have missed
            // messages of this channel that nobody kept, so it must be told (a gap).
            lost_through: now_seq,
        }
    }

    /// The highest position this window cannot replay.
    pub fn lost_through(&self) -> Seq {
        self.lost_through
    }

    /// The oldest position it holds (the WAL source confirms nothing from there on).
    pub fn oldest(&self) -> Option<Seq> {
        self.entries.front().map(|(_, f)| f.seq())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps `frame` (already numbered), then evicts what the limits no longer allow.
    pub fn push(&mut self, frame: &Frame, now: Instant, limits: &WindowLimits, held: &Held) {
        // Replay disabled: keep nothing, but move `lost_through` so every resume is told the
        // truth (a gap) instead of an empty, "exact" replay.
        if limits.messages == 0 {
            self.lost_through = frame.seq();
            return;
        }
        self.bytes += frame.len();
        held.bytes.fetch_add(frame.len(), Ordering::Relaxed);
        held.messages.fetch_add(1, Ordering::Relaxed);
        self.entries.push_back((now, frame.clone()));
        // The shared memory cap is enforced by the window that pushes: it evicts its own oldest
        // until the total fits, so a busy channel pays for its own growth. A window never evicts
        // another channel's frames (that would need their locks).
        while self.entries.len() > limits.messages
            || self.bytes > limits.bytes
            || (held.bytes.load(Ordering::Relaxed) > limits.memory && !self.entries.is_empty())
        {
            self.evict_oldest(held);
        }
        // Age too, so a window that receives nothing for a while is still cleaned by `sweep`,
        // and one that does receive is cleaned on its own path without waiting for it.
        self.expire(now, limits, held);
    }

    /// Drops messages older than the age limit.
    pub fn expire(&mut self, now: Instant, limits: &WindowLimits, held: &Held) {
        while self
            .entries
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > limits.age)
        {
            self.evict_oldest(held);
        }
    }

    fn evict_oldest(&mut self, held: &Held) {
        if let Some((_, old)) = self.entries.pop_front() {
            self.bytes -= old.len();
            held.bytes.fetch_sub(old.len(), Ordering::Relaxed);
            held.messages.fetch_sub(1, Ordering::Relaxed);
            // Whatever leaves the window becomes "lost" for resumes from before it: this is what
            // turns an eviction into a gap rather than a silent hole.
            self.lost_through = self.lost_through.max(old.seq());
        }
        // Give memory back after a burst, but only when it is worth it: shrinking a small or
        // still-full deque would reallocate on every eviction.
        if self.entries.capacity() > 64 && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to_fit();
        }
    }

    /// The messages after position `seq`, oldest first.
    pub fn after(&self, seq: Seq) -> impl Iterator<Item = &Frame> {
        // Binary search: the entries are in position order (see the module header).
        let start = self.entries.partition_point(|(_, f)| f.seq() <= seq);
        self.entries.range(start..).map(|(_, f)| f)
    }

    /// Gives back everything it holds (the channel is dropped).
    ///
    /// `lost_through` is left as it is: a caller that keeps using the window (a new epoch)
    /// replaces it with `Window::new` instead.
    pub fn clear(&mut self, held: &Held) {
        held.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
        held.messages
            .fetch_sub(self.entries.len(), Ordering::Relaxed);
        self.entries = VecDeque::new();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, text: &str) -> Frame {
        let mut f = Frame::from(text);
        f.set_seq(Seq::counter(seq));
        f
    }

    fn seqs<'a>(it: impl Iterator<Item = &'a Frame>) -> Vec<u64> {
        it.map(|f| f.seq().minor).collect()
    }

    fn at(n: u64) -> Seq {
        Seq::counter(n)
    }

    #[test]
    fn count_bytes_and_memory_limits_evict_the_oldest() {
        let held = Held::default();
        let now = Instant::now();
        let limits = WindowLimits {
            messages: 3,
            bytes: 10,
            ..WindowLimits::default()
        };
        let mut w = Window::new(at(0));
        for s in 1..=5 {
            w.push(&frame(s, "ab"), now, &limits, &held);
        }
        assert_eq!(seqs(w.after(at(0))), [3, 4, 5]);
        assert_eq!(w.lost_through(), at(2));
        assert_eq!(seqs(w.after(at(4))), [5]);
        w.push(&frame(6, "0123456789"), now, &limits, &held);
        assert_eq!(seqs(w.after(at(0))), [6], "bytes limit");
        assert_eq!(held.bytes.load(Ordering::Relaxed), 10);
        let tight = WindowLimits {
            memory: 4,
            ..WindowLimits::default()
        };
        let mut other = Window::new(at(6));
        other.push(&frame(7, "abc"), now, &tight, &held);
        assert!(
            other.is_empty(),
            "over the global cap: the window gives way"
        );
        assert_eq!(other.lost_through(), at(7));
        w.clear(&held);
        assert_eq!(held.bytes.load(Ordering::Relaxed), 0);
        assert_eq!(held.messages.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn age_limit_and_disabled_windows() {
        let held = Held::default();
        let start = Instant::now();
        let limits = WindowLimits {
            age: Duration::from_secs(10),
            ..WindowLimits::default()
        };
        let mut w = Window::new(at(0));
        w.push(&frame(1, "a"), start, &limits, &held);
        w.push(
            &frame(2, "b"),
            start + Duration::from_secs(5),
            &limits,
            &held,
        );
        w.expire(start + Duration::from_secs(11), &limits, &held);
        assert_eq!(seqs(w.after(at(0))), [2]);
        assert_eq!(w.lost_through(), at(1));

        let off = WindowLimits {
            messages: 0,
            ..WindowLimits::default()
        };
        let mut w = Window::new(at(0));
        w.push(&frame(9, "a"), start, &off, &held);
        assert!(w.is_empty());
        assert_eq!(w.lost_through(), at(9));
    }
}
