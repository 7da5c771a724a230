//! wxhub-sim: a strict WeChat stand-in for tests, demos and benchmarks. It serves WeChat's
//! token, authorization and send APIs (with WeChat's error codes, token overlap, quotas and a
//! virtual clock), stand-ins for the component login pages, a callback pusher that signs,
//! encrypts and retries exactly like WeChat, and the full-network release check. It uses only
//! the crypto and message crates of wxhub and must never depend on any other wxhub crate: it
//! must not share client code with the system under test. (The HTTP load generator, a bench
//! tool, is the `wxhub-loadgen` crate; it builds its callbacks with [`MessageSpec`] and
//! [`message_body`].)
//!
//! Start it in-process with [`start`] (port 0 is fine) or run [`run`] with your own listener;
//! the binary `wxhub-sim` wraps the same code ([`cli`]).

#![warn(missing_docs)]
mod admin;
mod api;
pub mod cli;
mod clock;
mod codes;
mod endpoint;
mod faults;
mod login;
mod media;
mod menu;
mod push;
mod records;
mod release;
mod seed;
mod server;
mod sim;
mod state;
mod web_oauth;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use admin::{
    AccountView, AgentView, AuthorizerView, ClockView, ComponentView, TicketView, UserView,
};
pub use clock::VirtualClock;
pub use codes::errmsg;
pub use endpoint::Endpoint;
pub use faults::{Fault, FaultSpec};
pub use push::{Attempt, MessageSpec, PushReport, ReplyReport, message_body};
pub use records::{CallFilter, CallRecord, MessageFilter, SentMessage};
pub use release::{ReleaseCheckConfig, ReleaseCheckReport, StepReport, TEST_ACCOUNTS};
pub use seed::{
    AccountKind, AccountSeed, AgentSeed, AuthorizationSeed, CallbackSeed, ComponentSeed, CorpSeed,
    Encryption, Secret, Seed, SimConfig, UserSeed, default_quotas,
};
pub use sim::{AuthorizeOutcome, PushRequest};
pub use state::Authorized;

use crate::sim::{Sim, lock};

/// Everything that can go wrong in the sim's own API (never a WeChat `errcode`, which is an
/// answer, not an error).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address could not be bound.
    #[error("cannot bind the listener: {0}")]
    Bind(#[source] std::io::Error),
    /// The server failed while running.
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The seed is invalid (the reason names the field).
    #[error("bad seed: {0}")]
    Seed(String),
    /// An admin request or library call had bad input.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The named component, account, corp or fault does not exist.
    #[error("not found: {0}")]
    NotFound(String),
}

/// Serves a sim on `listener` until `shutdown` resolves (the binary's entry point; [`start`]
/// uses the same code path).
pub async fn run(
    config: SimConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let sim = Sim::new(config, Arc::new(VirtualClock::new()))?;
    server::serve(sim, listener, shutdown).await
}

/// Binds `config.listen` and serves a sim in a background task.
pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(SimError::Bind)?;
    let addr = listener.local_addr().map_err(SimError::Bind)?;
    let sim = Sim::new(config, Arc::new(VirtualClock::new()))?;
    let _ = sim.base_url.set(format!("http://{addr}"));
    let cancel = sim.cancel.clone();
    let task = tokio::spawn(server::serve(
        Arc::clone(&sim),
        listener,
        cancel.cancelled_owned(),
    ));
    Ok(SimHandle {
        sim,
        task: Some(task),
    })
}

/// A running in-process sim. Its methods mirror the `/sim/...` admin API.
pub struct SimHandle {
    sim: Arc<Sim>,
    task: Option<JoinHandle<Result<(), SimError>>>,
}

impl SimHandle {
    /// Stores temporary media for `owner` (an appid, or a WeCom corpid) as if it had been
    /// uploaded, and returns its media_id (tests of large downloads).
    pub fn put_media(&self, owner: &str, kind: &str, filename: &str, bytes: Vec<u8>) -> String {
        media::put(&self.sim, owner, kind, filename, bytes.into())
    }

    /// The current default menu (buttons) of an appid, or of `corpid:agentid`.
    pub fn menu(&self, owner: &str) -> Option<serde_json::Value> {
        lock(&self.sim.state)
            .menus
            .get(owner)
            .and_then(|m| m.default.as_ref().map(|(_, b)| b.clone()))
    }

    /// `http://127.0.0.1:PORT`: the api.weixin.qq.com, qyapi.weixin.qq.com and
    /// mp.weixin.qq.com stand-ins and the admin API all live here.
    pub fn base_url(&self) -> String {
        self.sim.base_url()
    }

    /// The sim's virtual clock.
    pub fn clock(&self) -> Arc<VirtualClock> {
        Arc::clone(&self.sim.clock)
    }

    /// Moves sim time forward (tokens, codes, quotas, windows expire; ticket pushes fire).
    pub fn advance(&self, by: Duration) {
        self.sim.clock.advance(by);
    }

    /// Adds or replaces tenants, accounts, authorizations and users.
    pub fn seed(&self, seed: &Seed) -> Result<(), SimError> {
        self.sim.seed(seed)
    }

    /// Points a seeded component at callback URLs (e.g. a gateway started after the sim),
    /// keeping its tickets, tokens and authorizers; `None` leaves a URL unchanged.
    pub fn set_component_urls(
        &self,
        component_appid: &str,
        auth_event_url: Option<String>,
        message_url_template: Option<String>,
    ) -> Result<(), SimError> {
        self.sim
            .set_component_urls(component_appid, auth_event_url, message_url_template)
    }

