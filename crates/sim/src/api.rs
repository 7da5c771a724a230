//! The WeChat API stand-in: api.weixin.qq.com and qyapi.weixin.qq.com paths, JSON in and out,
//! errors as HTTP 200 `{"errcode":N,"errmsg":"..."}` exactly like WeChat.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{RawQuery, State as AxState};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on, post};
use serde_json::{Map, Value, json};

use crate::codes::{ApiError, ApiResult};
use crate::endpoint::Endpoint;
use crate::records::SentMessage;
use crate::seed::AccountKind;
use crate::sim::{Sim, lock};
use crate::state::{
    Account, Owner, PreAuthCode, State, TokenSlot, new_refresh_token, token_ttl_ms,
};
use crate::{media, menu, web_oauth};

/// Query parameters, decoded leniently (a malformed query never fails the request).
pub(crate) struct Query(HashMap<String, String>);

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        Self(
            url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `component_access_token`, or the newer `access_token` name.
    fn component_token(&self) -> Option<&str> {
        self.get("component_access_token")
            .filter(|t| !t.is_empty())
            .or_else(|| self.get("access_token"))
    }
}

/// A JSON object body.
struct Body(Map<String, Value>);

impl Body {
    fn parse(bytes: &[u8]) -> ApiResult<Self> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::with(47001, "body must be a JSON object")),
            Err(_) => Err(ApiError::new(47001)),
        }
    }

    /// A string field; absent, null and "" are `None`, any other type is 47001.
    fn opt_str(&self, name: &str) -> ApiResult<Option<&str>> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::with(47001, format!("{name} must be a string"))),
        }
    }

    /// A required string field; `missing` is the code when it is absent.
    fn str(&self, name: &str, missing: i64) -> ApiResult<&str> {
        self.opt_str(name)?
            .ok_or_else(|| ApiError::with(missing, format!("missing {name}")))
    }

    fn opt_u64(&self, name: &str) -> ApiResult<Option<u64>> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                ApiError::with(40097, format!("{name} must be a non-negative integer"))
            }),
            Some(_) => Err(ApiError::with(47001, format!("{name} must be a number"))),
        }
    }

    fn opt_bool(&self, name: &str) -> ApiResult<Option<bool>> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::with(47001, format!("{name} must be a boolean"))),
        }
    }

    fn obj(&self, name: &str) -> Option<&Map<String, Value>> {
        self.0.get(name).and_then(Value::as_object)
    }
}

type Outcome = (Option<String>, ApiResult<Value>);
type Logic = fn(&Arc<Sim>, &Query, &[u8], &mut Option<String>) -> ApiResult<Value>;

fn finish(sim: &Sim, endpoint: Endpoint, (appid, result): Outcome) -> Response {
    match result {
        Ok(v) => {
            sim.record_call(endpoint, appid.as_deref(), 0);
            axum::Json(v).into_response()
        }
        Err(e) => {
            sim.record_call(endpoint, appid.as_deref(), e.code);
            e.into_response()
        }
    }
}

fn handler(
    endpoint: Endpoint,
    logic: Logic,
) -> impl Fn(AxState<Arc<Sim>>, RawQuery, Bytes) -> std::future::Ready<Response>
+ Clone
+ Send
+ Sync
+ 'static {
    move |AxState(sim): AxState<Arc<Sim>>, RawQuery(raw): RawQuery, body: Bytes| {
        let query = Query::parse(raw.as_deref());
        let mut appid = None;
        let result = logic(&sim, &query, &body, &mut appid);
        std::future::ready(finish(&sim, endpoint, (appid, result)))
    }
}

