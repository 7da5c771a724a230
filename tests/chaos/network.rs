//! Scenario 5: network faults between a service and the broker or Redis, made by the test kit's
//! fault proxy (`wxhub_testkit::proxy`: the kernel here has no `netem`). Each service reaches
//! its peer only through the proxy, which in turn delays every chunk by 200 ms, resets every
//! connection and refuses new ones, forwards again, and then blackholes the link (connections
//! stay open, nothing passes: a partition) for longer than the heartbeat, before it heals.
//!
//! - gateway ↔ RabbitMQ under callback load: every callback answered 200 is in RabbitMQ, none
//!   twice under different ids;
//! - token-control ↔ Redis under token reads: reads fail within their deadline (never hang),
//!   are served again once the link heals, and the stored tokens are WeChat's.

use std::time::{Duration, Instant};

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;
use wxhub_sim::SimConfig;
use wxhub_testkit::Namespace;
use wxhub_testkit::proxy::{FaultProxy, Mode};

use crate::harness::{World, address, broker_address, callbacks, full, ready_again};
use crate::tokens::{self, Readers};
use crate::worker_killed::{enqueue_texts, sending_world, sends_by_content, settle_all, worker};

/// The faults, in order, each for its time; then the link heals. Returns when it healed.
async fn inject(proxy: &FaultProxy, blackhole: Duration) -> Instant {
    for (mode, for_) in [
        (
            Mode::Latency(Duration::from_millis(200)),
            Duration::from_secs(4),
        ),
        (Mode::Reset, Duration::from_secs(2)),
        (Mode::Pass, Duration::from_secs(3)),
        (Mode::Blackhole, blackhole),
    ] {
        proxy.set(mode);
        tokio::time::sleep(for_).await;
    }
    // A blackhole ends with its connections reset, as a partition's do once it heals and
    // either side sends (the peer forgot them).
    proxy.set(Mode::Reset);
    proxy.set(Mode::Pass);
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "part of `make chaos` (about 30 s), not of `make test`"]
async fn the_gateways_broker_link_slowed_reset_and_blackholed_loses_no_acknowledged_callback() {
    let (secs, rate) = if full() { (40u64, 200.0) } else { (24, 100.0) };
    wxhub_runtime::telemetry::init_for_tests();
    let ns = Namespace::new("chaos-net-broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = FaultProxy::start(broker_address()).await.expect("proxy");
    let via_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let (gateway, url) = callbacks::gateway_with(
        &ns,
        dir.path(),
        wxhub_testkit::redis_env(),
        vec![
            ("WXHUB_AMQP__URL".to_owned(), via_proxy),
            ("WXHUB_AMQP__URLS".to_owned(), "[]".to_owned()),
        ],
    )
    .await;
    let load = callbacks::load(&url, secs, rate);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let blackhole = Duration::from_secs(12);
    let healed = inject(&proxy, blackhole).await;
    // Ready again: the gateway reconnected through the healed link.
    let ready_again = ready_again(&url, healed, "the link healed").await;
    let report = load.report().await;
    drop(gateway);
    let (messages, ids) = callbacks::in_broker(&ns, wxhub_testkit::amqp_config()).await;
    println!(
        "chaos network gateway<->RabbitMQ via the fault proxy: {rate}/s for {secs} s; 200 ms \
         latency 4 s, reset 2 s, pass 3 s, blackhole {} s (heartbeat 5 s), healed; sent {}, \
         answered {:?}, no answer {}; in RabbitMQ {messages} messages, {} distinct, {} \
         duplicates (same message_id); ready again {:.2} s after the link healed; p99 {:.1} ms; \
         proxy connections {}",
        blackhole.as_secs(),
        report.sent,
        report.status,
        report.errors,
        ids.len(),
        messages - ids.len(),
        ready_again.as_secs_f64(),
        report.latency_ms.p99,
        proxy.connections(),
    );
    callbacks::assert_acknowledged_stored(&report, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "part of `make chaos`, not of `make test`"]
async fn token_controls_redis_link_slowed_reset_and_blackholed_fails_reads_in_time_and_heals() {
    let redis = wxhub_testkit::redis_url();
    assert!(
        wxhub_testkit::redis_cluster_nodes().is_empty(),
        "this scenario proxies a single Redis"
    );
    let world = World::start(
        "chaos-net-redis",
        SimConfig {
            token_ttl: Duration::from_secs(6),
            rotate_refresh_tokens: true,
            ..SimConfig::default()
        },
    )
    .await;
    world.give_ticket().await;
    let proxy = FaultProxy::start(address(&redis)).await.expect("proxy");
    let (_tc, tc_url, _) = world
        .token_control(
            vec![(
                "WXHUB_REDIS__URL".to_owned(),
                format!("redis://{}", proxy.addr()),
            )],
            &[(
                "WXHUB_TOKEN_CONTROL__DEFAULT_MIN_REMAINING_MS",
                "1000".to_owned(),
            )],
        )
        .await;
    world.wait_for_authorizers().await;

    const DEADLINE: Duration = Duration::from_secs(5);
    let readers = Readers::start(
        std::slice::from_ref(&tc_url),
        Duration::from_millis(50),
        DEADLINE,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let blackhole = Duration::from_secs(8);
    let healed = inject(&proxy, blackhole).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let reads = readers.stop().await;
    let (ok, failed, slowest, last_failure) =
        (reads.ok, reads.failed, reads.slowest, reads.last_failure);
    // Stored = WeChat's latest, for every credential.
    let wrong = tokens::not_wechats(&world, false).await;
    let served_again = last_failure.map(|at| at.saturating_duration_since(healed).as_secs_f64());
    println!(
        "chaos network token-control<->Redis via the fault proxy: reads of 3 credentials, 6 s \
         tokens; 200 ms latency 4 s, reset 2 s, pass 3 s, blackhole {} s, healed; reads ok \
         {ok}, failed {failed}, slowest {:.2} s (deadline {} s); last failure {:?} s after the \
         link healed; stored tokens not WeChat's latest: {wrong:?}",
        blackhole.as_secs(),
        slowest.as_secs_f64(),
        DEADLINE.as_secs(),
        served_again,
    );
    assert!(
        slowest < DEADLINE + Duration::from_secs(1),
        "a read outlived its deadline by more than 1 s: {slowest:?}"
    );
    assert!(
        served_again.is_none_or(|s| s < 10.0),
        "reads still failed 10 s after the link healed"
    );
    assert!(wrong.is_empty(), "stale stored tokens: {wrong:?}");
    drop(_tc);
    world.stop(&[]).await;
}

/// The worker's Redis link slowed, reset and blackholed (8 s: past the requeues of the
/// delivery limit, 5 here) while it takes and sends jobs. Every job it accepted ends `sent`,
/// or `unknown` when the link went down between its send and its record; none is sent twice,
/// and nothing goes to the dead letters (a job whose claim fails waits in a delay queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "part of `make chaos` (about 40 s), not of `make test`"]
async fn the_workers_redis_link_slowed_reset_and_blackholed_loses_no_job_and_sends_none_twice() {
    let redis = wxhub_testkit::redis_url();
    assert!(
        wxhub_testkit::redis_cluster_nodes().is_empty(),
        "this scenario proxies a single Redis"
    );
    // Sends are in flight when the link goes: WeChat answers each 300 ms later.
    let (world, _tc, tc_url) = sending_world("chaos-net-worker", Duration::from_millis(300)).await;
    let proxy = FaultProxy::start(address(&redis)).await.expect("proxy");
    let via_proxy = format!("redis://{}", proxy.addr());
    let (_worker, url) = worker(&world, &tc_url, &[("WXHUB_REDIS__URL", via_proxy)]).await;

    // Enqueues through the same worker (they fail while its Redis is gone) for the whole fault.
    let (secs, rate) = (22u64, 20.0);
    let enqueue = enqueue_texts(url.clone(), (secs as f64 * rate) as usize, rate);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let blackhole = Duration::from_secs(8);
    let healed = inject(&proxy, blackhole).await;
    let (jobs, refused) = enqueue.await.expect("enqueue");
    let records = settle_all(&url, &jobs).await;
    let settled = healed.elapsed().as_secs_f64();

    let sends = sends_by_content(&world);
    let mut by_state: HashMap<String, usize> = HashMap::new();
    let (mut twice, mut sent_not_once) = (0, 0);
    for job in &records {
        *by_state.entry(job.state_name.clone()).or_default() += 1;
        let n = sends.get(&jobs[&job.id]).copied().unwrap_or(0);
        twice += usize::from(n > 1);
        sent_not_once += usize::from(job.state_name == "sent" && n != 1);
    }
    let cancel = CancellationToken::new();
    let bus = world.ns.bus(&cancel).await;
    let dead = world
        .ns
        .drain_queue(
            &bus,
            &world.ns.topology().dead_queue(),
            Duration::from_secs(1),
        )
        .await;
    cancel.cancel();
    println!(
        "chaos network worker<->Redis via the fault proxy: {rate}/s for {secs} s through one \
         worker, WeChat answering in 300 ms; 200 ms latency 4 s, reset 2 s, pass 3 s, blackhole \
         {} s, healed; enqueued {} (refused {refused}); final states {by_state:?}; sent twice \
         {twice}; recorded sent but not sent once {sent_not_once}; dead letters {}; every job \
         final {settled:.1} s after the link healed; proxied connections {}",
        blackhole.as_secs(),
        jobs.len(),
        dead.len(),
        proxy.connections(),
    );
    assert!(!jobs.is_empty(), "nothing was enqueued");
    assert_eq!(twice, 0, "jobs sent twice");
    assert_eq!(
        sent_not_once, 0,
        "jobs recorded sent but not sent exactly once"
    );
    assert!(
        dead.is_empty(),
        "messages were dead-lettered: {}",
        dead.len()
    );
    assert_eq!(
        by_state.get("sent").copied().unwrap_or(0) + by_state.get("unknown").copied().unwrap_or(0),
        jobs.len(),
        "every job is sent or, when the link went down mid-send, unknown: {by_state:?}"
    );
    world.stop(&[]).await;
}
