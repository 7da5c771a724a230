//! Fault injection against a local three-node RabbitMQ cluster (`make chaos`; the short run is
//! part of `make test`). Each scenario drives signed callbacks (wxhub-loadgen, playing WeChat)
//! through the real `wxhub-gateway` binary, injects one fault with
//! `scripts/rabbitmq-cluster.sh`, and then checks from the broker what the gateway promised:
//! every callback answered 200 is a message in RabbitMQ (none lost), and a callback is only
//! ever repeated under its own `message_id`. One line of figures per scenario.
//!
//! Needs the cluster (`WXHUB_TEST_AMQP_URLS`, set by the Makefile after
//! `scripts/rabbitmq-cluster.sh start`): without it the test fails, it is not skipped.
//! `make chaos` runs every scenario (the ignored ones too) with longer load
//! (`WXHUB_CHAOS_FULL=1`); `make test` runs the one that matters most (the node holding the
//! gateway's connection killed) briefly.

#![allow(clippy::print_stdout)] // the figures of a run are its output

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wxhub_loadgen::{LoadConfig, LoadReport};
use wxhub_testkit::Namespace;

const TENANT: &str = "chaos";
const COMPONENT: &str = "wx0chaos0component";
const AUTHORIZER: &str = "wx0chaos0account";
const TOKEN: &str = "chaos-message-token";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `scripts/rabbitmq-cluster.sh ARGS`, its standard output.
fn cluster(args: &[&str]) -> String {
    let out = Command::new(root().join("scripts/rabbitmq-cluster.sh"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/rabbitmq-cluster.sh");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The binary `name` next to this test's own (cargo builds the workspace's binaries there).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built (make chaos builds it; or cargo build --bins)",
        path.display()
    );
    path
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

struct Gateway {
    child: Child,
    url: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_gateway(ns: &Namespace, dir: &std::path::Path) -> Gateway {
    let tenants = dir.join("tenants.toml");
    std::fs::write(
        &tenants,
        format!(
            "[[tenants]]\nid = \"{TENANT}\"\nkind = \"component\"\napp_id = \"{COMPONENT}\"\napp_secret = \"chaos-secret\"\ntoken = \"{TOKEN}\"\nencoding_aes_key = \"{KEY}\"\n"
        ),
    )
    .expect("tenants file");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let mut cmd = Command::new(binary("wxhub-gateway"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WXHUB_NAMESPACE", ns.name())
        .env("WXHUB_REDIS__URL", wxhub_testkit::redis_url())
        .env("WXHUB_TENANTS__FILE", &tenants)
        .env("WXHUB_GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
        .env("WXHUB_AMQP__HEARTBEAT_SECS", "5")
        // The queues' arguments as the test's own connection declares them (testkit's
        // topology).
        .env("WXHUB_AMQP__DELIVERY_LIMIT", "5")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in wxhub_testkit::amqp_env() {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("wxhub-gateway");
    let gateway = Gateway {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http
            .get(format!("{}/readyz", gateway.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return gateway;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway did not become ready");
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
    let gateway = start_gateway(&ns, dir.path()).await;
    let unrouted = ns.topology().unrouted_queue();
    ns.track_queue(unrouted.clone());

    let victim = match fault {
        Fault::KillConnectionNode | Fault::PauseConnectionNode => connection_node(),
        Fault::KillQueueLeader => cluster(&["leader", &unrouted]),
    };
    assert!(!victim.is_empty(), "no node to inject {fault:?} into");

    let mut cfg = LoadConfig::new(&gateway.url, TENANT, AUTHORIZER, TOKEN, KEY, COMPONENT);
    cfg.to_user_name = "gh_chaos".into();
    cfg.concurrency = 32;
    cfg.duration = Duration::from_secs(secs);
    cfg.rate = Some(rate);
    cfg.timeout = Duration::from_secs(10);
    let load = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("load runtime")
            .block_on(wxhub_loadgen::run(cfg))
            .expect("load run")
    });
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
    let report: LoadReport = tokio::task::spawn_blocking(move || load.join().expect("load"))
        .await
        .expect("join");
    let fault_secs = injected.elapsed().as_secs_f64();
    drop(gateway);

    // What the broker holds: every message of the run, by message_id, read through the nodes
    // the fault spared (a resumed node may still be catching up).
    let cancel = CancellationToken::new();
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
    let bus = ns.bus_with(spared, &cancel).await;
    let messages = tokio::time::timeout(
        Duration::from_secs(120),
        ns.drain_queue(&bus, &unrouted, Duration::from_secs(30)),
    )
    .await
    .expect("the surviving nodes answer within 2 minutes");
    let mut ids: HashMap<String, u32> = HashMap::new();
    for m in &messages {
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .expect("every message has a message_id");
        *ids.entry(id).or_default() += 1;
    }
    let ok = report.status.get("200").copied().unwrap_or(0);
    let unavailable = report.status.get("503").copied().unwrap_or(0);
    let duplicates = messages.len() - ids.len();
    println!(
        "chaos {fault:?} (node {victim}): sent {}, answered 200 {ok}, 503 {unavailable}, other {}, errors {}; \
         in RabbitMQ {} messages, {} distinct callbacks, {duplicates} duplicates (same message_id); \
         p99 {:.1} ms; fault window {fault_secs:.1} s",
        report.sent,
        report.completed - ok - unavailable,
        report.errors,
        messages.len(),
        ids.len(),
        report.latency_ms.p99,
    );
    // The killed node stays down: the next scenario starts every node again.
    ns.cleanup(Some(&bus), &[]).await;
    assert!(ok > 0, "nothing was accepted: {report}");
    assert!(
        ids.len() as u64 >= ok,
        "{} callbacks answered 200 but only {} distinct ones are in RabbitMQ: acknowledged callbacks were lost",
        ok,
        ids.len()
    );
    assert!(
        ids.len() as u64 <= report.sent,
        "more distinct callbacks than were sent"
    );
}

fn full() -> bool {
    std::env::var("WXHUB_CHAOS_FULL").is_ok_and(|v| v == "1")
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
