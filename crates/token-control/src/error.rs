//! token-control's error: an [`ErrorCode`] class plus a sanitised message (never a secret),
//! converted once into a gRPC status.

use wxhub_runtime::ErrorCode;
use wxhub_store::StoreError;
use wxhub_wechat_api::{ErrorClass, WechatError};

/// A failure with the class the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// Why, where a caller acts on it (not only on the class).
    pub reason: Option<Reason>,
}

/// A cause callers act on. Deliberately small: the typed-error rework replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No usable component_verify_ticket (none stored, too old, or refused by WeChat). WeChat was
    /// asked to push one, so the same request can succeed later.
    NoTicket,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: None,
        }
    }

    /// This error with `reason`.
    #[must_use]
    pub fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, message)
    }

    /// A read or refresh for an authorizer that is marked revoked (`reason` as stored).
    pub fn revoked(appid: &str, reason: Option<&str>) -> Self {
        Self::precondition(format!(
            "authorizer {appid} no longer authorizes this component ({}); the account must authorize again",
            reason.unwrap_or("revoked")
        ))
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn deadline(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DeadlineExceeded, message)
    }

    /// Maps a WeChat failure of `what` (e.g. "refreshing the component token").
    pub fn wechat(what: &str, e: &WechatError) -> Self {
        let code = match e.code() {
            Some(c) => format!(" (errcode {c})"),
            None => String::new(),
        };
        match e.class() {
            ErrorClass::Transient => Self::unavailable(format!(
                "WeChat failed transiently while {what}{code}; retry later"
            )),
            ErrorClass::Quota => Self::new(
                ErrorCode::ResourceExhausted,
                format!("WeChat quota or rate limit reached while {what}{code}"),
            ),
            ErrorClass::Ticket => Self::precondition(format!(
                "the component_verify_ticket is expired or invalid{code}; WeChat was asked to push a new one"
            ))
            .with_reason(Reason::NoTicket),
            ErrorClass::AuthCode => Self::precondition(format!(
                "the authorization code is invalid, expired or already used{code}; authorize again"
            )),
            ErrorClass::RefreshToken => Self::precondition(format!(
                "the authorizer_refresh_token is invalid and could not be recovered{code}; the account must authorize again"
            )),
            ErrorClass::Deauthorized => Self::precondition(format!(
                "the account no longer authorizes this component{code}"
            )),
            ErrorClass::Config => Self::precondition(format!(
                "WeChat rejected the tenant's configuration while {what}{code}: check app_id, app_secret and the IP whitelist"
            )),
            ErrorClass::Token => {
                Self::unavailable(format!("WeChat rejected a token while {what}{code}; retry"))
            }
            ErrorClass::Permanent => {
                Self::precondition(format!("WeChat refused {what}{code}: {}", short(e)))
            }
        }
    }

    /// The gRPC status.
    pub fn status(&self) -> tonic::Status {
        self.code.status(self.message.clone())
    }
}

fn short(e: &WechatError) -> String {
    match e {
        WechatError::Api { message, .. } => message.chars().take(120).collect(),
        other => other.to_string(),
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "redis failure");
        match e {
            StoreError::Redis(_) => {
                Self::unavailable("the credential store (Redis) is unavailable; retry later")
            }
            StoreError::Corrupt { .. } => {
                Self::new(ErrorCode::Internal, "corrupt credential record")
            }
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.status()
    }
}
