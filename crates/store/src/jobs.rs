//! The messaging service's jobs: one record per message to send, moved through its states by
//! one Lua script per transition, so every replica sees one order of events.
//!
//! Guarantees:
//! - **Stored before it is announced.** [`Jobs::create`] stores the job (and claims its
//!   idempotency key) in one script; the caller publishes afterwards and [`Jobs::abandon`]s
//!   the job if the publish fails, so an id handed out always names a stored, published job.
//! - **One idempotency key, one job.** The key (by its SHA-256) maps to the first job for
//!   `idempotency_ttl` (24 h); a second create with it returns that job and stores nothing.
//!   The claim is the script's `SET NX`, so two simultaneous first requests cannot both win.
//! - **Sent at most once after it was recorded sent.** A send starts with [`Jobs::claim`]: the
//!   job must be queued or retrying, and becomes `sending` under a lease with a random owner.
//!   A job in a final state is never claimed again, whatever the broker redelivers. A job found
//!   `sending` with an expired lease is `Stale`: its sender stopped between the send and the
//!   record, so the outcome of that send is unknown — the caller decides (a template with the
//!   same `client_msg_id` may be resent, WeChat deduplicates it; anything else becomes
//!   `unknown`). [`Jobs::settle`] records the outcome only if the caller still owns the lease,
//!   so a sender that lost it cannot overwrite a newer outcome.
//!
//! - **A tenant's share of the broker is bounded, whatever its backlog.** With a window `W`
//!   ([`Jobs::with_tenant_window`], `worker.tenant_window`), at most `W` of a tenant's
//!   single-message jobs are announced and not final at once (`Keys::in_broker`). A job created
//!   while the window is full — or while older jobs are held — is stored `queued` and held
//!   (`Keys::held`, FIFO): [`Created::Held`], not announced by the caller. [`Jobs::take_held`]
//!   moves held ids into the window as it frees (final states leave it in the settle script)
//!   and through `Keys::feeding`, which keeps them until [`Jobs::fed`] says their publish was
//!   confirmed: a feeder that stops mid-feed leaves them there and the next take hands them
//!   out again (announced twice at worst; the claim sends once). A held job is never dropped.
//!   Campaign jobs are outside the window (campaigns feed a window of their own). An entry
//!   older than the job TTL (its job expired, or its creator died before publishing) leaves the
//!   window at a take, or at one create in 16.
//!
//! What a job costs Redis is what bounds the service's send rate (docs/messaging.md,
//! *Measured*), so a transition writes only what a reader needs: the record (its attempts
//! included, as JSON lines in its `attempts` field), the recent list of a state someone lists,
//! and the indexes a later step looks up. Queued and sending, which every job passes through,
//! have no list ([`JobState::is_indexed`]); the lists are trimmed by one write in 16.
//!
//! Layout (all under the tenant's hash tag): `Keys::job` (hash), `Keys::jobs(state)` (recent ids
//! per indexed state, `all` by creation), `Keys::idempotency`, `Keys::msgid` (delivery reports
//! name only WeChat's msgid) and `Keys::park` (an (account, API) pair whose daily quota is
//! spent); the window: `Keys::in_broker`, `Keys::held`, `Keys::feeding`. Records expire after
//! `ttl` (7 days by default); the recent lists keep the newest [`RECENT`] ids per state.
//! `Keys::job_attempts` is only read: records written before the attempts moved into the
//! record keep them there.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Store, StoreError, px};

/// Ids kept per recent list.
pub const RECENT: usize = 10_000;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum JobState {
    #[default]
    Queued,
    Sending,
    Retrying,
    Sent,
    Delivered,
    DeliveryFailed,
    Failed,
    Unknown,
    Dead,
    /// A campaign job withdrawn by the campaign's cancel before it was claimed.
    Cancelled,
}

impl JobState {
    /// Every state, in the order of the scripts' key lists.
    pub const ALL: [JobState; 10] = [
        JobState::Queued,
        JobState::Sending,
        JobState::Retrying,
        JobState::Sent,
        JobState::Delivered,
        JobState::DeliveryFailed,
        JobState::Failed,
        JobState::Unknown,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Sending => "sending",
            JobState::Retrying => "retrying",
            JobState::Sent => "sent",
            JobState::Delivered => "delivered",
            JobState::DeliveryFailed => "delivery_failed",
            JobState::Failed => "failed",
            JobState::Unknown => "unknown",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the state has a recent list of its own. Queued and sending are passing states
    /// (every job goes through them, most within milliseconds): not indexed, they are listed
    /// from the newest jobs (`all`), which saves a job four writes.
    pub fn is_indexed(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Sending)
    }

    /// Whether nothing will send it again by itself (an operator may replay `unknown` and
    /// `dead`).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            JobState::Queued | JobState::Sending | JobState::Retrying
        )
    }
}

/// One call to WeChat for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub at_ms: i64,
    /// WeChat's errcode; 0 for a success or a failure without one (then see `errmsg`).
    pub errcode: i64,
    pub errmsg: String,
}