/// The router: every [`Endpoint`] with its method and logic. The match is exhaustive, so an
/// endpoint cannot be named without being served.
pub(crate) fn router() -> Router<Arc<Sim>> {
    Endpoint::ALL
        .into_iter()
        .fold(Router::new(), |router, endpoint| {
            let (method, logic): (MethodFilter, Logic) = match endpoint {
                Endpoint::ComponentToken => (MethodFilter::POST, component_token),
                Endpoint::CreatePreAuthCode => (MethodFilter::POST, create_preauthcode),
                Endpoint::QueryAuth => (MethodFilter::POST, query_auth),
                Endpoint::AuthorizerToken => (MethodFilter::POST, authorizer_token),
                Endpoint::AuthorizerInfo => (MethodFilter::POST, get_authorizer_info),
                Endpoint::AuthorizerList => (MethodFilter::POST, get_authorizer_list),
                Endpoint::StartPushTicket => (MethodFilter::POST, start_push_ticket),
                Endpoint::ComponentClearQuota => (MethodFilter::POST, clear_quota_v2),
                Endpoint::Token => (MethodFilter::GET, oa_token),
                Endpoint::StableToken => (MethodFilter::POST, stable_token),
                Endpoint::WecomToken => (MethodFilter::GET, wecom_token),
                Endpoint::Ticket => (MethodFilter::GET, get_ticket),
                Endpoint::ClearQuota => (MethodFilter::POST, clear_quota),
                Endpoint::CustomSend => (MethodFilter::POST, custom_send),
                Endpoint::TemplateSend => (MethodFilter::POST, template_send),
                Endpoint::SubscribeBizSend => (MethodFilter::POST, bizsend),
                Endpoint::SubscribeSend => (MethodFilter::POST, subscribe_send),
                Endpoint::MenuCreate => (MethodFilter::POST, menu::create),
                Endpoint::MenuGet => (MethodFilter::GET, menu::get),
                Endpoint::MenuDelete => (MethodFilter::GET, menu::delete),
                Endpoint::MenuAddConditional => (MethodFilter::POST, menu::add_conditional),
                Endpoint::MenuDelConditional => (MethodFilter::POST, menu::del_conditional),
                Endpoint::MenuTryMatch => (MethodFilter::POST, menu::try_match),
                Endpoint::SnsComponentToken => {
                    (MethodFilter::GET, web_oauth::component_access_token)
                }
                Endpoint::SnsUserInfo => (MethodFilter::GET, web_oauth::userinfo),
                // Multipart in, bytes out: handlers of their own.
                Endpoint::MediaUpload => {
                    return router.route(
                        endpoint.path(),
                        post(media::upload).layer(DefaultBodyLimit::max(media::MAX_UPLOAD)),
                    );
                }
                Endpoint::MediaGet => return router.route(endpoint.path(), get(media::get)),
            };
            router.route(endpoint.path(), on(method, handler(endpoint, logic)))
        })
        .route(web_oauth::AUTHORIZE_PAGE, get(web_oauth::authorize))
}

/// Checks the component token and that the body's `component_appid` is its component.
fn component_auth(
    state: &State,
    q: &Query,
    body: &Body,
    now: i64,
    appid: &mut Option<String>,
) -> ApiResult<String> {
    let claimed = body.opt_str("component_appid")?;
    if let Some(c) = claimed {
        *appid = Some(c.to_owned());
    }
    let owner = state.check_token(q.component_token(), now)?;
    let Owner::Component(component) = owner else {
        return Err(ApiError::with(40001, "not a component_access_token"));
    };
    let claimed = claimed.ok_or_else(|| ApiError::with(41002, "missing component_appid"))?;
    if claimed != component {
        if state.components.contains_key(claimed) {
            return Err(ApiError::with(40001, "token belongs to another component"));
        }
        return Err(ApiError::new(40013));
    }
    Ok(component.clone())
}

fn func_info_json(ids: &[u32]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| json!({"funcscope_category": {"id": id}}))
            .collect(),
    )
}

fn component_token(
    sim: &Arc<Sim>,
    _q: &Query,
    body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let body = Body::parse(body)?;
    let component = body.str("component_appid", 41002)?;
    *appid = Some(component.to_owned());
    let secret = body.str("component_appsecret", 41004)?;
    let ticket = body.str("component_verify_ticket", 61006)?;
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut guard = lock(&sim.state);
    let state = &mut *guard;
    let c = state
        .components
        .get(component)
        .ok_or(ApiError::new(40013))?;
    if c.secret != secret {
        return Err(ApiError::new(40125));
    }
    let issued = c
        .tickets
        .iter()
        .rev()
        .find(|(t, _)| t == ticket)
        .map(|(_, at)| *at)
        .ok_or(ApiError::new(61006))?;
    if now - issued >= state.timing.ticket_validity_ms {
        return Err(ApiError::new(61005));
    }
    state.charge(Endpoint::ComponentToken, component, day)?;
    let timing = state.timing;
    let ttl = state.token_ttl_ms(Endpoint::ComponentToken, component);
    let c = state
        .components
        .get_mut(component)
        .ok_or(ApiError::new(40013))?;
    let token = State::rotate(
        &mut state.tokens,
        &mut c.token,
        Owner::Component(component.to_owned()),
        now,
        ttl,
        &timing,
    );
    Ok(json!({"component_access_token": token, "expires_in": ttl / 1000}))
}

