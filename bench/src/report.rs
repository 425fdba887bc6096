//! Reports: a measurement window (server and generator CPU/RSS, machine
//! CPU, saturation verdict) and the output of a run as human lines plus one
//! JSON line on stdout.

use crate::procstat::{self, MachineCpu, ProcSample};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::time::Instant;

/// Resource counters at the start of a measurement window.
#[derive(Debug, Clone)]
pub struct Window {
    t0: Instant,
    server_pid: Option<u32>,
    server0: Option<ProcSample>,
    children0: Option<f64>,
    own0: ProcSample,
    machine0: MachineCpu,
}

/// Resource use over a measurement window.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// Window length, seconds.
    pub wall_s: f64,
    /// Server CPU seconds used in the window.
    pub server_cpu_s: Option<f64>,
    /// CPU seconds of the server's descendants (e.g. its embedded
    /// PostgreSQL) alive at both ends of the window.
    pub server_children_cpu_s: Option<f64>,
    /// Busy CPU seconds of the machine not accounted to the server, its
    /// descendants or the generator (other processes, kernel threads,
    /// backends started and ended within the window).
    pub other_cpu_s: f64,
    /// Server RSS at the start, KiB.
    pub server_rss_start_kib: Option<u64>,
    /// Server RSS at the end, KiB.
    pub server_rss_end_kib: Option<u64>,
    /// Server peak RSS (VmHWM) at the end, KiB.
    pub server_hwm_kib: Option<u64>,
    /// Generator CPU seconds used in the window.
    pub generator_cpu_s: f64,
    /// Generator CPU use in cores (cpu_s / wall_s).
    pub generator_cores: f64,
    /// Generator RSS at the end, KiB.
    pub generator_rss_kib: u64,
    /// Generator runtime worker threads.
    pub generator_threads: usize,
    /// Fraction of all CPUs of the machine busy during the window.
    pub machine_busy: f64,
    /// CPUs of the machine.
    pub machine_cpus: usize,
    /// The generator used >= 85 % of the cores it can use.
    pub generator_saturated: bool,
    /// The machine was >= 95 % busy (server, PostgreSQL and generator compete).
    pub machine_saturated: bool,
    /// Other processes used more than 10 % of the machine's CPU: the run
    /// was disturbed and its latency figures are not representative.
    pub disturbed: bool,
}

impl Window {
    /// Starts a window now.
    pub fn start(server_pid: Option<u32>) -> Self {
        Self {
            t0: Instant::now(),
            server_pid,
            server0: server_pid.and_then(|p| procstat::sample(p).ok()),
            children0: server_pid.map(procstat::descendants_cpu_s),
            own0: procstat::own(),
            machine0: MachineCpu::read(),
        }
    }

    /// Ends the window now.
    pub fn finish(&self, threads: usize) -> Usage {
        let wall_s = self.t0.elapsed().as_secs_f64().max(1e-9);
        let server1 = self.server_pid.and_then(|p| procstat::sample(p).ok());
        let own1 = procstat::own();
        let children1 = self.server_pid.map(procstat::descendants_cpu_s);
        let machine1 = MachineCpu::read();
        let machine_busy = self.machine0.busy_fraction(&machine1);
        let machine_busy_s = self.machine0.busy_s(&machine1);
        let cpus = procstat::cpus();
        let generator_cpu_s = (own1.cpu_s - self.own0.cpu_s).max(0.0);
        let generator_cores = generator_cpu_s / wall_s;
        let server_cpu_s = match (self.server0, server1) {
            (Some(a), Some(b)) => Some((b.cpu_s - a.cpu_s).max(0.0)),
            _ => None,
        };
        let children_cpu_s = match (self.children0, children1) {
            (Some(a), Some(b)) => Some((b - a).max(0.0)),
            _ => None,
        };
        let other_cpu_s = (machine_busy_s
            - generator_cpu_s
            - server_cpu_s.unwrap_or(0.0)
            - children_cpu_s.unwrap_or(0.0))
        .max(0.0);
        Usage {
            wall_s,
            server_cpu_s,
            server_children_cpu_s: children_cpu_s,
            other_cpu_s,
            server_rss_start_kib: self.server0.map(|s| s.rss_kib),
            server_rss_end_kib: server1.map(|s| s.rss_kib),
            server_hwm_kib: server1.map(|s| s.hwm_kib),
            generator_cpu_s,
            generator_cores,
            generator_rss_kib: own1.rss_kib,
            generator_threads: threads,
            machine_busy,
            machine_cpus: cpus,
            generator_saturated: generator_cores >= 0.85 * threads.min(cpus) as f64,
            machine_saturated: machine_busy >= 0.95,
            disturbed: other_cpu_s > 0.10 * wall_s * cpus as f64,
        }
    }
}