/// A job to create.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub appid: String,
    /// `custom`, `template`, `subscribe`, `bizsend`.
    pub kind: String,
    /// The WeChat API path.
    pub api: String,
    pub touser: String,
    /// The JSON body to post.
    pub body: String,
    pub idempotency_key: Option<String>,
    /// The campaign it belongs to (its final state is counted there).
    pub campaign: Option<String>,
    pub now_ms: i64,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobRecord {
    pub id: String,
    pub tenant: String,
    pub appid: String,
    pub kind: String,
    pub api: String,
    pub touser: String,
    pub body: String,
    pub state: JobState,
    pub attempts_made: u32,
    pub next_at_ms: i64,
    pub errcode: i64,
    pub reason: String,
    pub msgid: i64,
    pub delivery: String,
    pub idempotency_key: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub attempts: Vec<AttemptRecord>,
    /// Its campaign, empty for a single message.
    pub campaign: String,
}

/// The answer of [`Jobs::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Stored now, inside the tenant's window: the caller announces it.
    New,
    /// Stored now and held (the tenant's window is full): a feeder announces it
    /// ([`Jobs::take_held`]); the caller must not.
    Held,
    /// The idempotency key already names this job; nothing was stored.
    Existing(String),
    /// [`Jobs::create_as`]: the tenant has no such authorizer; nothing was stored.
    UnknownAccount,
    /// [`Jobs::create_as`]: the authorizer revoked the authorization; nothing was stored.
    RevokedAccount,
    /// The tenant already holds [`Jobs::with_most_held`] jobs beyond its window; nothing was
    /// stored (the caller should retry later).
    OverHeld,
}

/// The answer of [`Jobs::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Now `sending`, owned by the caller; `attempts_made` before this one.
    Claimed { attempts_made: u32 },
    /// It was `sending` under an expired lease (its sender stopped mid-send); now owned by the
    /// caller, still `sending`. The previous send's outcome is unknown.
    Stale { attempts_made: u32 },
    /// Another sender holds a live lease.
    Busy,
    /// In a final state: nothing to do.
    Done(JobState),
    /// [`Jobs::claim_to_send`]: the job's (account, API) pair is parked for this long more; the
    /// job was left as it was.
    Parked(Duration),
    /// [`Jobs::claim_to_send`]: a limiter bucket refused; all of them would admit after this
    /// long. The job was left as it was and no unit was taken.
    Limited(Duration),
    /// No such job (expired or never stored).
    Missing,
}

/// What a send's claim checks besides the job's state ([`Jobs::claim_to_send`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SendGate<'a> {
    /// The (account appid, API path) pair: no claim while it is parked ([`Jobs::park`]).
    pub park: Option<(&'a str, &'a str)>,
    /// The limiter buckets (subject, rate) a send takes one unit from, all or none.
    pub buckets: &'a [(&'a str, crate::Rate)],
}

/// An outcome to record with [`Jobs::settle`].
#[derive(Debug, Clone)]
pub struct Settle {
    pub state: JobState,
    pub errcode: i64,
    pub reason: String,
    /// WeChat's msgid (indexed for delivery reports), 0 for none.
    pub msgid: i64,
    pub next_at_ms: i64,
    /// The call made, if one was.
    pub attempt: Option<AttemptRecord>,
    /// Whether the call counts toward the attempt limit (rate-limit waits do not).
    pub count_attempt: bool,
    pub now_ms: i64,
    /// The job's campaign (a final state is counted there), empty for none.
    pub campaign: String,
}

/// The answer of [`Jobs::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Ok,
    /// The caller no longer owns the job (its lease expired and another sender claimed it).
    Lost,
}

// The recent lists keep the newest `recent` ids each. Trimming a list on every write cost a
// command a transition, so only the writes of the jobs whose id ends in `0` (one in 16: the
// id's last digit is random) trim it: a list holds `recent` ids and, on average, 16 more.
// (Inlined in each script: the slot test reads every script as one literal.)

// Creates one or more jobs of a tenant (Enqueue's single message, EnqueueBatch's up to
// `CREATE_AT_ONCE`): one call instead of one per job, each job as if created alone, in order.
// KEYS: jobs:all, in-broker, held, then three per job: idem (or the job key again when there is
// none), job, the authorizer record to require (or the job key). ARGV: ttl_ms, idem_ttl_ms,
// recent, most held (0: no cap), then 18 per job: id, now, has_idem, window (0: outside any
// window), then seven field/value pairs.
// Returns two values per job: {1, id} (stored, announce it), {2, id} (stored and held; {6, id}
// when it is the first held: mark the tenant), {0, existing}, or {3, ''} (no such authorizer) /
// {4, ''} (revoked) / {5, ''} (held over the cap), storing nothing.
const CREATE: &str = r"
local ttl, idem_ttl, recent, most_held = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local function create(k, a)
  local idem = KEYS[k + 1]
  local job = KEYS[k + 2]
  local account = KEYS[k + 3]
  local id, now, has_idem, window = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4])
  if account ~= job then
    local status = redis.call('HGET', account, 'status')
    if not status then return 3, '' end
    if status == 'revoked' then return 4, '' end
  end
  if has_idem == '1' then
    local existing = redis.call('GET', idem)
    if existing then return 0, existing end
  end
  local held = 0
  if window > 0 then held = redis.call('LLEN', KEYS[3]) end
  if most_held > 0 and held >= most_held then return 5, '' end
  if has_idem == '1' then redis.call('SET', idem, id, 'PX', idem_ttl) end
  redis.call('HSET', job, 'state', 'queued', 'n', 0, 'created', now, 'updated', now, unpack(ARGV, a + 5, a + 18))
  redis.call('PEXPIRE', job, ttl)
  -- Only `all` indexes a new job: queued and sending are passing states, listed from `all`.
  redis.call('ZADD', KEYS[1], now, id)
  if string.sub(id, -1) == '0' then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(recent + 1)) end
  if window > 0 then
    -- Entries older than a job (their creator died before publishing) leave the window; with
    -- the trim's cadence here, and at every take of held jobs.
    if string.sub(id, -1) == '0' then
      redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(now) - tonumber(ttl))
    end
    -- Held jobs go first: a new job joins them while any is waiting.
    if held > 0 or redis.call('ZCARD', KEYS[2]) >= window then
      redis.call('RPUSH', KEYS[3], id)
      redis.call('PEXPIRE', KEYS[3], ttl)
      -- The first held job marks its tenant for the feeder (crate::busy); later ones find it
      -- marked.
      if held == 0 then return 6, id end
      return 2, id
    end
    redis.call('ZADD', KEYS[2], now, id)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  return 1, id
