//! Rate limits that hold across every replica: a GCRA (generic cell rate algorithm) bucket per
//! key in Redis, checked and updated by one Lua script.
//!
//! Guarantee: over any interval `t`, a bucket admits at most `burst + count·t/period` units,
//! whichever replica asks, and a refused request consumes nothing. [`Limiter::acquire`] takes
//! a cost from several buckets of one tenant at once, all or none (e.g. per client address and
//! per tenant; later per authorizer and API, and per openid), so a request refused by one bucket
//! does not drain the others.
//!
//! How it is kept:
//! - Each bucket is one string key, `Keys::limit(subject)`: its theoretical arrival time (TAT,
//!   µs). A request of cost `c` fits when `TAT + c·T − burst·T ≤ now` (`T = period/count`);
//!   admitting it moves TAT to `max(TAT, now) + c·T`. The key expires when TAT is reached (the
//!   bucket is full again), so idle buckets cost no memory.
//! - `now` is Redis's own `TIME`, not the caller's clock: replicas with skewed clocks share one
//!   timeline.
//! - All keys of one call are under the tenant's hash tag, so the script is legal on a cluster.
//!
//! What a caller does when Redis is unreachable is its own decision (the error is returned,
//! nothing is assumed): the authorization pages refuse (503) rather than run unmetered.

use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wxhub_domain::ConfigError;

use crate::{Store, StoreError};

/// `count` units per `period_ms`, with up to `burst` units at once from a full bucket (as a
/// config value: a key it does not know is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub count: u32,
    pub period_ms: u64,
    pub burst: u32,
}

impl Rate {
    /// `count` per minute, bursts of `burst`.
    pub fn per_minute(count: u32, burst: u32) -> Self {
        Self {
            count,
            period_ms: 60_000,
            burst,
        }
    }

    /// Why this rate is unusable (`what` names it in the message), if it is.
    pub fn check(&self, what: &str) -> Result<(), String> {
        match self.problem() {
            Some(problem) => Err(format!("{what}: {problem}")),
            None => Ok(()),
        }
    }

    /// [`Rate::check`] for the config key `key`.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        match self.problem() {
            Some(problem) => Err(ConfigError::value(key, problem)),
            None => Ok(()),
        }
    }

    fn problem(&self) -> Option<&'static str> {
        if self.count == 0 || self.burst == 0 || self.period_ms == 0 {
            return Some("count, period_ms and burst must all be positive");
        }
        // A day at most, an emission interval of at least 1 µs, and a bounded bucket (its
        // key's expiry is burst × interval).
        if self.period_ms > 86_400_000 || self.period_ms * 1000 < u64::from(self.count) {
            return Some("period_ms must be within 1..=86400000 and allow at most 1000 per ms");
        }
        if self.burst > 1_000_000 {
            return Some("burst must be at most 1000000");
        }
        None
    }

    /// The emission interval `T` in µs (at least 1).
    fn interval_us(&self) -> u64 {
        (self.period_ms.saturating_mul(1000) / u64::from(self.count.max(1))).max(1)
    }
}

/// The answer of [`Limiter::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Taken from every bucket; `remaining` is what the emptiest bucket still admits now.
    Allowed { remaining: u32 },
    /// Nothing was taken. `bucket` is the index (in the call's list) of a bucket that refused
    /// (the one that needs the longest wait); `retry_after` is when all of them would admit.
    Limited {
        bucket: usize,
        retry_after: Duration,
    },
}

/// The GCRA rule as a Lua function, for every script that takes units: [`ACQUIRE`] alone, and
/// the jobs' claim, which takes a send's units in the same step as its lease (`crate::jobs`).
/// `gcra(first, last, argv)` takes `ARGV[argv]` units from each bucket `KEYS[first..=last]`
/// (each bucket's interval T in µs and burst follow the cost, in order), all or none, and
/// returns {1, remaining, 0} or {0, retry_after_us, the refusing bucket (1-based among them)}.
/// A script that uses it starts with it (`concat!`), which also turns on effects replication
/// before any write (needed after `TIME` before Redis 5).
macro_rules! gcra_lua {
    () => {
        r"
-- gcra fragment
if redis.replicate_commands then redis.replicate_commands() end
local function gcra(first, last, argv)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local cost = tonumber(ARGV[argv])
  local wait, worst, remaining = 0, 0, nil
  local tats = {}
  for i = first, last do
    local key = KEYS[i]
    local j = argv + 2 * (i - first) + 1
    local interval = tonumber(ARGV[j])
    local burst = tonumber(ARGV[j + 1])
    local tat = tonumber(redis.call('GET', key) or '0') or 0
    if tat < now then tat = now end
    local new_tat = tat + cost * interval
    local allow_at = new_tat - burst * interval
    if allow_at > now then
      if allow_at - now > wait then wait, worst = allow_at - now, i - first + 1 end
    else
      tats[i] = new_tat
      local left = math.floor((now - allow_at) / interval)
      if remaining == nil or left < remaining then remaining = left end
    end
  end
  if worst > 0 then return {0, wait, worst} end
  for i = first, last do
    local key = KEYS[i]
    local ttl = math.ceil((tats[i] - now) / 1000)
    if ttl < 1 then ttl = 1 end
    redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', ttl)
  end
  return {1, remaining or 0, 0}
end
"
    };
}
pub(crate) use gcra_lua;

