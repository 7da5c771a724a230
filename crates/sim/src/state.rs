//! The sim's in-memory world: tenants, accounts, users, tokens, codes and quotas.
//!
//! Every lookup on a hot path (token validation, api_authorizer_token) is a hash lookup; the
//! only scans are the paged authorizer list and admin views.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::Serialize;
use wxhub_crypto::{Crypt, random_nonce};

use crate::SimError;
use crate::codes::ApiError;
use crate::endpoint::Endpoint;
use crate::seed::{
    AccountKind, AccountSeed, AuthorizationSeed, ComponentSeed, CorpSeed, Encryption, Seed,
};

/// Durations the state needs, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub token_ttl_ms: i64,
    pub overlap_ms: i64,
    pub ticket_validity_ms: i64,
    pub pre_auth_ttl_ms: i64,
    pub auth_code_ttl_ms: i64,
    pub rotate_refresh_tokens: bool,
    pub clear_quota_per_month: u32,
    /// stable_token `force_refresh` uses allowed per appid and CST day (WeChat: 20).
    pub force_refresh_per_day: u32,
    /// Least time between two `force_refresh` uses of one appid (WeChat: 30 s).
    pub force_refresh_interval_ms: i64,
    /// Customer-service messages one user message allows within 48 h (5 or 20).
    pub custom_per_message: u32,
    /// Send calls per (account, API) per sim minute before 45011.
    pub send_minute_limit: Option<u32>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    Component(String),
    Authorizer { component: String, appid: String },
    Account(String),
    Corp { corpid: String, agentid: u64 },
}

