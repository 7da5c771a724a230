//! The full-network release check (全网发布 接入检测, wechat-protocol.md §4) played against a
//! gateway: ticket push, then per test-account group the event step, the text step, the
//! QUERY_AUTH_CODE step and the mini-program step, each timed and judged.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wxhub_message::{Message, parse_message};

use crate::SimError;
use crate::push::{MessageSpec, PushReport};
use crate::seed::{AccountKind, Encryption};
use crate::sim::{PushRequest, Sim, lock};

/// The five test-account groups: (OA appid, OA username, MP appid, MP username).
pub const TEST_ACCOUNTS: [(&str, &str, &str, &str); 5] = [
    (
        "wx570bc396a51b8ff8",
        "gh_3c884a361561",
        "wxd101a85aa106f53e",
        "gh_8dad206e9538",
    ),
    (
        "wx9252c5e0bb1836fc",
        "gh_c0f28a78b318",
        "wxc39235c15087f6f3",
        "gh_905ae9d01059",
    ),
    (
        "wx8e1097c5bc82cde9",
        "gh_3f222ed8d140",
        "wx7720d01d4b2a4500",
        "gh_393666f1fdf4",
    ),
    (
        "wx14550af28c71a144",
        "gh_26128078e9ab",
        "wx05d483572dcd5d8b",
        "gh_39abb5d4e1b7",
    ),
    (
        "wxa35b9c23cfe664eb",
        "gh_2b3713f184a6",
        "wx5910277cae6fd970",
        "gh_7818dcb60240",
    ),
];

/// What to check and where.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseCheckConfig {
    /// The component under test (must be seeded).
    pub component_appid: String,
    /// Authorization-event URL; default: the component's `auth_event_url`.
    #[serde(default)]
    pub auth_event_url: Option<String>,
    /// Message URL template with `$APPID$`; default: the component's `message_url_template`.
    #[serde(default)]
    pub message_url_template: Option<String>,
    /// Test-account groups to run (1..=5); default all five.
    #[serde(default = "all_groups")]
    pub groups: Vec<u8>,
    /// WeChat's reply limit per push (default 5000 ms).
    #[serde(default = "default_reply_limit")]
    pub reply_limit_ms: u64,
    /// How long to wait for the `..._from_api` customer-service message (default 10000 ms).
    #[serde(default = "default_api_wait")]
    pub api_wait_ms: u64,
    /// Push an `authorized` notice for each test account first, as WeChat does (default on).
    #[serde(default = "yes")]
    pub push_authorized: bool,
    /// Event of the event step (default `LOCATION`, expecting `LOCATIONfrom_callback`).
    #[serde(default = "default_event")]
    pub event: String,
}

fn all_groups() -> Vec<u8> {
    vec![1, 2, 3, 4, 5]
}
fn default_reply_limit() -> u64 {
    5000
}
fn default_api_wait() -> u64 {
    10_000
}
fn yes() -> bool {
    true
}
fn default_event() -> String {
    "LOCATION".into()
}

impl ReleaseCheckConfig {
    /// Checks `component_appid` at the URLs configured on the seeded component.
    pub fn new(component_appid: &str) -> Self {
        Self {
            component_appid: component_appid.to_owned(),
            auth_event_url: None,
            message_url_template: None,
            groups: all_groups(),
            reply_limit_ms: default_reply_limit(),
            api_wait_ms: default_api_wait(),
            push_authorized: true,
            event: default_event(),
        }
    }

    /// Checks a wxhub gateway: `{gateway}/wx/{tenant}/component` and
    /// `{gateway}/wx/{tenant}/callback/$APPID$` (design.md §4).
    pub fn for_gateway(component_appid: &str, gateway: &str, tenant: &str) -> Self {
        let base = gateway.trim_end_matches('/');
        Self {
            auth_event_url: Some(format!("{base}/wx/{tenant}/component")),
            message_url_template: Some(format!("{base}/wx/{tenant}/callback/$APPID$")),
            ..Self::new(component_appid)
        }
    }
}

/// One judged step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepReport {
    /// Test-account group (absent for the ticket step).
    pub group: Option<u8>,
    /// `ticket`, `authorized`, `oa_event`, `oa_text`, `oa_query_auth_code`, `mp_query_auth_code`.
    pub step: String,
    /// The test account of the step.
    pub appid: Option<String>,
    /// Whether it passed.
    pub passed: bool,
    /// How long it took, ms (for async steps: until the customer-service message arrived).
    pub duration_ms: f64,
    /// Why it failed.
    pub reason: Option<String>,
}

