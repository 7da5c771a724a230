//! Scenario 4a: a worker replica SIGKILLed between its sends and their acks.
//!
//! Two `wxhub-worker` replicas consume `{ns}.send`; jobs (customer-service texts, each with a
//! content of its own) are enqueued through the replica that survives, at a fixed rate. WeChat
//! (the sim) takes every send at once and answers it only 800 ms later, so at any moment each
//! replica has sends that WeChat performed and the worker has not yet recorded or acked. A third
//! of the way in, replica A is SIGKILLed, and restarted 2 s later. The broker redelivers A's
//! unacked jobs; a job left `sending` under A's lease is found stale once the lease ran out
//! and, being a customer-service message, ends `unknown` — never resent blindly.
//!
//! Checked afterwards, from the job records and the sim's log of messages it accepted: every
//! enqueued job reached a final state (none vanished, none stuck), no job was sent twice, a job
//! recorded `sent` was sent exactly once, and the sim accepted nothing that is not a job.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use wxhub_proto::messaging::v1 as pb;
use wxhub_proto::messaging::v1::enqueue_request::Message;
use wxhub_proto::messaging::v1::messaging_client::MessagingClient;
use wxhub_runtime::config::Source;
use wxhub_sim::{FaultSpec, MessageFilter, SimConfig};
use wxhub_tests::{AUTH1, OPS_KEY, TENANT, WORKER_KEY, req, user};

use crate::harness::{Service, World, free_port, full};

pub(crate) const CUSTOM: &str = "/cgi-bin/message/custom/send";
const LEASE_MS: u64 = 4000;

/// A worker replica: its process and its Messaging API URL; `extra` are more settings (they
/// win).
pub(crate) async fn worker(
    world: &World,
    token_control: &str,
    extra: &[(&str, String)],
) -> (Service, String) {
    let (port, ops) = (free_port(), free_port());
    let mut settings = vec![
        ("WXHUB_CLIENT__API_KEY", WORKER_KEY.to_owned()),
        ("WXHUB_TOKEN_CONTROL__ENDPOINT", token_control.to_owned()),
        ("WXHUB_WORKER__LISTEN", format!("127.0.0.1:{port}")),
        ("WXHUB_WORKER__OPS_LISTEN", format!("127.0.0.1:{ops}")),
        // A dead sender's jobs are found stale quickly; WeChat's answer comes well within it.
        ("WXHUB_WORKER__LEASE_MS", LEASE_MS.to_string()),
        ("WXHUB_WECHAT__TIMEOUT_MS", "2000".to_owned()),
        // A tier equal to the lease: a job found under a live lease waits one lease (a
        // deferral takes the smallest tier at least that long).
        (
            "WXHUB_WORKER__RETRY_DELAYS_MS",
            "[500, 1000, 4000]".to_owned(),
        ),
        ("WXHUB_WORKER__LIMITER_DELAY_MS", "300".to_owned()),
        // The load, not the account's rate, is what this scenario is about.
        ("WXHUB_WORKER__LIMITS__CUSTOM__COUNT", "1000".to_owned()),
        ("WXHUB_WORKER__LIMITS__CUSTOM__BURST", "1000".to_owned()),
    ];
    settings.extend_from_slice(extra);
    let env = world.env(&settings);
    // Its delay queues go with the namespace.
    let config = wxhub_worker::Config::load(&Source {
        file: None,
        env: env.clone(),
    })
    .expect("worker config");
    let topology = world.ns.topology();
    for q in wxhub_worker::delay_queues(&config, &topology) {
        world.ns.track_queue(q);
    }
    let service = Service::start(
        "wxhub-worker",
        env,
        format!("http://127.0.0.1:{ops}/readyz"),
    )
    .await;
    (service, format!("http://127.0.0.1:{port}"))
}

pub(crate) async fn messaging(url: &str) -> MessagingClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match MessagingClient::connect(url.to_owned()).await {
            Ok(c) => return c,
            Err(e) => assert!(Instant::now() < deadline, "worker not serving: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn text(i: usize) -> (String, pb::EnqueueRequest) {
    let content = format!("chaos job {i}");
    let request = pb::EnqueueRequest {
        tenant: TENANT.into(),
        appid: AUTH1.into(),
        idempotency_key: String::new(),
        message: Some(Message::Custom(pb::CustomMessage {
            touser: user(i % 50),
            msgtype: "text".into(),
            body_json: serde_json::json!({ "content": content }).to_string(),
            kf_account: String::new(),
        })),
    };
    (content, request)
}

pub(crate) fn is_final(state: &str) -> bool {
    matches!(
        state,
        "sent" | "delivered" | "delivery_failed" | "failed" | "unknown" | "dead"
    )
}

/// A world for sending customer-service texts (no per-interaction limit) with token-control
/// running (its process and URL); WeChat performs each send at once and answers it
/// `answer_after` later.
pub(crate) async fn sending_world(label: &str, answer_after: Duration) -> (World, Service, String) {
    let world = World::start(
        label,
        SimConfig {
            custom_messages_per_interaction: 1_000_000,
            ..SimConfig::default()
        },
    )
    .await;
    world.give_ticket().await;
    let (tc, tc_url, _) = world.token_control(wxhub_testkit::redis_env(), &[]).await;
    world.wait_for_authorizers().await;
    world
        .sim
        .add_fault(FaultSpec::respond_after(CUSTOM, answer_after, None))
        .expect("fault");
    (world, tc, tc_url)
}

/// Enqueues `total` texts ([`text`]) through the worker at `url`, at `rate` a second. Returns
/// the jobs accepted (id → content) and how many enqueues were refused.
pub(crate) fn enqueue_texts(
    url: String,
    total: usize,
    rate: f64,
) -> tokio::task::JoinHandle<(HashMap<String, String>, usize)> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            tick.tick().await;
            let url = url.clone();
            tasks.spawn(async move {
                let (content, request) = text(i);
                let mut client = messaging(&url).await;
                let job = client
                    .enqueue(req(request, OPS_KEY))
                    .await
                    .map(|r| r.into_inner().id);
                (content, job)
            });
        }
        let mut jobs = HashMap::new();
        let mut refused = 0usize;
        while let Some(done) = tasks.join_next().await {
            match done.expect("enqueue task") {
                (content, Ok(id)) => {
                    jobs.insert(id, content);
                }
                (_, Err(_)) => refused += 1,
            }
        }
        (jobs, refused)
    })
}

