//! token-control's configuration: the common sections plus `[token_control]`.
//!
//! `[token_control]` is this service's section, and its struct lists every key of it — the
//! client key `endpoint` too, which the gateway, worker and CLI read to reach this service — so
//! a misspelt key anywhere in the section is refused here, by the binary that owns it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wxhub_bus::AmqpConfig;
use wxhub_runtime::config::{
    ConfigError, ShutdownConfig, Source, at_least, validate_identifier, within,
};
use wxhub_runtime::telemetry::TelemetryConfig;
use wxhub_runtime::tenants::TenantsConfig;
use wxhub_store::RedisConfig;
use wxhub_wechat_api::WechatConfig;

/// Defaults of `[token_control]` (merged over the common defaults).
pub const DEFAULTS: &str = r#"
[token_control]
# gRPC listener.
listen = "0.0.0.0:50051"
# Where the other binaries (gateway, worker, CLI) reach this service; token-control itself does
# not read it.
endpoint = "http://127.0.0.1:50051"
# /healthz, /readyz, /metrics.
ops_listen = "0.0.0.0:9091"
# Deadline of a request without grpc-timeout, and the cap on any deadline.
request_timeout_ms = 10000
# Default minimum remaining lifetime of a returned token, applied once the token is past its
# refresh time (before, a valid token is served whatever it has left).
default_min_remaining_ms = 300000
# Refresh lease: longer than a WeChat call (wechat.timeout_ms), short enough that a dead
# holder blocks refreshes only briefly.
lock_ttl_ms = 10000
# Proactive refresh at this fraction of a token's lifetime, +- jitter.
refresh_at = 0.8
refresh_jitter = 0.05
# How often each replica polls the schedule, and how long a claimed entry is reserved.
poll_interval_ms = 500
claim_ms = 30000
poll_batch = 500
# Concurrent refreshes per replica.
max_concurrent_refreshes = 64
# In-process cache of tokens read from Redis (0 disables).
cache_ttl_ms = 1000
# Reconcile authorizers with api_get_authorizer_list at start and this often.
reconcile_interval_ms = 3600000
# New authorizers found by a reconcile get their first token within this window (spread).
reconcile_spread_ms = 5400000
# A component_verify_ticket older than this is stale (WeChat pushes every 10 min): ask WeChat
# to restart pushes (at most once per push_ticket_interval_ms per tenant).
ticket_stale_ms = 1200000
ticket_check_interval_ms = 60000
push_ticket_interval_ms = 600000
# /readyz reports ticket freshness: a component tenant without a ticket younger than 12 h shows
# as degraded (still 200: the other tenants are served).
ready_requires_ticket = true
# A component notice whose CreateTime is more than this ahead of the clock is ignored (acked and
# counted), and stored event times that far ahead order nothing.
create_time_skew_ms = 60000
# Recovery from a store that lost its state: each replica checks every tenant's epoch this often
# (reads notice a loss at once); after a loss, WeChat is asked for a ticket push only if no
# replica wrote one back within heal_ticket_grace_ms.
store_check_interval_ms = 1000
heal_ticket_grace_ms = 2000
# A read of an authorizer the store does not know re-lists api_get_authorizer_list first, at
# most this often per tenant.
relist_interval_ms = 60000
# Bus consumer of {namespace}.token-control.
consumer_concurrency = 8
# A notice that fails for a passing reason (Redis or WeChat not answering) waits this long in a
# delay queue ({namespace}.token-control.retry.{ms}), the next delay each time, the last one
# repeating, until the notice is an hour old (an authorization code lives an hour); then it is
# dead-lettered with the reason. Waiting there does not count toward amqp.delivery_limit.
retry_delays_ms = [1000, 5000, 30000, 60000]
# Official Accounts: "stable_token" (POST /cgi-bin/stable_token; a second fetch within the
# validity returns the same token, so a duplicate refresh is harmless) or "token" (GET
# /cgi-bin/token; every fetch invalidates the previous token after 5 minutes).
oa_token_api = "stable_token"
# The authorization pages share one pre-auth code per tenant for this long (capped at a quarter
# of the validity WeChat returns), instead of one api_create_preauthcode per page view; a used
# code is replaced at once. 0 mints one per view.
pre_auth_share_ms = 60000
"#;

/// `[token_control]` (a key it does not know is refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenControlConfig {
    pub listen: String,
    /// The client key of the section: read by the gateway, worker and CLI, listed here so this
    /// section's owner checks every key of it.
    pub endpoint: String,
    pub ops_listen: String,
    pub request_timeout_ms: u64,
    pub default_min_remaining_ms: u64,
    pub lock_ttl_ms: u64,
    pub refresh_at: f64,
    pub refresh_jitter: f64,
    pub poll_interval_ms: u64,
    pub claim_ms: u64,
    pub poll_batch: usize,
    pub max_concurrent_refreshes: usize,
    pub cache_ttl_ms: u64,
    pub reconcile_interval_ms: u64,
    pub reconcile_spread_ms: u64,
    pub ticket_stale_ms: u64,
    pub ticket_check_interval_ms: u64,
    pub push_ticket_interval_ms: u64,
    pub ready_requires_ticket: bool,
    pub create_time_skew_ms: u64,
    pub store_check_interval_ms: u64,
    pub heal_ticket_grace_ms: u64,
    pub relist_interval_ms: u64,
    pub consumer_concurrency: usize,
    pub retry_delays_ms: Vec<u32>,
    pub oa_token_api: OaTokenApi,
    pub pre_auth_share_ms: u64,
}

/// Which WeChat API fetches an Official Account's own token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OaTokenApi {
    /// `POST /cgi-bin/stable_token`: a second fetch within the validity returns the same
    /// token, so a duplicate refresh is harmless.
    StableToken,
    /// `GET /cgi-bin/token`: every fetch invalidates the previous token after 5 minutes.
    Token,
}

