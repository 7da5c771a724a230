//! Stand-ins for mp.weixin.qq.com's authorization pages (componentloginpage, bindcomponent).
//!
//! Without an account choice the page lists the accounts it could authorize as links; with
//! `authorizer_appid` (or a `biz_appid`) it authorizes, pushes the notice and redirects to
//! `redirect_uri?auth_code=...&expires_in=...`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::seed::AccountKind;
use crate::sim::{Sim, lock};

/// The PC authorization page (a QR code for the admin's phone on WeChat's side).
const PC_PAGE: &str = "/cgi-bin/componentloginpage";
/// The mobile authorization page (opened inside WeChat).
const MOBILE_PAGE: &str = "/safe/bindcomponent";

pub(crate) fn router() -> Router<Arc<Sim>> {
    Router::new()
        .route(
            PC_PAGE,
            get(|s: AxState<Arc<Sim>>, q: RawQuery| page(s, q, false)),
        )
        .route(
            MOBILE_PAGE,
            get(|s: AxState<Arc<Sim>>, q: RawQuery| page(s, q, true)),
        )
}

fn refuse(reason: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("authorization refused: {reason}\n"),
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn page(AxState(sim): AxState<Arc<Sim>>, RawQuery(raw): RawQuery, mobile: bool) -> Response {
    let raw = raw.unwrap_or_default();
    let q: HashMap<String, String> = url::form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if mobile && (get("action") != Some("bindcomponent") || get("no_scan") != Some("1")) {
        return refuse("the mobile page needs action=bindcomponent and no_scan=1");
    }
    let Some(component) = get("component_appid") else {
        return refuse("missing component_appid");
    };
    let Some(pre_auth_code) = get("pre_auth_code") else {
        return refuse("missing pre_auth_code");
    };
    let Some(redirect_uri) = get("redirect_uri") else {
        return refuse("missing redirect_uri");
    };
    let Ok(mut redirect) = url::Url::parse(redirect_uri) else {
        return refuse("redirect_uri is not an absolute URL");
    };
    let auth_type = get("auth_type");
    let biz_appid = get("biz_appid");
    if auth_type.is_some() && biz_appid.is_some() {
        return refuse("auth_type and biz_appid are mutually exclusive");
    }
    if mobile && auth_type.is_none() && biz_appid.is_none() {
        return refuse("the mobile page needs auth_type (or biz_appid)");
    }
    let kinds: &[AccountKind] = match auth_type {
        None | Some("3") => &[AccountKind::OfficialAccount, AccountKind::MiniProgram],
        Some("1") => &[AccountKind::OfficialAccount],
        Some("2") => &[AccountKind::MiniProgram],
        Some(_) => return refuse("auth_type must be 1, 2 or 3"),
    };
    let now = sim.clock.now_ms();
    let chosen = get("authorizer_appid").or(biz_appid);
    {
        let mut state = lock(&sim.state);
        let Some(c) = state.components.get_mut(component) else {
            return refuse("unknown component_appid");
        };
        match c.pre_auth_codes.get(pre_auth_code) {
            None => return refuse("invalid pre_auth_code"),
            Some(p) if p.used => return refuse("pre_auth_code already used"),
            Some(p) if now >= p.expires_ms => return refuse("pre_auth_code expired"),
            Some(_) => {}
        }
        if let Some(appid) = chosen {
            match state.accounts.get(appid) {
                None => return refuse("unknown account"),
                Some(a) if !kinds.contains(&a.kind) => {
                    return refuse("this account kind is excluded by auth_type");
                }
                Some(_) => {}
            }
            if biz_appid.is_some_and(|b| b != appid) {
                return refuse("biz_appid restricts authorization to another account");
            }
            if let Some(p) = state
                .components
                .get_mut(component)
                .and_then(|c| c.pre_auth_codes.get_mut(pre_auth_code))
            {
                p.used = true;
            }
        } else {
            let mut accounts: Vec<(&String, &str, AccountKind)> = state
                .accounts
                .values()
                .filter(|a| kinds.contains(&a.kind))
                .map(|a| (&a.appid, a.nick_name.as_str(), a.kind))
                .collect();
            accounts.sort();
            let mut html = String::from(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>授权 (wxhub-sim)</title></head><body><h1>Choose an account to authorize</h1><ul>",
            );
            let base = if mobile { MOBILE_PAGE } else { PC_PAGE };
            for (appid, name, kind) in accounts {
                let mut link = format!("{base}?{raw}");
                link.push_str("&authorizer_appid=");
                link.push_str(
                    &url::form_urlencoded::byte_serialize(appid.as_bytes()).collect::<String>(),
                );
                let kind = match kind {
                    AccountKind::OfficialAccount => "公众号",
                    AccountKind::MiniProgram => "小程序",
                };
                html.push_str(&format!(
                    "<li><a href=\"{}\">{} ({}, {})</a></li>",
                    escape(&link),
                    escape(name),
                    escape(appid),
                    kind
                ));
            }
            html.push_str("</ul></body></html>");
            return Html(html).into_response();
        }
    }
    let Some(appid) = chosen else {
        return refuse("no account chosen");
    };
    let auth = match lock(&sim.state).authorize(component, appid, now) {
        Ok(a) => a,
        Err(e) => return refuse(&e.to_string()),
    };
    let has_url = lock(&sim.state)
        .components
        .get(component)
        .is_some_and(|c| c.auth_event_url.is_some());
    if has_url {
        let xml = sim.authorization_notice(component, appid, &auth, pre_auth_code);
        if let Ok(out) = sim.component_notice(component, &xml, None) {
            let bg = Arc::clone(&sim);
            let what = auth.info_type.clone();
            sim.tasks.spawn(async move {
                tokio::select! {
                    _ = bg.cancel.cancelled() => {}
                    _ = async {
                        let report = bg.pusher.send(what, &out, bg.pusher.attempts, bg.pusher.timeout, &bg.clock).await;
                        lock(&bg.records).pushes.push(report);
                    } => {}
                }
            });
        }
    }
    redirect
        .query_pairs_mut()
        .append_pair("auth_code", &auth.auth_code)
        .append_pair("expires_in", &auth.expires_in.to_string());
    (
        StatusCode::FOUND,
        [(header::LOCATION, String::from(redirect))],
    )
        .into_response()
}
