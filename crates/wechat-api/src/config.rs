//! `[wechat]`: where the WeChat APIs live (the simulator in tests and the demo).

use serde::{Deserialize, Serialize};
use wxhub_domain::config::{ConfigError, http_url, within};

/// `[wechat]` config section (every key optional; a key it does not know is refused).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WechatConfig {
    /// Host of the Official Account and component APIs (default `https://api.weixin.qq.com`).
    pub api_base: String,
    /// Host of the WeCom APIs (default `https://qyapi.weixin.qq.com`).
    pub qyapi_base: String,
    /// Host of the component authorization pages, `componentloginpage` / `bindcomponent`
    /// (default `https://mp.weixin.qq.com`).
    pub mp_base: String,
    /// Bound on one WeChat call (default 5000).
    pub timeout_ms: u64,
}

impl Default for WechatConfig {
    fn default() -> Self {
        Self {
            api_base: "https://api.weixin.qq.com".into(),
            qyapi_base: "https://qyapi.weixin.qq.com".into(),
            mp_base: "https://mp.weixin.qq.com".into(),
            timeout_ms: 5000,
        }
    }
}

impl WechatConfig {
    /// Checks what the types cannot: absolute http(s) hosts, a timeout WeChat can answer in.
    pub fn validate(&self) -> Result<(), ConfigError> {
        http_url("wechat.api_base", &self.api_base)?;
        http_url("wechat.qyapi_base", &self.qyapi_base)?;
        http_url("wechat.mp_base", &self.mp_base)?;
        within("wechat.timeout_ms", self.timeout_ms, 1..=60_000, "")
    }
}
