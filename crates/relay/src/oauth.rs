//! Web OAuth (网页授权) for authorized accounts, the component flavour: a business system asks
//! for an authorize URL, WeChat sends the user's browser back to the relay with a code, the
//! relay exchanges it and delivers the user to the tenant's business callback.
//!
//! **`state` is single use and ours.** Every URL carries a fresh random `state`, stored in Redis
//! (`…:oauth-state:{state}`, EX `relay.oauth_state_ttl_secs`) with the appid, scope and where to
//! send the browser afterwards. The redirect endpoint takes it with GETDEL before anything else:
//! a state the relay did not issue, issued for another account, expired or already used gets
//! 400 and nothing is sent to WeChat — a forged redirect cannot make the relay exchange a code
//! or call the business callback.
//!
//! - `POST /oauth/{tenant}/{appid}/authorize-url` (API key; the client must be admitted to the
//!   tenant and allowed `/sns/oauth2/component/`), body `{"scope": "snsapi_base" |
//!   "snsapi_userinfo", "return_to": URL?, "data": string?}` → `{"url", "state", "expires_in"}`.
//! - `GET /oauth/{tenant}/{appid}/callback?code=&state=` (the user's browser): state checked,
//!   code exchanged through `/sns/oauth2/component/access_token` with the component's token
//!   (a rejected token healed once), `/sns/userinfo` called under `snsapi_userinfo`, and
//!   `{"tenant", "appid", "openid", "unionid"?, "scope", "userinfo"?, "data"?}` POSTed to
//!   `relay.oauth_callbacks.{tenant}`. The browser then goes to `return_to`, or sees a short
//!   page. The user's OAuth access token never leaves the relay.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wxhub_runtime::TenantKind;
use wxhub_token_client::pb;

use crate::Shared;
use crate::access::{self, Refusal};
use crate::forward::{TOKEN_REJECTED, token_refusal};

/// What a state stands for.
#[derive(Debug, Serialize, Deserialize)]
struct Issued {
    appid: String,
    scope: String,
    #[serde(default)]
    return_to: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlRequest {
    scope: String,
    #[serde(default)]
    return_to: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

const STATE_LEN: usize = 32;

fn new_state() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..STATE_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn well_formed_state(s: &str) -> bool {
    s.len() == STATE_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn refused(r: Refusal) -> Response {
    crate::refused(&r)
}

/// `POST /oauth/{tenant}/{appid}/authorize-url`.
pub(crate) async fn authorize_url(
    State(shared): State<Arc<Shared>>,
    Path((tenant, appid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match issue(&shared, &tenant, &appid, &headers, &body).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => refused(r),
    }
}

async fn issue(
    shared: &Shared,
    tenant: &str,
    appid: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, Refusal> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let admitted = shared.tenants.current().admit(authorization, tenant)?;
    access::allowed(&admitted.client, "/sns/oauth2/component/access_token")?;
    let bad = |m: &str| Refusal::new(StatusCode::BAD_REQUEST, "bad_request", m);
    if admitted.tenant.kind != TenantKind::Component {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "not_component",
            "web OAuth on behalf of an account is a third-party-platform flow: the tenant must be a component",
        ));
    }
    if !wxhub_runtime::AppId::is_valid(appid) || appid == admitted.tenant.app_id.as_str() {
        return Err(bad("appid must be an authorizer's appid"));
    }
    let request: UrlRequest = serde_json::from_slice(body).map_err(|e| {
        bad(&format!(
            "body must be {{\"scope\", \"return_to\"?, \"data\"?}}: {e}"
        ))
    })?;
    if !matches!(request.scope.as_str(), "snsapi_base" | "snsapi_userinfo") {
        return Err(bad("scope must be snsapi_base or snsapi_userinfo"));
    }
    if let Some(r) = &request.return_to
        && (r.len() > 1024
            || url::Url::parse(r).map_or(true, |u| !matches!(u.scheme(), "http" | "https")))
    {
        return Err(bad(
            "return_to must be an absolute http(s) URL (at most 1024 bytes)",
        ));
    }
    if request.data.as_ref().is_some_and(|d| d.len() > 512) {
        return Err(bad("data must be at most 512 bytes"));
    }
    if !shared.config.relay.oauth_callbacks.contains_key(tenant) {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "no_callback",
            format!(
                "no business callback for tenant {tenant:?}: set relay.oauth_callbacks.{tenant}"
            ),
        ));
    }
    // The account must be one of the tenant's authorizers, and usable.
    let tokens = shared.tokens.client();
    let authorizer = tokens
        .grpc()
        .get_authorizer(tokens.request(pb::GetAuthorizerRequest {
            tenant: tenant.to_owned(),
            appid: appid.to_owned(),
        }))
        .await
        .map_err(|s| token_refusal(&s))?
        .into_inner();
    if authorizer.status != "authorized" {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "account_unusable",
            format!("authorizer {appid} is {}", authorizer.status),
        ));
    }
    let state = new_state();
    let ttl = shared.config.relay.oauth_state_ttl_secs;
    let issued = Issued {
        appid: appid.to_owned(),
        scope: request.scope.clone(),
        return_to: request.return_to,
        data: request.data,
    };
    let value = serde_json::to_string(&issued)
        .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let key = shared.store.keys(tenant).oauth_state(&state);
    let mut conn = shared.store.conn();
    let stored: Result<Option<String>, redis::RedisError> = redis::cmd("SET")
        .arg(&key)
        .arg(value)
        .arg("EX")
        .arg(ttl)
        .arg("NX")
        .query_async(&mut conn)
        .await;
    if stored.is_err() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis_unavailable",
            "cannot store the OAuth state",
        ));
    }
    let redirect = format!(
        "{}/oauth/{tenant}/{appid}/callback",
        shared.config.relay.public_base()
    );
    let mut url = url::Url::parse(&format!(
        "{}/connect/oauth2/authorize",
        shared
            .config
            .relay
            .oauth_authorize_base
            .trim_end_matches('/')
    ))
    .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    url.query_pairs_mut()
        .append_pair("appid", appid)
        .append_pair("redirect_uri", &redirect)
        .append_pair("response_type", "code")
        .append_pair("scope", &request.scope)
        .append_pair("state", &state)
        .append_pair("component_appid", admitted.tenant.app_id.as_str());
    url.set_fragment(Some("wechat_redirect"));
    metrics::counter!("wxhub_relay_oauth_total", "step" => "issued").increment(1);
    Ok(json!({"url": url.to_string(), "state": state, "expires_in": ttl}))
}

