//! WeChat failures and their classification (wechat-protocol.md §6).
//!
//! WeChat answers most errors with HTTP 200 and `{"errcode":N,"errmsg":"..."}`; transport
//! failures (timeouts, refused connections, 5xx) never carry a code. [`WechatError::class`]
//! folds both into one [`ErrorClass`] that decides what a caller does: retry with backoff,
//! refresh the token and retry once, stop calling until the quota resets, re-authorize, or give
//! up and alert.

use std::time::Duration;

/// What a caller should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// `-1`, `-1000`, timeouts, connection failures, HTTP 5xx: retry with bounded backoff.
    Transient,
    /// `40001`, `40014`, `42001` on an API that takes a token: the token was rejected; refresh
    /// it (compare-and-invalidate) and retry once.
    Token,
    /// `45009` (daily quota) and `45011` (minute rate): stop calling that API for a while.
    Quota,
    /// `61005`, `61006`: the component_verify_ticket is expired or invalid; wait for the next
    /// push (or call `api_start_push_ticket`), then retry.
    Ticket,
    /// `61023`: the authorizer_refresh_token is invalid; recover it from
    /// `api_get_authorizer_list`, else the account must re-authorize.
    RefreshToken,
    /// `61009`, `61010`: the authorization code is invalid, used or expired.
    AuthCode,
    /// `61003`: the account no longer authorizes the component.
    Deauthorized,
    /// Bad credentials or setup: wrong appid/secret (`40013`, `40125`, `41004`, `40001` on a
    /// token endpoint), IP not whitelisted (`40164`, `61004`), invalid component (`61011`),
    /// risk-IP confirmation (`89503`), wrong token API (`61024`). Give up and alert.
    Config,
    /// Everything else (permissions, business rules such as `45015`, bad arguments, protocol
    /// surprises): give up, no retry.
    Permanent,
}

impl ErrorClass {
    /// A stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Token => "token",
            ErrorClass::Quota => "quota",
            ErrorClass::Ticket => "ticket",
            ErrorClass::RefreshToken => "refresh_token",
            ErrorClass::AuthCode => "auth_code",
            ErrorClass::Deauthorized => "deauthorized",
            ErrorClass::Config => "config",
            ErrorClass::Permanent => "permanent",
        }
    }

    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::Quota)
    }
}