fn create_preauthcode(
    sim: &Arc<Sim>,
    q: &Query,
    body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let body = Body::parse(body)?;
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut state = lock(&sim.state);
    let component = component_auth(&state, q, &body, now, appid)?;
    state.charge(Endpoint::CreatePreAuthCode, &component, day)?;
    let ttl = state.timing.pre_auth_ttl_ms;
    let c = state
        .components
        .get_mut(&component)
        .ok_or(ApiError::new(40013))?;
    if c.pre_auth_codes.len() > 10_000 {
        c.pre_auth_codes.retain(|_, p| p.expires_ms > now);
    }
    let code = format!("preauthcode@@@{}", wxhub_crypto::random_nonce(64));
    c.pre_auth_codes.insert(
        code.clone(),
        PreAuthCode {
            expires_ms: now + ttl,
            used: false,
        },
    );
    Ok(json!({"pre_auth_code": code, "expires_in": ttl / 1000}))
}

fn query_auth(
    sim: &Arc<Sim>,
    q: &Query,
    body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let body = Body::parse(body)?;
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut guard = lock(&sim.state);
    let component = component_auth(&guard, q, &body, now, appid)?;
    let code = body.str("authorization_code", 61009)?;
    guard.charge(Endpoint::QueryAuth, &component, day)?;
    let state = &mut *guard;
    let timing = state.timing;
    let c = state
        .components
        .get_mut(&component)
        .ok_or(ApiError::new(40013))?;
    let entry = c.auth_codes.get_mut(code).ok_or(ApiError::new(61009))?;
    if entry.used {
        return Err(ApiError::with(61009, "code already used"));
    }
    if now >= entry.expires_ms {
        return Err(ApiError::new(61010));
    }
    entry.used = true;
    let authorizer = entry.authorizer.clone();
    let ttl = token_ttl_ms(
        &state.token_ttls,
        timing.token_ttl_ms,
        Endpoint::QueryAuth,
        &authorizer,
    );
    let auth = c
        .authorizations
        .get_mut(&authorizer)
        .ok_or(ApiError::new(61003))?;
    auth.exchanged = true;
    let token = State::rotate(
        &mut state.tokens,
        &mut auth.token,
        Owner::Authorizer {
            component: component.clone(),
            appid: authorizer.clone(),
        },
        now,
        ttl,
        &timing,
    );
    Ok(json!({"authorization_info": {
        "authorizer_appid": authorizer,
        "authorizer_access_token": token,
        "expires_in": ttl / 1000,
        "authorizer_refresh_token": auth.refresh_token,
        "func_info": func_info_json(&auth.func_info),
    }}))
}

fn authorizer_token(
    sim: &Arc<Sim>,
    q: &Query,
    body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let body = Body::parse(body)?;
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut guard = lock(&sim.state);
    let component = component_auth(&guard, q, &body, now, appid)?;
    let authorizer = body.str("authorizer_appid", 41002)?;
    // The call acts for the authorizer: record it (tests count refreshes per authorizer).
    *appid = Some(authorizer.to_owned());
    let refresh = body.str("authorizer_refresh_token", 61023)?;
    guard.charge(Endpoint::AuthorizerToken, &component, day)?;
    let state = &mut *guard;
    let timing = state.timing;
    let ttl = token_ttl_ms(
        &state.token_ttls,
        timing.token_ttl_ms,
        Endpoint::AuthorizerToken,
        authorizer,
    );
    let c = state
        .components
        .get_mut(&component)
        .ok_or(ApiError::new(40013))?;
    let auth = c
        .authorizations
        .get_mut(authorizer)
        .ok_or(ApiError::new(61003))?;
    let current = auth.refresh_token == refresh;
    let grace = auth
        .previous_refresh
        .as_ref()
        .is_some_and(|(old, until)| old == refresh && now < *until);
    if !current && !grace {
        return Err(ApiError::new(61023));
    }
    auth.exchanged = true;
    if timing.rotate_refresh_tokens {
        let old = std::mem::replace(&mut auth.refresh_token, new_refresh_token());
        auth.previous_refresh = Some((old, now + timing.overlap_ms));
    }
    let token = State::rotate(
        &mut state.tokens,
        &mut auth.token,
        Owner::Authorizer {
            component: component.clone(),
            appid: authorizer.to_owned(),
        },
        now,
        ttl,
        &timing,
    );
    Ok(json!({
        "authorizer_access_token": token,
        "expires_in": ttl / 1000,
        "authorizer_refresh_token": auth.refresh_token,
    }))
}

