//! Layered configuration shared by every binary.
//!
//! Order (later wins): the common defaults below → the service's embedded defaults → the file
//! named by `--config` or `WXHUB_CONFIG` → environment variables `WXHUB_<SECTION>__<KEY>`
//! (`WXHUB_REDIS__URL` sets `redis.url`, `WXHUB_NAMESPACE` sets `namespace`).
//! Each service composes its own config struct from sections defined next to the client they
//! configure; unknown keys are ignored so one file can serve every binary.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Keys every binary understands, with their defaults.
pub const COMMON_DEFAULTS: &str = r#"
# Prefix of every Redis key, exchange and queue.
namespace = "wxhub"

[redis]
url = "redis://127.0.0.1:6379"

[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"

[wechat]
api_base = "https://api.weixin.qq.com"
qyapi_base = "https://qyapi.weixin.qq.com"
# Host of the component authorization pages (componentloginpage / bindcomponent).
mp_base = "https://mp.weixin.qq.com"
timeout_ms = 5000

[tenants]
file = "/etc/wxhub/tenants.toml"
reload_interval_ms = 2000

[telemetry]
# "text" or "json"
format = "text"
# tracing EnvFilter directives; RUST_LOG overrides.
filter = "info"
# OTLP/gRPC collector endpoint; empty disables export.
otlp_endpoint = ""

[shutdown]
# Bound on draining in-flight work after SIGTERM; keep below terminationGracePeriodSeconds.
grace_ms = 10000

[token_control]
endpoint = "http://127.0.0.1:50051"

[client]
# API key this process presents to token-control (gateway, worker, CLI).
api_key = ""
"#;

/// Environment-variable prefix.
pub const ENV_PREFIX: &str = "WXHUB_";

/// A secret string: prints, logs and serializes as `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is sent or used.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

/// A URL that may carry a password (`amqp://user:pass@host`); prints with the password masked.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The full URL, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(u) => u.to_string(),
            Err(_) => "<unparsable url>".to_owned(),
        }
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// `[wechat]`: where the WeChat APIs live (the simulator in tests and the demo).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WechatConfig {
    pub api_base: String,
    pub qyapi_base: String,
    pub mp_base: String,
    pub timeout_ms: u64,
}

/// `[shutdown]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShutdownConfig {
    pub grace_ms: u64,
}

/// `[client]`: this process's identity towards token-control.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ClientConfig {
    pub api_key: Secret,
}

/// Where configuration comes from, so tests inject values instead of mutating the process env.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The config file, if any.
    pub file: Option<PathBuf>,
    /// Environment variables (only those with the `WXHUB_` prefix are used).
    pub env: Vec<(String, String)>,
}

impl Source {
    /// The process's view: `--config` (else `WXHUB_CONFIG`) and its environment.
    pub fn from_process(config_flag: Option<PathBuf>) -> Self {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file = config_flag.or_else(|| {
            env.iter()
                .find(|(k, _)| k == "WXHUB_CONFIG")
                .map(|(_, v)| PathBuf::from(v))
        });
        Self { file, env }
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from the layers described in the module docs.
pub fn load<T: DeserializeOwned>(
    service_defaults: &str,
    source: &Source,
) -> Result<T, ConfigError> {
    let mut figment = Figment::new()
        .merge(Toml::string(COMMON_DEFAULTS))
        .merge(Toml::string(service_defaults));
    if let Some(path) = &source.file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // Parse eagerly so a syntax error names the file rather than surfacing at extract.
        toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        figment = figment.merge(Toml::string(&text));
    }
    figment = figment.merge(EnvVars(source.env.clone()));
    figment
        .extract()
        .map_err(|e| ConfigError::Invalid(e.to_string().replace('\n', "; ")))
}

/// The effective configuration as TOML, secrets redacted (for `--dump-config`).
pub fn dump<T: Serialize>(config: &T) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

/// Checks a namespace or tenant-like identifier: `[a-z0-9-]{1,32}`.
pub fn validate_identifier(what: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 32
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{what} {value:?} must match [a-z0-9-]{{1,32}}"
        )))
    }
}

