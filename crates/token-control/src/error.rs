//! token-control's error: what went wrong, as a type, so callers decide on the cause (a revoked
//! authorizer, a missing ticket, WeChat's quota) and never on the wording.
//!
//! Guarantee: every failure maps to one [`ErrorCode`] in one place ([`Error::code`]), which
//! gives the gRPC status (through the runtime's table) and the retry decision of the bus
//! consumer; messages are sanitised (never a secret). A failed WeChat call keeps the
//! [`WechatError`] itself, so its [`ErrorClass`] and errcode stay available to the code that
//! acts on them.

use wxhub_runtime::{ErrorCode, TenantKind};
use wxhub_store::StoreError;
use wxhub_wechat_api::{ErrorClass, WechatError};

/// A failure of token-control, by cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No tenant with this id.
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    /// No authorizer with this appid (after a re-list, where one was due).
    #[error("unknown authorizer {0}")]
    UnknownAuthorizer(String),
    /// The call is for component tenants.
    #[error("tenant {tenant:?} is a {} tenant; this call is for components", .kind.as_str())]
    NotComponent { tenant: String, kind: TenantKind },
    /// The tenant's kind has no such credential.
    #[error("a {} tenant has no {credential} token", .kind.as_str())]
    NoToken {
        kind: TenantKind,
        credential: &'static str,
    },
    /// JS-SDK tickets exist for component authorizers and Official Accounts only.
    #[error("JS-SDK tickets exist for component authorizers and Official Accounts")]
    NoJsapiTicket,
    /// The authorizer is marked revoked (`reason` as stored).
    #[error(
        "authorizer {appid} no longer authorizes this component ({}); the account must authorize again",
        .reason.as_deref().unwrap_or("revoked")
    )]
    Revoked {
        appid: String,
        reason: Option<String>,
    },
    /// The fenced write found the authorizer revoked while its token was being refreshed.
    #[error("the account no longer authorizes this component")]
    RevokedMeanwhile,
    /// No usable component_verify_ticket is stored; WeChat was asked to push one, so the same
    /// request can succeed later.
    #[error(
        "tenant {tenant:?} has no valid component_verify_ticket yet; WeChat was asked to push one"
    )]
    NoTicket { tenant: String },
    /// The authorizer has no refresh token, and WeChat's list has none either.
    #[error(
        "authorizer {appid} has no refresh token (WeChat lists none); the account must authorize again"
    )]
    NoRefreshToken { appid: String },
    /// The authorization code was already exchanged on this path.
    #[error("the authorization code was already used; authorize again")]
    CodeUsed,
    /// WeChat refused this authorization code before (the remembered reason).
    #[error("{0}")]
    CodeRefused(String),
    /// An authorization that neither the code nor WeChat's list could store.
    #[error("authorizer {appid} could not be stored: {cause}")]
    NotStored { appid: String, cause: Box<Error> },
    /// A WeChat call failed (`what`: e.g. "listing the authorizers").
    #[error("{}", describe(.what, .cause))]
    Wechat {
        what: &'static str,
        #[source]
        cause: WechatError,
    },
    /// A dependency (Redis) or a transient condition: retry later.
    #[error("{0}")]
    Unavailable(&'static str),
    /// The request's deadline passed.
    #[error("{0}")]
    Deadline(&'static str),
    /// A bug or a corrupt record.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A failed WeChat call of `what`.
    pub fn wechat(what: &'static str, cause: WechatError) -> Self {
        Error::Wechat { what, cause }
    }

    /// The class of the failed WeChat call, if that is what failed.
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            Error::Wechat { cause, .. } => Some(cause.class()),
            _ => None,
        }
    }

    /// The class every client sees (and the bus consumer retries on).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::UnknownTenant(_) | Error::UnknownAuthorizer(_) => ErrorCode::NotFound,
            Error::NotComponent { .. }
            | Error::NoToken { .. }
            | Error::NoJsapiTicket
            | Error::Revoked { .. }
            | Error::RevokedMeanwhile
            | Error::NoTicket { .. }
            | Error::NoRefreshToken { .. }
            | Error::CodeUsed
            | Error::CodeRefused(_)
            | Error::NotStored { .. } => ErrorCode::FailedPrecondition,
            Error::Wechat { cause, .. } => match cause.class() {
                ErrorClass::Transient | ErrorClass::Token => ErrorCode::Unavailable,
                ErrorClass::Quota => ErrorCode::ResourceExhausted,
                ErrorClass::Ticket
                | ErrorClass::AuthCode
                | ErrorClass::RefreshToken
                | ErrorClass::Deauthorized
                | ErrorClass::Config
                | ErrorClass::Permanent => ErrorCode::FailedPrecondition,
            },
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Deadline(_) => ErrorCode::DeadlineExceeded,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The account no longer authorizes the component: marked revoked, found revoked by the
    /// token write, or WeChat said so (61003).
    pub fn revoked(&self) -> bool {
        matches!(self, Error::Revoked { .. } | Error::RevokedMeanwhile)
            || self.class() == Some(ErrorClass::Deauthorized)
    }

    /// No usable component_verify_ticket (none stored, too old, or refused by WeChat). WeChat was
    /// asked to push one, so the same request can succeed later.
    pub fn no_ticket(&self) -> bool {
        matches!(self, Error::NoTicket { .. }) || self.class() == Some(ErrorClass::Ticket)
    }

    /// WeChat rejected the token a call was made with (40001/40014/42001).
    pub fn token_rejected(&self) -> bool {
        self.class() == Some(ErrorClass::Token)
    }

    /// How long WeChat wants the API left alone (quota: an hour for 45009, a minute for 45011).
    pub fn quota_wait(&self) -> Option<std::time::Duration> {
        match self {
            Error::Wechat { cause, .. } if cause.class() == ErrorClass::Quota => {
                cause.retry_after()
            }
            _ => None,
        }
    }

    /// The gRPC status.
    pub fn status(&self) -> tonic::Status {
        self.code().status(self.to_string())
    }
}

