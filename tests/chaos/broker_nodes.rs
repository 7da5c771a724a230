//! Scenario 1: RabbitMQ cluster nodes fail under callback load — the node holding the gateway's
//! connection SIGKILLed, the queue leader's node SIGKILLed, the gateway's node paused (SIGSTOP)
//! past the heartbeat. Afterwards the queue is read back through the nodes the fault spared.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wxhub_loadgen::LoadReport;
use wxhub_testkit::Namespace;

use crate::harness::{callbacks, full, root};

/// `scripts/rabbitmq-cluster.sh ARGS`, its standard output.
fn cluster(args: &[&str]) -> String {
    let out = Command::new(root().join("scripts/rabbitmq-cluster.sh"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/rabbitmq-cluster.sh");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL of the node the gateway is connected to.
    KillConnectionNode,
    /// SIGKILL of the node leading the queue the callbacks land in.
    KillQueueLeader,
    /// SIGSTOP of the gateway's node for longer than the heartbeat, then SIGCONT.
    PauseConnectionNode,
}

/// The node (1..3) holding the gateway's connection: the one with a client connection, asked
/// before the test's own connection exists.
fn connection_node() -> String {
    for n in ["1", "2", "3"] {
        if cluster(&["conns", n]).parse::<u32>().unwrap_or(0) > 0 {
            return n.to_owned();
        }
    }
    panic!("no cluster node holds the gateway's connection");
}

async fn scenario(fault: Fault, secs: u64, rate: f64) {
    let urls = wxhub_testkit::cluster_urls();
    assert!(
        urls.len() >= 3,
        "the chaos suite needs a RabbitMQ cluster: WXHUB_TEST_AMQP_URLS (scripts/rabbitmq-cluster.sh start; make chaos)"
    );
    wxhub_runtime::telemetry::init_for_tests();
    // Every node up (an earlier scenario that failed may have left one down).
    for n in ["1", "2", "3"] {
        cluster(&["start-node", n]);
    }
    let ns = Namespace::new(&format!("chaos-{fault:?}").to_lowercase());
    let dir = tempfile::tempdir().expect("tempdir");
    let (gateway, url) = callbacks::gateway(&ns, dir.path()).await;
    let unrouted = ns.topology().unrouted_queue();

    let victim = match fault {
        Fault::KillConnectionNode | Fault::PauseConnectionNode => connection_node(),
        Fault::KillQueueLeader => cluster(&["leader", &unrouted]),
    };
    assert!(!victim.is_empty(), "no node to inject {fault:?} into");

    let load = callbacks::load(&url, secs, rate);
    tokio::time::sleep(Duration::from_secs(secs / 3)).await;
    let injected = Instant::now();
    match fault {
        Fault::KillConnectionNode | Fault::KillQueueLeader => {
            cluster(&["kill", &victim]);
        }
        Fault::PauseConnectionNode => {
            cluster(&["pause", &victim]);
            // Past the heartbeat (5 s here: two missed beats end the connection).
            tokio::time::sleep(Duration::from_secs(12)).await;
            cluster(&["resume", &victim]);
        }
    }
    let report: LoadReport = load.report().await;
    let fault_secs = injected.elapsed().as_secs_f64();
    drop(gateway);

    // What the broker holds, read through the nodes the fault spared (a resumed node may
    // still be catching up).
    let mut spared = wxhub_testkit::amqp_config();
    let victim_index: usize = victim.parse().expect("node number");
    spared.urls = spared
        .urls
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i + 1 != victim_index)
        .map(|(_, u)| u)
        .collect();
    spared.url = spared.urls[0].clone();
    let (messages, ids) = callbacks::in_broker(&ns, spared).await;
    let ok = report.status.get("200").copied().unwrap_or(0);
    let unavailable = report.status.get("503").copied().unwrap_or(0);
    println!(
        "chaos {fault:?} (node {victim}): sent {}, answered 200 {ok}, 503 {unavailable}, other {}, errors {}; \
         in RabbitMQ {messages} messages, {} distinct callbacks, {} duplicates (same message_id); \
         p99 {:.1} ms; fault window {fault_secs:.1} s",
        report.sent,
        report.completed - ok - unavailable,
        report.errors,
        ids.len(),
        messages - ids.len(),
        report.latency_ms.p99,
    );
    // The killed node stays down: the next scenario starts every node again.
    callbacks::assert_acknowledged_stored(&report, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_holding_the_gateways_connection_is_killed_under_load() {
    let (secs, rate) = if full() { (30, 400.0) } else { (12, 200.0) };
    scenario(Fault::KillConnectionNode, secs, rate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "part of `make chaos` (about a minute each), not of `make test`"]
async fn the_queue_leaders_node_is_killed_under_load() {
    scenario(Fault::KillQueueLeader, 30, 400.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "part of `make chaos` (about a minute each), not of `make test`"]
async fn the_gateways_node_is_paused_past_the_heartbeat() {
    scenario(Fault::PauseConnectionNode, 30, 400.0).await;
}
