//! Abuse limits: token buckets for connection and message rates, and a count of open sockets
//! per token subject.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Abuse limits; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// New websockets per second per client address.
    pub connections: u32,
    /// Messages per second per socket.
    pub messages: u32,
    /// Bytes per second per socket.
    pub bytes: u32,
    /// Open websockets per token subject.
    pub per_subject: usize,
}

/// A token bucket: `rate` tokens per second, holding at most twice that (the burst).
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: u32) -> Self {
        Self {
            tokens: 2.0 * f64::from(rate),
            last: Instant::now(),
            rate: f64::from(rate),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(2.0 * self.rate);
        self.last = now;
    }

    /// Takes `n` tokens if there are enough.
    pub fn take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 2.0 * self.rate
    }
}

/// New connections per second per client address.
pub struct AddressLimiter {
    rate: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl AddressLimiter {
    /// `rate` connections per second per address; 0 disables the limit.
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// Whether `ip` may open another connection now.
    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            // Forget addresses that are back to a full bucket: they are not limited anyway.
            map.retain(|_, b| !b.is_full(now));
        }
        map.entry(ip)
            .or_insert_with(|| Bucket::new(self.rate))
            .take(1.0, now)
    }
}

/// Open sockets per token subject (`sub`).
pub struct SubjectCounter {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One counted socket; dropping it releases the slot.
pub struct SubjectSlot {
    counter: Arc<SubjectCounter>,
    subject: String,
}

impl SubjectCounter {
    /// At most `max` sockets per subject; 0 disables the limit.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::default(),
        }
    }

    /// Takes a slot for `subject`, or `None` when the subject is at its limit.
    pub fn acquire(self: &Arc<Self>, subject: &str) -> Option<Option<SubjectSlot>> {
        if self.max == 0 {
            return Some(None);
        }
        let mut map = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(subject.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Some(SubjectSlot {
            counter: self.clone(),
            subject: subject.to_string(),
        }))
    }
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        let mut map = self.counter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = Bucket::new(10);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert!(b.take(1.0, t0));
        }
        assert!(!b.take(1.0, t0));
        assert!(b.take(1.0, t0 + Duration::from_millis(150)));
    }

    #[test]
    fn address_limiter() {
        let l = AddressLimiter::new(1);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.allow(ip) && l.allow(ip));
        assert!(!l.allow(ip));
        assert!(l.allow("10.0.0.2".parse().unwrap()));
        assert!(AddressLimiter::new(0).allow(ip));
    }

    #[test]
    fn subject_slots() {
        let c = Arc::new(SubjectCounter::new(1));
        let a = c.acquire("u").expect("first");
        assert!(c.acquire("u").is_none());
        assert!(c.acquire("v").is_some());
        drop(a);
        assert!(c.acquire("u").is_some());
    }
}
