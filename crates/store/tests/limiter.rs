//! The limiter and the shared pre-auth code against the real Redis on 127.0.0.1:6379, each test
//! in its own namespace (deleted on drop, also when the test fails).

mod common;

use std::time::Duration;

use wxhub_domain::Secret;
use wxhub_store::{Decision, Limiter, PreAuthCodes, Rate, SharedPreAuth, Store};

/// A namespace whose keys are deleted when it is dropped.
struct Ns(Store);

impl Ns {
    fn new(test: &str) -> Self {
        let ns = format!("t-{test}-{:08x}", rand::random::<u32>());
        Self(Store::connect(&common::config(), &ns).unwrap())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        // It also runs while a failed test unwinds, maybe inside the test's runtime: clean up
        // on a thread of its own with a runtime of its own (bounded).
        let namespace = self.0.namespace().to_owned();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(store) = Store::connect(&common::config(), &namespace) else {
                    return;
                };
                let delete = async {
                    let keys = store
                        .scan_keys(&format!("{namespace}:*"))
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<i64, _> = redis::cmd("DEL")
                            .arg(&keys)
                            .query_async(&mut store.conn())
                            .await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), delete).await;
            });
        });
        let _ = cleanup.join();
    }
}

const HOURLY: Rate = Rate {
    count: 1,
    period_ms: 3_600_000,
    burst: 5,
};

#[tokio::test]
async fn a_bucket_admits_its_burst_across_replicas_then_says_when() {
    let ns = Ns::new("limit-burst");
    // Two handles, as two replicas would have.
    let a = Limiter::new(ns.0.clone());
    let b = Limiter::new(Store::connect(&common::config(), ns.0.namespace()).unwrap());
    let mut remaining = Vec::new();
    for i in 0..5 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        match limiter
            .acquire("acme", &[("addr:1", HOURLY)], 1)
            .await
            .unwrap()
        {
            Decision::Allowed { remaining: r } => remaining.push(r),
            other => panic!("request {i}: {other:?}"),
        }
    }
    assert_eq!(remaining, [4, 3, 2, 1, 0]);
    let Decision::Limited {
        bucket,
        retry_after,
    } = b.acquire("acme", &[("addr:1", HOURLY)], 1).await.unwrap()
    else {
        panic!("the sixth request was admitted");
    };
    assert_eq!(bucket, 0);
    assert!(
        retry_after > Duration::from_secs(3500) && retry_after <= Duration::from_secs(3600),
        "{retry_after:?}"
    );
    // Another subject and another tenant have their own buckets.
    for (tenant, subject) in [("acme", "addr:2"), ("beta", "addr:1")] {
        assert!(matches!(
            a.acquire(tenant, &[(subject, HOURLY)], 1).await.unwrap(),
            Decision::Allowed { remaining: 4 }
        ));
    }
    // The key lives until the bucket is full again (5 h here), not forever.
    let mut conn = ns.0.conn();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(ns.0.keys("acme").limit("addr:1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 4 * 3_600_000 && ttl <= 5 * 3_600_000, "{ttl}");
}

#[tokio::test]
async fn a_refusal_takes_from_no_bucket() {
    let ns = Ns::new("limit-all-or-none");
    let limiter = Limiter::new(ns.0.clone());
    let small = Rate { burst: 3, ..HOURLY };
    let large = Rate {
        burst: 10,
        ..HOURLY
    };
    let both = [("addr:9", small), ("tenant", large)];
    for _ in 0..3 {
        assert!(matches!(
            limiter.acquire("acme", &both, 1).await.unwrap(),
            Decision::Allowed { .. }
        ));
    }
    for _ in 0..4 {
        assert!(matches!(
            limiter.acquire("acme", &both, 1).await.unwrap(),
            Decision::Limited { bucket: 0, .. }
        ));
    }
    // The refusals took nothing from the tenant's bucket: 10 - 3 are left.
    let mut admitted = 0;
    while let Decision::Allowed { .. } = limiter
        .acquire("acme", &[("tenant", large)], 1)
        .await
        .unwrap()
    {
        admitted += 1;
        assert!(admitted <= 10, "the tenant bucket never refuses");
    }
    assert_eq!(admitted, 7);
    // A cost larger than the burst never fits.
    assert!(matches!(
        limiter
            .acquire("acme", &[("big", HOURLY)], 6)
            .await
            .unwrap(),
        Decision::Limited { .. }
    ));
}

#[tokio::test]
async fn a_bucket_refills_at_its_rate() {
    let ns = Ns::new("limit-refill");
    let limiter = Limiter::new(ns.0.clone());
    let fast = Rate {
        count: 10,
        period_ms: 1000,
        burst: 1,
    };
    assert!(matches!(
        limiter.acquire("acme", &[("x", fast)], 1).await.unwrap(),
        Decision::Allowed { remaining: 0 }
    ));
    let Decision::Limited { retry_after, .. } =
        limiter.acquire("acme", &[("x", fast)], 1).await.unwrap()
    else {
        panic!("a burst of 1 admitted two");
    };
    assert!(retry_after <= Duration::from_millis(100), "{retry_after:?}");
    // Once the advertised wait is over, the bucket admits again.
    tokio::time::sleep(retry_after + Duration::from_millis(2)).await;
    assert!(matches!(
        limiter.acquire("acme", &[("x", fast)], 1).await.unwrap(),
        Decision::Allowed { .. }
    ));
}

#[tokio::test]
async fn a_shared_pre_auth_code_is_retired_only_by_its_marker() {
    let ns = Ns::new("pre-auth");
    let codes = PreAuthCodes::new(ns.0.clone());
    assert_eq!(codes.shared("acme").await.unwrap(), None);
    let first = SharedPreAuth {
        code: Secret::new("preauthcode@@@one"),
        marker: "aaaa".into(),
        expires_at_ms: 1_000_000,
    };
    codes
        .share("acme", &first, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(codes.shared("acme").await.unwrap(), Some(first.clone()));
    assert_eq!(codes.shared("beta").await.unwrap(), None);
    let mut conn = ns.0.conn();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(ns.0.keys("acme").pre_auth())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");

    // A newer code replaces it; a late retire of the old one leaves the new one alone.
    let second = SharedPreAuth {
        code: Secret::new("preauthcode@@@two"),
        marker: "bbbb".into(),
        expires_at_ms: 2_000_000,
    };
    codes
        .share("acme", &second, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!codes.retire("acme", "aaaa").await.unwrap());
    assert_eq!(codes.shared("acme").await.unwrap(), Some(second));
    assert!(codes.retire("acme", "bbbb").await.unwrap());
    assert_eq!(codes.shared("acme").await.unwrap(), None);
    assert!(!codes.retire("acme", "bbbb").await.unwrap());
}
