//! Allowed check results, per (claims, channel, mode): a reconnecting client or a second socket
//! of the same token costs no database round trip.
//!
//! The key is the whole claims text, not a hash of it: two tokens share an entry only when the
//! check function would see exactly the same inputs, so a collision can never lend one client
//! another's rights. Only allowed answers are kept (a refusal is asked again next time, so that a
//! grant takes effect at once); an entry lives until the token's `exp`, a revocation that
//! matches it ([`Cache::drop_matching`]) or eviction. The cache is bounded: when full, expired
//! entries go first, then the oldest insertions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;

use super::Subject;
use super::revoke::Selector;
use crate::auth::now_seconds;

type Key = (Arc<str>, Box<str>, Box<str>);

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Arc<Subject>>,
    /// Insertion order, for eviction (may name entries removed since: skipped).
    order: VecDeque<Key>,
}

/// The cache of allowed (claims, channel, mode) triples.
pub struct Cache {
    inner: Mutex<Inner>,
    capacity: usize,
    entries: Gauge,
}

impl Cache {
    /// A cache of at most `capacity` entries (0: nothing is cached).
    pub fn new(capacity: usize, entries: Gauge) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity,
            entries,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent (plain inserts and removals).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(subject: &Subject, channel: &str, mode: &str) -> Key {
        (subject.claims.clone(), channel.into(), mode.into())
    }

    /// Whether the triple was allowed and the token has not expired since.
    pub fn allowed(&self, subject: &Subject, channel: &str, mode: &str) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let key = Self::key(subject, channel, mode);
        let mut inner = self.lock();
        match inner.entries.get(&key) {
            Some(s) if s.exp.is_none_or(|exp| exp > now_seconds()) => true,
            Some(_) => {
                inner.entries.remove(&key);
                self.entries.set(inner.entries.len() as i64);
                false
            }
            None => false,
        }
    }

    /// Remembers an allowed triple.
    pub fn insert(&self, subject: &Arc<Subject>, channel: &str, mode: &str) {
        if self.capacity == 0 {
            return;
        }
        let key = Self::key(subject, channel, mode);
        let mut inner = self.lock();
        if inner.entries.len() >= self.capacity && !inner.entries.contains_key(&key) {
            let now = now_seconds();
            inner
                .entries
                .retain(|_, s| s.exp.is_none_or(|exp| exp > now));
            while inner.entries.len() >= self.capacity {
                let Some(oldest) = inner.order.pop_front() else {
                    break;
                };
                inner.entries.remove(&oldest);
            }
        }
        if inner.entries.insert(key.clone(), subject.clone()).is_none() {
            inner.order.push_back(key);
        }
        // The order queue may hold keys removed by revocations: keep it bounded too.
        if inner.order.len() > self.capacity * 2 {
            let Inner { entries, order } = &mut *inner;
            order.retain(|k| entries.contains_key(k));
        }
        self.entries.set(inner.entries.len() as i64);
    }

    /// Forgets every entry `selector` matches.
    pub fn drop_matching(&self, selector: &Selector) {
        let mut inner = self.lock();
        inner
            .entries
            .retain(|(_, channel, _), s| !selector.matches(s, Some(channel)));
        self.entries.set(inner.entries.len() as i64);
    }

    /// Forgets everything (the periodic re-check starts from the database's answers).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.order.clear();
        self.entries.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(claims: &str, sub: &str, exp: Option<f64>) -> Arc<Subject> {
        Arc::new(Subject {
            claims: claims.into(),
            role: "web".into(),
            sub: Some(sub.into()),
            jti: None,
            exp,
        })
    }

    #[test]
    fn entries_are_per_claims_channel_and_mode_and_expire() {
        let c = Cache::new(10, Gauge::default());
        let alice = subject("{\"sub\":\"alice\"}", "alice", None);
        let bob = subject("{\"sub\":\"bob\"}", "bob", None);
        c.insert(&alice, "chat", "r");
        assert!(c.allowed(&alice, "chat", "r"));
        assert!(!c.allowed(&alice, "chat", "rw"));
        assert!(!c.allowed(&alice, "other", "r"));
        assert!(
            !c.allowed(&bob, "chat", "r"),
            "another token's rights are never lent"
        );
        let expired = subject("{\"sub\":\"carol\"}", "carol", Some(1.0));
        c.insert(&expired, "chat", "r");
        assert!(!c.allowed(&expired, "chat", "r"));
    }

    #[test]
    fn revocations_and_bounds() {
        let c = Cache::new(2, Gauge::default());
        let alice = subject("{\"sub\":\"alice\"}", "alice", None);
        let bob = subject("{\"sub\":\"bob\"}", "bob", None);
        c.insert(&alice, "chat", "r");
        c.insert(&bob, "chat", "r");
        c.drop_matching(&Selector {
            sub: Some("alice".into()),
            ..Selector::default()
        });
        assert!(!c.allowed(&alice, "chat", "r") && c.allowed(&bob, "chat", "r"));
        c.insert(&alice, "a", "r");
        c.insert(&alice, "b", "r");
        assert!(c.lock().entries.len() <= 2, "bounded");
        assert!(c.allowed(&alice, "b", "r"), "the newest stays");
    }
}
