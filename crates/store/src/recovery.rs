//! What a replica needs to notice a store that lost a tenant's state (a Redis restarted without
//! persistence, a deleted namespace) and to write back what it still holds, without ever
//! overwriting newer state.
//!
//! - [`Credentials::epoch`]: the tenant's `…:epoch` hash, created when missing. Every key of a
//!   tenant shares its slot, so an emptied store lost the epoch with the rest: a replica that
//!   remembers another epoch id knows the store lost its state. `healed` records that a re-list
//!   of the authorizers completed after the epoch was created ([`Credentials::mark_healed`]).
//! - [`Credentials::restore_token`]: writes a token a replica still holds, only where nothing
//!   newer can exist: not while a refresh holds the lease, not over a token written by a refresh
//!   (only over another write-back with an older fence), and never for an authorizer that is not
//!   stored as authorized (a revoked or not yet re-listed account gets nothing). It raises the
//!   tenant's fence counter to the token's fence, because the counter was lost too: without that,
//!   every later refresh would carry an older fence than the restored token and be refused.
//! - [`Credentials::restore_ticket`]: the ticket, by the usual CreateTime order (a push that
//!   arrived meanwhile is newer and stays).
//! - [`Credentials::raise_fence`]: the counter back to at least the highest fence a replica took,
//!   so a holder paused across the loss is outranked by every later lease.

use std::sync::LazyLock;

use redis::Script;

use crate::credentials::corrupt;
use crate::{Credentials, StoreError, TicketRecord, TokenRecord};

/// The tenant's store epoch, as found (or created) by [`Credentials::epoch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    /// Random identity of the stored state.
    pub id: String,
    /// When it was created (ms, caller's clock).
    pub created_at_ms: i64,
    /// When a re-list of the authorizers completed after it was created (ms).
    pub healed_at_ms: Option<i64>,
    /// This call created it: the tenant's keys were missing (a first start, or a lost store).
    pub created: bool,
    /// The tenant has a stored ticket.
    pub has_ticket: bool,
    /// The tenant has a stored component token.
    pub has_component_token: bool,
}

/// What [`Credentials::restore_token`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Written (with its schedule entry; the fence counter raised to its fence).
    Written,
    /// Kept what is there: a refresh holds the lease, or a token at least as new is stored.
    Kept,
    /// The authorizer is not stored as authorized (revoked, or not re-listed yet).
    NotAuthorized,
}

/// KEYS: epoch, ticket, component token. ARGV: new id, now.
static EPOCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'at', ARGV[2])
  created = 1
end
local e = redis.call('HMGET', KEYS[1], 'id', 'at', 'healed')
return {e[1] or '', e[2] or '', e[3] or '', created, redis.call('EXISTS', KEYS[2]),
  redis.call('EXISTS', KEYS[3])}
",
    )
});

/// KEYS: epoch. ARGV: id, now. Marks the epoch healed if it still is `id`.
static MARK_HEALED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
return redis.call('HSETNX', KEYS[1], 'healed', ARGV[2])
",
    )
});

/// KEYS: fence. ARGV: fence. Raises the counter to at least `fence`.
static RAISE_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
",
    )
});

/// KEYS: lock, token, fence, schedule, authorizer (or the token key again when none).
/// ARGV: value, exp, lifetime, refreshed at, fence, due, member, check authorizer (0/1).
///
/// A restored token carries `rs` = its fence. A refresh's write sets a new (higher) fence and
/// leaves `rs` alone, so `rs == fence` identifies a write-back nobody has replaced since; only
/// such a token gives way, and only to a write-back with a newer fence (two replicas holding
/// different generations of one token: the newer wins whatever the order).
static RESTORE_TOKEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = tonumber(ARGV[5])
if redis.call('EXISTS', KEYS[2]) == 1 then
  local stored = redis.call('HMGET', KEYS[2], 'fence', 'rs')
  if not stored[1] or stored[1] ~= stored[2] or tonumber(stored[1]) >= fence then return 0 end