fn get_authorizer_info(
    sim: &Arc<Sim>,
    q: &Query,
    body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let body = Body::parse(body)?;
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut state = lock(&sim.state);
    let component = component_auth(&state, q, &body, now, appid)?;
    let authorizer = body.str("authorizer_appid", 41002)?;
    state.charge(Endpoint::AuthorizerInfo, &component, day)?;
    let auth = state
        .components
        .get(&component)
        .and_then(|c| c.authorizations.get(authorizer))
        .ok_or(ApiError::new(61003))?;
    let account = state.accounts.get(authorizer).ok_or(ApiError::new(61003))?;
    let mut info = json!({
        "nick_name": account.nick_name,
        "head_img": format!("http://wx.qlogo.cn/mmopen/sim/{}/0", account.appid),
        "service_type_info": {"id": account.service_type},
        "verify_type_info": {"id": account.verify_type},
        "user_name": account.user_name,
        "alias": "",
        "qrcode_url": format!("http://mmbiz.qpic.cn/sim/{}/0", account.appid),
        "business_info": {"open_pay": 0, "open_shake": 0, "open_scan": 0, "open_card": 0, "open_store": 0},
        "principal_name": account.principal_name,
        "signature": "",
        "account_status": 1,
        "idc": 1,
    });
    if account.kind == AccountKind::MiniProgram
        && let Some(obj) = info.as_object_mut()
    {
        obj.insert(
            "MiniProgramInfo".into(),
            json!({
                "network": {"RequestDomain": [], "WsRequestDomain": [], "UploadDomain": [], "DownloadDomain": [], "UDPDomain": []},
                "categories": [],
                "visit_status": 0,
            }),
        );
    }
    Ok(json!({
        "authorizer_info": info,
        "authorization_info": {
            "authorizer_appid": authorizer,
            "authorizer_refresh_token": if auth.exchanged { auth.refresh_token.as_str() } else { "" },
            "func_info": func_info_json(&auth.func_info),
        },
    }))
}

fn get_authorizer_list(
    sim: &Arc<Sim>,
    q: &Query,
    body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let body = Body::parse(body)?;
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut state = lock(&sim.state);
    let component = component_auth(&state, q, &body, now, appid)?;
    let offset = body
        .opt_u64("offset")?
        .ok_or_else(|| ApiError::with(47001, "missing offset"))?;
    let count = body
        .opt_u64("count")?
        .ok_or_else(|| ApiError::with(47001, "missing count"))?;
    if count == 0 || count > 500 {
        return Err(ApiError::with(40097, "count must be within 1..=500"));
    }
    state.charge(Endpoint::AuthorizerList, &component, day)?;
    let c = state
        .components
        .get(&component)
        .ok_or(ApiError::new(40013))?;
    let list: Vec<Value> = c
        .order
        .values()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(count).unwrap_or(500))
        .filter_map(|a| {
            let auth = c.authorizations.get(a)?;
            Some(json!({
                "authorizer_appid": a,
                "refresh_token": if auth.exchanged { auth.refresh_token.as_str() } else { "" },
                "auth_time": auth.auth_time_secs,
            }))
        })
        .collect();
    Ok(json!({"total_count": c.order.len(), "list": list}))
}

fn start_push_ticket(
    sim: &Arc<Sim>,
    _q: &Query,
    body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let body = Body::parse(body)?;
    let component = body.str("component_appid", 41002)?;
    *appid = Some(component.to_owned());
    let secret = body.str("component_secret", 41004)?;
    {
        let state = lock(&sim.state);
        let c = state
            .components
            .get(component)
            .ok_or(ApiError::new(40013))?;
        if c.secret != secret {
            return Err(ApiError::new(40125));
        }
    }
    sim.spawn_ticket_push(component);
    Ok(json!({"errcode": 0, "errmsg": "ok"}))
}

fn clear_quota_v2(
    sim: &Arc<Sim>,
    _q: &Query,
    body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let body = Body::parse(body)?;
    let component = body.str("component_appid", 41002)?;
    *appid = Some(component.to_owned());
    let secret = body.str("appsecret", 41004)?;
    let target = body.opt_str("appid")?;
    let month = sim.clock.cst_month();
    let mut state = lock(&sim.state);
    let c = state
        .components
        .get(component)
        .ok_or(ApiError::new(40013))?;
    if c.secret != secret {
        return Err(ApiError::new(40125));
    }
    let target = match target {
        Some(a) if !c.authorizations.contains_key(a) => return Err(ApiError::new(61003)),
        Some(a) => a,
        None => component,
    };
    state.clear_quota(target, month)?;
    Ok(json!({"errcode": 0, "errmsg": "ok"}))
}

fn oa_credentials<'s>(
    state: &'s State,
    appid_in: Option<&str>,
    secret: Option<&str>,
) -> ApiResult<&'s str> {
    let appid = appid_in.ok_or_else(|| ApiError::with(41002, "missing appid"))?;
    if state.components.contains_key(appid) {
        return Err(ApiError::new(61024));
    }
    let account = state.accounts.get(appid).ok_or(ApiError::new(40013))?;
    let secret = secret.ok_or_else(|| ApiError::with(41004, "missing secret"))?;
    if account.secret.as_deref() != Some(secret) {
        return Err(ApiError::new(40125));
    }
    Ok(&account.appid)
}