    /// Sets (or with `None` removes) the daily quota of an API path, per appid.
    pub fn set_quota(&self, path: &str, limit: Option<u64>) -> Result<(), SimError> {
        self.sim.set_quota(path, limit)
    }

    /// Sets (or with `None` removes) the lifetime (`expires_in`) of the tokens or tickets the
    /// API `path` issues: for the owner `appid` (component, authorizer, account or corp), or
    /// with `appid = None` for every owner without a setting of its own. Whole seconds within
    /// 1..=7200; tokens already issued keep theirs.
    pub fn set_token_ttl(
        &self,
        path: &str,
        appid: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<(), SimError> {
        self.sim.set_token_ttl(path, appid, ttl)
    }

    /// Checks an access token (or JS-SDK ticket holder's token) as WeChat's APIs would:
    /// `Ok(expiry in sim ms)`, or the errcode (41001, 40001 unknown or replaced past the
    /// overlap, 42001 expired).
    pub fn check_token(&self, token: &str) -> Result<i64, i64> {
        self.sim.check_token(token)
    }

    /// Makes every access token issued to `appid` unknown: its next use gets 40001, as when
    /// WeChat invalidated it behind the holder's back. Returns how many there were.
    pub fn invalidate_tokens(&self, appid: &str) -> usize {
        self.sim.invalidate_tokens(appid)
    }

    /// The API calls recorded so far, oldest first.
    pub fn calls(&self, filter: &CallFilter) -> Vec<CallRecord> {
        self.sim.calls(filter)
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        lock(&self.sim.records).calls.clear();
    }

    /// The messages accepted by the send APIs, oldest first.
    pub fn messages(&self, filter: &MessageFilter) -> Vec<SentMessage> {
        self.sim.messages(filter)
    }

    /// How many accepted messages match `filter`, without copying them (what a benchmark
    /// polls).
    pub fn message_count(&self, filter: &MessageFilter) -> usize {
        self.sim.message_count(filter)
    }

    /// Forgets the accepted messages.
    pub fn clear_messages(&self) {
        lock(&self.sim.records).messages.clear();
    }

    /// Waits up to `timeout` for an accepted message matching `filter`.
    pub async fn wait_for_message(
        &self,
        filter: &MessageFilter,
        timeout: Duration,
    ) -> Option<SentMessage> {
        self.sim.wait_message(timeout, |m| filter.matches(m)).await
    }

    /// Reports of pushes made in the background (ticket schedule, login page, admin).
    pub fn pushes(&self) -> Vec<PushReport> {
        lock(&self.sim.records).pushes.iter().cloned().collect()
    }

    /// Installs a fault; returns its id.
    pub fn add_fault(&self, spec: FaultSpec) -> Result<u64, SimError> {
        self.sim.add_fault(spec)
    }

    /// Removes one fault; false when no fault has that id.
    pub fn remove_fault(&self, id: u64) -> bool {
        lock(&self.sim.faults).remove(id)
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        lock(&self.sim.faults).clear();
    }

    /// The installed faults with their hit counts.
    pub fn faults(&self) -> Vec<Fault> {
        lock(&self.sim.faults).list()
    }

    /// Creates a new component_verify_ticket and pushes it now (waiting for the result).
    pub async fn push_ticket(&self, component_appid: &str) -> Result<PushReport, SimError> {
        self.sim.push_ticket(component_appid).await
    }

    /// Pushes a message or event from a user to an account.
    pub async fn push_message(&self, request: &PushRequest) -> Result<PushReport, SimError> {
        self.sim.push_message(request).await
    }

    /// Pushes a raw component notice (plaintext XML) to the authorization-event URL.
    pub async fn push_notice(
        &self,
        component_appid: &str,
        xml: &str,
    ) -> Result<PushReport, SimError> {
        self.sim.push_notice(component_appid, xml).await
    }

    /// Authorizes an account to a component without the browser flow; with `push`, the
    /// `authorized`/`updateauthorized` notice is pushed and its report returned.
    pub async fn authorize(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
        push: bool,
    ) -> Result<AuthorizeOutcome, SimError> {
        self.sim
            .authorize(component_appid, authorizer_appid, push)
            .await
    }

    /// Revokes an authorization and pushes `unauthorized`.
    pub async fn revoke(
        &self,
        component_appid: &str,
        authorizer_appid: &str,
    ) -> Result<Option<PushReport>, SimError> {
        self.sim.revoke(component_appid, authorizer_appid).await
    }

    /// Records that `openid` messaged `appid` now (opens the 48 h customer-service window).
    pub fn interact(&self, appid: &str, openid: &str) -> Result<(), SimError> {
        self.sim.interact(appid, openid)
    }

    /// Plays the full-network release check.
    pub async fn release_check(
        &self,
        config: &ReleaseCheckConfig,
    ) -> Result<ReleaseCheckReport, SimError> {
        release::run(&self.sim, config).await
    }

    /// A component's tickets and tokens.
    pub fn component(&self, appid: &str) -> Option<ComponentView> {
        self.sim.component_view(appid)
    }

    /// An authorization's refresh and access tokens.
    pub fn authorizer(&self, component_appid: &str, appid: &str) -> Option<AuthorizerView> {
        self.sim.authorizer_view(component_appid, appid)
    }

    /// An account's tokens and users.
    pub fn account(&self, appid: &str) -> Option<AccountView> {
        self.sim.account_view(appid)
    }

    /// A WeCom corp's agent tokens.
    pub fn corp(&self, corpid: &str) -> Option<Vec<AgentView>> {
        self.sim.corp_view(corpid)
    }

    /// Stops serving (in-flight requests get up to 5 s) and waits for the server task.
    pub async fn shutdown(mut self) {
        self.sim.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.sim.cancel.cancel();
    }
}
