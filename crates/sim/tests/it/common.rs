use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use wxhub_sim::{
    AccountKind, AccountSeed, AuthorizationSeed, ComponentSeed, Encryption, Seed, SimConfig,
    SimHandle, UserSeed,
};

pub const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const TOKEN: &str = "simtoken";
pub const SECRET: &str = "component-secret";

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub fn component(appid: &str, auth_url: Option<String>, template: Option<String>) -> ComponentSeed {
    ComponentSeed {
        appid: appid.into(),
        secret: SECRET.into(),
        token: TOKEN.into(),
        aes_key: KEY.into(),
        auth_event_url: auth_url,
        message_url_template: template,
        encryption: Encryption::Safe,
        auto_ticket_push: true,
    }
}

pub fn user(openid: &str) -> UserSeed {
    UserSeed {
        openid: openid.into(),
        subscribed: true,
        last_interaction_ago_secs: Some(60),
        subscribe_allowance: Default::default(),
    }
}

pub fn account(appid: &str, gh: &str, kind: AccountKind, users: &[&str]) -> AccountSeed {
    AccountSeed {
        appid: appid.into(),
        user_name: gh.into(),
        kind,
        users: users.iter().map(|u| user(u)).collect(),
        ..Default::default()
    }
}

pub fn authorization(component: &str, appid: &str, refresh: &str) -> AuthorizationSeed {
    AuthorizationSeed {
        component_appid: component.into(),
        authorizer_appid: appid.into(),
        refresh_token: Some(refresh.into()),
        func_info: None,
    }
}

pub fn config(seed: Seed) -> SimConfig {
    SimConfig {
        auto_ticket_push: false,
        push_timeout: Duration::from_secs(2),
        seed: Some(seed),
        ..SimConfig::default()
    }
}

pub async fn start(seed: Seed) -> SimHandle {
    wxhub_sim::start(config(seed)).await.expect("sim starts")
}

/// A thin JSON client for the sim.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(sim: &SimHandle) -> Self {
        Self {
            http: client(),
            base: sim.base_url(),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
        Ok(resp.json().await?)
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
        Ok(resp.json().await?)
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await?;
        anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
        Ok(resp.json().await?)
    }

    /// Creates a ticket through api_start_push_ticket and returns it.
    pub async fn ticket(&self, sim: &SimHandle, component: &str) -> Result<String> {
        let r = self
            .post(
                "/cgi-bin/component/api_start_push_ticket",
                json!({"component_appid": component, "component_secret": SECRET}),
            )
            .await?;
        anyhow::ensure!(errcode(&r) == 0, "start push: {r}");
        for _ in 0..100 {
            if let Some(t) = sim.component(component).and_then(|c| c.latest_ticket) {
                return Ok(t);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("no ticket")
    }

    pub async fn component_token(&self, sim: &SimHandle, component: &str) -> Result<String> {
        let ticket = self.ticket(sim, component).await?;
        let r = self
            .post(
                "/cgi-bin/component/api_component_token",
                json!({"component_appid": component, "component_appsecret": SECRET, "component_verify_ticket": ticket}),
            )
            .await?;
        str_field(&r, "component_access_token")
    }

    /// An authorizer token through api_authorizer_token.
    pub async fn authorizer_token(
        &self,
        ctoken: &str,
        component: &str,
        appid: &str,
        refresh: &str,
    ) -> Result<String> {
        let r = self
            .post(
                &format!("/cgi-bin/component/api_authorizer_token?component_access_token={ctoken}"),
                json!({"component_appid": component, "authorizer_appid": appid, "authorizer_refresh_token": refresh}),
            )
            .await?;
        str_field(&r, "authorizer_access_token")
    }
}

pub fn errcode(v: &Value) -> i64 {
    v.get("errcode").and_then(Value::as_i64).unwrap_or(0)
}

pub fn str_field(v: &Value, name: &str) -> Result<String> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no {name} in {v}"))
}

/// One captured callback.
#[derive(Debug, Clone)]
pub struct Captured {
    pub path: String,
    pub query: String,
    pub body: String,
}

pub type Behaviour =
    Arc<dyn Fn(usize, &Captured) -> (StatusCode, Option<Duration>, String) + Send + Sync>;

#[derive(Clone)]
struct ReceiverState {
    seen: Arc<Mutex<Vec<Captured>>>,
    behaviour: Behaviour,
}

/// A callback receiver on port 0 whose answers are decided by `behaviour(n, request)`.
pub struct Receiver {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Captured>>>,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Self {
        async fn handle(
            State(st): State<ReceiverState>,
            uri: axum::http::Uri,
            RawQuery(q): RawQuery,
            body: Bytes,
        ) -> Response {
            let captured = Captured {
                path: uri.path().to_owned(),
                query: q.unwrap_or_default(),
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let n = {
                let mut seen = st.seen.lock().unwrap();
                seen.push(captured.clone());
                seen.len()
            };
            let (status, delay, reply) = (st.behaviour)(n, &captured);
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            (status, reply).into_response()
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .fallback(post(handle))
            .with_state(ReceiverState {
                seen: Arc::clone(&seen),
                behaviour,
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, seen }
    }

    pub fn success() -> Behaviour {
        Arc::new(|_, _| (StatusCode::OK, None, "success".into()))
    }

    pub fn captured(&self) -> Vec<Captured> {
        self.seen.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Captured> {
        for _ in 0..500 {
            let c = self.captured();
            if c.len() >= n {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.captured()
    }
}

pub fn query_map(q: &str) -> std::collections::HashMap<String, String> {
    url::form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .collect()
}