fn oa_token(
    sim: &Arc<Sim>,
    q: &Query,
    _body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    *appid = q.get("appid").map(str::to_owned);
    if q.get("grant_type") != Some("client_credential") {
        return Err(ApiError::new(40002));
    }
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut guard = lock(&sim.state);
    let account = oa_credentials(
        &guard,
        q.get("appid").filter(|s| !s.is_empty()),
        q.get("secret").filter(|s| !s.is_empty()),
    )?
    .to_owned();
    guard.charge(Endpoint::Token, &account, day)?;
    rotate_account_token(&mut guard, Endpoint::Token, &account, |a| &mut a.token, now)
}

/// Issues a new token in the account's `slot` (`/cgi-bin/token` or `stable_token`, named by
/// the issuing `endpoint`).
fn rotate_account_token(
    state: &mut State,
    endpoint: Endpoint,
    account: &str,
    slot: fn(&mut Account) -> &mut TokenSlot,
    now: i64,
) -> ApiResult<Value> {
    let timing = state.timing;
    let ttl = state.token_ttl_ms(endpoint, account);
    let a = state
        .accounts
        .get_mut(account)
        .ok_or(ApiError::new(40013))?;
    let token = State::rotate(
        &mut state.tokens,
        slot(a),
        Owner::Account(account.to_owned()),
        now,
        ttl,
        &timing,
    );
    Ok(json!({"access_token": token, "expires_in": ttl / 1000}))
}

fn stable_token(
    sim: &Arc<Sim>,
    _q: &Query,
    body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let body = Body::parse(body)?;
    *appid = body.opt_str("appid")?.map(str::to_owned);
    if body.opt_str("grant_type")? != Some("client_credential") {
        return Err(ApiError::new(40002));
    }
    let force = body.opt_bool("force_refresh")?.unwrap_or(false);
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut guard = lock(&sim.state);
    let account =
        oa_credentials(&guard, body.opt_str("appid")?, body.opt_str("secret")?)?.to_owned();
    guard.charge(Endpoint::StableToken, &account, day)?;
    let state = &mut *guard;
    let current = state
        .accounts
        .get(&account)
        .and_then(|a| a.stable_token.current.clone());
    // Normal mode: the current token, with what is left of its life, until it expires.
    if !force && state.token_fresh(current.as_ref(), now) {
        let token = current.unwrap_or_default();
        let left = state.token_left_secs(&token, now);
        return Ok(json!({"access_token": token, "expires_in": left}));
    }
    if force {
        state.charge_force_refresh(&account, day, now)?;
    }
    rotate_account_token(
        state,
        Endpoint::StableToken,
        &account,
        |a| &mut a.stable_token,
        now,
    )
}

fn wecom_token(
    sim: &Arc<Sim>,
    q: &Query,
    _body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let corpid = q
        .get("corpid")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::with(41002, "missing corpid"))?;
    *appid = Some(corpid.to_owned());
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut guard = lock(&sim.state);
    if !guard.corps.contains_key(corpid) {
        return Err(ApiError::with(40013, "invalid corpid"));
    }
    let secret = q
        .get("corpsecret")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::with(41004, "missing corpsecret"))?;
    guard.charge(Endpoint::WecomToken, corpid, day)?;
    let state = &mut *guard;
    let timing = state.timing;
    let ttl = token_ttl_ms(
        &state.token_ttls,
        timing.token_ttl_ms,
        Endpoint::WecomToken,
        corpid,
    );
    let corp = state.corps.get_mut(corpid).ok_or(ApiError::new(40013))?;
    let (agentid, agent) = corp
        .agents
        .iter_mut()
        .find(|(_, a)| a.secret == secret)
        .ok_or_else(|| ApiError::with(40001, "invalid corpsecret"))?;
    let token = State::rotate(
        &mut state.tokens,
        &mut agent.token,
        Owner::Corp {
            corpid: corpid.to_owned(),
            agentid: *agentid,
        },
        now,
        ttl,
        &timing,
    );
    Ok(json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": ttl / 1000}))
}

/// An account token's owner: the account, and the component when it is an authorizer token.
pub(crate) struct AccountAuth {
    pub(crate) appid: String,
    component: Option<String>,
    func_info: Option<Vec<u32>>,
}

