//! Plaintext (timestamp, nonce) bindings against the real Redis on 127.0.0.1:6379, each test in
//! its own namespace. Every key written here expires within seconds, so nothing outlives a
//! failed test.

mod common;

use std::time::Duration;

use wxhub_store::Store;
use wxhub_store::nonces::{Binding, Nonces};

fn store(test: &str) -> Store {
    Store::connect(
        &common::config(),
        &format!("t-{test}-{:08x}", rand::random::<u32>()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_pair_vouches_for_the_first_body_only() {
    let store = store("nonce-bind");
    let n = Nonces::new(store.clone());
    let ttl = Duration::from_millis(4500);
    assert_eq!(
        n.bind("oa", "1700000000", "42", "digest-a", ttl)
            .await
            .unwrap(),
        Binding::First
    );
    // A retry of the same body is fine; another body under the same pair is not.
    assert_eq!(
        n.bind("oa", "1700000000", "42", "digest-a", ttl)
            .await
            .unwrap(),
        Binding::Same
    );
    assert_eq!(
        n.bind("oa", "1700000000", "42", "digest-b", ttl)
            .await
            .unwrap(),
        Binding::Different
    );
    // Scoped by tenant, timestamp and nonce.
    for (tenant, ts, nonce) in [
        ("other", "1700000000", "42"),
        ("oa", "1700000001", "42"),
        ("oa", "1700000000", "43"),
    ] {
        assert_eq!(
            n.bind(tenant, ts, nonce, "digest-b", ttl).await.unwrap(),
            Binding::First,
            "{tenant} {ts} {nonce}"
        );
    }
    // Under the tenant's hash tag, with the lifetime asked for (rounded up to seconds).
    let key = store.keys("oa").nonce("1700000000", "42");
    assert!(key.contains(":{oa}:nonce:"), "{key}");
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut store.conn())
        .await
        .unwrap();
    assert!((4000..=5000).contains(&ttl_ms), "{ttl_ms}");
}
