//! The shared core behind the HTTP server, the admin API and [`crate::SimHandle`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SimError;
use crate::clock::VirtualClock;
use crate::endpoint::Endpoint;
use crate::faults::Faults;
use crate::push::{Envelope, MessageSpec, Outgoing, PushReport, Pusher, frame};
use crate::records::{CallFilter, CallRecord, MessageFilter, Ring, SentMessage};
use crate::seed::{AccountKind, DEFAULT_QUOTAS, SimConfig};
use crate::state::{Authorized, Interaction, State, Timing};

pub(crate) struct Records {
    pub calls: Ring<CallRecord>,
    pub messages: Ring<SentMessage>,
    pub pushes: Ring<PushReport>,
}

/// Where and what to push to an account's message URL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// Component whose message URL and keys are used (with `appid` = the authorizer).
    #[serde(default)]
    pub component_appid: Option<String>,
    /// The account the user writes to (an authorizer, or a directly configured account).
    #[serde(default)]
    pub appid: Option<String>,
    /// WeCom corp (with `agentid`).
    #[serde(default)]
    pub corpid: Option<String>,
    /// WeCom agent.
    #[serde(default)]
    pub agentid: Option<u64>,
    /// The user (`FromUserName`); default `o_sim_user`.
    #[serde(default)]
    pub openid: Option<String>,
    /// The message or event.
    pub message: MessageSpec,
    /// Post here instead of the configured URL (query parameters are still added).
    #[serde(default)]
    pub url: Option<String>,
}

impl PushRequest {
    /// A push from `openid` to an account authorized to `component`.
    pub fn to_authorizer(component: &str, appid: &str, openid: &str, message: MessageSpec) -> Self {
        Self {
            component_appid: Some(component.to_owned()),
            appid: Some(appid.to_owned()),
            corpid: None,
            agentid: None,
            openid: Some(openid.to_owned()),
            message,
            url: None,
        }
    }

    /// A push from `openid` to a directly configured account.
    pub fn to_account(appid: &str, openid: &str, message: MessageSpec) -> Self {
        Self {
            component_appid: None,
            ..Self::to_authorizer("", appid, openid, message)
        }
    }

    /// A push from WeCom user `userid` to `agentid` of `corpid`.
    pub fn to_wecom(corpid: &str, agentid: u64, userid: &str, message: MessageSpec) -> Self {
        Self {
            component_appid: None,
            appid: None,
            corpid: Some(corpid.to_owned()),
            agentid: Some(agentid),
            openid: Some(userid.to_owned()),
            message,
            url: None,
        }
    }
}

/// Result of [`crate::SimHandle::authorize`].
#[derive(Debug, Clone, Serialize)]
pub struct AuthorizeOutcome {
    /// The new authorization.
    #[serde(flatten)]
    pub authorized: Authorized,
    /// The report of the `authorized`/`updateauthorized` push, when one was made.
    pub push: Option<PushReport>,
}

pub(crate) struct Sim {
    pub clock: Arc<VirtualClock>,
    pub config: SimConfig,
    pub state: Mutex<State>,
    pub records: Mutex<Records>,
    pub faults: Mutex<Faults>,
    pub faults_armed: std::sync::atomic::AtomicBool,
    pub messages_seen: watch::Sender<u64>,
    pub pusher: Pusher,
    pub base_url: OnceLock<String>,
    pub call_seq: AtomicU64,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
}

fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Locks a mutex, recovering from poisoning (no invariant spans a panic here).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sim {
    pub(crate) fn new(
        mut config: SimConfig,
        clock: Arc<VirtualClock>,
    ) -> Result<Arc<Self>, SimError> {
        let seed = config.seed.take();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        let timing = Timing {
            token_ttl_ms: ms(config.token_ttl).max(1000),
            overlap_ms: ms(config.token_overlap),
            ticket_validity_ms: ms(config.ticket_validity),
            pre_auth_ttl_ms: ms(config.pre_auth_code_ttl),
            auth_code_ttl_ms: ms(config.auth_code_ttl),
            rotate_refresh_tokens: config.rotate_refresh_tokens,
            clear_quota_per_month: config.clear_quota_per_month,
            force_refresh_per_day: config.force_refresh_per_day,
            force_refresh_interval_ms: ms(config.force_refresh_interval),
            custom_per_message: config.custom_messages_per_interaction.max(1),
            send_minute_limit: config.send_minute_limit,
        };
        let mut state = State::new(timing, DEFAULT_QUOTAS.into_iter().collect());
        if let Some(seed) = &seed {
            state.apply_seed(seed, clock.now_ms())?;
        }
        let capacity = config.record_capacity;
        let (messages_seen, _) = watch::channel(0);
        Ok(Arc::new(Self {
            pusher: Pusher::new(config.push_timeout, config.push_attempts),
            faults: Mutex::new(Faults::new(config.fault_seed)),
            faults_armed: std::sync::atomic::AtomicBool::new(false),
            clock,
            config,
            state: Mutex::new(state),
            records: Mutex::new(Records {
                calls: Ring::new(capacity),
                messages: Ring::new(capacity),
                pushes: Ring::new(capacity.min(10_000)),
            }),
            messages_seen,
            base_url: OnceLock::new(),
            call_seq: AtomicU64::new(0),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }))
    }

    pub(crate) fn base_url(&self) -> String {
        self.base_url.get().cloned().unwrap_or_default()
    }

    // ----- records -------------------------------------------------------------------------

    pub(crate) fn record_call(&self, endpoint: Endpoint, appid: Option<&str>, errcode: i64) {
        let seq = self.call_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let record = CallRecord {
            seq,
            path: endpoint.path().to_owned(),
            appid: appid.map(str::to_owned),
            errcode,
            sim_time_ms: self.clock.now_ms(),
        };
        lock(&self.records).calls.push(record);
    }

    pub(crate) fn record_message(&self, message: SentMessage) {
        lock(&self.records).messages.push(message);
        self.messages_seen.send_modify(|n| *n += 1);
    }

    pub(crate) fn calls(&self, filter: &CallFilter) -> Vec<CallRecord> {
        lock(&self.records)
            .calls
            .iter()
            .filter(|r| filter.matches(r))
            .cloned()
            .collect()
    }

    pub(crate) fn messages(&self, filter: &MessageFilter) -> Vec<SentMessage> {
        lock(&self.records)
            .messages
            .iter()
            .filter(|m| filter.matches(m))
            .cloned()
            .collect()
    }

    pub(crate) fn message_count(&self, filter: &MessageFilter) -> usize {
        lock(&self.records)
            .messages
            .iter()
            .filter(|m| filter.matches(m))
            .count()
    }

    /// Waits (bounded) for an accepted message matching `pred`.
    pub(crate) async fn wait_message(
        &self,
        timeout: Duration,
        pred: impl Fn(&SentMessage) -> bool,
    ) -> Option<SentMessage> {
        let mut rx = self.messages_seen.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(m) = lock(&self.records).messages.iter().find(|m| pred(m)) {
                return Some(m.clone());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    fn log_push(&self, report: &PushReport) {
        lock(&self.records).pushes.push(report.clone());
    }

    // ----- pushes --------------------------------------------------------------------------

    async fn send(&self, what: String, out: &Outgoing) -> PushReport {
        let report = self
            .pusher
            .send(
                what,
                out,
                self.pusher.attempts,
                self.pusher.timeout,
                &self.clock,
            )
            .await;
        self.log_push(&report);
        report
    }

    /// Frames a component notice for the authorization-event URL.
    pub(crate) fn component_notice(
        &self,
        component: &str,
        plaintext: &str,
        url_override: Option<&str>,
    ) -> Result<Outgoing, SimError> {
        let state = lock(&self.state);
        let c = state
            .components
            .get(component)
            .ok_or_else(|| SimError::NotFound(format!("component {component}")))?;
        let url = url_override
            .map(str::to_owned)
            .or_else(|| c.auth_event_url.clone())
            .ok_or_else(|| {
                SimError::BadRequest(format!("component {component} has no auth_event_url"))
            })?;
        frame(
            &url,
            &c.crypt,
            &Envelope::Component {
                appid: component.to_owned(),
            },
            c.encryption,
            plaintext,
            VirtualClock::wall_ms() / 1000,
        )
        .map_err(SimError::BadRequest)
    }

    /// Creates a ticket and frames its push (the ticket is valid whether or not it arrives).
    pub(crate) fn ticket_push(
        &self,
        component: &str,
        url_override: Option<&str>,
    ) -> Result<Outgoing, SimError> {
        let now = self.clock.now_ms();
        let ticket = lock(&self.state)
            .new_ticket(component, now)
            .ok_or_else(|| SimError::NotFound(format!("component {component}")))?;
        let xml = format!(
            "<xml><AppId><![CDATA[{component}]]></AppId>\n<CreateTime>{}</CreateTime>\n<InfoType><![CDATA[component_verify_ticket]]></InfoType>\n<ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket>\n</xml>",
            now / 1000
        );
        self.component_notice(component, &xml, url_override)
    }

    pub(crate) async fn push_ticket(&self, component: &str) -> Result<PushReport, SimError> {
        let out = self.ticket_push(component, None)?;
        Ok(self.send("component_verify_ticket".into(), &out).await)
    }

    /// Pushes tickets in the background (schedule, api_start_push_ticket).
    pub(crate) fn spawn_ticket_push(self: &Arc<Self>, component: &str) {
        let has_url = lock(&self.state)
            .components
            .get(component)
            .is_some_and(|c| c.auth_event_url.is_some());
        if !has_url {
            // The ticket still exists at WeChat even when nobody can receive it.
            let now = self.clock.now_ms();
            lock(&self.state).new_ticket(component, now);
            return;
        }
        let sim = Arc::clone(self);
        let component = component.to_owned();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = sim.cancel.cancelled() => {}
                r = sim.push_ticket(&component) => {
                    if let Err(e) = r {
                        tracing::warn!(component = %component, error = %e, "ticket push not made");
                    }
                }
            }
        });
    }

    pub(crate) async fn push_notice(
        &self,
        component: &str,
        xml: &str,
    ) -> Result<PushReport, SimError> {
        let out = self.component_notice(component, xml, None)?;
        Ok(self.send("component_notice".into(), &out).await)
    }

    /// Frames a user message for an account's message URL, records the interaction.
    pub(crate) fn message_push(&self, req: &PushRequest) -> Result<Outgoing, SimError> {
        let now = self.clock.now_ms();
        let openid = req
            .openid
            .clone()
            .unwrap_or_else(|| "o_sim_user".to_owned());
        if openid.is_empty() {
            return Err(SimError::BadRequest("openid must not be empty".into()));
        }
        if let MessageSpec::Event { fields, .. } = &req.message
            && let Some(bad) = fields.keys().find(|k| !is_xml_name(k))
        {
            return Err(SimError::BadRequest(format!(
                "event field name {bad:?} is not an XML element name"
            )));
        }
        let mut state = lock(&self.state);
        let msg_id = state.next_msgid();
        let interaction = req.message.interaction();
        let (url, crypt, envelope, encryption, to, account) =
            match (&req.component_appid, &req.appid, &req.corpid) {
                (Some(component), Some(appid), None) => {
                    let c = state
                        .components
                        .get(component)
                        .ok_or_else(|| SimError::NotFound(format!("component {component}")))?;
                    if !c.authorizations.contains_key(appid) {
                        return Err(SimError::BadRequest(format!(
                            "{appid} is not authorized to {component}"
                        )));
                    }
                    let a = state
                        .accounts
                        .get(appid)
                        .ok_or_else(|| SimError::NotFound(format!("account {appid}")))?;
                    let url = match (&req.url, &c.message_url_template) {
                        (Some(url), _) => url.clone(),
                        (None, Some(t)) => t.replace("$APPID$", appid),
                        (None, None) => {
                            return Err(SimError::BadRequest(format!(
                                "component {component} has no message_url_template"
                            )));
                        }
                    };
                    (
                        url,
                        c.crypt.clone(),
                        Envelope::Account {
                            to_user_name: a.user_name.clone(),
                            openid: openid.clone(),
                        },
                        c.encryption,
                        a.user_name.clone(),
                        Some(appid.clone()),
                    )
                }
                (None, Some(appid), None) => {
                    let a = state
                        .accounts
                        .get(appid)
                        .ok_or_else(|| SimError::NotFound(format!("account {appid}")))?;
                    let cb = a.callback.as_ref().ok_or_else(|| {
                        SimError::BadRequest(format!("account {appid} has no callback configured"))
                    })?;
                    (
                        req.url.clone().unwrap_or_else(|| cb.url.clone()),
                        cb.crypt.clone(),
                        Envelope::Account {
                            to_user_name: a.user_name.clone(),
                            openid: openid.clone(),
                        },
                        cb.encryption,
                        a.user_name.clone(),
                        Some(appid.clone()),
                    )
                }
                (None, None, Some(corpid)) => {
                    let agentid = req.agentid.ok_or_else(|| {
                        SimError::BadRequest("agentid is required with corpid".into())
                    })?;
                    let corp = state
                        .corps
                        .get(corpid)
                        .ok_or_else(|| SimError::NotFound(format!("corp {corpid}")))?;
                    let agent = corp
                        .agents
                        .get(&agentid)
                        .ok_or_else(|| SimError::NotFound(format!("agent {agentid}")))?;
                    let crypt = agent.crypt.clone().ok_or_else(|| {
                        SimError::BadRequest(format!("agent {agentid} has no token/aes_key"))
                    })?;
                    let url = req
                        .url
                        .clone()
                        .or_else(|| agent.callback_url.clone())
                        .ok_or_else(|| {
                            SimError::BadRequest(format!("agent {agentid} has no callback_url"))
                        })?;
                    (
                        url,
                        crypt,
                        Envelope::WeCom {
                            corpid: corpid.clone(),
                            agentid,
                        },
                        crate::seed::Encryption::Safe,
                        corpid.clone(),
                        None,
                    )
                }
                _ => {
                    return Err(SimError::BadRequest(
                        "give component_appid + appid, appid alone, or corpid + agentid".into(),
                    ));
                }
            };
        let mut plaintext = req.message.to_xml(&to, &openid, now / 1000, msg_id);
        if let Envelope::WeCom { agentid, .. } = &envelope
            && !matches!(req.message, MessageSpec::Raw { .. })
            && let Some(head) = plaintext.strip_suffix("</xml>")
        {
            plaintext = format!("{head}<AgentID>{agentid}</AgentID></xml>");
        }
        if let Some(appid) = &account {
            state.interact(appid, &openid, interaction, now);
        }
        drop(state);
        frame(
            &url,
            &crypt,
            &envelope,
            encryption,
            &plaintext,
            VirtualClock::wall_ms() / 1000,
        )
        .map_err(SimError::BadRequest)
    }

    /// After a successful template or subscribe send (with `delivery_report_delay` set),
    /// pushes its delivery report to the account's message URL later, with its msgid.
    pub(crate) fn schedule_delivery_report(
        self: &Arc<Self>,
        component: Option<&str>,
        appid: &str,
        touser: &str,
        template_id: &str,
        msgid: u64,
        subscribe: bool,
    ) {
        let Some(delay) = self.config.delivery_report_delay else {
            return;
        };
        let failed = self
            .config
            .failed_delivery_openids
            .iter()
            .any(|o| o == touser);
        let message = if subscribe {
            let (code, status) = if failed {
                (10005, "fail")
            } else {
                (0, "success")
            };
            MessageSpec::Event {
                event: "subscribe_msg_sent_event".into(),
                event_key: None,
                fields: Default::default(),
                extra_xml: Some(format!(
                    "<SubscribeMsgSentEvent><List><TemplateId><![CDATA[{template_id}]]></TemplateId><MsgID><![CDATA[{msgid}]]></MsgID><ErrorCode>{code}</ErrorCode><ErrorStatus><![CDATA[{status}]]></ErrorStatus></List></SubscribeMsgSentEvent>"
                )),
            }
        } else {
            let status = if failed {
                "failed:user block"
            } else {
                "success"
            };
            MessageSpec::template_send_job_finish(msgid, status)
        };
        let req = match component {
            Some(c) => PushRequest::to_authorizer(c, appid, touser, message),
            None => PushRequest::to_account(appid, touser, message),
        };
        let sim = Arc::clone(self);
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(delay) => {
                    if let Err(e) = sim.push_message(&req).await {
                        tracing::debug!(error = %e, "delivery report not pushed");
                    }
                }
            }
        });
    }

    pub(crate) async fn push_message(&self, req: &PushRequest) -> Result<PushReport, SimError> {
        let out = self.message_push(req)?;
        let what = match &req.message {
            MessageSpec::Event { event, .. } => format!("event.{event}"),
            MessageSpec::Raw { .. } => "raw".into(),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.get("msgtype").and_then(|t| t.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "message".into()),
        };
        Ok(self.send(what, &out).await)
    }

    // ----- authorization -------------------------------------------------------------------

    pub(crate) fn authorization_notice(
        &self,
        component: &str,
        authorizer: &str,
        auth: &Authorized,
        pre_auth_code: &str,
    ) -> String {
        format!(
            "<xml><AppId><![CDATA[{component}]]></AppId>\n<CreateTime>{}</CreateTime>\n<InfoType><![CDATA[{}]]></InfoType>\n<AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid>\n<AuthorizationCode><![CDATA[{}]]></AuthorizationCode>\n<AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime>\n<PreAuthCode><![CDATA[{pre_auth_code}]]></PreAuthCode>\n</xml>",
            self.clock.now_secs(),
            auth.info_type,
            auth.auth_code,
            auth.expires_at,
        )
    }

    /// Authorizes and (when `push`) pushes the notice, waiting for the push to finish.
    pub(crate) async fn authorize(
        &self,
        component: &str,
        authorizer: &str,
        push: bool,
    ) -> Result<AuthorizeOutcome, SimError> {
        let now = self.clock.now_ms();
        let auth = lock(&self.state).authorize(component, authorizer, now)?;
        let mut report = None;
        if push {
            let xml = self.authorization_notice(component, authorizer, &auth, "");
            let has_url = lock(&self.state)
                .components
                .get(component)
                .is_some_and(|c| c.auth_event_url.is_some());
            if has_url {
                let out = self.component_notice(component, &xml, None)?;
                report = Some(self.send(auth.info_type.clone(), &out).await);
            }
        }
        Ok(AuthorizeOutcome {
            authorized: auth,
            push: report,
        })
    }

    /// Revokes and pushes `unauthorized` when the component has an auth-event URL.
    pub(crate) async fn revoke(
        &self,
        component: &str,
        authorizer: &str,
    ) -> Result<Option<PushReport>, SimError> {
        lock(&self.state).revoke(component, authorizer)?;
        let has_url = lock(&self.state)
            .components
            .get(component)
            .is_some_and(|c| c.auth_event_url.is_some());
        if !has_url {
            return Ok(None);
        }
        let xml = format!(
            "<xml><AppId><![CDATA[{component}]]></AppId>\n<CreateTime>{}</CreateTime>\n<InfoType><![CDATA[unauthorized]]></InfoType>\n<AuthorizerAppid><![CDATA[{authorizer}]]></AuthorizerAppid>\n</xml>",
            self.clock.now_secs()
        );
        let out = self.component_notice(component, &xml, None)?;
        Ok(Some(self.send("unauthorized".into(), &out).await))
    }

    /// Ensures `appid` exists as an account of `kind` (used for the release-check accounts).
    pub(crate) fn ensure_account(&self, appid: &str, user_name: &str, kind: AccountKind) {
        let mut state = lock(&self.state);
        if state.accounts.contains_key(appid) {
            return;
        }
        let seed = crate::seed::Seed {
            accounts: vec![crate::seed::AccountSeed {
                appid: appid.to_owned(),
                user_name: user_name.to_owned(),
                kind,
                nick_name: Some(format!("release check {user_name}")),
                ..Default::default()
            }],
            ..Default::default()
        };
        let now = self.clock.now_ms();
        if let Err(e) = state.apply_seed(&seed, now) {
            tracing::warn!(error = %e, "cannot create release-check account");
        }
    }

    /// Points a component at (new) callback URLs, keeping its tickets, tokens and authorizers.
    pub(crate) fn set_component_urls(
        &self,
        component: &str,
        auth_event_url: Option<String>,
        message_url_template: Option<String>,
    ) -> Result<(), SimError> {
        if let Some(url) = &auth_event_url {
            url::Url::parse(url)
                .map_err(|e| SimError::BadRequest(format!("auth_event_url: {e}")))?;
        }
        if let Some(t) = &message_url_template {
            if !t.contains("$APPID$") {
                return Err(SimError::BadRequest(
                    "message_url_template must contain $APPID$".into(),
                ));
            }
            url::Url::parse(&t.replace("$APPID$", "wx0"))
                .map_err(|e| SimError::BadRequest(format!("message_url_template: {e}")))?;
        }
        let mut state = lock(&self.state);
        let c = state
            .components
            .get_mut(component)
            .ok_or_else(|| SimError::NotFound(format!("component {component}")))?;
        if auth_event_url.is_some() {
            c.auth_event_url = auth_event_url;
        }
        if message_url_template.is_some() {
            c.message_url_template = message_url_template;
        }
        Ok(())
    }

    /// Records a user interaction directly (admin).
    pub(crate) fn interact(&self, appid: &str, openid: &str) -> Result<(), SimError> {
        let now = self.clock.now_ms();
        let mut state = lock(&self.state);
        if !state.accounts.contains_key(appid) {
            return Err(SimError::NotFound(format!("account {appid}")));
        }
        state.interact(appid, openid, Interaction::Message, now);
        Ok(())
    }
}
