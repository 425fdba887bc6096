//! Abuse limits: token buckets for connection and message rates, and a count of open sockets
//! per token subject.
//!
//! The connection rate is per client address, and a client address is often shared: behind a
//! reverse proxy that is not in `PGWS_TRUSTED_PROXIES` every client arrives from the proxy, behind
//! a NAT a whole office arrives from one address. So addresses in `PGWS_RATE_CONNECTIONS_EXEMPT`
//! (by default `private`: loopback, private ranges, link-local, carrier-grade NAT) are not limited,
//! and a public address, which is what a directly exposed server sees, still is. Peers that send
//! forwarding headers without being trusted are counted and named in the log
//! ([`ForwardedHeaders`]), so that the operator learns what to set.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use crate::address::AddressSet;

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
    exempt: AddressSet,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl AddressLimiter {
    /// `rate` connections per second per address, except for the addresses in `exempt`; 0
    /// disables the limit.
    pub fn new(rate: u32, exempt: AddressSet) -> Self {
        Self {
            rate,
            exempt,
            buckets: Mutex::default(),
        }
    }

    /// Whether `ip` is not limited at all (`PGWS_RATE_CONNECTIONS_EXEMPT`).
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.rate == 0 || self.exempt.contains(ip)
    }

    /// Whether `ip` may open another connection now.
    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.is_exempt(ip) {
            return true;
        }
        let ip = ip.to_canonical();
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

/// Peers named in the log, at most: a forged header cannot fill the log.
const NAMED_PEERS: usize = 8;

/// Requests whose peer sends `X-Forwarded-For`, `Forwarded` or `X-Real-IP` without being in
/// `PGWS_TRUSTED_PROXIES`: most likely a proxy nobody told pgws about, whose clients all share its
/// address. Counted (`pgws_forwarded_headers_ignored_total`); the first few peers are named in a
/// warning that says what to set.
pub struct ForwardedHeaders {
    ignored: Counter,
    named: Mutex<HashSet<IpAddr>>,
}

impl ForwardedHeaders {
    /// Counts into `ignored`.
    pub fn new(ignored: Counter) -> Self {
        Self {
            ignored,
            named: Mutex::default(),
        }
    }

    /// Notes a request from `peer` with forwarding headers that were ignored; `exempt` says
    /// whether the peer's connections escape the rate limit. Returns whether it was logged.
    pub fn ignored(&self, peer: IpAddr, exempt: bool) -> bool {
        self.ignored.inc();
        let peer = peer.to_canonical();
        {
            let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
            if named.len() >= NAMED_PEERS || !named.insert(peer) {
                return false;
            }
        }
        let effect = if exempt {
            "its connections are not rate-limited (PGWS_RATE_CONNECTIONS_EXEMPT)"
        } else {
            "its clients share one PGWS_RATE_CONNECTIONS budget and get 429 together"
        };
        tracing::warn!(peer = %peer,
            "peer {peer} sends X-Forwarded-For/Forwarded but is not in PGWS_TRUSTED_PROXIES: the \
             header is ignored, every client behind it is seen as {peer} in logs and limits, and \
             {effect}. If it is your reverse proxy or load balancer, set PGWS_TRUSTED_PROXIES={peer}");
        true
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_limiter() {
        let l = AddressLimiter::new(1, AddressSet::none());
        let ip = ip("10.0.0.1");
        assert!(l.allow(ip) && l.allow(ip));
        assert!(!l.allow(ip));
        assert!(l.allow("10.0.0.2".parse().unwrap()));
        assert!(AddressLimiter::new(0, AddressSet::none()).allow(ip));
    }

    #[test]
    fn private_peers_are_exempt_by_default_and_public_ones_are_not() {
        let l = AddressLimiter::new(1, AddressSet::private());
        // A proxy, a load balancer or a NAT on the local network: a restart storm gets through.
        for peer in [
            "127.0.0.1",
            "10.0.0.5",
            "172.17.0.1",
            "::1",
            "::ffff:192.168.1.1",
        ] {
            assert!((0..1000).all(|_| l.allow(ip(peer))), "{peer}");
            assert!(l.is_exempt(ip(peer)));
        }
        // A directly exposed server keeps its protection.
        let public = ip("203.0.113.9");
        assert!(l.allow(public) && l.allow(public));
        assert!(!l.allow(public));
        assert!(!l.is_exempt(public));
        // The same address through a dual-stack socket shares the bucket.
        assert!(!l.allow(ip("::ffff:203.0.113.9")));
        // A listed public address (an office NAT) is exempt too.
        let office = AddressLimiter::new(1, AddressSet::parse("198.51.100.0/24").unwrap());
        assert!((0..10).all(|_| office.allow(ip("198.51.100.20"))));
        assert!((0..10).any(|_| !office.allow(ip("127.0.0.1"))));
    }

    #[test]
    fn ignored_forwarding_headers_are_counted_and_named_a_few_times() {
        let counter = Counter::default();
        let f = ForwardedHeaders::new(counter.clone());
        assert!(f.ignored(ip("10.0.0.5"), true));
        assert!(!f.ignored(ip("10.0.0.5"), true), "named once per peer");
        assert!(!f.ignored(ip("::ffff:10.0.0.5"), true));
        for i in 0..20 {
            f.ignored(ip(&format!("203.0.113.{i}")), false);
        }
        assert_eq!(counter.get(), 23);
        assert_eq!(f.named.lock().unwrap().len(), NAMED_PEERS);
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
