//! Redis for wxhub.
//!
//! Every key of a tenant lives under `{namespace}:{<tenant>}:…` — the braces are a Redis Cluster
//! hash tag, so all keys of one tenant hash to one slot and multi-key scripts stay legal on a
//! cluster. [`Keys`] is the only place key names are built; `docs/architecture.md` lists them.
//!
//! The connection ([`StoreConn`], module [`connection`]) is one Redis through a
//! `ConnectionManager` (a bare multiplexed connection never reconnects) or, with
//! `redis.cluster_nodes`, a Redis Cluster through redis-rs's async cluster client; either is
//! created lazily so a service starts while Redis is still down. A command that failed on a
//! dropped connection has an unknown outcome and is never replayed; callers treat it as such.
//!
//! Modules: [`dedupe`] (callback retries), [`nonces`] (plaintext callbacks' (timestamp, nonce)
//! bound to one body), [`credentials`] (tickets, tokens, refresh leases, fenced writes, the
//! refresh schedule), [`authorizers`] (authorizer records and refresh tokens), [`auth_codes`]
//! (the fate of an authorization code across paths and replicas), [`jobs`] (the messaging
//! service's jobs: state machine, attempts, idempotency keys, msgid index, parked APIs),
//! [`campaigns`] (one message to many recipients, fed a slice at a time), [`ledger`] (ids of bus
//! messages already applied), [`recovery`] (noticing a store that lost a tenant's state, and
//! writing back what a replica holds), [`limiter`] (rate limits shared by every replica),
//! [`leased`] (the same limits, units leased a few at a time), [`pre_auth`] (the pre-auth code
//! the authorization pages share).

pub mod auth_codes;
pub mod authorizers;
pub mod busy;
pub mod campaigns;
pub mod connection;
pub mod credentials;
pub mod dedupe;
pub mod jobs;
mod keys;
pub mod leased;
pub mod ledger;
pub mod limiter;
pub mod nonces;
pub mod pre_auth;
pub mod recovery;
#[cfg(test)]
mod slots;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use wxhub_domain::SecretUrl;
use wxhub_domain::config::{ConfigError, at_least};

pub use auth_codes::{AuthCodes, CodeClaim};
pub use authorizers::{AuthorizerRecord, AuthorizerStatus, Authorizers};
pub use busy::BusyTenants;
pub use campaigns::{CampaignRecipient, CampaignRecord, Campaigns, NewCampaign, StateChange};
pub use connection::StoreConn;
pub use credentials::{Credentials, Lease, TicketRecord, TokenRecord, WriteOutcome, WriteReport};
pub use jobs::{
    AttemptRecord, Claim, Created, JobRecord, JobState, Jobs, NewJob, SendGate, Settle, Settled,
};
pub use keys::Keys;
pub use leased::{Admission, LeasedLimiter};
pub use ledger::{Ledger, LedgerClaim};
pub use limiter::{Decision, Grant, Limiter, Rate};
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
    /// `redis://127.0.0.1:6379`. Not used when `cluster_nodes` is set.
    pub url: SecretUrl,
    /// Some nodes of a Redis Cluster, `redis://[:password@]host:port` each (non-empty: cluster
    /// mode, used instead of `url`). The client learns the rest of the cluster from them and
    /// follows its changes (MOVED, failovers). Every node needs the same password; a cluster
    /// has only database 0.
    pub cluster_nodes: Vec<SecretUrl>,
    /// Cluster mode: how long a command that Redis did not run (a failover under way, a slot
    /// moving: `CLUSTERDOWN`, `TRYAGAIN`, a refused connection…) is retried before its error is
    /// returned (default 3000). A command that may have run is never retried.
    pub cluster_retry_ms: u64,
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
            cluster_nodes: Vec::new(),
            cluster_retry_ms: 3000,
            response_timeout_ms: 1000,
            connection_timeout_ms: 1000,
        }
    }

    /// A cluster-mode config for `nodes` with default timeouts.
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        Self {
            cluster_nodes: nodes.into_iter().map(SecretUrl::new).collect(),
            ..Self::default()
        }
    }

    /// Whether `cluster_nodes` puts the store in cluster mode.
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// Checks what the types cannot: URLs Redis accepts (in cluster mode: every node, with
    /// database 0 and one password), and no zero timeout (it would fail every command at once).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.is_cluster() {
            let mut password = None;
            for (i, node) in self.cluster_nodes.iter().enumerate() {
                let key = format!("redis.cluster_nodes[{i}]");
                let info = redis_url(&key, node)?;
                if info.redis_settings().db() != 0 {
                    return Err(ConfigError::value(
                        key,
                        format!(
                            "= {:?} names database {}; a Redis Cluster has only database 0",
                            node.redacted(),
                            info.redis_settings().db()
                        ),
                    ));
                }
                let this = info.redis_settings().password().map(str::to_owned);
                match &password {
                    None => password = Some(this),
                    Some(first) if *first != this => {
                        return Err(ConfigError::value(
                            key,
                            "has another password than redis.cluster_nodes[0]; the cluster \
                             client uses one for every node",
                        ));
                    }
                    Some(_) => {}
                }
            }
            at_least("redis.cluster_retry_ms", self.cluster_retry_ms, 1, "")?;
        } else {
            redis_url("redis.url", &self.url)?;
        }
        at_least("redis.response_timeout_ms", self.response_timeout_ms, 1, "")?;
        at_least(
            "redis.connection_timeout_ms",
            self.connection_timeout_ms,
            1,
            "",
        )
    }
}

