//! The refresh engine: one authority for every credential, shared by the gRPC service, the
//! bus consumer and the background loops of a replica.
//!
//! Protocol (design §6; reliability.md P1–P5, P7, P8):
//!
//! 1. **Reads** come from an in-process cache (short TTL), else Redis. A token that satisfies
//!    the caller is served as is — including the old token while another replica refreshes
//!    it. It satisfies the caller when it is not rejected, has not expired, and either is not
//!    due yet (whatever life the caller asked for: the window that bounds upstream calls to
//!    one) or has the caller's minimum left.
//! 2. **Refreshes** are single-flight per replica (one Redis attempt per replica however many
//!    callers wait) and serialised across replicas by a lease (`SET NX PX`, random owner,
//!    fence from the tenant's counter). Under the lease the need is checked again, the lease
//!    is checked once more right before each WeChat call (`holds`), WeChat is called (bounded
//!    by the caller's deadline), and the result is stored by the fenced write script, which
//!    persists a rotated refresh token by compare-and-set on the one used (whatever the token
//!    write's fate) and refuses the token of a holder whose lease was taken over or whose
//!    fence is older. The lease is released by compare-and-delete.
//! 3. **Proactive**: every replica polls the schedule; a due entry is claimed (pushed back by
//!    `claim_ms`, so a dead claimer's entry comes back) and refreshed through the same path.
//!    The due time is `refresh_at` ± jitter of the lifetime WeChat actually returned; for an
//!    answer that repeats the stored token (stable_token's normal mode), the token's expiry
//!    on WeChat's side, since no other token is issued before it.
//! 4. **Invalidation** marks the stored token rejected only if it still is the rejected value;
//!    one refresh replaces it (Official Accounts: stable_token's normal answer, or
//!    `force_refresh` when that answer is the rejected token).
//! 5. **Failures**: transient ones retry with backoff within the deadline (proactive ones come
//!    back with the claim); quota errors push the entry back by WeChat's reset period and are
//!    counted; 61023 reconciles from `api_get_authorizer_list` once, then revokes; 61003
//!    revokes; a missing or stale ticket asks WeChat to push one.
//! 6. **Recovery** from a store that lost its state: see `engine/recovery.rs` (write-back of
//!    what the replicas hold, one re-list, a ticket push only when no replica has a ticket).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use rand::RngExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wxhub_runtime::{ErrorCode, Secret, Tenant, TenantKind, TenantsHandle};
use wxhub_store::authorizers::{Authorization, Listed, Profile};
use wxhub_store::credentials::TokenWrite;
use wxhub_store::{
    AuthorizerRecord, AuthorizerStatus, Authorizers, Credentials, Store, TokenRecord, WriteOutcome,
};
use wxhub_wechat_api::{ErrorClass, WechatApi, WechatError};

use crate::clock::Clock;
use crate::config::TokenControlConfig;
use crate::error::{Error, Reason};

mod recovery;

/// Validity of a component_verify_ticket.
pub const TICKET_VALIDITY_MS: i64 = 12 * 3600 * 1000;

/// Whether `ticket` is still valid at `now_ms`.
pub(crate) fn ticket_valid(ticket: &wxhub_store::TicketRecord, now_ms: i64) -> bool {
    now_ms - ticket.received_at_ms < TICKET_VALIDITY_MS
}

/// Which credential of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    /// component_access_token.
    Component,
    /// The Official Account's or WeCom app's own access token.
    App,
    /// An authorizer_access_token.
    Authorizer(String),
    /// A JS-SDK ticket: of an authorizer, or (`None`) of the Official Account itself.
    Jsapi(Option<String>),
}

impl Credential {
    /// The name used in Redis keys and the schedule.
    pub fn name(&self) -> String {
        match self {
            Credential::Component => "component".into(),
            Credential::App => "app".into(),
            Credential::Authorizer(a) => format!("authorizer:{a}"),
            Credential::Jsapi(None) => "jsapi".into(),
            Credential::Jsapi(Some(a)) => format!("jsapi:{a}"),
        }
    }

    /// Parses a schedule member.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "component" => Some(Credential::Component),
            "app" => Some(Credential::App),
            "jsapi" => Some(Credential::Jsapi(None)),
            _ => {
                if let Some(a) = name.strip_prefix("authorizer:") {
                    Some(Credential::Authorizer(a.to_owned()))
                } else {
                    name.strip_prefix("jsapi:")
                        .map(|a| Credential::Jsapi(Some(a.to_owned())))
                }
            }
        }
    }

    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Component => "component",
            Credential::App => "app",
            Credential::Authorizer(_) => "authorizer",
            Credential::Jsapi(_) => "jsapi",
        }
    }
}

/// A token handed to a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub value: Secret,
    pub expires_at_ms: i64,
}

impl From<&TokenRecord> for Token {
    fn from(r: &TokenRecord) -> Self {
        Self {
            value: r.value.clone(),
            expires_at_ms: r.expires_at_ms,
        }
    }
}

/// Why a refresh runs (and when it is unnecessary).
#[derive(Debug, Clone)]
enum Need {
    /// A caller needs at least this many ms of life.
    Demand(i64),
    /// The schedule says it is due; done if someone refreshed it meanwhile.
    Proactive,
    /// A client reported this value rejected.
    Replace(String),
}

impl Need {
    fn trigger(&self) -> &'static str {
        match self {
            Need::Demand(_) => "demand",
            Need::Proactive => "proactive",
            Need::Replace(_) => "invalidate",
        }
    }

    /// The stored token if it already satisfies this need.
    ///
    /// Until its due time a valid token satisfies any demand, whatever life the caller asked
    /// for: WeChat was asked for it no longer than one refresh window ago, and asking again
    /// would return the same lifetime (a short `expires_in`) or the same token (stable_token's
    /// normal mode), so a shortfall would become a refresh on every read. Past the due time
    /// the caller's minimum applies, so a late schedule is made up by the first read.
    fn satisfied(&self, stored: Option<&TokenRecord>, now_ms: i64) -> Option<Token> {
        let t = stored.filter(|t| !t.rejected)?;
        let ok = match self {
            Need::Demand(min) => {
                let left = t.remaining_ms(now_ms);
                left > 0 && (left >= *min || now_ms < t.due_ms)
            }
            // Not due yet: another replica refreshed it.
            Need::Proactive => now_ms < t.due_ms,
            Need::Replace(rejected) => {
                t.value.expose() != rejected.as_str() && t.remaining_ms(now_ms) > 0
            }
        };
        ok.then(|| Token::from(t))
    }
}

/// A token WeChat just issued.
struct Issued {
    token: Secret,
    expires_in: u64,
    authorizer: Option<String>,
    /// `(used, returned)` refresh tokens of an authorizer refresh.
    refresh: Option<(Secret, Secret)>,
    /// Asking again before this token expires returns this token (stable_token's normal
    /// mode).
    idempotent: bool,
}

/// Who exchanges an authorization code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeBy {
    /// The redirect after authorization (ExchangeAuthCode RPC).
    Redirect,
    /// The `authorized` / `updateauthorized` notice from the bus.
    Event,
}

impl ExchangeBy {
    fn as_str(self) -> &'static str {
        match self {
            ExchangeBy::Redirect => "redirect",
            ExchangeBy::Event => "event",
        }
    }
}

