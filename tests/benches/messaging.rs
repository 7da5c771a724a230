//! The messaging service's throughput: template sends per second through enqueue (gRPC) →
//! RabbitMQ → worker → wxhub-sim, against the ceiling of the same run — the sim's own accept
//! rate of template sends posted by a bare HTTP client — and the end-to-end latency (enqueue
//! to recorded `sent`) at half the measured rate. One process, real Redis and RabbitMQ. The
//! same number of jobs then goes through EnqueueBatch calls (a business system handing over
//! many messages at once). The machine's speed drifts within seconds, so this runs in
//! `MSG_BENCH_ROUNDS` rounds, each between two measurements of the ceiling and compared with
//! their mean; the summary is each path's median share.
//!
//! Then, on a stack of its own with realistic limits: a campaign of `MSG_BENCH_CAMPAIGN`
//! recipients (100,000) split over `MSG_BENCH_TENANTS` (10) tenants, one account and campaign
//! each — wall time, peak Redis memory (INFO `used_memory` sampled every 100 ms, minus the
//! baseline before it; the Redis is shared, so other clients' keys are in it too) and the
//! first-job latency of a quiet tenant during it; and a tenant holding `MSG_BENCH_HOLD`
//! (1,000,000) single messages (stored through the job store, as Enqueue does, 64 at once) —
//! the time to hold them, their Redis memory, and another tenant's first-job latency meanwhile.
//!
//! `cargo bench -p wxhub-tests --bench messaging` (part of `make bench`). Knobs (env):
//! `MSG_BENCH_JOBS` (default 10000), `MSG_BENCH_CONCURRENCY` (64), `MSG_BENCH_SECS` (3),
//! `MSG_BENCH_CAMPAIGN` (100000, 0 skips), `MSG_BENCH_TENANTS` (10), `MSG_BENCH_HOLD`
//! (1000000, 0 skips), `MSG_BENCH_ANNOUNCE_BATCH` (64: `worker.announce_batch`),
//! `MSG_BENCH_BATCH` (50 messages per EnqueueBatch call, 0 skips that phase),
//! `MSG_BENCH_BATCH_CONCURRENCY` (8 such calls at once), `MSG_BENCH_ROUNDS` (3),
//! `MSG_BENCH_SEND_CONCURRENCY` (64: `worker.send_concurrency`), and
//! `MSG_BENCH_METRICS` (set: print the broker and announcement counters after the throughput
//! phase).

#![allow(clippy::print_stdout)] // the figures of a run are its output

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use wxhub_proto::messaging::v1 as pb;
use wxhub_proto::messaging::v1::enqueue_request::Message;
use wxhub_proto::messaging::v1::messaging_client::MessagingClient;
use wxhub_proto::token::v1::GetAccessTokenRequest;
use wxhub_store::{Created, Jobs, NewJob, Store};
use wxhub_tests::cpu::{CpuSplit, quiesce};
use wxhub_tests::messaging::{enqueue_all, sent_after};
use wxhub_tests::{
    AUTH1, BETA, BETA_AUTH, OPS_KEY, Setup, Stack, TEMPLATE, TENANT, USERS, extra_tenant,
    extra_user, req, user,
};

// The allocator of the services' binaries (gateway, worker, relay).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let recipients = env("MSG_BENCH_CAMPAIGN", 100_000);
    let hold = env("MSG_BENCH_HOLD", 1_000_000);
    if recipients > 0 || hold > 0 {
        runtime.block_on(at_scale(recipients, hold));
    }
}

