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

/// Replicas hammering one bucket with leased units are admitted at most
/// `burst + count·t/period + R·(lease + lease/4)` calls in `t` (the bound of `wxhub_store::leased`:
/// a lease refilled ahead arrives while at most a quarter of one is left),
/// and the bucket's rate still gets through.
/// Many requests of one busy bucket on one replica: leases are refilled ahead in the background
/// and the requests that find none left wait for the refill, all woken by its answer. None is lost
/// waiting (a missed wake-up would hang this test), and a bucket that admits everything admits
/// every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_a_refill_are_all_woken_and_admitted() {
    use wxhub_store::{Admission, LeasedLimiter};

    let ns = Ns::new("limit-refill");
    let rate = Rate {
        count: 1_000_000,
        period_ms: 1000,
        burst: 1_000_000,
    };
    let replica = LeasedLimiter::new(
        Store::connect(&common::config(), ns.0.namespace()).unwrap(),
        32,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let replica = replica.clone();
        tasks.spawn(async move {
            let mut admitted = 0;
            for _ in 0..200 {
                if replica.acquire("acme", "busy", rate).await.unwrap() == Admission::Admitted {
                    admitted += 1;
                }
            }
            admitted
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        let mut total = 0;
        while let Some(t) = tasks.join_next().await {
            total += t.unwrap();
        }
        total
    })
    .await
    .expect("a request waiting for a refill was never woken");
    assert_eq!(all, 64 * 200);
}

/// A task that runs again as soon as it can, counting its runs: other work of the runtime,
/// and the measure of how many turns of the run queue something took.
struct Spin(
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
);

impl Future for Spin {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::sync::atomic::Ordering;
        if self.1.load(Ordering::Relaxed) {
            return std::task::Poll::Ready(());
        }
        self.0.fetch_add(1, Ordering::Relaxed);
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// The requests waiting for a lease are admitted in one turn of the runtime's run queue once
/// it is answered, however many they are, on a runtime busy with other tasks. Handing the
/// bucket from request to request (a lock passed on, or each leaving request waking the next)
/// admits one per turn or two: 50 requests behind 32 busy tasks took 96 turns (3,101 runs
/// of the others) where this allows 3. Counted in turns, not timed.
#[tokio::test]
async fn requests_waiting_for_a_lease_are_admitted_in_one_turn_of_a_busy_runtime() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use wxhub_store::{Admission, LeasedLimiter};

