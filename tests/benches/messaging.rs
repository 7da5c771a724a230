//! The messaging service's throughput: template sends per second through enqueue (gRPC) →
//! RabbitMQ → worker → wxhub-sim, against the ceiling of the same run — the sim's own accept
//! rate of template sends posted by a bare HTTP client — and the end-to-end latency (enqueue
//! to recorded `sent`) at half the measured rate. One process, real Redis and RabbitMQ.
//!
//! `cargo bench -p wxhub-tests --bench messaging` (part of `make bench`). Knobs (env):
//! `MSG_BENCH_JOBS` (default 3000), `MSG_BENCH_CONCURRENCY` (64), `MSG_BENCH_SECS` (3).

#![allow(clippy::print_stdout)] // the figures of a run are its output

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wxhub_proto::messaging::v1 as pb;
use wxhub_proto::messaging::v1::enqueue_request::Message;
use wxhub_proto::messaging::v1::messaging_client::MessagingClient;
use wxhub_proto::token::v1::GetAccessTokenRequest;
use wxhub_tests::{AUTH1, OPS_KEY, Setup, Stack, TEMPLATE, TENANT, USERS, req, user};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn template(i: u64) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        tenant: TENANT.into(),
        appid: AUTH1.into(),
        idempotency_key: String::new(),
        message: Some(Message::Template(pb::TemplateMessage {
            touser: user(usize::try_from(i).unwrap_or(0) % USERS),
            template_id: TEMPLATE.into(),
            data: [(
                "keyword1".to_owned(),
                pb::TemplateValue {
                    value: format!("order {i}"),
                    color: String::new(),
                },
            )]
            .into(),
            ..Default::default()
        })),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let jobs = env("MSG_BENCH_JOBS", 3000);
    let concurrency = env("MSG_BENCH_CONCURRENCY", 64);
    let secs = env("MSG_BENCH_SECS", 3);
    let mut setup = Setup::new("bench-messaging");
    setup.tickets = true;
    let unlimited = "{ count = 1000000, period_ms = 1000, burst = 1000000 }";
    setup.worker_env = [
        ("WXHUB_WORKER__LIMITS__TEMPLATE", unlimited),
        ("WXHUB_WORKER__LIMITS__TEMPLATE_PER_OPENID", unlimited),
        ("WXHUB_WORKER__SEND_CONCURRENCY", "64"),
        ("WXHUB_AMQP__PREFETCH", "128"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let stack = Stack::start_with(setup).await.expect("stack");
    stack
        .sim
        .set_quota(TEMPLATE_PATH, None)
        .expect("no daily quota");

    // Ceiling: the sim's accept rate of template sends from a bare HTTP client.
    let token = stack
        .token_client()
        .await
        .get_access_token(req(
            GetAccessTokenRequest {
                tenant: TENANT.into(),
                appid: AUTH1.into(),
                min_remaining_secs: 0,
            },
            OPS_KEY,
        ))
        .await
        .expect("token")
        .into_inner()
        .access_token;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let url = format!(
        "{}{TEMPLATE_PATH}?access_token={token}",
        stack.sim.base_url()
    );
    let accepted = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (http, url, accepted) = (http.clone(), url.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut i = w;
                while Instant::now() < until {
                    let body = serde_json::json!({
                        "touser": user(usize::try_from(i).unwrap_or(0) % USERS),
                        "template_id": TEMPLATE,
                        "data": {"keyword1": {"value": "x"}},
                    });
                    if let Ok(r) = http.post(&url).json(&body).send().await
                        && let Ok(v) = r.json::<serde_json::Value>().await
                        && v["errcode"] == 0
                    {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    i += concurrency;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let ceiling = accepted.load(Ordering::Relaxed) as f64 / secs as f64;
    println!(
        "messaging: sim bare accept rate (ceiling): {ceiling:.0} template sends/s ({concurrency} clients)"
    );

    // Through the system: enqueue `jobs` as fast as `concurrency` clients can, until all are sent.
    let url = format!("http://{}", stack.worker);
    let client = MessagingClient::connect(url).await.expect("worker");
    stack.sim.clear_messages();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs {
                        break;
                    }
                    client
                        .enqueue(req(template(i), OPS_KEY))
                        .await
                        .expect("enqueue");
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let enqueued = started.elapsed();
    let target = usize::try_from(jobs).unwrap_or(usize::MAX);
    while stack.sim.messages(&Default::default()).len() < target {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "sends stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let rate = jobs as f64 / took.as_secs_f64();
    println!(
        "messaging: {jobs} template jobs enqueued in {:.2} s, all sent in {:.2} s: {rate:.0} sends/s = {:.0} % of the ceiling",
        enqueued.as_secs_f64(),
        took.as_secs_f64(),
        100.0 * rate / ceiling
    );

    // Latency at half that rate (open loop): enqueue → recorded sent, from the job records.
    let half = (rate / 2.0).max(1.0);
    let n = (half * secs as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / half);
    let mut ids = Vec::new();
    let mut handles = Vec::new();
    let start = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        let mut client = client.clone();
        handles.push(tokio::spawn(async move {
            client
                .enqueue(req(template(jobs + i), OPS_KEY))
                .await
                .expect("enqueue")
                .into_inner()
                .id
        }));
    }
    for h in handles {
        ids.push(h.await.expect("task"));
    }
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let mut client = client.clone();
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let j = client
                .get_job(req(pb::GetJobRequest { job_id: id.clone() }, OPS_KEY))
                .await
                .expect("job")
                .into_inner();
            if matches!(
                j.state_name.as_str(),
                "sent" | "delivered" | "delivery_failed"
            ) {
                let sent_at = j.attempts.last().map_or(j.updated_at_ms, |a| a.at_ms);
                let _ = histogram.record(u64::try_from(sent_at - j.created_at_ms).unwrap_or(0));
                break;
            }
            assert!(Instant::now() < deadline, "job not sent: {j:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "messaging: latency at {half:.0} sends/s ({n} jobs), enqueue → WeChat call: p50 {} ms, p99 {} ms, max {} ms",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.max()
    );
    stack.stop().await;
}

const TEMPLATE_PATH: &str = "/cgi-bin/message/template/send";
