//! WeChat's error codes and the JSON error body every API answers with.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The official `errmsg` for the codes the sim returns (wechat-protocol.md §5, §6).
pub fn errmsg(code: i64) -> &'static str {
    match code {
        0 => "ok",
        -1 => "system error",
        -1000 => "system error",
        40001 => "invalid credential, access_token is invalid or not latest",
        40002 => "invalid grant_type",
        40003 => "invalid openid",
        40008 => "invalid message type",
        40004 => "invalid media type",
        40005 => "invalid file type",
        40006 => "invalid meida size",
        40007 => "invalid media_id",
        40013 => "invalid appid",
        40016 => "invalid button size",
        40017 => "invalid button type",
        40018 => "invalid button name size",
        40019 => "invalid button key size",
        40020 => "invalid button url size",
        40023 => "invalid sub button size",
        40024 => "invalid sub button type",
        40025 => "invalid sub button name size",
        40026 => "invalid sub button key size",
        40027 => "invalid sub button url size",
        40029 => "invalid code",
        40163 => "code been used",
        41005 => "media data missing",
        41008 => "missing code",
        41011 => "missing agentid",
        46003 => "menu no exist",
        65301 => "no such conditional menu",
        65302 => "no such user",
        65303 => "there is no selfmenu, please create selfmenu first",
        65304 => "match rule empty",
        65305 => "menu count limit",
        65308 => "button without response type",
        65310 => "country is required with province",
        65311 => "province is required with city",
        301002 => "no privilege to access/modify this agent",
        40014 => "invalid access_token",
        40037 => "invalid template_id",
        40097 => "invalid args",
        40125 => "invalid appsecret",
        41001 => "access_token missing",
        41002 => "appid missing",
        41004 => "appsecret missing",
        42001 => "access_token expired",
        43004 => "require subscribe",
        43101 => "user refuse to accept the msg",
        44004 => "empty content",
        45008 => "article size out of limit",
        45009 => "reach max api daily quota limit",
        45011 => "api minute-quota reach limit",
        45015 => "response out of time limit or subscription is canceled",
        45047 => "out of response count limit",
        47001 => "data format error",
        47003 => "argument invalid!",
        48001 => "api unauthorized",
        48006 => "forbid to clear quota because of reaching the limit",
        61003 => "component is not authorized by this account",
        61005 => "component ticket is expired",
        61006 => "component ticket is invalid",
        61009 => "code is invalid",
        61010 => "code is expired",
        61011 => "invalid component",
        61023 => "refresh_token is invalid",
        61024 => "must use api(api_component_token) to get token for component acct",
        _ => "error",
    }
}

/// A WeChat API error: HTTP 200 with `{"errcode":N,"errmsg":"... rid: ..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The WeChat `errcode`.
    pub code: i64,
    /// Extra detail appended to the official message (never a secret).
    pub detail: Option<String>,
}

impl ApiError {
    /// The error with its official message.
    pub fn new(code: i64) -> Self {
        Self { code, detail: None }
    }

    /// The error with a hint after the official message, e.g. the missing field's name.
    pub fn with(code: i64, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: Some(detail.into()),
        }
    }

    /// The `errmsg` text, with a WeChat-style `rid` suffix.
    pub fn message(&self) -> String {
        let rid = wxhub_crypto::random_nonce(8).to_ascii_lowercase();
        match &self.detail {
            Some(detail) => format!("{}: {detail} rid: {rid}", errmsg(self.code)),
            None => format!("{} rid: {rid}", errmsg(self.code)),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"errcode": self.code, "errmsg": self.message()})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Json(self.body()).into_response()
    }
}

/// Result of a WeChat API handler.
pub type ApiResult<T> = Result<T, ApiError>;