pub(crate) fn account_auth(
    state: &State,
    q: &Query,
    now: i64,
    appid: &mut Option<String>,
) -> ApiResult<AccountAuth> {
    let owner = state.check_token(q.get("access_token"), now)?;
    match owner {
        Owner::Account(a) => {
            *appid = Some(a.clone());
            Ok(AccountAuth {
                appid: a.clone(),
                component: None,
                func_info: None,
            })
        }
        Owner::Authorizer {
            component,
            appid: a,
        } => {
            *appid = Some(a.clone());
            let func_info = state
                .components
                .get(component)
                .and_then(|c| c.authorizations.get(a))
                .map(|auth| auth.func_info.clone())
                .ok_or(ApiError::new(61003))?;
            Ok(AccountAuth {
                appid: a.clone(),
                component: Some(component.clone()),
                func_info: Some(func_info),
            })
        }
        Owner::Component(c) => {
            *appid = Some(c.clone());
            Err(ApiError::with(
                40001,
                "a component_access_token cannot call account APIs",
            ))
        }
        Owner::Corp { corpid, .. } => {
            *appid = Some(corpid.clone());
            Err(ApiError::new(48001))
        }
    }
}

fn require_sets(auth: &AccountAuth, sets: &[u32]) -> ApiResult<()> {
    match &auth.func_info {
        Some(granted) if !granted.iter().any(|g| sets.contains(g)) => Err(ApiError::with(
            48001,
            "permission set not authorized to the component",
        )),
        _ => Ok(()),
    }
}

fn get_ticket(
    sim: &Arc<Sim>,
    q: &Query,
    _body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut state = lock(&sim.state);
    let auth = account_auth(&state, q, now, appid)?;
    let kind = match q.get("type") {
        Some(t @ ("jsapi" | "wx_card")) => t.to_owned(),
        _ => return Err(ApiError::with(40097, "type must be jsapi or wx_card")),
    };
    state.charge(Endpoint::Ticket, &auth.appid, day)?;
    let ttl = state.token_ttl_ms(Endpoint::Ticket, &auth.appid) / 1000;
    let account = state
        .accounts
        .get_mut(&auth.appid)
        .ok_or(ApiError::new(40013))?;
    let (ticket, expires) = match account.tickets.get(&kind) {
        Some((t, exp)) if *exp > now => (t.clone(), *exp),
        _ => {
            let t = wxhub_crypto::random_nonce(86);
            let exp = now + ttl * 1000;
            account.tickets.insert(kind, (t.clone(), exp));
            (t, exp)
        }
    };
    Ok(
        json!({"errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": (expires - now) / 1000}),
    )
}

fn clear_quota(
    sim: &Arc<Sim>,
    q: &Query,
    body: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let body = Body::parse(body)?;
    let now = sim.clock.now_ms();
    let month = sim.clock.cst_month();
    let mut state = lock(&sim.state);
    let owner = state.check_token(q.get("access_token"), now)?.clone();
    *appid = Some(owner.appid().to_owned());
    let target = body.str("appid", 41002)?;
    if target != owner.appid() {
        return Err(ApiError::with(
            40013,
            "appid does not match the access_token",
        ));
    }
    state.clear_quota(target, month)?;
    Ok(json!({"errcode": 0, "errmsg": "ok"}))
}

// ----- sends ----------------------------------------------------------------------------------

