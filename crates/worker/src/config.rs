//! The worker's configuration: the common sections plus `[worker]`. Of `[token_control]`
//! (token-control's section) the worker reads only `endpoint`.

use serde::{Deserialize, Serialize};
use wxhub_bus::AmqpConfig;
use wxhub_runtime::config::{
    ConfigError, ShutdownConfig, Source, at_least, validate_identifier, within,
};
use wxhub_runtime::telemetry::TelemetryConfig;
use wxhub_runtime::tenants::TenantsConfig;
use wxhub_store::{Rate, RedisConfig};
use wxhub_token_client::{ClientConfig, TokenControlEndpoint};
use wxhub_wechat_api::WechatConfig;

/// Defaults of `[worker]` (merged over the common defaults).
pub const DEFAULTS: &str = r#"
[worker]
# /healthz, /readyz, /metrics.
ops_listen = "0.0.0.0:9092"
# Release-check jobs handled at once.
release_check_concurrency = 4
# Deadline of one call to token-control.
token_timeout_ms = 10000
# How long a sent job is remembered, so a redelivery is not sent twice.
sent_ttl_secs = 86400

# The messaging service (wxhub.messaging.v1.Messaging): gRPC with health and reflection.
listen = "0.0.0.0:50052"
# Single-message jobs handled at once, and campaign jobs (their own queue and share, so a
# campaign never delays a single message).
send_concurrency = 32
bulk_concurrency = 8
# Delivery reports (TEMPLATESENDJOBFINISH, subscribe_msg_sent_event) handled at once.
status_concurrency = 4
# Backoff of transient failures, one delay queue each ({ns}.send.retry.{ms}); each retry waits
# its delay minus up to 20 % (jitter). After the last, one more attempt, then dead letters.
retry_delays_ms = [5000, 30000, 120000, 600000, 3600000, 21600000]
# 45011 (minute quota): wait for the next minute. Not counted as an attempt.
rate_limited_delay_ms = 60000
# 43117 / 45066 (too frequent for this user / retry too fast): cool-down, not an attempt.
user_cooldown_ms = 60000
# The shortest delay queue: a job the rate limiter refuses for longer than 50 ms waits there
# (or in the smallest queue at least as long as the limiter's wait), so no handler sleeps.
limiter_delay_ms = 1000
# 45009 (daily quota spent): the (account, API) pair is parked until WeChat's daily reset (midnight
# China time), at most this long, then one job probes.
quota_park_ms = 3600000
# A send's lease: another worker takes a job found "sending" only after it; must exceed
# wechat.timeout_ms.
lease_ms = 30000
# How long job records and their recent lists are kept.
job_ttl_secs = 604800
# How long an idempotency key names its job.
idempotency_ttl_secs = 86400
# Deadline of an Enqueue (store + confirmed publish).
request_timeout_ms = 5000
# Most jobs announced in one broker message: Enqueue's concurrent calls share one (a group
# commit, never a wait to fill it) and a feed goes out this many to a message. The broker's
# cost is per message (docs/messaging.md, Announcements); 1 announces every job alone.
announce_batch = 64
# Most recipients of one campaign, and how often campaigns are fed (each tick feeds at most the
# account's rate for that tick, with at most 2 × burst jobs in flight).
campaign_max_recipients = 100000
campaign_tick_ms = 200
# Most single-message jobs of one tenant announced on {ns}.send and not final at once; the rest
# wait in Redis, in order, and are fed every campaign tick as the window frees. Another tenant's
# first job is behind at most this many jobs of each busy tenant (docs/messaging.md, Fairness).
tenant_window = 500
# Most single-message jobs of one tenant held beyond its window (0: no cap). A held job is its
# stored record, ~1.2 KB of Redis: 200,000 is ~240 MB per tenant. Over it, Enqueue answers
# RESOURCE_EXHAUSTED and stores nothing, so a runaway producer cannot fill Redis.
tenant_held_max = 200000

# Rate limits (GCRA in Redis, shared by every replica). WeChat publishes no per-second figure;
# these stay under the bursts that drew -1 storms (messaging.md §1) and are per account.
[worker.limits]
custom = { count = 20, period_ms = 1000, burst = 20 }
template = { count = 20, period_ms = 1000, burst = 40 }
subscribe = { count = 50, period_ms = 1000, burst = 50 }
# Per recipient of template messages: WeChat answers 43117 / 40241 to bursts at one user.
template_per_openid = { count = 1, period_ms = 10000, burst = 3 }
"#;

/// `[worker]` (a key it does not know is refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    pub ops_listen: String,
    pub release_check_concurrency: usize,
    pub token_timeout_ms: u64,
    pub sent_ttl_secs: u64,
    pub listen: String,
    pub send_concurrency: usize,
    pub bulk_concurrency: usize,
    pub status_concurrency: usize,
    pub retry_delays_ms: Vec<u32>,
    pub rate_limited_delay_ms: u32,
    pub user_cooldown_ms: u32,
    pub limiter_delay_ms: u32,
    pub quota_park_ms: u64,
    pub lease_ms: u64,
    pub job_ttl_secs: u64,
    pub idempotency_ttl_secs: u64,
    pub request_timeout_ms: u64,
    pub announce_batch: usize,
    pub campaign_max_recipients: usize,
    pub campaign_tick_ms: u64,
    pub tenant_window: u32,
    pub tenant_held_max: u32,
    pub limits: Limits,
}

