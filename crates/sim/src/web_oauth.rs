//! Web OAuth (网页授权) on behalf of an authorized account, the component flavour
//! (wechat-protocol.md §2.16):
//!
//! - `GET /connect/oauth2/authorize?appid=&redirect_uri=&response_type=code&scope=&state=&component_appid=`
//!   — the open.weixin.qq.com page stand-in. The user "consents" at once and the browser is sent to
//!   `redirect_uri?code=CODE&state=STATE`. Which user: the sim-only `openid` parameter, else the
//!   account's first user, else a new one.
//! - `GET /sns/oauth2/component/access_token?appid=&code=&grant_type=authorization_code&component_appid=&component_access_token=`
//!   — the code (single use, 5 minutes) for the user's token: `{access_token, expires_in,
//!   refresh_token, openid, scope}` (+ `unionid` with `snsapi_userinfo`). 40029 invalid code,
//!   40163 code been used, 40001 a component token that is not the code's component's.
//! - `GET /sns/userinfo?access_token=&openid=&lang=` — the profile; 48001 under
//!   `snsapi_base`, 40003 another user's openid.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::Query;
use crate::codes::{ApiError, ApiResult};
use crate::sim::{Sim, lock};
use crate::state::Owner;

/// Lifetime of an OAuth code.
const CODE_TTL_MS: i64 = 5 * 60 * 1000;
/// Lifetime of a user's OAuth token.
const TOKEN_TTL_MS: i64 = 7200 * 1000;

/// An issued code.
#[derive(Debug, Clone)]
pub(crate) struct OAuthCode {
    pub appid: String,
    pub component: String,
    pub openid: String,
    pub scope: String,
    pub expires_ms: i64,
    pub used: bool,
}

/// A user's OAuth access token.
#[derive(Debug, Clone)]
pub(crate) struct SnsToken {
    pub openid: String,
    pub scope: String,
    pub expires_ms: i64,
}

/// The page path.
pub(crate) const AUTHORIZE_PAGE: &str = "/connect/oauth2/authorize";

fn refuse(reason: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("oauth refused: {reason}\n"),
    )
        .into_response()
}

/// The authorize page stand-in.
pub(crate) async fn authorize(
    AxState(sim): AxState<Arc<Sim>>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q: HashMap<String, String> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let (Some(appid), Some(redirect), Some(scope), Some(component)) = (
        get("appid"),
        get("redirect_uri"),
        get("scope"),
        get("component_appid"),
    ) else {
        return refuse("appid, redirect_uri, scope and component_appid are required");
    };
    if get("response_type") != Some("code") {
        return refuse("response_type must be code");
    }
    if !matches!(scope, "snsapi_base" | "snsapi_userinfo") {
        return refuse("scope must be snsapi_base or snsapi_userinfo");
    }
    let Ok(mut target) = url::Url::parse(redirect) else {
        return refuse("redirect_uri is not a URL");
    };
    let now = sim.clock.now_ms();
    let mut state = lock(&sim.state);
    let authorized = state
        .components
        .get(component)
        .is_some_and(|c| c.authorizations.contains_key(appid));
    if !authorized {
        return refuse("the account has not authorized this component");
    }
    let openid = match get("openid") {
        Some(o) => o.to_owned(),
        None => state
            .accounts
            .get(appid)
            .and_then(|a| a.users.keys().min().cloned())
            .unwrap_or_else(|| format!("o_{}", wxhub_crypto::random_nonce(20))),
    };
    let code = wxhub_crypto::random_nonce(32);
    state.oauth_codes.retain(|_, c| c.expires_ms > now);
    state.oauth_codes.insert(
        code.clone(),
        OAuthCode {
            appid: appid.to_owned(),
            component: component.to_owned(),
            openid,
            scope: scope.to_owned(),
            expires_ms: now + CODE_TTL_MS,
            used: false,
        },
    );
    drop(state);
    target.query_pairs_mut().append_pair("code", &code);
    if let Some(s) = get("state") {
        target.query_pairs_mut().append_pair("state", s);
    }
    (StatusCode::FOUND, [(header::LOCATION, target.to_string())]).into_response()
}

fn unionid(openid: &str) -> String {
    format!("u_{openid}")
}

/// `/sns/oauth2/component/access_token`.
pub(crate) fn component_access_token(
    sim: &Arc<Sim>,
    q: &Query,
    _raw: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let mut state = lock(&sim.state);
    let owner = state
        .check_token(q.get("component_access_token"), now)?
        .clone();
    let Owner::Component(component) = owner else {
        return Err(ApiError::with(40001, "not a component_access_token"));
    };
    let asked = q
        .get("appid")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::with(41002, "missing appid"))?;
    *appid = Some(asked.to_owned());
    if q.get("component_appid") != Some(component.as_str()) {
        return Err(ApiError::with(
            40001,
            "component_appid is not the token's component",
        ));
    }
    if q.get("grant_type") != Some("authorization_code") {
        return Err(ApiError::new(40002));
    }
    let code = q
        .get("code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::with(41008, "missing code"))?;
    let entry = state
        .oauth_codes
        .get_mut(code)
        .ok_or(ApiError::new(40029))?;
    if entry.used {
        return Err(ApiError::new(40163));
    }
    if entry.expires_ms <= now || entry.appid != asked || entry.component != component {
        return Err(ApiError::new(40029));
    }
    entry.used = true;
    let (openid, scope) = (entry.openid.clone(), entry.scope.clone());
    let token = wxhub_crypto::random_nonce(64);
    state.sns_tokens.retain(|_, t| t.expires_ms > now);
    state.sns_tokens.insert(
        token.clone(),
        SnsToken {
            openid: openid.clone(),
            scope: scope.clone(),
            expires_ms: now + TOKEN_TTL_MS,
        },
    );
    let mut v = json!({
        "access_token": token,
        "expires_in": TOKEN_TTL_MS / 1000,
        "refresh_token": wxhub_crypto::random_nonce(64),
        "openid": openid,
        "scope": scope,
    });
    if scope == "snsapi_userinfo" {
        v["unionid"] = json!(unionid(&openid));
    }
    Ok(v)
}

/// `/sns/userinfo`.
pub(crate) fn userinfo(
    sim: &Arc<Sim>,
    q: &Query,
    _raw: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let state = lock(&sim.state);
    let token = q
        .get("access_token")
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::new(41001))?;
    let t = state.sns_tokens.get(token).ok_or(ApiError::new(40001))?;
    if t.expires_ms <= now {
        return Err(ApiError::new(42001));
    }
    *appid = None;
    if t.scope != "snsapi_userinfo" {
        return Err(ApiError::with(48001, "snsapi_base grants no user info"));
    }
    if q.get("openid") != Some(t.openid.as_str()) {
        return Err(ApiError::new(40003));
    }
    Ok(json!({
        "openid": t.openid,
        "nickname": format!("User {}", t.openid.chars().rev().take(4).collect::<String>()),
        "sex": 0,
        "province": "",
        "city": "",
        "country": "",
        "headimgurl": "",
        "privilege": [],
        "unionid": unionid(&t.openid),
    }))
}
