//! Authorizer records of a component tenant: status, the authorizer_refresh_token with the
//! fence it was written under, permission sets, times and profile; plus an index for paging.
//!
//! The refresh token is the one credential that cannot be re-fetched from a secret, so every
//! write is fenced: a writer takes a fence *before* its WeChat call and the store keeps the
//! value of the newest fence (reliability.md P4). Status changes carry the time of the event
//! that caused them and an older event never overrides a newer one, so a late `unauthorized`
//! cannot revoke a re-authorization and a late `authorized` cannot resurrect a revocation. No
//! event can push that order into the future: one dated more than the skew
//! ([`Store::with_create_time_skew`]) after the caller's clock is refused, and a stored time
//! that far ahead orders nothing, so a forged far-future notice cannot lock out real ones.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Script;
use wxhub_domain::Secret;

use crate::credentials::corrupt;
use crate::{Store, StoreError};

/// Whether the account currently authorizes the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizerStatus {
    Authorized,
    /// De-authorized (`unauthorized` event, 61003) or its refresh token became unrecoverable.
    Revoked,
}

impl AuthorizerStatus {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizerStatus::Authorized => "authorized",
            AuthorizerStatus::Revoked => "revoked",
        }
    }
}

/// The account's profile from `api_get_authorizer_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub nick_name: String,
    pub user_name: String,
    pub principal_name: String,
    pub head_img: String,
    pub service_type: Option<i64>,
    pub verify_type: Option<i64>,
    pub is_mini_program: bool,
}

/// One authorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerRecord {
    pub appid: String,
    pub status: AuthorizerStatus,
    pub refresh_token: Option<Secret>,
    /// Fence of the write that stored the refresh token.
    pub refresh_fence: u64,
    pub func_info: Vec<u32>,
    /// When it (last) became authorized (ms).
    pub authorized_at_ms: i64,
    /// Last change (ms).
    pub updated_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    /// Why it was revoked (`unauthorized`, `refresh_token_invalid`, `deauthorized`).
    pub revoked_reason: Option<String>,
    /// Time of the event behind the current status (ms).
    pub status_at_ms: i64,
    pub profile: Profile,
}

/// An authorization to record (code exchange or `authorized`/`updateauthorized`).
#[derive(Debug, Clone)]
pub struct Authorization<'a> {
    pub appid: &'a str,
    /// Time of the event (the notice's CreateTime, or now for a redirect exchange), ms.
    pub event_ms: i64,
    pub now_ms: i64,
    /// Fence taken before the WeChat call that returned `refresh_token`.
    pub fence: u64,
    pub refresh_token: Option<&'a Secret>,
    pub func_info: &'a [u32],
}

/// An entry of `api_get_authorizer_list` to reconcile.
#[derive(Debug, Clone)]
pub struct Listed<'a> {
    pub appid: &'a str,
    pub refresh_token: Option<&'a Secret>,
    /// Where to put its first refresh if it has no schedule entry yet (ms).
    pub due_ms: i64,
}

/// What a reconcile batch changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileCounts {
    /// Records created or re-authorized.
    pub authorized: u64,
    /// Refresh tokens stored (missing or different before).
    pub refresh_tokens: u64,
}

/// Authorizer storage for one namespace.
#[derive(Debug, Clone)]
pub struct Authorizers {
    store: Store,
}

// Ordering by event time: an event dated more than the skew after `now` is refused, and a
// stored `status_at` that far ahead (forged, written before this rule) counts as absent, so it
// cannot hold back real events — `now + skew` moves on with the clock and a real event is
// always within it. Times compare by the second: notices carry whole seconds while a reconcile
// or a redirect exchange is stamped in ms, so a real `unauthorized` in the same second as a
// reconcile would otherwise count as older and be dropped; within one second the event applied
// last wins.