/// KEYS: the buckets. ARGV: cost, then per bucket its interval T (µs) and burst.
/// Returns {allowed (1|0), retry_after_us or remaining, refusing bucket (1-based) or 0}.
const ACQUIRE: &str = concat!(
    gcra_lua!(),
    r"
-- after gcra
return gcra(1, #KEYS, 1)
"
);

static ACQUIRE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ACQUIRE));

/// KEYS: one bucket. ARGV: the most units wanted, its interval T (µs), its burst.
/// Takes `min(wanted, what fits now)` units (the fit rule of [`ACQUIRE`]) and returns
/// {taken, 0}, or {0, retry_after_us} when not even one unit fits (then nothing is taken).
const TAKE_UP_TO: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wanted = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local fit = math.floor(burst - (tat - now) / interval)
if fit < 1 then return {0, tat + interval - burst * interval - now} end
local n = wanted
if fit < n then n = fit end
local new_tat = tat + n * interval
local ttl = math.ceil((new_tat - now) / 1000)
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
return {n, 0}
";

static TAKE_UP_TO_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(TAKE_UP_TO));

/// The answer of [`Limiter::take_up_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// This many units (at least 1, at most the ones wanted) were taken.
    Taken(u32),
    /// Not one unit fits; nothing was taken. One will in `retry_after`.
    Limited { retry_after: Duration },
}

/// Adds `buckets` of `tenant` to a script that calls `gcra` over the KEYS and ARGV it was
/// given last: each bucket's key, and after `cost` each bucket's interval and burst. `None`
/// (nothing added) if a rate is unusable: the caller treats that as refusing.
pub(crate) fn add_buckets(
    inv: &mut redis::ScriptInvocation<'_>,
    keys: &crate::keys::Keys,
    buckets: &[(&str, Rate)],
    cost: u32,
) -> Option<()> {
    if buckets.iter().any(|(_, r)| r.check("").is_err()) {
        return None;
    }
    inv.arg(cost.max(1));
    for (subject, rate) in buckets {
        inv.key(keys.limit(subject))
            .arg(rate.interval_us())
            .arg(rate.burst);
    }
    Some(())
}

/// Distributed rate limits on one store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Limiter {
    store: Store,
}

impl Limiter {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Takes `cost` units from every bucket of `buckets` (subject, rate), all of `tenant`, or
    /// from none. A cost above a bucket's burst never fits (the answer is `Limited`). Rates
    /// should have passed [`Rate::check`]; an unusable one is treated as refusing.
    pub async fn acquire(
        &self,
        tenant: &str,
        buckets: &[(&str, Rate)],
        cost: u32,
    ) -> Result<Decision, StoreError> {
        if let Some(bad) = buckets.iter().position(|(_, r)| r.check("").is_err()) {
            return Ok(Decision::Limited {
                bucket: bad,
                retry_after: Duration::ZERO,
            });
        }
        if buckets.is_empty() {
            return Ok(Decision::Allowed {
                remaining: u32::MAX,
            });
        }
        let mut invocation = ACQUIRE_SCRIPT.prepare_invoke();
        let _ = add_buckets(&mut invocation, &self.store.keys(tenant), buckets, cost);
        let mut conn = self.store.conn();
        let (allowed, value, bucket): (i64, i64, i64) = invocation.invoke_async(&mut conn).await?;
        let value = u64::try_from(value).unwrap_or(0);
        Ok(if allowed == 1 {
            Decision::Allowed {
                remaining: u32::try_from(value).unwrap_or(u32::MAX),
            }
        } else {
            Decision::Limited {
                bucket: usize::try_from(bucket - 1).unwrap_or(0),
                retry_after: Duration::from_micros(value),
            }
        })
    }

    /// Takes as many units as fit now from one bucket of `tenant`, at most `wanted` (at least
    /// 1): a replica leasing units it spends later ([`crate::LeasedLimiter`]). The bucket's
    /// guarantee is unchanged: what is taken counts as admitted when it is taken. An unusable
    /// rate is treated as refusing.
    pub async fn take_up_to(
        &self,
        tenant: &str,
        subject: &str,
        rate: Rate,
        wanted: u32,
    ) -> Result<Grant, StoreError> {
        if rate.check("").is_err() {
            return Ok(Grant::Limited {
                retry_after: Duration::ZERO,
            });
        }
        let mut invocation = TAKE_UP_TO_SCRIPT.prepare_invoke();
        invocation
            .key(self.store.keys(tenant).limit(subject))
            .arg(wanted.max(1))
            .arg(rate.interval_us())
            .arg(rate.burst);
        let mut conn = self.store.conn();
        let (taken, wait): (i64, i64) = invocation.invoke_async(&mut conn).await?;
        Ok(match u32::try_from(taken) {
            Ok(n) if n > 0 => Grant::Taken(n),
            _ => Grant::Limited {
                retry_after: Duration::from_micros(u64::try_from(wait).unwrap_or(0)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_checked() {
        assert!(Rate::per_minute(20, 10).check("x").is_ok());
        assert_eq!(Rate::per_minute(60, 1).interval_us(), 1_000_000);
        for bad in [
            Rate::per_minute(0, 1),
            Rate::per_minute(1, 0),
            Rate {
                count: 1,
                period_ms: 0,
                burst: 1,
            },
            Rate {
                count: 5000,
                period_ms: 1,
                burst: 1,
            },
            Rate {
                count: 1,
                period_ms: 86_400_001,
                burst: 1,
            },
        ] {
            let e = bad.check("gateway.x").unwrap_err();
            assert!(e.starts_with("gateway.x"), "{e}");
        }
    }
}
