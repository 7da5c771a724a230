//! Campaigns: one message to many recipients, stored once and fed to the send queue a slice at
//! a time.
//!
//! Guarantees:
//! - **Each recipient is fed once.** [`Campaigns::take`] hands out the next slice and advances
//!   the cursor in one script, and only while the campaign is `running`; a paused or cancelled
//!   campaign hands out nothing, so pause/cancel take effect at the next slice.
//! - **Counters follow the jobs.** A job of a campaign carries its id; the job store's settle
//!   script counts its final state into the campaign (`sent`, `failed`, `unknown`, `dead`),
//!   atomically with the job's own transition, and its claim script counts `cancelled`.
//! - **Cancel withdraws what was fed.** A job of a cancelled campaign that was not yet claimed
//!   is never claimed: the claim script finds the campaign `cancelled` and moves the job to
//!   `cancelled` instead (a job already `sending` finishes its send).
//!
//! Layout (under the tenant's hash tag): `Keys::campaign(id)` (hash: appid, kind, api, the
//! message body without recipient, state, total, fed, counters, created), `Keys::campaign_recipients(id)`
//! (list of JSON `{touser, data}`), `Keys::campaigns()` (set of the tenant's campaigns still
//! being fed). Everything expires with the jobs' TTL after creation.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Store, StoreError, px};

/// One recipient: the openid and its data overrides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRecipient {
    pub touser: String,
    #[serde(default)]
    pub data: std::collections::BTreeMap<String, String>,
}

/// A campaign to create.
#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub id: String,
    pub appid: String,
    pub kind: String,
    pub api: String,
    /// The message body (JSON object) every recipient's is built from.
    pub body: String,
    pub recipients: Vec<CampaignRecipient>,
    pub now_ms: i64,
}

/// A stored campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignRecord {
    pub id: String,
    pub tenant: String,
    pub appid: String,
    pub kind: String,
    pub api: String,
    pub body: String,
    /// running, paused, cancelled, done.
    pub state: String,
    pub total: u64,
    pub fed: u64,
    pub sent: u64,
    pub failed: u64,
    pub unknown: u64,
    pub dead: u64,
    /// Jobs fed, then withdrawn by a cancel before they were sent.
    pub cancelled: u64,
    pub created_at_ms: i64,
}

impl CampaignRecord {
    /// Jobs fed and not yet settled.
    pub fn in_flight(&self) -> u64 {
        self.fed
            .saturating_sub(self.sent + self.failed + self.unknown + self.dead + self.cancelled)
    }
}

