//! The relay's configuration: the shared sections plus `[relay]`. Of `[token_control]`
//! (token-control's section) the relay reads only `endpoint`; `[relay]` belongs to the relay, so
//! it lists every key, `endpoint` (what clients and the CLI read) included.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wxhub_runtime::config::{
    self, ConfigError, ShutdownConfig, Source, at_least, validate_identifier, within,
};
use wxhub_runtime::telemetry::TelemetryConfig;
use wxhub_runtime::tenants::TenantsConfig;
use wxhub_store::RedisConfig;
use wxhub_token_client::{ClientConfig, TokenControlEndpoint};
use wxhub_wechat_api::WechatConfig;

/// The relay's own defaults (`[relay]`), layered over the common ones.
pub const DEFAULTS: &str = r#"
[relay]
# Address the HTTP server binds (/v1/..., /oauth/..., /healthz, /readyz, /metrics).
listen = "0.0.0.0:8090"
# Where clients and the CLI reach the relay.
endpoint = "http://127.0.0.1:8090"
# Public base URL of the relay's OAuth redirect endpoint (what WeChat sends users' browsers
# to: {public_base_url}/oauth/{tenant}/{appid}/callback). Empty: `endpoint`.
public_base_url = ""
# Largest request body forwarded (WeChat's largest upload is a 20 MB WeCom file; the multipart
# framing adds a little). A larger Content-Length is refused (413) before anything is sent.
max_body_bytes = 21495808
# Bodies up to this size are held while they are forwarded, so a token rejection can be retried
# with the new token; a larger body streams through once and is never retried.
replay_body_bytes = 1048576
# A JSON answer up to this size is read to look at its errcode; a larger one (or a binary one:
# media) streams through to the caller uninspected.
inspect_body_bytes = 1048576
# Deadline of one call to token-control.
token_timeout_ms = 5000
# A token from token-control is reused for this long (never within a minute of its expiry), so
# most calls cost no round trip to token-control. A token replaced meanwhile is healed like any
# rejected one. 0: ask token-control on every call.
token_cache_ms = 5000
# Deadline of one forwarded call to WeChat, body transfer included (media can be large).
upstream_timeout_ms = 60000
# Pause before the one retry of a GET that WeChat answered -1 (system busy).
busy_backoff_ms = 200
# Web OAuth for authorized accounts: the authorize page's host, how long an issued `state` is
# valid, and per tenant the business callback that receives each signed-in user (POST, JSON).
oauth_authorize_base = "https://open.weixin.qq.com"
oauth_state_ttl_secs = 600
oauth_callbacks = {}
# Calls of one account to one WeChat path, across every replica (Redis GCRA); past it: 429,
# nothing sent. 600 a minute with bursts of 100 is far above what an interactive system needs
# and well below what spends a typical daily quota in minutes.
rate_limit = { count = 600, period_ms = 60000, burst = 100 }
# A replica takes up to this many units of a rate_limit bucket from Redis at once and spends
# them on its next calls of that account and path (sized by its own demand; never more than a
# quarter of the burst; unspent units expire after 200 ms; the next lease is asked for in the
# background when a quarter is left). Across R replicas a bucket admits at most
# R x (lease + lease/4) more than rate_limit in any interval. 1: one Redis script per call.
rate_limit_lease = 256
# Calls this replica forwards to WeChat at once (answers still streaming included). Past it a
# call is refused at once (503 relay_overloaded, Retry-After: 1), nothing sent: when WeChat
# stalls, callers keep calling, and without a bound every waiting call holds an outbound
# connection until the replica runs out of descriptors and fails every call.
max_in_flight = 1024
"#;

/// `[relay]` (a key it does not know is refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    pub listen: String,
    pub endpoint: String,
    pub public_base_url: String,
    pub max_body_bytes: u64,
    pub replay_body_bytes: u64,
    pub inspect_body_bytes: u64,
    pub token_timeout_ms: u64,
    pub token_cache_ms: u64,
    pub upstream_timeout_ms: u64,
    pub busy_backoff_ms: u64,
    pub oauth_authorize_base: String,
    pub oauth_state_ttl_secs: u64,
    /// tenant id → the URL that receives the OAuth result of that tenant's accounts.
    pub oauth_callbacks: BTreeMap<String, String>,
    /// Per (account, WeChat path), across replicas.
    pub rate_limit: wxhub_store::Rate,
    /// The most units of a `rate_limit` bucket one replica leases at once (1: none).
    pub rate_limit_lease: u32,
    /// Calls forwarded to WeChat at once by one replica; past it: 503, nothing sent.
    pub max_in_flight: u32,
}