/// What a reconcile did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileSummary {
    pub listed: u64,
    pub authorized: u64,
    pub refresh_tokens: u64,
}

/// Cached tokens of one tenant: credential → (record, read at).
type TenantCache = HashMap<String, (TokenRecord, Instant)>;
type TokenFlight = Shared<BoxFuture<'static, Result<Token, Error>>>;
type ReconcileFlight = Shared<BoxFuture<'static, Result<ReconcileSummary, Error>>>;

/// The engine of one replica.
pub struct Engine {
    creds: Credentials,
    auths: Authorizers,
    store: Store,
    api: WechatApi,
    /// Host of the authorization pages (`wechat.mp_base`).
    pub(crate) mp_base: String,
    tenants: TenantsHandle,
    clock: Arc<dyn Clock>,
    cfg: TokenControlConfig,
    flights: Mutex<HashMap<String, TokenFlight>>,
    reconciles: Mutex<HashMap<String, ReconcileFlight>>,
    /// tenant → credential → (record, read at): looked up without allocating.
    cache: std::sync::RwLock<HashMap<String, TenantCache>>,
    refresh_permits: Arc<Semaphore>,
    /// Schedule entries claimed (or being claimed) by this replica and not yet finished.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Tickets and tokens held for a write-back after the store lost them.
    memory: recovery::Memory,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("namespace", &self.store.namespace())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Engine {
    /// An engine on `store`, calling WeChat through `api`.
    pub fn new(
        store: Store,
        api: WechatApi,
        mp_base: &str,
        tenants: TenantsHandle,
        clock: Arc<dyn Clock>,
        cfg: TokenControlConfig,
    ) -> Arc<Self> {
        let store = store.with_create_time_skew(cfg.create_time_skew());
        Arc::new(Self {
            creds: Credentials::new(store.clone()),
            auths: Authorizers::new(store.clone()),
            store,
            api,
            mp_base: mp_base.trim_end_matches('/').to_owned(),
            tenants,
            clock,
            refresh_permits: Arc::new(Semaphore::new(cfg.max_concurrent_refreshes)),
            pending: Arc::default(),
            cfg,
            flights: Mutex::default(),
            reconciles: Mutex::default(),
            cache: std::sync::RwLock::default(),
            memory: recovery::Memory::default(),
        })
    }

    /// The clock (ms).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The configuration.
    pub fn config(&self) -> &TokenControlConfig {
        &self.cfg
    }

    /// The tenants.
    pub fn tenants(&self) -> &TenantsHandle {
        &self.tenants
    }

    /// Credential storage.
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// Authorizer storage.
    pub fn authorizers(&self) -> &Authorizers {
        &self.auths
    }

    /// The WeChat client.
    pub fn api(&self) -> &WechatApi {
        &self.api
    }

    /// The tenant, or NotFound.
    pub fn tenant(&self, id: &str) -> Result<Arc<Tenant>, Error> {
        self.tenants
            .current()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("unknown tenant {id:?}")))
    }

    fn component_tenant(&self, id: &str) -> Result<Arc<Tenant>, Error> {
        let t = self.tenant(id)?;
        if t.kind != TenantKind::Component {
            return Err(Error::precondition(format!(
                "tenant {id:?} is a {} tenant, not a component",
                t.kind.as_str()
            )));
        }
        Ok(t)
    }

    // ---------------------------------------------------------------- reads

    fn cache_get(&self, tenant: &str, cred: &str) -> Option<TokenRecord> {
        if self.cfg.cache_ttl_ms == 0 {
            return None;
        }
        let cache = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (record, at) = cache.get(tenant)?.get(cred)?;
        (at.elapsed() < Duration::from_millis(self.cfg.cache_ttl_ms)).then(|| record.clone())
    }

    fn cache_put(&self, tenant: &str, cred: &str, record: Option<&TokenRecord>) {
        if self.cfg.cache_ttl_ms == 0 {
            return;
        }
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match record {
            Some(r) => {
                cache
                    .entry(tenant.to_owned())
                    .or_default()
                    .insert(cred.to_owned(), (r.clone(), Instant::now()));
            }
            None => {
                if let Some(t) = cache.get_mut(tenant) {
                    t.remove(cred);
                }
            }
        }
    }

    /// Drops the cached token of `cred`.
    pub fn forget(&self, tenant: &str, cred: &str) {
        self.cache_put(tenant, cred, None);
    }

    async fn read(&self, tenant: &str, cred: &str) -> Result<Option<TokenRecord>, Error> {
        let record = self.creds.token(tenant, cred).await?;
        if let Some(r) = &record {
            self.memory.hold_token(tenant, cred, r);
        }
        self.cache_put(tenant, cred, record.as_ref());
        Ok(record)
    }

    /// A token of `cred` with at least `min_remaining_ms` of life, refreshing if needed.
    pub async fn get_token(
        self: &Arc<Self>,
        tenant: &str,
        cred: &Credential,
        min_remaining_ms: i64,
        deadline: Instant,
    ) -> Result<Token, Error> {
        let name = cred.name();
        let need = Need::Demand(min_remaining_ms);
        let now = self.now_ms();
        if let Some(t) = need.satisfied(self.cache_get(tenant, &name).as_ref(), now) {
            metrics::counter!("wxhub_token_reads_total", "source" => "cache").increment(1);
            return Ok(t);
        }
        let stored = self.read_or_restore(tenant, cred, deadline).await?;
        if let Some(t) = need.satisfied(stored.as_ref(), now) {
            metrics::counter!("wxhub_token_reads_total", "source" => "redis").increment(1);
            return Ok(t);
        }
        metrics::counter!("wxhub_token_reads_total", "source" => "refresh").increment(1);
        for _ in 0..3 {
            let key = format!("{tenant}\0{name}\0demand\0{min_remaining_ms}");
            let result = self
                .flight(key, tenant, cred.clone(), need.clone(), deadline)
                .await?;
            // The flight's answer satisfied this need under the lease: fresh from WeChat
            // (whatever lifetime WeChat gave it) or refreshed within its window. Asking again
            // for more life would only repeat the call, so it is served while valid; only a
            // token that expired meanwhile (WeChat's answer in a token's last second) is
            // asked for again.
            if result.expires_at_ms > self.now_ms() {
                return Ok(result);
            }
        }
        Err(Error::unavailable(
            "could not obtain a token that has not expired yet",
        ))
    }

    /// A client reports that WeChat rejected `rejected`: refresh once if it is still the stored
    /// token, otherwise return the current one.
    pub async fn invalidate(
        self: &Arc<Self>,
        tenant: &str,
        cred: &Credential,
        rejected: &str,
        deadline: Instant,
    ) -> Result<Token, Error> {
        let name = cred.name();
        let matched = self
            .creds
            .invalidate(tenant, &name, rejected, self.now_ms())
            .await?;
        self.cache_put(tenant, &name, None);
        self.memory.forget(tenant, &name, Some(rejected));
        metrics::counter!("wxhub_token_invalidations_total", "credential" => cred.kind(), "matched" => if matched { "yes" } else { "no" })
            .increment(1);
        let key = format!("{tenant}\0{name}\0replace\0{rejected}");
        self.flight(
            key,
            tenant,
            cred.clone(),
            Need::Replace(rejected.to_owned()),
            deadline,
        )
        .await
    }

    /// Joins (or starts) this replica's refresh of `key`. The refresh runs in its own task, so a
    /// caller that gives up does not abandon a lease.
    async fn flight(
        self: &Arc<Self>,
        key: String,
        tenant: &str,
        cred: Credential,
        need: Need,
        deadline: Instant,
    ) -> Result<Token, Error> {
        loop {
            let flight = {
                let mut flights = lock(&self.flights);
                if let Some(f) = flights.get(&key) {
                    f.clone()
                } else {
                    let this = Arc::clone(self);
                    let k = key.clone();
                    let refresh = Arc::clone(self).refresh_boxed(
                        tenant.to_owned(),
                        cred.clone(),
                        need.clone(),
                        deadline,
                    );
                    let task = tokio::spawn(async move {
                        let r = refresh.await;
                        lock(&this.flights).remove(&k);
                        r
                    });
                    let f = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Error::new(
                                ErrorCode::Internal,
                                format!("refresh task failed: {e}"),
                            ))
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(key.clone(), f.clone());
                    f
                }
            };
            let result = match tokio::time::timeout_at(deadline.into(), flight).await {
                Ok(r) => r,
                Err(_) => return Err(Error::deadline("deadline exceeded waiting for a refresh")),
            };
            // A flight started by a caller with a shorter deadline may have given up; retry
            // with ours.
            match result {
                Err(e) if e.code == ErrorCode::DeadlineExceeded && Instant::now() < deadline => {
                    continue;
                }
                other => return other,
            }
        }
    }

    // ---------------------------------------------------------------- refresh

    /// [`Engine::refresh`] as a boxed future (refreshes nest: an authorizer refresh may need
    /// the component token).
    fn refresh_boxed(
        self: Arc<Self>,
        tenant: String,
        cred: Credential,
        need: Need,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Token, Error>> {
        async move { self.refresh(&tenant, &cred, &need, deadline).await }.boxed()
    }

    async fn refresh(
        self: &Arc<Self>,
        tenant: &str,
        cred: &Credential,
        need: &Need,
        deadline: Instant,
    ) -> Result<Token, Error> {
        let name = cred.name();
        let mut transient_retries = 0u32;
        let mut checked = false;
        loop {
            if Instant::now() >= deadline {
                return Err(Error::deadline(
                    "deadline exceeded before the token was refreshed",
                ));
            }
            let stored = self.read(tenant, &name).await?;
            if let Some(t) = need.satisfied(stored.as_ref(), self.now_ms()) {
                return Ok(t);
            }
            // An unknown authorizer is refused before any lease or fence is taken (a stored
            // token proves it was known; the fenced write refuses a revoked one).
            if !checked && stored.is_none() {
                if let Credential::Authorizer(appid) | Credential::Jsapi(Some(appid)) = cred {
                    self.authorizer_record(tenant, appid).await?;
                }
                checked = true;
            }
            let Some(lease) = self
                .creds
                .acquire(tenant, &name, self.cfg.lock_ttl())
                .await?
            else {
                if matches!(need, Need::Proactive) {
                    // Another replica refreshes it; nothing to do here.
                    return stored
                        .as_ref()
                        .map(Token::from)
                        .ok_or_else(|| Error::unavailable("being refreshed elsewhere"));
                }
                let wait = Duration::from_millis(25)
                    .min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(wait).await;
                continue;
            };
            self.memory.saw_fence(tenant, lease.fence);
            let result = self
                .refresh_leased(tenant, cred, need, &lease, deadline)
                .await;
            if let Err(e) = self.creds.release(&lease).await {
                tracing::warn!(tenant, credential = %name, error = %e, "lease release failed; it expires by itself");
            }
            let label = match &result {
                Ok(Some(_)) => "ok",
                Ok(None) => "superseded",
                Err(e) => e.code.as_str(),
            };
            metrics::counter!("wxhub_token_refresh_total", "credential" => cred.kind(), "trigger" => need.trigger(), "result" => label)
                .increment(1);
            match result {
                Ok(Some(token)) => return Ok(token),
                // A newer token was written meanwhile: read it.
                Ok(None) => continue,
                Err(e)
                    if e.code == ErrorCode::Unavailable
                        && transient_retries < 3
                        && !matches!(need, Need::Proactive) =>
                {
                    transient_retries += 1;
                    let backoff = Duration::from_millis(100 * 2u64.pow(transient_retries));
                    if Instant::now() + backoff >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Under the lease: check again, call WeChat, write fenced. `Ok(None)` when the lease was
    /// lost before the call or the write was refused because a newer token exists.
    async fn refresh_leased(
        self: &Arc<Self>,
        tenant: &str,
        cred: &Credential,
        need: &Need,
        lease: &wxhub_store::Lease,
        deadline: Instant,
    ) -> Result<Option<Token>, Error> {
        let name = cred.name();
        let stored = self.read(tenant, &name).await?;
        let mut started = self.now_ms();
        if let Some(t) = need.satisfied(stored.as_ref(), started) {
            return Ok(Some(t));
        }
        // Expired before its due time: WeChat answered with the token it had already issued
        // (stable_token's normal mode) and issues another only once that one has expired on
        // its side, up to a second after ours (it rounds `expires_in` down). Wait for the due
        // time rather than ask early and get the same token back.
        if let Some(t) = stored
            .as_ref()
            .filter(|t| !t.rejected && started < t.due_ms)
            && matches!(need, Need::Demand(_))
        {
            let wait = Duration::from_millis(u64::try_from(t.due_ms - started).unwrap_or(0));
            tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
            started = self.now_ms();
        }
        let timer = Instant::now();
        // A token reported rejected must not come back from stable_token's normal mode.
        let rejected = match need {
            Need::Replace(r) => Some(r.as_str()),
            _ => None,
        }
        .or_else(|| {
            stored
                .as_ref()
                .filter(|t| t.rejected)
                .map(|t| t.value.expose())
        });
        let Some(issued) = self.fetch(tenant, cred, rejected, lease, deadline).await? else {
            tracing::info!(tenant, credential = %name, "lease lost before the WeChat call; not calling");
            return Ok(None);
        };
        metrics::histogram!("wxhub_token_refresh_seconds", "credential" => cred.kind())
            .record(timer.elapsed().as_secs_f64());
        let finished = self.now_ms();
        let lifetime_ms = i64::try_from(issued.expires_in)
            .unwrap_or(7200)
            .saturating_mul(1000);
        // The expiry counts from before the call: never later than WeChat's.
        let expires_at_ms = started + lifetime_ms;
        // WeChat answering with the token already stored (or stable_token, which always does
        // until that token expires) gives no other one before it expires on WeChat's side:
        // `expires_in` after the answer, plus the second it rounds down. Ask again then, and
        // serve this one with its true expiry until then. Any other token is refreshed at
        // `refresh_at` of the lifetime it was actually issued with.
        let same = issued.idempotent
            || stored
                .as_ref()
                .is_some_and(|t| t.value.expose() == issued.token.expose());
        let due_ms = if same {
            finished + lifetime_ms + 1000
        } else {
            started + self.due_after(lifetime_ms)
        };
        let refresh = issued
            .refresh
            .as_ref()
            .map(|(used, returned)| (used, returned));
        let report = self
            .creds
            .write_token(
                lease,
                &TokenWrite {
                    value: &issued.token,
                    expires_at_ms,
                    lifetime_ms,
                    now_ms: finished,
                    due_ms,
                    authorizer: issued.authorizer.as_deref(),
                    refresh_token: refresh,
                },
            )
            .await?;
        if report.refresh_token_rotated {
            metrics::counter!("wxhub_refresh_token_rotations_total").increment(1);
        }
        match report.outcome {
            WriteOutcome::Written => {
                self.cache_put(tenant, &name, None);
                self.memory.hold_token(
                    tenant,
                    &name,
                    &TokenRecord {
                        value: issued.token.clone(),
                        expires_at_ms,
                        lifetime_ms,
                        refreshed_at_ms: started,
                        fence: lease.fence,
                        rejected: false,
                        due_ms,
                    },
                );
                Ok(Some(Token {
                    value: issued.token,
                    expires_at_ms,
                }))
            }
            outcome @ (WriteOutcome::LostLease | WriteOutcome::StaleFence) => {
                metrics::counter!("wxhub_token_stale_writes_refused_total", "credential" => cred.kind())
                    .increment(1);
                tracing::warn!(
                    tenant,
                    credential = %name,
                    ?outcome,
                    refresh_token_kept = report.refresh_token_rotated,
                    "fenced write refused: a newer token exists"
                );
                Ok(None)
            }
            WriteOutcome::Revoked => Err(Error::precondition(
                "the account no longer authorizes this component",
            )),
        }
    }

    /// Delay of the next proactive refresh: `refresh_at` ± jitter of the lifetime.
    fn due_after(&self, lifetime_ms: i64) -> i64 {
        let (at, jitter) = (self.cfg.refresh_at, self.cfg.refresh_jitter);
        let fraction = if jitter > 0.0 {
            rand::rng().random_range(at - jitter..at + jitter)
        } else {
            at
        };
        (lifetime_ms as f64 * fraction) as i64
    }

    /// Whether `lease` is still ours, checked right before each upstream call: a holder that
    /// lost it (paused, or slow to obtain the token the call needs) does not make a second
    /// call next to the new holder's. It narrows the window; the fenced write closes it.
    async fn holds(&self, lease: &wxhub_store::Lease) -> Result<bool, Error> {
        Ok(self.creds.holds(lease).await?)
    }

    /// Calls WeChat for a new value of `cred` (`rejected`: the value a client reported
    /// rejected, if any). `None` when the lease was lost before the call.
    async fn fetch(
        self: &Arc<Self>,
        tenant_id: &str,
        cred: &Credential,
        rejected: Option<&str>,
        lease: &wxhub_store::Lease,
        deadline: Instant,
    ) -> Result<Option<Issued>, Error> {
        let tenant = self.tenant(tenant_id)?;
        let api = self.api.until(deadline);
        let issued = |t: wxhub_wechat_api::AccessToken| {
            Some(Issued {
                token: t.token,
                expires_in: t.expires_in,
                authorizer: None,
                refresh: None,
                idempotent: false,
            })
        };
        let direct = matches!(
            (cred, tenant.kind),
            (Credential::Component, TenantKind::Component)
                | (
                    Credential::App,
                    TenantKind::OfficialAccount | TenantKind::Wecom
                )
        );
        if direct && !self.holds(lease).await? {
            return Ok(None);
        }
        match (cred, tenant.kind) {
            (Credential::Component, TenantKind::Component) => {
                let Some(ticket) = self.usable_ticket(tenant_id, deadline).await? else {
                    self.request_ticket_push(&tenant).await;
                    return Err(Error::precondition(format!(
                        "tenant {tenant_id:?} has no valid component_verify_ticket yet; WeChat was asked to push one"
                    ))
                    .with_reason(Reason::NoTicket));
                };
                match api
                    .component_token(&tenant.app_id, &tenant.app_secret, &ticket.value)
                    .await
                {
                    Ok(t) => Ok(issued(t)),
                    Err(e) => {
                        self.note_failure(tenant_id, &e);
                        if e.class() == ErrorClass::Ticket {
                            self.request_ticket_push(&tenant).await;
                        }
                        Err(Error::wechat("fetching the component_access_token", &e))
                    }
                }
            }
            // /cgi-bin/token always issues a new token.
            (Credential::App, TenantKind::OfficialAccount)
                if self.cfg.oa_token_api == crate::config::OaTokenApi::Token =>
            {
                api.oa_token(&tenant.app_id, &tenant.app_secret)
                    .await
                    .map(issued)
                    .map_err(|e| {
                        self.note_failure(tenant_id, &e);
                        Error::wechat("fetching the Official Account access_token", &e)
                    })
            }
            (Credential::App, TenantKind::OfficialAccount) => self
                .fetch_stable(&tenant, rejected, deadline)
                .await
                .map(Some),
            (Credential::App, TenantKind::Wecom) => api
                .wecom_token(&tenant.app_id, &tenant.app_secret)
                .await
                .map(issued)
                .map_err(|e| {
                    self.note_failure(tenant_id, &e);
                    Error::wechat("fetching the WeCom access_token", &e)
                }),
            (Credential::Authorizer(appid), TenantKind::Component) => {
                self.fetch_authorizer(&tenant, appid, lease, deadline).await
            }
            (Credential::Jsapi(appid), kind) => {
                let access = match (appid, kind) {
                    (Some(a), TenantKind::Component) => Credential::Authorizer(a.clone()),
                    (None, TenantKind::OfficialAccount) => Credential::App,
                    _ => {
                        return Err(Error::precondition(
                            "JS-SDK tickets exist for component authorizers and Official Accounts",
                        ));
                    }
                };
                let mut retried = false;
                loop {
                    let at = self.get_token(tenant_id, &access, 60_000, deadline).await?;
                    if !self.holds(lease).await? {
                        return Ok(None);
                    }
                    match self.api.until(deadline).jsapi_ticket(&at.value).await {
                        Ok(t) => {
                            return Ok(Some(Issued {
                                token: t.ticket,
                                expires_in: t.expires_in,
                                authorizer: appid.clone(),
                                refresh: None,
                                idempotent: false,
                            }));
                        }
                        Err(e) if e.class() == ErrorClass::Token && !retried => {
                            retried = true;
                            self.invalidate(tenant_id, &access, at.value.expose(), deadline)
                                .await?;
                        }
                        Err(e) => {
                            self.note_failure(tenant_id, &e);
                            return Err(Error::wechat("fetching the jsapi_ticket", &e));
                        }
                    }
                }
            }
            (cred, kind) => Err(Error::precondition(format!(
                "a {} tenant has no {} token",
                kind.as_str(),
                cred.kind()
            ))),
        }
    }

    /// stable_token. Normal mode answers the current token with what is left of its life, the
    /// same token until it expires, so the answer is marked idempotent and refreshed when it
    /// expires (never `force_refresh` on a timer: WeChat allows 20 a day, 30 s apart, and it
    /// kills the token every client holds). A token reported rejected is replaced by the
    /// normal answer unless WeChat still answers that very token; only then is
    /// `force_refresh` used (counted in `wxhub_stable_token_force_refresh_total`), and when
    /// WeChat refuses it (its daily limit), the normal answer is served: WeChat itself still
    /// issues that token, and keeping the rejected mark would make every read call again.
    async fn fetch_stable(
        &self,
        tenant: &Tenant,
        rejected: Option<&str>,
        deadline: Instant,
    ) -> Result<Issued, Error> {
        let tid = tenant.id.as_str();
        let api = self.api.until(deadline);
        let failed = |e: &WechatError| {
            self.note_failure(tid, e);
            Error::wechat("fetching the Official Account access_token", e)
        };
        let issued = |t: wxhub_wechat_api::AccessToken| Issued {
            token: t.token,
            expires_in: t.expires_in,
            authorizer: None,
            refresh: None,
            idempotent: true,
        };
        let normal = api
            .stable_token(&tenant.app_id, &tenant.app_secret, false)
            .await
            .map_err(|e| failed(&e))?;
        if rejected != Some(normal.token.expose()) {
            return Ok(issued(normal));
        }
        let forced = api
            .stable_token(&tenant.app_id, &tenant.app_secret, true)
            .await;
        let label = match &forced {
            Ok(_) => "ok",
            Err(e) if e.class() == ErrorClass::Quota => "refused",
            Err(_) => "error",
        };
        metrics::counter!("wxhub_stable_token_force_refresh_total", "tenant" => tid.to_owned(), "result" => label)
            .increment(1);
        match forced {
            Ok(t) => Ok(issued(t)),
            Err(e) if e.class() == ErrorClass::Quota => {
                self.note_failure(tid, &e);
                tracing::warn!(
                    tenant = tid,
                    "force_refresh refused; serving the token stable_token still issues"
                );
                Ok(issued(normal))
            }
            Err(e) => Err(failed(&e)),
        }
    }

    async fn fetch_authorizer(
        self: &Arc<Self>,
        tenant: &Tenant,
        appid: &str,
        lease: &wxhub_store::Lease,
        deadline: Instant,
    ) -> Result<Option<Issued>, Error> {
        let tid = tenant.id.as_str();
        let mut record = self.authorizer_record(tid, appid).await?;
        if record.refresh_token.is_none() {
            // Lost (or never stored): recover it from WeChat's list.
            self.reconcile(tid, deadline).await?;
            record = self.authorizer_record(tid, appid).await?;
        }
        let Some(mut refresh) = record.refresh_token.clone() else {
            return Err(Error::precondition(format!(
                "authorizer {appid} has no refresh token (WeChat lists none); the account must authorize again"
            )));
        };
        let (mut token_retried, mut reconciled) = (false, false);
        loop {
            let ct = self
                .get_token(tid, &Credential::Component, 60_000, deadline)
                .await?;
            if !self.holds(lease).await? {
                return Ok(None);
            }
            let result = self
                .api
                .until(deadline)
                .authorizer_token(&ct.value, &tenant.app_id, appid, &refresh)
                .await;
            match result {
                Ok((t, returned)) => {
                    return Ok(Some(Issued {
                        token: t.token,
                        expires_in: t.expires_in,
                        authorizer: Some(appid.to_owned()),
                        refresh: returned.map(|r| (refresh.clone(), r)),
                        idempotent: false,
                    }));
                }
                Err(e) if e.class() == ErrorClass::Token && !token_retried => {
                    // Our component token was rejected: replace it once (compare first).
                    token_retried = true;
                    self.invalidate(tid, &Credential::Component, ct.value.expose(), deadline)
                        .await?;
                }
                Err(e) if e.class() == ErrorClass::RefreshToken && !reconciled => {
                    reconciled = true;
                    metrics::counter!("wxhub_refresh_token_invalid_total", "tenant" => tid.to_owned())
                        .increment(1);
                    tracing::warn!(
                        tenant = tid,
                        appid,
                        "61023: recovering the refresh token from the authorizer list"
                    );
                    self.reconcile(tid, deadline).await?;
                    let again = self.authorizer_record(tid, appid).await?;
                    match again.refresh_token {
                        Some(r) if r != refresh => refresh = r,
                        _ => {
                            let now = self.now_ms();
                            self.auths
                                .revoke(tid, appid, now, now, "refresh_token_invalid")
                                .await?;
                            self.forget_authorizer(tid, appid);
                            return Err(Error::wechat("refreshing the authorizer token", &e));
                        }
                    }
                }
                Err(e) if e.class() == ErrorClass::Deauthorized => {
                    let now = self.now_ms();
                    self.auths
                        .revoke(tid, appid, now, now, "deauthorized")
                        .await?;
                    self.forget_authorizer(tid, appid);
                    return Err(Error::wechat("refreshing the authorizer token", &e));
                }
                Err(e) => {
                    self.note_failure(tid, &e);
                    return Err(Error::wechat("refreshing the authorizer token", &e));
                }
            }
        }
    }

    async fn authorizer_record(
        self: &Arc<Self>,
        tenant: &str,
        appid: &str,
    ) -> Result<AuthorizerRecord, Error> {
        let record = self
            .find_authorizer(tenant, appid)
            .await?
            .ok_or_else(|| Error::not_found(format!("unknown authorizer {appid}")))?;
        if record.status == AuthorizerStatus::Revoked {
            return Err(Error::revoked(appid, record.revoked_reason.as_deref()));
        }
        Ok(record)
    }

    /// Forgets cached (and held) tokens of an authorizer.
    pub fn forget_authorizer(&self, tenant: &str, appid: &str) {
        self.cache_put(
            tenant,
            &Credential::Authorizer(appid.to_owned()).name(),
            None,
        );
        self.cache_put(
            tenant,
            &Credential::Jsapi(Some(appid.to_owned())).name(),
            None,
        );
        self.memory.forget_authorizer(tenant, appid);
    }

    fn note_failure(&self, tenant: &str, e: &WechatError) {
        if e.class() == ErrorClass::Quota {
            metrics::counter!("wxhub_wechat_quota_exhausted_total", "tenant" => tenant.to_owned(), "api" => e.api())
                .increment(1);
        }
        tracing::warn!(tenant, api = e.api(), class = e.class().as_str(), error = %e, "WeChat call failed");
    }

    // ---------------------------------------------------------------- tickets

    /// Asks WeChat to (re)start pushing tickets, at most once per `push_ticket_interval_ms`
    /// per tenant across replicas, and not while replicas may still write a ticket back into a
    /// store found empty (`heal_ticket_grace_ms`).
    pub async fn request_ticket_push(&self, tenant: &Tenant) {
        let tid = tenant.id.as_str();
        if self.ticket_push_deferred(tid).await {
            tracing::debug!(
                tenant = tid,
                "ticket push deferred: replicas may still write their ticket back"
            );
            return;
        }
        let interval = Duration::from_millis(self.cfg.push_ticket_interval_ms);
        match self.creds.guard(tid, "push-ticket", interval).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(tenant = tid, error = %e, "cannot take the push-ticket guard");
                return;
            }
        }
        let result = self
            .api
            .start_push_ticket(&tenant.app_id, &tenant.app_secret)
            .await;
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("wxhub_ticket_push_requests_total", "tenant" => tid.to_owned(), "result" => label)
            .increment(1);
        match result {
            Ok(()) => tracing::info!(
                tenant = tid,
                "asked WeChat to push a component_verify_ticket"
            ),
            Err(e) => {
                tracing::warn!(tenant = tid, error = %e, "api_start_push_ticket failed");
                let _ = self.creds.clear_marker(tid, "push-ticket", "1").await;
            }
        }
    }

    /// Checks every component tenant's ticket: records its age and asks for a push when it is
    /// missing or stale.
    pub async fn check_tickets(&self) {
        let tenants = self.tenants.current();
        for tenant in tenants.iter().filter(|t| t.kind == TenantKind::Component) {
            let tid = tenant.id.as_str();
            match self.creds.ticket(tid).await {
                Ok(Some(t)) => {
                    self.memory.hold_ticket(tid, &t);
                    let age = self.now_ms() - t.received_at_ms;
                    metrics::gauge!("wxhub_ticket_age_seconds", "tenant" => tid.to_owned())
                        .set(age as f64 / 1000.0);
                    if age > i64::try_from(self.cfg.ticket_stale_ms).unwrap_or(i64::MAX) {
                        self.request_ticket_push(tenant).await;
                    }
                }
                Ok(None) => self.request_ticket_push(tenant).await,
                Err(e) => tracing::warn!(tenant = tid, error = %e, "cannot read the ticket"),
            }
        }
    }

    /// Readiness: every component tenant has a ticket younger than 12 h.
    pub async fn ticket_readiness(&self) -> Result<String, String> {
        let tenants = self.tenants.current();
        let mut problems = Vec::new();
        let mut ok = 0;
        for tenant in tenants.iter().filter(|t| t.kind == TenantKind::Component) {
            match self.creds.ticket(tenant.id.as_str()).await {
                Ok(Some(t)) if self.now_ms() - t.received_at_ms < TICKET_VALIDITY_MS => ok += 1,
                Ok(Some(t)) => problems.push(format!(
                    "{}: ticket is {} min old",
                    tenant.id,
                    (self.now_ms() - t.received_at_ms) / 60_000
                )),
                Ok(None) => problems.push(format!("{}: no component_verify_ticket", tenant.id)),
                Err(e) => problems.push(format!("{}: {e}", tenant.id)),
            }
        }
        if problems.is_empty() {
            Ok(format!("{ok} component tenant(s) with a fresh ticket"))
        } else {
            problems.sort();
            Err(problems.join("; "))
        }
    }

    // ---------------------------------------------------------------- schedule

    /// One poll of every tenant's schedule: claims due entries and refreshes them
    /// (concurrency bounded by `max_concurrent_refreshes`). Returns how many were claimed.
    pub async fn poll_once(self: &Arc<Self>) -> usize {
        let tenants = self.tenants.current();
        let mut claimed_total = 0;
        for tenant in tenants.iter() {
            let tid = tenant.id.as_str().to_owned();
            loop {
                let now = self.now_ms();
                // Counted before the claim, so "nothing due and nothing pending" is never
                // observed while a claim is on its way back.
                let batch = self.cfg.poll_batch;
                self.pending.fetch_add(batch, Ordering::SeqCst);
                let claimed = match self
                    .creds
                    .claim_due(
                        &tid,
                        now,
                        now + i64::try_from(self.cfg.claim_ms).unwrap_or(30_000),
                        self.cfg.poll_batch,
                    )
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        self.pending.fetch_sub(batch, Ordering::SeqCst);
                        tracing::warn!(tenant = %tid, error = %e, "cannot poll the schedule");
                        break;
                    }
                };
                let n = claimed.len();
                self.pending.fetch_sub(batch - n, Ordering::SeqCst);
                claimed_total += n;
                let mut claimed = claimed.into_iter();
                while let Some(member) = claimed.next() {
                    let Ok(permit) = Arc::clone(&self.refresh_permits).acquire_owned().await else {
                        self.pending.fetch_sub(1 + claimed.len(), Ordering::SeqCst);
                        return claimed_total;
                    };
                    let this = Arc::clone(self);
                    let tid = tid.clone();
                    tokio::spawn(async move {
                        this.proactive(&tid, &member).await;
                        this.pending.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    });
                }
                if n < self.cfg.poll_batch {
                    break;
                }
            }
        }
        claimed_total
    }

    /// Schedule entries this replica claimed and has not finished refreshing (benchmarks and
    /// tests wait for 0 together with an empty due set).
    pub fn pending_refreshes(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    async fn proactive(self: &Arc<Self>, tenant: &str, member: &str) {
        let Some(cred) = Credential::parse(member) else {
            tracing::warn!(tenant, member, "unknown schedule entry; dropping it");
            let _ = self.creds.drop_tokens(tenant, &[member]).await;
            return;
        };
        let deadline = Instant::now() + self.cfg.request_timeout();
        let key = format!("{tenant}\0{member}\0proactive");
        let result = self
            .flight(key, tenant, cred.clone(), Need::Proactive, deadline)
            .await;
        let Err(e) = result else { return };
        let now = self.now_ms();
        let retry_ms: Option<i64> = match e.code {
            // Gone for good: stop refreshing it.
            ErrorCode::NotFound => None,
            ErrorCode::FailedPrecondition
                if matches!(cred, Credential::Authorizer(_) | Credential::Jsapi(Some(_)))
                    && e.message.contains("no longer authorizes") =>
            {
                None
            }
            // Quota: wait for the limit to lift (WeChat: minutes for 45011, a day for 45009).
            ErrorCode::ResourceExhausted => Some(if e.message.contains("45009") {
                3_600_000
            } else {
                60_000
            }),
            // Configuration problems: an operator must act; do not hammer WeChat.
            ErrorCode::FailedPrecondition => Some(600_000),
            // Transient: the claim brings it back after claim_ms.
            _ => return,
        };
        tracing::warn!(tenant, credential = member, error = %e, "proactive refresh failed");
        let r = match retry_ms {
            Some(ms) => self.creds.schedule(tenant, member, now + ms, false).await,
            None => self.creds.drop_tokens(tenant, &[member]).await,
        };
        if let Err(e) = r {
            tracing::warn!(tenant, error = %e, "cannot reschedule");
        }
    }

    // ---------------------------------------------------------------- authorizers

    /// Reconciles the authorizers of a component tenant with `api_get_authorizer_list`
    /// (single-flight per tenant in this replica).
    pub async fn reconcile(
        self: &Arc<Self>,
        tenant: &str,
        deadline: Instant,
    ) -> Result<ReconcileSummary, Error> {
        self.component_tenant(tenant)?;
        let flight = {
            let mut flights = lock(&self.reconciles);
            if let Some(f) = flights.get(tenant) {
                f.clone()
            } else {
                let this = Arc::clone(self);
                let t = tenant.to_owned();
                let task = tokio::spawn(async move {
                    let r = this.reconcile_marking_healed(&t, deadline).await;
                    lock(&this.reconciles).remove(&t);
                    r
                });
                let f = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(Error::new(
                            ErrorCode::Internal,
                            format!("reconcile failed: {e}"),
                        ))
                    })
                }
                .boxed()
                .shared();
                flights.insert(tenant.to_owned(), f.clone());
                f
            }
        };
        tokio::time::timeout_at(deadline.into(), flight)
            .await
            .unwrap_or_else(|_| Err(Error::deadline("deadline exceeded during the reconcile")))
    }

    async fn reconcile_now(
        self: &Arc<Self>,
        tenant_id: &str,
        deadline: Instant,
    ) -> Result<ReconcileSummary, Error> {
        let tenant = self.component_tenant(tenant_id)?;
        // The fence is taken before WeChat is asked, so a refresh token rotated after this
        // point (newer fence) is never replaced by the list's older view.
        let fence = self.creds.next_fence(tenant_id).await?;
        self.memory.saw_fence(tenant_id, fence);
        let event_ms = self.now_ms();
        let mut summary = ReconcileSummary::default();
        let mut offset = 0u64;
        let mut token_retried = false;
        loop {
            let ct = self
                .get_token(tenant_id, &Credential::Component, 60_000, deadline)
                .await?;
            let page = match self
                .api
                .until(deadline)
                .get_authorizer_list(&ct.value, &tenant.app_id, offset, 500)
                .await
            {
                Ok(p) => p,
                Err(e) if e.class() == ErrorClass::Token && !token_retried => {
                    token_retried = true;
                    self.invalidate(
                        tenant_id,
                        &Credential::Component,
                        ct.value.expose(),
                        deadline,
                    )
                    .await?;
                    continue;
                }
                Err(e) => {
                    self.note_failure(tenant_id, &e);
                    return Err(Error::wechat("listing the authorizers", &e));
                }
            };
            let now = self.now_ms();
            let spread = i64::try_from(self.cfg.reconcile_spread_ms).unwrap_or(1);
            let entries: Vec<Listed<'_>> = page
                .list
                .iter()
                .map(|l| Listed {
                    appid: &l.authorizer_appid,
                    refresh_token: l.refresh_token.as_ref(),
                    due_ms: now + rand::rng().random_range(0..spread),
                })
                .collect();
            let counts = self
                .auths
                .reconcile(tenant_id, event_ms, now, fence, &entries)
                .await?;
            summary.listed += page.list.len() as u64;
            summary.authorized += counts.authorized;
            summary.refresh_tokens += counts.refresh_tokens;
            offset += page.list.len() as u64;
            if page.list.is_empty() || offset >= page.total_count {
                break;
            }
        }
        metrics::counter!("wxhub_reconciles_total", "tenant" => tenant_id.to_owned()).increment(1);
        metrics::counter!("wxhub_reconcile_refresh_tokens_total", "tenant" => tenant_id.to_owned())
            .increment(summary.refresh_tokens);
        tracing::info!(
            tenant = tenant_id,
            listed = summary.listed,
            authorized = summary.authorized,
            refresh_tokens = summary.refresh_tokens,
            "authorizers reconciled"
        );
        Ok(summary)
    }

    /// How long a reconcile keeps the other replicas from reconciling the tenant again.
    fn reconcile_guard_ttl(&self) -> Duration {
        Duration::from_millis((self.cfg.reconcile_interval_ms * 9 / 10).max(1000))
    }

    /// Reconciles every component tenant unless another replica did recently.
    pub async fn reconcile_all_guarded(self: &Arc<Self>) -> bool {
        let tenants = self.tenants.current();
        let guard_ttl = self.reconcile_guard_ttl();
        let mut all_ok = true;
        for tenant in tenants.iter().filter(|t| t.kind == TenantKind::Component) {
            let tid = tenant.id.as_str();
            match self.creds.guard(tid, "reconcile", guard_ttl).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(tenant = tid, error = %e, "cannot take the reconcile guard");
                    all_ok = false;
                    continue;
                }
            }
            let deadline = Instant::now() + Duration::from_secs(300);
            if let Err(e) = self.reconcile(tid, deadline).await {
                tracing::warn!(tenant = tid, error = %e, "reconcile failed; retrying later");
                let _ = self.creds.clear_marker(tid, "reconcile", "1").await;
                all_ok = false;
            }
        }
        all_ok
    }

    /// Exchanges an authorization code (from the redirect or from an `authorized` notice) and
    /// stores the authorizer. The same code arriving by the other path is answered from the
    /// first exchange; a code reused by the same path is refused; a code WeChat refused
    /// (61009/61010: invalid, expired or used elsewhere) is refused again from memory, without
    /// asking WeChat, for as long as any code lives.
    pub async fn exchange_auth_code(
        self: &Arc<Self>,
        tenant_id: &str,
        code: &str,
        by: ExchangeBy,
        event_ms: Option<i64>,
        deadline: Instant,
    ) -> Result<AuthorizerRecord, Error> {
        let tenant = self.component_tenant(tenant_id)?;
        let marker = format!("authcode:{}", code_hash(code));
        let claim_ttl = self.cfg.request_timeout() + Duration::from_secs(5);
        let pending = format!("pending:{}", by.as_str());
        loop {
            if self
                .creds
                .mark(tenant_id, &marker, &pending, claim_ttl, true)
                .await?
            {
                break;
            }
            match self.creds.marker(tenant_id, &marker).await?.as_deref() {
                Some(done) if done.starts_with("done:") => {
                    let mut parts = done.splitn(3, ':');
                    let (_, who, appid) = (parts.next(), parts.next(), parts.next());
                    if who == Some(by.as_str()) {
                        return Err(Error::precondition(
                            "the authorization code was already used; authorize again",
                        ));
                    }
                    let appid = appid.unwrap_or_default();
                    return self
                        .auths
                        .get(tenant_id, appid)
                        .await?
                        .ok_or_else(|| Error::not_found(format!("unknown authorizer {appid}")));
                }
                Some(refused) if refused.starts_with(CODE_REFUSED) => {
                    metrics::counter!("wxhub_auth_codes_refused_total", "tenant" => tenant_id.to_owned(), "source" => "memory")
                        .increment(1);
                    return Err(Error::precondition(&refused[CODE_REFUSED.len()..]));
                }
                // Pending elsewhere (or just expired): wait and look again.
                _ => {
                    if Instant::now() >= deadline {
                        return Err(Error::deadline(
                            "deadline exceeded while the code was being exchanged elsewhere",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        match self
            .exchange_claimed(&tenant, code, event_ms, deadline)
            .await
        {
            Ok(record) => {
                let done = format!("done:{}:{}", by.as_str(), record.appid);
                self.creds
                    .mark(tenant_id, &marker, &done, CODE_MEMORY, false)
                    .await?;
                Ok(record)
            }
            Err(ExchangeFailure::CodeRefused(e)) => {
                // Final: WeChat will refuse this code every time.
                metrics::counter!("wxhub_auth_codes_refused_total", "tenant" => tenant_id.to_owned(), "source" => "wechat")
                    .increment(1);
                let refused = format!("{CODE_REFUSED}{}", e.message);
                if let Err(err) = self
                    .creds
                    .mark(tenant_id, &marker, &refused, CODE_MEMORY, false)
                    .await
                {
                    tracing::warn!(tenant = tenant_id, error = %err, "cannot remember a refused authorization code");
                }
                Err(e)
            }
            Err(ExchangeFailure::Failed(e)) => {
                let _ = self.creds.clear_marker(tenant_id, &marker, &pending).await;
                Err(e)
            }
        }
    }

    async fn exchange_claimed(
        self: &Arc<Self>,
        tenant: &Tenant,
        code: &str,
        event_ms: Option<i64>,
        deadline: Instant,
    ) -> Result<AuthorizerRecord, ExchangeFailure> {
        let tid = tenant.id.as_str();
        let fence = self.creds.next_fence(tid).await?;
        let started = self.now_ms();
        let mut token_retried = false;
        let info = loop {
            let ct = self
                .get_token(tid, &Credential::Component, 60_000, deadline)
                .await?;
            match self
                .api
                .until(deadline)
                .query_auth(&ct.value, &tenant.app_id, code)
                .await
            {
                Ok(info) => break info,
                Err(e) if e.class() == ErrorClass::Token && !token_retried => {
                    token_retried = true;
                    self.invalidate(tid, &Credential::Component, ct.value.expose(), deadline)
                        .await?;
                }
                Err(e) => {
                    self.note_failure(tid, &e);
                    let error = Error::wechat("exchanging the authorization code", &e);
                    return Err(if e.class() == ErrorClass::AuthCode {
                        ExchangeFailure::CodeRefused(error)
                    } else {
                        ExchangeFailure::Failed(error)
                    });
                }
            }
        };
        let appid = info.authorizer_appid.clone();
        let (applied, _) = self
            .auths
            .authorize(
                tid,
                &Authorization {
                    appid: &appid,
                    event_ms: event_ms.unwrap_or(started),
                    now_ms: self.now_ms(),
                    fence,
                    refresh_token: info.refresh_token.as_ref(),
                    func_info: &info.func_info,
                },
            )
            .await?;
        if !applied {
            tracing::info!(tenant = tid, appid = %appid, "authorization event older than the stored status; kept the newer state");
        }
        metrics::counter!("wxhub_authorizations_total", "tenant" => tid.to_owned()).increment(1);
        let cred = Credential::Authorizer(appid.clone());
        self.forget_authorizer(tid, &appid);
        if let Some(token) = info.access_token.as_ref().filter(|_| applied) {
            // Store the token that came with the code, under the lease (fenced like a
            // refresh); if a refresh holds the lease now, let the schedule fetch a new one.
            let name = cred.name();
            match self.creds.acquire(tid, &name, self.cfg.lock_ttl()).await? {
                Some(lease) => {
                    let lifetime_ms = i64::try_from(token.expires_in).unwrap_or(7200) * 1000;
                    let outcome = self
                        .creds
                        .write_token(
                            &lease,
                            &TokenWrite {
                                value: &token.token,
                                expires_at_ms: started + lifetime_ms,
                                lifetime_ms,
                                now_ms: self.now_ms(),
                                due_ms: started + self.due_after(lifetime_ms),
                                authorizer: Some(&appid),
                                refresh_token: None,
                            },
                        )
                        .await;
                    let _ = self.creds.release(&lease).await;
                    outcome?;
                }
                None => {
                    self.creds
                        .schedule(tid, &name, self.now_ms(), false)
                        .await?;
                }
            }
        }
        // Best effort: the profile for pages and listings.
        if let Ok(ct) = self
            .get_token(tid, &Credential::Component, 60_000, deadline)
            .await
            && let Ok(profile) = self
                .api
                .until(deadline)
                .get_authorizer_info(&ct.value, &tenant.app_id, &appid)
                .await
        {
            let _ = self
                .auths
                .set_profile(
                    tid,
                    &appid,
                    &Profile {
                        nick_name: profile.nick_name,
                        user_name: profile.user_name,
                        principal_name: profile.principal_name,
                        head_img: profile.head_img,
                        service_type: profile.service_type,
                        verify_type: profile.verify_type,
                        is_mini_program: profile.is_mini_program,
                    },
                )
                .await;
        }
        self.auths.get(tid, &appid).await?.ok_or_else(|| {
            Error::new(ErrorCode::Internal, "authorizer vanished after exchange").into()
        })
    }

    // ---------------------------------------------------------------- background

    /// Runs the schedule poller, the ticket watcher, the store watch (recovery after a loss) and
    /// the periodic reconcile until `cancel`.
    pub fn spawn_background(
        self: &Arc<Self>,
        cancel: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let this = Arc::clone(self);
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(this.cfg.poll_interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = c.cancelled() => return,
                    _ = tick.tick() => { this.poll_once().await; }
                }
            }
        }));
        let this = Arc::clone(self);
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis(this.cfg.ticket_check_interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = c.cancelled() => return,
                    _ = tick.tick() => this.check_tickets().await,
                }
            }
        }));
        let this = Arc::clone(self);
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis(this.cfg.store_check_interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let prune_every = (60_000 / this.cfg.store_check_interval_ms).max(1);
            for pass in 0u64.. {
                tokio::select! {
                    () = c.cancelled() => return,
                    _ = tick.tick() => this.watch_store(pass % prune_every == 0).await,
                }
            }
        }));
        let this = Arc::clone(self);
        tasks.push(tokio::spawn(async move {
            loop {
                let ok = tokio::select! {
                    () = cancel.cancelled() => return,
                    ok = this.reconcile_all_guarded() => ok,
                };
                // A failed reconcile (no ticket yet, WeChat down) is retried sooner.
                let wait = if ok {
                    this.cfg.reconcile_interval_ms
                } else {
                    this.cfg.reconcile_interval_ms.min(60_000)
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(wait.max(1))) => {}
                }
            }
        }));
        tasks
    }

    /// Redis reachability, for readiness.
    pub async fn ping(&self) -> Result<String, String> {
        self.store.ping().await.map_err(|e| e.to_string())
    }

    /// Deadline helper: `now + min(requested, request_timeout)`.
    pub fn deadline_for(&self, requested: Option<Duration>) -> Instant {
        let cap = self.cfg.request_timeout();
        Instant::now() + requested.map_or(cap, |r| r.min(cap))
    }

    /// Minimum remaining lifetime helper (ms).
    pub fn min_remaining_ms(&self, requested_secs: u32) -> i64 {
        if requested_secs == 0 {
            i64::try_from(self.cfg.default_min_remaining_ms).unwrap_or(300_000)
        } else {
            i64::from(requested_secs) * 1000
        }
    }

    /// Real-time helper for callers that need ms from a Duration.
    pub fn ms(d: Duration) -> i64 {
        millis(d)
    }
}

/// How long the outcome of an authorization code (exchanged, or refused by WeChat) is
/// remembered: longer than any code lives (600 s by the redirect's `expires_in`).
const CODE_MEMORY: Duration = Duration::from_secs(3600);

/// Prefix of the claim marker of a code WeChat refused; the rest is the error message.
const CODE_REFUSED: &str = "refused:";

/// Why an exchange failed: WeChat refused the code itself (final, remembered), or anything else
/// (Redis, the component token, WeChat unavailable: a later attempt may succeed).
enum ExchangeFailure {
    CodeRefused(Error),
    Failed(Error),
}

impl From<Error> for ExchangeFailure {
    fn from(e: Error) -> Self {
        ExchangeFailure::Failed(e)
    }
}

impl From<wxhub_store::StoreError> for ExchangeFailure {
    fn from(e: wxhub_store::StoreError) -> Self {
        ExchangeFailure::Failed(e.into())
    }
}

fn code_hash(code: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(code.as_bytes())[..16])
}
