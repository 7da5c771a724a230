//! The gateway's configuration: the shared sections plus `[gateway]`.
//!
//! Layers (later wins): each section's defaults → [`DEFAULTS`] → the file named by `--config` /
//! `WXHUB_CONFIG` → `WXHUB_<SECTION>__<KEY>` environment variables. `[gateway]` refuses keys it
//! does not know, like every section; of `[token_control]` (token-control's section) the gateway
//! reads only `endpoint`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wxhub_bus::AmqpConfig;
use wxhub_runtime::config::{
    self, ConfigError, ShutdownConfig, Source, at_least, validate_identifier, within,
};
use wxhub_runtime::telemetry::TelemetryConfig;
use wxhub_runtime::tenants::TenantsConfig;
use wxhub_store::{Rate, RedisConfig};
use wxhub_token_client::{ClientConfig, TokenControlEndpoint};

/// The gateway's own defaults (the `[gateway]` section), layered over the common ones.
pub const DEFAULTS: &str = r#"
[gateway]
# Address the HTTP server binds.
listen = "0.0.0.0:8080"
# Accept queue of the listener (capped by the kernel's net.core.somaxconn). WeChat opens a new
# connection per callback when its open ones are busy; a short queue overflows in a burst and
# the kernel drops handshakes, which WeChat sees as a timeout.
listen_backlog = 4096
# Budget of one callback, from arrival to answer. WeChat gives up after 5 s; past this budget the
# answer is 503 so WeChat retries.
deadline_ms = 4000
# Accepted distance between the request's `timestamp` and the local clock.
timestamp_window_secs = 300
# A callback whose CreateTime is more than this ahead of the local clock is refused (400):
# ordering fields downstream (ticket, authorization status) must never be pushed into the
# future. NTP keeps clocks within a second; a minute also covers a badly drifting host.
max_future_skew_secs = 60
# Largest accepted body (WeChat callbacks are a few KB).
max_body_bytes = 65536
# Lifetime of the "being published" dedupe marker: bounds how long a crashed request delays a
# retry. Must be at least deadline_ms.
dedupe_pending_ttl_ms = 5000
# Lifetime of the "published" dedupe marker: must outlast WeChat's retries (~15 s) and every
# replay the timestamp window allows (at least 2 x timestamp_window_secs).
dedupe_done_ttl_secs = 600
# Budget of one dedupe call to Redis before Redis counts as down for this request.
dedupe_timeout_ms = 1000
# When Redis is down: "publish" (deliver without dedupe: never loses, may duplicate; duplicates
# carry the same message_id) or "reject" (answer 503 so WeChat retries later). Plaintext-mode
# callbacks get 503 either way: their body is proven only through Redis.
redis_down = "publish"
# (Plaintext mode is a per-tenant choice: `plaintext = true` on an Official Account in the
# tenants file. The former gateway.allow_plaintext is refused.)
# Public base URL of this gateway, e.g. "https://wx.example.com" (a path prefix is kept): the
# authorization pages build the redirect back from WeChat with it, whatever Host or
# X-Forwarded-Host a request carries. Empty: the request's origin (Host; X-Forwarded-Host and
# -Proto only from trusted_proxies). Set it in production.
public_base_url = ""
# Reverse proxies in front of the gateway (IPs or CIDRs, e.g. ["10.0.0.0/8"]): only their
# X-Forwarded-For / -Host / -Proto are believed. Empty: the TCP peer is the client.
trusted_proxies = []
# Rate limits of the authorization pages (/wx/{tenant}/authorize and /authorized together), in
# Redis across every replica: `count` per `period_ms`, bursts of `burst`; past one: 429.
# Per client address (IPv6 per /64), and per tenant (what bounds the WeChat calls the pages
# can cause, whatever the number of addresses).
authorize_limit_per_address = { count = 10, period_ms = 60000, burst = 10 }
authorize_limit_per_tenant = { count = 60, period_ms = 60000, burst = 30 }

[amqp]
# Every callback is a publish, and each publish in flight has a confirm-mode channel to itself
# (see wxhub-bus): this bounds the callbacks being published at once. Opened at connect.
publisher_channels = 256
"#;

/// What to do when Redis (dedupe) is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisDown {
    /// Publish without dedupe: invariant 1 holds, retries may duplicate (same `message_id`).
    Publish,
    /// Answer 503: no duplicates, but a long Redis outage outlasts WeChat's three tries.
    Reject,
}