/// KEYS: authorizer, index. ARGV: appid, event ms, now, fence, refresh token, func, skew.
/// Returns 1 when the status was applied, plus 2 when the refresh token was stored. An event
/// older than the stored status does not change it, but while that newer status is
/// `authorized` its refresh token (fenced like any other) is still kept: a reconcile that
/// listed the account before its code was exchanged has none.
static AUTHORIZE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cap = tonumber(ARGV[3]) + tonumber(ARGV[7])
if tonumber(ARGV[2]) > cap then return 0 end
local status_at = tonumber(redis.call('HGET', KEYS[1], 'status_at') or '-1')
if status_at > cap then status_at = -1 end
local applied = 1
if math.floor(tonumber(ARGV[2]) / 1000) < math.floor(status_at / 1000) then
  if redis.call('HGET', KEYS[1], 'status') ~= 'authorized' then return 0 end
  applied = 0
else
  if redis.call('HGET', KEYS[1], 'status') ~= 'authorized' then
    redis.call('HSET', KEYS[1], 'authorized_at', ARGV[3])
    redis.call('HDEL', KEYS[1], 'revoked_at', 'reason')
  end
  redis.call('HSET', KEYS[1], 'appid', ARGV[1], 'status', 'authorized', 'status_at', ARGV[2],
    'updated_at', ARGV[3], 'func', ARGV[6])
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
end
local stored = 0
if ARGV[5] ~= '' then
  local rfence = tonumber(redis.call('HGET', KEYS[1], 'rfence') or '0')
  if tonumber(ARGV[4]) >= rfence then
    redis.call('HSET', KEYS[1], 'rt', ARGV[5], 'rfence', ARGV[4])
    stored = 2
  end
end
return applied + stored
",
    )
});

/// KEYS: authorizer, access token, jsapi ticket, schedule.
/// ARGV: appid, event ms, now, reason, access member, jsapi member, skew.
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cap = tonumber(ARGV[3]) + tonumber(ARGV[7])
if tonumber(ARGV[2]) > cap then return 0 end
local status_at = tonumber(redis.call('HGET', KEYS[1], 'status_at') or '-1')
if status_at > cap then status_at = -1 end
if math.floor(tonumber(ARGV[2]) / 1000) < math.floor(status_at / 1000) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'revoked', 'status_at', ARGV[2], 'revoked_at', ARGV[3],
  'updated_at', ARGV[3], 'reason', ARGV[4])
redis.call('HDEL', KEYS[1], 'rt')
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[5], ARGV[6])
return 1
",
    )
});

/// KEYS: index, schedule, authorizer keys... ARGV: event ms, now, fence, skew, then per entry
/// (appid, refresh token, due).
static RECONCILE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local authorized, refreshed = 0, 0
local event, now, fence = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local cap = tonumber(now) + tonumber(ARGV[4])
for i = 3, #KEYS do
  local j = 5 + (i - 3) * 3
  local appid, rt, due = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  local k = KEYS[i]
  local status_at = tonumber(redis.call('HGET', k, 'status_at') or '-1')
  if status_at > cap then status_at = -1 end
  if event <= cap and math.floor(event / 1000) >= math.floor(status_at / 1000) then
    if redis.call('HGET', k, 'status') ~= 'authorized' then
      redis.call('HSET', k, 'appid', appid, 'status', 'authorized', 'status_at', ARGV[1],
        'authorized_at', now, 'updated_at', now)
      redis.call('HDEL', k, 'revoked_at', 'reason')
      authorized = authorized + 1
    end
    if rt ~= '' then
      local current = redis.call('HGET', k, 'rt')
      local rfence = tonumber(redis.call('HGET', k, 'rfence') or '0')
      if current ~= rt and fence >= rfence then
        redis.call('HSET', k, 'rt', rt, 'rfence', fence, 'updated_at', now)
        refreshed = refreshed + 1
      end
    end
    redis.call('ZADD', KEYS[1], 0, appid)
    if redis.call('HEXISTS', k, 'rt') == 1 then
      redis.call('ZADD', KEYS[2], 'NX', due, 'authorizer:' .. appid)
    end
  end
end
return {authorized, refreshed}
",
    )
});

/// KEYS: authorizer. ARGV: field/value pairs. Only touches an existing record.
static PROFILE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
",
    )
});