/// The records of `jobs`, read through the worker at `url` once every one is final (at most
/// 60 s).
pub(crate) async fn settle_all(url: &str, jobs: &HashMap<String, String>) -> Vec<pb::Job> {
    let mut client = messaging(url).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut records = Vec::with_capacity(jobs.len());
        for id in jobs.keys() {
            let job = client
                .get_job(req(pb::GetJobRequest { job_id: id.clone() }, OPS_KEY))
                .await
                .unwrap_or_else(|e| panic!("job {id} vanished: {e}"))
                .into_inner();
            records.push(job);
        }
        let open = records.iter().filter(|j| !is_final(&j.state_name)).count();
        if open == 0 {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{open} jobs not settled 60 s after the load"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many times WeChat (the sim) accepted each customer-service content.
pub(crate) fn sends_by_content(world: &World) -> HashMap<String, u32> {
    let mut sends: HashMap<String, u32> = HashMap::new();
    for m in world.sim.messages(&MessageFilter {
        path: Some(CUSTOM.into()),
        ..MessageFilter::default()
    }) {
        *sends.entry(m.content.unwrap_or_default()).or_default() += 1;
    }
    sends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_send_and_ack_sends_no_job_twice_and_loses_none() {
    let (secs, rate) = if full() { (30u64, 40.0) } else { (9, 30.0) };
    // WeChat performs each send at once and answers 800 ms later.
    let (world, _tc, tc_url) = sending_world("chaos-worker", Duration::from_millis(800)).await;
    let (mut victim, _) = worker(&world, &tc_url, &[]).await;
    let (_survivor, survivor_url) = worker(&world, &tc_url, &[]).await;

    // Enqueue at `rate` through the survivor; remember each job's content.
    let total = (secs as f64 * rate) as usize;
    let enqueue = enqueue_texts(survivor_url.clone(), total, rate);
    tokio::time::sleep(Duration::from_secs(secs / 3)).await;
    let killed = Instant::now();
    let killed_ms = world.sim.clock().now_ms();
    victim.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restart = victim.restart().await;
    let (jobs, refused) = enqueue.await.expect("enqueue");

    // Every job settles: those left `sending` by the dead replica once its lease ran out.
    let records = settle_all(&survivor_url, &jobs).await;
    let settled_secs = killed.elapsed().as_secs_f64();

    // Sends per job, from what WeChat accepted.
    let sends = sends_by_content(&world);
    let mut by_state: HashMap<String, usize> = HashMap::new();
    let (mut twice, mut sent_not_once, mut unknown_delivered) = (0, 0, 0);
    let mut last_stale_ms = killed_ms;
    for job in &records {
        *by_state.entry(job.state_name.clone()).or_default() += 1;
        let n = sends.get(&jobs[&job.id]).copied().unwrap_or(0);
        if n > 1 {
            twice += 1;
        }
        match job.state_name.as_str() {
            "sent" if n != 1 => sent_not_once += 1,
            "unknown" => {
                unknown_delivered += usize::from(n == 1);
                last_stale_ms = last_stale_ms.max(job.updated_at_ms);
            }
            _ => {}
        }
    }
    let contents: std::collections::HashSet<&String> = jobs.values().collect();
    let strangers = sends.keys().filter(|c| !contents.contains(c)).count();
    println!(
        "chaos worker SIGKILLed between send and ack: {rate}/s for {secs} s, 2 replicas; \
         enqueued {} (refused {refused}); final states {by_state:?}; unknown ones WeChat did \
         receive: {unknown_delivered}; sent twice {twice}; recorded sent but not sent once \
         {sent_not_once}; unknown sends {strangers}; victim ready again {:.1} s after restart; \
         dead replica's jobs settled {:.1} s after the kill (lease {LEASE_MS} ms); every job \
         final {settled_secs:.1} s after the kill",
        jobs.len(),
        restart.as_secs_f64(),
        (last_stale_ms - killed_ms) as f64 / 1000.0,
    );
    assert!(!jobs.is_empty(), "nothing was enqueued");
    assert_eq!(twice, 0, "jobs sent twice");
    assert_eq!(
        sent_not_once, 0,
        "jobs recorded sent but not sent exactly once"
    );
    assert_eq!(strangers, 0, "WeChat got sends that are no job");
    assert_eq!(
        by_state.get("sent").copied().unwrap_or(0) + by_state.get("unknown").copied().unwrap_or(0),
        jobs.len(),
        "every job is sent or, when its sender died mid-send, unknown: {by_state:?}"
    );
    drop((victim, _survivor, _tc));
    world.stop(&[]).await;
}