/// `[gateway]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub listen: String,
    pub listen_backlog: u32,
    pub deadline_ms: u64,
    pub timestamp_window_secs: u64,
    pub max_body_bytes: usize,
    pub dedupe_pending_ttl_ms: u64,
    pub dedupe_done_ttl_secs: u64,
    pub dedupe_timeout_ms: u64,
    pub redis_down: RedisDown,
    pub max_future_skew_secs: u64,
    pub public_base_url: String,
    pub trusted_proxies: Vec<String>,
    pub authorize_limit_per_address: Rate,
    pub authorize_limit_per_tenant: Rate,
    /// Removed (now per tenant); present only so a config that still sets it fails to load
    /// with a message saying where the setting went.
    #[serde(default, skip_serializing)]
    allow_plaintext: Option<serde::de::IgnoredAny>,
}

impl GatewaySection {
    /// The per-request budget.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// `public_base_url` without a trailing `/`, or `None` when unset.
    pub fn public_base(&self) -> Result<Option<String>, ConfigError> {
        let raw = self.public_base_url.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        let invalid = || {
            ConfigError::value(
                "gateway.public_base_url",
                format!(
                    "{raw:?} must be an absolute http(s) URL without query, fragment or \
                     credentials, like https://wx.example.com"
                ),
            )
        };
        let url = url::Url::parse(raw).map_err(|_| invalid())?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(invalid());
        }
        Ok(Some(url.as_str().trim_end_matches('/').to_owned()))
    }

    /// The parsed listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::value(
                "gateway.listen",
                format!("{:?} is not an address like 0.0.0.0:8080", self.listen),
            )
        })
    }

    /// Checks every value a typo could make dangerous.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        within(
            "gateway.listen_backlog",
            self.listen_backlog,
            1..=65_535,
            "",
        )?;
        within(
            "gateway.deadline_ms",
            self.deadline_ms,
            100..=4900,
            "WeChat waits 5 s",
        )?;
        within(
            "gateway.timestamp_window_secs",
            self.timestamp_window_secs,
            1..=86_400,
            "",
        )?;
        within(
            "gateway.max_body_bytes",
            self.max_body_bytes,
            1024..=1024 * 1024,
            "",
        )?;
        if self.dedupe_pending_ttl_ms < self.deadline_ms {
            return Err(ConfigError::value(
                "gateway.dedupe_pending_ttl_ms",
                format!(
                    "= {} must be at least gateway.deadline_ms = {}",
                    self.dedupe_pending_ttl_ms, self.deadline_ms
                ),
            ));
        }
        at_least(
            "gateway.dedupe_done_ttl_secs",
            self.dedupe_done_ttl_secs,
            30,
            "WeChat retries for ~15 s",
        )?;
        // A request stays acceptable until timestamp + window and may first have arrived as
        // early as timestamp - window: its done marker must live 2 x window, or a replay of a
        // valid request is published again.
        if self.dedupe_done_ttl_secs < 2 * self.timestamp_window_secs {
            return Err(ConfigError::value(
                "gateway.dedupe_done_ttl_secs",
                format!(
                    "= {} must be at least 2 x gateway.timestamp_window_secs = {}: a request \
                     accepted at timestamp - window can be replayed until timestamp + window, \
                     and a replay after its done marker expired would be published again",
                    self.dedupe_done_ttl_secs,
                    2 * self.timestamp_window_secs
                ),
            ));
        }
        within(
            "gateway.max_future_skew_secs",
            self.max_future_skew_secs,
            1..=3600,
            "",
        )?;
        if self.allow_plaintext.is_some() {
            return Err(ConfigError::value(
                "gateway.allow_plaintext",
                "was removed: plaintext mode is now chosen per tenant. Set `plaintext = true` in \
                 the tenants file on each Official Account that WeChat calls in plaintext mode, \
                 and remove gateway.allow_plaintext (component and WeCom callbacks are always \
                 encrypted)",
            ));
        }
        if self.dedupe_timeout_ms == 0 || self.dedupe_timeout_ms >= self.deadline_ms {
            return Err(ConfigError::value(
                "gateway.dedupe_timeout_ms",
                format!(
                    "= {} must be positive and below gateway.deadline_ms",
                    self.dedupe_timeout_ms
                ),
            ));
        }
        self.public_base()?;
        crate::forwarded::Proxies::parse(&self.trusted_proxies)
            .map_err(|e| ConfigError::value("gateway.trusted_proxies", e))?;
        self.authorize_limit_per_address
            .validate("gateway.authorize_limit_per_address")?;
        self.authorize_limit_per_tenant
            .validate("gateway.authorize_limit_per_tenant")
    }
}

