//! Token reads over gRPC from a warm store: requests/s and latency percentiles with concurrent
//! clients, load generator and server on the same machine (real Redis).
//!
//! Two runs: with the in-process token cache (the default, `cache_ttl_ms = 1000`) and without
//! it (every read is a Redis `HGETALL`). `WXHUB_BENCH_SECS` sets the measured time per run
//! (default 5), `WXHUB_BENCH_CONCURRENCY` the in-flight requests (default 64).

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::RngExt;
use tokio_util::sync::CancellationToken;
use wxhub_proto::token::v1::GetAccessTokenRequest;
use wxhub_proto::token::v1::token_control_client::TokenControlClient;
use wxhub_runtime::config::Source;
use wxhub_runtime::tenants::api_key_sha256;
use wxhub_runtime::{Listeners, Secret, Service, Tenants, TenantsHandle};
use wxhub_store::authorizers::Authorization;
use wxhub_store::credentials::TokenWrite;
use wxhub_store::{Authorizers, Credentials};
use wxhub_testkit::Namespace;
use wxhub_token_control::{Config, Options, TokenControl};

const AUTHORIZERS: usize = 1000;
const KEY: &str = "bench-key";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn appid(i: usize) -> String {
    format!("wxbench{i:011}")
}

async fn warm(ns: &Namespace) {
    let store = ns.store();
    let creds = Credentials::new(store.clone());
    let auths = Authorizers::new(store);
    let now = wxhub_runtime::unix_ms();
    let refresh = Secret::new("refreshtoken@@@bench");
    for i in 0..AUTHORIZERS {
        let appid = appid(i);
        auths
            .authorize(
                "bench",
                &Authorization {
                    appid: &appid,
                    event_ms: now,
                    now_ms: now,
                    fence: 1,
                    refresh_token: Some(&refresh),
                    func_info: &[1],
                },
            )
            .await
            .unwrap();
        let cred = format!("authorizer:{appid}");
        let lease = creds
            .acquire("bench", &cred, Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        let token = Secret::new(format!("token-{appid}-{}", "x".repeat(100)));
        creds
            .write_token(
                &lease,
                &TokenWrite {
                    value: &token,
                    expires_at_ms: now + 7_200_000,
                    lifetime_ms: 7_200_000,
                    now_ms: now,
                    due_ms: now + 5_760_000,
                    authorizer: Some(&appid),
                    refresh_token: None,
                },
            )
            .await
            .unwrap();
        creds.release(&lease).await.unwrap();
    }
}

async fn run(label: &str, cache_ttl_ms: u64, secs: u64, concurrency: usize) {
    let ns = Namespace::new("bench-reads");
    warm(&ns).await;
    let tenants = TenantsHandle::fixed(
        Tenants::from_toml(&format!(
            "[[tenants]]\nid = \"bench\"\nkind = \"component\"\napp_id = \"wxbenchcomponent1\"\napp_secret = \"s\"\ntoken = \"t\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n\n[[clients]]\nname = \"bench\"\napi_key_sha256 = \"{}\"\ntenants = [\"bench\"]\n",
            api_key_sha256(KEY)
        ))
        .unwrap(),
    );
    let config = Config::load(&Source {
        file: None,
        env: vec![
            ("WXHUB_NAMESPACE".into(), ns.name().into()),
            ("WXHUB_REDIS__URL".into(), wxhub_testkit::redis_url()),
            (
                "WXHUB_TOKEN_CONTROL__CACHE_TTL_MS".into(),
                cache_ttl_ms.to_string(),
            ),
            (
                "WXHUB_TOKEN_CONTROL__READY_REQUIRES_TICKET".into(),
                "false".into(),
            ),
        ],
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let token_control = TokenControl::build(
        config,
        Options {
            tenants: Some(tenants),
            consume: false,
            background: false,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tokio::spawn(token_control.serve(
        Listeners::main_and_ops(listener, ops),
        stop.clone().cancelled_owned(),
    ));
    // A few HTTP/2 connections, many requests in flight on each.
    let mut channels = Vec::new();
    for _ in 0..4 {
        loop {
            if let Ok(c) = TokenControlClient::connect(format!("http://{addr}")).await {
                channels.push(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for n in 0..concurrency {
        let mut client = channels[n % channels.len()].clone();
        let (measuring, done, errors) = (measuring.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            while !done.load(Ordering::Relaxed) {
                let i = rand::rng().random_range(0..AUTHORIZERS);
                let mut req = tonic::Request::new(GetAccessTokenRequest {
                    tenant: "bench".into(),
                    appid: appid(i),
                    min_remaining_secs: 60,
                });
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
                req.set_timeout(Duration::from_secs(5));
                let start = Instant::now();
                let ok = client.get_access_token(req).await.is_ok();
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        let _ = hist.record(start.elapsed().as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    ns.cleanup(None, &[]).await;
    let rps = all.len() as f64 / elapsed.as_secs_f64();
    println!(
        "token_reads/{label}: {rps:.0} req/s over {secs} s, {concurrency} in flight on 4 connections; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; errors {}",
        all.value_at_quantile(0.5) as f64 / 1000.0,
        all.value_at_quantile(0.99) as f64 / 1000.0,
        all.value_at_quantile(0.999) as f64 / 1000.0,
        all.max() as f64 / 1000.0,
        errors.load(Ordering::Relaxed),
    );
}

fn main() {
    let _ = wxhub_runtime::ops::prometheus();
    let secs = env_num("WXHUB_BENCH_SECS", 5);
    let concurrency = usize::try_from(env_num("WXHUB_BENCH_CONCURRENCY", 64)).unwrap_or(64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        run("cache", 1000, secs, concurrency).await;
        run("redis", 0, secs, concurrency).await;
    });
}
