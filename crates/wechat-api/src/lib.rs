//! A typed client for the WeChat HTTP APIs wxhub calls: the component (third-party platform)
//! lifecycle of wechat-protocol.md §2, Official Account `stable_token` and `/cgi-bin/token`,
//! WeCom `gettoken`, and `ticket/getticket` (§7).
//!
//! Every call is bounded by a timeout (the configured `wechat.timeout_ms`, shortened with
//! [`WechatApi::with_timeout`] to fit a caller's deadline). Failures are one [`WechatError`]
//! with a [`ErrorClass`] that token-control and the worker share; [`WechatApi::post_with_token`]
//! is the building block for the send APIs.
//!
//! Tokens, secrets, tickets and refresh tokens are [`Secret`]s: they never appear in `Debug`
//! output, logs or error messages (transport errors are stripped of their URL, which carries
//! `access_token`).

mod config;
mod error;
pub mod menu;
pub mod paths;
mod types;

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::Instrument;
pub use wxhub_domain::Secret;

pub use config::WechatConfig;
pub use error::{ErrorClass, WechatError, classify};
pub use types::{
    AccessToken, AuthorizationInfo, AuthorizerInfo, AuthorizerList, JsapiTicket, ListedAuthorizer,
    PreAuthCode,
};

/// Which WeChat host an API lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// `api.weixin.qq.com` (`wechat.api_base`).
    Api,
    /// `qyapi.weixin.qq.com` (`wechat.qyapi_base`).
    Qyapi,
}

/// Largest response body accepted (the authorizer list at 500 entries is ~100 KiB).
const MAX_BODY: usize = 4 << 20;

/// The client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct WechatApi {
    http: reqwest::Client,
    api_base: String,
    qyapi_base: String,
    timeout: Duration,
}

