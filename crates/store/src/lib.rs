//! Redis for wxhub.
//!
//! Every key of a tenant lives under `{namespace}:{<tenant>}:…` — the braces are a Redis Cluster
//! hash tag, so all keys of one tenant hash to one slot and multi-key scripts stay legal on a
//! cluster. [`Keys`] is the only place key names are built; `docs/architecture.md` lists them.
//!
//! The connection is a `ConnectionManager` (a bare multiplexed connection never reconnects),
//! created lazily so a service starts while Redis is still down. A command that failed on a
//! dropped connection has an unknown outcome; callers treat it as such.
//!
//! Modules: [`dedupe`] (callback retries), [`nonces`] (plaintext callbacks' (timestamp, nonce)
//! bound to one body), [`credentials`] (tickets, tokens, refresh leases, fenced writes, the
//! refresh schedule), [`authorizers`] (authorizer records and refresh tokens), [`auth_codes`]
//! (the fate of an authorization code across paths and replicas), [`jobs`] (the messaging
//! service's jobs: state machine, attempts, idempotency keys, msgid index, parked APIs),
//! [`campaigns`] (one message to many recipients, fed a slice at a time), [`ledger`] (ids of bus
//! messages already applied), [`recovery`] (noticing a store that lost a tenant's state, and
//! writing back what a replica holds), [`limiter`] (rate limits shared by every replica),
//! [`pre_auth`] (the pre-auth code the authorization pages share).

pub mod auth_codes;
pub mod authorizers;
pub mod campaigns;
pub mod credentials;
pub mod dedupe;
pub mod jobs;
mod keys;
pub mod ledger;
pub mod limiter;
pub mod nonces;
pub mod pre_auth;
pub mod recovery;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use wxhub_domain::SecretUrl;
use wxhub_domain::config::{ConfigError, at_least};

pub use auth_codes::{AuthCodes, CodeClaim};
pub use authorizers::{AuthorizerRecord, AuthorizerStatus, Authorizers};
pub use campaigns::{CampaignRecipient, CampaignRecord, Campaigns, NewCampaign, StateChange};
pub use credentials::{Credentials, Lease, TicketRecord, TokenRecord, WriteOutcome, WriteReport};
pub use jobs::{AttemptRecord, Claim, Created, JobRecord, JobState, Jobs, NewJob, Settle, Settled};
pub use keys::Keys;
pub use ledger::Ledger;
pub use limiter::{Decision, Limiter, Rate};
pub use pre_auth::{PreAuthCodes, SharedPreAuth};
pub use recovery::{Epoch, Restored};

/// How far an event's CreateTime may be ahead of the caller's clock unless configured otherwise
/// (ms): ordering compares refuse later events and ignore stored times beyond it.
pub const DEFAULT_CREATE_TIME_SKEW_MS: i64 = 60_000;

/// `[redis]` config section (every key optional; a key it does not know is refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[:password@]host:6379[/db]` (the password never prints). Default
    /// `redis://127.0.0.1:6379`.
    pub url: SecretUrl,
    /// Per-command response timeout (default 1000).
    pub response_timeout_ms: u64,
    /// Connect timeout (default 1000).
    pub connection_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::new("redis://127.0.0.1:6379")
    }
}

impl RedisConfig {
    /// A config for `url` with default timeouts.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: SecretUrl::new(url),
            response_timeout_ms: 1000,
            connection_timeout_ms: 1000,
        }
    }

    /// Checks what the types cannot: a zero timeout would fail every command at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least("redis.response_timeout_ms", self.response_timeout_ms, 1, "")?;
        at_least(
            "redis.connection_timeout_ms",
            self.connection_timeout_ms,
            1,
            "",
        )
    }
}

/// The connection settings of `config`, with TCP_NODELAY on: without it small commands can
/// stall ~40 ms on Nagle and delayed ACKs (redis-rs leaves it off by default).
fn connection_info(config: &RedisConfig) -> Result<redis::ConnectionInfo, StoreError> {
    Ok(
        redis::IntoConnectionInfo::into_connection_info(config.url.expose())?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)),
    )
}

/// A TTL as Redis `PX` milliseconds (at least 1: `PX 0` is an error).
pub(crate) fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Redis failures. The message never contains a key's value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable or the command failed; the outcome of a write may be unknown.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Stored data is not what this version expects.
    #[error("corrupt value at {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A handle on Redis for one namespace. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    namespace: String,
    /// How far an event's CreateTime may be ahead of the caller's clock (ms).
    create_time_skew_ms: i64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Creates the (lazy, self-reconnecting) connection; does not wait for Redis to be up.
    pub fn connect(config: &RedisConfig, namespace: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(connection_info(config)?)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_millis(config.response_timeout_ms)))
            .set_connection_timeout(Some(Duration::from_millis(config.connection_timeout_ms)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        Ok(Self {
            conn,
            namespace: namespace.to_owned(),
            create_time_skew_ms: DEFAULT_CREATE_TIME_SKEW_MS,
        })
    }

    /// The same store with events allowed `skew_ms` ahead of the caller's clock: the ordering
    /// scripts (authorizer status, ticket) refuse a later event time and ignore a stored one
    /// beyond it.
    #[must_use]
    pub fn with_create_time_skew(mut self, skew_ms: i64) -> Self {
        self.create_time_skew_ms = skew_ms.max(0);
        self
    }

    /// See [`Store::with_create_time_skew`].
    pub fn create_time_skew_ms(&self) -> i64 {
        self.create_time_skew_ms
    }

    /// The namespace every key starts with.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Key names of one tenant.
    pub fn keys(&self, tenant: &str) -> Keys {
        Keys::new(&self.namespace, tenant)
    }

    /// A connection to run commands on (clones share one multiplexed connection).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Every key matching `pattern` (a Redis glob), sorted and unique, found with `SCAN` so Redis
    /// is never blocked the way `KEYS` blocks it on a large keyspace. For tools and tests, not
    /// hot paths.
    pub async fn scan_keys(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(5000)
                .query_async(&mut conn)
                .await?;
            out.extend(keys);
            if next == 0 {
                // SCAN may return a key twice.
                out.sort_unstable();
                out.dedup();
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// `PING`, for readiness checks.
    pub async fn ping(&self) -> Result<String, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("PING").query_async(&mut conn).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_use_tcp_nodelay() {
        let info = connection_info(&RedisConfig::new("redis://127.0.0.1:6379/2")).unwrap();
        assert!(info.tcp_settings().nodelay());
        assert!(connection_info(&RedisConfig::new("not a url")).is_err());
    }
}