/// `[worker.limits]`: per (account, API) and per recipient.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub custom: Rate,
    pub template: Rate,
    pub subscribe: Rate,
    pub template_per_openid: Rate,
}

impl WorkerSection {
    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least(
            "worker.release_check_concurrency",
            self.release_check_concurrency,
            1,
            "",
        )?;
        at_least("worker.token_timeout_ms", self.token_timeout_ms, 1, "")?;
        at_least("worker.sent_ttl_secs", self.sent_ttl_secs, 1, "")?;
        for (key, n) in [
            ("worker.send_concurrency", self.send_concurrency),
            ("worker.bulk_concurrency", self.bulk_concurrency),
            ("worker.status_concurrency", self.status_concurrency),
        ] {
            at_least(key, n, 1, "")?;
        }
        if self.retry_delays_ms.is_empty() || self.retry_delays_ms.contains(&0) {
            return Err(ConfigError::value(
                "worker.retry_delays_ms",
                "needs at least one delay, each positive",
            ));
        }
        at_least(
            "worker.rate_limited_delay_ms",
            self.rate_limited_delay_ms,
            1,
            "",
        )?;
        at_least("worker.user_cooldown_ms", self.user_cooldown_ms, 1, "")?;
        at_least("worker.limiter_delay_ms", self.limiter_delay_ms, 1, "")?;
        at_least("worker.quota_park_ms", self.quota_park_ms, 1, "")?;
        at_least("worker.lease_ms", self.lease_ms, 1, "")?;
        at_least("worker.job_ttl_secs", self.job_ttl_secs, 60, "")?;
        at_least(
            "worker.idempotency_ttl_secs",
            self.idempotency_ttl_secs,
            1,
            "",
        )?;
        at_least("worker.request_timeout_ms", self.request_timeout_ms, 1, "")?;
        at_least(
            "worker.campaign_max_recipients",
            self.campaign_max_recipients,
            1,
            "",
        )?;
        at_least("worker.campaign_tick_ms", self.campaign_tick_ms, 10, "")?;
        at_least("worker.tenant_window", self.tenant_window, 1, "")?;
        within("worker.announce_batch", self.announce_batch, 1..=1000, "")?;
        self.limits.custom.validate("worker.limits.custom")?;
        self.limits.template.validate("worker.limits.template")?;
        self.limits.subscribe.validate("worker.limits.subscribe")?;
        self.limits
            .template_per_openid
            .validate("worker.limits.template_per_openid")
    }

    /// The delay queues' delays, deferrals included (each a queue of its own).
    pub fn delay_tiers(&self) -> Vec<u32> {
        let mut tiers = self.retry_delays_ms.clone();
        tiers.extend([
            self.rate_limited_delay_ms,
            self.user_cooldown_ms,
            self.limiter_delay_ms,
        ]);
        tiers.sort_unstable();
        tiers.dedup();
        tiers
    }

    /// The delay queues' delays of the delivery reports, which wait only for their store.
    pub fn report_delay_tiers(&self) -> Vec<u32> {
        wxhub_bus::delay::store_tiers(&self.delay_tiers())
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
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub token_control: TokenControlEndpoint,
    #[serde(default)]
    pub client: ClientConfig,
    #[serde(default)]
    pub tenants: TenantsConfig,
    pub worker: WorkerSection,
}

impl Config {
    /// Loads the layers (defaults → file → `WXHUB_*` env) and validates.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        let mut config: Config = wxhub_runtime::config::load(DEFAULTS, source)?;
        config.tenants.resolve(source);
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_identifier("namespace", &self.namespace)?;
        self.redis.validate()?;
        self.amqp.validate()?;
        self.wechat.validate()?;
        self.telemetry.validate()?;
        self.shutdown.validate()?;
        self.token_control.validate()?;
        self.tenants.validate()?;
        self.worker.validate()?;
        if self.worker.lease_ms <= self.wechat.timeout_ms {
            return Err(ConfigError::value(
                "worker.lease_ms",
                "must exceed wechat.timeout_ms (a send must end within its lease)",
            ));
        }
        if self.client.api_key.is_empty() {
            return Err(ConfigError::value(
                "client.api_key",
                "is required (the worker asks token-control for tokens)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_defaults_and_requires_an_api_key() {
        let err = Config::load(&Source::default()).unwrap_err().to_string();
        assert!(err.contains("client.api_key"), "{err}");
        let source = Source {
            file: None,
            env: vec![
                ("WXHUB_CLIENT__API_KEY".into(), "worker-key".into()),
                ("WXHUB_WORKER__RELEASE_CHECK_CONCURRENCY".into(), "2".into()),
            ],
        };
        let c = Config::load(&source).unwrap();
        assert_eq!(c.worker.release_check_concurrency, 2);
        assert_eq!(c.worker.ops_listen, "0.0.0.0:9092");
        assert_eq!(c.worker.listen, "0.0.0.0:50052");
        assert_eq!(c.worker.limits.template.burst, 40);
        // The six retry delays plus the 45011 and cool-down delay (both 60 s) and the
        // limiter's 1 s.
        assert_eq!(c.worker.delay_tiers().len(), 8);
        let dumped = wxhub_runtime::config::dump(&c);
        assert!(!dumped.contains("worker-key"));
    }
}