end
local out = {}
for j = 0, (#KEYS - 3) / 3 - 1 do
  local code, id = create(3 + 3 * j, 4 + 18 * j)
  out[#out + 1] = code
  out[#out + 1] = id
end
return out
";

/// What a create script's malformed answer is reported against.
const CREATE_ANSWER: &str = "the job create script's answer";

/// Most jobs one create script stores: Redis runs nothing else meanwhile (about 3 µs a job).
pub const CREATE_AT_ONCE: usize = 100;

// KEYS: idem (or the job key), job, jobs:all, in-broker. ARGV: id, has_idem.
const ABANDON: &str = r"
if ARGV[2] == '1' and redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
";

// KEYS: held, feeding, in-broker. ARGV: window, now, ttl_ms.
// Moves held ids into the window while it has room (through `feeding`) and returns everything
// in `feeding`: this take's ids and those a stopped feeder left.
const TAKE_HELD: &str = r"
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[3]))
local room = tonumber(ARGV[1]) - redis.call('ZCARD', KEYS[3])
for _ = 1, room do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not id then break end
  redis.call('ZADD', KEYS[3], now, id)
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return redis.call('LRANGE', KEYS[2], 0, -1)
";

// KEYS: feeding. ARGV: the ids whose publish was confirmed.
const FED: &str = r"
for i = 1, #ARGV do redis.call('LREM', KEYS[1], 1, ARGV[i]) end
return #ARGV
";

// KEYS: job, jobs:retrying, jobs:cancelled, then the job's campaign (or the job key), then the
// (account, API) pair's park (or the job key), then the limiter buckets of the send (none: no
// limit). ARGV: id, now, owner, lease_until, recent, then the limiter's cost and each bucket's
// interval and burst. Returns {answer, attempts made, the park's ms left ('parked') or the
// limiter's µs to wait ('limited'), and when claimed or stale the job's fields a send needs}.
// A queued or retrying job of a cancelled campaign becomes `cancelled` instead (counted there);
// a job whose pair is parked, or that the limiter refuses, is left as it is (no unit taken).
const CLAIM: &str = concat!(
    crate::limiter::gcra_lua!(),
    r"
-- after gcra
-- The fields a send needs come with the state: the HSET below does not change them.
local h = redis.call('HMGET', KEYS[1], 'state', 'n', 'lease', 'appid', 'kind', 'api', 'touser', 'body', 'campaign', 'idem', 'created')
local state, n, lease = h[1], tonumber(h[2] or '0'), tonumber(h[3] or '0')
if not state then return {'missing', 0, 0, {}} end
local now = tonumber(ARGV[2])
local answer
if (state == 'queued' or state == 'retrying') and KEYS[4] ~= KEYS[1]
    and redis.call('HGET', KEYS[4], 'state') == 'cancelled' then
  if state == 'retrying' then redis.call('ZREM', KEYS[2], ARGV[1]) end
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
  if string.sub(ARGV[1], -1) == '0' then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[5]) + 1)) end
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'reason', 'the campaign was cancelled', 'updated', ARGV[2], 'next_at', 0)
  redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
  return {'done:cancelled', n, 0, {}}
end
if state == 'queued' or state == 'retrying' then
  answer = 'claimed'
elseif state == 'sending' then
  if lease > now then return {'busy', n, 0, {}} end
  answer = 'stale'
else
  return {'done:' .. state, n, 0, {}}
end
if KEYS[5] ~= KEYS[1] then
  local left = redis.call('PTTL', KEYS[5])
  if left > 0 then return {'parked', n, left, {}} end
end
if #KEYS > 5 then
  local admitted = gcra(6, #KEYS, 6)
  if admitted[1] == 0 then return {'limited', n, admitted[2], {}} end
end
-- Sending is not indexed (a passing state); only retrying leaves its list.
if state == 'retrying' then redis.call('ZREM', KEYS[2], ARGV[1]) end
redis.call('HSET', KEYS[1], 'state', 'sending', 'owner', ARGV[3], 'lease', ARGV[4], 'updated', ARGV[2], 'next_at', 0)
local f = {}
for i = 1, 8 do f[i] = h[i + 3] or '' end
return {answer, n, 0, f}
"
);