impl std::fmt::Debug for WechatApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatApi")
            .field("api_base", &self.api_base)
            .field("qyapi_base", &self.qyapi_base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the WeChat HTTP client: {0}")]
pub struct BuildError(String);

impl WechatApi {
    /// A client for the hosts in `[wechat]`.
    pub fn new(config: &WechatConfig) -> Result<Self, BuildError> {
        // reqwest is built with `rustls-no-provider`: a process-wide provider must exist.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_millis(config.timeout_ms);
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("wxhub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError(e.without_url().to_string()))?;
        Ok(Self {
            http,
            api_base: config.api_base.trim_end_matches('/').to_owned(),
            qyapi_base: config.qyapi_base.trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    /// The same client with its per-request timeout shortened to at most `timeout` (never
    /// lengthened beyond the configured one).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let mut c = self.clone();
        c.timeout = self.timeout.min(timeout).max(Duration::from_millis(1));
        c
    }

    /// The same client with its timeout fitted to a deadline.
    pub fn until(&self, deadline: Instant) -> Self {
        self.with_timeout(deadline.saturating_duration_since(Instant::now()))
    }

    /// The per-request timeout in force.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    // ---- component (third-party platform) ----

    /// `api_component_token`: the component_access_token from appid, secret and the latest
    /// component_verify_ticket.
    pub async fn component_token(
        &self,
        component_appid: &str,
        component_secret: &Secret,
        ticket: &Secret,
    ) -> Result<AccessToken, WechatError> {
        let body = json!({
            "component_appid": component_appid,
            "component_appsecret": component_secret.expose(),
            "component_verify_ticket": ticket.expose(),
        });
        let v: Value = self
            .send(Host::Api, paths::COMPONENT_TOKEN, None, Some(&body), &[])
            .await?;
        AccessToken::from_json(paths::COMPONENT_TOKEN, &v, "component_access_token")
    }

    /// `api_create_preauthcode`.
    pub async fn create_preauthcode(
        &self,
        component_token: &Secret,
        component_appid: &str,
    ) -> Result<PreAuthCode, WechatError> {
        let body = json!({ "component_appid": component_appid });
        let v: Value = self
            .send(
                Host::Api,
                paths::CREATE_PREAUTHCODE,
                Some(("component_access_token", component_token)),
                Some(&body),
                &[],
            )
            .await?;
        PreAuthCode::from_json(&v)
    }

    /// `api_query_auth`: exchanges an authorization code.
    pub async fn query_auth(
        &self,
        component_token: &Secret,
        component_appid: &str,
        authorization_code: &str,
    ) -> Result<AuthorizationInfo, WechatError> {
        let body = json!({
            "component_appid": component_appid,
            "authorization_code": authorization_code,
        });
        let v: Value = self
            .send(
                Host::Api,
                paths::QUERY_AUTH,
                Some(("component_access_token", component_token)),
                Some(&body),
                &[],
            )
            .await?;
        AuthorizationInfo::from_json(&v)
    }

    /// `api_authorizer_token`: a new authorizer_access_token (and the refresh token to keep).
    pub async fn authorizer_token(
        &self,
        component_token: &Secret,
        component_appid: &str,
        authorizer_appid: &str,
        refresh_token: &Secret,
    ) -> Result<(AccessToken, Option<Secret>), WechatError> {
        let body = json!({
            "component_appid": component_appid,
            "authorizer_appid": authorizer_appid,
            "authorizer_refresh_token": refresh_token.expose(),
        });
        let v: Value = self
            .send(
                Host::Api,
                paths::AUTHORIZER_TOKEN,
                Some(("component_access_token", component_token)),
                Some(&body),
                &[],
            )
            .await?;
        let token = AccessToken::from_json(paths::AUTHORIZER_TOKEN, &v, "authorizer_access_token")?;
        let refresh = types::opt_secret(&v, "authorizer_refresh_token");
        Ok((token, refresh))
    }

    /// `api_get_authorizer_info`.
    pub async fn get_authorizer_info(
        &self,
        component_token: &Secret,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<AuthorizerInfo, WechatError> {
        let body = json!({
            "component_appid": component_appid,
            "authorizer_appid": authorizer_appid,
        });
        let v: Value = self
            .send(
                Host::Api,
                paths::GET_AUTHORIZER_INFO,
                Some(("component_access_token", component_token)),
                Some(&body),
                &[],
            )
            .await?;
        AuthorizerInfo::from_json(&v)
    }

    /// `api_get_authorizer_list`, one page (`count` is clamped to WeChat's 1..=500).
    pub async fn get_authorizer_list(
        &self,
        component_token: &Secret,
        component_appid: &str,
        offset: u64,
        count: u64,
    ) -> Result<AuthorizerList, WechatError> {
        let body = json!({
            "component_appid": component_appid,
            "offset": offset,
            "count": count.clamp(1, 500),
        });
        let v: Value = self
            .send(
                Host::Api,
                paths::GET_AUTHORIZER_LIST,
                Some(("component_access_token", component_token)),
                Some(&body),
                &[],
            )
            .await?;
        AuthorizerList::from_json(&v)
    }

    /// `api_start_push_ticket`: asks WeChat to (re)start pushing component_verify_ticket.
    pub async fn start_push_ticket(
        &self,
        component_appid: &str,
        component_secret: &Secret,
    ) -> Result<(), WechatError> {
        let body = json!({
            "component_appid": component_appid,
            "component_secret": component_secret.expose(),
        });
        let _: Value = self
            .send(Host::Api, paths::START_PUSH_TICKET, None, Some(&body), &[])
            .await?;
        Ok(())
    }

    // ---- Official Account, WeCom ----

    /// `POST /cgi-bin/stable_token`. Without `force_refresh` a second call within the token's
    /// validity returns the same token, so a duplicate refresh is harmless; never force on a
    /// timer (it invalidates the previous token).
    pub async fn stable_token(
        &self,
        appid: &str,
        secret: &Secret,
        force_refresh: bool,
    ) -> Result<AccessToken, WechatError> {
        let body = json!({
            "grant_type": "client_credential",
            "appid": appid,
            "secret": secret.expose(),
            "force_refresh": force_refresh,
        });
        let v: Value = self
            .send(Host::Api, paths::STABLE_TOKEN, None, Some(&body), &[])
            .await?;
        AccessToken::from_json(paths::STABLE_TOKEN, &v, "access_token")
    }

    /// `GET /cgi-bin/token?grant_type=client_credential` (invalidates the previous token after
    /// a 5-minute overlap; prefer [`WechatApi::stable_token`]).
    pub async fn oa_token(&self, appid: &str, secret: &Secret) -> Result<AccessToken, WechatError> {
        let v: Value = self
            .send::<Value>(
                Host::Api,
                paths::OA_TOKEN,
                Some(("secret", secret)),
                None::<&Value>,
                &[("grant_type", "client_credential"), ("appid", appid)],
            )
            .await?;
        AccessToken::from_json(paths::OA_TOKEN, &v, "access_token")
    }

    /// WeCom `GET /cgi-bin/gettoken?corpid=&corpsecret=` on `qyapi_base`.
    pub async fn wecom_token(
        &self,
        corpid: &str,
        corpsecret: &Secret,
    ) -> Result<AccessToken, WechatError> {
        let v: Value = self
            .send::<Value>(
                Host::Qyapi,
                paths::WECOM_TOKEN,
                Some(("corpsecret", corpsecret)),
                None::<&Value>,
                &[("corpid", corpid)],
            )
            .await?;
        AccessToken::from_json(paths::WECOM_TOKEN, &v, "access_token")
    }

    /// `GET /cgi-bin/ticket/getticket?type=jsapi` with an (authorizer or Official Account)
    /// access token.
    pub async fn jsapi_ticket(&self, access_token: &Secret) -> Result<JsapiTicket, WechatError> {
        let v: Value = self
            .send::<Value>(
                Host::Api,
                paths::GET_TICKET,
                Some(("access_token", access_token)),
                None::<&Value>,
                &[("type", "jsapi")],
            )
            .await?;
        JsapiTicket::from_json(&v)
    }

    // ---- generic ----

    /// `POST {host}{path}?access_token=TOKEN` with a JSON body; the building block of the send
    /// APIs. A non-zero `errcode` becomes [`WechatError::Api`]; a success is decoded into `R`.
    pub async fn post_with_token<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        host: Host,
        path: &'static str,
        access_token: &Secret,
        body: &B,
    ) -> Result<R, WechatError> {
        self.send(
            host,
            path,
            Some(("access_token", access_token)),
            Some(body),
            &[],
        )
        .await
    }

    async fn send<R: DeserializeOwned>(
        &self,
        host: Host,
        path: &'static str,
        secret_query: Option<(&str, &Secret)>,
        body: Option<&(impl Serialize + ?Sized)>,
        query: &[(&str, &str)],
    ) -> Result<R, WechatError> {
        let base = match host {
            Host::Api => &self.api_base,
            Host::Qyapi => &self.qyapi_base,
        };
        let url = format!("{base}{path}");
        let mut request = match body {
            Some(b) => self.http.post(&url).json(b),
            None => self.http.get(&url),
        };
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some((name, value)) = secret_query {
            request = request.query(&[(name, value.expose())]);
        }
        // A span per call, its context passed on in `traceparent` (WeChat ignores it; the
        // simulator and any proxy in between can correlate).
        let span = tracing::info_span!("wechat", api = path);
        for (name, value) in wxhub_domain::trace::inject(&span) {
            request = request.header(name, value);
        }
        let started = Instant::now();
        let result = self
            .exchange(path, request.timeout(self.timeout))
            .instrument(span)
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.class().as_str(),
        };
        metrics::counter!("wxhub_wechat_calls_total", "api" => path, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("wxhub_wechat_call_seconds", "api" => path)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::debug!(api = path, error = %e, "wechat call failed");
        }
        let value = result?;
        serde_json::from_value(value).map_err(|e| WechatError::Decode {
            api: path,
            detail: e.to_string(),
        })
    }

    async fn exchange(
        &self,
        api: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, WechatError> {
        let response = request.send().await.map_err(|e| transport(api, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(WechatError::Http {
                api,
                status: status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(WechatError::Decode {
                api,
                detail: "response body too large".into(),
            });
        }
        let bytes = response.bytes().await.map_err(|e| transport(api, e))?;
        if bytes.len() > MAX_BODY {
            return Err(WechatError::Decode {
                api,
                detail: "response body too large".into(),
            });
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| WechatError::Decode {
            api,
            detail: format!("not JSON: {e}"),
        })?;
        if let Some(code) = value.get("errcode").and_then(Value::as_i64)
            && code != 0
        {
            let message = value
                .get("errmsg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            return Err(WechatError::Api { api, code, message });
        }
        Ok(value)
    }
}

fn transport(api: &'static str, e: reqwest::Error) -> WechatError {
    let e = e.without_url();
    if e.is_timeout() {
        WechatError::Timeout { api }
    } else if e.is_connect() {
        WechatError::Connect {
            api,
            detail: source_chain(&e),
        }
    } else {
        WechatError::Transport {
            api,
            detail: source_chain(&e),
        }
    }
}

/// An error and its sources, `: `-joined, at most 300 characters (what a transport failure
/// says in errors and logs; a URL with a token must be stripped from `e` before).
pub fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out.chars().take(300).collect()
}
