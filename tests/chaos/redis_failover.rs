//! Scenario 2a: the Redis Cluster primary serving acme's slot SIGKILLed during token refreshes
//! and callback dedupe; its replica is promoted.
//!
//! A six-node cluster of the test's own (`scripts/redis-cluster.sh` with a directory and ports
//! of its own, stopped at the end even when the test fails). Two `wxhub-token-control`
//! replicas refresh acme's tokens (6 s tokens from the sim, every `api_authorizer_token`
//! rotating the refresh token) while a reader asks both for the three tokens; the
//! `wxhub-gateway` takes signed callbacks from the load generator, each deduplicated in Redis
//! before it is published. Afterwards: every callback answered 200 is in RabbitMQ and none is
//! there twice; every stored token is WeChat's latest (no stale overwrite) and every stored
//! refresh token WeChat's current one (none lost — healed through the reconcile when the dead
//! primary had acknowledged a rotation it never replicated).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wxhub_sim::{CallFilter, SimConfig};
use wxhub_store::{RedisConfig, Store};
use wxhub_tests::TENANT;

use crate::harness::{Service, World, callbacks, full, root};
use crate::tokens::{self, Readers};

const AUTHORIZER_LIST: &str = "/cgi-bin/component/api_get_authorizer_list";

/// The test's own cluster; stopped (and its directory deleted) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        let cluster = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        cluster.run(&["start"]);
        cluster
    }

    /// `scripts/redis-cluster.sh ARGS` on this cluster; its standard output.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("bash")
            .arg(root().join("scripts/redis-cluster.sh"))
            .args(args)
            .env("WXHUB_REDIS_CLUSTER_DIR", self.dir.path().join("cluster"))
            .env("WXHUB_REDIS_CLUSTER_PORT", "7301")
            .stderr(Stdio::null())
            .output()
            .expect("scripts/redis-cluster.sh");
        assert!(out.status.success(), "redis-cluster.sh {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn nodes(&self) -> Vec<String> {
        self.run(&["urls"]).split(',').map(str::to_owned).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("scripts/redis-cluster.sh"))
            .arg("stop")
            .env("WXHUB_REDIS_CLUSTER_DIR", self.dir.path().join("cluster"))
            .env("WXHUB_REDIS_CLUSTER_PORT", "7301")
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "part of `make chaos` (starts a Redis Cluster of its own), not of `make test`"]
async fn a_redis_primary_killed_during_refreshes_and_dedupe_loses_nothing() {
    let (secs, rate) = if full() { (30u64, 200.0) } else { (15, 100.0) };
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .expect("cluster");
    let nodes = cluster.nodes();
    let redis_env = vec![
        ("WXHUB_REDIS__URL".to_owned(), nodes[0].clone()),
        (
            "WXHUB_REDIS__CLUSTER_NODES".to_owned(),
            format!(
                "[{}]",
                nodes
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
    ];
    let config = RedisConfig::cluster(nodes.clone());
    let world = World::start_on(
        "chaos-redis-failover",
        SimConfig {
            token_ttl: Duration::from_secs(6),
            rotate_refresh_tokens: true,
            ..SimConfig::default()
        },
        config.clone(),
    )
    .await;
    world.give_ticket().await;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(
            world
                .token_control(
                    redis_env.clone(),
                    &[(
                        "WXHUB_TOKEN_CONTROL__DEFAULT_MIN_REMAINING_MS",
                        "1000".to_owned(),
                    )],
                )
                .await,
        );
    }
    world.wait_for_authorizers().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (gateway, url) = callbacks::gateway_on(&world.ns, dir.path(), redis_env.clone()).await;
    let fence = Store::connect(&config, world.ns.name())
        .expect("store")
        .keys(TENANT)
        .fence();
    let victim = cluster.run(&["primary-of", &fence]);
    // The gateway's dedupe keys live in the chaos tenant's slot: on the victim or not.
    let dedupe_fence = Store::connect(&config, world.ns.name())
        .expect("store")
        .keys(callbacks::TENANT)
        .fence();
    let dedupe_on_victim = cluster.run(&["primary-of", &dedupe_fence]) == victim;
    let lists = world
        .sim
        .calls(&CallFilter {
            path: Some(AUTHORIZER_LIST.into()),
            ..CallFilter::default()
        })
        .len();

    let urls: Vec<String> = replicas.iter().map(|(_, url, _)| url.clone()).collect();
    let readers = Readers::start(&urls, Duration::from_millis(50), Duration::from_secs(10));
    let load = callbacks::load(&url, secs, rate);
    // A third of the way in, acme's primary; two thirds in, the dedupe slot's primary when it
    // is another one (one at a time: the surviving primaries must be a majority to promote).
    let mut victims = vec![victim.clone()];
    if !dedupe_on_victim {
        victims.push(cluster.run(&["primary-of", &dedupe_fence]));
    }
    let mut promotions = Vec::new();
    let mut killed = None;
    for (i, node) in victims.iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(secs / 3)).await;
        let key = if i == 0 { &fence } else { &dedupe_fence };
        let at = Instant::now();
        killed.get_or_insert(at);
        cluster.run(&["kill", node]);
        // Promoted: a live node names another primary for the slot.
        loop {
            let now = cluster.run(&["primary-of", key]);
            if !now.is_empty() && &now != node {
                promotions.push(format!("node {node}: {:.2} s", at.elapsed().as_secs_f64()));
                break;
            }
            assert!(
                at.elapsed() < Duration::from_secs(30),
                "no replica promoted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let killed = killed.expect("a kill");
    let report = load.report().await;
    drop(gateway);
    // Converged: stored = WeChat's (at most 30 s more).
    let converging = Instant::now();
    let (wrong, converged) = loop {
        let wrong = tokens::not_wechats(&world, true).await;
        if wrong.is_empty() || converging.elapsed() > Duration::from_secs(30) {
            break (wrong, converging.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reads = readers.stop().await;
    let healed_lists = world
        .sim
        .calls(&CallFilter {
            path: Some(AUTHORIZER_LIST.into()),
            ..CallFilter::default()
        })
        .len()
        - lists;
    let mut stale_refused = 0.0;
    for (_, _, ops) in &replicas {
        stale_refused += Service::metric(ops, "wxhub_token_stale_writes_refused_total").await;
    }
    let (messages, ids) = callbacks::in_broker(&world.ns, wxhub_testkit::amqp_config()).await;
    let ok = report.status.get("200").copied().unwrap_or(0);
    println!(
        "chaos redis primaries SIGKILLed one after the other: nodes {victims:?} (acme's \
         slot, then the callbacks' dedupe slot): callbacks {rate}/s for \
         {secs} s: sent {}, answered {:?}, no answer {}, p99 {:.1} ms; in RabbitMQ {messages} messages, {} \
         distinct, {} duplicates (same message_id); replicas promoted after {promotions:?}; token \
         reads (2 replicas, 3 credentials) ok {}, failed {} (first {:?}), last failure {:?} s \
         after the kill, slowest {:.2} s; authorizer lists after the kill (reconcile) \
         {healed_lists}; stale writes refused {stale_refused}; converged {:.2} s after the load; \
         mismatches {wrong:?}",
        report.sent,
        report.status,
        report.errors,
        report.latency_ms.p99,
        ids.len(),
        messages - ids.len(),
        reads.ok,
        reads.failed,
        reads.first_failure,
        reads
            .last_failure
            .map(|at| at.saturating_duration_since(killed).as_secs_f64()),
        reads.slowest.as_secs_f64(),
        converged.as_secs_f64(),
    );
    assert!(ok > 0, "no callback accepted");
    callbacks::assert_acknowledged_stored(&report, &ids);
    assert!(wrong.is_empty(), "stale or lost: {wrong:?}");
    drop(replicas);
    world.stop(&[]).await;
    drop(cluster);
}
