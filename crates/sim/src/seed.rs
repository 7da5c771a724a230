//! Configuration of a sim instance and the seed (TOML or JSON) that declares its tenants,
//! accounts and users. Every field is documented in the crate README.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::endpoint::Endpoint;

/// A secret string (app secret, message token, key) that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The secret value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// How pushes to a message URL are framed (wechat-protocol.md §1.5, §1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    /// `encrypt_type=aes`, envelope with `Encrypt` only.
    #[default]
    Safe,
    /// `encrypt_type=aes`, plaintext fields next to `Encrypt`.
    Compatible,
    /// No `encrypt_type`; the body is the plaintext message.
    Plain,
}

/// Official Account or Mini Program.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default, Hash,
)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// 公众号.
    #[default]
    OfficialAccount,
    /// 小程序.
    MiniProgram,
}

/// Everything a sim starts with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Third-party platforms.
    #[serde(default)]
    pub components: Vec<ComponentSeed>,
    /// Official Accounts and Mini Programs (authorizers, or directly configured accounts).
    #[serde(default)]
    pub accounts: Vec<AccountSeed>,
    /// Accounts already authorized to a component when the sim starts.
    #[serde(default)]
    pub authorizations: Vec<AuthorizationSeed>,
    /// WeCom corporations and their agents.
    #[serde(default)]
    pub wecom: Vec<CorpSeed>,
    /// Daily quota per API path (e.g. `"/cgi-bin/token" = 2000`); overrides the defaults. A
    /// path the sim does not serve is refused.
    #[serde(default)]
    pub quotas: BTreeMap<String, u64>,
}

impl Seed {
    /// Parses a TOML seed file's text.
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        // Only the message and position: toml's rendering quotes the offending line, which may
        // hold a secret.
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            SimError::Seed(format!("{}{at}", e.message().trim_end()))
        })
    }

    /// Reads and parses a TOML seed file.
    pub fn load(path: &std::path::Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SimError::Seed(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }
}

/// A third-party platform (component).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComponentSeed {
    /// component_appid.
    pub appid: String,
    /// component_appsecret.
    pub secret: Secret,
    /// Message verification token (消息校验Token).
    pub token: Secret,
    /// 43-character EncodingAESKey.
    pub aes_key: Secret,
    /// 授权事件接收URL: tickets and authorization notices are pushed here.
    #[serde(default)]
    pub auth_event_url: Option<String>,
    /// 消息与事件接收URL with `$APPID$`, replaced by the authorizer appid on each push.
    #[serde(default)]
    pub message_url_template: Option<String>,
    /// Framing of message-URL pushes (the authorization-event URL is always safe mode).
    #[serde(default)]
    pub encryption: Encryption,
    /// Push a component_verify_ticket every 10 virtual minutes (also needs the global switch).
    #[serde(default = "yes")]
    pub auto_ticket_push: bool,
}

/// An Official Account or Mini Program.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AccountSeed {
    /// The account's appid.
    pub appid: String,
    /// Original id (原始ID), `gh_...`: the `ToUserName` of pushes.
    pub user_name: String,
    /// `official_account` (default) or `mini_program`.
    #[serde(default)]
    pub kind: AccountKind,
    /// Display name (`nick_name` in api_get_authorizer_info).
    #[serde(default)]
    pub nick_name: Option<String>,
    /// AppSecret: set it to allow `/cgi-bin/token` and `/cgi-bin/stable_token` for this account.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Direct server configuration (an account not behind a component).
    #[serde(default)]
    pub callback: Option<CallbackSeed>,
    /// Permission-set ids granted when it authorizes a component (default by kind).
    #[serde(default)]
    pub func_info: Option<Vec<u32>>,
    /// Template ids usable with `/cgi-bin/message/template/send`.
    #[serde(default)]
    pub templates: Vec<String>,
    /// Template ids usable with `/cgi-bin/message/subscribe/bizsend` and `/subscribe/send`.
    #[serde(default)]
    pub subscribe_templates: Vec<String>,
    /// Users (openids) known to this account.
    #[serde(default)]
    pub users: Vec<UserSeed>,
    /// `service_type_info.id` (OA: 0 subscription, 2 service; default 2 for OA, 0 for MP).
    #[serde(default)]
    pub service_type: Option<i64>,
    /// `verify_type_info.id` (-1 unverified, 0 WeChat-verified; default 0).
    #[serde(default)]
    pub verify_type: Option<i64>,
    /// `principal_name`.
    #[serde(default)]
    pub principal_name: Option<String>,
}

