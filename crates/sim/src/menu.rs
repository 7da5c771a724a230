//! Custom menus: an Official Account's (or authorizer's) default and conditional menus, and a
//! WeCom app's menu per agentid, with WeChat's validation codes.
//!
//! The token decides the flavour: an account or authorizer token is an Official Account
//! (`/cgi-bin/menu/create` on api.weixin.qq.com), a WeCom token a WeCom app (the same path on
//! qyapi.weixin.qq.com, with `agentid`, which must be the token's app: 301002 otherwise).

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::api::{AccountAuth, Query, account_auth};
use crate::codes::{ApiError, ApiResult};
use crate::endpoint::Endpoint;
use crate::sim::{Sim, lock};
use crate::state::{Owner, State};

/// Conditional menus one account may hold.
const MAX_CONDITIONAL: usize = 20;

/// One account's (or WeCom app's) menus.
#[derive(Debug, Clone, Default)]
pub(crate) struct Menus {
    pub default: Option<(u64, Value)>,
    /// (menuid, buttons, matchrule).
    pub conditional: Vec<(u64, Value, Value)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    OfficialAccount,
    Wecom,
}

/// Whose menus a token reaches: the account appid, or `corpid:agentid`.
fn menu_owner(
    state: &State,
    q: &Query,
    now: i64,
    appid: &mut Option<String>,
) -> ApiResult<(String, Flavour)> {
    if let Ok(Owner::Corp { corpid, agentid }) = state.check_token(q.get("access_token"), now) {
        *appid = Some(corpid.clone());
        let asked = q
            .get("agentid")
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ApiError::with(41011, "missing agentid"))?;
        if asked != agentid.to_string() {
            return Err(ApiError::with(
                301002,
                "agentid is not the access_token's app",
            ));
        }
        return Ok((format!("{corpid}:{agentid}"), Flavour::Wecom));
    }
    let AccountAuth { appid: a, .. } = account_auth(state, q, now, appid)?;
    Ok((a, Flavour::OfficialAccount))
}

fn types(flavour: Flavour) -> &'static [&'static str] {
    match flavour {
        Flavour::OfficialAccount => &[
            "click",
            "view",
            "scancode_push",
            "scancode_waitmsg",
            "pic_sysphoto",
            "pic_photo_or_album",
            "pic_weixin",
            "location_select",
            "media_id",
            "view_limited",
            "article_id",
            "article_view_limited",
            "miniprogram",
        ],
        Flavour::Wecom => &[
            "click",
            "view",
            "scancode_push",
            "scancode_waitmsg",
            "pic_sysphoto",
            "pic_photo_or_album",
            "pic_weixin",
            "location_select",
            "view_miniprogram",
        ],
    }
}

