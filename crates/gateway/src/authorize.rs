//! The authorization pages of a component tenant (授权发起页 and the redirect target).
//!
//! - `GET /wx/{tenant}/authorize[?auth_type=1|2|3][&biz_appid=...]` asks token-control
//!   (`CreateAuthorizationUrl`) for the authorization links and renders a page with the PC link
//!   (`componentloginpage`, scan with WeChat) and the mobile link (`bindcomponent`, open inside
//!   WeChat). token-control shares one pre-auth code between the views of a short window (see
//!   docs/token-control.md, "Pre-auth code reuse"), so views do not each cost a WeChat call.
//! - `GET /wx/{tenant}/authorized?wxhub_pac=...&auth_code=...&expires_in=...` exchanges the
//!   code through token-control (`ExchangeAuthCode`, passing `wxhub_pac` so the used pre-auth
//!   code is retired) and shows the authorized account, or a clear error page. A code already
//!   exchanged or refused by WeChat is answered by token-control without a WeChat call.
//!
//! Guarantee: the pages are public, yet they cannot be used to spend the platform's WeChat
//! quota faster than the configured rates:
//! - both pages share two rate limits ([`wxhub_store::Limiter`], in Redis, across replicas):
//!   per client address and per tenant (`gateway.authorize_limit_per_*`); past either the
//!   answer is a 429 page with `Retry-After`, before token-control is asked anything. With
//!   Redis unreachable the pages answer 503: they never run unmetered (and could not complete
//!   anyway: the shared pre-auth code, the code markers and the component token live there).
//! - the client address is the TCP peer, or the `X-Forwarded-For` hop a trusted proxy vouches
//!   for (`gateway.trusted_proxies`, see [`crate::forwarded`]).
//!
//! The redirect target is `/wx/{tenant}/authorized` under `gateway.public_base_url`; without
//! one, under the origin the page was requested on (WeChat requires the redirect to be on the
//! page's domain): `Host`, or `X-Forwarded-Host`/`-Proto` from a trusted proxy only. A forged
//! header can then at worst give the forger a link WeChat refuses (its domain is not the
//! platform's); the page is `no-store`, so no cache hands it to anyone else.
//!
//! token-control is reached at `token_control.endpoint` with `client.api_key`; every value put
//! in a page is HTML-escaped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use wxhub_runtime::{TenantId, TenantKind};
use wxhub_token_client::pb;

use crate::page_policy::Admission;
use crate::state::AppState;

/// Budget of one call to token-control from a page.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// The redirect's parameter naming the pre-auth code of the link (token-control adds it to the
/// redirect_uri; see `CreateAuthorizationUrl` in the proto).
const PRE_AUTH_MARKER_PARAM: &str = "wxhub_pac";

/// The peer address the HTTP server recorded (absent when the router is served by another
/// server: then every client counts as one address, `unknown`).
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

/// The page answering a refused [`Admission`], if it was refused.
fn refused(admission: Admission) -> Option<Response> {
    match admission {
        Admission::Allowed => None,
        Admission::Limited { retry_after, by } => Some(too_many(retry_after, by)),
        Admission::Unavailable => Some(error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "暂时无法完成 / Temporarily unavailable",
            "the service cannot check its request limits right now; retry in a minute",
        )),
    }
}