/// A directly configured account's server settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CallbackSeed {
    /// Where messages of this account are pushed.
    pub url: String,
    /// Message verification token.
    pub token: Secret,
    /// EncodingAESKey (required unless `encryption = "plain"`).
    #[serde(default)]
    pub aes_key: Option<Secret>,
    /// Framing of pushes.
    #[serde(default)]
    pub encryption: Encryption,
}

/// A user (follower) of an account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserSeed {
    /// OpenID (unique per account).
    pub openid: String,
    /// Follows the account (template messages need it).
    #[serde(default = "yes")]
    pub subscribed: bool,
    /// The user sent a message this many seconds before the sim started: opens the 48 h
    /// customer-service window (5 messages).
    #[serde(default)]
    pub last_interaction_ago_secs: Option<u64>,
    /// One-time subscription allowance per template id (subscribe/bizsend, subscribe/send).
    #[serde(default)]
    pub subscribe_allowance: BTreeMap<String, u32>,
}

/// An account already authorized to a component.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationSeed {
    /// The component.
    pub component_appid: String,
    /// The authorizer (must be declared in `accounts`).
    pub authorizer_appid: String,
    /// A fixed refresh token (random `refreshtoken@@@...` when absent).
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// Overrides the account's permission sets for this authorization.
    #[serde(default)]
    pub func_info: Option<Vec<u32>>,
}

impl AuthorizationSeed {
    /// `authorizer_appid` authorized to `component_appid` with a random refresh token and the
    /// account's own permission sets.
    pub fn new(component_appid: &str, authorizer_appid: &str) -> Self {
        Self {
            component_appid: component_appid.to_owned(),
            authorizer_appid: authorizer_appid.to_owned(),
            refresh_token: None,
            func_info: None,
        }
    }
}

/// A WeCom corporation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorpSeed {
    /// corpid.
    pub corpid: String,
    /// Its self-built apps.
    #[serde(default)]
    pub agents: Vec<AgentSeed>,
}

/// A WeCom agent (self-built app).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSeed {
    /// AgentID.
    pub agentid: u64,
    /// corpsecret of this agent.
    pub secret: Secret,
    /// Callback token.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Callback EncodingAESKey.
    #[serde(default)]
    pub aes_key: Option<Secret>,
    /// Callback URL.
    #[serde(default)]
    pub callback_url: Option<String>,
}

fn yes() -> bool {
    true
}