fn str_field<'a>(b: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    b.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// One button (top level when `sub` is false), with WeChat's codes: 40017/40024 type, 40018/
/// 40025 name, 40019/40026 key, 40020/40027 url, 65308 a button with neither type nor
/// sub-buttons.
fn check_button(b: &Value, sub: bool, flavour: Flavour) -> ApiResult<()> {
    let b = b
        .as_object()
        .ok_or_else(|| ApiError::with(47001, "a button must be an object"))?;
    let (c_type, c_name, c_key, c_url) = if sub {
        (40024, 40025, 40026, 40027)
    } else {
        (40017, 40018, 40019, 40020)
    };
    let name_max = match (sub, flavour) {
        (false, _) => 16,
        (true, Flavour::OfficialAccount) => 60,
        (true, Flavour::Wecom) => 40,
    };
    let name = str_field(b, "name").ok_or_else(|| ApiError::with(c_name, "missing name"))?;
    if name.len() > name_max {
        return Err(ApiError::with(
            c_name,
            format!("name longer than {name_max} bytes"),
        ));
    }
    if !sub && let Some(subs) = b.get("sub_button") {
        let subs = subs
            .as_array()
            .ok_or_else(|| ApiError::with(47001, "sub_button must be an array"))?;
        if !subs.is_empty() {
            if subs.len() > 5 {
                return Err(ApiError::new(40023));
            }
            return subs.iter().try_for_each(|s| check_button(s, true, flavour));
        }
    }
    let kind = match b.get("type") {
        None | Some(Value::Null) => return Err(ApiError::new(65308)),
        Some(t) => t.as_str().unwrap_or_default(),
    };
    if !types(flavour).contains(&kind) {
        return Err(ApiError::with(c_type, format!("type {kind:?}")));
    }
    match kind {
        "view" => {
            let url = str_field(b, "url").ok_or_else(|| ApiError::with(c_url, "missing url"))?;
            if url.len() > 1024 || !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ApiError::with(c_url, "url"));
            }
        }
        "media_id" | "view_limited" => {
            str_field(b, "media_id").ok_or_else(|| ApiError::with(40007, "missing media_id"))?;
        }
        "article_id" | "article_view_limited" => {
            str_field(b, "article_id")
                .ok_or_else(|| ApiError::with(47001, "missing article_id"))?;
        }
        "miniprogram" | "view_miniprogram" => {
            for f in ["appid", "pagepath"] {
                str_field(b, f).ok_or_else(|| ApiError::with(47001, format!("missing {f}")))?;
            }
            if kind == "miniprogram" {
                str_field(b, "url").ok_or_else(|| ApiError::with(c_url, "missing url"))?;
            }
        }
        _ => {
            let key = str_field(b, "key").ok_or_else(|| ApiError::with(c_key, "missing key"))?;
            if key.len() > 128 {
                return Err(ApiError::with(c_key, "key longer than 128 bytes"));
            }
        }
    }
    Ok(())
}

/// The `button` array of a menu body: 1..=3 buttons (40016), each valid.
fn check_buttons(body: &Map<String, Value>, flavour: Flavour) -> ApiResult<Value> {
    let buttons = body
        .get("button")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::with(40016, "missing button"))?;
    if buttons.is_empty() || buttons.len() > 3 {
        return Err(ApiError::new(40016));
    }
    for b in buttons {
        check_button(b, false, flavour)?;
    }
    Ok(Value::Array(buttons.clone()))
}

fn object(raw: &[u8]) -> ApiResult<Map<String, Value>> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::new(47001)),
    }
}

fn next_menuid(state: &mut State) -> u64 {
    state.next_msgid() % 1_000_000_000
}

pub(crate) fn create(
    sim: &Arc<Sim>,
    q: &Query,
    raw: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let day = sim.clock.cst_day();
    let mut state = lock(&sim.state);
    let (owner, flavour) = menu_owner(&state, q, now, appid)?;
    state.charge(Endpoint::MenuCreate, &owner, day)?;
    let buttons = check_buttons(&object(raw)?, flavour)?;
    let id = next_menuid(&mut state);
    let menus = state.menus.entry(owner).or_default();
    menus.default = Some((id, buttons));
    Ok(json!({"errcode": 0, "errmsg": "ok"}))
}

pub(crate) fn get(
    sim: &Arc<Sim>,
    q: &Query,
    _raw: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let state = lock(&sim.state);
    let (owner, flavour) = menu_owner(&state, q, now, appid)?;
    let menus = state.menus.get(&owner).cloned().unwrap_or_default();
    let Some((id, buttons)) = menus.default else {
        return Err(ApiError::new(46003));
    };
    Ok(match flavour {
        Flavour::Wecom => json!({"errcode": 0, "errmsg": "ok", "button": buttons}),
        Flavour::OfficialAccount => {
            let conditional: Vec<Value> = menus
                .conditional
                .iter()
                .map(|(id, b, rule)| json!({"button": b, "matchrule": rule, "menuid": id}))
                .collect();
            let mut v = json!({"menu": {"button": buttons, "menuid": id}});
            if !conditional.is_empty() {
                v["conditionalmenu"] = Value::Array(conditional);
            }
            v
        }
    })
}