// KEYS: job, msgid index (or the job key), held report (or the job key), the new state's list,
// jobs:delivered, jobs:delivery_failed, the job's campaign (or the job key), the tenant's
// in-broker window (a final state leaves it).
// ARGV: id, now, owner, new state, count (0|1), errcode, reason, msgid, next_at, attempt JSON
// ('' for none), ttl_ms, recent.
// A sent job whose delivery report came first takes it at once (delivered/delivery_failed).
// The attempts are one field of the record, JSON lines, appended here: the record's one HSET
// and its expiry cover them.
const SETTLE: &str = r"
local h = redis.call('HMGET', KEYS[1], 'state', 'owner', 'n', 'attempts')
if h[1] ~= 'sending' or h[2] ~= ARGV[3] then return 'lost' end
local list = KEYS[4]
local state = ARGV[4]
local delivery = nil
if state == 'sent' and ARGV[8] ~= '0' then
  local held = redis.call('GET', KEYS[3])
  if held and KEYS[3] ~= KEYS[1] then
    redis.call('DEL', KEYS[3])
    if string.sub(held, 1, 1) == '1' then state, list = 'delivered', KEYS[5] else state, list = 'delivery_failed', KEYS[6] end
    delivery = string.sub(held, 3)
  end
end
redis.call('ZADD', list, ARGV[2], ARGV[1])
if string.sub(ARGV[1], -1) == '0' then redis.call('ZREMRANGEBYRANK', list, 0, -(tonumber(ARGV[12]) + 1)) end
-- One HSET of everything the outcome changes.
local fields = {'state', state, 'updated', ARGV[2], 'code', ARGV[6], 'reason', ARGV[7], 'next_at', ARGV[9], 'owner', '', 'lease', 0}
if delivery then fields[#fields + 1] = 'delivery'; fields[#fields + 1] = delivery end
if ARGV[5] == '1' then fields[#fields + 1] = 'n'; fields[#fields + 1] = (tonumber(h[3] or '0') or 0) + 1 end
if ARGV[8] ~= '0' then
  fields[#fields + 1] = 'msgid'; fields[#fields + 1] = ARGV[8]
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[11])
end
if ARGV[10] ~= '' then
  fields[#fields + 1] = 'attempts'
  if h[4] and h[4] ~= '' then fields[#fields + 1] = h[4] .. '\n' .. ARGV[10] else fields[#fields + 1] = ARGV[10] end
end
redis.call('HSET', KEYS[1], unpack(fields))
if KEYS[7] ~= KEYS[1] then
  local counter = ({sent = 'sent', delivered = 'sent', delivery_failed = 'sent', failed = 'failed', unknown = 'unknown', dead = 'dead'})[state]
  if counter and redis.call('EXISTS', KEYS[7]) == 1 then redis.call('HINCRBY', KEYS[7], counter, 1) end
end
if state ~= 'retrying' and state ~= 'sending' and state ~= 'queued' then redis.call('ZREM', KEYS[8], ARGV[1]) end
return 'ok'
";

// KEYS: job, jobs:unknown, jobs:dead. ARGV: id, now.
// Dead or unknown → queued (attempts kept; the count restarts); queued stays queued (its
// announcement may have been lost).
const REPLAY: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'queued' then return 'ok' end
if state ~= 'dead' and state ~= 'unknown' then return 'state:' .. state end
redis.call('ZREM', KEYS[({unknown = 2, dead = 3})[state]], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'queued', 'n', 0, 'code', 0, 'reason', '', 'next_at', 0, 'updated', ARGV[2])
return 'ok'
";

// KEYS: job, jobs:sent, jobs:{new}. ARGV: id, now, new state, delivery status, recent.
// Only a sent job takes a delivery report (a later report of the same msgid changes nothing).
const DELIVERED: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= 'sent' then return 'state:' .. state end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
if string.sub(ARGV[1], -1) == '0' then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[5]) + 1)) end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'delivery', ARGV[4], 'updated', ARGV[2])
return 'ok'
";

static CREATE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CREATE));
static ABANDON_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ABANDON));
static CLAIM_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM));
static SETTLE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SETTLE));
static REPLAY_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(REPLAY));
static DELIVERED_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(DELIVERED));
static TAKE_HELD_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(TAKE_HELD));
static FED_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FED));

/// The jobs of one store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Jobs {
    store: Store,
    ttl: Duration,
    idempotency_ttl: Duration,
    window: u32,
    most_held: u32,
}

/// A job id names its tenant: `{tenant}.{12 hex ms}{8 hex random}` (tenant ids have no dot).
pub fn new_id(tenant: &str, now_ms: i64) -> String {
    format!(
        "{tenant}.{:012x}{:08x}",
        now_ms.max(0),
        rand::random::<u32>()
    )
}