async fn run() {
    let jobs = env("MSG_BENCH_JOBS", 10_000);
    let concurrency = env("MSG_BENCH_CONCURRENCY", 64);
    let secs = env("MSG_BENCH_SECS", 3);
    // 1 announces every job in a message of its own (no group commit), for comparison.
    let announce_batch = env("MSG_BENCH_ANNOUNCE_BATCH", 64).to_string();
    let send_concurrency = env("MSG_BENCH_SEND_CONCURRENCY", 64).to_string();
    let mut setup = Setup::new("bench-messaging");
    setup.tickets = true;
    let unlimited = "{ count = 1000000, period_ms = 1000, burst = 1000000 }";
    setup.worker_env = [
        ("WXHUB_WORKER__LIMITS__TEMPLATE", unlimited),
        ("WXHUB_WORKER__LIMITS__TEMPLATE_PER_OPENID", unlimited),
        ("WXHUB_WORKER__SEND_CONCURRENCY", &send_concurrency),
        // The tenant window (500 announced at once, refilled every 200 ms tick) caps one
        // tenant at about 2,500 sends/s, over 60 times the default template limit: a fairness
        // bound, not the pipeline's cost, which is what this measures (limits are off too).
        ("WXHUB_WORKER__TENANT_WINDOW", "1000000"),
        ("WXHUB_AMQP__PREFETCH", "128"),
        ("WXHUB_WORKER__ANNOUNCE_BATCH", &announce_batch),
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
    let url = format!(
        "{}{TEMPLATE_PATH}?access_token={token}",
        stack.sim.base_url()
    );
    let redis_pid = redis_pid(&stack.store).await;
    let ceiling = Ceiling {
        http: reqwest::Client::new(),
        url,
        redis_pid: redis_pid.clone(),
        concurrency,
        secs,
    };

    // Through the system: `jobs` enqueued as fast as `concurrency` callers of Enqueue can, until
    // all are sent; then as many in EnqueueBatch calls of `batch`. This machine's speed drifts
    // within seconds, so the phases run in rounds, each between two measurements of the
    // ceiling, and each phase's share is of the mean of the two around it.
    let url = format!("http://{}", stack.worker);
    let client = MessagingClient::connect(url).await.expect("worker");
    let through = Through {
        stack: &stack,
        client: &client,
        redis_pid: redis_pid.clone(),
        jobs,
    };
    let batch = env("MSG_BENCH_BATCH", 50);
    let callers = env("MSG_BENCH_BATCH_CONCURRENCY", 8);
    let rounds = env("MSG_BENCH_ROUNDS", 3).max(1);
    let mut before = ceiling.measure().await;
    let (mut single, mut batched) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let first = round * 2 * jobs;
        let rate = through.run("", first, concurrency, 0).await;
        let batch_rate = if batch > 0 {
            let how = format!(" in EnqueueBatch calls of {batch} ({callers} callers)");
            Some(through.run(&how, first + jobs, callers, batch).await)
        } else {
            None
        };
        let after = ceiling.measure().await;
        let mean = (before + after) / 2.0;
        println!(
            "messaging: round {}: ceiling {mean:.0}/s (mean of {before:.0} before and {after:.0} after); Enqueue {:.0} % of it{}",
            round + 1,
            100.0 * rate / mean,
            batch_rate.map_or(String::new(), |r| format!(
                ", EnqueueBatch {:.0} %",
                100.0 * r / mean
            ))
        );
        single.push((rate, 100.0 * rate / mean));
        if let Some(r) = batch_rate {
            batched.push(100.0 * r / mean);
        }
        before = after;
    }
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let shares = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let single_shares: Vec<f64> = single.iter().map(|(_, s)| *s).collect();
    println!(
        "messaging: share of the ceiling over {rounds} rounds: Enqueue median {:.0} % ({} %){}",
        median(single_shares.clone()),
        shares(&single_shares),
        if batched.is_empty() {
            String::new()
        } else {
            format!(
                "; EnqueueBatch of {batch} median {:.0} % ({} %)",
                median(batched.clone()),
                shares(&batched)
            )
        }
    );
    let rate = median(single.iter().map(|(r, _)| *r).collect());

    if std::env::var_os("MSG_BENCH_METRICS").is_some() {
        for line in wxhub_runtime::ops::prometheus().render().lines() {
            if !line.starts_with('#')
                && (line.contains("announce_batch_jobs_")
                    || line.contains("wxhub_bus_")
                    || line.contains("send_deliveries")
                    || line.contains("deferred")
                    || line.contains("held_fed"))
            {
                println!("metric {line}");
            }
        }
    }
    // Latency at half that rate (open loop): enqueue → recorded sent, from the job records; on
    // a quiet machine (the last ceiling's delivery reports handled).
    let settled = quiesce(redis_pid.clone(), Duration::from_secs(60)).await;
    println!("messaging: quiet after {:.1} s", settled.as_secs_f64());
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
        let took = sent_after(&mut client, id, Duration::from_secs(60)).await;
        let _ = histogram.record(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
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

/// The ceiling: the sim's accept rate of template sends from a bare HTTP client.
struct Ceiling {
    http: reqwest::Client,
    url: String,
    redis_pid: Option<String>,
    concurrency: u64,
    secs: u64,
}

impl Ceiling {
    /// Posts template sends from `concurrency` clients for `secs`, prints the figures and
    /// returns the sends the sim accepted per second.
    async fn measure(&self) -> f64 {
        // Each phase starts on a quiet machine: the previous one's delivery reports (pushed by
        // the sim 100 ms after each send, then handled by the gateway and the worker) are done.
        let settled = quiesce(self.redis_pid.clone(), Duration::from_secs(60)).await;
        println!("messaging: quiet after {:.1} s", settled.as_secs_f64());
        let cpu = CpuSplit::start(self.redis_pid.clone());
        let accepted = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + Duration::from_secs(self.secs);
        let concurrency = self.concurrency;
        let tasks: Vec<_> = (0..concurrency)
            .map(|w| {
                let (http, url, accepted) = (self.http.clone(), self.url.clone(), accepted.clone());
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
        let n = accepted.load(Ordering::Relaxed);
        let ceiling = n as f64 / self.secs as f64;
        println!(
            "messaging: sim bare accept rate (ceiling): {ceiling:.0} template sends/s ({concurrency} clients); CPU per send: {}",
            cpu.per(n)
        );
        ceiling
    }
}

/// The throughput phase through the system, on one stack.
struct Through<'a> {
    stack: &'a Stack,
    client: &'a MessagingClient<tonic::transport::Channel>,
    redis_pid: Option<String>,
    jobs: u64,
}

impl Through<'_> {
    /// Enqueues `jobs` templates (numbered from `first`) over `callers`, through Enqueue
    /// (`batch` 0) or EnqueueBatch calls of `batch`, waits until the sim has them all, prints
    /// the figures and returns the sends per second.
    async fn run(&self, how: &str, first: u64, callers: u64, batch: u64) -> f64 {
        let jobs = self.jobs;
        self.stack.sim.clear_messages();
        let settled = quiesce(self.redis_pid.clone(), Duration::from_secs(60)).await;
        println!(
            "messaging: quiet after {:.1} s (the previous phase's delivery reports handled)",
            settled.as_secs_f64()
        );
        let cpu = CpuSplit::start(self.redis_pid.clone());
        let started = Instant::now();
        let make = move |i| template(first + i);
        enqueue_all(self.client, jobs, (callers, batch), make).await;
        let enqueued = started.elapsed();
        let target = usize::try_from(jobs).unwrap_or(usize::MAX);
        while self.stack.sim.message_count(&Default::default()) < target {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "sends stalled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        let rate = jobs as f64 / took.as_secs_f64();
        println!(
            "messaging: {jobs} template jobs enqueued{how} in {:.2} s, all sent in {:.2} s: {rate:.0} sends/s; CPU per job: {}",
            enqueued.as_secs_f64(),
            took.as_secs_f64(),
            cpu.per(jobs)
        );
        rate
    }
}

/// One field of Redis's `INFO section`.
async fn info(store: &Store, section: &str, field: &str) -> Option<String> {
    let mut conn = store.conn();
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// The Redis server's pid, to read its CPU time.
async fn redis_pid(store: &Store) -> Option<String> {
    info(store, "server", "process_id").await
}

/// Redis's `used_memory` (bytes).
async fn used_memory(store: &Store) -> u64 {
    info(store, "memory", "used_memory")
        .await
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Samples `used_memory` every 100 ms until dropped; `peak()` is the highest seen.
struct MemorySampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl MemorySampler {
    fn start(store: Store) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(used_memory(&store).await, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { peak, task }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Enqueues one message as `tenant` and returns how long until it was sent (enqueue → the
/// WeChat call, from the job record).
async fn first_job_latency(
    client: &mut MessagingClient<tonic::transport::Channel>,
    request: pb::EnqueueRequest,
) -> Duration {
    let id = client
        .enqueue(req(request, OPS_KEY))
        .await
        .expect("enqueue")
        .into_inner()
        .id;
    sent_after(client, &id, Duration::from_secs(120)).await
}

fn summary(latencies: &[Duration]) -> String {
    let mut ms: Vec<u128> = latencies.iter().map(Duration::as_millis).collect();
    ms.sort_unstable();
    format!(
        "p50 {} ms, max {} ms ({} jobs)",
        ms.get(ms.len() / 2).copied().unwrap_or(0),
        ms.last().copied().unwrap_or(0),
        ms.len()
    )
}

/// The campaign across tenants and the held backlog, on a stack with the default limits except
/// the template rate (500/s per account, so ten accounts can outrun the worker) and a custom
/// rate of 5/s (so the held backlog stays a backlog).
async fn at_scale(recipients: u64, hold: u64) {
    let tenants = usize::try_from(env("MSG_BENCH_TENANTS", 10))
        .unwrap_or(10)
        .max(1);
    let per_tenant = usize::try_from(recipients).unwrap_or(0).div_ceil(tenants);
    let mut setup = Setup::new("bench-msg-scale");
    setup.tickets = true;
    setup.extra_tenants = if recipients > 0 { tenants } else { 0 };
    setup.extra_users = per_tenant;
    setup.worker_env = [
        (
            "WXHUB_WORKER__LIMITS__TEMPLATE",
            "{ count = 500, period_ms = 1000, burst = 500 }",
        ),
        (
            "WXHUB_WORKER__LIMITS__CUSTOM",
            "{ count = 5, period_ms = 1000, burst = 5 }",
        ),
        ("WXHUB_WORKER__BULK_CONCURRENCY", "32"),
        ("WXHUB_AMQP__PREFETCH", "128"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let stack = Stack::start_with(setup).await.expect("stack");
    let mut client = MessagingClient::connect(format!("http://{}", stack.worker))
        .await
        .expect("worker");
    let quiet_template = |i: usize| pb::EnqueueRequest {
        tenant: TENANT.into(),
        appid: AUTH1.into(),
        idempotency_key: String::new(),
        message: template(i as u64).message,
    };
    // Warm the quiet tenant's token before measuring.
    let _ = first_job_latency(&mut client, quiet_template(0)).await;

    if recipients > 0 {
        let baseline = used_memory(&stack.store).await;
        let sampler = MemorySampler::start(stack.store.clone());
        let started = Instant::now();
        let mut ids = Vec::new();
        for t in 0..tenants {
            let (tenant, _, appid) = extra_tenant(t);
            let r = pb::CreateCampaignRequest {
                tenant,
                appid,
                message: Some(pb::create_campaign_request::Message::Template(
                    pb::TemplateMessage {
                        template_id: TEMPLATE.into(),
                        data: [(
                            "keyword1".to_owned(),
                            pb::TemplateValue {
                                value: "sale".into(),
                                color: String::new(),
                            },
                        )]
                        .into(),
                        ..Default::default()
                    },
                )),
                recipients: (0..per_tenant)
                    .map(|j| pb::Recipient {
                        touser: extra_user(t, j),
                        data: Default::default(),
                    })
                    .collect(),
            };
            ids.push(
                client
                    .create_campaign(req(r, OPS_KEY))
                    .await
                    .expect("campaign")
                    .into_inner()
                    .id,
            );
        }
        let created = started.elapsed();
        let mut quiet = Vec::new();
        let total = (per_tenant * tenants) as u64;
        loop {
            let mut settled = 0;
            for id in &ids {
                let c = client
                    .get_campaign(req(
                        pb::CampaignRequest {
                            campaign_id: id.clone(),
                        },
                        OPS_KEY,
                    ))
                    .await
                    .expect("campaign")
                    .into_inner();
                settled += c.sent + c.failed + c.unknown + c.dead;
            }
            if settled >= total {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1800),
                "campaigns stalled at {settled} of {total}"
            );
            // A quiet tenant's single message every ~2 s while the campaigns run.
            quiet.push(first_job_latency(&mut client, quiet_template(quiet.len() + 1)).await);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let took = started.elapsed();
        let peak = sampler.peak();
        drop(sampler);
        println!(
            "messaging: campaign of {total} recipients across {tenants} tenants: created in {:.1} s, all sent in {:.1} s ({:.0} sends/s); peak Redis memory +{:.0} MB over the baseline ({:.0} MB); a quiet tenant's first job meanwhile: {}",
            created.as_secs_f64(),
            took.as_secs_f64(),
            total as f64 / took.as_secs_f64(),
            mb(peak.saturating_sub(baseline)),
            mb(baseline),
            summary(&quiet)
        );
    }

    if hold > 0 {
        // One tenant's backlog of single messages, stored the way Enqueue stores them.
        let window = 500; // worker.tenant_window's default, which this stack runs with
        let jobs = Jobs::new(
            stack.store.clone(),
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )
        .with_tenant_window(window);
        let baseline = used_memory(&stack.store).await;
        let sampler = MemorySampler::start(stack.store.clone());
        let started = Instant::now();
        let held = AtomicU64::new(0);
        futures::stream::iter(0..hold)
            .map(|i| {
                let (jobs, bus, held) = (jobs.clone(), stack.bus.clone(), &held);
                async move {
                    let now = wxhub_runtime::unix_ms();
                    let id = wxhub_store::jobs::new_id(TENANT, now);
                    let touser = user(usize::try_from(i).unwrap_or(0) % USERS);
                    let job = NewJob {
                        id: id.clone(),
                        appid: AUTH1.into(),
                        kind: "custom".into(),
                        api: "/cgi-bin/message/custom/send".into(),
                        body: serde_json::json!({
                            "touser": touser,
                            "msgtype": "text",
                            "text": {"content": format!("backlog {i}")},
                        })
                        .to_string(),
                        touser,
                        idempotency_key: None,
                        campaign: None,
                        now_ms: now,
                    };
                    match jobs.create(TENANT, &job).await.expect("create") {
                        Created::New => {
                            let route = Some(wxhub_worker::announce::new_route(&job));
                            wxhub_worker::announce::publish_job(&bus, TENANT, &id, route)
                                .await
                                .expect("publish");
                        }
                        Created::Held => {
                            held.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("stored {id}: {other:?}"),
                    }
                }
            })
            .buffer_unordered(64)
            .collect::<()>()
            .await;
        let took = started.elapsed();
        let memory = sampler.peak().saturating_sub(baseline);
        drop(sampler);
        let mut quiet = Vec::new();
        for i in 0..5 {
            let r = pb::EnqueueRequest {
                tenant: BETA.into(),
                appid: BETA_AUTH.into(),
                idempotency_key: String::new(),
                message: Some(Message::Custom(pb::CustomMessage {
                    touser: user(i),
                    msgtype: "text".into(),
                    body_json: serde_json::json!({ "content": "first" }).to_string(),
                    kf_account: String::new(),
                })),
            };
            quiet.push(first_job_latency(&mut client, r).await);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (held_now, in_broker, _) = jobs.window_counts(TENANT).await.expect("counts");
        println!(
            "messaging: one tenant storing {hold} single messages ({} over its window held) in {:.1} s ({:.0}/s, +{:.0} MB of Redis); with {held_now} held and {in_broker} in the broker, another tenant's first job: {}",
            held.load(Ordering::Relaxed),
            took.as_secs_f64(),
            hold as f64 / took.as_secs_f64(),
            mb(memory),
            summary(&quiet)
        );
    }
    stack.stop().await;
}
