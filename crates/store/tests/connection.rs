//! The connection's own work, in whichever mode the test Redis is (one node, or the cluster of
//! `WXHUB_TEST_REDIS_CLUSTER`): readiness, a scan over every primary, a pipeline across
//! tenants (split by slot on a cluster, answers in order), multi-key commands across slots.

mod common;

use wxhub_store::Store;

fn store(test: &str) -> Store {
    Store::connect(
        &common::config(),
        &format!("t-{test}-{:08x}", rand::random::<u32>()),
    )
    .unwrap()
}

#[tokio::test]
async fn scans_pipelines_and_multi_key_commands_span_every_tenant() {
    let store = store("conn");
    assert_eq!(store.ping().await.unwrap(), "PONG");
    let mut conn = store.conn();
    // Forty tenants: on a cluster, spread over every primary.
    let tenants: Vec<String> = (0..40).map(|i| format!("tenant-{i}")).collect();
    let keys: Vec<String> = tenants.iter().map(|t| store.keys(t).fence()).collect();

    // One pipeline over every tenant's slot, answers in the order of the commands.
    let mut pipe = redis::pipe();
    for (i, key) in keys.iter().enumerate() {
        pipe.cmd("SET").arg(key).arg(i).ignore();
    }
    for key in &keys {
        pipe.cmd("GET").arg(key);
    }
    let values: Vec<u64> = pipe.query_async(&mut conn).await.unwrap();
    assert_eq!(values, (0..40).collect::<Vec<u64>>());

    // The scan finds them all, wherever they live.
    let found = store
        .scan_keys(&format!("{}:*", store.namespace()))
        .await
        .unwrap();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(found, expected);

    // Multi-key commands across slots (the cluster client splits them).
    let n: i64 = redis::cmd("EXISTS")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 40);
    let n: i64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 40);
    assert!(
        store
            .scan_keys(&format!("{}:*", store.namespace()))
            .await
            .unwrap()
            .is_empty()
    );
}
