//! What a refresh costs in Redis, one node against a cluster: the store's part of one token
//! refresh — take the lease (`ACQUIRE`: fence + `SET NX PX`), the fenced write (`WRITE`: token,
//! schedule, rotated refresh token) and the release (`RELEASE`) — three Lua scripts, run by 64
//! concurrent tasks over 64 tenants × 16 authorizers for a fixed time.
//!
//! Runs against `WXHUB_TEST_REDIS_CLUSTER` (comma-separated nodes) when set, else
//! `WXHUB_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`), in a namespace of its own that it
//! deletes. `WXHUB_BENCH_SECONDS` (default 5) sets the duration. Prints refresh cycles per
//! second and the cycle's p50/p99, and on one node the memory the 1,024 authorizers' records,
//! tokens and schedule entries took (`used_memory` before and after; other users of the same
//! Redis add noise, so point it at a Redis of its own for that figure).
//!
//! `cargo bench -p wxhub-store --bench refresh_cycle`

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wxhub_domain::Secret;
use wxhub_store::credentials::TokenWrite;
use wxhub_store::{Authorizers, Credentials, RedisConfig, Store};

const TENANTS: usize = 64;
const AUTHORIZERS: usize = 16;
const TASKS: usize = 64;

fn config() -> (RedisConfig, &'static str) {
    let nodes: Vec<String> = std::env::var("WXHUB_TEST_REDIS_CLUSTER")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() {
        let url = std::env::var("WXHUB_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        (RedisConfig::new(url), "one node")
    } else {
        (RedisConfig::cluster(nodes), "cluster")
    }
}

#[tokio::main]
async fn main() {
    let (config, mode) = config();
    let seconds: u64 = std::env::var("WXHUB_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let namespace = format!("bench-cycle-{:08x}", rand::random::<u32>());
    let store = Store::connect(&config, &namespace).expect("redis config");
    let creds = Credentials::new(store.clone());
    let auths = Authorizers::new(store.clone());
    let memory_before = used_memory(&store).await;
    let rt = Secret::new("rt-of-a-realistic-length-0123456789abcdef0123456789");
    for t in 0..TENANTS {
        let page: Vec<_> = (0..AUTHORIZERS)
            .map(|a| format!("wxa{a:016}"))
            .collect::<Vec<_>>();
        let listed: Vec<_> = page
            .iter()
            .map(|appid| wxhub_store::authorizers::Listed {
                appid,
                refresh_token: Some(&rt),
                due_ms: 0,
            })
            .collect();
        auths
            .reconcile(&format!("t{t}"), 1, 1, 1, &listed)
            .await
            .expect("seed");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let creds = creds.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let token = Secret::new("token-value-of-a-realistic-length-0123456789abcdef");
            let mut latencies = Vec::new();
            let mut i = task;
            while !stop.load(Ordering::Relaxed) {
                let tenant = format!("t{}", i % TENANTS);
                let appid = format!("wxa{:016}", (i / TENANTS) % AUTHORIZERS);
                let credential = format!("authorizer:{appid}");
                i += TASKS;
                let started = Instant::now();
                let Ok(Some(lease)) = creds
                    .acquire(&tenant, &credential, Duration::from_secs(5))
                    .await
                else {
                    continue;
                };
                let now = 1_700_000_000_000;
                let write = TokenWrite {
                    value: &token,
                    expires_at_ms: now + 7_200_000,
                    lifetime_ms: 7_200_000,
                    now_ms: now,
                    due_ms: now + 5_760_000,
                    authorizer: Some(&appid),
                    refresh_token: None,
                };
                if creds.write_token(&lease, &write).await.is_ok()
                    && creds.release(&lease).await.is_ok()
                {
                    latencies.push(started.elapsed());
                }
            }
            latencies
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "refresh cycle ({mode}): {:.0} cycles/s ({} in {elapsed:.1} s, {TASKS} tasks, \
         {TENANTS} tenants × {AUTHORIZERS} authorizers), p50 {:.2} ms, p99 {:.2} ms",
        latencies.len() as f64 / elapsed,
        latencies.len(),
        at(0.5),
        at(0.99)
    );

    if let (Some(before), Some(after)) = (memory_before, used_memory(&store).await) {
        println!(
            "memory: {:.0} bytes per authorizer (record, token, schedule entry, index; {} \
             authorizers)",
            (after as f64 - before as f64) / (TENANTS * AUTHORIZERS) as f64,
            TENANTS * AUTHORIZERS
        );
    }

    let keys = store
        .scan_keys(&format!("{namespace}:*"))
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(1000) {
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut store.conn())
            .await;
    }
}

/// `used_memory` of a single Redis (`None` on a cluster, whose `INFO` spans nodes).
async fn used_memory(store: &Store) -> Option<u64> {
    if store.is_cluster() {
        return None;
    }
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut store.conn())
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}
