//! Validated ids. Each has one rule, checked wherever the id enters the system — a URL path, a
//! gRPC request, the tenants file — so every later use (a Redis key, an AMQP routing key, a
//! WeChat URL) can rely on it.
//!
//! - [`TenantId`]: `[a-z0-9-]{1,32}`. Chosen by the operator; it appears in URLs, Redis keys and
//!   routing keys, so it is restricted to what is safe in all three.
//! - [`AppId`]: `wx` or `ww`, then 1–30 of `[A-Za-z0-9_-]` — every WeChat appid (Official
//!   Account, Mini Program, third-party platform) starts with `wx` and every WeCom corpid with
//!   `ww` (older corpids with `wx`), followed today by 16 hex digits. The rule keeps the two
//!   prefixes and leaves the rest generous, so an id WeChat lengthens or re-letters tomorrow
//!   still passes, while anything that cannot be an id (`not-an-appid`, `wx:../..`, a 64-byte
//!   string) is refused before it reaches a key or a URL. 32 bytes at most keeps
//!   `tenant.appid.key` routing keys far below AMQP's 255.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an id was refused. The offending value is shown cut to 40 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("tenant id {0:?} must match [a-z0-9-]{{1,32}}")]
    Tenant(String),
    #[error(
        "appid {0:?} must match (wx|ww)[A-Za-z0-9_-]{{1,30}}: wx or ww, then 1 to 30 letters, digits, _ or -"
    )]
    App(String),
}

/// A validated tenant id: `[a-z0-9-]{1,32}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// Validates a tenant id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::Tenant(truncate(s)))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A validated WeChat appid or WeCom corpid (see the module docs for the rule).
///
/// Derefs to `str`, so it passes wherever an appid is read as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AppId(String);

impl AppId {
    /// Validates an appid or corpid.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if Self::is_valid(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::App(truncate(s)))
        }
    }

    /// Whether `s` is an appid or corpid, without allocating.
    pub fn is_valid(s: &str) -> bool {
        (3..=32).contains(&s.len())
            && (s.starts_with("wx") || s.starts_with("ww"))
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for AppId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for AppId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for AppId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for AppId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<AppId> for str {
    fn eq(&self, other: &AppId) -> bool {
        self == other.0
    }
}

impl PartialEq<AppId> for &str {
    fn eq(&self, other: &AppId) -> bool {
        *self == other.0
    }
}

impl<'de> Deserialize<'de> for AppId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AppId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `s` cut to 40 characters, for error messages.
pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        assert!(TenantId::parse("acme-1").is_ok());
        for bad in ["", "Acme", "a.b", "a_b", &"a".repeat(33)] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    /// One rule for every appid and corpid: the gateway's path, token-control's requests and
    /// the tenants file all call it.
    #[test]
    fn app_ids_are_wx_or_ww_ids() {
        for good in [
            "wx0123456789abcdef",
            "ww0c00000000000001",
            "wx-unknown-appid",
            "wxa",
            &format!("wx{}", "a".repeat(30)),
        ] {
            assert!(AppId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "wx",
            "not-an-appid",
            "gh_abcdef",
            "wx:1",
            "wx:../../etc",
            "wx 1",
            &format!("wx{}", "a".repeat(31)),
            &"a".repeat(65),
        ] {
            let err = AppId::parse(bad).unwrap_err();
            assert!(err.to_string().contains("wx or ww"), "{bad}: {err}");
        }
        let id = AppId::parse("wx0123456789abcdef").unwrap();
        assert_eq!(id, "wx0123456789abcdef");
        assert_eq!("wx0123456789abcdef", id);
        assert_eq!(id.len(), 18, "derefs to str");
    }
}
