//! Pacing of senders: how many messages each sender sends and when each
//! one is due (steady rate, bursts, or as fast as possible).

use crate::cli::Pacing;
use anyhow::{Result, bail};
use std::time::{Duration, Instant};

/// Upper bound on messages of one run.
pub const MAX_MESSAGES: u64 = 100_000_000;

/// Resolved pacing for the whole run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Messages over all senders.
    pub total: u64,
    /// Messages per second over all senders (0 = unlimited).
    pub rate: f64,
    /// Burst size over all senders (0 = no bursts).
    pub burst: u64,
    /// Pause between bursts.
    pub burst_interval: Duration,
}

impl Plan {
    /// Resolves the command-line pacing options.
    pub fn new(p: &Pacing) -> Result<Self> {
        if !(p.rate.is_finite() && p.rate >= 0.0) {
            bail!("--rate must be >= 0");
        }
        let total = match (p.messages, p.duration) {
            (Some(m), _) => m,
            (None, Some(d)) if p.rate > 0.0 && d > 0.0 => (p.rate * d).round() as u64,
            (None, Some(_)) => bail!("--duration needs --rate > 0 (or give --messages)"),
            (None, None) => 1000,
        };
        if total == 0 || total > MAX_MESSAGES {
            bail!("message count must be within 1..={MAX_MESSAGES}");
        }
        Ok(Self {
            total,
            rate: p.rate,
            burst: p.burst,
            burst_interval: Duration::from_millis(p.burst_interval_ms),
        })
    }

    /// Schedule of sender `i` out of `n`.
    pub fn sender(&self, i: usize, n: usize) -> Schedule {
        let n64 = n.max(1) as u64;
        let i64_ = i as u64;
        let count = self.total / n64 + u64::from(i64_ < self.total % n64);
        let burst = if self.burst > 0 {
            (self.burst / n64 + u64::from(i64_ < self.burst % n64)).max(1)
        } else {
            0
        };
        Schedule {
            count,
            rate: self.rate / n64 as f64,
            burst,
            burst_interval: self.burst_interval,
            // stagger senders within one period so they do not fire together
            offset: if self.rate > 0.0 && self.burst == 0 {
                Duration::from_secs_f64(i as f64 / self.rate)
            } else {
                Duration::ZERO
            },
        }
    }
}

/// When each message of one sender is due.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Messages this sender sends.
    pub count: u64,
    rate: f64,
    burst: u64,
    burst_interval: Duration,
    offset: Duration,
}

impl Schedule {
    /// Due time of message `j`, or `None` if it may go immediately.
    pub fn due(&self, j: u64, start: Instant) -> Option<Instant> {
        if let Some(b) = j.checked_div(self.burst) {
            (b > 0).then(|| start + self.burst_interval * b as u32)
        } else if self.rate > 0.0 {
            Some(start + self.offset + Duration::from_secs_f64(j as f64 / self.rate))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacing(rate: f64, messages: Option<u64>, duration: Option<f64>, burst: u64) -> Pacing {
        Pacing {
            rate,
            messages,
            duration,
            burst,
            burst_interval_ms: 100,
            payload: 100,
        }
    }

    #[test]
    fn splits_messages_over_senders() {
        let p = Plan::new(&pacing(0.0, Some(10), None, 0)).unwrap();
        let counts: Vec<u64> = (0..3).map(|i| p.sender(i, 3).count).collect();
        assert_eq!(counts, vec![4, 3, 3]);
        assert_eq!(p.sender(0, 3).due(5, Instant::now()), None);
    }

    #[test]
    fn rate_and_duration() {
        let p = Plan::new(&pacing(1000.0, None, Some(2.0), 0)).unwrap();
        assert_eq!(p.total, 2000);
        let s = p.sender(1, 2);
        let start = Instant::now();
        let d = s.due(10, start).unwrap() - start;
        // 500/s per sender, offset 1 ms for sender 1
        assert_eq!(d.as_micros(), 21_000);
        assert!(Plan::new(&pacing(0.0, None, Some(2.0), 0)).is_err());
        assert!(Plan::new(&pacing(0.0, Some(0), None, 0)).is_err());
    }

    #[test]
    fn bursts() {
        let p = Plan::new(&pacing(0.0, Some(40), None, 20)).unwrap();
        let s = p.sender(0, 2);
        let start = Instant::now();
        assert_eq!(s.due(9, start), None);
        assert_eq!(
            s.due(10, start).unwrap() - start,
            Duration::from_millis(100)
        );
        assert_eq!(
            s.due(19, start).unwrap() - start,
            Duration::from_millis(100)
        );
    }
}