/// The 429 page.
fn too_many(retry_after: Duration, by: &str) -> Response {
    let secs = retry_after.as_millis().div_ceil(1000).max(1);
    let detail = if by == "address" {
        format!(
            "来自您网络地址的请求过多，请 {secs} 秒后再试。/ Too many requests from your address; try again in {secs} s."
        )
    } else {
        format!(
            "此平台的授权页面请求过多，请 {secs} 秒后再试。/ This platform's authorization pages are busy; try again in {secs} s."
        )
    };
    let mut r = error_page(
        StatusCode::TOO_MANY_REQUESTS,
        "请求过于频繁 / Too many requests",
        &detail,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
    r
}

/// The two pages.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/wx/{tenant}/authorize", get(authorize))
        .route("/wx/{tenant}/authorized", get(authorized))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<link rel=\"icon\" href=\"data:,\">\
<title>{}</title>\
<style>body{{font-family:system-ui,-apple-system,'PingFang SC',sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}}\
a.button{{display:inline-block;margin:.5rem 1rem .5rem 0;padding:.8rem 1.4rem;border-radius:6px;background:#07c160;color:#fff;text-decoration:none}}\
a.button.secondary{{background:#576b95}}dl{{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.3rem 1rem}}dt{{color:#666}}dd{{margin:0;overflow-wrap:anywhere}}\
.error{{border-left:4px solid #fa5151;padding:.5rem 1rem;background:#fff5f5}}</style></head>\
<body>{body}</body></html>\n",
        escape(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(html),
    )
        .into_response()
}

fn error_page(status: StatusCode, title: &str, detail: &str) -> Response {
    page(
        status,
        title,
        &format!(
            "<h1>{}</h1><p class=\"error\">{}</p>",
            escape(title),
            escape(detail)
        ),
    )
}

/// The page status for a token-control failure.
fn failure(what: &str, status: &tonic::Status) -> Response {
    use tonic::Code;
    let (http, title) = match status.code() {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "授权请求无效 / Invalid request"),
        Code::NotFound => (StatusCode::NOT_FOUND, "未找到 / Not found"),
        Code::FailedPrecondition => (
            StatusCode::CONFLICT,
            "无法完成授权 / Authorization cannot be completed",
        ),
        Code::ResourceExhausted => (
            StatusCode::TOO_MANY_REQUESTS,
            "微信接口调用受限 / WeChat limit reached",
        ),
        Code::Unauthenticated | Code::PermissionDenied => (
            StatusCode::BAD_GATEWAY,
            "服务配置错误 / Service misconfigured",
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "暂时无法完成 / Temporarily unavailable",
        ),
    };
    tracing::warn!(what, code = ?status.code(), message = status.message(), "authorization page failed");
    metrics::counter!("wxhub_gateway_authorize_pages_total", "page" => what.to_owned(), "result" => "error")
        .increment(1);
    error_page(http, title, status.message())
}

/// Checks the tenant of the URL: known and a component (else the error page to answer).
fn component(state: &AppState, tenant: &str) -> Option<Response> {
    let unknown = || {
        error_page(
            StatusCode::NOT_FOUND,
            "未找到 / Not found",
            "unknown third-party platform",
        )
    };
    if TenantId::parse(tenant).is_err() {
        return Some(unknown());
    }
    match state.tenants().current().get(tenant) {
        Some(t) if t.kind == TenantKind::Component => None,
        Some(_) => Some(error_page(
            StatusCode::NOT_FOUND,
            "未找到 / Not found",
            "this tenant is not a third-party platform",
        )),
        None => Some(unknown()),
    }
}

