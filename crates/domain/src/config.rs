//! The one error of configuration, and the checks every section's `validate` shares.
//!
//! Each section of the config file is a struct next to what it configures (`[redis]` in the
//! store, `[amqp]` in the bus, `[wechat]` in the WeChat API client, `[client]` in the
//! token-control client, each service's own section in the service). Every section
//! - refuses keys it does not know (`#[serde(deny_unknown_fields)]`), so a misspelt key is an
//!   error that names it instead of a setting silently left at its default;
//! - takes closed choices as enums, so a wrong word is refused while parsing;
//! - checks its limits once, at load, in a `validate(&self) -> Result<(), ConfigError>` built
//!   from [`within`], [`at_least`] and [`http_url`] — code that uses a value never clamps it.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::PathBuf;

/// Why configuration could not be loaded. Messages name the key; values are shown only for
/// numbers and URLs, never for secrets.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or is not TOML.
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A key is unknown, missing or of the wrong type, or a choice is not one of its words.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is outside what its key allows.
    #[error("invalid configuration: {key} {problem}")]
    Value { key: String, problem: String },
}

impl ConfigError {
    /// `key` has a value it must not have; `problem` reads after the key ("must be set").
    pub fn value(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Value {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// `key = value` must lie within `range`; `why` (may be empty) says what the bound protects.
pub fn within<T: PartialOrd + Display>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
    why: &str,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(ConfigError::value(
        key,
        format!(
            "= {value} must be within {}..={}{}",
            range.start(),
            range.end(),
            because(why)
        ),
    ))
}

/// `key = value` must be at least `min`; `why` (may be empty) says what the bound protects.
pub fn at_least<T: PartialOrd + Display>(
    key: &str,
    value: T,
    min: T,
    why: &str,
) -> Result<(), ConfigError> {
    if value >= min {
        return Ok(());
    }
    Err(ConfigError::value(
        key,
        format!("= {value} must be at least {min}{}", because(why)),
    ))
}

/// `key` must be an absolute `http(s)://host…` URL.
pub fn http_url(key: &str, value: &str) -> Result<(), ConfigError> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(ConfigError::value(
            key,
            format!("= {value:?} must be an absolute http(s) URL"),
        )),
    }
}

fn because(why: &str) -> String {
    if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_key_and_the_bound() {
        assert!(within("a.b", 5, 1..=10, "").is_ok());
        let err = within("gateway.deadline_ms", 6000, 100..=4900, "WeChat waits 5 s");
        assert_eq!(
            err.unwrap_err().to_string(),
            "invalid configuration: gateway.deadline_ms = 6000 must be within 100..=4900 \
             (WeChat waits 5 s)"
        );
        assert!(at_least("x.n", 1u64, 1, "").is_ok());
        assert_eq!(
            at_least("amqp.prefetch", 0u16, 1, "")
                .unwrap_err()
                .to_string(),
            "invalid configuration: amqp.prefetch = 0 must be at least 1"
        );
        assert!(http_url("wechat.api_base", "https://api.weixin.qq.com").is_ok());
        for bad in ["ftp://x", "api.weixin.qq.com", "http://", ""] {
            let err = http_url("wechat.api_base", bad).unwrap_err().to_string();
            assert!(err.contains("wechat.api_base"), "{bad}: {err}");
        }
    }
}