fn nonempty_str<'a>(obj: Option<&'a Map<String, Value>>, field: &str) -> Option<&'a str> {
    obj.and_then(|o| o.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn require_fields(body: &Body, msgtype: &str, fields: &[&str]) -> ApiResult<()> {
    let obj = body.obj(msgtype);
    for f in fields {
        if nonempty_str(obj, f).is_none() {
            return Err(ApiError::with(47001, format!("missing {msgtype}.{f}")));
        }
    }
    Ok(())
}

fn validate_custom(body: &Body, kind: AccountKind) -> ApiResult<(String, Option<String>)> {
    let msgtype = body
        .opt_str("msgtype")?
        .ok_or_else(|| ApiError::with(40008, "missing msgtype"))?;
    let allowed: &[&str] = match kind {
        AccountKind::OfficialAccount => &[
            "text",
            "image",
            "voice",
            "video",
            "music",
            "news",
            "mpnews",
            "mpnewsarticle",
            "msgmenu",
            "wxcard",
            "miniprogrampage",
        ],
        AccountKind::MiniProgram => &["text", "image", "link", "miniprogrampage"],
    };
    if !allowed.contains(&msgtype) {
        return Err(ApiError::with(
            40008,
            format!("{msgtype} is not a customer-service type of this account"),
        ));
    }
    let mut content = None;
    match msgtype {
        "text" => {
            let text = nonempty_str(body.obj("text"), "content")
                .ok_or_else(|| ApiError::with(44004, "text.content"))?;
            content = Some(text.to_owned());
        }
        "image" | "voice" | "mpnews" => require_fields(body, msgtype, &["media_id"])?,
        "video" => require_fields(body, msgtype, &["media_id"])?,
        "music" => require_fields(body, msgtype, &["musicurl", "hqmusicurl", "thumb_media_id"])?,
        "news" => {
            let articles = body
                .obj("news")
                .and_then(|n| n.get("articles"))
                .and_then(Value::as_array)
                .ok_or_else(|| ApiError::with(47001, "missing news.articles"))?;
            if articles.is_empty() {
                return Err(ApiError::with(47001, "news.articles is empty"));
            }
            if articles.len() > 1 {
                return Err(ApiError::new(45008));
            }
        }
        "mpnewsarticle" => require_fields(body, msgtype, &["article_id"])?,
        "msgmenu" => {
            let list = body
                .obj("msgmenu")
                .and_then(|m| m.get("list"))
                .and_then(Value::as_array)
                .filter(|l| !l.is_empty())
                .ok_or_else(|| ApiError::with(47001, "missing msgmenu.list"))?;
            for item in list {
                let item = item.as_object();
                if nonempty_str(item, "id").is_none() || nonempty_str(item, "content").is_none() {
                    return Err(ApiError::with(
                        47001,
                        "msgmenu.list items need id and content",
                    ));
                }
            }
        }
        "wxcard" => require_fields(body, msgtype, &["card_id"])?,
        "miniprogrampage" => match kind {
            AccountKind::OfficialAccount => require_fields(
                body,
                msgtype,
                &["title", "appid", "pagepath", "thumb_media_id"],
            )?,
            AccountKind::MiniProgram => {
                require_fields(body, msgtype, &["title", "pagepath", "thumb_media_id"])?
            }
        },
        "link" => require_fields(body, msgtype, &["title", "description", "url", "thumb_url"])?,
        _ => {}
    }
    Ok((msgtype.to_owned(), content))
}

fn custom_send(
    sim: &Arc<Sim>,
    q: &Query,
    raw: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut state = lock(&sim.state);
    let auth = account_auth(&state, q, now, appid)?;
    let body = Body::parse(raw)?;
    state.charge(Endpoint::CustomSend, &auth.appid, day)?;
    state.charge_minute(Endpoint::CustomSend, &auth.appid, now)?;
    require_sets(&auth, &[1, 6, 19, 100, 101])?;
    let touser = body.str("touser", 40003)?.to_owned();
    let account = state
        .accounts
        .get_mut(&auth.appid)
        .ok_or(ApiError::new(40013))?;
    let (msgtype, content) = validate_custom(&body, account.kind)?;
    let kind = account.kind;
    let user = account.users.get_mut(&touser).ok_or(ApiError::new(40003))?;
    if (kind == AccountKind::OfficialAccount && !user.subscribed) || now >= user.window_until_ms {
        return Err(ApiError::new(45015));
    }
    if user.window_left == 0 {
        return Err(ApiError::new(45047));
    }
    user.window_left -= 1;
    let msgid = state.next_msgid();
    drop(state);
    sim.record_message(SentMessage {
        msgid,
        path: Endpoint::CustomSend.path().into(),
        appid: auth.appid,
        component_appid: auth.component,
        touser,
        msgtype: Some(msgtype),
        template_id: None,
        content,
        body: Value::Object(body.0),
        sim_time_ms: now,
    });
    Ok(json!({"errcode": 0, "errmsg": "ok"}))
}

fn check_template_data(body: &Body, strict_values: bool) -> ApiResult<()> {
    let data = body
        .obj("data")
        .ok_or_else(|| ApiError::with(47003, "data must be an object"))?;
    for (key, value) in data {
        let ok = value
            .as_object()
            .and_then(|o| o.get("value"))
            .is_some_and(|v| v.is_string() || (!strict_values && v.is_number()));
        if !ok {
            return Err(ApiError::with(47003, format!("data.{key}.value")));
        }
    }
    if let Some(mp) = body.0.get("miniprogram") {
        let mp = mp
            .as_object()
            .ok_or_else(|| ApiError::with(47003, "miniprogram must be an object"))?;
        if nonempty_str(Some(mp), "appid").is_none() {
            return Err(ApiError::with(47003, "miniprogram.appid"));
        }
    }
    Ok(())
}

fn template_send(
    sim: &Arc<Sim>,
    q: &Query,
    raw: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut state = lock(&sim.state);
    let auth = account_auth(&state, q, now, appid)?;
    let body = Body::parse(raw)?;
    state.charge(Endpoint::TemplateSend, &auth.appid, day)?;
    state.charge_minute(Endpoint::TemplateSend, &auth.appid, now)?;
    require_sets(&auth, &[7, 100, 101])?;
    let touser = body.str("touser", 40003)?.to_owned();
    let template_id = body.str("template_id", 40037)?.to_owned();
    body.opt_str("url")?;
    let client_msg_id = body.opt_str("client_msg_id")?.map(str::to_owned);
    let account = state
        .accounts
        .get(&auth.appid)
        .ok_or(ApiError::new(40013))?;
    if account.kind != AccountKind::OfficialAccount {
        return Err(ApiError::with(
            48001,
            "template messages are for Official Accounts",
        ));
    }
    if !account.templates.contains(&template_id) {
        return Err(ApiError::new(40037));
    }
    check_template_data(&body, false)?;
    let user = account.users.get(&touser).ok_or(ApiError::new(40003))?;
    if !user.subscribed {
        return Err(ApiError::new(43004));
    }
    if let Some(id) = &client_msg_id
        && let Some((msgid, at)) = account.client_msg_ids.get(&(touser.clone(), id.clone()))
        && now - at < 600_000
    {
        // Anti-reentry: the same openid + client_msg_id within 10 minutes is sent once.
        return Ok(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}));
    }
    let msgid = state.next_msgid();
    if let Some(id) = client_msg_id
        && let Some(account) = state.accounts.get_mut(&auth.appid)
    {
        account
            .client_msg_ids
            .insert((touser.clone(), id), (msgid, now));
    }
    drop(state);
    sim.schedule_delivery_report(
        auth.component.as_deref(),
        &auth.appid,
        &touser,
        &template_id,
        msgid,
        false,
    );
    sim.record_message(SentMessage {
        msgid,
        path: Endpoint::TemplateSend.path().into(),
        appid: auth.appid,
        component_appid: auth.component,
        touser,
        msgtype: None,
        template_id: Some(template_id),
        content: None,
        body: Value::Object(body.0),
        sim_time_ms: now,
    });
    Ok(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
}