fn func_to_string(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn parse(key: &str, map: &HashMap<String, String>) -> Result<AuthorizerRecord, StoreError> {
    let num = |field: &str| -> Result<i64, StoreError> {
        map.get(field).map_or(Ok(0), |v| {
            v.parse()
                .map_err(|_| corrupt(key, format!("{field} is not a number")))
        })
    };
    let opt_num = |field: &str| map.get(field).and_then(|v| v.parse::<i64>().ok());
    let text = |field: &str| map.get(field).cloned().unwrap_or_default();
    let status = match map.get("status").map(String::as_str) {
        Some("authorized") => AuthorizerStatus::Authorized,
        Some("revoked") => AuthorizerStatus::Revoked,
        _ => return Err(corrupt(key, "missing or unknown status")),
    };
    Ok(AuthorizerRecord {
        appid: map
            .get("appid")
            .cloned()
            .ok_or_else(|| corrupt(key, "missing appid"))?,
        status,
        refresh_token: map
            .get("rt")
            .filter(|v| !v.is_empty())
            .map(|v| Secret::new(v.clone())),
        refresh_fence: u64::try_from(num("rfence")?).unwrap_or(0),
        func_info: map
            .get("func")
            .map(|f| f.split(',').filter_map(|id| id.parse().ok()).collect())
            .unwrap_or_default(),
        authorized_at_ms: num("authorized_at")?,
        updated_at_ms: num("updated_at")?,
        revoked_at_ms: opt_num("revoked_at"),
        revoked_reason: map.get("reason").cloned(),
        status_at_ms: num("status_at")?,
        profile: Profile {
            nick_name: text("nick"),
            user_name: text("user_name"),
            principal_name: text("principal"),
            head_img: text("head_img"),
            service_type: opt_num("service_type"),
            verify_type: opt_num("verify_type"),
            is_mini_program: map.get("mp").is_some_and(|v| v == "1"),
        },
    })
}

impl Authorizers {
    /// Authorizer storage on `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// One record.
    pub async fn get(
        &self,
        tenant: &str,
        appid: &str,
    ) -> Result<Option<AuthorizerRecord>, StoreError> {
        let key = self.store.keys(tenant).authorizer(appid);
        let mut conn = self.store.conn();
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        parse(&key, &map).map(Some)
    }

    /// A page of records in appid order, starting after `after`; the second value is the
    /// cursor of the next page (`None` at the end).
    pub async fn list(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AuthorizerRecord>, Option<String>), StoreError> {
        let keys = self.store.keys(tenant);
        let limit = limit.clamp(1, 1000);
        let start = match after {
            Some(a) if !a.is_empty() => format!("({a}"),
            _ => "-".to_owned(),
        };
        let mut conn = self.store.conn();
        let appids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys.authorizers())
            .arg(&start)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut conn)
            .await?;
        let more = appids.len() > limit;
        let page = &appids[..appids.len().min(limit)];
        let mut pipe = redis::pipe();
        for appid in page {
            pipe.hgetall(keys.authorizer(appid));
        }
        let maps: Vec<HashMap<String, String>> = if page.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await?
        };
        let mut records = Vec::with_capacity(maps.len());
        for (appid, map) in page.iter().zip(maps) {
            if map.is_empty() {
                continue;
            }
            records.push(parse(&keys.authorizer(appid), &map)?);
        }
        let next = if more { page.last().cloned() } else { None };
        Ok((records, next))
    }

    /// Number of records in the index.
    pub async fn count(&self, tenant: &str) -> Result<u64, StoreError> {
        let mut conn = self.store.conn();
        Ok(redis::cmd("ZCARD")
            .arg(self.store.keys(tenant).authorizers())
            .query_async(&mut conn)
            .await?)
    }

    /// Records an authorization; returns `(applied, refresh_token_stored)`. Not applied when a
    /// newer event already set the status or the event is dated beyond the skew; the refresh
    /// token is kept when a newer fence wrote the stored one, and stored even when the status
    /// is not applied if that newer status is `authorized` (a reconcile may have listed the
    /// account, without a refresh token, before its code was exchanged).
    pub async fn authorize(
        &self,
        tenant: &str,
        a: &Authorization<'_>,
    ) -> Result<(bool, bool), StoreError> {
        let keys = self.store.keys(tenant);
        let mut conn = self.store.conn();
        let n: i64 = AUTHORIZE
            .key(keys.authorizer(a.appid))
            .key(keys.authorizers())
            .arg(a.appid)
            .arg(a.event_ms)
            .arg(a.now_ms)
            .arg(a.fence)
            .arg(a.refresh_token.map_or("", Secret::expose))
            .arg(func_to_string(a.func_info))
            .arg(self.store.create_time_skew_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok((n & 1 == 1, n & 2 == 2))
    }

    /// Marks the authorizer revoked (unless a newer event says otherwise, or the event is dated
    /// beyond the skew), forgets its refresh
    /// token and drops its access token and JS-SDK ticket with their schedule entries.
    /// Returns whether it changed anything.
    pub async fn revoke(
        &self,
        tenant: &str,
        appid: &str,
        event_ms: i64,
        now_ms: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let keys = self.store.keys(tenant);
        let access = format!("authorizer:{appid}");
        let jsapi = format!("jsapi:{appid}");
        let mut conn = self.store.conn();
        let n: i64 = REVOKE
            .key(keys.authorizer(appid))
            .key(keys.token(&access))
            .key(keys.token(&jsapi))
            .key(keys.schedule())
            .arg(appid)
            .arg(event_ms)
            .arg(now_ms)
            .arg(reason)
            .arg(&access)
            .arg(&jsapi)
            .arg(self.store.create_time_skew_ms())
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Applies one page of `api_get_authorizer_list` (fetched at `event_ms`, with `fence` taken
    /// before the fetch): unknown accounts are created, revoked ones listed again are
    /// re-authorized (if the list is newer than the revocation), missing or different refresh
    /// tokens are stored unless a newer fence wrote them, and accounts with a refresh token get
    /// a schedule entry if they have none.
    pub async fn reconcile(
        &self,
        tenant: &str,
        event_ms: i64,
        now_ms: i64,
        fence: u64,
        page: &[Listed<'_>],
    ) -> Result<ReconcileCounts, StoreError> {
        if page.is_empty() {
            return Ok(ReconcileCounts::default());
        }
        let keys = self.store.keys(tenant);
        let mut invocation = RECONCILE.key(keys.authorizers());
        invocation.key(keys.schedule());
        invocation
            .arg(event_ms)
            .arg(now_ms)
            .arg(fence)
            .arg(self.store.create_time_skew_ms());
        for entry in page {
            invocation.key(keys.authorizer(entry.appid));
            invocation
                .arg(entry.appid)
                .arg(entry.refresh_token.map_or("", Secret::expose))
                .arg(entry.due_ms);
        }
        let mut conn = self.store.conn();
        let (authorized, refresh_tokens): (u64, u64) = invocation.invoke_async(&mut conn).await?;
        Ok(ReconcileCounts {
            authorized,
            refresh_tokens,
        })
    }

    /// Stores the profile of an existing record.
    pub async fn set_profile(
        &self,
        tenant: &str,
        appid: &str,
        profile: &Profile,
    ) -> Result<bool, StoreError> {
        let key = self.store.keys(tenant).authorizer(appid);
        let mut invocation = PROFILE.key(key);
        invocation
            .arg("nick")
            .arg(&profile.nick_name)
            .arg("user_name")
            .arg(&profile.user_name)
            .arg("principal")
            .arg(&profile.principal_name)
            .arg("head_img")
            .arg(&profile.head_img)
            .arg("mp")
            .arg(if profile.is_mini_program { "1" } else { "0" });
        if let Some(t) = profile.service_type {
            invocation.arg("service_type").arg(t);
        }
        if let Some(t) = profile.verify_type {
            invocation.arg("verify_type").arg(t);
        }
        let mut conn = self.store.conn();
        let n: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(n == 1)
    }
}