impl RelaySection {
    /// `listen` as an address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::value("relay.listen", "must be an address such as 0.0.0.0:8090")
        })
    }

    /// The base of the OAuth redirect URL, without a trailing `/`.
    pub fn public_base(&self) -> &str {
        let base = if self.public_base_url.trim().is_empty() {
            &self.endpoint
        } else {
            &self.public_base_url
        };
        base.trim().trim_end_matches('/')
    }

    pub fn token_timeout(&self) -> Duration {
        Duration::from_millis(self.token_timeout_ms)
    }

    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        config::http_url("relay.endpoint", &self.endpoint)?;
        self.rate_limit.validate("relay.rate_limit")?;
        within(
            "relay.rate_limit_lease",
            self.rate_limit_lease,
            1..=1000,
            "",
        )?;
        within("relay.max_in_flight", self.max_in_flight, 1..=100_000, "")?;
        if !self.public_base_url.trim().is_empty() {
            config::http_url("relay.public_base_url", &self.public_base_url)?;
        }
        within(
            "relay.max_body_bytes",
            self.max_body_bytes,
            1024..=64 * 1024 * 1024,
            "",
        )?;
        within(
            "relay.replay_body_bytes",
            self.replay_body_bytes,
            0..=self.max_body_bytes,
            "at most relay.max_body_bytes",
        )?;
        within(
            "relay.inspect_body_bytes",
            self.inspect_body_bytes,
            1024..=16 * 1024 * 1024,
            "",
        )?;
        within(
            "relay.token_timeout_ms",
            self.token_timeout_ms,
            1..=60_000,
            "",
        )?;
        within(
            "relay.upstream_timeout_ms",
            self.upstream_timeout_ms,
            100..=600_000,
            "",
        )?;
        within(
            "relay.busy_backoff_ms",
            self.busy_backoff_ms,
            0..=10_000,
            "",
        )?;
        within("relay.token_cache_ms", self.token_cache_ms, 0..=300_000, "")?;
        config::http_url("relay.oauth_authorize_base", &self.oauth_authorize_base)?;
        at_least(
            "relay.oauth_state_ttl_secs",
            self.oauth_state_ttl_secs,
            30,
            "",
        )?;
        for (tenant, url) in &self.oauth_callbacks {
            validate_identifier("relay.oauth_callbacks (tenant)", tenant)?;
            config::http_url(&format!("relay.oauth_callbacks.{tenant}"), url)?;
        }
        Ok(())
    }
}

/// The whole configuration of the binary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub namespace: String,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub wechat: WechatConfig,
    #[serde(default)]
    pub tenants: TenantsConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub client: ClientConfig,
    #[serde(default)]
    pub token_control: TokenControlEndpoint,
    pub relay: RelaySection,
}

impl Config {
    /// Loads the layers (defaults → file → `WXHUB_*` env) and validates.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        let mut config: Self = config::load(DEFAULTS, source)?;
        config.tenants.resolve(source);
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_identifier("namespace", &self.namespace)?;
        self.redis.validate()?;
        self.wechat.validate()?;
        self.tenants.validate()?;
        self.telemetry.validate()?;
        self.shutdown.validate()?;
        self.token_control.validate()?;
        self.relay.validate()?;
        if self.client.api_key.is_empty() {
            return Err(ConfigError::value(
                "client.api_key",
                "is required (the relay asks token-control for every credential)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(env: &[(&str, &str)]) -> Source {
        Source {
            file: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn defaults_load_with_an_api_key_and_secrets_stay_out_of_the_dump() {
        let err = Config::load(&source(&[])).unwrap_err().to_string();
        assert!(err.contains("client.api_key"), "{err}");
        let c = Config::load(&source(&[("WXHUB_CLIENT__API_KEY", "relay-key")])).unwrap();
        assert_eq!(c.relay.listen, "0.0.0.0:8090");
        assert_eq!(c.relay.endpoint, "http://127.0.0.1:8090");
        assert_eq!(c.relay.public_base(), "http://127.0.0.1:8090");
        assert_eq!(c.relay.rate_limit_lease, 256);
        assert_eq!(c.relay.max_in_flight, 1024);
        assert!(!config::dump(&c).contains("relay-key"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (key, value, named) in [
            ("WXHUB_RELAY__LISTEN", "nowhere", "relay.listen"),
            ("WXHUB_RELAY__MAX_BODY_BYTES", "10", "relay.max_body_bytes"),
            (
                "WXHUB_RELAY__REPLAY_BODY_BYTES",
                "999999999",
                "relay.replay_body_bytes",
            ),
            (
                "WXHUB_RELAY__OAUTH_AUTHORIZE_BASE",
                "ftp://x",
                "relay.oauth_authorize_base",
            ),
            (
                "WXHUB_RELAY__RATE_LIMIT_LEASE",
                "0",
                "relay.rate_limit_lease",
            ),
            ("WXHUB_RELAY__MAX_IN_FLIGHT", "0", "relay.max_in_flight"),
            ("WXHUB_RELAY__TYPO", "1", "typo"),
        ] {
            let err = Config::load(&source(&[("WXHUB_CLIENT__API_KEY", "k"), (key, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{key}: {err}");
        }
    }
}
