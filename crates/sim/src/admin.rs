//! The admin API under `/sim/...` (JSON; bad input is HTTP 400 with a reason) and the views
//! it shares with [`crate::SimHandle`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::SimError;
use crate::endpoint::Endpoint;
use crate::faults::FaultSpec;
use crate::records::{CallFilter, MessageFilter};
use crate::release::ReleaseCheckConfig;
use crate::seed::{AccountKind, Seed};
use crate::sim::{PushRequest, Sim, lock};

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let status = match &self {
            SimError::NotFound(_) => StatusCode::NOT_FOUND,
            SimError::Bind(_) | SimError::Serve(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, axum::Json(json!({"error": self.to_string()}))).into_response()
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, SimError> {
    serde_json::from_slice(body).map_err(|e| SimError::BadRequest(format!("bad JSON body: {e}")))
}

fn query<T: DeserializeOwned>(raw: Option<String>) -> Result<T, SimError> {
    let pairs: HashMap<String, String> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let mut value = serde_json::Map::new();
    for (k, v) in pairs {
        // errcode filters are numbers; everything else stays a string.
        let v = match (k.as_str(), v.parse::<i64>()) {
            ("errcode", Ok(n)) => json!(n),
            _ => json!(v),
        };
        value.insert(k, v);
    }
    serde_json::from_value(serde_json::Value::Object(value))
        .map_err(|e| SimError::BadRequest(format!("bad query: {e}")))
}

type AdminResult = Result<Response, SimError>;

fn ok<T: Serialize>(v: T) -> AdminResult {
    Ok(axum::Json(v).into_response())
}

/// The clock as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClockView {
    /// Sim time, ms since the epoch.
    pub now_ms: i64,
    /// Sim time, s since the epoch.
    pub now_secs: i64,
    /// Offset from the wall clock, ms.
    pub offset_ms: u64,
}

/// A pushed ticket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TicketView {
    /// The ticket.
    pub ticket: String,
    /// Sim issue time, ms.
    pub issued_ms: i64,
}

/// A component's credentials, for assertions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ComponentView {
    /// component_appid.
    pub appid: String,
    /// The most recent ticket.
    pub latest_ticket: Option<String>,
    /// Tickets still kept (valid or not yet pruned), oldest first.
    pub tickets: Vec<TicketView>,
    /// Current component_access_token.
    pub access_token: Option<String>,
    /// The previous token (valid during the overlap).
    pub previous_access_token: Option<String>,
    /// Number of authorizers.
    pub authorizers: usize,
    /// Authorization-event URL.
    pub auth_event_url: Option<String>,
    /// Message URL template.
    pub message_url_template: Option<String>,
}

/// One authorization, for assertions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthorizerView {
    /// The component.
    pub component_appid: String,
    /// The authorizer.
    pub authorizer_appid: String,
    /// Current refresh token.
    pub refresh_token: String,
    /// Current authorizer_access_token.
    pub access_token: Option<String>,
    /// Previous token.
    pub previous_access_token: Option<String>,
    /// Permission sets.
    pub func_info: Vec<u32>,
    /// Whether a code was exchanged (the list shows the refresh token only then).
    pub exchanged: bool,
    /// Authorization time, sim seconds.
    pub auth_time: i64,
}

/// A user of an account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserView {
    /// OpenID.
    pub openid: String,
    /// Follows the account.
    pub subscribed: bool,
    /// End of the customer-service window, sim ms.
    pub window_until_ms: i64,
    /// Messages left in the window.
    pub window_left: u32,
    /// Last interaction, sim ms.
    pub last_interaction_ms: Option<i64>,
}

/// An account, for assertions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountView {
    /// appid.
    pub appid: String,
    /// gh_ id.
    pub user_name: String,
    /// Kind.
    pub kind: AccountKind,
    /// Current `/cgi-bin/token` token.
    pub access_token: Option<String>,
    /// Current stable token.
    pub stable_access_token: Option<String>,
    /// Users, sorted by openid.
    pub users: Vec<UserView>,
}

/// A WeCom agent's current token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentView {
    /// AgentID.
    pub agentid: u64,
    /// Current token.
    pub access_token: Option<String>,
}