/// Everything the gateway reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayConfig {
    /// Prefix of every Redis key, exchange and queue.
    pub namespace: String,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub amqp: AmqpConfig,
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
    pub gateway: GatewaySection,
}

impl GatewayConfig {
    /// Loads the layers described in the module docs and validates the result. A relative
    /// `tenants.file` is resolved against the config file's directory.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        let mut config: Self = config::load(DEFAULTS, source)?;
        config.tenants.resolve(source);
        config.validate()?;
        Ok(config)
    }

    /// Checks every value a typo could make dangerous, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_identifier("namespace", &self.namespace)?;
        self.redis.validate()?;
        self.amqp.validate()?;
        self.tenants.validate()?;
        self.telemetry.validate()?;
        self.shutdown.validate()?;
        self.token_control.validate()?;
        self.gateway.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::load(&Source {
            file: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    #[test]
    fn defaults() {
        let c = load(&[]).unwrap();
        assert_eq!(c.amqp.publisher_channels, 256);
        assert_eq!(c.namespace, "wxhub");
        assert_eq!(c.gateway.listen, "0.0.0.0:8080");
        assert_eq!(c.gateway.deadline_ms, 4000);
        assert_eq!(c.gateway.timestamp_window_secs, 300);
        assert_eq!(c.gateway.max_body_bytes, 65536);
        assert_eq!(c.gateway.listen_backlog, 4096);
        assert_eq!(c.gateway.redis_down, RedisDown::Publish);
        assert_eq!(c.gateway.max_future_skew_secs, 60);
        assert!(c.gateway.allow_plaintext.is_none());
        assert_eq!(c.token_control.endpoint, "http://127.0.0.1:50051");
        assert_eq!(c.gateway.public_base().unwrap(), None);
        assert!(c.gateway.trusted_proxies.is_empty());
        assert_eq!(
            c.gateway.authorize_limit_per_address,
            Rate::per_minute(10, 10)
        );
        assert_eq!(
            c.gateway.authorize_limit_per_tenant,
            Rate::per_minute(60, 30)
        );
    }

    #[test]
    fn authorization_page_settings() {
        let c = load(&[
            (
                "WXHUB_GATEWAY__PUBLIC_BASE_URL",
                "https://wx.example.com/hub/",
            ),
            // As the Helm chart renders it (toJson).
            ("WXHUB_GATEWAY__TRUSTED_PROXIES", r#"["10.0.0.0/8","::1"]"#),
            ("WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_ADDRESS__BURST", "3"),
        ])
        .unwrap();
        assert_eq!(
            c.gateway.public_base().unwrap().as_deref(),
            Some("https://wx.example.com/hub")
        );
        assert_eq!(c.gateway.trusted_proxies, ["10.0.0.0/8", "::1"]);
        let none = load(&[("WXHUB_GATEWAY__TRUSTED_PROXIES", "[]")]).unwrap();
        assert!(none.gateway.trusted_proxies.is_empty());
        assert_eq!(c.gateway.authorize_limit_per_address.burst, 3);
        assert_eq!(c.gateway.authorize_limit_per_address.count, 10);
        for (k, v, needle) in [
            (
                "WXHUB_GATEWAY__PUBLIC_BASE_URL",
                "wx.example.com",
                "public_base_url",
            ),
            (
                "WXHUB_GATEWAY__PUBLIC_BASE_URL",
                "ftp://wx.example.com",
                "public_base_url",
            ),
            (
                "WXHUB_GATEWAY__PUBLIC_BASE_URL",
                "https://wx.example.com/?a=1",
                "public_base_url",
            ),
            (
                "WXHUB_GATEWAY__PUBLIC_BASE_URL",
                "https://u:p@wx.example.com",
                "public_base_url",
            ),
            (
                "WXHUB_GATEWAY__TRUSTED_PROXIES",
                "[\"proxy.internal\"]",
                "trusted_proxies",
            ),
            (
                "WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_TENANT__COUNT",
                "0",
                "authorize_limit_per_tenant",
            ),
            (
                "WXHUB_GATEWAY__AUTHORIZE_LIMIT_PER_ADDRESS__BURST",
                "0",
                "authorize_limit_per_address",
            ),
        ] {
            let err = load(&[(k, v)]).unwrap_err().to_string();
            assert!(err.contains(needle), "{k}={v}: {err}");
        }
    }

    #[test]
    fn env_overrides_and_validation() {
        let c = load(&[
            ("WXHUB_GATEWAY__DEADLINE_MS", "1500"),
            ("WXHUB_GATEWAY__REDIS_DOWN", "reject"),
            ("WXHUB_NAMESPACE", "prod-1"),
        ])
        .unwrap();
        assert_eq!(c.gateway.deadline_ms, 1500);
        assert_eq!(c.gateway.redis_down, RedisDown::Reject);
        assert_eq!(c.namespace, "prod-1");

        for (k, v, needle) in [
            ("WXHUB_NAMESPACE", "Bad.NS", "namespace"),
            ("WXHUB_GATEWAY__DEADLINE_MS", "6000", "deadline_ms"),
            ("WXHUB_GATEWAY__LISTEN", "nowhere", "gateway.listen"),
            ("WXHUB_GATEWAY__LISTEN_BACKLOG", "0", "listen_backlog"),
            ("WXHUB_GATEWAY__MAX_BODY_BYTES", "10", "max_body_bytes"),
            (
                "WXHUB_GATEWAY__DEDUPE_DONE_TTL_SECS",
                "5",
                "dedupe_done_ttl_secs",
            ),
            (
                "WXHUB_GATEWAY__DEDUPE_PENDING_TTL_MS",
                "100",
                "dedupe_pending_ttl_ms",
            ),
            (
                "WXHUB_GATEWAY__DEDUPE_TIMEOUT_MS",
                "4000",
                "dedupe_timeout_ms",
            ),
            ("WXHUB_GATEWAY__REDIS_DOWN", "shrug", "redis_down"),
            (
                "WXHUB_GATEWAY__MAX_FUTURE_SKEW_SECS",
                "0",
                "max_future_skew_secs",
            ),
        ] {
            let err = load(&[(k, v)]).unwrap_err().to_string();
            assert!(err.contains(needle), "{k}={v}: {err}");
        }
    }

    #[test]
    fn the_done_marker_must_outlive_every_replay_the_window_allows() {
        // Default: window 300 s, done 600 s = 2 x window.
        assert!(load(&[]).is_ok());
        let err = load(&[("WXHUB_GATEWAY__DEDUPE_DONE_TTL_SECS", "599")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dedupe_done_ttl_secs = 599")
                && err.contains("2 x gateway.timestamp_window_secs = 600"),
            "{err}"
        );
        let err = load(&[
            ("WXHUB_GATEWAY__TIMESTAMP_WINDOW_SECS", "3600"),
            ("WXHUB_GATEWAY__DEDUPE_DONE_TTL_SECS", "3600"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("= 7200"), "{err}");
        assert!(
            load(&[
                ("WXHUB_GATEWAY__TIMESTAMP_WINDOW_SECS", "60"),
                ("WXHUB_GATEWAY__DEDUPE_DONE_TTL_SECS", "120"),
            ])
            .is_ok()
        );
    }

    #[test]
    fn the_removed_allow_plaintext_points_to_the_tenants_file() {
        for value in ["true", "false"] {
            let err = load(&[("WXHUB_GATEWAY__ALLOW_PLAINTEXT", value)])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("gateway.allow_plaintext was removed")
                    && err.contains("`plaintext = true`")
                    && err.contains("tenants file"),
                "{err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, "[gateway]\nallow_plaintext = true\n").unwrap();
        let err = GatewayConfig::load(&Source {
            file: Some(file),
            env: vec![],
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("allow_plaintext was removed"), "{err}");
        // Nor does a dump of a valid config mention it.
        assert!(!config::dump(&load(&[]).unwrap()).contains("allow_plaintext"));
    }

    #[test]
    fn dump_redacts_the_amqp_password_and_api_key() {
        let c = load(&[
            ("WXHUB_AMQP__URL", "amqp://user:hunter2@rabbit:5672/%2f"),
            ("WXHUB_CLIENT__API_KEY", "k-very-secret"),
        ])
        .unwrap();
        let dumped = config::dump(&c);
        assert!(!dumped.contains("hunter2"), "{dumped}");
        assert!(!dumped.contains("k-very-secret"), "{dumped}");
        assert!(dumped.contains("[gateway]"), "{dumped}");
    }

    #[test]
    fn relative_tenants_file_is_next_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, "[tenants]\nfile = \"tenants.toml\"\n").unwrap();
        let c = GatewayConfig::load(&Source {
            file: Some(file),
            env: vec![],
        })
        .unwrap();
        assert_eq!(c.tenants.file, dir.path().join("tenants.toml"));
    }
}