/// A failed WeChat call. Messages name the API path and the errcode; they never contain a
/// token, secret, ticket or refresh token (request URLs, which carry `access_token`, are
/// stripped from transport errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WechatError {
    /// WeChat answered with a non-zero `errcode`.
    #[error("wechat {api}: errcode {code}: {message}")]
    Api {
        api: &'static str,
        code: i64,
        /// `errmsg`, truncated (it ends with WeChat's `rid`, useful for support).
        message: String,
    },
    /// No answer within the timeout. If the request was sent, its outcome is unknown.
    #[error("wechat {api}: timed out")]
    Timeout { api: &'static str },
    /// The connection could not be made (nothing was sent).
    #[error("wechat {api}: cannot connect: {detail}")]
    Connect { api: &'static str, detail: String },
    /// The connection failed while the request was in flight (outcome unknown).
    #[error("wechat {api}: transport failure: {detail}")]
    Transport { api: &'static str, detail: String },
    /// A non-2xx HTTP status.
    #[error("wechat {api}: HTTP {status}")]
    Http { api: &'static str, status: u16 },
    /// A 2xx answer that is not what the API documents.
    #[error("wechat {api}: unexpected response: {detail}")]
    Decode { api: &'static str, detail: String },
}

/// APIs that fetch a credential from an app secret: there `40001` means a wrong secret, not a
/// stale token.
const CREDENTIAL_APIS: [&str; 5] = [
    crate::paths::COMPONENT_TOKEN,
    crate::paths::OA_TOKEN,
    crate::paths::STABLE_TOKEN,
    crate::paths::WECOM_TOKEN,
    crate::paths::START_PUSH_TICKET,
];

impl WechatError {
    /// The API path the failure belongs to.
    pub fn api(&self) -> &'static str {
        match self {
            WechatError::Api { api, .. }
            | WechatError::Timeout { api }
            | WechatError::Connect { api, .. }
            | WechatError::Transport { api, .. }
            | WechatError::Http { api, .. }
            | WechatError::Decode { api, .. } => api,
        }
    }

    /// WeChat's errcode, when it answered with one.
    pub fn code(&self) -> Option<i64> {
        match self {
            WechatError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// What to do about it.
    pub fn class(&self) -> ErrorClass {
        match self {
            WechatError::Api { api, code, .. } => classify(api, *code),
            WechatError::Timeout { .. }
            | WechatError::Connect { .. }
            | WechatError::Transport { .. } => ErrorClass::Transient,
            WechatError::Http { status, .. } if *status >= 500 || *status == 429 => {
                ErrorClass::Transient
            }
            WechatError::Http { .. } | WechatError::Decode { .. } => ErrorClass::Permanent,
        }
    }

    /// Whether WeChat may have acted on the request although the caller saw a failure: a
    /// timeout, a connection lost mid-request, or a 5xx. A send whose outcome is unknown must
    /// not be retried blindly (a retried timeout duplicates messages, WxJava #2098).
    pub fn outcome_unknown(&self) -> bool {
        match self {
            WechatError::Timeout { .. } | WechatError::Transport { .. } => true,
            WechatError::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// A suggested wait before calling the same API again, for retryable classes.
    pub fn retry_after(&self) -> Option<Duration> {
        match (self.class(), self.code()) {
            (ErrorClass::Quota, Some(45009)) => Some(Duration::from_secs(3600)),
            (ErrorClass::Quota, _) => Some(Duration::from_secs(60)),
            (ErrorClass::Transient, _) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// The class of `code` answered by `api` (wechat-protocol.md §6.1).
pub fn classify(api: &str, code: i64) -> ErrorClass {
    match code {
        -1 | -1000 => ErrorClass::Transient,
        40001 if CREDENTIAL_APIS.contains(&api) => ErrorClass::Config,
        40001 | 40014 | 42001 => ErrorClass::Token,
        45009 | 45011 => ErrorClass::Quota,
        61005 | 61006 => ErrorClass::Ticket,
        61023 => ErrorClass::RefreshToken,
        61009 | 61010 => ErrorClass::AuthCode,
        61003 => ErrorClass::Deauthorized,
        40013 | 40125 | 41004 | 40164 | 61004 | 61011 | 61024 | 89503 | 40243 => ErrorClass::Config,
        _ => ErrorClass::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths;

    fn api(api: &'static str, code: i64) -> WechatError {
        WechatError::Api {
            api,
            code,
            message: "x".into(),
        }
    }

    #[test]
    fn classes_follow_the_protocol_table() {
        let send = "/cgi-bin/message/custom/send";
        for (code, class) in [
            (-1, ErrorClass::Transient),
            (-1000, ErrorClass::Transient),
            (40001, ErrorClass::Token),
            (40014, ErrorClass::Token),
            (42001, ErrorClass::Token),
            (45009, ErrorClass::Quota),
            (45011, ErrorClass::Quota),
            (61005, ErrorClass::Ticket),
            (61006, ErrorClass::Ticket),
            (61023, ErrorClass::RefreshToken),
            (61009, ErrorClass::AuthCode),
            (61010, ErrorClass::AuthCode),
            (61003, ErrorClass::Deauthorized),
            (40125, ErrorClass::Config),
            (61004, ErrorClass::Config),
            (45015, ErrorClass::Permanent),
            (40003, ErrorClass::Permanent),
            (48001, ErrorClass::Permanent),
        ] {
            assert_eq!(classify(send, code), class, "{code}");
        }
    }

    #[test]
    fn bad_secret_on_a_token_endpoint_is_config_not_token() {
        assert_eq!(
            api(paths::COMPONENT_TOKEN, 40001).class(),
            ErrorClass::Config
        );
        assert_eq!(api(paths::WECOM_TOKEN, 40001).class(), ErrorClass::Config);
        assert_eq!(
            api(paths::AUTHORIZER_TOKEN, 40001).class(),
            ErrorClass::Token
        );
    }

    #[test]
    fn transport_failures_and_unknown_outcomes() {
        let t = WechatError::Timeout {
            api: paths::OA_TOKEN,
        };
        assert_eq!(t.class(), ErrorClass::Transient);
        assert!(t.outcome_unknown());
        let c = WechatError::Connect {
            api: paths::OA_TOKEN,
            detail: "refused".into(),
        };
        assert!(!c.outcome_unknown());
        let h = WechatError::Http {
            api: paths::OA_TOKEN,
            status: 502,
        };
        assert_eq!(h.class(), ErrorClass::Transient);
        assert!(h.outcome_unknown());
        let h4 = WechatError::Http {
            api: paths::OA_TOKEN,
            status: 404,
        };
        assert_eq!(h4.class(), ErrorClass::Permanent);
        assert!(
            api(paths::OA_TOKEN, 45009).retry_after() > api(paths::OA_TOKEN, 45011).retry_after()
        );
        assert!(ErrorClass::Quota.is_retryable() && !ErrorClass::Config.is_retryable());
    }
}