impl fmt::Display for StepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let group = self
            .group
            .map(|g| format!("group {g} "))
            .unwrap_or_default();
        write!(
            f,
            "{verdict} {group}{} ({:.0} ms)",
            self.step, self.duration_ms
        )?;
        if let Some(appid) = &self.appid {
            write!(f, " [{appid}]")?;
        }
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        Ok(())
    }
}

/// The whole check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseCheckReport {
    /// The component checked.
    pub component_appid: String,
    /// True only if every step passed within the limits.
    pub passed: bool,
    /// Every step in order.
    pub steps: Vec<StepReport>,
}

impl ReleaseCheckReport {
    /// The first failed step, if any.
    pub fn first_failure(&self) -> Option<&StepReport> {
        self.steps.iter().find(|s| !s.passed)
    }
}

impl fmt::Display for ReleaseCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for step in &self.steps {
            writeln!(f, "{step}")?;
        }
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        write!(f, "release check of {}: {verdict}", self.component_appid)
    }
}

/// The test account and user of a step.
struct Target<'a> {
    appid: &'a str,
    user_name: &'a str,
    openid: &'a str,
}

struct Ctx<'a> {
    sim: &'a Sim,
    cfg: &'a ReleaseCheckConfig,
    auth_url: String,
    template: String,
    encryption: Encryption,
    limit: Duration,
}

fn step(
    group: Option<u8>,
    name: &str,
    appid: Option<&str>,
    started: Instant,
    reason: Option<String>,
) -> StepReport {
    StepReport {
        group,
        step: name.to_owned(),
        appid: appid.map(str::to_owned),
        passed: reason.is_none(),
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        reason,
    }
}

/// The reason a single-attempt push failed to be answered in time, if it did.
fn delivery_problem(report: &PushReport, limit: Duration) -> Option<String> {
    let Some(attempt) = report.attempts.first() else {
        return Some("nothing was sent".into());
    };
    if let Some(error) = &attempt.error {
        if error.starts_with("timeout") {
            return Some(format!("no reply within {} ms", limit.as_millis()));
        }
        return Some(format!("no reply: {error}"));
    }
    match attempt.status {
        Some(s) if (200..300).contains(&s) => None,
        Some(s) => Some(format!("HTTP status {s}")),
        None => Some("no HTTP answer".into()),
    }
}