/// `url` parsed as Redis parses it, or an error naming `key` (the password never shows).
fn redis_url(key: &str, url: &SecretUrl) -> Result<redis::ConnectionInfo, ConfigError> {
    let scheme = url.expose().split("://").next().unwrap_or_default();
    if !url.expose().contains("://")
        || !matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix")
    {
        return Err(ConfigError::value(
            key,
            format!("= {:?} must be a redis:// URL", url.redacted()),
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(url.expose()).map_err(|_| {
        ConfigError::value(
            key,
            format!(
                "= {:?} is not a Redis URL (redis://[:password@]host:port)",
                url.redacted()
            ),
        )
    })
}

/// TCP_NODELAY on: without it small commands can stall ~40 ms on Nagle and delayed ACKs
/// (redis-rs leaves it off by default).
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// The connection settings of `config`, with TCP_NODELAY on: without it small commands can
/// stall ~40 ms on Nagle and delayed ACKs (redis-rs leaves it off by default).
fn connection_info(config: &RedisConfig) -> Result<redis::ConnectionInfo, StoreError> {
    Ok(
        redis::IntoConnectionInfo::into_connection_info(config.url.expose())?
            .set_tcp_settings(tcp_settings()),
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
    conn: StoreConn,
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
    /// Creates the (lazy, self-reconnecting) connection — to `redis.url`, or to the cluster of
    /// `redis.cluster_nodes` — and does not wait for Redis to be up.
    pub fn connect(config: &RedisConfig, namespace: &str) -> Result<Self, StoreError> {
        let response = Duration::from_millis(config.response_timeout_ms);
        let connect = Duration::from_millis(config.connection_timeout_ms);
        let conn = if config.is_cluster() {
            let nodes = config
                .cluster_nodes
                .iter()
                .map(|n| redis::IntoConnectionInfo::into_connection_info(n.expose()))
                .collect::<Result<Vec<_>, _>>()?;
            // retries(0): the client would replay a command whose connection dropped (an
            // unknown outcome); `connection` retries only what Redis did not run.
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .retries(0)
                .connection_timeout(connect)
                .response_timeout(response)
                .overall_response_timeout(Some(response))
                .tcp_settings(tcp_settings())
                .build()?;
            let cluster_config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(connect)
                .set_response_timeout(response);
            StoreConn::cluster(
                client,
                cluster_config,
                Duration::from_millis(config.cluster_retry_ms),
            )
        } else {
            let client = redis::Client::open(connection_info(config)?)?;
            let manager_config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(response))
                .set_connection_timeout(Some(connect))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            StoreConn::single(ConnectionManager::new_lazy_with_config(
                client,
                manager_config,
            )?)
        };
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

    /// A connection to run commands on (clones share the same connections). In cluster mode
    /// every command must name its keys (as `KEYS` for a script) and a script's keys must share
    /// a slot, which every key of one tenant does.
    pub fn conn(&self) -> StoreConn {
        self.conn.clone()
    }

    /// Sets `tenant`'s `…:guard:{what}` for `ttl` unless present; true when this caller got it
    /// (one replica does a periodic step per `ttl`).
    pub(crate) async fn guard(
        &self,
        tenant: &str,
        what: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys(tenant).guard(what))
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(px(ttl))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Tests: the same store, its commands written to `log`.
    #[cfg(test)]
    pub(crate) fn recording(
        &self,
        log: std::sync::Arc<std::sync::Mutex<Vec<connection::Sent>>>,
    ) -> Self {
        let mut store = self.clone();
        store.conn = self.conn.clone().recording(log);
        store
    }

    /// Whether this store runs on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// Every key matching `pattern` (a Redis glob), sorted and unique, found with `SCAN` (on
    /// every primary of a cluster) so Redis is never blocked the way `KEYS` blocks it on a large keyspace. For tools and tests, not
    /// hot paths.
    pub async fn scan_keys(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut out = self.conn.clone().scan(pattern).await?;
        // SCAN may return a key twice.
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// For readiness checks: `PING` on one node; on a cluster, `CLUSTER INFO` of any node must
    /// say `cluster_state:ok` (every slot served). That is the cluster's own rule for serving
    /// any command (`cluster-require-full-coverage`), so it is unready exactly while the
    /// cluster refuses work — a failover under way, a shard lost — and one round trip either way.
    pub async fn ping(&self) -> Result<String, StoreError> {
        let mut conn = self.conn.clone();
        if !self.is_cluster() {
            return Ok(redis::cmd("PING").query_async(&mut conn).await?);
        }
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await?;
        match info
            .lines()
            .find_map(|l| l.trim().strip_prefix("cluster_state:"))
        {
            Some("ok") => Ok("PONG".to_owned()),
            state => Err(StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "cluster not serving every slot",
                format!("cluster_state:{}", state.unwrap_or("unknown")),
            )))),
        }
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

    /// A cluster config is checked node by node, naming the node; passwords never show.
    #[test]
    fn cluster_nodes_are_validated_naming_the_node() {
        let ok = RedisConfig::cluster(["redis://127.0.0.1:7101", "redis://127.0.0.1:7102"]);
        assert!(ok.is_cluster() && ok.validate().is_ok());
        assert!(!RedisConfig::default().is_cluster());
        let err = |c: RedisConfig| c.validate().unwrap_err().to_string();

        let e = err(RedisConfig::cluster([
            "redis://127.0.0.1:7101",
            "127.0.0.1:7102",
        ]));
        assert!(
            e.contains("redis.cluster_nodes[1]") && e.contains("redis://"),
            "{e}"
        );
        let e = err(RedisConfig::cluster(["redis://:hunter2@127.0.0.1:7101/3"]));
        assert!(
            e.contains("redis.cluster_nodes[0]") && e.contains("database 3"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = err(RedisConfig::cluster([
            "redis://:hunter2@127.0.0.1:7101",
            "redis://:other@127.0.0.1:7102",
        ]));
        assert!(
            e.contains("redis.cluster_nodes[1]") && e.contains("password"),
            "{e}"
        );
        assert!(!e.contains("hunter2") && !e.contains("other@"), "{e}");
        let mut zero = ok.clone();
        zero.cluster_retry_ms = 0;
        assert!(err(zero).contains("redis.cluster_retry_ms"));

        // One node: `url` is checked, and the cluster settings are ignored.
        let e = err(RedisConfig::new("http://127.0.0.1:6379"));
        assert!(e.contains("redis.url"), "{e}");
        assert!(
            RedisConfig::new("redis://127.0.0.1:6379/2")
                .validate()
                .is_ok()
        );
    }
}