pub(crate) fn delete(
    sim: &Arc<Sim>,
    q: &Query,
    _raw: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let mut state = lock(&sim.state);
    let (owner, _) = menu_owner(&state, q, now, appid)?;
    state.menus.remove(&owner);
    Ok(json!({"errcode": 0, "errmsg": "ok"}))
}

const RULE_KEYS: [&str; 7] = [
    "tag_id",
    "sex",
    "country",
    "province",
    "city",
    "client_platform_type",
    "language",
];

fn oa_owner(state: &State, q: &Query, now: i64, appid: &mut Option<String>) -> ApiResult<String> {
    match menu_owner(state, q, now, appid)? {
        (owner, Flavour::OfficialAccount) => Ok(owner),
        (_, Flavour::Wecom) => Err(ApiError::with(
            48001,
            "WeCom apps have no conditional menus",
        )),
    }
}

pub(crate) fn add_conditional(
    sim: &Arc<Sim>,
    q: &Query,
    raw: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let mut state = lock(&sim.state);
    let owner = oa_owner(&state, q, now, appid)?;
    let body = object(raw)?;
    let buttons = check_buttons(&body, Flavour::OfficialAccount)?;
    let rule = body
        .get("matchrule")
        .and_then(Value::as_object)
        .filter(|r| RULE_KEYS.iter().any(|k| str_field(r, k).is_some()))
        .ok_or_else(|| ApiError::new(65304))?
        .clone();
    if str_field(&rule, "province").is_some() && str_field(&rule, "country").is_none() {
        return Err(ApiError::new(65310));
    }
    if str_field(&rule, "city").is_some() && str_field(&rule, "province").is_none() {
        return Err(ApiError::new(65311));
    }
    let has_default = state.menus.get(&owner).is_some_and(|m| m.default.is_some());
    if !has_default {
        return Err(ApiError::new(65303));
    }
    if state
        .menus
        .get(&owner)
        .is_some_and(|m| m.conditional.len() >= MAX_CONDITIONAL)
    {
        return Err(ApiError::new(65305));
    }
    let id = next_menuid(&mut state);
    state
        .menus
        .entry(owner)
        .or_default()
        .conditional
        .push((id, buttons, Value::Object(rule)));
    Ok(json!({"menuid": id.to_string()}))
}

pub(crate) fn del_conditional(
    sim: &Arc<Sim>,
    q: &Query,
    raw: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let mut state = lock(&sim.state);
    let owner = oa_owner(&state, q, now, appid)?;
    let body = object(raw)?;
    let id: u64 = match body.get("menuid") {
        Some(Value::String(s)) => s.parse().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    }
    .ok_or_else(|| ApiError::with(65301, "missing menuid"))?;
    let menus = state.menus.entry(owner).or_default();
    let before = menus.conditional.len();
    menus.conditional.retain(|(m, _, _)| *m != id);
    if menus.conditional.len() == before {
        return Err(ApiError::new(65301));
    }
    Ok(json!({"errcode": 0, "errmsg": "ok"}))
}

/// The menu a user would see: the newest conditional menu whose rule only names fields the sim
/// does not model (tags, region, ...) never matches, so users see the default menu.
pub(crate) fn try_match(
    sim: &Arc<Sim>,
    q: &Query,
    raw: &[u8],
    appid: &mut Option<String>,
) -> ApiResult<Value> {
    let now = sim.clock.now_ms();
    let state = lock(&sim.state);
    let owner = oa_owner(&state, q, now, appid)?;
    let body = object(raw)?;
    let user =
        str_field(&body, "user_id").ok_or_else(|| ApiError::with(65302, "missing user_id"))?;
    let known = state
        .accounts
        .get(&owner)
        .is_some_and(|a| a.users.contains_key(user));
    if !known {
        return Err(ApiError::new(65302));
    }
    match state.menus.get(&owner).and_then(|m| m.default.clone()) {
        Some((_, buttons)) => Ok(json!({"button": buttons})),
        None => Err(ApiError::new(46003)),
    }
}
