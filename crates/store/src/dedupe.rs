//! Callback dedupe that never causes a loss.
//!
//! WeChat retries a callback it got no answer for (3 tries, 5 s each). A retry may be dropped
//! only if an earlier delivery of the same key was *confirmed* by the broker. The marker at
//! `Keys::dedupe` therefore has two states:
//!
//! - `p:<owner>` (pending, short TTL): a gateway request is publishing it right now;
//! - `d` (done, long TTL): the broker confirmed it.
//!
//! A request [`Dedupe::claim`]s the key: `Fresh` → publish, then [`Dedupe::complete`];
//! `Done` → answer without publishing; `InFlight` → another request is publishing, wait and
//! claim again (the pending marker expires if its owner died). A failed publish
//! [`Dedupe::release`]s the claim so the next retry can try. If the process dies between the
//! broker's confirm and `complete`, the pending marker expires and a retry publishes again:
//! that duplicate carries the same `message_id`, which consumers dedupe (the documented crash
//! window).
//!
//! Marking done is off the answer's path, so a [`Completer`] does it in the background and
//! pipelines whatever has queued up into one round trip: under load one Redis write marks many
//! keys, instead of one write (and one wake-up of Redis) per callback.

use std::sync::LazyLock;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::{Store, StoreError};

/// The state of a dedupe key for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This request owns the key: publish, then complete or release.
    Fresh,
    /// An earlier delivery was confirmed: do not publish again.
    Done,
    /// Another request is publishing it now.
    InFlight,
}

/// Dedupe markers with their lifetimes.
#[derive(Debug, Clone)]
pub struct Dedupe {
    store: Store,
    pending_ttl: Duration,
    done_ttl: Duration,
}

const DONE: &str = "d";

/// Marks done only if the marker is still ours (or gone: our publish was confirmed, so it is
/// done regardless); never overwrites another request's pending marker.
const COMPLETE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
  return 1
end
return 0
";

/// Compare-and-delete of our pending marker.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

// Built once: `Script::new` hashes the source (for EVALSHA) on every call otherwise.
static COMPLETE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(COMPLETE));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));

impl Dedupe {
    /// `pending_ttl` bounds how long a crashed request blocks retries (keep it near the
    /// gateway's deadline); `done_ttl` must outlast WeChat's retries (they come within ~15 s).
    pub fn new(store: Store, pending_ttl: Duration, done_ttl: Duration) -> Self {
        Self {
            store,
            pending_ttl,
            done_ttl,
        }
    }

    /// Tries to take the key for `owner` (a unique id of this request).
    pub async fn claim(
        &self,
        tenant: &str,
        appid: &str,
        dedupe_key: &str,
        owner: &str,
    ) -> Result<Claim, StoreError> {
        let key = self.store.keys(tenant).dedupe(appid, dedupe_key);
        let mut conn = self.store.conn();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(pending(owner))
            .arg("NX")
            .arg("PX")
            .arg(millis(self.pending_ttl))
            .query_async(&mut conn)
            .await?;
        if set.is_some() {
            return Ok(Claim::Fresh);
        }
        let current: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
        Ok(match current.as_deref() {
            Some(DONE) => Claim::Done,
            Some(_) => Claim::InFlight,
            // Expired between SET and GET: the caller simply claims again.
            None => Claim::InFlight,
        })
    }

    /// Records that the broker confirmed `owner`'s publish.
    pub async fn complete(
        &self,
        tenant: &str,
        appid: &str,
        dedupe_key: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        let ttl = Some(millis(self.done_ttl));
        self.settle(&COMPLETE_SCRIPT, tenant, appid, dedupe_key, owner, ttl)
            .await
    }

    /// Gives the key back after a failed publish, so WeChat's retry can publish it.
    pub async fn release(
        &self,
        tenant: &str,
        appid: &str,
        dedupe_key: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        self.settle(&RELEASE_SCRIPT, tenant, appid, dedupe_key, owner, None)
            .await
    }

    /// Runs a marker script on `owner`'s key: KEYS[1] = the key, ARGV[1] = its pending value,
    /// ARGV[2] = `ttl_ms` when given.
    async fn settle(
        &self,
        script: &redis::Script,
        tenant: &str,
        appid: &str,
        dedupe_key: &str,
        owner: &str,
        ttl_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        let key = self.store.keys(tenant).dedupe(appid, dedupe_key);
        let mut invocation = script.key(key);
        invocation.arg(pending(owner));
        if let Some(ttl) = ttl_ms {
            invocation.arg(ttl);
        }
        let mut conn = self.store.conn();
        let _: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(())
    }
}

/// Most keys marked done by one pipelined round trip.
const COMPLETE_BATCH: usize = 256;

enum Job {
    Complete { key: String, owner: String },
    Flush(oneshot::Sender<()>),
}

/// Marks dedupe keys done in the background, batching them into pipelines. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Completer {
    tx: mpsc::UnboundedSender<Job>,
    store: Store,
}

impl Dedupe {
    /// Starts the background completer on the current runtime. It lives as long as a clone of
    /// the returned [`Completer`] does; call [`Completer::flush`] before shutting down.
    pub fn spawn_completer(&self) -> Completer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let store = self.store.clone();
        let done_ttl = millis(self.done_ttl);
        tokio::spawn(async move {
            let mut batch: Vec<(String, String)> = Vec::with_capacity(COMPLETE_BATCH);
            let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
            while let Some(job) = rx.recv().await {
                let mut next = Some(job);
                while let Some(job) = next.take() {
                    match job {
                        Job::Complete { key, owner } => batch.push((key, owner)),
                        Job::Flush(ack) => flushes.push(ack),
                    }
                    if batch.len() < COMPLETE_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if !batch.is_empty() {
                    complete_batch(&store, &batch, done_ttl).await;
                    batch.clear();
                }
                for ack in flushes.drain(..) {
                    let _ = ack.send(());
                }
            }
        });
        Completer {
            tx,
            store: self.store.clone(),
        }
    }
}

async fn complete_batch(store: &Store, batch: &[(String, String)], done_ttl: u64) {
    let mut pipe = redis::pipe();
    for (key, owner) in batch {
        // EVAL (not EVALSHA): a Redis restart cannot fail the batch with NOSCRIPT, and Redis
        // caches the compiled script by its hash anyway.
        pipe.cmd("EVAL")
            .arg(COMPLETE)
            .arg(1)
            .arg(key)
            .arg(pending(owner))
            .arg(done_ttl)
            .ignore();
    }
    let mut conn = store.conn();
    let result =
        tokio::time::timeout(Duration::from_secs(2), pipe.query_async::<()>(&mut conn)).await;
    if !matches!(result, Ok(Ok(()))) {
        // The publishes stand; their pending markers expire, after which a retry may publish a
        // duplicate with the same message_id (the documented window).
        metrics::counter!("wxhub_dedupe_complete_failed_total").increment(batch.len() as u64);
        tracing::warn!(
            keys = batch.len(),
            "could not mark published dedupe keys done"
        );
    }
}

impl Completer {
    /// Queues `owner`'s key to be marked done (after the broker confirmed its publish).
    pub fn complete(&self, tenant: &str, appid: &str, dedupe_key: &str, owner: &str) {
        let key = self.store.keys(tenant).dedupe(appid, dedupe_key);
        let _ = self.tx.send(Job::Complete {
            key,
            owner: owner.to_owned(),
        });
    }

    /// Waits until everything queued before this call has been written to Redis (or failed).
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Job::Flush(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

fn pending(owner: &str) -> String {
    format!("p:{owner}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