fn page(status: StatusCode, text: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>wxhub</title><p>{}</p>\n",
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    );
    (status, Html(body)).into_response()
}

fn fail(step: &'static str, status: StatusCode, text: &str) -> Response {
    metrics::counter!("wxhub_relay_oauth_total", "step" => step).increment(1);
    page(status, text)
}

/// `GET /oauth/{tenant}/{appid}/callback?code=&state=`.
pub(crate) async fn callback(
    State(shared): State<Arc<Shared>>,
    Path((tenant, appid)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let q: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let state = q.get("state").map(String::as_str).unwrap_or_default();
    if !well_formed_state(state) || wxhub_runtime::TenantId::parse(&tenant).is_err() {
        return fail(
            "refused_state",
            StatusCode::BAD_REQUEST,
            "This sign-in link is not valid (unknown state).",
        );
    }
    let key = shared.store.keys(&tenant).oauth_state(state);
    let mut conn = shared.store.conn();
    let taken: Result<Option<String>, redis::RedisError> =
        redis::cmd("GETDEL").arg(&key).query_async(&mut conn).await;
    let issued: Issued = match taken {
        Err(_) => {
            return fail(
                "redis_unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable; try again.",
            );
        }
        Ok(None) => {
            return fail(
                "refused_state",
                StatusCode::BAD_REQUEST,
                "This sign-in link is not valid: its state is unknown, expired or already used.",
            );
        }
        Ok(Some(v)) => match serde_json::from_str(&v) {
            Ok(i) => i,
            Err(_) => {
                return fail(
                    "refused_state",
                    StatusCode::BAD_REQUEST,
                    "This sign-in link is not valid.",
                );
            }
        },
    };
    if issued.appid != appid {
        return fail(
            "refused_state",
            StatusCode::BAD_REQUEST,
            "This sign-in link was issued for another account.",
        );
    }
    let Some(code) = q.get("code").filter(|c| !c.is_empty() && c.len() <= 256) else {
        return fail(
            "user_refused",
            StatusCode::BAD_REQUEST,
            "Sign-in was not authorized.",
        );
    };
    let tenants = shared.tenants.current();
    let Some(t) = tenants.get(&tenant).cloned() else {
        return fail("refused_state", StatusCode::NOT_FOUND, "Unknown tenant.");
    };
    let Some(callback) = shared.config.relay.oauth_callbacks.get(&tenant).cloned() else {
        return fail(
            "no_callback",
            StatusCode::CONFLICT,
            "No business callback is configured for this tenant.",
        );
    };
    let user = match exchange(
        &shared,
        &tenant,
        t.app_id.as_str(),
        &appid,
        code,
        &issued.scope,
    )
    .await
    {
        Ok(u) => u,
        Err((status, text)) => return fail("exchange_failed", status, &text),
    };
    let mut delivery = json!({
        "tenant": tenant,
        "appid": appid,
        "openid": user.openid,
        "scope": issued.scope,
    });
    if let Some(u) = user.unionid {
        delivery["unionid"] = json!(u);
    }
    if let Some(info) = user.userinfo {
        delivery["userinfo"] = info;
    }
    if let Some(d) = &issued.data {
        delivery["data"] = json!(d);
    }
    let delivered = shared
        .upstream
        .http
        .post(&callback)
        .timeout(shared.config.relay.token_timeout())
        .json(&delivery)
        .send()
        .await;
    match delivered {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => {
            tracing::warn!(
                status = r.status().as_u16(),
                tenant,
                "the OAuth business callback refused the user"
            );
            return fail(
                "delivery_failed",
                StatusCode::BAD_GATEWAY,
                "Sign-in could not be completed (the business callback failed).",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e.without_url(), tenant, "the OAuth business callback is unreachable");
            return fail(
                "delivery_failed",
                StatusCode::BAD_GATEWAY,
                "Sign-in could not be completed (the business callback failed).",
            );
        }
    }
    metrics::counter!("wxhub_relay_oauth_total", "step" => "delivered").increment(1);
    match issued.return_to {
        Some(to) => (StatusCode::FOUND, [(header::LOCATION, to)]).into_response(),
        None => page(StatusCode::OK, "Signed in. You can close this page."),
    }
}

struct User {
    openid: String,
    unionid: Option<String>,
    userinfo: Option<Value>,
}

async fn get_json(shared: &Shared, url: url::Url) -> Result<Value, (StatusCode, String)> {
    let r = shared
        .upstream
        .http
        .get(url)
        .timeout(shared.upstream.timeout)
        .send()
        .await
        .map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                format!("WeChat did not answer: {}", e.without_url()),
            )
        })?;
    r.json::<Value>().await.map_err(|e| {
        (
            StatusCode::BAD_GATEWAY,
            format!("WeChat's answer is not JSON: {}", e.without_url()),
        )
    })
}

