//! wxhub-loadgen: the HTTP load generator of the benchmarks. It posts signed, encrypted
//! callbacks to a gateway's message URL as fast as asked (closed loop) or at a fixed rate (open
//! loop) and reports throughput, latency percentiles (HdrHistogram) and a status-code
//! histogram.
//!
//! It is a bench tool, not part of the simulator: it plays WeChat's servers posting callbacks
//! at scale, with the simulator's XML and envelopes ([`wxhub_sim::MessageSpec`],
//! [`wxhub_sim::message_body`]), so what it sends is what WeChat (and the sim's own pusher)
//! would send. The rooms:
//!
//! - [`config`](LoadConfig): what a run does;
//! - `pool`: the bodies, generated and signed before the clock starts;
//! - `client`: the lean HTTP/1.1 client;
//! - `drive`: closed and open loop;
//! - [`report`](LoadReport): what a run measured;
//! - [`cli`]: the `wxhub-loadgen` command line.

#![warn(missing_docs)]
pub mod cli;
mod client;
mod config;
mod drive;
mod pool;
mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use config::{LoadConfig, LoadKind, parse_mix};
pub use report::{Latency, LoadReport};
pub use wxhub_sim::{Encryption, Secret};

use crate::pool::{Signer, Source, pregenerate};

/// Why a run could not start (or its report not be rendered).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The configuration cannot run (the reason names the setting).
    #[error("bad load configuration: {0}")]
    Config(String),
    /// The report could not be rendered as JSON.
    #[error("cannot render the report: {0}")]
    Report(#[from] serde_json::Error),
}

/// Runs the load and reports. Fails only on bad configuration.
pub async fn run(cfg: LoadConfig) -> Result<LoadReport, LoadError> {
    if cfg.concurrency == 0 || cfg.concurrency > 10_000 {
        return Err(LoadError::Config(
            "concurrency must be within 1..=10000".into(),
        ));
    }
    if let Some(rate) = cfg.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        return Err(LoadError::Config("rate must be positive".into()));
    }
    if cfg.duration.is_zero() || cfg.duration > Duration::from_secs(7 * 86_400) {
        return Err(LoadError::Config(
            "duration must be positive and at most 7 days".into(),
        ));
    }
    if cfg.mix.is_empty() || cfg.mix.iter().all(|(_, w)| *w == 0) {
        return Err(LoadError::Config("mix needs a positive weight".into()));
    }
    url::Url::parse(&cfg.target())
        .map_err(|e| LoadError::Config(format!("bad gateway URL: {e}")))?;
    let pregen_started = Instant::now();
    let cfg = Arc::new(cfg);
    let (items, reused) = {
        let cfg = Arc::clone(&cfg);
        tokio::task::spawn_blocking(move || pregenerate(&cfg))
            .await
            .map_err(|e| LoadError::Config(format!("pre-generation failed: {e}")))??
    };
    let pregen_s = pregen_started.elapsed().as_secs_f64();
    let items = Arc::new(items);
    let signer = Arc::new(Signer::new(&cfg)?);
    let wrapped = Arc::new(AtomicBool::new(false));
    let source = Source {
        items: Arc::clone(&items),
        signer,
        wrapped: Arc::clone(&wrapped),
    };
    let start = tokio::time::Instant::now();
    let end = start + cfg.duration;
    let total = match cfg.rate {
        None => drive::closed_loop(&cfg, &source, end).await,
        Some(rate) => drive::open_loop(&cfg, &source, rate, start, end).await,
    };
    let elapsed_s = start.elapsed().as_secs_f64();
    let ms = |v: u64| v as f64 / 1000.0;
    let latency = match &total.hist {
        Some(h) if !h.is_empty() => Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        },
        _ => Latency {
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            p999: 0.0,
            max: 0.0,
            mean: 0.0,
        },
    };
    Ok(LoadReport {
        url: cfg.target(),
        mode: cfg.mode,
        concurrency: cfg.concurrency,
        target_rate: cfg.rate,
        elapsed_s,
        sent: total.sent,
        completed: total.completed,
        errors: total.errors,
        throughput: total.completed as f64 / elapsed_s.max(1e-9),
        latency_ms: latency,
        status: total.status,
        unique_bodies: items.len(),
        reused_bodies: reused || wrapped.load(Ordering::Relaxed),
        pregen_s,
    })
}
