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

use std::sync::LazyLock;
use std::time::Duration;

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
        let key = self.store.keys(tenant).dedupe(appid, dedupe_key);
        let mut conn = self.store.conn();
        let _: i64 = COMPLETE_SCRIPT
            .key(key)
            .arg(pending(owner))
            .arg(millis(self.done_ttl))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Gives the key back after a failed publish, so WeChat's retry can publish it.
    pub async fn release(
        &self,
        tenant: &str,
        appid: &str,
        dedupe_key: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        let key = self.store.keys(tenant).dedupe(appid, dedupe_key);
        let mut conn = self.store.conn();
        let _: i64 = RELEASE_SCRIPT
            .key(key)
            .arg(pending(owner))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

fn pending(owner: &str) -> String {
    format!("p:{owner}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
