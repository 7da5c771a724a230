//! Layered configuration shared by every binary, and the rule every section follows.
//!
//! Order (later wins): the defaults of each section's type (and of the service's own sections,
//! an embedded TOML) → the file named by `--config` or `WXHUB_CONFIG` → environment variables
//! `WXHUB_<SECTION>__<KEY>` (`WXHUB_REDIS__URL` sets `redis.url`, `WXHUB_NAMESPACE` sets
//! `namespace`).
//!
//! One file serves every binary, so a binary ignores the sections it does not read. Inside a
//! section it reads, every key must be one it knows: each section struct refuses unknown keys
//! (`#[serde(deny_unknown_fields)]`), so `[redis] clustr_nodes = […]` is an error that names
//! `clustr_nodes` instead of a setting with no effect. A section with a server part and a
//! client part (`[token_control]`: `listen`… and `endpoint`) is owned by the server, whose
//! struct lists every key; a client reads it through a view of its own keys only (see
//! `wxhub_token_client::TokenControlEndpoint`). At the top level only `namespace` is a key;
//! everything else in a file is a section.
//!
//! Sections live next to what they configure (`[redis]` in the store, `[amqp]` in the bus,
//! `[wechat]` in the WeChat API client, `[client]` in the token-control client); this module
//! has the sections of the service kit itself (`[shutdown]`; `[tenants]` and `[telemetry]` in
//! their modules). Each checks its limits once, at load, with [`ConfigError`] naming the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
pub use wxhub_domain::config::{ConfigError, at_least, http_url, within};
pub use wxhub_domain::{Secret, SecretUrl};

/// The top-level keys (the only one: every other setting belongs to a section).
pub const COMMON_DEFAULTS: &str = r#"
# Prefix of every Redis key, exchange and queue.
namespace = "wxhub"
"#;

/// Environment-variable prefix.
pub const ENV_PREFIX: &str = "WXHUB_";

/// `[shutdown]` (a key it does not know is refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Bound on draining in-flight work after SIGTERM, all steps together (default 10000);
    /// keep it below the orchestrator's termination grace period.
    pub grace_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_ms: 10_000 }
    }
}

impl ShutdownConfig {
    /// Checks what the type cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        within("shutdown.grace_ms", self.grace_ms, 1..=600_000, "")
    }

    /// The drain bound.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
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