fn errcode(v: &Value) -> i64 {
    v.get("errcode").and_then(Value::as_i64).unwrap_or(0)
}

/// The code for the user: `/sns/oauth2/component/access_token` with the component's token (a
/// rejected one replaced once), then `/sns/userinfo` when the scope allows.
async fn exchange(
    shared: &Shared,
    tenant: &str,
    component: &str,
    appid: &str,
    code: &str,
    scope: &str,
) -> Result<User, (StatusCode, String)> {
    let tokens = shared.tokens.client();
    let unavailable = |s: tonic::Status| {
        let r = token_refusal(&s);
        (r.status, r.message)
    };
    let mut token = tokens
        .access_token(tenant, "", 0)
        .await
        .map_err(unavailable)?
        .access_token;
    let base = &shared.upstream.api_base;
    let mut answer = Value::Null;
    for attempt in 0..2 {
        let mut url = url::Url::parse(&format!("{base}/sns/oauth2/component/access_token"))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("appid", appid)
            .append_pair("code", code)
            .append_pair("grant_type", "authorization_code")
            .append_pair("component_appid", component)
            .append_pair("component_access_token", &token);
        answer = get_json(shared, url).await?;
        if attempt == 0 && TOKEN_REJECTED.contains(&errcode(&answer)) {
            token = tokens
                .invalidate(tenant, "", &token)
                .await
                .map_err(unavailable)?
                .access_token;
            continue;
        }
        break;
    }
    match errcode(&answer) {
        0 => {}
        code @ (40029 | 40163 | 41008) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("WeChat refused the sign-in code ({code}); sign in again."),
            ));
        }
        code => {
            return Err((
                StatusCode::BAD_GATEWAY,
                format!("WeChat refused the sign-in ({code})."),
            ));
        }
    }
    let openid = answer
        .get("openid")
        .and_then(Value::as_str)
        .ok_or((
            StatusCode::BAD_GATEWAY,
            "WeChat's answer has no openid".to_owned(),
        ))?
        .to_owned();
    let mut unionid = answer
        .get("unionid")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let granted = answer.get("scope").and_then(Value::as_str).unwrap_or(scope);
    let mut userinfo = None;
    if granted.contains("snsapi_userinfo") {
        let user_token = answer
            .get("access_token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut url = url::Url::parse(&format!("{base}/sns/userinfo"))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("access_token", user_token)
            .append_pair("openid", &openid)
            .append_pair("lang", "zh_CN");
        let info = get_json(shared, url).await?;
        if errcode(&info) != 0 {
            return Err((
                StatusCode::BAD_GATEWAY,
                format!("WeChat refused the user's profile ({}).", errcode(&info)),
            ));
        }
        if unionid.is_none() {
            unionid = info
                .get("unionid")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        userinfo = Some(info);
    }
    Ok(User {
        openid,
        unionid,
        userinfo,
    })
}
