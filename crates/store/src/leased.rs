//! A rate limit that holds across replicas without a Redis call per request: a replica leases
//! a few units of a [`Limiter`] bucket in one call and spends them locally.
//!
//! Guarantee: over any interval `t`, one bucket admits at most
//! `burst + count·t/period + R·(L − 1)` requests across `R` replicas, where `L` is the largest
//! lease ([`LeasedLimiter::lease_size`]): every admitted request spends a unit the bucket gave
//! out, and a replica enters an interval holding at most `L − 1` unspent units. Over the long
//! run the bucket's rate is exact (units are never created locally). A refused request takes
//! nothing. With leases of 1 (`max_lease = 1`) every request asks Redis: exactly
//! [`Limiter::acquire`].
//!
//! How it is kept:
//! - A lease is sized by this replica's own demand for the bucket: the requests it saw in the
//!   last [`WINDOW`] (at least 1, at most the lease size). A bucket asked once in a while is
//!   asked of Redis every time, so the units a replica leases and then never spends stay few
//!   (they are lost, not returned: the bucket refills at its rate).
//! - Unspent units expire [`LIFETIME`] after the lease: a replica cannot save units up and
//!   spend them in a burst later.
//! - One request per bucket and replica asks Redis at a time; the others wait for its lease
//!   (so a replica never holds more than `L − 1` units of a bucket). When that ask fails, the
//!   bucket's next requests for [`WINDOW`] are [`Admission::Unchecked`] without asking (what
//!   the caller does without Redis is its decision), so a hanging Redis delays them once, not
//!   once per queued request.
//! - The lease size is at most a quarter of the bucket's burst (at least 1), so small limits
//!   stay exact and one replica cannot sit on most of a burst.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::limiter::{Decision, Grant, Limiter, Rate};
use crate::{Store, StoreError};

/// The demand a lease is sized by: requests of this replica for the bucket in this long.
pub const WINDOW: Duration = Duration::from_millis(100);

/// How long leased units stay spendable.
pub const LIFETIME: Duration = Duration::from_millis(200);

/// Local state of one bucket is dropped once this many buckets are known and it is idle.
const MAX_BUCKETS: usize = 10_000;

/// The answer of [`LeasedLimiter::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Refused; nothing was taken. One unit fits again in `retry_after`.
    Limited {
        retry_after: Duration,
    },
    /// Not checked: asking Redis for this bucket failed less than [`WINDOW`] ago (the caller
    /// treats it as it treats that error). Calls queued behind a failing or hanging Redis call
    /// are not each sent to Redis in turn.
    Unchecked,
}

#[derive(Debug)]
struct Local {
    /// Unspent leased units, spendable until `until`.
    left: u32,
    until: Instant,
    /// Requests seen in the window that began at `window`, and in the one before.
    window: Instant,
    this: u32,
    last: u32,
    /// When asking Redis for this bucket last failed, until it succeeds again.
    failed: Option<Instant>,
}

impl Local {
    fn new(now: Instant) -> Self {
        Self {
            left: 0,
            until: now,
            window: now,
            this: 0,
            last: 0,
            failed: None,
        }
    }

    /// Counts a request at `now` in the demand windows.
    fn seen(&mut self, now: Instant) {
        let age = now.duration_since(self.window);
        if age >= WINDOW {
            self.last = if age < 2 * WINDOW { self.this } else { 0 };
            self.this = 0;
            self.window = now;
        }
        self.this = self.this.saturating_add(1);
    }

    /// Spends a leased unit, if one is left and still valid.
    fn spend(&mut self, now: Instant) -> bool {
        if self.left > 0 && now < self.until {
            self.left -= 1;
            true
        } else {
            false
        }
    }
}

/// This replica's state of each bucket it used, by tenant, then subject (so that a lookup
/// allocates nothing).
type Buckets = HashMap<String, HashMap<String, Arc<tokio::sync::Mutex<Local>>>>;

/// Per-replica leases of shared rate-limit buckets. Share one per process (cheap to clone).
#[derive(Debug, Clone)]
pub struct LeasedLimiter {
    limiter: Limiter,
    max_lease: u32,
    /// The buckets, and how many there are.
    buckets: Arc<Mutex<(Buckets, usize)>>,
}

impl LeasedLimiter {
    /// Leases of at most `max_lease` units (1: every request asks Redis).
    pub fn new(store: Store, max_lease: u32) -> Self {
        Self {
            limiter: Limiter::new(store),
            max_lease: max_lease.max(1),
            buckets: Arc::default(),
        }
    }

    /// The largest lease this replica takes of a bucket of `rate`: `max_lease`, at most a
    /// quarter of the burst, at least 1 (the `L` of the module's bound).
    pub fn lease_size(&self, rate: Rate) -> u32 {
        self.max_lease.min(rate.burst / 4).max(1)
    }

    /// Admits one request of `tenant` against the bucket `subject` of `rate`, or refuses it.
    pub async fn acquire(
        &self,
        tenant: &str,
        subject: &str,
        rate: Rate,
    ) -> Result<Admission, StoreError> {
        let most = self.lease_size(rate);
        if most == 1 {
            return Ok(
                match self.limiter.acquire(tenant, &[(subject, rate)], 1).await? {
                    Decision::Allowed { .. } => Admission::Admitted,
                    Decision::Limited { retry_after, .. } => Admission::Limited { retry_after },
                },
            );
        }
        let bucket = self.bucket(tenant, subject);
        let mut local = bucket.lock().await;
        let now = Instant::now();
        local.seen(now);
        if local.spend(now) {
            return Ok(Admission::Admitted);
        }
        if local
            .failed
            .is_some_and(|at| now.duration_since(at) < WINDOW)
        {
            return Ok(Admission::Unchecked);
        }
        let wanted = local.this.max(local.last).clamp(1, most);
        let grant = self.limiter.take_up_to(tenant, subject, rate, wanted).await;
        local.failed = grant.is_err().then(Instant::now);
        match grant? {
            Grant::Taken(n) => {
                // One for this request; the rest (at most `most − 1`) for the next ones.
                local.left = n.min(most) - 1;
                local.until = Instant::now() + LIFETIME;
                Ok(Admission::Admitted)
            }
            Grant::Limited { retry_after } => Ok(Admission::Limited { retry_after }),
        }
    }

    fn bucket(&self, tenant: &str, subject: &str) -> Arc<tokio::sync::Mutex<Local>> {
        let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (buckets, count) = &mut *guard;
        if let Some(b) = buckets.get(tenant).and_then(|of| of.get(subject)) {
            return Arc::clone(b);
        }
        if *count >= MAX_BUCKETS {
            // Forget idle buckets: no request waiting and nothing spendable left.
            let now = Instant::now();
            for of in buckets.values_mut() {
                of.retain(|_, b| {
                    Arc::strong_count(b) > 1
                        || b.try_lock().map_or(true, |l| l.left > 0 && now < l.until)
                });
            }
            buckets.retain(|_, of| !of.is_empty());
            *count = buckets.values().map(HashMap::len).sum();
        }
        let b = Arc::new(tokio::sync::Mutex::new(Local::new(Instant::now())));
        buckets
            .entry(tenant.to_owned())
            .or_default()
            .insert(subject.to_owned(), Arc::clone(&b));
        *count += 1;
        b
    }
}