/// The message of a failed WeChat call of `what`, by class.
fn describe(what: &str, e: &WechatError) -> String {
    let code = match e.code() {
        Some(c) => format!(" (errcode {c})"),
        None => String::new(),
    };
    match e.class() {
        ErrorClass::Transient => {
            format!("WeChat failed transiently while {what}{code}; retry later")
        }
        ErrorClass::Quota => format!("WeChat quota or rate limit reached while {what}{code}"),
        ErrorClass::Ticket => format!(
            "the component_verify_ticket is expired or invalid{code}; WeChat was asked to push a new one"
        ),
        ErrorClass::AuthCode => format!(
            "the authorization code is invalid, expired or already used{code}; authorize again"
        ),
        ErrorClass::RefreshToken => format!(
            "the authorizer_refresh_token is invalid and could not be recovered{code}; the account must authorize again"
        ),
        ErrorClass::Deauthorized => {
            format!("the account no longer authorizes this component{code}")
        }
        ErrorClass::Config => format!(
            "WeChat rejected the tenant's configuration while {what}{code}: check app_id, app_secret and the IP whitelist"
        ),
        ErrorClass::Token => format!("WeChat rejected a token while {what}{code}; retry"),
        ErrorClass::Permanent => format!("WeChat refused {what}{code}: {}", short(e)),
    }
}

fn short(e: &WechatError) -> String {
    match e {
        WechatError::Api { message, .. } => message.chars().take(120).collect(),
        other => other.to_string(),
    }
}

/// Logs a failed WeChat call of `tenant` and counts quota exhaustion.
pub(crate) fn note_failure(tenant: &str, e: &WechatError) {
    if e.class() == ErrorClass::Quota {
        metrics::counter!("wxhub_wechat_quota_exhausted_total", "tenant" => tenant.to_owned(), "api" => e.api())
            .increment(1);
    }
    tracing::warn!(tenant, api = e.api(), class = e.class().as_str(), error = %e, "WeChat call failed");
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "redis failure");
        match e {
            StoreError::Redis(_) => {
                Error::Unavailable("the credential store (Redis) is unavailable; retry later")
            }
            StoreError::Corrupt { .. } => Error::Internal("corrupt credential record".into()),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: i64) -> WechatError {
        WechatError::Api {
            api: "/cgi-bin/component/api_authorizer_token",
            code,
            message: "x".into(),
        }
    }

    #[test]
    fn causes_are_read_from_types_not_words() {
        let deauthorized = Error::wechat("refreshing the authorizer token", api(61003));
        assert!(deauthorized.revoked());
        assert_eq!(deauthorized.code(), ErrorCode::FailedPrecondition);
        assert!(
            Error::Revoked {
                appid: "wx1".into(),
                reason: None
            }
            .revoked()
        );
        assert!(!Error::wechat("refreshing the authorizer token", api(61023)).revoked());
        assert!(Error::wechat("fetching the component_access_token", api(61006)).no_ticket());
        let daily = Error::wechat("fetching the jsapi_ticket", api(45009));
        assert_eq!(daily.code(), ErrorCode::ResourceExhausted);
        assert_eq!(
            daily.quota_wait(),
            Some(std::time::Duration::from_secs(3600))
        );
        assert_eq!(
            Error::wechat("fetching the jsapi_ticket", api(45011)).quota_wait(),
            Some(std::time::Duration::from_secs(60))
        );
        assert!(Error::wechat("listing the authorizers", api(40001)).token_rejected());
    }

    #[test]
    fn messages_name_the_cause_and_the_errcode() {
        assert_eq!(
            Error::wechat("refreshing the authorizer token", api(61003)).to_string(),
            "the account no longer authorizes this component (errcode 61003)"
        );
        assert_eq!(
            Error::Revoked {
                appid: "wx1".into(),
                reason: Some("unauthorized".into())
            }
            .to_string(),
            "authorizer wx1 no longer authorizes this component (unauthorized); the account must authorize again"
        );
        assert_eq!(
            Error::NotComponent {
                tenant: "oa".into(),
                kind: TenantKind::OfficialAccount
            }
            .to_string(),
            "tenant \"oa\" is a official_account tenant; this call is for components"
        );
    }
}