/// Resolves `path` against the directory of the config file, so relative paths in a config
/// file mean "next to this file".
pub fn resolve_relative(config_file: Option<&Path>, path: &Path) -> PathBuf {
    match config_file.and_then(Path::parent) {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// `WXHUB_SECTION__KEY=value` pairs as a figment provider (values are type-inferred like
/// figment's own `Env`: `5000` is an integer, `true` a boolean).
struct EnvVars(Vec<(String, String)>);

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named("WXHUB_ environment variables")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in &self.0 {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest.is_empty() || rest == "CONFIG" {
                continue;
            }
            let path = rest.to_ascii_lowercase().replace("__", ".");
            let parsed: Value = value.parse().unwrap_or_else(|_| Value::from(value.clone()));
            if let Some(nested) = figment::util::nest(&path, parsed).into_dict() {
                dict = merge_dicts(dict, nested);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

fn merge_dicts(mut base: Dict, other: Dict) -> Dict {
    for (k, v) in other {
        match (base.remove(&k), v) {
            (Some(Value::Dict(_, a)), Value::Dict(tag, b)) => {
                base.insert(k, Value::Dict(tag, merge_dicts(a, b)));
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Demo {
        namespace: String,
        wechat: WechatConfig,
        client: ClientConfig,
        svc: Svc,
    }

    #[derive(Debug, Deserialize, Serialize)]
    struct Svc {
        listen: String,
        deadline_ms: u64,
        amqp_url: SecretUrl,
    }

    const SVC: &str =
        "[svc]\nlisten = \"0.0.0.0:8080\"\ndeadline_ms = 4000\namqp_url = \"amqp://u:p@h/\"\n";

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "namespace = \"filens\"\n[svc]\ndeadline_ms = 100\n").unwrap();
        let source = Source {
            file: Some(file),
            env: vec![
                ("WXHUB_SVC__DEADLINE_MS".into(), "250".into()),
                ("WXHUB_WECHAT__API_BASE".into(), "http://127.0.0.1:9".into()),
                ("WXHUB_CLIENT__API_KEY".into(), "k-123".into()),
                ("OTHER".into(), "ignored".into()),
            ],
        };
        let cfg: Demo = load(SVC, &source).unwrap();
        assert_eq!(cfg.namespace, "filens");
        assert_eq!(cfg.svc.deadline_ms, 250);
        assert_eq!(cfg.svc.listen, "0.0.0.0:8080");
        assert_eq!(cfg.wechat.api_base, "http://127.0.0.1:9");
        assert_eq!(cfg.wechat.qyapi_base, "https://qyapi.weixin.qq.com");
        assert_eq!(cfg.client.api_key.expose(), "k-123");
    }

    #[test]
    fn dump_redacts_secrets_and_passwords() {
        let source = Source {
            file: None,
            env: vec![("WXHUB_CLIENT__API_KEY".into(), "supersecret".into())],
        };
        let cfg: Demo = load(SVC, &source).unwrap();
        let dumped = dump(&cfg);
        assert!(!dumped.contains("supersecret"), "{dumped}");
        assert!(dumped.contains("<redacted>"));
        assert!(dumped.contains("amqp://u:***@h/"), "{dumped}");
        assert!(!format!("{cfg:?}").contains("supersecret"));
    }

    #[test]
    fn bad_file_and_bad_types_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "namespace = [").unwrap();
        let err = load::<Demo>(
            SVC,
            &Source {
                file: Some(file),
                env: vec![],
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("bad.toml"), "{err}");
        let env = vec![("WXHUB_SVC__DEADLINE_MS".into(), "soon".into())];
        let err = load::<Demo>(SVC, &Source { file: None, env }).unwrap_err();
        assert!(err.to_string().contains("deadline_ms"), "{err}");
        let missing = load::<Demo>(
            SVC,
            &Source {
                file: Some("/nonexistent/x.toml".into()),
                env: vec![],
            },
        );
        assert!(missing.is_err());
    }

    #[test]
    fn identifiers() {
        assert!(validate_identifier("namespace", "wxhub-test-1").is_ok());
        assert!(validate_identifier("namespace", "").is_err());
        assert!(validate_identifier("namespace", "Upper").is_err());
        assert!(validate_identifier("namespace", &"a".repeat(33)).is_err());
        assert!(validate_identifier("namespace", "a.b").is_err());
    }
}