impl Usage {
    /// Human lines describing the window.
    pub fn human(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(cpu) = self.server_cpu_s {
            v.push(format!(
                "server: {:.2} CPU s over {:.2} s ({:.2} cores); RSS {} -> {} KiB, peak (VmHWM) {} KiB",
                cpu,
                self.wall_s,
                cpu / self.wall_s,
                self.server_rss_start_kib.unwrap_or(0),
                self.server_rss_end_kib.unwrap_or(0),
                self.server_hwm_kib.unwrap_or(0),
            ));
        }
        if let Some(c) = self.server_children_cpu_s {
            v.push(format!(
                "server's child processes (embedded PostgreSQL): {c:.2} CPU s; other busy CPU: {:.2} s",
                self.other_cpu_s
            ));
        }
        v.push(format!(
            "generator: {:.2} CPU s ({:.2} of {} threads), RSS {} KiB; machine {:.0}% busy of {} CPUs",
            self.generator_cpu_s,
            self.generator_cores,
            self.generator_threads,
            self.generator_rss_kib,
            self.machine_busy * 100.0,
            self.machine_cpus
        ));
        if self.generator_saturated {
            v.push("WARNING: the generator was CPU-saturated; figures are lower bounds".into());
        }
        if self.disturbed {
            v.push(format!(
                "WARNING: other processes used {:.2} CPU s ({:.0}% of the machine) during the run",
                self.other_cpu_s,
                100.0 * self.other_cpu_s / (self.wall_s * self.machine_cpus as f64)
            ));
        }
        if self.machine_saturated {
            v.push(
                "WARNING: the machine was CPU-saturated (server, PostgreSQL and generator share it)"
                    .into(),
            );
        }
        v
    }
}

/// Output of one run.
#[derive(Debug)]
pub struct Report {
    json: Map<String, Value>,
    lines: Vec<String>,
}

impl Report {
    /// Starts the report of `scenario`.
    pub fn new(scenario: &str, label: &str, params: Value) -> Self {
        let mut json = Map::new();
        json.insert("scenario".into(), json!(scenario));
        json.insert("label".into(), json!(label));
        json.insert("params".into(), params);
        Self {
            json,
            lines: vec![format!("== pgws-bench {scenario} {label}")],
        }
    }

    /// Sets a JSON field.
    pub fn set(&mut self, key: &str, value: impl Serialize) {
        let v = serde_json::to_value(value).unwrap_or(Value::Null);
        self.json.insert(key.into(), v);
    }

    /// Adds a human line.
    pub fn line(&mut self, s: impl Into<String>) {
        self.lines.push(s.into());
    }

    /// Adds the usage block to both forms.
    pub fn usage(&mut self, u: &Usage) {
        for l in u.human() {
            self.line(l);
        }
        self.set("usage", u);
    }

    /// Whether the run found a violation (`"verdict": "fail"`).
    pub fn failed(&self) -> bool {
        self.json.get("verdict").and_then(Value::as_str) == Some("fail")
    }

    /// The JSON line.
    pub fn json_line(&self) -> String {
        Value::Object(self.json.clone()).to_string()
    }

    /// Prints the human lines, then the JSON line.
    pub fn print(&self) {
        for l in &self.lines {
            println!("{l}");
        }
        println!("{}", self.json_line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_one_object() {
        let mut r = Report::new("fanout", "x", json!({"a": 1}));
        r.set("delivered", 5u64);
        r.line("hello");
        let line = r.json_line();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["scenario"], "fanout");
        assert_eq!(v["delivered"], 5);
        let w = Window::start(Some(std::process::id()));
        let u = w.finish(2);
        assert!(u.server_cpu_s.is_some());
        assert!(!u.human().is_empty());
    }
}