impl Ctx<'_> {
    async fn once(&self, what: &str, out: &crate::push::Outgoing) -> PushReport {
        let report = self
            .sim
            .pusher
            .send(what.to_owned(), out, 1, self.limit, &self.sim.clock)
            .await;
        lock(&self.sim.records).pushes.push(report.clone());
        report
    }

    /// A component notice that must be answered `success`.
    async fn notice_step(
        &self,
        group: Option<u8>,
        name: &str,
        appid: Option<&str>,
        out: Result<crate::push::Outgoing, SimError>,
    ) -> StepReport {
        let started = Instant::now();
        let out = match out {
            Ok(o) => o,
            Err(e) => return step(group, name, appid, started, Some(e.to_string())),
        };
        let report = self.once(name, &out).await;
        let reason = delivery_problem(&report, self.limit).or_else(|| {
            let body = report
                .attempts
                .first()
                .and_then(|a| a.body.as_deref())
                .unwrap_or("");
            (body.trim() != "success")
                .then(|| format!("expected body `success`, got {:?}", truncate(body)))
        });
        step(group, name, appid, started, reason)
    }

    fn push_for(
        &self,
        appid: &str,
        openid: &str,
        message: MessageSpec,
    ) -> Result<crate::push::Outgoing, SimError> {
        let mut req = PushRequest::to_authorizer(&self.cfg.component_appid, appid, openid, message);
        req.url = Some(self.template.replace("$APPID$", appid));
        self.sim.message_push(&req)
    }

    /// A message whose passive reply must be a text with `expected` content.
    async fn passive_step(
        &self,
        group: u8,
        name: &str,
        to: &Target<'_>,
        message: MessageSpec,
        expected: &str,
    ) -> StepReport {
        let started = Instant::now();
        let out = match self.push_for(to.appid, to.openid, message) {
            Ok(o) => o,
            Err(e) => {
                return step(
                    Some(group),
                    name,
                    Some(to.appid),
                    started,
                    Some(e.to_string()),
                );
            }
        };
        let report = self.once(name, &out).await;
        let reason = delivery_problem(&report, self.limit)
            .or_else(|| self.check_text_reply(&report, to.user_name, to.openid, expected));
        step(Some(group), name, Some(to.appid), started, reason)
    }

    fn check_text_reply(
        &self,
        report: &PushReport,
        user_name: &str,
        openid: &str,
        expected: &str,
    ) -> Option<String> {
        let reply = report.reply.as_ref()?;
        match reply.kind.as_str() {
            "encrypted" => {}
            "plain" if self.encryption != Encryption::Safe => {}
            "empty" | "success" => {
                return Some(format!(
                    "expected a passive text reply `{expected}`, got {}",
                    reply.kind
                ));
            }
            other => {
                return Some(format!(
                    "reply is {other}: {}",
                    reply.error.clone().unwrap_or_default()
                ));
            }
        }
        let xml = reply.xml.as_deref().unwrap_or_default();
        match parse_message(xml) {
            Ok(Message::Text(t)) => {
                if t.content != expected {
                    Some(format!(
                        "reply Content is {:?}, expected {expected:?}",
                        truncate(&t.content)
                    ))
                } else if t.header.to_user_name != openid || t.header.from_user_name != user_name {
                    Some(format!(
                        "reply must swap To/From: got To={} From={}, expected To={openid} From={user_name}",
                        t.header.to_user_name, t.header.from_user_name
                    ))
                } else {
                    None
                }
            }
            Ok(other) => Some(format!(
                "reply is a {} message, expected text",
                other.header().msg_type
            )),
            Err(e) => Some(format!("reply XML does not parse: {e}")),
        }
    }

    /// The QUERY_AUTH_CODE step: empty reply in time, then the `_from_api` message.
    async fn async_step(&self, group: u8, name: &str, appid: &str, openid: &str) -> StepReport {
        let started = Instant::now();
        let now = self.sim.clock.now_ms();
        let code =
            match lock(&self.sim.state).issue_auth_code(&self.cfg.component_appid, appid, now) {
                Ok(c) => c,
                Err(e) => {
                    return step(Some(group), name, Some(appid), started, Some(e.to_string()));
                }
            };
        let out = match self.push_for(
            appid,
            openid,
            MessageSpec::text(format!("QUERY_AUTH_CODE:{code}")),
        ) {
            Ok(o) => o,
            Err(e) => return step(Some(group), name, Some(appid), started, Some(e.to_string())),
        };
        let report = self.once(name, &out).await;
        if let Some(reason) = delivery_problem(&report, self.limit) {
            return step(Some(group), name, Some(appid), started, Some(reason));
        }
        if let Some(reply) = &report.reply
            && !matches!(reply.kind.as_str(), "empty" | "success")
        {
            return step(
                Some(group),
                name,
                Some(appid),
                started,
                Some(format!(
                    "expected an empty or `success` reply, got {}",
                    reply.kind
                )),
            );
        }
        let expected = format!("{code}_from_api");
        let wait = Duration::from_millis(self.cfg.api_wait_ms);
        let found = self
            .sim
            .wait_message(wait, |m| {
                m.appid == appid
                    && m.component_appid.as_deref() == Some(self.cfg.component_appid.as_str())
                    && m.touser == openid
                    && m.msgtype.as_deref() == Some("text")
                    && m.content.as_deref() == Some(expected.as_str())
            })
            .await;
        let exchanged = lock(&self.sim.state)
            .components
            .get(&self.cfg.component_appid)
            .and_then(|c| c.auth_codes.get(&code))
            .is_some_and(|c| c.used);
        let reason = match (found, exchanged) {
            (Some(_), true) => None,
            (Some(_), false) => Some(
                "the message arrived but the code was never exchanged with api_query_auth".into(),
            ),
            (None, true) => Some(format!(
                "code exchanged, but no customer-service text `<code>_from_api` to {openid} within {} ms",
                wait.as_millis()
            )),
            (None, false) => Some(format!(
                "no api_query_auth with the code and no customer-service message within {} ms",
                wait.as_millis()
            )),
        };
        step(Some(group), name, Some(appid), started, reason)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Runs the check; fails early only on bad configuration.
pub(crate) async fn run(
    sim: &Sim,
    cfg: &ReleaseCheckConfig,
) -> Result<ReleaseCheckReport, SimError> {
    if cfg.groups.is_empty() || cfg.groups.iter().any(|g| !(1..=5).contains(g)) {
        return Err(SimError::BadRequest("groups must be within 1..=5".into()));
    }
    if cfg.reply_limit_ms == 0 || cfg.reply_limit_ms > 60_000 {
        return Err(SimError::BadRequest(
            "reply_limit_ms must be within 1..=60000".into(),
        ));
    }
    if cfg.api_wait_ms > 600_000 {
        return Err(SimError::BadRequest(
            "api_wait_ms must be at most 600000".into(),
        ));
    }
    let (auth_url, template, encryption) = {
        let state = lock(&sim.state);
        let c = state
            .components
            .get(&cfg.component_appid)
            .ok_or_else(|| SimError::NotFound(format!("component {}", cfg.component_appid)))?;
        let auth_url = cfg
            .auth_event_url
            .clone()
            .or_else(|| c.auth_event_url.clone())
            .ok_or_else(|| SimError::BadRequest("no auth_event_url given or configured".into()))?;
        let template = cfg
            .message_url_template
            .clone()
            .or_else(|| c.message_url_template.clone())
            .ok_or_else(|| {
                SimError::BadRequest("no message_url_template given or configured".into())
            })?;
        (auth_url, template, c.encryption)
    };
    if !template.contains("$APPID$") {
        return Err(SimError::BadRequest(
            "message_url_template must contain $APPID$".into(),
        ));
    }
    for url in [&auth_url, &template] {
        url::Url::parse(&url.replace("$APPID$", "wx0"))
            .map_err(|e| SimError::BadRequest(format!("bad URL {url}: {e}")))?;
    }
    let ctx = Ctx {
        sim,
        cfg,
        auth_url,
        template,
        encryption,
        limit: Duration::from_millis(cfg.reply_limit_ms),
    };
    let mut steps = Vec::new();

    let ticket = ctx
        .sim
        .ticket_push(&cfg.component_appid, Some(&ctx.auth_url));
    steps.push(ctx.notice_step(None, "ticket", None, ticket).await);

    for &group in &cfg.groups {
        let (oa, oa_user, mp, mp_user) = TEST_ACCOUNTS[usize::from(group - 1)];
        let openid = format!("o_release_check_user_{group}");
        for (appid, user_name, kind) in [
            (oa, oa_user, AccountKind::OfficialAccount),
            (mp, mp_user, AccountKind::MiniProgram),
        ] {
            sim.ensure_account(appid, user_name, kind);
            let started = Instant::now();
            let now = sim.clock.now_ms();
            let auth = lock(&sim.state).authorize(&cfg.component_appid, appid, now);
            match auth {
                Err(e) => steps.push(step(
                    Some(group),
                    "authorized",
                    Some(appid),
                    started,
                    Some(e.to_string()),
                )),
                Ok(auth) if cfg.push_authorized => {
                    let xml = sim.authorization_notice(&cfg.component_appid, appid, &auth, "");
                    let out = sim.component_notice(&cfg.component_appid, &xml, Some(&ctx.auth_url));
                    steps.push(
                        ctx.notice_step(Some(group), "authorized", Some(appid), out)
                            .await,
                    );
                }
                Ok(_) => {}
            }
        }
        let event = if cfg.event == "LOCATION" {
            MessageSpec::location_event(23.137466, 113.352425, 119.385040)
        } else {
            MessageSpec::event(cfg.event.clone())
        };
        let expected = format!("{}from_callback", cfg.event);
        let to = Target {
            appid: oa,
            user_name: oa_user,
            openid: &openid,
        };
        steps.push(
            ctx.passive_step(group, "oa_event", &to, event, &expected)
                .await,
        );
        steps.push(
            ctx.passive_step(
                group,
                "oa_text",
                &to,
                MessageSpec::text("TESTCOMPONENT_MSG_TYPE_TEXT"),
                "TESTCOMPONENT_MSG_TYPE_TEXT_callback",
            )
            .await,
        );
        steps.push(
            ctx.async_step(group, "oa_query_auth_code", oa, &openid)
                .await,
        );
        steps.push(
            ctx.async_step(group, "mp_query_auth_code", mp, &openid)
                .await,
        );
    }
    Ok(ReleaseCheckReport {
        component_appid: cfg.component_appid.clone(),
        passed: steps.iter().all(|s| s.passed),
        steps,
    })
}
