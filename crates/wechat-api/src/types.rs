//! Response types, decoded tolerantly from WeChat's JSON (unknown fields ignored, documented
//! fields checked).

use serde_json::Value;
use wxhub_domain::Secret;

use crate::{WechatError, paths};

fn decode(api: &'static str, detail: impl Into<String>) -> WechatError {
    WechatError::Decode {
        api,
        detail: detail.into(),
    }
}

fn req_str<'v>(api: &'static str, v: &'v Value, field: &str) -> Result<&'v str, WechatError> {
    v.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| decode(api, format!("missing {field}")))
}

fn opt_str(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

pub(crate) fn opt_secret(v: &Value, field: &str) -> Option<Secret> {
    v.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(Secret::new)
}

/// Seconds of life left. 0 is a valid answer: stable_token's normal mode answers with what is
/// left of the current token, rounded down, which is 0 in its last second.
fn expires_in(api: &'static str, v: &Value) -> Result<u64, WechatError> {
    match v.get("expires_in") {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| decode(api, "expires_in must be a non-negative integer")),
        // Some endpoints have been seen to quote numbers.
        Some(Value::String(s)) => s
            .parse::<u64>()
            .ok()
            .ok_or_else(|| decode(api, "expires_in must be a non-negative integer")),
        _ => Err(decode(api, "missing expires_in")),
    }
}

fn func_info(v: &Value) -> Vec<u32> {
    v.get("func_info")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.pointer("/funcscope_category/id").and_then(Value::as_u64))
                .filter_map(|id| u32::try_from(id).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// An access token (component, authorizer, Official Account or WeCom) with its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: Secret,
    /// Seconds from now.
    pub expires_in: u64,
}

impl AccessToken {
    pub(crate) fn from_json(
        api: &'static str,
        v: &Value,
        field: &str,
    ) -> Result<Self, WechatError> {
        Ok(Self {
            token: Secret::new(req_str(api, v, field)?),
            expires_in: expires_in(api, v)?,
        })
    }
}

/// A pre-authorization code (single use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreAuthCode {
    pub code: Secret,
    pub expires_in: u64,
}

impl PreAuthCode {
    pub(crate) fn from_json(v: &Value) -> Result<Self, WechatError> {
        let api = paths::CREATE_PREAUTHCODE;
        Ok(Self {
            code: Secret::new(req_str(api, v, "pre_auth_code")?),
            expires_in: expires_in(api, v)?,
        })
    }
}

/// `authorization_info` of `api_query_auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationInfo {
    pub authorizer_appid: String,
    /// Present only when the account granted API permissions.
    pub access_token: Option<AccessToken>,
    pub refresh_token: Option<Secret>,
    /// Granted permission-set ids.
    pub func_info: Vec<u32>,
}

impl AuthorizationInfo {
    pub(crate) fn from_json(v: &Value) -> Result<Self, WechatError> {
        let api = paths::QUERY_AUTH;
        let info = v
            .get("authorization_info")
            .ok_or_else(|| decode(api, "missing authorization_info"))?;
        let access_token = match opt_secret(info, "authorizer_access_token") {
            Some(token) => Some(AccessToken {
                token,
                expires_in: expires_in(api, info)?,
            }),
            None => None,
        };
        Ok(Self {
            authorizer_appid: req_str(api, info, "authorizer_appid")?.to_owned(),
            access_token,
            refresh_token: opt_secret(info, "authorizer_refresh_token"),
            func_info: func_info(info),
        })
    }
}

/// `api_get_authorizer_info`: the account's profile and its authorization.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthorizerInfo {
    pub authorizer_appid: String,
    pub nick_name: String,
    pub head_img: String,
    /// `gh_...` original id.
    pub user_name: String,
    pub principal_name: String,
    pub alias: String,
    pub qrcode_url: String,
    /// `service_type_info.id` (OA: 0/1 subscription, 2 service).
    pub service_type: Option<i64>,
    /// `verify_type_info.id` (-1 unverified, 0 WeChat-verified, ...).
    pub verify_type: Option<i64>,
    /// 1 normal, 14 deregistered, 16 banned, 18 warned, 19 frozen.
    pub account_status: Option<i64>,
    /// `MiniProgramInfo` is present.
    pub is_mini_program: bool,
    pub func_info: Vec<u32>,
    /// Empty when the code was never exchanged.
    pub refresh_token: Option<Secret>,
}