impl Sim {
    pub(crate) fn clock_view(&self) -> ClockView {
        ClockView {
            now_ms: self.clock.now_ms(),
            now_secs: self.clock.now_secs(),
            offset_ms: u64::try_from(self.clock.offset().as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub(crate) fn component_view(&self, appid: &str) -> Option<ComponentView> {
        let state = lock(&self.state);
        let c = state.components.get(appid)?;
        Some(ComponentView {
            appid: c.appid.clone(),
            latest_ticket: c.tickets.back().map(|(t, _)| t.clone()),
            tickets: c
                .tickets
                .iter()
                .map(|(t, at)| TicketView {
                    ticket: t.clone(),
                    issued_ms: *at,
                })
                .collect(),
            access_token: c.token.current.clone(),
            previous_access_token: c.token.previous.clone(),
            authorizers: c.authorizations.len(),
            auth_event_url: c.auth_event_url.clone(),
            message_url_template: c.message_url_template.clone(),
        })
    }

    pub(crate) fn authorizer_view(&self, component: &str, appid: &str) -> Option<AuthorizerView> {
        let state = lock(&self.state);
        let a = state.components.get(component)?.authorizations.get(appid)?;
        Some(AuthorizerView {
            component_appid: component.to_owned(),
            authorizer_appid: appid.to_owned(),
            refresh_token: a.refresh_token.clone(),
            access_token: a.token.current.clone(),
            previous_access_token: a.token.previous.clone(),
            func_info: a.func_info.clone(),
            exchanged: a.exchanged,
            auth_time: a.auth_time_secs,
        })
    }

    pub(crate) fn account_view(&self, appid: &str) -> Option<AccountView> {
        let state = lock(&self.state);
        let a = state.accounts.get(appid)?;
        let mut users: Vec<UserView> = a
            .users
            .iter()
            .map(|(openid, u)| UserView {
                openid: openid.clone(),
                subscribed: u.subscribed,
                window_until_ms: u.window_until_ms,
                window_left: u.window_left,
                last_interaction_ms: u.last_interaction_ms,
            })
            .collect();
        users.sort_by(|a, b| a.openid.cmp(&b.openid));
        Some(AccountView {
            appid: a.appid.clone(),
            user_name: a.user_name.clone(),
            kind: a.kind,
            access_token: a.token.current.clone(),
            stable_access_token: a.stable_token.current.clone(),
            users,
        })
    }

    pub(crate) fn corp_view(&self, corpid: &str) -> Option<Vec<AgentView>> {
        let state = lock(&self.state);
        let corp = state.corps.get(corpid)?;
        Some(
            corp.agents
                .iter()
                .map(|(id, a)| AgentView {
                    agentid: *id,
                    access_token: a.token.current.clone(),
                })
                .collect(),
        )
    }

    pub(crate) fn seed(&self, seed: &Seed) -> Result<(), SimError> {
        let now = self.clock.now_ms();
        lock(&self.state).apply_seed(seed, now)
    }

    pub(crate) fn set_quota(&self, path: &str, limit: Option<u64>) -> Result<(), SimError> {
        if !path.starts_with('/') {
            return Err(SimError::BadRequest(
                "quota path must start with '/'".into(),
            ));
        }
        let endpoint =
            Endpoint::parse(path, "quota path", |_| true).map_err(SimError::BadRequest)?;
        let mut state = lock(&self.state);
        match limit {
            Some(l) => {
                state.quota_limits.insert(endpoint, l);
            }
            None => {
                state.quota_limits.remove(&endpoint);
            }
        }
        Ok(())
    }

    /// Sets (or with `None` removes) the lifetime of the tokens `path` issues, for one owner
    /// appid or (`appid = None`) for every owner without its own setting. Whole seconds,
    /// 1..=7200, because `expires_in` is in seconds.
    pub(crate) fn set_token_ttl(
        &self,
        path: &str,
        appid: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<(), SimError> {
        let endpoint = Endpoint::parse(path, "token lifetime path", Endpoint::issues_token)
            .map_err(SimError::BadRequest)?;
        if appid.is_some_and(str::is_empty) {
            return Err(SimError::BadRequest("appid must not be empty".into()));
        }
        let key = (endpoint, appid.map(str::to_owned));
        let mut state = lock(&self.state);
        match ttl {
            Some(ttl) => {
                if ttl.subsec_nanos() != 0 || !(1..=7200).contains(&ttl.as_secs()) {
                    return Err(SimError::BadRequest(
                        "a token lifetime is a whole number of seconds within 1..=7200".into(),
                    ));
                }
                let ms = i64::try_from(ttl.as_millis()).unwrap_or(7_200_000);
                state.token_ttls.insert(key, ms);
            }
            None => {
                state.token_ttls.remove(&key);
            }
        }
        Ok(())
    }

    /// Checks `token` exactly as the account APIs do: `Ok(expiry ms)`, or WeChat's errcode
    /// (41001 missing, 40001 unknown or replaced past the overlap, 42001 expired).
    pub(crate) fn check_token(&self, token: &str) -> Result<i64, i64> {
        let now = self.clock.now_ms();
        let state = lock(&self.state);
        state.check_token(Some(token), now).map_err(|e| e.code)?;
        Ok(state.tokens.get(token).map_or(0, |e| e.expires_ms))
    }

    /// Makes every access token issued to `appid` unknown (WeChat then answers 40001), as
    /// when WeChat invalidated it behind the holder's back. Returns how many there were.
    pub(crate) fn invalidate_tokens(&self, appid: &str) -> usize {
        let mut state = lock(&self.state);
        let before = state.tokens.len();
        state.tokens.retain(|_, e| e.owner.appid() != appid);
        before - state.tokens.len()
    }

    pub(crate) fn add_fault(&self, spec: FaultSpec) -> Result<u64, SimError> {
        let id = lock(&self.faults).add(spec)?;
        self.faults_armed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(id)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    #[serde(default)]
    secs: Option<u64>,
    #[serde(default)]
    ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComponentOnly {
    component_appid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Notice {
    component_appid: String,
    xml: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizeBody {
    component_appid: String,
    authorizer_appid: String,
    #[serde(default = "yes")]
    push: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    component_appid: String,
    authorizer_appid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlsBody {
    #[serde(default)]
    auth_event_url: Option<String>,
    #[serde(default)]
    message_url_template: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InteractBody {
    appid: String,
    openid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaBody {
    path: String,
    limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenTtlBody {
    path: String,
    #[serde(default)]
    appid: Option<String>,
    secs: Option<u64>,
}

type S = AxState<Arc<Sim>>;

pub(crate) fn router() -> Router<Arc<Sim>> {
    Router::new()
        .route(
            "/sim/health",
            get(|| async { axum::Json(json!({"ok": true})) }),
        )
        .route("/sim/seed", post(seed))
        .route("/sim/clock", get(clock))
        .route("/sim/clock/advance", post(advance))
        .route("/sim/calls", get(calls).delete(clear_calls))
        .route("/sim/messages", get(messages).delete(clear_messages))
        .route("/sim/pushes", get(pushes))
        .route(
            "/sim/faults",
            get(faults).post(add_fault).delete(clear_faults),
        )
        .route("/sim/faults/{id}", delete(remove_fault))
        .route("/sim/quotas", post(quotas))
        .route("/sim/token-ttl", post(token_ttl))
        .route("/sim/push/ticket", post(push_ticket))
        .route("/sim/push/message", post(push_message))
        .route("/sim/push/notice", post(push_notice))
        .route("/sim/authorize", post(authorize))
        .route("/sim/revoke", post(revoke))
        .route("/sim/interact", post(interact))
        .route("/sim/components/{appid}", get(component))
        .route("/sim/components/{appid}/urls", post(component_urls))
        .route(
            "/sim/components/{appid}/authorizers/{authorizer}",
            get(authorizer),
        )
        .route("/sim/accounts/{appid}", get(account))
        .route("/sim/corps/{corpid}", get(corp))
        .route("/sim/release-check", post(release_check))
        .fallback(|| async {
            SimError::NotFound("no such admin endpoint (see crates/sim/README.md)".into())
        })
}

async fn seed(AxState(sim): S, body: Bytes) -> AdminResult {
    let seed: Seed = parse(&body)?;
    sim.seed(&seed)?;
    ok(json!({"ok": true}))
}

async fn clock(AxState(sim): S) -> AdminResult {
    ok(sim.clock_view())
}

async fn advance(AxState(sim): S, body: Bytes) -> AdminResult {
    let a: Advance = parse(&body)?;
    let by = match (a.secs, a.ms) {
        (Some(s), None) => Duration::from_secs(s),
        (None, Some(ms)) => Duration::from_millis(ms),
        _ => {
            return Err(SimError::BadRequest(
                "give exactly one of secs or ms".into(),
            ));
        }
    };
    if by > Duration::from_secs(10 * 365 * 86_400) {
        return Err(SimError::BadRequest(
            "cannot advance more than 10 years".into(),
        ));
    }
    sim.clock.advance(by);
    ok(sim.clock_view())
}

async fn calls(AxState(sim): S, RawQuery(q): RawQuery) -> AdminResult {
    let filter: CallFilter = query(q)?;
    let dropped = lock(&sim.records).calls.dropped();
    ok(json!({"calls": sim.calls(&filter), "dropped": dropped}))
}

async fn clear_calls(AxState(sim): S) -> AdminResult {
    lock(&sim.records).calls.clear();
    ok(json!({"ok": true}))
}

async fn messages(AxState(sim): S, RawQuery(q): RawQuery) -> AdminResult {
    let filter: MessageFilter = query(q)?;
    ok(json!({"messages": sim.messages(&filter)}))
}

async fn clear_messages(AxState(sim): S) -> AdminResult {
    lock(&sim.records).messages.clear();
    ok(json!({"ok": true}))
}

async fn pushes(AxState(sim): S) -> AdminResult {
    let list: Vec<_> = lock(&sim.records).pushes.iter().cloned().collect();
    ok(json!({"pushes": list}))
}

async fn faults(AxState(sim): S) -> AdminResult {
    ok(json!({"faults": lock(&sim.faults).list()}))
}

async fn add_fault(AxState(sim): S, body: Bytes) -> AdminResult {
    let spec: FaultSpec = parse(&body)?;
    let id = sim.add_fault(spec)?;
    ok(json!({"id": id}))
}

async fn clear_faults(AxState(sim): S) -> AdminResult {
    lock(&sim.faults).clear();
    ok(json!({"ok": true}))
}

async fn remove_fault(AxState(sim): S, Path(id): Path<String>) -> AdminResult {
    let id: u64 = id
        .parse()
        .map_err(|_| SimError::BadRequest("fault id must be a number".into()))?;
    if lock(&sim.faults).remove(id) {
        ok(json!({"ok": true}))
    } else {
        Err(SimError::NotFound(format!("fault {id}")))
    }
}

async fn quotas(AxState(sim): S, body: Bytes) -> AdminResult {
    let q: QuotaBody = parse(&body)?;
    sim.set_quota(&q.path, q.limit)?;
    ok(json!({"ok": true}))
}

async fn token_ttl(AxState(sim): S, body: Bytes) -> AdminResult {
    let t: TokenTtlBody = parse(&body)?;
    sim.set_token_ttl(&t.path, t.appid.as_deref(), t.secs.map(Duration::from_secs))?;
    ok(json!({"ok": true}))
}

async fn push_ticket(AxState(sim): S, body: Bytes) -> AdminResult {
    let b: ComponentOnly = parse(&body)?;
    ok(sim.push_ticket(&b.component_appid).await?)
}

async fn push_message(AxState(sim): S, body: Bytes) -> AdminResult {
    let req: PushRequest = parse(&body)?;
    ok(sim.push_message(&req).await?)
}

async fn push_notice(AxState(sim): S, body: Bytes) -> AdminResult {
    let n: Notice = parse(&body)?;
    ok(sim.push_notice(&n.component_appid, &n.xml).await?)
}

async fn authorize(AxState(sim): S, body: Bytes) -> AdminResult {
    let b: AuthorizeBody = parse(&body)?;
    ok(sim
        .authorize(&b.component_appid, &b.authorizer_appid, b.push)
        .await?)
}

async fn revoke(AxState(sim): S, body: Bytes) -> AdminResult {
    let b: RevokeBody = parse(&body)?;
    let push = sim.revoke(&b.component_appid, &b.authorizer_appid).await?;
    ok(json!({"push": push}))
}

async fn interact(AxState(sim): S, body: Bytes) -> AdminResult {
    let b: InteractBody = parse(&body)?;
    sim.interact(&b.appid, &b.openid)?;
    ok(json!({"ok": true}))
}

async fn component(AxState(sim): S, Path(appid): Path<String>) -> AdminResult {
    ok(sim
        .component_view(&appid)
        .ok_or_else(|| SimError::NotFound(format!("component {appid}")))?)
}

async fn component_urls(AxState(sim): S, Path(appid): Path<String>, body: Bytes) -> AdminResult {
    let b: UrlsBody = parse(&body)?;
    sim.set_component_urls(&appid, b.auth_event_url, b.message_url_template)?;
    ok(sim.component_view(&appid))
}

async fn authorizer(
    AxState(sim): S,
    Path((component, appid)): Path<(String, String)>,
) -> AdminResult {
    ok(sim
        .authorizer_view(&component, &appid)
        .ok_or_else(|| SimError::NotFound(format!("{appid} is not authorized to {component}")))?)
}

async fn account(AxState(sim): S, Path(appid): Path<String>) -> AdminResult {
    ok(sim
        .account_view(&appid)
        .ok_or_else(|| SimError::NotFound(format!("account {appid}")))?)
}

async fn corp(AxState(sim): S, Path(corpid): Path<String>) -> AdminResult {
    let agents = sim
        .corp_view(&corpid)
        .ok_or_else(|| SimError::NotFound(format!("corp {corpid}")))?;
    ok(json!({"corpid": corpid, "agents": agents}))
}

async fn release_check(AxState(sim): S, body: Bytes) -> AdminResult {
    let cfg: ReleaseCheckConfig = parse(&body)?;
    ok(crate::release::run(&sim, &cfg).await?)
}