fn subscription(
    sim: &Arc<Sim>,
    q: &Query,
    raw: &[u8],
    appid: &mut Option<String>,
    endpoint: Endpoint,
    kind: AccountKind,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut state = lock(&sim.state);
    let auth = account_auth(&state, q, now, appid)?;
    let body = Body::parse(raw)?;
    state.charge(endpoint, &auth.appid, day)?;
    state.charge_minute(endpoint, &auth.appid, now)?;
    if kind == AccountKind::OfficialAccount {
        require_sets(&auth, &[89])?;
    }
    let touser = body.str("touser", 40003)?.to_owned();
    let template_id = body.str("template_id", 40037)?.to_owned();
    body.opt_str("page")?;
    if kind == AccountKind::MiniProgram {
        if let Some(s) = body.opt_str("miniprogram_state")?
            && !["developer", "trial", "formal"].contains(&s)
        {
            return Err(ApiError::with(47003, "miniprogram_state"));
        }
        if let Some(l) = body.opt_str("lang")?
            && !["zh_CN", "en_US", "zh_HK", "zh_TW"].contains(&l)
        {
            return Err(ApiError::with(47003, "lang"));
        }
    }
    let account = state
        .accounts
        .get_mut(&auth.appid)
        .ok_or(ApiError::new(40013))?;
    if account.kind != kind {
        return Err(ApiError::with(48001, "wrong account kind for this API"));
    }
    if !account.subscribe_templates.contains(&template_id) {
        return Err(ApiError::new(40037));
    }
    check_template_data(&body, true)?;
    let user = account.users.get_mut(&touser).ok_or(ApiError::new(40003))?;
    match user.allowances.get_mut(&template_id) {
        Some(n) if *n > 0 => *n -= 1,
        _ => return Err(ApiError::new(43101)),
    }
    let msgid = state.next_msgid();
    drop(state);
    sim.schedule_delivery_report(
        auth.component.as_deref(),
        &auth.appid,
        &touser,
        &template_id,
        msgid,
        true,
    );
    sim.record_message(SentMessage {
        msgid,
        path: endpoint.path().into(),
        appid: auth.appid,
        component_appid: auth.component,
        touser,
        msgtype: None,
        template_id: Some(template_id),
        content: None,
        body: Value::Object(body.0),
        sim_time_ms: now,
    });
    Ok(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
}

fn bizsend(sim: &Arc<Sim>, q: &Query, raw: &[u8], appid: &mut Option<String>) -> ApiResult<Value> {
    subscription(
        sim,
        q,
        raw,
        appid,
        Endpoint::SubscribeBizSend,
        AccountKind::OfficialAccount,
    )
}

fn subscribe_send(
    sim: &Arc<Sim>,
    q: &Query,
    raw: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    subscription(
        sim,
        q,
        raw,
        appid,
        Endpoint::SubscribeSend,
        AccountKind::MiniProgram,
    )
}