/// Loads `T` from the layers described in the module docs.
pub fn load<T: DeserializeOwned>(
    service_defaults: &str,
    source: &Source,
) -> Result<T, ConfigError> {
    let mut figment = Figment::new()
        .merge(Toml::string(COMMON_DEFAULTS))
        .merge(Toml::string(service_defaults));
    if let Some(path) = &source.file {
        let file_error = |reason: String| ConfigError::File {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        // Parse eagerly so a syntax error names the file rather than surfacing at extract.
        let table = toml::from_str::<toml::Table>(&text).map_err(|e| file_error(e.to_string()))?;
        // A top-level key other than `namespace` is a typo or a key outside its section; the
        // loader of a binary that does not read it would otherwise never say so.
        if let Some((key, _)) = table
            .iter()
            .find(|(key, value)| !value.is_table() && key.as_str() != "namespace")
        {
            return Err(file_error(format!(
                "unknown top-level key `{key}`: the only one is `namespace`, every other \
                 setting belongs to a [section]"
            )));
        }
        // From the file (not the text read above), so errors name it.
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(EnvVars(source.env.clone()));
    figment.extract().map_err(describe)
}

/// figment's errors as one line each: the key, what is wrong, and where the value came from.
fn describe(errors: figment::Error) -> ConfigError {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let from = match e.metadata.as_ref() {
                Some(m) => match &m.source {
                    Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
                    _ => format!(" (from {})", m.name),
                },
                None => String::new(),
            };
            format!("{}: {}{from}", e.path.join("."), e.kind)
        })
        .collect();
    ConfigError::Parse(lines.join("; "))
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
        Err(ConfigError::value(
            what,
            format!("{value:?} must match [a-z0-9-]{{1,32}}"),
        ))
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
    use wxhub_store::RedisConfig;
    use wxhub_token_client::ClientConfig;
    use wxhub_wechat_api::WechatConfig;

    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Demo {
        namespace: String,
        #[serde(default)]
        wechat: WechatConfig,
        #[serde(default)]
        client: ClientConfig,
        #[serde(default)]
        redis: RedisConfig,
        svc: Svc,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
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

    fn file_source(text: &str) -> (tempfile::TempDir, Source) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        (
            dir,
            Source {
                file: Some(file),
                env: vec![],
            },
        )
    }

    /// A Redis Cluster's nodes come as a TOML list from the file or the environment, as the
    /// test harnesses pass them (`WXHUB_REDIS__CLUSTER_NODES`); passwords stay redacted.
    #[test]
    fn redis_cluster_nodes_load_from_a_file_or_the_environment() {
        let env = vec![(
            "WXHUB_REDIS__CLUSTER_NODES".into(),
            "[\"redis://:pw1@127.0.0.1:7101\",\"redis://:pw1@127.0.0.1:7102\"]".into(),
        )];
        let cfg: Demo = load(SVC, &Source { file: None, env }).unwrap();
        assert!(cfg.redis.is_cluster());
        assert_eq!(cfg.redis.cluster_nodes.len(), 2);
        assert_eq!(
            cfg.redis.cluster_nodes[1].expose(),
            "redis://:pw1@127.0.0.1:7102"
        );
        assert!(cfg.redis.validate().is_ok());
        assert!(!format!("{:?}", cfg.redis).contains("pw1"));
        let (_dir, source) = file_source(
            "[redis]\ncluster_nodes = [\"redis://10.0.0.1:6379\"]\ncluster_retry_ms = 500\n",
        );
        let cfg: Demo = load(SVC, &source).unwrap();
        assert_eq!(cfg.redis.cluster_retry_ms, 500);
        assert!(cfg.redis.is_cluster());
    }

    /// A misspelt key inside a section the binary reads is refused, naming the key — in the
    /// file and in the environment — instead of a setting that silently has no effect.
    #[test]
    fn a_misspelt_key_in_a_known_section_is_refused_naming_it() {
        let (_dir, source) = file_source("[redis]\nclustr_nodes = [\"a:1\", \"b:2\"]\n");
        let err = load::<Demo>(SVC, &source).unwrap_err().to_string();
        assert!(err.contains("clustr_nodes"), "{err}");
        let (_dir, source) = file_source("[svc]\ndeadline_sm = 5\n");
        let err = load::<Demo>(SVC, &source).unwrap_err().to_string();
        assert!(err.contains("deadline_sm"), "{err}");
        let env = vec![("WXHUB_REDIS__RESPONSE_TIMEOUT".into(), "5".into())];
        let err = load::<Demo>(SVC, &Source { file: None, env })
            .unwrap_err()
            .to_string();
        assert!(err.contains("response_timeout"), "{err}");
    }

    /// One file serves every binary: a section this binary does not read may be there, with
    /// any keys; so may environment variables of other tools. A top-level key other than
    /// `namespace` in a file is refused (it belongs to a section or is a typo).
    #[test]
    fn other_binaries_sections_are_left_alone_but_top_level_typos_are_not() {
        let (_dir, mut source) =
            file_source("namespace = \"n\"\n[worker]\nops_listen = \"x\"\nwhatever = 1\n");
        source
            .env
            .push(("WXHUB_TEST_REDIS_URL".into(), "redis://x".into()));
        assert_eq!(load::<Demo>(SVC, &source).unwrap().namespace, "n");
        let (_dir, source) = file_source("namspace = \"n\"\n");
        let err = load::<Demo>(SVC, &source).unwrap_err().to_string();
        assert!(err.contains("`namspace`"), "{err}");
    }
}
