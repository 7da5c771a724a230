//! Dedupe against the real Redis on 127.0.0.1:6379, each test in its own namespace.

mod common;

use std::time::Duration;

use wxhub_store::Store;
use wxhub_store::dedupe::{Claim, Dedupe};

fn store(test: &str) -> Store {
    Store::connect(
        &common::config(),
        &format!("t-{test}-{:08x}", rand::random::<u32>()),
    )
    .unwrap()
}

#[tokio::test]
async fn first_claim_wins_and_done_drops_retries() {
    let store = store("dedupe-done");
    let d = Dedupe::new(
        store.clone(),
        Duration::from_secs(5),
        Duration::from_secs(60),
    );
    assert_eq!(
        d.claim("acme", "wx1", "msg:1", "req-a").await.unwrap(),
        Claim::Fresh
    );
    // A concurrent retry sees the publish in flight, not a duplicate to drop.
    assert_eq!(
        d.claim("acme", "wx1", "msg:1", "req-b").await.unwrap(),
        Claim::InFlight
    );
    d.complete("acme", "wx1", "msg:1", "req-a").await.unwrap();
    assert_eq!(
        d.claim("acme", "wx1", "msg:1", "req-c").await.unwrap(),
        Claim::Done
    );
    // Scoped by tenant and appid.
    assert_eq!(
        d.claim("acme", "wx2", "msg:1", "req-d").await.unwrap(),
        Claim::Fresh
    );
    assert_eq!(
        d.claim("other", "wx1", "msg:1", "req-e").await.unwrap(),
        Claim::Fresh
    );
}

#[tokio::test]
async fn released_claim_lets_the_retry_publish() {
    let store = store("dedupe-release");
    let d = Dedupe::new(store, Duration::from_secs(5), Duration::from_secs(60));
    assert_eq!(
        d.claim("acme", "wx1", "msg:2", "req-a").await.unwrap(),
        Claim::Fresh
    );
    // Someone else's release does nothing.
    d.release("acme", "wx1", "msg:2", "req-x").await.unwrap();
    assert_eq!(
        d.claim("acme", "wx1", "msg:2", "req-b").await.unwrap(),
        Claim::InFlight
    );
    d.release("acme", "wx1", "msg:2", "req-a").await.unwrap();
    assert_eq!(
        d.claim("acme", "wx1", "msg:2", "req-b").await.unwrap(),
        Claim::Fresh
    );
}

#[tokio::test]
async fn a_dead_owner_blocks_only_until_its_pending_marker_expires() {
    let store = store("dedupe-expire");
    let d = Dedupe::new(store, Duration::from_millis(150), Duration::from_secs(60));
    assert_eq!(
        d.claim("acme", "wx1", "msg:3", "crashed").await.unwrap(),
        Claim::Fresh
    );
    assert_eq!(
        d.claim("acme", "wx1", "msg:3", "retry").await.unwrap(),
        Claim::InFlight
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        d.claim("acme", "wx1", "msg:3", "retry").await.unwrap(),
        Claim::Fresh
    );
    // The crashed owner's late completion must not clobber the retry's pending marker.
    d.complete("acme", "wx1", "msg:3", "crashed").await.unwrap();
    assert_eq!(
        d.claim("acme", "wx1", "msg:3", "third").await.unwrap(),
        Claim::InFlight
    );
}

#[tokio::test]
async fn ping_works() {
    assert_eq!(store("ping").ping().await.unwrap(), "PONG");
}