// KEYS: campaign, recipients, campaigns set. ARGV: id, ttl_ms, now, then field pairs, then
// '--', then the recipients.
const CREATE: &str = r"
local i = 4
local fields = {}
while ARGV[i] ~= '--' do fields[#fields + 1] = ARGV[i]; i = i + 1 end
local total = #ARGV - i
redis.call('HSET', KEYS[1], 'state', 'running', 'total', total, 'fed', 0, 'sent', 0, 'failed', 0, 'unknown', 0, 'dead', 0, 'created', ARGV[3], unpack(fields))
for j = i + 1, #ARGV, 1000 do
  local chunk = {}
  for k = j, math.min(j + 999, #ARGV) do chunk[#chunk + 1] = ARGV[k] end
  redis.call('RPUSH', KEYS[2], unpack(chunk))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
return total
";

// KEYS: campaign, recipients, campaigns set. ARGV: id, n, now, lease_ms.
// Returns the slice's first index and its recipients ({'-1'} when not running, done, or a feeder
// holds the current slice). A slice stays leased (`lease_from`..`lease_to`, until `lease_until`)
// until its feeder reports it fed: a slice whose lease ran out (its feeder failed or died) is
// handed out again before the next one, so no recipient is skipped.
const TAKE: &str = r"
local h = redis.call('HMGET', KEYS[1], 'state', 'fed', 'total', 'lease_from', 'lease_to', 'lease_until')
if not h[1] then redis.call('SREM', KEYS[3], ARGV[1]); return {'-1'} end
if h[1] ~= 'running' then return {'-1'} end
local now, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
local from, to
if h[4] then
  if tonumber(h[6]) > now then return {'-1'} end
  from, to = tonumber(h[4]), tonumber(h[5])
else
  local fed, total = tonumber(h[2]), tonumber(h[3])
  if fed >= total then
    redis.call('SREM', KEYS[3], ARGV[1])
    return {'-1'}
  end
  from = fed
  to = fed + math.min(tonumber(ARGV[2]), total - fed) - 1
  redis.call('HSET', KEYS[1], 'fed', to + 1, 'lease_from', from, 'lease_to', to)
end
redis.call('HSET', KEYS[1], 'lease_until', now + lease)
local slice = redis.call('LRANGE', KEYS[2], from, to)
local out = {tostring(from)}
for _, r in ipairs(slice) do out[#out + 1] = r end
return out
";

// KEYS: campaign. ARGV: the fed slice's first index.
const FED: &str = r"
if redis.call('HGET', KEYS[1], 'lease_from') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'lease_from', 'lease_to', 'lease_until')
end
return 0
";

// KEYS: campaign, campaigns set. ARGV: id, wanted state, allowed current states (space separated).
const SET_STATE: &str = r"
local h = redis.call('HMGET', KEYS[1], 'state', 'fed', 'total')
local state = h[1]
if not state then return 'missing' end
-- Every recipient fed: nothing left to pause, resume or cancel.
if state == 'running' and tonumber(h[2]) >= tonumber(h[3]) then state = 'done' end
if not string.find(' ' .. ARGV[3] .. ' ', ' ' .. state .. ' ', 1, true) then return 'state:' .. state end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
if ARGV[2] == 'running' then redis.call('SADD', KEYS[2], ARGV[1]) end
if ARGV[2] == 'cancelled' then redis.call('SREM', KEYS[2], ARGV[1]) end
return 'ok'
";

static CREATE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CREATE));
static TAKE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(TAKE));
static FED_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FED));
static SET_STATE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SET_STATE));

/// Campaigns of one store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Campaigns {
    store: Store,
    ttl: Duration,
}

/// The answer of a state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    Ok,
    Missing,
    /// Not allowed from this state.
    From(String),
}