/// Settings of one sim instance.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Listen address (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// `expires_in` of every access token and JS-SDK ticket (default 7200 s).
    pub token_ttl: Duration,
    /// How long the previous token stays valid after a new one is issued (default 300 s).
    pub token_overlap: Duration,
    /// Push component_verify_ticket on the 10-minute virtual schedule (default on).
    pub auto_ticket_push: bool,
    /// Interval of automatic ticket pushes in virtual time (default 600 s).
    pub ticket_interval: Duration,
    /// Validity of a pushed ticket (default 12 h).
    pub ticket_validity: Duration,
    /// `expires_in` of pre-auth codes (default 600 s).
    pub pre_auth_code_ttl: Duration,
    /// `expires_in` of authorization codes (default 600 s).
    pub auth_code_ttl: Duration,
    /// When on, every api_authorizer_token returns a new refresh token; the old one stays valid
    /// for `token_overlap` (WeChat normally keeps it; default off).
    pub rotate_refresh_tokens: bool,
    /// Timeout of one push attempt (WeChat: 5 s).
    pub push_timeout: Duration,
    /// Attempts per push (WeChat: 3 in total).
    pub push_attempts: u32,
    /// Seed of the fault-injection RNG (reproducible probabilities); random when absent.
    pub fault_seed: Option<u64>,
    /// Bound of each record (API calls, accepted messages, push reports); oldest dropped first.
    pub record_capacity: usize,
    /// Allowed monthly `clear_quota` uses per appid (WeChat: 10).
    pub clear_quota_per_month: u32,
    /// stable_token `force_refresh` uses per appid and CST day; past it 45009 (WeChat: 20).
    pub force_refresh_per_day: u32,
    /// Least time between two `force_refresh` uses of an appid; sooner is 45011 (WeChat: 30 s).
    pub force_refresh_interval: Duration,
    /// The initial tenants, accounts and users.
    pub seed: Option<Seed>,
    /// Customer-service messages a user's message allows within 48 h: the current doc says 5,
    /// older docs and blogs 20 (messaging.md §1). Default 5.
    pub custom_messages_per_interaction: u32,
    /// Calls per (account, send API) per minute of sim time before 45011 "api minute-quota
    /// reach limit" (custom, template, bizsend, subscribe sends). Default: no limit.
    pub send_minute_limit: Option<u32>,
    /// After a successful template or subscribe send, push its delivery report
    /// (TEMPLATESENDJOBFINISH with `Status`, or subscribe_msg_sent_event) to the account's
    /// message URL this long (real time) later, with the msgid the send returned. Default off.
    pub delivery_report_delay: Option<Duration>,
    /// Recipients whose delivery reports fail (`failed:user block`; subscribe ErrorCode
    /// 10005).
    pub failed_delivery_openids: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_ttl: Duration::from_secs(7200),
            token_overlap: Duration::from_secs(300),
            auto_ticket_push: true,
            ticket_interval: Duration::from_secs(600),
            ticket_validity: Duration::from_secs(12 * 3600),
            pre_auth_code_ttl: Duration::from_secs(600),
            auth_code_ttl: Duration::from_secs(600),
            rotate_refresh_tokens: false,
            push_timeout: Duration::from_secs(5),
            push_attempts: 3,
            fault_seed: None,
            record_capacity: 100_000,
            clear_quota_per_month: 10,
            force_refresh_per_day: 20,
            force_refresh_interval: Duration::from_secs(30),
            seed: None,
            custom_messages_per_interaction: 5,
            send_minute_limit: None,
            delivery_report_delay: None,
            failed_delivery_openids: Vec::new(),
        }
    }
}

/// Default daily quotas: the documented Official Account limits, stable_token's own
/// (getStableAccessToken: 500,000 a day) and the reported component limit
/// (wechat-protocol.md §2.15). Endpoints not listed are unlimited unless seeded.
pub(crate) const DEFAULT_QUOTAS: [(Endpoint, u64); 5] = [
    (Endpoint::Token, 2000),
    (Endpoint::StableToken, 500_000),
    (Endpoint::ComponentToken, 10_000),
    (Endpoint::CustomSend, 500_000),
    (Endpoint::TemplateSend, 100_000),
];

/// The default daily quotas by path, as a seed's `quotas` names them.
pub fn default_quotas() -> BTreeMap<String, u64> {
    DEFAULT_QUOTAS
        .into_iter()
        .map(|(endpoint, n)| (endpoint.path().to_owned(), n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_never_quote_the_line() {
        let err = Seed::from_toml("[[components]]\nappid = \"wx1\"\nsecret = \"top-secret-value\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("top-secret-value"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let err = Seed::from_toml("[[components]]\nappid = \"wx1\"\nsecret = \"s3cr3t\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("token") && !err.contains("s3cr3t"), "{err}");
    }
}
