//! Process and machine statistics from /proc: CPU seconds and RSS of the
//! server (and of the generator itself), machine-wide CPU use, and a task
//! that samples a process's RSS over time.

use anyhow::{Context, Result};
use serde::Serialize;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// CPU and memory of one process at one instant.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Current resident set, KiB.
    pub rss_kib: u64,
    /// Peak resident set (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Open file descriptors (0 when unreadable).
    pub fds: u64,
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime in clock ticks from the text of /proc/<pid>/stat.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // Fields after the parenthesised command name; utime is field 14 overall.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Value in kB of `key` in the text of /proc/<pid>/status.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Reads the statistics of `pid`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ticks = parse_stat_ticks(&stat).context("parsing /proc/<pid>/stat")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Ok(ProcSample {
        cpu_s: ticks as f64 / clock_ticks(),
        rss_kib: status_kib(&status, "VmRSS").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM").unwrap_or(0),
        fds,
    })
}

/// CPU time of the live threads of `pid` in nanoseconds: the sum of the first field of
/// `/proc/<pid>/task/*/schedstat` (the scheduler's run time). `stat` counts 10 ms ticks, too
/// coarse for phases that last tens of milliseconds; threads that exited are missing here.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for e in dir.flatten() {
        let mut p = e.path();
        p.push("schedstat");
        if let Some(ns) = std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    Some(total)
}

/// Parent pid from the text of /proc/<pid>/stat.
fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Total CPU seconds of all descendants of `pid` alive now (for pgws
/// `--embedded`, the PostgreSQL cluster it started).
pub fn descendants_cpu_s(pid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut procs: Vec<(u32, u32, u64)> = Vec::new();
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat"))
            && let (Some(pp), Some(t)) = (parse_ppid(&stat), parse_stat_ticks(&stat))
        {
            procs.push((p, pp, t));
        }
    }
    let mut family = vec![pid];
    let mut ticks = 0u64;
    // bounded: each pass adds at least one process or stops
    for _ in 0..procs.len() {
        let before = family.len();
        for &(p, pp, t) in &procs {
            if family.contains(&pp) && !family.contains(&p) {
                family.push(p);
                ticks += t;
            }
        }
        if family.len() == before {
            break;
        }
    }
    ticks as f64 / clock_ticks()
}

/// Statistics of the generator itself.
pub fn own() -> ProcSample {
    sample(std::process::id()).unwrap_or_default()
}

/// Machine-wide CPU counters (busy, total) in ticks from /proc/stat.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    /// Reads /proc/stat.
    pub fn read() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        Self::parse(&text)
    }

    fn parse(text: &str) -> Self {
        let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
            return Self::default();
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Self {
            busy: total.saturating_sub(idle),
            total,
        }
    }

    /// CPU seconds (all CPUs together) busy between `self` and `later`.
    pub fn busy_s(&self, later: &Self) -> f64 {
        later.busy.saturating_sub(self.busy) as f64 / clock_ticks()
    }

    /// Fraction of all CPUs busy between `self` and `later`.
    pub fn busy_fraction(&self, later: &Self) -> f64 {
        let t = later.total.saturating_sub(self.total);
        if t == 0 {
            return 0.0;
        }
        later.busy.saturating_sub(self.busy) as f64 / t as f64
    }
}

/// Number of CPUs available to this process.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// RSS time series of a process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RssSeries {
    /// (seconds since start, RSS KiB).
    pub samples: Vec<(f64, u64)>,
}

impl RssSeries {
    /// Largest sample, KiB.
    pub fn peak_kib(&self) -> u64 {
        self.samples.iter().map(|s| s.1).max().unwrap_or(0)
    }

    /// Least-squares slope in KiB per minute over the samples after the
    /// first quarter of the series (warm-up excluded).
    pub fn slope_kib_per_min(&self) -> Option<f64> {
        let skip = self.samples.len() / 4;
        let pts = &self.samples[skip..];
        if pts.len() < 3 {
            return None;
        }
        let n = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
        let my = pts.iter().map(|p| p.1 as f64).sum::<f64>() / n;
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 as f64 - my)).sum();
        (sxx > 0.0).then(|| sxy / sxx * 60.0)
    }
}

/// Samples the RSS of `pid` every `every` until `stop` turns true; bounded
/// to 100,000 samples.
pub fn spawn_rss_sampler(
    pid: u32,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<RssSeries> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut series = RssSeries::default();
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        while series.samples.len() < 100_000 {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            if let Ok(s) = sample(pid) {
                series
                    .samples
                    .push((start.elapsed().as_secs_f64(), s.rss_kib));
            }
        }
        series
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(parse_ppid(stat), Some(1));
    }

    #[test]
    fn parses_status() {
        let s = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\n";
        assert_eq!(status_kib(s, "VmRSS"), Some(1024));
        assert_eq!(status_kib(s, "VmHWM"), Some(2048));
    }

    #[test]
    fn reads_own_process_and_machine() {
        let s = own();
        assert!(s.rss_kib > 0);
        assert!(cpu_ns(std::process::id()).is_some());
        assert!(s.fds > 0);
        assert!(descendants_cpu_s(1) >= 0.0);
        let a = MachineCpu::parse("cpu  10 0 10 80 0 0 0 0 0 0\n");
        let b = MachineCpu::parse("cpu  20 0 20 160 0 0 0 0 0 0\n");
        assert!((a.busy_fraction(&b) - 0.2).abs() < 1e-9);
    }

    #[test]
    fn slope_of_a_growing_series() {
        let s = RssSeries {
            samples: (0..40).map(|i| (i as f64, 1000 + 10 * i as u64)).collect(),
        };
        assert!((s.slope_kib_per_min().unwrap() - 600.0).abs() < 1e-6);
        assert_eq!(s.peak_kib(), 1390);
    }
}
