//! The worker's configuration: the common sections plus `[worker]`. Of `[token_control]`
//! (token-control's section) the worker reads only `endpoint`.

use serde::{Deserialize, Serialize};
use wxhub_bus::AmqpConfig;
use wxhub_runtime::config::{ConfigError, ShutdownConfig, Source, at_least, validate_identifier};
use wxhub_runtime::telemetry::TelemetryConfig;
use wxhub_store::RedisConfig;
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
"#;

/// `[worker]` (a key it does not know is refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    pub ops_listen: String,
    pub release_check_concurrency: usize,
    pub token_timeout_ms: u64,
    pub sent_ttl_secs: u64,
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
        at_least("worker.sent_ttl_secs", self.sent_ttl_secs, 1, "")
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
    pub worker: WorkerSection,
}

impl Config {
    /// Loads the layers (defaults → file → `WXHUB_*` env) and validates.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        let config: Config = wxhub_runtime::config::load(DEFAULTS, source)?;
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
        self.worker.validate()?;
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
        let dumped = wxhub_runtime::config::dump(&c);
        assert!(!dumped.contains("worker-key"));
    }
}
