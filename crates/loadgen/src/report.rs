//! What a run measured: latency percentiles (HdrHistogram), the status-code histogram, and the
//! counts, per worker while running and merged into one [`LoadReport`] at the end.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use wxhub_sim::Encryption;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    /// Where the callbacks went.
    pub url: String,
    /// `safe`, `compatible` or `plain`.
    pub mode: Encryption,
    /// Workers.
    pub concurrency: usize,
    /// Target rate (absent in max mode).
    pub target_rate: Option<f64>,
    /// Measured run time, seconds.
    pub elapsed_s: f64,
    /// Requests started.
    pub sent: u64,
    /// Requests that got an HTTP answer.
    pub completed: u64,
    /// Requests that failed without an answer (connection error, timeout).
    pub errors: u64,
    /// Completed per second.
    pub throughput: f64,
    /// Latency of completed requests (open loop: from the scheduled send time).
    pub latency_ms: Latency,
    /// Answers by status code; transport failures under `error`.
    pub status: BTreeMap<String, u64>,
    /// Distinct bodies generated.
    pub unique_bodies: usize,
    /// True when bodies had to be reused (duplicates a deduplicating gateway drops).
    pub reused_bodies: bool,
    /// Time spent pre-generating, seconds (not part of the run).
    pub pregen_s: f64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "target     {}", self.url)?;
        match self.target_rate {
            Some(r) => writeln!(
                f,
                "mode       {:?}, open loop at {r}/s, {} workers",
                self.mode, self.concurrency
            )?,
            None => writeln!(
                f,
                "mode       {:?}, closed loop (max), {} workers",
                self.mode, self.concurrency
            )?,
        }
        writeln!(
            f,
            "requests   {} sent, {} completed, {} errors in {:.2} s",
            self.sent, self.completed, self.errors, self.elapsed_s
        )?;
        writeln!(f, "throughput {:.1} completed/s", self.throughput)?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "latency    p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        let statuses: Vec<String> = self
            .status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        writeln!(f, "status     {}", statuses.join(", "))?;
        write!(
            f,
            "bodies     {} unique{}",
            self.unique_bodies,
            if self.reused_bodies {
                ", REUSED (duplicates were sent)"
            } else {
                ""
            }
        )
    }
}

/// One worker's (or the merged) measurements.
#[derive(Default)]
pub(crate) struct WorkerStats {
    pub(crate) hist: Option<Histogram<u64>>,
    pub(crate) status: BTreeMap<String, u64>,
    pub(crate) sent: u64,
    pub(crate) completed: u64,
    pub(crate) errors: u64,
}

impl WorkerStats {
    pub(crate) fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).ok(),
            ..Default::default()
        }
    }

    pub(crate) fn record(&mut self, status: Option<u16>, since: tokio::time::Instant) {
        match status {
            Some(code) => {
                self.completed += 1;
                *self.status.entry(code.to_string()).or_default() += 1;
                let micros = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Some(h) = &mut self.hist {
                    let _ = h.record(micros.clamp(1, 120_000_000));
                }
            }
            None => {
                self.errors += 1;
                *self.status.entry("error".into()).or_default() += 1;
            }
        }
    }

    pub(crate) fn merge(&mut self, other: WorkerStats) {
        self.sent += other.sent;
        self.completed += other.completed;
        self.errors += other.errors;
        for (k, v) in other.status {
            *self.status.entry(k).or_default() += v;
        }
        if let (Some(t), Some(h)) = (&mut self.hist, &other.hist) {
            let _ = t.add(h);
        }
    }
}
