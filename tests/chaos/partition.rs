//! Scenario 5, the kernel's way: a network partition between the gateway and RabbitMQ made with
//! a network namespace and veth pairs (`ip netns`, `ip link`; the test runs as root).
//!
//! The gateway runs in a namespace of its own with two links to the test's: one carries the
//! callbacks (and its Redis traffic), the other its broker traffic. Redis and the broker listen
//! on the loopback only, so each link ends, on the test's side, in a plain forwarding proxy
//! (`wxhub_testkit::proxy` in `Pass` mode) on that link's address. The partition is the broker
//! link's host end set down for longer than the heartbeat (packets dropped, no RST: only
//! timeouts and heartbeats notice), then up again. Callbacks keep arriving over the other link
//! throughout. Afterwards: every callback answered 200 is in RabbitMQ, none twice under
//! different ids.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use wxhub_testkit::Namespace;
use wxhub_testkit::proxy::FaultProxy;

use crate::harness::{address, broker_address, callbacks, full, ready_again};

/// `ip ARGS`, asserting success.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with two veth links to the test's (`10.231.N.0/30` for callbacks and
/// Redis, `10.231.N.4/30` for the broker); deleted with its links (and anything still running
/// in it killed) when dropped.
struct Netns {
    name: String,
    /// The broker link's end on the test's side: set down to partition.
    bus_link: String,
    subnet: u8,
}

impl Netns {
    fn create() -> Self {
        let id = rand_id();
        let netns = Self {
            name: format!("wxchaos{id}"),
            bus_link: format!("wxcb{id}"),
            subnet: id,
        };
        ip(&["netns", "add", &netns.name]);
        for (host_end, inner_end, last) in [
            (format!("wxcl{id}"), "load0", 0u8),
            (netns.bus_link.clone(), "bus0", 4u8),
        ] {
            ip(&[
                "link",
                "add",
                &host_end,
                "type",
                "veth",
                "peer",
                "name",
                inner_end,
                "netns",
                &netns.name,
            ]);
            ip(&[
                "addr",
                "add",
                &format!("{}/30", netns.host(last)),
                "dev",
                &host_end,
            ]);
            ip(&["link", "set", &host_end, "up"]);
            netns.exec(&[
                "addr",
                "add",
                &format!("{}/30", netns.inner(last)),
                "dev",
                inner_end,
            ]);
            netns.exec(&["link", "set", inner_end, "up"]);
        }
        netns.exec(&["link", "set", "lo", "up"]);
        netns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// The test side's address of the link at `last` (0: load, 4: broker).
    fn host(&self, last: u8) -> String {
        format!("10.231.{}.{}", self.subnet, last + 1)
    }

    /// The namespace side's address of the link at `last`.
    fn inner(&self, last: u8) -> String {
        format!("10.231.{}.{}", self.subnet, last + 2)
    }

    fn partition(&self, cut: bool) {
        ip(&[
            "link",
            "set",
            &self.bus_link,
            if cut { "down" } else { "up" },
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .filter(|&p| p > 1)
            {
                crate::harness::signal(pid, "KILL");
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        // Deleting the namespace deleted the pairs; this is for a namespace that half failed.
        for link in [format!("wxcl{}", self.subnet), self.bus_link.clone()] {
            let _ = Command::new("ip").args(["link", "del", &link]).output();
        }
    }
}

/// A subnet number no other link of this machine uses (from the process id and time).
fn rand_id() -> u8 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u8::try_from((std::process::id() ^ nanos) % 200 + 20).unwrap_or(42)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "part of `make chaos` (needs root for ip netns), not of `make test`"]
async fn the_gateway_partitioned_from_the_broker_loses_no_acknowledged_callback() {
    let (secs, rate) = if full() { (30u64, 200.0) } else { (20, 100.0) };
    wxhub_runtime::telemetry::init_for_tests();
    let netns = Netns::create();
    let ns = Namespace::new("chaos-partition");
    let dir = tempfile::tempdir().expect("tempdir");
    let host_addr =
        |last: u8| -> SocketAddr { format!("{}:0", netns.host(last)).parse().expect("address") };
    let redis = FaultProxy::start_on(host_addr(0), address(&wxhub_testkit::redis_url()))
        .await
        .expect("redis proxy");
    let broker = FaultProxy::start_on(host_addr(4), broker_address())
        .await
        .expect("broker proxy");
    let (gateway, url) = callbacks::gateway_in(
        Some(&netns.name),
        &netns.inner(0),
        &ns,
        dir.path(),
        vec![(
            "WXHUB_REDIS__URL".to_owned(),
            format!("redis://{}", redis.addr()),
        )],
        vec![
            (
                "WXHUB_AMQP__URL".to_owned(),
                format!("amqp://guest:guest@{}/%2f", broker.addr()),
            ),
            ("WXHUB_AMQP__URLS".to_owned(), "[]".to_owned()),
        ],
    )
    .await;
    let load = callbacks::load(&url, secs, rate);
    tokio::time::sleep(Duration::from_secs(secs / 4)).await;
    let cut_for = Duration::from_secs(12);
    netns.partition(true);
    tokio::time::sleep(cut_for).await;
    netns.partition(false);
    let healed = Instant::now();
    let ready_again = ready_again(&url, healed, "the partition healed").await;
    let report = load.report().await;
    drop(gateway);
    let (messages, ids) = callbacks::in_broker(&ns, wxhub_testkit::amqp_config()).await;
    println!(
        "chaos partition gateway | RabbitMQ (netns + veth, link down {} s, heartbeat 5 s): \
         {rate}/s for {secs} s; sent {}, answered {:?}, no answer {}; in RabbitMQ {messages} \
         messages, {} distinct, {} duplicates (same message_id); ready again {:.2} s after the \
         link came back; p99 {:.1} ms",
        cut_for.as_secs(),
        report.sent,
        report.status,
        report.errors,
        ids.len(),
        messages - ids.len(),
        ready_again.as_secs_f64(),
        report.latency_ms.p99,
    );
    callbacks::assert_acknowledged_stored(&report, &ids);
    drop(netns);
}