async fn authorize(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = component(&state, &tenant) {
        return r;
    }
    let auth_type = match query.get("auth_type").map(String::as_str) {
        None | Some("") => pb::AuthType::Unspecified,
        Some("1") => pb::AuthType::OfficialAccount,
        Some("2") => pb::AuthType::MiniProgram,
        Some("3") => pb::AuthType::Both,
        Some(_) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "授权请求无效 / Invalid request",
                "auth_type must be 1 (Official Accounts), 2 (Mini Programs) or 3 (both)",
            );
        }
    };
    let pages = state.pages();
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let Some(base) = pages.base(peer, &headers) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "授权请求无效 / Invalid request",
            "missing or invalid Host header",
        );
    };
    let redirect_uri = format!("{base}/wx/{tenant}/authorized");
    if let Some(r) = refused(pages.admit(&tenant, "authorize", peer, &headers).await) {
        return r;
    }
    let c = match state.token_client() {
        Ok(c) => c,
        Err(e) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "服务配置错误 / Service misconfigured",
                e,
            );
        }
    };
    let reply = c
        .grpc()
        .create_authorization_url(c.request(pb::CreateAuthorizationUrlRequest {
            tenant: tenant.clone(),
            redirect_uri,
            auth_type: auth_type as i32,
            biz_appid: query.get("biz_appid").cloned().unwrap_or_default(),
        }))
        .await
        .map(tonic::Response::into_inner);
    let urls = match reply {
        Ok(r) => r,
        Err(status) => return failure("authorize", &status),
    };
    metrics::counter!("wxhub_gateway_authorize_pages_total", "page" => "authorize", "result" => "ok")
        .increment(1);
    let body = format!(
        "<h1>授权公众号或小程序 / Authorize your account</h1>\
<p>请使用公众号或小程序的管理员微信完成授权。链接约 {} 分钟内有效，只能使用一次；\
若微信提示链接已失效，请刷新本页。<br>\
Authorize with the WeChat account of the Official Account's or Mini Program's administrator. \
The link is valid for about {} minutes and works once; if WeChat says it expired or was used, \
reload this page.</p>\
<p><a class=\"button\" id=\"pc\" href=\"{}\">电脑端扫码授权 / Authorize on a computer</a>\
<a class=\"button secondary\" id=\"mobile\" href=\"{}\">手机微信内授权 / Authorize in WeChat on a phone</a></p>",
        (urls.expires_at_ms - wxhub_runtime::unix_ms()).max(0) / 60_000,
        (urls.expires_at_ms - wxhub_runtime::unix_ms()).max(0) / 60_000,
        escape(&urls.pc_url),
        escape(&urls.mobile_url),
    );
    page(StatusCode::OK, "授权 / Authorize", &body)
}

async fn authorized(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = component(&state, &tenant) {
        return r;
    }
    let code = query
        .get("auth_code")
        .map(String::as_str)
        .unwrap_or_default();
    if code.is_empty() || code.len() > 512 {
        return error_page(
            StatusCode::BAD_REQUEST,
            "授权请求无效 / Invalid request",
            "missing auth_code: open this page through the authorization link",
        );
    }
    let peer = peer.map(|Extension(ConnectInfo(a))| a.ip());
    if let Some(r) = refused(
        state
            .pages()
            .admit(&tenant, "authorized", peer, &headers)
            .await,
    ) {
        return r;
    }
    let c = match state.token_client() {
        Ok(c) => c,
        Err(e) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "服务配置错误 / Service misconfigured",
                e,
            );
        }
    };
    let reply = c
        .grpc()
        .exchange_auth_code(
            c.request(pb::ExchangeAuthCodeRequest {
                tenant: tenant.clone(),
                auth_code: code.to_owned(),
                pre_auth_marker: query
                    .get(PRE_AUTH_MARKER_PARAM)
                    .cloned()
                    .unwrap_or_default(),
            }),
        )
        .await
        .map(tonic::Response::into_inner);
    let a = match reply {
        Ok(a) => a,
        Err(status) => return failure("authorized", &status),
    };
    metrics::counter!("wxhub_gateway_authorize_pages_total", "page" => "authorized", "result" => "ok")
        .increment(1);
    let name = if a.nick_name.is_empty() {
        a.appid.clone()
    } else {
        a.nick_name.clone()
    };
    let kind = if a.is_mini_program {
        "小程序 / Mini Program"
    } else {
        "公众号 / Official Account"
    };
    let func: Vec<String> = a.func_info.iter().map(u32::to_string).collect();
    let body = format!(
        "<h1>授权成功 / Authorized</h1><p id=\"account\">{}</p><dl>\
<dt>AppID</dt><dd id=\"appid\">{}</dd><dt>类型 / Kind</dt><dd>{}</dd>\
<dt>原始ID / Original ID</dt><dd>{}</dd><dt>主体 / Principal</dt><dd>{}</dd>\
<dt>权限集 / Permission sets</dt><dd>{}</dd></dl>",
        escape(&name),
        escape(&a.appid),
        kind,
        escape(&a.user_name),
        escape(&a.principal_name),
        escape(&func.join(", ")),
    );
    page(StatusCode::OK, "授权成功 / Authorized", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