impl TokenControlConfig {
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub(crate) fn lock_ttl(&self) -> Duration {
        Duration::from_millis(self.lock_ttl_ms)
    }

    /// Checks what the types cannot. Every duration a loop sleeps or a timer waits is at least
    /// 1 ms here, so no use site clamps it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const KEY: &str = "token_control.";
        let key = |name: &str| format!("{KEY}{name}");
        for (name, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("lock_ttl_ms", self.lock_ttl_ms),
            ("poll_interval_ms", self.poll_interval_ms),
            ("claim_ms", self.claim_ms),
            ("reconcile_interval_ms", self.reconcile_interval_ms),
            ("reconcile_spread_ms", self.reconcile_spread_ms),
            ("ticket_check_interval_ms", self.ticket_check_interval_ms),
            ("push_ticket_interval_ms", self.push_ticket_interval_ms),
            ("store_check_interval_ms", self.store_check_interval_ms),
            ("relist_interval_ms", self.relist_interval_ms),
        ] {
            at_least(&key(name), value, 1, "")?;
        }
        for (name, value) in [
            ("poll_batch", self.poll_batch),
            ("max_concurrent_refreshes", self.max_concurrent_refreshes),
            ("consumer_concurrency", self.consumer_concurrency),
        ] {
            at_least(&key(name), value, 1, "")?;
        }
        if self.retry_delays_ms.is_empty() || self.retry_delays_ms.contains(&0) {
            return Err(ConfigError::value(
                key("retry_delays_ms"),
                "needs at least one delay, each positive",
            ));
        }
        within(&key("refresh_at"), self.refresh_at, 0.1..=0.95, "")?;
        if !(0.0..=0.2).contains(&self.refresh_jitter) || self.refresh_jitter >= self.refresh_at {
            return Err(ConfigError::value(
                key("refresh_jitter"),
                format!(
                    "= {} must be within 0..=0.2 and below refresh_at",
                    self.refresh_jitter
                ),
            ));
        }
        within(
            &key("pre_auth_share_ms"),
            self.pre_auth_share_ms,
            0..=600_000,
            "",
        )?;
        within(
            &key("create_time_skew_ms"),
            self.create_time_skew_ms,
            0..=600_000,
            "a forged CreateTime within it holds back real notices that long",
        )?;
        if self.heal_ticket_grace_ms <= self.store_check_interval_ms {
            return Err(ConfigError::value(
                key("heal_ticket_grace_ms"),
                format!(
                    "= {} must be above store_check_interval_ms = {} (the other replicas need a \
                     check to write their ticket back)",
                    self.heal_ticket_grace_ms, self.store_check_interval_ms
                ),
            ));
        }
        Ok(())
    }

    /// `create_time_skew_ms` as ms.
    pub(crate) fn create_time_skew(&self) -> i64 {
        i64::try_from(self.create_time_skew_ms).unwrap_or(600_000)
    }
}

/// The whole configuration of the binary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub namespace: String,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub amqp: AmqpConfig,
    #[serde(default)]
    pub wechat: WechatConfig,
    #[serde(default)]
    pub tenants: TenantsConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    pub token_control: TokenControlConfig,
}

impl Config {
    /// Loads the layers (defaults → file → `WXHUB_*` env) and validates. A relative
    /// `tenants.file` is resolved against the config file's directory.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        let mut config: Config = wxhub_runtime::config::load(DEFAULTS, source)?;
        config.tenants.resolve(source);
        config.validate()?;
        Ok(config)
    }

    /// Checks values the types cannot, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_identifier("namespace", &self.namespace)?;
        self.redis.validate()?;
        self.amqp.validate()?;
        self.wechat.validate()?;
        self.tenants.validate()?;
        self.telemetry.validate()?;
        self.shutdown.validate()?;
        self.token_control.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_env_overrides() {
        let source = Source {
            file: None,
            env: vec![
                ("WXHUB_TOKEN_CONTROL__LOCK_TTL_MS".into(), "2500".into()),
                ("WXHUB_NAMESPACE".into(), "prod".into()),
            ],
        };
        let c = Config::load(&source).unwrap();
        assert_eq!(c.token_control.lock_ttl_ms, 2500);
        assert_eq!(c.namespace, "prod");
        assert_eq!(c.token_control.listen, "0.0.0.0:50051");
        assert!(wxhub_runtime::config::dump(&c).contains("[token_control]"));
    }
    #[test]
    fn invalid_values_are_rejected() {
        let bad = |k: &str, v: &str| {
            Config::load(&Source {
                file: None,
                env: vec![(k.into(), v.into())],
            })
            .unwrap_err()
            .to_string()
        };
        assert!(bad("WXHUB_TOKEN_CONTROL__REFRESH_AT", "1.5").contains("refresh_at"));
        assert!(bad("WXHUB_NAMESPACE", "Bad NS").contains("namespace"));
        assert!(bad("WXHUB_WECHAT__API_BASE", "ftp://x").contains("api_base"));
        assert!(bad("WXHUB_TOKEN_CONTROL__OA_TOKEN_API", "other").contains("oa_token_api"));
        assert!(
            bad("WXHUB_TOKEN_CONTROL__PRE_AUTH_SHARE_MS", "900000").contains("pre_auth_share_ms")
        );
        assert!(
            bad("WXHUB_TOKEN_CONTROL__CREATE_TIME_SKEW_MS", "3600000")
                .contains("create_time_skew_ms")
        );
        assert!(
            bad("WXHUB_TOKEN_CONTROL__HEAL_TICKET_GRACE_MS", "500")
                .contains("heal_ticket_grace_ms")
        );
    }
}
