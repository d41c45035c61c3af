//! Percentiles, and what the node processes cost (from /proc).

use std::sync::{Arc, Mutex};
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

    /// The smallest sample in milliseconds (0 when empty).
    pub fn min_ms(&self) -> f64 {
        self.0.iter().min().map_or(0.0, |m| *m as f64 / 1000.0)
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

/// CPU seconds (user + system) a process has used, all its threads.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds this process (the generator) has used, all its threads.
pub fn own_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| stat_cpu_secs(&stat))
        .unwrap_or(0.0)
}

/// utime + stime from the text of a `/proc/PID/stat`.
fn stat_cpu_secs(stat: &str) -> Option<f64> {
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

/// CPU seconds several processes have spent on a CPU, to the nanosecond:
/// the sum of `/proc/PID/task/*/schedstat` (its first field) over their
/// live threads. `/proc/PID/stat` counts in 10 ms ticks, too coarse for a
/// burst that lasts tens of milliseconds; a thread that exits takes its
/// time with it, so this is for short windows only.
pub fn sched_cpu_secs(pids: &[u32]) -> f64 {
    let mut ns = 0u64;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            ns += text
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// Sum of CPU seconds of several processes.
pub fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_secs(*p)).sum()
}

/// CPU used by a set of processes since `start`, one of which may die
/// meanwhile (a node that falls over under load): each is read every
/// 100 ms, and one that is gone counts with its last reading.
pub struct CpuWatch {
    start: Vec<Option<f64>>,
    last: Arc<Mutex<Vec<Option<f64>>>>,
    pids: Vec<u32>,
    sampler: tokio::task::JoinHandle<()>,
}

impl CpuWatch {
    pub fn start(pids: &[u32]) -> Self {
        let start: Vec<Option<f64>> = pids.iter().map(|p| cpu_secs(*p)).collect();
        let last = Arc::new(Mutex::new(start.clone()));
        let (watched, seen) = (pids.to_vec(), last.clone());
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                Self::sample(&watched, &seen);
            }
        });
        Self {
            start,
            last,
            pids: pids.to_vec(),
            sampler,
        }
    }

    fn sample(pids: &[u32], seen: &Mutex<Vec<Option<f64>>>) {
        let mut seen = seen.lock().expect("not poisoned");
        for (pid, last) in pids.iter().zip(seen.iter_mut()) {
            if let Some(now) = cpu_secs(*pid) {
                *last = Some(now);
            }
        }
    }

    /// CPU seconds used since `start`, all the processes together.
    pub fn used(&self) -> f64 {
        Self::sample(&self.pids, &self.last);
        let last = self.last.lock().expect("not poisoned");
        self.start
            .iter()
            .zip(last.iter())
            .filter_map(|(a, b)| Some(b.as_ref()? - a.as_ref()?))
            .sum()
    }
}

impl Drop for CpuWatch {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

pub fn per_sec(count: u64, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64().max(1e-9)
}

/// Sums and counts of the nodes' own stage timings, read from their
/// Prometheus `/metrics`: where a message's time goes before its frames
/// are written.
#[derive(Clone, Copy, Default)]
pub struct Stages {
    /// `confab_store_latency_seconds{op="append"}`: queueing and the commit.
    append: (f64, f64),
    /// `confab_delivery_latency_seconds`: from the publish on any node to
    /// the hub of the receiving node.
    bus: (f64, f64),
}

impl Stages {
    /// Adds up every node's figures so far (nodes that do not answer add nothing).
    pub async fn scrape(nodes: &[String]) -> Self {
        let mut s = Stages::default();
        for base in nodes {
            let Ok(resp) = reqwest::get(format!("{base}/metrics")).await else {
                continue;
            };
            let text = resp.text().await.unwrap_or_default();
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some((key, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let value: f64 = value.parse().unwrap_or(0.0);
                let append = key.contains("op=\"append\"");
                match key.split('{').next() {
                    Some("confab_store_latency_seconds_sum") if append => s.append.0 += value,
                    Some("confab_store_latency_seconds_count") if append => s.append.1 += value,
                    Some("confab_delivery_latency_seconds_sum") => s.bus.0 += value,
                    Some("confab_delivery_latency_seconds_count") => s.bus.1 += value,
                    _ => {}
                }
            }
        }
        s
    }

    /// Mean append and bus times in milliseconds between `self` (earlier)
    /// and `later`; None where nothing was recorded.
    pub fn means_until(&self, later: &Stages) -> [Option<f64>; 2] {
        let mean = |a: (f64, f64), b: (f64, f64)| {
            let n = b.1 - a.1;
            (n > 0.0).then(|| (b.0 - a.0) / n * 1000.0)
        };
        [mean(self.append, later.append), mean(self.bus, later.bus)]
    }
}

/// A node's `/metrics` text; empty when the node does not answer.
pub async fn metrics_text(base: &str) -> String {
    match reqwest::get(format!("{base}/metrics")).await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of `key` in a `/metrics` text: a name, or a name with labels
/// (`confab_connections_by_transport{transport="http"}`), summed over the
/// samples of that name that carry those labels, whatever other labels
/// they have (the node adds its own `node` label to every sample). None
/// if no sample matches.
pub fn metric_in(text: &str, key: &str) -> Option<f64> {
    let (name, labels) = split_sample(key)?;
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((sample, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((sample_name, sample_labels)) = split_sample(sample) else {
            continue;
        };
        if sample_name == name && labels.iter().all(|l| sample_labels.contains(l)) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

/// `name{a="x",b="y"}` -> (name, [`a="x"`, `b="y"`]).
fn split_sample(sample: &str) -> Option<(&str, Vec<&str>)> {
    match sample.split_once('{') {
        None => Some((sample, Vec::new())),
        Some((name, rest)) => {
            let labels = rest.strip_suffix('}')?;
            Some((name, labels.split(',').filter(|l| !l.is_empty()).collect()))
        }
    }
}

/// `key`'s value summed over the nodes (a node that does not answer, or
/// lacks the sample, adds 0).
pub async fn metric_sum(nodes: &[String], key: &str) -> f64 {
    let mut sum = 0.0;
    for base in nodes {
        sum += metric_in(&metrics_text(base).await, key).unwrap_or(0.0);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_match_by_name_and_labels() {
        let text = "# HELP x\nconfab_presence_entries{node=\"a\"} 500\n\
                    confab_connections_by_transport{node=\"a\",transport=\"http\"} 100\n\
                    confab_connections_by_transport{node=\"a\",transport=\"websocket\"} 1\n";
        assert_eq!(metric_in(text, "confab_presence_entries"), Some(500.0));
        assert_eq!(
            metric_in(text, "confab_connections_by_transport{transport=\"http\"}"),
            Some(100.0)
        );
        assert_eq!(
            metric_in(text, "confab_connections_by_transport"),
            Some(101.0)
        );
        assert_eq!(metric_in(text, "confab_sockets_open"), None);
    }
}
