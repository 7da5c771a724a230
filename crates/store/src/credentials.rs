//! WeChat credentials in Redis: tickets, access tokens (and JS-SDK tickets) with their expiry
//! and fence, the per-credential refresh lease, and the refresh schedule.
//!
//! The refresh protocol (design §6, reliability.md §1.9) relies on four scripts here:
//!
//! - [`Credentials::acquire`]: `SET lock {owner}:{fence} NX PX ttl`, the fence being the next
//!   value of the tenant's counter — a lease with a monotonically increasing fencing token.
//! - [`Credentials::write_token`]: in one script, refuses everything for a revoked authorizer;
//!   persists a rotated refresh token by compare-and-set on the one the call used, whatever
//!   happens to the token (a holder that lost its lease still saves what WeChat rotated); then
//!   refuses the token when another owner holds the lease or the stored token carries a newer
//!   fence, else stores it with its expiry and due time, clears the rejected mark and
//!   reschedules the credential.
//! - [`Credentials::release`]: compare-and-delete of the lease.
//! - [`Credentials::invalidate`]: marks the token rejected only if it is still the rejected
//!   value, so a storm of reports about one token costs one refresh.
//!
//! Times are milliseconds of the caller's clock (the service's injectable clock), except the
//! lease TTL, which Redis measures in real time.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use wxhub_domain::Secret;

use crate::{Store, StoreError, px};

/// A stored access token or JS-SDK ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub value: Secret,
    /// Expiry (ms).
    pub expires_at_ms: i64,
    /// Lifetime it was issued with (ms).
    pub lifetime_ms: i64,
    /// When it was written (ms).
    pub refreshed_at_ms: i64,
    /// The fence of the lease it was written under.
    pub fence: u64,
    /// A client reported WeChat rejected it (40001/40014/42001).
    pub rejected: bool,
    /// When it is due for its next refresh (ms): until then it is served while valid and
    /// WeChat is not asked again. Records written before this field existed get
    /// `refreshed_at_ms + lifetime_ms / 2`.
    pub due_ms: i64,
}

impl TokenRecord {
    /// Milliseconds left at `now_ms` (negative when expired).
    pub fn remaining_ms(&self, now_ms: i64) -> i64 {
        self.expires_at_ms - now_ms
    }
}

/// The stored component_verify_ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRecord {
    pub value: Secret,
    /// WeChat's `CreateTime` of the push (s).
    pub create_time: i64,
    /// When it was stored (ms).
    pub received_at_ms: i64,
}

/// A held refresh lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub tenant: String,
    pub credential: String,
    /// The fencing token taken with the lease.
    pub fence: u64,
    /// `{owner}:{fence}`, the lock's value.
    value: String,
}

/// A token to store under a lease.
#[derive(Debug, Clone)]
pub struct TokenWrite<'a> {
    pub value: &'a Secret,
    pub expires_at_ms: i64,
    pub lifetime_ms: i64,
    pub now_ms: i64,
    /// Next refresh (ms), written to the schedule.
    pub due_ms: i64,
    /// For authorizer credentials: the authorizer whose status is checked (a revoked account
    /// gets no token) and whose refresh token may rotate.
    pub authorizer: Option<&'a str>,
    /// `(used, returned)`: the refresh token the call used and the one WeChat returned. The
    /// returned one is persisted first if it differs, by compare-and-set on the used one
    /// (WeChat's answer to exactly the stored token is its successor, so newer, whatever the
    /// fences), independently of the token write.
    pub refresh_token: Option<(&'a Secret, &'a Secret)>,
}

/// Why a fenced token write was refused (or that it happened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored.
    Written,
    /// Another owner holds the lease now: our lease expired and was taken over.
    LostLease,
    /// The stored token carries a newer fence.
    StaleFence,
    /// The authorizer was revoked meanwhile (nothing was stored).
    Revoked,
}

