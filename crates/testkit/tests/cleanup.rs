//! A namespace cleans up after a test that failed (dropped without `cleanup`).

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use wxhub_testkit::Namespace;

/// Whether `queue` exists (a passive declare fails with 404 otherwise).
async fn queue_exists(queue: &str) -> bool {
    let conn = lapin::Connection::connect(
        &wxhub_testkit::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("rabbitmq");
    let ch = conn.create_channel().await.expect("channel");
    let exists = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = conn.close(200, "done".into()).await;
    exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_dropped_by_a_failing_test_is_cleaned_up() {
    let ns = Namespace::new("drop-cleanup");
    let cancel = CancellationToken::new();
    let bus = ns.bus(&cancel).await;
    let queue = ns.topology().token_control_queue();
    let extra = format!("{}.mine", ns.name());
    let ch = bus.channel().await.unwrap();
    ch.queue_declare(
        extra.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ns.track_queue(extra.clone());
    let store = ns.store();
    let key = format!("{}:{{t}}:probe", ns.name());
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("1")
        .query_async(&mut store.conn())
        .await
        .unwrap();
    assert!(queue_exists(&queue).await && queue_exists(&extra).await);

    // What a panicking test does: its namespace is dropped without `cleanup`.
    let clone = ns.clone();
    let failed = tokio::spawn(async move {
        let _ns = clone;
        panic!("the test failed");
    })
    .await;
    assert!(failed.is_err());
    drop(ns);
    bus.close().await;
    cancel.cancel();

    assert!(!queue_exists(&queue).await, "topology queue left behind");
    assert!(!queue_exists(&extra).await, "tracked queue left behind");
    let left: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut store.conn())
        .await
        .unwrap();
    assert_eq!(left, 0, "redis keys left behind");
}