impl AuthorizerInfo {
    pub(crate) fn from_json(v: &Value) -> Result<Self, WechatError> {
        let api = paths::GET_AUTHORIZER_INFO;
        let info = v
            .get("authorizer_info")
            .ok_or_else(|| decode(api, "missing authorizer_info"))?;
        let auth = v
            .get("authorization_info")
            .ok_or_else(|| decode(api, "missing authorization_info"))?;
        Ok(Self {
            authorizer_appid: req_str(api, auth, "authorizer_appid")?.to_owned(),
            nick_name: opt_str(info, "nick_name"),
            head_img: opt_str(info, "head_img"),
            user_name: opt_str(info, "user_name"),
            principal_name: opt_str(info, "principal_name"),
            alias: opt_str(info, "alias"),
            qrcode_url: opt_str(info, "qrcode_url"),
            service_type: info
                .pointer("/service_type_info/id")
                .and_then(Value::as_i64),
            verify_type: info.pointer("/verify_type_info/id").and_then(Value::as_i64),
            account_status: info.get("account_status").and_then(Value::as_i64),
            is_mini_program: info.get("MiniProgramInfo").is_some(),
            func_info: func_info(auth),
            refresh_token: opt_secret(auth, "authorizer_refresh_token"),
        })
    }
}

/// One entry of `api_get_authorizer_list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedAuthorizer {
    pub authorizer_appid: String,
    /// Missing when the account authorized but its code was never exchanged.
    pub refresh_token: Option<Secret>,
    /// Unix seconds.
    pub auth_time: i64,
}

/// A page of `api_get_authorizer_list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerList {
    pub total_count: u64,
    pub list: Vec<ListedAuthorizer>,
}

impl AuthorizerList {
    pub(crate) fn from_json(v: &Value) -> Result<Self, WechatError> {
        let api = paths::GET_AUTHORIZER_LIST;
        let total_count = v
            .get("total_count")
            .and_then(Value::as_u64)
            .ok_or_else(|| decode(api, "missing total_count"))?;
        let list = v
            .get("list")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| {
                        Some(ListedAuthorizer {
                            authorizer_appid: i
                                .get("authorizer_appid")
                                .and_then(Value::as_str)
                                .filter(|s| !s.is_empty())?
                                .to_owned(),
                            refresh_token: opt_secret(i, "refresh_token"),
                            auth_time: i.get("auth_time").and_then(Value::as_i64).unwrap_or(0),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self { total_count, list })
    }
}

/// A JS-SDK ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsapiTicket {
    pub ticket: Secret,
    pub expires_in: u64,
}

impl JsapiTicket {
    pub(crate) fn from_json(v: &Value) -> Result<Self, WechatError> {
        let api = paths::GET_TICKET;
        Ok(Self {
            ticket: Secret::new(req_str(api, v, "ticket")?),
            expires_in: expires_in(api, v)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expires_in_accepts_a_last_second_and_refuses_garbage() {
        let token = |v: Value| AccessToken::from_json(paths::STABLE_TOKEN, &v, "access_token");
        // stable_token's normal mode in the token's last second.
        let last = token(json!({"access_token": "T", "expires_in": 0})).unwrap();
        assert_eq!(last.expires_in, 0);
        assert_eq!(
            token(json!({"access_token": "T", "expires_in": "7200"}))
                .unwrap()
                .expires_in,
            7200
        );
        for bad in [json!(-1), json!(1.5), json!("soon"), Value::Null] {
            assert!(
                token(json!({"access_token": "T", "expires_in": bad})).is_err(),
                "{bad}"
            );
        }
    }
}
