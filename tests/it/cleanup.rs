//! A failed test cleans up after itself: dropping its stack stops the services before the
//! namespace deletes the queues and keys, so none of them writes a key or declares a queue
//! again after the cleanup.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use wxhub_bus::Topology;
use wxhub_store::Store;
use wxhub_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_test_leaves_no_keys_and_no_queues() {
    let (name, named) = tokio::sync::oneshot::channel();
    let failed = tokio::spawn(async move {
        let stack = Stack::start("cleanup-on-panic").await.unwrap();
        // The name only: a clone of the namespace would keep it from cleaning up on drop.
        let _ = name.send(stack.ns.name().to_owned());
        // The services write: a ticket pushed through the gateway and stored by token-control.
        let push = stack.sim.push_ticket(COMPONENT).await.unwrap();
        assert!(push.delivered, "{push:?}");
        let store = stack.ns.store();
        let pattern = format!("{}:*", stack.ns.name());
        while store.scan_keys(&pattern).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the test fails here, with its stack running");
    })
    .await;
    assert!(failed.expect_err("the test failed").is_panic());
    let name = named.await.expect("the stack started");
    let topology = Topology::new(name.clone(), 5);

    // Give a service still running (the fault this test guards against) time to write again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let store = Store::connect(&wxhub_testkit::redis_config(), &name).unwrap();
    let keys = store.scan_keys(&format!("{name}:*")).await.unwrap();
    let conn = lapin::Connection::connect(
        &wxhub_testkit::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let mut queues = Vec::new();
    for queue in [
        topology.token_control_queue(),
        topology.release_check_queue(),
        topology.unrouted_queue(),
        topology.dead_queue(),
    ] {
        // A passive declare fails (and closes its channel) when the queue does not exist.
        let channel = conn.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        if channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok()
        {
            queues.push(queue);
        }
    }
    // Whatever the assertions below find goes first, so that this test leaves nothing either.
    if let Ok(channel) = conn.create_channel().await {
        let _ = topology.delete(&channel, &[]).await;
    }
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("UNLINK")
            .arg(&keys)
            .query_async(&mut store.conn())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
    assert!(keys.is_empty(), "keys left behind: {keys:?}");
    assert!(queues.is_empty(), "queues left behind: {queues:?}");
}
