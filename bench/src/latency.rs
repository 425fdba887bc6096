//! Latency recording: HDR histograms in nanoseconds, sharded behind mutexes
//! so thousands of socket tasks can record without one histogram each, and
//! a percentile summary for reports.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::Mutex;

const SHARDS: usize = 16;
/// Largest latency recorded (longer values are clamped): 120 s.
const MAX_NS: u64 = 120_000_000_000;

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

/// Sharded latency histogram.
#[derive(Debug)]
pub struct Latency {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(new_hist())).collect(),
        }
    }
}

impl Latency {
    /// Records a batch of samples (ns) into the shard picked by `key`.
    pub fn record_all(&self, key: usize, samples: &[u64]) {
        if samples.is_empty() {
            return;
        }
        let mut h = self.shards[key % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for &s in samples {
            h.saturating_record(s.clamp(1, MAX_NS));
        }
    }

    /// Merged percentile summary.
    pub fn summary(&self) -> Summary {
        let mut all = new_hist();
        for s in &self.shards {
            let h = s.lock().unwrap_or_else(|e| e.into_inner());
            all.add(&*h).expect("same bounds");
        }
        Summary::of(&all)
    }
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
}

impl Summary {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// One-line human form.
    pub fn human(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            fmt_us(self.max_us),
            self.count
        )
    }
}

/// Formats microseconds as µs/ms/s.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_shards() {
        let l = Latency::default();
        let samples: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        l.record_all(0, &samples[..500]);
        l.record_all(7, &samples[500..]);
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(fmt_us(1500.0), "1.50ms");
    }
}