    const BUSY: u64 = 32;
    const WAITING: usize = 50;
    let ns = Ns::new("limit-turns");
    let rate = Rate {
        count: 1_000_000,
        period_ms: 1000,
        burst: 1_000_000,
    };
    let replica = LeasedLimiter::new(ns.0.clone(), 64);
    let (turns, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let busy: Vec<_> = (0..BUSY)
        .map(|_| tokio::spawn(Spin(Arc::clone(&turns), Arc::clone(&stop))))
        .collect();
    let requests: Vec<_> = (0..WAITING)
        .map(|_| {
            let (replica, turns) = (replica.clone(), Arc::clone(&turns));
            tokio::spawn(async move {
                let admission = replica.acquire("acme", "busy", rate).await.unwrap();
                (admission, turns.load(Ordering::Relaxed))
            })
        })
        .collect();
    let mut at = Vec::new();
    for r in requests {
        let (admission, turn) = r.await.unwrap();
        assert_eq!(admission, Admission::Admitted);
        at.push(turn);
    }
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.await.unwrap();
    }
    // The first request asks for itself alone (nobody else was seen yet) and the next asks for
    // everyone seen by then: the two askers are admitted by their own answers, the rest by
    // the second one's.
    at.sort_unstable();
    let spread = at[WAITING - 1] - at[2];
    assert!(
        spread <= 3 * BUSY,
        "the {} requests waiting were admitted over {spread} runs of the {BUSY} other tasks \
         (about {} turns of the run queue)",
        WAITING - 2,
        spread / BUSY
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_units_admit_at_most_the_bucket_plus_what_replicas_hold() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use wxhub_store::{Admission, LeasedLimiter};

    let ns = Ns::new("limit-leased");
    let rate = Rate {
        count: 200,
        period_ms: 1000,
        burst: 40,
    };
    const REPLICAS: u64 = 3;
    let replicas: Vec<LeasedLimiter> = (0..REPLICAS)
        .map(|_| {
            let store = Store::connect(&common::config(), ns.0.namespace()).unwrap();
            LeasedLimiter::new(store, 8)
        })
        .collect();
    let lease = replicas[0].lease_size(rate);
    assert_eq!(lease, 8);
    // Small bursts stay exact: a quarter of 2 is less than one unit.
    assert_eq!(replicas[0].lease_size(Rate { burst: 2, ..rate }), 1);
    let admitted = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let until = started + Duration::from_millis(1500);
    let mut tasks = tokio::task::JoinSet::new();
    for replica in &replicas {
        for _ in 0..8 {
            let (replica, admitted) = (replica.clone(), Arc::clone(&admitted));
            tasks.spawn(async move {
                while std::time::Instant::now() < until {
                    match replica.acquire("acme", "hot", rate).await.unwrap() {
                        Admission::Admitted => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Admission::Limited { retry_after } => {
                            assert!(retry_after <= Duration::from_millis(5), "{retry_after:?}");
                            tokio::time::sleep(retry_after.max(Duration::from_millis(1))).await;
                        }
                        Admission::Unchecked => panic!("Redis is up: every call is checked"),
                    }
                }
            });
        }
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let bound = f64::from(rate.burst)
        + f64::from(rate.count) * secs
        + (REPLICAS * u64::from(lease + lease / 4)) as f64;
    assert!(
        admitted <= bound,
        "{admitted} admitted in {secs:.3} s; bound {bound:.1}"
    );
    assert!(
        admitted >= f64::from(rate.count) * secs / 2.0,
        "{admitted} admitted in {secs:.3} s: leases starve the bucket"
    );
}

/// A replica calling a bucket now and then leases one unit at a time, so none is lost: another
/// replica still gets the rest of the burst, and not one more.
#[tokio::test]
async fn an_occasional_caller_leases_nothing_it_does_not_spend() {
    use wxhub_store::{Admission, LeasedLimiter};

    let ns = Ns::new("limit-lease-idle");
    let rate = Rate { burst: 8, ..HOURLY };
    let a = LeasedLimiter::new(ns.0.clone(), 8);
    let b = LeasedLimiter::new(
        Store::connect(&common::config(), ns.0.namespace()).unwrap(),
        8,
    );
    assert_eq!(a.lease_size(rate), 2);
    for _ in 0..4 {
        assert_eq!(
            a.acquire("acme", "slow", rate).await.unwrap(),
            Admission::Admitted
        );
        // Longer than two demand windows: each call is the only one in its window.
        tokio::time::sleep(wxhub_store::leased::WINDOW * 2 + Duration::from_millis(20)).await;
    }
    for i in 0..4 {
        assert_eq!(
            b.acquire("acme", "slow", rate).await.unwrap(),
            Admission::Admitted,
            "call {i} of the other replica"
        );
    }
    assert!(matches!(
        b.acquire("acme", "slow", rate).await.unwrap(),
        Admission::Limited { .. }
    ));
}

/// Without Redis, one call of a bucket asks (and gets the error); the calls of the next
/// `leased::WINDOW` are `Unchecked` without asking, then Redis is asked again.
#[tokio::test]
async fn without_redis_a_bucket_asks_once_per_window() {
    use wxhub_store::{Admission, LeasedLimiter, RedisConfig};

    // Nothing listens on port 1.
    let store = Store::connect(&RedisConfig::new("redis://127.0.0.1:1"), "t-lease-down").unwrap();
    let limiter = LeasedLimiter::new(store, 8);
    let rate = Rate {
        count: 100,
        period_ms: 1000,
        burst: 40,
    };
    assert!(limiter.acquire("acme", "down", rate).await.is_err());
    let started = std::time::Instant::now();
    assert_eq!(
        limiter.acquire("acme", "down", rate).await.unwrap(),
        Admission::Unchecked
    );
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "Redis was asked"
    );
    tokio::time::sleep(wxhub_store::leased::WINDOW + Duration::from_millis(20)).await;
    assert!(limiter.acquire("acme", "down", rate).await.is_err());
}
