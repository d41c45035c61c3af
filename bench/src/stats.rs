//! Percentiles, and what the node processes cost (from /proc).

use std::time::Duration;

/// Sorted latency samples, in microseconds.
#[derive(Default)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    pub fn extend(&mut self, other: Vec<u64>) {
        self.0.extend(other);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// p50, p99, p999 and max in milliseconds (0 when empty).
    pub fn summary(&mut self) -> [f64; 4] {
        if self.0.is_empty() {
            return [0.0; 4];
        }
        self.0.sort_unstable();
        let at = |p: f64| {
            self.0[((self.0.len() as f64 * p) as usize).min(self.0.len() - 1)] as f64 / 1000.0
        };
        [
            at(0.50),
            at(0.99),
            at(0.999),
            *self.0.last().unwrap() as f64 / 1000.0,
        ]
    }
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sum of CPU seconds of several processes.
pub fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_secs(*p)).sum()
}

pub fn per_sec(count: u64, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64().max(1e-9)
}
