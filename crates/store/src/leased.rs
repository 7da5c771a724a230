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
//!   which the others wait for). Every ask runs as a task of its own, so a request dropped
//!   while asking leaves nobody waiting.
//! - **An answer wakes the requests waiting for it at once**: as many as it brought units
//!   (at least one, to ask next; all of them for a refusal or a failure). Each spends a unit
//!   or waits for the next ask. The bucket's state is behind a plain mutex that nothing holds across an
//!   await: a lock handed from request to request, or waiters woken one by one as each leaves,
//!   passes every waiting request through the runtime's run queue in turn, so under load one
//!   slow round trip became a wait of tens of milliseconds for the requests behind it
//!   (docs/relay.md#performance).
//! - A refused ask is remembered until one unit fits: the bucket's requests meanwhile are
//!   refused at once, with the time left. When an ask fails, the
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
    /// Until when the last ask was refused (no unit fits before).
    limited_until: Option<Instant>,
    /// An ask is in flight: requests that find nothing left wait for it.
    asking: bool,
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
            limited_until: None,
            asking: false,
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

/// One bucket on this replica: its state, and the ask's signal to the requests waiting.
#[derive(Debug)]
struct Bucket {
    /// Never held across an await: a request checks and spends under it, and waits outside.
    local: Mutex<Local>,
    answered: tokio::sync::Notify,
}

impl Bucket {
    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }
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
        let mut seen = false;
        loop {
            // Decided under the lock, carried out after it is released.
            let mut answered = std::pin::pin!(bucket.answered.notified());
            let ask = {
                let mut local = bucket.lock();
                let now = Instant::now();
                if !seen {
                    local.seen(now);
                    seen = true;
                }
                if local.spend(now) {
                    if local.left <= most / 4 && !local.asking && local.failed.is_none() {
                        local.asking = true;
                        // The next lease, while the rest is spent; nobody waits for it.
                        drop(self.ask(&bucket, tenant, subject, rate, local.wanted(most), 0));
                    }
                    return Ok(Admission::Admitted);
                }
                if let Some(left) = local
                    .limited_until
                    .and_then(|t| t.checked_duration_since(now))
                {
                    return Ok(Admission::Limited { retry_after: left });
                }
                if local
                    .failed
                    .is_some_and(|at| now.duration_since(at) < WINDOW)
                {
                    return Ok(Admission::Unchecked);
                }
                if local.asking {
                    // Nothing left, an ask in flight: wait for it. Registered under the lock
                    // the ask's answer is recorded under, so its wake cannot be missed.
                    answered.as_mut().enable();
                    None
                } else {
                    // Nothing left and no ask: this request asks, for itself (one unit held
                    // back for it) and for those that arrive meanwhile.
                    local.asking = true;
                    Some(self.ask(&bucket, tenant, subject, rate, local.wanted(most), 1))
                }
            };
            let Some(ask) = ask else {
                answered.await;
                continue;
            };
            return Ok(match ask.await {
                Ok(Ok(Grant::Taken(_))) => Admission::Admitted,
                Ok(Ok(Grant::Limited { retry_after })) => Admission::Limited { retry_after },
                Ok(Err(e)) => return Err(e),
                // The ask's task did not finish (the runtime is stopping).
                Err(_) => Admission::Unchecked,
            });
        }
    }

    /// Leases `wanted` units of `bucket` in a task of its own (the request that asked may be
    /// dropped; the requests waiting are not left waiting), keeps `held` of them back for the
    /// asker and makes the rest spendable, then wakes as many waiting requests as it made units
    /// spendable (at least one): each spends a unit or, when none is left, waits for the next
    /// ask or makes it. A refusal is remembered until a unit fits (the requests meanwhile are
    /// refused without asking), a failure for [`WINDOW`]; either wakes every request waiting.
    fn ask(
        &self,
        bucket: &Arc<Bucket>,
        tenant: &str,
        subject: &str,
        rate: Rate,
        wanted: u32,
        held: u32,
    ) -> tokio::task::JoinHandle<Result<Grant, StoreError>> {
        let (limiter, bucket) = (self.limiter.clone(), Arc::clone(bucket));
        let (tenant, subject) = (tenant.to_owned(), subject.to_owned());
        tokio::spawn(async move {
            let grant = limiter.take_up_to(&tenant, &subject, rate, wanted).await;
            let added = {
                let mut local = bucket.lock();
                let now = Instant::now();
                local.asking = false;
                local.failed = grant.is_err().then_some(now);
                local.limited_until = None;
                match &grant {
                    Ok(Grant::Taken(n)) => {
                        let added = n.saturating_sub(held);
                        local.add(added, now);
                        Some(added)
                    }
                    Ok(Grant::Limited { retry_after }) => {
                        local.limited_until = Some(now + *retry_after);
                        None
                    }
                    Err(_) => None,
                }
            };
            // At once, not one by one (a chain of wakes passes each waiting request through
            // the runtime's queue in turn, and under load that queue is long); but only as many
            // as there are units, and at least one to ask next: waking every request for a
            // few units makes each refill cost as much as the queue is long. A refusal or a
            // failure answers them all.
            match added {
                Some(units) => {
                    for _ in 0..units.max(1) {
                        bucket.answered.notify_one();
                    }
                }
                None => bucket.answered.notify_waiters(),
            }
            grant
        })
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
            local: Mutex::new(Local::new(Instant::now())),
            answered: tokio::sync::Notify::new(),
        });
        buckets
            .entry(tenant.to_owned())
            .or_default()
            .insert(subject.to_owned(), Arc::clone(&b));
        *count += 1;
        b
    }
}
