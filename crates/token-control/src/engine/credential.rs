//! The credentials of a tenant, by name; the token handed to a caller, and a token WeChat just
//! issued.

use wxhub_runtime::Secret;
use wxhub_store::{TicketRecord, TokenRecord};
use wxhub_wechat_api::AccessToken;

/// Validity of a component_verify_ticket (WeChat: 12 hours).
pub const TICKET_VALIDITY_MS: i64 = 12 * 3600 * 1000;

/// Whether `ticket` is still valid at `now_ms`.
pub fn ticket_valid(ticket: &TicketRecord, now_ms: i64) -> bool {
    now_ms - ticket.received_at_ms < TICKET_VALIDITY_MS
}

/// Which credential of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// component_access_token.
    Component,
    /// The Official Account's or WeCom app's own access token.
    App,
    /// An authorizer_access_token.
    Authorizer(String),
    /// A JS-SDK ticket: of an authorizer, or (`None`) of the Official Account itself.
    Jsapi(Option<String>),
}

impl Credential {
    /// The name used in Redis keys and the schedule.
    pub fn name(&self) -> String {
        match self {
            Credential::Component => "component".into(),
            Credential::App => "app".into(),
            Credential::Authorizer(a) => format!("authorizer:{a}"),
            Credential::Jsapi(None) => "jsapi".into(),
            Credential::Jsapi(Some(a)) => format!("jsapi:{a}"),
        }
    }

    /// Parses a schedule member.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "component" => Some(Credential::Component),
            "app" => Some(Credential::App),
            "jsapi" => Some(Credential::Jsapi(None)),
            _ => {
                if let Some(a) = name.strip_prefix("authorizer:") {
                    Some(Credential::Authorizer(a.to_owned()))
                } else {
                    name.strip_prefix("jsapi:")
                        .map(|a| Credential::Jsapi(Some(a.to_owned())))
                }
            }
        }
    }

    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Component => "component",
            Credential::App => "app",
            Credential::Authorizer(_) => "authorizer",
            Credential::Jsapi(_) => "jsapi",
        }
    }

    /// The authorizer it belongs to, if any.
    pub fn authorizer(&self) -> Option<&str> {
        match self {
            Credential::Authorizer(a) | Credential::Jsapi(Some(a)) => Some(a),
            _ => None,
        }
    }
}

/// A token handed to a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub value: Secret,
    pub expires_at_ms: i64,
    /// When it was fetched from WeChat (ms): callers report a token's age.
    pub issued_at_ms: i64,
}

impl From<&TokenRecord> for Token {
    fn from(r: &TokenRecord) -> Self {
        Self {
            value: r.value.clone(),
            expires_at_ms: r.expires_at_ms,
            issued_at_ms: r.refreshed_at_ms,
        }
    }
}

/// A token WeChat just issued.
pub(crate) struct Issued {
    pub(crate) token: Secret,
    pub(crate) expires_in: u64,
    /// The authorizer whose token it is (the write refuses it once the account is revoked).
    pub(crate) authorizer: Option<String>,
    /// `(used, returned)` refresh tokens of an authorizer refresh.
    pub(crate) refresh: Option<(Secret, Secret)>,
    /// Asking again before this token expires returns this token (stable_token's normal
    /// mode).
    pub(crate) idempotent: bool,
}

impl Issued {
    /// A token of the tenant itself, or of `authorizer`.
    pub(crate) fn new(token: Secret, expires_in: u64, authorizer: Option<String>) -> Self {
        Self {
            token,
            expires_in,
            authorizer,
            refresh: None,
            idempotent: false,
        }
    }

    pub(crate) fn access(t: AccessToken) -> Self {
        Self::new(t.token, t.expires_in, None)
    }
}
