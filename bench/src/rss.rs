//! Summary of a server RSS time series: start, end, peak, growth rate
//! after warm-up, and a down-sampled copy for the JSON line.

use crate::procstat::RssSeries;
use serde::Serialize;

/// Largest number of points kept in the JSON line.
const MAX_POINTS: usize = 60;

/// RSS over a run.
#[derive(Debug, Clone, Serialize)]
pub struct RssSummary {
    /// RSS before the sockets were opened, KiB.
    pub before_kib: Option<u64>,
    /// First sample, KiB.
    pub first_kib: u64,
    /// Last sample, KiB.
    pub last_kib: u64,
    /// Largest sample, KiB.
    pub peak_kib: u64,
    /// Growth after the first quarter, KiB per minute.
    pub slope_kib_per_min: Option<f64>,
    /// Number of samples.
    pub samples: usize,
    /// Down-sampled (seconds, KiB) points.
    pub series: Vec<(f64, u64)>,
}

impl RssSummary {
    /// Summarises `s`.
    pub fn of(s: &RssSeries, before_kib: Option<u64>) -> Self {
        let step = s.samples.len().div_ceil(MAX_POINTS).max(1);
        Self {
            before_kib,
            first_kib: s.samples.first().map_or(0, |p| p.1),
            last_kib: s.samples.last().map_or(0, |p| p.1),
            peak_kib: s.peak_kib(),
            slope_kib_per_min: s.slope_kib_per_min(),
            samples: s.samples.len(),
            series: s
                .samples
                .iter()
                .step_by(step)
                .map(|&(t, k)| ((t * 10.0).round() / 10.0, k))
                .collect(),
        }
    }

    /// One human line.
    pub fn human(&self) -> String {
        format!(
            "server RSS: before {} KiB, first {} KiB, last {} KiB, peak {} KiB, \
             trend after warm-up {} ({} samples)",
            self.before_kib.map_or("?".into(), |b| b.to_string()),
            self.first_kib,
            self.last_kib,
            self.peak_kib,
            self.slope_kib_per_min
                .map_or("n/a".into(), |s| format!("{s:+.0} KiB/min")),
            self.samples
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsamples() {
        let s = RssSeries {
            samples: (0..300).map(|i| (i as f64, 1000)).collect(),
        };
        let r = RssSummary::of(&s, Some(900));
        assert!(r.series.len() <= MAX_POINTS);
        assert_eq!(r.slope_kib_per_min, Some(0.0));
        assert!(r.human().contains("+0 KiB/min"));
    }
}
