//! A rate limit that holds across replicas without a Redis call per request: a replica leases
//! a few units of a [`Limiter`] bucket in one call and spends them locally.
//!
//! Guarantee: over any interval `t`, one bucket admits at most
//! `burst + count·t/period + R·(L + ⌊L/4⌋)` requests across `R` replicas, where `L` is the
//! largest lease ([`LeasedLimiter::lease_size`]): every admitted request spends a unit the bucket
//! gave out, and a replica enters an interval holding at most `L + ⌊L/4⌋` unspent units (a lease
//! arriving while at most `⌊L/4⌋` are left). Over the long run the bucket's rate is exact (units
//! are never created locally). A refused request takes nothing. With leases of 1
//! (`max_lease = 1`) every request asks Redis: exactly [`Limiter::acquire`].
//!
//! How it is kept:
//! - A lease is sized by this replica's own demand for the bucket: the requests it saw in the
//!   last [`WINDOW`] (at least 1, at most the lease size). A bucket asked once in a while is
//!   asked of Redis every time, so the units a replica leases and then never spends stay few
//!   (they are lost, not returned: the bucket refills at its rate).
//! - Unspent units expire [`LIFETIME`] after the lease: a replica cannot save units up and
//!   spend them in a burst later.
//! - **Refilled ahead, off the request path.** When a spend leaves at most `⌊L/4⌋` units, a
//!   background task leases the next ones while the rest are spent: a busy bucket's requests
//!   do not wait for a Redis round trip (its tail is what a p99 sees). Only a request that finds
//!   nothing left waits — for the refill in flight, or for its own ask when none is.
//! - One ask per bucket and replica is in flight at a time (a refill, or a request's own ask,
//!   which the others wait for). When that ask fails, the
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
    /// A refill is in flight: requests that find nothing left wait for it.
    refilling: bool,
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
            refilling: false,
        }
    }

    /// How many units to lease: this replica's demand of the last window, within `1..=most`.
    fn wanted(&self, most: u32) -> u32 {
        self.this.max(self.last).clamp(1, most)
    }

    /// Adds `n` leased units, spendable for [`LIFETIME`].
    fn add(&mut self, n: u32, now: Instant) {
        if now >= self.until {
            self.left = 0;
        }
        self.left = self.left.saturating_add(n);
        self.until = now + LIFETIME;
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

/// One bucket on this replica: its state, and the refill's signal to the requests waiting.
#[derive(Debug)]
struct Bucket {
    local: tokio::sync::Mutex<Local>,
    refilled: tokio::sync::Notify,
}

/// This replica's state of each bucket it used, by tenant, then subject (so that a lookup
/// allocates nothing).
type Buckets = HashMap<String, HashMap<String, Arc<Bucket>>>;

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
        let mut local = bucket.local.lock().await;
        local.seen(Instant::now());
        let mut waited = false;
        let admission = loop {
            let now = Instant::now();
            if local.spend(now) {
                if local.left <= most / 4 && !local.refilling && local.failed.is_none() {
                    local.refilling = true;
                    let wanted = local.wanted(most);
                    self.refill(Arc::clone(&bucket), tenant, subject, rate, wanted);
                }
                break Ok(Admission::Admitted);
            }
            if local
                .failed
                .is_some_and(|at| now.duration_since(at) < WINDOW)
            {
                break Ok(Admission::Unchecked);
            }
            if !local.refilling {
                // Nothing left and no refill: ask now, holding the bucket (the others wait).
                let wanted = local.wanted(most);
                let grant = self.limiter.take_up_to(tenant, subject, rate, wanted).await;
                local.failed = grant.is_err().then(Instant::now);
                break match grant {
                    Err(e) => Err(e),
                    Ok(Grant::Taken(n)) => {
                        // One for this request; the rest (at most `most − 1`) for the next.
                        local.add(n.min(most) - 1, Instant::now());
                        Ok(Admission::Admitted)
                    }
                    Ok(Grant::Limited { retry_after }) => Ok(Admission::Limited { retry_after }),
                };
            }
            // Nothing left, a refill in flight: wait for it (registered before the lock is
            // released, so its signal cannot be missed), then look again.
            let refilled = bucket.refilled.notified();
            tokio::pin!(refilled);
            refilled.as_mut().enable();
            waited = true;
            drop(local);
            refilled.await;
            local = bucket.local.lock().await;
        };
        drop(local);
        if waited {
            // Waiters are woken one at a time, each waking the next as it leaves: a refill does
            // not wake every queued request at once to fight over a few units.
            bucket.refilled.notify_one();
        }
        admission
    }

    /// Leases the next `wanted` units of `bucket` in the background and wakes the requests
    /// waiting for them (which ask themselves if it was refused or failed).
    fn refill(&self, bucket: Arc<Bucket>, tenant: &str, subject: &str, rate: Rate, wanted: u32) {
        let limiter = self.limiter.clone();
        let (tenant, subject) = (tenant.to_owned(), subject.to_owned());
        tokio::spawn(async move {
            let grant = limiter.take_up_to(&tenant, &subject, rate, wanted).await;
            let mut local = bucket.local.lock().await;
            local.refilling = false;
            match grant {
                Ok(Grant::Taken(n)) => local.add(n, Instant::now()),
                Ok(Grant::Limited { .. }) => {}
                Err(_) => local.failed = Some(Instant::now()),
            }
            drop(local);
            bucket.refilled.notify_one();
        });
    }

    fn bucket(&self, tenant: &str, subject: &str) -> Arc<Bucket> {
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
                        || b.local
                            .try_lock()
                            .map_or(true, |l| l.left > 0 && now < l.until)
                });
            }
            buckets.retain(|_, of| !of.is_empty());
            *count = buckets.values().map(HashMap::len).sum();
        }
        let b = Arc::new(Bucket {
            local: tokio::sync::Mutex::new(Local::new(Instant::now())),
            refilled: tokio::sync::Notify::new(),
        });
        buckets
            .entry(tenant.to_owned())
            .or_default()
            .insert(subject.to_owned(), Arc::clone(&b));
        *count += 1;
        b
    }
}