/// The tenant a job id names, if it is one.
pub fn tenant_of(id: &str) -> Option<&str> {
    let (tenant, rest) = id.split_once('.')?;
    (!tenant.is_empty()
        && rest.len() == 20
        && rest.bytes().all(|b| b.is_ascii_hexdigit())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    .then_some(tenant)
}

impl Jobs {
    /// Jobs on `store`, kept for `ttl`; idempotency keys for `idempotency_ttl`.
    pub fn new(store: Store, ttl: Duration, idempotency_ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            idempotency_ttl,
            window: 0,
            most_held: 0,
        }
    }

    /// At most `most_held` of a tenant's jobs held beyond its window; a create over it stores
    /// nothing ([`Created::OverHeld`]). 0 (the default): no cap. A held job is its full record
    /// (about 1.2 KB), so the cap bounds a runaway producer's Redis memory.
    #[must_use]
    pub fn with_most_held(mut self, most_held: u32) -> Self {
        self.most_held = most_held;
        self
    }

    /// At most `window` single-message jobs of a tenant announced and not final at once; 0
    /// (the default of [`Jobs::new`]): no window, every new job is announced by its creator.
    #[must_use]
    pub fn with_tenant_window(mut self, window: u32) -> Self {
        self.window = window;
        self
    }

    /// The tenant window (0: none).
    pub fn tenant_window(&self) -> u32 {
        self.window
    }

    fn idem_key(&self, tenant: &str, key: Option<&str>, job: &str) -> (String, bool) {
        match key {
            Some(k) => {
                let digest = hex::encode(Sha256::digest(k.as_bytes()));
                (self.store.keys(tenant).idempotency(&digest), true)
            }
            None => (self.store.keys(tenant).job(job), false),
        }
    }

    /// Stores `job` as `queued`, inside the tenant's window or held (campaign jobs are
    /// always [`Created::New`]; see the module docs).
    pub async fn create(&self, tenant: &str, job: &NewJob) -> Result<Created, StoreError> {
        self.create_as(tenant, job, false).await
    }

    /// [`Jobs::create`], storing nothing unless the tenant's authorizer `job.appid` is known
    /// and not revoked (when `check_authorizer` and `job.appid` is not empty): the Enqueue
    /// path's two reads in one script.
    pub async fn create_as(
        &self,
        tenant: &str,
        job: &NewJob,
        check_authorizer: bool,
    ) -> Result<Created, StoreError> {
        let mut created = self
            .create_all(tenant, std::slice::from_ref(job), check_authorizer)
            .await?;
        created.pop().ok_or_else(|| StoreError::Corrupt {
            key: CREATE_ANSWER.to_owned(),
            reason: "the create script answered nothing".into(),
        })
    }

    /// [`Jobs::create_as`] for each of `jobs` in order, one script call per
    /// [`CREATE_AT_ONCE`]: each job's outcome as if it had been created alone (a later job
    /// with an earlier one's idempotency key finds it [`Created::Existing`]).
    pub async fn create_all(
        &self,
        tenant: &str,
        jobs: &[NewJob],
        check_authorizers: bool,
    ) -> Result<Vec<Created>, StoreError> {
        let keys = self.store.keys(tenant);
        let mut created = Vec::with_capacity(jobs.len());
        let mut first_held = false;
        for chunk in jobs.chunks(CREATE_AT_ONCE) {
            let mut inv = CREATE_SCRIPT.prepare_invoke();
            inv.key(keys.jobs("all"))
                .key(keys.in_broker())
                .key(keys.held())
                .arg(px(self.ttl))
                .arg(px(self.idempotency_ttl))
                .arg(RECENT)
                .arg(self.most_held);
            for job in chunk {
                let (idem, has_idem) =
                    self.idem_key(tenant, job.idempotency_key.as_deref(), &job.id);
                inv.key(idem).key(keys.job(&job.id)).key(
                    if check_authorizers && !job.appid.is_empty() {
                        keys.authorizer(&job.appid)
                    } else {
                        keys.job(&job.id)
                    },
                );
                inv.arg(&job.id)
                    .arg(job.now_ms)
                    .arg(if has_idem { "1" } else { "0" })
                    .arg(if job.campaign.is_some() {
                        0
                    } else {
                        self.window
                    });
                for (k, v) in [
                    ("appid", job.appid.as_str()),
                    ("kind", &job.kind),
                    ("api", &job.api),
                    ("touser", &job.touser),
                    ("body", &job.body),
                    ("idem", job.idempotency_key.as_deref().unwrap_or("")),
                    ("campaign", job.campaign.as_deref().unwrap_or("")),
                ] {
                    inv.arg(k).arg(v);
                }
            }
            let mut conn = self.store.conn();
            let answers: Vec<(i64, String)> = inv.invoke_async(&mut conn).await?;
            if answers.len() != chunk.len() {
                return Err(StoreError::Corrupt {
                    key: CREATE_ANSWER.to_owned(),
                    reason: format!(
                        "the create script answered {} of {} jobs",
                        answers.len(),
                        chunk.len()
                    ),
                });
            }
            for (code, id) in answers {
                first_held |= code == 6;
                created.push(match code {
                    1 => Created::New,
                    2 | 6 => Created::Held,
                    3 => Created::UnknownAccount,
                    4 => Created::RevokedAccount,
                    5 => Created::OverHeld,
                    _ => Created::Existing(id),
                });
            }
        }
        if first_held {
            // The first held job: the feeder visits only the tenants marked (crate::busy).
            crate::busy::mark_after_write(&self.store, tenant).await;
        }
        Ok(created)
    }

    /// Moves held jobs of `tenant` into its window while it has room and returns the ids to
    /// announce: those, and any a feeder that stopped left unconfirmed. Call [`Jobs::fed`]
    /// with each id once its publish is confirmed. Run by one feeder per tenant at a time
    /// (two at once announce some jobs twice, which the claim makes harmless).
    pub async fn take_held(&self, tenant: &str, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let keys = self.store.keys(tenant);
        let mut inv = TAKE_HELD_SCRIPT.prepare_invoke();
        inv.key(keys.held())
            .key(keys.feeding())
            .key(keys.in_broker())
            .arg(self.window.max(1))
            .arg(now_ms)
            .arg(px(self.ttl));
        let mut conn = self.store.conn();
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Whether this caller feeds `tenant`'s held jobs this tick: one replica per `tick` (a
    /// guard key that expires with it).
    pub async fn claim_feed(&self, tenant: &str, tick: Duration) -> Result<bool, StoreError> {
        self.store.guard(tenant, "held", tick).await
    }

    /// Forgets `ids` from the feeding list: their announcements were confirmed.
    pub async fn fed(&self, tenant: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut inv = FED_SCRIPT.prepare_invoke();
        inv.key(self.store.keys(tenant).feeding());
        for id in ids {
            inv.arg(id);
        }
        let mut conn = self.store.conn();
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// How many of `tenant`'s jobs are held, in its window, and being fed (one round trip).
    pub async fn window_counts(&self, tenant: &str) -> Result<(u64, u64, u64), StoreError> {
        let keys = self.store.keys(tenant);
        let mut conn = self.store.conn();
        Ok(redis::pipe()
            .cmd("LLEN")
            .arg(keys.held())
            .cmd("ZCARD")
            .arg(keys.in_broker())
            .cmd("LLEN")
            .arg(keys.feeding())
            .query_async(&mut conn)
            .await?)
    }

    /// Removes a job whose publish failed (and frees its idempotency key).
    pub async fn abandon(
        &self,
        tenant: &str,
        id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<(), StoreError> {
        let keys = self.store.keys(tenant);
        let (idem, has_idem) = self.idem_key(tenant, idempotency_key, id);
        let mut inv = ABANDON_SCRIPT.prepare_invoke();
        inv.key(idem)
            .key(keys.job(id))
            .key(keys.jobs("all"))
            .key(keys.in_broker())
            .arg(id)
            .arg(if has_idem { "1" } else { "0" });
        let mut conn = self.store.conn();
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Claims job `id` for a send by `owner` until `lease_until_ms` (see [`Claim`]). A job of
    /// `campaign` (empty: none) that is cancelled becomes [`JobState::Cancelled`] instead
    /// (`Claim::Done`).
    pub async fn claim(
        &self,
        tenant: &str,
        id: &str,
        campaign: &str,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Claim, StoreError> {
        let gate = SendGate::default();
        let (claim, _) = self
            .claim_to_send(tenant, id, campaign, gate, owner, now_ms, lease_until_ms)
            .await?;
        Ok(claim)
    }

    /// [`Jobs::claim`] for a send, in the same step as what else must allow it: refused while
    /// the `gate`'s (account, API) pair is parked (`Claim::Parked`), and taking one unit from
    /// each of its limiter buckets, all or none (`Claim::Limited`, nothing taken) — the
    /// sender's park check, rate limit and claim in one round trip. A job that is not
    /// claimable (busy, final, cancelled) takes no unit. When claimed (or stale) the job's
    /// record as stored comes with it (`sending`, without its attempts), so a sender that knew
    /// its route need not read it first.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_to_send(
        &self,
        tenant: &str,
        id: &str,
        campaign: &str,
        gate: SendGate<'_>,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<(Claim, Option<JobRecord>), StoreError> {
        let keys = self.store.keys(tenant);
        let mut inv = CLAIM_SCRIPT.prepare_invoke();
        inv.key(keys.job(id))
            .key(keys.jobs(JobState::Retrying.as_str()))
            .key(keys.jobs(JobState::Cancelled.as_str()))
            .key(if campaign.is_empty() {
                keys.job(id)
            } else {
                keys.campaign(campaign)
            });
        inv.key(match gate.park {
            Some((appid, api)) => keys.park(appid, api),
            None => keys.job(id),
        });
        inv.arg(id)
            .arg(now_ms)
            .arg(owner)
            .arg(lease_until_ms)
            .arg(RECENT);
        if !gate.buckets.is_empty()
            && crate::limiter::add_buckets(&mut inv, &keys, gate.buckets, 1).is_none()
        {
            // An unusable rate refuses (rates are checked when the config loads).
            return Ok((Claim::Limited(Duration::ZERO), None));
        }
        let mut conn = self.store.conn();
        let (answer, n, left, fields): (String, i64, i64, Vec<String>) =
            inv.invoke_async(&mut conn).await?;
        let attempts_made = u32::try_from(n).unwrap_or(0);
        let record = (fields.len() == 8).then(|| {
            let [appid, kind, api, touser, body, campaign, idem, created]: [String; 8] =
                fields.try_into().unwrap_or_default();
            JobRecord {
                id: id.to_owned(),
                tenant: tenant.to_owned(),
                appid,
                kind,
                api,
                touser,
                body,
                state: JobState::Sending,
                attempts_made,
                idempotency_key: idem,
                created_at_ms: created.parse().unwrap_or(0),
                updated_at_ms: now_ms,
                campaign,
                ..JobRecord::default()
            }
        });
        let claim = match answer.as_str() {
            "claimed" => Claim::Claimed { attempts_made },
            "parked" => Claim::Parked(Duration::from_millis(u64::try_from(left).unwrap_or(0))),
            "limited" => Claim::Limited(Duration::from_micros(u64::try_from(left).unwrap_or(0))),
            "stale" => Claim::Stale { attempts_made },
            "busy" => Claim::Busy,
            "missing" => Claim::Missing,
            other => {
                let state = other.strip_prefix("done:").and_then(JobState::parse);
                match state {
                    Some(s) => Claim::Done(s),
                    None => {
                        return Err(StoreError::Corrupt {
                            key: keys.job(id),
                            reason: format!("claim answered {other:?}"),
                        });
                    }
                }
            }
        };
        Ok((claim, record))
    }

    /// Records the outcome of `owner`'s send of job `id` of account `appid`.
    pub async fn settle(
        &self,
        tenant: &str,
        id: &str,
        appid: &str,
        owner: &str,
        s: &Settle,
    ) -> Result<Settled, StoreError> {
        let keys = self.store.keys(tenant);
        let (msgid_key, report_key) = if s.msgid != 0 {
            (keys.msgid(appid, s.msgid), keys.report(appid, s.msgid))
        } else {
            (keys.job(id), keys.job(id))
        };
        let attempt = match &s.attempt {
            Some(a) => serde_json::to_string(a).unwrap_or_default(),
            None => String::new(),
        };
        let mut inv = SETTLE_SCRIPT.prepare_invoke();
        inv.key(keys.job(id))
            .key(msgid_key)
            .key(report_key)
            .key(keys.jobs(s.state.as_str()))
            .key(keys.jobs(JobState::Delivered.as_str()))
            .key(keys.jobs(JobState::DeliveryFailed.as_str()))
            .key(if s.campaign.is_empty() {
                keys.job(id)
            } else {
                keys.campaign(&s.campaign)
            })
            .key(keys.in_broker());
        inv.arg(id)
            .arg(s.now_ms)
            .arg(owner)
            .arg(s.state.as_str())
            .arg(if s.count_attempt { "1" } else { "0" })
            .arg(s.errcode)
            .arg(&s.reason)
            .arg(s.msgid)
            .arg(s.next_at_ms)
            .arg(attempt)
            .arg(px(self.ttl))
            .arg(RECENT);
        let mut conn = self.store.conn();
        let answer: String = inv.invoke_async(&mut conn).await?;
        Ok(if answer == "ok" {
            Settled::Ok
        } else {
            Settled::Lost
        })
    }

    /// Queues a dead or unknown job again (a queued one stays queued, to be announced again).
    /// `Ok(None)` if it is replayed, else the state that
    /// refused it (`None` inside: no such job).
    pub async fn replay(
        &self,
        tenant: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<Option<JobState>>, StoreError> {
        let keys = self.store.keys(tenant);
        let mut inv = REPLAY_SCRIPT.prepare_invoke();
        inv.key(keys.job(id))
            .key(keys.jobs(JobState::Unknown.as_str()))
            .key(keys.jobs(JobState::Dead.as_str()))
            .arg(id)
            .arg(now_ms);
        let mut conn = self.store.conn();
        let answer: String = inv.invoke_async(&mut conn).await?;
        Ok(match answer.as_str() {
            "ok" => None,
            "missing" => Some(None),
            other => Some(other.strip_prefix("state:").and_then(JobState::parse)),
        })
    }

    /// The job WeChat's `msgid` of account `appid` belongs to.
    pub async fn by_msgid(
        &self,
        tenant: &str,
        appid: &str,
        msgid: i64,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.store.conn();
        Ok(redis::cmd("GET")
            .arg(self.store.keys(tenant).msgid(appid, msgid))
            .query_async(&mut conn)
            .await?)
    }

    /// Records WeChat's delivery report of a sent job: `delivered` or `delivery_failed` with
    /// its status text. Returns whether the job took it (only a `sent` job does).
    pub async fn delivered(
        &self,
        tenant: &str,
        id: &str,
        ok: bool,
        status: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let keys = self.store.keys(tenant);
        let state = if ok {
            JobState::Delivered
        } else {
            JobState::DeliveryFailed
        };
        let mut inv = DELIVERED_SCRIPT.prepare_invoke();
        inv.key(keys.job(id))
            .key(keys.jobs(JobState::Sent.as_str()))
            .key(keys.jobs(state.as_str()))
            .arg(id)
            .arg(now_ms)
            .arg(state.as_str())
            .arg(status)
            .arg(RECENT);
        let mut conn = self.store.conn();
        let answer: String = inv.invoke_async(&mut conn).await?;
        Ok(answer == "ok")
    }

    /// Keeps a delivery report whose msgid no job holds yet (its send is still being recorded,
    /// or was resent after an unknown outcome) for `ttl`: the job takes it when it is
    /// recorded sent.
    pub async fn hold_report(
        &self,
        tenant: &str,
        appid: &str,
        msgid: i64,
        ok: bool,
        status: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.store.conn();
        let _: () = redis::cmd("SET")
            .arg(self.store.keys(tenant).report(appid, msgid))
            .arg(format!("{}:{status}", if ok { 1 } else { 0 }))
            .arg("PX")
            .arg(px(ttl))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The routing fields (account, kind, API, recipient, campaign) of each of `ids`, in one
    /// round trip: what a feeder announcing held jobs puts in their `SendJob`s, so that their
    /// senders claim without reading them first. `None` for a job that is gone.
    pub async fn routes(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<Option<JobRecord>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.store.keys(tenant);
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(keys.job(id))
                .arg(&["appid", "kind", "api", "touser", "campaign"]);
        }
        let mut conn = self.store.conn();
        let rows: Vec<Vec<Option<String>>> = pipe.query_async(&mut conn).await?;
        Ok(ids
            .iter()
            .zip(rows)
            .map(|(id, row)| {
                let [appid, kind, api, touser, campaign]: [Option<String>; 5] =
                    row.try_into().ok()?;
                Some(JobRecord {
                    id: id.clone(),
                    tenant: tenant.to_owned(),
                    appid: appid.unwrap_or_default(),
                    kind: kind?,
                    api: api?,
                    touser: touser.unwrap_or_default(),
                    campaign: campaign.unwrap_or_default(),
                    ..JobRecord::default()
                })
            })
            .collect())
    }

    /// One job with its attempts.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let keys = self.store.keys(tenant);
        let mut conn = self.store.conn();
        // The attempts list is where records written before the attempts moved into the
        // record's `attempts` field keep theirs.
        let (map, attempts): (HashMap<String, String>, Vec<String>) = redis::pipe()
            .cmd("HGETALL")
            .arg(keys.job(id))
            .cmd("LRANGE")
            .arg(keys.job_attempts(id))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        parse(tenant, id, &keys.job(id), &map, &attempts).map(Some)
    }

    /// The newest `limit` jobs of `tenant` (in `state`, or all), newest first.
    pub async fn list(
        &self,
        tenant: &str,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let ids = match state {
            Some(s) if !s.is_indexed() => self.newest_in(tenant, s, limit.max(1)).await?,
            _ => {
                let list = self
                    .store
                    .keys(tenant)
                    .jobs(state.map_or("all", JobState::as_str));
                let mut conn = self.store.conn();
                redis::cmd("ZREVRANGE")
                    .arg(&list)
                    .arg(0)
                    .arg(limit.max(1) - 1)
                    .query_async(&mut conn)
                    .await?
            }
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            // A list entry may outlive its record (records expire).
            if let Some(job) = self.get(tenant, &id).await?
                && state.is_none_or(|s| s == job.state)
            {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// The newest `limit` ids of `tenant`'s jobs in `state`, a state without a list of its own:
    /// the states of its newest jobs (`all`) read a page at a time, [`RECENT`] jobs at most.
    async fn newest_in(
        &self,
        tenant: &str,
        state: JobState,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        const PAGE: usize = 500;
        let keys = self.store.keys(tenant);
        let all = keys.jobs("all");
        let mut conn = self.store.conn();
        let mut found = Vec::new();
        let mut start = 0;
        while found.len() < limit && start < RECENT {
            let ids: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(&all)
                .arg(start)
                .arg(start + PAGE - 1)
                .query_async(&mut conn)
                .await?;
            if ids.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HGET").arg(keys.job(id)).arg("state");
            }
            let states: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
            found.extend(
                ids.into_iter()
                    .zip(states)
                    .filter(|(_, st)| st.as_deref() == Some(state.as_str()))
                    .map(|(id, _)| id),
            );
            start += PAGE;
        }
        found.truncate(limit);
        Ok(found)
    }

    /// Parks the (account, API) pair for `duration`: nothing is sent to it meanwhile.
    pub async fn park(
        &self,
        tenant: &str,
        appid: &str,
        api: &str,
        duration: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.store.conn();
        let _: () = redis::cmd("SET")
            .arg(self.store.keys(tenant).park(appid, api))
            .arg("45009")
            .arg("PX")
            .arg(px(duration))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// How long the pair stays parked, if it is.
    pub async fn parked(
        &self,
        tenant: &str,
        appid: &str,
        api: &str,
    ) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.store.conn();
        let ms: i64 = redis::cmd("PTTL")
            .arg(self.store.keys(tenant).park(appid, api))
            .query_async(&mut conn)
            .await?;
        Ok((ms > 0).then(|| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
    }
}

impl NewJob {
    /// The record of this job as [`Jobs::create`] stored it (queued, no attempt yet): what a
    /// caller answers without reading it back.
    pub fn record(&self, tenant: &str) -> JobRecord {
        JobRecord {
            id: self.id.clone(),
            tenant: tenant.to_owned(),
            appid: self.appid.clone(),
            kind: self.kind.clone(),
            api: self.api.clone(),
            touser: self.touser.clone(),
            body: self.body.clone(),
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            created_at_ms: self.now_ms,
            updated_at_ms: self.now_ms,
            campaign: self.campaign.clone().unwrap_or_default(),
            ..JobRecord::default()
        }
    }
}

fn parse(
    tenant: &str,
    id: &str,
    key: &str,
    map: &HashMap<String, String>,
    attempts: &[String],
) -> Result<JobRecord, StoreError> {
    let text = |f: &str| map.get(f).cloned().unwrap_or_default();
    let num = |f: &str| -> i64 { map.get(f).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let state = JobState::parse(&text("state")).ok_or_else(|| StoreError::Corrupt {
        key: key.to_owned(),
        reason: "unknown state".into(),
    })?;
    Ok(JobRecord {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        appid: text("appid"),
        kind: text("kind"),
        api: text("api"),
        touser: text("touser"),
        body: text("body"),
        state,
        attempts_made: u32::try_from(num("n")).unwrap_or(0),
        next_at_ms: num("next_at"),
        errcode: num("code"),
        reason: text("reason"),
        msgid: num("msgid"),
        delivery: text("delivery"),
        idempotency_key: text("idem"),
        created_at_ms: num("created"),
        updated_at_ms: num("updated"),
        attempts: attempts
            .iter()
            .map(String::as_str)
            .chain(map.get("attempts").map_or("", String::as_str).lines())
            .filter_map(|a| serde_json::from_str(a).ok())
            .collect(),
        campaign: text("campaign"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_tenant() {
        let id = new_id("acme-2", 1_700_000_000_000);
        assert_eq!(tenant_of(&id), Some("acme-2"));
        for bad in ["", "acme", ".0123", "acme.xyz", "ACME.0123456789abcdef0123"] {
            assert_eq!(tenant_of(bad), None, "{bad}");
        }
        assert!(JobState::Sent.is_final() && !JobState::Retrying.is_final());
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
    }
}