impl Campaigns {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self { store, ttl }
    }

    /// Stores `c` as `running`, to be fed from its first recipient.
    pub async fn create(&self, tenant: &str, c: &NewCampaign) -> Result<u64, StoreError> {
        let keys = self.store.keys(tenant);
        let mut inv = CREATE_SCRIPT.prepare_invoke();
        inv.key(keys.campaign(&c.id))
            .key(keys.campaign_recipients(&c.id))
            .key(keys.campaigns())
            .arg(&c.id)
            .arg(px(self.ttl))
            .arg(c.now_ms);
        for (k, v) in [
            ("appid", c.appid.as_str()),
            ("kind", &c.kind),
            ("api", &c.api),
            ("body", &c.body),
        ] {
            inv.arg(k).arg(v);
        }
        inv.arg("--");
        for r in &c.recipients {
            inv.arg(serde_json::to_string(r).unwrap_or_default());
        }
        let mut conn = self.store.conn();
        let total: u64 = inv.invoke_async(&mut conn).await?;
        // The feeder visits only the tenants marked (crate::busy).
        crate::busy::mark_after_write(&self.store, tenant).await;
        Ok(total)
    }

    /// The campaigns of `tenant` still being fed (or paused).
    pub async fn active(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.store.conn();
        Ok(redis::cmd("SMEMBERS")
            .arg(self.store.keys(tenant).campaigns())
            .query_async(&mut conn)
            .await?)
    }

    /// Whether this caller feeds campaign `id` this tick: one replica per `tick` (a guard key
    /// that expires with it).
    pub async fn claim_tick(
        &self,
        tenant: &str,
        id: &str,
        tick: Duration,
    ) -> Result<bool, StoreError> {
        self.store
            .guard(tenant, &format!("campaign:{id}"), tick)
            .await
    }

    /// The next `n` recipients of a running campaign, with the index of the first, leased to
    /// the caller for `lease` until it reports them fed ([`Campaigns::fed`]); a slice whose lease
    /// ran out is handed out again first (its jobs' idempotency keys find what was already
    /// made). `None` when it is not running, fully fed, or a feeder holds the current slice.
    pub async fn take(
        &self,
        tenant: &str,
        id: &str,
        n: usize,
        now_ms: i64,
        lease: Duration,
    ) -> Result<Option<(u64, Vec<CampaignRecipient>)>, StoreError> {
        let keys = self.store.keys(tenant);
        let mut inv = TAKE_SCRIPT.prepare_invoke();
        inv.key(keys.campaign(id))
            .key(keys.campaign_recipients(id))
            .key(keys.campaigns())
            .arg(id)
            .arg(n.max(1))
            .arg(now_ms)
            .arg(px(lease));
        let mut conn = self.store.conn();
        let out: Vec<String> = inv.invoke_async(&mut conn).await?;
        let mut it = out.into_iter();
        let first: i64 = it.next().and_then(|f| f.parse().ok()).unwrap_or(-1);
        if first < 0 {
            return Ok(None);
        }
        let mut recipients = Vec::new();
        for text in it {
            recipients.push(
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    key: keys.campaign_recipients(id),
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(Some((u64::try_from(first).unwrap_or(0), recipients)))
    }

    /// Ends the lease of the slice starting at `first`: every recipient of it has a stored and
    /// announced job.
    pub async fn fed(&self, tenant: &str, id: &str, first: u64) -> Result<(), StoreError> {
        let keys = self.store.keys(tenant);
        let mut inv = FED_SCRIPT.prepare_invoke();
        inv.key(keys.campaign(id)).arg(first);
        let mut conn = self.store.conn();
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Moves the campaign to `to` if it is in one of `from`.
    pub async fn set_state(
        &self,
        tenant: &str,
        id: &str,
        to: &str,
        from: &[&str],
    ) -> Result<StateChange, StoreError> {
        let keys = self.store.keys(tenant);
        let mut inv = SET_STATE_SCRIPT.prepare_invoke();
        inv.key(keys.campaign(id))
            .key(keys.campaigns())
            .arg(id)
            .arg(to)
            .arg(from.join(" "));
        let mut conn = self.store.conn();
        let answer: String = inv.invoke_async(&mut conn).await?;
        if answer == "ok" && to == "running" {
            // The feeder visits only the tenants marked (crate::busy).
            crate::busy::mark_after_write(&self.store, tenant).await;
        }
        Ok(match answer.as_str() {
            "ok" => StateChange::Ok,
            "missing" => StateChange::Missing,
            other => StateChange::From(other.trim_start_matches("state:").to_owned()),
        })
    }

    /// One campaign (`done` once every recipient was fed and every job settled).
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<CampaignRecord>, StoreError> {
        let key = self.store.keys(tenant).campaign(id);
        let mut conn = self.store.conn();
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        let text = |f: &str| map.get(f).cloned().unwrap_or_default();
        let num = |f: &str| -> u64 { map.get(f).and_then(|v| v.parse().ok()).unwrap_or(0) };
        let mut c = CampaignRecord {
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            appid: text("appid"),
            kind: text("kind"),
            api: text("api"),
            body: text("body"),
            state: text("state"),
            total: num("total"),
            fed: num("fed"),
            sent: num("sent"),
            failed: num("failed"),
            unknown: num("unknown"),
            dead: num("dead"),
            cancelled: num("cancelled"),
            created_at_ms: map.get("created").and_then(|v| v.parse().ok()).unwrap_or(0),
        };
        if c.state == "running" && c.fed >= c.total && c.in_flight() == 0 {
            c.state = "done".into();
        }
        Ok(Some(c))
    }
}
