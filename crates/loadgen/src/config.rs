//! What a run does: the callback kinds, their mix, the target and the pacing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wxhub_sim::{Encryption, Secret};

use crate::LoadError;

/// Kinds of callbacks the generator can post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum LoadKind {
    /// Text message (unique MsgId).
    Text,
    /// Image message.
    Image,
    /// Voice message.
    Voice,
    /// Location message.
    Location,
    /// Link message.
    Link,
    /// `CLICK` event (unique FromUserName).
    Event,
}

impl std::str::FromStr for LoadKind {
    type Err = LoadError;
    fn from_str(s: &str) -> Result<Self, LoadError> {
        Ok(match s {
            "text" => Self::Text,
            "image" => Self::Image,
            "voice" => Self::Voice,
            "location" => Self::Location,
            "link" => Self::Link,
            "event" => Self::Event,
            other => {
                return Err(LoadError::Config(format!(
                    "unknown load kind {other:?} (text, image, voice, location, link, event)"
                )));
            }
        })
    }
}

/// Parses `text=80,event=20`.
pub fn parse_mix(s: &str) -> Result<Vec<(LoadKind, u32)>, LoadError> {
    let mut mix = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (kind, weight) = part
            .split_once('=')
            .ok_or_else(|| LoadError::Config(format!("mix entry {part:?} is not kind=weight")))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| LoadError::Config(format!("mix weight {weight:?} is not a number")))?;
        mix.push((kind.trim().parse()?, weight));
    }
    if mix.is_empty() || mix.iter().all(|(_, w)| *w == 0) {
        return Err(LoadError::Config("mix needs a positive weight".into()));
    }
    Ok(mix)
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Gateway base URL, e.g. `http://127.0.0.1:8080`.
    pub gateway: String,
    /// Tenant id in the path.
    pub tenant: String,
    /// Authorizer appid in the path and envelope.
    pub appid: String,
    /// `ToUserName` (the account's gh_ id).
    pub to_user_name: String,
    /// Message token of the component (or account).
    pub token: Secret,
    /// EncodingAESKey.
    pub aes_key: Secret,
    /// Receive-id inside the ciphertext (the component appid).
    pub component_appid: String,
    /// Target rate per second (open loop); `None` = as fast as possible (closed loop).
    pub rate: Option<f64>,
    /// Closed loop: workers, each with its own connection. Open loop: the most requests in
    /// flight (connections are opened as needed and kept alive).
    pub concurrency: usize,
    /// How long to run.
    pub duration: Duration,
    /// Weighted mix of callback kinds.
    pub mix: Vec<(LoadKind, u32)>,
    /// Framing.
    pub mode: Encryption,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Memory bound of the pre-generated pool, bytes.
    pub pool_bytes: usize,
    /// Full URL instead of `{gateway}/wx/{tenant}/callback/{appid}`.
    pub url: Option<String>,
}

impl LoadConfig {
    /// A closed-loop run of text messages with sensible defaults.
    pub fn new(
        gateway: &str,
        tenant: &str,
        appid: &str,
        token: &str,
        aes_key: &str,
        component_appid: &str,
    ) -> Self {
        Self {
            gateway: gateway.to_owned(),
            tenant: tenant.to_owned(),
            appid: appid.to_owned(),
            to_user_name: "gh_load_test".into(),
            token: token.into(),
            aes_key: aes_key.into(),
            component_appid: component_appid.to_owned(),
            rate: None,
            concurrency: 32,
            duration: Duration::from_secs(10),
            mix: vec![(LoadKind::Text, 80), (LoadKind::Event, 20)],
            mode: Encryption::Safe,
            timeout: Duration::from_secs(10),
            pool_bytes: 256 * 1024 * 1024,
            url: None,
        }
    }

    pub(crate) fn target(&self) -> String {
        self.url.clone().unwrap_or_else(|| {
            format!(
                "{}/wx/{}/callback/{}",
                self.gateway.trim_end_matches('/'),
                self.tenant,
                self.appid
            )
        })
    }
}
