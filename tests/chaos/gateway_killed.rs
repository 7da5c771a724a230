//! Scenario 4b: the gateway SIGKILLed mid-publish under callback load, and started again on
//! the same port. A callback it answered 200 had its publish confirmed by the broker before
//! the answer, so every one of them must be in RabbitMQ; callbacks in flight at the kill get
//! no answer (WeChat retries them) and may or may not have been stored — if stored, a retry is
//! the same `message_id`.

use std::time::{Duration, Instant};

use wxhub_testkit::Namespace;

use crate::harness::{callbacks, full};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_killed_mid_publish_loses_no_acknowledged_callback() {
    let (secs, rate) = if full() { (30u64, 400.0) } else { (9, 200.0) };
    wxhub_runtime::telemetry::init_for_tests();
    let ns = Namespace::new("chaos-gateway-kill");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut gateway, url) = callbacks::gateway(&ns, dir.path()).await;

    let load = callbacks::load(&url, secs, rate);
    tokio::time::sleep(Duration::from_secs(secs / 3)).await;
    let killed = Instant::now();
    gateway.kill();
    // Down for a second (connections refused), then the same binary on the same port.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ready = gateway.restart().await;
    let recovered = killed.elapsed();
    let report = load.report().await;
    drop(gateway);

    let (messages, ids) = callbacks::in_broker(&ns, wxhub_testkit::amqp_config()).await;
    println!(
        "chaos gateway SIGKILLed mid-publish: {rate}/s for {secs} s; sent {}, answered {:?}, \
         no answer (killed or refused) {}; in RabbitMQ {messages} messages, \
         {} distinct callbacks, {} duplicates (same message_id); accepting again {:.2} s after \
         the kill (ready {:.2} s after its restart); p99 {:.1} ms",
        report.sent,
        report.status,
        report.errors,
        ids.len(),
        messages - ids.len(),
        recovered.as_secs_f64(),
        ready.as_secs_f64(),
        report.latency_ms.p99,
    );
    callbacks::assert_acknowledged_stored(&report, &ids);
    assert!(
        report.errors > 0,
        "the kill cost no request: it did not land under load"
    );
}
