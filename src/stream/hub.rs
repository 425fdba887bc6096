//! The hub: which clients follow which channel, and the fan-out of one message to all of them.
//!
//! What it owns: the map channel name → subscribed outboxes, and the counters of what it
//! delivered, could not route, or dropped. What it must never do: wait. A source calls
//! [`Hub::publish`] from its receive loop, so a slow client must cost it nothing: each push is a
//! short lock on that client's outbox, and a client over its limits is marked overflowed (its
//! transport closes it) instead of slowing the others. It knows nothing of PostgreSQL or of wire
//! formats.
//!
//! Why this shape: a message's text is allocated once ([`Frame`]) and shared by reference count
//! with every client; the map is behind a read-write lock because routing (read side) happens per
//! message and (un)subscribing (write side) once per client per channel. A per-channel replay
//! window (positions, resume) belongs beside this map, written on the same publish call.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::Frame;
use prometheus_client::metrics::counter::Counter;

use super::outbox::{Outbox, Push};

/// Counters of what the hub did (shared with the metrics registry).
#[derive(Debug, Default, Clone)]
pub struct HubStats {
    /// Frames queued for sockets.
    pub delivered: Counter,
    /// Notifications routed to a channel nobody listens to.
    pub unrouted: Counter,
    /// Frames dropped because a socket was too far behind.
    pub overflowed: Counter,
}

/// Channel name → subscribed outboxes.
#[derive(Default)]
pub struct Hub {
    channels: RwLock<HashMap<Box<str>, Vec<Arc<Outbox>>>>,
    /// What the hub did so far.
    pub stats: HubStats,
}

impl Hub {
    /// An empty registry with unregistered counters.
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry counting into `stats`.
    pub fn with_stats(stats: HubStats) -> Self {
        Self {
            channels: RwLock::default(),
            stats,
        }
    }

    /// Routes `text` to every socket subscribed to `channel`. Returns how many got it.
    #[cfg(test)]
    pub fn publish(&self, channel: &str, text: Frame) -> usize {
        self.publish_run(channel, std::slice::from_ref(&text))
    }

    /// Routes consecutive messages of one channel to its subscribers: one read lock for the run,
    /// one outbox lock and at most one wake-up per subscriber. Returns how many deliveries were
    /// queued.
    pub fn publish_run(&self, channel: &str, run: &[Frame]) -> usize {
        let map = self.channels.read().unwrap_or_else(|p| p.into_inner());
        let Some(subs) = map.get(channel) else {
            self.stats.unrouted.inc_by(run.len() as u64);
            return 0;
        };
        let mut n = 0;
        for sub in subs {
            let (queued, outcome) = sub.push_all(run);
            n += queued;
            if outcome == Push::Overflow {
                self.stats.overflowed.inc_by((run.len() - queued) as u64);
            }
        }
        self.stats.delivered.inc_by(n as u64);
        n
    }

    /// Adds a socket to a channel. Returns `true` when it is the channel's first subscriber.
    pub fn subscribe(&self, channel: &str, outbox: &Arc<Outbox>) -> bool {
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        let subs = map.entry(channel.into()).or_default();
        subs.push(outbox.clone());
        subs.len() == 1
    }

    /// Removes a socket from a channel; the channel entry goes with its last subscriber.
    /// Returns `true` when that was the last one.
    pub fn unsubscribe(&self, channel: &str, outbox: &Arc<Outbox>) -> bool {
        let mut map = self.channels.write().unwrap_or_else(|p| p.into_inner());
        if let Some(subs) = map.get_mut(channel) {
            if let Some(i) = subs.iter().position(|s| Arc::ptr_eq(s, outbox)) {
                subs.swap_remove(i);
            }
            if subs.is_empty() {
                map.remove(channel);
                return true;
            }
        }
        false
    }

    /// Whether anyone listens to `channel`.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(channel)
    }

    /// Every channel with subscribers.
    pub fn channel_names(&self) -> Vec<String> {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .map(|k| k.to_string())
            .collect()
    }

    /// Sends `text` once to every subscribed socket (for server-wide notices).
    pub fn broadcast(&self, text: Frame) -> usize {
        let map = self.channels.read().unwrap_or_else(|p| p.into_inner());
        let mut seen: Vec<*const Outbox> = Vec::new();
        let mut n = 0;
        for sub in map.values().flatten() {
            let p = Arc::as_ptr(sub);
            if seen.contains(&p) {
                continue;
            }
            seen.push(p);
            if sub.push(text.clone()) == Push::Queued {
                n += 1;
            }
        }
        n
    }

    /// Number of channels with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::outbox::Limits;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(Limits {
            messages: 16,
            bytes: 1 << 16,
        }))
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

    #[test]
    fn broadcast_reaches_each_socket_once() {
        let hub = Hub::new();
        let a = outbox();
        hub.subscribe("x", &a);
        hub.subscribe("y", &a);
        assert_eq!(hub.broadcast("gap".into()), 1);
        assert_eq!(drained(&a), ["gap"]);
    }
}