/// What [`Credentials::write_token`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReport {
    /// The token write.
    pub outcome: WriteOutcome,
    /// Whether the returned refresh token was persisted (also when the token was refused).
    pub refresh_token_rotated: bool,
}

/// Credential storage for one namespace.
#[derive(Debug, Clone)]
pub struct Credentials {
    store: Store,
}

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local fence = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
if redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[2], fence)
  return fence
end
return false
",
    )
});

/// Compare-and-delete: KEYS[1] is deleted if it still holds ARGV[1].
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// KEYS: lock, token, schedule, authorizer (or the token key again when none).
/// ARGV: lease value, fence, token, exp, now, due, member, lifetime, check authorizer (0/1),
/// refresh used, refresh returned. Returns {outcome, rotated}: 1 written, -1 lost lease,
/// -2 stale fence, -3 revoked.
///
/// The refresh token goes first and does not depend on the lease: WeChat has already rotated
/// it, and the returned one is the successor of exactly the one the call used, so storing it
/// while that one is still the stored one is safe whoever holds the lease now. (Requiring the
/// lease's fence to be at least `rfence` dropped it after a 61023 reconcile, which stores the
/// listed token under a newer fence than the lease that then uses it.) `rfence` keeps its
/// maximum.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local fence = tonumber(ARGV[2])
local rotated = 0
if ARGV[9] == '1' then
  if redis.call('HGET', KEYS[4], 'status') ~= 'authorized' then return {-3, 0} end
  if ARGV[11] ~= '' and ARGV[11] ~= ARGV[10] then
    local current = redis.call('HGET', KEYS[4], 'rt')
    if current == false or current == ARGV[10] then
      local rfence = math.max(fence, tonumber(redis.call('HGET', KEYS[4], 'rfence') or '0'))
      redis.call('HSET', KEYS[4], 'rt', ARGV[11], 'rfence', rfence, 'rotated_at', ARGV[5])
      rotated = 1
    end
  end
end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {-1, rotated} end
local stored = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
if fence < stored then return {-2, rotated} end
redis.call('HSET', KEYS[2], 'v', ARGV[3], 'exp', ARGV[4], 'at', ARGV[5], 'fence', fence,
  'lt', ARGV[8], 'due', ARGV[6])
redis.call('HDEL', KEYS[2], 'rej')
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[7])
return {1, rotated}
",
    )
});

/// KEYS: token, schedule. ARGV: rejected value, member, now.
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'v') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'rej', '1')
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
  return 1
end
return 0
",
    )
});

/// KEYS: ticket. ARGV: value, create time (s), received at (ms), now (ms), skew (ms). Newer (or
/// equal) CreateTime wins. A CreateTime beyond now + skew is refused, and a stored one beyond it
/// (written before that rule) orders nothing: it was never a real push's.
static STORE_TICKET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cap = math.floor((tonumber(ARGV[4]) + tonumber(ARGV[5])) / 1000)
local new = tonumber(ARGV[2])
if new > cap then return 0 end
local ct = tonumber(redis.call('HGET', KEYS[1], 'ct') or '-1')
if ct > cap then ct = -1 end
if new < ct then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'ct', ARGV[2], 'at', ARGV[3])
return 1
",
    )
});

/// KEYS: schedule. ARGV: now, lease until, limit. Takes due entries and pushes them to the
/// lease time, so other replicas skip them (and they come back if the claimer dies).
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
",
    )
});

fn parse_i64(key: &str, field: &str, v: Option<&String>) -> Result<i64, StoreError> {
    v.ok_or_else(|| corrupt(key, format!("missing {field}")))?
        .parse()
        .map_err(|_| corrupt(key, format!("{field} is not a number")))
}

