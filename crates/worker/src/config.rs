//! The worker's configuration: the common sections plus `[worker]`.

use serde::{Deserialize, Serialize};
use wxhub_bus::AmqpConfig;
use wxhub_runtime::config::{ClientConfig, ShutdownConfig, Source, WechatConfig};
use wxhub_runtime::telemetry::TelemetryConfig;
use wxhub_store::RedisConfig;

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

/// `[worker]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSection {
    pub ops_listen: String,
    pub release_check_concurrency: usize,
    pub token_timeout_ms: u64,
    pub sent_ttl_secs: u64,
}

/// `[token_control]` as a client sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenControlEndpoint {
    pub endpoint: String,
}

/// The whole configuration of the binary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub namespace: String,
    pub redis: RedisConfig,
    pub amqp: AmqpConfig,
    pub wechat: WechatConfig,
    pub telemetry: TelemetryConfig,
    pub shutdown: ShutdownConfig,
    pub token_control: TokenControlEndpoint,
    pub client: ClientConfig,
    pub worker: WorkerSection,
}

impl Config {
    /// Loads the layers (defaults → file → `WXHUB_*` env) and validates.
    pub fn load(source: &Source) -> anyhow::Result<Self> {
        let config: Config = wxhub_runtime::config::load(DEFAULTS, source)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        wxhub_runtime::config::validate_identifier("namespace", &self.namespace)?;
        if self.worker.release_check_concurrency == 0 {
            anyhow::bail!("invalid configuration: worker.release_check_concurrency must be > 0");
        }
        if self.client.api_key.is_empty() {
            anyhow::bail!(
                "invalid configuration: client.api_key is required (the worker asks token-control for tokens)"
            );
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