impl Owner {
    /// The appid whose API quota and records this token acts for.
    pub(crate) fn appid(&self) -> &str {
        match self {
            Owner::Component(a) | Owner::Account(a) | Owner::Authorizer { appid: a, .. } => a,
            Owner::Corp { corpid, .. } => corpid,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TokenEntry {
    pub owner: Owner,
    pub expires_ms: i64,
    /// Set when a newer token replaced this one: valid until then (the overlap).
    pub superseded_until: Option<i64>,
}

/// The current and previous token of one credential.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenSlot {
    pub current: Option<String>,
    pub previous: Option<String>,
}

impl TokenSlot {
    fn drain(&mut self) -> impl Iterator<Item = String> {
        self.current.take().into_iter().chain(self.previous.take())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PreAuthCode {
    pub expires_ms: i64,
    pub used: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct AuthCode {
    pub authorizer: String,
    pub expires_ms: i64,
    pub used: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Authorization {
    pub refresh_token: String,
    /// A rotated-out refresh token and the end of its grace period.
    pub previous_refresh: Option<(String, i64)>,
    pub auth_time_secs: i64,
    pub func_info: Vec<u32>,
    /// False until a code of this authorization was exchanged (the list then omits the
    /// refresh token, as WeChat does for "authorized but never exchanged").
    pub exchanged: bool,
    pub token: TokenSlot,
    pub order: u64,
}

pub(crate) struct Component {
    pub appid: String,
    pub secret: String,
    pub crypt: Crypt,
    pub auth_event_url: Option<String>,
    pub message_url_template: Option<String>,
    pub encryption: Encryption,
    pub auto_ticket_push: bool,
    /// Pushed tickets with their issue time, oldest first.
    pub tickets: VecDeque<(String, i64)>,
    pub token: TokenSlot,
    pub pre_auth_codes: HashMap<String, PreAuthCode>,
    pub auth_codes: HashMap<String, AuthCode>,
    pub authorizations: HashMap<String, Authorization>,
    pub order: BTreeMap<u64, String>,
    pub next_order: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct User {
    pub subscribed: bool,
    /// End of the current customer-service window and messages left in it.
    pub window_until_ms: i64,
    pub window_left: u32,
    pub last_interaction_ms: Option<i64>,
    pub allowances: HashMap<String, u32>,
}

impl User {
    fn new() -> Self {
        Self {
            subscribed: true,
            window_until_ms: 0,
            window_left: 0,
            last_interaction_ms: None,
            allowances: HashMap::new(),
        }
    }
}

pub(crate) struct DirectCallback {
    pub url: String,
    pub crypt: Crypt,
    pub encryption: Encryption,
}

pub(crate) struct Account {
    pub appid: String,
    pub user_name: String,
    pub kind: AccountKind,
    pub nick_name: String,
    pub secret: Option<String>,
    pub callback: Option<DirectCallback>,
    pub func_info: Vec<u32>,
    pub templates: HashSet<String>,
    pub subscribe_templates: HashSet<String>,
    pub users: HashMap<String, User>,
    pub service_type: i64,
    pub verify_type: i64,
    pub principal_name: String,
    pub token: TokenSlot,
    pub stable_token: TokenSlot,
    /// JS-SDK tickets by type with their expiry.
    pub tickets: HashMap<String, (String, i64)>,
    /// template/send anti-reentry: (openid, client_msg_id) → (msgid, sim ms).
    pub client_msg_ids: HashMap<(String, String), (u64, i64)>,
}

pub(crate) struct Agent {
    pub secret: String,
    pub crypt: Option<Crypt>,
    pub callback_url: Option<String>,
    pub token: TokenSlot,
}

pub(crate) struct Corp {
    pub corpid: String,
    pub agents: BTreeMap<u64, Agent>,
}

/// Kinds of user interaction that open a customer-service window (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interaction {
    /// The user sent a message: 5 messages within 48 h.
    Message,
    /// Menu click, scan, subscribe: 3 messages within 1 minute.
    Event,
    /// Mini program: the user entered a customer-service session: 2 within 1 minute.
    EnterSession,
    /// The user unfollowed: the window closes.
    Unsubscribe,
    /// Nothing that opens a window.
    None,
}

/// Outcome of an authorization (login page, admin action or release check).
#[derive(Debug, Clone, Serialize)]
pub struct Authorized {
    /// `authorized` or `updateauthorized`.
    pub info_type: String,
    /// The authorization code (`auth_code` of the redirect).
    pub auth_code: String,
    /// Its lifetime in seconds.
    pub expires_in: i64,
    /// Absolute sim expiry, seconds (`AuthorizationCodeExpiredTime`).
    pub expires_at: i64,
    /// The new refresh token.
    pub refresh_token: String,
}

pub(crate) struct State {
    pub timing: Timing,
    pub components: HashMap<String, Component>,
    pub accounts: HashMap<String, Account>,
    pub corps: HashMap<String, Corp>,
    pub tokens: HashMap<String, TokenEntry>,
    pub quota_limits: HashMap<Endpoint, u64>,
    /// endpoint → appid → (CST day, calls used).
    pub quota_used: HashMap<Endpoint, HashMap<String, (i64, u64)>>,
    /// appid → (CST month, clear_quota uses).
    pub clear_quota_uses: HashMap<String, (i64, u32)>,
    /// Lifetimes set for tests: (issuing endpoint, owner appid or `None` for any) → ms.
    pub token_ttls: HashMap<(Endpoint, Option<String>), i64>,
    /// appid → stable_token `force_refresh` uses: (CST day, uses that day, last use ms).
    pub force_refreshes: HashMap<String, (i64, u32, i64)>,
    pub msg_seq: u64,
    /// Menus by appid, or `corpid:agentid` for a WeCom app.
    pub menus: HashMap<String, crate::menu::Menus>,
    /// Temporary media by media_id.
    pub media: HashMap<String, crate::media::Media>,
    /// Web-OAuth codes and users' OAuth tokens.
    pub oauth_codes: HashMap<String, crate::web_oauth::OAuthCode>,
    pub sns_tokens: HashMap<String, crate::web_oauth::SnsToken>,
    /// (endpoint, appid) → (sim minute, send calls in it), for `send_minute_limit`.
    pub send_minutes: HashMap<(Endpoint, String), (i64, u32)>,
}

fn token_string() -> String {
    random_nonce(96)
}

pub(crate) fn default_func_info(kind: AccountKind) -> Vec<u32> {
    match kind {
        AccountKind::OfficialAccount => vec![1, 2, 3, 4, 6, 7, 11, 15, 89, 100, 101],
        AccountKind::MiniProgram => vec![17, 18, 19, 25, 30, 31, 36],
    }
}

impl State {
    pub(crate) fn new(timing: Timing, quota_limits: HashMap<Endpoint, u64>) -> Self {
        Self {
            timing,
            components: HashMap::new(),
            accounts: HashMap::new(),
            corps: HashMap::new(),
            tokens: HashMap::new(),
            quota_limits,
            quota_used: HashMap::new(),
            clear_quota_uses: HashMap::new(),
            token_ttls: HashMap::new(),
            force_refreshes: HashMap::new(),
            msg_seq: 6_054_768_590_064_713_728,
            menus: HashMap::new(),
            media: HashMap::new(),
            oauth_codes: HashMap::new(),
            sns_tokens: HashMap::new(),
            send_minutes: HashMap::new(),
        }
    }

    pub(crate) fn next_msgid(&mut self) -> u64 {
        self.msg_seq += 1;
        self.msg_seq
    }

    // ----- seeding -------------------------------------------------------------------------

    /// Adds (or replaces) everything in `seed`. Validates first, so a bad seed changes nothing.
    pub(crate) fn apply_seed(&mut self, seed: &Seed, now_ms: i64) -> Result<(), SimError> {
        let components = seed
            .components
            .iter()
            .map(build_component)
            .collect::<Result<Vec<_>, _>>()?;
        let accounts = seed
            .accounts
            .iter()
            .map(|a| build_account(a, now_ms, self.timing.custom_per_message))
            .collect::<Result<Vec<_>, _>>()?;
        let corps = seed
            .wecom
            .iter()
            .map(build_corp)
            .collect::<Result<Vec<_>, _>>()?;
        let new_components: HashSet<&str> = components.iter().map(|c| c.appid.as_str()).collect();
        let new_accounts: HashSet<&str> = accounts.iter().map(|a| a.appid.as_str()).collect();
        for a in &seed.authorizations {
            let component_known = self.components.contains_key(&a.component_appid)
                || new_components.contains(a.component_appid.as_str());
            let account_known = self.accounts.contains_key(&a.authorizer_appid)
                || new_accounts.contains(a.authorizer_appid.as_str());
            if !component_known {
                return Err(SimError::Seed(format!(
                    "authorization names unknown component {}",
                    a.component_appid
                )));
            }
            if !account_known {
                return Err(SimError::Seed(format!(
                    "authorization names unknown account {}",
                    a.authorizer_appid
                )));
            }
        }
        let mut quotas = Vec::with_capacity(seed.quotas.len());
        for (path, limit) in &seed.quotas {
            if !path.starts_with('/') {
                return Err(SimError::Seed(format!(
                    "quota path {path:?} must start with '/'"
                )));
            }
            let endpoint = Endpoint::parse(path, "quota path", |_| true).map_err(SimError::Seed)?;
            quotas.push((endpoint, *limit));
        }
        for c in components {
            if let Some(old) = self.components.remove(&c.appid) {
                self.forget_component_tokens(old);
            }
            self.components.insert(c.appid.clone(), c);
        }
        for a in accounts {
            if let Some(mut old) = self.accounts.remove(&a.appid) {
                for t in old.token.drain().chain(old.stable_token.drain()) {
                    self.tokens.remove(&t);
                }
            }
            self.accounts.insert(a.appid.clone(), a);
        }
        for c in corps {
            if let Some(old) = self.corps.remove(&c.corpid) {
                for mut agent in old.agents.into_values() {
                    for t in agent.token.drain() {
                        self.tokens.remove(&t);
                    }
                }
            }
            self.corps.insert(c.corpid.clone(), c);
        }
        for a in &seed.authorizations {
            self.seed_authorization(a, now_ms);
        }
        self.quota_limits.extend(quotas);
        Ok(())
    }

    fn forget_component_tokens(&mut self, mut old: Component) {
        for t in old.token.drain() {
            self.tokens.remove(&t);
        }
        for mut auth in old.authorizations.into_values() {
            for t in auth.token.drain() {
                self.tokens.remove(&t);
            }
        }
    }

    fn seed_authorization(&mut self, a: &AuthorizationSeed, now_ms: i64) {
        let func_info = a.func_info.clone().unwrap_or_else(|| {
            self.accounts
                .get(&a.authorizer_appid)
                .map(|acc| acc.func_info.clone())
                .unwrap_or_default()
        });
        let Some(component) = self.components.get_mut(&a.component_appid) else {
            return;
        };
        let refresh_token = a
            .refresh_token
            .as_ref()
            .map(|s| s.expose().to_owned())
            .unwrap_or_else(new_refresh_token);
        let order = match component.authorizations.get(&a.authorizer_appid) {
            Some(existing) => existing.order,
            None => {
                component.next_order += 1;
                component
                    .order
                    .insert(component.next_order, a.authorizer_appid.clone());
                component.next_order
            }
        };
        let old = component.authorizations.insert(
            a.authorizer_appid.clone(),
            Authorization {
                refresh_token,
                previous_refresh: None,
                auth_time_secs: now_ms / 1000,
                func_info,
                exchanged: true,
                token: TokenSlot::default(),
                order,
            },
        );
        if let Some(mut old) = old {
            for t in old.token.drain() {
                self.tokens.remove(&t);
            }
        }
    }

    // ----- tokens --------------------------------------------------------------------------

    /// The lifetime (ms) of a token that `endpoint` issues to `owner` (see [`token_ttl_ms`]).
    pub(crate) fn token_ttl_ms(&self, endpoint: Endpoint, owner: &str) -> i64 {
        token_ttl_ms(&self.token_ttls, self.timing.token_ttl_ms, endpoint, owner)
    }

    /// Counts one stable_token `force_refresh` of `appid` at `now_ms` (CST `day`): 45009 when
    /// today's uses are spent, 45011 within the interval of the previous use.
    pub(crate) fn charge_force_refresh(
        &mut self,
        appid: &str,
        day: i64,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let (per_day, interval) = (
            self.timing.force_refresh_per_day,
            self.timing.force_refresh_interval_ms,
        );
        let used = self
            .force_refreshes
            .entry(appid.to_owned())
            .or_insert((day, 0, i64::MIN / 2));
        if used.0 != day {
            (used.0, used.1) = (day, 0);
        }
        if used.1 >= per_day {
            return Err(ApiError::with(
                45009,
                format!("force_refresh is limited to {per_day} a day"),
            ));
        }
        if now_ms - used.2 < interval {
            return Err(ApiError::with(
                45011,
                format!("force_refresh needs {} s between uses", interval / 1000),
            ));
        }
        used.1 += 1;
        used.2 = now_ms;
        Ok(())
    }

    /// Issues a new token of lifetime `ttl_ms` into `slot`: the previous one stays valid for
    /// the overlap, the one before it dies now.
    pub(crate) fn rotate(
        tokens: &mut HashMap<String, TokenEntry>,
        slot: &mut TokenSlot,
        owner: Owner,
        now_ms: i64,
        ttl_ms: i64,
        timing: &Timing,
    ) -> String {
        if let Some(old) = slot.previous.take() {
            tokens.remove(&old);
        }
        if let Some(current) = slot.current.take() {
            if let Some(entry) = tokens.get_mut(&current) {
                let until = (now_ms + timing.overlap_ms).min(entry.expires_ms);
                entry.superseded_until = Some(until);
            }
            slot.previous = Some(current);
        }
        let token = token_string();
        tokens.insert(
            token.clone(),
            TokenEntry {
                owner,
                expires_ms: now_ms + ttl_ms,
                superseded_until: None,
            },
        );
        slot.current = Some(token.clone());
        token
    }

    /// Checks an access token: 41001 missing, 40001 unknown or replaced past the overlap,
    /// 42001 expired.
    pub(crate) fn check_token(&self, token: Option<&str>, now_ms: i64) -> Result<&Owner, ApiError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::new(41001))?;
        let entry = self.tokens.get(token).ok_or(ApiError::new(40001))?;
        if entry.superseded_until.is_some_and(|until| now_ms >= until) {
            return Err(ApiError::new(40001));
        }
        if now_ms >= entry.expires_ms {
            return Err(ApiError::new(42001));
        }
        Ok(&entry.owner)
    }

    /// Seconds a token has left (for `expires_in` of an idempotent stable_token answer).
    pub(crate) fn token_left_secs(&self, token: &str, now_ms: i64) -> i64 {
        self.tokens
            .get(token)
            .map(|e| ((e.expires_ms - now_ms) / 1000).max(0))
            .unwrap_or(0)
    }

    /// Whether a token is the current, unexpired one of its slot.
    pub(crate) fn token_fresh(&self, token: Option<&String>, now_ms: i64) -> bool {
        token
            .and_then(|t| self.tokens.get(t))
            .is_some_and(|e| e.superseded_until.is_none() && now_ms < e.expires_ms)
    }

    // ----- quotas --------------------------------------------------------------------------

    /// Counts one call of `endpoint` for `appid`; 45009 when today's quota is spent.
    pub(crate) fn charge(
        &mut self,
        endpoint: Endpoint,
        appid: &str,
        day: i64,
    ) -> Result<(), ApiError> {
        let Some(&limit) = self.quota_limits.get(&endpoint) else {
            return Ok(());
        };
        let per_app = self.quota_used.entry(endpoint).or_default();
        let used = match per_app.get_mut(appid) {
            Some(u) => u,
            None => per_app.entry(appid.to_owned()).or_insert((day, 0)),
        };
        if used.0 != day {
            *used = (day, 0);
        }
        if used.1 >= limit {
            return Err(ApiError::new(45009));
        }
        used.1 += 1;
        Ok(())
    }

    /// Resets every quota counter of `appid`; 48006 when this month's resets are spent.
    pub(crate) fn clear_quota(&mut self, appid: &str, month: i64) -> Result<(), ApiError> {
        let uses = self
            .clear_quota_uses
            .entry(appid.to_owned())
            .or_insert((month, 0));
        if uses.0 != month {
            *uses = (month, 0);
        }
        if uses.1 >= self.timing.clear_quota_per_month {
            return Err(ApiError::new(48006));
        }
        uses.1 += 1;
        for per_app in self.quota_used.values_mut() {
            per_app.remove(appid);
        }
        Ok(())
    }

    // ----- component tickets and codes -----------------------------------------------------

    /// Creates a new component_verify_ticket (stored whether or not its push arrives).
    pub(crate) fn new_ticket(&mut self, component: &str, now_ms: i64) -> Option<String> {
        let validity = self.timing.ticket_validity_ms;
        let c = self.components.get_mut(component)?;
        while c
            .tickets
            .front()
            .is_some_and(|(_, issued)| now_ms - issued >= validity)
        {
            c.tickets.pop_front();
        }
        let ticket = format!("ticket@@@{}", random_nonce(86));
        c.tickets.push_back((ticket.clone(), now_ms));
        Some(ticket)
    }

    /// Authorizes `authorizer` to `component` (a new refresh token, a new code).
    pub(crate) fn authorize(
        &mut self,
        component: &str,
        authorizer: &str,
        now_ms: i64,
    ) -> Result<Authorized, SimError> {
        let account = self
            .accounts
            .get(authorizer)
            .ok_or_else(|| SimError::NotFound(format!("account {authorizer}")))?;
        let func_info = account.func_info.clone();
        let timing = self.timing;
        let c = self
            .components
            .get_mut(component)
            .ok_or_else(|| SimError::NotFound(format!("component {component}")))?;
        let refresh_token = new_refresh_token();
        let info_type = match c.authorizations.get_mut(authorizer) {
            Some(existing) => {
                existing.refresh_token = refresh_token.clone();
                existing.previous_refresh = None;
                existing.auth_time_secs = now_ms / 1000;
                existing.func_info = func_info;
                existing.exchanged = false;
                "updateauthorized"
            }
            None => {
                c.next_order += 1;
                c.order.insert(c.next_order, authorizer.to_owned());
                c.authorizations.insert(
                    authorizer.to_owned(),
                    Authorization {
                        refresh_token: refresh_token.clone(),
                        previous_refresh: None,
                        auth_time_secs: now_ms / 1000,
                        func_info,
                        exchanged: false,
                        token: TokenSlot::default(),
                        order: c.next_order,
                    },
                );
                "authorized"
            }
        };
        if c.auth_codes.len() > 10_000 {
            c.auth_codes.retain(|_, code| code.expires_ms > now_ms);
        }
        let auth_code = format!("queryauthcode@@@{}", random_nonce(86));
        let expires_ms = now_ms + timing.auth_code_ttl_ms;
        c.auth_codes.insert(
            auth_code.clone(),
            AuthCode {
                authorizer: authorizer.to_owned(),
                expires_ms,
                used: false,
            },
        );
        Ok(Authorized {
            info_type: info_type.to_owned(),
            auth_code,
            expires_in: timing.auth_code_ttl_ms / 1000,
            expires_at: expires_ms / 1000,
            refresh_token,
        })
    }

    /// Issues a fresh authorization code for an existing authorization (the release check's
    /// QUERY_AUTH_CODE step) without changing the refresh token.
    pub(crate) fn issue_auth_code(
        &mut self,
        component: &str,
        authorizer: &str,
        now_ms: i64,
    ) -> Result<String, SimError> {
        let ttl = self.timing.auth_code_ttl_ms;
        let c = self
            .components
            .get_mut(component)
            .ok_or_else(|| SimError::NotFound(format!("component {component}")))?;
        if !c.authorizations.contains_key(authorizer) {
            return Err(SimError::NotFound(format!(
                "{authorizer} is not authorized to {component}"
            )));
        }
        let code = format!("queryauthcode@@@{}", random_nonce(86));
        c.auth_codes.insert(
            code.clone(),
            AuthCode {
                authorizer: authorizer.to_owned(),
                expires_ms: now_ms + ttl,
                used: false,
            },
        );
        Ok(code)
    }

    /// Removes an authorization; its refresh and access tokens stop working.
    pub(crate) fn revoke(&mut self, component: &str, authorizer: &str) -> Result<(), SimError> {
        let c = self
            .components
            .get_mut(component)
            .ok_or_else(|| SimError::NotFound(format!("component {component}")))?;
        let mut auth = c.authorizations.remove(authorizer).ok_or_else(|| {
            SimError::NotFound(format!("{authorizer} is not authorized to {component}"))
        })?;
        c.order.remove(&auth.order);
        for t in auth.token.drain() {
            self.tokens.remove(&t);
        }
        Ok(())
    }

    // ----- users and windows ---------------------------------------------------------------

    /// Records that `openid` did something with account `appid` (creating the user).
    pub(crate) fn interact(&mut self, appid: &str, openid: &str, what: Interaction, now_ms: i64) {
        let Some(account) = self.accounts.get_mut(appid) else {
            return;
        };
        let user = account
            .users
            .entry(openid.to_owned())
            .or_insert_with(User::new);
        apply_interaction(user, what, now_ms, self.timing.custom_per_message);
    }

    /// Counts one send call of `endpoint` for `appid` in the current sim minute; 45011 past
    /// `send_minute_limit`.
    pub(crate) fn charge_minute(
        &mut self,
        endpoint: Endpoint,
        appid: &str,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let Some(limit) = self.timing.send_minute_limit else {
            return Ok(());
        };
        let minute = now_ms.div_euclid(60_000);
        let entry = self
            .send_minutes
            .entry((endpoint, appid.to_owned()))
            .or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        if entry.1 >= limit {
            return Err(ApiError::new(45011));
        }
        entry.1 += 1;
        Ok(())
    }
}

fn apply_interaction(user: &mut User, what: Interaction, now_ms: i64, per_message: u32) {
    const MINUTE: i64 = 60_000;
    const HOURS_48: i64 = 48 * 3600 * 1000;
    let (window, count) = match what {
        Interaction::Message => (HOURS_48, per_message),
        Interaction::Event => (MINUTE, 3),
        Interaction::EnterSession => (MINUTE, 2),
        Interaction::Unsubscribe => {
            user.subscribed = false;
            user.window_until_ms = 0;
            user.window_left = 0;
            return;
        }
        Interaction::None => return,
    };
    user.subscribed = true;
    user.last_interaction_ms = Some(now_ms);
    // Quotas do not accumulate: each trigger resets the window to its own maximum.
    user.window_until_ms = now_ms + window;
    user.window_left = count;
}

/// The lifetime (ms) of a token that `endpoint` issues to `owner`: set for that appid, else
/// for the endpoint, else `default_ms` (the configured `token_ttl`). A free function so that
/// callers holding a borrow of another part of the state can use it.
pub(crate) fn token_ttl_ms(
    ttls: &HashMap<(Endpoint, Option<String>), i64>,
    default_ms: i64,
    endpoint: Endpoint,
    owner: &str,
) -> i64 {
    if ttls.is_empty() {
        return default_ms;
    }
    let key = |appid: Option<&str>| (endpoint, appid.map(str::to_owned));
    ttls.get(&key(Some(owner)))
        .or_else(|| ttls.get(&key(None)))
        .copied()
        .unwrap_or(default_ms)
}

pub(crate) fn new_refresh_token() -> String {
    format!("refreshtoken@@@{}", random_nonce(43))
}

fn need(value: &str, what: &str) -> Result<(), SimError> {
    if value.trim().is_empty() {
        return Err(SimError::Seed(format!("{what} must not be empty")));
    }
    Ok(())
}

fn check_url(url: &str, what: &str) -> Result<(), SimError> {
    let parsed =
        url::Url::parse(url).map_err(|e| SimError::Seed(format!("{what} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(SimError::Seed(format!("{what} must be http or https")));
    }
    Ok(())
}

fn build_component(c: &ComponentSeed) -> Result<Component, SimError> {
    need(&c.appid, "component appid")?;
    need(c.secret.expose(), "component secret")?;
    need(c.token.expose(), "component token")?;
    let crypt = Crypt::from_parts(c.token.expose(), c.aes_key.expose(), &c.appid)
        .map_err(|e| SimError::Seed(format!("component {}: aes_key: {e}", c.appid)))?;
    if let Some(url) = &c.auth_event_url {
        check_url(url, "auth_event_url")?;
    }
    if let Some(template) = &c.message_url_template {
        if !template.contains("$APPID$") {
            return Err(SimError::Seed(format!(
                "component {}: message_url_template must contain $APPID$",
                c.appid
            )));
        }
        check_url(&template.replace("$APPID$", "wx0"), "message_url_template")?;
    }
    Ok(Component {
        appid: c.appid.clone(),
        secret: c.secret.expose().to_owned(),
        crypt,
        auth_event_url: c.auth_event_url.clone(),
        message_url_template: c.message_url_template.clone(),
        encryption: c.encryption,
        auto_ticket_push: c.auto_ticket_push,
        tickets: VecDeque::new(),
        token: TokenSlot::default(),
        pre_auth_codes: HashMap::new(),
        auth_codes: HashMap::new(),
        authorizations: HashMap::new(),
        order: BTreeMap::new(),
        next_order: 0,
    })
}

fn build_account(a: &AccountSeed, now_ms: i64, per_message: u32) -> Result<Account, SimError> {
    need(&a.appid, "account appid")?;
    need(&a.user_name, "account user_name")?;
    let callback = match &a.callback {
        None => None,
        Some(cb) => {
            check_url(&cb.url, "callback.url")?;
            need(cb.token.expose(), "callback.token")?;
            let crypt = match (&cb.aes_key, cb.encryption) {
                (Some(key), _) => Crypt::from_parts(cb.token.expose(), key.expose(), &a.appid)
                    .map_err(|e| SimError::Seed(format!("account {}: aes_key: {e}", a.appid)))?,
                (None, Encryption::Plain) => {
                    // Plaintext pushes never encrypt; any well-formed key will do.
                    Crypt::new(
                        cb.token.expose(),
                        &a.appid,
                        wxhub_crypto::AesKey::from_bytes([0; 32]),
                        None,
                    )
                }
                (None, _) => {
                    return Err(SimError::Seed(format!(
                        "account {}: callback.aes_key is required unless encryption = \"plain\"",
                        a.appid
                    )));
                }
            };
            Some(DirectCallback {
                url: cb.url.clone(),
                crypt,
                encryption: cb.encryption,
            })
        }
    };
    let mut users = HashMap::with_capacity(a.users.len());
    for u in &a.users {
        need(&u.openid, "user openid")?;
        let mut user = User::new();
        user.subscribed = u.subscribed;
        user.allowances = u.subscribe_allowance.clone().into_iter().collect();
        if let Some(ago) = u.last_interaction_ago_secs {
            let at = now_ms - i64::try_from(ago).unwrap_or(i64::MAX / 2) * 1000;
            apply_interaction(&mut user, Interaction::Message, at, per_message);
            user.subscribed = u.subscribed;
        }
        users.insert(u.openid.clone(), user);
    }
    Ok(Account {
        appid: a.appid.clone(),
        user_name: a.user_name.clone(),
        kind: a.kind,
        nick_name: a.nick_name.clone().unwrap_or_else(|| a.appid.clone()),
        secret: a.secret.as_ref().map(|s| s.expose().to_owned()),
        callback,
        func_info: a
            .func_info
            .clone()
            .unwrap_or_else(|| default_func_info(a.kind)),
        templates: a.templates.iter().cloned().collect(),
        subscribe_templates: a.subscribe_templates.iter().cloned().collect(),
        users,
        service_type: a.service_type.unwrap_or(match a.kind {
            AccountKind::OfficialAccount => 2,
            AccountKind::MiniProgram => 0,
        }),
        verify_type: a.verify_type.unwrap_or(0),
        principal_name: a.principal_name.clone().unwrap_or_default(),
        token: TokenSlot::default(),
        stable_token: TokenSlot::default(),
        tickets: HashMap::new(),
        client_msg_ids: HashMap::new(),
    })
}

fn build_corp(c: &CorpSeed) -> Result<Corp, SimError> {
    need(&c.corpid, "corpid")?;
    let mut agents = BTreeMap::new();
    for a in &c.agents {
        need(a.secret.expose(), "agent secret")?;
        let crypt = match (&a.token, &a.aes_key) {
            (Some(token), Some(key)) => Some(
                Crypt::from_parts(token.expose(), key.expose(), &c.corpid).map_err(|e| {
                    SimError::Seed(format!(
                        "corp {} agent {}: aes_key: {e}",
                        c.corpid, a.agentid
                    ))
                })?,
            ),
            (None, None) => None,
            _ => {
                return Err(SimError::Seed(format!(
                    "corp {} agent {}: token and aes_key go together",
                    c.corpid, a.agentid
                )));
            }
        };
        if let Some(url) = &a.callback_url {
            check_url(url, "agent callback_url")?;
        }
        agents.insert(
            a.agentid,
            Agent {
                secret: a.secret.expose().to_owned(),
                crypt,
                callback_url: a.callback_url.clone(),
                token: TokenSlot::default(),
            },
        );
    }
    Ok(Corp {
        corpid: c.corpid.clone(),
        agents,
    })
}