end
if ARGV[8] == '1' and redis.call('HGET', KEYS[5], 'status') ~= 'authorized' then return -1 end
if tonumber(redis.call('GET', KEYS[3]) or '0') < fence then redis.call('SET', KEYS[3], fence) end
redis.call('HSET', KEYS[2], 'v', ARGV[1], 'exp', ARGV[2], 'lt', ARGV[3], 'at', ARGV[4],
  'fence', fence, 'rs', fence, 'due', ARGV[6])
redis.call('HDEL', KEYS[2], 'rej')
local due = tonumber(ARGV[6])
local current = redis.call('ZSCORE', KEYS[4], ARGV[7])
if not current or tonumber(current) > due then redis.call('ZADD', KEYS[4], due, ARGV[7]) end
return 1
",
    )
});

fn random_id() -> String {
    use rand::RngExt;
    let bytes: [u8; 8] = rand::rng().random();
    hex::encode(bytes)
}

impl Credentials {
    /// The tenant's epoch, created (at `now_ms`) when missing.
    pub async fn epoch(&self, tenant: &str, now_ms: i64) -> Result<Epoch, StoreError> {
        let keys = self.store().keys(tenant);
        let key = keys.epoch();
        let mut conn = self.store().conn();
        let (id, at, healed, created, ticket, component): (String, String, String, i64, i64, i64) =
            EPOCH
                .key(&key)
                .key(keys.ticket())
                .key(keys.token("component"))
                .arg(random_id())
                .arg(now_ms)
                .invoke_async(&mut conn)
                .await?;
        if id.is_empty() {
            return Err(corrupt(&key, "missing id"));
        }
        Ok(Epoch {
            id,
            created_at_ms: at
                .parse()
                .map_err(|_| corrupt(&key, "at is not a number"))?,
            healed_at_ms: healed.parse().ok(),
            created: created == 1,
            has_ticket: ticket == 1,
            has_component_token: component == 1,
        })
    }

    /// Records that a re-list completed for epoch `id` (no-op when the epoch changed since);
    /// returns whether this call marked it.
    pub async fn mark_healed(
        &self,
        tenant: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.store().conn();
        let n: i64 = MARK_HEALED
            .key(self.store().keys(tenant).epoch())
            .arg(id)
            .arg(now_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Writes back `record` of `credential` (see the module docs); `due_ms` is its next
    /// proactive refresh (an earlier stored one is kept), `authorizer` the account whose status
    /// must be `authorized`.
    pub async fn restore_token(
        &self,
        tenant: &str,
        credential: &str,
        record: &TokenRecord,
        due_ms: i64,
        authorizer: Option<&str>,
    ) -> Result<Restored, StoreError> {
        let keys = self.store().keys(tenant);
        let token_key = keys.token(credential);
        let authorizer_key = authorizer.map_or_else(|| token_key.clone(), |a| keys.authorizer(a));
        let mut conn = self.store().conn();
        let n: i64 = RESTORE_TOKEN
            .key(keys.lock(credential))
            .key(&token_key)
            .key(keys.fence())
            .key(keys.schedule())
            .key(authorizer_key)
            .arg(record.value.expose())
            .arg(record.expires_at_ms)
            .arg(record.lifetime_ms)
            .arg(record.refreshed_at_ms)
            .arg(record.fence)
            .arg(due_ms)
            .arg(credential)
            .arg(if authorizer.is_some() { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await?;
        Ok(match n {
            1 => Restored::Written,
            0 => Restored::Kept,
            _ => Restored::NotAuthorized,
        })
    }

    /// Raises the tenant's fence counter to at least `fence` (after a loss: the highest fence a
    /// replica took, so later leases outrank every lease taken before).
    pub async fn raise_fence(&self, tenant: &str, fence: u64) -> Result<(), StoreError> {
        if fence == 0 {
            return Ok(());
        }
        let mut conn = self.store().conn();
        let _: i64 = RAISE_FENCE
            .key(self.store().keys(tenant).fence())
            .arg(fence)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Writes back a ticket (with the time it was originally received) unless a push at least
    /// as new is stored; returns whether it was written.
    pub async fn restore_ticket(
        &self,
        tenant: &str,
        ticket: &TicketRecord,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.put_ticket(
            tenant,
            ticket.value.expose(),
            ticket.create_time,
            ticket.received_at_ms,
            now_ms,
        )
        .await
    }
}
