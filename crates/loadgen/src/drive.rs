//! The two ways of pacing a run: closed loop (as fast as answers come) and open loop (at a
//! fixed rate, latency counted from each request's due time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::client::Conn;
use crate::config::LoadConfig;
use crate::pool::Source;
use crate::report::WorkerStats;

/// Closed loop (`--max`): `concurrency` workers, each on its own connection, each sending its
/// next request as soon as the previous one was answered.
pub(crate) async fn closed_loop(
    cfg: &Arc<LoadConfig>,
    source: &Source,
    end: tokio::time::Instant,
) -> WorkerStats {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        let (cfg, source, next) = (Arc::clone(cfg), source.clone(), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut stats = WorkerStats::new();
            let mut conn = Conn::new(source.signer.host.clone());
            loop {
                let sent_at = tokio::time::Instant::now();
                if sent_at >= end {
                    break;
                }
                let request = source.request(next.fetch_add(1, Ordering::Relaxed));
                stats.sent += 1;
                let status = conn.exchange(&request, cfg.timeout).await;
                stats.record(status, sent_at);
            }
            stats
        }));
    }
    let mut total = WorkerStats::new();
    for w in workers {
        if let Ok(stats) = w.await {
            total.merge(stats);
        }
    }
    total
}

/// Open loop (`--rate`): request `i` is due at `start + i / rate` and is sent then, whatever is
/// still outstanding, on an idle keep-alive connection (a new one if none is idle), with at
/// most `concurrency` in flight. Latency counts from the due time, so a slow answer shows in
/// its own latency, not as fewer requests (no coordinated omission).
pub(crate) async fn open_loop(
    cfg: &Arc<LoadConfig>,
    source: &Source,
    rate: f64,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
) -> WorkerStats {
    let idle: Arc<std::sync::Mutex<Vec<Conn>>> = Arc::default();
    let stats = Arc::new(std::sync::Mutex::new(WorkerStats::new()));
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency));
    let mut in_flight = tokio::task::JoinSet::new();
    let mut sent = 0;
    for i in 0u64.. {
        let Ok(offset) = Duration::try_from_secs_f64(i as f64 / rate) else {
            break;
        };
        let Some(due) = start.checked_add(offset).filter(|due| *due < end) else {
            break;
        };
        tokio::time::sleep_until(due).await;
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let request = source.request(i);
        sent += 1;
        let (idle, stats, host, timeout) = (
            Arc::clone(&idle),
            Arc::clone(&stats),
            source.signer.host.clone(),
            cfg.timeout,
        );
        in_flight.spawn(async move {
            let pooled = idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let mut conn = pooled.unwrap_or_else(|| Conn::new(host));
            let status = conn.exchange(&request, timeout).await;
            if conn.stream.is_some() {
                idle.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(conn);
            }
            stats
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(status, due);
            drop(permit);
        });
        // Reap finished tasks as we go so the set stays small.
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
    let mut total = std::mem::replace(
        &mut *stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        WorkerStats::new(),
    );
    total.sent = sent;
    total
}