pub(crate) fn corrupt(key: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

impl Credentials {
    /// Credential storage on `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A hash whose field `v` holds a secret (tokens, tickets): `None` when the key is absent,
    /// corrupt when `v` is missing.
    async fn valued_hash(
        &self,
        key: &str,
    ) -> Result<Option<(std::collections::HashMap<String, String>, Secret)>, StoreError> {
        let mut conn = self.store.conn();
        let mut map: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        let value = map
            .remove("v")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| corrupt(key, "missing v"))?;
        Ok(Some((map, Secret::new(value))))
    }

    /// The stored token of `credential`, if any.
    pub async fn token(
        &self,
        tenant: &str,
        credential: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let key = self.store.keys(tenant).token(credential);
        let Some((map, value)) = self.valued_hash(&key).await? else {
            return Ok(None);
        };
        let lifetime_ms = parse_i64(&key, "lt", map.get("lt"))?;
        let refreshed_at_ms = parse_i64(&key, "at", map.get("at"))?;
        let due_ms = match map.get("due") {
            Some(due) => parse_i64(&key, "due", Some(due))?,
            None => refreshed_at_ms + lifetime_ms / 2,
        };
        Ok(Some(TokenRecord {
            value,
            expires_at_ms: parse_i64(&key, "exp", map.get("exp"))?,
            lifetime_ms,
            refreshed_at_ms,
            fence: u64::try_from(parse_i64(&key, "fence", map.get("fence"))?).unwrap_or(0),
            rejected: map.get("rej").is_some_and(|r| r == "1"),
            due_ms,
        }))
    }

    /// Takes the refresh lease of `credential` for `ttl` with a fresh fence, or `None` when
    /// another owner holds it. A command that failed on a dropped connection has an unknown
    /// outcome: it is resolved by reading the lock back (ours → held).
    pub async fn acquire(
        &self,
        tenant: &str,
        credential: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let keys = self.store.keys(tenant);
        let lock = keys.lock(credential);
        let owner = random_owner();
        let mut conn = self.store.conn();
        let result: Result<Option<u64>, redis::RedisError> = ACQUIRE
            .key(&lock)
            .key(keys.fence())
            .arg(&owner)
            .arg(px(ttl))
            .invoke_async(&mut conn)
            .await;
        let fence = match result {
            Ok(f) => f,
            Err(e) if is_unknown_outcome(&e) => {
                // Resolve: did our SET land?
                let held: Option<String> =
                    redis::cmd("GET").arg(&lock).query_async(&mut conn).await?;
                held.as_deref()
                    .and_then(|v| v.strip_prefix(&format!("{owner}:")))
                    .and_then(|f| f.parse().ok())
            }
            Err(e) => return Err(e.into()),
        };
        Ok(fence.map(|fence| Lease {
            tenant: tenant.to_owned(),
            credential: credential.to_owned(),
            fence,
            value: format!("{owner}:{fence}"),
        }))
    }

    /// Whether `lease` is still held (checked before an upstream call, to narrow the window in
    /// which a paused holder calls WeChat after losing its lease).
    pub async fn holds(&self, lease: &Lease) -> Result<bool, StoreError> {
        let lock = self.store.keys(&lease.tenant).lock(&lease.credential);
        let mut conn = self.store.conn();
        let held: Option<String> = redis::cmd("GET").arg(&lock).query_async(&mut conn).await?;
        Ok(held.as_deref() == Some(lease.value.as_str()))
    }

    /// Releases `lease` if it is still ours (compare-and-delete; safe to retry).
    pub async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        let lock = self.store.keys(&lease.tenant).lock(&lease.credential);
        let mut conn = self.store.conn();
        let n: i64 = RELEASE
            .key(lock)
            .arg(&lease.value)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// The fenced token write (see the module docs).
    pub async fn write_token(
        &self,
        lease: &Lease,
        write: &TokenWrite<'_>,
    ) -> Result<WriteReport, StoreError> {
        let keys = self.store.keys(&lease.tenant);
        let token_key = keys.token(&lease.credential);
        let authorizer_key = match write.authorizer {
            Some(appid) => keys.authorizer(appid),
            None => token_key.clone(),
        };
        let (used, returned) = match write.refresh_token {
            Some((used, returned)) => (used.expose(), returned.expose()),
            None => ("", ""),
        };
        let mut conn = self.store.conn();
        let (n, rotated): (i64, i64) = WRITE
            .key(keys.lock(&lease.credential))
            .key(&token_key)
            .key(keys.schedule())
            .key(authorizer_key)
            .arg(&lease.value)
            .arg(lease.fence)
            .arg(write.value.expose())
            .arg(write.expires_at_ms)
            .arg(write.now_ms)
            .arg(write.due_ms)
            .arg(&lease.credential)
            .arg(write.lifetime_ms)
            .arg(if write.authorizer.is_some() { "1" } else { "0" })
            .arg(used)
            .arg(returned)
            .invoke_async(&mut conn)
            .await?;
        let outcome = match n {
            1 => WriteOutcome::Written,
            -1 => WriteOutcome::LostLease,
            -2 => WriteOutcome::StaleFence,
            _ => WriteOutcome::Revoked,
        };
        Ok(WriteReport {
            outcome,
            refresh_token_rotated: rotated == 1,
        })
    }

    /// Marks the token rejected if it still is `rejected` and makes it due now; returns whether
    /// it matched (false: it was already replaced, so the caller should use the stored one).
    pub async fn invalidate(
        &self,
        tenant: &str,
        credential: &str,
        rejected: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let keys = self.store.keys(tenant);
        let mut conn = self.store.conn();
        let n: i64 = INVALIDATE
            .key(keys.token(credential))
            .key(keys.schedule())
            .arg(rejected)
            .arg(credential)
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Deletes tokens and their schedule entries (e.g. after WeChat said the account is no
    /// longer authorized).
    pub async fn drop_tokens(&self, tenant: &str, credentials: &[&str]) -> Result<(), StoreError> {
        if credentials.is_empty() {
            return Ok(());
        }
        let keys = self.store.keys(tenant);
        let mut conn = self.store.conn();
        let tokens: Vec<String> = credentials.iter().map(|c| keys.token(c)).collect();
        let _: () = redis::pipe()
            .atomic()
            .del(tokens)
            .ignore()
            .zrem(keys.schedule(), credentials)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The stored component_verify_ticket.
    pub async fn ticket(&self, tenant: &str) -> Result<Option<TicketRecord>, StoreError> {
        let key = self.store.keys(tenant).ticket();
        let Some((map, value)) = self.valued_hash(&key).await? else {
            return Ok(None);
        };
        Ok(Some(TicketRecord {
            value,
            create_time: parse_i64(&key, "ct", map.get("ct"))?,
            received_at_ms: parse_i64(&key, "at", map.get("at"))?,
        }))
    }

    /// Stores a pushed ticket unless a newer push (by `CreateTime`) is already stored; returns
    /// whether it was stored. Replaying the same push is harmless. A CreateTime more than the
    /// store's skew ([`Store::with_create_time_skew`]) ahead of `received_at_ms` is refused, and a stored one that far ahead (written
    /// before this rule) does not hold back a real push.
    pub async fn store_ticket(
        &self,
        tenant: &str,
        ticket: &str,
        create_time: i64,
        received_at_ms: i64,
    ) -> Result<bool, StoreError> {
        self.put_ticket(tenant, ticket, create_time, received_at_ms, received_at_ms)
            .await
    }

    /// [`Credentials::store_ticket`] of a ticket received at `received_at_ms`, ordered at `now_ms`.
    pub(crate) async fn put_ticket(
        &self,
        tenant: &str,
        ticket: &str,
        create_time: i64,
        received_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = self.store.keys(tenant).ticket();
        let mut conn = self.store.conn();
        let n: i64 = STORE_TICKET
            .key(key)
            .arg(ticket)
            .arg(create_time)
            .arg(received_at_ms)
            .arg(now_ms)
            .arg(self.store.create_time_skew_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Puts `credential` on the schedule at `due_ms`. With `only_if_absent`, an existing entry
    /// is left alone.
    pub async fn schedule(
        &self,
        tenant: &str,
        credential: &str,
        due_ms: i64,
        only_if_absent: bool,
    ) -> Result<(), StoreError> {
        let key = self.store.keys(tenant).schedule();
        let mut conn = self.store.conn();
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&key);
        if only_if_absent {
            cmd.arg("NX");
        }
        let _: i64 = cmd
            .arg(due_ms)
            .arg(credential)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The due time of `credential`, if scheduled.
    pub async fn due(&self, tenant: &str, credential: &str) -> Result<Option<i64>, StoreError> {
        let key = self.store.keys(tenant).schedule();
        let mut conn = self.store.conn();
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(&key)
            .arg(credential)
            .query_async(&mut conn)
            .await?;
        Ok(score.map(|s| s as i64))
    }

    /// Claims up to `limit` credentials due at `now_ms`, pushing each to `lease_until_ms` so
    /// other replicas skip them; a claimer that dies leaves them due again then.
    pub async fn claim_due(
        &self,
        tenant: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let key = self.store.keys(tenant).schedule();
        let mut conn = self.store.conn();
        Ok(CLAIM
            .key(key)
            .arg(now_ms)
            .arg(lease_until_ms)
            .arg(limit)
            .invoke_async(&mut conn)
            .await?)
    }

    /// How many credentials are due at `now_ms` (for tests, benchmarks and metrics).
    pub async fn due_count(&self, tenant: &str, now_ms: i64) -> Result<u64, StoreError> {
        let key = self.store.keys(tenant).schedule();
        let mut conn = self.store.conn();
        Ok(redis::cmd("ZCOUNT")
            .arg(&key)
            .arg("-inf")
            .arg(now_ms)
            .query_async(&mut conn)
            .await?)
    }

    /// Takes a fencing token without a lease, for writers that are not refreshes (an
    /// authorization-code exchange, a reconcile): taken *before* the upstream call, so a write
    /// based on an older WeChat answer never wins over a newer one.
    pub async fn next_fence(&self, tenant: &str) -> Result<u64, StoreError> {
        let key = self.store.keys(tenant).fence();
        let mut conn = self.store.conn();
        Ok(redis::cmd("INCR").arg(&key).query_async(&mut conn).await?)
    }

    /// Sets `…:guard:{what}` for `ttl` unless present; true when this caller got it.
    pub async fn guard(&self, tenant: &str, what: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.store.guard(tenant, what, ttl).await
    }

    /// Sets `…:guard:{what}` to `value` for `ttl` (with `only_if_absent`, only when unset);
    /// returns whether it was set.
    pub async fn mark(
        &self,
        tenant: &str,
        what: &str,
        value: &str,
        ttl: Duration,
        only_if_absent: bool,
    ) -> Result<bool, StoreError> {
        let key = self.store.keys(tenant).guard(what);
        let mut conn = self.store.conn();
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(value).arg("PX").arg(px(ttl));
        if only_if_absent {
            cmd.arg("NX");
        }
        let set: Option<String> = cmd.query_async(&mut conn).await?;
        Ok(set.is_some())
    }

    /// The value of `…:guard:{what}`.
    pub async fn marker(&self, tenant: &str, what: &str) -> Result<Option<String>, StoreError> {
        let key = self.store.keys(tenant).guard(what);
        let mut conn = self.store.conn();
        Ok(redis::cmd("GET").arg(&key).query_async(&mut conn).await?)
    }

    /// Deletes `…:guard:{what}` if it still holds `value` (compare-and-delete).
    pub async fn clear_marker(
        &self,
        tenant: &str,
        what: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let key = self.store.keys(tenant).guard(what);
        let mut conn = self.store.conn();
        let _: i64 = RELEASE.key(key).arg(value).invoke_async(&mut conn).await?;
        Ok(())
    }
}

/// A failure whose command may or may not have run (the connection dropped or timed out).
pub(crate) fn is_unknown_outcome(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() || e.is_timeout() || e.is_io_error()
}

fn random_owner() -> String {
    use rand::RngExt;
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}
